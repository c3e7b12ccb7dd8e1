"""The reliable control channel (``golem_vpn.node.control``): messages, frames, delivery.

Everything runs in virtual time over an in-memory link with a seeded ``random.Random`` that
drops, duplicates, delays and so reorders frames (smoltcp's netsim and quinn's ``Pair``
are the models). Nothing here touches a socket or a clock.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golem_vpn.errors import GolemVpnError, InvalidNodeId, NetworkNotFound, WouldBlock
from golem_vpn.node.control import (
    MAX_RTO,
    AckFrame,
    AddNodes,
    ControlChannel,
    ControlMessage,
    ControlMessageError,
    DataFrame,
    Membership,
    NetworkRemoved,
    NodeAdded,
    NodeRemoved,
    RemoveNetwork,
    RemoveNodes,
    Snapshot,
    decode_frame,
    encode_frame,
    encode_message,
    parse_message,
)

REQ = "0x" + "11" * 20
PROV_A = "0x" + "aa" * 20
PROV_B = "0x" + "bb" * 20
PROV_C = "0x" + "cc" * 20
NODE_D = "0x" + "dd" * 20
NET = "0123456789abcdef0123456789abcdef"
NET2 = "net-two"
NET3 = "net_three"


def node_id(i: int) -> str:
    return f"0x{i:040x}"


def add(net: str, i: int) -> AddNodes:
    """The i-th distinct AddNodes of a network."""
    return AddNodes(net, {f"10.{i // 250}.{i % 250}.1": node_id(i + 1)})


# --- the in-memory link and the driver --------------------------------------------------------


class Link:
    """One direction of a lossy datagram path: drops, duplicates, random delay (reorders)."""

    def __init__(
        self,
        rng: random.Random,
        *,
        loss: float = 0.0,
        dup: float = 0.0,
        delay: tuple[float, float] = (0.01, 0.05),
        drop: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.rng = rng
        self.loss = loss
        self.dup = dup
        self.delay = delay
        self.drop = drop
        self.up = True
        self.log: list[tuple[float, bytes]] = []  # everything offered to the link
        self._queue: list[tuple[float, int, bytes]] = []
        self._count = 0

    def send(self, frame: bytes, now: float) -> None:
        self.log.append((now, frame))
        if not self.up or (self.drop is not None and self.drop(frame)):
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            if self.rng.random() < self.loss:
                continue
            self._count += 1
            at = now + self.rng.uniform(*self.delay)
            heapq.heappush(self._queue, (at, self._count, frame))

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def pop_due(self, now: float) -> list[bytes]:
        out = []
        while self._queue and self._queue[0][0] <= now:
            out.append(heapq.heappop(self._queue)[2])
        return out


Hook = Callable[["Pair", str, list[ControlMessage], float], None]


@dataclass
class Pair:
    """Two channels (``a`` and ``b``) joined by two links; channels may be replaced (restart)."""

    a: ControlChannel
    b: ControlChannel
    ab: Link
    ba: Link
    got_a: list[ControlMessage] = field(default_factory=list)
    got_b: list[ControlMessage] = field(default_factory=list)

    def transmit(self, now: float) -> None:
        for frame in self.a.poll_transmit(now):
            self.ab.send(frame, now)
        for frame in self.b.poll_transmit(now):
            self.ba.send(frame, now)

    def times(self) -> list[float]:
        found = [self.a.poll_at(), self.b.poll_at(), self.ab.next_time(), self.ba.next_time()]
        return [t for t in found if t is not None]

    def deliver(self, now: float, hook: Hook | None) -> None:
        for frame in self.ab.pop_due(now):
            messages = self.b.receive(frame, now)
            self.got_b.extend(messages)
            if hook is not None:
                hook(self, "b", messages, now)
        for frame in self.ba.pop_due(now):
            messages = self.a.receive(frame, now)
            self.got_a.extend(messages)
            if hook is not None:
                hook(self, "a", messages, now)


Event = tuple[float, Callable[[float], None]]


def run(
    pairs: list[Pair],
    *,
    now: float = 0.0,
    until: float = 300.0,
    hook: Hook | None = None,
    events: list[Event] = (),  # type: ignore[assignment]
    pause_at: float | None = None,
) -> float:
    """Drive the pairs until nothing is left to do (or ``pause_at``); return the time then."""
    pending = sorted(events, key=lambda e: e[0])
    for _ in range(1_000_000):
        while pending and pending[0][0] <= now:
            pending.pop(0)[1](now)
        for pair in pairs:
            pair.transmit(now)
        times = [t for pair in pairs for t in pair.times()]
        if pending:
            times.append(pending[0][0])
        if not times:
            return now
        at = max(now, min(times))
        if pause_at is not None and at > pause_at:
            return now
        assert at <= until, f"still busy at virtual time {until}"
        now = at
        for pair in pairs:
            pair.deliver(now, hook)
    raise AssertionError("the driver did not settle")


def make_pair(seed: int, *, loss: float = 0.0, dup: float = 0.0, **channel: int | float) -> Pair:
    rng = random.Random(seed)
    return Pair(
        ControlChannel(PROV_A, epoch=0xA1, **channel),  # type: ignore[arg-type]
        ControlChannel(REQ, epoch=0xB1, **channel),  # type: ignore[arg-type]
        Link(rng, loss=loss, dup=dup),
        Link(rng, loss=loss, dup=dup),
    )


def data_frames(link: Link) -> list[tuple[float, DataFrame]]:
    out = []
    for at, raw in link.log:
        frame = decode_frame(raw)
        if isinstance(frame, DataFrame):
            out.append((at, frame))
    return out


# --- messages ---------------------------------------------------------------------------------


def test_messages_have_yagnas_json_shape() -> None:
    assert AddNodes(NET, {"192.168.0.3": PROV_B}).to_json() == {
        "addNodes": {"networkId": NET, "nodes": {"192.168.0.3": PROV_B}}
    }
    assert RemoveNodes(NET, [PROV_B, PROV_C]).to_json() == {
        "removeNodes": {"networkId": NET, "nodeIds": [PROV_B, PROV_C]}
    }
    assert RemoveNetwork(NET).to_json() == {"removeNetwork": {"networkId": NET}}
    assert Snapshot(NET, {"192.168.0.1": REQ, "fd00::2": PROV_A}).to_json() == {
        "snapshot": {"networkId": NET, "nodes": {"192.168.0.1": REQ, "fd00::2": PROV_A}}
    }
    assert Snapshot(NET).to_json() == {"snapshot": {"networkId": NET, "nodes": {}}}
    assert json.loads(encode_message(RemoveNetwork(NET))) == {"removeNetwork": {"networkId": NET}}
    assert encode_message(RemoveNetwork("n1")) == b'{"removeNetwork":{"networkId":"n1"}}'


@pytest.mark.parametrize(
    "message",
    [
        AddNodes(NET, {"192.168.0.3": PROV_B, "fd00::4": PROV_C}),
        RemoveNodes(NET, [PROV_B]),
        RemoveNetwork(NET),
        Snapshot(NET, {"192.168.0.1": REQ}),
        Snapshot(NET),
    ],
)
def test_messages_round_trip(message: ControlMessage) -> None:
    assert parse_message(encode_message(message)) == message
    assert parse_message(encode_message(message).decode()) == message
    assert parse_message(message.to_json()) == message
    assert hash(parse_message(message.to_json())) == hash(message)


def test_messages_are_canonical_and_read_only() -> None:
    message = AddNodes(NET, {"FD00:0:0::2": PROV_A.upper().replace("0X", "0x")})
    assert dict(message.nodes) == {"fd00::2": PROV_A}
    with pytest.raises(TypeError):
        message.nodes["10.0.0.1"] = PROV_B  # type: ignore[index]
    assert RemoveNodes(NET, [PROV_B.upper().replace("0X", "0x")]).node_ids == (PROV_B,)
    # A node may hold several addresses (as in yagna's ``nodes: node -> {ips}``).
    assert len(AddNodes(NET, {"10.0.0.2": PROV_A, "10.0.0.3": PROV_A}).nodes) == 2


BAD_MESSAGES: list[tuple[object, str]] = [
    ("not json", "not a JSON control message"),
    (b"\xff\xfe", "not a JSON control message"),
    ("[" * 100_000, "not a JSON control message"),
    ([], "exactly one key|one key of"),
    ({}, "one key of"),
    ({"addNodes": {}, "removeNodes": {}}, "one key of"),
    ({"add_nodes": {}}, "unknown control message"),
    ({"AddNodes": {"networkId": NET, "nodes": {}}}, "unknown control message"),
    ({"addNodes": []}, "addNodes: expected an object"),
    ({"addNodes": {"networkId": NET}}, "missing field 'nodes'"),
    ({"addNodes": {"nodes": {"10.0.0.2": PROV_A}}}, "missing field 'networkId'"),
    ({"addNodes": {"networkId": NET, "nodes": {"10.0.0.2": PROV_A}, "x": 1}}, "unknown field"),
    ({"addNodes": {"networkId": NET, "nodes": {}}}, "addNodes.nodes: no nodes"),
    ({"addNodes": {"networkId": NET, "nodes": []}}, "expected an object of ip"),
    ({"addNodes": {"networkId": "", "nodes": {"10.0.0.2": PROV_A}}}, "not a network id"),
    ({"addNodes": {"networkId": "a/b", "nodes": {"10.0.0.2": PROV_A}}}, "not a network id"),
    ({"addNodes": {"networkId": 7, "nodes": {"10.0.0.2": PROV_A}}}, "not a network id"),
    ({"addNodes": {"networkId": NET, "nodes": {"10.0.0.300": PROV_A}}}, "not an IP address"),
    ({"addNodes": {"networkId": NET, "nodes": {"fe80::1%eth0": PROV_A}}}, "not an IP address"),
    ({"addNodes": {"networkId": NET, "nodes": {"10.0.0.2/24": PROV_A}}}, "not an IP address"),
    ({"addNodes": {"networkId": NET, "nodes": {"0.0.0.0": PROV_A}}}, "cannot name a node"),
    ({"addNodes": {"networkId": NET, "nodes": {"127.0.0.1": PROV_A}}}, "cannot name a node"),
    ({"addNodes": {"networkId": NET, "nodes": {"224.0.0.1": PROV_A}}}, "cannot name a node"),
    ({"addNodes": {"networkId": NET, "nodes": {"ff02::1": PROV_A}}}, "cannot name a node"),
    ({"addNodes": {"networkId": NET, "nodes": {"::1": PROV_A}}}, "cannot name a node"),
    ({"addNodes": {"networkId": NET, "nodes": {"255.255.255.255": PROV_A}}}, "cannot name"),
    ({"addNodes": {"networkId": NET, "nodes": {"10.0.0.2": "0x12"}}}, "not a Golem node id"),
    ({"addNodes": {"networkId": NET, "nodes": {"10.0.0.2": 5}}}, "not a Golem node id"),
    ({"addNodes": {"networkId": NET, "nodes": {"fd00::2": PROV_A, "fd00:0::2": PROV_B}}}, "twice"),
    ({"removeNodes": {"networkId": NET, "nodeIds": []}}, "no node ids"),
    ({"removeNodes": {"networkId": NET, "nodeIds": PROV_A}}, "expected a list"),
    ({"removeNodes": {"networkId": NET, "nodeIds": {PROV_A: 1}}}, "expected a list"),
    ({"removeNodes": {"networkId": NET, "nodeIds": [PROV_A, PROV_A]}}, r"nodeIds\[1\].*twice"),
    ({"removeNodes": {"networkId": NET, "nodeIds": [None]}}, r"nodeIds\[0\]"),
    ({"removeNetwork": {"networkId": NET, "nodes": {}}}, "unknown field 'nodes'"),
    ({"removeNetwork": None}, "removeNetwork: expected an object"),
    ({"snapshot": {"networkId": NET}}, "missing field 'nodes'"),
    ({"snapshot": {"networkId": NET, "nodes": None}}, "snapshot.nodes"),
    ('{"removeNetwork": {"networkId": "a", "networkId": "b"}}', "duplicate key 'networkId'"),
    ('{"removeNetwork": {"networkId": "a"}, "removeNetwork": {"networkId": "a"}}', "duplicate"),
    ("NaN", "one key of"),
    (None, "one key of"),
]


@pytest.mark.parametrize(("value", "why"), BAD_MESSAGES)
def test_parse_message_rejects(value: object, why: str) -> None:
    with pytest.raises(ControlMessageError, match=why) as info:
        parse_message(value)
    assert isinstance(info.value, GolemVpnError)
    assert isinstance(info.value, ValueError)


def test_constructors_validate_like_the_parser() -> None:
    with pytest.raises(ControlMessageError, match="no nodes"):
        AddNodes(NET, {})
    with pytest.raises(ControlMessageError, match="no node ids"):
        RemoveNodes(NET, ())
    with pytest.raises(ControlMessageError, match="not a network id"):
        RemoveNetwork("x" * 129)
    with pytest.raises(ControlMessageError, match="not a Golem node id"):
        Snapshot(NET, {"10.0.0.2": "someone"})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
message_like = st.fixed_dictionaries(
    {},
    optional={
        "addNodes": st.fixed_dictionaries(
            {}, optional={"networkId": json_values, "nodes": json_values}
        ),
        "removeNodes": st.fixed_dictionaries(
            {}, optional={"networkId": json_values, "nodeIds": json_values}
        ),
        "snapshot": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, message_like))
def test_parse_message_never_raises_anything_else(value: object) -> None:
    try:
        message = parse_message(value)
    except ControlMessageError:
        return
    assert parse_message(message.to_json()) == message


# --- frames -----------------------------------------------------------------------------------


def test_frame_layout_is_exact() -> None:
    data = DataFrame(0x0102030405060708, 0, "ab", seq=3, base=2, last=True, body=b"{}")
    assert encode_frame(data) == (
        b"\x01\x01"
        + bytes.fromhex("0102030405060708")
        + bytes(8)
        + b"\x02ab"
        + (3).to_bytes(8, "big")
        + (2).to_bytes(8, "big")
        + b"\x01{}"
    )
    ack = AckFrame(1, 2, "n", cum=5, sack=0b101)
    assert encode_frame(ack) == (
        b"\x01\x02"
        + (1).to_bytes(8, "big")
        + (2).to_bytes(8, "big")
        + b"\x01n"
        + (5).to_bytes(8, "big")
        + (5).to_bytes(8, "big")
    )
    assert decode_frame(encode_frame(data)) == data
    assert decode_frame(bytearray(encode_frame(ack))) == ack
    assert decode_frame(memoryview(encode_frame(ack))) == ack
    fragment = DataFrame(7, 9, NET, seq=2**64 - 1, base=1, last=False, body=b"x")
    assert decode_frame(encode_frame(fragment)) == fragment


GOOD_DATA = encode_frame(DataFrame(1, 2, "n", seq=1, base=1, last=True, body=b"{}"))
GOOD_ACK = encode_frame(AckFrame(1, 2, "n", cum=0, sack=0))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter than its header"),
        (GOOD_DATA[:18], "shorter than its header"),
        (b"\x02" + GOOD_DATA[1:], "unsupported frame version 2"),
        (GOOD_DATA[:1] + b"\x03" + GOOD_DATA[2:], "unknown frame kind 3"),
        (GOOD_DATA[:2] + bytes(8) + GOOD_DATA[10:], "src_epoch 0"),
        (GOOD_DATA[:18] + b"\x00" + GOOD_DATA[19:], "not a network id"),
        (GOOD_DATA[:18] + b"\x05n", "cut inside its network id"),
        (GOOD_DATA[:19] + b"/" + GOOD_DATA[20:], "not a network id"),
        (GOOD_DATA[:19] + b"\xe9" + GOOD_DATA[20:], "not ASCII"),
        (GOOD_DATA[:25], "cut inside its header"),
        (GOOD_DATA[:-2], "without a body"),
        (GOOD_DATA[:-3] + b"\x03{}", "unknown flags"),
        (GOOD_DATA[:20] + bytes(8) + GOOD_DATA[28:], "seq 0"),
        (GOOD_DATA[:28] + (2).to_bytes(8, "big") + GOOD_DATA[36:], "base 2 is outside"),
        (GOOD_DATA[:28] + bytes(8) + GOOD_DATA[36:], "base 0 is outside"),
        (GOOD_ACK[:-1], "ACK frame of"),
        (GOOD_ACK + b"\x00", "ACK frame of"),
        ("text", "a frame is bytes"),
        (12, "a frame is bytes"),
    ],
)
def test_decode_frame_rejects(raw: object, why: str) -> None:
    with pytest.raises(ControlMessageError, match=why):
        decode_frame(raw)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_decode_frame_of_random_bytes_raises_only_its_error(raw: bytes) -> None:
    try:
        frame = decode_frame(raw)
    except ControlMessageError:
        return
    assert encode_frame(frame) == raw


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([GOOD_DATA, GOOD_ACK]),
    st.integers(min_value=0, max_value=40),
    st.binary(max_size=40),
)
def test_mangled_frames_fed_to_a_channel_raise_only_its_error(
    good: bytes, cut: int, tail: bytes
) -> None:
    channel = ControlChannel(PROV_A, epoch=2)
    raw = good[:cut] + tail
    try:
        channel.receive(raw, 0.0)
    except ControlMessageError:
        assert channel.peer_epoch is None  # nothing changed
    channel.poll_transmit(0.0)
    channel.poll_at()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.booleans())
def test_random_bodies_are_counted_never_raised(body: bytes, last: bool) -> None:
    channel = ControlChannel(PROV_A, epoch=2)
    frame = encode_frame(DataFrame(1, 2, "n", seq=1, base=1, last=last, body=body))
    assert channel.receive(frame, 0.0) == []  # random bytes are never a control message
    assert channel.stats().malformed == int(last)


# --- reliable, ordered delivery ---------------------------------------------------------------


@pytest.mark.parametrize(("loss", "bound"), [(0.0, 5.0), (0.1, 60.0), (0.3, 120.0)])
def test_in_order_exactly_once_over_a_bad_link(loss: float, bound: float) -> None:
    pair = make_pair(seed=int(loss * 100), loss=loss, dup=0.1)
    nets = [NET, NET2, NET3]
    sent_ab: dict[str, list[ControlMessage]] = {net: [] for net in nets}
    sent_ba: dict[str, list[ControlMessage]] = {net: [] for net in nets}

    def burst(start: int, count: int) -> Callable[[float], None]:
        def go(now: float) -> None:
            for i in range(start, start + count):
                message = add(nets[i % 3], i)
                pair.a.send(message, now)
                sent_ab[message.network_id].append(message)
                if i % 4 == 0:
                    back = RemoveNodes(nets[i % 3], [node_id(i + 1)])
                    pair.b.send(back, now)
                    sent_ba[back.network_id].append(back)

        return go

    # 120 at once (past the 64-frame window of a network), then 80 more while busy.
    end = run([pair], until=bound, events=[(0.0, burst(0, 120)), (0.5, burst(120, 80))])

    for net in nets:
        assert [m for m in pair.got_b if m.network_id == net] == sent_ab[net]
        assert [m for m in pair.got_a if m.network_id == net] == sent_ba[net]
        assert pair.a.pending(net) == pair.b.pending(net) == 0
    assert sum(len(v) for v in sent_ab.values()) == 200
    assert pair.a.poll_at() is None
    assert pair.b.poll_at() is None
    stats = pair.b.stats()
    assert stats.delivered == 200
    assert pair.a.stats().delivered == 50
    if loss:
        assert pair.a.stats().retransmitted > 0
        assert stats.duplicates > 0
    else:
        assert pair.a.stats().retransmitted == 0
    assert end <= bound


def test_first_contact_sends_one_probe_then_the_window() -> None:
    pair = make_pair(seed=1)
    for i in range(5):
        pair.a.send(add(NET, i), 0.0)
    frames = pair.a.poll_transmit(0.0)
    assert len(frames) == 1  # the peer's epoch is not known yet: one probe
    pair.ab.send(frames[0], 0.0)
    run([pair])
    assert pair.got_b == [add(NET, i) for i in range(5)]
    assert pair.b.stats().stale == 1  # the probe, addressed to nobody in particular
    assert pair.a.peer_epoch == 0xB1
    assert pair.b.peer_epoch == 0xA1


def test_retransmission_backs_off_exponentially() -> None:
    pair = make_pair(seed=2)
    pair.a.send(add(NET, 0), 0.0)
    now = run([pair])
    assert pair.a.srtt is not None
    rto = pair.a.rto
    assert 0.2 <= rto <= 1.0

    pair.ab.up = False
    pair.a.send(add(NET, 1), now)
    times: list[float] = []
    while len(times) < 10:
        at = pair.a.poll_at()
        assert at is not None
        now = max(now, at)
        for frame in pair.a.poll_transmit(now):
            assert isinstance(decode_frame(frame), DataFrame)
            times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(rto)
    for before, after in itertools.pairwise(gaps):
        assert after == pytest.approx(min(2 * before, MAX_RTO))
    assert gaps[-1] == pytest.approx(MAX_RTO)
    assert pair.a.stats().retransmitted == 9

    pair.ab.up = True
    run([pair], now=now, until=now + 30)
    assert pair.got_b == [add(NET, 0), add(NET, 1)]


def test_acks_free_the_queue_and_stop_retransmission() -> None:
    pair = make_pair(seed=3, loss=0.2)
    for i in range(30):
        pair.a.send(add(NET, i), 0.0)
    assert pair.a.pending(NET) == 30
    now = run([pair])
    stats = pair.a.stats()
    assert pair.a.pending(NET) == 0
    assert pair.a.poll_at() is None
    assert pair.a.poll_transmit(now + 1000.0) == []
    assert pair.b.poll_transmit(now + 1000.0) == []
    assert pair.a.stats() == stats
    assert pair.a.stats().acks_received > 0
    assert pair.b.stats().acks_sent > 0


def test_rtt_is_estimated_from_acks() -> None:
    pair = make_pair(seed=4)
    pair.ab.delay = pair.ba.delay = (0.1, 0.1)
    assert pair.a.srtt is None
    assert pair.a.rto == 1.0
    for i in range(10):
        pair.a.send(add(NET, i), float(i))
        run([pair], now=float(i))
    assert pair.a.srtt == pytest.approx(0.2)
    assert pair.a.rto == pytest.approx(0.2 + 0.001, abs=0.05)


# --- peer restarts ----------------------------------------------------------------------------


def resync_hook(view: Membership) -> Hook:
    """The requestor daemon's reaction to a restarted provider: a Snapshot per network."""

    def hook(pair: Pair, side: str, messages: list[ControlMessage], now: float) -> None:
        if side == "a" and pair.a.take_peer_restarted():
            for net in view.network_ids():
                pair.a.send(view.snapshot(net), now)

    return hook


