//! The relay: rendezvous and forwarding for nodes that cannot reach each other directly.
//!
//! Nodes register their node id with a relay, proving it with a signature by their node
//! key, so nobody can register someone else's id. A node that knows no direct address of
//! a peer sends its tunnel datagrams to the relay wrapped in a FORWARD header naming the
//! destination node; the relay passes them on, stamped with the sender's id (taken from
//! the sender's registration, never from the datagram). The relay cannot read what it
//! forwards: the payloads are the tunnel's end-to-end encrypted datagrams.
//!
//! [`RelayServer`] is the sans-IO server core; [`crate::datapath`] speaks the client side.
//!
//! Wire format (first byte; the tunnel uses 1..=4, so both share a socket):
//!
//! | type | message | after the type byte |
//! |---|---|---|
//! | `0x10` | register | node id (20), unix time in milliseconds u64 BE, signature (65) over `REGISTER_DOMAIN ‖ node id ‖ time` |
//! | `0x11` | registered | the address the relay sees: family (4/6), IP (4/16), port u16 BE |
//! | `0x14` | forward | destination node id (20), tunnel datagram |
//! | `0x15` | forwarded | source node id (20), tunnel datagram |
//! | `0x16` | unknown peer | node id (20) the relay has no registration for |
//! | `0x12` | lookup | node id (20) whose address the (registered) sender wants |
//! | `0x13` | peer address | node id (20), its address (family, IP, port) |
//! | `0x17` | punch | node id (20) of a node that looked us up, its address |
//! | `0x18` | probe (node to node) | sender's node id (20), nonce u64 |
//! | `0x19` | probe ack (node to node) | sender's node id (20), the probe's nonce |
//! | `0x1a` | register again | nothing: the relay has no registration for the sender's address |
//!
//! Hole punching: a node that reaches a peer through the relay looks the peer up; the relay
//! answers with the peer's public address and tells the peer ours (punch). Both then probe
//! each other's address directly, which opens both NATs' mappings; the first node to get a
//! probe ack for its nonce switches the peer to the direct address (the tunnel's roaming
//! moves the other side). Probes are not authenticated: a forged ack can at worst point the
//! tunnel at a dead address, whose handshakes then time out and fall back to the relay.
//!
//! A registration must carry a time within [`MAX_CLOCK_SKEW`] of the relay's clock and
//! newer than the node's last accepted one, so a captured registration cannot be replayed
//! later to divert the node's traffic. Registrations expire after [`REGISTRATION_TTL`];
//! nodes re-register every [`REGISTER_INTERVAL`] ([`RELAYED_REGISTER_INTERVAL`] while a peer is
//! reached through the relay). A relay that restarted has forgotten every registration: it
//! answers a forward or lookup from an address it does not know with [`REGISTER_AGAIN`] (one
//! byte, smaller than what it answers, so nothing to amplify), and the node registers at once
//! instead of at its next interval; an idle node finds out at its next registration.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::identity::{Identity, recover_node_id};
use crate::node_id::NodeId;

/// Message types.
pub const REGISTER: u8 = 0x10;
/// Reply to a registration.
pub const REGISTERED: u8 = 0x11;
/// A datagram for the relay to pass on.
pub const FORWARD: u8 = 0x14;
/// A datagram the relay passed on.
pub const FORWARDED: u8 = 0x15;
/// The destination of a forward is not registered.
pub const UNKNOWN_PEER: u8 = 0x16;
/// Asks for a registered node's address.
pub const LOOKUP: u8 = 0x12;
/// Answers a lookup.
pub const PEER_ADDRESS: u8 = 0x13;
/// Tells a node who looked it up, and from where.
pub const PUNCH: u8 = 0x17;
/// A direct probe between nodes.
pub const PROBE: u8 = 0x18;
/// The answer to a probe.
pub const PROBE_ACK: u8 = 0x19;
/// The relay has no registration for the sender's address (it restarted, or the
/// registration expired or moved): register again.
pub const REGISTER_AGAIN: u8 = 0x1a;

/// Signed with the registration, so the signature means nothing elsewhere.
pub const REGISTER_DOMAIN: &[u8] = b"golem-vpn/relay-register/v1";
/// How far a registration's time may be from the relay's.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// How long a registration lasts.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(120);
/// How often nodes re-register.
pub const REGISTER_INTERVAL: Duration = Duration::from_secs(30);
/// How often a node re-registers while it reaches a peer through the relay: the longest a
/// restarted relay leaves an idle node's relayed peers cut off (and a keep-alive for the
/// node's NAT mapping, which many NATs drop after 30 s).
pub const RELAYED_REGISTER_INTERVAL: Duration = Duration::from_secs(5);
/// Bytes before the payload of a forward / forwarded message.
pub const FORWARD_HEADER: usize = 21;
const REGISTER_LEN: usize = 1 + 20 + 8 + 65;

