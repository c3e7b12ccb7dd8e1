"""Tests of ``golem_vpn.Router`` with bare IP packets (TUN devices, userspace stacks).

Every packet is a real one built by scapy; routing results are compared byte for byte and
every drop is checked against exactly one counter of ``stats()``.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from conftest import (
    A_V4,
    A_V6,
    ADDRESSES,
    B_V4,
    C_V6,
    ICMP,
    IP,
    NET_ID,
    PROV_A,
    PROV_B,
    PROV_C,
    REQ,
    REQ_V4,
    REQ_V6,
    STRANGER,
    TCP,
    UDP,
    ICMPv6EchoRequest,
    IPv6,
    Raw,
    drop_changes,
    ipv4_checksum,
    make_router,
    udp,
    udp4,
    udp6,
)
from golem_vpn import (
    DROP_REASONS,
    MAX_PACKET_LEN,
    AddressError,
    AddressOutOfRange,
    AddressReserved,
    AddressTaken,
    GolemVpnError,
    InvalidNodeId,
    Router,
)

BAD_NODE_IDS = [
    "",
    "0x",
    "a1" * 20,  # no prefix
    "0X" + "a1" * 20,  # the prefix must be lowercase
    "0x" + "a1" * 19 + "a",  # 39 digits
    "0x" + "a1" * 20 + "a",  # 41 digits
    "0x" + "g1" * 20,
    " 0x" + "a1" * 20,
]


def assert_dropped(router: Router, action: Callable[[], object], reason: str) -> None:
    """Runs ``action`` and checks it returned nothing and counted exactly one ``reason``."""
    before = router.stats()
    result = action()
    after = router.stats()
    assert result in ([], None)
    assert drop_changes(before, after) == {reason: 1}
    assert after["dropped"] == before["dropped"] + 1
    # Dropped frames are not traffic.
    assert after["nodes"] == before["nodes"]


def deliveries_by_node(deliveries: list[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for node, packet in deliveries:
        out.setdefault(node, []).append(packet)
    return out


# --- construction -------------------------------------------------------------------------


def test_single_range() -> None:
    router = Router(NET_ID, "192.168.0.0/24", REQ, "192.168.0.1")
    assert router.network_id == NET_ID
    assert router.node_id == REQ
    assert router.ips == ["192.168.0.1"]
    assert router.cidrs == ["192.168.0.0/24"]
    assert router.medium == "ip"
    assert router.nodes() == {REQ: ["192.168.0.1"]}
    assert router.node_of("192.168.0.1") == REQ


def test_node_id_is_lowercased() -> None:
    router = Router(NET_ID, "192.168.0.0/24", REQ.upper().replace("0X", "0x"), "192.168.0.1")
    assert router.node_id == REQ
    assert router.nodes() == {REQ: ["192.168.0.1"]}


def test_host_bits_of_a_range_are_cleared() -> None:
    router = Router(NET_ID, ["192.168.0.77/24", "fd00::1234/64"], REQ, ["192.168.0.1", "fd00::1"])
    assert router.cidrs == ["192.168.0.0/24", "fd00::/64"]


def test_several_ranges_ipv4_and_ipv6() -> None:
    router = Router(
        NET_ID,
        ["192.168.0.0/24", "192.168.1.0/24", "fd00::/64"],
        REQ,
        ["192.168.0.1", "192.168.1.1", "fd00::1"],
    )
    assert router.cidrs == ["192.168.0.0/24", "192.168.1.0/24", "fd00::/64"]
    assert router.ips == ["192.168.0.1", "192.168.1.1", "fd00::1"]
    assert router.nodes() == {REQ: ["192.168.0.1", "192.168.1.1", "fd00::1"]}
    assert router.add_node(PROV_A, "192.168.1.2") is True
    assert router.add_node(PROV_A, "fd00::2") is True
    with pytest.raises(AddressOutOfRange):
        router.add_node(PROV_A, "192.168.2.2")


def test_ipaddress_objects_in_lists() -> None:
    router = Router(
        NET_ID,
        [IPv4Network("192.168.0.0/24"), IPv6Network("fd00::/64")],
        REQ,
        [IPv4Address("192.168.0.1"), IPv6Address("fd00::1")],
    )
    assert router.cidrs == ["192.168.0.0/24", "fd00::/64"]
    assert router.ips == ["192.168.0.1", "fd00::1"]
    assert router.add_node(PROV_A, IPv4Address(A_V4)) is True
    assert router.add_node(PROV_A, IPv6Address(A_V6)) is True
    assert router.node_of(IPv4Address(A_V4)) == PROV_A
    assert router.node_of(IPv6Address(A_V6)) == PROV_A


# The signature documents ``cidrs: _Net | Iterable[_Net]`` and ``ips: _Ip | Iterable[_Ip]``,
# ``_Net`` and ``_Ip`` including the ``ipaddress`` types: one such object is one range or one
# address. (An ``IPv4Network`` is itself iterable, over its addresses: it must not be taken
# as a list of /32 ranges. The IPv6 case uses a /120 so that a router that does iterate it
# fails fast instead of walking 2**64 addresses.)


@pytest.mark.parametrize(
    ("cidr", "ip"),
    [
        (IPv4Network("192.168.0.0/24"), "192.168.0.1"),
        (IPv6Network("fd00::/120"), "fd00::1"),
    ],
)
def test_one_ipaddress_network_is_one_range(cidr: IPv4Network | IPv6Network, ip: str) -> None:
    router = Router(NET_ID, cidr, REQ, ip)
    assert router.cidrs == [str(cidr)]
    assert router.ips == [ip]


@pytest.mark.parametrize(
    ("cidr", "ip"),
    [
        ("192.168.0.0/24", IPv4Address("192.168.0.1")),
        ("fd00::/64", IPv6Address("fd00::1")),
    ],
)
def test_one_ipaddress_address_is_one_address(cidr: str, ip: IPv4Address | IPv6Address) -> None:
    router = Router(NET_ID, cidr, REQ, ip)
    assert router.cidrs == [cidr]
    assert router.ips == [str(ip)]


@pytest.mark.parametrize("bad", BAD_NODE_IDS)
def test_bad_local_node_id(bad: str) -> None:
    with pytest.raises(InvalidNodeId):
        Router(NET_ID, "192.168.0.0/24", bad, "192.168.0.1")


@pytest.mark.parametrize("bad", BAD_NODE_IDS)
def test_bad_requestor_id(bad: str) -> None:
    with pytest.raises(InvalidNodeId):
        Router(NET_ID, "192.168.0.0/24", REQ, "192.168.0.1", ethernet=True, requestor=bad)


@pytest.mark.parametrize(
    "cidrs",
    [
        ["192.168.0.0/24", "192.168.0.128/25"],
        ["192.168.0.128/25", "192.168.0.0/16"],
        ["192.168.0.0/24", "192.168.0.0/24"],
        ["fd00::/64", "fd00::/48"],
        ["192.168.0.0/24", "fd00::/64", "192.168.0.4/30"],
    ],
)
def test_overlapping_ranges(cidrs: list[str]) -> None:
    with pytest.raises(AddressError) as info:
        Router(NET_ID, cidrs, REQ, "192.168.0.1")
    assert type(info.value) is AddressError


@pytest.mark.parametrize(
    ("cidrs", "ip"),
    [
        ("192.168.0.0/24", "192.168.1.1"),
        ("192.168.0.0/24", "fd00::1"),
        ("fd00::/64", "fd00:0:0:1::1"),
        (["192.168.0.0/24", "fd00::/64"], "192.168.7.1"),
    ],
)
def test_local_ip_out_of_range(cidrs: str | list[str], ip: str) -> None:
    with pytest.raises(AddressOutOfRange):
        Router(NET_ID, cidrs, REQ, ip)


@pytest.mark.parametrize("ip", ["192.168.0.0", "192.168.0.255", "224.0.0.1", "255.255.255.255"])
def test_local_ip_reserved(ip: str) -> None:
    with pytest.raises(AddressReserved):
        Router(NET_ID, "192.168.0.0/24", REQ, ip)


@pytest.mark.parametrize(
    "cidr",
    [
        "",
        "nonsense",
        "192.168.0.0/33",
        "192.168.0/24",
        "192.168.0.0/",
        "192.168.0.0/-1",
        "192.168.0.0/24/1",
        "192.168.0.256/24",
        "fd00::/129",
        "fd00::g/64",
    ],
)
def test_bad_range_text(cidr: str) -> None:
    with pytest.raises(AddressError):
        Router(NET_ID, cidr, REQ, "192.168.0.1")


@pytest.mark.parametrize("ip", ["", "192.168.0", "192.168.0.1.1", "192.168.0.300", "node"])
def test_bad_local_ip_text(ip: str) -> None:
    with pytest.raises(AddressError):
        Router(NET_ID, "192.168.0.0/24", REQ, ip)


def test_no_range_or_no_local_ip() -> None:
    with pytest.raises(AddressError):
        Router(NET_ID, [], REQ, "192.168.0.1")
    with pytest.raises(AddressError):
        Router(NET_ID, "192.168.0.0/24", REQ, [])


# --- the node table -----------------------------------------------------------------------


def test_add_node_returns_whether_it_changed_anything() -> None:
    router = Router(NET_ID, ["192.168.0.0/24", "fd00::/64"], REQ, [REQ_V4, REQ_V6])
    assert router.add_node(PROV_A, A_V4) is True
    assert router.add_node(PROV_A, A_V4) is False  # yagna's refresh: harmless
    assert router.add_node(PROV_A.upper().replace("0X", "0x"), A_V4) is False
    assert router.nodes() == {REQ: [REQ_V4, REQ_V6], PROV_A: [A_V4]}
    assert router.node_of(A_V4) == PROV_A
    assert router.node_of(REQ_V6) == REQ
    assert router.node_of("192.168.0.99") is None
    assert router.node_of("10.0.0.1") is None


def test_node_with_several_addresses() -> None:
    router = Router(NET_ID, ["192.168.0.0/24", "fd00::/64"], REQ, [REQ_V4, REQ_V6])
    assert router.add_node(PROV_A, A_V4) is True
    assert router.add_node(PROV_A, "192.168.0.20") is True
    assert router.add_node(PROV_A, A_V6) is True
    assert router.add_node(PROV_A, "192.168.0.20") is False
    assert router.nodes() == {REQ: [REQ_V4, REQ_V6], PROV_A: [A_V4, "192.168.0.20", A_V6]}
    for ip in (A_V4, "192.168.0.20", A_V6):
        assert router.node_of(ip) == PROV_A
    # Every address is routable.
    for ip in ("192.168.0.20", A_V6):
        src = REQ_V4 if ":" not in ip else REQ_V6
        packet = udp(src, ip)
        assert router.inject(packet) == [(PROV_A, packet)]


def test_local_node_is_listed_first() -> None:
    router = make_router(PROV_B)
    nodes = router.nodes()
    assert next(iter(nodes)) == PROV_B
    assert nodes == {node: ips for node, ips in ADDRESSES.items()}


def test_address_taken_by_another_node(router: Router) -> None:
    before = router.nodes()
    with pytest.raises(AddressTaken):
        router.add_node(STRANGER, A_V4)
    with pytest.raises(AddressTaken):
        router.add_node(STRANGER, REQ_V6)  # the local node's
    with pytest.raises(AddressTaken):
        router.add_node(PROV_B, A_V6)  # a known node taking another's
    assert router.nodes() == before
    assert router.node_of(A_V4) == PROV_A


@pytest.mark.parametrize("ip", ["192.168.1.2", "10.0.0.1", "fd01::2", "fd00:0:0:1::2"])
def test_add_node_out_of_range(router: Router, ip: str) -> None:
    before = router.nodes()
    with pytest.raises(AddressOutOfRange):
        router.add_node(STRANGER, ip)
    assert router.nodes() == before


@pytest.mark.parametrize(
    "ip",
    [
        "192.168.0.0",  # network
        "192.168.0.255",  # subnet broadcast
        "255.255.255.255",
        "224.0.0.1",
        "224.0.0.251",
        "127.0.0.1",
        "0.0.0.0",
        "ff02::1",
        "fd00::",  # the IPv6 network (subnet-router anycast) address
        "::1",
        "::",
    ],
)
def test_add_node_reserved(router: Router, ip: str) -> None:
    before = router.nodes()
    with pytest.raises(AddressReserved) as info:
        router.add_node(STRANGER, ip)
    assert isinstance(info.value, AddressError)
    assert router.nodes() == before
    assert STRANGER not in router.nodes()


@pytest.mark.parametrize("ip", ["192.168.0", "not an ip", "", "192.168.0.1/24"])
def test_add_node_bad_ip_text(router: Router, ip: str) -> None:
    with pytest.raises(AddressError):
        router.add_node(STRANGER, ip)


@pytest.mark.parametrize("bad", BAD_NODE_IDS)
def test_node_table_rejects_bad_node_ids(router: Router, bad: str) -> None:
    with pytest.raises(InvalidNodeId):
        router.add_node(bad, "192.168.0.50")
    with pytest.raises(InvalidNodeId):
        router.remove_node(bad)
    assert router.node_of("192.168.0.50") is None


def test_ipv4_slash_31_has_two_usable_addresses() -> None:
    router = Router(NET_ID, "192.168.5.0/31", REQ, "192.168.5.0")
    assert router.add_node(PROV_A, "192.168.5.1") is True
    with pytest.raises(AddressOutOfRange):
        router.add_node(PROV_B, "192.168.5.2")
    # 192.168.5.1 is a host here, not a broadcast address: one unicast delivery.
    packet = udp4("192.168.5.0", "192.168.5.1")
    assert router.inject(packet) == [(PROV_A, packet)]
    back = udp4("192.168.5.1", "192.168.5.0")
    assert router.receive(back, PROV_A) is back


def test_ipv4_slash_31_other_way_round() -> None:
    router = Router(NET_ID, "192.168.5.0/31", REQ, "192.168.5.1")
    assert router.add_node(PROV_A, "192.168.5.0") is True
    assert router.nodes() == {REQ: ["192.168.5.1"], PROV_A: ["192.168.5.0"]}


def test_ipv4_slash_32_holds_only_the_local_node() -> None:
    router = Router(NET_ID, "192.168.6.7/32", REQ, "192.168.6.7")
    assert router.cidrs == ["192.168.6.7/32"]
    with pytest.raises(AddressOutOfRange):
        router.add_node(PROV_A, "192.168.6.8")
    with pytest.raises(AddressTaken):
        router.add_node(PROV_A, "192.168.6.7")


def test_ipv6_slash_127_has_two_usable_addresses() -> None:
    router = Router(NET_ID, "fd00::/127", REQ, "fd00::")
    assert router.add_node(PROV_A, "fd00::1") is True
    packet = udp6("fd00::", "fd00::1")
    assert router.inject(packet) == [(PROV_A, packet)]


def test_remove_node(router: Router) -> None:
    assert router.remove_node(PROV_A) is True
    assert PROV_A not in router.nodes()
    assert router.node_of(A_V4) is None
    assert router.node_of(A_V6) is None
    assert router.remove_node(PROV_A) is False
    assert router.remove_node(STRANGER) is False
    assert list(router.nodes()) == [REQ, PROV_B, PROV_C]


def test_removing_the_local_node_is_an_error(router: Router) -> None:
    with pytest.raises(GolemVpnError) as info:
        router.remove_node(REQ)
    assert type(info.value) is GolemVpnError
    assert router.nodes()[REQ] == [REQ_V4, REQ_V6]


def test_removed_nodes_addresses_can_be_reused(router: Router) -> None:
    router.remove_node(PROV_A)
    assert router.add_node(STRANGER, A_V4) is True
    assert router.add_node(STRANGER, A_V6) is True
    assert router.node_of(A_V4) == STRANGER
    packet = udp4(REQ_V4, A_V4)
    assert router.inject(packet) == [(STRANGER, packet)]
    # The old holder is not heard, the new one is.
    back = udp4(A_V4, REQ_V4)
    assert_dropped(router, lambda: router.receive(back, PROV_A), "unknown_node")
    assert router.receive(back, STRANGER) is back


def test_removed_node_can_come_back(router: Router) -> None:
    router.remove_node(PROV_A)
    assert router.add_node(PROV_A, "192.168.0.40") is True
    assert router.nodes()[PROV_A] == ["192.168.0.40"]
    assert router.node_of(A_V4) is None


# --- inject: unicast ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "node"),
    [(A_V4, PROV_A), (B_V4, PROV_B), (A_V6, PROV_A), (C_V6, PROV_C)],
)
def test_unicast_goes_to_the_holder_untouched(router: Router, dst: str, node: str) -> None:
    packet = udp(REQ_V4 if "." in dst else REQ_V6, dst, b"payload \x00\xff" * 10)
    out = router.inject(packet)
    assert out == [(node, packet)]
    # Nothing was trimmed: the very object comes back, no copy.
    assert out[0][1] is packet


@pytest.mark.parametrize(
    "layers",
    [
        IP(src=REQ_V4, dst=A_V4) / TCP(sport=1234, dport=80, flags="S", seq=99),
        IP(src=REQ_V4, dst=A_V4) / ICMP(type=8, id=7, seq=1) / Raw(b"ping"),
        IP(src=REQ_V4, dst=A_V4, options=b"\x01\x01\x01\x00") / UDP() / Raw(b"opt"),  # IHL 6
        IP(src=REQ_V4, dst=A_V4, flags="MF", frag=0) / Raw(b"x" * 16),  # a first fragment
        IPv6(src=REQ_V6, dst=A_V6) / ICMPv6EchoRequest(id=1, seq=2, data=b"ping"),
        IPv6(src=REQ_V6, dst=A_V6, nh=59),  # no next header, empty payload
    ],
    ids=["tcp", "icmp", "ipv4-options", "fragment", "icmpv6", "ipv6-empty"],
)
def test_other_protocols_route(router: Router, layers: IP) -> None:
    packet = bytes(layers)
    assert router.inject(packet) == [(PROV_A, packet)]


@pytest.mark.parametrize(("src", "dst"), [(REQ_V4, A_V4), (REQ_V6, A_V6)])
@pytest.mark.parametrize("padding", [b"\x00", b"\x00" * 18, b"\xde\xad\xbe\xef" * 8])
def test_trailing_padding_is_trimmed(router: Router, src: str, dst: str, padding: bytes) -> None:
    packet = udp(src, dst, b"hi")
    out = router.inject(packet + padding)
    assert out == [(PROV_A, packet)]
    assert router.stats()["nodes"][PROV_A]["bytes_out"] == len(packet)


def test_largest_packet_routes(router: Router) -> None:
    assert MAX_PACKET_LEN == 65535
    packet = udp4(REQ_V4, A_V4, bytes(range(256)) * 255 + b"\x01" * (65507 - 256 * 255))
    assert len(packet) == 65535
    out = router.inject(packet)
    assert out == [(PROV_A, packet)]
    assert out[0][1] is packet


def test_largest_ipv6_packet_routes(router: Router) -> None:
    packet = udp6(REQ_V6, A_V6, b"\x07" * (65535 - 48))
    assert len(packet) == 65535
    assert router.inject(packet) == [(PROV_A, packet)]


# --- inject: broadcast and multicast ------------------------------------------------------


@pytest.mark.parametrize("dst", ["255.255.255.255", "192.168.0.255"])
def test_ipv4_broadcast_reaches_every_other_ipv4_node_once(router: Router, dst: str) -> None:
    packet = udp4(REQ_V4, dst, b"hello all", dport=67)
    out = router.inject(packet)
    # PROV_C holds no IPv4 address; the local node never gets its own broadcast.
    assert sorted(node for node, _ in out) == sorted([PROV_A, PROV_B])
    assert all(p is packet for _, p in out)


def test_broadcast_of_a_second_range() -> None:
    router = Router(
        NET_ID, ["192.168.0.0/24", "192.168.1.0/24"], REQ, ["192.168.0.1", "192.168.1.1"]
    )
    router.add_node(PROV_A, "192.168.0.2")
    router.add_node(PROV_B, "192.168.1.2")
    packet = udp4("192.168.1.1", "192.168.1.255")
    assert sorted(n for n, _ in router.inject(packet)) == sorted([PROV_A, PROV_B])


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (REQ_V4, "224.0.0.251", [PROV_A, PROV_B]),  # mDNS
        (REQ_V4, "239.255.255.250", [PROV_A, PROV_B]),  # SSDP
        (REQ_V6, "ff02::fb", [PROV_A, PROV_C]),  # mDNS
        (REQ_V6, "ff02::1", [PROV_A, PROV_C]),  # all nodes
        (REQ_V6, "ff02::1:ff00:4", [PROV_A, PROV_C]),  # a solicited-node group
    ],
)
def test_multicast_reaches_the_nodes_of_its_family(
    router: Router, src: str, dst: str, expected: list[str]
) -> None:
    packet = udp(src, dst, b"who is there?")
    out = router.inject(packet)
    assert sorted(node for node, _ in out) == sorted(expected)
    assert all(p == packet for _, p in out)


def test_broadcast_counters(router: Router) -> None:
    packet = udp4(REQ_V4, "255.255.255.255")
    router.inject(packet)
    nodes = router.stats()["nodes"]
    n = len(packet)
    assert nodes[REQ] == {"packets_in": 1, "bytes_in": n, "packets_out": 0, "bytes_out": 0}
    for node in (PROV_A, PROV_B):
        assert nodes[node] == {"packets_in": 0, "bytes_in": 0, "packets_out": 1, "bytes_out": n}
    assert nodes[PROV_C] == {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}


def test_removed_node_gets_no_broadcast(router: Router) -> None:
    router.remove_node(PROV_B)
    packet = udp4(REQ_V4, "255.255.255.255")
    assert router.inject(packet) == [(PROV_A, packet)]


# --- inject: drops ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (A_V4, B_V4),  # another node's address
        ("192.168.0.77", A_V4),  # a free address of the network
        ("10.20.30.40", A_V4),  # outside the network
        (A_V6, C_V6),
        ("fd00::99", A_V6),
        ("2001:db8::1", A_V6),
        ("0.0.0.0", "255.255.255.255"),  # DHCP discover
    ],
)
def test_spoofed_source(router: Router, src: str, dst: str) -> None:
    packet = udp(src, dst)
    assert_dropped(router, lambda: router.inject(packet), "spoofed_source")


def test_ipv6_link_local_source(router: Router) -> None:
    packet = udp6("fe80::1", "ff02::1")
    assert_dropped(router, lambda: router.inject(packet), "link_local_source")
    packet = udp6("fe80::9013:c0ff:fea8:1", A_V6)
    assert_dropped(router, lambda: router.inject(packet), "link_local_source")


@pytest.mark.parametrize(
    ("src", "dst"),
    [(REQ_V4, "192.168.0.77"), (REQ_V4, "192.168.0.0"), (REQ_V6, "fd00::99"), (REQ_V6, "fd00::")],
)
def test_unknown_destination(router: Router, src: str, dst: str) -> None:
    packet = udp(src, dst)
    assert_dropped(router, lambda: router.inject(packet), "unknown_destination")


@pytest.mark.parametrize(
    ("src", "dst"),
    [(REQ_V4, "10.1.2.3"), (REQ_V4, "192.168.1.1"), (REQ_V6, "2001:db8::1"), (REQ_V6, "::1")],
)
def test_no_route(router: Router, src: str, dst: str) -> None:
    packet = udp(src, dst)
    assert_dropped(router, lambda: router.inject(packet), "no_route")


def test_removed_node_is_unknown_destination(router: Router) -> None:
    router.remove_node(PROV_A)
    packet = udp4(REQ_V4, A_V4)
    assert_dropped(router, lambda: router.inject(packet), "unknown_destination")


@pytest.mark.parametrize(("src", "dst"), [(REQ_V4, REQ_V4), (REQ_V6, REQ_V6)])
def test_local_destination(router: Router, src: str, dst: str) -> None:
    packet = udp(src, dst)
    assert_dropped(router, lambda: router.inject(packet), "local_destination")


def _valid() -> bytes:
    return udp4(REQ_V4, A_V4, b"0123456789")


def _with(packet: bytes, at: int, value: bytes, *, fix_checksum: bool = True) -> bytes:
    out = bytearray(packet)
    out[at : at + len(value)] = value
    if fix_checksum and out[0] >> 4 == 4 and len(out) >= 20:
        ihl = max(out[0] & 0x0F, 5) * 4
        out[10:12] = ipv4_checksum(bytes(out[:ihl])).to_bytes(2, "big")
    return bytes(out)


MALFORMED = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"\x45", "truncated", id="one-byte-v4"),
    pytest.param(b"\x60", "truncated", id="one-byte-v6"),
    pytest.param(_valid()[:19], "truncated", id="v4-header-cut"),
    pytest.param(_valid()[:-1], "truncated", id="v4-total-length-cut"),
    pytest.param(_with(_valid(), 2, (1000).to_bytes(2, "big")), "truncated", id="v4-length-long"),
    pytest.param(
        _with(bytes(IP(src=REQ_V4, dst=A_V4, options=b"\x01" * 8) / Raw(b"x")), 0, b"\x4f"),
        "truncated",
        id="v4-ihl-beyond-buffer",
    ),
    pytest.param(udp6(REQ_V6, A_V6)[:39], "truncated", id="v6-header-cut"),
    pytest.param(udp6(REQ_V6, A_V6)[:-1], "truncated", id="v6-payload-cut"),
    pytest.param(_with(_valid(), 10, b"\x00\x00", fix_checksum=False), "bad_checksum", id="cksum"),
    pytest.param(_with(_valid(), 8, b"\x3f", fix_checksum=False), "bad_checksum", id="ttl-changed"),
    pytest.param(
        _with(_valid(), 12, bytes([192, 168, 0, 3]), fix_checksum=False),
        "bad_checksum",
        id="src-changed",
    ),
    pytest.param(_with(_valid(), 0, b"\x55"), "bad_version", id="version-5"),
    pytest.param(_with(_valid(), 0, b"\x05"), "bad_version", id="version-0"),
    pytest.param(_with(_valid(), 0, b"\xf5"), "bad_version", id="version-15"),
    pytest.param(b"\x15" + bytes(40), "bad_version", id="version-1"),
    pytest.param(_with(_valid(), 0, b"\x44"), "bad_header_length", id="ihl-4"),
    pytest.param(_with(_valid(), 0, b"\x40"), "bad_header_length", id="ihl-0"),
    pytest.param(_with(_valid(), 2, b"\x00\x13"), "bad_header_length", id="total-below-ihl"),
    pytest.param(_with(_valid(), 2, b"\x00\x00"), "bad_header_length", id="total-zero"),
    pytest.param(udp4(REQ_V4, A_V4, bytes(65507)) + b"\x00", "oversized", id="65535-plus-pad"),
    pytest.param(udp6(REQ_V6, A_V6, bytes(65488)), "oversized", id="65536-ipv6"),
    pytest.param(bytes(65536), "oversized", id="65536-zeros"),
    pytest.param(bytes(100_000), "oversized", id="100000-zeros"),
]


@pytest.mark.parametrize(("packet", "reason"), MALFORMED)
def test_malformed_injected(router: Router, packet: bytes, reason: str) -> None:
    assert_dropped(router, lambda: router.inject(packet), reason)


def test_malformed_sanity() -> None:
    # The builders above really make what their ids say.
    assert len(udp4(REQ_V4, A_V4, bytes(65507))) == 65535
    assert len(udp6(REQ_V6, A_V6, bytes(65488))) == 65536
    assert len(_valid()) == 38
    fixed = _with(_valid(), 8, b"\x3f")
    assert fixed != _valid()
    assert IP(fixed).ttl == 0x3F
    assert IP(fixed).chksum == ipv4_checksum(fixed[:20])


@pytest.mark.parametrize(("packet", "reason"), MALFORMED)
def test_malformed_received(router: Router, packet: bytes, reason: str) -> None:
    # The checks on receive are the same; the packets "come" from PROV_A.
    assert_dropped(router, lambda: router.receive(packet, PROV_A), reason)


# --- receive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "node"),
    [(A_V4, PROV_A), (A_V6, PROV_A), (B_V4, PROV_B), (C_V6, PROV_C)],
)
def test_receive_unicast(router: Router, src: str, node: str) -> None:
    packet = udp(src, REQ_V4 if "." in src else REQ_V6, b"reply")
    before = router.stats()
    out = router.receive(packet, node)
    assert out == packet
    assert out is packet
    after = router.stats()
    assert after["received"] == before["received"] + 1
    assert after["dropped"] == before["dropped"]


def test_receive_trims_padding(router: Router) -> None:
    packet = udp4(A_V4, REQ_V4, b"x")
    assert router.receive(packet + bytes(20), PROV_A) == packet


def test_receive_accepts_uppercase_node_id(router: Router) -> None:
    packet = udp4(A_V4, REQ_V4)
    assert router.receive(packet, PROV_A.upper().replace("0X", "0x")) == packet


@pytest.mark.parametrize(
    ("src", "node"),
    [
        (B_V4, PROV_A),  # another node's address
        (REQ_V4, PROV_A),  # the local node's address
        ("192.168.0.77", PROV_A),  # nobody's
        ("10.0.0.9", PROV_A),  # outside the network
        (C_V6, PROV_A),
        (A_V6, PROV_C),
        (A_V4, PROV_B),
    ],
)
def test_receive_spoofed_source(router: Router, src: str, node: str) -> None:
    dst = "255.255.255.255" if "." in src else "ff02::1"
    packet = udp(src, dst)
    assert_dropped(router, lambda: router.receive(packet, node), "spoofed_source")


def test_receive_link_local_source(router: Router) -> None:
    packet = udp6("fe80::2", REQ_V6)
    assert_dropped(router, lambda: router.receive(packet, PROV_A), "link_local_source")


def test_receive_from_unknown_node(router: Router) -> None:
    packet = udp4(A_V4, REQ_V4)
    assert_dropped(router, lambda: router.receive(packet, STRANGER), "unknown_node")
    # Not even the local node's own id is heard from the outside.
    packet = udp4(REQ_V4, "255.255.255.255")
    assert_dropped(router, lambda: router.receive(packet, REQ), "unknown_node")


def test_receive_from_removed_node(router: Router) -> None:
    packet = udp4(A_V4, REQ_V4)
    assert router.receive(packet, PROV_A) is packet
    router.remove_node(PROV_A)
    for _ in range(3):
        assert_dropped(router, lambda: router.receive(packet, PROV_A), "unknown_node")
    assert PROV_A not in router.stats()["nodes"]


@pytest.mark.parametrize("dst", [B_V4, "192.168.0.77", "10.0.0.1", "192.168.0.0"])
def test_receive_not_for_us(router: Router, dst: str) -> None:
    packet = udp4(A_V4, dst)
    assert_dropped(router, lambda: router.receive(packet, PROV_A), "not_for_us")


def test_receive_not_for_us_ipv6(router: Router) -> None:
    for dst in (C_V6, "fd00::99", "2001:db8::5"):
        packet = udp6(A_V6, dst)
        assert_dropped(router, lambda p=packet: router.receive(p, PROV_A), "not_for_us")


@pytest.mark.parametrize(
    ("src", "dst", "node"),
    [
        (A_V4, "255.255.255.255", PROV_A),
        (B_V4, "192.168.0.255", PROV_B),
        (A_V4, "224.0.0.251", PROV_A),
        (C_V6, "ff02::1", PROV_C),
        (A_V6, "ff02::fb", PROV_A),
    ],
)
def test_receive_broadcast_and_multicast(router: Router, src: str, dst: str, node: str) -> None:
    packet = udp(src, dst, b"announce")
    assert router.receive(packet, node) is packet


@pytest.mark.parametrize("bad", BAD_NODE_IDS)
def test_receive_invalid_node_id(router: Router, bad: str) -> None:
    before = router.stats()
    with pytest.raises(InvalidNodeId):
        router.receive(udp4(A_V4, REQ_V4), bad)
    assert router.stats() == before


# --- batches ------------------------------------------------------------------------------


def _inject_batch() -> list[bytes]:
    return [
        udp4(REQ_V4, A_V4, b"1"),
        udp4(A_V4, B_V4, b"2"),  # spoofed: dropped
        udp4(REQ_V4, "255.255.255.255", b"3"),
        udp6(REQ_V6, C_V6, b"4"),
        b"",
        udp6(REQ_V6, "ff02::1", b"5") + bytes(7),  # trimmed
        udp4(REQ_V4, "192.168.0.77", b"6"),
        udp4(REQ_V4, B_V4, b"7"),
    ]


def test_inject_many_is_inject_in_a_row() -> None:
    batch, single = make_router(), make_router()
    packets = _inject_batch()
    expected = [d for p in packets for d in single.inject(p)]
    assert len(expected) == 1 + 2 + 1 + 2 + 1
    assert batch.inject_many(packets) == expected
    assert batch.stats() == single.stats()
    assert batch.stats()["injected"] == len(packets)
    assert batch.stats()["dropped"] == 3


def test_inject_many_takes_any_iterable(router: Router) -> None:
    packets = [udp4(REQ_V4, A_V4, bytes([i])) for i in range(5)]
    out = router.inject_many(p for p in packets)
    assert out == [(PROV_A, p) for p in packets]
    assert all(got is sent for (_, got), sent in zip(out, packets, strict=True))
    assert router.inject_many([]) == []
    assert router.inject_many(()) == []


@pytest.mark.parametrize(
    "bad", ["text", bytearray(b"\x45"), memoryview(b"\x45"), None, 42, (b"x",)]
)
def test_inject_many_type_error_routes_nothing(router: Router, bad: object) -> None:
    before = router.stats()
    with pytest.raises(TypeError):
        router.inject_many([udp4(REQ_V4, A_V4), bad, udp4(REQ_V4, B_V4)])  # type: ignore[list-item]
    assert router.stats() == before


def test_inject_many_not_iterable(router: Router) -> None:
    with pytest.raises(TypeError):
        router.inject_many(42)  # type: ignore[arg-type]


def _receive_batch() -> list[tuple[str, bytes]]:
    return [
        (PROV_A, udp4(A_V4, REQ_V4, b"1")),
        (PROV_A, udp4(B_V4, REQ_V4, b"2")),  # spoofed
        (PROV_B, udp4(B_V4, "255.255.255.255", b"3")),
        (STRANGER, udp4(A_V4, REQ_V4, b"4")),  # unknown node
        (PROV_C, udp6(C_V6, REQ_V6, b"5") + bytes(3)),  # trimmed
        (PROV_A, udp4(A_V4, B_V4, b"6")),  # not for us
        (PROV_A, b"\x45"),
        (PROV_C, udp6(C_V6, "ff02::fb", b"7")),
        (PROV_A.upper().replace("0X", "0x"), udp6(A_V6, REQ_V6, b"8")),
    ]


def test_receive_many_is_receive_in_a_row() -> None:
    batch, single = make_router(), make_router()
    items = _receive_batch()
    expected = [out for node, p in items if (out := single.receive(p, node)) is not None]
    assert len(expected) == 5
    assert batch.receive_many(items) == expected
    assert batch.stats() == single.stats()
    assert batch.stats()["received"] == len(items)
    assert batch.stats()["dropped"] == 4


def test_receive_many_returns_the_inputs(router: Router) -> None:
    items = [(PROV_A, udp4(A_V4, REQ_V4, bytes([i]))) for i in range(4)]
    out = router.receive_many(iter(items))
    assert len(out) == 4
    assert all(got is sent for got, (_, sent) in zip(out, items, strict=True))
    assert router.receive_many([]) == []


@pytest.mark.parametrize(
    "bad",
    [
        (PROV_A,),
        (PROV_A, "text"),
        (PROV_A, bytearray(b"\x45")),
        (PROV_A.encode(), udp4(A_V4, REQ_V4)),
        (udp4(A_V4, REQ_V4), PROV_A),  # swapped
        (PROV_A, udp4(A_V4, REQ_V4), None),
        b"not a pair",
        None,
    ],
)
def test_receive_many_type_error_receives_nothing(router: Router, bad: object) -> None:
    before = router.stats()
    items = [(PROV_A, udp4(A_V4, REQ_V4)), bad, (PROV_B, udp4(B_V4, REQ_V4))]
    with pytest.raises(TypeError):
        router.receive_many(items)  # type: ignore[arg-type]
    assert router.stats() == before


def test_receive_many_invalid_node_id_receives_nothing(router: Router) -> None:
    before = router.stats()
    items = [(PROV_A, udp4(A_V4, REQ_V4)), ("0xnope", udp4(A_V4, REQ_V4))]
    with pytest.raises(InvalidNodeId):
        router.receive_many(items)
    assert router.stats() == before


# --- end to end ---------------------------------------------------------------------------


class Mesh:
    """A requestor and two providers, each with its own router, wired in memory."""

    def __init__(self) -> None:
        self.routers = {node: make_router(node) for node in (REQ, PROV_A, PROV_B)}
        # PROV_C is in the network but has no router here: it is never online.

    def send(self, node: str, packet: bytes) -> list[tuple[str, bytes | None]]:
        """``node``'s payload sends ``packet``: each delivery is received by its node."""
        out: list[tuple[str, bytes | None]] = []
        for dest, data in self.routers[node].inject(packet):
            if dest in self.routers:
                out.append((dest, self.routers[dest].receive(data, node)))
        return out


