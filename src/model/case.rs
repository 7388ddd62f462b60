//! The case and what it holds: status, details, device readings and their rejects, the
//! triage record, observations, and the export that becomes the FHIR bundle.

use serde::{Deserialize, Serialize};

use super::{Patient, Sex};

/// Lifecycle of a case (an ambulance encounter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    Open,
    HandedOff,
    Closed,
}

impl CaseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CaseStatus::Open => "open",
            CaseStatus::HandedOff => "handed_off",
            CaseStatus::Closed => "closed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => CaseStatus::Open,
            "handed_off" => CaseStatus::HandedOff,
            "closed" => CaseStatus::Closed,
            _ => return None,
        })
    }
}

/// Clinical context of a case entered by the crew (PHI: encrypted at rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseDetails {
    pub chief_complaint: Option<String>,
    pub mechanism: Option<String>,
    /// Symptom onset, RFC 3339 or unix milliseconds as text.
    pub onset: Option<String>,
}

impl CaseDetails {
    /// Each text at most 2000 bytes, not blank, no control characters but newlines and tabs.
    pub fn validate(&self) -> Result<(), super::record::FieldError> {
        for (field, v) in [
            ("chief_complaint", &self.chief_complaint),
            ("mechanism", &self.mechanism),
            ("onset", &self.onset),
        ] {
            if let Some(v) = v {
                let why = if v.len() > 2000 {
                    "is longer than 2000 bytes"
                } else if v.trim().is_empty() {
                    "is blank (send null to clear it)"
                } else if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
                    "contains control characters"
                } else {
                    continue;
                };
                return Err(super::record::FieldError {
                    field: field.into(),
                    message: why.into(),
                });
            }
        }
        Ok(())
    }
}

/// A case as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub id: String,
    pub territory: String,
    pub patient_id: Option<String>,
    pub status: CaseStatus,
    pub created_at_ms: i64,
    pub closed_at_ms: Option<i64>,
    pub details: CaseDetails,
    /// Incremented by every change of the details (`ETag` / `If-Match`).
    pub version: i64,
}

/// Why a pack was rejected: a stable machine code, a human message and the record index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub code: RejectCode,
    pub message: String,
    /// 0-based index of the offending record, when one record is at fault.
    pub record: Option<usize>,
}

impl Reject {
    pub fn new(code: RejectCode, message: impl Into<String>, record: Option<usize>) -> Self {
        Reject {
            code,
            message: message.into(),
            record,
        }
    }

    /// The JSON published on `…/rejects`: `{"code", "message", "record"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message, "record": self.record }).to_string()
    }
}

/// Stable reject codes (documented in README, Contract A).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    BadEncoding,
    BadJson,
    BadSenml,
    EmptyPack,
    TooManyRecords,
    PayloadTooLarge,
    UnknownName,
    WrongUnit,
    MissingValue,
    BadValue,
    UnsupportedValue,
    OutOfRange,
    MissingTime,
    TimeInFuture,
    TimeTooOld,
    MustUnderstand,
    UnknownDevice,
    BadDeviceId,
    RateLimited,
    /// The store refused this message for a reason of its own (e.g. the device's territory has
    /// no key): the message is kept as a dead letter, the rest of its batch commits.
    StoreRefused,
    /// Parsing this message panicked (a bug): it is dead-lettered, the rest flow.
    Internal,
}

