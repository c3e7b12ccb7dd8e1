//! Segmentation and coalescing against hand-built packets: every output checked for
//! lengths, sequence numbers, flags and checksums, and GRO ∘ TSO giving back the input.

use super::*;
use crate::datapath::frames::Frames;

const SRC4: [u8; 4] = [192, 168, 5, 2];
const DST4: [u8; 4] = [192, 168, 5, 3];

fn tcp_v4(seq: u32, flags: u8, id: u16, payload: &[u8], sport: u16) -> Vec<u8> {
    let total = 20 + 32 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&777u32.to_be_bytes());
    t[12] = 8 << 4; // 32-byte header: timestamps
    t[13] = flags;
    t[14..16].copy_from_slice(&512u16.to_be_bytes());
    t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
    t[32..].copy_from_slice(payload);
    let tcp = Tcp::parse(&p).unwrap();
    tcp.set_ip_len(&mut p, total);
    tcp.set_tcp_checksum(&mut p);
    p
}

fn tcp_v6(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40 + 20 + payload.len()];
    p[0] = 0x60;
    p[6] = 6;
    p[7] = 64;
    p[8..24].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p[24..40].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    let t = &mut p[40..];
    t[0..2].copy_from_slice(&4000u16.to_be_bytes());
    t[2..4].copy_from_slice(&22u16.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[20..].copy_from_slice(payload);
    let tcp = Tcp::parse(&p).unwrap();
    let n = p.len();
    tcp.set_ip_len(&mut p, n);
    tcp.set_tcp_checksum(&mut p);
    p
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// True if the packet's IPv4 header (if any) and TCP checksums verify.
fn checksums_ok(p: &[u8]) -> bool {
    let t = Tcp::parse(p).unwrap();
    let ip_ok = !t.v4 || fold(sum(0, &p[..t.ip_len])) == 0xffff;
    let (src, dst) = t.addrs(p);
    let acc = pseudo_sum(src, dst, 6, p.len() - t.ip_len);
    ip_ok && fold(sum(acc, &p[t.ip_len..])) == 0xffff
}

fn run_segment(hdr: VnetHdr, mut packet: Vec<u8>) -> Vec<Vec<u8>> {
    let mut frames = Frames::default();
    assert!(segment(&hdr, &mut packet, &mut frames));
    (0..frames.len())
        .map(|k| frames.frame(k).to_vec())
        .collect()
}

fn tso(v4: bool, mss: u16, header_len: usize) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len: header_len as u16,
        gso_size: mss,
        csum_start: if v4 { 20 } else { 40 },
        csum_offset: 16,
    }
}

#[test]
fn a_tso_packet_becomes_mss_sized_segments_with_valid_checksums() {
    let data = payload(10_000);
    let big = tcp_v4(1000, TCP_ACK | TCP_PSH | TCP_FIN, 50, &data, 40000);
    let segs = run_segment(tso(true, 1348, 52), big);
    assert_eq!(segs.len(), 10_000usize.div_ceil(1348));
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(checksums_ok(s), "segment {i}");
        let t = Tcp::parse(s).unwrap();
        assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
        assert_eq!(
            u16::from_be_bytes([s[4], s[5]]),
            50 + i as u16,
            "IP ids count up"
        );
        let seq = u32::from_be_bytes(s[24..28].try_into().unwrap());
        assert_eq!(seq, 1000 + (i * 1348) as u32);
        let last = i == segs.len() - 1;
        assert_eq!(
            s[33] & (TCP_PSH | TCP_FIN) != 0,
            last,
            "PSH/FIN only on the last"
        );
        assert!(s.len() - t.hdr() <= 1348);
        joined.extend_from_slice(&s[t.hdr()..]);
    }
    assert_eq!(joined, data);
}

