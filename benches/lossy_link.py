"""A seeded lossy, delaying UDP link between two golem-vpn nodes, and TCP transfers across it.

The benchmarks that compare the userspace stack's TCP with the Linux kernel's over a bad link
(``benches/loss.py``, ``benches/gate_throughput.py --loss``) share this module:

- :class:`LossyProxy` runs the link in a process of its own: one UDP socket on loopback
  between two nodes, each told that the other lives at the proxy. A datagram from one node is
  dropped (its fate drawn from a PRNG seeded per direction, so a seed fixes which datagrams of
  each direction are lost whatever the other carries), or held for the one-way delay and
  passed to the other node. Losses are random, or come in bursts of a mean length (a burst
  ends early at a pause of :data:`BURST_GAP` in its direction's traffic). There is no queue
  limit and no rate limit: every loss is one the link chose.
- :class:`UserspacePair`: two nodes with userspace stacks (``UdpTransport.join``), both in
  this process; their TCP is smoltcp's.
- :class:`KernelPair`: two nodes whose networks are TUN devices in network namespaces
  (``UdpTransport.attach_tun``, the native datapath), so the TCP is the kernel's, carried by
  the same tunnel over the same proxy. Needs root.

Every transfer is checked end to end: the receiver hashes what it got (SHA-256) against the
sender's data, and reports its goodput and the longest time it waited for the next bytes.

Run as a script, this module is one of the link's processes: ``proxy``, or a kernel-side
``recv`` / ``send`` inside a namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CIDR = "10.77.0.0/24"
A_IP, B_IP = "10.77.0.1", "10.77.0.2"
PORT = 5001
MTU = 1368  # the TUN default (golem_vpn.exeunit.DEFAULT_MTU), for both kinds of node
BUFFER = 4 << 20  # userspace TCP buffers: 4 MiB, like the gate's (window scaling)
CHUNK = 1 << 20


@dataclass(frozen=True)
class Link:
    """What the proxy does to each datagram."""

    loss: float = 0.0
    """Fraction of datagrams dropped, in each direction."""
    burst: float = 1.0
    """Mean length of a run of drops (1: each drop on its own)."""
    rtt: float = 0.010
    """Round-trip delay the proxy adds (half each way), seconds."""
    seed: int = 1

    def describe(self) -> str:
        if self.loss == 0:
            return "0 %"
        kind = f"bursts (mean {self.burst:g})" if self.burst > 1 else "random"
        return f"{self.loss * 100:g} % {kind}"


#: A burst of drops is cut short by a pause this long in its direction's traffic: a burst
#: is a train of datagrams lost together (a fade, an overflowing queue), not a count that
#: would also swallow retransmissions sent whole timeouts apart.
BURST_GAP = 0.002


class Fate:
    """One direction's drop decisions: a seeded PRNG and a burst in progress."""

    def __init__(self, seed: int, direction: str, loss: float, burst: float) -> None:
        self.rng = random.Random(f"{seed}/{direction}")
        self.burst = max(burst, 1.0)
        # A burst starts this often, so that drops make up `loss` of all datagrams.
        self.start = loss / (self.burst - loss * (self.burst - 1)) if loss > 0 else 0.0
        self.left = 0
        self.last = float("-inf")

    def drop(self, now: float) -> bool:
        """The fate of a datagram that arrived at ``now`` (seconds, monotonic)."""
        if now - self.last > BURST_GAP:
            self.left = 0
        self.last = now
        if self.left > 0:
            self.left -= 1
            return True
        if self.rng.random() >= self.start:
            return False
        # Burst length: geometric with the configured mean.
        while self.burst > 1 and self.rng.random() < 1 - 1 / self.burst:
            self.left += 1
        return True


