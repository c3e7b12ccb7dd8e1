"""Type stubs for the native module ``golem_vpn._golem_vpn`` (built from ``rust/``)."""

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final, Literal, TypedDict

__version__: Final[str]
build_profile: Final[Literal["debug", "release"]]
MAX_PACKET_LEN: Final[int]
"""The largest frame the router accepts (65535 bytes)."""
DROP_REASONS: Final[list[str]]
"""Every drop reason the router counts, in ``stats()["drops"]`` order."""

_Ip = str | IPv4Address | IPv6Address
_Net = str | IPv4Network | IPv6Network

class NodeCounters(TypedDict):
    """Traffic with one node: ``in`` is from that node, ``out`` is to it."""

    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int

class RouterStats(TypedDict):
    network_id: str
    injected: int
    received: int
    dropped: int
    drops: dict[str, int]
    nodes: dict[str, NodeCounters]

class Router:
    """One node's view of one network: who holds which IP, where a packet goes.

    A runtime calls :meth:`inject` with each frame its local payload sends and sends every
    returned ``(node_id, packet)`` to that node; it calls :meth:`receive` with each packet
    that arrives from a remote node and hands the result to the local payload.

    Security rules on every packet: the local payload may only send from its own addresses;
    a remote node's packets must carry one of *its* addresses as source and be addressed to
    this node or a broadcast/multicast group; removed or unknown nodes are not heard.
    Dropped packets are never errors: they are counted by reason in :meth:`stats`.

    Args:
        network_id: The network's id (yagna's: 32 hex digits).
        cidrs: The network's range(s), e.g. ``"192.168.0.0/24"``, or several (IPv4 and IPv6).
            Host bits are cleared. Ranges may not overlap.
        node_id: The local node's id (``0x`` + 40 hex digits).
        ips: The local node's address(es).
        ethernet: Exchange Ethernet II frames with the local payload (VM runtimes) instead
            of bare IP packets. The router then answers ARP and IPv6 neighbour solicitations
            for known nodes itself, with yagna's MACs (``90:13:<ip>``, requestor
            ``a0:13:<ip>``).
        requestor: The requestor's node id, for the MAC scheme.

    Raises:
        InvalidNodeId: ``node_id`` or ``requestor`` is not a node id.
        AddressError: A range or address is malformed, or ranges overlap.
        AddressOutOfRange: A local address is outside every range.
        AddressReserved: A local address is a network/broadcast/multicast/loopback address.
    """

    def __init__(
        self,
        network_id: str,
        cidrs: _Net | Iterable[_Net],
        node_id: str,
        ips: _Ip | Iterable[_Ip],
        *,
        ethernet: bool = False,
        requestor: str | None = None,
    ) -> None: ...
    @property
    def network_id(self) -> str: ...
    @property
    def node_id(self) -> str:
        """The local node's id, lowercase."""
    @property
    def ips(self) -> list[str]:
        """The local node's addresses."""
    @property
    def cidrs(self) -> list[str]:
        """The network's ranges, as ``address/prefix``."""
    @property
    def medium(self) -> Literal["ip", "ethernet"]: ...
    def add_node(self, node_id: str, ip: _Ip) -> bool:
        """Gives ``ip`` to ``node_id``, adding the node if it is new.

        A node may hold several addresses. Re-adding an address the node already holds is
        harmless (yagna's refresh semantics).

        Returns:
            False if the node already held ``ip``, True otherwise.

        Raises:
            InvalidNodeId: ``node_id`` is not a node id.
            AddressError: ``ip`` is not an IP address.
            AddressOutOfRange: ``ip`` is outside the network.
            AddressReserved: ``ip`` is the network or broadcast address, multicast, loopback,
                unspecified or 255.255.255.255.
            AddressTaken: Another node holds ``ip``.
        """
    def remove_node(self, node_id: str) -> bool:
        """Removes a node and all its addresses; from then on its packets are dropped.

        Returns:
            False if the node was not in the network.

        Raises:
            GolemVpnError: ``node_id`` is the local node.
        """
    def nodes(self) -> dict[str, list[str]]:
        """Every node (the local one first) with its addresses."""
    def node_of(self, ip: _Ip) -> str | None:
        """The node that holds ``ip``, if any."""
    def inject(self, packet: bytes) -> list[tuple[str, bytes]]:
        """Routes a frame the local payload sent.

        Returns:
            ``(node_id, packet)`` deliveries: one for unicast to a known node, one per other
            node for broadcast and multicast, none if the frame was dropped (see
            :meth:`stats`). In Ethernet mode the delivered packets are bare IP packets, and
            ARP / neighbour-discovery answers come back as a delivery to the *local* node id
            (an Ethernet frame to hand back to the payload). When a delivery is the whole
            input, the input object itself is returned (no copy).
        """
    def inject_many(self, packets: Iterable[bytes]) -> list[tuple[str, bytes]]:
        """:meth:`inject` for a batch: all deliveries, in order, in one flat list.

        Raises:
            TypeError: An item is not ``bytes`` (then nothing in the batch is routed).
        """
    def receive(self, packet: bytes, from_node: str) -> bytes | None:
        """Takes an IP packet that arrived from ``from_node``.

        Returns:
            The frame for the local payload (with an Ethernet header in Ethernet mode), or
            None if the packet was dropped (counted in :meth:`stats`).

        Raises:
            InvalidNodeId: ``from_node`` is not a node id.
        """
    def receive_many(self, items: Iterable[tuple[str, bytes]]) -> list[bytes]:
        """:meth:`receive` for a batch of ``(from_node, packet)`` pairs.

        Returns:
            The frames for the local payload, dropped packets left out.

        Raises:
            TypeError: An item is not a ``(str, bytes)`` pair (nothing is received then).
            InvalidNodeId: A ``from_node`` is not a node id (nothing is received then).
        """
    def stats(self) -> RouterStats:
        """Counters: frames injected/received, drops by reason, traffic per node."""
