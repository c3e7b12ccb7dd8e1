"""Hypothesis against the two JSON inputs a stranger controls: Net API bodies and DEPLOY.

- The Net API's JSON bodies (``POST /net``, ``POST /net/{id}/addresses``, ``POST
  /net/{id}/nodes``, ``PATCH /net/{id}/nodes/{node}``, both API versions), sent over real HTTP
  to the real aiohttp application (:func:`test_netapi_server.running`): arbitrary JSON values,
  objects with the expected fields of the wrong types, huge numbers, odd unicode, deep nesting,
  and raw bytes that are not JSON. Every answer is a 4xx with a JSON ``{"message": str}``, or a
  success, never a 5xx; after a refusal the networks, nodes and addresses are as before (a
  request that happens to be valid is undone, so each example starts from the same state).
- The DEPLOY parser (:func:`golem_vpn.exeunit.deploy.parse_deploy`, and
  :func:`golem_vpn.model.parse_deploy_net` under it): arbitrary structures, DEPLOY-shaped ones
  with fields of any type, and text. It returns a parsed DEPLOY (which round-trips through its
  JSON) or raises :class:`~golem_vpn.errors.DeployConfigError`, never another exception.

The control channel's frames are parsed in Python only; ``test_control.py`` already runs
Hypothesis over them (``test_parse_message_never_raises_anything_else``, and over raw frames).
The Rust surfaces are fuzzed by ``fuzz/`` (``make fuzz``). Examples are bounded so the file runs
in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from golem_vpn.errors import DeployConfigError
from golem_vpn.exeunit.deploy import parse_deploy
from golem_vpn.model import parse_deploy_net
from test_netapi_server import PREFIXES, PROV_A, Api, running

# -- strategies ----------------------------------------------------------------------------

#: Numbers that break naive code: huge, negative, float edge cases JSON can carry.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.integers(min_value=-(2**70), max_value=-(2**63)),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 10**400, 1e308, -0.0]),
)
#: Strings: arbitrary unicode (lone surrogates excluded: not JSON-encodable as UTF-8), and
#: near-misses of valid values.
strings = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            " ",
            "192.168.0.0/24",
            "192.168.0.5",
            "192.168.0.0",
            "192.168.0.255",
            "192.168.0.5/24",
            "10.0.0.0/8",
            "::",
            "fd00::/64",
            "255.255.255.255",
            "0x" + "b2" * 20,
            "0X" + "B2" * 20,
            "0x" + "b2" * 19,
            "192.168.0.\u0665",  # an Arabic-Indic digit
            "192.168.0.5\x00",
            "\uff11\uff19\uff12.168.0.5",  # fullwidth digits
            "a" * 5000,
        ]
    ),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, strings),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["ip", "mask", "gateway", "id", "nodeIp", "net", "nodes"]
#: Objects with the fields the endpoints read, each of any type (often a string).
body_like = st.dictionaries(st.sampled_from(FIELDS), st.one_of(strings, json_values), max_size=4)
#: Bytes that are not JSON, or JSON in forms ``json.loads`` treats specially.
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"",
            b"NaN",
            b'{"ip": NaN}',
            b'{"ip": Infinity}',
            b'{"ip": "192.168.0.0/24", "ip": 5}',
            b"1" * 5000,
            b"[" * 100_000,
            b'{"a":' * 50_000,
            b'"\\ud800"',
            b'{"ip": "\\ud800"}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
        ]
    ),
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    body_like.map(lambda v: json.dumps(v).encode()),
    raw_bodies,
)

# -- Net API --------------------------------------------------------------------------------

NET = "192.168.0.0/24"


async def _snapshot(api: Api) -> Any:
    """Everything a body could change: the networks, and each one's nodes and addresses."""
    status, nets = await api.call("GET", "/net")
    assert status == 200, nets
    state = []
    for net in sorted(nets, key=lambda n: n["id"]):
        _, nodes = await api.call("GET", f"/net/{net['id']}/nodes")
        _, addrs = await api.call("GET", f"/net/{net['id']}/addresses")
        state.append((net, sorted(map(json.dumps, nodes)), sorted(map(json.dumps, addrs))))
    return state


