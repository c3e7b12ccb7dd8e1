//! Tunnel tests: a quinn-proto-style `Pair` harness drives two endpoints over a virtual
//! link (seeded loss, reordering, duplication) with a virtual clock.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::replay::ReplayWindow;
use super::wire::{self, Inner};
use super::*;
use crate::identity::Identity;

pub(super) fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32]).unwrap()
}

/// Documentation addresses (RFC 5737): nothing here touches a network.
pub(super) fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, host], port))
}

pub(super) fn ip<'a>(network: &'a str, bytes: &'a [u8]) -> Payload<'a> {
    Payload {
        kind: PayloadKind::Ip,
        network,
        bytes,
    }
}

/// A packet the link carries.
#[derive(Debug, Clone)]
struct Datagram {
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// How the virtual link behaves.
#[derive(Debug, Clone, Copy)]
struct Link {
    latency: Duration,
    /// Extra random delay per datagram, up to this (reorders datagrams).
    jitter: Duration,
    /// Percent of datagrams lost.
    loss: u64,
    /// Percent of datagrams delivered twice.
    duplicate: u64,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0,
            duplicate: 0,
        }
    }
}

type Filter = Box<dyn FnMut(&Datagram) -> bool>;

struct Side {
    ep: Endpoint,
    addr: SocketAddr,
    events: Vec<Event>,
    received: Vec<(NodeId, PayloadKind, String, Vec<u8>)>,
}

impl Side {
    fn new(id: &Identity, addr: SocketAddr, config: Config, seed: u64) -> Self {
        Side {
            ep: Endpoint::new(id, config, seed).unwrap(),
            addr,
            events: Vec::new(),
            received: Vec::new(),
        }
    }

    fn id(&self) -> NodeId {
        self.ep.node_id()
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.received.iter().map(|r| r.3.clone()).collect()
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.ep.stats().drops.get(reason)
    }
}

/// Two endpoints (A = node 1, B = node 2) that allow and know each other, joined by a
/// virtual link.
struct Pair {
    a: Side,
    b: Side,
    start: Instant,
    now: Instant,
    link: Link,
    rng: XorShift,
    seq: u64,
    flight: Vec<(Instant, u64, Datagram)>,
    /// Every datagram put on the link, in order.
    log: Vec<Datagram>,
    /// Decides whether a datagram enters the link (false: lost).
    filter: Option<Filter>,
}

impl Pair {
    fn new() -> Self {
        Self::with(Config::default(), Link::default())
    }

