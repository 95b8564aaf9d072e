"""Models out of bertmt: `bertmt export RUN_DIR OUT --format hf|sentence-transformers`.

``hf``: the best encoder as a Hugging Face BERT checkpoint (config.json, model.safetensors, tokenizer files)
that ``transformers.AutoModel`` loads with no missing or unexpected weight. ``sentence-transformers``: the
same checkpoint plus modules.json, sentence_bert_config.json and 1_Pooling/ set to the run's pooling (mean or
cls; the other poolings have no sentence-transformers equivalent and are refused). Both write the task
heads to ``bertmt_heads.safetensors`` (with the run's config.yaml as ``bertmt_config.yaml``) and a model card
(README.md: metrics, config, data).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from bertmt.config import ExperimentConfig, to_dict
from bertmt.rundir import RunDir

FORMATS = ("hf", "sentence-transformers")
ST_POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


def export(cfg: ExperimentConfig, run: RunDir, out: Path, fmt: str) -> Path:
    """Write the run's best model to ``out`` in ``fmt``; returns ``out``."""
    from safetensors.torch import load_file, save_file

    from bertmt.evaluation.runs import final_run

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    model_cfg, model_run = final_run(cfg, run)
    if model_cfg.model.pals.enabled:
        raise ValueError(
            f"{run.path} trains projected attention layers (model.pals): they are part of the encoder and "
            "a Hugging Face BertModel has no place for them"
        )
    if cfg.train.exclusive:
        raise ValueError(
            f"{run.path} trained one model per task (train.exclusive): export one of {run.task_models}"
        )
    if model_cfg.data.tags.pipeline is not None:
        raise ValueError(
            f"{run.path} adds POS/NER tag embeddings (data.tags): a BertModel has no input for them"
        )
    if model_cfg.model.experts.count:
        raise ValueError(
            f"{run.path} trains combined experts (model.experts): a Hugging Face BertModel has one set of "
            "top layers and no gates"
        )
    if fmt == "sentence-transformers" and model_cfg.model.pooling not in ST_POOLING:
        raise ValueError(
            f"model.pooling={model_cfg.model.pooling!r} has no sentence-transformers equivalent "
            f"(exportable: {sorted(ST_POOLING)}); use --format hf"
        )
    if not model_run.best_model.is_file():
        raise FileNotFoundError(f"{model_run.best_model} does not exist: has {run.path} finished an epoch?")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(model_run.best_model))
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    heads = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    save_file(encoder, str(out / "model.safetensors"), metadata={"format": "pt"})
    save_file(heads, str(out / "bertmt_heads.safetensors"), metadata={"format": "pt"})
    enc_cfg = json.loads(model_run.encoder_config.read_text())
    enc_cfg.pop("attention", None)
    hf_config = {"architectures": ["BertModel"], "model_type": "bert", **enc_cfg}
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    _write_tokenizer(model_run, out, cfg.data.max_length)
    (out / "bertmt_config.yaml").write_text(yaml.safe_dump(to_dict(model_cfg), sort_keys=False))
    if fmt == "sentence-transformers":
        _write_sentence_transformers(out, model_cfg, enc_cfg["hidden_size"])
    (out / "README.md").write_text(_model_card(cfg, model_cfg, run, model_run, fmt))
    return out


def _write_tokenizer(run: RunDir, out: Path, max_length: int) -> None:
    from tokenizers import Tokenizer

    shutil.copy(run.tokenizer, out / "tokenizer.json")
    vocab = Tokenizer.from_file(str(run.tokenizer)).get_vocab()
    (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in sorted(vocab.items(), key=lambda x: x[1])))
    config = {"tokenizer_class": "BertTokenizerFast", "model_max_length": max_length, **SPECIAL_TOKENS}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2))


def _write_sentence_transformers(out: Path, cfg: ExperimentConfig, hidden: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    bert = {"max_seq_length": cfg.data.max_length, "do_lower_case": False}  # tokenizer.json lowercases
    (out / "sentence_bert_config.json").write_text(json.dumps(bert, indent=2))
    pooling = {"word_embedding_dimension": hidden} | {mode: False for mode in ST_POOLING.values()}
    pooling[ST_POOLING[cfg.model.pooling]] = True
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))


def _model_card(
    cfg: ExperimentConfig, model_cfg: ExperimentConfig, run: RunDir, model_run: RunDir, fmt
) -> str:
    info = model_run.read_json(model_run.best_info)
    metrics = info.get("metrics", {})
    rows = [
        f"| {task} | {name} | {value:.4f} |"
        for task, values in metrics.items()
        if isinstance(values, dict)
        for name, value in values.items()
    ]
    files = [
        f"- {t}: "
        + ", ".join(
            f"{s} " + " + ".join(f"`{p}`" for p in model_cfg.task_paths(t, s))
            for s in ("train", "dev", "test")
            if getattr(c, s)
        )
        for t, c in model_cfg.tasks.items()
    ]
    usage = (
        "```python\nfrom sentence_transformers import SentenceTransformer\n"
        f"model = SentenceTransformer('{run.path.name}-export')\n```"
        if fmt == "sentence-transformers"
        else "```python\nfrom transformers import AutoModel, AutoTokenizer\n"
        "model = AutoModel.from_pretrained(PATH); tokenizer = AutoTokenizer.from_pretrained(PATH)\n```"
    )
    return "\n".join(
        [
            f"# {run.path.name} (bertmt multitask BERT)",
            "",
            f"The encoder of the best epoch ({info.get('epoch')}) of the bertmt run `{run.path}` "
            f"({run.status()}), trained from `{cfg.model.pretrained}` on {', '.join(cfg.tasks)}; "
            f"gradient surgery: {model_cfg.mtl.method}; pooling: {model_cfg.model.pooling}.",
            "The task heads are in `bertmt_heads.safetensors`, the whole config in `bertmt_config.yaml`.",
            "",
            "## Dev metrics of this model",
            "",
            "| task | metric | value |",
            "|---|---|---|",
            *rows,
            f"| overall | | {metrics.get('overall', float('nan')):.4f} |",
            "",
            "## Data",
            "",
            *files,
            "",
            "## Training",
            "",
            f"epochs {model_cfg.train.epochs}, lr {model_cfg.optim.lr}, schedule {model_cfg.schedule.kind}, "
            f"precision {model_cfg.train.precision}, ZeRO stage {model_cfg.train.zero_stage}, "
            f"seed {model_cfg.run.seed}.",
            "",
            "## Use",
            "",
            usage,
            "",
        ]
    )
