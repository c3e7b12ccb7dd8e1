"""Property tests of ``golem_vpn.Router`` against random and mangled frames.

Whatever bytes arrive, the router must not raise, must account for every frame (routed,
or dropped and counted exactly once), and must never let a spoofed packet through: what
the local payload sends only leaves with a local source address, and what a remote node
sends is only handed up with one of that node's addresses as its source.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    A_V4,
    A_V6,
    ADDRESSES,
    ARP,
    B_V4,
    C_V6,
    ICMP,
    IP,
    PROV_A,
    PROV_B,
    PROV_C,
    REQ,
    REQ_V4,
    REQ_V6,
    STRANGER,
    TCP,
    Ether,
    ICMPv6ND_NS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    Raw,
    dst_ip,
    eth_header,
    ipv4_checksum,
    mac,
    mac_text,
    make_eth_router,
    make_router,
    solicited_node,
    src_ip,
    udp4,
    udp6,
)
from golem_vpn import Router

Incoming = tuple[bytes, str]

FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

VM_MAC = mac(A_V4)

# What the requestor's payload (IP mode, local REQ) might send.
IP_OUTGOING = [
    udp4(REQ_V4, A_V4, b"unicast"),
    udp4(REQ_V4, B_V4, b"x" * 300),
    udp4(REQ_V4, "255.255.255.255", b"bcast"),
    udp4(REQ_V4, "192.168.0.255", b"subnet"),
    udp4(REQ_V4, "224.0.0.251", b"mdns"),
    udp4(A_V4, B_V4, b"spoofed"),
    bytes(IP(src=REQ_V4, dst=A_V4, options=b"\x01\x01\x01\x00") / TCP(flags="S")),
    bytes(IP(src=REQ_V4, dst=B_V4) / ICMP() / Raw(b"ping")),
    udp6(REQ_V6, A_V6, b"unicast6"),
    udp6(REQ_V6, C_V6, b"y" * 200),
    udp6(REQ_V6, "ff02::1", b"all"),
    udp6("fe80::1", "ff02::fb", b"link-local"),
    udp6(C_V6, A_V6, b"spoofed6"),
]

# What remote nodes might send to the requestor (IP mode, local REQ).
IP_INCOMING = [
    udp4(A_V4, REQ_V4, b"reply"),
    udp4(B_V4, REQ_V4, b"z" * 300),
    udp4(A_V4, "255.255.255.255", b"bcast"),
    udp4(B_V4, "224.0.0.251", b"mdns"),
    udp4(A_V4, B_V4, b"not for us"),
    udp4(REQ_V4, A_V4, b"reflected"),
    udp6(A_V6, REQ_V6, b"reply6"),
    udp6(C_V6, "ff02::1", b"all"),
    udp6(C_V6, A_V6, b"sideways"),
]

# What PROV_A's VM (Ethernet mode) might send.
ETH_OUTGOING = [
    eth_header(mac(B_V4), VM_MAC, 0x0800) + udp4(A_V4, B_V4, b"unicast"),
    eth_header(b"\xff" * 6, VM_MAC, 0x0800) + udp4(A_V4, "255.255.255.255", b"bcast"),
    eth_header(mac(C_V6), VM_MAC, 0x86DD) + udp6(A_V6, C_V6, b"unicast6"),
    eth_header(mac(REQ_V4, requestor=True), VM_MAC, 0x0800) + udp4(B_V4, REQ_V4, b"spoofed"),
    bytes(
        Ether(src=mac_text(VM_MAC), dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=mac_text(VM_MAC), psrc=A_V4, pdst=B_V4)
    ),
    bytes(
        Ether(src=mac_text(VM_MAC), dst="ff:ff:ff:ff:ff:ff")
        / ARP(op=1, hwsrc=mac_text(VM_MAC), psrc=A_V4, pdst=REQ_V4)
    ),
    bytes(
        Ether(src=mac_text(VM_MAC), dst="33:33:ff:00:00:04")
        / IPv6(src=A_V6, dst=solicited_node(C_V6), hlim=255)
        / ICMPv6ND_NS(tgt=C_V6)
        / ICMPv6NDOptSrcLLAddr(lladdr=mac_text(VM_MAC))
    ),
    bytes(
        Ether(src=mac_text(VM_MAC), dst="33:33:ff:00:00:01")
        / IPv6(src="::", dst=solicited_node(REQ_V6), hlim=255)
        / ICMPv6ND_NS(tgt=REQ_V6)
    ),
]

# What remote nodes might send to PROV_A's VM (Ethernet mode).
ETH_INCOMING = [
    udp4(B_V4, A_V4, b"reply"),
    udp4(REQ_V4, A_V4, b"from the requestor"),
    udp4(B_V4, "192.168.0.255", b"bcast"),
    udp4(REQ_V4, "239.1.2.3", b"group"),
    udp6(C_V6, A_V6, b"reply6"),
    udp6(REQ_V6, "ff02::fb", b"mdns"),
    udp4(A_V4, REQ_V4, b"reflected"),
]

IP_SENDERS = [PROV_A, PROV_B, PROV_C, STRANGER, REQ]
ETH_SENDERS = [REQ, PROV_B, PROV_C, STRANGER, PROV_A]

# Addresses the "src"/"dst" edits write into a packet: every node's, groups, strangers.
V4_ADDRESSES = [
    ip_address(a).packed
    for a in [
        *(REQ_V4, A_V4, B_V4, "192.168.0.77", "192.168.0.0", "192.168.0.255"),
        *("255.255.255.255", "224.0.0.251", "10.0.0.1", "0.0.0.0", "127.0.0.1"),
    ]
]
V6_ADDRESSES = [
    ip_address(a).packed
    for a in [
        *(REQ_V6, A_V6, C_V6, "fd00::77", "fd00::", "ff02::1", "ff02::1:ff00:4"),
        *("fe80::1", "2001:db8::1", "::", "::1"),
    ]
]


@st.composite
def mangled(draw: st.DrawFn, bases: list[bytes], offset: int = 0) -> bytes:
    """A valid frame from ``bases`` after a few random edits of its bytes from ``offset``
    on: flipped bytes, cuts, rewritten length/version/IHL fields, junk appended. The IPv4
    header checksum is then sometimes fixed up, so that edits reach past that check."""
    data = bytearray(draw(st.sampled_from(bases)))
    ops = st.sampled_from(
        ["flip", "cut", "length", "version", "ihl", "append", "flip_header", "src", "dst"]
    )
    for op in draw(st.lists(ops, max_size=4)):
        body = len(data) - offset
        if op in ("src", "dst") and body >= 40:
            # Rewrite an address field with an interesting address of the packet's family.
            if data[offset] >> 4 == 4:
                at = offset + (12 if op == "src" else 16)
                data[at : at + 4] = draw(st.sampled_from(V4_ADDRESSES))
            else:
                at = offset + (8 if op == "src" else 24)
                data[at : at + 16] = draw(st.sampled_from(V6_ADDRESSES))
        if op == "flip" and body > 0:
            at = offset + draw(st.integers(0, body - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif op == "flip_header" and len(data) > 0:  # anywhere, Ethernet header included
            at = draw(st.integers(0, min(len(data), offset + 40) - 1))
            data[at] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "length" and body >= 6:
            # IPv4 total length (bytes 2-3) or IPv6 payload length (bytes 4-5).
            at = offset + (2 if data[offset] >> 4 == 4 else 4)
            data[at : at + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif op == "version" and body >= 1:
            data[offset] = (draw(st.integers(0, 15)) << 4) | (data[offset] & 0x0F)
        elif op == "ihl" and body >= 1:
            data[offset] = (data[offset] & 0xF0) | draw(st.integers(0, 15))
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=64))
    body = len(data) - offset
    if body >= 20 and data[offset] >> 4 == 4 and draw(st.booleans()):
        header_len = min(max(data[offset] & 0x0F, 5) * 4, body)
        header = bytes(data[offset : offset + header_len])
        data[offset + 10 : offset + 12] = ipv4_checksum(header).to_bytes(2, "big")
    return bytes(data)


def frames(bases: list[bytes], offset: int = 0) -> st.SearchStrategy[bytes]:
    """Random bytes, or mangled valid frames."""
    return st.one_of(st.binary(max_size=2000), mangled(bases, offset))


def eth_frames() -> st.SearchStrategy[bytes]:
    """For Ethernet mode, also random bodies behind a valid IPv4/IPv6/ARP header."""
    random_body = st.builds(
        lambda ethertype, body: eth_header(b"\xff" * 6, VM_MAC, ethertype) + body,
        st.sampled_from([0x0800, 0x86DD, 0x0806, 0x88CC]),
        st.binary(max_size=200),
    )
    return st.one_of(frames(ETH_OUTGOING, offset=14), random_body)


def ips_of(router: Router, node: str) -> set[IPv4Address | IPv6Address]:
    return {ip_address(ip) for ip in router.nodes().get(node, [])}


def is_group(address: IPv4Address | IPv6Address) -> bool:
    return address.is_multicast or address in (
        IPv4Address("255.255.255.255"),
        IPv4Address("192.168.0.255"),
    )


def check_inject(router: Router, data: bytes) -> None:
    """Injects ``data`` and checks the invariants of what comes out."""
    ethernet = router.medium == "ethernet"
    local = router.node_id
    local_ips = ips_of(router, local)
    before = router.stats()
    out = router.inject(data)
    after = router.stats()
    assert after["injected"] == before["injected"] + 1
    assert after["received"] == before["received"]
    if not out:
        assert after["dropped"] == before["dropped"] + 1
        return
    assert after["dropped"] == before["dropped"]
    if ethernet and out[0][0] == local:
        check_resolution_answer(router, out)
        return
    body = data[14:] if ethernet else data
    for node, packet in out:
        assert node != local
        assert node in router.nodes()
        # The one rule that matters most: nothing leaves with a source that is not ours.
        assert src_ip(packet) in local_ips
        # Deliveries are the input, at most trimmed; never rewritten.
        assert body.startswith(packet)
        assert len(packet) >= 20
    destination = dst_ip(out[0][1])
    holder = router.node_of(destination)
    if holder is not None:
        assert out == [(holder, body[: len(out[0][1])])]
    else:
        assert is_group(destination)
        assert len({node for node, _ in out}) == len(out)  # once per node


def check_resolution_answer(router: Router, out: list[tuple[str, bytes]]) -> None:
    """An ARP or neighbour-discovery answer: one frame, naming a remote node's address
    with that node's MAC."""
    assert len(out) == 1
    frame = out[0][1]
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0806:
        assert len(frame) == 42
        assert frame[20:22] == b"\x00\x02"  # a reply
        sender = IPv4Address(frame[28:32])
        sender_mac = frame[22:28]
    else:
        assert ethertype == 0x86DD
        assert frame[14 + 40] == 136  # ICMPv6 neighbour advertisement
        sender = IPv6Address(frame[14 + 8 : 14 + 24])
        sender_mac = frame[14 + 40 + 26 : 14 + 40 + 32]
    holder = router.node_of(sender)
    assert holder is not None
    assert holder != router.node_id
    assert frame[6:12] == sender_mac == mac(str(sender), requestor=holder == REQ)


