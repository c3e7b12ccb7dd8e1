"""Faults (issue 12): daemons killed and restarted, the relay restarted, the underlay cut, the
data dir full or read-only; each case asserts that nothing acknowledged was lost or leaked.

Every node is a real daemon process: ``golem-vpn daemon`` itself where the test needs no
payload, else ``tests/fault_node.py`` (the daemon's own code, :func:`golem_vpn.node.daemon.run`,
with the demo's payload on a userspace attachment in the same process: what a Python ExeUnit
embedding the library runs), and ``golem-vpn relay``. Processes are killed with SIGKILL by PID
and started again on the same data dir. Where the underlay matters (the cut) the nodes run in
network namespaces of their own (``gvf-<pid>-*``, 198.18.0.0/15 underlay) and nftables drops
their UDP; the full and read-only data dirs are tmpfs mounts. Transfers are checked by SHA-256
at the receiver, the database by ``PRAGMA integrity_check`` and its rows.

Each test cleans up by PID and by name (processes, namespaces, mounts) whatever happens. The
kill tests run as any user; the cut and the data-dir tests need root (``ip``, ``nft``,
``mount``) and skip without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from golem_vpn.demo.cluster import Child, Children
from golem_vpn.node.membership import ANNOUNCE_RETRIES

NODE_SCRIPT = Path(__file__).with_name("fault_node.py")
PREFIX = f"gvf-{os.getpid()}-"
PYTHON = sys.executable

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux-only (netns, tmpfs)")


def _root(*tools: str) -> None:
    """Skips the test unless it runs as root with ``tools`` installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nftables, mounts)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


# -- processes ----------------------------------------------------------------------------------


class Cluster:
    """The processes one test started (by PID), the namespaces it made (by name)."""

    def __init__(self, work: Path) -> None:
        (work / "logs").mkdir(parents=True, exist_ok=True)
        self.work = work
        self.children = Children(work / "logs")
        self.namespaces: list[str] = []
        self._starts = 0

    def _name(self, name: str) -> str:
        self._starts += 1
        return f"{name}.{self._starts}"

    @staticmethod
    def _in(ns: str | None, argv: list[str]) -> list[str]:
        return argv if ns is None else ["ip", "netns", "exec", ns, *argv]

    async def relay(self, listen: str = "127.0.0.1:0", ns: str | None = None) -> tuple[Child, str]:
        """``golem-vpn relay``; returns it and the address it listens on."""
        argv = [PYTHON, "-m", "golem_vpn", "relay", "--listen", listen]
        child = await self.children.start(self._name("relay"), self._in(ns, argv), stdin=False)
        line = await child.first_line()
        assert line.startswith("relay listening on "), line
        return child, line.split()[-1]

    async def node(
        self,
        name: str,
        data_dir: Path,
        *,
        relay: str | None = None,
        ns: str | None = None,
        listen: str = "127.0.0.1:0",
        hole_punching: bool = True,
    ) -> tuple[Child, dict[str, Any]]:
        """A ``fault_node.py`` daemon; returns it and its ready info (``nodeId``, ``api``,
        ``key``...)."""
        argv = [PYTHON, str(NODE_SCRIPT), "--data-dir", str(data_dir), "--listen", listen]
        if relay:
            argv += ["--relay", relay]
        if not hole_punching:
            argv.append("--no-hole-punching")
        child = await self.children.start(self._name(name), self._in(ns, argv))
        return child, await child.ready()

    async def daemon(self, data_dir: Path, *extra: str) -> tuple[Child, str]:
        """``golem-vpn daemon`` on loopback; returns it and its Net API root URL."""
        argv = [PYTHON, "-m", "golem_vpn", "daemon", "--data-dir", str(data_dir)]
        argv += ["--api", "127.0.0.1:0", "--listen", "127.0.0.1:0", *extra]
        child = await self.children.start(self._name("daemon"), argv, stdin=False)
        line = await child.first_line()
        assert line.startswith("golem-vpn daemon "), line
        return child, line.split("Net API ")[1].split(",")[0]

    @staticmethod
    async def kill(child: Child) -> None:
        """SIGKILL by PID, and reaped."""
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.wait_for(child.proc.wait(), 10)
        await child.stop_reading()

    def netns(self, name: str) -> str:
        ns = PREFIX + name
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    async def close(self) -> None:
        await self.children.stop()
        for ns in reversed(self.namespaces):
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)  # only this test's processes run there
            _run("ip", "netns", "del", ns, check=False)

    def logs(self) -> str:
        out = []
        for child in self.children.all:
            out.append(f"--- {child.name} (PID {child.pid}, status {child.proc.returncode})")
            out.append(child.log_tail(20))
        return "\n".join(out)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=check)


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        await c.close()


