use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::build::{udp_v4, udp_v6};
use super::*;

const A: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 3);

#[test]
fn valid_ipv4_parses_and_trims_padding() {
    let mut pkt = udp_v4(A, B, 1000, 2000, b"hello");
    let len = pkt.len();
    pkt.extend_from_slice(&[0u8; 18]); // Ethernet minimum-frame padding
    let ip = IpPacket::parse(&pkt).unwrap();
    assert_eq!(ip.bytes().len(), len);
    assert_eq!(ip.src(), IpAddr::V4(A));
    assert_eq!(ip.dst(), IpAddr::V4(B));
}

#[test]
fn valid_ipv6_parses() {
    let a: Ipv6Addr = "fd00::2".parse().unwrap();
    let b: Ipv6Addr = "fd00::3".parse().unwrap();
    let pkt = udp_v6(a, b, 1, 2, &[7u8; 100]);
    let ip = IpPacket::parse(&pkt).unwrap();
    assert!(matches!(ip, IpPacket::V6(_)));
    assert_eq!(ip.bytes().len(), 40 + 8 + 100);
    assert_eq!(ip.src(), IpAddr::V6(a));
    assert_eq!(ip.dst(), IpAddr::V6(b));
}

#[test]
fn rejects_every_malformed_shape() {
    let good = udp_v4(A, B, 1, 2, b"x");
    assert_eq!(IpPacket::parse(&[]).unwrap_err(), WireError::Empty);
    assert_eq!(
        IpPacket::parse(&vec![0x45; 65536]).unwrap_err(),
        WireError::Oversized(65536)
    );
    // Every strict prefix of a valid packet is truncated.
    for cut in 1..good.len() {
        assert_eq!(
            IpPacket::parse(&good[..cut]).unwrap_err(),
            WireError::Truncated,
            "cut at {cut}"
        );
    }
    let mut bad = good.clone();
    bad[10] ^= 0xff; // checksum byte
    assert_eq!(IpPacket::parse(&bad).unwrap_err(), WireError::BadChecksum);
    let mut bad = good.clone();
    bad[12] ^= 0x01; // source address: checksum no longer matches
    assert_eq!(IpPacket::parse(&bad).unwrap_err(), WireError::BadChecksum);
    let mut bad = good.clone();
    bad[0] = 0x55;
    assert_eq!(IpPacket::parse(&bad).unwrap_err(), WireError::BadVersion(5));
    let mut bad = good.clone();
    bad[0] = 0x44; // IHL 4 words < 20 bytes
    assert_eq!(
        IpPacket::parse(&bad).unwrap_err(),
        WireError::BadHeaderLength
    );
    let mut bad = good.clone();
    bad[2..4].copy_from_slice(&10u16.to_be_bytes()); // total length below header
    assert_eq!(
        IpPacket::parse(&bad).unwrap_err(),
        WireError::BadHeaderLength
    );
    let mut bad = good.clone();
    bad[2..4].copy_from_slice(&(good.len() as u16 + 1).to_be_bytes());
    assert_eq!(IpPacket::parse(&bad).unwrap_err(), WireError::Truncated);
    assert_eq!(
        IpPacket::parse_v6(&good).unwrap_err(),
        WireError::BadVersion(4)
    );

    let v6 = udp_v6(
        "fd00::2".parse().unwrap(),
        "fd00::3".parse().unwrap(),
        1,
        2,
        b"abc",
    );
    for cut in 1..v6.len() {
        assert_eq!(
            IpPacket::parse(&v6[..cut]).unwrap_err(),
            WireError::Truncated
        );
    }
}

#[test]
fn mac_scheme_matches_yagna() {
    let ip = IpAddr::V4(Ipv4Addr::new(192, 168, 0, 7));
    assert_eq!(payload_mac(ip, false).0, [0x90, 0x13, 192, 168, 0, 7]);
    assert_eq!(payload_mac(ip, true).0, [0xa0, 0x13, 192, 168, 0, 7]);
    let v6: IpAddr = "fd00::c0a8:7".parse().unwrap();
    assert_eq!(payload_mac(v6, false).0, [0x90, 0x13, 0xc0, 0xa8, 0, 7]);
    assert_eq!(
        group_mac("224.0.0.251".parse().unwrap()).0,
        [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]
    );
    assert_eq!(
        group_mac("ff02::fb".parse().unwrap()).0,
        [0x33, 0x33, 0, 0, 0, 0xfb]
    );
    assert_eq!(
        group_mac("192.168.0.255".parse().unwrap()),
        EthernetAddress::BROADCAST
    );
}
