//! What an endpoint keeps per peer: its address, up to three sessions (WireGuard's
//! current / previous / next keypairs), the handshake in progress, the payloads waiting
//! for it, and the peer's timers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use snow::HandshakeState;

use super::cookie::Mac;
use super::session::{SealBatch, Session};
use super::wire::KIND_KEEPALIVE;
use super::{
    KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT,
};
use crate::node_id::NodeId;

/// Our session and handshake indices, and whose they are.
pub(crate) type Indices = FxHashMap<u32, NodeId>;

/// Where a session sits in a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The session we send on.
    Current,
    /// The session before it, kept for packets still in flight.
    Previous,
    /// A session we initiated, waiting for the responder's first message.
    Unconfirmed,
}

/// The state of our side of a handshake we initiated.
pub(crate) enum Attempt {
    /// Message 1 sent, waiting for message 2 at `index`.
    Initiating {
        state: Box<HandshakeState>,
        index: u32,
        /// Message 1's mac1: a cookie reply must be bound to it.
        mac1: Mac,
        /// Whether message 1 carried a mac2 (a cookie reply then waits for the retry
        /// timer instead of retrying at once).
        with_cookie: bool,
    },
    /// Message 3 sent; the session waits in [`Slot::Unconfirmed`] for the responder's
    /// first message.
    AwaitingConfirmation,
    /// The response was refused after Noise accepted it; wait for the retry.
    Failed,
}

/// A handshake we initiated, with its retries.
pub(crate) struct Handshake {
    pub(crate) attempt: Attempt,
    /// When the first try of this series was sent (give up `REKEY_ATTEMPT_TIME` later).
    pub(crate) first_try: Instant,
    /// When to send a new initiation if this one has not been confirmed.
    pub(crate) retry_at: Instant,
}

impl Handshake {
    fn deadline(&self) -> Instant {
        self.retry_at.min(self.first_try + REKEY_ATTEMPT_TIME)
    }
}

/// One peer of an endpoint.
#[derive(Default)]
pub(crate) struct Peer {
    /// Whether the peer may complete handshakes with us.
    pub(crate) allowed: bool,
    /// Where its datagrams go: set by the caller, updated by authenticated packets.
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) current: Option<Session>,
    pub(crate) previous: Option<Session>,
    pub(crate) unconfirmed: Option<Session>,
    pub(crate) handshake: Option<Handshake>,
    /// Inner plaintexts waiting for a session.
    pub(crate) queue: VecDeque<Vec<u8>>,
    /// Whether `PeerUp` was the last event reported for this peer.
    pub(crate) up: bool,
    /// Passive keep-alive: received data, sent nothing since.
    pub(crate) keepalive_at: Option<Instant>,
    /// Sent data, heard nothing since: the session may be dead.
    pub(crate) new_handshake_at: Option<Instant>,
    /// Persistent keep-alive (when configured).
    pub(crate) persistent_at: Option<Instant>,
    /// The last cookie the peer sent us (under load), and when it came: our initiations
    /// to it carry mac2 with it while it is fresh.
    pub(crate) cookie: Option<(Mac, Instant)>,
}

impl Peer {
    /// The slot of the session whose local index is `index`.
    #[inline]
    pub(crate) fn slot_of(&self, index: u32) -> Option<Slot> {
        let is = |s: &Option<Session>| s.as_ref().is_some_and(|s| s.local_index == index);
        if is(&self.current) {
            Some(Slot::Current)
        } else if is(&self.previous) {
            Some(Slot::Previous)
        } else if is(&self.unconfirmed) {
            Some(Slot::Unconfirmed)
        } else {
            None
        }
    }

    #[inline]
    pub(crate) fn session(&self, slot: Slot) -> Option<&Session> {
        match slot {
            Slot::Current => self.current.as_ref(),
            Slot::Previous => self.previous.as_ref(),
            Slot::Unconfirmed => self.unconfirmed.as_ref(),
        }
    }

    pub(crate) fn session_mut(&mut self, slot: Slot) -> Option<&mut Session> {
        match slot {
            Slot::Current => self.current.as_mut(),
            Slot::Previous => self.previous.as_mut(),
            Slot::Unconfirmed => self.unconfirmed.as_mut(),
        }
    }

    /// The session to send on: the current one, or else an unconfirmed one (the first
    /// handshake, sending optimistically right after message 3).
    #[inline]
    fn sending_session(&mut self, now: Instant) -> Option<&mut Session> {
        if self.current.as_ref().is_some_and(|s| s.can_send(now)) {
            self.current.as_mut()
        } else {
            self.unconfirmed.as_mut().filter(|s| s.can_send(now))
        }
    }

    /// Whether the current session is usable: both sides have it.
    pub(crate) fn confirmed(&self, now: Instant) -> bool {
        self.current.as_ref().is_some_and(|s| s.can_send(now))
    }

    /// Drops the unconfirmed session.
    pub(crate) fn drop_unconfirmed(&mut self, indices: &mut Indices) {
        forget(self.unconfirmed.take(), indices);
    }

    /// Whether a payload sent now would go out at once.
    pub(crate) fn can_send(&mut self, now: Instant) -> bool {
        self.sending_session(now).is_some()
    }

