//! The tunnel's datagram layouts (see the table in the module docs of [`crate::tunnel`])
//! and the inner plaintext of data messages.

use super::PayloadKind;

/// Message type of a handshake initiation (Noise XX message 1).
pub(crate) const HANDSHAKE_INIT: u8 = 1;
/// Message type of a handshake response (Noise XX message 2).
pub(crate) const HANDSHAKE_RESPONSE: u8 = 2;
/// Message type of a handshake final (Noise XX message 3).
pub(crate) const HANDSHAKE_FINAL: u8 = 3;
/// Message type of a data message on lane 0.
pub(crate) const DATA: u8 = 4;
/// Message types `0x41..=0x4f`: a data message on lane 1 to 15. A lane is the sending
/// datapath thread's; the receiver's `SO_REUSEPORT` group hands each lane to one of its
/// receiving threads (before any decryption), so a flow, which one sending thread
/// carries, stays on one receiving thread and in order. Not authenticated (like the
/// index): a changed lane only moves a datagram to another thread, which opens it alike.
pub(crate) const DATA_LANES: u8 = 0x40;
/// How many lanes data messages can name.
pub const LANES: usize = 16;
/// Message type of a cookie reply (a responder under load answering message 1).
pub(crate) const COOKIE_REPLY: u8 = 5;

/// The AEAD tag (Poly1305).
pub const TAG_LEN: usize = 16;
/// Type byte, receiver index and counter in front of a data message's ciphertext.
pub const DATA_HEADER_LEN: usize = 1 + 4 + 8;
/// Bytes a data message adds to the packet it carries, for a network id of
/// `network_len` bytes: header, kind and length bytes, the id, and the tag.
pub const fn data_overhead(network_len: usize) -> usize {
    DATA_HEADER_LEN + 2 + network_len + TAG_LEN
}
/// The smallest data message: a header and a keep-alive (one byte) with its tag.
pub const DATA_MIN_LEN: usize = DATA_HEADER_LEN + 1 + TAG_LEN;
/// The longest network id a data message carries.
pub const MAX_NETWORK_LEN: usize = 128;
/// The largest data message: the largest UDP payload over IPv4.
pub const MAX_DATAGRAM_LEN: usize = 65_507;
/// The largest inner plaintext (kind, network, payload) of one data message.
pub(crate) const MAX_PLAINTEXT: usize = MAX_DATAGRAM_LEN - DATA_HEADER_LEN - TAG_LEN;

/// The recoverable secp256k1 signature carried as the Noise payload of messages 2 and 3.
pub(crate) const PROOF_LEN: usize = 65;
const KEY_LEN: usize = 32;
/// A MAC of message 1 (mac1, mac2) and a cookie: truncated HMAC-SHA256.
pub(crate) const MAC_LEN: usize = 16;
/// Where message 1's Noise part starts (after type, sender index and suite).
pub(crate) const INIT_NOISE_AT: usize = 1 + 4 + 1;
/// Where message 1's mac1 starts: it covers everything before it.
pub(crate) const INIT_MAC1_AT: usize = INIT_NOISE_AT + KEY_LEN;
/// Where message 1's mac2 starts: it covers everything before it, mac1 included.
pub(crate) const INIT_MAC2_AT: usize = INIT_MAC1_AT + MAC_LEN;
/// Message 1: type, sender index, cipher suite, `e`, mac1, mac2.
pub(crate) const INIT_LEN: usize = INIT_MAC2_AT + MAC_LEN;
/// The random nonce of a cookie reply.
pub(crate) const COOKIE_NONCE_LEN: usize = 24;
/// A cookie reply: type, receiver index, nonce, sealed cookie (cookie and tag).
pub(crate) const COOKIE_REPLY_LEN: usize = 1 + 4 + COOKIE_NONCE_LEN + MAC_LEN + TAG_LEN;
/// The Noise payload of message 2: the proof, then the responder's index again, so that
/// the cleartext copy in the header is authenticated.
pub(crate) const RESPONSE_PAYLOAD_LEN: usize = PROOF_LEN + 4;
/// Message 2: type, sender index, receiver index, `e`, encrypted `s`, encrypted payload.
pub(crate) const RESPONSE_LEN: usize =
    1 + 4 + 4 + KEY_LEN + (KEY_LEN + TAG_LEN) + (RESPONSE_PAYLOAD_LEN + TAG_LEN);
