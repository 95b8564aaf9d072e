"""bertmt/engine/zero_partitions.py against DeepSpeed alone, 2 gloo ranks, ZeRO 2 and 3, grad_accum 3:
after each micro-batch ``take`` returns exactly this rank's shard of that micro-batch's rank-averaged gradient
of the shared parameters (and clears DeepSpeed's accumulator: the next shard holds only the next micro-batch);
``put`` makes a given shard the gradient that ``engine.step()`` applies, while the head's group accumulates
as in plain training. ZeRO 0 and 1: ``backward_reduced`` hands DeepSpeed gradients that are already reduced,
and the step applies exactly them with no collective in the backward. Fails loudly when DeepSpeed moves the
partition buffers (pinned in setup.py)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

ACCUM, WORLD = 3, 2


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(x)).pow(2).mean()


def _batch(rank: int, micro: int) -> torch.Tensor:
    return torch.randn(4, 7, generator=torch.Generator().manual_seed(10 * micro + rank))


def _reference() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per micro-batch: the rank-averaged gradient of the shared parameters / ACCUM (flat, in parameter
    order), and the head's accumulated gradient over the step."""
    rows, head = [], 0
    for micro in range(ACCUM):
        grads = []
        for rank in range(WORLD):
            model = Toy()
            (model(_batch(rank, micro)) / ACCUM).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in model.shared.parameters()]))
            head = head + torch.cat([p.grad.reshape(-1) for p in model.head.parameters()]) / WORLD
        rows.append(torch.stack(grads).mean(0))
    return rows, head


def _worker(rank: int, stage: int, init: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    import deepspeed
    import torch.distributed as dist

    from bertmt.engine.zero_partitions import partition_grads

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    deepspeed.init_distributed(dist_backend="gloo")
    model = Toy()
    before = [p.detach().clone() for p in model.parameters()]
    shared = list(model.shared.parameters())
    groups = [{"params": shared}, {"params": list(model.head.parameters())}]
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": ACCUM,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(groups, lr=1.0), config=config)
    grads = partition_grads(engine, [0], shared)
    rows = torch.zeros(ACCUM, grads.numel)
    for micro in range(ACCUM):
        engine.backward(engine(_batch(rank, micro)))
        grads.take(rows[micro], boundary=micro == ACCUM - 1, first=True)
        if micro == ACCUM - 1:
            grads.put(rows.sum(0) * 2)  # the step must apply exactly this (SGD, lr 1)
        engine.step()
    gathered = [torch.zeros_like(rows) for _ in range(WORLD)]
    dist.all_gather(gathered, rows)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        after = [p.detach().clone() for p in engine.module.parameters()]
    if rank == 0:
        sizes = [p.ds_tensor.numel() for p in shared] if stage == 3 else None
        torch.save({"shards": gathered, "before": before, "after": after, "sizes": sizes}, out)
    engine.destroy()
    dist.barrier()  # no rank tears gloo down while another is still in a collective
    dist.destroy_process_group()


def _full(shards: list[torch.Tensor], stage: int, numels: list[int], sizes) -> torch.Tensor:
    """Undo the partition layout: ZeRO-2 splits the group's flat vector in WORLD equal parts; ZeRO-3 splits
    each parameter separately (``sizes``: its per-rank partition)."""
    if stage == 2:
        return torch.cat(shards, -1)[..., : sum(numels)]
    parts = [s.split(sizes, -1) for s in shards]
    return torch.cat([torch.cat([p[i] for p in parts], -1)[..., :n] for i, n in enumerate(numels)], -1)


@pytest.mark.parametrize("stage", [2, 3])
def test_take_and_put_of_the_shared_partition(tmp_path, stage):
    out = tmp_path / "out.pt"
    mp.spawn(_worker, args=(stage, f"file://{tmp_path}/rendezvous", str(out)), nprocs=WORLD)
    res = torch.load(out)
    numels = [p.numel() for p in Toy().shared.parameters()]
    captured = _full(res["shards"], stage, numels, res["sizes"])
    want_rows, want_head = _reference()
    for micro in range(ACCUM):  # each row is that micro-batch alone: the accumulator was cleared
        torch.testing.assert_close(captured[micro], want_rows[micro], rtol=1e-5, atol=1e-7)
    delta = [b - a for b, a in zip(res["before"], res["after"])]
    n_shared = len(numels)
    applied = torch.cat([d.reshape(-1) for d in delta[:n_shared]])
    torch.testing.assert_close(applied, captured.sum(0) * 2, rtol=1e-5, atol=1e-7)
    head = torch.cat([d.reshape(-1) for d in delta[n_shared:]])
    torch.testing.assert_close(head, want_head, rtol=1e-5, atol=1e-7)


def _reduced_worker(rank: int, stage: int, init: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    import torch.distributed as dist

    from bertmt.engine.comm_stats import CollectiveCounter

    counter = CollectiveCounter().install()  # before DeepSpeed looks its collectives up
    import deepspeed

    from bertmt.engine.zero_partitions import backward_reduced

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    deepspeed.init_distributed(dist_backend="gloo")
    model = Toy()
    groups = [{"params": list(model.shared.parameters())}, {"params": list(model.head.parameters())}]
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(groups, lr=1.0), config=config)
    torch.manual_seed(5)  # the same "reduced" gradient on every rank
    want = [torch.randn_like(p) for p in engine.module.parameters()]
    before = [p.detach().clone() for p in engine.module.parameters()]
    counted = counter.snapshot()
    backward_reduced(engine, sum((p * g).sum() for p, g in zip(engine.module.parameters(), want)))
    counted = CollectiveCounter.delta(counter.snapshot(), counted)
    engine.step()
    if rank == 0:
        after = [p.detach().clone() for p in engine.module.parameters()]
        torch.save({"want": want, "applied": [b - a for b, a in zip(before, after)], "counted": counted}, out)
    engine.destroy()
    dist.barrier()  # no rank tears gloo down while another is still in a collective
    dist.destroy_process_group()


@pytest.mark.parametrize("stage", [0, 1])
def test_backward_reduced_applies_the_given_gradients_without_a_reduction(tmp_path, stage):
    out = tmp_path / "out.pt"
    mp.spawn(_reduced_worker, args=(stage, f"file://{tmp_path}/rendezvous", str(out)), nprocs=WORLD)
    res = torch.load(out)
    assert sum(res["counted"]["bytes"].values()) == 0, res["counted"]  # DeepSpeed reduced nothing
    for got, want in zip(res["applied"], res["want"]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_pinned_internals_are_where_the_adapter_reads_them():
    import inspect

    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    src = inspect.getsource(DeepSpeedZeroOptimizer.independent_gradient_partition_epilogue)
    assert "self.all_grad_tensors[i] = self.get_all_grad_tensors(" in src
    assert "self.averaged_gradients[i] = self.get_flat_partition(" in src
    assert "averaged_gradients" in inspect.getsource(DeepSpeedZeroOptimizer.step)
    from deepspeed.utils import safe_get_local_grad, safe_set_local_grad  # noqa: F401  (ZeRO-3, public)
