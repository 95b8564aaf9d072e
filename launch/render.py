"""Render the sbatch templates in slurm/ from a config's ``slurm:`` section."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from bertmt.config import ExperimentConfig, SlurmConfig

TEMPLATES = Path(__file__).resolve().parents[1] / "slurm"
PLACEHOLDER = re.compile(r"\{\{ (\w+) \}\}")


def fill(template: str, values: dict[str, object]) -> str:
    """Replace every ``{{ name }}``; a placeholder without a value is an error (never rendered empty)."""
    missing = sorted({m for m in PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise KeyError(f"template placeholders without a value: {missing}")
    return PLACEHOLDER.sub(lambda m: str(values[m[1]]), template)


def load_template(name: str) -> str:
    path = TEMPLATES / f"{name}.sbatch"
    if not path.is_file():
        raise FileNotFoundError(
            f"sbatch template {path} not found (bertmt must run from its source checkout)"
        )
    return path.read_text()


def resources(s: SlurmConfig) -> str:
    """The #SBATCH lines for what the config sets (nothing for unset options)."""
    lines = [f"--cpus-per-task={s.cpus_per_task}", f"--time={s.time}"]
    lines += [f"--partition={s.partition}"] if s.partition else []
    lines += [f"--account={s.account}"] if s.account else []
    lines += [f"--gpus-per-node={s.gpus_per_node}"] if s.gpus_per_node else []
    lines += [f"--mem={s.mem}"] if s.mem else []
    lines += list(s.sbatch)
    return "\n".join(f"#SBATCH {line}" for line in lines)


def common(cfg: ExperimentConfig, config: str, job_name: str) -> dict[str, object]:
    s = cfg.slurm
    return {
        "config": shlex.quote(str(Path(config).resolve())),
        "job_name": job_name,
        "ranks": s.ranks_per_node,
        "resources": resources(s),
        "signal": s.signal,
        "signal_seconds": s.signal_seconds,
        "requeue": "requeue" if s.requeue else "no-requeue",
        "setup": "\n".join(s.setup) if s.setup else "# (no slurm.setup lines)",
        "cpus_per_task": s.cpus_per_task,
        "python": s.python,
    }


def launch_command(cfg: ExperimentConfig, train: str) -> tuple[str, int]:
    """The multi-node launch line for ``slurm.launcher`` and the srun tasks per node it needs."""
    s = cfg.slurm
    if s.launcher == "srun":
        return f"srun --kill-on-bad-exit=1 {s.python} -m bertmt.cli {train}", s.ranks_per_node
    if s.launcher == "torchrun":
        inner = (
            f'trap "" {s.signal}; exec {s.python} -m torch.distributed.run --nnodes=$SLURM_NNODES '
            f"--node_rank=$SLURM_NODEID --nproc_per_node={s.ranks_per_node} --master_addr=$MASTER_ADDR "
            f"--master_port=$MASTER_PORT -m bertmt.cli {train}"
        )
        return f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(inner)}", 1
    hostfile = f"{shlex.quote(cfg.run.dir)}/hostfile"
    # DeepSpeed 0.19's slurm runner drops --module and --no_python: it is given bertmt/cli.py as a script
    lines = [
        f"{s.python} -m bertmt.cli hostfile --slots {s.ranks_per_node} > {hostfile}",
        f"CLI=$({s.python} -c 'import bertmt.cli; print(bertmt.cli.__file__)')",
        f"{s.python} -m deepspeed.launcher.runner --hostfile {hostfile} --launcher slurm --no_ssh_check "
        f'--master_addr $MASTER_ADDR --master_port $MASTER_PORT "$CLI" {train}',
    ]
    return "\n".join(lines), 1


def render_job(cfg: ExperimentConfig, config: str, overrides: list[str]) -> str:
    """The sbatch script of one training run: single-node.sbatch, or multi-node.sbatch for slurm.nodes > 1."""
    values = common(cfg, config, job_name=f"bertmt-{Path(cfg.run.dir).name}")
    values["log_dir"] = shlex.quote(str(Path(cfg.run.dir).resolve()))
    values["overrides"] = " ".join(shlex.quote(o) for o in overrides)
    if cfg.slurm.nodes == 1:
        return fill(load_template("single-node"), values)
    train = f"train {values['config']} {values['overrides']}".rstrip()
    launch, tasks = launch_command(cfg, train)
    values |= {"nodes": cfg.slurm.nodes, "launcher": cfg.slurm.launcher, "launch": launch}
    values["tasks_per_node"] = tasks
    return fill(load_template("multi-node"), values)