#[test]
fn coalescing_then_segmenting_gives_back_the_segments() {
    let data = payload(20_000);
    let big = tcp_v4(5, TCP_ACK | TCP_PSH, 9, &data, 40000);
    let segs = run_segment(tso(true, 1400, 52), big);
    let mut writes = Vec::new();
    Coalescer::default().write_all(segs.iter().map(Vec::as_slice), |h, p| {
        writes.push((VnetHdr::parse(h).unwrap(), p.to_vec()));
    });
    assert_eq!(writes.len(), 1, "one flow, contiguous: one write");
    let (hdr, merged) = writes.pop().unwrap();
    assert_eq!(hdr.gso_type, GSO_TCPV4);
    assert_eq!(hdr.gso_size, 1400);
    assert_eq!(hdr.hdr_len, 52);
    assert_eq!(merged.len(), 52 + data.len());
    assert_eq!(&merged[52..], &data[..]);
    assert_eq!(
        merged[33] & TCP_PSH,
        TCP_PSH,
        "PSH of the last segment kept"
    );
    // The kernel segments it again exactly as the sender's kernel had.
    assert_eq!(run_segment(hdr, merged), segs);
}

#[test]
fn ipv6_segments_and_coalesces_too() {
    let data = payload(5000);
    let segs = run_segment(tso(false, 1200, 60), tcp_v6(77, TCP_ACK, &data));
    assert_eq!(segs.len(), 5);
    assert!(segs.iter().all(|s| checksums_ok(s)));
    let mut writes = Vec::new();
    Coalescer::default().write_all(segs.iter().map(Vec::as_slice), |h, p| {
        writes.push((VnetHdr::parse(h).unwrap(), p.to_vec()));
    });
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].0.gso_type, GSO_TCPV6);
    assert_eq!(run_segment(writes[0].0, writes[0].1.clone()), segs);
}

#[test]
fn gaps_other_flows_and_control_segments_are_not_merged_across() {
    let a1 = tcp_v4(0, TCP_ACK, 1, &payload(1000), 1);
    let b1 = tcp_v4(0, TCP_ACK, 1, &payload(1000), 2);
    let a2 = tcp_v4(1000, TCP_ACK, 2, &payload(1000), 1);
    let gap = tcp_v4(3000, TCP_ACK, 3, &payload(1000), 1); // 2000..3000 missing
    let b_fin = tcp_v4(1000, TCP_ACK | TCP_FIN, 2, &[], 2);
    let udp = {
        let mut u = a1.clone();
        u[9] = 17;
        u
    };
    let input = [&a1, &b1, &a2, &gap, &b_fin, &udp];
    let mut writes: Vec<(VnetHdr, Vec<u8>)> = Vec::new();
    Coalescer::default().write_all(input.iter().map(|p| p.as_slice()), |h, p| {
        writes.push((VnetHdr::parse(h).unwrap(), p.to_vec()));
    });
    // b1 is flushed before b's FIN, which follows it; a1+a2 merge; the gap starts anew.
    let kinds: Vec<(u8, usize)> = writes.iter().map(|(h, p)| (h.gso_type, p.len())).collect();
    let b_fin_at = writes.iter().position(|(_, p)| p == &b_fin).unwrap();
    let b1_at = writes.iter().position(|(_, p)| p == &b1).unwrap();
    assert!(b1_at < b_fin_at, "order within a flow: {kinds:?}");
    assert!(
        writes
            .iter()
            .any(|(h, p)| h.gso_type == GSO_TCPV4 && p.len() == 52 + 2000)
    );
    assert!(
        writes
            .iter()
            .any(|(h, p)| h.gso_type == GSO_NONE && p == &gap)
    );
    assert!(
        writes
            .iter()
            .any(|(h, p)| h.gso_type == GSO_NONE && p == &udp)
    );
    let bytes: usize = writes.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(
        bytes,
        input.iter().map(|p| p.len()).sum::<usize>() - 52,
        "one header saved"
    );
}

