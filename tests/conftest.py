"""Shared test material: node ids, the address plan, packet builders and router fixtures.

Packets are built with scapy (real headers, correct checksums) and are only ever handed to
userspace ``golem_vpn.Router`` objects; nothing is sent on any network and nothing here
needs root. Test modules import the constants and builders from here (``from conftest
import ...``) because Hypothesis tests cannot take function-scoped fixtures.

The address plan, shared by every router test:

======== ======================= =============== ==================================
node     role                    IPv4            IPv6
======== ======================= =============== ==================================
REQ      requestor               192.168.0.1     fd00::1
PROV_A   provider                192.168.0.2     fd00::2
PROV_B   provider (IPv4 only)    192.168.0.3     -
PROV_C   provider (IPv6 only)    -               fd00::4
STRANGER never in the network    -               -
======== ======================= =============== ==================================
"""

from __future__ import annotations

import ipaddress
import struct
import warnings
from collections.abc import Mapping

import pytest

from golem_vpn import Router

# Scapy may warn while loading (optional crypto, missing routes); under
# ``filterwarnings = error`` that would break collection, so load it quietly once here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from scapy.config import conf
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        ICMPv6ND_NA,
        ICMPv6ND_NS,
        ICMPv6NDOptDstLLAddr,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
    )
    from scapy.layers.l2 import ARP, Ether
    from scapy.packet import Raw

conf.verb = 0

__all__ = [
    "ARP",
    "A_V4",
    "A_V6",
    "B_V4",
    "C_V6",
    "ICMP",
    "IP",
    "NET_ID",
    "PROV_A",
    "PROV_B",
    "PROV_C",
    "REQ",
    "REQ_V4",
    "REQ_V6",
    "STRANGER",
    "TCP",
    "UDP",
    "Ether",
    "ICMPv6EchoRequest",
    "ICMPv6NDOptDstLLAddr",
    "ICMPv6NDOptSrcLLAddr",
    "ICMPv6ND_NA",
    "ICMPv6ND_NS",
    "IPv6",
    "Raw",
    "drop_changes",
    "dst_ip",
    "eth_header",
    "ipv4_checksum",
    "mac",
    "mac_text",
    "make_eth_router",
    "make_router",
    "solicited_node",
    "src_ip",
    "udp",
    "udp4",
    "udp6",
]

NET_ID = "0123456789abcdef0123456789abcdef"
CIDRS = ["192.168.0.0/24", "fd00::/64"]

REQ = "0x" + "a1" * 20
PROV_A = "0x" + "b2" * 20
PROV_B = "0x" + "c3" * 20
PROV_C = "0x" + "d4" * 20
STRANGER = "0x" + "e5" * 20

REQ_V4, REQ_V6 = "192.168.0.1", "fd00::1"
A_V4, A_V6 = "192.168.0.2", "fd00::2"
B_V4 = "192.168.0.3"
C_V6 = "fd00::4"

ADDRESSES: dict[str, list[str]] = {
    REQ: [REQ_V4, REQ_V6],
    PROV_A: [A_V4, A_V6],
    PROV_B: [B_V4],
    PROV_C: [C_V6],
}


# --- routers ------------------------------------------------------------------------------


def make_router(local: str = REQ, *, ethernet: bool = False) -> Router:
    """A router of the standard network on ``local``'s side, every other node added."""
    router = Router(
        NET_ID,
        CIDRS,
        local,
        ADDRESSES[local],
        ethernet=ethernet,
        requestor=REQ if ethernet else None,
    )
    for node, ips in ADDRESSES.items():
        if node != local:
            for ip in ips:
                assert router.add_node(node, ip) is True
    return router


def make_eth_router(local: str = PROV_A) -> Router:
    """An Ethernet-mode router (a provider's VM by default), requestor ``REQ``."""
    return make_router(local, ethernet=True)


@pytest.fixture
def router() -> Router:
    """The requestor's IP-mode router with PROV_A, PROV_B and PROV_C added."""
    return make_router()


@pytest.fixture
def eth_router() -> Router:
    """PROV_A's Ethernet-mode router (requestor REQ) with REQ, PROV_B and PROV_C added."""
    return make_eth_router()


# --- packets ------------------------------------------------------------------------------


def udp4(
    src: str, dst: str, payload: bytes = b"golem", *, sport: int = 40000, dport: int = 5353
) -> bytes:
    """An IPv4/UDP packet with correct checksums."""
    return bytes(IP(src=src, dst=dst, ttl=64) / UDP(sport=sport, dport=dport) / Raw(payload))


def udp6(
    src: str, dst: str, payload: bytes = b"golem", *, sport: int = 40000, dport: int = 5353
) -> bytes:
    """An IPv6/UDP packet with a correct checksum."""
    return bytes(IPv6(src=src, dst=dst, hlim=64) / UDP(sport=sport, dport=dport) / Raw(payload))


def udp(src: str, dst: str, payload: bytes = b"golem") -> bytes:
    """:func:`udp4` or :func:`udp6`, by the addresses' family."""
    if ipaddress.ip_address(src).version == 4:
        return udp4(src, dst, payload)
    return udp6(src, dst, payload)


def ipv4_checksum(header: bytes) -> int:
    """The RFC 791 header checksum of ``header`` (its checksum field taken as zero)."""
    data = header[:10] + b"\x00\x00" + header[12:]
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def src_ip(packet: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The source address of a (validated) IP packet, read straight from its bytes."""
    if packet[0] >> 4 == 4:
        return ipaddress.IPv4Address(packet[12:16])
    return ipaddress.IPv6Address(packet[8:24])


def dst_ip(packet: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The destination address of a (validated) IP packet, read straight from its bytes."""
    if packet[0] >> 4 == 4:
        return ipaddress.IPv4Address(packet[16:20])
    return ipaddress.IPv6Address(packet[24:40])


def mac(ip: str, *, requestor: bool = False) -> bytes:
    """Yagna's MAC for the interface holding ``ip``: ``90:13`` (``a0:13`` for the
    requestor) followed by the IPv4 octets, or the last four octets of an IPv6 address."""
    prefix = b"\xa0\x13" if requestor else b"\x90\x13"
    return prefix + ipaddress.ip_address(ip).packed[-4:]


def mac_text(raw: bytes) -> str:
    """``aa:bb:cc:dd:ee:ff`` for six bytes."""
    return ":".join(f"{b:02x}" for b in raw)


def eth_header(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """An Ethernet II header."""
    return struct.pack("!6s6sH", dst, src, ethertype)


def solicited_node(ip: str) -> str:
    """The solicited-node multicast group of ``ip`` (``ff02::1:ffXX:XXXX``)."""
    low = int(ipaddress.IPv6Address(ip)) & 0xFFFFFF
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low))


def drop_changes(before: Mapping[str, object], after: Mapping[str, object]) -> dict[str, int]:
    """The drop reasons whose counter changed between two ``stats()`` snapshots."""
    old, new = before["drops"], after["drops"]
    assert isinstance(old, dict)
    assert isinstance(new, dict)
    return {reason: new[reason] - old[reason] for reason in new if new[reason] != old[reason]}
