"""Scaling fixes found by ``benches/load.py`` (issue 12): the work per operation stays flat as
a daemon holds more peers, networks or gate connections. Each test runs the real code path
(transports on loopback, the Net API over HTTP) and counts the work it does, or checks the
state a fix must keep right; timings belong to the bench (benches/RESULTS.md)."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from golem_vpn import Identity
from golem_vpn.model import Network, parse_deploy_net
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.backend import LocalBackend
from golem_vpn.netapi.server import Limits, serve
from golem_vpn.netapi.store import Store
from golem_vpn.node.control import AddNodes, ControlChannel
from golem_vpn.node.membership import ControlPlane, Coordinator, Member
from golem_vpn.node.relay import RelayService
from golem_vpn.node.transport import UdpTransport


async def _wait(cond: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_control_send_is_flat_in_the_number_of_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A control message costs the same with 300 peers as with one (the timer was re-armed by
    scanning every channel on each send: adding the n-th node to a network, which sends to
    n - 1 peers, was O(n²)); the retransmission timer still covers every channel: messages
    to 300 unreachable peers stay pending and a provider added after them gets its own."""
    calls = 0
    poll_at = ControlChannel.poll_at

    def counted(self: ControlChannel) -> float | None:
        nonlocal calls
        calls += 1
        return poll_at(self)

    monkeypatch.setattr(ControlChannel, "poll_at", counted)

    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            requestor = UdpTransport(Identity.generate(), relay=relay.local_addr)
            provider = UdpTransport(Identity.generate(), relay=relay.local_addr)
            planes = [ControlPlane(requestor), ControlPlane(provider)]
            coordinator = Coordinator(requestor, planes[0])
            member = Member(provider, planes[1])
            network = Network.create("192.168.40.0/22", requestor_id=requestor.node_id)
            coordinator.create(network.id, str(network.network), str(network.requestor_ip))
            # 300 nodes that never answer: each has a channel with an unacked message.
            for _ in range(300):
                node = network.add_node(Identity.generate().node_id)
                coordinator.add_node(network.id, node.id, str(node.ip))
            before = calls
            message = AddNodes(network.id, {"192.168.43.250": "0x" + "ee" * 20})
            planes[0].send(node.id, message)
            assert calls - before <= 2, "one send looked at more than its own channel"
            channels = planes[0]._channels.values()
            pending = [at for c in channels if (at := poll_at(c)) is not None]
            assert len(pending) == 300
            assert planes[0]._timer_at is not None
            assert planes[0]._timer_at <= min(pending)

            # A real provider added now: it learns all 301 others, exactly.
            node = network.add_node(provider.node_id)
            coordinator.add_node(network.id, provider.node_id, str(node.ip))
            (net,) = parse_deploy_net(network.deploy_args(provider.node_id))
            member.join(net, requestor.node_id, requestor.local_addr)
            await _wait(lambda: member.nodes(network.id) == network.nodes_dict())
            assert len(member.nodes(network.id)) == 302
            for plane in planes:
                plane.close()
            requestor.close()
            provider.close()

    asyncio.run(main())


def test_network_bound_and_listing_survive_a_restart(tmp_path: Path) -> None:
    """The per-identity network count the bound checks is kept as networks come and go (not
    recounted over every network on each create: O(n) per create) and comes back with a
    restart; lists and shows are each network's JSON made once, the same bytes as before."""
    owner, other = "0x" + "a1" * 20, "0x" + "b2" * 20

    async def main() -> None:
        store = Store(tmp_path / "netapi.db")
        keys = AppKeys(store)
        key_a, key_b = keys.create("a", owner), keys.create("b", other)
        try:
            for restart in range(2):
                backend = LocalBackend(owner)
                runner = await serve(backend, store, "127.0.0.1", 0, limits=Limits(networks=4))
                host, port = runner.addresses[0][:2]
                base = f"http://{host}:{port}/net-api/v1/net"
                try:
                    async with aiohttp.ClientSession() as http:

                        async def call(method: str, url: str, key: str, body: Any = None) -> Any:
                            headers = {"Authorization": f"Bearer {key}"}
                            async with http.request(method, url, json=body, headers=headers) as r:
                                return r.status, await r.read()

                        if restart == 0:
                            for i in range(4):
                                status, _ = await call(
                                    "POST", base, key_a, {"ip": f"10.9.{i}.0/24"}
                                )
                                assert status == 200
                        status, _ = await call("POST", base, key_a, {"ip": "10.9.9.0/24"})
                        assert status == 429
                        status, body = await call("GET", base, key_a)
                        listed = json.loads(body)
                        assert [n["ip"] for n in listed] == [f"10.9.{i}.0/24" for i in range(4)]
                        for net in listed:
                            status, one = await call("GET", f"{base}/{net['id']}", key_a)
                            assert (status, json.loads(one)) == (200, net)
                            assert one in body
                        # Another identity holds none: 404 for A's network, then 403 once
                        # it holds one of its own.
                        first = listed[0]["id"]
                        assert (await call("GET", f"{base}/{first}", key_b))[0] == 404
                        assert (await call("GET", base, key_b)) == (200, b"[]")
                        status, _ = await call("POST", base, key_b, {"ip": "10.8.0.0/24"})
                        assert status == 200
                        assert (await call("GET", f"{base}/{first}", key_b))[0] == 403
                        _, mine = await call("GET", base, key_b)
                        (theirs,) = json.loads(mine)
                        assert (await call("DELETE", f"{base}/{theirs['id']}", key_b))[0] == 200
                        assert (await call("GET", f"{base}/{first}", key_b))[0] == 404
                        if restart == 1:  # a removed network frees its place
                            assert (await call("DELETE", f"{base}/{first}", key_a))[0] == 200
                            status, _ = await call("POST", base, key_a, {"ip": "10.9.9.0/24"})
                            assert status == 200
                            status, _ = await call("POST", base, key_a, {"ip": "10.9.8.0/24"})
                            assert status == 429
                finally:
                    await runner.cleanup()
                    await backend.close()
        finally:
            store.close()

    asyncio.run(main())


