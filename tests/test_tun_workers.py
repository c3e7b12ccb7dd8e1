"""Multi-queue TUN attachments: one datapath thread per queue (``daemon --workers``).

Two provider daemons started with ``--workers 2`` attach payload namespaces with ``golem-vpn
attach --tun``; each device then has two queues, each read by a thread of its own
(``golem-vpn-tx0``, ``golem-vpn-tx1``) that routes under the node's lock and seals and sends
outside it, naming its queue as the lane of its data messages; each daemon also receives on two
lanes, the second read by a thread of its own (``golem-vpn-rx1``) that opens its datagrams and
writes them to the TUN device. Eight TCP flows in parallel (each 8 MiB, different bytes) must
arrive exact, in both directions, and both sending threads of the sending daemon and the second
lane's thread of the receiving one must have done work (their time on a CPU, from ``/proc``);
detaching stops the sending threads. A bad ``--workers`` is refused with its flag named.

Needs root and iproute2 (namespaces, TUN devices).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from exeunit_helpers import NATIVE_ATTACHMENTS, Daemon, Nodes, cli, make_deploy, needs_root

PID = os.getpid()
PORT = 7400
FLOWS = 8
FLOW_BYTES = 8 << 20

pytestmark = NATIVE_ATTACHMENTS

# Receives connections; for each, the SHA-256 of everything read, sent back once the
# client has shut its side down.
_SINK = textwrap.dedent(
    """
    import hashlib, socket, sys, threading
    srv = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=64)
    print("ready", flush=True)
    def serve(conn):
        with conn:
            h = hashlib.sha256()
            while data := conn.recv(1 << 16):
                h.update(data)
            conn.sendall(h.hexdigest().encode())
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    """
)

# Opens FLOWS connections at once, each from its own port, and sends each its own bytes;
# prints the digests sent and the digests the sink reported, as JSON.
_SOURCE = textwrap.dedent(
    """
    import hashlib, json, socket, sys, threading
    host, port, flows, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    sent, heard = [None] * flows, [None] * flows
    def run(i):
        blob = hashlib.sha256(str(i).encode()).digest() * (size // 32)
        sent[i] = hashlib.sha256(blob).hexdigest()
        with socket.create_connection((host, port), timeout=60) as conn:
            conn.sendall(blob)
            conn.shutdown(socket.SHUT_WR)
            answer = b""
            while data := conn.recv(256):
                answer += data
        heard[i] = answer.decode()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"sent": sent, "heard": heard}))
    """
)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon, Daemon]]:
    with Nodes(tmp_path_factory.mktemp("tun-workers")) as running:
        workers = ("--workers", "2")
        yield (
            running.start("requestor"),
            running.start("prov-a", args=workers),
            running.start("prov-b", args=workers),
        )


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    names = [f"gvm-{PID}-a", f"gvm-{PID}-b"]  # not gvw-: benches/workers.py clears those
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)


def _in(netns: str, *args: str) -> list[str]:
    """Python with ``args`` in ``netns``."""
    return ["ip", "netns", "exec", netns, sys.executable, *args]


def _tx_threads(pid: int, prefix: str = "golem-vpn-tx") -> dict[str, int]:
    """The daemon's datapath threads named ``prefix*`` (default: the sending threads):
    name -> nanoseconds on a CPU so far."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            on_cpu = int((task / "schedstat").read_text().split()[0])
        except OSError:
            continue
        if name.startswith(prefix):
            threads[name] = on_cpu
    return threads


