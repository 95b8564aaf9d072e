"""Atomic checkpoints: DeepSpeed engine state plus trainer state, and the best model's weights.

DeepSpeed writes into ``checkpoints/.partial/<tag>``; only when every rank has finished (and its files are
flushed to disk) does rank 0 rename it to ``checkpoints/<tag>`` and then atomically replace
``checkpoints/latest``. A crash at any point leaves the previous checkpoint and ``latest`` intact. Loading
falls back, with a warning, to the newest older checkpoint when ``latest`` is empty, names a missing
directory, or its checkpoint cannot be read (truncated or corrupt files).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from bertmt.files import atomic_path, atomic_write, fsync

log = logging.getLogger(__name__)
LATEST, PARTIAL = "latest", ".partial"


class CheckpointError(RuntimeError):
    """No checkpoint could be saved or loaded; the message says which and what is left intact."""


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tags(ckpt_dir: Path) -> list[str]:
    """The complete checkpoints' tags, oldest first."""
    dirs = [p for p in ckpt_dir.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return [p.name for p in sorted(dirs, key=lambda p: int(p.name.split("-")[1]))]


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fsync(path)


def save_checkpoint(engine, ckpt_dir: Path, tag: str, client_state: dict, keep: int = 2) -> Path:
    """Save engine + client state under ``ckpt_dir/tag`` atomically; keep the newest ``keep`` checkpoints.
    A full disk (or any write error) removes the partial checkpoint and raises CheckpointError naming the
    intact previous one."""
    partial = ckpt_dir / PARTIAL
    rank = dist.get_rank()
    if rank == 0 and partial.exists():
        shutil.rmtree(partial)  # what a crash during an earlier save left
    dist.barrier()
    try:
        engine.save_checkpoint(str(partial), tag=tag, client_state=client_state, save_latest=False)
        # DeepSpeed keeps client_state from rank 0 only: every rank's own RNG streams (dropout) go beside it
        torch.save(rng_state(), partial / tag / f"rng-rank{rank}.pt")
        _fsync_tree(partial / tag)
        failed = ""
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        full = getattr(exc, "errno", None) == errno.ENOSPC or "write failed" in str(exc)
        failed = f"{type(exc).__name__}: {str(exc)[:300]}" + (" (is the disk full?)" if full else "")
    failed = any_rank(failed)
    if failed:
        if rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
        previous = latest_tag(ckpt_dir)
        raise CheckpointError(
            f"could not save checkpoint {ckpt_dir / tag}: {failed}; "
            + (f"the previous checkpoint {ckpt_dir / previous} is intact" if previous else "no earlier one")
        )
    final = ckpt_dir / tag
    if rank == 0:
        old = partial / f"{tag}.replaced"
        if final.exists():  # a save over the same tag: `latest` may name it, so swap, never delete first
            os.replace(final, old)
        os.replace(partial / tag, final)
        atomic_write(ckpt_dir / LATEST, tag)
        shutil.rmtree(old, ignore_errors=True)
        for stale in _tags(ckpt_dir)[:-keep]:
            shutil.rmtree(ckpt_dir / stale, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    dist.barrier()
    return final


def any_rank(message: str) -> str:
    """The first non-empty message of any rank (every rank gets the same answer)."""
    if dist.get_world_size() == 1:
        return message
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    return next((m for m in gathered if m), "")


def latest_tag(ckpt_dir: Path) -> str | None:
    """The tag ``latest`` names, or (with a warning) the newest complete checkpoint when ``latest`` is
    empty or names a missing directory; None when there is no checkpoint."""
    marker = ckpt_dir / LATEST
    tags = _tags(ckpt_dir)
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    if tag in tags:
        return tag
    if not tags:
        raise CheckpointError(f"{marker} names checkpoint '{tag}', but no checkpoint is left in {ckpt_dir}")
    log.warning("%s names %r, which is not a checkpoint: using the newest one, %s", marker, tag, tags[-1])
    return tags[-1]


def load_checkpoint(engine, ckpt_dir: Path) -> dict | None:
    """Load the latest checkpoint into ``engine`` and this rank's RNG state; returns the client state (None
    when there is no checkpoint). An unreadable checkpoint falls back to the one before it, with a warning;
    every rank loads the same tag."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    candidates = _tags(ckpt_dir)
    candidates = candidates[: candidates.index(tag) + 1][::-1]  # latest first, then the older ones
    errors = []
    for tag in candidates:
        error = ""
        try:
            client_state = _load_tag(engine, ckpt_dir, tag)
        except Exception as exc:  # truncated/corrupt files: torch, pickle and DeepSpeed raise many kinds
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        error = any_rank(error)
        if not error:
            if errors:
                log.warning("resumed from the older checkpoint %s", ckpt_dir / tag)
            return client_state
        log.warning("checkpoint %s cannot be loaded (%s); trying the one before", ckpt_dir / tag, error)
        errors.append(f"{tag}: {error}")
    raise CheckpointError(f"no checkpoint in {ckpt_dir} can be loaded:\n  " + "\n  ".join(errors))


def _load_tag(engine, ckpt_dir: Path, tag: str) -> dict:
    rng_file = ckpt_dir / tag / f"rng-rank{dist.get_rank()}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: was the run saved with another number of ranks?")
    rng = torch.load(rng_file, weights_only=False)
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    set_rng_state(rng)
    log.info("resumed from checkpoint %s", ckpt_dir / tag)
    return client_state


def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The whole module's weights in fp32 on CPU (gathered from partitions under ZeRO-3)."""
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict() or {}
    else:
        state = engine.module.state_dict()
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def save_best(state: dict[str, torch.Tensor], best_dir: Path, info: dict) -> None:
    """Write model.safetensors + info.json into ``best_dir`` atomically (rank 0 only)."""
    from safetensors.torch import save_file

    best_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(best_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    atomic_write(best_dir / "info.json", json.dumps(info, indent=2))
