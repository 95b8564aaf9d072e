"""Build the multitask model from a config, either from pretrained weights or from a finished run."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from bertmt.config import ExperimentConfig
from bertmt.model import BertConfig, BertModel, load_encoder
from bertmt.model.multitask import ExpertSpec, HeadSpec, MultitaskModel, PalSpec

log = logging.getLogger(__name__)


def attention_impl(cfg: ExperimentConfig) -> str:
    """``auto`` resolves to sdpa: faster on GPU, equal within noise on CPU (bench/encoder_throughput.py)."""
    return "sdpa" if cfg.model.attention == "auto" else cfg.model.attention


def head_specs(cfg: ExperimentConfig) -> dict[str, HeadSpec]:
    """One head per dataset that has no ``head:`` of its own (the others share one of these)."""
    out = {}
    for name in cfg.tasks:
        if cfg.tasks[name].head is not None:
            continue
        spec = cfg.task_spec(name)
        siamese = cfg.pair_encoding(name) == "siamese"
        out[name] = HeadSpec(
            out_size=spec.output_size,
            pair_features=cfg.tasks[name].pair_features if siamese else None,
            segment_features=cfg.tasks[name].cross_features == "segments",
            output_bias=sum(spec.label_range) / 2 if spec.label_range else 0.0,  # regression: mid-range
            label_range=spec.label_range,
            arch=cfg.head_arch(name),
            lstm_size=cfg.model.lstm_size,
            cnn_kernels=tuple(cfg.model.cnn_kernels),
            cnn_channels=cfg.model.cnn_channels,
            segment_pooling=cfg.model.segment_pooling
            if cfg.data.long_inputs == "chunk" and not spec.is_pair
            else None,
        )
    return out


def _assemble(cfg: ExperimentConfig, encoder: BertModel) -> MultitaskModel:
    pals, experts = cfg.model.pals, cfg.model.experts
    torch.manual_seed(cfg.run.seed)  # heads start the same on every rank and on every rerun
    return MultitaskModel(
        encoder,
        head_specs(cfg),
        cfg.model.pooling,
        cfg.model.head_hidden,
        cfg.model.dropout,
        head_of={t: cfg.head_of(t) for t in cfg.tasks},
        pals=PalSpec(pals.size, pals.heads, pals.shared) if pals.enabled else None,
        experts=ExpertSpec(experts.count, experts.layers) if experts.count else None,
        mlm=cfg.train.objective == "mlm",
        tag_sizes=_tag_sizes(cfg),
    )


def _tag_sizes(cfg: ExperimentConfig) -> dict[str, int] | None:
    tagger = cfg.data.tagger
    return None if tagger is None else {kind: len(tags) for kind, tags in tagger.vocab().items()}


def build_model(cfg: ExperimentConfig, init_from: Path | None = None) -> MultitaskModel:
    """The model of ``cfg``: pretrained encoder + fresh heads, or (``init_from``) the weights of an earlier
    phase's best model, where only PALs and the MLM head may be missing (PALs start at zero: the output is
    unchanged) and an MLM phase's head is left behind. Parameters that this config does not train
    (``train.freeze_encoder``; the task parameters of an MLM phase) get ``requires_grad=False``."""
    encoder = load_encoder(cfg.model.pretrained, attention=attention_impl(cfg))
    model = _assemble(cfg, encoder)
    if init_from is None:
        log.info("randomly initialised (not in the checkpoint): heads %s", sorted(model.heads))
        if model.mlm is not None:
            from bertmt.model.pretrained import read_state_dict, resolve_pretrained

            own = model.mlm.load_pretrained(read_state_dict(resolve_pretrained(cfg.model.pretrained)))
            log.info("MLM head: %s", "the checkpoint's" if own else "new (the checkpoint has none)")
    else:
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(str(init_from)).items() if not k.startswith("mlm.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith(("pals.", "mlm."))] + list(unexpected)
        if bad:
            raise ValueError(f"{init_from} does not fit this phase's model: {bad[:5]} ...")
        pals = any(k.startswith("pals.") for k in missing)
        log.info("weights from %s%s", init_from, " (PALs added at zero)" if pals else "")
    if model.mlm is not None:  # masked-language modelling trains the encoder and its MLM head only
        shared = {id(p) for p in model.shared_parameters()} | {id(p) for p in model.mlm.parameters()}
        for p in model.parameters():
            if id(p) not in shared:
                p.requires_grad_(False)
    if cfg.train.freeze_encoder:
        for p in model.shared_parameters():  # the encoder and its experts' layers
            p.requires_grad_(False)
        log.info("encoder frozen: training heads%s only", " and PALs" if model.pals is not None else "")
    return model


def save_encoder_config(model: MultitaskModel, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(model.encoder.config), indent=2))


def load_trained(cfg: ExperimentConfig, weights: Path, encoder_config: Path) -> MultitaskModel:
    """A trained model (a run's best/model.safetensors and its encoder_config.json), without needing the
    pretrained checkpoint."""
    from safetensors.torch import load_file

    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: has the run finished an epoch?")
    enc_cfg = BertConfig.from_dict(json.loads(encoder_config.read_text()))
    enc_cfg.attention = attention_impl(cfg)
    model = _assemble(cfg, BertModel(enc_cfg))
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
