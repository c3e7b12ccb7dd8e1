//! The datapath thread: moves packets between local attachments and the encrypted UDP
//! transport without Python.
//!
//! A [`Worker`] owns a [`UdpNode`] behind a mutex and runs one thread that waits (`ppoll`)
//! on the node's UDP socket, every attachment's descriptors and a wake-up socket, with the
//! node's next timer as the timeout. Frames a TUN device or VM endpoint sends are routed
//! to their network and sent in batches; frames that arrive for a network with a native
//! attachment are written to it straight away. Whatever is left for Python (frames of
//! networks served by a userspace stack, control messages, peer events) is queued, and a
//! byte on the notify socket (one per batch, not per packet) tells the event loop to
//! [`Worker::take_inbound`].
//!
//! More threads share the work when asked: a multi-queue TUN device gets a sending thread
//! per queue ([`Worker::attach_tun`]), which names its queue as the lane of what it seals,
//! and a node bound with lanes ([`UdpNode::bind_lanes`]) a receiving thread per lane after
//! the first ([`Worker::start`]). Each does its I/O without the lock and takes it once per
//! batch to route or open.
//!
//! Python configures the node through [`Worker::with`] (which wakes the thread so a new
//! deadline or descriptor is seen) and never touches a packet of an attached network.

use std::fs::File;
use std::io;
use std::net::{IpAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use super::attach::{
    AttachError, Attachment, AttachmentKind, MAX_FRAME, TunWriter, read_tun_batch,
};
use super::offload::VNET_HDR_LEN;
use super::{DatapathError, Frames, Inbound, Lane, SealPlan, Sink, UdpNode, sys};
use crate::node_id::NodeId;
use crate::router::Frame;
use crate::tunnel::Event;

/// Frames read from one attachment per round (then the other descriptors get a turn).
const ATTACHMENT_BATCH: usize = 64;
/// Datagrams read from the UDP socket per round.
const SOCKET_BATCH: usize = 256;
/// The longest the thread sleeps without looking at its timers.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long the thread keeps polling without sleeping after the last packet, unless
/// `GOLEM_VPN_SPIN_US` says otherwise. Off by default: on a 2-core machine a spinning
/// datapath thread takes the core the packet's receiver needs, and ping RTTs got worse
/// (benches/RESULTS.md); on a machine with cores to spare it can shave wake-up latency.
const SPIN: Duration = Duration::ZERO;

/// The most datapath threads one TUN attachment gets.
pub const MAX_TUN_QUEUES: usize = 16;

/// How many queues (and datapath threads reading them) a TUN attachment gets unless told:
/// `GOLEM_VPN_WORKERS` (1 to [`MAX_TUN_QUEUES`]), else 1.
pub fn default_tun_queues() -> usize {
    std::env::var("GOLEM_VPN_WORKERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, MAX_TUN_QUEUES))
}

/// [`SPIN`], or `GOLEM_VPN_SPIN_US` microseconds (at most one second).
fn spin_time() -> Duration {
    std::env::var("GOLEM_VPN_SPIN_US")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(SPIN, |us| Duration::from_micros(us.min(1_000_000)))
}

/// Why an attachment was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A network named for the attachment is not on this node.
    #[error("network {0:?} is not on this node")]
    UnknownNetwork(String),
    /// A network already has a native attachment.
    #[error("network {network:?} is already attached (attachment {attachment})")]
    AlreadyAttached {
        /// The network.
        network: String,
        /// The attachment that has it.
        attachment: u32,
    },
    /// An attachment needs at least one network.
    #[error("an attachment needs at least one network")]
    NoNetwork,
    /// The device or endpoint could not be made.
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// Everything the worker thread and Python share, behind one mutex.
#[derive(Debug)]
pub struct State {
    node: UdpNode,
    attachments: FxHashMap<u32, Attachment>,
    by_network: FxHashMap<String, u32>,
    /// Detached attachments, closed by the thread once it is out of `ppoll` (so a
    /// descriptor number is never reused under a poll that still watches it).
    closing: Vec<Attachment>,
    queue: Inbound,
    next_id: u32,
    /// The batch the node's thread read last, and its plan (see [`State::pump`]).
    frames: Frames,
    plan: SealPlan,
    /// Attachments written to in this round (their held segments go out at its end).
    touched: Vec<u32>,
    /// The threads reading each multi-queue TUN attachment's queues.
    tx: FxHashMap<u32, TxThreads>,
    /// Threads of detached attachments, told to stop (joined when the worker stops).
    tx_retired: Vec<TxThreads>,
}

/// The datapath threads of one multi-queue TUN attachment: each reads one queue, routes
/// under the lock and seals and sends outside it ([`SealPlan`]).
#[derive(Debug)]
struct TxThreads {
    /// Packets each thread has read from its queue.
    packets: Arc<[AtomicU64]>,
    stop: Arc<AtomicBool>,
    wakes: Vec<UnixDatagram>,
    threads: Vec<JoinHandle<()>>,
}

impl TxThreads {
    fn signal(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakes {
            let _ = w.send(&[1]);
        }
    }

    fn join(self) {
        self.signal();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl State {
    fn new(node: UdpNode) -> Self {
        State {
            node,
            attachments: FxHashMap::default(),
            by_network: FxHashMap::default(),
            closing: Vec::new(),
            queue: Inbound::default(),
            next_id: 1,
            frames: Frames::default(),
            plan: SealPlan::default(),
            touched: Vec::new(),
            tx: FxHashMap::default(),
            tx_retired: Vec::new(),
        }
    }

    /// The node (routers, tunnel endpoint, relay).
    pub fn node(&self) -> &UdpNode {
        &self.node
    }

    /// The node, to change.
    pub fn node_mut(&mut self) -> &mut UdpNode {
        &mut self.node
    }

    /// Attaches what `make` opens (given the new id) to `networks`, which must be on
    /// the node and not attached yet.
    pub fn attach(
        &mut self,
        networks: Vec<String>,
        make: impl FnOnce(u32, Vec<String>) -> Result<Attachment, AttachError>,
    ) -> Result<u32, WorkerError> {
        if networks.is_empty() {
            return Err(WorkerError::NoNetwork);
        }
        for network in &networks {
            if self.node.router(network).is_none() {
                return Err(WorkerError::UnknownNetwork(network.clone()));
            }
            if let Some(&attachment) = self.by_network.get(network) {
                return Err(WorkerError::AlreadyAttached {
                    network: network.clone(),
                    attachment,
                });
            }
        }
        let id = self.next_id;
        let attachment = make(id, networks.clone())?;
        self.next_id += 1;
        for network in networks {
            self.by_network.insert(network, id);
        }
        self.attachments.insert(id, attachment);
        Ok(id)
    }

    /// Detaches (and closes) an attachment; its networks stay on the node, unattached.
    pub fn detach(&mut self, id: u32) -> bool {
        let Some(attachment) = self.attachments.remove(&id) else {
            return false;
        };
        self.by_network.retain(|_, a| *a != id);
        self.closing.push(attachment);
        if let Some(tx) = self.tx.remove(&id) {
            tx.signal();
            self.tx_retired.push(tx);
        }
        true
    }

    /// Every attachment.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.attachments.values()
    }

    /// An attachment by id.
    pub fn attachment(&self, id: u32) -> Option<&Attachment> {
        self.attachments.get(&id)
    }

    /// The packets each datapath thread reading attachment `id`'s queues has read
    /// (empty: the node's thread reads it).
    pub fn tx_packets(&self, id: u32) -> Vec<u64> {
        self.tx.get(&id).map_or_else(Vec::new, |t| {
            t.packets
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .collect()
        })
    }

    /// Leaves a network (see [`UdpNode::remove_network`]); an attachment that carried it
    /// stops doing so.
    pub fn remove_network(&mut self, network: &str) -> bool {
        if let Some(id) = self.by_network.remove(network)
            && let Some(a) = self.attachments.get_mut(&id)
        {
            a.forget_network(network);
        }
        self.node.remove_network(network)
    }

    /// What is queued for Python.
    fn take_queue(&mut self) -> Inbound {
        std::mem::take(&mut self.queue)
    }

    fn has_queue(&self) -> bool {
        !(self.queue.frames.is_empty()
            && self.queue.control.is_empty()
            && self.queue.events.is_empty())
    }

    /// Runs `f` on the node with a sink that writes frames of attached networks to their
    /// attachment and queues the rest for Python.
    fn deliver(&mut self, f: impl FnOnce(&mut UdpNode, &mut LaneSink<'_>)) {
        self.with_lane_sink(None, f);
    }

    fn receive(&mut self, now: Instant) {
        self.deliver(|node, sink| {
            node.receive(now, SOCKET_BATCH, sink);
        });
    }

    /// [`State::deliver`], for a receiving thread if `writers`: frames for a TUN device
    /// with offloads then go to the thread's writers (written after the lock is let go).
    fn with_lane_sink<R>(
        &mut self,
        mut writers: Option<&mut TunWriters>,
        f: impl FnOnce(&mut UdpNode, &mut LaneSink<'_>) -> R,
    ) -> R {
        let State {
            node,
            attachments,
            by_network,
            queue,
            touched,
            ..
        } = self;
        if let Some(w) = writers.as_deref_mut() {
            w.sync(attachments);
        }
        let mut sink = LaneSink {
            writers,
            deliver: Deliver {
                attachments,
                by_network,
                queue,
                touched,
            },
        };
        let r = f(node, &mut sink);
        for id in touched.drain(..) {
            if let Some(a) = attachments.get_mut(&id) {
                a.end_writes();
            }
        }
        r
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.deliver(|node, sink| node.handle_timeout(now, sink));
    }

    /// Reads a batch from attachment `id`, routes it and seals and sends it (in place:
    /// each packet bound for one peer becomes its datagram in the buffer it was read into).
    fn pump(&mut self, id: u32, now: Instant) {
        let State {
            node,
            attachments,
            frames,
            plan,
            ..
        } = self;
        let Some(attachment) = attachments.get_mut(&id) else {
            return;
        };
        attachment.flush();
        attachment.read_frames(ATTACHMENT_BATCH, frames);
        plan_batch(node, attachment, frames, plan, now);
        if !plan.is_empty() {
            let sealed = plan.seal_and_send(node.socket(), frames);
            node.count_sealed(sealed);
        }
    }
}

/// Routes the batch `frames` read from `attachment` into `plan` (cleared first): packets
/// for peers with a direct path and a session are left for [`SealPlan::seal_and_send`],
/// the rest are sent (or queued behind a handshake) at once.
fn plan_batch(
    node: &mut UdpNode,
    attachment: &mut Attachment,
    frames: &Frames,
    plan: &mut SealPlan,
    now: Instant,
) {
    plan.clear();
    let count = frames.len();
    let frame = |k: usize| frames.frame(k);
    route_batch(node, attachment, count, frame, |node, network, run| {
        let batch = run.map(|k| (k, frame(k)));
        node.route_for_sealing(network, batch, count as u64, now, plan)
    });
}

/// Routes the frames `frame(0..count)` read from `attachment`: each run of consecutive
/// frames for the same one of its networks goes to `send` in one batch (answers it returns
/// are written back to the attachment); the attachment counts the frames no network takes
/// and those the router drops.
fn route_batch<'f>(
    node: &mut UdpNode,
    attachment: &mut Attachment,
    count: usize,
    frame: impl Fn(usize) -> &'f [u8],
    mut send: impl FnMut(&mut UdpNode, &str, Range<usize>) -> Result<Vec<Vec<u8>>, DatapathError>,
) {
    attachment.with_networks(|attachment, networks| {
        let kind = attachment.kind();
        let mut start = 0;
        while start < count {
            let network = pick_network(node, networks, kind, frame(start));
            let mut end = start + 1;
            while end < count && pick_network(node, networks, kind, frame(end)) == network {
                end += 1;
            }
            let n = (end - start) as u64;
            match network {
                None => attachment.stats.no_network += n,
                Some(i) => {
                    let network = &networks[i];
                    let before = node.router(network).map_or(0, |r| r.drops().total());
                    match send(node, network, start..end) {
                        Ok(answers) => {
                            for answer in answers {
                                attachment.write_frame(&answer);
                            }
                        }
                        Err(_) => attachment.stats.no_network += n,
                    }
                    let after = node.router(network).map_or(0, |r| r.drops().total());
                    attachment.stats.router_drops += after.saturating_sub(before);
                }
            }
            start = end;
        }
    });
}

/// The worker's [`Sink`]: frames of an attached network go to the attachment at once (a
/// TUN device's TCP segments are coalesced until the round ends), the rest to Python.
struct Deliver<'s> {
    attachments: &'s mut FxHashMap<u32, Attachment>,
    by_network: &'s FxHashMap<String, u32>,
    queue: &'s mut Inbound,
    touched: &'s mut Vec<u32>,
}

impl Sink for Deliver<'_> {
    fn frame(&mut self, network: &str, frame: Frame<'_>) {
        let attachment = self
            .by_network
            .get(network)
            .and_then(|id| Some((*id, self.attachments.get_mut(id)?)));
        match attachment {
            Some((id, attachment)) => {
                attachment.queue_frame(frame);
                if !self.touched.contains(&id) {
                    self.touched.push(id);
                }
            }
            None => self.queue.frame(network, frame),
        }
    }

    fn control(&mut self, from: NodeId, network: &str, message: &[u8]) {
        self.queue.control(from, network, message);
    }

    fn event(&mut self, event: Event) {
        self.queue.event(event);
    }
}

/// A receiving thread's writers, one per TUN attachment with offloads it has written to
/// (None: an attachment it cannot write to itself).
#[derive(Debug, Default)]
struct TunWriters {
    links: Vec<(u32, Option<TunWriter>)>,
}

impl TunWriters {
    /// Under the lock: tells each attachment what its writer wrote, and drops the writers
    /// of attachments that are gone (closing their descriptors).
    fn sync(&mut self, attachments: &mut FxHashMap<u32, Attachment>) {
        self.links
            .retain_mut(|(id, writer)| match attachments.get_mut(id) {
                Some(a) => {
                    if let Some(w) = writer {
                        w.fold_stats(&mut a.stats);
                    }
                    true
                }
                None => false,
            });
    }

    /// Takes `packet` for attachment `id` if a writer of its own can write it.
    fn take(&mut self, id: u32, attachment: &Attachment, packet: &[u8]) -> bool {
        let i = match self.links.iter().position(|(l, _)| *l == id) {
            Some(i) => i,
            None => {
                let writer = attachment.tun_writer().and_then(Result::ok);
                self.links.push((id, writer));
                self.links.len() - 1
            }
        };
        match &mut self.links[i].1 {
            Some(w) => {
                w.push(packet);
                true
            }
            None => false,
        }
    }

    /// Writes what was taken (outside the lock).
    fn write(&mut self) {
        for w in self.links.iter_mut().filter_map(|(_, w)| w.as_mut()) {
            if w.pending() > 0 {
                w.write();
            }
        }
    }

    /// Whether a writer counted writes its attachment has not been told of.
    fn has_counts(&self) -> bool {
        self.links
            .iter()
            .any(|(_, w)| w.as_ref().is_some_and(TunWriter::has_counts))
    }
}

/// The [`Sink`] of every thread that receives: what [`Deliver`] does, except that a
/// receiving lane's thread (with `writers`) keeps IP frames for a TUN device with
/// offloads for its own writer.
struct LaneSink<'s> {
    writers: Option<&'s mut TunWriters>,
    deliver: Deliver<'s>,
}

impl Sink for LaneSink<'_> {
    fn frame(&mut self, network: &str, frame: Frame<'_>) {
        if frame.header.is_none()
            && let Some(writers) = self.writers.as_deref_mut()
            && let Some(&id) = self.deliver.by_network.get(network)
            && let Some(a) = self.deliver.attachments.get(&id)
            && writers.take(id, a, frame.packet)
        {
            return;
        }
        self.deliver.frame(network, frame);
    }

    fn control(&mut self, from: NodeId, network: &str, message: &[u8]) {
        self.deliver.control(from, network, message);
    }

    fn event(&mut self, event: Event) {
        self.deliver.event(event);
    }
}

