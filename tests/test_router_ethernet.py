"""Tests of ``golem_vpn.Router`` in Ethernet mode (VM runtimes).

The router strips Ethernet headers on the way in, puts yagna-style headers on the way
out, and answers ARP and IPv6 neighbour solicitations for known nodes itself. Expected
answers are built independently (``struct`` or scapy) and compared byte for byte.

The router under test is PROV_A's (``192.168.0.2``, ``fd00::2``); the requestor REQ is a
remote node there, so its MACs start ``a0:13``.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from conftest import (
    A_V4,
    A_V6,
    ARP,
    B_V4,
    C_V6,
    PROV_A,
    PROV_B,
    PROV_C,
    REQ,
    REQ_V4,
    REQ_V6,
    STRANGER,
    Ether,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    Raw,
    drop_changes,
    eth_header,
    mac,
    mac_text,
    make_eth_router,
    solicited_node,
    udp,
    udp4,
    udp6,
)
from golem_vpn import Router

BROADCAST_MAC = b"\xff" * 6
ETH_IPV4, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD

# The VM's own interface MAC (yagna gives it 90:13:<ip>), and a MAC a VM image might
# bring along: the router must answer whichever MAC asked.
VM_MACS = [mac(A_V4), bytes.fromhex("525400123456")]


def assert_dropped(router: Router, frame: bytes, reason: str) -> None:
    """Injects ``frame`` and checks it was dropped, counted once under ``reason``."""
    before = router.stats()
    assert router.inject(frame) == []
    after = router.stats()
    assert drop_changes(before, after) == {reason: 1}
    assert after["dropped"] == before["dropped"] + 1
    assert after["injected"] == before["injected"] + 1
    assert after["nodes"] == before["nodes"]


def frame_of(ethertype: int, packet: bytes, *, src: bytes = VM_MACS[0]) -> bytes:
    """``packet`` as the VM would send it: behind an Ethernet header, padded to 60 bytes."""
    frame = eth_header(BROADCAST_MAC, src, ethertype) + packet
    return frame + bytes(max(0, 60 - len(frame)))


def ip_frame(packet: bytes, *, src: bytes = VM_MACS[0]) -> bytes:
    ethertype = ETH_IPV4 if packet[0] >> 4 == 4 else ETH_IPV6
    return frame_of(ethertype, packet, src=src)


# --- ARP ----------------------------------------------------------------------------------


def arp_request(sender_mac: bytes, sender_ip: str, target_ip: str) -> bytes:
    """A who-has broadcast as a VM sends it (scapy builds it)."""
    return bytes(
        Ether(src=mac_text(sender_mac), dst="ff:ff:ff:ff:ff:ff")
        / ARP(
            op=1,
            hwsrc=mac_text(sender_mac),
            psrc=sender_ip,
            hwdst="00:00:00:00:00:00",
            pdst=target_ip,
        )
    )


def expected_arp_reply(
    requester_mac: bytes, requester_ip: str, target_mac: bytes, target_ip: str
) -> bytes:
    """The is-at answer, built field by field with ``struct``."""
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        1,  # htype: Ethernet
        0x0800,  # ptype: IPv4
        6,  # hlen
        4,  # plen
        2,  # op: reply
        target_mac,
        ipaddress.IPv4Address(target_ip).packed,
        requester_mac,
        ipaddress.IPv4Address(requester_ip).packed,
    )
    return eth_header(requester_mac, target_mac, ETH_ARP) + arp


@pytest.mark.parametrize("vm_mac", VM_MACS, ids=["yagna-mac", "other-mac"])
@pytest.mark.parametrize(
    ("target_ip", "target_mac"),
    [
        (B_V4, bytes.fromhex("9013c0a80003")),  # a provider: 90:13:<ip>
        (REQ_V4, bytes.fromhex("a013c0a80001")),  # the requestor: a0:13:<ip>
    ],
    ids=["provider", "requestor"],
)
@pytest.mark.parametrize("padded", [False, True])
def test_arp_request_for_a_known_node_is_answered(
    eth_router: Router, vm_mac: bytes, target_ip: str, target_mac: bytes, padded: bool
) -> None:
    assert target_mac == mac(target_ip, requestor=target_ip == REQ_V4)
    request = arp_request(vm_mac, A_V4, target_ip)
    if padded:
        request += bytes(60 - len(request))  # a NIC pads to the minimum frame size
    out = eth_router.inject(request)
    expected = expected_arp_reply(vm_mac, A_V4, target_mac, target_ip)
    assert len(expected) == 42
    assert out == [(PROV_A, expected)]
    # Scapy reads the same answer.
    reply = Ether(out[0][1])
    assert reply[ARP].op == 2
    assert reply[ARP].hwsrc == mac_text(target_mac)
    assert reply[ARP].psrc == target_ip
    assert reply[ARP].hwdst == mac_text(vm_mac)
    assert reply[ARP].pdst == A_V4
    assert eth_router.stats()["dropped"] == 0


def test_arp_answer_counters(eth_router: Router) -> None:
    request = arp_request(VM_MACS[0], A_V4, B_V4) + bytes(18)
    eth_router.inject(request)
    nodes = eth_router.stats()["nodes"]
    assert nodes[PROV_A] == {
        "packets_in": 1,
        "bytes_in": 60,
        "packets_out": 1,
        "bytes_out": 42,
    }
    # Address resolution never leaves the machine.
    for node in (REQ, PROV_B, PROV_C):
        assert nodes[node] == {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}


def test_arp_for_a_node_added_later(eth_router: Router) -> None:
    request = arp_request(VM_MACS[0], A_V4, "192.168.0.9")
    assert_dropped(eth_router, request, "arp_unanswered")
    eth_router.add_node(STRANGER, "192.168.0.9")
    assert eth_router.inject(request) == [
        (PROV_A, expected_arp_reply(VM_MACS[0], A_V4, mac("192.168.0.9"), "192.168.0.9"))
    ]
    eth_router.remove_node(STRANGER)
    assert_dropped(eth_router, request, "arp_unanswered")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(arp_request(VM_MACS[0], A_V4, "192.168.0.77"), id="unknown-ip"),
        pytest.param(arp_request(VM_MACS[0], A_V4, "10.0.0.1"), id="outside-network"),
        pytest.param(arp_request(VM_MACS[0], A_V4, A_V4), id="gratuitous"),
        pytest.param(arp_request(VM_MACS[0], "0.0.0.0", A_V4), id="probe-own-ip"),
        pytest.param(
            bytes(
                Ether(src=mac_text(VM_MACS[0]), dst=mac_text(mac(B_V4)))
                / ARP(
                    op=2,
                    hwsrc=mac_text(VM_MACS[0]),
                    psrc=A_V4,
                    hwdst=mac_text(mac(B_V4)),
                    pdst=B_V4,
                )
            ),
            id="reply",
        ),
        pytest.param(
            # A well-formed request for a known node, but for IEEE 802 hardware (htype 6).
            eth_header(BROADCAST_MAC, VM_MACS[0], ETH_ARP)
            + struct.pack(
                "!HHBBH6s4s6s4s",
                6,
                0x0800,
                6,
                4,
                1,
                VM_MACS[0],
                ipaddress.IPv4Address(A_V4).packed,
                bytes(6),
                ipaddress.IPv4Address(B_V4).packed,
            ),
            id="not-ethernet-hardware",
        ),
    ],
)
def test_arp_left_unanswered(eth_router: Router, frame: bytes) -> None:
    assert_dropped(eth_router, frame, "arp_unanswered")


def test_truncated_arp(eth_router: Router) -> None:
    request = arp_request(VM_MACS[0], A_V4, B_V4)
    assert_dropped(eth_router, request[: 14 + 20], "truncated")
    assert_dropped(eth_router, request[:14], "truncated")


# --- IPv6 neighbour discovery -------------------------------------------------------------


def neighbor_solicit(asker_mac: bytes, asker_ip: str, target_ip: str) -> bytes:
    """An NS for ``target_ip`` to its solicited-node group, as a VM sends it (scapy)."""
    group = solicited_node(target_ip)
    ns = IPv6(src=asker_ip, dst=group, hlim=255) / ICMPv6ND_NS(tgt=target_ip)
    if asker_ip != "::":  # duplicate address detection carries no source link-layer address
        ns /= ICMPv6NDOptSrcLLAddr(lladdr=mac_text(asker_mac))
    group_mac = b"\x33\x33" + ipaddress.IPv6Address(group).packed[-4:]
    return bytes(Ether(src=mac_text(asker_mac), dst=mac_text(group_mac)) / ns)


def assert_checksum_valid(frame: bytes) -> None:
    """Scapy, recomputing the ICMPv6 checksum from scratch, gets the frame's own value."""
    packet = Ether(frame)
    sent = packet[ICMPv6ND_NA].cksum
    del packet[ICMPv6ND_NA].cksum
    rebuilt = Ether(bytes(packet))
    assert rebuilt[ICMPv6ND_NA].cksum == sent
    assert bytes(rebuilt) == frame


