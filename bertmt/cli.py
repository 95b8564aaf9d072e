"""Command line: ``bertmt train|eval|predict``."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from bertmt.config import ConfigError, ExperimentConfig, load_config

log = logging.getLogger("bertmt")


def _summary(title: str, metrics: dict, extra: dict) -> str:
    lines = ["", "=" * 60, f" {title}", "-" * 60]
    for task, values in metrics.items():
        if isinstance(values, dict):
            lines += [f"  {task:<10} {name:<10} {v:.4f}" for name, v in values.items()]
    lines.append(f"  {'overall':<21} {metrics['overall']:.4f}")
    lines.append("-" * 60)
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    lines.append("=" * 60)
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from bertmt.data.loading import check_files

    check_files(cfg)
    from bertmt.engine.trainer import Trainer

    start = time.time()
    trainer = Trainer(cfg)
    try:
        with logging_redirect_tqdm():
            metrics = trainer.fit()
        if trainer.is_main:
            print(
                _summary(
                    f"bertmt train: best dev metrics (epoch {trainer.state.best_epoch})",
                    metrics,
                    {
                        "run directory": cfg.run.dir,
                        "wall time": f"{time.time() - start:.0f} s",
                        "optimiser steps": trainer.state.step,
                    },
                )
            )
    finally:
        trainer.close()
    if trainer.is_main:
        from bertmt.evaluation.runs import predict_run

        predict_run(cfg, Path(cfg.run.dir), "test")  # dev predictions were written with the best model
        from bertmt.evaluation.report import plot_training_curves

        log.info("training curves: %s", plot_training_curves(Path(cfg.run.dir)))
    return 0


def _run_config(run_dir: str, overrides: list[str]) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is {run_dir} a bertmt run directory?")
    return load_config(path, overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from bertmt.evaluation.runs import evaluate_run

    cfg = _run_config(args.run_dir, args.overrides)
    metrics, out = evaluate_run(cfg, Path(args.run_dir))
    print(_summary(f"bertmt eval {args.run_dir}", metrics, {"written": out}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bertmt.evaluation.runs import predict_run

    cfg = _run_config(args.run_dir, args.overrides)
    for path in predict_run(cfg, Path(args.run_dir), args.split):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertmt", description="Multitask BERT training on DeepSpeed")
    # the `deepspeed` launcher passes --local_rank=N to every process (LOCAL_RANK is in the environment too)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train", help="train from a YAML config (resumes if the run directory has a checkpoint)"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=2e-5 train.epochs=2")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="dev metrics of a run's best model (overrides may point at other files)")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="e.g. tasks.sts.dev=/path/other-dev.csv")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="write predictions of a run's best model")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["dev", "test"], default="dev")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "train":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"bertmt: configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"bertmt: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
