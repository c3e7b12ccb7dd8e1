"""The requestor SDK (``golem_vpn.sdk.Network``) against the fake Net API of test_netapi_client.

Covers yapapi's behaviour (create with the owner from ``status``, add/remove/refresh nodes,
removal, the async context manager) and where we go further: freed addresses are reused,
DEPLOY carries the gateway, ``websocket_uri`` keeps TLS, and ``connect()`` gives asyncio
streams through the gate (a 4 MiB round trip, EOF, close, backpressure).
"""

from __future__ import annotations

import asyncio
import hashlib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from golem_vpn.errors import (
    AddressError,
    AddressesExhausted,
    AddressOutOfRange,
    AddressReserved,
    AddressTaken,
    ConnectTimeout,
    InvalidNodeId,
    NetworkNotFound,
    NodeNotFound,
)
from golem_vpn.netapi import client as client_module
from golem_vpn.netapi.client import Client, NetApiUnavailable
from golem_vpn.sdk import Network, NetworkCreation, Node
from test_netapi_client import (
    DEAF,
    DISCARD,
    ECHO,
    GREETING,
    GREETING_TEXT,
    KEY,
    OWNER,
    PROV_A,
    PROV_B,
    PROV_C,
    SOURCE,
    echo_payload,
    fake_client,
    free_port,
    real_api,
)
from vpn_helpers import payload, read_hashed, run, send_chunked, wait_until


def test_create_and_remove() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            creation = Network.create(client, "192.168.0.0/24")
            assert isinstance(creation, NetworkCreation)
            assert fake.seen == []  # nothing is sent before it is awaited
            net = await creation
            assert fake.paths() == ["GET /net-api/v2/net/status", "POST /net-api/v1/net"]
            assert fake.seen[-1].body == {"ip": "192.168.0.0", "mask": "255.255.255.0"}
            assert net.network_id in fake.networks
            assert net.owner_id == OWNER
            assert net.owner_ip == IPv4Address("192.168.0.1")
            assert net.network == IPv4Network("192.168.0.0/24")
            assert net.network_address == IPv4Address("192.168.0.0")
            assert net.netmask == IPv4Address("255.255.255.0")
            assert net.gateway == IPv4Address("192.168.0.1")
            assert dict(net.nodes) == {}
            assert net.nodes_dict() == {"192.168.0.1": OWNER}
            assert not net.removed

            await net.remove()
            assert fake.networks == {}
            assert net.removed
            await net.remove()  # a second time: nothing sent
            assert fake.paths("DELETE") == [f"DELETE /net-api/v1/net/{net.network_id}"]
            with pytest.raises(NetworkNotFound, match="was removed"):
                await net.add_node(PROV_A)
            with pytest.raises(NetworkNotFound, match="was removed"):
                await net.connect(OWNER, ECHO)

    run(main)


def test_create_with_owner_id_mask_gateway_and_owner_ip() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            net = await Network.create(
                client,
                "10.20.0.0",
                mask="255.255.0.0",
                owner_id=PROV_C.upper().replace("0X", "0x"),
                owner_ip="10.20.0.5",
                gateway="10.20.255.254",
            )
            # The owner id is given: no status call. Another owner IP is an extra address.
            assert fake.paths() == [
                "POST /net-api/v1/net",
                f"POST /net-api/v1/net/{net.network_id}/addresses",
            ]
            assert fake.seen[0].body == {
                "ip": "10.20.0.0",
                "mask": "255.255.0.0",
                "gateway": "10.20.255.254",
            }
            assert fake.seen[1].body == {"ip": "10.20.0.5"}
            assert net.owner_id == PROV_C
            assert net.owner_ip == IPv4Address("10.20.0.5")
            assert net.gateway == IPv4Address("10.20.255.254")
            assert net.nodes_dict() == {"10.20.0.1": PROV_C, "10.20.0.5": PROV_C}
            # Both owner addresses are taken; the pool skips them.
            assert (await net.add_node(PROV_A)).ip == IPv4Address("10.20.0.2")
            with pytest.raises(AddressTaken, match=r"10\.20\.0\.5"):
                await net.add_node(PROV_B, "10.20.0.5")
            await net.remove()

    run(main)


