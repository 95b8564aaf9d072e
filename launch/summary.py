"""`bertmt sweep-summary DIR`: every run of a sweep in one table, best dev overall score first.

A run's status comes from its run directory (bertmt/rundir.py, ``RunDir.status``): ``finished``
(metrics.json), ``failed`` (failed.json: the error that ended it), ``unfinished`` (started: running,
preempted or killed), ``not started``.
"""

from __future__ import annotations

import csv
import io
import json
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
        rows.append(row)
    finished = sorted((r for r in rows if r["overall"] is not None), key=lambda r: -r["overall"])
    return finished + [r for r in rows if r["overall"] is None]


def _columns(rows: list[dict]) -> list[str]:
    metric_cols = sorted({k for r in rows for k in r if "/" in k})
    return ["rank", "run", "status", "overall", *metric_cols, "overrides"]


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
    md, csv_path = sweep_dir / "summary.md", sweep_dir / "summary.csv"
    md.write_text(markdown)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _cell(r.get(c)).strip("*") for c in cols})
    csv_path.write_text(buf.getvalue())
    return markdown, md, csv_path
