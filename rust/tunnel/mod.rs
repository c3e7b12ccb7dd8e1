//! Node-to-node tunnels: one node's end of the encrypted UDP sessions to all its peers.
//!
//! This layer sits under the routers ([`crate::router`]) and over the socket the
//! datapath owns: a router says *which node* a packet goes to; an [`Endpoint`] turns the
//! packet into a datagram only that node can read, and back. One endpoint serves every
//! peer over one UDP socket, and one session with a peer carries every network the two
//! nodes share (each data message names its network).
//!
//! The endpoint is a sans-IO state machine, like quinn-proto's: the caller hands it
//! datagrams ([`Endpoint::handle_datagram`]) and payloads ([`Endpoint::send`]) with the
//! current time, sends what [`Endpoint::poll_transmit`] returns, reacts to
//! [`Endpoint::poll_event`], and calls [`Endpoint::handle_timeout`] at
//! [`Endpoint::poll_at`]. No sockets, threads or clocks inside; randomness for
//! non-secret choices (indices, retry jitter) comes from a seed, key material from the
//! OS through `snow`.
//!
//! # Protocol
//!
//! WireGuard's design with a Noise XX handshake, so that either side learns the other's
//! identity from the handshake itself:
//!
//! - **Handshake**: `Noise_XX_25519_AESGCM_BLAKE2s` or `Noise_XX_25519_ChaChaPoly_BLAKE2s` (the initiator's [`Cipher`], named in message 1; ring-accelerated), prologue `golem-vpn/tunnel/v1`,
//!   with a fresh X25519 static key per endpoint. The Noise payload of messages 2 and 3
//!   is the sender's *identity proof*: a recoverable secp256k1 signature by its node key
//!   ([`crate::identity`], `v ‖ r ‖ s` over sha256) of
//!   `b"golem-vpn/noise-static/v1" ‖ noise_static_public_key`. The receiver recovers the
//!   node id from the signature over the static key Noise authenticated. The initiator
//!   requires exactly the node id it dialed (else `identity_mismatch`); the responder
//!   requires an id the caller [allowed](Endpoint::allow) (else `not_allowed`). A node
//!   cannot reuse another's proof: it signs a static key whose private half it lacks.
//!   Message 2's payload also repeats the responder's index, which authenticates the
//!   cleartext copy. A refused handshake message spends that try (snow 0.10 cannot
//!   roll a handshake state back completely); the retry timer starts a new one.
//! - **Data**: the session's AEAD (AES-256-GCM by default on CPUs with AES instructions,
//!   else ChaCha20-Poly1305) under the Noise split keys, with the 64-bit counter as the
//!   nonce exactly as Noise's CipherState forms it, so datagrams may arrive out of order.
//!   The data path seals and opens with ring in place (the inner plaintext is written
//!   straight into the datagram); snow runs the handshake. As in WireGuard, the header is
//!   not additional data: the counter is bound through the nonce and the receiver index
//!   selects the key, so a changed header fails authentication all the same.
//! - **Replay**: a sliding window of [`REPLAY_WINDOW`] counters per session (RFC 6479
//!   bitmap, as in WireGuard); the window is checked before and updated after
//!   authentication.
//! - **Sessions**: up to three per peer, WireGuard's keypairs: *current* (we send on
//!   it), *previous* (still accepted, for packets in flight across a rekey) and
//!   *unconfirmed* (we initiated it, and send on it only while there is no current one,
//!   until the responder's first message confirms it). The responder's session is
//!   current at once and the responder confirms it with a keep-alive (or queued data).
//!   A rekey therefore loses nothing: the old session carries traffic until the new one
//!   is confirmed, and stays receivable as *previous*.
//! - **Roaming**: an authenticated message (data, handshake response or final) from a
//!   new address moves the peer's address there.
//!
//! # Wire format
//!
//! Integers are little-endian. Every datagram starts with a one-byte type.
//!
//! | type | message | layout after the type byte | size |
//! |---|---|---|---|
//! | 1 | handshake init | sender index `u32`, cipher suite `u8` (0 AES-256-GCM, 1 ChaCha20-Poly1305), Noise message 1 (`e`, 32), mac1 (16), mac2 (16, zeros without a cookie) | 70 |
//! | 2 | handshake response | sender index `u32`, receiver index `u32`, Noise message 2 (`e` 32, `s` 32+16, payload 69+16: proof ‖ sender index again) | 174 |
//! | 3 | handshake final | receiver index `u32`, Noise message 3 (`s` 32+16, proof 65+16) | 134 |
//! | 4 | data | receiver index `u32`, counter `u64`, ciphertext (inner plaintext + 16-byte tag) | 13 + n + 16 |
//! | 0x41–0x4f | data on lane 1–15 | as type 4 (which is lane 0); the lane is the sending thread's, for the receiver's threads to split datagrams by before opening them | 13 + n + 16 |
//! | 5 | cookie reply | receiver index `u32` (the initiation's sender index), nonce (24), sealed cookie (16 + 16-byte tag) | 61 |
//!
//! The inner plaintext of a data message:
//!
//! | field | size | meaning |
//! |---|---|---|
//! | kind | 1 | 0 keep-alive (nothing follows), 1 IP packet, 2 control message |
//! | network length | 1 | 0 to 128 |
//! | network id | 0–128 | UTF-8, the network the payload belongs to |
//! | payload | rest | the packet or message |
//!
//! A 1400-byte IP packet of a yagna network (32-hex-digit id) costs 13 + 2 + 32 + 16 =
//! 63 bytes of overhead.
//!
//! # Timers
//!
//! WireGuard's, with its names:
//!
//! | constant | value | what happens |
//! |---|---|---|
//! | [`REKEY_AFTER_TIME`] | 120 s | the initiator of the current session starts a new handshake when it sends on it |
//! | `REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT` | 165 s | ... or when it receives on it (an initiator that only listens) |
//! | [`REKEY_AFTER_MESSAGES`] | 2^60 | either side starts a new handshake after sending this many messages ([`Config::rekey_after_messages`]) |
//! | [`REJECT_AFTER_TIME`] | 180 s | a session sends and accepts nothing more, and is dropped; the last one going reports `PeerDown` |
//! | [`REJECT_AFTER_MESSAGES`] | 2^64 - 2^13 - 1 | no counter at or above it is sent or accepted |
//! | [`REKEY_TIMEOUT`] + up to [`REKEY_TIMEOUT_JITTER`] | 5 s + 0–333 ms | an initiation without a response, or a session without confirmation, is retried (new initiation); responder handshakes waiting for message 3 are forgotten after `REKEY_TIMEOUT` |
//! | [`REKEY_ATTEMPT_TIME`] | 90 s | retries stop, waiting payloads are dropped, the peer is reported down |
//! | [`KEEPALIVE_TIMEOUT`] | 10 s | a peer that sent us data gets a keep-alive if we sent nothing since (passive keep-alive) |
//! | `KEEPALIVE_TIMEOUT + REKEY_TIMEOUT` | 15 s | data sent with nothing heard back since starts a new handshake (the peer may have restarted) |
//! | [`Config::persistent_keepalive`] | off | a keep-alive after this long without sending (NAT mappings) |
//!
//!
//! # Under load
//!
//! An initiation costs a responder an ephemeral key, two X25519 operations and a pending
//! handshake; a datagram costs its sender nothing. WireGuard's answer, adapted to XX:
//!
//! - **mac1** on message 1: HMAC-SHA256 (truncated to 16 bytes) of everything before it,
//!   keyed by `b"golem-vpn/mac1/v1" ‖ responder's node id`. XX's message 1 names nobody,
//!   but the initiator always dials a node id, so only senders that know whom they talk
//!   to get past it. It is checked first, before any Noise work: garbage, scans and
//!   initiations meant for another node are dropped for the price of one HMAC
//!   (`bad_mac1`). A node id is no secret (relays and fellow members know it): mac1
//!   stops blind floods, not a determined attacker; what follows does.
//! - **Under load**: [`Config::under_load_pending`] handshakes waiting for message 3 (and
//!   for [`UNDER_LOAD_AFTER_TIME`] after), or, per source, more initiations than its
//!   token bucket allows ([`INITIATIONS_PER_SECOND`], bursts of [`INITIATIONS_BURST`]).
//!   Then an initiation must carry a valid **mac2**; without it the responder does no
//!   DH and keeps no state, and answers with a **cookie reply** (`cookie_sent`), smaller
//!   than the initiation (no amplification).
//! - **The cookie** is HMAC-SHA256(secret, source IP and port) truncated, the secret
//!   random and replaced every [`COOKIE_SECRET_MAX_AGE`]. The reply seals it with
//!   ChaCha20-Poly1305 under a one-time key HMAC(`b"golem-vpn/cookie/v1" ‖ responder's
//!   node id`, random 24-byte nonce), with the initiation's mac1 as associated data: only
//!   who sent that initiation (and knows whom it dialled) can use it, and a reply cannot
//!   be moved to another initiation. The initiator keeps it for
//!   `COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY` and retries at once (once per try:
//!   WireGuard waits for the retry timer, which would cost a legitimate peer 5 s) with
//!   mac2 = HMAC(cookie, message 1 up to mac2). A reply for no initiation in flight, or
//!   that does not open, is dropped (`bad_cookie`).
//! - **mac2** proves the sender receives at its source address. A valid one passes; under
//!   load, only within a second token bucket per source that only such proven
//!   initiations spend (`rate_limited` past it), so a forger cannot use up a real
//!   host's rate; they spend the first bucket too, so mixing both kinds gains no rate.
//!   Not under load, proven initiations are not limited (WireGuard's rule): many nodes
//!   behind one address (a NAT, loopback) dialling at once pay a cookie's round trip,
//!   not a retry timer, and one attacker with cookies gets at most the handshakes that
//!   put the endpoint under load before its rate applies.
//! - **Sources** are IPv4 addresses and IPv6 /64s (what one host easily holds), but each
//!   address of the relay placeholder prefix `100::/64` on its own: there each address is
//!   one node whose relayed datagrams the relay's forward header named, and cookie
//!   replies to it go back through the relay to that node. Each bucket table holds at
//!   most [`MAX_RATE_LIMITED_SOURCES`]; sources idle for a burst's worth are forgotten
//!   first, and a new source finding the table full of active ones counts as over rate.
//! - Established sessions never meet any of this: data messages are looked up by index
//!   and authenticated, so a flood of initiations does not slow them.
//!
//! | constant | value | what happens |
//! |---|---|---|
//! | [`Config::under_load_pending`] | 128 | pending responder handshakes at which the endpoint is under load |
//! | [`UNDER_LOAD_AFTER_TIME`] | 1 s | ... and stays under load this long after |
//! | [`INITIATIONS_PER_SECOND`], [`INITIATIONS_BURST`] | 20/s, 5 | a source's token buckets: past the first, its initiations need a cookie; under load, past the second (proven initiations only), they are dropped |
//! | [`COOKIE_SECRET_MAX_AGE`] | 120 s | the responder draws a new cookie secret; older cookies no longer verify |
//! | [`COOKIE_SECRET_LATENCY`] | 5 s | an initiator stops using a cookie this long before it could have expired |
//! | [`MAX_RATE_LIMITED_SOURCES`] | 4096 | sources tracked per bucket table |
//! | [`Config::max_pending_handshakes`] | 1024 | hard cap on pending responder handshakes (`overloaded` past it) |

