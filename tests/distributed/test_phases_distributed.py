"""The three-phase recipe with 2 ranks: every phase trains distributed and the phase chain completes (each
rank reads the metrics.json rank 0 wrote, PALs join in phase 3)."""

from __future__ import annotations

import json

from tests.conftest import tiny_overrides
from tests.e2e.helpers import torchrun
from tests.e2e.test_phases import RECIPE, SHORT


def test_recipe_runs_with_two_ranks(tiny_pretrained, small_data, tmp_path):
    run_dir = tmp_path / "run"
    extra = {"tasks.sst.test": None, "tasks.sts.test": None}
    torchrun(2, "train", str(RECIPE), *tiny_overrides(tiny_pretrained, small_data, run_dir, **extra), *SHORT)
    phases = json.loads((run_dir / "phases.json").read_text())
    assert [p["phase"] for p in phases] == ["heads", "joint", "pals"]
    for i, p in enumerate(phases):
        info = json.loads((run_dir / "phases" / f"{i + 1}-{p['phase']}" / "run_info.json").read_text())
        assert info["world_size"] == 2
    assert json.loads((run_dir / "metrics.json").read_text()) == phases[-1]["metrics"]
    assert (run_dir / "reports" / "dev" / "summary.json").is_file()