def test_ipv6_network_is_sent_with_its_prefix() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "fd00:1::/64") as net,
        ):
            assert fake.seen[-1].body == {"ip": "fd00:1::/64"}
            assert str(net.owner_ip) == "fd00:1::1"
            node = await net.add_node(PROV_A)
            assert str(node.ip) == "fd00:1::2"
            assert net.websocket_uri(node, 22).endswith(f"/net/{net.network_id}/tcp/fd00:1::2/22")

    run(main)


def test_bad_input_is_refused_before_any_request() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            with pytest.raises(AddressError):
                await Network.create(client, "10.0.0.300/24", owner_id=OWNER)
            with pytest.raises(AddressError, match="conflicts"):
                await Network.create(client, "10.0.0.0/24", mask="255.255.0.0", owner_id=OWNER)
            with pytest.raises(AddressOutOfRange):
                await Network.create(client, "10.0.0.0/24", owner_ip="10.0.1.1", owner_id=OWNER)
            with pytest.raises(AddressReserved):
                await Network.create(client, "10.0.0.0/24", owner_ip="10.0.0.255", owner_id=OWNER)
            with pytest.raises(AddressOutOfRange):
                await Network.create(client, "10.0.0.0/24", gateway="10.0.1.1", owner_id=OWNER)
            with pytest.raises(InvalidNodeId):
                await Network.create(client, "10.0.0.0/24", owner_id="0x12")
            assert fake.seen == []

            async with Network.create(client, "10.0.0.0/24") as net:
                sent = len(fake.seen)
                with pytest.raises(InvalidNodeId):
                    await net.add_node("0xnope")
                with pytest.raises(AddressOutOfRange):
                    await net.add_node(PROV_A, "10.0.1.2")
                with pytest.raises(AddressReserved, match="network address"):
                    await net.add_node(PROV_A, "10.0.0.0")
                with pytest.raises(AddressReserved, match="broadcast"):
                    await net.add_node(PROV_A, "10.0.0.255")
                with pytest.raises(AddressTaken, match="owns"):
                    await net.add_node(OWNER)
                assert len(fake.seen) == sent

    run(main)


def test_auto_addresses_on_a_30_then_exhausted() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/30") as net,
        ):
            assert net.owner_ip == IPv4Address("10.0.0.1")
            node = await net.add_node(PROV_A)
            assert node == Node(PROV_A, IPv4Address("10.0.0.2"))
            assert fake.seen[-1].body == {"id": PROV_A, "ip": "10.0.0.2"}
            with pytest.raises(AddressesExhausted, match=r"No more addresses available"):
                await net.add_node(PROV_B)
            assert fake.networks[net.network_id].nodes == {PROV_A: "10.0.0.2"}

    run(main)


def test_freed_addresses_are_reused_lowest_first() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            a = await net.add_node(PROV_A)
            b = await net.add_node(PROV_B)
            assert (str(a.ip), str(b.ip)) == ("10.0.0.2", "10.0.0.3")
            await net.remove_node(a)
            assert fake.paths()[-1] == f"DELETE /net-api/v1/net/{net.network_id}/nodes/{PROV_A}"
            assert set(net.nodes) == {PROV_B}
            c = await net.add_node(PROV_C)
            assert str(c.ip) == "10.0.0.2"  # yapapi would give .4 (its #614)
            await net.remove_node(PROV_B)  # by node id
            assert str((await net.add_node(PROV_A)).ip) == "10.0.0.3"
            with pytest.raises(NodeNotFound):
                await net.remove_node(PROV_B)
            with pytest.raises(NodeNotFound):
                await net.remove_node(OWNER)

    run(main)


def test_explicit_ips_and_re_adding() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            a = await net.add_node(PROV_A, "10.0.0.50")
            assert str(a.ip) == "10.0.0.50"
            assert await net.add_node(PROV_A) is a  # already there: unchanged
            assert await net.add_node(PROV_A, "10.0.0.50") is a
            with pytest.raises(AddressTaken, match="already holds"):
                await net.add_node(PROV_A, "10.0.0.51")
            with pytest.raises(AddressTaken, match=r"'10\.0\.0\.50' is already held by"):
                await net.add_node(PROV_B, "10.0.0.50")
            with pytest.raises(AddressTaken, match=r"'10\.0\.0\.1' is already held by"):
                await net.add_node(PROV_B, "10.0.0.1")  # the owner's
            assert str((await net.add_node(PROV_B)).ip) == "10.0.0.2"

    run(main)


