"""The node daemon's backend: the Net API's operations made real on the encrypted transport.

:class:`DaemonBackend` implements :class:`~golem_vpn.netapi.backend.VpnBackend` for a node
that runs as a requestor: creating a network joins it on the node's
:class:`~golem_vpn.node.transport.UdpTransport` with a userspace stack at the requestor's
address; adding and removing nodes goes through the
:class:`~golem_vpn.node.membership.Coordinator`, which tells every provider over reliable
control channels; the WebSocket gate's sockets (and the raw gate's packet taps) come from the
requestor's stacks. Providers join networks from their DEPLOY config and follow their
requestor's control messages; the backend's :class:`~golem_vpn.exeunit.ExeUnit`
(:attr:`DaemonBackend.exeunit`) turns a DEPLOY into an attached payload (TUN device, VM frame
endpoint or userspace stack) through :meth:`DaemonBackend.join_deploy` and
:meth:`DaemonBackend.join_deploy_native`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from golem_vpn.errors import DataDirError, DataDirLocked, NetworkNotFound
from golem_vpn.exeunit.attach import ExeUnit
from golem_vpn.hostport import format_hostport, listen_error
from golem_vpn.interface import Interface, PacketTap
from golem_vpn.model import DeployNetwork, Network, Node
from golem_vpn.node.membership import ControlPlane, Coordinator, Member
from golem_vpn.node.transport import UdpTransport
from golem_vpn.streams import DatagramEndpoint, open_connection, open_datagram_endpoint

if TYPE_CHECKING:
    from golem_vpn.netapi.server import Limits

__all__ = [
    "LOCK_FILENAME",
    "MMAP_THRESHOLD",
    "DaemonBackend",
    "DataDirLock",
    "pin_mmap_threshold",
    "run",
]

#: The lock file in the data dir: held (flock) while a daemon runs, naming its PID and API.
LOCK_FILENAME = "daemon.lock"
#: Allocations from this many bytes up get pages of their own (glibc's default threshold).
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def pin_mmap_threshold(size: int = MMAP_THRESHOLD) -> bool:
    """Fixes glibc's mmap threshold at ``size``, turning off its dynamic raise.

    Each TCP connection of a userspace stack allocates zeroed receive and send buffers (512
    KiB each by default). glibc serves an allocation that large with fresh pages of its own
    (mmap), which take no memory until written and go back to the system when freed. But
    freeing one raises glibc's threshold to its size, so from then on such buffers come from
    the heap, where zeroing touches every page and a free keeps them: 1,000 gate connections
    opened, closed and opened again took a daemon from 84 to 378 MiB, still 394 MiB once they
    were closed; pinned, 94 and 86 MiB (``benches/load.py``). The daemon calls this first.

    Returns:
        True if set; False without glibc's ``mallopt`` (other systems and C libraries), or if
        ``MALLOC_MMAP_THRESHOLD_`` is in the environment (its value rules, as glibc reads it).
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


