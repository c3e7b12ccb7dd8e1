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

__all__ = [
    "AddressError",
    "AddressOutOfRange",
    "AddressReserved",
    "AddressTaken",
    "AddressesExhausted",
    "DeployConfigError",
    "Forbidden",
    "GolemVpnError",
    "InvalidNodeId",
    "NetworkNotFound",
    "NodeNotFound",
    "TunnelError",
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
    """An IP address is already held by another node of the network."""


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
