"""asyncio sockets over the VPN: streams, servers and datagrams on a userspace stack.

The shapes mirror asyncio's own, so habits hold::

    reader, writer = await golem_vpn.open_connection(iface, "192.168.0.3", 8080)
    writer.write(b"hello")
    await writer.drain()
    data = await reader.read(100)      # b"" at EOF
    writer.close()
    await writer.wait_closed()

    server = await golem_vpn.start_server(handle_client, iface, 8080)
    async with server:
        await server.serve_forever()

Under the hood a :class:`TcpTransport` implements ``asyncio.Transport`` over one TCP
connection of the interface's :class:`~golem_vpn.Stack`, so asyncio's ``StreamReader``,
``StreamWriter`` and any ``asyncio.Protocol`` work unchanged:

- **Reads** move whole chunks from the stack's receive buffer to the protocol; when the
  protocol pauses reading (the reader's buffer is full), bytes stay in the stack, its TCP
  window closes and the sender slows down: backpressure end to end.
- **Writes** go straight into the stack's send buffer; what does not fit waits in the
  transport, and ``drain()`` blocks while that exceeds the high-water mark.
- **EOF**: ``write_eof()`` sends FIN after queued bytes (half-close); the peer's FIN makes
  ``read()`` return ``b""`` while writing goes on.
- **Errors**: a refused connect raises :class:`~golem_vpn.errors.ConnectionRefused`, a
  reset :class:`~golem_vpn.errors.ConnectionReset`, a connect timeout
  :class:`~golem_vpn.errors.ConnectTimeout` (subclasses of the builtin
  ``ConnectionRefusedError``, ``ConnectionResetError`` and ``TimeoutError``).
- **Cancellation**: cancelling ``open_connection`` aborts the half-open connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from golem_vpn.errors import (
    ConnectionRefused,
    ConnectionReset,
    ConnectTimeout,
    GolemVpnError,
    SocketClosed,
    WouldBlock,
)
from golem_vpn.flow import WriteFlowControl
from golem_vpn.interface import Interface

__all__ = [
    "DatagramEndpoint",
    "Server",
    "TcpTransport",
    "create_connection",
    "create_server",
    "open_connection",
    "open_datagram_endpoint",
    "start_server",
]

DEFAULT_CONNECT_TIMEOUT = 10.0
_READ_CHUNK = 1024 * 1024
#: The most bytes of a queued write handed to the stack per call. The stack takes what fits
#: in its send buffer and the rest waits; slicing a bounded piece keeps the copying linear
#: (re-slicing the rest of a 16 MiB write after each partial send made it quadratic).
_SEND_SLICE = 256 * 1024
_STREAM_LIMIT = 2**16

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]


def _sockaddr(addr: tuple[str, int] | None) -> tuple[str, int] | tuple[str, int, int, int] | None:
    """Socket addresses shaped as asyncio's: ``(host, port, flowinfo, scope_id)`` for IPv6."""
    if addr is not None and ":" in addr[0]:
        return (addr[0], addr[1], 0, 0)
    return addr