def _status(daemon: Daemon) -> dict[str, Any]:
    """The daemon's ``GET /net-api/v2/net/status``."""
    request = urllib.request.Request(
        f"{daemon.api}/net-api/v2/net/status", headers={"Authorization": f"Bearer {daemon.key}"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return cast(dict[str, Any], json.load(r))


def _attach(daemon: Daemon, netns: str, deploy: dict[str, Any], tmp_path: Path) -> str:
    path = tmp_path / f"{netns}.json"
    path.write_text(json.dumps(deploy))
    result = cli(
        "attach", "--tun", "--netns", netns, "--deploy", str(path), "--json", env=daemon.env()
    )
    assert result.returncode == 0, result.stderr
    attachment_id: str = json.loads(result.stdout)["id"]
    return attachment_id


def _flows(src_ns: str, dst_ns: str, dst_ip: str, port: int) -> None:
    sink = subprocess.Popen(
        [*_in(dst_ns, "-c", _SINK), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "ready"
        source = subprocess.run(
            [*_in(src_ns, "-c", _SOURCE), dst_ip, str(port), str(FLOWS), str(FLOW_BYTES)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert source.returncode == 0, source.stderr
        result = json.loads(source.stdout)
        assert len(set(result["sent"])) == FLOWS
        assert result["heard"] == result["sent"], "every flow arrives exact"
    finally:
        sink.kill()
        sink.communicate()


@needs_root
def test_flows_are_sent_by_every_queue_thread_and_arrive_exact(
    nodes: tuple[Daemon, Daemon, Daemon], namespaces: list[str], tmp_path: Path
) -> None:
    requestor, prov_a, prov_b = nodes
    ns_a, ns_b = namespaces
    (_net,), (deploy_a, deploy_b) = make_deploy(requestor, [prov_a, prov_b], ["192.168.176.0/24"])
    a_ip = deploy_a["net"][0]["nodeIp"]
    b_ip = deploy_b["net"][0]["nodeIp"]
    # Namespaces of the payloads' own: detaching leaves them, and must take the devices.
    for ns in namespaces:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    att_a = _attach(prov_a, ns_a, deploy_a, tmp_path)
    att_b = _attach(prov_b, ns_b, deploy_b, tmp_path)
    try:
        queues = subprocess.run(
            ["ip", "-n", ns_a, "-d", "link", "show", "gvpn0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "multi_queue" in queues, queues
        before = _tx_threads(prov_a.proc.pid)
        assert sorted(before) == ["golem-vpn-tx0", "golem-vpn-tx1"]
        rx_before = _tx_threads(prov_b.proc.pid, "golem-vpn-rx")
        assert sorted(rx_before) == ["golem-vpn-rx1"]
        assert _status(prov_b)["lanes"] == 2
        _flows(ns_a, ns_b, b_ip, PORT)
        after = _tx_threads(prov_a.proc.pid)
        busy = {name: after[name] - before[name] for name in before}
        # Each ran for more than its idle wake-ups would (one a second): it carried flows.
        assert all(ns > 5_000_000 for ns in busy.values()), busy
        # B opened the flows A's second thread sent on the lane's own thread.
        rx_after = _tx_threads(prov_b.proc.pid, "golem-vpn-rx")
        assert rx_after["golem-vpn-rx1"] - rx_before["golem-vpn-rx1"] > 5_000_000
        # And the other way, from B's threads to A's.
        rx_before = _tx_threads(prov_a.proc.pid, "golem-vpn-rx")
        _flows(ns_b, ns_a, a_ip, PORT + 1)
        rx_after = _tx_threads(prov_a.proc.pid, "golem-vpn-rx")
        assert rx_after["golem-vpn-rx1"] - rx_before["golem-vpn-rx1"] > 5_000_000
    finally:
        for daemon, att in ((prov_a, att_a), (prov_b, att_b)):
            detached = cli("detach", att, env=daemon.env())
            assert detached.returncode == 0, detached.stderr
    deadline = time.monotonic() + 5
    while _tx_threads(prov_a.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _tx_threads(prov_a.proc.pid) == {}, "detaching stops the queue threads"

    # Every thread that wrote to a device let go of it: the kernel removed both.
    def devices() -> list[str]:
        return [
            ns
            for ns in namespaces
            if subprocess.run(
                ["ip", "-n", ns, "link", "show", "gvpn0"], capture_output=True, check=False
            ).returncode
            == 0
        ]

    deadline = time.monotonic() + 5
    while devices() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert devices() == [], "detaching removes the devices"


def test_a_bad_workers_value_is_refused_naming_the_flag(tmp_path: Path) -> None:
    for bad in ("0", "17", "many"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "golem_vpn",
                "daemon",
                f"--data-dir={tmp_path}",
                "--api=127.0.0.1:0",
            ],
            env={**os.environ, "GOLEM_VPN_WORKERS": bad},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode != 0
        assert "--workers (GOLEM_VPN_WORKERS) must be from 1 to 16" in result.stderr, result.stderr
