"""Hostfiles for the deepspeed launcher from SLURM node lists (``gpu[01-03,07],login1`` syntax)."""

from __future__ import annotations

import re

_GROUP = re.compile(r"([^,\[]*)(?:\[([^\]]+)\])?([^,\[]*)")


def expand_nodelist(nodelist: str) -> list[str]:
    """``a[1-3,07]b,c`` -> ``['a1b', 'a2b', 'a3b', 'a07b', 'c']`` (ranges keep their zero padding)."""
    hosts: list[str] = []
    pos = 0
    while pos < len(nodelist):
        m = _GROUP.match(nodelist, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse SLURM node list {nodelist!r} at position {pos}")
        prefix, ranges, suffix = m.groups()
        if ranges is None:
            hosts.append(prefix + suffix)
        else:
            for part in ranges.split(","):
                lo, _, hi = part.partition("-")
                width = len(lo)
                for i in range(int(lo), int(hi or lo) + 1):
                    hosts.append(f"{prefix}{i:0{width}d}{suffix}")
        pos = m.end() + 1  # skip the comma
    return hosts


def hostfile(nodelist: str, slots: int) -> str:
    """One ``host slots=N`` line per node, in SLURM's order (the first is the master)."""
    return "".join(f"{host} slots={slots}\n" for host in expand_nodelist(nodelist))
