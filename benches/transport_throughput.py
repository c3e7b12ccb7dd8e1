"""Throughput of one TCP stream through the encrypted UDP transport on loopback.

Two nodes, each a :class:`golem_vpn.node.transport.UdpTransport` (Noise tunnel, AES-256-GCM,
Rust datapath) with a userspace stack, exchange a TCP stream over loopback UDP. The receiver
runs in a separate process so each side has a core. Kernel loopback TCP is measured in the
same run for scale.

Run: ``python benches/transport_throughput.py [--size MiB] [--mtu 1400 9000]``
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import platform
import sys
import time
from typing import Any

import golem_vpn
from golem_vpn import Identity
from golem_vpn.node.transport import UdpTransport
from loopback import kernel_raw

NET = "bench" * 6
CIDR = "192.168.77.0/24"
CHUNK = 256 * 1024


async def _receiver(secret: bytes, mtu: int, buffer: int, conn: Any) -> None:
    node = UdpTransport(Identity.from_secret(secret))
    opts = {"mtu": mtu, "tcp_rx_buffer": buffer, "tcp_tx_buffer": buffer}
    iface = node.join(NET, CIDR, "192.168.77.3", **opts)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while data := await reader.read(1 << 20):
            got += len(data)
        done.set_result(got)
        writer.close()

    await golem_vpn.start_server(sink, iface, 5001)
    conn.send(node.local_addr)
    sender_id, host, port = conn.recv()
    node.add_peer(NET, sender_id, "192.168.77.2", (host, port))
    conn.send(await done)
    node.close()


def _receiver_process(secret: bytes, mtu: int, buffer: int, conn: Any) -> None:
    asyncio.run(_receiver(secret, mtu, buffer, conn))


async def vpn(size: int, mtu: int, buffer: int) -> float:
    sender_ident, receiver_ident = Identity.generate(), Identity.generate()
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=_receiver_process, args=(receiver_ident.secret_bytes(), mtu, buffer, child)
    )
    proc.start()
    loop = asyncio.get_running_loop()
    receiver_addr = await loop.run_in_executor(None, parent.recv)
    node = UdpTransport(sender_ident)
    opts = {"mtu": mtu, "tcp_rx_buffer": buffer, "tcp_tx_buffer": buffer}
    iface = node.join(NET, CIDR, "192.168.77.2", **opts)
    node.add_peer(NET, receiver_ident.node_id, "192.168.77.3", tuple(receiver_addr))
    parent.send((node.node_id, *node.local_addr))
    _, writer = await golem_vpn.open_connection(iface, "192.168.77.3", 5001, timeout=10)
    block = b"\xa5" * CHUNK
    start = time.perf_counter()
    left = size
    while left > 0:
        writer.write(block[: min(left, CHUNK)])
        left -= CHUNK
        await writer.drain()
    writer.write_eof()
    got = await loop.run_in_executor(None, parent.recv)
    elapsed = time.perf_counter() - start
    assert got == size, (got, size)
    writer.close()
    proc.join(10)
    node.close()
    return size * 8 / elapsed / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="MiB per transfer")
    parser.add_argument("--mtu", type=int, nargs="+", default=[1400])
    parser.add_argument("--buffer", type=int, default=4 << 20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size << 20
    raw = max(kernel_raw(size) for _ in range(args.runs))
    rows = [("kernel loopback TCP (blocking sockets, 2 threads)", raw)]
    for mtu in args.mtu:
        gbps = max(asyncio.run(vpn(size, mtu, args.buffer)) for _ in range(args.runs))
        rows.append((f"golem-vpn tunnel over loopback UDP, MTU {mtu}, 2 processes", gbps))
    print(
        f"golem-vpn {golem_vpn.__version__} ({golem_vpn.build_profile}), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{args.size} MiB per transfer, best of {args.runs}"
    )
    print()
    print("| path | Gbit/s | vs kernel |")
    print("|---|---|---|")
    for name, gbps in rows:
        print(f"| {name} | {gbps:.2f} | {gbps / raw:.0%} |")


if __name__ == "__main__":
    sys.exit(main())
