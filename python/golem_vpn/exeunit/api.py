"""The daemon's attachment API: DEPLOY in, an attached payload out, next to the Net API.

:func:`add_routes` puts these routes into the Net API's aiohttp application
(:func:`golem_vpn.netapi.server.create_app` calls it when the backend has an
:class:`~golem_vpn.exeunit.ExeUnit`), so they share its port and its app-key authentication
(``Authorization: Bearer KEY``; 401 otherwise):

============================================ ============================= ===================
endpoint                                     answer                        errors
============================================ ============================= ===================
``POST /golem-vpn/v1/attachments``           201 ``Attachment``            400 401 403 409 502
``GET /golem-vpn/v1/attachments``            ``[Attachment]``              401
``GET /golem-vpn/v1/attachments/{id}``       ``Attachment``                401 404
``DELETE /golem-vpn/v1/attachments/{id}``    ``Attachment`` (final counts) 401 404
============================================ ============================= ===================

The ``POST`` body is ``{"deploy": DEPLOY, "mode": "tun" | "vm" | "userspace", "requestor"?,
"netns"?, "ifname"?, "mtu"?, "vmEndpoint"?}``; ``DEPLOY`` is yagna's deploy arguments
(``{"net": [...], "hosts": {...}}``) or the exe-script command (``{"deploy": {...}}``);
``mode`` defaults to ``tun``. ``Attachment`` is::

    {"id": "a1b2c3d4", "kind": "tun", "interface": "gvpn0", "netns": "payload",
     "netnsCreated": true, "endpoint": null, "mtu": 1368,
     "addresses": ["192.168.0.2/24"],
     "networks": [{"id": ..., "nodeIp": "192.168.0.2", "cidr": "192.168.0.0/24",
                   "requestor": "0x..."}],
     "hosts": {"db": "192.168.0.3"}, "created": 1767225600.0,
     "counters": {"packetsIn": 0, "bytesIn": 0, "packetsOut": 0, "bytesOut": 0, "drops": 0}}

(``in``: payload to VPN; ``out``: VPN to payload.) Errors are ``{"message": ...}``: 400 a
malformed body or DEPLOY (the message names the field), a bad mode or option, an unknown
requestor; 403 the daemon may not create namespaces or devices (not root); 404 no such
attachment; 409 the interface name is taken in the namespace, or a network of the DEPLOY is
already joined on this node; 502 the VM endpoint cannot be reached; 500 an ``ip`` command
failed (the message has its stderr).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from golem_vpn.errors import (
    AddressError,
    AddressTaken,
    AlreadyAttached,
    AttachError,
    AttachmentNotFound,
    AttachOptionError,
    DeployConfigError,
    EndpointUnreachable,
    InterfaceExists,
    InvalidNodeId,
    NotPermitted,
)
from golem_vpn.exeunit.attach import MODES, ExeUnit
from golem_vpn.exeunit.client import ATTACHMENTS_PATH
from golem_vpn.netapi.server import ApiError

__all__ = ["ATTACHMENTS_PATH", "add_routes"]

_FIELDS: dict[str, type] = {
    "deploy": dict,
    "mode": str,
    "requestor": str,
    "netns": str,
    "ifname": str,
    "mtu": int,
    "vmEndpoint": str,
}

# (error class, HTTP status), most specific first.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (AttachmentNotFound, 404),
    (InterfaceExists, 409),
    (AlreadyAttached, 409),
    (AddressTaken, 409),
    (NotPermitted, 403),
    (PermissionError, 403),
    (EndpointUnreachable, 502),
    (AttachOptionError, 400),
    (DeployConfigError, 400),
    (InvalidNodeId, 400),
    (AddressError, 400),
    (AttachError, 500),
)


def _error(status: int, message: str) -> ApiError:
    return ApiError(status, message)


@asynccontextmanager
async def _answers() -> AsyncIterator[None]:
    """Turns the attachment errors into HTTP answers (see the module docs)."""
    try:
        yield
    except Exception as exc:
        for kind, status in _STATUS:
            if isinstance(exc, kind):
                raise _error(status, str(exc)) from exc
        raise


async def _request(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError; arrays nested deep
        raise _error(400, f"Malformed JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise _error(400, f"Expected a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise _error(400, f"Unknown field '{unknown[0]}' (known: {', '.join(_FIELDS)})")
    if body.get("deploy") is None:
        raise _error(400, "Missing field 'deploy' (the DEPLOY command's arguments)")
    for name, kind in _FIELDS.items():
        value = body.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise _error(400, f"Field '{name}' must be {kind.__name__}, got {shown}")
    mode = body.get("mode", "tun")
    if mode not in MODES:
        raise _error(400, f"Field 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    return body


def add_routes(app: web.Application, exeunit: ExeUnit) -> None:
    """Serves ``exeunit`` at :data:`ATTACHMENTS_PATH` in ``app`` (see the module docs)."""

    async def create(request: web.Request) -> web.Response:
        body = await _request(request)
        async with _answers():
            attachment = await exeunit.attach(
                body["deploy"],
                mode=body.get("mode", "tun"),
                requestor=body.get("requestor"),
                netns=body.get("netns"),
                ifname=body.get("ifname"),
                mtu=body.get("mtu"),
                vm_endpoint=body.get("vmEndpoint"),
            )
        return web.json_response(attachment.to_json(), status=201)

    async def listing(_: web.Request) -> web.Response:
        return web.json_response([a.to_json() for a in exeunit.attachments()])

    async def show(request: web.Request) -> web.Response:
        async with _answers():
            attachment = exeunit.attachment(request.match_info["attachment_id"])
        return web.json_response(attachment.to_json())

    async def remove(request: web.Request) -> web.Response:
        async with _answers():
            attachment = await exeunit.detach(request.match_info["attachment_id"])
        return web.json_response(attachment.to_json())

    one = ATTACHMENTS_PATH + "/{attachment_id}"
    app.router.add_post(ATTACHMENTS_PATH, create)
    app.router.add_get(ATTACHMENTS_PATH, listing)
    app.router.add_get(one, show)
    app.router.add_delete(one, remove)
