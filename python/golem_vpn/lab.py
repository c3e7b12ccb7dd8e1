"""A VPN lab on one Linux machine: "hosts" as network namespaces, golem-vpn daemons on them.

Examples, the end-to-end tests and the benchmarks need the same thing: several machines, each
with its own node daemon, joined by a network, plus payload namespaces attached to the VPN.
:class:`Lab` builds that out of network namespaces on one switch (a bridge in a namespace of
its own, underlay ``198.18.0.0/15`` addresses), starts relays and daemons as separate processes
and removes every namespace and process it made when it closes, even after a failure. Needs
root (``ip netns``, ``nsenter``).

Daemons enter their host's network namespace with ``nsenter --net``, not ``ip netns exec``:
the latter also gives a process a mount namespace of its own, and the payload namespaces a
daemon makes (``golem-vpn attach --netns``) would then be visible only inside it.

Example::

    with Lab("gvx") as lab:
        relay = lab.relay(lab.host("r"))
        req = lab.daemon(lab.host("r"), relay=relay)
        prov = lab.daemon(lab.host("p1"), relay=relay)
        print(req.cli("net", "list").stdout)
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Daemon", "Lab", "LabError", "in_netns", "netns_list", "run"]

GOLEM_VPN = [sys.executable, "-m", "golem_vpn"]
NETNS_ETC = Path("/etc/netns")


_CREATE_NETWORK = """
import asyncio, json, sys
from golem_vpn.netapi.client import Client
from golem_vpn.sdk import Network

async def main():
    api, key, cidr, *providers = sys.argv[1:]
    async with Client(api, key) as client:
        net = await Network.create(client, cidr)
        nodes = [await net.add_node(p) for p in providers]
        deploys = [net.deploy_args(n) for n in nodes]
        print(json.dumps({"id": net.network_id, "deploys": deploys}))

asyncio.run(main())
"""


class LabError(RuntimeError):
    """A command of the lab failed (the message has its stderr)."""


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs a command; raises :class:`LabError` with its stderr if it fails and ``check``."""
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def in_netns(netns: str, *cmd: str) -> list[str]:
    """``cmd`` run in a named network namespace (``ip netns exec``)."""
    return ["ip", "netns", "exec", netns, *cmd]


