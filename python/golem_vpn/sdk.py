"""The requestor's high-level network: yapapi's ``Network`` on the Net API, with fewer surprises.

This is the top of the requestor's stack: it drives a Net API (:class:`~golem_vpn.netapi.client.
Client`, talking to a golem-vpn daemon or to yagna) and keeps the local picture it needs to hand
out addresses and build DEPLOY arguments (:mod:`golem_vpn.model`)::

    async with Client() as client:
        async with Network.create(client, "192.168.0.0/24") as net:   # removed on exit
            node = await net.add_node(provider_id)                     # 192.168.0.2
            deploy = {"deploy": net.deploy_args(node)}                 # send to its ExeUnit
            reader, writer = await net.connect(node, 22)               # through the gate

It behaves as yapapi's ``Network`` (an ``asyncio.Lock`` around membership changes, the owner
registered through ``/addresses``, ``refresh_nodes()`` after providers start, a 404 on removal
only logged) and differs where yapapi is weak:

- **Addresses are reused**: an automatic address is the lowest free host, so a removed node's
  address goes to the next node (yapapi never reuses one, its #614).
- **DEPLOY carries the gateway** (golem-js does, yapapi does not).
- **``websocket_uri`` keeps TLS**: ``https`` becomes ``wss`` (yapapi always says ``ws``).
- **``connect(node, port)``** gives asyncio streams through the requestor's gate, as
  ``asyncio.open_connection`` would.
- Bad input is refused before any request: malformed or foreign addresses, reserved addresses
  (network, broadcast), taken addresses, malformed node ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Generator, Mapping
from ipaddress import IPv4Network
from types import MappingProxyType, TracebackType
from typing import Any

from golem_vpn.errors import (
    AddressOutOfRange,
    AddressTaken,
    GolemVpnError,
    NetworkNotFound,
    NodeNotFound,
)
from golem_vpn.model import (
    AddressPool,
    DeployNetwork,
    IPAddress,
    IPNetwork,
    Node,
    check_host,
    parse_ip,
    parse_network,
    parse_node_id,
)
from golem_vpn.netapi.client import WS_CHUNK, Client, NetworkInfo

__all__ = ["Network", "NetworkCreation", "Node"]

log = logging.getLogger(__name__)

_STREAM_LIMIT = 2**16


class NetworkCreation:
    """What :meth:`Network.create` returns: await it, or use it as an async context manager.

    ``await Network.create(...)`` gives the :class:`Network`; the caller removes it with
    :meth:`Network.remove`. ``async with Network.create(...) as net:`` removes the network when
    the block exits, also when it raises (or is cancelled). Nothing is sent before either.
    """

    def __init__(self, client: Client, ip: str, **options: Any) -> None:
        self._client = client
        self._ip = ip
        self._options = options
        self._network: Network | None = None

    def __await__(self) -> Generator[Any, None, Network]:
        return Network._create(self._client, self._ip, **self._options).__await__()

    async def __aenter__(self) -> Network:
        self._network = await Network._create(self._client, self._ip, **self._options)
        return self._network

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._network is not None:
            await self._network.remove()


class Network:
    """A virtual network this requestor created through the Net API.

    Make one with :meth:`create`. The object keeps the members and their addresses; change them
    only through it (it holds a lock around each change, as yapapi does), or call
    :meth:`refresh_nodes` to push its view to the server again.
    """

    def __init__(
        self,
        client: Client,
        info: NetworkInfo,
        pool: AddressPool,
        *,
        owner_id: str,
        owner_ips: tuple[IPAddress, ...],
        gateway: IPAddress,
    ) -> None:
        """Wraps a network the server already made; use :meth:`create` instead."""
        self._client = client
        self._info = info
        self._pool = pool
        self._owner = Node(owner_id, owner_ips[-1])
        self._owner_ips = owner_ips
        self._gateway = gateway
        self._nodes: dict[str, Node] = {}
        self._lock = asyncio.Lock()
        self._removed = False

    @classmethod
    def create(
        cls,
        client: Client,
        ip: str,
        *,
        owner_id: str | None = None,
        owner_ip: IPAddress | str | None = None,
        mask: str | None = None,
        gateway: IPAddress | str | None = None,
    ) -> NetworkCreation:
        """Creates a network: ``POST /net``, then ``POST /addresses`` for a non-default owner IP.

        Use as ``net = await Network.create(...)`` or ``async with Network.create(...) as net:``
        (removed on exit); see :class:`NetworkCreation`.

        Args:
            client: The Net API client.
            ip: The network, as an address with ``mask`` or in CIDR form (``"10.0.0.0/24"``);
                see :func:`golem_vpn.model.parse_network` (IPv4 defaults to /24, IPv6 to /64).
            owner_id: The requestor's node id; the daemon's (``GET /net-api/v2/net/status``)
                by default.
            owner_ip: The requestor's address in the network; the first host by default. The
                server gives the requestor the first host anyway, so another ``owner_ip`` is
                an extra address and the first host stays taken too.
            mask: A netmask or prefix length, if ``ip`` has no prefix.
            gateway: The gateway announced in DEPLOY; the server's choice (the first host) by
                default.

        Raises:
            AddressError, AddressOutOfRange, AddressReserved: bad ``ip``, ``mask``,
                ``owner_ip`` or ``gateway`` (nothing is sent).
            InvalidNodeId: bad ``owner_id``.
            NetApiError, Forbidden, NetApiUnavailable: the server's answer (see
                :mod:`golem_vpn.netapi.client`).
        """
        return NetworkCreation(
            client, ip, owner_id=owner_id, owner_ip=owner_ip, mask=mask, gateway=gateway
        )

    @classmethod
    async def _create(
        cls,
        client: Client,
        ip: str,
        *,
        owner_id: str | None,
        owner_ip: IPAddress | str | None,
        mask: str | None,
        gateway: IPAddress | str | None,
    ) -> Network:
        network = parse_network(ip, mask)
        pool = AddressPool(network)
        first = pool.allocate()  # the server's address for the requestor
        owner_ips: tuple[IPAddress, ...] = (first,)
        if owner_ip is not None and check_host(network, owner_ip) != first:
            owner_ips = (first, pool.allocate(owner_ip))
        gateway_ip = None if gateway is None else _in_network(network, gateway)
        owner = parse_node_id(owner_id if owner_id is not None else (await client.status()).node_id)

        if isinstance(network, IPv4Network):  # yapapi's shape
            info = await client.create_network(
                str(network.network_address), str(network.netmask), _str(gateway_ip)
            )
        else:  # yagna makes a bare IPv6 address a /128: send the prefix
            info = await client.create_network(str(network), None, _str(gateway_ip))
        try:
            _check_answer(info, network)
            if info.gateway is not None and gateway_ip is None:
                gateway_ip = _in_network(network, info.gateway)
            if len(owner_ips) > 1:
                await client.add_address(info.id, str(owner_ips[1]))
        except BaseException:
            await _remove_quietly(client, info.id)
            raise
        net = cls(
            client, info, pool, owner_id=owner, owner_ips=owner_ips, gateway=gateway_ip or first
        )
        log.debug("created %r", net)
        return net

    # -- what it is ---------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The Net API client the network is driven through."""
        return self._client

    @property
    def network_id(self) -> str:
        """The id the server gave the network."""
        return self._info.id

    @property
    def network(self) -> IPNetwork:
        """The address range."""
        return self._pool.network

    @property
    def network_address(self) -> IPAddress:
        """The network address (``192.168.0.0``)."""
        return self._pool.network.network_address

    @property
    def netmask(self) -> IPAddress:
        """The netmask (``255.255.255.0``)."""
        return self._pool.network.netmask

    @property
    def gateway(self) -> IPAddress:
        """The gateway given in DEPLOY."""
        return self._gateway

    @property
    def owner_id(self) -> str:
        """The requestor's node id."""
        return self._owner.id

    @property
    def owner_ip(self) -> IPAddress:
        """The requestor's address (``owner_ip`` of :meth:`create`, else the first host)."""
        return self._owner.ip

    @property
    def nodes(self) -> Mapping[str, Node]:
        """The provider nodes by node id, the owner excluded (a read-only live view)."""
        return MappingProxyType(self._nodes)

    @property
    def removed(self) -> bool:
        """Whether :meth:`remove` has run."""
        return self._removed

    def nodes_dict(self) -> dict[str, str]:
        """``{ip: node_id}`` of every member, the owner's addresses included (DEPLOY's shape)."""
        holders = {ip: self._owner.id for ip in self._owner_ips}
        holders.update((node.ip, node.id) for node in self._nodes.values())
        return {str(ip): node_id for ip, node_id in sorted(holders.items())}

    def __repr__(self) -> str:
        state = " removed" if self._removed else ""
        return (
            f"<Network {self._info.id} {self.network} owner={self._owner.ip} "
            f"nodes={len(self._nodes)}{state}>"
        )

    # -- membership ---------------------------------------------------------------------------

    async def add_node(self, node_id: str, ip: IPAddress | str | None = None) -> Node:
        """Adds a provider node: ``POST /net/{id}/nodes``.

        Adding a node again with its own address (or ``ip`` None) returns it unchanged.

        Args:
            node_id: The provider's node id.
            ip: Its address; by default the lowest free host, so removed nodes' addresses are
                reused.

        Raises:
            InvalidNodeId: ``node_id`` is malformed.
            AddressError, AddressOutOfRange, AddressReserved: ``ip`` cannot name a node here.
            AddressTaken: ``ip`` is held by another member (or the server says so), or the node
                already holds another address (or is the owner).
            AddressesExhausted: no free host is left (``"No more addresses available ..."``).
            NetworkNotFound: the network was removed.
        """
        node_id = parse_node_id(node_id)
        async with self._lock:
            self._check_live()
            addr = None if ip is None else check_host(self.network, ip)
            if node_id == self._owner.id:
                raise AddressTaken(
                    f"node {node_id} owns network {self.network_id} (at {self._owner.ip}); "
                    "it cannot be added as a node"
                )
            current = self._nodes.get(node_id)
            if current is not None:
                if addr is None or addr == current.ip:
                    return current
                raise AddressTaken(
                    f"node {node_id} already holds {current.ip} in network {self.network_id}; "
                    "remove it before giving it another address"
                )
            if addr is not None and (holder := self._holder(addr)) is not None:
                raise AddressTaken(
                    f"'{addr}' is already held by node {holder} in network {self.network_id}"
                )
            addr = self._pool.allocate(addr)
            try:
                await self._client.add_node(self.network_id, node_id, str(addr))
            except BaseException:
                self._pool.release(addr)
                raise
            node = Node(node_id, addr)
            self._nodes[node_id] = node
            log.debug("network %s: added %s at %s", self.network_id, node_id, addr)
            return node

    async def remove_node(self, node: Node | str) -> None:
        """Removes a provider node (``DELETE /net/{id}/nodes/{nodeId}``); frees its address.

        Raises:
            NodeNotFound: the node is not a member (the owner is not a node either).
            NetworkNotFound: the network was removed.
        """
        async with self._lock:
            self._check_live()
            found = self._nodes.get(self._node_id(node))
            if found is None:
                raise NodeNotFound(f"node {self._node_id(node)} is not in {self!r}")
            await self._client.remove_node(self.network_id, found.id)
            del self._nodes[found.id]
            self._pool.release(found.ip)
            log.debug("network %s: removed %s", self.network_id, found.id)

    async def refresh_nodes(self) -> None:
        """Adds every node again, so providers that missed an update learn of all the others.

        yapapi calls this once providers run (its #664); a 409 is only logged, as there.
        """
        async with self._lock:
            self._check_live()
            for node in list(self._nodes.values()):
                try:
                    await self._client.add_node(self.network_id, node.id, str(node.ip))
                except AddressTaken as exc:
                    log.warning("network %s: refreshing %s: %s", self.network_id, node.id, exc)

    async def remove(self) -> None:
        """Removes the network (``DELETE /net/{id}``); does nothing the second time.

        A 404 (already gone) is only logged, as yapapi does; other errors propagate and the
        network stays usable, so the call can be retried.
        """
        async with self._lock:
            if self._removed:
                return
            try:
                await self._client.remove_network(self.network_id)
            except NetworkNotFound as exc:
                log.warning("network %s was already gone: %s", self.network_id, exc)
            self._removed = True
            log.debug("removed network %s", self.network_id)

    async def __aenter__(self) -> Network:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.remove()

    # -- using it -----------------------------------------------------------------------------

    def deploy_args(self, node: Node | str) -> dict[str, Any]:
        """``{"net": [...]}`` to merge into the DEPLOY command sent to ``node``'s ExeUnit.

        The one entry is yagna's DEPLOY ``Network``: ``id``, ``ip`` (network address),
        ``mask``, ``gateway``, ``nodeIp`` (the node's address) and ``nodes`` (``{ip: node_id}``
        of every member, the owner included).

        Raises:
            NodeNotFound: ``node`` is not a member.
        """
        member = self._member(node)
        entry = DeployNetwork(
            self.network_id,
            self.network,
            self._gateway,
            member.ip,
            {parse_ip(ip): node_id for ip, node_id in self.nodes_dict().items()},
        )
        return {"net": [entry.to_json()]}

    def websocket_uri(self, node: Node | str, port: int) -> str:
        """The gate's URL for a TCP connection to ``port`` on ``node`` (``ws://``/``wss://``).

        Connecting needs the app key as ``Authorization: Bearer <key>``.

        Raises:
            NodeNotFound: ``node`` is not a member.
        """
        return self._client.websocket_url(self.network_id, str(self._member(node).ip), port)

    async def connect(
        self,
        node: Node | str,
        port: int,
        *,
        limit: int = _STREAM_LIMIT,
        chunk_size: int = WS_CHUNK,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Opens a TCP stream to ``port`` on ``node`` through the gate (like ``open_connection``).

        ``write()`` then ``await drain()``; ``read()`` returns ``b""`` once the far end closed;
        ``close()`` then ``await wait_closed()``. The gate has no half-close: ``write_eof()``
        is not supported. See :class:`golem_vpn.netapi.client.WebSocketTransport`.

        Args:
            node: A member (the :class:`Node` from :meth:`add_node`, or its node id).
            port: The port on the node.
            limit: The reader's buffer limit, as in asyncio (the gate's backpressure bound).
            chunk_size: At most this many bytes per WebSocket message.

        Raises:
            NodeNotFound: ``node`` is not a member.
            NetworkNotFound: the network was removed.
            ConnectTimeout: nothing answered at ``node:port`` (the gate's 504).
        """
        self._check_live()
        member = self._member(node)
        return await self._client.open_connection(
            self.network_id, str(member.ip), port, limit=limit, chunk_size=chunk_size
        )

    # -- helpers ------------------------------------------------------------------------------

    def _check_live(self) -> None:
        if self._removed:
            raise NetworkNotFound(f"network {self.network_id} was removed")

    @staticmethod
    def _node_id(node: Node | str) -> str:
        return node.id if isinstance(node, Node) else parse_node_id(node)

    def _member(self, node: Node | str) -> Node:
        node_id = self._node_id(node)
        if node_id == self._owner.id:
            return self._owner
        found = self._nodes.get(node_id)
        if found is None:
            raise NodeNotFound(f"node {node_id} is not in {self!r}")
        return found

    def _holder(self, addr: IPAddress) -> str | None:
        if addr in self._owner_ips:
            return self._owner.id
        for node in self._nodes.values():
            if node.ip == addr:
                return node.id
        return None


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _in_network(network: IPNetwork, ip: IPAddress | str) -> IPAddress:
    addr = parse_ip(ip)
    if addr.version != network.version or addr not in network:
        raise AddressOutOfRange(f"'{addr}' is not in network {network}")
    return addr


def _check_answer(info: NetworkInfo, network: IPNetwork) -> None:
    """Warns when the server's network differs from the one asked for."""
    try:
        theirs = info.network
    except GolemVpnError as exc:
        log.warning("network %s: cannot read the server's address %r: %s", info.id, info.ip, exc)
        return
    if theirs != network:
        log.warning("network %s: asked for %s, the server made %s", info.id, network, theirs)


async def _remove_quietly(client: Client, network_id: str) -> None:
    try:
        await client.remove_network(network_id)
    except GolemVpnError as exc:
        log.warning("network %s: cannot remove it after a failed create: %s", network_id, exc)
