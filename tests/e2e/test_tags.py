"""POS / NER tag embeddings end to end: a tiny run with tags from a real (tiny, trained) spaCy pipeline,
siamese pairs included; the embeddings learn from zero and `bertmt eval` reproduces the metrics."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt


@pytest.fixture(scope="module")
def run(tiny_pretrained, small_data, tiny_spacy, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tags") / "run"
    extra = {"data.tags.pipeline": str(tiny_spacy), "tasks.quora.pair_encoding": "siamese", "train.epochs": 1}
    bertmt("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir, **extra))
    return run_dir


def test_tag_embeddings_learn_from_zero(run):
    weights = load_file(str(run / "best" / "model.safetensors"))
    for kind in ("pos", "ner"):
        table = weights[f"tags.{kind}.weight"]
        assert table[1:].abs().sum() > 0, kind  # the tags seen in training moved away from zero


def test_eval_recomputes_the_same_metrics_with_tags(run):
    bertmt("eval", str(run))
    (out,) = (run / "eval").iterdir()
    evaluated = json.loads((out / "metrics.json").read_text())["metrics"]
    trained = json.loads((run / "metrics.json").read_text())
    for task in ("sst", "quora", "sts"):
        assert evaluated[task] == pytest.approx(trained[task], abs=1e-6)
