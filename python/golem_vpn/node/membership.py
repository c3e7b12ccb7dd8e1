"""Network membership over the wire: the requestor's coordinator and the providers' members.

This is the glue between the reliable control channel (:mod:`golem_vpn.node.control`) and
the node transport (:mod:`golem_vpn.node.transport`):

- :class:`ControlPlane` runs one :class:`~golem_vpn.node.control.ControlChannel` per peer
  over a :class:`~golem_vpn.node.transport.UdpTransport`: it sends each channel's frames as
  tunnel control payloads, feeds arriving ones back, and keeps the channels' timers.
- :class:`Coordinator` (requestor side) owns networks: adding a node tells every node already
  in the network (``AddNodes``) and gives the newcomer the full membership (``Snapshot``);
  removing one tells the rest (``RemoveNodes``) and the removed node (``RemoveNetwork``).
- :class:`Member` (provider side) joins a network from its DEPLOY config and applies what the
  network's requestor (and only it) says, adding and removing peers in its transport.

Delivery is exactly-once and in order per network, so a provider added right after another
learns about it without any refresh call (yapapi issue 664 cannot happen), and a removed
node's packets are dropped by every node as soon as the removal arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from ipaddress import ip_network

from golem_vpn.errors import ControlMessageError, GolemVpnError, NetworkNotFound
from golem_vpn.interface import Interface
from golem_vpn.model import DeployNetwork
from golem_vpn.node.control import (
    AddNodes,
    ControlChannel,
    ControlMessage,
    Membership,
    NetworkRemoved,
    NodeAdded,
    NodeRemoved,
    RemoveNetwork,
    RemoveNodes,
    Snapshot,
)
from golem_vpn.node.transport import UdpTransport

__all__ = ["ControlPlane", "Coordinator", "Member"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, ControlMessage], None]
#: Seconds after joining at which a provider announces itself to the requestor again.
ANNOUNCE_RETRIES = (1.0, 3.0)


class ControlPlane:
    """Reliable control messages between this node and its peers, over a UdpTransport."""

    def __init__(self, transport: UdpTransport) -> None:
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._channels: dict[str, ControlChannel] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._announcing: list[asyncio.TimerHandle] = []
        self.on_message: MessageHandler | None = None
        self.on_peer_restart: Callable[[str], None] | None = None
        self.malformed = 0
        transport.on_control = self._on_frame

    def channel(self, peer_id: str) -> ControlChannel:
        """The channel to ``peer_id`` (made on first use)."""
        channel = self._channels.get(peer_id)
        if channel is None:
            channel = self._channels[peer_id] = ControlChannel(peer_id)
        return channel

    def send(self, peer_id: str, message: ControlMessage) -> None:
        """Queues ``message`` for ``peer_id``; it arrives exactly once, in order."""
        self.channel(peer_id).send(message, self._loop.time())
        self._flush(peer_id)

    def announce(self, peer_id: str, network_id: str) -> None:
        """Tells ``peer_id`` this node's control epoch (see
        :meth:`~golem_vpn.node.control.ControlChannel.announce`): a requestor that knew an
        earlier instance of this node resyncs it. Sent now and again after
        :data:`ANNOUNCE_RETRIES` seconds (it is one unacknowledged datagram; a repeat changes
        nothing)."""
        now = self._loop.time()
        self._announcing = [h for h in self._announcing if h.when() > now]  # done ones
        self._announce(peer_id, network_id)
        for delay in ANNOUNCE_RETRIES:
            handle = self._loop.call_later(delay, self._announce, peer_id, network_id)
            self._announcing.append(handle)

    def _announce(self, peer_id: str, network_id: str) -> None:
        self.channel(peer_id).announce(network_id, self._loop.time())
        self._flush(peer_id)

    def forget(self, peer_id: str) -> None:
        """Drops the channel to a peer that shares no network with us any more."""
        self._channels.pop(peer_id, None)

    def _on_frame(self, sender: str, _network_id: str, frame: bytes) -> None:
        channel = self.channel(sender)
        try:
            messages = channel.receive(frame, self._loop.time())
        except ControlMessageError as exc:
            self.malformed += 1
            log.debug("malformed control frame from %s: %s", sender, exc)
            return
        if channel.take_peer_restarted() and self.on_peer_restart is not None:
            self.on_peer_restart(sender)
        if self.on_message is not None:
            for message in messages:
                self.on_message(sender, message)
        self._flush(sender)

    def _flush(self, peer_id: str) -> None:
        channel = self._channels.get(peer_id)
        if channel is None:
            return
        for frame in channel.poll_transmit(self._loop.time()):
            try:
                self._transport.send_control(peer_id, "", frame)
            except GolemVpnError as exc:
                # Not (or no longer) a peer: the channel retransmits if it becomes one.
                log.debug("control frame to %s not sent: %s", peer_id, exc)
                break
        self._arm(channel)

    def _arm(self, channel: ControlChannel) -> None:
        """Makes the timer fire no later than ``channel``'s next deadline.

        Only this channel's deadline can have moved (the others' are covered by the timer
        already, which flushes every channel when it fires and re-arms from each), so one
        send costs O(1), not O(peers): a requestor adding the n-th node to a network sends
        to n - 1 peers, and scanning every channel on each send made the n-th add O(n²).
        """
        at = channel.poll_at()
        if at is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        for peer_id in list(self._channels):
            self._flush(peer_id)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for handle in self._announcing:
            handle.cancel()
        self._transport.on_control = None


class Coordinator:
    """The requestor's side: creates networks and tells their nodes who is in them."""

    def __init__(self, transport: UdpTransport, plane: ControlPlane) -> None:
        self._transport = transport
        self._plane = plane
        self._networks: dict[str, dict[str, str]] = {}  # network -> {ip: node id}
        # node id -> the networks it is in (this node's own id never): which networks to
        # resync, and when its channel can go, without looking through every network.
        self._peer_networks: dict[str, set[str]] = {}
        plane.on_peer_restart = self._resync

    def create(self, network_id: str, cidr: str, ip: str, **stack_options: object) -> Interface:
        """Creates a network with this node at ``ip``; returns its interface."""
        interface = self._transport.join(network_id, cidr, ip, **stack_options)
        self._networks[network_id] = {str(ip): self._transport.node_id}
        return interface

    def nodes(self, network_id: str) -> dict[str, str]:
        """``{ip: node id}`` of a network, the requestor included."""
        if network_id not in self._networks:
            raise NetworkNotFound(f"network {network_id!r} does not exist")
        return dict(self._networks[network_id])

    def add_node(
        self, network_id: str, node_id: str, ip: str, addr: tuple[str, int] | None = None
    ) -> None:
        """Adds a node: the others learn about it, it learns about all of them."""
        nodes = self._networks.get(network_id)
        if nodes is None:
            raise NetworkNotFound(f"network {network_id!r} does not exist")
        self._transport.add_peer(network_id, node_id, ip, addr)
        for other in set(nodes.values()) - {self._transport.node_id, node_id}:
            self._plane.send(other, AddNodes(network_id, {ip: node_id}))
        nodes[str(ip)] = node_id
        if node_id != self._transport.node_id:
            self._peer_networks.setdefault(node_id, set()).add(network_id)
        self._plane.send(node_id, Snapshot(network_id, nodes))

    def readdress(self, network_id: str, node_id: str, ip: str) -> None:
        """Moves a node to a new address: every node (the moved one included) is sent the
        network's new membership and readdresses it in place, sessions kept."""
        nodes = self._networks.get(network_id)
        if nodes is None:
            raise NetworkNotFound(f"network {network_id!r} does not exist")
        self._transport.readdress(network_id, node_id, [ip])
        for old in [old for old, n in nodes.items() if n == node_id]:
            del nodes[old]
        nodes[str(ip)] = node_id
        for other in set(nodes.values()) - {self._transport.node_id}:
            self._plane.send(other, Snapshot(network_id, nodes))

    def remove_node(self, network_id: str, node_id: str) -> None:
        """Removes a node: everyone drops its packets; it is told the network is gone."""
        nodes = self._networks.get(network_id)
        if nodes is None:
            raise NetworkNotFound(f"network {network_id!r} does not exist")
        for ip in [ip for ip, n in nodes.items() if n == node_id]:
            del nodes[ip]
        # A courtesy to the removed node, sent while it is still a peer; it is cut off
        # below whether or not this arrives.
        self._plane.send(node_id, RemoveNetwork(network_id))
        self._transport.remove_peer(network_id, node_id)
        self._release(node_id, network_id)
        for other in set(nodes.values()) - {self._transport.node_id}:
            self._plane.send(other, RemoveNodes(network_id, (node_id,)))

    def remove_network(self, network_id: str) -> None:
        """Removes the network everywhere."""
        nodes = self._networks.pop(network_id, None)
        if nodes is None:
            raise NetworkNotFound(f"network {network_id!r} does not exist")
        others = set(nodes.values()) - {self._transport.node_id}
        for other in others:
            self._plane.send(other, RemoveNetwork(network_id))
        self._transport.leave(network_id)
        for other in others:
            self._release(other, network_id)

    def _release(self, node_id: str, network_id: str) -> None:
        """``node_id`` left ``network_id``: if it shares no other network with this node,
        its channel goes. The transport has cut it off by then, so what the channel still
        holds (the RemoveNetwork, sent once) could never be resent nor acknowledged: kept, it
        was resent into the void forever, with every provider a daemon ever had."""
        networks = self._peer_networks.get(node_id)
        if networks is None:
            return
        networks.discard(network_id)
        if not networks:
            del self._peer_networks[node_id]
            self._plane.forget(node_id)

    def _resync(self, peer_id: str) -> None:
        for network_id in sorted(self._peer_networks.get(peer_id, ())):
            self._plane.send(peer_id, Snapshot(network_id, self._networks[network_id]))


