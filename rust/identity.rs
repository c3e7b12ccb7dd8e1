//! A node's secp256k1 identity: the key behind a [`NodeId`], and the signatures that prove it.
//!
//! A node id is the Ethereum-style address of the key: the last 20 bytes of keccak256 of
//! the 64-byte uncompressed public key (without its `0x04` prefix), exactly as Golem
//! (yagna, ya-relay) and Ethereum derive it. The tunnel layer ([`crate::tunnel`]) uses an
//! [`Identity`] to sign its Noise static key, and [`recover_node_id`] to learn which node
//! signed a peer's key.
//!
//! Signatures are Golem's: recoverable ECDSA over **sha256(msg)** (no Ethereum message
//! prefix), RFC 6979 nonces and low-S, serialized as 65 bytes **`v ‖ r ‖ s`** with
//! `v` the recovery id (0 or 1), as yagna's `ethsign` keys write them. (eth-keys and
//! `eth_sign` put `v` last; reorder when cross-checking against them.)

use std::fmt;

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use k256::elliptic_curve::rand_core::CryptoRngCore;
use sha2::{Digest as _, Sha256};
use sha3::Keccak256;

use crate::node_id::NodeId;

/// Why a key or a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The secret key is zero or not below the curve order.
    #[error("invalid secp256k1 secret key")]
    InvalidSecretKey,
    /// The signature's `r`/`s` are out of range or its recovery id is not 0 to 3.
    #[error("malformed signature")]
    MalformedSignature,
    /// No public key verifies the signature over this message.
    #[error("signature does not match the message")]
    BadSignature,
}

/// A node's secp256k1 key pair. `Debug` never prints the secret.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    node_id: NodeId,
}

impl Identity {
    /// A fresh random identity (use `rand_core::OsRng` outside tests).
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self::from_key(SigningKey::random(rng))
    }

    /// The identity with this 32-byte big-endian secret key.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Result<Self, IdentityError> {
        let key =
            SigningKey::from_bytes(secret.into()).map_err(|_| IdentityError::InvalidSecretKey)?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: SigningKey) -> Self {
        let node_id = node_id_of(key.verifying_key());
        Identity { key, node_id }
    }

    /// The 32-byte big-endian secret key (what a key file stores).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes().into()
    }

    /// The SEC1 uncompressed public key: `0x04 ‖ x ‖ y`.
    pub fn public_key_uncompressed(&self) -> [u8; 65] {
        uncompressed(self.key.verifying_key())
    }

    /// The node id: the Ethereum address of the public key.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// A recoverable signature over sha256(`msg`), as `v ‖ r ‖ s` (see the module docs).
    pub fn sign_recoverable(&self, msg: &[u8]) -> [u8; 65] {
        let digest = Sha256::digest(msg);
        // Signing a 32-byte digest with a valid key cannot fail: RFC 6979 retries internally.
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(&digest)
            .expect("ECDSA signing of a 32-byte digest");
        let mut out = [0u8; 65];
        out[0] = recid.to_byte();
        out[1..].copy_from_slice(&sig.to_bytes());
        out
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The node id whose key made `sig` (`v ‖ r ‖ s`) over sha256(`msg`).
///
/// Any well-formed signature recovers *some* key, so the caller must compare the result
/// with the id it expects; a signature that recovers no key is [`IdentityError::BadSignature`].
pub fn recover_node_id(msg: &[u8], sig: &[u8; 65]) -> Result<NodeId, IdentityError> {
    let recid = RecoveryId::from_byte(sig[0]).ok_or(IdentityError::MalformedSignature)?;
    let signature =
        Signature::from_slice(&sig[1..]).map_err(|_| IdentityError::MalformedSignature)?;
    let digest = Sha256::digest(msg);
    let key = VerifyingKey::recover_from_prehash(&digest, &signature, recid)
        .map_err(|_| IdentityError::BadSignature)?;
    Ok(node_id_of(&key))
}

fn uncompressed(key: &VerifyingKey) -> [u8; 65] {
    let point = key.to_encoded_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(point.as_bytes());
    out
}

fn node_id_of(key: &VerifyingKey) -> NodeId {
    let hash = Keccak256::digest(&uncompressed(key)[1..]);
    let mut id = [0u8; 20];
    id.copy_from_slice(&hash[12..]);
    NodeId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        }
        out
    }

    #[test]
    fn node_id_matches_known_ethereum_addresses() {
        // Secret key 1: the generator point's address, a standard Ethereum test vector.
        let mut one = [0u8; 32];
        one[31] = 1;
        let id = Identity::from_secret_bytes(&one).unwrap();
        assert_eq!(
            id.node_id().to_string(),
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
        // The web3.js documentation's `privateKeyToAccount` example.
        let id = Identity::from_secret_bytes(&secret(
            "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
        ))
        .unwrap();
        assert_eq!(
            id.node_id().to_string(),
            "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
        );
    }

    #[test]
    fn public_key_of_secret_one_is_the_generator() {
        let mut one = [0u8; 32];
        one[31] = 1;
        let pk = Identity::from_secret_bytes(&one)
            .unwrap()
            .public_key_uncompressed();
        assert_eq!(pk[0], 0x04);
        assert_eq!(
            pk[1..33],
            secret("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
        );
    }

    #[test]
    fn secret_round_trips_and_bad_secrets_are_refused() {
        let id = Identity::from_secret_bytes(&[7u8; 32]).unwrap();
        let again = Identity::from_secret_bytes(&id.secret_bytes()).unwrap();
        assert_eq!(id.node_id(), again.node_id());
        assert_eq!(
            Identity::from_secret_bytes(&[0u8; 32]).unwrap_err(),
            IdentityError::InvalidSecretKey
        );
        assert_eq!(
            Identity::from_secret_bytes(&[0xffu8; 32]).unwrap_err(),
            IdentityError::InvalidSecretKey
        );
        assert!(!format!("{id:?}").contains("0707"));
    }

    #[test]
    fn signature_recovers_the_signer_only_for_its_message() {
        let id = Identity::from_secret_bytes(&[9u8; 32]).unwrap();
        let sig = id.sign_recoverable(b"hello golem");
        assert!(sig[0] <= 1, "v is the recovery id");
        assert_eq!(sig, id.sign_recoverable(b"hello golem"), "RFC 6979");
        assert_eq!(recover_node_id(b"hello golem", &sig), Ok(id.node_id()));
        // Another message recovers another key (or none), never the signer.
        assert_ne!(recover_node_id(b"hello golen", &sig), Ok(id.node_id()));
        let mut bad = sig;
        bad[0] = 4;
        assert_eq!(
            recover_node_id(b"hello golem", &bad),
            Err(IdentityError::MalformedSignature)
        );
        let mut zero = sig;
        zero[1..33].fill(0);
        assert_eq!(
            recover_node_id(b"hello golem", &zero),
            Err(IdentityError::MalformedSignature)
        );
    }

    #[test]
    fn generate_uses_the_rng() {
        let a = Identity::generate(&mut rand_core::OsRng);
        let b = Identity::generate(&mut rand_core::OsRng);
        assert_ne!(a.node_id(), b.node_id());
    }
}
