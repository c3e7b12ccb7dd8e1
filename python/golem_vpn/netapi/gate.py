"""The WebSocket gate: a requestor's app reaches payloads' TCP and UDP ports over WebSockets.

``GET /net/{id}/tcp/{ip}/{port}`` (yagna's ``connect_tcp``) connects a TCP socket of the
requestor's userspace stack to ``ip:port`` *before* upgrading, so failures are plain HTTP
answers: 504 (empty body, as yagna) when the connect times out (5 s by default), 502 when the
peer refuses (yagna has no separate answer for a refusal; a reset is not a timeout, and Bad
Gateway says what happened), 404 for an unknown network. Then:

- **Bytes, not messages.** Binary *and* text messages from the client are raw stream bytes
  for the TCP socket (a text message's UTF-8 bytes); bytes from the socket go to the client
  as binary messages of up to :data:`CHUNK_SIZE`. Message boundaries mean nothing.
- **Heartbeat** (yagna's values): the server pings every 5 s and closes the WebSocket when
  nothing (data, ping, pong or close) has come from the client for 10 s. aiohttp's own
  ``heartbeat`` option is not used: it closes 2.5 s after an unanswered ping, and yagna does
  not.
- **Close.** A client close (or the idle timeout) closes the TCP socket: FIN after the bytes
  already queued, so the payload sees EOF. The payload's EOF or a reset closes the
  WebSocket (1000 after EOF, 1011 after an error, 1001 when the network or server goes).
- **Backpressure, both ways, no unbounded buffer.** Client to payload: after each message
  the pump awaits ``writer.drain()``, so while the payload is slow no message is read;
  aiohttp then stops reading the socket once its message queue holds 2 x 256 KiB, and the
  client's TCP window closes (at most about 2.5 MiB per connection with the 1 MiB message
  limit: the queue, one message in hand, the stream's write buffer). Payload to client:
  each chunk is sent with ``ws.send_bytes``; the response is made with ``writer_limit`` =
  :data:`CHUNK_SIZE`, so aiohttp waits for the HTTP transport to drain (below its low-water
  mark) at least every 64 KiB whenever the transport's buffer is above its high-water mark
  (64 KiB). While that wait lasts the pump reads nothing from the stream, the stream reader
  fills (2 x 64 KiB) and pauses the userspace socket, the stack's receive window closes and
  the payload's ``drain()`` blocks. A slow client therefore holds at most about 320 KiB per
  connection in the daemon (see :meth:`Gate.buffered`), whatever the payload sends.

Beyond yagna: ``GET /net/{id}/udp/{ip}/{port}``, one WebSocket message per datagram each way
(datagrams from other sources are dropped, as on a connected UDP socket), and the list of
live TCP connections for ``GET /net/{id}/tcp`` (yagna specifies it but never implemented it).

**The raw gate** (yagna master's ``connect_raw``): ``GET /net/{id}/raw/from/{src}/to/{dst}``
joins the WebSocket to the node at ``dst`` at the link layer. Each binary message is one
Ethernet II frame, each way; ``src`` is the requestor's own address the client speaks from,
``dst`` a node's. The client is a host on a link with that node, as a VM guest is on its
runtime's endpoint, with yagna's MACs: the client's is ``a0:13:`` + ``src`` (the requestor's),
the node's ``90:13:`` + ``dst``. Between nodes only IP packets travel (the tunnels carry no
Ethernet), so the gate does at the requestor what a VM attachment does at a provider, with a
:class:`~golem_vpn.Router` in Ethernet mode of its own: ARP requests and neighbour
solicitations for ``dst`` are answered at once, IPv4 and IPv6 frames lose their header and
go to the node as packets, and the node's packets come back with a header put on. Frames
are checked and dropped, never fatal, and each drop is counted by reason (listed with the
session by ``GET /net/{id}/raw``): the router's reasons (``truncated``, ``oversized`` above
:data:`MAX_RAW_FRAME`, ``spoofed_source`` when the IP source is not ``src``,
``unsupported_ethertype``, ``unknown_destination``...), ``not_to_destination`` (a packet
for any other address, broadcast and multicast included: this gate reaches one node),
``text`` (text messages, which yagna ignores too), ``backlog`` (a client too slow for what
the node sends: frames are dropped, as a full link drops them, after
:data:`RAW_BACKLOG`). A message over :data:`MAX_RAW_MESSAGE` closes the WebSocket with
1009. While a raw session is open, every packet from ``dst`` to the requestor goes to it and
not to the requestor's stack (as in yagna), so TCP gate connections to that node stall
until it closes. Heartbeat and idle timeout are the TCP gate's; removing the node or the
network closes the session with 1001.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from golem_vpn._golem_vpn import Router
from golem_vpn.errors import DatagramTooLarge, GolemVpnError
from golem_vpn.interface import PacketTap
from golem_vpn.netapi.backend import VpnBackend
from golem_vpn.streams import DatagramEndpoint

__all__ = [
    "CHUNK_SIZE",
    "CLIENT_TIMEOUT",
    "CONNECT_TIMEOUT",
    "HEARTBEAT_INTERVAL",
    "MAX_RAW_FRAME",
    "MAX_RAW_MESSAGE",
    "RAW_BACKLOG",
    "Connection",
    "Gate",
    "NotWebSocket",
    "RawTarget",
]

#: yagna's ``TCP_CONN_TIMEOUT``: how long the gate waits for the TCP handshake.
CONNECT_TIMEOUT = 5.0
#: yagna's ``HEARTBEAT_INTERVAL``: seconds between the server's pings.
HEARTBEAT_INTERVAL = 5.0
#: yagna's ``CLIENT_TIMEOUT``: the WebSocket closes after this long without a client message.
CLIENT_TIMEOUT = 10.0
#: Largest binary message the gate sends, and its WebSocket writer's drain interval.
CHUNK_SIZE = 64 * 1024
#: How long a close waits for the client's close frame (and for pending bytes to drain).
CLOSE_TIMEOUT = 5.0
#: Largest message a client may send on the TCP gate; larger ones close it with 1009. yagna's
#: actix codec takes frames up to 64 KiB, and SDKs send 64 KiB chunks: 1 MiB is generous.
MAX_TCP_MESSAGE = 1024 * 1024
#: Largest message a client may send on the UDP gate: the largest UDP payload.
MAX_UDP_MESSAGE = 65535
#: Largest frame the raw gate takes: the largest IP packet and an Ethernet header. Larger
#: ones (up to :data:`MAX_RAW_MESSAGE`) are dropped and counted as ``oversized``.
MAX_RAW_FRAME = 65535 + 14
#: Largest message a client may send on the raw gate; larger ones close it with 1009.
MAX_RAW_MESSAGE = 128 * 1024
#: Frames from the node the raw gate holds for a slow client; more are dropped (``backlog``).
RAW_BACKLOG = 1024

_log = logging.getLogger(__name__)

TCP = 6
UDP = 17
#: :attr:`Connection.protocol` of a raw gate session (frames, not one IP protocol).
RAW = 0


class NotWebSocket(Exception):
    """The request to a gate URL is not a WebSocket upgrade (the server answers 400)."""


@dataclass(frozen=True)
class Connection:
    """One live gate connection, in the Net API's ``Connection`` shape.

    Attributes:
        protocol: The IP protocol number: 6 (TCP) or 17 (UDP); 0 for a raw gate session.
        local_ip: The requestor's address the socket uses.
        local_port: The requestor's port.
        remote_ip: The payload's address.
        remote_port: The payload's port.
    """

    protocol: int
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int

    def to_json(self) -> dict[str, object]:
        """``{protocol, localIp, localPort, remoteIp, remotePort}``, as in ya-client."""
        return {
            "protocol": self.protocol,
            "localIp": self.local_ip,
            "localPort": self.local_port,
            "remoteIp": self.remote_ip,
            "remotePort": self.remote_port,
        }


@dataclass(eq=False)
class _Session:
    """One WebSocket and the socket it is joined to."""

    network_id: str
    connection: Connection
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    abort: Callable[[], None]
    #: The close code and reason to send when the socket goes away for a known reason.
    going_away: tuple[int, bytes] | None = None
    #: Set when the socket side ended and its pump is closing the WebSocket.
    socket_ended: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: A raw gate session's frames and counters.
    raw: _RawPort | None = None


@dataclass(frozen=True)
class RawTarget:
    """Where a raw gate session goes; the server has checked every field.

    Attributes:
        network_id: The network.
        cidr: Its range (``"192.168.0.0/24"``).
        requestor_id: The requestor's node id (this node).
        src: The requestor's address the client speaks from.
        dst: The node's address.
        node_id: The node that holds ``dst``.
    """

    network_id: str
    cidr: str
    requestor_id: str
    src: str
    dst: str
    node_id: str


class _RawPort:
    """One raw gate session's link: a router in Ethernet mode, the frames waiting for the
    client, and the counters (see the module docs)."""

    def __init__(self, target: RawTarget) -> None:
        self.target = target
        self.router = Router(
            target.network_id,
            target.cidr,
            target.requestor_id,
            [target.src],
            ethernet=True,
            requestor=target.requestor_id,
        )
        self.router.add_node(target.node_id, target.dst)
        self._local = self.router.node_id
        self._dst = ip_address(target.dst).packed
        self.tap: PacketTap | None = None
        self.frames: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.ended = False
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        self.drops: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _queue(self, frame: bytes) -> None:
        if len(self.frames) >= RAW_BACKLOG:
            self.drop("backlog")
        else:
            self.frames.append(frame)

    def arrived(self, packets: list[bytes]) -> None:
        """The tap's callback: packets from the node, as frames for the client."""
        receive, node_id = self.router.receive, self.target.node_id
        for packet in packets:
            frame = receive(packet, node_id)
            if frame is not None:  # else dropped, and counted by the router
                self._queue(frame)
        self.wakeup.set()

    async def send(self, data: bytes) -> None:
        """One frame from the client: to the node as a packet, or answered here."""
        packets = []
        for node_id, packet in self.router.inject(data):
            if node_id == self._local:  # an ARP or neighbour answer, for the client
                self._queue(packet)
                self.wakeup.set()
            elif _destination(packet) == self._dst:
                packets.append(packet)
            else:
                self.drop("not_to_destination")
        if packets and self.tap is not None:
            try:
                self.tap.send(packets)
            except GolemVpnError as exc:  # the network went away under the session
                raise _Stop(WSCloseCode.GOING_AWAY, _reason(exc)) from None
            self.frames_in += 1
            self.bytes_in += len(data)

    def text(self, _: str) -> None:
        self.drop("text")

    def end(self) -> None:
        """Stops the session: the tap is closed and the outbound pump closes the WebSocket."""
        self.ended = True
        if self.tap is not None:
            self.tap.close()
        self.wakeup.set()

    def to_json(self) -> dict[str, object]:
        """The session as ``GET /net/{id}/raw`` lists it."""
        stats = self.router.stats()
        drops = {k: v for k, v in stats["drops"].items() if v}
        for reason, count in self.drops.items():
            drops[reason] = drops.get(reason, 0) + count
        return {
            "src": self.target.src,
            "dst": self.target.dst,
            "nodeId": self.target.node_id,
            "framesIn": self.frames_in,
            "bytesIn": self.bytes_in,
            "framesOut": self.frames_out,
            "bytesOut": self.bytes_out,
            "drops": drops,
        }