class DaemonBackend:
    """The Net API backend of a node daemon (see the module docs).

    Args:
        transport: The node's transport (identity, UDP socket, relay).
        **stack_options: Passed to the requestor's :class:`~golem_vpn.Stack` per network.
    """

    def __init__(self, transport: UdpTransport, **stack_options: Any) -> None:
        self._transport = transport
        self._plane = ControlPlane(transport)
        self._coordinator = Coordinator(transport, self._plane)
        self._member = Member(transport, self._plane)
        self._interfaces: dict[str, Interface] = {}
        self._stack_options = stack_options
        self._exeunit = ExeUnit(self)

    @property
    def node_id(self) -> str:
        return self._transport.node_id

    @property
    def transport(self) -> UdpTransport:
        return self._transport

    def interface(self, network_id: str) -> Interface:
        """This node's interface in a network (as requestor or provider)."""
        interface = self._interfaces.get(network_id)
        if interface is None or interface.closed:
            raise NetworkNotFound(f"network {network_id!r} is not on this node")
        return interface

    async def network_created(self, network: Network) -> None:
        self._interfaces[network.id] = self._coordinator.create(
            network.id, str(network.network), str(network.requestor_ip), **self._stack_options
        )

    async def network_removed(self, network_id: str) -> None:
        self._interfaces.pop(network_id, None)
        self._coordinator.remove_network(network_id)

    async def address_added(self, network_id: str, ip: str) -> None:
        # The requestor's router accepts the address; its stack keeps answering on the
        # first one (as yagna's stack does for outgoing connections).
        self._transport.add_peer(network_id, self.node_id, ip)

    async def node_added(self, network: Network, node: Node) -> None:
        self._coordinator.add_node(network.id, node.id, str(node.ip))

    async def node_readdressed(self, network: Network, node: Node) -> None:
        self._coordinator.readdress(network.id, node.id, str(node.ip))

    async def node_removed(self, network_id: str, node_id: str) -> None:
        self._coordinator.remove_node(network_id, node_id)

    async def open_tcp(
        self, network_id: str, ip: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_connection(self.interface(network_id), ip, port, timeout=timeout)

    async def open_udp(self, network_id: str) -> DatagramEndpoint:
        return await open_datagram_endpoint(self.interface(network_id))

    def tap(
        self,
        network_id: str,
        source: str,
        receive: Callable[[list[bytes]], None],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> PacketTap:
        return self.interface(network_id).tap(source, receive, on_close=on_close)

    def join_deploy(
        self, net: DeployNetwork, requestor_id: str, requestor_addr: tuple[str, int] | None = None
    ) -> Interface:
        """Joins a network as a provider, from its DEPLOY ``net`` entry."""
        interface = self._member.join(net, requestor_id, requestor_addr)
        self._interfaces[net.id] = interface
        return interface

    def join_deploy_native(
        self,
        net: DeployNetwork,
        requestor_id: str,
        requestor_addr: tuple[str, int] | None = None,
        *,
        ethernet: bool = False,
    ) -> None:
        """Joins a network as a provider for a native attachment (TUN or VM frames)."""
        self._member.join_native(net, requestor_id, requestor_addr, ethernet=ethernet)

    def leave_deploy(self, network_id: str) -> None:
        """Leaves a network joined by :meth:`join_deploy` or :meth:`join_deploy_native`.

        Raises:
            NetworkNotFound: Not joined (or already removed by its requestor).
        """
        self._interfaces.pop(network_id, None)
        self._member.leave(network_id)

    def has_network(self, network_id: str) -> bool:
        """Whether this node is in the network (as its requestor, or as a provider)."""
        return self._transport.is_joined(network_id)

    @property
    def member(self) -> Member:
        """The provider side of membership (follows each network's requestor)."""
        return self._member

    @property
    def exeunit(self) -> ExeUnit:
        """The provider side: attachments of payloads to DEPLOYed networks."""
        return self._exeunit

    def status(self) -> dict[str, object]:
        host, port = self._transport.local_addr
        status: dict[str, object] = {
            "nodeId": self.node_id,
            "listenIp": f"{host}:{port}",
            "sessions": sum(
                1 for nodes in self._coordinator_nodes() for n in nodes if self._is_up(n)
            ),
        }
        public = self._transport.public_addr
        if public is not None:
            status["publicIp"] = f"{public[0]}:{public[1]}"
        stats = self._transport.native.stats()
        status["tunnelDrops"] = {reason: n for reason, n in stats["tunnel"]["drops"].items() if n}
        status["lanes"] = stats["lanes"]
        return status

    def _coordinator_nodes(self) -> list[list[str]]:
        out = []
        for network_id in list(self._interfaces):
            try:
                out.append(list(self._coordinator.nodes(network_id).values()))
            except NetworkNotFound:
                continue
        return out

    def _is_up(self, node_id: str) -> bool:
        return node_id != self.node_id and self._transport.native.is_up(node_id)

    async def aclose(self) -> None:
        """Detaches every payload (removing what the attachments made), then :meth:`close`."""
        await self._exeunit.close()
        self.close()

    def close(self) -> None:
        self._plane.close()
        self._transport.close()


class DataDirLock:
    """One daemon per data dir: an advisory lock (``flock``) on ``DATA_DIR/daemon.lock``.

    Two daemons on one data dir would share its identity and database, and answer for the
    same node id from two places. The lock file holds ``{"pid", "api"}`` of the daemon that
    has it, so a second one can say who; the kernel drops the lock when the process ends,
    however it ends, so a crashed daemon leaves nothing to clean up. The file itself stays
    (deleting it would let a third daemon lock a new file while a second still waits on the
    old one).

    Args:
        data_dir: The data dir (it exists).
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock and records this process's PID in it.

        Raises:
            DataDirLocked: Another daemon holds it (the message names its PID and Net API).
            DataDirError: The lock file cannot be opened (a read-only or full data dir).
        """
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(
                f"cannot use the data dir {self.path.parent}: {exc.strerror or exc} (the daemon "
                "writes its lock, identity and database there)"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            pid = holder.get("pid", "unknown")
            api = holder.get("api") or "not serving yet"
            raise DataDirLocked(
                f"another golem-vpn daemon (PID {pid}, Net API {api}) is using the data dir "
                f"{self.path.parent}; stop it first, or give this daemon a data dir of its own "
                "(--data-dir or $GOLEM_VPN_DATA_DIR)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.record(api=None)

    def record(self, *, api: str | None) -> None:
        """Writes ``{"pid", "api"}`` of this daemon into the lock file."""
        if self._fd is None:
            return
        data = json.dumps({"pid": os.getpid(), "api": api}).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Empties the file and drops the lock (idempotent)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor drops the flock

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


async def run(
    data_dir: Any,
    *,
    api: tuple[str, int],
    listen: tuple[str, int],
    relay: tuple[str, int] | list[tuple[str, int]] | None = None,
    hole_punching: bool = True,
    ready: Any = None,
    stop: asyncio.Event | None = None,
    started: Callable[[DaemonBackend], None] | None = None,
    limits: Limits | None = None,
) -> None:
    """Runs a node daemon until ``stop`` is set (or forever).

    Locks the data dir (:class:`DataDirLock`: one daemon per data dir), loads (or creates)
    the node's identity in ``data_dir``, binds the encrypted UDP transport
    at ``listen`` (registering with ``relay`` if given), opens the Net API store in the data
    dir and serves the Net API at ``api``; networks stored by an earlier run come back.

    Args:
        data_dir: The daemon's data dir (see :func:`golem_vpn.config.data_dir`).
        api: The Net API's ``(host, port)``; the host an address or a name.
        listen: The UDP transport's ``(host, port)``; the host an address or a name.
        relay: A relay's ``(host, port)``, or several in order of preference; a host name is
            resolved again whenever its relay stops answering.
        hole_punching: Try direct paths to relayed peers.
        ready: Called with a dict describing the running daemon (node id, addresses).
        stop: Set it to stop the daemon.
        started: Called with the daemon's backend just before ``ready``, for programs that
            run a payload in the daemon's process (a userspace attachment's sockets live
            there: :meth:`~golem_vpn.exeunit.ExeUnit.interface`); the demo's nodes do.
        limits: The Net API's bounds (default: :meth:`~golem_vpn.netapi.server.Limits.from_env`).

    Raises:
        DataDirLocked: Another daemon runs on ``data_dir``.
        ListenError: The UDP transport or the Net API cannot listen where told.
        AddressError: A host name does not resolve.
    """
    pin_mmap_threshold()
    with DataDirLock(data_dir) as lock:
        await _run(
            data_dir,
            lock,
            api=api,
            listen=listen,
            relay=relay,
            hole_punching=hole_punching,
            ready=ready,
            stop=stop,
            started=started,
            limits=limits,
        )


async def _run(
    data_dir: Any,
    lock: DataDirLock,
    *,
    api: tuple[str, int],
    listen: tuple[str, int],
    relay: tuple[str, int] | list[tuple[str, int]] | None,
    hole_punching: bool,
    ready: Any,
    stop: asyncio.Event | None,
    started: Callable[[DaemonBackend], None] | None = None,
    limits: Limits | None = None,
) -> None:
    from golem_vpn.netapi.server import serve
    from golem_vpn.netapi.store import Store
    from golem_vpn.node.identity import load_or_create

    identity, _created = load_or_create(data_dir)
    try:
        transport = UdpTransport(
            identity, listen[0], listen[1], relay=relay, hole_punching=hole_punching
        )
    except OSError as exc:
        raise listen_error(exc, "udp", *listen) from exc
    backend = DaemonBackend(transport)
    store = Store.in_data_dir(data_dir)
    runner = None
    try:
        try:
            runner = await serve(backend, store, api[0], api[1], limits=limits)
        except OSError as exc:
            raise listen_error(exc, "api", *api) from exc
        host, port = runner.addresses[0][:2]
        given = [relay] if isinstance(relay, tuple) else relay or []
        info = {
            "nodeId": identity.node_id,
            "api": f"http://{format_hostport(host, port)}",
            "udp": format_hostport(*transport.local_addr),
            "relay": ", ".join(
                format_hostport(*name)
                + (f" ({format_hostport(*addr)})" if addr != tuple(name) else "")
                for name, addr in zip(given, transport.relays, strict=True)
            )
            or None,
            "dataDir": str(data_dir),
        }
        lock.record(api=str(info["api"]))
        if started is not None:
            started(backend)
        if ready is not None:
            ready(info)
        await (stop or asyncio.Event()).wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await backend.aclose()
        store.close()
