//! The plaintext of an attachment envelope (kind `attachment`, `docs/bundle-format.md` §
//! "Attachment parts"): `"H3NA"`, a 4-byte big-endian header length, the header as JSON, then
//! the part's bytes. The header names the attachment, its case, the part's place in the file
//! and the whole file's size and SHA-256; the first part also carries the description (kind,
//! type, caption, file name). The receiver reassembles the parts by offset and accepts the
//! file only when its hash matches.

pub use crate::model::PartHeader;
use crate::storage::AttachmentPart;

pub const MAGIC: &[u8; 4] = b"H3NA";
/// Largest header a receiver reads.
pub const MAX_HEADER: usize = 64 * 1024;

/// Why a part's plaintext was refused (the receiver's reject code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error("attachment part is malformed: {0}")]
    Malformed(&'static str),
}

/// Encodes a part's plaintext.
pub fn encode(p: &AttachmentPart<'_>) -> Vec<u8> {
    let first = p.part == 0;
    let h = PartHeader {
        attachment: p.attachment_id.into(),
        case: p.case_id.into(),
        part: p.part,
        parts: p.parts,
        offset: p.offset,
        length: p.data.len() as u64,
        size: p.size,
        sha256: p.sha256.into(),
        media_type: p.media_type.into(),
        kind: p.kind.into(),
        caption: p.caption.filter(|_| first).map(str::to_string),
        filename: p.filename.filter(|_| first).map(str::to_string),
        orientation: p.orientation,
        stripped: if first {
            p.stripped.to_vec()
        } else {
            Vec::new()
        },
        created_at_ms: p.created_at_ms,
    };
    let hj = serde_json::to_vec(&h).expect("json");
    let mut out = Vec::with_capacity(8 + hj.len() + p.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(hj.len() as u32).to_be_bytes());
    out.extend_from_slice(&hj);
    out.extend_from_slice(p.data);
    out
}

/// Decodes a part's plaintext into its header and bytes, checking they agree.
pub fn decode(plain: &[u8]) -> Result<(PartHeader, &[u8]), PartError> {
    if plain.len() < 8 || &plain[..4] != MAGIC {
        return Err(PartError::Malformed("no H3NA prefix"));
    }
    let n = u32::from_be_bytes([plain[4], plain[5], plain[6], plain[7]]) as usize;
    if n > MAX_HEADER || plain.len() < 8 + n {
        return Err(PartError::Malformed("header length"));
    }
    let h: PartHeader = serde_json::from_slice(&plain[8..8 + n])
        .map_err(|_| PartError::Malformed("header JSON"))?;
    let data = &plain[8 + n..];
    let valid = h.length == data.len() as u64
        && h.part < h.parts
        && h.offset
            .checked_add(h.length)
            .is_some_and(|end| end <= h.size)
        && h.sha256.len() == 64
        && h.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        && crate::model::is_valid_ident(&h.case)
        && uuid::Uuid::parse_str(&h.attachment).is_ok();
    if !valid {
        return Err(PartError::Malformed("header does not describe its bytes"));
    }
    Ok((h, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_round_trips_and_lies_are_refused() {
        let stripped = vec!["exif".to_string()];
        let p = AttachmentPart {
            attachment_id: "0190f3a0-0000-7000-8000-000000000001",
            case_id: "case-1",
            kind: "ecg",
            media_type: "application/pdf",
            caption: Some("12-lead"),
            filename: Some("ecg.pdf"),
            sha256: &"ab".repeat(32),
            created_at_ms: 5,
            created_by: "medic",
            stripped: &stripped,
            orientation: None,
            size: 10,
            part: 0,
            parts: 2,
            offset: 0,
            data: b"hello",
        };
        let e = encode(&p);
        let (h, d) = decode(&e).unwrap();
        assert_eq!(d, b"hello");
        assert_eq!(h.caption.as_deref(), Some("12-lead"));
        assert_eq!((h.part, h.parts, h.offset, h.size), (0, 2, 0, 10));
        let mut short = e.clone();
        short.pop();
        assert!(decode(&short).is_err());
        let beyond = AttachmentPart { offset: 6, ..p };
        assert!(decode(&encode(&beyond)).is_err());
        assert!(decode(b"H3NA\0\0\0\x05{}").is_err());
    }
}
