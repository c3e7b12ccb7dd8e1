"""The end-to-end benchmark scripts keep working (speed is judged from full runs recorded in
benches/RESULTS.md, never here): the quick variant of ``benches/peers.py`` moves data through
the bare veth, golem-vpn (one datapath thread per device, and one per queue) and every peer
VPN, and ``benches/workers.py`` measures the sending datapath with one and two threads; both
leave no namespace or process behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"
PATHS = ("veth", "golem-vpn", "golem-vpn-mq", "wireguard-go", "nebula", "tinc", "openvpn")
TOOLS = ("ip", "iperf3", "ping", "nsenter", "wireguard-go", "wg", "nebula", "nebula-cert",
         "tincd", "openvpn", "openssl")  # fmt: skip
PEER_PROGRAMS = {"wireguard-go", "nebula", "tincd", "openvpn", "iperf3"}


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _cmdline(pid: int) -> list[str] | None:
    """A live process's argv (None if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs root and {', '.join(TOOLS)} (.ci/run installs them)",
)
@pytest.mark.timeout(300)
def test_peers_quick_moves_data_on_every_path(tmp_path: Path) -> None:
    before = _netns()
    out = tmp_path / "peers.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHES / "peers.py"), "--quick", "--strict", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert set(report["paths"]) == set(PATHS)
    (rate,) = report["udp_rates"]
    for name, path in report["paths"].items():
        assert path["status"] == "ok", (name, path["reason"])
        medians = path["medians"]
        for streams in (1, 4):
            for way in ("a->b", "b->a"):
                assert medians[f"tcp x{streams} {way} Gbit/s"] > 0, name
        assert medians[f"udp {rate} rcvd Gbit/s"] > 0, name
        assert medians["ping ms"] > 0, name
    assert "added RTT" in proc.stdout
    assert {n for n in _netns() - before if n.startswith("gvp-")} == set()
    # Every process it started is gone (``ip netns exec`` and ``nsenter`` exec the command,
    # so a survivor's argv would be the tail of what was started) ...
    for started in report["processes"]:
        argv = _cmdline(started["pid"])
        assert not argv or argv != started["args"][-len(argv) :], started
    # ... and no peer runs with the script's device names or work directory.
    for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()):
        argv = _cmdline(pid)
        if argv and Path(argv[0]).name in PEER_PROGRAMS:
            assert not any("gvp" in arg for arg in argv), argv


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("nsenter") is None,
    reason="needs root and nsenter",
)
@pytest.mark.timeout(180)
def test_workers_bench_sends_with_one_and_two_threads(tmp_path: Path) -> None:
    before = _netns()
    out = tmp_path / "workers.json"
    proc = subprocess.run(
        [sys.executable, str(BENCHES / "workers.py"), "--rounds=1", "--seconds=1", f"--json={out}"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for workers in ("1", "2"):
        (sample,) = report["samples"][workers]
        assert sample["gbit_s"] > 0, (workers, sample)
        assert sample["written_gbit_s"] > 0, (workers, sample)
    assert "| 2 |" in proc.stdout
    assert {n for n in _netns() - before if n.startswith("gvw-")} == set()
