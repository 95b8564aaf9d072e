"""Command line: parses and dispatches. ``bertmt train|eval|predict|export`` (bertmt/run.py), ``keys``
(bertmt/config/keys.py) and ``submit|sweep|sweep-summary|tune|tune-summary|hostfile`` (clusters; these
import no torch, deepspeed or model code; ``tune-worker`` trains)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from bertmt.config import ConfigError, load_config

log = logging.getLogger("bertmt")


def cmd_train(args: argparse.Namespace) -> int:
    from bertmt import run

    overrides = [*args.overrides, *(["train.exclusive=true"] if args.each_task else [])]
    return run.train(load_config(args.config, overrides), args.allow_config_change)


def cmd_eval(args: argparse.Namespace) -> int:
    from bertmt import run

    metrics, out, model = run.evaluate(args.run_dir, args.overrides)
    print(run.summary(f"bertmt eval {args.run_dir}: {model}", metrics, {"written": out}))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from bertmt import run

    paths, model = run.predict(args.run_dir, args.split, args.overrides, args.format)
    print(f"# {model}", file=sys.stderr)
    for path in paths:
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bertmt import run

    out, model = run.export(args.run_dir, args.out, args.format)
    print(f"exported the {model} of {args.run_dir} to {out} ({args.format})")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from bertmt.config.keys import render

    print(render(args.prefix), end="")
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


def cmd_tune(args: argparse.Namespace) -> int:
    from launch import tune
    from launch.tune_spec import load_tune

    spec = load_tune(args.tune, args.overrides, args.trials, args.workers, args.dir, args.pruner)
    if args.backend == "submitit" and args.cluster == "slurm":
        spec.slurm["signal"] = "USR2"  # Submitit's own signal
    if args.dry_run:
        print(tune.render_array(spec) if args.backend == "sbatch" else spec.to_json())
        return 0
    tune.prepare(spec)
    print(f"study {spec.study_name}: {spec.trials} trials, {spec.workers} worker(s); directory {spec.dir}")
    if args.backend == "local":
        code = tune.run_local(spec)
        cmd_tune_summary(argparse.Namespace(study_dir=spec.dir))
        return code
    if args.backend == "sbatch":
        print(f"submitted batch job {tune.submit_sbatch(spec)}; `bertmt tune-summary {spec.dir}` shows it")
        return 0
    jobs = tune.submit_submitit(spec, args.cluster)
    print(f"submitted {len(jobs)} array tasks ({jobs[0].job_id.split('_')[0]}); study directory {spec.dir}")
    if args.wait:
        for job in jobs:
            try:
                job.results()
            except Exception as exc:  # a failed worker: the others carry the study on
                print(f"array task {job.job_id} failed: {str(exc).splitlines()[-1]}", file=sys.stderr)
        cmd_tune_summary(argparse.Namespace(study_dir=spec.dir))
    return 0


def cmd_tune_worker(args: argparse.Namespace) -> int:
    from launch.tune_worker import work

    return work(args.study_dir, args.worker)


def cmd_tune_summary(args: argparse.Namespace) -> int:
    from launch.tune_summary import write_summary

    markdown, md, csv_path, plots = write_summary(Path(args.study_dir))
    print(markdown + f"\nwritten: {md}, {csv_path}, " + ", ".join(str(p) for p in plots))
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
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume a run with a config that differs from its saved one (recorded in config_changes.jsonl)",
    )
    p.add_argument(
        "--each-task",
        action="store_true",
        help="train one model per task instead of one joint model (train.exclusive=true)",
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="dev metrics of a run's best model (overrides may point at other files)")
    p.add_argument("run_dir")
    p.add_argument("overrides", nargs="*", help="e.g. tasks.sts.dev=/path/other-dev.csv")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="write predictions of a run's best model")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["dev", "test"], default="dev")
    p.add_argument(
        "--format",
        choices=["bertmt", "cs224n"],
        default="bertmt",
        help="cs224n: the starter code's predictions/cs224n/<sst|para|sts>-<split>-output.csv",
    )
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="write a run's best encoder for transformers or sentence-transformers")
    p.add_argument("run_dir")
    p.add_argument("out", help="a new (or empty) directory")
    p.add_argument("--format", choices=["hf", "sentence-transformers"], default="hf")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("keys", help="every config key with its type, default and documentation")
    p.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. optim.")
    p.set_defaults(func=cmd_keys)
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
    p = sub.add_parser(
        "tune", help="an Optuna search with pruning over a SLURM job array (or local processes)"
    )
    p.add_argument("tune", help="a TUNE.yaml (see launch/tune_spec.py)")
    p.add_argument("overrides", nargs="*", help="config overrides for every trial")
    p.add_argument("--backend", choices=["local", "sbatch", "submitit"], default="sbatch")
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], default="slurm", help="for submitit")
    p.add_argument("--workers", type=int, default=None, help="array tasks / processes (default: the file's)")
    p.add_argument("--trials", type=int, default=None, help="finished trials to reach (default: the file's)")
    p.add_argument("--dir", default=None, help="the study directory (default: the file's)")
    p.add_argument("--pruner", choices=["asha", "hyperband", "median", "none"], help="another pruner kind")
    p.add_argument("--dry-run", action="store_true", help="print the array script (sbatch) or the spec")
    p.add_argument("--wait", action="store_true", help="submitit: wait for the workers, print the summary")
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("tune-worker", help="one worker of a study (started by bertmt tune)")
    p.add_argument("study_dir")
    p.add_argument(
        "--worker", default=None, help="worker id (default: from SLURM's array task, else host-pid)"
    )
    p.set_defaults(func=cmd_tune_worker)
    p = sub.add_parser("tune-summary", help="a study's trials, best first, its best config and plots")
    p.add_argument("study_dir")
    p.set_defaults(func=cmd_tune_summary)
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
    if args.command not in ("train", "tune-worker"):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"bertmt: configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"bertmt: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
