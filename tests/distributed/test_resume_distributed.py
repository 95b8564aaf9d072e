"""2-rank runs killed (SIGKILL to the launcher and both ranks) after their first checkpoint and started again
end with exactly the metrics and dev history of uninterrupted 2-rank runs: ZeRO-2 with PCGrad, ZeRO-3 (no
surgery; exact since bertmt clears ZeRO-3's stale gradient partitions, engine/deepspeed_compat.py)."""

from __future__ import annotations

import json
import re
import time

import psutil
import pytest

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, torchrun, torchrun_popen


@pytest.mark.parametrize("stage, method", [(2, "pcgrad"), (3, "none")])
def test_two_rank_run_resumes_exactly(stage, method, tiny_pretrained, small_data, tmp_path):
    extra = {
        "train.zero_stage": stage,
        "mtl.method": method,
        "train.grad_accum": 3,
        "train.epochs": 3,
        "run.checkpoint_every": 2,
        "data.max_length": 128,
        "tasks.sst.test": None,
        "tasks.sts.test": None,
    }
    extra |= {f"tasks.{t}.batch_size": 16 for t in ("sst", "quora", "sts")}
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    torchrun(2, "train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, whole, **extra))
    args = ["train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, parts, **extra)]
    proc = torchrun_popen(2, *args, log=tmp_path / "killed.log")
    latest, deadline = parts / "checkpoints" / "latest", time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    for child in psutil.Process(proc.pid).children(recursive=True):  # the ranks run in sessions of their own
        child.kill()
    proc.kill()
    proc.wait()
    killed_log = (tmp_path / "killed.log").read_text()[-3000:]
    assert latest.exists() and not (parts / "metrics.json").exists(), killed_log
    torchrun(2, *args)
    resumed = re.search(
        r"resuming at epoch \d+, micro-batch \d+, step (\d+)", (parts / "train.log").read_text()
    )
    assert resumed and 0 < int(resumed[1]) < 12
    for name in ("metrics.json", "history.json"):
        assert json.loads((parts / name).read_text()) == json.loads((whole / name).read_text()), name