/// The destination address a payload's frame is for (the ARP target for ARP).
fn frame_target(kind: AttachmentKind, frame: &[u8]) -> Option<IpAddr> {
    let ip = match kind {
        AttachmentKind::Tun => frame,
        AttachmentKind::Vm => {
            if frame.len() < 14 {
                return None;
            }
            match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 | 0x86dd => &frame[14..],
                0x0806 => {
                    let tpa = frame.get(14 + 24..14 + 28)?;
                    return Some(IpAddr::from([tpa[0], tpa[1], tpa[2], tpa[3]]));
                }
                _ => return None,
            }
        }
    };
    match ip.first()? >> 4 {
        4 => {
            let d = ip.get(16..20)?;
            Some(IpAddr::from([d[0], d[1], d[2], d[3]]))
        }
        6 => {
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        _ => None,
    }
}

/// Which of `networks` a frame belongs to: the one whose range holds its destination,
/// else (multicast, broadcast, link-local) the first of the destination's family.
fn pick_network(
    node: &UdpNode,
    networks: &[String],
    kind: AttachmentKind,
    frame: &[u8],
) -> Option<usize> {
    let dst = frame_target(kind, frame)?;
    let ranges = |i: usize| node.router(&networks[i]).map_or(&[][..], |r| r.cidrs());
    (0..networks.len())
        .find(|&i| ranges(i).iter().any(|c| c.contains(dst)))
        .or_else(|| {
            (0..networks.len()).find(|&i| {
                ranges(i)
                    .iter()
                    .any(|c| c.network().is_ipv4() == dst.is_ipv4())
            })
        })
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake_tx: UnixDatagram,
    notify_tx: UnixDatagram,
    notified: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the thread must not take Python's calls down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells Python (once until it takes the queue) that something waits for it.
    fn notify(&self) {
        if !self.notified.swap(true, Ordering::SeqCst) {
            let _ = self.notify_tx.send(&[1]);
        }
    }
}

