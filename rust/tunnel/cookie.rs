//! Handshake initiations under load: WireGuard's MACs and cookie replies adapted to
//! Noise XX, and its per-source token buckets (see "Under load" in [`crate::tunnel`]).
//!
//! Everything here is cheap next to the X25519 work an initiation costs a responder
//! (an ephemeral key and two DH): HMAC-SHA256 and, for a cookie reply, one
//! ChaCha20-Poly1305 seal, all with ring.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustc_hash::FxHashMap;

use super::wire::{COOKIE_NONCE_LEN, MAC_LEN};
use crate::node_id::NodeId;

/// Domain of the mac1 key (then the responder's node id).
const LABEL_MAC1: &[u8] = b"golem-vpn/mac1/v1";
/// Domain of the cookie reply's sealing key (then the responder's node id).
const LABEL_COOKIE: &[u8] = b"golem-vpn/cookie/v1";

/// A MAC: HMAC-SHA256 truncated to [`MAC_LEN`] bytes.
pub(crate) type Mac = [u8; MAC_LEN];
/// A cookie reply's sealed cookie: the cookie and its tag.
pub(crate) type SealedCookie = [u8; MAC_LEN + 16];

fn keyed(label: &[u8], node: &NodeId) -> hmac::Key {
    let mut k = [0u8; 19 + 20];
    let k = &mut k[..label.len() + node.0.len()];
    k[..label.len()].copy_from_slice(label);
    k[label.len()..].copy_from_slice(&node.0);
    hmac::Key::new(hmac::HMAC_SHA256, k)
}

/// The key of mac1 on initiations to `responder`: anyone who knows whom they dial has it.
pub(crate) fn mac1_key(responder: &NodeId) -> hmac::Key {
    keyed(LABEL_MAC1, responder)
}

/// `HMAC-SHA256(key, data)`, truncated.
pub(crate) fn mac(key: &hmac::Key, data: &[u8]) -> Mac {
    let tag = hmac::sign(key, data);
    let mut m = [0u8; MAC_LEN];
    m.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    m
}

/// Compares two MACs in constant time.
pub(crate) fn mac_eq(a: &Mac, b: &[u8]) -> bool {
    b.len() == MAC_LEN && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The one-time AEAD key of a cookie reply: each reply's random nonce derives its own key
/// (as XChaCha20 does), so the nonce given to ChaCha20-Poly1305 itself can be zero.
fn cookie_aead(responder: &NodeId, nonce: &[u8; COOKIE_NONCE_LEN]) -> LessSafeKey {
    let sub = hmac::sign(&keyed(LABEL_COOKIE, responder), nonce);
    let key = UnboundKey::new(&CHACHA20_POLY1305, sub.as_ref()).expect("a 32-byte key");
    LessSafeKey::new(key)
}

/// Seals `cookie` for the initiator, bound to the mac1 of the initiation it answers.
pub(crate) fn seal_cookie(
    responder: &NodeId,
    nonce: &[u8; COOKIE_NONCE_LEN],
    cookie: &Mac,
    mac1: &Mac,
) -> SealedCookie {
    let mut sealed = [0u8; MAC_LEN + 16];
    sealed[..MAC_LEN].copy_from_slice(cookie);
    let (body, tag_out) = sealed.split_at_mut(MAC_LEN);
    let tag = cookie_aead(responder, nonce)
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key([0; 12]), Aad::from(mac1), body)
        .expect("a 16-byte plaintext");
    tag_out.copy_from_slice(tag.as_ref());
    sealed
}

/// Opens a cookie reply from `responder` to the initiation whose mac1 was `mac1`.
pub(crate) fn open_cookie(
    responder: &NodeId,
    nonce: &[u8; COOKIE_NONCE_LEN],
    sealed: &[u8],
    mac1: &Mac,
) -> Option<Mac> {
    let mut buf: SealedCookie = sealed.try_into().ok()?;
    let plain = cookie_aead(responder, nonce)
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(mac1),
            &mut buf,
        )
        .ok()?;
    plain.try_into().ok()
}

/// The responder's side: its mac1 key, and the secret cookies are made from, rotated
/// every [`COOKIE_SECRET_MAX_AGE`](super::COOKIE_SECRET_MAX_AGE).
pub(crate) struct CookieChecker {
    node: NodeId,
    mac1_key: hmac::Key,
    secret: Option<(hmac::Key, Instant)>,
    random: SystemRandom,
}

impl CookieChecker {
    pub(crate) fn new(node: NodeId) -> Self {
        CookieChecker {
            node,
            mac1_key: mac1_key(&node),
            secret: None,
            random: SystemRandom::new(),
        }
    }

    /// Whether `mac1` is right for `msg` (the message up to its mac1).
    pub(crate) fn check_mac1(&self, msg: &[u8], mac1: &[u8]) -> bool {
        mac_eq(&mac(&self.mac1_key, msg), mac1)
    }

