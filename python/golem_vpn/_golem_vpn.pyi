"""Type stubs for the native module ``golem_vpn._golem_vpn`` (built from ``rust/``)."""

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final, Literal, TypedDict

__version__: Final[str]
build_profile: Final[Literal["debug", "release"]]
MAX_PACKET_LEN: Final[int]
#: The MTU at which the tunnel never fragments on a 1500-byte underlay, worst case (IPv6,
#: relayed, a 32-character network id): 1500 - 132.
DEFAULT_TUN_MTU: Final[int]
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

class StackStats(TypedDict):
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    dropped_in: int
    syn_dropped: int
    sockets: int

class TcpStatus:
    """A TCP connection's state, as the stack sees it now."""

    @property
    def state(self) -> str:
        """RFC 793 state name: ``"SYN-SENT"``, ``"ESTABLISHED"``, ``"CLOSE-WAIT"``, ..."""
    @property
    def established(self) -> bool:
        """The handshake completed at some point."""
    @property
    def recv_queue(self) -> int:
        """Bytes waiting to be read."""
    @property
    def may_recv(self) -> bool:
        """The peer may still send (false after its FIN or a reset)."""
    @property
    def send_queue(self) -> int:
        """Bytes queued and not yet acknowledged."""
    @property
    def send_free(self) -> int:
        """Free space in the send buffer."""
    @property
    def may_send(self) -> bool:
        """We may still send (false after our FIN or a reset)."""
    @property
    def failure(self) -> Literal["refused", "reset", "timed_out"] | None:
        """How the connection failed: a reset answering the SYN, a reset later, or silence."""
    @property
    def local(self) -> tuple[str, int] | None: ...
    @property
    def remote(self) -> tuple[str, int] | None: ...

