"""The asyncio shell of the node transport: encrypted UDP tunnels between nodes.

:class:`UdpTransport` runs a native :class:`~golem_vpn.NodeTransport` (one UDP socket, the
Noise tunnel endpoint, one router per network) on the running event loop: it watches the
socket with ``loop.add_reader``, runs the tunnel's timers at ``poll_at``, and connects each
joined network to a userspace :class:`~golem_vpn.interface.Interface`. Per-packet work
(routing, encryption, the socket calls) stays in Rust; Python sees batches.

Example::

    link = UdpTransport(Identity.generate())
    iface = link.join(net_id, "192.168.0.0/24", "192.168.0.2")
    link.add_peer(net_id, other_node_id, "192.168.0.3", ("127.0.0.1", other_port))
    reader, writer = await golem_vpn.open_connection(iface, "192.168.0.3", 22)
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from ipaddress import ip_interface
from typing import Any

from golem_vpn._golem_vpn import Identity, NodeTransport, Stack
from golem_vpn.errors import NetworkNotFound
from golem_vpn.interface import Interface

__all__ = ["UdpTransport"]

ControlHandler = Callable[[str, str, bytes], None]
PeerHandler = Callable[[str, str, str], None]


class UdpTransport:
    """A node's encrypted UDP transport, driven by the running asyncio loop.

    Args:
        identity: The node's identity (its node id is what peers authenticate).
        host: The address to bind (``127.0.0.1``, ``0.0.0.0``, an underlay address...).
        port: The UDP port (0: any free one).
        keepalive: Seconds between keep-alives on idle sessions (for NAT), None: off.
        relay: A relay's ``(host, port)``, or a list of them in order of preference: the node
            registers there (signed) and reaches peers it has no direct address for through
            the first relay that answers.
        hole_punching: Look relayed peers up at the relay and probe their public address,
            moving to a direct path when the probes get through NAT (default: on).

    Attributes:
        on_control: Called with ``(sender_node_id, network_id, message)`` for each control
            message that arrives.
        on_peer: Called with ``("up" | "down", node_id, detail)`` when a session comes up
            (detail: the peer's address) or goes down (detail: the reason).
    """

    def __init__(
        self,
        identity: Identity,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keepalive: float | None = None,
        relay: tuple[str, int] | list[tuple[str, int]] | None = None,
        hole_punching: bool = True,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._native = NodeTransport(
            identity, host, port, now=self._loop.time(), keepalive=keepalive
        )
        self._interfaces: dict[str, Interface] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self.on_control: ControlHandler | None = None
        self.on_peer: PeerHandler | None = None
        self._native.set_hole_punching(hole_punching)
        self._loop.add_reader(self._native.fileno(), self._on_readable)
        if relay is not None:
            self.set_relay(relay)

    def __repr__(self) -> str:
        return f"UdpTransport(node_id={self.node_id!r}, local_addr={self.local_addr})"

    @property
    def node_id(self) -> str:
        return self._native.node_id

    @property
    def local_addr(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        return self._native.local_addr

    @property
    def native(self) -> NodeTransport:
        """The native transport (stats, peers)."""
        return self._native

    def join(self, network_id: str, cidr: str, ip: str, **stack_options: Any) -> Interface:
        """Joins a network as ``ip`` with a userspace stack; returns its interface.

        Args:
            network_id: The network's id.
            cidr: The network's range (``"192.168.0.0/24"``).
            ip: This node's address in it.
            **stack_options: Passed to :class:`~golem_vpn.Stack` (``mtu``, buffers...).
        """
        prefix = ip_interface(cidr).network.prefixlen
        self._native.add_network(network_id, [cidr], [ip])
        stack = Stack([f"{ip}/{prefix}"], now=self._loop.time(), **stack_options)
        interface = Interface(
            stack, lambda packets: self._send(network_id, packets), name=network_id
        )
        self._interfaces[network_id] = interface
        return interface

    def leave(self, network_id: str) -> None:
        """Leaves a network: its interface stops, peers only in it are cut off."""
        interface = self._interfaces.pop(network_id, None)
        if interface is None:
            raise NetworkNotFound(f"network {network_id!r} is not joined")
        interface.close()
        self._native.remove_network(network_id)

    def set_relay(self, relay: tuple[str, int] | list[tuple[str, int]] | None) -> None:
        """Uses ``relay`` (one, or several in order of preference) for peers without a
        direct address (None: no relay)."""
        relays = [] if relay is None else [relay] if isinstance(relay, tuple) else list(relay)
        self._native.set_relays(relays, self._loop.time())
        self._arm()

    @property
    def public_addr(self) -> tuple[str, int] | None:
        """This node's address as the relay sees it (after NAT), once registered."""
        return self._native.public_addr

    def add_peer(
        self, network_id: str, node_id: str, ip: str, addr: tuple[str, int] | None = None
    ) -> bool:
        """Adds a node of the network; ``addr`` is its UDP address if known.

        Without an address the peer is reached through the relay (if one is set), and
        answers from it teach the tunnel where it is.
        """
        return self._native.add_peer(network_id, node_id, ip, addr)

    def remove_peer(self, network_id: str, node_id: str) -> bool:
        """Removes a node: its packets are dropped from now on."""
        return self._native.remove_peer(network_id, node_id)

    def send_control(self, node_id: str, network_id: str, message: bytes) -> None:
        """Sends a control message to a peer over its tunnel (unreliable on its own)."""
        self._native.send_control(node_id, network_id, message, self._loop.time())
        self._arm()

    def _send(self, network_id: str, packets: list[bytes]) -> None:
        if self._closed:
            return
        answers = self._native.send_packets(network_id, packets, self._loop.time())
        if answers:
            self._interfaces[network_id].deliver(answers)
        self._arm()

    def _on_readable(self) -> None:
        self._dispatch(*self._native.receive(self._loop.time()))
        self._arm()

    def _dispatch(
        self,
        frames: list[tuple[str, bytes]],
        control: list[tuple[str, str, bytes]],
        events: list[tuple[str, str, str]],
    ) -> None:
        if frames:
            by_network: dict[str, list[bytes]] = defaultdict(list)
            for network_id, frame in frames:
                by_network[network_id].append(frame)
            for network_id, batch in by_network.items():
                interface = self._interfaces.get(network_id)
                if interface is not None:
                    interface.deliver(batch)
        if control and self.on_control is not None:
            for sender, network_id, message in control:
                self.on_control(sender, network_id, message)
        if events and self.on_peer is not None:
            for kind, node_id, detail in events:
                self.on_peer(kind, node_id, detail)

    def _arm(self) -> None:
        if self._closed:
            return
        at = self._native.poll_at()
        if at is None or (self._timer_at is not None and self._timer_at <= at):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        self._dispatch(*self._native.handle_timeout(self._loop.time()))
        self._arm()

    def close(self) -> None:
        """Stops the transport and every joined network's interface."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._native.fileno())
        if self._timer is not None:
            self._timer.cancel()
        for interface in self._interfaces.values():
            interface.close()
        self._interfaces.clear()

    async def __aenter__(self) -> UdpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
