"""Checks of ``golem-vpn demo``'s JSON report, shared by the demo and the wheel tests.

:func:`check_report` asserts every step of a report (what each says it did), and
:func:`check_nothing_left` that none of the demo's processes, namespaces or files survived it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path
from typing import Any

STEPS = [
    "relay",
    "requestor",
    "provider-1",
    "provider-2",
    "provider-3",
    "network",
    "nodes",
    "deploy",
    "payloads",
    "tunnels",
    "fetch-vpn",
    "fetch-gate",
    "ping",
    "transfer",
    "counters",
    "remove",
    "teardown",
]
NAMES = ["requestor", "provider-1", "provider-2", "provider-3"]
NODE_ID = re.compile(r"0x[0-9a-f]{40}")


def check_report(report: dict[str, Any], *, mode: str, size: int) -> None:
    """Every step of a finished demo's report, checked for what it claims."""
    assert [s["step"] for s in report["steps"]] == STEPS
    assert all(s["ok"] for s in report["steps"]), report["steps"]
    assert report["mode"] == mode
    network = ipaddress.ip_network(report["network"]["cidr"])
    assert re.fullmatch(r"[0-9a-f]{32}", report["network"]["id"])

    # Four nodes, each a process of its own with its own identity and address.
    nodes = {n["name"]: n for n in report["nodes"]}
    assert list(nodes) == NAMES
    assert len({n["nodeId"] for n in nodes.values()}) == 4
    assert all(NODE_ID.fullmatch(n["nodeId"]) for n in nodes.values())
    assert len({n["ip"] for n in nodes.values()}) == 4
    assert all(ipaddress.ip_address(n["ip"]) in network for n in nodes.values())
    assert nodes["requestor"]["ip"] == report["network"]["requestorIp"]
    pids = {n["pid"] for n in nodes.values()} | {report["relay"]["pid"]}
    assert len(pids) == 5
    assert os.getpid() not in pids
    assert all(n["api"].startswith("http://127.0.0.1:") for n in nodes.values())
    assert all(n["udp"].startswith("127.0.0.1:") for n in nodes.values())
    for name in NAMES[1:]:
        node = nodes[name]
        assert node["path"] in ("direct", "relayed"), node
        assert node["attachmentKind"] == mode
        assert node["removed"] == (name == "provider-3")
        assert (node["netns"] is not None) == (mode == "tun")
        assert (node["payloadPid"] is not None) == (mode == "tun")
    # The transfer went from provider-1's payload to provider-2's, and the counters saw it.
    assert nodes["provider-1"]["bytesSent"] >= size
    assert nodes["provider-2"]["bytesReceived"] >= size
    assert nodes["requestor"]["bytesReceived"] > 0  # the page through its gate

    # The page, from another provider over the VPN and from the requestor through its gate.
    fetches = {f["via"]: f for f in report["fetches"]}
    assert set(fetches) == {"vpn", "gate"}
    assert fetches["vpn"]["from"] == "provider-2"
    assert fetches["gate"]["from"] == "requestor"
    page = f"hello from provider-1 ({nodes['provider-1']['ip']})"
    for fetch in fetches.values():
        assert fetch["status"] == 200
        assert page in fetch["body"]

    # Every provider pinged every other node, and every echo came back.
    pairs = {(p["from"], p["to"]) for p in report["pings"]}
    assert pairs == {(a, b) for a in NAMES[1:] for b in NAMES if a != b}
    for ping in report["pings"]:
        assert ping["ip"] == nodes[ping["to"]]["ip"]
        assert len(ping["rttMs"]) == 3
        assert all(isinstance(r, float) and 0 < r < 5000 for r in ping["rttMs"]), ping

    transfer = report["transfer"]
    assert transfer["bytes"] == size
    assert transfer["match"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", transfer["sha256Sent"])
    assert transfer["sha256Received"] == transfer["sha256Sent"]
    assert transfer["seconds"] > 0
    assert transfer["mbitPerSecond"] > 0

    removal = report["removal"]
    assert removal["node"] == "provider-3"
    assert removal["ip"] == nodes["provider-3"]["ip"]
    assert len(removal["checks"]) == 3
    assert all(c["unreachable"] and c["echoes"] == [None, None] for c in removal["checks"])

    teardown = report["teardown"]
    assert teardown["processesLeft"] == []
    assert teardown["namespacesLeft"] == []
    assert teardown["killed"] == []
    assert teardown["workDirRemoved"] is True
    started = {p["pid"] for p in teardown["processes"]}
    assert pids <= started
    assert len(started) == (8 if mode == "tun" else 5)


def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def check_nothing_left(report: dict[str, Any]) -> None:
    """None of the demo's processes runs, no process uses its work dir, no namespace of its
    remains, and the work dir is gone."""
    work = report["workDir"].encode()
    for proc in report["teardown"]["processes"]:
        cmdline = _cmdline(proc["pid"])
        # A reused PID is someone else's: then it is not running the demo's programs.
        assert cmdline is None or b"golem_vpn" not in cmdline, proc
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            cmdline = _cmdline(int(entry.name))
            assert cmdline is None or work not in cmdline, cmdline
    assert not Path(report["workDir"]).exists()
    for node in report["nodes"]:
        if node["netns"] is not None:
            assert node["netns"] not in netns_names()


def netns_names() -> set[str]:
    """The named network namespaces on this machine (none if iproute2 is missing)."""
    try:
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except FileNotFoundError:
        return set()
    return {line.split()[0] for line in out.splitlines() if line.strip()}