/// True if `data` is a relay message (rather than a tunnel datagram).
pub fn is_relay_message(data: &[u8]) -> bool {
    matches!(data.first(), Some(0x10..=0x1f))
}

/// A signed registration of `identity` at `unix_ms` (milliseconds since the Unix epoch:
/// a node restarted within the second of its last registration is still newer).
pub fn register_message(identity: &Identity, unix_ms: u64) -> Vec<u8> {
    let id = identity.node_id();
    let mut signed = Vec::with_capacity(REGISTER_DOMAIN.len() + 28);
    signed.extend_from_slice(REGISTER_DOMAIN);
    signed.extend_from_slice(id.as_bytes());
    signed.extend_from_slice(&unix_ms.to_be_bytes());
    let sig = identity.sign_recoverable(&signed);
    let mut out = Vec::with_capacity(REGISTER_LEN);
    out.push(REGISTER);
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&unix_ms.to_be_bytes());
    out.extend_from_slice(&sig);
    out
}

/// Writes a forward (or forwarded) header for `node` followed by `payload` into `out`.
pub fn wrap(kind: u8, node: &NodeId, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(kind);
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(payload);
}

/// Splits a forward / forwarded / unknown-peer message into its node id and payload.
pub fn unwrap(data: &[u8]) -> Option<(NodeId, &[u8])> {
    let id: [u8; 20] = data.get(1..21)?.try_into().ok()?;
    Some((NodeId(id), &data[21..]))
}

fn encode_addr(addr: SocketAddr) -> Vec<u8> {
    let mut out = vec![REGISTERED];
    push_addr(&mut out, addr);
    out
}

/// A message of type `kind` carrying a node id and an address.
pub fn node_addr_message(kind: u8, node: &NodeId, addr: SocketAddr) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(node.as_bytes());
    push_addr(&mut out, addr);
    out
}

/// Parses a message made by [`node_addr_message`].
pub fn decode_node_addr(data: &[u8]) -> Option<(NodeId, SocketAddr)> {
    let (node, rest) = unwrap(data)?;
    let mut with_tag = vec![REGISTERED];
    with_tag.extend_from_slice(rest);
    Some((node, decode_registered(&with_tag)?))
}

/// A probe or probe ack from `node` with `nonce`.
pub fn probe_message(kind: u8, node: &NodeId, nonce: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(29);
    out.push(kind);
    out.extend_from_slice(node.as_bytes());
    out.extend_from_slice(&nonce.to_be_bytes());
    out
}

/// Parses a probe or probe ack.
pub fn decode_probe(data: &[u8]) -> Option<(NodeId, u64)> {
    let (node, rest) = unwrap(data)?;
    Some((node, u64::from_be_bytes(rest.try_into().ok()?)))
}

fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Parses a `registered` reply: the address the relay sees for us.
pub fn decode_registered(data: &[u8]) -> Option<SocketAddr> {
    if data.first() != Some(&REGISTERED) {
        return None;
    }
    let (ip, rest): (IpAddr, &[u8]) = match data.get(1)? {
        4 => {
            let o: [u8; 4] = data.get(2..6)?.try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(o)), &data[6..])
        }
        6 => {
            let o: [u8; 16] = data.get(2..18)?.try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(o)), &data[18..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    Some(SocketAddr::new(ip, port))
}

/// What a relay counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Registrations accepted.
    pub registered: u64,
    /// Registrations refused (bad signature, stale or replayed time, malformed).
    pub bad_registrations: u64,
    /// Datagrams forwarded.
    pub forwarded: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Forwards and lookups from an address with no registration (dropped, and answered
    /// with register-again).
    pub unregistered_sender: u64,
    /// Forwards to a node with no registration (answered with unknown-peer).
    pub unknown_destination: u64,
    /// Datagrams that are no relay message, or truncated (dropped).
    pub malformed: u64,
    /// Lookups answered (each also sent a punch to the target).
    pub lookups: u64,
}

struct Registration {
    addr: SocketAddr,
    time: u64,
    expires: Instant,
}

/// The relay's sans-IO core: datagrams in, datagrams out.
#[derive(Default)]
pub struct RelayServer {
    nodes: FxHashMap<NodeId, Registration>,
    by_addr: FxHashMap<SocketAddr, NodeId>,
    stats: RelayStats,
}

impl RelayServer {
    /// An empty relay.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters.
    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Number of live registrations.
    pub fn registrations(&self) -> usize {
        self.nodes.len()
    }

