//! Golem node identities as they appear in the VPN: `0x` followed by 40 hex digits.
//!
//! A node id is the Ethereum-style address of the node's secp256k1 key (the last 20
//! bytes of keccak256 of the public key). This module only parses and prints ids; the
//! key material lives in the tunnel layer.

use std::fmt;
use std::str::FromStr;

/// A Golem node id: 20 bytes, printed as `0x` + 40 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 20]);

/// Why a string is not a node id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node id {value:?}: expected '0x' followed by 40 hex digits")]
pub struct InvalidNodeId {
    /// The rejected input, cut to at most 64 characters.
    pub value: String,
}

impl NodeId {
    /// The raw 20 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl FromStr for NodeId {
    type Err = InvalidNodeId;

    /// Parses `0x` + 40 hex digits (either case); the `0x` prefix must be lowercase.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidNodeId {
            value: s.chars().take(64).collect(),
        };
        let hex = s.strip_prefix("0x").ok_or_else(invalid)?.as_bytes();
        if hex.len() != 40 {
            return Err(invalid());
        }
        let mut out = [0u8; 20];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(invalid)?;
            let lo = hex_value(pair[1]).ok_or_else(invalid)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(NodeId(out))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("0x")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_lowercases() {
        let id: NodeId = "0xABCDEF0123456789abcdef0123456789ABCDEF01"
            .parse()
            .unwrap();
        assert_eq!(id.to_string(), "0xabcdef0123456789abcdef0123456789abcdef01");
        assert_eq!(id.0[0], 0xab);
        assert_eq!(id.0[19], 0x01);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "0x",
            "abcdef0123456789abcdef0123456789abcdef01",
            "0Xabcdef0123456789abcdef0123456789abcdef01",
            "0xabcdef0123456789abcdef0123456789abcdef0",
            "0xabcdef0123456789abcdef0123456789abcdef012",
            "0xgbcdef0123456789abcdef0123456789abcdef01",
            " 0xabcdef0123456789abcdef0123456789abcdef01",
            "0xabcdef0123456789abcdef0123456789abcdef0\u{e9}",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?} accepted");
        }
    }
}