class TcpTransport(WriteFlowControl, asyncio.Transport):
    """An ``asyncio.Transport`` over one TCP connection of a userspace stack."""

    def __init__(
        self, interface: Interface, socket_id: int, protocol: asyncio.BaseProtocol
    ) -> None:
        super().__init__()
        self._iface = interface
        self._stack = interface.stack
        self._id = socket_id
        self._protocol: asyncio.BaseProtocol = protocol
        status = self._stack.tcp_status(socket_id)
        self._extra: dict[str, Any] = {
            "peername": _sockaddr(status.remote),
            "sockname": _sockaddr(status.local),
            "interface": interface,
        }
        self._buffer: deque[bytes] = deque()
        self._sent_of_first = 0  # bytes of _buffer[0] the stack already took
        self._buffered = 0
        self._init_flow_control(64 * 1024)
        self._reading_paused = False
        self._eof_pending = False
        self._eof_sent = False
        self._eof_received = False
        self._closing = False
        self._lost = False
        interface.register(socket_id, self)

    # -- asyncio.BaseTransport ------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Closes after the queued bytes are sent (FIN); ``connection_lost(None)`` follows."""
        if self._closing or self._lost:
            return
        self._closing = True
        self._reading_paused = True
        if not self._buffer:
            self._finish(None, abort=False)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- asyncio.ReadTransport ------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._lost

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._closing or self._lost or not self._reading_paused:
            return
        self._reading_paused = False
        self._iface.loop.call_soon(self.on_ready)

    # -- asyncio.WriteTransport -----------------------------------------------------------

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_pending or self._eof_sent:
            raise RuntimeError("cannot write after write_eof()")
        if self._lost or self._closing:
            return
        if not data:
            return
        chunk = bytes(data)  # copies only a mutable buffer
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        if len(self._buffer) == 1:
            self._flush()
        if not self._lost:
            self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Half-closes: FIN goes out after the queued bytes; reading continues."""
        if self._eof_pending or self._eof_sent or self._lost:
            return
        self._eof_pending = True
        self._flush()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """Resets the connection at once (RST); queued bytes are dropped."""
        if self._lost:
            return
        self._finish(None, abort=True)

    # -- driven by the interface ----------------------------------------------------------

    def on_ready(self) -> None:
        if self._lost:
            return
        try:
            status = self._stack.tcp_status(self._id)
        except GolemVpnError:
            return
        if status.failure == "reset":
            self._fatal(ConnectionReset(f"connection to {self._extra['peername']} was reset"))
            return
        if status.failure == "timed_out":
            self._fatal(ConnectTimeout(f"{self._extra['peername']} stopped answering"))
            return
        if not self._reading_paused:
            self._read()
        if self._buffer or self._eof_pending:
            self._flush()
        if self._closing and not self._buffer and not self._lost:
            self._finish(None, abort=False)

    def on_interface_closed(self) -> None:
        if not self._lost:
            self._lost = True
            self._call_lost(ConnectionAbortedError("the interface was closed"))

    def _read(self) -> None:
        got = False
        while not self._reading_paused and not self._lost:
            data = self._stack.tcp_recv(self._id, _READ_CHUNK)
            if not data:
                break
            got = True
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        if got:
            self._iface.schedule()  # the window opened: let the stack say so
        if self._eof_received or self._reading_paused or self._lost:
            return
        # smoltcp's may_recv stays true while bytes are buffered: ask after reading.
        status = self._stack.tcp_status(self._id)
        if not status.may_recv and status.recv_queue == 0:
            self._eof_received = True
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open:
                self.close()

    def _flush(self) -> None:
        sent_any = False
        try:
            while self._buffer:
                chunk, start = self._buffer[0], self._sent_of_first
                whole = start == 0 and len(chunk) <= _SEND_SLICE
                piece = chunk if whole else chunk[start : start + _SEND_SLICE]
                sent = self._stack.tcp_send(self._id, piece)
                if sent == 0:
                    break
                sent_any = True
                self._buffered -= sent
                self._sent_of_first += sent
                if self._sent_of_first == len(chunk):
                    self._buffer.popleft()
                    self._sent_of_first = 0
                elif sent < len(piece):
                    break  # the send buffer is full
            if not self._buffer and self._eof_pending and not self._eof_sent:
                self._stack.tcp_shutdown(self._id)
                self._eof_sent = True
                sent_any = True
        except GolemVpnError as exc:
            self._fatal(exc)
            return
        if sent_any:
            self._iface.schedule()
        self._maybe_resume_protocol()

    def _fatal(self, exc: Exception) -> None:
        if not self._lost:
            self._finish(exc, abort=True)

    def _finish(self, exc: Exception | None, *, abort: bool) -> None:
        self._lost = True
        self._closing = True
        self._buffer.clear()
        self._sent_of_first = 0
        self._buffered = 0
        self._iface.unregister(self._id)
        try:
            if abort:
                self._stack.tcp_abort(self._id)
            self._stack.release(self._id)
        except GolemVpnError:
            pass
        self._iface.schedule()
        self._call_lost(exc)

    def _call_lost(self, exc: Exception | None) -> None:
        self._iface.loop.call_soon(self._protocol.connection_lost, exc)


class _Connecting:
    """Waits for a connect to complete or fail."""

    def __init__(self, interface: Interface, socket_id: int, target: str) -> None:
        self._stack = interface.stack
        self._id = socket_id
        self._target = target
        self.future: asyncio.Future[None] = interface.loop.create_future()

    def on_ready(self) -> None:
        if self.future.done():
            return
        status = self._stack.tcp_status(self._id)
        if status.established:
            self.future.set_result(None)
        elif status.failure == "refused":
            self.future.set_exception(ConnectionRefused(f"connection to {self._target} refused"))
        elif status.failure == "reset":
            self.future.set_exception(ConnectionReset(f"connection to {self._target} was reset"))
        elif status.failure == "timed_out":
            self.future.set_exception(ConnectTimeout(f"connection to {self._target} timed out"))

    def on_interface_closed(self) -> None:
        if not self.future.done():
            self.future.set_exception(ConnectionAbortedError("the interface was closed"))


async def create_connection(
    interface: Interface,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> tuple[TcpTransport, asyncio.BaseProtocol]:
    """Connects a protocol to ``host:port`` inside the network (like ``loop.create_connection``).

    Raises:
        ConnectionRefused: Nothing listens there.
        ConnectTimeout: No answer within ``timeout`` seconds (e.g. no node holds ``host``).
        NetworkUnreachable: The stack has no address of ``host``'s family.
        AddressError: ``host`` is not an IP address.
    """
    stack = interface.stack
    socket_id = stack.tcp_connect(host, port)
    waiter = _Connecting(interface, socket_id, f"{host}:{port}")
    interface.register(socket_id, waiter)
    interface.schedule()
    try:
        await asyncio.wait_for(waiter.future, timeout)
    except BaseException as exc:
        interface.unregister(socket_id)
        try:
            stack.tcp_abort(socket_id)
            stack.release(socket_id)
        except GolemVpnError:
            pass
        interface.schedule()
        if isinstance(exc, TimeoutError) and not isinstance(exc, GolemVpnError):
            raise ConnectTimeout(
                f"connection to {host}:{port} timed out after {timeout:g} s"
            ) from None
        raise
    protocol = protocol_factory()
    transport = TcpTransport(interface, socket_id, protocol)
    protocol.connection_made(transport)
    interface.loop.call_soon(transport.on_ready)
    return transport, protocol


async def open_connection(
    interface: Interface,
    host: str,
    port: int,
    *,
    limit: int = _STREAM_LIMIT,
    timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Opens a TCP stream to ``host:port`` inside the network (like ``asyncio.open_connection``).

    Args:
        interface: The node's interface (its userspace stack).
        host: The destination's virtual IP.
        port: The destination port.
        limit: The reader's buffer limit (as in asyncio).
        timeout: Seconds to wait for the handshake; None waits forever.

    Returns:
        ``(reader, writer)``: asyncio's own ``StreamReader`` and ``StreamWriter``.
    """
    loop = interface.loop
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(interface, lambda: protocol, host, port, timeout=timeout)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


