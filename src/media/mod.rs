//! Attachment content by its bytes: recognising the file type from its first bytes (never from
//! a name or a declared type), checking it is whole, stripping what identifies people or devices
//! before anything is stored, splitting DICOM objects into a de-identified data set and their
//! PHI, and small thumbnails. Pure functions and stream filters: no IO, no keys.
//!
//! - [`image`]: streaming JPEG and PNG filters that drop EXIF, XMP, IPTC, GPS, comments, text
//!   chunks and trailers, keeping the EXIF orientation aside.
//! - [`dicom`]: the PHI split and its exact re-join (the only importer of the `dicom-*` crates).
//! - [`thumb`]: bounded-memory thumbnails (the only importer of `jpeg-decoder`, `jpeg-encoder`
//!   and `png`).

pub mod dicom;
pub mod image;
pub mod thumb;

use crate::model::{AttachmentKind, MediaType};

/// Bytes needed to recognise every supported type (the DICOM preamble and prefix).
pub const SNIFF_BYTES: usize = 132;

/// Why content was refused. `code()` is the stable name the API, the CLI and the audit trail
/// use. Nothing is stored when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the file is empty (0 bytes)")]
    Empty,
    #[error(
        "{found} files are not accepted: attach a JPEG or PNG photo, a PDF or a DICOM (Part 10) file"
    )]
    Unsupported { found: &'static str },
    #[error(
        "this DICOM data has no 128-byte preamble and `DICM` prefix: export it from the device as a DICOM Part 10 file"
    )]
    DicomNoPreamble,
    #[error("the {media} file is truncated ({why}); attach the complete file")]
    Truncated { media: &'static str, why: String },
    #[error("the {media} file is malformed: {why}")]
    Malformed { media: &'static str, why: String },
    #[error("a {kind} cannot be a {media} file (accepted: {accepted})")]
    KindMismatch {
        kind: &'static str,
        media: &'static str,
        accepted: &'static str,
    },
}

impl MediaError {
    pub fn code(&self) -> &'static str {
        match self {
            MediaError::Empty => "EMPTY_FILE",
            MediaError::Unsupported { .. } => "UNSUPPORTED_TYPE",
            MediaError::DicomNoPreamble => "DICOM_NO_PREAMBLE",
            MediaError::Truncated { .. } => "TRUNCATED_FILE",
            MediaError::Malformed { .. } => "MALFORMED_FILE",
            MediaError::KindMismatch { .. } => "KIND_MISMATCH",
        }
    }

    pub(crate) fn truncated(media: MediaType, why: impl Into<String>) -> Self {
        MediaError::Truncated {
            media: media_name(media),
            why: why.into(),
        }
    }

    pub(crate) fn malformed(media: MediaType, why: impl Into<String>) -> Self {
        MediaError::Malformed {
            media: media_name(media),
            why: why.into(),
        }
    }
}

fn media_name(m: MediaType) -> &'static str {
    match m {
        MediaType::Jpeg => "JPEG",
        MediaType::Png => "PNG",
        MediaType::Pdf => "PDF",
        MediaType::Dicom => "DICOM",
    }
}

/// Recognises the file type from its first bytes (at least [`SNIFF_BYTES`] unless the file is
/// shorter). `whole` says `head` is the entire file.
pub fn sniff(head: &[u8], whole: bool) -> Result<MediaType, MediaError> {
    if head.is_empty() {
        return Err(MediaError::Empty);
    }
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(MediaType::Jpeg);
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(MediaType::Png);
    }
    if head.starts_with(b"%PDF-") {
        return Ok(MediaType::Pdf);
    }
    if head.len() >= SNIFF_BYTES && &head[128..132] == b"DICM" {
        return Ok(MediaType::Dicom);
    }
    if head.starts_with(b"DICM") || looks_like_bare_dicom(head) {
        return Err(MediaError::DicomNoPreamble);
    }
    if head.len() < SNIFF_BYTES && !whole {
        // The caller gives the first SNIFF_BYTES of any longer file.
        return Err(MediaError::Unsupported {
            found: "unrecognised",
        });
    }
    Err(MediaError::Unsupported {
        found: describe_unsupported(head),
    })
}

/// A data set starting with a group 0002 or 0008 element, explicit VR little endian, as DICOM
/// written without its Part 10 header starts.
fn looks_like_bare_dicom(h: &[u8]) -> bool {
    h.len() >= 8
        && (h[0..2] == [0x02, 0x00] || h[0..2] == [0x08, 0x00])
        && h[4].is_ascii_uppercase()
        && h[5].is_ascii_uppercase()
}

fn describe_unsupported(h: &[u8]) -> &'static str {
    if h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a") {
        "GIF"
    } else if h.len() >= 12 && &h[4..8] == b"ftyp" {
        match &h[8..12] {
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => "HEIC",
            _ => "MP4/QuickTime video",
        }
    } else if h.len() >= 12 && h.starts_with(b"RIFF") && &h[8..12] == b"WEBP" {
        "WebP"
    } else if h.starts_with(b"PK\x03\x04") {
        "ZIP or Office"
    } else if h.starts_with(b"MZ") || h.starts_with(b"\x7fELF") {
        "executable"
    } else if h.starts_with(b"II*\0") || h.starts_with(b"MM\0*") {
        "TIFF"
    } else if h.starts_with(b"BM") {
        "BMP"
    } else if h
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "plain text"
    } else {
        "unrecognised"
    }
}

