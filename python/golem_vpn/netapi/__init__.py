"""The Net API: a yagna-compatible REST API (and WebSocket gate) on the node daemon.

``server`` serves it (aiohttp), ``backend`` is what it drives (the daemon's transport and
stacks, or an in-process stand-in), ``store`` keeps its state, ``appkeys`` its keys, ``gate``
bridges WebSockets to TCP/UDP inside networks, and ``client`` speaks it.
"""

from golem_vpn.netapi.client import Client

__all__ = ["Client"]
