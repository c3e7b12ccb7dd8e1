//! Builders of well-formed frames with correct checksums, for tests, benches and demos.
//!
//! Everything here emits through `smoltcp::wire` representations, so the bytes are what a
//! real stack would send.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr,
    NdiscRepr, RawHardwareAddress, UdpPacket, UdpRepr,
};

/// An IPv4/UDP packet from `src:sport` to `dst:dport` carrying `payload`.
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut pkt = Ipv4Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut pkt, &caps);
    let mut u = UdpPacket::new_unchecked(pkt.payload_mut());
    udp.emit(
        &mut u,
        &src.into(),
        &dst.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// An IPv6/UDP packet from `src:sport` to `dst:dport` carrying `payload`.
pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: sport,
        dst_port: dport,
    };
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut buf = vec![0u8; ip.buffer_len() + ip.payload_len];
    let caps = ChecksumCapabilities::default();
    let mut pkt = Ipv6Packet::new_unchecked(&mut buf[..]);
    ip.emit(&mut pkt);
    let mut u = UdpPacket::new_unchecked(pkt.payload_mut());
    udp.emit(
        &mut u,
        &src.into(),
        &dst.into(),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &caps,
    );
    buf
}

/// Wraps `payload` in an Ethernet II header.
pub fn ethernet(
    src: EthernetAddress,
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload: &[u8],
) -> Vec<u8> {
    let repr = EthernetRepr {
        src_addr: src,
        dst_addr: dst,
        ethertype,
    };
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    repr.emit(&mut frame);
    frame.payload_mut().copy_from_slice(payload);
    buf
}

/// An Ethernet frame carrying an ARP request: who has `target`? tell `sender_ip`.
pub fn arp_request(sender_mac: EthernetAddress, sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: sender_mac,
        source_protocol_addr: sender_ip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut body = vec![0u8; arp.buffer_len()];
    arp.emit(&mut ArpPacket::new_unchecked(&mut body[..]));
    ethernet(
        sender_mac,
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
        &body,
    )
}

/// The solicited-node multicast address of `target` (`ff02::1:ffXX:XXXX`).
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let o = target.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// An Ethernet frame carrying an ICMPv6 Neighbour Solicitation for `target` from
/// `src_ip` (with a source link-layer address option), sent to the solicited-node group.
pub fn neighbor_solicit(src_mac: EthernetAddress, src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let dst_ip = solicited_node(target);
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(src_mac)),
    });
    let ip = Ipv6Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp.buffer_len(),
        hop_limit: 255,
    };
    let mut body = vec![0u8; ip.buffer_len() + ip.payload_len];
    let mut pkt = Ipv6Packet::new_unchecked(&mut body[..]);
    ip.emit(&mut pkt);
    icmp.emit(
        &src_ip,
        &dst_ip,
        &mut Icmpv6Packet::new_unchecked(pkt.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    ethernet(
        src_mac,
        crate::wire::group_mac(dst_ip.into()),
        EthernetProtocol::Ipv6,
        &body,
    )
}
