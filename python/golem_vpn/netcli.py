"""``golem-vpn net ...``: the Net API on the command line, and a port forward through the gate.

This sits in the cli layer, on top of the Net API client (:class:`golem_vpn.netapi.client.Client`);
it works against a golem-vpn daemon and against yagna alike. :mod:`golem_vpn.cli` wires it in
with :func:`add_net_parser` and :func:`run_net`; :func:`main` runs it on its own
(``python -m golem_vpn.netcli net ...``).

Commands (each takes ``--url``, ``--app-key`` and ``--json``)::

    golem-vpn net create IP [--mask MASK] [--gateway IP]   the new network
    golem-vpn net list                                     this identity's networks
    golem-vpn net show ID                                  with requestor, nodes, gate connections
    golem-vpn net deploy ID NODE_ID                        the DEPLOY for a node (yagna's JSON)
    golem-vpn net rm ID
    golem-vpn net node add ID NODE_ID IP
    golem-vpn net node rm ID NODE_ID
    golem-vpn net node list ID
    golem-vpn net connect ID IP:PORT [[HOST:]LOCAL_PORT | --listen [HOST:]LOCAL_PORT]

Where the API is and which key to use: ``--url`` (a daemon root such as
``http://127.0.0.1:7465``, or a full Net API base URL ending in ``/net-api/v1``), else
``YAGNA_NET_URL``, else ``YAGNA_API_URL`` + ``/net-api/v1``, else ``http://127.0.0.1:7465``;
``--app-key``, else ``YAGNA_APPKEY``. The key is never printed.

What is normalised and what is refused, before anything is sent (so against yagna too):

- ``net create``: an address with host bits set (``192.168.1.7/24``) becomes its network
  (``192.168.1.0/24``), with a note on stderr; yagna keeps the range the same way but echoes
  the address as given, and so does golem-vpn's API for other clients. A range with no
  address for a node besides the requestor's (``/32``, ``/128``; ``/31`` and ``/127`` hold
  two) is refused; golem-vpn's API refuses it too (400), yagna would create it.
- ``net node add`` / ``set-ip``: ``IP/PREFIX`` with the network's prefix is the address alone
  (stored and printed without the prefix; yagna refuses a prefix); another prefix is refused.
  The requestor's own address, an address another node holds, and a second address for a
  node (a node has one; ``set-ip`` moves it) are refused, each saying which.
- ``net connect``: an address outside the network or one no node can hold (network,
  broadcast) is refused as such; the requestor's own address too.

Output: plain-text tables (columns aligned, two spaces apart, a header row) and ``key: value``
blocks for people; with ``--json``, one JSON document on stdout using the Net API's own field
names (camelCase), for scripts.

Exit codes: 0 success, 1 a user-facing error (one line, ``golem-vpn: error: ...`` on stderr),
2 bad usage (argparse's message).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from golem_vpn.config import API_URL_ENV, APPKEY_ENV, DEFAULT_API_URL, NET_API_PATH, NET_URL_ENV
from golem_vpn.console import PROG, run_client
from golem_vpn.console import Failure as _Failure
from golem_vpn.console import fail as _fail
from golem_vpn.console import fields as _fields
from golem_vpn.console import print_json as _print_json
from golem_vpn.console import table as _table
from golem_vpn.errors import (
    AddressTaken,
    ConnectionRefused,
    ConnectTimeout,
    Forbidden,
    GolemVpnError,
    NetApiError,
    NetApiUnavailable,
    NetworkNotFound,
)

if TYPE_CHECKING:
    # asyncio and the client load when a command runs, not for --help (benches/cli_startup.py).
    import asyncio

    from golem_vpn.model import IPNetwork
    from golem_vpn.netapi.client import (
        AddressInfo,
        Client,
        ConnectionInfo,
        NetworkInfo,
        NodeInfo,
    )

    Handler = Callable[[Client, argparse.Namespace], Awaitable[int]]

__all__ = ["add_net_parser", "main", "run_net"]

#: Why a key that was just created may not work: each data dir has its own keys.
APP_KEY_DATA_DIR_HINT = (
    f"App keys belong to a data dir: create the key with `{PROG} app-key create NAME` on the "
    "daemon's machine with the daemon's --data-dir (or $GOLEM_VPN_DATA_DIR)"
)
#: The host ``connect`` listens on unless told otherwise: only this machine can use the forward.
DEFAULT_LISTEN_HOST = "127.0.0.1"
#: Bytes read per step when relaying (the gate's streams hold at most twice their 64 KiB limit).
_RELAY_CHUNK = 64 * 1024
#: Seconds a closing forward waits for the gate's close handshake when shutting down.
_SHUTDOWN_CLOSE_TIMEOUT = 1.0
_PROTOCOLS = {6: "tcp", 17: "udp"}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- argument types -------------------------------------------------------------------------------


def _port(text: str, *, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be a number from {low} to 65535, got {text!r}")
    return int(text)


def _target(text: str) -> tuple[Address, int]:
    """``IP:PORT`` (``[IPv6]:PORT``) inside the network."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{host!r} is not an IP address") from None
    return ip, _port(port, allow_zero=False)