def applier(views: dict[str, Membership]) -> Hook:
    def hook(pair: Pair, side: str, messages: list[ControlMessage], now: float) -> None:
        for message in messages:
            views[side].apply(message)

    return hook


def chain(*hooks: Hook) -> Hook:
    def hook(pair: Pair, side: str, messages: list[ControlMessage], now: float) -> None:
        for each in hooks:
            each(pair, side, messages, now)

    return hook


def test_restarted_provider_is_resynced() -> None:
    pair = make_pair(seed=5, loss=0.2, dup=0.1)
    requestor = Membership()
    views = {"a": Membership(), "b": Membership()}
    initial: list[ControlMessage] = [Snapshot(NET, {"10.0.0.1": REQ}), add(NET, 1), add(NET2, 2)]
    for message in initial:
        requestor.apply(message)
        pair.a.send(message, 0.0)
    now = run([pair], hook=applier(views))
    assert views["b"] == requestor
    old_ack = next(raw for _, raw in reversed(pair.ba.log))

    # The provider restarts: a new channel instance with an empty view.
    pair.b = ControlChannel(REQ, epoch=0xB2)
    views["b"] = Membership()
    message = AddNodes(NET, {"10.0.0.9": NODE_D})
    requestor.apply(message)
    pair.a.send(message, now)
    now = run([pair], now=now, until=now + 60, hook=chain(resync_hook(requestor), applier(views)))

    assert views["b"] == requestor
    assert pair.a.stats().peer_restarts == 1
    assert pair.a.peer_epoch == 0xB2
    assert pair.a.take_peer_restarted() is False  # reported once
    # A late frame of the old instance is ignored.
    stale = pair.a.stats().stale
    assert pair.a.receive(old_ack, now) == []
    assert pair.a.stats().stale == stale + 1
    assert pair.a.peer_epoch == 0xB2


