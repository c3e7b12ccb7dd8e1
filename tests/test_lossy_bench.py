"""benches/loss.py keeps working: one small transfer per stack over a lossy link, every one
byte-exact (SHA-256), and nothing left behind (speed is judged from full runs recorded in
benches/RESULTS.md, never here). Needs root (namespaces and TUN devices)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2",
)
@pytest.mark.timeout(240)
def test_loss_bench_moves_data_byte_exact_through_both_stacks() -> None:
    before = _netns()  # another run's namespaces (named after its PID) are not this one's
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHES / "loss.py"),
            "--size=1",
            "--rtt=10",
            "--loss",
            "0",
            "1b4",
        ],
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHA-256: every transfer matched" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 10 ms")]
    assert len(rows) == 2, proc.stdout
    assert not {ns for ns in _netns() - before if ns.startswith("gvloss-")}
