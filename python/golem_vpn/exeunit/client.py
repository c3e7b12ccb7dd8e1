"""An async client of the daemon's attachment API (``/golem-vpn/v1/attachments``).

It finds the daemon and its app key exactly as the Net API client does
(:class:`golem_vpn.netapi.client.Client`, which it extends): ``url`` (a daemon root such as
``http://127.0.0.1:7465``, or a Net API base URL), else ``$YAGNA_NET_URL``, else
``$YAGNA_API_URL``, else ``http://127.0.0.1:7465``; ``app_key``, else ``$YAGNA_APPKEY``. The
attachment API lives at the daemon's root, next to the Net API.

Errors:

====== ======================================================================
status raises
====== ======================================================================
400    :class:`~golem_vpn.errors.BadRequest` (a malformed DEPLOY, a bad option)
401    :class:`~golem_vpn.errors.Forbidden` (no or a wrong app key)
403    :class:`~golem_vpn.errors.NotPermitted` (the daemon is not root)
404    :class:`~golem_vpn.errors.AttachmentNotFound`
409    :class:`~golem_vpn.errors.InterfaceExists` or :class:`~golem_vpn.errors.AlreadyAttached`
502    :class:`~golem_vpn.errors.EndpointUnreachable` (the VM endpoint)
other  :class:`~golem_vpn.errors.NetApiError`
none   :class:`~golem_vpn.errors.NetApiUnavailable`
====== ======================================================================

Example::

    async with AttachClient() as client:
        att = await client.attach(deploy_args, mode="tun", netns="payload")
        print(att.interface, att.addresses)
        await client.detach(att.id)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from golem_vpn.errors import (
    AlreadyAttached,
    AttachmentNotFound,
    EndpointUnreachable,
    InterfaceExists,
    NetApiError,
    NotPermitted,
)
from golem_vpn.exeunit.attach import Attachment, Mode
from golem_vpn.netapi.client import Client, _seg

__all__ = ["ATTACHMENTS_PATH", "AttachClient"]

#: The attachments collection, at the daemon's API root.
ATTACHMENTS_PATH = "/golem-vpn/v1/attachments"


class AttachClient(Client):
    """An async client of one daemon's attachment API (and, inherited, its Net API).

    Args:
        url: The daemon (see the module docs for how it and the environment are read).
        app_key: The app key; ``$YAGNA_APPKEY`` by default.
        session: An aiohttp session to use (the caller keeps it).
        timeout: Seconds a call may take; None waits forever. Attaching a VM endpoint with
            ``tcp-listen://`` returns at once; ``tcp-connect://`` waits for the runtime.
    """

    @property
    def attachments_url(self) -> str:
        """The URL of the attachments collection."""
        return self._root + ATTACHMENTS_PATH

    async def attach(
        self,
        deploy: Mapping[str, Any],
        *,
        mode: Mode = "tun",
        requestor: str | None = None,
        netns: str | None = None,
        ifname: str | None = None,
        mtu: int | None = None,
        vm_endpoint: str | None = None,
    ) -> Attachment:
        """Attaches a payload to the networks of a DEPLOY (``POST /golem-vpn/v1/attachments``).

        Args:
            deploy: The DEPLOY arguments (``{"net": [...], "hosts": {...}}``) or the exe-script
                command (``{"deploy": {...}}``).
            mode: ``tun``, ``vm`` or ``userspace``.
            requestor: The requestor's node id (default: per network, from the DEPLOY).
            netns: ``tun``: the payload's network namespace (made if missing).
            ifname: ``tun``: the device name (default ``gvpn0``).
            mtu: ``tun``: the device's MTU (default 1368).
            vm_endpoint: ``vm``: the endpoint URL (default ``udp://127.0.0.1:0``).

        Returns:
            The attachment (``endpoint`` is what to give a VM runtime).
        """
        body: dict[str, Any] = {"deploy": dict(deploy), "mode": mode}
        for key, value in (
            ("requestor", requestor),
            ("netns", netns),
            ("ifname", ifname),
            ("mtu", mtu),
            ("vmEndpoint", vm_endpoint),
        ):
            if value is not None:
                body[key] = value
        return self._attachment(await self._call("POST", self.attachments_url, body))

    async def attachments(self) -> list[Attachment]:
        """Every attachment on the daemon, with counters."""
        answer = await self._call("GET", self.attachments_url)
        if not isinstance(answer, list):
            raise NetApiError(f"GET {self.attachments_url}: malformed answer: {answer!r:.60}")
        return [self._attachment(item) for item in answer]

    async def attachment(self, attachment_id: str) -> Attachment:
        """One attachment, with counters (AttachmentNotFound if there is none)."""
        url = f"{self.attachments_url}/{_seg(attachment_id)}"
        return self._attachment(await self._call("GET", url))

    async def detach(self, attachment_id: str) -> Attachment:
        """Removes an attachment and what it made; returns it with its final counters."""
        url = f"{self.attachments_url}/{_seg(attachment_id)}"
        return self._attachment(await self._call("DELETE", url))

    def _attachment(self, obj: object) -> Attachment:
        try:
            if not isinstance(obj, dict):
                raise ValueError(f"expected an object, got {obj!r:.60}")
            return Attachment.from_json(obj)
        except ValueError as exc:
            raise NetApiError(f"{self.attachments_url}: malformed answer: {exc}") from None

    def _raise_for(self, method: str, url: str, status: int, reason: str, text: str) -> NoReturn:
        if ATTACHMENTS_PATH in url and method == "POST" and status in (404, 405):
            raise NetApiError(
                f"{method} {url}: {status} {reason}: the daemon at {self._root} has no "
                "attachment API (is it a golem-vpn daemon?)",
                status=status,
                message=f"{status} {reason}",
            )
        if ATTACHMENTS_PATH in url and status in (403, 404, 409, 502):
            try:
                obj = json.loads(text) if text.strip() else None
            except ValueError:
                obj = None
            message = obj.get("message") if isinstance(obj, dict) else None
            detail = message if isinstance(message, str) else f"{status} {reason}"
            if status == 403:
                raise NotPermitted(detail)
            if status == 404:
                raise AttachmentNotFound(detail)
            if status == 409:
                if " already exists in " in detail:
                    raise InterfaceExists(detail)
                raise AlreadyAttached(detail)
            raise EndpointUnreachable(detail)
        super()._raise_for(method, url, status, reason, text)
