//! `router_ip`, `router_ethernet`: `Router::inject` and `Router::receive` in each medium,
//! with table changes in between, on a network of the local node and two remote ones (B
//! the requestor).
//!
//! Ops (op byte modulo 8): 0-3 inject a frame; 4 receive a packet from A; 5 from B; 6 from
//! a node that is not in the network (or the local node itself, by bit 3); 7 a table
//! change (add C at an address from the input, remove A or C, readdress A).
//!
//! Checks: `injected`/`received` count every call and the drop counters every refusal;
//! `inject`'s count is the number of deliveries; a delivery to a remote node is a valid IP
//! packet whose source is a local address, cut from the frame, never to the local node
//! (except ARP / neighbour advertisements in Ethernet mode, which must parse); a received
//! packet is passed on unchanged (behind a header of the right EtherType in Ethernet mode)
//! only when its source belongs to the sender and its destination is the local node or a
//! group.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use golem_vpn::wire::{IpPacket, build};
use golem_vpn::{Medium, NodeId, Router, RouterConfig};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, Icmpv6Packet, Icmpv6Repr,
    Ipv6Packet,
};

use crate::{Input, put_frame};

/// The network's id.
pub const NETWORK: &str = "0123456789abcdef0123456789abcdef";
/// The local node.
pub const LOCAL: NodeId = NodeId([1; 20]);
/// Remote node A.
pub const A: NodeId = NodeId([2; 20]);
/// Remote node B, the requestor.
pub const B: NodeId = NodeId([3; 20]);
/// A node added and removed by table-change ops.
pub const C: NodeId = NodeId([4; 20]);
/// A node never in the network.
pub const STRANGER: NodeId = NodeId([9; 20]);

/// Address `n` of the IPv4 range.
pub fn v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 7, 0, n)
}

/// Address `n` of the IPv6 range.
pub fn v6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 7, 0, 0, 0, 0, 0, u16::from(n))
}

/// The router every run starts from: local .1, A .2 (both families), B .3 (IPv4).
pub fn router(medium: Medium) -> Router {
    let mut r = Router::new(RouterConfig {
        network_id: NETWORK.into(),
        cidrs: vec![
            "10.7.0.0/24".parse().unwrap(),
            "fd00:7::/64".parse().unwrap(),
        ],
        local_node: LOCAL,
        local_ips: vec![v4(1).into(), v6(1).into()],
        medium,
        requestor: Some(B),
    })
    .expect("a valid configuration");
    r.add_node(A, v4(2).into()).unwrap();
    r.add_node(A, v6(2).into()).unwrap();
    r.add_node(B, v4(3).into()).unwrap();
    r
}

/// The target's body in IP mode.
pub fn run_ip(data: &[u8]) {
    run(Medium::Ip, data);
}

/// The target's body in Ethernet mode.
pub fn run_ethernet(data: &[u8]) {
    run(Medium::Ethernet, data);
}

