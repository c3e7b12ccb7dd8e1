//! One node's view of one network: who holds which IP, where a frame goes, what is
//! dropped and why.
//!
//! The router is a sans-IO state machine. [`Router::inject`] takes a frame the *local
//! payload* sent and hands each delivery (a destination node id and an IP packet) to a
//! callback; [`Router::receive`] takes a packet that arrived from a remote node and
//! returns the frame for the local payload. Nothing here does I/O, keeps time or
//! allocates on the unicast path.
//!
//! Security rules enforced on every frame:
//! - a packet the local payload sends must carry one of the local node's addresses as
//!   its source; a packet from a remote node must carry one of *that node's* addresses;
//! - a remote packet must be addressed to the local node or to a broadcast/multicast
//!   group; nodes that are not in the network (or were removed) are not heard.
//!
//! In [`Medium::Ethernet`] (VM runtimes) the router strips Ethernet headers on the way
//! in, adds them on the way out, and answers ARP requests and IPv6 neighbour
//! solicitations for known nodes itself, with yagna's MAC scheme (see
//! [`crate::wire::payload_mac`]).

mod cidr;
mod ethernet;
mod stats;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustc_hash::FxHashMap;

pub use cidr::{Cidr, CidrError};
pub use ethernet::Frame;
pub use stats::{Counters, DropCounters, DropReason};

use crate::node_id::NodeId;
use crate::wire::{IpPacket, is_ipv6_link_local};

/// What the local attachment exchanges with the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Medium {
    /// Bare IPv4/IPv6 packets (TUN devices, userspace stacks).
    #[default]
    Ip,
    /// Ethernet II frames (VM runtimes); ARP and neighbour discovery answered locally.
    Ethernet,
}

/// Everything a router is built from.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The network id (yagna's: 32 hex digits).
    pub network_id: String,
    /// The network's ranges: one or more, IPv4 and/or IPv6, not overlapping.
    pub cidrs: Vec<Cidr>,
    /// The id of the node this router runs on.
    pub local_node: NodeId,
    /// The local node's addresses (at least one).
    pub local_ips: Vec<IpAddr>,
    /// What the local attachment speaks.
    pub medium: Medium,
    /// The requestor's node id, whose interface MACs start `a0:13` instead of `90:13`.
    pub requestor: Option<NodeId>,
}

/// Why the router refused a change to its table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// The address lies outside every range of the network.
    #[error("{ip} is outside the network's range {ranges}")]
    OutOfRange {
        /// The address given.
        ip: IpAddr,
        /// The network's ranges, comma separated.
        ranges: String,
    },
    /// The address cannot name a node (network, broadcast, multicast, loopback, ...).
    #[error("{ip} cannot be given to a node: it is {reason}")]
    Reserved {
        /// The address given.
        ip: IpAddr,
        /// Why it is reserved.
        reason: &'static str,
    },
    /// Another node already holds the address.
    #[error("{ip} is already taken by node {holder}")]
    Taken {
        /// The address given.
        ip: IpAddr,
        /// The node that holds it.
        holder: NodeId,
    },
    /// The local node cannot be removed from its own router.
    #[error("the local node {0} cannot be removed from its own router")]
    RemoveLocal(NodeId),
    /// The configuration has no range, overlapping ranges, or no local address.
    #[error("invalid network configuration: {0}")]
    Config(String),
}

/// The slot of the local node in the node table.
const LOCAL: usize = 0;

#[derive(Debug)]
struct Entry {
    id: NodeId,
    ips: Vec<IpAddr>,
    has_v4: bool,
    has_v6: bool,
    requestor: bool,
    counters: Counters,
}

/// A snapshot of a router's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterStats {
    /// Frames handed to [`Router::inject`].
    pub injected: u64,
    /// Packets handed to [`Router::receive`].
    pub received: u64,
    /// Dropped frames by reason.
    pub drops: DropCounters,
    /// Traffic per node, the local node first.
    pub nodes: Vec<(NodeId, Counters)>,
}

/// One node's view of one network. See the module docs.
#[derive(Debug)]
pub struct Router {
    network_id: String,
    cidrs: Vec<Cidr>,
    medium: Medium,
    requestor: Option<NodeId>,
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    by_id: FxHashMap<NodeId, usize>,
    v4: FxHashMap<Ipv4Addr, usize>,
    v6: FxHashMap<Ipv6Addr, usize>,
    injected: u64,
    received: u64,
    drops: DropCounters,
}