/// The receiving threads of a node with lanes: one per lane after the first (the node's
/// thread reads lane 0, the node's own socket).
#[derive(Debug, Default)]
struct RxThreads {
    /// Datagrams each thread has read.
    datagrams: Vec<Arc<AtomicU64>>,
    wakes: Vec<UnixDatagram>,
    threads: Vec<JoinHandle<()>>,
}

/// A [`UdpNode`] driven by its own thread. See the module docs.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    notify_rx: UnixDatagram,
    thread: Option<JoinHandle<()>>,
    rx: RxThreads,
}

impl Worker {
    /// Starts the datapath thread for `node`, and a receiving thread for each of its
    /// lanes after the first ([`UdpNode::bind_lanes`]; if they cannot be opened, the node
    /// receives on its own socket alone, as with one lane).
    pub fn start(mut node: UdpNode) -> io::Result<Worker> {
        let lanes = node.open_lanes().unwrap_or_default();
        let (wake_tx, wake_rx) = UnixDatagram::pair()?;
        let (notify_tx, notify_rx) = UnixDatagram::pair()?;
        for s in [&wake_tx, &wake_rx, &notify_tx, &notify_rx] {
            s.set_nonblocking(true)?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(node)),
            wake_tx,
            notify_tx,
            notified: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("golem-vpn-datapath".into())
            .spawn(move || run(&thread_shared, &wake_rx))?;
        let mut worker = Worker {
            shared,
            notify_rx,
            thread: Some(thread),
            rx: RxThreads::default(),
        };
        for lane in lanes {
            // On failure the worker stops what it started (Drop).
            worker.spawn_rx(lane)?;
        }
        Ok(worker)
    }

