"""The node transport over a bad link: a seeded lossy, reordering UDP proxy on loopback.

Two :class:`~golem_vpn.node.transport.UdpTransport` nodes on 127.0.0.1 are each told that
the other lives at the proxy's port. The proxy forwards each datagram to the node that did
not send it (by source port) after a fate drawn from ``random.Random(seed)``: dropped with
probability ``loss``, held back a few milliseconds (so later datagrams overtake it) with
probability ``reorder``, else passed on at once. TCP inside the tunnel must stay
byte-exact, and the tunnel handshake must recover from a lost initiation (its retry
timer is ``REKEY_TIMEOUT``, 5 s plus jitter).

The lossy transfers are one-way (A sends, B answers with a digest): a full echo under
loss can freeze for good in the TCP stack itself, which the last test reproduces
deterministically on two bare stacks in virtual time: a regression test for smoltcp 0.14's
rewound-ACK livelock, which `golem_vpn.Stack` works around (ACKs carry SND.MAX).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import pytest

import golem_vpn
from golem_vpn import Identity, Stack
from golem_vpn.node.transport import UdpTransport

NET = "1055" * 8
CIDR = "192.168.51.0/24"
A_IP, B_IP = "192.168.51.2", "192.168.51.3"
HANDSHAKE_INIT = 1  # the tunnel's first message type byte (see rust/tunnel/mod.rs)


def decide(rng: random.Random, loss: float, reorder: float, max_hold: float) -> tuple[str, float]:
    """One datagram's fate: ``("drop" | "hold" | "pass", hold_seconds)``.

    Always draws twice, so a seed fixes the fate of the n-th datagram whatever came before.
    """
    r, d = rng.random(), rng.random()
    if r < loss:
        return "drop", 0.0
    if r < loss + reorder:
        return "hold", d * max_hold
    return "pass", 0.0


def seed_where(
    want: Callable[[list[str]], bool], n: int, loss: float, reorder: float, max_hold: float
) -> int:
    """The smallest seed whose first ``n`` fates satisfy ``want`` (deterministic)."""
    for seed in range(100_000):
        rng = random.Random(seed)
        if want([decide(rng, loss, reorder, max_hold)[0] for _ in range(n)]):
            return seed
    raise AssertionError("no such seed")


@dataclass
class LossyProxy(asyncio.DatagramProtocol):
    """The bad link: one UDP socket on 127.0.0.1 between two nodes (see the module docs)."""

    seed: int
    loss: float
    reorder: float = 0.03
    max_hold: float = 0.02
    routes: dict[int, tuple[str, int]] = field(default_factory=dict)
    forwarded: int = 0
    dropped: int = 0
    held: int = 0
    strays: int = 0
    received: int = 0
    log: list[tuple[int, str]] = field(default_factory=list)  # (type byte, fate), first 64

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.TimerHandle] = set()

    @classmethod
    async def start(cls, seed: int, loss: float, **options: float) -> LossyProxy:
        loop = asyncio.get_running_loop()
        _, proxy = await loop.create_datagram_endpoint(
            lambda: cls(seed, loss, **options), local_addr=("127.0.0.1", 0)
        )
        return proxy

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def link(self, a: tuple[str, int], b: tuple[str, int]) -> None:
        """Datagrams from ``a``'s port go to ``b`` and the other way round."""
        self.routes[a[1]] = b
        self.routes[b[1]] = a

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        dst = self.routes.get(addr[1]) if addr[0] == "127.0.0.1" else None
        if dst is None or self.transport is None:
            self.strays += 1
            return
        self.received += 1
        fate, hold = decide(self.rng, self.loss, self.reorder, self.max_hold)
        if len(self.log) < 64:
            self.log.append((data[0] if data else -1, fate))
        if fate == "drop":
            self.dropped += 1
        elif fate == "hold":
            self.held += 1
            handles: list[asyncio.TimerHandle] = []

            def release() -> None:
                self.pending.difference_update(handles)
                self._send(data, dst)

            handles.append(asyncio.get_running_loop().call_later(hold, release))
            self.pending.update(handles)
        else:
            self._send(data, dst)

    def _send(self, data: bytes, dst: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, dst)
            self.forwarded += 1

    def close(self) -> None:
        for handle in self.pending:
            handle.cancel()
        self.pending.clear()
        if self.transport is not None:
            self.transport.close()


@dataclass
class Pair:
    """Two nodes of the network ``NET`` and their interfaces."""

    a: UdpTransport
    b: UdpTransport
    ia: golem_vpn.Interface
    ib: golem_vpn.Interface

    def close(self) -> None:
        self.a.close()
        self.b.close()


