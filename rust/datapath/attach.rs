//! Local attachments: where a payload's packets enter and leave the datapath.
//!
//! - [`Link::Tun`]: a TUN device (bare IP packets), for processes and containers in a
//!   network namespace;
//! - the VM links: the ExeUnit side of yagna's runtime endpoint, carrying Ethernet frames
//!   exactly as `ya-runtime-vm` (QEMU `-netdev socket`) expects: over UDP one datagram is
//!   one frame; over TCP each frame is prefixed by its length as a u32 big-endian (QEMU's
//!   stream framing); over a unix stream socket by a u16 in native byte order (yagna's
//!   legacy framing).
//!
//! An attachment only moves frames and counts them; which network a frame belongs to,
//! and where it goes from there, is the worker's business ([`super::worker`]).

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::frames::Frames;
use super::offload::{Coalescer, VNET_HDR_LEN, VnetHdr, segment};
use super::sys;
use crate::router::Frame;

/// The largest frame an attachment reads or writes (an IP packet plus an Ethernet header).
pub const MAX_FRAME: usize = crate::wire::MAX_PACKET_LEN + crate::wire::ETHERNET_HEADER_LEN;

/// How long `tcp-connect://` waits for the runtime (yagna's ExeUnit waits 2 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes a stream link may hold unsent before frames are dropped (counted).
const STREAM_BACKLOG: usize = 4 << 20;

/// What a payload's frames look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentKind {
    /// Bare IP packets from a TUN device.
    Tun,
    /// Ethernet frames from a VM runtime.
    Vm,
}

impl AttachmentKind {
    /// `"tun"` or `"vm"`.
    pub fn name(self) -> &'static str {
        match self {
            AttachmentKind::Tun => "tun",
            AttachmentKind::Vm => "vm",
        }
    }
}

/// Why an attachment could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The endpoint URL is not one of the supported forms.
    #[error(
        "invalid VM endpoint {0:?}: expected udp://HOST:PORT, tcp-listen://HOST:PORT, \
         tcp-connect://HOST:PORT or unix://PATH"
    )]
    BadUrl(String),
    /// The device or socket could not be opened, bound or connected.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
}

impl AttachError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        AttachError::Io {
            what: what.into(),
            source,
        }
    }

    /// The underlying I/O error, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            AttachError::Io { source, .. } => Some(source),
            AttachError::BadUrl(_) => None,
        }
    }
}

/// Counters of one attachment. "In" is payload → VPN, "out" is VPN → payload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachmentStats {
    /// Frames read from the payload.
    pub packets_in: u64,
    /// Bytes read from the payload.
    pub bytes_in: u64,
    /// Frames written to the payload.
    pub packets_out: u64,
    /// Bytes written to the payload.
    pub bytes_out: u64,
    /// Frames from the payload that no network of the attachment takes (wrong family or
    /// range, unsupported EtherType, truncated).
    pub no_network: u64,
    /// Frames from the payload the router refused (spoofed source, unknown destination...).
    pub router_drops: u64,
    /// Frames for the payload that could not be written (device gone, runtime not yet
    /// connected, stream backlog full).
    pub write_drops: u64,
    /// Malformed stream framing from the runtime (the connection is closed).
    pub framing_errors: u64,
}

impl AttachmentStats {
    /// Counts frames read from the payload, of these lengths.
    pub fn count_in(&mut self, lens: &[usize]) {
        self.packets_in += lens.len() as u64;
        self.bytes_in += lens.iter().map(|&n| n as u64).sum::<u64>();
    }

    /// Every drop, whatever the reason.
    pub fn drops(&self) -> u64 {
        self.no_network + self.router_drops + self.write_drops + self.framing_errors
    }
}

/// How a stream link delimits frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// u32 big-endian (QEMU `-netdev socket`, yagna's TCP endpoints).
    U32Be,
    /// u16 native-endian (yagna's unix stream endpoint).
    U16Ne,
}

impl Prefix {
    fn len(self) -> usize {
        match self {
            Prefix::U32Be => 4,
            Prefix::U16Ne => 2,
        }
    }

    fn decode(self, b: &[u8]) -> usize {
        match self {
            Prefix::U32Be => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
            Prefix::U16Ne => u16::from_ne_bytes([b[0], b[1]]) as usize,
        }
    }

    fn max(self) -> usize {
        match self {
            Prefix::U32Be => MAX_FRAME,
            Prefix::U16Ne => MAX_FRAME.min(u16::MAX as usize),
        }
    }

