//! TUN offloads (`IFF_VNET_HDR`): segmentation of the kernel's large TCP packets (TSO)
//! and UDP sends (USO) before they enter the tunnel, and coalescing of a flow's
//! consecutive TCP segments into one large packet (GRO), and of its same-sized UDP
//! datagrams into one USO packet, before they are written back to the kernel.
//!
//! With offloads on, the kernel hands the datapath one packet of up to 64 KiB where it
//! would have handed ~45 of MTU size, and takes back one where it would have taken ~45:
//! a fraction of the syscalls and of the kernel's per-packet work on both ends, which is
//! what makes wireguard-go and Tailscale fast (see the stack-and-performance reference).
//! Segments that travel through the tunnel are ordinary MTU-sized IP packets with full
//! checksums, so a peer without offloads reads them as it always did.
//!
//! Sans-IO: bytes in, bytes out. Every packet is checked before it is trusted; what does
//! not parse is passed through (or dropped by the caller's router) unchanged.

use super::frames::Frames;

/// The `struct virtio_net_hdr` the kernel puts before each packet (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_CWR: u8 = 0x80;

/// The largest IP packet a coalesced write may become.
const MAX_COALESCED: usize = 65535;

/// A parsed `virtio_net_hdr` (little-endian fields, as the kernel writes them on LE hosts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (IP + TCP) of a GSO packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksum's coverage starts.
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header from the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into `out[..VNET_HDR_LEN]`.
    pub fn write(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Adds the 16-bit big-endian words of `data` (a last odd byte padded with zero) to the
/// ones'-complement sum `acc`. The words are summed little-endian, 32 bits at a time into
/// independent 64-bit lanes (no carries to chase, so the compiler vectorizes it), and the
/// folded result byte-swapped: the ones'-complement sum does not care about byte order
/// except for that swap (RFC 1071, "byte order independence").
fn sum(acc: u64, data: &[u8]) -> u64 {
    const LANES: usize = 8;
    let mut lanes = [0u64; LANES];
    let mut blocks = data.chunks_exact(4 * LANES);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    let mut total: u64 = 0;
    for lane in lanes {
        // Each lane holds at most 2^32 words of 32 bits: folding once keeps room for more.
        total += (lane & 0xffff_ffff) + (lane >> 32);
    }
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(4);
    for word in &mut words {
        total += u64::from(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
    }
    let mut tail = [0u8; 4];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    total += u64::from(u32::from_le_bytes(tail));
    let (s, carry) = acc.overflowing_add(u64::from(fold(total).swap_bytes()));
    s + u64::from(carry)
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The internet checksum of `data` (the value to store).
fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// The pseudo-header sum of an IPv4 or IPv6 packet for `proto` and `len` bytes.
fn pseudo_sum(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let acc = sum(sum(0, src), dst);
    sum(
        acc,
        &[
            0,
            0,
            0,
            proto,
            (len >> 24) as u8,
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
        ],
    )
}

/// Sets the IP length field of a packet of `total` bytes whose IP header is `ip_len`
/// bytes (and, for IPv4, the header checksum).
fn set_ip_len(v4: bool, ip_len: usize, p: &mut [u8], total: usize) {
    if v4 {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&p[..ip_len]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
}

/// Where a TCP packet's parts are.
#[derive(Debug, Clone, Copy)]
struct Tcp {
    v4: bool,
    ip_len: usize,
    tcp_len: usize,
}

impl Tcp {
    fn parse(p: &[u8]) -> Option<Tcp> {
        let (v4, ip_len) = match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p[0] & 0xf) * 4;
                if ihl < 20 || p.len() < ihl || p[9] != 6 {
                    return None;
                }
                (true, ihl)
            }
            6 => {
                if p.len() < 40 || p[6] != 6 {
                    return None;
                }
                (false, 40)
            }
            _ => return None,
        };
        let tcp_len = usize::from(*p.get(ip_len + 12)? >> 4) * 4;
        if tcp_len < 20 || p.len() < ip_len + tcp_len {
            return None;
        }
        Some(Tcp {
            v4,
            ip_len,
            tcp_len,
        })
    }

    fn hdr(&self) -> usize {
        self.ip_len + self.tcp_len
    }

    fn addrs<'a>(&self, p: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if self.v4 {
            (&p[12..16], &p[16..20])
        } else {
            (&p[8..24], &p[24..40])
        }
    }

    /// Sets the IP length fields for a packet of `total` bytes (and the IPv4 checksum).
    fn set_ip_len(&self, p: &mut [u8], total: usize) {
        set_ip_len(self.v4, self.ip_len, p, total);
    }

    /// Stores the full TCP checksum of `p` (IP header included in `p`).
    fn set_tcp_checksum(&self, p: &mut [u8]) {
        let at = self.ip_len + 16;
        p[at..at + 2].copy_from_slice(&[0, 0]);
        let (src, dst) = self.addrs(p);
        let acc = pseudo_sum(src, dst, 6, p.len() - self.ip_len);
        let c = !fold(sum(acc, &p[self.ip_len..]));
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Turns what the kernel read out of a TUN device (`packet`, after the header) into
/// MTU-sized IP packets with complete checksums, appended to `out` (each written
/// straight into its slot). Returns false (appending nothing) if the packet cannot be
/// segmented safely; the caller counts it as dropped.
pub fn segment(hdr: &VnetHdr, packet: &mut [u8], out: &mut Frames) -> bool {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        if hdr.flags & F_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            if at + 2 > packet.len() {
                return false;
            }
            // The field holds the pseudo-header sum: summing over it completes it.
            let c = checksum(&packet[start..]);
            packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        out.push_copy(packet);
        return true;
    }
    if gso == GSO_UDP_L4 {
        return segment_udp(hdr, packet, out);
    }
    if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
        return false;
    }
    let Some(tcp) = Tcp::parse(packet) else {
        return false;
    };
    if tcp.v4 != (gso == GSO_TCPV4) || hdr.gso_size == 0 {
        return false;
    }
    let h = tcp.hdr();
    let mss = usize::from(hdr.gso_size);
    let payload_len = packet.len() - h;
    let seq0 = u32::from_be_bytes(packet[tcp.ip_len + 4..tcp.ip_len + 8].try_into().unwrap());
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let flags0 = packet[tcp.ip_len + 13];
    let mut off = 0;
    let mut i = 0u32;
    loop {
        let n = mss.min(payload_len - off);
        let last = off + n == payload_len;
        let frames = &mut *out;
        let out = &mut frames.next_mut()[..h + n];
        out[..h].copy_from_slice(&packet[..h]);
        out[h..].copy_from_slice(&packet[h + off..h + off + n]);
        if tcp.v4 {
            out[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        }
        let seq = seq0.wrapping_add(off as u32);
        out[tcp.ip_len + 4..tcp.ip_len + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        out[tcp.ip_len + 13] = flags;
        tcp.set_ip_len(out, h + n);
        tcp.set_tcp_checksum(out);
        frames.push(h + n);
        off += n;
        i += 1;
        if last {
            return true;
        }
    }
}

/// UDP segmentation (USO, `VIRTIO_NET_HDR_GSO_UDP_L4`): a payload that sent one large
/// buffer with `UDP_SEGMENT` becomes its datagrams of `gso_size` bytes each (the last may
/// be shorter), each with its own UDP length and full checksum.
fn segment_udp(hdr: &VnetHdr, packet: &[u8], frames: &mut Frames) -> bool {
    let (v4, ip_len) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ihl = usize::from(packet[0] & 0xf) * 4;
            if ihl < 20 || packet.len() < ihl + 8 || packet[9] != 17 {
                return false;
            }
            (true, ihl)
        }
        Some(6) if packet.len() >= 48 && packet[6] == 17 => (false, 40),
        _ => return false,
    };
    let size = usize::from(hdr.gso_size);
    if size == 0 {
        return false;
    }
    let h = ip_len + 8;
    let payload_len = packet.len() - h;
    let id0 = u16::from_be_bytes([packet[4], packet[5]]);
    let mut off = 0;
    let mut i = 0u16;
    loop {
        let n = size.min(payload_len - off);
        let out = &mut frames.next_mut()[..h + n];
        out[..h].copy_from_slice(&packet[..h]);
        out[h..].copy_from_slice(&packet[h + off..h + off + n]);
        if v4 {
            out[4..6].copy_from_slice(&id0.wrapping_add(i).to_be_bytes());
        }
        set_ip_len(v4, ip_len, out, h + n);
        let udp_len = (8 + n) as u16;
        out[ip_len + 4..ip_len + 6].copy_from_slice(&udp_len.to_be_bytes());
        out[ip_len + 6..ip_len + 8].copy_from_slice(&[0, 0]);
        let (src, dst) = if v4 {
            (&out[12..16], &out[16..20])
        } else {
            (&out[8..24], &out[24..40])
        };
        let c = !fold(sum(pseudo_sum(src, dst, 17, 8 + n), &out[ip_len..]));
        // A computed 0 is sent as all ones (0 means "no checksum" in UDP over IPv4).
        let c = if c == 0 { 0xffff } else { c };
        out[ip_len + 6..ip_len + 8].copy_from_slice(&c.to_be_bytes());
        frames.push(h + n);
        off += n;
        i = i.wrapping_add(1);
        if off == payload_len {
            return true;
        }
    }
}

