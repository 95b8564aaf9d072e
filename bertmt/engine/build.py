"""Build the multitask model from a config, either from pretrained weights or from a finished run."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from bertmt.config import ExperimentConfig
from bertmt.data.tasks import get_task
from bertmt.model import BertConfig, BertModel, load_encoder
from bertmt.model.multitask import MultitaskModel

log = logging.getLogger(__name__)


def attention_impl(cfg: ExperimentConfig) -> str:
    """``auto`` resolves to sdpa: faster on GPU, equal within noise on CPU (bench/encoder_throughput.py)."""
    return "sdpa" if cfg.model.attention == "auto" else cfg.model.attention


def _assemble(cfg: ExperimentConfig, encoder: BertModel) -> MultitaskModel:
    specs = [get_task(task) for task in cfg.tasks]
    sizes = {s.name: s.output_size for s in specs}
    bias = {s.name: sum(s.label_range) / 2 for s in specs if s.label_range}  # regression starts mid-range
    torch.manual_seed(cfg.run.seed)  # heads start the same on every rank and on every rerun
    model = MultitaskModel(encoder, sizes, cfg.model.pooling, cfg.model.head_hidden, cfg.model.dropout, bias)
    log.info("randomly initialised (not in the checkpoint): heads for %s", sorted(sizes))
    return model


def build_model(cfg: ExperimentConfig) -> MultitaskModel:
    return _assemble(cfg, load_encoder(cfg.model.pretrained, attention=attention_impl(cfg)))


def save_encoder_config(model: MultitaskModel, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(model.encoder.config), indent=2))


def load_trained(cfg: ExperimentConfig, run_dir: Path) -> MultitaskModel:
    """The best model of a finished (or running) run, without needing the pretrained checkpoint."""
    from safetensors.torch import load_file

    best = run_dir / "best"
    if not (best / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{best / 'model.safetensors'} does not exist: has {run_dir} finished an epoch?"
        )
    enc_cfg = BertConfig.from_dict(json.loads((run_dir / "encoder_config.json").read_text()))
    enc_cfg.attention = attention_impl(cfg)
    model = MultitaskModel(
        BertModel(enc_cfg),
        {t: get_task(t).output_size for t in cfg.tasks},
        cfg.model.pooling,
        cfg.model.head_hidden,
        cfg.model.dropout,
    )
    model.load_state_dict(load_file(str(best / "model.safetensors")))
    return model.eval()