mod cookie;
mod peer;
mod replay;
mod session;
mod stats;
mod wire;

#[cfg(test)]
mod cookie_tests;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use snow::params::NoiseParams;
use snow::{Builder, HandshakeState};

pub use replay::REPLAY_WINDOW;
pub use session::{OpenTicket, SealBatch};
pub use stats::{DropCounters, DropReason, TunnelStats};
pub use wire::{
    DATA_HEADER_LEN, DATA_MIN_LEN, LANES, MAX_DATAGRAM_LEN, MAX_NETWORK_LEN, TAG_LEN, data_lane,
    data_overhead,
};

use crate::identity::{Identity, recover_node_id};
use crate::node_id::NodeId;
use cookie::{CookieChecker, Mac, RateLimiter};
use peer::{Attempt, Handshake, Indices, Peer, Slot};
use session::Session;
use wire::{
    COOKIE_NONCE_LEN, COOKIE_REPLY, COOKIE_REPLY_LEN, FINAL_LEN, HANDSHAKE_FINAL, HANDSHAKE_INIT,
    HANDSHAKE_RESPONSE, INIT_LEN, INIT_MAC1_AT, INIT_MAC2_AT, INIT_NOISE_AT, Inner, KEEPALIVE,
    MAC_LEN, MAX_PLAINTEXT, PROOF_LEN, RESPONSE_LEN, RESPONSE_PAYLOAD_LEN,
};

/// The Noise protocol of the handshake with the default cipher (AES-256-GCM).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_BLAKE2s";
/// The Noise protocol with ChaCha20-Poly1305 (for hosts without AES instructions).
pub const NOISE_PARAMS_CHACHA: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// The AEAD a session uses. The initiator chooses (its [`Config::cipher`]) and says so in
/// message 1; a responder speaks both. The choice is part of the Noise protocol name, so
/// an attacker who changes it only breaks the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cipher {
    /// AES-256-GCM (ring, hardware-accelerated where the CPU has AES instructions).
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (ring): fast without AES instructions.
    ChaCha20Poly1305,
}

impl Cipher {
    /// AES-256-GCM where the CPU has AES instructions, else ChaCha20-Poly1305.
    pub fn for_this_cpu() -> Self {
        #[cfg(target_arch = "x86_64")]
        let aes = std::arch::is_x86_feature_detected!("aes");
        #[cfg(target_arch = "aarch64")]
        let aes = std::arch::is_aarch64_feature_detected!("aes");
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let aes = false;
        if aes {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        }
    }

    fn suite(self) -> u8 {
        match self {
            Cipher::Aes256Gcm => 0,
            Cipher::ChaCha20Poly1305 => 1,
        }
    }

    fn from_suite(suite: u8) -> Option<Self> {
        match suite {
            0 => Some(Cipher::Aes256Gcm),
            1 => Some(Cipher::ChaCha20Poly1305),
            _ => None,
        }
    }

    fn params(self) -> NoiseParams {
        match self {
            Cipher::Aes256Gcm => NOISE_PARAMS,
            Cipher::ChaCha20Poly1305 => NOISE_PARAMS_CHACHA,
        }
        .parse()
        .expect("a pattern snow supports")
    }
}
/// Hashed into every handshake: both sides must speak this protocol version.
const PROLOGUE: &[u8] = b"golem-vpn/tunnel/v1";
/// Domain separation for the identity proof (the signed message is this, then the key).
const PROOF_DOMAIN: &[u8] = b"golem-vpn/noise-static/v1";

/// Data datagrams kept while their handshake's message 3 is still on its way. The
/// initiator sends data right after message 3; when the two take different paths (message 3
/// through the relay, data on a direct path that hole punching just opened) or are
/// reordered, the data arrives first and would be lost, costing a TCP retransmission
/// timeout. A few are kept (for at most the handshake's life) and replayed.
pub const EARLY_DATA: usize = 16;
/// Handshakes kept from nodes not allowed yet. A node is told about a peer by its own
/// control plane, which can be a moment later than the peer's first handshake arrives
/// (a provider joins right after the requestor added it, and the requestor dialled at
/// once). The proven session waits, for [`REKEY_TIMEOUT`] at most, and is installed if
/// [`Endpoint::allow`] comes in time; nothing it carries is delivered before that.
pub const PARKED: usize = 16;

