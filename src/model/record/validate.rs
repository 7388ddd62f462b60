//! Validation of care-record input: each section (after its merge patch) and each event, with
//! the field at fault named, times bounded by the case and the clock, codes from the lists.

use serde_json::Value;

use super::{
    Assessment, Disposition, EventKind, History, Impression, Incident, MedicationGiven, Narrative,
    Oxygen, Procedure, Scene, Section, Situation, Spo2Scale, Times, codes,
};

/// A field-level validation problem: the JSON path of the field and why (never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// What validation needs to know about the case and the clock.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub now_ms: i64,
    pub case_created_ms: i64,
}

/// How far before the case was opened a recorded time may lie (a call taken, the case opened
/// on arrival).
pub const MAX_BEFORE_CASE_MS: i64 = 24 * 3_600_000;
/// How far ahead of the appliance clock a recorded time may lie (tablet clock skew).
pub const MAX_AHEAD_MS: i64 = 5 * 60_000;
/// Longest free-text field (narrative has its own limit).
pub const MAX_TEXT: usize = 500;
/// Longest narrative.
pub const MAX_NARRATIVE: usize = 20_000;
/// Most items in a list field (allergies, history, …).
pub const MAX_ITEMS: usize = 50;

impl Bounds {
    fn time(&self, field: &str, t: i64) -> Result<(), FieldError> {
        if t < self.case_created_ms - MAX_BEFORE_CASE_MS {
            return Err(bad(field, "is more than 24 h before the case was opened"));
        }
        if t > self.now_ms + MAX_AHEAD_MS {
            return Err(bad(field, "is in the future"));
        }
        Ok(())
    }
}

fn text(field: &str, v: &Option<String>, max: usize) -> Result<(), FieldError> {
    if let Some(s) = v {
        if s.trim().is_empty() {
            return Err(bad(field, "is blank (send null to clear it)"));
        }
        if s.len() > max {
            return Err(bad(field, format!("is longer than {max} bytes")));
        }
        if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(bad(field, "contains control characters"));
        }
    }
    Ok(())
}

fn texts(field: &str, v: &Option<Vec<String>>) -> Result<(), FieldError> {
    if let Some(items) = v {
        if items.len() > MAX_ITEMS {
            return Err(bad(field, format!("has more than {MAX_ITEMS} items")));
        }
        for (i, s) in items.iter().enumerate() {
            text(&format!("{field}[{i}]"), &Some(s.clone()), MAX_TEXT)?;
        }
    }
    Ok(())
}

fn range(field: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), FieldError> {
    match v {
        Some(x) if !x.is_finite() || x < lo || x > hi => {
            Err(bad(field, format!("must be between {lo} and {hi}")))
        }
        _ => Ok(()),
    }
}

fn int_range(field: &str, v: Option<u32>, lo: u32, hi: u32) -> Result<(), FieldError> {
    match v {
        Some(x) if x < lo || x > hi => Err(bad(field, format!("must be between {lo} and {hi}"))),
        _ => Ok(()),
    }
}

/// The field a serde error names (an unknown or missing field), else `body`.
pub fn field_error(e: &serde_json::Error) -> FieldError {
    let m = e.to_string();
    let field = m
        .split('`')
        .nth(1)
        .filter(|_| m.starts_with("unknown field") || m.starts_with("missing field"))
        .unwrap_or("body")
        .to_string();
    bad(field, m)
}

/// Parses a JSON body into `T`, naming the field serde refused.
fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, FieldError> {
    serde_json::from_value(v).map_err(|e| field_error(&e))
}

/// A section's content, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum SectionBody {
    Incident(Incident),
    Times(Times),
    Scene(Scene),
    Situation(Situation),
    History(History),
    Disposition(Disposition),
    Narrative(Narrative),
    Spo2Scale(Spo2Scale),
}

