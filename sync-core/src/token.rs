//! Device tokens: what a device shows the server on every request.
//!
//! A token names its device and carries 256 random bits:
//! `desa_` followed by the base58 of the 16-byte [`DeviceId`] and the 32-byte secret. The device id
//! lets the server find the device row without searching, and lets a freshly set-up device know its
//! own id (its automerge actor) without asking the server. The server stores only
//! [`DeviceToken::verifier`], a SHA-256 of the secret; the token itself is shown once, when the
//! device is added.
//!
//! ```
//! use sync_core::{DeviceId, DeviceToken};
//!
//! let token = DeviceToken::new(DeviceId::new_random(), [7; 32]);
//! let text = token.reveal();
//! let parsed: DeviceToken = text.parse().unwrap();
//! assert_eq!(parsed.device(), token.device());
//! assert!(parsed.verifier() == token.verifier());
//! // Debug output never shows the secret.
//! assert!(!format!("{parsed:?}").contains(&text[5..]));
//! ```

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::DeviceId;

/// The prefix of every token, so that a token pasted in the wrong place is recognisable (and
/// secret scanners can find one in a log or a repository).
pub const TOKEN_PREFIX: &str = "desa_";

/// A device's bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken {
    device: DeviceId,
    secret: [u8; 32],
}

/// The stored form of a token's secret: SHA-256 of it. A token has 256 bits of entropy, so a fast
/// hash is enough (there is nothing to brute-force that a slow hash would protect).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verifier(pub [u8; 32]);

impl Verifier {
    /// Compare with another verifier in time independent of where they differ.
    pub fn matches(&self, other: &Verifier) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(..)")
    }
}

/// Why a string is not a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Wrong prefix, bad base58 or wrong length. The token itself is not repeated in the message.
    #[error("not a desa device token (expected desa_ followed by 66 or so base58 characters)")]
    Malformed,
}

impl DeviceToken {
    /// A token from its parts; the secret must come from a cryptographic random source.
    pub fn new(device: DeviceId, secret: [u8; 32]) -> Self {
        DeviceToken { device, secret }
    }

    /// The device this token belongs to.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// What the server stores to check this token later.
    pub fn verifier(&self) -> Verifier {
        Verifier(Sha256::digest(self.secret).into())
    }

    /// The token's text, to hand to the device once. Named so that no `format!` shows it by
    /// accident (there is no `Display`).
    pub fn reveal(&self) -> String {
        let mut bytes = Vec::with_capacity(48);
        bytes.extend_from_slice(self.device.as_bytes());
        bytes.extend_from_slice(&self.secret);
        format!("{TOKEN_PREFIX}{}", bs58::encode(bytes).into_string())
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceToken({}, secret: ..)", self.device)
    }
}

impl FromStr for DeviceToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        if body.len() > 80 {
            return Err(TokenError::Malformed);
        }
        let bytes = bs58::decode(body)
            .into_vec()
            .map_err(|_| TokenError::Malformed)?;
        if bytes.len() != 48 {
            return Err(TokenError::Malformed);
        }
        let device: [u8; 16] = bytes[..16].try_into().map_err(|_| TokenError::Malformed)?;
        let secret: [u8; 32] = bytes[16..].try_into().map_err(|_| TokenError::Malformed)?;
        Ok(DeviceToken {
            device: DeviceId::from_bytes(device),
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let token = DeviceToken::new(DeviceId::new_random(), [42; 32]);
        let text = token.reveal();
        assert!(text.starts_with("desa_"));
        assert_eq!(text.parse::<DeviceToken>(), Ok(token.clone()));
        for bad in [
            "",
            "desa_",
            "Bearer x",
            &text[1..],
            &format!("{text}1111"),
            "desa_0OIl",
        ] {
            assert_eq!(
                bad.parse::<DeviceToken>(),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
        let other = DeviceToken::new(token.device(), [43; 32]);
        assert!(!other.verifier().matches(&token.verifier()));
        assert!(token.verifier().matches(&token.verifier()));
    }
}
