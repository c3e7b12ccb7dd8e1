"""Real daemons for the provider-side tests: a relay and node daemons as separate processes.

:class:`Nodes` starts ``golem-vpn relay`` and any number of ``golem-vpn daemon`` processes on
127.0.0.1 (each with its own data dir and app key, every daemon registered at the relay), and
stops them by their PIDs. :func:`make_deploy` has the first daemon, as requestor, create a
network through its Net API and add provider nodes; it returns the DEPLOY each provider gets.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from golem_vpn.netapi.client import Client
from golem_vpn.node.transport import UdpTransport
from golem_vpn.sdk import Network

__all__ = ["NATIVE_ATTACHMENTS", "Daemon", "Nodes", "cli", "make_deploy", "needs_root"]


#: Skip markers of the TUN tests: Linux, a build with native attachments ...
NATIVE_ATTACHMENTS = [
    pytest.mark.skipif(sys.platform != "linux", reason="TUN devices and namespaces are Linux's"),
    pytest.mark.skipif(
        not hasattr(UdpTransport, "attach_tun"), reason="no native attachments in this build"
    ),
]
#: ... and root with iproute2.
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root (namespaces, TUN devices) and iproute2",
)


@dataclass
class Daemon:
    """One running ``golem-vpn daemon``."""

    proc: subprocess.Popen[str]
    node_id: str
    api: str
    key: str
    data_dir: Path

    def env(self) -> dict[str, str]:
        """An environment that points the CLI at this daemon (``YAGNA_API_URL``/``APPKEY``)."""
        env = {k: v for k, v in os.environ.items() if k not in ("YAGNA_NET_URL",)}
        env.update(YAGNA_API_URL=self.api, YAGNA_APPKEY=self.key)
        return env


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m golem_vpn ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "golem_vpn", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


@dataclass
class Nodes:
    """A relay and node daemons on 127.0.0.1; use as a context manager."""

    base: Path
    daemons: list[Daemon] = field(default_factory=list)
    relay: subprocess.Popen[str] | None = None
    relay_addr: str = ""

    def __enter__(self) -> Nodes:
        self.relay = subprocess.Popen(
            [sys.executable, "-m", "golem_vpn", "relay", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.relay.stdout is not None
        line = self.relay.stdout.readline()
        assert line.startswith("relay listening on "), line
        self.relay_addr = line.split()[-1]
        return self

    def start(
        self, name: str, *, wrapper: tuple[str, ...] = (), args: tuple[str, ...] = ()
    ) -> Daemon:
        """Starts a daemon (identity and app key in a data dir of its own); ``wrapper`` is
        a command to run it under (e.g. ``setpriv`` dropping capabilities), ``args`` more
        flags for it."""
        data_dir = self.base / name
        created = cli("app-key", "create", "test", "--json", "--data-dir", str(data_dir))
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)["key"]
        with (data_dir / "daemon.log").open("w") as log:
            proc = self._spawn(data_dir, log, wrapper, args)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("golem-vpn daemon 0x"):
            proc.kill()
            proc.communicate()
            raise AssertionError((line, (data_dir / "daemon.log").read_text()))
        node_id = line.split()[2].rstrip(":")
        api = line.split("Net API ")[1].split(",")[0]
        daemon = Daemon(proc, node_id, api, key, data_dir)
        self.daemons.append(daemon)
        return daemon

    def _spawn(
        self, data_dir: Path, log: Any, wrapper: tuple[str, ...], args: tuple[str, ...]
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [
                *wrapper,
                sys.executable,
                "-m",
                "golem_vpn",
                "daemon",
                "--data-dir",
                str(data_dir),
                "--api",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--relay",
                self.relay_addr,
                *args,
            ],
            stdout=subprocess.PIPE,
            # A file, not a pipe nobody reads: a chatty daemon must never block on it.
            stderr=log,
            text=True,
        )

    def __exit__(self, *exc: object) -> None:
        errors = []
        for daemon in self.daemons:
            daemon.proc.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.proc.communicate(timeout=20)
                if daemon.proc.returncode != 0:
                    errors.append((daemon.data_dir / "daemon.log").read_text()[-4000:])
            except subprocess.TimeoutExpired:
                daemon.proc.kill()
                daemon.proc.communicate()
                errors.append(f"daemon {daemon.node_id} did not stop")
        if self.relay is not None:
            self.relay.send_signal(signal.SIGINT)
            try:
                self.relay.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.communicate()
        if errors and exc[0] is None:
            raise AssertionError(f"daemons did not stop cleanly: {errors}")


async def _make_deploy(
    requestor: Daemon, providers: list[Daemon], cidrs: list[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    async with Client(requestor.api, requestor.key) as client:
        nets = [await Network.create(client, cidr) for cidr in cidrs]
        deploys: list[dict[str, Any]] = [{"net": [], "hosts": {}} for _ in providers]
        for net in nets:
            nodes = [await net.add_node(p.node_id) for p in providers]
            for index, node in enumerate(nodes):
                deploys[index]["net"] += net.deploy_args(node)["net"]
        return [n.network_id for n in nets], deploys


def make_deploy(
    requestor: Daemon, providers: list[Daemon], cidrs: list[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Networks on ``requestor`` (one per CIDR) with every provider added; returns the
    network ids and each provider's DEPLOY arguments (all networks in one ``net`` list)."""
    return asyncio.run(_make_deploy(requestor, providers, cidrs))
