"""The raw frame gate: ``GET /net/{id}/raw/from/{src}/to/{dst}``, Ethernet frames over a WebSocket.

The first tests run the Net API over a :class:`~golem_vpn.netapi.backend.LocalBackend`: the
provider is a userspace stack in this process, and a WebSocket client plays a host on a link
with it (yagna's MACs, ARP answered by the gate, ICMP and UDP answered by the provider's
stack). They check auth, 404 for an unknown network, 400 for bad addresses, both prefixes,
bad frames counted and refused with the session left up, and the session's end when its node
or network goes. The last test runs real daemons as processes (:mod:`exeunit_helpers`) and
gives the provider a VM frame endpoint played by a UDP socket, as ``test_exeunit_tun.py``
does: frames from the WebSocket arrive at the "VM" as Ethernet frames, and its frames come
back to the WebSocket.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from conftest import ARP, ICMP, IP, UDP, Ether, ICMPv6EchoRequest, IPv6, mac
from exeunit_helpers import Nodes, cli, make_deploy
from golem_vpn.netapi.client import Client
from golem_vpn.netapi.gate import MAX_RAW_MESSAGE
from golem_vpn.node.transport import UdpTransport
from test_netapi_server import PROV_A, PROV_B, V1, V2, Api, serve_test

REQ_IP, A_IP, B_IP = "192.168.0.1", "192.168.0.2", "192.168.0.3"
UDP_ECHO = 5353
REQ_MAC, A_MAC = mac(REQ_IP, requestor=True), mac(A_IP)
_ECHOES: set[asyncio.Task[None]] = set()


def raw_url(api: Api, net_id: str, src: str, dst: str, prefix: str = V1) -> str:
    return f"{api.url}{prefix}/net/{net_id}/raw/from/{src}/to/{dst}"


async def network(api: Api) -> str:
    """A network with two providers; an UDP echo on the first one's stack."""
    nid = await api.create("192.168.0.0/24")
    for node, ip in ((PROV_A, A_IP), (PROV_B, B_IP)):
        assert (await api.call("POST", f"/net/{nid}/nodes", {"id": node, "ip": ip}))[0] == 200
    endpoint = await api.backend.provider(nid, PROV_A).open_datagram_endpoint(UDP_ECHO)

    async def echo() -> None:
        while True:
            data, addr = await endpoint.recv()
            endpoint.send(b"echo: " + data, addr)

    task = asyncio.create_task(echo())
    _ECHOES.add(task)  # a reference, as asyncio asks; the loop's end cancels it
    task.add_done_callback(lambda _: (endpoint.close(), _ECHOES.discard(task)))
    return nid


def to_a(payload: object) -> bytes:
    """A frame from the requestor's address to provider A."""
    return bytes(Ether(dst=A_MAC, src=REQ_MAC) / IP(src=REQ_IP, dst=A_IP) / payload)


async def frame(ws: aiohttp.ClientWebSocketResponse) -> Ether:
    async with asyncio.timeout(10):
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    return Ether(msg.data)


@pytest.mark.parametrize("prefix", [V1, V2])
def test_frames_reach_the_node_and_come_back(tmp_path: Path, prefix: str) -> None:
    async def test(api: Api) -> None:
        nid = await network(api)
        url = raw_url(api, nid, REQ_IP, A_IP, prefix)
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            # ARP for the node is answered by the gate with yagna's MAC for it.
            await ws.send_bytes(
                bytes(
                    Ether(dst="ff:ff:ff:ff:ff:ff", src=REQ_MAC)
                    / ARP(op=1, hwsrc=REQ_MAC, psrc=REQ_IP, pdst=A_IP)
                )
            )
            reply = await frame(ws)
            assert reply[ARP].op == 2
            assert (reply[ARP].psrc, reply[ARP].hwsrc) == (A_IP, "90:13:c0:a8:00:02")
            assert reply.dst == "a0:13:c0:a8:00:01"

            # The provider's stack answers a ping and a datagram; the answers come back
            # as frames from the node's MAC to the requestor's.
            await ws.send_bytes(to_a(ICMP(type=8, id=7, seq=1) / b"ping"))
            pong = await frame(ws)
            assert (pong.src, pong.dst) == ("90:13:c0:a8:00:02", "a0:13:c0:a8:00:01")
            assert (pong[IP].src, pong[IP].dst) == (A_IP, REQ_IP)
            assert (pong[ICMP].type, pong[ICMP].id, bytes(pong[ICMP].payload)) == (0, 7, b"ping")

            await ws.send_bytes(to_a(UDP(sport=4000, dport=UDP_ECHO) / b"hello"))
            answer = await frame(ws)
            assert (answer[UDP].sport, answer[UDP].dport) == (UDP_ECHO, 4000)
            assert bytes(answer[UDP].payload) == b"echo: hello"

            # The session is listed with its counters while it is open.
            status, sessions = await api.call("GET", f"/net/{nid}/raw", prefix=prefix)
            assert status == 200
            (listed,) = sessions
            assert (listed["src"], listed["dst"], listed["nodeId"]) == (REQ_IP, A_IP, PROV_A)
            assert (listed["framesIn"], listed["framesOut"], listed["drops"]) == (2, 3, {})
            # Not a TCP connection: the gate's TCP list stays empty.
            assert await api.call("GET", f"/net/{nid}/tcp", prefix=prefix) == (200, [])
        assert await api.call("GET", f"/net/{nid}/raw", prefix=prefix) == (200, [])

    serve_test(tmp_path, test)