#[test]
fn a_partial_checksum_is_completed() {
    // A UDP packet as the kernel hands it with CHECKSUM_PARTIAL: the field holds the
    // pseudo-header sum.
    let body = b"partial checksum";
    let mut p = vec![0u8; 28 + body.len()];
    let total = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&SRC4);
    p[16..20].copy_from_slice(&DST4);
    p[20..22].copy_from_slice(&1234u16.to_be_bytes());
    p[22..24].copy_from_slice(&5678u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(body);
    let partial = fold(pseudo_sum(&SRC4, &DST4, 17, 8 + body.len()));
    p[26..28].copy_from_slice(&partial.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 6,
        ..VnetHdr::default()
    };
    let out = run_segment(hdr, p);
    let acc = pseudo_sum(&SRC4, &DST4, 17, 8 + body.len());
    assert_eq!(fold(sum(acc, &out[0][20..])), 0xffff);
}

#[test]
fn unsafe_packets_are_refused_not_guessed() {
    let mut frames = Frames::default();
    let mut short = vec![0x45u8; 10];
    assert!(!segment(&tso(true, 1400, 52), &mut short, &mut frames));
    let mut v6_as_v4 = tcp_v6(1, TCP_ACK, &payload(3000));
    assert!(!segment(&tso(true, 1400, 60), &mut v6_as_v4, &mut frames));
    let mut zero_mss = tcp_v4(1, TCP_ACK, 1, &payload(3000), 1);
    assert!(!segment(&tso(true, 0, 52), &mut zero_mss, &mut frames));
    let mut udp_gso = tcp_v4(1, TCP_ACK, 1, &payload(3000), 1);
    let hdr = VnetHdr {
        gso_type: 5,
        gso_size: 1000,
        ..VnetHdr::default()
    };
    assert!(!segment(&hdr, &mut udp_gso, &mut frames));
    let mut bad_csum = tcp_v4(1, TCP_ACK, 1, &payload(100), 1);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 150,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert!(!segment(&hdr, &mut bad_csum, &mut frames));
    assert!(frames.is_empty());
}

/// A UDP packet of `payload` (IPv4 or IPv6), as a payload hands it to a TUN device with
/// USO: one datagram of up to 64 KiB, checksum left to the device.
fn udp(v4: bool, payload: &[u8]) -> Vec<u8> {
    let ip_len = if v4 { 20 } else { 40 };
    let total = ip_len + 8 + payload.len();
    let mut p = vec![0u8; total];
    if v4 {
        p[0] = 0x45;
        p[4..6].copy_from_slice(&9000u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&SRC4);
        p[16..20].copy_from_slice(&DST4);
    } else {
        p[0] = 0x60;
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    }
    set_ip_len(v4, ip_len, &mut p, total);
    p[ip_len..ip_len + 2].copy_from_slice(&4433u16.to_be_bytes());
    p[ip_len + 2..ip_len + 4].copy_from_slice(&443u16.to_be_bytes());
    p[ip_len + 8..].copy_from_slice(payload);
    p
}

fn uso(v4: bool, size: u16) -> VnetHdr {
    let ip_len = if v4 { 20 } else { 40 };
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_UDP_L4,
        hdr_len: ip_len + 8,
        gso_size: size,
        csum_start: ip_len,
        csum_offset: 6,
    }
}

