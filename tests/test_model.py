"""Tests of the model layer: node ids, networks, address allocation and DEPLOY config."""

from __future__ import annotations

import json
import re
import time
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golem_vpn.errors import (
    AddressError,
    AddressesExhausted,
    AddressOutOfRange,
    AddressReserved,
    AddressTaken,
    DeployConfigError,
    Forbidden,
    GolemVpnError,
    InvalidNodeId,
    NodeNotFound,
)
from golem_vpn.model import (
    AddressPool,
    DeployNetwork,
    IPNetwork,
    Network,
    Node,
    check_host,
    parse_deploy_net,
    parse_ip,
    parse_network,
    parse_node_id,
)

REQ = "0x" + "a1" * 20
A = "0x" + "b2" * 20
B = "0x" + "c3" * 20
C = "0x" + "d4" * 20
NET_ID = "0123456789abcdef0123456789abcdef"


def node_id(n: int) -> str:
    return f"0x{n:040x}"


# --- node ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0x" + "ab" * 20, "0x" + "ab" * 20),
        ("0x" + "AB" * 20, "0x" + "ab" * 20),
        (
            "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01",
            "0xabcdef0123456789abcdef0123456789abcdef01",
        ),
        ("0x" + "0" * 40, "0x" + "0" * 40),
    ],
)
def test_node_id_accepted_and_lowercased(value: str, expected: str) -> None:
    assert parse_node_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0x",
        "ab" * 20,  # no prefix
        "0X" + "ab" * 20,  # uppercase prefix
        "0x" + "a" * 39,
        "0x" + "a" * 41,
        "0x" + "g" * 40,
        " 0x" + "a" * 40,
        "0x" + "a" * 40 + " ",
        "0x" + "a" * 40 + "\n",
        "0x" + "\u0661" * 40,  # Arabic-Indic digits are digits, but not hex
        "0x" + "a" * 39 + "\u00e9",
        None,
        42,
        b"0x" + b"a" * 40,
        ["0x" + "a" * 40],
    ],
)
def test_node_id_rejected(value: object) -> None:
    with pytest.raises(InvalidNodeId) as info:
        parse_node_id(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GolemVpnError)
    assert repr(value)[:20] in str(info.value)


def test_node_id_error_truncates_long_values() -> None:
    with pytest.raises(InvalidNodeId) as info:
        parse_node_id("x" * 10_000)
    assert "'xxxx" in str(info.value)
    assert "..." in str(info.value)
    assert len(str(info.value)) < 150


# --- parse_network ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "mask", "expected"),
    [
        ("192.168.0.0/24", None, "192.168.0.0/24"),
        ("192.168.0.0", None, "192.168.0.0/24"),
        ("192.168.0.0", "255.255.255.0", "192.168.0.0/24"),
        ("10.0.0.0", "255.255.0.0", "10.0.0.0/16"),
        ("10.0.0.0", "16", "10.0.0.0/16"),
        ("10.0.0.0/255.255.0.0", None, "10.0.0.0/16"),
        ("192.168.0.5/24", None, "192.168.0.0/24"),
        ("192.168.0.5", "255.255.255.252", "192.168.0.4/30"),
        ("192.168.0.0/24", "24", "192.168.0.0/24"),
        ("192.168.0.0/24", "255.255.255.0", "192.168.0.0/24"),
        ("10.1.2.3", "32", "10.1.2.3/32"),
        ("10.1.2.3", "255.255.255.255", "10.1.2.3/32"),
        ("10.1.2.3", "0", "0.0.0.0/0"),
        ("fd00::", None, "fd00::/64"),
        ("fd00::5/64", None, "fd00::/64"),
        ("fd00::/48", None, "fd00::/48"),
        ("fd00::", "ffff:ffff:ffff:ffff::", "fd00::/64"),
        ("fd00::", "112", "fd00::/112"),
        ("fd00::1", "128", "fd00::1/128"),
        ("fd00::/112", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:0", "fd00::/112"),
    ],
)
def test_parse_network_accepts(ip: str, mask: str | None, expected: str) -> None:
    assert parse_network(ip, mask) == ip_network(expected)