def run_proxy(a: tuple[str, int], b: tuple[str, int], link: Link) -> None:
    """The link's process: forwards between ``a`` and ``b`` until stdin closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 16 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    fates = {
        a: Fate(link.seed, "a->b", link.loss, link.burst),
        b: Fate(link.seed, "b->a", link.loss, link.burst),
    }
    peer = {a: b, b: a}
    stats = {"a->b": [0, 0], "b->a": [0, 0], "strays": 0}  # [forwarded, dropped]
    names = {a: "a->b", b: "b->a"}
    delay = link.rtt / 2
    queue: collections.deque[tuple[float, bytes, tuple[str, int]]] = collections.deque()
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN | select.EPOLLHUP)
    print(sock.getsockname()[1], flush=True)
    running = True
    while running:
        timeout = max(queue[0][0] - time.monotonic(), 0.0) if queue else 1.0
        for fd, _ in poller.poll(timeout):
            if fd == sys.stdin.fileno():
                running = False
        now = time.monotonic()
        while True:
            try:
                data, src = sock.recvfrom(65536)
            except BlockingIOError:
                break
            dst = peer.get(src)
            if dst is None:
                stats["strays"] += 1  # type: ignore[operator]
                continue
            counters = stats[names[src]]
            assert isinstance(counters, list)
            if fates[src].drop(now):
                counters[1] += 1
            else:
                counters[0] += 1
                queue.append((now + delay, data, dst))
        while queue and queue[0][0] <= now:
            _, data, dst = queue.popleft()
            with contextlib.suppress(BlockingIOError):
                sock.sendto(data, dst)
    print(json.dumps(stats), flush=True)


class LossyProxy:
    """The link as a child process (see :func:`run_proxy`); ``stats`` once closed."""

    def __init__(self, a: tuple[str, int], b: tuple[str, int], link: Link) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE),
                "proxy",
                f"{a[0]}:{a[1]}",
                f"{b[0]}:{b[1]}",
                f"--loss={link.loss}",
                f"--burst={link.burst}",
                f"--rtt={link.rtt}",
                f"--seed={link.seed}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.addr = ("127.0.0.1", int(self.proc.stdout.readline()))
        self.stats: dict[str, Any] = {}

    def close(self) -> dict[str, Any]:
        if self.proc.poll() is None:
            out, _ = self.proc.communicate(timeout=10)
            self.stats = json.loads(out.splitlines()[-1])
        return self.stats

    def drop_rate(self) -> float:
        fwd = sum(self.stats[d][0] for d in ("a->b", "b->a"))
        drop = sum(self.stats[d][1] for d in ("a->b", "b->a"))
        return drop / max(fwd + drop, 1)


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class Result:
    """One transfer, as the receiver saw it."""

    size: int
    seconds: float  # from the connection's acceptance to the last byte
    max_gap: float  # the longest wait for the next bytes
    sha256_ok: bool
    drop_rate: float = 0.0

    @property
    def mbps(self) -> float:
        return self.size / self.seconds / 1e6


class Receiver:
    """Times arrivals: goodput and the longest stall, and hashes what arrives."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.gap = 0.0
        self.size = 0
        self.hash = hashlib.sha256()

    def got(self, data: bytes | memoryview) -> None:
        now = time.monotonic()
        self.gap = max(self.gap, now - self.last)
        self.last = now
        self.size += len(data)
        self.hash.update(data)

    def result(self, expected: str) -> Result:
        return Result(
            self.size, self.last - self.start, self.gap, self.hash.hexdigest() == expected
        )


NET = "1055" * 8


class UserspacePair:
    """Two userspace-stack nodes joined through a :class:`LossyProxy` (this process)."""

    def __init__(self, link: Link) -> None:
        self.link = link

    async def __aenter__(self) -> UserspacePair:
        from golem_vpn import Identity
        from golem_vpn.node.transport import UdpTransport

        self.a = UdpTransport(Identity.generate())
        self.b = UdpTransport(Identity.generate())
        self.proxy = LossyProxy(self.a.local_addr, self.b.local_addr, self.link)
        options = {"mtu": MTU, "tcp_rx_buffer": BUFFER, "tcp_tx_buffer": BUFFER}
        self.ia = self.a.join(NET, CIDR, A_IP, **options)
        self.ib = self.b.join(NET, CIDR, B_IP, **options)
        self.a.add_peer(NET, self.b.node_id, B_IP, self.proxy.addr)
        self.b.add_peer(NET, self.a.node_id, A_IP, self.proxy.addr)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.a.close()
        self.b.close()
        self.proxy.close()

    async def transfer(self, size: int, seed: int, timeout: float) -> Result:
        import golem_vpn

        data = payload(seed, size)
        expected = hashlib.sha256(data).hexdigest()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Result] = loop.create_future()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            rx = Receiver()
            while rx.size < size and (chunk := await reader.read(CHUNK)):
                rx.got(chunk)
            done.set_result(rx.result(expected))
            writer.close()

        server = await golem_vpn.start_server(sink, self.ib, PORT)
        try:
            _, writer = await golem_vpn.open_connection(self.ia, B_IP, PORT)
            view = memoryview(data)
            for i in range(0, size, CHUNK):
                writer.write(view[i : i + CHUNK])
                await writer.drain()
            result = await asyncio.wait_for(done, timeout)
            writer.close()
        finally:
            server.close()
        return result


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=15)


