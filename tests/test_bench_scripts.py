"""The end-to-end benchmark scripts keep working (speed is judged from full runs recorded in
benches/RESULTS.md, never here): the quick variant of ``benches/tun_iperf.py`` moves data
through golem-vpn and the bare veth and leaves no namespace behind."""

from __future__ import annotations

import json
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
    not hasattr(os, "geteuid")
    or os.geteuid() != 0
    or any(shutil.which(t) is None for t in ("ip", "iperf3", "ping", "nsenter")),
    reason="needs root, iproute2, iperf3, ping and nsenter",
)
@pytest.mark.timeout(300)
def test_tun_iperf_quick_moves_data_on_every_path(tmp_path: Path) -> None:
    before = _netns()
    out = tmp_path / "tun.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHES / "tun_iperf.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    medians = json.loads(out.read_text())["medians"]
    for path in ("veth", "golem-vpn"):
        for streams in (1, 4):
            assert medians[f"{path} tcp x{streams} Gbit/s"] > 0
        assert medians[f"{path} ping ms"] > 0
    assert "added RTT" in proc.stdout
    assert {n for n in _netns() - before if n.startswith("gvb-")} == set()
