"""golem-vpn: virtual private networks for distributed compute on Golem.

A requestor creates a logical network through a yagna-compatible Net API, adds provider
nodes to it under virtual IPs, and each provider's payload then talks to the others over
plain IP sockets. The per-packet work (routing, and later the userspace stack and the
encrypted node transport) runs in the native module ``golem_vpn._golem_vpn``; the control
plane is Python.

Public names:
    Router: one node's view of one network (``inject`` / ``receive`` packets).
    Stack: a userspace TCP/IP stack (smoltcp) for one node, sans-IO.
    Interface: runs a Stack on the asyncio loop.
    open_connection, start_server, open_datagram_endpoint: asyncio sockets over the VPN.
    LocalNetwork: a whole virtual network in one process (routers + stacks, linked in memory).
    GolemVpnError: the base of every error this package raises (see ``golem_vpn.errors``).
"""

from golem_vpn._golem_vpn import (
    DROP_REASONS,
    MAX_PACKET_LEN,
    Identity,
    NodeTransport,
    Relay,
    Router,
    Stack,
    TcpStatus,
    __version__,
    build_profile,
)
from golem_vpn.errors import (
    AddressError,
    AddressesExhausted,
    AddressOutOfRange,
    AddressReserved,
    AddressTaken,
    DeployConfigError,
    Forbidden,
    GolemVpnError,
    IdentityError,
    InvalidNodeId,
    NetworkNotFound,
    NodeNotFound,
    TunnelError,
)
from golem_vpn.interface import Interface
from golem_vpn.local import LinkConditions, LocalNetwork, LocalNode
from golem_vpn.streams import (
    DatagramEndpoint,
    Server,
    create_connection,
    create_server,
    open_connection,
    open_datagram_endpoint,
    start_server,
)

__all__ = [
    "DROP_REASONS",
    "MAX_PACKET_LEN",
    "AddressError",
    "AddressOutOfRange",
    "AddressReserved",
    "AddressTaken",
    "AddressesExhausted",
    "DatagramEndpoint",
    "DeployConfigError",
    "Forbidden",
    "GolemVpnError",
    "Identity",
    "IdentityError",
    "Interface",
    "InvalidNodeId",
    "LinkConditions",
    "LocalNetwork",
    "LocalNode",
    "NetworkNotFound",
    "NodeNotFound",
    "NodeTransport",
    "Relay",
    "Router",
    "Server",
    "Stack",
    "TcpStatus",
    "TunnelError",
    "__version__",
    "build_profile",
    "create_connection",
    "create_server",
    "open_connection",
    "open_datagram_endpoint",
    "start_server",
]
