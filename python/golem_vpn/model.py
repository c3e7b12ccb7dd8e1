"""The model layer: networks, nodes, address allocation and the DEPLOY ``net`` config.

This module sits between the native router (``rust/router``) and the control plane (Net API,
SDK, daemon, ExeUnit). It holds plain data and the rules on it, and does no I/O: it parses node
ids and networks the way yagna does, decides which addresses may name a node (the same rule as
the Rust router's ``Cidr::reserved_reason``), hands out addresses, and reads and writes the
``{"net": [...]}`` part of an ExeUnit DEPLOY command.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, insort
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from types import MappingProxyType
from typing import Any, TypeAlias
from uuid import uuid4

from golem_vpn.errors import (
    AddressError,
    AddressesExhausted,
    AddressOutOfRange,
    AddressReserved,
    AddressTaken,
    DeployConfigError,
    Forbidden,
    InvalidNodeId,
    NodeNotFound,
)

__all__ = [
    "DEFAULT_IPV4_PREFIX",
    "DEFAULT_IPV6_PREFIX",
    "NETWORK_ID_RE",
    "NODE_ID_RE",
    "AddressPool",
    "DeployNetwork",
    "IPAddress",
    "IPNetwork",
    "Network",
    "Node",
    "check_host",
    "parse_deploy_net",
    "parse_ip",
    "parse_network",
    "parse_node_id",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

#: A Golem node id: ``0x`` and 40 hex digits of either case (the prefix itself is lowercase).
NODE_ID_RE = re.compile(r"0x[0-9a-fA-F]{40}")
#: A network id. yagna makes 32 lowercase hex digits; any such short token is accepted.
NETWORK_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
DEFAULT_IPV4_PREFIX = 24
#: yagna makes a bare IPv6 address a /128 network; a one-address VPN is useless, so we use /64.
DEFAULT_IPV6_PREFIX = 64

_PREFIX_RE = re.compile(r"[0-9]{1,3}")
_BITS = {4: 32, 6: 128}
# Addresses that never name a node, as (first, last, why); sorted, disjoint. Must match
# `wire::is_never_host` in the Rust crate.
_NEVER_HOST: dict[int, tuple[tuple[int, int, str], ...]] = {
    4: (
        (0, 0, "the unspecified address"),
        (0x7F00_0000, 0x7FFF_FFFF, "a loopback address"),
        (0xE000_0000, 0xEFFF_FFFF, "a multicast address"),
        (0xFFFF_FFFF, 0xFFFF_FFFF, "the limited broadcast address"),
    ),
    6: (
        (0, 0, "the unspecified address"),
        (1, 1, "the loopback address"),
        (0xFF << 120, (1 << 128) - 1, "a multicast address"),
    ),
}


def _show(value: object) -> str:
    """Return ``repr(value)`` cut to about 60 characters, for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_node_id(value: object) -> str:
    """Return ``value`` as a canonical (lowercase) Golem node id.

    Raises:
        InvalidNodeId: ``value`` is not a string of ``0x`` and exactly 40 hex digits.
    """
    if isinstance(value, str) and NODE_ID_RE.fullmatch(value):
        return value.lower()
    raise InvalidNodeId(f"{_show(value)} is not a Golem node id ('0x' followed by 40 hex digits)")


def parse_ip(value: object) -> IPAddress:
    """Return ``value`` (an address or its text form) as an IPv4 or IPv6 address.

    Raises:
        AddressError: ``value`` is not an address, or carries an IPv6 zone (``%eth0``).
    """
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if isinstance(value, str) and "%" not in value:
        try:
            return ip_address(value)
        except ValueError:
            pass
    raise AddressError(f"{_show(value)} is not an IP address")


