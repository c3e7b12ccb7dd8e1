"""Throughput of one TCP stream through the VPN's userspace stacks, next to kernel loopback.

One process, two nodes of a :class:`golem_vpn.LocalNetwork` (Router + Stack each, linked in
memory); one connection; the client writes ``--size`` bytes, the server reads them all. The
same transfer then runs over kernel loopback TCP with asyncio streams in the same run, so the
ratio is meaningful on a noisy machine. Prints a Markdown table.

Run: ``python benches/stack_throughput.py [--size MiB] [--mtu 1400 9000] [--uvloop]``
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from collections.abc import Callable

import golem_vpn
from golem_vpn import LocalNetwork
from loopback import kernel_raw

CHUNK = 256 * 1024


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int
) -> tuple[float, int]:
    block = b"\xa5" * CHUNK
    received = 0

    async def send() -> None:
        left = size
        while left > 0:
            writer.write(block[: min(left, CHUNK)])
            left -= CHUNK
            await writer.drain()

    start = time.perf_counter()
    sender = asyncio.create_task(send())
    while received < size:
        data = await reader.read(1 << 20)
        if not data:
            break
        received += len(data)
    await sender
    return time.perf_counter() - start, received


async def vpn(size: int, mtu: int, buffer: int) -> float:
    async with LocalNetwork(
        "192.168.0.0/24", mtu=mtu, tcp_rx_buffer=buffer, tcp_tx_buffer=buffer
    ) as net:
        a, b = net.add_node(), net.add_node()
        accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.get_running_loop().create_future()
        )
        server = await b.start_server(lambda r, w: accepted.set_result((r, w)), 5001)
        _, client_writer = await a.open_connection(b.ip, 5001)
        server_reader, _ = await accepted
        elapsed, got = await _pump(server_reader, client_writer, size)
        assert got == size, (got, size)
        server.close()
        return size * 8 / elapsed / 1e9


class _Sink(asyncio.Protocol):
    """Counts received bytes without buffering them (no StreamReader copy)."""

    def __init__(self, size: int, done: asyncio.Future[float]) -> None:
        self.left = size
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left <= 0 and not self.done.done():
            self.done.set_result(time.perf_counter())


async def vpn_protocol(size: int, mtu: int, buffer: int) -> float:
    """The VPN path with an ``asyncio.Protocol`` receiver: what the stacks themselves carry."""
    loop = asyncio.get_running_loop()
    async with LocalNetwork(
        "192.168.0.0/24", mtu=mtu, tcp_rx_buffer=buffer, tcp_tx_buffer=buffer
    ) as net:
        a, b = net.add_node(), net.add_node()
        done: asyncio.Future[float] = loop.create_future()
        server = await golem_vpn.create_server(b.interface, lambda: _Sink(size, done), 5002)
        _, writer = await a.open_connection(b.ip, 5002)
        block = b"\xa5" * CHUNK
        start = time.perf_counter()
        left = size
        while left > 0:
            writer.write(block[: min(left, CHUNK)])
            left -= CHUNK
            await writer.drain()
        end = await done
        server.close()
        return size * 8 / (end - start) / 1e9


async def kernel(size: int) -> float:
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
        asyncio.get_running_loop().create_future()
    )
    server = await asyncio.start_server(lambda r, w: accepted.set_result((r, w)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client_writer = await asyncio.open_connection("127.0.0.1", port)
    server_reader, server_writer = await accepted
    elapsed, got = await _pump(server_reader, client_writer, size)
    assert got == size
    client_writer.close()
    server_writer.close()
    server.close()
    return size * 8 / elapsed / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per transfer")
    parser.add_argument("--mtu", type=int, nargs="+", default=[1400, 9000])
    parser.add_argument("--buffer", type=int, default=4 << 20, help="TCP buffers (bytes)")
    parser.add_argument("--runs", type=int, default=3, help="best of N")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    size = args.size << 20
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        raw_gbps = max(kernel_raw(size) for _ in range(args.runs))
        kernel_gbps = max(runner.run(kernel(size)) for _ in range(args.runs))
        rows = [
            ("kernel loopback TCP (blocking sockets, 2 threads)", "65536", raw_gbps),
            ("kernel loopback TCP (asyncio streams)", "65536", kernel_gbps),
        ]
        for mtu in args.mtu:
            gbps = max(runner.run(vpn(size, mtu, args.buffer)) for _ in range(args.runs))
            rows.append((f"golem-vpn stacks via Routers, MTU {mtu}", str(mtu), gbps))
        for mtu in args.mtu:
            gbps = max(runner.run(vpn_protocol(size, mtu, args.buffer)) for _ in range(args.runs))
            rows.append((f"golem-vpn, asyncio.Protocol receiver, MTU {mtu}", str(mtu), gbps))
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(
        f"golem-vpn {golem_vpn.__version__} ({golem_vpn.build_profile}), "
        f"{platform.python_implementation()} {platform.python_version()}, {loop_name}, "
        f"{args.size} MiB per transfer, best of {args.runs}"
    )
    print()
    print("| path | MTU | Gbit/s | vs kernel (asyncio) | vs kernel (raw) |")
    print("|---|---|---|---|---|")
    for name, mtu, gbps in rows:
        print(f"| {name} | {mtu} | {gbps:.2f} | {gbps / kernel_gbps:.0%} | {gbps / raw_gbps:.0%} |")


if __name__ == "__main__":
    main()
