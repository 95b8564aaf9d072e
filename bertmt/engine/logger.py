"""Metrics to TensorBoard and to the log: one ``log(dict, step)`` with tags like ``train/sst/loss``."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class MetricWriter:
    """Writes scalars on rank 0 only; other ranks get a writer that does nothing."""

    def __init__(self, tb_dir: Path | None, purge_step: int | None = None) -> None:
        self.tb = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tb_dir), purge_step=purge_step)

    def log(self, scalars: dict[str, float], step: int) -> None:
        if self.tb is None:
            return
        for tag, value in scalars.items():
            self.tb.add_scalar(tag, value, step)
        self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
