//! `tunnel_datagram`, `tunnel_session`: the tunnel `Endpoint`'s handling of datagrams.
//!
//! `tunnel_datagram` feeds arbitrary datagrams (from a few addresses, with time passing) to
//! an endpoint that allows one peer and has also dialed it. Ops (op byte modulo 4): 0-1 a
//! datagram from address `op >> 2 & 3`; 2 time passes (`u16` ms) and timers run; 3 the
//! endpoint sends a payload to its peer (starting a handshake).
//!
//! `tunnel_session` starts from two endpoints with an established session (a real
//! handshake, then real data both ways), so mutations of real messages get past the type
//! byte and the receiver index into AEAD, replay, rekey and roaming. Every datagram the
//! two put on their link is recorded, and ops replay or alter them. Ops (modulo 8): 0
//! replay message `k`; 1 replay it with one byte changed; 2 truncated or extended; 3 a
//! raw datagram to A or B; 4 time passes, timers run, the link delivers; 5 A sends a
//! payload; 6 replay message `k` from another address; 7 B starts a rekey.
//!
//! Checks: every datagram is counted; what the endpoints emit is well-formed (type byte,
//! the handshake messages' exact sizes); a payload is delivered only from an allowed peer,
//! and only what that peer sent, never more often than it was sent (no forgery, no
//! replay), with the sender's network and kind.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use golem_vpn::NodeId;
use golem_vpn::tunnel::{
    Config, DATA_HEADER_LEN, DATA_MIN_LEN, Endpoint, Event, Payload, PayloadKind, TAG_LEN, Transmit,
};

use crate::{Input, identity, put_frame};

/// Address `n` on the underlay.
pub fn addr(n: u8, port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 18, 0, n).into(), port)
}

fn check_transmit(t: &Transmit) {
    let len = t.bytes.len();
    match t.bytes.first() {
        // Handshake messages (and cookie replies) are small and of a fixed size per type.
        Some(t @ (1 | 2 | 3 | 5)) => assert!((5..=256).contains(&len), "type {t}: {len} bytes"),
        Some(4) => assert!(len >= DATA_MIN_LEN, "data message size {len}"),
        other => panic!("the endpoint sent a datagram of type {other:?}"),
    }
}

type Key = (NodeId, PayloadKind, String, Vec<u8>);

/// What one side sent and the other received, by payload.
#[derive(Default)]
struct Ledger {
    sent: HashMap<Key, u64>,
    received: HashMap<Key, u64>,
}

impl Ledger {
    fn sent(&mut self, from: NodeId, kind: PayloadKind, network: &str, bytes: &[u8]) {
        *self
            .sent
            .entry((from, kind, network.into(), bytes.into()))
            .or_default() += 1;
    }

    fn received(&mut self, peer: NodeId, kind: PayloadKind, network: String, bytes: Vec<u8>) {
        let key = (peer, kind, network, bytes);
        let n = self.received.entry(key.clone()).or_default();
        *n += 1;
        let sent = self.sent.get(&key).copied().unwrap_or(0);
        assert!(
            *n <= sent,
            "delivered {n} times, sent {sent} times: {key:?}"
        );
    }
}

fn payload_from<'a>(input: &mut Input<'a>) -> (PayloadKind, &'a str, &'a [u8]) {
    let k = input.byte().unwrap_or(0);
    let kind = if k & 1 == 0 {
        PayloadKind::Ip
    } else {
        PayloadKind::Control
    };
    let network = ["", "net", "0123456789abcdef0123456789abcdef"][usize::from(k >> 1) % 3];
    (kind, network, input.frame())
}

