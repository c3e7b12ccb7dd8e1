"""UDP, ICMP and the bare sans-IO ``Stack``: datagrams, pings, and a TCP handshake by hand.

The first part runs over a :class:`golem_vpn.LocalNetwork` (every packet stays in the
process); the second wires two :class:`golem_vpn.Stack` objects together with no event loop
at all, moving packets and advancing time by hand, as a driver other than ``Interface``
would. The last part checks the stack's configuration and address errors.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress

import pytest

from golem_vpn import GolemVpnError, LocalNetwork, Stack
from golem_vpn.errors import (
    AddressError,
    AddressInUse,
    DatagramTooLarge,
    NetworkUnreachable,
    SocketClosed,
    StackConfigError,
)
from vpn_helpers import run

CIDRS = ["192.168.0.0/24", "fd00::/64"]

# --- UDP over a LocalNetwork --------------------------------------------------------------


async def _nothing_arrives(endpoint: object, wait: float = 0.2) -> bool:
    """True if ``endpoint.recv()`` gets nothing within ``wait`` seconds."""
    try:
        await asyncio.wait_for(endpoint.recv(), wait)  # type: ignore[attr-defined]
    except TimeoutError:
        return True
    return False


@pytest.mark.parametrize("cidr", CIDRS)
def test_udp_both_directions_exact_payloads_and_sender(cidr: str) -> None:
    async def main() -> None:
        async with LocalNetwork(cidr) as net:
            a, b = net.add_node(), net.add_node()
            ep_a = await a.open_datagram_endpoint()  # ephemeral port
            ep_b = await b.open_datagram_endpoint(5353)
            assert ep_b.port == 5353
            assert 0 < ep_a.port < 65536
            biggest = a.stack.max_datagram(str(b.ip))
            sizes = [0, 1, 17, 512, 1000, biggest]
            sent = [bytes([i]) * size for i, size in enumerate(sizes)]
            for datagram in sent:
                ep_a.send(datagram, (str(b.ip), 5353))
            got = [await asyncio.wait_for(ep_b.recv(), 2) for _ in sent]
            # Boundaries and order kept; the sender is a's address and port.
            assert got == [(d, (str(a.ip), ep_a.port)) for d in sent]

            # Reply to whoever sent it.
            _, sender = got[-1]
            ep_b.send(b"reply", sender)
            assert await asyncio.wait_for(ep_a.recv(), 2) == (b"reply", (str(b.ip), 5353))
            assert ep_a.dropped == ep_b.dropped == 0

            ep_a.close()
            with pytest.raises(SocketClosed):
                ep_a.send(b"x", (str(b.ip), 5353))
            ep_b.close()

    run(main)


@pytest.mark.parametrize("cidr", CIDRS)
def test_largest_datagram_fits_and_one_byte_more_does_not(cidr: str) -> None:
    async def main() -> None:
        async with LocalNetwork(cidr) as net:
            a, b = net.add_node(), net.add_node()
            header = 20 + 8 if a.ip.version == 4 else 40 + 8
            limit = a.stack.max_datagram(str(b.ip))
            assert limit == a.stack.mtu - header
            ep_a = await a.open_datagram_endpoint()
            ep_b = await b.open_datagram_endpoint(9000)
            exact = bytes(range(256)) * (limit // 256) + bytes(limit % 256)
            assert len(exact) == limit
            ep_a.send(exact, (str(b.ip), 9000))
            assert await asyncio.wait_for(ep_b.recv(), 2) == (exact, (str(a.ip), ep_a.port))

            with pytest.raises(DatagramTooLarge) as info:
                ep_a.send(exact + b"!", (str(b.ip), 9000))
            assert isinstance(info.value, OSError)
            assert isinstance(info.value, GolemVpnError)
            assert info.value.errno == errno.EMSGSIZE
            # The stack says the same without the endpoint in between.
            socket_id, _ = a.stack.udp_bind()
            with pytest.raises(DatagramTooLarge):
                a.stack.udp_send_to(socket_id, bytes(limit + 1), (str(b.ip), 9000))
            assert await _nothing_arrives(ep_b)

    run(main)


def test_double_bind_raises_address_in_use() -> None:
    async def main() -> None:
        async with LocalNetwork() as net:
            a = net.add_node()
            first = await a.open_datagram_endpoint(5353)
            with pytest.raises(AddressInUse) as info:
                await a.open_datagram_endpoint(5353)
            assert isinstance(info.value, OSError)
            assert info.value.errno == errno.EADDRINUSE

            server = await a.start_server(lambda r, w: None, 5353)  # TCP ports are apart
            with pytest.raises(AddressInUse):
                await a.start_server(lambda r, w: None, 5353)

            # Closing frees the port.
            first.close()
            again = await a.open_datagram_endpoint(5353)
            assert again.port == 5353
            server.close()
            await server.wait_closed()
            server = await a.start_server(lambda r, w: None, 5353)
            server.close()
            again.close()

    run(main)


def test_broadcast_reaches_every_other_node() -> None:
    async def main() -> None:
        async with LocalNetwork("192.168.0.0/24") as net:
            a, b, c = net.add_node(), net.add_node(), net.add_node()
            eps = [await node.open_datagram_endpoint(9999) for node in (a, b, c)]
            eps[0].send(b"to all", ("192.168.0.255", 9999))
            for endpoint in eps[1:]:
                assert await asyncio.wait_for(endpoint.recv(), 2) == (
                    b"to all",
                    (str(a.ip), 9999),
                )
            # Once each: no copies, and the sender does not hear itself.
            for endpoint in eps:
                assert await _nothing_arrives(endpoint, 0.1)

    run(main)


def test_udp_to_a_family_the_node_lacks_is_unreachable() -> None:
    async def main() -> None:
        async with LocalNetwork("192.168.0.0/24") as net:
            a = net.add_node()
            endpoint = await a.open_datagram_endpoint()
            with pytest.raises(NetworkUnreachable) as info:
                endpoint.send(b"x", ("fd00::1", 9))
            assert info.value.errno == errno.ENETUNREACH

    run(main)


# --- ICMP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cidr", CIDRS)
def test_ping_returns_a_positive_rtt(cidr: str) -> None:
    async def main() -> None:
        async with LocalNetwork(cidr) as net:
            a, b = net.add_node(), net.add_node()
            rtts = [await a.ping(b.ip, timeout=2) for _ in range(3)]
            assert all(0 < rtt < 2 for rtt in rtts)
            assert 0 < await b.ping(a.ip, timeout=2, payload=bytes(1000)) < 2

    run(main)


@pytest.mark.parametrize(("cidr", "unheld"), [(CIDRS[0], "192.168.0.200"), (CIDRS[1], "fd00::c8")])
def test_ping_to_an_unheld_address_times_out(cidr: str, unheld: str) -> None:
    async def main() -> None:
        async with LocalNetwork(cidr) as net:
            a, _b = net.add_node(), net.add_node()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError) as info:
                await a.ping(unheld, timeout=0.5)
            assert 0.45 <= loop.time() - started < 2
            assert isinstance(info.value, GolemVpnError)
            assert info.value.errno == errno.ETIMEDOUT
            assert await a.ping(_b.ip, timeout=2) > 0  # and pinging still works

    run(main)


# --- the sans-IO Stack, driven by hand ----------------------------------------------------


class Wire:
    """Two stacks joined by a perfect wire, and a clock that moves only when told to."""

    def __init__(self, left: Stack, right: Stack, now: float = 0.0) -> None:
        self.left, self.right, self.now = left, right, now

    def step(self) -> tuple[list[bytes], list[bytes]]:
        """Polls both stacks at ``now`` and delivers what they sent to each other."""
        out_left, out_right = self.left.poll(self.now), self.right.poll(self.now)
        self.right.receive_many(out_left)
        self.left.receive_many(out_right)
        return out_left, out_right

    def settle(self, horizon: float = 0.05) -> int:
        """Steps until both are quiet, following timers up to ``horizon`` seconds ahead
        (delayed ACKs) but not as far as retransmission or keep-alive timers."""
        moved = 0
        for _ in range(1000):
            out_left, out_right = self.step()
            moved += len(out_left) + len(out_right)
            if out_left or out_right:
                continue
            timers = (self.left.poll_at(self.now), self.right.poll_at(self.now))
            nearest = min((t for t in timers if t is not None), default=None)
            if nearest is None or nearest > self.now + horizon:
                return moved
            # One microsecond past the timer: polling at exactly ``poll_at()`` may not fire it
            # (see test_polling_at_the_time_poll_at_gave_fires_the_timer).
            self.now = max(self.now, nearest + 1e-6)
        raise AssertionError("the stacks never went quiet")


def test_two_bare_stacks_handshake_and_exchange_bytes_by_hand() -> None:
    client = Stack("192.168.0.1/24", seed=1, now=0.0)
    server = Stack("192.168.0.2/24", seed=2, now=0.0)
    wire = Wire(client, server)

    listener, port = server.tcp_listen(8080, backlog=4)
    assert port == 8080
    assert server.tcp_accept(listener) is None
    conn = client.tcp_connect("192.168.0.2", 8080)
    assert client.tcp_status(conn).state == "SYN-SENT"
    assert client.tcp_send(conn, b"early") == 0  # nothing fits before the handshake

    # The SYN: one bare IPv4/TCP packet from .1 to .2.
    (syn,) = client.poll(wire.now)
    assert syn[0] >> 4 == 4
    assert syn[9] == 6  # TCP
    assert ipaddress.ip_address(syn[12:16]) == ipaddress.ip_address("192.168.0.1")
    assert ipaddress.ip_address(syn[16:20]) == ipaddress.ip_address("192.168.0.2")
    assert server.receive(syn)
    wire.settle()

    status = client.tcp_status(conn)
    assert status.established
    assert status.state == "ESTABLISHED"
    assert listener in server.take_ready()
    accepted = server.tcp_accept(listener)
    assert accepted is not None
    assert server.tcp_accept(listener) is None
    assert server.tcp_status(accepted).remote == client.tcp_status(conn).local
    assert server.tcp_status(accepted).local == ("192.168.0.2", 8080)

    # Bytes both ways.
    assert client.tcp_send(conn, b"hello, server") == 13
    wire.settle()
    assert server.tcp_recv(accepted) == b"hello, server"
    assert server.tcp_recv(accepted) == b""
    assert server.tcp_send(accepted, b"hello, client") == 13
    wire.settle()
    assert conn in client.take_ready()
    assert client.tcp_recv(conn, 5) == b"hello"
    assert client.tcp_recv(conn) == b", client"

    # Time is an input: a lost segment is resent only once the clock reaches the stack's
    # timer (its retransmission timeout or tail loss probe: about 200 ms here), not before.
    assert client.tcp_send(conn, b"lost once") == 9
    assert len(client.poll(wire.now)) == 1  # dropped on the floor
    deadline = client.poll_at(wire.now)
    assert deadline is not None
    assert wire.now + 0.19 <= deadline <= wire.now + 0.5
    assert client.poll(wire.now + 0.1) == []
    assert server.tcp_status(accepted).recv_queue == 0
    wire.now = deadline + 1e-6  # a driver may poll a little after poll_at
    resent = client.poll(wire.now)
    assert len(resent) == 1
    assert resent[0].endswith(b"lost once")
    server.receive_many(resent)
    wire.settle()
    assert server.tcp_recv(accepted) == b"lost once"
    assert client.tcp_status(conn).send_queue == 0  # acknowledged

    # Half-close: FIN after the data; the server reads to EOF and can still answer.
    client.tcp_send(conn, b"bye")
    client.tcp_shutdown(conn)
    wire.settle()
    assert server.tcp_recv(accepted) == b"bye"
    status = server.tcp_status(accepted)
    assert not status.may_recv
    assert status.state == "CLOSE-WAIT"
    assert server.tcp_send(accepted, b"ok") == 2
    server.release(accepted)
    wire.settle()
    assert client.tcp_recv(conn) == b"ok"
    assert client.tcp_status(conn).state == "TIME-WAIT"
    with pytest.raises(SocketClosed):
        server.release(accepted)

    # Every packet one sent, the other received.
    assert client.stats()["packets_out"] == server.stats()["packets_in"] + 1  # the lost one
    assert server.stats()["packets_out"] == client.stats()["packets_in"]


def test_polling_at_the_time_poll_at_gave_fires_the_timer() -> None:
    # A driver that sleeps until poll_at() and polls then must see the timer fire; otherwise
    # it livelocks (poll_at keeps returning the same instant). Here the timer is the
    # server's delayed ACK, 5 ms after data arrives at t = 1.0 s: 1.005 * 1e6 is
    # 1004999.999..., truncated to 1004999 us, one microsecond early.
    t = 1.0
    client = Stack("192.168.0.1/24", seed=1, now=t)
    server = Stack("192.168.0.2/24", seed=2, now=t)
    listener, _ = server.tcp_listen(80)
    conn = client.tcp_connect("192.168.0.2", 80)
    for _ in range(3):
        server.receive_many(client.poll(t))
        client.receive_many(server.poll(t))
    assert client.tcp_status(conn).established
    assert server.tcp_accept(listener) is not None
    assert client.tcp_send(conn, b"data") == 4
    server.receive_many(client.poll(t))
    assert server.poll(t) == []  # the ACK is delayed...
    deadline = server.poll_at(t)
    assert deadline == pytest.approx(t + 0.005)
    assert len(server.poll(deadline)) == 1  # ...and leaves when its timer is due


def test_bare_stack_refused_connect_by_hand() -> None:
    client = Stack("fd00::1/64", seed=3)
    server = Stack("fd00::2/64", seed=4)
    wire = Wire(client, server)
    conn = client.tcp_connect("fd00::2", 1234)
    wire.settle()
    status = client.tcp_status(conn)
    assert status.failure == "refused"
    assert not status.established
    client.release(conn)
    wire.settle()
    assert client.socket_count() == 0


def test_bare_stack_udp_and_ping_by_hand() -> None:
    left = Stack(["192.168.0.1/24", "fd00::1/64"], seed=5)
    right = Stack(["192.168.0.2/24", "fd00::2/64"], seed=6)
    wire = Wire(left, right)
    sock_left, port_left = left.udp_bind()
    sock_right, _ = right.udp_bind(53)
    left.udp_send_to(sock_left, b"query", ("fd00::2", 53))
    wire.settle()
    assert right.udp_recv_from(sock_right) == (b"query", ("fd00::1", port_left))
    assert right.udp_recv_from(sock_right) is None

    icmp = left.icmp_open()
    left.ping_send(icmp, "192.168.0.2", 7, b"payload")
    wire.settle()
    assert left.ping_recv(icmp) == ("192.168.0.2", 7, b"payload")
    assert left.ping_recv(icmp) is None
    assert left.socket_count() == 2


# --- configuration and address errors ----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mtu": 100},
        {"mtu": 575},
        {"mtu": 70000},
        {"tcp_rx_buffer": 0},
        {"tcp_tx_buffer": 0},
        {"udp_buffer": 0},
        {"tcp_rx_buffer": 1023},
    ],
)
def test_bad_stack_settings_raise_stack_config_error(kwargs: dict[str, int]) -> None:
    with pytest.raises(StackConfigError) as info:
        Stack("192.168.0.1/24", **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GolemVpnError)


@pytest.mark.parametrize(
    "addresses",
    [
        [],
        [f"192.168.0.{i}/24" for i in range(1, 6)],  # at most four
        "192.168.0.1/33",
        "0.0.0.0/24",
    ],
)
def test_bad_address_sets_raise_stack_config_error(addresses: object) -> None:
    with pytest.raises(StackConfigError):
        Stack(addresses)  # type: ignore[arg-type]


def test_smallest_valid_settings_build_a_stack() -> None:
    stack = Stack("192.168.0.1", mtu=576, tcp_rx_buffer=1024, tcp_tx_buffer=1024, udp_buffer=1024)
    assert stack.mtu == 576
    assert stack.addresses == ["192.168.0.1/24"]  # a bare IPv4 address is a /24
    assert stack.max_datagram("192.168.0.2") == 576 - 28


@pytest.mark.parametrize("text", ["not-an-ip", "192.168.0.256/24", "fd00::zz/64", ""])
def test_malformed_addresses_raise_address_error(text: str) -> None:
    with pytest.raises(AddressError):
        Stack(text)


def test_malformed_destinations_raise_address_error() -> None:
    stack = Stack("192.168.0.1/24")
    udp, _ = stack.udp_bind()
    icmp = stack.icmp_open()
    for call in (
        lambda: stack.tcp_connect("nonsense", 80),
        lambda: stack.udp_send_to(udp, b"x", ("192.168.0", 9)),
        lambda: stack.ping_send(icmp, "::g", 1, b""),
        lambda: stack.max_datagram("host.example"),
    ):
        with pytest.raises(AddressError):
            call()
    assert isinstance(AddressError("x"), ValueError)