/// A session a not-yet-allowed node completed (see [`PARKED`]).
struct Parked {
    node: NodeId,
    session: Session,
    from: SocketAddr,
    at: Instant,
}
/// An initiator starts a new handshake when it sends on a session this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// No message is sent or accepted on a session this old.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// A handshake initiation unanswered this long is retried (plus jitter).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// The most random jitter added to [`REKEY_TIMEOUT`].
pub const REKEY_TIMEOUT_JITTER: Duration = Duration::from_millis(333);
/// Retries stop this long after the first initiation: the peer is reported down.
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A peer that sent us data gets a keep-alive if we send nothing for this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A session rekeys after this many messages sent (the default of
/// [`Config::rekey_after_messages`]).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No message is sent or accepted with a counter this high.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// A responder makes cookies from a secret this old at most (then draws a new one, and
/// mac2s made with older cookies no longer verify).
pub const COOKIE_SECRET_MAX_AGE: Duration = Duration::from_secs(120);
/// An initiator uses a cookie for [`COOKIE_SECRET_MAX_AGE`] less this after it came (it
/// may have been made a moment before the responder's secret changed).
pub const COOKIE_SECRET_LATENCY: Duration = Duration::from_secs(5);
/// A responder is under load this long after it last saw
/// [`Config::under_load_pending`] handshakes waiting for message 3.
pub const UNDER_LOAD_AFTER_TIME: Duration = Duration::from_secs(1);
/// Handshake initiations a source may send per second under load (its token bucket's
/// rate), WireGuard's.
pub const INITIATIONS_PER_SECOND: u32 = 20;
/// ... and in a burst (its token bucket's size).
pub const INITIATIONS_BURST: u32 = 5;
/// Sources a rate limiter tracks at most; when it is full of sources active within the
/// last burst, a new source counts as over its rate.
pub const MAX_RATE_LIMITED_SOURCES: usize = 4096;

/// What a payload is, so the receiver knows where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    /// An IP packet for the network's router.
    Ip,
    /// A control message for the node daemon.
    Control,
}

/// A payload to send to a peer.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    /// What it is.
    pub kind: PayloadKind,
    /// The network it belongs to (at most [`MAX_NETWORK_LEN`] bytes; may be empty).
    pub network: &'a str,
    /// The packet or message.
    pub bytes: &'a [u8],
}

/// A payload that arrived, borrowed from the caller's buffer ([`Endpoint::receive_into`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The authenticated sender.
    pub peer: NodeId,
    /// What it is.
    pub kind: PayloadKind,
    /// The network it belongs to.
    pub network: &'a str,
    /// The packet or message.
    pub bytes: &'a [u8],
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub bytes: Vec<u8>,
}

/// Why a peer went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// Handshakes went unanswered for [`REKEY_ATTEMPT_TIME`] (or were refused); the
    /// payloads waiting for them were dropped.
    HandshakeTimeout,
    /// Its last session passed [`REJECT_AFTER_TIME`] with no new handshake.
    Expired,
    /// The caller disallowed it.
    Disallowed,
}

/// Something the caller should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A session with the peer is up and confirmed by both sides: payloads to it go out
    /// at once. (An initiator already sends on a session it has not seen confirmed, but
    /// reports the peer up only when the responder's first message arrives.)
    PeerUp {
        /// The authenticated node.
        peer: NodeId,
        /// Its address.
        addr: SocketAddr,
    },
    /// The peer has no confirmed session any more; or, while it had none, handshakes
    /// gave up (the payloads waiting for them are dropped). Sending to it starts a new
    /// handshake.
    PeerDown {
        /// The node.
        peer: NodeId,
        /// Why.
        reason: DownReason,
    },
    /// A payload arrived ([`Endpoint::handle_datagram`]).
    Received {
        /// The authenticated sender.
        peer: NodeId,
        /// What it is.
        kind: PayloadKind,
        /// The network it belongs to.
        network: String,
        /// The packet or message.
        bytes: Vec<u8>,
    },
}

/// How an endpoint behaves; the defaults are WireGuard's where it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Payloads held per peer while its handshake runs; the oldest is dropped
    /// (`queue_full`) when a new one does not fit. Default 128.
    pub queue_len: usize,
    /// Responder handshakes waiting for message 3, all peers together; initiations past
    /// it are dropped (`overloaded`). Default 1024.
    pub max_pending_handshakes: usize,
    /// Responder handshakes waiting for message 3 at which the endpoint is *under load*
    /// (for [`UNDER_LOAD_AFTER_TIME`] after): initiations must then carry a valid mac2
    /// (else they get a cookie reply) and pass their source's rate limit. Default 128
    /// (an eighth of the cap, WireGuard's ratio).
    pub under_load_pending: usize,
    /// Messages sent on one session before a rekey. Default [`REKEY_AFTER_MESSAGES`].
    pub rekey_after_messages: u64,
    /// Send a keep-alive when nothing was sent for this long, to keep NAT mappings and the
    /// session alive. Default `None` (off).
    pub persistent_keepalive: Option<Duration>,
    /// The cipher of the sessions this endpoint initiates. Default:
    /// [`Cipher::for_this_cpu`].
    pub cipher: Cipher,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue_len: 128,
            max_pending_handshakes: 1024,
            under_load_pending: 128,
            rekey_after_messages: REKEY_AFTER_MESSAGES,
            persistent_keepalive: None,
            cipher: Cipher::for_this_cpu(),
        }
    }
}

/// Why an endpoint could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `snow` could not make the Noise static key (no OS randomness).
    #[error("cannot generate the Noise static key: {0}")]
    StaticKey(String),
}

/// Why a payload was refused. A payload that is accepted may still be dropped later
/// (counted in [`TunnelStats::drops`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer is not allowed ([`Endpoint::allow`]).
    #[error("node {0} is not an allowed peer")]
    NotAllowed(NodeId),
    /// The peer has no session and no address to start a handshake with.
    #[error("no address known for node {0}")]
    NoAddress(NodeId),
    /// The network id is longer than [`MAX_NETWORK_LEN`] bytes.
    #[error("network id of {0} bytes exceeds the {MAX_NETWORK_LEN}-byte limit")]
    NetworkTooLong(usize),
    /// The payload does not fit one datagram.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The payload's size.
        len: usize,
        /// The largest payload for this network id.
        max: usize,
    },
}

/// A responder handshake waiting for message 3.
struct Pending {
    state: Box<HandshakeState>,
    /// The cipher the initiator chose.
    cipher: Cipher,
    /// The initiator's index.
    remote_index: u32,
    created: Instant,
}

