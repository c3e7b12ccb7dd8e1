"""iperf3 and ping between two TUN-attached payloads through golem-vpn, next to the bare veth.

Run as root (it makes its own namespaces and removes them, and every process it started, even
on failure or Ctrl-C)::

    python benches/tun_iperf.py                 # 10 s per iperf3 test, 3 rounds, medians
    python benches/tun_iperf.py --quick         # 2 s per test, 1 round (CI: checks data moved)
    python benches/tun_iperf.py --json out.json

The layout, all on this machine: two "hosts" (namespaces ``gvb-a``, ``gvb-b``) joined by a veth
underlay (198.18.77.1 <-> 198.18.77.2). Host A runs a relay, the requestor's daemon and provider
A's daemon; host B runs provider B's daemon. The requestor makes a network (192.168.77.0/24)
with both providers; each provider attaches a payload namespace (``gvb-pa``, ``gvb-pb``) with
``golem-vpn attach --tun --netns``. iperf3 (one TCP stream and four) and ``ping`` (median of 20)
then run payload A -> payload B through the VPN, and host A -> host B over the bare veth, in the
same run. Prints a table with each figure's ratio to the bare veth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOST_A, HOST_B, PAY_A, PAY_B = "gvb-a", "gvb-b", "gvb-pa", "gvb-pb"
UNDER_A, UNDER_B = "198.18.77.1", "198.18.77.2"
VPN_CIDR = "192.168.77.0/24"
GOLEM_VPN = [sys.executable, "-m", "golem_vpn"]

_DEPLOY_SCRIPT = """
import asyncio, json, sys
from golem_vpn.netapi.client import Client
from golem_vpn.sdk import Network

async def main():
    api, key, cidr, *providers = sys.argv[1:]
    async with Client(api, key) as client:
        net = await Network.create(client, cidr)
        nodes = [await net.add_node(p) for p in providers]
        print(json.dumps([net.deploy_args(n) for n in nodes]))

asyncio.run(main())
"""


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


class Bench:
    """Namespaces and processes of one run; :meth:`close` removes all of them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[subprocess.Popen[str]] = []
        self.namespaces: list[str] = []

    def netns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def spawn(self, ns: str, *cmd: str, log: str) -> subprocess.Popen[str]:
        # nsenter --net, not `ip netns exec`: the latter also gives the process a mount
        # namespace of its own, and the payload namespaces a daemon makes would not be
        # visible outside it.
        with (self.work / log).open("w") as err:
            proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{ns}", *cmd],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.procs.append(proc)
        return proc

    def daemon(self, ns: str, name: str, listen: str, relay: str) -> tuple[str, str, str]:
        """Starts a node daemon; returns (node id, API URL, app key)."""
        data = self.work / name
        created = sh(*GOLEM_VPN, "app-key", "create", "bench", "--json", "--data-dir", str(data))
        key = json.loads(created)["key"]
        proc = self.spawn(
            ns,
            *GOLEM_VPN,
            "daemon",
            "--data-dir",
            str(data),
            "--api",
            "127.0.0.1:0",
            "--listen",
            f"{listen}:0",
            "--relay",
            relay,
            log=f"{name}.log",
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("golem-vpn daemon 0x"):
            raise RuntimeError(
                f"daemon {name} did not start: {(self.work / f'{name}.log').read_text()}"
            )
        return line.split()[2].rstrip(":"), line.split("Net API ")[1].split(",")[0], key

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "delete", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


@contextlib.contextmanager
def bench() -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="gvb-") as work:
        b = Bench(Path(work))
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            yield b
        finally:
            b.close()
            signal.signal(signal.SIGTERM, previous)


