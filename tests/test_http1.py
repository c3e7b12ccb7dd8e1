"""The Net API client's small HTTP/1.1 client, against scripted servers on loopback.

Each server reads one request head (and body) per answer it has, then writes the next
scripted answer byte for byte; the framings, keep-alive and failures are the client's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest

from golem_vpn.netapi.http1 import ConnectionPool, ProtocolError


class Script:
    """A server that answers each request on a connection with the next scripted answer;
    ``None`` closes the connection (right after the answer before it)."""

    def __init__(self, answers: Sequence[bytes | None]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.answers and self.answers[0] is None:
                    self.answers.pop(0)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serve(script: Script) -> AsyncIterator[str]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def run(answers: Sequence[bytes | None], *requests: tuple[str, str, bytes | None]) -> Script:
    script = Script(answers)

    async def main() -> None:
        async with serve(script) as root:
            pool = ConnectionPool()
            try:
                for method, path, body in requests:
                    response = await pool.request(method, root + path, body=body)
                    script.requests.append(b"-> %d %s" % (response.status, response.body))
            finally:
                await pool.close()

    asyncio.run(main())
    return script


def test_content_length_and_keep_alive_reuse_one_connection() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n[]"
    script = run([ok, ok], ("GET", "/net", None), ("POST", "/net", b'{"ip": "10.0.0.0/24"}'))
    assert script.connections == 1
    first, answer1, second, answer2 = script.requests
    assert first.startswith(b"GET /net HTTP/1.1\r\nHost: 127.0.0.1:")
    assert second.endswith(b'Content-Length: 21\r\n\r\n{"ip": "10.0.0.0/24"}')
    assert answer1 == answer2 == b"-> 200 []"


def test_chunked_body_with_trailers() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\n[1,\r\n2\r\n2]\r\n0\r\nX-Trailer: y\r\n\r\n"
    )
    script = run([chunked], ("GET", "/", None))
    assert script.requests[-1] == b"-> 200 [1,2]"


def test_body_to_the_end_of_the_connection_and_interim_answers() -> None:
    script = run(
        [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\nhello", None],
        ("GET", "/", None),
    )
    assert script.requests[-1] == b"-> 200 hello"


def test_a_stale_keep_alive_connection_is_replaced() -> None:
    # The server answers once, then closes the idle connection: the second request must go
    # out again on a new connection instead of failing.
    ok = b"HTTP/1.1 204 No Content\r\n\r\n"
    script = Script([ok])

    async def main() -> None:
        async with serve(script) as root:
            pool = ConnectionPool()
            try:
                assert (await pool.request("GET", root + "/a")).status == 204
                await asyncio.sleep(0.05)  # the server closed its side
                script.answers.append(ok)
                assert (await pool.request("DELETE", root + "/b")).status == 204
            finally:
                await pool.close()

    asyncio.run(main())
    assert script.connections == 2
    assert script.requests[-1].startswith(b"DELETE /b HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_answers_are_protocol_errors(answer: bytes) -> None:
    with pytest.raises(ProtocolError):
        run([answer], ("GET", "/", None))


def test_a_connection_cut_mid_answer_is_an_os_error() -> None:
    with pytest.raises(ConnectionResetError, match="middle of the answer"):
        run([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", None], ("GET", "/", None))


def test_nothing_listening_names_the_address() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = ConnectionPool()
        with pytest.raises(ConnectionRefusedError, match=f"cannot connect to 127.0.0.1:{port}: "):
            await pool.request("GET", f"http://127.0.0.1:{port}/")
        await pool.close()

    asyncio.run(main())
