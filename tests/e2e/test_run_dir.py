"""The run directory keeps its promises (bertmt/rundir.py, bertmt/run.py): one trainer per directory, a
restart continues the config it started with, a diverged run keeps its last good checkpoint and writes no
metrics, and bad inputs are refused before any work, by the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bertmt.config import load_config, save_config
from bertmt.rundir import RunDir, RunLock, RunLocked
from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, REPO, bertmt

WORKER = "tests.distributed.worker"


def _holder(lock_path) -> subprocess.Popen:
    """Another process that holds the run directory's lock until it is killed."""
    code = (
        "import sys, time; from bertmt.rundir import RunLock; "
        f"RunLock({str(lock_path)!r}).acquire(); print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_trainer_is_refused_and_a_dead_holder_is_reported(
    tiny_pretrained, small_data, tmp_path, caplog
):
    run_dir = tmp_path / "run"
    holder = _holder(RunDir(run_dir).lock_file)
    try:
        proc = bertmt(
            "train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir), check=False
        )
        assert proc.returncode == 6, proc.stderr[-2000:]
        assert (
            f"run directory {run_dir} is in use by another trainer (pid {holder.pid} on host" in proc.stderr
        )
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing written, nothing read
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: the kernel freed the lock, the file still names it
    with caplog.at_level("WARNING"), RunLock(RunDir(run_dir).lock_file):
        pass
    assert (
        f"the previous trainer (pid {holder.pid} on host" in caplog.text
        and "did not exit cleanly" in caplog.text
    )
    caplog.clear()
    with RunLock(RunDir(run_dir).lock_file):  # released cleanly last time: nothing to report
        with pytest.raises(RunLocked):  # while it is held, another process is refused
            _holder_in_child(RunDir(run_dir).lock_file)
    assert "did not exit cleanly" not in caplog.text


def _holder_in_child(lock_path) -> None:
    code = f"from bertmt.rundir import RunLock; RunLock({str(lock_path)!r}).acquire()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if "RunLocked" in proc.stderr:
        raise RunLocked(proc.stderr)


@pytest.fixture
def started_run(tiny_pretrained, small_data, tmp_path):
    """A run directory as a trainer leaves it after its first checkpoint (config, run info, latest)."""
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir)
    (run_dir / "checkpoints" / "step-2").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step-2")
    save_config(load_config(QUICKSTART, args), run_dir / "config.yaml")
    (run_dir / "run_info.json").write_text(json.dumps({"world_size": 1}))
    return run_dir, args