@pytest.mark.parametrize("vm_mac", VM_MACS, ids=["yagna-mac", "other-mac"])
@pytest.mark.parametrize(
    ("target_ip", "target_mac"),
    [
        (C_V6, bytes.fromhex("901300000004")),
        (REQ_V6, bytes.fromhex("a01300000001")),
    ],
    ids=["provider", "requestor"],
)
def test_neighbor_solicit_for_a_known_node_is_answered(
    eth_router: Router, vm_mac: bytes, target_ip: str, target_mac: bytes
) -> None:
    out = eth_router.inject(neighbor_solicit(vm_mac, A_V6, target_ip))
    assert len(out) == 1
    node, frame = out[0]
    assert node == PROV_A

    packet = Ether(frame)
    assert packet.dst == mac_text(vm_mac)
    assert packet.src == mac_text(target_mac)
    assert packet.type == ETH_IPV6
    ip = packet[IPv6]
    assert ip.src == target_ip
    assert ip.dst == A_V6
    assert ip.hlim == 255
    assert ip.nh == 58
    assert ip.plen == 32  # 24-byte advertisement + one 8-byte option
    na = packet[ICMPv6ND_NA]
    assert na.type == 136
    assert na.code == 0
    assert (na.R, na.S, na.O) == (0, 1, 1)
    assert na.tgt == target_ip
    assert packet[ICMPv6NDOptDstLLAddr].lladdr == mac_text(target_mac)
    assert_checksum_valid(frame)

    # And the whole frame, byte for byte, as scapy would build it.
    expected = bytes(
        Ether(dst=mac_text(vm_mac), src=mac_text(target_mac))
        / IPv6(src=target_ip, dst=A_V6, hlim=255)
        / ICMPv6ND_NA(R=0, S=1, O=1, tgt=target_ip)
        / ICMPv6NDOptDstLLAddr(lladdr=mac_text(target_mac))
    )
    assert frame == expected
    assert eth_router.stats()["dropped"] == 0


