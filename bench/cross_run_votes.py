"""Soft votes of models from several finished exclusive runs (e.g. the same recipe under two seeds).

    BERTMT_DATA_DIR=../shared/data/cs224n python bench/cross_run_votes.py RUN_DIR RUN_DIR ... [--task quora]

Scores TASK's dev file with each run's model of TASK and its members (tasks.<task>.ensemble), as
bench/ensemble_members.py does for one run, and prints each model's accuracy and the soft vote (the mean of
the class probabilities) of every subset of two or more of them: what a recipe with more members of the same
kinds (one more seed of each) would give, before paying for its runs. Nothing is trained or written.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from ensemble_members import dev_probabilities  # noqa: E402


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--task", default="quora")
    args = parser.parse_args()
    labels, probs = None, {}
    for run_dir in args.run_dirs:
        run_probs = dev_probabilities(run_dir, args.task, None, [])
        if labels is not None and not np.array_equal(labels, run_probs["labels"]):
            raise SystemExit(f"{run_dir}: its dev labels differ from {args.run_dirs[0]}'s")
        labels = run_probs.pop("labels")
        probs |= {f"{pathlib.Path(run_dir).name}/{name}": p for name, p in run_probs.items()}

    def acc(p: np.ndarray) -> float:
        return float((p.argmax(-1) == labels).mean())

    print(f"{len(labels)} dev records of {args.task}")
    for name, p in probs.items():
        print(f"  {name:40s} {acc(p):.4f}")
    for size in range(2, len(probs) + 1):
        for subset in itertools.combinations(probs, size):
            print(f"  {' + '.join(subset)}: {acc(np.mean([probs[m] for m in subset], axis=0)):.4f}")


if __name__ == "__main__":
    main()
