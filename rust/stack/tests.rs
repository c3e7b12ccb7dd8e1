//! Deterministic tests of the stack, in the style of quinn-proto's `Pair` and smoltcp's
//! `tests/netsim.rs`.
//!
//! A [`Net`] holds N nodes, each a ([`Router`], [`Stack`]) pair of network
//! 192.168.0.0/24 + fd00::/64; node `i` is `NodeId([i; 20])` at 192.168.0.i and fd00::i.
//! Packets a stack sends go through its router, over a [`Link`] (seeded loss, latency,
//! reordering), into the destination's router and stack. Time is virtual: [`Net::run_until`]
//! advances it, jumping to the next deadline when nothing is in flight, and every loop is
//! bounded by a step cap, so no test can hang or depend on the wall clock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::time::{Duration, Instant};

use super::*;
use crate::node_id::NodeId;
use crate::router::{DropReason, Medium, Router, RouterConfig};

/// Packets a stack may return per poll.
const BUDGET: usize = 4096;
/// How far virtual time moves after a step in which packets moved.
const TICK: Duration = Duration::from_millis(1);
/// Steps one `run_until` may take before it panics: keeps real run time bounded.
const MAX_STEPS: usize = 400_000;

fn id(i: u8) -> NodeId {
    NodeId([i; 20])
}

fn v4(i: u8) -> IpAddr {
    Ipv4Addr::new(192, 168, 0, i).into()
}

fn v6(i: u8) -> IpAddr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i)).into()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// xorshift64: a tiny deterministic PRNG for the link and the payloads.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 once, so that small or similar seeds give unrelated streams (and
        // never the all-zero state xorshift cannot leave).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// `len` pseudo-random bytes from `seed`.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a, to name a payload in failure messages without printing megabytes.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Asserts two byte strings are equal, reporting lengths, hashes and the first difference.
fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes (fnv {:016x}), want {} bytes (fnv {:016x}); first difference at {first:?}",
            got.len(),
            fnv(got),
            want.len(),
            fnv(want)
        );
    }
}

/// What happens to a packet between two routers. Decided per delivery, from one seeded
/// PRNG per [`Net`].
#[derive(Debug, Clone, Copy)]
struct Link {
    /// Probability that a delivery is dropped.
    loss: f64,
    /// Probability that a delivery is held back by up to `jitter` more (reordering it
    /// behind later ones).
    reorder: f64,
    /// One-way delay of every delivery.
    latency: Duration,
    /// The largest extra delay of a reordered delivery.
    jitter: Duration,
    seed: u64,
}

impl Link {
    const PERFECT: Link = Link {
        loss: 0.0,
        reorder: 0.0,
        latency: Duration::from_millis(0),
        jitter: Duration::from_millis(0),
        seed: 1,
    };
}

/// How a [`Net`] is built.
#[derive(Debug, Clone)]
struct Options {
    nodes: u8,
    mtu: usize,
    /// Nodes whose MTU differs from `mtu`.
    mtu_of: &'static [(u8, usize)],
    tcp_buffer: usize,
    link: Link,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 2,
            mtu: 1400,
            mtu_of: &[],
            tcp_buffer: 512 * 1024,
            link: Link::PERFECT,
        }
    }
}

struct Node {
    router: Router,
    stack: Stack,
}

struct InFlight {
    at: Instant,
    seq: u64,
    from: NodeId,
    to: NodeId,
    packet: Vec<u8>,
}

/// N nodes joined by a simulated link, in virtual time.
struct Net {
    nodes: Vec<Node>,
    now: Instant,
    link: Link,
    rng: Rng,
    in_flight: Vec<InFlight>,
    seq: u64,
    /// Deliveries the link dropped.
    lost: u64,
    /// Deliveries handed to a destination stack.
    delivered: u64,
    /// The largest packet any stack sent.
    largest: usize,
    /// Steps taken so far.
    steps: usize,
    /// Drops chosen deliveries (given the sender and the packet) before the link's own
    /// loss: for losses a test places exactly.
    drop_if: Option<DropHook>,
}

/// Decides, given its sender and bytes, whether a delivery is lost (see [`Net::drop_if`]).
type DropHook = Box<dyn FnMut(NodeId, &[u8]) -> bool>;

impl Net {
    fn new(opts: Options) -> Net {
        let start = Instant::from_millis(0);
        let mut nodes = Vec::new();
        for i in 1..=opts.nodes {
            let mut router = Router::new(RouterConfig {
                network_id: "stack-test".into(),
                cidrs: vec![
                    "192.168.0.0/24".parse().unwrap(),
                    "fd00::/64".parse().unwrap(),
                ],
                local_node: id(i),
                local_ips: vec![v4(i), v6(i)],
                medium: Medium::Ip,
                requestor: None,
            })
            .unwrap();
            for j in (1..=opts.nodes).filter(|&j| j != i) {
                router.add_node(id(j), v4(j)).unwrap();
                router.add_node(id(j), v6(j)).unwrap();
            }
            let stack = Stack::new(
                StackConfig {
                    addresses: vec![(v4(i), 24), (v6(i), 64)],
                    mtu: opts
                        .mtu_of
                        .iter()
                        .find(|&&(n, _)| n == i)
                        .map_or(opts.mtu, |&(_, m)| m),
                    tcp_rx_buffer: opts.tcp_buffer,
                    tcp_tx_buffer: opts.tcp_buffer,
                    random_seed: 0x5eed_0000 + u64::from(i) * 7919,
                    ..StackConfig::default()
                },
                start,
            )
            .unwrap();
            nodes.push(Node { router, stack });
        }
        Net {
            nodes,
            now: start,
            link: opts.link,
            rng: Rng::new(opts.link.seed),
            in_flight: Vec::new(),
            seq: 0,
            lost: 0,
            delivered: 0,
            largest: 0,
            steps: 0,
            drop_if: None,
        }
    }

    /// Node `i`'s stack (1-based, like the node ids).
    fn stack(&mut self, i: u8) -> &mut Stack {
        &mut self.nodes[usize::from(i) - 1].stack
    }

    fn router(&self, i: u8) -> &Router {
        &self.nodes[usize::from(i) - 1].router
    }

    fn router_mut(&mut self, i: u8) -> &mut Router {
        &mut self.nodes[usize::from(i) - 1].router
    }

    /// Hands one delivery to the link: dropped, or scheduled for later.
    fn transmit(&mut self, from: NodeId, to: NodeId, packet: Vec<u8>) {
        let link = self.link;
        if self
            .drop_if
            .as_mut()
            .is_some_and(|drop| drop(from, &packet))
        {
            self.lost += 1;
            return;
        }
        if self.rng.chance(link.loss) {
            self.lost += 1;
            return;
        }
        let mut at = self.now + link.latency;
        if self.rng.chance(link.reorder) {
            at += Duration::from_micros(self.rng.below(link.jitter.total_micros() + 1));
        }
        self.seq += 1;
        self.in_flight.push(InFlight {
            at,
            seq: self.seq,
            from,
            to,
            packet,
        });
    }

    /// Hands every delivery that is due to its destination's router and stack.
    fn deliver_due(&mut self) {
        let now = self.now;
        if !self.in_flight.iter().any(|f| f.at <= now) {
            return;
        }
        let (mut due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|f| f.at <= now);
        self.in_flight = rest;
        due.sort_by_key(|f| (f.at, f.seq));
        for f in due {
            let node = &mut self.nodes[usize::from(f.to.0[0]) - 1];
            // Router drops are counted by the router itself.
            if let Ok(frame) = node.router.receive(&f.packet, &f.from) {
                assert!(frame.header.is_none(), "IP medium has no Ethernet header");
                node.stack.receive(frame.packet);
                self.delivered += 1;
            }
        }
    }

