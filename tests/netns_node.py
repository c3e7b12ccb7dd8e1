"""One VPN node in its own process, for the network-namespace tests.

Run as ``ip netns exec NS python tests/netns_node.py ROLE ...``: the node binds its
:class:`~golem_vpn.node.transport.UdpTransport` to an underlay address of that namespace
and speaks JSON lines on stdout (one object per line, an ``"event"`` key in each) so the
test can follow it. Not a test module (no ``test_`` prefix); the tests start it.

Roles:

``provider``
    Joins the network, serves a TCP echo (and SHA-256 of what each connection sent) and a
    UDP echo on its VPN address, prints ``ready``, then a ``peer`` line for each session
    event (its ``detail`` is the peer's UDP address as the tunnel sees it) and a ``tcp``
    line per finished connection. On SIGTERM (or after ``--lifetime`` seconds) it prints
    ``stats`` and exits.

``requestor``
    Joins the network, knows the provider's node id and UDP address, sends
    ``--tcp-bytes`` of ``random.Random(--seed)`` bytes through a TCP echo and hashes what
    comes back, does a UDP round trip and a ping, prints ``result`` (with its transport
    stats) and exits.

With ``--relay HOST:PORT`` a node registers with that relay and waits until the relay
has answered (its ``ready`` line then carries ``public_addr``, its address as the relay
sees it); a peer given without ``--peer-addr`` is reached through the relay.
``--hole-punching on`` lets the nodes probe each other's public address for a direct
path; with ``--wait-direct SECONDS`` the requestor first waits (pinging) for the peer to
leave the relay, and its ``result`` carries a ``before`` snapshot of its stats taken just
before the echo, so the test can tell which path the echo took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import sys
import traceback
from typing import Any

import golem_vpn
from golem_vpn.node.transport import UdpTransport


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def payload(seed: int, size: int) -> bytes:
    """The bytes the requestor sends; the test recomputes their digest itself."""
    return random.Random(seed).randbytes(size)


def _addr(addr: tuple[str, int] | None) -> list[Any] | None:
    return None if addr is None else list(addr)


def path(link: UdpTransport, peer_id: str) -> dict[str, Any]:
    """How this node reaches the peer right now, and how the relay sees this node."""
    return {
        "public_addr": _addr(link.public_addr),
        "relayed": link.native.is_relayed(peer_id),
        "peer_address": _addr(link.native.peer_address(peer_id)),
    }


async def make_link(args: argparse.Namespace) -> tuple[UdpTransport, golem_vpn.Interface]:
    identity = golem_vpn.Identity.from_secret(bytes.fromhex(args.secret))
    relay = host_port(args.relay) if args.relay else None
    link = UdpTransport(
        identity,
        args.bind,
        args.port,
        relay=relay,
        hole_punching=args.hole_punching == "on",
    )
    if relay is not None:
        # Registered (the relay answered) before anyone looks this node up.
        async with asyncio.timeout(10):
            while link.public_addr is None:
                await asyncio.sleep(0.01)
    iface = link.join(args.net, args.cidr, args.ip)
    link.on_peer = lambda kind, node, detail: emit("peer", kind=kind, node=node, detail=detail)
    peer_addr = host_port(args.peer_addr) if args.peer_addr else None
    link.add_peer(args.net, args.peer_id, args.peer_ip, peer_addr)
    return link, iface


def conn(iface: golem_vpn.Interface, writer: asyncio.StreamWriter) -> dict[str, Any]:
    """The connection's state: the stack's socket and the transport's own buffer."""
    t: Any = writer.transport
    st = iface.stack.tcp_status(t._id)
    i: Any = iface
    return {
        "tcp": {
            k: getattr(st, k)
            for k in ("state", "recv_queue", "send_queue", "send_free", "may_send", "may_recv")
        },
        "buffered": t._buffered,
        "reading_paused": t._reading_paused,
        "protocol_paused": getattr(t, "_protocol_paused", None),
        "poll_at": iface.stack.poll_at(asyncio.get_running_loop().time()),
        "now": asyncio.get_running_loop().time(),
        "soon": i._soon is not None,
        "timer_at": i._timer_at,
    }


def emit_ready(link: UdpTransport) -> None:
    emit(
        "ready",
        node_id=link.node_id,
        local_addr=list(link.local_addr),
        public_addr=_addr(link.public_addr),
    )


