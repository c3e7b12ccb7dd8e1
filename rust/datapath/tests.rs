use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::*;
use crate::router::{Medium, RouterConfig};
use crate::wire::build::udp_v4;

const NET: &str = "0123456789abcdef0123456789abcdef";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 7, 0, last))
}

fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32]).unwrap()
}

fn node(n: u8) -> UdpNode {
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    UdpNode::bind(&identity(n), loopback, Config::default(), u64::from(n)).unwrap()
}

fn router_for(me: &UdpNode, last: u8) -> Router {
    Router::new(RouterConfig {
        network_id: NET.into(),
        cidrs: vec!["10.7.0.0/24".parse().unwrap()],
        local_node: me.node_id(),
        local_ips: vec![ip(last)],
        medium: Medium::Ip,
        requestor: None,
    })
    .unwrap()
}

/// Two nodes in one network, each knowing the other's address.
fn pair() -> (UdpNode, UdpNode) {
    pair_with(node(2))
}

/// [`pair`] with `b` as B (node 2).
fn pair_with(mut b: UdpNode) -> (UdpNode, UdpNode) {
    let mut a = node(1);
    a.add_network(router_for(&a, 1));
    b.add_network(router_for(&b, 2));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    a.add_peer(NET, b_id, ip(2), Some(b_addr)).unwrap();
    b.add_peer(NET, a_id, ip(1), Some(a_addr)).unwrap();
    (a, b)
}

/// Lets both nodes read until `done` holds (real sockets on loopback: bounded wait).
fn pump(
    a: &mut UdpNode,
    b: &mut UdpNode,
    wait: Duration,
    mut done: impl FnMut(&Inbound, &Inbound) -> bool,
) -> (Inbound, Inbound) {
    let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let now = Instant::now();
        a.receive(now, 1024, &mut ia);
        b.receive(now, 1024, &mut ib);
        a.handle_timeout(now, &mut ia);
        b.handle_timeout(now, &mut ib);
        if done(&ia, &ib) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    (ia, ib)
}

#[test]
fn packets_cross_an_encrypted_tunnel_and_reach_the_router() {
    let (mut a, mut b) = pair();
    let packets: Vec<Vec<u8>> = (0..50u8)
        .map(|i| {
            udp_v4(
                Ipv4Addr::new(10, 7, 0, 1),
                Ipv4Addr::new(10, 7, 0, 2),
                1000,
                2000,
                &[i; 300],
            )
        })
        .collect();
    let answers = a
        .send_packets(NET, packets.iter().map(Vec::as_slice), Instant::now())
        .unwrap();
    assert!(answers.is_empty());
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == packets.len()
    });
    let got: Vec<Vec<u8>> = ib
        .frames
        .into_iter()
        .map(|(net, f)| {
            assert_eq!(net, NET);
            f
        })
        .collect();
    assert_eq!(got, packets, "every packet arrives intact and in order");
    assert!(
        a.tunnel_stats().handshakes_completed >= 1 || b.tunnel_stats().handshakes_completed >= 1
    );
}

#[test]
fn control_messages_and_spoofing() {
    let (mut a, mut b) = pair();
    let b_id = b.node_id();
    a.send_control(&b_id, NET, b"{\"addNodes\":{}}", Instant::now())
        .unwrap();
    // A spoofed packet (source .9 is not A's) never leaves A's router.
    let spoofed = udp_v4(
        Ipv4Addr::new(10, 7, 0, 9),
        Ipv4Addr::new(10, 7, 0, 2),
        1,
        2,
        b"evil",
    );
    a.send_packets(NET, [spoofed.as_slice()], Instant::now())
        .unwrap();
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        !ib.control.is_empty()
    });
    assert_eq!(ib.control.len(), 1);
    assert_eq!(ib.control[0].0, a.node_id());
    assert_eq!(ib.control[0].1, NET);
    assert_eq!(ib.control[0].2, b"{\"addNodes\":{}}");
    assert!(ib.frames.is_empty());
    assert_eq!(
        a.router(NET)
            .unwrap()
            .drops()
            .get(crate::router::DropReason::SpoofedSource),
        1
    );
}

#[test]
fn removed_peer_is_cut_off() {
    let (mut a, mut b) = pair();
    let (a_id, b_id) = (a.node_id(), b.node_id());
    let hello = udp_v4(
        Ipv4Addr::new(10, 7, 0, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        1,
        2,
        b"hi",
    );
    a.send_packets(NET, [hello.as_slice()], Instant::now())
        .unwrap();
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 1
    });
    assert_eq!(ib.frames.len(), 1);
    // B removes A: whatever A sends now is dropped at B.
    assert!(b.remove_peer(NET, &a_id).unwrap());
    a.send_packets(NET, [hello.as_slice()], Instant::now())
        .unwrap();
    let (_, ib) = pump(&mut a, &mut b, Duration::from_millis(300), |_, _| false);
    assert!(ib.frames.is_empty());
    assert!(b.router(NET).unwrap().node_ips(&a_id).is_none());
    assert!(!b.endpoint().is_up(&a_id));
    let _ = b_id;
}

