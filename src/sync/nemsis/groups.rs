//! The NEMSIS export's repeated groups and derived values: vital-sign sets, medication and
//! disposition groups, cardiac arrest, acuity from triage, caregiver levels from roles.

use super::xml::{NO, NOT_APPLICABLE, NOT_RECORDED, Xml, dt};
use crate::model::record::{Assessment, Disposition, codes};
use crate::model::{CaseExport, Observation};
use codes::CardiacArrest;

/// Readings of a case grouped into vital-sign sets: the latest value of each vital in each
/// window of `window_ms`, stamped with the window's last reading time.
pub(super) fn vital_sets(
    readings: &[Observation],
    window_ms: i64,
) -> Vec<(i64, Vec<&Observation>)> {
    let mut sorted: Vec<&Observation> = readings.iter().collect();
    sorted.sort_by_key(|o| (o.effective_time_ms(), o.id));
    let Some(first) = sorted.first().map(|o| o.effective_time_ms()) else {
        return vec![];
    };
    let mut sets: Vec<(i64, Vec<&Observation>)> = vec![];
    for o in sorted {
        let w = (o.effective_time_ms() - first) / window_ms;
        match sets.last_mut() {
            Some((t, set)) if (*t - first) / window_ms == w => {
                *t = o.effective_time_ms();
                set.retain(|x| x.code != o.code);
                set.push(o);
            }
            _ => sets.push((o.effective_time_ms(), vec![o])),
        }
    }
    sets
}

/// NEMSIS's caregiver level of an account's role (eMedications.10, eProcedures.10) and member
/// level (eCrew.02).
pub(super) fn levels(role: &str) -> Option<(&'static str, &'static str)> {
    match role {
        "paramedic" => Some(("9905007", "9925007")),
        "emt" => Some(("9905005", "9925005")),
        _ => None,
    }
}

/// Acuity from the latest triage level (prefix `2813` initial, `4219` at release): ESI 1
/// critical, ESI 2-3 emergent, ESI 4-5 lower acuity.
pub(super) fn acuity(x: &CaseExport, prefix: &str) -> Option<String> {
    let esi = x.triage.as_ref()?.record.final_esi;
    let suffix = match esi {
        1 => "001",
        2 | 3 => "003",
        _ => "005",
    };
    Some(format!("{prefix}{suffix}"))
}

pub(super) fn arrest(w: &mut Xml, arrest: Option<CardiacArrest>) {
    w.open("eArrest");
    let nv = match arrest {
        Some(CardiacArrest::No) => NOT_APPLICABLE,
        _ => NOT_RECORDED,
    };
    w.opt("eArrest.01", arrest.map(|a| a.nemsis()), NOT_RECORDED);
    w.nvs(
        &[
            "eArrest.02",
            "eArrest.03",
            "eArrest.04",
            "eArrest.07",
            "eArrest.09",
            "eArrest.11",
            "eArrest.12",
            "eArrest.14",
            "eArrest.16",
            "eArrest.17",
            "eArrest.18",
            "eArrest.20",
            "eArrest.21",
            "eArrest.22",
        ],
        nv,
    );
    w.close("eArrest");
}

/// One eVitals.VitalGroup: the readings of a set, or an assessment's GCS, pain and stroke
/// screen; `None` time = no vitals at all (every element not recorded).
pub(super) fn vitals_group(
    w: &mut Xml,
    t: Option<i64>,
    set: &[&Observation],
    a: Option<&Assessment>,
) {
    let get = |code: &str| set.iter().find(|o| o.code == code).map(|o| o.value);
    let int = |v: Option<f64>| v.map(|v| v.round() as i64);
    w.open("eVitals.VitalGroup");
    w.opt("eVitals.01", t.map(dt), NOT_RECORDED);
    w.val("eVitals.02", NO);
    w.open("eVitals.CardiacRhythmGroup");
    w.nvs(&["eVitals.03", "eVitals.04", "eVitals.05"], NOT_RECORDED);
    w.close("eVitals.CardiacRhythmGroup");
    w.open("eVitals.BloodPressureGroup");
    w.opt("eVitals.06", int(get("sbp")), NOT_RECORDED);
    if let Some(d) = int(get("dbp")) {
        w.val("eVitals.07", d);
    }
    w.close("eVitals.BloodPressureGroup");
    w.open("eVitals.HeartRateGroup");
    w.opt("eVitals.10", int(get("heart_rate")), NOT_RECORDED);
    w.close("eVitals.HeartRateGroup");
    w.opt("eVitals.12", int(get("spo2")), NOT_RECORDED);
    w.opt("eVitals.14", int(get("resp_rate")), NOT_RECORDED);
    w.opt("eVitals.16", int(get("etco2")), NOT_RECORDED);
    w.opt("eVitals.18", int(get("glucose")), NOT_RECORDED);
    w.open("eVitals.GlasgowScoreGroup");
    let part = |code: &str| get(code).map(|v| v.round() as u32);
    let gcs = a
        .map(|a| (a.gcs_eye, a.gcs_verbal, a.gcs_motor))
        .or_else(|| Some((part("gcs_eye"), part("gcs_verbal"), part("gcs_motor"))));
    w.opt("eVitals.19", gcs.and_then(|g| g.0), NOT_RECORDED);
    w.opt("eVitals.20", gcs.and_then(|g| g.1), NOT_RECORDED);
    w.opt("eVitals.21", gcs.and_then(|g| g.2), NOT_RECORDED);
    let total = a.and_then(Assessment::gcs_total).or_else(|| match gcs {
        Some((Some(e), Some(v), Some(m))) => Some(e + v + m),
        _ => part("gcs_total"),
    });
    match total {
        Some(total) => {
            w.val("eVitals.22", "3322003");
            w.val("eVitals.23", total);
        }
        None => w.nv("eVitals.22", NOT_RECORDED),
    }
    w.close("eVitals.GlasgowScoreGroup");
    if let Some(temp) = get("temp") {
        w.open("eVitals.TemperatureGroup");
        w.val("eVitals.24", format!("{temp:.1}"));
        w.close("eVitals.TemperatureGroup");
    }
    let avpu = get("avpu").map(|v| match v.round() as i64 {
        0 | 1 => "3326001",
        2 => "3326003",
        3 => "3326005",
        _ => "3326007",
    });
    w.opt("eVitals.26", avpu, NOT_RECORDED);
    w.open("eVitals.PainScaleGroup");
    match a.and_then(|a| a.pain).or_else(|| part("pain")) {
        Some(p) => {
            w.val("eVitals.27", p);
            w.val("eVitals.28", "3328003");
        }
        None => w.nv("eVitals.27", NOT_RECORDED),
    }
    w.close("eVitals.PainScaleGroup");
    w.open("eVitals.StrokeScaleGroup");
    match a.and_then(|a| a.befast) {
        Some(b) => {
            w.val(
                "eVitals.29",
                if b.positive() { "3329005" } else { "3329001" },
            );
            w.val("eVitals.30", "3330029");
        }
        None => {
            w.nv("eVitals.29", NOT_RECORDED);
            w.nv("eVitals.30", NOT_RECORDED);
        }
    }
    w.close("eVitals.StrokeScaleGroup");
    w.nv("eVitals.31", NOT_RECORDED);
    w.close("eVitals.VitalGroup");
}

