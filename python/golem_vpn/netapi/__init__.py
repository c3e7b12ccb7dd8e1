"""The Net API: a yagna-compatible REST API (and WebSocket gate) on the node daemon.

``server`` serves it (aiohttp), ``backend`` is what it drives (the daemon's transport and
stacks, or an in-process stand-in), ``store`` keeps its state, ``appkeys`` its keys, ``gate``
bridges WebSockets to TCP/UDP inside networks (and to a node's link, the raw gate),
``openapi`` describes it (the documents the server serves and ``docs/net-api.md`` is generated
from), and ``client`` speaks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from golem_vpn.netapi.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one submodule (the CLI needs only the client) loads no other.
    if name == "Client":
        from golem_vpn.netapi.client import Client

        return Client
    raise AttributeError(f"module 'golem_vpn.netapi' has no attribute {name!r}")
