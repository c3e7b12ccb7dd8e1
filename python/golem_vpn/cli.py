"""The ``golem-vpn`` command.

Subcommands grow with the project; today: ``demo`` (the local routing demo) and ``version``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from golem_vpn import __version__, build_profile

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="golem-vpn",
        description="Virtual private networks for distributed compute on Golem.",
    )
    parser.add_argument("--version", action="version", version=f"golem-vpn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("demo", help="run the local routing demo (three nodes, real packets)")
    sub.add_parser("version", help="print the version and native build profile")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``golem-vpn`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from golem_vpn import demo

        return demo.main()
    if args.command == "version":
        print(f"golem-vpn {__version__} ({build_profile})")
        return 0
    parser.print_help(sys.stderr)
    return 2