async def wait_direct(
    link: UdpTransport, iface: golem_vpn.Interface, args: argparse.Namespace
) -> None:
    """Pings the peer until it is reached directly (or ``--wait-direct`` runs out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait_direct
    while link.native.is_relayed(args.peer_id) and loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            await iface.ping(args.peer_ip, timeout=0.2)
        await asyncio.sleep(0.05)


async def provider(args: argparse.Namespace) -> None:
    link, iface = await make_link(args)

    async def watchdog(writer: asyncio.StreamWriter) -> None:
        # The requestor's watchdog fires at the same time: this side's counters with it.
        await asyncio.sleep(args.timeout / 2)
        emit(
            "slow", transport=link.native.stats(), stack=iface.stack.stats(), **conn(iface, writer)
        )

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dog = asyncio.get_running_loop().create_task(watchdog(writer))
        digest, count = hashlib.sha256(), 0
        while data := await reader.read(1 << 16):
            digest.update(data)
            count += len(data)
            writer.write(data)
            await writer.drain()
        writer.close()
        dog.cancel()
        emit("tcp", received=count, sha256=digest.hexdigest())

    async def udp_echo(endpoint: golem_vpn.DatagramEndpoint) -> None:
        while True:
            data, addr = await endpoint.recv()
            endpoint.send(data, addr)

    server = await golem_vpn.start_server(echo, iface, args.tcp_port)
    endpoint = await golem_vpn.open_datagram_endpoint(iface, args.udp_port)
    udp_task = asyncio.create_task(udp_echo(endpoint))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    emit_ready(link)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.lifetime)
    emit("stats", stats=link.native.stats(), **path(link, args.peer_id))
    udp_task.cancel()
    endpoint.close()
    server.close()
    link.close()


async def requestor(args: argparse.Namespace) -> None:
    link, iface = await make_link(args)
    emit_ready(link)
    if args.wait_direct:
        await wait_direct(link, iface, args)
    before = {"stats": link.native.stats(), **path(link, args.peer_id)}
    blob = payload(args.seed, args.tcp_bytes)

    async def watchdog() -> None:
        # A transfer that takes this long has stalled: say what the counters were.
        await asyncio.sleep(args.timeout / 2)
        emit(
            "slow", transport=link.native.stats(), stack=iface.stack.stats(), **conn(iface, writer)
        )

    reader, writer = await golem_vpn.open_connection(
        iface, args.peer_ip, args.tcp_port, timeout=args.timeout
    )
    dog = asyncio.get_running_loop().create_task(watchdog())

    async def drain_echo() -> tuple[int, str]:
        digest, count = hashlib.sha256(), 0
        while data := await reader.read(1 << 20):
            digest.update(data)
            count += len(data)
        return count, digest.hexdigest()

    echo = asyncio.create_task(drain_echo())
    for i in range(0, len(blob), 1 << 16):
        writer.write(blob[i : i + (1 << 16)])
        await writer.drain()
    writer.write_eof()
    try:
        echoed, echo_sha = await asyncio.wait_for(echo, args.timeout)
    except TimeoutError:
        # What the stall looked like: the transport's and the stack's counters.
        raise TimeoutError(
            f"echo stalled: transport {link.native.stats()} stack {iface.stack.stats()}"
        ) from None
    writer.close()
    dog.cancel()

    endpoint = await golem_vpn.open_datagram_endpoint(iface)
    udp_reply = None
    for attempt in range(5):  # UDP is unreliable; a clean link needs one try
        message = f"udp-probe-{attempt}".encode()
        endpoint.send(message, (args.peer_ip, args.udp_port))
        with contextlib.suppress(TimeoutError):
            data, addr = await asyncio.wait_for(endpoint.recv(), 2)
            udp_reply = {"data": data.decode(), "from": list(addr), "sent": message.decode()}
            break
    endpoint.close()
    rtt = None
    for attempt in range(3):  # ICMP is unreliable too: a lost echo is not a failure
        try:
            rtt = await iface.ping(args.peer_ip, timeout=5)
            break
        except TimeoutError:
            if attempt == 2:
                raise
    emit(
        "result",
        sent=len(blob),
        echoed=echoed,
        echo_sha256=echo_sha,
        udp=udp_reply,
        ping_rtt=rtt,
        stats=link.native.stats(),
        up=link.native.is_up(args.peer_id),
        before=before,
        **path(link, args.peer_id),
    )
    link.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["provider", "requestor"])
    parser.add_argument("--secret", required=True, help="the node's secret key, hex")
    parser.add_argument("--bind", required=True, help="underlay address to bind")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--net", required=True, help="network id")
    parser.add_argument("--cidr", required=True)
    parser.add_argument("--ip", required=True, help="this node's VPN address")
    parser.add_argument("--peer-id", required=True)
    parser.add_argument("--peer-ip", required=True)
    parser.add_argument("--peer-addr", help="the peer's UDP address HOST:PORT, if known")
    parser.add_argument("--relay", help="a relay's UDP address HOST:PORT")
    parser.add_argument("--hole-punching", choices=["on", "off"], default="on")
    parser.add_argument(
        "--wait-direct",
        type=float,
        default=0.0,
        help="requestor: seconds to wait for a direct path before the echo",
    )
    parser.add_argument("--tcp-port", type=int, default=7)
    parser.add_argument("--udp-port", type=int, default=5353)
    parser.add_argument("--tcp-bytes", type=int, default=1 << 20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--lifetime", type=float, default=60.0)
    args = parser.parse_args()
    run = provider if args.role == "provider" else requestor
    try:
        asyncio.run(asyncio.wait_for(run(args), args.lifetime + 10))
    except Exception as exc:
        # Where it failed (a bare TimeoutError says nothing of which step timed out).
        frames, cause = [], exc
        while cause is not None:
            frames += traceback.extract_tb(cause.__traceback__)
            cause = cause.__context__
        where = [f"{f.lineno} {f.line}" for f in frames if f.filename == __file__]
        emit("error", error=f"{type(exc).__name__}: {exc}", at=where)
        sys.exit(1)


if __name__ == "__main__":
    main()
