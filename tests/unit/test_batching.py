"""Tokenisation cache, dynamic padding, length bucketing and the resumable task sampler."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from bertmt.config import load_config
from bertmt.data.batching import (
    Encoded,
    TaskSampler,
    bucketed_batches,
    collate,
    encode,
    eval_batches,
    padded_tokens,
    swap_order,
    swapped_types,
)
from bertmt.data.loading import Loader
from bertmt.data.readers import read_task_file
from bertmt.data.tasks import TASKS
from bertmt.evaluation.predict import predict
from bertmt.model import load_tokenizer
from tests.e2e.helpers import QUICKSTART
from tests.unit.model_fixtures import tiny_model


@pytest.fixture(scope="module")
def sts(data_dir, tmp_path_factory):
    data = read_task_file(data_dir / "sts-train.csv", TASKS["sts"])
    return encode(data, load_tokenizer("minilm"), 64, tmp_path_factory.mktemp("cache"))


def test_encoding_matches_the_tokenizer_and_is_cached(sts, data_dir, tmp_path, caplog):
    tok = load_tokenizer("minilm")
    data = read_task_file(data_dir / "sts-train.csv", TASKS["sts"])
    first = encode(data, tok, 64, tmp_path)
    (cached,) = list(tmp_path.glob("sts-*.pt"))
    mtime = cached.stat().st_mtime_ns
    again = encode(data, tok, 64, tmp_path)
    assert cached.stat().st_mtime_ns == mtime  # read back, not rewritten
    want = tok.encode(*data.texts[5])
    row = slice(again.offsets[5], again.offsets[6])
    assert list(again.input_ids[row]) == want.ids and list(again.token_types[row]) == want.type_ids
    assert np.array_equal(first.input_ids, again.input_ids) and again.lengths.max() <= 64
    encode(data, tok, 32, tmp_path)
    assert len(list(tmp_path.glob("sts-*.pt"))) == 2  # another max_length is another cache entry
    cached.write_bytes(cached.read_bytes()[:100])  # a cache file cut short (full disk, killed copy)
    with caplog.at_level("WARNING"):
        rebuilt = encode(data, tok, 64, tmp_path)
    assert f"tokenisation cache {cached} is unreadable" in caplog.text
    assert np.array_equal(rebuilt.input_ids, first.input_ids) and cached.stat().st_size > 100


def test_collate_pads_to_the_longest_row(sts):
    rows = np.array([3, 10, 7])
    batch = collate(sts, rows)
    lengths = sts.lengths[rows]
    assert batch["input_ids"].shape == (3, lengths.max())
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    assert torch.equal(batch["labels"], torch.from_numpy(sts.labels[rows]))


def test_bucketing_covers_every_row_once_and_pads_less(sts):
    rng = np.random.default_rng(0)
    bucketed = bucketed_batches(sts.lengths, 32, 50, rng)
    plain = bucketed_batches(sts.lengths, 32, 1, np.random.default_rng(0))
    for batches in (bucketed, plain):
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(sts)))
    real = int(sts.lengths.sum())
    assert padded_tokens(sts.lengths, bucketed) < 1.05 * real < padded_tokens(sts.lengths, plain)


def test_eval_batches_are_deterministic_and_complete(sts):
    a, b = eval_batches(sts.lengths, 100), eval_batches(sts.lengths, 100)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(len(sts)))


def test_sampler_resumes_from_its_draw_count(sts):
    full = TaskSampler(sts, 16, 50, seed=3)
    seen = [full.next()["rows"] for _ in range(len(full) + 5)]  # crosses into the second pass
    resumed = TaskSampler(sts, 16, 50, seed=3)
    resumed.drawn = len(full) + 2
    assert torch.equal(resumed.next()["rows"], seen[len(full) + 2])
    first_pass = torch.cat(seen[: len(full)])
    assert sorted(first_pass.tolist()) == list(range(len(sts)))
    assert not torch.equal(torch.cat(seen[len(full) :]), first_pass[: 5 * 16])  # each pass is reshuffled


def test_sampler_shards_one_global_batch_across_ranks(sts):
    single = TaskSampler(sts, 8, 50, seed=1, rank=0, world=1)
    ranks = [TaskSampler(sts, 4, 50, seed=1, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        rows = single.next()["rows"]
        assert torch.equal(torch.cat([s.next()["rows"] for s in ranks]), rows)


@pytest.mark.parametrize("world", [2, 3])
def test_every_record_counts_once_with_weight_one_over_the_global_batch(sts, world):
    """Odd-sized last batches, one smaller than the world size included: no record is dropped, each rank's
    share n_r * W / N makes the rank average of (share x rank mean) the global-batch mean, and a rank without
    rows gets share 0."""
    n = 4 * world + 1  # passes of batch 4 * world end in a 1-row batch
    enc = Encoded(sts.ids[:n], sts.input_ids, sts.token_types, sts.offsets[: n + 1], sts.labels[:n])
    single = TaskSampler(enc, 4 * world, 50, seed=1)
    ranks = [TaskSampler(enc, 4, 50, seed=1, rank=r, world=world) for r in range(world)]
    assert len(single) == len(ranks[0]) == 2
    for _ in range(2 * len(single)):  # two passes
        whole = single.next()
        parts = [s.next() for s in ranks]
        assert float(whole["share"]) == 1.0
        real = [p for p in parts if float(p["share"]) > 0]
        assert torch.equal(torch.cat([p["rows"] for p in real]), whole["rows"])
        labels = [p["labels"].double() for p in parts]
        mean_of_shares = sum(float(p["share"]) * y.mean() for p, y in zip(parts, labels)) / world
        torch.testing.assert_close(mean_of_shares, whole["labels"].double().mean())
        if len(whole["rows"]) < world:
            assert [float(p["share"]) for p in parts[len(whole["rows"]) :]] == [0.0] * (
                world - len(whole["rows"])
            )


def test_a_swapped_pair_is_the_pair_tokenised_the_other_way_round(sts, data_dir):
    """collate(swap=...) against the tokenizer run on (b, a); tags follow their tokens."""
    tok = load_tokenizer("minilm")
    data = read_task_file(data_dir / "sts-train.csv", TASKS["sts"])
    whole = np.flatnonzero(sts.lengths < 64)[:40]  # not truncated: the pieces do not depend on the order
    tagged = dataclasses.replace(sts, tags=(sts.input_ids[:, None] % 1000).astype(np.int16))
    swap = np.arange(len(whole)) % 2 == 0  # every other row
    batch = collate(tagged, whole, swap)
    for j, row in enumerate(whole):
        a, b = data.texts[row]
        want = tok.encode(b, a) if swap[j] else tok.encode(a, b)
        n = len(want.ids)
        assert batch["input_ids"][j, :n].tolist() == want.ids
        assert batch["token_type_ids"][j, :n].tolist() == want.type_ids
        assert batch["attention_mask"][j].sum() == n
        assert (batch["tag_ids"][j, :n, 0] == batch["input_ids"][j, :n] % 1000).all()


def test_a_symmetric_sampler_swaps_about_half_of_each_pass_the_same_on_every_rank(sts):
    """Which pairs a pass swaps depends on (seed, pass, record) only: the batches are those of the ordered
    task, each row is read as in the file or swapped, 1 rank and 2 ranks read every row the same way, and
    the next pass draws again. A task scored in both orders but not trained in them (symmetric: eval) reads
    the file's order."""
    sym = dataclasses.replace(sts, symmetric=True, swap=True)
    plain, single = TaskSampler(sts, 8, 50, seed=1), TaskSampler(sym, 8, 50, seed=1)
    scored_only = TaskSampler(dataclasses.replace(sts, symmetric=True), 8, 50, seed=1)
    ranks = [TaskSampler(sym, 4, 50, seed=1, rank=r, world=2) for r in range(2)]
    swapped_by_pass = []
    for _ in range(2):
        swapped = np.zeros(len(sts), dtype=bool)
        for _ in range(len(single)):
            want, got, parts = plain.next(), single.next(), [s.next() for s in ranks]
            assert torch.equal(got["rows"], want["rows"])
            assert torch.equal(scored_only.next()["input_ids"], want["input_ids"])
            assert torch.equal(torch.cat([q["rows"] for q in parts]), got["rows"])
            per_rank = [(q, k) for q in parts for k in range(len(q["rows"]))]
            for j, n in enumerate(got["attention_mask"].sum(1).tolist()):
                ids, types = got["input_ids"][j, :n].numpy(), got["token_type_ids"][j, :n].numpy()
                q, k = per_rank[j]
                assert np.array_equal(q["input_ids"][k, :n].numpy(), ids)
                w_ids, w_types = want["input_ids"][j, :n].numpy(), want["token_type_ids"][j, :n].numpy()
                order = swap_order(w_types)
                as_read = np.array_equal(ids, w_ids) and np.array_equal(types, w_types)
                assert as_read or (
                    np.array_equal(ids, w_ids[order]) and np.array_equal(types, swapped_types(w_types))
                )
                swapped[int(got["rows"][j])] = not as_read
        swapped_by_pass.append(swapped)
        assert 0.45 < swapped_by_pass[-1].mean() < 0.55
    assert 0.4 < (swapped_by_pass[0] != swapped_by_pass[1]).mean() < 0.6  # passes draw independently


