"""iperf3 and ping between two TUN-attached payloads through golem-vpn, next to the bare veth.

Run as root (it makes its own namespaces and removes them, and every process it started, even
on failure or Ctrl-C)::

    python benches/tun_iperf.py                 # 10 s per iperf3 test, 3 rounds, medians
    python benches/tun_iperf.py --quick         # 2 s per test, 1 round (CI: checks data moved)
    python benches/tun_iperf.py --json out.json

The layout, all on this machine (:class:`golem_vpn.lab.Lab`): two "hosts" (namespaces
``gvb-a``, ``gvb-b``) on a switch, underlay 198.18.77.0/24 (a veth each, bridged). Host A runs
a relay, the requestor's daemon and provider A's daemon; host B runs provider B's daemon. The
requestor makes a network (192.168.77.0/24) with both providers; each provider attaches a
payload namespace (``gvb-pa``, ``gvb-pb``) with ``golem-vpn attach --tun --netns``. iperf3 (one
TCP stream and four) and ``ping`` (median of 20) then run payload A -> payload B through the
VPN, and host A -> host B over the bare underlay, in the same run. Prints a table with each
figure's ratio to the bare underlay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from golem_vpn.lab import Lab, in_netns, run

PAY_A, PAY_B = "gvb-pa", "gvb-pb"
VPN_CIDR = "192.168.77.0/24"


def setup(lab: Lab) -> dict[str, tuple[str, str, str]]:
    """Hosts, daemons and attachments; returns each path's (client netns, server netns,
    server address)."""
    host_a, host_b = lab.host("a"), lab.host("b")
    relay = lab.relay(host_a)
    req = lab.daemon(host_a, relay=relay, name="requestor")
    prov_a, prov_b = lab.daemon(host_a, relay=relay), lab.daemon(host_b, relay=relay)
    _, deploys = req.create_network(VPN_CIDR, [prov_a, prov_b])
    prov_a.attach_tun(deploys[0], PAY_A)
    prov_b.attach_tun(deploys[1], PAY_B)
    return {
        "veth": (host_a, host_b, lab.addresses[host_b]),
        "golem-vpn": (PAY_A, PAY_B, deploys[1]["net"][0]["nodeIp"]),
    }


def ping_ms(ns: str, target: str, count: int = 20) -> float:
    """Median RTT of ``count`` pings (after one warm-up), in milliseconds."""
    run(*in_netns(ns, "ping", "-c", "2", "-W", "5", target), check=False)
    out = run(*in_netns(ns, "ping", "-n", "-c", str(count), "-i", "0.05", target)).stdout
    rtts = [float(part.split("=")[1]) for part in out.split() if part.startswith("time=")]
    if not rtts:
        raise RuntimeError(f"no ping replies from {target}: {out}")
    return statistics.median(rtts)


def iperf(lab: Lab, paths: tuple[str, str, str], seconds: float, streams: int) -> float:
    """iperf3 TCP throughput in Gbit/s (received) from ``paths`` = (client namespace, server
    namespace, server address), with ``streams`` parallel streams."""
    client_ns, server_ns, target = paths
    server = lab.popen(in_netns(server_ns, "iperf3", "-s", "-1", "-B", target), "iperf3.log")
    try:
        time.sleep(0.3)
        client = ["iperf3", "-c", target, "-t", str(seconds), "-P", str(streams), "-J"]
        out = run(*in_netns(client_ns, *client), timeout=seconds + 60).stdout
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
    with Lab("gvb", "198.18.77.0/24") as lab:
        paths = setup(lab)
        for _ in range(args.rounds):
            for name, (cns, sns, target) in paths.items():
                for streams in (1, 4):
                    key = f"{name} tcp x{streams} Gbit/s"
                    samples.setdefault(key, []).append(
                        iperf(lab, (cns, sns, target), args.seconds, streams)
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