@pytest.mark.parametrize(
    ("ip", "mask", "needle"),
    [
        ("abc", None, "'abc'"),
        ("", None, "''"),
        ("192.168.0.256", None, "192.168.0.256"),
        ("010.0.0.0", None, "010.0.0.0"),
        ("192.168.0.0/33", None, "/33"),
        ("fd00::/129", None, "/129"),
        ("192.168.0.0/", None, "192.168.0.0/"),
        ("192.168.0.0/x", None, "/x"),
        ("192.168.0.0/0.0.0.255", None, "0.0.0.255"),  # a hostmask
        (" 192.168.0.0", None, "' 192.168.0.0'"),
        ("fe80::1%eth0", None, "%eth0"),
        ("192.168.0.0", "255.0.255.0", "not a contiguous netmask"),
        ("192.168.0.0", "0.0.0.255", "not a contiguous netmask"),
        ("192.168.0.0", "33", "too long"),
        ("fd00::", "129", "too long"),
        ("192.168.0.0", "-1", "'-1'"),
        ("192.168.0.0", "24 ", "'24 '"),
        ("192.168.0.0", "garbage", "'garbage'"),
        ("192.168.0.0", "", "''"),
        ("10.0.0.0", "ffff::", "IPv6 netmask"),
        ("fd00::", "255.255.255.0", "IPv4 netmask"),
        ("192.168.0.0/24", "255.255.0.0", "conflicts"),
        ("192.168.0.0/24", "16", "conflicts"),
        ("fd00::/64", "48", "conflicts"),
    ],
)
def test_parse_network_rejects(ip: str, mask: str | None, needle: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_network(ip, mask)
    assert needle in str(info.value)


@pytest.mark.parametrize("ip", [None, 3232235520, b"10.0.0.0", ip_address("10.0.0.0")])
def test_parse_network_rejects_non_strings(ip: Any) -> None:
    with pytest.raises(AddressError):
        parse_network(ip)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_parse_network_v4_forms_agree(value: int, prefix: int) -> None:
    net = ip_network((value, prefix), strict=False)
    addr = str(IPv4Address(value))
    assert parse_network(f"{addr}/{prefix}") == net
    assert parse_network(addr, str(prefix)) == net
    assert parse_network(addr, str(net.netmask)) == net
    assert parse_network(str(net), str(net.netmask)) == net


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_parse_network_v6_forms_agree(value: int, prefix: int) -> None:
    net = ip_network((IPv6Address(value), prefix), strict=False)
    addr = str(IPv6Address(value))
    assert parse_network(f"{addr}/{prefix}") == net
    assert parse_network(addr, str(net.netmask)) == net


# --- host rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "ip", "error"),
    [
        ("192.168.0.0/24", "192.168.0.1", None),
        ("192.168.0.0/24", "192.168.0.254", None),
        ("192.168.0.0/24", "192.168.0.0", AddressReserved),
        ("192.168.0.0/24", "192.168.0.255", AddressReserved),
        ("192.168.0.0/24", "192.168.1.1", AddressOutOfRange),
        ("192.168.0.0/24", "fd00::1", AddressOutOfRange),
        ("192.168.0.0/30", "192.168.0.3", AddressReserved),
        ("192.168.0.0/31", "192.168.0.0", None),
        ("192.168.0.0/31", "192.168.0.1", None),
        ("192.168.0.7/32", "192.168.0.7", None),
        ("192.168.0.7/32", "192.168.0.8", AddressOutOfRange),
        ("127.0.0.0/8", "127.0.0.1", AddressReserved),
        ("224.0.0.0/24", "224.0.0.5", AddressReserved),
        ("239.255.255.0/24", "239.255.255.250", AddressReserved),
        ("255.255.255.255/32", "255.255.255.255", AddressReserved),
        ("255.255.255.254/31", "255.255.255.255", AddressReserved),
        ("255.255.255.254/31", "255.255.255.254", None),
        ("0.0.0.0/31", "0.0.0.0", AddressReserved),
        ("0.0.0.0/31", "0.0.0.1", None),
        ("240.0.0.0/24", "240.0.0.1", None),  # class E is not multicast
        ("fd00::/64", "fd00::", AddressReserved),
        ("fd00::/64", "fd00::1", None),
        ("fd00::/64", "fd00::ffff:ffff:ffff:ffff", None),  # IPv6 has no broadcast
        ("fd00::/64", "fd01::1", AddressOutOfRange),
        ("fd00::/64", "10.0.0.1", AddressOutOfRange),
        ("fd00::/127", "fd00::", None),
        ("fd00::/127", "fd00::1", None),
        ("fd00::5/128", "fd00::5", None),
        ("::1/128", "::1", AddressReserved),
        ("::/128", "::", AddressReserved),
        ("ff02::/16", "ff02::1", AddressReserved),
    ],
)
def test_check_host(network: str, ip: str, error: type[Exception] | None) -> None:
    net = ip_network(network)
    if error is None:
        assert check_host(net, ip) == ip_address(ip)
        assert check_host(net, ip_address(ip)) == ip_address(ip)
    else:
        with pytest.raises(error) as info:
            check_host(net, ip)
        assert f"'{ip_address(ip)}'" in str(info.value)


def test_check_host_out_of_range_message() -> None:
    with pytest.raises(
        AddressOutOfRange, match=r"^'10\.0\.0\.5' is not in network 192\.168\.0\.0/24$"
    ):
        check_host(ip_network("192.168.0.0/24"), "10.0.0.5")


@pytest.mark.parametrize(
    "ip", ["garbage", "", "10.0.0", "10.0.0.1/32", None, 167772161, "fe80::1%1"]
)
def test_check_host_rejects_garbage(ip: Any) -> None:
    with pytest.raises(AddressError) as info:
        check_host(ip_network("10.0.0.0/8"), ip)
    assert not isinstance(info.value, AddressOutOfRange | AddressReserved)


