"""A node of the demo: the node daemon in a process of its own, and what the demo asks it.

``python -m golem_vpn.demo.node --data-dir DIR [--relay HOST:PORT]`` runs
:func:`golem_vpn.node.daemon.run`, the code of ``golem-vpn daemon``: the identity in its data
dir, the encrypted UDP transport and the Net API with the attachment API, all on 127.0.0.1 at
free ports. The demo drives it as anyone would, over HTTP (the Net API with the SDK,
``/golem-vpn/v1/attachments`` with :class:`~golem_vpn.exeunit.AttachClient`). Through JSON
lines on stdin and stdout (:func:`golem_vpn.demo.payload.serve_commands`; the first line out is
``{"ready": {...}}`` with the daemon's addresses) it also asks what only this process knows, and
runs the payload of a userspace attachment, whose stack lives here:

- ``paths`` ``{"peers": [NODE_ID, ...]}``: each peer's path (``direct``, ``relayed`` or
  ``down``) and the UDP address the tunnel sends to.
- ``stack`` ``{"network": ID}``: the counters of this node's userspace stack in a network (the
  requestor's, behind its gate).
- ``payload`` ``{"attachment": ID, "network": ID, "name": NAME}``: starts the demo's payload
  (:class:`~golem_vpn.demo.payload.Payload`) on a userspace attachment's interface
  (:meth:`golem_vpn.exeunit.ExeUnit.interface`), the path a Python ExeUnit embedding the
  library takes; then ``serve``, ``fetch``, ``ping``, ``send`` and ``received`` run on it.

It stops (detaching everything, as the daemon does) on SIGTERM or SIGINT, or when stdin closes,
so it never outlives the demo. Part of the demo (:mod:`golem_vpn.demo`), not of the API.
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
from typing import TYPE_CHECKING, Any

from golem_vpn.demo.payload import Handler, Payload, UserspaceSockets, serve_commands

if TYPE_CHECKING:
    from golem_vpn._golem_vpn import StackStats
    from golem_vpn.node.daemon import DaemonBackend

__all__ = ["Node"]


class Node:
    """The commands of a demo node (see the module docs), on its running daemon's backend."""

    def __init__(self, backend: DaemonBackend) -> None:
        self.backend = backend
        self.payload: Payload | None = None

    def handlers(self) -> dict[str, Handler]:
        """The commands by name, for :func:`~golem_vpn.demo.payload.serve_commands`."""
        handlers: dict[str, Handler] = {
            "paths": self.paths,
            "stack": self.stack,
            "payload": self.start_payload,
        }
        for name in ("serve", "fetch", "ping", "send", "received"):
            handlers[name] = self._on_payload(name)
        return handlers

    async def paths(self, args: Mapping[str, Any]) -> dict[str, dict[str, object]]:
        """Each peer's path as this node's transport sees it now."""
        native = self.backend.transport.native
        out: dict[str, dict[str, object]] = {}
        for peer in args["peers"]:
            up = native.is_up(peer)
            relayed = native.is_relayed(peer)
            address = native.peer_address(peer)
            out[peer] = {
                "path": "relayed" if up and relayed else "direct" if up else "down",
                "address": None if relayed or address is None else f"{address[0]}:{address[1]}",
            }
        return out

    async def stack(self, args: Mapping[str, Any]) -> StackStats:
        """The counters of this node's userspace stack in ``args["network"]``."""
        return self.backend.interface(str(args["network"])).stack.stats()

    async def start_payload(self, args: Mapping[str, Any]) -> dict[str, object]:
        """Runs the payload on a userspace attachment's interface in one network."""
        attachment, network = str(args["attachment"]), str(args["network"])
        interface = self.backend.exeunit.interface(attachment, network)
        record = self.backend.exeunit.attachment(attachment)
        ip = next(n.node_ip for n in record.networks if n.id == network)
        self.payload = Payload(UserspaceSockets(interface), str(args["name"]), ip)
        return {"ip": ip, "sockets": "userspace"}

    def _on_payload(self, name: str) -> Handler:
        async def call(args: dict[str, Any]) -> object:
            if self.payload is None:
                raise RuntimeError("no payload runs on this node (send 'payload' first)")
            return await self.payload.handlers()[name](args)

        return call

    async def close(self) -> None:
        """Stops the payload's servers."""
        if self.payload is not None:
            await self.payload.close()


async def _main(args: argparse.Namespace) -> int:
    from golem_vpn import hostport
    from golem_vpn.node import daemon

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    relay = [hostport.parse_hostport(args.relay, "--relay")] if args.relay else None
    ready: asyncio.Future[dict[str, object]] = loop.create_future()
    nodes: list[Node] = []
    running = loop.create_task(
        daemon.run(
            args.data_dir,
            api=("127.0.0.1", 0),
            listen=("127.0.0.1", 0),
            relay=relay,
            hole_punching=not args.no_hole_punching,
            ready=lambda info: ready.set_result({**info, "pid": os.getpid()}),
            stop=stop,
            started=lambda backend: nodes.append(Node(backend)),
        )
    )
    first: list[asyncio.Future[Any]] = [ready, running]
    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        await running  # it failed before serving: its error ends this process
        return 1
    commands = loop.create_task(serve_commands(nodes[0].handlers(), ready=ready.result()))
    stopping = loop.create_task(stop.wait())
    await asyncio.wait([commands, running, stopping], return_when=asyncio.FIRST_COMPLETED)
    commands.cancel()
    stopping.cancel()
    await nodes[0].close()
    stop.set()
    await running
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs a demo node (see the module docs); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m golem_vpn.demo.node")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--relay", metavar="HOST:PORT")
    parser.add_argument("--no-hole-punching", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return asyncio.run(_main(args))
        except Exception as exc:  # reported on stderr, which the demo shows on failure
            print(f"demo node: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