# Opens 200 TCP connections between two in-memory stacks, echoes a few bytes on each and
# closes them, three times; prints the process's RSS (MiB) with them open and after closing.
_CHURN = """
import asyncio, sys
from pathlib import Path
from golem_vpn.local import LocalNetwork
from golem_vpn.node.daemon import pin_mmap_threshold

def rss():
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024

async def echo(reader, writer):
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    if sys.argv[1] == "pinned":
        assert pin_mmap_threshold()
    out = []
    async with LocalNetwork("192.168.50.0/24") as net:
        a, b = net.add_node(), net.add_node()
        server = await b.start_server(echo, 7, backlog=256)
        for _ in range(3):
            conns = []
            for i in range(200):
                reader, writer = await a.open_connection(b.ip, 7)
                writer.write(b"%d" % i)
                assert await reader.readexactly(len(b"%d" % i)) == b"%d" % i
                conns.append(writer)
            out.append(rss())
            for writer in conns:
                writer.close()
            await asyncio.sleep(0.3)
            out.append(rss())
        server.close()
    print(out)

asyncio.run(main())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_closed_connections_give_their_buffers_back() -> None:
    """Each TCP connection of a userspace stack has 1 MiB of zeroed buffers, mostly never
    written. With the mmap threshold the daemon pins (:func:`pin_mmap_threshold`) connections
    opened and closed again and again leave the process's memory flat; without it glibc
    serves the buffers from its heap once the first ones are freed, zeroing (touching) every
    page, and keeps them after the close: hundreds of MiB for a few hundred connections."""

    def churn(mode: str) -> list[float]:
        proc = subprocess.run(
            [sys.executable, "-c", _CHURN, mode],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return [float(x) for x in proc.stdout.strip().strip("[]").split(",")]

    pinned, default = churn("pinned"), churn("default")
    # 400 sockets open at once (both ends), three times: the pinned process stays within a
    # few MiB of its first round, with the connections open and after they closed.
    assert max(pinned) - pinned[0] < 40, pinned
    # The same churn without the pin: the second and third rounds touch the buffers' pages.
    assert default[-1] - pinned[-1] > 150, (default, pinned)


def test_channels_go_with_the_networks() -> None:
    """The requestor keeps a control channel only to peers it still shares a network with:
    removing a network (the way an SDK ends a run: the nodes are never removed one by one)
    drops its nodes' channels, after their RemoveNetwork was sent. Before, every provider a
    daemon ever had kept its channel, resending a RemoveNetwork the transport no longer
    let out, forever (and removing a node looked through every network)."""

    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            requestor = UdpTransport(Identity.generate(), relay=relay.local_addr)
            provider = UdpTransport(Identity.generate(), relay=relay.local_addr)
            planes = [ControlPlane(requestor), ControlPlane(provider)]
            coordinator = Coordinator(requestor, planes[0])
            member = Member(provider, planes[1])
            networks = []
            for i in range(10):
                network = Network.create(f"192.168.{60 + i}.0/24", requestor_id=requestor.node_id)
                coordinator.create(network.id, str(network.network), str(network.requestor_ip))
                node = network.add_node(provider.node_id)
                coordinator.add_node(network.id, provider.node_id, str(node.ip))
                (net,) = parse_deploy_net(network.deploy_args(provider.node_id))
                member.join(net, requestor.node_id, requestor.local_addr)
                networks.append(network)
            for network in networks:
                await _wait(lambda n=network: member.nodes(n.id) == n.nodes_dict())
            channels = planes[0]._channels
            # Removed from one network, the provider is still in nine: its channel stays.
            coordinator.remove_node(networks[0].id, provider.node_id)
            await _wait(lambda: not provider.is_joined(networks[0].id))
            assert provider.node_id in channels
            for network in networks[1:]:
                coordinator.remove_network(network.id)
            # The channel went with the last network; each RemoveNetwork arrived all the same
            # (the provider left every network).
            assert provider.node_id not in channels
            assert coordinator._peer_networks == {}
            await _wait(lambda: not any(provider.is_joined(n.id) for n in networks))

            # A node that never answers: nothing is left resending to it either.
            network = Network.create("192.168.70.0/24", requestor_id=requestor.node_id)
            coordinator.create(network.id, str(network.network), str(network.requestor_ip))
            silent = network.add_node(Identity.generate().node_id)
            coordinator.add_node(network.id, silent.id, str(silent.ip))
            assert silent.id in channels  # its Snapshot, unacknowledged
            coordinator.remove_network(network.id)
            assert channels == {}
            for plane in planes:
                plane.close()
            requestor.close()
            provider.close()

    asyncio.run(main())
