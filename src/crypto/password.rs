//! Crew PINs/passwords (Argon2id, memory-hard) and bearer tokens (256-bit random, stored as
//! SHA-256). The only user of `argon2`.
//!
//! Parameters follow the OWASP password-storage recommendation for Argon2id (19 MiB, 2 passes,
//! 1 lane): about 30-60 ms per verification on the Orin's A78AE cores, which bounds an offline
//! guesser of a stolen database and an online guesser together with the login back-off.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;

use super::{CryptoError, random_bytes, sha256};

/// Shortest accepted PIN/password.
pub const MIN_SECRET_LEN: usize = 6;
/// Longest accepted PIN/password (bounds hashing work per request).
pub const MAX_SECRET_LEN: usize = 128;

/// The PHC prefix of a hash made with the current parameters (a hash with another prefix was
/// made under older, or foreign, parameters).
pub const HASH_PARAMS_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

fn argon2() -> Argon2<'static> {
    let params =
        Params::new(19 * 1024, 2, 1, Some(32)).expect("static Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a new PIN/password is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretPolicyError {
    #[error("PIN/password must have {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters")]
    Length,
    #[error("PIN/password must not be one repeated character or a simple sequence")]
    Trivial,
}

/// Checks a new PIN/password against the policy (length, not trivially guessable).
pub fn check_policy(secret: &str) -> Result<(), SecretPolicyError> {
    let n = secret.chars().count();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&n) {
        return Err(SecretPolicyError::Length);
    }
    let b = secret.as_bytes();
    let same = b.iter().all(|c| *c == b[0]);
    let up = b.windows(2).all(|w| w[1] == w[0].wrapping_add(1));
    let down = b.windows(2).all(|w| w[1] == w[0].wrapping_sub(1));
    if same || up || down {
        return Err(SecretPolicyError::Trivial);
    }
    Ok(())
}

/// Hashes a PIN/password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_secret(secret: &str) -> Result<String, CryptoError> {
    let mut salt = [0u8; 16];
    random_bytes(&mut salt)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| CryptoError::Rng)?;
    argon2()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| CryptoError::BadKey {
            name: "password hash".into(),
            why: e.to_string(),
        })
}

/// Verifies a PIN/password against a stored PHC string. A malformed hash never verifies.
pub fn verify_secret(phc: &str, secret: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(secret.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Spends the same work as a verification, for unknown users (no timing oracle on user ids).
pub fn verify_dummy(secret: &str) {
    use std::sync::OnceLock;
    static DUMMY: OnceLock<String> = OnceLock::new();
    let h = DUMMY.get_or_init(|| hash_secret("dummy-secret-for-timing").unwrap_or_default());
    let _ = verify_secret(h, secret);
}

/// A new bearer token (256 random bits, base64url) and the SHA-256 that is stored.
pub fn new_token() -> Result<(String, [u8; 32]), CryptoError> {
    let mut raw = [0u8; 32];
    random_bytes(&mut raw)?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let h = token_hash(&token);
    Ok((token, h))
}

/// The stored form of a bearer token.
pub fn token_hash(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_the_right_secret() {
        let h = hash_secret("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_secret(&h, "correct horse"));
        assert!(!verify_secret(&h, "correct horsf"));
        assert!(!verify_secret("not a phc string", "correct horse"));
        // Salted: the same secret hashes differently.
        assert_ne!(h, hash_secret("correct horse").unwrap());
    }

    #[test]
    fn policy_refuses_short_and_trivial() {
        assert_eq!(check_policy("12345"), Err(SecretPolicyError::Length));
        assert_eq!(check_policy("123456"), Err(SecretPolicyError::Trivial));
        assert_eq!(check_policy("000000"), Err(SecretPolicyError::Trivial));
        assert_eq!(check_policy("654321"), Err(SecretPolicyError::Trivial));
        assert_eq!(check_policy("482915"), Ok(()));
    }

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert_eq!(ha, token_hash(&a));
    }
}