impl RejectCode {
    pub const ALL: [RejectCode; 21] = [
        RejectCode::BadEncoding,
        RejectCode::BadJson,
        RejectCode::BadSenml,
        RejectCode::EmptyPack,
        RejectCode::TooManyRecords,
        RejectCode::PayloadTooLarge,
        RejectCode::UnknownName,
        RejectCode::WrongUnit,
        RejectCode::MissingValue,
        RejectCode::BadValue,
        RejectCode::UnsupportedValue,
        RejectCode::OutOfRange,
        RejectCode::MissingTime,
        RejectCode::TimeInFuture,
        RejectCode::TimeTooOld,
        RejectCode::MustUnderstand,
        RejectCode::UnknownDevice,
        RejectCode::BadDeviceId,
        RejectCode::RateLimited,
        RejectCode::StoreRefused,
        RejectCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::BadEncoding => "BAD_ENCODING",
            RejectCode::BadJson => "BAD_JSON",
            RejectCode::BadSenml => "BAD_SENML",
            RejectCode::EmptyPack => "EMPTY_PACK",
            RejectCode::TooManyRecords => "TOO_MANY_RECORDS",
            RejectCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            RejectCode::UnknownName => "UNKNOWN_NAME",
            RejectCode::WrongUnit => "WRONG_UNIT",
            RejectCode::MissingValue => "MISSING_VALUE",
            RejectCode::BadValue => "BAD_VALUE",
            RejectCode::UnsupportedValue => "UNSUPPORTED_VALUE",
            RejectCode::OutOfRange => "OUT_OF_RANGE",
            RejectCode::MissingTime => "MISSING_TIME",
            RejectCode::TimeInFuture => "TIME_IN_FUTURE",
            RejectCode::TimeTooOld => "TIME_TOO_OLD",
            RejectCode::MustUnderstand => "MUST_UNDERSTAND",
            RejectCode::UnknownDevice => "UNKNOWN_DEVICE",
            RejectCode::BadDeviceId => "BAD_DEVICE_ID",
            RejectCode::RateLimited => "RATE_LIMITED",
            RejectCode::StoreRefused => "STORE_REFUSED",
            RejectCode::Internal => "INTERNAL_ERROR",
        }
    }
}

/// One validated vital-sign reading from a device pack or manual entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Vocabulary name.
    pub code: &'static str,
    /// Numeric value; AVPU is stored as its index in [`AVPU_LEVELS`].
    pub value: f64,
    /// Device time, Unix milliseconds.
    pub device_time_ms: i64,
}

/// What triage needs from a case's record: latest reading per vital, demographics, complaint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaseSnapshot {
    /// `(vital name, value)` — the latest reading of each vital by device time.
    pub latest: Vec<(String, f64)>,
    pub age_years: Option<f64>,
    pub sex: Option<Sex>,
    pub chief_complaint: Option<String>,
    /// On supplemental oxygen now (the record's latest oxygen event is not a stop).
    pub on_oxygen: bool,
    /// NEWS2 SpO2 scale 2 set by a clinician for this patient.
    pub spo2_scale2: bool,
}

named_enum! {
    /// Who decided the final triage level.
    pub enum Decider {
        /// The model's proposal stood (it was at least as acute as the rules require).
        Model = "model",
        /// The rules raised the model's proposal to their ceiling.
        RulesOverride = "rules_override",
        /// The model abstained; the rules (or the rules-only default) decided.
        RulesOnly = "rules_only",
    }
}

/// A triage result to store with its case.
#[derive(Debug, Clone, PartialEq)]
pub struct TriageRecord {
    pub final_esi: u8,
    pub rules_esi: u8,
    pub model_esi: Option<u8>,
    pub news2: Option<u8>,
    pub specialty: Option<String>,
    pub confidence: Option<f32>,
    pub model_id: Option<String>,
    pub model_hash: Option<String>,
    pub decider: Decider,
    pub abstained: Option<String>,
    /// Human-readable reasons (PHI: stored encrypted).
    pub reasons: Vec<String>,
}

/// A stored triage result.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTriage {
    pub id: i64,
    pub created_at_ms: i64,
    pub record: TriageRecord,
}

/// A decrypted vital-sign reading of a case (read by the crew and exported in bundles).
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Row id in the store.
    pub id: i64,
    pub device_id: Option<String>,
    /// Vital name from the vocabulary (`heart_rate`, …).
    pub code: String,
    pub value: f64,
    pub device_time_ms: i64,
    pub recv_time_ms: i64,
    /// `device` or `manual`.
    pub source: String,
}

