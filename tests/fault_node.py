"""A node daemon with its payload in its process, for the fault tests (``test_faults.py``).

Run as ``python tests/fault_node.py --data-dir DIR [--api HOST:PORT] [--listen HOST:PORT]
[--relay HOST:PORT] [--no-hole-punching]``, on loopback or under ``ip netns exec``: it runs
:func:`golem_vpn.node.daemon.run` (the code of ``golem-vpn daemon``: identity and database in
the data dir, the encrypted UDP transport, the Net API with the attachment API) and answers
JSON-line commands on stdin/stdout like the demo's nodes (:mod:`golem_vpn.demo.node`, whose
``paths``, ``payload``, ``send``, ``received``, ``ping`` it inherits). It adds what the fault
tests need from inside the node's namespace, each over the daemon's own HTTP APIs as a
requestor's app or a provider's runtime would call them:

- ``network`` ``{"cidr", "nodes": [NODE_ID, ...]}``: creates a network with the SDK and adds
  the nodes; answers ``{"id", "ips": {NODE_ID: IP}, "deploys": {NODE_ID: DEPLOY}}``.
- ``add_node`` ``{"network", "node"}``: adds a node to a network made by ``network``;
  answers ``{"ip", "deploy"}``.
- ``attach`` ``{"deploy", "name"}``: a userspace attachment of the DEPLOY through the
  attachment API, then the demo's payload on it, serving its SHA-256 sink (port 9000) and
  HTTP (port 80).
- ``stats``: the node transport's counters (:meth:`golem_vpn.NodeTransport.stats`).
- ``send_to`` ``{"host", "bytes", "timeout"}``: like ``send``, but a failure is an answer
  (``{"error": ...}``), not an exception, so a test can wait for a transfer that must fail.

A fresh app key is made in the data dir at every start (the first line out carries it:
``{"ready": {"nodeId", "api", "udp", "key", "pid", ...}}``). Not a test module.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from golem_vpn import hostport
from golem_vpn.demo.node import Node
from golem_vpn.demo.payload import Handler, serve_commands
from golem_vpn.node.daemon import DaemonBackend

SINK_PORT, HTTP_PORT = 9000, 80


class FaultNode(Node):
    """The demo node's commands plus the fault tests' (see the module docs)."""

    def __init__(self, backend: DaemonBackend, key: str) -> None:
        super().__init__(backend)
        self.key = key
        self.api = ""
        self.networks: dict[str, Any] = {}  # id -> golem_vpn.sdk.Network

    def handlers(self) -> dict[str, Handler]:
        handlers = super().handlers()
        handlers.update(
            network=self.network,
            add_node=self.add_node,
            attach=self.attach,
            send_to=self.send_to,
            stats=self.stats,
        )
        return handlers

    async def network(self, args: Mapping[str, Any]) -> dict[str, Any]:
        from golem_vpn.netapi.client import Client
        from golem_vpn.sdk import Network

        client = Client(self.api, self.key)
        network = await Network.create(client, str(args["cidr"]))
        ips = {}
        for node_id in args["nodes"]:
            ips[node_id] = str((await network.add_node(node_id)).ip)
        deploys = {node_id: network.deploy_args(node_id) for node_id in args["nodes"]}
        self.networks[network.network_id] = network
        return {"id": network.network_id, "ips": ips, "deploys": deploys}

    async def add_node(self, args: Mapping[str, Any]) -> dict[str, Any]:
        network = self.networks[str(args["network"])]
        node_id = str(args["node"])
        ip = str((await network.add_node(node_id)).ip)
        return {"ip": ip, "deploy": network.deploy_args(node_id)}

    async def attach(self, args: Mapping[str, Any]) -> dict[str, Any]:
        from golem_vpn.exeunit.client import AttachClient

        deploy = args["deploy"]
        async with AttachClient(self.api, self.key) as client:
            attached = await client.attach(deploy, mode="userspace")
        network = deploy["net"][0]["id"]
        started = await self.start_payload(
            {"attachment": attached.id, "network": network, "name": args["name"]}
        )
        assert self.payload is not None
        await self.payload.serve({"http": HTTP_PORT, "sink": SINK_PORT})
        return {"attachment": attached.id, **started}

    async def stats(self, _: Mapping[str, Any]) -> Any:
        """The transport's counters (datagrams, relayed, tunnel bytes and drops)."""
        return self.backend.transport.native.stats()

    async def send_to(self, args: Mapping[str, Any]) -> dict[str, Any]:
        assert self.payload is not None
        try:
            return await asyncio.wait_for(
                self.payload.send({**args, "port": SINK_PORT}), float(args["timeout"])
            )
        except (OSError, TimeoutError, ConnectionError, EOFError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}


async def _main(args: argparse.Namespace) -> int:
    from golem_vpn.netapi.appkeys import AppKeys
    from golem_vpn.netapi.store import Store
    from golem_vpn.node import daemon, identity

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ident, _ = identity.load_or_create(args.data_dir)
    with Store.in_data_dir(args.data_dir) as store:
        key = AppKeys(store).create(f"fault-{os.getpid()}", ident.node_id)
    relay = [hostport.parse_hostport(args.relay, "--relay")] if args.relay else None
    ready: asyncio.Future[dict[str, object]] = loop.create_future()
    nodes: list[FaultNode] = []
    running = loop.create_task(
        daemon.run(
            args.data_dir,
            api=hostport.parse_hostport(args.api, "--api"),
            listen=hostport.parse_hostport(args.listen, "--listen"),
            relay=relay,
            hole_punching=not args.no_hole_punching,
            ready=lambda info: ready.set_result({**info, "pid": os.getpid(), "key": key}),
            stop=stop,
            started=lambda backend: nodes.append(FaultNode(backend, key)),
        )
    )
    await asyncio.wait([ready, running], return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await running  # it failed before serving: its error ends this process
        return 1
    nodes[0].api = str(ready.result()["api"])
    commands = loop.create_task(serve_commands(nodes[0].handlers(), ready=ready.result()))
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([commands, running, stopping], return_when=asyncio.FIRST_COMPLETED)
    commands.cancel()
    stopping.cancel()
    await nodes[0].close()
    stop.set()
    await running
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="fault_node.py")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--api", default="127.0.0.1:0")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--relay", metavar="HOST:PORT")
    parser.add_argument("--no-hole-punching", action="store_true")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(_main(args))
        except Exception as exc:
            print(f"fault node: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
