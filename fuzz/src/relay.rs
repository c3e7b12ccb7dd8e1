//! `relay_server`, `relay_node`: the relay's messages, on both sides.
//!
//! `relay_server` drives the sans-IO `RelayServer` with real, signed registrations of three
//! identities at several times, forwards and lookups naming them, and arbitrary datagrams,
//! from four addresses, with time passing. Ops (modulo 8): 0 a registration (identity,
//! time) from address `op >> 3 & 3`; 1 a forward to a node, with a payload; 2 a lookup;
//! 3 a raw datagram; 4 time passes and registrations expire; 5 a registration with one
//! byte changed; 6 decoders on a raw message (round trips). Checks: the counters add up
//! to the datagrams handled; a registration is accepted only as signed (never for a
//! changed one); two nodes never share an address; replies go back to the asker, forwards
//! to the destination's registered address, stamped with the sender's registered id.
//!
//! `relay_node` is the node's side: the relay-message parsing in `UdpNode` (FORWARDED,
//! REGISTERED, UNKNOWN_PEER, PEER_ADDRESS, PUNCH, PROBE, PROBE_ACK). It is not sans-IO,
//! so the target binds a node and two sockets on loopback: one is the node's relay, the
//! other a stranger. Ops (modulo 4): 0-1 a datagram from the relay; 2 from the stranger;
//! 3 timers run. Checks: every datagram is read and counted; nothing from the stranger
//! is taken for a relay message; no frame reaches the node's network but from its peer.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use golem_vpn::datapath::{Inbound, UdpNode};
use golem_vpn::relay::{self, RelayServer};
use golem_vpn::tunnel::Config;
use golem_vpn::{Medium, NodeId, Router, RouterConfig};

use crate::{Input, identity, put_frame};

/// The relay's clock (unix milliseconds) at the start of each run.
pub const T0: u64 = 1_800_000_000_000;
/// The registration times signed for each identity, relative to [`T0`].
pub const TIMES: [i64; 5] = [0, 1, 2, 299_000, -400_000];

/// Signed registrations: `[identity][time]`.
fn registrations() -> &'static Vec<Vec<Vec<u8>>> {
    static R: OnceLock<Vec<Vec<Vec<u8>>>> = OnceLock::new();
    R.get_or_init(|| {
        (1..=3)
            .map(|n| {
                let id = identity(n);
                TIMES
                    .iter()
                    .map(|&t| relay::register_message(&id, T0.wrapping_add_signed(t)))
                    .collect()
            })
            .collect()
    })
}

fn node_ids() -> [NodeId; 3] {
    static IDS: OnceLock<[NodeId; 3]> = OnceLock::new();
    *IDS.get_or_init(|| [1, 2, 3].map(|n| identity(n).node_id()))
}

/// One of the four sender addresses.
pub fn sender(n: u8) -> SocketAddr {
    match n & 3 {
        0 => SocketAddr::new(Ipv4Addr::new(198, 18, 1, 1).into(), 4000),
        1 => SocketAddr::new(Ipv4Addr::new(198, 18, 1, 2).into(), 4000),
        2 => SocketAddr::new(Ipv4Addr::new(198, 18, 1, 1).into(), 4001),
        _ => SocketAddr::new(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(), 4000),
    }
}

fn stats_sum(r: &RelayServer) -> u64 {
    let s = r.stats();
    s.registered
        + s.bad_registrations
        + s.forwarded
        + s.unregistered_sender
        + s.unknown_destination
        + s.malformed
        + s.lookups
}

fn check_roundtrips(data: &[u8]) {
    if let Some(addr) = relay::decode_registered(data) {
        let node = NodeId([7; 20]);
        let msg = relay::node_addr_message(relay::PEER_ADDRESS, &node, addr);
        assert_eq!(relay::decode_node_addr(&msg), Some((node, addr)));
    }
    if let Some((node, addr)) = relay::decode_node_addr(data) {
        let msg = relay::node_addr_message(data[0], &node, addr);
        assert!(data.starts_with(&msg), "decode_node_addr reads a prefix");
    }
    if let Some((node, nonce)) = relay::decode_probe(data) {
        assert_eq!(relay::probe_message(data[0], &node, nonce), data);
    }
    if let Some((node, payload)) = relay::unwrap(data) {
        let mut out = Vec::new();
        relay::wrap(data[0], &node, payload, &mut out);
        assert_eq!(out, data);
    }
    assert_eq!(
        relay::is_relay_message(data),
        matches!(data.first(), Some(0x10..=0x1f))
    );
}