class Server:
    """A listening TCP socket on a userspace stack (like ``asyncio.Server``).

    Use as an async context manager, or call :meth:`close` then :meth:`wait_closed`.
    Closing stops accepting; established connections stay open.
    """

    def __init__(
        self,
        interface: Interface,
        listener: int,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
    ) -> None:
        self._iface = interface
        self._listener: int | None = listener
        self._port = port
        self._factory = protocol_factory
        self._closed = interface.loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None
        interface.register(listener, self)

    @property
    def port(self) -> int:
        """The port the server listens on (useful with port 0)."""
        return self._port

    @property
    def interface(self) -> Interface:
        return self._iface

    def on_ready(self) -> None:
        stack = self._iface.stack
        while self._listener is not None:
            conn = stack.tcp_accept(self._listener)
            if conn is None:
                break
            protocol = self._factory()
            transport = TcpTransport(self._iface, conn, protocol)
            protocol.connection_made(transport)
            self._iface.loop.call_soon(transport.on_ready)

    def on_interface_closed(self) -> None:
        self.close()

    def is_serving(self) -> bool:
        return self._listener is not None

    def close(self) -> None:
        """Stops listening; connections not yet accepted are reset."""
        if self._listener is None:
            return
        self._iface.unregister(self._listener)
        with contextlib.suppress(GolemVpnError):
            self._iface.stack.release(self._listener)
        self._listener = None
        self._iface.schedule()
        if not self._closed.done():
            self._closed.set_result(None)
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        """Serves until cancelled or closed (like ``asyncio.Server.serve_forever``)."""
        if self._listener is None:
            raise RuntimeError("server is closed")
        self._serving_forever = self._iface.loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            self.close()
            raise

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def create_server(
    interface: Interface,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    port: int = 0,
    *,
    backlog: int = 128,
) -> Server:
    """Serves any ``asyncio.Protocol`` on ``port`` (like ``loop.create_server``).

    For example aiohttp's low-level ``web.Server`` is such a factory, so an aiohttp
    application can serve HTTP inside the network.

    Raises:
        AddressInUse: Something already listens on ``port``.
    """
    listener, bound = interface.stack.tcp_listen(port, backlog)
    server = Server(interface, listener, bound, protocol_factory)
    interface.schedule()
    return server