#[test]
fn garbage_datagrams_are_counted_not_fatal() {
    let (mut a, mut b) = pair();
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr = b.local_addr().unwrap();
    for i in 0..20u8 {
        junk.send_to(&vec![i; usize::from(i) * 7], b_addr).unwrap();
    }
    let (_, ib) = pump(&mut a, &mut b, Duration::from_millis(300), |_, _| false);
    assert!(ib.frames.is_empty() && ib.control.is_empty());
    assert!(b.stats().datagrams_in >= 19);
    assert!(b.tunnel_stats().drops.total() + b.stats().relay_drops >= 19);
}

/// A relay on a real loopback socket, driven from the test loop.
struct TestRelay {
    socket: UdpSocket,
    server: crate::relay::RelayServer,
}

impl TestRelay {
    fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        TestRelay {
            socket,
            server: crate::relay::RelayServer::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }

    fn run(&mut self) {
        let mut buf = vec![0u8; 65535];
        let mut out = Vec::new();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.server
                .handle(from, &buf[..n], Instant::now(), unix, &mut out);
        }
        for (dst, bytes) in out {
            self.socket.send_to(&bytes, dst).unwrap();
        }
    }
}

/// One turn of the loopback world: the relay forwards, both nodes read and run timers.
fn turn(
    relay: &mut TestRelay,
    a: &mut UdpNode,
    b: &mut UdpNode,
    ia: &mut Inbound,
    ib: &mut Inbound,
) {
    relay.run();
    let now = Instant::now();
    a.receive(now, 1024, ia);
    b.receive(now, 1024, ib);
    a.handle_timeout(now, ia);
    b.handle_timeout(now, ib);
}

#[test]
fn peers_without_addresses_talk_through_the_relay() {
    let mut relay = TestRelay::new();
    let mut a = node(1);
    let mut b = node(2);
    let now = Instant::now();
    a.set_relay(Some(relay.addr()), now);
    b.set_relay(Some(relay.addr()), now);
    // Direct paths would work on loopback: keep the traffic on the relay for this test.
    a.set_hole_punching(false);
    b.set_hole_punching(false);
    a.add_network(router_for(&a, 1));
    b.add_network(router_for(&b, 2));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    // Nobody knows anybody's address: only node ids.
    a.add_peer(NET, b_id, ip(2), None).unwrap();
    b.add_peer(NET, a_id, ip(1), None).unwrap();
    assert!(a.is_relayed(&b_id) && b.is_relayed(&a_id));
    // Let both registrations land before sending.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (a.public_addr().is_none() || b.public_addr().is_none()) && Instant::now() < deadline {
        relay.run();
        a.receive(Instant::now(), 64, &mut Inbound::default());
        b.receive(Instant::now(), 64, &mut Inbound::default());
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(a.public_addr(), Some(a.local_addr().unwrap()));
    let packets: Vec<Vec<u8>> = (0..20u8)
        .map(|i| {
            udp_v4(
                Ipv4Addr::new(10, 7, 0, 1),
                Ipv4Addr::new(10, 7, 0, 2),
                7,
                8,
                &[i; 500],
            )
        })
        .collect();
    a.send_packets(NET, packets.iter().map(Vec::as_slice), Instant::now())
        .unwrap();
    let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    while ib.frames.len() < packets.len() && Instant::now() < deadline {
        turn(&mut relay, &mut a, &mut b, &mut ia, &mut ib);
        std::thread::sleep(Duration::from_millis(1));
    }
    let got: Vec<Vec<u8>> = ib.frames.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, packets);
    assert!(a.stats().relayed_out >= 20);
    assert!(b.stats().relayed_in >= 20);
    assert!(
        relay.server.stats().forwarded >= 22,
        "handshake + data went through"
    );
    // Relay messages from anyone but the relay are dropped.
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(&[crate::relay::FORWARDED; 40], b.local_addr().unwrap())
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    b.receive(Instant::now(), 64, &mut Inbound::default());
    assert_eq!(b.stats().relay_drops, 1);
}