/// The `relay_server` target's body.
pub fn run_server(data: &[u8]) {
    let regs = registrations();
    let ids = node_ids();
    let start = Instant::now();
    let mut now = start;
    let mut unix = T0;
    let mut server = RelayServer::new();
    let mut input = Input::new(data);
    let mut handled = 0u64;
    let mut out = Vec::new();
    while let Some(op) = input.byte() {
        let from = sender(op >> 3);
        out.clear();
        let mut sent: Option<Vec<u8>> = None;
        let before = server.stats();
        match op % 8 {
            0 | 5 => {
                let arg = input.byte().unwrap_or(0);
                let mut msg =
                    regs[usize::from(arg % 3)][usize::from(arg / 3) % TIMES.len()].clone();
                let changed = op % 8 == 5;
                if changed {
                    let at = usize::from(input.byte().unwrap_or(0)) % msg.len();
                    msg[at] ^= input.byte().unwrap_or(1).max(1);
                }
                server.handle(from, &msg, now, unix, &mut out);
                handled += 1;
                if changed && msg[0] == relay::REGISTER {
                    assert_eq!(
                        server.stats().registered,
                        before.registered,
                        "a changed registration is refused"
                    );
                }
                if server.stats().registered > before.registered {
                    let node = NodeId(msg[1..21].try_into().unwrap());
                    assert_eq!(server.address_of(&node), Some(from));
                    assert_eq!(out.len(), 1);
                    assert_eq!(out[0].0, from);
                    assert_eq!(relay::decode_registered(&out[0].1), Some(from));
                }
                sent = Some(msg);
            }
            1 | 2 => {
                let target = ids[usize::from(input.byte().unwrap_or(0) % 3)];
                let kind = if op % 8 == 1 {
                    relay::FORWARD
                } else {
                    relay::LOOKUP
                };
                let mut msg = Vec::new();
                relay::wrap(kind, &target, input.frame(), &mut msg);
                server.handle(from, &msg, now, unix, &mut out);
                handled += 1;
                sent = Some(msg);
            }
            3 => {
                let msg = input.frame().to_vec();
                server.handle(from, &msg, now, unix, &mut out);
                handled += 1;
                sent = Some(msg);
            }
            4 => {
                let secs = u64::from(input.u16().unwrap_or(0) % 600);
                now += Duration::from_secs(secs);
                unix += secs * 1000;
                server.expire(now);
            }
            _ => check_roundtrips(input.frame()),
        }
        assert_eq!(
            stats_sum(&server),
            handled,
            "every datagram is counted once"
        );
        let s = server.stats();
        for (dst, msg) in &out {
            match msg[0] {
                // 0x1a: "register again" (the sender's address has no registration).
                relay::REGISTERED | relay::UNKNOWN_PEER | relay::PEER_ADDRESS | 0x1a => {
                    assert_eq!(*dst, from, "replies go to the asker")
                }
                relay::FORWARDED => {
                    let (src, payload) = relay::unwrap(msg).unwrap();
                    assert_eq!(
                        server.address_of(&src),
                        Some(from),
                        "stamped with the sender's id"
                    );
                    let sent = sent.as_deref().unwrap();
                    let (target, p) = relay::unwrap(sent).unwrap();
                    assert_eq!(payload, p);
                    assert_eq!(server.address_of(&target), Some(*dst));
                    assert_eq!(s.forwarded, before.forwarded + 1);
                }
                relay::PUNCH => {
                    let (asker, addr) = relay::decode_node_addr(msg).unwrap();
                    assert_eq!(addr, from);
                    assert_eq!(server.address_of(&asker), Some(from));
                }
                other => panic!("the relay sent a message of type {other:#x}"),
            }
        }
        // Registrations: only the three identities can sign, and never two at one address.
        let addrs: Vec<SocketAddr> = ids.iter().filter_map(|n| server.address_of(n)).collect();
        assert_eq!(
            server.registrations(),
            addrs.len(),
            "every registration is a signed one"
        );
        let distinct: HashSet<_> = addrs.iter().collect();
        assert_eq!(
            distinct.len(),
            addrs.len(),
            "two nodes at one address: {addrs:?}"
        );
    }
}

/// Seeds for `relay_server`.
pub fn server_seeds() -> Vec<(String, Vec<u8>)> {
    let mut forward = vec![0u8, 0, 8, 1];
    forward.push(1);
    forward.push(1);
    put_frame(&mut forward, b"\x04tunnel datagram");
    forward.push(8 | 2);
    forward.push(0);
    put_frame(&mut forward, b"");
    let mut raw = vec![3u8];
    let mut fwd = Vec::new();
    relay::wrap(relay::FORWARD, &NodeId([2; 20]), b"payload", &mut fwd);
    put_frame(&mut raw, &fwd);
    let mut decoders = vec![6u8];
    let msg = relay::node_addr_message(relay::PUNCH, &NodeId([5; 20]), sender(3));
    put_frame(&mut decoders, &msg);
    decoders.push(6);
    put_frame(
        &mut decoders,
        &relay::probe_message(relay::PROBE, &NodeId([5; 20]), 42),
    );
    vec![
        ("register".into(), vec![0, 0]),
        ("register_forward_lookup".into(), forward),
        (
            "register_stale_then_expire".into(),
            vec![0, 12, 0, 1, 4, 0x01, 0x00, 0, 3],
        ),
        ("register_changed".into(), vec![5, 0, 40, 0x01]),
        ("raw_forward".into(), raw),
        ("decoders".into(), decoders),
    ]
}