/// One eMedications.MedicationGroup.
pub(super) fn med_group(
    w: &mut Xml,
    (at, code, route): (i64, Option<&str>, Option<&str>),
    (dose, unit): (Option<f64>, Option<&str>),
    response: Option<&str>,
    (who, role): (&str, &str),
) {
    w.open("eMedications.MedicationGroup");
    w.val("eMedications.01", dt(at));
    w.val("eMedications.02", NO);
    w.opt("eMedications.03", code, NOT_RECORDED);
    w.opt("eMedications.04", route, NOT_RECORDED);
    w.open("eMedications.DosageGroup");
    w.opt(
        "eMedications.05",
        dose.map(|d| format!("{}", (d * 1000.0).round() / 1000.0)),
        NOT_RECORDED,
    );
    w.opt("eMedications.06", unit, NOT_RECORDED);
    w.close("eMedications.DosageGroup");
    w.opt("eMedications.07", response, NOT_RECORDED);
    w.nv("eMedications.08", NOT_RECORDED);
    w.val("eMedications.09", who);
    w.opt("eMedications.10", levels(role).map(|l| l.0), NOT_RECORDED);
    w.close("eMedications.MedicationGroup");
}

pub(super) fn disposition(w: &mut Xml, x: &CaseExport, d: &Disposition) {
    let transported = matches!(d.transport, Some(codes::TransportDisposition::ThisUnit));
    let tnv = if transported {
        NOT_RECORDED
    } else {
        NOT_APPLICABLE
    };
    w.open("eDisposition");
    w.open("eDisposition.DestinationGroup");
    if let Some(dest) = &d.destination {
        w.val(
            "eDisposition.01",
            dest.chars().take(100).collect::<String>(),
        );
    }
    w.nvs(
        &["eDisposition.05", "eDisposition.06", "eDisposition.07"],
        tnv,
    );
    w.close("eDisposition.DestinationGroup");
    w.open("eDisposition.IncidentDispositionGroup");
    let contact = d.patient_disposition.is_some() || x.patient.is_some();
    w.val(
        "eDisposition.27",
        if contact { "4227001" } else { "4227007" },
    );
    w.opt(
        "eDisposition.28",
        d.patient_disposition.map(|p| p.nemsis()),
        NOT_RECORDED,
    );
    let crew = match d.transport {
        Some(codes::TransportDisposition::ThisUnit) => Some("4229001"),
        Some(codes::TransportDisposition::OtherUnit) => Some("4229003"),
        Some(codes::TransportDisposition::RefusedTransport) => Some("4229013"),
        _ => None,
    };
    w.opt("eDisposition.29", crew, NOT_RECORDED);
    w.opt(
        "eDisposition.30",
        d.transport.map(|t| t.nemsis()),
        NOT_RECORDED,
    );
    w.close("eDisposition.IncidentDispositionGroup");
    w.opt("eDisposition.16", transported.then_some("4216005"), tnv);
    w.opt(
        "eDisposition.17",
        d.transport_mode.filter(|_| transported).map(|m| m.nemsis()),
        tnv,
    );
    w.nv("eDisposition.18", tnv);
    w.opt("eDisposition.19", acuity(x, "4219"), NOT_RECORDED);
    w.opt(
        "eDisposition.20",
        d.destination_reason
            .filter(|_| transported)
            .map(|r| r.nemsis()),
        tnv,
    );
    w.nvs(
        &["eDisposition.21", "eDisposition.22", "eDisposition.23"],
        tnv,
    );
    w.open("eDisposition.HospitalTeamActivationGroup");
    w.nv("eDisposition.24", tnv);
    w.nv("eDisposition.25", tnv);
    w.close("eDisposition.HospitalTeamActivationGroup");
    w.nv("eDisposition.32", NOT_RECORDED);
    w.close("eDisposition");
}