    fn with(config: Config, link: Link) -> Self {
        let mut a = Side::new(&identity(1), addr(1, 4000), config.clone(), 1);
        let mut b = Side::new(&identity(2), addr(2, 5000), config, 2);
        a.ep.allow(b.id());
        a.ep.set_peer_address(b.id(), b.addr);
        b.ep.allow(a.id());
        b.ep.set_peer_address(a.id(), a.addr);
        let start = Instant::now();
        Pair {
            a,
            b,
            start,
            now: start,
            link,
            rng: XorShift::new(7),
            seq: 0,
            flight: Vec::new(),
            log: Vec::new(),
            filter: None,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn send_ab(&mut self, network: &str, bytes: &[u8]) {
        let b = self.b.id();
        self.a.ep.send(&b, ip(network, bytes), self.now).unwrap();
    }

    fn send_ba(&mut self, network: &str, bytes: &[u8]) {
        let a = self.a.id();
        self.b.ep.send(&a, ip(network, bytes), self.now).unwrap();
    }

    /// Moves queued transmits onto the link and events into the sides.
    fn pump(&mut self) {
        for side in [&mut self.a, &mut self.b] {
            while let Some(ev) = side.ep.poll_event() {
                match ev {
                    Event::Received {
                        peer,
                        kind,
                        network,
                        bytes,
                    } => side.received.push((peer, kind, network, bytes)),
                    other => side.events.push(other),
                }
            }
        }
        let mut out = Vec::new();
        for side in [&mut self.a, &mut self.b] {
            while let Some(t) = side.ep.poll_transmit() {
                out.push(Datagram {
                    from: side.addr,
                    to: t.dst,
                    bytes: t.bytes,
                });
            }
        }
        for d in out {
            self.put(d);
        }
    }

    fn put(&mut self, d: Datagram) {
        self.log.push(d.clone());
        if let Some(f) = self.filter.as_mut()
            && !f(&d)
        {
            return;
        }
        if self.rng.next_u64() % 100 < self.link.loss {
            return;
        }
        let copies = if self.rng.next_u64() % 100 < self.link.duplicate {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let jitter = match self.link.jitter.as_micros() as u64 {
                0 => Duration::ZERO,
                j => Duration::from_micros(self.rng.next_u64() % j),
            };
            self.seq += 1;
            let at = self.now + self.link.latency + jitter;
            self.flight.push((at, self.seq, d.clone()));
        }
    }

    /// Hands a datagram to whichever side owns its destination (lost if none does).
    fn deliver(&mut self, d: &Datagram) {
        let now = self.now;
        for side in [&mut self.a, &mut self.b] {
            if side.addr == d.to {
                side.ep.handle_datagram(d.from, &d.bytes, now);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let flight = self.flight.iter().map(|f| f.0).min();
        [flight, self.a.ep.poll_at(), self.b.ep.poll_at()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs everything due at the current time.
    fn step(&mut self) {
        for _ in 0..10_000 {
            self.pump();
            let now = self.now;
            let mut due: Vec<_> = Vec::new();
            self.flight.retain(|f| {
                if f.0 <= now {
                    due.push(f.clone());
                    false
                } else {
                    true
                }
            });
            due.sort_by_key(|f| (f.0, f.1));
            let mut busy = !due.is_empty();
            for (_, _, d) in due {
                self.deliver(&d);
            }
            for side in [&mut self.a, &mut self.b] {
                if side.ep.poll_at().is_some_and(|t| t <= now) {
                    side.ep.handle_timeout(now);
                    busy = true;
                }
            }
            self.pump();
            if !busy && self.flight.iter().all(|f| f.0 > now) {
                return;
            }
        }
        panic!("livelock at {:?}", self.elapsed());
    }

    /// Runs until virtual time `t` (from the start), timers included.
    fn run_until(&mut self, t: Duration) {
        let end = self.start + t;
        self.step();
        while let Some(next) = self.next_deadline().filter(|&n| n <= end) {
            self.now = self.now.max(next);
            self.step();
        }
        self.now = self.now.max(end);
        self.step();
    }

    fn run_for(&mut self, d: Duration) {
        let t = self.elapsed() + d;
        self.run_until(t);
    }

    /// Delivers everything in flight (timers that fall due meanwhile run too).
    fn settle(&mut self) {
        self.pump();
        while let Some(next) = self.flight.iter().map(|f| f.0).min() {
            self.now = self.now.max(next);
            self.step();
        }
    }

    /// A then B handshake and exchange one payload each way.
    /// A connected pair, and the data messages A sealed for B carrying `payloads` (on
    /// network "net"), held back: B has not seen them.
    fn held_back(payloads: &[&[u8]]) -> (Pair, Vec<Datagram>) {
        let mut p = Pair::new();
        p.connect();
        p.filter = Some(Box::new(|_| false));
        for bytes in payloads {
            p.send_ab("net", bytes);
        }
        p.pump();
        let held = p.log[p.log.len() - payloads.len()..].to_vec();
        (p, held)
    }

    fn connect(&mut self) {
        self.send_ab("net", b"hello b");
        self.settle();
        self.send_ba("net", b"hello a");
        self.settle();
        assert!(self.a.ep.is_up(&self.b.id()) && self.b.ep.is_up(&self.a.id()));
    }
}

/// Sets message 1's mac1 for `responder` (anyone who knows its id can).
pub(super) fn sign_mac1(init: &mut [u8], responder: &NodeId) {
    let mac1 = cookie::mac(&cookie::mac1_key(responder), &init[..wire::INIT_MAC1_AT]);
    init[wire::INIT_MAC1_AT..wire::INIT_MAC2_AT].copy_from_slice(&mac1);
}

/// A message 1 to `responder` as an attacker who knows its id makes it: a made-up
/// ephemeral key, a valid mac1, no mac2.
pub(super) fn forged_init(responder: &NodeId, sender_index: u32, suite: u8) -> Vec<u8> {
    let mut init = vec![0u8; wire::INIT_LEN];
    init[0] = 1;
    init[1..5].copy_from_slice(&sender_index.to_le_bytes());
    init[5] = suite;
    for (i, b) in init[wire::INIT_NOISE_AT..wire::INIT_MAC1_AT]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(37).wrapping_add(sender_index as u8) | 1;
    }
    sign_mac1(&mut init, responder);
    init
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn handshake_completes_and_both_sides_know_the_peer() {
    let mut p = Pair::new();
    p.send_ab("net-1", b"first");
    p.settle();
    let (a, b) = (p.a.id(), p.b.id());
    assert_eq!(
        p.b.received,
        vec![(a, PayloadKind::Ip, "net-1".into(), b"first".to_vec())]
    );
    assert_eq!(
        p.b.take_events(),
        vec![Event::PeerUp {
            peer: a,
            addr: p.a.addr
        }]
    );
    assert_eq!(
        p.a.take_events(),
        vec![Event::PeerUp {
            peer: b,
            addr: p.b.addr
        }]
    );
    for side in [&p.a, &p.b] {
        let s = side.ep.stats();
        assert_eq!(s.handshakes_completed, 1);
        assert_eq!(s.handshakes_failed, 0);
        assert_eq!(s.drops.total(), 0, "{:?}", s.drops);
    }
    assert_eq!(p.a.ep.stats().handshakes_started, 1);
    assert_eq!(p.b.ep.stats().handshakes_started, 0);
    assert_eq!(
        p.log.iter().map(|d| d.bytes[0]).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 4],
        "init, response, final, data, confirming keep-alive"
    );
    assert_eq!(p.log[0].bytes.len(), 70);
    assert_eq!(p.log[1].bytes.len(), 174);
    assert_eq!(p.log[2].bytes.len(), 134);
    assert_eq!(p.log[3].bytes.len(), 13 + 2 + 5 + 5 + 16);
    assert_eq!(p.log[4].bytes.len(), DATA_MIN_LEN);
}

#[test]
fn payloads_cross_byte_exact_for_many_networks_on_one_session() {
    let mut p = Pair::new();
    let long = "n".repeat(MAX_NETWORK_LEN);
    let networks = [
        "",
        "net-1",
        "0123456789abcdef0123456789abcdef",
        "réseau",
        &long,
    ];
    let mut sent_ab = Vec::new();
    let mut sent_ba = Vec::new();
    for (i, net) in networks.iter().enumerate() {
        for len in [0usize, 1, 20, 1400, 9000] {
            let bytes: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7 + len) as u8).collect();
            let kind = if len % 2 == 0 {
                PayloadKind::Ip
            } else {
                PayloadKind::Control
            };
            let (b, a) = (p.b.id(), p.a.id());
            let payload = Payload {
                kind,
                network: net,
                bytes: &bytes,
            };
            p.a.ep.send(&b, payload, p.now).unwrap();
            sent_ab.push((a, kind, net.to_string(), bytes.clone()));
            p.settle();
            p.b.ep.send(&a, payload, p.now).unwrap();
            sent_ba.push((b, kind, net.to_string(), bytes));
            p.settle();
        }
    }
    assert_eq!(p.b.received, sent_ab);
    assert_eq!(p.a.received, sent_ba);
    for side in [&p.a, &p.b] {
        let s = side.ep.stats();
        assert_eq!(
            s.handshakes_completed, 1,
            "one session serves every network"
        );
        assert_eq!(s.packets_in, sent_ab.len() as u64);
        assert_eq!(s.packets_out, sent_ab.len() as u64);
        assert_eq!(s.drops.total(), 0);
    }
}

#[test]
fn a_node_answering_for_another_id_fails_the_handshake() {
    let mut p = Pair::new();
    // Y (node 3) is dialed, but X (node 2, B) sits at Y's address, and answers what is
    // meant for Y (mac1 only needs Y's id, which is no secret).
    let y = identity(3).node_id();
    p.b.ep.cookies = cookie::CookieChecker::new(y);
    p.a.ep.allow(y);
    p.a.ep.set_peer_address(y, p.b.addr);
    p.a.ep.send(&y, ip("net", b"for y"), p.now).unwrap();
    p.run_until(secs(100));
    assert!(p.b.received.is_empty() && p.a.received.is_empty());
    assert!(p.a.drops(DropReason::IdentityMismatch) >= 10, "every retry");
    assert_eq!(p.a.ep.stats().handshakes_completed, 0);
    assert!(!p.a.ep.is_up(&y));
    assert_eq!(
        p.a.take_events(),
        vec![Event::PeerDown {
            peer: y,
            reason: DownReason::HandshakeTimeout
        }]
    );
    assert_eq!(p.a.drops(DropReason::Unreachable), 1, "the queued payload");
    assert!(p.b.take_events().is_empty());
}

#[test]
fn a_stolen_identity_proof_does_not_verify() {
    // X (B) presents Y's proof with its own Noise key, as responder and as initiator.
    let mut p = Pair::new();
    let y = Endpoint::new(&identity(3), Config::default(), 3).unwrap();
    p.b.ep.proof = y.proof;
    p.b.ep.cookies = cookie::CookieChecker::new(y.node_id());
    let (a, b, y) = (p.a.id(), p.b.id(), y.node_id());
    p.a.ep.allow(y);
    p.a.ep.set_peer_address(y, p.b.addr);
    p.a.ep.send(&y, ip("net", b"for y"), p.now).unwrap();
    p.settle();
    let refused = |s: &Side| {
        s.drops(DropReason::IdentityMismatch)
            + s.drops(DropReason::HandshakeFailed)
            + s.drops(DropReason::NotAllowed)
    };
    assert_eq!(refused(&p.a), 1);
    assert_eq!(p.a.ep.stats().handshakes_completed, 0);

    // As initiator towards A, who allows Y only.
    p.a.ep.disallow(&b);
    p.b.ep.send(&a, ip("net", b"i am y"), p.now).unwrap();
    p.settle();
    assert_eq!(refused(&p.a), 2);
    assert!(p.a.received.is_empty() && p.b.received.is_empty());
    assert!(!p.a.ep.is_up(&y) && !p.a.ep.is_up(&b));
}

#[test]
fn a_responder_refuses_ids_it_does_not_allow() {
    let mut p = Pair::new();
    let (a, b) = (p.a.id(), p.b.id());
    p.b.ep.disallow(&a);
    p.send_ab("net", b"let me in");
    p.run_until(secs(100));
    assert!(p.b.received.is_empty());
    assert!(p.b.drops(DropReason::NotAllowed) >= 10, "every retry");
    assert_eq!(p.b.ep.stats().handshakes_completed, 0);
    assert!(p.b.take_events().is_empty());
    // A authenticated B, but B never confirmed: A never reports it up, and gives up.
    assert_eq!(
        p.a.take_events(),
        vec![Event::PeerDown {
            peer: b,
            reason: DownReason::HandshakeTimeout
        }]
    );
    assert_eq!(p.a.ep.stats().handshakes_failed, 1);
}

#[test]
fn a_replayed_data_message_is_delivered_once() {
    let mut p = Pair::new();
    p.connect();
    p.send_ab("net", b"once");
    p.settle();
    let data = p.log.last().unwrap().clone();
    assert_eq!(data.bytes[0], 4);
    for _ in 0..3 {
        p.b.ep.handle_datagram(data.from, &data.bytes, p.now);
    }
    p.pump();
    assert_eq!(p.b.payloads(), vec![b"hello b".to_vec(), b"once".to_vec()]);
    assert_eq!(p.b.drops(DropReason::Replayed), 3);
}

#[test]
fn a_tampered_data_message_is_never_delivered() {
    // Hold A's next message back, then feed B every one-byte corruption of it.
    let (mut p, held) = Pair::held_back(&[b"integrity matters"]);
    let data = held[0].clone();
    for i in 0..data.bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = data.bytes.clone();
            bad[i] ^= mask;
            let before = p.b.ep.stats().drops.total();
            p.b.ep.handle_datagram(data.from, &bad, p.now);
            assert_eq!(
                p.b.ep.stats().drops.total(),
                before + 1,
                "byte {i} ^ {mask:#x}"
            );
        }
        let truncated = &data.bytes[..i];
        p.b.ep.handle_datagram(data.from, truncated, p.now);
    }
    p.pump();
    assert_eq!(p.b.payloads(), vec![b"hello b".to_vec()]);
    let s = p.b.ep.stats();
    assert!(s.drops.get(DropReason::DecryptFailed) > 0);
    assert!(s.drops.get(DropReason::UnknownIndex) > 0);
    // The genuine message still goes through: forgeries did not move the window.
    p.b.ep.handle_datagram(data.from, &data.bytes, p.now);
    p.pump();
    assert_eq!(p.b.payloads().last().unwrap(), b"integrity matters");
    assert_eq!(p.b.ep.peer_address(&p.a.id()), Some(p.a.addr));
}

#[test]
fn a_data_message_is_opened_where_it_lies() {
    let (mut p, held) = Pair::held_back(&[b"decrypted in place"]);
    let data = held[0].clone();
    // Forged in place: refused, the buffer is garbage, nothing moves.
    let mut bad = data.bytes.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(
        p.b.ep
            .receive_in_place(data.from, &mut bad, p.now)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::DecryptFailed), 1);
    // Genuine: the payload is a slice of the datagram's own buffer, after the header.
    let mut buf = data.bytes.clone();
    let at = buf.as_ptr() as usize;
    let got = p.b.ep.receive_in_place(data.from, &mut buf, p.now).unwrap();
    assert_eq!(
        (got.peer, got.network, got.bytes),
        (p.a.id(), "net", &b"decrypted in place"[..])
    );
    let offset = got.bytes.as_ptr() as usize - at;
    assert_eq!(offset, wire::DATA_HEADER_LEN + 2 + "net".len());
    // Once only, in place or not.
    let mut again = data.bytes.clone();
    assert!(
        p.b.ep
            .receive_in_place(data.from, &mut again, p.now)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::Replayed), 1);
    let mut plain = Vec::new();
    assert!(
        p.b.ep
            .receive_into(data.from, &data.bytes, p.now, &mut plain)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::Replayed), 2);
}

