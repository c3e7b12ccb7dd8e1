"""Issue 8's end-to-end test: real programs on three providers talk over the VPN.

Five namespaces play five machines on one switch (a bridge in namespace ``gve-sw``, underlay
198.18.90.0/24): ``gve-r`` runs a relay and the requestor's daemon, ``gve-h1``..``gve-h3`` run
one provider daemon each, all as separate processes. The requestor makes an IPv4 and an IPv6
network through the Net API (``golem-vpn net``) and gives providers 1 and 2 their DEPLOY;
they attach payload namespaces with ``golem-vpn attach --tun --netns``. Provider 3 is added
later and runs its payload with ``golem-vpn run``. Then, inside the payload namespaces:
``curl`` of a ``python3 -m http.server``, a UDP exchange, ``ping`` and ``ping -6``, a multicast
datagram that every other payload receives, the requestor's page fetch through the WebSocket
gate, a node moved to another address, and a removed node cut off at once. Afterwards every
namespace and process is gone.

Daemons enter their host's namespace with ``nsenter --net`` (not ``ip netns exec``, which
would also give them a mount namespace of their own, hiding the payload namespaces they make).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or any(shutil.which(t) is None for t in ("ip", "nsenter", "curl", "ping")),
        reason="needs root, iproute2, nsenter, curl and ping",
    ),
    pytest.mark.timeout(300),
]

SWITCH, REQ = "gve-sw", "gve-r"
HOSTS = ["gve-h1", "gve-h2", "gve-h3"]
PAYLOADS = ["gve-p1", "gve-p2"]
UNDER = {REQ: "198.18.90.1", "gve-h1": "198.18.90.11", "gve-h2": "198.18.90.12",
         "gve-h3": "198.18.90.13"}  # fmt: skip
NET4, NET6 = "192.168.90.0/24", "fd90::/64"
GOLEM_VPN = [sys.executable, "-m", "golem_vpn"]
HTTP_PORT, UDP_PORT, MCAST = 8080, 9999, ("239.1.2.3", 5007)

_DEPLOY = """
import asyncio, json, sys
from golem_vpn.netapi.client import Client
from golem_vpn.sdk import Network

async def main():
    api, key, *providers = sys.argv[1:]
    async with Client(api, key) as client:
        nets = [await Network.create(client, c) for c in ("NET4", "NET6")]
        out = {"networks": [n.network_id for n in nets], "deploys": {}}
        for p in providers:
            out["deploys"][p] = {"net": [], "hosts": {}}
            for n in nets:
                out["deploys"][p]["net"] += n.deploy_args(await n.add_node(p))["net"]
        print(json.dumps(out))

asyncio.run(main())
""".replace("NET4", NET4).replace("NET6", NET6)

_ADD_NODE = """
import asyncio, ipaddress, json, sys
from golem_vpn.netapi.client import Client

async def main():
    api, key, node, *ids = sys.argv[1:]
    deploy = {"net": [], "hosts": {}}
    async with Client(api, key) as client:
        me = (await client.status()).node_id
        for nid in ids:
            info = await client.get_network(nid)
            net = ipaddress.ip_interface(info.ip).network
            nodes = {n.ip: n.id for n in await client.list_nodes(nid)}
            nodes[info.gateway] = me
            ip = next(str(h) for h in net.hosts() if str(h) not in nodes)
            await client.add_node(nid, node, ip)
            nodes[ip] = node
            deploy["net"].append({"id": nid, "ip": str(net.network_address),
                "mask": str(net.netmask), "gateway": info.gateway, "nodeIp": ip,
                "nodes": nodes})
    print(json.dumps(deploy))

asyncio.run(main())
"""

_GATE_GET = """
import asyncio, sys
from golem_vpn.netapi.client import Client

async def main():
    api, key, nid, ip, port = sys.argv[1:]
    async with Client(api, key) as client:
        reader, writer = await client.open_connection(nid, ip, int(port))
        writer.write(b"GET /page.txt HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 20)
        writer.close()
        sys.stdout.write(data.decode(errors="replace"))

asyncio.run(main())
"""

_PAYLOAD3 = """
import http.server, os, socket, struct, sys, threading
os.chdir(sys.argv[1])
group, port, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
def mcast():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", port))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
    data, _ = s.recvfrom(2048)
    with open(out, "wb") as f:
        f.write(data)
threading.Thread(target=mcast, daemon=True).start()
handler = http.server.SimpleHTTPRequestHandler
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), handler).serve_forever()
"""

_MCAST_RECV = """
import socket, struct, sys
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
print("ready", flush=True)
s.settimeout(30)
print(s.recvfrom(2048)[0].decode(), flush=True)
"""

_UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
data, peer = s.recvfrom(2048)
s.sendto(data[::-1], peer)
"""

_UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(b"datagram over the vpn", (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(2048)[0].decode())
"""


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr}")
    return done


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def netns_list() -> set[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


class Cluster:
    """The namespaces and processes of the test; :meth:`close` removes every one."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[str]] = []
        self.namespaces: list[str] = []
        self.daemons: dict[str, tuple[str, str, str]] = {}  # host -> (node id, api, key)

    def netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def popen(self, cmd: list[str], log: str) -> subprocess.Popen[str]:
        with (self.work / log).open("w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        self.procs.append(proc)
        return proc

    def build(self) -> str:
        """Switch, hosts, relay and daemons; returns the relay's address."""
        self.netns(SWITCH)
        sh("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", SWITCH, "link", "set", "br0", "up")
        for i, host in enumerate([REQ, *HOSTS]):
            self.netns(host)
            port = f"gve-s{i}"
            sh("ip", "link", "add", "eth0", "netns", host, "type", "veth", "peer", port,
               "netns", SWITCH)  # fmt: skip
            sh("ip", "-n", SWITCH, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", host, "addr", "add", f"{UNDER[host]}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
        relay = self.popen(
            ["nsenter", f"--net=/run/netns/{REQ}", *GOLEM_VPN, "relay", "--listen",
             f"{UNDER[REQ]}:0"],
            "relay.log",
        )  # fmt: skip
        assert relay.stdout is not None
        relay_addr = relay.stdout.readline().split()[-1]
        for host in [REQ, *HOSTS]:
            self.daemons[host] = self.daemon(host, relay_addr)
        return relay_addr

    def daemon(self, host: str, relay: str) -> tuple[str, str, str]:
        data = self.work / host
        created = sh(*GOLEM_VPN, "app-key", "create", "e2e", "--json", "--data-dir", str(data))
        key = json.loads(created.stdout)["key"]
        proc = self.popen(
            ["nsenter", f"--net=/run/netns/{host}", *GOLEM_VPN, "daemon", "--data-dir",
             str(data), "--api", "127.0.0.1:0", "--listen", f"{UNDER[host]}:0", "--relay",
             relay],
            f"{host}.log",
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("golem-vpn daemon 0x"), (self.work / f"{host}.log").read_text()
        return line.split()[2].rstrip(":"), line.split("Net API ")[1].split(",")[0], key

    def cli(self, host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``golem-vpn ARGS`` on ``host``, pointed at its daemon."""
        _, api, key = self.daemons[host]
        env = ["env", f"YAGNA_API_URL={api}", f"YAGNA_APPKEY={key}"]
        return sh(*in_ns(host, *env, *GOLEM_VPN, *args), check=check)

    def py(self, host: str, script: str, *args: str) -> str:
        """A Python snippet on ``host`` with its daemon's API URL and key first in argv."""
        _, api, key = self.daemons[host]
        return sh(*in_ns(host, sys.executable, "-c", script, api, key, *args)).stdout

    def diagnostics(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.work.glob("*.log")
        )

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "delete", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    leftovers = {n for n in netns_list() if n.startswith("gve-")}
    for name in leftovers:  # from a run that was killed
        sh("ip", "netns", "delete", name, check=False)
    c = Cluster(tmp_path)
    try:
        yield c
    except BaseException:
        print(c.diagnostics())
        raise
    finally:
        c.close()


def ping(ns: str, target: str, *, v6: bool = False, wait: float = 10) -> bool:
    """One ping answered within ``wait`` seconds (a few tries while paths come up)."""
    cmd = ["ping", *(["-6"] if v6 else []), "-c", "1", "-W", "1", target]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if sh(*in_ns(ns, *cmd), check=False, timeout=10).returncode == 0:
            return True
    return False


def test_payloads_on_three_providers_talk_over_the_vpn(cluster: Cluster, tmp_path: Path) -> None:
    cluster.build()
    h1, h2, h3 = HOSTS
    p1, p2 = PAYLOADS
    ids = {h: cluster.daemons[h][0] for h in HOSTS}

    # The requestor: two networks (IPv4, IPv6) with providers 1 and 2.
    made = json.loads(cluster.py(REQ, _DEPLOY, ids[h1], ids[h2]))
    net4, net6 = made["networks"]
    deploys = made["deploys"]
    addr = {h: [n["nodeIp"] for n in deploys[ids[h]]["net"]] for h in (h1, h2)}  # host -> [v4, v6]
    for host, pay in ((h1, p1), (h2, p2)):
        path = tmp_path / f"{pay}.json"
        path.write_text(json.dumps(deploys[ids[host]]))
        attached = json.loads(
            cluster.cli(host, "attach", "--tun", "--netns", pay, "--deploy", str(path),
                        "--json").stdout
        )  # fmt: skip
        cluster.namespaces.append(pay)
        assert attached["interface"] == "gvpn0"
        assert attached["addresses"] == [f"{addr[host][0]}/24", f"{addr[host][1]}/64"]

    # HTTP: a real server on provider 2, curl on provider 1.
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.txt").write_text("served from provider 2\n")
    http2 = cluster.popen(
        in_ns(p2, sys.executable, "-m", "http.server", str(HTTP_PORT), "-b", "::", "-d", str(site)),
        "http2.log",
    )
    v4_1 = addr[h1][0]
    v4_2, v6_2 = addr[h2]
    assert ping(p1, v4_2, wait=20), "provider 1 never reached provider 2"
    got = sh(*in_ns(p1, "curl", "-sf", "--max-time", "10", "--retry", "5", "--retry-connrefused",
                    f"http://{v4_2}:{HTTP_PORT}/page.txt"))  # fmt: skip
    assert got.stdout == "served from provider 2\n"
    got6 = sh(*in_ns(p1, "curl", "-sf", "--max-time", "10", "-g",
                     f"http://[{v6_2}]:{HTTP_PORT}/page.txt"))  # fmt: skip
    assert got6.stdout == "served from provider 2\n"

    # UDP both ways, ping and ping -6.
    echo = cluster.popen(in_ns(p2, sys.executable, "-c", _UDP_ECHO, str(UDP_PORT)), "udp.log")
    assert echo.stdout is not None
    assert echo.stdout.readline().strip() == "ready"
    udp = sh(*in_ns(p1, sys.executable, "-c", _UDP_CLIENT, v4_2, str(UDP_PORT)))
    assert udp.stdout.strip() == "npv eht revo margatad"
    assert ping(p2, v4_1)
    assert ping(p1, v6_2, v6=True), "ping -6 failed"

    # The requestor fetches the page through the WebSocket gate.
    page = cluster.py(REQ, _GATE_GET, net4, v4_2, str(HTTP_PORT))
    assert page.startswith("HTTP/1.0 200"), page
    assert "served from provider 2" in page

    # Provider 3 joins later (no restart anywhere) and runs its payload with `golem-vpn run`.
    deploy3 = cluster.py(REQ, _ADD_NODE, ids[h3], net4, net6)
    path3 = tmp_path / "p3.json"
    path3.write_text(deploy3)
    v4_3 = json.loads(deploy3)["net"][0]["nodeIp"]
    (site / "three.txt").write_text("provider 3\n")
    mcast3 = tmp_path / "mcast3.bin"
    _, api3, key3 = cluster.daemons[h3]
    run3 = cluster.popen(
        in_ns(h3, "env", f"YAGNA_API_URL={api3}", f"YAGNA_APPKEY={key3}", *GOLEM_VPN, "run",
              "--deploy", str(path3), "--", sys.executable, "-c", _PAYLOAD3, str(site),
              MCAST[0], str(MCAST[1]), str(mcast3)),
        "run3.log",
    )  # fmt: skip
    assert ping(p1, v4_3, wait=30), "provider 3 was not reachable after it was added"
    got3 = sh(*in_ns(p1, "curl", "-sf", "--max-time", "10", "--retry", "5",
                     "--retry-connrefused", f"http://{v4_3}:{HTTP_PORT}/three.txt"))  # fmt: skip
    assert got3.stdout == "provider 3\n"

    # Multicast from provider 1 reaches provider 2 and provider 3.
    recv2 = cluster.popen(in_ns(p2, sys.executable, "-c", _MCAST_RECV, *map(str, MCAST)), "m.log")
    assert recv2.stdout is not None
    assert recv2.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # provider 3's receiver joins as its payload starts
    sender = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,2);"
        "[s.sendto(b'hello group',(sys.argv[1],int(sys.argv[2]))) for _ in range(3)]"
    )
    sh(*in_ns(p1, sys.executable, "-c", sender, *map(str, MCAST)))
    out2, _ = recv2.communicate(timeout=30)
    assert out2.strip() == "hello group"
    deadline = time.monotonic() + 10
    while not mcast3.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mcast3.read_bytes() == b"hello group"

    # Provider 3 moves to another address: reachable there, not at the old one.
    moved = "192.168.90.200"
    cluster.cli(REQ, "net", "node", "set-ip", net4, ids[h3], moved)
    assert ping(p1, moved, wait=15), "the moved node is not reachable at its new address"
    assert not ping(p1, v4_3, wait=2)

    # Removing provider 2 cuts it off at once.
    cluster.cli(REQ, "net", "node", "rm", net4, ids[h2])
    cluster.cli(REQ, "net", "node", "rm", net6, ids[h2])
    time.sleep(0.5)
    assert not ping(p1, v4_2, wait=2), "a removed node still answers"
    assert ping(p1, moved), "the others still talk"

    # Teardown: `run` cleans up after its command; attachments are detached.
    run3.send_signal(signal.SIGTERM)
    run3.communicate(timeout=30)
    for proc in (http2, echo):
        proc.kill()
        proc.communicate()
    for host in (h1, h2):
        for att in json.loads(cluster.cli(host, "attachments", "--json").stdout):
            cluster.cli(host, "detach", att["id"])
    assert not {n for n in netns_list() if n.startswith("gvpn-run-")}
    assert not netns_list() & set(PAYLOADS)
    cluster.close()
    assert all(p.poll() is not None for p in cluster.procs)
    assert not {n for n in netns_list() if n.startswith("gve-")}