/// One node's end of its tunnels to all its peers. See the module docs.
pub struct Endpoint {
    node_id: NodeId,
    params: NoiseParams,
    static_private: [u8; 32],
    static_public: [u8; 32],
    proof: [u8; PROOF_LEN],
    config: Config,
    rng: XorShift,
    peers: FxHashMap<NodeId, Peer>,
    /// Our indices of sessions and initiations in flight.
    indices: Indices,
    /// Our indices of responder handshakes waiting for message 3.
    pending: FxHashMap<u32, Pending>,
    /// Data that overtook the message 3 it depends on (see [`EARLY_DATA`]):
    /// `(our responder index, sender, datagram)`, replayed once message 3 arrives.
    early: Vec<(u32, SocketAddr, Vec<u8>)>,
    /// Handshakes completed by nodes we did not allow yet (see [`PARKED`]).
    parked: Vec<Parked>,
    /// mac1 and mac2 of initiations to us, and our cookies.
    cookies: CookieChecker,
    /// Every initiation with a valid mac1, per source: past its rate, a source must
    /// prove its address with mac2 even while we are not under load.
    unproven: RateLimiter,
    /// Under load, initiations with a valid mac2, per (proven) source.
    proven: RateLimiter,
    /// Until when the endpoint is under load (see [`Config::under_load_pending`]).
    under_load_until: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: TunnelStats,
    tx_plaintext: Vec<u8>,
    rx_plaintext: Vec<u8>,
    peer_ids: Vec<NodeId>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node_id", &self.node_id)
            .field("peers", &self.peers.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint for the node `identity`, with a fresh Noise static key signed by it.
    ///
    /// `rng_seed` drives the non-secret random choices (session indices, retry jitter);
    /// give each endpoint a different one (from the OS in production, fixed in tests).
    /// The endpoint keeps the proof, not the node key.
    pub fn new(identity: &Identity, config: Config, rng_seed: u64) -> Result<Self, EndpointError> {
        let params = Cipher::Aes256Gcm.params();
        let keypair = Builder::new(params.clone())
            .generate_keypair()
            .map_err(|e| EndpointError::StaticKey(e.to_string()))?;
        let mut static_private = [0u8; 32];
        let mut static_public = [0u8; 32];
        static_private.copy_from_slice(&keypair.private);
        static_public.copy_from_slice(&keypair.public);
        let proof = identity.sign_recoverable(&proof_message(&static_public));
        Ok(Endpoint {
            node_id: identity.node_id(),
            params,
            static_private,
            static_public,
            proof,
            config,
            rng: XorShift::new(rng_seed),
            peers: FxHashMap::default(),
            indices: FxHashMap::default(),
            pending: FxHashMap::default(),
            early: Vec::new(),
            parked: Vec::new(),
            cookies: CookieChecker::new(identity.node_id()),
            unproven: RateLimiter::new(),
            proven: RateLimiter::new(),
            under_load_until: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TunnelStats::default(),
            tx_plaintext: Vec::new(),
            rx_plaintext: Vec::new(),
            peer_ids: Vec::new(),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// This endpoint's Noise static public key (X25519).
    pub fn static_public_key(&self) -> &[u8; 32] {
        &self.static_public
    }

    /// Lets `node` complete handshakes with us, in either direction. Idempotent.
    pub fn allow(&mut self, node: NodeId) {
        self.peers.entry(node).or_default().allowed = true;
        // A handshake it completed while we did not know it: take it, and what it sent.
        let Some(at) = self.parked.iter().position(|p| p.node == node) else {
            return;
        };
        let Parked {
            session, from, at, ..
        } = self.parked.swap_remove(at);
        let index = session.local_index;
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.install_current(session, &mut self.indices);
            self.indices.insert(index, node);
            peer.end_handshake(&mut self.indices);
            peer.addr = Some(from);
            self.stats.handshakes_completed += 1;
            self.session_up(node, at);
            self.replay_early(index, at);
        }
    }

    /// Whether `index` is a session still to come: a responder handshake waiting for
    /// message 3, or a parked one waiting for `allow`.
    fn awaited(&self, index: u32) -> bool {
        self.pending.contains_key(&index)
            || self.parked.iter().any(|p| p.session.local_index == index)
    }

    /// Forgets early data whose session will not come any more.
    fn prune_early(&mut self) {
        let mut early = std::mem::take(&mut self.early);
        early.retain(|(i, _, _)| self.awaited(*i));
        self.early = early;
    }

    /// Delivers the data that arrived for session `index` before it was installed.
    fn replay_early(&mut self, index: u32, now: Instant) {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|(i, _, _)| *i == index);
        self.early = rest;
        for (_, from, data) in mine {
            self.stats.datagrams_in -= 1; // counted when it arrived
            self.handle_datagram(from, &data, now);
        }
    }

    /// Forgets `node` at once: its sessions (their later messages are dropped as
    /// `unknown_index`), its handshake, its waiting payloads (`unreachable`) and its
    /// address. Reports `PeerDown` if it was up.
    pub fn disallow(&mut self, node: &NodeId) {
        self.parked.retain(|p| p.node != *node);
        let Some(peer) = self.peers.remove(node) else {
            return;
        };
        for index in peer.indices() {
            self.indices.remove(&index);
        }
        self.stats
            .drops
            .add(DropReason::Unreachable, peer.queue.len() as u64);
        if peer.up {
            self.events.push_back(Event::PeerDown {
                peer: *node,
                reason: DownReason::Disallowed,
            });
        }
    }

    /// Where to reach `node` (it may move later: authenticated messages from a new
    /// address update it). Does not allow the node.
    pub fn set_peer_address(&mut self, node: NodeId, addr: SocketAddr) {
        self.peers.entry(node).or_default().addr = Some(addr);
    }

    /// The address datagrams to `node` go to.
    pub fn peer_address(&self, node: &NodeId) -> Option<SocketAddr> {
        self.peers.get(node).and_then(|p| p.addr)
    }

    /// Whether `node` is up (the last event about it was `PeerUp`).
    pub fn is_up(&self, node: &NodeId) -> bool {
        self.peers.get(node).is_some_and(|p| p.up)
    }

    /// Starts a handshake with `node` now, unless it is up, a handshake is under way, or
    /// it is not an allowed peer with an address. A node that has just learned of a peer
    /// calls this so that the session is there before the first packet (the peer may have
    /// tried earlier, while we did not allow it yet, and be waiting for its retry timer).
    pub fn connect(&mut self, node: NodeId, now: Instant) {
        let ready = self
            .peers
            .get(&node)
            .is_some_and(|p| p.allowed && p.addr.is_some() && p.handshake.is_none() && !p.up);
        if ready {
            self.start_handshake(node, now);
        }
    }

    /// Like [`connect`](Self::connect), but replaces a handshake in flight: for when the
    /// path changed under it (its initiation went somewhere that will not answer).
    pub fn reconnect(&mut self, node: NodeId, now: Instant) {
        let ready = self
            .peers
            .get(&node)
            .is_some_and(|p| p.allowed && p.addr.is_some() && !p.up);
        if ready {
            self.start_handshake(node, now);
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TunnelStats {
        self.stats
    }

    /// Sends a payload to `node`: encrypted at once onto the transmit queue if a session
    /// is up, else queued (up to [`Config::queue_len`]) while a handshake starts.
    pub fn send(
        &mut self,
        node: &NodeId,
        payload: Payload<'_>,
        now: Instant,
    ) -> Result<(), SendError> {
        let mut out = Vec::new();
        if let Some(dst) = self.send_into(node, payload, now, &mut out)? {
            self.transmits.push_back(Transmit { dst, bytes: out });
        }
        Ok(())
    }

    /// [`send`](Self::send) into the caller's buffer: on `Ok(Some(dst))`, `out` holds the
    /// datagram for `dst` (its old contents overwritten, its capacity reused, nothing
    /// else allocated); on `Ok(None)` the payload waits for a handshake. Handshake
    /// messages this causes still go through [`poll_transmit`](Self::poll_transmit).
    pub fn send_into(
        &mut self,
        node: &NodeId,
        payload: Payload<'_>,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Result<Option<SocketAddr>, SendError> {
        let netlen = payload.network.len();
        if netlen > MAX_NETWORK_LEN {
            return Err(SendError::NetworkTooLong(netlen));
        }
        let max = MAX_PLAINTEXT - 2 - netlen;
        if payload.bytes.len() > max {
            return Err(SendError::TooLarge {
                len: payload.bytes.len(),
                max,
            });
        }
        let peer = allowed_peer(&mut self.peers, node)?;
        let persistent = self.config.persistent_keepalive;
        let write = |buf: &mut Vec<u8>| {
            wire::append_inner(buf, payload.kind, payload.network, payload.bytes);
        };
        if let Some(dst) = peer.encrypt_with(write, false, now, out, persistent) {
            self.stats.packets_out += 1;
            self.stats.bytes_out += payload.bytes.len() as u64;
            self.stats.datagrams_out += 1;
            if peer.wants_rekey_on_send(now, self.config.rekey_after_messages) {
                self.start_handshake(*node, now);
            }
            return Ok(Some(dst));
        }
        if peer.addr.is_none() {
            return Err(SendError::NoAddress(*node));
        }
        let pt = &mut self.tx_plaintext;
        wire::write_inner(pt, payload.kind, payload.network, payload.bytes);
        if self.config.queue_len == 0 {
            self.stats.drops.add(DropReason::QueueFull, 1);
        } else {
            if peer.queue.len() >= self.config.queue_len {
                peer.queue.pop_front();
                self.stats.drops.add(DropReason::QueueFull, 1);
            }
            peer.queue.push_back(pt.clone());
        }
        if peer.handshake.is_none() {
            self.start_handshake(*node, now);
        }
        Ok(None)
    }

    /// Reserves up to `n` message counters on `node`'s sending session, to seal IP
    /// payloads with elsewhere ([`SealBatch::seal_ip`], e.g. on another datapath thread
    /// while this endpoint serves others), with the destination to send them to.
    /// `Ok(None)`: no session can send now (use [`send_into`](Self::send_into), which
    /// queues and starts a handshake). Starts a rekey when one is due, as a send would.
    /// What is sealed is counted by [`count_sealed`](Self::count_sealed).
    pub fn reserve(
        &mut self,
        node: &NodeId,
        n: u64,
        now: Instant,
    ) -> Result<Option<(SealBatch, SocketAddr)>, SendError> {
        let persistent = self.config.persistent_keepalive;
        let rekey_after = self.config.rekey_after_messages;
        let peer = allowed_peer(&mut self.peers, node)?;
        let Some(reserved) = peer.reserve(n, now, persistent) else {
            return Ok(None);
        };
        if peer.wants_rekey_on_send(now, rekey_after) {
            self.start_handshake(*node, now);
        }
        Ok(Some(reserved))
    }

    /// Counts payloads sealed from [`SealBatch`]es: `packets` payloads of `bytes` bytes in
    /// all.
    pub fn count_sealed(&mut self, packets: u64, bytes: u64) {
        self.stats.packets_out += packets;
        self.stats.bytes_out += bytes;
        self.stats.datagrams_out += packets;
    }

    /// Handles a datagram that arrived from `from`. Never panics; anything it cannot use
    /// is counted in [`TunnelStats::drops`]. Payloads become [`Event::Received`].
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let mut buf = std::mem::take(&mut self.rx_plaintext);
        if let Some(d) = self.receive_into(from, data, now, &mut buf) {
            self.events.push_back(Event::Received {
                peer: d.peer,
                kind: d.kind,
                network: d.network.to_owned(),
                bytes: d.bytes.to_vec(),
            });
        }
        self.rx_plaintext = buf;
    }

    /// [`handle_datagram`](Self::handle_datagram) into the caller's buffer: the datagram
    /// is copied into `out` and handled there ([`receive_in_place`](Self::receive_in_place)):
    /// a payload is returned borrowed from it (nothing allocated); handshake messages and
    /// keep-alives return `None`, their replies and events queued as usual.
    pub fn receive_into<'b>(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
        out: &'b mut Vec<u8>,
    ) -> Option<Delivery<'b>> {
        out.clear();
        out.extend_from_slice(data);
        self.receive_in_place(from, &mut out[..], now)
    }

    /// Handles the datagram in `data` where it lies: a data message is decrypted in place
    /// (its bytes are overwritten, whether or not it authenticates) and its payload
    /// returned borrowed from `data`, with no copy at all; anything else as
    /// [`receive_into`](Self::receive_into). The datapath reads datagrams into buffers of
    /// its own and hands each over this way.
    pub fn receive_in_place<'b>(
        &mut self,
        from: SocketAddr,
        data: &'b mut [u8],
        now: Instant,
    ) -> Option<Delivery<'b>> {
        self.stats.datagrams_in += 1;
        match data.first() {
            Some(&t) if wire::data_lane(t).is_some() => return self.receive_data(from, data, now),
            Some(&HANDSHAKE_INIT) => self.receive_init(from, data, now),
            Some(&HANDSHAKE_RESPONSE) => self.receive_response(from, data, now),
            Some(&HANDSHAKE_FINAL) => self.receive_final(from, data, now),
            Some(&COOKIE_REPLY) => self.receive_cookie(data, now),
            Some(_) => self.count_drop(DropReason::UnknownType),
            None => self.count_drop(DropReason::Truncated),
        }
        None
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next (`None`: nothing
    /// pending). Costs O(peers).
    pub fn poll_at(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|p| p.created + REKEY_TIMEOUT);
        let peers = self.peers.values().filter_map(Peer::deadline);
        pending.chain(peers).min()
    }

