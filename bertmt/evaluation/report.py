"""Plots of a run: training curves (per-task training loss by step, dev metrics by epoch)."""

from __future__ import annotations

from pathlib import Path

from bertmt.files import atomic_path
from bertmt.rundir import RunDir


def plot_training_curves(run: RunDir) -> Path:
    """Write ``plots/training_curves.png`` from the run's TensorBoard events and history.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tensorboard))
    events.Reload()
    history = run.read_json(run.history)
    fig, (loss_ax, dev_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    loss_tags = sorted(t for t in events.Tags()["scalars"] if t.startswith("train/") and t.endswith("/loss"))
    dev_tasks = {k for k, v in history[0].items() if isinstance(v, dict)}
    tasks = sorted({t.split("/")[1] for t in loss_tags} | dev_tasks)
    color = {task: f"C{i}" for i, task in enumerate(tasks)}  # one colour per task in both panels
    for tag in loss_tags:
        scalars = events.Scalars(tag)
        task = tag.split("/")[1]
        loss_ax.plot([e.step for e in scalars], [e.value for e in scalars], label=task, color=color[task])
    loss_ax.set(xlabel="optimiser step", ylabel="loss (CE; MSE for regression)", title="Training loss")
    loss_ax.legend()
    epochs = [h["epoch"] for h in history]
    for task, values in history[0].items():
        if isinstance(values, dict):
            for metric in values:
                dev_ax.plot(
                    epochs,
                    [h[task][metric] for h in history],
                    marker="o",
                    label=f"{task} {metric}",
                    color=color[task],
                )
    dev_ax.plot(epochs, [h["overall"] for h in history], "k--", marker="s", label="overall")
    dev_ax.set(xlabel="epoch", ylabel="dev metric", title="Dev metrics", xticks=epochs)
    dev_ax.legend()
    fig.tight_layout()
    out = run.training_curves
    out.parent.mkdir(exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
