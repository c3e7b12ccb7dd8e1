"""``HOST:PORT`` settings: parsed, host names resolved, bind failures put in words.

Every address golem-vpn takes (``daemon --api``, ``--listen`` and ``--relay``, ``relay
--listen``, ``UdpTransport(host, relay=...)``) may name its host by IP address or by host
name. The native socket code takes IP addresses only, so names are resolved here, before it
is called: :func:`resolve` picks one address (IPv4 first, since the transport's default
socket is IPv4), and :class:`golem_vpn.node.transport.UdpTransport` resolves a relay's name
again when the relay stops answering. Used by the CLI and the node layer; imports only the
standard library.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket

from golem_vpn.errors import AddressError, ListenError

__all__ = ["SERVICES", "format_hostport", "is_ip", "listen_error", "parse_hostport", "resolve"]

_OS_ERROR = re.compile(r"\s*\(os error (\d+)\)$")


def parse_hostport(text: str, what: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT``; ``:PORT`` for ``default_host``) → ``(host, port)``.

    ``HOST`` may be an IP address or a host name; it is not resolved here.

    Args:
        text: What the user gave.
        what: How messages name the setting (``--relay``).
        default_host: The host when ``text`` is ``:PORT``.

    Raises:
        AddressError: Not ``HOST:PORT`` with a port from 0 to 65535; the message names
            ``what``.
    """
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address needs its brackets to tell the port apart
        raise AddressError(f"{what} expects HOST:PORT ([ADDRESS]:PORT for IPv6), got {text!r}")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"{what} expects HOST:PORT (a port from 0 to 65535), got {text!r}")
    return host or default_host, int(port)


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (rather than a name to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve(host: str, port: int, what: str, *, family: int = socket.AF_UNSPEC) -> tuple[str, int]:
    """``(host, port)`` with ``host`` as an IP address: an address as it is, a name resolved
    (the first IPv4 address if it has any, else the first IPv6 one).

    This may block on DNS; on an event loop, run it in an executor.

    Args:
        host: An IP address or a host name.
        port: The port.
        what: How messages name the setting (``--relay``, ``relay``).
        family: ``socket.AF_INET`` or ``AF_INET6`` to accept only that family (a socket bound
            to an IPv4 address cannot reach an IPv6 one).

    Raises:
        AddressError: The name does not resolve (to an address of ``family``).
    """
    if is_ip(host):
        version = ipaddress.ip_address(host).version
        if (family, version) in ((socket.AF_INET, 6), (socket.AF_INET6, 4)):
            kind = "IPv4" if family == socket.AF_INET else "IPv6"
            raise AddressError(f"{what}: {host} is not an {kind} address, as the socket is")
        return host, port
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise AddressError(f"{what}: cannot resolve host name {host!r} ({reason})") from None
    addresses = [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        raise AddressError(f"{what}: host name {host!r} has no usable address")
    ipv4 = [a for a in addresses if ":" not in a]
    return (ipv4 or addresses)[0], port


#: What :func:`listen_error` calls each service in its message.
SERVICES = {"api": "the Net API", "udp": "the UDP transport", "relay": "the relay"}


def listen_error(exc: OSError, service: str, host: str, port: int) -> ListenError:
    """A bind failure of ``service`` (a key of :data:`SERVICES`) at ``host:port``, in words.

    Works for Python's socket errors and for the native module's (whose messages end in
    ``(os error N)`` and carry no ``errno``).
    """
    code = exc.errno
    reason = exc.strerror or str(exc)
    if code is None and (match := _OS_ERROR.search(str(exc))):
        code = int(match.group(1))
        reason = _OS_ERROR.sub("", str(exc))
    elif isinstance(exc, socket.gaierror):
        reason = f"cannot resolve {host!r}: {exc.strerror}"
    if code == errno.EADDRINUSE:
        reason = "the address is in use (by another program, or another golem-vpn daemon)"
    elif code == errno.EADDRNOTAVAIL:
        reason = f"{host} is not an address of this machine"
    elif code == errno.EACCES:
        reason = f"no permission to use port {port} (ports below 1024 need root)"
    where = format_hostport(host, port)
    error = ListenError(f"{SERVICES[service]} cannot listen on {where}: {reason}")
    error.errno = code
    error.service = service
    error.address = (host, port)
    return error