def test_announce_tells_the_requestor_of_an_idle_provider_restart() -> None:
    """A restarted provider that has nothing to send announces itself (an ACK of nothing):
    the requestor sees the new epoch at once and learns it must resync, without waiting for a
    message of its own to go unanswered; a repeat changes nothing."""
    requestor = ControlChannel(PROV_A, epoch=0xA1)
    provider = ControlChannel(REQ, epoch=0xB1)
    requestor.send(add(NET, 1), 0.0)
    for _ in range(3):  # first contact teaches the epochs, then the message is delivered
        for frame in requestor.poll_transmit(0.0):
            provider.receive(frame, 0.0)
        for frame in provider.poll_transmit(0.0):
            requestor.receive(frame, 0.0)
    assert requestor.peer_epoch == 0xB1
    assert requestor.pending(NET) == 0
    assert requestor.take_peer_restarted() is False

    restarted = ControlChannel(REQ, epoch=0xB2)
    assert restarted.poll_transmit(1.0) == []  # nothing to say on its own
    restarted.announce(NET, 1.0)
    (frame,) = restarted.poll_transmit(1.0)
    ack = decode_frame(frame)
    assert isinstance(ack, AckFrame)
    assert (ack.src_epoch, ack.dst_epoch, ack.cum) == (0xB2, 0, 0)
    assert requestor.receive(frame, 1.0) == []
    assert requestor.take_peer_restarted() is True
    assert requestor.peer_epoch == 0xB2
    restarted.announce(NET, 2.0)
    for frame in restarted.poll_transmit(2.0):
        requestor.receive(frame, 2.0)
    assert requestor.take_peer_restarted() is False
    assert requestor.stats().peer_restarts == 1


