"""``golem-vpn attach | detach | attachments | run``: the provider side on the command line.

This sits in the cli layer, on the daemon's attachment API client
(:class:`golem_vpn.exeunit.client.AttachClient`); :mod:`golem_vpn.cli` wires it in with
:func:`add_parsers` and :func:`run`. Commands::

    golem-vpn attach --deploy FILE|- [--requestor NODE_ID]
                     (--tun [--netns NAME] [--ifname NAME] [--mtu N] | --vm-endpoint [URL] |
                      --userspace) [--json]
    golem-vpn detach ID [--json]
    golem-vpn attachments [--json]
    golem-vpn run --deploy FILE|- [--requestor NODE_ID] [--ifname NAME] [--mtu N] -- CMD [ARGS...]

The daemon and its key are found as ``golem-vpn net`` finds them: ``--url`` (a daemon root such
as ``http://127.0.0.1:7465``), else ``$YAGNA_NET_URL``, else ``$YAGNA_API_URL``, else
``http://127.0.0.1:7465``; ``--app-key``, else ``$YAGNA_APPKEY``.

``run`` makes a fresh namespace ``gvpn-run-XXXXXX``, attaches it by TUN through the daemon,
runs ``ip netns exec NS CMD...`` with this terminal's stdin, stdout and stderr, and detaches
(which deletes the namespace) when CMD exits, or on SIGTERM/SIGHUP (forwarded to CMD first) or
Ctrl-C; its exit status is CMD's (128 + N if a signal N ended CMD). Its own messages go to
stderr only.

Exit codes: 0 success, 1 a user-facing error (one line, ``golem-vpn: error: ...``), 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from golem_vpn.config import API_URL_ENV, APPKEY_ENV, DEFAULT_API_URL, NET_URL_ENV
from golem_vpn.console import PROG, run_client
from golem_vpn.console import Failure as _Failure
from golem_vpn.console import fail as _fail
from golem_vpn.console import fields as _fields
from golem_vpn.console import print_json as _print_json
from golem_vpn.console import table as _table
from golem_vpn.errors import (
    BadRequest,
    DeployConfigError,
    Forbidden,
    GolemVpnError,
    NetApiUnavailable,
    NotPermitted,
)
from golem_vpn.exeunit.options import DEFAULT_IFNAME, DEFAULT_MTU, DEFAULT_VM_ENDPOINT
from golem_vpn.netcli import APP_KEY_DATA_DIR_HINT

if TYPE_CHECKING:
    # asyncio and the API client load when a command runs, not for --help.
    import asyncio

    from golem_vpn.exeunit.attach import Attachment
    from golem_vpn.exeunit.client import AttachClient

    Handler = Callable[[AttachClient, argparse.Namespace], Awaitable[int]]

__all__ = ["COMMANDS", "add_parsers", "run"]

#: The commands this module adds.
COMMANDS = ("attach", "detach", "attachments", "run")
#: Seconds ``run`` waits for the command after forwarding SIGTERM before it kills it.
KILL_AFTER = 10.0


# -- the parser -----------------------------------------------------------------------------------


def _connection(json_flag: bool = True) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        metavar="URL",
        help=f"the daemon: its API root ({DEFAULT_API_URL}) or a Net API base URL (env "
        f"{NET_URL_ENV}, else {API_URL_ENV}; default {DEFAULT_API_URL})",
    )
    common.add_argument(
        "--app-key",
        metavar="KEY",
        help=f"the daemon's app key (env {APPKEY_ENV}, which is better: a flag shows in the "
        "process list); write --app-key=KEY when the key starts with '-'",
    )
    if json_flag:
        common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def _deploy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deploy",
        required=True,
        metavar="FILE",
        help='the DEPLOY as JSON: the deploy arguments ({"net": [...], "hosts": {...}}) '
        'or the exe-script command ({"deploy": {...}}); - reads stdin',
    )
    parser.add_argument(
        "--requestor",
        metavar="NODE_ID",
        help="the requestor whose control messages the networks follow (default, per "
        "network: the node holding its gateway address, else its first host)",
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds ``attach``, ``detach``, ``attachments`` and ``run`` to ``golem-vpn``'s commands."""
    where = (
        f"The daemon is found by --url, else ${NET_URL_ENV}, else ${API_URL_ENV}, else "
        f"{DEFAULT_API_URL}; its app key by --app-key, else ${APPKEY_ENV}."
    )
    attach = sub.add_parser(
        "attach",
        parents=[_connection()],
        help="attach a payload to the networks of a DEPLOY (TUN, VM endpoint or userspace)",
        description="Hands a DEPLOY to the node daemon, which joins every network in it and "
        "attaches the payload: a TUN device in a network namespace (--tun; the daemon must "
        "run as root), a VM runtime's frame endpoint (--vm-endpoint), or the daemon's "
        "userspace stack (--userspace). Prints the attachment's id (for detach), interface "
        "and addresses. " + where,
    )
    _deploy_args(attach)
    mode = attach.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--tun", action="store_true", help="a TUN device in --netns (or the daemon's namespace)"
    )
    mode.add_argument(
        "--vm-endpoint",
        nargs="?",
        const=DEFAULT_VM_ENDPOINT,
        metavar="URL",
        help="a VM frame endpoint: udp://127.0.0.1:0 (the default: give the printed URL to the "
        "runtime's --vpn-endpoint), tcp-listen://HOST:PORT, tcp-connect://HOST:PORT or "
        "unix:///PATH",
    )
    mode.add_argument(
        "--userspace", action="store_true", help="the daemon's userspace TCP/IP stack"
    )
    attach.add_argument(
        "--netns",
        metavar="NAME",
        help="--tun: the payload's network namespace (created if missing, and then deleted on "
        "detach); its /etc/netns/NAME/hosts gets the DEPLOY hosts",
    )
    attach.add_argument(
        "--ifname", metavar="NAME", help=f"--tun: the device's name (default {DEFAULT_IFNAME})"
    )
    attach.add_argument(
        "--mtu", type=int, metavar="N", help=f"--tun: the device's MTU (default {DEFAULT_MTU})"
    )
    attach.set_defaults(attach_handler=_attach)

    detach = sub.add_parser(
        "detach",
        parents=[_connection()],
        help="remove an attachment (its device, namespace if it made one, and networks)",
        description="Detaches a payload: the daemon leaves its networks and removes what the "
        "attachment made. " + where,
    )
    detach.add_argument("attachment_id", metavar="ID", help="the attachment id")
    detach.set_defaults(attach_handler=_detach)

    listing = sub.add_parser(
        "attachments",
        parents=[_connection()],
        help="list the daemon's attachments with packet, byte and drop counters",
        description="Lists attachments: id, kind, interface or endpoint, namespace, addresses, "
        "and traffic (in: payload to VPN, out: VPN to payload). " + where,
    )
    listing.set_defaults(attach_handler=_attachments)

    runner = sub.add_parser(
        "run",
        parents=[_connection(json_flag=False)],
        help="run a command in a fresh network namespace attached to a DEPLOY's networks",
        description="Creates a network namespace, attaches it by TUN through the daemon, runs "
        "CMD in it (ip netns exec; stdin, stdout and stderr passed through) and removes the "
        "namespace and the attachment when CMD exits, or on Ctrl-C or SIGTERM (forwarded to "
        "CMD). Exits with CMD's status. Needs root. " + where,
        usage=f"{PROG} run --deploy FILE [--requestor NODE_ID] [--ifname NAME] [--mtu N] "
        "[--url URL] [--app-key KEY] -- CMD [ARGS...]",
    )
    _deploy_args(runner)
    runner.add_argument(
        "--ifname", metavar="NAME", help=f"the device's name (default {DEFAULT_IFNAME})"
    )
    runner.add_argument(
        "--mtu", type=int, metavar="N", help=f"the device's MTU (default {DEFAULT_MTU})"
    )
    runner.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD", help="the command")
    runner.set_defaults(attach_handler=_run_command)