def run(coro: Any, budget: float) -> Any:
    """Runs a test's coroutine with a deadline."""
    return asyncio.run(asyncio.wait_for(coro, budget))


async def ping_until(node: Child, host: str, within: float = 20.0) -> float:
    """Pings ``host`` from ``node``'s payload until it answers; returns the seconds waited."""
    got = await node.call("ping", host=host, count=1, timeout=0.5, until=within, within=within + 10)
    assert got["rtts"][0] is not None, f"{node.name}: no echo from {host} within {within} s"
    return float(got["waited"])


async def flowing(node: Child, bytes_in: int, within: float) -> None:
    """Waits until ``node``'s tunnels have taken in ``bytes_in`` bytes in all."""
    deadline = time.monotonic() + within
    while (await node.call("stats"))["tunnel"]["bytes_in"] < bytes_in:
        assert time.monotonic() < deadline, f"{node.name}: no traffic within {within} s"
        await asyncio.sleep(0.02)


def exact(result: dict[str, Any], size: int) -> bool:
    """Whether a ``send`` arrived whole: the receiver hashed every byte the sender sent."""
    return (
        "error" not in result
        and result["receivedBytes"] == size
        and result["sha256Received"] == result["sha256Sent"]
    )


# -- provider killed mid-transfer ----------------------------------------------------------------


def test_provider_killed_mid_transfer_comes_back(tmp_path: Path) -> None:
    """A provider daemon is killed (SIGKILL) while it receives a transfer and while two other
    providers exchange one; restarted on the same data dir (same identity) and attached again
    by its runtime, it reaches every node again and a new transfer to it is exact, while the
    other providers' transfer completes exact across the kill."""

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            _, relay = await c.relay()
            req, req_info = await c.node("requestor", tmp_path / "req", relay=relay)
            provs = {}
            for name in ("p1", "p2", "p3"):
                provs[name] = await c.node(name, tmp_path / name, relay=relay)
            ids = {name: info["nodeId"] for name, (_, info) in provs.items()}
            # p3 joins after p1's and p2's DEPLOYs were made: p1's runtime holds a DEPLOY
            # without it, and p1 learns of p3 from the requestor's control messages only.
            net = await req.call("network", cidr="192.168.77.0/24", nodes=[ids["p1"], ids["p2"]])
            added = await req.call("add_node", network=net["id"], node=ids["p3"])
            net["ips"][ids["p3"]] = added["ip"]
            net["deploys"][ids["p3"]] = added["deploy"]
            ip = {name: net["ips"][ids[name]] for name in ids}
            gateway = net["deploys"][ids["p1"]]["net"][0]["gateway"]
            for name, (child, _) in provs.items():
                await child.call("attach", deploy=net["deploys"][ids[name]], name=name)
            p1, p2, p3 = (provs[n][0] for n in ("p1", "p2", "p3"))
            for child in (p1, p2, p3):
                await ping_until(child, gateway)
            await ping_until(p2, ip["p3"])
            await ping_until(p3, ip["p1"])

            # Two transfers in flight: p3 -> p1 (p1 dies under it), p2 -> p3 (must not care).
            big = 96 << 20
            start = {n: (await provs[n][0].call("stats"))["tunnel"]["bytes_in"] for n in provs}
            doomed = asyncio.ensure_future(
                p3.call("send_to", host=ip["p1"], bytes=big, timeout=60, within=90)
            )
            across = asyncio.ensure_future(
                p2.call("send_to", host=ip["p3"], bytes=big, timeout=60, within=90)
            )
            # Both flowing: p1 (receiving only the doomed one) and p3 have 4 MiB in.
            for name, child in (("p1", p1), ("p3", p3)):
                await flowing(child, start[name] + (4 << 20), 30)
            assert not doomed.done(), "the transfer to p1 ended before the kill"
            await c.kill(p1)
            killed_at = time.monotonic()
            assert not across.done(), "the transfer ended before the kill"

            # The runtime notices its daemon died, starts it again and attaches again with the
            # DEPLOY it holds (an attachment belongs to the running payload and does not
            # survive its daemon); that DEPLOY predates p3.
            p1, info = await c.node("p1", tmp_path / "p1", relay=relay)
            assert info["nodeId"] == ids["p1"]  # same data dir, same identity
            await p1.call("attach", deploy=net["deploys"][ids["p1"]], name="p1")
            assert ids["p3"] not in net["deploys"][ids["p1"]]["net"][0]["nodes"].values()

            # The other providers' transfer ran across the kill, exactly; the one to the
            # killed daemon failed (reset by the new instance, which knows p3 from the
            # requestor, or timed out), never "exact".
            got = await across
            assert exact(got, big), got
            failed = await doomed
            assert not exact(failed, big), failed
            doomed_for = time.monotonic() - killed_at

            # A node that still holds a session with the old instance reaches the new one (the
            # restarted daemon has no sessions: the tunnel must shake hands again), exactly;
            # p3 too, which the new instance knows only from the requestor.
            small = 4 << 20
            for sender in (p2, p3):
                to_p1 = await sender.call(
                    "send_to", host=ip["p1"], bytes=small, timeout=30, within=40
                )
                assert exact(to_p1, small), (sender.name, to_p1)
            # Its tunnels to the requestor and the other providers come back too.
            for host in (gateway, ip["p2"], ip["p3"]):
                await ping_until(p1, host)
            back_after = time.monotonic() - killed_at
            from_p1 = await p1.call("send_to", host=ip["p3"], bytes=small, timeout=30, within=40)
            assert exact(from_p1, small), from_p1
            # The requestor's view did not change: every node is up, none was removed.
            paths = await req.call("paths", peers=list(ids.values()))
            assert all(p["path"] != "down" for p in paths.values()), paths
            print(
                f"the transfer to the killed provider failed {doomed_for:.2f} s after the kill "
                f"({failed.get('error')}); provider back (re-attached, every node reached) "
                f"{back_after:.2f} s after"
            )
            del req_info

    run(scenario(), 120)


