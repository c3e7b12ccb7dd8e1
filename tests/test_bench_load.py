"""``benches/load.py`` keeps working (the load figures in benches/RESULTS.md come from its
full run; no speed is judged here): its quick variant creates, lists, shows and deletes
networks in a real daemon and restarts it, moves bytes through 20 gate WebSockets at once
and gets each back, converges a 10-node network, runs 3 provider daemons as processes, and
leaves no process behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "load.py"
OPS = ("create", "list", "show", "addNode", "removeNode", "delete")


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.timeout(150)
def test_load_quick(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    nets = report["networks"]
    assert [row["networks"] for row in nets["latency"]] == [0, 5, 25, 50]
    for row in nets["latency"]:
        for op in OPS:
            assert row[op]["n"] >= 5, (row["networks"], op)
            assert 0 < row[op]["p50"] <= row[op]["p99"] <= row[op]["max"]
    assert [row["networks"] for row in nets["rss"]] == list(range(0, 51, 5))
    assert all(row["VmRSS"] > 0 for row in nets["rss"])
    assert nets["createAll"]["n"] == 50
    assert nets["restart"]["networks"] == 50
    assert nets["restart"]["answeredSeconds"] >= nets["restart"]["readySeconds"] > 0

    gates = report["gates"]
    assert len(gates["rounds"]) == 2
    for r in gates["rounds"]:
        assert r["opened"] == r["listedOpen"] == 20
        # Each connection's own bytes came back (checked byte for byte in the bench).
        assert r["bytesEchoed"] == sum(len(f"gate {i} ".encode() * 8) for i in range(20))
        assert r["connect"]["n"] == r["echo"]["n"] == 20
        assert r["fdsOpen"] - r["fdsBefore"] >= 20
        assert r["fdsClosed"] <= r["fdsBefore"] + 2
    assert gates["refused"] == {}

    nodes = report["nodes"]
    assert nodes["members"] == nodes["nodes"] == 10
    assert nodes["pingFirst"]["n"] == 5
    assert nodes["ping"]["n"] == 15
    assert nodes["convergedSeconds"] >= nodes["addAllSeconds"] > 0

    procs = report["procs"]
    assert procs["providers"] == 3
    assert procs["lastProviderReachedBy"] == 2
    assert procs["rssTotalMiB"] > procs["rssProviderMaxMiB"] > 0

    assert "Networks in one daemon" in proc.stdout
    # Every process it started is gone (relays, daemons, the provider daemons).
    # Two daemons (before and after the restart), a relay and a daemon for the gates, a
    # relay, a requestor and 3 providers.
    assert len(report["processes"]) == 2 + 2 + 5
    for started in report["processes"]:
        argv = _cmdline(started["pid"])
        assert not argv or argv != started["args"], started