def test_a_symmetric_task_is_scored_as_the_mean_of_both_orders():
    """predict() on a symmetric pair task against the model run on the pairs built in each order by hand."""
    rng = np.random.default_rng(0)
    pairs = [
        (rng.integers(3, 100, rng.integers(1, 9)), rng.integers(3, 100, rng.integers(1, 9)))
        for _ in range(11)
    ]

    def built(rows: list[tuple[np.ndarray, np.ndarray]], symmetric: bool = False) -> Encoded:
        seqs = [np.concatenate([[1], a, [2], b, [2]]) for a, b in rows]
        types = [np.concatenate([np.zeros(len(a) + 2), np.ones(len(b) + 1)]) for a, b in rows]
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
        ids = [str(i) for i in range(len(rows))]
        labels = np.zeros(len(rows), np.float32)
        return Encoded(
            ids,
            np.concatenate(seqs).astype(np.int32),
            np.concatenate(types).astype(np.int8),
            offsets,
            labels,
            symmetric=symmetric,
        )

    model, spec = tiny_model(), TASKS["quora"]
    ab = predict(model, spec, built(pairs), 4, "cpu", show_progress=False, sharded=False)
    ba = predict(model, spec, built([(b, a) for a, b in pairs]), 4, "cpu", show_progress=False, sharded=False)
    both = predict(model, spec, built(pairs, symmetric=True), 4, "cpu", show_progress=False, sharded=False)
    assert not np.allclose(ab, ba, atol=1e-3)  # the model reads the two orders differently
    np.testing.assert_allclose(both, (ab + ba) / 2, rtol=1e-5, atol=1e-6)


def test_a_symmetric_tasks_data_is_loaded_symmetric_from_the_file_and_from_the_cache(data_dir, tmp_path):
    """symmetric: true scores and trains in both orders, eval scores in both only, false neither; the same
    whether the tokens come from the file or from the cache."""
    overrides = [f"data.dir={data_dir}", "tasks.quora.symmetric=true", "tasks.sts.symmetric=eval"]
    tasks = load_config(QUICKSTART, overrides).resolved_tasks()
    loader = Loader(load_tokenizer("minilm"), 64, tmp_path)
    for _ in range(2):  # tokenised and cached, then read back from the cache
        quora, sts, sst = (loader.load(tasks[t], "dev") for t in ("quora", "sts", "sst"))
        assert (quora.symmetric, quora.swap) == (True, True)
        assert (sts.symmetric, sts.swap) == (True, False)
        assert (sst.symmetric, sst.swap) == (False, False)
    assert len(list(tmp_path.glob("*.pt"))) == 3
