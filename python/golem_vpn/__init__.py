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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
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

# The native module, asyncio and the stack load on first use of a name that needs them, so
# that ``golem-vpn --help`` and the CLI's REST commands start fast (see benches/cli_startup.py).
_LAZY = {
    **dict.fromkeys(
        (
            "DROP_REASONS",
            "MAX_PACKET_LEN",
            "Identity",
            "NodeTransport",
            "Relay",
            "Router",
            "Stack",
            "TcpStatus",
            "__version__",
            "build_profile",
        ),
        "golem_vpn._golem_vpn",
    ),
    "Interface": "golem_vpn.interface",
    **dict.fromkeys(("LinkConditions", "LocalNetwork", "LocalNode"), "golem_vpn.local"),
    **dict.fromkeys(
        (
            "DatagramEndpoint",
            "Server",
            "create_connection",
            "create_server",
            "open_connection",
            "open_datagram_endpoint",
            "start_server",
        ),
        "golem_vpn.streams",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'golem_vpn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
