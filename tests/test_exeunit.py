"""The provider side without root: DEPLOY parsing, and userspace attachments on real daemons.

The daemon tests run a relay, a requestor daemon and a provider daemon as separate processes
on 127.0.0.1 (:mod:`exeunit_helpers`); the requestor creates a network through its Net API
and adds the provider, and the DEPLOY the provider attaches is the one the requestor's SDK
makes. Traffic is real: the requestor's WebSocket gate opens TCP connections to the
provider's address, which its userspace stack refuses once (and only once) it is attached.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exeunit_helpers import Daemon, Nodes, cli, make_deploy
from golem_vpn.errors import (
    AlreadyAttached,
    AttachmentNotFound,
    BadRequest,
    ConnectionRefused,
    ConnectTimeout,
    DeployConfigError,
    Forbidden,
)
from golem_vpn.exeunit import AttachClient, Attachment, default_requestor, parse_deploy
from golem_vpn.netapi.client import Client

REQ = "0x" + "a1" * 20
PROV_A = "0x" + "b2" * 20
PROV_B = "0x" + "c3" * 20
NET_A = "0123456789abcdef0123456789abcdef"
NET_B = "fedcba9876543210fedcba9876543210"


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": NET_A,
        "ip": "192.168.7.0",
        "mask": "255.255.255.0",
        "gateway": "192.168.7.1",
        "nodeIp": "192.168.7.2",
        "nodes": {"192.168.7.1": REQ, "192.168.7.2": PROV_A, "192.168.7.3": PROV_B},
    }
    entry.update(overrides)
    return entry


def _v6_entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": NET_B,
        "ip": "fd07::",
        "mask": "ffff:ffff:ffff:ffff::",
        "nodeIp": "fd07::2",
        "nodes": {"fd07::1": REQ, "fd07::2": PROV_A},
    }
    entry.update(overrides)
    return entry


# --- DEPLOY ---------------------------------------------------------------------------------


def test_the_default_mtu_is_the_one_the_tunnel_never_fragments_at() -> None:
    # The arithmetic (and that a packet this size seals to exactly a 1500-byte relayed IPv6
    # datagram) is checked in Rust; here, that the provider side uses it.
    from golem_vpn import _golem_vpn
    from golem_vpn.exeunit import DEFAULT_MTU

    assert DEFAULT_MTU == _golem_vpn.DEFAULT_TUN_MTU == 1368


def test_a_deploy_with_two_networks_and_hosts() -> None:
    body = {"net": [_entry(), _v6_entry()], "hosts": {"db": "192.168.7.3"}, "volumes": {}}
    for form in (body, {"deploy": body}, json.dumps({"deploy": body})):
        deploy = parse_deploy(form)
        assert [n.id for n in deploy.networks] == [NET_A, NET_B]
        assert [str(n.node_ip) for n in deploy.networks] == ["192.168.7.2", "fd07::2"]
        assert deploy.hosts == {"db": ip_address("192.168.7.3")}
        assert parse_deploy(deploy.to_json()) == deploy


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "net: no networks"),
        ({"net": []}, "net: no networks"),
        ({"deploy": {"net": [_entry(nodeIp="10.0.0.1")]}}, "deploy.net[0].nodeIp"),
        ({"net": [_entry(), _entry()]}, "net[1].id"),
        ({"net": [_entry()], "hosts": {"db": "not-an-ip"}}, "hosts['db']"),
        ({"net": [_entry()], "hosts": {"bad name": "192.168.7.3"}}, "hosts['bad name']"),
        ({"net": [_entry()], "hosts": ["db"]}, "hosts: expected an object"),
        ({"deploy": [1]}, "deploy: expected an object"),
        ([_entry()], "DEPLOY: expected an object"),
        ('{"net": [], "net": []}', "duplicate key 'net'"),
        ("{", "not valid JSON"),
    ],
)
def test_malformed_deploys_name_the_field(body: object, field: str) -> None:
    with pytest.raises(DeployConfigError) as info:
        parse_deploy(body)
    assert field in str(info.value)


def test_requestor_defaults_to_the_gateway_holder_else_the_first_host() -> None:
    (net,) = parse_deploy({"net": [_entry(gateway="192.168.7.3")]}).networks
    assert default_requestor(net) == PROV_B
    (net,) = parse_deploy({"net": [_entry(gateway="192.168.7.9")]}).networks
    assert default_requestor(net) == REQ  # nobody holds the gateway: the first host's node
    (net,) = parse_deploy({"net": [_entry(gateway=None)]}).networks
    assert default_requestor(net) == REQ
    (net,) = parse_deploy({"net": [_v6_entry()]}).networks
    assert default_requestor(net) == REQ
    (net,) = parse_deploy(
        {"net": [_entry(gateway="192.168.7.9", nodes={"192.168.7.2": PROV_A})]}
    ).networks
    with pytest.raises(DeployConfigError) as info:
        default_requestor(net, path="net[0]")
    message = str(info.value)
    assert "net[0].nodes" in message
    assert "192.168.7.9" in message
    assert "192.168.7.1" in message
    assert "--requestor" in message


# --- the API on real daemons ----------------------------------------------------------------


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Daemon]]:
    with Nodes(tmp_path_factory.mktemp("exeunit")) as running:
        yield running.start("requestor"), running.start("provider")


async def _gate_refused(requestor: Daemon, network_id: str, ip: str) -> bool:
    """Whether a TCP connect through the requestor's gate is refused (a stack answered)
    rather than unanswered (nobody holds ``ip``)."""
    async with Client(requestor.api, requestor.key, timeout=30) as client:
        try:
            _, writer = await client.open_connection(network_id, ip, 9)
        except ConnectionRefused:
            return True
        except (ConnectTimeout, BadRequest):  # a held node unanswered; nobody holds ip
            return False
        writer.close()
        raise AssertionError("port 9 accepted a connection")


def test_userspace_attachment_lifecycle(nodes: tuple[Daemon, Daemon]) -> None:
    requestor, provider = nodes
    (network_id,), (deploy,) = make_deploy(requestor, [provider], ["192.168.171.0/24"])
    deploy["hosts"] = {"req": "192.168.171.1"}
    node_ip = deploy["net"][0]["nodeIp"]

    async def main() -> None:
        assert not await _gate_refused(requestor, network_id, node_ip)
        async with AttachClient(provider.api, provider.key) as client:
            att = await client.attach({"deploy": deploy}, mode="userspace")
            assert att.kind == "userspace"
            assert len(att.id) == 8
            assert int(att.id, 16) >= 0
            assert att.addresses == (f"{node_ip}/24",)
            assert att.interface is None
            assert att.endpoint is None
            assert att.hosts == {"req": "192.168.171.1"}
            (net,) = att.networks
            assert (net.id, net.node_ip, net.cidr) == (network_id, node_ip, "192.168.171.0/24")
            assert net.requestor == requestor.node_id  # the gateway's holder

            # The attached stack answers: a closed port is refused, not left unanswered.
            assert await _gate_refused(requestor, network_id, node_ip)
            (listed,) = await client.attachments()
            assert listed.id == att.id
            assert listed.counters.packets_out >= 1  # the SYN, VPN -> payload
            assert listed.counters.packets_in >= 1  # the RST, payload -> VPN
            assert listed.counters.bytes_in >= 40
            assert (await client.attachment(att.id)).networks == att.networks

            with pytest.raises(AlreadyAttached, match=network_id):
                await client.attach(deploy, mode="userspace")

            final = await client.detach(att.id)
            assert final.counters.packets_in >= listed.counters.packets_in
            assert await client.attachments() == []
            with pytest.raises(AttachmentNotFound):
                await client.attachment(att.id)
            with pytest.raises(AttachmentNotFound):
                await client.detach(att.id)
        # Detached: nobody answers at the address any more.
        assert not await _gate_refused(requestor, network_id, node_ip)

        # The network was left, so the same DEPLOY attaches again.
        async with AttachClient(provider.api, provider.key) as client:
            again = await client.attach(deploy, mode="userspace", requestor=requestor.node_id)
            assert again.id != att.id
            await client.detach(again.id)

    asyncio.run(main())


def test_api_errors(nodes: tuple[Daemon, Daemon]) -> None:
    requestor, provider = nodes
    (_,), (deploy,) = make_deploy(requestor, [provider], ["192.168.172.0/24"])
    url = provider.api + "/golem-vpn/v1/attachments"
    auth = {"Authorization": f"Bearer {provider.key}"}

    async def post(body: object, headers: dict[str, str] = auth) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=json.dumps(body), headers=headers) as resp,
        ):
            return resp.status, await resp.json()

    async def main() -> None:
        bad_ip = {"net": [{**deploy["net"][0], "nodeIp": "10.99.0.2"}]}
        cases: list[tuple[object, int, str]] = [
            ({"deploy": bad_ip, "mode": "userspace"}, 400, "net[0].nodeIp"),
            ({"deploy": {"net": []}, "mode": "userspace"}, 400, "no networks"),
            ({"deploy": deploy, "mode": "bridge"}, 400, "mode"),
            ({"mode": "userspace"}, 400, "Missing field 'deploy'"),
            ({"deploy": deploy, "mode": "userspace", "color": 1}, 400, "Unknown field 'color'"),
            ({"deploy": deploy, "mode": "userspace", "mtu": "big"}, 400, "'mtu'"),
            ({"deploy": deploy, "mode": "userspace", "netns": "x"}, 400, "tun attachments only"),
            ({"deploy": deploy, "mode": "userspace", "requestor": "me"}, 400, "node id"),
            (
                {"deploy": deploy, "mode": "userspace", "requestor": "0x" + "ab" * 20},
                400,
                "is not a node of network",
            ),
            ([], 400, "Expected a JSON object"),
        ]
        for body, status, text in cases:
            got_status, answer = await post(body)
            assert (got_status, text in answer["message"]) == (status, True), (body, answer)
        status, answer = await post({"deploy": deploy, "mode": "userspace"}, headers={})
        assert (status, answer) == (401, {"message": "Missing application key"})
        status, _ = await post(
            {"deploy": deploy, "mode": "userspace"}, headers={"Authorization": "Bearer nope"}
        )
        assert status == 401
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/deadbeef", headers=auth) as resp:
                assert resp.status == 404
                assert "deadbeef" in (await resp.json())["message"]
            async with session.get(url) as resp:
                assert resp.status == 401
        async with AttachClient(provider.api, "wrong") as client:
            with pytest.raises(Forbidden, match="401"):
                await client.attachments()
        async with AttachClient(provider.api, provider.key) as client:
            with pytest.raises(BadRequest, match="nodeIp"):
                await client.attach(bad_ip, mode="userspace")
            assert await client.attachments() == []  # nothing was attached by the failures

    asyncio.run(main())


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_attach_list_detach(nodes: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    requestor, provider = nodes
    (network_id,), (deploy,) = make_deploy(requestor, [provider], ["192.168.173.0/24"])
    node_ip = deploy["net"][0]["nodeIp"]
    deploy_file = tmp_path / "deploy.json"
    deploy_file.write_text(json.dumps(deploy))
    env = provider.env()

    attached = cli("attach", "--userspace", "--deploy", str(deploy_file), env=env)
    assert attached.returncode == 0, attached.stderr
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in attached.stdout.splitlines())
    )
    attachment_id = fields["id"]
    assert fields["kind"] == "userspace"
    assert fields["addresses"] == f"{node_ip}/24"
    assert network_id in fields["network"]
    assert requestor.node_id in fields["network"]

    asyncio.run(_gate_refused(requestor, network_id, node_ip))  # some traffic to count

    table = cli("attachments", env=env)
    assert table.returncode == 0, table.stderr
    header, *rows = [line.split() for line in table.stdout.splitlines()]
    assert header[:4] == ["ID", "KIND", "WHERE", "ADDRESSES"]
    assert "DROPS" in header
    assert [row[:4] for row in rows] == [[attachment_id, "userspace", "userspace", f"{node_ip}/24"]]
    listed = cli("attachments", "--json", env=env)
    (item,) = json.loads(listed.stdout)
    assert Attachment.from_json(item).id == attachment_id
    assert set(item["counters"]) == {"packetsIn", "bytesIn", "packetsOut", "bytesOut", "drops"}

    # The same DEPLOY from stdin, with --url/--app-key instead of the environment: refused.
    again = cli(
        "attach",
        "--userspace",
        "--deploy",
        "-",
        "--url",
        provider.api,
        f"--app-key={provider.key}",
        stdin=json.dumps({"deploy": deploy}),
    )
    assert again.returncode == 1
    assert "already joined" in again.stderr
    assert "Traceback" not in again.stderr

    detached = cli("detach", attachment_id, env=env)
    assert detached.returncode == 0, detached.stderr
    assert detached.stdout.startswith(f"detached {attachment_id} (userspace")
    gone = cli("detach", attachment_id, env=env)
    assert gone.returncode == 1
    assert gone.stderr.startswith("golem-vpn: error: ")
    assert attachment_id in gone.stderr
    assert json.loads(cli("attachments", "--json", env=env).stdout) == []


def test_cli_net_deploy_is_what_attach_takes(nodes: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    # The requestor's side builds the DEPLOY with the CLI alone; the provider attaches it.
    requestor, provider = nodes
    created = cli("net", "create", "192.168.174.0/24", "--json", env=requestor.env())
    assert created.returncode == 0, created.stderr
    network_id = json.loads(created.stdout)["id"]
    added = cli(
        "net", "node", "add", network_id, provider.node_id, "192.168.174.9", env=requestor.env()
    )
    assert added.returncode == 0, added.stderr

    shown = cli("net", "show", network_id, env=requestor.env())
    assert shown.returncode == 0, shown.stderr
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition(":") for line in shown.stdout.split("\n\n")[0].splitlines()
        )
    )
    assert fields["requestor"] == requestor.node_id
    assert fields["requestor ip"] == "192.168.174.1"

    printed = cli("net", "deploy", network_id, provider.node_id, env=requestor.env())
    assert (printed.returncode, printed.stderr) == (0, "")
    deploy = json.loads(printed.stdout)
    assert deploy == {
        "net": [
            {
                "id": network_id,
                "ip": "192.168.174.0",
                "mask": "255.255.255.0",
                "gateway": "192.168.174.1",
                "nodeIp": "192.168.174.9",
                "nodes": {"192.168.174.1": requestor.node_id, "192.168.174.9": provider.node_id},
            }
        ]
    }
    deploy_file = tmp_path / "deploy.json"
    deploy_file.write_text(printed.stdout)
    attached = cli(
        "attach", "--userspace", "--deploy", str(deploy_file), "--json", env=provider.env()
    )
    assert attached.returncode == 0, attached.stderr
    att = Attachment.from_json(json.loads(attached.stdout))
    assert att.networks[0].requestor == requestor.node_id
    assert asyncio.run(_gate_refused(requestor, network_id, "192.168.174.9"))  # it answers
    assert cli("detach", att.id, env=provider.env()).returncode == 0

    for argv, message in (
        (["net", "deploy", network_id, requestor.node_id], "is the requestor"),
        (["net", "deploy", network_id, "0x" + "77" * 20], "is not in network"),
        (["net", "deploy", network_id, "bob"], "is not a Golem node id"),
    ):
        refused = cli(*argv, env=requestor.env())
        assert (refused.returncode, refused.stdout) == (1, ""), argv
        assert refused.stderr.startswith("golem-vpn: error: "), argv
        assert message in refused.stderr, argv
    assert cli("net", "rm", network_id, env=requestor.env()).returncode == 0


def test_cli_user_errors(nodes: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    _, provider = nodes
    env = provider.env()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"net": [_entry(nodeIp="10.9.9.9")]}))
    result = cli("attach", "--userspace", "--deploy", str(bad), env=env)
    assert result.returncode == 1
    assert "net[0].nodeIp" in result.stderr
    assert "Traceback" not in result.stderr

    missing = cli("attach", "--userspace", "--deploy", str(tmp_path / "nope.json"), env=env)
    assert missing.returncode == 1
    assert "cannot read the DEPLOY" in missing.stderr

    usage = cli("attach", "--userspace", "--netns", "x", "--deploy", str(bad), env=env)
    assert usage.returncode == 2
    assert "--netns go with --tun" in usage.stderr
    both = cli("attach", "--userspace", "--tun", "--deploy", str(bad), env=env)
    assert both.returncode == 2

    no_key = {k: v for k, v in env.items() if k != "YAGNA_APPKEY"}
    unauthorized = cli("attachments", env=no_key)
    assert unauthorized.returncode == 1
    assert "needs an app key" in unauthorized.stderr
    down = cli("attachments", "--url", "http://127.0.0.1:9", env=env)
    assert down.returncode == 1
    assert "cannot reach the daemon" in down.stderr
    assert provider.key not in down.stderr + unauthorized.stderr