/// The `tunnel_datagram` target's body.
pub fn run_datagram(data: &[u8]) {
    let start = Instant::now();
    let mut now = start;
    let peer = identity(1).node_id();
    let mut ep = Endpoint::new(&identity(2), Config::default(), 2).expect("an endpoint");
    ep.allow(peer);
    ep.set_peer_address(peer, addr(1, 4000));
    let mut input = Input::new(data);
    let mut count = 0u64;
    let mut ledger = Ledger::default();
    while let Some(op) = input.byte() {
        match op % 4 {
            0 | 1 => {
                let from = addr(1 + ((op >> 2) & 3), 4000);
                let d = input.frame();
                ep.handle_datagram(from, d, now);
                count += 1;
            }
            2 => {
                now += Duration::from_millis(u64::from(input.u16().unwrap_or(0)) * 8);
                ep.handle_timeout(now);
            }
            _ => {
                let (kind, network, bytes) = payload_from(&mut input);
                let _ = ep.send(
                    &peer,
                    Payload {
                        kind,
                        network,
                        bytes,
                    },
                    now,
                );
            }
        }
        assert_eq!(ep.stats().datagrams_in, count, "every datagram is counted");
        while let Some(t) = ep.poll_transmit() {
            check_transmit(&t);
        }
        while let Some(ev) = ep.poll_event() {
            match ev {
                // Nothing can authenticate as the peer here: no payload can arrive.
                Event::Received {
                    peer,
                    kind,
                    network,
                    bytes,
                } => ledger.received(peer, kind, network, bytes),
                Event::PeerUp { peer: p, .. } => panic!("peer {p} up without its key"),
                Event::PeerDown { peer: p, .. } => assert_eq!(p, peer),
            }
        }
    }
}

/// Two endpoints and the link between them, with every datagram recorded.
pub struct Session {
    /// Endpoint of node 1 (the initiator), at [`addr`]`(1, 4000)`.
    pub a: Endpoint,
    /// Endpoint of node 2, at [`addr`]`(2, 5000)`.
    pub b: Endpoint,
    /// The current time.
    pub now: Instant,
    /// Every datagram put on the link: (sent by A, bytes).
    pub log: Vec<(bool, Vec<u8>)>,
    ledger: Ledger,
}

impl Session {
    /// A handshake and data both ways: the log holds init, response, final and data.
    pub fn established() -> Self {
        let (ia, ib) = (identity(1), identity(2));
        let mut a = Endpoint::new(&ia, Config::default(), 1).expect("an endpoint");
        let mut b = Endpoint::new(&ib, Config::default(), 2).expect("an endpoint");
        a.allow(ib.node_id());
        a.set_peer_address(ib.node_id(), addr(2, 5000));
        b.allow(ia.node_id());
        b.set_peer_address(ia.node_id(), addr(1, 4000));
        let mut s = Session {
            a,
            b,
            now: Instant::now(),
            log: Vec::new(),
            ledger: Ledger::default(),
        };
        s.send_a(
            PayloadKind::Ip,
            "net",
            b"first packet, queued behind the handshake",
        );
        s.pump();
        s.send_a(PayloadKind::Control, "net", b"{\"hello\":1}");
        s.send_b(PayloadKind::Ip, "net", b"answer");
        s.pump();
        assert!(
            s.a.is_up(&ib.node_id()) && s.b.is_up(&ia.node_id()),
            "the session is up"
        );
        s
    }

    fn send_a(&mut self, kind: PayloadKind, network: &str, bytes: &[u8]) {
        let (a, b) = (self.a.node_id(), self.b.node_id());
        if self
            .a
            .send(
                &b,
                Payload {
                    kind,
                    network,
                    bytes,
                },
                self.now,
            )
            .is_ok()
        {
            self.ledger.sent(a, kind, network, bytes);
        }
    }

    fn send_b(&mut self, kind: PayloadKind, network: &str, bytes: &[u8]) {
        let (a, b) = (self.a.node_id(), self.b.node_id());
        if self
            .b
            .send(
                &a,
                Payload {
                    kind,
                    network,
                    bytes,
                },
                self.now,
            )
            .is_ok()
        {
            self.ledger.sent(b, kind, network, bytes);
        }
    }

