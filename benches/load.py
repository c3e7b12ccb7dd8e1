"""Load (issue 12): many networks in one daemon, many gate connections, many nodes in a network.

Real daemons, driven over HTTP as any client would, their memory read from
``/proc/PID/status`` (``VmRSS`` now, ``VmHWM`` the peak):

1. ``networks``: one ``golem-vpn daemon`` process (its per-identity bound raised by
   ``--max-networks`` to hold them all: the default is 1024). ``--networks`` networks are
   created one after another through ``POST /net-api/v1/net``; the daemon's RSS is read after
   every tenth of them, and at 0, 10 %, 50 % and 100 % the latencies of create, list
   (``GET /net``), show (``GET /net/{id}``), add-node (``POST /net/{id}/nodes``, the node
   removed again right after) and delete are sampled. Then the daemon is stopped and started
   on the same data dir: the time until it answers a list with every network.
2. ``gates``: a relay and a daemon process (``--max-gates-per-key`` raised); a provider node
   in this process joins the network from its DEPLOY config and runs a TCP echo service on
   its userspace stack. ``--gates`` WebSockets are opened through the daemon's gate at once,
   each sends its own bytes and checks they come back, and all stay open (each read all the
   time, as a client does, so the gate's heartbeat is answered): connect latency, then one
   echo round trip on each while all are open, all echoing at once, 50 more connections one
   at a time, the daemon's RSS, descriptors and idle CPU before, with all open, and after all
   are closed (and a second round opened and closed, to show the slots and memory come back).
3. ``nodes``: ``--nodes`` providers in one network, all in this process (each its own UDP
   transport on loopback and native datapath thread, a relay in process), added one by one
   through the requestor's Net API (served in process too), each joining from its DEPLOY
   config right after its add, as an ExeUnit would: time to add them all, time until every
   member knows every other (the control messages' fan-out), the process's RSS, and ICMP
   echo between random pairs of providers (the first echo of a pair brings its session up
   through the relay; the next ones are the session's round trip). The process's RSS
   includes what the parts before it left (run ``--parts nodes`` alone for a clean start).
4. ``procs``: the same as processes: a relay, a requestor and ``--procs`` provider daemons
   (``python -m golem_vpn.demo.node``: ``golem-vpn daemon``'s code, which also runs a
   payload on a userspace attachment), each attached with the attachment API and pinging the
   provider added last: ordered, exactly-once delivery means a provider that reaches the
   last one knows every earlier one. ``--procs auto`` runs as many as the machine's free
   memory allows (half of ``MemAvailable`` at the RSS of one such daemon), at most 200.

Latencies are milliseconds from the client's send to the answer's last byte, one request at
a time (no queueing of its own). Prints Markdown tables; ``--json PATH`` writes every figure.

Run: ``python benches/load.py [--parts networks,gates,nodes,procs] [--networks 10000]
[--gates 1000] [--nodes 200] [--procs auto] [--quick] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

PYTHON = sys.executable
STOP_TIMEOUT = 30.0
NODE_ID = "0x{:040x}"
#: Every process this run started (``{"pid", "args"}``), for the report: a test checks they
#: are all gone.
STARTED: list[dict[str, Any]] = []
#: Seconds a daemon is watched idle (its CPU use with everything open); --quick: 1.
IDLE_SECONDS = 5.0


# -- measuring ---------------------------------------------------------------------------------


def memory(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def idle_cpu(pid: int, seconds: float) -> float:
    """The share of one core a process uses while nobody asks it anything."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    return round((cpu_seconds(pid) - before) / seconds * 100, 2)


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def summary(samples: list[float]) -> dict[str, float | int | None]:
    """p50/p99/max (and the count) of latencies in seconds, as milliseconds."""
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered) + 0.5) - 1))] * 1000

    return {
        "n": len(ordered),
        "p50": round(rank(0.50), 3),
        "p99": round(rank(0.99), 3),
        "max": round(ordered[-1] * 1000, 3),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await call()
    return time.perf_counter() - start, result


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    available = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                available = int(line.split()[1]) / 1024 / 1024
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memoryGiB": round(available, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


def raise_nofile(want: int) -> None:
    """Raises this process's (and so its children's) descriptor limit to ``want`` if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# -- processes ---------------------------------------------------------------------------------


class Proc:
    """A process this bench started, stopped by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        got = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not got:
            raise RuntimeError(f"{self.argv[:4]} exited (status {await self.proc.wait()})")
        return got.decode().strip()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()


@asynccontextmanager
async def processes() -> AsyncIterator[list[Proc]]:
    """A list to start processes into; every one is stopped on the way out, however it ends."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        await asyncio.gather(*(p.stop() for p in started))


async def spawn(started: list[Proc], argv: list[str], log: Path, *, stdin: bool = False) -> Proc:
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            limit=1 << 20,
        )
    started.append(Proc(proc, argv))
    STARTED.append({"pid": proc.pid, "args": argv})
    return started[-1]


def app_key(data_dir: Path) -> str:
    """An app key for the node whose data dir this is (made with its identity)."""
    from golem_vpn.netapi.appkeys import AppKeys
    from golem_vpn.netapi.store import Store
    from golem_vpn.node import identity

    ident, _ = identity.load_or_create(data_dir)
    with Store.in_data_dir(data_dir) as store:
        return AppKeys(store).create("bench", ident.node_id)


async def relay(started: list[Proc], work: Path) -> str:
    proc = await spawn(
        started,
        [PYTHON, "-m", "golem_vpn", "relay", "--listen", "127.0.0.1:0"],
        work / "relay.log",
    )
    line = await proc.line()
    assert line.startswith("relay listening on "), line
    return line.split()[-1]


async def daemon(
    started: list[Proc], data_dir: Path, flags: list[str], relay_addr: str | None = None
) -> tuple[Proc, str, str]:
    """``golem-vpn daemon`` on loopback ports; returns (process, API root, UDP address)."""
    argv = [PYTHON, "-m", "golem_vpn", "daemon", "--data-dir", str(data_dir)]
    argv += ["--api", "127.0.0.1:0", "--listen", "127.0.0.1:0", *flags]
    if relay_addr:
        argv += ["--relay", relay_addr]
    proc = await spawn(started, argv, data_dir / "daemon.log")
    line = await proc.line(timeout=600)
    # "golem-vpn daemon 0x..: Net API http://127.0.0.1:PORT, UDP 127.0.0.1:PORT..."
    api = line.split("Net API ")[1].split(",")[0]
    udp = line.split("UDP ")[1].split(",")[0].split()[0]
    return proc, api + "/net-api/v1", udp


async def _json(response: aiohttp.ClientResponse) -> Any:
    body = await response.read()
    if response.status != 200:
        raise RuntimeError(f"{response.method} {response.url}: {response.status} {body[:300]!r}")
    return json.loads(body) if body else None


# -- 1. networks in one daemon -----------------------------------------------------------------


def cidr(i: int) -> str:
    return f"10.{(i >> 8) & 255}.{i & 255}.0/24"


async def bench_networks(count: int, samples: int, work: Path) -> dict[str, Any]:
    data_dir = work / "networks"
    data_dir.mkdir()
    key = app_key(data_dir)
    flags = ["--max-networks", str(count + samples + 16)]
    checkpoints = sorted({0, count // 10, count // 2, count})
    rss_steps = sorted({0, *range(count // 10 or 1, count + 1, count // 10 or 1)})
    out: dict[str, Any] = {"networks": count, "flags": flags, "rss": [], "latency": []}
    headers = {"Authorization": f"Bearer {key}"}
    rng = random.Random(12)
    async with processes() as started:
        proc, base, _ = await daemon(started, data_dir, flags)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

            async def create(i: int) -> tuple[float, str]:
                took, net = await timed(lambda: _post(http, f"{base}/net", {"ip": cidr(i)}))
                return took, net["id"]

            ids: list[str] = []
            bulk: list[float] = []
            serial = 0
            for target in sorted(set(checkpoints) | set(rss_steps)):
                while len(ids) < target:
                    took, net_id = await create(serial)
                    serial += 1
                    bulk.append(took)
                    ids.append(net_id)
                if target in rss_steps:
                    out["rss"].append({"networks": len(ids), **memory(proc.pid)})
                if target in checkpoints:
                    row = await _probe(
                        http, base, ids=ids, samples=samples, rng=rng, create=create, serial=serial
                    )
                    serial += samples
                    out["latency"].append({"networks": len(ids), **row})
                    print(f"  {len(ids)} networks: {row}", file=sys.stderr, flush=True)
            out["idleCpuPercent"] = await idle_cpu(proc.pid, IDLE_SECONDS)
            out["createAll"] = summary(bulk)
            out["createAllSeconds"] = round(sum(bulk), 2)
            out["descriptors"] = descriptors(proc.pid)
        stored_size = sum(f.stat().st_size for f in data_dir.glob("golem-vpn.db*"))
        out["databaseMiB"] = round(stored_size / 2**20, 2)
        before_restart = memory(proc.pid)
        await proc.stop()
        started.remove(proc)

        # The same data dir again: every network is restored before the API answers.
        start = time.perf_counter()
        proc, base, _ = await daemon(started, data_dir, flags)
        ready = time.perf_counter() - start
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{base}/net") as r:
                listed = await _json(r)
            answered = time.perf_counter() - start
            async with http.get(f"{base}/net/{ids[-1]}") as r:
                assert (await _json(r))["id"] == ids[-1]
        assert len(listed) == len(ids), (len(listed), len(ids))
        out["restart"] = {
            "networks": len(listed),
            "readySeconds": round(ready, 3),
            "answeredSeconds": round(answered, 3),
            "rssBefore": before_restart,
            "rssAfter": memory(proc.pid),
        }
    first, last = out["rss"][0], out["rss"][-1]
    per = (last["VmRSS"] - first["VmRSS"]) / max(1, last["networks"] - first["networks"]) * 1000
    out["rssPer1000NetworksMiB"] = round(per, 2)
    return out


async def _post(http: aiohttp.ClientSession, url: str, body: object) -> Any:
    async with http.post(url, json=body) as r:
        return await _json(r)


async def _probe(
    http: aiohttp.ClientSession,
    base: str,
    *,
    ids: list[str],
    samples: int,
    rng: random.Random,
    create: Callable[[int], Awaitable[tuple[float, str]]],
    serial: int,
) -> dict[str, Any]:
    """Latencies with ``len(ids)`` networks held (the count is the same afterwards)."""
    lists: list[float] = []
    for _ in range(max(5, samples // 4)):
        took, listed = await timed(lambda: _get(http, f"{base}/net"))
        assert len(listed) == len(ids)
        lists.append(took)
    # Created for this probe and deleted at its end: create and delete at this count.
    creates, extra = [], []
    for i in range(samples):
        took, net_id = await create(serial + i)
        creates.append(took)
        extra.append(net_id)
    pool = ids or extra
    shows, adds, removes = [], [], []
    for i in range(samples):
        net_id = rng.choice(pool)
        took, got = await timed(lambda: _get(http, f"{base}/net/{net_id}"))  # noqa: B023
        assert got["id"] == net_id
        shows.append(took)
        prefix = got["ip"].split("/")[0].rsplit(".", 1)[0]
        node = {"id": NODE_ID.format(0xB0000 + i), "ip": f"{prefix}.9"}
        took, _ = await timed(lambda: _post(http, f"{base}/net/{net_id}/nodes", node))  # noqa: B023
        adds.append(took)
        took, _ = await timed(
            lambda: _delete(http, f"{base}/net/{net_id}/nodes/{node['id']}")  # noqa: B023
        )
        removes.append(took)
    deletes = []
    for net_id in extra:
        took, _ = await timed(lambda: _delete(http, f"{base}/net/{net_id}"))  # noqa: B023
        deletes.append(took)
    return {
        "create": summary(creates),
        "list": summary(lists),
        "show": summary(shows),
        "addNode": summary(adds),
        "removeNode": summary(removes),
        "delete": summary(deletes),
    }


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        return await _json(r)


async def _delete(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.delete(url) as r:
        return await _json(r)


# -- 2. gate connections -----------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    writer.close()


async def bench_gates(count: int, work: Path) -> dict[str, Any]:
    import golem_vpn
    from golem_vpn import Identity
    from golem_vpn.model import parse_deploy_net
    from golem_vpn.node.daemon import DaemonBackend
    from golem_vpn.node.transport import UdpTransport

    raise_nofile(4 * count + 1024)
    data_dir = work / "gates"
    data_dir.mkdir()
    key = app_key(data_dir)
    flags = ["--max-gates-per-key", str(count + 64), "--max-gates", str(max(4096, count + 64))]
    out: dict[str, Any] = {"gates": count, "flags": flags}
    async with processes() as started:
        relay_addr = await relay(started, work)
        proc, base, udp = await daemon(started, data_dir, flags, relay_addr)
        host, port = relay_addr.rsplit(":", 1)
        provider = DaemonBackend(UdpTransport(Identity.generate(), relay=(host, int(port))))
        connector = aiohttp.TCPConnector(limit=0)
        http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {key}"}, connector=connector
        )
        try:
            net = await _post(http, f"{base}/net", {"ip": "10.77.0.0/24"})
            await _post(
                http, f"{base}/net/{net['id']}/nodes", {"id": provider.node_id, "ip": "10.77.0.2"}
            )
            requestor_id = (
                await _get(http, base.replace("/net-api/v1", "/net-api/v2") + "/net/status")
            )["nodeId"]
            deploy = {
                "id": net["id"],
                "ip": "10.77.0.0",
                "mask": net["mask"],
                "gateway": net["gateway"],
                "nodeIp": "10.77.0.2",
                "nodes": {"10.77.0.1": requestor_id, "10.77.0.2": provider.node_id},
            }
            (entry,) = parse_deploy_net({"net": [deploy]})
            uhost, uport = udp.rsplit(":", 1)
            iface = provider.join_deploy(entry, requestor_id, (uhost, int(uport)))
            server = await golem_vpn.start_server(_echo, iface, 7, backlog=count + 16)
            url = f"{base}/net/{net['id']}/tcp/10.77.0.2/7"
            # One connection first: the session between the daemons is up before the clock.
            async with asyncio.timeout(60):
                while True:
                    try:
                        async with http.ws_connect(url) as ws:
                            await ws.send_bytes(b"warm-up")
                            assert (await ws.receive()).data == b"warm-up"
                        break
                    except aiohttp.WSServerHandshakeError:
                        await asyncio.sleep(0.5)
            await asyncio.sleep(1)
            rounds = []
            for round_no in (1, 2):
                rounds.append(
                    await _gate_round(
                        http, url, base=base, net_id=net["id"], count=count, pid=proc.pid
                    )
                )
                print(f"  round {round_no}: {rounds[-1]}", file=sys.stderr, flush=True)
            out["rounds"] = rounds
            status = await _get(http, base.replace("/net-api/v1", "/net-api/v2") + "/net/status")
            out["refused"] = status.get("refused", {})
            server.close()
        finally:
            await http.close()
            provider.close()
    first = out["rounds"][0]
    per = (first["rssOpen"]["VmRSS"] - first["rssBefore"]["VmRSS"]) / count * 1000
    out["rssPer1000GatesMiB"] = round(per, 2)
    return out


async def _gate_round(
    http: aiohttp.ClientSession, url: str, *, base: str, net_id: str, count: int, pid: int
) -> dict[str, Any]:
    before, fds_before = memory(pid), descriptors(pid)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    inboxes: dict[aiohttp.ClientWebSocketResponse, asyncio.Queue[bytes | None]] = {}
    pumps: list[asyncio.Task[None]] = []
    connects: list[float] = []
    moved = 0

    async def pump(ws: aiohttp.ClientWebSocketResponse) -> None:
        """Reads each connection all the time, as a client does: the gate's heartbeat pings
        are answered (aiohttp answers them while reading), its data queued for the test."""
        inbox = inboxes[ws]
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                inbox.put_nowait(msg.data)
        inbox.put_nowait(None)

    async def receive(ws: aiohttp.ClientWebSocketResponse, size: int) -> bytes:
        got = b""
        while len(got) < size:
            data = await inboxes[ws].get()
            if data is None:
                raise RuntimeError(f"a gate connection closed: {ws.close_code}")
            got += data
        return got

    async def one(i: int) -> None:
        nonlocal moved
        start = time.perf_counter()
        ws = await http.ws_connect(url, max_msg_size=0)
        connects.append(time.perf_counter() - start)
        sockets.append(ws)
        payload = f"gate {i} ".encode() * 8
        await ws.send_bytes(payload)
        inboxes[ws] = asyncio.Queue()
        pumps.append(asyncio.create_task(pump(ws)))
        got = await receive(ws, len(payload))
        assert got == payload, (i, got)
        moved += len(got)

    start = time.perf_counter()
    async with asyncio.timeout(300):
        await asyncio.gather(*(one(i) for i in range(count)))
    opened = time.perf_counter() - start
    listed = await _get(http, f"{base}/net/{net_id}/tcp")
    rss_open, fds_open = memory(pid), descriptors(pid)
    idle = await idle_cpu(pid, IDLE_SECONDS)
    # One round trip on each in turn, all of them open.
    rtts = []
    for i, ws in enumerate(sockets):
        payload = b"%d" % i
        start = time.perf_counter()
        await ws.send_bytes(payload)
        got = await receive(ws, len(payload))
        rtts.append(time.perf_counter() - start)
        assert got == payload
    # The same at once: every connection sends, then every reply is awaited.
    burst_start = time.perf_counter()

    async def burst(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        payload = b"burst %d" % i
        await ws.send_bytes(payload)
        assert await receive(ws, len(payload)) == payload

    async with asyncio.timeout(120):
        await asyncio.gather(*(burst(i, ws) for i, ws in enumerate(sockets)))
    burst_seconds = time.perf_counter() - burst_start
    # A new connection while all are open, one at a time: its latency without the others'
    # handshakes queued in front of it.
    alone = []
    for i in range(min(count, 50)):
        start = time.perf_counter()
        async with http.ws_connect(url) as ws:
            alone.append(time.perf_counter() - start)
            await ws.send_bytes(b"alone %d" % i)
            assert (await ws.receive()).data == b"alone %d" % i
    await asyncio.gather(*(ws.close() for ws in sockets))
    async with asyncio.timeout(60):
        await asyncio.gather(*pumps)
    # The daemon frees a connection's slot and sockets when its WebSocket closes.
    async with asyncio.timeout(60):
        while len(await _get(http, f"{base}/net/{net_id}/tcp")) > 0:
            await asyncio.sleep(0.2)
    await asyncio.sleep(2)
    return {
        "opened": len(sockets),
        "listedOpen": len(listed),
        "bytesEchoed": moved,
        "openAllSeconds": round(opened, 3),
        "connect": summary(connects),
        "connectAlone": summary(alone),
        "echo": summary(rtts),
        "burstAllSeconds": round(burst_seconds, 3),
        "rssBefore": before,
        "rssOpen": rss_open,
        "rssClosed": memory(pid),
        "idleCpuPercentOpen": idle,
        "fdsBefore": fds_before,
        "fdsOpen": fds_open,
        "fdsClosed": descriptors(pid),
    }


# -- 3. nodes in one network, in one process ---------------------------------------------------


async def bench_nodes(count: int, pairs: int, work: Path) -> dict[str, Any]:
    from golem_vpn import Identity
    from golem_vpn.model import parse_deploy_net
    from golem_vpn.netapi.appkeys import AppKeys
    from golem_vpn.netapi.server import serve
    from golem_vpn.netapi.store import Store
    from golem_vpn.node.daemon import DaemonBackend
    from golem_vpn.node.relay import RelayService
    from golem_vpn.node.transport import UdpTransport

    raise_nofile(8 * count + 1024)
    pid = os.getpid()
    out: dict[str, Any] = {"nodes": count, "rssStart": memory(pid)}
    async with RelayService("127.0.0.1", 0) as relay_service:
        relay_addr = relay_service.local_addr
        requestor = DaemonBackend(UdpTransport(Identity.generate(), relay=relay_addr))
        providers: list[DaemonBackend] = []
        store = Store(work / "nodes.sqlite")
        key = AppKeys(store).create("bench", requestor.node_id)
        runner = await serve(requestor, store, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}/net-api/v1"
        http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        try:
            for _ in range(count):
                providers.append(DaemonBackend(UdpTransport(Identity.generate(), relay=relay_addr)))
            out["rssTransports"] = memory(pid)
            net = await _post(http, f"{base}/net", {"ip": "10.88.0.0/22"})
            net_id = net["id"]
            network = net["ip"].split("/")[0].rsplit(".", 2)[0]  # "10.88"
            ips = [f"{network}.{(i + 2) >> 8}.{(i + 2) & 255}" for i in range(count)]
            members: dict[str, str] = {"10.88.0.1": requestor.node_id}
            adds = []
            start = time.perf_counter()
            for provider, ip in zip(providers, ips, strict=True):
                took, _ = await timed(
                    lambda: _post(
                        http,
                        f"{base}/net/{net_id}/nodes",
                        {"id": provider.node_id, "ip": ip},  # noqa: B023
                    )
                )
                adds.append(took)
                members[ip] = provider.node_id
                deploy = {
                    "id": net_id,
                    "ip": "10.88.0.0",
                    "mask": net["mask"],
                    "gateway": net["gateway"],
                    "nodeIp": ip,
                    "nodes": dict(members),
                }
                (entry,) = parse_deploy_net({"net": [deploy]})
                provider.join_deploy(entry, requestor.node_id, requestor.transport.local_addr)
            added = time.perf_counter() - start
            want = count + 1

            def known() -> int:
                return sum(len(p.member.nodes(net_id)) == want for p in providers)

            async with asyncio.timeout(300):
                while known() < count:
                    await asyncio.sleep(0.01)
            converged = time.perf_counter() - start
            out["rssMembers"] = memory(pid)
            rng = random.Random(7)
            cold, warm = [], []
            for _ in range(pairs):
                a, b = rng.sample(range(count), 2)
                iface = providers[a].interface(net_id)
                cold.append(await iface.ping(ips[b], timeout=10.0))
                for _ in range(3):
                    warm.append(await iface.ping(ips[b], timeout=5.0))
            out.update(
                {
                    "members": known(),
                    "addAllSeconds": round(added, 3),
                    "addNode": summary(adds),
                    "convergedSeconds": round(converged, 3),
                    "fanOutAfterLastAddSeconds": round(converged - added, 3),
                    "pingFirst": summary(cold),
                    "ping": summary(warm),
                    "pairs": pairs,
                    "rssEnd": memory(pid),
                    "threads": len(os.listdir(f"/proc/{pid}/task")),
                }
            )
        finally:
            await http.close()
            await runner.cleanup()
            for p in providers:
                p.close()
            requestor.close()
            store.close()
    return out


# -- 4. nodes in one network, as processes -----------------------------------------------------


def procs_for(memory_mib: float, limit: int = 200) -> int:
    """As many daemons as half of ``MemAvailable`` holds at ``memory_mib`` each."""
    available = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            available = int(line.split()[1]) / 1024
    return max(2, min(limit, int(available / 2 / max(memory_mib, 1.0))))


async def bench_procs(count: int | None, work: Path) -> dict[str, Any]:
    from golem_vpn.demo.cluster import Children
    from golem_vpn.exeunit.client import AttachClient

    raise_nofile(16 * (count or 200) + 1024)
    out: dict[str, Any] = {}
    logs = work / "procs-logs"
    logs.mkdir()
    children = Children(logs)
    try:
        relay_child = await children.start(
            "relay", [PYTHON, "-m", "golem_vpn", "relay", "--listen", "127.0.0.1:0"], stdin=False
        )
        STARTED.append({"pid": relay_child.pid, "args": relay_child.argv})
        relay_addr = (await relay_child.first_line()).split()[-1]

        async def start(name: str) -> tuple[Any, dict[str, Any], str]:
            data_dir = work / name
            key = app_key(data_dir)
            argv = [PYTHON, "-m", "golem_vpn.demo.node", "--data-dir", str(data_dir)]
            child = await children.start(name, [*argv, "--relay", relay_addr])
            STARTED.append({"pid": child.pid, "args": child.argv})
            return child, await child.ready(timeout=600), key

        requestor, rinfo, rkey = await start("requestor")
        await asyncio.sleep(1)
        one = memory(requestor.pid)["VmRSS"]
        if count is None:
            count = procs_for(one)
            out["decided"] = f"{count} providers: half of MemAvailable at {one:.0f} MiB each"
        out["providers"] = count
        start_all = time.perf_counter()
        nodes = []
        for batch in range(0, count, 16):  # started 16 at a time (2 cores: no thundering herd)
            names = [f"provider-{i}" for i in range(batch, min(count, batch + 16))]
            nodes += await asyncio.gather(*(start(n) for n in names))
        out["startSeconds"] = round(time.perf_counter() - start_all, 2)
        headers = {"Authorization": f"Bearer {rkey}"}
        base = rinfo["api"] + "/net-api/v1"
        async with aiohttp.ClientSession(headers=headers) as http:
            net = await _post(http, f"{base}/net", {"ip": "10.99.0.0/22"})
            net_id = net["id"]
            members = {"10.99.0.1": rinfo["nodeId"]}
            ips = [f"10.99.{(i + 2) >> 8}.{(i + 2) & 255}" for i in range(count)]
            start_adds = time.perf_counter()
            for (child, info, key), ip in zip(nodes, ips, strict=True):
                await _post(http, f"{base}/net/{net_id}/nodes", {"id": info["nodeId"], "ip": ip})
                members[ip] = info["nodeId"]
                deploy = {
                    "net": [
                        {
                            "id": net_id,
                            "ip": "10.99.0.0",
                            "mask": net["mask"],
                            "gateway": net["gateway"],
                            "nodeIp": ip,
                            "nodes": dict(members),
                        }
                    ]
                }
                async with AttachClient(info["api"], key) as client:
                    attached = await client.attach(deploy, mode="userspace")
                await child.call("payload", attachment=attached.id, network=net_id, name=ip)
            added = time.perf_counter() - start_adds

            async def reaches(child: Any) -> float:
                got = await child.call(
                    "ping", host=ips[-1], count=1, timeout=2.0, until=120.0, within=180.0
                )
                assert got["rtts"][0] is not None, "never reached the last provider"
                return float(got["rtts"][0])

            rtts = await asyncio.gather(*(reaches(c) for c, _, _ in nodes[:-1]))
            converged = time.perf_counter() - start_adds
        rss = [memory(c.pid)["VmRSS"] for c, _, _ in nodes]
        out.update(
            {
                "addAndAttachSeconds": round(added, 2),
                "convergedSeconds": round(converged, 2),
                "lastProviderReachedBy": len(rtts),
                "ping": summary(rtts),
                "rssRequestorMiB": round(memory(requestor.pid)["VmRSS"], 1),
                "rssProviderMedianMiB": round(statistics.median(rss), 1),
                "rssProviderMaxMiB": round(max(rss), 1),
                "rssTotalMiB": round(sum(rss) + memory(requestor.pid)["VmRSS"], 1),
            }
        )
    finally:
        await children.stop()
    return out


# -- report ------------------------------------------------------------------------------------


def _ms(s: dict[str, Any]) -> str:
    return "-" if s["p50"] is None else f"{s['p50']:.2f} / {s['p99']:.2f} / {s['max']:.2f}"


def render(report: dict[str, Any]) -> str:
    lines: list[str] = []
    m = report["machine"]
    lines.append(f"{m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}")
    lines.append(f"{m['date']}, load average at start {m['loadavg']}")
    if (n := report.get("networks")) is not None:
        lines += ["", f"Networks in one daemon ({' '.join(n['flags'])}), ms p50 / p99 / max:", ""]
        ops = ["create", "list", "show", "addNode", "removeNode", "delete"]
        lines.append("| networks | " + " | ".join(ops) + " |")
        lines.append("|---:|" + "---:|" * len(ops))
        for row in n["latency"]:
            lines.append(f"| {row['networks']} | " + " | ".join(_ms(row[o]) for o in ops) + " |")
        lines += ["", "| networks | RSS MiB | peak (HWM) MiB |", "|---:|---:|---:|"]
        for row in n["rss"]:
            lines.append(f"| {row['networks']} | {row['VmRSS']:.1f} | {row['VmHWM']:.1f} |")
        r = n["restart"]
        lines += [
            "",
            f"RSS per 1,000 networks: {n['rssPer1000NetworksMiB']} MiB; all "
            f"{n['networks']} created in {n['createAllSeconds']} s ({_ms(n['createAll'])} ms); "
            f"database {n['databaseMiB']} MiB; idle with all of them: "
            f"{n['idleCpuPercent']} % of a core",
            f"Restart with {r['networks']} networks: ready after {r['readySeconds']} s, "
            f"first list answered after {r['answeredSeconds']} s, RSS "
            f"{r['rssAfter']['VmRSS']:.1f} MiB (before: {r['rssBefore']['VmRSS']:.1f})",
        ]
    if (g := report.get("gates")) is not None:
        lines += ["", f"Gate connections ({' '.join(g['flags'])}):", ""]
        lines.append(
            "| round | open | connect, all at once, ms p50/p99/max | connect, one more, ms "
            "| echo ms p50/p99/max | all echo at once s | RSS before / open / closed MiB "
            "| fds before / open / closed |"
        )
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(g["rounds"], 1):
            rss = "/".join(f"{r[k]['VmRSS']:.1f}" for k in ("rssBefore", "rssOpen", "rssClosed"))
            fds = f"{r['fdsBefore']} / {r['fdsOpen']} / {r['fdsClosed']}"
            lines.append(
                f"| {i} | {r['opened']} | {_ms(r['connect'])} | {_ms(r['connectAlone'])} | "
                f"{_ms(r['echo'])} | "
                f"{r['burstAllSeconds']} | {rss} | {fds} |"
            )
        lines += [
            "",
            f"RSS per 1,000 gate connections: {g['rssPer1000GatesMiB']} MiB; idle with all "
            f"open: {g['rounds'][0]['idleCpuPercentOpen']} % of a core",
        ]
    if (d := report.get("nodes")) is not None:
        lines += [
            "",
            f"{d['nodes']} providers in one network, one process: all added in "
            f"{d['addAllSeconds']} s (add-node {_ms(d['addNode'])} ms), every member knows "
            f"every other after {d['convergedSeconds']} s ({d['fanOutAfterLastAddSeconds']} s "
            f"after the last add); ping between {d['pairs']} random pairs: first "
            f"{_ms(d['pingFirst'])} ms, then {_ms(d['ping'])} ms; RSS "
            f"{d['rssStart']['VmRSS']:.0f} -> {d['rssTransports']['VmRSS']:.0f} (transports) -> "
            f"{d['rssEnd']['VmRSS']:.0f} MiB, {d['threads']} threads",
        ]
    if (p := report.get("procs")) is not None:
        lines += [
            "",
            f"{p['providers']} provider daemons as processes: started in {p['startSeconds']} s; "
            f"added and attached in {p['addAndAttachSeconds']} s, every one reaches the last "
            f"after {p['convergedSeconds']} s (ping {_ms(p['ping'])} ms); RSS per provider "
            f"{p['rssProviderMedianMiB']} MiB (max {p['rssProviderMaxMiB']}), requestor "
            f"{p['rssRequestorMiB']}, total {p['rssTotalMiB']} MiB",
        ]
        if "decided" in p:
            lines.append(p["decided"])
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "argv": sys.argv}
    with tempfile.TemporaryDirectory(prefix="gvl-load-") as tmp:
        work = Path(tmp)
        parts = args.parts.split(",")
        if "networks" in parts:
            print(f"networks: {args.networks}", file=sys.stderr, flush=True)
            report["networks"] = await bench_networks(args.networks, args.samples, work)
        if "gates" in parts:
            print(f"gates: {args.gates}", file=sys.stderr, flush=True)
            report["gates"] = await bench_gates(args.gates, work)
        if "nodes" in parts:
            print(f"nodes: {args.nodes}", file=sys.stderr, flush=True)
            report["nodes"] = await bench_nodes(args.nodes, args.pairs, work)
        if "procs" in parts:
            count = None if args.procs == "auto" else int(args.procs)
            print(f"procs: {args.procs}", file=sys.stderr, flush=True)
            report["procs"] = await bench_procs(count, work)
    report["processes"] = STARTED
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="networks,gates,nodes,procs")
    parser.add_argument("--networks", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=200, help="latency samples per op")
    parser.add_argument("--gates", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=50, help="random pairs pinged")
    parser.add_argument("--procs", default="auto", help="provider processes, or auto")
    parser.add_argument("--quick", action="store_true", help="a small run (checks it works)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    global IDLE_SECONDS
    if args.quick:
        IDLE_SECONDS = 1.0
        args.networks, args.samples, args.gates = 50, 10, 20
        args.nodes, args.pairs, args.procs = 10, 5, "3"
    report = asyncio.run(run(args))
    print(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