def test_duplicate_address_detection_is_answered_to_all_nodes(eth_router: Router) -> None:
    out = eth_router.inject(neighbor_solicit(VM_MACS[0], "::", C_V6))
    assert len(out) == 1
    node, frame = out[0]
    assert node == PROV_A
    packet = Ether(frame)
    assert packet.dst == "33:33:00:00:00:01"
    assert packet.src == mac_text(mac(C_V6))
    assert packet[IPv6].src == C_V6
    assert packet[IPv6].dst == "ff02::1"
    assert packet[IPv6].hlim == 255
    na = packet[ICMPv6ND_NA]
    assert (na.R, na.S, na.O) == (0, 0, 1)
    assert na.tgt == C_V6
    assert packet[ICMPv6NDOptDstLLAddr].lladdr == mac_text(mac(C_V6))
    assert_checksum_valid(frame)


def test_neighbor_advert_counters(eth_router: Router) -> None:
    request = neighbor_solicit(VM_MACS[0], A_V6, C_V6)
    eth_router.inject(request)
    assert eth_router.stats()["nodes"][PROV_A] == {
        "packets_in": 1,
        "bytes_in": len(request),
        "packets_out": 1,
        "bytes_out": 14 + 40 + 32,
    }


@pytest.mark.parametrize(
    ("asker", "target"),
    [
        (A_V6, "fd00::99"),  # nobody's
        (A_V6, A_V6),  # the VM's own address
        ("::", A_V6),  # duplicate address detection of its own address
        (A_V6, "fd01::1"),  # outside the network
    ],
)
def test_neighbor_solicit_left_unanswered(eth_router: Router, asker: str, target: str) -> None:
    assert_dropped(eth_router, neighbor_solicit(VM_MACS[0], asker, target), "ndisc_unanswered")