/// A flow's segments being merged into one write.
#[derive(Debug)]
struct Merge {
    buf: Vec<u8>,
    tcp: Tcp,
    /// Payload bytes per segment (the first segment's).
    seg: usize,
    /// The sequence number the next segment must carry.
    next_seq: u32,
    segments: u16,
    /// A shorter segment or PSH ended the run.
    closed: bool,
}

/// A UDP flow's datagrams being merged into one USO write: all of `seg` payload bytes
/// but the last, which may be shorter, so the kernel's segmentation gives back exactly
/// the datagrams that were merged.
#[derive(Debug)]
struct UdpMerge {
    buf: Vec<u8>,
    v4: bool,
    /// Payload bytes per datagram (the first one's).
    seg: usize,
    datagrams: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

/// The most datagrams the kernel takes in one USO packet (`UDP_MAX_SEGMENTS`).
const MAX_UDP_SEGMENTS: usize = 64;

/// Where a plain UDP datagram's parts are: `Some((v4, ip header length))` for an
/// unfragmented datagram with a 20-byte IPv4 or a plain IPv6 header, a non-empty payload
/// and a UDP length that matches the packet.
fn udp_parts(p: &[u8]) -> Option<(bool, usize)> {
    let (v4, ip_len) = match p.first()? >> 4 {
        4 if p.len() >= 28 && p[0] == 0x45 && p[9] == 17 => {
            let fragmented = u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0;
            let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if fragmented || total != p.len() {
                return None;
            }
            (true, 20)
        }
        6 if p.len() >= 48 && p[6] == 17 => {
            if usize::from(u16::from_be_bytes([p[4], p[5]])) + 40 != p.len() {
                return None;
            }
            (false, 40)
        }
        _ => return None,
    };
    let udp_len = usize::from(u16::from_be_bytes([p[ip_len + 4], p[ip_len + 5]]));
    (udp_len == p.len() - ip_len && udp_len > 8).then_some((v4, ip_len))
}

/// Same IP header (but the length, IPv4 id and checksum) and the same ports: two
/// datagrams of one flow that one USO packet may carry.
fn same_udp_flow(a: &[u8], b: &[u8], v4: bool) -> bool {
    if v4 {
        // version/ihl, tos; flags+fragment offset, ttl, proto; addresses; ports.
        a[0..2] == b[0..2] && a[6..10] == b[6..10] && a[12..24] == b[12..24]
    } else {
        // version, traffic class, flow label; next header, hop limit, addresses; ports.
        a[0..4] == b[0..4] && a[6..44] == b[6..44]
    }
}

/// Coalesces consecutive TCP segments of each flow (GRO) into large packets for a TUN
/// device with `IFF_VNET_HDR`, and (with [`Coalescer::new`]`(true)`, for a device that
/// took USO) consecutive same-sized UDP datagrams of each flow into one USO packet;
/// everything else is written as it is. Each write is handed over as
/// `(virtio_net_hdr, packet)`, for one `writev`. Order within a flow is kept.
#[derive(Debug, Default)]
pub struct Coalescer {
    merges: Vec<Merge>,
    udp: bool,
    udp_merges: Vec<UdpMerge>,
    spare: Vec<Vec<u8>>,
}

/// What makes two segments the same flow and mergeable (everything but seq, IP id and
/// length, checksums and the PSH flag must match).
fn same_flow(a: &[u8], at: &Tcp, b: &[u8], bt: &Tcp) -> bool {
    if at.v4 != bt.v4 || at.ip_len != bt.ip_len || at.tcp_len != bt.tcp_len {
        return false;
    }
    let ip_same = if at.v4 {
        // version/ihl, tos; flags+fragment offset; ttl, proto; addresses.
        a[0..2] == b[0..2] && a[6..10] == b[6..10] && a[12..20] == b[12..20]
    } else {
        a[0..4] == b[0..4] && a[6..40] == b[6..40]
    };
    let (ta, tb) = (&a[at.ip_len..], &b[bt.ip_len..]);
    ip_same
        // ports, ack number, window, options
        && ta[0..4] == tb[0..4]
        && ta[8..12] == tb[8..12]
        && ta[14..16] == tb[14..16]
        && ta[20..at.tcp_len] == tb[20..bt.tcp_len]
}

impl Coalescer {
    /// A coalescer that merges UDP datagrams too if `udp` (the device accepted USO, Linux
    /// 6.2+: older kernels refuse a `VIRTIO_NET_HDR_GSO_UDP_L4` write).
    pub fn new(udp: bool) -> Self {
        Coalescer {
            udp,
            ..Coalescer::default()
        }
    }

