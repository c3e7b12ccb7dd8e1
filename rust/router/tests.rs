use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use smoltcp::wire::{EthernetAddress, EthernetProtocol};

use super::*;
use crate::wire::build::{arp_request, ethernet, neighbor_solicit, udp_v4, udp_v6};

const NET: &str = "net-1";

fn id(n: u8) -> NodeId {
    NodeId([n; 20])
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, last)
}

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last)
}

/// Local node 1 at .1/::1; remote nodes 2 and 3 at .2/::2 and .3/::3; node 4 IPv4 only.
fn router(medium: Medium) -> Router {
    let mut r = Router::new(RouterConfig {
        network_id: NET.into(),
        cidrs: vec![
            "192.168.0.0/24".parse().unwrap(),
            "fd00::/64".parse().unwrap(),
        ],
        local_node: id(1),
        local_ips: vec![v4(1).into(), v6(1).into()],
        medium,
        requestor: Some(id(2)),
    })
    .unwrap();
    for n in [2u8, 3] {
        r.add_node(id(n), v4(n).into()).unwrap();
        r.add_node(id(n), v6(u16::from(n)).into()).unwrap();
    }
    r.add_node(id(4), v4(4).into()).unwrap();
    r
}

fn inject(r: &mut Router, frame: &[u8]) -> Result<Vec<(NodeId, Vec<u8>)>, DropReason> {
    let mut out = Vec::new();
    let n = r.inject(frame, |node, p| out.push((*node, p.to_vec())))?;
    assert_eq!(n, out.len());
    Ok(out)
}

#[test]
fn unicast_goes_to_the_holder_unchanged() {
    let mut r = router(Medium::Ip);
    let pkt = udp_v4(v4(1), v4(3), 1000, 2000, b"payload");
    assert_eq!(inject(&mut r, &pkt).unwrap(), vec![(id(3), pkt.clone())]);
    let pkt6 = udp_v6(v6(1), v6(2), 1000, 2000, b"payload6");
    assert_eq!(inject(&mut r, &pkt6).unwrap(), vec![(id(2), pkt6.clone())]);
    let s = r.stats();
    assert_eq!(s.injected, 2);
    assert_eq!(s.drops.total(), 0);
    let c3 = s.nodes.iter().find(|(n, _)| *n == id(3)).unwrap().1;
    assert_eq!((c3.packets_out, c3.bytes_out), (1, pkt.len() as u64));
    let local = s.nodes[0].1;
    assert_eq!(
        (local.packets_in, local.bytes_in),
        (2, (pkt.len() + pkt6.len()) as u64)
    );
}