    /// Polls every stack once at `now` and routes what it sent; returns how many packets
    /// the stacks sent.
    fn step(&mut self) -> usize {
        self.steps += 1;
        let mut moved = 0;
        self.deliver_due();
        for i in 0..self.nodes.len() {
            let now = self.now;
            let out = self.nodes[i].stack.poll(now, BUDGET);
            moved += out.len();
            let from = id(i as u8 + 1);
            for packet in out {
                self.largest = self.largest.max(packet.len());
                let mut deliveries = Vec::new();
                // A drop (unknown destination, ...) is counted by the router.
                let _ = self.nodes[i]
                    .router
                    .inject(&packet, |node, p| deliveries.push((*node, p.to_vec())));
                for (to, p) in deliveries {
                    self.transmit(from, to, p);
                }
            }
            self.deliver_due();
        }
        moved
    }

    /// The earliest time a stack or an in-flight delivery needs attention.
    fn next_event(&mut self) -> Option<Instant> {
        let now = self.now;
        let polls = self.nodes.iter_mut().filter_map(|n| n.stack.poll_at(now));
        let flights = self.in_flight.iter().map(|f| f.at);
        polls.chain(flights).min()
    }

    /// Steps until `cond` (checked after each step; it may also drive the sockets)
    /// holds, or `max` of virtual time has passed. Returns whether `cond` held.
    ///
    /// After a step in which packets moved, time advances one [`TICK`] (a delivery may
    /// wait in a stack that was already polled); otherwise it jumps to the next
    /// deadline of a stack or the link.
    fn run_until(&mut self, max: Duration, mut cond: impl FnMut(&mut Net) -> bool) -> bool {
        let deadline = self.now + max;
        for _ in 0..MAX_STEPS {
            let moved = self.step();
            if cond(self) {
                return true;
            }
            if self.now >= deadline {
                return false;
            }
            let next = if moved > 0 {
                self.now + TICK
            } else {
                match self.next_event() {
                    Some(t) if t > self.now => t,
                    Some(_) => self.now + TICK,
                    None => deadline,
                }
            };
            self.now = next.min(deadline);
        }
        panic!("run_until hit the {MAX_STEPS}-step cap at {}", self.now);
    }

    /// Lets virtual time pass (`max`), stepping as [`Net::run_until`] does.
    fn run_for(&mut self, max: Duration) {
        self.run_until(max, |_| false);
    }

    /// Listens on `server:port` and connects from `client`; returns (client, server)
    /// connections once both ends are established.
    fn connect_pair(
        &mut self,
        client: u8,
        server: u8,
        port: u16,
        ipv6: bool,
    ) -> (SocketId, SocketId) {
        let (listener, _) = self.stack(server).tcp_listen(port, 4).unwrap();
        let dst = if ipv6 { v6(server) } else { v4(server) };
        let conn = self.stack(client).tcp_connect(sa(dst, port)).unwrap();
        let mut accepted = None;
        // Generous: on a lossy link a lost SYN costs a 1 s RTO, then 2 s, ...
        let ok = self.run_until(Duration::from_secs(30), |net| {
            if accepted.is_none() {
                accepted = net.stack(server).tcp_accept(listener).unwrap();
            }
            accepted.is_some() && net.stack(client).tcp_status(conn).unwrap().state == "ESTABLISHED"
        });
        assert!(ok, "handshake did not complete");
        (conn, accepted.unwrap())
    }

    /// Reads everything waiting on a connection into `into`; returns how many bytes.
    fn read_all(&mut self, node: u8, conn: SocketId, into: &mut Vec<u8>) -> usize {
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0;
        loop {
            let n = self.stack(node).tcp_recv(conn, &mut buf).unwrap();
            if n == 0 {
                return total;
            }
            into.extend_from_slice(&buf[..n]);
            total += n;
        }
    }
}

/// One direction of a bulk transfer, pumped from a `run_until` condition.
struct Transfer {
    src: (u8, SocketId),
    dst: (u8, SocketId),
    data: Vec<u8>,
    sent: usize,
    received: Vec<u8>,
    /// When the receiver last got bytes (or the transfer began).
    last_progress: Option<Instant>,
    /// The longest the receiver waited for its next bytes: how long a loss stalled it.
    max_stall: Duration,
}

impl Transfer {
    fn new(src: (u8, SocketId), dst: (u8, SocketId), data: Vec<u8>) -> Self {
        let received = Vec::with_capacity(data.len());
        Transfer {
            src,
            dst,
            data,
            sent: 0,
            received,
            last_progress: None,
            max_stall: Duration::from_millis(0),
        }
    }

    /// Queues what fits and reads what arrived; returns whether everything arrived.
    fn pump(&mut self, net: &mut Net) -> bool {
        if self.sent < self.data.len() {
            self.sent += net
                .stack(self.src.0)
                .tcp_send(self.src.1, &self.data[self.sent..])
                .unwrap();
        }
        let last = *self.last_progress.get_or_insert(net.now);
        if net.read_all(self.dst.0, self.dst.1, &mut self.received) > 0 {
            self.max_stall = self.max_stall.max(net.now - last);
            self.last_progress = Some(net.now);
        }
        self.done()
    }

    fn done(&self) -> bool {
        self.received.len() >= self.data.len()
    }

    fn check(&self, what: &str) {
        assert_bytes_eq(&self.received, &self.data, what);
    }
}

/// Transfers `len` bytes from node 1 to node 2 over a fresh connection; returns the
/// virtual time the data took (from the first byte queued to the last byte read).
fn transfer_once(net: &mut Net, len: usize, seed: u64, max: Duration) -> Duration {
    transfer_measured(net, len, seed, max).0
}

/// Like [`transfer_once`], also returning the longest stall: the longest the receiver
/// waited for its next bytes.
fn transfer_measured(net: &mut Net, len: usize, seed: u64, max: Duration) -> (Duration, Duration) {
    let (c, s) = net.connect_pair(1, 2, 7000, false);
    let mut t = Transfer::new((1, c), (2, s), payload(seed, len));
    let start = net.now;
    let ok = net.run_until(max, |net| t.pump(net));
    assert!(
        ok,
        "{len}-byte transfer incomplete after {} of virtual time: {} sent, {} received, {} lost",
        net.now - start,
        t.sent,
        t.received.len(),
        net.lost
    );
    t.check("transfer");
    (net.now - start, t.max_stall)
}

// --- TCP ---------------------------------------------------------------------------