#[test]
fn relayed_peers_recover_when_their_relay_restarts() {
    let mut relay = TestRelay::new();
    let mut a = node(1);
    let mut b = node(2);
    let now = Instant::now();
    for n in [&mut a, &mut b] {
        n.set_relay(Some(relay.addr()), now);
        n.set_hole_punching(false);
    }
    a.add_network(router_for(&a, 1));
    b.add_network(router_for(&b, 2));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    a.add_peer(NET, b_id, ip(2), None).unwrap();
    b.add_peer(NET, a_id, ip(1), None).unwrap();
    let packet = udp_v4(
        Ipv4Addr::new(10, 7, 0, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        7,
        8,
        b"over the relay",
    );
    // Sends a packet a -> b every 10 ms (b only reads: an idle peer) until one arrives.
    let deliver = |relay: &mut TestRelay, a: &mut UdpNode, b: &mut UdpNode, wait: Duration| {
        let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
        let started = Instant::now();
        let mut next_send = started;
        while ib.frames.is_empty() && started.elapsed() < wait {
            if Instant::now() >= next_send {
                a.send_packets(NET, [packet.as_slice()], Instant::now())
                    .unwrap();
                next_send += Duration::from_millis(10);
            }
            turn(relay, a, b, &mut ia, &mut ib);
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !ib.frames.is_empty(),
            "nothing through the relay in {wait:?}"
        );
        started.elapsed()
    };
    deliver(&mut relay, &mut a, &mut b, Duration::from_secs(5));
    // The relay restarts on its port: every registration is forgotten.
    relay.server = crate::relay::RelayServer::new();
    let took = deliver(&mut relay, &mut a, &mut b, Duration::from_secs(10));
    // The sender was told to register again at its first forward; the idle receiver
    // registered at its relayed interval rather than the 30 s one.
    assert!(a.stats().relay_register_again >= 1);
    assert!(relay.server.stats().unregistered_sender >= 1);
    assert!(
        took <= crate::relay::RELAYED_REGISTER_INTERVAL + Duration::from_secs(1),
        "{took:?}"
    );
}

#[test]
fn hole_punching_moves_relayed_peers_to_a_direct_path() {
    let mut relay = TestRelay::new();
    let mut a = node(1);
    let mut b = node(2);
    let now = Instant::now();
    a.set_relay(Some(relay.addr()), now);
    b.set_relay(Some(relay.addr()), now);
    a.add_network(router_for(&a, 1));
    b.add_network(router_for(&b, 2));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    a.add_peer(NET, b_id, ip(2), None).unwrap();
    b.add_peer(NET, a_id, ip(1), None).unwrap();
    let packet = udp_v4(
        Ipv4Addr::new(10, 7, 0, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        7,
        8,
        b"hi",
    );
    let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    while (a.is_relayed(&b_id) || b.is_relayed(&a_id) || ib.frames.is_empty())
        && Instant::now() < deadline
    {
        a.send_packets(NET, [packet.as_slice()], Instant::now())
            .unwrap();
        turn(&mut relay, &mut a, &mut b, &mut ia, &mut ib);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!a.is_relayed(&b_id), "A talks to B directly");
    assert!(!b.is_relayed(&a_id), "B followed A to the direct path");
    assert_eq!(
        a.endpoint().peer_address(&b_id),
        Some(b.local_addr().unwrap())
    );
    assert!(a.stats().punched + b.stats().punched >= 1);
    assert!(relay.server.stats().lookups >= 1);
    // Let datagrams already in flight through the relay land.
    for _ in 0..20 {
        turn(&mut relay, &mut a, &mut b, &mut ia, &mut ib);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!a.is_relayed(&b_id) && !b.is_relayed(&a_id));
    // From now on data goes direct: the relay forwards nothing more.
    let forwarded = relay.server.stats().forwarded;
    ib.frames.clear();
    for _ in 0..200 {
        relay.run();
        let now = Instant::now();
        a.send_packets(NET, [packet.as_slice()], now).unwrap();
        b.receive(now, 1024, &mut ib);
        a.receive(now, 1024, &mut ia);
        if ib.frames.len() >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ib.frames.len() >= 10);
    assert_eq!(relay.server.stats().forwarded, forwarded);
}

#[test]
fn a_punched_peer_that_restarts_on_a_new_address_is_reached_again() {
    let mut relay = TestRelay::new();
    let mut a = node(1);
    let mut b = node(2);
    let now = Instant::now();
    a.set_relay(Some(relay.addr()), now);
    b.set_relay(Some(relay.addr()), now);
    a.add_network(router_for(&a, 1));
    b.add_network(router_for(&b, 2));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    a.add_peer(NET, b_id, ip(2), None).unwrap();
    b.add_peer(NET, a_id, ip(1), None).unwrap();
    let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
    let to = |last: u8, from: u8| {
        udp_v4(
            Ipv4Addr::new(10, 7, 0, from),
            Ipv4Addr::new(10, 7, 0, last),
            7,
            8,
            b"hi",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while (a.is_relayed(&b_id) || b.is_relayed(&a_id) || a.stats().punched == 0)
        && Instant::now() < deadline
    {
        a.send_packets(NET, [to(2, 1).as_slice()], Instant::now())
            .unwrap();
        b.send_packets(NET, [to(1, 2).as_slice()], Instant::now())
            .unwrap();
        turn(&mut relay, &mut a, &mut b, &mut ia, &mut ib);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(a.stats().punched >= 1, "A pinned B's direct address");
    let old_b = b.local_addr().unwrap();
    // B restarts: same identity, a new socket (a new port), no sessions; it knows A by id
    // only, so its handshake goes through the relay. A still has B's old session, pinned
    // to the old, now dead, address.
    drop(b);
    let mut b = node(2);
    assert_ne!(b.local_addr().unwrap(), old_b);
    b.set_relay(Some(relay.addr()), Instant::now());
    b.add_network(router_for(&b, 2));
    b.add_peer(NET, a_id, ip(1), None).unwrap();
    let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
    // B sends, and A answers: A's answers must reach the new B (before, A sent them to the
    // pinned dead address until its handshake timed out, 90 s).
    let started = Instant::now();
    while ib.frames.is_empty() && started.elapsed() < Duration::from_secs(5) {
        b.send_packets(NET, [to(1, 2).as_slice()], Instant::now())
            .unwrap();
        if !ia.frames.is_empty() {
            a.send_packets(NET, [to(2, 1).as_slice()], Instant::now())
                .unwrap();
        }
        turn(&mut relay, &mut a, &mut b, &mut ia, &mut ib);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!ia.frames.is_empty(), "A heard the restarted B");
    assert!(!ib.frames.is_empty(), "the restarted B heard A");
    assert_ne!(a.endpoint().peer_address(&b_id), Some(old_b));
}

#[test]
fn packets_for_a_network_the_sender_is_not_in_are_dropped() {
    const OTHER: &str = "ffffffffffffffffffffffffffffffff";
    let (mut a, mut b) = pair();
    let (a_id, b_id) = (a.node_id(), b.node_id());
    // B is in a second network without A. A claims B is in it with A, and sends there.
    let b_other = Router::new(RouterConfig {
        network_id: OTHER.into(),
        cidrs: vec!["10.8.0.0/24".parse().unwrap()],
        local_node: b_id,
        local_ips: vec!["10.8.0.2".parse().unwrap()],
        medium: Medium::Ip,
        requestor: None,
    })
    .unwrap();
    b.add_network(b_other);
    let mut a_other = Router::new(RouterConfig {
        network_id: OTHER.into(),
        cidrs: vec!["10.8.0.0/24".parse().unwrap()],
        local_node: a_id,
        local_ips: vec!["10.8.0.1".parse().unwrap()],
        medium: Medium::Ip,
        requestor: None,
    })
    .unwrap();
    a_other.add_node(b_id, "10.8.0.2".parse().unwrap()).unwrap();
    a.add_network(a_other);
    let sneaky = udp_v4(
        Ipv4Addr::new(10, 8, 0, 1),
        Ipv4Addr::new(10, 8, 0, 2),
        1,
        2,
        b"let me in",
    );
    let legit = udp_v4(
        Ipv4Addr::new(10, 7, 0, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        1,
        2,
        b"hello",
    );
    a.send_packets(OTHER, [sneaky.as_slice()], Instant::now())
        .unwrap();
    a.send_packets(NET, [legit.as_slice()], Instant::now())
        .unwrap();
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        !ib.frames.is_empty()
    });
    std::thread::sleep(Duration::from_millis(50));
    let mut rest = Inbound::default();
    b.receive(Instant::now(), 1024, &mut rest);
    let frames: Vec<_> = ib.frames.iter().chain(&rest.frames).collect();
    assert_eq!(
        frames.len(),
        1,
        "only the packet of the shared network arrives"
    );
    assert_eq!(frames[0].0, NET);
    assert_eq!(frames[0].1, legit);
    assert_eq!(
        b.stats().router_drops,
        1,
        "the other network's router refused A"
    );
    assert_eq!(
        b.router(OTHER)
            .unwrap()
            .drops()
            .get(crate::router::DropReason::UnknownNode),
        1
    );
}

#[test]
fn a_dead_first_relay_is_passed_over_for_the_next() {
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap(); // bound, never answers
    let mut relay = TestRelay::new();
    let relays = vec![dead.local_addr().unwrap(), relay.addr()];
    let mut a = node(1);
    let mut b = node(2);
    let now = Instant::now();
    for n in [&mut a, &mut b] {
        n.set_relays(relays.clone(), now);
        n.set_hole_punching(false);
    }
    assert_eq!(
        a.relay(),
        Some(relays[0]),
        "the first relay until one answers"
    );
    a.add_network(router_for(&a, 1));
    b.add_network(router_for(&b, 2));
    let (a_id, b_id) = (a.node_id(), b.node_id());
    a.add_peer(NET, b_id, ip(2), None).unwrap();
    b.add_peer(NET, a_id, ip(1), None).unwrap();
    let packet = udp_v4(
        Ipv4Addr::new(10, 7, 0, 1),
        Ipv4Addr::new(10, 7, 0, 2),
        7,
        8,
        b"x",
    );
    let (mut ia, mut ib) = (Inbound::default(), Inbound::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    while ib.frames.is_empty() && Instant::now() < deadline {
        if a.relay() == Some(relays[1]) && b.relay() == Some(relays[1]) {
            a.send_packets(NET, [packet.as_slice()], Instant::now())
                .unwrap();
        }
        turn(&mut relay, &mut a, &mut b, &mut ia, &mut ib);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(a.relay(), Some(relays[1]));
    assert_eq!(a.relays(), relays);
    assert!(!ib.frames.is_empty());
    assert!(ib.frames.iter().all(|(_, f)| *f == packet));
    assert!(relay.server.stats().forwarded >= 1);
}

#[test]
fn a_gso_run_arrives_as_the_datagrams_it_was_made_of() {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    // Ten equal datagrams and a shorter last one (one GSO send), then one to elsewhere.
    let mut bufs: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 1000]).collect();
    bufs.push(vec![0xee; 500]);
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    bufs.push(vec![0xaa; 1000]);
    let mut dsts = vec![to; 11];
    dsts.push(other.local_addr().unwrap());
    assert_eq!(mmsg::send_batch(&tx, &bufs, &dsts), bufs.len());
    let mut buf = [0u8; 4096];
    for expected in &bufs[..11] {
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &expected[..]);
    }
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = other.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &bufs[11][..]);
}

#[test]
fn a_default_mtu_packet_fits_a_1500_byte_underlay_on_the_worst_path() {
    use crate::tunnel::{Config, Endpoint, Payload, PayloadKind};
    let (ia, ib) = (identity(1), identity(2));
    let mut a = Endpoint::new(&ia, Config::default(), 1).unwrap();
    let mut b = Endpoint::new(&ib, Config::default(), 2).unwrap();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "[fd00::1]:1".parse().unwrap(),
        "[fd00::2]:2".parse().unwrap(),
    );
    a.allow(ib.node_id());
    b.allow(ia.node_id());
    a.set_peer_address(ib.node_id(), b_addr);
    let network = "0123456789abcdef0123456789abcdef"; // yagna's network ids: 32 hex digits
    let packet = vec![0x45u8; DEFAULT_TUN_MTU];
    let payload = || Payload {
        kind: PayloadKind::Ip,
        network,
        bytes: &packet,
    };
    let now = Instant::now();
    a.send(&ib.node_id(), payload(), now).unwrap();
    let mut plain = Vec::new();
    let mut sealed = None;
    for _ in 0..8 {
        while let Some(t) = a.poll_transmit() {
            if let Some(got) = b.receive_into(a_addr, &t.bytes, now, &mut plain) {
                assert_eq!(got.bytes, &packet[..]);
                sealed = Some(t.bytes.len());
            }
        }
        while let Some(t) = b.poll_transmit() {
            a.receive_into(b_addr, &t.bytes, now, &mut plain);
        }
    }
    let sealed = sealed.expect("the packet crossed");
    assert_eq!(
        sealed,
        DEFAULT_TUN_MTU + crate::tunnel::data_overhead(network.len())
    );
    // IPv6 + UDP + the relay's header around it: exactly the 1500 bytes of the underlay.
    assert_eq!(40 + 8 + relay::FORWARD_HEADER + sealed, 1500);
    assert_eq!(DEFAULT_TUN_MTU, 1368);
}

#[test]
fn relayed_strangers_are_bounded() {
    // Anyone can register node ids at a relay and have it forward datagrams here: each
    // sender gets a placeholder address, but those in no network of ours are capped.
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut b = node(2);
    b.set_relay(Some(relay.local_addr().unwrap()), Instant::now());
    b.set_hole_punching(false);
    b.add_network(router_for(&b, 2));
    let member = identity(1).node_id();
    b.add_peer(NET, member, ip(1), None).unwrap();
    let to = b.local_addr().unwrap();
    let mut inbound = Inbound::default();
    let mut drain = |b: &mut UdpNode| {
        std::thread::sleep(Duration::from_millis(5));
        for _ in 0..100 {
            if b.receive(Instant::now(), 1024, &mut inbound) == 0 {
                break;
            }
        }
    };
    let forward = |from: &NodeId| {
        let mut msg = Vec::new();
        crate::relay::wrap(crate::relay::FORWARDED, from, &[4; 40], &mut msg);
        relay.send_to(&msg, to).unwrap();
    };
    forward(&member);
    let strangers = MAX_RELAYED_STRANGERS * 4;
    for i in 0..strangers {
        forward(&format!("0x{:040x}", i + 1).parse().unwrap());
        if i % 64 == 63 {
            drain(&mut b);
        }
    }
    drain(&mut b);
    assert_eq!(b.stats().relayed_in, strangers as u64 + 1);
    assert_eq!(
        b.stats().relay_strangers_evicted,
        (strangers - MAX_RELAYED_STRANGERS) as u64
    );
    assert_eq!(b.relay_path.len(), MAX_RELAYED_STRANGERS + 1);
    assert!(
        b.relay_path.contains_key(&member),
        "a member keeps its path"
    );
    // Placeholders are never reused: each maps back to its own node.
    assert_eq!(b.relayed.len(), b.relay_path.len());
    assert!(b.relay_path.iter().all(|(n, fake)| b.relayed[fake] == *n));
}

fn udp_packets(from: u8, to: u8, tag: u8, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            udp_v4(
                Ipv4Addr::new(10, 7, 0, from),
                Ipv4Addr::new(10, 7, 0, to),
                1000 + u16::from(tag),
                2000,
                &[tag, i as u8, 7, 7, 7, 7, 7, 7],
            )
        })
        .collect()
}