#[test]
fn a_uso_packet_becomes_datagrams_with_their_own_lengths_and_checksums() {
    for v4 in [true, false] {
        let ip_len = if v4 { 20 } else { 40 };
        let data = payload(3 * 1200 + 345);
        let out = run_segment(uso(v4, 1200), udp(v4, &data));
        assert_eq!(
            out.iter().map(|d| d.len() - ip_len - 8).collect::<Vec<_>>(),
            [1200, 1200, 1200, 345]
        );
        let mut joined = Vec::new();
        for (i, d) in out.iter().enumerate() {
            let udp_len = usize::from(u16::from_be_bytes([d[ip_len + 4], d[ip_len + 5]]));
            assert_eq!(udp_len, d.len() - ip_len);
            let (src, dst) = if v4 {
                assert_eq!(usize::from(u16::from_be_bytes([d[2], d[3]])), d.len());
                assert_eq!(fold(sum(0, &d[..20])), 0xffff, "IPv4 header checksum");
                assert_eq!(u16::from_be_bytes([d[4], d[5]]), 9000 + i as u16);
                (&d[12..16], &d[16..20])
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([d[4], d[5]])), d.len() - 40);
                (&d[8..24], &d[24..40])
            };
            let acc = pseudo_sum(src, dst, 17, udp_len);
            assert_eq!(fold(sum(acc, &d[ip_len..])), 0xffff, "UDP checksum");
            assert_eq!(
                &d[ip_len..ip_len + 4],
                &[0x11, 0x51, 0x01, 0xbb],
                "ports kept"
            );
            joined.extend_from_slice(&d[ip_len + 8..]);
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn a_uso_packet_that_is_not_udp_or_has_no_size_is_refused() {
    let mut frames = Frames::default();
    let mut not_udp = tcp_v4(1, TCP_ACK, 1, &payload(3000), 4000);
    assert!(!segment(&uso(true, 1000), &mut not_udp, &mut frames));
    let mut packet = udp(true, &payload(3000));
    assert!(!segment(&uso(true, 0), &mut packet, &mut frames));
    let mut short = udp(true, &[])[..24].to_vec();
    assert!(!segment(&uso(true, 1000), &mut short, &mut frames));
    assert!(frames.is_empty());
}

/// One whole UDP datagram as a peer sends it: its own length, IPv4 id and full checksum.
fn datagram(v4: bool, id: u16, sport: u16, data: &[u8]) -> Vec<u8> {
    let ip_len = if v4 { 20 } else { 40 };
    let mut p = udp(v4, data);
    if v4 {
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let n = p.len();
        set_ip_len(true, 20, &mut p, n);
    }
    p[ip_len..ip_len + 2].copy_from_slice(&sport.to_be_bytes());
    let udp_len = p.len() - ip_len;
    p[ip_len + 4..ip_len + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let (src, dst) = if v4 {
        (p[12..16].to_vec(), p[16..20].to_vec())
    } else {
        (p[8..24].to_vec(), p[24..40].to_vec())
    };
    let c = !fold(sum(pseudo_sum(&src, &dst, 17, udp_len), &p[ip_len..]));
    p[ip_len + 6..ip_len + 8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    p
}

/// Runs `input` through a UDP-coalescing coalescer; each write is `(header, packet)`.
fn coalesce_udp(udp: bool, input: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut out = Vec::new();
    Coalescer::new(udp).write_all(input.iter().map(Vec::as_slice), |h, p| {
        out.push((VnetHdr::parse(h).unwrap(), p.to_vec()))
    });
    out
}

#[test]
fn coalescing_udp_then_segmenting_gives_back_the_datagrams() {
    for v4 in [true, false] {
        let sizes = [1200, 1200, 1200, 1200, 345];
        let input: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| datagram(v4, 9000 + i as u16, 4433, &payload(n + i)[i..]))
            .collect();
        let out = coalesce_udp(true, &input);
        assert_eq!(out.len(), 1, "one USO write");
        let (hdr, packet) = out.into_iter().next().unwrap();
        assert_eq!(hdr.gso_type, GSO_UDP_L4);
        assert_eq!(usize::from(hdr.gso_size), 1200);
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        // What the kernel does with it: the same datagrams, byte for byte.
        assert_eq!(run_segment(hdr, packet), input, "v4={v4}");
    }
}

#[test]
fn udp_flows_sizes_and_fragments_bound_each_merge() {
    let a = |id: u16, n: usize| datagram(true, id, 1000, &payload(n));
    let b = |id: u16, n: usize| datagram(true, id, 2000, &payload(n));
    // Interleaved flows merge apart; a short datagram closes its run; a longer one after
    // it starts a new one.
    let input = vec![
        a(1, 800),
        b(1, 500),
        a(2, 800),
        b(2, 500),
        a(3, 300),
        a(4, 800),
        b(3, 500),
    ];
    let out = coalesce_udp(true, &input);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut writes = Vec::new();
    for (h, p) in out {
        writes.push((h.gso_type, h.gso_size));
        if h.gso_type == GSO_UDP_L4 {
            got.extend(run_segment(h, p));
        } else {
            got.push(p);
        }
    }
    writes.sort();
    assert_eq!(
        writes,
        [(GSO_NONE, 0), (GSO_UDP_L4, 500), (GSO_UDP_L4, 800)],
        "a1 a2 a3 | a4 alone | b1 b2 b3"
    );
    let flow = |sport: u16, v: &[Vec<u8>]| -> Vec<Vec<u8>> {
        v.iter()
            .filter(|p| p[20..22] == sport.to_be_bytes())
            .cloned()
            .collect()
    };
    assert_eq!(flow(1000, &got), flow(1000, &input), "flow a in order");
    assert_eq!(flow(2000, &got), flow(2000, &input), "flow b in order");

    // A coalescer for a device without USO writes every datagram as it is.
    let plain = coalesce_udp(false, &input);
    assert!(plain.iter().all(|(h, _)| h.gso_type == GSO_NONE));
    assert_eq!(plain.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), input);

    // No more than the kernel's 64 datagrams in one write.
    let many: Vec<Vec<u8>> = (0..100).map(|i| a(i, 100)).collect();
    let out = coalesce_udp(true, &many);
    assert_eq!(out.len(), 2);
    assert_eq!(run_segment(out[0].0, out[0].1.clone()).len(), 64);

    // A fragment is not merged and does not overtake the datagrams held before it.
    let mut frag = a(9, 800);
    frag[6] = 0x20; // more fragments
    let n = frag.len();
    set_ip_len(true, 20, &mut frag, n);
    let out = coalesce_udp(true, &[a(1, 800), a(2, 800), frag.clone()]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].0.gso_type, GSO_UDP_L4);
    assert_eq!(out[1], (VnetHdr::default(), frag));
}