    /// Reserves counters twice on A's session to B and seals `count` IP payloads from
    /// `input` with them, alternating batches and sealing the later one's first; each
    /// sealed datagram is in the ledger. A batch that cannot be had (no session) seals none.
    /// The input picks for each payload whether it is sealed into a buffer of its own or
    /// in place with the room around it the input also picks (too little: refused, then
    /// sealed the other way).
    fn seal_batches_a(&mut self, input: &mut Input<'_>, count: usize) -> Vec<Vec<u8>> {
        let (a, b) = (self.a.node_id(), self.b.node_id());
        let half = (count / 2) as u64;
        let reserved = [
            self.a.reserve(&b, half.max(1), self.now),
            self.a.reserve(&b, half.max(1), self.now),
        ];
        let mut batches: Vec<_> = reserved
            .into_iter()
            .filter_map(|r| r.ok().flatten().map(|(batch, _)| batch))
            .collect();
        let mut out = Vec::new();
        for i in 0..count {
            let (_, network, bytes) = payload_from(input);
            let Some(batch) = batches.get_mut((count - 1 - i) % 2) else {
                break;
            };
            let mut sealed = Vec::new();
            if let Some(room) = input.byte().filter(|r| r & 1 == 1) {
                // Room in front: short by up to 3 bytes, exact, or a little more.
                let need = DATA_HEADER_LEN + 2 + network.len();
                let front = (need + usize::from(room >> 3 & 7)).saturating_sub(3);
                let back = TAG_LEN + usize::from(room >> 6 & 1);
                let mut buf = vec![0u8; front + bytes.len() + back];
                buf[front..front + bytes.len()].copy_from_slice(bytes);
                let at = front..front + bytes.len();
                match batch.seal_ip_in_place(network, &mut buf, at) {
                    Some(datagram) => {
                        assert!(front >= need, "sealed with too little room");
                        self.ledger.sent(a, PayloadKind::Ip, network, bytes);
                        out.push(buf[datagram].to_vec());
                        continue;
                    }
                    None => assert!(
                        front < need || batch.remaining() == 0 || bytes.len() + need > 65_000,
                        "refused with room and counters left"
                    ),
                }
            }
            if batch.seal_ip(network, bytes, &mut sealed) {
                self.ledger.sent(a, PayloadKind::Ip, network, bytes);
                out.push(sealed);
            }
        }
        out
    }

    /// Delivers datagram `bytes` to B (`to_b`) or A, from `from`.
    fn deliver(&mut self, to_b: bool, from: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        let (ep, sender) = if to_b {
            (&mut self.b, self.a.node_id())
        } else {
            (&mut self.a, self.b.node_id())
        };
        let before = ep.stats().datagrams_in;
        // Data messages with an odd counter are opened as a receiving lane's thread opens
        // them: a ticket, decryption off the endpoint, acceptance; with counter & 3 == 3 by
        // two threads at once (both read it), of which only one may deliver.
        let lane = bytes.get(5).is_some_and(|c| c & 1 == 1);
        match ep.ticket(bytes, now).filter(|_| lane) {
            Some(first) => {
                let second = if bytes[5] & 3 == 3 {
                    ep.ticket(bytes, now)
                } else {
                    None
                };
                let mut read = 0;
                for t in std::iter::once(first).chain(second) {
                    read += 1;
                    let mut copy = bytes.to_vec();
                    let plain = t.open(&mut copy);
                    if let Some(d) = ep.accept_opened(from, &t, &copy, plain, now) {
                        assert_eq!(d.peer, sender, "only the allowed peer is heard");
                        let (network, payload) = (d.network.to_owned(), d.bytes.to_vec());
                        self.ledger.received(d.peer, d.kind, network, payload);
                    }
                }
                assert_eq!(ep.stats().datagrams_in, before + read);
            }
            None => {
                ep.handle_datagram(from, bytes, now);
                assert_eq!(ep.stats().datagrams_in, before + 1);
            }
        }
    }

    /// Runs the link until both sides are quiet (bounded), checking what comes out.
    fn pump(&mut self) {
        for _ in 0..16 {
            let mut moved = false;
            for a_side in [true, false] {
                loop {
                    let ep = if a_side { &mut self.a } else { &mut self.b };
                    let Some(t) = ep.poll_transmit() else { break };
                    check_transmit(&t);
                    moved = true;
                    self.log.push((a_side, t.bytes.clone()));
                    let from = if a_side { addr(1, 4000) } else { addr(2, 5000) };
                    self.deliver(a_side, from, &t.bytes);
                }
            }
            self.drain_events();
            if !moved {
                break;
            }
        }
    }

    fn drain_events(&mut self) {
        let ids = [self.a.node_id(), self.b.node_id()];
        for (i, ep) in [&mut self.a, &mut self.b].into_iter().enumerate() {
            while let Some(ev) = ep.poll_event() {
                match ev {
                    Event::Received {
                        peer,
                        kind,
                        network,
                        bytes,
                    } => {
                        assert_eq!(peer, ids[1 - i], "only the allowed peer is heard");
                        self.ledger.received(peer, kind, network, bytes);
                    }
                    Event::PeerUp { peer, .. } | Event::PeerDown { peer, .. } => {
                        assert_eq!(peer, ids[1 - i])
                    }
                }
            }
        }
    }

