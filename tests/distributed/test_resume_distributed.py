"""2-rank runs killed (every rank SIGKILLs itself in the middle of the step after the first checkpoint, a
fixed micro-batch: no race) and started again end with exactly the metrics and dev history of uninterrupted
2-rank runs: ZeRO-2 with PCGrad, ZeRO-3 plain (exact since bertmt clears ZeRO-3's stale gradient
partitions, engine/deepspeed_compat.py), ZeRO-3 with PCGrad (captured partitions) and ZeRO-3 with SMART
(adversarial term and the Bregman teacher, a whole model gathered once per step)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import NO_REPORTS, tiny_overrides
from tests.e2e.helpers import QUICKSTART, torchrun, train_many

WORKER = "tests.distributed.worker"


SMART = {"mtl.smart.weight": 1.0, "mtl.smart.bregman_weight": 1.0}


CASES = {
    "2-pcgrad": (2, "pcgrad", {}),
    "3-none": (3, "none", {}),
    "3-pcgrad": (3, "pcgrad", {}),
    "3-none-smart": (3, "none", SMART),
}
ACCUM = 3


def _args(case: str, run_dir, pretrained, data) -> list[str]:
    stage, method, smart = CASES[case]
    extra = smart | {
        "train.zero_stage": stage,
        "mtl.method": method,
        "train.grad_accum": ACCUM,
        "train.epochs": 2,  # killed in the first: the resumed run crosses an epoch boundary (CI time)
        "run.checkpoint_every": 2,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
    }
    return ["train", str(QUICKSTART), *tiny_overrides(pretrained, data, run_dir, **NO_REPORTS, **extra)]


@pytest.fixture(scope="module")
def runs(tiny_pretrained, small_data, tmp_path_factory):
    """Every case killed (one launch each: the processes die), then every killed run resumed and every
    uninterrupted reference trained, each group in one 2-rank worker launch (train_many)."""
    root = tmp_path_factory.mktemp("resume")
    killed = {}
    for case in CASES:
        env = {"BERTMT_TEST_KILL": str(2 * ACCUM + 1)}  # the second micro-batch of step 3
        proc = torchrun(2, *_args(case, root / case / "parts", tiny_pretrained, small_data), module=WORKER,
                        check=False, env=env)  # fmt: skip
        killed[case] = proc
        assert (root / case / "parts" / "checkpoints" / "latest").read_text().strip() == "step-2", proc.stderr
        assert not (root / case / "parts" / "metrics.json").exists()
    again = [_args(case, root / case / "parts", tiny_pretrained, small_data) for case in CASES]
    train_many(2, again, root / "resume.json")
    whole = [_args(case, root / case / "whole", tiny_pretrained, small_data) for case in CASES]
    train_many(2, whole, root / "whole.json")
    return root, killed


@pytest.mark.parametrize("case", list(CASES))
def test_two_rank_run_resumes_exactly(case, runs):
    root, killed = runs
    parts, whole = root / case / "parts", root / case / "whole"
    assert killed[case].returncode != 0
    resumed = re.search(
        r"resuming at epoch (\d+), micro-batch (\d+), step (\d+)", (parts / "train.log").read_text()
    )
    assert resumed and resumed.groups() == ("1", str(2 * ACCUM), "2")
    for name in ("metrics.json", "history.json"):
        assert json.loads((parts / name).read_text()) == json.loads((whole / name).read_text()), name
