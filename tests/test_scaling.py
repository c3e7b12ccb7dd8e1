"""Scaling fixes found by ``benches/load.py`` (issue 12): the work per operation stays flat as
a daemon holds more peers, networks or gate connections. Each test runs the real code path
(transports on loopback, the Net API over HTTP) and counts the work it does, or checks the
state a fix must keep right; timings belong to the bench (benches/RESULTS.md)."""

from __future__ import annotations

import asyncio

import pytest

from golem_vpn import Identity
from golem_vpn.model import Network, parse_deploy_net
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
