//! The node transport's I/O engine: one UDP socket, the tunnel endpoint, and the routers
//! of every network the node is in.
//!
//! This is the thin shell around the sans-IO cores. Packets a local attachment sends are
//! routed ([`Router::inject`]), sealed for each destination node, in place in the buffer
//! they were read into ([`SealPlan`], [`frames`]), and sent, without touching Python per
//! packet. Datagrams that arrive are decrypted where they were read
//! ([`Endpoint::receive_in_place`]), checked by the network's router
//! ([`Router::receive`]: the authenticated node must own the source address) and handed
//! back in batches, grouped by network. The socket is non-blocking: a caller's event loop
//! says when it is readable and when the endpoint's timers are due.
//!
//! With a relay configured ([`UdpNode::set_relay`]) the node registers with it (signed)
//! and reaches peers it has no direct address for through it: such a peer gets a
//! placeholder address in the discard-only prefix `100::/64` (RFC 6666), which the tunnel
//! treats like any other; datagrams to it go to the relay wrapped in a forward header, and
//! datagrams the relay forwards from it are fed to the tunnel as coming from it. A peer
//! whose direct address stops answering handshakes falls back to the relay path.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;

use crate::identity::Identity;
use crate::node_id::NodeId;
use crate::relay;
use crate::router::{Frame, Router};
use crate::tunnel::{
    Config, Delivery, DownReason, Endpoint, Event, OpenTicket, Payload, PayloadKind, SendError,
    TunnelStats,
};

pub mod attach;
pub mod frames;
mod mmsg;
pub mod offload;
mod relay_shell;
mod seal;
mod sys;
pub mod worker;

pub use attach::{AttachError, Attachment, AttachmentKind, AttachmentStats, TunWriter};
pub use frames::Frames;
pub use relay_shell::UdpRelay;
pub use seal::{SealPlan, Sealed};
pub use worker::{MAX_TUN_QUEUES, State, Worker, WorkerError, default_tun_queues};

/// Socket buffer size asked for in each direction (the kernel may grant less: on Linux,
/// up to `net.core.rmem_max` / `wmem_max`). Bursts of a large TCP window must fit, or the
/// kernel drops datagrams and TCP inside the tunnel pays a retransmission timeout.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// What one tunnelled packet costs on the underlay in the worst case: an IPv6 (40) and
/// UDP (8) header, the relay's forwarding header (21) and the data message's overhead with
/// a yagna-style 32-character network id (63; see [`crate::tunnel::data_overhead`]).
pub const MAX_UNDERLAY_OVERHEAD: usize =
    40 + 8 + relay::FORWARD_HEADER + crate::tunnel::data_overhead(32);

/// The default MTU of a TUN attachment (1368): the largest packet that crosses a
/// 1500-byte underlay in one datagram on every path (IPv4 or IPv6, direct or relayed), so
/// the tunnel never fragments. A direct IPv4 path would fit 1409; the few percent are
/// the price of never depending on IP fragments (which firewalls and NATs drop).
pub const DEFAULT_TUN_MTU: usize = 1500 - MAX_UNDERLAY_OVERHEAD;

/// The largest UDP datagram read.
const MAX_DATAGRAM: usize = 65535;

/// What arrived in one [`UdpNode::receive`] call.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Frames for local attachments: `(network id, frame)`, in arrival order.
    pub frames: Vec<(String, Vec<u8>)>,
    /// Control messages: `(sender, network id, message)`.
    pub control: Vec<(NodeId, String, Vec<u8>)>,
    /// Peers that came up or went down.
    pub events: Vec<Event>,
}

/// Where [`UdpNode::receive`] and [`UdpNode::handle_timeout`] hand what arrived: the
/// datapath thread writes frames of attached networks straight to their device (no copy,
/// no allocation per packet) and queues the rest for Python; [`Inbound`] keeps it all.
pub trait Sink {
    /// A frame for a local attachment of `network`.
    fn frame(&mut self, network: &str, frame: Frame<'_>);
    /// A control message from `from` about `network`.
    fn control(&mut self, from: NodeId, network: &str, message: &[u8]);
    /// A peer came up or went down.
    fn event(&mut self, event: Event);
}

impl Sink for Inbound {
    fn frame(&mut self, network: &str, frame: Frame<'_>) {
        self.frames.push((network.to_owned(), frame.to_vec()));
    }