/// Message 3: type, receiver index, encrypted `s`, encrypted proof.
pub(crate) const FINAL_LEN: usize = 1 + 4 + (KEY_LEN + TAG_LEN) + (PROOF_LEN + TAG_LEN);

/// Inner kind byte of a keep-alive (nothing follows it).
pub(crate) const KIND_KEEPALIVE: u8 = 0;
const KIND_IP: u8 = 1;
const KIND_CONTROL: u8 = 2;

/// The keep-alive plaintext.
pub(crate) const KEEPALIVE: [u8; 1] = [KIND_KEEPALIVE];

#[inline]
pub(crate) fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
pub(crate) fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Writes the inner plaintext of a payload into `buf` (cleared first). The caller has
/// checked the network and payload lengths.
#[inline]
pub(crate) fn write_inner(buf: &mut Vec<u8>, kind: PayloadKind, network: &str, bytes: &[u8]) {
    buf.clear();
    append_inner(buf, kind, network, bytes);
}

/// Appends an inner plaintext to `buf` (after whatever it holds).
pub(crate) fn append_inner(buf: &mut Vec<u8>, kind: PayloadKind, network: &str, bytes: &[u8]) {
    debug_assert!(network.len() <= MAX_NETWORK_LEN);
    let prefix = 2 + network.len();
    buf.reserve(prefix + bytes.len() + TAG_LEN);
    let at = buf.len();
    buf.resize(at + prefix, 0);
    write_inner_prefix(&mut buf[at..], kind, network);
    buf.extend_from_slice(bytes);
}

/// Writes an inner plaintext's prefix (kind, network length, network) into
/// `out[..2 + network.len()]`; the payload follows it.
#[inline]
pub(crate) fn write_inner_prefix(out: &mut [u8], kind: PayloadKind, network: &str) {
    out[0] = match kind {
        PayloadKind::Ip => KIND_IP,
        PayloadKind::Control => KIND_CONTROL,
    };
    out[1] = network.len() as u8;
    out[2..2 + network.len()].copy_from_slice(network.as_bytes());
}

/// The type byte of a data message on `lane` (taken modulo [`LANES`]).
#[inline]
pub(crate) const fn data_type(lane: u8) -> u8 {
    match lane as usize % LANES {
        0 => DATA,
        l => DATA_LANES | l as u8,
    }
}

/// Whether `t` is the type byte of a data message, and on which lane.
#[inline]
pub const fn data_lane(t: u8) -> Option<u8> {
    if t == DATA {
        Some(0)
    } else if t & 0xf0 == DATA_LANES && t != DATA_LANES {
        Some(t & 0x0f)
    } else {
        None
    }
}

/// A data message's header: type (with the lane), the receiver's index, the counter.
#[inline]
pub(crate) fn data_header(remote_index: u32, counter: u64, lane: u8) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = data_type(lane);
    h[1..5].copy_from_slice(&remote_index.to_le_bytes());
    h[5..].copy_from_slice(&counter.to_le_bytes());
    h
}

/// A decrypted inner plaintext.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inner<'a> {
    /// A keep-alive: nothing to deliver.
    KeepAlive,
    /// A payload for the local node.
    Payload {
        kind: PayloadKind,
        network: &'a str,
        bytes: &'a [u8],
    },
}

/// Parses an inner plaintext; `None` if it is malformed (unknown kind, a network id
/// longer than [`MAX_NETWORK_LEN`] or than the message, or not UTF-8).
#[inline]
pub(crate) fn parse_inner(pt: &[u8]) -> Option<Inner<'_>> {
    let (&kind, rest) = pt.split_first()?;
    let kind = match kind {
        KIND_KEEPALIVE if rest.is_empty() => return Some(Inner::KeepAlive),
        KIND_IP => PayloadKind::Ip,
        KIND_CONTROL => PayloadKind::Control,
        _ => return None,
    };
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if len > MAX_NETWORK_LEN || len > rest.len() {
        return None;
    }
    let (network, bytes) = rest.split_at(len);
    let network = std::str::from_utf8(network).ok()?;
    Some(Inner::Payload {
        kind,
        network,
        bytes,
    })
}

/// The size of the payload in an inner plaintext built by [`write_inner`].
#[inline]
pub(crate) fn payload_len(pt: &[u8]) -> usize {
    match pt {
        [_, netlen, ..] => pt.len() - 2 - usize::from(*netlen),
        _ => 0,
    }
}
