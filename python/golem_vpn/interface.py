"""The asyncio driver of one userspace :class:`~golem_vpn.Stack` (the thin I/O shell).

A :class:`Interface` owns a sans-IO ``Stack`` and runs it on the running event loop: packets
that arrive for the node are handed to :meth:`Interface.deliver`; the interface polls the
stack soon after any activity and again at the stack's next timer (``poll_at``), gives every
outgoing packet to its ``transmit`` callback, and wakes the sockets whose ids the stack
reports as ready. Sockets (``golem_vpn.streams``) register a handler per socket id.

The ``transmit`` callback / :meth:`deliver` pair is the seam between the stack and whatever
carries packets: the in-process :class:`~golem_vpn.local.LocalNetwork` or the encrypted node
transport. :meth:`Interface.tap` opens the same seam to packets that bypass the stack: the
packets from one source address go to a callback instead, and :meth:`PacketTap.send` sends
IP packets as this node (the Net API's raw gate uses it). Works under any asyncio loop
(uvloop included); never sets a policy.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterable
from ipaddress import ip_address
from typing import Protocol

from golem_vpn._golem_vpn import Stack
from golem_vpn.errors import AddressError, ConnectTimeout

__all__ = ["Interface", "PacketTap", "SocketHandler"]

#: How many packets one stack poll may return before the interface yields to the loop.
POLL_BUDGET = 1024
#: Polls per loop iteration at most (keeps one busy interface from starving the loop).
MAX_POLLS_PER_TURN = 64


class SocketHandler(Protocol):
    """What the interface calls when the stack says a socket may have changed."""

    def on_ready(self) -> None: ...


class Interface:
    """Runs one :class:`~golem_vpn.Stack` on the running asyncio loop.

    Args:
        stack: The stack to drive.
        transmit: Called with each batch of IP packets the stack sends.
        name: A label for ``repr`` and errors.

    The interface must be created and used on one event loop thread.
    """

    def __init__(
        self, stack: Stack, transmit: Callable[[list[bytes]], None], *, name: str = ""
    ) -> None:
        self._stack = stack
        self._transmit = transmit
        self._name = name
        self._loop = asyncio.get_running_loop()
        self._handlers: dict[int, SocketHandler] = {}
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._icmp: int | None = None
        self._pings: dict[int, asyncio.Future[float]] = {}
        self._ping_seq = itertools.count(int.from_bytes(os.urandom(2), "big"))
        self._taps: dict[bytes, list[PacketTap]] = {}

    def __repr__(self) -> str:
        return f"Interface({self._name!r}, addresses={self._stack.addresses})"

    @property
    def stack(self) -> Stack:
        """The driven stack."""
        return self._stack

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the interface runs on."""
        return self._loop

    @property
    def addresses(self) -> list[str]:
        """The node's addresses (without prefix)."""
        return [a.split("/")[0] for a in self._stack.addresses]

    @property
    def closed(self) -> bool:
        return self._closed

    def register(self, socket_id: int, handler: SocketHandler) -> None:
        """Routes readiness of ``socket_id`` to ``handler``."""
        self._handlers[socket_id] = handler

    def unregister(self, socket_id: int) -> None:
        self._handlers.pop(socket_id, None)

    def deliver(self, packets: Iterable[bytes]) -> None:
        """Hands packets that arrived for this node to the stack (processed on next poll).

        Packets from a tapped source address go to their taps instead (see :meth:`tap`).
        """
        if self._closed:
            return
        if self._taps:
            packets = self._divert(packets)
        if self._stack.receive_many(packets):
            self.schedule()

    def transmit(self, packets: list[bytes]) -> None:
        """Sends IP packets as this node, past the stack (the carrier routes them as it
        routes the stack's own: the source must be one of this node's addresses). Nothing
        is sent once the interface is closed."""
        if not self._closed and packets:
            self._transmit(packets)

    def tap(
        self,
        source: str,
        receive: Callable[[list[bytes]], None],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> PacketTap:
        """Diverts the packets that arrive from ``source`` to ``receive``, past the stack.

        While the tap is open, every packet whose IP source address is ``source`` goes to
        ``receive`` (called synchronously from :meth:`deliver`, with the packets of one
        batch) and the stack never sees it; several taps on one address each get every
        packet. The carrier has already checked that the sending node holds the source
        address, so a tap on a node's address takes exactly that node's packets.

        Args:
            source: The IP address (of a remote node) whose packets to take.
            receive: Called with each batch of packets from ``source``.
            on_close: Called once when the interface closes while the tap is open.

        Raises:
            AddressError: ``source`` is not an IP address.
        """
        tap = PacketTap(self, _packed(source), receive, on_close)
        self._taps.setdefault(tap.source, []).append(tap)
        return tap

    def _untap(self, tap: PacketTap) -> None:
        taps = self._taps.get(tap.source)
        if taps is not None and tap in taps:
            taps.remove(tap)
            if not taps:
                del self._taps[tap.source]

    def _divert(self, packets: Iterable[bytes]) -> list[bytes]:
        """The packets for the stack; the tapped ones go to their taps."""
        rest: list[bytes] = []
        taken: dict[bytes, list[bytes]] = {}
        taps = self._taps
        for packet in packets:
            version = packet[0] >> 4 if packet else 0
            if version == 4 and len(packet) >= 20:
                source = packet[12:16]
            elif version == 6 and len(packet) >= 40:
                source = packet[8:24]
            else:
                rest.append(packet)
                continue
            if source in taps:
                taken.setdefault(source, []).append(packet)
            else:
                rest.append(packet)
        for source, batch in taken.items():
            for tap in list(taps.get(source, ())):
                tap.receive(batch)
        return rest

    def schedule(self) -> None:
        """Polls the stack soon (coalesced: at most one pending poll)."""
        if self._soon is None and not self._closed:
            self._soon = self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._soon = None
        if self._closed:
            return
        stack = self._stack
        for _ in range(MAX_POLLS_PER_TURN):
            out = stack.poll(self._loop.time(), POLL_BUDGET)
            if out:
                self._transmit(out)
            ready = stack.take_ready()
            for socket_id in ready:
                handler = self._handlers.get(socket_id)
                if handler is not None:
                    handler.on_ready()
            if len(out) < POLL_BUDGET and not ready:
                break
        else:
            self.schedule()  # still busy: continue on the next loop turn
        self._arm_timer()

    def _arm_timer(self) -> None:
        at = self._stack.poll_at(self._loop.time())
        if at is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._run()

    def close(self) -> None:
        """Stops driving the stack; pending pings fail, sockets stop being woken."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._soon, self._timer):
            if handle is not None:
                handle.cancel()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionAbortedError("interface closed"))
        handlers = list(self._handlers.values())
        self._handlers.clear()
        for handler in handlers:
            closer = getattr(handler, "on_interface_closed", None)
            if closer is not None:
                closer()
        taps = [tap for group in self._taps.values() for tap in group]
        self._taps.clear()
        for tap in taps:
            tap._interface_closed()

    # ICMP echo -----------------------------------------------------------------------------

    async def ping(
        self, host: str, *, timeout: float = 5.0, payload: bytes = b"golem-vpn"
    ) -> float:
        """Sends one ICMP echo request to ``host`` and waits for the reply.

        Returns:
            The round-trip time in seconds.

        Raises:
            ConnectTimeout: No reply within ``timeout`` seconds.
            NetworkUnreachable: The stack has no address of ``host``'s family.
        """
        if self._icmp is None:
            self._icmp = self._stack.icmp_open()
            self.register(self._icmp, _PingHandler(self))
        seq = next(self._ping_seq) & 0xFFFF
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[seq] = fut
        started = time.perf_counter()  # loop.time() may be ms-coarse (uvloop)
        try:
            self._stack.ping_send(self._icmp, host, seq, payload)
            self.schedule()
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                raise ConnectTimeout(f"no echo reply from {host} within {timeout:g} s") from None
        finally:
            self._pings.pop(seq, None)
        return fut.result() - started


class PacketTap:
    """The packets of one source address, taken from an :class:`Interface`; see
    :meth:`Interface.tap`.

    Attributes:
        source: The tapped address, packed (4 or 16 bytes).
        receive: Called with each batch of packets from ``source``.
    """

    def __init__(
        self,
        interface: Interface,
        source: bytes,
        receive: Callable[[list[bytes]], None],
        on_close: Callable[[], None] | None,
    ) -> None:
        self._interface = interface
        self.source = source
        self.receive = receive
        self._on_close = on_close
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or the interface closed."""
        return self._closed

    def send(self, packets: list[bytes]) -> None:
        """Sends IP packets as the interface's node (:meth:`Interface.transmit`); nothing is
        sent once the tap is closed."""
        if not self._closed:
            self._interface.transmit(packets)

    def close(self) -> None:
        """Gives the source's packets back to the stack (idempotent)."""
        if not self._closed:
            self._closed = True
            self._interface._untap(self)

    def _interface_closed(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()


def _packed(address: str) -> bytes:
    try:
        return ip_address(address).packed
    except ValueError:
        raise AddressError(f"{address!r} is not an IP address") from None


class _PingHandler:
    def __init__(self, interface: Interface) -> None:
        self._interface = interface

    def on_ready(self) -> None:
        iface = self._interface
        assert iface._icmp is not None
        while (reply := iface.stack.ping_recv(iface._icmp)) is not None:
            _host, seq, _payload = reply
            fut = iface._pings.get(seq)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())
