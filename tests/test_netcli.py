"""``golem-vpn net ...`` against golem-vpn's real Net API on a loopback port.

The server (:func:`golem_vpn.netapi.server.serve` over a ``LocalBackend`` and a SQLite store in
``tmp_path``) runs on its own event loop in a background thread; the tests call the CLI
synchronously in the test thread (:func:`golem_vpn.netcli.main`, output through ``capsys``), as
a user's shell would. ``connect`` runs as a subprocess configured by environment variables, so
that Ctrl-C (SIGINT) is the real thing; the payload it reaches is an echo server on a provider's
userspace stack in the server's process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from golem_vpn.netapi.appkeys import AppKeys
from golem_vpn.netapi.backend import LocalBackend
from golem_vpn.netapi.client import Client
from golem_vpn.netapi.server import serve
from golem_vpn.netapi.store import Store
from golem_vpn.netcli import main
from vpn_helpers import echo, payload

OWNER = "0x" + "a1" * 20
OTHER = "0x" + "e5" * 20
PROV_A = "0x" + "b2" * 20
PROV_B = "0x" + "c3" * 20
ECHO_PORT = 7000
GOLEM_VPN = [sys.executable, "-m", "golem_vpn"]
T = TypeVar("T")


@dataclass
class Daemon:
    """The Net API running in a background thread."""

    root: str
    key: str
    other_key: str
    backend: LocalBackend
    loop: asyncio.AbstractEventLoop

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Runs ``coro`` on the server's loop; returns its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=15)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("YAGNA_APPKEY", "YAGNA_API_URL", "YAGNA_NET_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="netapi", daemon=True)
    thread.start()
    parts: dict[str, Any] = {}

    async def start() -> Daemon:
        store = Store(tmp_path / "netapi.db")
        backend = LocalBackend(OWNER)
        keys = AppKeys(store)
        key, other_key = keys.create("cli", OWNER), keys.create("other", OTHER)
        runner = await serve(backend, store, "127.0.0.1", 0, connect_timeout=0.5)
        parts.update(store=store, runner=runner)
        host, port = runner.addresses[0][:2]
        return Daemon(f"http://{host}:{port}", key, other_key, backend, loop)

    async def stop() -> None:
        await parts["runner"].cleanup()
        await running.backend.close()
        parts["store"].close()

    running = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=15)
    try:
        yield running
    finally:
        running.call(stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def net(
    capsys: pytest.CaptureFixture[str], daemon: Daemon | None, *argv: str, key: str | None = None
) -> tuple[int, str, str]:
    """Runs ``golem-vpn net ARGV --url <daemon> --app-key <key>``; returns (code, out, err)."""
    capsys.readouterr()
    # ``--app-key=KEY``: a generated key may start with "-", which argparse takes for an option.
    extra = [] if daemon is None else [f"--url={daemon.root}", f"--app-key={key or daemon.key}"]
    code = main(["net", *argv, *extra])
    out, err = capsys.readouterr()
    return code, out, err


def net_json(capsys: pytest.CaptureFixture[str], daemon: Daemon, *argv: str) -> Any:
    code, out, err = net(capsys, daemon, *argv, "--json")
    assert (code, err) == (0, "")
    return json.loads(out)


def rows(out: str) -> list[list[str]]:
    """A table's rows (header included), split into cells."""
    return [line.split() for line in out.splitlines()]


def field_values(out: str) -> dict[str, str]:
    """A ``key: value`` block (up to the first blank line) as a dict."""
    pairs = (line.split(":", 1) for line in out.split("\n\n", maxsplit=1)[0].splitlines())
    return {key: value.strip() for key, value in pairs}


def columns(line: str) -> list[int]:
    """Where each cell of a table line starts."""
    return [i for i, c in enumerate(line) if c != " " and (i == 0 or line[i - 1] == " ")]


# --- networks ---------------------------------------------------------------------------------