#[test]
fn tcp_echo_both_directions() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(2, 1, 8080, false);

    let cs = net.stack(2).tcp_status(c).unwrap();
    let ss = net.stack(1).tcp_status(s).unwrap();
    assert!(cs.established && ss.established);
    assert_eq!(cs.remote, Some(sa(v4(1), 8080)));
    assert_eq!(ss.local, Some(sa(v4(1), 8080)));
    assert_eq!(ss.remote, cs.local);
    assert_eq!(cs.failure, None);

    let hello = b"hello from the client".to_vec();
    let greeting = b"and hello from the server, sent at the same time".to_vec();
    assert_eq!(net.stack(2).tcp_send(c, &hello).unwrap(), hello.len());
    assert_eq!(net.stack(1).tcp_send(s, &greeting).unwrap(), greeting.len());

    // The server echoes what it reads; the client collects greeting + echo.
    let (mut at_server, mut at_client) = (Vec::new(), Vec::new());
    let want_client: Vec<u8> = [greeting.as_slice(), hello.as_slice()].concat();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        let before = at_server.len();
        net.read_all(1, s, &mut at_server);
        let fresh = at_server[before..].to_vec();
        if !fresh.is_empty() {
            assert_eq!(net.stack(1).tcp_send(s, &fresh).unwrap(), fresh.len());
        }
        net.read_all(2, c, &mut at_client);
        at_client.len() >= want_client.len()
    });
    assert!(ok);
    assert_bytes_eq(&at_server, &hello, "server received");
    assert_bytes_eq(&at_client, &want_client, "client received");
    assert_eq!(net.router(1).drops().total(), 0);
    assert_eq!(net.router(2).drops().total(), 0);
}

#[test]
fn tcp_ipv6_works_like_ipv4() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 443, true);
    let cs = net.stack(1).tcp_status(c).unwrap();
    assert_eq!(cs.local.map(|a| a.ip()), Some(v6(1)));
    assert_eq!(cs.remote, Some(sa(v6(2), 443)));
    assert_eq!(net.stack(2).tcp_status(s).unwrap().remote, cs.local);

    let mut a = Transfer::new((1, c), (2, s), payload(61, 300_000));
    let mut b = Transfer::new((2, s), (1, c), payload(62, 200_000));
    assert!(net.run_until(Duration::from_secs(30), |net| a.pump(net) & b.pump(net)));
    a.check("v6 client to server");
    b.check("v6 server to client");
    // Full-size segments: MSS is the MTU less 60 bytes of IPv6 + TCP headers.
    assert_eq!(net.largest, 1400);
}

#[test]
fn tcp_bulk_one_direction_4mib() {
    let mut net = Net::new(Options::default());
    let virt = transfer_once(&mut net, 4 << 20, 0xb01c, Duration::from_secs(60));
    assert!(
        virt < Duration::from_secs(10),
        "took {virt} of virtual time"
    );
    assert_eq!(net.largest, 1400);
}

#[test]
fn tcp_bulk_both_directions_at_once() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 7001, false);
    let mut up = Transfer::new((1, c), (2, s), payload(1, 2 << 20));
    let mut down = Transfer::new((2, s), (1, c), payload(2, 2 << 20));
    assert!(net.run_until(Duration::from_secs(60), |net| up.pump(net) & down.pump(net)));
    up.check("client to server");
    down.check("server to client");
}

#[test]
fn tcp_half_close() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 7002, false);
    let request = payload(3, 50_000);
    assert_eq!(net.stack(1).tcp_send(c, &request).unwrap(), request.len());
    net.stack(1).tcp_shutdown(c).unwrap();
    // Our half is closed at once; queued bytes still go out before the FIN.
    let cs = net.stack(1).tcp_status(c).unwrap();
    assert!(!cs.may_send && cs.may_recv);
    assert_eq!(
        net.stack(1).tcp_send(c, b"late"),
        Err(StackError::NotConnected)
    );

    let mut got = Vec::new();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        net.read_all(2, s, &mut got);
        !net.stack(2).tcp_status(s).unwrap().may_recv
    });
    assert!(ok, "server never saw end of stream");
    assert_bytes_eq(&got, &request, "request");
    let ss = net.stack(2).tcp_status(s).unwrap();
    assert_eq!(
        (ss.state, ss.recv_queue, ss.may_send),
        ("CLOSE-WAIT", 0, true)
    );
    assert_eq!(ss.failure, None);

    // The other direction is still open.
    let reply = payload(4, 80_000);
    let mut back = Transfer::new((2, s), (1, c), reply);
    assert!(net.run_until(Duration::from_secs(5), |net| back.pump(net)));
    back.check("reply after half-close");
    assert_eq!(net.stack(1).tcp_status(c).unwrap().state, "FIN-WAIT-2");

    net.stack(2).tcp_shutdown(s).unwrap();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        !net.stack(1).tcp_status(c).unwrap().may_recv
            && net.stack(2).tcp_status(s).unwrap().state == "CLOSED"
    });
    assert!(ok);
    let cs = net.stack(1).tcp_status(c).unwrap();
    assert_eq!((cs.state, cs.failure), ("TIME-WAIT", None));
    assert_eq!(net.stack(2).tcp_status(s).unwrap().failure, None);
}

#[test]
fn tcp_connect_to_closed_port_is_refused() {
    let mut net = Net::new(Options::default());
    let c = net.stack(1).tcp_connect(sa(v4(2), 9)).unwrap();
    assert_eq!(net.stack(1).tcp_status(c).unwrap().state, "SYN-SENT");
    // Sending before the handshake is no error: nothing fits yet.
    assert_eq!(net.stack(1).tcp_send(c, b"early"), Ok(0));
    let ok = net.run_until(Duration::from_secs(5), |net| {
        net.stack(1).tcp_status(c).unwrap().failure.is_some()
    });
    assert!(ok);
    let st = net.stack(1).tcp_status(c).unwrap();
    assert_eq!(st.failure, Some(TcpFailure::Refused));
    assert_eq!(st.state, "CLOSED");
    assert!(!st.established);
    // A refusal is immediate, not a retransmission timeout.
    assert!(
        net.now < Instant::from_millis(100),
        "refused only at {}",
        net.now
    );
    assert_eq!(
        net.stack(1).tcp_send(c, b"x"),
        Err(StackError::NotConnected)
    );
}

#[test]
fn tcp_abort_resets_the_peer() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 7003, false);
    // Unread data on the peer does not hide the reset.
    net.stack(1).tcp_send(c, b"some bytes").unwrap();
    net.run_for(Duration::from_millis(50));
    net.stack(1).tcp_abort(c).unwrap();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        net.stack(2).tcp_status(s).unwrap().failure.is_some()
    });
    assert!(ok, "peer never saw the reset");
    let ss = net.stack(2).tcp_status(s).unwrap();
    assert_eq!(ss.failure, Some(TcpFailure::Reset));
    assert_eq!(ss.state, "CLOSED");
    assert!(ss.established && !ss.may_send);
    assert_eq!(
        net.stack(2).tcp_send(s, b"x"),
        Err(StackError::NotConnected)
    );
}

#[test]
fn tcp_connect_to_unheld_ip_stays_syn_sent() {
    let mut net = Net::new(Options::default());
    let c = net.stack(1).tcp_connect(sa(v4(77), 80)).unwrap();
    net.run_for(Duration::from_secs(20));
    let st = net.stack(1).tcp_status(c).unwrap();
    assert_eq!(
        (st.state, st.failure, st.established),
        ("SYN-SENT", None, false)
    );
    // The SYN and its retransmissions (RTO 1 s, doubling) all died in the router.
    let drops = net.router(1).drops().get(DropReason::UnknownDestination);
    assert!((3..=6).contains(&drops), "{drops} SYNs dropped");
    assert_eq!(net.delivered, 0);
}

#[test]
fn tcp_connect_timeout_is_not_refused() {
    let mut net = Net::new(Options::default());
    let c = net.stack(1).tcp_connect(sa(v4(77), 80)).unwrap();
    // tcp_timeout is 120 s: smoltcp then closes the socket without any answer.
    net.run_for(Duration::from_secs(130));
    let st = net.stack(1).tcp_status(c).unwrap();
    assert_eq!(st.state, "CLOSED");
    assert_eq!(net.delivered, 0, "nobody ever answered");
    assert_ne!(
        st.failure,
        Some(TcpFailure::Refused),
        "nobody refused: the connect timed out"
    );
}

