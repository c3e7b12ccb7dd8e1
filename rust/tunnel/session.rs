//! One established session: the transport keys, the send counter and the replay window.
//! This is the data fast path: encrypting or decrypting a message writes into a caller's
//! buffer, in place, and allocates nothing.
//!
//! The keys are the Noise handshake's split (snow runs the handshake); the transport
//! itself seals and opens with ring directly, in place, exactly as Noise's CipherState
//! would (empty associated data; nonce = 4 zero bytes and the 64-bit counter, big-endian for
//! AES-GCM and little-endian for ChaChaPoly, per the Noise spec), so the inner plaintext is
//! written straight into the outgoing datagram instead of being copied there.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use snow::HandshakeState;

use super::Cipher;
use super::replay::ReplayWindow;
use super::wire::{
    DATA_HEADER_LEN, MAX_NETWORK_LEN, MAX_PLAINTEXT, TAG_LEN, data_header, write_inner_prefix,
};
use super::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};

/// The keys of one completed handshake and what has been sent and received with them.
pub(crate) struct Session {
    /// Shared with [`SealBatch`]es sealing on other threads.
    send: Arc<LessSafeKey>,
    /// Shared with [`OpenTicket`]s opening on other threads.
    recv: Arc<LessSafeKey>,
    /// Noise's AESGCM nonce is big-endian, ChaChaPoly's little-endian.
    nonce_big_endian: bool,
    /// Our index: peers put it in the messages they send on this session.
    pub(crate) local_index: u32,
    /// The peer's index: we put it in the messages we send.
    pub(crate) remote_index: u32,
    /// When the handshake completed.
    pub(crate) created: Instant,
    /// Whether we sent the handshake initiation (only the initiator rekeys on time).
    pub(crate) initiator: bool,
    /// The counter (Noise nonce) of the next message we send.
    pub(crate) send_counter: u64,
    pub(crate) replay: ReplayWindow,
}

impl Session {
    /// The session of a finished handshake (None if it is not finished).
    pub(crate) fn from_handshake(
        state: &mut HandshakeState,
        cipher: Cipher,
        local_index: u32,
        remote_index: u32,
        created: Instant,
    ) -> Option<Self> {
        if !state.is_handshake_finished() {
            return None;
        }
        let initiator = state.is_initiator();
        let (k1, k2) = state.dangerously_get_raw_split();
        let (send, recv) = if initiator { (k1, k2) } else { (k2, k1) };
        let algorithm = match cipher {
            Cipher::Aes256Gcm => &AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
        };
        let key = |k: [u8; 32]| UnboundKey::new(algorithm, &k).ok().map(LessSafeKey::new);
        Some(Session {
            send: Arc::new(key(send)?),
            recv: Arc::new(key(recv)?),
            nonce_big_endian: cipher == Cipher::Aes256Gcm,
            initiator,
            local_index,
            remote_index,
            created,
            send_counter: 0,
            replay: ReplayWindow::new(),
        })
    }

