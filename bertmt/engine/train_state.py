"""What a checkpoint keeps besides the engine: the trainer's position and dev history (``TrainState``) and the
state of the parts around the optimiser step that carry state of their own (gradient surgery, SMART's
teacher, the loss weighting), so that a resumed run continues exactly."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class TrainState:
    """Everything besides the engine that a resumed run needs to continue exactly."""

    epoch: int = 0  # current epoch (0-based)
    index: int = 0  # next micro-batch of the epoch
    step: int = 0  # optimiser steps done
    drawn: dict[str, int] = field(default_factory=dict)  # batches drawn per task sampler
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)  # dev metrics after each epoch


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Sampler(Protocol):
    drawn: int  # batches drawn so far (the sampler replays its shuffles up to here)


def client_state(state: TrainState, samplers: Mapping[str, Sampler], parts: Mapping[str, Stateful]) -> dict:
    """The checkpoint's client state: ``state`` (with the samplers' positions) and each part's state."""
    state.drawn = {task: sampler.drawn for task, sampler in samplers.items()}
    return {"trainer": dataclasses.asdict(state), **{name: part.state_dict() for name, part in parts.items()}}


def restore(client: dict, samplers: Mapping[str, Sampler], parts: Mapping[str, Stateful]) -> TrainState:
    """Inverse of ``client_state``: the parts and samplers restored in place; returns the trainer's state."""
    state = TrainState(**client["trainer"])
    for name, part in parts.items():  # SMART's state is empty at some settings: older checkpoints lack it
        part.load_state_dict(client.get(name, {}) if name == "smart" else client[name])
    for task, sampler in samplers.items():
        sampler.drawn = state.drawn[task]
    return state
