//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.ts.body)>`.
//!
//! The secret is given as `whsec_` + base64 of its bytes (the form Standard Webhooks
//! libraries print); the HMAC key is the decoded bytes, not the text. HMAC is built on the
//! `sha2` the crate already has (RFC 2104), so signing adds no dependency beyond `base64`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

/// A webhook's signing secret (its decoded bytes).
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a webhook secret starts with `whsec_` followed by base64")]
    Prefix,
    #[error("the part after `whsec_` is not base64: {0}")]
    Base64(String),
    #[error("a webhook secret needs 24 to 64 bytes (decoded), this one has {0}")]
    Length(usize),
}

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let b = text.trim().strip_prefix("whsec_").ok_or(SecretError::Prefix)?;
        let bytes = B64.decode(b).map_err(|e| SecretError::Base64(e.to_string()))?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(SecretError::Length(bytes.len()));
        }
        Ok(Secret(bytes))
    }

    /// The `webhook-signature` header value for one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = hmac_sha256(
            &self.0,
            &[id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body],
        );
        format!("v1,{}", B64.encode(mac))
    }

    /// Checks a `webhook-signature` header (any of its space-separated `v1,` entries), in
    /// constant time per entry. Used by tests and by anyone embedding a receiver.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.sign(id, timestamp, body);
        header.split(' ').any(|sig| sig.as_bytes().ct_eq(want.as_bytes()).into())
    }
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn signs_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification and its reference libraries.
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(s.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &format!("v1,bad {sig}")
        ));
        assert!(!s.verify("msg_other", 1614265330, body, &sig));
    }

    #[test]
    fn refuses_bad_secrets() {
        assert_eq!(Secret::parse("abc").unwrap_err(), SecretError::Prefix);
        assert!(matches!(Secret::parse("whsec_!!").unwrap_err(), SecretError::Base64(_)));
        assert_eq!(Secret::parse("whsec_YWJj").unwrap_err(), SecretError::Length(3));
    }
}
