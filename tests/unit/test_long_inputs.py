"""Long inputs split into overlapping segments (data.long_inputs=chunk): the windows against a hand-worked
example, collation, real CFIMDB reviews, and the segment pooling against encoding each segment alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bertmt.data.batching import Chunking, Encoded, collate
from bertmt.model.multitask import HeadSpec
from tests.unit.model_fixtures import tiny_model

CLS, SEP = 96, 97  # inside the tiny test vocabulary (100)


def _row(pieces: list[int]) -> np.ndarray:
    return np.array([CLS, *pieces, SEP])


def test_windows_overlap_and_cover_the_row_as_worked_by_hand():
    chunking = Chunking(max_length=6, overlap=1, max_segments=8)  # windows of 4 pieces, step 3
    segments = chunking.split(_row(list(range(1, 11))))
    assert [s.tolist() for s in segments] == [
        [CLS, 1, 2, 3, 4, SEP],
        [CLS, 4, 5, 6, 7, SEP],
        [CLS, 7, 8, 9, 10, SEP],
    ]
    assert [s.tolist() for s in chunking.split(_row([1, 2, 3]))] == [[CLS, 1, 2, 3, SEP]]  # fits: as is
    assert [s.tolist() for s in chunking.split(_row(list(range(1, 6))))] == [
        [CLS, 1, 2, 3, 4, SEP],
        [CLS, 4, 5, SEP],  # the end: a shorter last window
    ]
    capped = Chunking(max_length=6, overlap=1, max_segments=2)
    assert [s.tolist()[1:-1] for s in capped.split(_row(list(range(1, 11))))] == [[1, 2, 3, 4], [4, 5, 6, 7]]


def _encoded(rows: list[list[int]], chunking) -> Encoded:
    arrays = [_row(r) for r in rows]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
    flat = np.concatenate(arrays).astype(np.int32)
    return Encoded(
        [f"r{i}" for i in range(len(rows))],
        flat,
        np.zeros_like(flat, dtype=np.int8),
        offsets,
        np.arange(len(rows), dtype=np.float32),
        chunking=chunking,
    )


def test_collate_puts_every_segment_in_the_batch_with_its_record():
    enc = _encoded([list(range(1, 11)), [5, 6], list(range(20, 26))], Chunking(6, 1, 8))
    batch = collate(enc, np.array([2, 0, 1]))
    assert batch["segment_of"].tolist() == [0, 0, 1, 1, 1, 2]  # record 2: 6 pieces = 2 windows; record 0: 3
    assert batch["input_ids"].shape == (6, 6)
    assert batch["input_ids"][5].tolist() == [CLS, 5, 6, SEP, 0, 0]
    assert batch["attention_mask"][5].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["labels"].tolist() == [2.0, 0.0, 1.0]  # one label per record, not per segment


def test_real_cfimdb_reviews_are_covered_by_their_segments(data_dir):
    from bertmt.data.readers import read_task_file
    from bertmt.data.tasks import TASKS
    from bertmt.model.pretrained import load_tokenizer
    from tests.conftest import minilm_dir

    data = read_task_file(data_dir / "ids-cfimdb-dev.csv", TASKS["cfimdb"], labelled=True)
    tokenizer = load_tokenizer(str(minilm_dir()), 128)
    tokenizer.no_truncation()
    chunking = Chunking(max_length=128, overlap=32, max_segments=64)
    split = 0
    for text in data.texts[:40]:
        row = np.array(tokenizer.encode(text[0]).ids)
        segments = chunking.split(row)
        assert all(len(s) <= 128 and s[0] == row[0] and s[-1] == row[-1] for s in segments)
        body = list(segments[0][1:-1])
        for s in segments[1:]:
            assert list(s[1:33]) == body[-32:]  # the overlap repeats the previous segment's last 32 pieces
            body += list(s[33:-1])
        assert body == list(row[1:-1])  # nothing lost, nothing invented
        split += len(segments) > 1
    assert split >= 30  # CFIMDB reviews: hundreds of tokens, most need several segments


@pytest.mark.parametrize("how", ["mean", "max", "attention"])
def test_segment_pooling_equals_encoding_each_segment_alone(how):
    heads = {"sst": HeadSpec(5, segment_pooling=how)}
    model = tiny_model(heads=heads)
    if how == "attention":
        torch.nn.init.normal_(model.heads["sst"].segments.query)
    enc = _encoded([list(range(1, 30)), [5, 6], list(range(30, 45))], Chunking(12, 3, 8))
    batch = collate(enc, np.array([0, 1, 2]))
    got = model("sst", batch["input_ids"], batch["attention_mask"], None, segment_of=batch["segment_of"])
    head = model.heads["sst"]
    want = []
    for record in range(3):
        vectors = []
        for row in chunk_rows(enc, record):
            ids = torch.tensor(row)[None]
            vectors.append(head.pool(model.encoder(ids, torch.ones_like(ids)), torch.ones_like(ids))[0])
        v = torch.stack(vectors)  # (segments, H), each segment encoded alone, unpadded
        if how == "mean":
            pooled = v.mean(0)
        elif how == "max":
            pooled = v.max(0).values
        else:
            weights = ((head.segments.key(v) @ head.segments.query) / v.size(-1) ** 0.5).softmax(0)
            pooled = (weights[:, None] * v).sum(0)
        want.append(head(pooled[None])[0])
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-5, atol=1e-6)


def chunk_rows(enc: Encoded, record: int) -> list[list[int]]:
    a, b = enc.offsets[record], enc.offsets[record + 1]
    return [s.tolist() for s in enc.chunking.split(enc.input_ids[a:b])]
