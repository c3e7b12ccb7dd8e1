use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn id(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32]).unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The relay's clock, in milliseconds.
const T: u64 = 1_800_000_000_000;

#[test]
fn registered_nodes_forward_to_each_other_with_the_true_source() {
    let (a, b) = (id(1), id(2));
    let mut relay = RelayServer::new();
    let now = Instant::now();
    let mut out = Vec::new();
    relay.handle(addr(1000), &register_message(&a, T), now, T, &mut out);
    relay.handle(addr(2000), &register_message(&b, T), now, T, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(decode_registered(&out[0].1), Some(addr(1000)));
    out.clear();
    let mut msg = Vec::new();
    wrap(FORWARD, &b.node_id(), b"sealed bytes", &mut msg);
    relay.handle(addr(1000), &msg, now, T, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, addr(2000));
    let (src, payload) = unwrap(&out[0].1).unwrap();
    assert_eq!(out[0].1[0], FORWARDED);
    assert_eq!(
        src,
        a.node_id(),
        "the source is the registered sender, not a claim"
    );
    assert_eq!(payload, b"sealed bytes");
    assert_eq!(relay.stats().forwarded, 1);
}

#[test]
fn nobody_registers_someone_elses_id() {
    let (a, mallory) = (id(1), id(9));
    let mut relay = RelayServer::new();
    let now = Instant::now();
    let mut out = Vec::new();
    // Mallory signs with her key but claims a's id.
    let mut forged = register_message(&mallory, T);
    forged[1..21].copy_from_slice(a.node_id().as_bytes());
    relay.handle(addr(6666), &forged, now, T, &mut out);
    // A stale or future registration, a truncated one.
    relay.handle(
        addr(1000),
        &register_message(&a, T - 1_000_000),
        now,
        T,
        &mut out,
    );
    relay.handle(
        addr(1000),
        &register_message(&a, T + 1_000_000),
        now,
        T,
        &mut out,
    );
    relay.handle(addr(1000), &register_message(&a, T)[..50], now, T, &mut out);
    assert!(out.is_empty());
    assert_eq!(relay.stats().bad_registrations, 4);
    assert_eq!(relay.registrations(), 0);
    // A genuine registration, then a replay of an older one from elsewhere.
    relay.handle(addr(1000), &register_message(&a, T + 5), now, T, &mut out);
    relay.handle(addr(6666), &register_message(&a, T), now, T, &mut out);
    assert_eq!(relay.address_of(&a.node_id()), Some(addr(1000)));
    assert_eq!(relay.stats().bad_registrations, 5);
}

#[test]
fn unregistered_senders_and_unknown_destinations() {
    let (a, b) = (id(1), id(2));
    let mut relay = RelayServer::new();
    let now = Instant::now();
    let mut out = Vec::new();
    let mut msg = Vec::new();
    wrap(FORWARD, &b.node_id(), b"x", &mut msg);
    relay.handle(addr(1000), &msg, now, T, &mut out);
    // Dropped, and the sender is told to register (a relay that restarted forgot it).
    assert_eq!(out, vec![(addr(1000), vec![REGISTER_AGAIN])]);
    assert_eq!(relay.stats().unregistered_sender, 1);
    out.clear();
    relay.handle(addr(1000), &register_message(&a, T), now, T, &mut out);
    out.clear();
    relay.handle(addr(1000), &msg, now, T, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1[0], UNKNOWN_PEER);
    assert_eq!(unwrap(&out[0].1).unwrap().0, b.node_id());
    // Registrations expire.
    relay.expire(now + REGISTRATION_TTL + Duration::from_secs(1));
    assert_eq!(relay.registrations(), 0);
    for junk in [&[][..], &[0x10][..], &[0x14, 1, 2][..], &[0x99; 40][..]] {
        relay.handle(addr(1), junk, now, T, &mut out);
    }
    assert!(relay.stats().malformed >= 3);
}