impl Observation {
    /// When the reading counts as taken for "latest" questions (triage, handoff): its device
    /// time, but never later than its arrival. One reading from a device whose clock runs a day
    /// ahead must not hide every real reading after it (review 2026-11-30 #11).
    pub fn effective_time_ms(&self) -> i64 {
        self.device_time_ms.min(self.recv_time_ms)
    }
}

/// One audit-log entry about the case, as exported (no details: they stay on the appliance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportAudit {
    pub seq: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub hash: [u8; 32],
    /// The entry's canonical bytes (every field the chain hash covers: `storage::audit`).
    pub canonical: Vec<u8>,
}

/// What links a case's audit entries to the checkpoint a bundle carries: the chain value
/// before the case's first entry and, for every other entry up to the checkpoint, its leaf
/// digest (chain v2) or its canonical bytes (chain v1). Encoding: `docs/bundle-format.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSegment {
    /// Sequence number of the case's first entry.
    pub from_seq: i64,
    /// `hash_{from_seq - 1}`.
    pub prev_hash: [u8; 32],
    /// One item per entry in `from_seq..=checkpoint` that is not the case's, in order:
    /// `0x02 || leaf (32 bytes)` or `0x01 || u32 BE length || canonical bytes`.
    pub links: Vec<u8>,
}

/// The latest signed audit checkpoint at export time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCheckpoint {
    pub seq: i64,
    pub ts_ms: i64,
    pub hash: [u8; 32],
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// Everything a sealed case bundle carries, decrypted, gathered in one storage transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseExport {
    pub appliance_id: String,
    pub case_id: String,
    pub territory: String,
    /// `open`, `handed_off` or `closed`.
    pub status: String,
    pub created_at_ms: i64,
    pub closed_at_ms: Option<i64>,
    pub patient_id: Option<String>,
    pub patient: Option<Patient>,
    pub chief_complaint: Option<String>,
    pub mechanism: Option<String>,
    pub onset: Option<String>,
    /// `(device id, kind)` of every device with readings in the bundle.
    pub devices: Vec<(String, String)>,
    pub readings: Vec<Observation>,
    pub triage: Option<StoredTriage>,
    /// The care record (every version; exports use the current entries).
    pub record: super::record::CaseRecord,
    /// `(account id, display name, role)` of the accounts the record names (crew,
    /// performers, authors).
    pub people: Vec<(String, String, String)>,
    /// The case's audit trail: filled only for a case bundle, when it is sealed (empty for
    /// pre-alerts, handoff reads and disclosures).
    pub audit: Vec<ExportAudit>,
    pub checkpoint: Option<ExportCheckpoint>,
    /// Links `audit` to `checkpoint` (`None` when no checkpoint follows the case's first
    /// entry).
    pub audit_segment: Option<ExportSegment>,
    /// Pre-alerts of the case: what was sent and why the next one is due.
    pub prealert: PrealertInfo,
    /// Stored attachments (metadata; their bytes travel as their own envelopes).
    pub attachments: Vec<super::AttachmentInfo>,
}

/// What a received pre-alert says, as the cloud lists it (`hema3n-receiver prealerts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrealertSummary {
    pub case_id: String,
    /// The bundle id of the pre-alert this one replaces.
    pub replaces: Option<String>,
    pub esi: Option<u8>,
    pub destination: Option<String>,
    pub eta_ms: Option<i64>,
    /// Labels of the time-critical conditions flagged.
    pub alerts: Vec<String>,
    /// Why it was sent (`esi 2`, `esi 2 → 1`, `destination`, `eta`, `alert stroke`).
    pub reasons: Vec<String>,
}

/// The pre-alert history of a case, as a new pre-alert needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrealertInfo {
    /// Bundle ids of the pre-alerts already queued, oldest first (the next one replaces the last).
    pub sent: Vec<String>,
    /// Why a pre-alert is due now (`esi 2`, `esi 2 → 1`, `destination`, `eta`, `alert stroke`).
    pub reasons: Vec<String>,
}