def netns_list() -> set[str]:
    """The named network namespaces on this machine."""
    out = run("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@dataclass
class Daemon:
    """A node daemon of the lab."""

    lab: Lab
    host: str
    node_id: str
    api: str
    key: str
    udp: str

    def env(self) -> list[str]:
        """``env YAGNA_API_URL=... YAGNA_APPKEY=...``: the CLI's way to this daemon."""
        return ["env", f"YAGNA_API_URL={self.api}", f"YAGNA_APPKEY={self.key}"]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``golem-vpn ARGS`` on the daemon's host, pointed at it."""
        return run(*in_netns(self.host, *self.env(), *GOLEM_VPN, *args), check=check)

    def python(self, script: str, *args: str) -> str:
        """A Python snippet on the daemon's host, with its API URL and key first in argv."""
        cmd = in_netns(self.host, sys.executable, "-c", script, self.api, self.key, *args)
        return run(*cmd).stdout

    def create_network(self, cidr: str, providers: list[Daemon]) -> tuple[str, list[Any]]:
        """Makes a network on this (requestor's) daemon with ``providers`` added; returns its
        id and each provider's DEPLOY arguments (yagna's ``{"net": [...]}``)."""
        out = self.python(_CREATE_NETWORK, cidr, *(p.node_id for p in providers))
        made = json.loads(out)
        return str(made["id"]), list(made["deploys"])

    def attach_tun(self, deploy: dict[str, object], netns: str) -> dict[str, object]:
        """``golem-vpn attach --tun --netns NETNS`` with ``deploy``; returns the attachment.

        The lab deletes the namespace when it closes if the daemon has not by then.
        """
        path = self.lab.work / f"deploy-{netns}.json"
        path.write_text(json.dumps(deploy))
        out = self.cli("attach", "--tun", "--netns", netns, "--deploy", str(path), "--json")
        self.lab.namespaces.append(netns)
        attachment: dict[str, object] = json.loads(out.stdout)
        return attachment


class Lab:
    """Hosts, relays and daemons on this machine; see the module docs.

    Args:
        prefix: Names of namespaces and devices start with it (keep it short: interface names
            have 15 characters).
        subnet: The underlay (within ``198.18.0.0/15``).
    """

    def __init__(self, prefix: str = "gvl", subnet: str = "198.18.90.0/24") -> None:
        self.prefix = prefix
        self._addresses = IPv4Network(subnet).hosts()
        self._prefixlen = IPv4Network(subnet).prefixlen
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{prefix}-")
        self.work = Path(self._tmp.name)
        self.procs: list[subprocess.Popen[str]] = []
        self.namespaces: list[str] = []
        self.addresses: dict[str, str] = {}
        self._switch: str | None = None

    def __enter__(self) -> Lab:
        for name in netns_list():  # left by a run that was killed
            if name.startswith(f"{self.prefix}-"):
                run("ip", "netns", "delete", name, check=False)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def netns(self, name: str) -> str:
        """Makes a namespace (loopback up) that the lab deletes when it closes."""
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def host(self, name: str) -> str:
        """A "machine": a namespace ``PREFIX-NAME`` on the switch, with the next underlay
        address on its ``eth0``. Returns the namespace's name."""
        if self._switch is None:
            self._switch = self.netns(f"{self.prefix}-sw")
            run("ip", "-n", self._switch, "link", "add", "br0", "type", "bridge")
            run("ip", "-n", self._switch, "link", "set", "br0", "up")
        netns = self.netns(f"{self.prefix}-{name}")
        port = f"{self.prefix}-s{len(self.addresses)}"
        run("ip", "link", "add", "eth0", "netns", netns, "type", "veth", "peer", port, "netns",
            self._switch)  # fmt: skip
        run("ip", "-n", self._switch, "link", "set", port, "master", "br0", "up")
        address = str(next(self._addresses))
        run("ip", "-n", netns, "addr", "add", f"{address}/{self._prefixlen}", "dev", "eth0")
        run("ip", "-n", netns, "link", "set", "eth0", "up")
        self.addresses[netns] = address
        return netns

    def popen(
        self, cmd: list[str], log: str, *, stdin: int | None = None, capture_stdout: bool = True
    ) -> subprocess.Popen[str]:
        """Starts a process the lab stops when it closes; stderr goes to ``work/LOG``.

        Its stdout is a pipe for the caller to read, or (``capture_stdout=False``, for programs
        that log to stdout and would block on a full pipe nobody reads) goes to the log too.
        """
        with (self.work / log).open("w") as err:
            out = subprocess.PIPE if capture_stdout else err
            proc = subprocess.Popen(cmd, stdin=stdin, stdout=out, stderr=err, text=True)
        self.procs.append(proc)
        return proc

    def _on_host(self, host: str, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{host}", *cmd]

    def relay(self, host: str, *, name: str | None = None) -> str:
        """Runs a relay on ``host`` (its log ``relay-NAME.log``, NAME the host's unless
        given); returns its ``HOST:PORT``."""
        log = f"relay-{name or host}.log"
        proc = self.popen(
            self._on_host(host, *GOLEM_VPN, "relay", "--listen", f"{self.addresses[host]}:0"), log
        )
        line = self._first_line(proc, log)
        if not line.startswith("relay listening on "):
            raise LabError(f"the relay on {host} did not start: {line}")
        return line.split()[-1]

    def daemon(
        self,
        host: str,
        *,
        relay: str | None = None,
        name: str | None = None,
        args: tuple[str, ...] = (),
    ) -> Daemon:
        """Runs a node daemon on ``host`` (identity and app key in a data dir of its own),
        with ``args`` as more flags (e.g. ``("--workers", "2")``)."""
        name = name or host
        data = self.work / name
        created = run(*GOLEM_VPN, "app-key", "create", "lab", "--json", "--data-dir", str(data))
        key = json.loads(created.stdout)["key"]
        cmd = [*GOLEM_VPN, "daemon", "--data-dir", str(data), "--api", "127.0.0.1:0",
               "--listen", f"{self.addresses[host]}:0"]  # fmt: skip
        if relay is not None:
            cmd += ["--relay", relay]
        cmd += args
        proc = self.popen(self._on_host(host, *cmd), f"{name}.log")
        line = self._first_line(proc, f"{name}.log")
        if not line.startswith("golem-vpn daemon 0x"):
            raise LabError(f"daemon {name} did not start: {line}")
        # "golem-vpn daemon 0x...: Net API http://..., UDP h:p[, relay ...]"
        api = line.split("Net API ")[1].split(",")[0]
        udp = line.split("UDP ")[1].split(",")[0].strip()
        return Daemon(self, host, line.split()[2].rstrip(":"), api, key, udp)

    def _first_line(self, proc: subprocess.Popen[str], log: str) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line:
            proc.wait(timeout=10)
            raise LabError(f"exited at start: {(self.work / log).read_text()[-2000:]}")
        return line

    def logs(self) -> str:
        """Every log of the lab's processes (their last 3000 characters)."""
        return "\n".join(
            f"--- {log.name}\n{log.read_text()[-3000:]}" for log in sorted(self.work.glob("*.log"))
        )

    def close(self) -> None:
        """Stops every process (SIGTERM, then SIGKILL after 20 s) and deletes every namespace."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        present = netns_list()
        for netns in reversed(self.namespaces):
            if netns in present:
                run("ip", "netns", "delete", netns, check=False)
            shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
        self.namespaces.clear()
        self._tmp.cleanup()