    fn control(&mut self, from: NodeId, network: &str, message: &[u8]) {
        self.control
            .push((from, network.to_owned(), message.to_vec()));
    }

    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// Counters of the I/O shell (the tunnel and routers count their own drops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathStats {
    /// Datagrams read from the socket.
    pub datagrams_in: u64,
    /// Datagrams written to the socket.
    pub datagrams_out: u64,
    /// Datagrams the socket refused to send, and packets handed to
    /// [`UdpNode::send_packets`] longer than any packet can be (counted, not raised).
    pub send_errors: u64,
    /// Packets that arrived for a network this node is not in.
    pub unknown_network: u64,
    /// Packets the router refused (spoofed source, not for us, ...).
    pub router_drops: u64,
    /// Datagrams sent through the relay.
    pub relayed_out: u64,
    /// Datagrams that came through the relay.
    pub relayed_in: u64,
    /// Relay messages from anyone but the configured relay, or malformed (dropped).
    pub relay_drops: u64,
    /// Forwards the relay could not deliver (the peer is not registered).
    pub relay_unknown_peer: u64,
    /// Registrations sent early because the relay said it had none for us (it restarted).
    pub relay_register_again: u64,
    /// Placeholder addresses of relayed senders this node shares no network with,
    /// forgotten to keep at most [`MAX_RELAYED_STRANGERS`] (anyone can register node ids
    /// at a relay and have it forward their datagrams here).
    pub relay_strangers_evicted: u64,
    /// Probes sent while punching holes.
    pub probes_sent: u64,
    /// Peers moved from the relay to a direct path by a probe ack.
    pub punched: u64,
}

/// The most relayed senders that share no network with this node (their handshakes are
/// refused, but each forwarded datagram names its sender) whose placeholder addresses are
/// kept; beyond, the oldest are forgotten.
pub const MAX_RELAYED_STRANGERS: usize = 256;

/// A hole-punching attempt toward one peer.
struct Punch {
    addr: SocketAddr,
    nonce: u64,
    tries: u8,
    next: Instant,
}

/// Probes per attempt, and the gap between them.
const PROBES: u8 = 8;
const PROBE_GAP: std::time::Duration = std::time::Duration::from_millis(200);
/// How often a relayed peer is looked up again (a new chance to go direct).
const LOOKUP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How soon a lookup of a peer the relay did not know yet is repeated.
const UNKNOWN_PEER_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
/// The first byte of a tunnel handshake initiation (`tunnel::wire`'s `HANDSHAKE_INIT`).
const TUNNEL_HANDSHAKE_INIT: u8 = 1;
/// The least time between registrations a relay's register-again brings on (a burst of
/// forwards to a restarted relay gets as many answers).
const REGISTER_AGAIN_GAP: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The socket could not be bound or configured.
    #[error("UDP socket: {0}")]
    Io(#[from] io::Error),
    /// The tunnel endpoint could not start.
    #[error(transparent)]
    Endpoint(#[from] crate::tunnel::EndpointError),
    /// No such network on this node.
    #[error("network {0:?} is not on this node")]
    UnknownNetwork(String),
    /// A payload could not be sent to a peer.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The router refused a table change.
    #[error(transparent)]
    Router(#[from] crate::router::RouterError),
}

/// One node's UDP transport. See the module docs.
pub struct UdpNode {
    socket: UdpSocket,
    /// Receiving lanes asked for at bind time (1: the socket alone).
    lanes: usize,
    endpoint: Endpoint,
    identity: Identity,
    networks: FxHashMap<String, Router>,
    rx: Vec<u8>,
    /// Receive buffers for one `recvmmsg` (allocated lazily, zero pages until used).
    rx_batch: Vec<Vec<u8>>,
    rx_got: Vec<mmsg::Received>,
    plaintext: Vec<u8>,
    /// [`send_packets`](Self::send_packets)' batch and plan (kept: no allocation per call).
    tx_frames: Frames,
    tx_plan: SealPlan,
    wrapped: Vec<u8>,
    stats: DatapathStats,
    /// The relay in use: the first configured one that answered a registration lately
    /// (the first configured one until any answers).
    relay: Option<SocketAddr>,
    /// Every configured relay, in order of preference, with its last registration answer.
    relays: Vec<(SocketAddr, Option<Instant>)>,
    next_register: Option<Instant>,
    /// When the last registration was sent.
    registered_at: Option<Instant>,
    public_addr: Option<SocketAddr>,
    /// Placeholder address → the peer reached through the relay.
    relayed: FxHashMap<SocketAddr, NodeId>,
    /// Peer → its placeholder address.
    relay_path: FxHashMap<NodeId, SocketAddr>,
    /// The number of the last placeholder address handed out (never reused).
    last_placeholder: u64,
    /// Relayed senders that were in no network of ours when first heard, oldest first.
    strangers: std::collections::VecDeque<NodeId>,
    /// The relay dropped a forward of ours for want of a registration: restart relayed
    /// handshakes once it confirms the next one.
    forwards_lost: bool,
    /// Relayed peers to look up at the relay, and when.
    lookups: FxHashMap<NodeId, Instant>,
    /// Hole-punching attempts under way.
    punches: FxHashMap<NodeId, Punch>,
    /// Peers whose direct path a probe ack proved: late relayed datagrams from them must
    /// not roam the tunnel back to the relay.
    punched: FxHashMap<NodeId, SocketAddr>,
    /// Punched peers heard through the relay during the current receive batch.
    keep_direct: Vec<NodeId>,
    hole_punching: bool,
}

impl std::fmt::Debug for UdpNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpNode")
            .field("node_id", &self.endpoint.node_id())
            .field("local_addr", &self.socket.local_addr().ok())
            .field("networks", &self.networks.len())
            .finish()
    }
}

impl UdpNode {
    /// Binds a non-blocking UDP socket at `addr` for the node `identity`.
    pub fn bind(
        identity: &Identity,
        addr: SocketAddr,
        config: Config,
        seed: u64,
    ) -> Result<Self, DatapathError> {
        Self::bind_lanes(identity, addr, config, seed, 1)
    }

