"""A whole virtual network in one process: nodes with Routers and Stacks, linked in memory.

:class:`LocalNetwork` is the in-process driver: each node has a :class:`~golem_vpn.Router`
(its view of the network) and a userspace :class:`~golem_vpn.Stack` run by an
:class:`~golem_vpn.interface.Interface`. A packet a node's stack sends is injected into its
router; each delivery is handed to the destination node's router (``receive``, with the
sender's node id, so anti-spoofing applies) and then to that node's stack. Nothing needs
root, and tests and demos get a real network: real TCP, UDP and ICMP between real stacks.

An optional seeded lossy/reordering link (like smoltcp's netsim) sits between routers.
The stack/router seam is the same one the encrypted node transport uses.

Example::

    async with LocalNetwork("192.168.0.0/24") as net:
        a, b = net.add_node(), net.add_node()
        server = await b.start_server(handler, 8080)
        reader, writer = await a.open_connection(b.ip, 8080)
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from golem_vpn._golem_vpn import Router, Stack
from golem_vpn.errors import NodeNotFound
from golem_vpn.interface import Interface
from golem_vpn.model import AddressPool, parse_network, parse_node_id
from golem_vpn.streams import (
    DatagramEndpoint,
    Server,
    open_connection,
    open_datagram_endpoint,
    start_server,
)

__all__ = ["LinkConditions", "LocalNetwork", "LocalNode"]


@dataclass
class LinkConditions:
    """What the in-memory link does to packets between routers (seeded, reproducible).

    Attributes:
        loss: Probability that a packet is dropped.
        reorder: Probability that a packet is held back and sent after later ones.
        delay: Seconds each batch of packets spends in flight (0: next loop turn).
        seed: Seed of the link's random generator.
    """

    loss: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    seed: int = 0
    dropped: int = field(default=0, init=False)
    reordered: int = field(default=0, init=False)


@dataclass
class LocalNode:
    """One node of a :class:`LocalNetwork`."""

    node_id: str
    ip: IPv4Address | IPv6Address
    router: Router
    stack: Stack
    interface: Interface

    async def open_connection(
        self, host: str | IPv4Address | IPv6Address, port: int, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``golem_vpn.open_connection`` from this node."""
        return await open_connection(self.interface, str(host), port, **kwargs)

    async def start_server(
        self,
        client_connected_cb: Callable[
            [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
        ],
        port: int = 0,
        **kwargs: Any,
    ) -> Server:
        """``golem_vpn.start_server`` on this node."""
        return await start_server(client_connected_cb, self.interface, port, **kwargs)

    async def open_datagram_endpoint(self, port: int = 0, **kwargs: Any) -> DatagramEndpoint:
        """A UDP endpoint on this node."""
        return await open_datagram_endpoint(self.interface, port, **kwargs)

    async def ping(self, host: str | IPv4Address | IPv6Address, **kwargs: Any) -> float:
        """ICMP echo from this node; returns the RTT in seconds."""
        return await self.interface.ping(str(host), **kwargs)


class LocalNetwork:
    """A virtual network whose nodes all live in this process. See the module docs.

    Args:
        cidr: The network range (IPv4 or IPv6).
        network_id: The network id (random by default).
        link: Loss/reordering between routers (perfect by default).
        stack_options: Keyword arguments for every node's :class:`~golem_vpn.Stack`
            (``mtu``, ``tcp_rx_buffer``, ...).

    Must be created inside a running event loop.
    """

    def __init__(
        self,
        cidr: str = "192.168.0.0/24",
        *,
        network_id: str | None = None,
        link: LinkConditions | None = None,
        **stack_options: Any,
    ) -> None:
        self._network = parse_network(cidr)
        self._pool = AddressPool(self._network)
        self.network_id = network_id or os.urandom(16).hex()
        self.link = link or LinkConditions()
        self._random = random.Random(self.link.seed)
        self._stack_options = stack_options
        self._nodes: dict[str, LocalNode] = {}
        self._held: list[tuple[LocalNode, str, bytes]] = []
        self._loop = asyncio.get_running_loop()
        self._closed = False

    @property
    def nodes(self) -> dict[str, LocalNode]:
        return dict(self._nodes)

    @property
    def cidr(self) -> str:
        return str(self._network)

    def add_node(
        self, node_id: str | None = None, ip: str | IPv4Address | IPv6Address | None = None
    ) -> LocalNode:
        """Adds a node (a fresh random id and the next free address by default).

        Every other node learns about it at once (as with yagna's ``AddNodes``).
        """
        node_id = parse_node_id(node_id or "0x" + os.urandom(20).hex())
        address = self._pool.allocate(ip)
        router = Router(self.network_id, str(self._network), node_id, [address])
        for other in self._nodes.values():
            router.add_node(other.node_id, other.ip)
            other.router.add_node(node_id, address)
        stack = Stack(
            [f"{address}/{self._network.prefixlen}"],
            now=self._loop.time(),
            **self._stack_options,
        )
        node = LocalNode(node_id, address, router, stack, None)  # type: ignore[arg-type]
        node.interface = Interface(stack, lambda packets: self._route(node, packets), name=node_id)
        self._nodes[node_id] = node
        return node

    def remove_node(self, node_id: str) -> None:
        """Removes a node: the others drop its packets from now on; its interface stops."""
        node = self._nodes.pop(parse_node_id(node_id), None)
        if node is None:
            raise NodeNotFound(f"node {node_id} is not in the network")
        for other in self._nodes.values():
            other.router.remove_node(node.node_id)
        node.interface.close()
        self._pool.release(node.ip)

    def _route(self, src: LocalNode, packets: list[bytes]) -> None:
        if self._closed:
            return
        by_dst: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        link = self.link
        lossy = link.loss > 0 or link.reorder > 0
        rnd = self._random
        if lossy and self._held:
            # Packets held back by reordering leave after the ones sent since.
            for node, dst, pkt in self._held:
                if node is src:
                    by_dst[dst].append((src.node_id, pkt))
            self._held = [h for h in self._held if h[0] is not src]
        for dst, pkt in src.router.inject_many(packets):
            if lossy:
                if rnd.random() < link.loss:
                    link.dropped += 1
                    continue
                if rnd.random() < link.reorder:
                    link.reordered += 1
                    self._held.append((src, dst, pkt))
                    continue
            by_dst[dst].append((src.node_id, pkt))
        if self._held:
            self._loop.call_soon(self._release_held, src)
        for dst, items in by_dst.items():
            if link.delay > 0:
                self._loop.call_later(link.delay, self._arrive, dst, items)
            else:
                self._arrive(dst, items)

    def _release_held(self, src: LocalNode) -> None:
        held = [h for h in self._held if h[0] is src]
        if not held:
            return
        self._held = [h for h in self._held if h[0] is not src]
        by_dst: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
        for _, dst, pkt in held:
            by_dst[dst].append((src.node_id, pkt))
        for dst, items in by_dst.items():
            self._arrive(dst, items)

    def _arrive(self, dst: str, items: list[tuple[str, bytes]]) -> None:
        node = self._nodes.get(dst)
        if node is None:
            return
        frames = node.router.receive_many(items)
        if frames:
            node.interface.deliver(frames)

    def close(self) -> None:
        """Stops every node's interface."""
        self._closed = True
        for node in self._nodes.values():
            node.interface.close()

    async def __aenter__(self) -> LocalNetwork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
