"""The Net API client against a faithful fake of yagna's wire contract.

:class:`FakeNetApi` is a small aiohttp server that follows the contract of ya-client's
``net-api.yaml`` and yagna's handlers (reference doc §1): every endpoint under
``/net-api/v1`` and ``/net-api/v2/vpn``, ``GET /net-api/v2/net/status``, camelCase JSON,
app-key auth (Bearer or ``?authToken=``, 401 with a message), ownership (404 for an identity
without networks, 403 with an empty body for another's), 400/409 with ``{"message"}`` and a
WebSocket gate that answers 504 with an empty body when nothing listens. Gate "services" on
node addresses stand in for payloads: echo (7), discard (9), a greeting then close (13) and a
never-ending source (19), a
source that never reads, so never answers a close (20), and a connection that is reset after a
greeting (21, closed with 1011 as golem-vpn's gate does). Port 1 is refused with golem-vpn's
502 (yagna would time out: 504). ``test_sdk.py`` reuses it.

Each test runs on a fresh loop (``vpn_helpers.run``); the server listens on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from golem_vpn.errors import (
    AddressError,
    AddressTaken,
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    Forbidden,
    GolemVpnError,
    InvalidNodeId,
    NetworkNotFound,
)
from golem_vpn.model import IPNetwork, check_host, parse_network, parse_node_id
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.backend import LocalBackend
from golem_vpn.netapi.client import (
    AddressInfo,
    BadRequest,
    Client,
    ConnectionInfo,
    NetApiError,
    NetApiUnavailable,
    NetStatus,
    NetworkInfo,
    NodeInfo,
)
from golem_vpn.netapi.server import serve as serve_netapi
from golem_vpn.netapi.store import Store
from vpn_helpers import payload, read_hashed, run, send_chunked, wait_until

KEY = "s3cret-app-key-7f9a"
OTHER_KEY = "other-app-key-0b1c"
OWNER = "0x" + "a1" * 20
OTHER = "0x" + "e5" * 20
PROV_A = "0x" + "b2" * 20
PROV_B = "0x" + "c3" * 20
PROV_C = "0x" + "d4" * 20

REFUSED, ECHO, DISCARD, GREETING, SOURCE, DEAF, RESET = 1, 7, 9, 13, 19, 20, 21
GREETING_TEXT = b"hello from the payload\n"
BODY = web.RequestKey("body", object)
IDENTITY = web.RequestKey("identity", str)


# --- the fake ---------------------------------------------------------------------------------


@dataclass
class FakeNet:
    """One network of the fake, as yagna's VpnSupervisor keeps it."""

    id: str
    owner: str
    network: IPNetwork
    answer_ip: str  # the "ip" of the createNetwork answer: given address + "/prefix"
    gateway: str
    addresses: list[str]
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> ip


@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    authorization: str | None
    query: dict[str, str]
    body: Any


