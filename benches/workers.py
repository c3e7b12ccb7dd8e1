"""How golem-vpn's sending datapath scales with its threads (``daemon --workers``; issue 9).

Run as root (it makes its own namespaces and removes them, and stops every process it
started, even on failure)::

    python benches/workers.py                      # workers 1 and 2, 3 rounds of 5 s
    python benches/workers.py --workers 1,2,4 --seconds 10 --json out.json

What it isolates: one provider daemon's sending side. A payload namespace on host A sends UDP
at ``--offered`` Gbit/s, more than the datapath takes, in ``--flows`` flows (one thread each,
64 KiB writes with ``UDP_SEGMENT``, so the kernel hands the TUN device one packet per write:
little work for anyone but the datapath); provider A's daemon reads its TUN queues,
segments, seals and sends to provider B over the veth underlay. Once the path is direct, an
nftables rule on host B drops the data datagrams (whole GSO bursts, before anything copies
them), so nothing on B competes for the cores; the small ones (keep-alives, handshakes) still
pass, and A keeps its path.
The figure is what left host A on the underlay (``eth0``'s bytes) per second, with the CPU
seconds provider A's process used per GB of it.

In iperf3 runs (``benches/peers.py``) both daemons, both iperf3 ends and the kernel's TCP share
the machine, so on two cores no path's four streams beat its one; this measures the one thing
per-core workers change, the sending datapath's own capacity, with the rest made cheap.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from golem_vpn.lab import Lab, LabError, in_netns, run
from peers import cpu_idle, cpu_seconds, run_with_input  # benches/ is the script's path

PREFIX = "gvw"
UNDERLAY = "198.18.81.0/24"
NETWORK = "192.168.81.0/24"

# Sends UDP from FLOWS threads (one socket and source port each) for SECONDS, 64 KiB per write
# cut into datagrams of SEGMENT bytes by the kernel (UDP GSO), paced to OFFERED Gbit/s in all
# (more than the datapath takes: a TUN device drops what its queue cannot hold, and an unpaced
# sender would only burn the cores the datapath needs); prints the bytes written.
_SENDER = textwrap.dedent(
    """
    import socket, sys, threading, time
    target, flows, seconds, segment, offered = sys.argv[1:6]
    flows, seconds, segment = int(flows), float(seconds), int(segment)
    payload = bytes(segment * (65000 // segment))
    gap = len(payload) * 8 * flows / (float(offered) * 1e9)  # seconds between one flow's writes
    totals = [0] * flows
    def run(i):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_UDP, 103, segment)  # UDP_SEGMENT
        s.connect((target, 9000 + i))
        start = time.monotonic()
        end, due, sent = start + seconds, start + gap * i / flows, 0
        while (now := time.monotonic()) < end:
            if now < due:
                time.sleep(due - now)
            due += gap
            try:
                sent += s.send(payload)
            except OSError:
                pass
        totals[i] = sent
    threads = [threading.Thread(target=run, args=(i,)) for i in range(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(totals))
    """
)


def tx_bytes(netns: str, ifname: str = "eth0") -> int:
    """Bytes ``ifname`` in ``netns`` has sent."""
    out = run(*in_netns(netns, "cat", f"/sys/class/net/{ifname}/statistics/tx_bytes")).stdout
    return int(out)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by thread name (same names summed)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        out[name] = out.get(name, 0.0) + ticks / os.sysconf("SC_CLK_TCK")
    return out


def daemon_pid(lab: Lab, name: str) -> int:
    """The daemon process (``nsenter`` execs it, so the lab's process is the daemon)."""
    for proc in lab.procs:
        if name in " ".join(map(str, proc.args)):
            return proc.pid
    raise LabError(f"no process for {name}")


def wait_direct(payload: str, target: str, relay_pid: int, segment: int) -> None:
    """Waits (30 s at most) until the providers' path is direct: a 1 s burst through the
    tunnel costs the relay no CPU. Until hole punching has run, packets go through the
    relay, which would be measured instead of the datapath."""
    deadline = time.monotonic() + 30
    while True:
        before = cpu_seconds([relay_pid])
        run(
            *in_netns(payload, sys.executable, "-c", _SENDER, target, "1", "1", str(segment), "0.5")
        )
        if cpu_seconds([relay_pid]) - before < 0.02:
            return
        if time.monotonic() > deadline:
            raise LabError("the providers' path stayed on the relay for 30 s")


def one_run(
    workers: int, flows: int, seconds: float, segment: int, offered: float
) -> dict[str, float]:
    """A fresh lab; returns Gbit/s on the underlay, CPU s/GB of provider A, and what the
    payload wrote."""
    with Lab(PREFIX, UNDERLAY) as lab:
        a, b = lab.host("a"), lab.host("b")
        relay = lab.relay(a)
        req = lab.daemon(a, relay=relay, name="requestor")
        prov_a = lab.daemon(a, relay=relay, name="prov-a", args=("--workers", str(workers)))
        prov_b = lab.daemon(b, relay=relay, name="prov-b")
        _, deploys = req.create_network(NETWORK, [prov_a, prov_b])
        pay_a, pay_b = f"{PREFIX}-pa", f"{PREFIX}-pb"
        prov_a.attach_tun(deploys[0], pay_a)
        prov_b.attach_tun(deploys[1], pay_b)
        target = deploys[1]["net"][0]["nodeIp"]
        deadline = time.monotonic() + 30
        while run(*in_netns(pay_a, "ping", "-c1", "-W1", target), check=False).returncode:
            if time.monotonic() > deadline:
                raise LabError(f"no ping from {pay_a} to {target}: {lab.logs()}")
        pid_a = daemon_pid(lab, "prov-a")
        wait_direct(pay_a, target, daemon_pid(lab, " relay "), segment)
        # B's kernel drops the data (whole GSO bursts, before any copy); B's daemon still
        # gets and sends the small messages (keep-alives, handshakes), so A keeps the path.
        port = prov_b.udp.rsplit(":", 1)[1]
        run_with_input(
            *in_netns(b, "nft", "-f", "-"),
            data=f"table inet {PREFIX} {{\n chain in {{ type filter hook input priority 0; "
            f"udp dport {port} meta length gt 400 drop; }}\n}}\n",
        )
        try:
            threads0, idle0 = thread_cpu(pid_a), cpu_idle()
            bytes0, cpu0, t0 = tx_bytes(a), cpu_seconds([pid_a]), time.monotonic()
            load = [target, str(flows), str(seconds), str(segment), str(offered)]
            sender = run(
                *in_netns(pay_a, sys.executable, "-c", _SENDER, *load), timeout=seconds + 60
            )
            bytes1, cpu1, t1 = tx_bytes(a), cpu_seconds([pid_a]), time.monotonic()
            threads1, idle1 = thread_cpu(pid_a), cpu_idle()
        finally:
            run(*in_netns(b, "nft", "delete", "table", "inet", PREFIX), check=False)
        moved = bytes1 - bytes0
        busy = {
            f"cpu {name}": round((threads1[name] - threads0.get(name, 0.0)) / (t1 - t0), 3)
            for name in threads1
            if name.startswith("golem-vpn-")
        }
        return {
            **busy,
            "idle %": 100 * (idle1[0] - idle0[0]) / max(1, idle1[1] - idle0[1]),
            "gbit_s": moved * 8 / (t1 - t0) / 1e9,
            "cpu_s_per_gb": (cpu1 - cpu0) / (moved / 1e9) if moved else float("inf"),
            "written_gbit_s": int(sender.stdout) * 8 / (t1 - t0) / 1e9,
        }


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated (default 1,2)")
    parser.add_argument("--flows", type=int, default=8, help="UDP flows (default 8)")
    parser.add_argument("--seconds", type=float, default=5, help="per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="medians of this many (default 3)")
    parser.add_argument("--segment", type=int, default=1340,
                        help="UDP datagram size (default 1340: fills a 1368 MTU)")  # fmt: skip
    parser.add_argument("--offered", type=float, default=12,
                        help="Gbit/s the payload sends, all flows (default 12)")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("workers.py needs root (namespaces, TUN devices)", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    samples: dict[int, list[dict[str, float]]] = {w: [] for w in counts}
    started = datetime.datetime.now(datetime.UTC)
    try:
        for n in range(args.rounds):
            for w in counts:  # interleaved, so the machine's load hits both alike
                print(f"round {n + 1}/{args.rounds}: --workers {w}", file=sys.stderr)
                samples[w].append(one_run(w, args.flows, args.seconds, args.segment, args.offered))
    except (LabError, subprocess.SubprocessError) as exc:
        print(f"workers.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"workers.py: interrupted ({exc})", file=sys.stderr)
        return 130
    base = statistics.median(s["gbit_s"] for s in samples[counts[0]])
    print(f"| --workers | Gbit/s sent | x of --workers {counts[0]} | daemon CPU s/GB |")
    print("|---|---|---|---|")
    for w in counts:
        gbit = statistics.median(s["gbit_s"] for s in samples[w])
        cpu = statistics.median(s["cpu_s_per_gb"] for s in samples[w])
        print(f"| {w} | {gbit:.2f} | {gbit / base:.2f}x | {cpu:.2f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "cores": os.cpu_count(),
                    "kernel": os.uname().release,
                    "args": vars(args),
                    "samples": {str(k): v for k, v in samples.items()},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
