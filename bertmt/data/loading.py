"""Read and tokenise the configured files of a task (a :class:`bertmt.data.tasks.Task`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer

from bertmt.data.batching import Chunking, Encoded, encode
from bertmt.data.readers import DataError, TaskData, check_task_file, read_task_file
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

    def read(self, task: Task, split: str) -> TaskData | None:
        """The valid records of ``task``'s ``split`` file, or None when no such file is configured."""
        path = task.file(split)
        if path is None:
            return None
        return read_task_file(path, task.spec, labelled=split != "test", strict=self.strict)

    def encode(self, task: Task, data: TaskData) -> Encoded:
        chunking = None if task.spec.is_pair else self.chunking
        enc = encode(
            data, self.tokenizer, self.max_length, self.cache_dir, task.siamese, chunking, self.tagger
        )
        enc.symmetric = bool(task.symmetric)  # scored in both orders
        enc.swap = task.symmetric is True  # and trained in both
        return enc

    def load(self, task: Task, split: str) -> Encoded | None:
        """The tokenised records of ``task``'s ``split`` file, or None when no such file is configured."""
        data = self.read(task, split)
        return None if data is None else self.encode(task, data)


def check_files(tasks: Iterable[Task], data_dir: str, strict: bool = False) -> None:
    """Fail before any work when a configured task file is missing (naming every missing one), is not UTF-8,
    lacks a column or holds no record; with ``strict``, also on its first malformed record."""
    tasks = list(tasks)
    missing = [
        f"tasks.{task.name}.{split}: {path}"
        for task in tasks
        for split in SPLITS
        if (path := task.file(split)) is not None and not path.is_file()
    ]
    if missing:
        raise DataError(
            "data file(s) do not exist (data.dir is {}):\n  {}".format(data_dir, "\n  ".join(missing))
        )
    for task in tasks:
        for split in SPLITS:
            if (path := task.file(split)) is not None:
                if strict:  # every record, which includes the file checks
                    read_task_file(path, task.spec, labelled=split != "test", strict=True)
                else:
                    check_task_file(path, task.spec, labelled=split != "test")
