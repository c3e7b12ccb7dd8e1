"""A requestor's view end to end, in one process: Net API, SDK, DEPLOY and the gate.

A Net API server runs on a loopback port over an in-process backend (every node's router and
userspace stack live here, linked in memory; the node daemon does the same over encrypted
UDP). The requestor uses the SDK like yapapi: create a network, add a provider, hand the
provider its DEPLOY config, then talk to the provider's payload through the WebSocket gate
with asyncio streams. Run: ``python examples/requestor_sdk.py``.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from golem_vpn.netapi import Client
from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.backend import LocalBackend
from golem_vpn.netapi.server import serve
from golem_vpn.netapi.store import Store
from golem_vpn.sdk import Network

REQUESTOR = "0x" + "1a" * 20
PROVIDER = "0x" + "2b" * 20


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "netapi.sqlite")
        key = AppKeys(store).create("example", REQUESTOR)
        backend = LocalBackend(REQUESTOR)
        runner = await serve(backend, store, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        try:
            async with (
                Client(f"http://{host}:{port}", key) as client,
                Network.create(client, "192.168.0.0/24", owner_id=REQUESTOR) as net,
            ):
                node = await net.add_node(PROVIDER)
                print("DEPLOY for the provider:", net.deploy_args(node))

                # The provider's payload: an echo server on its stack (an ExeUnit's job).
                async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                    while data := await reader.read(65536):
                        writer.write(data.upper())
                        await writer.drain()
                    writer.close()

                server = await backend.provider(net.network_id, PROVIDER).start_server(echo, 7)
                reader, writer = await net.connect(node, 7)  # through the WebSocket gate
                writer.write(b"hello through the gate\n")
                await writer.drain()
                print("payload answered:", (await reader.readline()).decode().strip())
                writer.close()
                server.close()
        finally:
            await runner.cleanup()
            await backend.close()
            store.close()


if __name__ == "__main__":
    asyncio.run(main())
