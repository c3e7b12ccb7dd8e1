"""``golem-vpn demo``: a relay, a requestor and three providers, each a process of its own.

Everything runs on this machine's loopback (127.0.0.1, free ports), each node with a data dir and
an identity of its own in a temporary directory, and the demo plays the requestor's app:

1. It starts a relay (``golem-vpn relay``) and four node daemons (:mod:`golem_vpn.demo.node`,
   which runs ``golem-vpn daemon``'s code and answers the demo's questions on stdin/stdout).
2. Through the requestor's Net API, with the SDK (:class:`golem_vpn.sdk.Network`), it creates a
   network and adds the three providers.
3. It hands each provider its DEPLOY through the provider daemon's attachment API
   (:class:`~golem_vpn.exeunit.AttachClient`, what ``golem-vpn attach`` calls): a userspace
   attachment (no root needed), or with ``netns=True`` (``golem-vpn demo --netns``, root) a TUN
   device in a network namespace of its own.
4. The payloads (:mod:`golem_vpn.demo.payload`) run where each kind of attachment puts them: in
   the daemon's process on its userspace stack, or as a process in the namespace on plain
   sockets. Each serves HTTP and a SHA-256 sink.
5. Provider 2 fetches provider 1's page over the VPN; the requestor fetches it through its
   WebSocket gate; every provider pings every other node (ICMP echo: the userspace stack's, or
   ``ping`` in the namespace); provider 1 streams a checksummed transfer to provider 2; the
   requestor removes provider 3, which the others then cannot reach.
6. It reads the counters (each attachment's bytes, the requestor's stack, each path), stops
   every process it started (by PID: SIGTERM, then SIGKILL), checks that no namespace of its
   own is left, and reports (:func:`render`, or JSON).

With ``keep=True`` it reports, says how to reach the running network, and waits for Ctrl-C or
SIGTERM before tearing down. A failed step stops the demo, with the tail of each process's log;
teardown runs on every path out. Nothing is left behind even if the demo is killed: each child
gets SIGTERM when the demo's process dies (``PR_SET_PDEATHSIG``) and the nodes and payloads also
stop when their stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from golem_vpn.demo.payload import http_result
from golem_vpn.errors import DemoError, GolemVpnError

__all__ = ["DemoOptions", "main", "render", "run_demo"]

#: The virtual network of the demo.
CIDR = "192.168.42.0/24"
HTTP_PORT, SINK_PORT = 80, 9000
PROVIDERS = ("provider-1", "provider-2", "provider-3")
#: Seconds a process may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
#: Seconds a node or payload call may take (a transfer gets more).
CALL_TIMEOUT = 30.0
#: Seconds without an echo reply after which a removed node counts as unreachable (the echo
#: takes a millisecond or two here).
LOST_AFTER = 0.5
PYTHON = sys.executable


@dataclass(frozen=True)
class DemoOptions:
    """What ``golem-vpn demo`` was asked for.

    Attributes:
        netns: TUN attachments in network namespaces (root) instead of userspace ones.
        size: Bytes of the checksummed transfer.
        keep: Leave everything running after the report, until Ctrl-C or SIGTERM.
        json: Report as JSON.
        hole_punching: Let the daemons find direct paths (else every path stays relayed).
    """

    netns: bool = False
    size: int = 32 << 20
    keep: bool = False
    json: bool = False
    hole_punching: bool = True


# -- processes ----------------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes a child get SIGTERM when this process dies (Linux)."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl  # looked up here, not in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call
            os._exit(1)

    return preexec


@dataclass
class Child:
    """A process the demo started.

    Attributes:
        name: What it is (``relay``, ``requestor``, ``provider-1``, ``payload-1``).
        argv: Its command line.
        proc: The process.
        log: Where its stderr goes.
    """

    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process
    log: Path
    _pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    _next_id: int = 0
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 12) -> str:
        """The last lines of its log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def first_line(self, timeout: float = 30.0) -> str:
        """The first line it prints (its "ready" line); DemoError if it exits first."""
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except TimeoutError:
            raise DemoError(f"{self.name} did not start within {timeout:g} s") from None
        if not line:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
            raise DemoError(
                f"{self.name} exited at start (status {self.proc.returncode}):\n{self.log_tail()}"
            )
        return line.decode(errors="replace").strip()

    async def ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Waits for ``{"ready": {...}}`` and starts reading answers to :meth:`call`."""
        line = await self.first_line(timeout)
        try:
            ready = json.loads(line)["ready"]
        except (ValueError, KeyError, TypeError):
            raise DemoError(f"{self.name} started oddly: {line[:200]}") from None
        self._reader = asyncio.get_running_loop().create_task(self._read_answers())
        return dict(ready)

    async def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            answer = json.loads(line)
            future = self._pending.pop(answer.get("id"), None)
            if future is None or future.done():
                continue
            if answer.get("ok"):
                future.set_result(answer.get("result"))
            else:
                future.set_exception(DemoError(f"{self.name}: {answer.get('error')}"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DemoError(f"{self.name} exited:\n{self.log_tail()}"))
        self._pending.clear()

    async def stop_reading(self) -> None:
        """Stops reading answers (the process has exited)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def call(self, op: str, *, within: float = CALL_TIMEOUT, **args: Any) -> Any:
        """Runs a command of a demo node or payload and returns its result (DemoError if it
        fails or takes more than ``within`` seconds)."""
        assert self.proc.stdin is not None
        if self.proc.returncode is not None or self._reader is None or self._reader.done():
            raise DemoError(f"{self.name} is not running:\n{self.log_tail()}")
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        self.proc.stdin.write(json.dumps({"id": self._next_id, "op": op, **args}).encode() + b"\n")
        try:
            return await asyncio.wait_for(future, within)
        except TimeoutError:
            raise DemoError(f"{self.name}: {op} took more than {within:g} s") from None
        finally:
            self._pending.pop(self._next_id, None)


