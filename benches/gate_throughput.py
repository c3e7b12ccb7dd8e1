"""Throughput of one WebSocket stream through the Net API's gate, next to direct loopback TCP.

The Net API server runs on loopback over a backend; a provider node runs a sink (or a
source) on its userspace stack; an aiohttp WebSocket client streams ``--size`` MiB through
``/net-api/v1/net/{id}/tcp/{ip}/{port}``. Backends:

- ``local``: every node in this process, linked in memory (gate + two userspace stacks);
- ``udp``: requestor and provider daemons on the encrypted UDP transport (loopback), same
  process.

Kernel loopback TCP with asyncio streams is measured in the same run. Prints a Markdown table
in MB/s (10^6 bytes per second).

With ``--loss PCT``, the daemons' datagrams cross the seeded lossy, delaying link of
``benches/lossy_link.py`` (``--rtt`` ms round trip) instead, and the kernel's TCP is measured
over the same link for comparison: two TUN-attached namespaces whose tunnel crosses the same
proxy (root), with CUBIC (Linux's default; the ratio is against it) and BBR.

Run: ``python benches/gate_throughput.py [--size MiB] [--runs N] [--loss PCT [--rtt MS]]``
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

import golem_vpn
from golem_vpn import Identity
from golem_vpn.model import parse_deploy_net
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.backend import LocalBackend
from golem_vpn.netapi.server import serve
from golem_vpn.netapi.store import Store
from golem_vpn.node.daemon import DaemonBackend
from golem_vpn.node.transport import UdpTransport
from lossy_link import MTU, KernelPair, Link, LossyProxy

CHUNK = 64 * 1024
PROVIDER = "0x" + "cd" * 20
STACK = {"tcp_rx_buffer": 4 << 20, "tcp_tx_buffer": 4 << 20}


@asynccontextmanager
async def gate(
    kind: str, handler: Callable[..., Any], link: Link | None = None
) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A running Net API whose network has a provider at 10.55.0.2 running ``handler`` on 9.

    With a ``link`` (``udp`` only), the daemons reach each other through a
    :class:`~lossy_link.LossyProxy`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "netapi.sqlite")
        closers: list[Callable[[], Any]] = []
        if kind == "local":
            backend: Any = LocalBackend("0x" + "ab" * 20, **STACK)
            provider_id = PROVIDER
        else:
            # Over a link, the kernel's comparison runs at the TUN MTU: so does the stack.
            options = {**STACK, "mtu": MTU} if link else STACK
            backend = DaemonBackend(UdpTransport(Identity.generate()), **options)
            provider = DaemonBackend(UdpTransport(Identity.generate()), **options)
            provider_id = provider.node_id
            closers += [backend.close, provider.close]
            requestor_addr = provider_addr = None
            if link is not None:
                proxy = LossyProxy(
                    backend.transport.local_addr, provider.transport.local_addr, link
                )
                requestor_addr = provider_addr = proxy.addr
                closers.append(proxy.close)
        key = AppKeys(store).create("bench", backend.node_id)
        runner = await serve(backend, store, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}/net-api/v1"
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        try:
            async with session.post(f"{base}/net", json={"ip": "10.55.0.0/24"}) as r:
                net = await r.json()
            node = {"id": provider_id, "ip": "10.55.0.2"}
            async with session.post(f"{base}/net/{net['id']}/nodes", json=node) as r:
                assert r.status == 200
            if kind == "local":
                iface = backend.provider(net["id"], provider_id).interface
            else:
                deploy = {
                    "id": net["id"],
                    "ip": "10.55.0.0",
                    "mask": net["mask"],
                    "nodeIp": "10.55.0.2",
                    "nodes": {"10.55.0.1": backend.node_id, "10.55.0.2": provider_id},
                }
                (entry,) = parse_deploy_net({"net": [deploy]})
                iface = provider.join_deploy(
                    entry, backend.node_id, requestor_addr or backend.transport.local_addr
                )
                backend.transport.add_peer(
                    net["id"],
                    provider_id,
                    "10.55.0.2",
                    provider_addr or provider.transport.local_addr,
                )
            server = await golem_vpn.start_server(handler, iface, 9)
            yield session, f"{base}/net/{net['id']}/tcp/10.55.0.2/9"
            server.close()
        finally:
            await session.close()
            await runner.cleanup()
            if kind == "local":
                await backend.close()
            for close in closers:
                close()
            store.close()


async def upload(kind: str, size: int, link: Link | None = None) -> float:
    """Client → provider: MB/s of a WebSocket stream into a sink."""
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < size and (data := await reader.read(1 << 20)):
            got += len(data)
        done.set_result(time.perf_counter())
        writer.close()

    async with gate(kind, sink, link) as (session, url), session.ws_connect(url) as ws:
        block = b"\xa5" * CHUNK
        start = time.perf_counter()
        for _ in range(size // CHUNK):
            await ws.send_bytes(block)
        end = await done
    return size / (end - start) / 1e6


async def download(kind: str, size: int, link: Link | None = None) -> float:
    """Provider → client: MB/s of a source streamed to a WebSocket client."""

    async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"\x5a" * (1 << 20)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()

    async with gate(kind, source, link) as (session, url), session.ws_connect(url) as ws:
        start = time.perf_counter()
        got = 0
        while got < size:
            msg = await ws.receive()
            got += len(msg.data)
        return size / (time.perf_counter() - start) / 1e6


async def kernel(size: int) -> float:
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < size and (data := await reader.read(1 << 20)):
            got += len(data)
        done.set_result(time.perf_counter())
        writer.close()

    server = await asyncio.start_server(sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    block = b"\xa5" * CHUNK
    start = time.perf_counter()
    for _ in range(size // CHUNK):
        writer.write(block)
        await writer.drain()
    end = await done
    writer.close()
    server.close()
    return size / (end - start) / 1e6


async def kernel_over(link: Link, size: int, congestion_control: str) -> float:
    """MB/s of the kernel's TCP over ``link`` (two TUN-attached namespaces, root)."""
    async with KernelPair(link, congestion_control) as pair:
        result = await pair.transfer(size, link.seed, timeout=900)
    assert result.sha256_ok, "the kernel's transfer arrived corrupted"
    return result.mbps


