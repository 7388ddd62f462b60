//! Plain domain types shared by every module: no IO here.
//!
//! The patient shape follows the seed record (SYSTEM.md §3) plus `mrn` and `sex`, which search
//! and triage need. Unknown fields are rejected wherever these types are deserialised.

use serde::{Deserialize, Serialize};

/// Who performed an action, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// Personal user id, or `system` / `cli:<unix user>` for the appliance itself.
    pub id: String,
    /// Role name (`paramedic`, `emt`, `staff`, `supervisor`, `admin`, `system`).
    pub role: String,
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            id: "system".into(),
            role: "system".into(),
        }
    }
    /// The local administrator running a CLI command.
    pub fn cli() -> Self {
        let user = std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            id: format!("cli:{user}"),
            role: "admin".into(),
        }
    }
}

/// The role of a personal account (SYSTEM.md §3). What each role may do is the API's policy
/// (`api::policy`); the database holds the same closed set (a `CHECK` constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full clinical record, medications.
    Paramedic,
    /// Clinical record, no medication orders.
    Emt,
    /// Demographics only.
    Staff,
    /// Reads, audit review, break-glass review.
    Supervisor,
    /// The appliance and its accounts, no PHI.
    Admin,
}

impl Role {
    /// Every role, in the order the documentation lists them.
    pub const ALL: [Role; 5] = [
        Role::Paramedic,
        Role::Emt,
        Role::Staff,
        Role::Supervisor,
        Role::Admin,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Paramedic => "paramedic",
            Role::Emt => "emt",
            Role::Staff => "staff",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }

    /// Parses a wire/database name; `None` for anything else (case-sensitive).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a new account's fields (the API's `POST /api/v1/users` and the CLI's `users add`)
/// and returns its role.
pub fn validate_user(
    id: &str,
    display_name: &str,
    role: &str,
    territory: &str,
) -> Result<Role, String> {
    if !is_valid_ident(id) || !is_valid_ident(territory) {
        return Err("user id and territory must match [A-Za-z0-9._-]{1,64}".into());
    }
    if display_name.trim().is_empty() || display_name.len() > 100 {
        return Err("display name must have 1 to 100 bytes".into());
    }
    Role::parse(role).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        format!("role must be one of {}", names.join(", "))
    })
}

/// Outcome of an audited action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Denied,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// One audit event before it is chained. `details` must never contain PHI: ids and counts only.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub actor: Actor,
    /// Dotted verb, e.g. `patient.create`, `patient.read`, `login.failure`, `case.erase`.
    pub action: String,
    /// `type/id`, e.g. `patient/0190…`.
    pub resource: String,
    pub outcome: Outcome,
    pub territory: Option<String>,
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(actor: &Actor, action: &str, resource: impl Into<String>, outcome: Outcome) -> Self {
        AuditEvent {
            actor: actor.clone(),
            action: action.into(),
            resource: resource.into(),
            outcome,
            territory: None,
            details: serde_json::Value::Null,
        }
    }
    pub fn territory(mut self, t: &str) -> Self {
        self.territory = Some(t.into());
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub street: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub zip: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Insurance {
    pub carrier: Option<String>,
    pub policy_number: Option<String>,
    pub group_number: Option<String>,
}

/// Administrative sex as used by triage age/sex bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sex {
    Female,
    Male,
    Other,
    Unknown,
}

/// A patient's demographic record. Every field is optional: crews register fast with partial data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patient {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// `YYYY-MM-DD`.
    pub date_of_birth: Option<String>,
    pub ssn: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub insurance: Option<Insurance>,
    /// Medical record number at the receiving system, if known.
    pub mrn: Option<String>,
    pub sex: Option<Sex>,
}

/// A validation problem in PHI input: which field and why (never the value itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidPhi {
    pub field: &'static str,
    pub reason: &'static str,
}

const MAX_FIELD_LEN: usize = 256;