fn run(medium: Medium, data: &[u8]) {
    let mut r = router(medium);
    let mut input = Input::new(data);
    let (mut injected, mut received, mut dropped) = (0u64, 0u64, 0u64);
    while let Some(op) = input.byte() {
        match op % 8 {
            0..=3 => {
                let frame = input.frame();
                injected += 1;
                let mut deliveries: Vec<(NodeId, Vec<u8>)> = Vec::new();
                let result = r.inject(frame, |node, bytes| {
                    deliveries.push((*node, bytes.to_vec()))
                });
                match result {
                    Ok(n) => {
                        assert_eq!(n, deliveries.len(), "inject's count is its deliveries");
                        for (node, bytes) in &deliveries {
                            check_delivery(&r, medium, frame, node, bytes);
                        }
                    }
                    Err(_) => {
                        dropped += 1;
                        assert!(deliveries.is_empty(), "a dropped frame delivers nothing");
                    }
                }
            }
            4..=6 => {
                let from = match op % 8 {
                    4 => A,
                    5 => B,
                    _ if op & 8 == 0 => STRANGER,
                    _ => LOCAL,
                };
                let packet = input.frame();
                received += 1;
                match r.receive(packet, &from) {
                    Ok(frame) => check_received(
                        &r,
                        medium,
                        packet,
                        &from,
                        &frame.to_vec(),
                        frame.header.is_some(),
                    ),
                    Err(_) => dropped += 1,
                }
            }
            _ => {
                let arg = input.byte().unwrap_or(0);
                match arg % 4 {
                    0 => {
                        let ip: IpAddr = if arg & 4 == 0 {
                            v4(input.byte().unwrap_or(0)).into()
                        } else {
                            v6(input.byte().unwrap_or(0)).into()
                        };
                        let before = r.node_of(ip);
                        match r.add_node(C, ip) {
                            Ok(_) => assert_eq!(r.node_of(ip), Some(C)),
                            Err(_) => {
                                assert_eq!(r.node_of(ip), before, "a refused add changes nothing")
                            }
                        }
                    }
                    1 => {
                        let _ = r.remove_node(&C);
                        assert!(r.node_ips(&C).is_none());
                    }
                    2 => {
                        let _ = r.remove_node(&A);
                        assert!(r.node_ips(&A).is_none());
                    }
                    _ => {
                        let ip: IpAddr = v4(input.byte().unwrap_or(0)).into();
                        if r.readdress(&A, &[ip]) == Ok(true) {
                            assert_eq!(r.node_ips(&A), Some(&[ip][..]));
                            assert_eq!(r.node_of(ip), Some(A));
                        }
                    }
                }
                assert!(r.remove_node(&LOCAL).is_err(), "the local node stays");
            }
        }
        let stats = r.stats();
        assert_eq!((stats.injected, stats.received), (injected, received));
        assert_eq!(
            stats.drops.total(),
            dropped,
            "every refusal is counted once"
        );
        assert_eq!(stats.nodes.first().map(|n| n.0), Some(LOCAL));
    }
}

fn check_delivery(r: &Router, medium: Medium, frame: &[u8], node: &NodeId, bytes: &[u8]) {
    if *node == LOCAL {
        // Only the router's own answers go back to the local payload.
        assert_eq!(
            medium,
            Medium::Ethernet,
            "IP mode never delivers to the local node"
        );
        let eth = EthernetFrame::new_checked(bytes).expect("an answer is an Ethernet frame");
        match eth.ethertype() {
            EthernetProtocol::Arp => {
                let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).expect("ARP"));
                assert!(arp.is_ok(), "the ARP reply parses");
            }
            EthernetProtocol::Ipv6 => {
                let ip =
                    IpPacket::parse_v6(eth.payload()).expect("the advertisement's IPv6 header");
                let h = Ipv6Packet::new_checked(ip.bytes()).unwrap();
                let icmp = Icmpv6Packet::new_checked(h.payload()).expect("ICMPv6");
                let repr = Icmpv6Repr::parse(
                    &h.src_addr(),
                    &h.dst_addr(),
                    &icmp,
                    &ChecksumCapabilities::default(),
                );
                assert!(repr.is_ok(), "the neighbour advertisement parses: {repr:?}");
                // It speaks for a remote node's address, never the local one's.
                let holder = r.node_of(h.src_addr().into());
                assert!(
                    holder.is_some_and(|n| n != LOCAL),
                    "advertised {}",
                    h.src_addr()
                );
            }
            other => panic!("local answer of EtherType {other}"),
        }
        return;
    }
    let body = match medium {
        Medium::Ip => frame,
        Medium::Ethernet => &frame[14..],
    };
    let ip = IpPacket::parse(body).expect("what is delivered was a valid packet");
    assert_eq!(
        ip.bytes(),
        bytes,
        "the delivery is the packet, cut from the frame"
    );
    assert_eq!(
        r.node_of(ip.src()),
        Some(LOCAL),
        "the source is a local address"
    );
    assert!(
        r.node_ips(node).is_some(),
        "deliveries go to nodes in the network"
    );
}

