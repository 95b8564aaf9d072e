"""`bertmt sweep-summary DIR`: every run of a sweep in one table, best dev overall score first, and, for
runs that differ only in ``run.seed``, a second table of mean +- std over the seeds (a difference between
two rows is a finding only where it exceeds that spread).

A run's status comes from its run directory (bertmt/rundir.py, ``RunDir.status``): ``finished``
(metrics.json), ``failed`` (failed.json: the error that ended it), ``unfinished`` (started: running,
preempted or killed), ``not started``. Finished runs also report their training time (train.log) and, on
the per-task gradient path, the mean over logged steps of each task-pair cosine (TensorBoard ``mtl/cos/*``).
"""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from bertmt.rundir import FINISHED, RunDir


def run_status(run_dir: Path) -> tuple[str, dict | None]:
    run = RunDir(run_dir)
    status = run.status()
    return status, run.read_metrics() if status == FINISHED else None


def collect(sweep_dir: Path) -> list[dict]:
    info_file = sweep_dir / "sweep.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{info_file} does not exist: is {sweep_dir} a sweep directory?")
    rows = []
    for run in json.loads(info_file.read_text())["runs"]:
        status, metrics = run_status(Path(run["run_dir"]))
        own = [o for o in run["overrides"] if not o.startswith("run.dir=")]
        row = {"run": run["name"], "status": status, "overrides": " ".join(own), "overall": None}
        for task, values in (metrics or {}).items():
            if isinstance(values, dict):
                row |= {f"{task}/{m}": v for m, v in values.items()}
        if metrics:
            row["overall"] = metrics["overall"]
            row |= _extras(RunDir(run["run_dir"]))
        rows.append(row)
    finished = sorted((r for r in rows if r["overall"] is not None), key=lambda r: -r["overall"])
    return finished + [r for r in rows if r["overall"] is None]


def _extras(run: RunDir) -> dict[str, float]:
    """Training seconds (the last "finished in N s" of train.log) and mean task-pair cosines."""
    out = {}
    found = re.findall(r"finished in (\d+) s", run.train_log.read_text()) if run.train_log.is_file() else []
    if found:
        out["train_s"] = float(found[-1])
    if run.tensorboard.is_dir():
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run.tensorboard), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith("mtl/cos/"):
                out[tag.replace("mtl/", "")] = statistics.fmean(e.value for e in events.Scalars(tag))
    return out


def _columns(rows: list[dict]) -> list[str]:
    metric_cols = sorted({k for r in rows for k in r if "/" in k and not k.startswith("cos/")})
    extra = sorted({k for r in rows for k in r if k.startswith("cos/")}) + ["train_s"] * any(
        "train_s" in r for r in rows
    )
    return ["rank", "run", "status", "overall", *metric_cols, *extra, "overrides"]


def over_seeds(rows: list[dict]) -> list[dict]:
    """Finished runs grouped by their overrides without ``run.seed``; groups of two or more runs as one row
    of mean +- std (sample standard deviation) per number, best mean overall first."""
    groups = defaultdict(list)
    for row in rows:
        if row["overall"] is not None:
            key = " ".join(o for o in row["overrides"].split() if not o.startswith("run.seed="))
            groups[key].append(row)
    out = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        agg = {"overrides": key, "seeds": len(members)}
        for col in {k for r in members for k in r if k == "overall" or "/" in k or k == "train_s"}:
            values = [r[col] for r in members if r.get(col) is not None]
            if len(values) == len(members):
                agg[col] = (statistics.fmean(values), statistics.stdev(values))
        out.append(agg)
    return sorted(out, key=lambda r: -r["overall"][0])


def _seed_table(groups: list[dict]) -> str:
    cols = ["overall"] + sorted({k for g in groups for k in g if k not in ("overrides", "seeds", "overall")})
    lines = ["| overrides | seeds | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for g in groups:
        cells = [f"{g[c][0]:.4f} +- {g[c][1]:.4f}" if c in g else "" for c in cols]
        lines.append(f"| {g['overrides']} | {g['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def write_summary(sweep_dir: Path) -> tuple[str, Path, Path]:
    """summary.md and summary.csv in the sweep directory; returns the markdown table and both paths."""
    rows = collect(sweep_dir)
    cols = _columns(rows)
    for i, row in enumerate(rows):
        row["rank"] = i + 1 if row["overall"] is not None else "-"
        if row["status"] != "finished":
            row["status"] = f"**{row['status']}**"
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    markdown = "\n".join(lines) + "\n"
    groups = over_seeds(rows)
    if groups:
        markdown += "\n## Over seeds (mean +- sample std)\n\n" + _seed_table(groups)
    md, csv_path = sweep_dir / "summary.md", sweep_dir / "summary.csv"
    md.write_text(markdown)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r.get(c)).strip("*") for c in cols})
    csv_path.write_text(buf.getvalue())
    return markdown, md, csv_path
