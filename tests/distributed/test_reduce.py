"""The collectives of surgery at ZeRO 0/1 across 2 real gloo processes (mtl/reduce.py): each task's row is
reduce-scattered asynchronously into the rank's column shard of the rank-averaged rows, in exactly one
collective per row (counted by bertmt/engine/comm_stats.py), and one T x T all-reduce of the partial Gram
matrices gives the Gram matrix of the rank-averaged rows; an inf on one rank reaches every rank's diagonal."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bertmt.engine.comm_stats import CollectiveCounter
from bertmt.mtl.gram import gram_matrix

T, WIDTH, WORLD = 3, 10, 2


def _rows(rank: int) -> torch.Tensor:
    """Rank-specific, deterministic local rows (T, WIDTH)."""
    return torch.randn(T, WIDTH, generator=torch.Generator().manual_seed(100 + rank))


def _worker(rank: int, init: str, out: str, poison: bool) -> None:
    counter = CollectiveCounter().install()
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    from bertmt.mtl.reduce import RowReducer, all_reduce_gram

    before = counter.snapshot()
    reducer = RowReducer(T, WIDTH, torch.device("cpu"))
    rows = _rows(rank)
    if poison and rank == 1:
        rows[2, 3] = float("inf")
    for k in range(T):
        reducer.reduce(k, rows[k].clone())
    freed = reducer.wait_all()
    gram = all_reduce_gram(gram_matrix(reducer.shard))
    with open(f"{out}/rank{rank}.json", "w") as fp:
        record = {
            "shard": reducer.shard.tolist(),
            "gram": gram.tolist(),
            "freed": len(freed),
            "counted": CollectiveCounter.delta(counter.snapshot(), before),
            "bytes": reducer.bytes_moved,
        }
        json.dump(record, fp)
    dist.barrier()  # no rank tears gloo down while another is still in a collective
    dist.destroy_process_group()


def _run(tmp_path, poison: bool = False) -> list[dict]:
    mp.spawn(_worker, args=(f"file://{tmp_path}/rendezvous", str(tmp_path), poison), nprocs=WORLD)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


def test_shards_and_gram_of_rank_averaged_rows(tmp_path):
    results = _run(tmp_path)
    mean = torch.stack([_rows(r) for r in range(WORLD)]).double().mean(0)  # (T, WIDTH)
    for rank, res in enumerate(results):
        cols = slice(rank * WIDTH // WORLD, (rank + 1) * WIDTH // WORLD)
        torch.testing.assert_close(
            torch.tensor(res["shard"], dtype=torch.float64), mean[:, cols], rtol=1e-6, atol=1e-7
        )
        torch.testing.assert_close(
            torch.tensor(res["gram"], dtype=torch.float64), mean @ mean.T, rtol=1e-6, atol=1e-7
        )
        assert res["freed"] == T
        assert res["counted"]["calls"] == {"reduce_scatter_single": T, "all_reduce": 1}
        assert res["counted"]["bytes"] == {"reduce_scatter_single": T * WIDTH * 4, "all_reduce": T * T * 8}
        assert res["bytes"] == T * WIDTH * 4


def test_an_overflow_on_one_rank_is_seen_by_every_rank(tmp_path):
    for res in _run(tmp_path, poison=True):
        assert not torch.isfinite(torch.tensor(res["gram"]).diagonal()).all()