#[test]
fn tcp_listener_backlog_accepts_20_simultaneous_connects() {
    let mut net = Net::new(Options {
        tcp_buffer: 16 * 1024,
        ..Options::default()
    });
    let (listener, port) = net.stack(1).tcp_listen(8000, 4).unwrap();
    let conns: Vec<SocketId> = (0..20)
        .map(|_| net.stack(2).tcp_connect(sa(v4(1), port)).unwrap())
        .collect();
    let mut accepted = Vec::new();
    let ok = net.run_until(Duration::from_secs(60), |net| {
        while let Some(a) = net.stack(1).tcp_accept(listener).unwrap() {
            accepted.push(a);
        }
        accepted.len() == 20
    });
    let refused = conns
        .iter()
        .filter(|&&c| net.stack(2).tcp_status(c).unwrap().failure == Some(TcpFailure::Refused))
        .count();
    assert!(ok, "{} of 20 accepted, {refused} refused", accepted.len());
    for c in conns {
        assert_eq!(net.stack(2).tcp_status(c).unwrap().state, "ESTABLISHED");
    }
}

#[test]
fn tcp_listener_backlog_refills_after_each_handshake() {
    let mut net = Net::new(Options {
        tcp_buffer: 16 * 1024,
        ..Options::default()
    });
    let (listener, port) = net.stack(1).tcp_listen(0, 4).unwrap();
    assert!(EPHEMERAL_PORTS.contains(&port));
    // Waves of `backlog` connects: the listening sockets are replaced as each handshake
    // completes; the accept queue counts against the backlog (as in Linux), so each
    // wave is accepted before the next.
    let mut conns = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..5 {
        for _ in 0..4 {
            conns.push(net.stack(2).tcp_connect(sa(v4(1), port)).unwrap());
        }
        // Established at both ends: the client after the SYN-ACK, the server (and so
        // the accept queue, counted in socket_count) after the last ACK.
        let ok = net.run_until(Duration::from_secs(5), |net| {
            net.stack(1).socket_count() == 1 + conns.len()
                && conns
                    .iter()
                    .all(|&c| net.stack(2).tcp_status(c).unwrap().state == "ESTABLISHED")
        });
        assert!(ok);
        while let Some(a) = net.stack(1).tcp_accept(listener).unwrap() {
            accepted.push(a);
        }
    }
    assert_eq!(accepted.len(), 20);
    // A full accept queue drops further SYNs (no RST): the client keeps trying.
    let (full, port2) = net.stack(1).tcp_listen(0, 2).unwrap();
    let waiting: Vec<_> = (0..3)
        .map(|_| net.stack(2).tcp_connect(sa(v4(1), port2)).unwrap())
        .collect();
    net.run_until(Duration::from_secs(3), |_| false);
    let states: Vec<_> = waiting
        .iter()
        .map(|&c| net.stack(2).tcp_status(c).unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| s.state == "ESTABLISHED").count(),
        2
    );
    assert_eq!(states[2].state, "SYN-SENT");
    assert_eq!(states[2].failure, None);
    assert!(net.stack(1).stats().syn_dropped >= 1);
    // Accepting one frees a slot: the retried SYN gets through.
    assert!(net.stack(1).tcp_accept(full).unwrap().is_some());
    let ok = net.run_until(Duration::from_secs(10), |net| {
        net.stack(2).tcp_status(waiting[2]).unwrap().state == "ESTABLISHED"
    });
    assert!(ok, "the dropped SYN was retried and accepted");
    // Each accepted connection is a distinct peer, and talks to the right one.
    for (i, (&c, &a)) in conns.iter().zip(&accepted).enumerate() {
        let remote = net.stack(1).tcp_status(a).unwrap().remote;
        assert_eq!(
            remote,
            net.stack(2).tcp_status(c).unwrap().local,
            "conn {i}"
        );
    }
    // A connection is no listener.
    assert_eq!(
        net.stack(1).tcp_accept(accepted[0]),
        Err(StackError::WrongKind(accepted[0], "TCP connection"))
    );
}

#[test]
fn releasing_a_listener_resets_unaccepted_connections_and_frees_the_port() {
    let mut net = Net::new(Options::default());
    let (listener, port) = net.stack(1).tcp_listen(8100, 2).unwrap();
    assert_eq!(
        net.stack(1).tcp_listen(8100, 2),
        Err(StackError::AddrInUse(8100))
    );
    let waiting = net.stack(2).tcp_connect(sa(v4(1), port)).unwrap();
    let ok = net.run_until(Duration::from_secs(2), |net| {
        net.stack(1).socket_count() == 2
    });
    assert!(ok, "connection never reached the accept queue");
    assert_eq!(
        net.stack(2).tcp_status(waiting).unwrap().state,
        "ESTABLISHED"
    );

    net.stack(1).release(listener).unwrap();
    let ok = net.run_until(Duration::from_secs(2), |net| {
        net.stack(2).tcp_status(waiting).unwrap().failure.is_some()
    });
    assert!(ok, "the unaccepted connection was not reset");
    assert_eq!(
        net.stack(2).tcp_status(waiting).unwrap().failure,
        Some(TcpFailure::Reset)
    );
    assert_eq!(net.stack(1).socket_count(), 0, "everything reaped");
    assert_eq!(
        net.stack(1).tcp_accept(listener),
        Err(StackError::NoSocket(listener))
    );

    // Nobody listens any more; then a new listener can take the port.
    let refused = net.stack(2).tcp_connect(sa(v4(1), port)).unwrap();
    assert!(net.run_until(Duration::from_secs(2), |net| {
        net.stack(2).tcp_status(refused).unwrap().failure == Some(TcpFailure::Refused)
    }));
    let (c, _) = net.connect_pair(2, 1, port, false);
    assert!(net.stack(2).tcp_status(c).unwrap().established);
}

#[test]
fn tcp_silent_peer_times_out_not_reset() {
    let mut net = Net::new(Options::default());
    let (c, _) = net.connect_pair(1, 2, 7010, false);
    // Node 2 vanishes from node 1's view: every packet either way is dropped.
    net.router_mut(1).remove_node(&id(2)).unwrap();
    net.stack(1).tcp_send(c, b"anyone there?").unwrap();
    let ok = net.run_until(Duration::from_secs(300), |net| {
        net.stack(1).tcp_status(c).unwrap().state == "CLOSED"
    });
    assert!(ok, "tcp_timeout (120 s) never closed the connection");
    assert!(net.router(1).drops().get(DropReason::UnknownDestination) > 0);
    assert_ne!(
        net.stack(1).tcp_status(c).unwrap().failure,
        Some(TcpFailure::Reset),
        "no reset was ever received: the connection timed out"
    );
}

#[test]
fn take_ready_reports_a_connection_after_data_arrives() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 7004, false);
    net.stack(1).take_ready();
    net.stack(2).take_ready();
    net.run_for(Duration::from_secs(1));
    assert_eq!(
        net.stack(2).take_ready(),
        Vec::<SocketId>::new(),
        "nothing happened"
    );

    net.stack(1).tcp_send(c, b"wake up").unwrap();
    let ok = net.run_until(Duration::from_secs(1), |net| {
        net.stack(2).tcp_status(s).unwrap().recv_queue > 0
    });
    assert!(ok);
    assert!(net.stack(2).take_ready().contains(&s));
    assert!(net.stack(2).take_ready().is_empty(), "take_ready drains");
}