async def _send(api: Api, method: str, path: str, prefix: str, data: bytes) -> tuple[int, Any]:
    """One request with a raw body; the answer's status and body (not decoded)."""
    headers = {"Authorization": f"Bearer {api.keys['a']}", "Content-Type": "application/json"}
    async with api.session.request(
        method, api.url + prefix + path, data=data, headers=headers
    ) as resp:
        return resp.status, await resp.read()


class _Loop:
    """A Net API on one event loop, kept across Hypothesis examples (a server per example
    would cost more than the requests)."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.cm = running(tmp_path / "netapi.db")
        self.api: Api = self.loop.run_until_complete(self.cm.__aenter__())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.cm.__aexit__(None, None, None))
        finally:
            self.loop.close()


@pytest.fixture
def netapi(tmp_path: Path) -> Any:
    server = _Loop(tmp_path)
    try:
        yield server
    finally:
        server.close()


#: The endpoints that read a JSON body; ``{net}`` is the network of the current baseline.
ENDPOINTS = [
    ("POST", "/net"),
    ("POST", "/net/{net}/addresses"),
    ("POST", "/net/{net}/nodes"),
    ("PATCH", "/net/{net}/nodes/" + PROV_A),
]


async def _baseline(api: Api) -> tuple[str, Any]:
    """Deletes every network, then makes the one each example starts from: a network with a
    node. Returns its id and the snapshot."""
    _, nets = await api.call("GET", "/net")
    for net in nets:
        assert (await api.call("DELETE", f"/net/{net['id']}"))[0] == 200
    net_id = await api.create(NET)
    status, _ = await api.call("POST", f"/net/{net_id}/nodes", {"id": PROV_A, "ip": "192.168.0.7"})
    assert status == 200
    return net_id, await _snapshot(api)


def test_netapi_bodies_get_a_4xx_json_answer_and_change_nothing(netapi: _Loop) -> None:
    api = netapi.api
    state = list(netapi.run(_baseline(api)))
    seen: dict[int, int] = {}

    @settings(
        max_examples=250,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.sampled_from(ENDPOINTS), st.sampled_from(PREFIXES), bodies)
    @example(ENDPOINTS[0], PREFIXES[0], b"[" * 100_000)
    @example(ENDPOINTS[2], PREFIXES[0], b"[" * 5000)
    @example(ENDPOINTS[3], PREFIXES[1], b'{"ip": ' * 3000)
    @example(ENDPOINTS[1], PREFIXES[0], b'{"ip": "192.168.0.5", "ip": "x"}')
    @example(ENDPOINTS[2], PREFIXES[1], json.dumps({"id": PROV_A, "ip": 10**400}).encode())
    @example(ENDPOINTS[3], PREFIXES[0], json.dumps({"ip": ["192.168.0.9"]}).encode())
    def check(endpoint: tuple[str, str], prefix: str, data: bytes) -> None:
        method, path = endpoint[0], endpoint[1].format(net=state[0])
        status, raw = netapi.run(_send(api, method, path, prefix, data))
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, f"{method} {prefix}{path} {data[:80]!r}: {status} {raw[:200]!r}"
        if status >= 400:
            body = json.loads(raw)
            assert isinstance(body, dict), raw
            assert isinstance(body.get("message"), str), raw
            assert netapi.run(_snapshot(api)) == state[1], f"{method} {path} {data[:80]!r}"
        else:  # a valid request: back to the baseline
            state[:] = netapi.run(_baseline(api))

    check()
    assert seen.get(400, 0) > 100, seen  # most bodies were refused for what they are


# -- DEPLOY ----------------------------------------------------------------------------------

ENTRY_FIELDS = ["id", "ip", "mask", "nodeIp", "gateway", "nodes", "requestorId", "requestor"]
valid_entry = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a" * 32, "net-1"]),
        "ip": st.sampled_from(["10.0.0.0", "192.168.7.0", "fd00::"]),
        "mask": st.sampled_from(["255.255.255.0", "/24", "24"]),
        "nodeIp": st.sampled_from(["10.0.0.5", "192.168.7.5", "fd00::5"]),
        "nodes": st.dictionaries(
            st.sampled_from(["10.0.0.1", "192.168.7.1", "fd00::1"]),
            st.sampled_from(["0x" + "b2" * 20, "0x" + "c3" * 20]),
            max_size=2,
        ),
    }
)


@st.composite
def entry_like(draw: Callable[..., Any]) -> Any:
    """A ``net`` entry: a valid one with some fields replaced by anything, or removed."""
    entry = dict(draw(valid_entry))
    for name in draw(st.lists(st.sampled_from(ENTRY_FIELDS), max_size=3)):
        if draw(st.booleans()):
            entry[name] = draw(st.one_of(strings, json_values))
        else:
            entry.pop(name, None)
    return entry


deploy_like = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"net": st.one_of(st.lists(entry_like(), max_size=3), json_values)},
        optional={
            "hosts": st.one_of(st.dictionaries(strings, strings, max_size=3), json_values),
            "hostname": st.one_of(strings, json_values),
        },
    ),
)
deploy_inputs = st.one_of(
    deploy_like,
    deploy_like.map(lambda d: {"deploy": d}),
    deploy_like.map(json.dumps),
    deploy_like.map(lambda d: json.dumps(d).encode()),
    raw_bodies,
)


def _deploy_or_error(parse: Callable[[object], Any], obj: object) -> Any:
    """What ``parse`` returns, or its DeployConfigError (any other exception propagates)."""
    try:
        return parse(obj)
    except DeployConfigError as exc:
        return exc


@settings(max_examples=400, deadline=None, derandomize=True)
@given(deploy_inputs)
@example("[" * 100_000)
@example(b'{"net": [{"ip": "10.0.0.0", "ip": "10.1.0.0"}]}')
@example({"net": [{"ip": "10.0.0.0", "mask": 10**400, "nodeIp": "10.0.0.5"}]})
def test_deploy_parser_returns_a_deploy_or_raises_its_error(obj: object) -> None:
    deploy = _deploy_or_error(lambda o: parse_deploy(o, require_net=False), obj)
    if isinstance(deploy, DeployConfigError):
        assert str(deploy)
    else:
        assert parse_deploy(deploy.to_json(), require_net=False) == deploy
    networks = _deploy_or_error(parse_deploy_net, obj)
    if isinstance(networks, DeployConfigError):
        assert str(networks)
    else:
        assert all(net.to_json() for net in networks)


# -- findings --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000, '{"net": ' * 20_000, b"[" * 5000])
def test_deploy_nested_too_deep_is_a_deploy_error(text: str | bytes) -> None:
    # Found by the test above: json.loads raised RecursionError, not DeployConfigError.
    with pytest.raises(DeployConfigError, match="not valid JSON"):
        parse_deploy(text)
    with pytest.raises(DeployConfigError, match="not valid JSON"):
        parse_deploy_net(text)


def test_netapi_body_nested_too_deep_is_a_400(netapi: _Loop) -> None:
    # Found by the Net API property above: a body of nested arrays within the size limit
    # made json.loads raise RecursionError, answered 500 "Internal server error".
    api = netapi.api
    net_id, before = netapi.run(_baseline(api))
    for method, path in ENDPOINTS:
        for data in (b"[" * 5000, b'{"ip": ' * 3000):
            url = path.format(net=net_id)
            status, raw = netapi.run(_send(api, method, url, PREFIXES[0], data))
            assert status == 400, (method, url, raw)
            assert json.loads(raw)["message"].startswith("Malformed JSON body")
    assert netapi.run(_snapshot(api)) == before