def _split_cidr(ip: object) -> tuple[IPAddress, int | None]:
    """Split ``"addr[/prefix-or-netmask]"`` into the address and the prefix length, if given."""
    if not isinstance(ip, str):
        raise AddressError(f"{_show(ip)} is not an IP address or network")
    text, slash, suffix = ip.partition("/")
    try:
        addr = parse_ip(text)
    except AddressError:
        raise AddressError(f"{_show(ip)} is not an IP address or network") from None
    if not slash:
        return addr, None
    try:
        return addr, _mask_to_prefix(suffix, addr.version)
    except AddressError as exc:
        raise AddressError(f"bad prefix in {_show(ip)}: {exc}") from None


def _mask_to_prefix(mask: object, version: int) -> int:
    """Return the prefix length of a netmask (``"255.255.255.0"``) or a length (``"24"``)."""
    bits = _BITS[version]
    if not isinstance(mask, str):
        raise AddressError(f"{_show(mask)} is not a netmask or prefix length")
    if _PREFIX_RE.fullmatch(mask):
        if int(mask) > bits:
            raise AddressError(f"prefix length {mask} is too long for IPv{version} (0-{bits})")
        return int(mask)
    try:
        value = parse_ip(mask)
    except AddressError:
        raise AddressError(f"{_show(mask)} is not a netmask or prefix length") from None
    if value.version != version:
        raise AddressError(
            f"{_show(mask)} is an IPv{value.version} netmask for an IPv{version} address"
        )
    host_bits = ~int(value) & ((1 << bits) - 1)
    if host_bits & (host_bits + 1):  # the host part must be all ones: 0..01..1
        raise AddressError(f"{_show(mask)} is not a contiguous netmask")
    return bits - host_bits.bit_length()


def _make_network(ip: str, addr: IPAddress, prefix: int | None, mask: object) -> IPNetwork:
    """Combine a parsed address, its CIDR prefix (if any) and a mask (if any) into a network."""
    if mask is not None:
        mask_prefix = _mask_to_prefix(mask, addr.version)
        if prefix is not None and prefix != mask_prefix:
            raise AddressError(f"mask {_show(mask)} conflicts with the prefix of {_show(ip)}")
        prefix = mask_prefix
    if prefix is None:
        prefix = DEFAULT_IPV4_PREFIX if addr.version == 4 else DEFAULT_IPV6_PREFIX
    return ip_network((addr, prefix), strict=False)


def parse_network(ip: str, mask: str | None = None) -> IPNetwork:
    """Parse a network the way yagna's ``to_net`` does (``POST /net``, DEPLOY ``ip``/``mask``).

    ``ip`` is an address, optionally in CIDR form (``"192.168.0.0/24"``). ``mask`` is a netmask
    (``"255.255.255.0"``, ``"ffff:ffff:ffff:ffff::"``) or a prefix length (``"24"``); it may be
    given with a CIDR ``ip`` only if it agrees with the prefix (yapapi rejects the pair). Without
    either, IPv4 networks are /24 and IPv6 networks are /64; yagna makes the latter /128, which
    leaves no room for a second node, so we deliberately differ. Host bits are cleared
    (``"192.168.0.5/24"`` is ``192.168.0.0/24``).

    Raises:
        AddressError: malformed address or mask, a non-contiguous netmask, a mask of the other
            family, or a mask that conflicts with the CIDR prefix.
    """
    addr, prefix = _split_cidr(ip)
    return _make_network(ip, addr, prefix, mask)


def _host_range(network: IPNetwork) -> tuple[int, int]:
    """Return the first and last address that may be a host, ignoring never-host blocks."""
    first, last = int(network.network_address), int(network.broadcast_address)
    small = 31 if network.version == 4 else 127
    if network.prefixlen < small:
        first += 1
        if network.version == 4:
            last -= 1
    return first, last


def _in_network(network: IPNetwork, ip: object) -> IPAddress:
    addr = parse_ip(ip)
    if addr.version != network.version or addr not in network:
        raise AddressOutOfRange(f"'{addr}' is not in network {network}")
    return addr


