//! A userspace TCP/IP stack for one node in one network, on smoltcp.
//!
//! Endpoints without a kernel interface (the requestor's WebSocket gate, unprivileged or
//! sandboxed payloads) terminate their TCP, UDP and ICMP here. The stack is sans-IO:
//! [`Stack::receive`] queues an IP packet that arrived for this node, [`Stack::poll`]
//! runs smoltcp at a given time and returns the packets to send, and [`Stack::poll_at`]
//! says when to poll next. Sockets are named by [`SocketId`]s; when one may have become
//! readable, writable or closed its id is queued for [`Stack::take_ready`] (smoltcp
//! wakers), so a driver only looks at sockets that changed.
//!
//! TCP listeners keep a backlog of listening smoltcp sockets: each one that gets a
//! connection moves to the accept queue and is replaced. Connection failures are told
//! apart from the state history: a socket that goes from SYN-SENT to CLOSED was refused,
//! one that skips the closing handshake was reset.

mod device;

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use rustc_hash::FxHashMap;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpCidr,
    IpEndpoint, IpListenEndpoint,
};

use device::QueueDevice;

/// A socket of a [`Stack`].
pub type SocketId = u64;

const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// TCP's minimum retransmission timeout, Linux's (smoltcp's default, RFC 6298's 1 s, stalls
/// a connection five times as long for each loss that only a timeout repairs).
const TCP_MIN_RTO: Duration = Duration::from_millis(200);
const IPV4_UDP_OVERHEAD: usize = 20 + 8;
const IPV6_UDP_OVERHEAD: usize = 40 + 8;

/// How a stack is built.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The node's addresses with the network prefix (1 to 4; IPv4 and/or IPv6).
    pub addresses: Vec<(IpAddr, u8)>,
    /// The IP MTU: the largest packet the stack sends (default 1400, yagna's).
    pub mtu: usize,
    /// Receive buffer per TCP connection; above 64 KiB, window scaling is negotiated.
    pub tcp_rx_buffer: usize,
    /// Send buffer per TCP connection.
    pub tcp_tx_buffer: usize,
    /// Datagram buffer (each direction) per UDP socket.
    pub udp_buffer: usize,
    /// TCP keep-alive interval (None: off).
    pub keep_alive: Option<Duration>,
    /// Abort a TCP connection whose peer is silent this long (None: never).
    pub tcp_timeout: Option<Duration>,
    /// Seed for smoltcp's initial sequence numbers and the ephemeral port choice.
    pub random_seed: u64,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            addresses: Vec::new(),
            mtu: 1400,
            tcp_rx_buffer: 512 * 1024,
            tcp_tx_buffer: 512 * 1024,
            udp_buffer: 256 * 1024,
            keep_alive: Some(Duration::from_secs(30)),
            tcp_timeout: Some(Duration::from_secs(120)),
            random_seed: 0x601e_4d00_5eed,
        }
    }
}

/// Why a stack operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    /// The configuration cannot build a stack.
    #[error("invalid stack configuration: {0}")]
    Config(String),
    /// No socket has this id (it was released, or never existed).
    #[error("no socket with id {0}")]
    NoSocket(SocketId),
    /// The operation does not apply to this kind of socket.
    #[error("socket {0} is not a {1} socket")]
    WrongKind(SocketId, &'static str),
    /// The port is already bound.
    #[error("port {0} is already in use")]
    AddrInUse(u16),
    /// Every ephemeral port is in use.
    #[error("no free ephemeral port")]
    NoFreePort,
    /// The stack has no address of the destination's family.
    #[error("no local address to reach {0}")]
    Unreachable(IpAddr),
    /// The destination cannot be connected to (unspecified, port 0, ...).
    #[error("invalid destination {0}")]
    InvalidDestination(SocketAddr),
    /// The connection can no longer send (closed for writing, or reset).
    #[error("socket is not connected for sending")]
    NotConnected,
    /// A datagram is larger than one packet can carry.
    #[error("datagram of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The datagram's size.
        len: usize,
        /// The largest datagram that fits the MTU.
        max: usize,
    },
    /// The socket's send buffer is full; try again after the next poll.
    #[error("send buffer full")]
    WouldBlock,
}

/// How a TCP connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFailure {
    /// The peer answered the SYN with a reset (nothing listens there).
    Refused,
    /// The connection was reset after it was established.
    Reset,
    /// The peer stopped answering (no SYN-ACK, or no ACKs) for the stack's TCP timeout.
    TimedOut,
}

/// A TCP connection's state, for a driver deciding what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpStatus {
    /// smoltcp's state name (`"ESTABLISHED"`, ...).
    pub state: &'static str,
    /// The handshake completed at some point.
    pub established: bool,
    /// Bytes waiting to be read.
    pub recv_queue: usize,
    /// The peer may still send (false after its FIN or a reset).
    pub may_recv: bool,
    /// Bytes not yet acknowledged or not yet sent.
    pub send_queue: usize,
    /// Free space in the send buffer.
    pub send_free: usize,
    /// We may still send (false after our FIN or a reset).
    pub may_send: bool,
    /// How the connection failed, if it did.
    pub failure: Option<TcpFailure>,
    /// The local endpoint.
    pub local: Option<SocketAddr>,
    /// The remote endpoint.
    pub remote: Option<SocketAddr>,
}

/// Packet and byte counters of a stack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Packets handed to [`Stack::receive`].
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Packets returned by [`Stack::poll`].
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Packets refused by [`Stack::receive`] (empty, larger than the MTU, TCP to a
    /// broadcast or multicast address, IPv6 to an address that is not the stack's).
    pub dropped_in: u64,
    /// SYNs dropped because a listener's backlog was full (the client retries).
    pub syn_dropped: u64,
}