def run(args: argparse.Namespace) -> int:
    """Runs a parsed command of :data:`COMMANDS`; returns the exit code."""
    handler: Handler = args.attach_handler
    if args.command == "attach" and not args.tun:
        given = [f"--{n}" for n in ("netns", "ifname", "mtu") if getattr(args, n) is not None]
        if given:
            print(f"{PROG} attach: error: {', '.join(given)} go with --tun", file=sys.stderr)
            return 2
    if args.command == "run":
        if args.cmd and args.cmd[0] == "--":
            args.cmd = args.cmd[1:]
        if not args.cmd:
            print(f"{PROG} run: error: no command given (… -- CMD [ARGS...])", file=sys.stderr)
            return 2
    import asyncio

    try:
        return asyncio.run(_main(handler, args))
    except KeyboardInterrupt:  # Ctrl-C where no signal handler could be installed
        return 130


async def _main(handler: Handler, args: argparse.Namespace) -> int:
    from golem_vpn.exeunit.client import AttachClient

    try:
        client = AttachClient(args.url, args.app_key)
    except GolemVpnError as exc:
        return _fail(str(exc))
    return await run_client(client, handler, args, lambda exc: _describe(exc, client))


def _describe(exc: GolemVpnError, client: AttachClient) -> str:
    """One line for an API error, with what to do about it; never the app key."""
    if isinstance(exc, NetApiUnavailable):
        return (
            f"cannot reach the daemon at {client.url} ({exc.message}); is it running? Start it "
            f"with `{PROG} daemon`, or point --url, {NET_URL_ENV} or {API_URL_ENV} at it"
        )
    if isinstance(exc, Forbidden) and str(exc).startswith("401"):
        if client.has_app_key:
            return (
                f"the daemon at {client.url} did not accept the app key (401 Unauthorized); "
                f"check --app-key or {APPKEY_ENV}. {APP_KEY_DATA_DIR_HINT}"
            )
        return (
            f"the daemon at {client.url} needs an app key (401 Unauthorized): set {APPKEY_ENV} "
            f"or pass --app-key (create one with `{PROG} app-key create NAME`)"
        )
    if isinstance(exc, BadRequest):
        return f"the daemon refused the request: {exc.message}"
    if isinstance(exc, NotPermitted):
        return f"{exc} (the daemon must run as root to attach TUN devices)"
    return str(exc)


