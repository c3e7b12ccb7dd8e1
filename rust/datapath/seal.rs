//! How packets a payload sends become datagrams: the node routes a batch and reserves
//! message counters ([`UdpNode::route_for_sealing`], under its lock when datapath threads
//! share it); then the batch is sealed, in place where a packet goes to one peer, and sent
//! ([`SealPlan::seal_and_send`]), without the lock on a per-queue thread, so the costly
//! part (AEAD, the socket's copies) of two batches runs on two cores at once. Every send
//! path takes this way: the node's own thread, each TUN queue's thread, and
//! [`UdpNode::send_packets`] for packets from elsewhere.
//!
//! Each destination node gets a [`SealBatch`]: a range of its session's counters, used
//! only by this plan. Counters a plan does not use are skipped for good (the receiver's
//! replay window takes gaps, and batches sealed out of order within
//! [`crate::tunnel::REPLAY_WINDOW`]). A packet that cannot take this path (its peer is
//! reached through the relay, has no session yet, or the router answered with bytes of
//! its own) is sealed and sent (or queued behind a handshake) at once, while routing.

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use super::frames::{Frames, HEADROOM};
use super::{DatapathError, UdpNode, mmsg, send_datagram};
use crate::node_id::NodeId;
use crate::tunnel::{Payload, PayloadKind, SealBatch};

/// One packet to seal: bytes `start..end` of frame `frame`, for destination `dest`, in
/// network `network` (indices into the plan's tables).
#[derive(Debug, Clone, Copy)]
struct Job {
    frame: u32,
    start: u32,
    end: u32,
    dest: u32,
    network: u32,
}

/// A destination of the plan: where to send, and the counters reserved for it (None: its
/// packets are sent under the lock).
#[derive(Debug)]
struct Dest {
    node: NodeId,
    seal: Option<(SealBatch, SocketAddr)>,
}

/// What [`SealPlan::seal_and_send`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Payloads sealed.
    pub packets: u64,
    /// Their bytes (before sealing).
    pub bytes: u64,
    /// Datagrams the socket took.
    pub sent: u64,
    /// Datagrams the socket refused, or payloads that found no counter left.
    pub failed: u64,
}

/// Where a sealed datagram lies: in its frame's own buffer (sealed in place), or in one
/// of the plan's buffers (a copy).
#[derive(Debug, Clone, Copy)]
enum Datagram {
    InFrame { frame: u32, start: u32, end: u32 },
    Copied(u32),
}

/// Packets routed and given counters, to seal and send outside the node's lock. One plan
/// is one batch: [`SealPlan::clear`] it before routing the next (a destination's path and
/// counters are decided once per plan: a peer that had no session when one batch was
/// routed must not stay on the slow path for the next).
#[derive(Debug, Default)]
pub struct SealPlan {
    /// Network names the jobs point into (the attachment's few; never cleared).
    networks: Vec<String>,
    dests: Vec<Dest>,
    jobs: Vec<Job>,
    /// Copies of frames that cannot be sealed in place (one frame for several peers).
    out: Vec<Vec<u8>>,
    datagrams: Vec<Datagram>,
    dsts: Vec<SocketAddr>,
    /// The lane its data messages name (the sending thread's; see
    /// [`crate::tunnel::data_lane`]).
    lane: u8,
}

impl SealPlan {
    /// Forgets the last batch (buffers, and the names of networks seen, are kept: no
    /// allocation per batch).
    pub fn clear(&mut self) {
        self.dests.clear();
        self.jobs.clear();
    }

    /// Makes the data messages this plan seals name `lane` (taken modulo
    /// [`crate::tunnel::LANES`]): a thread that carries a share of the flows gives them
    /// a lane of their own, so the receiver opens them on a thread of their own too.
    pub fn set_lane(&mut self, lane: usize) {
        self.lane = (lane % crate::tunnel::LANES) as u8;
    }

