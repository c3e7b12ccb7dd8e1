"""What the ``golem-vpn`` subcommands print and how they fail, shared by their modules.

Tables and ``key: value`` blocks for people, indented JSON for scripts, one ``golem-vpn:
error: ...`` line (exit status 1) for a user-facing error, and the loop that runs one
subcommand against an API client. Part of the CLI layer (:mod:`golem_vpn.cli`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from golem_vpn.errors import GolemVpnError

__all__ = ["PROG", "Failure", "fail", "fields", "print_json", "run_client", "table"]

PROG = "golem-vpn"

C = TypeVar("C", bound=AbstractAsyncContextManager[object])


class Failure(Exception):
    """A user-facing error a subcommand detected itself (printed as ``golem-vpn: error: ...``)."""


def fail(message: str) -> int:
    """Prints ``golem-vpn: error: MESSAGE`` to stderr; returns the exit status (1)."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def print_json(obj: object) -> None:
    """Prints ``obj`` as indented JSON (for ``--json``)."""
    print(json.dumps(obj, indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, a header row first."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    )


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """``key: value`` lines, the values aligned."""
    width = max(len(key) for key, _ in pairs) + 2
    return "\n".join(f"{key + ':':<{width}}{value}" for key, value in pairs)


async def run_client(
    client: C,
    handler: Callable[[C, argparse.Namespace], Awaitable[int]],
    args: argparse.Namespace,
    describe: Callable[[GolemVpnError], str],
) -> int:
    """Runs one subcommand's ``handler`` with ``client`` open; a :class:`Failure` or an API
    error becomes one error line (``describe`` words the latter) and exit status 1."""
    async with client:
        try:
            return await handler(client, args)
        except Failure as exc:
            return fail(str(exc))
        except GolemVpnError as exc:
            return fail(describe(exc))
