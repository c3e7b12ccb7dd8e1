"""The asyncio shell of the node transport: encrypted UDP tunnels between nodes.

:class:`UdpTransport` wraps a native :class:`~golem_vpn.NodeTransport`: one UDP socket, the
Noise tunnel endpoint and one router per network, driven by a native datapath thread that
reads the socket, runs the tunnel's timers and moves the packets of natively attached
networks (TUN devices, VM frame endpoints: :meth:`UdpTransport.attach_tun`,
:meth:`UdpTransport.attach_vm`) without Python. What is left for Python (packets of
networks served by a userspace :class:`~golem_vpn.interface.Interface`, control messages,
peer events) is queued by the thread, which wakes the event loop through a descriptor it
watches with ``loop.add_reader``: one wake-up per batch.

Example::

    link = UdpTransport(Identity.generate())
    iface = link.join(net_id, "192.168.0.0/24", "192.168.0.2")
    link.add_peer(net_id, other_node_id, "192.168.0.3", ("127.0.0.1", other_port))
    reader, writer = await golem_vpn.open_connection(iface, "192.168.0.3", 22)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections import defaultdict
from collections.abc import Callable
from ipaddress import ip_address, ip_interface
from typing import TYPE_CHECKING, Any

from golem_vpn._golem_vpn import Identity, NodeTransport, Stack
from golem_vpn.errors import AddressError, NetworkNotFound
from golem_vpn.hostport import format_hostport, is_ip, resolve
from golem_vpn.interface import Interface

if TYPE_CHECKING:
    from golem_vpn._golem_vpn import AttachmentInfo

__all__ = ["UdpTransport"]

ControlHandler = Callable[[str, str, bytes], None]
PeerHandler = Callable[[str, str, str], None]

log = logging.getLogger(__name__)

#: Seconds between checks that a relay known by host name still answers; one that does not
#: has its name resolved again (it may have moved).
RELAY_CHECK_INTERVAL = 30.0
#: Seconds such a check waits for the relay's answer.
RELAY_PROBE_TIMEOUT = 3.0


class UdpTransport:
    """A node's encrypted UDP transport, driven by the running asyncio loop.

    Args:
        identity: The node's identity (its node id is what peers authenticate).
        host: The address to bind (``127.0.0.1``, ``0.0.0.0``, an underlay address...), or a
            host name (resolved now; IPv4 first).
        port: The UDP port (0: any free one).
        keepalive: Seconds between keep-alives on idle sessions (for NAT), None: off.
        relay: A relay's ``(host, port)``, or a list of them in order of preference: the node
            registers there (signed) and reaches peers it has no direct address for through
            the first relay that answers. A host may be a name: it is resolved now, and
            again whenever the relay stops answering (checked every
            :data:`RELAY_CHECK_INTERVAL` seconds), so a relay that moves is followed.
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
            identity, resolve(host, port, "the transport's host")[0], port, keepalive=keepalive
        )
        self._relays: list[tuple[str, int]] = []  # as given: host names kept
        self._relay_addrs: list[tuple[str, int]] = []  # what the datapath uses
        self._relay_watch: asyncio.Task[None] | None = None
        self._interfaces: dict[str, Interface] = {}
        self._native_networks: set[str] = set()
        self._closed = False
        self.on_control: ControlHandler | None = None
        self.on_peer: PeerHandler | None = None
        self._native.set_hole_punching(hole_punching)
        self._loop.add_reader(self._native.fileno(), self._on_readable)
        if relay is not None:
            try:
                self.set_relay(relay)
            except BaseException:
                self.close()
                raise

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

    def join_native(
        self,
        network_id: str,
        cidr: str | list[str],
        ip: str | list[str],
        *,
        ethernet: bool = False,
        requestor: str | None = None,
    ) -> None:
        """Joins a network with its router only, for a native attachment to carry.

        Nothing reaches Python for this network: attach it with :meth:`attach_tun` or
        :meth:`attach_vm`. Until then its packets are dropped (counted).

        Args:
            network_id: The network's id.
            cidr: The network's range, or several (IPv4 and IPv6).
            ip: This node's address in it, or several.
            ethernet: The attachment speaks Ethernet (VM runtimes): the router answers ARP
                and neighbour solicitations and frames carry yagna's MACs.
            requestor: The network's requestor, whose MAC is ``a0:13:`` + its address (yagna's
                requestor stack's) rather than a node's ``90:13:``.
        """
        cidrs = [cidr] if isinstance(cidr, str) else list(cidr)
        ips = [ip] if isinstance(ip, str) else list(ip)
        self._native.add_network(network_id, cidrs, ips, ethernet=ethernet, requestor=requestor)
        self._native_networks.add(network_id)

    def leave(self, network_id: str) -> None:
        """Leaves a network: its interface stops, peers only in it are cut off."""
        interface = self._interfaces.pop(network_id, None)
        if interface is None and network_id not in self._native_networks:
            raise NetworkNotFound(f"network {network_id!r} is not joined")
        self._native_networks.discard(network_id)
        if interface is not None:
            interface.close()
        self._native.remove_network(network_id)

    def is_joined(self, network_id: str) -> bool:
        """True if this node is in the network (with a userspace stack or natively)."""
        return network_id in self._interfaces or network_id in self._native_networks

    def attach_tun(
        self, name: str, networks: list[str], *, offload: bool = True, queues: int | None = None
    ) -> int:
        """Creates the TUN device ``name`` and carries ``networks``' packets through it.

        The device is made in this process's network namespace, down and without an
        address: configuring it (and moving it to another namespace) is the caller's
        business (:mod:`golem_vpn.exeunit` does it). Closing it (:meth:`detach`) deletes it.
        With ``offload``, the kernel hands over TCP packets of up to 64 KiB (TSO, segmented
        in the datapath) and receives each flow's segments coalesced (GRO).

        ``queues`` (default: ``GOLEM_VPN_WORKERS``, else 1; at most 16): with more than one
        (and ``offload``), a multi-queue device whose queues each get a datapath thread:
        the kernel spreads the payload's flows over them, and each thread routes, seals and
        sends its own, so sending scales over cores.

        Returns:
            The attachment's id.

        Raises:
            PermissionError: No ``CAP_NET_ADMIN``.
            OSError: The device could not be made (e.g. the name is in use).
            NetworkNotFound: A network was not joined with :meth:`join_native`.
            AttachError: A network already has an attachment.
        """
        return self._native.attach_tun(name, networks, offload=offload, queues=queues)

    def attach_vm(self, url: str, networks: list[str]) -> tuple[int, str]:
        """Opens a VM frame endpoint (Ethernet frames, yagna's runtime framing).

        Args:
            url: ``udp://127.0.0.1:0`` (one datagram per frame), ``tcp-listen://HOST:PORT``
                or ``tcp-connect://HOST:PORT`` (u32 big-endian length prefix, as QEMU's
                ``-netdev socket``), ``unix://PATH`` (u16 native-endian prefix).
            networks: Networks joined with ``join_native(..., ethernet=True)``.

        Returns:
            ``(attachment id, endpoint URL for the runtime)``, with the bound port.

        Raises:
            ValueError: A malformed URL.
            ConnectionRefusedError, TimeoutError, OSError: The endpoint cannot be reached.
        """
        return self._native.attach_vm(url, networks)

    def detach(self, attachment_id: int) -> bool:
        """Closes a native attachment; its networks stay joined. False if unknown."""
        return self._native.detach(attachment_id)

    def attachments(self) -> list[AttachmentInfo]:
        """Every native attachment with its counters (see the native stub)."""
        return self._native.attachments()

    def set_relay(self, relay: tuple[str, int] | list[tuple[str, int]] | None) -> None:
        """Uses ``relay`` (one, or several in order of preference) for peers without a
        direct address (None: no relay). Host names are resolved now, and again when their
        relay stops answering.

        Raises:
            AddressError: A host name does not resolve (to an address the socket can reach).
        """
        relays = [] if relay is None else [relay] if isinstance(relay, tuple) else list(relay)
        family = socket.AF_INET if ip_address(self.local_addr[0]).version == 4 else 0
        addrs = [resolve(host, port, "relay", family=family) for host, port in relays]
        self._relays, self._relay_addrs = relays, addrs
        self._native.set_relays(addrs)
        if self._relay_watch is not None:
            self._relay_watch.cancel()
            self._relay_watch = None
        if any(not is_ip(host) for host, _ in relays):
            self._relay_watch = self._loop.create_task(self._watch_relays(family))

    @property
    def relays(self) -> list[tuple[str, int]]:
        """The relays' addresses as the datapath uses them (names resolved), in order."""
        return list(self._relay_addrs)

    async def _watch_relays(self, family: int) -> None:
        """Resolves a relay's host name again each time the relay does not answer a probe."""
        from golem_vpn.node.relay import probe

        while True:
            await asyncio.sleep(RELAY_CHECK_INTERVAL)
            for index, (host, port) in enumerate(self._relays):
                if is_ip(host) or await probe(
                    self._relay_addrs[index], timeout=RELAY_PROBE_TIMEOUT
                ):
                    continue
                try:
                    addr = await self._loop.run_in_executor(
                        None, functools.partial(resolve, host, port, "relay", family=family)
                    )
                except AddressError as exc:
                    log.warning(
                        "relay %s does not answer, and %s", format_hostport(host, port), exc
                    )
                    continue
                if addr != self._relay_addrs[index]:
                    log.warning(
                        "relay %s does not answer at %s; its name now resolves to %s: using that",
                        host,
                        format_hostport(*self._relay_addrs[index]),
                        format_hostport(*addr),
                    )
                    self._relay_addrs[index] = addr
                    self._native.set_relays(self._relay_addrs)

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

    def readdress(self, network_id: str, node_id: str, ips: list[str]) -> bool:
        """Gives a node (this one included) new addresses in a network, in place: its
        session stays up, packets from its old addresses are dropped from now on.

        Returns:
            False if the node is not in the network.

        Raises:
            NetworkNotFound: The network is not joined.
            AddressTaken, AddressOutOfRange, AddressReserved: A new address is not free.
        """
        return self._native.readdress(network_id, node_id, ips)

    def remove_peer(self, network_id: str, node_id: str) -> bool:
        """Removes a node: its packets are dropped from now on."""
        return self._native.remove_peer(network_id, node_id)

    def send_control(self, node_id: str, network_id: str, message: bytes) -> None:
        """Sends a control message to a peer over its tunnel (unreliable on its own)."""
        self._native.send_control(node_id, network_id, message)

    def _send(self, network_id: str, packets: list[bytes]) -> None:
        if self._closed:
            return
        answers = self._native.send_packets(network_id, packets)
        if answers:
            self._interfaces[network_id].deliver(answers)

    def _on_readable(self) -> None:
        if not self._closed:
            self._dispatch(*self._native.receive())

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

    def close(self) -> None:
        """Stops the transport and every joined network's interface."""
        if self._closed:
            return
        self._closed = True
        if self._relay_watch is not None:
            self._relay_watch.cancel()
            self._relay_watch = None
        self._loop.remove_reader(self._native.fileno())
        for interface in self._interfaces.values():
            interface.close()
        self._interfaces.clear()
        self._native.close()

    async def __aenter__(self) -> UdpTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
