//! Field-level AES-256-GCM encryption of PHI columns and wrapping of data keys.
//!
//! Ciphertext layout (all integers big-endian):
//! `0x01 | data_key_id: i64 (8) | nonce (12) | ciphertext | tag (16)`.
//! Associated data: `"hema3n-field/v1" 0x00 table 0x00 column 0x00 row_id 0x00 data_key_id (8)`,
//! so a ciphertext copied to another row, column or table, or re-labelled with another data key,
//! fails to open.
//!
//! Wrapped data key layout: `0x01 | nonce (12) | AES-256-GCM(kek, data_key) | tag (16)` with
//! associated data `"hema3n-dk/v1" 0x00 territory 0x00 kek_version (4) dk_id (8)`.
//!
//! Nonces are random (96 bits); callers persist invocation counters and stop at
//! [`MAX_INVOCATIONS`] (NIST SP 800-38D §8.3 for random IVs).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use super::{CryptoError, random_nonce};

/// Format version byte of field ciphertexts and wrapped keys.
pub const FORMAT_V1: u8 = 1;
/// Upper bound of encryptions under one key with random 96-bit nonces (2^32).
pub const MAX_INVOCATIONS: u64 = 1 << 32;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;

/// Where a field lives: the associated data of its ciphertext.
#[derive(Debug, Clone, Copy)]
pub struct FieldLoc<'a> {
    pub table: &'static str,
    pub column: &'static str,
    pub row_id: &'a str,
}

impl FieldLoc<'_> {
    fn aad(&self, dk_id: i64) -> Vec<u8> {
        let mut a = Vec::with_capacity(48 + self.row_id.len());
        a.extend_from_slice(b"hema3n-field/v1\0");
        a.extend_from_slice(self.table.as_bytes());
        a.push(0);
        a.extend_from_slice(self.column.as_bytes());
        a.push(0);
        a.extend_from_slice(self.row_id.as_bytes());
        a.push(0);
        a.extend_from_slice(&dk_id.to_be_bytes());
        a
    }
    fn auth_err(&self) -> CryptoError {
        CryptoError::FieldAuth {
            table: self.table.into(),
            column: self.column.into(),
            row_id: self.row_id.into(),
        }
    }
    fn malformed(&self, why: &'static str) -> CryptoError {
        CryptoError::Malformed {
            table: self.table.into(),
            column: self.column.into(),
            row_id: self.row_id.into(),
            why,
        }
    }
}

/// An unwrapped data key (per case or per patient record). Key bytes are zeroed on drop.
pub struct DataKey {
    id: i64,
    raw: Zeroizing<[u8; 32]>,
    key: LessSafeKey,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub fn from_bytes(id: i64, raw: Zeroizing<[u8; 32]>) -> Self {
        let key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw.as_ref()).expect("32-byte key"));
        DataKey { id, raw, key }
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    /// Encrypts one field value for the given location.
    pub fn seal(&self, loc: FieldLoc<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_with(loc.aad(self.id), plaintext)
            .ok_or_else(|| loc.auth_err())
    }

    /// `0x01 | id | nonce | AES-256-GCM(plaintext, aad) | tag`; `None` if sealing failed.
    pub(super) fn seal_with(&self, aad: Vec<u8>, plaintext: &[u8]) -> Option<Vec<u8>> {
        let nonce = random_nonce().ok()?;
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[HEADER_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    /// Opens what [`DataKey::seal_with`] made under `aad` (its header already checked).
    pub(super) fn open_with(&self, aad: Vec<u8>, ciphertext: &[u8]) -> Option<Vec<u8>> {
        if ciphertext.len() < HEADER_LEN + TAG_LEN {
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&ciphertext[9..HEADER_LEN]);
        let mut body = ciphertext[HEADER_LEN..].to_vec();
        let n = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .ok()?
            .len();
        body.truncate(n);
        Some(body)
    }

    /// Decrypts one field value, checking that it belongs to this location and data key.
    pub fn open(&self, loc: FieldLoc<'_>, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let found = ciphertext_data_key(ciphertext)
            .ok_or_else(|| loc.malformed("too short or unknown version"))?;
        if found != self.id {
            return Err(CryptoError::WrongDataKey {
                table: loc.table.into(),
                column: loc.column.into(),
                row_id: loc.row_id.into(),
                found,
                expected: self.id,
            });
        }
        self.open_with(loc.aad(self.id), ciphertext)
            .ok_or_else(|| loc.auth_err())
    }

    /// Wraps this data key under a territory key-encryption key.
    pub fn wrap(&self, kek: &Kek, territory: &str) -> Result<Vec<u8>, CryptoError> {
        let nonce = random_nonce()?;
        let mut body = self.raw.to_vec();
        kek.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(territory, kek.version, self.id)),
                &mut body,
            )
            .map_err(|_| CryptoError::Rng)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Unwraps a data key that was wrapped under `kek` for `territory`.
    pub fn unwrap(
        dk_id: i64,
        wrapped: &[u8],
        kek: &Kek,
        territory: &str,
    ) -> Result<DataKey, CryptoError> {
        let err = || CryptoError::Unwrap {
            dk_id,
            territory: territory.into(),
            version: kek.version,
        };
        if wrapped.len() != 1 + NONCE_LEN + 32 + TAG_LEN || wrapped[0] != FORMAT_V1 {
            return Err(err());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&wrapped[1..1 + NONCE_LEN]);
        let mut body = Zeroizing::new(wrapped[1 + NONCE_LEN..].to_vec());
        let plain = kek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(territory, kek.version, dk_id)),
                &mut body,
            )
            .map_err(|_| err())?;
        let mut raw = Zeroizing::new([0u8; 32]);
        raw.copy_from_slice(plain);
        Ok(DataKey::from_bytes(dk_id, raw))
    }
}