def test_parse_ip() -> None:
    assert parse_ip("10.0.0.1") == IPv4Address("10.0.0.1")
    assert parse_ip("FD00::1") == IPv6Address("fd00::1")
    assert parse_ip(IPv4Address("1.2.3.4")) == IPv4Address("1.2.3.4")
    for bad in ["x", 1, None, "1.2.3.4 "]:
        with pytest.raises(AddressError):
            parse_ip(bad)


def _never_host(addr: IPv4Address | IPv6Address) -> bool:
    return (
        addr.is_multicast
        or addr.is_loopback
        or addr.is_unspecified
        or addr == IPv4Address("255.255.255.255")
    )


@given(st.integers(0, 2**32 - 1))
def test_never_host_rule_matches_ipaddress_v4(value: int) -> None:
    addr = IPv4Address(value)
    whole = ip_network("0.0.0.0/0")  # its network/broadcast are never-host anyway
    if _never_host(addr):
        with pytest.raises(AddressReserved):
            check_host(whole, addr)
    else:
        assert check_host(whole, addr) == addr


@given(
    st.one_of(
        st.integers(0, 2**128 - 1),
        st.integers(0, 16),
        st.integers(0xFF << 120, 2**128 - 1),
        st.integers((0xFF << 120) - 16, 0xFF << 120),
    )
)
def test_never_host_rule_matches_ipaddress_v6(value: int) -> None:
    addr = IPv6Address(value)
    if _never_host(addr):
        with pytest.raises(AddressReserved):
            check_host(ip_network("::/0"), addr)
    else:
        assert check_host(ip_network("::/0"), addr) == addr


# --- AddressPool --------------------------------------------------------------------------


def test_pool_lowest_free_first_and_reuse() -> None:
    pool = AddressPool(ip_network("10.0.0.0/29"))
    assert pool.first_host == IPv4Address("10.0.0.1")
    got = [str(pool.allocate()) for _ in range(6)]
    assert got == [f"10.0.0.{i}" for i in range(1, 7)]
    with pytest.raises(
        AddressesExhausted, match=r"^No more addresses available in 10\.0\.0\.0/29\.$"
    ):
        pool.allocate()
    pool.release("10.0.0.5")
    pool.release(IPv4Address("10.0.0.3"))
    assert "10.0.0.3" not in pool
    assert pool.allocate() == IPv4Address("10.0.0.3")
    assert pool.allocate() == IPv4Address("10.0.0.5")
    with pytest.raises(AddressesExhausted):
        pool.allocate()


def test_pool_explicit_then_auto_skips_used() -> None:
    pool = AddressPool(ip_network("10.0.0.0/24"))
    assert pool.allocate("10.0.0.2") == IPv4Address("10.0.0.2")
    assert pool.allocate("10.0.0.4") == IPv4Address("10.0.0.4")
    assert [str(pool.allocate()) for _ in range(3)] == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert pool.used == tuple(IPv4Address(f"10.0.0.{i}") for i in range(1, 6))
    assert len(pool) == 5
    with pytest.raises(AddressTaken):
        pool.allocate("10.0.0.4")
    with pytest.raises(AddressReserved):
        pool.allocate("10.0.0.255")
    with pytest.raises(AddressOutOfRange):
        pool.allocate("10.0.1.1")
    assert len(pool) == 5


def test_pool_membership_and_release_errors() -> None:
    pool = AddressPool(ip_network("fd00::/64"))
    pool.allocate()
    assert "fd00::1" in pool
    assert IPv6Address("fd00::1") in pool
    assert "fd00::2" not in pool
    assert "10.0.0.1" not in pool
    assert "garbage" not in pool
    assert 5 not in pool
    with pytest.raises(AddressError):
        pool.release("fd00::2")
    with pytest.raises(AddressError):
        pool.release("10.0.0.1")
    pool.release("fd00::1")
    assert len(pool) == 0


@pytest.mark.parametrize(
    ("network", "expected"),
    [
        ("0.0.0.0/31", ["0.0.0.1"]),  # 0.0.0.0 is unspecified
        ("255.255.255.254/31", ["255.255.255.254"]),  # .255 is the limited broadcast
        ("::/126", ["::2", "::3"]),  # :: is the network address, ::1 loopback
        ("::/127", []),
        ("127.0.0.0/30", []),
        ("ff02::/120", []),
        ("10.0.0.0/32", ["10.0.0.0"]),
        ("10.0.0.0/31", ["10.0.0.0", "10.0.0.1"]),
    ],
)
def test_pool_skips_never_host_addresses(network: str, expected: list[str]) -> None:
    pool = AddressPool(ip_network(network))
    got = []
    while True:
        try:
            got.append(str(pool.allocate()))
        except AddressesExhausted:
            break
    assert got == expected
    if not expected:
        with pytest.raises(AddressesExhausted):
            _ = pool.first_host


