"""Shared helpers for the benchmarks: real CS224N batches and the data directory."""

from __future__ import annotations

import os
from pathlib import Path

from bertmt.data.batching import Encoded, encode
from bertmt.data.readers import read_task_file
from bertmt.data.tasks import TASKS
from bertmt.model import load_tokenizer

TRAIN_FILES = {"sst": "ids-sst-train.csv", "quora": "quora-small-train.csv", "sts": "sts-train.csv"}


def data_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "cs224n"
    return Path(os.environ.get("BERTMT_DATA_DIR", default))


def real_train_sets(max_length: int = 128) -> dict[str, Encoded]:
    """SST, Quora (small split) and STS training files, tokenised with MiniLM's tokenizer."""
    tok = load_tokenizer("minilm")
    return {
        task: encode(read_task_file(data_dir() / f, TASKS[task]), tok, max_length, None)
        for task, f in TRAIN_FILES.items()
    }
