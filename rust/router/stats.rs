//! What the router counts: traffic per node and dropped frames by reason.

use crate::wire::WireError;

/// Why the router dropped a frame. Drops are counted, never raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The frame was empty.
    Empty,
    /// The frame was longer than 65535 bytes.
    Oversized,
    /// The frame ended before its headers (or stated length) did.
    Truncated,
    /// The IP version was not 4 or 6, or did not match the EtherType.
    BadVersion,
    /// The IPv4 header length or total length fields were inconsistent.
    BadHeaderLength,
    /// The IPv4 header checksum was wrong.
    BadChecksum,
    /// An Ethernet frame carried neither IPv4, IPv6 nor ARP.
    UnsupportedEtherType,
    /// An ARP frame was not a request for another known node's address.
    ArpUnanswered,
    /// An IPv6 neighbour solicitation was not for another known node's address.
    NdiscUnanswered,
    /// The source address does not belong to the node the frame came from.
    SpoofedSource,
    /// The source was an IPv6 link-local address, which is never routed between nodes.
    LinkLocalSource,
    /// The destination lies in the network but no node holds it.
    UnknownDestination,
    /// The destination lies outside the network.
    NoRoute,
    /// The local payload sent a frame to its own address.
    LocalDestination,
    /// A frame arrived from a node that is not (or no longer) in the network.
    UnknownNode,
    /// A frame from a remote node was addressed to neither this node nor a group.
    NotForUs,
}

impl DropReason {
    /// Every reason, in a stable order (the order of `stats()`).
    pub const ALL: [DropReason; 16] = [
        DropReason::Empty,
        DropReason::Oversized,
        DropReason::Truncated,
        DropReason::BadVersion,
        DropReason::BadHeaderLength,
        DropReason::BadChecksum,
        DropReason::UnsupportedEtherType,
        DropReason::ArpUnanswered,
        DropReason::NdiscUnanswered,
        DropReason::SpoofedSource,
        DropReason::LinkLocalSource,
        DropReason::UnknownDestination,
        DropReason::NoRoute,
        DropReason::LocalDestination,
        DropReason::UnknownNode,
        DropReason::NotForUs,
    ];

    /// The snake_case name used in stats.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::Oversized => "oversized",
            DropReason::Truncated => "truncated",
            DropReason::BadVersion => "bad_version",
            DropReason::BadHeaderLength => "bad_header_length",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::UnsupportedEtherType => "unsupported_ethertype",
            DropReason::ArpUnanswered => "arp_unanswered",
            DropReason::NdiscUnanswered => "ndisc_unanswered",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::LinkLocalSource => "link_local_source",
            DropReason::UnknownDestination => "unknown_destination",
            DropReason::NoRoute => "no_route",
            DropReason::LocalDestination => "local_destination",
            DropReason::UnknownNode => "unknown_node",
            DropReason::NotForUs => "not_for_us",
        }
    }

    #[inline]
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl From<WireError> for DropReason {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Empty => DropReason::Empty,
            WireError::Oversized(_) => DropReason::Oversized,
            WireError::Truncated => DropReason::Truncated,
            WireError::BadVersion(_) => DropReason::BadVersion,
            WireError::BadHeaderLength => DropReason::BadHeaderLength,
            WireError::BadChecksum => DropReason::BadChecksum,
        }
    }
}

/// Traffic between this router and one node. "In" is from that node, "out" is to it;
/// for the local node, "in" is what its payload sent and "out" what was handed to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets from the node.
    pub packets_in: u64,
    /// Bytes from the node.
    pub bytes_in: u64,
    /// Packets to the node.
    pub packets_out: u64,
    /// Bytes to the node.
    pub bytes_out: u64,
}

impl Counters {
    #[inline]
    pub(crate) fn count_in(&mut self, len: usize) {
        self.packets_in += 1;
        self.bytes_in += len as u64;
    }

    #[inline]
    pub(crate) fn count_out(&mut self, len: usize) {
        self.packets_out += 1;
        self.bytes_out += len as u64;
    }
}

/// Dropped frames, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    #[inline]
    pub(crate) fn count(&mut self, reason: DropReason) {
        self.0[reason.index()] += 1;
    }

    /// How many frames were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// All frames dropped, whatever the reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }
}