/// Network of the node in `relay_node`.
const NODE_NETWORK: &str = "fuzz-relay";

/// The `relay_node` target's body.
pub fn run_node(data: &[u8]) {
    let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let relay_sock = UdpSocket::bind(loopback).expect("a loopback socket");
    let stranger = UdpSocket::bind(loopback).expect("a loopback socket");
    let me = identity(2);
    let mut node = UdpNode::bind(&me, loopback, Config::default(), 2).expect("a node");
    let node_addr = node.local_addr().unwrap();
    let peer = identity(1).node_id();
    let now = Instant::now();
    node.add_network(
        Router::new(RouterConfig {
            network_id: NODE_NETWORK.into(),
            cidrs: vec!["10.8.0.0/24".parse().unwrap()],
            local_node: me.node_id(),
            local_ips: vec![Ipv4Addr::new(10, 8, 0, 2).into()],
            medium: Medium::Ip,
            requestor: None,
        })
        .unwrap(),
    );
    node.set_relay(Some(relay_sock.local_addr().unwrap()), now);
    node.add_peer(NODE_NETWORK, peer, Ipv4Addr::new(10, 8, 0, 1).into(), None)
        .unwrap();
    let mut input = Input::new(data);
    let mut sent = 0u64;
    let mut sink = Inbound::default();
    let mut t = now;
    while let Some(op) = input.byte() {
        match op % 4 {
            0..=2 => {
                let sock = if op % 4 == 2 { &stranger } else { &relay_sock };
                let d = input.frame();
                if d.is_empty() {
                    continue; // an empty datagram carries nothing to parse
                }
                let before = node.stats();
                sock.send_to(d, node_addr).expect("loopback send");
                sent += 1;
                // Loopback delivery is synchronous: the datagram is there now.
                // (An ICMP error from a probe to a closed port also counts as a read.)
                let read = node.receive(t, 8, &mut sink);
                assert!(read >= 1, "the datagram is read");
                let after = node.stats();
                assert_eq!(after.datagrams_in, before.datagrams_in + 1);
                if op % 4 == 2 {
                    assert_eq!(
                        after.relayed_in, before.relayed_in,
                        "a stranger is not the relay"
                    );
                }
            }
            _ => {
                t += Duration::from_millis(u64::from(input.u16().unwrap_or(0)));
                node.handle_timeout(t, &mut sink);
            }
        }
        for (network, _) in &sink.frames {
            assert_eq!(network, NODE_NETWORK);
        }
        for (from, _, _) in &sink.control {
            assert_eq!(*from, peer, "control only from the allowed peer");
        }
        sink.frames.clear();
        sink.control.clear();
        sink.events.clear();
    }
    assert_eq!(node.stats().datagrams_in, sent);
}

/// Seeds for `relay_node`: what a relay and a peer really send a node.
pub fn node_seeds() -> Vec<(String, Vec<u8>)> {
    let peer = identity(1).node_id();
    let one = |op: u8, msg: &[u8]| {
        let mut v = vec![op];
        put_frame(&mut v, msg);
        v
    };
    let mut fwd = Vec::new();
    let init = {
        let s = crate::tunnel::Session::established();
        s.log[0].1.clone()
    };
    relay::wrap(relay::FORWARDED, &peer, &init, &mut fwd);
    let mut registered = vec![relay::REGISTERED];
    registered.extend_from_slice(&relay::node_addr_message(0, &peer, sender(0))[21..]);
    let mut unknown = Vec::new();
    relay::wrap(relay::UNKNOWN_PEER, &peer, &[], &mut unknown);
    vec![
        ("forwarded_init".into(), one(0, &fwd)),
        ("registered".into(), one(0, &registered)),
        ("unknown_peer".into(), one(0, &unknown)),
        (
            "peer_address".into(),
            one(
                0,
                &relay::node_addr_message(
                    relay::PEER_ADDRESS,
                    &peer,
                    "127.0.0.1:9".parse().unwrap(),
                ),
            ),
        ),
        (
            "punch".into(),
            one(
                0,
                &relay::node_addr_message(relay::PUNCH, &peer, "127.0.0.1:9".parse().unwrap()),
            ),
        ),
        (
            "probe".into(),
            one(2, &relay::probe_message(relay::PROBE, &peer, 7)),
        ),
        (
            "probe_ack".into(),
            one(2, &relay::probe_message(relay::PROBE_ACK, &peer, 7)),
        ),
        ("forwarded_from_stranger".into(), one(2, &fwd)),
    ]
}