class Member:
    """A provider's side: joins networks from DEPLOY and follows their requestors."""

    def __init__(self, transport: UdpTransport, plane: ControlPlane) -> None:
        self._transport = transport
        self._plane = plane
        self._membership = Membership()
        self._requestors: dict[str, str] = {}  # network -> the requestor's node id
        self.ignored = 0
        #: Called with ``(network_id, old_ips, new_ips)`` when the requestor moves this node
        #: to new addresses (after the router took them), so the attachment follows.
        self.on_readdress: Callable[[str, list[str], list[str]], None] | None = None
        plane.on_message = self._on_message

    def join(
        self, net: DeployNetwork, requestor_id: str, requestor_addr: tuple[str, int] | None = None
    ) -> Interface:
        """Joins the network a DEPLOY command describes, as ``net.node_ip``.

        Args:
            net: The parsed DEPLOY ``net`` entry (see :func:`golem_vpn.model.parse_deploy_net`).
            requestor_id: The node whose control messages this network follows (the
                requestor that made the agreement); others are ignored.
            requestor_addr: The requestor's UDP address, if known (else the relay finds it).
        """
        cidr = str(ip_network(net.network))
        interface = self._transport.join(net.id, cidr, str(net.node_ip))
        self._follow(net, requestor_id, requestor_addr)
        return interface

    def join_native(
        self,
        net: DeployNetwork,
        requestor_id: str,
        requestor_addr: tuple[str, int] | None = None,
        *,
        ethernet: bool = False,
    ) -> None:
        """Joins a network for a native attachment (a TUN device or a VM frame endpoint).

        As :meth:`join`, but the network gets only its router: its packets go to the native
        attachment the caller makes next (``UdpTransport.attach_tun`` / ``attach_vm``).

        Args:
            net: The parsed DEPLOY ``net`` entry.
            requestor_id: The node whose control messages this network follows.
            requestor_addr: The requestor's UDP address, if known.
            ethernet: Ethernet frames (a VM) rather than IP packets (a TUN device).
        """
        cidr = str(ip_network(net.network))
        self._transport.join_native(
            net.id, cidr, str(net.node_ip), ethernet=ethernet, requestor=requestor_id
        )
        self._follow(net, requestor_id, requestor_addr)

    def leave(self, network_id: str) -> None:
        """Leaves a joined network: the transport drops it, its requestor is no longer heard.

        Raises:
            NetworkNotFound: The network is not joined (or its requestor removed it already;
                the membership is forgotten all the same).
        """
        self._requestors.pop(network_id, None)
        self._membership.apply(RemoveNetwork(network_id))
        self._transport.leave(network_id)

    def _follow(
        self, net: DeployNetwork, requestor_id: str, requestor_addr: tuple[str, int] | None
    ) -> None:
        self._requestors[net.id] = requestor_id
        for ip, node_id in net.nodes.items():
            if node_id != self._transport.node_id:
                addr = requestor_addr if node_id == requestor_id else None
                self._transport.add_peer(net.id, node_id, str(ip), addr)
        self._membership.apply(
            Snapshot(net.id, {str(ip): node_id for ip, node_id in net.nodes.items()})
        )
        # A restarted daemon's DEPLOY may predate nodes added since: the requestor, seeing
        # this instance's epoch, sends the network's current membership.
        self._plane.announce(requestor_id, net.id)

    def nodes(self, network_id: str) -> dict[str, str]:
        """``{ip: node id}`` of a joined network as this node knows it."""
        return self._membership.nodes(network_id)

    def _on_message(self, sender: str, message: ControlMessage) -> None:
        network_id = message.network_id
        if self._requestors.get(network_id) != sender:
            self.ignored += 1  # only the network's requestor speaks for it
            return
        me = self._transport.node_id
        changes = self._membership.apply(message)
        # A node removed and added by one message moved: readdress it in place, so its
        # session (and this node's, if it is the one that moved) survives.
        removed: dict[str, list[str]] = {}
        added: dict[str, list[str]] = {}
        for change in changes:
            if isinstance(change, NodeRemoved):
                removed.setdefault(change.node_id, []).append(change.ip)
            elif isinstance(change, NodeAdded):
                added.setdefault(change.node_id, []).append(change.ip)
        moved = set(removed) & set(added)
        for node_id in moved:
            ips = [ip for ip, n in self._membership.nodes(network_id).items() if n == node_id]
            try:
                self._transport.readdress(network_id, node_id, ips)
            except GolemVpnError as exc:
                log.warning("cannot move %s to %s in %s: %s", node_id, ips, network_id, exc)
                continue
            if node_id == me and self.on_readdress is not None:
                self.on_readdress(network_id, removed[node_id], added[node_id])
        for change in changes:
            if isinstance(change, NodeAdded | NodeRemoved) and change.node_id in moved:
                continue
            if isinstance(change, NodeAdded) and change.node_id != me:
                self._transport.add_peer(network_id, change.node_id, change.ip)
            elif isinstance(change, NodeRemoved) and change.node_id != me:
                self._transport.remove_peer(network_id, change.node_id)
            elif isinstance(change, NetworkRemoved):
                self._requestors.pop(network_id, None)
                with contextlib.suppress(NetworkNotFound):
                    self._transport.leave(network_id)
