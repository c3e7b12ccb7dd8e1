//! A batch of frames read from an attachment, each in a buffer of its own with room in
//! front ([`HEADROOM`]) and behind ([`TAILROOM`]), so that a frame bound for one peer is
//! sealed into a tunnel datagram where it lies ([`crate::tunnel::SealBatch::seal_ip_in_place`]):
//! the data message's header and inner prefix are written in front of it and the tag
//! behind, and the datagram goes to the socket from the same buffer. Segmenting a TSO
//! read ([`super::offload::segment`]) writes each segment straight into its slot, so a
//! byte a payload sends is copied once in user space on its way out.

use super::attach::MAX_FRAME;
use crate::tunnel::{DATA_HEADER_LEN, MAX_NETWORK_LEN, TAG_LEN};

/// Free bytes in front of every frame: a data message's header and inner prefix for the
/// longest network id.
pub const HEADROOM: usize = DATA_HEADER_LEN + 2 + MAX_NETWORK_LEN;
/// Free bytes behind the largest frame: the AEAD tag.
pub const TAILROOM: usize = TAG_LEN;
const BUF_LEN: usize = HEADROOM + MAX_FRAME + TAILROOM;

/// Frames `0..len()`, frame `k` at `HEADROOM..HEADROOM + len` of buffer `k`. Buffers are
/// kept and reused: reading a batch allocates nothing once the batch has been as large.
#[derive(Debug, Default)]
pub struct Frames {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
}

impl Frames {
    /// Empties the batch (buffers are kept).
    pub fn clear(&mut self) {
        self.lens.clear();
    }

    /// How many frames the batch holds.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// True when the batch holds none.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// The frames' lengths, in order.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Frame `k`.
    pub fn frame(&self, k: usize) -> &[u8] {
        &self.bufs[k][HEADROOM..HEADROOM + self.lens[k]]
    }

    /// Room for the next frame ([`MAX_FRAME`] bytes): write it there, then
    /// [`push`](Self::push) its length.
    pub fn next_mut(&mut self) -> &mut [u8] {
        let k = self.lens.len();
        if self.bufs.len() <= k {
            self.bufs.push(vec![0u8; BUF_LEN]);
        }
        &mut self.bufs[k][HEADROOM..HEADROOM + MAX_FRAME]
    }

    /// Adds the frame of `len` bytes just written into [`next_mut`](Self::next_mut).
    pub fn push(&mut self, len: usize) {
        assert!(len <= MAX_FRAME && self.bufs.len() > self.lens.len());
        self.lens.push(len);
    }

    /// Adds a copy of `frame`; false (nothing added) if it is longer than [`MAX_FRAME`],
    /// which no IP packet or Ethernet frame is.
    pub fn push_copy(&mut self, frame: &[u8]) -> bool {
        let Some(slot) = self.next_mut().get_mut(..frame.len()) else {
            return false;
        };
        slot.copy_from_slice(frame);
        self.push(frame.len());
        true
    }

    /// The whole buffer of frame `k` (the frame at `HEADROOM..`), to seal in place: its
    /// bytes are the frame's no more once it is.
    pub(crate) fn buf_mut(&mut self, k: usize) -> &mut [u8] {
        &mut self.bufs[k]
    }

    /// Bytes `range` of buffer `k` (a datagram sealed there).
    pub(crate) fn buf(&self, k: usize, range: std::ops::Range<usize>) -> &[u8] {
        &self.bufs[k][range]
    }
}
