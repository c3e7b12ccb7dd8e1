//! `wire`: the IP parsers every frame goes through first (`IpPacket::parse`, `parse_v4`,
//! `parse_v6`) and the builders, on the whole input as one packet.
//!
//! Checks: a parsed packet is a prefix of the input, parses again to itself, agrees with
//! smoltcp's own checked view and with the version-specific parsers; a rejected one is
//! rejected by the version-specific parser too, with the same error. The builders, fed
//! addresses and payload from the input, emit packets that parse back to those fields
//! with valid checksums.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use golem_vpn::wire::{self, IpPacket, MAX_PACKET_LEN, WireError, build};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv6Packet, Icmpv6Repr, IpAddress, Ipv4Packet, Ipv6Packet, NdiscRepr, UdpPacket,
};

/// The target's body.
pub fn run(data: &[u8]) {
    check_parse(data);
    check_builders(data);
}

fn check_parse(data: &[u8]) {
    let parsed = IpPacket::parse(data);
    match parsed {
        Ok(ip) => {
            let b = ip.bytes();
            assert!(data.starts_with(b), "the packet is a prefix of the buffer");
            let again = IpPacket::parse(b).expect("a parsed packet parses again");
            assert_eq!(again.bytes(), b);
            assert_eq!((again.src(), again.dst()), (ip.src(), ip.dst()));
            match ip {
                IpPacket::V4(_) => {
                    assert_eq!(IpPacket::parse_v4(data).map(|p| p.bytes()), Ok(b));
                    assert!(IpPacket::parse_v6(data).is_err());
                    let view = Ipv4Packet::new_checked(b).expect("smoltcp accepts it too");
                    assert_eq!(usize::from(view.total_len()), b.len());
                    assert!(view.verify_checksum());
                    assert_eq!(ip.src(), IpAddr::V4(view.src_addr()));
                }
                IpPacket::V6(_) => {
                    assert_eq!(IpPacket::parse_v6(data).map(|p| p.bytes()), Ok(b));
                    assert!(IpPacket::parse_v4(data).is_err());
                    let view = Ipv6Packet::new_checked(b).expect("smoltcp accepts it too");
                    assert_eq!(40 + usize::from(view.payload_len()), b.len());
                    assert_eq!(ip.dst(), IpAddr::V6(view.dst_addr()));
                }
            }
        }
        Err(e) => {
            match e {
                WireError::Empty => assert!(data.is_empty()),
                WireError::Oversized(n) => assert!(n == data.len() && n > MAX_PACKET_LEN),
                _ => assert!(!data.is_empty() && data.len() <= MAX_PACKET_LEN),
            }
            match data.first().map(|b| b >> 4) {
                Some(4) => assert_eq!(IpPacket::parse_v4(data).err(), Some(e)),
                Some(6) => assert_eq!(IpPacket::parse_v6(data).err(), Some(e)),
                _ => {}
            }
        }
    }
}

fn take<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = data.get(at + i).copied().unwrap_or(0);
    }
    out
}