async def _nodes_via(proxy: LossyProxy) -> Pair:
    """Two nodes, each told that the other is at the proxy's address."""
    a = UdpTransport(Identity.generate())
    b = UdpTransport(Identity.generate())
    proxy.link(a.local_addr, b.local_addr)
    pair = Pair(a, b, a.join(NET, CIDR, A_IP), b.join(NET, CIDR, B_IP))
    a.add_peer(NET, b.node_id, B_IP, proxy.addr)
    b.add_peer(NET, a.node_id, A_IP, proxy.addr)
    return pair


async def _transfer(pair: Pair, blob: bytes, deadline: float) -> tuple[int, str]:
    """Sends ``blob`` from A to a TCP sink on B, which answers with the length and SHA-256
    of what it read once A half-closes; returns them.

    One-way on purpose: see ``test_bidirectional_tcp_recovers_after_both_ends_time_out``
    for why a full echo under loss can stall.
    """

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest, count = hashlib.sha256(), 0
        while data := await reader.read(1 << 16):
            digest.update(data)
            count += len(data)
        writer.write(f"{count} {digest.hexdigest()}".encode())
        await writer.drain()
        writer.close()

    server = await golem_vpn.start_server(sink, pair.ib, 9)
    try:
        async with asyncio.timeout(deadline):
            reader, writer = await golem_vpn.open_connection(pair.ia, B_IP, 9, timeout=None)
            for i in range(0, len(blob), 1 << 16):
                writer.write(blob[i : i + (1 << 16)])
                await writer.drain()
            writer.write_eof()
            count, digest = (await reader.read()).decode().split()
            writer.close()
    finally:
        server.close()
    return int(count), digest


#: (loss, bytes, seed). The stack repairs most losses within a round trip (SACK recovery,
#: RACK-TLP); one that only a retransmission timeout repairs costs >= 200 ms, doubling, so
#: run times depend on the seed; these seeds let the handshake through (first datagrams
#: pass).
LOSSY_CASES = [(0.01, 2 << 20, 0), (0.05, 512 << 10, 1)]


@pytest.mark.parametrize(("loss", "size", "seed"), LOSSY_CASES, ids=["1pct-2MiB", "5pct-512KiB"])
def test_tcp_in_the_tunnel_is_byte_exact_over_a_lossy_link(
    loss: float, size: int, seed: int
) -> None:
    async def main() -> None:
        proxy = await LossyProxy.start(seed, loss)
        pair: Pair | None = None
        try:
            pair = await _nodes_via(proxy)
            blob = random.Random(seed).randbytes(size)
            count, digest = await _transfer(pair, blob, deadline=40)
            assert count == size
            assert digest == hashlib.sha256(blob).hexdigest()
            # The link really was bad, and every datagram went through the proxy.
            assert proxy.dropped > 0
            assert proxy.held > 0
            assert proxy.strays == 0
            assert proxy.dropped >= loss * proxy.received / 3, proxy
            a, b = pair.a.native.stats(), pair.b.native.stats()
            assert proxy.received <= a["datagrams_out"] + b["datagrams_out"]
            assert a["datagrams_in"] + b["datagrams_in"] <= proxy.forwarded
            assert b["datagrams_in"] >= size // 1400
            assert b["tunnel"]["bytes_in"] >= size
        finally:
            if pair is not None:
                pair.close()
            proxy.close()

    asyncio.run(main())


def test_handshake_completes_when_the_first_initiation_is_lost() -> None:
    loss = 0.05
    # The first datagram (A's handshake initiation) is dropped; the next 40 pass (enough
    # for the handshake and the 16 KiB below, so the test waits only for the retry).
    seed = seed_where(lambda f: f[0] == "drop" and "drop" not in f[1:], 41, loss, 0.03, 0.02)

    async def main() -> None:
        proxy = await LossyProxy.start(seed, loss)
        pair: Pair | None = None
        try:
            pair = await _nodes_via(proxy)
            a, b = pair.a, pair.b
            blob = random.Random(seed).randbytes(16 << 10)
            count, digest = await _transfer(pair, blob, deadline=20)
            assert (count, digest) == (len(blob), hashlib.sha256(blob).hexdigest())
            assert proxy.log[0] == (HANDSHAKE_INIT, "drop")
            assert (HANDSHAKE_INIT, "pass") in proxy.log[1:]
            # The lost initiation was made good by another one: B's own (each node starts a
            # handshake as soon as it learns of a peer) or A's retry.
            ta, tb = a.native.stats()["tunnel"], b.native.stats()["tunnel"]
            assert ta["handshakes_started"] + tb["handshakes_started"] >= 2, (ta, tb)
            assert ta["handshakes_completed"] >= 1, ta
            assert a.native.is_up(b.node_id)
            assert b.native.is_up(a.node_id)
        finally:
            if pair is not None:
                pair.close()
            proxy.close()

    asyncio.run(main())