def test_restarted_requestor_resyncs_the_provider() -> None:
    pair = make_pair(seed=6, loss=0.2)
    requestor = Membership()
    provider = Membership()
    initial: list[ControlMessage] = [Snapshot(NET, {"10.0.0.1": REQ}), add(NET, 1), add(NET, 2)]
    for message in initial:
        requestor.apply(message)
        pair.a.send(message, 0.0)

    def apply_b(pair: Pair, side: str, messages: list[ControlMessage], now: float) -> None:
        if side == "b":
            for message in messages:
                provider.apply(message)

    now = run([pair], hook=apply_b)
    assert provider == requestor
    old_data = next(raw for _, raw in pair.ab.log if isinstance(decode_frame(raw), DataFrame))

    # The requestor restarts with its networks restored from disk and sends Snapshots.
    pair.a = ControlChannel(PROV_A, epoch=0xA2)
    changes: list[ControlMessage] = [RemoveNodes(NET, [node_id(2)]), add(NET, 3)]
    for change in changes:
        requestor.apply(change)
    pair.a.send(requestor.snapshot(NET), now)
    now = run([pair], now=now, until=now + 60, hook=apply_b)

    assert provider == requestor
    assert pair.b.take_peer_restarted() is True
    assert pair.b.stats().peer_restarts == 1
    assert pair.b.receive(old_data, now) == []  # the old instance's frames are retired


