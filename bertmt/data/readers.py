"""Readers for the CS224N tab-separated task files, with record validation.

Columns are found by name in the header (the test files' odd headers with two index columns included). A
malformed record is reported with file, line and reason, counted and skipped; ``strict=True`` raises instead.
A missing file or column raises :class:`DataError` naming it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bertmt.data.tasks import TaskSpec

log = logging.getLogger(__name__)
csv.field_size_limit(sys.maxsize)


class DataError(ValueError):
    """A task file is missing, lacks a column, or (in strict mode) holds a malformed record."""


@dataclass(frozen=True)
class BadRecord:
    path: str
    line: int  # 1-based line where the record starts
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class TaskData:
    """The valid records of one task file."""

    task: str
    path: str
    ids: list[str] = field(default_factory=list)
    texts: list[tuple[str, ...]] = field(default_factory=list)
    labels: list[float] | None = None  # None for unlabelled (test) files
    skipped: list[BadRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def check_distinct_ids(parts: list[TaskData]) -> None:
    """Raise DataError when a record id is in two of the files of one training set."""
    first: dict[str, str] = {}
    for part in parts:
        for rid in part.ids:
            if first.setdefault(rid, part.path) != part.path:
                raise DataError(
                    f"tasks.{part.task}: id {rid!r} is in both {first[rid]} and {part.path}; the files of "
                    "one training set must hold distinct records"
                )


def concat_task_data(parts: list[TaskData]) -> TaskData:
    """The records of several files of one task, in order (one file: itself)."""
    if len(parts) == 1:
        return parts[0]
    check_distinct_ids(parts)
    labelled = all(p.labels is not None for p in parts)
    return TaskData(
        parts[0].task,
        " + ".join(p.path for p in parts),
        [rid for p in parts for rid in p.ids],
        [t for p in parts for t in p.texts],
        [y for p in parts for y in p.labels] if labelled else None,
        [bad for p in parts for bad in p.skipped],
    )


def _parse_label(raw: str | None, spec: TaskSpec) -> float:
    """Return the label as a number or raise ValueError with the reason."""
    if raw is None or not raw.strip():
        raise ValueError(f"empty label in column '{spec.label_column}'")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"label {raw!r} in column '{spec.label_column}' is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"label {raw!r} is not finite")
    if spec.kind == "classification":
        if value != int(value) or not 0 <= value < spec.num_labels:
            raise ValueError(f"label {raw!r} is not a class in 0..{spec.num_labels - 1}")
        return int(value)
    lo, hi = spec.label_range or (-math.inf, math.inf)
    if not lo <= value <= hi:
        raise ValueError(f"label {raw!r} outside [{lo}, {hi}]")
    return value


def _check_record(
    row: dict, spec: TaskSpec, labelled: bool, seen: set[str]
) -> tuple[str, tuple, float | None]:
    if None in row:
        raise ValueError(f"{len(row[None])} more fields than the header has columns")
    missing = [c for c in ("id", *spec.text_columns) if row.get(c) is None]
    if missing:
        raise ValueError(f"too few fields: no value for {missing}")
    rid = row["id"].strip()
    if not rid:
        raise ValueError("empty id")
    if rid in seen:
        raise ValueError(f"duplicate id {rid!r}")
    texts = tuple(row[c].strip() for c in spec.text_columns)
    empty = [c for c, t in zip(spec.text_columns, texts) if not t]
    if empty:
        raise ValueError(f"empty text in column(s) {empty}")
    label = _parse_label(row.get(spec.label_column), spec) if labelled else None
    return rid, texts, label


def _needed_columns(spec: TaskSpec, labelled: bool) -> list[str]:
    return ["id", *spec.text_columns] + ([spec.label_column] if labelled else [])


def _read_text(path: Path, spec: TaskSpec, labelled: bool) -> str:
    """The file's text, once: it exists, is UTF-8 (else file and line), its header has the task's columns
    and at least one record follows."""
    if not path.is_file():
        raise DataError(f"{spec.name}: data file {path} does not exist")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); convert the file, e.g. with iconv"
        ) from None
    first, _, rest = text.partition("\n")
    header = next(csv.reader(io.StringIO(first), delimiter="\t"), [])
    absent = [c for c in _needed_columns(spec, labelled) if c not in header]
    if absent:
        raise DataError(f"{path}: missing column(s) {absent} for task {spec.name}; header has {header}")
    if not rest.strip():
        raise DataError(f"{path}: no records after the header (task {spec.name})")
    return text


def check_task_file(path: str | Path, spec: TaskSpec, labelled: bool = True) -> None:
    """What can be checked before any work (see _read_text), without parsing the records."""
    _read_text(Path(path), spec, labelled)


def read_task_file(path: str | Path, spec: TaskSpec, labelled: bool = True, strict: bool = False) -> TaskData:
    """Read one CS224N file of ``spec``; ``labelled=False`` for test files without labels."""
    path = Path(path)
    text = _read_text(path, spec, labelled)
    data = TaskData(task=spec.name, path=str(path), labels=[] if labelled else None)
    seen: set[str] = set()
    with io.StringIO(text, newline="") as fp:
        reader = csv.DictReader(fp, delimiter="\t")
        _ = reader.fieldnames  # reads the header (its columns were checked above)
        start = reader.line_num + 1
        for row in reader:
            try:
                swallowed = [c for c, v in row.items() if isinstance(v, str) and "\t" in v]
                if swallowed:  # a text never holds a tab: the field ran over the next records' fields
                    raise ValueError(
                        f'an unclosed quote (") in column(s) {swallowed} swallowed lines {start + 1}-'
                        f"{reader.line_num} (the records there are part of this one)"
                    )
                rid, texts, label = _check_record(row, spec, labelled, seen)
            except ValueError as exc:
                bad = BadRecord(str(path), start, str(exc))
                if strict:
                    raise DataError(f"malformed record at {bad} (data.strict=true)") from None
                log.warning("skipping malformed record %s", bad)
                data.skipped.append(bad)
            else:
                seen.add(rid)
                data.ids.append(rid)
                data.texts.append(texts)
                if labelled:
                    data.labels.append(label)
            start = reader.line_num + 1
    if data.skipped:
        log.warning(
            "%s: skipped %d malformed record(s) of %d", path, len(data.skipped), len(data.skipped) + len(data)
        )
    if not len(data):
        raise DataError(f"{path}: no valid records for task {spec.name}")
    return data
