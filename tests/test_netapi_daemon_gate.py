"""The Net API and its WebSocket gate over the real encrypted UDP transport.

The requestor is a :class:`~golem_vpn.node.daemon.DaemonBackend` behind the real Net API
server; the provider is another daemon backend in this process, on its own UDP socket,
joined from the DEPLOY config built from what the API returned. They find each other
through a relay on loopback. Payloads (an echo server and an HTTP server) run on the
provider's userspace stack; a WebSocket client reaches them through the requestor's gate.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

import golem_vpn
from golem_vpn import Identity
from golem_vpn.model import parse_deploy_net
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.server import serve
from golem_vpn.netapi.store import Store
from golem_vpn.node.daemon import DaemonBackend
from golem_vpn.node.relay import RelayService
from golem_vpn.node.transport import UdpTransport


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    body = b"hello from the provider: " + request.split(b" ")[1]
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_gate_over_the_encrypted_transport(tmp_path: Path) -> None:
    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            requestor = DaemonBackend(UdpTransport(Identity.generate(), relay=relay.local_addr))
            provider = DaemonBackend(UdpTransport(Identity.generate(), relay=relay.local_addr))
            store = Store(tmp_path / "netapi.sqlite")
            key = AppKeys(store).create("test", requestor.node_id)
            runner = await serve(requestor, store, "127.0.0.1", 0, connect_timeout=1.0)
            host, port = runner.addresses[0][:2]
            base = f"http://{host}:{port}/net-api/v1"
            auth = {"Authorization": f"Bearer {key}"}
            try:
                async with aiohttp.ClientSession(headers=auth) as http:
                    async with http.post(f"{base}/net", json={"ip": "10.44.0.0/24"}) as r:
                        assert r.status == 200
                        net = await r.json()
                    net_id = net["id"]
                    node = {"id": provider.node_id, "ip": "10.44.0.2"}
                    async with http.post(f"{base}/net/{net_id}/nodes", json=node) as r:
                        assert r.status == 200
                    # The provider's ExeUnit gets DEPLOY with the network's config.
                    deploy = {
                        "id": net_id,
                        "ip": "10.44.0.0",
                        "mask": net["mask"],
                        "gateway": net["gateway"],
                        "nodeIp": "10.44.0.2",
                        "nodes": {"10.44.0.1": requestor.node_id, "10.44.0.2": provider.node_id},
                    }
                    (entry,) = parse_deploy_net({"net": [deploy]})
                    iface = provider.join_deploy(entry, requestor.node_id)
                    echo = await golem_vpn.start_server(_echo, iface, 7)
                    web = await golem_vpn.start_server(_http, iface, 80)

                    # 32 MiB through the gate and back, checksummed at both ends.
                    blob = os.urandom(32 << 20)
                    async with http.ws_connect(f"{base}/net/{net_id}/tcp/10.44.0.2/7") as ws:

                        async def send() -> None:
                            for i in range(0, len(blob), 1 << 16):
                                await ws.send_bytes(blob[i : i + (1 << 16)])

                        sender = asyncio.create_task(send())
                        digest, got = hashlib.sha256(), 0
                        async with asyncio.timeout(120):
                            while got < len(blob):
                                msg = await ws.receive()
                                assert msg.type == aiohttp.WSMsgType.BINARY, msg
                                digest.update(msg.data)
                                got += len(msg.data)
                        await sender
                    assert digest.digest() == hashlib.sha256(blob).digest()

                    # A page from the provider's HTTP server, through the gate.
                    async with http.ws_connect(f"{base}/net/{net_id}/tcp/10.44.0.2/80") as ws:
                        await ws.send_bytes(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
                        page = b""
                        async for msg in ws:
                            page += msg.data
                    assert page.startswith(b"HTTP/1.1 200 OK")
                    assert page.endswith(b"hello from the provider: /index.html")

                    # Nobody holds 10.44.0.9: a 400 at once, where yagna waits 5 s for a 504.
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    async with http.get(
                        f"{base}/net/{net_id}/tcp/10.44.0.9/7", headers=_UPGRADE
                    ) as r:
                        assert r.status == 400
                        assert "no node holds 10.44.0.9" in (await r.json())["message"]
                    assert loop.time() - start < 0.5
                    # A node whose daemon never answers: 504 after the connect timeout.
                    silent = {"id": Identity.generate().node_id, "ip": "10.44.0.9"}
                    async with http.post(f"{base}/net/{net_id}/nodes", json=silent) as r:
                        assert r.status == 200
                    with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
                        await http.ws_connect(f"{base}/net/{net_id}/tcp/10.44.0.9/7")
                    assert failed.value.status == 504
                    echo.close()
                    web.close()
            finally:
                await runner.cleanup()
                store.close()
                requestor.close()
                provider.close()

    asyncio.run(main())