# -- requestor killed during a burst of API calls ------------------------------------------------


def _node_id(rng: random.Random) -> str:
    return "0x" + rng.randbytes(20).hex()


def _app_key(data_dir: Path) -> str:
    """An app key made in ``data_dir`` before its daemon starts (as ``golem-vpn app-key``)."""
    from golem_vpn.netapi.appkeys import AppKeys
    from golem_vpn.netapi.store import Store
    from golem_vpn.node import identity

    ident, _ = identity.load_or_create(data_dir)
    with Store.in_data_dir(data_dir) as store:
        return AppKeys(store).create("fault", ident.node_id)


async def _state(client: Any) -> dict[str, dict[str, Any]]:
    """Every network of the key's identity as the API serves it: nodes and addresses."""
    out = {}
    for net in await client.list_networks():
        nodes = {n.id: n.ip for n in await client.list_nodes(net.id)}
        addresses = {a.ip.partition("/")[0] for a in await client.list_addresses(net.id)}
        out[net.id] = {"ip": net.ip, "nodes": nodes, "addresses": addresses}
    return out


def _db_state(data_dir: Path) -> dict[str, dict[str, Any]]:
    """The same from the database file, after checking it is whole and has no orphan rows."""
    db = sqlite3.connect(data_dir / "golem-vpn.db", timeout=10)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        for table in ("nodes", "addresses"):
            orphans = db.execute(
                f"SELECT COUNT(*) FROM {table} WHERE network_id NOT IN (SELECT id FROM networks)"
            ).fetchone()[0]
            assert orphans == 0, f"{orphans} orphan rows in {table}"
        out: dict[str, dict[str, Any]] = {}
        for net_id, ip, requestor_ip in db.execute("SELECT id, ip, requestor_ip FROM networks"):
            rows = db.execute("SELECT node_id, ip FROM nodes WHERE network_id = ?", (net_id,))
            extra = db.execute("SELECT ip FROM addresses WHERE network_id = ?", (net_id,))
            out[net_id] = {
                "ip": ip,
                "nodes": dict(rows.fetchall()),
                "addresses": {requestor_ip} | {r[0] for r in extra.fetchall()},
            }
        return out
    finally:
        db.close()


