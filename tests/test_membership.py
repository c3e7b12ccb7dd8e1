"""Membership over the wire: the requestor adds and removes nodes, providers follow.

Three daemons-in-miniature (requestor, providers A and B) on loopback UDP with a relay: the
providers only ever learn each other's node ids from the requestor's control messages, the
relay finds them, and their payloads then talk over TCP.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import golem_vpn
from golem_vpn import Identity
from golem_vpn.model import Network, parse_deploy_net
from golem_vpn.node.control import AddNodes
from golem_vpn.node.membership import ControlPlane, Coordinator, Member
from golem_vpn.node.relay import RelayService
from golem_vpn.node.transport import UdpTransport


async def _wait(cond: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_providers_learn_each_other_and_removal_cuts_off() -> None:
    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            links = [UdpTransport(Identity.generate(), relay=relay.local_addr) for _ in range(3)]
            requestor, prov_a, prov_b = links
            planes = [ControlPlane(link) for link in links]
            coordinator = Coordinator(requestor, planes[0])
            members = [Member(prov_a, planes[1]), Member(prov_b, planes[2])]

            network = Network.create("192.168.9.0/24", requestor_id=requestor.node_id)
            coordinator.create(network.id, str(network.network), str(network.requestor_ip))

            # Provider A is added and deployed first ...
            node_a = network.add_node(prov_a.node_id)
            coordinator.add_node(network.id, prov_a.node_id, str(node_a.ip))
            (net_a,) = parse_deploy_net(network.deploy_args(prov_a.node_id))
            iface_a = members[0].join(net_a, requestor.node_id, requestor.local_addr)
            # ... then B, whose DEPLOY already names A; A learns about B only from the
            # requestor's AddNodes, with no refresh call (yapapi #664).
            node_b = network.add_node(prov_b.node_id)
            coordinator.add_node(network.id, prov_b.node_id, str(node_b.ip))
            (net_b,) = parse_deploy_net(network.deploy_args(prov_b.node_id))
            iface_b = members[1].join(net_b, requestor.node_id, requestor.local_addr)

            expected = network.nodes_dict()
            await _wait(lambda: members[0].nodes(network.id) == expected)
            await _wait(lambda: members[1].nodes(network.id) == expected)
            assert coordinator.nodes(network.id) == expected

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.close()

            server = await golem_vpn.start_server(echo, iface_b, 22)
            reader, writer = await golem_vpn.open_connection(
                iface_a, str(node_b.ip), 22, timeout=10
            )
            blob = os.urandom(256 * 1024)
            writer.write(blob)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(len(blob)), 20) == blob

            # Removing B: A drops B's packets as soon as the removal arrives.
            network.remove_node(prov_b.node_id)
            coordinator.remove_node(network.id, prov_b.node_id)
            await _wait(lambda: prov_b.node_id not in members[0].nodes(network.id).values())
            # A tore its tunnel to B down (they share no other network), and B, told the
            # network is gone for it, left it: its interface is closed.
            await _wait(lambda: not prov_a.native.is_up(prov_b.node_id))
            await _wait(lambda: iface_b.closed)
            with pytest.raises(TimeoutError):
                await golem_vpn.open_connection(iface_a, str(node_b.ip), 22, timeout=1.0)
            writer.transport.abort()
            server.close()
            for plane in planes:
                plane.close()
            for link in links:
                link.close()

    asyncio.run(main())


def test_only_the_requestor_speaks_for_its_network() -> None:
    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            requestor, provider, intruder = (
                UdpTransport(Identity.generate(), relay=relay.local_addr) for _ in range(3)
            )
            planes = [ControlPlane(t) for t in (requestor, provider, intruder)]
            coordinator = Coordinator(requestor, planes[0])
            member = Member(provider, planes[1])
            network = Network.create("192.168.10.0/24", requestor_id=requestor.node_id)
            coordinator.create(network.id, str(network.network), str(network.requestor_ip))
            node = network.add_node(provider.node_id)
            coordinator.add_node(network.id, provider.node_id, str(node.ip))
            (net,) = parse_deploy_net(network.deploy_args(provider.node_id))
            member.join(net, requestor.node_id, requestor.local_addr)
            # The intruder is a legitimate member of the network (so its tunnel to the
            # provider is allowed), but not its requestor: what it says about the network
            # must be ignored.
            other = network.add_node(intruder.node_id)
            coordinator.add_node(network.id, intruder.node_id, str(other.ip))
            (net_i,) = parse_deploy_net(network.deploy_args(intruder.node_id))
            Member(intruder, planes[2]).join(net_i, requestor.node_id, requestor.local_addr)
            await _wait(lambda: intruder.node_id in member.nodes(network.id).values())
            forged = AddNodes(network.id, {"192.168.10.99": "0x" + "ee" * 20})
            planes[2].send(provider.node_id, forged)
            await _wait(lambda: member.ignored >= 1)
            assert "192.168.10.99" not in member.nodes(network.id)
            assert member.nodes(network.id) == network.nodes_dict()
            for plane in planes:
                plane.close()
            for t in (requestor, provider, intruder):
                t.close()

    asyncio.run(main())
