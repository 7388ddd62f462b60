//! The sentences of the rules' findings. The rules decide from numbers alone and record what
//! they found with the values it quotes ([`Finding`]); the sentence is written when something
//! reads it (the stored triage record, the API, the handoff), so the triage hot path formats
//! nothing (#22: formatting every reason was ~9 % of a model run).

use super::news2::{self, News2, Risk};

/// What one rule found, with the measured values its sentence quotes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Finding {
    Unresponsive,
    Coma {
        gcs: f64,
    },
    Apnoea {
        rr: f64,
    },
    SevereRespiratoryDistress {
        rr: f64,
    },
    SevereHypoxia {
        spo2: f64,
    },
    Shock {
        sbp: f64,
    },
    Hypotension {
        sbp: f64,
    },
    ExtremeHeartRate {
        hr: f64,
    },
    /// `acvpu`: the ACVPU index 1..=3.
    AlteredMentation {
        acvpu: u8,
    },
    ReducedGcs {
        gcs: f64,
    },
    SeverePain {
        pain: f64,
    },
    Hypoglycaemia {
        glucose: f64,
    },
    Hyperglycaemia {
        glucose: f64,
    },
    Hyperpyrexia {
        temp: f64,
    },
    InfantFever {
        temp: f64,
    },
    /// `band`: the age band whose threshold `limit` is, e.g. "over 8 years".
    DangerZoneHeartRate {
        hr: f64,
        limit: f64,
        band: &'static str,
    },
    DangerZoneRespRate {
        rr: f64,
        limit: f64,
        band: &'static str,
    },
    DangerZoneSpo2 {
        spo2: f64,
    },
    /// A NEWS2 band that sets a level (the score itself — total, band, subscores, gaps — is the
    /// [`News2`] the sentence is written from).
    News2,
}

const ACVPU: [&str; 5] = [
    "alert",
    "new confusion",
    "responds to voice",
    "responds to pain",
    "unresponsive",
];

impl Finding {
    /// The sentence for the crew. `news2` is the score a [`Finding::News2`] came from (the
    /// rules' own, [`super::RulesResult::news2`]).
    pub fn sentence(&self, news2: Option<&News2>) -> String {
        match *self {
            Finding::Unresponsive => "unresponsive (AVPU U)".into(),
            Finding::Coma { gcs } => format!("GCS {gcs} ≤ 8: airway at risk"),
            Finding::Apnoea { rr } => {
                format!("respiratory rate {rr}/min: apnoea or agonal breathing")
            }
            Finding::SevereRespiratoryDistress { rr } => {
                format!("respiratory rate {rr}/min: severe respiratory distress")
            }
            Finding::SevereHypoxia { spo2 } => format!("SpO2 {spo2}% < 85%: severe hypoxia"),
            Finding::Shock { sbp } => format!("systolic BP {sbp} mmHg: profound hypotension"),
            Finding::Hypotension { sbp } => {
                format!("systolic BP {sbp} mmHg: hypotension for age")
            }
            Finding::ExtremeHeartRate { hr } => {
                format!("heart rate {hr}/min: extreme brady- or tachycardia")
            }
            Finding::AlteredMentation { acvpu } => format!(
                "ACVPU {}: altered mental status",
                ACVPU.get(usize::from(acvpu)).unwrap_or(&"altered")
            ),
            Finding::ReducedGcs { gcs } => format!("GCS {gcs}: altered mental status"),
            Finding::SeverePain { pain } => format!("pain {pain}/10: severe pain or distress"),
            Finding::Hypoglycaemia { glucose } => {
                format!("glucose {glucose} mg/dL < 54: clinically significant hypoglycaemia")
            }
            Finding::Hyperglycaemia { glucose } => {
                format!("glucose {glucose} mg/dL ≥ 600: hyperglycaemic crisis")
            }
            Finding::Hyperpyrexia { temp } => format!("temperature {temp} °C ≥ 40"),
            Finding::InfantFever { temp } => {
                format!("temperature {temp} °C in an infant under 3 months")
            }
            Finding::DangerZoneHeartRate { hr, limit, band } => {
                format!("heart rate {hr}/min > {limit} (danger zone, {band})")
            }
            Finding::DangerZoneRespRate { rr, limit, band } => {
                format!("respiratory rate {rr}/min > {limit} (danger zone, {band})")
            }
            Finding::DangerZoneSpo2 { spo2 } => format!("SpO2 {spo2}% < 92% (danger zone)"),
            Finding::News2 => match news2 {
                Some(n) => news2_sentence(n),
                None => "NEWS2 (score not available)".into(),
            },
        }
    }
}

/// "NEWS2 10 (high risk) — RR 26 +3, … (partial: … not measured)".
fn news2_sentence(n: &News2) -> String {
    let partial = if n.missing.is_empty() {
        String::new()
    } else {
        let m: Vec<&str> = n
            .missing
            .iter()
            .map(|p| news2::parameter_label(p))
            .collect();
        format!(" (partial: {} not measured)", m.join(", "))
    };
    // What scored, so a reader sees e.g. "on oxygen +2" without recomputing.
    let parts: Vec<String> = n
        .subscores
        .iter()
        .filter(|s| s.score > 0)
        .map(|s| match s.parameter {
            "air_or_oxygen" => format!("on oxygen +{}", s.score),
            p => format!(
                "{} {} +{}",
                news2::parameter_label(p),
                news2::display_value(p, s.value),
                s.score
            ),
        })
        .collect();
    let partial = if parts.is_empty() {
        partial
    } else {
        format!(" — {}{partial}", parts.join(", "))
    };
    match n.risk {
        Risk::High | Risk::Medium | Risk::Low => {
            format!("NEWS2 {} ({} risk){partial}", n.total, n.risk.as_str())
        }
        Risk::LowMedium => {
            let p = n
                .subscores
                .iter()
                .find(|s| s.score == 3)
                .map(|s| s.parameter)
                .unwrap_or("a parameter");
            format!("NEWS2 {}: {p} scores 3 (urgent response){partial}", n.total)
        }
    }
}
