"""The WebSocket gate end to end: a WebSocket client, the Net API, the requestor's stack, payloads.

The Net API runs on a loopback port over a :class:`~golem_vpn.netapi.backend.LocalBackend`;
its network gets two provider nodes through the API, and the payloads run on the providers'
userspace stacks: a TCP echo server and an aiohttp application on ``PROV_B``. A client
connects with aiohttp's ``ws_connect`` through ``/net-api/v1/net/{id}/tcp/{ip}/{port}`` (or
``/udp/...``) and checks yagna's gate contract: bytes round trip exactly (SHA-256 over
32 MiB), an HTTP page is fetched over the WebSocket, text messages count as bytes, a dead
address gives 504 and a closed port 502 before any upgrade, live connections are listed,
close goes both ways, the heartbeat and idle timeout hold, and a client that stops reading
does not make the daemon buffer what the payload sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

import golem_vpn
from golem_vpn.netapi.server import Limits
from test_netapi_server import PROV_A, PROV_B, V1, V2, Api, running
from vpn_helpers import payload, run, wait_until

A_IP, B_IP, REQ_IP = "192.168.0.2", "192.168.0.3", "192.168.0.1"
ECHO, FLOOD, GREET, DRAIN, HTTP, UDP_ECHO = 7000, 7001, 7002, 7003, 80, 5353
CHUNK = 64 * 1024


def rss() -> int:
    """This process's resident set size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Payloads:
    """The servers on the providers' stacks, and what they saw."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()  # DRAIN: all bytes up to EOF
        self.flood_sent = 0
        self.flood_size = 64 << 20
        self.flood_block = payload(1 << 20, 64)
        self.closers: list[Callable[[], Awaitable[None]]] = []

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the node was removed under us
        finally:
            writer.close()

    async def drain(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # up to EOF
        await self.received.put(data)
        writer.close()

    async def greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello from the payload")
        await writer.drain()
        writer.close()

    async def flood(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while self.flood_sent < self.flood_size:
                writer.write(self.flood_block)
                await writer.drain()
                self.flood_sent += len(self.flood_block)
        finally:
            writer.close()


@asynccontextmanager
async def gate_network(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[Api, str, Payloads]]:
    """A server, a network with PROV_A (echo, drain, greet, flood, UDP echo) and PROV_B (HTTP)."""
    options.setdefault("connect_timeout", 0.5)
    async with running(tmp_path / "netapi.db", **options) as api:
        status, net = await api.call("POST", "/net", {"ip": "192.168.0.0/24"})
        assert status == 200
        nid = net["id"]
        for node, ip in ((PROV_A, A_IP), (PROV_B, B_IP)):
            assert await api.call("POST", f"/net/{nid}/nodes", {"id": node, "ip": ip}) == (
                200,
                None,
            )
        payloads = Payloads()
        a = api.backend.provider(nid, PROV_A)
        servers = [
            await a.start_server(payloads.echo, ECHO),
            await a.start_server(payloads.flood, FLOOD),
            await a.start_server(payloads.greet, GREET),
            await a.start_server(payloads.drain, DRAIN),
        ]
        udp = await a.open_datagram_endpoint(UDP_ECHO)

        async def udp_echo() -> None:
            with contextlib.suppress(golem_vpn.GolemVpnError):
                while True:
                    data, addr = await udp.recv()
                    udp.send(data[::-1], addr)

        udp_task = asyncio.create_task(udp_echo())

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=f"<h1>hello {request.match_info['name']}</h1>")

        app = web.Application()
        app.router.add_get("/hello/{name}", page)
        http_runner = web.AppRunner(app)
        await http_runner.setup()
        assert http_runner.server is not None
        b = api.backend.provider(nid, PROV_B)
        servers.append(await golem_vpn.create_server(b.interface, http_runner.server, HTTP))
        try:
            yield api, nid, payloads
        finally:
            for server in servers:
                server.close()
            udp.close()
            udp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await udp_task
            await http_runner.cleanup()


def gate_test(tmp_path: Path, test: Callable[..., Awaitable[None]], **options: Any) -> None:
    async def main() -> None:
        async with gate_network(tmp_path, **options) as (api, nid, payloads):
            await test(api, nid, payloads)

    run(main)


async def receive_bytes(ws: aiohttp.ClientWebSocketResponse, size: int) -> str:
    """SHA-256 of exactly ``size`` bytes received as binary messages."""
    digest = hashlib.sha256()
    got = 0
    while got < size:
        msg = await ws.receive(timeout=10)
        assert msg.type is WSMsgType.BINARY, msg
        assert len(msg.data) <= CHUNK
        digest.update(msg.data)
        got += len(msg.data)
    assert got == size
    return digest.hexdigest()


async def until_closed(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    """Every byte received until the server closes the WebSocket."""
    chunks = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type is WSMsgType.BINARY:
            chunks.append(msg.data)
        else:
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), msg
            return b"".join(chunks)


def upgrade_headers(api: Api) -> dict[str, str]:
    """What a WebSocket client sends, for requests whose error body we want to read."""
    return {
        **api.auth(),
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


# -- data ----------------------------------------------------------------------------------


def test_32_mib_round_trip_through_the_gate_sha256(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        data = payload(32 << 20, 32)
        url = api.ws_url(nid, A_IP, ECHO)
        async with api.session.ws_connect(url, headers=api.auth()) as ws:

            async def send() -> None:
                for i in range(0, len(data), CHUNK):  # yapapi's WEBSOCKET_CHUNK_LIMIT
                    await ws.send_bytes(data[i : i + CHUNK])

            _sent, got = await asyncio.gather(send(), receive_bytes(ws, len(data)))
        assert got == hashlib.sha256(data).hexdigest()

    gate_test(tmp_path, test)


@pytest.mark.parametrize("prefix", [V1, V2])
def test_fetch_a_page_over_the_gate_with_an_auth_token(tmp_path: Path, prefix: str) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        url = api.ws_url(nid, B_IP, HTTP, prefix=prefix) + f"?authToken={api.keys['a']}"
        async with api.session.ws_connect(url) as ws:  # no Authorization header
            request = f"GET /hello/golem HTTP/1.1\r\nHost: {B_IP}\r\nConnection: close\r\n\r\n"
            await ws.send_bytes(request.encode())
            response = await until_closed(ws)
            assert ws.close_code == 1000  # the server's EOF closes the WebSocket
        head, _sep, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 20" in head.lower()
        assert body == b"<h1>hello golem</h1>"

    gate_test(tmp_path, test)


def test_text_messages_are_raw_bytes_too(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        async with api.session.ws_connect(api.ws_url(nid, A_IP, ECHO), headers=api.auth()) as ws:
            await ws.send_str("zażółć ")
            await ws.send_bytes(b"\x00\xff")
            await ws.send_str("gęślą")
            want = "zażółć ".encode() + b"\x00\xff" + "gęślą".encode()
            got = b""
            while len(got) < len(want):
                msg = await ws.receive(timeout=5)
                assert msg.type is WSMsgType.BINARY  # always binary toward the client
                got += msg.data
            assert got == want
        # And a text-only request reaches an HTTP payload as plain bytes.
        async with api.session.ws_connect(api.ws_url(nid, B_IP, HTTP), headers=api.auth()) as ws:
            await ws.send_str(f"GET /hello/text HTTP/1.0\r\nHost: {B_IP}\r\n\r\n")
            assert (await until_closed(ws)).endswith(b"<h1>hello text</h1>")

    gate_test(tmp_path, test)


# -- connect errors ------------------------------------------------------------------------


def test_an_address_no_node_holds_is_400_at_once_and_counted(tmp_path: Path) -> None:
    # yagna sends the SYN into the void and answers 504 after its 5 s connect timeout; the
    # daemon knows no node holds the address, so it says so at once (the raw gate's words).
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        loop = asyncio.get_running_loop()
        for kind, prefix in (("tcp", V1), ("udp", V2)):
            start = loop.time()
            url = api.ws_url(nid, "192.168.0.77", 80, kind, prefix)
            async with api.session.get(url, headers=upgrade_headers(api)) as resp:
                assert resp.status == 400
                message = (await resp.json())["message"]
            assert message == (
                f"destination address not found: no node holds 192.168.0.77 in network {nid}"
            )
            assert loop.time() - start < 0.3  # the connect timeout is 3 s here
        assert api.gate.connections(nid) == []
        _, info = await api.call("GET", "/status", prefix="/net-api/v2/net")
        assert info["refused"] == {"no_such_address": 2}

    gate_test(tmp_path, test, connect_timeout=3.0)


def test_closed_port_is_502_at_once(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await api.session.ws_connect(api.ws_url(nid, A_IP, 9), headers=api.auth())
        assert info.value.status == 502
        assert loop.time() - start < 1.5  # a RST answers at once: no 3 s timeout
        async with api.session.get(api.ws_url(nid, A_IP, 9), headers=upgrade_headers(api)) as r:
            assert r.status == 502
            assert "refused" in (await r.json())["message"]

    gate_test(tmp_path, test, connect_timeout=3.0)


def test_the_default_connect_timeout_is_yagnas_5_s() -> None:
    from golem_vpn.netapi import gate

    assert (gate.CONNECT_TIMEOUT, gate.HEARTBEAT_INTERVAL, gate.CLIENT_TIMEOUT) == (5.0, 5.0, 10.0)


# -- connections and close -----------------------------------------------------------------


def test_live_connections_are_listed_while_open(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        assert await api.call("GET", f"/net/{nid}/tcp") == (200, [])
        async with (
            api.session.ws_connect(api.ws_url(nid, A_IP, ECHO), headers=api.auth()) as ws1,
            api.session.ws_connect(api.ws_url(nid, B_IP, HTTP), headers=api.auth()) as ws2,
        ):
            for prefix in (V1, V2):
                status, conns = await api.call("GET", f"/net/{nid}/tcp", prefix=prefix)
                assert status == 200
                assert sorted((c["remoteIp"], c["remotePort"]) for c in conns) == [
                    (A_IP, ECHO),
                    (B_IP, HTTP),
                ]
                for conn in conns:
                    assert set(conn) == {
                        "protocol",
                        "localIp",
                        "localPort",
                        "remoteIp",
                        "remotePort",
                    }
                    assert conn["protocol"] == 6
                    assert conn["localIp"] == REQ_IP  # the requestor's first address
                    assert 0 < conn["localPort"] < 65536
                assert len({c["localPort"] for c in conns}) == 2
            await ws1.send_bytes(b"ping")
            assert (await ws1.receive(timeout=5)).data == b"ping"
            assert not ws2.closed
        await wait_until(lambda: api.gate.connections(nid) == [])
        assert await api.call("GET", f"/net/{nid}/tcp") == (200, [])

    gate_test(tmp_path, test)


def test_client_close_closes_the_tcp_connection(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        ws = await api.session.ws_connect(api.ws_url(nid, A_IP, DRAIN), headers=api.auth())
        await ws.send_bytes(b"last ")
        await ws.send_str("words")
        await ws.close()
        # The payload read everything and then EOF: its read() returned.
        assert await asyncio.wait_for(payloads.received.get(), 5) == b"last words"
        await wait_until(lambda: api.gate.connections(nid) == [])

    gate_test(tmp_path, test)


def test_payload_close_closes_the_websocket(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        async with api.session.ws_connect(api.ws_url(nid, A_IP, GREET), headers=api.auth()) as ws:
            assert await until_closed(ws) == b"hello from the payload"
            assert ws.closed
            assert ws.close_code == 1000
        await wait_until(lambda: api.gate.connections(nid) == [])

    gate_test(tmp_path, test)


def test_removing_the_network_or_node_or_stopping_closes_gate_connections(
    tmp_path: Path,
) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        # The node's removal closes the connections to it, and only those.
        to_a = await api.session.ws_connect(api.ws_url(nid, A_IP, ECHO), headers=api.auth())
        to_b = await api.session.ws_connect(api.ws_url(nid, B_IP, HTTP), headers=api.auth())
        assert await api.call("DELETE", f"/net/{nid}/nodes/{PROV_A}") == (200, None)
        await until_closed(to_a)
        assert to_a.close_code == 1001
        assert not to_b.closed
        # The network's removal closes the rest.
        assert await api.call("DELETE", f"/net/{nid}") == (200, None)
        await until_closed(to_b)
        assert to_b.close_code == 1001
        await wait_until(lambda: api.gate.connections(nid) == [])

        # Server shutdown (on_shutdown calls close_all) closes everything with 1001 too.
        nid2 = await api.create("10.0.0.0/24")
        await api.call("POST", f"/net/{nid2}/nodes", {"id": PROV_A, "ip": "10.0.0.2"})
        server = await api.backend.provider(nid2, PROV_A).start_server(lambda r, w: None, 80)
        ws = await api.session.ws_connect(api.ws_url(nid2, "10.0.0.2", 80), headers=api.auth())
        closing = asyncio.create_task(api.gate.close_all())
        await until_closed(ws)
        await asyncio.wait_for(closing, 5)
        assert ws.close_code == 1001
        server.close()

    gate_test(tmp_path, test)


def test_heartbeat_pings_and_idle_timeout(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        url = api.ws_url(nid, A_IP, DRAIN)
        # A client that answers pings (aiohttp's autoping) outlives the idle timeout.
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            receiver = asyncio.create_task(ws.receive())  # answers the pings meanwhile
            await asyncio.sleep(1.2)  # 6 x heartbeat, 2 x idle timeout
            assert not receiver.done()
            assert not ws.closed
            await ws.send_bytes(b"still here")
            await ws.close()
            assert (await receiver).type in (WSMsgType.CLOSING, WSMsgType.CLOSED)
        assert await asyncio.wait_for(payloads.received.get(), 5) == b"still here"

        # A client that never answers is closed after the idle timeout; the payload sees EOF.
        loop = asyncio.get_running_loop()
        async with api.session.ws_connect(url, headers=api.auth(), autoping=False) as ws:
            start = loop.time()
            pings = 0
            while True:
                msg = await ws.receive(timeout=5)
                if msg.type is WSMsgType.PING:
                    pings += 1
                    continue
                break
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED), msg
            assert ws.close_code == 1001
            assert 0.5 <= loop.time() - start < 2.0
            assert pings >= 2  # every 0.2 s
        assert await asyncio.wait_for(payloads.received.get(), 5) == b""

    gate_test(tmp_path, test, heartbeat=0.2, idle_timeout=0.6)


# -- backpressure --------------------------------------------------------------------------


def test_slow_reader_does_not_make_the_daemon_buffer(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        url = api.ws_url(nid, A_IP, FLOOD)
        before = rss()
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            # The client reads nothing: the payload must end up blocked in drain().
            last = -1
            peak_buffered = 0
            while payloads.flood_sent != last:
                last = payloads.flood_sent
                for _ in range(10):
                    await asyncio.sleep(0.05)
                    peak_buffered = max(peak_buffered, api.gate.buffered())
            stalled_at = payloads.flood_sent
            assert stalled_at > 0
            growth = rss() - before
            assert stalled_at < payloads.flood_size // 2, stalled_at  # kernel buffers only
            assert peak_buffered <= 1 << 20, peak_buffered  # about 192 KiB in practice
            assert growth < 64 << 20, growth
            # Reading resumes the flow: all 64 MiB arrive intact.
            got = await receive_bytes(ws, payloads.flood_size)
            block_digest = hashlib.sha256(payloads.flood_block * 64).hexdigest()
            assert got == block_digest
            assert await until_closed(ws) == b""
        print(f"stalled at {stalled_at >> 20} MiB, gate held {peak_buffered} B at most")

    gate_test(tmp_path, test)


def test_slow_payload_slows_the_client(tmp_path: Path) -> None:
    # The other direction: a payload that does not read stops the gate reading the client.
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        got = hashlib.sha256()
        total = 0

        async def lazy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal total
            started.set()
            await release.wait()
            while data := await reader.read(1 << 20):
                got.update(data)
                total += len(data)
            writer.close()

        a = api.backend.provider(nid, PROV_A)
        server = await a.start_server(lazy, 7100)
        data = payload(48 << 20, 48)
        sent = 0
        async with api.session.ws_connect(api.ws_url(nid, A_IP, 7100), headers=api.auth()) as ws:
            await started.wait()

            async def send() -> None:
                nonlocal sent
                for i in range(0, len(data), CHUNK):
                    await ws.send_bytes(data[i : i + CHUNK])
                    sent += CHUNK

            sender = asyncio.create_task(send())
            last = -1
            while sent != last:
                last = sent
                await asyncio.sleep(0.3)
            assert sent < len(data) // 2, sent  # the client is blocked
            release.set()
            await asyncio.wait_for(sender, 20)
        await wait_until(lambda: total == len(data), 20)
        assert got.hexdigest() == hashlib.sha256(data).hexdigest()
        server.close()

    gate_test(tmp_path, test)


# -- UDP -----------------------------------------------------------------------------------


def test_udp_gate_one_message_per_datagram(tmp_path: Path) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        url = api.ws_url(nid, A_IP, UDP_ECHO, kind="udp")
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            messages: list[bytes] = [b"x", b"datagram" * 10, bytes(range(256)) * 4]
            for message in messages:
                await ws.send_bytes(message)
            await ws.send_str("text too")
            for message in [*messages, b"text too"]:
                msg = await ws.receive(timeout=5)
                assert msg.type is WSMsgType.BINARY
                assert msg.data == message[::-1]  # one message per datagram, boundaries kept
            # Datagrams from anyone but ip:port are dropped, as on a connected socket.
            [conn] = api.gate.connections(nid, protocol=17)
            assert (conn.remote_ip, conn.remote_port) == (A_IP, UDP_ECHO)
            b = api.backend.provider(nid, PROV_B)
            async with await b.open_datagram_endpoint() as stranger:
                stranger.send(b"spoof", (REQ_IP, conn.local_port))
                await asyncio.sleep(0.1)
            await ws.send_bytes(b"after")
            assert (await ws.receive(timeout=5)).data == b"retfa"
            # A datagram larger than the stack's MTU allows closes with 1009.
            await ws.send_bytes(b"\x00" * 60000)
            assert await until_closed(ws) == b""
            assert ws.close_code == 1009
        await wait_until(lambda: api.gate.connections(nid, protocol=None) == [])

    gate_test(tmp_path, test)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            Limits(gates_per_identity=2),
            "Gate connections per identity limit reached (2); the daemon's "
            "--max-gates-per-key ($GOLEM_VPN_MAX_GATES_PER_KEY) sets it",
        ),
        (
            Limits(gates=2),
            "Gate connections limit reached (2); the daemon's --max-gates "
            "($GOLEM_VPN_MAX_GATES) sets it",
        ),
    ],
    ids=["per-key", "in-all"],
)
def test_gate_connections_are_bounded_429_and_counted(
    tmp_path: Path, limits: Limits, message: str
) -> None:
    async def test(api: Api, nid: str, payloads: Payloads) -> None:
        url = api.ws_url(nid, A_IP, ECHO)
        first = await api.session.ws_connect(url, headers=api.auth())
        udp = api.ws_url(nid, A_IP, UDP_ECHO, "udp")
        second = await api.session.ws_connect(udp, headers=api.auth())
        try:
            async with api.session.get(url, headers=upgrade_headers(api)) as resp:
                assert resp.status == 429
                assert (await resp.json())["message"] == message
            # The two still work; closing one frees its place.
            await first.send_bytes(b"ping")
            assert (await first.receive()).data == b"ping"
        finally:
            await first.close()
        async with api.session.ws_connect(url, headers=api.auth()) as third:
            await third.send_bytes(b"again")
            assert (await third.receive()).data == b"again"
        await second.close()
        _, info = await api.call("GET", "/status", prefix="/net-api/v2/net")
        assert info["refused"] == {"gates_limit": 1}

    gate_test(tmp_path, test, limits=limits)
