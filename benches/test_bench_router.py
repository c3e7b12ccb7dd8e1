"""Python-side router benchmarks: per-call ``inject`` and batched ``inject_many``.

Run with ``make bench-python``. Target (issue 2): >= 2 M packets/s through ``inject_many``
for 1400-byte unicast IPv4. Each benchmark records ``packets_per_s`` in its extra info.
"""

from __future__ import annotations

from typing import Any

import pytest

from golem_vpn import Router
from golem_vpn.demo import udp_packet

LOCAL = "0x" + "01" * 20
PEER = "0x" + "02" * 20
BATCH = 256


@pytest.fixture
def router() -> Router:
    r = Router("bench", "192.168.0.0/24", LOCAL, "192.168.0.1")
    r.add_node(PEER, "192.168.0.2")
    return r


def _packet() -> bytes:
    pkt = udp_packet("192.168.0.1", "192.168.0.2", 4000, 5000, b"\xa5" * (1400 - 28))
    assert len(pkt) == 1400
    return pkt


def test_inject_one(benchmark: Any, router: Router) -> None:
    pkt = _packet()
    out = benchmark(router.inject, pkt)
    assert out == [(PEER, pkt)]
    benchmark.extra_info["packets_per_s"] = 1 / benchmark.stats.stats.mean


@pytest.mark.parametrize("batch", [64, BATCH])
def test_inject_many(benchmark: Any, router: Router, batch: int) -> None:
    packets = [_packet() for _ in range(batch)]
    out = benchmark(router.inject_many, packets)
    assert len(out) == batch
    benchmark.extra_info["packets_per_s"] = batch / benchmark.stats.stats.mean


def test_receive_many(benchmark: Any, router: Router) -> None:
    pkt = udp_packet("192.168.0.2", "192.168.0.1", 5000, 4000, b"\xa5" * (1400 - 28))
    items = [(PEER, pkt)] * BATCH
    out = benchmark(router.receive_many, items)
    assert len(out) == BATCH
    benchmark.extra_info["packets_per_s"] = BATCH / benchmark.stats.stats.mean
