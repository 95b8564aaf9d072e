"""Models leave bertmt: `bertmt export` as a Hugging Face checkpoint (loaded by transformers' AutoModel with
no missing or unexpected weight, same hidden states) and as a sentence-transformers model (same sentence
vectors as bertmt's pooling); `bertmt predict --format cs224n` writes the starter code's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bertmt.config import load_config
from bertmt.data.readers import read_task_file
from bertmt.data.tasks import TASKS
from bertmt.engine.build import load_trained
from bertmt.rundir import RunDir
from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt


@pytest.fixture(scope="module")
def run(tiny_pretrained, small_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir, **{"train.epochs": 1, "run.reports": False})
    bertmt("train", str(QUICKSTART), *args)
    return RunDir(run_dir)


def _bertmt_model(run: RunDir):
    cfg = load_config(run.config)
    return cfg, load_trained(cfg, run.best_model, run.encoder_config).eval()


def _tokenizer(run: RunDir, cfg):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(run.tokenizer))
    tokenizer.enable_truncation(max_length=cfg.data.max_length)
    return tokenizer


def _sentences(small_data) -> list[str]:
    data = read_task_file(small_data / "sts-dev.csv", TASKS["sts"])
    return [t for pair in data.texts[:8] for t in pair]


def test_hf_export_loads_in_transformers_with_the_same_hidden_states(run, small_data, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "hf"
    proc = bertmt("export", str(run.path), str(out), "--format", "hf")
    assert "exported the best model of epoch 1" in proc.stdout
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    cfg, ours = _bertmt_model(run)
    tokenizer = AutoTokenizer.from_pretrained(out)
    texts = _sentences(small_data)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    reference = _tokenizer(run, cfg)
    for i, text in enumerate(texts):  # the same token ids as bertmt's own tokenizer
        want = reference.encode(text).ids
        assert batch["input_ids"][i, : len(want)].tolist() == want and batch["attention_mask"][
            i
        ].sum() == len(want)
    with torch.no_grad():
        theirs = model.eval()(**batch).last_hidden_state
        mine = ours.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(theirs[mask], mine.last_hidden_state[mask], rtol=1e-5, atol=1e-5)
    card = (out / "README.md").read_text()
    metrics = json.loads(run.metrics.read_text())
    assert f"| sts | pearson | {metrics['sts']['pearson']:.4f} |" in card and "sts-train.csv" in card
    heads = (out / "bertmt_heads.safetensors").stat().st_size
    assert heads > 0 and not any(k.startswith("heads.") for k in _keys(out / "model.safetensors"))


def _keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return list(f.keys())


def test_sentence_transformers_export_pools_like_bertmt(run, small_data, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "st"
    bertmt("export", str(run.path), str(out), "--format", "sentence-transformers")
    st = SentenceTransformer(str(out), device="cpu")
    texts = _sentences(small_data)
    theirs = st.encode(texts, convert_to_tensor=True, batch_size=4)
    cfg, ours = _bertmt_model(run)
    assert cfg.model.pooling == "mean"
    tokenizer = _tokenizer(run, cfg)
    with torch.no_grad():
        for text, vector in zip(texts, theirs):
            ids = torch.tensor([tokenizer.encode(text).ids])
            mask = torch.ones_like(ids)
            pooled = ours.heads["sts"].pool(ours.encoder(ids, mask, torch.zeros_like(ids)), mask)[0]
            torch.testing.assert_close(vector, pooled, rtol=1e-5, atol=1e-5)


def test_export_refuses_what_it_cannot_write(run, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    proc = bertmt("export", str(run.path), str(tmp_path / "full"), check=False)
    assert proc.returncode == 1 and "exists and is not empty" in proc.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_predict_writes_the_cs224n_starter_files(run, small_data):
    proc = bertmt("predict", str(run.path), "--split", "dev", "--format", "cs224n")
    assert "# best model of epoch 1" in proc.stderr
    out = run.predictions / "cs224n"
    assert sorted(p.name for p in out.iterdir()) == [
        "para-dev-output.csv",
        "sst-dev-output.csv",
        "sts-dev-output.csv",
    ]
    header, *rows = (out / "sst-dev-output.csv").read_text().splitlines(keepends=True)
    assert header == "id \t Predicted_Sentiment \n"
    ours = np.loadtxt(run.prediction("sst", "dev"), delimiter=",", skiprows=1, dtype=str)
    assert [r.split(" , ")[0] for r in rows] == list(ours[:, 0])
    assert [int(r.split(" , ")[1]) for r in rows] == [int(x) for x in ours[:, 1]]
    assert (out / "sts-dev-output.csv").read_text().startswith("id \t Predicted_Similiarity \n")
    assert (out / "para-dev-output.csv").read_text().startswith("id \t Predicted_Is_Paraphrase \n")