def test_pool_ipv6_64_is_fast() -> None:
    pool = AddressPool(ip_network("fd00:1::/64"))
    start = time.perf_counter()
    for _ in range(20_000):
        pool.allocate()
    assert pool.used[-1] == IPv6Address("fd00:1::4e20")
    for i in range(1, 20_001, 2):  # free every other address, then refill lowest first
        pool.release(IPv6Address(f"fd00:1::{i:x}"))
    assert pool.allocate() == IPv6Address("fd00:1::1")
    assert pool.allocate() == IPv6Address("fd00:1::3")
    assert time.perf_counter() - start < 3.0


_NETS = st.one_of(
    st.builds(
        lambda v, p: ip_network((IPv4Address(v), p), strict=False),
        st.one_of(
            st.integers(0, 2**32 - 1),
            st.sampled_from([0, 0x7EFFFFF0, 0x7FFFFFF0, 0xDFFFFFF0, 0xEFFFFFF0, 0xFFFFFFF0]),
        ),
        st.integers(26, 32),
    ),
    st.builds(
        lambda v, p: ip_network((IPv6Address(v), p), strict=False),
        st.one_of(st.integers(0, 2**128 - 1), st.sampled_from([0, 0xFF << 120])),
        st.integers(122, 128),
    ),
)


@settings(max_examples=200)
@given(_NETS, st.lists(st.tuples(st.sampled_from("aer"), st.integers(0, 63)), max_size=80))
def test_pool_matches_brute_force_model(net: IPNetwork, ops: list[tuple[str, int]]) -> None:
    hosts = [a for a in net.hosts() if not _never_host(a)]
    pool = AddressPool(net)
    used: set[IPv4Address | IPv6Address] = set()
    for op, n in ops:
        if op == "a":  # automatic
            free = sorted(set(hosts) - used)
            if free:
                addr = pool.allocate()
                assert addr == free[0]
                used.add(addr)
            else:
                with pytest.raises(AddressesExhausted):
                    pool.allocate()
        elif op == "e":  # explicit
            target = net.network_address + (n % net.num_addresses)
            if target not in hosts:
                with pytest.raises(AddressReserved):
                    pool.allocate(target)
            elif target in used:
                with pytest.raises(AddressTaken):
                    pool.allocate(target)
            else:
                assert pool.allocate(target) == target
                used.add(target)
        elif used:  # release
            victim = sorted(used)[n % len(used)]
            pool.release(victim)
            used.remove(victim)
        assert pool.used == tuple(sorted(used))


# --- Node and Network ---------------------------------------------------------------------


def test_node_is_validated_and_frozen() -> None:
    node = Node(A.upper().replace("0X", "0x"), IPv4Address("10.0.0.2"))
    assert node.id == A
    assert node == Node(A, IPv4Address("10.0.0.2"))
    with pytest.raises(InvalidNodeId):
        Node("nope", IPv4Address("10.0.0.2"))
    with pytest.raises(AddressError):
        Node(A, "nope")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        node.ip = IPv4Address("10.0.0.3")  # type: ignore[misc]


def test_network_defaults() -> None:
    net = Network.create("192.168.0.0/24", requestor_id=REQ.upper().replace("0X", "0x"))
    assert re.fullmatch(r"[0-9a-f]{32}", net.id)
    assert net.id != Network.create("192.168.0.0/24", requestor_id=REQ).id
    assert net.network == ip_network("192.168.0.0/24")
    assert net.requestor_id == REQ
    assert net.requestor_ip == IPv4Address("192.168.0.1")
    assert net.requestor == Node(REQ, IPv4Address("192.168.0.1"))
    assert net.gateway == IPv4Address("192.168.0.1")
    assert dict(net.nodes) == {}
    assert net.nodes_dict() == {"192.168.0.1": REQ}


def test_network_explicit_fields() -> None:
    net = Network.create(
        "10.0.0.0",
        "255.255.0.0",
        "10.0.0.254",
        requestor_id=REQ,
        requestor_ip="10.0.5.5",
        id="my-net_1",
    )
    assert net.id == "my-net_1"
    assert net.network == ip_network("10.0.0.0/16")
    assert net.requestor_ip == IPv4Address("10.0.5.5")
    assert net.gateway == IPv4Address("10.0.0.254")
    # the gateway follows the requestor when not given
    net = Network.create("10.0.0.0/16", requestor_id=REQ, requestor_ip="10.0.5.5")
    assert net.gateway == IPv4Address("10.0.5.5")
    assert net.add_node(A).ip == IPv4Address("10.0.0.1")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"gateway": "10.0.1.1"}, AddressOutOfRange),
        ({"gateway": "fd00::1"}, AddressOutOfRange),
        ({"gateway": "garbage"}, AddressError),
        ({"requestor_ip": "10.0.0.0"}, AddressReserved),
        ({"requestor_ip": "10.0.0.255"}, AddressReserved),
        ({"requestor_ip": "10.9.0.1"}, AddressOutOfRange),
        ({"requestor_ip": ""}, AddressError),
        ({"requestor_id": "0x1234"}, InvalidNodeId),
        ({"id": ""}, AddressError),
        ({"id": "has space"}, AddressError),
        ({"id": "x" * 129}, AddressError),
    ],
)
def test_network_create_rejects(kwargs: dict[str, Any], error: type[Exception]) -> None:
    args: dict[str, Any] = {"requestor_id": REQ, **kwargs}
    with pytest.raises(error):
        Network.create("10.0.0.0/24", **args)


