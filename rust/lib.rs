//! golem-vpn's native core: virtual private networks for distributed compute on Golem.
//!
//! Layers, from the bytes up (data flows down and up through them, never sideways):
//! - [`wire`]: validated views of IPv4/IPv6 packets and Ethernet/ARP frames;
//! - [`router`]: one node's view of one network: who holds which IP, where a frame
//!   goes, what is dropped and why;
//! - [`tunnel`]: node-to-node sessions over UDP (Noise XX bound to the node's
//!   secp256k1 [`identity`], AEAD, replay window, rekey timers);
//! - `py` (feature `python`): thin PyO3 classes over the above, no logic.
//!
//! Every core here is sans-IO: bytes (and, where it matters, the time) in, bytes and
//! decisions out. No sockets, threads or clocks.
#![deny(unsafe_code)]

pub mod datapath;
pub mod identity;
pub mod node_id;
pub mod relay;
pub mod router;
pub mod stack;
pub mod tunnel;
pub mod wire;

#[cfg(feature = "python")]
mod py;

pub use node_id::NodeId;
pub use router::{Medium, Router, RouterConfig};