    fn spawn_rx(&mut self, lane: Lane) -> io::Result<()> {
        let (wake_tx, wake_rx) = UnixDatagram::pair()?;
        wake_tx.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::clone(&self.shared);
        let read = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&read);
        let thread = std::thread::Builder::new()
            .name(format!("golem-vpn-rx{}", lane.index()))
            .spawn(move || run_rx(&shared, lane, &wake_rx, &counter))?;
        self.rx.datagrams.push(read);
        self.rx.wakes.push(wake_tx);
        self.rx.threads.push(thread);
        Ok(())
    }

    /// The datagrams each receiving thread (lanes 1.., see [`Worker::start`]) has read;
    /// empty for a node of one lane.
    pub fn lane_datagrams(&self) -> Vec<u64> {
        self.rx
            .datagrams
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }

    /// Attaches a TUN device (see [`Attachment::tun`]) to `networks`. With more than one
    /// queue (and offloads), each queue gets a datapath thread of its own that reads it,
    /// routes under the lock and seals and sends outside it, so the flows a payload sends
    /// are carried on several cores at once (what arrives is written by the node's thread
    /// and the node's receiving threads, [`Worker::start`]).
    pub fn attach_tun(
        &self,
        name: &str,
        networks: Vec<String>,
        offload: bool,
        queues: usize,
    ) -> Result<u32, WorkerError> {
        let queues = queues.clamp(1, MAX_TUN_QUEUES);
        let (id, files, socket) = self.with(|s| {
            let id = s.attach(networks, |id, nets| {
                Attachment::tun(id, name, nets, offload, queues)
            })?;
            let files = s.attachments.get_mut(&id).and_then(Attachment::tx_queues);
            Ok::<_, WorkerError>((id, files, s.node.socket().try_clone()))
        })?;
        let Some(files) = files else {
            // One queue, or no offloads: the node's thread reads the device.
            return Ok(id);
        };
        let spawned = files
            .and_then(|files| self.spawn_tx(id, files, &socket?))
            .map(|tx| {
                self.with(|s| {
                    if s.attachments.contains_key(&id) {
                        s.tx.insert(id, tx);
                    } else {
                        tx.signal();
                        s.tx_retired.push(tx);
                    }
                })
            });
        if let Err(e) = spawned {
            // Nobody would read queues 1..: refuse the attachment whole.
            self.with(|s| s.detach(id));
            let what = format!("TUN device {name:?}: datapath threads");
            return Err(AttachError::io(what, e).into());
        }
        Ok(id)
    }

    fn spawn_tx(&self, id: u32, files: Vec<File>, socket: &UdpSocket) -> io::Result<TxThreads> {
        let stop = Arc::new(AtomicBool::new(false));
        let packets: Arc<[AtomicU64]> = (0..files.len()).map(|_| AtomicU64::new(0)).collect();
        let mut tx = TxThreads {
            packets: Arc::clone(&packets),
            stop: Arc::clone(&stop),
            wakes: Vec::new(),
            threads: Vec::new(),
        };
        for (queue, file) in files.into_iter().enumerate() {
            let (wake_tx, wake_rx) = UnixDatagram::pair()?;
            wake_tx.set_nonblocking(true)?;
            wake_rx.set_nonblocking(true)?;
            let socket = socket.try_clone()?;
            let shared = Arc::clone(&self.shared);
            let stop = Arc::clone(&stop);
            let packets = Arc::clone(&packets);
            let spawned = std::thread::Builder::new()
                .name(format!("golem-vpn-tx{queue}"))
                .spawn(move || {
                    let read = &packets[queue];
                    run_tx(&shared, (id, queue), file, &socket, &stop, &wake_rx, read);
                });
            match spawned {
                Ok(t) => {
                    tx.wakes.push(wake_tx);
                    tx.threads.push(t);
                }
                Err(e) => {
                    tx.join();
                    return Err(e);
                }
            }
        }
        Ok(tx)
    }

    /// Runs `f` on the shared state, then wakes the thread so it sees new timers and
    /// descriptors.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.shared.lock());
        self.wake();
        r
    }

    /// Detaches (and closes) attachment `id` ([`State::detach`]); the receiving threads are
    /// woken to let go of their descriptors of it (a TUN device goes away with the last).
    pub fn detach(&self, id: u32) -> bool {
        let detached = self.with(|s| s.detach(id));
        for w in &self.rx.wakes {
            let _ = w.send(&[1]);
        }
        detached
    }

    /// Reads the shared state (the thread is not woken).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.shared.lock())
    }

    fn wake(&self) {
        let _ = self.shared.wake_tx.send(&[1]);
    }

    /// The descriptor that becomes readable when [`Worker::take_inbound`] has something.
    pub fn notify_fd(&self) -> RawFd {
        self.notify_rx.as_raw_fd()
    }

    /// Takes what the thread queued for Python: frames of unattached networks, control
    /// messages and peer events.
    pub fn take_inbound(&self) -> Inbound {
        let mut sink = [0u8; 64];
        while self.notify_rx.recv(&mut sink).is_ok() {}
        // Cleared before taking, so a batch queued from here on notifies again.
        self.shared.notified.store(false, Ordering::SeqCst);
        self.shared.lock().take_queue()
    }

    /// Stops the threads (attachments are closed when the worker is dropped).
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        let tx: Vec<TxThreads> = {
            let mut state = self.shared.lock();
            let mut tx: Vec<TxThreads> = state.tx.drain().map(|(_, t)| t).collect();
            tx.append(&mut state.tx_retired);
            tx
        };
        for t in tx {
            t.join();
        }
        for w in &self.rx.wakes {
            let _ = w.send(&[1]);
        }
        for t in self.rx.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// True while the thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one poll entry stands for.