def test_network_without_hosts_cannot_be_created() -> None:
    with pytest.raises(AddressesExhausted):
        Network.create("127.0.0.0/8", requestor_id=REQ)


def test_network_gateway_in_network_but_not_a_host_is_allowed() -> None:
    # Only the range is checked for the gateway, as in yagna.
    net = Network.create("10.0.0.0/24", "24", "10.0.0.255", requestor_id=REQ)
    assert net.gateway == IPv4Address("10.0.0.255")


def test_add_node_auto_explicit_and_idempotent() -> None:
    net = Network.create("192.168.0.0/24", requestor_id=REQ)
    a = net.add_node(A)
    assert a == Node(A, IPv4Address("192.168.0.2"))
    b = net.add_node(B, "192.168.0.10")
    assert b.ip == IPv4Address("192.168.0.10")
    assert net.add_node(A) is a
    assert net.add_node(A.replace("b", "B"), "192.168.0.2") is a
    assert net.add_node(A, IPv4Address("192.168.0.2")) is a
    assert net.add_node(REQ) is net.requestor
    assert net.add_node(REQ, "192.168.0.1") is net.requestor
    assert net.add_node(C).ip == IPv4Address("192.168.0.3")
    assert set(net.nodes) == {A, B, C}
    assert net.node(B) is b
    assert net.node(REQ) == net.requestor
    assert net.nodes_dict() == {
        "192.168.0.1": REQ,
        "192.168.0.2": A,
        "192.168.0.3": C,
        "192.168.0.10": B,
    }


def test_add_node_conflicts() -> None:
    net = Network.create("192.168.0.0/24", requestor_id=REQ)
    net.add_node(A)
    with pytest.raises(AddressTaken, match=re.escape(f"'192.168.0.2' is already held by node {A}")):
        net.add_node(B, "192.168.0.2")
    with pytest.raises(AddressTaken, match=r"'192\.168\.0\.1' is already held by node 0xa1"):
        net.add_node(B, "192.168.0.1")  # the requestor's address
    with pytest.raises(AddressTaken, match=re.escape(f"node {A} already holds 192.168.0.2")):
        net.add_node(A, "192.168.0.3")
    with pytest.raises(AddressTaken):
        net.add_node(REQ, "192.168.0.3")
    with pytest.raises(AddressReserved):
        net.add_node(B, "192.168.0.255")
    with pytest.raises(AddressReserved):
        net.add_node(B, "192.168.0.0")
    with pytest.raises(AddressOutOfRange):
        net.add_node(B, "192.168.1.2")
    with pytest.raises(InvalidNodeId):
        net.add_node("0xnope")
    assert net.nodes_dict() == {"192.168.0.1": REQ, "192.168.0.2": A}
    assert net.add_node(B).ip == IPv4Address("192.168.0.3")


def test_remove_node() -> None:
    net = Network.create("192.168.0.0/24", requestor_id=REQ)
    a = net.add_node(A)
    net.add_node(B)
    assert net.remove_node(A) == a
    assert A not in net.nodes
    with pytest.raises(NodeNotFound):
        net.remove_node(A)
    with pytest.raises(NodeNotFound):
        net.node(A)
    with pytest.raises(Forbidden):
        net.remove_node(REQ)
    with pytest.raises(InvalidNodeId):
        net.remove_node("garbage")
    assert net.add_node(C).ip == IPv4Address("192.168.0.2")  # the freed address is reused


def test_nodes_view_is_read_only() -> None:
    net = Network.create("192.168.0.0/24", requestor_id=REQ)
    view = net.nodes
    net.add_node(A)
    assert list(view) == [A]  # live
    with pytest.raises(TypeError):
        view[B] = Node(B, IPv4Address("192.168.0.9"))  # type: ignore[index]


