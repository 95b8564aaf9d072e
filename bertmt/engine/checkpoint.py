"""Atomic checkpoints: DeepSpeed engine state plus trainer state, and the best model's weights.

DeepSpeed writes into ``checkpoints/.partial/<tag>``; only when every rank has finished does rank 0 rename
it to ``checkpoints/<tag>`` and then atomically replace ``checkpoints/latest``. A crash at any point leaves
the previous checkpoint and ``latest`` intact.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
LATEST = "latest"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename: readers see the old or the new content, never a part."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def save_checkpoint(engine, ckpt_dir: Path, tag: str, client_state: dict, keep: int = 2) -> Path:
    """Save engine + client state under ``ckpt_dir/tag`` atomically; keep the newest ``keep`` checkpoints."""
    partial = ckpt_dir / ".partial"
    engine.save_checkpoint(str(partial), tag=tag, client_state=client_state, save_latest=False)
    # DeepSpeed keeps client_state from rank 0 only: every rank's own RNG streams (dropout) go beside it
    torch.save(rng_state(), partial / tag / f"rng-rank{dist.get_rank()}.pt")
    dist.barrier()
    final = ckpt_dir / tag
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial / tag, final)
        atomic_write_text(ckpt_dir / LATEST, tag)
        tags = sorted(
            (p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step-")),
            key=lambda p: int(p.name.split("-")[1]),
        )
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    dist.barrier()
    return final


def latest_tag(ckpt_dir: Path) -> str | None:
    marker = ckpt_dir / LATEST
    if not marker.is_file():
        return None
    tag = marker.read_text().strip()
    if not (ckpt_dir / tag).is_dir():
        raise FileNotFoundError(f"{marker} names checkpoint '{tag}', but {ckpt_dir / tag} is missing")
    return tag


def load_checkpoint(engine, ckpt_dir: Path) -> dict | None:
    """Load the latest checkpoint into ``engine`` and this rank's RNG state; returns the client state (None
    when there is no checkpoint)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rng_file = ckpt_dir / tag / f"rng-rank{dist.get_rank()}.pt"
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: was the run saved with another number of ranks?")
    set_rng_state(torch.load(rng_file, weights_only=False))
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
    tmp = best_dir / f"model.safetensors.tmp{os.getpid()}"
    save_file(state, str(tmp))
    os.replace(tmp, best_dir / "model.safetensors")
    atomic_write_text(best_dir / "info.json", json.dumps(info, indent=2))