class Stack:
    """A userspace TCP/IP stack (smoltcp) for one node in one network; sans-IO.

    Feed it the IP packets that arrive for the node (:meth:`receive`), run it with the
    current time (:meth:`poll` returns the packets to send), and poll again at
    :meth:`poll_at`. Socket ids returned by :meth:`take_ready` may have become readable,
    writable or closed. Most users want :class:`golem_vpn.interface.Interface` and the
    asyncio API (``golem_vpn.open_connection`` ...) on top of this.

    Args:
        addresses: The node's address(es) as ``"ip/prefix"`` (a bare IPv4 address is a
            /24, IPv6 a /64). One to four.
        mtu: The largest IP packet sent (default 1400, yagna's).
        tcp_rx_buffer: Receive buffer per TCP connection (bytes). Above 64 KiB, window
            scaling is negotiated.
        tcp_tx_buffer: Send buffer per TCP connection (bytes).
        udp_buffer: Datagram buffer per UDP socket and direction (bytes).
        keep_alive: TCP keep-alive interval in seconds (None: off).
        tcp_timeout: Seconds of peer silence after which a connection fails (None: never).
        seed: Seed for initial sequence numbers and port choice (random by default).
        now: The current time in seconds (any monotonic clock, e.g. ``loop.time()``).

    Raises:
        StackConfigError: A setting is out of range.
        AddressError: An address is malformed.
    """

    def __init__(
        self,
        addresses: str | Iterable[str],
        *,
        mtu: int = 1400,
        tcp_rx_buffer: int = 524288,
        tcp_tx_buffer: int = 524288,
        udp_buffer: int = 262144,
        keep_alive: float | None = 30.0,
        tcp_timeout: float | None = 120.0,
        seed: int | None = None,
        now: float = 0.0,
    ) -> None: ...
    @property
    def addresses(self) -> list[str]: ...
    @property
    def mtu(self) -> int: ...
    def receive(self, packet: bytes) -> bool:
        """Queues an arrived IP packet; False (counted) if empty or above the MTU, or a SYN
        for a listener whose backlog is full (dropped so the client retries)."""
    def receive_many(self, packets: Iterable[bytes]) -> int:
        """:meth:`receive` for a batch; returns how many were queued."""
    def poll(self, now: float, budget: int = 4096) -> list[bytes]:
        """Runs the stack at ``now``; returns up to about ``budget`` packets to send.

        If it returns ``budget`` packets or more, call again: more may be waiting.
        """
    def poll_at(self, now: float) -> float | None:
        """When to poll next even without new packets (None: no timer pending)."""
    def take_ready(self) -> list[int]:
        """Socket ids with news since the last call (each reported again on its next news)."""
    def tcp_connect(self, host: str, port: int) -> int:
        """Starts a connection; watch :meth:`tcp_status` for ``established`` or ``failure``.

        Raises:
            NetworkUnreachable: No local address of ``host``'s family.
            AddressError: ``host`` is not an IP address, or is unspecified/multicast.
            AddressInUse: No ephemeral port is free.
        """
    def tcp_listen(self, port: int, backlog: int = 128) -> tuple[int, int]:
        """Listens on ``port`` (0: ephemeral); returns ``(listener_id, port)``.

        Up to ``backlog`` connections may be handshaking or waiting in the accept queue;
        beyond that SYNs are dropped (not refused), so clients retry.

        Raises:
            AddressInUse: The port is taken.
        """
    def tcp_accept(self, listener: int) -> int | None:
        """The next accepted connection's id, or None."""
    def tcp_status(self, id: int) -> TcpStatus: ...
    def tcp_send(self, id: int, data: bytes) -> int:
        """Copies as much of ``data`` into the send buffer as fits; returns the count.

        Raises:
            NotConnected: The connection can no longer send.
        """
    def tcp_recv(self, id: int, max: int = 262144) -> bytes:
        """Takes up to ``max`` received bytes (``b""`` if none are waiting)."""
    def tcp_shutdown(self, id: int) -> None:
        """Half-close: FIN after the queued bytes."""
    def tcp_abort(self, id: int) -> None:
        """Reset now (RST); queued bytes are dropped."""
    def release(self, id: int) -> None:
        """Gives a socket up (TCP: graceful close, reaped once CLOSED).

        Raises:
            SocketClosed: Already released.
        """
    def udp_bind(self, port: int = 0) -> tuple[int, int]:
        """Binds a UDP socket; returns ``(id, port)``."""
    def udp_send_to(self, id: int, data: bytes, addr: tuple[str, int]) -> None:
        """Queues one datagram.

        Raises:
            DatagramTooLarge: Larger than :meth:`max_datagram`.
            WouldBlock: The send buffer is full.
        """
    def udp_recv_from(self, id: int) -> tuple[bytes, tuple[str, int]] | None: ...
    def max_datagram(self, host: str) -> int:
        """The largest UDP payload to ``host`` that fits one packet."""
    def icmp_open(self) -> int:
        """An ICMP echo socket with its own identifier."""
    def ping_send(self, id: int, host: str, seq: int, payload: bytes) -> None: ...
    def ping_recv(self, id: int) -> tuple[str, int, bytes] | None:
        """One echo reply: ``(host, seq, payload)``."""
    def socket_count(self) -> int: ...
    def stats(self) -> StackStats: ...

class Identity:
    """A node's secp256k1 key; its node id is the Ethereum-style address, as in Golem."""

    @staticmethod
    def generate() -> Identity:
        """A fresh key from the OS's randomness."""
    @staticmethod
    def from_secret(secret: bytes) -> Identity:
        """The identity of a 32-byte secret key.

        Raises:
            IdentityError: Not 32 bytes, or not a valid secp256k1 scalar.
        """
    def secret_bytes(self) -> bytes:
        """The 32-byte secret key (store it with file mode 0600)."""
    @property
    def node_id(self) -> str:
        """``0x`` + the last 20 bytes of keccak256(public key), lowercase hex."""
    @property
    def public_key(self) -> bytes:
        """The 65-byte uncompressed public key."""
    def sign(self, message: bytes) -> bytes:
        """A 65-byte recoverable signature (r || s || v) over ``message``."""
    @staticmethod
    def recover_node_id(message: bytes, signature: bytes) -> str:
        """The node id whose key made ``signature`` over ``message``.

        Raises:
            IdentityError: The signature is malformed or does not verify.
        """