@pytest.mark.parametrize(
    ("cidr", "requestor", "nodes"),
    [
        ("192.168.0.0/30", "192.168.0.1", ["192.168.0.2"]),
        ("192.168.0.4/31", "192.168.0.4", ["192.168.0.5"]),
        ("192.168.0.7/32", "192.168.0.7", []),
        ("fd00::/127", "fd00::", ["fd00::1"]),
        ("fd00::8/128", "fd00::8", []),
        ("fd00::/126", "fd00::1", ["fd00::2", "fd00::3"]),
    ],
)
def test_small_networks_then_exhausted(cidr: str, requestor: str, nodes: list[str]) -> None:
    net = Network.create(cidr, requestor_id=REQ)
    assert str(net.requestor_ip) == requestor
    assert [str(net.add_node(node_id(i + 1)).ip) for i in range(len(nodes))] == nodes
    with pytest.raises(
        AddressesExhausted, match=re.escape(f"No more addresses available in {cidr}.")
    ):
        net.add_node(node_id(99))


def test_exhaust_release_reuse_lowest() -> None:
    net = Network.create("10.0.0.0/29", requestor_id=REQ)
    for i in range(2, 7):
        assert net.add_node(node_id(i)).ip == IPv4Address(f"10.0.0.{i}")
    with pytest.raises(AddressesExhausted):
        net.add_node(A)
    net.remove_node(node_id(5))
    net.remove_node(node_id(3))
    assert net.add_node(A).ip == IPv4Address("10.0.0.3")
    assert net.add_node(B).ip == IPv4Address("10.0.0.5")
    with pytest.raises(AddressesExhausted):
        net.add_node(C)


def test_ipv6_network_many_nodes() -> None:
    net = Network.create("fd00:1::", requestor_id=REQ)
    assert net.network == ip_network("fd00:1::/64")
    assert net.requestor_ip == IPv6Address("fd00:1::1")
    assert net.add_node(A).ip == IPv6Address("fd00:1::2")
    start = time.perf_counter()
    for i in range(1, 10_001):
        net.add_node(node_id(i))
    assert time.perf_counter() - start < 3.0
    assert net.node(node_id(10_000)).ip == IPv6Address(f"fd00:1::{10_002:x}")
    assert len(net.nodes_dict()) == 10_002


# --- DEPLOY -------------------------------------------------------------------------------


def _sample_network() -> Network:
    net = Network.create("192.168.0.0/24", requestor_id=REQ, id=NET_ID)
    net.add_node(A)
    net.add_node(B, "192.168.0.10")
    return net


def test_deploy_args_exact() -> None:
    net = _sample_network()
    args = net.deploy_args(A.upper().replace("0X", "0x"))
    assert args == {
        "net": [
            {
                "id": NET_ID,
                "ip": "192.168.0.0",
                "mask": "255.255.255.0",
                "gateway": "192.168.0.1",
                "nodeIp": "192.168.0.2",
                "nodes": {"192.168.0.1": REQ, "192.168.0.2": A, "192.168.0.10": B},
            }
        ]
    }
    assert list(args["net"][0]) == ["id", "ip", "mask", "gateway", "nodeIp", "nodes"]
    assert net.deploy_args(B)["net"][0]["nodeIp"] == "192.168.0.10"
    json.dumps(args)  # plain JSON types only
    with pytest.raises(NodeNotFound):
        net.deploy_args(C)


def test_deploy_args_exact_v6() -> None:
    net = Network.create("fd00:1::/64", requestor_id=REQ, id=NET_ID, gateway="fd00:1::ff")
    net.add_node(A)
    assert net.deploy_args(A) == {
        "net": [
            {
                "id": NET_ID,
                "ip": "fd00:1::",
                "mask": "ffff:ffff:ffff:ffff::",
                "gateway": "fd00:1::ff",
                "nodeIp": "fd00:1::2",
                "nodes": {"fd00:1::1": REQ, "fd00:1::2": A},
            }
        ]
    }


@pytest.mark.parametrize("cidr", ["192.168.0.0/24", "10.20.0.0/16", "fd00:1::/64", "fd00::/120"])
def test_deploy_round_trip(cidr: str) -> None:
    net = Network.create(cidr, requestor_id=REQ)
    net.add_node(A)
    net.add_node(B)
    expected = [net.deploy_network(B)]
    assert parse_deploy_net(net.deploy_args(B)) == expected
    assert parse_deploy_net(json.dumps(net.deploy_args(B))) == expected
    assert parse_deploy_net(json.dumps(net.deploy_args(B)).encode()) == expected
    assert parse_deploy_net(net.deploy_args(B)["net"]) == expected
    assert [d.to_json() for d in expected] == net.deploy_args(B)["net"]


@settings(max_examples=100)
@given(
    st.one_of(
        st.builds(
            lambda v, p: f"{IPv4Address(v)}/{p}", st.integers(0, 2**32 - 1), st.integers(8, 30)
        ),
        st.builds(
            lambda v, p: f"{IPv6Address(v)}/{p}", st.integers(0, 2**128 - 1), st.integers(8, 126)
        ),
    ),
    st.integers(0, 5),
)
def test_deploy_round_trip_random(cidr: str, count: int) -> None:
    try:
        net = Network.create(cidr, requestor_id=REQ, id=NET_ID)
    except AddressesExhausted:  # e.g. an all-multicast range
        return
    for i in range(count):
        try:
            net.add_node(node_id(i + 1))
        except AddressesExhausted:
            break
    target = node_id(1) if count else REQ
    parsed = parse_deploy_net(json.dumps(net.deploy_args(target)))
    assert parsed == [net.deploy_network(target)]
    assert parsed[0].network == net.network
    assert {str(ip): n for ip, n in parsed[0].nodes.items()} == net.nodes_dict()