def _listen(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` on this machine; ``PORT`` 0 picks a free port."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if sep and not host:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, got {text!r}")
    return host or DEFAULT_LISTEN_HOST, _port(port, allow_zero=True)


# -- the parser -----------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        metavar="URL",
        help=f"the Net API: a daemon root ({DEFAULT_API_URL}) or a full base URL ending in "
        f"/net-api/v1 (env {NET_URL_ENV}, else {API_URL_ENV}; default {DEFAULT_API_URL})",
    )
    common.add_argument(
        "--app-key",
        metavar="KEY",
        help=f"the app key (env {APPKEY_ENV}, which is better: a flag shows in the process "
        "list); write --app-key=KEY when the key starts with '-'",
    )
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def add_net_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the ``net`` subcommand tree to a ``golem-vpn`` parser's subcommands.

    Every leaf sets ``net_handler``, which :func:`run_net` calls.
    """
    common = _common()
    net = sub.add_parser(
        "net",
        help="manage virtual networks through the Net API, and forward a local port into one",
        description="Networks, nodes and the WebSocket gate of a Net API (a golem-vpn daemon or "
        "yagna). The API is found by --url, else $YAGNA_NET_URL, else $YAGNA_API_URL, else "
        f"{DEFAULT_API_URL}; the app key by --app-key, else $YAGNA_APPKEY.",
    )
    actions = net.add_subparsers(dest="net_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        parents=[common],
        help="create a network; the requestor gets its first host address",
        description="Creates a network and prints it (id, ip, mask, gateway).",
    )
    create.add_argument("ip", metavar="IP", help="the network address, e.g. 192.168.0.0/24")
    create.add_argument("--mask", metavar="MASK", help="a dotted netmask, e.g. 255.255.255.0")
    create.add_argument(
        "--gateway", metavar="IP", help="the gateway (default: the server picks the first host)"
    )
    create.set_defaults(net_handler=_create)

    listing = actions.add_parser(
        "list",
        parents=[common],
        help="list this identity's networks",
        description="Lists the networks of the app key's identity: id, ip, mask, gateway.",
    )
    listing.set_defaults(net_handler=_list)

    show = actions.add_parser(
        "show",
        parents=[common],
        help="show a network, its requestor, nodes and live gate connections",
        description="Shows a network: its range and gateway, the requestor (the Net API's own "
        "node: its node id and addresses), the other nodes, and the gate's live connections.",
    )
    show.add_argument("network_id", metavar="ID", help="the network id")
    show.set_defaults(net_handler=_show)

    deploy = actions.add_parser(
        "deploy",
        parents=[common],
        help="print the DEPLOY networks config for a node, for golem-vpn attach / run",
        description="Prints the DEPLOY arguments a provider's ExeUnit gets for NODE_ID, in "
        'yagna\'s JSON shape ({"net": [{"id", "ip", "mask", "gateway", "nodeIp", "nodes"}]}; '
        "nodes maps every address, the requestor's included, to its node id). Save it and "
        "hand it to the provider: golem-vpn attach --deploy FILE --tun, or golem-vpn run "
        "--deploy FILE -- CMD.",
    )
    deploy.add_argument("network_id", metavar="ID", help="the network id")
    deploy.add_argument("node_id", metavar="NODE_ID", help="the node the DEPLOY is for")
    deploy.set_defaults(net_handler=_deploy)

    remove = actions.add_parser("rm", parents=[common], help="remove a network and its nodes")
    remove.add_argument("network_id", metavar="ID", help="the network id")
    remove.set_defaults(net_handler=_remove)

    node = actions.add_parser("node", help="add, remove or list the nodes of a network")
    node_actions = node.add_subparsers(dest="net_node_command", metavar="ACTION", required=True)
    node_add = node_actions.add_parser(
        "add",
        parents=[common],
        help="add a node under a virtual IP (re-adding it with the same IP is harmless)",
    )
    node_add.add_argument("network_id", metavar="ID", help="the network id")
    node_add.add_argument("node_id", metavar="NODE_ID", help="the node id (0x + 40 hex digits)")
    node_add.add_argument("ip", metavar="IP", help="its address in the network")
    node_add.set_defaults(net_handler=_node_add)
    node_move = node_actions.add_parser(
        "set-ip",
        parents=[common],
        help="move a node to another virtual IP after DEPLOY (golem-vpn's extension)",
        description="Moves a node to another free address in its network: every node follows "
        "at once and keeps its session; a TUN-attached payload is readdressed in place "
        "(PATCH /net-api/v1/net/{id}/nodes/{nodeId}).",
    )
    node_move.add_argument("network_id", metavar="ID", help="the network id")
    node_move.add_argument("node_id", metavar="NODE_ID", help="the node id")
    node_move.add_argument("ip", metavar="IP", help="its new address in the network")
    node_move.set_defaults(net_handler=_node_move)
    node_rm = node_actions.add_parser("rm", parents=[common], help="remove a node")
    node_rm.add_argument("network_id", metavar="ID", help="the network id")
    node_rm.add_argument("node_id", metavar="NODE_ID", help="the node id")
    node_rm.set_defaults(net_handler=_node_remove)
    node_list = node_actions.add_parser("list", parents=[common], help="list a network's nodes")
    node_list.add_argument("network_id", metavar="ID", help="the network id")
    node_list.set_defaults(net_handler=_node_list)

    connect = actions.add_parser(
        "connect",
        parents=[common],
        help="forward a local TCP port to IP:PORT inside a network, through the gate",
        description="Listens on a local TCP port and carries each accepted connection through "
        "the Net API's WebSocket gate to IP:PORT inside the network, until Ctrl-C. The gate "
        "has no half-close: when either side ends its stream, the connection is closed (after "
        "the bytes already sent are delivered). With --json, the ready line is a JSON object.",
    )
    connect.add_argument("network_id", metavar="ID", help="the network id")
    connect.add_argument(
        "target", metavar="IP:PORT", type=_target, help="where to connect inside the network"
    )
    connect.add_argument(
        "listen",
        nargs="?",
        metavar="[HOST:]LOCAL_PORT",
        type=_listen,
        help=f"where to listen (host default {DEFAULT_LISTEN_HOST}; port 0 or none: a free "
        "port, printed)",
    )
    connect.add_argument(
        "--listen",
        dest="listen_option",
        metavar="[HOST:]LOCAL_PORT",
        type=_listen,
        help="the same, as an option",
    )
    connect.set_defaults(net_handler=_connect)


# -- running --------------------------------------------------------------------------------------


def run_net(args: argparse.Namespace) -> int:
    """Runs a parsed ``net`` command; returns the exit code (0, 1 on an error, 2 on bad usage)."""
    handler: Handler | None = getattr(args, "net_handler", None)
    if handler is None:
        print(f"{PROG}: error: no net command given (see {PROG} net --help)", file=sys.stderr)
        return 2
    if getattr(args, "listen", None) and getattr(args, "listen_option", None):
        print(
            f"{PROG} net connect: error: give the local port once (as LOCAL_PORT or --listen)",
            file=sys.stderr,
        )
        return 2
    import asyncio

    try:
        return asyncio.run(_run(handler, args))
    except KeyboardInterrupt:  # Ctrl-C where no signal handler could be installed
        return 0


async def _run(handler: Handler, args: argparse.Namespace) -> int:
    from golem_vpn.netapi.client import Client

    try:
        client = Client(args.url, args.app_key)
    except GolemVpnError as exc:
        return _fail(str(exc))
    return await run_client(client, handler, args, lambda exc: _describe(exc, client, args))


def _describe(exc: GolemVpnError, client: Client, args: argparse.Namespace) -> str:
    """One line for a Net API error, with what to do about it; never the app key."""
    network = getattr(args, "network_id", None)
    if isinstance(exc, NetApiUnavailable):
        return (
            f"cannot reach the Net API at {client.url} ({exc.message}); is the daemon running? "
            f"Start it with `{PROG} daemon`, or point --url, {NET_URL_ENV} or {API_URL_ENV} at it"
        )
    if isinstance(exc, Forbidden):
        if str(exc).startswith("401"):
            if client.has_app_key:
                return (
                    f"the Net API at {client.url} did not accept the app key (401 Unauthorized); "
                    f"check --app-key or {APPKEY_ENV}. {APP_KEY_DATA_DIR_HINT}"
                )
            return (
                f"the Net API at {client.url} needs an app key (401 Unauthorized): set "
                f"{APPKEY_ENV} or pass --app-key (create a key with `{PROG} app-key create NAME`)"
            )
        if network is None:
            return str(exc)
        return (
            f"network {network} belongs to another identity (403 Forbidden); use that "
            "identity's app key"
        )
    if isinstance(exc, NetworkNotFound):
        if network is None:  # nothing named a network: the URL is probably not the Net API
            return (
                f"{exc}; is {client.url} the Net API? (--url, {NET_URL_ENV} or {API_URL_ENV} "
                f"point at it; {NET_URL_ENV} is the full base, ending in {NET_API_PATH})"
            )
        return f"network {network} not found (404); `{PROG} net list` shows your networks"
    if isinstance(exc, AddressTaken):
        why = exc.message or str(exc)
        return (
            f"network {network} refused the address (409 Conflict): {why}; "
            f"`{PROG} net show {network}` shows the requestor's and the nodes' addresses"
        )
    target = getattr(args, "target", None)
    if isinstance(exc, ConnectTimeout) and target is not None:
        return (
            f"no answer from {_hostport(str(target[0]), target[1])} in network {network} (504): "
            "is its node up and listening?"
        )
    if isinstance(exc, ConnectionRefused) and target is not None:
        where = _hostport(str(target[0]), target[1])
        return f"{where} in network {network} refused the connection (nothing listens there)"
    if isinstance(exc, NetApiError) and exc.status == 400:
        return f"the Net API refused the request (400 Bad Request): {exc.message}"
    return str(exc)


# -- output ---------------------------------------------------------------------------------------


def _network_pairs(info: NetworkInfo) -> list[tuple[str, str]]:
    return [
        ("id", info.id),
        ("ip", info.ip),
        ("mask", info.mask or "-"),
        ("gateway", info.gateway or "-"),
    ]


def _network_rows(networks: Sequence[NetworkInfo]) -> str:
    rows = [[n.id, n.ip, n.mask or "-", n.gateway or "-"] for n in networks]
    return _table(["ID", "IP", "MASK", "GATEWAY"], rows)


def _node_rows(nodes: Sequence[NodeInfo]) -> str:
    return _table(["NODE ID", "IP"], [[n.id, n.ip] for n in nodes])


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connection_rows(connections: Sequence[ConnectionInfo]) -> str:
    rows = [
        [
            _PROTOCOLS.get(c.protocol, str(c.protocol)),
            _hostport(c.local_ip, c.local_port),
            _hostport(c.remote_ip, c.remote_port),
        ]
        for c in connections
    ]
    return _table(["PROTOCOL", "LOCAL", "REMOTE"], rows)


def _ip_key(ip: str) -> tuple[int, int, str]:
    try:
        addr = ipaddress.ip_interface(ip).ip
    except ValueError:
        return (9, 0, ip)
    return (addr.version, int(addr), ip)


def _sorted_nodes(nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
    return sorted(nodes, key=lambda n: _ip_key(n.ip))


# -- commands -------------------------------------------------------------------------------------


def _network_to_create(text: str, mask: str | None) -> tuple[str, str | None]:
    """What ``net create IP [--mask MASK]`` sends: the network address with its prefix (host
    bits cleared, with a note, as yagna clears them for the range), or a refusal of a range
    with no address for a node besides the requestor's."""
    from golem_vpn.errors import AddressError, AddressesExhausted
    from golem_vpn.model import Network, parse_network

    try:
        network = parse_network(text, mask)
        room = Network(network, requestor_id="0x" + "00" * 20).has_room()
    except AddressesExhausted:
        room = False
    except AddressError as exc:
        raise _Failure(str(exc)) from None
    if not room:
        raise _Failure(
            f"network {network} has no address for a node besides the requestor's; use a "
            f"shorter prefix (e.g. /{24 if network.version == 4 else 64})"
        )
    given = ipaddress.ip_address(text.partition("/")[0])
    if given != network.network_address:
        print(
            f"{PROG}: note: {text} has host bits set; creating network {network}",
            file=sys.stderr,
        )
    return str(network), None


async def _create(client: Client, args: argparse.Namespace) -> int:
    ip, mask = _network_to_create(args.ip, args.mask)
    info = await client.create_network(ip, mask, args.gateway)
    if args.json:
        _print_json(info.to_json())
    else:
        print(_fields(_network_pairs(info)))
    return 0


async def _list(client: Client, args: argparse.Namespace) -> int:
    networks = await client.list_networks()
    if args.json:
        _print_json([n.to_json() for n in networks])
    else:
        print(_network_rows(networks))
    return 0


async def _gate_connections(client: Client, network_id: str) -> list[ConnectionInfo] | None:
    """The gate's live connections, or None where the API does not serve them (yagna)."""
    try:
        return await client.list_connections(network_id)
    except NetworkNotFound:  # the network exists (we just read it): the route does not
        return None
    except NetApiError as exc:
        if exc.status in (404, 405, 501):
            return None
        raise


async def _requestor_id(client: Client) -> str | None:
    """The Net API's own node id (the requestor of its networks), or None where the API does
    not serve its status."""
    try:
        return (await client.status()).node_id
    except NetworkNotFound:  # 404: no such route
        return None
    except NetApiError as exc:
        if exc.status in (404, 405, 501):
            return None
        raise


def _bare(ip: str) -> str:
    """An address without the ``/prefix`` yagna adds to requestor addresses."""
    return ip.partition("/")[0]


async def _show(client: Client, args: argparse.Namespace) -> int:
    import asyncio

    nid = args.network_id
    info = await client.get_network(nid)
    addresses: list[AddressInfo]
    nodes: list[NodeInfo]
    addresses, nodes, connections, requestor = await asyncio.gather(
        client.list_addresses(nid),
        client.list_nodes(nid),
        _gate_connections(client, nid),
        _requestor_id(client),
    )
    nodes = _sorted_nodes(nodes)
    if args.json:
        _print_json(
            {
                **info.to_json(),
                "requestorId": requestor,
                "addresses": [a.to_json() for a in addresses],
                "nodes": [n.to_json() for n in nodes],
                "connections": (
                    None if connections is None else [c.to_json() for c in connections]
                ),
            }
        )
        return 0
    pairs = [
        *_network_pairs(info),
        ("requestor", requestor or "- (this Net API does not say its node id)"),
        ("requestor ip", ", ".join(_bare(a.ip) for a in addresses) or "-"),
    ]
    print(_fields(pairs))
    print()
    print(_node_rows(nodes) if nodes else "(no nodes)")
    print()
    if connections is None:
        print("(this Net API does not list gate connections)")
    else:
        print(_connection_rows(connections) if connections else "(no gate connections)")
    return 0


async def _deploy(client: Client, args: argparse.Namespace) -> int:
    import asyncio

    from golem_vpn.errors import AddressError, DeployConfigError, InvalidNodeId
    from golem_vpn.model import DeployNetwork, parse_ip, parse_node_id

    nid = args.network_id
    try:
        node_id = parse_node_id(args.node_id)
    except InvalidNodeId as exc:
        raise _Failure(str(exc)) from None
    info = await client.get_network(nid)
    addresses, nodes, requestor = await asyncio.gather(
        client.list_addresses(nid), client.list_nodes(nid), _requestor_id(client)
    )
    if requestor is None:
        raise _Failure(
            f"the Net API at {client.url} does not say its node id (GET /net-api/v2/net/status), "
            "so the DEPLOY cannot name the requestor"
        )
    requestor = requestor.lower()
    if node_id == requestor:
        raise _Failure(
            f"{node_id} is the requestor of network {nid}: a DEPLOY is for a provider's node"
        )
    members = {n.id.lower(): n.ip for n in nodes}
    if node_id not in members:
        raise _Failure(
            f"node {node_id} is not in network {nid}; add it first with "
            f"`{PROG} net node add {nid} {node_id} IP`"
        )
    try:
        table = {parse_ip(_bare(a.ip)): requestor for a in addresses}
        table.update({parse_ip(_bare(ip)): member for member, ip in members.items()})
        gateway = parse_ip(info.gateway) if info.gateway else None
        entry = DeployNetwork(nid, info.network, gateway, parse_ip(_bare(members[node_id])), table)
    except (AddressError, DeployConfigError) as exc:
        raise _Failure(f"the Net API describes network {nid} inconsistently: {exc}") from None
    _print_json({"net": [entry.to_json()]})
    holder = table.get(gateway) if gateway is not None else None
    if holder is not None and holder != requestor:
        print(
            f"{PROG}: note: the gateway {gateway} is node {holder}'s address, so the provider "
            f"side cannot tell the requestor from it: add --requestor {requestor} to "
            f"`{PROG} attach` and `{PROG} run`",
            file=sys.stderr,
        )
    return 0


async def _remove(client: Client, args: argparse.Namespace) -> int:
    await client.remove_network(args.network_id)
    if args.json:
        _print_json({"id": args.network_id, "removed": True})
    else:
        print(f"removed network {args.network_id}")
    return 0


async def _members(client: Client, nid: str, text: str) -> tuple[str, list[NodeInfo], list[str]]:
    """The address ``text`` as the API takes it (``IP``, or ``IP/PREFIX`` with the network's
    prefix: the prefix is dropped), the network's nodes and the requestor's addresses."""
    import asyncio

    address, slash, prefix = text.partition("/")
    try:
        ip = str(ipaddress.ip_address(address))
    except ValueError:
        raise _Failure(f"{text!r} is not an IP address") from None
    info, nodes, addresses = await asyncio.gather(
        client.get_network(nid), client.list_nodes(nid), client.list_addresses(nid)
    )
    if slash:
        network = info.network
        if prefix != str(network.prefixlen):
            raise _Failure(
                f"{text}: network {nid} is {network}; give the address alone ({address}) "
                "or with its prefix"
            )
    return ip, nodes, [_bare(a.ip) for a in addresses]


def _check_free(
    nid: str, ip: str, node_id: str, nodes: Sequence[NodeInfo], requestor: list[str]
) -> None:
    """Refuses an address that the requestor or another node holds, saying which."""
    if ip in requestor:
        raise _Failure(
            f"{ip} is the requestor's own address in network {nid}; give the node another "
            f"(`{PROG} net show {nid}` lists the requestor's and the nodes' addresses)"
        )
    holder = next((n.id for n in nodes if _bare(n.ip) == ip), None)
    if holder is not None and holder.lower() != node_id.lower():
        raise _Failure(
            f"address {ip} is held by node {holder} in network {nid}; give the node another "
            f"(`{PROG} net show {nid}` lists who holds which)"
        )


async def _node_add(client: Client, args: argparse.Namespace) -> int:
    nid, node_id = args.network_id, args.node_id
    ip, nodes, requestor = await _members(client, nid, args.ip)
    current = next((n for n in nodes if n.id.lower() == node_id.lower()), None)
    if current is not None and _bare(current.ip) != ip:
        raise _Failure(
            f"node {node_id} already holds {current.ip} in network {nid} (a node has one "
            f"address); to move it: `{PROG} net node set-ip {nid} {node_id} {ip}`"
        )
    _check_free(nid, ip, node_id, nodes, requestor)
    await client.add_node(nid, node_id, ip)
    if args.json:
        _print_json({"networkId": nid, "id": node_id, "ip": ip})
    else:
        print(f"added node {node_id} to network {nid} as {ip}")
    return 0


async def _node_move(client: Client, args: argparse.Namespace) -> int:
    nid, node_id = args.network_id, args.node_id
    ip, nodes, requestor = await _members(client, nid, args.ip)
    if not any(n.id.lower() == node_id.lower() for n in nodes):
        raise _Failure(f"node {node_id} is not in network {nid}")
    _check_free(nid, ip, node_id, nodes, requestor)
    node = await client.set_node_ip(nid, node_id, ip)
    if args.json:
        _print_json({"networkId": args.network_id, **node.to_json()})
    else:
        print(f"moved node {node.id} in network {args.network_id} to {node.ip}")
    return 0


async def _node_remove(client: Client, args: argparse.Namespace) -> int:
    nid, node_id = args.network_id, args.node_id
    # The API answers 200 for a node that is not there (yagna's semantics); a typo should not
    # pass silently on the command line.
    if not any(n.id.lower() == node_id.lower() for n in await client.list_nodes(nid)):
        raise _Failure(f"node {node_id} is not in network {nid}")
    await client.remove_node(nid, node_id)
    if args.json:
        _print_json({"networkId": nid, "id": node_id, "removed": True})
    else:
        print(f"removed node {node_id} from network {nid}")
    return 0


async def _node_list(client: Client, args: argparse.Namespace) -> int:
    nodes = _sorted_nodes(await client.list_nodes(args.network_id))
    if args.json:
        _print_json([n.to_json() for n in nodes])
    else:
        print(_node_rows(nodes))
    return 0


# -- connect --------------------------------------------------------------------------------------


async def _connect(client: Client, args: argparse.Namespace) -> int:
    import asyncio

    nid = args.network_id
    ip, port = args.target
    host, local_port = args.listen or args.listen_option or (DEFAULT_LISTEN_HOST, 0)
    target = _hostport(str(ip), port)

    # Fail now, not on the first connection: a wrong key, network or address is a setup error.
    info = await client.get_network(nid)
    nodes = await client.list_nodes(nid)
    if not any(_ip_key(n.ip)[:2] == (ip.version, int(ip)) for n in nodes):
        raise _Failure(_no_node_at(nid, info.network, ip, await client.list_addresses(nid)))

    forwards: set[asyncio.Task[Any]] = set()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        forwards.add(task)
        try:
            await _forward(client, args, reader, writer)
        except asyncio.CancelledError:
            # Shutting down; _forward has closed both sides. Ending normally keeps Python
            # 3.11's stream server from logging the cancellation as an error.
            pass
        finally:
            forwards.discard(task)

    try:
        server = await asyncio.start_server(accept, host, local_port)
    except OSError as exc:
        raise _Failure(
            f"cannot listen on {_hostport(host, local_port)}: {exc.strerror or exc}"
        ) from None
    stop = asyncio.Event()
    installed = _on_signals(stop.set)
    try:
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        listen = _hostport(bound_host, bound_port)
        if args.json:
            print(json.dumps({"listen": listen, "networkId": nid, "target": target}), flush=True)
        else:
            print(f"forwarding {listen} -> {target} in network {nid}", flush=True)
        if not ipaddress.ip_address(bound_host).is_loopback:
            print(
                f"{PROG}: warning: listening on {bound_host}: anyone who reaches this machine "
                f"reaches {target}",
                file=sys.stderr,
            )
        await stop.wait()
    finally:
        for signum in installed:
            asyncio.get_running_loop().remove_signal_handler(signum)
        server.close()
        for task in list(forwards):
            task.cancel()
        await asyncio.gather(*forwards, return_exceptions=True)
        await server.wait_closed()
    return 0


def _no_node_at(nid: str, network: IPNetwork, ip: Address, requestor: list[AddressInfo]) -> str:
    """Why ``net connect`` has nowhere to go at ``ip``, and what would help, if anything."""
    from golem_vpn.errors import AddressError
    from golem_vpn.model import check_host

    if ip.version != network.version or ip not in network:
        return (
            f"{ip} is not in network {nid} ({network}); `{PROG} net node list {nid}` shows "
            "the nodes' addresses"
        )
    if str(ip) in {_bare(a.ip) for a in requestor}:
        return (
            f"{ip} is the requestor's own address in network {nid}: the gate connects from "
            f"there; connect to a node's address (`{PROG} net node list {nid}`)"
        )
    try:
        check_host(network, ip)
    except AddressError as exc:
        return f"{exc}: no node can hold it; `{PROG} net node list {nid}` shows the nodes"
    return (
        f"no node of network {nid} has address {ip}; add one with "
        f"`{PROG} net node add {nid} NODE_ID {ip}`"
    )


def _on_signals(callback: Callable[[], None]) -> list[int]:
    """Calls ``callback`` on SIGINT and SIGTERM where the loop can (POSIX, main thread)."""
    import asyncio

    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, callback)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or not POSIX: Ctrl-C raises KeyboardInterrupt
        installed.append(signum)
    return installed


async def _forward(
    client: Client,
    args: argparse.Namespace,
    local_reader: asyncio.StreamReader,
    local_writer: asyncio.StreamWriter,
) -> None:
    """Carries one accepted local connection through the gate until either side ends it."""
    import asyncio

    ip, port = args.target
    peer = local_writer.get_extra_info("peername")
    source = _hostport(str(peer[0]), peer[1]) if peer else "a local client"
    try:
        gate_reader, gate_writer = await client.open_connection(args.network_id, str(ip), port)
    except (GolemVpnError, OSError) as exc:
        why = _describe(exc, client, args) if isinstance(exc, GolemVpnError) else str(exc)
        print(f"{PROG}: connection from {source}: {why}", file=sys.stderr, flush=True)
        local_writer.close()
        with contextlib.suppress(Exception):
            await local_writer.wait_closed()
        return
    pumps = [
        asyncio.create_task(_relay(local_reader, gate_writer)),
        asyncio.create_task(_relay(gate_reader, local_writer)),
    ]
    try:
        # The gate has no half-close: the first side to end (EOF or error) ends both.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        gate_writer.close()  # sends what is queued, then closes the WebSocket
        local_writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_SHUTDOWN_CLOSE_TIMEOUT):
                await asyncio.gather(
                    gate_writer.wait_closed(), local_writer.wait_closed(), return_exceptions=True
                )


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies ``reader`` to ``writer`` until EOF; ``drain`` keeps a slow side slowing the other."""
    while data := await reader.read(_RELAY_CHUNK):
        writer.write(data)
        await writer.drain()


# -- standalone -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``golem-vpn net ...`` (``argv`` starts with ``net``); returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG)
    add_net_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2)
        return exc.code if isinstance(exc.code, int) else 2
    return run_net(args)


if __name__ == "__main__":
    sys.exit(main())
