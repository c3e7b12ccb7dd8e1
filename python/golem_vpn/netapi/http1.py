"""A small HTTP/1.1 client on asyncio streams, for the Net API's JSON calls.

:class:`~golem_vpn.netapi.client.Client` sends its REST calls through a :class:`ConnectionPool`
instead of aiohttp, which takes a quarter of a second to import: a ``golem-vpn net list`` would
spend more time loading its HTTP library than talking to the daemon. aiohttp stays the client
for the WebSocket gate, and for REST calls when the caller hands the client a session.

What it speaks: one request per connection at a time, ``Content-Length`` request bodies,
responses framed by ``Content-Length``, ``chunked`` transfer coding or the end of the
connection; keep-alive (idle connections are reused, and a request that finds its reused
connection closed by the server before any answer is sent again on a new one); ``http`` and
``https`` (the system's CA store, the host name checked). No proxies (aiohttp's default is not
to read the proxy environment either), redirects, cookies or compression: the Net API uses none.

Errors: a failure to connect, send or receive is an :class:`OSError` (``TimeoutError`` is the
caller's, from its own deadline), an answer that is not HTTP is a :class:`ProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ConnectionPool", "ProtocolError", "Response"]

#: The largest status line or header line accepted.
MAX_LINE = 64 * 1024
#: The most header lines accepted in one answer.
MAX_HEADERS = 100
#: The largest answer body accepted (the Net API's are a few KiB).
MAX_BODY = 64 * 1024 * 1024
#: Idle connections kept per server.
MAX_IDLE = 4

_DEFAULT_PORTS = {"http": 80, "https": 443}


class ProtocolError(Exception):
    """The server's answer is not well-formed HTTP/1.x (or is over a size limit)."""


@dataclass(frozen=True)
class Response:
    """An HTTP answer.

    Attributes:
        status: The status code.
        reason: The reason phrase (may be empty).
        headers: Header names in lowercase; a repeated header keeps its last value.
        body: The body, with any transfer coding removed.
    """

    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


class _StaleConnection(Exception):
    """A reused connection was closed by the server before it answered."""


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections, per server. Use from one event loop; :meth:`close`
    when done."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Sends one request and reads the whole answer.

        Args:
            method: ``GET``, ``POST``...
            url: An absolute ``http`` or ``https`` URL, already percent-encoded.
            headers: Extra request headers (``Host``, ``Content-Length`` and ``Connection``
                are set here).
            body: The request body, if any.

        Raises:
            OSError: The server cannot be reached, or the connection failed.
            ProtocolError: The answer is not HTTP.
            ValueError: ``url`` is not an absolute http(s) URL.
        """
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an absolute http(s) URL: {url!r}")
        host, port = parts.hostname, parts.port or _DEFAULT_PORTS[scheme]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}"]
        for name, value in (headers or {}).items():
            head.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body or b'')}")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        key = (scheme, host, port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            try:
                return await self._exchange(key, conn, method, message, reused=True)
            except _StaleConnection:
                continue  # the server closed it while idle: nothing was done, try another
        conn = await self._connect(scheme, host, port)
        try:
            return await self._exchange(key, conn, method, message, reused=False)
        except _StaleConnection:
            raise ConnectionResetError(
                f"{host}:{port} closed the connection without answering"
            ) from None

    async def close(self) -> None:
        """Closes the idle connections; the pool cannot be used afterwards."""
        self._closed = True
        conns = [c for group in self._idle.values() for c in group]
        self._idle.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=MAX_LINE)
        except OSError as exc:
            raise _connect_error(host, port, exc) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self,
        key: tuple[str, str, int],
        conn: _Connection,
        method: str,
        message: bytes,
        *,
        reused: bool,
    ) -> Response:
        keep = False
        answered = False
        try:
            try:
                conn.writer.write(message)
                await conn.writer.drain()
                status_line = await conn.reader.readline()
            except (ConnectionResetError, BrokenPipeError):
                if reused:
                    raise _StaleConnection from None
                raise
            if not status_line:
                if reused:
                    raise _StaleConnection
                raise ConnectionResetError(
                    f"{key[1]}:{key[2]} closed the connection without answering"
                )
            answered = True
            response, keep = await _read_response(conn.reader, method, status_line)
            return response
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("the connection closed in the middle of the answer") from exc
        except ValueError as exc:  # a line over the limit (asyncio says ValueError)
            raise ProtocolError(f"malformed answer: {exc}") from None
        finally:
            if keep and answered and not self._closed:
                group = self._idle.setdefault(key, [])
                if len(group) < MAX_IDLE:
                    group.append(conn)
                else:
                    conn.close()
            else:
                conn.close()


async def _read_response(
    reader: asyncio.StreamReader, method: str, status_line: bytes
) -> tuple[Response, bool]:
    """Reads one answer after its status line; returns it and whether the connection can
    carry another request."""
    while True:
        version, status, reason = _status(status_line)
        headers = await _headers(reader)
        if not 100 <= status < 200:
            break
        status_line = await reader.readline()  # an interim answer (100 Continue): skip it
        if not status_line:
            raise asyncio.IncompleteReadError(b"", None)
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    if method == "HEAD" or status in (204, 304):
        return Response(status, reason, headers), keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _chunked(reader)
    elif (length := headers.get("content-length")) is not None:
        if not length.strip().isdigit():
            raise ProtocolError(f"bad Content-Length {length!r}")
        size = int(length)
        if size > MAX_BODY:
            raise ProtocolError(f"the answer's body is too large ({size} bytes)")
        body = await reader.readexactly(size)
    else:
        keep = False  # the body ends with the connection
        body = await reader.read(MAX_BODY + 1)
        while len(body) <= MAX_BODY and (more := await reader.read(MAX_BODY + 1 - len(body))):
            body += more
        if len(body) > MAX_BODY:
            raise ProtocolError("the answer's body is too large")
    return Response(status, reason, headers, body), keep


def _status(line: bytes) -> tuple[str, int, str]:
    text = line.decode("latin-1").rstrip("\r\n")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP answer: {text[:80]!r}")
    return version, int(code), reason


async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await reader.readline()
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        if line in (b"\r\n", b"\n"):
            return headers
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name.strip():
            raise ProtocolError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    raise ProtocolError(f"more than {MAX_HEADERS} header lines")


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = (await reader.readline()).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            await _headers(reader)  # trailers, up to the blank line
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise ProtocolError("the answer's body is too large")
        body += await reader.readexactly(size)
        if await reader.readline() not in (b"\r\n", b"\n"):
            raise ProtocolError("a chunk does not end with CRLF")


def _connect_error(host: str, port: int, exc: OSError) -> OSError:
    """The connection failure in words: ``cannot connect to HOST:PORT: Connection refused``."""
    if isinstance(exc, ssl.SSLError):
        why = exc.reason or str(exc)
    elif exc.errno is not None and exc.errno > 0:
        why = os.strerror(exc.errno)
    else:
        why = exc.strerror or str(exc) or type(exc).__name__
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    error = type(exc)(f"cannot connect to {where}: {why}")
    error.errno = exc.errno
    return error
