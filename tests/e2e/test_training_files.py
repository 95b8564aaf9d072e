"""A training set of two files trains as the one file holding both (tasks.<t>.train as a list)."""

from __future__ import annotations

import json

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, bertmt


def test_a_run_on_two_training_files_equals_the_run_on_their_concatenation(
    tiny_pretrained, small_data, tmp_path
):
    lines = (small_data / "quora-small-train.csv").read_text().splitlines(keepends=True)
    head, tail = tmp_path / "head.csv", tmp_path / "tail.csv"
    head.write_text("".join(lines[:101]))  # the header and 100 records
    tail.write_text(lines[0] + "".join(lines[101:]))  # the header and the other 60
    metrics = {}
    for name, train in (("one", "quora-small-train.csv"), ("two", f"[{head},{tail}]")):
        args = tiny_overrides(tiny_pretrained, small_data, tmp_path / name) + [f"tasks.quora.train={train}"]
        bertmt("train", str(QUICKSTART), *args)
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["two"] == metrics["one"]
    assert 0 < metrics["one"]["quora"]["accuracy"] < 1
