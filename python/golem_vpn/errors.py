"""The exception hierarchy of golem-vpn.

Every error the package raises derives from :class:`GolemVpnError`. Errors that
describe bad input also derive from :class:`ValueError`, so callers that already
catch ``ValueError`` keep working. The native module (``_golem_vpn``) raises these
same classes: it looks them up here by name, so this module is the one place they
are defined.

Dropped packets are *not* errors: the Router counts them by reason (see
``Router.stats()``).
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "AddressError",
    "AddressInUse",
    "AddressOutOfRange",
    "AddressReserved",
    "AddressTaken",
    "AddressesExhausted",
    "AlreadyAttached",
    "AppKeyError",
    "AttachError",
    "AttachOptionError",
    "AttachmentNotFound",
    "BadRequest",
    "ConnectTimeout",
    "ConnectionRefused",
    "ConnectionReset",
    "ControlMessageError",
    "DataDirError",
    "DataDirLocked",
    "DatagramTooLarge",
    "DemoError",
    "DeployConfigError",
    "EndpointUnreachable",
    "Forbidden",
    "GolemVpnError",
    "IdentityError",
    "InterfaceExists",
    "InvalidNodeId",
    "ListenError",
    "NetApiError",
    "NetApiUnavailable",
    "NetworkNotFound",
    "NetworkUnreachable",
    "NodeNotFound",
    "NotConnected",
    "NotPermitted",
    "SocketClosed",
    "StackConfigError",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "SystemCommandFailed",
    "TunnelError",
    "WouldBlock",
]


class GolemVpnError(Exception):
    """Base class of every error raised by golem-vpn."""


class InvalidNodeId(GolemVpnError, ValueError):
    """A node id is not a Golem node id (``0x`` followed by 40 hex digits)."""


class AddressError(GolemVpnError, ValueError):
    """An IP address or network is malformed or cannot be used where it was given."""


class AddressOutOfRange(AddressError):
    """An IP address lies outside the network's CIDR."""


class AddressReserved(AddressError):
    """An IP address cannot be given to a node.

    The network address, the subnet broadcast address, multicast, loopback,
    unspecified and limited-broadcast (255.255.255.255) addresses are reserved.
    """


class AddressTaken(GolemVpnError):
    """An IP address is already held by another node of the network (or the node holds
    another one).

    Attributes:
        message: From the Net API client: the server's own words (its 409 ``message``).
    """

    message: str = ""


class AddressesExhausted(GolemVpnError):
    """No free host address is left in the network."""


class NetworkNotFound(GolemVpnError):
    """No network with the given id exists (or is visible to the caller)."""


class NodeNotFound(GolemVpnError):
    """No node with the given id is part of the network."""


class Forbidden(GolemVpnError):
    """The caller may not act on this resource (it belongs to another identity)."""


class DeployConfigError(GolemVpnError, ValueError):
    """A DEPLOY ``net`` configuration is malformed; the message names the field."""


class TunnelError(GolemVpnError):
    """A node-to-node tunnel failed (handshake, authentication, or transport)."""


class ControlMessageError(GolemVpnError, ValueError):
    """A control message or frame is malformed or too large, or a channel setting is invalid.

    The message names the field (``addNodes.nodes['10.0.0.1']``) or the frame part at fault.
    """


class IdentityError(GolemVpnError, ValueError):
    """A node key, signature or key file is malformed or does not verify."""


# Socket-level errors of the userspace stack. Each is also the builtin OSError subclass an
# asyncio user already catches (``except ConnectionRefusedError``), with its errno set.


class _SocketError(GolemVpnError, OSError):
    errno_default = 0

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (self.errno_default, args[0])
        super().__init__(*args)


class ConnectionRefused(_SocketError, ConnectionRefusedError):
    """Nothing listens at the destination: the peer answered the SYN with a reset."""

    errno_default = _errno.ECONNREFUSED


class ConnectionReset(_SocketError, ConnectionResetError):
    """The connection was reset by the peer after it was established."""

    errno_default = _errno.ECONNRESET


class ConnectTimeout(_SocketError, TimeoutError):
    """A connection or a ping got no answer in time (e.g. no node holds the address)."""

    errno_default = _errno.ETIMEDOUT


