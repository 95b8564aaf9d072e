"""Not a speed benchmark: the per-task fine-tuning probe of docs/results.md (issue 14), MT-DNN's second stage
(Liu et al. 2019) tried by hand on a finished run. Each task's model starts from the run's best multitask
model (the encoder and that task's head; the other heads are left out) and trains on that task alone, one
process, in <out>/tasks/<task>: the config's settings otherwise (its phases dropped), each task's config as
train.exclusive builds it (``task_configs``). Its best dev metrics are printed.

    BERTMT_DATA_DIR=../shared/data/cs224n python bench/per_task_finetune.py \
        runs/cpu-recipe-s3/phases/2-joint configs/cpu-recipe-three-phases.yaml /tmp/finetune \
        [--lr 3e-5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

from bertmt.config import load_config, task_configs
from bertmt.engine.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run (or phase) directory with best/model.safetensors")
    ap.add_argument("config", type=Path, help="the settings of the fine-tuning runs (tasks, data, optimiser)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--epochs", type=int, default=2, help="passes over the task's training set")
    ap.add_argument("--tasks", nargs="*", help="default: every task of the config")
    args = ap.parse_args()
    state = load_file(str(args.run / "best" / "model.safetensors"))
    overrides = ["phases=[]", f"run.dir={args.out}", f"optim.lr={args.lr}", f"train.epochs={args.epochs}"]
    cfg = load_config(args.config, [*overrides, "train.batches_per_epoch=null", "train.patience=1"])
    args.out.mkdir(parents=True, exist_ok=True)
    for task, task_cfg in task_configs(cfg):  # as train.exclusive builds them: <out>/tasks/<task>
        if args.tasks and task not in args.tasks:
            continue
        init = args.out / f"init-{task}.safetensors"  # the encoder and this task's head
        save_file(
            {k: v for k, v in state.items() if not k.startswith("heads.") or k.startswith(f"heads.{task}.")},
            str(init),
        )
        start = time.time()
        trainer = Trainer(task_cfg, init_from=init)
        metrics = trainer.fit()
        trainer.close(keep_process_group=True)
        print(f"{task}: {json.dumps(metrics)} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
