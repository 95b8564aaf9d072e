"""RunDir: where a run of several trainings (phases, the models of an exclusive run, their phases) keeps
what it can resume from."""

from __future__ import annotations

import pytest

from bertmt.rundir import RunDir


@pytest.mark.parametrize("sub", [".", "phases/2-joint", "tasks/sts", "tasks/joint/phases/1-heads"])
def test_a_checkpoint_anywhere_in_the_run_counts_as_something_to_resume(sub, tmp_path):
    run = RunDir(tmp_path / "run")
    assert not run.has_checkpoint() and run.status() == "not started"
    latest = RunDir(run.path / sub).latest
    latest.parent.mkdir(parents=True)
    latest.write_text("epoch1-step10")
    assert run.has_checkpoint() and run.status() == "unfinished"
