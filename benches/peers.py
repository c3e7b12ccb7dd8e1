"""golem-vpn next to the VPNs people already run: iperf3 and ping through each (issue 9).

Run as root (it makes its own namespaces and removes them, and stops every process it started,
even on failure, Ctrl-C or SIGTERM)::

    python benches/peers.py                        # 3 rounds, 10 s per iperf3 test, medians
    python benches/peers.py --quick                # 1 round, 3 s per test, UDP at 100M only
    python benches/peers.py --paths veth,golem-vpn --json out.json
    python benches/peers.py --quick --strict       # CI: every path must work

Missing peers are installed with ``apt-get`` (wireguard-go, wireguard-tools, nebula, tinc,
openvpn, iperf3, iputils-ping).

The layout, all on this machine (:class:`golem_vpn.lab.Lab`): two hosts, namespaces ``gvp-a``
and ``gvp-b``, each with a veth into a bridge (namespace ``gvp-sw``): the underlay,
198.18.79.0/24, MTU 1500. Every peer runs its two ends on these hosts, over this underlay, in
userspace (kernel WireGuard and OpenVPN's kernel offload are not used: all of them read and
write a TUN device, as golem-vpn does). iperf3 clients and ``ping`` run on side A, iperf3
servers on side B.

============  ===================================================================  =====  =========
path          set-up                                                               MTU    overhead
============  ===================================================================  =====  =========
veth          host A -> host B over the bare underlay                               1500   0
golem-vpn     relay, requestor and provider A's daemons on A, provider B's on B;   M      91
              each provider attaches a payload namespace (``gvp-pa``, ``gvp-pb``)
              with ``golem-vpn attach --tun --netns``; Noise, AES-256-GCM
golem-vpn-mq  the same with ``daemon --workers N`` (N = the cores, at least 2):      M      91
              multi-queue TUN devices, a datapath thread per queue
wireguard-go  ``wireguard-go`` in each host, keys and peer set with ``wg``          M      60
nebula        CA and host certs from ``nebula-cert``, lighthouse on A, static       M      60
              host map over the underlay, cipher ``aes`` (AES-256-GCM)
tinc          tinc 1.0, router mode, RSA keys from ``tincd -K``, aes-256-cbc and    M      <= 66
              HMAC-SHA256 (4 bytes, the defaults), no PMTU discovery (see below)
openvpn       point-to-point TLS (self-signed EC certs pinned with                 M      52
              ``--peer-fingerprint``), AES-256-GCM, UDP, ``--disable-dco``
============  ===================================================================  =====  =========

The overhead is bytes per packet on the IPv4 underlay: IP 20 + UDP 8, plus golem-vpn's 63
(type 1, receiver index 4, counter 8, kind and network id 2 + 32, tag 16), WireGuard's 32
(type and receiver index 8, counter 8, tag 16; shorter packets are padded to 16 bytes, a
full-MTU one is not), nebula's 32 (header 16, tag 16), tinc 1.0's up to 38 (sequence number
4, the Ethernet header it carries even in router mode 14, CBC padding 1-16, MAC 4) or
OpenVPN's 24 (opcode and peer id 4, packet id 4, tag 16).

Every tunnel gets the same MTU, M: golem-vpn's default TUN MTU
(``golem_vpn.exeunit.options.DEFAULT_MTU``; 1368 today, the largest packet golem-vpn carries
over a 1500-byte underlay unfragmented even relayed over IPv6). So each tunnel carries the
same packets and none fragments on the underlay (WireGuard's usual 1420 or nebula's default
1300 would change the packets per byte by a few percent). The table's first row is each
path's device MTU as measured, not as configured. tinc 1.0 sends packets larger than the path
MTU it has discovered so far over its TCP meta connection; the underlay's MTU is known here,
so discovery is off and everything goes by UDP.

Each round measures every path in turn: iperf3 TCP with one and four streams, A to B and B to
A (``-R``); iperf3 UDP A to B at fixed rates, datagrams of M - 28 bytes (each fills one tunnel
packet), with the loss; and the median of 20 pings (one every 50 ms, after two to warm up).
The table has each path's medians over the rounds, with their ratio to the bare veth, and the
RTT a path adds to the veth's; ``--json`` writes every sample too. A path that fails to start,
to pass a ping, or to move data is reported as FAILED with the reason; the exit status is 1
if veth or golem-vpn failed (any path, with ``--strict``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from golem_vpn.exeunit.options import DEFAULT_MTU
from golem_vpn.lab import Lab, LabError, in_netns, run

PREFIX = "gvp"
UNDERLAY = "198.18.79.0/24"
TUNNEL_MTU = DEFAULT_MTU  # golem-vpn attach's default; every peer gets the same
UDP_LEN = TUNNEL_MTU - 28  # IPv4 + UDP headers: one datagram fills one tunnel packet
UDP_RATES = ("100M", "500M", "1G")
PATHS = ("veth", "golem-vpn", "golem-vpn-mq", "wireguard-go", "nebula", "tinc", "openvpn")
#: The datapath threads per TUN attachment of the golem-vpn-mq path (``daemon --workers``).
MQ_WORKERS = max(2, min(os.cpu_count() or 2, 16))
ESSENTIAL = ("veth", "golem-vpn")
# Ports of the peers: below Linux's ephemeral range, where golem-vpn's daemons bind.
WG_PORT, NEBULA_PORT, TINC_PORT, OPENVPN_PORT = 21820, 4242, 655, 1194
WG_RUN = Path("/var/run/wireguard")

# The programs each path needs, and the Debian package of each program.
COMMON_TOOLS = ("ip", "iperf3", "ping")
TOOLS: dict[str, tuple[str, ...]] = {
    "veth": (),
    "golem-vpn": ("nsenter",),
    "golem-vpn-mq": ("nsenter",),
    "wireguard-go": ("wireguard-go", "wg"),
    "nebula": ("nebula", "nebula-cert"),
    "tinc": ("tincd",),
    "openvpn": ("openvpn", "openssl"),
}
PACKAGES = {
    "ip": "iproute2",
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "nsenter": "util-linux",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "nebula": "nebula",
    "nebula-cert": "nebula",
    "tincd": "tinc",
    "openvpn": "openvpn",
    "openssl": "openssl",
}


class PathFailed(RuntimeError):
    """A path could not be set up or measured (the message says why)."""


@dataclass(frozen=True)
class Route:
    """Where a path's traffic goes: iperf3 client and ping in ``client``, the iperf3 server
    in ``server`` at ``target``."""

    client: str
    server: str
    target: str


@dataclass
class PathResult:
    """One path's samples over the rounds, or why it failed."""

    name: str
    route: Route | None = None
    mtu: int | None = None
    failure: str | None = None
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: The path's own processes (daemons, relays, peers' daemons), whose CPU time is counted.
    pids: list[int] = field(default_factory=list)
    #: A name for each of ``pids`` (a golem-vpn daemon's data directory, else the program).
    labels: dict[int, str] = field(default_factory=dict)

    def add(self, metric: str, value: float) -> None:
        """Records one round's figure."""
        self.samples.setdefault(metric, []).append(value)

    def medians(self) -> dict[str, float]:
        """The median of each metric over the rounds."""
        return {k: statistics.median(v) for k, v in self.samples.items() if v}


