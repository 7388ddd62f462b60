//! How the handoff words and rounds things: vital values at the vocabulary's precision with the
//! units a clinician reads, times as UTC clock times and minutes since the call began, the
//! patient line, assessments and triage. Pure.

use super::{TriageLine, VitalLine};
use crate::model::record::Assessment;
use crate::model::{CaseExport, Observation, Sex};

/// `14:02Z` (UTC, to the minute).
pub fn clock(ms: i64) -> String {
    let s = crate::model::iso8601_ms(ms);
    format!("{}Z", &s[11..16])
}

/// Minutes since the call began: `+12 min` (`−3 min` before it).
pub fn elapsed(started_ms: i64, ms: i64) -> String {
    let m = (ms - started_ms).div_euclid(60_000);
    if m < 0 {
        format!("\u{2212}{} min", -m)
    } else {
        format!("+{m} min")
    }
}

/// A number without a spurious fraction (`4`, `0.5`, `12.5`).
pub fn number(v: f64) -> String {
    let r = (v * 100.0).round() / 100.0;
    format!("{r}")
}

/// What a clinician calls the vital.
pub fn vital_label(code: &str) -> &'static str {
    match code {
        "heart_rate" => "HR",
        "resp_rate" => "RR",
        "spo2" => "SpO2",
        "sbp" => "SBP",
        "dbp" => "DBP",
        "bp" => "BP",
        "temp" => "Temp",
        "etco2" => "EtCO2",
        "glucose" => "Glucose",
        "gcs_total" => "GCS",
        "gcs_eye" => "GCS E",
        "gcs_verbal" => "GCS V",
        "gcs_motor" => "GCS M",
        "avpu" => "AVPU",
        "pain" => "Pain",
        _ => "Vital",
    }
}

/// The unit shown next to a value.
pub fn unit(code: &str) -> &'static str {
    match code {
        "heart_rate" => "/min",
        "resp_rate" => "/min",
        "spo2" => "%",
        "sbp" | "dbp" | "etco2" => "mmHg",
        "temp" => "\u{b0}C",
        "glucose" => "mg/dL",
        "pain" => "/10",
        "gcs_total" => "/15",
        _ => "",
    }
}

/// A value of `code` at the precision it is recorded with: whole numbers for rates, pressures,
/// saturation, glucose and scores; one decimal for temperature.
pub fn vital_text(code: &str, v: f64) -> String {
    if code == "avpu" {
        return crate::vocab::avpu_letter(v).unwrap_or("?").to_string();
    }
    let digits = if code == "temp" { 1 } else { 0 };
    let u = unit(code);
    let sep = if u.starts_with('/') || u == "%" || u.is_empty() {
        ""
    } else {
        " "
    };
    format!("{v:.digits$}{sep}{u}")
}

/// The latest reading of each vital (by effective time), blood pressure as one line, in a fixed
/// clinical order.
pub(super) fn latest_vitals(readings: &[Observation]) -> Vec<VitalLine> {
    let mut latest: Vec<&Observation> = vec![];
    for o in readings {
        match latest.iter_mut().find(|l| l.code == o.code) {
            Some(l) if (o.effective_time_ms(), o.id) > (l.effective_time_ms(), l.id) => *l = o,
            Some(_) => {}
            None => latest.push(o),
        }
    }
    let get = |c: &str| latest.iter().find(|o| o.code == c).copied();
    let mut out = vec![];
    for code in [
        "heart_rate",
        "bp",
        "resp_rate",
        "spo2",
        "etco2",
        "temp",
        "glucose",
        "gcs_total",
        "avpu",
        "pain",
    ] {
        if code == "bp" {
            match (get("sbp"), get("dbp")) {
                (Some(s), Some(d)) => out.push(VitalLine {
                    code: "bp".into(),
                    label: "BP",
                    text: format!("{:.0}/{:.0} mmHg", s.value, d.value),
                    at_ms: s.effective_time_ms().max(d.effective_time_ms()),
                }),
                (Some(s), None) => out.push(line(s)),
                _ => {}
            }
            continue;
        }
        if let Some(o) = get(code) {
            out.push(line(o));
        }
    }
    out
}

