"""`golem-vpn daemon` and `golem-vpn app-key`: a real daemon process driven over its Net API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from golem_vpn.netapi.client import Client


def _cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "golem_vpn", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _start_daemon(data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    proc = subprocess.Popen(
        [
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
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GOLEM_VPN_RELAY": ""},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("golem-vpn daemon 0x"), (line, proc.stderr.read() if proc.stderr else "")
    node_id = line.split()[2].rstrip(":")
    api = line.split("Net API ")[1].split(",")[0]
    return proc, node_id, api


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_app_keys_and_a_daemon_that_keeps_its_networks(tmp_path: Path) -> None:
    created = _cli("app-key", "create", "ci", "--json", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    assert len(key) >= 32
    listed = _cli("app-key", "list", "--json", data_dir=tmp_path)
    assert [k["name"] for k in json.loads(listed.stdout)] == ["ci"]
    assert key not in listed.stdout

    proc, node_id, api = _start_daemon(tmp_path)
    try:
        assert node_id == json.loads(created.stdout)["nodeId"]

        async def create() -> str:
            async with Client(api, key) as client:
                status = await client.status()
                assert status.node_id == node_id
                net = await client.create_network("192.168.60.0/24")
                await client.add_node(net.id, "0x" + "ab" * 20, "192.168.60.7")
                return net.id

        network_id = asyncio.run(create())
    finally:
        _stop(proc)

    # A restarted daemon serves the same network and node.
    proc, _, api = _start_daemon(tmp_path)
    try:

        async def check() -> None:
            async with Client(api, key) as client:
                nets = await client.list_networks()
                assert [n.id for n in nets] == [network_id]
                nodes = await client.list_nodes(network_id)
                assert [(n.id, n.ip) for n in nodes] == [("0x" + "ab" * 20, "192.168.60.7")]

        asyncio.run(check())
    finally:
        _stop(proc)

    removed = _cli("app-key", "rm", "ci", data_dir=tmp_path)
    assert removed.returncode == 0
    again = _cli("app-key", "rm", "ci", data_dir=tmp_path)
    assert again.returncode == 1
    assert "ci" in again.stderr


def test_daemon_rejects_bad_addresses(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "golem_vpn", "daemon", "--data-dir", str(tmp_path), "--api", "x"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 1
    assert "HOST:PORT" in bad.stderr


def test_one_daemon_per_data_dir(tmp_path: Path) -> None:
    proc, _, api = _start_daemon(tmp_path)
    try:
        addresses = ["--api", "127.0.0.1:0", "--listen", "127.0.0.1:0"]
        second = subprocess.run(
            [sys.executable, "-m", "golem_vpn", "daemon", "--data-dir", str(tmp_path), *addresses],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "GOLEM_VPN_RELAY": ""},
        )
        assert second.returncode == 1
        assert second.stdout == ""
        assert second.stderr == (
            f"golem-vpn: error: another golem-vpn daemon (PID {proc.pid}, Net API {api}) is "
            f"using the data dir {tmp_path}; stop it first, or give this daemon a data dir of "
            "its own (--data-dir or $GOLEM_VPN_DATA_DIR)\n"
        )
        assert json.loads((tmp_path / "daemon.lock").read_text()) == {"pid": proc.pid, "api": api}
    finally:
        _stop(proc)
    # The lock goes with the process: the next daemon starts.
    proc, _, _ = _start_daemon(tmp_path)
    _stop(proc)


def test_a_key_from_another_data_dir_gets_a_hint(tmp_path: Path) -> None:
    other = _cli("app-key", "create", "elsewhere", "--json", data_dir=tmp_path / "other")
    key = json.loads(other.stdout)["key"]
    proc, _, api = _start_daemon(tmp_path / "daemon")
    try:
        refused = subprocess.run(
            [sys.executable, "-m", "golem_vpn", "net", "list", "--url", api, f"--app-key={key}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        _stop(proc)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert "did not accept the app key (401 Unauthorized)" in refused.stderr
    assert "App keys belong to a data dir" in refused.stderr
    assert "--data-dir" in refused.stderr
    assert key not in refused.stderr


def test_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "not-a-dir"
    file.write_text("")
    for argv in (["daemon", "--api", "127.0.0.1:0"], ["app-key", "create", "x"], ["id", "show"]):
        proc = _cli(*argv, data_dir=file)
        assert proc.returncode == 1, argv
        assert proc.stderr == (
            f"golem-vpn: error: the data dir {file} is a file, not a directory; point "
            "--data-dir or $GOLEM_VPN_DATA_DIR at a directory\n"
        ), argv
    inside = _cli("app-key", "create", "x", data_dir=file / "sub")
    assert inside.returncode == 1
    assert "a part of its path is a file" in inside.stderr
    assert "Errno" not in inside.stderr


def test_reading_app_keys_never_creates_a_data_dir(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    for argv in (["app-key", "list"], ["app-key", "rm", "x"]):
        proc = _cli(*argv, data_dir=typo)
        assert proc.returncode == 1, argv
        assert proc.stderr.startswith(
            f"golem-vpn: error: there is no golem-vpn data dir at {typo} (nothing was ever "
            "stored there); check --data-dir or $GOLEM_VPN_DATA_DIR"
        ), argv
    assert not typo.exists()
    # An existing dir without keys lists none, and gets no database for it.
    empty = tmp_path / "empty"
    empty.mkdir()
    listed = _cli("app-key", "list", "--json", data_dir=empty)
    assert (listed.returncode, listed.stdout) == (0, "[]\n")
    assert _cli("app-key", "list", data_dir=empty).stdout == "NAME  NODE ID\n"
    assert list(empty.iterdir()) == []