def setup(b: Bench) -> tuple[str, str]:
    """Builds the hosts, daemons and attachments; returns payload B's VPN address and host
    B's underlay address."""
    for ns in (HOST_A, HOST_B):
        b.netns(ns)
    sh("ip", "link", "add", "gvb-va", "netns", HOST_A, "type", "veth", "peer", "gvb-vb",
       "netns", HOST_B)  # fmt: skip
    for ns, dev, addr in ((HOST_A, "gvb-va", UNDER_A), (HOST_B, "gvb-vb", UNDER_B)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    relay = b.spawn(HOST_A, *GOLEM_VPN, "relay", "--listen", f"{UNDER_A}:0", log="relay.log")
    assert relay.stdout is not None
    relay_addr = relay.stdout.readline().split()[-1]
    _, req_api, req_key = b.daemon(HOST_A, "requestor", UNDER_A, relay_addr)
    a_id, a_api, a_key = b.daemon(HOST_A, "prov-a", UNDER_A, relay_addr)
    b_id, b_api, b_key = b.daemon(HOST_B, "prov-b", UNDER_B, relay_addr)
    deploys = json.loads(
        sh(
            *in_ns(
                HOST_A, sys.executable, "-c", _DEPLOY_SCRIPT, req_api, req_key, VPN_CIDR, a_id, b_id
            )
        )
    )
    for (ns, api, key, pay), deploy in zip(
        ((HOST_A, a_api, a_key, PAY_A), (HOST_B, b_api, b_key, PAY_B)), deploys, strict=True
    ):
        path = b.work / f"{pay}.json"
        path.write_text(json.dumps(deploy))
        env = ["env", f"YAGNA_API_URL={api}", f"YAGNA_APPKEY={key}"]
        sh(*in_ns(ns, *env, *GOLEM_VPN, "attach", "--tun", "--netns", pay, "--deploy",
                  str(path), "--json"))  # fmt: skip
        b.namespaces.append(pay)  # detached by the daemon on SIGTERM; deleted here if not
    return deploys[1]["net"][0]["nodeIp"], UNDER_B


def ping_ms(ns: str, target: str, count: int = 20) -> float:
    """Median RTT of ``count`` pings (after one warm-up), in milliseconds."""
    sh(*in_ns(ns, "ping", "-c", "2", "-W", "5", target), check=False)
    out = sh(*in_ns(ns, "ping", "-n", "-c", str(count), "-i", "0.05", target), timeout=60)
    rtts = [float(part.split("=")[1]) for part in out.split() if part.startswith("time=")]
    if not rtts:
        raise RuntimeError(f"no ping replies from {target}: {out}")
    return statistics.median(rtts)


def iperf(paths: tuple[str, str, str], seconds: float, streams: int, work: Path) -> float:
    """iperf3 TCP throughput in Gbit/s (received) from ``paths`` = (client namespace, server
    namespace, server address), with ``streams`` parallel streams."""
    client_ns, server_ns, target = paths
    with (work / "iperf3-server.log").open("w") as err:
        server = subprocess.Popen(
            in_ns(server_ns, "iperf3", "-s", "-1", "-B", target),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        time.sleep(0.3)
        out = sh(
            *in_ns(client_ns, "iperf3", "-c", target, "-t", str(seconds), "-P", str(streams),
                   "-J"),
            timeout=seconds + 60,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(out)
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)


def machine() -> str:
    cpu = "?"
    flags: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "?":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f in ("aes", "avx2", "vaes")]
    return f"{os.cpu_count()} cores, {cpu} ({' '.join(flags)}), Linux {platform.release()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per iperf3 test")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--quick", action="store_true", help="one round of 2 s tests")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    if os.geteuid() != 0:
        print("tun_iperf.py needs root (namespaces, TUN devices)", file=sys.stderr)
        return 2
    for tool in ("ip", "iperf3", "ping"):
        if shutil.which(tool) is None:
            print(f"tun_iperf.py needs {tool} (apt-get install iproute2 iperf3 iputils-ping)",
                  file=sys.stderr)  # fmt: skip
            return 2
    samples: dict[str, list[float]] = {}
    with bench() as b:
        vpn_target, veth_target = setup(b)
        paths = {"veth": (HOST_A, HOST_B, veth_target), "golem-vpn": (PAY_A, PAY_B, vpn_target)}
        for _ in range(args.rounds):
            for name, (cns, sns, target) in paths.items():
                for streams in (1, 4):
                    key = f"{name} tcp x{streams} Gbit/s"
                    samples.setdefault(key, []).append(
                        iperf((cns, sns, target), args.seconds, streams, b.work)
                    )
                samples.setdefault(f"{name} ping ms", []).append(ping_ms(cns, target))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rows = []
    for metric in ("tcp x1 Gbit/s", "tcp x4 Gbit/s", "ping ms"):
        base, vpn = medians[f"veth {metric}"], medians[f"golem-vpn {metric}"]
        rows.append((metric, base, vpn, vpn / base if base else float("nan")))
    print(f"{machine()}; {args.rounds} round(s) of {args.seconds:g} s, medians")
    print(f"{'metric':<16}{'bare veth':>12}{'golem-vpn':>12}{'ratio':>9}")
    for metric, base, vpn, ratio in rows:
        print(f"{metric:<16}{base:>12.3f}{vpn:>12.3f}{ratio:>8.1%}")
    added = medians["golem-vpn ping ms"] - medians["veth ping ms"]
    print(f"added RTT: {added:.3f} ms")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine(), "samples": samples, "medians": medians}, indent=2)
        )
    # CI's quick run checks that every path moved data, not how fast.
    moved = all(v > 0 for k, v in medians.items() if "Gbit/s" in k)
    return 0 if moved else 1


if __name__ == "__main__":
    sys.exit(main())