class Children:
    """Every process the demo started, and their teardown.

    Args:
        logs: The directory their logs go to.
    """

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.all: list[Child] = []
        self._preexec = _parent_death_signal()

    async def start(self, name: str, argv: list[str], *, stdin: bool = True) -> Child:
        """Starts ``argv`` in a session of its own (the terminal's Ctrl-C comes to the demo,
        which stops everything in order); stdout is a pipe, stderr goes to ``logs/NAME.log``."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                start_new_session=True,
                preexec_fn=self._preexec,
            )
        child = Child(name, argv, proc, log)
        self.all.append(child)
        return child

    async def stop(self) -> dict[str, list[int]]:
        """Stops every process: SIGTERM and stdin closed, all at once (payloads and daemons
        clean up after themselves: a daemon detaches its attachments, deleting the namespaces
        they made), then SIGKILL for any still running after :data:`STOP_TIMEOUT`. Returns
        the PIDs that stopped and those that had to be killed."""
        for child in reversed(self.all):
            if child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            if child.proc.stdin is not None:
                child.proc.stdin.close()
        killed = await asyncio.gather(*(self._reap(child) for child in self.all))
        return {
            "stopped": [c.pid for c, k in zip(self.all, killed, strict=True) if not k],
            "killed": [c.pid for c, k in zip(self.all, killed, strict=True) if k],
        }

    @staticmethod
    async def _reap(child: Child) -> bool:
        """Waits for ``child`` to exit, killing it after :data:`STOP_TIMEOUT`; True if killed."""
        killed = False
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()
            killed = True
        await child.stop_reading()
        return killed


# -- progress -----------------------------------------------------------------------------------


class Progress:
    """Each step of the demo as it happens, on stderr: a tick when done, a cross if it failed.

    On a terminal the running step shows first and is rewritten when it ends; elsewhere each
    step is one line when it ends. Every step is also recorded (``steps``) for the report.
    """

    def __init__(self, out: TextIO, *, quiet: bool = False) -> None:
        self.out = out
        self.live = out.isatty()
        self.quiet = quiet
        self.steps: list[dict[str, object]] = []
        encoding = getattr(out, "encoding", None) or "ascii"
        try:
            "✓✗…".encode(encoding)
            self._marks = ("✓", "✗", "…")
        except UnicodeEncodeError:
            self._marks = ("ok", "FAIL", "..")

    def note(self, text: str) -> None:
        """A line that is not a step."""
        if not self.quiet:
            print(text, file=self.out, flush=True)

    @contextlib.asynccontextmanager
    async def step(self, key: str, title: str) -> AsyncIterator[dict[str, object]]:
        """Runs one step; the caller may set ``detail`` in the yielded record."""
        record: dict[str, object] = {"step": key, "title": title, "ok": False, "detail": ""}
        self.steps.append(record)
        started = time.perf_counter()
        if self.live and not self.quiet:
            print(f"  {self._marks[2]} {title}", end="", file=self.out, flush=True)
        try:
            yield record
        except BaseException as exc:
            record["seconds"] = round(time.perf_counter() - started, 3)
            if isinstance(exc, Exception):
                record["detail"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._show(record, ok=False)
            raise
        record["ok"] = True
        record["seconds"] = round(time.perf_counter() - started, 3)
        self._show(record, ok=True)

    def _show(self, record: dict[str, object], *, ok: bool) -> None:
        if self.quiet:
            return
        mark = self._marks[0 if ok else 1]
        detail = f": {record['detail']}" if record["detail"] else ""
        line = f"  {mark} {record['title']}{detail} ({record['seconds']:.1f} s)"
        if self.live:
            print(f"\r\x1b[K{line}", file=self.out, flush=True)
        else:
            print(line, file=self.out, flush=True)


# -- the demo -----------------------------------------------------------------------------------


@dataclass
class NodeInfo:
    """One node of the demo: its daemon and, for a provider, its attachment and payload."""

    name: str
    child: Child
    data_dir: Path
    key: str
    node_id: str = ""
    api: str = ""
    udp: str = ""
    ip: str = ""
    attachment: dict[str, Any] = field(default_factory=dict)
    netns: str | None = None
    payload: Child | None = None

    @property
    def runs_payload(self) -> Child:
        """What runs this provider's payload commands: the payload process in its namespace,
        or its own daemon process (userspace)."""
        return self.payload or self.child


class Demo:
    """One run of the demo (see the module docs); :meth:`run` then :meth:`close`."""

    def __init__(self, options: DemoOptions, progress: Progress) -> None:
        self.options = options
        self.progress = progress
        self.work = Path(tempfile.mkdtemp(prefix="golem-vpn-demo-"))
        (self.work / "logs").mkdir()
        self.children = Children(self.work / "logs")
        self.relay = ""
        self.nodes: dict[str, NodeInfo] = {}
        self.network_id = ""
        self.gateway = ""
        self.report: dict[str, Any] = {}
        self.netns_prefix = f"gvdemo{os.getpid()}-"
        self._client: Any = None
        self._network: Any = None

    # -- steps ------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Runs every step; returns the report (without the teardown, which :meth:`close`
        adds). Raises DemoError at the first step that fails."""
        from golem_vpn import __version__, build_profile

        started = time.perf_counter()
        mode = "tun" if self.options.netns else "userspace"
        self.report.update(
            {
                "version": __version__,
                "buildProfile": build_profile,
                "mode": mode,
                "workDir": str(self.work),
                "steps": self.progress.steps,
            }
        )
        if self.options.netns:
            self._check_root()
        await self._start_processes()
        await self._create_network()
        await self._deploy()
        await self._start_payloads()
        await self._tunnels_up()
        await self._fetches()
        await self._pings()
        await self._transfer()
        counters = await self._counters()
        await self._remove()
        self.report["nodes"] = self._node_rows(counters)
        self.report["seconds"] = round(time.perf_counter() - started, 2)
        return self.report

    def _check_root(self) -> None:
        if os.geteuid() != 0:
            raise DemoError(
                "--netns needs root (it makes TUN devices and network namespaces); run "
                "`golem-vpn demo` without it for userspace attachments"
            )
        missing = [tool for tool in ("ip", "ping") if shutil.which(tool) is None]
        if missing:
            raise DemoError(f"--netns needs {' and '.join(missing)} (iproute2, iputils-ping)")

    async def _start_processes(self) -> None:
        from golem_vpn.netapi.appkeys import AppKeys
        from golem_vpn.netapi.store import Store
        from golem_vpn.node import identity

        async with self.progress.step("relay", "relay") as step:
            relay = await self.children.start(
                "relay",
                [PYTHON, "-m", "golem_vpn", "relay", "--listen", "127.0.0.1:0"],
                stdin=False,
            )
            line = await relay.first_line()
            if not line.startswith("relay listening on "):
                raise DemoError(f"the relay did not start: {line}")
            self.relay = line.split()[-1]
            step["detail"] = f"UDP {self.relay}, PID {relay.pid}"
        self.report["relay"] = {"address": self.relay, "pid": relay.pid}

        for name in ("requestor", *PROVIDERS):
            data_dir = self.work / name
            ident, _ = identity.load_or_create(data_dir)  # the node's own identity
            with Store.in_data_dir(data_dir) as store:
                key = AppKeys(store).create("demo", ident.node_id)
            argv = [PYTHON, "-m", "golem_vpn.demo.node", "--data-dir", str(data_dir)]
            argv += ["--relay", self.relay]
            if not self.options.hole_punching:
                argv.append("--no-hole-punching")
            child = await self.children.start(name, argv)
            self.nodes[name] = NodeInfo(name, child, data_dir, key)
        for node in self.nodes.values():  # started together, reported in order
            async with self.progress.step(node.name, f"{node.name} daemon") as step:
                info = await node.child.ready()
                node.node_id, node.api, node.udp = info["nodeId"], info["api"], info["udp"]
                step["detail"] = f"{node.node_id}, Net API {node.api}, PID {node.child.pid}"

    async def _create_network(self) -> None:
        from golem_vpn.netapi.client import Client
        from golem_vpn.sdk import Network

        requestor = self.nodes["requestor"]
        async with self.progress.step("network", "network created with the SDK") as step:
            self._client = Client(requestor.api, requestor.key)
            self._network = await Network.create(self._client, CIDR)
            self.network_id = self._network.network_id
            self.gateway = str(self._network.owner_ip)
            requestor.ip = self.gateway
            step["detail"] = f"{self.network_id} {CIDR}, requestor {self.gateway}"
        self.report["network"] = {"id": self.network_id, "cidr": CIDR, "requestorIp": self.gateway}
        async with self.progress.step("nodes", "providers added") as step:
            for name in PROVIDERS:
                node = self.nodes[name]
                node.ip = str((await self._network.add_node(node.node_id)).ip)
            step["detail"] = ", ".join(f"{n} {self.nodes[n].ip}" for n in PROVIDERS)

    async def _deploy(self) -> None:
        from golem_vpn.exeunit.client import AttachClient

        kind = "TUN in a network namespace" if self.options.netns else "userspace"
        async with self.progress.step("deploy", f"DEPLOY handed to each provider ({kind})") as s:
            for i, name in enumerate(PROVIDERS, 1):
                node = self.nodes[name]
                deploy = self._network.deploy_args(node.node_id)
                client = AttachClient(node.api, node.key)
                async with client:
                    if self.options.netns:
                        node.netns = f"{self.netns_prefix}{i}"
                        attached = await client.attach(deploy, mode="tun", netns=node.netns)
                    else:
                        attached = await client.attach(deploy, mode="userspace")
                node.attachment = attached.to_json()
            s["detail"] = ", ".join(
                f"{n} {self.nodes[n].attachment['id']}"
                + (f" in netns {self.nodes[n].netns}" if self.nodes[n].netns else "")
                for n in PROVIDERS
            )

    async def _start_payloads(self) -> None:
        title = "payloads serve HTTP and a SHA-256 sink"

        async def start(i: int, node: NodeInfo) -> None:
            if node.netns is not None:
                node.payload = await self.children.start(
                    f"payload-{i}",
                    ["ip", "netns", "exec", node.netns, PYTHON, "-m", "golem_vpn.demo.payload",
                     node.name, node.ip],
                )  # fmt: skip
                await node.payload.ready()
            else:
                await node.child.call(
                    "payload", attachment=node.attachment["id"], network=self.network_id,
                    name=node.name,
                )  # fmt: skip
            await node.runs_payload.call("serve", http=HTTP_PORT, sink=SINK_PORT)

        async with self.progress.step("payloads", title) as step:
            await asyncio.gather(
                *(start(i, self.nodes[name]) for i, name in enumerate(PROVIDERS, 1))
            )
            where = (
                "processes in the namespaces, on kernel sockets"
                if self.options.netns
                else "in each provider daemon, on its userspace stack"
            )
            step["detail"] = f"ports {HTTP_PORT} and {SINK_PORT}, {where}"

    async def _tunnels_up(self) -> None:
        async with self.progress.step("tunnels", "every provider reaches the requestor") as step:
            answers = await asyncio.gather(
                *(
                    self.nodes[n].runs_payload.call(
                        "ping", host=self.gateway, count=1, timeout=1.0, until=20.0
                    )
                    for n in PROVIDERS
                )
            )
            for name, answer in zip(PROVIDERS, answers, strict=True):
                if answer["rtts"][0] is None:
                    raise DemoError(f"{name} did not reach the requestor within 20 s")
            slowest = max(a["waited"] + a["rtts"][0] for a in answers)
            step["detail"] = f"first echo back after at most {slowest * 1000:.0f} ms"

    async def _fetches(self) -> None:
        p1, p2 = self.nodes["provider-1"], self.nodes["provider-2"]
        url = f"http://{p1.ip}/"
        fetches: list[dict[str, object]] = []
        async with self.progress.step("fetch-vpn", f"provider-2 fetches {url}") as step:
            got = await p2.runs_payload.call("fetch", url=url, timeout=20.0)
            self._check_page(got, p1)
            fetches.append({"from": "provider-2", "via": "vpn", "url": url, **got})
            step["detail"] = f"{got['statusLine']}, {got['body'].strip()!r}"
        async with self.progress.step("fetch-gate", f"requestor fetches {url} via its gate") as s:
            import aiohttp  # noqa: F401  (the gate's client; loaded before the clock starts)

            started = time.perf_counter()
            reader, writer = await self._network.connect(p1.node_id, HTTP_PORT)
            try:
                writer.write(f"GET / HTTP/1.0\r\nHost: {p1.ip}\r\n\r\n".encode())
                await writer.drain()
                response = await asyncio.wait_for(reader.read(), 20)
            finally:
                writer.close()
            got = http_result(response, time.perf_counter() - started)
            self._check_page(got, p1)
            fetches.append({"from": "requestor", "via": "gate", "url": url, **got})
            s["detail"] = f"{got['statusLine']}, {got['body'].strip()!r}"
        self.report["fetches"] = fetches

    @staticmethod
    def _check_page(got: dict[str, Any], server: NodeInfo) -> None:
        expected = f"hello from {server.name} ({server.ip})"
        if got["status"] != 200 or expected not in got["body"]:
            raise DemoError(f"unexpected answer: {got['statusLine']!r} {got['body'][:200]!r}")

    async def _pings(self) -> None:
        order = ["requestor", *PROVIDERS]

        async def from_node(name: str) -> list[dict[str, Any]]:
            rows = []
            for target in order:
                if target == name:
                    continue
                ip = self.nodes[target].ip
                got = await self.nodes[name].runs_payload.call(
                    "ping", host=ip, count=3, timeout=2.0, until=10.0
                )
                rtts = [None if r is None else round(r * 1000, 3) for r in got["rtts"]]
                rows.append({"from": name, "to": target, "ip": ip, "rttMs": rtts})
            return rows

        how = "ping in each namespace" if self.options.netns else "the userspace stack's echo"
        async with self.progress.step("ping", f"every provider pings every node ({how})") as s:
            pings = [
                row for rows in await asyncio.gather(*map(from_node, PROVIDERS)) for row in rows
            ]
            lost = [p for p in pings if None in p["rttMs"]]
            if lost:
                raise DemoError(
                    "echoes lost: " + ", ".join(f"{p['from']} -> {p['to']}" for p in lost)
                )
            medians = [statistics.median(p["rttMs"]) for p in pings]
            s["detail"] = (
                f"{len(pings)} pairs x 3 echoes, median RTT {statistics.median(medians):.2f} ms"
            )
        self.report["pings"] = pings

    async def _transfer(self) -> None:
        p1, p2 = self.nodes["provider-1"], self.nodes["provider-2"]
        size = self.options.size
        title = f"provider-1 streams {_size(size)} to provider-2's sink"
        async with self.progress.step("transfer", title) as step:
            got = await p1.runs_payload.call(  # a slow machine gets 5 minutes
                "send", within=300.0, timeout=300.0, host=p2.ip, port=SINK_PORT, bytes=size
            )
            sink = await p2.runs_payload.call("received")
            match = (
                got["sha256Sent"] == got["sha256Received"]
                and got["receivedBytes"] == size
                and bool(sink)
                and sink[-1]["sha256"] == got["sha256Sent"]
            )
            mbit = size * 8 / got["seconds"] / 1e6
            transfer = {
                "from": "provider-1",
                "to": "provider-2",
                "bytes": size,
                "seconds": round(got["seconds"], 3),
                "mbitPerSecond": round(mbit, 1),
                "sha256Sent": got["sha256Sent"],
                "sha256Received": got["sha256Received"],
                "match": match,
            }
            self.report["transfer"] = transfer
            if not match:
                raise DemoError(
                    f"SHA-256 mismatch: sent {got['sha256Sent']}, provider-2 received "
                    f"{got['receivedBytes']} bytes with {got['sha256Received'] or 'no digest'}"
                )
            step["detail"] = (
                f"{got['seconds']:.2f} s, {_rate(mbit)}, SHA-256 match "
                f"({got['sha256Sent'][:16]}...)"
            )

    async def _counters(self) -> dict[str, dict[str, Any]]:
        from golem_vpn.exeunit.client import AttachClient

        async with self.progress.step("counters", "paths and counters read") as step:
            requestor = self.nodes["requestor"]
            peers = [self.nodes[n].node_id for n in PROVIDERS]
            paths = await requestor.child.call("paths", peers=peers)
            stack = await requestor.child.call("stack", network=self.network_id)
            out: dict[str, dict[str, Any]] = {
                "requestor": {
                    "path": None,
                    "received": stack["bytes_in"],
                    "sent": stack["bytes_out"],
                }
            }
            for name in PROVIDERS:
                node = self.nodes[name]
                client = AttachClient(node.api, node.key)
                async with client:
                    attached = await client.attachment(node.attachment["id"])
                path = paths[node.node_id]
                out[name] = {
                    "path": path["path"],
                    "address": path["address"],
                    # in: payload -> VPN, out: VPN -> payload (the attachment's counters)
                    "received": attached.counters.bytes_out,
                    "sent": attached.counters.bytes_in,
                }
            step["detail"] = ", ".join(f"{n} {out[n]['path']}" for n in PROVIDERS)
        return out

    async def _remove(self) -> None:
        p3 = self.nodes["provider-3"]
        title = "requestor removes provider-3; it is unreachable"
        async with self.progress.step("remove", title) as step:
            started = time.perf_counter()
            await self._network.remove_node(p3.node_id)
            removed_after = time.perf_counter() - started
            checks = await asyncio.gather(
                *(
                    self.nodes[n].runs_payload.call(
                        "ping", host=p3.ip, count=2, timeout=LOST_AFTER, until_lost=5.0
                    )
                    for n in ("provider-1", "provider-2")
                ),
                p3.runs_payload.call(
                    "ping",
                    host=self.nodes["provider-1"].ip,
                    count=2,
                    timeout=LOST_AFTER,
                    until_lost=5.0,
                ),
            )
            pairs = [
                ("provider-1", "provider-3"),
                ("provider-2", "provider-3"),
                ("provider-3", "provider-1"),
            ]
            results = [
                {
                    "from": a,
                    "to": b,
                    "lostAfterMs": round(got["waited"] * 1000, 1),
                    "echoes": got["rtts"],
                    "unreachable": all(r is None for r in got["rtts"]),
                }
                for (a, b), got in zip(pairs, checks, strict=True)
            ]
            self.report["removal"] = {
                "node": "provider-3",
                "nodeId": p3.node_id,
                "ip": p3.ip,
                "apiSeconds": round(removed_after, 3),
                "checks": results,
            }
            still = [f"{r['from']} -> {r['to']}" for r in results if not r["unreachable"]]
            if still:
                raise DemoError("provider-3 still answers after removal: " + ", ".join(still))
            slowest = max(float(r["lostAfterMs"]) for r in results)
            step["detail"] = f"no echo from or to {p3.ip} ({_lost_after(slowest)})"

    def _node_rows(self, counters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        rows = []
        for name, node in self.nodes.items():
            c = counters[name]
            rows.append(
                {
                    "name": name,
                    "role": "requestor" if name == "requestor" else "provider",
                    "nodeId": node.node_id,
                    "ip": node.ip,
                    "pid": node.child.pid,
                    "payloadPid": node.payload.pid if node.payload else None,
                    "api": node.api,
                    "udp": node.udp,
                    "path": c["path"],
                    "bytesReceived": c["received"],
                    "bytesSent": c["sent"],
                    "attachment": node.attachment.get("id"),
                    "attachmentKind": node.attachment.get("kind"),
                    "netns": node.netns,
                    "removed": name == "provider-3",
                }
            )
        return rows

    # -- keep -------------------------------------------------------------------------------

    def how_to_reach(self) -> list[str]:
        """Shell lines that reach the running demo (for ``--keep``)."""
        req, p1, p2 = (self.nodes[n] for n in ("requestor", "provider-1", "provider-2"))
        lines = [
            "# The requestor's Net API and app key:",
            f"export YAGNA_NET_URL={req.api}/net-api/v1 YAGNA_APPKEY={req.key}",
            f"golem-vpn net show {self.network_id}",
            f"golem-vpn net connect {self.network_id} {p1.ip}:{HTTP_PORT} 8080 &"
            "   # a local port into the network, through the gate",
            "curl http://127.0.0.1:8080/",
            "# provider-1's attachment, through its daemon's attachment API:",
            f"YAGNA_APPKEY={p1.key} golem-vpn attachments --url {p1.api}",
        ]
        if p2.netns is not None:
            lines += [
                "# provider-2's payload namespace:",
                f"ip netns exec {p2.netns} curl http://{p1.ip}/",
                f"ip netns exec {p2.netns} ping -c 3 {req.ip}",
            ]
        return lines

    # -- teardown ---------------------------------------------------------------------------

    async def close(self) -> dict[str, Any]:
        """Stops every process and removes every namespace and file the demo made; returns
        what was stopped and what was left (nothing, normally)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        result: dict[str, Any] = await self.children.stop()
        result["processes"] = [
            {"name": c.name, "pid": c.pid, "argv": c.argv, "exitStatus": c.proc.returncode}
            for c in self.children.all
        ]
        left = [
            c.pid
            for c in self.children.all
            if c.proc.returncode is None or (Path(f"/proc/{c.pid}").exists() and _same(c))
        ]
        result["processesLeft"] = left
        result["namespacesLeft"] = await self._remove_namespaces()
        shutil.rmtree(self.work, ignore_errors=True)
        result["workDirRemoved"] = not self.work.exists()
        return result

    async def _remove_namespaces(self) -> list[str]:
        """Deletes namespaces of this run that the daemons did not; returns any still there."""
        if not self.options.netns or shutil.which("ip") is None:
            return []
        mine = [n for n in await _netns_list() if n.startswith(self.netns_prefix)]
        for name in mine:
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "delete", name,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await proc.wait()
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        return [n for n in await _netns_list() if n.startswith(self.netns_prefix)]

    def diagnose(self) -> str:
        """Each process's state and the tail of its log, for a failure report."""
        lines = [f"the demo's processes (work dir {self.work}, removed at teardown):"]
        for child in self.children.all:
            status = child.proc.returncode
            if status is None:
                state = "running"
            elif status < 0:
                state = f"killed by {signal.Signals(-status).name}"
            else:
                state = f"exited with status {status}"
            lines.append(f"  {child.name} (PID {child.pid}): {state}")
            lines += [f"    | {line}" for line in child.log_tail().splitlines()]
        return "\n".join(lines)


def _same(child: Child) -> bool:
    """Whether ``/proc/PID`` is still the child (not a new process that reused the PID)."""
    try:
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return cmdline[: len(child.argv)] == [a.encode() for a in child.argv]


async def _netns_list() -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "list", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return [line.split()[0] for line in out.decode().splitlines() if line.strip()]


# -- the report ---------------------------------------------------------------------------------


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _lost_after(ms: float) -> str:
    if ms < 50:
        return "the first echo after the removal was lost"
    return f"echoes lost from {ms:.0f} ms after the removal"


def _rate(mbit: float) -> str:
    return f"{mbit / 1000:.2f} Gbit/s" if mbit >= 1000 else f"{mbit:.0f} Mbit/s"


def _table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:  # type: ignore[assignment]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    out = []
    for row in [headers, *rows]:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def render(report: dict[str, Any]) -> str:
    """The report for people: nodes, fetches, RTTs, the transfer, the removal, teardown."""
    mode = (
        "TUN devices in network namespaces"
        if report["mode"] == "tun"
        else "userspace attachments, no root"
    )
    net = report["network"]
    lines = [
        f"golem-vpn {report['version']} demo: a relay, a requestor and 3 providers, each its own "
        f"process on 127.0.0.1 ({mode})",
        f"network {net['id']}  {net['cidr']}  relay {report['relay']['address']}",
        "",
    ]
    rows = []
    for node in report["nodes"]:
        path = node["path"] or "-"
        if node["removed"]:
            path += ", then removed"
        rows.append(
            [
                node["name"], node["nodeId"], node["ip"], path,
                _size(node["bytesReceived"]), _size(node["bytesSent"]), str(node["pid"]),
            ]
        )  # fmt: skip
    lines += _table(
        ["NODE", "NODE ID", "VIRTUAL IP", "PATH", "RECEIVED", "SENT", "PID"], rows, {4, 5, 6}
    )
    lines += [
        "  path: as the requestor's daemon sees it; received, sent: bytes the node's payload got",
        "  from the VPN and gave to it (for the requestor: its stack, behind the gate)",
    ]
    lines += ["", "fetched"]
    for f in report["fetches"]:
        via = "through the requestor's gate" if f["via"] == "gate" else "over the VPN"
        lines.append(
            f"  {f['from']:<11} GET {f['url']} {via}: {f['statusLine']}, "
            f"{f['body'].strip()!r} ({f['seconds'] * 1000:.0f} ms)"
        )
    names = [n["name"] for n in report["nodes"]]
    by_pair = {(p["from"], p["to"]): p for p in report["pings"]}
    lines += ["", "ping RTT, median of 3 echoes (ms)"]
    ping_rows = []
    for src in sorted({p["from"] for p in report["pings"]}, key=names.index):
        row = [src]
        for dst in names:
            p = by_pair.get((src, dst))
            row.append(f"{statistics.median(p['rttMs']):.2f}" if p else "-")
        ping_rows.append(row)
    lines += _table(["from \\ to", *names], ping_rows, set(range(1, len(names) + 1)))
    t = report["transfer"]
    lines += [
        "",
        f"transfer  {t['from']} -> {t['to']}: {_size(t['bytes'])} in {t['seconds']:.2f} s = "
        f"{_rate(t['mbitPerSecond'])}, SHA-256 {'match' if t['match'] else 'MISMATCH'} "
        f"({t['sha256Sent'][:16]}...)",
    ]
    r = report["removal"]
    slowest = max(c["lostAfterMs"] for c in r["checks"])
    lines.append(
        f"removed   {r['node']} ({r['ip']}): no echo "
        + ", ".join(f"{c['from']} -> {c['to']}" for c in r["checks"])
        + f" ({_lost_after(slowest)})"
    )
    teardown = report.get("teardown")
    if teardown is not None:
        ok = not teardown["processesLeft"] and not teardown["namespacesLeft"]
        stopped = len(teardown["stopped"]) + len(teardown["killed"])
        lines.append(
            f"stopped   {stopped} processes"
            + (f" ({len(teardown['killed'])} killed)" if teardown["killed"] else "")
            + ("; nothing left running" if ok else "; LEFT: " + json.dumps(teardown))
        )
    lines.append(f"took {report['seconds']:.1f} s")
    return "\n".join(lines)


# -- entry point --------------------------------------------------------------------------------


async def run_demo(options: DemoOptions, out: TextIO, err: TextIO) -> int:
    """Runs the demo with its teardown, printing to ``out`` (report) and ``err`` (progress,
    errors); returns the exit status: 0, 1 if a step failed, 130/143 if interrupted."""
    from golem_vpn.console import fail

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted: list[int] = []

    def on_signal(sig: int) -> None:
        if not interrupted:  # a second signal must not cut the teardown short
            interrupted.append(sig)
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    progress = Progress(err)
    mode = "TUN in namespaces" if options.netns else "userspace"
    progress.note(f"golem-vpn demo ({mode}): starting, each step ticks when done")
    demo = Demo(options, progress)
    status = 0
    report: dict[str, Any] | None = None
    try:
        try:
            report = await demo.run()
            if options.keep:
                req = demo.nodes["requestor"]
                report["keep"] = {
                    "netUrl": f"{req.api}/net-api/v1",
                    "appKey": req.key,
                    "commands": demo.how_to_reach(),
                }
                _print_report(report, options, out)
                # With --json, stdout holds only the report; the words go to stderr.
                words = err if options.json else out
                print(
                    "\nRunning until Ctrl-C (or SIGTERM); then everything is stopped and removed. "
                    "To reach it, in another shell:",
                    file=words,
                )
                for line in demo.how_to_reach():
                    print(f"  {line}", file=words)
                words.flush()
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not interrupted:
                raise
            status = 0 if options.keep and report is not None else 128 + interrupted[0]
            progress.note(f"interrupted ({signal.Signals(interrupted[0]).name}), stopping")
        except (DemoError, GolemVpnError, OSError) as exc:
            status = fail(f"demo failed: {exc}")
            await asyncio.sleep(0.1)  # a process that is dying: let its exit be seen
            print(demo.diagnose(), file=err)
    finally:
        teardown = await _teardown(demo, progress)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if teardown["processesLeft"] or teardown["namespacesLeft"]:
        status = fail(f"the demo left things behind: {json.dumps(teardown)}")
    if report is not None and not options.keep and status == 0:
        report["teardown"] = teardown
        _print_report(report, options, out)
    return status


async def _teardown(demo: Demo, progress: Progress) -> dict[str, Any]:
    with contextlib.suppress(DemoError):
        async with progress.step("teardown", "every process stopped, everything removed") as s:
            teardown = await demo.close()
            s["detail"] = f"{len(teardown['stopped']) + len(teardown['killed'])} processes"
            if teardown["processesLeft"] or teardown["namespacesLeft"]:
                raise DemoError("left behind")
    return teardown


def _print_report(report: dict[str, Any], options: DemoOptions, out: TextIO) -> None:
    if options.json:
        print(json.dumps(report, indent=2), file=out)
    else:
        print(render(report), file=out)
    out.flush()


def main(options: DemoOptions) -> int:
    """``golem-vpn demo``: runs :func:`run_demo` on a fresh event loop."""
    return asyncio.run(run_demo(options, sys.stdout, sys.stderr))