fn check_builders(data: &[u8]) {
    let payload = data.get(36..).unwrap_or(&[]);
    let (sport, dport) = (
        u16::from_be_bytes(take(data, 32)),
        u16::from_be_bytes(take(data, 34)),
    );

    let (s4, d4) = (
        Ipv4Addr::from(take::<4>(data, 0)),
        Ipv4Addr::from(take::<4>(data, 4)),
    );
    let p = build::udp_v4(s4, d4, sport, dport, payload);
    let ip = IpPacket::parse(&p).expect("udp_v4 builds a valid packet");
    assert_eq!((ip.src(), ip.dst()), (IpAddr::V4(s4), IpAddr::V4(d4)));
    assert_eq!(ip.bytes().len(), p.len());
    check_udp(
        Ipv4Packet::new_checked(&p[..]).unwrap().payload(),
        s4.into(),
        d4.into(),
        sport,
        dport,
        payload,
    );

    let (s6, d6) = (
        Ipv6Addr::from(take::<16>(data, 0)),
        Ipv6Addr::from(take::<16>(data, 16)),
    );
    let p = build::udp_v6(s6, d6, sport, dport, payload);
    let ip = IpPacket::parse(&p).expect("udp_v6 builds a valid packet");
    assert_eq!((ip.src(), ip.dst()), (IpAddr::V6(s6), IpAddr::V6(d6)));
    check_udp(
        Ipv6Packet::new_checked(&p[..]).unwrap().payload(),
        s6.into(),
        d6.into(),
        sport,
        dport,
        payload,
    );

    let mac = EthernetAddress(take(data, 8));
    let f = build::arp_request(mac, s4, d4);
    let eth = EthernetFrame::new_checked(&f[..]).expect("an Ethernet frame");
    assert_eq!(eth.ethertype(), EthernetProtocol::Arp);
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).expect("ARP")) {
        Ok(ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        }) => {
            assert_eq!(
                (
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr
                ),
                (mac, s4, d4)
            );
        }
        other => panic!("arp_request built {other:?}"),
    }

    let f = build::neighbor_solicit(mac, s6, d6);
    let eth = EthernetFrame::new_checked(&f[..]).expect("an Ethernet frame");
    let ip = IpPacket::parse_v6(eth.payload()).expect("a valid IPv6 packet");
    let header = Ipv6Packet::new_checked(ip.bytes()).unwrap();
    assert_eq!(eth.dst_addr(), wire::group_mac(header.dst_addr().into()));
    let icmp = Icmpv6Packet::new_checked(header.payload()).expect("ICMPv6");
    let repr = Icmpv6Repr::parse(
        &header.src_addr(),
        &header.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    );
    match repr {
        Ok(Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, .. })) => {
            assert_eq!(target_addr, d6)
        }
        other => panic!("neighbor_solicit built {other:?}"),
    }

    for ip in [IpAddr::V4(s4), IpAddr::V6(s6)] {
        let mac = wire::payload_mac(ip, data.first().is_some_and(|b| b & 1 == 1));
        assert!(mac.is_unicast(), "{ip}: a node's MAC is unicast");
        let group = wire::group_mac(ip);
        assert!(!group.is_unicast(), "{ip}: a group MAC is not unicast");
    }
}

fn check_udp(
    segment: &[u8],
    src: IpAddress,
    dst: IpAddress,
    sport: u16,
    dport: u16,
    payload: &[u8],
) {
    let udp = UdpPacket::new_checked(segment).expect("a UDP datagram");
    assert!(udp.verify_checksum(&src, &dst), "the UDP checksum is right");
    assert_eq!((udp.src_port(), udp.dst_port()), (sport, dport));
    assert_eq!(udp.payload(), payload);
}

/// Seeds: real packets of each family and protocol, one padded as Ethernet pads.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let s4 = Ipv4Addr::new(10, 7, 0, 1);
    let d4 = Ipv4Addr::new(10, 7, 0, 2);
    let s6 = Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, 1);
    let d6 = Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, 2);
    let mut seeds = vec![
        (
            "udp4".to_string(),
            build::udp_v4(s4, d4, 4000, 53, b"query"),
        ),
        ("udp6".into(), build::udp_v6(s6, d6, 4000, 53, b"query")),
    ];
    let mut padded = build::udp_v4(s4, d4, 1, 2, b"");
    padded.extend_from_slice(&[0; 18]);
    seeds.push(("udp4_padded".into(), padded));
    let mut bad = build::udp_v4(s4, d4, 1, 2, b"x");
    bad[10] ^= 0xff;
    seeds.push(("udp4_bad_checksum".into(), bad));
    // A client stack's first packets: TCP SYNs and a ping, each family.
    for (name, ops) in crate::stack::seeds() {
        let mut input = crate::Input::new(&ops);
        if let (Some(0), f) = (input.byte(), input.frame()) {
            seeds.push((format!("{name}_first"), f.to_vec()));
        }
    }
    seeds
}