@pytest.mark.parametrize(
    "change, message",
    [
        ("optim.lr=1e-3", "optim.lr: 0.0001 in the run, 0.001 now"),
        ("run.seed=7", "run.seed: 1234 in the run, 7 now"),
        ("tasks.sst.batch_size=4", "tasks.sst.batch_size: 8 in the run, 4 now"),
        ("train.epochs=5", "train.epochs: 2 in the run, 5 now"),
        ("tasks.sts.train=null", "tasks.sts.train: 'sts-train.csv' in the run, None now"),
    ],
)
def test_a_restart_with_another_config_is_refused_naming_keys_and_values(started_run, change, message):
    run_dir, args = started_run
    saved = (run_dir / "config.yaml").read_bytes()
    proc = bertmt("train", str(QUICKSTART), *args, change, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert "--allow-config-change" in proc.stderr
    assert (run_dir / "config.yaml").read_bytes() == saved and not (run_dir / "train.log").exists()


def test_a_restart_with_another_world_size_is_refused(started_run):
    run_dir, args = started_run
    (run_dir / "run_info.json").write_text(json.dumps({"world_size": 2}))
    proc = bertmt("train", str(QUICKSTART), *args, check=False)
    assert proc.returncode == 2 and "world size (ranks): 2 in the run, 1 now" in proc.stderr


def test_harmless_and_allowed_changes(started_run):
    from bertmt.run import _record_changes, check_restart

    run_dir, args = started_run
    run = RunDir(run_dir)
    harmless = ["run.log_every=1", "data.eval_batch_size=4", "run.checkpoint_every=3", "slurm.time=01:00:00"]
    assert check_restart(load_config(QUICKSTART, args + harmless), run, allow_change=False) == {}
    changes = check_restart(load_config(QUICKSTART, args + ["optim.lr=1e-3"]), run, allow_change=True)
    assert changes == {"optim.lr": (1e-4, 1e-3)}
    _record_changes(run, changes)
    (entry,) = [json.loads(line) for line in run.config_changes.read_text().splitlines()]
    assert entry["changes"] == {"optim.lr": [1e-4, 1e-3]}
    fresh = RunDir(run_dir.parent / "fresh")  # nothing saved yet: any config starts it
    assert check_restart(load_config(QUICKSTART, args + ["optim.lr=1e-3"]), fresh, allow_change=False) == {}


@pytest.mark.parametrize("call, latest", [(0, None), (14, "step-12")], ids=["first-step", "second-epoch"])
def test_divergence_stops_keeps_the_last_good_checkpoint_and_writes_no_metrics(
    call, latest, tiny_pretrained, small_data, tmp_path
):
    """The loss of micro-batch ``call`` becomes inf (plain path, fp32): the run stops at that step."""
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir)  # 12 steps per epoch, 2 epochs
    env = {"BERTMT_TEST_POISON": f"0:{call}"}
    proc = bertmt("train", str(QUICKSTART), *args, module=WORKER, env=env, check=False)
    assert proc.returncode == 5, proc.stderr[-3000:]
    assert f"non-finite values at optimiser step {call + 1} (" in proc.stderr
    assert ("the start (no checkpoint yet)" if latest is None else f"checkpoint {latest}") in proc.stderr
    run = RunDir(run_dir)
    assert not run.metrics.exists() and not run.history.exists()
    assert "diverged" in json.loads(run.failed.read_text())["error"] and run.status() == "failed"
    if latest is None:
        assert not run.latest.exists() and not run.best_model.exists()
        return
    assert run.latest.read_text() == latest and sorted(p.name for p in run.checkpoints.glob("step-*")) == [
        latest
    ]
    (states,) = (run.checkpoints / latest).glob("mp_rank_00_model_states.pt")
    weights = torch.load(states, weights_only=False)["module"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads(run.best_info.read_text())["epoch"] == 1


def test_bad_pretrained_model_is_refused_in_seconds_before_the_run_directory(
    tiny_pretrained, small_data, tmp_path
):
    broken = tmp_path / "broken-bert"
    broken.mkdir()
    for f in tiny_pretrained.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    run_dir = tmp_path / "run"
    start = time.time()
    proc = bertmt("train", str(QUICKSTART), *tiny_overrides(broken, small_data, run_dir), check=False)
    assert proc.returncode == 1 and f"{weights}: unreadable weights" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not run_dir.exists() and time.time() - start < 30
    (broken / "config.json").write_text('{"hidden_size": 32,')
    proc = bertmt("train", str(QUICKSTART), *tiny_overrides(broken, small_data, run_dir), check=False)
    assert proc.returncode == 1 and f"{broken / 'config.json'}: not a BERT config.json" in proc.stderr


def test_sigint_twice_stops_at_once(tiny_pretrained, small_data, tmp_path):
    """A first Ctrl-C asks for a checkpoint at the next step; a second one stops without waiting."""
    from bertmt.engine.preemption import StopCheck

    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a background job
    stops = StopCheck("USR1", world=1, requeue_signal=False)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.poll(False) == (1, False) and stops.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stops.close()
    assert signal.getsignal(signal.SIGINT) is before  # the previous handler is back


def test_a_data_file_that_is_not_utf8_is_refused_before_the_run_directory(
    tiny_pretrained, small_data, tmp_path
):
    bad = tmp_path / "sts-latin1.csv"
    text = (small_data / "sts-train.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    bad.write_bytes("".join(text[:5]).encode() + "3\tx\tCaf\xe9.\tB.\t1.0\n".encode("latin-1"))
    run_dir = tmp_path / "run"
    args = tiny_overrides(tiny_pretrained, small_data, run_dir) + [f"tasks.sts.train={bad}"]
    proc = bertmt("train", str(QUICKSTART), *args, check=False)
    assert proc.returncode == 1 and f"{bad}:6: not UTF-8 text (byte 0xe9)" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not run_dir.exists()
