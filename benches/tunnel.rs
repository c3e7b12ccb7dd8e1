//! Criterion benches of the tunnel's data path: 1400-byte IP packets through one
//! established session (the target: >= 1.5 M packets/s per core through
//! encrypt + decrypt). Handshakes are done before measuring; only `send_into` and
//! `receive_into` (the allocation-free calls the datapath uses) are timed.
//!
//! `initiation_*`: what a handshake initiation costs a responder, answered (a Noise
//! message 2: ephemeral key, two X25519) next to refused (`bad_mac1`: one HMAC) and, under
//! load, answered with a cookie reply instead (see "Under load" in the tunnel's docs).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use _golem_vpn::NodeId;
use _golem_vpn::identity::Identity;
use _golem_vpn::tunnel::{
    Config, DropReason, Endpoint, INITIATIONS_PER_SECOND, Payload, PayloadKind,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const NETWORK: &str = "0123456789abcdef0123456789abcdef";

/// Two endpoints with a confirmed session, joined by hand.
fn pair(now: Instant) -> (Endpoint, SocketAddr, Endpoint, SocketAddr) {
    let (ida, idb) = (
        Identity::from_secret_bytes(&[1; 32]).unwrap(),
        Identity::from_secret_bytes(&[2; 32]).unwrap(),
    );
    let (addr_a, addr_b): (SocketAddr, SocketAddr) = (
        "192.0.2.1:4000".parse().unwrap(),
        "192.0.2.2:5000".parse().unwrap(),
    );
    let mut a = Endpoint::new(&ida, Config::default(), 1).unwrap();
    let mut b = Endpoint::new(&idb, Config::default(), 2).unwrap();
    a.allow(idb.node_id());
    a.set_peer_address(idb.node_id(), addr_b);
    b.allow(ida.node_id());
    a.send(&idb.node_id(), payload(b"hello"), now).unwrap();
    for _ in 0..8 {
        while let Some(t) = a.poll_transmit() {
            b.handle_datagram(addr_a, &t.bytes, now);
        }
        while let Some(t) = b.poll_transmit() {
            a.handle_datagram(addr_b, &t.bytes, now);
        }
    }
    assert!(a.is_up(&idb.node_id()) && b.is_up(&ida.node_id()));
    (a, addr_a, b, addr_b)
}

fn payload(bytes: &[u8]) -> Payload<'_> {
    Payload {
        kind: PayloadKind::Ip,
        network: NETWORK,
        bytes,
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let (mut a, addr_a, mut b, _) = pair(now);
    let to_b: NodeId = b.node_id();
    let packet = vec![0xa5u8; 1400];
    let mut wire = Vec::with_capacity(2048);
    let mut plain = Vec::with_capacity(2048);

    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encrypt_1400B", |bench| {
        bench.iter(|| {
            let dst = a.send_into(&to_b, payload(black_box(&packet)), now, &mut wire);
            black_box((dst, wire.len()))
        })
    });
    g.bench_function("decrypt_1400B", |bench| {
        // Each message needs a fresh counter (the replay window), so encrypting it is
        // the untimed setup.
        bench.iter_batched_ref(
            || {
                let mut w = Vec::with_capacity(2048);
                a.send_into(&to_b, payload(&packet), now, &mut w).unwrap();
                w
            },
            |w| {
                let got = b.receive_into(addr_a, black_box(w), now, &mut plain);
                black_box(got.map(|d| d.bytes.len()))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("encrypt_decrypt_1400B", |bench| {
        bench.iter(|| {
            a.send_into(&to_b, payload(black_box(&packet)), now, &mut wire)
                .unwrap();
            let got = b.receive_into(addr_a, &wire, now, &mut plain);
            black_box(got.map(|d| d.bytes.len()))
        })
    });
    g.finish();
    let s = b.stats();
    assert_eq!(s.drops.total(), 0, "{:?}", s.drops);
}

/// A genuine handshake initiation to `responder` (from a throwaway endpoint).
fn initiation(responder: &Identity, at: SocketAddr, now: Instant) -> Vec<u8> {
    let id = Identity::from_secret_bytes(&[9; 32]).unwrap();
    let mut i = Endpoint::new(&id, Config::default(), 9).unwrap();
    i.allow(responder.node_id());
    i.set_peer_address(responder.node_id(), at);
    i.send(&responder.node_id(), payload(b"x"), now).unwrap();
    i.poll_transmit().unwrap().bytes
}

fn bench_initiations(c: &mut Criterion) {
    let start = Instant::now();
    let id = Identity::from_secret_bytes(&[2; 32]).unwrap();
    let (from, at): (SocketAddr, SocketAddr) = (
        "192.0.2.9:9000".parse().unwrap(),
        "192.0.2.2:5000".parse().unwrap(),
    );
    let init = initiation(&id, at, start);
    let mut bad = init.clone();
    bad[40] ^= 1; // in mac1
    // One initiation per token-bucket period from the one source, so none is rate-limited;
    // only `receive_into` is timed, the clean-up of old handshakes is not.
    let period = Duration::from_secs(1) / INITIATIONS_PER_SECOND;
    let run = |config: Config, datagram: &[u8], iters: u64| {
        let mut b = Endpoint::new(&id, config, 2).unwrap();
        let mut plain = Vec::with_capacity(2048);
        let mut now = start;
        let mut timed = Duration::ZERO;
        for i in 0..iters {
            now += period;
            let t = Instant::now();
            black_box(b.receive_into(from, black_box(datagram), now, &mut plain));
            timed += t.elapsed();
            while b.poll_transmit().is_some() {}
            if i % 64 == 63 {
                b.handle_timeout(now);
            }
        }
        (timed, b.stats())
    };
    let mut g = c.benchmark_group("tunnel");
    g.throughput(Throughput::Elements(1));
    g.bench_function("initiation_answered", |bench| {
        bench.iter_custom(|iters| {
            let (timed, s) = run(Config::default(), &init, iters);
            assert_eq!(s.drops.total(), 0, "{:?}", s.drops);
            timed
        })
    });
    g.bench_function("initiation_refused_bad_mac1", |bench| {
        bench.iter_custom(|iters| {
            let (timed, s) = run(Config::default(), &bad, iters);
            assert_eq!(s.drops.get(DropReason::BadMac1), iters);
            timed
        })
    });
    g.bench_function("initiation_under_load_cookie_reply", |bench| {
        let loaded = Config {
            under_load_pending: 0,
            ..Config::default()
        };
        bench.iter_custom(|iters| {
            let (timed, s) = run(loaded.clone(), &init, iters);
            assert_eq!(s.drops.get(DropReason::CookieSent), iters);
            timed
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_initiations);
criterion_main!(benches);
