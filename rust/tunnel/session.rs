//! One established session: the Noise transport keys, the send counter and the replay
//! window. This is the data fast path: encrypting or decrypting a message writes into a
//! caller's buffer and allocates nothing.

use std::time::{Duration, Instant};

use snow::StatelessTransportState;

use super::replay::ReplayWindow;
use super::wire::{DATA, DATA_HEADER_LEN, TAG_LEN};
use super::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};

/// The keys of one completed handshake and what has been sent and received with them.
pub(crate) struct Session {
    transport: StatelessTransportState,
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
    pub(crate) fn new(
        transport: StatelessTransportState,
        local_index: u32,
        remote_index: u32,
        created: Instant,
    ) -> Self {
        Session {
            initiator: transport.is_initiator(),
            transport,
            local_index,
            remote_index,
            created,
            send_counter: 0,
            replay: ReplayWindow::new(),
        }
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

    /// Writes a whole data message carrying `plaintext` into `out` (its old contents are
    /// overwritten; its capacity is reused). False if the session cannot send (counter
    /// exhausted, or a plaintext too long for Noise, which the caller prevents).
    #[inline]
    pub(crate) fn encrypt_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> bool {
        let counter = self.send_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        // Resizing a reused buffer of the same length is free; only growth is zero-filled.
        out.resize(DATA_HEADER_LEN + plaintext.len() + TAG_LEN, 0);
        out[0] = DATA;
        out[1..5].copy_from_slice(&self.remote_index.to_le_bytes());
        out[5..DATA_HEADER_LEN].copy_from_slice(&counter.to_le_bytes());
        match self
            .transport
            .write_message(counter, plaintext, &mut out[DATA_HEADER_LEN..])
        {
            Ok(_) => {
                self.send_counter = counter + 1;
                true
            }
            Err(_) => false,
        }
    }

    /// Decrypts the ciphertext of a data message with counter `counter` into `out`
    /// (resized to the plaintext). False if authentication fails. The replay window is
    /// the caller's business.
    #[inline]
    pub(crate) fn decrypt_into(&self, counter: u64, ciphertext: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(len) = ciphertext.len().checked_sub(TAG_LEN) else {
            return false;
        };
        out.resize(len, 0);
        self.transport
            .read_message(counter, ciphertext, out)
            .is_ok()
    }
}
