"""What a classification ensemble's members give, from a finished exclusive run (tasks.<t>.ensemble).

    BERTMT_DATA_DIR=../shared/data/cs224n python bench/ensemble_members.py RUN_DIR [--task quora] \
        [--members quora_siamese,quora_cnn] [--override KEY=VALUE ...]

Scores TASK's dev file with TASK's own model and with each member's (its tasks.<task>.ensemble, or
--members), and prints: each model's accuracy; the soft vote (the mean of the class probabilities, as
bertmt.evaluation.ensemble.combine) of the own model with every non-empty subset of the members; two-model
votes with the own model weighted 0.3 to 0.7; how often the own model and each member are both wrong. The
weights are scored on the same dev file they would be chosen on, so the best of them overstates what a weight
fitted there would give on other data. Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from bertmt.config import load_config
from bertmt.evaluation.ensemble import _softmax
from bertmt.evaluation.predict import predict
from bertmt.evaluation.runs import _device, _load, member_outputs, model_of_dataset
from bertmt.rundir import RunDir


def dev_probabilities(run_dir: str, task: str, members: list[str] | None, overrides: list[str]) -> dict:
    """{model name: (N, classes) dev probabilities} for ``task``'s own model and its members, plus labels."""
    if members is not None:
        overrides = [*overrides, f"tasks.{task}.ensemble=[{','.join(members)}]"]
    cfg = load_config(f"{run_dir}/config.yaml", overrides)
    run = RunDir(run_dir)
    model, tokenizer = _load(*model_of_dataset(cfg, run, task))
    enc = cfg.data.loader(tokenizer).load(cfg.resolved_tasks()[task], "dev")
    own = predict(model, cfg.task_spec(task), enc, cfg.data.eval_batch_size, _device(), sharded=False)
    outputs = [own, *member_outputs(cfg, run, task, "dev", enc.ids)]
    names = [task, *cfg.tasks[task].ensemble]
    return {"labels": np.asarray(enc.labels).astype(int)} | {n: _softmax(o) for n, o in zip(names, outputs)}


def report(probs: dict, task: str) -> None:
    labels = probs.pop("labels")

    def acc(p: np.ndarray) -> float:
        return float((p.argmax(-1) == labels).mean())

    members = [m for m in probs if m != task]
    print(f"{len(labels)} dev records of {task}")
    for name, p in probs.items():
        print(f"  {name:24s} alone      {acc(p):.4f}")
    for size in range(1, len(members) + 1):
        for subset in itertools.combinations(members, size):
            vote = np.mean([probs[task], *(probs[m] for m in subset)], axis=0)
            print(f"  {task} + {' + '.join(subset):40s} {acc(vote):.4f}")
    for member in members:
        weights = "  ".join(
            f"{w:.1f}: {acc(w * probs[task] + (1 - w) * probs[member]):.4f}"
            for w in np.arange(0.3, 0.75, 0.1)
        )
        wrong = (probs[task].argmax(-1) != labels) & (probs[member].argmax(-1) != labels)
        print(f"  {task}'s weight with {member}: {weights}; both wrong {wrong.mean():.4f}")


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("run_dir")
    parser.add_argument("--task", default="quora")
    parser.add_argument("--members", help="datasets, comma-separated (default: tasks.<task>.ensemble)")
    parser.add_argument("--override", action="append", default=[], help="a config override, as bertmt eval's")
    args = parser.parse_args()
    members = args.members.split(",") if args.members else None
    report(dev_probabilities(args.run_dir, args.task, members, args.override), args.task)


if __name__ == "__main__":
    main()
