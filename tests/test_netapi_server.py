"""The Net API over real HTTP: every endpoint, status code, auth, ownership and persistence.

Each test starts the real application (:func:`golem_vpn.netapi.server.serve`) on a loopback
port with an in-process :class:`~golem_vpn.netapi.backend.LocalBackend` and a SQLite
:class:`~golem_vpn.netapi.store.Store` in ``tmp_path``, and drives it with an aiohttp client,
as yapapi and golem-js would. Two app keys are bound to two identities: ``a`` (this daemon's
node id) and ``b`` (another identity), for the ownership rules. The gate's data path is
tested in ``test_netapi_gate.py``, which reuses :func:`running` from here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from golem_vpn.errors import InvalidNodeId
from golem_vpn.netapi.appkeys import AppKeyError, AppKeys
from golem_vpn.netapi.backend import LocalBackend
from golem_vpn.netapi.server import LIMIT_SETTINGS, NETAPI, Limits, serve
from golem_vpn.netapi.store import SCHEMA_VERSION, Store, StoredNetwork, StoreError
from vpn_helpers import run

REQ = "0x" + "a1" * 20  # this daemon's node id, and key a's identity
OTHER = "0x" + "0f" * 20  # key b's identity
PROV_A = "0x" + "b2" * 20
PROV_B = "0x" + "c3" * 20
PROV_C = "0x" + "d4" * 20
V1, V2 = "/net-api/v1", "/net-api/v2/vpn"
PREFIXES = [V1, V2]
V2_NET = "/net-api/v2/net"


@dataclass
class Api:
    """A running Net API and a client for it."""

    url: str
    session: aiohttp.ClientSession
    backend: LocalBackend
    store: Store
    keys: dict[str, str]
    runner: Any

    @property
    def gate(self) -> Any:
        return self.runner.app[NETAPI].gate

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = "a",
        prefix: str = V1,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request; returns the status and the decoded JSON body (``b""`` if empty)."""
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.url + prefix + path, data=data, headers=hdrs
        ) as resp:
            raw = await resp.read()
            return resp.status, (json.loads(raw) if raw else b"")

    async def create(self, ip: str = "192.168.0.0/24", key: str = "a", **more: str) -> str:
        status, net = await self.call("POST", "/net", {"ip": ip, **more}, key=key)
        assert status == 200, net
        return str(net["id"])

    def ws_url(self, net_id: str, ip: str, port: int, kind: str = "tcp", prefix: str = V1) -> str:
        return f"{self.url}{prefix}/net/{net_id}/{kind}/{ip}/{port}"

    def auth(self, key: str = "a") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}


def make_keys(store: Store) -> dict[str, str]:
    keys = AppKeys(store)
    return {"a": keys.create("a", REQ), "b": keys.create("b", OTHER)}


@asynccontextmanager
async def running(
    path: Path, keys: dict[str, str] | None = None, **options: Any
) -> AsyncIterator[Api]:
    """A Net API on a free loopback port over the store at ``path`` (keys made if None)."""
    store = Store(path)
    backend = LocalBackend(REQ)
    session = None
    runner = None
    try:
        if keys is None:
            keys = make_keys(store)
        runner = await serve(backend, store, "127.0.0.1", 0, **options)
        host, port = runner.addresses[0][:2]
        session = aiohttp.ClientSession()
        yield Api(f"http://{host}:{port}", session, backend, store, keys, runner)
    finally:
        if session is not None:
            await session.close()
        if runner is not None:
            await runner.cleanup()
        await backend.close()
        store.close()


def serve_test(tmp_path: Path, test: Any, **options: Any) -> None:
    """Run ``test(api)`` against a fresh server."""

    async def main() -> None:
        async with running(tmp_path / "netapi.db", **options) as api:
            await test(api)

    run(main)


# -- endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_endpoint_answers_in_yagnas_shapes(tmp_path: Path, prefix: str) -> None:
    async def test(api: Api) -> None:
        status, net = await api.call("POST", "/net", {"ip": "192.168.0.0/24"}, prefix=prefix)
        assert status == 200
        assert set(net) == {"id", "ip", "mask", "gateway"}
        assert re.fullmatch(r"[0-9a-f]{32}", net["id"])  # yagna's Uuid::to_simple
        assert net["ip"] == "192.168.0.0/24"  # with the prefix, as yagna answers
        assert net["mask"] == "255.255.255.0"
        assert net["gateway"] == "192.168.0.1"
        nid = net["id"]

        assert await api.call("GET", "/net", prefix=prefix) == (200, [net])
        assert await api.call("GET", f"/net/{nid}", prefix=prefix) == (200, net)

        assert await api.call("POST", f"/net/{nid}/addresses", {"ip": "192.168.0.100"}) == (
            200,
            None,
        )
        assert await api.call("GET", f"/net/{nid}/addresses", prefix=prefix) == (
            200,
            [{"ip": "192.168.0.1/24"}, {"ip": "192.168.0.100/24"}],
        )

        node = {"id": PROV_A.upper().replace("0X", "0x"), "ip": "192.168.0.2"}
        assert await api.call("POST", f"/net/{nid}/nodes", node, prefix=prefix) == (200, None)
        assert await api.call("GET", f"/net/{nid}/nodes", prefix=prefix) == (
            200,
            [{"id": PROV_A, "ip": "192.168.0.2"}],  # node ids are normalised to lowercase
        )
        assert await api.call("GET", f"/net/{nid}/tcp", prefix=prefix) == (200, [])

        path = f"/net/{nid}/nodes/{PROV_A.upper().replace('0X', '0x')}"
        assert await api.call("DELETE", path, prefix=prefix) == (200, None)
        assert await api.call("GET", f"/net/{nid}/nodes", prefix=prefix) == (200, [])
        # Removing an unknown node is fine, as in yagna.
        assert await api.call("DELETE", path, prefix=prefix) == (200, None)

        status, info = await api.call("GET", "/status", prefix="/net-api/v2/net")
        assert status == 200
        assert info["nodeId"] == REQ
        assert info["sessions"] >= 0

        assert await api.call("DELETE", f"/net/{nid}", prefix=prefix) == (200, None)
        assert await api.call("GET", f"/net/{nid}", prefix=prefix) == (
            404,
            {"message": "Network not found"},
        )
        assert await api.call("GET", "/net", prefix=prefix) == (200, [])

    serve_test(tmp_path, test)


