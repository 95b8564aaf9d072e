"""Not a speed benchmark: the per-task fine-tuning probe of docs/results.md (issue 14), MT-DNN's second stage
(Liu et al. 2019) tried by hand on a finished run. Each task's model starts from the run's best multitask
model (the encoder and that task's head; the other heads are left out) and trains on that task alone, one
process, the config's settings otherwise (its phases dropped), and its best dev metrics are printed.

    BERTMT_DATA_DIR=../shared/data/cs224n python bench/per_task_finetune.py \
        runs/cpu-recipe-s3/phases/2-joint configs/cpu-recipe.yaml /tmp/finetune [--lr 3e-5] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml
from safetensors.torch import load_file, save_file

from bertmt.config import load_config
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
    tree = yaml.safe_load(args.config.read_text())
    tree.pop("phases", None)
    args.out.mkdir(parents=True, exist_ok=True)
    for task in args.tasks or list(tree["tasks"]):
        init = args.out / f"init-{task}.safetensors"  # the encoder and this task's head
        save_file(
            {k: v for k, v in state.items() if not k.startswith("heads.") or k.startswith(f"heads.{task}.")},
            str(init),
        )
        one = dict(tree, tasks={task: tree["tasks"][task]})
        one["run"] = dict(tree["run"], dir=str(args.out / task))
        one["optim"] = dict(tree["optim"], lr=args.lr)
        one["train"] = dict(tree["train"], epochs=args.epochs, batches_per_epoch=None, patience=1)
        (args.out / f"{task}.yaml").write_text(yaml.safe_dump(one))
        start = time.time()
        trainer = Trainer(load_config(args.out / f"{task}.yaml", []), init_from=init)
        metrics = trainer.fit()
        trainer.close(keep_process_group=True)
        print(f"{task}: {json.dumps(metrics)} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
