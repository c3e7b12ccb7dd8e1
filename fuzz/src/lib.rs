//! The fuzz targets' bodies, one module per surface, shared by the libFuzzer binaries
//! (`fuzz_targets/`, feature `libfuzzer`), the corpus generator (`gen_corpus`) and the
//! replay test (`tests/corpus.rs`, which runs every corpus file through its target in a
//! plain `cargo test`).
//!
//! Each target checks invariants, not only the absence of a panic: parse → build → parse
//! round trips, counters that add up, deliveries that only ever carry what the other side
//! sent. A failed check panics, which libFuzzer reports as a crash.
//!
//! Targets that drive a state machine read their input as a sequence of operations
//! ([`Input`]): an op byte, then its arguments; a frame is a big-endian `u16` length and
//! that many bytes (clipped to what is left).

pub mod relay;
pub mod router;
pub mod stack;
pub mod tunnel;
pub mod wire;

pub use wire::seeds as wire_seeds;

/// A target's body: takes one input, panics if a check fails.
pub type Body = fn(&[u8]);
/// Named seed inputs of a target.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Every target: its name (the binary's and the corpus directory's) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("wire", wire::run),
    ("router_ip", router::run_ip),
    ("router_ethernet", router::run_ethernet),
    ("tunnel_datagram", tunnel::run_datagram),
    ("tunnel_session", tunnel::run_session),
    ("relay_server", relay::run_server),
    ("relay_node", relay::run_node),
    ("stack", stack::run),
];

/// A cursor over a fuzz input read as a sequence of operations.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte.
    pub fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    /// The next big-endian `u16` (a missing second byte reads as 0).
    pub fn u16(&mut self) -> Option<u16> {
        let hi = self.byte()?;
        let lo = self.byte().unwrap_or(0);
        Some(u16::from_be_bytes([hi, lo]))
    }

    /// A frame: a `u16` length and that many bytes (fewer if the input ends first).
    pub fn frame(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16().unwrap_or(0)).min(self.data.len());
        let (frame, rest) = self.data.split_at(len);
        self.data = rest;
        frame
    }
}

/// Appends a frame as [`Input::frame`] reads it.
pub fn put_frame(out: &mut Vec<u8>, frame: &[u8]) {
    let len = u16::try_from(frame.len()).expect("a frame fits a u16 length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
}

/// A fixed test identity (never a real key).
pub fn identity(n: u8) -> golem_vpn::identity::Identity {
    golem_vpn::identity::Identity::from_secret_bytes(&[n; 32]).expect("a valid secp256k1 key")
}
