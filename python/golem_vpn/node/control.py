"""The control channel: reliable, ordered membership messages between two node daemons.

This module is the node layer's sans-IO core for issue 4 item 5. The requestor's daemon tells
each provider about node additions and removals (yagna's ``VpnControl::AddNodes`` /
``RemoveNodes``), network removal and full resyncs; the tunnel below carries opaque datagrams
between authenticated node ids and may drop, duplicate or reorder them. A
:class:`ControlChannel` (one per peer node) turns that into exactly-once, in-order delivery per
(peer, network), so a provider never misses a node: the race of yapapi issue 664 (a provider
that never learns about a node added right after it) cannot happen. Nothing here does I/O or
reads a clock: bytes and the current time go in, bytes and the next deadline come out.

Messages (the JSON body, yagna's externally tagged camelCase shape)::

    {"addNodes": {"networkId": "...", "nodes": {"192.168.0.3": "0x..."}}}
    {"removeNodes": {"networkId": "...", "nodeIds": ["0x..."]}}
    {"removeNetwork": {"networkId": "..."}}      # ours: yagna never tells providers
    {"snapshot": {"networkId": "...", "nodes": {...}}}  # ours: full membership, for resync

Frames (one tunnel datagram each; integers big-endian)::

    off   size  field
    0     1     version (1)
    1     1     kind: 1 DATA, 2 ACK
    2     8     src_epoch: the sending channel instance (random, never 0)
    10    8     dst_epoch: the receiving instance as the sender knows it (0: not known yet)
    18    1     n: length of the network id (1..128)
    19    n     network id (ASCII, ``model.NETWORK_ID_RE``)
    DATA  +0  8 seq: per (peer, network, direction), from 1
          +8  8 base: the lowest seq the sender still holds (1 <= base <= seq)
          +16 1 flags: bit 0 LAST (this frame ends a message); other bits 0
          +17 . body: the message's UTF-8 JSON, or one fragment of it (never empty)
    ACK   +0  8 cum: every seq <= cum was received (0: none)
          +8  8 sack: bit i set means seq cum + 2 + i was received too

Reliability: selective repeat with a window of ``window`` frames per network. Each frame has
its own retransmission timer, ``rto * 2**retries`` capped at ``max_rto``; the RTO is estimated
as in RFC 6298 (Karn's rule: no samples from retransmitted frames), clamped to
[``min_rto``, ``max_rto``]. ACKs are not delayed by a timer: a DATA frame marks its network's
ACK as due and the next :meth:`ControlChannel.poll_transmit` sends one cumulative ACK per
network, so a daemon that drains a batch of datagrams before polling coalesces them for free.
Selective acks are advisory: a sacked frame is not retransmitted while the peer keeps sacking
it, but it stays queued until the cumulative ack passes it (the peer may drop its out-of-order
buffer, see :meth:`ControlChannel.reset_network`). Messages larger than one frame are split
into consecutive seqs, the last one flagged LAST, and reassembled before delivery.

Epochs (peer restarts): each channel instance draws a random 64-bit epoch. Every frame carries
the sender's epoch and the receiver's epoch as the sender knows it. A DATA frame is delivered
only if its ``dst_epoch`` is this instance's; otherwise (``0`` on first contact, or an older
instance of ours) it is answered with an ACK that teaches the sender our epoch, and the sender
sends again at once. A frame with a new ``src_epoch`` means the peer restarted: every
network's receive state is reset (the new peer starts at seq 1), our unacked messages are
renumbered from seq 1 and sent to the new instance, the old epoch is retired (its late frames
are ignored), and :meth:`ControlChannel.take_peer_restarted` returns True once, so the
requestor's daemon can send a :class:`Snapshot` of every network it shares with that peer
(the new instance lost everything it had been told). A restarted requestor daemon sends
Snapshots itself when it comes back, since its new channels have no previous peer to compare.

Memory: per network, at most ``window`` out-of-order frames are buffered (a DATA frame beyond
the window is dropped unacked and the peer sends it again later), a message being reassembled
is at most ``max_message_size`` bytes, and the messages queued or unacked take at most
``max_pending_bytes``: :meth:`ControlChannel.send` raises :class:`~golem_vpn.errors.WouldBlock`
beyond that, so an accepted message is never dropped silently. Sequence counters (a few
integers per network) live as long as the channel, so late frames of a finished network are
still recognised as duplicates; a daemon drops the whole channel when it shares no network
with the peer.

:class:`Membership` applies delivered messages to a view of each network's nodes; tests use it
to show that every provider ends with the requestor's view whatever the link does.
"""

from __future__ import annotations

import json
import secrets
import struct
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