impl Router {
    /// Builds a router; the local node and its addresses are checked like any node's.
    pub fn new(config: RouterConfig) -> Result<Self, RouterError> {
        let RouterConfig {
            network_id,
            cidrs,
            local_node,
            local_ips,
            medium,
            requestor,
        } = config;
        if cidrs.is_empty() {
            return Err(RouterError::Config(
                "the network needs at least one range".into(),
            ));
        }
        for (i, a) in cidrs.iter().enumerate() {
            if let Some(b) = cidrs[i + 1..].iter().find(|b| a.overlaps(b)) {
                return Err(RouterError::Config(format!("ranges {a} and {b} overlap")));
            }
        }
        if local_ips.is_empty() {
            return Err(RouterError::Config(
                "the local node needs at least one address".into(),
            ));
        }
        let mut router = Router {
            network_id,
            cidrs,
            medium,
            requestor,
            slots: Vec::new(),
            free: Vec::new(),
            by_id: FxHashMap::default(),
            v4: FxHashMap::default(),
            v6: FxHashMap::default(),
            injected: 0,
            received: 0,
            drops: DropCounters::default(),
        };
        for ip in local_ips {
            router.add_node(local_node, ip)?;
        }
        debug_assert_eq!(router.by_id.get(&local_node), Some(&LOCAL));
        Ok(router)
    }

    /// The network id.
    pub fn network_id(&self) -> &str {
        &self.network_id
    }

    /// The network's ranges.
    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// What the local attachment speaks.
    pub fn medium(&self) -> Medium {
        self.medium
    }

    /// The local node's id.
    pub fn local_node(&self) -> NodeId {
        self.entry(LOCAL).id
    }

    /// The local node's addresses.
    pub fn local_ips(&self) -> &[IpAddr] {
        &self.entry(LOCAL).ips
    }

    fn entry(&self, slot: usize) -> &Entry {
        self.slots[slot].as_ref().expect("slot in use")
    }

    fn entry_mut(&mut self, slot: usize) -> &mut Entry {
        self.slots[slot].as_mut().expect("slot in use")
    }

    /// Checks that `ip` may name a node of this network.
    pub fn check_host(&self, ip: IpAddr) -> Result<(), RouterError> {
        let Some(cidr) = self.cidrs.iter().find(|c| c.contains(ip)) else {
            if crate::wire::is_never_host(ip) {
                return Err(RouterError::Reserved {
                    ip,
                    reason: "not a unicast host address",
                });
            }
            let ranges = self
                .cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            return Err(RouterError::OutOfRange {
                ip,
                ranges: ranges.join(", "),
            });
        };
        match cidr.reserved_reason(ip) {
            Some(reason) => Err(RouterError::Reserved { ip, reason }),
            None => Ok(()),
        }
    }

    /// Gives `ip` to `node` (adding the node if new). Returns `false` if the node already
    /// held that address (re-adding is harmless, as in yagna).
    pub fn add_node(&mut self, node: NodeId, ip: IpAddr) -> Result<bool, RouterError> {
        self.check_host(ip)?;
        if let Some(slot) = self.slot_of_ip(ip) {
            let holder = self.entry(slot).id;
            return if holder == node {
                Ok(false)
            } else {
                Err(RouterError::Taken { ip, holder })
            };
        }
        let slot = match self.by_id.get(&node) {
            Some(&slot) => slot,
            None => {
                let entry = Entry {
                    id: node,
                    ips: Vec::new(),
                    has_v4: false,
                    has_v6: false,
                    requestor: self.requestor == Some(node),
                    counters: Counters::default(),
                };
                let slot = match self.free.pop() {
                    Some(slot) => {
                        self.slots[slot] = Some(entry);
                        slot
                    }
                    None => {
                        self.slots.push(Some(entry));
                        self.slots.len() - 1
                    }
                };
                self.by_id.insert(node, slot);
                slot
            }
        };
        self.push_ip(slot, ip);
        Ok(true)
    }

