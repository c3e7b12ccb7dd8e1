"""TCP over a lossy link: the userspace stack next to the Linux kernel, in one run.

For each round-trip time and loss pattern, one transfer of ``--size`` MiB goes from node A to
node B across the same seeded lossy, delaying UDP link (``benches/lossy_link.py``): once
between two userspace stacks (smoltcp, in this process), and between two TUN-attached
network namespaces (the kernel's TCP over the same tunnel): with CUBIC, Linux's default and the
same kind of congestion control as the userspace stack's, which the ratio is taken against,
and with BBR, for reference (it does not back off on random loss at all). The receiver checks
the SHA-256 of everything it got and reports goodput and the longest stall (the longest wait
for the next bytes). Prints a Markdown table. Needs root (network namespaces, TUN devices).

Run: ``python benches/loss.py [--size MiB] [--rtt MS ...] [--loss CASE ...] [--stack ...]``
where a loss case is a percentage, optionally with ``b`` and a mean burst length
(``1``, ``1b4``: 1 % of datagrams, in bursts of 4 on average).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time

import golem_vpn
from lossy_link import Link, Result, measure

DEFAULT_LOSS = ["0", "0.1", "1", "3", "1b4", "3b4"]


def parse_loss(text: str) -> tuple[float, float]:
    loss, _, burst = text.partition("b")
    return float(loss) / 100, float(burst or 1)


def fmt(result: Result | None) -> tuple[str, str]:
    if result is None:
        return "-", "-"
    ok = "" if result.sha256_ok else " **CORRUPT**"
    return f"{result.mbps:.2f}{ok}", f"{result.max_gap * 1000:.0f}"


async def run(args: argparse.Namespace) -> int:
    size = int(args.size * (1 << 20))
    rows = []
    corrupt = 0
    for rtt in args.rtt:
        for case in args.loss:
            loss, burst = parse_loss(case)
            link = Link(loss=loss, burst=burst, rtt=rtt / 1000, seed=args.seed)
            got: dict[str, Result] = {}
            for stack in args.stack:
                started = time.monotonic()
                result = await measure(stack, link, size)
                got[stack] = result
                corrupt += not result.sha256_ok
                print(
                    f"# {rtt:g} ms, {link.describe()}, {stack}: {result.mbps:.2f} MB/s, "
                    f"longest stall {result.max_gap * 1000:.0f} ms, "
                    f"{result.drop_rate:.2%} dropped, sha256 "
                    f"{'ok' if result.sha256_ok else 'MISMATCH'} "
                    f"({time.monotonic() - started:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            rows.append((rtt, link, got))
    print(
        f"golem-vpn {golem_vpn.__version__} ({golem_vpn.build_profile}), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"Linux {platform.release()}, {args.size:g} MiB per transfer, seed {args.seed}"
    )
    print()
    print(
        "| RTT | loss | kernel (CUBIC) MB/s | userspace MB/s | userspace / kernel "
        "| kernel longest stall (ms) | userspace longest stall (ms) | kernel (BBR) MB/s "
        "| dropped (kernel / userspace) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rtt, link, got in rows:
        kernel, user = got.get("kernel"), got.get("userspace")
        ratio = f"{user.mbps / kernel.mbps:.0%}" if kernel and user else "-"
        (k_rate, k_gap), (u_rate, u_gap) = fmt(kernel), fmt(user)
        bbr = fmt(got.get("kernel-bbr"))[0]
        dropped = " / ".join(f"{r.drop_rate:.2%}" if r else "-" for r in (kernel, user))
        print(
            f"| {rtt:g} ms | {link.describe()} | {k_rate} | {u_rate} | {ratio} | {k_gap} "
            f"| {u_gap} | {bbr} | {dropped} |"
        )
    print()
    print("SHA-256: every transfer matched" if not corrupt else f"SHA-256: {corrupt} MISMATCHED")
    return 1 if corrupt else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=float, default=16, help="MiB per transfer")
    parser.add_argument(
        "--rtt", type=float, nargs="+", default=[10, 50], help="round-trip times, ms"
    )
    parser.add_argument(
        "--loss", nargs="+", default=DEFAULT_LOSS, help="loss cases: %% or %%bMEAN_BURST"
    )
    parser.add_argument(
        "--stack",
        nargs="+",
        choices=["kernel", "userspace", "kernel-bbr"],
        default=["kernel", "userspace", "kernel-bbr"],
        help="kernel: Linux with CUBIC; kernel-bbr: with BBR",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
