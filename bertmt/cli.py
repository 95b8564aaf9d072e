"""Command line: ``bertmt train|eval|predict`` (training) and ``submit|sweep|sweep-summary|hostfile``
(clusters; these import no torch, deepspeed or model code)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from bertmt.config import ConfigError, ExperimentConfig, load_config

log = logging.getLogger("bertmt")
EXIT_PREEMPTED = 3  # stopped at a checkpoint by a signal, not requeued: run the same command to resume
EXIT_REQUEUED = 4  # stopped at a checkpoint by a signal and the SLURM job was requeued: it resumes by itself


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


def _plot(run_dir: Path) -> None:
    from bertmt.evaluation.report import plot_training_curves

    log.info("training curves: %s", plot_training_curves(run_dir))


def _train_single(cfg: ExperimentConfig, start: float) -> bool:
    from bertmt.engine.trainer import Trainer

    trainer = Trainer(cfg)
    try:
        metrics = trainer.fit()
        if trainer.is_main:
            extra = {
                "run directory": cfg.run.dir,
                "wall time": f"{time.time() - start:.0f} s",
                "optimiser steps": trainer.state.step,
            }
            print(
                _summary(f"bertmt train: best dev metrics (epoch {trainer.state.best_epoch})", metrics, extra)
            )
    finally:
        trainer.close()
    return trainer.is_main


def _train_phases(cfg: ExperimentConfig, start: float) -> bool:
    from bertmt.engine.phases import run_phases

    def plot_phase(phase_cfg, trainer) -> None:
        if trainer.is_main and cfg.run.reports:
            _plot(Path(phase_cfg.run.dir))

    metrics, phases = run_phases(cfg, plot_phase)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        extra = {
            "run directory": cfg.run.dir,
            "wall time": f"{time.time() - start:.0f} s",
            "phases": ", ".join(f"{p['phase']} (best epoch {p['best_epoch']})" for p in phases),
        }
        print(_summary(f"bertmt train: best dev metrics of phase '{phases[-1]['phase']}'", metrics, extra))
    return is_main


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from bertmt.data.loading import check_files
    from bertmt.engine.preemption import Preempted

    check_files(cfg)  # before any work: a missing file creates no run directory
    run_dir = Path(cfg.run.dir)
    failed = run_dir / "failed.json"  # what `bertmt sweep-summary` reports as a failed run
    failed.unlink(missing_ok=True)
    start = time.time()
    try:
        with logging_redirect_tqdm():
            is_main = (_train_phases if cfg.phases else _train_single)(cfg, start)
    except Preempted as exc:
        log.warning("%s", exc)
        return EXIT_REQUEUED if exc.requeued else EXIT_PREEMPTED
    except Exception as exc:
        run_dir.mkdir(parents=True, exist_ok=True)
        failed.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}", "time": time.ctime()}))
        raise
    if is_main:
        from bertmt.evaluation.runs import evaluate_run, predict_run

        predict_run(cfg, run_dir, "test")  # dev predictions were written with the best model
        if cfg.run.reports:
            if not cfg.phases:
                _plot(run_dir)
            evaluate_run(cfg, run_dir, reports=True)  # confusion matrices, ROC, STS scatter, worst errors
    return 0


def _run_config(run_dir: str, overrides: list[str]) -> ExperimentConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: is {run_dir} a bertmt run directory?")
    return load_config(path, overrides)


def cmd_eval(args: argparse.Namespace) -> int:
    from bertmt.evaluation.runs import evaluate_run

    cfg = _run_config(args.run_dir, args.overrides)
    run_dir = Path(args.run_dir)
    metrics, out = evaluate_run(cfg, run_dir, reports=True)
    for done in [run_dir, *sorted((run_dir / "phases").glob("*"))]:  # training curves of what trained
        if (done / "history.json").is_file() and (done / "tensorboard").is_dir():
            _plot(done)
    print(_summary(f"bertmt eval {args.run_dir}", metrics, {"written": out}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bertmt.evaluation.runs import predict_run

    cfg = _run_config(args.run_dir, args.overrides)
    for path in predict_run(cfg, Path(args.run_dir), args.split):
        print(path)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.dry_run or args.sbatch:
        from launch.render import render_job

        own = [o for o in args.overrides if not o.startswith("run.dir=")]
        overrides = [*own, f"run.dir={Path(cfg.run.dir).resolve()}"]  # jobs start in another directory
        script = render_job(cfg, args.config, overrides)
        if args.dry_run:
            print(script, end="")
            return 0
        return _sbatch(script, Path(cfg.run.dir))
    from launch.submitit_job import submit

    job = submit(cfg, args.config, args.overrides, args.cluster)
    print(f"submitted {args.cluster} job {job.job_id}; run directory {Path(cfg.run.dir).resolve()}")
    if args.wait:
        print(json.dumps(job.results()[0], indent=2))  # task 0's: the run's metrics.json
    return 0


def _sbatch(script: str, log_dir: Path, parsable_name: str = "job.sbatch") -> int:
    import subprocess

    log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the --output directory
    path = log_dir / parsable_name
    path.write_text(script)
    proc = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"bertmt: sbatch {path} failed: {proc.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"submitted batch job {proc.stdout.strip()}; script {path}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from launch.sweep import load_sweep, render_array, write_sweep_files

    sweep = load_sweep(args.sweep)
    if args.dry_run:
        print(render_array(sweep), end="")
        for run in sweep.runs:
            print(f"# run {run.index}: {' '.join(run.overrides)}")
        return 0
    write_sweep_files(sweep)
    if args.backend == "sbatch":
        return _sbatch(render_array(sweep), sweep.dir, "array.sbatch")
    from launch.submitit_job import submit_array

    cfg = load_config(sweep.base, sweep.runs[0].overrides)
    runs = [(r.run_dir, r.overrides) for r in sweep.runs]
    jobs = submit_array(cfg, str(sweep.base), runs, args.cluster, sweep.dir / "submitit", sweep.max_parallel)
    print(f"submitted {len(jobs)} array tasks ({jobs[0].job_id.split('_')[0]}); sweep directory {sweep.dir}")
    if args.wait:
        for job in jobs:
            try:
                job.results()
            except Exception as exc:  # a failed run is reported by sweep-summary, the others still count
                print(f"array task {job.job_id} failed: {str(exc).splitlines()[-1]}", file=sys.stderr)
    return 0


def cmd_sweep_summary(args: argparse.Namespace) -> int:
    from launch.summary import write_summary

    markdown, md, csv_path = write_summary(Path(args.sweep_dir))
    print(markdown + f"\nwritten: {md}, {csv_path}")
    return 0


def cmd_hostfile(args: argparse.Namespace) -> int:
    from launch.hostfile import hostfile

    nodelist = args.nodelist or os.environ.get("SLURM_JOB_NODELIST")
    if not nodelist:
        raise ValueError("no node list: pass one or run inside a SLURM job (SLURM_JOB_NODELIST)")
    print(hostfile(nodelist, args.slots), end="")
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

    p = sub.add_parser(
        "submit", help="submit a training run to SLURM (Submitit, or a rendered sbatch script)"
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument(
        "--cluster", choices=["slurm", "local", "debug"], default="slurm", help="Submitit executor"
    )
    p.add_argument(
        "--sbatch", action="store_true", help="render slurm/*.sbatch from the config and sbatch it"
    )
    p.add_argument("--dry-run", action="store_true", help="print the rendered sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="Submitit: wait for the job and print its metrics")
    p.set_defaults(func=cmd_submit)
    p = sub.add_parser("sweep", help="submit a sweep file's runs as one SLURM job array")
    p.add_argument("sweep")
    p.add_argument("--backend", choices=["sbatch", "submitit"], default="sbatch")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], default="slurm", help="for submitit")
    p.add_argument(
        "--dry-run", action="store_true", help="print the array script and the runs, submit nothing"
    )
    p.add_argument("--wait", action="store_true", help="submitit: wait for every array task")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("sweep-summary", help="one table of a sweep's runs, best dev overall score first")
    p.add_argument("sweep_dir")
    p.set_defaults(func=cmd_sweep_summary)
    p = sub.add_parser("hostfile", help="deepspeed hostfile from a SLURM node list ($SLURM_JOB_NODELIST)")
    p.add_argument("nodelist", nargs="?")
    p.add_argument("--slots", type=int, required=True, help="ranks (GPUs) per node")
    p.set_defaults(func=cmd_hostfile)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`submit CONFIG --dry-run optim.lr=2e-5`)
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
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
