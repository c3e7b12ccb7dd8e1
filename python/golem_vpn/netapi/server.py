"""The Net API server: yagna's VPN REST API and WebSocket gate, on aiohttp.

Every endpoint is served under both ``/net-api/v1`` and ``/net-api/v2/vpn`` (as yagna does),
with yagna's JSON shapes and status codes, so yapapi and golem-js work unchanged:

=========================================== ======================================== =========
endpoint                                    answer                                   errors
=========================================== ======================================== =========
``GET /net``                                ``[Network]`` of the caller's identity   401
``POST /net {ip, mask?, gateway?}``         ``Network``                              400 401
``GET /net/{id}``                           ``Network``                              401-404
``DELETE /net/{id}``                        ``null``                                 401-404
``GET /net/{id}/addresses``                 ``[{ip: "a.b.c.d/prefix"}]``             401-404
``POST /net/{id}/addresses {ip}``           ``null``                                 400-409
``GET /net/{id}/nodes``                     ``[{id, ip}]``                           401-404
``POST /net/{id}/nodes {id, ip}``           ``null``                                 400-409
``DELETE /net/{id}/nodes/{nodeId}``         ``null``                                 400-404
``GET /net/{id}/tcp``                       ``[Connection]``, the gate's live ones   401-404
``GET /net/{id}/tcp/{ip}/{port}``           101, the TCP gate (:mod:`.gate`)         400-404 502 504
``GET /net/{id}/udp/{ip}/{port}``           101, the UDP gate (beyond yagna)         400-404
``GET /net/{id}/raw/from/{src}/to/{dst}``   101, the raw frame gate (yagna master)   400-404
``GET /net/{id}/raw``                       the raw gate's sessions and counters     401-404
``GET /openapi.json``                       this API's OpenAPI document (no key)
``GET /net-api/v2/net/status``              ``{nodeId, listenIp?, publicIp?, sessions}`` 401
=========================================== ======================================== =========

The OpenAPI documents (:mod:`golem_vpn.netapi.openapi`, the single source of the API's
description) are served at ``/net-api/v1/openapi.json`` and ``/net-api/v2/vpn/openapi.json``
(and ``/golem-vpn/v1/openapi.json`` for the attachment API) *without* an app key: they are
the same for every daemon and say nothing about its state, and tools (code generators,
schemathesis, Swagger UI) fetch them before they hold a key. yagna serves no such path, so
no yagna client is affected.

A node daemon's backend (one with an ``exeunit``) also serves the provider side's attachment
API, ``/golem-vpn/v1/attachments`` (see :mod:`golem_vpn.exeunit.api`), with the same app keys.

``Network`` is ``{id, ip, mask, gateway}``; as in yagna, createNetwork's ``ip`` is the given
address with the network's prefix (``"192.168.0.0/24"``; golem-js strips the prefix).

Errors are JSON ``{"message": ...}``, except 403 and 504 whose bodies are empty (yagna's).
400: malformed JSON, a missing or mistyped field, a bad address, mask or node id, an address
outside the network or reserved (network, broadcast, loopback, multicast, unspecified).
401: ``Missing application key`` / ``Invalid application key``; the key comes from
``Authorization: Bearer <key>``, or ``?authToken=<key>`` on the WebSocket gates only (yagna's
spec puts it there, as browsers cannot set a WebSocket's headers; a REST request with only a
query key is a 401 that says to use the header: a key in a URL ends up in logs). 404: no such
network. Ownership is yagna's: a key whose identity owns no network gets 404 on every
network id; one that owns some gets 403 on another identity's network (an id nobody owns
is a 404 for everyone: yagna answers 403 there, which hides nothing and only confuses). 409
``IP address is taken: <ip>`` when the address belongs to a different node (or the node holds
another address); adding a node again with its own address is a 200 (yagna's refresh,
which tells the providers again). 413: a body over ``Limits.body``. 429: a bound of
:class:`Limits` reached (networks per identity, nodes per network, gate connections per
identity and in all), the message naming it and its daemon flag. A TCP or UDP gate request to
an address no node holds is a 400 at once (``destination address not found``, the raw gate's
words) where yagna waits out its 5 s connect timeout and answers 504. 502/504: see the gate.
A client has ``Limits.request_timeout`` to send a request's head (then the
connection is closed) and its body (then 408); beyond ``Limits.connections`` a new
connection gets a 503 and is closed: a slow-loris cannot hold the API. A change the data dir
cannot take is refused whole, the message naming the cause: 507 when its disk is full, 503 when
it is read-only or failing; reads keep working and the change can be made again later.
Every refusal is counted by reason in ``GET /net-api/v2/net/status``'s ``refused``.

For golem-js, which registers the requestor itself through ``POST /nodes``, a node id equal to
the network's requestor or owner registers a requestor address (as ``POST /addresses`` does;
its own first address is a no-op) rather than a provider; removing the requestor is a 400.

State: the model (:class:`~golem_vpn.model.Network` per network) lives in memory; each change
is written to the :class:`~golem_vpn.netapi.store.Store` and then made real by the
:class:`~golem_vpn.netapi.backend.VpnBackend` before the API answers; an addition the store
or the backend refuses is rolled back, a removal counts once the store has it. Mutations are
serialised by one lock. At startup the server loads the store and re-creates every network in
the backend.

The access log (logger ``golem_vpn.netapi.access``) shows method, path, status, size and
time; ``authToken`` values are replaced by ``***`` and headers are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from golem_vpn.errors import (
    AddressError,
    AddressesExhausted,
    AddressTaken,
    ConnectionRefused,
    ConnectTimeout,
    DeployConfigError,
    Forbidden,
    GolemVpnError,
    InvalidNodeId,
    NetworkNotFound,
    NodeNotFound,
    StoreFull,
    StoreUnavailable,
)
from golem_vpn.model import (
    IPAddress,
    Network,
    check_host,
    parse_ip,
    parse_network,
    parse_node_id,
)
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.backend import VpnBackend
from golem_vpn.netapi.gate import (
    CLIENT_TIMEOUT,
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    HEARTBEAT_INTERVAL,
    Gate,
    NotWebSocket,
    RawTarget,
)
from golem_vpn.netapi.openapi import DOCUMENT_PATHS, Api, document
from golem_vpn.netapi.store import Store, StoredNetwork, StoreError

__all__ = [
    "API_PREFIXES",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "IDENTITY",
    "LIMIT_SETTINGS",
    "MAX_BODY_SIZE",
    "NETAPI",
    "PUBLIC_PATHS",
    "STATUS_PATH",
    "AccessLogger",
    "ApiError",
    "Limits",
    "NetApi",
    "create_app",
    "serve",
]

#: The VPN API's roots (yagna's ``NET_API_V1_VPN_PATH`` and ``NET_API_V2_VPN_PATH``).
API_PREFIXES = ("/net-api/v1", "/net-api/v2/vpn")
#: ``GET`` here answers the node's status (``NET_API_V2_NET_PATH`` + ``/status``).
STATUS_PATH = "/net-api/v2/net/status"
DEFAULT_HOST = "127.0.0.1"
#: yagna's REST port (``YAGNA_API_URL`` defaults to ``http://127.0.0.1:7465``).
DEFAULT_PORT = 7465
#: Largest request body; larger ones get 413.
MAX_BODY_SIZE = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """What one daemon holds for its clients; each bound is refused with 429 (413 for a body).

    The defaults are far above what an SDK does (a yapapi or golem-js run makes one network
    and a few nodes per activity) and bound what a runaway or hostile client can make the
    daemon hold: one key once created 580 networks in three seconds.

    Attributes:
        networks: Networks one identity may hold (``--max-networks``).
        nodes: Nodes in one network (``--max-nodes``).
        gates_per_identity: Open gate WebSockets (TCP, UDP, raw) of one identity
            (``--max-gates-per-key``; every key of a node is its identity).
        gates: Open gate WebSockets in all (``--max-gates``).
        body: Largest request body in bytes (``--max-body-size``; 413).
        connections: Open HTTP connections (``--max-connections``); beyond, a new one gets
            a 503 and is closed, so a flood of idle or slow sockets cannot use up the
            daemon's file descriptors. Gate WebSockets count too.
        request_timeout: Seconds a client has to send a request's head (then the connection
            is closed: a slow-loris holds a slot this long at most) and, separately, its body
            (then 408) (``--request-timeout``).
    """

    networks: int = 1024
    nodes: int = 4096
    gates_per_identity: int = 1024
    gates: int = 4096
    body: int = MAX_BODY_SIZE
    connections: int = 8192
    request_timeout: int = 15

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Limits:
        """The defaults, overridden by ``GOLEM_VPN_MAX_*`` (see :data:`LIMIT_SETTINGS`).

        Raises:
            ValueError: A variable is not a positive integer (the message names it).
        """
        env = os.environ if environ is None else environ
        values: dict[str, int] = {}
        for name, (flag, var) in LIMIT_SETTINGS.items():
            text = env.get(var)
            if text:
                values[name] = _positive(text, f"{flag} (${var})")
        return replace(cls(), **values)


#: Each limit's daemon flag and environment variable.
LIMIT_SETTINGS: dict[str, tuple[str, str]] = {
    "networks": ("--max-networks", "GOLEM_VPN_MAX_NETWORKS"),
    "nodes": ("--max-nodes", "GOLEM_VPN_MAX_NODES"),
    "gates_per_identity": ("--max-gates-per-key", "GOLEM_VPN_MAX_GATES_PER_KEY"),
    "gates": ("--max-gates", "GOLEM_VPN_MAX_GATES"),
    "body": ("--max-body-size", "GOLEM_VPN_MAX_BODY_SIZE"),
    "connections": ("--max-connections", "GOLEM_VPN_MAX_CONNECTIONS"),
    "request_timeout": ("--request-timeout", "GOLEM_VPN_REQUEST_TIMEOUT"),
}
assert set(LIMIT_SETTINGS) == {f.name for f in fields(Limits)}


def _positive(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{what} must be a positive integer, got {text!r}")
    return value


def _limit(what: str, limit: int, name: str) -> ApiError:
    """The 429 for a bound reached, naming it and the setting that raises it."""
    flag, var = LIMIT_SETTINGS[name]
    return ApiError(429, f"{what} limit reached ({limit}); the daemon's {flag} (${var}) sets it")


_log = logging.getLogger("golem_vpn.netapi")
ACCESS_LOG = logging.getLogger("golem_vpn.netapi.access")

T = TypeVar("T")


class ApiError(Exception):
    """An HTTP error answer: JSON ``{"message": ...}``, or an empty body if ``message`` is None."""

    def __init__(self, status: int, message: str | None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def response(self) -> web.Response:
        """The answer to send."""
        if self.message is None:
            return web.Response(status=self.status)
        return _message(self.status, self.message)


def _message(status: int, message: str, headers: Any = None) -> web.Response:
    return web.json_response({"message": message}, status=status, headers=headers)


def _not_found() -> ApiError:
    return ApiError(404, "Network not found")


def _taken(ip: IPAddress, by: str) -> ApiError:
    # yagna's words first (clients may match them), then who holds it.
    return ApiError(409, f"IP address is taken: {ip} ({by})")


@dataclass(eq=False)
class _Entry:
    """One network as the server keeps it."""

    model: Network
    owner: str
    ip: str  # createNetwork's "ip": the given address with the prefix
    created: float
    addresses: list[IPAddress] = field(default_factory=list)  # the requestor's extra ones

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.model.id,
            "ip": self.ip,
            "mask": str(self.model.network.netmask),
            "gateway": str(self.model.gateway),
        }

    @functools.cached_property
    def json_bytes(self) -> bytes:
        """:meth:`to_json` serialised, made once (none of its fields ever change): listing
        10,000 networks re-formatted each one's addresses, 100 ms of the 200 a list took."""
        return json.dumps(self.to_json()).encode()

    def with_prefix(self, ip: IPAddress) -> str:
        return f"{ip}/{self.model.network.prefixlen}"

    def stored(self) -> StoredNetwork:
        return StoredNetwork(
            id=self.model.id,
            ip=self.ip,
            mask=str(self.model.network.netmask),
            gateway=str(self.model.gateway),
            requestor_id=self.model.requestor_id,
            requestor_ip=str(self.model.requestor_ip),
            owner=self.owner,
            created=self.created,
            nodes=tuple((n.id, str(n.ip)) for n in self.model.nodes.values()),
            addresses=tuple(str(ip) for ip in self.addresses),
        )


