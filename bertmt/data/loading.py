"""Read and tokenise the configured files of a task (a :class:`bertmt.data.tasks.Task`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer

from bertmt.data.batching import Chunking, Encoded, concat_encoded, encode
from bertmt.data.readers import (
    DataError,
    TaskData,
    check_distinct_ids,
    check_task_file,
    concat_task_data,
    read_task_file,
)
from bertmt.data.tasks import Task

SPLITS = ("train", "dev", "test")


class Loader:
    """Reads a task's split (``strict``: raise on a malformed record) and tokenises it with ``tokenizer`` at
    ``max_length`` tokens, cached in ``cache_dir``; with ``chunking``, single-sentence tasks keep long rows
    whole (split into segments when batched), pair tasks are truncated as always."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_length: int,
        cache_dir: Path,
        strict: bool = False,
        chunking: Chunking | None = None,
        tagger=None,
    ) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.cache_dir, self.strict, self.chunking, self.tagger = cache_dir, strict, chunking, tagger

    def read_files(self, task: Task, split: str) -> list[TaskData]:
        """The valid records of each of ``task``'s ``split`` files (none when the split is not configured)."""
        labelled = split != "test"
        return [read_task_file(p, task.spec, labelled, strict=self.strict) for p in task.paths(split)]

    def read(self, task: Task, split: str) -> TaskData | None:
        """The valid records of ``task``'s ``split`` (its files one after the other), or None when no such
        file is configured."""
        parts = self.read_files(task, split)
        return concat_task_data(parts) if parts else None

    def encode(self, task: Task, data: TaskData) -> Encoded:
        chunking = None if task.spec.is_pair else self.chunking
        enc = encode(
            data, self.tokenizer, self.max_length, self.cache_dir, task.siamese, chunking, self.tagger
        )
        enc.symmetric = bool(task.symmetric)  # scored in both orders
        enc.swap = task.symmetric is True  # and trained in both
        return enc

    def load(self, task: Task, split: str) -> Encoded | None:
        """The tokenised records of ``task``'s ``split`` (several files: each tokenised and cached on its own,
        then concatenated in order), or None when no such file is configured."""
        datas = self.read_files(task, split)
        if not datas:
            return None
        check_distinct_ids(datas)
        parts = [self.encode(task, data) for data in datas]
        enc = concat_encoded(parts)
        enc.symmetric, enc.swap = parts[0].symmetric, parts[0].swap
        return enc


def check_files(tasks: Iterable[Task], data_dir: str, strict: bool = False) -> None:
    """Fail before any work when a configured task file is missing (naming every missing one), is not UTF-8,
    lacks a column or holds no record; with ``strict``, also on its first malformed record."""
    tasks = list(tasks)
    missing = [
        f"tasks.{task.name}.{split}{f'[{i}]' if len(task.paths(split)) > 1 else ''}: {path}"
        for task in tasks
        for split in SPLITS
        for i, path in enumerate(task.paths(split))
        if not path.is_file()
    ]
    if missing:
        raise DataError(
            "data file(s) do not exist (data.dir is {}):\n  {}".format(data_dir, "\n  ".join(missing))
        )
    for task in tasks:
        for split in SPLITS:
            for path in task.paths(split):
                if strict:  # every record, which includes the file checks
                    read_task_file(path, task.spec, labelled=split != "test", strict=True)
                else:
                    check_task_file(path, task.spec, labelled=split != "test")