/// Refuses a file type the attachment's kind does not take (a PDF as a wound photo).
pub fn check_kind(kind: AttachmentKind, media: MediaType) -> Result<(), MediaError> {
    if kind.accepts(media) {
        return Ok(());
    }
    Err(MediaError::KindMismatch {
        kind: kind.label(),
        media: media_name(media),
        accepted: match kind {
            AttachmentKind::ScenePhoto | AttachmentKind::Wound => "JPEG, PNG",
            AttachmentKind::Ecg | AttachmentKind::SignedForm => "JPEG, PNG, PDF",
            AttachmentKind::Ultrasound => "JPEG, PNG, DICOM",
            AttachmentKind::Other => "JPEG, PNG, PDF, DICOM",
        },
    })
}

/// What a sanitiser learnt and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sanitised {
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// EXIF orientation (1-8) found before the EXIF block was dropped.
    pub orientation: Option<u8>,
    /// Names of what was removed (`exif`, `gps`, `xmp`, `iptc`, `comment`, `trailer`, ...).
    pub stripped: Vec<String>,
}

/// A streaming content filter: bytes in, sanitised bytes out, never the whole file in memory
/// (apart from DICOM, which the split needs whole and the caller bounds).
pub enum Filter {
    Image(image::ImageFilter),
    Pdf(PdfCheck),
    Dicom(Vec<u8>),
}

impl Filter {
    pub fn new(media: MediaType) -> Self {
        match media {
            MediaType::Jpeg | MediaType::Png => Filter::Image(image::ImageFilter::new(media)),
            MediaType::Pdf => Filter::Pdf(PdfCheck::default()),
            MediaType::Dicom => Filter::Dicom(Vec::new()),
        }
    }

    /// Feeds input; appends what may be stored to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        match self {
            Filter::Image(f) => f.push(input, out),
            Filter::Pdf(p) => {
                p.push(input);
                out.extend_from_slice(input);
                Ok(())
            }
            Filter::Dicom(all) => {
                all.extend_from_slice(input);
                Ok(())
            }
        }
    }

    /// Checks the file ended where it should.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<Sanitised, MediaError> {
        match self {
            Filter::Image(f) => f.finish(out),
            Filter::Pdf(p) => p.finish().map(|_| Sanitised::default()),
            Filter::Dicom(all) => {
                out.extend_from_slice(&all);
                Ok(Sanitised::default())
            }
        }
    }
}

/// A PDF is whole when it starts with `%PDF-` and an `%%EOF` marker ends it (within the last
/// 1 KiB, as writers may append a newline or padding).
#[derive(Default)]
pub struct PdfCheck {
    tail: Vec<u8>,
}

impl PdfCheck {
    fn push(&mut self, input: &[u8]) {
        self.tail.extend_from_slice(input);
        if self.tail.len() > 2048 {
            let cut = self.tail.len() - 1024;
            self.tail.drain(..cut);
        }
    }

    fn finish(self) -> Result<(), MediaError> {
        let t = &self.tail[self.tail.len().saturating_sub(1024)..];
        if t.windows(5).any(|w| w == b"%%EOF") {
            Ok(())
        } else {
            Err(MediaError::truncated(
                MediaType::Pdf,
                "no %%EOF marker at its end",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_recognised_by_their_bytes() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0rest", true), Ok(MediaType::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n....", true), Ok(MediaType::Png));
        assert_eq!(sniff(b"%PDF-1.7\n", true), Ok(MediaType::Pdf));
        let mut dcm = vec![0u8; 128];
        dcm.extend_from_slice(b"DICM\x02\x00\x00\x00UL");
        assert_eq!(sniff(&dcm, true), Ok(MediaType::Dicom));
        assert_eq!(sniff(&dcm[128..], true), Err(MediaError::DicomNoPreamble));
        assert_eq!(
            sniff(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", true),
            Err(MediaError::DicomNoPreamble)
        );
        assert_eq!(sniff(b"", true), Err(MediaError::Empty));
        assert_eq!(
            sniff(b"GIF89a....", true),
            Err(MediaError::Unsupported { found: "GIF" })
        );
        assert_eq!(
            sniff(b"hello, I am a .jpg", true),
            Err(MediaError::Unsupported {
                found: "plain text"
            })
        );
        assert_eq!(
            sniff(b"\0\0\0\x18ftypheic\0\0", true).unwrap_err().code(),
            "UNSUPPORTED_TYPE"
        );
    }

    #[test]
    fn kinds_take_only_their_file_types() {
        assert!(check_kind(AttachmentKind::Ecg, MediaType::Pdf).is_ok());
        let e = check_kind(AttachmentKind::Wound, MediaType::Pdf).unwrap_err();
        assert_eq!(e.code(), "KIND_MISMATCH");
        assert!(e.to_string().contains("JPEG, PNG"), "{e}");
        assert!(check_kind(AttachmentKind::Ultrasound, MediaType::Dicom).is_ok());
    }

    #[test]
    fn a_pdf_without_its_end_is_truncated() {
        let mut f = Filter::new(MediaType::Pdf);
        let mut out = Vec::new();
        f.push(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", &mut out)
            .unwrap();
        assert_eq!(f.finish(&mut out).unwrap_err().code(), "TRUNCATED_FILE");
        let mut f = Filter::new(MediaType::Pdf);
        f.push(b"%PDF-1.4\n", &mut out).unwrap();
        f.push(&vec![b' '; 5000], &mut out).unwrap();
        f.push(b"\n%%EOF\n", &mut out).unwrap();
        assert!(f.finish(&mut out).is_ok());
    }
}