#[derive(Debug, Clone, Copy)]
enum Source {
    Wake,
    Socket,
    Attachment(u32),
}

fn run(shared: &Shared, wake_rx: &UnixDatagram) {
    let mut fds: Vec<sys::PollFd> = Vec::new();
    let mut sources: Vec<Source> = Vec::new();
    let mut attachment_fds: Vec<(RawFd, bool)> = Vec::new();
    let mut ready: Vec<u32> = Vec::new();
    let spin = spin_time();
    let mut busy_since = Instant::now() - spin;
    while !shared.stop.load(Ordering::SeqCst) {
        let deadline = {
            let state = shared.lock();
            fds.clear();
            sources.clear();
            fds.push(sys::poll_fd(wake_rx.as_raw_fd(), sys::POLLIN));
            sources.push(Source::Wake);
            fds.push(sys::poll_fd(state.node.socket().as_raw_fd(), sys::POLLIN));
            sources.push(Source::Socket);
            for (id, attachment) in &state.attachments {
                attachment_fds.clear();
                attachment.poll_fds(&mut attachment_fds);
                for &(fd, write) in &attachment_fds {
                    let events = if write {
                        sys::POLLIN | sys::POLLOUT
                    } else {
                        sys::POLLIN
                    };
                    fds.push(sys::poll_fd(fd, events));
                    sources.push(Source::Attachment(*id));
                }
            }
            state.node.poll_at()
        };
        let mut timeout = deadline
            .map(|d| d.saturating_duration_since(Instant::now()).min(MAX_SLEEP))
            .unwrap_or(MAX_SLEEP);
        // Right after traffic, optionally look again without sleeping for a moment: a
        // packet's answer may follow sooner than a sleeping thread wakes.
        if busy_since.elapsed() < spin {
            timeout = Duration::ZERO;
        }
        if sys::poll(&mut fds, Some(timeout)).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if fds[1..].iter().any(|f| f.revents != 0) {
            busy_since = Instant::now();
        }
        let mut state = shared.lock();
        state.closing.clear();
        let now = Instant::now();
        ready.clear();
        for (fd, source) in fds.iter().zip(&sources) {
            if fd.revents == 0 {
                continue;
            }
            match source {
                Source::Wake => {
                    let mut sink = [0u8; 64];
                    while wake_rx.recv(&mut sink).is_ok() {}
                }
                Source::Socket => state.receive(now),
                Source::Attachment(id) => {
                    if fd.revents & sys::POLLBROKEN != 0
                        && fd.revents & sys::POLLIN == 0
                        && let Some(a) = state.attachments.get_mut(id)
                    {
                        a.mark_broken();
                    }
                    if !ready.contains(id) {
                        ready.push(*id);
                    }
                }
            }
        }
        for &id in &ready {
            state.pump(id, now);
        }
        if state.node.poll_at().is_some_and(|at| at <= Instant::now()) {
            state.handle_timeout(Instant::now());
        }
        let notify = state.has_queue();
        drop(state);
        if notify {
            shared.notify();
        }
    }
}

