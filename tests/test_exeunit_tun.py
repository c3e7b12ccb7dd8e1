"""TUN and VM attachments on the native datapath, end to end with real programs.

A relay, a requestor daemon and two provider daemons run as separate processes on 127.0.0.1
(:mod:`exeunit_helpers`). Each provider attaches a payload namespace with ``golem-vpn attach
--tun --netns`` from the DEPLOY its requestor made (an IPv4 and an IPv6 network at once), and
programs in the namespaces talk over the virtual addresses: a TCP echo over IPv4 and IPv6,
``ping`` when it is installed, and the requestor's WebSocket gate into a namespace. ``golem-vpn
run`` returns its command's exit status and leaves no namespace behind; a taken interface name
is refused before anything is made. The VM tests play the runtime with a UDP socket.

Every namespace a test makes is named ``gvt-<pid>-<n>`` and deleted in a ``finally``.

Needs the native attachments (``UdpTransport.attach_tun``); the TUN tests also need root and
iproute2.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ARP, Ether, mac
from exeunit_helpers import NATIVE_ATTACHMENTS, Daemon, Nodes, cli, make_deploy, needs_root
from golem_vpn.netapi.client import Client

PID = os.getpid()
ECHO_PORT = 7300

pytestmark = NATIVE_ATTACHMENTS

_counter = iter(range(1000))


# One large send with UDP_SEGMENT (UDP GSO): the kernel hands the TUN device one packet
# (USO) that the datapath must cut into the datagrams the receiver reads.
_USO_RECEIVER = """
import hashlib, json, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.settimeout(20)
print("ready", flush=True)
got = [s.recv(65535) for _ in range(int(sys.argv[2]))]
print(json.dumps([len(d) for d in got] + [hashlib.sha256(b"".join(got)).hexdigest()]))
"""
_USO_SENDER = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_UDP, 103, 1000)  # UDP_SEGMENT
s.sendto(bytes(i % 251 for i in range(9500)), (host, port))
"""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=check)


def _netns_list() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()}


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Unique namespace names for one test; whichever exist at the end are deleted."""
    names = [f"gvt-{PID}-{next(_counter)}" for _ in range(4)]
    try:
        yield names
    finally:
        present = _netns_list()
        for name in names:
            if name in present:
                _ip("netns", "delete", name, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon, Daemon]]:
    with Nodes(tmp_path_factory.mktemp("exeunit-tun")) as running:
        yield running.start("requestor"), running.start("prov-a"), running.start("prov-b")


def _write(tmp_path: Path, name: str, deploy: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(deploy))
    return str(path)


def _attach(daemon: Daemon, *args: str) -> dict[str, Any]:
    result = cli("attach", *args, "--json", env=daemon.env())
    assert result.returncode == 0, result.stderr
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


_ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys, threading
    port = int(sys.argv[1])
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    print("ready", flush=True)
    def serve(conn):
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)

_ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    blob = bytes(range(256)) * 400
    wait = float(sys.argv[3]) if len(sys.argv) > 3 else 30
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=wait) as conn:
        conn.sendall(blob)
        conn.shutdown(socket.SHUT_WR)
        got = b""
        while data := conn.recv(65536):
            got += data
    sys.exit(0 if got == blob else 1)
    """
)


def _in_netns(netns: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *command]