#[test]
fn flow_hash_is_the_same_both_ways_and_spreads_flows() {
    use std::net::Ipv4Addr;
    let a = Ipv4Addr::new(10, 0, 0, 1);
    let b = Ipv4Addr::new(10, 0, 0, 2);
    let there = crate::wire::build::udp_v4(a, b, 5000, 80, b"x");
    let back = crate::wire::build::udp_v4(b, a, 80, 5000, b"y");
    assert_eq!(flow_hash(&there), flow_hash(&back));
    // Flows that differ only in the source port land on both of two queues.
    let queues: std::collections::HashSet<u32> = (0..16u16)
        .map(|p| flow_hash(&crate::wire::build::udp_v4(a, b, 5000 + p, 80, b"x")) % 2)
        .collect();
    assert_eq!(queues.len(), 2);
    assert_eq!(flow_hash(b"not ip"), 0);
    assert_eq!(flow_hash(&[]), 0);
}

/// RFC 1071's sum, a 16-bit big-endian word at a time with the carries added back.
fn reference_sum(acc: u64, data: &[u8]) -> u16 {
    let mut s = fold(acc) as u32;
    for word in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([word[0], *word.get(1).unwrap_or(&0)]));
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

proptest::proptest! {
    #[test]
    fn the_checksum_sum_matches_rfc_1071(
        data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000),
        acc in 0u64..(1 << 40),
        skip in 0usize..8,
    ) {
        // Any start (alignment) and any length, odd ones included.
        let data = &data[skip.min(data.len())..];
        proptest::prop_assert_eq!(fold(sum(acc, data)), reference_sum(acc, data));
    }
}

#[test]
fn the_checksum_sum_takes_all_ones_and_64_kib() {
    for data in [
        vec![0xffu8; 65535],
        vec![0xffu8; 65536],
        vec![0x80; 4097],
        vec![],
    ] {
        assert_eq!(
            fold(sum(0, &data)),
            reference_sum(0, &data),
            "{} bytes",
            data.len()
        );
    }
}