# --- IP over Ethernet: inject -------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst", "node"),
    [(A_V4, B_V4, PROV_B), (A_V4, REQ_V4, REQ), (A_V6, C_V6, PROV_C), (A_V6, REQ_V6, REQ)],
)
def test_inject_strips_the_header_and_padding(
    eth_router: Router, src: str, dst: str, node: str
) -> None:
    packet = udp(src, dst, b"hi")
    frame = ip_frame(packet)
    if packet[0] >> 4 == 4:
        assert len(frame) == 60  # 14 + 30 bytes, padded
    assert eth_router.inject(frame) == [(node, packet)]
    nodes = eth_router.stats()["nodes"]
    # Traffic is counted in IP bytes.
    assert nodes[PROV_A]["bytes_in"] == len(packet)
    assert nodes[node]["bytes_out"] == len(packet)


def test_inject_large_frame(eth_router: Router) -> None:
    packet = udp4(A_V4, B_V4, b"\x5a" * (65535 - 28))
    frame = ip_frame(packet)
    assert len(frame) == 14 + 65535
    assert eth_router.inject(frame) == [(PROV_B, packet)]


def test_inject_ethernet_broadcast(eth_router: Router) -> None:
    packet = udp4(A_V4, "255.255.255.255", b"dhcp?")
    out = eth_router.inject(ip_frame(packet))
    assert sorted(out) == sorted([(REQ, packet), (PROV_B, packet)])


def test_inject_ethernet_ipv6_multicast(eth_router: Router) -> None:
    packet = udp6(A_V6, "ff02::fb", b"mdns")
    out = eth_router.inject(ip_frame(packet))
    assert sorted(out) == sorted([(REQ, packet), (PROV_C, packet)])


def test_inject_ethernet_spoofed_source(eth_router: Router) -> None:
    assert_dropped(eth_router, ip_frame(udp4(B_V4, REQ_V4)), "spoofed_source")
    assert_dropped(eth_router, ip_frame(udp6("fe80::1", REQ_V6)), "link_local_source")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\xff", "truncated", id="1-byte"),
        pytest.param(eth_header(BROADCAST_MAC, VM_MACS[0], ETH_IPV4)[:13], "truncated", id="13"),
        pytest.param(
            eth_header(BROADCAST_MAC, VM_MACS[0], 0x88CC) + bytes(46),
            "unsupported_ethertype",
            id="lldp",
        ),
        pytest.param(frame_of(0x8100, udp4(A_V4, B_V4)), "unsupported_ethertype", id="vlan-tagged"),
        pytest.param(frame_of(0x0805, bytes(46)), "unsupported_ethertype", id="0x0805"),
        pytest.param(frame_of(ETH_IPV4, udp6(A_V6, C_V6)), "bad_version", id="v4-type-v6-body"),
        pytest.param(frame_of(ETH_IPV6, udp4(A_V4, B_V4)), "bad_version", id="v6-type-v4-body"),
        # Long enough that the frame needs no padding, which would hide the cut.
        pytest.param(frame_of(ETH_IPV4, udp4(A_V4, B_V4, bytes(80))[:100]), "truncated", id="cut"),
        pytest.param(
            ip_frame(udp4(A_V4, B_V4, b"\x5a" * (65535 - 28))) + b"\x00",
            "oversized",
            id="oversized",
        ),
        pytest.param(ip_frame(udp4(A_V4, "192.168.0.77")), "unknown_destination", id="unknown"),
        pytest.param(ip_frame(udp4(A_V4, "10.9.9.9")), "no_route", id="no-route"),
        pytest.param(ip_frame(udp6(A_V6, A_V6)), "local_destination", id="to-self"),
    ],
)
def test_inject_ethernet_drops(eth_router: Router, frame: bytes, reason: str) -> None:
    assert_dropped(eth_router, frame, reason)


# --- IP over Ethernet: receive ------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst", "node", "header"),
    [
        # eth dst = the VM's MAC, eth src = the sender's, ethertype of the packet.
        (B_V4, A_V4, PROV_B, "9013c0a80002 9013c0a80003 0800"),
        (REQ_V4, A_V4, REQ, "9013c0a80002 a013c0a80001 0800"),
        (C_V6, A_V6, PROV_C, "901300000002 901300000004 86dd"),
        (REQ_V6, A_V6, REQ, "901300000002 a01300000001 86dd"),
    ],
)
def test_receive_adds_the_header(
    eth_router: Router, src: str, dst: str, node: str, header: str
) -> None:
    packet = udp(src, dst, b"to the vm")
    out = eth_router.receive(packet, node)
    assert out == bytes.fromhex(header) + packet
    parsed = Ether(out)
    assert parsed.src == mac_text(mac(src, requestor=node == REQ))
    assert bytes(parsed.payload) == packet
    nodes = eth_router.stats()["nodes"]
    assert nodes[node]["bytes_in"] == len(packet)
    assert nodes[PROV_A]["bytes_out"] == len(packet)


