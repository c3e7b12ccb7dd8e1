"""The demo's payloads: what runs on a provider's virtual IP, and the channel that drives them.

A payload here is a small program of the kind a Golem task would run: an HTTP server (aiohttp's
low-level server, which is any asyncio protocol), a SHA-256 sink that answers with the digest of
what it received, an HTTP fetch, ICMP echo, and a checksummed transfer. The same code runs over
either of the provider side's ways to put a payload on the VPN:

- :class:`UserspaceSockets`: the daemon's userspace attachment (``golem-vpn attach
  --userspace``; :meth:`golem_vpn.exeunit.ExeUnit.interface`), the asyncio API of
  :mod:`golem_vpn.streams`; the payload runs in the daemon's process, where that stack lives
  (:mod:`golem_vpn.demo.node` hosts it). Ping is the stack's ICMP echo.
- :class:`KernelSockets`: plain sockets, for a payload in a network namespace with a TUN
  attachment (``golem-vpn attach --tun --netns``); ping is the system's ``ping``.

``python -m golem_vpn.demo.payload`` runs a payload on kernel sockets in its own process (the
demo starts it with ``ip netns exec``) and takes commands as JSON lines on stdin, answering on
stdout (:func:`serve_commands`); it exits when stdin closes, so it never outlives the demo.
Part of the demo (:mod:`golem_vpn.demo`), not of the library's API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import random
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from golem_vpn.interface import Interface

__all__ = [
    "KernelSockets",
    "Payload",
    "Sockets",
    "UserspaceSockets",
    "http_result",
    "serve_commands",
    "transfer_data",
]

#: Bytes per write of a transfer (the sender drains after each).
CHUNK = 256 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[object]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Closable(Protocol):
    """A listening server."""

    def close(self) -> None: ...


class Sockets(Protocol):
    """The socket layer a payload runs on (see the module docs)."""

    #: What the report calls it: ``userspace`` or ``kernel``.
    kind: str

    async def open_connection(
        self, host: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP stream to ``host:port`` (``ConnectionError`` / ``TimeoutError`` if none)."""
        ...

    async def start_server(self, handler: StreamHandler, port: int) -> Closable:
        """Serves ``handler`` on ``port`` of the payload's address."""
        ...

    async def create_server(
        self, factory: Callable[[], asyncio.BaseProtocol], port: int
    ) -> Closable:
        """Serves an asyncio protocol on ``port`` of the payload's address."""
        ...

    async def ping(self, host: str, timeout: float) -> float | None:
        """One ICMP echo: the round-trip time in seconds, or None if none came back."""
        ...