/// A received UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The payload.
    pub data: Vec<u8>,
    /// Who sent it.
    pub src: SocketAddr,
    /// The local address it was sent to.
    pub dst: Option<IpAddr>,
}

#[derive(Default)]
struct ReadyQueue(Mutex<Vec<SocketId>>);

struct SocketWaker {
    id: SocketId,
    queue: Arc<ReadyQueue>,
}

impl Wake for SocketWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Ok(mut q) = self.queue.0.lock() {
            q.push(self.id);
        }
    }
}

/// A connection's endpoints as `(local, remote)`.
type Tuple = (IpEndpoint, IpEndpoint);

struct TcpEntry {
    handle: SocketHandle,
    prev: tcp::State,
    established: bool,
    failure: Option<TcpFailure>,
    released: bool,
    aborted: bool,
    /// Last known endpoints (smoltcp forgets them once the socket is closed).
    tuple: Option<Tuple>,
    port: u16,
}

struct ListenerEntry {
    port: u16,
    backlog: usize,
    /// Sockets in LISTEN, each ready to take one SYN.
    listening: Vec<SocketHandle>,
    /// Sockets in SYN-RECEIVED (handshake under way).
    half_open: Vec<SocketHandle>,
    accepted: VecDeque<SocketId>,
}

enum Entry {
    Tcp(TcpEntry),
    Listener(ListenerEntry),
    Udp { handle: SocketHandle, port: u16 },
    Icmp { handle: SocketHandle, ident: u16 },
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Tcp(_) => "TCP connection",
            Entry::Listener(_) => "TCP listener",
            Entry::Udp { .. } => "UDP",
            Entry::Icmp { .. } => "ICMP",
        }
    }
}

/// A userspace TCP/IP stack for one node. See the module docs.
pub struct Stack {
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    entries: FxHashMap<SocketId, Entry>,
    wakers: FxHashMap<SocketId, Waker>,
    ready: Arc<ReadyQueue>,
    next_id: SocketId,
    tcp_ports: HashSet<u16>,
    udp_ports: HashSet<u16>,
    next_port: u16,
    next_ident: u16,
    config: StackConfig,
    stats: StackStats,
    /// `(local, remote)` of connections an RST arrived for since the last poll.
    rst_seen: HashSet<Tuple>,
    /// Per listening port: SYNs it can still take before the next poll.
    syn_budget: FxHashMap<u16, usize>,
    /// Per outgoing TCP flow `(local, remote)`: the highest sequence number sent (SND.MAX).
    snd_max: FxHashMap<Tuple, u32>,
    /// Flows whose peer last advertised a zero window, with the acknowledgement number
    /// it carried (the peer's RCV.NXT); see [`fix_ack_sequence`].
    zero_window: FxHashMap<Tuple, u32>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("addresses", &self.config.addresses)
            .field("mtu", &self.config.mtu)
            .field("sockets", &self.entries.len())
            .finish()
    }
}

fn to_ip(addr: IpAddress) -> IpAddr {
    addr.into()
}

fn to_socket_addr(ep: IpEndpoint) -> SocketAddr {
    SocketAddr::new(to_ip(ep.addr), ep.port)
}

/// How a connection that went from `prev` to CLOSED failed, if it did.
fn closed_failure(prev: tcp::State, rst_arrived: bool) -> Option<TcpFailure> {
    use tcp::State::*;
    match prev {
        SynSent if rst_arrived => Some(TcpFailure::Refused),
        SynReceived | Established | FinWait1 | FinWait2 | CloseWait | Closing if rst_arrived => {
            Some(TcpFailure::Reset)
        }
        // No RST came in: smoltcp gave up after its timeout.
        SynSent | SynReceived | Established | FinWait1 | FinWait2 | CloseWait | Closing => {
            Some(TcpFailure::TimedOut)
        }
        // LAST-ACK and TIME-WAIT end in CLOSED normally.
        _ => None,
    }
}

/// Most flows tracked for [`fix_ack_sequence`]; beyond it the table starts over (a flow
/// then only loses the fix until its next data segment).
const SND_MAX_FLOWS: usize = 65536;

