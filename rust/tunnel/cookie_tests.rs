//! Abuse of the handshake: garbage, floods of initiations from one address and from
//! many, cookies that are not the sender's or are too old. Endpoints joined by instant
//! delivery on a virtual clock; the attacker is whoever calls `inject`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::cookie::{self, Mac};
use super::tests::{addr, forged_init, identity, ip};
use super::wire::{self, COOKIE_NONCE_LEN};
use super::*;

struct Node {
    addr: SocketAddr,
    ep: Endpoint,
    received: Vec<Vec<u8>>,
}

/// Endpoints that deliver to each other at once; datagrams to addresses no endpoint
/// owns (an attacker's, forged ones) are kept in `stray`.
struct Mesh {
    nodes: Vec<Node>,
    stray: Vec<(SocketAddr, Vec<u8>)>,
    now: Instant,
}

impl Mesh {
    fn new() -> Self {
        Mesh {
            nodes: Vec::new(),
            stray: Vec::new(),
            now: Instant::now(),
        }
    }

    fn add(&mut self, n: u8, at: SocketAddr, config: Config) -> usize {
        let ep = Endpoint::new(&identity(n), config, u64::from(n)).unwrap();
        self.nodes.push(Node {
            addr: at,
            ep,
            received: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn id(&self, i: usize) -> NodeId {
        self.nodes[i].ep.node_id()
    }

    fn ep(&mut self, i: usize) -> &mut Endpoint {
        &mut self.nodes[i].ep
    }

    /// Lets `i` and `j` reach each other.
    fn join(&mut self, i: usize, j: usize) {
        let (ii, ji) = (self.id(i), self.id(j));
        let (ia, ja) = (self.nodes[i].addr, self.nodes[j].addr);
        self.ep(i).allow(ji);
        self.ep(i).set_peer_address(ji, ja);
        self.ep(j).allow(ii);
        self.ep(j).set_peer_address(ii, ia);
    }

    fn send(&mut self, i: usize, j: usize, bytes: &[u8]) {
        let (to, now) = (self.id(j), self.now);
        self.ep(i).send(&to, ip("net", bytes), now).unwrap();
    }

    /// A datagram from `from` (anyone) to node `to`.
    fn inject(&mut self, from: SocketAddr, to: usize, bytes: &[u8]) {
        let now = self.now;
        self.ep(to).handle_datagram(from, bytes, now);
    }

    /// Delivers until nothing moves; timers due now run too.
    fn settle(&mut self) {
        let now = self.now;
        for _ in 0..1000 {
            let mut out = Vec::new();
            for node in &mut self.nodes {
                if node.ep.poll_at().is_some_and(|t| t <= now) {
                    node.ep.handle_timeout(now);
                }
                while let Some(ev) = node.ep.poll_event() {
                    if let Event::Received { bytes, .. } = ev {
                        node.received.push(bytes);
                    }
                }
                while let Some(t) = node.ep.poll_transmit() {
                    out.push((node.addr, t));
                }
            }
            if out.is_empty() {
                return;
            }
            for (from, t) in out {
                match self.nodes.iter_mut().find(|n| n.addr == t.dst) {
                    Some(n) => n.ep.handle_datagram(from, &t.bytes, now),
                    None => self.stray.push((t.dst, t.bytes)),
                }
            }
        }
        panic!("livelock");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.settle();
    }

    fn drops(&self, i: usize, reason: DropReason) -> u64 {
        self.nodes[i].ep.stats().drops.get(reason)
    }

    /// The cookie replies sent to `to` so far, taken out of `stray`.
    fn cookie_replies_to(&mut self, to: SocketAddr) -> Vec<Vec<u8>> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stray)
            .into_iter()
            .partition(|(dst, b)| *dst == to && b[0] == wire::COOKIE_REPLY);
        self.stray = rest;
        mine.into_iter().map(|(_, b)| b).collect()
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An attacker who dials `responder` opens its cookie reply to `init` (it needs only
/// the responder's id and its own mac1).
fn open_reply(responder: &NodeId, init: &[u8], reply: &[u8]) -> Option<Mac> {
    assert_eq!(reply.len(), wire::COOKIE_REPLY_LEN);
    assert_eq!(reply[1..5], init[1..5], "the reply names the initiation");
    let nonce: [u8; COOKIE_NONCE_LEN] = reply[5..5 + COOKIE_NONCE_LEN].try_into().unwrap();
    let mac1: Mac = init[wire::INIT_MAC1_AT..wire::INIT_MAC2_AT]
        .try_into()
        .unwrap();
    cookie::open_cookie(responder, &nonce, &reply[5 + COOKIE_NONCE_LEN..], &mac1)
}

/// Sets mac2 of an initiation from a cookie.
fn with_mac2(mut init: Vec<u8>, cookie: &Mac) -> Vec<u8> {
    let mac2 = cookie::mac2(cookie, &init[..wire::INIT_MAC2_AT]);
    init[wire::INIT_MAC2_AT..].copy_from_slice(&mac2);
    init
}

#[test]
fn garbage_and_misdirected_initiations_are_dropped_before_any_noise_work() {
    let mut m = Mesh::new();
    let b = m.add(2, addr(2, 5000), Config::default());
    let b_id = m.id(b);
    let attacker = addr(66, 6666);
    let mut rng = XorShift::new(99);
    let mut sent = 0u64;
    let mut inits = 0u64;
    for i in 0..2000u32 {
        // Every message type, the handshake's sizes most often, random bytes after.
        let len = match i % 4 {
            0 => wire::INIT_LEN,
            1 => wire::COOKIE_REPLY_LEN,
            _ => (rng.next_u64() % 200) as usize,
        };
        let mut d: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if let Some(t) = d.first_mut() {
            *t = match i % 4 {
                0 => wire::HANDSHAKE_INIT,
                1 => wire::COOKIE_REPLY,
                _ => *t,
            };
        }
        inits += u64::from(d.len() == wire::INIT_LEN && d[0] == wire::HANDSHAKE_INIT);
        m.inject(attacker, b, &d);
        sent += 1;
    }
    // A genuine initiation, but for another node that is not at this address.
    let mut a = Endpoint::new(&identity(1), Config::default(), 1).unwrap();
    let y = identity(3).node_id();
    a.allow(y);
    a.set_peer_address(y, addr(2, 5000));
    a.send(&y, ip("net", b"for y"), m.now).unwrap();
    let init = a.poll_transmit().unwrap().bytes;
    m.inject(addr(1, 4000), b, &init);
    sent += 1;
    inits += 1;

    let s = m.nodes[b].ep.stats();
    assert_eq!(s.datagrams_in, sent);
    assert_eq!(s.drops.total(), sent, "every one refused and counted");
    assert_eq!(s.drops.get(DropReason::BadMac1), inits);
    assert!(
        s.drops.get(DropReason::BadCookie) >= 500,
        "no initiation in flight"
    );
    assert_eq!(s.drops.get(DropReason::CookieSent), 0);
    assert_eq!(s.datagrams_out, 0, "nothing answered");
    assert!(m.ep(b).poll_transmit().is_none());
    assert!(m.nodes[b].ep.pending.is_empty(), "no handshake state");
    assert_eq!(s.handshakes_completed + s.handshakes_failed, 0);
    // The node's id is what mac1 is keyed by: the same bytes signed for it get through.
    let mut init = init;
    super::tests::sign_mac1(&mut init, &b_id);
    m.inject(addr(1, 4000), b, &init);
    assert_eq!(m.nodes[b].ep.pending.len(), 1);
}

/// One address sends 500 initiations a second, first without cookies, then with the
/// cookies it was sent (as a real host at that address can): beyond its burst it gets
/// cookie replies; with them, handshakes until the endpoint is under load, then it is
/// rate-limited, a handshake per 50 ms. Meanwhile an established peer's data is
/// delivered byte-exact, and another node's handshake completes at once.
#[test]
fn a_flood_from_one_address_gets_cookie_replies_then_is_rate_limited() {
    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let config = Config {
            cipher,
            ..Config::default()
        };
        let mut m = Mesh::new();
        let b = m.add(2, addr(2, 5000), config.clone());
        let a = m.add(1, addr(1, 4000), config.clone());
        let c = m.add(3, addr(3, 6000), config.clone());
        m.join(a, b);
        m.join(c, b);
        m.send(a, b, b"hello");
        m.settle();
        let (b_id, c_id) = (m.id(b), m.id(c));
        assert!(m.nodes[a].ep.is_up(&b_id));
        let attacker = addr(66, 6666);
        let mut inits: Vec<Vec<u8>> = Vec::new();
        let mut cookie: Option<Mac> = None;
        let mut expected = vec![b"hello".to_vec()];
        let mut counts = [0u64; 2];
        for tick in 0..1000u32 {
            let mut init = forged_init(&b_id, tick, 0);
            if tick >= 500 {
                init = with_mac2(init, &cookie.expect("a cookie came in the first second"));
            }
            m.inject(attacker, b, &init);
            inits.push(init);
            if tick % 5 == 0 {
                let data = format!("data {tick}").into_bytes();
                m.send(a, b, &data);
                expected.push(data);
            }
            if tick == 250 {
                m.send(c, b, b"from c");
            }
            m.advance(ms(2));
            for reply in m.cookie_replies_to(attacker) {
                let index = wire::read_u32(&reply[1..]) as usize;
                cookie = Some(open_reply(&b_id, &inits[index], &reply).unwrap());
            }
            if tick == 499 || tick == 999 {
                let i = usize::from(tick == 999);
                counts[i] =
                    m.drops(b, DropReason::CookieSent) + m.drops(b, DropReason::RateLimited);
            }
        }
        // The attacker's handshakes: 5 at once, then one per 50 ms, in each second.
        // The attacker's handshakes: in the first second its bucket's, 5 at once then one
        // per 50 ms; in the second, with cookies, until its pending handshakes put the
        // endpoint under load, then one per 50 ms again.
        let handshakes = 1000 - counts[1];
        let s = m.nodes[b].ep.stats();
        let pending = Config::default().under_load_pending as u64;
        let per_second = u64::from(INITIATIONS_PER_SECOND);
        assert!((24..=26).contains(&(500 - counts[0])), "{counts:?}");
        assert!(handshakes >= pending, "{counts:?}");
        assert!(handshakes <= pending + per_second, "{counts:?}");
        assert_eq!(s.drops.get(DropReason::CookieSent), counts[0], "{cipher:?}");
        assert_eq!(s.drops.get(DropReason::RateLimited), counts[1] - counts[0]);
        assert_eq!(s.drops.get(DropReason::BadMac1), 0);
        // The established peer lost nothing; the newcomer got through at once.
        assert_eq!(m.nodes[b].received[..1], expected[..1]);
        let from_a: Vec<_> = m.nodes[b]
            .received
            .iter()
            .filter(|r| r.as_slice() != b"from c")
            .cloned()
            .collect();
        assert_eq!(from_a, expected);
        assert!(m.nodes[b].received.iter().any(|r| r == b"from c"));
        assert!(m.nodes[c].ep.is_up(&b_id) && m.nodes[b].ep.is_up(&c_id));
        assert_eq!(
            m.nodes[c].ep.stats().handshakes_started,
            1,
            "no cookie needed"
        );
        assert_eq!(m.nodes[a].ep.stats().drops.total(), 0);
        // Once the flood stops, the address may handshake again without a cookie.
        m.advance(Duration::from_secs(6));
        m.inject(attacker, b, &forged_init(&b_id, 5000, 0));
        m.settle();
        assert!(m.cookie_replies_to(attacker).is_empty());
        assert_eq!(
            m.nodes[b].ep.stats().drops.get(DropReason::CookieSent),
            counts[0]
        );
    }
}

/// Initiations from hundreds of (forged) addresses fill the pending handshakes: the
/// endpoint is under load and answers every one without a cookie with a cookie reply,
/// so its handshake state stops growing; a real initiator takes its cookie, retries at
/// once with mac2 and completes, with either cipher.
#[test]
fn under_load_a_real_initiator_completes_through_a_cookie_reply() {
    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        let config = Config {
            cipher,
            under_load_pending: 16,
            ..Config::default()
        };
        let mut m = Mesh::new();
        let b = m.add(2, addr(2, 5000), config.clone());
        let c = m.add(3, addr(3, 6000), config.clone());
        m.join(c, b);
        let b_id = m.id(b);
        let forged = |i: u32| SocketAddr::from(([10, (i >> 8) as u8, i as u8, 1], 9));
        for i in 0..300u32 {
            let init = forged_init(&b_id, i, 0);
            m.inject(forged(i), b, &init);
            if i == 150 {
                m.send(c, b, b"through the flood");
            }
            if i % 30 == 0 {
                m.advance(ms(10));
            }
        }
        m.settle();
        let (s, cs) = (m.nodes[b].ep.stats(), m.nodes[c].ep.stats());
        assert_eq!(m.nodes[b].received, vec![b"through the flood".to_vec()]);
        assert_eq!(cs.cookies_received, 1, "{cipher:?}");
        assert_eq!(
            cs.handshakes_started, 2,
            "the first try, the retry with mac2"
        );
        assert!(m.nodes[c].ep.is_up(&b_id));
        assert_eq!(s.drops.get(DropReason::CookieSent), 300 - 16 + 1);
        assert_eq!(
            m.nodes[b].ep.pending.len(),
            16,
            "no state beyond the threshold"
        );
        assert_eq!(m.stray.len(), 300, "16 responses and 284 cookie replies");
        // The load passes: handshakes without cookies are answered again.
        m.advance(REKEY_TIMEOUT + UNDER_LOAD_AFTER_TIME);
        m.inject(forged(1), b, &forged_init(&b_id, 1, 0));
        assert_eq!(m.nodes[b].ep.pending.len(), 1);
    }
}

/// mac2 proves the address the cookie was made for, under the responder's current secret:
/// another address's cookie and an old secret's are answered with a new cookie reply,
/// never a handshake. On the initiator's side, a cookie reply that is tampered, replayed
/// or for no initiation in flight is refused.
#[test]
fn a_cookie_of_another_address_or_an_expired_secret_is_refused() {
    let config = Config {
        under_load_pending: 1,
        ..Config::default()
    };
    let mut m = Mesh::new();
    let b = m.add(2, addr(2, 5000), config.clone());
    let c = m.add(3, addr(3, 6000), config);
    m.join(c, b);
    let (b_id, c_id) = (m.id(b), m.id(c));
    let c_addr = m.nodes[c].addr;
    // Under load (one forged handshake pending), C's first try gets a cookie.
    m.inject(addr(9, 9), b, &forged_init(&b_id, 1, 0));
    m.send(c, b, b"first");
    m.settle();
    assert!(m.nodes[c].ep.is_up(&b_id));
    let cookie = m.nodes[c].ep.peers[&b_id].cookie.unwrap().0;
    let pending = m.nodes[b].ep.pending.len();
    let sent = m.drops(b, DropReason::CookieSent);
    assert_eq!(sent, 1);

    // Each try under load (a new forged initiation first keeps the endpoint loaded):
    // how many cookie replies it got instead of a handshake.
    let try_init = |m: &mut Mesh, from: SocketAddr, cookie: &Mac, index: u32| {
        m.inject(addr(9, 9), b, &forged_init(&b_id, 100 + index, 0));
        let before = m.drops(b, DropReason::CookieSent);
        m.inject(from, b, &with_mac2(forged_init(&b_id, index, 0), cookie));
        let answered = m.drops(b, DropReason::CookieSent) - before;
        m.settle();
        answered
    };
    assert_eq!(
        try_init(&mut m, c_addr, &cookie, 10),
        0,
        "C's own cookie works"
    );
    assert_eq!(m.nodes[b].ep.pending.len(), pending + 1);
    assert_eq!(try_init(&mut m, addr(4, 6000), &cookie, 11), 1);
    assert_eq!(
        try_init(&mut m, addr(3, 6001), &cookie, 12),
        1,
        "the port counts"
    );
    assert_eq!(
        try_init(&mut m, c_addr, &[0x5a; 16], 13),
        1,
        "a made-up cookie"
    );
    m.advance(COOKIE_SECRET_MAX_AGE);
    assert_eq!(
        try_init(&mut m, c_addr, &cookie, 14),
        1,
        "the secret changed"
    );
    assert_eq!(m.drops(b, DropReason::RateLimited), 0);

    // The initiator's side: its initiation in flight, and a cookie reply for it.
    m.ep(c).disallow(&b_id);
    m.ep(b).disallow(&c_id);
    m.join(c, b);
    m.inject(addr(9, 9), b, &forged_init(&b_id, 200, 0));
    let now = m.now;
    m.ep(c).connect(b_id, now);
    let init = m.ep(c).poll_transmit().unwrap().bytes;
    m.inject(c_addr, b, &init);
    let reply = std::iter::from_fn(|| m.ep(b).poll_transmit())
        .find(|t| t.dst == c_addr)
        .unwrap()
        .bytes;
    assert_eq!(reply[0], wire::COOKIE_REPLY);
    let b_addr = m.nodes[b].addr;
    let before = m.nodes[c].ep.stats();
    for byte in [1, 5, 30, 40, wire::COOKIE_REPLY_LEN - 1] {
        let mut bad = reply.clone();
        bad[byte] ^= 0x10;
        m.inject(b_addr, c, &bad);
    }
    m.inject(b_addr, c, &reply[..reply.len() - 1]);
    let bad = |m: &Mesh, r| m.drops(c, r) - before.drops.get(r);
    assert_eq!(bad(&m, DropReason::BadCookie), 5);
    assert_eq!(bad(&m, DropReason::Truncated), 1);
    assert!(m.ep(c).poll_transmit().is_none(), "no retry for those");
    m.inject(b_addr, c, &reply);
    assert_eq!(
        m.nodes[c].ep.stats().cookies_received,
        before.cookies_received + 1
    );
    let retry = m.ep(c).poll_transmit().unwrap().bytes;
    assert_eq!(retry[0], wire::HANDSHAKE_INIT);
    assert_ne!(
        retry[wire::INIT_MAC2_AT..],
        [0; 16],
        "the retry carries mac2"
    );
    m.inject(b_addr, c, &reply);
    assert_eq!(
        bad(&m, DropReason::BadCookie),
        6,
        "replayed: the try is gone"
    );
}

/// Ten nodes behind one address (a NAT, or loopback) dial a node at once: five get
/// their handshake, the others a cookie, and all are up after one more round trip, none
/// waiting for a retry timer (the endpoint is not under load, so proven initiations are
/// not rate-limited).
#[test]
fn nodes_behind_one_address_pay_one_round_trip_not_a_retry_timer() {
    let mut m = Mesh::new();
    let b = m.add(2, addr(2, 5000), Config::default());
    let b_id = m.id(b);
    let nodes: Vec<usize> = (0..10)
        .map(|i| m.add(10 + i, addr(50, 1000 + u16::from(i)), Config::default()))
        .collect();
    for &n in &nodes {
        let id = m.id(n);
        let b_addr = m.nodes[b].addr;
        m.ep(n).allow(b_id);
        m.ep(n).set_peer_address(b_id, b_addr);
        m.ep(b).allow(id);
    }
    for &n in &nodes {
        m.send(n, b, format!("from {n}").as_bytes());
    }
    m.settle();
    assert_eq!(m.nodes[b].received.len(), 10);
    for &n in &nodes {
        assert!(m.nodes[n].ep.is_up(&b_id));
    }
    let cookies: u64 = nodes
        .iter()
        .map(|&n| m.nodes[n].ep.stats().cookies_received)
        .sum();
    assert_eq!(cookies, 5);
    assert_eq!(m.drops(b, DropReason::CookieSent), 5);
    assert_eq!(m.drops(b, DropReason::RateLimited), 0);
}

/// Relayed peers arrive from placeholder addresses in `100::/64`, one per node the relay
/// forwards for: each is its own source. Elsewhere an IPv6 /64 is one source (one host
/// can hold all of it), an IPv4 address one source whatever the port.
#[test]
fn each_relayed_node_is_its_own_source_while_an_ipv6_64_is_one() {
    let mut m = Mesh::new();
    let b = m.add(2, addr(2, 5000), Config::default());
    let b_id = m.id(b);
    let mut index = 0u32;
    let mut burst = |m: &mut Mesh, from: &str, n: u32| {
        let from: SocketAddr = from.parse().unwrap();
        let before = m.drops(b, DropReason::CookieSent);
        for _ in 0..n {
            index += 1;
            m.inject(from, b, &forged_init(&b_id, index, 0));
        }
        m.drops(b, DropReason::CookieSent) - before
    };
    let burst_size = INITIATIONS_BURST;
    assert_eq!(burst(&mut m, "[100::1]:0", burst_size + 3), 3);
    assert_eq!(
        burst(&mut m, "[100::2]:0", burst_size),
        0,
        "another relayed node"
    );
    assert_eq!(burst(&mut m, "[2001:db8::1]:9", burst_size + 1), 1);
    assert_eq!(burst(&mut m, "[2001:db8::2]:9", 1), 1, "the same /64");
    assert_eq!(burst(&mut m, "[2001:db8:0:1::2]:9", 1), 0, "the next /64");
    assert_eq!(burst(&mut m, "198.18.0.1:1", burst_size), 0);
    assert_eq!(
        burst(&mut m, "198.18.0.1:2", 1),
        1,
        "another port, same host"
    );
    assert_eq!(burst(&mut m, "[::ffff:198.18.0.1]:3", 1), 1, "mapped IPv4");
}

/// The rate limiter forgets idle sources when its table is full; while it is full of
/// active ones, a new source has to prove its address.
#[test]
fn the_rate_limiter_table_is_bounded() {
    let mut limiter = cookie::RateLimiter::new();
    let now = Instant::now();
    let source = |i: usize| std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    for i in 0..MAX_RATE_LIMITED_SOURCES {
        assert!(limiter.allow(source(i), now));
    }
    assert!(
        !limiter.allow(source(MAX_RATE_LIMITED_SOURCES), now),
        "full"
    );
    assert_eq!(limiter.len(), MAX_RATE_LIMITED_SOURCES);
    let later = now + Duration::from_secs(1);
    assert!(limiter.allow(source(MAX_RATE_LIMITED_SOURCES), later));
    assert_eq!(limiter.len(), 1, "idle ones forgotten");
}