    /// The address a node is registered at.
    pub fn address_of(&self, node: &NodeId) -> Option<SocketAddr> {
        self.nodes.get(node).map(|r| r.addr)
    }

    /// Handles one datagram from `from`; replies and forwards are appended to `out`.
    /// `unix_ms` is the wall clock in milliseconds since the Unix epoch (for
    /// registration freshness).
    pub fn handle(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        unix_ms: u64,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) {
        match data.first() {
            Some(&REGISTER) => self.register(from, data, now, unix_ms, out),
            Some(&FORWARD) => self.forward(from, data, now, out),
            Some(&LOOKUP) => self.lookup(from, data, now, out),
            _ => self.stats.malformed += 1,
        }
    }

    fn register(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        unix_ms: u64,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) {
        let Some(parsed) = parse_register(data) else {
            self.stats.bad_registrations += 1;
            return;
        };
        let (node, time, sig) = parsed;
        let mut signed = Vec::with_capacity(REGISTER_DOMAIN.len() + 28);
        signed.extend_from_slice(REGISTER_DOMAIN);
        signed.extend_from_slice(node.as_bytes());
        signed.extend_from_slice(&time.to_be_bytes());
        let fresh = u128::from(time.abs_diff(unix_ms)) <= MAX_CLOCK_SKEW.as_millis();
        let newer = self
            .nodes
            .get(&node)
            .is_none_or(|r| time > r.time || (time == r.time && r.addr == from));
        if !fresh || !newer || recover_node_id(&signed, &sig) != Ok(node) {
            self.stats.bad_registrations += 1;
            return;
        }
        if let Some(old) = self.nodes.insert(
            node,
            Registration {
                addr: from,
                time,
                expires: now + REGISTRATION_TTL,
            },
        ) && old.addr != from
        {
            self.by_addr.remove(&old.addr);
        }
        if let Some(previous) = self.by_addr.insert(from, node)
            && previous != node
        {
            // Another node used this address before (NAT reuse): its registration is stale.
            self.nodes.remove(&previous);
        }
        self.stats.registered += 1;
        out.push((from, encode_addr(from)));
    }

    /// The parts every request from a node shares: the node id it names (with the rest of
    /// the message), the registered sender, and that node's live registration, if any.
    /// Counts and answers what is wrong (malformed, unregistered sender, unknown node).
    fn request<'d>(
        &mut self,
        from: SocketAddr,
        data: &'d [u8],
        now: Instant,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> Option<(NodeId, &'d [u8], NodeId, SocketAddr)> {
        let Some((target, rest)) = unwrap(data) else {
            self.stats.malformed += 1;
            return None;
        };
        let Some(&sender) = self.by_addr.get(&from) else {
            self.stats.unregistered_sender += 1;
            out.push((from, vec![REGISTER_AGAIN]));
            return None;
        };
        match self.nodes.get(&target) {
            Some(r) if r.expires > now => Some((target, rest, sender, r.addr)),
            _ => {
                self.stats.unknown_destination += 1;
                let mut msg = Vec::with_capacity(FORWARD_HEADER);
                wrap(UNKNOWN_PEER, &target, &[], &mut msg);
                out.push((from, msg));
                None
            }
        }
    }

    fn forward(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) {
        if let Some((_, payload, src, dst_addr)) = self.request(from, data, now, out) {
            let mut msg = Vec::with_capacity(FORWARD_HEADER + payload.len());
            wrap(FORWARDED, &src, payload, &mut msg);
            self.stats.forwarded += 1;
            self.stats.forwarded_bytes += payload.len() as u64;
            out.push((dst_addr, msg));
        }
    }

    fn lookup(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) {
        if let Some((target, _, asker, target_addr)) = self.request(from, data, now, out) {
            self.stats.lookups += 1;
            out.push((from, node_addr_message(PEER_ADDRESS, &target, target_addr)));
            out.push((target_addr, node_addr_message(PUNCH, &asker, from)));
        }
    }

    /// Drops expired registrations.
    pub fn expire(&mut self, now: Instant) {
        let by_addr = &mut self.by_addr;
        self.nodes.retain(|_, r| {
            let live = r.expires > now;
            if !live {
                by_addr.remove(&r.addr);
            }
            live
        });
    }
}

fn parse_register(data: &[u8]) -> Option<(NodeId, u64, [u8; 65])> {
    if data.len() != REGISTER_LEN {
        return None;
    }
    let id: [u8; 20] = data[1..21].try_into().ok()?;
    let time = u64::from_be_bytes(data[21..29].try_into().ok()?);
    let sig: [u8; 65] = data[29..].try_into().ok()?;
    Some((NodeId(id), time, sig))
}

#[cfg(test)]
mod tests;