    /// Runs the timers due at `now`: session expiry, handshake retries and give-up,
    /// keep-alives. Costs O(peers) plus the work that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.created) < REKEY_TIMEOUT);
        self.parked
            .retain(|p| now.saturating_duration_since(p.at) < REKEY_TIMEOUT);
        self.prune_early();
        let mut ids = std::mem::take(&mut self.peer_ids);
        ids.clear();
        ids.extend(
            self.peers
                .iter()
                .filter(|(_, p)| p.deadline().is_some_and(|t| t <= now))
                .map(|(id, _)| *id),
        );
        for id in &ids {
            self.peer_timeout(*id, now);
        }
        self.peer_ids = ids;
    }

    fn peer_timeout(&mut self, id: NodeId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.expire_sessions(now, &mut self.indices);

        let mut start = false;
        let mut gave_up = false;
        if let Some(h) = &peer.handshake {
            if now.saturating_duration_since(h.first_try) >= REKEY_ATTEMPT_TIME {
                peer.end_handshake(&mut self.indices);
                self.stats.handshakes_failed += 1;
                self.stats
                    .drops
                    .add(DropReason::Unreachable, peer.queue.len() as u64);
                peer.queue.clear();
                // A session the responder never confirmed in all that time is dead.
                peer.drop_unconfirmed(&mut self.indices);
                gave_up = true;
            } else if now >= h.retry_at {
                start = true;
            }
        }
        let mut keepalive = false;
        if peer.keepalive_at.is_some_and(|t| t <= now) {
            peer.keepalive_at = None;
            keepalive = true;
        }
        if peer.persistent_at.is_some_and(|t| t <= now) {
            peer.persistent_at = None;
            keepalive = true;
        }
        if peer.new_handshake_at.is_some_and(|t| t <= now) {
            peer.new_handshake_at = None;
            start |= peer.handshake.is_none();
        }

        if !peer.confirmed(now) && (peer.up || gave_up) {
            peer.up = false;
            let reason = if gave_up {
                DownReason::HandshakeTimeout
            } else {
                DownReason::Expired
            };
            self.events.push_back(Event::PeerDown { peer: id, reason });
        }
        if keepalive {
            if peer.can_send(now) {
                let mut out = Vec::new();
                if let Some(dst) =
                    peer.encrypt(&KEEPALIVE, now, &mut out, self.config.persistent_keepalive)
                {
                    push_transmit(&mut self.transmits, &mut self.stats, dst, out);
                }
            } else if self.config.persistent_keepalive.is_some() && peer.handshake.is_none() {
                start = true;
            }
        }
        if start && !gave_up {
            self.start_handshake(id, now);
        }
    }

    fn count_drop(&mut self, reason: DropReason) {
        self.stats.drops.add(reason, 1);
    }

    fn new_handshake(
        &self,
        initiator: bool,
        cipher: Cipher,
    ) -> Result<HandshakeState, snow::Error> {
        let params = match cipher {
            Cipher::Aes256Gcm => self.params.clone(),
            other => other.params(),
        };
        let builder = Builder::new(params)
            .local_private_key(&self.static_private)?
            .prologue(PROLOGUE)?;
        if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            let index = self.rng.next_u64() as u32;
            if index != 0
                && !self.indices.contains_key(&index)
                && !self.pending.contains_key(&index)
            {
                return index;
            }
        }
    }

    /// Sends a (new) handshake initiation to `id`, replacing one in flight.
    fn start_handshake(&mut self, id: NodeId, now: Instant) {
        let Some(addr) = self.peers.get(&id).and_then(|p| p.addr) else {
            return;
        };
        let index = self.alloc_index();
        let cookie = self
            .peers
            .get(&id)
            .and_then(|p| p.cookie)
            .and_then(|(c, at)| {
                (now.saturating_duration_since(at) < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY)
                    .then_some(c)
            });
        let Some((state, msg, mac1)) = self.initiation(index, &id, cookie.as_ref()) else {
            self.stats.handshakes_failed += 1;
            // Keep a retry in flight from firing again at once.
            if let Some(h) = self.peers.get_mut(&id).and_then(|p| p.handshake.as_mut()) {
                h.retry_at = now + REKEY_TIMEOUT;
            }
            return;
        };
        let jitter = Duration::from_millis(
            self.rng.next_u64() % (REKEY_TIMEOUT_JITTER.as_millis() as u64 + 1),
        );
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let first_try = peer.handshake.as_ref().map_or(now, |h| h.first_try);
        peer.end_handshake(&mut self.indices);
        peer.handshake = Some(Handshake {
            attempt: Attempt::Initiating {
                state: Box::new(state),
                index,
                mac1,
                with_cookie: cookie.is_some(),
            },
            first_try,
            retry_at: now + REKEY_TIMEOUT + jitter,
        });
        self.indices.insert(index, id);
        self.stats.handshakes_started += 1;
        push_transmit(&mut self.transmits, &mut self.stats, addr, msg);
    }

    /// A new initiator state, its message 1 to `responder` and the message's mac1 (`None`
    /// only if snow fails: no randomness). With a cookie from the responder, mac2 too.
    fn initiation(
        &self,
        index: u32,
        responder: &NodeId,
        cookie: Option<&Mac>,
    ) -> Option<(HandshakeState, Vec<u8>, Mac)> {
        let cipher = self.config.cipher;
        let mut state = self.new_handshake(true, cipher).ok()?;
        // snow wants room for a tag even where message 1 has none.
        let mut msg = vec![0u8; INIT_LEN + wire::TAG_LEN];
        msg[0] = HANDSHAKE_INIT;
        msg[1..5].copy_from_slice(&index.to_le_bytes());
        msg[5] = cipher.suite();
        if state.write_message(&[], &mut msg[INIT_NOISE_AT..]) != Ok(INIT_MAC1_AT - INIT_NOISE_AT) {
            return None;
        }
        msg.truncate(INIT_LEN);
        let mac1 = cookie::mac(&cookie::mac1_key(responder), &msg[..INIT_MAC1_AT]);
        msg[INIT_MAC1_AT..INIT_MAC2_AT].copy_from_slice(&mac1);
        if let Some(c) = cookie {
            let mac2 = cookie::mac2(c, &msg[..INIT_MAC2_AT]);
            msg[INIT_MAC2_AT..].copy_from_slice(&mac2);
        }
        Some((state, msg, mac1))
    }

    /// Whether an initiation from `from` may have a handshake now; if not, it is counted
    /// and, when the sender must first prove its address, answered with a cookie reply.
    /// Costs a MAC or two, no Noise work (see "Under load" in the module docs).
    fn admit_init(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> bool {
        if !self
            .cookies
            .check_mac1(&data[..INIT_MAC1_AT], &data[INIT_MAC1_AT..INIT_MAC2_AT])
        {
            self.count_drop(DropReason::BadMac1);
            return false;
        }
        let loaded = self.under_load(now);
        let source = cookie::source_key(from);
        let mac2 = &data[INIT_MAC2_AT..];
        if mac2.iter().any(|&b| b != 0)
            && self
                .cookies
                .check_mac2(from, &data[..INIT_MAC2_AT], mac2, now)
        {
            // The address is proven. Only such initiations spend this bucket, so nobody
            // can exhaust a source's rate by forging its address; they also spend the
            // source's other bucket, so that mixing both kinds gains no rate. The limit
            // applies under load (as WireGuard's): nodes behind one address (a NAT, a
            // test on loopback) that dial at once only pay a cookie's round trip.
            self.unproven.allow(source, now);
            if !self.proven.allow(source, now) && loaded {
                self.count_drop(DropReason::RateLimited);
                return false;
            }
            return true;
        }
        // A source past its rate must prove its address even while the endpoint as a
        // whole is not loaded.
        if !loaded && self.unproven.allow(source, now) {
            return true;
        }
        let mut mac1 = [0u8; MAC_LEN];
        mac1.copy_from_slice(&data[INIT_MAC1_AT..INIT_MAC2_AT]);
        if let Some((nonce, sealed)) = self.cookies.reply(from, &mac1, now) {
            let mut msg = Vec::with_capacity(COOKIE_REPLY_LEN);
            msg.push(COOKIE_REPLY);
            msg.extend_from_slice(&data[1..5]);
            msg.extend_from_slice(&nonce);
            msg.extend_from_slice(&sealed);
            push_transmit(&mut self.transmits, &mut self.stats, from, msg);
        }
        self.count_drop(DropReason::CookieSent);
        false
    }

    /// Whether the endpoint is under load (see [`Config::under_load_pending`]). Once it
    /// is, the pending handshakes are counted again only [`UNDER_LOAD_AFTER_TIME`] later,
    /// so a flood does not pay for that on every initiation.
    fn under_load(&mut self, now: Instant) -> bool {
        if self.under_load_until.is_some_and(|t| now < t) {
            return true;
        }
        if self.pending.len() < self.config.under_load_pending {
            return false;
        }
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.created) < REKEY_TIMEOUT);
        if self.pending.len() < self.config.under_load_pending {
            return false;
        }
        self.under_load_until = Some(now + UNDER_LOAD_AFTER_TIME);
        true
    }

    /// A cookie reply to an initiation of ours: keep the cookie, and retry at once with
    /// mac2 if that initiation had none (once per try: the retry has a new index).
    fn receive_cookie(&mut self, data: &[u8], now: Instant) {
        if let Some(reason) = size_error(data.len(), COOKIE_REPLY_LEN) {
            return self.count_drop(reason);
        }
        let index = wire::read_u32(&data[1..]);
        let Some(&id) = self.indices.get(&index) else {
            return self.count_drop(DropReason::BadCookie);
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return self.count_drop(DropReason::BadCookie);
        };
        let Some(Handshake {
            attempt:
                Attempt::Initiating {
                    index: ours,
                    mac1,
                    with_cookie,
                    ..
                },
            ..
        }) = &peer.handshake
        else {
            return self.count_drop(DropReason::BadCookie);
        };
        if *ours != index {
            return self.count_drop(DropReason::BadCookie);
        }
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        nonce.copy_from_slice(&data[5..5 + COOKIE_NONCE_LEN]);
        let Some(cookie) = cookie::open_cookie(&id, &nonce, &data[5 + COOKIE_NONCE_LEN..], mac1)
        else {
            return self.count_drop(DropReason::BadCookie);
        };
        let retry = !*with_cookie;
        peer.cookie = Some((cookie, now));
        self.stats.cookies_received += 1;
        if retry {
            self.start_handshake(id, now);
        }
    }

    /// Message 1: answer with message 2 carrying our proof, remember the state.
    fn receive_init(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if let Some(reason) = size_error(data.len(), INIT_LEN) {
            return self.count_drop(reason);
        }
        if !self.admit_init(from, data, now) {
            return;
        }
        if self.pending.len() >= self.config.max_pending_handshakes {
            self.pending
                .retain(|_, p| now.saturating_duration_since(p.created) < REKEY_TIMEOUT);
            if self.pending.len() >= self.config.max_pending_handshakes {
                return self.count_drop(DropReason::Overloaded);
            }
        }
        let remote_index = wire::read_u32(&data[1..]);
        let Some(cipher) = Cipher::from_suite(data[5]) else {
            return self.count_drop(DropReason::Malformed);
        };
        let Ok(mut state) = self.new_handshake(false, cipher) else {
            return self.count_drop(DropReason::HandshakeFailed);
        };
        if state
            .read_message(&data[INIT_NOISE_AT..INIT_MAC1_AT], &mut [])
            .is_err()
        {
            return self.count_drop(DropReason::HandshakeFailed);
        }
        let index = self.alloc_index();
        let mut msg = vec![0u8; RESPONSE_LEN];
        msg[0] = HANDSHAKE_RESPONSE;
        msg[1..5].copy_from_slice(&index.to_le_bytes());
        msg[5..9].copy_from_slice(&remote_index.to_le_bytes());
        let mut payload = [0u8; RESPONSE_PAYLOAD_LEN];
        payload[..PROOF_LEN].copy_from_slice(&self.proof);
        payload[PROOF_LEN..].copy_from_slice(&index.to_le_bytes());
        if state.write_message(&payload, &mut msg[9..]) != Ok(RESPONSE_LEN - 9) {
            return self.count_drop(DropReason::HandshakeFailed);
        }
        self.pending.insert(
            index,
            Pending {
                state: Box::new(state),
                cipher,
                remote_index,
                created: now,
            },
        );
        push_transmit(&mut self.transmits, &mut self.stats, from, msg);
    }

    /// Message 2: check the responder's identity, answer with message 3, and send on the
    /// new (unconfirmed) session if there is no other.
    fn receive_response(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if let Some(reason) = size_error(data.len(), RESPONSE_LEN) {
            return self.count_drop(reason);
        }
        let remote_index = wire::read_u32(&data[1..]);
        let index = wire::read_u32(&data[5..]);
        let Some(&id) = self.indices.get(&index) else {
            return self.count_drop(DropReason::UnknownIndex);
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return self.count_drop(DropReason::UnknownIndex);
        };
        let Some(Handshake {
            attempt: Attempt::Initiating {
                state, index: ours, ..
            },
            ..
        }) = &mut peer.handshake
        else {
            return self.count_drop(DropReason::UnknownIndex);
        };
        if *ours != index {
            return self.count_drop(DropReason::UnknownIndex);
        }
        let mut payload = [0u8; RESPONSE_PAYLOAD_LEN];
        // snow 0.10 rolls back only part of the state when it rejects a message (not
        // the cipher key and nonce), so any refusal spends this try; the retry timer
        // runs on. (Refusing needs the index, which only an on-path attacker sees.)
        if state.read_message(&data[9..], &mut payload) != Ok(RESPONSE_PAYLOAD_LEN) {
            self.fail_attempt(id);
            return self.count_drop(DropReason::HandshakeFailed);
        }
        let (proof, signed_index) = payload.split_at(PROOF_LEN);
        let verdict = if wire::read_u32(signed_index) != remote_index {
            Err(DropReason::HandshakeFailed)
        } else {
            check_proof(state, proof).and_then(|claimed| {
                if claimed == id {
                    Ok(())
                } else {
                    Err(DropReason::IdentityMismatch)
                }
            })
        };
        if let Err(reason) = verdict {
            // The state has moved on; this try is spent, the retry timer runs on.
            self.fail_attempt(id);
            self.stats.handshakes_failed += 1;
            return self.count_drop(reason);
        }
        let mut msg = vec![0u8; FINAL_LEN];
        msg[0] = HANDSHAKE_FINAL;
        msg[1..5].copy_from_slice(&remote_index.to_le_bytes());
        let written = state.write_message(&self.proof, &mut msg[5..]);
        let Some(h) = peer.handshake.as_mut() else {
            return;
        };
        let Attempt::Initiating { state, .. } =
            std::mem::replace(&mut h.attempt, Attempt::AwaitingConfirmation)
        else {
            return;
        };
        let mut state = state;
        let session = match written {
            Ok(n) if n == FINAL_LEN - 5 => {
                Session::from_handshake(&mut state, self.config.cipher, index, remote_index, now)
            }
            _ => None,
        };
        let Some(session) = session else {
            h.attempt = Attempt::Failed;
            self.indices.remove(&index);
            self.stats.handshakes_failed += 1;
            return self.count_drop(DropReason::HandshakeFailed);
        };
        peer.install_unconfirmed(session, &mut self.indices);
        self.indices.insert(index, id);
        peer.addr = Some(from);
        peer.new_handshake_at = None;
        self.stats.handshakes_completed += 1;
        push_transmit(&mut self.transmits, &mut self.stats, from, msg);
        self.session_up(id, now);
    }

    /// Marks the initiation in flight to `id` as spent (its index forgotten); the retry
    /// timer stays.
    fn fail_attempt(&mut self, id: NodeId) {
        if let Some(h) = self.peers.get_mut(&id).and_then(|p| p.handshake.as_mut())
            && let Attempt::Initiating { index, .. } =
                std::mem::replace(&mut h.attempt, Attempt::Failed)
        {
            self.indices.remove(&index);
        }
    }

    /// Message 3: check the initiator's identity and allowance; the session is current at
    /// once and we confirm it.
    fn receive_final(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if let Some(reason) = size_error(data.len(), FINAL_LEN) {
            return self.count_drop(reason);
        }
        let index = wire::read_u32(&data[1..]);
        let Some(mut pending) = self.pending.remove(&index) else {
            return self.count_drop(DropReason::UnknownIndex);
        };
        let mut proof = [0u8; PROOF_LEN];
        if pending.state.read_message(&data[5..], &mut proof) != Ok(PROOF_LEN) {
            // Not reusable after a refusal (see `receive_response`): forgotten.
            return self.count_drop(DropReason::HandshakeFailed);
        }
        let claimed = match check_proof(&pending.state, &proof) {
            Ok(id) => id,
            Err(reason) => {
                self.stats.handshakes_failed += 1;
                return self.count_drop(reason);
            }
        };
        let allowed = self.peers.get(&claimed).is_some_and(|p| p.allowed);
        let Some(session) = Session::from_handshake(
            &mut pending.state,
            pending.cipher,
            index,
            pending.remote_index,
            now,
        ) else {
            self.stats.handshakes_failed += 1;
            return self.count_drop(DropReason::HandshakeFailed);
        };
        if !allowed {
            // Not (yet) a peer: the session waits a moment for `allow` (see PARKED).
            self.parked.retain(|p| {
                p.node != claimed && now.saturating_duration_since(p.at) < REKEY_TIMEOUT
            });
            if self.parked.len() < PARKED {
                self.parked.push(Parked {
                    node: claimed,
                    session,
                    from,
                    at: now,
                });
            }
            self.stats.handshakes_failed += 1;
            return self.count_drop(DropReason::NotAllowed);
        }
        let Some(peer) = self.peers.get_mut(&claimed) else {
            return self.count_drop(DropReason::NotAllowed);
        };
        peer.install_current(session, &mut self.indices);
        self.indices.insert(index, claimed);
        // A session is up: an initiation of ours in flight has nothing left to do.
        peer.end_handshake(&mut self.indices);
        peer.addr = Some(from);
        peer.new_handshake_at = None;
        self.stats.handshakes_completed += 1;
        let flushed = self.session_up(claimed, now);
        // Confirm the session so the initiator moves its traffic onto it.
        if flushed == 0
            && let Some(peer) = self.peers.get_mut(&claimed)
        {
            let mut out = Vec::new();
            if let Some(dst) =
                peer.encrypt(&KEEPALIVE, now, &mut out, self.config.persistent_keepalive)
            {
                push_transmit(&mut self.transmits, &mut self.stats, dst, out);
            }
        }
        // Data that overtook this message 3: delivered now, in arrival order.
        self.replay_early(index, now);
    }

    /// After a handshake: report `PeerUp` if the session is confirmed and the peer was
    /// down, and send what waited for a session. Returns how many payloads were sent.
    fn session_up(&mut self, id: NodeId, now: Instant) -> usize {
        let Some(peer) = self.peers.get_mut(&id) else {
            return 0;
        };
        report_up(peer, id, now, &mut self.events);
        let mut sent = 0;
        while let Some(pt) = peer.queue.pop_front() {
            let mut out = Vec::new();
            let Some(dst) = peer.encrypt(&pt, now, &mut out, self.config.persistent_keepalive)
            else {
                peer.queue.push_front(pt);
                break;
            };
            self.stats.packets_out += 1;
            self.stats.bytes_out += wire::payload_len(&pt) as u64;
            push_transmit(&mut self.transmits, &mut self.stats, dst, out);
            sent += 1;
        }
        sent
    }

    /// A data message: the fast path.
    #[inline]
    fn receive_data<'b>(
        &mut self,
        from: SocketAddr,
        data: &'b mut [u8],
        now: Instant,
    ) -> Option<Delivery<'b>> {
        if data.len() < wire::DATA_MIN_LEN {
            self.count_drop(DropReason::Truncated);
            return None;
        }
        let index = wire::read_u32(&data[1..]);
        let counter = wire::read_u64(&data[5..]);
        let Some(peer_id) = self.indices.get(&index).copied() else {
            if self.awaited(index) {
                // Message 3 is late, or its sender is not allowed yet: keep the datagram
                // until that changes (or the handshake is forgotten).
                self.prune_early();
                if self.early.len() >= EARLY_DATA {
                    self.early.remove(0);
                    self.count_drop(DropReason::UnknownIndex);
                }
                self.early.push((index, from, data.to_vec()));
                return None;
            }
            self.count_drop(DropReason::UnknownIndex);
            return None;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            self.count_drop(DropReason::UnknownIndex);
            return None;
        };
        let Some(slot) = peer.slot_of(index) else {
            // An initiation in flight owns the index: data cannot name it.
            self.count_drop(DropReason::UnknownIndex);
            return None;
        };
        let session = peer.session_mut(slot)?;
        let mut plain = 0;
        let reason = if session.age(now) >= REJECT_AFTER_TIME {
            Some(DropReason::Expired)
        } else if !session.replay.check(counter) {
            Some(DropReason::Replayed)
        } else if let Some(n) = session.decrypt_in_place(counter, &mut data[DATA_HEADER_LEN..]) {
            plain = n;
            if session.replay.update(counter) {
                None
            } else {
                Some(DropReason::Replayed)
            }
        } else {
            Some(DropReason::DecryptFailed)
        };
        if let Some(reason) = reason {
            self.count_drop(reason);
            return None;
        }
        self.opened(peer_id, slot, from, data, plain, now)
    }

    /// The first half of opening a data message away from the endpoint (a receiving
    /// thread decrypts while others use the endpoint): for a data message of a live
    /// session with a fresh counter, a ticket to open it with ([`OpenTicket::open`], on
    /// any thread), then to hand to [`Endpoint::accept_opened`]. None for anything else,
    /// which [`Endpoint::receive_in_place`] handles (and counts, if it is bad). Changes
    /// nothing.
    pub fn ticket(&self, data: &[u8], now: Instant) -> Option<OpenTicket> {
        wire::data_lane(*data.first()?)?;
        if data.len() < wire::DATA_MIN_LEN {
            return None;
        }
        let index = wire::read_u32(&data[1..]);
        let counter = wire::read_u64(&data[5..]);
        let peer = self.peers.get(self.indices.get(&index)?)?;
        let session = peer.session(peer.slot_of(index)?)?;
        let fresh = session.age(now) < REJECT_AFTER_TIME && session.replay.check(counter);
        fresh.then(|| session.ticket(index, counter))
    }

    /// The second half: takes data message `data` from `from` that `ticket` opened
    /// (`plain`: the plaintext's length from [`OpenTicket::open`], None if it did not
    /// authenticate) as [`Endpoint::receive_in_place`] would have, checking again what
    /// may have changed meanwhile (the session gone or expired, the counter seen).
    pub fn accept_opened<'b>(
        &mut self,
        from: SocketAddr,
        ticket: &OpenTicket,
        data: &'b [u8],
        plain: Option<usize>,
        now: Instant,
    ) -> Option<Delivery<'b>> {
        self.stats.datagrams_in += 1;
        let Some(plain) = plain else {
            self.count_drop(DropReason::DecryptFailed);
            return None;
        };
        let found = self.indices.get(&ticket.index).copied().and_then(|id| {
            let peer = self.peers.get_mut(&id)?;
            let slot = peer.slot_of(ticket.index)?;
            let session = peer.session_mut(slot).filter(|s| s.made(ticket))?;
            Some((id, slot, session))
        });
        let Some((peer_id, slot, session)) = found else {
            self.count_drop(DropReason::UnknownIndex);
            return None;
        };
        let reason = if session.age(now) >= REJECT_AFTER_TIME {
            Some(DropReason::Expired)
        } else if !session.replay.update(ticket.counter) {
            Some(DropReason::Replayed)
        } else {
            None
        };
        if let Some(reason) = reason {
            self.count_drop(reason);
            return None;
        }
        self.opened(peer_id, slot, from, data, plain, now)
    }

    /// What follows an authentic data message `data` (its plaintext `plain` bytes after
    /// the header) on `peer_id`'s session in `slot`: the peer's path and timers, and the
    /// payload.
    fn opened<'b>(
        &mut self,
        peer_id: NodeId,
        slot: Slot,
        from: SocketAddr,
        data: &'b [u8],
        plain: usize,
        now: Instant,
    ) -> Option<Delivery<'b>> {
        let peer = self.peers.get_mut(&peer_id)?;
        // Authenticated: the peer is alive and where this came from.
        peer.addr = Some(from);
        peer.new_handshake_at = None;
        if slot == Slot::Unconfirmed {
            peer.promote_unconfirmed(&mut self.indices);
            // Confirmed: an initiation still in flight has nothing left to do.
            peer.end_handshake(&mut self.indices);
            report_up(peer, peer_id, now, &mut self.events);
        }
        let rekey = peer.wants_rekey_on_receive(now);
        let delivery = match wire::parse_inner(&data[DATA_HEADER_LEN..DATA_HEADER_LEN + plain]) {
            Some(Inner::Payload {
                kind,
                network,
                bytes,
            }) => {
                if peer.keepalive_at.is_none() {
                    peer.keepalive_at = Some(now + KEEPALIVE_TIMEOUT);
                }
                self.stats.packets_in += 1;
                self.stats.bytes_in += bytes.len() as u64;
                Some(Delivery {
                    peer: peer_id,
                    kind,
                    network,
                    bytes,
                })
            }
            Some(Inner::KeepAlive) => None,
            None => {
                self.stats.drops.add(DropReason::Malformed, 1);
                None
            }
        };
        if rekey {
            self.start_handshake(peer_id, now);
        }
        delivery
    }
}