    #[inline]
    pub(crate) fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.created)
    }

    /// Whether messages may still be sent on this session.
    #[inline]
    pub(crate) fn can_send(&self, now: Instant) -> bool {
        self.age(now) < REJECT_AFTER_TIME && self.send_counter < REJECT_AFTER_MESSAGES
    }

    /// Writes a whole data message into `out` (its old contents are overwritten; its
    /// capacity is reused): the header, then the plaintext `write` appends, sealed in
    /// place. False if the session cannot send (counter exhausted).
    #[inline]
    pub(crate) fn encrypt_with(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>),
        out: &mut Vec<u8>,
    ) -> bool {
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let sealed = seal(
            &self.send,
            self.nonce_big_endian,
            self.remote_index,
            counter,
            0,
            write,
            out,
        );
        if sealed {
            self.send_counter = counter + 1;
        }
        sealed
    }

    /// Reserves up to `n` counters (at least one) for a [`SealBatch`], which seals with
    /// them without the session: on another thread, while the endpoint serves others.
    /// None if the session cannot send.
    pub(crate) fn reserve(&mut self, n: u64) -> Option<SealBatch> {
        let next = self.send_counter;
        let end = next.saturating_add(n.max(1)).min(REJECT_AFTER_MESSAGES);
        if next >= end {
            return None;
        }
        self.send_counter = end;
        Some(SealBatch {
            key: Arc::clone(&self.send),
            nonce_big_endian: self.nonce_big_endian,
            remote_index: self.remote_index,
            lane: 0,
            next,
            end,
        })
    }

    /// A ticket to open data message `counter` (sent to our index `index`) without the
    /// session, on another thread.
    pub(crate) fn ticket(&self, index: u32, counter: u64) -> OpenTicket {
        OpenTicket {
            key: Arc::clone(&self.recv),
            nonce_big_endian: self.nonce_big_endian,
            index,
            counter,
        }
    }

    /// Whether `ticket` was made by this session (an index can be handed out again once
    /// its session is gone).
    pub(crate) fn made(&self, ticket: &OpenTicket) -> bool {
        Arc::ptr_eq(&self.recv, &ticket.key)
    }

    /// Decrypts the ciphertext (and tag) of a data message with counter `counter` where
    /// it lies; the plaintext is then `buf[..n]` for the returned `n`. None if
    /// authentication fails (`buf` is then garbage). The replay window is the caller's
    /// business.
    #[inline]
    pub(crate) fn decrypt_in_place(&self, counter: u64, buf: &mut [u8]) -> Option<usize> {
        open_at(&self.recv, self.nonce_big_endian, counter, buf)
    }
}

/// Decrypts the ciphertext and tag `buf` of data message `counter` in place; the
/// plaintext's length, None if it does not authenticate (`buf` is then garbage).
#[inline]
fn open_at(
    key: &LessSafeKey,
    nonce_big_endian: bool,
    counter: u64,
    buf: &mut [u8],
) -> Option<usize> {
    if buf.len() < TAG_LEN {
        return None;
    }
    key.open_in_place(nonce(nonce_big_endian, counter), Aad::empty(), buf)
        .ok()
        .map(|plain| plain.len())
}

/// The AEAD nonce of message `counter` (Noise: 4 zero bytes, then the 64-bit counter).
#[inline]
fn nonce(big_endian: bool, counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&if big_endian {
        counter.to_be_bytes()
    } else {
        counter.to_le_bytes()
    });
    Nonce::assume_unique_for_key(bytes)
}

/// Writes data message `counter` (on `lane`) into `out`: the header, the plaintext
/// `write` appends, sealed in place, and the tag.
#[inline]
fn seal(
    key: &LessSafeKey,
    nonce_big_endian: bool,
    remote_index: u32,
    counter: u64,
    lane: u8,
    write: impl FnOnce(&mut Vec<u8>),
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    out.resize(DATA_HEADER_LEN, 0);
    write(out);
    let end = out.len();
    out.resize(end + TAG_LEN, 0);
    seal_at(
        key,
        nonce_big_endian,
        (remote_index, counter, lane),
        out,
        0..end,
    )
}

/// Seals data message `counter` in `buf` where it lies: the header goes into
/// `buf[at.start..]`, the plaintext after it up to `at.end` is encrypted in place, and the
/// tag goes into `buf[at.end..at.end + TAG_LEN]` (the caller checked the room). `header`
/// is the receiver's index, the counter and the lane.
#[inline]
fn seal_at(
    key: &LessSafeKey,
    nonce_big_endian: bool,
    header: (u32, u64, u8),
    buf: &mut [u8],
    at: Range<usize>,
) -> bool {
    let (remote_index, counter, lane) = header;
    let body = at.start + DATA_HEADER_LEN;
    buf[at.start..body].copy_from_slice(&data_header(remote_index, counter, lane));
    let Ok(tag) = key.seal_in_place_separate_tag(
        nonce(nonce_big_endian, counter),
        Aad::empty(),
        &mut buf[body..at.end],
    ) else {
        return false;
    };
    buf[at.end..at.end + TAG_LEN].copy_from_slice(tag.as_ref());
    true
}