class KernelPair:
    """Two TUN-attached nodes, each device in a namespace of its own, through the proxy.

    The TCP endpoints are processes in the namespaces (this module's ``recv`` and ``send``):
    the kernel's TCP, over the same tunnel and link as :class:`UserspacePair`'s.
    """

    def __init__(self, link: Link, congestion_control: str = "cubic") -> None:
        self.link = link
        self.congestion_control = congestion_control
        tag = f"{os.getpid() % 100000}"
        self.ns = (f"gvloss-a-{tag}", f"gvloss-b-{tag}")
        self.dev = (f"gvla{tag}", f"gvlb{tag}")

    async def __aenter__(self) -> KernelPair:
        from golem_vpn import Identity
        from golem_vpn.node.transport import UdpTransport

        self.a = UdpTransport(Identity.generate())
        self.b = UdpTransport(Identity.generate())
        self.proxy = LossyProxy(self.a.local_addr, self.b.local_addr, self.link)
        try:
            for node, peer, ip, peer_ip, ns, dev in (
                (self.a, self.b, A_IP, B_IP, self.ns[0], self.dev[0]),
                (self.b, self.a, B_IP, A_IP, self.ns[1], self.dev[1]),
            ):
                node.join_native(NET, CIDR, ip)
                node.add_peer(NET, peer.node_id, peer_ip, self.proxy.addr)
                node.attach_tun(dev, [NET])
                _ip("netns", "add", ns)
                _ip("link", "set", "dev", dev, "netns", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                _ip("-n", ns, "link", "set", "dev", dev, "mtu", str(MTU), "up")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in (self.a, self.b):
            node.close()
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.proxy.close()

    async def transfer(self, size: int, seed: int, timeout: float) -> Result:
        expected = hashlib.sha256(payload(seed, size)).hexdigest()

        def spawn(ns: str, *args: str) -> asyncio.Future[Any]:
            return asyncio.ensure_future(
                asyncio.create_subprocess_exec(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    str(HERE),
                    *args,
                    stdout=subprocess.PIPE,
                )
            )

        recv = await spawn(self.ns[1], "recv", B_IP, str(size))
        send = None
        try:
            assert recv.stdout is not None
            ready = await asyncio.wait_for(recv.stdout.readline(), 30)
            assert ready.strip() == b"ready", ready
            send = await spawn(
                self.ns[0], "send", B_IP, str(size), str(seed), self.congestion_control
            )
            out = await asyncio.wait_for(recv.stdout.read(), timeout)
            await asyncio.wait_for(send.wait(), 30)
        finally:
            for proc in (recv, send):
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        got = json.loads(out)
        return Result(size, got["seconds"], got["max_gap"], got["sha256"] == expected)


@contextlib.asynccontextmanager
async def pair(kind: str, link: Link) -> AsyncIterator[UserspacePair | KernelPair]:
    """A :class:`UserspacePair` (``"userspace"``) or :class:`KernelPair` (``"kernel"``,
    ``"kernel-bbr"``: the kernel with CUBIC, its usual default, or BBR)."""
    made: UserspacePair | KernelPair
    if kind == "userspace":
        made = UserspacePair(link)
    else:
        made = KernelPair(link, "bbr" if kind == "kernel-bbr" else "cubic")
    async with made as p:
        yield p


async def measure(kind: str, link: Link, size: int, timeout: float = 900.0) -> Result:
    """One transfer of ``size`` bytes from node A to node B over a fresh link."""
    async with pair(kind, link) as p:
        result = await p.transfer(size, link.seed, timeout)
    result.drop_rate = p.proxy.drop_rate()
    return result


def _kernel_recv(ip: str, size: int) -> None:
    srv = socket.create_server((ip, PORT))
    print("ready", flush=True)
    conn, _ = srv.accept()
    rx = Receiver()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while rx.size < size and (n := conn.recv_into(buf)):
        rx.got(view[:n])
    conn.close()
    print(
        json.dumps(
            {
                "seconds": rx.last - rx.start,
                "max_gap": rx.gap,
                "sha256": rx.hash.hexdigest(),
                "size": rx.size,
            }
        ),
        flush=True,
    )


def _kernel_send(ip: str, size: int, seed: int, congestion_control: str) -> None:
    data = payload(seed, size)
    deadline = time.monotonic() + 60
    while True:
        conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Per socket: a namespace may only pick from the host's allowed algorithms.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion_control.encode())
        conn.settimeout(10)
        try:
            conn.connect((ip, PORT))
            break
        except OSError:
            conn.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn.settimeout(None)
    conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):
        pass
    conn.close()


def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    proxy = sub.add_parser("proxy")
    proxy.add_argument("a", type=_addr)
    proxy.add_argument("b", type=_addr)
    proxy.add_argument("--loss", type=float, default=0.0)
    proxy.add_argument("--burst", type=float, default=1.0)
    proxy.add_argument("--rtt", type=float, default=0.010)
    proxy.add_argument("--seed", type=int, default=1)
    recv = sub.add_parser("recv")
    recv.add_argument("ip")
    recv.add_argument("size", type=int)
    send = sub.add_parser("send")
    send.add_argument("ip")
    send.add_argument("size", type=int)
    send.add_argument("seed", type=int)
    send.add_argument("congestion_control")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    run: Callable[[], None]
    if args.role == "proxy":
        link = Link(args.loss, args.burst, args.rtt, args.seed)
        run = lambda: run_proxy(args.a, args.b, link)  # noqa: E731
    elif args.role == "recv":
        run = lambda: _kernel_recv(args.ip, args.size)  # noqa: E731
    else:
        run = lambda: _kernel_send(  # noqa: E731
            args.ip, args.size, args.seed, args.congestion_control
        )
    run()


if __name__ == "__main__":
    main()
