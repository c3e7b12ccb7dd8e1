//! The Ethernet edge of the router, for runtimes whose payloads speak Ethernet (VMs).
//!
//! Between nodes only IP packets travel. On the way in, Ethernet headers are stripped,
//! and ARP requests and IPv6 neighbour solicitations for known nodes are answered here
//! (the answer is delivered back to the local node), so address resolution never
//! leaves the machine. On the way out, a header with yagna's MACs is put back on.

use std::net::{IpAddr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags,
    NdiscRepr, RawHardwareAddress,
};

use super::{DropReason, LOCAL, Router};
use crate::node_id::NodeId;
use crate::wire::{ETHERNET_HEADER_LEN, IpPacket, MAX_PACKET_LEN, group_mac, payload_mac};

/// A frame for the local payload: an IP packet, with an Ethernet header in front of it
/// in Ethernet mode. The packet bytes are borrowed from the router's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The Ethernet header to put in front of `packet` (Ethernet mode only).
    pub header: Option<[u8; ETHERNET_HEADER_LEN]>,
    /// The IP packet.
    pub packet: &'a [u8],
}

impl<'a> Frame<'a> {
    pub(super) fn ip(packet: &'a [u8]) -> Self {
        Frame {
            header: None,
            packet,
        }
    }

    pub(super) fn ethernet(
        ip: &IpPacket<'a>,
        src: IpAddr,
        dst: IpAddr,
        group: bool,
        from_requestor: bool,
        local_requestor: bool,
    ) -> Self {
        let dst_mac = if group {
            group_mac(dst)
        } else {
            payload_mac(dst, local_requestor)
        };
        let ethertype = match ip {
            IpPacket::V4(_) => EthernetProtocol::Ipv4,
            IpPacket::V6(_) => EthernetProtocol::Ipv6,
        };
        let mut header = [0u8; ETHERNET_HEADER_LEN];
        EthernetRepr {
            src_addr: payload_mac(src, from_requestor),
            dst_addr: dst_mac,
            ethertype,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut header[..]));
        Frame {
            header: Some(header),
            packet: ip.bytes(),
        }
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.header.map_or(0, |h| h.len()) + self.packet.len()
    }

    /// True if the frame has no bytes (never, for a routed frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the frame into `out`, which must be exactly [`Frame::len`] bytes long.
    pub fn write_to(&self, out: &mut [u8]) {
        let at = match &self.header {
            Some(h) => {
                out[..h.len()].copy_from_slice(h);
                h.len()
            }
            None => 0,
        };
        out[at..].copy_from_slice(self.packet);
    }

    /// The frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        self.write_to(&mut v);
        v
    }
}

impl Router {
    pub(super) fn inject_ethernet<F: FnMut(&NodeId, &[u8])>(
        &mut self,
        frame: &[u8],
        deliver: F,
    ) -> Result<usize, DropReason> {
        if frame.is_empty() {
            return Err(DropReason::Empty);
        }
        if frame.len() > MAX_PACKET_LEN + ETHERNET_HEADER_LEN {
            return Err(DropReason::Oversized);
        }
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
        let body = &frame[ETHERNET_HEADER_LEN..];
        match eth.ethertype() {
            EthernetProtocol::Arp => self.answer_arp(body, deliver),
            EthernetProtocol::Ipv4 => {
                let ip = IpPacket::parse_v4(body).map_err(DropReason::from)?;
                self.route(ip, deliver)
            }
            EthernetProtocol::Ipv6 => {
                let ip = IpPacket::parse_v6(body).map_err(DropReason::from)?;
                match self.neighbor_solicit_target(&ip) {
                    Some(target) => self.answer_solicit(&ip, target, eth.src_addr(), deliver),
                    None => self.route(ip, deliver),
                }
            }
            _ => Err(DropReason::UnsupportedEtherType),
        }
    }

    /// Delivers `frame` to the local payload and counts it.
    fn deliver_local<F: FnMut(&NodeId, &[u8])>(&mut self, frame: &[u8], mut deliver: F) -> usize {
        let local = self.entry_mut(LOCAL);
        local.counters.count_out(frame.len());
        deliver(&local.id, frame);
        1
    }

