//! Criterion benches of the TUN offloads' per-byte work, the datapath's own share of a
//! TCP stream (besides AEAD and the kernel's copies): segmenting one 64 KB TSO read into
//! tunnel-MTU segments with complete checksums (the sending side), and coalescing those
//! segments back into one GRO write (the receiving side).

use std::hint::black_box;

use _golem_vpn::datapath::Frames;
use _golem_vpn::datapath::offload::{Coalescer, VnetHdr, segment};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The tunnel MTU (`golem-vpn attach`'s default) less IPv4 and TCP-with-timestamps headers.
const MSS: usize = 1368 - 20 - 32;
/// What Linux hands a TUN device with TSO: one packet of up to 64 KB.
const TSO_PAYLOAD: usize = 65535 - 20 - 32;

/// An IPv4 TCP packet with `payload` bytes, its checksum field holding the pseudo-header
/// sum only (CHECKSUM_PARTIAL, as the kernel writes it) — good enough to segment.
fn tso_packet(payload: usize) -> Vec<u8> {
    let total = 20 + 32 + payload;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[192, 168, 5, 2]);
    p[16..20].copy_from_slice(&[192, 168, 5, 3]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5201u16.to_be_bytes());
    p[24..28].copy_from_slice(&1u32.to_be_bytes());
    p[28..32].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 8 << 4;
    p[33] = 0x10; // ACK
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
    for (i, b) in p[52..].iter_mut().enumerate() {
        *b = (i * 7 + i / 251) as u8;
    }
    p
}

fn tso_hdr() -> VnetHdr {
    VnetHdr {
        flags: 1,    // VIRTIO_NET_HDR_F_NEEDS_CSUM
        gso_type: 1, // VIRTIO_NET_HDR_GSO_TCPV4
        hdr_len: 52,
        gso_size: MSS as u16,
        csum_start: 20,
        csum_offset: 16,
    }
}

fn bench(c: &mut Criterion) {
    let packet = tso_packet(TSO_PAYLOAD);
    let hdr = tso_hdr();
    let mut group = c.benchmark_group("offload");
    group.throughput(Throughput::Bytes(TSO_PAYLOAD as u64));

    let mut frames = Frames::default();
    // Segmenting a TSO packet reads it only: one copy serves every iteration.
    let mut read = packet.clone();
    group.bench_function("segment_64k_tso", |b| {
        b.iter(|| {
            frames.clear();
            assert!(segment(&hdr, &mut read, &mut frames));
            black_box(frames.len())
        })
    });

    frames.clear();
    assert!(segment(&hdr, &mut read, &mut frames));
    let segments: Vec<Vec<u8>> = (0..frames.len())
        .map(|k| frames.frame(k).to_vec())
        .collect();
    let mut coalescer = Coalescer::new(false);
    group.bench_function("coalesce_64k_gro", |b| {
        b.iter(|| {
            let mut written = 0usize;
            coalescer.write_all(segments.iter().map(Vec::as_slice), |h, p| {
                written += h.len() + p.len();
            });
            black_box(written)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