    fn encode(self, len: usize, out: &mut Vec<u8>) {
        match self {
            Prefix::U32Be => out.extend_from_slice(&(len as u32).to_be_bytes()),
            Prefix::U16Ne => out.extend_from_slice(&(len as u16).to_ne_bytes()),
        }
    }
}

#[derive(Debug)]
enum StreamIo {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl StreamIo {
    fn fd(&self) -> RawFd {
        match self {
            StreamIo::Tcp(s) => s.as_raw_fd(),
            StreamIo::Unix(s) => s.as_raw_fd(),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.read(buf),
            StreamIo::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.write(buf),
            StreamIo::Unix(s) => s.write(buf),
        }
    }
}

/// A length-prefixed stream of frames, non-blocking both ways.
#[derive(Debug)]
struct FrameStream {
    io: StreamIo,
    prefix: Prefix,
    rx: Vec<u8>,
    rx_len: usize,
    tx: Vec<u8>,
    tx_at: usize,
    closed: bool,
}

impl FrameStream {
    fn new(io: StreamIo, prefix: Prefix) -> Self {
        FrameStream {
            io,
            prefix,
            rx: vec![0u8; 2 * (MAX_FRAME + 4)],
            rx_len: 0,
            tx: Vec::new(),
            tx_at: 0,
            closed: false,
        }
    }

    /// Reads what the socket has and cuts whole frames out of it into `bufs`.
    fn read_frames(&mut self, max: usize, frames: &mut Frames, stats: &mut AttachmentStats) {
        let p = self.prefix.len();
        loop {
            // Whole frames first, so a full buffer always makes progress.
            while frames.len() < max && self.rx_len >= p {
                let n = self.prefix.decode(&self.rx[..p]);
                if n > self.prefix.max() {
                    stats.framing_errors += 1;
                    self.closed = true;
                    return;
                }
                if self.rx_len < p + n {
                    break;
                }
                // n is at most the prefix's maximum, itself at most MAX_FRAME.
                let pushed = frames.push_copy(&self.rx[p..p + n]);
                debug_assert!(pushed);
                self.rx.copy_within(p + n..self.rx_len, 0);
                self.rx_len -= p + n;
            }
            if frames.len() >= max || self.closed {
                return;
            }
            match self.io.read(&mut self.rx[self.rx_len..]) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => self.rx_len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8], stats: &mut AttachmentStats) -> bool {
        if self.closed
            || frame.len() > self.prefix.max()
            || self.tx.len() - self.tx_at + frame.len() > STREAM_BACKLOG
        {
            stats.write_drops += 1;
            return false;
        }
        self.prefix.encode(frame.len(), &mut self.tx);
        self.tx.extend_from_slice(frame);
        self.flush();
        true
    }

    fn flush(&mut self) {
        while self.tx_at < self.tx.len() && !self.closed {
            match self.io.write(&self.tx[self.tx_at..]) {
                Ok(0) => self.closed = true,
                Ok(n) => self.tx_at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.closed = true,
            }
        }
        if self.tx_at == self.tx.len() {
            self.tx.clear();
            self.tx_at = 0;
        } else if self.tx_at > STREAM_BACKLOG {
            self.tx.drain(..self.tx_at);
            self.tx_at = 0;
        }
    }

