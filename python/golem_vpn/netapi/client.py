"""An async client of the Net API: yagna's REST API for virtual networks, and its WebSocket gate.

This is the requestor side of :mod:`golem_vpn.netapi`: it speaks the wire contract of
``ya-client``'s ``specs/net-api.yaml`` (camelCase JSON under ``/net-api/v1``, app-key auth by
``Authorization: Bearer``), so it works against golem-vpn's daemon and against yagna alike.
:mod:`golem_vpn.sdk` builds the high-level ``Network`` on it.

Where the client finds the API (each setting: argument, then environment, then default; an
empty environment variable counts as unset):

================ ================================= =========================================
setting          environment                       default
================ ================================= =========================================
Net API base URL ``YAGNA_NET_URL``, else           ``http://127.0.0.1:7465/net-api/v1``
(``url``)        ``YAGNA_API_URL`` + ``/net-api/v1``
app key          ``YAGNA_APPKEY``                  none (requests go without ``Authorization``)
(``app_key``)
================ ================================= =========================================

``YAGNA_NET_URL`` is read as ``ya-client`` reads it: the full base URL of the VPN API, path
included (``http://127.0.0.1:7465/net-api/v1`` or ``.../net-api/v2/vpn``); request paths
(``net``, ``net/{id}/nodes``) are joined to it. ``YAGNA_API_URL`` is the daemon's API root
(``http://127.0.0.1:7465``), to which ``/net-api/v1`` is added, as yapapi and golem-js do. The
``url`` argument is read like ``YAGNA_NET_URL``, with one convenience: a URL without a path
(``http://127.0.0.1:7465``) is an API root and gets ``/net-api/v1``. A trailing ``/`` is
ignored. ``status()`` lives outside the VPN API, at ``<root>/net-api/v2/net/status``; the root
is the base with its ``/net-api/v1`` or ``/net-api/v2/vpn`` suffix removed, or the base's
``scheme://host:port`` when it has neither.

The app key goes only into the ``Authorization`` header, never into a URL, a log line, an error
message or ``repr(client)``.

Errors are golem-vpn's (see :mod:`golem_vpn.errors`); each message names the method, the URL
and the server's ``message``:

====== =====================================================================
status raises
====== =====================================================================
400    :class:`BadRequest` (also a ``ValueError``)
401    :class:`~golem_vpn.errors.Forbidden` ("401 Unauthorized": no or a wrong app key)
403    :class:`~golem_vpn.errors.Forbidden` ("403 Forbidden": another identity's network)
404    :class:`~golem_vpn.errors.NetworkNotFound`
409    :class:`~golem_vpn.errors.AddressTaken`
504    :class:`~golem_vpn.errors.ConnectTimeout` (also a ``TimeoutError``)
502    on the gate only: :class:`~golem_vpn.errors.ConnectionRefused` (golem-vpn's gate
       answers 502 when the payload refuses; yagna answers 504 for everything)
other  :class:`NetApiError` with ``status`` set and an excerpt of the body
none   :class:`NetApiUnavailable` (also a ``ConnectionError``): the server cannot be reached,
       or did not answer within ``timeout``
====== =====================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from golem_vpn.config import API_URL_ENV, APPKEY_ENV, DEFAULT_API_URL, NET_API_PATH, NET_URL_ENV
from golem_vpn.errors import (
    AddressTaken,
    BadRequest,
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    Forbidden,
    NetApiError,
    NetApiUnavailable,
    NetworkNotFound,
)
from golem_vpn.flow import WriteFlowControl
from golem_vpn.model import IPNetwork, parse_network
from golem_vpn.netapi import http1

if TYPE_CHECKING:
    # aiohttp is imported where it is used (the gate, a caller's session): it takes longer to
    # import than a whole ``golem-vpn net list`` may take.
    import aiohttp

__all__ = [
    "API_URL_ENV",
    "APPKEY_ENV",
    "DEFAULT_API_URL",
    "NET_API_PATH",
    "NET_URL_ENV",
    "AddressInfo",
    "BadRequest",
    "Client",
    "ConnectionInfo",
    "NetApiError",
    "NetApiUnavailable",
    "NetStatus",
    "NetworkInfo",
    "NodeInfo",
    "WebSocketTransport",
]

log = logging.getLogger(__name__)

_V2_VPN_PATH = "/net-api/v2/vpn"
_STATUS_PATH = "/net-api/v2/net/status"
DEFAULT_TIMEOUT = 30.0
#: Bytes per WebSocket message the gate client sends: yapapi's chunk, and the default frame
#: limit of yagna's actix WebSocket server.
WS_CHUNK = 2**16
_STREAM_LIMIT = 2**16
#: Close codes that end the stream cleanly (EOF): none given (yagna), normal, going away.
_CLEAN_CLOSE = frozenset({None, 0, 1000, 1001, 1005})
#: Seconds a WebSocket close may take (the server's answer, while data still arrives).
CLOSE_TIMEOUT = 5.0
_EXCERPT = 200


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _field(obj: Mapping[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"field {key!r}: expected {kind.__name__}, got {value!r:.60}")
    return value


@dataclass(frozen=True)
class NetworkInfo:
    """A network as the Net API describes it (``Network`` in the spec).

    Attributes:
        id: The network id (yagna: 32 lowercase hex digits).
        ip: The address as the server gives it; yagna answers ``"192.168.0.0/24"`` (with the
            prefix) to a ``POST /net``.
        mask: The dotted netmask (optional in v2).
        gateway: The gateway address (optional in v2).
    """

    id: str
    ip: str
    mask: str | None = None
    gateway: str | None = None

    @property
    def network(self) -> IPNetwork:
        """The address range, from ``ip`` and ``mask`` as yagna's ``to_net`` reads them."""
        return parse_network(self.ip, None if "/" in self.ip else self.mask)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NetworkInfo:
        """Reads the wire form; unknown keys are ignored. Raises ValueError if malformed."""
        return cls(
            _field(obj, "id", str),
            _field(obj, "ip", str),
            _field(obj, "mask", str, optional=True),
            _field(obj, "gateway", str, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        """The wire form (``mask`` and ``gateway`` left out when None)."""
        obj: dict[str, Any] = {"id": self.id, "ip": self.ip}
        if self.mask is not None:
            obj["mask"] = self.mask
        if self.gateway is not None:
            obj["gateway"] = self.gateway
        return obj


@dataclass(frozen=True)
class NodeInfo:
    """A node of a network (``Node`` in the spec): a Golem node id and its virtual IP."""

    id: str
    ip: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NodeInfo:
        """Reads the wire form. Raises ValueError if malformed."""
        return cls(_field(obj, "id", str), _field(obj, "ip", str))

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"id": self.id, "ip": self.ip}


@dataclass(frozen=True)
class AddressInfo:
    """An address of the requestor in a network (``Address``); yagna adds ``/prefix``."""

    ip: str

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AddressInfo:
        """Reads the wire form. Raises ValueError if malformed."""
        return cls(_field(obj, "ip", str))

    def to_json(self) -> dict[str, Any]:
        """The wire form."""
        return {"ip": self.ip}


@dataclass(frozen=True)
class ConnectionInfo:
    """A TCP connection of the requestor's gate (``Connection``; ``protocol`` is 6 for TCP)."""

    protocol: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ConnectionInfo:
        """Reads the wire form (camelCase keys). Raises ValueError if malformed."""
        return cls(
            _field(obj, "protocol", int),
            _field(obj, "localIp", str),
            _field(obj, "localPort", int),
            _field(obj, "remoteIp", str),
            _field(obj, "remotePort", int),
        )

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase keys)."""
        return {_camel(name): getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class NetStatus:
    """The node's network status (``Status`` of ``GET /net-api/v2/net/status``)."""

    node_id: str
    sessions: int
    listen_ip: str | None = None
    public_ip: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NetStatus:
        """Reads the wire form (camelCase keys). Raises ValueError if malformed."""
        return cls(
            _field(obj, "nodeId", str),
            _field(obj, "sessions", int),
            _field(obj, "listenIp", str, optional=True),
            _field(obj, "publicIp", str, optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase keys; absent optional fields left out)."""
        obj: dict[str, Any] = {"nodeId": self.node_id, "sessions": self.sessions}
        if self.listen_ip is not None:
            obj["listenIp"] = self.listen_ip
        if self.public_ip is not None:
            obj["publicIp"] = self.public_ip
        return obj


_T = TypeVar("_T", NetworkInfo, NodeInfo, AddressInfo, ConnectionInfo, NetStatus)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _resolve_base(url: str | None) -> str:
    """The Net API base URL, from ``url``, the environment or the default (see the module doc)."""
    if url:
        parts = urlsplit(url)
        if parts.path in ("", "/"):
            return url.rstrip("/") + NET_API_PATH
        return url.rstrip("/")
    if net_url := _env(NET_URL_ENV):
        return net_url.rstrip("/")
    return (_env(API_URL_ENV) or DEFAULT_API_URL).rstrip("/") + NET_API_PATH


def _api_root(base: str) -> str:
    for suffix in (NET_API_PATH, _V2_VPN_PATH):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _seg(value: object) -> str:
    """One path segment, percent-encoded (``:`` kept, for IPv6 addresses)."""
    return quote(str(value), safe=":")


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadRequest(f"port must be an integer from 1 to 65535, got {port!r}")
    return port


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


class Client:
    """An async client of one Net API (a golem-vpn daemon or yagna).

    Use it as an async context manager, or call :meth:`close` when done::

        async with Client() as client:          # YAGNA_APPKEY, YAGNA_NET_URL / YAGNA_API_URL
            info = await client.create_network("192.168.0.0/24")
            await client.add_node(info.id, "0x" + "ab" * 20, "192.168.0.2")

    Args:
        url: The Net API base URL (see the module doc for how it and the environment are read).
        app_key: The app key; ``$YAGNA_APPKEY`` by default.
        session: An aiohttp session to use for every call; the caller keeps it (the client
            does not close it). Without one, REST calls go over the client's own keep-alive
            HTTP/1.1 connections (:mod:`golem_vpn.netapi.http1`, which loads much faster than
            aiohttp), and the gate's WebSockets over an aiohttp session made on first use;
            :meth:`close` closes both.
        timeout: Seconds an API call (or a gate's handshake) may take; None waits forever.
    """

    def __init__(
        self,
        url: str | None = None,
        app_key: str | None = None,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self._base = _resolve_base(url)
        scheme = urlsplit(self._base).scheme
        if scheme not in ("http", "https"):
            raise BadRequest(f"the Net API URL must be http or https, got {self._base!r}")
        self._root = _api_root(self._base)
        self._app_key = app_key or _env(APPKEY_ENV)
        self._session = session
        self._own_session = session is None
        self._pool: http1.ConnectionPool | None = None
        self._timeout = timeout

    @property
    def url(self) -> str:
        """The Net API base URL (no trailing ``/``)."""
        return self._base

    @property
    def has_app_key(self) -> bool:
        """Whether requests carry an app key (the key itself is not exposed)."""
        return self._app_key is not None

    def __repr__(self) -> str:
        key = "set" if self._app_key else "none"
        return f"Client(url={self._base!r}, app_key=<{key}>)"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the client's own connections and session (a session given to the
        constructor stays open)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._own_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _get_session(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            # Per-call totals are passed with each request; a WebSocket must not inherit one.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
            )
        return self._session

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._app_key}"} if self._app_key else {}

    # -- HTTP ---------------------------------------------------------------------------------

    async def _call(self, method: str, url: str, body: Any = None) -> Any:
        """Sends one request and returns the decoded JSON answer (None for an empty body)."""
        log.debug("%s %s", method, url)
        if self._session is not None:
            status, reason, text = await self._exchange_aiohttp(self._session, method, url, body)
        else:
            status, reason, text = await self._exchange(method, url, body)
        if status >= 400:
            self._raise_for(method, url, status, reason, text)
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise NetApiError(
                f"{method} {url}: the answer is not JSON: {_excerpt(text)!r}",
                status=status,
                message=_excerpt(text),
            ) from None

    async def _exchange(self, method: str, url: str, body: Any) -> tuple[int, str, str]:
        """One request over the client's own connections: (status, reason, body text)."""
        if self._pool is None:
            self._pool = http1.ConnectionPool()
        headers = {"Accept": "application/json", **self._headers()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._pool.request(method, url, headers=headers, body=data)
        except OSError as exc:  # TimeoutError included
            raise self._unavailable(method, url, exc) from exc
        except http1.ProtocolError as exc:
            raise NetApiError(f"{method} {url}: {exc}") from None
        return answer.status, answer.reason, answer.body.decode("utf-8", "replace")

    async def _exchange_aiohttp(
        self, session: aiohttp.ClientSession, method: str, url: str, body: Any
    ) -> tuple[int, str, str]:
        """One request over a caller's aiohttp session: (status, reason, body text)."""
        import aiohttp
        from yarl import URL

        kwargs: dict[str, Any] = {
            "headers": self._headers(),
            "timeout": aiohttp.ClientTimeout(total=self._timeout),
        }
        if body is not None:
            kwargs["json"] = body
        try:
            async with session.request(method, URL(url, encoded=True), **kwargs) as resp:
                return resp.status, resp.reason or "", await resp.text(errors="replace")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unavailable(method, url, exc) from exc

    def _unavailable(self, method: str, url: str, exc: BaseException) -> NetApiUnavailable:
        if isinstance(exc, TimeoutError):
            why = f"no answer within {self._timeout:g} s"
        else:
            why = str(exc) or type(exc).__name__
        return NetApiUnavailable(
            f"cannot reach the Net API at {self._base} ({method} {url}: {why}); is the daemon "
            f"running? (set {NET_URL_ENV} or {API_URL_ENV} to point elsewhere)",
            message=why,
        )

    def _raise_for(self, method: str, url: str, status: int, reason: str, text: str) -> NoReturn:
        """Raises the error for an HTTP error answer (see the module doc's table)."""
        message = ""
        try:
            obj = json.loads(text) if text.strip() else None
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("message"), str):
            message = obj["message"]
        elif text.strip():
            message = _excerpt(text)
        what = f"{status} {reason}".strip()
        detail = f": {message}" if message else ""
        where = f"{method} {url}"
        if status == 401:
            hint = (
                f" (no app key was given: set {APPKEY_ENV} or pass app_key)"
                if not self._app_key
                else " (the app key was not accepted)"
            )
            raise Forbidden(f"{what} from {where}{detail}{hint}")
        if status == 403:
            raise Forbidden(
                f"{what} from {where}{detail} (the network belongs to another identity)"
            )
        if status == 404:
            raise NetworkNotFound(f"{what} from {where}{detail}")
        if status == 409:
            taken = AddressTaken(f"{what} from {where}{detail}")
            taken.message = message  # the server's words, for callers that show them
            raise taken
        if status == 504:
            raise ConnectTimeout(f"{what} from {where}{detail or ': connection timed out'}")
        if status == 400:
            raise BadRequest(f"{what} from {where}{detail}", status=status, message=message)
        raise NetApiError(f"{what} from {where}{detail}", status=status, message=message)

    def _url(self, *segments: object) -> str:
        return "/".join([self._base, *(_seg(s) for s in segments)])

    @staticmethod
    def _parse(kind: type[_T], obj: object, where: str) -> _T:
        try:
            if not isinstance(obj, dict):
                raise ValueError(f"expected an object, got {obj!r:.60}")
            return kind.from_json(obj)
        except ValueError as exc:
            raise NetApiError(f"{where}: malformed answer: {exc}") from None

    def _parse_list(self, kind: type[_T], obj: object, where: str) -> list[_T]:
        if not isinstance(obj, list):
            raise NetApiError(f"{where}: malformed answer: expected a list, got {obj!r:.60}")
        return [self._parse(kind, item, where) for item in obj]

    # -- networks -----------------------------------------------------------------------------

    async def list_networks(self) -> list[NetworkInfo]:
        """``GET /net``: the networks of this app key's identity."""
        url = self._url("net")
        return self._parse_list(NetworkInfo, await self._call("GET", url), url)

    async def create_network(
        self, ip: str, mask: str | None = None, gateway: str | None = None
    ) -> NetworkInfo:
        """``POST /net``: creates a network; the requestor gets its first host address.

        Args:
            ip: The network address, optionally in CIDR form (``"192.168.0.0/24"``).
            mask: A dotted netmask; left out of the request when None.
            gateway: The gateway; the server picks the first host when None.

        Returns:
            The network as the server answers it (yagna puts ``/prefix`` in ``ip``).
        """
        body: dict[str, Any] = {"ip": str(ip)}
        if mask is not None:
            body["mask"] = str(mask)
        if gateway is not None:
            body["gateway"] = str(gateway)
        url = self._url("net")
        return self._parse(NetworkInfo, await self._call("POST", url, body), url)

    async def get_network(self, network_id: str) -> NetworkInfo:
        """``GET /net/{id}``."""
        url = self._url("net", network_id)
        return self._parse(NetworkInfo, await self._call("GET", url), url)

    async def remove_network(self, network_id: str) -> None:
        """``DELETE /net/{id}``: removes the network and everything in it."""
        await self._call("DELETE", self._url("net", network_id))

    # -- addresses ----------------------------------------------------------------------------

    async def list_addresses(self, network_id: str) -> list[AddressInfo]:
        """``GET /net/{id}/addresses``: the requestor's addresses in the network."""
        url = self._url("net", network_id, "addresses")
        return self._parse_list(AddressInfo, await self._call("GET", url), url)

    async def add_address(self, network_id: str, ip: str) -> None:
        """``POST /net/{id}/addresses``: gives the requestor one more address."""
        await self._call("POST", self._url("net", network_id, "addresses"), {"ip": str(ip)})

    # -- nodes --------------------------------------------------------------------------------

    async def list_nodes(self, network_id: str) -> list[NodeInfo]:
        """``GET /net/{id}/nodes``."""
        url = self._url("net", network_id, "nodes")
        return self._parse_list(NodeInfo, await self._call("GET", url), url)

    async def add_node(self, network_id: str, node_id: str, ip: str) -> None:
        """``POST /net/{id}/nodes``: adds (or, with the same IP, refreshes) a node."""
        body = {"id": str(node_id), "ip": str(ip)}
        await self._call("POST", self._url("net", network_id, "nodes"), body)

    async def set_node_ip(self, network_id: str, node_id: str, ip: str) -> NodeInfo:
        """``PATCH /net/{id}/nodes/{nodeId}`` with ``{"ip"}`` (golem-vpn's, not yagna's):
        moves a node to another address; every node follows at once, sessions kept."""
        url = self._url("net", network_id, "nodes", node_id)
        return NodeInfo.from_json(await self._call("PATCH", url, {"ip": str(ip)}))

    async def remove_node(self, network_id: str, node_id: str) -> None:
        """``DELETE /net/{id}/nodes/{nodeId}`` (the spec's method; ya-client wrongly POSTs)."""
        await self._call("DELETE", self._url("net", network_id, "nodes", node_id))

    # -- connections and status ---------------------------------------------------------------

    async def list_connections(self, network_id: str) -> list[ConnectionInfo]:
        """``GET /net/{id}/tcp``: the gate's live TCP connections (not served by yagna)."""
        url = self._url("net", network_id, "tcp")
        return self._parse_list(ConnectionInfo, await self._call("GET", url), url)

    async def status(self) -> NetStatus:
        """``GET /net-api/v2/net/status``: this node's id and network sessions."""
        url = self._root + _STATUS_PATH
        return self._parse(NetStatus, await self._call("GET", url), url)

    # -- the WebSocket gate -------------------------------------------------------------------

    def websocket_url(self, network_id: str, ip: str, port: int) -> str:
        """The gate's URL for a TCP connection to ``ip:port`` in the network.

        ``http`` becomes ``ws`` and ``https`` becomes ``wss`` (yapapi forces ``ws``, which
        breaks TLS deployments); the base path is kept. The URL carries no app key: send it
        as ``Authorization: Bearer <key>`` (or add ``?authToken=`` yourself).
        """
        parts = urlsplit(self._base)
        scheme = {"http": "ws", "https": "wss"}[parts.scheme]
        path = "/".join(
            [
                parts.path.rstrip("/"),
                "net",
                _seg(network_id),
                "tcp",
                _seg(ip),
                str(_check_port(port)),
            ]
        )
        return urlunsplit((scheme, parts.netloc, path, "", ""))

    def raw_websocket_url(self, network_id: str, src: str, dst: str) -> str:
        """The raw gate's URL: Ethernet frames between the requestor's address ``src`` and
        the node at ``dst`` (yagna master's ``connect_raw``); as :meth:`websocket_url`."""
        parts = urlsplit(self._base)
        scheme = {"http": "ws", "https": "wss"}[parts.scheme]
        segments = ["net", _seg(network_id), "raw", "from", _seg(src), "to", _seg(dst)]
        path = "/".join([parts.path.rstrip("/"), *segments])
        return urlunsplit((scheme, parts.netloc, path, "", ""))

    async def connect_tcp(
        self, network_id: str, ip: str, port: int, *, max_msg_size: int = 4 * 1024 * 1024
    ) -> aiohttp.ClientWebSocketResponse:
        """Opens the gate: a WebSocket carrying one TCP stream to ``ip:port`` in the network.

        Binary messages carry raw stream bytes both ways; message boundaries mean nothing. The
        server pings every 5 s and closes a socket it hears nothing from for 10 s; aiohttp
        answers the pings while the socket is being read. Close the socket when done.

        Raises:
            ConnectTimeout: 504: nothing answered at ``ip:port`` within the server's 5 s (for
                instance, no node holds ``ip``), or no handshake within ``timeout``.
            ConnectionRefused: 502 (golem-vpn's gate): nothing listens at ``ip:port``.
            NetworkNotFound, Forbidden, BadRequest, NetApiError: the server refused the upgrade.
            NetApiUnavailable: the server cannot be reached.
        """
        url = self.websocket_url(network_id, ip, port)
        return await self._ws_connect(
            url, f"{ip}:{port} in network {network_id}", network_id, max_msg_size
        )

    async def connect_raw(
        self, network_id: str, src: str, dst: str, *, max_msg_size: int = 128 * 1024
    ) -> aiohttp.ClientWebSocketResponse:
        """Opens the raw gate: a WebSocket whose binary messages are Ethernet frames between
        the requestor's address ``src`` and the node at ``dst`` (see
        :mod:`golem_vpn.netapi.gate`). Close the socket when done.

        Raises:
            BadRequest: ``src`` is not the requestor's address, or no node holds ``dst``.
            NetworkNotFound, Forbidden, NetApiError: the server refused the upgrade.
            NetApiUnavailable: the server cannot be reached.
        """
        url = self.raw_websocket_url(network_id, src, dst)
        return await self._ws_connect(
            url, f"frames {src} -> {dst} in network {network_id}", network_id, max_msg_size
        )

    async def _ws_connect(
        self, url: str, target: str, network_id: str, max_msg_size: int
    ) -> aiohttp.ClientWebSocketResponse:
        """A gate's WebSocket handshake, its refusals raised as golem-vpn errors."""
        import aiohttp
        from yarl import URL

        session = self._get_session()
        log.debug("GET %s (WebSocket)", url)
        try:
            async with asyncio.timeout(self._timeout):
                return await session.ws_connect(
                    URL(url, encoded=True),
                    headers=self._headers(),
                    autoping=True,
                    max_msg_size=max_msg_size,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status < 400:
                raise NetApiError(
                    f"GET {url}: the server did not upgrade to a WebSocket "
                    f"({exc.status} {exc.message})",
                    status=exc.status,
                ) from None
            # aiohttp drops the body of a refused handshake: say what we tried instead.
            if exc.status == 502:  # golem-vpn's gate: the payload refused (yagna says 504)
                raise ConnectionRefused(f"GET {url}: 502: connection to {target} refused") from None
            fallback = {
                400: f"the gate refused {target}: no node holds that address in network "
                f"{network_id}, or it is not one of the network's",
                429: "too many gate connections are open (the daemon's --max-gates-per-key "
                "and --max-gates)",
                404: f"network {network_id} not found",
                504: f"connection to {target} timed out",
            }.get(exc.status)
            body = json.dumps({"message": fallback}) if fallback else ""
            self._raise_for("GET", url, exc.status, "", body)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
                raise ConnectTimeout(
                    f"GET {url}: no WebSocket handshake within {self._timeout:g} s"
                ) from None
            raise self._unavailable("GET", url, exc) from exc

    async def open_connection(
        self,
        network_id: str,
        ip: str,
        port: int,
        *,
        limit: int = _STREAM_LIMIT,
        chunk_size: int = WS_CHUNK,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Opens a TCP stream to ``ip:port`` through the gate, as ``asyncio.open_connection``.

        See :class:`WebSocketTransport` for EOF, close and backpressure semantics.

        Args:
            network_id: The network.
            ip: The destination's virtual IP.
            port: The destination port.
            limit: The reader's buffer limit, as in asyncio: the gate is read no further while
                the reader holds more than twice this.
            chunk_size: At most this many bytes per WebSocket message sent.

        Raises:
            See :meth:`connect_tcp`.
        """
        ws = await self.connect_tcp(network_id, ip, port)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport = WebSocketTransport(
            ws, protocol, peername=(str(ip), port), chunk_size=chunk_size
        )
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer


class WebSocketTransport(WriteFlowControl, asyncio.Transport):
    """An ``asyncio.Transport`` over a WebSocket that carries one byte stream (the TCP gate).

    With asyncio's ``StreamReader`` / ``StreamWriter`` on top it behaves as a TCP socket:

    - **Reads**: each binary (or text, as UTF-8) message is handed to the protocol. While the
      protocol has paused reading (the reader's buffer is over its limit) the WebSocket is not
      read: aiohttp's bounded queue fills, the TCP window to the server closes, and the server
      slows the far end. A gate that hears nothing for 10 s may close, so a reader paused that
      long while sending nothing can see the stream end.
    - **Writes**: ``write()`` queues bytes; a task sends them as binary messages of at most
      ``chunk_size`` bytes. ``drain()`` blocks while more than the high-water mark (256 KiB by
      default) waits to be sent.
    - **EOF**: a close from the server without a code or with 1000 or 1001 is EOF: ``read()``
      returns the buffered bytes, then ``b""``. The gate has no half-close, so the stream is
      then closed for writing too: writes are dropped and ``drain()`` raises
      ``ConnectionResetError``. ``can_write_eof()`` is False.
    - **Close**: ``close()`` sends the queued bytes, then a WebSocket close; ``wait_closed()``
      returns after the server answered it (bytes arriving meanwhile are dropped), or after
      :data:`CLOSE_TIMEOUT` seconds, when the connection is cut. ``abort()`` drops the queue
      and closes at once.
    - **Errors**: a WebSocket that fails (protocol error, lost connection) or that the server
      closes with an error code (golem-vpn's gate sends 1011 when the payload's connection was
      reset) raises :class:`~golem_vpn.errors.ConnectionReset` from reads and ``drain()``.

    Args:
        ws: An open WebSocket (from :meth:`Client.connect_tcp`); the transport owns it.
        protocol: Gets ``connection_made`` at once.
        peername: What ``get_extra_info("peername")`` answers: the target ``(ip, port)``.
        chunk_size: At most this many bytes per message sent.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        protocol: asyncio.BaseProtocol,
        *,
        peername: tuple[str, int] | None = None,
        chunk_size: int = WS_CHUNK,
    ) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size!r}")
        self._ws = ws
        self._protocol: asyncio.BaseProtocol = protocol
        self._loop = asyncio.get_running_loop()
        self._chunk = chunk_size
        self._extra: dict[str, Any] = {"peername": peername, "sockname": None, "websocket": ws}
        self._queue: deque[bytes] = deque()
        self._queued = 0  # bytes queued or being sent
        self._init_flow_control(max(256 * 1024, 4 * chunk_size))
        self._readable = asyncio.Event()
        self._readable.set()
        self._closing = False
        self._lost = False
        self._send_task: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[Any]] = set()
        protocol.connection_made(self)
        self._recv_task: asyncio.Task[None] | None = self._loop.create_task(self._receive())

    # -- asyncio.BaseTransport ----------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Sends the queued bytes, then closes the WebSocket; ``connection_lost(None)`` follows."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._close_task = self._loop.create_task(self._close())

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- asyncio.ReadTransport ----------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._readable.is_set() and not self._lost

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    # -- asyncio.WriteTransport ---------------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        return self._queued

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._lost or self._closing or not data:
            return
        self._queue.append(bytes(data))
        self._queued += len(data)
        if self._send_task is None:
            self._send_task = self._loop.create_task(self._send())
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        raise NotImplementedError("the WebSocket gate has no half-close; use close()")

    def can_write_eof(self) -> bool:
        return False

    def abort(self) -> None:
        """Drops the queued bytes and closes the WebSocket at once."""
        if self._lost:
            return
        self._closing = True
        self._finish(None)
        self._close_ws()

    # -- tasks --------------------------------------------------------------------------------

    async def _receive(self) -> None:
        import aiohttp

        ws = self._ws
        try:
            while not self._lost:
                await self._readable.wait()
                msg = await ws.receive()
                if self._lost:
                    return
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._protocol.data_received(msg.data)  # type: ignore[attr-defined]
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self._protocol.data_received(msg.data.encode())  # type: ignore[attr-defined]
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    self._fatal(f"the gate's WebSocket failed: {msg.data}")
                    return
                else:  # CLOSE, CLOSING, CLOSED: the stream ended
                    if self._closing:
                        return
                    code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else None
                    if code not in _CLEAN_CLOSE:
                        reason = f" ({msg.extra})" if msg.extra else ""
                        self._fatal(f"the gate closed the stream with code {code}{reason}")
                        return
                    self._protocol.eof_received()  # type: ignore[attr-defined]
                    self._finish(None)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fatal(f"the gate's WebSocket failed: {exc!r}")

    async def _send(self) -> None:
        import aiohttp

        ws = self._ws
        try:
            while self._queue and not self._lost:
                data = self._queue.popleft()
                view = memoryview(data)
                for start in range(0, len(view), self._chunk):
                    piece = view[start : start + self._chunk]
                    await ws.send_bytes(piece)  # type: ignore[arg-type]
                    self._queued -= len(piece)
                    self._maybe_resume_protocol()
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            if not self._lost and not ws.closed:
                self._fatal(f"cannot send to the gate: {exc}")
            elif not self._lost:
                self._finish(None)
        finally:
            self._send_task = None

    async def _close(self) -> None:
        if self._send_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._send_task)
        self._readable.set()  # a paused receiver must see the close
        await self._close_quietly()
        self._finish(None)

    async def _close_quietly(self) -> None:
        # aiohttp reads until the server's close answer; a server that keeps sending and
        # never answers would keep it reading forever.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self._ws.close()

    # -- helpers ------------------------------------------------------------------------------

    def _fatal(self, why: str) -> None:
        if self._lost:
            return
        self._finish(ConnectionReset(why))
        self._close_ws()

    def _close_ws(self) -> None:
        task = self._loop.create_task(self._close_quietly())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._queue.clear()
        self._queued = 0
        self._readable.set()
        current = asyncio.current_task()
        for task in (self._recv_task, self._send_task):
            if task is not None and task is not current and not task.done():
                task.cancel()
        self._loop.call_soon(self._protocol.connection_lost, exc)