#[test]
fn take_ready_reports_a_connection_every_time_data_arrives() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 7005, false);
    for round in 0..3 {
        for (from, conn, to, peer) in [(1, c, 2, s), (2, s, 1, c)] {
            net.stack(to).take_ready();
            net.stack(from).tcp_send(conn, b"ping").unwrap();
            let ok = net.run_until(Duration::from_secs(1), |net| {
                net.stack(to).tcp_status(peer).unwrap().recv_queue > 0
            });
            assert!(ok);
            assert!(
                net.stack(to).take_ready().contains(&peer),
                "round {round}: node {to} got data on {peer} but take_ready did not say so"
            );
            let mut sink = Vec::new();
            net.read_all(to, peer, &mut sink);
        }
    }
}

#[test]
fn take_ready_reports_a_udp_socket_every_time_a_datagram_arrives() {
    let mut net = Net::new(Options::default());
    let (a, _) = net.stack(1).udp_bind(6000).unwrap();
    let (b, _) = net.stack(2).udp_bind(6000).unwrap();
    for round in 0..3 {
        net.stack(2).take_ready();
        net.stack(1)
            .udp_send_to(a, b"tick", sa(v4(2), 6000))
            .unwrap();
        let mut got = None;
        let mut ready = Vec::new();
        assert!(net.run_until(Duration::from_secs(1), |net| {
            ready.extend(net.stack(2).take_ready());
            got = net.stack(2).udp_recv_from(b).unwrap();
            got.is_some()
        }));
        assert!(
            ready.contains(&b),
            "round {round}: datagram arrived unannounced"
        );
    }
}

#[test]
fn release_reaps_the_connection_after_time_wait() {
    let mut net = Net::new(Options::default());
    let (c, s) = net.connect_pair(1, 2, 7006, false);
    assert_eq!(net.stack(1).socket_count(), 1);
    assert_eq!(net.stack(2).socket_count(), 2, "listener + connection");

    // Bytes queued before release still go out, then the FIN.
    let last_words = payload(5, 100_000);
    assert_eq!(
        net.stack(1).tcp_send(c, &last_words).unwrap(),
        last_words.len()
    );
    net.stack(1).release(c).unwrap();
    assert_eq!(net.stack(1).tcp_status(c), Err(StackError::NoSocket(c)));
    assert_eq!(net.stack(1).release(c), Err(StackError::NoSocket(c)));
    assert_eq!(net.stack(1).socket_count(), 1, "still closing");

    let mut got = Vec::new();
    let ok = net.run_until(Duration::from_secs(5), |net| {
        net.read_all(2, s, &mut got);
        !net.stack(2).tcp_status(s).unwrap().may_recv
    });
    assert!(ok);
    assert_bytes_eq(&got, &last_words, "data sent before release");

    // The peer's reply is discarded by the released socket, not an error.
    net.stack(2).tcp_send(s, b"nobody reads this").unwrap();
    net.stack(2).release(s).unwrap();
    // The passive closer goes as soon as its FIN is acknowledged; the active closer
    // waits out TIME-WAIT (10 s in smoltcp).
    let ok = net.run_until(Duration::from_secs(5), |net| {
        net.stack(2).socket_count() == 1
    });
    assert!(ok, "passive closer not reaped");
    net.run_for(Duration::from_secs(5));
    assert_eq!(
        net.stack(1).socket_count(),
        1,
        "reaped before TIME-WAIT ended"
    );
    let ok = net.run_until(Duration::from_secs(10), |net| {
        net.stack(1).socket_count() == 0
    });
    assert!(ok, "active closer never reaped");
    assert!(net.now >= Instant::from_secs(10));
    // The stack is usable as before: nothing of the old connection is left over.
    let (c2, _) = net.connect_pair(1, 2, 7007, false);
    assert!(net.stack(1).tcp_status(c2).unwrap().established);
}

// --- UDP ---------------------------------------------------------------------------

#[test]
fn udp_round_trip() {
    let mut net = Net::new(Options::default());
    let (srv, port) = net.stack(1).udp_bind(5000).unwrap();
    assert_eq!(port, 5000);
    assert_eq!(
        net.stack(1).udp_bind(5000),
        Err(StackError::AddrInUse(5000))
    );
    let (cli, cport) = net.stack(2).udp_bind(0).unwrap();
    assert!(EPHEMERAL_PORTS.contains(&cport));

    for (ip_srv, ip_cli) in [(v4(1), v4(2)), (v6(1), v6(2))] {
        let max = net.stack(2).max_datagram(ip_srv);
        assert_eq!(
            max,
            if ip_srv.is_ipv4() {
                1400 - 28
            } else {
                1400 - 48
            }
        );
        let too_big = vec![0u8; max + 1];
        assert_eq!(
            net.stack(2).udp_send_to(cli, &too_big, sa(ip_srv, 5000)),
            Err(StackError::TooLarge { len: max + 1, max })
        );
        let big = payload(6, max);
        net.stack(2)
            .udp_send_to(cli, b"query", sa(ip_srv, 5000))
            .unwrap();
        net.stack(2)
            .udp_send_to(cli, &big, sa(ip_srv, 5000))
            .unwrap();

        let mut got = Vec::new();
        let ok = net.run_until(Duration::from_secs(1), |net| {
            while let Some(d) = net.stack(1).udp_recv_from(srv).unwrap() {
                got.push(d);
            }
            got.len() == 2
        });
        assert!(ok);
        assert_eq!(net.largest, 1400, "a max-size datagram fills the MTU");
        assert_eq!(got[0].data, b"query");
        assert_eq!(got[0].src, sa(ip_cli, cport));
        assert_eq!(got[0].dst, Some(ip_srv));
        assert_bytes_eq(&got[1].data, &big, "max-size datagram");

        net.stack(1)
            .udp_send_to(srv, b"answer", got[0].src)
            .unwrap();
        let mut reply = None;
        assert!(net.run_until(Duration::from_secs(1), |net| {
            reply = net.stack(2).udp_recv_from(cli).unwrap();
            reply.is_some()
        }));
        let reply = reply.unwrap();
        assert_eq!(
            (reply.data.as_slice(), reply.src),
            (&b"answer"[..], sa(ip_srv, 5000))
        );
    }

    // Released, the port can be bound again.
    net.stack(1).release(srv).unwrap();
    assert_eq!(net.stack(1).udp_bind(5000).map(|(_, p)| p), Ok(5000));
    assert_eq!(net.stack(1).tcp_status(srv), Err(StackError::NoSocket(srv)));
}

// --- ICMP --------------------------------------------------------------------------

#[test]
fn ping_v4_and_v6_get_an_echo_reply() {
    let mut net = Net::new(Options::default());
    let icmp = net.stack(1).icmp_open().unwrap();
    for (dst, seq) in [(v4(2), 7u16), (v6(2), 8u16)] {
        let data = payload(u64::from(seq), 56);
        net.stack(1).ping_send(icmp, dst, seq, &data).unwrap();
        let mut reply = None;
        let ok = net.run_until(Duration::from_secs(1), |net| {
            reply = net.stack(1).ping_recv(icmp).unwrap();
            reply.is_some()
        });
        assert!(ok, "no echo reply from {dst}");
        assert_eq!(reply, Some((dst, seq, data)));
    }
    let max = 1400 - 28;
    assert_eq!(
        net.stack(1).ping_send(icmp, v4(2), 1, &vec![0; max + 1]),
        Err(StackError::TooLarge { len: max + 1, max })
    );
    // Nobody answers for an address nobody holds.
    net.stack(1).ping_send(icmp, v4(99), 9, b"anyone?").unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.stack(1).ping_recv(icmp).unwrap(), None);
}