class TunnelStats(TypedDict):
    handshakes_started: int
    handshakes_completed: int
    handshakes_failed: int
    cookies_received: int
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    drops: dict[str, int]

class TransportStats(TypedDict):
    datagrams_in: int
    datagrams_out: int
    send_errors: int
    unknown_network: int
    router_drops: int
    relayed_out: int
    relayed_in: int
    relay_drops: int
    relay_unknown_peer: int
    relay_register_again: int
    relay_strangers_evicted: int
    probes_sent: int
    punched: int
    lanes: int  # receiving lanes running: the node's thread, plus a thread per lane after it
    lane_datagrams: list[int]  # datagrams read by each receiving thread of lanes 1..
    tunnel: TunnelStats

class AttachmentInfo(TypedDict):
    id: int
    kind: str  # "tun" | "vm"
    name: str  # the TUN device's name, or the VM endpoint's URL
    networks: list[str]
    packets_in: int  # payload -> VPN
    bytes_in: int
    packets_out: int  # VPN -> payload
    bytes_out: int
    drops: int
    drop_reasons: dict[str, int]  # no_network, router, write, framing
    broken: bool
    offload: bool  # a TUN device with TSO/GRO (virtio-net headers)
    queues: int  # a TUN device's queues (1 unless multi-queue)
    threads: list[int]  # packets read by each queue's datapath thread ([]: the node's thread reads)