/// A data message the endpoint found a live session and a fresh counter for
/// ([`crate::tunnel::Endpoint::ticket`]): it is opened with [`OpenTicket::open`] on any
/// thread, without the endpoint, then handed back to
/// [`crate::tunnel::Endpoint::accept_opened`], which moves the replay window (only an
/// authentic message may) and delivers it.
pub struct OpenTicket {
    key: Arc<LessSafeKey>,
    nonce_big_endian: bool,
    pub(crate) index: u32,
    pub(crate) counter: u64,
}

impl std::fmt::Debug for OpenTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTicket")
            .field("index", &self.index)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl OpenTicket {
    /// Decrypts the data message `datagram` (header included; the one the ticket was made
    /// for) where it lies: the inner plaintext is then
    /// `datagram[DATA_HEADER_LEN..DATA_HEADER_LEN + n]` for the returned `n`. None if it
    /// does not authenticate, or is not the message the ticket is for.
    pub fn open(&self, datagram: &mut [u8]) -> Option<usize> {
        if datagram.len() < DATA_HEADER_LEN + TAG_LEN
            || super::wire::read_u32(&datagram[1..]) != self.index
            || super::wire::read_u64(&datagram[5..]) != self.counter
        {
            return None;
        }
        let body = &mut datagram[DATA_HEADER_LEN..];
        open_at(&self.key, self.nonce_big_endian, self.counter, body)
    }
}

/// Counters reserved on a session ([`crate::tunnel::Endpoint::reserve`]): seals data
/// messages with them on any thread, each counter once, without touching the endpoint.
/// Counters left unused are never used by anyone (the receiver's replay window takes
/// gaps and, within [`crate::tunnel::REPLAY_WINDOW`], batches sealed out of order).
pub struct SealBatch {
    key: Arc<LessSafeKey>,
    nonce_big_endian: bool,
    remote_index: u32,
    /// The lane its data messages name ([`SealBatch::set_lane`]).
    lane: u8,
    next: u64,
    end: u64,
}

impl std::fmt::Debug for SealBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealBatch")
            .field("remote_index", &self.remote_index)
            .field("lane", &self.lane)
            .field("next", &self.next)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl SealBatch {
    /// Counters left.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// Makes the data messages it seals name `lane` (0 to 15; 0 unless set): the
    /// receiver's threads split data messages by lane before opening them.
    pub fn set_lane(&mut self, lane: u8) {
        self.lane = lane % super::wire::LANES as u8;
    }

    /// Seals one IP payload of `network` into `out` (overwritten, capacity reused).
    /// False once the reserved counters are used up.
    #[inline]
    pub fn seal_ip(&mut self, network: &str, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        if self.next >= self.end || 2 + network.len() + bytes.len() > MAX_PLAINTEXT {
            return false;
        }
        let counter = self.next;
        self.next += 1;
        seal(
            &self.key,
            self.nonce_big_endian,
            self.remote_index,
            counter,
            self.lane,
            |buf| super::wire::append_inner(buf, super::PayloadKind::Ip, network, bytes),
            out,
        )
    }

    /// Seals the IP payload `buf[at]` of `network` where it lies: the data message's
    /// header and inner prefix are written into the bytes in front of it, the tag into
    /// those behind it. Returns the datagram's range in `buf`; None (nothing written, no
    /// counter used) when the room around the payload is short or the payload too long,
    /// and once the reserved counters are used up.
    #[inline]
    pub fn seal_ip_in_place(
        &mut self,
        network: &str,
        buf: &mut [u8],
        at: Range<usize>,
    ) -> Option<Range<usize>> {
        let inner = 2 + network.len();
        let fits = network.len() <= MAX_NETWORK_LEN
            && at.start >= DATA_HEADER_LEN + inner
            && at.start <= at.end
            && at.end.checked_add(TAG_LEN)? <= buf.len()
            && inner + at.len() <= MAX_PLAINTEXT;
        if !fits || self.next >= self.end {
            return None;
        }
        let counter = self.next;
        self.next += 1;
        let start = at.start - inner - DATA_HEADER_LEN;
        write_inner_prefix(
            &mut buf[at.start - inner..],
            super::PayloadKind::Ip,
            network,
        );
        let key = &self.key;
        seal_at(
            key,
            self.nonce_big_endian,
            (self.remote_index, counter, self.lane),
            buf,
            start..at.end,
        )
        .then_some(start..at.end + TAG_LEN)
    }
}
