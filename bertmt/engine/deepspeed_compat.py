"""Where bertmt depends on DeepSpeed's internals: the pinned version and the workarounds that need it.

Every function here touches a private attribute of DeepSpeed 0.19.8 and checks it first, so a DeepSpeed
that changed them fails loudly at engine set-up instead of training wrongly. The tests in
tests/distributed/test_deepspeed_internals.py reproduce each upstream bug with DeepSpeed alone: when an
upgrade fixes one, its test fails and says which workaround to drop.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

PINNED_DEEPSPEED = "0.19.8"  # setup.py pins the same version


class DeepSpeedInternalsChanged(RuntimeError):
    """A private attribute bertmt relies on is missing or has another type: see deepspeed_compat.py."""


def check_version() -> None:
    if _version() != PINNED_DEEPSPEED:
        log.warning(
            "DeepSpeed %s is installed; bertmt is tested with %s only (its ZeRO-3 gradient fix and gradient "
            "surgery rely on that version's internals, which are checked at start)",
            _version(),
            PINNED_DEEPSPEED,
        )


def clear_stale_zero3_gradients(engine) -> bool:
    """Zero ZeRO-3's gradient partitions after every optimiser step (taken or skipped). Returns whether the
    engine needed it (stage 3).

    DeepSpeed 0.19.8's stage-3 optimiser keeps reduced gradient partitions in ``grad_partitions_flat_buffer``,
    zeroed only at init: ``partition_grads`` copies into a parameter's slot when it is reduced at micro-step 0
    and adds to it later, the boundary hands every ``requires_grad`` parameter's slot to the optimiser, and
    ``zero_grad`` leaves the buffer alone. A parameter absent from a step's graph (another task's head, a PAL)
    is then stepped again with its last gradient, and one first used at micro-step > 0 gets last step's
    gradient plus this step's. Upstream report: docs/upstream/deepspeed-zero3-stale-gradients.md.
    """
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    optimizer = engine.optimizer
    if not isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
        return False
    buffer = getattr(optimizer, "grad_partitions_flat_buffer", None)
    if not isinstance(buffer, torch.Tensor):
        raise DeepSpeedInternalsChanged(
            f"DeepSpeed {_version()}: DeepSpeedZeroOptimizer_Stage3.grad_partitions_flat_buffer is "
            f"{type(buffer).__name__}, expected a tensor (as in {PINNED_DEEPSPEED}); bertmt's ZeRO-3 "
            "gradient fix (bertmt/engine/deepspeed_compat.py) must be revisited"
        )
    if getattr(optimizer.step, "_bertmt_clears_grads", False):
        return True
    step = optimizer.step

    @functools.wraps(step)
    def step_then_clear(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        finally:
            # read the attribute again: offloading may have replaced the tensor's storage
            optimizer.grad_partitions_flat_buffer.zero_()

    step_then_clear._bertmt_clears_grads = True
    optimizer.step = step_then_clear
    return True


def _version() -> str:
    import deepspeed

    return deepspeed.__version__
