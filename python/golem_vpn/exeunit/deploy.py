"""A whole ExeUnit DEPLOY body: its networks, its ``hosts``, and whose word each network follows.

This sits on :mod:`golem_vpn.model` (which parses one ``net`` entry strictly) and under the
attachments (:mod:`golem_vpn.exeunit.attach`): :func:`parse_deploy` reads what a requestor sends
in DEPLOY, either the deploy arguments (``{"net": [...], "hosts": {...}}``) or the exe-script
command (``{"deploy": {...}}``), and :func:`default_requestor` picks the node whose control
messages a network follows when nobody says which.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from golem_vpn.errors import AddressError, DeployConfigError
from golem_vpn.model import DeployNetwork, IPAddress, _JsonObject, parse_deploy_net, parse_ip

__all__ = ["Deploy", "default_requestor", "parse_deploy"]

# A host name as /etc/hosts takes it: labels of letters, digits, '-' and '_', dot-separated.
_HOSTNAME_RE = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Deploy:
    """The parts of a DEPLOY command that attach a payload to its networks.

    Attributes:
        networks: The ``net`` entries, validated (ids unique, no overlapping ranges).
        hosts: ``{hostname: address}`` from DEPLOY ``hosts``, for the payload's ``/etc/hosts``.
        hostname: DEPLOY ``hostname``, if given.
    """

    networks: tuple[DeployNetwork, ...]
    hosts: Mapping[str, IPAddress] = field(default_factory=dict)
    hostname: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The DEPLOY arguments in yagna's JSON shape."""
        obj: dict[str, Any] = {
            "net": [net.to_json() for net in self.networks],
            "hosts": {name: str(ip) for name, ip in self.hosts.items()},
        }
        if self.hostname is not None:
            obj["hostname"] = self.hostname
        return obj


def parse_deploy(obj: object, *, require_net: bool = True) -> Deploy:
    """Parse a DEPLOY body: deploy arguments, the exe-script command, or JSON text of either.

    ``{"deploy": {...}}`` (an exe-script command) is unwrapped; the arguments' ``net`` is read by
    :func:`golem_vpn.model.parse_deploy_net`; ``hosts`` maps host names to addresses (each
    checked); ``hostname`` must be a host name; other keys (``volumes``, ``env``, ``progress``)
    are ignored.

    Args:
        obj: The DEPLOY body.
        require_net: Reject a DEPLOY without networks (there is nothing to attach).

    Raises:
        DeployConfigError: The body is malformed; the message names the field
            (``deploy.net[0].nodeIp``, ``hosts['db']``).
    """
    if isinstance(obj, str | bytes | bytearray):
        try:
            # Repeated keys are rejected, as parse_deploy_net does for text.
            obj = json.loads(obj, object_pairs_hook=_JsonObject.from_pairs)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise DeployConfigError(f"not valid JSON: {exc}") from exc
    prefix = ""
    if isinstance(obj, _JsonObject) and obj.duplicates:
        raise DeployConfigError(f"duplicate key {_show(obj.duplicates[0])}")
    if isinstance(obj, dict) and "deploy" in obj and "net" not in obj:
        obj, prefix = obj["deploy"], "deploy."
    if not isinstance(obj, dict):
        where = prefix.rstrip(".") or "DEPLOY"
        raise DeployConfigError(
            f"{where}: expected an object with 'net' (the deploy arguments) "
            f"or 'deploy' (an exe-script command), got {_show(obj)}"
        )
    try:
        networks = parse_deploy_net(obj)
    except DeployConfigError as exc:
        raise DeployConfigError(f"{prefix}{exc}") from exc
    if require_net and not networks:
        raise DeployConfigError(f"{prefix}net: no networks to attach (missing or empty)")
    hosts = _parse_hosts(obj.get("hosts"), prefix)
    hostname = obj.get("hostname")
    if hostname is not None and not (
        isinstance(hostname, str) and _HOSTNAME_RE.fullmatch(hostname)
    ):
        raise DeployConfigError(f"{prefix}hostname: {_show(hostname)} is not a host name")
    return Deploy(tuple(networks), hosts, hostname)


def _parse_hosts(value: object, prefix: str) -> dict[str, IPAddress]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeployConfigError(f"{prefix}hosts: expected an object, got {_show(value)}")
    hosts: dict[str, IPAddress] = {}
    for name, ip in value.items():
        where = f"{prefix}hosts[{_show(name)}]"
        if not isinstance(name, str) or not _HOSTNAME_RE.fullmatch(name):
            raise DeployConfigError(f"{where}: {_show(name)} is not a host name")
        try:
            hosts[name] = parse_ip(ip)
        except AddressError as exc:
            raise DeployConfigError(f"{where}: {exc}") from exc
    return hosts


def default_requestor(net: DeployNetwork, *, path: str = "net") -> str:
    """The node a network's control messages come from, when nobody named it.

    That is the node holding the network's gateway address in ``nodes``, else the node at the
    network's first host address (where a requestor's daemon puts itself).

    Args:
        net: The network's DEPLOY entry.
        path: How error messages name the entry (``net[1]``).

    Raises:
        DeployConfigError: No node holds either address; the message says to name the
            requestor.
    """
    if net.gateway is not None and (node := net.nodes.get(net.gateway)) is not None:
        return node
    first = cast(IPAddress, next(iter(net.network.hosts()), net.network.network_address))
    if (node := net.nodes.get(first)) is not None:
        return node
    where = f"the gateway {net.gateway} or " if net.gateway is not None else ""
    raise DeployConfigError(
        f"{path}.nodes: no node holds {where}the first host {first}, so the requestor of "
        f"network {net.id} is unknown; name it (--requestor NODE_ID, or 'requestor')"
    )
