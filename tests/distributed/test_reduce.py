"""The per-task gradient buffer across 2 real gloo processes: the Gram matrix of the rank-averaged task
gradients, in a fixed handful of collectives (counted through wrappers), and overflow seen on every rank."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bertmt.mtl.reduce import TaskGradients

T, SHAPES = 3, [(7, 5), (11,), (4, 3)]


def _grads(rank: int) -> list[list[torch.Tensor]]:
    """Rank-specific, deterministic per-task gradients of parameters shaped SHAPES."""
    gen = torch.Generator().manual_seed(100 + rank)
    return [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(T)]


def _worker(rank: int, world: int, init: str, mode: str, out: str, poison: bool) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    calls = {"all_reduce": 0, "reduce_scatter_tensor": 0, "other": 0}
    for name in (
        "all_reduce",
        "reduce_scatter_tensor",
        "all_gather",
        "all_gather_into_tensor",
        "broadcast",
        "reduce",
        "all_to_all_single",
        "send",
        "recv",
    ):
        real = getattr(dist, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls[_name if _name in calls else "other"] += 1
            return _real(*args, **kwargs)

        setattr(dist, name, counted)
    params = [nn.Parameter(torch.zeros(s)) for s in SHAPES]
    buf = TaskGradients(params, T, mode)
    for k, grads in enumerate(_grads(rank)):
        buf.add(k, [g * 2.0 for g in grads], scale=2.0)  # scaled gradients come back unscaled
    if poison and rank == 1:
        buf.buffer[2, 3] = float("inf")
    gram, finite = buf.gram()
    with open(f"{out}/rank{rank}.json", "w") as fp:
        json.dump({"gram": gram.tolist(), "finite": finite, "calls": calls, "bytes": buf.bytes_moved}, fp)
    dist.destroy_process_group()


def _run(tmp_path, mode: str, poison: bool = False) -> list[dict]:
    mp.spawn(_worker, args=(2, f"file://{tmp_path}/rendezvous", mode, str(tmp_path), poison), nprocs=2)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize(
    "mode, expected_calls",
    [
        ("all_reduce", {"all_reduce": 1, "reduce_scatter_tensor": 0, "other": 0}),
        ("reduce_scatter", {"all_reduce": 1, "reduce_scatter_tensor": 1, "other": 0}),
    ],
)
def test_gram_of_rank_averaged_gradients(tmp_path, mode, expected_calls):
    results = _run(tmp_path, mode)
    mean = (
        torch.stack(
            [torch.stack([torch.cat([g.reshape(-1) for g in task]) for task in _grads(r)]) for r in range(2)]
        )
        .double()
        .mean(0)
    )  # (T, D)
    want = mean @ mean.T
    for res in results:
        assert res["finite"] and res["calls"] == expected_calls
        torch.testing.assert_close(torch.tensor(res["gram"], dtype=torch.float64), want, rtol=1e-6, atol=1e-8)
    d = sum(torch.Size(s).numel() for s in SHAPES)
    padded = -(-d // 2) * 2
    assert results[0]["bytes"] == T * padded * 4 + T * T * 8 * (mode == "reduce_scatter")


@pytest.mark.parametrize("mode", ["all_reduce", "reduce_scatter"])
def test_an_overflow_on_one_rank_is_seen_by_every_rank(tmp_path, mode):
    assert [r["finite"] for r in _run(tmp_path, mode, poison=True)] == [False, False]
