//! One established session: the transport keys, the send counter and the replay window.
//! This is the data fast path: encrypting or decrypting a message writes into a caller's
//! buffer, in place, and allocates nothing.
//!
//! The keys are the Noise handshake's split (snow runs the handshake); the transport
//! itself seals and opens with ring directly, in place, exactly as Noise's CipherState
//! would (empty associated data; nonce = 4 zero bytes and the 64-bit counter, big-endian for
//! AES-GCM and little-endian for ChaChaPoly, per the Noise spec), so the inner plaintext is
//! written straight into the outgoing datagram instead of being copied there.

use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use snow::HandshakeState;

use super::Cipher;
use super::replay::ReplayWindow;
use super::wire::{DATA, DATA_HEADER_LEN, TAG_LEN};
use super::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};

/// The keys of one completed handshake and what has been sent and received with them.
pub(crate) struct Session {
    send: LessSafeKey,
    recv: LessSafeKey,
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
            send: key(send)?,
            recv: key(recv)?,
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
    fn nonce(&self, counter: u64) -> Nonce {
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&if self.nonce_big_endian {
            counter.to_be_bytes()
        } else {
            counter.to_le_bytes()
        });
        Nonce::assume_unique_for_key(bytes)
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
        out.clear();
        out.push(DATA);
        out.extend_from_slice(&self.remote_index.to_le_bytes());
        out.extend_from_slice(&counter.to_le_bytes());
        write(out);
        let nonce = self.nonce(counter);
        let Ok(tag) =
            self.send
                .seal_in_place_separate_tag(nonce, Aad::empty(), &mut out[DATA_HEADER_LEN..])
        else {
            return false;
        };
        out.extend_from_slice(tag.as_ref());
        self.send_counter = counter + 1;
        true
    }

    /// Decrypts the ciphertext of a data message with counter `counter` into `out`
    /// (resized to the plaintext). False if authentication fails. The replay window is
    /// the caller's business.
    #[inline]
    pub(crate) fn decrypt_into(&self, counter: u64, ciphertext: &[u8], out: &mut Vec<u8>) -> bool {
        if ciphertext.len() < TAG_LEN {
            return false;
        }
        out.clear();
        out.extend_from_slice(ciphertext);
        match self
            .recv
            .open_in_place(self.nonce(counter), Aad::empty(), &mut out[..])
        {
            Ok(plain) => {
                let len = plain.len();
                out.truncate(len);
                true
            }
            Err(_) => false,
        }
    }
}
