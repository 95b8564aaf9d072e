"""`bertmt` under torchrun with test hooks, set by environment variables:

- BERTMT_TEST_FP16=1: DeepSpeed's CPU accelerator claims fp16 support (it refuses fp16 otherwise);
- BERTMT_TEST_POISON=RANK:CALL: that rank's task loss of micro-batch CALL (0-based) becomes inf;
- BERTMT_TEST_CRASH=RANK:CALL: that rank raises at micro-batch CALL;
- BERTMT_TEST_OUT=DIR: each rank writes DIR/rank<r>.json with its engine's step counters before closing;
- BERTMT_TEST_POISON_HEAD=RANK:CALL: after that rank's micro-batch CALL, its task-head gradient held by the
  surgery step becomes inf (the shared-parameter gradients stay finite: surgery sees a finite Gram matrix,
  DeepSpeed an overflow);
- BERTMT_TEST_SURGERY=DIR: each rank writes DIR/rank<r>-surgery.json: per optimiser step, whether DeepSpeed
  applied it and whether the surgery method's state (generator, GradVac targets) changed;
- BERTMT_TEST_GRADS=DIR: each rank saves DIR/rank<r>-grads.pt, the gradient (divided by the loss scale) of
  every parameter that DeepSpeed holds right before its first optimiser step.
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
    if os.environ.get("BERTMT_TEST_GRADS"):
        _save_first_step_grads(os.environ["BERTMT_TEST_GRADS"], rank)
    if os.environ.get("BERTMT_TEST_SURGERY"):
        _record_surgery_steps(os.environ["BERTMT_TEST_SURGERY"], rank, _at("BERTMT_TEST_POISON_HEAD"))
    torch.set_num_threads(1)
    from bertmt.cli import main as cli_main

    return cli_main(sys.argv[1:])


def _save_first_step_grads(out: str, rank: int) -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_grad

    real_step, done = DeepSpeedEngine.step, []

    def step(self, *args, **kwargs):
        if not done and self.is_gradient_accumulation_boundary():
            scale = float(getattr(self.optimizer, "cur_scale", 1.0)) if self.fp16_enabled() else 1.0
            grads = {}
            for name, p in self.module.named_parameters():
                g = safe_get_full_grad(p)
                grads[name] = None if g is None else g.float() / scale
            torch.save(grads, os.path.join(out, f"rank{rank}-grads.pt"))
            done.append(True)
        return real_step(self, *args, **kwargs)

    DeepSpeedEngine.step = step


def _record_surgery_steps(out: str, rank: int, poison: tuple[int, int] | None) -> None:
    import copy

    from bertmt.engine.surgery import SurgeryStep

    real_micro, real_step, calls, steps = SurgeryStep.micro_step, SurgeryStep.optimizer_step, [0], []

    def micro_step(self, task, loss):
        call, calls[0] = calls[0], calls[0] + 1
        real_micro(self, task, loss)
        if poison == (rank, call):
            self.own_grads[task][0].fill_(float("inf"))

    def optimizer_step(self):
        before = copy.deepcopy(self.method.state_dict())
        combined = real_step(self)
        after = self.method.state_dict()
        same = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        steps.append({"applied": self.engine.was_step_applied(), "state_changed": not same})
        with open(os.path.join(out, f"rank{rank}-surgery.json"), "w") as fp:
            json.dump(steps, fp)
        return combined

    SurgeryStep.micro_step, SurgeryStep.optimizer_step = micro_step, optimizer_step


if __name__ == "__main__":
    sys.exit(main())