def test_server_side_409_is_address_taken_and_frees_the_address() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            # Someone else put a node at .2 behind the SDK's back.
            await client.add_node(net.network_id, PROV_C, "10.0.0.2")
            with pytest.raises(AddressTaken, match="409"):
                await net.add_node(PROV_A)
            assert dict(net.nodes) == {}
            # The address was released locally: an explicit other one works.
            assert str((await net.add_node(PROV_A, "10.0.0.3")).ip) == "10.0.0.3"

    run(main)


def test_concurrent_add_node_gets_distinct_addresses() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            ids = [f"0x{i:040x}" for i in range(1, 21)]
            nodes = await asyncio.gather(*(net.add_node(i) for i in ids))
            assert sorted(int(n.ip) for n in nodes) == [
                int(IPv4Address("10.0.0.2")) + k for k in range(20)
            ]
            assert len(fake.networks[net.network_id].nodes) == 20

    run(main)


def test_refresh_nodes_posts_every_node_again() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            await net.add_node(PROV_A)
            await net.add_node(PROV_B)
            before = len(fake.seen)
            await net.refresh_nodes()
            assert [s.body for s in fake.seen[before:]] == [
                {"id": PROV_A, "ip": "10.0.0.2"},
                {"id": PROV_B, "ip": "10.0.0.3"},
            ]
            # A 409 on refresh is only logged (yapapi).
            fake.inject = (
                409,
                '{"message": "IP address is taken: 10.0.0.2"}',
                "application/json",
            )
            await net.refresh_nodes()

    run(main)


def test_deploy_args_exact_dict_with_gateway() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_, client),
            Network.create(client, "192.168.0.0/24") as net,
        ):
            a = await net.add_node(PROV_A)
            await net.add_node(PROV_B, "192.168.0.7")
            expected = {
                "net": [
                    {
                        "id": net.network_id,
                        "ip": "192.168.0.0",
                        "mask": "255.255.255.0",
                        "gateway": "192.168.0.1",
                        "nodeIp": "192.168.0.2",
                        "nodes": {
                            "192.168.0.1": OWNER,
                            "192.168.0.2": PROV_A,
                            "192.168.0.7": PROV_B,
                        },
                    }
                ]
            }
            assert net.deploy_args(a) == expected
            assert net.deploy_args(PROV_A) == expected
            assert net.deploy_args(PROV_B)["net"][0]["nodeIp"] == "192.168.0.7"
            with pytest.raises(NodeNotFound):
                net.deploy_args(PROV_C)

    run(main)


def test_websocket_uri() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_, client),
            Network.create(client, "192.168.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            assert net.websocket_uri(node, 8080) == (
                client.url.replace("http://", "ws://")
                + f"/net/{net.network_id}/tcp/192.168.0.2/8080"
            )
            with pytest.raises(NodeNotFound):
                net.websocket_uri(PROV_B, 22)
        tls = Client("https://gw.example/yagna/net-api/v1", KEY)
        assert tls.websocket_url("n1", "10.0.0.2", 22) == (
            "wss://gw.example/yagna/net-api/v1/net/n1/tcp/10.0.0.2/22"
        )

    run(main)


# --- the context manager ----------------------------------------------------------------------


def test_context_manager_removes_the_network_even_when_the_body_raises() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            seen: list[Network] = []

            async def body() -> None:
                async with Network.create(client, "10.0.0.0/24") as net:
                    seen.append(net)
                    await net.add_node(PROV_A)
                    assert len(fake.networks) == 1
                    raise RuntimeError("boom")

            with pytest.raises(RuntimeError, match="boom"):
                await body()
            assert fake.networks == {}
            assert seen[0].removed

            # The awaited form is a context manager too.
            async with await Network.create(client, "10.0.0.0/24") as net2:
                assert net2.network_id in fake.networks
            assert fake.networks == {}

    run(main)