def test_restart_renumbers_unacked_messages_for_the_new_instance() -> None:
    pair = make_pair(seed=7)
    pair.a.send(add(NET, 0), 0.0)
    now = run([pair])
    pair.ab.up = False
    for i in range(1, 4):
        pair.a.send(add(NET, i), now)
    pair.a.poll_transmit(now)  # sent to the old instance, lost
    pair.ab.up = True
    pair.b = ControlChannel(REQ, epoch=0xB2)
    pair.b.send(RemoveNetwork(NET2), now)  # the new instance speaks first
    run([pair], now=now, until=now + 30)
    assert pair.got_b == [add(NET, 0), add(NET, 1), add(NET, 2), add(NET, 3)]
    assert pair.got_a == [RemoveNetwork(NET2)]


# --- the race of yapapi issue 664 -------------------------------------------------------------


def build_world(seed: int) -> tuple[dict[str, Pair], dict[str, Membership]]:
    rng = random.Random(seed)
    pairs: dict[str, Pair] = {}
    for provider in (PROV_A, PROV_B, PROV_C):
        loss = 0.3 if provider in (PROV_A, PROV_B) else 0.0
        pairs[provider] = Pair(
            ControlChannel(provider, epoch=rng.randrange(1, 2**64)),
            ControlChannel(REQ, epoch=rng.randrange(1, 2**64)),
            Link(rng, loss=loss, dup=0.1),
            Link(rng, loss=loss, dup=0.1),
        )
    views = {provider: Membership() for provider in pairs}
    return pairs, views


