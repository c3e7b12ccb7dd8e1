"""Plays QEMU's ``-netdev socket`` for the VM-attachment tests, with the Linux kernel as guest.

Run as root: ``python tests/vm_guest_bridge.py --guest NETNS --ip 192.168.x.y/24 --route
NET/PFX [--udp HOST:PORT | --connect HOST:PORT]``. It creates a TAP device (Ethernet frames)
here, moves it into the guest namespace, gives it the MAC ya-runtime-vm's guest uses
(``90:13:`` + its IPv4 address), the address, MTU 1220 (``MTU_VPN``) and the route, and then
carries frames between the TAP device and the golem-vpn endpoint exactly as QEMU does: over UDP
one datagram is one frame (sent from a socket of its own, QEMU's ``localaddr``); over TCP each
frame is prefixed by its length as a u32 big-endian. Prints ``ready`` when carrying; exits 0 on
SIGTERM, 1 when the endpoint closes, 2 on a length prefix beyond ``MAX_FRAME`` (what it holds
is bounded: at most one frame and its prefix). Not a test module: the tests start it
(``test_vm_guest_bridge.py`` checks it against fake endpoints, ``test_exeunit_tun.py`` against
the daemon's).
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import select
import signal
import socket
import struct
import subprocess
import sys

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
MTU_VPN = 1220
MAX_FRAME = 65535  # the largest frame the TCP framing may announce (QEMU's NET_BUFSIZE is 68 KiB)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=15)


def open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--guest", required=True, help="the guest's network namespace")
    parser.add_argument("--ip", required=True, help="the guest's address, IP/PREFIX")
    parser.add_argument("--route", required=True, help="the VPN's range, NET/PREFIX")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--udp", metavar="HOST:PORT", help="udp:// endpoint")
    how.add_argument("--connect", metavar="HOST:PORT", help="tcp-listen:// endpoint")
    args = parser.parse_args()

    iface = ipaddress.ip_interface(args.ip)
    mac = "90:13:" + ":".join(f"{b:02x}" for b in iface.ip.packed)
    name = f"gvtap{os.getpid() % 100000}"
    tap = open_tap(name)
    ip("link", "set", name, "netns", args.guest)
    ip("-n", args.guest, "link", "set", name, "name", "eth0")
    ip("-n", args.guest, "link", "set", "eth0", "address", mac, "mtu", str(MTU_VPN), "up")
    ip("-n", args.guest, "addr", "add", str(iface), "dev", "eth0")
    if str(iface.network) != args.route:
        ip("-n", args.guest, "route", "add", args.route, "dev", "eth0")

    target = args.udp or args.connect
    host, _, port = target.rpartition(":")
    endpoint = (host, int(port))
    if args.udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    else:
        sock = socket.create_connection(endpoint, timeout=5)
        sock.settimeout(None)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    pending = bytearray()
    while not stop:
        readable, _, _ = select.select([tap, sock], [], [], 0.2)
        if tap in readable:
            frame = os.read(tap, 65536)
            if args.udp:
                sock.sendto(frame, endpoint)
            else:
                sock.sendall(struct.pack(">I", len(frame)) + frame)
        if sock in readable:
            if args.udp:
                to_guest(tap, sock.recv(65536))
                continue
            # Read no further than the end of the current frame: the buffer stays bounded.
            want = 4 if len(pending) < 4 else 4 + struct.unpack(">I", pending[:4])[0]
            data = sock.recv(want - len(pending))
            if not data:
                print("the endpoint closed the connection", file=sys.stderr)
                return 1
            pending += data
            if len(pending) < 4:
                continue
            (length,) = struct.unpack(">I", pending[:4])
            if length > MAX_FRAME:
                print(f"frame length {length} > {MAX_FRAME}: not QEMU framing", file=sys.stderr)
                return 2
            if len(pending) == 4 + length:
                if length:
                    to_guest(tap, bytes(pending[4:]))
                pending.clear()
    return 0


_dropped = 0


def to_guest(tap: int, frame: bytes) -> None:
    """Hands a frame to the guest's kernel; one it refuses (runt, link down) is dropped, as
    QEMU drops it. Only the first drop is reported: a reader may never drain stderr."""
    global _dropped
    try:
        os.write(tap, frame)
    except OSError as exc:
        _dropped += 1
        if _dropped == 1:
            print(f"dropped a {len(frame)}-byte frame: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