/// Stamps pure ACKs with the highest sequence number sent, as Linux does.
///
/// After a retransmission timeout smoltcp 0.14 rewinds its next sequence number to the
/// oldest unacknowledged byte and stamps its pure ACKs with it. When both ends of a
/// connection time out while each holds data the other still counts as unacknowledged,
/// each end's ACKs then fall below the peer's RCV.NXT, fail its acceptability test and are
/// discarded unread: the transfer livelocks. An ACK carrying SND.MAX is always acceptable
/// (the peer's RCV.NXT <= SND.MAX < RCV.NXT + RCV.WND) and carries the same
/// acknowledgement, so the outgoing segment is rewritten and its checksum recomputed.
///
/// With the project's smoltcp patches a timeout no longer rewinds when the peer negotiated
/// SACK (as smoltcp and every common stack do), so this now guards peers without SACK.
///
/// SND.MAX is not acceptable when the peer's window is closed: a zero-window probe sends
/// one byte past it, which the peer drops, and a zero window accepts a segment only at
/// RCV.NXT exactly. Stamped with SND.MAX, every later ACK was dropped unread; a peer whose
/// window was closed because its application waits for its own sends to be acknowledged
/// (an echo server) then never learnt they were: both ends stalled for good. While the
/// peer's window is closed, pure ACKs carry the acknowledgement number it last sent (its
/// RCV.NXT), as Linux's `tcp_acceptable_seq` keeps them within the peer's window.
fn fix_ack_sequence(
    snd_max: &mut FxHashMap<Tuple, u32>,
    zero_window: &FxHashMap<Tuple, u32>,
    packet: &mut [u8],
) {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket};
    let (src, dst, start): (IpAddress, IpAddress, usize) = match packet.first().map(|b| b >> 4) {
        Some(4) => match Ipv4Packet::new_checked(&packet[..]) {
            Ok(ip) if ip.next_header() == IpProtocol::Tcp => (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                usize::from(ip.header_len()),
            ),
            _ => return,
        },
        Some(6) => match Ipv6Packet::new_checked(&packet[..]) {
            Ok(ip) if ip.next_header() == IpProtocol::Tcp => {
                (ip.src_addr().into(), ip.dst_addr().into(), 40)
            }
            _ => return,
        },
        _ => return,
    };
    let segment_len = packet.len().saturating_sub(start);
    let Ok(mut tcp) = TcpPacket::new_checked(&mut packet[start..]) else {
        return;
    };
    let key = (
        IpEndpoint::new(src, tcp.src_port()),
        IpEndpoint::new(dst, tcp.dst_port()),
    );
    if tcp.rst() {
        snd_max.remove(&key);
        return;
    }
    let seq = tcp.seq_number().0 as u32;
    let payload = segment_len.saturating_sub(usize::from(tcp.header_len())) as u32;
    let len = payload + u32::from(tcp.syn()) + u32::from(tcp.fin());
    let end = seq.wrapping_add(len);
    let max = match snd_max.get(&key) {
        // Wrapping comparison: `end` is ahead of `max` if their difference is below 2^31.
        Some(&max) if (end.wrapping_sub(max) as i32) <= 0 => max,
        _ => {
            if snd_max.len() >= SND_MAX_FLOWS {
                snd_max.clear();
            }
            snd_max.insert(key, end);
            end
        }
    };
    let target = zero_window.get(&key).copied().unwrap_or(max);
    if len == 0 && tcp.ack() && seq != target && (seq.wrapping_sub(max) as i32) <= 0 {
        tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(target as i32));
        tcp.fill_checksum(&src, &dst);
    }
}

/// The TCP header facts `receive` looks at.
struct TcpSummary {
    src: IpEndpoint,
    dst: IpEndpoint,
    syn: bool,
    ack: bool,
    rst: bool,
    /// The acknowledgement number, if the ACK flag is set.
    ack_number: Option<u32>,
    /// The window field as sent (unscaled: only whether it is zero matters here).
    window: u16,
}

/// Peeks at a TCP packet's endpoints and flags (None for anything else or garbage).
fn tcp_summary(packet: &[u8]) -> Option<TcpSummary> {
    use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet};
    let (src, dst, tcp): (IpAddress, IpAddress, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let start = usize::from(ip.header_len());
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                packet.get(start..)?,
            )
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            (
                ip.src_addr().into(),
                ip.dst_addr().into(),
                packet.get(40..)?,
            )
        }
        _ => return None,
    };
    if tcp.len() < 16 {
        return None;
    }
    let flags = tcp[13];
    let ack = flags & 0x10 != 0;
    Some(TcpSummary {
        src: IpEndpoint::new(src, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: IpEndpoint::new(dst, u16::from_be_bytes([tcp[2], tcp[3]])),
        syn: flags & 0x02 != 0,
        ack,
        rst: flags & 0x04 != 0,
        ack_number: ack.then(|| u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]])),
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
    })
}

fn state_name(state: tcp::State) -> &'static str {
    match state {
        tcp::State::Closed => "CLOSED",
        tcp::State::Listen => "LISTEN",
        tcp::State::SynSent => "SYN-SENT",
        tcp::State::SynReceived => "SYN-RECEIVED",
        tcp::State::Established => "ESTABLISHED",
        tcp::State::FinWait1 => "FIN-WAIT-1",
        tcp::State::FinWait2 => "FIN-WAIT-2",
        tcp::State::CloseWait => "CLOSE-WAIT",
        tcp::State::Closing => "CLOSING",
        tcp::State::LastAck => "LAST-ACK",
        tcp::State::TimeWait => "TIME-WAIT",
    }
}

