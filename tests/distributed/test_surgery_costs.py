"""What gradient surgery costs beyond plain training, counted in real 2-rank runs (every collective inside
``Trainer.train_step`` is wrapped and counted, bertmt/engine/comm_stats.py; buffer sizes from the surgery
step):

- ZeRO 2 and 3: exactly the collectives and bytes of a plain step plus one T x T float64 all-reduce; surgery
  buffers T * D/N fp32 (D: shared parameters, N: ranks).
- ZeRO 0 and 1: a plain step's collectives with its all-reduce of the D + H gradients (shared parameters and
  heads) replaced by one reduce-scatter per task row (D padded to N), one all-gather of the combined row, an
  all-reduce of the H heads' gradients and the T x T all-reduce: no other D-sized collective; buffers
  T * D/N fp32 plus one local row when each task's micro-batches are consecutive (round robin, grad_accum
  T), T rows when interleaved, plus the H heads' gradients.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import NO_REPORTS, tiny_overrides
from tests.e2e.helpers import QUICKSTART, train_many

T, WORLD = 3, 2


CASES = [(stage, method, T) for stage in (0, 1, 2, 3) for method in ("none", "pcgrad")] + [
    (1, "pcgrad", 2 * T)
]


@pytest.fixture(scope="module")
def counted(tiny_pretrained, small_data, tmp_path_factory):
    """``counted(stage, method, accum)``: per rank, the collectives of each optimiser step and the engine's
    counters of that 2-rank run. All of CASES train in one torchrun launch."""
    root = tmp_path_factory.mktemp("surgery-costs")
    runs = []
    for stage, method, accum in CASES:
        extra = {
            "train.zero_stage": stage,
            "train.grad_accum": accum,
            "train.epochs": 1,
            "train.batches_per_epoch": 2 * accum,
            "mtl.method": method,
            "model.pooling": "pooler",  # every shared parameter gets a gradient in plain training too
            "tasks.sst.test": None,
            "tasks.sts.test": None,
        }
        run_dir = root / f"zero{stage}-{method}-accum{accum}" / "run"
        runs.append(
            [
                "train",
                str(QUICKSTART),
                *tiny_overrides(tiny_pretrained, small_data, run_dir, **NO_REPORTS, **extra),
            ]
        )
    env = {"BERTMT_TEST_COLLECTIVES": "per-run", "BERTMT_TEST_OUT": "per-run"}
    train_many(WORLD, runs, root / "runs.json", env=env)

    def get(stage: int, method: str, accum: int) -> list[dict]:
        out = root / f"zero{stage}-{method}-accum{accum}"
        assert not (out / "run" / "reports").exists() and not (out / "run" / "plots").exists()  # run.reports
        return [
            {
                "steps": json.loads((out / f"rank{r}-collectives.json").read_text()),
                **json.loads((out / f"rank{r}.json").read_text()),
            }
            for r in range(WORLD)
        ]

    return get


def _added(surgery: dict, plain: dict) -> dict[str, dict[str, int]]:
    """Collectives (calls and bytes per name) in a surgery step beyond the plain step."""
    return {
        kind: {
            k: surgery[kind].get(k, 0) - plain[kind].get(k, 0)
            for k in set(surgery[kind]) | set(plain[kind])
            if surgery[kind].get(k, 0) != plain[kind].get(k, 0)
        }
        for kind in ("calls", "bytes")
    }


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_surgery_adds_only_its_own_collectives_and_buffers(stage, counted):
    plain, surgery = counted(stage, "none", T), counted(stage, "pcgrad", T)
    d = surgery[0]["shared_numel"]
    shard = T * math.ceil(d / WORLD) * 4
    for rank in range(WORLD):
        assert len(surgery[rank]["steps"]) == len(plain[rank]["steps"]) == 2
        for got, want in zip(surgery[rank]["steps"], plain[rank]["steps"]):
            assert want["calls"], "plain training issued no collective?"
            added = _added(got, want)
            if stage >= 2:
                assert added == {"calls": {"all_reduce": 1}, "bytes": {"all_reduce": T * T * 8}}
            else:  # plain's all-reduce of the D + H gradients -> H heads' gradients and the T x T Gram
                row = math.ceil(d / WORLD) * WORLD * 4
                assert added == {
                    "calls": {"all_reduce": 1, "reduce_scatter_single": T, "all_gather_single": 1},
                    "bytes": {
                        "all_reduce": T * T * 8 - d * 4,
                        "reduce_scatter_single": T * row,
                        "all_gather_single": row // WORLD,  # what a rank sends; it receives the whole row
                    },
                }
        held = surgery[rank]["surgery_bytes"]
        if stage >= 2:  # ZeRO's partitions pad each group (stage 2) or parameter (stage 3) to N
            assert shard <= held <= shard * 1.01
        else:
            own = surgery[rank]["task_numel"] * 4  # the heads' gradients, reduced at the boundary
            assert held == shard + math.ceil(d / WORLD) * WORLD * 4 + own  # the shard and one local row


def test_interleaved_tasks_hold_one_local_row_each(counted):
    """Round robin with grad_accum 2T: sst, quora, sts, sst, quora, sts; no row is final before the fourth."""
    surgery = counted(1, "pcgrad", 2 * T)
    d = surgery[0]["shared_numel"]
    row = math.ceil(d / WORLD) * WORLD * 4
    own = surgery[0]["task_numel"] * 4
    assert surgery[0]["surgery_bytes"] == T * math.ceil(d / WORLD) * 4 + T * row + own
