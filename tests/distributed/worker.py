"""`bertmt` under torchrun with test hooks, set by environment variables:

- BERTMT_TEST_FP16=1: DeepSpeed's CPU accelerator claims fp16 support (it refuses fp16 otherwise);
- BERTMT_TEST_POISON=RANK:CALL: that rank's task loss of micro-batch CALL (0-based) becomes inf;
- BERTMT_TEST_CRASH=RANK:CALL: that rank raises at micro-batch CALL;
- BERTMT_TEST_OUT=DIR: each rank writes DIR/rank<r>.json with its engine's step counters before closing.
"""

from __future__ import annotations

import json
import os
import sys

import torch


def _at(var: str) -> tuple[int, int] | None:
    raw = os.environ.get(var)
    return tuple(int(x) for x in raw.split(":")) if raw else None


def main() -> int:
    from bertmt.engine import trainer as trainer_mod

    if os.environ.get("BERTMT_TEST_FP16"):
        from deepspeed.accelerator import get_accelerator

        get_accelerator().is_fp16_supported = lambda: True
    rank = int(os.environ.get("RANK", "0"))
    poison, crash = _at("BERTMT_TEST_POISON"), _at("BERTMT_TEST_CRASH")
    real_loss, calls = trainer_mod.task_loss, [0]

    def task_loss(spec, outputs, labels):
        call, calls[0] = calls[0], calls[0] + 1
        if crash and crash == (rank, call):
            raise RuntimeError(f"test crash on rank {rank} at micro-batch {call}")
        loss = real_loss(spec, outputs, labels)
        return loss * float("inf") if poison and poison == (rank, call) else loss

    trainer_mod.task_loss = task_loss
    out, real_close = os.environ.get("BERTMT_TEST_OUT"), trainer_mod.Trainer.close

    def close(self):
        if out:
            opt = self.engine.optimizer
            record = {
                "rank": rank,
                "skipped": int(self.engine.skipped_steps),
                "step": self.state.step,
                "scale": float(getattr(opt, "cur_scale", 0.0)),
                "param": float(next(self.engine.module.parameters()).float().sum()),
            }
            with open(os.path.join(out, f"rank{rank}.json"), "w") as fp:
                json.dump(record, fp)
        real_close(self)

    trainer_mod.Trainer.close = close
    torch.set_num_threads(1)
    from bertmt.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