#[test]
fn broadcast_fans_out_to_every_other_node_of_the_family() {
    let mut r = router(Medium::Ip);
    for dst in [Ipv4Addr::BROADCAST, v4(255), Ipv4Addr::new(224, 0, 0, 251)] {
        let pkt = udp_v4(v4(1), dst, 5353, 5353, b"hello all");
        let mut got: Vec<_> = inject(&mut r, &pkt)
            .unwrap()
            .into_iter()
            .map(|(n, p)| {
                assert_eq!(p, pkt);
                n
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![id(2), id(3), id(4)], "dst {dst}");
    }
    // IPv6 multicast skips node 4, which has no IPv6 address.
    let pkt = udp_v6(v6(1), "ff02::fb".parse().unwrap(), 5353, 5353, b"mdns");
    let mut got: Vec<_> = inject(&mut r, &pkt)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    got.sort();
    assert_eq!(got, vec![id(2), id(3)]);
}

#[test]
fn spoofed_unknown_and_outside_destinations_are_dropped_and_counted() {
    let mut r = router(Medium::Ip);
    let cases = [
        (udp_v4(v4(2), v4(3), 1, 2, b"x"), DropReason::SpoofedSource),
        (udp_v4(v4(99), v4(3), 1, 2, b"x"), DropReason::SpoofedSource),
        (
            udp_v6("fe80::1".parse().unwrap(), v6(2), 1, 2, b"x"),
            DropReason::LinkLocalSource,
        ),
        (
            udp_v4(v4(1), v4(77), 1, 2, b"x"),
            DropReason::UnknownDestination,
        ),
        (
            udp_v4(v4(1), Ipv4Addr::new(8, 8, 8, 8), 1, 2, b"x"),
            DropReason::NoRoute,
        ),
        (
            udp_v4(v4(1), v4(1), 1, 2, b"x"),
            DropReason::LocalDestination,
        ),
    ];
    for (pkt, reason) in &cases {
        let before = r.drops().get(*reason);
        assert_eq!(inject(&mut r, pkt).unwrap_err(), *reason);
        assert_eq!(r.drops().get(*reason), before + 1);
    }
    assert_eq!(r.drops().total(), cases.len() as u64);
}

#[test]
fn malformed_frames_are_counted_by_reason() {
    let mut r = router(Medium::Ip);
    let good = udp_v4(v4(1), v4(2), 1, 2, b"abc");
    let mut bad_sum = good.clone();
    bad_sum[11] ^= 0x5a;
    let mut bad_ver = good.clone();
    bad_ver[0] = 0x35;
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![], DropReason::Empty),
        (vec![0x45], DropReason::Truncated),
        (good[..19].to_vec(), DropReason::Truncated),
        (good[..good.len() - 1].to_vec(), DropReason::Truncated),
        (bad_sum, DropReason::BadChecksum),
        (bad_ver, DropReason::BadVersion),
        (vec![0x45; 65536], DropReason::Oversized),
    ];
    for (frame, reason) in cases {
        assert_eq!(inject(&mut r, &frame).unwrap_err(), reason);
        assert_eq!(r.receive(&frame, &id(2)).unwrap_err(), reason);
    }
    // The largest legal packet still routes.
    let big = udp_v4(v4(1), v4(2), 1, 2, &vec![1u8; 65535 - 28]);
    assert_eq!(big.len(), 65535);
    assert_eq!(inject(&mut r, &big).unwrap().len(), 1);
}

#[test]
fn receive_checks_sender_source_and_destination() {
    let mut r = router(Medium::Ip);
    let pkt = udp_v4(v4(2), v4(1), 1, 2, b"for you");
    let frame = r.receive(&pkt, &id(2)).unwrap();
    assert_eq!(frame.header, None);
    assert_eq!(frame.packet, &pkt[..]);
    assert_eq!(
        r.receive(&pkt, &id(3)).unwrap_err(),
        DropReason::SpoofedSource
    );
    assert_eq!(
        r.receive(&pkt, &id(9)).unwrap_err(),
        DropReason::UnknownNode
    );
    assert_eq!(
        r.receive(&pkt, &id(1)).unwrap_err(),
        DropReason::UnknownNode
    );
    let other = udp_v4(v4(2), v4(3), 1, 2, b"not for you");
    assert_eq!(r.receive(&other, &id(2)).unwrap_err(), DropReason::NotForUs);
    let bcast = udp_v4(v4(2), v4(255), 1, 2, b"all");
    assert!(r.receive(&bcast, &id(2)).is_ok());
    let mcast = udp_v6(v6(3), "ff02::1".parse().unwrap(), 1, 2, b"all6");
    assert!(r.receive(&mcast, &id(3)).is_ok());
    // A removed node is not heard any more, and nothing is sent to it.
    assert!(r.remove_node(&id(2)).unwrap());
    assert_eq!(
        r.receive(&pkt, &id(2)).unwrap_err(),
        DropReason::UnknownNode
    );
    let to_removed = udp_v4(v4(1), v4(2), 1, 2, b"x");
    assert_eq!(
        inject(&mut r, &to_removed).unwrap_err(),
        DropReason::UnknownDestination
    );
    assert!(!r.remove_node(&id(2)).unwrap());
}