@dataclass(frozen=True)
class Hosts:
    """The two hosts of the underlay and the lab that made them."""

    lab: Lab
    a: str
    b: str

    def sides(self) -> tuple[tuple[str, str, str, str], ...]:
        """(tag, namespace, underlay address, peer's underlay address) for A, then B."""
        addr = self.lab.addresses
        return (
            ("a", self.a, addr[self.a], addr[self.b]),
            ("b", self.b, addr[self.b], addr[self.a]),
        )


# --- small helpers -------------------------------------------------------------------------


def run_with_input(*cmd: str, data: str = "", timeout: float = 120) -> str:
    """Runs a command with ``data`` on stdin (never a terminal: nothing prompts); its stdout."""
    done = subprocess.run(
        cmd, input=data, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_until(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    proc: subprocess.Popen[str] | None = None,
) -> None:
    """Polls ``ready`` every 0.1 s until it holds; raises :class:`PathFailed` after
    ``timeout`` seconds, or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise PathFailed(f"exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise PathFailed(f"no {what} within {timeout:g} s")
        time.sleep(0.1)


def log_tails(lab: Lab, path: str, lines: int = 5) -> str:
    """The last ``lines`` lines of each log of ``path``'s processes, on one line."""
    tails = []
    for pattern in LOGS[path]:
        for log in sorted(lab.work.glob(pattern)):
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
                tails.append(f"{log.name}: " + " | ".join(line.strip() for line in tail))
    return "; ".join(tails)


def link_exists(netns: str, ifname: str) -> bool:
    """Whether ``ifname`` exists in ``netns``."""
    return run("ip", "-n", netns, "link", "show", ifname, check=False).returncode == 0


def wait_for_device(
    netns: str, ifname: str, proc: subprocess.Popen[str], *, socket: Path | None = None
) -> None:
    """Waits (10 s at most) until a peer's process made its device (and ``socket``)."""

    def ready() -> bool:
        return link_exists(netns, ifname) and (socket is None or socket.exists())

    wait_until(f"device {ifname}", ready, 10, proc)


def up(netns: str, ifname: str, address: str) -> None:
    """Gives a tunnel device its overlay address (``/24``), the common MTU, and brings it up."""
    run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", ifname)
    run("ip", "-n", netns, "link", "set", ifname, "mtu", str(TUNNEL_MTU), "up")


# --- the paths -----------------------------------------------------------------------------


def start_veth(hosts: Hosts) -> Route:
    """The bare underlay: host A to host B."""
    return Route(hosts.a, hosts.b, hosts.lab.addresses[hosts.b])


def start_golem_vpn(hosts: Hosts, *, workers: int = 1) -> Route:
    """A relay, the requestor's daemon and two providers' daemons; each provider attaches a
    payload namespace by TUN, exactly as a provider's runtime does. With ``workers`` > 1 (the
    golem-vpn-mq path) the providers run with ``--workers``: multi-queue devices, a datapath
    thread per queue."""
    lab = hosts.lab
    tag = "" if workers == 1 else "mq"
    relay = lab.relay(hosts.a, name=f"{tag}{hosts.a}")
    req = lab.daemon(hosts.a, relay=relay, name=f"requestor{tag}")
    flags = ("--workers", str(workers))
    prov_a, prov_b = (
        lab.daemon(host, relay=relay, name=f"{host}{tag}", args=flags)
        for host in (hosts.a, hosts.b)
    )
    subnet = "192.168.79.0/24" if workers == 1 else "192.168.78.0/24"
    _, deploys = req.create_network(subnet, [prov_a, prov_b])
    pay_a, pay_b = f"{PREFIX}-p{tag}a", f"{PREFIX}-p{tag}b"
    prov_a.attach_tun(deploys[0], pay_a)  # MTU: attach's default, TUNNEL_MTU
    prov_b.attach_tun(deploys[1], pay_b)
    return Route(pay_a, pay_b, deploys[1]["net"][0]["nodeIp"])


def start_wireguard(hosts: Hosts) -> Route:
    """wireguard-go in the foreground in each host, configured with ``wg``."""
    lab, net = hosts.lab, "192.168.82"
    work = lab.work / "wireguard"
    work.mkdir()
    public: dict[str, str] = {}
    for tag, *_ in hosts.sides():
        private = run("wg", "genkey").stdout.strip()
        (work / f"{tag}.key").write_text(private + "\n")
        (work / f"{tag}.key").chmod(0o600)
        public[tag] = run_with_input("wg", "pubkey", data=private + "\n").strip()
    for i, (tag, netns, _, peer_addr) in enumerate(hosts.sides()):
        ifname, other = f"{PREFIX}wg-{tag}", "b" if tag == "a" else "a"
        cmd = in_netns(netns, "env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", ifname)
        proc = lab.popen(cmd, f"wireguard-go-{tag}.log", capture_stdout=False)
        wait_for_device(netns, ifname, proc, socket=WG_RUN / f"{ifname}.sock")
        run(*in_netns(netns, "wg", "set", ifname, "private-key", str(work / f"{tag}.key"),
                      "listen-port", str(WG_PORT), "peer", public[other], "endpoint",
                      f"{peer_addr}:{WG_PORT}", "allowed-ips", f"{net}.{2 - i}/32"))  # fmt: skip
        up(netns, ifname, f"{net}.{i + 1}")
    return Route(hosts.a, hosts.b, f"{net}.2")


def start_nebula(hosts: Hosts) -> Route:
    """A CA and two host certs; A is the lighthouse, both know each other's underlay address."""
    lab, net = hosts.lab, "192.168.83"
    work = lab.work / "nebula"
    work.mkdir()
    ca_crt, ca_key = str(work / "ca.crt"), str(work / "ca.key")
    run("nebula-cert", "ca", "-name", f"{PREFIX} bench", "-out-crt", ca_crt, "-out-key", ca_key)
    overlay = {tag: f"{net}.{i + 1}" for i, (tag, *_) in enumerate(hosts.sides())}
    static_map = {overlay[tag]: [f"{addr}:{NEBULA_PORT}"] for tag, _, addr, _ in hosts.sides()}
    procs: list[subprocess.Popen[str]] = []
    for tag, netns, addr, _ in reversed(hosts.sides()):  # B first: A, the lighthouse, dials it
        crt, key = str(work / f"{tag}.crt"), str(work / f"{tag}.key")
        run("nebula-cert", "sign", "-ca-crt", ca_crt, "-ca-key", ca_key, "-name", tag, "-ip",
            f"{overlay[tag]}/24", "-out-crt", crt, "-out-key", key)  # fmt: skip
        anyone = [{"port": "any", "proto": "any", "host": "any"}]
        config = {
            "pki": {"ca": ca_crt, "cert": crt, "key": key},
            "static_host_map": static_map,
            "lighthouse": {
                "am_lighthouse": tag == "a",
                "interval": 60,
                "hosts": [] if tag == "a" else [overlay["a"]],
            },
            "listen": {"host": addr, "port": NEBULA_PORT},
            "punchy": {"punch": False},
            "relay": {"am_relay": False, "use_relays": False},
            "cipher": "aes",
            "tun": {"disabled": False, "dev": f"{PREFIX}neb-{tag}", "mtu": TUNNEL_MTU},
            "logging": {"level": "info", "format": "text"},
            "firewall": {"outbound": anyone, "inbound": anyone},
        }
        path = work / f"{tag}.yml"  # JSON is YAML
        path.write_text(json.dumps(config, indent=2))
        cmd = in_netns(netns, "nebula", "-config", str(path))
        procs.append(lab.popen(cmd, f"nebula-{tag}.log", capture_stdout=False))
    for proc, (tag, netns, *_) in zip(procs, reversed(hosts.sides()), strict=True):
        wait_for_device(netns, f"{PREFIX}neb-{tag}", proc)
    return Route(hosts.a, hosts.b, overlay["b"])


def start_tinc(hosts: Hosts) -> Route:
    """tinc 1.0 in router mode; A connects to B."""
    lab, net = hosts.lab, "192.168.84"
    work = lab.work / "tinc"
    confs = {tag: work / tag for tag, *_ in hosts.sides()}
    for i, (tag, _, addr, _) in enumerate(hosts.sides()):
        conf = confs[tag]
        (conf / "hosts").mkdir(parents=True)
        connect = "ConnectTo = b\n" if tag == "a" else ""
        (conf / "tinc.conf").write_text(
            f"Name = {tag}\nInterface = {PREFIX}tinc-{tag}\nMode = router\n"
            f"AddressFamily = ipv4\n{connect}"
        )
        (conf / "hosts" / tag).write_text(
            f"Address = {addr}\nPort = {TINC_PORT}\nSubnet = {net}.{i + 1}/32\n"
            "Cipher = aes-256-cbc\nDigest = sha256\nMACLength = 4\nPMTUDiscovery = no\n"
        )
        tinc_up = conf / "tinc-up"
        tinc_up.write_text(
            f'#!/bin/sh\nip addr add {net}.{i + 1}/24 dev "$INTERFACE"\n'
            f'ip link set "$INTERFACE" mtu {TUNNEL_MTU} up\n'
        )
        tinc_up.chmod(0o755)
        run_with_input("tincd", "-c", str(conf), "-K2048")  # appends the public key to hosts/TAG
    for tag, conf in confs.items():  # each side gets the other's host file (and public key)
        for other, other_conf in confs.items():
            if other != tag:
                shutil.copy(other_conf / "hosts" / other, conf / "hosts" / other)
    for tag, netns, *_ in reversed(hosts.sides()):  # B first: A dials it
        conf = confs[tag]
        cmd = in_netns(netns, "tincd", "-c", str(conf), "-D", f"--pidfile={conf / 'tinc.pid'}")
        proc = lab.popen(cmd, f"tinc-{tag}.log", capture_stdout=False)
        wait_for_device(netns, f"{PREFIX}tinc-{tag}", proc)
    return Route(hosts.a, hosts.b, f"{net}.2")


def start_openvpn(hosts: Hosts) -> Route:
    """OpenVPN point to point over UDP with TLS: a self-signed certificate per side, each side
    pinning the other's by fingerprint (no CA); A is the TLS server."""
    lab, net = hosts.lab, "192.168.85"
    work = lab.work / "openvpn"
    work.mkdir()
    fingerprint: dict[str, str] = {}
    for tag, *_ in hosts.sides():
        crt, key = str(work / f"{tag}.crt"), str(work / f"{tag}.key")
        run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
            "-days", "2", "-subj", f"/CN={PREFIX}-{tag}")  # fmt: skip
        out = run("openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256").stdout
        fingerprint[tag] = out.strip().split("=", 1)[1]
    for i, (tag, netns, addr, peer_addr) in enumerate(hosts.sides()):
        other = "b" if tag == "a" else "a"
        cmd = ["openvpn", "--dev", f"{PREFIX}ovpn-{tag}", "--dev-type", "tun", "--disable-dco",
               "--proto", "udp", "--local", addr, "--lport", str(OPENVPN_PORT),
               "--remote", peer_addr, "--rport", str(OPENVPN_PORT),
               "--ifconfig", f"{net}.{i + 1}", f"{net}.{2 - i}", "--tun-mtu", str(TUNNEL_MTU),
               "--cert", str(work / f"{tag}.crt"), "--key", str(work / f"{tag}.key"),
               "--peer-fingerprint", fingerprint[other], "--data-ciphers", "AES-256-GCM",
               "--verb", "3"]  # fmt: skip
        cmd += ["--tls-server", "--dh", "none"] if tag == "a" else ["--tls-client"]
        lab.popen(in_netns(netns, *cmd), f"openvpn-{tag}.log", capture_stdout=False)
    return Route(hosts.a, hosts.b, f"{net}.2")