class NotConnected(_SocketError, BrokenPipeError):
    """The connection can no longer send: it was closed for writing or reset."""

    errno_default = _errno.EPIPE


class AddressInUse(_SocketError):
    """The port is already bound on this stack."""

    errno_default = _errno.EADDRINUSE


class DatagramTooLarge(_SocketError):
    """A datagram does not fit in one packet at the stack's MTU."""

    errno_default = _errno.EMSGSIZE


class NetworkUnreachable(_SocketError):
    """The stack has no address of the destination's family."""

    errno_default = _errno.ENETUNREACH


class SocketClosed(_SocketError):
    """The socket was already released."""

    errno_default = _errno.EBADF


class WouldBlock(_SocketError, BlockingIOError):
    """A send buffer is full; retry after the stack has been polled."""

    errno_default = _errno.EAGAIN


class StackConfigError(GolemVpnError, ValueError):
    """A userspace stack cannot be built with the given settings."""


class ListenError(GolemVpnError, OSError):
    """A daemon or relay cannot listen where it was told (the address is in use, not this
    machine's, or a port below 1024 without root); the message names the service and address,
    and ``errno`` is set when known.

    Attributes:
        service: ``"api"`` (the Net API), ``"udp"`` (the node transport) or ``"relay"``.
        address: The ``(host, port)`` it was to listen on.
    """

    service: str = ""
    address: tuple[str, int] = ("", 0)


class DataDirError(GolemVpnError, OSError):
    """The data dir cannot be used: it is a file, cannot be created, or does not exist where
    a command needs an existing one."""


class DataDirLocked(GolemVpnError):
    """Another daemon runs on this data dir (the message names its PID and API address)."""


class AppKeyError(GolemVpnError, ValueError):
    """An app key cannot be created or removed: a bad or taken name, or no such key."""


class StoreError(GolemVpnError):
    """The database cannot be used: unreadable, from a newer golem-vpn, or a constraint failed."""


class StoreUnavailable(StoreError):
    """A change cannot be written: the data dir is read-only, or its disk fails (the Net API's
    503). Nothing of the change was kept; reads still work."""


class StoreFull(StoreUnavailable):
    """A change cannot be written: the data dir's disk is full (the Net API's 507). Nothing of
    the change was kept; it can be made again once there is room."""


class NetApiError(GolemVpnError):
    """The Net API answered with an error there is no more specific class for.

    Attributes:
        status: The HTTP status, or None when there was no answer.
        message: The server's ``message`` (or body excerpt), or a description of the failure.
    """

    def __init__(self, text: str, *, status: int | None = None, message: str = "") -> None:
        super().__init__(text)
        self.status = status
        self.message = message


class BadRequest(NetApiError, ValueError):
    """A request is malformed: the server said so (HTTP 400: a bad IP, node id or body), or,
    for a port or the API URL, the client saw it before sending."""


class NetApiUnavailable(NetApiError, ConnectionError):
    """The Net API cannot be reached (nothing listens, DNS, TLS, or no answer in time)."""


# Provider side: attaching payloads (golem_vpn.exeunit) and its daemon API.


class AttachError(GolemVpnError):
    """A payload cannot be attached to its networks, or an attachment cannot be removed."""


class AttachOptionError(AttachError, ValueError):
    """An attach option is invalid: the mode, a namespace or interface name, the MTU, or the
    VM endpoint URL (HTTP 400)."""


class AttachmentNotFound(AttachError):
    """No attachment with the given id exists on this daemon (HTTP 404)."""


class InterfaceExists(AttachError):
    """The interface name is already taken in the target network namespace (HTTP 409)."""


class AlreadyAttached(AttachError):
    """A network of the DEPLOY is already joined on this node (HTTP 409)."""


class NotPermitted(AttachError, PermissionError):
    """Creating a namespace or a device needs root (``CAP_NET_ADMIN``) (HTTP 403)."""


class EndpointUnreachable(AttachError, ConnectionError):
    """The VM runtime's frame endpoint cannot be reached or bound (HTTP 502)."""


class SystemCommandFailed(AttachError):
    """A system command (iproute2 ``ip``) failed; the message holds the command and its stderr."""


# The demo (golem_vpn.demo).


class DemoError(GolemVpnError):
    """A step of ``golem-vpn demo`` failed (the message names it), or it cannot run here."""
