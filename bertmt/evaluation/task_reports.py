"""Per-task evaluation reports, as JSON and PNG: confusion matrix and classification report (classification),
ROC curve (binary), prediction-vs-gold scatter (regression), and the worst errors with their text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertmt.data.readers import TaskData
from bertmt.data.tasks import TaskSpec
from bertmt.evaluation.metrics import pearson
from bertmt.evaluation.predict import to_predictions
from bertmt.files import atomic_path


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """counts[g, p]: examples of gold class g predicted as p."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (gold.astype(int), pred.astype(int)), 1)
    return counts


def classification_report(counts: np.ndarray) -> dict:
    """Precision, recall, F1 and support per class, their macro average, and accuracy, from a confusion
    matrix."""
    tp = np.diag(counts).astype(float)
    predicted, support = counts.sum(0), counts.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    report = {
        str(c): {"precision": precision[c], "recall": recall[c], "f1": f1[c], "support": int(support[c])}
        for c in range(len(tp))
    }
    report["macro avg"] = {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()}
    report["accuracy"] = float(tp.sum() / max(1, counts.sum()))
    return json.loads(json.dumps(report, default=float))


def roc_curve(gold: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates over all thresholds (ties taken together) and the area under them."""
    order = np.argsort(-score, kind="stable")
    score, gold = score[order], gold[order].astype(bool)
    last = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]  # last index of each distinct score
    tp, fp = np.cumsum(gold)[last], np.cumsum(~gold)[last]
    tpr = np.r_[0, tp] / max(1, gold.sum())
    fpr = np.r_[0, fp] / max(1, (~gold).sum())
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


def worst_errors(spec: TaskSpec, data: TaskData, outputs: np.ndarray, n: int = 10) -> list[dict]:
    """The ``n`` examples the model got most wrong: lowest probability of the gold class (classification)
    or largest absolute error (regression)."""
    gold = np.asarray(data.labels, dtype=float)
    pred = to_predictions(spec, outputs)
    if spec.kind == "classification":
        probs = softmax(outputs)
        badness = 1 - probs[np.arange(len(gold)), gold.astype(int)]
        wrong = np.flatnonzero(pred != gold)
        picked = wrong[np.argsort(-badness[wrong], kind="stable")][:n]
    else:
        badness = np.abs(pred - gold)
        picked = np.argsort(-badness, kind="stable")[:n]
    return [
        {
            "id": data.ids[i],
            "text": list(data.texts[i]),
            "gold": float(gold[i]),
            "predicted": float(pred[i]),
            ("p_gold" if spec.kind == "classification" else "abs_error"): float(
                1 - badness[i] if spec.kind == "classification" else badness[i]
            ),
        }
        for i in picked
    ]


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _plot_confusion(counts: np.ndarray, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(counts) + 2.5, 1.1 * len(counts) + 2))
    rates = counts / np.maximum(1, counts.sum(1, keepdims=True))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for g in range(len(counts)):
        for p in range(len(counts)):
            color = "white" if rates[g, p] > 0.5 else "black"
            ax.text(p, g, f"{counts[g, p]}\n{rates[g, p]:.0%}", ha="center", va="center", color=color)
    ticks = range(len(counts))
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="gold class", title=title)
    return _save(fig, path)


def _plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], "k:", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return _save(fig, path)


def _plot_scatter(gold: np.ndarray, pred: np.ndarray, title: str, path: Path, lims) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(gold, pred, s=6, alpha=0.4)
    lo, hi = lims if lims else (min(gold.min(), pred.min()), max(gold.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k:", label="prediction = gold")
    ax.set(xlabel="gold", ylabel="predicted", title=f"{title} (Pearson {pearson(pred, gold):.3f})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def write_task_report(spec: TaskSpec, data: TaskData, outputs: np.ndarray, out_dir: Path, split: str) -> dict:
    """Every report of one task split into ``out_dir`` (``<task>_<report>.json|png``); returns a summary
    with the written files."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    gold = np.asarray(data.labels, dtype=float)
    pred = to_predictions(spec, outputs)
    name, title = spec.name, f"{spec.name} {split}"
    files: list[Path] = []
    summary: dict = {"task": name, "split": split, "examples": len(gold)}

    def dump(kind: str, content) -> None:
        path = out_dir / f"{name}_{kind}.json"
        path.write_text(json.dumps(content, indent=2))
        files.append(path)

    if spec.kind == "classification":
        counts = confusion_matrix(gold, pred, spec.num_labels)
        dump("confusion", {"rows": "gold class", "columns": "predicted class", "counts": counts.tolist()})
        files.append(_plot_confusion(counts, f"{title}: confusion matrix", out_dir / f"{name}_confusion.png"))
        report = classification_report(counts)
        dump("classification_report", report)
        summary["accuracy"] = report["accuracy"]
        if spec.num_labels == 2:
            fpr, tpr, auc = roc_curve(gold, softmax(outputs)[:, 1])
            dump("roc", {"auc": auc, "fpr": fpr.tolist(), "tpr": tpr.tolist()})
            files.append(_plot_roc(fpr, tpr, auc, f"{title}: ROC", out_dir / f"{name}_roc.png"))
            summary["auc"] = auc
    else:
        summary |= {"pearson": pearson(pred, gold), "mse": float(np.mean((pred - gold) ** 2))}
        dump("scatter", {"gold": gold.tolist(), "predicted": pred.tolist(), **summary})
        files.append(_plot_scatter(gold, pred, title, out_dir / f"{name}_scatter.png", spec.label_range))
    dump("worst_errors", worst_errors(spec, data, outputs))
    summary["files"] = [str(f) for f in files]
    return summary