    fn wants_write(&self) -> bool {
        self.tx_at < self.tx.len()
    }
}

/// The I/O behind an attachment.
#[derive(Debug)]
enum Link {
    Tun {
        /// Queue 0 (the only one of a single-queue device).
        file: File,
        /// Queues 1.. of a multi-queue device: the kernel spreads the packets it sends by
        /// flow over all of them; each is read by a datapath thread of its own.
        queues: Vec<File>,
        /// Datapath threads read the queues: the node's thread only writes.
        threaded: bool,
        /// Packets carry a `virtio_net_hdr` (see [`super::offload`]).
        vnet: bool,
        coalescer: Coalescer,
        /// One read of up to 64 KiB (with offloads).
        scratch: Vec<u8>,
    },
    Udp {
        socket: UdpSocket,
        /// The runtime's address, learnt from the last frame it sent.
        peer: Option<SocketAddr>,
    },
    Listen {
        listener: TcpListener,
        conn: Option<FrameStream>,
    },
    Stream(FrameStream),
}

/// One attachment: a link, the networks it belongs to and its counters.
#[derive(Debug)]
pub struct Attachment {
    id: u32,
    kind: AttachmentKind,
    name: String,
    networks: Vec<String>,
    link: Link,
    /// The device or socket failed for good (deleted device): no longer polled.
    broken: bool,
    /// Counters (the worker adds routing drops).
    pub stats: AttachmentStats,
    /// Where an Ethernet frame is put together before it is written.
    scratch: Vec<u8>,
}

fn parse_addr(url: &str, rest: &str) -> Result<SocketAddr, AttachError> {
    rest.to_socket_addrs()
        .map_err(|e| AttachError::io(format!("VM endpoint {url}: cannot resolve {rest:?}"), e))?
        .next()
        .ok_or_else(|| AttachError::BadUrl(url.to_owned()))
}

impl Attachment {
    /// A TUN device named `name` in the calling thread's network namespace, with TSO/GRO
    /// offloads if `offload` and the kernel agrees, and `queues` queues (more than one:
    /// a multi-queue device, whose queues datapath threads read in parallel; see
    /// [`Attachment::tx_queues`]).
    pub fn tun(
        id: u32,
        name: &str,
        networks: Vec<String>,
        offload: bool,
        queues: usize,
    ) -> Result<Self, AttachError> {
        // Queues are for datapath threads, which need the offloads' whole reads.
        let queues = if offload { queues.max(1) } else { 1 };
        let (mut files, uso) = sys::open_tun(name, offload, queues).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (creating a TUN device needs CAP_NET_ADMIN: run the daemon as root)"
                }
                Some(libc::EBUSY) => " (an interface of that name is in use)",
                Some(libc::ENOENT) | Some(libc::ENODEV) => {
                    " (no /dev/net/tun: load the tun module)"
                }
                _ => "",
            };
            AttachError::io(format!("TUN device {name:?}{hint}"), e)
        })?;
        let file = files.remove(0);
        Ok(Attachment {
            id,
            kind: AttachmentKind::Tun,
            name: name.to_owned(),
            networks,
            link: Link::Tun {
                file,
                queues: files,
                threaded: false,
                vnet: offload,
                coalescer: Coalescer::new(uso),
                scratch: if offload {
                    vec![0u8; VNET_HDR_LEN + MAX_FRAME]
                } else {
                    Vec::new()
                },
            },
            broken: false,
            stats: AttachmentStats::default(),
            scratch: Vec::new(),
        })
    }

    /// A VM frame endpoint from its URL (see the module docs). The attachment's name is
    /// the URL to hand to the runtime (with the port actually bound).
    pub fn vm(id: u32, url: &str, networks: Vec<String>) -> Result<Self, AttachError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| AttachError::BadUrl(url.to_owned()))?;
        let (link, name) = match scheme {
            "udp" => {
                let addr = parse_addr(url, rest)?;
                let socket = super::bind_udp(addr)
                    .map_err(|e| AttachError::io(format!("VM endpoint {url}: bind"), e))?;
                let local = socket
                    .local_addr()
                    .map_err(|e| AttachError::io(url.to_owned(), e))?;
                (Link::Udp { socket, peer: None }, format!("udp://{local}"))
            }
            "tcp-listen" => {
                let addr = parse_addr(url, rest)?;
                let listener = TcpListener::bind(addr)
                    .map_err(|e| AttachError::io(format!("VM endpoint {url}: bind"), e))?;
                listener
                    .set_nonblocking(true)
                    .map_err(|e| AttachError::io(url.to_owned(), e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| AttachError::io(url.to_owned(), e))?;
                (
                    Link::Listen {
                        listener,
                        conn: None,
                    },
                    format!("tcp-listen://{local}"),
                )
            }
            "tcp-connect" => {
                let addr = parse_addr(url, rest)?;
                let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                    .map_err(|e| AttachError::io(format!("VM endpoint {url} is unreachable"), e))?;
                let _ = stream.set_nodelay(true);
                stream
                    .set_nonblocking(true)
                    .map_err(|e| AttachError::io(url.to_owned(), e))?;
                (
                    Link::Stream(FrameStream::new(StreamIo::Tcp(stream), Prefix::U32Be)),
                    url.to_owned(),
                )
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(AttachError::BadUrl(url.to_owned()));
                }
                let stream = UnixStream::connect(rest)
                    .map_err(|e| AttachError::io(format!("VM endpoint {url} is unreachable"), e))?;
                stream
                    .set_nonblocking(true)
                    .map_err(|e| AttachError::io(url.to_owned(), e))?;
                (
                    Link::Stream(FrameStream::new(StreamIo::Unix(stream), Prefix::U16Ne)),
                    url.to_owned(),
                )
            }
            _ => return Err(AttachError::BadUrl(url.to_owned())),
        };
        Ok(Attachment {
            id,
            kind: AttachmentKind::Vm,
            name,
            networks,
            link,
            broken: false,
            stats: AttachmentStats::default(),
            scratch: Vec::new(),
        })
    }

    /// True once the device or socket failed for good (e.g. the TUN device was deleted).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Stops polling a descriptor that reports errors and has nothing to read.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// The same attachment under another id and networks (made before its id was known).
    pub fn renumbered(mut self, id: u32, networks: Vec<String>) -> Self {
        self.id = id;
        self.networks = networks;
        self
    }

    /// True for a TUN device with offloads (`IFF_VNET_HDR`: TSO in, GRO out).
    pub fn offload(&self) -> bool {
        matches!(self.link, Link::Tun { vnet: true, .. })
    }

    /// The number of queues of a TUN device (1 for anything else).
    pub fn queue_count(&self) -> usize {
        match &self.link {
            Link::Tun { queues, .. } => 1 + queues.len(),
            _ => 1,
        }
    }

    /// For a multi-queue TUN device with offloads: a descriptor for each queue, for the
    /// datapath threads that read them ([`read_tun_batch`]); from then on the node's own
    /// thread only writes to the device. None for anything else.
    pub fn tx_queues(&mut self) -> Option<io::Result<Vec<File>>> {
        match &mut self.link {
            Link::Tun {
                file,
                queues,
                threaded,
                vnet: true,
                ..
            } if !queues.is_empty() => {
                let dups = std::iter::once(&*file)
                    .chain(queues.iter())
                    .map(File::try_clone)
                    .collect::<io::Result<Vec<File>>>();
                *threaded = dups.is_ok();
                Some(dups)
            }
            _ => None,
        }
    }

    /// For a TUN device with offloads: a writer of its own for a receiving datapath
    /// thread, which then writes the frames it opened outside the node's lock (see
    /// [`TunWriter`]). None for anything else.
    pub fn tun_writer(&self) -> Option<io::Result<TunWriter>> {
        match &self.link {
            Link::Tun {
                file,
                queues,
                vnet: true,
                coalescer,
                ..
            } => Some(
                std::iter::once(file)
                    .chain(queues)
                    .map(File::try_clone)
                    .collect::<io::Result<Vec<File>>>()
                    .map(|files| TunWriter {
                        files,
                        coalescer: Coalescer::new(coalescer.merges_udp()),
                        frames: Frames::default(),
                        stats: AttachmentStats::default(),
                    }),
            ),
            _ => None,
        }
    }

    /// The attachment's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// TUN or VM.
    pub fn kind(&self) -> AttachmentKind {
        self.kind
    }

    /// The TUN device's name, or the VM endpoint's URL.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The networks whose frames this attachment carries, in order of preference.
    pub fn networks(&self) -> &[String] {
        &self.networks
    }

    /// Runs `f` on the attachment with its networks lent out beside it (for callers that
    /// need both the names and the attachment mutably, without copying the names).
    pub(crate) fn with_networks<R>(&mut self, f: impl FnOnce(&mut Self, &[String]) -> R) -> R {
        let networks = std::mem::take(&mut self.networks);
        let r = f(self, &networks);
        self.networks = networks;
        r
    }

    /// Stops carrying `network`'s frames.
    pub fn forget_network(&mut self, network: &str) {
        self.networks.retain(|n| n != network);
    }

    /// The descriptors to watch, each with whether it waits for room to write.
    pub fn poll_fds(&self, out: &mut Vec<(RawFd, bool)>) {
        if self.broken {
            return;
        }
        match &self.link {
            Link::Tun { threaded: true, .. } => {}
            Link::Tun { file, .. } => out.push((file.as_raw_fd(), false)),
            Link::Udp { socket, .. } => out.push((socket.as_raw_fd(), false)),
            Link::Listen { listener, conn } => {
                out.push((listener.as_raw_fd(), false));
                if let Some(c) = conn {
                    out.push((c.io.fd(), c.wants_write()));
                }
            }
            Link::Stream(s) => {
                if !s.closed {
                    out.push((s.io.fd(), s.wants_write()));
                }
            }
        }
    }

    /// Reads about `max` frames without blocking into `frames` (cleared first). A TUN
    /// device with offloads may give a few more than `max`: one read is segmented whole.
    pub fn read_frames(&mut self, max: usize, frames: &mut Frames) {
        frames.clear();
        let stats = &mut self.stats;
        match &mut self.link {
            Link::Tun {
                file,
                vnet: true,
                scratch,
                ..
            } => {
                let (bad, broken) = read_tun_batch(file, scratch, max, frames);
                stats.no_network += bad;
                self.broken |= broken;
            }
            Link::Tun { file, .. } => {
                while frames.len() < max {
                    match file.read(frames.next_mut()) {
                        Ok(n) if n > 0 => frames.push(n),
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            self.broken = true;
                            break;
                        }
                    }
                }
            }
            Link::Udp { socket, peer } => {
                while frames.len() < max {
                    match socket.recv_from(frames.next_mut()) {
                        Ok((n, from)) => {
                            *peer = Some(from);
                            if n > 0 {
                                frames.push(n);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            Link::Listen { listener, conn } => {
                // The runtime (re)connects: the newest connection wins, as a restarted
                // QEMU would expect.
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    if stream.set_nonblocking(true).is_ok() {
                        *conn = Some(FrameStream::new(StreamIo::Tcp(stream), Prefix::U32Be));
                    }
                }
                if let Some(c) = conn {
                    c.read_frames(max, frames, stats);
                    if c.closed {
                        *conn = None;
                    }
                }
            }
            Link::Stream(s) => s.read_frames(max, frames, stats),
        }
        self.stats.count_in(frames.lens());
    }

    /// Writes one frame to the payload (counted; a frame that cannot be written is
    /// dropped and counted).
    pub fn write_frame(&mut self, frame: &[u8]) {
        self.write_frames(std::iter::once(frame));
    }

    /// Writes frames to the payload in order (a TUN device with offloads gets each TCP
    /// flow's consecutive segments, and each UDP flow's same-sized datagrams, coalesced
    /// into one write).
    pub fn write_frames<'f>(&mut self, frames: impl IntoIterator<Item = &'f [u8]>) {
        for frame in frames {
            self.queue_frame(Frame {
                header: None,
                packet: frame,
            });
        }
        self.end_writes();
    }

    /// Writes a routed frame to the payload, or (a TUN device with offloads) holds a TCP
    /// segment to coalesce with its flow's next ones: [`Attachment::end_writes`] must
    /// follow the batch.
    pub fn queue_frame(&mut self, frame: Frame<'_>) {
        if let Link::Tun {
            file,
            queues,
            vnet: true,
            coalescer,
            ..
        } = &mut self.link
            && frame.header.is_none()
        {
            let stats = &mut self.stats;
            coalescer.push(frame.packet, &mut |hdr, packet| {
                write_tun(flow_queue(file, queues, packet), hdr, packet, stats);
            });
            return;
        }
        match frame.header {
            None => self.write_one(frame.packet),
            Some(_) => {
                let mut buf = std::mem::take(&mut self.scratch);
                buf.resize(frame.len(), 0);
                frame.write_to(&mut buf);
                self.write_one(&buf);
                self.scratch = buf;
            }
        }
    }

    /// Writes out what [`Attachment::queue_frame`] held.
    pub fn end_writes(&mut self) {
        if let Link::Tun {
            file,
            queues,
            vnet: true,
            coalescer,
            ..
        } = &mut self.link
        {
            let stats = &mut self.stats;
            coalescer.finish(&mut |hdr, packet| {
                write_tun(flow_queue(file, queues, packet), hdr, packet, stats)
            });
        }
    }

    fn write_one(&mut self, frame: &[u8]) {
        let ok = match &mut self.link {
            Link::Tun { file, .. } => loop {
                match file.write(frame) {
                    Ok(_) => break true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break false,
                }
            },
            Link::Udp { socket, peer } => match peer {
                Some(addr) => socket.send_to(frame, *addr).is_ok(),
                None => false,
            },
            Link::Listen { conn, .. } => match conn {
                Some(c) => c.write_frame(frame, &mut self.stats),
                None => false,
            },
            Link::Stream(s) => s.write_frame(frame, &mut self.stats),
        };
        if ok {
            self.stats.packets_out += 1;
            self.stats.bytes_out += frame.len() as u64;
        } else if !matches!(
            self.link,
            Link::Listen { conn: Some(_), .. } | Link::Stream(_)
        ) {
            // Stream links count their own refusals.
            self.stats.write_drops += 1;
        }
    }

    /// Sends what a stream link still holds (when its socket has room).
    pub fn flush(&mut self) {
        match &mut self.link {
            Link::Listen { conn: Some(c), .. } => c.flush(),
            Link::Stream(s) => s.flush(),
            _ => {}
        }
    }
}

/// A receiving datapath thread's own way into a TUN device with offloads
/// ([`Attachment::tun_writer`]): the frames it is given under the node's lock are copied
/// here, and coalesced and written ([`TunWriter::write`]) after the lock is let go, so
/// two threads write (and the kernel takes in) two lanes' packets at once. Its counts
/// go to the attachment's with [`TunWriter::fold_stats`].
#[derive(Debug)]
pub struct TunWriter {
    /// A descriptor of each queue, queue 0 first.
    files: Vec<File>,
    coalescer: Coalescer,
    frames: Frames,
    /// Counted since the last [`TunWriter::fold_stats`].
    stats: AttachmentStats,
}

impl TunWriter {
    /// Keeps a copy of `packet` for the next [`TunWriter::write`] (a packet longer than
    /// any TUN frame is counted as a write drop).
    pub fn push(&mut self, packet: &[u8]) {
        if !self.frames.push_copy(packet) {
            self.stats.write_drops += 1;
        }
    }

    /// Frames waiting for [`TunWriter::write`].
    pub fn pending(&self) -> usize {
        self.frames.len()
    }

    /// Writes what was pushed, each flow's segments coalesced, through the queue of each
    /// flow (as [`Attachment::queue_frame`] does).
    pub fn write(&mut self) {
        let TunWriter {
            files,
            coalescer,
            frames,
            stats,
        } = self;
        let Some((first, rest)) = files.split_first_mut() else {
            return;
        };
        let mut write = |hdr: &[u8], packet: &[u8]| {
            write_tun(
                flow_queue(&mut *first, &mut *rest, packet),
                hdr,
                packet,
                stats,
            );
        };
        for k in 0..frames.len() {
            coalescer.push(frames.frame(k), &mut write);
        }
        coalescer.finish(&mut write);
        frames.clear();
    }

    /// Whether it counted writes that its attachment has not been told of.
    pub fn has_counts(&self) -> bool {
        self.stats.packets_out != 0 || self.stats.write_drops != 0
    }

    /// Adds what it wrote (and dropped) since the last call to `into`.
    pub fn fold_stats(&mut self, into: &mut AttachmentStats) {
        let s = std::mem::take(&mut self.stats);
        into.packets_out += s.packets_out;
        into.bytes_out += s.bytes_out;
        into.write_drops += s.write_drops;
    }
}

/// Reads up to about `max` packets from a TUN queue with offloads, each read segmented
/// whole into `frames` (cleared first; see [`Attachment::read_frames`]). Returns the
/// number of reads that could not be used (no or a bad header, a packet that cannot be
/// segmented), and whether the device failed for good.
pub fn read_tun_batch(
    file: &mut File,
    scratch: &mut [u8],
    max: usize,
    frames: &mut Frames,
) -> (u64, bool) {
    frames.clear();
    let mut bad = 0;
    while frames.len() < max {
        match file.read(scratch) {
            Ok(n) if n > VNET_HDR_LEN => {
                let Some(hdr) = VnetHdr::parse(scratch) else {
                    continue;
                };
                let packet = &mut scratch[VNET_HDR_LEN..n];
                if !segment(&hdr, packet, frames) {
                    bad += 1;
                }
            }
            Ok(0) => break,
            Ok(_) => bad += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return (bad, true),
        }
    }
    (bad, false)
}

/// The queue of a multi-queue TUN device to write `packet` through: one per flow (by a
/// hash of its addresses and ports that is the same both ways). The kernel notes which
/// queue wrote a flow and sends the flow's next packets out of the same one, so the
/// flows a payload sends spread over the datapath threads instead of all following the
/// queue the answers were written to.
fn flow_queue<'f>(file: &'f mut File, queues: &'f mut [File], packet: &[u8]) -> &'f mut File {
    if queues.is_empty() {
        return file;
    }
    let i = super::offload::flow_hash(packet) as usize % (1 + queues.len());
    if i == 0 { file } else { &mut queues[i - 1] }
}

/// One write (virtio-net header, packet) to a TUN device with offloads, counted.
fn write_tun(file: &mut File, hdr: &[u8], packet: &[u8], stats: &mut AttachmentStats) {
    let iov = [IoSlice::new(hdr), IoSlice::new(packet)];
    let ok = loop {
        match file.write_vectored(&iov) {
            Ok(_) => break true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    if ok {
        stats.packets_out += 1;
        stats.bytes_out += packet.len() as u64;
    } else {
        stats.write_drops += 1;
    }
}