def membership_hook(pairs: dict[str, Pair], views: dict[str, Membership]) -> Hook:
    owner = {id(pair): provider for provider, pair in pairs.items()}

    def hook(pair: Pair, side: str, messages: list[ControlMessage], now: float) -> None:
        if side == "b":
            for message in messages:
                views[owner[id(pair)]].apply(message)

    return hook


IPS = {PROV_A: "192.168.0.2", PROV_B: "192.168.0.3", PROV_C: "192.168.0.4"}


def requestor_actions(
    pairs: dict[str, Pair], requestor: Membership, *, remove_b_at: float
) -> list[Event]:
    """Add A, B, C within 2 ms (each joiner gets a Snapshot, the others AddNodes), then drop B."""
    requestor.apply(Snapshot(NET, {"192.168.0.1": REQ}))
    members: list[str] = []

    def join(provider: str) -> Callable[[float], None]:
        def go(now: float) -> None:
            message = AddNodes(NET, {IPS[provider]: provider})
            requestor.apply(message)
            for other in members:
                pairs[other].a.send(message, now)
            pairs[provider].a.send(requestor.snapshot(NET), now)
            members.append(provider)

        return go

    def remove_b(now: float) -> None:
        message = RemoveNodes(NET, [PROV_B])
        requestor.apply(message)
        members.remove(PROV_B)
        for other in members:
            pairs[other].a.send(message, now)
        pairs[PROV_B].a.send(RemoveNetwork(NET), now)

    return [
        (0.0, join(PROV_A)),
        (0.001, join(PROV_B)),
        (0.002, join(PROV_C)),
        (remove_b_at, remove_b),
    ]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("remove_early", [True, False], ids=["remove-at-once", "remove-later"])
def test_issue_664_race_cannot_happen(seed: int, remove_early: bool) -> None:
    pairs, views = build_world(seed)
    requestor = Membership()
    *joins, (_, remove_b) = requestor_actions(pairs, requestor, remove_b_at=0.003)
    hook = membership_hook(pairs, views)
    if remove_early:  # B leaves while the adds are still in flight
        run(list(pairs.values()), events=[*joins, (0.003, remove_b)], hook=hook)
    else:
        now = run(list(pairs.values()), events=joins, hook=hook)
        full = {"192.168.0.1": REQ, IPS[PROV_A]: PROV_A, IPS[PROV_B]: PROV_B, IPS[PROV_C]: PROV_C}
        assert requestor.nodes(NET) == full
        for provider in pairs:
            assert views[provider] == requestor  # every provider knows every node
        run(list(pairs.values()), now=now, until=now + 300, events=[(now, remove_b)], hook=hook)

    expected = {"192.168.0.1": REQ, IPS[PROV_A]: PROV_A, IPS[PROV_C]: PROV_C}
    assert requestor.nodes(NET) == expected
    assert views[PROV_A] == requestor
    assert views[PROV_C] == requestor
    assert views[PROV_B].network_ids() == []  # B was told the network is gone for it
    for pair in pairs.values():
        assert pair.a.pending(NET) == 0