async def start_server(
    client_connected_cb: ClientConnected,
    interface: Interface,
    port: int = 0,
    *,
    backlog: int = 128,
    limit: int = _STREAM_LIMIT,
) -> Server:
    """Listens on ``port`` of the node's addresses (like ``asyncio.start_server``).

    ``client_connected_cb(reader, writer)`` is called for each connection; a coroutine
    callback runs as a task.

    Raises:
        AddressInUse: Something already listens on ``port``.
    """
    loop = interface.loop

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(interface, factory, port, backlog=backlog)


class DatagramEndpoint:
    """A UDP socket on a userspace stack: ``send`` datagrams, ``await recv()`` them.

    Each datagram travels in one packet: larger ones raise
    :class:`~golem_vpn.errors.DatagramTooLarge`. Received datagrams queue up to
    ``queue_size``; beyond that the oldest are dropped (and counted in :attr:`dropped`).
    """

    def __init__(self, interface: Interface, socket_id: int, port: int, queue_size: int) -> None:
        self._iface = interface
        self._id: int | None = socket_id
        self._port = port
        self._queue: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._queue_size = queue_size
        self._waiter: asyncio.Future[None] | None = None
        self._pending: deque[tuple[bytes, tuple[str, int]]] = deque()
        self.dropped = 0
        interface.register(socket_id, self)

    @property
    def port(self) -> int:
        return self._port

    def on_ready(self) -> None:
        if self._id is None:
            return
        stack = self._iface.stack
        while (got := stack.udp_recv_from(self._id)) is not None:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(got)
        self._flush()
        if self._queue and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def on_interface_closed(self) -> None:
        self.close()

    def _flush(self) -> None:
        if self._id is None:
            return
        while self._pending:
            data, addr = self._pending[0]
            try:
                self._iface.stack.udp_send_to(self._id, data, addr)
            except WouldBlock:
                break
            self._pending.popleft()
        self._iface.schedule()

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Queues one datagram to ``addr`` (``(ip, port)``).

        Raises:
            DatagramTooLarge: ``data`` does not fit in one packet.
            NetworkUnreachable: No local address of the destination's family.
            SocketClosed: The endpoint is closed.
        """
        if self._id is None:
            raise SocketClosed("datagram endpoint is closed")
        if self._pending:
            self._pending.append((bytes(data), addr))
            return
        try:
            self._iface.stack.udp_send_to(self._id, bytes(data), addr)
        except WouldBlock:
            self._pending.append((bytes(data), addr))
        self._iface.schedule()

    async def recv(self) -> tuple[bytes, tuple[str, int]]:
        """Waits for the next datagram: ``(data, (ip, port))``."""
        while not self._queue:
            if self._id is None:
                raise SocketClosed("datagram endpoint is closed")
            self._waiter = self._iface.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    def close(self) -> None:
        if self._id is None:
            return
        self._iface.unregister(self._id)
        with contextlib.suppress(GolemVpnError):
            self._iface.stack.release(self._id)
        self._id = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def __aenter__(self) -> DatagramEndpoint:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def open_datagram_endpoint(
    interface: Interface, port: int = 0, *, queue_size: int = 1024
) -> DatagramEndpoint:
    """Binds a UDP socket to ``port`` (0: ephemeral) on the node's addresses.

    Raises:
        AddressInUse: The port is bound already.
    """
    socket_id, bound = interface.stack.udp_bind(port)
    return DatagramEndpoint(interface, socket_id, bound, queue_size)