def check_host(network: IPNetwork, ip: IPAddress | str) -> IPAddress:
    """Return ``ip`` as an address if it may name a node of ``network``.

    The rule is the Rust router's: below /31 (IPv4) the network and broadcast addresses are
    reserved, below /127 (IPv6) the network (subnet-router anycast) address is; /31, /32, /127
    and /128 reserve nothing. Unspecified, loopback, multicast and 255.255.255.255 never name a
    node.

    Raises:
        AddressError: ``ip`` is not an address.
        AddressOutOfRange: ``ip`` is of the other family or outside ``network``.
        AddressReserved: ``ip`` is in ``network`` but cannot name a node.
    """
    addr = _in_network(network, ip)
    value = int(addr)
    for low, high, why in _NEVER_HOST[addr.version]:
        if low <= value <= high:
            raise AddressReserved(f"'{addr}' is {why}; it cannot be given to a node")
    first, last = _host_range(network)
    if not first <= value <= last:
        kind = "network" if value < first else "broadcast"
        raise AddressReserved(f"'{addr}' is the {kind} address of {network}")
    return addr


class AddressPool:
    """The host addresses of one network, and which of them are in use.

    Automatic allocation returns the lowest free host address, so released addresses are reused
    lowest first. It never enumerates the network: it walks the sorted used addresses from a
    lower bound of the lowest free one, which makes it cheap on an IPv6 /64.
    """

    def __init__(self, network: IPNetwork) -> None:
        """Create an empty pool over ``network``."""
        self._network = network
        self._first, self._last = _host_range(network)
        self._used: list[int] = []  # sorted
        self._hint = self._first  # every host below it is used or never-host

    @property
    def network(self) -> IPNetwork:
        """The network the addresses come from."""
        return self._network

    @property
    def first_host(self) -> IPAddress:
        """The lowest address that may name a node (the requestor's by default).

        Raises:
            AddressesExhausted: no address of the network may name a node.
        """
        value = self._skip_never_host(self._first)
        if value > self._last:
            raise self._exhausted()
        return self._address(value)

    @property
    def used(self) -> tuple[IPAddress, ...]:
        """The allocated addresses, ascending."""
        return tuple(self._address(value) for value in self._used)

    def __len__(self) -> int:
        return len(self._used)

    def __contains__(self, ip: object) -> bool:
        try:
            addr = parse_ip(ip)
        except AddressError:
            return False
        return addr.version == self._network.version and self._find(int(addr)) is not None

    def allocate(self, ip: IPAddress | str | None = None) -> IPAddress:
        """Mark ``ip`` as used, or the lowest free host address if ``ip`` is None; return it.

        Raises:
            AddressError, AddressOutOfRange, AddressReserved: see :func:`check_host`.
            AddressTaken: ``ip`` is already used.
            AddressesExhausted: ``ip`` is None and no host address is free.
        """
        if ip is not None:
            addr = check_host(self._network, ip)
            if self._find(int(addr)) is not None:
                raise AddressTaken(f"'{addr}' is already in use in {self._network}")
            insort(self._used, int(addr))
            return addr
        value, index = self._hint, bisect_left(self._used, self._hint)
        while True:
            value = self._skip_never_host(value)
            if value > self._last:
                raise self._exhausted()
            index = bisect_left(self._used, value, index)
            if index == len(self._used) or self._used[index] != value:
                break
            value += 1
        self._used.insert(index, value)
        self._hint = value + 1
        return self._address(value)

    def release(self, ip: IPAddress | str) -> None:
        """Return ``ip`` to the pool.

        Raises:
            AddressError: ``ip`` is not an address or not in use.
        """
        addr = parse_ip(ip)
        index = self._find(int(addr)) if addr.version == self._network.version else None
        if index is None:
            raise AddressError(f"'{addr}' is not in use in {self._network}")
        del self._used[index]
        self._hint = min(self._hint, int(addr))

    def _find(self, value: int) -> int | None:
        index = bisect_left(self._used, value)
        return index if index < len(self._used) and self._used[index] == value else None

    def _skip_never_host(self, value: int) -> int:
        for low, high, _ in _NEVER_HOST[self._network.version]:
            if low <= value <= high:
                value = high + 1
        return value

    def _address(self, value: int) -> IPAddress:
        return IPv4Address(value) if self._network.version == 4 else IPv6Address(value)

    def _exhausted(self) -> AddressesExhausted:
        return AddressesExhausted(f"No more addresses available in {self._network}.")