#[test]
fn the_lane_a_data_message_names_only_steers_it() {
    // Type 4 is lane 0, 0x41..=0x4f lanes 1 to 15; no other byte is a data message.
    for t in 0..=255u8 {
        let want = match t {
            4 => Some(0),
            0x41..=0x4f => Some(t - 0x40),
            _ => None,
        };
        assert_eq!(wire::data_lane(t), want, "type {t:#x}");
    }
    for lane in 0..=40u8 {
        assert_eq!(
            wire::data_lane(wire::data_type(lane)),
            Some(lane % 16),
            "lane {lane}"
        );
    }
    // The lane is not what is authenticated: the same message on another lane opens
    // alike, and still once only.
    let (mut p, held) = Pair::held_back(&[b"any lane"]);
    let data = held[0].clone();
    let mut moved = data.bytes.clone();
    moved[0] = wire::data_type(7);
    let got =
        p.b.ep
            .receive_in_place(data.from, &mut moved, p.now)
            .unwrap();
    assert_eq!(got.bytes, b"any lane");
    let mut again = data.bytes.clone();
    assert!(
        p.b.ep
            .receive_in_place(data.from, &mut again, p.now)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::Replayed), 1);
}

#[test]
fn a_data_message_opened_off_the_endpoint_is_checked_twice_and_delivered_once() {
    let (mut p, held) = Pair::held_back(&[b"first", b"second"]);
    let (first, second) = (held[0].clone(), held[1].clone());
    // Not data, or no session: no ticket (receive_in_place handles and counts those).
    assert!(p.b.ep.ticket(&[wire::HANDSHAKE_INIT; 80], p.now).is_none());
    let mut unknown = first.bytes.clone();
    unknown[1] ^= 0x55;
    assert!(p.b.ep.ticket(&unknown, p.now).is_none());
    // Two tickets for one message (a datagram read twice by two threads): both open it,
    // the first accepted delivers, the second is a replay.
    let (t1, t2) = (
        p.b.ep.ticket(&first.bytes, p.now).unwrap(),
        p.b.ep.ticket(&first.bytes, p.now).unwrap(),
    );
    let (mut c1, mut c2) = (first.bytes.clone(), first.bytes.clone());
    let (n1, n2) = (t1.open(&mut c1), t2.open(&mut c2));
    assert!(n1.is_some() && n1 == n2);
    // A ticket opens only its own message.
    assert_eq!(t1.open(&mut second.bytes.clone()), None);
    let got =
        p.b.ep
            .accept_opened(first.from, &t1, &c1, n1, p.now)
            .unwrap();
    assert_eq!(
        (got.peer, got.network, got.bytes),
        (p.a.id(), "net", &b"first"[..])
    );
    assert!(
        p.b.ep
            .accept_opened(first.from, &t2, &c2, n2, p.now)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::Replayed), 1);
    assert!(
        p.b.ep.ticket(&first.bytes, p.now).is_none(),
        "seen: no more tickets"
    );
    // Forged while being opened: refused, and the window did not move for it.
    let t = p.b.ep.ticket(&second.bytes, p.now).unwrap();
    let mut forged = second.bytes.clone();
    *forged.last_mut().unwrap() ^= 1;
    let plain = t.open(&mut forged);
    assert_eq!(plain, None);
    assert!(
        p.b.ep
            .accept_opened(second.from, &t, &forged, plain, p.now)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::DecryptFailed), 1);
    // The session went away while a thread opened the genuine one: not delivered.
    let t = p.b.ep.ticket(&second.bytes, p.now).unwrap();
    let mut genuine = second.bytes.clone();
    let plain = t.open(&mut genuine);
    assert!(plain.is_some());
    let a = p.a.id();
    p.b.ep.disallow(&a);
    assert!(
        p.b.ep
            .accept_opened(second.from, &t, &genuine, plain, p.now)
            .is_none()
    );
    assert_eq!(p.b.drops(DropReason::UnknownIndex), 1);
}

