"""2 ranks = 1 rank (fp32, CPU, tiny model without dropout, per-rank batch halved) for the options that
change what a step sees or how many trainings a run holds: POS/NER tag embeddings (shared parameters, fed by
a real spaCy pipeline; with symmetric pair tasks, whose pairs and tags are read in a random order), a
task-adaptive MLM phase before a joint phase (masks seeded per row, every predicted token weighted by the
global batch's count) and exclusive training (one model per task, one after another on the same process
group, the first in two phases; Quora's outputs joined by another model's: an ensemble), on records whose
passes end in odd-sized batches."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bertmt.run import _flat  # nested metrics -> {"sst.accuracy": ...}
from tests.conftest import NO_REPORTS, tiny_overrides
from tests.e2e.helpers import QUICKSTART, scalars, train_losses, train_many

GLOBAL_BATCH = 16
COMMON = {
    "train.epochs": 1,
    "train.batches_per_epoch": 9,
    "train.grad_accum": 3,
    "run.log_every": 1,
    "train.zero_stage": 2,
    "model.dropout": 0.0,
    "tasks.sst.test": None,
    "tasks.sts.test": None,
    "optim.warmup_ratio": 0.0,
    "data.eval_batch_size": 16,
}
TAPT = [
    {"name": "tapt", "train": {"objective": "mlm", "epochs": 1, "batches_per_epoch": 6, "grad_accum": 2}},
    {"name": "joint"},
]

QUORA2 = {
    "type": "quora",
    "train": "quora-small-train.csv",
    "dev": "quora-small-dev.csv",
    "pair_encoding": "siamese",
}
EACH_PHASES = [
    {"name": "short", "models": ["sst"], "train": {"batches_per_epoch": 6}},
    {"name": "long", "models": ["sst"]},
]


@pytest.fixture(scope="module")
def run(tiny_no_dropout, odd_data, tiny_spacy, tmp_path_factory) -> Callable[[str, int], Path]:
    """``run(case, processes)``: the run directory; both cases run in one launch per process count."""
    root = tmp_path_factory.mktemp("phase-options")
    cases = {
        "tags": {
            "data.tags": {"pipeline": str(tiny_spacy), "kinds": ["pos", "ner"]},
            "tasks.quora.symmetric": True,
            "tasks.sts.symmetric": True,
        },
        "tapt": {"phases": TAPT},
        # the first model (sst) in two phases, the next ones without; Quora's outputs joined (rank 0, after
        # training) by a siamese Quora model's
        "each": {"train.exclusive": True, "phases": EACH_PHASES, "tasks.quora.ensemble": ["quora2"]},
    }
    for n in (1, 2):
        batch = GLOBAL_BATCH // n
        per_rank = {f"tasks.{t}.batch_size": batch for t in ("sst", "quora", "sts")}
        runs = [
            [
                "train",
                str(QUICKSTART),
                *tiny_overrides(
                    tiny_no_dropout,
                    odd_data,
                    root / f"{case}-{n}proc",
                    **NO_REPORTS,
                    **COMMON,
                    **per_rank,
                    **{"train.mlm_batch_size": batch},
                    **extra,
                    **({"tasks.quora2": QUORA2 | {"batch_size": batch}} if case == "each" else {}),
                ),
            ]
            for case, extra in cases.items()
        ]
        train_many(n, runs, root / f"runs-{n}proc.json")
    return lambda case, n: root / f"{case}-{n}proc"


def _assert_same(got: Path, want: Path, tags: set[str]) -> None:
    losses_got, losses_want = train_losses(got), train_losses(want)
    assert set(losses_want) == set(losses_got) == tags
    for tag in tags:
        assert len(losses_want[tag]) >= 2
        torch.testing.assert_close(
            torch.tensor(losses_got[tag]), torch.tensor(losses_want[tag]), rtol=1e-5, atol=1e-6, msg=tag
        )
    p_got, p_want = (load_file(str(d / "best" / "model.safetensors")) for d in (got, want))
    assert p_got.keys() == p_want.keys()
    for name in p_want:
        torch.testing.assert_close(p_got[name], p_want[name], rtol=1e-5, atol=1e-6, msg=name)
    m_got, m_want = (_flat(json.loads((d / "metrics.json").read_text())) for d in (got, want))
    assert m_got == pytest.approx(m_want, rel=1e-5)


TASK_LOSSES = {"train/sst/loss", "train/quora/loss", "train/sts/loss"}


def test_tag_embeddings_and_symmetric_pairs_train_the_same_on_two_ranks(run):
    one, two = run("tags", 1), run("tags", 2)
    _assert_same(two, one, TASK_LOSSES)
    weights = load_file(str(one / "best" / "model.safetensors"))
    tag_tables = [k for k in weights if "tag" in k and k.endswith("weight")]
    assert tag_tables and all(weights[k].abs().max() > 0 for k in tag_tables)  # zero at first: trained


def test_an_mlm_phase_and_the_joint_phase_after_it_train_the_same_on_two_ranks(run):
    one, two = run("tapt", 1), run("tapt", 2)
    tapt = Path("phases") / "1-tapt"
    _assert_same(two / tapt, one / tapt, {"train/mlm/loss"})
    _assert_same(two / "phases" / "2-joint", one / "phases" / "2-joint", TASK_LOSSES)
    accuracy = scalars(one / tapt, "dev/mlm/accuracy")
    assert accuracy == pytest.approx(scalars(two / tapt, "dev/mlm/accuracy"), rel=1e-6)


def test_exclusive_training_trains_each_tasks_model_the_same_on_two_ranks(run):
    one, two = run("each", 1), run("each", 2)
    for sub in ("sst/phases/1-short", "sst/phases/2-long", "quora", "sts", "quora2"):
        task = sub.split("/")[0]
        _assert_same(two / "tasks" / sub, one / "tasks" / sub, {f"train/{task}/loss"})
    assert not (one / "tasks" / "quora" / "phases").exists()  # the phases name sst's model only
    m_one, m_two = (_flat(json.loads((d / "metrics.json").read_text())) for d in (one, two))
    assert m_two == pytest.approx(m_one, rel=1e-5) and len(m_one) == 5  # 3 tasks, the member, overall
    alone = json.loads((one / "tasks" / "quora" / "metrics.json").read_text())["quora"]
    assert m_one["quora.accuracy"] != alone["accuracy"]  # the ensemble's, not Quora's model's alone