    /// The current secret, a fresh one if the last is too old (or there was none).
    /// `None` only if the OS has no randomness.
    fn secret(&mut self, now: Instant) -> Option<&hmac::Key> {
        let stale = self.secret.as_ref().is_none_or(|(_, born)| {
            now.saturating_duration_since(*born) >= super::COOKIE_SECRET_MAX_AGE
        });
        if stale {
            let mut s = [0u8; 32];
            self.random.fill(&mut s).ok()?;
            self.secret = Some((hmac::Key::new(hmac::HMAC_SHA256, &s), now));
        }
        self.secret.as_ref().map(|(k, _)| k)
    }

    /// The cookie of source `from` under the current secret.
    fn cookie(&mut self, from: SocketAddr, now: Instant) -> Option<Mac> {
        let mut a = [0u8; 18];
        let n = match from.ip().to_canonical() {
            IpAddr::V4(ip) => {
                a[..4].copy_from_slice(&ip.octets());
                4
            }
            IpAddr::V6(ip) => {
                a[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        a[n..n + 2].copy_from_slice(&from.port().to_le_bytes());
        let key = self.secret(now)?;
        Some(mac(key, &a[..n + 2]))
    }

    /// Whether `mac2` is right for `msg` (the message up to its mac2) from `from`: made
    /// with the cookie of that very address under the current secret.
    pub(crate) fn check_mac2(
        &mut self,
        from: SocketAddr,
        msg: &[u8],
        mac2: &[u8],
        now: Instant,
    ) -> bool {
        let Some(cookie) = self.cookie(from, now) else {
            return false;
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &cookie);
        mac_eq(&mac(&key, msg), mac2)
    }

    /// The nonce and sealed cookie of a reply to an initiation from `from` with `mac1`.
    pub(crate) fn reply(
        &mut self,
        from: SocketAddr,
        mac1: &Mac,
        now: Instant,
    ) -> Option<([u8; COOKIE_NONCE_LEN], SealedCookie)> {
        let cookie = self.cookie(from, now)?;
        let mut nonce = [0u8; COOKIE_NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        Some((nonce, seal_cookie(&self.node, &nonce, &cookie, mac1)))
    }
}

/// mac2 of `msg` (the message up to its mac2) under a cookie the initiator holds.
pub(crate) fn mac2(cookie: &Mac, msg: &[u8]) -> Mac {
    mac(&hmac::Key::new(hmac::HMAC_SHA256, cookie), msg)
}

/// What sources are told apart by: an IPv4 address, an IPv6 /64 (what one host can
/// easily hold, as WireGuard's limiter does), but a whole address in the relay's
/// placeholder prefix `100::/64`, where each address is one node the relay forwards for.
pub(crate) fn source_key(from: SocketAddr) -> IpAddr {
    match from.ip().to_canonical() {
        IpAddr::V6(ip) if ip.segments()[..4] == [0x100, 0, 0, 0] => IpAddr::V6(ip),
        IpAddr::V6(ip) => {
            let s = ip.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A token bucket per source: [`INITIATIONS_PER_SECOND`](super::INITIATIONS_PER_SECOND)
/// with bursts of [`INITIATIONS_BURST`](super::INITIATIONS_BURST), as WireGuard's.
pub(crate) struct RateLimiter {
    buckets: FxHashMap<IpAddr, Bucket>,
}

#[derive(Clone, Copy)]
struct Bucket {
    /// Credit, in time (one initiation costs [`cost`]).
    tokens: Duration,
    last: Instant,
}

fn cost() -> Duration {
    Duration::from_secs(1) / super::INITIATIONS_PER_SECOND
}

fn full() -> Duration {
    cost() * super::INITIATIONS_BURST
}

impl Bucket {
    fn refill(&self, now: Instant) -> Duration {
        (self.tokens + now.saturating_duration_since(self.last)).min(full())
    }
}

impl RateLimiter {
    pub(crate) fn new() -> Self {
        RateLimiter {
            buckets: FxHashMap::default(),
        }
    }

    /// Takes one initiation's token from `source`'s bucket; false if it has none left,
    /// or if the table is full of sources active within the last burst.
    pub(crate) fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if let Some(b) = self.buckets.get_mut(&source) {
            let tokens = b.refill(now);
            b.last = now;
            return match tokens.checked_sub(cost()) {
                Some(left) => {
                    b.tokens = left;
                    true
                }
                None => {
                    b.tokens = tokens;
                    false
                }
            };
        }
        if self.buckets.len() >= super::MAX_RATE_LIMITED_SOURCES {
            // Sources whose buckets are full again are forgotten: they lose nothing.
            self.buckets.retain(|_, b| b.refill(now) < full());
            if self.buckets.len() >= super::MAX_RATE_LIMITED_SOURCES {
                return false;
            }
        }
        self.buckets.insert(
            source,
            Bucket {
                tokens: full() - cost(),
                last: now,
            },
        );
        true
    }

    /// How many sources are tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }
}
