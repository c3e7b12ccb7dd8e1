//! Criterion bench of the userspace stack's TCP on a lossless in-memory path: two
//! [`Stack`]s joined by hand (each poll's packets handed straight to the other), one
//! connection, 16 MiB per iteration one way, buffers of 4 MiB. No Python, no router, no
//! I/O: the cost measured is smoltcp's TCP and the stack around it, per byte moved.

use std::hint::black_box;
use std::time::Instant as WallClock;

use _golem_vpn::stack::{Stack, StackConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use smoltcp::time::{Duration, Instant};

const SIZE: usize = 16 << 20;
const BUDGET: usize = 4096;

fn stack(ip: &str, seed: u64, mtu: usize) -> Stack {
    Stack::new(
        StackConfig {
            addresses: vec![(ip.parse().unwrap(), 24)],
            mtu,
            tcp_rx_buffer: 4 << 20,
            tcp_tx_buffer: 4 << 20,
            random_seed: seed,
            ..StackConfig::default()
        },
        Instant::from_millis(0),
    )
    .unwrap()
}

/// Moves `SIZE` bytes from a fresh client to a fresh server; returns the wall time taken.
fn transfer(mtu: usize, data: &[u8], buf: &mut [u8]) -> std::time::Duration {
    let (mut a, mut b) = (stack("10.0.0.1", 1, mtu), stack("10.0.0.2", 2, mtu));
    let (listener, port) = b.tcp_listen(80, 1).unwrap();
    let conn = a
        .tcp_connect(std::net::SocketAddr::new("10.0.0.2".parse().unwrap(), port))
        .unwrap();
    // Virtual time moves a microsecond per round: a path of ~0 RTT.
    let mut now = Instant::from_millis(0);
    let step = |a: &mut Stack, b: &mut Stack, now: &mut Instant| {
        for packet in a.poll(*now, BUDGET) {
            b.receive(&packet);
        }
        for packet in b.poll(*now, BUDGET) {
            a.receive(&packet);
        }
        *now += Duration::from_micros(1);
    };
    let accepted = loop {
        step(&mut a, &mut b, &mut now);
        if let Some(s) = b.tcp_accept(listener).unwrap() {
            break s;
        }
    };
    let start = WallClock::now();
    let (mut sent, mut received) = (0, 0);
    while received < data.len() {
        if sent < data.len() {
            sent += a.tcp_send(conn, &data[sent..]).unwrap();
        }
        step(&mut a, &mut b, &mut now);
        loop {
            let n = b.tcp_recv(accepted, buf).unwrap();
            if n == 0 {
                break;
            }
            received += n;
        }
    }
    black_box(received);
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mut buf = vec![0u8; 256 * 1024];
    let mut group = c.benchmark_group("stack_tcp");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);
    for mtu in [1400, 9000] {
        group.bench_function(format!("bulk_16MiB_mtu{mtu}"), |bencher| {
            bencher.iter_custom(|iters| (0..iters).map(|_| transfer(mtu, &data, &mut buf)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
