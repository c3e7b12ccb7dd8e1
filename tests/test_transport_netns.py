"""The node transport across real kernel links: nodes in separate network namespaces.

Each node is its own process (``tests/netns_node.py``) started with ``ip netns exec`` and
bound to an underlay address of its namespace, so every tunnel datagram crosses a veth
pair (and, in the NAT tests, two forwarding router namespaces). Underlay links use only
198.18.0.0/15 (RFC 2544 benchmarking space); the VPN's 192.168.50.0/24 exists only inside
the nodes' userspace stacks. Every namespace is named ``gvpn-*-<pid>`` and deleted by
name when the test ends, pass or fail; node processes are ended by their PIDs.

Needs root and ``ip netns``; skips otherwise. The masquerade test also needs ``nft``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from golem_vpn import Identity

NODE_SCRIPT = Path(__file__).with_name("netns_node.py")
PID = os.getpid()
NET = "ba5e" * 8
CIDR = "192.168.50.0/24"
REQ_IP, PROV_IP = "192.168.50.2", "192.168.50.3"
UDP_PORT = 40000  # each node has its namespace's port space to itself

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="network namespaces are Linux-only"),
    pytest.mark.skipif(
        not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root (ip netns)"
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 `ip` is not installed"),
]


def _payload(seed: int, size: int) -> bytes:
    from netns_node import payload  # the requestor's own generator

    return payload(seed, size)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=check)


class Underlay:
    """The namespaces (and so the veths inside them) one test made; removed by name."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []

    def netns(self, name: str) -> str:
        made = _ip("netns", "add", name, check=False)
        if made.returncode != 0:
            if not self.namespaces:
                pytest.skip(f"`ip netns add` failed: {made.stderr.strip()}")
            raise RuntimeError(f"ip netns add {name}: {made.stderr.strip()}")
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def veth(self, a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
        """A veth pair created straight into two namespaces, addressed and up; each end
        is ``(namespace, device, address/prefix)``."""
        (ns_a, dev_a, cidr_a), (ns_b, dev_b, cidr_b) = a, b
        peer = ["peer", "name", dev_b, "netns", ns_b]
        _ip("link", "add", dev_a, "netns", ns_a, "type", "veth", *peer)
        for ns, dev, cidr in ((ns_a, dev_a, cidr_a), (ns_b, dev_b, cidr_b)):
            _ip("-n", ns, "addr", "add", cidr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")

    def run(self, ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *cmd],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            # Whatever still runs inside is one of this test's node processes.
            listed = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in listed:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        self.namespaces.clear()


@pytest.fixture
def underlay() -> Iterator[Underlay]:
    net = Underlay()
    try:
        yield net
    finally:
        net.close()


def link_stats(ns: str, dev: str) -> dict[str, int]:
    """The kernel's counters of ``dev`` in ``ns``."""
    out = _ip("-j", "-s", "-n", ns, "link", "show", "dev", dev).stdout
    s = json.loads(out)[0]["stats64"]
    return {
        "rx_bytes": s["rx"]["bytes"],
        "rx_packets": s["rx"]["packets"],
        "tx_bytes": s["tx"]["bytes"],
        "tx_packets": s["tx"]["packets"],
    }


class Node:
    """A ``netns_node.py`` process in a namespace; its JSON lines are kept in ``events``."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, ns: str, role: str, stderr: Path, **options: object) -> Node:
        argv = ["ip", "netns", "exec", ns, sys.executable, str(NODE_SCRIPT), role]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err
            )
        return cls(proc, stderr)

    def diagnostics(self) -> str:
        err = self.stderr.read_text(errors="replace")[-3000:] if self.stderr.exists() else ""
        return f"events={self.events} stderr={err}"

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """Reads lines until one with this event (an ``error`` line fails the test)."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while line := await self.proc.stdout.readline():
                    item = json.loads(line)
                    self.events.append(item)
                    if item["event"] == "error":
                        pytest.fail(f"node failed: {self.diagnostics()}")
                    if item["event"] == event:
                        return item
        except TimeoutError:
            pytest.fail(f"no {event!r} within {timeout:g} s: {self.diagnostics()}")
        pytest.fail(f"node exited before {event!r}: {self.diagnostics()}")

    def terminate(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    async def kill(self) -> None:
        """Ends the process by its PID (idempotent) and reaps it."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)


def _common(identity: Identity, peer: Identity) -> dict[str, object]:
    return {
        "secret": identity.secret_bytes().hex(),
        "net": NET,
        "cidr": CIDR,
        "peer_id": peer.node_id,
    }


def _check_echo(result: dict[str, Any], provider: Node, size: int, seed: int) -> None:
    """The requestor's echo, UDP round trip and ping, and the provider's own view."""
    expected = hashlib.sha256(_payload(seed, size)).hexdigest()
    assert result["sent"] == size
    assert result["echoed"] == size, result
    assert result["echo_sha256"] == expected
    tcp = [e for e in provider.events if e["event"] == "tcp"]
    assert tcp, provider.diagnostics()
    assert tcp[0]["received"] == size
    assert tcp[0]["sha256"] == expected
    assert result["udp"] is not None, "no UDP echo through the tunnel"
    assert result["udp"]["data"] == result["udp"]["sent"]
    assert tuple(result["udp"]["from"]) == (PROV_IP, 5353)
    assert result["ping_rtt"] > 0
    assert result["up"] is True


def test_two_namespaces_over_a_veth(underlay: Underlay, tmp_path: Path) -> None:
    ns_a, ns_b = underlay.netns(f"gvpn-a-{PID}"), underlay.netns(f"gvpn-b-{PID}")
    veth_a, veth_b = f"gva-{PID}", f"gvb-{PID}"
    underlay.veth((ns_a, veth_a, "198.18.0.1/30"), (ns_b, veth_b, "198.18.0.2/30"))
    requestor_id, provider_id = Identity.generate(), Identity.generate()
    size, seed = 4 << 20, 4242

    async def main() -> None:
        before = link_stats(ns_a, veth_a)
        provider = await Node.start(
            ns_b,
            "provider",
            tmp_path / "provider.err",
            **_common(provider_id, requestor_id),
            bind="198.18.0.2",
            port=UDP_PORT,
            ip=PROV_IP,
            peer_ip=REQ_IP,
            peer_addr=f"198.18.0.1:{UDP_PORT}",
        )
        requestor: Node | None = None
        try:
            ready = await provider.expect("ready", 20)
            assert ready["node_id"] == provider_id.node_id
            assert ready["local_addr"] == ["198.18.0.2", UDP_PORT]
            requestor = await Node.start(
                ns_a,
                "requestor",
                tmp_path / "requestor.err",
                **_common(requestor_id, provider_id),
                bind="198.18.0.1",
                port=UDP_PORT,
                ip=REQ_IP,
                peer_ip=PROV_IP,
                peer_addr=f"198.18.0.2:{UDP_PORT}",
                tcp_bytes=size,
                seed=seed,
            )
            result = await requestor.expect("result", 60)
            provider.terminate()
            provider_stats = (await provider.expect("stats", 10))["stats"]
        finally:
            for node in (requestor, provider):
                if node is not None:
                    await node.kill()
        after = link_stats(ns_a, veth_a)

        _check_echo(result, provider, size, seed)
        ups = [e for e in provider.events if e["event"] == "peer" and e["kind"] == "up"]
        assert ups
        assert ups[0]["node"] == requestor_id.node_id
        assert ups[0]["detail"] == f"198.18.0.1:{UDP_PORT}"

        # It crossed the underlay: every datagram the requestor's transport sent or got
        # went through its veth, and the veth carried at least the payload both ways.
        stats = result["stats"]
        min_packets = size // 1400
        assert stats["datagrams_out"] >= min_packets, stats
        assert stats["datagrams_in"] >= min_packets, stats
        assert stats["tunnel"]["bytes_out"] >= size
        assert stats["tunnel"]["bytes_in"] >= size
        assert stats["tunnel"]["handshakes_completed"] >= 1
        assert provider_stats["datagrams_in"] >= min_packets, provider_stats
        delta = {k: after[k] - before[k] for k in after}
        assert delta["tx_bytes"] >= size, delta
        assert delta["rx_bytes"] >= size, delta
        assert delta["tx_packets"] >= stats["datagrams_out"], (delta, stats)
        assert delta["rx_packets"] >= stats["datagrams_in"], (delta, stats)

    asyncio.run(main())


NFT_REQUESTOR_ROUTER = """
table ip gvpn_nat {{
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{pub}" masquerade
    }}
}}
"""

NFT_PROVIDER_ROUTER = """
table ip gvpn_nat {{
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        iifname "{pub}" udp dport {port} dnat to {provider}:{port}
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{pub}" masquerade
    }}
}}
"""


@pytest.mark.parametrize("mode", ["routed", "masquerade"])
def test_provider_learns_the_requestors_address_across_routers(
    underlay: Underlay, tmp_path: Path, mode: str
) -> None:
    """Each node sits behind its own router namespace; the provider is told only the
    requestor's node id, never an address, and must answer wherever the requestor's
    first authenticated message came from.

    ``routed``: the routers only forward, so the provider sees the requestor's own
    address. ``masquerade``: both routers masquerade (nftables) and the provider's router
    forwards its UDP port (dnat): the requestor dials the provider's *public* address and
    the provider sees the requestor's router's address.

    Underlay plan (all in 198.18.0.0/15)::

        requestor 198.18.1.2/30 -- 198.18.1.1/30 router A 198.18.0.1/24
            -- "internet" -- 198.18.0.2/24 router B 198.18.2.1/30 -- 198.18.2.2/30 provider
    """
    nat = mode == "masquerade"
    if nat and shutil.which("nft") is None:
        pytest.skip("nftables CLI `nft` is not installed here: cannot set up masquerade/dnat")
    ns_req = underlay.netns(f"gvpn-na-{PID}")
    ns_ra = underlay.netns(f"gvpn-ra-{PID}")
    ns_rb = underlay.netns(f"gvpn-rb-{PID}")
    ns_prov = underlay.netns(f"gvpn-nb-{PID}")
    ra_pub, rb_pub = f"gra-{PID}", f"grb-{PID}"
    underlay.veth((ns_req, f"gna-{PID}", "198.18.1.2/30"), (ns_ra, f"gla-{PID}", "198.18.1.1/30"))
    underlay.veth((ns_ra, ra_pub, "198.18.0.1/24"), (ns_rb, rb_pub, "198.18.0.2/24"))
    underlay.veth((ns_rb, f"glb-{PID}", "198.18.2.1/30"), (ns_prov, f"gnb-{PID}", "198.18.2.2/30"))
    for router in (ns_ra, ns_rb):
        done = underlay.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        assert done.returncode == 0, done.stderr
    _ip("-n", ns_req, "route", "add", "198.18.0.0/15", "via", "198.18.1.1")
    _ip("-n", ns_prov, "route", "add", "198.18.0.0/15", "via", "198.18.2.1")
    if nat:
        # The private sides stay unroutable from the "internet": only NAT connects them.
        rules = {
            ns_ra: NFT_REQUESTOR_ROUTER.format(pub=ra_pub),
            ns_rb: NFT_PROVIDER_ROUTER.format(pub=rb_pub, port=UDP_PORT, provider="198.18.2.2"),
        }
        for router, ruleset in rules.items():
            path = tmp_path / f"{router}.nft"
            path.write_text(ruleset)
            loaded = underlay.run(router, "nft", "-f", str(path))
            if loaded.returncode != 0:
                pytest.skip(f"nft cannot load a NAT ruleset here: {loaded.stderr.strip()}")
        provider_public, requestor_seen = "198.18.0.2", "198.18.0.1"
    else:
        _ip("-n", ns_ra, "route", "add", "198.18.2.0/30", "via", "198.18.0.2")
        _ip("-n", ns_rb, "route", "add", "198.18.1.0/30", "via", "198.18.0.1")
        provider_public, requestor_seen = "198.18.2.2", "198.18.1.2"

    requestor_id, provider_id = Identity.generate(), Identity.generate()
    size, seed = 512 << 10, 77

    async def main() -> None:
        provider = await Node.start(
            ns_prov,
            "provider",
            tmp_path / "provider.err",
            **_common(provider_id, requestor_id),
            bind="198.18.2.2",
            port=UDP_PORT,
            ip=PROV_IP,
            peer_ip=REQ_IP,
        )
        requestor: Node | None = None
        try:
            await provider.expect("ready", 20)
            requestor = await Node.start(
                ns_req,
                "requestor",
                tmp_path / "requestor.err",
                **_common(requestor_id, provider_id),
                bind="198.18.1.2",
                port=UDP_PORT,
                ip=REQ_IP,
                peer_ip=PROV_IP,
                peer_addr=f"{provider_public}:{UDP_PORT}",
                tcp_bytes=size,
                seed=seed,
            )
            result = await requestor.expect("result", 45)
            provider.terminate()
            await provider.expect("stats", 10)
        finally:
            for node in (requestor, provider):
                if node is not None:
                    await node.kill()

        _check_echo(result, provider, size, seed)
        ups = [e for e in provider.events if e["event"] == "peer" and e["kind"] == "up"]
        assert ups, provider.diagnostics()
        assert ups[0]["node"] == requestor_id.node_id
        seen_host = ups[0]["detail"].rpartition(":")[0]
        assert seen_host == requestor_seen, ups

    asyncio.run(main())