/// A batch holding copies of `packets`, as an attachment's read would.
fn frames_of(packets: &[Vec<u8>]) -> Frames {
    let mut frames = Frames::default();
    for p in packets {
        assert!(frames.push_copy(p));
    }
    frames
}

/// Routes `packets` into a plan made by `node` (routing and reservation; the caller seals
/// and sends).
fn plan(node: &mut UdpNode, packets: &[Vec<u8>]) -> SealPlan {
    let mut plan = SealPlan::default();
    let frames = packets.iter().map(Vec::as_slice).enumerate();
    let answers = node
        .route_for_sealing(NET, frames, packets.len() as u64, Instant::now(), &mut plan)
        .unwrap();
    assert!(answers.is_empty());
    plan
}

#[test]
fn batches_sealed_outside_the_node_arrive_once_whatever_their_order() {
    let (mut a, mut b) = pair();
    // No session yet: the first batch goes the slow way (queued behind the handshake).
    let first = udp_packets(1, 2, 0, 3);
    let slow = plan(&mut a, &first);
    assert!(
        slow.is_empty(),
        "no session: nothing is left to seal outside"
    );
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == first.len()
    });
    assert_eq!(ib.frames.len(), first.len());

    // Two batches routed in turn (as two datapath threads would), sealed and sent in
    // the opposite order: the receiver takes every packet exactly once.
    let socket = a.socket().try_clone().unwrap();
    let one = udp_packets(1, 2, 1, 40);
    let two = udp_packets(1, 2, 2, 40);
    let mut plan_one = plan(&mut a, &one);
    let mut plan_two = plan(&mut a, &two);
    assert_eq!((plan_one.len(), plan_two.len()), (40, 40));
    let before = a.tunnel_stats();
    let sealed_two = plan_two.seal_and_send(&socket, &mut frames_of(&two));
    let sealed_one = plan_one.seal_and_send(&socket, &mut frames_of(&one));
    assert_eq!(
        (sealed_one.packets, sealed_one.sent, sealed_one.failed),
        (40, 40, 0)
    );
    assert_eq!(
        (sealed_two.packets, sealed_two.sent, sealed_two.failed),
        (40, 40, 0)
    );
    assert!(plan_one.is_empty() && plan_two.is_empty());
    a.count_sealed(sealed_one);
    a.count_sealed(sealed_two);
    let after = a.tunnel_stats();
    assert_eq!(after.packets_out - before.packets_out, 80);
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 80
    });
    let got: Vec<Vec<u8>> = ib.frames.into_iter().map(|(_, f)| f).collect();
    let want: Vec<Vec<u8>> = two.iter().chain(&one).cloned().collect();
    assert_eq!(
        got, want,
        "each batch once and in order, the later one first"
    );
    assert_eq!(
        b.tunnel_stats().drops.total(),
        0,
        "nothing taken for a replay"
    );
}

