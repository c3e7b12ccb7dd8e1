"""The ``golem-vpn`` command.

Subcommands grow with the project; today: ``demo`` (a relay, a requestor and three providers
as processes on this machine; ``--local``: the in-process walkthrough), ``version``,
``id show|create`` (this node's key and node id), ``relay`` (run a relay), ``daemon`` (run a
node: transport + Net API), ``app-key create|list|rm`` (Net API keys), ``net ...`` (drive a
Net API: networks, nodes, ``connect`` a local port through the WebSocket gate), and the
provider side through a daemon's attachment API (:mod:`golem_vpn.exeunitcli`): ``attach``,
``detach``, ``attachments`` and ``run`` (a command in a namespace on the VPN).

Exit codes: 0 success, 1 a user-facing error (the message goes to stderr), 2 bad usage.

Startup time matters here (every command pays it): this module and the parsers import only
argparse and small modules; the native module, asyncio and aiohttp load when a command that
needs them runs (``benches/cli_startup.py``; ``tests/test_cli_startup.py`` keeps it so).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from golem_vpn.console import fail
from golem_vpn.errors import GolemVpnError, ListenError

if TYPE_CHECKING:
    from golem_vpn.netapi.server import Limits

__all__ = ["main"]


class _VersionAction(argparse.Action):
    """``--version``: reads the version from the native module only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version"
        )

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from golem_vpn import __version__

        print(f"golem-vpn {__version__}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="golem-vpn",
        description="Virtual private networks for distributed compute on Golem.",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo_parser(sub)
    sub.add_parser("version", help="print the version and native build profile")
    _add_id_parser(sub)
    relay = sub.add_parser(
        "relay",
        help="run a relay: signed registrations, forwarding between nodes behind NAT",
        description="Runs a golem-vpn relay on UDP until interrupted. Nodes register with it "
        "(signed by their node key) and reach peers they have no direct path to through it; "
        "it forwards tunnel datagrams it cannot read.",
    )
    relay.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="address to listen on, HOST an address or a host name (env "
        "GOLEM_VPN_RELAY_LISTEN; default 0.0.0.0:7464: every interface)",
    )
    _add_daemon_parser(sub)
    _add_app_key_parser(sub)
    from golem_vpn.netcli import add_net_parser

    add_net_parser(sub)
    from golem_vpn.exeunitcli import add_parsers

    add_parsers(sub)
    return parser


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="run a relay, a requestor and three providers on this machine and show them talk",
        description="Starts a relay, a requestor daemon and three provider daemons as separate "
        "processes on 127.0.0.1 (free ports, a temporary data dir and identity each), creates "
        "a network with the SDK, hands each provider its DEPLOY, and shows the payloads "
        "talking: HTTP between providers and through the requestor's gate, ping between every "
        "pair, a checksummed transfer, a node removed. Prints a report, stops every process "
        "and removes everything it made. Needs no root and no configuration.",
    )
    demo.add_argument(
        "--netns",
        action="store_true",
        help="attach each payload with a TUN device in a network namespace of its own "
        "(needs root, iproute2 and ping) instead of the daemon's userspace stack",
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="after the report, keep everything running and say how to reach it, until "
        "Ctrl-C or SIGTERM",
    )
    demo.add_argument(
        "--size",
        type=int,
        default=32,
        metavar="MIB",
        help="MiB of the checksummed transfer between two providers (default 32)",
    )
    demo.add_argument(
        "--no-hole-punching",
        action="store_true",
        help="start the daemons with --no-hole-punching: every path stays on the relay",
    )
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.add_argument(
        "--local",
        action="store_true",
        help="instead: the in-process walkthrough of routing and the userspace stack "
        "(one process, no daemons)",
    )


def _demo(args: argparse.Namespace) -> int:
    if args.local:
        if args.netns or args.keep or args.json or args.no_hole_punching:
            return fail("--local runs in one process: it takes no other option")
        from golem_vpn.demo import local

        return local.main()
    if not 1 <= args.size <= 4096:
        return fail(f"--size must be from 1 to 4096 MiB, got {args.size}")
    from golem_vpn.demo import cluster

    return cluster.main(
        cluster.DemoOptions(
            netns=args.netns,
            size=args.size << 20,
            keep=args.keep,
            json=args.json,
            hole_punching=not args.no_hole_punching,
        )
    )


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="where the node keeps its state (env GOLEM_VPN_DATA_DIR; default: the "
        "platform's user data dir, e.g. ~/.local/share/golem-vpn)",
    )