    /// [`UdpNode::bind`] for a node that receives on `lanes` sockets (1 to
    /// [`crate::tunnel::LANES`]): the socket is made the first of a `SO_REUSEPORT` group
    /// that [`UdpNode::open_lanes`] fills.
    pub fn bind_lanes(
        identity: &Identity,
        addr: SocketAddr,
        config: Config,
        seed: u64,
        lanes: usize,
    ) -> Result<Self, DatapathError> {
        let lanes = lanes.clamp(1, crate::tunnel::LANES);
        let socket = bind_udp_with(addr, lanes > 1)?;
        // Best effort: without it each datagram is one read, as before.
        mmsg::enable_gro(&socket);
        Ok(UdpNode {
            socket,
            lanes,
            endpoint: Endpoint::new(identity, config, seed)?,
            identity: identity.clone(),
            networks: FxHashMap::default(),
            rx: vec![0u8; MAX_DATAGRAM],
            rx_batch: (0..mmsg::BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            rx_got: Vec::with_capacity(mmsg::BATCH),
            plaintext: Vec::with_capacity(MAX_DATAGRAM),
            tx_frames: Frames::default(),
            tx_plan: SealPlan::default(),
            wrapped: Vec::with_capacity(MAX_DATAGRAM),
            stats: DatapathStats::default(),
            relay: None,
            relays: Vec::new(),
            next_register: None,
            registered_at: None,
            public_addr: None,
            relayed: FxHashMap::default(),
            relay_path: FxHashMap::default(),
            last_placeholder: 0,
            strangers: std::collections::VecDeque::new(),
            forwards_lost: false,
            lookups: FxHashMap::default(),
            punches: FxHashMap::default(),
            punched: FxHashMap::default(),
            keep_direct: Vec::new(),
            hole_punching: true,
        })
    }

    /// Whether relayed peers are looked up and probed for a direct path (default: yes).
    pub fn set_hole_punching(&mut self, enabled: bool) {
        self.hole_punching = enabled;
        if !enabled {
            self.lookups.clear();
            self.punches.clear();
        }
    }

    /// Uses `relay` (None: none) to reach peers without a direct address; registers at
    /// once and every [`relay::REGISTER_INTERVAL`] after.
    pub fn set_relay(&mut self, relay: Option<SocketAddr>, now: Instant) {
        self.set_relays(relay.into_iter().collect(), now);
    }

    /// Uses several relays, in order of preference: the node registers with all of them
    /// and sends through the first that answered a registration within the last two
    /// registration intervals, so a relay that goes away is replaced by the next one.
    pub fn set_relays(&mut self, relays: Vec<SocketAddr>, now: Instant) {
        self.relays = relays.into_iter().map(|r| (r, None)).collect();
        self.relay = self.relays.first().map(|r| r.0);
        self.public_addr = None;
        self.next_register = self.relay.map(|_| now);
        self.register_if_due(now);
    }

    /// The relay in use.
    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    /// Every configured relay.
    pub fn relays(&self) -> Vec<SocketAddr> {
        self.relays.iter().map(|r| r.0).collect()
    }

    /// Picks the relay in use: the first that answered lately, else the first configured.
    fn choose_relay(&mut self, now: Instant) {
        let fresh = |answered: Option<Instant>| {
            answered
                .is_some_and(|t| now.saturating_duration_since(t) < 2 * relay::REGISTER_INTERVAL)
        };
        let chosen = self
            .relays
            .iter()
            .find(|r| fresh(r.1))
            .or(self.relays.first())
            .map(|r| r.0);
        if chosen != self.relay {
            // Relayed peers keep their placeholder addresses: they now go through `chosen`.
            // Handshakes that went to the old relay will not be answered: start them over.
            self.relay = chosen;
            self.restart_relayed_handshakes(now);
        }
    }

    /// Starts over the handshakes with relayed peers that are not up: what went to the
    /// relay so far was not (or will not be) forwarded.
    fn restart_relayed_handshakes(&mut self, now: Instant) {
        let waiting: Vec<NodeId> = self
            .relay_path
            .keys()
            .filter(|n| self.is_relayed(n) && !self.endpoint.is_up(n))
            .copied()
            .collect();
        for node in waiting {
            self.endpoint.reconnect(node, now);
        }
    }

    /// Our address as the relay sees it (after NAT), once it has answered.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public_addr
    }

    /// True if `node` is currently reached through the relay.
    pub fn is_relayed(&self, node: &NodeId) -> bool {
        self.relay_path
            .get(node)
            .is_some_and(|fake| self.endpoint.peer_address(node) == Some(*fake))
    }

    fn register_if_due(&mut self, now: Instant) {
        let Some(due) = self.next_register else {
            return;
        };
        if now < due || self.relays.is_empty() {
            return;
        }
        self.choose_relay(now);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let msg = relay::register_message(&self.identity, unix);
        for &(relay, _) in &self.relays {
            match self.socket.send_to(&msg, relay) {
                Ok(_) => self.stats.datagrams_out += 1,
                Err(_) => self.stats.send_errors += 1,
            }
        }
        // Sooner while a peer depends on the relay: a relay that restarted is found out
        // within that interval even if nothing is sent to it meanwhile.
        let relayed = self.relay_path.keys().any(|n| self.is_relayed(n));
        let interval = if relayed {
            relay::RELAYED_REGISTER_INTERVAL
        } else {
            relay::REGISTER_INTERVAL
        };
        self.registered_at = Some(now);
        self.next_register = Some(now + interval);
    }

    /// A peer now goes through the relay: the next registration is due within
    /// [`relay::RELAYED_REGISTER_INTERVAL`] of the last.
    fn relayed_register_soon(&mut self) {
        if let (Some(at), Some(next)) = (self.registered_at, self.next_register) {
            self.next_register = Some(next.min(at + relay::RELAYED_REGISTER_INTERVAL));
        }
    }

