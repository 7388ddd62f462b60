//! The hospital handoff: what a crew says at the door in about a minute, built from a
//! [`CaseExport`]. MIST (Mechanism, Injuries, Signs, Treatment) for trauma, SBAR (Situation,
//! Background, Assessment, Recommendation) for medical calls — chosen from the record and
//! switchable — plus times, the trend of the key vitals, interventions and medications with
//! their times, allergies, triage with its reasons and who handed over to whom. Values are
//! rounded to the precision the vocabulary records, with their units; times are UTC with the
//! minutes since the call began. Pure: no IO, no clock. [`pdf`] renders it as a document.

pub mod pdf;
mod text;

use serde::Serialize;

use crate::model::CaseExport;
use crate::model::record::{
    Assessment, Disposition, EventKind, History, Incident, MedicationGiven, Oxygen, Procedure,
    Section, Situation, Times, codes,
};

pub use text::{clock, elapsed, vital_text};

/// Which handoff structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Trauma: Mechanism, Injuries, Signs, Treatment.
    Mist,
    /// Medical: Situation, Background, Assessment, Recommendation.
    Sbar,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "mist" => Some(Format::Mist),
            "sbar" => Some(Format::Sbar),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Mist => "mist",
            Format::Sbar => "sbar",
        }
    }
}

/// One block of a structure (`M` Mechanism, …): a letter, a title and its lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Block {
    pub letter: &'static str,
    pub title: &'static str,
    pub lines: Vec<String>,
}

/// A time of the call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeLine {
    pub label: &'static str,
    pub at_ms: i64,
}

/// A timed intervention, medication or oxygen change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timed {
    pub at_ms: i64,
    /// `procedure`, `medication` or `oxygen`.
    pub kind: &'static str,
    pub text: String,
}

/// The latest value of a vital, formatted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VitalLine {
    pub code: String,
    pub label: &'static str,
    /// Value with its unit at the vocabulary's precision (`118/76 mmHg`, `37.9 °C`).
    pub text: String,
    pub at_ms: i64,
}

/// One key vital over the call, for the trend chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub code: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    /// `(ms, value)` in time order.
    pub points: Vec<(i64, f64)>,
}

/// Triage as the handoff shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriageLine {
    pub esi: u8,
    pub news2: Option<u8>,
    pub decider: String,
    pub reasons: Vec<String>,
    pub at_ms: i64,
    /// Said whenever the model set the level: it is trained on synthetic data.
    pub model_note: Option<String>,
}

/// Who handed over to whom, and when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transfer {
    pub from: Vec<String>,
    pub to: Option<String>,
    pub to_role: Option<String>,
    pub at_ms: Option<i64>,
}

/// The handoff of one case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Handoff {
    pub case_id: String,
    pub status: String,
    /// The structure the record suggests (trauma → MIST, else SBAR).
    pub suggested: Format,
    /// One line that names the patient for the receiving team (`M, 54 y`, `F, ~30 y (est.)`).
    pub patient: String,
    pub chief_complaint: Option<String>,
    pub started_at_ms: i64,
    pub times: Vec<TimeLine>,
    pub latest: Vec<VitalLine>,
    pub trend: Vec<Series>,
    pub interventions: Vec<Timed>,
    /// `NKDA`, the list, or `not recorded`.
    pub allergies: String,
    pub triage: Option<TriageLine>,
    pub destination: Option<String>,
    pub eta_ms: Option<i64>,
    pub alerts: Vec<&'static str>,
    pub transfer: Transfer,
    pub mist: Vec<Block>,
    pub sbar: Vec<Block>,
}

impl Handoff {
    pub fn blocks(&self, f: Format) -> &[Block] {
        match f {
            Format::Mist => &self.mist,
            Format::Sbar => &self.sbar,
        }
    }
}

/// Vitals drawn in the trend chart, in legend order.
pub const TREND: [&str; 5] = ["heart_rate", "sbp", "spo2", "resp_rate", "etco2"];

