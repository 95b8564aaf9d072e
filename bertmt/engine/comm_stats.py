"""Counts this process's collectives and the bytes it hands to them (bench/surgery_overhead.py, the collective
tests). ``install()`` wraps the torch.distributed functions; call it before DeepSpeed initialises its
communication backend, which looks up its all-gather and reduce-scatter functions once."""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

_ONE_INPUT = ("reduce_scatter_tensor", "reduce_scatter_single", "all_gather_into_tensor", "all_gather_single")


def _payload(name: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors a call sends: the input, not the output buffer."""
    if name in _ONE_INPUT or name == "all_to_all_single":
        return [kwargs.get("input_tensor", kwargs.get("input", args[1] if len(args) > 1 else None))]
    if name == "all_gather":
        return [kwargs.get("tensor", args[1] if len(args) > 1 else None)]
    if name == "reduce_scatter":
        return list(kwargs.get("input_list", args[1] if len(args) > 1 else []))
    if name == "all_reduce_coalesced":
        return list(kwargs.get("tensors", args[0] if args else []))
    return [kwargs.get("tensor", args[0] if args else None)]


COUNTED = (
    "all_reduce",
    "all_reduce_coalesced",
    "reduce",
    "broadcast",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_single",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_to_all_single",
    "send",
    "recv",
    "isend",
    "irecv",
)


class CollectiveCounter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def install(self) -> CollectiveCounter:
        for name in COUNTED:
            real = getattr(dist, name, None)
            if real is None:
                continue

            def counted(*args, _real=real, _name=name, **kwargs):
                self.calls[_name] += 1
                for t in _payload(_name, args, kwargs):
                    if isinstance(t, torch.Tensor):
                        self.bytes[_name] += t.numel() * t.element_size()
                return _real(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {"calls": dict(self.calls), "bytes": dict(self.bytes)}

    @staticmethod
    def delta(after: dict, before: dict) -> dict[str, dict[str, int]]:
        return {
            kind: {
                k: v - before[kind].get(k, 0) for k, v in after[kind].items() if v != before[kind].get(k, 0)
            }
            for kind in ("calls", "bytes")
        }
