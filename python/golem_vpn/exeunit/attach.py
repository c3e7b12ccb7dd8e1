"""Attachments: a DEPLOY turned into a payload on its networks (TUN, VM frames, userspace).

:class:`ExeUnit` is the provider side of a node daemon (its
:class:`~golem_vpn.node.daemon.DaemonBackend` owns one, and its API serves it):
:meth:`ExeUnit.attach` joins every network of a DEPLOY and connects them to the payload in
one of three ways, :meth:`ExeUnit.detach` undoes all of it.

- ``tun``: one TUN device for all the DEPLOY's networks, moved into the payload's network
  namespace (created if missing) and renamed there, addressed from DEPLOY ``nodeIp``, with the
  networks' routes, MTU and ``/etc/netns/NAME/hosts``. The packets move between the device and
  the encrypted transport in Rust (``UdpTransport.attach_tun``); no packet crosses into Python.
- ``vm``: a frame endpoint for a VM runtime (``UdpTransport.attach_vm``): Ethernet frames over
  UDP (``udp://127.0.0.1:PORT``, handed to the runtime as ``--vpn-endpoint``), TCP or a unix
  socket, byte-compatible with ``ya-runtime-vm``.
- ``userspace``: the asyncio :class:`~golem_vpn.Stack` per network (for sandboxed payloads and
  Python ExeUnits, which use :meth:`ExeUnit.interface` with :func:`golem_vpn.open_connection`).

Attaching either completes or leaves nothing behind: each step's undo is recorded and run in
reverse when a later step fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from golem_vpn.errors import (
    AlreadyAttached,
    AttachError,
    AttachmentNotFound,
    AttachOptionError,
    DeployConfigError,
    EndpointUnreachable,
    InterfaceExists,
    NetworkNotFound,
    NotPermitted,
)
from golem_vpn.exeunit import netns as ns
from golem_vpn.exeunit.deploy import Deploy, default_requestor, parse_deploy
from golem_vpn.exeunit.options import (
    DEFAULT_IFNAME,
    DEFAULT_MTU,
    DEFAULT_VM_ENDPOINT,
    MAX_MTU,
    MIN_MTU,
    MIN_MTU_V6,
    MODES,
    VM_SCHEMES,
    Mode,
)
from golem_vpn.interface import Interface
from golem_vpn.model import parse_node_id

if TYPE_CHECKING:
    from golem_vpn.node.daemon import DaemonBackend

__all__ = [
    "DEFAULT_IFNAME",
    "DEFAULT_MTU",
    "DEFAULT_VM_ENDPOINT",
    "MODES",
    "VM_SCHEMES",
    "AttachedNetwork",
    "Attachment",
    "Counters",
    "ExeUnit",
    "Mode",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachedNetwork:
    """One network of an attachment.

    Attributes:
        id: The network id.
        node_ip: This node's address in it (DEPLOY ``nodeIp``).
        cidr: The network's range (``192.168.0.0/24``).
        requestor: The node whose control messages the network follows.
    """

    id: str
    node_ip: str
    cidr: str
    requestor: str

    def to_json(self) -> dict[str, str]:
        """``{id, nodeIp, cidr, requestor}``."""
        return {
            "id": self.id,
            "nodeIp": self.node_ip,
            "cidr": self.cidr,
            "requestor": self.requestor,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AttachedNetwork:
        """Reads :meth:`to_json`'s shape. Raises ValueError if malformed."""
        return cls(_str(obj, "id"), _str(obj, "nodeIp"), _str(obj, "cidr"), _str(obj, "requestor"))


