"""`bertmt` (under torchrun, or alone) with test hooks, set by environment variables. It changes nothing else
(thread counts included), so a run through it computes exactly what the plain CLI would.

- BERTMT_TEST_FP16=1: DeepSpeed's CPU accelerator claims fp16 support (it refuses fp16 otherwise);
- BERTMT_TEST_POISON=RANK:CALL: that rank's task loss of micro-batch CALL (0-based) becomes inf;
- BERTMT_TEST_CRASH=RANK:CALL: that rank raises at micro-batch CALL;
- BERTMT_TEST_HANG=RANK:CALL: that rank stops at micro-batch CALL and waits forever (a hung rank);
- BERTMT_TEST_KILL=CALL: every rank kills itself (SIGKILL) at micro-batch CALL of this process (micro-batches
  are counted by their task or MLM loss; SophiaH's second forward of a micro-batch does not count);
- BERTMT_TEST_SIGNAL=NAME:CALL: every rank sends itself signal NAME (TERM, INT, USR1...) at micro-batch CALL
  of this process;
- BERTMT_TEST_OUT=DIR: each rank writes DIR/rank<r>.json with its engine's step counters before closing
  (DIR "per-run", here and for BERTMT_TEST_GRADS / BERTMT_TEST_COLLECTIVES: the parent directory of each
  run's run.dir, for BERTMT_TEST_RUNS);
- BERTMT_TEST_POISON_HEAD=RANK:CALL: after that rank's micro-batch CALL, its task-head gradient held by the
  ZeRO 0/1 surgery step becomes inf (the shared-parameter gradients stay finite: surgery sees a finite
  Gram matrix, DeepSpeed an overflow);
- BERTMT_TEST_SURGERY=DIR: each rank writes DIR/rank<r>-surgery.json: per optimiser step, whether DeepSpeed
  applied it, whether the surgery method's state (generator, GradVac targets) and the weights changed;
- BERTMT_TEST_GRADS=DIR: each rank saves DIR/rank<r>-grads.pt, the gradient (divided by the loss scale) of
  every parameter that DeepSpeed holds right before its first optimiser step, and the micro-batches of
  that step: ``{"grads": {name: tensor}, "micro_batches": [(task, rows, share), ...]}``;
- BERTMT_TEST_RUNS=FILE: FILE holds a JSON list of argument lists; the process runs `bertmt` with each in
  turn (one start-up of torch and DeepSpeed for many short runs; each run builds and closes its own engine
  on the one process group, as the phases of a phased run do);
- BERTMT_TEST_COLLECTIVES=DIR: each rank writes DIR/rank<r>-collectives.json: per optimiser step, the calls
  and bytes of every collective issued inside ``Trainer.train_step`` (bertmt/engine/comm_stats.py).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

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
    poison, crash, hang = _at("BERTMT_TEST_POISON"), _at("BERTMT_TEST_CRASH"), _at("BERTMT_TEST_HANG")
    kill = int(os.environ["BERTMT_TEST_KILL"]) if os.environ.get("BERTMT_TEST_KILL") else None
    sig_name, _, sig_call = os.environ.get("BERTMT_TEST_SIGNAL", "").partition(":")
    real_loss, calls = trainer_mod.task_loss, [0]

    def faults() -> int:
        call, calls[0] = calls[0], calls[0] + 1
        if crash and crash == (rank, call):
            raise RuntimeError(f"test crash on rank {rank} at micro-batch {call}")
        if hang and hang == (rank, call):
            print(f"test hang on rank {rank} at micro-batch {call}", file=sys.stderr, flush=True)
            # hung for good: the launcher's SIGTERM ends it at once (a rank stuck in a kernel or a C call
            # would not run bertmt's handler either, and would wait for the launcher's SIGKILL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(10**6)
        if kill == call:
            os.kill(os.getpid(), signal.SIGKILL)
        if sig_name and int(sig_call) == call:
            os.kill(os.getpid(), getattr(signal, f"SIG{sig_name}"))
        return call

    def task_loss(spec, outputs, labels):
        if estimating[0]:
            return real_loss(spec, outputs, labels)
        call = faults()
        loss = real_loss(spec, outputs, labels)
        return loss * float("inf") if poison and poison == (rank, call) else loss

    def mlm_loss(logits, targets):  # the micro-batches of an MLM phase count too
        if not estimating[0]:
            faults()
        return real_mlm_loss(logits, targets)

    from bertmt.engine import hessian as hessian_mod
    from bertmt.engine import mlm as mlm_mod

    real_add, estimating = hessian_mod.HutchinsonDiagonal.add, [False]

    def add(self, weighted_loss):  # SophiaH's own forward of a micro-batch is not another micro-batch
        estimating[0] = True
        try:
            real_add(self, weighted_loss)
        finally:
            estimating[0] = False

    hessian_mod.HutchinsonDiagonal.add = add

    real_mlm_loss = mlm_mod.mlm_loss
    trainer_mod.task_loss, mlm_mod.mlm_loss = task_loss, mlm_loss
    out, real_close = os.environ.get("BERTMT_TEST_OUT"), trainer_mod.Trainer.close

    def close(self, *args, **kwargs):
        if out:
            opt = self.engine.optimizer
            record = {
                "rank": rank,
                "skipped": int(self.engine.skipped_steps),
                "step": self.state.step,
                "scale": float(getattr(opt, "cur_scale", 0.0)),
                "param": float(next(self.engine.module.parameters()).float().sum()),
                "surgery_bytes": getattr(self.opt_step, "peak_bytes", 0),
                "shared_numel": sum(
                    p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                    for p in self.engine.module.shared_parameters()
                ),
                "task_numel": sum(  # heads and PALs, each once
                    p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                    for p in {
                        id(p): p for t in self.specs for p in self.engine.module.task_parameters(t)
                    }.values()
                ),
            }
            with open(os.path.join(_out_dir(out, self.cfg), f"rank{rank}.json"), "w") as fp:
                json.dump(record, fp)
        if os.environ.get("BERTMT_TEST_RUNS"):
            kwargs["keep_process_group"] = True  # the next run uses it (DeepSpeed keeps a reference to it)
        real_close(self, *args, **kwargs)

    trainer_mod.Trainer.close = close
    if os.environ.get("BERTMT_TEST_GRADS"):
        _save_first_step_grads(os.environ["BERTMT_TEST_GRADS"], rank)
    if os.environ.get("BERTMT_TEST_COLLECTIVES"):
        _record_collectives(os.environ["BERTMT_TEST_COLLECTIVES"], rank)
    if os.environ.get("BERTMT_TEST_SURGERY"):
        _record_surgery_steps(os.environ["BERTMT_TEST_SURGERY"], rank, _at("BERTMT_TEST_POISON_HEAD"))
    from bertmt.cli import main as cli_main

    if os.environ.get("BERTMT_TEST_RUNS"):
        with open(os.environ["BERTMT_TEST_RUNS"]) as fp:
            runs = json.load(fp)
        for argv in runs:
            code = cli_main(argv)
            if code != 0:
                return code
        return 0
    return cli_main(sys.argv[1:])


def _out_dir(out: str, cfg) -> str:
    """DIR of a BERTMT_TEST_* variable: itself, or for "per-run" the parent directory of the run's run.dir."""
    return os.path.dirname(os.path.abspath(cfg.run.dir)) if out == "per-run" else out