/// The data-key id a field ciphertext names, if it is well formed.
pub fn ciphertext_data_key(ciphertext: &[u8]) -> Option<i64> {
    if ciphertext.len() < HEADER_LEN + TAG_LEN || ciphertext[0] != FORMAT_V1 {
        return None;
    }
    Some(i64::from_be_bytes(ciphertext[1..9].try_into().ok()?))
}

fn wrap_aad(territory: &str, version: u32, dk_id: i64) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + territory.len());
    a.extend_from_slice(b"hema3n-dk/v1\0");
    a.extend_from_slice(territory.as_bytes());
    a.push(0);
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(&dk_id.to_be_bytes());
    a
}

/// A territory key-encryption key of one version.
pub struct Kek {
    pub version: u32,
    key: LessSafeKey,
    /// Public fingerprint (see [`super::key_id`]), recorded in the database to detect a swapped key file.
    pub key_id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("version", &self.version)
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl Kek {
    pub fn new(version: u32, raw: &[u8; 32]) -> Self {
        Kek {
            version,
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, raw).expect("32-byte key")),
            key_id: super::key_id(raw, "territory-kek"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dk(id: i64) -> DataKey {
        DataKey::from_bytes(id, crate::crypto::random_key().unwrap())
    }
    const LOC: FieldLoc<'static> = FieldLoc {
        table: "patients",
        column: "last_name",
        row_id: "p1",
    };

    #[test]
    fn field_round_trips() {
        let k = dk(7);
        let ct = k.seal(LOC, b"Smith").unwrap();
        assert_eq!(ciphertext_data_key(&ct), Some(7));
        assert_eq!(k.open(LOC, &ct).unwrap(), b"Smith");
    }

    #[test]
    fn ciphertext_moved_to_other_row_or_column_fails() {
        let k = dk(7);
        let ct = k.seal(LOC, b"Smith").unwrap();
        let other_row = FieldLoc {
            row_id: "p2",
            ..LOC
        };
        let other_col = FieldLoc {
            column: "first_name",
            ..LOC
        };
        let other_table = FieldLoc {
            table: "cases",
            ..LOC
        };
        for loc in [other_row, other_col, other_table] {
            assert!(
                matches!(k.open(loc, &ct), Err(CryptoError::FieldAuth { .. })),
                "{loc:?}"
            );
        }
    }

    #[test]
    fn relabelled_data_key_fails() {
        let k = dk(7);
        let mut ct = k.seal(LOC, b"Smith").unwrap();
        ct[1..9].copy_from_slice(&8i64.to_be_bytes());
        let k8 = DataKey::from_bytes(8, k.raw.clone());
        assert!(matches!(
            k8.open(LOC, &ct),
            Err(CryptoError::FieldAuth { .. })
        ));
        assert!(matches!(
            k.open(LOC, &ct),
            Err(CryptoError::WrongDataKey {
                found: 8,
                expected: 7,
                ..
            })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let k = dk(1);
        let ct = k.seal(LOC, b"1970-01-01").unwrap();
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(k.open(LOC, &bad).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn wrap_binds_territory_version_and_id() {
        let k = dk(3);
        let kek = Kek::new(2, &[9u8; 32]);
        let w = k.wrap(&kek, "T1").unwrap();
        let back = DataKey::unwrap(3, &w, &kek, "T1").unwrap();
        assert_eq!(back.raw.as_ref(), k.raw.as_ref());
        assert!(DataKey::unwrap(4, &w, &kek, "T1").is_err());
        assert!(DataKey::unwrap(3, &w, &kek, "T2").is_err());
        assert!(DataKey::unwrap(3, &w, &Kek::new(3, &[9u8; 32]), "T1").is_err());
        assert!(DataKey::unwrap(3, &w, &Kek::new(2, &[8u8; 32]), "T1").is_err());
    }
}