@dataclass(frozen=True)
class Node:
    """A member of a network: a node id and its virtual IP. The id is stored lowercase."""

    id: str
    ip: IPAddress

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", parse_node_id(self.id))
        object.__setattr__(self, "ip", parse_ip(self.ip))


def _check_network_id(value: object) -> str:
    if isinstance(value, str) and NETWORK_ID_RE.fullmatch(value):
        return value
    raise AddressError(
        f"{_show(value)} is not a valid network id (1-128 characters of A-Z, a-z, 0-9, '_', '-')"
    )


class Network:
    """One virtual network as its requestor sees it: the range, the gateway and the nodes.

    The requestor is a node of the network (it holds ``requestor_ip``) but is kept apart from
    :attr:`nodes`. Each node holds one address here, though the router allows several.
    """

    def __init__(
        self,
        network: IPNetwork,
        *,
        requestor_id: str,
        requestor_ip: IPAddress | str | None = None,
        gateway: IPAddress | str | None = None,
        id: str | None = None,  # the Net API's name
    ) -> None:
        """Create a network; prefer :meth:`create`, which parses ``ip``/``mask`` like yagna.

        Args:
            network: The address range.
            requestor_id: The owner's node id.
            requestor_ip: The owner's address; the first host by default (yagna's choice).
            gateway: The gateway; the requestor's address by default (yagna's first host).
            id: The network id; a fresh ``uuid4().hex`` (yagna's form) by default.

        Raises:
            AddressError: bad ``id``, ``requestor_ip`` or ``gateway`` (see :func:`check_host`).
            InvalidNodeId: bad ``requestor_id``.
            AddressesExhausted: the network has no host address.
        """
        if not isinstance(network, IPv4Network | IPv6Network):
            raise AddressError(f"{_show(network)} is not an IP network")
        self._id = _check_network_id(uuid4().hex if id is None else id)
        self._pool = AddressPool(network)
        requestor = parse_node_id(requestor_id)
        self._requestor = Node(requestor, self._pool.allocate(requestor_ip))
        self._gateway = self._requestor.ip if gateway is None else _in_network(network, gateway)
        self._nodes: dict[str, Node] = {}
        self._holders: dict[IPAddress, str] = {self._requestor.ip: requestor}

    @classmethod
    def create(
        cls,
        ip: str,
        mask: str | None = None,
        gateway: IPAddress | str | None = None,
        *,
        requestor_id: str,
        requestor_ip: IPAddress | str | None = None,
        id: str | None = None,  # the Net API's name
    ) -> Network:
        """Create a network from ``POST /net`` style arguments (see :func:`parse_network`)."""
        return cls(
            parse_network(ip, mask),
            requestor_id=requestor_id,
            requestor_ip=requestor_ip,
            gateway=gateway,
            id=id,
        )

    @property
    def id(self) -> str:
        """The network id."""
        return self._id

    @property
    def network(self) -> IPNetwork:
        """The address range."""
        return self._pool.network

    @property
    def gateway(self) -> IPAddress:
        """The gateway address."""
        return self._gateway

    @property
    def requestor(self) -> Node:
        """The owner of the network and its address."""
        return self._requestor

    @property
    def requestor_id(self) -> str:
        """The owner's node id."""
        return self._requestor.id

    @property
    def requestor_ip(self) -> IPAddress:
        """The owner's address."""
        return self._requestor.ip

    @property
    def nodes(self) -> Mapping[str, Node]:
        """The nodes other than the requestor, by node id (a read-only live view)."""
        return MappingProxyType(self._nodes)

    def nodes_dict(self) -> dict[str, str]:
        """Return ``{ip: node_id}`` for every node, the requestor included (yapapi's shape)."""
        return {str(ip): node_id for ip, node_id in sorted(self._holders.items())}

    def has_room(self) -> bool:
        """Whether a node can still be added: some host address is free."""
        try:
            ip = self._pool.allocate()
        except AddressesExhausted:
            return False
        self._pool.release(ip)
        return True

    def node(self, node_id: str) -> Node:
        """Return the node (or the requestor) with ``node_id``.

        Raises:
            InvalidNodeId: ``node_id`` is malformed.
            NodeNotFound: no such node in this network.
        """
        node_id = parse_node_id(node_id)
        if node_id == self._requestor.id:
            return self._requestor
        try:
            return self._nodes[node_id]
        except KeyError:
            raise NodeNotFound(f"node {node_id} is not in network {self._id}") from None

    def add_node(self, node_id: str, ip: IPAddress | str | None = None) -> Node:
        """Add a node at ``ip``, or at the lowest free host address; return it.

        Adding a node again at its own address (or with ``ip`` None) returns the existing node,
        as yagna does when a requestor refreshes its nodes.

        Raises:
            InvalidNodeId: ``node_id`` is malformed.
            AddressError, AddressOutOfRange, AddressReserved: see :func:`check_host`.
            AddressTaken: ``ip`` belongs to another node, or this node holds another address.
            AddressesExhausted: no free host address is left.
        """
        node_id = parse_node_id(node_id)
        addr = None if ip is None else check_host(self.network, ip)
        current = self._requestor if node_id == self._requestor.id else self._nodes.get(node_id)
        if current is not None:
            if addr is None or addr == current.ip:
                return current
            raise AddressTaken(
                f"node {node_id} already holds {current.ip} in network {self._id} (a node has "
                f"one address here; {addr} is not the problem): move it to {addr} instead "
                "(PATCH .../nodes/{nodeId}), or remove it first"
            )
        if addr is not None and addr in self._holders:
            raise AddressTaken(
                f"'{addr}' is already held by node {self._holders[addr]} in network {self._id}"
            )
        node = Node(node_id, self._pool.allocate(addr))
        self._nodes[node_id] = node
        self._holders[node.ip] = node_id
        return node

    def readdress_node(self, node_id: str, ip: IPAddress | str) -> Node:
        """Move a provider node to another free address (its old one is freed); return it.

        Moving a node to the address it holds returns it unchanged.

        Raises:
            InvalidNodeId: ``node_id`` is malformed.
            NodeNotFound: no such node in this network.
            Forbidden: ``node_id`` is the requestor.
            AddressError, AddressOutOfRange, AddressReserved: see :func:`check_host`.
            AddressTaken: another node (or the requestor) holds ``ip``.
        """
        node_id = parse_node_id(node_id)
        if node_id == self._requestor.id:
            raise Forbidden(f"the requestor {node_id} cannot be moved to another address")
        current = self._nodes.get(node_id)
        if current is None:
            raise NodeNotFound(f"node {node_id} is not in network {self._id}")
        addr = check_host(self.network, ip)
        if addr == current.ip:
            return current
        if addr in self._holders:
            raise AddressTaken(
                f"'{addr}' is already held by node {self._holders[addr]} in network {self._id}"
            )
        node = Node(node_id, self._pool.allocate(addr))
        del self._holders[current.ip]
        self._pool.release(current.ip)
        self._nodes[node_id] = node
        self._holders[node.ip] = node_id
        return node

    def remove_node(self, node_id: str) -> Node:
        """Remove a node and free its address; return the removed node.

        Raises:
            InvalidNodeId: ``node_id`` is malformed.
            NodeNotFound: no such node in this network.
            Forbidden: ``node_id`` is the requestor (remove the network instead).
        """
        node_id = parse_node_id(node_id)
        if node_id == self._requestor.id:
            raise Forbidden(f"the requestor {node_id} cannot be removed from its network")
        node = self._nodes.pop(node_id, None)
        if node is None:
            raise NodeNotFound(f"node {node_id} is not in network {self._id}")
        del self._holders[node.ip]
        self._pool.release(node.ip)
        return node

    def deploy_network(self, node_id: str) -> DeployNetwork:
        """Return the DEPLOY ``net`` entry for ``node_id`` (NodeNotFound if unknown)."""
        node = self.node(node_id)
        nodes = dict(sorted(self._holders.items()))
        return DeployNetwork(self._id, self.network, self._gateway, node.ip, nodes)

    def deploy_args(self, node_id: str) -> dict[str, Any]:
        """Return ``{"net": [...]}`` to merge into the DEPLOY command sent to ``node_id``."""
        return {"net": [self.deploy_network(node_id).to_json()]}

    def __repr__(self) -> str:
        return (
            f"Network(id={self._id!r}, network={self.network}, "
            f"requestor={self._requestor.ip}, nodes={len(self._nodes)})"
        )


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if path else field