# -- input and output -----------------------------------------------------------------------------


def _read_deploy(source: str) -> dict[str, Any]:
    """The DEPLOY from a file (``-``: stdin), checked here so that errors name the field."""
    from golem_vpn.exeunit.deploy import parse_deploy

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise _Failure(f"cannot read the DEPLOY from {source}: {exc}") from None
    try:
        parse_deploy(text)
        obj = json.loads(text)
    except DeployConfigError as exc:
        raise _Failure(f"bad DEPLOY in {source}: {exc}") from None
    assert isinstance(obj, dict)  # parse_deploy accepts objects only
    return obj


def _describe_attachment(att: Attachment) -> str:
    pairs = [("id", att.id), ("kind", att.kind)]
    if att.interface is not None:
        pairs.append(("interface", att.interface))
        pairs.append(("netns", att.netns or "- (the daemon's)"))
    if att.endpoint is not None:
        pairs.append(("endpoint", att.endpoint))
    pairs.append(("addresses", ", ".join(att.addresses)))
    for net in att.networks:
        pairs.append(("network", f"{net.id} {net.cidr} (requestor {net.requestor})"))
    if att.hosts:
        pairs.append(("hosts", ", ".join(f"{k}={v}" for k, v in att.hosts.items())))
    text = _fields(pairs)
    if att.endpoint is not None:
        text += f"\n\ngive the runtime: --vpn-endpoint {att.endpoint}"
    return text


def _where(att: Attachment) -> str:
    if att.kind == "tun":
        return f"{att.interface}@{att.netns}" if att.netns else att.interface or "-"
    if att.kind == "vm":
        return att.endpoint or "-"
    return "userspace"


def _counter_cells(att: Attachment) -> list[str]:
    c = att.counters
    return [str(c.packets_in), str(c.bytes_in), str(c.packets_out), str(c.bytes_out), str(c.drops)]


# -- commands -------------------------------------------------------------------------------------


async def _attach(client: AttachClient, args: argparse.Namespace) -> int:
    deploy = _read_deploy(args.deploy)
    if args.tun:
        att = await client.attach(
            deploy,
            mode="tun",
            requestor=args.requestor,
            netns=args.netns,
            ifname=args.ifname,
            mtu=args.mtu,
        )
    elif args.userspace:
        att = await client.attach(deploy, mode="userspace", requestor=args.requestor)
    else:
        att = await client.attach(
            deploy, mode="vm", requestor=args.requestor, vm_endpoint=args.vm_endpoint
        )
    if args.json:
        _print_json(att.to_json())
    else:
        print(_describe_attachment(att))
    return 0