    /// Whether it merges UDP datagrams too (see [`Coalescer::new`]).
    pub fn merges_udp(&self) -> bool {
        self.udp
    }

    /// Feeds the packets bound for the device, in arrival order; `write` is called with
    /// each buffer to hand the device (header included).
    pub fn write_all<'p>(
        &mut self,
        packets: impl IntoIterator<Item = &'p [u8]>,
        mut write: impl FnMut(&[u8], &[u8]),
    ) {
        for p in packets {
            self.push(p, &mut write);
        }
        self.finish(&mut write);
    }

    /// Writes out every flow still being coalesced (the end of a batch).
    pub fn finish(&mut self, write: &mut impl FnMut(&[u8], &[u8])) {
        for i in (0..self.merges.len()).rev() {
            self.flush(i, write);
        }
        for i in (0..self.udp_merges.len()).rev() {
            self.flush_udp(i, write);
        }
    }

    /// Feeds one UDP datagram (`true`), or says it is not one to merge (`false`).
    fn push_udp(&mut self, p: &[u8], write: &mut impl FnMut(&[u8], &[u8])) -> bool {
        let Some((v4, ip_len)) = udp_parts(p) else {
            return false;
        };
        let n = p.len() - ip_len - 8;
        if let Some(i) = self
            .udp_merges
            .iter()
            .position(|m| m.v4 == v4 && same_udp_flow(&m.buf[VNET_HDR_LEN..], p, v4))
        {
            let m = &mut self.udp_merges[i];
            let fits =
                m.buf.len() - VNET_HDR_LEN + n <= MAX_COALESCED && m.datagrams < MAX_UDP_SEGMENTS;
            if !m.closed && fits && n <= m.seg {
                m.buf.extend_from_slice(&p[ip_len + 8..]);
                m.datagrams += 1;
                m.closed = n < m.seg;
                return true;
            }
            self.flush_udp(i, write);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        buf.extend_from_slice(p);
        self.udp_merges.push(UdpMerge {
            buf,
            v4,
            seg: n,
            datagrams: 1,
            closed: false,
        });
        true
    }

    fn flush_udp(&mut self, i: usize, write: &mut impl FnMut(&[u8], &[u8])) {
        let mut m = self.udp_merges.swap_remove(i);
        if m.datagrams > 1 {
            let ip_len = if m.v4 { 20 } else { 40 };
            let total = m.buf.len() - VNET_HDR_LEN;
            let p = &mut m.buf[VNET_HDR_LEN..];
            set_ip_len(m.v4, ip_len, p, total);
            let udp_len = total - ip_len;
            p[ip_len + 4..ip_len + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            // CHECKSUM_PARTIAL over the whole length: the kernel's segmentation swaps
            // in each datagram's length and finishes each checksum.
            let (src, dst) = if m.v4 {
                (&p[12..16], &p[16..20])
            } else {
                (&p[8..24], &p[24..40])
            };
            let partial = fold(pseudo_sum(src, dst, 17, udp_len));
            p[ip_len + 6..ip_len + 8].copy_from_slice(&partial.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_UDP_L4,
                hdr_len: (ip_len + 8) as u16,
                gso_size: m.seg as u16,
                csum_start: ip_len as u16,
                csum_offset: 6,
            }
            .write(&mut m.buf[..VNET_HDR_LEN]);
        }
        write(&m.buf[..VNET_HDR_LEN], &m.buf[VNET_HDR_LEN..]);
        self.spare.push(m.buf);
    }

    /// Feeds one packet; [`Coalescer::finish`] must follow the batch's last.
    pub fn push(&mut self, p: &[u8], write: &mut impl FnMut(&[u8], &[u8])) {
        let tcp = Tcp::parse(p).filter(|t| {
            let flags = p[t.ip_len + 13];
            let fragmented = t.v4 && (u16::from_be_bytes([p[6], p[7]]) & 0x3fff) != 0;
            // Only plain data segments (ACK, maybe PSH) merge.
            p.len() > t.hdr() && flags & !TCP_PSH == TCP_ACK && !fragmented
        });
        let Some(tcp) = tcp else {
            if self.udp && self.push_udp(p, write) {
                return;
            }
            if self.udp && !self.udp_merges.is_empty() && is_ipv4_udp_fragment(p) {
                // A fragment names no ports: keep it behind every held datagram.
                for i in (0..self.udp_merges.len()).rev() {
                    self.flush_udp(i, write);
                }
            }
            // Not mergeable: it must not overtake its flow's pending segments.
            if let Some(t) = Tcp::parse(p)
                && let Some(i) = self
                    .merges
                    .iter()
                    .position(|m| same_ports(&m.buf[VNET_HDR_LEN..], &m.tcp, p, &t))
            {
                self.flush(i, write);
            }
            write_plain(p, write);
            return;
        };
        let seq = u32::from_be_bytes(p[tcp.ip_len + 4..tcp.ip_len + 8].try_into().unwrap());
        let n = p.len() - tcp.hdr();
        let psh = p[tcp.ip_len + 13] & TCP_PSH != 0;
        if let Some(i) = self
            .merges
            .iter()
            .position(|m| same_ports(&m.buf[VNET_HDR_LEN..], &m.tcp, p, &tcp))
        {
            let m = &mut self.merges[i];
            let fits = m.buf.len() - VNET_HDR_LEN + n <= MAX_COALESCED;
            if !m.closed
                && fits
                && seq == m.next_seq
                && n <= m.seg
                && same_flow(&m.buf[VNET_HDR_LEN..], &m.tcp, p, &tcp)
            {
                m.buf.extend_from_slice(&p[tcp.hdr()..]);
                m.next_seq = seq.wrapping_add(n as u32);
                m.segments += 1;
                if psh {
                    let at = VNET_HDR_LEN + m.tcp.ip_len + 13;
                    m.buf[at] |= TCP_PSH;
                }
                m.closed = psh || n < m.seg;
                return;
            }
            self.flush(i, write);
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&[0u8; VNET_HDR_LEN]);
        buf.extend_from_slice(p);
        self.merges.push(Merge {
            buf,
            tcp,
            seg: n,
            next_seq: seq.wrapping_add(n as u32),
            segments: 1,
            closed: psh,
        });
    }

    fn flush(&mut self, i: usize, write: &mut impl FnMut(&[u8], &[u8])) {
        let mut m = self.merges.swap_remove(i);
        if m.segments > 1 {
            let t = m.tcp;
            let total = m.buf.len() - VNET_HDR_LEN;
            let p = &mut m.buf[VNET_HDR_LEN..];
            t.set_ip_len(p, total);
            // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel
            // finishes it (or, for a GSO packet, each segment's) itself.
            let (src, dst) = t.addrs(p);
            let partial = fold(pseudo_sum(src, dst, 6, total - t.ip_len));
            let at = t.ip_len + 16;
            p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if t.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
                hdr_len: t.hdr() as u16,
                gso_size: m.seg as u16,
                csum_start: t.ip_len as u16,
                csum_offset: 16,
            }
            .write(&mut m.buf[..VNET_HDR_LEN]);
        }
        write(&m.buf[..VNET_HDR_LEN], &m.buf[VNET_HDR_LEN..]);
        self.spare.push(m.buf);
    }
}

/// Same addresses and ports (the flow), whatever else differs.
fn same_ports(a: &[u8], at: &Tcp, b: &[u8], bt: &Tcp) -> bool {
    if at.v4 != bt.v4 {
        return false;
    }
    let (sa, da) = at.addrs(a);
    let (sb, db) = bt.addrs(b);
    sa == sb && da == db && a[at.ip_len..at.ip_len + 4] == b[bt.ip_len..bt.ip_len + 4]
}

/// An IPv4 UDP fragment (first or later).
fn is_ipv4_udp_fragment(p: &[u8]) -> bool {
    p.len() >= 20 && p[0] >> 4 == 4 && p[9] == 17 && u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0
}

/// Writes one packet with an all-zero header (no offload asked for).
fn write_plain(p: &[u8], write: &mut impl FnMut(&[u8], &[u8])) {
    write(&[0u8; VNET_HDR_LEN], p);
}

#[cfg(test)]
#[path = "offload_tests.rs"]
mod tests;

/// A hash of an IP packet's flow that is the same both ways: its addresses, and for TCP
/// and UDP its ports (0 for what is not IP). Picks a TUN queue per flow.
pub fn flow_hash(packet: &[u8]) -> u32 {
    let (addrs, proto, l4) = match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            // A fragment after the first has no ports.
            let first = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff == 0;
            (&packet[12..20], packet[9], first.then_some(ihl))
        }
        Some(6) if packet.len() >= 40 => (&packet[8..40], packet[6], Some(40)),
        _ => return 0,
    };
    let half = addrs.len() / 2;
    let word = |b: &[u8]| {
        b.chunks(4).fold(0u32, |h, c| {
            h ^ u32::from_be_bytes(c.try_into().unwrap_or([0; 4]))
        })
    };
    let mut h = word(&addrs[..half]) ^ word(&addrs[half..]);
    if matches!(proto, 6 | 17)
        && let Some(ports) = l4.and_then(|at| packet.get(at..at + 4))
    {
        h ^= u32::from(
            u16::from_be_bytes([ports[0], ports[1]]) ^ u16::from_be_bytes([ports[2], ports[3]]),
        );
    }
    // Mix, so that flows that differ in one port land on different queues.
    h = (h ^ (h >> 16)).wrapping_mul(0x045d_9f3b);
    h ^ (h >> 16)
}