def _entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": NET_ID,
        "ip": "192.168.0.0",
        "mask": "255.255.255.0",
        "gateway": "192.168.0.1",
        "nodeIp": "192.168.0.2",
        "nodes": {"192.168.0.1": REQ, "192.168.0.2": A},
    }
    for key, value in changes.items():
        if value is _DROP:
            del entry[key]
        else:
            entry[key] = value
    return entry


_DROP = object()


def test_parse_deploy_net_optional_fields_and_leniency() -> None:
    (net,) = parse_deploy_net(
        {"net": [_entry(mask=_DROP, gateway=_DROP, nodes=_DROP, extra={"x": 1})], "volumes": {}}
    )
    assert net == DeployNetwork(
        NET_ID, ip_network("192.168.0.0/24"), None, IPv4Address("192.168.0.2"), {}
    )
    assert "gateway" not in net.to_json()
    (net,) = parse_deploy_net([_entry(ip="192.168.0.0/24", mask=None, gateway=None)])
    assert net.network == ip_network("192.168.0.0/24")
    assert net.gateway is None
    (net,) = parse_deploy_net([_entry(ip="192.168.0.0/16", mask="16", nodeIp="192.168.7.7")])
    assert net.network == ip_network("192.168.0.0/16")
    # the same node may hold several addresses; ids are normalised
    (net,) = parse_deploy_net(
        [_entry(nodes={"192.168.0.1": A.upper().replace("0X", "0x"), "192.168.0.3": A})]
    )
    assert net.nodes == {IPv4Address("192.168.0.1"): A, IPv4Address("192.168.0.3"): A}
    assert parse_deploy_net({"volumes": {}, "hosts": {}}) == []
    assert parse_deploy_net([]) == []
    assert parse_deploy_net('{"net": []}') == []
    # repeated keys in objects we do not read are not our business
    text = json.dumps({"net": [_entry()]})[:-1] + ', "env": {"A": "1", "A": "2"}}'
    assert len(parse_deploy_net(text)) == 1


def test_parse_deploy_net_several_networks() -> None:
    v4 = _entry()
    v6 = _entry(
        id="second", ip="fd00::", mask=None, gateway=None, nodeIp="fd00::2", nodes={"fd00::1": B}
    )
    other = _entry(
        id="third", ip="10.0.0.0/8", mask=_DROP, gateway="10.0.0.1", nodeIp="10.1.2.3", nodes={}
    )
    nets = parse_deploy_net({"net": [v4, v6, other]})
    assert [n.network for n in nets] == [
        ip_network("192.168.0.0/24"),
        ip_network("fd00::/64"),
        ip_network("10.0.0.0/8"),
    ]
    assert nets[1].nodes == {IPv6Address("fd00::1"): B}


