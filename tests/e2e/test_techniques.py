"""One tiny run with every model-side technique switched on, checked through the run directory's files.

Siamese pair heads (concat for Quora, scaled cosine for STS), attention pooling, PALs, SMART (adversarial +
Bregman), extra datasets (CFIMDB with its own head, more SST records sharing the SST head, sampled by
weight), and long inputs split into segments (CFIMDB reviews, attention over the segments)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import slice_file, tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt


@pytest.fixture(scope="module")
def run(tiny_pretrained, small_data, data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("techniques")
    slice_file(data_dir / "ids-cfimdb-train.csv", small_data / "cfimdb-train.csv", 80)
    slice_file(data_dir / "ids-cfimdb-dev.csv", small_data / "cfimdb-dev.csv", 40)
    slice_file(data_dir / "ids-sst-dev.csv", small_data / "sst-more.csv", 120)  # other SST records
    run_dir = tmp / "run"
    overrides = tiny_overrides(tiny_pretrained, small_data, run_dir) + [
        "model.pooling=attention",
        "model.pals={enabled: true, size: 16, heads: 4, shared: false}",
        "tasks.quora.pair_encoding=siamese",
        "tasks.sts.pair_encoding=siamese",
        "tasks.sts.pair_features=cosine",
        "tasks.cfimdb={train: cfimdb-train.csv, dev: cfimdb-dev.csv, batch_size: 8}",
        "tasks.sst_more={type: sst, head: sst, train: sst-more.csv, batch_size: 8, sample_weight: 0.25}",
        "schedule.kind=proportional",
        "train.batches_per_epoch=30",
        "mtl.smart={weight: 1.0, bregman_weight: 1.0, noise: 1.0e-3, epsilon: 1.0e-2, step_size: 1.0e-2}",
        "data.long_inputs=chunk",
        "data.chunk_overlap=8",
        "data.max_segments=3",  # (CI time: a review has up to 3 x 46 pieces)
        "model.segment_pooling=attention",
    ]
    proc = bertmt("train", str(QUICKSTART), *overrides)
    return run_dir, proc


def test_heads_follow_the_datasets_and_pair_settings(run):
    run_dir, _ = run
    weights = load_file(str(run_dir / "best" / "model.safetensors"))
    heads = {k.split(".")[1] for k in weights if k.startswith("heads.")}
    assert heads == {"sst", "quora", "sts", "cfimdb"}  # sst_more trains the sst head
    assert "heads.sts.cosine.scale" in weights and not any(k.startswith("heads.sts.mlp") for k in weights)
    assert weights["heads.quora.mlp.1.weight"].shape[1] == 4 * 32  # [u, v, |u - v|, u * v] of width 32
    assert all(weights[f"heads.{h}.pool.query"].abs().sum() > 0 for h in heads)  # learned from zero
    assert {k.split(".")[1] for k in weights if k.startswith("pals.")} == heads
    assert weights["pals.cfimdb.decode.1.weight"].abs().sum() > 0  # per-layer V_D, learned from zero


def test_long_reviews_are_read_in_segments(run):
    run_dir, _ = run
    log = (run_dir / "train.log").read_text()
    found = re.search(r"cfimdb: (\d+) of 80 records longer than 48 tokens, split into segments", log)
    assert found and int(found.group(1)) >= 60, log[-3000:]  # reviews run to hundreds of tokens
    weights = load_file(str(run_dir / "best" / "model.safetensors"))
    assert weights["heads.cfimdb.segments.query"].abs().sum() > 0  # attention over segments, learned from 0
    assert "heads.sst.segments.query" in weights  # single sentences too (SST rarely needs two segments)
    assert not any(k.startswith(("heads.quora.segments", "heads.sts.segments")) for k in weights)  # pairs


def test_every_dataset_trains_and_smart_terms_are_logged(run):
    run_dir, _ = run
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for task in ("sst", "quora", "sts", "cfimdb", "sst_more"):
        assert f"train/{task}/loss" in tags
        adv = [e.value for e in events.Scalars(f"train/{task}/smart_adv")]
        assert adv and all(np.isfinite(adv)) and max(adv) > 0
        prox = [e.value for e in events.Scalars(f"train/{task}/smart_prox")]
        assert all(np.isfinite(prox)) and max(prox) > 0  # the model moves away from its momentum teacher
    fractions = {t: events.Scalars(f"schedule/{t}/fraction")[0].value for t in ("cfimdb", "sst_more")}
    # proportional with weights: sst_more (120 records x 0.25) is drawn less often than cfimdb (80 x 1.0);
    # without its weight it would be drawn more often (120 > 80)
    assert 0 < fractions["sst_more"] < fractions["cfimdb"]


def test_metrics_and_reports_cover_the_extra_dataset(run):
    run_dir, _ = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"sst", "quora", "sts", "cfimdb", "overall"}  # sst_more has no dev file
    summary = json.loads((run_dir / "reports" / "dev" / "summary.json").read_text())
    assert summary["cfimdb"]["accuracy"] == pytest.approx(metrics["cfimdb"]["accuracy"])
    assert (run_dir / "reports" / "dev" / "cfimdb_roc.png").is_file()
    # (the cosine head's clipping to the label range is tested in tests/unit/test_heads.py: the predictions
    # file is clipped again by to_predictions, so it cannot show it)