def test_receive_trims_padding(eth_router: Router) -> None:
    packet = udp4(B_V4, A_V4, b"x")
    out = eth_router.receive(packet + bytes(16), PROV_B)
    assert out == eth_header(mac(A_V4), mac(B_V4), ETH_IPV4) + packet


def test_receive_on_the_requestors_vm() -> None:
    router = make_eth_router(REQ)
    packet = udp4(B_V4, REQ_V4)
    assert router.receive(packet, PROV_B) == (
        eth_header(bytes.fromhex("a013c0a80001"), mac(B_V4), ETH_IPV4) + packet
    )
    packet = udp6(A_V6, REQ_V6)
    assert router.receive(packet, PROV_A) == (
        eth_header(bytes.fromhex("a01300000001"), mac(A_V6), ETH_IPV6) + packet
    )
    # ...and the requestor's VM asking for a provider gets a 90:13 answer.
    assert router.inject(arp_request(mac(REQ_V4, requestor=True), REQ_V4, A_V4)) == [
        (REQ, expected_arp_reply(mac(REQ_V4, requestor=True), REQ_V4, mac(A_V4), A_V4))
    ]


@pytest.mark.parametrize(
    ("src", "dst", "node", "dst_mac"),
    [
        (B_V4, "255.255.255.255", PROV_B, "ffffffffffff"),
        (B_V4, "192.168.0.255", PROV_B, "ffffffffffff"),
        (REQ_V4, "224.0.0.251", REQ, "01005e0000fb"),
        (B_V4, "239.255.130.7", PROV_B, "01005e7f8207"),
        (C_V6, "ff02::1", PROV_C, "333300000001"),
        (REQ_V6, "ff02::fb", REQ, "3333000000fb"),
        (C_V6, "ff02::1:ff00:2", PROV_C, "3333ff000002"),
    ],
)
def test_receive_group_destinations(
    eth_router: Router, src: str, dst: str, node: str, dst_mac: str
) -> None:
    packet = udp(src, dst, b"everyone")
    ethertype = ETH_IPV4 if "." in src else ETH_IPV6
    src_mac = mac(src, requestor=node == REQ)
    assert eth_router.receive(packet, node) == (
        eth_header(bytes.fromhex(dst_mac), src_mac, ethertype) + packet
    )


def test_receive_drops_in_ethernet_mode(eth_router: Router) -> None:
    cases = [
        (udp4(B_V4, A_V4), REQ, "spoofed_source"),
        (udp4(B_V4, REQ_V4), PROV_B, "not_for_us"),
        (udp4(B_V4, A_V4), STRANGER, "unknown_node"),
        (udp4(B_V4, A_V4), PROV_A, "unknown_node"),  # the local id, from outside
        # An Ethernet frame where an IP packet belongs: version nibble 9 (from 90:13:...).
        (eth_header(mac(A_V6), mac(C_V6), ETH_IPV6) + udp6(C_V6, A_V6), PROV_C, "bad_version"),
    ]
    for packet, node, reason in cases:
        before = eth_router.stats()
        assert eth_router.receive(packet, node) is None
        assert drop_changes(before, eth_router.stats()) == {reason: 1}


def test_ethernet_medium(eth_router: Router) -> None:
    assert eth_router.medium == "ethernet"


def test_ethernet_end_to_end() -> None:
    """Two VMs: what one VM sends reaches the other as a frame it can take."""
    a, b = make_eth_router(PROV_A), make_eth_router(PROV_B)
    packet = udp4(A_V4, B_V4, b"over the vpn")
    ((node, wire),) = a.inject(ip_frame(packet))
    assert node == PROV_B
    assert b.receive(wire, PROV_A) == eth_header(mac(B_V4), mac(A_V4), ETH_IPV4) + packet
    # Raw from scapy's own dissection, as a VM's kernel would read it.
    assert Ether(b.receive(wire, PROV_A))[Raw].load == b"over the vpn"
