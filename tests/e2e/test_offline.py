"""Nothing is downloaded at run time: `bertmt train` with a local checkpoint directory and `bertmt predict`
run with every non-loopback network connection refused inside the process (loopback stays: the process
group's store lives on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import tiny_overrides
from tests.e2e.helpers import QUICKSTART, REPO, cli_env

NO_NETWORK = """
import ipaddress, socket, sys
attempts = []
real_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    try:
        local = ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        local = False
    if not local:
        attempts.append(str(address))
        raise OSError(f"network access attempted: {address}")
    return real_connect(self, address)
socket.socket.connect = connect
real_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1", socket.gethostname()):
        attempts.append(f"resolve {host}")
        raise OSError(f"network access attempted: resolve {host}")
    return real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
from bertmt.cli import main
code = main(sys.argv[1:])
assert not attempts, attempts
sys.exit(code)
"""


def _offline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_NETWORK, *args],
        capture_output=True,
        text=True,
        env=cli_env() | {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"},  # no help from these
        cwd=REPO,
        timeout=600,
    )


def test_training_and_prediction_need_no_network(tiny_pretrained, small_data, tmp_path):
    run_dir = tmp_path / "run"
    extra = {"train.epochs": 1, "tasks.sst.test": None, "tasks.sts.test": None}
    proc = _offline("train", str(QUICKSTART), *tiny_overrides(tiny_pretrained, small_data, run_dir, **extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    proc = _offline("predict", str(run_dir), "--split", "dev")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "predictions" / "sts-dev.csv").is_file()