    /// The placeholder address of a relayed peer (made on first use).
    fn relay_address(&mut self, node: NodeId) -> SocketAddr {
        let n = self.last_placeholder + 1;
        let fake = *self.relay_path.entry(node).or_insert_with(|| {
            let fake = SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(
                    0x100,
                    0,
                    0,
                    0,
                    (n >> 48) as u16,
                    (n >> 32) as u16,
                    (n >> 16) as u16,
                    n as u16,
                )),
                0,
            );
            self.relayed.insert(fake, node);
            self.last_placeholder = n;
            fake
        });
        self.relayed_register_soon();
        fake
    }

    /// Notes a relayed sender heard for the first time: one that is in no network of ours
    /// joins the strangers, and the oldest strangers beyond [`MAX_RELAYED_STRANGERS`] that
    /// are still strangers (no network, no session) lose their placeholder addresses.
    fn note_relayed_sender(&mut self, node: NodeId) {
        if self.relay_path.contains_key(&node) || self.knows(&node) {
            return;
        }
        self.strangers.push_back(node);
        while self.strangers.len() > MAX_RELAYED_STRANGERS {
            let Some(old) = self.strangers.pop_front() else {
                break;
            };
            if self.knows(&old) || self.endpoint.is_up(&old) {
                continue;
            }
            if let Some(fake) = self.relay_path.remove(&old) {
                self.relayed.remove(&fake);
                self.lookups.remove(&old);
                self.punches.remove(&old);
                self.stats.relay_strangers_evicted += 1;
            }
        }
    }

    /// The socket's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The socket, for an event loop to watch for readability.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.endpoint.node_id()
    }

    /// The tunnel endpoint (peers, sessions, stats).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// I/O counters.
    pub fn stats(&self) -> DatapathStats {
        self.stats
    }

    /// Tunnel counters.
    pub fn tunnel_stats(&self) -> TunnelStats {
        self.endpoint.stats()
    }

    /// Joins a network: its router (built for this node) decides what goes where.
    /// The router's remote nodes become allowed peers.
    pub fn add_network(&mut self, router: Router) {
        let local = self.endpoint.node_id();
        let peers: Vec<NodeId> = router
            .nodes()
            .map(|(id, _)| id)
            .filter(|id| *id != local)
            .collect();
        for peer in peers {
            self.endpoint.allow(peer);
        }
        self.networks.insert(router.network_id().to_owned(), router);
    }

    /// Leaves a network; peers that share no other network with this node are cut off.
    pub fn remove_network(&mut self, network: &str) -> bool {
        let Some(router) = self.networks.remove(network) else {
            return false;
        };
        for (peer, _) in router.nodes() {
            self.forget_if_unshared(&peer);
        }
        true
    }

    /// The router of a network.
    pub fn router(&self, network: &str) -> Option<&Router> {
        self.networks.get(network)
    }

    /// Adds (or re-adds) `node` at `ip` in `network`, reachable at `addr` if known.
    pub fn add_peer(
        &mut self,
        network: &str,
        node: NodeId,
        ip: std::net::IpAddr,
        addr: Option<SocketAddr>,
    ) -> Result<bool, DatapathError> {
        let router = self
            .networks
            .get_mut(network)
            .ok_or_else(|| DatapathError::UnknownNetwork(network.to_owned()))?;
        let added = router.add_node(node, ip)?;
        if node != self.endpoint.node_id() {
            self.endpoint.allow(node);
            match addr {
                Some(addr) => self.endpoint.set_peer_address(node, addr),
                None if self.relay.is_some() && self.endpoint.peer_address(&node).is_none() => {
                    let fake = self.relay_address(node);
                    self.endpoint.set_peer_address(node, fake);
                    if self.hole_punching {
                        self.lookups.insert(node, Instant::now());
                    }
                }
                None => {}
            }
            self.endpoint.connect(node, Instant::now());
            self.flush();
        }
        Ok(added)
    }

    /// Sets where a peer is reached (its tunnel roams on its own afterwards).
    pub fn set_peer_address(&mut self, node: NodeId, addr: SocketAddr) {
        self.endpoint.set_peer_address(node, addr);
    }

    /// Removes `node` from `network`: its packets are dropped from now on; if it shares no
    /// other network with this node its session is torn down too.
    pub fn remove_peer(&mut self, network: &str, node: &NodeId) -> Result<bool, DatapathError> {
        let router = self
            .networks
            .get_mut(network)
            .ok_or_else(|| DatapathError::UnknownNetwork(network.to_owned()))?;
        let removed = router.remove_node(node)?;
        self.forget_if_unshared(node);
        Ok(removed)
    }

    /// Gives `node` (this node included) new addresses in `network`, keeping its session:
    /// packets from its old addresses are dropped as spoofed from now on.
    pub fn readdress(
        &mut self,
        network: &str,
        node: &NodeId,
        ips: &[IpAddr],
    ) -> Result<bool, DatapathError> {
        let router = self
            .networks
            .get_mut(network)
            .ok_or_else(|| DatapathError::UnknownNetwork(network.to_owned()))?;
        Ok(router.readdress(node, ips)?)
    }

    fn forget_if_unshared(&mut self, node: &NodeId) {
        if *node == self.endpoint.node_id() {
            return;
        }
        let shared = self.networks.values().any(|r| r.node_ips(node).is_some());
        if !shared {
            self.endpoint.disallow(node);
        }
    }

    /// Routes and sends packets a local attachment of `network` sent. Returns the frames
    /// the router answered locally (ARP / neighbour discovery in Ethernet mode). Each
    /// packet is copied once, into a buffer where it is sealed in place: the datapath
    /// threads' path ([`route_for_sealing`](Self::route_for_sealing), then
    /// [`SealPlan::seal_and_send`]), for packets that come from elsewhere (Python's
    /// userspace stacks, tests).
    pub fn send_packets<'p>(
        &mut self,
        network: &str,
        packets: impl IntoIterator<Item = &'p [u8]>,
        now: Instant,
    ) -> Result<Vec<Vec<u8>>, DatapathError> {
        let mut frames = std::mem::take(&mut self.tx_frames);
        let mut plan = std::mem::take(&mut self.tx_plan);
        frames.clear();
        for packet in packets {
            if !frames.push_copy(packet) {
                self.stats.send_errors += 1; // longer than any packet can be
            }
        }
        plan.clear();
        let count = frames.len();
        let batch = (0..count).map(|k| (k, frames.frame(k)));
        let answers = self.route_for_sealing(network, batch, count as u64, now, &mut plan);
        if !plan.is_empty() {
            let sealed = plan.seal_and_send(&self.socket, &mut frames);
            self.count_sealed(sealed);
        }
        self.tx_frames = frames;
        self.tx_plan = plan;
        answers
    }

    /// Sends a control message to `node` about `network`.
    pub fn send_control(
        &mut self,
        node: &NodeId,
        network: &str,
        message: &[u8],
        now: Instant,
    ) -> Result<(), DatapathError> {
        let payload = Payload {
            kind: PayloadKind::Control,
            network,
            bytes: message,
        };
        self.endpoint.send(node, payload, now)?;
        self.flush();
        Ok(())
    }

    /// Handles one datagram, `self.rx[at]`, from `from`.
    fn process_datagram(
        &mut self,
        at: Range<usize>,
        from: SocketAddr,
        now: Instant,
        sink: &mut impl Sink,
    ) {
        let Some(&kind) = self.rx.get(at.start).filter(|_| !at.is_empty()) else {
            return;
        };
        if matches!(kind, relay::PROBE | relay::PROBE_ACK) {
            self.probe_message(from, at);
            return;
        }
        let end = at.end;
        let (from, start) = if relay::is_relay_message(&self.rx[at.clone()]) {
            match self.relay_message(from, at.clone()) {
                Some((from, header)) => (from, at.start + header),
                None => return,
            }
        } else {
            (from, at.start)
        };
        let UdpNode {
            endpoint,
            networks,
            rx,
            stats,
            ..
        } = self;
        if let Some(delivery) = endpoint.receive_in_place(from, &mut rx[start..end], now) {
            hand_over(networks, stats, delivery, sink);
        }
    }

    /// Reads up to `max` datagrams (stopping early when the socket has none), with batched
    /// `recvmmsg` calls (each read a run of datagrams where the kernel does UDP GRO), and
    /// hands what they carried to `sink`. Returns the number of datagrams read.
    pub fn receive(&mut self, now: Instant, max: usize, sink: &mut impl Sink) -> usize {
        let mut read = 0;
        let mut batch = std::mem::take(&mut self.rx_batch);
        let mut got = std::mem::take(&mut self.rx_got);
        while read < max {
            got.clear();
            let want = (max - read).min(batch.len());
            match mmsg::recv_batch(&self.socket, &mut batch[..want], &mut got) {
                Ok(()) if got.is_empty() => break,
                Ok(()) => {}
                // ICMP errors surface as ECONNREFUSED and friends on Linux: not fatal.
                Err(_) => {
                    read += 1;
                    continue;
                }
            }
            read += self.process_batch(&mut batch, &got, now, sink);
            if got.len() < want {
                break;
            }
        }
        self.rx_batch = batch;
        self.rx_got = got;
        self.end_receive(sink);
        read
    }

    /// Opens and delivers what [`Lane::read`] read last, as [`UdpNode::receive`] does for
    /// the node's own socket: [`UdpNode::plan_lane`], [`Lane::open`] and
    /// [`UdpNode::finish_lane`] in a row (a receiving thread lets go of the node between
    /// them). Returns the number of datagrams.
    pub fn receive_lane(&mut self, lane: &mut Lane, now: Instant, sink: &mut impl Sink) -> usize {
        let read = self.plan_lane(lane, now, sink);
        lane.open();
        self.finish_lane(lane, now, sink);
        read
    }

    /// The first part of taking a lane's batch: handles every datagram of it but the data
    /// messages of live sessions with fresh counters, which it leaves, with a ticket each,
    /// for [`Lane::open`]. Returns the number of datagrams.
    pub fn plan_lane(&mut self, lane: &mut Lane, now: Instant, sink: &mut impl Sink) -> usize {
        let Lane {
            batch, got, jobs, ..
        } = lane;
        jobs.clear();
        let mut read = 0;
        for (i, r) in got.iter().enumerate() {
            for at in r.datagrams() {
                read += 1;
                self.stats.datagrams_in += 1;
                match self.endpoint.ticket(&batch[i][at.clone()], now) {
                    Some(ticket) => jobs.push(OpenJob {
                        buf: i,
                        at,
                        from: r.from,
                        ticket,
                        plain: None,
                    }),
                    None => {
                        std::mem::swap(&mut self.rx, &mut batch[i]);
                        self.process_datagram(at, r.from, now, sink);
                        std::mem::swap(&mut self.rx, &mut batch[i]);
                    }
                }
            }
        }
        got.clear();
        read
    }

    /// The last part: delivers what [`Lane::open`] opened (the endpoint checks again what
    /// may have changed meanwhile, and moves the replay windows), and ends the batch.
    pub fn finish_lane(&mut self, lane: &mut Lane, now: Instant, sink: &mut impl Sink) {
        let Lane { batch, jobs, .. } = lane;
        for job in jobs.drain(..) {
            let data = &batch[job.buf][job.at];
            let delivered =
                self.endpoint
                    .accept_opened(job.from, &job.ticket, data, job.plain, now);
            if let Some(delivery) = delivered {
                hand_over(&mut self.networks, &mut self.stats, delivery, sink);
            }
        }
        self.end_receive(sink);
    }

    /// Opens the lanes asked for at bind time ([`UdpNode::bind_lanes`]): a socket each
    /// for lanes 1.. in the group of the node's own (lane 0), and the program that steers
    /// each data message to its lane's socket. Empty for a node of one lane; an error
    /// leaves the node on its own socket alone (nothing is steered away from it).
    pub fn open_lanes(&mut self) -> io::Result<Vec<Lane>> {
        if self.lanes <= 1 {
            return Ok(Vec::new());
        }
        let addr = self.socket.local_addr()?;
        let mut lanes = Vec::with_capacity(self.lanes - 1);
        for index in 1..self.lanes {
            let socket = bind_udp_with(addr, true)?;
            mmsg::enable_gro(&socket);
            lanes.push(Lane {
                index,
                socket,
                batch: (0..mmsg::BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
                got: Vec::with_capacity(mmsg::BATCH),
                jobs: Vec::with_capacity(mmsg::BATCH),
            });
        }
        sys::attach_lane_program(&self.socket, self.lanes as u32)?;
        Ok(lanes)
    }

    /// The receiving lanes asked for at bind time.
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Opens and delivers the datagrams `got` says `batch` holds. Returns their number.
    fn process_batch(
        &mut self,
        batch: &mut [Vec<u8>],
        got: &[mmsg::Received],
        now: Instant,
        sink: &mut impl Sink,
    ) -> usize {
        let mut read = 0;
        for (i, r) in got.iter().enumerate() {
            std::mem::swap(&mut self.rx, &mut batch[i]);
            for datagram in r.datagrams() {
                read += 1;
                self.stats.datagrams_in += 1;
                self.process_datagram(datagram, r.from, now, sink);
            }
            std::mem::swap(&mut self.rx, &mut batch[i]);
        }
        read
    }

    /// What follows a batch of received datagrams: punched peers stay direct, events go
    /// to `sink`, answers out.
    fn end_receive(&mut self, sink: &mut impl Sink) {
        for node in std::mem::take(&mut self.keep_direct) {
            if let Some(&direct) = self.punched.get(&node) {
                self.endpoint.set_peer_address(node, direct);
            }
        }
        self.collect_events(sink);
        self.flush();
    }

    /// Handles a relay message in `self.rx[at]`. For a forwarded tunnel datagram, returns
    /// the sender's placeholder address and where the datagram starts (from `at.start`).
    fn relay_message(&mut self, from: SocketAddr, at: Range<usize>) -> Option<(SocketAddr, usize)> {
        if !self.relays.iter().any(|r| r.0 == from) {
            self.stats.relay_drops += 1;
            return None;
        }
        match self.rx[at.start] {
            relay::FORWARDED => match relay::unwrap(&self.rx[at.clone()]) {
                Some((src, payload)) => {
                    let initiation = payload.first() == Some(&TUNNEL_HANDSHAKE_INIT);
                    self.stats.relayed_in += 1;
                    self.note_relayed_sender(src);
                    let fake = self.relay_address(src);
                    if initiation {
                        // The peer starts a session through the relay: it has no direct path
                        // to us now (a restarted peer, on a new address, starts relayed), so
                        // the direct address a probe once proved may be dead. Unpin it, or
                        // the answer goes there and the peer stays cut off until the
                        // handshake times out (90 s); punching finds the new path.
                        if self.punched.remove(&src).is_some() && self.hole_punching {
                            self.lookups.insert(src, Instant::now());
                        }
                    } else {
                        self.keep_direct.push(src);
                    }
                    Some((fake, relay::FORWARD_HEADER))
                }
                None => {
                    self.stats.relay_drops += 1;
                    None
                }
            },
            relay::REGISTERED => {
                let now = Instant::now();
                if let Some(r) = self.relays.iter_mut().find(|r| r.0 == from) {
                    r.1 = Some(now);
                }
                self.choose_relay(now);
                if Some(from) == self.relay {
                    self.public_addr = relay::decode_registered(&self.rx[at.clone()]);
                    if std::mem::take(&mut self.forwards_lost) {
                        // A handshake sent before the relay knew us was dropped there
                        // (a node that has just started or moved): retry it now, not
                        // after the tunnel's 5 s retry timer.
                        self.restart_relayed_handshakes(now);
                    }
                }
                None
            }
            relay::REGISTER_AGAIN => {
                // The relay lost our registration (it restarted): register now rather than
                // at the next interval, which could leave relayed peers cut off for 30 s.
                let now = Instant::now();
                self.forwards_lost = true;
                let due = self
                    .registered_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= REGISTER_AGAIN_GAP);
                if due {
                    self.stats.relay_register_again += 1;
                    self.next_register = Some(now);
                    self.register_if_due(now);
                }
                None
            }
            relay::UNKNOWN_PEER => {
                self.stats.relay_unknown_peer += 1;
                // The peer may register in a moment: look it up again soon.
                if let Some((node, _)) = relay::unwrap(&self.rx[at.clone()])
                    && let Some(next) = self.lookups.get_mut(&node)
                {
                    *next = (*next).min(Instant::now() + UNKNOWN_PEER_RETRY);
                }
                None
            }
            relay::PEER_ADDRESS | relay::PUNCH => {
                if let Some((node, addr)) = relay::decode_node_addr(&self.rx[at.clone()]) {
                    self.start_punch(node, addr);
                } else {
                    self.stats.relay_drops += 1;
                }
                None
            }
            _ => {
                self.stats.relay_drops += 1;
                None
            }
        }
    }

    fn knows(&self, node: &NodeId) -> bool {
        self.networks.values().any(|r| r.node_ips(node).is_some())
    }

    /// Starts probing `addr` for `node` (a peer we reach through the relay).
    fn start_punch(&mut self, node: NodeId, addr: SocketAddr) {
        if !self.hole_punching
            || !self.knows(&node)
            || !self.is_relayed(&node)
            || self.relays.iter().any(|r| r.0 == addr)
        {
            return;
        }
        let nonce = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        self.punches.insert(
            node,
            Punch {
                addr,
                nonce,
                tries: 0,
                next: Instant::now(),
            },
        );
        self.punch_tick(Instant::now());
    }

    /// Answers a probe from a known peer; takes a matching ack as a working direct path.
    fn probe_message(&mut self, from: SocketAddr, at: Range<usize>) {
        let Some((node, nonce)) = relay::decode_probe(&self.rx[at.clone()]) else {
            self.stats.relay_drops += 1;
            return;
        };
        if !self.knows(&node) {
            self.stats.relay_drops += 1;
            return;
        }
        if self.rx[at.start] == relay::PROBE {
            let ack = relay::probe_message(relay::PROBE_ACK, &self.endpoint.node_id(), nonce);
            match self.socket.send_to(&ack, from) {
                Ok(_) => self.stats.datagrams_out += 1,
                Err(_) => self.stats.send_errors += 1,
            }
            return;
        }
        if self.punches.get(&node).is_some_and(|p| p.nonce == nonce) {
            self.punches.remove(&node);
            self.lookups.remove(&node);
            self.endpoint.set_peer_address(node, from);
            self.punched.insert(node, from);
            self.stats.punched += 1;
        }
    }

    /// Sends due lookups and probes.
    fn punch_tick(&mut self, now: Instant) {
        let Some(relay) = self.relay else {
            return;
        };
        let due: Vec<NodeId> = self
            .lookups
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            if !self.is_relayed(&node) || !self.knows(&node) {
                self.lookups.remove(&node);
                continue;
            }
            let mut msg = Vec::with_capacity(relay::FORWARD_HEADER);
            relay::wrap(relay::LOOKUP, &node, &[], &mut msg);
            match self.socket.send_to(&msg, relay) {
                Ok(_) => self.stats.datagrams_out += 1,
                Err(_) => self.stats.send_errors += 1,
            }
            self.lookups.insert(node, now + LOOKUP_INTERVAL);
        }
        let me = self.endpoint.node_id();
        let mut finished = Vec::new();
        for (node, punch) in self.punches.iter_mut() {
            if punch.next > now {
                continue;
            }
            if punch.tries >= PROBES {
                finished.push(*node);
                continue;
            }
            let probe = relay::probe_message(relay::PROBE, &me, punch.nonce);
            match self.socket.send_to(&probe, punch.addr) {
                Ok(_) => {
                    self.stats.datagrams_out += 1;
                    self.stats.probes_sent += 1;
                }
                Err(_) => self.stats.send_errors += 1,
            }
            punch.tries += 1;
            punch.next = now + PROBE_GAP;
        }
        for node in finished {
            self.punches.remove(&node);
        }
    }

    fn collect_events(&mut self, sink: &mut impl Sink) {
        while let Some(event) = self.endpoint.poll_event() {
            match event {
                Event::Received {
                    peer,
                    kind: PayloadKind::Control,
                    network,
                    bytes,
                } => sink.control(peer, &network, &bytes),
                Event::Received {
                    peer,
                    kind: PayloadKind::Ip,
                    network,
                    bytes,
                } => match self.networks.get_mut(&network) {
                    Some(router) => match router.receive(&bytes, &peer) {
                        Ok(frame) => sink.frame(&network, frame),
                        Err(_) => self.stats.router_drops += 1,
                    },
                    None => self.stats.unknown_network += 1,
                },
                other => {
                    if let Event::PeerDown {
                        peer,
                        reason: DownReason::HandshakeTimeout,
                    } = &other
                        && self.relay.is_some()
                        && !self.is_relayed(peer)
                    {
                        // The direct address did not answer: try through the relay.
                        let fake = self.relay_address(*peer);
                        self.endpoint.set_peer_address(*peer, fake);
                        self.punched.remove(peer);
                        if self.hole_punching {
                            self.lookups.insert(*peer, Instant::now() + LOOKUP_INTERVAL);
                        }
                    }
                    sink.event(other);
                }
            }
        }
    }

    /// Runs due timers (handshake retries, keep-alives, expiry) and sends what they make.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut impl Sink) {
        self.register_if_due(now);
        self.punch_tick(now);
        self.endpoint.handle_timeout(now);
        self.collect_events(sink);
        self.flush();
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_at(&self) -> Option<Instant> {
        let punches = self.punches.values().map(|p| p.next);
        let lookups = self.lookups.values().copied();
        [self.endpoint.poll_at(), self.next_register]
            .into_iter()
            .flatten()
            .chain(punches)
            .chain(
                if self.relay.is_some() {
                    Some(lookups)
                } else {
                    None
                }
                .into_iter()
                .flatten(),
            )
            .min()
    }

    /// Sends everything the endpoint queued (handshakes, queued payloads, keep-alives).
    fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            send_datagram(
                &self.socket,
                &mut self.stats,
                self.relay,
                &self.relayed,
                &mut self.wrapped,
                &t.bytes,
                t.dst,
            );
        }
    }
}