    /// The MAC of the remote node holding `ip`, if a remote node holds it.
    fn remote_mac(&self, ip: IpAddr) -> Option<EthernetAddress> {
        match self.slot_of_ip(ip) {
            Some(slot) if slot != LOCAL => Some(payload_mac(ip, self.entry(slot).requestor)),
            _ => None,
        }
    }

    fn answer_arp<F: FnMut(&NodeId, &[u8])>(
        &mut self,
        body: &[u8],
        deliver: F,
    ) -> Result<usize, DropReason> {
        let packet = ArpPacket::new_checked(body).map_err(|_| DropReason::Truncated)?;
        let Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) = ArpRepr::parse(&packet)
        else {
            return Err(DropReason::ArpUnanswered);
        };
        let target_mac = self
            .remote_mac(IpAddr::V4(target_protocol_addr))
            .ok_or(DropReason::ArpUnanswered)?;
        let reply = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: target_mac,
            source_protocol_addr: target_protocol_addr,
            target_hardware_addr: source_hardware_addr,
            target_protocol_addr: source_protocol_addr,
        };
        let mut frame = [0u8; ETHERNET_HEADER_LEN + 28];
        EthernetRepr {
            src_addr: target_mac,
            dst_addr: source_hardware_addr,
            ethertype: EthernetProtocol::Arp,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        reply.emit(&mut ArpPacket::new_unchecked(
            &mut frame[ETHERNET_HEADER_LEN..],
        ));
        self.entry_mut(LOCAL)
            .counters
            .count_in(body.len() + ETHERNET_HEADER_LEN);
        Ok(self.deliver_local(&frame, deliver))
    }

    /// The target of `ip` if it is a valid ICMPv6 neighbour solicitation.
    fn neighbor_solicit_target(&self, ip: &IpPacket<'_>) -> Option<Ipv6Addr> {
        let header = Ipv6Packet::new_unchecked(ip.bytes());
        if header.next_header() != IpProtocol::Icmpv6 {
            return None;
        }
        let icmp = Icmpv6Packet::new_checked(header.payload()).ok()?;
        let repr = Icmpv6Repr::parse(
            &header.src_addr(),
            &header.dst_addr(),
            &icmp,
            &ChecksumCapabilities::default(),
        )
        .ok()?;
        match repr {
            Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. }) => Some(target_addr),
            _ => None,
        }
    }

    fn answer_solicit<F: FnMut(&NodeId, &[u8])>(
        &mut self,
        ip: &IpPacket<'_>,
        target: Ipv6Addr,
        requester_mac: EthernetAddress,
        deliver: F,
    ) -> Result<usize, DropReason> {
        let target_mac = self
            .remote_mac(IpAddr::V6(target))
            .ok_or(DropReason::NdiscUnanswered)?;
        let header = Ipv6Packet::new_unchecked(ip.bytes());
        let asker = header.src_addr();
        // Duplicate address detection asks from "::": answer to all-nodes, unsolicited.
        let (dst_ip, flags) = if asker.is_unspecified() {
            (
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
                NdiscNeighborFlags::OVERRIDE,
            )
        } else {
            (
                asker,
                NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
            )
        };
        let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags,
            target_addr: target,
            lladdr: Some(RawHardwareAddress::from(target_mac)),
        });
        let ip_repr = Ipv6Repr {
            src_addr: target,
            dst_addr: dst_ip,
            next_header: IpProtocol::Icmpv6,
            payload_len: icmp.buffer_len(),
            hop_limit: 255,
        };
        let dst_mac = if asker.is_unspecified() {
            group_mac(IpAddr::V6(dst_ip))
        } else {
            requester_mac
        };
        let mut frame = vec![0u8; ETHERNET_HEADER_LEN + ip_repr.buffer_len() + ip_repr.payload_len];
        EthernetRepr {
            src_addr: target_mac,
            dst_addr: dst_mac,
            ethertype: EthernetProtocol::Ipv6,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
        let mut packet = Ipv6Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]);
        ip_repr.emit(&mut packet);
        icmp.emit(
            &target,
            &dst_ip,
            &mut Icmpv6Packet::new_unchecked(packet.payload_mut()),
            &ChecksumCapabilities::default(),
        );
        self.entry_mut(LOCAL)
            .counters
            .count_in(ip.bytes().len() + ETHERNET_HEADER_LEN);
        Ok(self.deliver_local(&frame, deliver))
    }
}