#[test]
fn tampered_handshake_messages_are_refused() {
    let mut p = Pair::new();
    let b = p.b.id();
    let (a_addr, b_addr) = (p.a.addr, p.b.addr);
    // One fresh handshake per corrupted byte, messages carried by hand, each a source's
    // rate apart (faster, B would ask A for a cookie).
    let exchange = |p: &mut Pair| {
        p.now += Duration::from_secs(1) / INITIATIONS_PER_SECOND;
        let now = p.now;
        p.a.ep.start_handshake(b, now);
        let init = p.a.ep.poll_transmit().unwrap().bytes;
        p.b.ep.handle_datagram(a_addr, &init, now);
        p.b.ep.poll_transmit().unwrap().bytes
    };
    for i in (1..wire::RESPONSE_LEN).step_by(5) {
        let mut response = exchange(&mut p);
        response[i] ^= 0x20;
        let before = p.a.ep.stats().drops;
        p.a.ep.handle_datagram(b_addr, &response, p.now);
        let after = p.a.ep.stats().drops;
        // The receiver index finds no handshake; anything else fails Noise or, for the
        // cleartext sender index, its authenticated copy.
        let reason = if (5..9).contains(&i) {
            DropReason::UnknownIndex
        } else {
            DropReason::HandshakeFailed
        };
        assert_eq!(after.get(reason), before.get(reason) + 1, "byte {i}");
        assert_eq!(after.total(), before.total() + 1, "byte {i}");
        assert_eq!(p.a.ep.poll_transmit(), None, "no final for byte {i}");
    }
    assert_eq!(p.a.ep.stats().handshakes_completed, 0);
    for i in (1..wire::FINAL_LEN).step_by(5) {
        let response = exchange(&mut p);
        p.a.ep.handle_datagram(b_addr, &response, p.now);
        let mut fin = p.a.ep.poll_transmit().unwrap().bytes;
        assert_eq!(fin[0], 3);
        fin[i] ^= 0x04;
        let before = p.b.ep.stats().drops;
        p.b.ep.handle_datagram(a_addr, &fin, p.now);
        let after = p.b.ep.stats().drops;
        let reason = if i < 5 {
            DropReason::UnknownIndex
        } else {
            DropReason::HandshakeFailed
        };
        assert_eq!(after.get(reason), before.get(reason) + 1, "byte {i}");
        assert_eq!(after.total(), before.total() + 1, "byte {i}");
    }
    let s = p.b.ep.stats();
    assert_eq!(s.handshakes_completed, 0);
    assert!(p.b.ep.indices.is_empty(), "no session");
    assert_eq!(p.b.ep.poll_event(), None);
    assert!(!p.a.ep.is_up(&b));
}

#[test]
fn a_refused_handshake_message_costs_one_try() {
    // A tampered response (here: the cleartext copy of the responder's index) spends
    // that try; the retry completes.
    let mut p = Pair::new();
    let mut tampered = false;
    p.filter = Some(Box::new(move |d| {
        if d.bytes[0] == 2 && !tampered {
            tampered = true;
            return false;
        }
        true
    }));
    p.send_ab("net", b"second time lucky");
    p.settle();
    let mut bad = p.log[1].bytes.clone();
    bad[2] ^= 0x01;
    let from = p.log[1].from;
    p.a.ep.handle_datagram(from, &bad, p.now);
    assert_eq!(p.a.drops(DropReason::HandshakeFailed), 1);
    assert_eq!(p.a.ep.stats().handshakes_failed, 1);
    p.run_until(secs(10));
    assert_eq!(p.b.payloads(), vec![b"second time lucky".to_vec()]);
    assert_eq!(p.a.ep.stats().handshakes_started, 2);
}

#[test]
fn reordering_within_the_window_is_accepted_and_duplicates_are_dropped() {
    let mut p = Pair::new();
    p.connect();
    p.link = Link {
        jitter: ms(50),
        duplicate: 30,
        ..Link::default()
    };
    let n = 500u32;
    for i in 0..n {
        p.send_ab("net", &i.to_le_bytes());
    }
    p.settle();
    let got: Vec<u32> = p.b.received[1..]
        .iter()
        .map(|r| u32::from_le_bytes(r.3[..4].try_into().unwrap()))
        .collect();
    assert_eq!(got.len(), n as usize, "each exactly once");
    assert_ne!(got, (0..n).collect::<Vec<_>>(), "the link reordered them");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    assert!(p.b.drops(DropReason::Replayed) > 100, "the duplicates");
    assert_eq!(
        p.b.ep.stats().drops.total(),
        p.b.drops(DropReason::Replayed)
    );
}

#[test]
fn a_counter_behind_the_window_is_dropped() {
    let mut p = Pair::new();
    p.connect();
    p.filter = Some(Box::new(|_| false));
    let first = p.log.len();
    for i in 0..(REPLAY_WINDOW + 10) {
        p.send_ab("", &i.to_le_bytes());
    }
    p.pump();
    let old = p.log[first].clone();
    let newest = p.log.last().unwrap().clone();
    let inside = p.log[p.log.len() - 100].clone();
    for d in [&newest, &old, &inside] {
        p.b.ep.handle_datagram(d.from, &d.bytes, p.now);
    }
    p.pump();
    assert_eq!(p.b.received.len(), 1 + 2, "newest and inside");
    assert_eq!(p.b.drops(DropReason::Replayed), 1, "the old one");
}