def lossy(args: argparse.Namespace) -> None:
    """The gate over a lossy link, next to the kernel's TCP over the same link."""
    size = args.size << 20
    link = Link(loss=args.loss / 100, rtt=args.rtt / 1000, seed=args.seed)

    def best(make: Callable[[], Any]) -> float:
        return max(asyncio.run(make()) for _ in range(args.runs))

    rows = [
        (
            "kernel TCP over the same link (TUN, CUBIC)",
            best(lambda: kernel_over(link, size, "cubic")),
        ),
        ("kernel TCP over the same link (TUN, BBR)", best(lambda: kernel_over(link, size, "bbr"))),
        ("gate upload, daemons on encrypted UDP", best(lambda: upload("udp", size, link))),
        ("gate download, daemons on encrypted UDP", best(lambda: download("udp", size, link))),
    ]
    print(
        f"golem-vpn {golem_vpn.__version__} ({golem_vpn.build_profile}), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{args.size} MiB per transfer, best of {args.runs}, link: {link.describe()} loss, "
        f"{args.rtt:g} ms RTT, seed {args.seed}"
    )
    print()
    print("| path | MB/s | vs kernel (CUBIC) |")
    print("|---|---|---|")
    kernel = rows[0][1]
    for name, mbps in rows:
        print(f"| {name} | {mbps:.2f} | {mbps / kernel:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="MiB per transfer")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--loss", type=float, help="through a lossy link: %% of datagrams lost")
    parser.add_argument("--rtt", type=float, default=10, help="the lossy link's RTT, ms")
    parser.add_argument("--seed", type=int, default=1, help="the lossy link's seed")
    args = parser.parse_args()
    if args.loss is not None:
        lossy(args)
        return
    size = args.size << 20

    def best(make: Callable[[], Any]) -> float:
        return max(asyncio.run(make()) for _ in range(args.runs))

    rows = [
        ("direct loopback TCP (asyncio streams)", best(lambda: kernel(size))),
        ("gate upload, in-process nodes (local backend)", best(lambda: upload("local", size))),
        ("gate download, in-process nodes (local backend)", best(lambda: download("local", size))),
        ("gate upload, daemons on encrypted UDP", best(lambda: upload("udp", size))),
        ("gate download, daemons on encrypted UDP", best(lambda: download("udp", size))),
    ]
    print(
        f"golem-vpn {golem_vpn.__version__} ({golem_vpn.build_profile}), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{args.size} MiB per transfer, best of {args.runs}"
    )
    print()
    print("| path | MB/s | vs direct |")
    print("|---|---|---|")
    direct = rows[0][1]
    for name, mbps in rows:
        print(f"| {name} | {mbps:.0f} | {mbps / direct:.0%} |")


if __name__ == "__main__":
    main()