class NodeTransport:
    """One node's UDP transport: a socket, the Noise tunnel endpoint and a router per network,
    driven by a native datapath thread.

    The thread reads the socket, decrypts, checks each packet with its network's router (the
    authenticated sender must own the source address), runs the tunnel's timers, and moves
    the packets of natively attached networks (:meth:`attach_tun`, :meth:`attach_vm`)
    between the attachment and the tunnels without Python. What is left for Python (packets
    of other networks, control messages, peer events) is queued; :meth:`fileno` becomes
    readable when there is some, and :meth:`receive` takes it.
    :class:`golem_vpn.node.transport.UdpTransport` is the asyncio shell around this.
    """

    def __init__(
        self,
        identity: Identity,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keepalive: float | None = None,
        seed: int | None = None,
        lanes: int | None = None,
    ) -> None:
        """``lanes`` (1 to 16; default ``GOLEM_VPN_WORKERS``, else 1): sockets the node
        receives on, in one ``SO_REUSEPORT`` group. Data messages name the lane of the
        sending thread (a TUN queue's); each lane after the first gets a receiving thread
        that opens it and writes to TUN devices on its own, so both directions of a
        node's traffic spread over cores.

        Raises:
            ValueError: ``lanes`` out of range.
        """
    @property
    def node_id(self) -> str: ...
    @property
    def local_addr(self) -> tuple[str, int]: ...
    def fileno(self) -> int:
        """A descriptor that is readable while :meth:`receive` has something."""
    def add_network(
        self,
        network_id: str,
        cidrs: list[str],
        ips: list[str],
        *,
        ethernet: bool = False,
        requestor: str | None = None,
    ) -> None:
        """Joins a network with a router for this node at ``ips``."""
    def remove_network(self, network_id: str) -> bool: ...
    def add_peer(
        self, network_id: str, node_id: str, ip: str, addr: tuple[str, int] | None = None
    ) -> bool:
        """Adds a node to a network and allows its tunnel; ``addr``: its UDP address.

        Raises:
            NetworkNotFound: The network is not joined.
            AddressTaken, AddressOutOfRange, AddressReserved: As for ``Router.add_node``.
        """
    def remove_peer(self, network_id: str, node_id: str) -> bool:
        """Removes a node; if it shares no other network, its session is torn down."""
    def set_peer_address(self, node_id: str, addr: tuple[str, int]) -> None: ...
    def readdress(self, network_id: str, node_id: str, ips: list[str]) -> bool:
        """Gives a node (this one too) exactly ``ips`` in a network, in place (sessions
        kept); False if the node is not in it."""
    def send_packets(self, network_id: str, packets: list[bytes]) -> list[bytes]:
        """Routes, encrypts and sends; returns frames answered locally (ARP/NDP)."""
    def send_control(self, node_id: str, network_id: str, message: bytes) -> None: ...
    def receive(
        self,
    ) -> tuple[list[tuple[str, bytes]], list[tuple[str, str, bytes]], list[tuple[str, str, str]]]:
        """Takes what the datapath thread queued: ``(frames, control, events)``.

        ``frames``: ``(network_id, frame)`` for networks without a native attachment;
        ``control``: ``(sender, network_id, message)``; ``events``:
        ``("up" | "down", node_id, detail)``.
        """
    def set_relay(self, addr: tuple[str, int] | None) -> None:
        """Uses a relay for peers without a direct address; registers at once."""
    @property
    def public_addr(self) -> tuple[str, int] | None:
        """Our address as the relay sees it, once it answered a registration."""
    def set_relays(self, relays: list[tuple[str, int]]) -> None:
        """Several relays in order of preference: registers with all, sends through the first
        that answered lately (so a relay that goes away is replaced by the next)."""
    @property
    def relay(self) -> tuple[str, int] | None:
        """The relay in use."""
    def set_hole_punching(self, enabled: bool) -> None:
        """Whether relayed peers are looked up and probed for a direct path (default on)."""
    def is_relayed(self, node_id: str) -> bool: ...
    def peer_address(self, node_id: str) -> tuple[str, int] | None:
        """Where the tunnel currently sends to the peer (a ``100::`` placeholder if relayed)."""
    def is_up(self, node_id: str) -> bool: ...
    def attach_tun(
        self, name: str, networks: list[str], *, offload: bool = True, queues: int | None = None
    ) -> int:
        """Creates TUN device ``name`` (bare IP packets) in this process's network namespace
        and carries ``networks``' packets through it; returns the attachment id. With
        ``offload`` (TSO in, GRO out) if the kernel agrees. ``queues`` (default
        ``GOLEM_VPN_WORKERS``, else 1; at most 16): more than one makes a multi-queue device
        whose queues each get a datapath thread (routing, sealing and sending in parallel).

        Raises:
            PermissionError: No ``CAP_NET_ADMIN``.
            OSError: The device cannot be made (``EBUSY``: the name is in use).
            NetworkNotFound: A network is not joined.
            AttachError: A network already has an attachment.
        """
    def attach_vm(self, url: str, networks: list[str]) -> tuple[int, str]:
        """Opens a VM frame endpoint (``udp://``, ``tcp-listen://``, ``tcp-connect://``,
        ``unix://``) for ``networks`` (joined with ``ethernet=True``); returns
        ``(attachment id, the endpoint URL for the runtime)``."""
    def detach(self, attachment: int) -> bool:
        """Closes an attachment (a TUN device is deleted); False if unknown."""
    def attachments(self) -> list[AttachmentInfo]: ...
    def close(self) -> None:
        """Stops the datapath thread (idempotent)."""
    @property
    def running(self) -> bool:
        """True while the datapath thread runs."""
    def stats(self) -> TransportStats: ...

class RelayStats(TypedDict):
    registered: int
    bad_registrations: int
    forwarded: int
    forwarded_bytes: int
    unregistered_sender: int
    unknown_destination: int
    malformed: int
    lookups: int
    send_errors: int
    registrations: int

class Relay:
    """A relay on a UDP socket: signed registrations, forwarding by node id.

    Call :meth:`process` when the socket is readable and :meth:`expire` now and then;
    :class:`golem_vpn.node.relay.RelayService` does both on an asyncio loop.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 7464) -> None: ...
    @property
    def local_addr(self) -> tuple[str, int]: ...
    def fileno(self) -> int: ...
    def process(self, max: int = 4096) -> int:
        """Reads up to ``max`` datagrams, sends replies and forwards; returns the count."""
    def expire(self) -> None: ...
    def registrations(self) -> int: ...
    def stats(self) -> RelayStats: ...
