"""golem-vpn: virtual private networks for distributed compute on Golem.

A requestor creates a logical network through a yagna-compatible Net API, adds provider
nodes to it under virtual IPs, and each provider's payload then talks to the others over
plain IP sockets. The per-packet work (routing, and later the userspace stack and the
encrypted node transport) runs in the native module ``golem_vpn._golem_vpn``; the control
plane is Python.

Public names:
    Router: one node's view of one network (``inject`` / ``receive`` packets).
    GolemVpnError: the base of every error this package raises (see ``golem_vpn.errors``).
"""

from golem_vpn._golem_vpn import DROP_REASONS, MAX_PACKET_LEN, Router, __version__, build_profile
from golem_vpn.errors import (
    AddressError,
    AddressesExhausted,
    AddressOutOfRange,
    AddressReserved,
    AddressTaken,
    DeployConfigError,
    Forbidden,
    GolemVpnError,
    InvalidNodeId,
    NetworkNotFound,
    NodeNotFound,
    TunnelError,
)

__all__ = [
    "DROP_REASONS",
    "MAX_PACKET_LEN",
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
    "Router",
    "TunnelError",
    "__version__",
    "build_profile",
]