# --- the stall behind one-way transfers ----------------------------------------------------


def _simulated_transfer(
    seed: int, loss: float, reorder: float, size: int, *, echo: bool
) -> tuple[str, float, int]:
    """Two bare :class:`~golem_vpn.Stack` s (smoltcp) on a simulated link, in virtual time.

    Fully deterministic (seeded stacks, seeded link, no real clock or socket): each
    packet is dropped with probability ``loss``, else delivered after 0.2 ms, or up to
    20 ms later with probability ``reorder``. A sends ``size`` bytes to B, which echoes
    them back if ``echo``. Returns ``("done" | "stalled", virtual_seconds, bytes_back)``;
    "stalled" means no byte moved for 20 virtual seconds.
    """
    rng = random.Random(seed)
    a = Stack(["192.168.52.2/24"], now=0.0, seed=1)
    b = Stack(["192.168.52.3/24"], now=0.0, seed=2)
    listener, _ = b.tcp_listen(7)
    conn = a.tcp_connect("192.168.52.3", 7)
    blob = random.Random(seed).randbytes(size)
    wire: list[tuple[float, Stack, bytes]] = []
    server: int | None = None
    sent, at_b, back, queued = 0, 0, bytearray(), bytearray()
    now, step, last_progress, progress = 0.0, 0.0002, 0.0, -1

    def transmit(src: Stack, dst: Stack) -> None:
        for packet in src.poll(now):
            r = rng.random()
            if r >= loss:
                late = rng.random() * 0.02 if r < loss + reorder else 0.0
                wire.append((now + 0.0002 + late, dst, packet))

    while now < 120.0:
        due = sorted((w for w in wire if w[0] <= now), key=lambda w: w[0])
        wire[:] = [w for w in wire if w[0] > now]
        for _, dst, packet in due:
            dst.receive(packet)
        if server is None:
            server = b.tcp_accept(listener)
        if sent < size:
            sent += a.tcp_send(conn, blob[sent : sent + (1 << 16)])
        if server is not None:
            data = b.tcp_recv(server)
            at_b += len(data)
            if echo:
                queued += data
            if queued:
                del queued[: b.tcp_send(server, bytes(queued))]
        back += a.tcp_recv(conn)
        transmit(a, b)
        transmit(b, a)
        done = len(back) if echo else at_b
        if done >= size:
            assert not echo or bytes(back) == blob
            return "done", now, done
        if at_b + len(back) != progress:
            progress, last_progress = at_b + len(back), now
        elif now - last_progress > 20.0:
            return "stalled", now, done
        now = round(now + step, 6)
    return "slow", now, len(back) if echo else at_b


def test_one_way_tcp_survives_the_loss_pattern_that_stalls_an_echo() -> None:
    outcome, _, moved = _simulated_transfer(3, 0.01, 0.03, 2 << 20, echo=False)
    assert (outcome, moved) == ("done", 2 << 20)


def test_bidirectional_tcp_recovers_after_both_ends_time_out() -> None:
    # Seed 3 deterministically reaches the livelock after 4 lost packets (~140 KB in).
    outcome, when, moved = _simulated_transfer(3, 0.01, 0.03, 2 << 20, echo=True)
    assert outcome == "done", f"{outcome} at {when:.1f} virtual s after {moved} bytes back"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tcp_echo_both_ways_through_a_lossy_tunnel(seed: int) -> None:
    """A full echo (both directions busy) at 1 % loss completes: before the stack's ACK fix
    this froze in 4 of 5 runs."""

    async def main() -> None:
        proxy = await LossyProxy.start(seed, 0.01)
        pair: Pair | None = None
        try:
            pair = await _nodes_via(proxy)

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(1 << 16):
                    writer.write(data)
                    await writer.drain()
                writer.close()

            server = await golem_vpn.start_server(echo, pair.ib, 7)
            blob = random.Random(seed).randbytes(1 << 20)
            async with asyncio.timeout(45):
                reader, writer = await golem_vpn.open_connection(pair.ia, B_IP, 7, timeout=None)

                async def send() -> None:
                    for i in range(0, len(blob), 1 << 16):
                        writer.write(blob[i : i + (1 << 16)])
                        await writer.drain()
                    writer.write_eof()

                sender = asyncio.create_task(send())
                echoed = await reader.readexactly(len(blob))
                await sender
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(blob).digest()
            assert proxy.dropped > 0
            writer.close()
            server.close()
        finally:
            if pair is not None:
                pair.close()
            proxy.close()

    asyncio.run(main())
