//! Attachments of a case (scene photos, wounds, ECG strips, signed forms, ultrasound): what kind
//! of thing each is, which file types it accepts, and the metadata the tablet lists. The bytes
//! themselves live encrypted in `storage::attachments`.

use serde::{Deserialize, Serialize};

named_enum! {
    /// What an attachment shows. The tablet offers these; the bundle maps them to FHIR.
    pub enum AttachmentKind {
        ScenePhoto = "scene_photo",
        Wound = "wound",
        Ecg = "ecg",
        SignedForm = "signed_form",
        Ultrasound = "ultrasound",
        Other = "other",
    }
}

named_enum! {
    /// A file type recognised by its bytes (never by its name or declared type).
    pub enum MediaType {
        Jpeg = "image/jpeg",
        Png = "image/png",
        Pdf = "application/pdf",
        Dicom = "application/dicom",
    }
}

impl MediaType {
    pub fn is_image(self) -> bool {
        matches!(self, MediaType::Jpeg | MediaType::Png)
    }

    /// File name extension for exports.
    pub fn extension(self) -> &'static str {
        match self {
            MediaType::Jpeg => "jpg",
            MediaType::Png => "png",
            MediaType::Pdf => "pdf",
            MediaType::Dicom => "dcm",
        }
    }
}

impl AttachmentKind {
    /// The file types an attachment of this kind may hold.
    pub fn accepts(self, m: MediaType) -> bool {
        match self {
            AttachmentKind::ScenePhoto | AttachmentKind::Wound => m.is_image(),
            AttachmentKind::Ecg | AttachmentKind::SignedForm => m.is_image() || m == MediaType::Pdf,
            AttachmentKind::Ultrasound => m.is_image() || m == MediaType::Dicom,
            AttachmentKind::Other => true,
        }
    }

    /// Human label (tablet, PDF, FHIR `description` fallback).
    pub fn label(self) -> &'static str {
        match self {
            AttachmentKind::ScenePhoto => "Scene photo",
            AttachmentKind::Wound => "Wound photo",
            AttachmentKind::Ecg => "ECG / 12-lead",
            AttachmentKind::SignedForm => "Signed form",
            AttachmentKind::Ultrasound => "Ultrasound",
            AttachmentKind::Other => "Other",
        }
    }
}

named_enum! {
    /// Where an attachment is in its life: bytes still arriving, or stored (sanitised, chunked,
    /// hashed) and final.
    pub enum AttachmentState {
        Uploading = "uploading",
        Stored = "stored",
    }
}

/// One attachment as listed (no content). `caption` and `filename` are PHI (sealed at rest).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttachmentInfo {
    pub id: String,
    pub case_id: String,
    pub kind: AttachmentKind,
    pub state: AttachmentState,
    pub caption: Option<String>,
    pub filename: Option<String>,
    /// Bytes the client announced (uploading) or the stored content's size (stored).
    pub size: u64,
    /// Bytes received so far (the offset an interrupted upload resumes at).
    pub received: u64,
    pub media_type: Option<MediaType>,
    /// Hex SHA-256 of the stored content (the re-joined object for DICOM).
    pub sha256: Option<String>,
    /// EXIF orientation (1-8) of a photo, kept so a viewer can turn it upright after the
    /// metadata was stripped.
    pub orientation: Option<u8>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub has_thumbnail: bool,
    /// What was removed before storage (`exif`, `xmp`, `gps`, `dicom-phi:12`...).
    pub stripped: Vec<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub stored_at_ms: Option<i64>,
    /// Sync custody: `pending` until every part is receipted, then `receipted`.
    pub sync: Option<String>,
}

/// The limits an upload is checked against (`attachments` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachmentLimits {
    pub max_file_bytes: u64,
    pub max_case_bytes: u64,
    pub max_case_files: u32,
    pub max_dicom_bytes: u64,
}

/// The JSON header of one attachment part in its envelope (`sync::attachment_wire`), as the
/// receiver stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartHeader {
    pub attachment: String,
    pub case: String,
    pub part: u32,
    pub parts: u32,
    pub offset: u64,
    /// Bytes of this part.
    pub length: u64,
    /// Bytes and hex SHA-256 of the whole file.
    pub size: u64,
    pub sha256: String,
    pub media_type: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stripped: Vec<String>,
    pub created_at_ms: i64,
}
