//! `[attachments]`: limits on photos, ECG strips, forms and ultrasound files a crew attaches.

use serde::{Deserialize, Serialize};

use crate::model::AttachmentLimits;

/// `[attachments]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttachmentsConfig {
    /// Largest file, in MiB. Default 64 (a 12-lead PDF is < 1, a phone photo 2-8, a short
    /// ultrasound clip up to ~50).
    pub max_file_mib: u64,
    /// Total of one case's attachments, in MiB. Default 256.
    pub max_case_mib: u64,
    /// Files one case may hold. Default 50.
    pub max_case_files: u32,
    /// Largest DICOM object, in MiB: the PHI split reads it whole. Default 64.
    pub max_dicom_mib: u64,
    /// Largest upload request body (one piece of a resumable upload), in KiB. Default 1024.
    pub max_piece_kib: usize,
    /// Upload pieces read at the same time (each held in memory up to `max_piece_kib`);
    /// more get 503 and retry. Default 4.
    pub concurrent_uploads: usize,
    /// An upload not finished after this many hours is dropped. Default 24.
    pub abandon_after_hours: u64,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        AttachmentsConfig {
            max_file_mib: 64,
            max_case_mib: 256,
            max_case_files: 50,
            max_dicom_mib: 64,
            max_piece_kib: 1024,
            concurrent_uploads: 4,
            abandon_after_hours: 24,
        }
    }
}

impl AttachmentsConfig {
    pub fn limits(&self) -> AttachmentLimits {
        AttachmentLimits {
            max_file_bytes: self.max_file_mib << 20,
            max_case_bytes: self.max_case_mib << 20,
            max_case_files: self.max_case_files,
            max_dicom_bytes: self.max_dicom_mib << 20,
        }
    }

    /// Largest upload piece in bytes.
    pub fn max_piece_bytes(&self) -> usize {
        self.max_piece_kib * 1024
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.max_file_mib == 0 || self.max_case_mib < self.max_file_mib {
            return Err("attachments: need 0 < max_file_mib <= max_case_mib".into());
        }
        if self.max_case_files == 0 || self.max_dicom_mib == 0 {
            return Err("attachments: max_case_files and max_dicom_mib must be > 0".into());
        }
        if !(64..=16 * 1024).contains(&self.max_piece_kib) {
            return Err("attachments.max_piece_kib must be 64-16384".into());
        }
        if self.concurrent_uploads == 0 || self.abandon_after_hours == 0 {
            return Err(
                "attachments: concurrent_uploads and abandon_after_hours must be > 0".into(),
            );
        }
        Ok(())
    }
}
