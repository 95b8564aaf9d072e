"""DeepSpeed alone (no bertmt training code): the upstream behaviours that bertmt works around, reproduced,
and the workarounds checked. When a DeepSpeed upgrade fixes a bug, its reproduction fails here: drop the
workaround in bertmt/engine/deepspeed_compat.py and the pin in setup.py together.

One process per check (mp.spawn), so that this test process never initialises torch.distributed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from bertmt.engine import deepspeed_compat

REPO = Path(__file__).resolve().parents[2]


class TwoHeads(nn.Module):
    """A shared layer and two heads; a step trains one head or both, like a multitask micro-batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared, self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        return getattr(self, head)(self.shared(x)).pow(2).mean()


def _two_heads_run(stage: int, fix: bool) -> list[list[float]]:
    """SGD without momentum (a zero gradient moves nothing); head a is trained at step 1 only, head b at
    every step. Returns head a's weights at the start and after each of 3 optimiser steps."""
    import deepspeed

    model = TwoHeads()
    out = [model.a.weight.detach().flatten().tolist()]  # before ZeRO-3 partitions it
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    if fix:
        assert deepspeed_compat.clear_stale_zero3_gradients(engine) == (stage == 3)
    x = torch.arange(8, dtype=torch.float32).view(2, 4) / 8
    for step in range(3):
        heads = ("a", "b") if step == 0 else ("b",)
        loss = sum(engine(x, h) for h in heads)
        engine.backward(loss)
        engine.step()
        with deepspeed.zero.GatheredParameters([engine.module.a.weight], enabled=stage == 3):
            out.append(engine.module.a.weight.detach().flatten().tolist())
    engine.destroy()
    return out


def _worker(rank: int, init: str, out: str) -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    import deepspeed
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend="gloo")
    runs = {f"{stage}-{fix}": _two_heads_run(stage, fix) for stage in (0, 1, 2, 3) for fix in (False, True)}
    Path(out).write_text(json.dumps(runs))
    dist.barrier()  # no rank tears gloo down while another is still in a collective
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory) -> dict[str, list[list[float]]]:
    tmp = tmp_path_factory.mktemp("ds-two-heads")
    mp.spawn(_worker, args=(f"file://{tmp}/rendezvous", str(tmp / "runs.json")), nprocs=1)
    return json.loads((tmp / "runs.json").read_text())


def test_zero3_steps_an_absent_head_with_its_stale_gradient(two_heads):
    """The upstream bug (docs/upstream/deepspeed-zero3-stale-gradients.md): under stage 3 head a keeps
    moving at steps 2 and 3 although it is in no graph; stage 0 leaves it alone. If this fails, DeepSpeed
    fixed it."""
    stage0, stage3 = two_heads["0-False"], two_heads["3-False"]
    assert two_heads["1-False"] == two_heads["2-False"] == stage0  # only stage 3 has the bug
    assert stage0[1] != stage0[0]  # step 1 trains head a
    assert stage0[2] == stage0[1] and stage0[3] == stage0[1]  # stage 0: head a stays after step 1
    assert stage3[2] != stage3[1] and stage3[3] != stage3[2]  # stage 3: still moving, with the old gradient
    torch.testing.assert_close(torch.tensor(stage3[1]), torch.tensor(stage0[1]))  # step 1 itself agrees


def test_the_workaround_makes_zero3_step_like_stage0(two_heads):
    torch.testing.assert_close(torch.tensor(two_heads["3-True"]), torch.tensor(two_heads["0-True"]))
    for stage in (0, 1, 2):
        assert two_heads[f"{stage}-True"] == two_heads[f"{stage}-False"]  # nothing to do below stage 3


def test_deepspeed_is_the_pinned_version():
    """bertmt relies on DeepSpeed internals (deepspeed_compat.py): the installed version, setup.py's pin and
    PINNED_DEEPSPEED must agree."""
    import deepspeed

    pin = re.search(r'"deepspeed==([^"]+)"', (REPO / "setup.py").read_text())
    assert pin is not None, "setup.py must pin deepspeed==<version>"
    assert pin.group(1) == deepspeed_compat.PINNED_DEEPSPEED == deepspeed.__version__


def test_the_internals_the_workaround_touches_exist():
    """Fails loudly (naming the attribute) when DeepSpeed renames or removes what the ZeRO-3 fix touches."""
    from deepspeed.runtime.zero import stage3

    src = Path(stage3.__file__).read_text()
    assert "self.grad_partitions_flat_buffer: Tensor = torch.zeros(" in src
    assert "if self.micro_step_id == 0:  # don't accumulate" in src
    assert hasattr(stage3.DeepSpeedZeroOptimizer_Stage3, "step")