@needs_root
def test_two_tun_payloads_talk_over_ipv4_and_ipv6(
    nodes: tuple[Daemon, Daemon, Daemon], namespaces: list[str], tmp_path: Path
) -> None:
    requestor, prov_a, prov_b = nodes
    ns_a, ns_b = namespaces[:2]
    (net4, _net6), (deploy_a, deploy_b) = make_deploy(
        requestor, [prov_a, prov_b], ["192.168.174.0/24", "fd74::/64"]
    )
    a4, a6 = (n["nodeIp"] for n in deploy_a["net"])
    b4, b6 = (n["nodeIp"] for n in deploy_b["net"])
    deploy_a["hosts"] = {"peer": b4}
    deploy_b["hosts"] = {"peer": a4}

    att_a = _attach(prov_a, "--tun", "--netns", ns_a, "--deploy", _write(tmp_path, "a", deploy_a))
    att_b = _attach(
        prov_b,
        "--tun",
        "--netns",
        ns_b,
        "--ifname",
        "vpn-b",
        "--mtu",
        "1380",
        "--deploy",
        _write(tmp_path, "b", deploy_b),
    )
    server = None
    try:
        assert (att_a["interface"], att_a["netns"], att_a["netnsCreated"]) == ("gvpn0", ns_a, True)
        assert att_a["addresses"] == [f"{a4}/24", f"{a6}/64"]
        shown = _ip("-n", ns_b, "addr", "show", "dev", "vpn-b").stdout
        assert f"inet {b4}/24" in shown
        assert f"inet6 {b6}/64" in shown
        assert "mtu 1380" in shown
        assert "224.0.0.0/4 dev vpn-b" in _ip("-n", ns_b, "route").stdout
        hosts = subprocess.run(
            _in_netns(ns_a, "cat", "/etc/hosts"), capture_output=True, text=True, check=True
        ).stdout
        assert re.search(rf"^{re.escape(b4)}\s+peer$", hosts, re.MULTILINE)
        assert "localhost" in hosts

        server = subprocess.Popen(
            _in_netns(ns_b, sys.executable, "-c", _ECHO_SERVER, str(ECHO_PORT)),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        for target in (b4, b6, "peer"):
            client = subprocess.run(
                _in_netns(ns_a, sys.executable, "-c", _ECHO_CLIENT, target, str(ECHO_PORT)),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert client.returncode == 0, (target, client.stderr)
        if shutil.which("ping"):
            for target in (b4, b6):
                pong = subprocess.run(
                    _in_netns(ns_a, "ping", "-c1", "-w10", target),
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert pong.returncode == 0, pong.stdout + pong.stderr

        async def through_gate() -> bytes:
            async with Client(requestor.api, requestor.key) as client:
                reader, writer = await client.open_connection(net4, b4, ECHO_PORT)
                writer.write(b"hello from the requestor")
                await writer.drain()
                data = await asyncio.wait_for(reader.readexactly(24), 20)
                writer.close()
                return data

        assert asyncio.run(through_gate()) == b"hello from the requestor"

        for target in (b4, b6):
            receiver = subprocess.Popen(
                _in_netns(ns_b, sys.executable, "-c", _USO_RECEIVER, str(ECHO_PORT + 1), "10"),
                stdout=subprocess.PIPE,
                text=True,
            )
            assert receiver.stdout is not None
            assert receiver.stdout.readline().strip() == "ready"
            subprocess.run(
                _in_netns(ns_a, sys.executable, "-c", _USO_SENDER, target, str(ECHO_PORT + 1)),
                check=True,
                timeout=30,
            )
            out, _ = receiver.communicate(timeout=30)
            sent = bytes(i % 251 for i in range(9500))
            assert json.loads(out) == [1000] * 9 + [500, hashlib.sha256(sent).hexdigest()]

        (listed,) = json.loads(cli("attachments", "--json", env=prov_a.env()).stdout)
        assert listed["id"] == att_a["id"]
        assert listed["counters"]["packetsIn"] > 0
        assert listed["counters"]["bytesOut"] > 100_000  # the echoed blobs
        assert listed["counters"]["drops"] == 0  # no link-local chatter from the device
    finally:
        if server is not None:
            server.kill()
            server.communicate()
        for daemon, att in ((prov_a, att_a), (prov_b, att_b)):
            detached = cli("detach", att["id"], env=daemon.env())
            assert detached.returncode == 0, detached.stderr
    present = _netns_list()
    assert ns_a not in present
    assert ns_b not in present
    assert not (Path("/etc/netns") / ns_a).exists()


def _echo_ok(netns: str, target: str, wait: float = 30) -> bool:
    client = subprocess.run(
        _in_netns(netns, sys.executable, "-c", _ECHO_CLIENT, target, str(ECHO_PORT), str(wait)),
        capture_output=True,
        text=True,
        timeout=wait + 30,
        check=False,
    )
    return client.returncode == 0


@needs_root
def test_a_moved_node_is_readdressed_in_place(
    nodes: tuple[Daemon, Daemon, Daemon], namespaces: list[str], tmp_path: Path
) -> None:
    """``PATCH /net/{id}/nodes/{nodeId}``: the TUN device follows, peers reach the new
    address at once, the old one is gone, no restart and no re-DEPLOY."""
    requestor, prov_a, prov_b = nodes
    ns_a, ns_b = namespaces[:2]
    (net4,), (deploy_a, deploy_b) = make_deploy(requestor, [prov_a, prov_b], ["192.168.173.0/24"])
    b4 = deploy_b["net"][0]["nodeIp"]
    moved = "192.168.173.200"
    att_a = _attach(prov_a, "--tun", "--netns", ns_a, "--deploy", _write(tmp_path, "a", deploy_a))
    att_b = _attach(prov_b, "--tun", "--netns", ns_b, "--deploy", _write(tmp_path, "b", deploy_b))
    server = None
    try:
        server = subprocess.Popen(
            _in_netns(ns_b, sys.executable, "-c", _ECHO_SERVER, str(ECHO_PORT)),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert _echo_ok(ns_a, b4)

        async def move() -> str:
            async with Client(requestor.api, requestor.key) as client:
                node = await client.set_node_ip(net4, prov_b.node_id, moved)
                listed = {n.id: n.ip for n in await client.list_nodes(net4)}
                assert listed[prov_b.node_id] == moved
                return node.ip

        assert asyncio.run(move()) == moved
        deadline = time.monotonic() + 15
        while True:
            shown = _ip("-n", ns_b, "addr", "show", "dev", "gvpn0").stdout
            if f"inet {moved}/24" in shown and f"inet {b4}/24" not in shown:
                break
            assert time.monotonic() < deadline, f"the TUN device was not readdressed: {shown}"
            time.sleep(0.1)
        assert _echo_ok(ns_a, moved), "the new address is reachable from another provider"
        assert not _echo_ok(ns_a, b4, wait=3), "the old address is not"
        (listed,) = json.loads(cli("attachments", "--json", env=prov_b.env()).stdout)
        assert listed["addresses"] == [f"{moved}/24"]
        assert listed["networks"][0]["nodeIp"] == moved
    finally:
        if server is not None:
            server.kill()
            server.communicate()
        for daemon, att in ((prov_a, att_a), (prov_b, att_b)):
            cli("detach", att["id"], env=daemon.env())


@needs_root
def test_run_returns_the_status_and_removes_its_namespace(
    nodes: tuple[Daemon, Daemon, Daemon], tmp_path: Path
) -> None:
    requestor, prov_a, _ = nodes
    (_,), (deploy,) = make_deploy(requestor, [prov_a], ["192.168.175.0/24"])
    node_ip = deploy["net"][0]["nodeIp"]
    before = _netns_list()
    script = f"ip -o addr show dev gvpn0 | grep -q ' {node_ip}/24 ' && exit 3; exit 4"
    result = cli(
        "run", "--deploy", _write(tmp_path, "d", deploy), "--", "sh", "-c", script,
        env=prov_a.env(),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "attached" in result.stderr
    assert result.stdout == ""
    leftover = {n for n in _netns_list() - before if n.startswith("gvpn-run-")}
    assert leftover == set()
    assert json.loads(cli("attachments", "--json", env=prov_a.env()).stdout) == []


@needs_root
def test_run_forwards_sigterm_and_cleans_up(
    nodes: tuple[Daemon, Daemon, Daemon], tmp_path: Path
) -> None:
    requestor, prov_a, _ = nodes
    (_,), (deploy,) = make_deploy(requestor, [prov_a], ["192.168.179.0/24"])
    before = _netns_list()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "golem_vpn",
            "run",
            "--deploy",
            _write(tmp_path, "d", deploy),
            "--",
            "sleep",
            "60",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=prov_a.env(),
    )
    try:
        assert proc.stderr is not None
        assert "attached" in proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "detached" in err
    assert {n for n in _netns_list() - before if n.startswith("gvpn-run-")} == set()
    assert json.loads(cli("attachments", "--json", env=prov_a.env()).stdout) == []


@needs_root
def test_a_taken_interface_name_leaves_nothing_behind(
    nodes: tuple[Daemon, Daemon, Daemon], namespaces: list[str], tmp_path: Path
) -> None:
    requestor, prov_a, _ = nodes
    netns = namespaces[0]
    _ip("netns", "add", netns)
    _ip("-n", netns, "tuntap", "add", "gvpn0", "mode", "tun")  # someone else's device
    (_,), (deploy,) = make_deploy(requestor, [prov_a], ["192.168.176.0/24"])
    path = _write(tmp_path, "d", deploy)
    links_before = _ip("-o", "link").stdout.count("\n")

    taken = cli("attach", "--tun", "--netns", netns, "--deploy", path, env=prov_a.env())
    assert taken.returncode == 1
    assert f"interface gvpn0 already exists in netns {netns}" in taken.stderr
    assert "Traceback" not in taken.stderr
    assert json.loads(cli("attachments", "--json", env=prov_a.env()).stdout) == []
    assert _ip("-o", "link").stdout.count("\n") == links_before
    assert len(_ip("-n", netns, "-o", "link").stdout.splitlines()) == 2  # lo, the other gvpn0
    assert not (Path("/etc/netns") / netns).exists()

    # The network was not left joined: another name works, and detaching keeps the namespace
    # (the attachment did not create it) but removes the device.
    att = _attach(prov_a, "--tun", "--netns", netns, "--ifname", "gvpn1", "--deploy", path)
    assert att["netnsCreated"] is False
    assert cli("detach", att["id"], env=prov_a.env()).returncode == 0
    assert netns in _netns_list()
    assert "gvpn1" not in _ip("-n", netns, "-o", "link").stdout


# --- VM frames ------------------------------------------------------------------------------


def test_vm_udp_endpoint_answers_arp(nodes: tuple[Daemon, Daemon, Daemon], tmp_path: Path) -> None:
    requestor, prov_a, _ = nodes
    (_,), (deploy,) = make_deploy(requestor, [prov_a], ["192.168.177.0/24"])
    entry = deploy["net"][0]
    node_ip, gateway = entry["nodeIp"], entry["gateway"]
    att = _attach(prov_a, "--vm-endpoint", "--deploy", _write(tmp_path, "d", deploy))
    try:
        assert att["kind"] == "vm"
        endpoint = att["endpoint"]
        assert endpoint.startswith("udp://127.0.0.1:")
        port = int(endpoint.rsplit(":", 1)[1])
        assert port > 0
        guest = mac(node_ip)
        request = Ether(dst="ff:ff:ff:ff:ff:ff", src=guest) / ARP(
            op=1, hwsrc=guest, psrc=node_ip, pdst=gateway
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(10)
            sock.sendto(bytes(request), ("127.0.0.1", port))
            reply = Ether(sock.recv(65536))
        assert reply.haslayer(ARP)
        assert reply[ARP].op == 2
        assert reply[ARP].psrc == gateway
        assert reply[ARP].pdst == node_ip
    finally:
        assert cli("detach", att["id"], env=prov_a.env()).returncode == 0


def test_vm_unreachable_endpoint_leaves_nothing_behind(
    nodes: tuple[Daemon, Daemon, Daemon], tmp_path: Path
) -> None:
    requestor, prov_a, _ = nodes
    (_,), (deploy,) = make_deploy(requestor, [prov_a], ["192.168.178.0/24"])
    path = _write(tmp_path, "d", deploy)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = cli("attach", "--vm-endpoint", f"tcp-connect://127.0.0.1:{port}", "--deploy", path,
                 env=prov_a.env())  # fmt: skip
    assert result.returncode == 1
    assert "VM endpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(cli("attachments", "--json", env=prov_a.env()).stdout) == []
    att = _attach(prov_a, "--userspace", "--deploy", path)  # the network was left
    assert cli("detach", att["id"], env=prov_a.env()).returncode == 0


BRIDGE = Path(__file__).resolve().parent / "vm_guest_bridge.py"


@needs_root
@pytest.mark.parametrize(
    ("endpoint", "cidr"),
    [("udp://127.0.0.1:0", "192.168.168.0/24"), ("tcp-listen://127.0.0.1:0", "192.168.169.0/24")],
)
def test_a_vm_guest_reaches_a_tun_payload(
    nodes: tuple[Daemon, Daemon, Daemon],
    namespaces: list[str],
    tmp_path: Path,
    endpoint: str,
    cidr: str,
) -> None:
    """The Linux kernel plays the VM: a TAP device in a guest namespace whose frames a bridge
    carries to the endpoint as QEMU's ``-netdev socket`` does (UDP, or TCP with u32 length
    prefixes); ``ping`` and ``curl`` from the guest reach a TUN-attached provider."""
    requestor, prov_a, prov_b = nodes
    ns_a, guest = namespaces[:2]
    (_,), (deploy_a, deploy_b) = make_deploy(requestor, [prov_a, prov_b], [cidr])
    a4, b4 = deploy_a["net"][0]["nodeIp"], deploy_b["net"][0]["nodeIp"]
    att_a = _attach(prov_a, "--tun", "--netns", ns_a, "--deploy", _write(tmp_path, "a", deploy_a))
    att_b = _attach(prov_b, "--vm-endpoint", endpoint, "--deploy", _write(tmp_path, "b", deploy_b))
    scheme, _, hostport = att_b["endpoint"].partition("://")
    assert (scheme, hostport.startswith("127.0.0.1:")) == (endpoint.partition("://")[0], True)
    _ip("netns", "add", guest)
    _ip("-n", guest, "link", "set", "lo", "up")
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.txt").write_text("served to a VM\n")
    server = subprocess.Popen(
        _in_netns(ns_a, sys.executable, "-m", "http.server", "8080", "-b", "0.0.0.0", "-d",
                  str(site)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    how = "--udp" if scheme == "udp" else "--connect"
    bridge = subprocess.Popen(
        [sys.executable, str(BRIDGE), "--guest", guest, "--ip", f"{b4}/24", "--route", cidr,
         how, hostport],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert bridge.stdout is not None
        assert bridge.stdout.readline().strip() == "ready", bridge.stderr
        shown = _ip("-n", guest, "link", "show", "eth0").stdout
        assert "90:13:" + ":".join(f"{int(o):02x}" for o in b4.split(".")) in shown
        deadline = time.monotonic() + 30
        while True:
            pong = subprocess.run(
                _in_netns(guest, "ping", "-c1", "-W1", a4), capture_output=True, check=False
            )
            if pong.returncode == 0:
                break
            assert time.monotonic() < deadline, "the guest never reached the TUN payload"
        page = subprocess.run(
            _in_netns(guest, "curl", "-sf", "--max-time", "10", "--retry", "5",
                      "--retry-connrefused", f"http://{a4}:8080/page.txt"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert page.stdout == "served to a VM\n", page.stderr
        (listed,) = [
            a
            for a in json.loads(cli("attachments", "--json", env=prov_b.env()).stdout)
            if a["id"] == att_b["id"]
        ]
        assert listed["kind"] == "vm"
        assert listed["counters"]["packetsIn"] > 0
        assert listed["counters"]["packetsOut"] > 0
    finally:
        for proc in (bridge, server):
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for daemon, att in ((prov_a, att_a), (prov_b, att_b)):
            cli("detach", att["id"], env=daemon.env())
