"""The provider side: a DEPLOY command turned into a payload attached to its networks.

This package sits on the node daemon (:mod:`golem_vpn.node`): a requestor's DEPLOY names the
networks (``net``) and host names (``hosts``) a payload is to have, and an attachment connects
the payload to them on this node's encrypted transport, in one of three ways: a TUN device in
the payload's network namespace, a VM runtime's frame endpoint, or the userspace stack.

- :mod:`.options`: the attach modes and option defaults (light, for the CLI's parser).
- :mod:`.deploy`: the DEPLOY body (:func:`parse_deploy`) and each network's requestor.
- :mod:`.attach`: :class:`ExeUnit` (``attach``, ``detach``, ``attachments``) and the
  :class:`Attachment` record; every node daemon has one (``DaemonBackend.exeunit``).
- :mod:`.netns`: the iproute2 steps of a TUN attachment (namespace, device, addresses, routes).
- :mod:`.api`: the daemon's HTTP API for it, ``/golem-vpn/v1/attachments``, served next to the
  Net API with the same app keys; :mod:`.client` is its async client.

``golem-vpn attach``, ``detach``, ``attachments`` and ``run`` (:mod:`golem_vpn.exeunitcli`)
call that API.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from golem_vpn.exeunit.attach import (
        AttachedNetwork,
        Attachment,
        Counters,
        ExeUnit,
    )
    from golem_vpn.exeunit.client import AttachClient
    from golem_vpn.exeunit.deploy import Deploy, default_requestor, parse_deploy
    from golem_vpn.exeunit.options import (
        DEFAULT_IFNAME,
        DEFAULT_MTU,
        DEFAULT_VM_ENDPOINT,
        MODES,
        Mode,
    )

# Loaded on first use: the CLI reads the option defaults without the datapath or aiohttp.
_LAZY = {
    **dict.fromkeys(
        ("AttachedNetwork", "Attachment", "Counters", "ExeUnit"), "golem_vpn.exeunit.attach"
    ),
    "AttachClient": "golem_vpn.exeunit.client",
    **dict.fromkeys(("Deploy", "default_requestor", "parse_deploy"), "golem_vpn.exeunit.deploy"),
    **dict.fromkeys(
        ("DEFAULT_IFNAME", "DEFAULT_MTU", "DEFAULT_VM_ENDPOINT", "MODES", "Mode"),
        "golem_vpn.exeunit.options",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'golem_vpn.exeunit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_IFNAME",
    "DEFAULT_MTU",
    "DEFAULT_VM_ENDPOINT",
    "MODES",
    "AttachClient",
    "AttachedNetwork",
    "Attachment",
    "Counters",
    "Deploy",
    "ExeUnit",
    "Mode",
    "default_requestor",
    "parse_deploy",
]