// --- MTU ---------------------------------------------------------------------------

#[test]
fn jumbo_mtu_9000() {
    let mut net = Net::new(Options {
        mtu: 9000,
        ..Options::default()
    });
    transfer_once(&mut net, 1 << 20, 0x9000, Duration::from_secs(30));
    assert_eq!(net.largest, 9000, "full-size TCP segments fill the MTU");

    let (a, _) = net.stack(1).udp_bind(9000).unwrap();
    let (b, _) = net.stack(2).udp_bind(9000).unwrap();
    let big = payload(9, 9000 - 28);
    net.stack(1).udp_send_to(a, &big, sa(v4(2), 9000)).unwrap();
    let mut got = None;
    assert!(net.run_until(Duration::from_secs(1), |net| {
        got = net.stack(2).udp_recv_from(b).unwrap();
        got.is_some()
    }));
    assert_bytes_eq(&got.unwrap().data, &big, "jumbo datagram");
}

#[test]
fn tcp_across_mismatched_mtus_uses_the_smaller_mss() {
    let mut net = Net::new(Options {
        mtu: 9000,
        mtu_of: &[(2, 1400)],
        ..Options::default()
    });
    // Node 2 announces an MSS for its 1400-byte MTU; node 1 must keep to it, or node 2
    // would refuse every full-size segment.
    let (c, s) = net.connect_pair(1, 2, 7011, false);
    let mut a = Transfer::new((1, c), (2, s), payload(71, 500_000));
    let mut b = Transfer::new((2, s), (1, c), payload(72, 500_000));
    assert!(net.run_until(Duration::from_secs(30), |net| a.pump(net) & b.pump(net)));
    a.check("9000 to 1400");
    b.check("1400 to 9000");
    assert_eq!(net.largest, 1400);
    assert_eq!(net.stack(2).stats().dropped_in, 0);
}

#[test]
fn receive_refuses_empty_and_oversized_packets() {
    let mut net = Net::new(Options::default());
    let stack = net.stack(1);
    assert!(!stack.receive(&[]));
    assert!(!stack.receive(&vec![0x45; 1401]));
    // Garbage of a valid size is queued (smoltcp discards it at the next poll).
    assert!(stack.receive(&[0x45; 40]));
    let st = stack.stats();
    assert_eq!((st.dropped_in, st.packets_in, st.bytes_in), (2, 1, 40));
    assert!(stack.poll(Instant::from_millis(0), BUDGET).is_empty());
}

// --- Lossy links -------------------------------------------------------------------

/// A link with 5 ms one-way latency (10 ms RTT), so throughput in virtual time means
/// something, plus the given loss and reordering.
fn lossy(loss: f64, reorder: f64, seed: u64) -> Link {
    Link {
        loss,
        reorder,
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(15),
        seed,
    }
}

/// Like [`lossy`] without reordering, at a round-trip time of `rtt`.
fn lossy_rtt(loss: f64, rtt: Duration, seed: u64) -> Link {
    Link {
        latency: rtt / 2,
        ..lossy(loss, 0.0, seed)
    }
}

#[test]
fn tcp_survives_lossy_and_reordering_links() {
    const LEN: usize = 1 << 20;
    // Heavy loss used to cost whole seconds (smoltcp 0.14 as released: a 1 s minimum RTO
    // and no SACK-based recovery; 1 MiB at 10 % loss took 190..211 s over these seeds).
    // With the project's patches it takes 1.5..3.5 s; reordering alone 1.7 s (2.4..2.8 s
    // before). The bound leaves room; the step cap keeps real time small.
    const MAX: Duration = Duration::from_secs(60);
    for (loss, reorder) in [
        (0.01, 0.0),
        (0.05, 0.0),
        (0.10, 0.0),
        (0.0, 0.2),
        (0.05, 0.2),
    ] {
        for seed in [1, 2] {
            let mut net = Net::new(Options {
                link: lossy(loss, reorder, seed),
                ..Options::default()
            });
            let virt = transfer_once(&mut net, LEN, seed, MAX);
            eprintln!(
                "loss {loss} reorder {reorder} seed {seed}: {virt} virtual, {} steps, {} lost",
                net.steps, net.lost
            );
            if loss > 0.0 {
                assert!(net.lost > 0, "the link dropped nothing");
            }
        }
    }
}

#[test]
fn tcp_throughput_floor_at_1_percent_loss() {
    // 1 MiB per seed over a 10 ms RTT link that loses 1 % of packets in each direction.
    // Measured (virtual time): seeds 1..=8 took 4.1 s in all, 2.0 MB/s overall, the
    // slowest seed (8) 1.4 MB/s; the same link without loss does 10.8 MB/s. With
    // smoltcp 0.14 as released, where nearly every loss cost a 1-second RTO, it was
    // 42.8 s, 196 kB/s. The floors leave about 2x margin: they trip if recovery regresses
    // (losses costing timeouts again), not on an unlucky seed.
    const LEN: usize = 1 << 20;
    const FLOOR_OVERALL: f64 = 1_000_000.0;
    const FLOOR_PER_SEED: f64 = 600_000.0;
    let mut total = Duration::from_millis(0);
    for seed in 1..=8 {
        let mut net = Net::new(Options {
            link: lossy(0.01, 0.0, seed),
            ..Options::default()
        });
        let virt = transfer_once(&mut net, LEN, seed, Duration::from_secs(300));
        let rate = LEN as f64 / secs(virt);
        eprintln!(
            "1% loss seed {seed}: {virt} virtual, {rate:.0} B/s, {} lost",
            net.lost
        );
        assert!(
            rate >= FLOOR_PER_SEED,
            "seed {seed}: {rate:.0} B/s is below the {FLOOR_PER_SEED} B/s per-seed floor"
        );
        total += virt;
    }
    let rate = (8 * LEN) as f64 / secs(total);
    eprintln!("1% loss overall: {total} virtual, {rate:.0} B/s");
    assert!(
        rate >= FLOOR_OVERALL,
        "{rate:.0} B/s is below the {FLOOR_OVERALL} B/s floor"
    );
}

#[test]
fn tcp_at_50ms_rtt_and_1_percent_loss_stalls_at_most_two_rtt_plus_200ms() {
    // Longer round trips: loss recovery takes a round trip or two, and no loss costs more
    // than one retransmission timeout (the worst case, a lost lone segment).
    const LEN: usize = 512 * 1024;
    const RTT_50: Duration = Duration::from_millis(50);
    const FLOOR: f64 = 200_000.0;
    for seed in 1..=4 {
        let mut net = Net::new(Options {
            link: lossy_rtt(0.01, RTT_50, seed),
            ..Options::default()
        });
        let (virt, stall) = transfer_measured(&mut net, LEN, seed, Duration::from_secs(120));
        let rate = LEN as f64 / secs(virt);
        eprintln!(
            "50 ms RTT, 1% loss, seed {seed}: {virt} virtual, {rate:.0} B/s, longest stall \
             {stall}, {} lost",
            net.lost
        );
        assert!(rate >= FLOOR, "seed {seed}: {rate:.0} B/s");
        assert!(
            stall <= RTT_50 * 2 + TCP_MIN_RTO,
            "seed {seed}: stalled {stall}"
        );
    }
}

