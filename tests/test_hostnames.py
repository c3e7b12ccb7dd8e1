"""Host names wherever golem-vpn takes an address, and bind failures that name what to change.

The CLI tests run the real command (``python -m golem_vpn``) on loopback; ``localhost`` is
the host name every machine resolves. The relay-follows-its-name test swaps the system
resolver (``socket.getaddrinfo``) for a table, so a name can move from one relay to another.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from golem_vpn import AddressError, Identity
from golem_vpn.hostport import parse_hostport, resolve
from golem_vpn.netapi.client import Client
from golem_vpn.node import transport as transport_module
from golem_vpn.node.relay import RelayService, probe
from golem_vpn.node.transport import UdpTransport

GOLEM_VPN = [sys.executable, "-m", "golem_vpn"]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GOLEM_VPN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "GOLEM_VPN_RELAY": ""},
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("golem-vpn: error: ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    for part in parts:
        assert part in proc.stderr


@contextmanager
def running(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Starts ``golem-vpn ARGS``; yields the process and its first line of output."""
    proc = subprocess.Popen(
        [*GOLEM_VPN, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GOLEM_VPN_RELAY": ""},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        yield proc, line
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


# --- HOST:PORT and resolution -----------------------------------------------------------------


def test_parse_and_resolve() -> None:
    assert parse_hostport("localhost:7464", "--relay") == ("localhost", 7464)
    assert parse_hostport("[::1]:80", "--api") == ("::1", 80)
    assert parse_hostport(":0", "--listen") == ("0.0.0.0", 0)
    for bad in ("7464", "host:", "host:65536", "::1:80"):
        with pytest.raises(AddressError, match="--relay expects HOST:PORT"):
            parse_hostport(bad, "--relay")
    assert resolve("localhost", 5, "x") == ("127.0.0.1", 5)  # IPv4 first
    assert resolve("10.1.2.3", 5, "x") == ("10.1.2.3", 5)
    with pytest.raises(AddressError, match=r"relay: cannot resolve host name 'no\.such\.invalid'"):
        resolve("no.such.invalid", 1, "relay")
    with pytest.raises(AddressError, match="not an IPv4 address"):
        resolve("::1", 1, "relay", family=socket.AF_INET)


# --- the commands -------------------------------------------------------------------------------


def test_relay_listens_on_a_host_name() -> None:
    with running("relay", "--listen", "localhost:0") as (_, line):
        assert line.startswith("relay listening on 127.0.0.1:")


def test_a_name_that_does_not_resolve_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    assert_one_error_line(
        cli("relay", "--listen", "no.such.invalid:0"), "--listen", "'no.such.invalid'"
    )
    for flag in ("--relay", "--api", "--listen"):
        proc = cli("daemon", "--data-dir", str(tmp_path), flag, "no.such.invalid:7464")
        assert_one_error_line(proc, f"{flag}: cannot resolve host name 'no.such.invalid'")


def test_daemon_takes_host_names_and_registers_at_the_relay_by_name(tmp_path: Path) -> None:
    with running("relay", "--listen", "127.0.0.1:0") as (_, relay_line):
        relay_port = int(relay_line.rsplit(":", 1)[1])
        created = cli("app-key", "create", "t", "--json", "--data-dir", str(tmp_path))
        key = json.loads(created.stdout)["key"]
        args = ["--api", "localhost:0", "--listen", "localhost:0"]
        with running(
            "daemon", "--data-dir", str(tmp_path), *args, "--relay", f"localhost:{relay_port}"
        ) as (_, line):
            assert f"relay localhost:{relay_port} (127.0.0.1:{relay_port})" in line
            api = line.split("Net API ")[1].split(",")[0]
            assert api.startswith("http://127.0.0.1:")

            async def public_ip() -> str | None:
                async with Client(api, key) as client:
                    for _ in range(100):
                        status = await client.status()
                        if status.public_ip:
                            return status.public_ip
                        await asyncio.sleep(0.05)
                return None

            udp = line.split("UDP ")[1].split(",")[0]
            assert asyncio.run(public_ip()) == udp  # the relay answered its registration


def test_taken_ports_name_the_address_and_the_flag(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", 0))
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        taken_udp = f"127.0.0.1:{udp.getsockname()[1]}"
        taken_tcp = f"127.0.0.1:{tcp.getsockname()[1]}"
        proc = cli(
            "daemon", "--data-dir", str(tmp_path), "--api", "127.0.0.1:0", "--listen", taken_udp
        )
        assert_one_error_line(
            proc,
            f"the UDP transport cannot listen on {taken_udp}: the address is in use",
            "--listen HOST:PORT",
        )
        assert "os error" not in proc.stderr
        proc = cli(
            "daemon", "--data-dir", str(tmp_path), "--api", taken_tcp, "--listen", "127.0.0.1:0"
        )
        assert_one_error_line(
            proc, f"the Net API cannot listen on {taken_tcp}: the address is in use", "--api"
        )
        assert "Errno" not in proc.stderr
        proc = cli("relay", "--listen", taken_udp)
        assert_one_error_line(proc, f"the relay cannot listen on {taken_udp}", "--listen")


# --- the transport follows a relay's name -----------------------------------------------------


def test_probe_tells_a_live_relay_from_a_dead_one() -> None:
    async def main() -> None:
        async with RelayService("localhost", 0) as relay:
            assert relay.local_addr[0] == "127.0.0.1"
            assert await probe(relay.local_addr, timeout=2)
            assert relay.relay.registrations() == 1  # the probe's throwaway identity
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))  # bound, never answers
            assert not await probe(sock.getsockname(), timeout=0.3)

    asyncio.run(main())


def test_transport_resolves_a_relay_name_again_when_the_relay_stops_answering(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = {"relay.test": "127.0.0.2"}
    system = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return system(table.get(host, host), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(transport_module, "RELAY_CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(transport_module, "RELAY_PROBE_TIMEOUT", 0.3)

    async def main() -> None:
        first = RelayService("127.0.0.2", 0)
        port = first.local_addr[1]
        second = RelayService("127.0.0.3", port)
        node = UdpTransport(Identity.generate(), relay=("relay.test", port))
        try:
            assert node.relays == [("127.0.0.2", port)]
            for _ in range(100):
                if node.public_addr is not None:
                    break
                await asyncio.sleep(0.02)
            assert first.relay.registrations() >= 1
            assert second.relay.registrations() == 0
            # The relay moves: the old address stops answering, the name points elsewhere.
            first.close()
            table["relay.test"] = "127.0.0.3"
            for _ in range(200):
                if node.relays == [("127.0.0.3", port)] and second.relay.registrations():
                    break
                await asyncio.sleep(0.02)
            assert node.relays == [("127.0.0.3", port)]
            assert node.native.relay == ("127.0.0.3", port)
            assert second.relay.registrations() >= 1  # the node registered at the new one
        finally:
            node.close()
            second.close()

    asyncio.run(main())


def test_transport_refuses_a_relay_name_that_does_not_resolve() -> None:
    async def main() -> None:
        with pytest.raises(AddressError, match="relay: cannot resolve host name"):
            UdpTransport(Identity.generate(), relay=("no.such.invalid", 7464))
        node = UdpTransport(Identity.generate(), "localhost", 0)
        assert node.local_addr[0] == "127.0.0.1"
        node.close()

    asyncio.run(main())
