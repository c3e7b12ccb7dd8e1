"""The relay service: rendezvous and forwarding for nodes behind NAT (``golem-vpn relay``).

:class:`RelayService` runs a native :class:`~golem_vpn.Relay` on the asyncio loop. Nodes
register with it (signed by their node key, so no one registers someone else's id) and
send tunnel datagrams for peers they cannot reach directly through it; it forwards what it
cannot read (the datagrams are end-to-end encrypted) and stamps each with the sender's
registered id. Per-datagram work runs in Rust.

:func:`probe` asks a relay whether it answers (a node's transport uses it to notice a relay
it knows by host name going away, and then resolves the name again).
"""

from __future__ import annotations

import asyncio
import struct
import time

from golem_vpn._golem_vpn import Identity, Relay
from golem_vpn.hostport import resolve

__all__ = ["REGISTER_DOMAIN", "RelayService", "probe", "register_message"]

#: How often expired registrations are swept.
EXPIRE_EVERY = 10.0
#: What a registration's signature covers first (``rust/relay``'s ``REGISTER_DOMAIN``).
REGISTER_DOMAIN = b"golem-vpn/relay-register/v1"
_REGISTER, _REGISTERED = 0x10, 0x11


class RelayService:
    """A relay on ``host:port`` (``host`` an address or a name), served by the running loop
    until :meth:`close`.

    Raises:
        AddressError: ``host`` is a name that does not resolve.
        OSError: The socket cannot be bound.
    """

    def __init__(self, host: str = "0.0.0.0", port: int = 7464) -> None:
        self._loop = asyncio.get_running_loop()
        self._relay = Relay(*resolve(host, port, "relay host"))
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


def register_message(identity: Identity, unix_time: int | None = None) -> bytes:
    """A relay registration of ``identity``, signed, as ``rust/relay`` reads it:
    ``0x10``, node id (20 bytes), unix time in milliseconds (u64, big-endian), signature
    (65 bytes) over :data:`REGISTER_DOMAIN` + node id + time."""
    node = bytes.fromhex(identity.node_id[2:])
    stamp = struct.pack(">Q", int(time.time() * 1000) if unix_time is None else unix_time)
    return bytes([_REGISTER]) + node + stamp + identity.sign(REGISTER_DOMAIN + node + stamp)


async def probe(addr: tuple[str, int], *, timeout: float = 2.0) -> bool:
    """Whether a relay answers at ``addr`` (an IP address and port) within ``timeout``.

    Sends a registration of a throwaway identity (sent twice, against loss) from a socket of
    its own, so the caller's registration at the relay is left alone; the relay forgets the
    throwaway one when it expires. False at once if the port is closed (ICMP unreachable).
    """
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bool] = loop.create_future()

    class _Answer(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, _addr: tuple[str | object, int]) -> None:
            if data[:1] == bytes([_REGISTERED]) and not answered.done():
                answered.set_result(True)

        def error_received(self, exc: Exception) -> None:
            if not answered.done():
                answered.set_result(False)

    try:
        transport, _ = await loop.create_datagram_endpoint(_Answer, remote_addr=addr)
    except OSError:
        return False
    try:
        message = register_message(Identity.generate())
        transport.sendto(message)
        resend = loop.call_later(timeout / 2, lambda: transport.sendto(message))
        try:
            async with asyncio.timeout(timeout):
                return await answered
        except TimeoutError:
            return False
        finally:
            resend.cancel()
    finally:
        transport.close()
