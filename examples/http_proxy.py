"""A local HTTP port on the requestor that spreads requests over web servers on providers.

Run as root (it builds a small lab of network namespaces on this machine and removes it
afterwards)::

    sudo python examples/http_proxy.py

As in the Golem VPN concept's example, the requestor serves a local HTTP port and forwards each
request, round robin, to an HTTP server running in a provider's payload, through the Net API's
WebSocket gate (the providers need no public address). What it does:

1. four "machines" (namespaces on one switch, :class:`golem_vpn.lab.Lab`): a hub with a relay
   and the requestor's daemon, and three providers, each with its own daemon;
2. the requestor creates a network (192.168.81.0/24) with the providers; each provider attaches
   a payload namespace by TUN and runs ``python3 -m http.server`` there;
3. the proxy (this file with ``--serve``) runs next to the requestor's daemon and listens on a
   local port;
4. six requests to the local port are answered by the providers in turn; the answers are
   printed.

The proxy part (:func:`serve`) is all a real requestor needs: ``golem_vpn.netapi.Client`` and
the provider addresses.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
from pathlib import Path

from golem_vpn.lab import Lab, in_netns, run
from golem_vpn.netapi.client import Client

WEB_PORT = 80


async def serve(api: str, key: str, network: str, targets: list[str]) -> None:
    """Listens on 127.0.0.1 (a free port, printed) and forwards each HTTP request to the next
    of ``targets`` (``ip:port`` in the network) through the gate."""
    turn = itertools.cycle(targets)
    async with Client(api, key) as client:

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                ip, port = next(turn).rsplit(":", 1)
                up_reader, up_writer = await client.open_connection(network, ip, int(port))
                up_writer.write(head)  # HTTP/1.0 from curl -0: the server closes when done
                await up_writer.drain()
                while data := await up_reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                up_writer.close()
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                writer.write(f"HTTP/1.0 502 Bad Gateway\r\n\r\n{exc}\n".encode())
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()


def main() -> int:
    if os.geteuid() != 0 or shutil.which("curl") is None:
        print("run as root, with curl installed", file=sys.stderr)
        return 2
    with Lab("gvh", "198.18.81.0/24") as lab:
        hub = lab.host("hub")
        relay = lab.relay(hub)
        requestor = lab.daemon(hub, relay=relay, name="requestor")
        providers = [lab.daemon(lab.host(f"p{i}"), relay=relay) for i in (1, 2, 3)]
        network, deploys = requestor.create_network("192.168.81.0/24", providers)
        targets = []
        for i, (provider, deploy) in enumerate(zip(providers, deploys, strict=True), 1):
            payload = f"gvh-pay{i}"
            provider.attach_tun(deploy, payload)
            site = lab.work / f"site{i}"
            site.mkdir()
            (site / "index.html").write_text(f"hello from provider {i} ({provider.node_id})\n")
            lab.popen(
                in_netns(payload, sys.executable, "-m", "http.server", str(WEB_PORT), "-d",
                         str(site)),
                f"web{i}.log",
            )  # fmt: skip
            targets.append(f"{deploy['net'][0]['nodeIp']}:{WEB_PORT}")
        proxy = lab.popen(
            in_netns(hub, sys.executable, str(Path(__file__).resolve()), "--serve",
                     requestor.api, requestor.key, network, *targets),
            "proxy.log",
        )  # fmt: skip
        assert proxy.stdout is not None
        port = proxy.stdout.readline().split()[1]
        print(f"the requestor's proxy listens on 127.0.0.1:{port}; providers: {targets}")
        for _ in range(6):
            url = f"http://127.0.0.1:{port}/"
            curl = ["curl", "-0", "-sf", "--max-time", "20", "--retry", "10",
                    "--retry-all-errors", url]  # fmt: skip
            answer = run(*in_netns(hub, *curl), timeout=120).stdout
            print(f"GET {url} -> {answer.strip()}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        api, key, network, *targets = sys.argv[2:]
        asyncio.run(serve(api, key, network, targets))
    else:
        sys.exit(main())
