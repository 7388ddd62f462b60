//! Attachment content encryption: the bytes of a file in fixed-size chunks, each sealed with
//! AES-256-GCM under the case's data key.
//!
//! Chunk ciphertext: `0x01 | data_key_id (8) | nonce (12) | ciphertext | tag (16)`.
//! Associated data: `"hema3n-chunk/v1" 0x00 part 0x00 attachment_id 0x00 index (4) count (4)
//! data_key_id (8)`, so a chunk swapped with another, moved to another index or attachment, or
//! read as part of a shorter or longer file fails to open; a missing chunk is found by counting.
//! `part` separates the streams of one attachment (`content`, `upload` while it arrives,
//! `phi` for a DICOM object's PHI, `thumb`), so one cannot stand in for another.

use super::CryptoError;
use super::field::{DataKey, FORMAT_V1};

/// Where a chunk belongs.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLoc<'a> {
    pub part: &'static str,
    pub attachment_id: &'a str,
    pub index: u32,
    pub count: u32,
}

impl ChunkLoc<'_> {
    fn aad(&self, dk_id: i64) -> Vec<u8> {
        let mut a = Vec::with_capacity(64 + self.attachment_id.len());
        a.extend_from_slice(b"hema3n-chunk/v1\0");
        a.extend_from_slice(self.part.as_bytes());
        a.push(0);
        a.extend_from_slice(self.attachment_id.as_bytes());
        a.push(0);
        a.extend_from_slice(&self.index.to_be_bytes());
        a.extend_from_slice(&self.count.to_be_bytes());
        a.extend_from_slice(&dk_id.to_be_bytes());
        a
    }

    fn auth_err(&self) -> CryptoError {
        CryptoError::ChunkAuth {
            attachment: self.attachment_id.into(),
            index: self.index,
        }
    }
}

impl DataKey {
    /// Seals one chunk for its place.
    pub fn seal_chunk(&self, loc: ChunkLoc<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seal_with(loc.aad(self.id()), plaintext)
            .ok_or_else(|| loc.auth_err())
    }

    /// Opens one chunk, checking it belongs at `loc` under this key.
    pub fn open_chunk(&self, loc: ChunkLoc<'_>, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if ciphertext.first() != Some(&FORMAT_V1)
            || ciphertext.get(1..9) != Some(&self.id().to_be_bytes()[..])
        {
            return Err(loc.auth_err());
        }
        self.open_with(loc.aad(self.id()), ciphertext)
            .ok_or_else(|| loc.auth_err())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64) -> DataKey {
        DataKey::from_bytes(id, zeroize::Zeroizing::new([id as u8; 32]))
    }

    #[test]
    fn a_chunk_opens_only_in_its_place() {
        let k = key(7);
        let at = |attachment_id, index, count| ChunkLoc {
            part: "content",
            attachment_id,
            index,
            count,
        };
        let c = k.seal_chunk(at("a1", 2, 5), b"twelve bytes").unwrap();
        assert_eq!(k.open_chunk(at("a1", 2, 5), &c).unwrap(), b"twelve bytes");
        for wrong in [at("a1", 3, 5), at("a1", 2, 4), at("a2", 2, 5)] {
            let e = k.open_chunk(wrong, &c).unwrap_err();
            assert!(matches!(e, CryptoError::ChunkAuth { .. }), "{e}");
        }
        let other_part = ChunkLoc {
            part: "upload",
            ..at("a1", 2, 5)
        };
        assert!(k.open_chunk(other_part, &c).is_err());
        assert!(key(8).open_chunk(at("a1", 2, 5), &c).is_err());
        let mut edited = c.clone();
        *edited.last_mut().unwrap() ^= 1;
        assert!(k.open_chunk(at("a1", 2, 5), &edited).is_err());
    }
}