@pytest.mark.parametrize(
    ("sender", "src", "dst", "receiver"),
    [
        (REQ, REQ_V4, A_V4, PROV_A),
        (PROV_A, A_V4, REQ_V4, REQ),
        (PROV_A, A_V4, B_V4, PROV_B),
        (PROV_B, B_V4, A_V4, PROV_A),
        (REQ, REQ_V6, A_V6, PROV_A),
        (PROV_A, A_V6, REQ_V6, REQ),
    ],
)
def test_end_to_end_unicast(sender: str, src: str, dst: str, receiver: str) -> None:
    mesh = Mesh()
    packet = udp(src, dst, b"end to end " * 20)
    assert mesh.send(sender, packet) == [(receiver, packet)]
    stats = mesh.routers[receiver].stats()
    assert stats["nodes"][sender]["packets_in"] == 1
    assert stats["nodes"][sender]["bytes_in"] == len(packet)
    assert stats["nodes"][receiver]["packets_out"] == 1


def test_end_to_end_broadcast() -> None:
    mesh = Mesh()
    packet = udp4(B_V4, "255.255.255.255", b"discover")
    assert sorted(mesh.send(PROV_B, packet)) == sorted([(REQ, packet), (PROV_A, packet)])


def test_end_to_end_ipv6_multicast() -> None:
    mesh = Mesh()
    packet = udp6(A_V6, "ff02::fb", b"mdns")
    # PROV_B has no IPv6 address; PROV_C is not online.
    assert mesh.send(PROV_A, packet) == [(REQ, packet)]