from golem_vpn.errors import ControlMessageError, GolemVpnError, NetworkNotFound, WouldBlock
from golem_vpn.model import NETWORK_ID_RE, parse_ip, parse_node_id

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_WINDOW",
    "INITIAL_RTO",
    "MAX_RTO",
    "MIN_RTO",
    "PROTOCOL_VERSION",
    "AckFrame",
    "AddNodes",
    "Change",
    "ControlChannel",
    "ControlMessage",
    "ControlMessageError",
    "ControlStats",
    "DataFrame",
    "Frame",
    "FrameKind",
    "Membership",
    "NetworkRemoved",
    "NodeAdded",
    "NodeRemoved",
    "RemoveNetwork",
    "RemoveNodes",
    "Snapshot",
    "decode_frame",
    "encode_frame",
    "encode_message",
    "parse_message",
]

PROTOCOL_VERSION = 1
#: Frames in flight per network (sender) and buffered out of order per network (receiver).
DEFAULT_WINDOW = 64
#: Fits a tunnel datagram with room for the tunnel's own header and AEAD tag.
DEFAULT_MAX_FRAME_SIZE = 1200
DEFAULT_MAX_MESSAGE_SIZE = 256 * 1024
DEFAULT_MAX_PENDING_BYTES = 1024 * 1024
INITIAL_RTO = 1.0
MIN_RTO = 0.2
MAX_RTO = 10.0

_MAX_U64 = (1 << 64) - 1
_SACK_BITS = 64
_FLAG_LAST = 0x01
_CLOCK_GRANULARITY = 0.001
_RETIRED_EPOCHS = 16
_HEADER = struct.Struct(">BBQQB")  # version, kind, src_epoch, dst_epoch, network id length
_DATA = struct.Struct(">QQB")  # seq, base, flags
_ACK = struct.Struct(">QQ")  # cum, sack


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- messages ----------------------------------------------------------------------------------


def _check_network_id(value: object, path: str) -> str:
    if isinstance(value, str) and NETWORK_ID_RE.fullmatch(value):
        return value
    raise ControlMessageError(
        f"{path}: {_show(value)} is not a network id (1-128 characters of A-Z, a-z, 0-9, _ -)"
    )


def _check_node_id(value: object, path: str) -> str:
    try:
        return parse_node_id(value)
    except GolemVpnError as exc:
        raise ControlMessageError(f"{path}: {exc}") from None


def _check_node_ip(value: object, path: str) -> str:
    """Return the canonical text of a node address; reject what yagna's ``to_ip`` rejects."""
    try:
        addr = parse_ip(value)
    except GolemVpnError as exc:
        raise ControlMessageError(f"{path}: {exc}") from None
    if (
        addr.is_unspecified
        or addr.is_loopback
        or addr.is_multicast
        or addr == IPv4Address("255.255.255.255")
    ):
        raise ControlMessageError(f"{path}: '{addr}' cannot name a node")
    return str(addr)


def _check_nodes(value: object, path: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ControlMessageError(
            f"{path}: expected an object of ip -> node id, got {_show(value)}"
        )
    nodes: dict[str, str] = {}
    for ip, node_id in value.items():
        where = f"{path}[{_show(ip)}]"
        canonical = _check_node_ip(ip, where)
        if canonical in nodes:
            raise ControlMessageError(f"{where}: the address '{canonical}' is given twice")
        nodes[canonical] = _check_node_id(node_id, where)
    return MappingProxyType(nodes)


@dataclass(frozen=True)
class AddNodes:
    """Nodes joined a network: yagna's ``VpnControl::AddNodes``.

    Attributes:
        network_id: The network.
        nodes: Virtual IP (canonical text) -> node id (lowercase); read-only, never empty.
    """

    TAG: ClassVar[str] = "addNodes"
    network_id: str
    nodes: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "network_id", _check_network_id(self.network_id, "addNodes.networkId")
        )
        nodes = _check_nodes(self.nodes, "addNodes.nodes")
        if not nodes:
            raise ControlMessageError("addNodes.nodes: no nodes")
        object.__setattr__(self, "nodes", nodes)

    def __hash__(self) -> int:
        return hash((self.TAG, self.network_id, frozenset(self.nodes.items())))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: ``{"addNodes": {"networkId": ..., "nodes": {ip: nodeId}}}``."""
        return {self.TAG: {"networkId": self.network_id, "nodes": dict(self.nodes)}}


@dataclass(frozen=True)
class RemoveNodes:
    """Nodes left a network (all their addresses): yagna's ``VpnControl::RemoveNodes``.

    Attributes:
        network_id: The network.
        node_ids: The node ids (lowercase, distinct, never empty), as a tuple.
    """

    TAG: ClassVar[str] = "removeNodes"
    network_id: str
    node_ids: Sequence[str]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "network_id", _check_network_id(self.network_id, "removeNodes.networkId")
        )
        if isinstance(self.node_ids, str | bytes) or not isinstance(self.node_ids, Sequence):
            raise ControlMessageError(
                f"removeNodes.nodeIds: expected a list of node ids, got {_show(self.node_ids)}"
            )
        ids: dict[str, None] = {}  # ordered set
        for i, node_id in enumerate(self.node_ids):
            canonical = _check_node_id(node_id, f"removeNodes.nodeIds[{i}]")
            if canonical in ids:
                raise ControlMessageError(f"removeNodes.nodeIds[{i}]: {canonical!r} is given twice")
            ids[canonical] = None
        if not ids:
            raise ControlMessageError("removeNodes.nodeIds: no node ids")
        object.__setattr__(self, "node_ids", tuple(ids))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: ``{"removeNodes": {"networkId": ..., "nodeIds": [...]}}``."""
        return {self.TAG: {"networkId": self.network_id, "nodeIds": list(self.node_ids)}}