#[test]
fn table_rules() {
    let mut r = router(Medium::Ip);
    let err = |r: &mut Router, ip: &str| r.add_node(id(9), ip.parse().unwrap()).unwrap_err();
    assert!(matches!(
        err(&mut r, "192.168.1.5"),
        RouterError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(&mut r, "fd01::5"),
        RouterError::OutOfRange { .. }
    ));
    for reserved in [
        "192.168.0.0",
        "192.168.0.255",
        "255.255.255.255",
        "224.0.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "fd00::",
        "ff02::1",
        "::1",
    ] {
        assert!(
            matches!(err(&mut r, reserved), RouterError::Reserved { .. }),
            "{reserved}"
        );
    }
    assert!(
        matches!(err(&mut r, "192.168.0.2"), RouterError::Taken { holder, .. } if holder == id(2))
    );
    assert!(!r.add_node(id(2), v4(2).into()).unwrap());
    assert!(r.add_node(id(2), v4(20).into()).unwrap());
    assert_eq!(r.node_ips(&id(2)).unwrap().len(), 3);
    assert_eq!(r.node_of(v4(20).into()), Some(id(2)));
    assert!(matches!(
        r.remove_node(&id(1)),
        Err(RouterError::RemoveLocal(_))
    ));
    r.remove_node(&id(2)).unwrap();
    assert!(
        r.add_node(id(9), v4(2).into()).unwrap(),
        "a freed address is reusable"
    );
    assert_eq!(r.node_of(v4(20).into()), None);
}

#[test]
fn small_prefixes_follow_python_hosts() {
    let mk = |cidr: &str, local: &str| {
        Router::new(RouterConfig {
            network_id: NET.into(),
            cidrs: vec![cidr.parse().unwrap()],
            local_node: id(1),
            local_ips: vec![local.parse().unwrap()],
            medium: Medium::Ip,
            requestor: None,
        })
    };
    let mut r31 = mk("10.0.0.0/31", "10.0.0.0").unwrap();
    assert!(r31.add_node(id(2), "10.0.0.1".parse().unwrap()).unwrap());
    assert!(mk("10.0.0.7/32", "10.0.0.7").is_ok());
    assert!(mk("fd00::/127", "fd00::").is_ok());
    assert!(matches!(
        mk("10.0.0.0/30", "10.0.0.3"),
        Err(RouterError::Reserved { .. })
    ));
    assert!(matches!(
        mk("10.0.0.0/30", "10.0.0.4"),
        Err(RouterError::OutOfRange { .. })
    ));
    assert!(matches!(
        Router::new(RouterConfig {
            network_id: NET.into(),
            cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.1.0.0/16".parse().unwrap()
            ],
            local_node: id(1),
            local_ips: vec!["10.0.0.1".parse().unwrap()],
            medium: Medium::Ip,
            requestor: None,
        }),
        Err(RouterError::Config(_))
    ));
}

const GUEST_MAC: EthernetAddress = EthernetAddress([0x90, 0x13, 192, 168, 0, 1]);

#[test]
fn arp_for_a_known_node_is_answered_locally_byte_exact() {
    let mut r = router(Medium::Ethernet);
    let req = arp_request(GUEST_MAC, v4(1), v4(3));
    let out = inject(&mut r, &req).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, id(1), "the answer goes back to the local payload");
    #[rustfmt::skip]
    let expected: Vec<u8> = [
        &[0x90, 0x13, 192, 168, 0, 1][..], &[0x90, 0x13, 192, 168, 0, 3], &[0x08, 0x06], // Ethernet
        &[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02],                       // ARP reply
        &[0x90, 0x13, 192, 168, 0, 3], &[192, 168, 0, 3],                 // sender: the target
        &[0x90, 0x13, 192, 168, 0, 1], &[192, 168, 0, 1],                 // target: the asker
    ].concat();
    assert_eq!(out[0].1, expected);
    // The requestor (node 2) answers with an a0:13 MAC.
    let out = inject(&mut r, &arp_request(GUEST_MAC, v4(1), v4(2))).unwrap();
    assert_eq!(&out[0].1[6..12], &[0xa0, 0x13, 192, 168, 0, 2]);
    // Unknown, gratuitous (own address) and non-request ARP are not answered.
    for target in [v4(77), v4(1)] {
        let err = inject(&mut r, &arp_request(GUEST_MAC, v4(1), target)).unwrap_err();
        assert_eq!(err, DropReason::ArpUnanswered);
    }
    let mut reply = req.clone();
    reply[14 + 7] = 2;
    assert_eq!(
        inject(&mut r, &reply).unwrap_err(),
        DropReason::ArpUnanswered
    );
    assert_eq!(
        inject(&mut r, &req[..20]).unwrap_err(),
        DropReason::Truncated
    );
}

