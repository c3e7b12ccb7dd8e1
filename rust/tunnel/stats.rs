//! What an endpoint counts: handshakes, traffic, and dropped datagrams or payloads by
//! reason.

/// Why the endpoint dropped a datagram it received, or a payload it was given to send.
/// Drops are counted, never raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The datagram was empty or shorter than its message type's layout.
    Truncated,
    /// The first byte is not a known message type.
    UnknownType,
    /// No session or handshake in progress has the receiver index (stale, disallowed
    /// peer, or forged).
    UnknownIndex,
    /// A data message failed authentication (tampered, or not made with this session's key).
    DecryptFailed,
    /// A data message's counter was seen before or is too far behind the window.
    Replayed,
    /// A data message arrived on a session older than `REJECT_AFTER_TIME`.
    Expired,
    /// An authenticated message was malformed: a handshake message of the wrong size, or
    /// a data plaintext with an unknown kind or a bad network id.
    Malformed,
    /// Noise rejected a handshake message, or its identity proof did not verify.
    HandshakeFailed,
    /// A handshake response proved a node id other than the one dialed.
    IdentityMismatch,
    /// A handshake final proved a node id that is not allowed.
    NotAllowed,
    /// A handshake initiation arrived while the most responder handshakes were in flight.
    Overloaded,
    /// A handshake initiation whose mac1 is wrong: not made for this node (garbage, a
    /// scan, or meant for another node), refused before any Noise work.
    BadMac1,
    /// Under load, a handshake initiation without a valid mac2 was answered with a
    /// cookie reply instead of a handshake (the initiator retries with the cookie).
    CookieSent,
    /// Under load, a handshake initiation with a valid mac2 came from a source past its
    /// rate ([`INITIATIONS_PER_SECOND`](super::INITIATIONS_PER_SECOND)).
    RateLimited,
    /// A cookie reply that answers no initiation of ours in flight, or fails
    /// authentication.
    BadCookie,
    /// (Outgoing) A payload waiting for a handshake was pushed out of the full queue.
    QueueFull,
    /// (Outgoing) Payloads waiting for a handshake were discarded: it gave up, or the
    /// peer was disallowed.
    Unreachable,
}

impl DropReason {
    /// Every reason, in a stable order (the order of [`DropCounters::iter`]).
    pub const ALL: [DropReason; 17] = [
        DropReason::Truncated,
        DropReason::UnknownType,
        DropReason::UnknownIndex,
        DropReason::DecryptFailed,
        DropReason::Replayed,
        DropReason::Expired,
        DropReason::Malformed,
        DropReason::HandshakeFailed,
        DropReason::IdentityMismatch,
        DropReason::NotAllowed,
        DropReason::Overloaded,
        DropReason::BadMac1,
        DropReason::CookieSent,
        DropReason::RateLimited,
        DropReason::BadCookie,
        DropReason::QueueFull,
        DropReason::Unreachable,
    ];

    /// The snake_case name used in stats.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::UnknownType => "unknown_type",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::DecryptFailed => "decrypt_failed",
            DropReason::Replayed => "replayed",
            DropReason::Expired => "expired",
            DropReason::Malformed => "malformed",
            DropReason::HandshakeFailed => "handshake_failed",
            DropReason::IdentityMismatch => "identity_mismatch",
            DropReason::NotAllowed => "not_allowed",
            DropReason::Overloaded => "overloaded",
            DropReason::BadMac1 => "bad_mac1",
            DropReason::CookieSent => "cookie_sent",
            DropReason::RateLimited => "rate_limited",
            DropReason::BadCookie => "bad_cookie",
            DropReason::QueueFull => "queue_full",
            DropReason::Unreachable => "unreachable",
        }
    }
}

/// Drops by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters([u64; DropReason::ALL.len()]);

impl DropCounters {
    #[inline]
    pub(crate) fn add(&mut self, reason: DropReason, n: u64) {
        self.0[reason as usize] += n;
    }

    /// How many were dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize]
    }

    /// All drops, whatever the reason.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` for every reason, zeros included, in [`DropReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }
}

/// A snapshot of an endpoint's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Handshake initiations sent (first tries and retries).
    pub handshakes_started: u64,
    /// Handshakes completed, in either role (each one is a new session).
    pub handshakes_completed: u64,
    /// Cookie replies accepted from responders under load (our next initiation to each
    /// carries mac2).
    pub cookies_received: u64,
    /// Handshakes that ended without a session: a response or final that decrypted but
    /// proved a wrong, unallowed or unverifiable identity, or an initiator that gave up.
    pub handshakes_failed: u64,
    /// Payloads delivered (keep-alives not counted).
    pub packets_in: u64,
    /// Bytes of the payloads delivered.
    pub bytes_in: u64,
    /// Payloads encrypted and sent (keep-alives not counted).
    pub packets_out: u64,
    /// Bytes of the payloads sent.
    pub bytes_out: u64,
    /// Datagrams handed to the endpoint, whatever became of them.
    pub datagrams_in: u64,
    /// Datagrams the endpoint produced (handshakes, data, keep-alives).
    pub datagrams_out: u64,
    /// Drops by reason.
    pub drops: DropCounters,
}