fn check_received(
    r: &Router,
    medium: Medium,
    packet: &[u8],
    from: &NodeId,
    out: &[u8],
    has_header: bool,
) {
    let ip = IpPacket::parse(packet).expect("only valid packets pass");
    assert_ne!(*from, LOCAL, "the local node is not heard as a remote one");
    assert_eq!(
        r.node_of(ip.src()),
        Some(*from),
        "the source belongs to the sender"
    );
    let dst = ip.dst();
    let group = match dst {
        IpAddr::V4(d) => d.is_multicast() || d.is_broadcast() || d == v4(255),
        IpAddr::V6(d) => d.is_multicast(),
    };
    assert!(
        r.node_of(dst) == Some(LOCAL) || group,
        "{dst} is the local node's or a group"
    );
    match medium {
        Medium::Ip => {
            assert!(!has_header);
            assert_eq!(out, ip.bytes());
        }
        Medium::Ethernet => {
            assert!(has_header);
            let eth = EthernetFrame::new_checked(out).expect("an Ethernet frame");
            assert_eq!(eth.payload(), ip.bytes());
            let want = match ip {
                IpPacket::V4(_) => EthernetProtocol::Ipv4,
                IpPacket::V6(_) => EthernetProtocol::Ipv6,
            };
            assert_eq!(eth.ethertype(), want);
            assert!(!eth.src_addr().is_broadcast());
        }
    }
}

/// Seeds: real frames of each kind, each as one op (and a short conversation).
pub fn seeds(medium: Medium) -> Vec<(String, Vec<u8>)> {
    let udp4 = build::udp_v4(v4(1), v4(2), 4000, 53, b"query");
    let udp6 = build::udp_v6(v6(1), v6(2), 4000, 53, b"query6");
    let bcast = build::udp_v4(v4(1), v4(255), 68, 67, b"broadcast");
    let mcast6 = build::udp_v6(
        v6(1),
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        5353,
        5353,
        b"mdns",
    );
    let from_a = build::udp_v4(v4(2), v4(1), 53, 4000, b"answer");
    let from_a6 = build::udp_v6(v6(2), v6(1), 53, 4000, b"answer6");
    let from_b = build::udp_v4(v4(3), v4(1), 7, 7, b"from the requestor");
    let spoofed = build::udp_v4(v4(3), v4(1), 7, 7, b"spoofed");
    let mac = EthernetAddress([0x90, 0x13, 10, 7, 0, 1]);
    let eth = |ip: &[u8], v6: bool| -> Vec<u8> {
        let t = if v6 {
            EthernetProtocol::Ipv6
        } else {
            EthernetProtocol::Ipv4
        };
        build::ethernet(mac, EthernetAddress([0x90, 0x13, 10, 7, 0, 2]), t, ip)
    };
    let out = |frames: &[(u8, &[u8])]| {
        let mut v = Vec::new();
        for (op, f) in frames {
            v.push(*op);
            put_frame(&mut v, f);
        }
        v
    };
    let (i4, i6, b4) = match medium {
        Medium::Ip => (udp4.clone(), udp6.clone(), bcast.clone()),
        Medium::Ethernet => (eth(&udp4, false), eth(&udp6, true), eth(&bcast, false)),
    };
    let mut seeds = vec![
        ("inject_udp4".to_string(), out(&[(0, &i4)])),
        ("inject_udp6".into(), out(&[(0, &i6)])),
        ("inject_broadcast".into(), out(&[(0, &b4)])),
        ("receive_from_a".into(), out(&[(4, &from_a), (4, &from_a6)])),
        ("receive_from_b".into(), out(&[(5, &from_b)])),
        (
            "receive_spoofed".into(),
            out(&[(4, &spoofed), (6, &from_a)]),
        ),
        (
            "conversation".into(),
            out(&[(0, &i4), (4, &from_a), (7, &[0, 9]), (1, &i6), (5, &from_b)]),
        ),
    ];
    match medium {
        Medium::Ip => seeds.push(("inject_multicast6".into(), out(&[(0, &mcast6)]))),
        Medium::Ethernet => {
            seeds.push((
                "arp_request".into(),
                out(&[(0, &build::arp_request(mac, v4(1), v4(2)))]),
            ));
            seeds.push((
                "neighbor_solicit".into(),
                out(&[(0, &build::neighbor_solicit(mac, v6(1), v6(2)))]),
            ));
            seeds.push((
                "dad_solicit".into(),
                out(&[(
                    0,
                    &build::neighbor_solicit(mac, Ipv6Addr::UNSPECIFIED, v6(2)),
                )]),
            ));
            seeds.push(("inject_multicast6".into(), out(&[(0, &eth(&mcast6, true))])));
        }
    }
    seeds
}
