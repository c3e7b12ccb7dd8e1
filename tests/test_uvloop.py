"""The same stream scenarios under uvloop: the package must not depend on asyncio's own loop.

``Interface`` only uses the running loop's public API (``time``, ``call_soon``, ``call_at``,
``create_future``), so uvloop must work unchanged. Each test runs on a fresh uvloop loop
through ``asyncio.Runner(loop_factory=uvloop.new_event_loop)``; no policy is ever set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from golem_vpn import LocalNetwork
from vpn_helpers import bidirectional_transfer, echo_round_trip, many_connections, run

uvloop = pytest.importorskip("uvloop")


def run_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    """Runs ``scenario()`` on a fresh uvloop loop, checking that it really is uvloop."""

    async def main() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        await scenario()

    run(main, loop_factory=uvloop.new_event_loop)


def test_echo_round_trip_on_uvloop() -> None:
    async def scenario() -> None:
        async with LocalNetwork() as net:
            a, b = net.add_node(), net.add_node()
            assert isinstance(a.interface.loop, uvloop.Loop)
            await echo_round_trip(a, b)

    run_on_uvloop(scenario)


def test_500_concurrent_connections_on_uvloop() -> None:
    run_on_uvloop(lambda: many_connections(500, backlog=512))


def test_8_mib_both_directions_on_uvloop() -> None:
    run_on_uvloop(lambda: bidirectional_transfer(8 << 20))


def test_ping_rtt_is_positive_on_uvloop() -> None:
    async def scenario() -> None:
        async with LocalNetwork() as net:
            a, b = net.add_node(), net.add_node()
            rtts = [await a.ping(b.ip, timeout=2) for _ in range(5)]
            assert all(0 < rtt < 2 for rtt in rtts), rtts

    run_on_uvloop(scenario)