def _add_daemon_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    daemon = sub.add_parser(
        "daemon",
        help="run a node daemon: encrypted UDP transport + the Net API",
        description="Runs a node: its identity (created on first run), the encrypted UDP "
        "transport, and the yagna-compatible Net API with its WebSocket gate. Networks "
        "created through the API are stored in the data dir and come back after a restart.",
    )
    _data_dir_arg(daemon)
    daemon.add_argument(
        "--api",
        metavar="HOST:PORT",
        help="Net API address, HOST an address or a host name (env GOLEM_VPN_API_LISTEN; "
        "default 127.0.0.1:7465: this machine only)",
    )
    daemon.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="UDP transport address (env GOLEM_VPN_LISTEN; default 0.0.0.0:11500: every "
        "interface, so that peers and relays reach it)",
    )
    daemon.add_argument(
        "--relay",
        metavar="HOST:PORT",
        help="relay(s) for peers without a direct path, comma-separated in order of "
        "preference; a host name is resolved at start and again when its relay stops "
        "answering (env GOLEM_VPN_RELAY; default none)",
    )
    daemon.add_argument(
        "--no-hole-punching",
        action="store_true",
        help="keep relayed peers on the relay (no direct probes)",
    )
    daemon.add_argument(
        "--workers",
        metavar="N",
        type=int,
        help="datapath threads each way, 1 to 16: more than one makes each TUN device multi-queue "
        "with a sending thread per queue, and the node receive on N lanes (sockets of one "
        "SO_REUSEPORT group) with a thread per lane, so flows are carried on N cores at once "
        "both ways (env GOLEM_VPN_WORKERS; default 1)",
    )
    # The Net API's bounds (golem_vpn.netapi.server.Limits; 429, or 413 for a body, beyond).
    for flag, env, default, what in _LIMIT_FLAGS:
        daemon.add_argument(
            flag, metavar="N", type=int, help=f"{what} (env {env}; default {default})"
        )


#: The daemon's bound flags: flag, environment variable, default, what it bounds. Kept here
#: (not imported from golem_vpn.netapi.server) so that --help stays fast; a test checks them.
_LIMIT_FLAGS = (
    ("--max-networks", "GOLEM_VPN_MAX_NETWORKS", 1024, "networks one identity may hold"),
    ("--max-nodes", "GOLEM_VPN_MAX_NODES", 4096, "nodes in one network"),
    (
        "--max-gates-per-key",
        "GOLEM_VPN_MAX_GATES_PER_KEY",
        1024,
        "open gate WebSockets of one identity (its keys together)",
    ),
    ("--max-gates", "GOLEM_VPN_MAX_GATES", 4096, "open gate WebSockets in all"),
    ("--max-body-size", "GOLEM_VPN_MAX_BODY_SIZE", 65536, "largest request body in bytes"),
    ("--max-connections", "GOLEM_VPN_MAX_CONNECTIONS", 8192, "open Net API connections"),
    (
        "--request-timeout",
        "GOLEM_VPN_REQUEST_TIMEOUT",
        15,
        "seconds a Net API client has to send a request's head, and its body",
    ),
)


def _add_app_key_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "app-key",
        help="manage the Net API's app keys",
        description="App keys authenticate Net API clients (Authorization: Bearer KEY, as "
        "YAGNA_APPKEY). A key acts as this node's identity; only its hash is stored.",
    )
    actions = keys.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("name")
    listing = actions.add_parser("list", help="list key names (never the keys)")
    remove = actions.add_parser("rm", help="delete a key")
    remove.add_argument("name")
    for action in (create, listing, remove):
        _data_dir_arg(action)
        action.add_argument("--json", action="store_true", help="machine-readable output")


def _setting(flag: str | None, env: str, default: str) -> str:
    import os

    return flag or os.environ.get(env) or default


def _workers(flag: int | None) -> None:
    """Checks ``--workers`` (else ``GOLEM_VPN_WORKERS``) and hands it to the datapath, which
    reads ``GOLEM_VPN_WORKERS`` when a TUN device is attached.

    Raises:
        ValueError: Not an integer from 1 to 16 (the message names the flag).
    """
    import os

    text = str(flag) if flag is not None else os.environ.get("GOLEM_VPN_WORKERS") or "1"
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if not 1 <= workers <= 16:
        raise ValueError(f"--workers (GOLEM_VPN_WORKERS) must be from 1 to 16, got {text!r}")
    os.environ["GOLEM_VPN_WORKERS"] = str(workers)


