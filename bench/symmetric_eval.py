"""Not a speed benchmark: a probe for docs/results.md (issue 14). Paraphrase and similarity do not depend on
the order of the two sentences, but a cross-encoder reads "[CLS] a [SEP] b [SEP]" and "[CLS] b [SEP] a
[SEP]" differently. This scores a finished run's dev pairs both ways and with the two outputs averaged
(test-time symmetrisation), per cross-encoded pair task, with the run's own best model(s) (phased and
exclusive runs: the model that answers the task). Nothing is written. (Training and evaluating with both
orders is now `tasks.<t>.symmetric: true`; this probe scores runs trained without it.)

    BERTMT_DATA_DIR=../shared/data/cs224n python bench/symmetric_eval.py runs/cpu-recipe-split [--tasks quora]
"""

from __future__ import annotations

import argparse
import dataclasses

from bertmt.data.batching import encode
from bertmt.evaluation.metrics import task_metrics
from bertmt.evaluation.predict import predict, to_predictions
from bertmt.evaluation.runs import _device, _load, routes
from bertmt.run import run_config
from bertmt.rundir import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a finished run directory")
    ap.add_argument("--tasks", nargs="*", help="default: every cross-encoded pair task with a dev file")
    args = ap.parse_args()
    cfg, run = run_config(args.run, []), RunDir(args.run)
    for tasks_cfg, model_cfg, model_run in routes(cfg, run):
        model, tokenizer = _load(model_cfg, model_run)
        for name, task in tasks_cfg.resolved_tasks().items():
            if (args.tasks and name not in args.tasks) or not task.spec.is_pair or task.siamese:
                continue
            data = cfg.data.loader(tokenizer).read(task, "dev")
            if data is None:
                continue
            swapped = dataclasses.replace(data, texts=[(b, a) for a, b in data.texts])
            outputs = []
            for d in (data, swapped):  # no cache: the cache key does not know the order
                enc = encode(d, tokenizer, cfg.data.max_length, None, tagger=cfg.data.tagger)
                batch = cfg.data.eval_batch_size
                outputs.append(predict(model, task.spec, enc, batch, _device(), sharded=False))
            labels = enc.labels
            rows = {"a, b": outputs[0], "b, a": outputs[1], "mean of both": (outputs[0] + outputs[1]) / 2}
            print(f"{args.run} {name} ({model_run.path.name}), {len(labels)} dev pairs:")
            for label, out in rows.items():
                metrics = task_metrics(task.spec, to_predictions(task.spec, out), labels)
                print(f"  {label:>13}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
