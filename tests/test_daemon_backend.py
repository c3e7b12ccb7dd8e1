"""The daemon's Net API backend: requestor and provider daemons over encrypted UDP.

The requestor side is driven exactly as the Net API drives it (network_created,
node_added, open_tcp ...); the provider joins from the DEPLOY config the requestor's model
produces. Nodes find each other through a relay on loopback.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import golem_vpn
from golem_vpn import Identity
from golem_vpn.model import Network, parse_deploy_net
from golem_vpn.node.daemon import DaemonBackend
from golem_vpn.node.relay import RelayService
from golem_vpn.node.transport import UdpTransport


def test_gate_sockets_reach_a_provider_daemon() -> None:
    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            requestor = DaemonBackend(UdpTransport(Identity.generate(), relay=relay.local_addr))
            provider = DaemonBackend(UdpTransport(Identity.generate(), relay=relay.local_addr))
            network = Network.create("10.33.0.0/24", requestor_id=requestor.node_id)
            await requestor.network_created(network)
            node = network.add_node(provider.node_id)
            await requestor.node_added(network, node)
            (deploy,) = parse_deploy_net(network.deploy_args(provider.node_id))
            iface = provider.join_deploy(deploy, requestor.node_id)

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.close()

            server = await golem_vpn.start_server(echo, iface, 8080)
            reader, writer = await requestor.open_tcp(network.id, str(node.ip), 8080, 10.0)
            blob = os.urandom(512 * 1024)
            writer.write(blob)
            await writer.drain()
            assert await asyncio.wait_for(reader.readexactly(len(blob)), 20) == blob
            status = requestor.status()
            assert status["nodeId"] == requestor.node_id
            assert status["sessions"] == 1
            assert status["publicIp"] == "{}:{}".format(*requestor.transport.local_addr)

            # Removing the node cuts it off; removing the network frees its interface.
            await requestor.node_removed(network.id, provider.node_id)
            with pytest.raises(TimeoutError):
                await requestor.open_tcp(network.id, str(node.ip), 8080, 1.0)
            await requestor.network_removed(network.id)
            with pytest.raises(golem_vpn.NetworkNotFound):
                await requestor.open_tcp(network.id, str(node.ip), 8080, 1.0)
            writer.transport.abort()
            server.close()
            requestor.close()
            provider.close()

    asyncio.run(main())