def test_an_extra_requestor_address_and_ipv6_work_as_src(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await api.create("fd00:6::/64")
        await api.call("POST", f"/net/{nid}/nodes", {"id": PROV_A, "ip": "fd00:6::2"})
        await api.call("POST", f"/net/{nid}/addresses", {"ip": "fd00:6::9"})
        url = raw_url(api, nid, "fd00:6::9", "fd00:6::2")
        src_mac = mac("fd00:6::9", requestor=True)
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            echo = (
                Ether(dst=mac("fd00:6::2"), src=src_mac)
                / IPv6(src="fd00:6::9", dst="fd00:6::2")
                / ICMPv6EchoRequest(id=7, seq=1, data=b"six")
            )
            await ws.send_bytes(bytes(echo))
            reply = await frame(ws)
            assert (reply[IPv6].src, reply[IPv6].dst) == ("fd00:6::2", "fd00:6::9")
            assert reply.dst == ":".join(f"{b:02x}" for b in src_mac)

    serve_test(tmp_path, test)


def test_refusals_401_404_400(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await network(api)
        url = raw_url(api, nid, REQ_IP, A_IP)
        bad = [({}, ""), ({"Authorization": "Bearer nope"}, ""), ({}, "?authToken=x")]
        for headers, query in bad:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await api.session.ws_connect(url + query, headers=headers)
            assert info.value.status == 401
        # ?authToken= opens it, as on every route.
        ws = await api.session.ws_connect(url + f"?authToken={api.keys['a']}")
        await ws.close()

        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await api.session.ws_connect(raw_url(api, "0" * 32, REQ_IP, A_IP), headers=api.auth())
        assert info.value.status == 404

        path = f"/net/{nid}/raw/from"
        for src, dst, words in [
            ("nope", A_IP, "'nope' is not an IP address"),
            (REQ_IP, "1.2.3", "'1.2.3' is not an IP address"),
            (B_IP, A_IP, "source address 192.168.0.3 is not the requestor's"),
            ("10.0.0.1", A_IP, "source address 10.0.0.1 is not the requestor's"),
            (REQ_IP, "192.168.0.9", "destination address not found"),
            (REQ_IP, REQ_IP, "destination address not found"),
        ]:
            status, answer = await api.call("GET", f"{path}/{src}/to/{dst}")
            assert status == 400, (src, dst, answer)
            assert words in answer["message"], answer
        # A good target that is no WebSocket upgrade.
        status, answer = await api.call("GET", f"{path}/{REQ_IP}/to/{A_IP}")
        assert status == 400
        assert "WebSocket" in answer["message"]
        # Another identity's network: yagna's 404 for an identity that owns none.
        status, _ = await api.call("GET", f"{path}/{REQ_IP}/to/{A_IP}", key="b")
        assert status == 404
        assert await api.call("GET", f"/net/{nid}/raw", key=None) == (
            401,
            {"message": "Missing application key"},
        )

    serve_test(tmp_path, test)


def test_bad_frames_are_counted_and_the_session_stays_up(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid = await network(api)
        url = raw_url(api, nid, REQ_IP, A_IP)
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            await ws.send_bytes(b"\x00" * 5)  # truncated
            await ws.send_bytes(b"\x00" * 70_000)  # oversized: over 65535 + 14
            await ws.send_bytes(  # a source that is not the requestor's
                bytes(Ether(dst=A_MAC, src=REQ_MAC) / IP(src=B_IP, dst=A_IP) / ICMP())
            )
            await ws.send_bytes(  # broadcast: this gate reaches one node
                bytes(Ether(src=REQ_MAC) / IP(src=REQ_IP, dst="192.168.0.255") / ICMP())
            )
            await ws.send_bytes(  # the other node: not this session's
                bytes(Ether(src=REQ_MAC) / IP(src=REQ_IP, dst=B_IP) / ICMP())
            )
            await ws.send_bytes(bytes(Ether(src=REQ_MAC, type=0x88B5) / b"local"))
            await ws.send_str("text is not a frame")
            # Still up: a ping goes through.
            await ws.send_bytes(to_a(ICMP(type=8, id=9, seq=1) / b"alive"))
            assert bytes((await frame(ws))[ICMP].payload) == b"alive"
            _, (listed,) = await api.call("GET", f"/net/{nid}/raw")
            assert listed["drops"] == {
                "truncated": 1,
                "oversized": 1,
                "spoofed_source": 1,
                "not_to_destination": 1,
                "unknown_destination": 1,
                "unsupported_ethertype": 1,
                "text": 1,
            }
            assert listed["framesIn"] == 1

            # A message over the gate's limit closes the WebSocket (1009), nothing else.
            await ws.send_bytes(b"\x00" * (MAX_RAW_MESSAGE + 1))
            async with asyncio.timeout(10):
                msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        # The server is fine: a new session works.
        async with api.session.ws_connect(url, headers=api.auth()) as ws:
            await ws.send_bytes(to_a(ICMP(type=8, id=9, seq=2) / b"again"))
            assert bytes((await frame(ws))[ICMP].payload) == b"again"

    serve_test(tmp_path, test)


def test_removing_the_node_or_network_ends_the_session(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid, auth = await network(api), api.auth()
        async with api.session.ws_connect(raw_url(api, nid, REQ_IP, B_IP), headers=auth) as ws:
            assert (await api.call("DELETE", f"/net/{nid}/nodes/{PROV_B}"))[0] == 200
            async with asyncio.timeout(10):
                msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (ws.close_code, msg.extra) == (1001, "node removed")
        async with api.session.ws_connect(raw_url(api, nid, REQ_IP, A_IP), headers=auth) as ws:
            assert (await api.call("DELETE", f"/net/{nid}"))[0] == 200
            async with asyncio.timeout(10):
                msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (ws.close_code, msg.extra) == (1001, "network removed")

    serve_test(tmp_path, test)


def test_while_open_the_nodes_packets_go_to_the_session_not_the_stack(tmp_path: Path) -> None:
    async def test(api: Api) -> None:
        nid, auth = await network(api), api.auth()
        requestor = api.backend.requestor(nid)
        async with api.session.ws_connect(raw_url(api, nid, REQ_IP, A_IP), headers=auth) as ws:
            # A ping from the requestor's own stack: the reply is the session's.
            with pytest.raises(TimeoutError):
                await requestor.ping(A_IP, timeout=0.5)
            reply = await frame(ws)
            assert reply[ICMP].type == 0
        # Closed: the stack hears the node again.
        assert await requestor.ping(A_IP, timeout=5) > 0

    serve_test(tmp_path, test)


# -- over real daemons, to a VM frame endpoint --------------------------------------------


@pytest.mark.skipif(
    not hasattr(UdpTransport, "attach_vm"), reason="no native attachments in this build"
)
def test_frames_reach_a_vm_attachment_on_another_daemon_and_back(tmp_path: Path) -> None:
    with Nodes(tmp_path) as nodes:
        requestor = nodes.start("requestor")
        provider = nodes.start("provider")
        (net_id,), (deploy,) = make_deploy(requestor, [provider], ["192.168.181.0/24"])
        entry = deploy["net"][0]
        node_ip, req_ip = entry["nodeIp"], entry["gateway"]
        path = tmp_path / "deploy.json"
        path.write_text(json.dumps(deploy))
        attached = cli(
            "attach", "--vm-endpoint", "--deploy", str(path), "--json", env=provider.env()
        )
        assert attached.returncode == 0, attached.stderr
        att = json.loads(attached.stdout)
        port = int(att["endpoint"].rsplit(":", 1)[1])
        guest, req_mac = mac(node_ip), mac(req_ip, requestor=True)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as vm:
            vm.bind(("127.0.0.1", 0))
            vm.settimeout(15)
            # The guest speaks first (its ARP for the gateway), so the endpoint knows it.
            vm.sendto(
                bytes(
                    Ether(dst="ff:ff:ff:ff:ff:ff", src=guest)
                    / ARP(op=1, hwsrc=guest, psrc=node_ip, pdst=req_ip)
                ),
                ("127.0.0.1", port),
            )
            assert Ether(vm.recv(65536))[ARP].op == 2

            async def main() -> None:
                async with Client(requestor.api, requestor.key) as client:
                    ws = await client.connect_raw(net_id, req_ip, node_ip)
                    try:
                        to_guest = (
                            Ether(dst=guest, src=req_mac)
                            / IP(src=req_ip, dst=node_ip)
                            / UDP(sport=4000, dport=9)
                            / b"to the guest"
                        )
                        got = None
                        for _ in range(20):  # the first frames may wait for the tunnel
                            await ws.send_bytes(bytes(to_guest))
                            try:
                                data = await asyncio.to_thread(vm.recv, 65536)
                            except TimeoutError:
                                continue
                            got = Ether(data)
                            break
                        assert got is not None, "no frame reached the VM endpoint"
                        assert (got.dst, got.src) == (
                            ":".join(f"{b:02x}" for b in guest),
                            ":".join(f"{b:02x}" for b in req_mac),
                        )
                        assert bytes(got[UDP].payload) == b"to the guest"

                        from_guest = (
                            Ether(dst=req_mac, src=guest)
                            / IP(src=node_ip, dst=req_ip)
                            / UDP(sport=9, dport=4000)
                            / b"from the guest"
                        )
                        vm.sendto(bytes(from_guest), ("127.0.0.1", port))
                        back = await frame(ws)
                        assert (back[IP].src, back[IP].dst) == (node_ip, req_ip)
                        assert bytes(back[UDP].payload) == b"from the guest"
                    finally:
                        await ws.close()

            asyncio.run(main())
        assert cli("detach", att["id"], env=provider.env()).returncode == 0