@dataclass(frozen=True)
class DeployNetwork:
    """One entry of a DEPLOY command's ``net`` list: a network as a given node joins it.

    The constructor validates and normalises its arguments (node ids lowercase, addresses parsed)
    and raises :class:`DeployConfigError` naming the JSON field (``nodeIp``, ``nodes['…']``).
    """

    id: str
    network: IPNetwork
    gateway: IPAddress | None
    node_ip: IPAddress
    nodes: dict[IPAddress, str]

    def __post_init__(self) -> None:
        def put(name: str, field: str, check: Callable[..., object], *args: object) -> None:
            try:
                object.__setattr__(self, name, check(*args))
            except (AddressError, InvalidNodeId) as exc:
                raise DeployConfigError(f"{field}: {exc}") from exc

        put("id", "id", _check_network_id, self.id)
        if not isinstance(self.network, IPv4Network | IPv6Network):
            raise DeployConfigError(f"ip: {_show(self.network)} is not an IP network")
        if self.gateway is not None:
            put("gateway", "gateway", _in_network, self.network, self.gateway)
        put("node_ip", "nodeIp", check_host, self.network, self.node_ip)
        if not isinstance(self.nodes, Mapping):
            raise DeployConfigError(f"nodes: expected an object, got {_show(self.nodes)}")
        nodes: dict[IPAddress, str] = {}
        for key, value in self.nodes.items():
            field = f"nodes[{_show(str(key))}]"
            try:
                ip = check_host(self.network, key)
                if ip in nodes:
                    raise DeployConfigError(f"{field}: '{ip}' appears twice")
                nodes[ip] = parse_node_id(value)
            except (AddressError, InvalidNodeId) as exc:
                raise DeployConfigError(f"{field}: {exc}") from exc
        object.__setattr__(self, "nodes", nodes)

    def to_json(self) -> dict[str, Any]:
        """Return the entry in yagna's JSON shape (``gateway`` left out when None)."""
        obj: dict[str, Any] = {
            "id": self.id,
            "ip": str(self.network.network_address),
            "mask": str(self.network.netmask),
        }
        if self.gateway is not None:
            obj["gateway"] = str(self.gateway)
        obj["nodeIp"] = str(self.node_ip)
        obj["nodes"] = {str(ip): node_id for ip, node_id in self.nodes.items()}
        return obj

    @classmethod
    def from_json(cls, obj: object, *, path: str = "") -> DeployNetwork:
        """Parse one ``net`` entry; error messages start with ``path`` (e.g. ``net[0]``).

        ``mask``, ``gateway`` and ``nodes`` are optional (``null`` counts as absent for the
        first two); unknown keys are ignored, for forward compatibility with newer yagna.

        Raises:
            DeployConfigError: a field is missing or invalid; the message names it.
        """
        entry = _expect_object(obj, path)
        for key in ("id", "ip", "nodeIp"):
            if key not in entry:
                raise DeployConfigError(f"{_join(path, key)}: missing")
        try:
            addr, prefix = _split_cidr(entry["ip"])
        except AddressError as exc:
            raise DeployConfigError(f"{_join(path, 'ip')}: {exc}") from exc
        try:
            network = _make_network(entry["ip"], addr, prefix, entry.get("mask"))
        except AddressError as exc:
            raise DeployConfigError(f"{_join(path, 'mask')}: {exc}") from exc
        nodes = entry.get("nodes", {})
        if isinstance(nodes, _JsonObject) and nodes.duplicates:
            raise DeployConfigError(
                f"{_join(path, 'nodes')}: duplicate key {_show(nodes.duplicates[0])}"
            )
        try:
            return cls(entry["id"], network, entry.get("gateway"), entry["nodeIp"], nodes)
        except DeployConfigError as exc:
            raise DeployConfigError(_join(path, str(exc))) from exc


