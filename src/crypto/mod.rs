//! Cryptography for PHI at rest, signatures and sealed bundles. The only module that imports
//! `ring` and `hpke`.
//!
//! - [`field`]: AES-256-GCM field encryption whose associated data binds table, column, row id
//!   and data-key id, and the wrapping of per-case/per-patient data keys under territory keys.
//! - [`chunk`]: attachment content in fixed-size AES-256-GCM chunks bound to attachment,
//!   index and count.
//! - [`blind`]: HMAC-SHA256 blind indexes over normalised search terms.
//! - [`sign`]: ECDSA P-256 (ES256) appliance signing key, used for audit checkpoints.
//! - [`keyring`]: the set of long-lived keys loaded from credentials.
//! - [`seal`]: HPKE-sealed, ES256-signed bundle envelopes and signed receipts (format v1).
//! - [`hpke_aead`]: the AES-256-GCM that HPKE uses, computed by `ring`.
//!
//! Invariant: no function here logs, and no error carries plaintext or key bytes.

pub mod blind;
pub mod chunk;
pub mod escrow;
pub mod field;
pub mod hpke_aead;
pub mod hpke_kem;
pub mod keyring;
pub mod password;
pub mod seal;
pub mod sign;

use ring::rand::{SecureRandom, SystemRandom};

/// Errors from cryptographic operations. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A field ciphertext failed authentication: it was moved to another row or column, edited,
    /// or the data key is wrong. Recovery: none for this value; treat as tampering and audit it.
    #[error(
        "field {table}.{column} of row {row_id} failed authentication (moved, edited or wrong key)"
    )]
    FieldAuth {
        table: String,
        column: String,
        row_id: String,
    },
    /// A ciphertext is shorter than its header or has an unknown format version.
    #[error("malformed ciphertext in {table}.{column} of row {row_id}: {why}")]
    Malformed {
        table: String,
        column: String,
        row_id: String,
        why: &'static str,
    },
    /// A ciphertext names a different data key than the row it is stored in.
    #[error(
        "field {table}.{column} of row {row_id} was sealed under data key {found}, but the row uses data key {expected}"
    )]
    WrongDataKey {
        table: String,
        column: String,
        row_id: String,
        found: i64,
        expected: i64,
    },
    /// A wrapped data key failed to unwrap under the territory key it names.
    #[error("data key {dk_id} does not unwrap under territory {territory} key version {version}")]
    Unwrap {
        dk_id: i64,
        territory: String,
        version: u32,
    },
    /// A key file has the wrong length or encoding. Recovery: re-provision the key.
    #[error("key {name} is malformed: {why}")]
    BadKey { name: String, why: String },
    /// The NIST SP 800-38D invocation limit of a key was reached. Recovery: rotate the key.
    #[error("key {what} reached its invocation limit; rotate it")]
    InvocationLimit { what: String },
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// An attachment chunk failed authentication: swapped with another chunk, reordered, moved
    /// from another attachment, edited, or counted differently. Recovery: none for this file;
    /// treat as tampering and audit it.
    #[error(
        "chunk {index} of attachment {attachment} failed authentication (swapped, reordered, moved or edited)"
    )]
    ChunkAuth { attachment: String, index: u32 },
    /// The system random generator failed (never expected on Linux).
    #[error("system random generator failed")]
    Rng,
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(buf).map_err(|_| CryptoError::Rng)
}

const NONCE_POOL: usize = 4096;

thread_local! {
    /// OS randomness fetched 4 KiB at a time for nonces: one getrandom call per ~340 nonces
    /// instead of one per field. Bytes are used once and never reused.
    static NONCES: std::cell::RefCell<(Box<[u8; NONCE_POOL]>, usize)> =
        std::cell::RefCell::new((Box::new([0u8; NONCE_POOL]), NONCE_POOL));
}

/// A fresh random 96-bit nonce from the buffered OS CSPRNG.
pub fn random_nonce() -> Result<[u8; 12], CryptoError> {
    NONCES.with(|cell| {
        let mut pool = cell.borrow_mut();
        if pool.1 + 12 > NONCE_POOL {
            random_bytes(&mut pool.0[..])?;
            pool.1 = 0;
        }
        let at = pool.1;
        let mut n = [0u8; 12];
        n.copy_from_slice(&pool.0[at..at + 12]);
        pool.0[at..at + 12].fill(0);
        pool.1 += 12;
        Ok(n)
    })
}

/// An HMAC-SHA256 key prepared once (the pads are computed at construction).
#[derive(Clone)]
pub struct Mac(ring::hmac::Key);

impl Mac {
    pub fn new(key: &[u8]) -> Self {
        Mac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key))
    }

    /// HMAC over the concatenation of `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        for d in parts {
            ctx.update(d);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// A fresh random 256-bit key.
pub fn random_key() -> Result<zeroize::Zeroizing<[u8; 32]>, CryptoError> {
    let mut k = zeroize::Zeroizing::new([0u8; 32]);
    random_bytes(k.as_mut())?;
    Ok(k)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Incremental SHA-256 used by the audit chain.
pub struct Sha256(ring::digest::Context);

impl Sha256 {
    pub fn new() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data)
    }
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.finish().as_ref());
        out
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

/// HMAC-SHA256 of `data` under `key`.
pub fn hmac_sha256(key: &[u8], data: &[&[u8]]) -> [u8; 32] {
    Mac::new(key).sign(data)
}

/// Constant-time equality for MACs and hashes.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// PBKDF2 iterations of mosquitto's `$7$` password format (mosquitto_passwd default).
pub const MOSQUITTO_PBKDF2_ITERATIONS: u32 = 101;

/// A broker password hash in mosquitto's password-file format:
/// `$7$<iterations>$<base64 salt (12 bytes)>$<base64 PBKDF2-HMAC-SHA512 (64 bytes)>`.
pub fn mosquitto_password_hash(password: &str) -> Result<String, CryptoError> {
    use base64::Engine;
    let mut salt = [0u8; 12];
    random_bytes(&mut salt)?;
    let mut out = [0u8; 64];
    let iters = std::num::NonZeroU32::new(MOSQUITTO_PBKDF2_ITERATIONS).expect("non-zero");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA512,
        iters,
        &salt,
        password.as_bytes(),
        &mut out,
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!(
        "$7${}${}${}",
        MOSQUITTO_PBKDF2_ITERATIONS,
        b64.encode(salt),
        b64.encode(out)
    ))
}

/// A random device password: 24 bytes, URL-safe base64 (192 bits).
pub fn random_password() -> Result<String, CryptoError> {
    use base64::Engine;
    let mut b = [0u8; 24];
    random_bytes(&mut b)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

/// A short public identifier of a secret key: the first 8 bytes of HMAC(key, label), in hex.
/// It lets operators and error messages tell keys apart without revealing them.
pub fn key_id(key: &[u8], label: &str) -> String {
    hex::encode(&hmac_sha256(key, &[b"hema3n-key-id/v1|", label.as_bytes()])[..8])
}
