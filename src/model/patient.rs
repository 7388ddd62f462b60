//! The patient record: the seed shape (SYSTEM.md §3) plus `mrn` and `sex`, its validation
//! ([`Patient::validate`], [`InvalidPhi`]) and age.

use serde::{Deserialize, Serialize};

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
    /// For a patient whose birth date is not known (an unidentified patient): the crew's
    /// estimate, whole years (0–120).
    pub estimated_age_years: Option<u32>,
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
        if self.estimated_age_years.is_some_and(|a| a > 120) {
            return Err(InvalidPhi {
                field: "estimated_age_years",
                reason: "must be 0 to 120",
            });
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

/// A patient as read back from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPatient {
    pub id: String,
    pub territory: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Incremented by every change (`ETag` / `If-Match`).
    pub version: i64,
    pub patient: Patient,
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
    let days = super::days_from_civil(y, m, d);
    let age = (now_ms / 86_400_000 - days) as f64 / 365.2425;
    (age >= 0.0).then_some(age)
}