@dataclass(frozen=True)
class RemoveNetwork:
    """The network was removed; the receiver drops it. Ours: yagna never tells providers.

    Attributes:
        network_id: The network.
    """

    TAG: ClassVar[str] = "removeNetwork"
    network_id: str

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "network_id", _check_network_id(self.network_id, "removeNetwork.networkId")
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object: ``{"removeNetwork": {"networkId": ...}}``."""
        return {self.TAG: {"networkId": self.network_id}}


@dataclass(frozen=True)
class Snapshot:
    """The full membership of a network, replacing what the receiver knew. Ours.

    Sent to resync a peer that restarted (see :meth:`ControlChannel.take_peer_restarted`) and
    to a node that joins, so it needs no other history.

    Attributes:
        network_id: The network.
        nodes: Virtual IP (canonical text) -> node id (lowercase); read-only, may be empty.
    """

    TAG: ClassVar[str] = "snapshot"
    network_id: str
    nodes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "network_id", _check_network_id(self.network_id, "snapshot.networkId")
        )
        object.__setattr__(self, "nodes", _check_nodes(self.nodes, "snapshot.nodes"))

    def __hash__(self) -> int:
        return hash((self.TAG, self.network_id, frozenset(self.nodes.items())))

    def to_json(self) -> dict[str, Any]:
        """The JSON object: ``{"snapshot": {"networkId": ..., "nodes": {ip: nodeId}}}``."""
        return {self.TAG: {"networkId": self.network_id, "nodes": dict(self.nodes)}}


ControlMessage: TypeAlias = AddNodes | RemoveNodes | RemoveNetwork | Snapshot

_FIELDS: dict[str, tuple[type[ControlMessage], tuple[str, ...]]] = {
    AddNodes.TAG: (AddNodes, ("networkId", "nodes")),
    RemoveNodes.TAG: (RemoveNodes, ("networkId", "nodeIds")),
    RemoveNetwork.TAG: (RemoveNetwork, ("networkId",)),
    Snapshot.TAG: (Snapshot, ("networkId", "nodes")),
}


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ControlMessageError(f"duplicate key {_show(key)} in a JSON object")
            seen.add(key)
    return obj


def _loads(text: str | bytes | bytearray | memoryview) -> object:
    try:
        if not isinstance(text, str):
            text = bytes(text).decode("utf-8")
        return json.loads(text, object_pairs_hook=_pairs_hook)
    except ControlMessageError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ControlMessageError(f"not a JSON control message: {exc}") from None


def parse_message(obj: object) -> ControlMessage:
    """Parse a control message from its JSON object, or from JSON text (``str`` or UTF-8 bytes).

    Parsing is strict: exactly one of the four tags, exactly the fields of that message, no
    repeated keys, valid network ids, node ids and node addresses (not unspecified, loopback,
    multicast or 255.255.255.255, as yagna's ``to_ip``), no empty ``addNodes`` or
    ``removeNodes``, no address or node id given twice.

    Raises:
        ControlMessageError: the input is not a control message; the message names the field.
    """
    if isinstance(obj, str | bytes | bytearray | memoryview):
        obj = _loads(obj)
    if not isinstance(obj, dict) or len(obj) != 1:
        raise ControlMessageError(
            f"a control message is an object with one key of {sorted(_FIELDS)}, got {_show(obj)}"
        )
    ((tag, body),) = obj.items()
    if tag not in _FIELDS:
        raise ControlMessageError(f"unknown control message {_show(tag)}")
    cls, names = _FIELDS[tag]
    if not isinstance(body, dict):
        raise ControlMessageError(f"{tag}: expected an object, got {_show(body)}")
    missing = [name for name in names if name not in body]
    if missing:
        raise ControlMessageError(f"{tag}: missing field {missing[0]!r}")
    extra = [key for key in body if key not in names]
    if extra:
        raise ControlMessageError(f"{tag}: unknown field {_show(extra[0])}")
    return cls(*(body[name] for name in names))


def encode_message(message: ControlMessage) -> bytes:
    """Return the message's compact UTF-8 JSON (the DATA body)."""
    return json.dumps(message.to_json(), separators=(",", ":")).encode()


# --- frames ------------------------------------------------------------------------------------


class FrameKind(IntEnum):
    """The ``kind`` byte of a frame."""

    DATA = 1
    ACK = 2


def _check_u64(value: int, name: str, low: int = 0) -> None:
    if not low <= value <= _MAX_U64:
        raise ControlMessageError(f"frame {name} {value} is outside {low}..2**64-1")


def _check_common(src_epoch: int, dst_epoch: int, network_id: str) -> None:
    _check_u64(src_epoch, "src_epoch", 1)
    _check_u64(dst_epoch, "dst_epoch")
    _check_network_id(network_id, "frame network id")


@dataclass(frozen=True, slots=True)
class DataFrame:
    """A DATA frame: one message, or one fragment of it (see the module docs for the layout)."""

    src_epoch: int
    dst_epoch: int
    network_id: str
    seq: int
    base: int
    last: bool
    body: bytes

    def __post_init__(self) -> None:
        _check_common(self.src_epoch, self.dst_epoch, self.network_id)
        _check_u64(self.seq, "seq", 1)
        if not 1 <= self.base <= self.seq:
            raise ControlMessageError(f"frame base {self.base} is outside 1..seq ({self.seq})")
        if not self.body:
            raise ControlMessageError("DATA frame without a body")


@dataclass(frozen=True, slots=True)
class AckFrame:
    """An ACK frame: the cumulative ack and a bitmap of the next 64 seqs after ``cum + 1``."""

    src_epoch: int
    dst_epoch: int
    network_id: str
    cum: int
    sack: int

    def __post_init__(self) -> None:
        _check_common(self.src_epoch, self.dst_epoch, self.network_id)
        _check_u64(self.cum, "cum")
        _check_u64(self.sack, "sack")


Frame: TypeAlias = DataFrame | AckFrame


def _header_size(network_id: str) -> int:
    return _HEADER.size + len(network_id) + _DATA.size


def encode_frame(frame: Frame) -> bytes:
    """Return the frame's bytes (layout in the module docs)."""
    net = frame.network_id.encode("ascii")
    if isinstance(frame, DataFrame):
        head = _HEADER.pack(
            PROTOCOL_VERSION, FrameKind.DATA, frame.src_epoch, frame.dst_epoch, len(net)
        )
        flags = _FLAG_LAST if frame.last else 0
        return head + net + _DATA.pack(frame.seq, frame.base, flags) + frame.body
    head = _HEADER.pack(PROTOCOL_VERSION, FrameKind.ACK, frame.src_epoch, frame.dst_epoch, len(net))
    return head + net + _ACK.pack(frame.cum, frame.sack)


def decode_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Parse a frame. Garbage of any kind raises :class:`ControlMessageError`, nothing else.

    The body of a DATA frame is not parsed here: it may be one fragment of a message.

    Raises:
        ControlMessageError: ``data`` is not a frame of this protocol version.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ControlMessageError(f"a frame is bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) < _HEADER.size:
        raise ControlMessageError(f"frame of {len(raw)} bytes is shorter than its header")
    version, kind, src_epoch, dst_epoch, length = _HEADER.unpack_from(raw)
    if version != PROTOCOL_VERSION:
        raise ControlMessageError(f"unsupported frame version {version}")
    end = _HEADER.size + length
    if len(raw) < end:
        raise ControlMessageError("frame cut inside its network id")
    try:
        network_id = raw[_HEADER.size : end].decode("ascii")
    except UnicodeDecodeError:
        raise ControlMessageError("frame network id is not ASCII") from None
    if kind == FrameKind.DATA:
        if len(raw) < end + _DATA.size:
            raise ControlMessageError("DATA frame cut inside its header")
        seq, base, flags = _DATA.unpack_from(raw, end)
        if flags & ~_FLAG_LAST:
            raise ControlMessageError(f"DATA frame has unknown flags {flags:#04x}")
        body = raw[end + _DATA.size :]
        return DataFrame(src_epoch, dst_epoch, network_id, seq, base, bool(flags), body)
    if kind == FrameKind.ACK:
        if len(raw) != end + _ACK.size:
            raise ControlMessageError(f"ACK frame of {len(raw)} bytes, expected {end + _ACK.size}")
        cum, sack = _ACK.unpack_from(raw, end)
        return AckFrame(src_epoch, dst_epoch, network_id, cum, sack)
    raise ControlMessageError(f"unknown frame kind {kind}")


# --- the channel -------------------------------------------------------------------------------


@dataclass
class ControlStats:
    """Counters of a :class:`ControlChannel` (a snapshot; :meth:`ControlChannel.stats`).

    Attributes:
        sent: DATA frames sent for the first time (to the peer's current instance).
        retransmitted: DATA frames sent again after their timer expired.
        delivered: Messages returned by :meth:`ControlChannel.receive`.
        duplicates: DATA frames received again; re-acked, never re-delivered.
        acks_sent: ACK frames sent.
        acks_received: ACK frames processed.
        out_of_window: DATA frames beyond the receive window, dropped unacked.
        stale: Frames from a retired peer instance, and DATA frames not addressed to this
            instance (first-contact probes included); never delivered.
        malformed: Reassembled messages that did not parse, or grew past
            ``max_message_size``; dropped (a peer bug).
        skipped: Sequence numbers the peer abandoned (its :meth:`ControlChannel.reset_network`).
        abandoned: Our messages dropped by :meth:`ControlChannel.reset_network`.
        peer_restarts: Times the peer came back with a new epoch.
    """

    sent: int = 0
    retransmitted: int = 0
    delivered: int = 0
    duplicates: int = 0
    acks_sent: int = 0
    acks_received: int = 0
    out_of_window: int = 0
    stale: int = 0
    malformed: int = 0
    skipped: int = 0
    abandoned: int = 0
    peer_restarts: int = 0


@dataclass(slots=True)
class _Outgoing:
    seq: int
    first: bool  # starts a message
    last: bool  # ends a message
    body: bytes
    deadline: float  # when unsent: the time it became ready; else: the retransmission time
    sent_at: float | None = None
    retries: int = 0
    sacked: bool = False


@dataclass(slots=True)
class _SendStream:
    next_seq: int = 1
    frames: dict[int, _Outgoing] = field(default_factory=dict)  # seq ascending
    pending_bytes: int = 0


@dataclass(slots=True)
class _RecvStream:
    expected: int = 1
    buffer: dict[int, tuple[bool, bytes]] = field(default_factory=dict)
    partial: list[bytes] = field(default_factory=list)
    partial_size: int = 0
    discarding: bool = False  # dropping the rest of an oversized message
    ack_due: float | None = None


class ControlChannel:
    """The reliable control channel to one peer node, for every network shared with it.

    Sans-IO: call :meth:`send` to queue messages, feed every datagram from the peer to
    :meth:`receive`, send what :meth:`poll_transmit` returns, and call it again at
    :meth:`poll_at`. Times are float seconds on any monotonic clock, passed in.

    Args:
        peer_id: The remote node id (the tunnel authenticated it; it is not on the wire).
        epoch: This instance's epoch (1..2**64-1); random by default. Tests pass it to be
            deterministic; a daemon leaves it random so that a restart is noticed.
        window: Frames in flight per network, and out-of-order frames buffered per network.
        max_frame_size: Largest datagram to emit; longer messages are fragmented.
        max_message_size: Largest message JSON accepted by :meth:`send` and reassembled.
        max_pending_bytes: Queued and unacked message bytes per network before :meth:`send`
            raises :class:`~golem_vpn.errors.WouldBlock`.
        initial_rto: The retransmission timeout before the first RTT sample.
        min_rto: The lower bound of the RTO.
        max_rto: The upper bound of the RTO and of its exponential backoff.

    Raises:
        InvalidNodeId: ``peer_id`` is not a node id.
        ControlMessageError: a setting is out of range.
    """

    def __init__(
        self,
        peer_id: str,
        *,
        epoch: int | None = None,
        window: int = DEFAULT_WINDOW,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        initial_rto: float = INITIAL_RTO,
        min_rto: float = MIN_RTO,
        max_rto: float = MAX_RTO,
    ) -> None:
        self._peer_id = parse_node_id(peer_id)
        if epoch is None:
            epoch = 0
            while epoch == 0:
                epoch = secrets.randbits(64)
        _check_u64(epoch, "epoch", 1)
        if not 1 <= window <= _SACK_BITS:
            raise ControlMessageError(f"window {window} is outside 1..{_SACK_BITS}")
        if max_frame_size < 256:
            raise ControlMessageError(f"max_frame_size {max_frame_size} is below 256")
        if not 1 <= max_message_size <= max_pending_bytes:
            raise ControlMessageError("need 1 <= max_message_size <= max_pending_bytes")
        if not 0 < min_rto <= initial_rto <= max_rto:
            raise ControlMessageError("need 0 < min_rto <= initial_rto <= max_rto")
        self._epoch = epoch
        self._window = window
        self._max_frame_size = max_frame_size
        self._max_message_size = max_message_size
        self._max_pending_bytes = max_pending_bytes
        self._min_rto = min_rto
        self._max_rto = max_rto
        self._rto = initial_rto
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._peer_epoch: int | None = None
        self._retired: deque[int] = deque(maxlen=_RETIRED_EPOCHS)
        self._restarted = False
        self._send: dict[str, _SendStream] = {}
        self._recv: dict[str, _RecvStream] = {}
        self._stats = ControlStats()

    def __repr__(self) -> str:
        return f"ControlChannel(peer_id={self._peer_id!r}, epoch={self._epoch:#018x})"

    @property
    def peer_id(self) -> str:
        """The remote node id."""
        return self._peer_id

    @property
    def epoch(self) -> int:
        """This instance's epoch."""
        return self._epoch

    @property
    def peer_epoch(self) -> int | None:
        """The peer instance's epoch, once a frame from it arrived."""
        return self._peer_epoch

    @property
    def rto(self) -> float:
        """The current retransmission timeout (before per-frame backoff)."""
        return self._rto

    @property
    def srtt(self) -> float | None:
        """The smoothed round-trip time, once measured."""
        return self._srtt

    def stats(self) -> ControlStats:
        """A snapshot of the counters."""
        return replace(self._stats)

    def pending(self, network_id: str) -> int:
        """Messages of ``network_id`` queued or sent but not yet acknowledged."""
        stream = self._send.get(network_id)
        return 0 if stream is None else sum(f.last for f in stream.frames.values())

    def take_peer_restarted(self) -> bool:
        """True once after the peer came back with a new epoch (it lost its state).

        The requestor's daemon then sends a :class:`Snapshot` of each network it shares with
        the peer. Our messages that the old instance had not acknowledged are sent to the new
        one anyway, before anything queued later.
        """
        restarted, self._restarted = self._restarted, False
        return restarted

    # -- sending --

    def send(self, message: ControlMessage, now: float) -> None:
        """Queue a message; it is delivered after every message queued before for its network.

        Raises:
            ControlMessageError: its JSON is longer than ``max_message_size``.
            WouldBlock: the network already has ``max_pending_bytes`` queued or unacked;
                retry after acks came in (see :meth:`pending`). Nothing was queued.
        """
        body = encode_message(message)
        if len(body) > self._max_message_size:
            raise ControlMessageError(
                f"{message.TAG} of {len(body)} bytes exceeds max_message_size "
                f"({self._max_message_size})"
            )
        stream = self._send.setdefault(message.network_id, _SendStream())
        if stream.pending_bytes + len(body) > self._max_pending_bytes:
            raise WouldBlock(
                f"control queue of network {message.network_id!r} to {self._peer_id} is full "
                f"({stream.pending_bytes} bytes unacknowledged)"
            )
        chunk = self._max_frame_size - _header_size(message.network_id)
        for start in range(0, len(body), chunk):
            piece = body[start : start + chunk]
            last = start + chunk >= len(body)
            outgoing = _Outgoing(stream.next_seq, start == 0, last, piece, now)
            stream.frames[stream.next_seq] = outgoing
            stream.next_seq += 1
        stream.pending_bytes += len(body)

    def announce(self, network_id: str, now: float) -> None:
        """Have the next :meth:`poll_transmit` send an ACK of ``network_id`` though nothing
        arrived: it carries this instance's epoch, so a peer that knew an earlier instance
        sees the restart at once (:meth:`take_peer_restarted`) rather than when it next sends
        us something. A provider's daemon announces itself to the requestor of every network
        it joins, and the requestor resyncs it with a :class:`Snapshot` (its DEPLOY may
        predate nodes added since). An ACK of nothing changes nothing at the peer otherwise;
        before we know the peer's epoch it is addressed to 0.
        """
        recv = self._recv.setdefault(network_id, _RecvStream())
        if recv.ack_due is None:
            recv.ack_due = now

    def reset_network(self, network_id: str) -> int:
        """Forget what is in flight for a network, e.g. once it was removed.

        Our queued and unacknowledged messages of the network are abandoned; the next DATA
        frame of the network tells the peer to skip their sequence numbers (its ``base``).
        Out-of-order frames buffered from the peer are dropped; the peer still holds them
        (selective acks are advisory) and sends them again if it still wants them delivered.
        Sequence counters are kept, so late frames are still recognised.

        Returns:
            The number of our messages abandoned.
        """
        abandoned = 0
        stream = self._send.get(network_id)
        if stream is not None:
            abandoned = sum(f.last for f in stream.frames.values())
            stream.frames.clear()
            stream.pending_bytes = 0
            self._stats.abandoned += abandoned
        recv = self._recv.get(network_id)
        if recv is not None:
            recv.buffer.clear()
        return abandoned

    def _window_frames(self, stream: _SendStream) -> Iterable[_Outgoing]:
        """The frames the window lets us send: ``window`` from the lowest unacked seq.

        Until the peer's epoch is known only the lowest one goes, as a probe: the peer drops
        DATA not addressed to it and answers with its epoch.
        """
        if not stream.frames:
            return ()
        base = next(iter(stream.frames))
        limit = base + (self._window if self._peer_epoch is not None else 1)
        out: list[_Outgoing] = []
        for seq, frame in stream.frames.items():
            if seq >= limit:
                break
            out.append(frame)
        return out

    def poll_transmit(self, now: float) -> list[bytes]:
        """Return the frames to send now: due ACKs, then expired retransmissions and new DATA.

        Each DATA frame's timer is ``rto * 2**retries``, capped at ``max_rto``.
        """
        out: list[bytes] = []
        for network_id, recv in self._recv.items():
            if recv.ack_due is not None:
                out.append(encode_frame(self._ack_frame(network_id, recv)))
                recv.ack_due = None
                self._stats.acks_sent += 1
        dst = self._peer_epoch or 0
        for network_id, stream in self._send.items():
            base = next(iter(stream.frames), stream.next_seq)
            for frame in self._window_frames(stream):
                if frame.deadline > now:
                    continue
                if frame.sent_at is None:
                    self._stats.sent += 1
                else:
                    frame.retries += 1
                    frame.sacked = False
                    self._stats.retransmitted += 1
                frame.sent_at = now
                frame.deadline = now + min(self._rto * 2**frame.retries, self._max_rto)
                data = DataFrame(
                    self._epoch, dst, network_id, frame.seq, base, frame.last, frame.body
                )
                out.append(encode_frame(data))
        return out

    def poll_at(self) -> float | None:
        """When :meth:`poll_transmit` has something to send next; None: nothing to do.

        A time at or before the current time means: now.
        """
        at: float | None = None
        for recv in self._recv.values():
            if recv.ack_due is not None and (at is None or recv.ack_due < at):
                at = recv.ack_due
        for stream in self._send.values():
            for frame in self._window_frames(stream):
                if at is None or frame.deadline < at:
                    at = frame.deadline
        return at

    # -- receiving --

    def receive(self, frame: bytes | bytearray | memoryview, now: float) -> list[ControlMessage]:
        """Process one datagram from the peer; return the messages it completes, in order.

        A DATA frame is buffered if it is early, delivered with every buffered frame it
        unblocks, and acked at the next :meth:`poll_transmit` (duplicates too, so a lost ACK is
        repaired, but they are never delivered again). An ACK frees acknowledged frames and
        feeds the RTT estimate. Frames of a retired peer instance are ignored.

        Raises:
            ControlMessageError: ``frame`` is not a frame; nothing changed.
        """
        decoded = decode_frame(frame)
        src = decoded.src_epoch
        if src in self._retired:
            self._stats.stale += 1
            return []
        if self._peer_epoch is None:
            self._peer_epoch = src
            self._rewind(now)
        elif src != self._peer_epoch:
            self._on_peer_restart(src, now)
        if isinstance(decoded, AckFrame):
            if decoded.dst_epoch == self._epoch:
                self._on_ack(decoded, now)
            else:
                self._stats.stale += 1
            return []
        recv = self._recv.setdefault(decoded.network_id, _RecvStream())
        if recv.ack_due is None:
            recv.ack_due = now
        if decoded.dst_epoch != self._epoch:
            self._stats.stale += 1  # the ACK tells the sender who we are
            return []
        return self._on_data(recv, decoded)

    def _rewind(self, now: float) -> None:
        """Make every held frame unsent: the peer instance we now know never accepted it."""
        for stream in self._send.values():
            for frame in stream.frames.values():
                frame.sent_at = None
                frame.retries = 0
                frame.sacked = False
                frame.deadline = now

    def _on_peer_restart(self, epoch: int, now: float) -> None:
        assert self._peer_epoch is not None
        self._retired.append(self._peer_epoch)
        self._peer_epoch = epoch
        self._restarted = True
        self._stats.peer_restarts += 1
        self._recv.clear()
        for stream in self._send.values():
            frames = list(stream.frames.values())
            # A tail whose head the old instance acked would arrive headless: drop it.
            while frames and not frames[0].first:
                stream.pending_bytes -= len(frames.pop(0).body)
            stream.frames = {}
            for seq, frame in enumerate(frames, start=1):
                frame.seq = seq
                stream.frames[seq] = frame
            stream.next_seq = len(frames) + 1
        self._rewind(now)

    def _on_ack(self, ack: AckFrame, now: float) -> None:
        stream = self._send.get(ack.network_id)
        if stream is None or ack.cum >= stream.next_seq:
            return  # nothing of ours, or an ack of seqs never sent: ignore
        self._stats.acks_received += 1
        sample: _Outgoing | None = None
        frames = stream.frames
        while frames:
            seq = next(iter(frames))
            if seq > ack.cum:
                break
            frame = frames.pop(seq)
            stream.pending_bytes -= len(frame.body)
            if not frame.sacked and frame.sent_at is not None and frame.retries == 0:
                sample = frame
        for bit in range(_SACK_BITS):
            if not ack.sack >> bit & 1:
                continue
            held = frames.get(ack.cum + 2 + bit)
            if held is None or held.sent_at is None:
                continue
            fresh = not held.sacked and held.retries == 0
            if fresh and (sample is None or held.seq > sample.seq):
                sample = held
            held.sacked = True  # advisory: not resent while the peer keeps sacking it
            held.deadline = now + self._max_rto
        if sample is not None and sample.sent_at is not None:
            self._sample_rtt(now - sample.sent_at)

    def _sample_rtt(self, rtt: float) -> None:
        """Update SRTT, RTTVAR and RTO as RFC 6298 section 2 does."""
        if rtt < 0:
            return
        if self._srtt is None:
            self._srtt = rtt
            self._rttvar = rtt / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - rtt)
            self._srtt = 0.875 * self._srtt + 0.125 * rtt
        rto = self._srtt + max(_CLOCK_GRANULARITY, 4 * self._rttvar)
        self._rto = min(max(rto, self._min_rto), self._max_rto)

    def _ack_frame(self, network_id: str, recv: _RecvStream) -> AckFrame:
        cum = recv.expected - 1
        sack = 0
        for seq in recv.buffer:
            bit = seq - cum - 2
            if 0 <= bit < _SACK_BITS:
                sack |= 1 << bit
        # An ACK answers a frame from the peer, or announces us (dst 0: epoch not known yet).
        return AckFrame(self._epoch, self._peer_epoch or 0, network_id, cum, sack)

    def _on_data(self, recv: _RecvStream, frame: DataFrame) -> list[ControlMessage]:
        if frame.base > recv.expected:  # the peer abandoned [expected, base)
            self._stats.skipped += frame.base - recv.expected
            recv.buffer = {s: v for s, v in recv.buffer.items() if s >= frame.base}
            recv.partial.clear()
            recv.partial_size = 0
            recv.discarding = False
            recv.expected = frame.base
        seq = frame.seq
        if seq < recv.expected or seq in recv.buffer:
            self._stats.duplicates += 1
            return []
        if seq >= recv.expected + self._window:
            self._stats.out_of_window += 1
            return []
        recv.buffer[seq] = (frame.last, frame.body)
        out: list[ControlMessage] = []
        while recv.expected in recv.buffer:
            last, body = recv.buffer.pop(recv.expected)
            recv.expected += 1
            message = self._reassemble(recv, frame.network_id, last, body)
            if message is not None:
                out.append(message)
        self._stats.delivered += len(out)
        return out

    def _reassemble(
        self, recv: _RecvStream, network_id: str, last: bool, body: bytes
    ) -> ControlMessage | None:
        if recv.discarding:
            recv.discarding = not last
            return None
        recv.partial.append(body)
        recv.partial_size += len(body)
        if recv.partial_size > self._max_message_size:
            self._stats.malformed += 1
            recv.partial.clear()
            recv.partial_size = 0
            recv.discarding = not last
            return None
        if not last:
            return None
        data = b"".join(recv.partial)
        recv.partial.clear()
        recv.partial_size = 0
        try:
            message = parse_message(data)
        except ControlMessageError:
            self._stats.malformed += 1
            return None
        if message.network_id != network_id:
            self._stats.malformed += 1
            return None
        return message


# --- membership --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeAdded:
    """``node_id`` now holds ``ip`` in the network."""

    network_id: str
    ip: str
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeRemoved:
    """``node_id`` no longer holds ``ip`` in the network."""

    network_id: str
    ip: str
    node_id: str


@dataclass(frozen=True, slots=True)
class NetworkRemoved:
    """The network is gone, with all its nodes."""

    network_id: str


Change: TypeAlias = NodeAdded | NodeRemoved | NetworkRemoved


class Membership:
    """Who holds which address in each network, built by applying control messages in order.

    A provider's daemon applies what its :class:`ControlChannel` to the requestor delivers and
    turns the returned changes into routes; the requestor applies what it sends, so both views
    stay equal. The requestor is the authority, so conflicts resolve to the newest message: an
    ``addNodes`` entry for an address another node holds replaces that node there. A message
    about an unknown network creates it (``addNodes``, ``snapshot``) or changes nothing.
    """

    def __init__(self) -> None:
        self._networks: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"Membership({self._networks!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Membership):
            return NotImplemented
        return self._networks == other._networks

    __hash__ = None  # type: ignore[assignment]  # mutable

    def network_ids(self) -> list[str]:
        """The known networks, in the order they were first mentioned."""
        return list(self._networks)

    def nodes(self, network_id: str) -> dict[str, str]:
        """A copy of a network's ``ip -> node id`` map.

        Raises:
            NetworkNotFound: the network is not known.
        """
        try:
            return dict(self._networks[network_id])
        except KeyError:
            raise NetworkNotFound(f"network {network_id!r} is not known") from None

    def as_dict(self) -> dict[str, dict[str, str]]:
        """A copy of every network's ``ip -> node id`` map."""
        return {network_id: dict(nodes) for network_id, nodes in self._networks.items()}

    def snapshot(self, network_id: str) -> Snapshot:
        """A :class:`Snapshot` message of a network, to resync a peer.

        Raises:
            NetworkNotFound: the network is not known.
        """
        return Snapshot(network_id, self.nodes(network_id))

    def apply(self, message: ControlMessage) -> list[Change]:
        """Apply one message; return what changed, removals before additions."""
        network_id = message.network_id
        if isinstance(message, RemoveNetwork):
            if self._networks.pop(network_id, None) is None:
                return []
            return [NetworkRemoved(network_id)]
        if isinstance(message, RemoveNodes):
            nodes = self._networks.get(network_id)
            if nodes is None:
                return []
            gone = set(message.node_ids)
            changes: list[Change] = []
            for ip, node_id in list(nodes.items()):
                if node_id in gone:
                    del nodes[ip]
                    changes.append(NodeRemoved(network_id, ip, node_id))
            return changes
        nodes = self._networks.setdefault(network_id, {})
        removed: list[Change] = []
        added: list[Change] = []
        if isinstance(message, Snapshot):
            for ip, node_id in list(nodes.items()):
                if message.nodes.get(ip) != node_id:
                    del nodes[ip]
                    removed.append(NodeRemoved(network_id, ip, node_id))
        for ip, node_id in message.nodes.items():
            holder = nodes.get(ip)
            if holder == node_id:
                continue
            if holder is not None:
                removed.append(NodeRemoved(network_id, ip, holder))
            nodes[ip] = node_id
            added.append(NodeAdded(network_id, ip, node_id))
        return removed + added