    /// Packets waiting to be sealed.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn network_index(&mut self, network: &str) -> u32 {
        match self.networks.iter().position(|n| n == network) {
            Some(i) => i as u32,
            None => {
                self.networks.push(network.to_owned());
                (self.networks.len() - 1) as u32
            }
        }
    }

    /// Seals every planned packet of `frames` (the batch the plan was routed from) and
    /// sends them with batched syscalls on `socket` (the node's, or a clone). A frame
    /// bound for one peer is sealed where it lies, so its bytes are gone from `frames`
    /// afterwards; one bound for several (a broadcast) is copied for each. The plan is
    /// left empty.
    pub fn seal_and_send(&mut self, socket: &UdpSocket, frames: &mut Frames) -> Sealed {
        let mut done = Sealed::default();
        let SealPlan {
            networks,
            dests,
            jobs,
            out,
            datagrams,
            dsts,
            ..
        } = self;
        datagrams.clear();
        dsts.clear();
        let mut copies = 0usize;
        for (j, job) in jobs.iter().enumerate() {
            let Some((batch, dst)) = dests[job.dest as usize].seal.as_mut() else {
                continue;
            };
            let network = &networks[job.network as usize];
            let frame = job.frame as usize;
            let (start, end) = (job.start as usize, job.end as usize);
            let shared = (j > 0 && jobs[j - 1].frame == job.frame)
                || jobs.get(j + 1).is_some_and(|next| next.frame == job.frame);
            let in_place = if shared {
                None
            } else {
                let at = HEADROOM + start..HEADROOM + end;
                batch.seal_ip_in_place(network, frames.buf_mut(frame), at)
            };
            let datagram = match in_place {
                Some(r) => Datagram::InFrame {
                    frame: job.frame,
                    start: r.start as u32,
                    end: r.end as u32,
                },
                None => {
                    if copies == out.len() {
                        out.push(Vec::with_capacity(2048));
                    }
                    let bytes = &frames.frame(frame)[start..end];
                    if !batch.seal_ip(network, bytes, &mut out[copies]) {
                        done.failed += 1;
                        continue;
                    }
                    copies += 1;
                    Datagram::Copied((copies - 1) as u32)
                }
            };
            datagrams.push(datagram);
            dsts.push(*dst);
            done.packets += 1;
            done.bytes += (end - start) as u64;
        }
        let frames: &Frames = frames;
        for (chunk, to) in datagrams.chunks(mmsg::BATCH).zip(dsts.chunks(mmsg::BATCH)) {
            let bufs: Vec<&[u8]> = chunk
                .iter()
                .map(|d| match *d {
                    Datagram::InFrame { frame, start, end } => {
                        frames.buf(frame as usize, start as usize..end as usize)
                    }
                    Datagram::Copied(i) => out[i as usize].as_slice(),
                })
                .collect();
            done.sent += mmsg::send_batch(socket, &bufs, to) as u64;
        }
        done.failed += done.packets - done.sent;
        self.clear();
        done
    }
}

impl UdpNode {
    /// Routes `frames` (`(index in the batch, frame)`) that a local attachment of
    /// `network` sent, and leaves the sealing and sending of each packet to a peer with a
    /// direct path and a session to [`SealPlan::seal_and_send`] (which may run after the
    /// caller lets go of the node): only routing and the reservation of counters happen
    /// here; the other packets are sent at once. `reserve` bounds the packets any one peer
    /// may get from this batch. Returns the packets addressed to this node itself.
    pub fn route_for_sealing<'p>(
        &mut self,
        network: &str,
        frames: impl IntoIterator<Item = (usize, &'p [u8])>,
        reserve: u64,
        now: Instant,
        plan: &mut SealPlan,
    ) -> Result<Vec<Vec<u8>>, DatapathError> {
        let local = self.endpoint.node_id();
        let mut answers = Vec::new();
        let net = plan.network_index(network);
        let UdpNode {
            socket,
            endpoint,
            networks,
            wrapped,
            stats,
            relay,
            relayed,
            plaintext,
            ..
        } = self;
        let router = networks
            .get_mut(network)
            .ok_or_else(|| DatapathError::UnknownNetwork(network.to_owned()))?;
        for (index, frame) in frames {
            let _ = router.inject(frame, |node, bytes| {
                if *node == local {
                    answers.push(bytes.to_vec());
                    return;
                }
                let dest = match plan.dests.iter().position(|d| d.node == *node) {
                    Some(d) => d,
                    None => {
                        let seal = endpoint
                            .reserve(node, reserve, now)
                            .ok()
                            .flatten()
                            .filter(|(_, dst)| !relayed.contains_key(dst))
                            .map(|(mut batch, dst)| {
                                batch.set_lane(plan.lane);
                                (batch, dst)
                            });
                        plan.dests.push(Dest { node: *node, seal });
                        plan.dests.len() - 1
                    }
                };
                let start = (bytes.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
                let inside = start <= frame.len() && start + bytes.len() <= frame.len();
                if plan.dests[dest].seal.is_some() && inside {
                    plan.jobs.push(Job {
                        frame: index as u32,
                        start: start as u32,
                        end: (start + bytes.len()) as u32,
                        dest: dest as u32,
                        network: net,
                    });
                    return;
                }
                // The slow path: sealed and sent here, one datagram at a time.
                let payload = Payload {
                    kind: PayloadKind::Ip,
                    network,
                    bytes,
                };
                if let Ok(Some(dst)) = endpoint.send_into(node, payload, now, plaintext) {
                    send_datagram(socket, stats, *relay, relayed, wrapped, plaintext, dst);
                }
            });
        }
        self.flush();
        Ok(answers)
    }

    /// Counts what a [`SealPlan`] sealed and sent.
    pub fn count_sealed(&mut self, sealed: Sealed) {
        self.endpoint.count_sealed(sealed.packets, sealed.bytes);
        self.stats.datagrams_out += sealed.sent;
        self.stats.send_errors += sealed.failed;
    }
}
