"""The in-process walkthrough (``golem-vpn demo --local``): one network, three nodes, real routers.

Everything runs in one process, to show the layers under the daemons (the multi-process demo,
``golem-vpn demo``, is :mod:`golem_vpn.demo.cluster`). Two parts:

1. Routing: a requestor creates a network with the model layer, adds two providers, and hands
   each its DEPLOY ``net`` config; every node builds its :class:`~golem_vpn.Router` from that
   config (provider B's in Ethernet mode, as for a VM guest). No runtime runs: the demo builds
   the packets a payload would send, injects them, carries them in-process to the destination's
   router (standing in for the node transport), and prints where each one went, what each
   router dropped and why, and each router's counters (kept for nodes removed on the way).
2. Payloads talking: the same three nodes as a :class:`~golem_vpn.LocalNetwork`, each with a
   userspace TCP/IP stack. Provider A serves HTTP; provider B fetches a page, pings A, sends a
   UDP datagram, and streams 16 MiB to A with its SHA-256 checked at both ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TextIO

from golem_vpn import LocalNetwork, Router, __version__, build_profile
from golem_vpn.model import DeployNetwork, Network, parse_deploy_net

__all__ = ["main", "udp_packet"]

REQUESTOR = "0x" + "1a" * 20
PROVIDER_A = "0x" + "2b" * 20
PROVIDER_B = "0x" + "3c" * 20


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet with correct IP and UDP checksums."""
    s, d = IPv4Address(src).packed, IPv4Address(dst).packed
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", _checksum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, s, d)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """An Ethernet frame with an ARP who-has request."""
    eth = b"\xff" * 6 + sender_mac + b"\x08\x06"
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    arp += sender_mac + IPv4Address(sender_ip).packed + b"\0" * 6 + IPv4Address(target_ip).packed
    return eth + arp


@dataclass
class _Node:
    name: str
    node_id: str
    router: Router
    kind: str


def _router_from_deploy(node_id: str, net: DeployNetwork, *, ethernet: bool) -> Router:
    requestor = next((nid for ip, nid in net.nodes.items() if ip == net.gateway), None)
    router = Router(
        net.id, str(net.network), node_id, [net.node_ip], ethernet=ethernet, requestor=requestor
    )
    for ip, nid in net.nodes.items():
        if nid != node_id:
            router.add_node(nid, ip)
    return router


def _describe(packet: bytes) -> str:
    if len(packet) >= 14 and packet[12:14] == b"\x08\x06":
        sender = IPv4Address(packet[28:32])
        if packet[21] != 2:
            return f"ARP request: who has {IPv4Address(packet[38:42])}? tell {sender}"
        mac = ":".join(f"{b:02x}" for b in packet[22:28])
        return f"ARP reply: {sender} is at {mac}"
    if len(packet) >= 14 and packet[12:14] in (b"\x08\x00", b"\x86\xdd"):
        packet = packet[14:]
    if len(packet) >= 28 and packet[0] >> 4 == 4 and packet[9] == 17:
        src, dst = IPv4Address(packet[12:16]), IPv4Address(packet[16:20])
        sport, dport = struct.unpack("!HH", packet[20:24])
        return f"UDP {src}:{sport} -> {dst}:{dport} {packet[28:]!r}"
    return f"{len(packet)} bytes"


def main(out: TextIO = sys.stdout) -> int:
    """Run the demo, printing to ``out``. Returns a process exit code."""

    def say(line: str = "") -> None:
        print(line, file=out)

    say(f"golem-vpn {__version__} ({build_profile} build): local routing demo (in one process)")
    say()
    network = Network.create("192.168.0.0/24", requestor_id=REQUESTOR)
    network.add_node(PROVIDER_A)
    network.add_node(PROVIDER_B)
    say(f"Network {network.id}  {network.network}  gateway {network.gateway}")

    deploy_b = network.deploy_args(PROVIDER_B)
    say("DEPLOY for provider B (yagna's shape):")
    say("  " + json.dumps(deploy_b, indent=2).replace("\n", "\n  "))
    nodes = {
        "requestor": _Node(
            "requestor",
            REQUESTOR,
            Router(network.id, str(network.network), REQUESTOR, [network.requestor_ip]),
            "simulated requestor: IP packets, as its userspace stack sends them",
        ),
        "provider-a": _Node(
            "provider-a",
            PROVIDER_A,
            _router_from_deploy(
                PROVIDER_A, parse_deploy_net(network.deploy_args(PROVIDER_A))[0], ethernet=False
            ),
            "simulated payload: IP packets, as through a TUN device",
        ),
        "provider-b": _Node(
            "provider-b",
            PROVIDER_B,
            _router_from_deploy(PROVIDER_B, parse_deploy_net(deploy_b)[0], ethernet=True),
            "simulated VM guest: Ethernet frames, as through a VM endpoint",
        ),
    }
    for node in network.nodes.values():
        nodes["requestor"].router.add_node(node.id, node.ip)
    by_id = {n.node_id: n for n in nodes.values()}
    for n in nodes.values():
        say(f"  {n.name:<10} {n.node_id}  {', '.join(n.router.ips):<12} {n.kind}")
    say("The packets below are built by the demo and injected into each node's router.")
    say()

    ip = {name: n.router.ips[0] for name, n in nodes.items()}
    mac_b = bytes([0x90, 0x13, *IPv4Address(ip["provider-b"]).packed])
    steps: list[tuple[str, str, bytes]] = [
        (
            "provider-a",
            "unicast to B",
            udp_packet(ip["provider-a"], ip["provider-b"], 4000, 5000, b"hello B"),
        ),
        ("provider-b", "VM asks ARP for A", arp_request(mac_b, ip["provider-b"], ip["provider-a"])),
        (
            "provider-b",
            "unicast to A (Ethernet)",
            b"\x90\x13"
            + IPv4Address(ip["provider-a"]).packed
            + mac_b
            + b"\x08\x00"
            + udp_packet(ip["provider-b"], ip["provider-a"], 5000, 4000, b"hello A"),
        ),
        (
            "requestor",
            "subnet broadcast",
            udp_packet(ip["requestor"], "192.168.0.255", 9, 9, b"all"),
        ),
        (
            "provider-a",
            "spoofed source (B's IP)",
            udp_packet(ip["provider-b"], ip["requestor"], 1, 2, b"evil"),
        ),
        (
            "provider-a",
            "unknown destination",
            udp_packet(ip["provider-a"], "192.168.0.77", 1, 2, b"?"),
        ),
        ("provider-a", "outside the network", udp_packet(ip["provider-a"], "10.1.2.3", 1, 2, b"?")),
        (
            "provider-a",
            "truncated packet",
            udp_packet(ip["provider-a"], ip["provider-b"], 1, 2, b"x")[:17],
        ),
    ]

    def run(step: int, sender: str, what: str, frame: bytes) -> None:
        src = nodes[sender]
        before = src.router.stats()["drops"]
        deliveries = src.router.inject(frame)
        say(f"{step}. {sender}: {what}: {_describe(frame)}")
        if not deliveries:
            after = src.router.stats()["drops"]
            reasons = [k for k, v in after.items() if v != before[k]]
            say(f"     dropped by {sender}'s router: {', '.join(reasons) or 'no recipients'}")
        for dst_id, packet in deliveries:
            if dst_id == src.node_id:
                say(f"     answered locally -> {_describe(packet)}")
                continue
            dst = by_id[dst_id]
            # In-process hop: stands in for the encrypted node transport.
            frame_out = dst.router.receive(packet, src.node_id)
            verdict = f"payload gets {_describe(frame_out)}" if frame_out else "dropped"
            say(f"     -> {dst.name}: {verdict}")

    for i, (sender, what, frame) in enumerate(steps, 1):
        run(i, sender, what, frame)

    say()
    say("Provider B leaves the network: the requestor removes it and tells the others.")
    # A router forgets a removed node's counters; keep them to show what B did.
    removed = {
        name: {PROVIDER_B: nodes[name].router.stats()["nodes"][PROVIDER_B]}
        for name in ("requestor", "provider-a")
    }
    network.remove_node(PROVIDER_B)
    for name in ("requestor", "provider-a"):
        nodes[name].router.remove_node(PROVIDER_B)
    run(len(steps) + 1, "provider-a", "unicast to removed B", steps[0][2])
    stale = nodes["provider-a"].router.receive(
        udp_packet(ip["provider-b"], ip["provider-a"], 5000, 4000, b"still here?"), PROVIDER_B
    )
    verdict = "delivered" if stale else "dropped by provider-a's router: unknown_node"
    say(f"{len(steps) + 2}. removed provider-b sends to A: {verdict}")

    say()
    say("Counters of each router: what was injected (by its payload) and received (from")
    say("other nodes), drops by reason, then one row per node it knows. 'in' counts packets")
    say("from that node and 'out' packets to it; on the router's own row (self), 'in' is what")
    say("its payload sent that the router passed, and 'out' what was handed to its payload.")
    for n in nodes.values():
        stats = n.router.stats()
        drops = ", ".join(f"{k} {v}" for k, v in stats["drops"].items() if v) or "none"
        totals = f"injected {stats['injected']}, received {stats['received']}"
        say(f"  {n.name:<10} {totals}, drops: {drops}")
        rows = [(nid, c, "") for nid, c in stats["nodes"].items()]
        rows += [(nid, c, " (removed)") for nid, c in removed.get(n.name, {}).items()]
        for nid, c, note in rows:
            peer = by_id[nid].name + (" (self)" if nid == n.node_id else note)
            say(
                f"      {peer:<20} in {c['packets_in']} pkts/{c['bytes_in']} B,"
                f" out {c['packets_out']} pkts/{c['bytes_out']} B"
            )
    say()
    say("Part 2: payloads talk over the userspace stacks (TCP, UDP, ICMP).")
    asyncio.run(_payloads(say))
    return 0


async def _payloads(say: Callable[[str], None]) -> None:
    async with LocalNetwork("192.168.0.0/24") as net:
        net.add_node(REQUESTOR)
        a = net.add_node(PROVIDER_A)
        b = net.add_node(PROVIDER_B)
        digests: asyncio.Queue[str] = asyncio.Queue()

        async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            body = f"hello from provider-a ({a.ip}), you asked {request.split()[1].decode()}\n"
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                f"{body}".encode()
            )
            await writer.drain()
            writer.close()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            digest = hashlib.sha256()
            while data := await reader.read(1 << 20):
                digest.update(data)
            await digests.put(digest.hexdigest())
            writer.close()

        http_server = await a.start_server(http, 80)
        sink_server = await a.start_server(sink, 9000)
        reader, writer = await b.open_connection(a.ip, 80)
        writer.write(f"GET /index.html HTTP/1.1\r\nHost: {a.ip}\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read()
        writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0].decode()
        say(f"  provider-b GET http://{a.ip}/index.html -> {status}: {body.decode().strip()}")

        rtt = await b.ping(a.ip)
        say(f"  provider-b ping {a.ip}: {rtt * 1000:.2f} ms")

        rx = await a.open_datagram_endpoint(5353)
        tx = await b.open_datagram_endpoint()
        tx.send(b"hello over UDP", (str(a.ip), 5353))
        data, sender = await rx.recv()
        say(f"  provider-a got UDP {data!r} from {sender[0]}:{sender[1]}")

        size = 16 << 20
        payload = hashlib.sha256(b"golem").digest() * (size // 32)
        started = time.perf_counter()
        reader, writer = await b.open_connection(a.ip, 9000)
        writer.write(payload)
        await writer.drain()
        writer.close()
        received = await digests.get()
        elapsed = time.perf_counter() - started
        sent = hashlib.sha256(payload).hexdigest()
        verdict = "match" if received == sent else "MISMATCH"
        say(
            f"  provider-b streamed 16 MiB to provider-a in {elapsed:.2f} s"
            f" ({size * 8 / elapsed / 1e9:.2f} Gbit/s), SHA-256 {verdict}: {sent[:16]}..."
        )
        http_server.close()
        sink_server.close()
        tx.close()
        rx.close()