def test_issue_664_race_happens_without_the_channel() -> None:
    """The same plan fire-and-forget (yagna before PR #1625) loses or reorders updates."""
    failures = 0
    for seed in range(6):
        pairs, views = build_world(seed)
        requestor = Membership()
        events = requestor_actions(pairs, requestor, remove_b_at=0.003)
        links = {provider: pair.ab for provider, pair in pairs.items()}
        # Replace the channels' send with one unreliable datagram per message.
        for provider, pair in pairs.items():

            def raw_send(message: ControlMessage, now: float, link: Link = links[provider]) -> None:
                link.send(encode_message(message), now)

            pair.a.send = raw_send  # type: ignore[method-assign]
        for at, action in events:
            action(at)
        for provider, link in links.items():
            while (due := link.next_time()) is not None:
                for raw in link.pop_due(due):
                    views[provider].apply(parse_message(raw))
        if views[PROV_A] != requestor or views[PROV_C] != requestor:
            failures += 1
    assert failures > 0


# --- caps and resets --------------------------------------------------------------------------


def test_send_beyond_the_pending_cap_would_block_and_loses_nothing() -> None:
    pair = make_pair(seed=8, loss=0.1, max_pending_bytes=1000, max_message_size=1000)
    accepted: list[ControlMessage] = []
    for i in range(100):
        try:
            pair.a.send(add(NET, i), 0.0)
        except WouldBlock:
            break
        accepted.append(add(NET, i))
    assert 5 < len(accepted) < 100
    with pytest.raises(WouldBlock, match=r"control queue of network .* is full"):
        pair.a.send(add(NET, 100), 0.0)
    assert pair.a.pending(NET) == len(accepted)
    pair.a.send(add(NET2, 0), 0.0)  # the cap is per network
    now = run([pair])
    assert [m for m in pair.got_b if m.network_id == NET] == accepted
    pair.a.send(add(NET, 100), now)  # room again once acked
    run([pair], now=now)
    assert pair.got_b[-1] == add(NET, 100)


def test_message_larger_than_the_limit_is_rejected() -> None:
    channel = ControlChannel(PROV_A, max_message_size=300)
    big = Snapshot(NET, {f"10.0.{i}.1": node_id(i + 1) for i in range(10)})
    with pytest.raises(ControlMessageError, match="exceeds max_message_size"):
        channel.send(big, 0.0)
    assert channel.pending(NET) == 0
    assert channel.poll_at() is None


def test_large_messages_are_fragmented_and_reassembled() -> None:
    pair = make_pair(seed=9, loss=0.2, dup=0.1, max_frame_size=256)
    big = Snapshot(NET, {f"10.{i // 250}.{i % 250}.1": node_id(i + 1) for i in range(300)})
    pair.a.send(big, 0.0)
    pair.a.send(add(NET, 999), 0.0)
    run([pair])
    assert pair.got_b == [big, add(NET, 999)]
    frames = data_frames(pair.ab)
    assert len({f.seq for _, f in frames}) > 50
    assert max(len(raw) for _, raw in pair.ab.log) <= 256


def test_oversized_reassembly_is_dropped_and_the_stream_goes_on() -> None:
    rng = random.Random(10)
    pair = Pair(
        ControlChannel(PROV_A, epoch=1, max_frame_size=256),
        ControlChannel(REQ, epoch=2, max_message_size=2000),
        Link(rng),
        Link(rng),
    )
    big = Snapshot(NET, {f"10.0.{i}.1": node_id(i + 1) for i in range(60)})
    assert len(encode_message(big)) > 2000
    pair.a.send(add(NET, 1), 0.0)
    pair.a.send(big, 0.0)
    pair.a.send(add(NET, 2), 0.0)
    run([pair])
    assert pair.got_b == [add(NET, 1), add(NET, 2)]
    assert pair.b.stats().malformed == 1
    assert pair.a.pending(NET) == 0


def test_frames_beyond_the_receive_window_are_dropped_then_resent() -> None:
    rng = random.Random(11)
    pair = Pair(
        ControlChannel(PROV_A, epoch=1),  # sends 64 frames at once
        ControlChannel(REQ, epoch=2, window=4),  # buffers 4
        Link(rng, loss=0.1, dup=0.1),
        Link(rng, loss=0.1),
    )
    messages = [add(NET, i) for i in range(100)]
    for message in messages:
        pair.a.send(message, 0.0)
    run([pair])
    assert pair.got_b == messages
    assert pair.b.stats().out_of_window > 0


def test_reset_network_abandons_our_messages_and_the_peer_skips_them() -> None:
    pair = make_pair(seed=12)
    pair.a.send(add(NET, 0), 0.0)
    now = run([pair])
    pair.ab.up = False
    for i in range(1, 4):
        pair.a.send(add(NET, i), now)
    pair.a.poll_transmit(now)
    assert pair.a.reset_network(NET) == 3
    assert pair.a.pending(NET) == 0
    assert pair.a.stats().abandoned == 3
    assert pair.a.poll_at() is None
    pair.ab.up = True
    pair.a.send(add(NET, 4), now)
    run([pair], now=now)
    assert pair.got_b == [add(NET, 0), add(NET, 4)]
    assert pair.b.stats().skipped == 3