fn line(o: &Observation) -> VitalLine {
    VitalLine {
        code: o.code.clone(),
        label: vital_label(&o.code),
        text: vital_text(&o.code, o.value),
        at_ms: o.effective_time_ms(),
    }
}

/// `M, 54 y`, `F, ~30 y (estimated)`, with the name for the receiving team when known.
pub(super) fn patient_line(x: &CaseExport, now_ms: i64) -> String {
    let Some(p) = &x.patient else {
        return "Unknown patient".to_string();
    };
    let sex = match p.sex {
        Some(Sex::Female) => "F",
        Some(Sex::Male) => "M",
        Some(Sex::Other) => "X",
        _ => "sex unknown",
    };
    let age = p
        .date_of_birth
        .as_deref()
        .and_then(|d| crate::model::age_years(d, now_ms))
        .map(|a| format!("{} y", a.floor()))
        .or_else(|| p.estimated_age_years.map(|a| format!("~{a} y (estimated)")))
        .unwrap_or_else(|| "age unknown".to_string());
    let name: Vec<&str> = [p.first_name.as_deref(), p.last_name.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    if name.is_empty() {
        format!("{sex}, {age}")
    } else {
        format!("{} — {sex}, {age}", name.join(" "))
    }
}

/// `GCS 14 (E4 V4 M6), pupils PERRL, skin pale, BE-FAST: face, arm, pain 6/10`.
pub(super) fn assessment(a: &Assessment) -> String {
    let mut parts = vec![];
    if let (Some(e), Some(v), Some(m)) = (a.gcs_eye, a.gcs_verbal, a.gcs_motor) {
        parts.push(format!("GCS {} (E{e} V{v} M{m})", e + v + m));
    }
    if let Some(p) = a.pupils {
        parts.push(format!("pupils {}", p.label()));
    }
    if let Some(s) = a.skin {
        parts.push(format!("skin {}", s.label().to_lowercase()));
    }
    if let Some(b) = a.befast {
        let pos: Vec<&str> = [
            (b.balance, "balance"),
            (b.eyes, "eyes"),
            (b.face, "face"),
            (b.arm, "arm"),
            (b.speech, "speech"),
        ]
        .into_iter()
        .filter(|(x, _)| *x)
        .map(|(_, n)| n)
        .collect();
        parts.push(if pos.is_empty() {
            "BE-FAST negative".to_string()
        } else {
            format!("BE-FAST positive: {}", pos.join(", "))
        });
    }
    if let Some(p) = a.pain {
        parts.push(format!("pain {p}/10"));
    }
    if parts.is_empty() {
        "assessment recorded".to_string()
    } else {
        parts.join(", ")
    }
}

/// `Triage ESI 2, NEWS2 7` (the reasons are listed with the triage itself).
pub(super) fn triage_text(t: &TriageLine) -> String {
    let mut s = format!("Triage ESI {}", t.esi);
    if let Some(n) = t.news2 {
        s.push_str(&format!(", NEWS2 {n}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_their_units_and_precision() {
        assert_eq!(vital_text("heart_rate", 112.4), "112/min");
        assert_eq!(vital_text("temp", 37.94), "37.9 \u{b0}C");
        assert_eq!(vital_text("spo2", 93.0), "93%");
        assert_eq!(vital_text("glucose", 54.0), "54 mg/dL");
        assert_eq!(vital_text("avpu", 2.0), "V");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(4.0), "4");
    }

    #[test]
    fn times_are_utc_and_relative() {
        let t0 = 1_800_000_000_000; // 2027-01-15T08:00:00Z
        assert_eq!(clock(t0), "08:00Z");
        assert_eq!(elapsed(t0, t0 + 12 * 60_000 + 59_000), "+12 min");
        assert_eq!(elapsed(t0, t0 - 60_000), "\u{2212}1 min");
    }
}
