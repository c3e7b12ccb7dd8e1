//! The receive-side replay window of one session: WireGuard's sliding bitmap (RFC 6479).
//!
//! The bitmap is a ring of 64-bit words; moving the window forward clears whole words, so
//! an update costs O(1) however far the counter jumps. A counter is accepted once, and only
//! if it is at most [`REPLAY_WINDOW`] behind the highest counter accepted so far.

use super::REJECT_AFTER_MESSAGES;

const WORD_BITS: u64 = 64;
const WORDS: usize = 256;
const BITS_TOTAL: u64 = WORD_BITS * WORDS as u64;

/// How far behind the highest accepted counter a packet may arrive (16,320 counters: datapath threads seal batches of one session out of order).
pub const REPLAY_WINDOW: u64 = BITS_TOTAL - WORD_BITS;

/// Which counters a session has accepted.
#[derive(Clone)]
pub(crate) struct ReplayWindow {
    /// One more than the highest counter accepted (0: none yet).
    next: u64,
    bitmap: [u64; WORDS],
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        ReplayWindow {
            next: 0,
            bitmap: [0; WORDS],
        }
    }

    /// Whether `counter` would be accepted (not seen, not too old); changes nothing, so
    /// it can run before the (costlier) authentication.
    #[inline]
    pub(crate) fn check(&self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if c > self.next {
            return true;
        }
        if c + REPLAY_WINDOW < self.next {
            return false;
        }
        let word = ((c / WORD_BITS) as usize) & (WORDS - 1);
        self.bitmap[word] & (1 << (c % WORD_BITS)) == 0
    }

    /// Records `counter` (after the packet was authenticated); false if it was seen or is
    /// too old.
    #[inline]
    pub(crate) fn update(&mut self, counter: u64) -> bool {
        if counter >= REJECT_AFTER_MESSAGES {
            return false;
        }
        let c = counter + 1;
        if c + REPLAY_WINDOW < self.next {
            return false;
        }
        let index = c / WORD_BITS;
        if c > self.next {
            let current = self.next / WORD_BITS;
            let advance = (index - current).min(WORDS as u64);
            for i in 1..=advance {
                self.bitmap[((current + i) as usize) & (WORDS - 1)] = 0;
            }
            self.next = c;
        }
        let word = &mut self.bitmap[(index as usize) & (WORDS - 1)];
        let bit = 1 << (c % WORD_BITS);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}
