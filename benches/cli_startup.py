"""How long a ``golem-vpn`` command takes from exec to exit, as a user at a shell sees it.

Each command runs ``--runs`` times as a fresh process (after warm-up runs that also write the
bytecode caches, as an installed package has them); the table gives min, median and mean
wall-clock times. ``net list`` and ``net show`` run against a daemon this script starts on
loopback ports with a throwaway data dir. The first row is the bare interpreter (``python -c
pass``): what no command can go below on this machine.

The command is the installed entry point (``golem-vpn`` next to this Python), else the same
code run as ``python -c "from golem_vpn.cli import main; ..."``. A pyenv shim in front of it
would add its own ~90 ms of shell script; call the entry point directly to leave it out.

Targets (issue 13): ``golem-vpn --help`` under 150 ms, ``golem-vpn net list`` under 300 ms.

Run: ``python benches/cli_startup.py [--runs 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_MAIN = "import sys; from golem_vpn.cli import main; sys.exit(main())"


def entry_point() -> list[str]:
    """The ``golem-vpn`` command as installed next to this interpreter, else its code."""
    script = Path(sys.executable).parent / "golem-vpn"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", _MAIN]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its .pyc files
    return env


def timed(cmd: Sequence[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall-clock seconds of ``runs`` runs of ``cmd`` (after two warm-up runs)."""
    for _ in range(2):
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


@contextmanager
def daemon(cli: list[str], env: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """A daemon on loopback ports; yields (API root, app key, a network id)."""
    with tempfile.TemporaryDirectory() as data:
        key = json.loads(
            subprocess.run(
                [*cli, "app-key", "create", "bench", "--json", "--data-dir", data],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )["key"]
        proc = subprocess.Popen(
            [*cli, "daemon", "--data-dir", data, "--api", "127.0.0.1:0", "--listen", "127.0.0.1:0"],
            env={**env, "GOLEM_VPN_RELAY": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            api = line.split("Net API ")[1].split(",")[0]
            created = subprocess.run(
                [*cli, "net", "create", "10.0.0.0/24", "--url", api, "--app-key", key, "--json"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            yield api, key, json.loads(created.stdout)["id"]
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per command")
    args = parser.parse_args()
    cli, env = entry_point(), _env()
    rows: list[tuple[str, list[float]]] = []
    rows.append(
        (
            "python -c pass (the interpreter alone)",
            timed([sys.executable, "-c", "pass"], args.runs, env),
        )
    )
    for argv in (["--help"], ["version"], ["net", "--help"]):
        rows.append((f"golem-vpn {' '.join(argv)}", timed([*cli, *argv], args.runs, env)))
    with daemon(cli, env) as (api, key, network):
        auth = ["--url", api, f"--app-key={key}"]
        rows.append(("golem-vpn net list", timed([*cli, "net", "list", *auth], args.runs, env)))
        rows.append(
            ("golem-vpn net show ID", timed([*cli, "net", "show", network, *auth], args.runs, env))
        )
    shown = cli[0] if len(cli) == 1 else "python -c <golem_vpn.cli.main>"
    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    print(f"{time.strftime('%Y-%m-%d')}, {shown}, {args.runs} runs each, milliseconds")
    print()
    print("| command | min | median | mean |")
    print("|---|---:|---:|---:|")
    for name, times in rows:
        ms = [t * 1000 for t in times]
        median, mean = statistics.median(ms), statistics.mean(ms)
        print(f"| `{name}` | {min(ms):.0f} | {median:.0f} | {mean:.0f} |")


if __name__ == "__main__":
    main()