/// Reports `PeerUp` if the peer has a confirmed session and was down.
fn report_up(peer: &mut Peer, id: NodeId, now: Instant, events: &mut VecDeque<Event>) {
    if !peer.up
        && peer.confirmed(now)
        && let Some(addr) = peer.addr
    {
        peer.up = true;
        events.push_back(Event::PeerUp { peer: id, addr });
    }
}

/// Recovers the node id from a peer's proof over the static key Noise authenticated.
fn check_proof(state: &HandshakeState, proof: &[u8]) -> Result<NodeId, DropReason> {
    let key = state
        .get_remote_static()
        .ok_or(DropReason::HandshakeFailed)?;
    let proof: &[u8; PROOF_LEN] = proof.try_into().map_err(|_| DropReason::HandshakeFailed)?;
    recover_node_id(&proof_message(key), proof).map_err(|_| DropReason::HandshakeFailed)
}

/// The message an identity proof signs.
fn proof_message(static_public: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(PROOF_DOMAIN.len() + static_public.len());
    msg.extend_from_slice(PROOF_DOMAIN);
    msg.extend_from_slice(static_public);
    msg
}

/// Why a handshake message of `len` bytes is not `expected` bytes long.
fn size_error(len: usize, expected: usize) -> Option<DropReason> {
    match len.cmp(&expected) {
        std::cmp::Ordering::Less => Some(DropReason::Truncated),
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(DropReason::Malformed),
    }
}

fn push_transmit(
    transmits: &mut VecDeque<Transmit>,
    stats: &mut TunnelStats,
    dst: SocketAddr,
    bytes: Vec<u8>,
) {
    stats.datagrams_out += 1;
    transmits.push_back(Transmit { dst, bytes });
}

/// `node`'s peer, if it may be sent to.
fn allowed_peer<'p>(
    peers: &'p mut FxHashMap<NodeId, Peer>,
    node: &NodeId,
) -> Result<&'p mut Peer, SendError> {
    match peers.get_mut(node) {
        Some(p) if p.allowed => Ok(p),
        _ => Err(SendError::NotAllowed(*node)),
    }
}

/// xorshift64*: the endpoint's source of non-secret randomness (indices, jitter).
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // splitmix64 spreads small seeds; the state must not be zero.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        XorShift((z ^ (z >> 31)) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
