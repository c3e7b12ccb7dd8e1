"""The VM guest bridge (``vm_guest_bridge.py``) frames Ethernet exactly as QEMU's ``-netdev
socket`` does, checked against fake endpoints in this process, with no golem-vpn daemon.

The guest is the Linux kernel in a namespace of the test's own (``gvq-<pid>-<n>``, deleted in
a ``finally``); the endpoint is a socket on 127.0.0.1 here that plays the daemon's router by
hand: it sees the guest's ARP request for a neighbour (sent from ``90:13:`` + the guest's
IPv4 address), answers it, sees the ICMP echo request that follows and answers that, so the
guest's ``ping`` succeeds only if frames went both ways intact. Over UDP one datagram is one
frame; over TCP each frame carries a u32 big-endian length, and the endpoint splits and merges
frames across writes to check the bridge's reassembly. The bridge leaves nothing behind when it
stops (SIGTERM), and gives up on a length no QEMU would send. Needs root, iproute2 and ping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import ARP, ICMP, IP, Ether, Raw, mac, mac_text

pytestmark = [
    pytest.mark.skipif(
        sys.platform != "linux"
        or not hasattr(os, "geteuid")
        or os.geteuid() != 0
        or any(shutil.which(t) is None for t in ("ip", "ping"))
        or not os.path.exists("/dev/net/tun"),
        reason="needs Linux, root, /dev/net/tun, iproute2 and ping",
    ),
    pytest.mark.timeout(60),
]

BRIDGE = Path(__file__).resolve().parent / "vm_guest_bridge.py"
GUEST_IP, NEIGHBOUR_IP, CIDR = "192.168.171.5", "192.168.171.1", "192.168.171.0/24"
GUEST_MAC, NEIGHBOUR_MAC = mac_text(mac(GUEST_IP)), mac_text(mac(NEIGHBOUR_IP))
_counter = iter(range(1000))


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15, check=check)


def _netns_list() -> set[str]:
    out = _ip("netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.fixture
def guest() -> Iterator[str]:
    name = f"gvq-{os.getpid()}-{next(_counter)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        # No IPv6 chatter (router solicitations, MLD) in the frames the endpoint reads.
        _ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        _ip("netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        yield name
    finally:
        _ip("netns", "delete", name, check=False)


@contextlib.contextmanager
def bridge(guest: str, how: str, endpoint: str) -> Iterator[subprocess.Popen[str]]:
    """The bridge between ``guest`` and ``endpoint``, running and carrying; stopped after."""
    proc = subprocess.Popen(
        [sys.executable, str(BRIDGE), "--guest", guest, "--ip", f"{GUEST_IP}/24", "--route",
         CIDR, how, endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the bridge did not start: {line!r} {err}")


def _ping_through(guest: str, recv: Callable[[], bytes], send: Callable[[bytes], None]) -> None:
    """The guest pings the neighbour; ``recv``/``send`` move one frame from/to the bridge.
    Asserts the frames the guest sent and that its ping got the crafted answer."""
    with subprocess.Popen(
        ["ip", "netns", "exec", guest, "ping", "-c", "1", "-W", "5", NEIGHBOUR_IP],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as ping:  # closes its pipe and reaps it, whatever happens
        try:
            _answer_ping(recv, send)
            out, _ = ping.communicate(timeout=15)
        except BaseException:
            ping.kill()
            raise
    assert ping.returncode == 0, out
    assert "1 received" in out


def _answer_ping(recv: Callable[[], bytes], send: Callable[[bytes], None]) -> None:
    request = _next(recv, ARP)
    assert request.src == GUEST_MAC
    assert (request[ARP].op, request[ARP].psrc, request[ARP].pdst) == (1, GUEST_IP, NEIGHBOUR_IP)
    assert request[ARP].hwsrc == GUEST_MAC
    answer = Ether(dst=GUEST_MAC, src=NEIGHBOUR_MAC) / ARP(
        op=2, hwsrc=NEIGHBOUR_MAC, psrc=NEIGHBOUR_IP, hwdst=GUEST_MAC, pdst=GUEST_IP
    )
    send(bytes(answer))
    echo = _next(recv, ICMP)  # only sent once the guest's kernel took our ARP answer
    assert (echo.src, echo.dst) == (GUEST_MAC, NEIGHBOUR_MAC)
    assert (echo[IP].src, echo[IP].dst, echo[ICMP].type) == (GUEST_IP, NEIGHBOUR_IP, 8)
    reply = (
        Ether(dst=GUEST_MAC, src=NEIGHBOUR_MAC)
        / IP(src=NEIGHBOUR_IP, dst=GUEST_IP)
        / ICMP(type=0, id=echo[ICMP].id, seq=echo[ICMP].seq)
        / Raw(bytes(echo[ICMP].payload))
    )
    send(bytes(reply))


def _next(recv: Callable[[], bytes], layer: type) -> Ether:
    """The next frame from the guest that has ``layer`` (at most 20 frames are skipped)."""
    for _ in range(20):
        frame = Ether(recv())
        if frame.haslayer(layer):
            return frame
    pytest.fail(f"no {layer.__name__} frame from the guest")


def _gone(guest: str) -> bool:
    return "eth0" not in _ip("-n", guest, "-o", "link").stdout


def test_udp_one_datagram_is_one_frame(guest: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as endpoint:
        endpoint.bind(("127.0.0.1", 0))
        endpoint.settimeout(10)
        port = endpoint.getsockname()[1]
        peer: list[tuple[str, int]] = []

        def recv() -> bytes:
            data, addr = endpoint.recvfrom(65536)
            peer[:] = [addr]
            return data

        with bridge(guest, "--udp", f"127.0.0.1:{port}") as proc:
            _ready(proc)
            shown = _ip("-n", guest, "link", "show", "eth0").stdout
            assert GUEST_MAC in shown
            assert "mtu 1220" in shown
            assert f"{GUEST_IP}/24" in _ip("-n", guest, "addr", "show", "eth0").stdout
            _ping_through(guest, recv, lambda frame: endpoint.sendto(frame, peer[0]))
            assert peer[0][0] == "127.0.0.1"  # QEMU's localaddr: a socket of the bridge's own
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert _gone(guest), "the TAP device outlived the bridge"


def test_tcp_frames_carry_a_u32_big_endian_length(guest: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        with bridge(guest, "--connect", f"127.0.0.1:{port}") as proc:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                _ready(proc)

                def recv() -> bytes:
                    (length,) = struct.unpack(">I", _exactly(conn, 4))
                    return _exactly(conn, length)

                def send(frame: bytes) -> None:
                    # A zero-length frame first, then the frame in two writes with the
                    # prefix split: the bridge must reassemble by the prefix alone.
                    data = struct.pack(">I", 0) + struct.pack(">I", len(frame)) + frame
                    conn.sendall(data[:6])
                    conn.sendall(data[6:])

                _ping_through(guest, recv, send)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=10) == 0
        assert _gone(guest), "the TAP device outlived the bridge"


def test_tcp_bridge_stops_on_a_length_no_qemu_sends_and_when_the_endpoint_closes(
    guest: str,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(2)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        with bridge(guest, "--connect", f"127.0.0.1:{port}") as proc:
            conn, _ = listener.accept()
            with conn:
                _ready(proc)
                conn.sendall(struct.pack(">I", 1 << 30))  # would be a 1 GiB buffer
                assert proc.wait(timeout=10) == 2
                assert proc.stderr is not None
                assert "not QEMU framing" in proc.stderr.read()
        assert _gone(guest)
        with bridge(guest, "--connect", f"127.0.0.1:{port}") as proc:
            conn, _ = listener.accept()
            _ready(proc)
            conn.close()
            assert proc.wait(timeout=10) == 1
        assert _gone(guest)


def _exactly(conn: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        assert chunk, "the bridge closed the connection"
        data += chunk
    return bytes(data)