async def _detach(client: AttachClient, args: argparse.Namespace) -> int:
    att = await client.detach(args.attachment_id)
    if args.json:
        _print_json(att.to_json())
    else:
        c = att.counters
        print(
            f"detached {att.id} ({att.kind}, {_where(att)}): in {c.packets_in} packets / "
            f"{c.bytes_in} bytes, out {c.packets_out} packets / {c.bytes_out} bytes, "
            f"{c.drops} drops"
        )
    return 0


async def _attachments(client: AttachClient, args: argparse.Namespace) -> int:
    atts = await client.attachments()
    if args.json:
        _print_json([a.to_json() for a in atts])
        return 0
    headers = ["ID", "KIND", "WHERE", "ADDRESSES", "PKTS IN", "BYTES IN", "PKTS OUT"]
    headers += ["BYTES OUT", "DROPS"]
    rows = [
        [a.id, a.kind, _where(a), ",".join(a.addresses) or "-", *_counter_cells(a)] for a in atts
    ]
    print(_table(headers, rows))
    return 0


def _progress(message: str) -> None:
    print(f"{PROG} run: {message}", file=sys.stderr, flush=True)


async def _run_command(client: AttachClient, args: argparse.Namespace) -> int:
    import asyncio
    import secrets

    if os.geteuid() != 0:
        raise _Failure("golem-vpn run needs root (it runs the command with `ip netns exec`)")
    deploy = _read_deploy(args.deploy)
    netns = "gvpn-run-" + secrets.token_hex(3)
    # Signals are ours from the start: one that arrives while attaching must not kill us
    # before the namespace is removed.
    with _Signals() as signals:
        att = await client.attach(
            deploy,
            mode="tun",
            requestor=args.requestor,
            netns=netns,
            ifname=args.ifname,
            mtu=args.mtu,
        )
        _progress(f"attached {att.id}: {att.interface} {', '.join(att.addresses)} in netns {netns}")
        try:
            if signals.received:
                return 128 + signals.received[0]
            return await signals.supervise(["ip", "netns", "exec", netns, *args.cmd])
        finally:
            # Even when cancelled: the namespace and the device must not outlive the command.
            detaching = asyncio.ensure_future(client.detach(att.id))
            try:
                await asyncio.shield(detaching)
            except (GolemVpnError, asyncio.CancelledError) as exc:
                with contextlib.suppress(BaseException):
                    await detaching
                _progress(
                    f"could not detach {att.id}: {exc}; remove it with `{PROG} detach {att.id}`"
                )
            else:
                _progress(f"detached {att.id}; netns {netns} removed")


class _Signals:
    """SIGINT, SIGTERM and SIGHUP for ``run``: recorded while no command runs, forwarded to
    it while one does (SIGINT only when the terminal does not deliver Ctrl-C to it itself)."""

    def __init__(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._installed: list[int] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self.received: list[int] = []
        # In the terminal's foreground group the command gets Ctrl-C from the terminal.
        self._tty_sigint = False
        with contextlib.suppress(OSError):
            self._tty_sigint = os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()

    def __enter__(self) -> _Signals:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            try:
                self._loop.add_signal_handler(signum, self._on_signal, int(signum))
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self._installed.append(signum)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum in self._installed:
            self._loop.remove_signal_handler(signum)
        if self._kill_timer is not None:
            self._kill_timer.cancel()

    def _on_signal(self, signum: int) -> None:
        self.received.append(signum)
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if signum == signal.SIGINT and self._tty_sigint:
            return  # the terminal gave the command its own copy
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        if signum != signal.SIGINT and self._kill_timer is None:
            self._kill_timer = self._loop.call_later(KILL_AFTER, _kill, proc)

    async def supervise(self, command: list[str]) -> int:
        """Runs ``command`` with our stdio; returns its exit status (128 + N for signal N)."""
        import asyncio

        try:
            proc = await asyncio.create_subprocess_exec(*command)
        except OSError as exc:
            raise _Failure(f"cannot run {command[0]}: {exc}") from None
        self._proc = proc
        try:
            code = await proc.wait()
        finally:
            if proc.returncode is None:
                _kill(proc)
                await proc.wait()
        return 128 - code if code < 0 else code


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