def test_context_manager_removes_on_cancellation() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            entered = asyncio.Event()

            async def body() -> None:
                async with Network.create(client, "10.0.0.0/24"):
                    entered.set()
                    await asyncio.sleep(3600)

            task = asyncio.create_task(body())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert fake.networks == {}

    run(main)


def test_remove_of_a_network_already_gone_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            net = await Network.create(client, "10.0.0.0/24")
            fake.networks.clear()
            await net.remove()
            assert net.removed

    run(main)
    assert "already gone" in caplog.text


def test_failed_remove_can_be_retried() -> None:
    async def main() -> None:
        async with fake_client() as (fake, client):
            net = await Network.create(client, "10.0.0.0/24")
            fake.inject = (500, '{"message": "try again"}', "application/json")
            with pytest.raises(Exception, match="try again"):
                await net.remove()
            assert not net.removed
            await net.remove()
            assert fake.networks == {}

    run(main)


def test_server_down() -> None:
    async def main() -> None:
        async with Client(f"http://127.0.0.1:{free_port()}", KEY) as client:
            with pytest.raises(NetApiUnavailable):
                await Network.create(client, "10.0.0.0/24")

    run(main)


# --- connect(): streams through the gate ------------------------------------------------------


def test_connect_4_mib_round_trip_through_the_gate() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            reader, writer = await net.connect(node, ECHO)
            assert writer.get_extra_info("peername") == ("10.0.0.2", ECHO)
            assert not writer.can_write_eof()
            data = payload(4 << 20, 42)
            _, got = await asyncio.gather(
                send_chunked(writer, data, 300_000), read_hashed(reader, len(data))
            )
            assert got == hashlib.sha256(data).hexdigest()
            writer.close()
            await writer.wait_closed()
            assert await reader.read() == b""
            await wait_until(lambda: fake.gate_closed == 1)

    run(main)


def test_connect_by_node_id_and_many_small_writes() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            await net.add_node(PROV_A)
            reader, writer = await net.connect(PROV_A, ECHO, chunk_size=1000)
            for i in range(100):
                writer.write(b"%04d" % i)
            await writer.drain()
            assert await reader.readexactly(400) == b"".join(b"%04d" % i for i in range(100))
            writer.close()
            await writer.wait_closed()

    run(main)


def test_eof_when_the_far_end_closes() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            reader, writer = await net.connect(node, GREETING)
            assert await reader.read() == GREETING_TEXT  # all of it, then EOF
            assert await reader.read() == b""
            assert reader.at_eof()
            # No half-close on the gate: the stream is closed for writing too.
            writer.write(b"late")
            with pytest.raises(ConnectionResetError):
                await writer.drain()
            writer.close()
            await writer.wait_closed()

            reader, writer = await net.connect(node, GREETING)
            with pytest.raises(asyncio.IncompleteReadError) as err:
                await reader.readexactly(len(GREETING_TEXT) + 10)
            assert err.value.partial == GREETING_TEXT
            writer.close()
            await writer.wait_closed()

    run(main)


def test_close_sends_queued_bytes_then_closes_the_websocket() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            _, writer = await net.connect(node, DISCARD)
            writer.write(payload(1 << 20, 3))  # no drain: close must still send it all
            writer.close()
            await writer.wait_closed()
            await wait_until(lambda: fake.gate_closed == 1)
            assert fake.discarded == 1 << 20

    run(main)


def test_slow_reader_bounds_what_the_gate_can_push() -> None:
    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            reader, writer = await net.connect(node, SOURCE)
            await wait_until(lambda: fake.source_sent > 0)
            await asyncio.sleep(0.5)  # read nothing
            stalled = fake.source_sent
            await asyncio.sleep(0.3)
            # The source is stuck: the reader's limit, aiohttp's queue and the sockets'
            # buffers hold what it sent, nothing grows without bound.
            assert fake.source_sent == stalled
            assert stalled < 64 << 20
            # Reading lets it go on.
            assert len(await reader.readexactly(stalled)) == stalled
            await wait_until(lambda: fake.source_sent > stalled)
            writer.close()
            await writer.wait_closed()

    run(main)