def test_receiver_reset_drops_buffered_frames_but_nothing_is_lost() -> None:
    dropped: set[int] = set()

    def lose_seq_1_once(raw: bytes) -> bool:
        frame = decode_frame(raw)
        if isinstance(frame, DataFrame) and frame.seq == 1 and 1 not in dropped:
            dropped.add(1)
            return True
        return False

    rng = random.Random(13)
    pair = Pair(
        ControlChannel(PROV_A, epoch=1),
        ControlChannel(REQ, epoch=2),
        Link(rng, drop=lose_seq_1_once),
        Link(rng),
    )
    pair.b.send(RemoveNetwork(NET2), 0.0)  # b speaks first, so a knows b at once
    now = run([pair])
    messages = [add(NET, i) for i in range(3)]
    for message in messages:
        pair.a.send(message, now)
    now = run([pair], now=now, pause_at=now + 0.15)  # seq 2 and 3 wait in b's buffer, sacked
    assert pair.got_b == []
    assert pair.a.pending(NET) == 3
    pair.b.reset_network(NET)  # b forgets them; a resends them when sacks stop
    run([pair], now=now, until=now + 30)
    assert pair.got_b == messages
    assert pair.b.stats().delivered == 3


def test_malformed_bodies_are_counted_and_skipped() -> None:
    channel = ControlChannel(PROV_A, epoch=2)

    def frame(seq: int, body: bytes) -> bytes:
        return encode_frame(DataFrame(1, 2, NET, seq=seq, base=1, last=True, body=body))

    assert channel.receive(frame(1, b"{nope"), 0.0) == []
    assert channel.receive(frame(2, encode_message(RemoveNetwork(NET2))), 0.0) == []
    assert channel.receive(frame(3, encode_message(RemoveNetwork(NET))), 0.0) == [
        RemoveNetwork(NET)
    ]
    assert channel.stats().malformed == 2  # bad JSON, and a network id unlike the frame's
    (ack,) = channel.poll_transmit(0.0)
    assert decode_frame(ack) == AckFrame(2, 1, NET, cum=3, sack=0)


def test_duplicates_are_re_acked_not_re_delivered() -> None:
    channel = ControlChannel(PROV_A, epoch=2)
    one = encode_frame(
        DataFrame(1, 2, NET, seq=1, base=1, last=True, body=encode_message(add(NET, 1)))
    )
    three = encode_frame(
        DataFrame(1, 2, NET, seq=3, base=1, last=True, body=encode_message(add(NET, 3)))
    )
    assert channel.receive(three, 0.0) == []
    assert decode_frame(channel.poll_transmit(0.0)[0]) == AckFrame(2, 1, NET, cum=0, sack=0b10)
    assert channel.receive(one, 0.0) == [add(NET, 1)]
    assert channel.receive(one, 0.0) == []
    assert channel.receive(three, 0.0) == []
    assert channel.stats().duplicates == 2
    (ack,) = channel.poll_transmit(0.0)  # one ACK for the batch
    assert decode_frame(ack) == AckFrame(2, 1, NET, cum=1, sack=0b1)


# --- membership and settings ------------------------------------------------------------------


def test_membership_apply_reports_changes() -> None:
    view = Membership()
    assert view.apply(AddNodes(NET, {"10.0.0.2": PROV_A, "10.0.0.3": PROV_A})) == [
        NodeAdded(NET, "10.0.0.2", PROV_A),
        NodeAdded(NET, "10.0.0.3", PROV_A),
    ]
    assert view.apply(AddNodes(NET, {"10.0.0.2": PROV_A})) == []
    assert view.apply(AddNodes(NET, {"10.0.0.3": PROV_B})) == [
        NodeRemoved(NET, "10.0.0.3", PROV_A),
        NodeAdded(NET, "10.0.0.3", PROV_B),
    ]
    assert view.apply(Snapshot(NET, {"10.0.0.3": PROV_B, "10.0.0.4": PROV_C})) == [
        NodeRemoved(NET, "10.0.0.2", PROV_A),
        NodeAdded(NET, "10.0.0.4", PROV_C),
    ]
    assert view.apply(RemoveNodes(NET, [PROV_B, NODE_D])) == [NodeRemoved(NET, "10.0.0.3", PROV_B)]
    assert view.nodes(NET) == {"10.0.0.4": PROV_C}
    assert view.snapshot(NET) == Snapshot(NET, {"10.0.0.4": PROV_C})
    assert view.apply(RemoveNodes(NET2, [PROV_A])) == []
    assert view.apply(RemoveNetwork(NET2)) == []
    assert view.apply(RemoveNetwork(NET)) == [NetworkRemoved(NET)]
    assert view.network_ids() == []
    assert view.as_dict() == {}
    with pytest.raises(NetworkNotFound):
        view.nodes(NET)


@pytest.mark.parametrize(
    "options",
    [
        {"window": 0},
        {"window": 65},
        {"max_frame_size": 255},
        {"max_message_size": 0},
        {"max_message_size": 10, "max_pending_bytes": 5},
        {"min_rto": 0.0},
        {"initial_rto": 20.0},
        {"epoch": 0},
        {"epoch": 2**64},
    ],
)
def test_channel_settings_are_checked(options: dict[str, float]) -> None:
    with pytest.raises(ControlMessageError):
        ControlChannel(PROV_A, **options)  # type: ignore[arg-type]


def test_channel_identity() -> None:
    with pytest.raises(InvalidNodeId):
        ControlChannel("nobody")
    channel = ControlChannel(PROV_A.upper().replace("0X", "0x"))
    assert channel.peer_id == PROV_A
    assert 1 <= channel.epoch < 2**64
    assert channel.epoch != ControlChannel(PROV_A).epoch
    assert channel.peer_epoch is None
    assert channel.poll_at() is None