impl Stack {
    /// Builds a stack with the given addresses and buffers.
    pub fn new(config: StackConfig, now: Instant) -> Result<Self, StackError> {
        if config.addresses.is_empty() || config.addresses.len() > 4 {
            return Err(StackError::Config("a stack needs 1 to 4 addresses".into()));
        }
        if !(576..=65535).contains(&config.mtu) {
            return Err(StackError::Config(format!(
                "MTU {} is outside 576..=65535",
                config.mtu
            )));
        }
        for (what, size) in [
            ("tcp_rx_buffer", config.tcp_rx_buffer),
            ("tcp_tx_buffer", config.tcp_tx_buffer),
            ("udp_buffer", config.udp_buffer),
        ] {
            if !(1024..=(1 << 30)).contains(&size) {
                return Err(StackError::Config(format!(
                    "{what} {size} is outside 1 KiB..1 GiB"
                )));
            }
        }
        let mut cidrs = Vec::new();
        for &(ip, prefix) in &config.addresses {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if prefix > max || crate::wire::is_never_host(ip) {
                return Err(StackError::Config(format!(
                    "{ip}/{prefix} is not a host address"
                )));
            }
            cidrs.push(IpCidr::new(ip.into(), prefix));
        }
        let mut device = QueueDevice::new(config.mtu, 1024);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = config.random_seed;
        let mut iface = Interface::new(iface_config, &mut device, now);
        iface.update_ip_addrs(|addrs| {
            for cidr in cidrs {
                addrs
                    .push(cidr)
                    .expect("at most 4 addresses, checked above");
            }
        });
        let seed = config.random_seed;
        let span = u64::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        Ok(Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            entries: FxHashMap::default(),
            wakers: FxHashMap::default(),
            ready: Arc::default(),
            next_id: 1,
            tcp_ports: HashSet::new(),
            udp_ports: HashSet::new(),
            next_port: EPHEMERAL_PORTS.start() + (seed % span) as u16,
            next_ident: (seed >> 16) as u16 | 1,
            config,
            stats: StackStats::default(),
            rst_seen: HashSet::new(),
            syn_budget: FxHashMap::default(),
            snd_max: FxHashMap::default(),
            zero_window: FxHashMap::default(),
        })
    }

    /// The stack's configuration.
    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Packet counters.
    pub fn stats(&self) -> StackStats {
        self.stats
    }

    /// Number of open sockets (released TCP connections still closing included).
    pub fn socket_count(&self) -> usize {
        self.entries.len()
    }

    /// Queues an IP packet that arrived for this node; it is processed at the next poll.
    /// Returns false (and counts a drop) for an empty packet or one above the MTU.
    pub fn receive(&mut self, packet: &[u8]) -> bool {
        if packet.is_empty() || packet.len() > self.config.mtu || !self.is_for_us(packet) {
            self.stats.dropped_in += 1;
            return false;
        }
        if let Some(tcp) = tcp_summary(packet) {
            let flow = (tcp.dst, tcp.src);
            match tcp.ack_number {
                Some(ack) if tcp.window == 0 && !tcp.rst && !tcp.syn => {
                    if self.zero_window.len() >= SND_MAX_FLOWS {
                        self.zero_window.clear();
                    }
                    let seen = self.zero_window.entry(flow).or_insert(ack);
                    // The highest, in case segments arrive out of order.
                    if (ack.wrapping_sub(*seen) as i32) > 0 {
                        *seen = ack;
                    }
                }
                _ => {
                    self.zero_window.remove(&flow);
                }
            }
            if tcp.rst {
                self.rst_seen.insert((tcp.dst, tcp.src));
            } else if tcp.syn
                && !tcp.ack
                && let Some(budget) = self.syn_budget.get_mut(&tcp.dst.port)
            {
                if *budget == 0 {
                    // Like a kernel with a full backlog: drop, the client retries.
                    self.stats.syn_dropped += 1;
                    return false;
                }
                *budget -= 1;
            }
        }
        self.stats.packets_in += 1;
        self.stats.bytes_in += packet.len() as u64;
        self.device.rx.push_back(packet.to_vec());
        true
    }

    /// False for a packet smoltcp would take although it is not for this stack:
    /// - TCP to anything but one of the stack's addresses: smoltcp answered a segment to
    ///   the subnet broadcast with a reset *from* the broadcast address (and a SYN with a
    ///   SYN-ACK), where RFC 1122 (4.2.3.10) says TCP ignores broadcast and multicast;
    /// - IPv6 to none of its addresses and no group it is in (all-nodes, its own
    ///   solicited-node groups): smoltcp 0.14 takes any destination whose last two bytes
    ///   match one of its addresses for its solicited-node group (checking neither the
    ///   `ff02::1:ff00:0/104` prefix nor the third byte), so a stack at `fd00::1` answered
    ///   a datagram to `2001:db8::1` or `ff0e::1` with an ICMPv6 error from that address.
    ///
    /// Both found by the `stack` fuzz target (fuzz/README.md). Other IPv4 destinations are
    /// smoltcp's to judge (it takes only its addresses, broadcast and 224.0.0.1).
    fn is_for_us(&self, packet: &[u8]) -> bool {
        const TCP: u8 = 6;
        const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        let (dst, protocol): (IpAddr, u8) = match packet[0] >> 4 {
            4 if packet.len() >= 20 => {
                let o: [u8; 4] = packet[16..20].try_into().expect("4 bytes");
                (o.into(), packet[9])
            }
            6 if packet.len() >= 40 => {
                let o: [u8; 16] = packet[24..40].try_into().expect("16 bytes");
                (o.into(), packet[6])
            }
            _ => return true, // smoltcp drops it as malformed
        };
        if self.config.addresses.iter().any(|&(ip, _)| ip == dst) {
            return true;
        }
        if protocol == TCP {
            return false;
        }
        match dst {
            IpAddr::V4(_) => true,
            IpAddr::V6(dst) => {
                dst == ALL_NODES
                    || self.config.addresses.iter().any(|&(ip, _)| match ip {
                        IpAddr::V6(own) => dst == crate::wire::build::solicited_node(own),
                        IpAddr::V4(_) => false,
                    })
            }
        }
    }

    /// Runs the stack at `now`: processes queued packets, timers and socket buffers, and
    /// returns at most about `budget` packets to send. If it returns `budget` or more,
    /// call it again: more may be waiting in the socket buffers.
    pub fn poll(&mut self, now: Instant, budget: usize) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        loop {
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let produced = self.device.tx.len();
            for mut packet in self.device.tx.drain(..) {
                fix_ack_sequence(&mut self.snd_max, &self.zero_window, &mut packet);
                out.push(packet);
            }
            self.maintain();
            if produced < self.device.tx_limit || out.len() >= budget {
                break;
            }
        }
        self.stats.packets_out += out.len() as u64;
        self.stats.bytes_out += out.iter().map(|p| p.len() as u64).sum::<u64>();
        out
    }

    /// When the stack next needs a poll even if no packet arrives (None: no timer).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    /// The sockets that may have become readable, writable or closed since the last call.
    pub fn take_ready(&mut self) -> Vec<SocketId> {
        let mut ids = match self.ready.0.lock() {
            Ok(mut q) => std::mem::take(&mut *q),
            Err(_) => Vec::new(),
        };
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| self.entries.contains_key(id));
        // smoltcp wakers fire once: arm them again for the next event.
        for id in &ids {
            self.arm(*id);
        }
        ids
    }

    /// Registers the socket's wakers (again).
    fn arm(&mut self, id: SocketId) {
        let Some(waker) = self.wakers.get(&id) else {
            return;
        };
        match self.entries.get(&id) {
            Some(Entry::Tcp(t)) => {
                let s = self.sockets.get_mut::<tcp::Socket>(t.handle);
                s.register_recv_waker(waker);
                s.register_send_waker(waker);
            }
            Some(Entry::Listener(l)) => {
                for &h in l.listening.iter().chain(&l.half_open) {
                    let s = self.sockets.get_mut::<tcp::Socket>(h);
                    s.register_recv_waker(waker);
                    s.register_send_waker(waker);
                }
            }
            Some(Entry::Udp { handle, .. }) => {
                let s = self.sockets.get_mut::<udp::Socket>(*handle);
                s.register_recv_waker(waker);
                s.register_send_waker(waker);
            }
            Some(Entry::Icmp { handle, .. }) => {
                let s = self.sockets.get_mut::<icmp::Socket>(*handle);
                s.register_recv_waker(waker);
                s.register_send_waker(waker);
            }
            None => {}
        }
    }

    fn new_id(&mut self) -> SocketId {
        let id = self.next_id;
        self.next_id += 1;
        let waker = Waker::from(Arc::new(SocketWaker {
            id,
            queue: self.ready.clone(),
        }));
        self.wakers.insert(id, waker);
        id
    }

    fn mark_ready(&self, id: SocketId) {
        if let Ok(mut q) = self.ready.0.lock() {
            q.push(id);
        }
    }

    fn ephemeral_port(&mut self, udp: bool) -> Result<u16, StackError> {
        let span = usize::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                port + 1
            };
            let used = if udp {
                &self.udp_ports
            } else {
                &self.tcp_ports
            };
            if !used.contains(&port) {
                return Ok(port);
            }
        }
        Err(StackError::NoFreePort)
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; self.config.tcp_rx_buffer]),
            tcp::SocketBuffer::new(vec![0u8; self.config.tcp_tx_buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_ack_delay(Some(Duration::from_millis(5)));
        s.set_min_rto(TCP_MIN_RTO);
        s.set_keep_alive(self.config.keep_alive);
        s.set_timeout(self.config.tcp_timeout);
        s
    }

    fn local_address(&self, family_of: IpAddr) -> Option<IpAddr> {
        self.config
            .addresses
            .iter()
            .map(|(ip, _)| *ip)
            .find(|ip| ip.is_ipv4() == family_of.is_ipv4())
    }

    /// Opens a TCP connection to `remote`; it completes (or fails) in later polls.
    pub fn tcp_connect(&mut self, remote: SocketAddr) -> Result<SocketId, StackError> {
        if remote.port() == 0 || remote.ip().is_unspecified() || remote.ip().is_multicast() {
            return Err(StackError::InvalidDestination(remote));
        }
        let local_ip = self
            .local_address(remote.ip())
            .ok_or(StackError::Unreachable(remote.ip()))?;
        let port = self.ephemeral_port(false)?;
        let mut socket = self.new_tcp_socket();
        socket
            .connect(
                self.iface.context(),
                IpEndpoint::new(remote.ip().into(), remote.port()),
                IpEndpoint::new(local_ip.into(), port),
            )
            .map_err(|_| StackError::InvalidDestination(remote))?;
        let id = self.new_id();
        socket.register_recv_waker(&self.wakers[&id]);
        socket.register_send_waker(&self.wakers[&id]);
        let handle = self.sockets.add(socket);
        self.tcp_ports.insert(port);
        self.entries.insert(
            id,
            Entry::Tcp(TcpEntry {
                handle,
                prev: tcp::State::SynSent,
                established: false,
                failure: None,
                released: false,
                aborted: false,
                tuple: Some((
                    IpEndpoint::new(local_ip.into(), port),
                    IpEndpoint::new(remote.ip().into(), remote.port()),
                )),
                port,
            }),
        );
        Ok(id)
    }

    /// Listens on `port` (0: an ephemeral one) of every local address, keeping up to
    /// `backlog` connections waiting to be accepted. Returns the listener and its port.
    pub fn tcp_listen(&mut self, port: u16, backlog: usize) -> Result<(SocketId, u16), StackError> {
        let port = if port == 0 {
            self.ephemeral_port(false)?
        } else if self.tcp_ports.contains(&port) {
            return Err(StackError::AddrInUse(port));
        } else {
            port
        };
        let backlog = backlog.clamp(1, 4096);
        let id = self.new_id();
        let mut listener = ListenerEntry {
            port,
            backlog,
            listening: Vec::with_capacity(backlog),
            half_open: Vec::new(),
            accepted: VecDeque::new(),
        };
        for _ in 0..backlog {
            listener.listening.push(self.new_listening_socket(id, port));
        }
        self.tcp_ports.insert(port);
        self.syn_budget.insert(port, backlog);
        self.entries.insert(id, Entry::Listener(listener));
        Ok((id, port))
    }

    fn new_listening_socket(&mut self, listener: SocketId, port: u16) -> SocketHandle {
        let mut socket = self.new_tcp_socket();
        socket
            .listen(IpListenEndpoint { addr: None, port })
            .expect("port is non-zero");
        socket.register_recv_waker(&self.wakers[&listener]);
        socket.register_send_waker(&self.wakers[&listener]);
        self.sockets.add(socket)
    }

    /// Takes the next accepted connection of a listener, if one is waiting.
    pub fn tcp_accept(&mut self, listener: SocketId) -> Result<Option<SocketId>, StackError> {
        match self.entries.get_mut(&listener) {
            Some(Entry::Listener(l)) => Ok(l.accepted.pop_front()),
            Some(e) => Err(StackError::WrongKind(listener, e.kind())),
            None => Err(StackError::NoSocket(listener)),
        }
    }

    fn tcp_entry(&self, id: SocketId) -> Result<&TcpEntry, StackError> {
        match self.entries.get(&id) {
            Some(Entry::Tcp(t)) if !t.released => Ok(t),
            Some(Entry::Tcp(_)) | None => Err(StackError::NoSocket(id)),
            Some(e) => Err(StackError::WrongKind(id, e.kind())),
        }
    }

    fn tcp_socket(&mut self, id: SocketId) -> Result<&mut tcp::Socket<'static>, StackError> {
        let handle = self.tcp_entry(id)?.handle;
        Ok(self.sockets.get_mut::<tcp::Socket>(handle))
    }

    /// The state of a TCP connection.
    pub fn tcp_status(&self, id: SocketId) -> Result<TcpStatus, StackError> {
        let entry = self.tcp_entry(id)?;
        let s = self.sockets.get::<tcp::Socket>(entry.handle);
        Ok(TcpStatus {
            state: state_name(s.state()),
            established: entry.established || matches!(s.state(), tcp::State::Established),
            recv_queue: s.recv_queue(),
            may_recv: s.may_recv(),
            send_queue: s.send_queue(),
            send_free: s.send_capacity() - s.send_queue(),
            may_send: s.may_send(),
            failure: entry.failure,
            local: s.local_endpoint().map(to_socket_addr),
            remote: s.remote_endpoint().map(to_socket_addr),
        })
    }

    /// Queues bytes for sending; returns how many fit in the send buffer (maybe 0).
    pub fn tcp_send(&mut self, id: SocketId, data: &[u8]) -> Result<usize, StackError> {
        let socket = self.tcp_socket(id)?;
        if !socket.may_send() {
            // Still connecting: nothing fits yet, but this is no error.
            return if socket.state() == tcp::State::SynSent {
                Ok(0)
            } else {
                Err(StackError::NotConnected)
            };
        }
        socket
            .send_slice(data)
            .map_err(|_| StackError::NotConnected)
    }

    /// Reads up to `buf.len()` received bytes; 0 means nothing is waiting (see
    /// [`TcpStatus::may_recv`] for end of stream).
    pub fn tcp_recv(&mut self, id: SocketId, buf: &mut [u8]) -> Result<usize, StackError> {
        let socket = self.tcp_socket(id)?;
        Ok(socket.recv_slice(buf).unwrap_or(0))
    }

    /// Sends FIN once the queued bytes are out (half-close); reading goes on.
    pub fn tcp_shutdown(&mut self, id: SocketId) -> Result<(), StackError> {
        self.tcp_socket(id)?.close();
        Ok(())
    }

    /// Resets the connection at once (RST), dropping queued bytes.
    pub fn tcp_abort(&mut self, id: SocketId) -> Result<(), StackError> {
        self.tcp_socket(id)?.abort();
        if let Some(Entry::Tcp(t)) = self.entries.get_mut(&id) {
            t.aborted = true;
        }
        Ok(())
    }

    /// Gives a socket up. A TCP connection is closed gracefully (FIN after queued bytes,
    /// then reaped once CLOSED); a listener stops listening and resets the connections
    /// nobody accepted; UDP and ICMP sockets go at once.
    pub fn release(&mut self, id: SocketId) -> Result<(), StackError> {
        let entry = self.entries.get_mut(&id).ok_or(StackError::NoSocket(id))?;
        match entry {
            Entry::Tcp(t) => {
                if t.released {
                    return Err(StackError::NoSocket(id));
                }
                t.released = true;
                let handle = t.handle;
                self.sockets.get_mut::<tcp::Socket>(handle).close();
                self.wakers.remove(&id);
            }
            Entry::Listener(_) => {
                let Some(Entry::Listener(l)) = self.entries.remove(&id) else {
                    unreachable!()
                };
                for handle in l.listening.into_iter().chain(l.half_open) {
                    self.sockets.get_mut::<tcp::Socket>(handle).abort();
                    self.sockets.remove(handle);
                }
                self.tcp_ports.remove(&l.port);
                self.syn_budget.remove(&l.port);
                self.wakers.remove(&id);
                for conn in l.accepted {
                    if let Ok(socket) = self.tcp_socket(conn) {
                        socket.abort();
                    }
                    let _ = self.release(conn);
                }
            }
            Entry::Udp { handle, port } => {
                let (handle, port) = (*handle, *port);
                self.sockets.remove(handle);
                self.udp_ports.remove(&port);
                self.entries.remove(&id);
                self.wakers.remove(&id);
            }
            Entry::Icmp { handle, .. } => {
                let handle = *handle;
                self.sockets.remove(handle);
                self.entries.remove(&id);
                self.wakers.remove(&id);
            }
        }
        Ok(())
    }

    /// After a poll: note state changes and failures, move listener sockets along
    /// (LISTEN -> SYN-RECEIVED -> accept queue), refill listeners, reap closed sockets.
    fn maintain(&mut self) {
        let mut accepted: Vec<(SocketId, SocketHandle, tcp::State)> = Vec::new();
        let mut reap: Vec<SocketId> = Vec::new();
        let mut refill: Vec<(SocketId, u16, usize)> = Vec::new();
        let mut dead: Vec<SocketHandle> = Vec::new();
        let rst_seen = std::mem::take(&mut self.rst_seen);
        for (&id, entry) in self.entries.iter_mut() {
            match entry {
                Entry::Tcp(t) => {
                    let socket = self.sockets.get_mut::<tcp::Socket>(t.handle);
                    if let (Some(l), Some(r)) = (socket.local_endpoint(), socket.remote_endpoint())
                    {
                        t.tuple = Some((l, r));
                    }
                    let state = socket.state();
                    if state != t.prev {
                        if state == tcp::State::Established {
                            t.established = true;
                        }
                        if state == tcp::State::Closed && t.failure.is_none() && !t.aborted {
                            t.failure = closed_failure(
                                t.prev,
                                t.tuple.is_some_and(|tu| rst_seen.contains(&tu)),
                            );
                        }
                        t.prev = state;
                    }
                    if t.released {
                        // Nobody reads any more: discard what arrives.
                        while socket
                            .recv(|b| (b.len(), ()))
                            .is_ok_and(|()| socket.can_recv())
                        {}
                        if state == tcp::State::Closed {
                            reap.push(id);
                        }
                    }
                }
                Entry::Listener(l) => {
                    let sockets = &self.sockets;
                    let state_of = |h: &SocketHandle| sockets.get::<tcp::Socket>(*h).state();
                    let (still, started): (Vec<_>, Vec<_>) = l
                        .listening
                        .iter()
                        .partition(|h| state_of(h) == tcp::State::Listen);
                    l.listening = still;
                    l.half_open.extend(started);
                    let mut half_open = Vec::with_capacity(l.half_open.len());
                    for h in std::mem::take(&mut l.half_open) {
                        match state_of(&h) {
                            tcp::State::Listen => l.listening.push(h),
                            tcp::State::SynReceived => half_open.push(h),
                            tcp::State::Closed => dead.push(h),
                            state => accepted.push((id, h, state)),
                        }
                    }
                    l.half_open = half_open;
                    let promoted = accepted.iter().filter(|a| a.0 == id).count();
                    let used = l.accepted.len() + promoted + l.half_open.len() + l.listening.len();
                    let missing = l.backlog.saturating_sub(used);
                    refill.push((id, l.port, missing));
                }
                Entry::Udp { .. } | Entry::Icmp { .. } => {}
            }
        }
        for h in dead {
            self.sockets.remove(h);
        }
        for id in reap {
            if let Some(Entry::Tcp(t)) = self.entries.remove(&id) {
                self.sockets.remove(t.handle);
                if t.port != 0 {
                    self.tcp_ports.remove(&t.port);
                }
            }
        }
        for (listener, handle, state) in accepted {
            let conn = self.new_id();
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            socket.register_recv_waker(&self.wakers[&conn]);
            socket.register_send_waker(&self.wakers[&conn]);
            let tuple = socket.local_endpoint().zip(socket.remote_endpoint());
            self.entries.insert(
                conn,
                Entry::Tcp(TcpEntry {
                    handle,
                    prev: state,
                    established: true,
                    failure: None,
                    released: false,
                    aborted: false,
                    tuple,
                    // The listener owns the port; accepted connections share it.
                    port: 0,
                }),
            );
            if let Some(Entry::Listener(l)) = self.entries.get_mut(&listener) {
                l.accepted.push_back(conn);
            }
            self.mark_ready(listener);
            self.mark_ready(conn);
        }
        for (listener, port, missing) in refill {
            for _ in 0..missing {
                let handle = self.new_listening_socket(listener, port);
                if let Some(Entry::Listener(l)) = self.entries.get_mut(&listener) {
                    l.listening.push(handle);
                }
            }
            if let Some(Entry::Listener(l)) = self.entries.get(&listener) {
                self.syn_budget.insert(port, l.listening.len());
            }
        }
    }

    /// Binds a UDP socket to `port` (0: an ephemeral one). Returns it and its port.
    pub fn udp_bind(&mut self, port: u16) -> Result<(SocketId, u16), StackError> {
        let port = if port == 0 {
            self.ephemeral_port(true)?
        } else if self.udp_ports.contains(&port) {
            return Err(StackError::AddrInUse(port));
        } else {
            port
        };
        let slots = (self.config.udp_buffer / 64).max(16);
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; slots],
                vec![0u8; self.config.udp_buffer],
            ),
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; slots],
                vec![0u8; self.config.udp_buffer],
            ),
        );
        socket
            .bind(IpListenEndpoint { addr: None, port })
            .map_err(|_| StackError::AddrInUse(port))?;
        let id = self.new_id();
        socket.register_recv_waker(&self.wakers[&id]);
        socket.register_send_waker(&self.wakers[&id]);
        let handle = self.sockets.add(socket);
        self.udp_ports.insert(port);
        self.entries.insert(id, Entry::Udp { handle, port });
        Ok((id, port))
    }

    fn udp_handle(&self, id: SocketId) -> Result<SocketHandle, StackError> {
        match self.entries.get(&id) {
            Some(Entry::Udp { handle, .. }) => Ok(*handle),
            Some(e) => Err(StackError::WrongKind(id, e.kind())),
            None => Err(StackError::NoSocket(id)),
        }
    }

    /// The largest UDP payload one packet to `dst` can carry at this MTU.
    pub fn max_datagram(&self, dst: IpAddr) -> usize {
        let overhead = if dst.is_ipv4() {
            IPV4_UDP_OVERHEAD
        } else {
            IPV6_UDP_OVERHEAD
        };
        self.config.mtu - overhead
    }

    /// Queues one datagram to `dst`.
    pub fn udp_send_to(
        &mut self,
        id: SocketId,
        data: &[u8],
        dst: SocketAddr,
    ) -> Result<(), StackError> {
        let handle = self.udp_handle(id)?;
        let max = self.max_datagram(dst.ip());
        if data.len() > max {
            return Err(StackError::TooLarge {
                len: data.len(),
                max,
            });
        }
        if dst.port() == 0 || dst.ip().is_unspecified() {
            return Err(StackError::InvalidDestination(dst));
        }
        if self.local_address(dst.ip()).is_none() {
            return Err(StackError::Unreachable(dst.ip()));
        }
        let socket = self.sockets.get_mut::<udp::Socket>(handle);
        socket
            .send_slice(data, IpEndpoint::new(dst.ip().into(), dst.port()))
            .map_err(|e| match e {
                udp::SendError::BufferFull => StackError::WouldBlock,
                udp::SendError::Unaddressable => StackError::InvalidDestination(dst),
            })
    }

    /// Takes one received datagram: its bytes, its source and the address it was sent to.
    pub fn udp_recv_from(&mut self, id: SocketId) -> Result<Option<Datagram>, StackError> {
        let handle = self.udp_handle(id)?;
        let socket = self.sockets.get_mut::<udp::Socket>(handle);
        Ok(socket.recv().ok().map(|(data, meta)| Datagram {
            data: data.to_vec(),
            src: to_socket_addr(meta.endpoint),
            dst: meta.local_address.map(to_ip),
        }))
    }

    /// Opens an ICMP socket for echo (ping) with a fresh identifier.
    pub fn icmp_open(&mut self) -> Result<SocketId, StackError> {
        let ident = self.next_ident;
        self.next_ident = self.next_ident.wrapping_add(1).max(1);
        let mut socket = icmp::Socket::new(
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 64], vec![0u8; 64 * 1024]),
            icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 64], vec![0u8; 64 * 1024]),
        );
        socket
            .bind(icmp::Endpoint::Ident(ident))
            .map_err(|_| StackError::Config("ICMP bind failed".into()))?;
        let id = self.new_id();
        socket.register_recv_waker(&self.wakers[&id]);
        let handle = self.sockets.add(socket);
        self.entries.insert(id, Entry::Icmp { handle, ident });
        Ok(id)
    }

    fn icmp_handle(&self, id: SocketId) -> Result<(SocketHandle, u16), StackError> {
        match self.entries.get(&id) {
            Some(Entry::Icmp { handle, ident }) => Ok((*handle, *ident)),
            Some(e) => Err(StackError::WrongKind(id, e.kind())),
            None => Err(StackError::NoSocket(id)),
        }
    }

    /// Queues an ICMP echo request to `dst` with sequence number `seq`.
    pub fn ping_send(
        &mut self,
        id: SocketId,
        dst: IpAddr,
        seq: u16,
        payload: &[u8],
    ) -> Result<(), StackError> {
        let (handle, ident) = self.icmp_handle(id)?;
        let src = self
            .local_address(dst)
            .ok_or(StackError::Unreachable(dst))?;
        let max = self.config.mtu - if dst.is_ipv4() { 28 } else { 48 };
        if payload.len() > max {
            return Err(StackError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let caps = ChecksumCapabilities::default();
        let socket = self.sockets.get_mut::<icmp::Socket>(handle);
        match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(d)) => {
                let repr = Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data: payload,
                };
                let buf = socket
                    .send(repr.buffer_len(), IpAddress::Ipv4(d))
                    .map_err(|_| StackError::WouldBlock)?;
                repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let repr = Icmpv6Repr::EchoRequest {
                    ident,
                    seq_no: seq,
                    data: payload,
                };
                let buf = socket
                    .send(repr.buffer_len(), IpAddress::Ipv6(d))
                    .map_err(|_| StackError::WouldBlock)?;
                repr.emit(&s, &d, &mut Icmpv6Packet::new_unchecked(buf), &caps);
            }
            _ => return Err(StackError::Unreachable(dst)),
        }
        Ok(())
    }

    /// Takes one echo reply: who answered, its sequence number and payload.
    pub fn ping_recv(
        &mut self,
        id: SocketId,
    ) -> Result<Option<(IpAddr, u16, Vec<u8>)>, StackError> {
        let (handle, ident) = self.icmp_handle(id)?;
        let local_v6 = self.config.addresses.iter().find_map(|(ip, _)| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let socket = self.sockets.get_mut::<icmp::Socket>(handle);
        while let Ok((data, from)) = socket.recv() {
            let caps = ChecksumCapabilities::default();
            let reply = match from {
                IpAddress::Ipv4(_) => Icmpv4Packet::new_checked(data)
                    .and_then(|p| Icmpv4Repr::parse(&p, &caps))
                    .ok()
                    .and_then(|r| match r {
                        Icmpv4Repr::EchoReply {
                            ident: i,
                            seq_no,
                            data,
                        } if i == ident => Some((seq_no, data.to_vec())),
                        _ => None,
                    }),
                IpAddress::Ipv6(src) => {
                    let Some(dst) = local_v6 else { continue };
                    Icmpv6Packet::new_checked(data)
                        .and_then(|p| Icmpv6Repr::parse(&src, &dst, &p, &caps))
                        .ok()
                        .and_then(|r| match r {
                            Icmpv6Repr::EchoReply {
                                ident: i,
                                seq_no,
                                data,
                            } if i == ident => Some((seq_no, data.to_vec())),
                            _ => None,
                        })
                }
            };
            if let Some((seq, payload)) = reply {
                return Ok(Some((to_ip(from), seq, payload)));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