@dataclass(frozen=True)
class Counters:
    """Traffic of an attachment since it was made.

    ``in`` is from the payload into the VPN, ``out`` from the VPN to the payload; ``drops``
    counts packets the attachment could not deliver or accept (queue full, malformed, not
    routable).
    """

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    drops: int = 0

    def to_json(self) -> dict[str, int]:
        """``{packetsIn, bytesIn, packetsOut, bytesOut, drops}``."""
        return {
            "packetsIn": self.packets_in,
            "bytesIn": self.bytes_in,
            "packetsOut": self.packets_out,
            "bytesOut": self.bytes_out,
            "drops": self.drops,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Counters:
        """Reads :meth:`to_json`'s shape. Raises ValueError if malformed."""
        return cls(*(_int(obj, key) for key in cls().to_json()))


@dataclass(frozen=True)
class Attachment:
    """A payload attached to its DEPLOY networks.

    Attributes:
        id: A short id (8 hex digits) for detaching it.
        kind: ``tun``, ``vm`` or ``userspace``.
        networks: The networks it is on.
        addresses: The payload's addresses, ``ip/prefix``.
        interface: The TUN device's name (``tun``), else None.
        netns: The network namespace of the TUN device (None: the daemon's own).
        netns_created: Whether the attachment created the namespace (then detaching deletes it).
        endpoint: The VM frame endpoint to give the runtime (``vm``), else None.
        mtu: The device's MTU (``tun``), else None.
        hosts: DEPLOY ``hosts`` (``{name: ip}``); written to the namespace's ``/etc/hosts``.
        created: When it was made (seconds since the epoch).
        counters: Traffic so far (as of the call that returned this record).
    """

    id: str
    kind: Mode
    networks: tuple[AttachedNetwork, ...]
    addresses: tuple[str, ...]
    interface: str | None = None
    netns: str | None = None
    netns_created: bool = False
    endpoint: str | None = None
    mtu: int | None = None
    hosts: Mapping[str, str] = field(default_factory=dict)
    created: float = 0.0
    counters: Counters = Counters()

    def to_json(self) -> dict[str, Any]:
        """The daemon API's JSON shape (camelCase; absent values are ``null``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "interface": self.interface,
            "netns": self.netns,
            "netnsCreated": self.netns_created,
            "endpoint": self.endpoint,
            "mtu": self.mtu,
            "addresses": list(self.addresses),
            "networks": [n.to_json() for n in self.networks],
            "hosts": dict(self.hosts),
            "created": self.created,
            "counters": self.counters.to_json(),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Attachment:
        """Reads :meth:`to_json`'s shape. Raises ValueError if malformed."""
        kind = obj.get("kind")
        if kind not in MODES:
            raise ValueError(f"field 'kind': expected one of {MODES}, got {kind!r:.60}")
        networks, addresses, hosts = obj.get("networks"), obj.get("addresses"), obj.get("hosts")
        if not isinstance(networks, list) or not all(isinstance(n, dict) for n in networks):
            raise ValueError("field 'networks': expected a list of objects")
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise ValueError("field 'addresses': expected a list of strings")
        if not isinstance(hosts, dict):
            raise ValueError("field 'hosts': expected an object")
        counters = obj.get("counters")
        if not isinstance(counters, dict):
            raise ValueError("field 'counters': expected an object")
        created = obj.get("created")
        if not isinstance(created, int | float) or isinstance(created, bool):
            raise ValueError("field 'created': expected a number")
        mtu = obj.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)):
            raise ValueError("field 'mtu': expected an integer or null")
        return cls(
            id=_str(obj, "id"),
            kind=cast(Mode, kind),
            networks=tuple(AttachedNetwork.from_json(n) for n in networks),
            addresses=tuple(addresses),
            interface=_str(obj, "interface", optional=True),
            netns=_str(obj, "netns", optional=True),
            netns_created=bool(obj.get("netnsCreated")),
            endpoint=_str(obj, "endpoint", optional=True),
            mtu=mtu,
            hosts={str(k): str(v) for k, v in hosts.items()},
            created=float(created),
            counters=Counters.from_json(counters),
        )


def _str(obj: Mapping[str, Any], key: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {key!r}: expected a string, got {value!r:.60}")
    return value


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"field {key!r}: expected an integer, got {value!r:.60}")
    return value


@dataclass(eq=False)
class _Record:
    """An attachment and what detaching it must undo."""

    attachment: Attachment
    native_id: int | None = None
    interfaces: list[Interface] = field(default_factory=list)
    hosts_file: ns.HostsFile | None = None
    #: A TUN device's routes (``ip route`` arguments), restored when it is readdressed.
    routes: list[list[str]] = field(default_factory=list)


Undo = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class _Plan:
    """What one attach call works from."""

    attachment: Attachment
    deploy: Deploy
    requestors: list[str]
    requestor_addr: tuple[str, int] | None
    steps: _Steps