def _destination(packet: bytes) -> bytes:
    """The destination address of an IP packet the router let through, packed."""
    return packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]


def _address(info: Any) -> tuple[str, int]:
    if isinstance(info, tuple) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return "", 0


class Gate:
    """The WebSocket gate of one Net API server. See the module docs.

    Args:
        backend: Gives the requestor's sockets.
        connect_timeout: Seconds to wait for a TCP handshake (504 after that).
        heartbeat: Seconds between pings to the client.
        idle_timeout: Seconds without a client message before the WebSocket is closed.
        close_timeout: Seconds a close waits for the client's close frame.
    """

    def __init__(
        self,
        backend: VpnBackend,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        heartbeat: float = HEARTBEAT_INTERVAL,
        idle_timeout: float = CLIENT_TIMEOUT,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self._backend = backend
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout
        self._sessions: dict[str, set[_Session]] = {}

    # -- what the API shows ----------------------------------------------------------------

    def connections(self, network_id: str, protocol: int | None = TCP) -> list[Connection]:
        """The live connections of a network (of one ``protocol``, or all with None)."""
        return [
            s.connection
            for s in self._sessions.get(network_id, ())
            if protocol is None or s.connection.protocol == protocol
        ]

    def raw_sessions(self, network_id: str) -> list[dict[str, object]]:
        """The live raw gate sessions of a network, with their counters."""
        return [s.raw.to_json() for s in self._sessions.get(network_id, ()) if s.raw is not None]

    def buffered(self) -> int:
        """Bytes the gate holds on its way to clients: every WebSocket's HTTP transport buffer.

        With the stream readers' buffers (at most 128 KiB per TCP connection, asyncio's
        ``2 * limit``) this is all the gate ever buffers toward clients.
        """
        total = 0
        for sessions in self._sessions.values():
            for session in sessions:
                transport = session.transport
                if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
                    total += transport.get_write_buffer_size()
        return total

    # -- closing from the outside ----------------------------------------------------------

    def close_network(self, network_id: str, *, reason: bytes = b"network removed") -> None:
        """Start closing every connection of a network (it is being removed)."""
        for session in list(self._sessions.get(network_id, ())):
            self._stop(session, reason)

    def close_peer(self, network_id: str, ip: str, *, reason: bytes = b"node removed") -> None:
        """Start closing the connections of a network to ``ip`` (its node was removed)."""
        for session in list(self._sessions.get(network_id, ())):
            if session.connection.remote_ip == ip:
                self._stop(session, reason)

    async def close_all(self) -> None:
        """Close every connection (the server is stopping) and wait for them to end."""
        sessions = [s for group in self._sessions.values() for s in group]
        for session in sessions:
            self._stop(session, b"server shutting down")
        if sessions:
            waits = [asyncio.ensure_future(s.done.wait()) for s in sessions]
            _, pending = await asyncio.wait(waits, timeout=self.close_timeout + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _stop(self, session: _Session, reason: bytes) -> None:
        """Abort the socket; its pump then closes the WebSocket with 1001 and ``reason``."""
        if session.going_away is None:
            session.going_away = (WSCloseCode.GOING_AWAY, reason)
        session.abort()

    # -- the handlers ----------------------------------------------------------------------

    def _websocket(self, request: web.Request, max_msg_size: int) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            timeout=self.close_timeout,
            receive_timeout=self.idle_timeout,
            autoping=True,
            compress=False,  # payload bytes are often compressed already; keep the CPU
            max_msg_size=max_msg_size,
            writer_limit=CHUNK_SIZE,
        )
        if not ws.can_prepare(request).ok:
            raise NotWebSocket("this URL takes a WebSocket upgrade request")
        return ws

    async def tcp(
        self, request: web.Request, network_id: str, ip: str, port: int
    ) -> web.StreamResponse:
        """Serve ``GET /net/{id}/tcp/{ip}/{port}``; ``ip`` and ``port`` are validated.

        Raises:
            NotWebSocket: Not an upgrade request (checked before connecting).
            ConnectTimeout: No answer within ``connect_timeout`` (the server answers 504).
            ConnectionRefused: Nothing listens at ``ip:port`` (502).
            NetworkNotFound: The backend has no such network (404).
        """
        ws = self._websocket(request, MAX_TCP_MESSAGE)
        reader, writer = await self._backend.open_tcp(network_id, ip, port, self.connect_timeout)
        try:
            await ws.prepare(request)
        except BaseException:
            writer.transport.abort()
            raise
        local = _address(writer.get_extra_info("sockname"))
        remote = _address(writer.get_extra_info("peername"))
        connection = Connection(TCP, local[0], local[1], remote[0] or ip, remote[1] or port)
        session = _Session(network_id, connection, ws, request.transport, writer.transport.abort)
        self._add(session)
        _log.info("gate: TCP %s:%d open in network %s", ip, port, network_id)
        try:
            await self._run(
                session,
                inbound=lambda data: self._to_stream(writer, data),
                outbound=lambda: self._from_stream(session, reader),
            )
        finally:
            if not writer.is_closing():
                writer.close()  # FIN after what is queued: the payload sees EOF
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), self.close_timeout)
            self._remove(session)
            _log.info("gate: TCP %s:%d closed in network %s", ip, port, network_id)
        return ws

    async def udp(
        self, request: web.Request, network_id: str, ip: str, port: int
    ) -> web.StreamResponse:
        """Serve ``GET /net/{id}/udp/{ip}/{port}``: one message per datagram each way.

        Raises:
            NotWebSocket: Not an upgrade request.
            NetworkNotFound: The backend has no such network (404).
        """
        ws = self._websocket(request, MAX_UDP_MESSAGE)
        endpoint = await self._backend.open_udp(network_id)
        try:
            await ws.prepare(request)
        except BaseException:
            endpoint.close()
            raise
        # A datagram endpoint is bound to every address of the stack: no single local IP.
        connection = Connection(UDP, "", endpoint.port, ip, port)
        session = _Session(network_id, connection, ws, request.transport, endpoint.close)
        self._add(session)
        try:
            await self._run(
                session,
                inbound=lambda data: self._to_datagram(endpoint, data, (ip, port)),
                outbound=lambda: self._from_datagrams(session, endpoint, (ip, port)),
            )
        finally:
            endpoint.close()
            self._remove(session)
        return ws

    async def raw(self, request: web.Request, target: RawTarget) -> web.StreamResponse:
        """Serve ``GET /net/{id}/raw/from/{src}/to/{dst}``: Ethernet frames to and from the
        node at ``target.dst`` (see the module docs); ``target`` is validated.

        Raises:
            NotWebSocket: Not an upgrade request.
            NetworkNotFound: The backend has no such network (404).
        """
        ws = self._websocket(request, MAX_RAW_MESSAGE)
        port = _RawPort(target)
        port.tap = self._backend.tap(target.network_id, target.dst, port.arrived, on_close=port.end)
        try:
            await ws.prepare(request)
        except BaseException:
            port.tap.close()
            raise
        connection = Connection(RAW, target.src, 0, target.dst, 0)
        session = _Session(target.network_id, connection, ws, request.transport, port.end, raw=port)
        self._add(session)
        _log.info(
            "gate: raw %s -> %s open in network %s", target.src, target.dst, target.network_id
        )
        try:
            await self._run(
                session,
                inbound=port.send,
                outbound=lambda: self._to_client(session, port),
                on_text=port.text,
            )
        finally:
            port.end()
            self._remove(session)
            _log.info(
                "gate: raw %s -> %s closed in network %s: %s",
                target.src,
                target.dst,
                target.network_id,
                port.to_json(),
            )
        return ws

    # -- the pumps -------------------------------------------------------------------------

    async def _run(
        self,
        session: _Session,
        *,
        inbound: Callable[[bytes], Awaitable[None]],
        outbound: Callable[[], Coroutine[Any, Any, None]],
        on_text: Callable[[str], None] | None = None,
    ) -> None:
        """Pump until either side closes: client messages here, socket bytes in a task.

        Text messages are data (their UTF-8 bytes) unless ``on_text`` takes them.
        """
        ws = session.ws
        out_task = asyncio.create_task(outbound())
        ping_task = asyncio.create_task(self._ping(ws))
        try:
            while True:
                try:
                    msg = await ws.receive()
                except TimeoutError:
                    await self._close_ws(session, WSCloseCode.GOING_AWAY, b"idle timeout")
                    break
                if msg.type is WSMsgType.BINARY:
                    data: bytes = msg.data
                elif msg.type is WSMsgType.TEXT and on_text is not None:
                    on_text(msg.data)
                    continue
                elif msg.type is WSMsgType.TEXT:
                    data = msg.data.encode("utf-8")
                else:  # CLOSE (answered by aiohttp), CLOSING, CLOSED, ERROR
                    break
                try:
                    await inbound(data)
                except _Stop as stop:
                    await self._close_ws(session, stop.code, stop.reason)
                    break
        finally:
            ping_task.cancel()
            if not out_task.done() and not session.socket_ended:
                # The client is gone: nothing more can reach it. (When the socket ended
                # first, its pump is closing the WebSocket: let it finish.)
                out_task.cancel()
            await asyncio.gather(out_task, ping_task, return_exceptions=True)
            if not ws.closed:
                await self._close_ws(session, WSCloseCode.OK, b"")
            session.done.set()

    async def _ping(self, ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.heartbeat)
            if ws.closed:
                return
            try:
                await ws.ping()
            except (ConnectionError, RuntimeError):
                return

    async def _close_ws(self, session: _Session, code: int, reason: bytes) -> None:
        if session.going_away is not None:
            code, reason = session.going_away
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                session.ws.close(code=code, message=reason), self.close_timeout + 1.0
            )

    async def _to_stream(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            raise _Stop(WSCloseCode.INTERNAL_ERROR, _reason(exc)) from None

    async def _from_stream(self, session: _Session, reader: asyncio.StreamReader) -> None:
        ws = session.ws
        try:
            while data := await reader.read(CHUNK_SIZE):
                await ws.send_bytes(data)
        except (ConnectionError, OSError) as exc:
            if ws.closed:
                return  # the client went away while we were sending
            session.socket_ended = True
            await self._close_ws(session, WSCloseCode.INTERNAL_ERROR, _reason(exc))
            return
        session.socket_ended = True
        await self._close_ws(session, WSCloseCode.OK, b"")  # the payload's EOF

    async def _to_datagram(
        self, endpoint: DatagramEndpoint, data: bytes, addr: tuple[str, int]
    ) -> None:
        try:
            endpoint.send(data, addr)
        except DatagramTooLarge as exc:
            raise _Stop(WSCloseCode.MESSAGE_TOO_BIG, _reason(exc)) from None
        except GolemVpnError as exc:
            raise _Stop(WSCloseCode.INTERNAL_ERROR, _reason(exc)) from None

    async def _from_datagrams(
        self, session: _Session, endpoint: DatagramEndpoint, addr: tuple[str, int]
    ) -> None:
        ws = session.ws
        try:
            while True:
                data, source = await endpoint.recv()
                if source[0] == addr[0] and source[1] == addr[1]:
                    await ws.send_bytes(data)
        except GolemVpnError as exc:  # SocketClosed: the network went away
            session.socket_ended = True
            await self._close_ws(session, WSCloseCode.GOING_AWAY, _reason(exc))
        except (ConnectionError, OSError):
            return

    async def _to_client(self, session: _Session, port: _RawPort) -> None:
        ws = session.ws
        frames = port.frames
        try:
            while True:
                while frames:
                    frame = frames.popleft()
                    await ws.send_bytes(frame)
                    port.frames_out += 1
                    port.bytes_out += len(frame)
                if port.ended:
                    break
                port.wakeup.clear()
                await port.wakeup.wait()
        except (ConnectionError, OSError):
            return  # the client went away while we were sending
        session.socket_ended = True
        await self._close_ws(session, WSCloseCode.GOING_AWAY, b"network removed")

    # -- bookkeeping -----------------------------------------------------------------------

    def _add(self, session: _Session) -> None:
        self._sessions.setdefault(session.network_id, set()).add(session)

    def _remove(self, session: _Session) -> None:
        group = self._sessions.get(session.network_id)
        if group is not None:
            group.discard(session)
            if not group:
                del self._sessions[session.network_id]


class _Stop(Exception):
    """Raised by an inbound pump: close the WebSocket with this code."""

    def __init__(self, code: int, reason: bytes) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


def _reason(exc: BaseException) -> bytes:
    """A close reason from an exception: at most 123 bytes, as RFC 6455 allows."""
    text = str(exc) or type(exc).__name__
    return text.encode("utf-8")[:123]