def check_receive(router: Router, data: bytes, sender: str) -> None:
    """Receives ``data`` from ``sender`` and checks the invariants of what comes out."""
    ethernet = router.medium == "ethernet"
    before = router.stats()
    out = router.receive(data, sender)
    after = router.stats()
    assert after["received"] == before["received"] + 1
    assert after["injected"] == before["injected"]
    if out is None:
        assert after["dropped"] == before["dropped"] + 1
        return
    assert after["dropped"] == before["dropped"]
    assert sender != router.node_id
    packet = out[14:] if ethernet else out
    if ethernet:
        assert out[12:14] == (b"\x08\x00" if packet[0] >> 4 == 4 else b"\x86\xdd")
        assert out[6:12] == mac(str(src_ip(packet)), requestor=sender == REQ)
    # Only the sender's own addresses get through.
    assert src_ip(packet) in ips_of(router, sender)
    destination = dst_ip(packet)
    assert destination in ips_of(router, router.node_id) or is_group(destination)
    assert data.startswith(packet)


@FUZZ
@given(data=frames(IP_OUTGOING))
def test_inject_ip(data: bytes) -> None:
    check_inject(make_router(), data)


@st.composite
def from_someone(draw: st.DrawFn, data: st.SearchStrategy[bytes], senders: list[str]) -> Incoming:
    """A frame and the node it comes from: mostly the holder of its source address (if
    any node holds it), so that mangled frames get past the sender check, else anyone."""
    frame = draw(data)
    holder = None
    if len(frame) >= 40 and frame[0] >> 4 in (4, 6):
        holder = {ip: node for node, ips in ADDRESSES.items() for ip in ips}.get(str(src_ip(frame)))
    if holder is not None and draw(st.integers(0, 3)) > 0:
        return frame, holder
    return frame, draw(st.sampled_from(senders))