impl Patient {
    /// Checks formats. Partial records are fine; malformed values are not.
    pub fn validate(&self) -> Result<(), InvalidPhi> {
        let texts: [(&'static str, &Option<String>); 7] = [
            ("first_name", &self.first_name),
            ("last_name", &self.last_name),
            ("date_of_birth", &self.date_of_birth),
            ("ssn", &self.ssn),
            ("email", &self.email),
            ("phone", &self.phone),
            ("mrn", &self.mrn),
        ];
        for (field, v) in texts {
            if let Some(v) = v {
                if v.len() > MAX_FIELD_LEN {
                    return Err(InvalidPhi {
                        field,
                        reason: "longer than 256 bytes",
                    });
                }
                if v.chars().any(|c| c.is_control()) {
                    return Err(InvalidPhi {
                        field,
                        reason: "contains control characters",
                    });
                }
            }
        }
        if let Some(d) = &self.date_of_birth
            && !is_valid_date(d)
        {
            return Err(InvalidPhi {
                field: "date_of_birth",
                reason: "must be a calendar date YYYY-MM-DD",
            });
        }
        if let Some(s) = &self.ssn {
            let digits: String = s.chars().filter(|c| *c != '-').collect();
            if digits.len() != 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidPhi {
                    field: "ssn",
                    reason: "must be 9 digits (dashes allowed)",
                });
            }
        }
        if let Some(e) = &self.email {
            let ok = e
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !e.contains(' '));
            if !ok {
                return Err(InvalidPhi {
                    field: "email",
                    reason: "is not an email address",
                });
            }
        }
        if let Some(p) = &self.phone {
            let n = p.chars().filter(|c| c.is_ascii_digit()).count();
            if !(7..=15).contains(&n)
                || !p
                    .chars()
                    .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            {
                return Err(InvalidPhi {
                    field: "phone",
                    reason: "must have 7-15 digits",
                });
            }
        }
        if let Some(z) = self.address.as_ref().and_then(|a| a.zip.as_ref()) {
            let ok = match z.len() {
                5 => z.bytes().all(|b| b.is_ascii_digit()),
                10 => {
                    z.as_bytes()[5] == b'-'
                        && z.bytes()
                            .enumerate()
                            .all(|(i, b)| i == 5 || b.is_ascii_digit())
                }
                _ => false,
            };
            if !ok {
                return Err(InvalidPhi {
                    field: "address.zip",
                    reason: "must be 5 digits or ZIP+4",
                });
            }
        }
        Ok(())
    }
}

/// `YYYY-MM-DD` with a real month/day (leap years included), years 1880-2200.
pub fn is_valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        s.get(r)
            .filter(|x| x.bytes().all(|c| c.is_ascii_digit()))?
            .parse::<u32>()
            .ok()
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let dim = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1880..=2200).contains(&y) && (1..=dim).contains(&d)
}

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
}

/// A patient as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPatient {
    pub id: String,
    pub territory: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub patient: Patient,
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
}

impl RejectCode {
    pub const ALL: [RejectCode; 19] = [
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
    /// `model`, `rules_override` or `rules_only`.
    pub decider: &'static str,
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

/// Age in whole-day precision from a `YYYY-MM-DD` birth date at `now_ms`.
pub fn age_years(dob: &str, now_ms: i64) -> Option<f64> {
    if !is_valid_date(dob) {
        return None;
    }
    let (y, m, d) = (
        dob[0..4].parse::<i64>().ok()?,
        dob[5..7].parse::<i64>().ok()?,
        dob[8..10].parse::<i64>().ok()?,
    );
    // Days since 1970-01-01 (civil-from-days inverse, Howard Hinnant's algorithm).
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let age = (now_ms / 86_400_000 - days) as f64 / 365.2425;
    (age >= 0.0).then_some(age)
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
    pub audit: Vec<ExportAudit>,
    pub checkpoint: Option<ExportCheckpoint>,
}

/// RFC 3339 UTC timestamp with milliseconds (`2026-11-23T08:15:00.123Z`) from Unix ms.
pub fn iso8601_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    // civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// Valid territory, device and appliance identifiers: `[A-Za-z0-9._-]{1,64}`.
pub fn is_valid_ident(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_calendar_checked() {
        for ok in ["2000-02-29", "1999-12-31", "2024-01-01"] {
            assert!(is_valid_date(ok), "{ok}");
        }
        for bad in [
            "1900-02-29",
            "2023-02-29",
            "2023-13-01",
            "2023-04-31",
            "23-01-01",
            "2023/01/01",
            "2023-1-01",
        ] {
            assert!(!is_valid_date(bad), "{bad}");
        }
    }

    #[test]
    fn partial_patients_validate_and_bad_fields_are_named() {
        assert!(Patient::default().validate().is_ok());
        let p = Patient {
            ssn: Some("123-45-678".into()),
            ..Default::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "ssn");
        let p = Patient {
            address: Some(Address {
                zip: Some("1234".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "address.zip");
        let p = Patient {
            email: Some("a@b".into()),
            ..Default::default()
        };
        assert_eq!(p.validate().unwrap_err().field, "email");
    }

    #[test]
    fn ages_from_birth_dates() {
        let now = 1_700_000_000_000; // 2023-11-14
        assert!((age_years("1970-01-01", now).unwrap() - 53.87).abs() < 0.01);
        assert!(age_years("2023-11-01", now).unwrap() < 0.05);
        assert_eq!(age_years("2030-01-01", now), None);
        assert_eq!(age_years("bad", now), None);
    }

    #[test]
    fn iso_timestamps() {
        assert_eq!(iso8601_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn unknown_patient_fields_are_rejected() {
        let e = serde_json::from_str::<Patient>(r#"{"last_name":"X","nickname":"Y"}"#).unwrap_err();
        assert!(e.to_string().contains("nickname"));
    }
}
