"""The relay service: rendezvous and forwarding for nodes behind NAT (``golem-vpn relay``).

:class:`RelayService` runs a native :class:`~golem_vpn.Relay` on the asyncio loop. Nodes
register with it (signed by their node key, so no one registers someone else's id) and
send tunnel datagrams for peers they cannot reach directly through it; it forwards what it
cannot read (the datagrams are end-to-end encrypted) and stamps each with the sender's
registered id. Per-datagram work runs in Rust.
"""

from __future__ import annotations

import asyncio

from golem_vpn._golem_vpn import Relay

__all__ = ["RelayService"]

#: How often expired registrations are swept.
EXPIRE_EVERY = 10.0


class RelayService:
    """A relay on ``host:port``, served by the running loop until :meth:`close`."""

    def __init__(self, host: str = "0.0.0.0", port: int = 7464) -> None:
        self._loop = asyncio.get_running_loop()
        self._relay = Relay(host, port)
        self._loop.add_reader(self._relay.fileno(), self._on_readable)
        self._sweeper = self._loop.call_later(EXPIRE_EVERY, self._sweep)
        self._closed = False

    @property
    def local_addr(self) -> tuple[str, int]:
        return self._relay.local_addr

    @property
    def relay(self) -> Relay:
        """The native relay (stats)."""
        return self._relay

    def _on_readable(self) -> None:
        self._relay.process()

    def _sweep(self) -> None:
        self._relay.expire()
        self._sweeper = self._loop.call_later(EXPIRE_EVERY, self._sweep)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._relay.fileno())
        self._sweeper.cancel()

    async def __aenter__(self) -> RelayService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