/// Builds the handoff of `x` as of `now_ms` (for the patient's age).
pub fn build(x: &CaseExport, now_ms: i64) -> Handoff {
    let r = &x.record;
    let times: Times = r.section(Section::Times).unwrap_or_default();
    let situation: Situation = r.section(Section::Situation).unwrap_or_default();
    let history: History = r.section(Section::History).unwrap_or_default();
    let disposition: Disposition = r.section(Section::Disposition).unwrap_or_default();
    let incident: Incident = r.section(Section::Incident).unwrap_or_default();
    let started = times
        .call_received_ms
        .unwrap_or(x.created_at_ms)
        .min(x.created_at_ms);
    let at = |ms: i64| format!("{} ({})", clock(ms), elapsed(started, ms));

    let impressions: Vec<String> = situation
        .primary_impression
        .iter()
        .chain(situation.secondary_impressions.iter().flatten())
        .map(|i| {
            let label = codes::impression(&i.code)
                .map(|c| c.label)
                .unwrap_or("impression");
            match &i.note {
                Some(n) => format!("{label} ({}) — {n}", i.code),
                None => format!("{label} ({})", i.code),
            }
        })
        .collect();
    let injury_impression = situation
        .primary_impression
        .iter()
        .chain(situation.secondary_impressions.iter().flatten())
        .any(|i| codes::impression(&i.code).is_some_and(|c| c.injury));
    let trauma = situation.possible_injury == Some(true)
        || injury_impression
        || x.mechanism.is_some()
        || matches!(
            incident.dispatch_reason,
            Some(
                codes::DispatchReason::TrafficIncident
                    | codes::DispatchReason::TraumaticInjury
                    | codes::DispatchReason::Fall
            )
        );

    let latest = text::latest_vitals(&x.readings);
    let trend = TREND
        .iter()
        .filter_map(|code| {
            let v = crate::vocab::lookup(code)?;
            let mut points: Vec<(i64, f64)> = x
                .readings
                .iter()
                .filter(|o| o.code == *code)
                .map(|o| (o.effective_time_ms(), o.value))
                .collect();
            points.sort_by_key(|p| p.0);
            (!points.is_empty()).then(|| Series {
                code: v.name,
                label: text::vital_label(v.name),
                unit: text::unit(v.name),
                points,
            })
        })
        .collect();

    let name_of = |id: &str| -> String {
        x.people
            .iter()
            .find(|(a, _, _)| a == id)
            .map(|(_, n, _)| n.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let mut interventions = vec![];
    for (_, p) in r.events::<Procedure>(EventKind::Procedure) {
        let mut t = p.procedure.label().to_string();
        if let Some(s) = &p.size {
            t.push_str(&format!(" {s}"));
        }
        if let Some(s) = &p.site {
            t.push_str(&format!(", {s}"));
        }
        t.push_str(&format!(
            ", {} attempt{}, {}",
            p.attempts,
            if p.attempts == 1 { "" } else { "s" },
            if p.successful {
                "successful"
            } else {
                "unsuccessful"
            }
        ));
        if let Some(by) = &p.performer {
            t.push_str(&format!(" — {}", name_of(by)));
        }
        interventions.push(Timed {
            at_ms: p.at_ms,
            kind: "procedure",
            text: t,
        });
    }
    for (_, m) in r.events::<MedicationGiven>(EventKind::Medication) {
        let mut t = m.medication.label().to_string();
        if let (Some(d), Some(u)) = (m.dose, m.dose_unit) {
            t.push_str(&format!(" {} {}", text::number(d), u.label()));
        }
        if let Some(route) = m.route {
            t.push_str(&format!(" {}", route.label()));
        }
        if let Some(resp) = m.response {
            t.push_str(&format!(", response: {}", resp.label().to_lowercase()));
        }
        if let Some(by) = &m.performer {
            t.push_str(&format!(" — {}", name_of(by)));
        }
        interventions.push(Timed {
            at_ms: m.at_ms,
            kind: "medication",
            text: t,
        });
    }
    for (_, o) in r.events::<Oxygen>(EventKind::Oxygen) {
        let mut t = format!("Oxygen: {}", o.action.label().to_lowercase());
        if let Some(f) = o.flow_l_min {
            t.push_str(&format!(" {} L/min", text::number(f)));
        }
        if let Some(d) = o.device {
            t.push_str(&format!(" via {}", d.label()));
        }
        interventions.push(Timed {
            at_ms: o.at_ms,
            kind: "oxygen",
            text: t,
        });
    }
    interventions.sort_by_key(|t| t.at_ms);

    let allergies = match (&history.allergies, history.no_known_allergies) {
        (Some(a), _) if !a.is_empty() => a.join(", "),
        (_, Some(true)) => "NKDA (no known drug allergies)".to_string(),
        _ => "not recorded".to_string(),
    };
    let triage = x.triage.as_ref().map(|t| TriageLine {
        esi: t.record.final_esi,
        news2: t.record.news2,
        decider: t.record.decider.as_str().to_string(),
        reasons: t.record.reasons.clone(),
        at_ms: t.created_at_ms,
        model_note: (t.record.decider == crate::model::Decider::Model).then(|| {
            "level set by the HEMA3N-Core model (trained on synthetic data; never below the rules)"
                .to_string()
        }),
    });
    let crew: Vec<String> = incident
        .crew
        .iter()
        .flatten()
        .map(|m| format!("{} ({})", name_of(&m.account), m.role.label()))
        .collect();
    let transfer = Transfer {
        from: crew,
        to: disposition.transfer_to.clone(),
        to_role: disposition.transfer_to_role.clone(),
        at_ms: times.transfer_of_care_ms,
    };
    let patient = text::patient_line(x, now_ms);
    let assessments: Vec<String> = r
        .events::<Assessment>(EventKind::Assessment)
        .into_iter()
        .map(|(_, a)| format!("{}: {}", at(a.at_ms), text::assessment(&a)))
        .collect();
    // Latest vitals, those taken at the same minute on one line.
    let mut signs: Vec<(String, Vec<String>)> = vec![];
    for v in &latest {
        let at = clock(v.at_ms);
        let item = format!("{} {}", v.label, v.text);
        match signs.iter_mut().find(|(t, _)| *t == at) {
            Some((_, items)) => items.push(item),
            None => signs.push((at, vec![item])),
        }
    }
    let signs: Vec<String> = signs
        .into_iter()
        .map(|(at, items)| format!("{at}: {}", items.join(", ")))
        .collect();
    let triage_line = triage.as_ref().map(text::triage_text);
    let treatment: Vec<String> = interventions
        .iter()
        .map(|t| format!("{} {}", at(t.at_ms), t.text))
        .collect();
    let alerts: Vec<&'static str> = disposition
        .alerts
        .iter()
        .flatten()
        .map(|a| a.label())
        .collect();
    let onset = situation
        .symptom_onset_ms
        .map(|t| format!("onset {}", at(t)))
        .into_iter()
        .chain(
            situation
                .last_known_well_ms
                .map(|t| format!("last known well {}", at(t))),
        );

    let or_none = |v: Vec<String>, none: &str| {
        if v.is_empty() {
            vec![none.to_string()]
        } else {
            v
        }
    };
    let mist = vec![
        Block {
            letter: "M",
            title: "Mechanism",
            lines: or_none(
                x.mechanism
                    .iter()
                    .cloned()
                    .chain(
                        x.chief_complaint
                            .iter()
                            .filter(|_| x.mechanism.is_none())
                            .map(|c| format!("reported: {c}")),
                    )
                    .chain(
                        incident
                            .dispatch_reason
                            .map(|d| format!("dispatched as: {}", d.label())),
                    )
                    .chain(onset.clone())
                    .collect(),
                "mechanism not recorded",
            ),
        },
        Block {
            letter: "I",
            title: "Injuries",
            lines: or_none(impressions.clone(), "no injuries recorded"),
        },
        Block {
            letter: "S",
            title: "Signs",
            lines: or_none(
                signs
                    .iter()
                    .cloned()
                    .chain(assessments.iter().cloned())
                    .chain(triage_line.clone())
                    .collect(),
                "no vital signs recorded",
            ),
        },
        Block {
            letter: "T",
            title: "Treatment",
            lines: or_none(treatment.clone(), "no treatment recorded"),
        },
    ];
    let mut background: Vec<String> = vec![format!("Allergies: {allergies}")];
    if let Some(h) = history.medical_history.as_ref().filter(|h| !h.is_empty()) {
        background.push(format!("History: {}", h.join(", ")));
    }
    if let Some(m) = history
        .current_medications
        .as_ref()
        .filter(|m| !m.is_empty())
    {
        background.push(format!("Medications: {}", m.join(", ")));
    }
    if let Some(a) = history.advance_directive {
        background.push(format!("Advance directive: {}", a.label()));
    }
    background.extend(onset);
    let mut recommendation = vec![];
    if !alerts.is_empty() {
        recommendation.push(format!("Time-critical: {}", alerts.join(", ")));
    }
    if let Some(d) = &disposition.destination {
        recommendation.push(format!(
            "Destination: {d}{}",
            disposition
                .eta_ms
                .map(|t| format!(", ETA {}", clock(t)))
                .unwrap_or_default()
        ));
    }
    if let Some(t) = triage.as_ref().filter(|t| t.esi <= 2) {
        recommendation.push(format!("Needs immediate attention (ESI {})", t.esi));
    }
    let situation_lines: Vec<String> = std::iter::once(patient.clone())
        .chain(x.chief_complaint.iter().map(|c| format!("Complaint: {c}")))
        .chain(
            impressions
                .iter()
                .take(1)
                .map(|i| format!("Impression: {i}")),
        )
        .chain(triage_line.clone())
        .collect();
    let sbar = vec![
        Block {
            letter: "S",
            title: "Situation",
            lines: situation_lines,
        },
        Block {
            letter: "B",
            title: "Background",
            lines: background,
        },
        Block {
            letter: "A",
            title: "Assessment",
            lines: or_none(
                signs
                    .into_iter()
                    .chain(assessments)
                    .chain(treatment)
                    .collect(),
                "no assessment recorded",
            ),
        },
        Block {
            letter: "R",
            title: "Recommendation",
            lines: or_none(recommendation, "no request recorded"),
        },
    ];

    let labels = [
        ("call_received_ms", "Call received"),
        ("dispatched_ms", "Dispatched"),
        ("en_route_ms", "En route"),
        ("on_scene_ms", "On scene"),
        ("at_patient_ms", "At patient"),
        ("left_scene_ms", "Left scene"),
        ("at_destination_ms", "At destination"),
        ("transfer_of_care_ms", "Transfer of care"),
        ("in_service_ms", "In service"),
    ];
    let times = times
        .ordered()
        .into_iter()
        .filter_map(|(f, t)| {
            let label = labels.iter().find(|(n, _)| *n == f)?.1;
            Some(TimeLine { label, at_ms: t? })
        })
        .collect();

    Handoff {
        case_id: x.case_id.clone(),
        status: x.status.clone(),
        suggested: if trauma { Format::Mist } else { Format::Sbar },
        patient,
        chief_complaint: x.chief_complaint.clone(),
        started_at_ms: started,
        times,
        latest,
        trend,
        interventions,
        allergies,
        triage,
        destination: disposition.destination,
        eta_ms: disposition.eta_ms,
        alerts,
        transfer,
        mist,
        sbar,
    }
}