#[test]
fn neighbor_solicitation_for_a_known_node_is_answered_locally() {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetFrame, Icmpv6Packet, Icmpv6Repr, Ipv6Packet, NdiscNeighborFlags, NdiscRepr,
        RawHardwareAddress,
    };

    let mut r = router(Medium::Ethernet);
    let ns = neighbor_solicit(GUEST_MAC, v6(1), v6(3));
    let out = inject(&mut r, &ns).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, id(1));
    let eth = EthernetFrame::new_checked(&out[0].1[..]).unwrap();
    assert_eq!(eth.dst_addr(), GUEST_MAC);
    assert_eq!(eth.src_addr(), EthernetAddress([0x90, 0x13, 0, 0, 0, 3]));
    assert_eq!(eth.ethertype(), EthernetProtocol::Ipv6);
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.hop_limit()),
        (v6(3), v6(1), 255)
    );
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    let repr = Icmpv6Repr::parse(
        &ip.src_addr(),
        &ip.dst_addr(),
        &icmp,
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    assert_eq!(
        repr,
        Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
            flags: NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE,
            target_addr: v6(3),
            lladdr: Some(RawHardwareAddress::from(EthernetAddress([
                0x90, 0x13, 0, 0, 0, 3
            ]))),
        })
    );
    let unknown = neighbor_solicit(GUEST_MAC, v6(1), v6(0x77));
    assert_eq!(
        inject(&mut r, &unknown).unwrap_err(),
        DropReason::NdiscUnanswered
    );
}

#[test]
fn ethernet_mode_strips_and_adds_headers() {
    let mut r = router(Medium::Ethernet);
    let pkt = udp_v4(v4(1), v4(3), 1, 2, b"hi");
    let mut frame = ethernet(
        GUEST_MAC,
        EthernetAddress([0x90, 0x13, 192, 168, 0, 3]),
        EthernetProtocol::Ipv4,
        &pkt,
    );
    frame.resize(60, 0); // minimum Ethernet frame: padding must not travel
    assert_eq!(inject(&mut r, &frame).unwrap(), vec![(id(3), pkt.clone())]);

    let inbound = udp_v4(v4(2), v4(1), 2, 1, b"back");
    let got = r.receive(&inbound, &id(2)).unwrap().to_vec();
    let expected = ethernet(
        EthernetAddress([0xa0, 0x13, 192, 168, 0, 2]),
        GUEST_MAC,
        EthernetProtocol::Ipv4,
        &inbound,
    );
    assert_eq!(got, expected);
    let bcast = udp_v4(v4(3), Ipv4Addr::BROADCAST, 2, 1, b"all");
    assert_eq!(
        &r.receive(&bcast, &id(3)).unwrap().to_vec()[..6],
        &[0xff; 6]
    );

    let wrong = ethernet(
        GUEST_MAC,
        GUEST_MAC,
        EthernetProtocol::Ipv4,
        &udp_v6(v6(1), v6(2), 1, 2, b"x"),
    );
    assert_eq!(inject(&mut r, &wrong).unwrap_err(), DropReason::BadVersion);
    let lldp = ethernet(
        GUEST_MAC,
        GUEST_MAC,
        EthernetProtocol::Unknown(0x88cc),
        b"lldp",
    );
    assert_eq!(
        inject(&mut r, &lldp).unwrap_err(),
        DropReason::UnsupportedEtherType
    );
    assert_eq!(
        inject(&mut r, &frame[..13]).unwrap_err(),
        DropReason::Truncated
    );
}

