"""What the Net API drives: the node's networks, nodes and the requestor's userspace stacks.

The Net API server validates requests, keeps the model (networks, nodes, addresses) and its
persistence, and tells a :class:`VpnBackend` what changed. The backend makes it real: the
node daemon's backend joins networks on the encrypted UDP transport and tells providers
about nodes (:mod:`golem_vpn.node.daemon`); :class:`LocalBackend` keeps every node in this
process (routers and stacks linked in memory), for tests, demos and the WebSocket gate's
development. Both give the gate TCP/UDP sockets from the requestor's userspace stack, and
the raw gate a :class:`~golem_vpn.interface.PacketTap` on that stack's interface.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from golem_vpn.errors import NetworkNotFound, NodeNotFound
from golem_vpn.interface import Interface, PacketTap
from golem_vpn.local import LocalNetwork, LocalNode
from golem_vpn.model import Network, Node
from golem_vpn.streams import DatagramEndpoint, open_connection, open_datagram_endpoint

__all__ = ["LocalBackend", "VpnBackend"]


class VpnBackend(Protocol):
    """The operations the Net API needs from the node it runs on.

    Every method is called after the server validated the request and updated its model, and
    before it answers: when a method returns, the change is in effect.
    """

    @property
    def node_id(self) -> str:
        """The node id of this daemon (the requestor of the networks it creates)."""
        ...

    async def network_created(self, network: Network) -> None:
        """Joins ``network`` as its requestor, at ``network.requestor_ip``."""
        ...

    async def network_removed(self, network_id: str) -> None:
        """Leaves the network and tells its nodes; frees every socket in it."""
        ...

    async def address_added(self, network_id: str, ip: str) -> None:
        """Gives the requestor one more address in the network."""
        ...

    async def node_added(self, network: Network, node: Node) -> None:
        """Adds a provider node: the others learn about it, it learns about them."""
        ...

    async def node_removed(self, network_id: str, node_id: str) -> None:
        """Removes a node: its packets are dropped by every node from now on."""
        ...

    async def node_readdressed(self, network: Network, node: Node) -> None:
        """Moves a node to ``node.ip``: every node (the moved one too) follows, in place."""
        ...

    async def open_tcp(
        self, network_id: str, ip: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connects the requestor's stack to ``ip:port`` in the network.

        Raises:
            NetworkNotFound: No such network on this node.
            ConnectTimeout: No answer within ``timeout`` seconds.
            ConnectionRefused: Nothing listens there.
        """
        ...

    async def open_udp(self, network_id: str) -> DatagramEndpoint:
        """A UDP socket on the requestor's stack in the network."""
        ...

    def tap(
        self,
        network_id: str,
        source: str,
        receive: Callable[[list[bytes]], None],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> PacketTap:
        """Takes the IP packets that reach the requestor from ``source`` (a node's address)
        away from its stack, to ``receive``; the tap also sends IP packets as the requestor.

        Raises:
            NetworkNotFound: No such network on this node.
        """
        ...

    def status(self) -> dict[str, object]:
        """``GET /net-api/v2/net/status``: ``{nodeId, listenIp?, publicIp?, sessions}``."""
        ...


class LocalBackend:
    """A :class:`VpnBackend` whose nodes all live in this process.

    Each network is a :class:`~golem_vpn.local.LocalNetwork`: the requestor's node and every
    added provider node get a router and a userspace stack there, linked in memory. Tests
    reach a provider's stack with :meth:`provider` to run servers on it.

    Args:
        node_id: This (requestor) node's id.
        **stack_options: Passed to every node's :class:`~golem_vpn.Stack`.
    """

    def __init__(self, node_id: str, **stack_options: Any) -> None:
        self._node_id = node_id
        self._stack_options = stack_options
        self._networks: dict[str, LocalNetwork] = {}

    @property
    def node_id(self) -> str:
        return self._node_id

    def _net(self, network_id: str) -> LocalNetwork:
        net = self._networks.get(network_id)
        if net is None:
            raise NetworkNotFound(f"network {network_id!r} is not on this node")
        return net

    def requestor(self, network_id: str) -> LocalNode:
        """The requestor's node in a network."""
        return self._net(network_id).nodes[self._node_id]

    def interface(self, network_id: str) -> Interface:
        """The requestor's interface in a network."""
        return self.requestor(network_id).interface

    def provider(self, network_id: str, node_id: str) -> LocalNode:
        """A provider's node (its router and stack), to run payload servers on."""
        node = self._net(network_id).nodes.get(node_id.lower())
        if node is None:
            raise NodeNotFound(f"node {node_id} is not in network {network_id!r}")
        return node

    async def network_created(self, network: Network) -> None:
        net = LocalNetwork(str(network.network), network_id=network.id, **self._stack_options)
        net.add_node(self._node_id, network.requestor_ip)
        self._networks[network.id] = net

    async def network_removed(self, network_id: str) -> None:
        self._net(network_id).close()
        del self._networks[network_id]

    async def address_added(self, network_id: str, ip: str) -> None:
        node = self.requestor(network_id)
        node.router.add_node(self._node_id, ip)
        for other in self._net(network_id).nodes.values():
            if other is not node:
                other.router.add_node(self._node_id, ip)

    async def node_added(self, network: Network, node: Node) -> None:
        net = self._net(network.id)
        existing = net.nodes.get(node.id)
        if existing is not None and existing.ip == node.ip:
            return  # yagna's refresh: re-adding is harmless
        net.add_node(node.id, node.ip)

    async def node_removed(self, network_id: str, node_id: str) -> None:
        net = self._net(network_id)
        if node_id.lower() in net.nodes:
            net.remove_node(node_id)

    async def node_readdressed(self, network: Network, node: Node) -> None:
        # In-process nodes have no sessions to keep: the moved node gets a fresh stack.
        net = self._net(network.id)
        if node.id in net.nodes:
            net.remove_node(node.id)
        net.add_node(node.id, node.ip)

    async def open_tcp(
        self, network_id: str, ip: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_connection(self.interface(network_id), ip, port, timeout=timeout)

    async def open_udp(self, network_id: str) -> DatagramEndpoint:
        return await open_datagram_endpoint(self.interface(network_id))

    def tap(
        self,
        network_id: str,
        source: str,
        receive: Callable[[list[bytes]], None],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> PacketTap:
        return self.interface(network_id).tap(source, receive, on_close=on_close)

    def status(self) -> dict[str, object]:
        return {"nodeId": self._node_id, "sessions": 0}

    async def close(self) -> None:
        for net in self._networks.values():
            net.close()
        self._networks.clear()