#: The identity (node id) of the request's app key, set by the auth middleware.
IDENTITY = web.RequestKey("golem_vpn.identity", str)


async def _body(
    request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, str | None]:
    """Read a JSON object body and its string fields (None for absent optional ones).

    Raises:
        ApiError: 400 for malformed JSON, a non-object, a missing or non-string field.
        web.HTTPRequestEntityTooLarge: The body is over the size limit (413).
    """
    try:
        async with asyncio.timeout(request.app[NETAPI].limits.request_timeout):
            raw = await request.read()
    except TimeoutError:
        request.app[NETAPI].refused["slow_body"] += 1
        flag, var = LIMIT_SETTINGS["request_timeout"]
        raise ApiError(
            408, f"The request body did not arrive in time; the daemon's {flag} (${var}) sets it"
        ) from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError; arrays nested deep
        raise ApiError(400, f"Malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"Expected a JSON object, got {type(data).__name__}")
    fields: dict[str, str | None] = {}
    for name in required + optional:
        value = data.get(name)
        if value is None:
            if name in required:
                raise ApiError(400, f"Missing field '{name}'")
        elif not isinstance(value, str):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ApiError(400, f"Field '{name}' must be a string, got {shown}")
        fields[name] = value
    return fields


def _bearer(request: web.Request) -> str | None:
    """The app key of a request: ``Authorization: Bearer`` first, then ``?authToken=``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, key = header.strip().partition(" ")
        return key.strip() if scheme.lower() == "bearer" else ""
    token = request.query.get("authToken")
    return token


class NetApi:
    """The server's state and handlers; :func:`create_app` wires it into an application.

    Args:
        backend: What makes the changes real.
        store: Where networks and app keys persist.
        gate: The WebSocket gate.
        limits: What one identity, network and the daemon may hold.
    """

    def __init__(
        self, backend: VpnBackend, store: Store, gate: Gate, limits: Limits | None = None
    ) -> None:
        self.backend = backend
        self.store = store
        self.gate = gate
        self.limits = limits or Limits()
        self.app_keys = AppKeys(store)
        #: Requests refused, by reason (shown as ``refused`` by ``GET /net/status``).
        self.refused: Counter[str] = Counter()
        self._networks: dict[str, _Entry] = {}
        self._held: Counter[str] = Counter()  # networks per owner (the per-identity bound)
        self._gates: Counter[str] = Counter()  # open gate WebSockets per identity
        self._lock = asyncio.Lock()

    # -- helpers ---------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call in a thread: a commit waits for fsync, the loop must not."""
        return await asyncio.to_thread(fn, *args)

    def _owned(self, identity: str, network_id: str) -> _Entry:
        """The network if ``identity`` owns it, with yagna's 404/403 rule otherwise."""
        entry = self._networks.get(network_id)
        if entry is None:
            raise _not_found()
        if entry.owner != identity:
            if self._held[identity]:
                self.refused["another_identity"] += 1
                raise ApiError(403, None)
            raise _not_found()
        return entry

    def _entry(self, request: web.Request) -> _Entry:
        return self._owned(request[IDENTITY], request.match_info["net_id"])

    # -- startup ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Re-create the stored networks (model and backend); run once at startup."""
        async with self._lock:
            for stored in await self._db(self.store.load):
                try:
                    await self._restore(stored)
                except Exception:
                    _log.exception("cannot restore network %s; it stays stored", stored.id)

    async def _restore(self, stored: StoredNetwork) -> None:
        model = Network(
            parse_network(stored.ip),
            requestor_id=stored.requestor_id,
            requestor_ip=stored.requestor_ip,
            gateway=stored.gateway,
            id=stored.id,
        )
        entry = _Entry(model, stored.owner, stored.ip, stored.created)
        for node_id, ip in stored.nodes:
            model.add_node(node_id, ip)
        entry.addresses = [check_host(model.network, ip) for ip in stored.addresses]
        await self.backend.network_created(model)
        self._networks[model.id] = entry
        self._held[entry.owner] += 1
        for extra in entry.addresses:
            await self.backend.address_added(model.id, str(extra))
        for node in model.nodes.values():
            await self.backend.node_added(model, node)
        _log.info("restored network %s (%s, %d nodes)", model.id, stored.ip, len(model.nodes))

    # -- networks --------------------------------------------------------------------------

    async def get_networks(self, request: web.Request) -> web.Response:
        identity = request[IDENTITY]
        mine = [e.json_bytes for e in self._networks.values() if e.owner == identity]
        return web.json_response(body=b"[" + b", ".join(mine) + b"]")

    async def create_network(self, request: web.Request) -> web.Response:
        body = await _body(request, ("ip",), ("mask", "gateway"))
        ip = body["ip"]
        assert ip is not None
        model = Network.create(ip, body["mask"], body["gateway"], requestor_id=self.backend.node_id)
        if not model.has_room():  # yagna creates it; it could never hold a provider
            raise ApiError(
                400,
                f"Network {model.network} has no address for a node besides the requestor's; "
                "use a shorter prefix",
            )
        given = parse_ip(ip.partition("/")[0])
        entry = _Entry(model, request[IDENTITY], f"{given}/{model.network.prefixlen}", time.time())
        async with self._lock:
            if self._held[entry.owner] >= self.limits.networks:
                self.refused["networks_limit"] += 1
                raise _limit("Networks per identity", self.limits.networks, "networks")
            await self._db(self.store.add_network, entry.stored())
            try:
                await self.backend.network_created(model)
            except BaseException:
                await self._db(self.store.remove_network, model.id)
                raise
            self._networks[model.id] = entry
            self._held[entry.owner] += 1
        _log.info("created network %s (%s)", model.id, entry.ip)
        return web.json_response(entry.to_json())

    async def get_network(self, request: web.Request) -> web.Response:
        return web.json_response(body=self._entry(request).json_bytes)

    async def remove_network(self, request: web.Request) -> web.Response:
        async with self._lock:
            entry = self._entry(request)
            network_id = entry.model.id
            await self._db(self.store.remove_network, network_id)
            del self._networks[network_id]
            self._held[entry.owner] -= 1
            if not self._held[entry.owner]:
                del self._held[entry.owner]
            self.gate.close_network(network_id)
            with contextlib.suppress(NetworkNotFound):
                await self.backend.network_removed(network_id)
        _log.info("removed network %s", network_id)
        return web.json_response(None)

    # -- addresses -------------------------------------------------------------------------

    async def get_addresses(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        ips = [entry.model.requestor_ip, *entry.addresses]
        return web.json_response([{"ip": entry.with_prefix(ip)} for ip in ips])

    async def add_address(self, request: web.Request) -> web.Response:
        body = await _body(request, ("ip",))
        async with self._lock:
            entry = self._entry(request)
            await self._add_address(entry, _address_in(entry, body["ip"]))
        return web.json_response(None)

    async def _add_address(self, entry: _Entry, ip: IPAddress) -> None:
        model = entry.model
        if ip == model.requestor_ip or ip in entry.addresses:
            return  # the stack has it already (yagna adds no duplicates)
        if (holder := model.nodes_dict().get(str(ip))) is not None:
            raise _taken(ip, f"held by node {holder}")
        await self._db(self.store.add_address, model.id, str(ip))
        entry.addresses.append(ip)
        try:
            await self.backend.address_added(model.id, str(ip))
        except BaseException:
            entry.addresses.remove(ip)
            await self._db(self.store.remove_address, model.id, str(ip))
            raise

    # -- nodes -----------------------------------------------------------------------------

    async def get_nodes(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        return web.json_response(
            [{"id": n.id, "ip": str(n.ip)} for n in entry.model.nodes.values()]
        )

    async def add_node(self, request: web.Request) -> web.Response:
        body = await _body(request, ("id", "ip"))
        async with self._lock:
            entry = self._entry(request)
            node_id = parse_node_id(body["id"])
            ip = _address_in(entry, body["ip"])
            model = entry.model
            if node_id in (model.requestor_id, entry.owner):
                await self._add_address(entry, ip)  # golem-js registers the requestor so
                return web.json_response(None)
            current = model.nodes.get(node_id)
            if current is not None and current.ip == ip:
                # yagna's refresh: nothing changes here, the providers are told again.
                await self.backend.node_added(model, current)
                return web.json_response(None)
            if ip == model.requestor_ip or ip in entry.addresses:
                raise _taken(ip, "the requestor's own address")
            if (holder := model.nodes_dict().get(str(ip))) is not None:
                raise _taken(ip, f"held by node {holder}")
            if current is None and len(model.nodes) >= self.limits.nodes:
                self.refused["nodes_limit"] += 1
                raise _limit("Nodes per network", self.limits.nodes, "nodes")
            node = model.add_node(node_id, ip)  # AddressTaken if it holds another address
            try:
                await self._db(self.store.add_node, model.id, node.id, str(node.ip))
            except BaseException:
                model.remove_node(node.id)
                raise
            try:
                await self.backend.node_added(model, node)
            except BaseException:
                model.remove_node(node.id)
                await self._db(self.store.remove_node, model.id, node.id)
                raise
        _log.info("added node %s at %s to network %s", node.id, node.ip, model.id)
        return web.json_response(None)

    async def readdress_node(self, request: web.Request) -> web.Response:
        """``PATCH /net/{id}/nodes/{nodeId}`` ``{"ip"}``: golem-vpn's extension to move a
        node to another address after DEPLOY. 200 with the node; 404 for an unknown node;
        409 if the address is taken; 400 for the requestor or a bad address."""
        body = await _body(request, ("ip",))
        node_id = parse_node_id(request.match_info["node_id"])
        async with self._lock:
            entry = self._entry(request)
            model = entry.model
            if node_id in (model.requestor_id, entry.owner):
                raise ApiError(400, f"The requestor {node_id} cannot be moved to another address")
            current = model.nodes.get(node_id)
            if current is None:
                raise ApiError(404, f"Node {node_id} is not in network {model.id}")
            ip = _address_in(entry, body["ip"])
            if ip != current.ip:
                if ip == model.requestor_ip or ip in entry.addresses:
                    raise _taken(ip, "the requestor's own address")
                if (holder := model.nodes_dict().get(str(ip))) is not None:
                    raise _taken(ip, f"held by node {holder}")
            if ip == current.ip:
                return web.json_response({"id": current.id, "ip": str(current.ip)})
            old_ip = current.ip
            await self._db(self.store.set_node_ip, model.id, node_id, str(ip))
            node = model.readdress_node(node_id, ip)
            self.gate.close_peer(model.id, str(old_ip))
            try:
                await self.backend.node_readdressed(model, node)
            except BaseException:
                model.readdress_node(node_id, old_ip)
                await self._db(self.store.set_node_ip, model.id, node_id, str(old_ip))
                raise
        _log.info("moved node %s from %s to %s in network %s", node_id, old_ip, ip, model.id)
        return web.json_response({"id": node.id, "ip": str(node.ip)})

    async def remove_node(self, request: web.Request) -> web.Response:
        node_id = parse_node_id(request.match_info["node_id"])
        async with self._lock:
            entry = self._entry(request)
            model = entry.model
            if node_id == model.requestor_id:
                raise ApiError(400, f"The requestor {node_id} cannot be removed from its network")
            node = model.nodes.get(node_id)
            if node is None:
                return web.json_response(None)  # as yagna: removing an unknown node is fine
            await self._db(self.store.remove_node, model.id, node_id)
            model.remove_node(node_id)
            self.gate.close_peer(model.id, str(node.ip))
            await self.backend.node_removed(model.id, node_id)
        _log.info("removed node %s from network %s", node_id, model.id)
        return web.json_response(None)

    # -- gate ------------------------------------------------------------------------------

    async def get_connections(self, request: web.Request) -> web.Response:
        entry = self._entry(request)
        return web.json_response([c.to_json() for c in self.gate.connections(entry.model.id)])

    def _target(self, request: web.Request, entry: _Entry) -> tuple[str, int]:
        model = entry.model
        ip = check_host(model.network, request.match_info["ip"])
        text = request.match_info["port"]
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ApiError(400, f"Port must be an integer from 1 to 65535, got {text!r}")
        if (
            ip != model.requestor_ip
            and ip not in entry.addresses
            and not any(n.ip == ip for n in model.nodes.values())
        ):
            # The daemon knows no frame to it can be delivered: answering at once beats
            # yagna's 504 after its 5 s connect timeout, with the words of yagna's raw gate.
            self.refused["no_such_address"] += 1
            raise ApiError(
                400, f"destination address not found: no node holds {ip} in network {model.id}"
            )
        return str(ip), int(text)

    @contextlib.contextmanager
    def _gate_slot(self, identity: str) -> Any:
        """Count one open gate WebSocket of ``identity``; 429 beyond the limits."""
        if self._gates[identity] >= self.limits.gates_per_identity:
            self.refused["gates_limit"] += 1
            limit = self.limits.gates_per_identity
            raise _limit("Gate connections per identity", limit, "gates_per_identity")
        if self._gates.total() >= self.limits.gates:
            self.refused["gates_limit"] += 1
            raise _limit("Gate connections", self.limits.gates, "gates")
        self._gates[identity] += 1
        try:
            yield
        finally:
            self._gates[identity] -= 1
            if not self._gates[identity]:
                del self._gates[identity]

    async def connect_tcp(self, request: web.Request) -> StreamResponse:
        entry = self._entry(request)
        ip, port = self._target(request, entry)
        with self._gate_slot(request[IDENTITY]):
            return await self.gate.tcp(request, entry.model.id, ip, port)

    async def connect_udp(self, request: web.Request) -> StreamResponse:
        entry = self._entry(request)
        ip, port = self._target(request, entry)
        with self._gate_slot(request[IDENTITY]):
            return await self.gate.udp(request, entry.model.id, ip, port)

    async def connect_raw(self, request: web.Request) -> StreamResponse:
        """``GET /net/{id}/raw/from/{src}/to/{dst}``: the raw frame gate. ``src`` must be
        one of the requestor's addresses in the network (its packets could not pass the
        nodes' anti-spoofing otherwise), ``dst`` a node's (yagna's 400 "destination address
        not found" otherwise)."""
        entry = self._entry(request)
        model = entry.model
        src = parse_ip(request.match_info["src"])
        dst = parse_ip(request.match_info["dst"])
        if src != model.requestor_ip and src not in entry.addresses:
            mine = ", ".join(str(ip) for ip in [model.requestor_ip, *entry.addresses])
            raise ApiError(
                400,
                f"source address {src} is not the requestor's in network {model.id} "
                f"(its addresses: {mine})",
            )
        node = next((n for n in model.nodes.values() if n.ip == dst), None)
        if node is None:
            self.refused["no_such_address"] += 1
            raise ApiError(
                400, f"destination address not found: no node holds {dst} in network {model.id}"
            )
        target = RawTarget(
            network_id=model.id,
            cidr=str(model.network),
            requestor_id=model.requestor_id,
            src=str(src),
            dst=str(dst),
            node_id=node.id,
        )
        with self._gate_slot(request[IDENTITY]):
            return await self.gate.raw(request, target)

    async def get_raw_sessions(self, request: web.Request) -> web.Response:
        """``GET /net/{id}/raw``: the raw gate's live sessions with their counters."""
        entry = self._entry(request)
        return web.json_response(self.gate.raw_sessions(entry.model.id))

    # -- node ------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({**self.backend.status(), "refused": dict(self.refused)})


def _address_in(entry: _Entry, value: str | None) -> IPAddress:
    """An address for ``entry``'s network, as ``"a.b.c.d"`` or ``"a.b.c.d/prefix"``."""
    assert value is not None
    text, slash, prefix = value.partition("/")
    if slash and prefix != str(entry.model.network.prefixlen):
        raise ApiError(
            400, f"{value!r} does not have the network's prefix /{entry.model.network.prefixlen}"
        )
    return check_host(entry.model.network, text)


NETAPI = web.AppKey("golem_vpn.netapi", NetApi)


# -- middlewares ---------------------------------------------------------------------------

# Errors of the model and the stack, as yagna maps its own (404, 403 and 409 by kind, 504 for a
# connect timeout, everything else about the request 400).
_ERRORS: tuple[tuple[type[BaseException], int, bool], ...] = (
    (NotWebSocket, 400, True),
    (ConnectTimeout, 504, False),
    (ConnectionRefused, 502, True),
    (AddressTaken, 409, True),
    (NetworkNotFound, 404, True),
    (NodeNotFound, 404, True),
    (Forbidden, 403, False),
    (InvalidNodeId, 400, True),
    (AddressError, 400, True),
    (AddressesExhausted, 400, True),
    (DeployConfigError, 400, True),
    # A full or read-only data dir: nothing of the change was kept, reads still work.
    (StoreFull, 507, True),
    (StoreUnavailable, 503, True),
    (StoreError, 500, True),
    (GolemVpnError, 400, True),
    (OSError, 502, True),
)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = exc.text or ""
        message = exc.reason if not text or text.startswith(f"{exc.status}:") else text
        if exc.status == 413:
            request.app[NETAPI].refused["body_too_large"] += 1
            flag, var = LIMIT_SETTINGS["body"]
            message = f"{message}; the daemon's {flag} (${var}) sets the limit"
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _message(exc.status, message, headers)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        for kind, status, with_message in _ERRORS:
            if isinstance(exc, kind):
                if status >= 500 and status not in (502, 504):
                    _log.error("%s %s failed: %s", request.method, request.path, exc)
                return ApiError(status, str(exc) if with_message else None).response()
        _log.exception("%s %s failed", request.method, request.path)
        return _message(500, "Internal server error")


#: Paths served without an app key: the OpenAPI documents (see the module docs).
PUBLIC_PATHS = frozenset(DOCUMENT_PATHS.values())


#: The WebSocket gates' paths: the only ones where ``?authToken=`` is taken (yagna's spec puts
#: ``app_key_param`` on the gate only, as browsers cannot set headers on a WebSocket; a key in
#: a URL ends up in logs and proxies, so every REST route wants the header).
_GATE_PATH = re.compile(r"/net/[^/]+/(?:tcp|udp)/[^/]+/[^/]+$|/net/[^/]+/raw/from/[^/]+/to/[^/]+$")


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> StreamResponse:
    if request.path in PUBLIC_PATHS and request.method in ("GET", "HEAD"):
        return await handler(request)
    api = request.app[NETAPI]
    key = _bearer(request)
    if (
        key is not None
        and "Authorization" not in request.headers
        and not _GATE_PATH.search(request.path)
    ):
        api.refused["query_key"] += 1
        raise ApiError(
            401,
            "The authToken query parameter is taken on the WebSocket gates only; "
            "send the app key as an Authorization: Bearer header",
        )
    if key is None:
        api.refused["missing_key"] += 1
        raise ApiError(401, "Missing application key")
    identity = await asyncio.to_thread(api.app_keys.verify, key) if key else None
    if identity is None:
        api.refused["invalid_key"] += 1
        raise ApiError(401, "Invalid application key")
    request[IDENTITY] = identity
    return await handler(request)


_TOKEN_RE = re.compile(r"([?&]authToken=)[^&#]*", re.IGNORECASE)


class AccessLogger(AbstractAccessLogger):
    """An access log line per request, with ``authToken`` values masked; never any header."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.3fs',
            request.remote,
            request.method,
            _TOKEN_RE.sub(r"\1***", request.raw_path),
            response.status,
            response.body_length,
            time,
        )


# -- assembly ------------------------------------------------------------------------------


def create_app(
    backend: VpnBackend,
    store: Store,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    heartbeat: float = HEARTBEAT_INTERVAL,
    idle_timeout: float = CLIENT_TIMEOUT,
    close_timeout: float = CLOSE_TIMEOUT,
    max_body_size: int | None = None,
    limits: Limits | None = None,
) -> web.Application:
    """Build the Net API application over ``backend`` and ``store``.

    The application restores the stored networks into ``backend`` when it starts and closes
    the gate's connections when it stops; ``backend`` and ``store`` stay the caller's to
    close.

    Args:
        backend: What makes changes real and gives the gate its sockets.
        store: Networks, nodes, addresses and app keys.
        connect_timeout: Seconds the TCP gate waits for a handshake (then 504).
        heartbeat: Seconds between the gate's pings.
        idle_timeout: Seconds without a client message before the gate closes a WebSocket.
        close_timeout: Seconds a WebSocket close waits for the client.
        max_body_size: Largest request body in bytes (then 413); overrides ``limits.body``.
        limits: The bounds (:class:`Limits`); default :meth:`Limits.from_env`.
    """
    limits = limits or Limits.from_env()
    if max_body_size is not None:
        limits = replace(limits, body=max_body_size)
    gate = Gate(
        backend,
        connect_timeout=connect_timeout,
        heartbeat=heartbeat,
        idle_timeout=idle_timeout,
        close_timeout=close_timeout,
    )
    api = NetApi(backend, store, gate, limits)
    app = web.Application(
        middlewares=[_error_middleware, _auth_middleware], client_max_size=limits.body
    )
    app[NETAPI] = api

    async def restore(_: web.Application) -> None:
        await api.restore()

    async def shutdown(_: web.Application) -> None:
        await gate.close_all()

    app.on_startup.append(restore)
    app.on_shutdown.append(shutdown)

    router = app.router
    for prefix in API_PREFIXES:
        net = prefix + "/net"
        one = net + "/{net_id}"
        router.add_get(net, api.get_networks)
        router.add_post(net, api.create_network)
        router.add_get(one, api.get_network)
        router.add_delete(one, api.remove_network)
        router.add_get(one + "/addresses", api.get_addresses)
        router.add_post(one + "/addresses", api.add_address)
        router.add_get(one + "/nodes", api.get_nodes)
        router.add_post(one + "/nodes", api.add_node)
        router.add_delete(one + "/nodes/{node_id}", api.remove_node)
        router.add_patch(one + "/nodes/{node_id}", api.readdress_node)
        router.add_get(one + "/tcp", api.get_connections)
        router.add_get(one + "/tcp/{ip}/{port}", api.connect_tcp, allow_head=False)
        router.add_get(one + "/udp/{ip}/{port}", api.connect_udp, allow_head=False)
        router.add_get(one + "/raw", api.get_raw_sessions)
        router.add_get(one + "/raw/from/{src}/to/{dst}", api.connect_raw, allow_head=False)
    router.add_get(STATUS_PATH, api.status)
    served: list[Api] = ["net-api-v1", "net-api-v2"]
    exeunit = getattr(backend, "exeunit", None)
    if exeunit is not None:  # a node daemon: its provider side (golem_vpn.exeunit.api)
        from golem_vpn.exeunit.api import add_routes

        add_routes(app, exeunit)
        served.append("attachments")
    for name in served:
        router.add_get(DOCUMENT_PATHS[name], _document_handler(name))
    return app


def _document_handler(name: Api) -> Handler:
    """Serves one OpenAPI document (built once, at the first request)."""
    body: list[bytes] = []

    async def handler(_: web.Request) -> web.Response:
        if not body:
            body.append(json.dumps(document(name), indent=1).encode())
        return web.Response(body=body[0], content_type="application/json")

    return handler


class _Refusal(asyncio.Protocol):
    """A connection beyond :attr:`Limits.connections`: a 503, then closed."""

    BODY = json.dumps({"message": "Too many connections to the Net API; try again later"})
    ANSWER = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{BODY}"
    ).encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.ANSWER)
        transport.close()


class _Runner(web.AppRunner):
    """An :class:`~aiohttp.web.AppRunner` whose sites refuse connections beyond a limit."""

    def __init__(self, app: web.Application, max_connections: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._max_connections = max_connections

    @property
    def server(self) -> Any:  # the protocol factory the sites listen with
        inner = super().server
        if inner is None:
            return None
        refused = self.app[NETAPI].refused

        def factory() -> asyncio.Protocol:
            if len(inner.connections) >= self._max_connections:
                refused["connections_limit"] += 1
                return _Refusal()
            return inner()

        return factory


async def serve(
    backend: VpnBackend,
    store: Store,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    shutdown_timeout: float = 10.0,
    **options: Any,
) -> web.AppRunner:
    """Start the Net API on ``host:port`` (0: any free port); return the runner.

    The bound address is ``runner.addresses[0]``; ``await runner.cleanup()`` stops the
    server (closing the gate's connections first). ``options`` go to :func:`create_app`.
    """
    app = create_app(backend, store, **options)
    limits = app[NETAPI].limits
    runner = _Runner(
        app,
        limits.connections,
        access_log_class=AccessLogger,
        access_log=ACCESS_LOG,
        shutdown_timeout=shutdown_timeout,
        # aiohttp closes a connection that has not sent a whole request head this long
        # after it opened or after its last answer: the slow-loris bound.
        keepalive_timeout=limits.request_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