#[test]
fn replay_window_accepts_each_counter_once() {
    let mut w = ReplayWindow::new();
    assert!(w.check(0) && w.update(0));
    assert!(!w.check(0) && !w.update(0));
    let top = REPLAY_WINDOW + 5000;
    assert!(w.update(top));
    assert!(w.update(top - 1) && w.update(top - REPLAY_WINDOW));
    assert!(!w.check(top - REPLAY_WINDOW - 1) && !w.update(top - REPLAY_WINDOW - 1));
    assert!(!w.update(top - 1));
    // A jump past the whole bitmap clears it.
    assert!(w.update(1_000_000));
    assert!(w.update(1_000_000 - 64) && w.update(1_000_000 - REPLAY_WINDOW + 1));
    assert!(!w.update(1_000_000 - 64));
    assert!(!w.check(REJECT_AFTER_MESSAGES) && !w.update(REJECT_AFTER_MESSAGES));
    // Every counter once, out of order within the window.
    let mut w = ReplayWindow::new();
    let mut rng = XorShift::new(3);
    let mut seen = std::collections::HashSet::new();
    let mut highest = None;
    for i in 0..60_000u64 {
        let c = (i + rng.next_u64() % 64).saturating_sub(rng.next_u64() % (REPLAY_WINDOW + 68));
        let fresh = !seen.contains(&c) && highest.is_none_or(|h| c + REPLAY_WINDOW >= h);
        assert_eq!(w.check(c), fresh, "{c}");
        assert_eq!(w.update(c), fresh, "{c}");
        if fresh {
            seen.insert(c);
            highest = highest.max(Some(c));
        }
    }
}

#[test]
fn rekey_after_120_seconds_loses_nothing() {
    let mut p = Pair::new();
    p.connect();
    p.link = Link {
        latency: ms(30),
        jitter: ms(20),
        ..Link::default()
    };
    let a_index = p.a.ep.peers[&p.b.id()]
        .current
        .as_ref()
        .unwrap()
        .local_index;
    let mut sent = 0u32;
    while p.elapsed() < secs(150) {
        p.send_ab("net", &sent.to_le_bytes());
        p.send_ba("net", &sent.to_le_bytes());
        sent += 1;
        p.run_for(ms(250));
    }
    p.settle();
    assert_eq!(p.b.received.len() as u32, 1 + sent);
    assert_eq!(p.a.received.len() as u32, 1 + sent);
    for side in [&p.a, &p.b] {
        assert_eq!(side.ep.stats().handshakes_completed, 2, "one rekey");
        assert_eq!(side.ep.stats().drops.total(), 0);
        assert!(
            side.events
                .iter()
                .all(|e| matches!(e, Event::PeerUp { .. }))
        );
    }
    assert_eq!(p.a.ep.stats().handshakes_started, 2, "the initiator rekeys");
    assert_eq!(p.b.ep.stats().handshakes_started, 0);
    let peer = &p.a.ep.peers[&p.b.id()];
    assert_ne!(peer.current.as_ref().unwrap().local_index, a_index);
    assert!(peer.current.as_ref().unwrap().age(p.now) < secs(35));
}

#[test]
fn rekey_after_a_message_count() {
    let config = Config {
        rekey_after_messages: 50,
        ..Config::default()
    };
    let mut p = Pair::with(config, Link::default());
    p.connect();
    for i in 0..200u32 {
        p.send_ab("net", &i.to_le_bytes());
        p.run_for(ms(5));
    }
    p.settle();
    assert_eq!(p.b.received.len(), 201);
    assert!(p.a.ep.stats().handshakes_completed >= 3);
    assert_eq!(p.b.ep.stats().drops.total(), 0);
}

#[test]
fn handshake_retries_when_its_first_messages_are_lost() {
    let mut p = Pair::new();
    let mut lost = 0;
    p.filter = Some(Box::new(move |d| {
        if d.bytes[0] != 4 && lost < 2 {
            lost += 1;
            return false;
        }
        true
    }));
    p.send_ab("net", b"eventually");
    p.run_until(secs(30));
    assert_eq!(p.b.payloads(), vec![b"eventually".to_vec()]);
    assert_eq!(p.a.ep.stats().handshakes_started, 3);
    assert_eq!(p.a.ep.stats().handshakes_completed, 1);
    assert!(p.a.ep.is_up(&p.b.id()));
}

#[test]
fn a_lost_final_message_is_recovered_by_a_retry() {
    let mut p = Pair::new();
    let mut lost = false;
    p.filter = Some(Box::new(move |d| {
        if d.bytes[0] == 3 && !lost {
            lost = true;
            return false;
        }
        true
    }));
    p.send_ab("net", b"optimistic");
    p.settle();
    // A sent on the unconfirmed session; B could not read it (it keeps the datagram for
    // the message 3 that never comes, see EARLY_DATA).
    assert!(p.b.received.is_empty());
    assert_eq!(p.b.ep.early.len(), 1);
    assert!(!p.a.ep.is_up(&p.b.id()));
    p.run_until(secs(10));
    assert!(p.a.ep.is_up(&p.b.id()) && p.b.ep.is_up(&p.a.id()));
    p.send_ab("net", b"confirmed");
    p.settle();
    assert_eq!(p.b.payloads(), vec![b"confirmed".to_vec()]);
}

#[test]
fn a_lossy_reordering_link_still_carries_traffic() {
    for (loss, seed) in [(0u64, 1u64), (5, 2), (15, 3), (30, 4)] {
        let link = Link {
            latency: ms(20),
            jitter: ms(30),
            loss,
            duplicate: 10,
        };
        let mut p = Pair::with(Config::default(), link);
        p.rng = XorShift::new(seed);
        let n = 600u32;
        for i in 0..n {
            p.send_ab("net", &i.to_le_bytes());
            p.send_ba("net", &i.to_le_bytes());
            p.run_for(ms(100));
        }
        p.run_for(secs(1));
        for side in [&p.a, &p.b] {
            let mut got: Vec<u32> = side
                .received
                .iter()
                .map(|r| u32::from_le_bytes(r.3[..4].try_into().unwrap()))
                .collect();
            got.sort_unstable();
            let before = got.len();
            got.dedup();
            assert_eq!(got.len(), before, "loss {loss}%: a duplicate was delivered");
            // Handshake retries cost several seconds of the 60 s run at high loss.
            let floor = n as f64 * (1.0 - loss as f64 / 100.0) * 0.5;
            assert!(
                got.len() as f64 >= floor,
                "loss {loss}%: {} of {n} delivered, floor {floor}",
                got.len()
            );
            assert_eq!(side.ep.stats().drops.get(DropReason::DecryptFailed), 0);
        }
    }
}

