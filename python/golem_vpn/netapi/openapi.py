"""The OpenAPI documents of the daemon's HTTP APIs: the one description they all come from.

Three documents (OpenAPI 3.0.3, as ``ya-client``'s specs), each served by the daemon next to
what it describes, without an app key (see :mod:`golem_vpn.netapi.server`):

=================================== ============================= =========================
served at                           describes                     servers
=================================== ============================= =========================
``/net-api/v1/openapi.json``        the Net API, yagna's v1 paths ``/net-api/v1``
``/net-api/v2/vpn/openapi.json``    the Net API, yagna's v2 paths ``/net-api/v2`` (``/vpn/...``
                                    and ``/net/status``)           and ``/net/status``)
``/golem-vpn/v1/openapi.json``      the attachment API (a node     ``/golem-vpn/v1``
                                    daemon's provider side)
=================================== ============================= =========================

The v1 and v2 documents mirror ``ya-client``'s ``specs/net-api.yaml`` and
``specs/net-api-v2.yaml`` (operation ids, schemas, the ``app_key`` bearer scheme and the
``authToken`` query key), plus what golem-vpn serves beyond them, each marked
``x-golem-vpn: extension``. ``docs/net-api.md`` is generated from these documents
(``tools/gen_api_docs.py``, ``make docs``); tests check that it is up to date, that every
route the server registers is described with its methods and no other, and (with
schemathesis) that the server answers as described.

This module builds plain dicts and imports nothing heavy: the generator and the tests use it
without a server.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

__all__ = [
    "DOCUMENT_PATHS",
    "OPENAPI_VERSION",
    "Api",
    "document",
]

OPENAPI_VERSION = "3.0.3"

Api = Literal["net-api-v1", "net-api-v2", "attachments"]

#: Where each document is served.
DOCUMENT_PATHS: dict[Api, str] = {
    "net-api-v1": "/net-api/v1/openapi.json",
    "net-api-v2": "/net-api/v2/vpn/openapi.json",
    "attachments": "/golem-vpn/v1/openapi.json",
}

_EXTENSION = {"x-golem-vpn": "extension"}

Json = dict[str, Any]


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Json:
    return _json(_ref("ErrorMessage"), description)


def _empty(description: str) -> Json:
    return {"description": description}


_NULL: Json = {"nullable": True, "enum": [None], "description": "JSON `null`, as yagna answers"}

_IP: Json = {"type": "string", "description": "An IPv4 or IPv6 address", "example": "192.168.0.2"}
#: An address in a path: IPv4 or IPv6 (the server also wants it in the network).
_IP_PARAM: Json = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
_NODE_ID: Json = {
    "type": "string",
    "pattern": "^0x[0-9a-fA-F]{40}$",
    "description": "A Golem node id: `0x` and 40 hex digits",
    "example": "0x" + "ab" * 20,
}

_SCHEMAS: Json = {
    "ErrorMessage": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
        "description": "Every error with a body (yagna's `ErrorMessage`).",
    },
    "NewNetwork": {
        "type": "object",
        "required": ["ip"],
        "properties": {
            "ip": {
                "type": "string",
                "description": "The network address, with or without a prefix "
                "(`192.168.0.0/24`); host bits are cleared",
                "example": "192.168.0.0/24",
            },
            "mask": {
                "type": "string",
                "nullable": True,
                "description": "A dotted netmask, used when `ip` has no prefix "
                "(IPv4 default `255.255.255.0`; an IPv6 address without a prefix is a /128)",
                "example": "255.255.255.0",
            },
            "gateway": {
                "type": "string",
                "nullable": True,
                "description": "The gateway address; default: the first host",
                "example": "192.168.0.1",
            },
        },
    },
    "Network": {
        "type": "object",
        "required": ["id", "ip", "mask", "gateway"],
        "properties": {
            "id": {
                "type": "string",
                "description": "32 lowercase hex digits",
                "example": "0123456789abcdef0123456789abcdef",
            },
            "ip": {
                "type": "string",
                "description": "The address given at creation, with the network's prefix",
                "example": "192.168.0.0/24",
            },
            "mask": {"type": "string", "example": "255.255.255.0"},
            "gateway": {"type": "string", "example": "192.168.0.1"},
        },
    },
    "Address": {
        "type": "object",
        "required": ["ip"],
        "properties": {
            "ip": {
                "type": "string",
                "description": "An address of the requestor; listed as `ip/prefix`, "
                "accepted with or without the network's prefix",
                "example": "192.168.0.1/24",
            }
        },
    },
    "Node": {
        "type": "object",
        "required": ["id", "ip"],
        "properties": {
            "id": _NODE_ID,
            "ip": {
                **_IP,
                "description": "The node's address in the network (the network's prefix may "
                "be appended)",
            },
        },
    },
    "NodeAddress": {
        "type": "object",
        "required": ["ip"],
        "properties": {"ip": {**_IP, "description": "The node's new address"}},
    },
    "Connection": {
        "type": "object",
        "required": ["protocol", "localIp", "localPort", "remoteIp", "remotePort"],
        "properties": {
            "protocol": {"type": "integer", "description": "6 (TCP)", "example": 6},
            "localIp": _IP,
            "localPort": {"type": "integer"},
            "remoteIp": _IP,
            "remotePort": {"type": "integer"},
        },
        "description": "A live connection of the gate (read-only).",
    },
    "RawSession": {
        "type": "object",
        "required": [
            "src",
            "dst",
            "nodeId",
            "framesIn",
            "bytesIn",
            "framesOut",
            "bytesOut",
            "drops",
        ],
        "properties": {
            "src": {**_IP, "description": "The requestor's address the client speaks from"},
            "dst": {**_IP, "description": "The node's address"},
            "nodeId": _NODE_ID,
            "framesIn": {
                "type": "integer",
                "description": "Frames from the client sent to the node",
            },
            "bytesIn": {"type": "integer"},
            "framesOut": {
                "type": "integer",
                "description": "Frames sent to the client (the node's, and the gate's ARP "
                "and neighbour answers)",
            },
            "bytesOut": {"type": "integer"},
            "drops": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Frames dropped, by reason (only reasons that occurred)",
                "example": {"truncated": 1, "not_to_destination": 2},
            },
        },
        "description": "A live session of the raw gate, with its counters.",
    },
    "Status": {
        "type": "object",
        "required": ["nodeId", "sessions"],
        "properties": {
            "nodeId": _NODE_ID,
            "listenIp": {
                "type": "string",
                "description": "The UDP transport's address",
                "example": "0.0.0.0:11500",
            },
            "publicIp": {
                "type": "string",
                "description": "This node's address as the relay sees it",
                "example": "203.0.113.7:11500",
            },
            "sessions": {
                "type": "integer",
                "minimum": 0,
                "description": "Nodes of this requestor's networks with a live tunnel",
            },
            "refused": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Beyond yagna: Net API requests refused since the daemon "
                "started, by reason (only reasons that occurred): missing_key, invalid_key, "
                "query_key, another_identity, body_too_large, slow_body, networks_limit, "
                "nodes_limit, gates_limit, connections_limit, no_such_address",
                "example": {"invalid_key": 2, "networks_limit": 1},
            },
            "tunnelDrops": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Beyond yagna, a node daemon's: datagrams its UDP tunnels "
                "dropped since it started, by reason (only reasons that occurred), e.g. "
                "bad_mac1 (garbage, or a handshake meant for another node), cookie_sent and "
                "rate_limited (a flood of handshakes), replayed, decrypt_failed, not_allowed",
                "example": {"bad_mac1": 120, "cookie_sent": 35, "rate_limited": 8000},
            },
            "lanes": {
                "type": "integer",
                "minimum": 1,
                "description": "Beyond yagna, a node daemon's: the lanes it receives on, each "
                "read by a thread of its own (`daemon --workers N` asks for N; 1: the node's "
                "thread receives everything)",
                "example": 2,
            },
        },
    },
}

_NETWORK_ID: Json = {
    "name": "networkId",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The network's id",
}


def _path_param(name: str, schema: Json, description: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


_AUTH_ERRORS: Json = {
    "401": _error("No app key (`Missing application key`), or a wrong one"),
}
_NETWORK_ERRORS: Json = {
    **_AUTH_ERRORS,
    "403": _empty(
        "The network belongs to another identity, and the caller's identity owns networks "
        "(empty body, as yagna)"
    ),
    "404": _error("No such network (or the caller's identity owns none)"),
}
_BODY_ERRORS: Json = {
    "400": _error("Malformed JSON, a missing or mistyped field, or a bad address"),
    "408": _error(
        "Beyond yagna: the body did not arrive within the daemon's --request-timeout (15 s)"
    ),
    "413": _error("The body is over the size limit (64 KiB; the daemon's --max-body-size)"),
}


#: A change the data dir cannot take (see :mod:`golem_vpn.netapi.server`): refused whole.
_STORE_ERRORS: Json = {
    "503": _error(
        "Beyond yagna: the data dir is read-only or failing; the change was not stored (the "
        "message names the cause)"
    ),
    "507": _error(
        "Beyond yagna: the data dir's disk is full; the change was not stored (the message "
        "names the data dir)"
    ),
}


def _limit_error(what: str) -> Json:
    return {"429": _error(f"Beyond yagna: {what} (the message names the limit and its flag)")}


def _body(schema: Json, description: str = "") -> Json:
    body: Json = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return body


def _vpn_paths(tag: str) -> Json:
    """The VPN API's paths, relative to ``/net-api/v1`` (or to ``/net-api/v2/vpn``)."""
    ip_param = _path_param("ip", _IP_PARAM, "The destination's address (a node's, in the network)")
    port_param = _path_param(
        "port", {"type": "integer", "minimum": 1, "maximum": 65535}, "The destination port"
    )
    websocket = {
        "101": _empty("Switching Protocols: the WebSocket is open"),
        "400": _error(
            "Not a WebSocket upgrade, a bad address or port, an address outside the network, "
            "or one no node holds (`destination address not found`, at once: yagna waits out "
            "its connect timeout and answers 504)"
        ),
        **_NETWORK_ERRORS,
        **_limit_error("the identity, or the daemon, has as many gate connections open as it may"),
    }
    tags = [tag]
    return {
        "/net": {
            "get": {
                "operationId": "getNetworks",
                "tags": tags,
                "summary": "The caller's networks",
                "description": "Every network the app key's identity created.",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Network")}, "The networks"),
                    **_AUTH_ERRORS,
                },
            },
            "post": {
                "operationId": "createNetwork",
                "tags": tags,
                "summary": "Create a network",
                "description": "Creates a network; this node is its requestor, at the first "
                "host address. As in yagna, `ip` in the answer is the given address with the "
                "network's prefix. A range with no address for a node besides the "
                "requestor's (`/32`, `/128`) is refused (yagna would create it).",
                "requestBody": _body(_ref("NewNetwork")),
                "responses": {
                    "200": _json(_ref("Network"), "The new network"),
                    **_BODY_ERRORS,
                    **_STORE_ERRORS,
                    **_AUTH_ERRORS,
                    **_limit_error("the identity holds as many networks as it may"),
                },
            },
        },
        "/net/{networkId}": {
            "parameters": [_NETWORK_ID],
            "get": {
                "operationId": "getNetwork",
                "tags": tags,
                "summary": "One network",
                "responses": {"200": _json(_ref("Network"), "The network"), **_NETWORK_ERRORS},
            },
            "delete": {
                "operationId": "removeNetwork",
                "tags": tags,
                "summary": "Remove a network",
                "description": "Removes the network and its nodes; its gate connections close "
                "(1001).",
                "responses": {
                    "200": _json(_NULL, "Network removed"),
                    **_NETWORK_ERRORS,
                    **_STORE_ERRORS,
                },
            },
        },
        "/net/{networkId}/addresses": {
            "parameters": [_NETWORK_ID],
            "get": {
                "operationId": "getAddresses",
                "tags": tags,
                "summary": "The requestor's addresses",
                "description": "The requestor's addresses in the network, as `ip/prefix`: "
                "its first host, then any added.",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Address")}, "The addresses"),
                    **_NETWORK_ERRORS,
                },
            },
            "post": {
                "operationId": "addAddress",
                "tags": tags,
                "summary": "Give the requestor one more address",
                "description": "Adding an address the requestor holds already is a no-op.",
                "requestBody": _body(_ref("Address")),
                "responses": {
                    "200": _json(_NULL, "Address assigned"),
                    **_BODY_ERRORS,
                    **_STORE_ERRORS,
                    **_NETWORK_ERRORS,
                    "409": _error("A node holds the address (`IP address is taken: ...`)"),
                },
            },
        },
        "/net/{networkId}/nodes": {
            "parameters": [_NETWORK_ID],
            "get": {
                "operationId": "getNodes",
                "tags": tags,
                "summary": "The network's nodes",
                "description": "The provider nodes (not the requestor).",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Node")}, "The nodes"),
                    **_NETWORK_ERRORS,
                },
            },
            "post": {
                "operationId": "addNode",
                "tags": tags,
                "summary": "Add a node",
                "description": "Adds a provider node at an address; every node of the "
                "network learns of it (yagna's `AddNodes`). Adding a node again with its own "
                "address is yagna's refresh: a 200 that tells the nodes again. A node id equal "
                "to the requestor's registers a requestor address (golem-js registers the "
                "requestor so).",
                "requestBody": _body(_ref("Node")),
                "responses": {
                    "200": _json(_NULL, "Node added"),
                    **_BODY_ERRORS,
                    **_STORE_ERRORS,
                    **_NETWORK_ERRORS,
                    "409": _error(
                        "The address belongs to another node or the requestor, or the node "
                        "holds another address (`IP address is taken: ...`)"
                    ),
                    **_limit_error("the network holds as many nodes as it may"),
                },
            },
        },
        "/net/{networkId}/nodes/{nodeId}": {
            "parameters": [
                _NETWORK_ID,
                _path_param(
                    "nodeId",
                    {"type": "string", "pattern": _NODE_ID["pattern"]},
                    "The node's id",
                ),
            ],
            "delete": {
                "operationId": "removeNode",
                "tags": tags,
                "summary": "Remove a node",
                "description": "Every node drops its packets from now on (yagna's "
                "`RemoveNodes`); the gate's connections to it close. Removing a node that is "
                "not in the network is a 200, as in yagna.",
                "responses": {
                    "200": _json(_NULL, "Node removed"),
                    "400": _error("A malformed node id, or the requestor itself"),
                    **_NETWORK_ERRORS,
                    **_STORE_ERRORS,
                },
            },
            "patch": {
                **_EXTENSION,
                "operationId": "setNodeAddress",
                "tags": tags,
                "summary": "Move a node to another address",
                "description": "Beyond yagna: the node moves in place (its sessions stay up); "
                "every node, the moved one included, follows, and a TUN attachment's device "
                "is readdressed. Gate connections to the old address close.",
                "requestBody": _body(_ref("NodeAddress")),
                "responses": {
                    "200": _json(_ref("Node"), "The node at its new address"),
                    **_BODY_ERRORS,
                    **_STORE_ERRORS,
                    **_AUTH_ERRORS,
                    "403": _NETWORK_ERRORS["403"],
                    "404": _error("No such network, or the node is not in it"),
                    "409": _error("The address is taken"),
                },
            },
        },
        "/net/{networkId}/tcp": {
            "parameters": [_NETWORK_ID],
            "get": {
                "operationId": "getConnections",
                "tags": tags,
                "summary": "The gate's live TCP connections",
                "description": "In ya-client's spec, never served by yagna.",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Connection")}, "The connections"),
                    **_NETWORK_ERRORS,
                },
            },
        },
        "/net/{networkId}/tcp/{ip}/{port}": {
            "parameters": [_NETWORK_ID, ip_param, port_param],
            "get": {
                "operationId": "connectTcp",
                "tags": tags,
                "summary": "The TCP gate (WebSocket)",
                "description": "Connects the requestor's stack to `ip:port` in the network, "
                "then upgrades to a WebSocket carrying that TCP stream: binary and text "
                "messages from the client are stream bytes, the payload's bytes come back as "
                "binary messages; boundaries mean nothing. The server pings every 5 s and "
                "closes after 10 s without a client message. The payload's EOF closes with "
                "1000, removing the node or network with 1001. Also authenticated by "
                "`?authToken=`.",
                "security": [{"app_key": []}, {"app_key_param": []}],
                "responses": {
                    **websocket,
                    "502": _error("Nothing listens at `ip:port` (golem-vpn; yagna says 504)"),
                    "504": _empty("No answer within 5 s, e.g. no node holds `ip` (empty body)"),
                },
            },
        },
        "/net/{networkId}/udp/{ip}/{port}": {
            "parameters": [_NETWORK_ID, ip_param, port_param],
            "get": {
                **_EXTENSION,
                "operationId": "connectUdp",
                "tags": tags,
                "summary": "The UDP gate (WebSocket)",
                "description": "Beyond yagna: one WebSocket message per datagram each way, "
                "between a UDP socket of the requestor's stack and `ip:port`; datagrams from "
                "other sources are dropped.",
                "security": [{"app_key": []}, {"app_key_param": []}],
                "responses": websocket,
            },
        },
        "/net/{networkId}/raw": {
            "parameters": [_NETWORK_ID],
            "get": {
                **_EXTENSION,
                "operationId": "getRawSessions",
                "tags": tags,
                "summary": "The raw gate's live sessions",
                "description": "Beyond yagna: each open raw gate session with its frame "
                "counters and drops by reason.",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("RawSession")}, "The sessions"),
                    **_NETWORK_ERRORS,
                },
            },
        },
        "/net/{networkId}/raw/from/{src}/to/{dst}": {
            "parameters": [
                _NETWORK_ID,
                _path_param("src", _IP_PARAM, "The requestor's address the client speaks from"),
                _path_param("dst", _IP_PARAM, "The node's address"),
            ],
            "get": {
                "operationId": "connectRaw",
                "tags": tags,
                "summary": "The raw frame gate (WebSocket)",
                "description": "yagna master's `connect_raw`: each binary message is one "
                "Ethernet II frame, each way, between the client (MAC `a0:13:` + `src`) and "
                "the node at `dst` (MAC `90:13:` + `dst`). ARP requests and neighbour "
                "solicitations for `dst` are answered by the gate; IP frames to `dst` go to "
                "the node's attachment as packets, and the node's packets come back as "
                "frames. Bad frames are dropped and counted by reason (`GET .../raw`), text "
                "messages too; a message over 128 KiB closes with 1009. While the session is "
                "open the node's packets to the requestor go to it, not to the requestor's "
                "stack. Heartbeat and idle timeout as the TCP gate.",
                "security": [{"app_key": []}, {"app_key_param": []}],
                "responses": {
                    **websocket,
                    "400": _error(
                        "Not a WebSocket upgrade, a malformed address, a `src` that is not "
                        "the requestor's, or a `dst` no node holds (`destination address not "
                        "found`)"
                    ),
                },
            },
        },
    }


