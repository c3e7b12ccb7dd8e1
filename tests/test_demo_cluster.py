"""``golem-vpn demo``: real processes, every step of the report checked, nothing left behind.

Each test runs the demo as a user would (``python -m golem_vpn demo ...``, a relay and four
daemons as processes of their own on loopback) with a hard timeout. What they prove:

- ``--json``: every step happened as reported (:func:`demo_helpers.check_report`), and no
  process, namespace or file of the demo survives it (:func:`demo_helpers.check_nothing_left`);
  the progress shows each step on stderr and stdout holds only the report; the README's sample
  report has the rows and columns the real one has.
- ``--netns`` (root only): the same with TUN devices in network namespaces and payloads as
  processes in them; every namespace is gone afterwards.
- ``--keep``: the printed way in works as written (``golem-vpn net show`` and ``golem-vpn net
  connect`` with the printed environment, then an HTTP GET through the forwarded port), and
  SIGTERM stops everything.
- A daemon killed half-way: the demo fails with one error line and the logs, and still stops
  everything else.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from demo_helpers import check_nothing_left, check_report, netns_names
from golem_vpn.demo.cluster import render

GOLEM_VPN = [sys.executable, "-m", "golem_vpn"]
README = Path(__file__).resolve().parent.parent / "README.md"
SIZE_MIB = 8
DEMO_TIMEOUT = 150

pytestmark = pytest.mark.timeout(240)


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GOLEM_VPN, "demo", *args],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )


def test_demo_json_report_every_step_and_nothing_left() -> None:
    done = run_demo("--json", "--size", str(SIZE_MIB))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout is the report and nothing else
    check_report(report, mode="userspace", size=SIZE_MIB << 20)
    check_nothing_left(report)
    # The progress went to stderr, one ticked line per step.
    ticked = [line for line in done.stderr.splitlines() if line.startswith("  ✓ ")]
    assert len(ticked) == len(report["steps"]), done.stderr
    assert report["seconds"] < 90
    check_readme_sample(render(report))


def check_readme_sample(rendered: str) -> None:
    """The README's sample report has the lines and columns the report really has."""
    sample = re.search(r"```text\n(  NODE .*?)```", README.read_text(), flags=re.S)
    assert sample is not None
    lines = sample[1].splitlines()
    out = rendered.splitlines()
    assert lines[0].split() == next(o for o in out if o.startswith("  NODE ")).split()
    for line in lines[1:]:
        prefix = re.match(r"[A-Za-z -]*", line)
        assert prefix is not None
        assert any(o.startswith(prefix[0]) for o in out), (line, rendered)


@pytest.mark.skipif(
    not hasattr(os, "geteuid")
    or os.geteuid() != 0
    or any(shutil.which(tool) is None for tool in ("ip", "ping")),
    reason="--netns needs root, iproute2 and ping",
)
def test_demo_netns_tun_attachments() -> None:
    before = netns_names()
    done = run_demo("--netns", "--json", "--size", str(SIZE_MIB))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check_report(report, mode="tun", size=SIZE_MIB << 20)
    check_nothing_left(report)
    made = {n["netns"] for n in report["nodes"] if n["netns"]}
    assert len(made) == 3
    assert not made & netns_names()
    assert not {n for n in netns_names() - before if n.startswith("gvdemo")}


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="as root --netns runs (test_demo_netns_tun_attachments)",
)
def test_demo_netns_refused_without_root() -> None:
    done = run_demo("--netns", "--json")
    assert done.returncode == 1
    assert "--netns needs root" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


class Lines:
    """A process's output lines, read by a thread so that waiting can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, pattern: str, timeout: float = DEMO_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} in:\n{''.join(self.seen)}") from None
            if line is None:
                raise AssertionError(f"ended without {pattern!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found

    def rest(self, timeout: float = 30) -> str:
        """Everything still to come, once the stream ends."""
        rest = []
        while (line := self.lines.get(timeout=timeout)) is not None:
            rest.append(line)
        return "".join(rest)


@contextmanager
def demo_process(*args: str) -> Iterator[tuple[subprocess.Popen[str], Lines, Lines]]:
    proc = subprocess.Popen(
        [*GOLEM_VPN, "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        yield proc, Lines(proc.stdout), Lines(proc.stderr)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Stops a process of the test (if it still runs) and closes its pipes."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_demo_keep_prints_a_way_in_that_works_then_stops_on_sigterm() -> None:
    with demo_process("--keep", "--size", "1") as (proc, out, err):
        url, key = out.until(r"export YAGNA_NET_URL=(\S+) YAGNA_APPKEY=(\S+)").groups()
        net = out.until(r"golem-vpn net show (\S+)").group(1)
        target = out.until(r"golem-vpn net connect \S+ (\S+) 8080 &").group(1)
        rows = r"^  (?:requestor|provider-\d)\s+0x[0-9a-f]{40}\s.*\s(\d+)$"
        pids = [int(m) for m in re.findall(rows, "".join(out.seen), flags=re.M)]
        assert len(pids) == 4  # the PID column of the nodes table
        env = {**os.environ, "YAGNA_NET_URL": url, "YAGNA_APPKEY": key}
        shown = subprocess.run(
            [*GOLEM_VPN, "net", "show", net, "--json"],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert len(json.loads(shown.stdout)["nodes"]) == 2  # provider-3 was removed
        port = free_port()
        forward = subprocess.Popen(
            [*GOLEM_VPN, "net", "connect", net, target, str(port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            assert forward.stdout is not None
            assert "forwarding" in Lines(forward.stdout).until("forwarding", 30).string
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
                assert page.read().decode().startswith("hello from provider-1")
        finally:
            stop(forward, signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        err.until("every process stopped, everything removed", 5)
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    assert b"golem_vpn" not in f.read()
            except OSError:
                pass  # gone


def test_a_daemon_killed_half_way_fails_the_demo_and_everything_stops() -> None:
    with demo_process("--json") as (proc, out, err):
        pid = int(err.until(r"provider-2 daemon: .*PID (\d+)").group(1))
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=DEMO_TIMEOUT) == 1
        err.until(r"golem-vpn: error: demo failed: ", 5)
        work = err.until(r"^the demo's processes \(work dir (\S+), removed at teardown\)", 5)[1]
        err.until(rf"^  provider-2 \(PID {pid}\): killed by SIGKILL$", 5)
        err.until(r"every process stopped, everything removed", 30)
        assert out.rest() == ""  # no report
        assert "Traceback" not in "".join(err.seen) + err.rest()
    assert not os.path.exists(work)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            assert work.encode() not in cmdline, cmdline