def test_close_does_not_hang_on_a_server_that_never_answers_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_module, "CLOSE_TIMEOUT", 0.3)

    async def main() -> None:
        async with (
            fake_client() as (fake, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            reader, writer = await net.connect(node, DEAF)
            await reader.readexactly(1 << 20)
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.close()
            await writer.wait_closed()
            assert loop.time() - started < 2.0
            await wait_until(lambda: fake.gate_closed == 1)

    run(main)


def test_connect_to_nothing_is_connect_timeout_and_unknown_node_is_not_found() -> None:
    async def main() -> None:
        async with (
            fake_client() as (_, client),
            Network.create(client, "10.0.0.0/24") as net,
        ):
            node = await net.add_node(PROV_A)
            with pytest.raises(ConnectTimeout, match="504"):
                await net.connect(node, 4444)
            with pytest.raises(NodeNotFound):
                await net.connect(PROV_B, ECHO)

    run(main)


# --- against the real server ------------------------------------------------------------------


async def greet_payload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Says hello and closes (the payload's FIN)."""
    writer.write(GREETING_TEXT)
    await writer.drain()
    writer.close()


def test_real_server_network_lifecycle_and_streams(tmp_path: Path) -> None:
    async def main() -> None:
        async with real_api(tmp_path) as api, Client(api.root, api.key) as client:
            async with Network.create(client, "192.168.0.0/24") as net:
                assert net.owner_id == OWNER
                a = await net.add_node(PROV_A)
                b = await net.add_node(PROV_B)
                assert (str(a.ip), str(b.ip)) == ("192.168.0.2", "192.168.0.3")
                await net.remove_node(a)
                c = await net.add_node(PROV_C)
                assert str(c.ip) == "192.168.0.2"  # reused
                await net.refresh_nodes()
                assert sorted((n.id, n.ip) for n in await client.list_nodes(net.network_id)) == [
                    (PROV_B, "192.168.0.3"),
                    (PROV_C, "192.168.0.2"),
                ]
                assert net.deploy_args(b)["net"][0] == {
                    "id": net.network_id,
                    "ip": "192.168.0.0",
                    "mask": "255.255.255.0",
                    "gateway": "192.168.0.1",
                    "nodeIp": "192.168.0.3",
                    "nodes": {
                        "192.168.0.1": OWNER,
                        "192.168.0.2": PROV_C,
                        "192.168.0.3": PROV_B,
                    },
                }

                provider = api.backend.provider(net.network_id, PROV_B)
                echo_server = await provider.start_server(echo_payload, 7000)
                greet_server = await provider.start_server(greet_payload, 7001)
                async with echo_server, greet_server:
                    reader, writer = await net.connect(b, 7000)
                    data = payload(4 << 20, 5)
                    _, got = await asyncio.gather(
                        send_chunked(writer, data, 300_000), read_hashed(reader, len(data))
                    )
                    assert got == hashlib.sha256(data).hexdigest()
                    writer.close()
                    await writer.wait_closed()

                    reader, writer = await net.connect(PROV_B, 7001)
                    assert await reader.read() == GREETING_TEXT
                    assert await reader.read() == b""
                    writer.close()
                    await writer.wait_closed()
                with pytest.raises(ConnectionRefusedError):
                    await net.connect(b, 7002)
            assert await client.list_networks() == []

    run(main)


def test_real_server_owner_ip_and_taken_addresses(tmp_path: Path) -> None:
    async def main() -> None:
        async with real_api(tmp_path) as api, Client(api.root, api.key) as client:
            net = await Network.create(client, "10.0.0.0/29", owner_ip="10.0.0.6")
            try:
                addresses = {a.ip for a in await client.list_addresses(net.network_id)}
                assert addresses == {"10.0.0.1/29", "10.0.0.6/29"}
                nodes = [await net.add_node(f"0x{i:040x}") for i in range(1, 5)]
                assert [str(n.ip) for n in nodes] == [
                    "10.0.0.2",
                    "10.0.0.3",
                    "10.0.0.4",
                    "10.0.0.5",
                ]
                with pytest.raises(AddressesExhausted):
                    await net.add_node(PROV_A)
                # Behind the SDK's back, the server refuses a taken address with 409.
                with pytest.raises(AddressTaken, match="409"):
                    await client.add_node(net.network_id, PROV_A, "10.0.0.2")
            finally:
                await net.remove()
            assert await client.list_networks() == []

    run(main)