#[test]
fn a_sealing_plan_routes_like_send_packets() {
    let (mut a, mut b) = pair();
    // Warm the session up.
    a.send_packets(NET, [udp_packets(1, 2, 0, 1)[0].as_slice()], Instant::now())
        .unwrap();
    pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 1
    });
    // A spoofed source and an address nobody has are dropped by the router; the rest is
    // planned.
    let spoofed = udp_packets(9, 2, 1, 1).remove(0);
    let nobody = udp_packets(1, 99, 1, 1).remove(0);
    let good = udp_packets(1, 2, 1, 1).remove(0);
    let frames = [spoofed, nobody, good.clone()];
    let drops = a.router(NET).unwrap().drops().total();
    let mut plan = SealPlan::default();
    let answers = a
        .route_for_sealing(
            NET,
            frames.iter().map(Vec::as_slice).enumerate(),
            3,
            Instant::now(),
            &mut plan,
        )
        .unwrap();
    assert!(answers.is_empty());
    assert_eq!(plan.len(), 1);
    assert_eq!(a.router(NET).unwrap().drops().total() - drops, 2);
    let socket = a.socket().try_clone().unwrap();
    let sealed = plan.seal_and_send(&socket, &mut frames_of(&frames));
    assert_eq!(sealed.sent, 1);
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 1
    });
    assert_eq!(ib.frames, vec![(NET.to_owned(), good)]);
    assert!(matches!(
        a.route_for_sealing("nope", std::iter::empty(), 1, Instant::now(), &mut plan),
        Err(DatapathError::UnknownNetwork(_))
    ));
}

