"""Kernel loopback TCP measured the fastest way Python can: blocking sockets, two threads.

Shared by the throughput benches, which print it next to the VPN paths as the OS's ceiling.
"""

from __future__ import annotations

import socket
import threading
import time

__all__ = ["kernel_raw"]


def kernel_raw(size: int) -> float:
    """Gbit/s of one loopback TCP stream of ``size`` bytes (``sendall`` / ``recv_into``)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = 0

    def sink() -> None:
        nonlocal received
        conn, _ = listener.accept()
        buf = bytearray(1 << 20)
        while (n := conn.recv_into(buf)) > 0:
            received += n
        conn.close()

    thread = threading.Thread(target=sink)
    thread.start()
    block = b"\xa5" * (1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client:
        left = size
        while left > 0:
            client.sendall(block[: min(left, len(block))])
            left -= len(block)
    thread.join()
    elapsed = time.perf_counter() - start
    listener.close()
    assert received == size
    return size * 8 / elapsed / 1e9
