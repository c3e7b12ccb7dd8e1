"""Shared scenarios for the socket tests: streams over a LocalNetwork, under any event loop.

The stream tests (``test_streams.py``) run these under ``asyncio.run`` and the uvloop tests
(``test_uvloop.py``) run the same coroutines under ``uvloop``, so both loops are held to one
behaviour. Everything travels inside an in-process virtual network (``LocalNetwork``): no
packet leaves the process.

Large transfers count bytes instead of reading to EOF, so that a slow or missing EOF shows
up in the tests that are about EOF, not as a hang in the ones about throughput.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from golem_vpn import LocalNetwork, LocalNode

__all__ = [
    "CHUNK",
    "bidirectional_transfer",
    "echo",
    "echo_round_trip",
    "many_connections",
    "payload",
    "read_hashed",
    "run",
    "send_chunked",
    "wait_until",
]

T = TypeVar("T")

#: Write size for the bulk transfers (each write is followed by ``drain()``).
CHUNK = 256 * 1024


def run(main: Callable[[], Awaitable[T]], *, loop_factory: Any = None) -> T:
    """Runs ``main()`` on a fresh loop (``loop_factory``: e.g. ``uvloop.new_event_loop``)."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def payload(size: int, seed: int) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Sleeps in small steps until ``predicate()`` holds; fails the test after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        await asyncio.sleep(0.01)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echoes everything until the peer's EOF, then closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def send_chunked(writer: asyncio.StreamWriter, data: bytes, chunk: int = CHUNK) -> None:
    """Writes ``data`` in ``chunk``-sized writes, each followed by ``drain()``."""
    view = memoryview(data)
    for i in range(0, len(data), chunk):
        writer.write(view[i : i + chunk])
        await writer.drain()


async def read_hashed(reader: asyncio.StreamReader, size: int) -> str:
    """Reads exactly ``size`` bytes (in whatever pieces arrive); returns their SHA-256."""
    digest = hashlib.sha256()
    left = size
    while left:
        data = await reader.read(min(left, 1 << 20))
        if not data:
            raise AssertionError(f"EOF with {left} of {size} bytes still missing")
        digest.update(data)
        left -= len(data)
    return digest.hexdigest()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, out: bytes, size_in: int
) -> tuple[str, str]:
    """Sends ``out`` while receiving ``size_in`` bytes, then trades digests with the peer.

    Returns:
        ``(digest the peer computed of what we sent, digest we computed of what we got)``.
    """
    _, got = await asyncio.gather(send_chunked(writer, out), read_hashed(reader, size_in))
    writer.write(bytes.fromhex(got))
    await writer.drain()
    peer_saw = (await reader.readexactly(32)).hex()
    # Both ends half-close at about the same time (a simultaneous close): each must still
    # see the other's EOF promptly, not when TIME-WAIT ends.
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    return peer_saw, got


async def bidirectional_transfer(size: int, cidr: str = "192.168.0.0/24") -> None:
    """``size`` bytes each way at once on one connection; SHA-256 checked at both ends.

    Each side writes its own pseudo-random payload in chunks (with ``drain``) while it reads
    the other's, hashes what it received, and sends that digest back; each side then checks
    that the peer saw exactly what it sent.
    """
    async with LocalNetwork(cidr) as net:
        a, b = net.add_node(), net.add_node()
        data_a, data_b = payload(size, 1), payload(size, 2)
        server_result: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                server_result.set_result(await _exchange(reader, writer, data_b, size))
            except Exception as exc:
                server_result.set_exception(exc)
            finally:
                writer.close()

        server = await b.start_server(handler, 5001)
        reader, writer = await a.open_connection(b.ip, 5001)
        try:
            client_side = await _exchange(reader, writer, data_a, size)
            server_side = await asyncio.wait_for(server_result, 30)
        finally:
            writer.close()
            server.close()
        sha_a, sha_b = hashlib.sha256(data_a).hexdigest(), hashlib.sha256(data_b).hexdigest()
        # (what the peer saw of our bytes, what we saw of the peer's bytes)
        assert client_side == (sha_a, sha_b)
        assert server_side == (sha_b, sha_a)


async def echo_round_trip(a: LocalNode, b: LocalNode, port: int = 7) -> None:
    """The asyncio stream contract on one echo connection from ``a`` to ``b``.

    ``readline``, ``readexactly``, ``at_eof``, ``read() == b""`` after the peer's EOF,
    ``IncompleteReadError`` past EOF, and the addresses in ``get_extra_info``.
    """
    server_ends: list[asyncio.StreamWriter] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_ends.append(writer)
        await echo(reader, writer)

    server = await b.start_server(handler, port)
    assert server.port == port
    reader, writer = await a.open_connection(b.ip, port)
    try:
        peer = writer.get_extra_info("peername")
        me = writer.get_extra_info("sockname")
        assert (peer[0], peer[1]) == (str(b.ip), port)
        assert me[0] == str(a.ip)
        assert 0 < me[1] < 65536
        assert me[1] != port

        writer.write(b"hello\nworld")
        await writer.drain()
        assert await reader.readline() == b"hello\n"
        assert await reader.readexactly(5) == b"world"
        assert not reader.at_eof()

        # The server's view of the same connection is the mirror image.
        await wait_until(lambda: bool(server_ends))
        server_peer = server_ends[0].get_extra_info("peername")
        server_me = server_ends[0].get_extra_info("sockname")
        assert (server_peer[0], server_peer[1]) == (me[0], me[1])
        assert (server_me[0], server_me[1]) == (str(b.ip), port)

        writer.writelines([b"one ", b"two ", b"three"])
        await writer.drain()
        assert await reader.readexactly(13) == b"one two three"

        # Half-close: the echo server sees EOF, closes, and we read EOF in turn.
        assert writer.can_write_eof()
        writer.write_eof()
        assert await reader.read() == b""
        assert reader.at_eof()
        assert await reader.read(100) == b""
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(1)
        assert info.value.partial == b""
    finally:
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def many_connections(count: int, *, backlog: int = 512) -> None:
    """``count`` concurrent connections to one echo server, each echoed back exactly."""
    async with LocalNetwork() as net:
        a, b = net.add_node(), net.add_node()
        peers: set[tuple[str, int]] = set()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peername = writer.get_extra_info("peername")
            peers.add((peername[0], peername[1]))
            await echo(reader, writer)

        server = await b.start_server(handler, 7, backlog=backlog)

        async def client(i: int) -> bytes:
            size = 1024 + (i * 997) % 3072  # 1 KiB .. 4 KiB, all different
            message = (f"<{i:05d}>".encode() * (size // 7 + 1))[:size]
            reader, writer = await a.open_connection(b.ip, 7)
            try:
                writer.write(message)
                await writer.drain()
                got = await reader.readexactly(len(message))
            finally:
                writer.close()
                await writer.wait_closed()
            assert got == message, f"connection {i} got {got[:16]!r}..."
            return got

        try:
            results = await asyncio.gather(*(client(i) for i in range(count)))
        finally:
            server.close()
            await server.wait_closed()
        assert len(results) == count
        assert len(set(results)) == count
        assert len(peers) == count  # every client had its own (ip, port)
        assert {ip for ip, _ in peers} == {str(a.ip)}