impl Section {
    /// Validates a section's full (merged) JSON.
    pub fn validate(self, v: Value, b: &Bounds) -> Result<SectionBody, FieldError> {
        Ok(match self {
            Section::Incident => {
                let x: Incident = parse(v)?;
                // NEMSIS lengths: incident and response numbers 3-50, vehicle 1-25.
                for (f, s, min, max) in [
                    ("incident_number", &x.incident_number, 3, 50),
                    ("run_number", &x.run_number, 3, 50),
                    ("unit", &x.unit, 1, 25),
                ] {
                    text(f, s, max)?;
                    if s.as_ref().is_some_and(|v| v.trim().len() < min) {
                        return Err(bad(f, format!("needs at least {min} characters")));
                    }
                }
                if let Some(crew) = &x.crew {
                    if crew.len() > 8 {
                        return Err(bad("crew", "has more than 8 members"));
                    }
                    for (i, m) in crew.iter().enumerate() {
                        if !crate::model::is_valid_ident(&m.account) {
                            return Err(bad(format!("crew[{i}].account"), "is not a user id"));
                        }
                    }
                }
                SectionBody::Incident(x)
            }
            Section::Times => {
                let x: Times = parse(v)?;
                let mut prev: Option<(&str, i64)> = None;
                for (f, t) in x.ordered() {
                    let Some(t) = t else { continue };
                    b.time(f, t)?;
                    if let Some((pf, pt)) = prev
                        && t < pt
                    {
                        return Err(bad(f, format!("is before {pf}")));
                    }
                    prev = Some((f, t));
                }
                SectionBody::Times(x)
            }
            Section::Scene => {
                let x: Scene = parse(v)?;
                range("latitude", x.latitude, -90.0, 90.0)?;
                range("longitude", x.longitude, -180.0, 180.0)?;
                if x.latitude.is_some() != x.longitude.is_some() {
                    return Err(bad("latitude", "latitude and longitude go together"));
                }
                text("address", &x.address, MAX_TEXT)?;
                text("description", &x.description, MAX_TEXT)?;
                int_range("patient_count", x.patient_count, 1, 1000)?;
                SectionBody::Scene(x)
            }
            Section::Situation => {
                let x: Situation = parse(v)?;
                for (f, t) in [
                    ("symptom_onset_ms", x.symptom_onset_ms),
                    ("last_known_well_ms", x.last_known_well_ms),
                ] {
                    if let Some(t) = t {
                        // Onset may be days before the call; never after now.
                        if t > b.now_ms + MAX_AHEAD_MS {
                            return Err(bad(f, "is in the future"));
                        }
                        if t < b.case_created_ms - 30 * 86_400_000 {
                            return Err(bad(f, "is more than 30 days before the case"));
                        }
                    }
                }
                if let Some(p) = &x.primary_impression {
                    impression("primary_impression", p)?;
                }
                if let Some(s) = &x.secondary_impressions {
                    if s.len() > 10 {
                        return Err(bad("secondary_impressions", "has more than 10 items"));
                    }
                    for (i, p) in s.iter().enumerate() {
                        impression(&format!("secondary_impressions[{i}]"), p)?;
                    }
                }
                SectionBody::Situation(x)
            }
            Section::History => {
                let x: History = parse(v)?;
                if x.no_known_allergies == Some(true)
                    && x.allergies.as_ref().is_some_and(|a| !a.is_empty())
                {
                    return Err(bad(
                        "no_known_allergies",
                        "cannot be true while allergies are listed",
                    ));
                }
                texts("allergies", &x.allergies)?;
                texts("medical_history", &x.medical_history)?;
                texts("current_medications", &x.current_medications)?;
                SectionBody::History(x)
            }
            Section::Disposition => {
                let x: Disposition = parse(v)?;
                text("destination", &x.destination, 200)?;
                text("transfer_to", &x.transfer_to, 200)?;
                text("transfer_to_role", &x.transfer_to_role, 200)?;
                if let Some(t) = x.eta_ms {
                    // An arrival estimate lies ahead, but not by more than a day.
                    if t > b.now_ms + 86_400_000 {
                        return Err(bad("eta_ms", "is more than 24 hours ahead"));
                    }
                    if t < b.case_created_ms {
                        return Err(bad("eta_ms", "is before the case was opened"));
                    }
                }
                if let Some(a) = &x.alerts {
                    let mut seen = std::collections::HashSet::new();
                    if !a.iter().all(|k| seen.insert(*k)) {
                        return Err(bad("alerts", "lists an alert twice"));
                    }
                }
                SectionBody::Disposition(x)
            }
            Section::Narrative => {
                let x: Narrative = parse(v)?;
                text("text", &x.text, MAX_NARRATIVE)?;
                SectionBody::Narrative(x)
            }
            Section::Spo2Scale => {
                let x: Spo2Scale = parse(v)?;
                text("reason", &x.reason, MAX_TEXT)?;
                if x.scale2 == Some(true) && x.reason.is_none() {
                    return Err(bad(
                        "reason",
                        "is required to use scale 2 (confirmed hypercapnic respiratory failure)",
                    ));
                }
                SectionBody::Spo2Scale(x)
            }
        })
    }
}