def _save_first_step_grads(out: str, rank: int) -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.utils import safe_get_full_grad

    from bertmt.data.batching import TaskSampler
    from bertmt.engine.trainer import Trainer

    real_step, done, micro_batches, current, target = DeepSpeedEngine.step, [], [], [], [out]
    real_micro_batch, real_next, real_init = Trainer._micro_batch, TaskSampler.next, Trainer.__init__

    def init(self, cfg, *args, **kwargs):  # every run records its own first step
        done.clear()
        micro_batches.clear()
        target[0] = _out_dir(out, cfg)
        real_init(self, cfg, *args, **kwargs)

    Trainer.__init__ = init

    def micro_batch(self, task):
        current[:] = [task]
        return real_micro_batch(self, task)

    def next_batch(self):
        batch = real_next(self)
        if not done:
            micro_batches.append((current[0], batch["rows"].tolist(), float(batch["share"])))
        return batch

    Trainer._micro_batch, TaskSampler.next = micro_batch, next_batch

    def step(self, *args, **kwargs):
        if not done and self.is_gradient_accumulation_boundary():
            scale = float(getattr(self.optimizer, "cur_scale", 1.0)) if self.fp16_enabled() else 1.0
            grads = {}
            for name, p in self.module.named_parameters():
                g = safe_get_full_grad(p)
                grads[name] = None if g is None else g.float() / scale
            record = {"grads": grads, "micro_batches": micro_batches}
            torch.save(record, os.path.join(target[0], f"rank{rank}-grads.pt"))
            done.append(True)
        return real_step(self, *args, **kwargs)

    DeepSpeedEngine.step = step


def _record_collectives(out: str, rank: int) -> None:
    from bertmt.engine.comm_stats import CollectiveCounter
    from bertmt.engine.trainer import Trainer

    counter, steps, real_train_step = CollectiveCounter().install(), [], Trainer.train_step
    real_init, target = Trainer.__init__, [out]

    def init(self, cfg, *args, **kwargs):  # every run records its own steps
        steps.clear()
        target[0] = _out_dir(out, cfg)
        real_init(self, cfg, *args, **kwargs)

    def train_step(self):
        before = counter.snapshot()
        result = real_train_step(self)
        steps.append(CollectiveCounter.delta(counter.snapshot(), before))
        with open(os.path.join(target[0], f"rank{rank}-collectives.json"), "w") as fp:
            json.dump(steps, fp)
        return result

    Trainer.__init__, Trainer.train_step = init, train_step


def _record_surgery_steps(out: str, rank: int, poison: tuple[int, int] | None) -> None:
    import copy

    from bertmt.engine import surgery

    real_backward, real_apply, calls, steps = (
        surgery.AutogradSurgery.backward,
        surgery._Surgery._apply,
        [0],
        [],
    )

    def backward(self, task, loss):
        call, calls[0] = calls[0], calls[0] + 1
        real_backward(self, task, loss)
        if poison == (rank, call):
            self.own_views[task][0].fill_(float("inf"))

    def weights(self):
        import deepspeed

        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=hasattr(params[0], "ds_id")):  # ZeRO-3
            return torch.cat([p.detach().float().flatten() for p in params])

    def apply(self, gram, write):
        before, weights_before = copy.deepcopy(self.method.state_dict()), weights(self)
        applied = real_apply(self, gram, write)
        after = self.method.state_dict()
        same = before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
        steps.append(
            {
                "applied": applied,
                "state_changed": not same,
                "weights_changed": not torch.equal(weights(self), weights_before),
            }
        )
        with open(os.path.join(out, f"rank{rank}-surgery.json"), "w") as fp:
            json.dump(steps, fp)
        return applied

    surgery.AutogradSurgery.backward, surgery._Surgery._apply = backward, apply


if __name__ == "__main__":
    sys.exit(main())