#[test]
fn a_reused_plan_takes_the_fast_path_once_the_session_is_up() {
    // As a datapath thread does: one plan for every batch, cleared before each, sealed
    // only when something was planned. (Cleared only by sealing, a plan whose batch all
    // went the slow way kept that peer on the slow path for good.)
    let (mut a, mut b) = pair();
    let socket = a.socket().try_clone().unwrap();
    let mut plan = SealPlan::default();
    let batch = |a: &mut UdpNode, plan: &mut SealPlan, tag: u8| {
        let packets = udp_packets(1, 2, tag, 10);
        plan.clear();
        let frames = packets.iter().map(Vec::as_slice).enumerate();
        a.route_for_sealing(NET, frames, 10, Instant::now(), plan)
            .unwrap();
        let planned = plan.len();
        if !plan.is_empty() {
            let sealed = plan.seal_and_send(&socket, &mut frames_of(&packets));
            a.count_sealed(sealed);
        }
        planned
    };
    // No session: the first batch waits behind the handshake (slow path), nothing planned.
    assert_eq!(batch(&mut a, &mut plan, 1), 0);
    pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 10
    });
    // The session is up: the next batch is sealed outside the node.
    assert_eq!(batch(&mut a, &mut plan, 2), 10);
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 10
    });
    assert_eq!(ib.frames.len(), 10);
}

