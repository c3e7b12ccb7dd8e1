"""The kernel side of a TUN attachment: network namespaces, links, addresses, routes, hosts.

Everything here runs iproute2's ``ip`` as an asyncio subprocess (so the daemon's loop keeps
moving packets meanwhile) and raises :class:`~golem_vpn.errors.SystemCommandFailed` with the
command and its stderr when one fails, :class:`~golem_vpn.errors.NotPermitted` when the kernel
said the caller may not (not root, no ``CAP_NET_ADMIN``). :mod:`golem_vpn.exeunit.attach`
strings these steps together and undoes them on failure.

The payload's ``/etc/hosts`` lives in ``/etc/netns/NAME/hosts``: ``ip netns exec NAME``
bind-mounts that file over ``/etc/hosts`` for the programs it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from golem_vpn.errors import NotPermitted, SystemCommandFailed
from golem_vpn.model import DeployNetwork, IPAddress

__all__ = [
    "IFNAME_RE",
    "NETNS_DIR",
    "NETNS_ETC",
    "NETNS_RE",
    "HostsFile",
    "add_netns",
    "configure_tun",
    "delete_netns",
    "ip",
    "link_exists",
    "move_link",
    "netns_exists",
    "remove_hosts",
    "write_hosts",
]

#: Where ``ip netns add`` mounts named namespaces.
NETNS_DIR = Path("/run/netns")
#: Per-namespace files ``ip netns exec`` mounts over ``/etc``.
NETNS_ETC = Path("/etc/netns")
#: A namespace name we accept: a plain file name, no ``/``, not ``.`` or ``..``.
NETNS_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
#: An interface name the kernel accepts (at most 15 bytes, no ``/``, ``:`` or spaces).
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
#: Seconds one ``ip`` command may take.
COMMAND_TIMEOUT = 15.0
_DENIED = ("Operation not permitted", "Permission denied")


async def _run(args: Sequence[str]) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise SystemCommandFailed(
            f"cannot run `{shlex.join(args)}`: {args[0]!r} is not installed (Debian: iproute2)"
        ) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SystemCommandFailed(
            f"`{shlex.join(args)}` did not finish within {COMMAND_TIMEOUT:g} s"
        ) from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def ip(*args: str, netns: str | None = None) -> str:
    """Runs ``ip [-n NETNS] ARGS...``; returns its stdout.

    Raises:
        NotPermitted: The kernel refused (not root).
        SystemCommandFailed: The command failed otherwise (the message has its stderr).
    """
    command = ["ip", *(("-n", netns) if netns else ()), *args]
    code, out, err = await _run(command)
    if code != 0:
        detail = " ".join(err.split()) or f"exit status {code}"
        message = f"`{shlex.join(command)}` failed: {detail}"
        if any(text in err for text in _DENIED):
            raise NotPermitted(f"{message} (attaching a TUN device needs root)")
        raise SystemCommandFailed(message)
    return out


async def readdress_tun(
    ifname: str,
    old: str,
    new: str,
    *,
    v6: bool,
    routes: Sequence[Sequence[str]] = (),
    netns: str | None = None,
) -> None:
    """Moves a TUN device from address ``old`` to ``new`` (both ``ip/prefix``) in place.

    The old address goes first (deleting an IPv4 primary address also deletes the secondary
    ones of its subnet, which the new one would be); the kernel flushes a device's IPv4
    routes with its last IPv4 address, so ``routes`` (:func:`configure_tun`'s) are put back.
    """
    extra = ["nodad"] if v6 else []
    await ip("addr", "del", old, "dev", ifname, netns=netns)
    await ip("addr", "add", new, "dev", ifname, "noprefixroute", *extra, netns=netns)
    for route in routes:
        await ip("route", "replace", *route, netns=netns)


def netns_exists(name: str) -> bool:
    """Whether a named network namespace exists."""
    return (NETNS_DIR / name).exists()


async def add_netns(name: str) -> None:
    """Creates a named network namespace with its loopback up."""
    await ip("netns", "add", name)
    try:
        await ip("link", "set", "lo", "up", netns=name)
    except BaseException:
        with contextlib.suppress(Exception):
            await ip("netns", "delete", name)
        raise


async def delete_netns(name: str) -> None:
    """Deletes a named network namespace (its programs keep it alive until they exit)."""
    await ip("netns", "delete", name)


async def link_exists(name: str, netns: str | None = None) -> bool:
    """Whether a network interface of that name exists (in ``netns``, else ours)."""
    command = ["ip", *(("-n", netns) if netns else ()), "link", "show", "dev", name]
    code, _, err = await _run(command)
    if code == 0:
        return True
    if any(text in err for text in _DENIED):
        raise NotPermitted(f"`{shlex.join(command)}` failed: {' '.join(err.split())}")
    if netns is not None and not netns_exists(netns):
        raise SystemCommandFailed(f"network namespace {netns!r} does not exist")
    return False


async def move_link(name: str, netns: str, new_name: str) -> None:
    """Moves interface ``name`` of our namespace into ``netns`` and renames it there."""
    await ip("link", "set", "dev", name, "netns", netns)
    if new_name != name:
        await ip("link", "set", "dev", name, "name", new_name, netns=netns)


async def configure_tun(
    ifname: str, networks: Sequence[DeployNetwork], *, mtu: int, netns: str | None = None
) -> tuple[list[str], list[list[str]]]:
    """Addresses, routes, MTU and link state of a fresh TUN device for its networks.

    Each network gives the device its DEPLOY ``nodeIp`` with the network's prefix (IPv6 without
    duplicate address detection, which a point-to-point device does not need) and one route to
    the network: via the DEPLOY gateway (``onlink``) when it is another node, else straight on
    the device. An IPv4 network also gets ``224.0.0.0/4`` on the device, so multicast goes
    through the VPN (the router fans it out).

    Returns:
        The addresses given (``ip/prefix``) and the routes (``ip route`` arguments after the
        verb), for :func:`readdress_tun` to restore.
    """
    await ip("link", "set", "dev", ifname, "mtu", str(mtu), netns=netns)
    # No IPv6 link-local address: a point-to-point device needs none (no neighbour
    # discovery), and the router solicitations and MLD reports the kernel would send from it
    # can only be dropped (a link-local source is no node's address).
    await ip("link", "set", "dev", ifname, "addrgenmode", "none", netns=netns)
    await ip("link", "set", "dev", ifname, "up", netns=netns)
    addresses: list[str] = []
    routes: list[list[str]] = []
    for net in networks:
        address = f"{net.node_ip}/{net.network.prefixlen}"
        extra = ["nodad"] if net.network.version == 6 else []
        await ip("addr", "add", address, "dev", ifname, "noprefixroute", *extra, netns=netns)
        addresses.append(address)
        route = [str(net.network)]
        if net.gateway is not None and net.gateway != net.node_ip:
            route += ["via", str(net.gateway), "dev", ifname, "onlink"]
        else:
            route += ["dev", ifname]
        routes.append(route)
        if isinstance(net.network, IPv4Network) and ["224.0.0.0/4", "dev", ifname] not in routes:
            routes.append(["224.0.0.0/4", "dev", ifname])
    for route in routes:
        await ip("route", "add", *route, netns=netns)
    return addresses, routes


@dataclass(frozen=True)
class HostsFile:
    """What :func:`write_hosts` did, so that :func:`remove_hosts` undoes exactly that."""

    path: Path
    created_file: bool
    created_dir: bool
    marker: str


_LOCALHOST = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def write_hosts(netns: str, marker: str, hosts: Mapping[str, IPAddress]) -> HostsFile:
    """Writes DEPLOY ``hosts`` to ``/etc/netns/NETNS/hosts``.

    A new file gets the localhost lines and the hosts; an existing one (the namespace's owner
    wrote it) gets the hosts appended between ``# golem-vpn MARKER`` comment lines, which
    :func:`remove_hosts` takes out again.
    """
    directory = NETNS_ETC / netns
    created_dir = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hosts"
    lines = "".join(f"{addr}\t{name}\n" for name, addr in hosts.items())
    block = f"# golem-vpn {marker}\n{lines}# end golem-vpn {marker}\n"
    try:
        with path.open("x") as new:
            new.write(_LOCALHOST + block)
        created_file = True
    except FileExistsError:
        text = path.read_text()
        path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + block)
        created_file = False
    return HostsFile(path, created_file, created_dir, marker)


def remove_hosts(hosts: HostsFile) -> None:
    """Undoes :func:`write_hosts` (missing files are fine)."""
    if hosts.created_file:
        hosts.path.unlink(missing_ok=True)
        if hosts.created_dir:
            with contextlib.suppress(OSError):
                hosts.path.parent.rmdir()  # only if nobody else put files there
        return
    with contextlib.suppress(FileNotFoundError):
        text = hosts.path.read_text()
        start, end = f"# golem-vpn {hosts.marker}\n", f"# end golem-vpn {hosts.marker}\n"
        head, found, rest = text.partition(start)
        if found:
            _, _, tail = rest.partition(end)
            hosts.path.write_text(head + tail)
