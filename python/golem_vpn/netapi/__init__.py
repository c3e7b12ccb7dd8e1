"""The Net API: a yagna-compatible REST API (and WebSocket gate) on the node daemon.

``server`` serves it (aiohttp), ``backend`` is what it drives (the daemon's transport and
stacks, or an in-process stand-in), ``store`` keeps its state, and ``client`` speaks it.
"""
