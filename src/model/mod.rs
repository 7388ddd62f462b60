//! Plain domain types shared by every module: no IO here.
//!
//! The patient shape follows the seed record (SYSTEM.md §3) plus `mrn` and `sex`, which search
//! and triage need. Unknown fields are rejected wherever these types are deserialised.
//!
//! Files: `people` (actors, roles, audit events), `patient`, `case` (status, readings,
//! triage, observations, export), `appliance` (device presence, alarm kinds, outbox states),
//! `attachment` (kinds, file types, listing).

/// A closed code set stored and sent by name: defines the enum with `ALL`, `as_str`, `parse`,
/// `Display` and a `Serialize` as its name. The database holds the same set (a `CHECK`
/// constraint); storage maps names with `as_str`/`parse`.
macro_rules! named_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $v,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)+];

            /// The stored and wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s,)+ }
            }

            /// Parses a stored or wire name (case-sensitive); `None` for anything else.
            pub fn parse(name: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

pub mod access;
mod appliance;
mod attachment;
mod case;
mod patient;
mod people;
pub mod record;

pub use appliance::{AlarmKind, OutboxState, Presence};
pub use attachment::{
    AttachmentInfo, AttachmentKind, AttachmentLimits, AttachmentState, MediaType, PartHeader,
};
pub use case::{
    Case, CaseDetails, CaseExport, CaseSnapshot, CaseStatus, Decider, ExportAudit,
    ExportCheckpoint, ExportSegment, Observation, PrealertInfo, PrealertSummary, Reading, Reject,
    RejectCode, StoredTriage, TriageRecord,
};
pub use patient::{
    Address, Insurance, InvalidPhi, Patient, Sex, StoredPatient, age_years, is_valid_date,
};
pub use people::{AccessContext, Actor, AuditEvent, Outcome, Role, validate_user};

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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What [`parse_time_ms`] accepts, for error messages.
pub const TIME_FORMS: &str = "a UTC date (2026-12-07), timestamp (2026-12-07T08:15:00Z) or Unix ms";

/// Unix ms of a time a person typed: a UTC date (`2026-12-07`, its midnight), a UTC timestamp
/// with or without milliseconds (`2026-12-07T08:15:00Z`, `2026-12-07T08:15:00.123Z`) or Unix
/// milliseconds; `None` for anything else.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    if !s.is_empty() && s.len() <= 15 && s.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse().ok();
    }
    match s.len() {
        10 => parse_iso8601_ms(&format!("{s}T00:00:00.000Z")),
        20 if s.ends_with('Z') => parse_iso8601_ms(&format!("{}.000Z", &s[..19])),
        _ => parse_iso8601_ms(s),
    }
}

/// Unix ms of a UTC timestamp in exactly the form [`iso8601_ms`] writes
/// (`2026-11-23T08:15:00.123Z`); `None` for anything else.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 24
        || &s[4..5] != "-"
        || &s[7..8] != "-"
        || &s[10..11] != "T"
        || &s[13..14] != ":"
        || &s[16..17] != ":"
        || &s[19..20] != "."
        || &s[23..] != "Z"
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> {
        s.get(r)
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()
    };
    let (y, mo, d, h, mi, se, ms) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
        n(20..23)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400_000 + ((h * 60 + mi) * 60 + se) * 1000 + ms)
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
    fn iso8601_ms_parses_back() {
        for ms in [0, 1_800_000_123_456, 951_782_400_000, 4_102_444_799_999] {
            assert_eq!(
                parse_iso8601_ms(&iso8601_ms(ms)),
                Some(ms),
                "{}",
                iso8601_ms(ms)
            );
        }
        for bad in [
            "2026-11-23T08:15:00Z",
            "2026-13-23T08:15:00.000Z",
            "2026-11-23 08:15:00.000Z",
        ] {
            assert_eq!(parse_iso8601_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn typed_times_parse_in_three_forms() {
        let t = 1_796_630_400_000; // 2026-12-07T08:00:00Z
        assert_eq!(parse_time_ms("2026-12-07T08:00:00Z"), Some(t));
        assert_eq!(parse_time_ms("2026-12-07T08:00:00.000Z"), Some(t));
        assert_eq!(parse_time_ms("2026-12-07"), Some(t - 8 * 3_600_000));
        assert_eq!(parse_time_ms("1796630400000"), Some(t));
        for bad in ["", "yesterday", "2026-12-07 08:00", "2026-12-32", "-5"] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
    }

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
