"""`bertmt tune-summary DIR`: every trial of a study (parameters, state, epochs run, value), best first, as
markdown and CSV, the best trial's config, and plots: optimisation history, intermediate values (the
pruning), parameter importances, parallel coordinates. Reads the study with plain Optuna. Imports no
torch."""

from __future__ import annotations

import csv
import logging
import math
import warnings
from pathlib import Path

from launch.study import RETRY_ATTR, STALE_ATTR, WORKER_ATTR, load_spec, storage, trial_dir

log = logging.getLogger("bertmt.tune")
PLOTS = ("optimization_history", "intermediate_values", "param_importances", "parallel_coordinate")


def load(study_dir: Path):
    import optuna

    spec = load_spec(study_dir)
    return spec, optuna.load_study(study_name=spec.study_name, storage=storage(study_dir))


def rows(spec, study) -> list[dict]:
    """One row per trial, best first: complete by value, then pruned by epochs run (more first) and last
    value, then the rest."""
    out = []
    for t in study.get_trials(deepcopy=False):
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        note = t.user_attrs.get(STALE_ATTR) or t.user_attrs.get("error") or ""
        if RETRY_ATTR in t.user_attrs:
            note = f"retry of trial {t.user_attrs[RETRY_ATTR]}" + (f"; {note}" if note else "")
        out.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "epochs": len(t.intermediate_values),
                "last_report": last,
                **{k: t.params.get(k) for k in spec.space},
                "worker": t.user_attrs.get(WORKER_ATTR, ""),
                "seconds": round(t.duration.total_seconds()) if t.duration else None,
                "note": note,
            }
        )
    sign = -1 if spec.direction == "maximize" else 1
    order = {"complete": 0, "pruned": 1, "running": 2, "waiting": 3, "fail": 4}

    def key(r):
        value = r["value"] if r["value"] is not None else r["last_report"]
        return (order.get(r["state"], 5), -r["epochs"], sign * value if value is not None else math.inf)

    return sorted(out, key=key)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return "" if v is None else str(v)


def write_summary(study_dir: Path) -> tuple[str, Path, Path, list[Path]]:
    """Markdown text, summary.md, summary.csv and the plots (DIR/plots/*.png)."""
    spec, study = load(study_dir)
    table = rows(spec, study)
    cols = list(table[0]) if table else ["trial"]
    counts = {
        s: sum(r["state"] == s for r in table) for s in ("complete", "pruned", "fail", "running", "waiting")
    }
    lines = [
        f"# Study {spec.study_name}: {spec.objective} ({spec.direction})",
        "",
        "trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in table]
    complete = [r for r in table if r["state"] == "complete"]
    if complete:
        best = complete[0]
        run_dir = trial_dir(study_dir, best["trial"])
        params = " ".join(f"{k}={_fmt(best[k])}" for k in spec.space)
        lines += ["", f"best: trial {best['trial']}, {spec.objective} {best['value']:.4f} ({params})"]
        lines += [f"its config: {run_dir / 'config.yaml'} (`bertmt train {run_dir / 'config.yaml'}`)"]
    markdown = "\n".join(lines) + "\n"
    md, csv_path = study_dir / "summary.md", study_dir / "summary.csv"
    md.write_text(markdown)
    with open(csv_path, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=cols)
        writer.writeheader()
        writer.writerows(table)
    return markdown, md, csv_path, plot(study, study_dir / "plots")


def plot(study, out: Path) -> list[Path]:
    """The four plots that Optuna's matplotlib backend draws; one that the study cannot support yet (e.g.
    importances before two complete trials) is logged and left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings of the matplotlib backend
                ax = getattr(vis, f"plot_{name}")(study)
        except (ValueError, RuntimeError) as exc:
            log.warning("no %s plot: %s", name, exc)
            continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        fig.set_size_inches(9, 5.5)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"{name}.png")
    return written
