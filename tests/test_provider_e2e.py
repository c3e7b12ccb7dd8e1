"""Issue 8's end-to-end test: real programs on three providers talk over the VPN.

Five namespaces play five machines on one switch (:class:`golem_vpn.lab.Lab`, underlay
198.18.90.0/24): ``gve-r`` runs a relay and the requestor's daemon, ``gve-h1``..``gve-h3`` run
one provider daemon each, all as separate processes. The requestor makes an IPv4 and an IPv6
network through the Net API (``golem-vpn net``) and gives providers 1 and 2 their DEPLOY;
they attach payload namespaces with ``golem-vpn attach --tun --netns``. Provider 3 is added
later and runs its payload with ``golem-vpn run``. Then, inside the payload namespaces:
``curl`` of a ``python3 -m http.server``, a UDP exchange, ``ping`` and ``ping -6``, a multicast
datagram that every other payload receives, the requestor's page fetch through the WebSocket
gate, a node moved to another address, and a removed node cut off at once. Afterwards every
namespace and process is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from golem_vpn.lab import GOLEM_VPN, Lab, in_netns, netns_list, run

pytestmark = [
    pytest.mark.skipif(
        not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or any(shutil.which(t) is None for t in ("ip", "nsenter", "curl", "ping")),
        reason="needs root, iproute2, nsenter, curl and ping",
    ),
    pytest.mark.timeout(300),
]

PAYLOADS = ["gve-p1", "gve-p2"]
NET4, NET6 = "192.168.90.0/24", "fd90::/64"
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


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab("gve") as running:
        try:
            yield running
        except BaseException:
            print(running.logs())
            raise


def ping(ns: str, target: str, *, v6: bool = False, wait: float = 10) -> bool:
    """One ping answered within ``wait`` seconds (a few tries while paths come up)."""
    cmd = ["ping", *(["-6"] if v6 else []), "-c", "1", "-W", "1", target]
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if run(*in_netns(ns, *cmd), check=False, timeout=10).returncode == 0:
            return True
    return False


def curl(ns: str, url: str) -> str:
    cmd = ["curl", "-sf", "-g", "--max-time", "10", "--retry", "5", "--retry-connrefused", url]
    return run(*in_netns(ns, *cmd), timeout=90).stdout


def test_payloads_on_three_providers_talk_over_the_vpn(lab: Lab, tmp_path: Path) -> None:
    hub = lab.host("r")
    relay = lab.relay(hub)
    req = lab.daemon(hub, relay=relay, name="requestor")
    prov = [lab.daemon(lab.host(f"h{i}"), relay=relay) for i in (1, 2, 3)]
    p1, p2 = PAYLOADS

    # The requestor: two networks (IPv4, IPv6) with providers 1 and 2.
    made = json.loads(req.python(_DEPLOY, prov[0].node_id, prov[1].node_id))
    net4, net6 = made["networks"]
    addr = []  # [v4, v6] of providers 1 and 2
    for daemon, pay in zip(prov[:2], PAYLOADS, strict=False):
        deploy = made["deploys"][daemon.node_id]
        v4, v6 = (n["nodeIp"] for n in deploy["net"])
        addr.append((v4, v6))
        attached = daemon.attach_tun(deploy, pay)
        assert attached["interface"] == "gvpn0"
        assert attached["addresses"] == [f"{v4}/24", f"{v6}/64"]
    (v4_1, _), (v4_2, v6_2) = addr

    # HTTP: a real server on provider 2, curl on provider 1, over IPv4 and IPv6.
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.txt").write_text("served from provider 2\n")
    http2 = lab.popen(
        in_netns(p2, sys.executable, "-m", "http.server", str(HTTP_PORT), "-b", "::", "-d",
                 str(site)),
        "http2.log",
    )  # fmt: skip
    assert ping(p1, v4_2, wait=20), "provider 1 never reached provider 2"
    assert curl(p1, f"http://{v4_2}:{HTTP_PORT}/page.txt") == "served from provider 2\n"
    assert curl(p1, f"http://[{v6_2}]:{HTTP_PORT}/page.txt") == "served from provider 2\n"

    # UDP both ways, ping and ping -6.
    echo = lab.popen(in_netns(p2, sys.executable, "-c", _UDP_ECHO, str(UDP_PORT)), "udp.log")
    assert echo.stdout is not None
    assert echo.stdout.readline().strip() == "ready"
    udp = run(*in_netns(p1, sys.executable, "-c", _UDP_CLIENT, v4_2, str(UDP_PORT)))
    assert udp.stdout.strip() == "npv eht revo margatad"
    assert ping(p2, v4_1)
    assert ping(p1, v6_2, v6=True), "ping -6 failed"

    # The requestor fetches the page through the WebSocket gate.
    page = req.python(_GATE_GET, net4, v4_2, str(HTTP_PORT))
    assert page.startswith("HTTP/1.0 200"), page
    assert "served from provider 2" in page

    # Provider 3 joins later (no restart anywhere) and runs its payload with `golem-vpn run`.
    deploy3 = req.python(_ADD_NODE, prov[2].node_id, net4, net6)
    path3 = tmp_path / "p3.json"
    path3.write_text(deploy3)
    v4_3 = json.loads(deploy3)["net"][0]["nodeIp"]
    (site / "three.txt").write_text("provider 3\n")
    mcast3 = tmp_path / "mcast3.bin"
    run3 = lab.popen(
        in_netns(prov[2].host, *prov[2].env(), *GOLEM_VPN, "run", "--deploy", str(path3), "--",
                 sys.executable, "-c", _PAYLOAD3, str(site), MCAST[0], str(MCAST[1]),
                 str(mcast3)),
        "run3.log",
    )  # fmt: skip
    assert ping(p1, v4_3, wait=30), "provider 3 was not reachable after it was added"
    assert curl(p1, f"http://{v4_3}:{HTTP_PORT}/three.txt") == "provider 3\n"

    # Multicast from provider 1 reaches provider 2 and provider 3.
    recv2 = lab.popen(in_netns(p2, sys.executable, "-c", _MCAST_RECV, *map(str, MCAST)), "m.log")
    assert recv2.stdout is not None
    assert recv2.stdout.readline().strip() == "ready"
    sender = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,2);"
        "[s.sendto(b'hello group',(sys.argv[1],int(sys.argv[2]))) for _ in range(3)]"
    )
    run(*in_netns(p1, sys.executable, "-c", sender, *map(str, MCAST)))
    out2, _ = recv2.communicate(timeout=30)
    assert out2.strip() == "hello group"
    deadline = time.monotonic() + 10
    while not mcast3.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mcast3.read_bytes() == b"hello group"

    # Provider 3 moves to another address: reachable there, not at the old one.
    moved = "192.168.90.200"
    req.cli("net", "node", "set-ip", net4, prov[2].node_id, moved)
    assert ping(p1, moved, wait=15), "the moved node is not reachable at its new address"
    assert not ping(p1, v4_3, wait=2)

    # Removing provider 2 cuts it off at once.
    req.cli("net", "node", "rm", net4, prov[1].node_id)
    req.cli("net", "node", "rm", net6, prov[1].node_id)
    time.sleep(0.5)
    assert not ping(p1, v4_2, wait=2), "a removed node still answers"
    assert ping(p1, moved), "the others still talk"

    # Teardown: `run` cleans up after its command; attachments are detached.
    run3.send_signal(signal.SIGTERM)
    run3.communicate(timeout=30)
    for proc in (http2, echo):
        proc.kill()
        proc.communicate()
    for daemon in prov[:2]:
        for att in json.loads(daemon.cli("attachments", "--json").stdout):
            daemon.cli("detach", att["id"])
    assert not {n for n in netns_list() if n.startswith("gvpn-run-")}
    assert not netns_list() & set(PAYLOADS)
    procs = list(lab.procs)
    lab.close()
    assert all(p.poll() is not None for p in procs)
    assert not {n for n in netns_list() if n.startswith("gve-")}