    /// Gives the node in `slot` one more address (known to be free).
    fn push_ip(&mut self, slot: usize, ip: IpAddr) {
        let entry = self.entry_mut(slot);
        entry.ips.push(ip);
        match ip {
            IpAddr::V4(v4) => {
                entry.has_v4 = true;
                self.v4.insert(v4, slot);
            }
            IpAddr::V6(v6) => {
                entry.has_v6 = true;
                self.v6.insert(v6, slot);
            }
        }
    }

    /// Removes `node` and every address it held. Returns `false` if it was not there.
    /// From then on its packets are dropped (`unknown_node`) and nothing is sent to it.
    pub fn remove_node(&mut self, node: &NodeId) -> Result<bool, RouterError> {
        let Some(&slot) = self.by_id.get(node) else {
            return Ok(false);
        };
        if slot == LOCAL {
            return Err(RouterError::RemoveLocal(*node));
        }
        let entry = self.slots[slot].take().expect("slot in use");
        for ip in entry.ips {
            match ip {
                IpAddr::V4(v4) => self.v4.remove(&v4),
                IpAddr::V6(v6) => self.v6.remove(&v6),
            };
        }
        self.by_id.remove(node);
        self.free.push(slot);
        Ok(true)
    }

    /// Gives `node` (the local node included) exactly the addresses `ips`, in place: its
    /// slot, counters and sessions stay, only which addresses route to it changes. Returns
    /// `false` if the node is not in the network. Nothing changes on error.
    pub fn readdress(&mut self, node: &NodeId, ips: &[IpAddr]) -> Result<bool, RouterError> {
        let Some(&slot) = self.by_id.get(node) else {
            return Ok(false);
        };
        if ips.is_empty() {
            return Err(RouterError::Config(
                "a node needs at least one address".into(),
            ));
        }
        for &ip in ips {
            self.check_host(ip)?;
            match self.slot_of_ip(ip) {
                Some(holder) if holder != slot => {
                    return Err(RouterError::Taken {
                        ip,
                        holder: self.entry(holder).id,
                    });
                }
                _ => {}
            }
        }
        let old = std::mem::take(&mut self.entry_mut(slot).ips);
        for ip in old {
            match ip {
                IpAddr::V4(v4) => self.v4.remove(&v4),
                IpAddr::V6(v6) => self.v6.remove(&v6),
            };
        }
        let entry = self.entry_mut(slot);
        entry.has_v4 = false;
        entry.has_v6 = false;
        for &ip in ips {
            if !self.entry(slot).ips.contains(&ip) {
                self.push_ip(slot, ip);
            }
        }
        Ok(true)
    }

