"""The node transport: identities, and encrypted UDP tunnels carrying real TCP between stacks.

Everything runs on loopback UDP (127.0.0.1) with the network's own addresses only inside
the userspace stacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

import golem_vpn
from golem_vpn import Identity, IdentityError
from golem_vpn.node.transport import UdpTransport

NET = "5eed" * 8
CIDR = "192.168.7.0/24"


def test_identity_matches_ethereum_addresses() -> None:
    # The secret key 1 is the well-known Ethereum address 0x7E5F...5Bdf.
    one = Identity.from_secret(bytes(31) + b"\x01")
    assert one.node_id == "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
    assert len(one.public_key) == 65
    assert one.public_key[0] == 4
    again = Identity.from_secret(one.secret_bytes())
    assert again.node_id == one.node_id


def test_signatures_prove_the_node_id() -> None:
    a, b = Identity.generate(), Identity.generate()
    assert a.node_id != b.node_id
    sig = a.sign(b"register me")
    assert len(sig) == 65
    assert Identity.recover_node_id(b"register me", sig) == a.node_id
    # Another message recovers another key: the claim does not verify as a.
    assert Identity.recover_node_id(b"register him", sig) != a.node_id
    with pytest.raises(IdentityError):
        Identity.recover_node_id(b"x", sig[:64])
    with pytest.raises(IdentityError):
        Identity.from_secret(b"short")
    with pytest.raises(IdentityError):
        Identity.from_secret(bytes(32))  # zero is no secp256k1 key


async def _pair() -> tuple[UdpTransport, UdpTransport, golem_vpn.Interface, golem_vpn.Interface]:
    a = UdpTransport(Identity.generate())
    b = UdpTransport(Identity.generate())
    ia = a.join(NET, CIDR, "192.168.7.2")
    ib = b.join(NET, CIDR, "192.168.7.3")
    a.add_peer(NET, b.node_id, "192.168.7.3", b.local_addr)
    b.add_peer(NET, a.node_id, "192.168.7.2", a.local_addr)
    return a, b, ia, ib


async def _transfer(ia: golem_vpn.Interface, ib: golem_vpn.Interface, port: int, size: int) -> None:
    """Sends ``size`` random bytes over TCP from ``ia`` to a server on ``ib`` (192.168.7.3)
    at ``port``, which answers with the SHA-256 of what it read: it must match."""

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        while data := await reader.read(1 << 20):
            digest.update(data)
        writer.write(digest.hexdigest().encode())
        await writer.drain()
        writer.close()

    server = await golem_vpn.start_server(sink, ib, port)
    try:
        reader, writer = await golem_vpn.open_connection(ia, "192.168.7.3", port, timeout=5)
        payload = os.urandom(size)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 30)
        assert answer.decode() == hashlib.sha256(payload).hexdigest()
        writer.close()
    finally:
        server.close()


def test_tcp_over_encrypted_udp_tunnel() -> None:
    async def main() -> None:
        a, b, ia, ib = await _pair()
        await _transfer(ia, ib, 9000, 8 << 20)
        assert await ia.ping("192.168.7.3") > 0
        stats = a.native.stats()
        assert stats["tunnel"]["handshakes_completed"] >= 1
        assert stats["tunnel"]["bytes_out"] >= 8 << 20
        assert a.native.is_up(b.node_id)
        a.close()
        b.close()

    asyncio.run(main())


def test_receiving_lanes_are_asked_for_checked_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = Identity.generate()
    native = golem_vpn.NodeTransport(identity, lanes=3)
    try:
        stats = native.stats()
        assert (stats["lanes"], stats["lane_datagrams"]) == (3, [0, 0])
    finally:
        native.close()
    for bad in (0, 17):
        with pytest.raises(ValueError, match="lanes must be from 1 to 16"):
            golem_vpn.NodeTransport(identity, lanes=bad)
    # The default follows the daemon's --workers (GOLEM_VPN_WORKERS), else 1.
    monkeypatch.delenv("GOLEM_VPN_WORKERS", raising=False)
    assert golem_vpn.NodeTransport(identity).stats()["lanes"] == 1

    async def main() -> None:
        # Nodes on two lanes still carry everything that is not steered (handshakes, the
        # userspace stack's packets: lane 0) on the node's own socket.
        a, b, ia, ib = await _pair()
        assert a.native.stats()["lanes"] == 2
        await _transfer(ia, ib, 9001, 1 << 20)
        a.close()
        b.close()

    monkeypatch.setenv("GOLEM_VPN_WORKERS", "2")
    asyncio.run(main())


def test_impostor_cannot_take_a_node_id() -> None:
    async def main() -> None:
        a = UdpTransport(Identity.generate())
        real_b = Identity.generate()
        impostor = UdpTransport(Identity.generate())  # listens where A thinks B is
        ia = a.join(NET, CIDR, "192.168.7.2")
        impostor.join(NET, CIDR, "192.168.7.3")
        impostor.add_peer(NET, a.node_id, "192.168.7.2", a.local_addr)
        a.add_peer(NET, real_b.node_id, "192.168.7.3", impostor.local_addr)
        with pytest.raises(TimeoutError):
            await golem_vpn.open_connection(ia, "192.168.7.3", 22, timeout=1.5)
        assert not a.native.is_up(real_b.node_id)
        drops = a.native.stats()["tunnel"]["drops"]
        impostor_drops = impostor.native.stats()["tunnel"]["drops"]
        # Initiations for B carry a mac1 keyed by B's id: the impostor's (honest) code
        # refuses them unread. One that answered anyway would fail A's identity check
        # (rust/tunnel/tests.rs: a_node_answering_for_another_id_fails_the_handshake).
        refused = impostor_drops["bad_mac1"] + impostor_drops["not_allowed"]
        assert drops["identity_mismatch"] + refused >= 1, (drops, impostor_drops)
        a.close()
        impostor.close()

    asyncio.run(main())


def test_removed_peer_is_cut_off_and_garbage_is_counted() -> None:
    async def main() -> None:
        a, b, ia, ib = await _pair()
        rx = await golem_vpn.open_datagram_endpoint(ib, 5353)
        tx = await golem_vpn.open_datagram_endpoint(ia)
        tx.send(b"first", ("192.168.7.3", 5353))
        assert (await asyncio.wait_for(rx.recv(), 5))[0] == b"first"
        b.remove_peer(NET, a.node_id)
        tx.send(b"second", ("192.168.7.3", 5353))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rx.recv(), 0.5)
        # Garbage datagrams at B's socket: counted, nothing delivered, B still works.
        loop = asyncio.get_running_loop()
        junk, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=b.local_addr
        )
        for i in range(16):
            junk.sendto(bytes([i]) * (i * 9))
        await asyncio.sleep(0.2)
        junk.close()
        assert sum(b.native.stats()["tunnel"]["drops"].values()) >= 15
        a.close()
        b.close()

    asyncio.run(main())


PROVIDER = textwrap.dedent(
    """
    import asyncio, sys
    import golem_vpn
    from golem_vpn.node.transport import UdpTransport

    async def main():
        requestor_id, requestor_port = sys.argv[1], int(sys.argv[2])
        link = UdpTransport(golem_vpn.Identity.generate())
        iface = link.join("{net}", "{cidr}", "192.168.7.3")
        link.add_peer("{net}", requestor_id, "192.168.7.2", ("127.0.0.1", requestor_port))

        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        await golem_vpn.start_server(echo, iface, 7)
        print(link.node_id, link.local_addr[1], flush=True)
        await asyncio.sleep(30)

    asyncio.run(main())
    """
).format(net=NET, cidr=CIDR)


def test_nodes_in_separate_processes() -> None:
    async def main() -> None:
        a = UdpTransport(Identity.generate())
        ia = a.join(NET, CIDR, "192.168.7.2")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PROVIDER,
            a.node_id,
            str(a.local_addr[1]),
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            provider_id, port = line.decode().split()
            a.add_peer(NET, provider_id, "192.168.7.3", ("127.0.0.1", int(port)))
            reader, writer = await golem_vpn.open_connection(ia, "192.168.7.3", 7, timeout=5)
            blob = os.urandom(1 << 20)
            writer.write(blob)
            await writer.drain()
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), 20)
            assert echoed == blob
            writer.close()
        finally:
            proc.kill()
            await proc.wait()
            a.close()

    asyncio.run(main())


def test_nodes_without_addresses_talk_through_a_relay() -> None:
    from golem_vpn.node.relay import RelayService

    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            # No hole punching: on loopback it would succeed at once; this is about relaying.
            a = UdpTransport(Identity.generate(), relay=relay.local_addr, hole_punching=False)
            b = UdpTransport(Identity.generate(), relay=relay.local_addr, hole_punching=False)
            ia = a.join(NET, CIDR, "192.168.7.2")
            ib = b.join(NET, CIDR, "192.168.7.3")
            # Only node ids are exchanged: the relay finds the nodes.
            a.add_peer(NET, b.node_id, "192.168.7.3")
            b.add_peer(NET, a.node_id, "192.168.7.2")
            for _ in range(100):
                if a.public_addr and b.public_addr:
                    break
                await asyncio.sleep(0.01)
            assert a.public_addr == a.local_addr
            assert relay.relay.registrations() == 2

            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.close()

            server = await golem_vpn.start_server(echo, ib, 7)
            reader, writer = await golem_vpn.open_connection(ia, "192.168.7.3", 7, timeout=5)
            blob = os.urandom(1 << 20)
            writer.write(blob)
            await writer.drain()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 20) == blob
            writer.close()
            assert a.native.is_relayed(b.node_id)
            stats = relay.relay.stats()
            assert stats["forwarded"] > 100
            assert stats["forwarded_bytes"] >= 2 * len(blob)
            assert a.native.stats()["relayed_out"] > 0
            server.close()
            a.close()
            b.close()

    asyncio.run(main())


def test_relay_command_serves_registrations() -> None:
    async def main() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "golem_vpn",
            "relay",
            "--listen",
            "127.0.0.1:0",
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line.startswith("relay listening on 127.0.0.1:")
            port = int(line.rsplit(":", 1)[1])
            node = UdpTransport(Identity.generate(), relay=("127.0.0.1", port))
            for _ in range(200):
                if node.public_addr:
                    break
                await asyncio.sleep(0.01)
            assert node.public_addr == node.local_addr
            node.close()
        finally:
            proc.kill()
            await proc.wait()

    asyncio.run(main())


def test_relay_command_rejects_bad_listen() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "golem_vpn", "relay", "--listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 1
    assert "HOST:PORT" in proc.stderr


def test_hole_punching_moves_relayed_peers_to_a_direct_path() -> None:
    from golem_vpn.node.relay import RelayService

    async def main() -> None:
        async with RelayService("127.0.0.1", 0) as relay:
            a = UdpTransport(Identity.generate(), relay=relay.local_addr)
            b = UdpTransport(Identity.generate(), relay=relay.local_addr)
            ia = a.join(NET, CIDR, "192.168.7.2")
            b.join(NET, CIDR, "192.168.7.3")
            a.add_peer(NET, b.node_id, "192.168.7.3")
            b.add_peer(NET, a.node_id, "192.168.7.2")
            for _ in range(300):
                if not a.native.is_relayed(b.node_id) and a.native.is_up(b.node_id):
                    break
                with contextlib.suppress(TimeoutError):
                    await ia.ping("192.168.7.3", timeout=0.05)
            assert not a.native.is_relayed(b.node_id)
            assert a.native.peer_address(b.node_id) == b.local_addr
            assert a.native.stats()["punched"] + b.native.stats()["punched"] >= 1
            assert relay.relay.stats()["lookups"] >= 1
            assert await ia.ping("192.168.7.3") > 0
            a.close()
            b.close()

    asyncio.run(main())


def test_several_relays_a_dead_one_is_passed_over() -> None:
    from golem_vpn.node.relay import RelayService

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dead, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        dead_addr = dead.get_extra_info("sockname")[:2]
        try:
            async with RelayService("127.0.0.1", 0) as relay:
                relays = [tuple(dead_addr), relay.local_addr]
                a = UdpTransport(Identity.generate(), relay=relays, hole_punching=False)
                b = UdpTransport(Identity.generate(), relay=relays, hole_punching=False)
                ia = a.join(NET, CIDR, "192.168.7.2")
                b.join(NET, CIDR, "192.168.7.3")
                # Until a relay answers, the first configured one is in use: the first
                # handshakes go to the dead relay and are started over on failover.
                assert a.native.relay == tuple(dead_addr)
                a.add_peer(NET, b.node_id, "192.168.7.3")
                b.add_peer(NET, a.node_id, "192.168.7.2")
                for _ in range(200):
                    if a.native.relay == relay.local_addr and b.native.relay == relay.local_addr:
                        break
                    await asyncio.sleep(0.01)
                assert a.native.relay == relay.local_addr
                # Well before the 5 s handshake retry: failover restarted the handshake.
                assert await ia.ping("192.168.7.3", timeout=3) > 0
                assert relay.relay.stats()["forwarded"] >= 2
                a.close()
                b.close()
        finally:
            dead.close()

    asyncio.run(main())