fn secs(d: Duration) -> f64 {
    d.total_micros() as f64 / 1e6
}

// --- Loss recovery -----------------------------------------------------------------
//
// smoltcp as patched here (patches/smoltcp) recovers as Linux does: SACK-based recovery
// (RFC 6675), RACK-TLP (RFC 8985) and a 200 ms minimum RTO. These cases place losses
// exactly, on a 10 ms RTT link, and bound how long the receiver waits for its next bytes.

/// The round-trip time of [`lossy`] links.
const RTT: Duration = Duration::from_millis(10);
/// Full-size TCP segments at the tests' 1400-byte MTU over IPv4.
const MSS: usize = 1400 - 40;

/// A [`Net::drop_if`] hook that drops data segments of the first connection node 1 opens,
/// by the stream offsets they carry: the segment holding each listed offset is dropped as
/// many times as listed (the first transmission, then retransmissions of it).
fn drop_segments(plan: &[(usize, u32)]) -> DropHook {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    let mut plan = plan.to_vec();
    let mut isn: Option<u32> = None;
    Box::new(move |from, packet| {
        if from != id(1) {
            return false;
        }
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return false;
        };
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return false;
        };
        let seq = tcp.seq_number().0 as u32;
        if tcp.syn() {
            isn.get_or_insert(seq);
            return false;
        }
        let (Some(isn), len) = (isn, tcp.payload().len()) else {
            return false;
        };
        let start = seq.wrapping_sub(isn.wrapping_add(1)) as usize;
        for (offset, times) in plan.iter_mut() {
            if *times > 0 && (start..start + len).contains(offset) {
                *times -= 1;
                return true;
            }
        }
        false
    })
}

/// Transfers `len` bytes over a lossless 10 ms RTT link that drops the planned segments
/// (see [`drop_segments`]); returns the virtual time taken and the longest stall.
fn transfer_dropping(len: usize, plan: &[(usize, u32)]) -> (Duration, Duration) {
    let mut net = Net::new(Options {
        link: lossy(0.0, 0.0, 1),
        ..Options::default()
    });
    net.drop_if = Some(drop_segments(plan));
    let (virt, stall) = transfer_measured(&mut net, len, 0x10_55, Duration::from_secs(60));
    let planned: u64 = plan.iter().map(|&(_, times)| u64::from(times)).sum();
    assert_eq!(net.lost, planned, "every planned drop happened");
    eprintln!("{len} bytes, drops {plan:?}: {virt} virtual, longest stall {stall}");
    (virt, stall)
}

#[test]
fn tcp_lossless_transfer_has_no_stall() {
    let (_, stall) = transfer_dropping(1 << 20, &[]);
    assert!(stall <= RTT, "stalled {stall}");
}

#[test]
fn tcp_single_tail_loss_stalls_at_most_two_rtt_plus_200ms() {
    // The last segment of the transfer is lost: no data follows to reveal it, and a lone
    // segment in flight may have its ACK delayed, so RACK-TLP leaves it to the timeout,
    // as Linux does: 200 ms, not smoltcp's default of 1 s.
    const LEN: usize = 256 * 1024;
    let (_, stall) = transfer_dropping(LEN, &[(LEN - 1, 1)]);
    assert!(stall <= RTT * 2 + TCP_MIN_RTO, "stalled {stall}");
}

#[test]
fn tcp_tail_losses_are_repaired_by_a_probe_not_a_timeout() {
    // The last four segments are lost: after two round trips without an ACK a tail loss
    // probe resends the last one, whose ACK reports the others missing.
    const LEN: usize = 256 * 1024;
    let plan: Vec<_> = (0..4).map(|k| (LEN - 1 - k * MSS, 1)).collect();
    let (_, stall) = transfer_dropping(LEN, &plan);
    assert!(stall <= RTT * 5, "stalled {stall}");
}

#[test]
fn tcp_sack_repairs_several_losses_in_a_window_without_a_timeout() {
    // Three holes in one window, later a burst of five: SACK shows what is missing, and
    // each is resent about a round trip after its loss, with no retransmission timeout.
    const LEN: usize = 1 << 20;
    let mut plan: Vec<_> = (0..3).map(|k| (100_000 + k * 4 * MSS, 1)).collect();
    plan.extend((0..5).map(|k| (600_000 + k * MSS, 1)));
    let (virt, stall) = transfer_dropping(LEN, &plan);
    assert!(stall <= RTT * 3, "stalled {stall}");
    // All of it costs less time than one timeout would.
    let (lossless, _) = transfer_dropping(LEN, &[]);
    assert!(
        virt < lossless + TCP_MIN_RTO,
        "{virt} against {lossless} without loss"
    );
}

#[test]
fn tcp_lost_retransmission_is_repaired_without_a_timeout() {
    // A segment and its first retransmission are lost: data sent after the
    // retransmission arrives, which tells RACK the retransmission was lost too.
    const LEN: usize = 1 << 20;
    let (_, stall) = transfer_dropping(LEN, &[(300_000, 2)]);
    assert!(stall <= RTT * 4, "stalled {stall}");
}

#[test]
fn runs_are_deterministic() {
    let run = || {
        let mut net = Net::new(Options {
            link: lossy(0.05, 0.2, 42),
            ..Options::default()
        });
        let virt = transfer_once(&mut net, 256 * 1024, 42, Duration::from_secs(300));
        (
            virt,
            net.steps,
            net.lost,
            net.delivered,
            net.stack(1).stats(),
            net.stack(2).stats(),
        )
    };
    assert_eq!(run(), run());
}

/// Fuzz finding (`stack` target, fuzz/README.md): smoltcp took an IPv6 destination whose
/// last two bytes matched the stack's address for its solicited-node group, so a stack at
/// fd00::1 answered a datagram to 2001:db8::1 (or the group ff0e::1) with an ICMPv6 port
/// unreachable *from that address*. Such packets are now refused and counted; the stack's
/// own address still gets the ICMPv6 error, and all-nodes is still heard.
#[test]
fn stack_refuses_ipv6_to_addresses_sharing_its_low_bytes() {
    use crate::wire::build::{solicited_node, udp_v6};
    let now = Instant::from_millis(0);
    let own: Ipv6Addr = "fd00::1".parse().unwrap();
    let peer: Ipv6Addr = "fd00::2".parse().unwrap();
    let mut stack = Stack::new(
        StackConfig {
            addresses: vec![(own.into(), 64)],
            ..StackConfig::default()
        },
        now,
    )
    .unwrap();
    for foreign in [
        "2001:db8::1",
        "fd00:1::1",
        "143a:40fd:0:900::1",
        "ff0e::1",
        "ff02::1:ff01:1",
    ] {
        let dst: Ipv6Addr = foreign.parse().unwrap();
        let before = stack.stats().dropped_in;
        assert!(
            !stack.receive(&udp_v6(peer, dst, 4000, 53, b"query")),
            "{foreign} taken"
        );
        assert_eq!(
            stack.stats().dropped_in,
            before + 1,
            "{foreign} not counted"
        );
        assert!(stack.poll(now, BUDGET).is_empty(), "{foreign} answered");
    }
    // The stack's own address: nothing listens on 53, so a port unreachable from it.
    assert!(stack.receive(&udp_v6(peer, own, 4000, 53, b"query")));
    let out = stack.poll(now, BUDGET);
    assert_eq!(out.len(), 1);
    let reply = crate::wire::IpPacket::parse(&out[0]).unwrap();
    assert_eq!(
        (reply.src(), reply.dst()),
        (IpAddr::V6(own), IpAddr::V6(peer))
    );
    // Its groups are heard (nothing listens: no answer to a group, but no drop either).
    for group in [
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        solicited_node(own),
    ] {
        let before = stack.stats().dropped_in;
        assert!(stack.receive(&udp_v6(peer, group, 4000, 53, b"query")));
        assert_eq!(stack.stats().dropped_in, before);
    }
}