#[test]
fn simultaneous_initiation_ends_with_working_sessions() {
    let mut p = Pair::new();
    p.send_ab("net", b"from a");
    p.send_ba("net", b"from b");
    p.settle();
    p.run_for(secs(1));
    for i in 0..20u32 {
        p.send_ab("net", &i.to_le_bytes());
        p.send_ba("net", &i.to_le_bytes());
        p.run_for(ms(50));
    }
    p.settle();
    assert_eq!(p.a.received.len(), 21);
    assert_eq!(p.b.received.len(), 21);
    assert!(p.a.ep.is_up(&p.b.id()) && p.b.ep.is_up(&p.a.id()));
    assert_eq!(p.a.ep.stats().drops.get(DropReason::DecryptFailed), 0);
    assert_eq!(p.b.ep.stats().drops.get(DropReason::DecryptFailed), 0);
}

#[test]
fn a_silent_session_expires_after_180_seconds() {
    let mut p = Pair::new();
    p.connect();
    p.a.take_events();
    p.b.take_events();
    p.run_until(secs(179));
    assert!(p.a.ep.is_up(&p.b.id()));
    p.run_until(secs(181));
    let (a, b) = (p.a.id(), p.b.id());
    let down = |peer| Event::PeerDown {
        peer,
        reason: DownReason::Expired,
    };
    assert_eq!(p.a.take_events(), vec![down(b)]);
    assert_eq!(p.b.take_events(), vec![down(a)]);
    assert!(p.a.ep.indices.is_empty() && p.b.ep.indices.is_empty());
    assert_eq!(p.a.ep.poll_at(), None, "nothing left to time");
    // Traffic brings it back.
    p.send_ab("net", b"back");
    p.settle();
    assert_eq!(p.b.payloads().last().unwrap(), b"back");
    assert!(matches!(p.a.take_events()[..], [Event::PeerUp { .. }]));
}

#[test]
fn a_passive_keepalive_answers_one_way_traffic() {
    let mut p = Pair::new();
    p.send_ab("net", b"one way");
    p.run_until(secs(9));
    let keepalives = |p: &Pair| {
        p.log
            .iter()
            .filter(|d| d.from == p.b.addr && d.bytes.len() == DATA_MIN_LEN)
            .count()
    };
    assert_eq!(keepalives(&p), 1, "only the confirmation");
    p.run_until(secs(30));
    assert_eq!(keepalives(&p), 2, "one keep-alive 10 s after the data");
    assert_eq!(p.a.ep.stats().handshakes_started, 1, "A heard back in time");
}

#[test]
fn persistent_keepalive_keeps_the_peer_up() {
    let config = Config {
        persistent_keepalive: Some(secs(25)),
        ..Config::default()
    };
    let mut p = Pair::with(config, Link::default());
    p.connect();
    p.run_until(secs(600));
    assert!(p.a.ep.is_up(&p.b.id()) && p.b.ep.is_up(&p.a.id()));
    assert!(p.a.events.iter().all(|e| matches!(e, Event::PeerUp { .. })));
    assert!(
        p.a.ep.stats().handshakes_completed >= 4,
        "rekeyed on the way"
    );
}

#[test]
fn a_restarted_peer_is_found_again_by_a_new_handshake() {
    let mut p = Pair::new();
    p.connect();
    // B restarts: same identity and address, no sessions.
    let a = p.a.id();
    p.b.ep = Endpoint::new(&identity(2), Config::default(), 22).unwrap();
    p.b.ep.allow(a);
    let start = p.elapsed();
    let mut i = 0u32;
    while p.b.received.len() < 5 && p.elapsed() < start + secs(60) {
        p.send_ab("net", &i.to_le_bytes());
        i += 1;
        p.run_for(secs(1));
    }
    assert!(p.b.received.len() >= 5, "A rekeyed after hearing nothing");
    assert!(p.elapsed() - start < secs(25));
    assert!(p.b.drops(DropReason::UnknownIndex) > 0);
}

#[test]
fn a_roaming_peer_is_followed_to_its_new_address() {
    let mut p = Pair::new();
    p.connect();
    let new_addr = addr(9, 6000);
    p.b.addr = new_addr;
    p.send_ab("net", b"lost: old address");
    p.settle();
    assert_eq!(p.b.received.len(), 1);
    p.send_ba("net", b"from my new home");
    p.settle();
    assert_eq!(p.a.ep.peer_address(&p.b.id()), Some(new_addr));
    p.send_ab("net", b"found you");
    p.settle();
    assert_eq!(p.b.payloads().last().unwrap(), b"found you");
    // An unauthenticated datagram from elsewhere moves nothing.
    let mut forged = p.log.last().unwrap().bytes.clone();
    forged[20] ^= 1;
    p.b.ep.handle_datagram(addr(66, 1), &forged, p.now);
    assert_eq!(p.b.ep.peer_address(&p.a.id()), Some(p.a.addr));
}

#[test]
fn disallow_drops_a_live_session_at_once() {
    let mut p = Pair::new();
    p.connect();
    p.a.take_events();
    let (a, b) = (p.a.id(), p.b.id());
    p.a.ep.disallow(&b);
    assert_eq!(
        p.a.ep.poll_event(),
        Some(Event::PeerDown {
            peer: b,
            reason: DownReason::Disallowed
        })
    );
    assert_eq!(
        p.a.ep.send(&b, ip("net", b"x"), p.now),
        Err(SendError::NotAllowed(b))
    );
    p.send_ba("net", b"are you there?");
    p.settle();
    assert_eq!(p.a.payloads(), vec![b"hello a".to_vec()]);
    assert_eq!(p.a.drops(DropReason::UnknownIndex), 1);
    assert!(p.a.ep.indices.is_empty());
    // Allowed again, it needs a new handshake, which B's next silence triggers.
    p.a.ep.allow(b);
    p.run_for(secs(20));
    p.send_ba("net", b"again");
    p.settle();
    assert_eq!(p.a.payloads().last().unwrap(), b"again");
    assert!(p.a.ep.is_up(&b) && p.b.ep.is_up(&a));
}

#[test]
fn send_errors_and_the_bounded_queue() {
    let config = Config {
        queue_len: 4,
        ..Config::default()
    };
    let mut p = Pair::with(config, Link::default());
    let (b, stranger) = (p.b.id(), NodeId([9; 20]));
    let now = p.now;
    assert_eq!(
        p.a.ep.send(&stranger, ip("n", b"x"), now),
        Err(SendError::NotAllowed(stranger))
    );
    p.a.ep.allow(stranger);
    assert_eq!(
        p.a.ep.send(&stranger, ip("n", b"x"), now),
        Err(SendError::NoAddress(stranger))
    );
    let long = "x".repeat(MAX_NETWORK_LEN + 1);
    assert_eq!(
        p.a.ep.send(&b, ip(&long, b"x"), now),
        Err(SendError::NetworkTooLong(MAX_NETWORK_LEN + 1))
    );
    let max = MAX_DATAGRAM_LEN - DATA_HEADER_LEN - TAG_LEN - 2 - 3;
    let big = vec![0u8; max + 1];
    assert_eq!(
        p.a.ep.send(&b, ip("net", &big), now),
        Err(SendError::TooLarge { len: max + 1, max })
    );
    let mut out = Vec::new();
    for i in 0..10u8 {
        assert_eq!(
            p.a.ep.send_into(&b, ip("net", &[i]), now, &mut out),
            Ok(None)
        );
    }
    p.settle();
    assert_eq!(p.a.drops(DropReason::QueueFull), 6);
    assert_eq!(
        p.b.payloads(),
        (6..10u8).map(|i| vec![i]).collect::<Vec<_>>()
    );
    // Now up: the largest payload fits one datagram.
    let big = vec![7u8; max];
    let dst =
        p.a.ep
            .send_into(&b, ip("net", &big), p.now, &mut out)
            .unwrap();
    assert_eq!(dst, Some(p.b.addr));
    assert_eq!(out.len(), MAX_DATAGRAM_LEN);
    let mut plain = Vec::new();
    let from = p.a.addr;
    let got = p.b.ep.receive_into(from, &out, p.now, &mut plain).unwrap();
    assert_eq!(
        (got.peer, got.network, got.bytes.len()),
        (p.a.id(), "net", max)
    );
}