fn impression(field: &str, p: &Impression) -> Result<(), FieldError> {
    if codes::impression(&p.code).is_none() {
        return Err(bad(
            format!("{field}.code"),
            "is not in the impression list (GET /api/v1/record/codes)",
        ));
    }
    text(&format!("{field}.note"), &p.note, MAX_TEXT)
}

/// An event's content, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum EventBody {
    Oxygen(Oxygen),
    Procedure(Procedure),
    Medication(MedicationGiven),
    Assessment(Assessment),
}

impl EventBody {
    pub fn at_ms(&self) -> i64 {
        match self {
            EventBody::Oxygen(x) => x.at_ms,
            EventBody::Procedure(x) => x.at_ms,
            EventBody::Medication(x) => x.at_ms,
            EventBody::Assessment(x) => x.at_ms,
        }
    }
}

impl EventKind {
    /// Validates an event's JSON.
    pub fn validate(self, v: Value, b: &Bounds) -> Result<EventBody, FieldError> {
        let performer = |p: &Option<String>| match p {
            Some(p) if !crate::model::is_valid_ident(p) => {
                Err(bad("performer", "is not a user id"))
            }
            _ => Ok(()),
        };
        let body = match self {
            EventKind::Oxygen => {
                let x: Oxygen = parse(v)?;
                match x.action {
                    codes::OxygenAction::Stop => {
                        if x.flow_l_min.is_some() {
                            return Err(bad("flow_l_min", "is not sent when stopping oxygen"));
                        }
                    }
                    _ => {
                        let Some(f) = x.flow_l_min else {
                            return Err(bad("flow_l_min", "is required (litres per minute)"));
                        };
                        range("flow_l_min", Some(f), 0.1, 60.0)?;
                        if x.device.is_none() {
                            return Err(bad("device", "is required"));
                        }
                    }
                }
                EventBody::Oxygen(x)
            }
            EventKind::Procedure => {
                let x: Procedure = parse(v)?;
                text("site", &x.site, 100)?;
                text("size", &x.size, 50)?;
                text("note", &x.note, MAX_TEXT)?;
                int_range("attempts", Some(x.attempts), 1, 20)?;
                performer(&x.performer)?;
                EventBody::Procedure(x)
            }
            EventKind::Medication => {
                let x: MedicationGiven = parse(v)?;
                match x.dose {
                    None => return Err(bad("dose", "is required")),
                    Some(d) if !d.is_finite() || d <= 0.0 || d > 100_000.0 => {
                        return Err(bad("dose", "must be a positive number up to 100000"));
                    }
                    Some(_) => {}
                }
                if x.dose_unit.is_none() {
                    return Err(bad("dose_unit", "is required"));
                }
                if x.route.is_none() {
                    return Err(bad("route", "is required"));
                }
                text("note", &x.note, MAX_TEXT)?;
                if x.medication == codes::MedicationCode::Other && x.note.is_none() {
                    return Err(bad("note", "names the medication when it is `other`"));
                }
                performer(&x.performer)?;
                EventBody::Medication(x)
            }
            EventKind::Assessment => {
                let x: Assessment = parse(v)?;
                int_range("gcs_eye", x.gcs_eye, 1, 4)?;
                int_range("gcs_verbal", x.gcs_verbal, 1, 5)?;
                int_range("gcs_motor", x.gcs_motor, 1, 6)?;
                int_range("pain", x.pain, 0, 10)?;
                let any = x.gcs_eye.is_some()
                    || x.gcs_verbal.is_some()
                    || x.gcs_motor.is_some()
                    || x.pupils.is_some()
                    || x.skin.is_some()
                    || x.befast.is_some()
                    || x.pain.is_some();
                if !any {
                    return Err(bad("body", "records no finding"));
                }
                EventBody::Assessment(x)
            }
        };
        b.time("at_ms", body.at_ms())?;
        Ok(body)
    }
}
