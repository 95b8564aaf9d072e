"""The configuration's error and its one check helper: both name the dotted key and what was expected."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


def check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': expected {expected}, got {got!r}")