class UserspaceSockets:
    """Sockets of a userspace attachment: the daemon's stack for one network.

    Args:
        interface: The attachment's interface (:meth:`golem_vpn.exeunit.ExeUnit.interface`).
    """

    kind = "userspace"

    def __init__(self, interface: Interface) -> None:
        self._iface = interface

    async def open_connection(
        self, host: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        from golem_vpn.streams import open_connection

        return await open_connection(self._iface, host, port, timeout=timeout)

    async def start_server(self, handler: StreamHandler, port: int) -> Closable:
        from golem_vpn.streams import start_server

        return await start_server(handler, self._iface, port)

    async def create_server(
        self, factory: Callable[[], asyncio.BaseProtocol], port: int
    ) -> Closable:
        from golem_vpn.streams import create_server

        return await create_server(self._iface, factory, port)

    async def ping(self, host: str, timeout: float) -> float | None:
        from golem_vpn.errors import GolemVpnError

        try:
            return await self._iface.ping(host, timeout=timeout)
        except (GolemVpnError, OSError):  # no reply, or no route any more
            return None


class KernelSockets:
    """The kernel's sockets (in a namespace with a TUN attachment); ping is ``ping``."""

    kind = "kernel"

    async def open_connection(
        self, host: str, port: int, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)

    async def start_server(self, handler: StreamHandler, port: int) -> Closable:
        return await asyncio.start_server(handler, "0.0.0.0", port)

    async def create_server(
        self, factory: Callable[[], asyncio.BaseProtocol], port: int
    ) -> Closable:
        return await asyncio.get_running_loop().create_server(factory, "0.0.0.0", port)

    async def ping(self, host: str, timeout: float) -> float | None:
        wait = max(1, math.ceil(timeout))  # whole seconds: what every iputils ping takes
        proc = await asyncio.create_subprocess_exec(
            "ping", "-n", "-c", "1", "-W", str(wait), host,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        found = re.search(rb"time[=<]([0-9.]+) ms", out)
        if proc.returncode != 0 or found is None:
            return None
        return float(found.group(1)) / 1000


def transfer_data(size: int, seed: int = 2024) -> Iterator[bytes]:
    """``size`` pseudo-random bytes (incompressible, the same for a seed) in chunks of
    :data:`CHUNK`: a cycle of 16 random chunks, so any size takes 4 MiB of memory."""
    rng = random.Random(seed)
    pool = [rng.randbytes(CHUNK) for _ in range(16)]
    for index, offset in enumerate(range(0, size, CHUNK)):
        yield pool[index % len(pool)][: size - offset]


class Payload:
    """The demo's programs on one payload's sockets.

    Args:
        sockets: Where it runs.
        name: Whose payload it is (``provider-1``); the HTTP server says so.
        ip: The payload's virtual IP; the HTTP server says so too.
    """

    def __init__(self, sockets: Sockets, name: str, ip: str) -> None:
        self.sockets = sockets
        self.name = name
        self.ip = ip
        self._servers: list[Closable] = []
        self._web: Any = None
        #: What the sink received: ``{"bytes", "sha256"}`` per connection, oldest first.
        self.received: list[dict[str, object]] = []

    def handlers(self) -> dict[str, Handler]:
        """The payload's commands by name, for :func:`serve_commands`."""
        return {
            "serve": self.serve,
            "fetch": self.fetch,
            "ping": self.ping,
            "send": self.send,
            "received": self._received,
        }

    async def serve(self, args: Mapping[str, Any]) -> dict[str, object]:
        """Starts the HTTP server on ``args["http"]`` and the sink on ``args["sink"]``."""
        from aiohttp import web

        async def page(request: web.BaseRequest) -> web.Response:
            return web.Response(
                text=f"hello from {self.name} ({self.ip}), you asked for {request.path}\n"
            )

        self._web = web.Server(page)
        self._servers.append(await self.sockets.create_server(self._web, int(args["http"])))
        self._servers.append(await self.sockets.start_server(self._sink, int(args["sink"])))
        return {"http": int(args["http"]), "sink": int(args["sink"])}

    async def _sink(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Hashes everything until EOF, then answers ``BYTES SHA256`` and closes."""
        digest, total = hashlib.sha256(), 0
        try:
            while data := await reader.read(1 << 20):
                digest.update(data)
                total += len(data)
            self.received.append({"bytes": total, "sha256": digest.hexdigest()})
            writer.write(f"{total} {digest.hexdigest()}\n".encode())
            await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def _received(self, _: Mapping[str, Any]) -> list[dict[str, object]]:
        return self.received

    async def fetch(self, args: Mapping[str, Any]) -> dict[str, object]:
        """``GET args["url"]`` (``http://IP[:PORT]/PATH``) over HTTP/1.0."""
        found = re.fullmatch(r"http://([^/:]+)(?::(\d+))?(/.*)?", str(args["url"]))
        if found is None:
            raise ValueError(f"not an http:// URL: {args['url']!r}")
        host, port, path = found.group(1), int(found.group(2) or 80), found.group(3) or "/"
        started = time.perf_counter()
        reader, writer = await self.sockets.open_connection(host, port, float(args["timeout"]))
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            response = await asyncio.wait_for(reader.read(), float(args["timeout"]))
        finally:
            writer.close()
        return http_result(response, time.perf_counter() - started)

    async def ping(self, args: Mapping[str, Any]) -> dict[str, object]:
        """``args["count"]`` echoes to ``args["host"]``, one at a time; lost ones are None.

        With ``args["until"]`` it first waits, up to that many seconds, for a first answer (a
        path that is still coming up); with ``args["until_lost"]`` for a first echo lost (a
        node being removed). ``waited`` is the time from the call to the echo request that
        was answered (or lost) first.
        """
        host, timeout = str(args["host"]), float(args["timeout"])
        started = waited = time.perf_counter()
        for key, answered in (("until", True), ("until_lost", False)):
            if args.get(key) is None:
                continue
            deadline = started + float(args[key])
            while True:
                waited = time.perf_counter()
                if (await self.sockets.ping(host, timeout) is not None) == answered:
                    break
                if time.perf_counter() >= deadline:
                    break
        waited -= started
        rtts = [await self.sockets.ping(host, timeout) for _ in range(int(args["count"]))]
        return {"rtts": rtts, "waited": waited}

    async def send(self, args: Mapping[str, Any]) -> dict[str, object]:
        """Streams ``args["bytes"]`` bytes to the sink at ``args["host"]:args["port"]``;
        returns both SHA-256 digests and the time from connecting to the sink's answer."""
        size = int(args["bytes"])
        digest = hashlib.sha256()
        for chunk in transfer_data(size):  # hashed before the clock starts
            digest.update(chunk)
        sent = digest.hexdigest()
        started = time.perf_counter()
        reader, writer = await self.sockets.open_connection(
            str(args["host"]), int(args["port"]), float(args["timeout"])
        )
        try:
            for chunk in transfer_data(size):
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()
            answer = await asyncio.wait_for(reader.readline(), float(args["timeout"]))
        finally:
            writer.close()
        seconds = time.perf_counter() - started
        count, _, received = answer.decode().strip().partition(" ")
        return {
            "bytes": size,
            "receivedBytes": int(count or 0),
            "seconds": seconds,
            "sha256Sent": sent,
            "sha256Received": received,
        }

    async def close(self) -> None:
        """Stops the servers."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._web is not None:
            with contextlib.suppress(Exception):
                await self._web.shutdown(1.0)


def http_result(response: bytes, seconds: float) -> dict[str, Any]:
    """An HTTP/1.x response taken apart: ``{status, statusLine, body, seconds}``."""
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return {
        "status": status,
        "statusLine": status_line,
        "body": body.decode(errors="replace"),
        "seconds": seconds,
    }


async def serve_commands(handlers: Mapping[str, Handler], *, ready: object = None) -> None:
    """Answers JSON-line commands from stdin on stdout until stdin closes.

    A command is ``{"id": N, "op": NAME, ...arguments}``; the answer ``{"id": N, "ok": true,
    "result": ...}`` or ``{"id": N, "ok": false, "error": "..."}``. Commands run concurrently;
    answers come as each finishes. ``ready``, if given, is written first as ``{"ready": ...}``.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(obj: object) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    if ready is not None:
        answer({"ready": ready})
    tasks: set[asyncio.Task[None]] = set()

    async def run(request: dict[str, Any]) -> None:
        handler = handlers.get(str(request.get("op")))
        try:
            if handler is None:
                raise ValueError(f"unknown command {request.get('op')!r}")
            result = await handler(request)
        except Exception as exc:
            answer({"id": request.get("id"), "ok": False, "error": _describe(exc)})
        else:
            answer({"id": request.get("id"), "ok": True, "result": result})

    while line := await reader.readline():
        task = loop.create_task(run(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in list(tasks):
        task.cancel()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text


async def _main(name: str, ip: str) -> None:
    payload = Payload(KernelSockets(), name, ip)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    commands = asyncio.ensure_future(serve_commands(payload.handlers(), ready={"pid": os.getpid()}))
    try:
        await asyncio.wait([commands, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        commands.cancel()
        await payload.close()


if __name__ == "__main__":
    # python -m golem_vpn.demo.payload NAME IP: a payload on kernel sockets (see the docs).
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