# The logs that explain a path's failure (in the lab's work directory).
LOGS: dict[str, tuple[str, ...]] = {
    "veth": (),
    "golem-vpn": (f"relay-{PREFIX}-?.log", "requestor.log", f"{PREFIX}-?.log"),
    "golem-vpn-mq": (f"relay-mq{PREFIX}-?.log", "requestormq.log", f"{PREFIX}-?mq.log"),
    "wireguard-go": ("wireguard-go-*.log",),
    "nebula": ("nebula-*.log",),
    "tinc": ("tinc-*.log",),
    "openvpn": ("openvpn-*.log",),
}

STARTERS: dict[str, Callable[[Hosts], Route]] = {
    "veth": start_veth,
    "golem-vpn": start_golem_vpn,
    "golem-vpn-mq": lambda hosts: start_golem_vpn(hosts, workers=MQ_WORKERS),
    "wireguard-go": start_wireguard,
    "nebula": start_nebula,
    "tinc": start_tinc,
    "openvpn": start_openvpn,
}


# --- measurements --------------------------------------------------------------------------


def device_mtu(route: Route) -> int:
    """The MTU of the device the client's packets to the target leave by."""
    (hop,) = json.loads(run("ip", "-n", route.client, "-j", "route", "get", route.target).stdout)
    cmd = ("ip", "-n", route.client, "-j", "link", "show", "dev", hop["dev"])
    (link,) = json.loads(run(*cmd).stdout)
    return int(link["mtu"])