    /// Encrypts `plaintext` on the sending session into `out` and runs the send-side
    /// timers. `None` if there is no session to send on.
    #[inline]
    pub(crate) fn encrypt(
        &mut self,
        plaintext: &[u8],
        now: Instant,
        out: &mut Vec<u8>,
        persistent: Option<Duration>,
    ) -> Option<SocketAddr> {
        let keepalive = plaintext.first() == Some(&KIND_KEEPALIVE);
        self.encrypt_with(
            |buf| buf.extend_from_slice(plaintext),
            keepalive,
            now,
            out,
            persistent,
        )
    }

    /// [`encrypt`](Self::encrypt) with the plaintext written by `write` straight into the
    /// outgoing datagram (no intermediate copy).
    pub(crate) fn encrypt_with(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>),
        keepalive: bool,
        now: Instant,
        out: &mut Vec<u8>,
        persistent: Option<Duration>,
    ) -> Option<SocketAddr> {
        let addr = self.addr?;
        if !self.sending_session(now)?.encrypt_with(write, out) {
            return None;
        }
        self.note_sent(keepalive, now, persistent);
        Some(addr)
    }

    /// A send's effect on the timers: no passive keep-alive is owed, a payload (not a
    /// keep-alive) expects an answer within `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT`, and the
    /// persistent keep-alive starts over.
    fn note_sent(&mut self, keepalive: bool, now: Instant, persistent: Option<Duration>) {
        self.keepalive_at = None;
        if !keepalive && self.new_handshake_at.is_none() {
            self.new_handshake_at = Some(now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT);
        }
        self.persistent_at = persistent.map(|p| now + p);
    }

    /// Reserves up to `n` counters on the sending session for a [`SealBatch`], with the
    /// bookkeeping of a send ([`Peer::encrypt_with`]): None without an address or a
    /// session that can send.
    pub(crate) fn reserve(
        &mut self,
        n: u64,
        now: Instant,
        persistent: Option<Duration>,
    ) -> Option<(SealBatch, SocketAddr)> {
        let addr = self.addr?;
        let batch = self.sending_session(now)?.reserve(n)?;
        self.note_sent(false, now, persistent);
        Some((batch, addr))
    }

    /// Whether sending should start a new handshake: the session we initiated is older
    /// than `REKEY_AFTER_TIME`, or any session has sent `rekey_after_messages`.
    #[inline]
    pub(crate) fn wants_rekey_on_send(&mut self, now: Instant, rekey_after_messages: u64) -> bool {
        self.handshake.is_none()
            && self.sending_session(now).is_some_and(|s| {
                (s.initiator && s.age(now) >= REKEY_AFTER_TIME)
                    || s.send_counter >= rekey_after_messages
            })
    }

    /// Whether receiving should start a new handshake: we initiated the current session
    /// and it is close to `REJECT_AFTER_TIME` (WireGuard's receive-side rule, for an
    /// initiator that only listens).
    #[inline]
    pub(crate) fn wants_rekey_on_receive(&self, now: Instant) -> bool {
        self.handshake.is_none()
            && self.current.as_ref().is_some_and(|s| {
                s.initiator && s.age(now) >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
            })
    }

    /// Every index of ours that points at this peer.
    pub(crate) fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        let sessions = [&self.current, &self.previous, &self.unconfirmed]
            .into_iter()
            .flatten()
            .map(|s| s.local_index);
        let handshake = match &self.handshake {
            Some(Handshake {
                attempt: Attempt::Initiating { index, .. },
                ..
            }) => Some(*index),
            _ => None,
        };
        sessions.chain(handshake)
    }

    /// A responder session: it is confirmed (the initiator derived its keys before
    /// sending message 3), so it becomes current at once.
    pub(crate) fn install_current(&mut self, session: Session, indices: &mut Indices) {
        let old = std::mem::replace(&mut self.previous, self.current.take());
        forget(old, indices);
        self.current = Some(session);
    }

    /// An initiator session, unconfirmed until the responder's first message.
    pub(crate) fn install_unconfirmed(&mut self, session: Session, indices: &mut Indices) {
        forget(self.unconfirmed.replace(session), indices);
    }

    /// The responder used the unconfirmed session: it becomes current.
    pub(crate) fn promote_unconfirmed(&mut self, indices: &mut Indices) {
        if let Some(session) = self.unconfirmed.take() {
            self.install_current(session, indices);
        }
    }

    /// Ends the handshake we initiated (a session came up some other way, or it gave up).
    pub(crate) fn end_handshake(&mut self, indices: &mut Indices) {
        if let Some(Handshake {
            attempt: Attempt::Initiating { index, .. },
            ..
        }) = self.handshake.take()
        {
            indices.remove(&index);
        }
    }

    /// Drops sessions older than `REJECT_AFTER_TIME`.
    pub(crate) fn expire_sessions(&mut self, now: Instant, indices: &mut Indices) {
        for slot in [&mut self.current, &mut self.previous, &mut self.unconfirmed] {
            if slot
                .as_ref()
                .is_some_and(|s| s.age(now) >= REJECT_AFTER_TIME)
            {
                forget(slot.take(), indices);
            }
        }
    }

    /// The earliest time this peer needs `handle_timeout`.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let sessions = [&self.current, &self.previous, &self.unconfirmed]
            .into_iter()
            .flatten()
            .map(|s| s.created + REJECT_AFTER_TIME);
        let timers = [
            self.handshake.as_ref().map(Handshake::deadline),
            self.keepalive_at,
            self.new_handshake_at,
            self.persistent_at,
        ];
        sessions.chain(timers.into_iter().flatten()).min()
    }
}

fn forget(session: Option<Session>, indices: &mut Indices) {
    if let Some(s) = session {
        indices.remove(&s.local_index);
    }
}