    /// Drains the transmit queues without delivering (what an op replays comes from the log).
    fn drop_transmits(&mut self) {
        for a_side in [true, false] {
            let ep = if a_side { &mut self.a } else { &mut self.b };
            while let Some(t) = ep.poll_transmit() {
                check_transmit(&t);
                self.log.push((a_side, t.bytes));
            }
        }
    }
}

/// The `tunnel_session` target's body.
pub fn run_session(data: &[u8]) {
    let mut s = Session::established();
    let mut input = Input::new(data);
    while let Some(op) = input.byte() {
        let pick = |input: &mut Input<'_>, s: &Session| {
            let k = usize::from(input.byte().unwrap_or(0)) % s.log.len();
            s.log[k].clone()
        };
        match op % 8 {
            0 => {
                let (from_a, bytes) = pick(&mut input, &s);
                let from = if from_a { addr(1, 4000) } else { addr(2, 5000) };
                s.deliver(from_a, from, &bytes);
            }
            1 => {
                let (from_a, mut bytes) = pick(&mut input, &s);
                let at = usize::from(input.u16().unwrap_or(0)) % bytes.len();
                bytes[at] ^= input.byte().unwrap_or(1).max(1);
                let from = if from_a { addr(1, 4000) } else { addr(2, 5000) };
                s.deliver(from_a, from, &bytes);
            }
            2 => {
                let (from_a, mut bytes) = pick(&mut input, &s);
                let len = usize::from(input.u16().unwrap_or(0));
                if len < bytes.len() {
                    bytes.truncate(len);
                } else {
                    bytes.extend_from_slice(input.frame());
                }
                let from = if from_a { addr(1, 4000) } else { addr(2, 5000) };
                s.deliver(from_a, from, &bytes);
            }
            3 => {
                let d = input.frame().to_vec();
                s.deliver(op & 8 == 0, addr(7, 7000), &d);
            }
            4 => {
                s.now += Duration::from_millis(u64::from(input.u16().unwrap_or(0)) * 16);
                let now = s.now;
                s.a.handle_timeout(now);
                s.b.handle_timeout(now);
                s.pump();
            }
            5 if op & 16 != 0 => {
                // Counters reserved twice, the batches sealed as two datapath threads
                // would, delivered in an order the input picks.
                let count = usize::from(input.byte().unwrap_or(0) % 8);
                let sealed = s.seal_batches_a(&mut input, count);
                for bytes in sealed {
                    let k = usize::from(input.byte().unwrap_or(0)) % s.log.len();
                    s.log.insert(k, (true, bytes.clone()));
                    s.deliver(true, addr(1, 4000), &bytes);
                }
            }
            5 => {
                let (kind, network, bytes) = payload_from(&mut input);
                s.send_a(kind, network, bytes);
                if op & 8 == 0 {
                    s.pump();
                } else {
                    s.drop_transmits();
                }
            }
            6 => {
                let (from_a, bytes) = pick(&mut input, &s);
                let from = addr(9, input.u16().unwrap_or(9000));
                s.deliver(from_a, from, &bytes);
            }
            _ => {
                let a = s.a.node_id();
                let now = s.now;
                s.b.reconnect(a, now);
                if op & 8 == 0 {
                    s.pump();
                } else {
                    s.drop_transmits();
                }
            }
        }
        s.drain_events();
        s.drop_transmits();
    }
}

/// Seeds for both targets.
pub fn seeds() -> (crate::Seeds, crate::Seeds) {
    let s = Session::established();
    let mut datagram = Vec::new();
    for (i, (from_a, bytes)) in s.log.iter().enumerate() {
        let kind = match bytes[0] {
            1 => "init",
            2 => "response",
            3 => "final",
            _ => "data",
        };
        if !from_a && bytes[0] != 2 && bytes[0] != 4 {
            continue;
        }
        let mut v = vec![0u8];
        put_frame(&mut v, bytes);
        datagram.push((format!("{kind}_{i}"), v));
    }
    let mut session = vec![(
        "replay_all".to_string(),
        (0..s.log.len() as u8).flat_map(|k| [0, k]).collect(),
    )];
    for k in 0..s.log.len() as u8 {
        session.push((format!("flip_{k}"), vec![1, k, 0, 20, 0x80]));
    }
    let mut send = vec![5u8, 0];
    put_frame(&mut send, b"\x45\x00\x00\x14payload");
    send.extend_from_slice(&[4, 0x10, 0, 7, 5]);
    session.push(("send_rekey_time".into(), send));
    session.push(("roam".into(), vec![6, 3, 0x23, 0x28, 0]));
    (datagram, session)
}
