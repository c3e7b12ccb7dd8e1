"""A requestor daemon and provider daemons as separate processes on one machine.

The requestor is `golem-vpn daemon` (its own process, Net API on a loopback port, UDP on
another); each provider is a process running a daemon backend the way an ExeUnit would:
it joins from the DEPLOY config and runs a payload (an echo server) on its userspace stack.
A relay process lets them find each other. The requestor's app then reaches every
provider's payload through the Net API's WebSocket gate, and the providers reach each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import aiohttp

PROVIDER = textwrap.dedent(
    """
    import asyncio, json, sys
    import golem_vpn
    from golem_vpn import Identity
    from golem_vpn.model import parse_deploy_net
    from golem_vpn.node.daemon import DaemonBackend
    from golem_vpn.node.transport import UdpTransport

    async def main():
        relay = ("127.0.0.1", int(sys.argv[1]))
        backend = DaemonBackend(UdpTransport(Identity.generate(), relay=relay))
        print(json.dumps({"nodeId": backend.node_id}), flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        order = json.loads(line)
        (net,) = parse_deploy_net(order["deploy"])
        iface = backend.join_deploy(net, order["requestor"])

        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        await golem_vpn.start_server(echo, iface, 7)
        result = {"ready": True}
        if order.get("peer"):
            # Talk to the other provider's payload directly, provider to provider.
            reader, writer = await golem_vpn.open_connection(iface, order["peer"], 7, timeout=15)
            writer.write(b"provider to provider")
            await writer.drain()
            result["peer_echo"] = (await reader.readexactly(20)).decode()
            writer.close()
        print(json.dumps(result), flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def _spawn(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE if stdin else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_json(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return json.loads(line)


def test_requestor_and_provider_daemons_form_a_network(tmp_path: Path) -> None:
    procs: list[subprocess.Popen[str]] = []
    try:
        relay = _spawn("-m", "golem_vpn", "relay", "--listen", "127.0.0.1:0")
        procs.append(relay)
        assert relay.stdout is not None
        relay_port = relay.stdout.readline().strip().rsplit(":", 1)[1]
        key = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "golem_vpn",
                    "app-key",
                    "create",
                    "t",
                    "--json",
                    "--data-dir",
                    str(tmp_path),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout
        )["key"]
        daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "golem_vpn",
                "daemon",
                "--data-dir",
                str(tmp_path),
                "--api",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--relay",
                f"127.0.0.1:{relay_port}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(daemon)
        assert daemon.stdout is not None
        ready = daemon.stdout.readline()
        requestor = ready.split()[2].rstrip(":")
        api = ready.split("Net API ")[1].split(",")[0] + "/net-api/v1"
        providers = [_spawn("-c", PROVIDER, relay_port, stdin=True) for _ in range(2)]
        procs += providers
        ids = [str(_read_json(p)["nodeId"]) for p in providers]

        async def drive() -> None:
            auth = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(headers=auth) as http:
                async with http.post(f"{api}/net", json={"ip": "10.66.0.0/24"}) as r:
                    net = await r.json()
                nodes = {"10.66.0.1": requestor}
                for i, node_id in enumerate(ids):
                    ip = f"10.66.0.{i + 2}"
                    async with http.post(
                        f"{api}/net/{net['id']}/nodes", json={"id": node_id, "ip": ip}
                    ) as r:
                        assert r.status == 200
                    nodes[ip] = node_id
                for i, proc in enumerate(providers):
                    deploy = {
                        "net": [
                            {
                                "id": net["id"],
                                "ip": "10.66.0.0",
                                "mask": net["mask"],
                                "gateway": net["gateway"],
                                "nodeIp": f"10.66.0.{i + 2}",
                                "nodes": nodes,
                            }
                        ]
                    }
                    order = {
                        "deploy": deploy,
                        "requestor": requestor,
                        "peer": "10.66.0.2" if i == 1 else None,
                    }
                    assert proc.stdin is not None
                    proc.stdin.write(json.dumps(order) + "\n")
                    proc.stdin.flush()
                loop = asyncio.get_running_loop()
                first = await loop.run_in_executor(None, _read_json, providers[0])
                second = await loop.run_in_executor(None, _read_json, providers[1])
                assert first == {"ready": True}
                assert second == {"ready": True, "peer_echo": "provider to provider"}
                # The requestor's app reaches each provider's payload through the gate.
                for i in range(2):
                    url = f"{api}/net/{net['id']}/tcp/10.66.0.{i + 2}/7"
                    blob = os.urandom(256 * 1024)
                    async with http.ws_connect(url) as ws:
                        await ws.send_bytes(blob)
                        got = b""
                        while len(got) < len(blob):
                            got += (await asyncio.wait_for(ws.receive(), 20)).data
                    assert got == blob

        asyncio.run(asyncio.wait_for(drive(), 120))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