    /// Every node (the local one first) with its addresses.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &[IpAddr])> + '_ {
        self.slots
            .iter()
            .flatten()
            .map(|e| (e.id, e.ips.as_slice()))
    }

    /// The addresses `node` holds, if it is in the network.
    pub fn node_ips(&self, node: &NodeId) -> Option<&[IpAddr]> {
        self.by_id.get(node).map(|&s| self.entry(s).ips.as_slice())
    }

    /// The node that holds `ip`, if any.
    pub fn node_of(&self, ip: IpAddr) -> Option<NodeId> {
        self.slot_of_ip(ip).map(|s| self.entry(s).id)
    }

    #[inline]
    fn slot_of_ip(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(v4) => self.v4.get(&v4).copied(),
            IpAddr::V6(v6) => self.v6.get(&v6).copied(),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            injected: self.injected,
            received: self.received,
            drops: self.drops,
            nodes: self
                .slots
                .iter()
                .flatten()
                .map(|e| (e.id, e.counters))
                .collect(),
        }
    }

    /// Dropped frames by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Routes a frame the local payload sent. Each delivery is handed to `deliver` as
    /// `(destination node, IP packet)`; ARP and neighbour-discovery answers come back as
    /// deliveries to the local node id (Ethernet frames for the local payload).
    ///
    /// Returns the number of deliveries, or the reason the frame was dropped (already
    /// counted). Broadcast and multicast go to every other node holding an address of
    /// the packet's family.
    pub fn inject<F: FnMut(&NodeId, &[u8])>(
        &mut self,
        frame: &[u8],
        deliver: F,
    ) -> Result<usize, DropReason> {
        self.injected += 1;
        let result = match self.medium {
            Medium::Ip => IpPacket::parse(frame)
                .map_err(DropReason::from)
                .and_then(|ip| self.route(ip, deliver)),
            Medium::Ethernet => self.inject_ethernet(frame, deliver),
        };
        if let Err(reason) = result {
            self.drops.count(reason);
        }
        result
    }

    /// Routes a validated IP packet from the local payload.
    fn route<F: FnMut(&NodeId, &[u8])>(
        &mut self,
        ip: IpPacket<'_>,
        mut deliver: F,
    ) -> Result<usize, DropReason> {
        let bytes = ip.bytes();
        let src = ip.src();
        if self.slot_of_ip(src) != Some(LOCAL) {
            return Err(source_drop(src));
        }
        let dst = ip.dst();
        if let Some(slot) = self.slot_of_ip(dst) {
            if slot == LOCAL {
                return Err(DropReason::LocalDestination);
            }
            let entry = self.entry_mut(slot);
            entry.counters.count_out(bytes.len());
            deliver(&entry.id, bytes);
            self.entry_mut(LOCAL).counters.count_in(bytes.len());
            return Ok(1);
        }
        if self.is_group(dst) {
            let v4 = dst.is_ipv4();
            let mut n = 0;
            for entry in self.slots.iter_mut().skip(1).flatten() {
                if (v4 && entry.has_v4) || (!v4 && entry.has_v6) {
                    entry.counters.count_out(bytes.len());
                    deliver(&entry.id, bytes);
                    n += 1;
                }
            }
            self.entry_mut(LOCAL).counters.count_in(bytes.len());
            return Ok(n);
        }
        if self.cidrs.iter().any(|c| c.contains(dst)) {
            Err(DropReason::UnknownDestination)
        } else {
            Err(DropReason::NoRoute)
        }
    }

    /// True for broadcast (limited or subnet) and multicast destinations.
    #[inline]
    fn is_group(&self, dst: IpAddr) -> bool {
        match dst {
            IpAddr::V4(v4) => {
                v4.is_multicast()
                    || v4 == Ipv4Addr::BROADCAST
                    || self.cidrs.iter().any(|c| c.broadcast() == Some(v4))
            }
            IpAddr::V6(v6) => v6.is_multicast(),
        }
    }

    /// Takes a packet that arrived from remote node `from` and returns the frame to hand
    /// to the local payload (an IP packet, or an Ethernet frame in Ethernet mode).
    ///
    /// The packet is dropped (and counted) unless `from` is in the network, its source
    /// address belongs to `from`, and it is addressed to the local node or a group.
    pub fn receive<'a>(
        &mut self,
        packet: &'a [u8],
        from: &NodeId,
    ) -> Result<Frame<'a>, DropReason> {
        self.received += 1;
        let result = self.check_received(packet, from);
        if let Err(reason) = result {
            self.drops.count(reason);
        }
        result
    }

    fn check_received<'a>(
        &mut self,
        packet: &'a [u8],
        from: &NodeId,
    ) -> Result<Frame<'a>, DropReason> {
        let slot = match self.by_id.get(from) {
            Some(&slot) if slot != LOCAL => slot,
            _ => return Err(DropReason::UnknownNode),
        };
        let ip = IpPacket::parse(packet).map_err(DropReason::from)?;
        let (src, dst) = (ip.src(), ip.dst());
        if self.slot_of_ip(src) != Some(slot) {
            return Err(source_drop(src));
        }
        let group = match self.slot_of_ip(dst) {
            Some(LOCAL) => false,
            _ if self.is_group(dst) => true,
            _ => return Err(DropReason::NotForUs),
        };
        let bytes = ip.bytes();
        let from_requestor = {
            let entry = self.entry_mut(slot);
            entry.counters.count_in(bytes.len());
            entry.requestor
        };
        let local = self.entry_mut(LOCAL);
        local.counters.count_out(bytes.len());
        let local_requestor = local.requestor;
        Ok(match self.medium {
            Medium::Ip => Frame::ip(bytes),
            Medium::Ethernet => {
                Frame::ethernet(&ip, src, dst, group, from_requestor, local_requestor)
            }
        })
    }
}

/// The drop reason for a packet whose source is not the sender's.
#[inline]
fn source_drop(src: IpAddr) -> DropReason {
    match src {
        IpAddr::V6(v6) if is_ipv6_link_local(&v6) => DropReason::LinkLocalSource,
        _ => DropReason::SpoofedSource,
    }
}

#[cfg(test)]
mod tests;