def first_ping(route: Route, timeout: float = 30) -> None:
    """Waits (one ping a second) until ``route`` answers a ping."""
    cmd = in_netns(route.client, "ping", "-n", "-c", "1", "-W", "1", route.target)
    wait_until(f"ping reply from {route.target}", lambda: run(*cmd, check=False).returncode == 0,
               timeout)  # fmt: skip


def ping_ms(route: Route, count: int = 20) -> float:
    """Median RTT of ``count`` pings, one every 50 ms, after two to warm up; milliseconds."""
    run(*in_netns(route.client, "ping", "-n", "-c", "2", "-W", "5", route.target), check=False)
    cmd = in_netns(route.client, "ping", "-n", "-c", str(count), "-i", "0.05", route.target)
    out = run(*cmd, check=False, timeout=60).stdout
    rtts = [float(part.split("=")[1]) for part in out.split() if part.startswith("time=")]
    if not rtts:
        raise PathFailed(f"no ping replies from {route.target}")
    return statistics.median(rtts)


def iperf(
    lab: Lab,
    route: Route,
    seconds: int,
    *,
    streams: int = 1,
    reverse: bool = False,
    rate: str | None = None,
) -> dict[str, Any]:
    """One iperf3 test over ``route`` (TCP, or UDP at ``rate``); iperf3's ``end`` summary.

    A fresh one-off server per test; a failed test is tried once more before it counts.
    """
    client = ["iperf3", "-c", route.target, "-t", str(seconds), "-J"]
    if streams > 1:
        client += ["-P", str(streams)]
    if reverse:
        client.append("-R")
    if rate is not None:
        client += ["-u", "-b", rate, "-l", str(UDP_LEN)]
    error = ""
    for _ in range(2):
        server_cmd = in_netns(route.server, "iperf3", "-s", "-1", "-B", route.target)
        server = lab.popen(server_cmd, "iperf3-server.log", capture_stdout=False)
        try:
            time.sleep(0.3)
            done = run(*in_netns(route.client, *client), check=False, timeout=seconds + 30)
            try:
                result: dict[str, Any] = json.loads(done.stdout)
            except ValueError:
                result = {"error": (done.stderr or done.stdout).strip()[-300:]}
            if "error" not in result and done.returncode == 0:
                end: dict[str, Any] = result["end"]
                return end
            error = str(result.get("error", f"exit status {done.returncode}"))
        except subprocess.TimeoutExpired:
            error = f"iperf3 did not finish within {seconds + 30} s"
        finally:
            if server.poll() is None:
                server.kill()
            server.wait(timeout=10)
    raise PathFailed(f"`{' '.join(client)}`: {error}")


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU time so far of ``pids`` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def thread_seconds(labels: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of each golem-vpn datapath thread (``golem-vpn-*``: the node's
    ``datapath``, sending ``txN``, receiving ``rxN``) of the processes ``labels`` names, as
    ``"LABEL THREAD"`` -> seconds (from ``schedstat``); empty for other programs."""
    seconds: dict[str, float] = {}
    for pid, label in labels.items():
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                name = (task / "comm").read_text().strip()
                if name.startswith("golem-vpn-"):
                    on_cpu = int((task / "schedstat").read_text().split()[0]) / 1e9
                    thread = name.removeprefix("golem-vpn-")
                    # comm keeps 15 bytes: "golem-vpn-datap" is the node's own thread.
                    thread = "node" if thread.startswith("datap") else thread
                    key = f"{label} {thread}"
                    seconds[key] = seconds.get(key, 0.0) + on_cpu
    return seconds


def proc_label(proc: subprocess.Popen[str]) -> str:
    """A name for a path's process: a golem-vpn daemon's data directory, a relay's "relay",
    else the program."""
    args = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
    if "--data-dir" in args[:-1]:
        return Path(args[args.index("--data-dir") + 1]).name
    if "relay" in args:
        return "relay"
    return Path(args[0]).name


def cpu_idle() -> tuple[int, int]:
    """(idle + iowait, total) jiffies of every core so far, from ``/proc/stat``."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return ticks[3] + ticks[4], sum(ticks)


def measure(lab: Lab, result: PathResult, seconds: int, udp_rates: list[str]) -> None:
    """One round on one path: TCP x1 and x4 both ways (with the CPU seconds the path's own
    processes spent per GB moved, and how idle the machine's cores were), UDP at each rate,
    ping."""
    route = result.route
    assert route is not None
    for streams in (1, 4):
        for reverse, way in ((False, "a->b"), (True, "b->a")):
            cpu0, (idle0, all0) = cpu_seconds(result.pids), cpu_idle()
            threads0, started = thread_seconds(result.labels), time.monotonic()
            end = iperf(lab, route, seconds, streams=streams, reverse=reverse)
            cpu1, (idle1, all1) = cpu_seconds(result.pids), cpu_idle()
            threads1, took = thread_seconds(result.labels), time.monotonic() - started
            for thread, on_cpu in threads1.items():
                busy = (on_cpu - threads0.get(thread, 0.0)) / took
                result.add(f"tcp x{streams} {way} core {thread}", busy)
            result.add(f"tcp x{streams} {way} Gbit/s", end["sum_received"]["bits_per_second"] / 1e9)
            moved = float(end["sum_received"]["bytes"]) / 1e9
            if result.pids and moved > 0:
                result.add(f"tcp x{streams} {way} cpu s/GB", (cpu1 - cpu0) / moved)
            if all1 > all0:
                result.add(f"tcp x{streams} {way} idle %", 100 * (idle1 - idle0) / (all1 - all0))
            retransmits = end.get("sum_sent", {}).get("retransmits")
            if retransmits is not None:
                result.add(f"tcp x{streams} {way} retransmits", float(retransmits))
    for rate in udp_rates:
        end = iperf(lab, route, seconds, rate=rate)
        summary, loss = end["sum"], float(end["sum"]["lost_percent"])
        sent = float(end.get("sum_sent", summary)["bits_per_second"])
        result.add(f"udp {rate} loss %", loss)
        result.add(f"udp {rate} rcvd Gbit/s", sent * (1 - loss / 100) / 1e9)
        result.add(f"udp {rate} jitter ms", float(summary.get("jitter_ms", 0.0)))
    result.add("ping ms", ping_ms(route))


# --- set-up, report, clean-up --------------------------------------------------------------


def install_missing(paths: list[str]) -> None:
    """``apt-get install``s the packages of the programs ``paths`` need that are not on PATH
    (an ``apt-get update`` first if the install fails); a failure is left for the paths."""
    needed = {t for p in paths for t in (*COMMON_TOOLS, *TOOLS[p])}
    packages = sorted({PACKAGES[t] for t in needed if shutil.which(t) is None})
    if not packages or shutil.which("apt-get") is None:
        return
    print(f"installing {' '.join(packages)}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    for attempt in range(2):
        if attempt:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        done = subprocess.run(install, env=env, check=False, timeout=900)
        if done.returncode == 0:
            return


def machine() -> dict[str, str]:
    """This machine and the versions of what is compared."""
    cpu, flags = "?", list[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = ("aes", "avx2", "vaes", "avx512f", "vpclmulqdq")
                flags = [f for f in line.split(":", 1)[1].split() if f in wanted]
    info = {
        "cores": str(os.cpu_count()),
        "cpu": f"{cpu} ({' '.join(flags)})",
        "kernel": platform.release(),
    }
    with contextlib.suppress(ImportError):
        import golem_vpn

        profile = getattr(golem_vpn, "build_profile", "?")
        info["golem-vpn"] = f"{getattr(golem_vpn, '__version__', '?')} ({profile})"
    for name, cmd in (
        ("wireguard-go", ["wireguard-go", "--version"]),
        ("nebula", ["nebula", "-version"]),
        ("tinc", ["tincd", "--version"]),
        ("openvpn", ["openvpn", "--version"]),
        ("iperf3", ["iperf3", "--version"]),
    ):
        if shutil.which(cmd[0]) is not None:
            out = run(*cmd, check=False).stdout.strip().splitlines()
            info[name] = out[0] if out else "?"
    return info


def table(results: dict[str, PathResult], udp_rates: list[str], *, markdown: bool) -> str:
    """Metrics down, paths across: medians, each with its ratio to the bare veth."""
    base = results["veth"].medians() if "veth" in results else {}
    ok = {n: r.medians() for n, r in results.items() if r.failure is None}
    metrics = ["device MTU"] + [
        f"tcp x{s} {w} {m}"
        for s in (1, 4)
        for w in ("a->b", "b->a")
        for m in ("Gbit/s", "cpu s/GB", "idle %")
    ]
    for rate in udp_rates:
        metrics += [f"udp {rate} rcvd Gbit/s", f"udp {rate} loss %"]
    metrics += ["ping ms", "added RTT ms"]

    def cell(path: str, metric: str) -> str:
        if path not in ok:
            return "FAILED"
        figures = ok[path]
        if metric == "device MTU":
            return str(results[path].mtu)
        if metric == "added RTT ms":
            if "ping ms" not in figures or "ping ms" not in base:
                return "-"
            return f"{figures['ping ms'] - base['ping ms']:+.3f}"
        if metric not in figures:
            return "-"
        value = figures[metric]
        if metric.endswith("loss %") or metric.endswith("idle %"):
            return f"{value:.2f}%" if metric.endswith("loss %") else f"{value:.0f}%"
        if metric.endswith("cpu s/GB"):
            return f"{value:.2f}"
        text = f"{value:.3f}" if metric == "ping ms" else f"{value:#.3g}".rstrip(".")
        if path == "veth" or not base.get(metric):
            return text
        ratio = value / base[metric]
        return f"{text} ({ratio:.1f}x)" if metric == "ping ms" else f"{text} ({ratio:.0%})"

    rows = [["metric", *results]] + [[m, *(cell(p, m) for p in results)] for m in metrics]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "---|" * len(rows[0]))
    else:
        lines = [f"{row[0]:<24}" + "".join(f"{c:>15}" for c in row[1:]) for row in rows]
    for name, result in results.items():
        if result.failure is not None:
            lines.append(f"{name} FAILED: {result.failure}")
    return "\n".join(lines)


def thread_table(results: dict[str, PathResult], *, markdown: bool) -> str:
    """For each path with golem-vpn datapath threads: how busy each thread was (cores, the
    median over the rounds) in each TCP test; threads under 0.05 of a core are left out."""
    rows = [["path", "test", "datapath threads: cores busy"]]
    for name, result in results.items():
        if result.failure is not None:
            continue
        figures = result.medians()
        for streams in (1, 4):
            for way in ("a->b", "b->a"):
                prefix = f"tcp x{streams} {way} core "
                busy = [
                    f"{k.removeprefix(prefix)} {v:.2f}"
                    for k, v in sorted(figures.items())
                    if k.startswith(prefix) and v >= 0.05
                ]
                if busy:
                    rows.append([name, f"tcp x{streams} {way}", ", ".join(busy)])
    if len(rows) == 1:
        return ""
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|---|---|---|")
        return "\n".join(lines)
    return "\n".join(f"{row[0]:<14}{row[1]:<14}{row[2]}" for row in rows)


def loadavg() -> str:
    """This machine's 1, 5 and 15 minute load averages (others' work shows in the figures)."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "?"


def bench(
    lab: Lab, results: dict[str, PathResult], args: argparse.Namespace, loads: list[str]
) -> None:
    """Hosts, then every path (a failure is recorded, not raised), then the rounds; appends
    the load average at the start of each round, and at the end, to ``loads``."""
    hosts = Hosts(lab, lab.host("a"), lab.host("b"))
    for name, result in results.items():
        missing = [t for t in (*COMMON_TOOLS, *TOOLS[name]) if shutil.which(t) is None]
        if missing:
            result.failure = f"not installed: {' '.join(missing)}"
            continue
        started = time.monotonic()
        before = len(lab.procs)
        try:
            result.route = STARTERS[name](hosts)
            result.pids = [p.pid for p in lab.procs[before:]]
            result.labels = {p.pid: proc_label(p) for p in lab.procs[before:]}
            first_ping(result.route)  # openvpn, for one, makes its device only by now
            result.mtu = device_mtu(result.route)
        except (PathFailed, LabError, OSError, subprocess.SubprocessError, KeyError) as exc:
            tails = log_tails(lab, name)
            result.failure = f"{exc}" + (f" [{tails}]" if tails else "")
            continue
        print(f"{name}: up in {time.monotonic() - started:.1f} s", file=sys.stderr)
    for n in range(args.rounds):
        loads.append(loadavg())
        for name, result in results.items():
            if result.failure is not None:
                continue
            print(f"round {n + 1}/{args.rounds}: {name}", file=sys.stderr)
            try:
                measure(lab, result, args.seconds, args.udp_rates)
            except (PathFailed, LabError, subprocess.SubprocessError, KeyError) as exc:
                result.failure = f"round {n + 1}: {exc}"
    loads.append(loadavg())
    for result in results.values():
        moved = [v for k, v in result.medians().items() if k.endswith("Gbit/s")]
        if result.failure is None and (not moved or min(moved) <= 0):
            result.failure = "moved no data"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS),
                        help=f"comma-separated, from {','.join(PATHS)} (default: all)")  # fmt: skip
    parser.add_argument("--seconds", type=int, default=10, help="per iperf3 test (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many (default 3)")
    parser.add_argument("--udp-rates", default=",".join(UDP_RATES),
                        help="iperf3 -b for the UDP tests (default 100M,500M,1G)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="one round of 3 s tests, UDP at the first rate only")  # fmt: skip
    parser.add_argument("--strict", action="store_true", help="exit 1 if any path failed")
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if unknown or not paths:
        parser.error(f"unknown path(s) {','.join(unknown)}; choose from {','.join(PATHS)}")
    args.udp_rates = [r.strip() for r in args.udp_rates.split(",") if r.strip()]
    if args.quick:
        args.seconds, args.rounds, args.udp_rates = 3, 1, args.udp_rates[:1]
    if os.geteuid() != 0:
        print("peers.py needs root (namespaces, TUN devices)", file=sys.stderr)
        return 2
    install_missing(paths)
    if shutil.which("ip") is None:
        print("peers.py needs ip (apt-get install iproute2)", file=sys.stderr)
        return 2

    results = {name: PathResult(name) for name in PATHS if name in paths}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT: even if inherited ignored
        signal.signal(sig, _interrupt)
    lab = Lab(PREFIX, UNDERLAY)
    interrupted = False
    loads: list[str] = []
    try:
        lab.__enter__()
        bench(lab, results, args, loads)
    except KeyboardInterrupt:
        interrupted = True
    except (LabError, OSError, subprocess.SubprocessError) as exc:  # the underlay itself
        for result in results.values():
            result.failure = result.failure or f"set-up failed: {exc}"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        processes = [{"pid": p.pid, "args": p.args} for p in lab.procs]
        lab.close()
        for tag in ("a", "b"):  # wireguard-go removes its socket unless it was killed
            (WG_RUN / f"{PREFIX}wg-{tag}.sock").unlink(missing_ok=True)
    if interrupted:
        print("interrupted; every namespace and process is gone", file=sys.stderr)
        return 130

    info = machine()
    print(f"{info['cores']} cores, {info['cpu']}, Linux {info['kernel']}; "
          f"{args.rounds} round(s) of {args.seconds} s per test, medians; "
          f"load average at each round's start and the end: {', '.join(loads)}")  # fmt: skip
    print(table(results, args.udp_rates, markdown=args.markdown))
    threads = thread_table(results, markdown=args.markdown)
    if threads:
        print()
        print(threads)
    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "machine": info,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "udp_rates": args.udp_rates,
            "mtu": {name: r.mtu for name, r in results.items()},
            "paths": {
                name: {
                    "status": "ok" if r.failure is None else "FAILED",
                    "reason": r.failure,
                    "medians": r.medians(),
                    "samples": r.samples,
                }
                for name, r in results.items()
            },
            "loadavg": loads,
            "processes": processes,
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    must = paths if args.strict else [p for p in paths if p in ESSENTIAL]
    return 1 if any(results[p].failure is not None for p in must) else 0


if __name__ == "__main__":
    sys.exit(main())