/// A receiving thread of a node with lanes: reads its lane's socket without the lock,
/// takes what is not data under it, opens (decrypts) the data messages without it,
/// delivers them under it, and writes the frames for TUN devices with offloads after
/// letting go of it: of each batch only the bookkeeping is done under the lock, so the
/// lanes' decryption and the kernel's work on their packets run on as many cores.
fn run_rx(shared: &Shared, mut lane: Lane, wake_rx: &UnixDatagram, read: &AtomicU64) {
    let mut writers = TunWriters::default();
    while !shared.stop.load(Ordering::SeqCst) {
        let mut fds = [
            sys::poll_fd(lane.socket().as_raw_fd(), sys::POLLIN),
            sys::poll_fd(wake_rx.as_raw_fd(), sys::POLLIN),
        ];
        // Counts not yet told to their attachments are told soon after traffic stops.
        let timeout = if writers.has_counts() {
            Duration::from_millis(10)
        } else {
            MAX_SLEEP
        };
        if sys::poll(&mut fds, Some(timeout)).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if fds[1].revents != 0 {
            let mut sink = [0u8; 64];
            while wake_rx.recv(&mut sink).is_ok() {}
            // Woken for a detach: the descriptors of a gone attachment are closed now.
            if !writers.links.is_empty() {
                writers.sync(&mut shared.lock().attachments);
            }
        }
        if fds[0].revents == 0 || lane.read() == 0 {
            if writers.has_counts() {
                writers.sync(&mut shared.lock().attachments);
            }
            continue;
        }
        // Under the lock: everything but the data messages to open; then those opened
        // without it; then delivered under it again.
        let n = shared
            .lock()
            .with_lane_sink(Some(&mut writers), |node, sink| {
                node.plan_lane(&mut lane, Instant::now(), sink)
            });
        read.fetch_add(n as u64, Ordering::Relaxed);
        lane.open();
        let notify = {
            let mut state = shared.lock();
            state.with_lane_sink(Some(&mut writers), |node, sink| {
                node.finish_lane(&mut lane, Instant::now(), sink)
            });
            state.has_queue()
        };
        writers.write();
        if notify {
            shared.notify();
        }
    }
}