#[test]
fn a_flood_of_initiations_is_capped() {
    let config = Config {
        max_pending_handshakes: 4,
        ..Config::default()
    };
    let mut ep = Endpoint::new(&identity(5), config, 5).unwrap();
    let now = Instant::now();
    for i in 0..6u8 {
        let init = forged_init(&ep.node_id(), u32::from(i), 0);
        ep.handle_datagram(addr(10 + i, 7), &init, now);
    }
    assert_eq!(ep.pending.len(), 4);
    assert_eq!(ep.stats().drops.get(DropReason::Overloaded), 2);
    assert_eq!(ep.poll_at(), Some(now + REKEY_TIMEOUT));
    ep.handle_timeout(now + REKEY_TIMEOUT);
    assert!(ep.pending.is_empty());
    assert_eq!(ep.poll_at(), None);
}

#[test]
fn inner_plaintext_round_trips_and_rejects_malformed() {
    let mut buf = Vec::new();
    wire::write_inner(&mut buf, PayloadKind::Control, "net", b"abc");
    assert_eq!(buf, b"\x02\x03netabc");
    assert_eq!(wire::payload_len(&buf), 3);
    assert_eq!(
        wire::parse_inner(&buf),
        Some(Inner::Payload {
            kind: PayloadKind::Control,
            network: "net",
            bytes: b"abc"
        })
    );
    assert_eq!(wire::parse_inner(&[0]), Some(Inner::KeepAlive));
    let mut long = vec![1u8, 129];
    long.extend([b'a'; 200]);
    for bad in [
        &[][..],
        &[0, 0],
        &[3, 0],
        &[1],
        &[1, 4, b'a'],
        &[2, 2, 0xff, 0xfe],
        &long,
    ] {
        assert_eq!(wire::parse_inner(bad), None, "{bad:?}");
    }
}

thread_local! {
    /// One connected pair for the property tests (handshakes are slow in debug builds).
    static FUZZ: RefCell<Pair> = RefCell::new({
        let mut p = Pair::new();
        p.connect();
        p
    });
}

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic_and_are_counted(
        datagrams in prop::collection::vec(
            (0u8..6, any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)),
            1..16,
        )
    ) {
        FUZZ.with(|p| {
            let mut p = p.borrow_mut();
            let index = p.b.ep.peers[&p.a.id()].current.as_ref().unwrap().local_index;
            for (ty, known_index, mut bytes) in datagrams {
                if !bytes.is_empty() && ty < 5 {
                    bytes[0] = ty;
                }
                if known_index && bytes.len() >= 5 {
                    bytes[1..5].copy_from_slice(&index.to_le_bytes());
                }
                let before = p.b.ep.stats();
                let now = p.now;
                let from = p.a.addr;
                p.b.ep.handle_datagram(from, &bytes, now);
                let after = p.b.ep.stats();
                let answered = after.datagrams_out - before.datagrams_out;
                let dropped = after.drops.total() - before.drops.total();
                prop_assert_eq!(after.datagrams_in, before.datagrams_in + 1);
                prop_assert_eq!(after.packets_in, before.packets_in, "nothing delivered");
                // Only a well-formed initiation (unauthenticated by design) gets a reply.
                let init = bytes.len() == 38 && bytes[0] == 1 && bytes[5] <= 1;
                prop_assert_eq!((dropped, answered), if init { (0, 1) } else { (1, 0) });
                while p.b.ep.poll_transmit().is_some() {}
            }
            p.b.ep.pending.clear();
            Ok(())
        })?;
    }
}

#[test]
fn each_side_may_initiate_with_either_cipher() {
    for (cipher, suite) in [(Cipher::Aes256Gcm, 0u8), (Cipher::ChaCha20Poly1305, 1)] {
        let config = Config {
            cipher,
            ..Config::default()
        };
        let mut p = Pair::with(config, Link::default());
        p.send_ab("net-1", b"over the chosen cipher");
        p.settle();
        assert_eq!(p.log[0].bytes[5], suite, "message 1 names the suite");
        assert_eq!(p.b.received.len(), 1);
        assert_eq!(p.b.received[0].3, b"over the chosen cipher");
        p.send_ba("net-1", b"and back");
        p.settle();
        assert_eq!(p.a.received.len(), 1);
    }
}

#[test]
fn an_unknown_cipher_suite_is_dropped_and_a_changed_one_fails() {
    let now = Instant::now();
    let mut ep = Endpoint::new(&identity(5), Config::default(), 5).unwrap();
    let init = forged_init(&ep.node_id(), 1, 9);
    ep.handle_datagram(addr(7, 7), &init, now);
    assert_eq!(ep.stats().drops.get(DropReason::Malformed), 1);
    assert!(ep.poll_transmit().is_none());
    // Flipping the suite of a genuine initiation: the responder answers with the other
    // cipher's protocol, which the initiator's handshake hash rejects.
    let (ia, ib) = (identity(1), identity(2));
    let mut a = Endpoint::new(&ia, Config::default(), 1).unwrap();
    let mut b = Endpoint::new(&ib, Config::default(), 2).unwrap();
    let (aa, ba) = (addr(1, 4000), addr(2, 5000));
    a.allow(ib.node_id());
    a.set_peer_address(ib.node_id(), ba);
    b.allow(ia.node_id());
    b.set_peer_address(ia.node_id(), aa);
    a.send(&ib.node_id(), ip("net-1", b"never"), now).unwrap();
    let mut init = a.poll_transmit().unwrap().bytes;
    init[5] ^= 1;
    b.handle_datagram(aa, &init, now);
    assert_eq!(
        b.stats().drops.get(DropReason::BadMac1),
        1,
        "mac1 covers the suite"
    );
    assert!(b.poll_transmit().is_none());
    // An attacker can make mac1 again (it needs only B's id): Noise still refuses.
    sign_mac1(&mut init, &ib.node_id());
    b.handle_datagram(aa, &init, now);
    let response = b
        .poll_transmit()
        .expect("the responder answers what looks well-formed");
    a.handle_datagram(ba, &response.bytes, now);
    assert!(
        a.poll_transmit().is_none(),
        "no message 3: the handshake failed"
    );
    assert!(!a.is_up(&ib.node_id()));
    assert!(a.stats().drops.total() >= 1);
}