def _openapi_path(tag: str) -> Json:
    return {
        "/openapi.json": {
            "get": {
                **_EXTENSION,
                "operationId": "getOpenApi",
                "tags": [tag],
                "summary": "This document",
                "description": "Served without an app key: it is the same for every daemon "
                "and says nothing about its state.",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        }
    }


_NET_API_DESCRIPTION = (
    "yagna's Net API for virtual private networks, as golem-vpn's daemon serves it: the "
    "requestor creates networks, adds provider nodes at virtual addresses and reaches their "
    "payloads through the WebSocket gates. Wire-compatible with yagna (ya-client's "
    "`specs/net-api.yaml`), so yapapi, golem-js and ya-client work unchanged; what golem-vpn "
    "adds is marked `x-golem-vpn: extension`. Every operation takes the app key as "
    "`Authorization: Bearer KEY`; the WebSocket gates also take `?authToken=KEY` (as "
    "yagna's spec: browsers cannot set a WebSocket's headers), other operations refuse a "
    'query key with a 401 (a key in a URL ends up in logs). Errors are `{"message"}` (403 '
    "and 504 have empty bodies, as yagna's). What one identity may hold is bounded (429, "
    "naming the limit and the daemon flag that sets it). The same operations are served "
    "under `/net-api/v1` and `/net-api/v2/vpn`."
)


def _info(title: str, version: str, description: str) -> Json:
    # The API contract's version, not the package's: ya-client's for the Net API.
    return {"title": title, "version": version, "description": description}


_SECURITY_SCHEMES: Json = {
    "app_key": {
        "type": "http",
        "scheme": "bearer",
        "description": "An app key (`golem-vpn app-key create NAME`, yagna's `YAGNA_APPKEY`)",
    },
    "app_key_param": {
        "type": "apiKey",
        "in": "query",
        "name": "authToken",
        "description": "The app key as a query parameter, for WebSocket clients that cannot "
        "set headers: taken on the WebSocket gates only (yagna's middleware takes it on every "
        "path; golem-vpn answers 401 there, as a key in a URL ends up in logs)",
    },
}


def _net_api_v1() -> Json:
    tag = "requestor"
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info("Net API v1 (golem-vpn)", "0.1.0", _NET_API_DESCRIPTION),
        "servers": [{"url": "/net-api/v1"}],
        "security": [{"app_key": []}],
        "tags": [{"name": tag, "description": "The requestor's networks, nodes and gates"}],
        "paths": {**_vpn_paths(tag), **_openapi_path(tag)},
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


def _net_api_v2() -> Json:
    tag = "vpn"
    paths = {"/vpn" + path: item for path, item in _vpn_paths(tag).items()}
    paths["/net/status"] = {
        "get": {
            "operationId": "getStatus",
            "tags": ["net"],
            "summary": "This node's status",
            "description": "The node id, where its UDP transport listens, its public "
            "address as the relay sees it, and how many nodes of its networks have a live "
            "tunnel.",
            "responses": {"200": _json(_ref("Status"), "The status"), **_AUTH_ERRORS},
        }
    }
    paths.update({"/vpn" + p: item for p, item in _openapi_path(tag).items()})
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info("Net API v2 (golem-vpn)", "0.2.0", _NET_API_DESCRIPTION),
        "servers": [{"url": "/net-api/v2"}],
        "security": [{"app_key": []}],
        "tags": [
            {"name": tag, "description": "The requestor's networks, nodes and gates"},
            {"name": "net", "description": "The node"},
        ],
        "paths": paths,
        "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


_ATTACHMENT_SCHEMAS: Json = {
    "ErrorMessage": _SCHEMAS["ErrorMessage"],
    "AttachRequest": {
        "type": "object",
        "required": ["deploy"],
        "additionalProperties": False,
        "properties": {
            "deploy": {
                "type": "object",
                "description": 'yagna\'s DEPLOY arguments (`{"net": [...], "hosts": '
                '{...}}`) or the exe-script command (`{"deploy": {...}}`)',
            },
            "mode": {"type": "string", "enum": ["tun", "vm", "userspace"], "default": "tun"},
            "requestor": {
                **_NODE_ID,
                "description": "Whose control messages the networks follow (default: the "
                "node at the gateway address, else at the first host)",
            },
            "netns": {
                "type": "string",
                "description": "`tun`: the payload's network namespace (created if missing)",
            },
            "ifname": {"type": "string", "description": "`tun`: the device name (`gvpn0`)"},
            "mtu": {"type": "integer", "description": "`tun`: the device's MTU (1368)"},
            "vmEndpoint": {
                "type": "string",
                "description": "`vm`: `udp://HOST:PORT` (default `udp://127.0.0.1:0`), "
                "`tcp-listen://`, `tcp-connect://` or `unix://`",
            },
        },
    },
    "Attachment": {
        "type": "object",
        "required": [
            "id",
            "kind",
            "interface",
            "netns",
            "netnsCreated",
            "endpoint",
            "mtu",
            "addresses",
            "networks",
            "hosts",
            "created",
            "counters",
        ],
        "properties": {
            "id": {"type": "string", "example": "a1b2c3d4"},
            "kind": {"type": "string", "enum": ["tun", "vm", "userspace"]},
            "interface": {"type": "string", "nullable": True, "example": "gvpn0"},
            "netns": {"type": "string", "nullable": True, "example": "payload"},
            "netnsCreated": {"type": "boolean"},
            "endpoint": {
                "type": "string",
                "nullable": True,
                "description": "`vm`: the endpoint URL for the runtime",
                "example": "udp://127.0.0.1:40123",
            },
            "mtu": {"type": "integer", "nullable": True},
            "addresses": {
                "type": "array",
                "items": {"type": "string"},
                "example": ["192.168.0.2/24"],
            },
            "networks": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "nodeIp", "cidr", "requestor"],
                    "properties": {
                        "id": {"type": "string"},
                        "nodeIp": _IP,
                        "cidr": {"type": "string", "example": "192.168.0.0/24"},
                        "requestor": _NODE_ID,
                    },
                },
            },
            "hosts": {"type": "object", "additionalProperties": {"type": "string"}},
            "created": {"type": "number", "description": "Seconds since the epoch"},
            "counters": {
                "type": "object",
                "required": ["packetsIn", "bytesIn", "packetsOut", "bytesOut", "drops"],
                "properties": {
                    name: {"type": "integer"}
                    for name in ("packetsIn", "bytesIn", "packetsOut", "bytesOut", "drops")
                },
                "description": "`in`: payload to VPN; `out`: VPN to payload",
            },
        },
    },
}