fn local_source(p: &[u8]) -> IpAddr {
    crate::wire::IpPacket::parse(p).unwrap().src()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic: each frame is delivered or counted as exactly one drop,
    /// and whatever leaves carries the local node's source address.
    #[test]
    fn random_frames_are_routed_or_counted(frame in proptest::collection::vec(any::<u8>(), 0..1600), ethernet in any::<bool>()) {
        let mut r = router(if ethernet { Medium::Ethernet } else { Medium::Ip });
        let before = r.drops().total();
        let mut delivered = Vec::new();
        match r.inject(&frame, |n, p| delivered.push((*n, p.to_vec()))) {
            Ok(_) => {
                prop_assert_eq!(r.drops().total(), before);
                for (n, p) in delivered {
                    if n != id(1) {
                        prop_assert!(r.local_ips().contains(&local_source(&p)));
                    }
                }
            }
            Err(_) => prop_assert_eq!(r.drops().total(), before + 1),
        }
        let before = r.drops().total();
        match r.receive(&frame, &id(2)) {
            Ok(f) => {
                let packet = crate::wire::IpPacket::parse(f.packet).unwrap();
                prop_assert_eq!(r.node_of(packet.src()), Some(id(2)));
            }
            Err(_) => prop_assert_eq!(r.drops().total(), before + 1),
        }
    }

    /// Valid packets with random header bytes flipped: still never a spoofed delivery.
    #[test]
    fn mutated_packets_never_leak_spoofed_sources(flips in proptest::collection::vec((0usize..48, any::<u8>()), 1..4)) {
        let mut r = router(Medium::Ip);
        let mut pkt = udp_v4(v4(1), v4(2), 1, 2, b"0123456789abcdef0123456789");
        for (at, x) in flips {
            let at = at % pkt.len();
            pkt[at] ^= x;
        }
        let mut out = Vec::new();
        if r.inject(&pkt, |n, p| out.push((*n, p.to_vec()))).is_ok() {
            for (_, p) in out {
                prop_assert!(r.local_ips().contains(&local_source(&p)));
            }
        }
    }
}

#[test]
fn readdress_moves_a_node_in_place_and_refuses_taken_addresses() {
    let mut r = router(Medium::Ip);
    assert!(r.readdress(&id(4), &[v4(40).into()]).unwrap());
    assert_eq!(r.node_of(v4(40).into()), Some(id(4)));
    assert_eq!(r.node_of(v4(4).into()), None, "the old address is free");
    let pkt = udp_v4(v4(1), v4(40), 1, 2, b"x");
    assert_eq!(inject(&mut r, &pkt).unwrap(), vec![(id(4), pkt.clone())]);
    let spoofed = udp_v4(v4(4), v4(1), 1, 2, b"old address");
    assert_eq!(r.receive(&spoofed, &id(4)), Err(DropReason::SpoofedSource));
    let err = r.readdress(&id(4), &[v4(3).into()]).unwrap_err();
    assert!(matches!(err, RouterError::Taken { holder, .. } if holder == id(3)));
    assert_eq!(
        r.node_ips(&id(4)).unwrap(),
        &[IpAddr::from(v4(40))],
        "unchanged on error"
    );
    assert!(
        r.readdress(&id(1), &[v4(9).into(), v6(9).into()]).unwrap(),
        "local too"
    );
    assert_eq!(r.local_ips(), &[IpAddr::from(v4(9)), IpAddr::from(v6(9))]);
    assert!(!r.readdress(&id(77), &[v4(50).into()]).unwrap());
    assert!(
        r.readdress(&id(4), &["10.9.9.9".parse().unwrap()]).is_err(),
        "out of range"
    );
}