/// Fuzz finding (`stack` target, fuzz/README.md): a TCP segment to the subnet broadcast
/// (which a router passes on as a group packet) was answered with a reset from the
/// broadcast address, and a SYN to it with a SYN-ACK; RFC 1122 says TCP ignores broadcast
/// and multicast. Such segments are now refused and counted, for IPv4 and IPv6; the same
/// SYN to the stack's own address still gets its SYN-ACK.
#[test]
fn stack_refuses_tcp_to_broadcast_and_multicast() {
    use smoltcp::wire::{IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket};
    let now = Instant::from_millis(0);
    let stack_of = |ip: IpAddr, prefix: u8| {
        let config = StackConfig {
            addresses: vec![(ip, prefix)],
            ..StackConfig::default()
        };
        Stack::new(config, now).unwrap()
    };
    // Real SYNs from a client stack to the server's address, then readdressed.
    let syn_to = |client: IpAddr, server: IpAddr, prefix: u8| {
        let mut c = stack_of(client, prefix);
        c.tcp_connect(sa(server, 80)).unwrap();
        let out = c.poll(now, BUDGET);
        assert_eq!(out.len(), 1, "one SYN");
        out.into_iter().next().unwrap()
    };
    let readdress = |mut p: Vec<u8>, dst: IpAddr| {
        match dst {
            IpAddr::V4(d) => {
                let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
                ip.set_dst_addr(d);
                ip.fill_checksum();
                let src = IpAddress::from(ip.src_addr());
                let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
                tcp.fill_checksum(&src, &IpAddress::Ipv4(d));
            }
            IpAddr::V6(d) => {
                let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
                ip.set_dst_addr(d);
                let src = IpAddress::from(ip.src_addr());
                let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
                tcp.fill_checksum(&src, &IpAddress::Ipv6(d));
            }
        }
        p
    };
    let cases: [(IpAddr, IpAddr, u8, &[&str]); 2] = [
        (
            v4(2),
            v4(1),
            24,
            &["192.168.0.255", "255.255.255.255", "224.0.0.1"],
        ),
        (v6(2), v6(1), 64, &["ff02::1", "ff02::1:ff00:1"]),
    ];
    for (client, server, prefix, groups) in cases {
        let syn = syn_to(client, server, prefix);
        let mut stack = stack_of(server, prefix);
        stack.tcp_listen(80, 4).unwrap();
        for group in groups {
            let before = stack.stats().dropped_in;
            let p = readdress(syn.clone(), group.parse().unwrap());
            assert!(!stack.receive(&p), "a SYN to {group} taken");
            assert_eq!(stack.stats().dropped_in, before + 1);
            assert!(
                stack.poll(now, BUDGET).is_empty(),
                "a SYN to {group} answered"
            );
        }
        assert!(stack.receive(&syn));
        let out = stack.poll(now, BUDGET);
        assert_eq!(out.len(), 1, "the SYN-ACK");
        let reply = crate::wire::IpPacket::parse(&out[0]).unwrap();
        assert_eq!((reply.src(), reply.dst()), (server, client));
    }
}

/// An IPv4 TCP segment with the ACK flag, checksums filled.
fn ack_segment(
    src: (u8, u16),
    dst: (u8, u16),
    seq: u32,
    ack: u32,
    win: u16,
    data: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::{Ipv4Address, Ipv4Packet, TcpPacket};
    let mut p = vec![0u8; 40 + data.len()];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[10, 0, 0, src.0]);
    p[16..20].copy_from_slice(&[10, 0, 0, dst.0]);
    p[20..22].copy_from_slice(&src.1.to_be_bytes());
    p[22..24].copy_from_slice(&dst.1.to_be_bytes());
    p[24..28].copy_from_slice(&seq.to_be_bytes());
    p[28..32].copy_from_slice(&ack.to_be_bytes());
    p[32] = 5 << 4;
    p[33] = 0x10;
    p[34..36].copy_from_slice(&win.to_be_bytes());
    p[40..].copy_from_slice(data);
    let (s, d) = (
        Ipv4Address::new(10, 0, 0, src.0),
        Ipv4Address::new(10, 0, 0, dst.0),
    );
    TcpPacket::new_unchecked(&mut p[20..]).fill_checksum(&s.into(), &d.into());
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

fn seq_of(packet: &[u8]) -> u32 {
    u32::from_be_bytes(packet[24..28].try_into().unwrap())
}

#[test]
fn pure_acks_stay_acceptable_to_a_peer_whose_window_is_closed() {
    // The netns echo stalled for good: the requestor's zero-window probe (one byte past
    // the provider's closed window) raised SND.MAX, its ACKs were stamped with it, and
    // the provider, whose window stays closed until its own data is acknowledged, dropped
    // every one of them unread.
    let mut stack = Stack::new(
        StackConfig {
            addresses: vec![(Ipv4Addr::new(10, 0, 0, 1).into(), 24)],
            ..StackConfig::default()
        },
        Instant::ZERO,
    )
    .unwrap();
    let (us, peer) = ((1, 40000), (2, 7));
    // Data up to 5000; the peer acknowledges all of it and closes its window.
    let mut data = ack_segment(us, peer, 4000, 900, 1000, &[7; 1000]);
    fix_ack_sequence(&mut stack.snd_max, &stack.zero_window, &mut data);
    assert!(stack.receive(&ack_segment(peer, us, 900, 5000, 0, &[])));
    // The zero-window probe: one byte the peer drops.
    let mut probe = ack_segment(us, peer, 5000, 900, 1000, &[7]);
    fix_ack_sequence(&mut stack.snd_max, &stack.zero_window, &mut probe);
    assert_eq!(seq_of(&probe), 5000);
    // A pure ACK (of the peer's data) goes out at the peer's RCV.NXT, not past it.
    for seq in [5001, 4000] {
        let mut ack = ack_segment(us, peer, seq, 2000, 1000, &[]);
        fix_ack_sequence(&mut stack.snd_max, &stack.zero_window, &mut ack);
        assert_eq!(seq_of(&ack), 5000, "an ACK stamped {seq}");
        let tcp = smoltcp::wire::TcpPacket::new_checked(&ack[20..]).unwrap();
        let (s, d) = (
            smoltcp::wire::Ipv4Address::new(10, 0, 0, 1),
            smoltcp::wire::Ipv4Address::new(10, 0, 0, 2),
        );
        assert!(tcp.verify_checksum(&s.into(), &d.into()));
    }
    // The window opens: ACKs carry SND.MAX again (what the rewind fix needs).
    stack.receive(&ack_segment(peer, us, 900, 5000, 1000, &[]));
    let mut ack = ack_segment(us, peer, 4000, 2000, 1000, &[]);
    fix_ack_sequence(&mut stack.snd_max, &stack.zero_window, &mut ack);
    assert_eq!(seq_of(&ack), 5001);
}