def test_create_list_show_rm_tables(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, err = net(capsys, daemon, "create", "192.168.0.0", "--mask", "255.255.255.0")
    assert (code, err) == (0, "")
    created = field_values(out)
    nid = created["id"]
    assert created == {
        "id": nid,
        "ip": "192.168.0.0/24",
        "mask": "255.255.255.0",
        "gateway": "192.168.0.1",
    }
    # Values line up after the keys.
    lines = out.splitlines()
    assert (
        len({line.index(value) for line, value in zip(lines, created.values(), strict=True)}) == 1
    )

    code, out, _ = net(capsys, daemon, "create", "10.0.0.0/16", "--gateway", "10.0.0.254")
    assert code == 0
    other = field_values(out)
    assert (other["ip"], other["mask"], other["gateway"]) == (
        "10.0.0.0/16",
        "255.255.0.0",
        "10.0.0.254",
    )

    code, out, _ = net(capsys, daemon, "list")
    assert code == 0
    table = rows(out)
    assert table[0] == ["ID", "IP", "MASK", "GATEWAY"]
    assert sorted(table[1:]) == sorted(
        [
            [nid, "192.168.0.0/24", "255.255.255.0", "192.168.0.1"],
            [other["id"], "10.0.0.0/16", "255.255.0.0", "10.0.0.254"],
        ]
    )
    assert len({tuple(columns(line)) for line in out.splitlines()}) == 1  # aligned

    code, out, _ = net(capsys, daemon, "show", nid)
    assert code == 0
    shown = field_values(out)
    assert shown == {**created, "requestor": OWNER, "requestor ip": "192.168.0.1"}
    assert "(no nodes)" in out
    assert "(no gate connections)" in out

    code, out, _ = net(capsys, daemon, "rm", nid)
    assert (code, out) == (0, f"removed network {nid}\n")
    code, out, _ = net(capsys, daemon, "list")
    assert rows(out)[1:] == [[other["id"], "10.0.0.0/16", "255.255.0.0", "10.0.0.254"]]


def test_json_output(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    assert net_json(capsys, daemon, "list") == []
    info = net_json(capsys, daemon, "create", "192.168.0.0/24")
    nid = info["id"]
    assert info == {
        "id": nid,
        "ip": "192.168.0.0/24",
        "mask": "255.255.255.0",
        "gateway": "192.168.0.1",
    }
    assert net_json(capsys, daemon, "list") == [info]
    assert net_json(capsys, daemon, "node", "add", nid, PROV_B, "192.168.0.3") == {
        "networkId": nid,
        "id": PROV_B,
        "ip": "192.168.0.3",
    }
    net_json(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")

    # A live gate connection shows up in `show`.
    async def open_gate() -> tuple[Client, asyncio.StreamWriter]:
        server = await daemon.backend.provider(nid, PROV_A).start_server(echo, ECHO_PORT)
        assert server is not None
        client = Client(daemon.root, daemon.key)
        _, writer = await client.open_connection(nid, "192.168.0.2", ECHO_PORT)
        return client, writer

    async def close_gate(client: Client, writer: asyncio.StreamWriter) -> None:
        writer.close()
        await writer.wait_closed()
        await client.close()

    client, writer = daemon.call(open_gate())
    try:
        shown = net_json(capsys, daemon, "show", nid)
        code, out, _ = net(capsys, daemon, "show", nid)
    finally:
        daemon.call(close_gate(client, writer))
    connections = shown.pop("connections")
    assert shown == {
        **info,
        "requestorId": OWNER,
        "addresses": [{"ip": "192.168.0.1/24"}],
        "nodes": [{"id": PROV_A, "ip": "192.168.0.2"}, {"id": PROV_B, "ip": "192.168.0.3"}],
    }
    assert len(connections) == 1
    conn = connections[0]
    assert (conn["protocol"], conn["localIp"], conn["remoteIp"], conn["remotePort"]) == (
        6,
        "192.168.0.1",
        "192.168.0.2",
        ECHO_PORT,
    )
    assert code == 0
    sections = out.split("\n\n")
    assert rows(sections[1]) == [
        ["NODE", "ID", "IP"],
        [PROV_A, "192.168.0.2"],
        [PROV_B, "192.168.0.3"],
    ]
    assert rows(sections[2]) == [
        ["PROTOCOL", "LOCAL", "REMOTE"],
        ["tcp", f"192.168.0.1:{conn['localPort']}", f"192.168.0.2:{ECHO_PORT}"],
    ]

    assert net_json(capsys, daemon, "rm", nid) == {"id": nid, "removed": True}
    assert net_json(capsys, daemon, "list") == []


def test_nodes(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    nid = net_json(capsys, daemon, "create", "192.168.0.0/24")["id"]
    code, out, err = net(capsys, daemon, "node", "add", nid, PROV_B, "192.168.0.3")
    assert (code, out, err) == (0, f"added node {PROV_B} to network {nid} as 192.168.0.3\n", "")
    assert net(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")[0] == 0
    # Re-adding the same node with the same address is a refresh, not an error.
    assert net(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")[0] == 0

    code, out, _ = net(capsys, daemon, "node", "list", nid)
    assert code == 0
    assert out.splitlines()[0].split() == ["NODE", "ID", "IP"]
    assert rows(out)[1:] == [[PROV_A, "192.168.0.2"], [PROV_B, "192.168.0.3"]]  # by address
    assert out.splitlines()[1].index("192.") == out.splitlines()[0].index("IP")
    assert net_json(capsys, daemon, "node", "list", nid) == [
        {"id": PROV_A, "ip": "192.168.0.2"},
        {"id": PROV_B, "ip": "192.168.0.3"},
    ]

    code, out, _ = net(capsys, daemon, "node", "rm", nid, PROV_A)
    assert (code, out) == (0, f"removed node {PROV_A} from network {nid}\n")
    assert net_json(capsys, daemon, "node", "rm", nid, PROV_B.upper().replace("0X", "0x")) == {
        "networkId": nid,
        "id": PROV_B.upper().replace("0X", "0x"),
        "removed": True,
    }
    assert net_json(capsys, daemon, "node", "list", nid) == []
    code, out, _ = net(capsys, daemon, "node", "list", nid)
    assert (code, out) == (0, "NODE ID  IP\n")

    code, out, err = net(capsys, daemon, "node", "rm", nid, PROV_A)
    assert (code, out) == (1, "")
    assert err == f"golem-vpn: error: node {PROV_A} is not in network {nid}\n"


def test_node_set_ip(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    nid = net_json(capsys, daemon, "create", "192.168.0.0/24")["id"]
    assert net(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")[0] == 0
    assert net(capsys, daemon, "node", "add", nid, PROV_B, "192.168.0.3")[0] == 0
    code, out, err = net(capsys, daemon, "node", "set-ip", nid, PROV_B, "192.168.0.30")
    assert (code, out, err) == (0, f"moved node {PROV_B} in network {nid} to 192.168.0.30\n", "")
    assert net_json(capsys, daemon, "node", "list", nid) == [
        {"id": PROV_A, "ip": "192.168.0.2"},
        {"id": PROV_B, "ip": "192.168.0.30"},
    ]
    # The old address is free again; a taken one, the requestor's, or one outside is refused.
    assert net(capsys, daemon, "node", "set-ip", nid, PROV_A, "192.168.0.3")[0] == 0
    for taken in ("192.168.0.30", "192.168.0.1"):
        code, out, err = net(capsys, daemon, "node", "set-ip", nid, PROV_A, taken)
        assert (code, out) == (1, ""), taken
        assert taken in err
    code, _, err = net(capsys, daemon, "node", "set-ip", nid, PROV_A, "10.1.2.3")
    assert code == 1
    assert "10.1.2.3" in err
    code, _, err = net(capsys, daemon, "node", "set-ip", nid, "0x" + "7" * 40, "192.168.0.77")
    assert code == 1
    assert "not in network" in err
    assert net_json(capsys, daemon, "node", "set-ip", nid, PROV_A, "192.168.0.3") == {
        "networkId": nid,
        "id": PROV_A,
        "ip": "192.168.0.3",
    }


def test_environment_and_precedence(
    capsys: pytest.CaptureFixture[str], daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("YAGNA_API_URL", daemon.root)
    monkeypatch.setenv("YAGNA_APPKEY", daemon.key)
    code, out, err = net(capsys, None, "create", "192.168.7.0/24", "--json")
    assert (code, err) == (0, "")
    nid = json.loads(out)["id"]
    # YAGNA_NET_URL (a full base URL) wins over YAGNA_API_URL.
    monkeypatch.setenv("YAGNA_API_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("YAGNA_NET_URL", daemon.root + "/net-api/v1")
    code, out, _ = net(capsys, None, "list", "--json")
    assert [n["id"] for n in json.loads(out)] == [nid]
    # Flags win over the environment.
    monkeypatch.setenv("YAGNA_NET_URL", "http://127.0.0.1:1/net-api/v1")
    monkeypatch.setenv("YAGNA_APPKEY", "a-wrong-key")
    code, out, _ = net(capsys, daemon, "list", "--json")
    assert (code, [n["id"] for n in json.loads(out)]) == (0, [nid])
    # The other identity's key, from the environment: its networks, not ours (over v2).
    monkeypatch.setenv("YAGNA_NET_URL", daemon.root + "/net-api/v2/vpn")
    monkeypatch.setenv("YAGNA_APPKEY", daemon.other_key)
    assert net(capsys, None, "list", "--json")[1] == "[]\n"
    # YAGNA_NET_URL is the full base: a bare root there is a wrong URL, and the error says so.
    monkeypatch.setenv("YAGNA_NET_URL", daemon.root)
    code, out, err = net(capsys, None, "list")
    assert (code, out) == (1, "")
    assert f"is {daemon.root} the Net API?" in err


def test_rest_commands_run_without_aiohttp(
    capsys: pytest.CaptureFixture[str], daemon: Daemon
) -> None:
    # The real command in a fresh interpreter: aiohttp takes longer to import than a whole
    # `net list` may take (benches/cli_startup.py), so REST calls must not need it.
    nid = net_json(capsys, daemon, "create", "10.3.0.0/24")["id"]
    commands = [["list"], ["show", nid], ["node", "add", nid, PROV_A, "10.3.0.2"]]
    probe = (
        "import json, sys\n"
        "from golem_vpn.cli import main\n"
        "auth = ['--url', sys.argv[1], '--app-key=' + sys.argv[2]]\n"
        "codes = [main(['net', *argv, *auth]) for argv in json.loads(sys.argv[3])]\n"
        "print('aiohttp' in sys.modules, codes)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, daemon.root, daemon.key, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert nid in proc.stdout
    assert proc.stdout.splitlines()[-1] == "False [0, 0, 0]"


# --- errors -----------------------------------------------------------------------------------


def test_auth_errors(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    code, out, err = net(capsys, daemon, "list", key="not-the-key-1234")
    assert (code, out) == (1, "")
    assert err.startswith("golem-vpn: error: ")
    assert err.count("\n") == 1
    assert "did not accept the app key" in err
    assert "YAGNA_APPKEY" in err
    assert "not-the-key-1234" not in err

    code, _, err = net(capsys, None, "list", "--url", daemon.root)
    assert code == 1
    assert "needs an app key" in err
    assert "YAGNA_APPKEY" in err

    nid = net_json(capsys, daemon, "create", "10.0.0.0/24")["id"]
    net_json(capsys, daemon, "create", "10.1.0.0/24")
    assert net(capsys, daemon, "create", "10.9.0.0/24", key=daemon.other_key)[0] == 0
    code, _, err = net(capsys, daemon, "show", nid, key=daemon.other_key)
    assert code == 1
    assert f"network {nid} belongs to another identity (403 Forbidden)" in err
    assert daemon.key not in err
    assert daemon.other_key not in err


def test_request_errors(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    missing = "0" * 32
    for argv in (
        ["show", missing],
        ["rm", missing],
        ["node", "list", missing],
        ["node", "add", missing, PROV_A, "192.168.0.2"],
    ):
        code, out, err = net(capsys, daemon, *argv)
        assert (code, out) == (1, ""), argv
        assert err.startswith(f"golem-vpn: error: network {missing} not found (404)"), argv

    nid = net_json(capsys, daemon, "create", "192.168.0.0/24")["id"]
    net_json(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")
    code, out, err = net(capsys, daemon, "node", "add", nid, PROV_B, "192.168.0.2")
    assert (code, out) == (1, "")
    assert err == (
        f"golem-vpn: error: address 192.168.0.2 is held by node {PROV_A} in network {nid}; "
        f"give the node another (`golem-vpn net show {nid}` lists who holds which)\n"
    )

    code, _, err = net(capsys, daemon, "node", "add", nid, PROV_B, "10.0.0.3")
    assert code == 1
    assert "400 Bad Request" in err
    assert "'10.0.0.3' is not in network 192.168.0.0/24" in err
    code, _, err = net(capsys, daemon, "create", "10.0.0.x")
    assert code == 1
    assert "'10.0.0.x' is not an IP address" in err
    assert [n["ip"] for n in net_json(capsys, daemon, "node", "list", nid)] == ["192.168.0.2"]


def golem_vpn(daemon: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    """The real command, ``python -m golem_vpn net ARGV``, against the daemon."""
    return subprocess.run(
        [*GOLEM_VPN, "net", *argv, f"--url={daemon.root}", f"--app-key={daemon.key}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ``golem-vpn: error:`` line of a failed command, without its prefix."""
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    assert proc.stderr.startswith("golem-vpn: error: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.removeprefix("golem-vpn: error: ").rstrip("\n")


def test_node_address_conflicts_say_what_is_wrong(daemon: Daemon) -> None:
    nid = json.loads(golem_vpn(daemon, "create", "10.5.0.0/24", "--json").stdout)["id"]
    assert golem_vpn(daemon, "node", "add", nid, PROV_A, "10.5.0.2").returncode == 0
    # The node holds another address; the one asked for is free: say so, and how to move it.
    moved = error_line(golem_vpn(daemon, "node", "add", nid, PROV_A, "10.5.0.3"))
    assert moved == (
        f"node {PROV_A} already holds 10.5.0.2 in network {nid} (a node has one address); to "
        f"move it: `golem-vpn net node set-ip {nid} {PROV_A} 10.5.0.3`"
    )
    # The requestor's own address, which `node list` does not show but `net show` does.
    own = error_line(golem_vpn(daemon, "node", "add", nid, PROV_B, "10.5.0.1"))
    assert own.startswith(f"10.5.0.1 is the requestor's own address in network {nid}")
    assert f"`golem-vpn net show {nid}`" in own
    own = error_line(golem_vpn(daemon, "node", "set-ip", nid, PROV_A, "10.5.0.1"))
    assert own.startswith("10.5.0.1 is the requestor's own address")
    # Re-adding at the same address is still a refresh.
    assert golem_vpn(daemon, "node", "add", nid, PROV_A, "10.5.0.2").returncode == 0


def test_connect_to_an_address_no_node_can_have(daemon: Daemon) -> None:
    nid = json.loads(golem_vpn(daemon, "create", "10.6.0.0/24", "--json").stdout)["id"]
    outside = error_line(golem_vpn(daemon, "connect", nid, "10.9.9.9:80", "0"))
    assert outside.startswith(f"10.9.9.9 is not in network {nid} (10.6.0.0/24)")
    assert "node add" not in outside
    broadcast = error_line(golem_vpn(daemon, "connect", nid, "10.6.0.255:80", "0"))
    assert "broadcast address of 10.6.0.0/24" in broadcast
    assert "node add" not in broadcast
    own = error_line(golem_vpn(daemon, "connect", nid, "10.6.0.1:80", "0"))
    assert own.startswith(f"10.6.0.1 is the requestor's own address in network {nid}")
    free = error_line(golem_vpn(daemon, "connect", nid, "10.6.0.9:80", "0"))
    assert free.endswith(f"add one with `golem-vpn net node add {nid} NODE_ID 10.6.0.9`")


def test_inputs_are_normalised_or_refused(daemon: Daemon) -> None:
    # Host bits: the network is the range they belong to, and the user is told.
    created = golem_vpn(daemon, "create", "192.168.1.7/24", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["ip"] == "192.168.1.0/24"
    assert created.stderr == (
        "golem-vpn: note: 192.168.1.7/24 has host bits set; creating network 192.168.1.0/24\n"
    )
    nid = json.loads(created.stdout)["id"]
    listed = json.loads(golem_vpn(daemon, "list", "--json").stdout)
    assert {n["id"]: n["ip"] for n in listed}[nid] == "192.168.1.0/24"
    with_mask = golem_vpn(daemon, "create", "10.7.3.3", "--mask", "255.255.0.0", "--json")
    assert json.loads(with_mask.stdout)["ip"] == "10.7.0.0/16"

    # A range with no room for a node next to the requestor: refused.
    for cidr in ("10.0.0.0/32", "fd00::1/128"):
        refused = error_line(golem_vpn(daemon, "create", cidr))
        assert "has no address for a node besides the requestor's" in refused
    assert [n["id"] for n in json.loads(golem_vpn(daemon, "list", "--json").stdout)] == [
        nid,
        json.loads(with_mask.stdout)["id"],
    ]

    # A node's address with the network's prefix: the address alone is stored and shown.
    added = golem_vpn(daemon, "node", "add", nid, PROV_A, "192.168.1.30/24")
    assert (added.returncode, added.stdout) == (
        0,
        f"added node {PROV_A} to network {nid} as 192.168.1.30\n",
    )
    as_json = golem_vpn(daemon, "node", "add", nid, PROV_A, "192.168.1.30/24", "--json")
    assert json.loads(as_json.stdout)["ip"] == "192.168.1.30"
    wrong = error_line(golem_vpn(daemon, "node", "add", nid, PROV_B, "192.168.1.31/16"))
    assert wrong.startswith(f"192.168.1.31/16: network {nid} is 192.168.1.0/24")
    nodes = json.loads(golem_vpn(daemon, "node", "list", nid, "--json").stdout)
    assert nodes == [{"id": PROV_A, "ip": "192.168.1.30"}]


def test_server_down(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    code, out, err = net(capsys, None, "list", "--url", url, "--app-key", "k")
    assert (code, out) == (1, "")
    assert err.startswith(f"golem-vpn: error: cannot reach the Net API at {url}/net-api/v1 ")
    assert "golem-vpn daemon" in err
    assert err.count("\n") == 1


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["net"]) == 2
    assert main(["net", "node", "add", "x"]) == 2
    assert main(["net", "connect", "x", "192.168.0.2"]) == 2  # no port
    assert main(["net", "connect", "x", "nonsense:80"]) == 2
    assert main(["net", "connect", "x", "192.168.0.2:80", "70000"]) == 2
    assert "port must be a number from 0 to 65535" in capsys.readouterr().err
    assert main(["net", "connect", "x", "192.168.0.2:80", "1", "--listen", "2"]) == 2
    assert "give the local port once" in capsys.readouterr().err
    assert main(["net", "--help"]) == 0
    assert "connect" in capsys.readouterr().out
    code, _, err = net(capsys, None, "list", "--url", "ftp://127.0.0.1")
    assert code == 1
    assert "http or https" in err


# --- connect ----------------------------------------------------------------------------------


def test_connect_setup_errors(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    nid = net_json(capsys, daemon, "create", "192.168.0.0/24")["id"]
    net_json(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")
    code, _, err = net(capsys, daemon, "connect", "0" * 32, "192.168.0.2:80", "0")
    assert code == 1
    assert "not found (404)" in err
    code, _, err = net(capsys, daemon, "connect", nid, "192.168.0.9:80", "0", key="wrong")
    assert code == 1
    assert "app key" in err
    code, _, err = net(capsys, daemon, "connect", nid, "192.168.0.9:80", "0")
    assert code == 1
    assert f"no node of network {nid} has address 192.168.0.9" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = net(capsys, daemon, "connect", nid, "192.168.0.2:80", str(port))
    assert (code, out) == (1, "")
    assert err.startswith(f"golem-vpn: error: cannot listen on 127.0.0.1:{port}: ")


@contextmanager
def forwarder(daemon: Daemon, *argv: str) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """``golem-vpn net connect ARGV --listen 0`` as a subprocess, configured by environment.

    Yields the process, its ready line and the local port; on exit sends SIGINT and checks
    that it ends cleanly (exit 0).
    """
    env = {**os.environ, "YAGNA_API_URL": daemon.root, "YAGNA_APPKEY": daemon.key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "golem_vpn.netcli", "net", "connect", *argv, "--listen", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        listen = json.loads(line)["listen"] if line.startswith("{") else line.split(" -> ")[0]
        port = int(listen.rsplit(":", 1)[1])
        yield proc, line, port
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        data = sock.recv(min(size - len(buf), 1 << 20))
        if not data:
            raise AssertionError(f"EOF after {len(buf)} of {size} bytes")
        buf += data
    return bytes(buf)


def test_connect_forwards_through_gate(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    nid = net_json(capsys, daemon, "create", "192.168.0.0/24")["id"]
    net_json(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")

    async def start_echo() -> None:
        await daemon.backend.provider(nid, PROV_A).start_server(echo, ECHO_PORT)

    daemon.call(start_echo())
    data = payload(1 << 20, 5)
    with forwarder(daemon, nid, f"192.168.0.2:{ECHO_PORT}") as (proc, line, port):
        assert line == f"forwarding 127.0.0.1:{port} -> 192.168.0.2:{ECHO_PORT} in network {nid}\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sender = threading.Thread(target=sock.sendall, args=(data,))
            sender.start()
            got = recv_exactly(sock, len(data))
            sender.join()
            assert got == data
            # While it is open, `show` lists the gate connection.
            shown = net_json(capsys, daemon, "show", nid)
            assert [(c["remoteIp"], c["remotePort"]) for c in shown["connections"]] == [
                ("192.168.0.2", ECHO_PORT)
            ]
            # A second connection at the same time.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                second.sendall(b"ping")
                assert recv_exactly(second, 4) == b"ping"
            # Ctrl-C with connections open ends it cleanly: exit code 0, nothing on stderr.
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert sock.recv(1) == b""
        assert proc.stderr is not None
        assert proc.stderr.read() == ""


def test_connect_refused_keeps_running(capsys: pytest.CaptureFixture[str], daemon: Daemon) -> None:
    nid = net_json(capsys, daemon, "create", "192.168.0.0/24")["id"]
    net_json(capsys, daemon, "node", "add", nid, PROV_A, "192.168.0.2")
    with forwarder(daemon, nid, "192.168.0.2:9", "--json") as (proc, line, port):
        assert json.loads(line) == {
            "listen": f"127.0.0.1:{port}",
            "networkId": nid,
            "target": "192.168.0.2:9",
        }
        for _ in range(2):  # it keeps accepting after a failed connection
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                assert sock.recv(1) == b""  # nothing listens at 192.168.0.2:9: closed at once
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert err.count("refused the connection") == 2
    for line in err.splitlines():
        assert line.startswith("golem-vpn: connection from 127.0.0.1:")