#[test]
fn a_frame_for_one_peer_is_sealed_where_it_lies_and_a_broadcast_is_copied() {
    // Three nodes: A sends B unicasts and broadcasts (to B and C) in one batch.
    let (mut a, mut b) = pair();
    let mut c = node(3);
    c.add_network(router_for(&c, 3));
    let (a_id, c_id) = (a.node_id(), c.node_id());
    let (a_addr, c_addr) = (a.local_addr().unwrap(), c.local_addr().unwrap());
    a.add_peer(NET, c_id, ip(3), Some(c_addr)).unwrap();
    c.add_peer(NET, a_id, ip(1), Some(a_addr)).unwrap();
    b.add_peer(NET, c_id, ip(3), Some(c_addr)).unwrap();
    // Sessions up with both.
    let hello = [
        udp_packets(1, 2, 0, 1).remove(0),
        udp_packets(1, 3, 0, 1).remove(0),
    ];
    a.send_packets(NET, hello.iter().map(Vec::as_slice), Instant::now())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut ib, mut ic) = (Inbound::default(), Inbound::default());
    while Instant::now() < deadline && (ib.frames.is_empty() || ic.frames.is_empty()) {
        let mut ia = Inbound::default();
        let now = Instant::now();
        a.receive(now, 1024, &mut ia);
        b.receive(now, 1024, &mut ib);
        c.receive(now, 1024, &mut ic);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!((ib.frames.len(), ic.frames.len()), (1, 1));

    let unicast = udp_packets(1, 2, 1, 3);
    let broadcast = udp_v4(
        Ipv4Addr::new(10, 7, 0, 1),
        Ipv4Addr::new(10, 7, 0, 255),
        1000,
        2000,
        b"to everyone",
    );
    let batch = vec![
        unicast[0].clone(),
        broadcast.clone(),
        unicast[1].clone(),
        unicast[2].clone(),
    ];
    let drops =
        |b: &UdpNode, c: &UdpNode| b.tunnel_stats().drops.total() + c.tunnel_stats().drops.total();
    let drops_before = drops(&b, &c);
    let mut frames = frames_of(&batch);
    let mut plan = SealPlan::default();
    let routed = frames.len();
    let answers = a
        .route_for_sealing(
            NET,
            (0..routed)
                .map(|k| (k, frames.frame(k)))
                .collect::<Vec<_>>(),
            routed as u64,
            Instant::now(),
            &mut plan,
        )
        .unwrap();
    assert!(answers.is_empty());
    assert_eq!(plan.len(), 5, "three unicasts, the broadcast twice");
    let socket = a.socket().try_clone().unwrap();
    let sealed = plan.seal_and_send(&socket, &mut frames);
    assert_eq!((sealed.packets, sealed.sent, sealed.failed), (5, 5, 0));
    // The unicasts became their datagrams in place; the broadcast's frame is untouched.
    for k in [0, 2, 3] {
        assert_ne!(
            frames.frame(k),
            batch[k].as_slice(),
            "frame {k} sealed in place"
        );
    }
    assert_eq!(frames.frame(1), broadcast.as_slice());
    let (mut ib, mut ic) = (Inbound::default(), Inbound::default());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && (ib.frames.len() < 4 || ic.frames.is_empty()) {
        let now = Instant::now();
        b.receive(now, 1024, &mut ib);
        c.receive(now, 1024, &mut ic);
        std::thread::sleep(Duration::from_millis(1));
    }
    let got_b: Vec<Vec<u8>> = ib.frames.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got_b, batch, "B: every packet, byte-exact, in order");
    let got_c: Vec<Vec<u8>> = ic.frames.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got_c, vec![broadcast]);
    assert_eq!(drops(&b, &c), drops_before, "nothing dropped");
}

