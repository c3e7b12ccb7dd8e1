//! Criterion benches of the Router's hot path: `inject` and `receive` of 1400-byte
//! unicast IPv4 packets (the target: >= 10 M packets/s through `inject`).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use _golem_vpn::NodeId;
use _golem_vpn::router::{Cidr, Medium, Router, RouterConfig};
use _golem_vpn::wire::build::udp_v4;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn node(n: u8) -> NodeId {
    NodeId([n; 20])
}

fn router(nodes: u8) -> Router {
    let mut r = Router::new(RouterConfig {
        network_id: "bench".into(),
        cidrs: vec!["192.168.0.0/16".parse::<Cidr>().unwrap()],
        local_node: node(1),
        local_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1))],
        medium: Medium::Ip,
        requestor: None,
    })
    .unwrap();
    for n in 2..=nodes {
        r.add_node(node(n), IpAddr::V4(Ipv4Addr::new(192, 168, 0, n)))
            .unwrap();
    }
    r
}

fn bench(c: &mut Criterion) {
    let payload = vec![0xa5u8; 1400 - 28];
    let out = udp_v4(
        Ipv4Addr::new(192, 168, 0, 1),
        Ipv4Addr::new(192, 168, 0, 2),
        4000,
        5000,
        &payload,
    );
    let inbound = udp_v4(
        Ipv4Addr::new(192, 168, 0, 2),
        Ipv4Addr::new(192, 168, 0, 1),
        5000,
        4000,
        &payload,
    );
    assert_eq!(out.len(), 1400);

    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    for nodes in [3u8, 250] {
        let mut r = router(nodes);
        g.bench_function(format!("inject_unicast_1400B_{nodes}_nodes"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                let res = r.inject(black_box(&out), |id, p| {
                    black_box((id, p));
                    n += 1;
                });
                black_box((res, n))
            })
        });
        let from = node(2);
        g.bench_function(format!("receive_unicast_1400B_{nodes}_nodes"), |b| {
            b.iter(|| black_box(r.receive(black_box(&inbound), &from).map(|f| f.len())))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