class _JsonObject(dict[str, Any]):
    """A decoded JSON object that remembers the keys it saw more than once."""

    duplicates: tuple[str, ...] = ()

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, Any]]) -> _JsonObject:
        obj = cls(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            repeated: list[str] = []
            for key, _ in pairs:
                if key in seen:
                    repeated.append(key)
                seen.add(key)
            obj.duplicates = tuple(repeated)
        return obj


def _expect_object(obj: object, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DeployConfigError(f"{path or 'entry'}: expected an object, got {_show(obj)}")
    if isinstance(obj, _JsonObject) and obj.duplicates:
        raise DeployConfigError(f"{path or 'entry'}: duplicate key {_show(obj.duplicates[0])}")
    return obj


def parse_deploy_net(obj: object) -> list[DeployNetwork]:
    """Parse the networks of a DEPLOY command.

    ``obj`` is the deploy arguments (``{"net": [...], ...}``; other keys such as ``volumes`` or
    ``hosts`` are ignored and a missing ``net`` means no networks, as in yagna), the ``net``
    list itself, or a JSON text of either. JSON text with a repeated key in an object we read is
    rejected. See :meth:`DeployNetwork.from_json` for one entry; across entries, network ids
    must be unique and networks must not overlap.

    Raises:
        DeployConfigError: the input is malformed; the message names the path (``net[1].ip``).
    """
    if isinstance(obj, str | bytes | bytearray):
        try:
            obj = json.loads(obj, object_pairs_hook=_JsonObject.from_pairs)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise DeployConfigError(f"not valid JSON: {exc}") from exc
    if isinstance(obj, dict):
        if isinstance(obj, _JsonObject) and "net" in obj.duplicates:
            raise DeployConfigError("net: duplicate key 'net'")
        if "net" not in obj:
            if "nodeIp" in obj:
                raise DeployConfigError("expected {'net': [...]} or a list, got a single entry")
            return []
        obj = obj["net"]
    if not isinstance(obj, list):
        raise DeployConfigError(f"net: expected a list, got {_show(obj)}")
    result: list[DeployNetwork] = []
    for index, entry in enumerate(obj):
        path = f"net[{index}]"
        net = DeployNetwork.from_json(entry, path=path)
        for other_index, other in enumerate(result):
            if other.id == net.id:
                raise DeployConfigError(
                    f"{path}.id: network id {net.id!r} is also used by net[{other_index}]"
                )
            if other.network.version == net.network.version and other.network.overlaps(net.network):
                raise DeployConfigError(
                    f"{path}.ip: {net.network} overlaps {other.network} of net[{other_index}]"
                )
        result.append(net)
    return result