def test_end_to_end_spoofing_provider_is_stopped_at_both_ends() -> None:
    mesh = Mesh()
    spoofed = udp4(REQ_V4, B_V4)  # PROV_A's payload claims to be the requestor
    assert mesh.send(PROV_A, spoofed) == []
    # A tampered router that did forward it would still be refused by PROV_B.
    assert mesh.routers[PROV_B].receive(spoofed, PROV_A) is None
    assert mesh.routers[PROV_B].stats()["drops"]["spoofed_source"] == 1


# --- stats --------------------------------------------------------------------------------


def test_fresh_stats(router: Router) -> None:
    stats = router.stats()
    assert stats["network_id"] == NET_ID
    assert stats["injected"] == 0
    assert stats["received"] == 0
    assert stats["dropped"] == 0
    assert list(stats["drops"]) == DROP_REASONS
    assert all(n == 0 for n in stats["drops"].values())
    zero = {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}
    assert stats["nodes"] == {REQ: zero, PROV_A: zero, PROV_B: zero, PROV_C: zero}


def test_drop_reason_names() -> None:
    assert DROP_REASONS == [
        "empty",
        "oversized",
        "truncated",
        "bad_version",
        "bad_header_length",
        "bad_checksum",
        "unsupported_ethertype",
        "arp_unanswered",
        "ndisc_unanswered",
        "spoofed_source",
        "link_local_source",
        "unknown_destination",
        "no_route",
        "local_destination",
        "unknown_node",
        "not_for_us",
    ]