class _Steps:
    """Undo actions of the steps done so far, run newest first if a later step fails."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Undo]] = []

    def done(self, what: str, undo: Undo) -> None:
        self._undo.append((what, undo))

    async def roll_back(self) -> None:
        while self._undo:
            what, undo = self._undo.pop()
            try:
                await undo()
            except Exception as exc:  # keep undoing the rest; report what stays behind
                log.warning("rolling back an attachment: cannot undo %s: %s", what, exc)


def _check_name(value: str | None, pattern: Any, what: str) -> None:
    if value is not None and not pattern.fullmatch(value):
        raise AttachOptionError(
            f"{what} {value!r} is not a valid name (letters, digits, '_', '.', '-'; "
            f"at most {15 if what == 'interface name' else 64} characters)"
        )


class ExeUnit:
    """The provider side of a node daemon: payloads attached to DEPLOYed networks.

    One per :class:`~golem_vpn.node.daemon.DaemonBackend` (``backend.exeunit``); the daemon's
    API (``/golem-vpn/v1/attachments``) and ``golem-vpn attach`` drive it, and a Python ExeUnit
    embedding the library calls it directly::

        backend = DaemonBackend(UdpTransport(identity, relay=relay))
        att = await backend.exeunit.attach(deploy_args, mode="tun", netns="payload")
        ...                                     # the payload runs in netns "payload"
        await backend.exeunit.detach(att.id)

    Operations are serialised: one attach or detach at a time.

    Args:
        backend: The daemon backend whose transport and membership the networks join.
    """

    def __init__(self, backend: DaemonBackend) -> None:
        self._backend = backend
        self._records: dict[str, _Record] = {}
        self._lock = asyncio.Lock()
        self._moves: set[asyncio.Task[None]] = set()
        backend.member.on_readdress = self._on_readdress

    # -- live changes -----------------------------------------------------------------------

    def _on_readdress(self, network_id: str, old_ips: list[str], new_ips: list[str]) -> None:
        """The requestor moved this node: the router already routes the new address; the
        payload's device follows (a TUN device is readdressed in place)."""
        task = asyncio.get_running_loop().create_task(self._readdress(network_id, old_ips, new_ips))
        self._moves.add(task)
        task.add_done_callback(self._moves.discard)

    async def _readdress(self, network_id: str, old_ips: list[str], new_ips: list[str]) -> None:
        async with self._lock:
            for record in self._records.values():
                att = record.attachment
                net = next((n for n in att.networks if n.id == network_id), None)
                if net is None or not old_ips or not new_ips:
                    continue
                prefix = net.cidr.rpartition("/")[2]
                old, new = f"{old_ips[0]}/{prefix}", f"{new_ips[0]}/{prefix}"
                if att.kind == "tun" and att.interface is not None:
                    try:
                        await ns.readdress_tun(
                            att.interface,
                            old,
                            new,
                            v6=":" in new_ips[0],
                            routes=record.routes,
                            netns=att.netns,
                        )
                    except AttachError as exc:
                        log.warning("attachment %s: cannot move to %s: %s", att.id, new, exc)
                        continue
                else:
                    # A VM guest's address is the runtime's to set (no DHCP on the link), and
                    # a userspace stack keeps its address: the new one routes, the old one
                    # stops; the payload must be told by its runtime.
                    log.warning(
                        "attachment %s (%s) moved to %s in %s: the payload keeps %s until "
                        "its runtime changes it",
                        att.id,
                        att.kind,
                        new,
                        network_id,
                        old,
                    )
                record.attachment = replace(
                    att,
                    addresses=tuple(new if a == old else a for a in att.addresses),
                    networks=tuple(
                        replace(n, node_ip=new_ips[0]) if n.id == network_id else n
                        for n in att.networks
                    ),
                )
                log.info("attachment %s moved from %s to %s", att.id, old, new)

    # -- queries ----------------------------------------------------------------------------

    def attachments(self) -> list[Attachment]:
        """Every attachment, oldest first, with its counters now."""
        native = self._native_counters()
        return [self._current(record, native) for record in self._records.values()]

    def attachment(self, attachment_id: str) -> Attachment:
        """One attachment with its counters now.

        Raises:
            AttachmentNotFound: No such attachment.
        """
        return self._current(self._record(attachment_id), self._native_counters())

    def interface(self, attachment_id: str, network_id: str) -> Interface:
        """A userspace attachment's interface in one of its networks (for asyncio sockets).

        Raises:
            AttachmentNotFound: No such attachment, or it is not a userspace one.
            NetworkNotFound: The attachment is not on that network.
        """
        record = self._record(attachment_id)
        if record.attachment.kind != "userspace":
            raise AttachmentNotFound(f"attachment {attachment_id} is not a userspace one")
        for net, interface in zip(record.attachment.networks, record.interfaces, strict=True):
            if net.id == network_id:
                return interface
        raise NetworkNotFound(f"attachment {attachment_id} is not on network {network_id!r}")

    def _record(self, attachment_id: str) -> _Record:
        record = self._records.get(attachment_id)
        if record is None:
            raise AttachmentNotFound(f"no attachment {attachment_id!r} on this daemon")
        return record

    # -- attach -----------------------------------------------------------------------------

    async def attach(
        self,
        deploy: Deploy | Mapping[str, Any] | str | bytes,
        *,
        mode: Mode = "tun",
        requestor: str | None = None,
        requestor_addr: tuple[str, int] | None = None,
        netns: str | None = None,
        ifname: str | None = None,
        mtu: int | None = None,
        vm_endpoint: str | None = None,
    ) -> Attachment:
        """Joins every network of a DEPLOY and attaches the payload to them.

        Args:
            deploy: The DEPLOY body (see :func:`~golem_vpn.exeunit.deploy.parse_deploy`) or a
                parsed :class:`~golem_vpn.exeunit.deploy.Deploy`.
            mode: ``tun``, ``vm`` or ``userspace`` (see the module docs).
            requestor: The node id whose control messages every network follows; default per
                network: the holder of its gateway address, else of its first host.
            requestor_addr: The requestor's UDP address, if known (else the relay finds it).
            netns: ``tun``: the payload's network namespace (created if missing, and then
                deleted on detach); None: the daemon's own namespace.
            ifname: ``tun``: the device's name (default ``gvpn0``).
            mtu: ``tun``: the device's MTU (default 1368, which never
                fragments on a 1500-byte underlay; IPv6 needs at least 1280).
            vm_endpoint: ``vm``: the endpoint URL (default ``udp://127.0.0.1:0``).

        Returns:
            The attachment (for ``vm``, its ``endpoint`` is what to give the runtime).

        Raises:
            DeployConfigError: The DEPLOY is malformed, or a network's requestor is unknown.
            AttachOptionError: A bad mode, name, MTU or endpoint URL, or an option another mode
                takes.
            AlreadyAttached: A network of the DEPLOY is already joined on this node.
            InterfaceExists: ``tun``: the interface name is taken in the namespace.
            NotPermitted: ``tun``: not root (``CAP_NET_ADMIN``).
            EndpointUnreachable: ``vm``: the endpoint cannot be bound or reached.
            SystemCommandFailed: An ``ip`` command failed.
        """
        if mode not in MODES:
            raise AttachOptionError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode != "tun" and (netns is not None or ifname is not None or mtu is not None):
            raise AttachOptionError("netns, ifname and mtu apply to tun attachments only")
        if mode != "vm" and vm_endpoint is not None:
            raise AttachOptionError("a VM endpoint applies to vm attachments only")
        parsed = deploy if isinstance(deploy, Deploy) else parse_deploy(deploy)
        if requestor is not None:
            requestor = parse_node_id(requestor)
            for index, net in enumerate(parsed.networks):
                # Only the network's nodes get a tunnel: a requestor outside it would never
                # be heard, and the payload would wait for membership changes forever.
                if requestor not in net.nodes.values():
                    raise DeployConfigError(
                        f"net[{index}].nodes: the requestor {requestor} is not a node of "
                        f"network {net.id}; give the node id of the requestor that made the "
                        "network (it is in the DEPLOY's nodes)"
                    )
        requestors = [
            requestor or default_requestor(net, path=f"net[{index}]")
            for index, net in enumerate(parsed.networks)
        ]
        async with self._lock:
            for net in parsed.networks:
                if self._backend.has_network(net.id):
                    raise AlreadyAttached(
                        f"network {net.id} is already joined on this node (detach its "
                        "attachment first)"
                    )
            attachment = Attachment(
                id=self._new_id(),
                kind=mode,
                networks=tuple(
                    AttachedNetwork(net.id, str(net.node_ip), str(net.network), req)
                    for net, req in zip(parsed.networks, requestors, strict=True)
                ),
                addresses=tuple(f"{n.node_ip}/{n.network.prefixlen}" for n in parsed.networks),
                hosts={name: str(ip) for name, ip in parsed.hosts.items()},
                created=time.time(),
            )
            steps = _Steps()
            plan = _Plan(attachment, parsed, requestors, requestor_addr, steps)
            try:
                if mode == "tun":
                    record = await self._attach_tun(plan, netns=netns, ifname=ifname, mtu=mtu)
                elif mode == "vm":
                    record = await self._attach_vm(plan, vm_endpoint)
                else:
                    record = _Record(attachment, interfaces=self._join(plan, native=False))
            except BaseException:
                await steps.roll_back()
                raise
            self._records[attachment.id] = record
            log.info(
                "attached %s %s: %s on %s",
                mode,
                attachment.id,
                ", ".join(record.attachment.addresses),
                ", ".join(n.id for n in attachment.networks),
            )
            return self._current(record, self._native_counters())

    def _new_id(self) -> str:
        while (candidate := secrets.token_hex(4)) in self._records:
            pass
        return candidate

    def _join(self, plan: _Plan, *, native: bool, ethernet: bool = False) -> list[Interface]:
        interfaces: list[Interface] = []
        addr = plan.requestor_addr
        for net, requestor in zip(plan.deploy.networks, plan.requestors, strict=True):
            try:
                if native:
                    self._backend.join_deploy_native(net, requestor, addr, ethernet=ethernet)
                else:
                    interfaces.append(self._backend.join_deploy(net, requestor, addr))
            except BaseException:
                # A join that failed half-way (a peer refused) may have left the network.
                with contextlib.suppress(NetworkNotFound):
                    self._backend.leave_deploy(net.id)
                raise
            plan.steps.done(f"joining network {net.id}", self._leaver(net.id))
        return interfaces

    def _leaver(self, network_id: str) -> Undo:
        async def undo() -> None:
            with contextlib.suppress(NetworkNotFound):
                self._backend.leave_deploy(network_id)

        return undo

    def _detacher(self, native_id: int) -> Undo:
        async def undo() -> None:
            self._backend.transport.detach(native_id)

        return undo

    async def _attach_tun(
        self, plan: _Plan, *, netns: str | None, ifname: str | None, mtu: int | None
    ) -> _Record:
        attachment, parsed, steps = plan.attachment, plan.deploy, plan.steps
        ifname = ifname or DEFAULT_IFNAME
        mtu = DEFAULT_MTU if mtu is None else mtu
        _check_name(ifname, ns.IFNAME_RE, "interface name")
        _check_name(netns, ns.NETNS_RE, "network namespace name")
        low = MIN_MTU_V6 if any(n.network.version == 6 for n in parsed.networks) else MIN_MTU
        if not low <= mtu <= MAX_MTU:
            raise AttachOptionError(f"MTU must be from {low} to {MAX_MTU}, got {mtu}")
        native = self._backend.transport
        # Refuse a taken name before anything is made.
        netns_existed = netns is not None and ns.netns_exists(netns)
        if (netns is None or netns_existed) and await ns.link_exists(ifname, netns):
            where = f"netns {netns}" if netns is not None else "the daemon's network namespace"
            raise InterfaceExists(f"interface {ifname} already exists in {where}")

        self._join(plan, native=True)
        if netns is not None and not netns_existed:
            await ns.add_netns(netns)
            made = netns
            steps.done(f"creating netns {made}", lambda: ns.delete_netns(made))
        # In another namespace the device is made here under a name nobody uses, then moved;
        # the fd keeps working across the move.
        device = ifname if netns is None else "gv" + secrets.token_hex(4)
        try:
            native_id = native.attach_tun(device, [n.id for n in parsed.networks])
        except PermissionError as exc:
            raise NotPermitted(
                f"cannot create TUN device {device}: {exc} (attaching a TUN device needs root)"
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.EEXIST):
                raise InterfaceExists(f"cannot create TUN device {device}: {exc}") from exc
            raise AttachError(f"cannot create TUN device {device}: {exc}") from exc
        steps.done(f"TUN device {device}", self._detacher(native_id))
        if netns is not None:
            await ns.move_link(device, netns, ifname)
        addresses, routes = await ns.configure_tun(ifname, parsed.networks, mtu=mtu, netns=netns)
        hosts_file = None
        if netns is not None:
            hosts_file = ns.write_hosts(netns, attachment.id, parsed.hosts)
            done_hosts = hosts_file

            async def unhost() -> None:
                ns.remove_hosts(done_hosts)

            steps.done("the hosts file", unhost)
        attachment = replace(
            attachment,
            interface=ifname,
            netns=netns,
            netns_created=netns is not None and not netns_existed,
            mtu=mtu,
            addresses=tuple(addresses),
        )
        return _Record(attachment, native_id=native_id, hosts_file=hosts_file, routes=routes)

    async def _attach_vm(self, plan: _Plan, vm_endpoint: str | None) -> _Record:
        parsed = plan.deploy
        url = vm_endpoint or DEFAULT_VM_ENDPOINT
        if not url.startswith(VM_SCHEMES):
            raise AttachOptionError(
                f"VM endpoint {url!r} must start with one of {', '.join(VM_SCHEMES)}"
            )
        native = self._backend.transport
        self._join(plan, native=True, ethernet=True)
        try:
            # tcp-connect:// may wait for the runtime (the native side times out).
            native_id, endpoint = await asyncio.to_thread(
                native.attach_vm, url, [n.id for n in parsed.networks]
            )
        except ValueError as exc:
            raise AttachOptionError(f"VM endpoint {url!r}: {exc}") from exc
        except OSError as exc:
            raise EndpointUnreachable(f"VM endpoint {url}: {exc}") from exc
        plan.steps.done(f"VM endpoint {endpoint}", self._detacher(native_id))
        return _Record(replace(plan.attachment, endpoint=endpoint), native_id=native_id)

    # -- detach -----------------------------------------------------------------------------

    async def detach(self, attachment_id: str) -> Attachment:
        """Removes an attachment and everything it made.

        The native attachment stops (a TUN device goes away), its networks are left, the
        hosts entries are removed, and a namespace the attachment created is deleted (its
        remaining programs keep it alive, unnamed, until they exit).

        Returns:
            The attachment with its final counters.

        Raises:
            AttachmentNotFound: No such attachment.
            AttachError: A step failed; the others were still done, and the attachment is gone.
        """
        async with self._lock:
            record = self._record(attachment_id)
            final = self._current(record, self._native_counters())
            del self._records[attachment_id]
            attachment = record.attachment
            failures: list[str] = []
            if record.native_id is not None:
                try:
                    self._backend.transport.detach(record.native_id)
                except Exception as exc:
                    failures.append(f"stopping the native attachment: {exc}")
            for net in attachment.networks:
                with contextlib.suppress(NetworkNotFound):  # its requestor removed it already
                    self._backend.leave_deploy(net.id)
            if record.hosts_file is not None:
                try:
                    ns.remove_hosts(record.hosts_file)
                except OSError as exc:
                    failures.append(f"removing the hosts entries: {exc}")
            if attachment.netns is not None and attachment.netns_created:
                try:
                    await ns.delete_netns(attachment.netns)
                except AttachError as exc:
                    failures.append(str(exc))
            log.info("detached %s %s", attachment.kind, attachment.id)
            if failures:
                raise AttachError(f"detached {attachment_id}, but: " + "; ".join(failures))
            return final

    async def close(self) -> None:
        """Detaches everything (the daemon is stopping); failures are logged."""
        for attachment_id in list(self._records):
            try:
                await self.detach(attachment_id)
            except AttachError as exc:
                log.warning("%s", exc)

    # -- counters ---------------------------------------------------------------------------

    def _native_counters(self) -> dict[int, Counters]:
        if not any(r.native_id is not None for r in self._records.values()):
            return {}
        return {
            row["id"]: Counters(
                row["packets_in"],
                row["bytes_in"],
                row["packets_out"],
                row["bytes_out"],
                row["drops"],
            )
            for row in self._backend.transport.attachments()
        }

    @staticmethod
    def _current(record: _Record, native: Mapping[int, Counters]) -> Attachment:
        if record.native_id is not None:
            counters = native.get(record.native_id, Counters())
        else:
            # A userspace stack counts from its own side: what it receives came from the VPN.
            totals = [0, 0, 0, 0, 0]
            for interface in record.interfaces:
                if interface.closed:
                    continue
                stats = interface.stack.stats()
                totals[0] += stats["packets_out"]
                totals[1] += stats["bytes_out"]
                totals[2] += stats["packets_in"]
                totals[3] += stats["bytes_in"]
                totals[4] += stats["dropped_in"] + stats["syn_dropped"]
            counters = Counters(*totals)
        return replace(record.attachment, counters=counters)
