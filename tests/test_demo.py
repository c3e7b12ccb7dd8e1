"""The in-process walkthrough (``golem-vpn demo --local``) really routes: its printed story
matches what the routers did. The multi-process demo is tested in ``test_demo_cluster.py``."""

from __future__ import annotations

import io
import subprocess
import sys

from golem_vpn.demo.local import main


def test_demo_routes_and_counts() -> None:
    out = io.StringIO()
    assert main(out) == 0
    text = out.getvalue()
    assert "-> provider-b: payload gets UDP 192.168.0.2:4000 -> 192.168.0.3:5000 b'hello B'" in text
    assert "answered locally -> ARP reply: 192.168.0.2 is at 90:13:c0:a8:00:02" in text
    assert "-> provider-a: payload gets UDP 192.168.0.3:5000 -> 192.168.0.2:4000 b'hello A'" in text
    assert text.count("payload gets UDP 192.168.0.1:9 -> 192.168.0.255:9 b'all'") == 2
    assert "dropped by provider-a's router: spoofed_source" in text
    assert "dropped by provider-a's router: unknown_destination" in text
    assert "dropped by provider-a's router: no_route" in text
    assert "dropped by provider-a's router: truncated" in text
    assert "removed provider-b sends to A: dropped by provider-a's router: unknown_node" in text
    assert '"nodeIp": "192.168.0.3"' in text
    # Nothing runs a TUN device or a VM here: the nodes say they are simulated.
    assert "TUN runtime" not in text
    assert "VM runtime" not in text
    assert "simulated VM guest: Ethernet frames" in text
    # The counters say what in and out mean, and keep the rows of the removed node.
    assert "'in' counts packets\nfrom that node and 'out' packets to it" in text
    counters = text.split("Counters of each router")[1].split("Part 2")[0]
    assert "requestor (self)     in 1 pkts/31 B, out 0 pkts/0 B" in counters
    assert "provider-b (removed) in 0 pkts/0 B, out 1 pkts/31 B" in counters  # the requestor's
    assert "provider-b (removed) in 1 pkts/35 B, out 1 pkts/35 B" in counters  # provider-a's
    # Part 2: real TCP, ICMP and UDP between the nodes' userspace stacks.
    assert (
        "provider-b GET http://192.168.0.2/index.html -> HTTP/1.1 200 OK: "
        "hello from provider-a (192.168.0.2), you asked /index.html" in text
    )
    assert "provider-b ping 192.168.0.2:" in text
    assert "provider-a got UDP b'hello over UDP' from 192.168.0.3:" in text
    assert "SHA-256 match" in text


def test_cli_runs_the_local_demo() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "golem_vpn", "demo", "--local"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "local routing demo" in proc.stdout