def _attachments() -> Json:
    tag = "attachments"
    one = {
        "name": "attachmentId",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The attachment's id",
    }
    not_found = _error("No such attachment")
    paths: Json = {
        "/attachments": {
            "get": {
                "operationId": "getAttachments",
                "tags": [tag],
                "summary": "The daemon's attachments",
                "responses": {
                    "200": _json({"type": "array", "items": _ref("Attachment")}, "Attachments"),
                    **_AUTH_ERRORS,
                },
            },
            "post": {
                "operationId": "attach",
                "tags": [tag],
                "summary": "Attach a payload to its DEPLOY networks",
                "description": "Joins every network of the DEPLOY and connects them to the "
                "payload: a TUN device in a network namespace (`tun`, needs root), a VM "
                "frame endpoint (`vm`) or the daemon's userspace stack (`userspace`). It "
                "either completes or leaves nothing behind.",
                "requestBody": _body(_ref("AttachRequest")),
                "responses": {
                    "201": _json(_ref("Attachment"), "The attachment"),
                    "400": _error("A malformed body or DEPLOY, a bad mode or option"),
                    **_AUTH_ERRORS,
                    "403": _error("The daemon may not create namespaces or devices (not root)"),
                    "409": _error(
                        "The interface name is taken, or a network of the DEPLOY is joined"
                    ),
                    "413": _BODY_ERRORS["413"],
                    "500": _error("An `ip` command failed (the message has its stderr)"),
                    "502": _error("The VM endpoint cannot be reached"),
                },
            },
        },
        "/attachments/{attachmentId}": {
            "parameters": [one],
            "get": {
                "operationId": "getAttachment",
                "tags": [tag],
                "summary": "One attachment, with its counters",
                "responses": {
                    "200": _json(_ref("Attachment"), "The attachment"),
                    **_AUTH_ERRORS,
                    "404": not_found,
                },
            },
            "delete": {
                "operationId": "detach",
                "tags": [tag],
                "summary": "Detach a payload",
                "description": "Removes what attaching made (device, namespace if it made "
                "it) and leaves the networks; answers the final counters.",
                "responses": {
                    "200": _json(_ref("Attachment"), "The attachment, final counters"),
                    **_AUTH_ERRORS,
                    "404": not_found,
                },
            },
        },
        **_openapi_path(tag),
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": _info(
            "golem-vpn attachment API",
            "1.0.0",
            "A node daemon's provider side, served next to the Net API with the same app "
            "keys: a DEPLOY in, an attached payload out (`golem-vpn attach`, "
            "`golem_vpn.exeunit.AttachClient`).",
        ),
        "servers": [{"url": "/golem-vpn/v1"}],
        "security": [{"app_key": []}],
        "tags": [{"name": tag, "description": "Payloads attached to DEPLOYed networks"}],
        "paths": paths,
        "components": {"schemas": _ATTACHMENT_SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


_BUILDERS = {"net-api-v1": _net_api_v1, "net-api-v2": _net_api_v2, "attachments": _attachments}


def document(api: Api) -> dict[str, Any]:
    """A fresh copy of one OpenAPI document (``net-api-v1``, ``net-api-v2``, ``attachments``).

    Raises:
        KeyError: No such document.
    """
    return copy.deepcopy(_BUILDERS[api]())