/// A datapath thread of a multi-queue TUN attachment: reads its queue, routes the batch
/// and reserves counters under the lock, then seals and sends without it.
fn run_tx(
    shared: &Shared,
    (id, queue): (u32, usize),
    mut file: File,
    socket: &UdpSocket,
    stop: &AtomicBool,
    wake_rx: &UnixDatagram,
    packets_read: &AtomicU64,
) {
    let mut scratch = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    let mut frames = Frames::default();
    let mut plan = SealPlan::default();
    plan.set_lane(queue);
    while !stop.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
        let mut fds = [
            sys::poll_fd(file.as_raw_fd(), sys::POLLIN),
            sys::poll_fd(wake_rx.as_raw_fd(), sys::POLLIN),
        ];
        if sys::poll(&mut fds, Some(MAX_SLEEP)).is_err() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if fds[1].revents != 0 {
            let mut sink = [0u8; 64];
            while wake_rx.recv(&mut sink).is_ok() {}
        }
        if fds[0].revents == 0 {
            continue;
        }
        let (bad, broken) = read_tun_batch(&mut file, &mut scratch, ATTACHMENT_BATCH, &mut frames);
        packets_read.fetch_add(frames.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut state = shared.lock();
            let State {
                node, attachments, ..
            } = &mut *state;
            let Some(attachment) = attachments.get_mut(&id) else {
                return;
            };
            attachment.stats.no_network += bad;
            attachment.stats.count_in(frames.lens());
            if broken {
                attachment.mark_broken();
                return;
            }
            // A new batch: no destination's path or counters carry over from the last one.
            plan_batch(node, attachment, &frames, &mut plan, now);
        }
        if !plan.is_empty() {
            let sealed = plan.seal_and_send(socket, &mut frames);
            shared.lock().node.count_sealed(sealed);
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