#[test]
fn sealing_in_place_needs_its_room_and_a_counter() {
    let (mut a, mut b) = pair();
    a.send_packets(NET, [udp_packets(1, 2, 0, 1)[0].as_slice()], Instant::now())
        .unwrap();
    pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 1
    });
    let b_id = b.node_id();
    let (mut batch, _) = a
        .endpoint
        .reserve(&b_id, 2, Instant::now())
        .unwrap()
        .unwrap();
    let packet = udp_packets(1, 2, 1, 1).remove(0);
    let n = packet.len();
    let prefix = crate::tunnel::DATA_HEADER_LEN + 2 + NET.len();
    let mut buf = vec![0u8; prefix + n + crate::tunnel::TAG_LEN];
    buf[prefix..prefix + n].copy_from_slice(&packet);
    // One byte short in front, or behind: refused, nothing written, no counter used.
    let before = buf.clone();
    assert_eq!(
        batch.seal_ip_in_place(NET, &mut buf, prefix - 1..prefix - 1 + n),
        None
    );
    assert_eq!(
        batch.seal_ip_in_place(NET, &mut buf[..prefix + n + 15], prefix..prefix + n),
        None
    );
    assert_eq!(buf, before);
    assert_eq!(batch.remaining(), 2);
    // Exactly enough: the whole buffer is the datagram, and B opens it.
    let at = batch.seal_ip_in_place(NET, &mut buf, prefix..prefix + n);
    assert_eq!(at, Some(0..buf.len()));
    let mut plain = Vec::new();
    let got = b
        .endpoint
        .receive_into(a.local_addr().unwrap(), &buf, Instant::now(), &mut plain);
    assert_eq!(got.map(|d| d.bytes.to_vec()), Some(packet.clone()));
    // Counters run out.
    let mut buf2 = before.clone();
    assert!(
        batch
            .seal_ip_in_place(NET, &mut buf2, prefix..prefix + n)
            .is_some()
    );
    let mut buf3 = before;
    assert_eq!(
        batch.seal_ip_in_place(NET, &mut buf3, prefix..prefix + n),
        None
    );
}

#[test]
fn a_packet_longer_than_any_can_be_is_counted_not_cut() {
    let (mut a, mut b) = pair();
    let good = udp_packets(1, 2, 1, 2);
    let huge = vec![0x45u8; attach::MAX_FRAME + 1];
    let batch = [good[0].as_slice(), huge.as_slice(), good[1].as_slice()];
    let errors = a.stats().send_errors;
    a.send_packets(NET, batch, Instant::now()).unwrap();
    assert_eq!(a.stats().send_errors, errors + 1);
    let (_, ib) = pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 2
    });
    let got: Vec<Vec<u8>> = ib.frames.into_iter().map(|(_, f)| f).collect();
    assert_eq!(got, good, "the others, whole and in order");
}

#[test]
fn data_messages_reach_the_lane_they_name_and_open_there() {
    // B receives on three lanes: its own socket (lane 0) and two more of its group.
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let lanes_b = UdpNode::bind_lanes(&identity(2), loopback, Config::default(), 2, 3);
    let (mut a, mut b) = pair_with(lanes_b.unwrap());
    let b_addr = b.local_addr().unwrap();
    let mut lanes = b.open_lanes().unwrap();
    assert_eq!(b.lanes(), 3);
    assert_eq!(lanes.iter().map(Lane::index).collect::<Vec<_>>(), [1, 2]);
    for lane in &lanes {
        assert_eq!(lane.socket().local_addr().unwrap(), b_addr, "one port");
    }
    // The handshake and the first packet go on lane 0, to B's own socket.
    a.send_packets(NET, [udp_packets(1, 2, 0, 1)[0].as_slice()], Instant::now())
        .unwrap();
    pump(&mut a, &mut b, Duration::from_secs(5), |_, ib| {
        ib.frames.len() == 1
    });
    // Four packets on each of lanes 1 to 5, each lane from a plan of its own (as each
    // TUN queue's thread has).
    let socket = a.socket().try_clone().unwrap();
    let mut sent = Vec::new();
    for lane in 1..=5u8 {
        let packets = udp_packets(1, 2, lane, 4);
        let mut frames = frames_of(&packets);
        let mut plan = SealPlan::default();
        plan.set_lane(usize::from(lane));
        let batch: Vec<_> = (0..4).map(|k| (k, frames.frame(k))).collect();
        a.route_for_sealing(NET, batch, 4, Instant::now(), &mut plan)
            .unwrap();
        assert_eq!(plan.seal_and_send(&socket, &mut frames).sent, 4);
        sent.push(packets);
    }
    // Lane l is read from socket l % 3, and opened there.
    let mut got = [Inbound::default(), Inbound::default(), Inbound::default()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && got.iter().map(|g| g.frames.len()).sum::<usize>() < 20 {
        let now = Instant::now();
        b.receive(now, 1024, &mut got[0]);
        for (lane, into) in lanes.iter_mut().zip(&mut got[1..]) {
            if lane.read() > 0 {
                b.receive_lane(lane, now, into);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let frames =
        |g: &Inbound| -> Vec<Vec<u8>> { g.frames.iter().map(|(_, f)| f.clone()).collect() };
    assert_eq!(frames(&got[0]), sent[2], "lane 3 on socket 0");
    assert_eq!(
        frames(&got[1]),
        [&sent[0][..], &sent[3][..]].concat(),
        "lanes 1, 4"
    );
    assert_eq!(
        frames(&got[2]),
        [&sent[1][..], &sent[4][..]].concat(),
        "lanes 2, 5"
    );
    assert_eq!(b.tunnel_stats().drops.total(), 0);
}

#[test]
fn a_node_of_one_lane_opens_none() {
    let (mut a, _) = pair();
    assert_eq!(a.lanes(), 1);
    assert!(a.open_lanes().unwrap().is_empty());
}
