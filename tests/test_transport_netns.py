"""The node transport across real kernel links: nodes in separate network namespaces.

Each node is its own process (``tests/netns_node.py``) started with ``ip netns exec`` and
bound to an underlay address of its namespace, so every tunnel datagram crosses a veth
pair (and, in the NAT tests, two forwarding router namespaces). Underlay links use only
198.18.0.0/15 (RFC 2544 benchmarking space); the VPN's 192.168.50.0/24 exists only inside
the nodes' userspace stacks. Every namespace is named ``gvpn-*-<pid>`` and deleted by
name when the test ends, pass or fail; node processes are ended by their PIDs.

The relay tests put two nodes behind masquerading routers with a relay
(``python -m golem_vpn relay``) between them.

Needs root and ``ip netns``; skips otherwise. The masquerade tests also need ``nft``.
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

    async def drain(self, timeout: float) -> None:
        """Reads the remaining lines into ``events`` until the process exits or time runs out."""
        assert self.proc.stdout is not None
        with contextlib.suppress(TimeoutError, ValueError):
            async with asyncio.timeout(timeout):
                while line := await self.proc.stdout.readline():
                    self.events.append(json.loads(line))

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
            try:
                result = await requestor.expect("result", 60)
            except pytest.fail.Exception as exc:
                # The provider's side of a stall (its "slow" event and final stats).
                provider.terminate()
                await provider.drain(10)
                pytest.fail(f"{exc}\nprovider: {provider.diagnostics()}")
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
        # With UDP GSO a veth "packet" may carry many datagrams: count bytes, not packets.
        overhead = 28 * stats["datagrams_out"]  # IPv4 + UDP headers of every datagram
        assert delta["tx_bytes"] >= size + overhead, (delta, stats)
        assert delta["tx_packets"] >= 1

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


RELAY_HOST, RELAY_PORT = "198.18.0.10", 7464

# A home router: masquerade out of the public side, and a stateful firewall that drops
# whatever arrives there unasked. The drop matters for hole punching: without it a probe
# that reaches a router before the node behind it has sent its own leaves a conntrack
# entry for the router itself (198.18.0.x:port -> router:port), masquerade then has to
# pick another source port for the node's probe to the same peer, and the peer's router
# drops what comes from that port. A dropped packet is never confirmed by conntrack.
# ``{random}``: "random" makes the mapping endpoint-dependent (a new random port per
# destination, like a symmetric NAT); empty keeps the source port when it is free.
NFT_HOME_ROUTER = """
table ip gvpn_nat {{
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{pub}" masquerade {random}
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{pub}" ct state established,related accept
        iifname "{pub}" drop
    }}
    chain forward {{
        type filter hook forward priority 0; policy accept;
        iifname "{pub}" ct state established,related accept
        iifname "{pub}" drop
    }}
}}
"""


class Relay:
    """``python -m golem_vpn relay`` in a namespace."""

    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr

    @classmethod
    async def start(cls, ns: str, listen: str, stderr: Path) -> Relay:
        argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "golem_vpn", "relay"]
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                "--listen",
                listen,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        return cls(proc, stderr)

    async def listening(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if line:
                return line.decode().strip()
        pytest.fail(f"relay did not start: {self.stderr.read_text(errors='replace')[-3000:]}")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 10)


@pytest.mark.parametrize("mode", ["relayed", "punched", "symmetric"])
def test_nodes_behind_masquerade_meet_through_the_relay(
    underlay: Underlay, tmp_path: Path, mode: str
) -> None:
    """Two nodes, each behind its own masquerading router (nftables, no port forwarding,
    unasked inbound dropped), know only each other's node id and VPN address; a relay on
    the "internet" is the one address both can reach, and there is no route between the
    private sides.

    ``relayed`` (hole punching off): the 1 MiB echo, UDP round trip and ping all go
    through the relay; the relay reports each node's public address as its router's.
    ``punched`` (hole punching on, masquerade keeping the source port): the nodes learn
    each other's public address from the relay, their probes open both NATs and they move
    to a direct path before the echo, which then never touches the relay.
    ``symmetric`` (hole punching on, ``masquerade random``: a new port per destination):
    the probes cannot get through, and everything still flows through the relay.

    Underlay plan (all in 198.18.0.0/15; the "internet" is a bridge in its own namespace,
    which also holds the relay's address)::

        node A 198.18.1.2/30 -- 198.18.1.1/30 NAT A 198.18.0.1/24 --+
                                                                    bridge, relay 198.18.0.10/24
        node B 198.18.2.2/30 -- 198.18.2.1/30 NAT B 198.18.0.2/24 --+
    """
    if shutil.which("nft") is None:
        pytest.skip("nftables CLI `nft` is not installed here: cannot set up masquerade")
    punching = mode != "relayed"
    nat = "symmetric" if mode == "symmetric" else "cone"
    ns_inet = underlay.netns(f"gvpn-inet-{PID}")
    ns_nat_a = underlay.netns(f"gvpn-nata-{PID}")
    ns_nat_b = underlay.netns(f"gvpn-natb-{PID}")
    ns_a = underlay.netns(f"gvpn-hosta-{PID}")
    ns_b = underlay.netns(f"gvpn-hostb-{PID}")
    bridge = f"gbr-{PID}"
    _ip("-n", ns_inet, "link", "add", bridge, "type", "bridge")
    _ip("-n", ns_inet, "addr", "add", f"{RELAY_HOST}/24", "dev", bridge)
    _ip("-n", ns_inet, "link", "set", bridge, "up")
    for router, pub, port, public in (
        (ns_nat_a, f"gpa-{PID}", f"gxa-{PID}", "198.18.0.1/24"),
        (ns_nat_b, f"gpb-{PID}", f"gxb-{PID}", "198.18.0.2/24"),
    ):
        peer = ["peer", "name", port, "netns", ns_inet]
        _ip("link", "add", pub, "netns", router, "type", "veth", *peer)
        _ip("-n", router, "addr", "add", public, "dev", pub)
        _ip("-n", router, "link", "set", pub, "up")
        _ip("-n", ns_inet, "link", "set", port, "master", bridge)
        _ip("-n", ns_inet, "link", "set", port, "up")
        done = underlay.run(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        assert done.returncode == 0, done.stderr
        ruleset = tmp_path / f"{router}.nft"
        random = "random" if nat == "symmetric" else ""
        ruleset.write_text(NFT_HOME_ROUTER.format(pub=pub, random=random))
        loaded = underlay.run(router, "nft", "-f", str(ruleset))
        if loaded.returncode != 0:
            pytest.skip(f"nft cannot load a NAT ruleset here: {loaded.stderr.strip()}")
    underlay.veth((ns_a, f"gha-{PID}", "198.18.1.2/30"), (ns_nat_a, f"gla-{PID}", "198.18.1.1/30"))
    underlay.veth((ns_b, f"ghb-{PID}", "198.18.2.2/30"), (ns_nat_b, f"glb-{PID}", "198.18.2.1/30"))
    _ip("-n", ns_a, "route", "add", "198.18.0.0/15", "via", "198.18.1.1")
    _ip("-n", ns_b, "route", "add", "198.18.0.0/15", "via", "198.18.2.1")
    # Neither private side is routed anywhere outside its own router.
    for ns, private in ((ns_inet, "198.18.1.2"), (ns_inet, "198.18.2.2"), (ns_nat_a, "198.18.2.2")):
        assert _ip("-n", ns, "route", "get", private, check=False).returncode != 0, (ns, private)
    assert _ip("-n", ns_nat_b, "route", "get", "198.18.1.2", check=False).returncode != 0

    requestor_id, provider_id = Identity.generate(), Identity.generate()
    size, seed = 1 << 20, 2024
    relay_addr = f"{RELAY_HOST}:{RELAY_PORT}"
    common = {"relay": relay_addr, "hole_punching": "on" if punching else "off", "port": UDP_PORT}

    async def main() -> tuple[dict[str, Any], ...]:
        relay = await Relay.start(ns_inet, relay_addr, tmp_path / "relay.err")
        provider: Node | None = None
        requestor: Node | None = None
        try:
            assert await relay.listening(20) == f"relay listening on {relay_addr}"
            provider = await Node.start(
                ns_b,
                "provider",
                tmp_path / "provider.err",
                **_common(provider_id, requestor_id),
                **common,
                bind="198.18.2.2",
                ip=PROV_IP,
                peer_ip=REQ_IP,
            )
            prov_ready = await provider.expect("ready", 20)
            requestor = await Node.start(
                ns_a,
                "requestor",
                tmp_path / "requestor.err",
                **_common(requestor_id, provider_id),
                **common,
                bind="198.18.1.2",
                ip=REQ_IP,
                peer_ip=PROV_IP,
                tcp_bytes=size,
                seed=seed,
                timeout=15,
                # A punch is 8 probes 0.2 s apart; both nodes start one at once.
                wait_direct=3 if punching else 0,
            )
            req_ready = await requestor.expect("ready", 20)
            result = await requestor.expect("result", 25)
            provider.terminate()
            prov_end = await provider.expect("stats", 10)
        finally:
            for proc in (requestor, provider, relay):
                if proc is not None:
                    await proc.kill()
        _check_echo(result, provider, size, seed)
        return prov_ready, req_ready, result, prov_end

    prov_ready, req_ready, result, prov_end = asyncio.run(main())

    # Behind NAT: the relay sees each node at its router's public address.
    assert prov_ready["local_addr"] == ["198.18.2.2", UDP_PORT]
    assert req_ready["local_addr"] == ["198.18.1.2", UDP_PORT]
    prov_public, req_public = prov_ready["public_addr"], req_ready["public_addr"]
    assert prov_public is not None, prov_ready
    assert prov_public[0] == "198.18.0.2", prov_ready
    assert req_public is not None, req_ready
    assert req_public[0] == "198.18.0.1", req_ready
    if nat == "cone":  # masquerade keeps the port when it is free
        assert prov_public[1] == req_public[1] == UDP_PORT

    stats, prov_stats = result["stats"], prov_end["stats"]
    before = result["before"]["stats"]
    min_packets = size // 1400
    both = (stats, prov_stats)
    if mode == "punched":
        # Direct before the echo started, and the echo never touched the relay.
        assert result["before"]["relayed"] is False, result["before"]
        assert result["relayed"] is False, result
        assert prov_end["relayed"] is False, prov_end
        # One probe ack is enough: the other side follows the authenticated traffic.
        assert stats["punched"] + prov_stats["punched"] >= 1, both
        assert result["peer_address"] == prov_public, result
        assert prov_end["peer_address"] == req_public, prov_end
        assert stats["relayed_out"] == before["relayed_out"], (before, stats)
        assert stats["relayed_in"] == before["relayed_in"], (before, stats)
        assert stats["datagrams_out"] - before["datagrams_out"] >= min_packets, stats
        assert stats["datagrams_in"] - before["datagrams_in"] >= min_packets, stats
        return
    # Relayed: the whole echo went through the relay, both ways, on both nodes.
    assert result["relayed"] is True, result
    assert prov_end["relayed"] is True, prov_end
    assert stats["punched"] == prov_stats["punched"] == 0, both
    assert stats["relayed_out"] - before["relayed_out"] >= min_packets, (before, stats)
    assert stats["relayed_in"] - before["relayed_in"] >= min_packets, (before, stats)
    assert prov_stats["relayed_out"] >= min_packets, prov_stats
    assert prov_stats["relayed_in"] >= min_packets, prov_stats
    if punching:  # tried, and fell back
        assert stats["probes_sent"] >= 1, both
        assert prov_stats["probes_sent"] >= 1, both
    else:
        assert stats["probes_sent"] == prov_stats["probes_sent"] == 0, both
