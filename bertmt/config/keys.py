"""`bertmt keys [PREFIX]`: every config key with its type, default and documentation (the comment beside
the field in bertmt/config/sections.py, the one place where keys are documented)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from bertmt import config

_FIELD = re.compile(r"^\s+(\w+): .*?(?:#\s?(.*))?$")


def _docs(cls: type) -> dict[str, str]:
    """Field name -> its comment (continued on the following comment-only lines)."""
    docs: dict[str, str] = {}
    current, pending = None, []  # pending: comment-only lines since the last field
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.lstrip()
        if stripped.startswith(("def ", "@")):
            break  # the fields come first
        if stripped.startswith("#"):
            pending.append(stripped[1:].strip())
        elif (m := _FIELD.match(line)) and not stripped.startswith('"'):
            own = (m.group(2) or "").strip()
            if own and current:  # comments between two documented fields continue the first
                docs[current] = " ".join([docs[current], *pending]).strip()
            current, pending = m.group(1), ([] if own else pending)
            docs[current] = " ".join([*pending, own]).strip()
            pending = []
        elif current and "#" in line:  # a default spread over lines: its comment is the doc
            docs[current] = f"{docs[current]} {line.split('#', 1)[1].strip()}".strip()
    if current and pending:
        docs[current] = " ".join([docs[current], *pending]).strip()
    return docs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def keys(cls: type = config.ExperimentConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) of every leaf field; a task's fields under ``tasks.<name>.``."""
    out = []
    hints, docs = typing.get_type_hints(cls), _docs(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += keys(tp, f"{key}.")
            continue
        if f.name == "tasks" and cls is config.ExperimentConfig:
            out += keys(config.TaskConfig, "tasks.<name>.")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append((key, _type_name(tp), "null" if default is None else repr(default), docs.get(f.name, "")))
    return out


def render(prefix: str = "") -> str:
    rows = [r for r in keys() if r[0].startswith(prefix)]
    if not rows:
        raise ValueError(f"no config key starts with {prefix!r}")
    width = max(len(r[0]) for r in rows)
    return (
        "\n".join(f"{k:<{width}}  {t}  (default {d})\n{'':<{width}}  {doc}" for k, t, d, doc in rows) + "\n"
    )