/// A node that learns of its peer while the peer's first handshake is in flight (a
/// provider joining right after the requestor added it) must not leave the peer sending
/// on a session it never got: the first payloads after both allow each other arrive
/// without waiting for a retry timer, whatever the timing.
#[test]
fn allowing_a_peer_mid_handshake_loses_no_payload() {
    for delay_ms in [0u64, 5, 10, 15, 20, 25, 30, 35, 45] {
        let mut p = Pair::new();
        let a_id = p.a.id();
        p.b.ep.disallow(&a_id);
        p.send_ab("net", b"early");
        p.run_for(ms(delay_ms));
        p.b.ep.allow(a_id);
        p.b.ep.set_peer_address(a_id, p.a.addr);
        p.b.ep.connect(a_id, p.now);
        p.run_for(ms(200));
        p.send_ab("net", b"after");
        p.send_ba("net", b"back");
        p.run_for(ms(200));
        assert!(
            p.b.payloads().contains(&b"after".to_vec()),
            "delay {delay_ms} ms: A's payload after B allowed it was lost (B drops: unknown \
             index {}, not allowed {})",
            p.b.drops(DropReason::UnknownIndex),
            p.b.drops(DropReason::NotAllowed),
        );
        assert!(
            p.a.payloads().contains(&b"back".to_vec()),
            "delay {delay_ms} ms: B -> A"
        );
    }
}

/// Message 3 through a relay, the first data on a direct path just punched open: the data
/// arrives first. It is kept and delivered when message 3 comes, not lost to a TCP
/// retransmission timeout.
#[test]
fn data_that_overtakes_message_3_is_delivered_after_it() {
    let mut p = Pair::new();
    let held = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let sink = held.clone();
    p.filter = Some(Box::new(move |d| {
        if d.bytes[0] == HANDSHAKE_FINAL {
            sink.borrow_mut().push(d.clone());
            return false;
        }
        true
    }));
    p.send_ab("net", b"first");
    p.send_ab("net", b"second");
    p.run_for(ms(100));
    assert!(
        p.b.payloads().is_empty(),
        "nothing can be read before message 3"
    );
    assert_eq!(held.borrow().len(), 1);
    p.filter = None;
    let final_msg = held.borrow_mut().pop().unwrap();
    p.b.ep
        .handle_datagram(final_msg.from, &final_msg.bytes, p.now);
    p.settle();
    assert_eq!(p.b.payloads(), vec![b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(p.b.drops(DropReason::UnknownIndex), 0);
    assert!(p.a.ep.is_up(&p.b.id()) && p.b.ep.is_up(&p.a.id()));
}

/// The peer dialled before we allowed it (its first payload is already on the way): when
/// `allow` comes within REKEY_TIMEOUT, its proven session is installed and the payload
/// delivered; nothing is delivered before, and a late `allow` gets nothing from the past.
#[test]
fn a_handshake_from_a_node_allowed_a_moment_later_is_kept() {
    let mut p = Pair::new();
    let a_id = p.a.id();
    p.b.ep.disallow(&a_id);
    p.send_ab("net", b"first");
    p.run_for(ms(100));
    assert!(
        p.b.payloads().is_empty(),
        "nothing from a node that is not allowed"
    );
    assert_eq!(p.b.drops(DropReason::NotAllowed), 1);
    p.b.ep.allow(a_id);
    p.pump();
    assert_eq!(p.b.payloads(), vec![b"first".to_vec()]);
    p.send_ba("net", b"answer");
    p.send_ab("net", b"more");
    p.settle();
    assert_eq!(p.a.payloads(), vec![b"answer".to_vec()]);
    assert_eq!(p.b.payloads(), vec![b"first".to_vec(), b"more".to_vec()]);
    assert!(p.a.ep.is_up(&p.b.id()) && p.b.ep.is_up(&a_id));

    // Too late: the parked session is gone, the old payload with it (A's retry after
    // REKEY_TIMEOUT may park a fresh, empty one, which `allow` then takes).
    let mut q = Pair::new();
    let a_id = q.a.id();
    q.b.ep.disallow(&a_id);
    q.send_ab("net", b"stale");
    q.run_for(secs(6));
    q.b.ep.allow(a_id);
    q.pump();
    assert!(q.b.payloads().is_empty());
    assert!(q.b.ep.parked.is_empty());
    q.send_ab("net", b"fresh");
    q.settle();
    assert_eq!(q.b.payloads(), vec![b"fresh".to_vec()]);
}

#[test]
fn seal_batches_made_in_turn_and_sealed_out_of_order_are_each_delivered_once() {
    let mut p = Pair::new();
    let b = p.b.id();
    // No session yet: nothing to reserve (the caller sends the slow way).
    assert!(p.a.ep.reserve(&b, 4, p.now).unwrap().is_none());
    p.connect();
    let (mut one, dst) = p.a.ep.reserve(&b, 3, p.now).unwrap().unwrap();
    let (mut two, dst2) = p.a.ep.reserve(&b, 3, p.now).unwrap().unwrap();
    assert_eq!((dst, dst2), (p.b.addr, p.b.addr));
    assert_eq!((one.remaining(), two.remaining()), (3, 3));
    let mut sealed = Vec::new();
    // The second batch first, then the first, as two threads might.
    for (batch, tag) in [(&mut two, b'2'), (&mut one, b'1')] {
        for i in 0..3u8 {
            let mut out = Vec::new();
            assert!(batch.seal_ip("net", &[tag, i], &mut out));
            sealed.push(out);
        }
        let mut out = Vec::new();
        assert!(!batch.seal_ip("net", b"no counter left", &mut out));
    }
    // A send_into after the reservations uses a counter past both.
    p.send_ab("net", b"after");
    for bytes in sealed.iter().chain(sealed.iter()) {
        p.b.ep.handle_datagram(p.a.addr, bytes, p.now);
    }
    p.settle();
    let got = p.b.payloads();
    let want: Vec<Vec<u8>> = [
        [b'2', 0],
        [b'2', 1],
        [b'2', 2],
        [b'1', 0],
        [b'1', 1],
        [b'1', 2],
    ]
    .map(Vec::from)
    .into_iter()
    .chain([b"after".to_vec()])
    .collect();
    assert_eq!(&got[1..], &want[..], "each once, in the order they arrived");
    assert_eq!(p.b.drops(DropReason::Replayed), 6, "each replay refused");
    let before = p.a.ep.stats();
    p.a.ep.count_sealed(6, 12);
    let after = p.a.ep.stats();
    assert_eq!(after.packets_out - before.packets_out, 6);
    assert_eq!(after.bytes_out - before.bytes_out, 12);
    // A node that is not allowed gets no counters.
    let stranger = identity(9);
    assert!(matches!(
        p.a.ep.reserve(&stranger.node_id(), 1, p.now),
        Err(SendError::NotAllowed(_))
    ));
}