def _limits(args: argparse.Namespace) -> Limits:
    """The Net API's bounds: the flags, else their environment variables, else the defaults.

    Raises:
        ValueError: A value is not a positive integer (the message names its flag).
    """
    from dataclasses import replace

    from golem_vpn.netapi.server import LIMIT_SETTINGS, Limits

    limits = Limits.from_env()
    given: dict[str, int] = {}
    for name, (flag, _env) in LIMIT_SETTINGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            if value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
            given[name] = value
    return replace(limits, **given)


#: Where each daemon or relay socket is set: its flag and environment variable.
_LISTEN_SETTINGS = {
    "api": ("--api", "GOLEM_VPN_API_LISTEN"),
    "udp": ("--listen", "GOLEM_VPN_LISTEN"),
    "relay": ("--listen", "GOLEM_VPN_RELAY_LISTEN"),
}


def _listen_failure(exc: ListenError) -> int:
    """One line for a socket that cannot be bound, naming the setting to change."""
    flag, env = _LISTEN_SETTINGS[exc.service]
    return fail(f"{exc}; choose another address with {flag} HOST:PORT (or ${env})")


def _daemon(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from golem_vpn import config, hostport
    from golem_vpn.node import daemon

    try:
        api_host, api_port = hostport.parse_hostport(
            _setting(args.api, "GOLEM_VPN_API_LISTEN", "127.0.0.1:7465"), "--api"
        )
        listen_host, listen_port = hostport.parse_hostport(
            _setting(args.listen, "GOLEM_VPN_LISTEN", "0.0.0.0:11500"), "--listen"
        )
        relay_text = _setting(args.relay, "GOLEM_VPN_RELAY", "")
        relay = [
            hostport.parse_hostport(part, "--relay")
            for part in relay_text.split(",")
            if part.strip()
        ]
        # Names resolve now, so a typo is reported with its flag; relays keep their names
        # (the transport resolves them again when a relay stops answering).
        api = hostport.resolve(api_host, api_port, "--api")
        listen = hostport.resolve(listen_host, listen_port, "--listen")
        for host, port in relay:
            hostport.resolve(host, port, "--relay")
        data_dir = config.data_dir(args.data_dir)
        limits = _limits(args)
        _workers(args.workers)
    except (GolemVpnError, ValueError) as exc:
        return fail(str(exc))

    def ready(info: dict[str, object]) -> None:
        print(
            f"golem-vpn daemon {info['nodeId']}: Net API {info['api']}, UDP {info['udp']}"
            + (f", relay {info['relay']}" if info["relay"] else "")
            + f", data {info['dataDir']}",
            flush=True,
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await daemon.run(
            data_dir,
            api=api,
            listen=listen,
            relay=relay,
            hole_punching=not args.no_hole_punching,
            ready=ready,
            stop=stop,
            limits=limits,
        )

    try:
        asyncio.run(main())
    except ListenError as exc:
        return _listen_failure(exc)
    except (GolemVpnError, OSError) as exc:
        return fail(str(exc))
    return 0


def _app_key(args: argparse.Namespace) -> int:
    from golem_vpn import config
    from golem_vpn.console import table
    from golem_vpn.netapi.appkeys import AppKeyError, AppKeys
    from golem_vpn.netapi.store import DEFAULT_FILENAME, Store
    from golem_vpn.node import identity

    try:
        if args.key_command == "create":
            data_dir = config.data_dir(args.data_dir)
        else:  # reading or removing: a mistyped --data-dir must not become a new data dir
            data_dir = config.data_dir(args.data_dir, create=False, must_exist=True)
            if not (data_dir / DEFAULT_FILENAME).exists():  # nor get a database made
                if args.key_command == "rm":
                    raise AppKeyError(f"no app key named {args.name!r} (no keys in {data_dir})")
                print("[]" if args.json else table(["NAME", "NODE ID"], []))
                return 0
        with Store.in_data_dir(data_dir) as store:
            keys = AppKeys(store)
            if args.key_command == "create":
                ident, _ = identity.load_or_create(data_dir)
                key = keys.create(args.name, ident.node_id)
                if args.json:
                    print(json.dumps({"name": args.name, "key": key, "nodeId": ident.node_id}))
                else:
                    print(f"app key {args.name!r} for node {ident.node_id} (shown only once):")
                    print(key)
            elif args.key_command == "list":
                infos = keys.list()
                if args.json:
                    listed = [
                        {"name": k.name, "nodeId": k.identity, "created": k.created} for k in infos
                    ]
                    print(json.dumps(listed))
                else:
                    print(table(["NAME", "NODE ID"], [[k.name, k.identity] for k in infos]))
            else:
                keys.delete(args.name)
                if args.json:
                    print(json.dumps({"removed": args.name}))
                else:
                    print(f"removed app key {args.name!r}")
    except (GolemVpnError, OSError, ValueError) as exc:
        return fail(str(exc))
    return 0


def _relay(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from golem_vpn import hostport
    from golem_vpn.node.relay import RelayService

    listen = args.listen or os.environ.get("GOLEM_VPN_RELAY_LISTEN") or "0.0.0.0:7464"
    try:
        host, port = hostport.resolve(*hostport.parse_hostport(listen, "--listen"), "--listen")
    except GolemVpnError as exc:
        return fail(str(exc))

    async def serve() -> None:
        try:
            relay = RelayService(host, port)
        except OSError as exc:
            raise hostport.listen_error(exc, "relay", host, port) from exc
        try:
            print(f"relay listening on {hostport.format_hostport(*relay.local_addr)}", flush=True)
            await asyncio.Event().wait()
        finally:
            relay.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except ListenError as exc:
        return _listen_failure(exc)
    return 0


def _add_id_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ident = sub.add_parser(
        "id",
        help="show or create this node's identity (its secp256k1 key and node id)",
        description="This node's identity: a secp256k1 key in the data dir (node.key, mode "
        "0600); the node id is 0x + the last 20 bytes of keccak256 of the public key.",
    )
    actions = ident.add_subparsers(dest="id_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the node id and the key file's path")
    create = actions.add_parser("create", help="generate a new node key")
    create.add_argument(
        "--force",
        action="store_true",
        help="replace an existing key (the old key and its node id are lost)",
    )
    for action in (show, create):
        action.add_argument(
            "--data-dir",
            type=Path,
            metavar="DIR",
            help="where the node keeps its state (env GOLEM_VPN_DATA_DIR; default: the "
            "platform's user data dir, e.g. ~/.local/share/golem-vpn)",
        )
        action.add_argument(
            "--json", action="store_true", help='print {"nodeId": ..., "keyFile": ...}'
        )


def _id(args: argparse.Namespace) -> int:
    from golem_vpn import config
    from golem_vpn.errors import GolemVpnError
    from golem_vpn.node import identity

    try:
        data_dir = config.data_dir(args.data_dir, create=args.id_command == "create")
        path = identity.key_path(data_dir)
        if args.id_command == "show":
            ident = identity.load(data_dir)
            note = None
        else:
            existed = path.exists()
            ident = identity.create(data_dir, force=args.force)
            note = "replaced the node key" if existed else "created a new node key"
    except GolemVpnError as exc:
        message = str(exc)
        if isinstance(exc.__cause__, FileNotFoundError):
            message += "; create one with: golem-vpn id create"
            if args.data_dir is not None:
                message += f" --data-dir {shlex.quote(str(data_dir))}"
        elif isinstance(exc.__cause__, FileExistsError):
            message += " (use --force to replace it; the old key and node id are lost)"
        print(f"golem-vpn: error: {message}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the data dir cannot be created
        print(f"golem-vpn: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"nodeId": ident.node_id, "keyFile": str(path)}))
    else:
        if note:
            print(note)
        print(f"node id:  {ident.node_id}")
        print(f"key file: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``golem-vpn`` command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "version":
        from golem_vpn import __version__, build_profile

        print(f"golem-vpn {__version__} ({build_profile})")
        return 0
    if args.command == "id":
        return _id(args)
    if args.command == "relay":
        return _relay(args)
    if args.command == "daemon":
        return _daemon(args)
    if args.command == "app-key":
        return _app_key(args)
    if args.command == "net":
        from golem_vpn.netcli import run_net

        return run_net(args)
    if args.command in ("attach", "detach", "attachments", "run"):
        from golem_vpn.exeunitcli import run

        return run(args)
    parser.print_help(sys.stderr)
    return 2