_BAD: list[tuple[object, str, str]] = [
    # (input, path the message starts with, a fragment of the message)
    (42, "net", "expected a list"),
    ({"net": {}}, "net", "expected a list"),
    ({"net": None}, "net", "expected a list"),
    ("[", "not valid JSON", ""),
    (_entry(), "expected {'net'", "single entry"),
    ([42], "net[0]", "expected an object"),
    ([_entry(id=_DROP)], "net[0].id", "missing"),
    ([_entry(id=42)], "net[0].id", "42"),
    ([_entry(id="")], "net[0].id", "''"),
    ([_entry(id="a b")], "net[0].id", "'a b'"),
    ([_entry(id="x" * 129)], "net[0].id", "not a valid network id"),
    ([_entry(ip=_DROP)], "net[0].ip", "missing"),
    ([_entry(ip="garbage")], "net[0].ip", "'garbage'"),
    ([_entry(ip=42)], "net[0].ip", "42"),
    ([_entry(ip="192.168.0.0/33")], "net[0].ip", "/33"),
    ([_entry(mask="255.0.255.0")], "net[0].mask", "contiguous"),
    ([_entry(mask=24)], "net[0].mask", "24"),
    ([_entry(mask="ffff::")], "net[0].mask", "IPv6 netmask"),
    ([_entry(ip="192.168.0.0/24", mask="255.255.0.0")], "net[0].mask", "conflicts"),
    ([_entry(gateway="nope")], "net[0].gateway", "'nope'"),
    ([_entry(gateway=5)], "net[0].gateway", "5"),
    ([_entry(gateway="10.0.0.1")], "net[0].gateway", "'10.0.0.1' is not in network 192.168.0.0/24"),
    ([_entry(nodeIp=_DROP)], "net[0].nodeIp", "missing"),
    ([_entry(nodeIp="10.0.0.5")], "net[0].nodeIp", "'10.0.0.5' is not in network 192.168.0.0/24"),
    ([_entry(nodeIp="192.168.0.0")], "net[0].nodeIp", "network address"),
    ([_entry(nodeIp="192.168.0.255")], "net[0].nodeIp", "broadcast address"),
    ([_entry(nodeIp="fd00::1")], "net[0].nodeIp", "not in network"),
    ([_entry(nodeIp="x")], "net[0].nodeIp", "'x'"),
    ([_entry(nodeIp=3232235522)], "net[0].nodeIp", "3232235522"),
    ([_entry(nodes=[])], "net[0].nodes", "expected an object"),
    ([_entry(nodes=None)], "net[0].nodes", "expected an object"),
    ([_entry(nodes={"x": A})], "net[0].nodes['x']", "'x'"),
    ([_entry(nodes={"10.0.0.1": A})], "net[0].nodes['10.0.0.1']", "not in network"),
    ([_entry(nodes={"192.168.0.255": A})], "net[0].nodes['192.168.0.255']", "broadcast"),
    ([_entry(nodes={"192.168.0.3": "0x12"})], "net[0].nodes['192.168.0.3']", "'0x12'"),
    ([_entry(nodes={"192.168.0.3": 7})], "net[0].nodes['192.168.0.3']", "7"),
    (
        [
            _entry(
                ip="fd00::",
                mask=None,
                gateway=None,
                nodeIp="fd00::2",
                nodes={"fd00::2": A, "fd00:0::2": B},
            )
        ],
        "net[0].nodes['fd00:0::2']",
        "appears twice",
    ),
    (
        [_entry(), _entry(ip="10.0.0.0", nodeIp="10.0.0.2", gateway=None, nodes={})],
        "net[1].id",
        "net[0]",
    ),
    (
        [_entry(), _entry(id="other", ip="192.168.0.0/16", mask=None, gateway=None)],
        "net[1].ip",
        "overlaps 192.168.0.0/24 of net[0]",
    ),
    ([_entry(), _entry(id="other", nodeIp="10.0.0.1")], "net[1].nodeIp", "not in network"),
]


@pytest.mark.parametrize(("obj", "path", "fragment"), _BAD)
def test_parse_deploy_net_rejects(obj: object, path: str, fragment: str) -> None:
    with pytest.raises(DeployConfigError) as info:
        parse_deploy_net(obj)
    message = str(info.value)
    assert message.startswith(path), message
    assert fragment in message
    assert isinstance(info.value, ValueError)


def test_parse_deploy_net_exact_message() -> None:
    with pytest.raises(DeployConfigError) as info:
        parse_deploy_net({"net": [_entry(nodeIp="10.0.0.5")]})
    assert str(info.value) == "net[0].nodeIp: '10.0.0.5' is not in network 192.168.0.0/24"


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            '{"net": [{"id": "n", "ip": "10.0.0.0", "nodeIp": "10.0.0.2", '
            '"nodes": {"10.0.0.2": "A", "10.0.0.2": "B"}}]}'.replace('"A"', f'"{A}"').replace(
                '"B"', f'"{B}"'
            ),
            "net[0].nodes: duplicate key '10.0.0.2'",
        ),
        (
            '[{"id": "n", "id": "m", "ip": "10.0.0.0", "nodeIp": "10.0.0.2"}]',
            "net[0]: duplicate key 'id'",
        ),
        ('{"net": [], "net": []}', "net: duplicate key 'net'"),
    ],
)
def test_parse_deploy_net_rejects_repeated_json_keys(text: str, path: str) -> None:
    with pytest.raises(DeployConfigError) as info:
        parse_deploy_net(text)
    assert str(info.value).startswith(path)


def test_deploy_network_validates_direct_construction() -> None:
    net = ip_network("192.168.0.0/24")
    with pytest.raises(DeployConfigError, match=r"^nodeIp: "):
        DeployNetwork(NET_ID, net, None, IPv4Address("10.0.0.1"), {})
    with pytest.raises(DeployConfigError, match=r"^gateway: "):
        DeployNetwork(NET_ID, net, IPv4Address("10.0.0.1"), IPv4Address("192.168.0.2"), {})
    with pytest.raises(DeployConfigError, match=r"^id: "):
        DeployNetwork("", net, None, IPv4Address("192.168.0.2"), {})
    entry = DeployNetwork(
        NET_ID,
        net,
        None,
        IPv4Address("192.168.0.2"),
        {IPv4Address("192.168.0.2"): A.upper().replace("0X", "0x")},
    )
    assert entry.nodes == {IPv4Address("192.168.0.2"): A}
    assert DeployNetwork.from_json(entry.to_json()) == entry
    with pytest.raises(DeployConfigError, match=r"^nodeIp: missing$"):
        DeployNetwork.from_json({"id": NET_ID, "ip": "192.168.0.0"})