def test_requestor_killed_during_api_burst_keeps_what_it_acknowledged(tmp_path: Path) -> None:
    """``golem-vpn daemon`` (the requestor) is killed with SIGKILL in the middle of 80
    concurrent creates, adds and removes, at a random acknowledgement. Restarted on the same
    data dir, it serves every network, node and address it acknowledged and none it
    acknowledged removing; the database passes ``integrity_check`` with no orphan rows and
    holds exactly what the API serves; and the gate reaches a provider's payload again."""
    from golem_vpn.netapi.client import Client
    from golem_vpn.sdk import Network

    seed = int(os.environ.get("GV_FAULT_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    print(f"seed {seed}")
    data_dir = tmp_path / "req"
    key = _app_key(data_dir)

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            _, relay = await c.relay()
            daemon, api = await c.daemon(data_dir, "--relay", relay)
            p1, p1_info = await c.node("p1", tmp_path / "p1", relay=relay)
            client = Client(api, key)
            # A network with a provider whose payload the gate will reach after the restart.
            gated = await Network.create(client, "192.168.60.0/24")
            await gated.add_node(p1_info["nodeId"])
            await p1.call("attach", deploy=gated.deploy_args(p1_info["nodeId"]), name="p1")
            # Networks the burst adds to and removes from (acknowledged before it starts).
            nets = []
            before: dict[str, list[str]] = {}
            for i in range(5):
                net = await client.create_network(f"10.90.{i}.0/24")
                nets.append(net.id)
                before[net.id] = []
                for j in range(4):
                    node = _node_id(rng)
                    await client.add_node(net.id, node, f"10.90.{i}.{10 + j}")
                    before[net.id].append(node)
            doomed = [(await client.create_network(f"10.91.{i}.0/24")).id for i in range(3)]
            for i, net_id in enumerate(doomed):
                await client.add_node(net_id, _node_id(rng), f"10.91.{i}.9")
            expected = await _state(client)

            calls: list[tuple[str, tuple[Any, ...]]] = []
            calls += [("create", (f"10.100.{i}.0/24",)) for i in range(20)]
            for k in range(30):
                i = k % 5
                calls.append(("add_node", (nets[i], _node_id(rng), f"10.90.{i}.{100 + k}")))
            calls += [("add_address", (nets[k % 5], f"10.90.{k % 5}.{200 + k}")) for k in range(12)]
            for i in range(5):
                calls += [("remove_node", (nets[i], node)) for node in before[nets[i]][:3]]
            calls += [("remove_network", (net_id,)) for net_id in doomed]
            rng.shuffle(calls)
            kill_after = rng.randint(5, len(calls) - 10)
            acked: list[tuple[str, tuple[Any, ...], Any]] = []
            killed = asyncio.Event()
            clients = [Client(api, key, timeout=20) for _ in range(8)]

            async def call(index: int, op: str, args: tuple[Any, ...]) -> None:
                fn = {
                    "create": clients[index % 8].create_network,
                    "add_node": clients[index % 8].add_node,
                    "add_address": clients[index % 8].add_address,
                    "remove_node": clients[index % 8].remove_node,
                    "remove_network": clients[index % 8].remove_network,
                }[op]
                await asyncio.sleep(rng.random() * 0.05)
                try:
                    answer = await fn(*args)
                except Exception:  # no answer: the daemon died under it (or refused it)
                    return
                # An answer read after the kill was still sent before it: it counts.
                acked.append((op, args, answer))
                if len(acked) == kill_after:
                    os.kill(daemon.pid, signal.SIGKILL)
                    killed.set()

            await asyncio.gather(*(call(i, op, args) for i, (op, args) in enumerate(calls)))
            if not killed.is_set():  # every call answered before the chosen one: kill now
                os.kill(daemon.pid, signal.SIGKILL)
            await asyncio.wait_for(daemon.proc.wait(), 10)
            assert daemon.proc.returncode == -signal.SIGKILL
            assert acked  # (answers already sent when the kill came may make it every call)
            for each in clients:
                await each.close()
            await client.close()

            # What the acknowledged calls promise.
            for op, args, answer in acked:
                if op == "create":
                    # The requestor's own first address comes with the network.
                    expected[answer.id] = {"ip": answer.ip, "nodes": {}, "addresses": set()}
                    expected[answer.id]["addresses"].add(answer.gateway)
                elif op == "add_node":
                    expected[args[0]]["nodes"][args[1]] = args[2]
                elif op == "add_address":
                    expected[args[0]]["addresses"].add(args[1])
                elif op == "remove_node":
                    expected[args[0]]["nodes"].pop(args[1], None)
                elif op == "remove_network":
                    expected.pop(args[0], None)

            daemon, api = await c.daemon(data_dir, "--relay", relay)
            async with Client(api, key) as client:
                served = await _state(client)
                stored = _db_state(data_dir)
                assert served == stored  # the API serves exactly what the file holds
                # Everything acknowledged is there, and nothing acknowledged as removed; calls
                # cut off by the kill may have happened or not, each one whole.
                unanswered = [c for c in calls if c not in [(op, a) for op, a, _ in acked]]
                maybe_removed = {a[1] for op, a in unanswered if op == "remove_node"}
                for net_id, want in expected.items():
                    if net_id not in served:
                        assert ("remove_network", (net_id,)) in unanswered, f"{net_id} lost"
                        continue
                    got = served[net_id]
                    assert got["ip"] == want["ip"]
                    assert want["addresses"] <= got["addresses"], (net_id, want, got)
                    for node, ip in want["nodes"].items():
                        if node not in got["nodes"]:
                            assert node in maybe_removed, f"acknowledged node {node} lost"
                        else:
                            assert got["nodes"][node] == ip
                # Whatever is there beyond the acknowledged is a whole unanswered call.
                for net_id, got in served.items():
                    want = expected.get(net_id, {"nodes": {}, "addresses": set()})
                    for node, ip in got["nodes"].items():
                        if node not in want["nodes"]:
                            assert ("add_node", (net_id, node, ip)) in unanswered, (node, ip)
                    for ip in got["addresses"] - want["addresses"]:
                        assert ("add_address", (net_id, ip)) in unanswered or net_id not in expected
                for net_id in served.keys() - expected.keys():  # created, not acknowledged
                    assert any(op == "create" for op, _ in unanswered), net_id
                    assert served[net_id]["ip"] in [f"{a[0]}" for op, a in unanswered]
                for op, args, _ in acked:
                    if op == "remove_node":
                        assert args[1] not in served[args[0]]["nodes"]
                    if op == "remove_network":
                        assert args[0] not in served
                # The gate works again: the requestor's new instance reaches the payload.
                reader, writer = await asyncio.wait_for(
                    client.open_connection(
                        gated.network_id, str(gated.nodes[p1_info["nodeId"]].ip), 80
                    ),
                    30,
                )
                writer.write(b"GET /again HTTP/1.0\r\n\r\n")
                page = await asyncio.wait_for(reader.read(), 20)
                writer.close()
                assert page.split(b"\r\n", 1)[0].endswith(b" 200 OK"), page
                assert b"hello from p1 (192.168.60.2), you asked for /again" in page, page
            print(f"killed after {len(acked)} of {len(calls)} acknowledged calls")

    run(scenario(), 120)


# -- relay restarted -----------------------------------------------------------------------------

#: Seconds relayed peers may take to exchange again after their relay came back (generous: the
#: measured time is in the report, not here).
RELAY_RECOVERY = 10.0


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_relay_restart_relayed_peers_recover(tmp_path: Path) -> None:
    """Two providers that reach each other only through the relay (hole punching off) keep
    exchanging after the relay is killed (SIGKILL) and started again on the same port: a
    transfer running across the restart completes exact, echoes come back within
    :data:`RELAY_RECOVERY` seconds of the relay's return, with no API call, and the path
    stays relayed. (Before the relay's register-again answer, nodes noticed only at their next
    registration, 30 s apart: 28 s here.)"""

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            address = f"127.0.0.1:{_free_udp_port()}"
            relay, _ = await c.relay(address)
            nodes = {}
            for name in ("requestor", "p1", "p2"):
                nodes[name] = await c.node(
                    name, tmp_path / name, relay=address, hole_punching=False
                )
            req = nodes["requestor"][0]
            ids = {n: nodes[n][1]["nodeId"] for n in ("p1", "p2")}
            net = await req.call("network", cidr="192.168.78.0/24", nodes=list(ids.values()))
            ip = {n: net["ips"][ids[n]] for n in ids}
            p1, p2 = nodes["p1"][0], nodes["p2"][0]
            for name, child in (("p1", p1), ("p2", p2)):
                await child.call("attach", deploy=net["deploys"][ids[name]], name=name)
            await ping_until(p1, ip["p2"])
            paths = await p1.call("paths", peers=[ids["p2"]])
            assert paths[ids["p2"]]["path"] == "relayed", paths
            # Past the providers' join announcements (membership.ANNOUNCE_RETRIES): a relay
            # restart while one is in flight leaves the pair cut off for more than
            # RELAY_RECOVERY (seen here, not yet understood; noted on issue 12).
            await asyncio.sleep(ANNOUNCE_RETRIES[-1] + 1.0)
            before = await p1.call("stats")

            size = 8 << 20
            across = asyncio.ensure_future(
                p1.call("send_to", host=ip["p2"], bytes=size, timeout=90, within=100)
            )
            await flowing(p2, 1 << 20, 30)
            await c.kill(relay)
            await asyncio.sleep(1.0)  # the relay is gone for a second: nothing gets through
            relay, _ = await c.relay(address)
            back = time.monotonic()
            waited = await ping_until(p1, ip["p2"], within=RELAY_RECOVERY)
            recovered = time.monotonic() - back
            assert recovered <= RELAY_RECOVERY, recovered
            got = await across
            assert exact(got, size), got
            again = await p2.call("send_to", host=ip["p1"], bytes=size, timeout=30, within=40)
            assert exact(again, size), again
            paths = await p1.call("paths", peers=[ids["p2"]])
            assert paths[ids["p2"]]["path"] == "relayed", paths
            after = await p1.call("stats")
            assert after["relayed_out"] > before["relayed_out"]
            # The restarted relay told the sender to register again at its first forward.
            assert after["relay_register_again"] > before["relay_register_again"]
            print(
                f"relayed peers exchange again {recovered:.2f} s after the relay's restart "
                f"(first echo after {waited:.2f} s of pinging); transfer across it "
                f"{got['seconds']:.1f} s"
            )

    run(scenario(), 120)


# -- underlay cut ----------------------------------------------------------------------------------

#: How long the underlay is cut: longer than the tunnel's REKEY_TIMEOUT (5 s), so handshake
#: retries run into the cut too.
CUT_SECONDS = 8.0


def _nft(ns: str, script: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )


def test_underlay_cut_and_restored_traffic_resumes(tmp_path: Path) -> None:
    """Three daemons and a relay in namespaces of their own on one bridge (198.18.77.0/24).
    nftables in provider 1's namespace drops all its UDP (the direct path to provider 2 and
    the relay alike) for :data:`CUT_SECONDS` while it streams to provider 2, then the rule is
    deleted: with no API call the transfer completes exact, both ways work, and the requestor
    and provider 2 kept talking through the cut."""
    _root("ip", "nft")

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            hub = c.netns("hub")
            _run("ip", "-n", hub, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", hub, "addr", "add", "198.18.77.1/24", "dev", "br0")
            _run("ip", "-n", hub, "link", "set", "br0", "up")
            where = {}
            for k, name in enumerate(("req", "p1", "p2"), 2):
                ns = c.netns(name)
                _run("ip", "link", "add", "u0", "netns", ns, "type", "veth", "peer", "name",
                     f"b{k}", "netns", hub)  # fmt: skip
                _run("ip", "-n", hub, "link", "set", f"b{k}", "master", "br0", "up")
                _run("ip", "-n", ns, "addr", "add", f"198.18.77.{k}/24", "dev", "u0")
                _run("ip", "-n", ns, "link", "set", "u0", "up")
                where[name] = (ns, f"198.18.77.{k}")
            _, relay = await c.relay("198.18.77.1:7464", ns=hub)
            nodes = {}
            for name, (ns, addr) in where.items():
                nodes[name] = await c.node(
                    name, tmp_path / name, relay=relay, ns=ns, listen=f"{addr}:11500"
                )
            req, p1, p2 = (nodes[n][0] for n in ("req", "p1", "p2"))
            ids = {n: nodes[n][1]["nodeId"] for n in ("p1", "p2")}
            net = await req.call("network", cidr="192.168.79.0/24", nodes=list(ids.values()))
            ip = {n: net["ips"][ids[n]] for n in ids}
            gateway = net["deploys"][ids["p1"]]["net"][0]["gateway"]
            for name, child in (("p1", p1), ("p2", p2)):
                await child.call("attach", deploy=net["deploys"][ids[name]], name=name)
            for child in (p1, p2):
                await ping_until(child, gateway)
            await ping_until(p1, ip["p2"])

            size = 16 << 20
            start = (await p2.call("stats"))["tunnel"]["bytes_in"]
            across = asyncio.ensure_future(
                p1.call("send_to", host=ip["p2"], bytes=size, timeout=90, within=100)
            )
            await flowing(p2, start + (1 << 20), 30)
            p1_ns = where["p1"][0]
            _nft(
                p1_ns,
                "table inet gvf_cut {\n"
                " chain in { type filter hook input priority 0; meta l4proto udp drop; }\n"
                " chain out { type filter hook output priority 0; meta l4proto udp drop; }\n"
                "}\n",
            )
            cut_at = time.monotonic()
            try:
                await asyncio.sleep(1.0)
                stalled = (await p2.call("stats"))["tunnel"]["bytes_in"]
                # The rest of the network does not notice: provider 2 and the requestor talk.
                assert (await p2.call("ping", host=gateway, count=3, timeout=2.0))["rtts"][0]
                lost = await p1.call("ping", host=ip["p2"], count=1, timeout=1.0)
                assert lost["rtts"] == [None]  # the cut is real
                await asyncio.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
                assert not across.done(), "the transfer ended during the cut"
                assert (await p2.call("stats"))["tunnel"]["bytes_in"] - stalled < 64 << 10
            finally:
                _nft(p1_ns, "delete table inet gvf_cut\n")
            restored = time.monotonic()
            waited = await ping_until(p1, ip["p2"], within=30)
            got = await across
            resumed = time.monotonic() - restored
            assert exact(got, size), got
            back = await p2.call("send_to", host=ip["p1"], bytes=4 << 20, timeout=30, within=40)
            assert exact(back, 4 << 20), back
            await ping_until(p1, gateway)
            print(
                f"underlay cut {CUT_SECONDS:g} s: first echo {waited:.2f} s after the restore, "
                f"the transfer across the cut done {resumed:.2f} s after it"
            )

    run(scenario(), 120)


# -- full disk, read-only data dir ---------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path``, unmounted (lazily if still busy) afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield path
    finally:
        if _run("umount", str(path), check=False).returncode != 0:
            _run("umount", "-l", str(path), check=False)


def _fill(directory: Path) -> Path:
    """Fills the file system of ``directory`` to the last byte; returns the filler file."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(chunk)
            except OSError:
                break
        while len(chunk) > 1:  # the last partial blocks too
            chunk = chunk[: len(chunk) // 2]
            with contextlib.suppress(OSError):
                out.write(chunk)
    return filler


async def _refused(call: Any, status: int, words: str) -> str:
    """Runs a Net API call that must be refused with ``status`` and a message with ``words``."""
    from golem_vpn.errors import NetApiError

    with pytest.raises(NetApiError) as caught:
        await call
    assert caught.value.status == status, caught.value
    assert words in caught.value.message, caught.value.message
    return caught.value.message


def test_full_and_read_only_data_dir_refuse_changes_whole(tmp_path: Path) -> None:
    """``golem-vpn daemon`` on a small tmpfs data dir. Filled to the last byte, every change
    (create, add node, add address, remove node, remove network) is a 507 naming the full
    disk and the data dir; reads work and the daemon keeps running. Once there is room again
    the state is exactly what was acknowledged and the same changes succeed. Remounted
    read-only, the daemon refuses to start with one line naming the data dir and writes
    nothing; writable again, it serves what was acknowledged and the database passes
    ``integrity_check``."""
    _root("mount", "umount")
    from golem_vpn.netapi.client import Client

    async def scenario(data_dir: Path) -> None:
        key = _app_key(data_dir)
        async with cluster(tmp_path / "work") as c:
            daemon, api = await c.daemon(data_dir)
            async with Client(api, key) as client:
                net = await client.create_network("10.70.0.0/24")
                node_a, node_b = "0x" + "a1" * 20, "0x" + "b2" * 20
                await client.add_node(net.id, node_a, "10.70.0.10")
                await client.add_node(net.id, node_b, "10.70.0.11")
                await client.add_address(net.id, "10.70.0.200")
                acked = await _state(client)

                changes = [
                    lambda: client.create_network("10.71.0.0/24"),
                    lambda: client.add_node(net.id, "0x" + "c3" * 20, "10.70.0.12"),
                    lambda: client.add_address(net.id, "10.70.0.201"),
                    lambda: client.remove_node(net.id, node_b),
                    lambda: client.remove_network(net.id),
                ]
                filler = _fill(data_dir)
                for change in changes:
                    message = await _refused(change(), 507, "disk is full")
                assert str(data_dir) in message
                assert await _state(client) == acked  # reads work, nothing changed
                assert (await client.status()).node_id
                filler.unlink()
                assert await _state(client) == acked
                await client.add_node(net.id, "0x" + "c3" * 20, "10.70.0.12")
                await client.remove_node(net.id, "0x" + "c3" * 20)
                assert await _state(client) == acked

                assert daemon.proc.returncode is None  # it kept running through it
                await client.add_address(net.id, "10.70.0.201")
                await client.remove_node(net.id, node_b)
                acked = await _state(client)

            # Read-only: the kernel refuses to remount a file system read-only while a process
            # has files open on it for writing (EBUSY), as the running daemon does (its
            # database); so the daemon is stopped, the data dir remounted read-only and the
            # daemon started on it: one clear error, nothing written.
            await c.kill(daemon)
            files = {p.name: p.read_bytes() for p in data_dir.iterdir()}
            _run("mount", "-o", "remount,ro", str(data_dir))
            try:
                refused = await c.children.start(
                    "read-only",
                    [PYTHON, "-m", "golem_vpn", "daemon", "--data-dir", str(data_dir),
                     "--api", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
                    stdin=False,
                )  # fmt: skip
                assert await asyncio.wait_for(refused.proc.wait(), 30) == 1
                error = refused.log.read_text()
                assert f"cannot use the data dir {data_dir}: Read-only file system" in error
                assert "Traceback" not in error
            finally:
                _run("mount", "-o", "remount,rw", str(data_dir))
            assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == files

            daemon, api = await c.daemon(data_dir)
            async with Client(api, key) as client:
                assert await _state(client) == acked == _db_state(data_dir)
            await c.children.stop()  # before the unmount

    with tmpfs(tmp_path / "data", "2m") as data_dir:
        run(scenario(data_dir), 60)


def test_database_turned_read_only_under_the_api_refuses_changes_whole(tmp_path: Path) -> None:
    """A file system that turns read-only under a running daemon (the kernel's
    ``errors=remount-ro`` after disk errors; a test cannot remount one read-only while the
    daemon holds its database open for writing) makes SQLite refuse writes with
    SQLITE_READONLY, which ``PRAGMA query_only`` gives too: every change is a 503 naming the
    data dir, reads work, nothing changes, and writes work again once the database does."""
    from test_netapi_server import PROV_A, PROV_B, running

    async def scenario() -> None:
        async with running(tmp_path / "golem-vpn.db") as api:
            net_id = await api.create("10.72.0.0/24")
            assert (
                await api.call("POST", f"/net/{net_id}/nodes", {"id": PROV_A, "ip": "10.72.0.2"})
            )[0] == 200
            before = [await api.call("GET", "/net"), await api.call("GET", f"/net/{net_id}/nodes")]
            with api.store._lock:
                api.store._db.execute("PRAGMA query_only = ON")
            changes = [
                ("POST", "/net", {"ip": "10.73.0.0/24"}),
                ("POST", f"/net/{net_id}/nodes", {"id": PROV_B, "ip": "10.72.0.3"}),
                ("POST", f"/net/{net_id}/addresses", {"ip": "10.72.0.200"}),
                ("DELETE", f"/net/{net_id}/nodes/{PROV_A}", None),
                ("DELETE", f"/net/{net_id}", None),
            ]
            for method, path, body in changes:
                status, answer = await api.call(method, path, body)
                assert status == 503, (method, path, status, answer)
                assert "cannot be written" in answer["message"], answer
                assert str(tmp_path) in answer["message"], answer
            after = [await api.call("GET", "/net"), await api.call("GET", f"/net/{net_id}/nodes")]
            assert after == before
            with api.store._lock:
                api.store._db.execute("PRAGMA query_only = OFF")
            for method, path, body in changes[1:4]:
                assert (await api.call(method, path, body))[0] == 200, (method, path)

    run(scenario(), 30)