def test_both_prefixes_serve_the_same_networks(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        status, net = await api.call("GET", f"/net/{nid}", prefix=V2)
        assert status == 200
        assert net["id"] == nid
        node = {"id": PROV_A, "ip": "192.168.0.2"}
        assert await api.call("POST", f"/net/{nid}/nodes", node, prefix=V2) == (200, None)
        assert await api.call("GET", f"/net/{nid}/nodes", prefix=V1) == (
            200,
            [{"id": PROV_A, "ip": "192.168.0.2"}],
        )

    serve_test(tmp_path, test)


CREATE_CASES: list[tuple[dict[str, Any], tuple[str, str, str]]] = [
    # The given address keeps its host bits in "ip", as yagna's IpNet::addr() does.
    (
        {"ip": "192.168.0.5", "mask": "255.255.0.0"},
        ("192.168.0.5/16", "255.255.0.0", "192.168.0.1"),
    ),
    ({"ip": "10.0.0.0/8", "mask": None}, ("10.0.0.0/8", "255.0.0.0", "10.0.0.1")),
    (
        {"ip": "10.1.0.0", "gateway": "10.1.0.254"},
        ("10.1.0.0/24", "255.255.255.0", "10.1.0.254"),
    ),
    ({"ip": "172.16.0.0", "mask": "22"}, ("172.16.0.0/22", "255.255.252.0", "172.16.0.1")),
    ({"ip": "fd00::"}, ("fd00::/64", "ffff:ffff:ffff:ffff::", "fd00::1")),
    # v2's body is a whole Network; an id in it is ignored.
    (
        {"id": "x", "ip": "192.168.7.0/24", "mask": "255.255.255.0"},
        ("192.168.7.0/24", "255.255.255.0", "192.168.7.1"),
    ),
]


@pytest.mark.parametrize(("body", "expected"), CREATE_CASES)
def test_create_network_parses_ip_mask_and_gateway_like_yagna(
    tmp_path: Path, body: dict[str, Any], expected: tuple[str, str, str]
) -> None:
    async def test(api: Api) -> None:
        status, net = await api.call("POST", "/net", body)
        assert status == 200, net
        assert (net["ip"], net["mask"], net["gateway"]) == expected
        assert net["id"] != body.get("id")
        assert await api.call("GET", f"/net/{net['id']}") == (200, net)

    serve_test(tmp_path, test)


# -- 400 -----------------------------------------------------------------------------------

BAD_CREATE = [
    (b"{", "Malformed JSON"),
    (b"", "Malformed JSON"),
    (b"\xff\xfe", "Malformed JSON"),
    (b"[1, 2]", "Expected a JSON object"),
    (b"{}", "Missing field 'ip'"),
    (b'{"ip": null}', "Missing field 'ip'"),
    (b'{"ip": 3232235520}', "Field 'ip' must be a string"),
    (b'{"ip": "192.168.0.0", "mask": 24}', "Field 'mask' must be a string"),
    (b'{"ip": "192.168.300.0"}', "is not an IP address"),
    (b'{"ip": "golem"}', "is not an IP address"),
    (b'{"ip": "192.168.0.0/33"}', "too long"),
    (b'{"ip": "192.168.0.0", "mask": "255.0.255.0"}', "not a contiguous netmask"),
    (b'{"ip": "192.168.0.0", "mask": "ffff::"}', "IPv6 netmask"),
    (b'{"ip": "192.168.0.0/24", "mask": "255.255.0.0"}', "conflicts"),
    (b'{"ip": "192.168.0.0/24", "gateway": "10.0.0.1"}', "not in network"),
    (b'{"ip": "192.168.0.0/24", "gateway": "gw"}', "is not an IP address"),
    # No room for a node besides the requestor (yagna creates these; nothing could join).
    (b'{"ip": "10.0.0.0/32"}', "has no address for a node besides the requestor's"),
    (b'{"ip": "10.0.0.1", "mask": "255.255.255.255"}', "has no address for a node"),
    (b'{"ip": "fd00::5/128"}', "has no address for a node"),
]


@pytest.mark.parametrize(("body", "message"), BAD_CREATE)
def test_bad_create_requests_are_400_with_a_message(
    tmp_path: Path, body: bytes, message: str
) -> None:
    async def test(api: Api) -> None:
        for prefix in PREFIXES:
            status, answer = await api.call("POST", "/net", data=body, prefix=prefix)
            assert status == 400
            assert message in answer["message"], answer
        assert await api.call("GET", "/net") == (200, [])

    serve_test(tmp_path, test)


def test_bad_node_address_and_gate_requests_are_400_with_a_message(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        cases: list[tuple[str, str, Any, str]] = [
            ("POST", "/nodes", {"id": "0x1234", "ip": "192.168.0.2"}, "not a Golem node id"),
            ("POST", "/nodes", {"id": "b2" * 20, "ip": "192.168.0.2"}, "not a Golem node id"),
            ("POST", "/nodes", {"id": PROV_A + "00", "ip": "192.168.0.2"}, "not a Golem node id"),
            ("POST", "/nodes", {"id": PROV_A}, "Missing field 'ip'"),
            ("POST", "/nodes", {"ip": "192.168.0.2"}, "Missing field 'id'"),
            ("POST", "/nodes", {"id": PROV_A, "ip": "192.168.1.2"}, "not in network"),
            ("POST", "/nodes", {"id": PROV_A, "ip": "fd00::2"}, "not in network"),
            ("POST", "/nodes", {"id": PROV_A, "ip": "192.168.0.0"}, "network address"),
            ("POST", "/nodes", {"id": PROV_A, "ip": "192.168.0.255"}, "broadcast address"),
            ("POST", "/nodes", {"id": PROV_A, "ip": "127.0.0.1"}, "not in network"),
            ("POST", "/nodes", {"id": PROV_A, "ip": "192.168.0.2/16"}, "prefix"),
            ("POST", "/nodes", "not an object", "Expected a JSON object"),
            ("POST", "/addresses", {"ip": "10.0.0.1"}, "not in network"),
            ("POST", "/addresses", {"ip": "192.168.0.255"}, "broadcast address"),
            ("POST", "/addresses", {"ip": "x"}, "is not an IP address"),
            ("POST", "/addresses", {}, "Missing field 'ip'"),
            ("DELETE", "/nodes/0xnot-a-node", None, "not a Golem node id"),
            ("DELETE", f"/nodes/{REQ}", None, "cannot be removed"),
            ("GET", "/tcp/192.168.0.1/80", None, "WebSocket"),  # no upgrade headers
            ("GET", "/tcp/192.168.0.2/80", None, "no node holds 192.168.0.2"),
            ("GET", "/udp/192.168.0.2/53", None, "destination address not found"),
            ("GET", "/tcp/192.168.0.2/0", None, "Port must be"),
            ("GET", "/tcp/192.168.0.2/65536", None, "Port must be"),
            ("GET", "/tcp/192.168.0.2/http", None, "Port must be"),
            ("GET", "/tcp/192.168.9.2/80", None, "not in network"),
            ("GET", "/tcp/nowhere/80", None, "is not an IP address"),
            ("GET", "/udp/192.168.0.255/53", None, "broadcast address"),
        ]
        for method, path, body, message in cases:
            for prefix in PREFIXES:
                status, answer = await api.call(method, f"/net/{nid}{path}", body, prefix=prefix)
                assert status == 400, (method, path, answer)
                assert message in answer["message"], (method, path, answer)
        assert await api.call("GET", f"/net/{nid}/nodes") == (200, [])
        assert await api.call("GET", f"/net/{nid}/addresses") == (200, [{"ip": "192.168.0.1/24"}])

    serve_test(tmp_path, test)


def test_body_over_the_limit_is_413_and_unknown_routes_are_json(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        big = json.dumps({"ip": "192.168.0.0/24", "pad": "x" * 70_000}).encode()
        status, answer = await api.call("POST", "/net", data=big)
        assert status == 413
        assert "exceeded" in answer["message"]
        assert "--max-body-size" in answer["message"]
        assert await api.call("GET", "/nowhere") == (404, {"message": "Not Found"})
        status, answer = await api.call("PUT", "/net")
        assert (status, answer) == (405, {"message": "Method Not Allowed"})

    serve_test(tmp_path, test, max_body_size=64 * 1024)


# -- 401 -----------------------------------------------------------------------------------


def test_requests_without_a_valid_key_are_401(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        missing = (401, {"message": "Missing application key"})
        invalid = (401, {"message": "Invalid application key"})
        paths = ["/net", f"/net/{nid}", f"/net/{nid}/nodes", f"/net/{nid}/tcp", "/nowhere"]
        for path in paths:
            for prefix in PREFIXES:
                assert await api.call("GET", path, key=None, prefix=prefix) == missing
                assert await api.call("GET", path, key="wrong", prefix=prefix) == invalid
                assert await api.call("GET", path, key="", prefix=prefix) == invalid
        assert await api.call("GET", "/status", key=None, prefix="/net-api/v2/net") == missing
        assert await api.call("POST", "/net", {"ip": "10.0.0.0"}, key=None) == missing
        assert await api.call("DELETE", f"/net/{nid}", key="wrong") == invalid
        basic = {"Authorization": "Basic YTpi"}
        assert await api.call("GET", "/net", key=None, headers=basic) == invalid

        # ?authToken= is taken on the WebSocket gates only (yagna's spec; browsers cannot set
        # a WebSocket's headers): a key in a REST URL would end up in logs and proxies.
        key = api.keys["a"]
        query = (
            401,
            {
                "message": "The authToken query parameter is taken on the WebSocket gates "
                "only; send the app key as an Authorization: Bearer header"
            },
        )
        for method, path in [
            ("GET", "/net"),
            ("POST", "/net"),
            ("GET", f"/net/{nid}"),
            ("DELETE", f"/net/{nid}"),
            ("GET", f"/net/{nid}/nodes"),
            ("GET", f"/net/{nid}/tcp"),
            ("GET", f"/net/{nid}/raw"),
        ]:
            for prefix in PREFIXES:
                got = await api.call(method, f"{path}?authToken={key}", key=None, prefix=prefix)
                assert got == query, (method, path)
        assert await api.call("GET", "/status?authToken=x", key=None, prefix=V2_NET) == query
        assert await api.call("GET", f"/net/{nid}", key=None) == missing  # still there
        # With the header too, the header is the key (the query one is ignored).
        status, _ = await api.call("GET", f"/net/{nid}?authToken=nope", key="a")
        assert status == 200

        # A deleted key stops working at once, without a restart.
        AppKeys(api.store).delete("b")
        assert await api.call("GET", "/net", key="b") == invalid

        # Every refusal is counted, by reason.
        status, info = await api.call("GET", "/status", prefix=V2_NET)
        assert info["refused"] == {
            "missing_key": len(PREFIXES) * len(paths) + 3,
            "invalid_key": len(PREFIXES) * len(paths) * 2 + 3,
            "query_key": 7 * 2 + 1,
        }

    serve_test(tmp_path, test)


def test_gate_requires_a_key_too(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        await api.call("POST", f"/net/{nid}/nodes", {"id": PROV_A, "ip": "192.168.0.2"})
        url = api.ws_url(nid, "192.168.0.2", 7000)
        for headers, query in [
            ({}, ""),
            ({"Authorization": "Bearer nope"}, ""),
            ({}, "?authToken=x"),
        ]:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await api.session.ws_connect(url + query, headers=headers)
            assert info.value.status == 401
        for kind in ("tcp", "udp"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await api.session.ws_connect(api.ws_url(nid, "192.168.0.2", 53, kind))
            assert info.value.status == 401

    serve_test(tmp_path, test)


# -- 403 / 404 -----------------------------------------------------------------------------


def test_ownership_is_yagnas_404_for_strangers_403_for_other_owners(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        a_net = await api.create("192.168.0.0/24", key="a")
        await api.call("POST", f"/net/{a_net}/nodes", {"id": PROV_A, "ip": "192.168.0.2"})
        node = {"id": PROV_B, "ip": "192.168.0.3"}

        def requests(nid: str) -> list[tuple[str, str, Any]]:
            return [
                ("GET", f"/net/{nid}", None),
                ("DELETE", f"/net/{nid}", None),
                ("GET", f"/net/{nid}/addresses", None),
                ("POST", f"/net/{nid}/addresses", {"ip": "192.168.0.9"}),
                ("GET", f"/net/{nid}/nodes", None),
                ("POST", f"/net/{nid}/nodes", node),
                ("DELETE", f"/net/{nid}/nodes/{PROV_A}", None),
                ("GET", f"/net/{nid}/tcp", None),
            ]

        # b owns nothing yet: every network id is a 404 to it.
        for method, path, body in requests(a_net):
            for prefix in PREFIXES:
                assert await api.call(method, path, body, key="b", prefix=prefix) == (
                    404,
                    {"message": "Network not found"},
                ), (method, path)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await api.session.ws_connect(
                api.ws_url(a_net, "192.168.0.2", 80), headers=api.auth("b")
            )
        assert info.value.status == 404

        # Once b owns a network, a's networks are 403 with an empty body (yagna's Forbidden).
        b_net = await api.create("10.0.0.0/24", key="b")
        for method, path, body in requests(a_net):
            for prefix in PREFIXES:
                assert await api.call(method, path, body, key="b", prefix=prefix) == (
                    403,
                    b"",
                ), (method, path)
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await api.session.ws_connect(
                api.ws_url(a_net, "192.168.0.2", 80), headers=api.auth("b")
            )
        assert info.value.status == 403
        # ... and the other way round.
        assert await api.call("GET", f"/net/{b_net}", key="a") == (403, b"")
        _, status = await api.call("GET", "/status", prefix=V2_NET)
        assert status["refused"] == {"another_identity": 2 * len(requests(a_net)) + 2}

        # Each sees only its own networks; an id nobody has is a 404 for both.
        _, nets = await api.call("GET", "/net", key="a")
        assert [n["id"] for n in nets] == [a_net]
        _, nets = await api.call("GET", "/net", key="b")
        assert [n["id"] for n in nets] == [b_net]
        for key in ("a", "b"):
            assert await api.call("GET", "/net/" + "0" * 32, key=key) == (
                404,
                {"message": "Network not found"},
            )

        # Nothing of a's changed.
        assert await api.call("GET", f"/net/{a_net}/nodes") == (
            200,
            [{"id": PROV_A, "ip": "192.168.0.2"}],
        )

    serve_test(tmp_path, test)


# -- 409 -----------------------------------------------------------------------------------


def test_taken_address_is_409_but_re_adding_the_same_node_is_a_refresh(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        nodes = f"/net/{nid}/nodes"
        assert await api.call("POST", nodes, {"id": PROV_A, "ip": "192.168.0.2"}) == (200, None)
        # yagna's refresh (PR #1625): the same node at the same address is a 200, every time.
        for prefix in PREFIXES:
            assert await api.call(
                "POST", nodes, {"id": PROV_A.upper().replace("0X", "0x"), "ip": "192.168.0.2"},
                prefix=prefix,
            ) == (200, None)  # fmt: skip
        taken = (409, {"message": f"IP address is taken: 192.168.0.2 (held by node {PROV_A})"})
        # A different node at a taken address: 409 (yagna silently answers 200 here).
        assert await api.call("POST", nodes, {"id": PROV_B, "ip": "192.168.0.2"}) == taken
        assert await api.call("POST", nodes, {"id": PROV_B, "ip": "192.168.0.1"}) == (
            409,
            {"message": "IP address is taken: 192.168.0.1 (the requestor's own address)"},
        )
        assert await api.call("POST", f"/net/{nid}/addresses", {"ip": "192.168.0.2"}) == taken
        assert await api.call("POST", f"/net/{nid}/addresses", {"ip": "192.168.0.50"}) == (
            200,
            None,
        )
        assert await api.call("POST", nodes, {"id": PROV_B, "ip": "192.168.0.50"}) == (
            409,
            {"message": "IP address is taken: 192.168.0.50 (the requestor's own address)"},
        )
        # A node holds one address: another one is a 409 too.
        status, answer = await api.call("POST", nodes, {"id": PROV_A, "ip": "192.168.0.3"})
        assert status == 409
        assert "already holds 192.168.0.2" in answer["message"]
        assert await api.call("GET", nodes) == (200, [{"id": PROV_A, "ip": "192.168.0.2"}])

        # Freed addresses can be given again.
        assert await api.call("DELETE", f"{nodes}/{PROV_A}") == (200, None)
        assert await api.call("POST", nodes, {"id": PROV_B, "ip": "192.168.0.2"}) == (200, None)

        # golem-js registers the requestor itself through /nodes: that is its address.
        assert await api.call("POST", nodes, {"id": REQ, "ip": "192.168.0.1"}) == (200, None)
        assert await api.call("POST", nodes, {"id": REQ, "ip": "192.168.0.60"}) == (200, None)
        assert await api.call("POST", nodes, {"id": REQ, "ip": "192.168.0.2"}) == (
            409,
            {"message": f"IP address is taken: 192.168.0.2 (held by node {PROV_B})"},
        )
        assert await api.call("GET", nodes) == (200, [{"id": PROV_B, "ip": "192.168.0.2"}])
        assert await api.call("GET", f"/net/{nid}/addresses") == (
            200,
            [{"ip": f"192.168.0.{n}/24"} for n in (1, 50, 60)],
        )
        # Re-adding an address is harmless (no duplicates), with or without the prefix.
        assert await api.call("POST", f"/net/{nid}/addresses", {"ip": "192.168.0.50/24"}) == (
            200,
            None,
        )
        status, addresses = await api.call("GET", f"/net/{nid}/addresses")
        assert len(addresses) == 3

    serve_test(tmp_path, test)


def test_nodes_added_through_the_api_reach_the_backend(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        await api.call("POST", f"/net/{nid}/nodes", {"id": PROV_A, "ip": "192.168.0.2"})
        await api.call("POST", f"/net/{nid}/nodes", {"id": PROV_B, "ip": "192.168.0.3"})
        a = api.backend.provider(nid, PROV_A)
        assert str(a.ip) == "192.168.0.2"
        rtt = await a.ping("192.168.0.3", timeout=2.0)
        assert rtt >= 0
        await api.call("DELETE", f"/net/{nid}/nodes/{PROV_B}")
        with pytest.raises(TimeoutError):
            await a.ping("192.168.0.3", timeout=0.3)
        await api.call("DELETE", f"/net/{nid}")
        with pytest.raises(Exception, match="not on this node"):
            api.backend.provider(nid, PROV_A)

    serve_test(tmp_path, test)


def test_patch_moves_a_node_persists_it_and_refuses_what_it_must(tmp_path: Path) -> None:
    db = tmp_path / "netapi.db"

    async def main() -> None:
        async with running(db) as api:
            nid = await api.create()
            nodes = f"/net/{nid}/nodes"
            await api.call("POST", nodes, {"id": PROV_A, "ip": "192.168.0.2"})
            await api.call("POST", nodes, {"id": PROV_B, "ip": "192.168.0.3"})
            for prefix in PREFIXES:
                moved = await api.call(
                    "PATCH", f"{nodes}/{PROV_A}", {"ip": "192.168.0.20"}, prefix=prefix
                )
                assert moved == (200, {"id": PROV_A, "ip": "192.168.0.20"})
            # In-process nodes follow: B reaches A at its new address only.
            b = api.backend.provider(nid, PROV_B)
            assert await b.ping("192.168.0.20", timeout=2.0) >= 0
            with pytest.raises(TimeoutError):
                await b.ping("192.168.0.2", timeout=0.3)
            taken = (409, {"message": f"IP address is taken: 192.168.0.3 (held by node {PROV_B})"})
            assert await api.call("PATCH", f"{nodes}/{PROV_A}", {"ip": "192.168.0.3"}) == taken
            status, answer = await api.call("PATCH", f"{nodes}/{PROV_A}", {"ip": "10.0.0.3"})
            assert status == 400, answer
            status, answer = await api.call("PATCH", f"{nodes}/{PROV_C}", {"ip": "192.168.0.9"})
            assert (status, "not in network" in answer["message"]) == (404, True)
            status, answer = await api.call("PATCH", f"{nodes}/{REQ}", {"ip": "192.168.0.9"})
            assert status == 400, answer
            status, _ = await api.call(
                "PATCH", f"{nodes}/{PROV_A}", {"ip": "192.168.0.9"}, key=None
            )
            assert status == 401
            status, _ = await api.call("PATCH", f"{nodes}/{PROV_A}", {"address": "x"})
            assert status == 400
            # The freed address can be given to another node.
            assert await api.call("POST", nodes, {"id": PROV_C, "ip": "192.168.0.2"}) == (200, None)
        async with running(db, keys={"a": api.keys["a"]}) as again:
            _, listed = await again.call("GET", f"/net/{nid}/nodes")
            assert {n["id"]: n["ip"] for n in listed}[PROV_A] == "192.168.0.20"

    run(main)


# -- persistence ---------------------------------------------------------------------------


def test_networks_survive_a_restart_and_removal_deletes_their_rows(tmp_path: Path) -> None:
    db = tmp_path / "netapi.db"

    async def main() -> None:
        async with running(db) as api:
            keys = api.keys
            a_net = await api.create("192.168.0.0/24", gateway="192.168.0.254")
            await api.call("POST", f"/net/{a_net}/nodes", {"id": PROV_A, "ip": "192.168.0.2"})
            await api.call("POST", f"/net/{a_net}/nodes", {"id": PROV_B, "ip": "192.168.0.3"})
            await api.call("POST", f"/net/{a_net}/addresses", {"ip": "192.168.0.77"})
            await api.call("DELETE", f"/net/{a_net}/nodes/{PROV_B}")
            b_net = await api.create("fd00::/64", key="b")
            await api.call("POST", f"/net/{b_net}/nodes", {"id": PROV_C, "ip": "fd00::c"}, key="b")
            gone = await api.create("10.9.0.0/16")
            await api.call("POST", f"/net/{gone}/nodes", {"id": PROV_C, "ip": "10.9.0.3"})
            await api.call("POST", f"/net/{gone}/addresses", {"ip": "10.9.0.4"})
            assert api.store.counts(gone) == {"networks": 1, "nodes": 1, "addresses": 1}
            assert await api.call("DELETE", f"/net/{gone}") == (200, None)
            assert api.store.counts(gone) == {"networks": 0, "nodes": 0, "addresses": 0}
            before = {
                key: [
                    await api.call("GET", path, key=key)
                    for path in (
                        "/net",
                        f"/net/{nid}",
                        f"/net/{nid}/nodes",
                        f"/net/{nid}/addresses",
                    )
                ]
                for key, nid in (("a", a_net), ("b", b_net))
            }

        # A new process: new store connection, new backend, new server; same file and keys.
        async with running(db, keys) as api:
            after = {
                key: [
                    await api.call("GET", path, key=key)
                    for path in (
                        "/net",
                        f"/net/{nid}",
                        f"/net/{nid}/nodes",
                        f"/net/{nid}/addresses",
                    )
                ]
                for key, nid in (("a", a_net), ("b", b_net))
            }
            assert after == before
            assert after["a"][2] == (200, [{"id": PROV_A, "ip": "192.168.0.2"}])
            assert after["a"][3] == (200, [{"ip": "192.168.0.1/24"}, {"ip": "192.168.0.77/24"}])
            assert after["a"][1][1]["gateway"] == "192.168.0.254"
            assert await api.call("GET", f"/net/{gone}") == (404, {"message": "Network not found"})
            # The backend has the networks again: the provider's stack answers.
            provider = api.backend.provider(a_net, PROV_A)
            assert await api.backend.requestor(a_net).ping(str(provider.ip), timeout=2.0) >= 0
            # Ownership survived too.
            assert await api.call("GET", f"/net/{b_net}", key="a") == (403, b"")
            # The model is live: taken addresses stay taken, removal works.
            assert (
                await api.call("POST", f"/net/{a_net}/nodes", {"id": PROV_C, "ip": "192.168.0.2"})
            )[0] == 409
            assert await api.call("DELETE", f"/net/{a_net}") == (200, None)
            assert api.store.counts(a_net) == {"networks": 0, "nodes": 0, "addresses": 0}

        async with running(db, keys) as api:
            status, nets = await api.call("GET", "/net")
            assert (status, nets) == (200, [])
            status, nets = await api.call("GET", "/net", key="b")
            assert [n["id"] for n in nets] == [b_net]

    run(main)


def test_access_log_never_contains_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def test(api: Api) -> None:
        key = api.keys["a"]
        nid = await api.create()
        await api.call("GET", f"/net?authToken={key}", key=None)
        await api.call("GET", f"/net/{nid}?x=1&authToken={key}&y=2", key=None)
        await api.call("GET", f"/net/{nid}/tcp/192.168.0.1/1?authToken={key}", key=None)
        await api.call("GET", f"/net?AUTHTOKEN={key}", key=None)
        await api.call("GET", "/net", key="a")
        await api.call("GET", "/net", key="made-up-key")
        await api.call("GET", "/net?authToken=made-up-key", key=None)

    with caplog.at_level(logging.DEBUG):
        serve_test(tmp_path, test)
    text = caplog.text
    assert '"GET /net-api/v1/net?authToken=*** HTTP' not in text  # the format has no version
    assert '"GET /net-api/v1/net?authToken=***" 401' in text
    assert "/tcp/192.168.0.1/1?authToken=*** 400" not in text
    assert '/tcp/192.168.0.1/1?authToken=***" 400' in text  # taken there: not a WebSocket
    assert "x=1&authToken=***&y=2" in text
    assert "made-up-key" not in text
    for record in caplog.records:
        assert "Bearer" not in record.getMessage()


# -- store and app keys --------------------------------------------------------------------


def test_app_keys_are_random_hashed_listed_without_keys_and_deletable(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    with Store(db) as store:
        keys = AppKeys(store)
        first = keys.create("first", PROV_A.upper().replace("0X", "0x"))
        second = keys.create("second", PROV_B)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", first)
        assert first != second
        assert keys.verify(first) == PROV_A
        assert keys.verify(second) == PROV_B
        assert keys.verify(first + "x") is None
        assert keys.verify("") is None
        listed = keys.list()
        assert [(k.name, k.identity) for k in listed] == [("first", PROV_A), ("second", PROV_B)]
        assert first not in repr(listed)
        with pytest.raises(AppKeyError, match="exists already"):
            keys.create("first", PROV_C)
        for bad in ("", "-x", "a b", "x" * 65):
            with pytest.raises(AppKeyError, match="not a valid app key name"):
                keys.create(bad, PROV_C)
        with pytest.raises(InvalidNodeId):
            keys.create("third", "0x12")
        keys.delete("first")
        assert keys.verify(first) is None
        with pytest.raises(AppKeyError, match="no app key"):
            keys.delete("first")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert second.encode() not in raw
    assert (db.stat().st_mode & 0o777) == 0o600


def test_store_schema_version_cascades_and_refuses_newer_files(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Store(db) as store:
        assert store.schema_version() == SCHEMA_VERSION
        net = StoredNetwork("n1", "192.168.0.0/24", "255.255.255.0", "192.168.0.1", REQ,
                            "192.168.0.1", REQ, nodes=((PROV_A, "192.168.0.2"),),
                            addresses=("192.168.0.9",))  # fmt: skip
        store.add_network(net)
        with pytest.raises(StoreError):
            store.add_network(net)
        store.add_node("n1", PROV_A, "192.168.0.2")  # the same again: a no-op
        with pytest.raises(StoreError):
            store.add_node("n1", PROV_B, "192.168.0.2")
        with pytest.raises(StoreError):
            store.add_node("nowhere", PROV_B, "192.168.0.3")
        [loaded] = store.load()
        assert loaded == net
        assert store.remove_network("n1")
        assert store.counts("n1") == {"networks": 0, "nodes": 0, "addresses": 0}
        assert not store.remove_network("n1")
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(db)


def test_small_networks_reserve_their_broadcast_address(tmp_path: Path) -> None:

    async def test(api: Api) -> None:
        nid = await api.create("192.168.0.0/30")  # .1 requestor, .2 the only other host
        nodes = f"/net/{nid}/nodes"
        assert await api.call("POST", nodes, {"id": PROV_A, "ip": "192.168.0.2"}) == (200, None)
        status, answer = await api.call("POST", nodes, {"id": PROV_B, "ip": "192.168.0.3"})
        assert status == 400
        assert "broadcast" in answer["message"]

    serve_test(tmp_path, test)


def test_concurrent_adds_of_one_address_give_one_winner(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create()
        ids = ["0x" + f"{n:02x}" * 20 for n in range(20, 40)]
        results = await asyncio.gather(
            *(api.call("POST", f"/net/{nid}/nodes", {"id": i, "ip": "192.168.0.9"}) for i in ids)
        )
        assert sorted(status for status, _ in results) == [200] + [409] * 19
        _, nodes = await api.call("GET", f"/net/{nid}/nodes")
        assert len(nodes) == 1
        assert api.store.counts(nid)["nodes"] == 1

    serve_test(tmp_path, test)


# -- bounds (429) --------------------------------------------------------------------------


def test_networks_per_identity_and_nodes_per_network_are_bounded_429_and_counted(
    tmp_path: Path,
) -> None:
    async def test(api: Api) -> None:
        a1 = await api.create("10.1.0.0/24")
        await api.create("10.2.0.0/24")
        status, answer = await api.call("POST", "/net", {"ip": "10.3.0.0/24"})
        assert (status, answer) == (
            429,
            {
                "message": "Networks per identity limit reached (2); the daemon's "
                "--max-networks ($GOLEM_VPN_MAX_NETWORKS) sets it"
            },
        )
        # Another identity has its own count; a removed network frees its place.
        await api.create("10.3.0.0/24", key="b")
        assert await api.call("DELETE", f"/net/{a1}") == (200, None)
        await api.create("10.4.0.0/24")
        _, nets = await api.call("GET", "/net")
        assert len(nets) == 2

        nid = nets[0]["id"]
        for i, node in enumerate((PROV_A, PROV_B, PROV_C), start=2):
            ip = f"{nets[0]['ip'].rsplit('.', 1)[0]}.{i}"
            assert await api.call("POST", f"/net/{nid}/nodes", {"id": node, "ip": ip}) == (
                200,
                None,
            )
        refresh = {"id": PROV_A, "ip": f"{nets[0]['ip'].rsplit('.', 1)[0]}.2"}
        assert await api.call("POST", f"/net/{nid}/nodes", refresh) == (200, None)
        status, answer = await api.call(
            "POST", f"/net/{nid}/nodes", {"id": "0x" + "e5" * 20, "ip": refresh["ip"][:-1] + "9"}
        )
        assert (status, answer) == (
            429,
            {
                "message": "Nodes per network limit reached (3); the daemon's --max-nodes "
                "($GOLEM_VPN_MAX_NODES) sets it"
            },
        )
        _, info = await api.call("GET", "/status", prefix=V2_NET)
        assert info["refused"] == {"networks_limit": 1, "nodes_limit": 1}

    serve_test(tmp_path, test, limits=Limits(networks=2, nodes=3))


def test_limits_come_from_the_environment_and_the_daemons_flags() -> None:
    assert Limits.from_env({}) == Limits()
    env = {"GOLEM_VPN_MAX_NETWORKS": "7", "GOLEM_VPN_MAX_BODY_SIZE": "1000"}
    assert Limits.from_env(env) == Limits(networks=7, body=1000)
    with pytest.raises(ValueError, match=r"--max-nodes \(\$GOLEM_VPN_MAX_NODES\).*'0'"):
        Limits.from_env({"GOLEM_VPN_MAX_NODES": "0"})
    # The CLI keeps its own copy of the flags (--help must not import aiohttp): same ones.
    from golem_vpn import cli

    assert {(flag, env) for flag, env, _, _ in cli._LIMIT_FLAGS} == set(LIMIT_SETTINGS.values())
    defaults = Limits()
    for name, (flag, _env) in LIMIT_SETTINGS.items():
        (default,) = [d for f, _, d, _ in cli._LIMIT_FLAGS if f == flag]
        assert default == getattr(defaults, name), flag


# -- slow clients --------------------------------------------------------------------------


def test_slow_loris_clients_neither_hold_the_api_nor_exhaust_it(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        host, port = api.runner.addresses[0][:2]
        loop = asyncio.get_running_loop()
        # 30 clients that send half a request head and then nothing (a slow-loris).
        slow = [await asyncio.open_connection(host, port) for _ in range(30)]
        for _, writer in slow:
            writer.write(b"GET /net-api/v1/net HTTP/1.1\r\nHost: x\r\nAuthor")
        await asyncio.sleep(0.1)
        # A normal client is served at once meanwhile (a fresh connection each time).
        for _ in range(3):
            start = loop.time()
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(api.url + "/net-api/v1/net", headers=api.auth()) as resp,
            ):
                assert resp.status == 200
            assert loop.time() - start < 0.5
        # Beyond --max-connections (40 here), a new connection gets a 503 and is closed.
        extra = [await asyncio.open_connection(host, port) for _ in range(12)]
        answers = [await asyncio.wait_for(r.read(), 2) for r, _ in extra]
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
        assert len(refused) >= 2
        assert b"Too many connections" in refused[0]
        for _, writer in extra:
            writer.close()
        # The head timeout (1 s here) closes the slow ones: each read sees EOF.
        start = loop.time()
        for reader, writer in slow:
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()
        assert loop.time() - start < 2.0
        _, info = await api.call("GET", "/status", prefix=V2_NET)
        assert info["refused"]["connections_limit"] == len(refused)

    serve_test(tmp_path, test, limits=Limits(connections=40, request_timeout=1))


def test_a_body_that_does_not_arrive_in_time_is_408_and_counted(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        host, port = api.runner.addresses[0][:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /net-api/v1/net HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + api.keys["a"].encode() + b"\r\n"
            b'Content-Length: 100\r\n\r\n{"ip":'
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 408")
        writer.close()
        _, info = await api.call("GET", "/status", prefix=V2_NET)
        assert info["refused"] == {"slow_body": 1}

    serve_test(tmp_path, test, limits=Limits(request_timeout=1))