def test_stats_count_exactly(router: Router) -> None:
    to_a = udp4(REQ_V4, A_V4, b"a" * 100)  # 128 bytes
    to_c = udp6(REQ_V6, C_V6, b"c" * 10)  # 58 bytes
    bcast = udp4(REQ_V4, "192.168.0.255", b"b")  # 29 bytes
    padded = udp4(REQ_V4, B_V4, b"p")  # 29 bytes, sent with 31 bytes of padding
    from_a = udp4(A_V4, REQ_V4, b"r" * 50)  # 78 bytes
    from_c = udp6(C_V6, "ff02::1", b"m" * 4)  # 52 bytes
    assert [len(p) for p in (to_a, to_c, bcast, padded, from_a, from_c)] == [
        128,
        58,
        29,
        29,
        78,
        52,
    ]

    router.inject(to_a)
    router.inject(to_a)
    router.inject(to_c)
    router.inject(bcast)
    router.inject(padded + bytes(31))
    router.inject(udp4(A_V4, B_V4))  # spoofed
    router.inject(b"")  # empty
    router.receive(from_a, PROV_A)
    router.receive(from_c, PROV_C)
    router.receive(from_a, PROV_B)  # spoofed
    router.receive(from_a, STRANGER)  # unknown node

    stats = router.stats()
    assert stats["injected"] == 7
    assert stats["received"] == 4
    assert stats["dropped"] == 4
    assert {r: n for r, n in stats["drops"].items() if n} == {
        "spoofed_source": 2,
        "empty": 1,
        "unknown_node": 1,
    }
    assert stats["nodes"] == {
        REQ: {
            "packets_in": 5,
            "bytes_in": 128 * 2 + 58 + 29 + 29,
            "packets_out": 2,
            "bytes_out": 78 + 52,
        },
        PROV_A: {
            "packets_in": 1,
            "bytes_in": 78,
            "packets_out": 3,
            "bytes_out": 128 * 2 + 29,
        },
        PROV_B: {"packets_in": 0, "bytes_in": 0, "packets_out": 2, "bytes_out": 29 + 29},
        PROV_C: {"packets_in": 1, "bytes_in": 52, "packets_out": 1, "bytes_out": 58},
    }


def test_stats_is_a_snapshot(router: Router) -> None:
    snapshot = router.stats()
    router.inject(udp4(REQ_V4, A_V4))
    assert snapshot["injected"] == 0
    assert router.stats()["injected"] == 1


def test_removed_node_leaves_stats(router: Router) -> None:
    router.inject(udp4(REQ_V4, A_V4))
    router.remove_node(PROV_A)
    assert list(router.stats()["nodes"]) == [REQ, PROV_B, PROV_C]
    # Coming back starts from zero.
    router.add_node(PROV_A, A_V4)
    assert router.stats()["nodes"][PROV_A]["packets_out"] == 0


def test_repr_names_the_router(router: Router) -> None:
    text = repr(router)
    assert NET_ID in text
    assert REQ in text
    assert "nodes=4" in text