class FakeNetApi:
    """A yagna-compatible Net API with a WebSocket gate, in memory.

    Attributes:
        keys: app key -> identity (node id).
        networks: network id -> network.
        seen: every request, in order.
        inject: if set, ``(status, body, content_type)`` answered to the next request.
        delay: seconds every REST answer waits (to test client timeouts).
        gate_open: the gate's live connections (for ``GET /net/{id}/tcp``).
        gate_closed: how many gate connections ended, and ``discarded`` bytes sunk by port 9.
        source_sent: bytes the never-ending source (port 19) managed to send.
    """

    def __init__(self) -> None:
        self.keys = {KEY: OWNER, OTHER_KEY: OTHER}
        self.networks: dict[str, FakeNet] = {}
        self.seen: list[Seen] = []
        self.inject: tuple[int, str, str] | None = None
        self.delay = 0.0
        self.gate_open: list[tuple[str, dict[str, Any]]] = []
        self.gate_closed = 0
        self.discarded = 0
        self.source_sent = 0
        self.app = web.Application(middlewares=[self._middleware])
        for prefix in ("/net-api/v1", "/net-api/v2/vpn"):
            self.app.router.add_get(prefix + "/net", self.get_networks)
            self.app.router.add_post(prefix + "/net", self.create_network)
            self.app.router.add_get(prefix + "/net/{net}", self.get_network)
            self.app.router.add_delete(prefix + "/net/{net}", self.remove_network)
            self.app.router.add_get(prefix + "/net/{net}/addresses", self.get_addresses)
            self.app.router.add_post(prefix + "/net/{net}/addresses", self.add_address)
            self.app.router.add_get(prefix + "/net/{net}/nodes", self.get_nodes)
            self.app.router.add_post(prefix + "/net/{net}/nodes", self.add_node)
            self.app.router.add_delete(prefix + "/net/{net}/nodes/{node}", self.remove_node)
            self.app.router.add_get(prefix + "/net/{net}/tcp", self.get_connections)
            self.app.router.add_get(prefix + "/net/{net}/tcp/{ip}/{port}", self.connect_tcp)
        self.app.router.add_get("/net-api/v2/net/status", self.status)

    def paths(self, method: str | None = None) -> list[str]:
        """``"METHOD /path"`` of every request seen (of one method, if given)."""
        return [f"{s.method} {s.path}" for s in self.seen if method in (None, s.method)]

    # -- plumbing ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        body: Any = None
        if request.can_read_body:
            raw = await request.text()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.headers.get("Authorization"),
                dict(request.query),
                body,
            )
        )
        request[BODY] = body
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.inject is not None:
            status, text, content_type = self.inject
            self.inject = None
            return web.Response(status=status, text=text, content_type=content_type)
        auth = request.headers.get("Authorization", "")
        key = (
            auth[len("Bearer ") :] if auth.startswith("Bearer ") else request.query.get("authToken")
        )
        if not key:
            return _error(401, "Missing application key")
        if key not in self.keys:
            return _error(401, "Invalid application key")
        request[IDENTITY] = self.keys[key]
        return await handler(request)

    def _owned(self, request: web.Request) -> FakeNet:
        """yagna's ownership check: 404 if the identity owns nothing, 403 if not this one."""
        identity = request[IDENTITY]
        mine = {n.id for n in self.networks.values() if n.owner == identity}
        if not mine:
            raise _http(404, "Network not found")
        net_id = request.match_info["net"]
        if net_id not in mine:
            raise web.HTTPForbidden()  # yagna: 403 with an empty body
        return self.networks[net_id]

    @staticmethod
    def _body(request: web.Request) -> dict[str, Any]:
        body = request[BODY]
        if not isinstance(body, dict):
            raise _http(400, "Json deserialize error: expected an object")
        return body

    # -- networks ----------------------------------------------------------------------------

    async def get_networks(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        return web.json_response(
            [_net_json(n) for n in self.networks.values() if n.owner == identity]
        )

    async def create_network(self, request: web.Request) -> web.Response:
        body = self._body(request)
        if not isinstance(body.get("ip"), str):
            raise _http(400, "Json deserialize error: missing field `ip`")
        try:
            network = parse_network(body["ip"], body.get("mask"))
            first = next(iter(network.hosts()))
            gateway = body.get("gateway") or str(first)
            ip_address(gateway)
        except (AddressError, ValueError) as exc:
            raise _http(400, f"Network address error: {exc}") from None
        given = body["ip"].partition("/")[0]
        net = FakeNet(
            uuid4().hex,
            request[IDENTITY],
            network,
            f"{given}/{network.prefixlen}",
            gateway,
            [str(first)],
        )
        self.networks[net.id] = net
        return web.json_response(_net_json(net))

    async def get_network(self, request: web.Request) -> web.Response:
        return web.json_response(_net_json(self._owned(request)))

    async def remove_network(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        del self.networks[net.id]
        return web.json_response(None)

    # -- addresses ---------------------------------------------------------------------------

    async def get_addresses(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        prefix = net.network.prefixlen
        return web.json_response([{"ip": f"{ip}/{prefix}"} for ip in net.addresses])

    async def add_address(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        body = self._body(request)
        try:
            addr = check_host(net.network, body.get("ip", ""))
        except AddressError as exc:
            raise _http(400, f"Network address mismatch: {exc}") from None
        if str(addr) in net.nodes.values():
            raise _http(409, f"IP address is taken: {addr}")
        if str(addr) not in net.addresses:
            net.addresses.append(str(addr))
        return web.json_response(None)

    # -- nodes -------------------------------------------------------------------------------

    async def get_nodes(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        return web.json_response([{"id": i, "ip": ip} for i, ip in net.nodes.items()])

    async def add_node(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        body = self._body(request)
        try:
            node_id = parse_node_id(body.get("id"))
            addr = str(check_host(net.network, body.get("ip", "")))
        except (AddressError, InvalidNodeId) as exc:
            raise _http(400, str(exc)) from None
        holders = {ip: node for node, ip in net.nodes.items()}
        holders.update((ip, net.owner) for ip in net.addresses)
        if holders.get(addr, node_id) != node_id:
            raise _http(409, f"IP address is taken: {addr}")  # golem-vpn: not swallowed
        net.nodes[node_id] = addr
        return web.json_response(None)

    async def remove_node(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        net.nodes.pop(request.match_info["node"].lower(), None)
        return web.json_response(None)

    # -- gate and status ---------------------------------------------------------------------

    async def get_connections(self, request: web.Request) -> web.Response:
        net = self._owned(request)
        return web.json_response([conn for net_id, conn in self.gate_open if net_id == net.id])

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"nodeId": request[IDENTITY], "listenIp": "127.0.0.1", "sessions": 0}
        )

    async def connect_tcp(self, request: web.Request) -> web.StreamResponse:
        net = self._owned(request)
        ip, port = request.match_info["ip"], int(request.match_info["port"])
        if ip in net.nodes.values() and port == REFUSED:
            return web.Response(status=502)  # golem-vpn's gate: refused (yagna: 504)
        if ip not in net.nodes.values() or port not in (
            ECHO,
            DISCARD,
            GREETING,
            SOURCE,
            DEAF,
            RESET,
        ):
            return web.Response(status=504)  # yagna: ConnectionTimeout, empty body
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = {
            "protocol": 6,
            "localIp": net.addresses[0],
            "localPort": 40000 + len(self.gate_open),
            "remoteIp": ip,
            "remotePort": port,
        }
        self.gate_open.append((net.id, conn))
        try:
            if port == GREETING:
                await ws.send_bytes(GREETING_TEXT)
                await ws.close()
            elif port == RESET:
                await ws.send_bytes(GREETING_TEXT)
                await ws.close(code=aiohttp.WSCloseCode.INTERNAL_ERROR, message=b"reset")
            elif port == DEAF:
                await self._flood(ws)  # never reads, so never sees (or answers) a close
            elif port == SOURCE:
                # Send without end, and read meanwhile (as yagna does) to see the client's close.
                pump = asyncio.create_task(self._flood(ws))
                try:
                    async for _ in ws:
                        pass
                finally:
                    pump.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pump
            else:
                async for msg in ws:
                    data = msg.data if msg.type is aiohttp.WSMsgType.BINARY else b""
                    if msg.type is aiohttp.WSMsgType.TEXT:
                        data = msg.data.encode()
                    if port == ECHO:
                        await ws.send_bytes(data)
                    else:
                        self.discarded += len(data)
        except (ConnectionError, aiohttp.ClientError):
            pass
        finally:
            self.gate_open.remove((net.id, conn))
            self.gate_closed += 1
        return ws

    async def _flood(self, ws: web.WebSocketResponse) -> None:
        chunk = b"\x5a" * 65536
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            while not ws.closed:
                await ws.send_bytes(chunk)
                self.source_sent += len(chunk)


def _net_json(net: FakeNet) -> dict[str, Any]:
    return {
        "id": net.id,
        "ip": net.answer_ip,
        "mask": str(net.network.netmask),
        "gateway": net.gateway,
    }


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _http(status: int, message: str) -> web.HTTPException:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict}[status]
    return cls(text=json.dumps({"message": message}), content_type="application/json")


@asynccontextmanager
async def serve(fake: FakeNetApi | None = None) -> AsyncIterator[tuple[FakeNetApi, str]]:
    """Serves a fake on a loopback port; yields it and its API root (``http://host:port``)."""
    fake = fake or FakeNetApi()
    server = TestServer(fake.app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@asynccontextmanager
async def fake_client(
    key: str | None = KEY, **options: Any
) -> AsyncIterator[tuple[FakeNetApi, Client]]:
    """A fake server and a client of it (``app_key=key``)."""
    async with serve() as (fake, root), Client(root, key, **options) as client:
        yield fake, client


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- every method -----------------------------------------------------------------------------


def test_every_method_round_trips_with_yagna_paths_and_shapes() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            assert await client.list_networks() == []
            info = await client.create_network("192.168.0.0", "255.255.255.0")
            assert info == NetworkInfo(info.id, "192.168.0.0/24", "255.255.255.0", "192.168.0.1")
            assert info.network == parse_network("192.168.0.0/24")
            assert len(info.id) == 32
            assert fake.seen[-1].body == {"ip": "192.168.0.0", "mask": "255.255.255.0"}
            assert await client.list_networks() == [info]
            assert await client.get_network(info.id) == info

            await client.add_address(info.id, "192.168.0.10")
            assert await client.list_addresses(info.id) == [
                AddressInfo("192.168.0.1/24"),
                AddressInfo("192.168.0.10/24"),
            ]
            await client.add_node(info.id, PROV_A, "192.168.0.2")
            await client.add_node(info.id, PROV_B, "192.168.0.3")
            assert fake.seen[-1].body == {"id": PROV_B, "ip": "192.168.0.3"}
            assert await client.list_nodes(info.id) == [
                NodeInfo(PROV_A, "192.168.0.2"),
                NodeInfo(PROV_B, "192.168.0.3"),
            ]
            await client.remove_node(info.id, PROV_A)
            assert await client.list_nodes(info.id) == [NodeInfo(PROV_B, "192.168.0.3")]

            assert await client.list_connections(info.id) == []
            ws = await client.connect_tcp(info.id, "192.168.0.3", ECHO)
            try:
                assert await client.list_connections(info.id) == [
                    ConnectionInfo(6, "192.168.0.1", 40000, "192.168.0.3", ECHO)
                ]
            finally:
                await ws.close()

            assert await client.status() == NetStatus(OWNER, 0, "127.0.0.1", None)
            await client.remove_network(info.id)
            assert await client.list_networks() == []

            base = "/net-api/v1/net"
            assert fake.paths() == [
                f"GET {base}",
                f"POST {base}",
                f"GET {base}",
                f"GET {base}/{info.id}",
                f"POST {base}/{info.id}/addresses",
                f"GET {base}/{info.id}/addresses",
                f"POST {base}/{info.id}/nodes",
                f"POST {base}/{info.id}/nodes",
                f"GET {base}/{info.id}/nodes",
                f"DELETE {base}/{info.id}/nodes/{PROV_A}",  # DELETE, not ya-client's POST
                f"GET {base}/{info.id}/nodes",
                f"GET {base}/{info.id}/tcp",
                f"GET {base}/{info.id}/tcp/192.168.0.3/{ECHO}",
                f"GET {base}/{info.id}/tcp",
                "GET /net-api/v2/net/status",
                f"DELETE {base}/{info.id}",
                f"GET {base}",
            ]

    run(main)


def test_create_network_sends_only_given_fields() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            info = await client.create_network("10.1.0.0/16")
            assert fake.seen[-1].body == {"ip": "10.1.0.0/16"}
            assert (info.ip, info.mask, info.gateway) == ("10.1.0.0/16", "255.255.0.0", "10.1.0.1")
            info = await client.create_network("10.2.0.0", "255.255.255.0", "10.2.0.254")
            assert fake.seen[-1].body == {
                "ip": "10.2.0.0",
                "mask": "255.255.255.0",
                "gateway": "10.2.0.254",
            }
            assert info.gateway == "10.2.0.254"

    run(main)


def test_v2_vpn_base_and_status_path() -> None:
    async def main() -> None:
        async with serve() as (fake, root):
            async with Client(root + "/net-api/v2/vpn", KEY) as client:
                info = await client.create_network("10.0.0.0/24")
                await client.add_node(info.id, PROV_A, "10.0.0.2")
                await client.remove_node(info.id, PROV_A)
                assert (await client.status()).node_id == OWNER
            assert fake.paths() == [
                "POST /net-api/v2/vpn/net",
                f"POST /net-api/v2/vpn/net/{info.id}/nodes",
                f"DELETE /net-api/v2/vpn/net/{info.id}/nodes/{PROV_A}",
                "GET /net-api/v2/net/status",
            ]

    run(main)


def test_dataclasses_mirror_the_camel_case_wire_form() -> None:
    conn = ConnectionInfo(6, "10.0.0.1", 40001, "10.0.0.2", 22)
    wire = {
        "protocol": 6,
        "localIp": "10.0.0.1",
        "localPort": 40001,
        "remoteIp": "10.0.0.2",
        "remotePort": 22,
    }
    assert conn.to_json() == wire
    assert ConnectionInfo.from_json(wire) == conn
    status = NetStatus.from_json({"nodeId": OWNER, "sessions": 3, "publicIp": "1.2.3.4"})
    assert status == NetStatus(OWNER, 3, None, "1.2.3.4")
    assert status.to_json() == {"nodeId": OWNER, "sessions": 3, "publicIp": "1.2.3.4"}
    v2 = NetworkInfo.from_json({"id": "n1", "ip": "10.0.0.0/8", "extra": True})
    assert v2 == NetworkInfo("n1", "10.0.0.0/8")
    assert v2.to_json() == {
        "id": "n1",
        "ip": "10.0.0.0/8",
    }
    assert NodeInfo.from_json({"id": PROV_A, "ip": "10.0.0.2"}).to_json() == {
        "id": PROV_A,
        "ip": "10.0.0.2",
    }
    with pytest.raises(ValueError, match="sessions"):
        NetStatus.from_json({"nodeId": OWNER, "sessions": True})


# --- configuration ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("YAGNA_API_URL", "YAGNA_NET_URL", "YAGNA_APPKEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_url_default(clean_env: pytest.MonkeyPatch) -> None:
    assert Client().url == "http://127.0.0.1:7465/net-api/v1"


def test_url_from_yagna_api_url(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("YAGNA_API_URL", "http://10.0.0.5:7500/")
    assert Client().url == "http://10.0.0.5:7500/net-api/v1"


def test_yagna_net_url_is_the_full_base_and_beats_yagna_api_url(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("YAGNA_API_URL", "http://10.0.0.5:7500")
    clean_env.setenv("YAGNA_NET_URL", "https://gw.example/yagna/net-api/v2/vpn/")
    assert Client().url == "https://gw.example/yagna/net-api/v2/vpn"


def test_url_argument_beats_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("YAGNA_API_URL", "http://10.0.0.5:7500")
    clean_env.setenv("YAGNA_NET_URL", "http://10.0.0.6:7500/net-api/v1")
    assert Client("http://10.0.0.7:7465/net-api/v1").url == "http://10.0.0.7:7465/net-api/v1"
    # An argument without a path is an API root, like YAGNA_API_URL.
    assert Client("http://10.0.0.7:7465").url == "http://10.0.0.7:7465/net-api/v1"
    assert Client("http://10.0.0.7:7465/").url == "http://10.0.0.7:7465/net-api/v1"


def test_empty_environment_variables_count_as_unset(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("YAGNA_API_URL", "")
    clean_env.setenv("YAGNA_NET_URL", "")
    clean_env.setenv("YAGNA_APPKEY", "")
    client = Client()
    assert client.url == "http://127.0.0.1:7465/net-api/v1"
    assert not client.has_app_key


def test_app_key_argument_beats_yagna_appkey(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("YAGNA_APPKEY", OTHER_KEY)
    assert Client().has_app_key

    async def main() -> None:
        async with serve() as (fake, root):
            async with Client(root) as client:
                assert (await client.status()).node_id == OTHER
            async with Client(root, KEY) as client:
                assert (await client.status()).node_id == OWNER
            assert [s.authorization for s in fake.seen] == [
                f"Bearer {OTHER_KEY}",
                f"Bearer {KEY}",
            ]

    run(main)


def test_non_http_url_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(BadRequest, match="http or https"):
        Client("ftp://127.0.0.1/net-api/v1")


# --- auth and secrecy -------------------------------------------------------------------------


def test_app_key_is_sent_as_bearer_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> list[str]:
        texts: list[str] = []
        async with fake_client() as (fake, client):
            texts.append(repr(client))
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            for call in (
                client.get_network("0" * 32),  # 403
                client.add_node(info.id, PROV_B, "10.0.0.2"),  # 409
                client.connect_tcp(info.id, "10.0.0.9", ECHO),  # 504
            ):
                with pytest.raises(GolemVpnError) as err:
                    await call
                texts.append(str(err.value))
            ws = await client.connect_tcp(info.id, "10.0.0.2", ECHO)
            await ws.close()
            assert {s.authorization for s in fake.seen} == {f"Bearer {KEY}"}
            assert all("authToken" not in s.query for s in fake.seen)
            texts.append(client.websocket_url(info.id, "10.0.0.2", ECHO))
        return texts

    texts = run(main)
    assert caplog.records, "the client logs its requests at DEBUG"
    assert KEY not in caplog.text
    assert all(KEY not in text for text in texts)


def test_missing_app_key_is_401_forbidden_with_a_hint(clean_env: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with fake_client(key=None) as (fake, client):
            with pytest.raises(Forbidden, match=r"401.*Missing application key.*YAGNA_APPKEY"):
                await client.list_networks()
            assert fake.seen[-1].authorization is None

    run(main)


def test_wrong_app_key_is_401_forbidden() -> None:
    async def main() -> None:
        async with fake_client(key="wrong-key") as (_, client):
            with pytest.raises(Forbidden, match=r"401.*Invalid application key.*not accepted"):
                await client.list_networks()
            with pytest.raises(Forbidden, match="401"):
                await client.connect_tcp("0" * 32, "10.0.0.2", ECHO)

    run(main)


# --- error mapping ----------------------------------------------------------------------------


def test_ownership_403_and_404_as_yagna() -> None:
    async def main() -> None:
        async with (
            serve() as (_, root),
            Client(root, KEY) as mine,
            Client(root, OTHER_KEY) as theirs,
        ):
            info = await mine.create_network("10.0.0.0/24")
            # The other identity owns no network: 404, as yagna.
            with pytest.raises(NetworkNotFound, match=r"404.*Network not found"):
                await theirs.get_network(info.id)
            await theirs.create_network("10.9.0.0/24")
            # Now it owns one, but not this one: 403 with an empty body.
            with pytest.raises(Forbidden, match=r"403.*another identity") as err:
                await theirs.remove_network(info.id)
            assert f"/net/{info.id}" in str(err.value)
            with pytest.raises(Forbidden, match="403"):
                await theirs.connect_tcp(info.id, "10.0.0.2", ECHO)
            # Owning some network, an unknown id is a 403 too (yagna checks ownership only).
            with pytest.raises(Forbidden, match="403"):
                await mine.list_nodes("f" * 32)

    run(main)


def test_unknown_network_is_404_only_without_networks() -> None:
    async def main() -> None:
        async with fake_client() as (_, client):
            with pytest.raises(NetworkNotFound, match="404") as err:
                await client.list_nodes("f" * 32)
            assert isinstance(err.value, GolemVpnError)
            with pytest.raises(NetworkNotFound):
                await client.connect_tcp("f" * 32, "10.0.0.2", ECHO)

    run(main)


def test_409_is_address_taken() -> None:
    async def main() -> None:
        async with fake_client() as (_, client):
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            await client.add_node(info.id, PROV_A, "10.0.0.2")  # refresh: 200
            with pytest.raises(AddressTaken, match=r"409.*IP address is taken: 10\.0\.0\.2"):
                await client.add_node(info.id, PROV_B, "10.0.0.2")

    run(main)


def test_400_is_bad_request_with_the_server_message() -> None:
    async def main() -> None:
        async with fake_client() as (_, client):
            with pytest.raises(BadRequest, match=r"400.*Network address error") as err:
                await client.create_network("10.0.0.300/24")
            assert isinstance(err.value, ValueError)
            assert err.value.status == 400
            assert "Network address error" in err.value.message
            info = await client.create_network("10.0.0.0/24")
            with pytest.raises(BadRequest, match="Golem node id"):
                await client.add_node(info.id, "0x1234", "10.0.0.2")
            with pytest.raises(BadRequest, match="not in network"):
                await client.add_address(info.id, "10.1.0.1")

    run(main)


def test_504_is_connect_timeout() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            with pytest.raises(ConnectTimeout, match=r"504.*10\.0\.0\.9:7.*timed out") as err:
                await client.connect_tcp(info.id, "10.0.0.9", ECHO)  # no such node
            assert isinstance(err.value, TimeoutError)
            with pytest.raises(ConnectTimeout, match="504"):
                await client.connect_tcp(info.id, "10.0.0.2", 4444)  # nothing listens
            fake.inject = (504, "", "text/plain")  # yagna: 504 with an empty body
            with pytest.raises(ConnectTimeout, match="504"):
                await client.list_nodes(info.id)

    run(main)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "pattern"),
    [
        (500, '{"message": "mailbox closed"}', "application/json", r"500.*mailbox closed"),
        (502, "<html><body>Bad Gateway from the proxy</body></html>", "text/html", "Bad Gateway"),
        (503, "", "text/plain", "503"),
    ],
)
def test_other_statuses_are_net_api_errors_with_status_and_excerpt(
    status: int, body: str, content_type: str, pattern: str
) -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            fake.inject = (status, body, content_type)
            with pytest.raises(NetApiError, match=pattern) as err:
                await client.list_networks()
            assert err.value.status == status
            assert type(err.value) is NetApiError

    run(main)


def test_long_error_bodies_are_cut() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            fake.inject = (500, "x" * 5000, "text/plain")
            with pytest.raises(NetApiError) as err:
                await client.list_networks()
            assert len(str(err.value)) < 400
            assert str(err.value).endswith("...")

    run(main)


def test_malformed_answers_are_net_api_errors() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            fake.inject = (200, "not json", "text/plain")
            with pytest.raises(NetApiError, match="not JSON"):
                await client.list_networks()
            fake.inject = (200, '{"networks": []}', "application/json")
            with pytest.raises(NetApiError, match="expected a list"):
                await client.list_networks()
            fake.inject = (200, '{"ip": "10.0.0.0/24"}', "application/json")
            with pytest.raises(NetApiError, match="'id'"):
                await client.get_network("x")

    run(main)


def test_server_down_is_net_api_unavailable_naming_the_url() -> None:
    async def main() -> None:
        root = f"http://127.0.0.1:{free_port()}"
        async with Client(root, KEY) as client:
            with pytest.raises(NetApiUnavailable) as err:
                await client.list_networks()
            text = str(err.value)
            assert f"{root}/net-api/v1" in text
            assert "daemon running" in text
            assert "YAGNA_API_URL" in text
            assert isinstance(err.value, ConnectionError)
            assert isinstance(err.value, GolemVpnError)
            with pytest.raises(NetApiUnavailable, match=root):
                await client.connect_tcp("n", "10.0.0.2", ECHO)

    run(main)


def test_no_answer_within_timeout_is_net_api_unavailable() -> None:
    async def main() -> None:
        async with fake_client(timeout=0.2) as (fake, client):
            fake.delay = 2.0
            with pytest.raises(NetApiUnavailable, match=r"no answer within 0\.2 s"):
                await client.list_networks()

    run(main)


def test_given_session_is_used_and_left_open() -> None:
    async def main() -> None:
        async with serve() as (fake, root), aiohttp.ClientSession() as session:
            async with Client(root, KEY, session=session) as client:
                await client.list_networks()
            assert not session.closed
            assert fake.paths() == ["GET /net-api/v1/net"]

    run(main)


# --- the gate ---------------------------------------------------------------------------------


def test_websocket_url_shapes() -> None:
    net = "0123456789abcdef0123456789abcdef"
    assert (
        Client("http://127.0.0.1:7465").websocket_url(net, "192.168.0.2", 22)
        == f"ws://127.0.0.1:7465/net-api/v1/net/{net}/tcp/192.168.0.2/22"
    )
    assert (
        Client("https://gw.example/yagna/net-api/v1/").websocket_url(net, "10.0.0.2", 8080)
        == f"wss://gw.example/yagna/net-api/v1/net/{net}/tcp/10.0.0.2/8080"
    )
    assert (
        Client("http://[::1]:7465/net-api/v2/vpn").websocket_url(net, "fd00::2", 443)
        == f"ws://[::1]:7465/net-api/v2/vpn/net/{net}/tcp/fd00::2/443"
    )
    for port in (0, 65536, True):
        with pytest.raises(BadRequest, match="port"):
            Client().websocket_url(net, "10.0.0.2", port)


def test_connect_tcp_carries_raw_bytes_both_ways() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            ws = await client.connect_tcp(info.id, "10.0.0.2", ECHO)
            await ws.send_bytes(b"ping")
            assert await ws.receive_bytes() == b"ping"
            await ws.send_str("text counts as bytes")
            assert await ws.receive_bytes() == b"text counts as bytes"
            await ws.close()
            await wait_until(lambda: fake.gate_closed == 1)

    run(main)


def test_open_connection_streams_through_the_gate() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            reader, writer = await client.open_connection(info.id, "10.0.0.2", ECHO)
            assert writer.get_extra_info("peername") == ("10.0.0.2", ECHO)
            data = payload(1 << 20, 7)
            _, got = await asyncio.gather(
                send_chunked(writer, data), read_hashed(reader, len(data))
            )
            assert got == hashlib.sha256(data).hexdigest()
            writer.close()
            await writer.wait_closed()
            await wait_until(lambda: fake.gate_closed == 1)

    run(main)


def test_gate_refusal_502_is_connection_refused() -> None:
    async def main() -> None:
        async with fake_client() as (_, client):
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            with pytest.raises(ConnectionRefused, match=r"502.*10\.0\.0\.2:1.*refused") as err:
                await client.connect_tcp(info.id, "10.0.0.2", REFUSED)
            assert isinstance(err.value, ConnectionRefusedError)

    run(main)


def test_gate_closing_with_an_error_code_is_a_reset() -> None:
    async def main() -> None:
        async with fake_client() as (_, client):
            info = await client.create_network("10.0.0.0/24")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            reader, writer = await client.open_connection(info.id, "10.0.0.2", RESET)
            await wait_until(writer.is_closing)
            # As with a reset socket: reads raise at once (buffered bytes are lost) ...
            with pytest.raises(ConnectionReset, match=r"code 1011 \(reset\)"):
                await reader.read(1 << 20)
            # ... and so do drain() and wait_closed().
            with pytest.raises(ConnectionResetError):
                await writer.drain()
            writer.close()
            with pytest.raises(ConnectionReset):
                await writer.wait_closed()

    run(main)


# --- against the real server ------------------------------------------------------------------


@dataclass
class RealApi:
    """golem-vpn's own Net API on a loopback port, over a LocalBackend and a SQLite store."""

    root: str
    backend: LocalBackend
    store: Store
    key: str
    other_key: str


@asynccontextmanager
async def real_api(tmp_path: Path, **options: Any) -> AsyncIterator[RealApi]:
    """Serves :func:`golem_vpn.netapi.server.serve` (``options`` go to ``create_app``)."""
    store = Store(tmp_path / "netapi.db")
    backend = LocalBackend(OWNER)
    keys = AppKeys(store)
    key, other_key = keys.create("sdk", OWNER), keys.create("other", OTHER)
    runner = await serve_netapi(backend, store, "127.0.0.1", 0, **options)
    try:
        host, port = runner.addresses[0][:2]
        yield RealApi(f"http://{host}:{port}", backend, store, key, other_key)
    finally:
        await runner.cleanup()
        await backend.close()
        store.close()


async def echo_payload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A payload's echo server: everything back until EOF."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def test_real_server_every_method(tmp_path: Path) -> None:
    async def main() -> None:
        async with real_api(tmp_path) as api, Client(api.root, api.key) as client:
            assert await client.status() == NetStatus(OWNER, 0)
            assert await client.list_networks() == []
            info = await client.create_network("192.168.0.0", "255.255.255.0")
            assert info == NetworkInfo(info.id, "192.168.0.0/24", "255.255.255.0", "192.168.0.1")
            assert await client.list_networks() == [info]
            assert await client.get_network(info.id) == info
            await client.add_address(info.id, "192.168.0.10")
            assert AddressInfo("192.168.0.10/24") in await client.list_addresses(info.id)
            await client.add_node(info.id, PROV_A, "192.168.0.2")
            await client.add_node(info.id, PROV_A, "192.168.0.2")  # refresh: 200
            await client.add_node(info.id, PROV_B, "192.168.0.3")
            assert sorted(await client.list_nodes(info.id), key=lambda n: n.ip) == [
                NodeInfo(PROV_A, "192.168.0.2"),
                NodeInfo(PROV_B, "192.168.0.3"),
            ]
            await client.remove_node(info.id, PROV_B)
            assert await client.list_nodes(info.id) == [NodeInfo(PROV_A, "192.168.0.2")]

            provider = api.backend.provider(info.id, PROV_A)
            server = await provider.start_server(echo_payload, 7000)
            async with server:
                assert await client.list_connections(info.id) == []
                reader, writer = await client.open_connection(info.id, "192.168.0.2", 7000)
                conns = await client.list_connections(info.id)
                assert len(conns) == 1
                assert (conns[0].protocol, conns[0].remote_ip) == (6, "192.168.0.2")
                assert (conns[0].remote_port, conns[0].local_ip) == (7000, "192.168.0.1")
                data = payload(1 << 20, 11)
                _, got = await asyncio.gather(
                    send_chunked(writer, data), read_hashed(reader, len(data))
                )
                assert got == hashlib.sha256(data).hexdigest()
                writer.close()
                await writer.wait_closed()
            await client.remove_network(info.id)
            assert await client.list_networks() == []

    run(main)


def test_real_server_error_mapping(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            real_api(tmp_path, connect_timeout=0.3) as api,
            Client(api.root, api.key) as client,
            Client(api.root, api.other_key) as other,
            Client(api.root, "not-a-key") as stranger,
            Client(api.root) as keyless,
        ):
            with pytest.raises(Forbidden, match=r"401.*Invalid application key"):
                await stranger.list_networks()
            with pytest.raises(Forbidden, match="401"):
                await keyless.list_networks()
            info = await client.create_network("10.0.0.0/24")
            with pytest.raises(NetworkNotFound, match="404"):
                await other.get_network(info.id)  # owns nothing yet: 404
            await other.create_network("10.9.0.0/24")
            with pytest.raises(Forbidden, match="403"):
                await other.get_network(info.id)
            with pytest.raises(NetworkNotFound, match="404"):
                await client.list_nodes("0" * 32)
            with pytest.raises(BadRequest, match="400"):
                await client.create_network("10.0.0.300")
            with pytest.raises(BadRequest, match="400"):
                await client.add_node(info.id, "0x12", "10.0.0.2")
            await client.add_node(info.id, PROV_A, "10.0.0.2")
            with pytest.raises(AddressTaken, match=r"409.*IP address is taken"):
                await client.add_node(info.id, PROV_B, "10.0.0.2")
            with pytest.raises(BadRequest, match=r"400.*no node holds that address"):
                await client.connect_tcp(info.id, "10.0.0.77", 22)  # no such node: at once
            with pytest.raises(ConnectionRefused, match="502"):
                await client.connect_tcp(info.id, "10.0.0.2", 22)  # nothing listens
            with pytest.raises(NetworkNotFound, match="404"):
                await client.connect_tcp("0" * 32, "10.0.0.2", 22)

    run(main)