@FUZZ
@given(item=from_someone(frames(IP_INCOMING), IP_SENDERS))
def test_receive_ip(item: Incoming) -> None:
    check_receive(make_router(), *item)


@FUZZ
@given(data=eth_frames())
def test_inject_ethernet(data: bytes) -> None:
    check_inject(make_eth_router(), data)


@FUZZ
@given(item=from_someone(frames(ETH_INCOMING), ETH_SENDERS))
def test_receive_ethernet(item: Incoming) -> None:
    check_receive(make_eth_router(), *item)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(frames(IP_OUTGOING), max_size=8))
def test_inject_many_matches_inject(batch: list[bytes]) -> None:
    many, one = make_router(), make_router()
    assert many.inject_many(batch) == [d for p in batch for d in one.inject(p)]
    assert many.stats() == one.stats()


@settings(max_examples=100, deadline=None)
@given(
    batch=st.lists(
        from_someone(frames(IP_INCOMING), IP_SENDERS).map(lambda item: (item[1], item[0])),
        max_size=8,
    )
)
def test_receive_many_matches_receive(batch: list[tuple[str, bytes]]) -> None:
    many, one = make_router(), make_router()
    expected = [out for node, p in batch if (out := one.receive(p, node)) is not None]
    assert many.receive_many(batch) == expected
    assert many.stats() == one.stats()


def test_mangling_reaches_deep_checks() -> None:
    """The fuzzed corpus is not all rejected at the first check: every base frame is
    routable as it stands, so mangling starts from frames that pass."""
    router = make_router()
    routed = [p for p in IP_OUTGOING if router.inject(p)]
    assert len(routed) == len(IP_OUTGOING) - 3  # the three spoofed ones
    eth = make_eth_router()
    assert sum(1 for f in ETH_OUTGOING if eth.inject(f)) == len(ETH_OUTGOING) - 1