/// Hands what a data message carried to `sink`: an IP packet once its network's router
/// took it (the authenticated sender must own its source address), a control message as
/// it is.
fn hand_over(
    networks: &mut FxHashMap<String, Router>,
    stats: &mut DatapathStats,
    delivery: Delivery<'_>,
    sink: &mut impl Sink,
) {
    match delivery.kind {
        PayloadKind::Ip => match networks.get_mut(delivery.network) {
            Some(router) => match router.receive(delivery.bytes, &delivery.peer) {
                Ok(frame) => sink.frame(delivery.network, frame),
                Err(_) => stats.router_drops += 1,
            },
            None => stats.unknown_network += 1,
        },
        PayloadKind::Control => sink.control(delivery.peer, delivery.network, delivery.bytes),
    }
}

/// A non-blocking UDP socket with [`SOCKET_BUFFER`]-sized buffers (as granted).
pub fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    bind_udp_with(addr, false)
}

/// [`bind_udp`], in a `SO_REUSEPORT` group if `reuse_port` (the node's lanes).
fn bind_udp_with(addr: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller grant still works, only bursts suffer.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    if reuse_port {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReusePort, &true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A receiving lane of a node (see [`UdpNode::open_lanes`]): a socket of the node's
/// `SO_REUSEPORT` group, which the kernel hands the data messages of some lanes, and its
/// receive buffers. A datapath thread reads it without the node, then lets the node
/// open what it read ([`UdpNode::receive_lane`]).
#[derive(Debug)]
pub struct Lane {
    index: usize,
    socket: UdpSocket,
    batch: Vec<Vec<u8>>,
    got: Vec<mmsg::Received>,
    /// The data messages of the batch to open without the node ([`UdpNode::plan_lane`]).
    jobs: Vec<OpenJob>,
}

/// A data message of a lane's batch: where it lies, who sent it, its ticket, and (once
/// [`Lane::open`] ran) the length of its plaintext, None if it did not authenticate.
#[derive(Debug)]
struct OpenJob {
    buf: usize,
    at: Range<usize>,
    from: SocketAddr,
    ticket: OpenTicket,
    plain: Option<usize>,
}

impl Lane {
    /// Which of the node's lanes this is (1..).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The lane's socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Opens (decrypts in place) the data messages [`UdpNode::plan_lane`] left, without
    /// the node: this is the costly part, which runs on this lane's thread while others
    /// use the node.
    pub fn open(&mut self) {
        let Lane { batch, jobs, .. } = self;
        for job in jobs {
            job.plain = job.ticket.open(&mut batch[job.buf][job.at.clone()]);
        }
    }

    /// Reads one batch of datagrams (with `recvmmsg`, and runs of them where the kernel
    /// does UDP GRO) without the node. Returns the number of reads (0: nothing waiting).
    pub fn read(&mut self) -> usize {
        self.got.clear();
        match mmsg::recv_batch(&self.socket, &mut self.batch, &mut self.got) {
            Ok(()) => self.got.len(),
            // ICMP errors surface as ECONNREFUSED and friends on Linux: not fatal.
            Err(_) => 0,
        }
    }
}

/// Sends a tunnel datagram: directly, or through the relay for a relayed peer.
fn send_datagram(
    socket: &UdpSocket,
    stats: &mut DatapathStats,
    relay: Option<SocketAddr>,
    relayed: &FxHashMap<SocketAddr, NodeId>,
    wrapped: &mut Vec<u8>,
    bytes: &[u8],
    dst: SocketAddr,
) {
    let sent = match (relayed.get(&dst), relay) {
        (Some(node), Some(relay)) => {
            relay::wrap(relay::FORWARD, node, bytes, wrapped);
            stats.relayed_out += 1;
            socket.send_to(wrapped, relay)
        }
        // A relayed peer while no relay is configured: nowhere to send.
        (Some(_), None) => Err(io::Error::from(io::ErrorKind::NotConnected)),
        (None, _) => socket.send_to(bytes, dst),
    };
    match sent {
        Ok(_) => stats.datagrams_out += 1,
        Err(_) => stats.send_errors += 1,
    }
}

#[cfg(test)]
mod tests;
