"""Read and tokenise the configured file of one task split."""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Tokenizer

from bertmt.config import ExperimentConfig
from bertmt.data.batching import Encoded, encode
from bertmt.data.readers import DataError, TaskData, check_task_file, read_task_file


def cache_dir(cfg: ExperimentConfig) -> Path:
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bertmt"


def read_split(cfg: ExperimentConfig, task: str, split: str) -> TaskData | None:
    """The valid records of ``task``'s ``split`` file, or None when the config names no such file."""
    path = cfg.task_path(task, split)
    if path is None:
        return None
    return read_task_file(path, cfg.task_spec(task), labelled=split != "test", strict=cfg.data.strict)


def encode_split(cfg: ExperimentConfig, task: str, data: TaskData, tokenizer: Tokenizer) -> Encoded:
    siamese = cfg.pair_encoding(task) == "siamese"
    return encode(data, tokenizer, cfg.data.max_length, cache_dir(cfg), siamese)


def load_split(cfg: ExperimentConfig, task: str, split: str, tokenizer: Tokenizer) -> Encoded | None:
    """The tokenised records of ``task``'s ``split`` file, or None when the config names no such file."""
    data = read_split(cfg, task, split)
    return None if data is None else encode_split(cfg, task, data, tokenizer)


def check_files(cfg: ExperimentConfig) -> None:
    """Fail before any work when a configured task file is missing (naming every missing one), is not UTF-8
    or lacks a column."""
    missing = [
        f"tasks.{task}.{split}: {path}"
        for task in cfg.tasks
        for split in ("train", "dev", "test")
        if (path := cfg.task_path(task, split)) is not None and not path.is_file()
    ]
    if missing:
        raise DataError(
            "data file(s) do not exist (data.dir is {}):\n  {}".format(cfg.data.dir, "\n  ".join(missing))
        )
    for task in cfg.tasks:
        for split in ("train", "dev", "test"):
            if (path := cfg.task_path(task, split)) is not None:
                check_task_file(path, cfg.task_spec(task), labelled=split != "test")
