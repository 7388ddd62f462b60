//! The triage compute path: features → rules → inference → post-processing → final level.
//! Pure except for the model call; the model thread and the benchmarks call [`compute`].

use super::features::{TEXT_BUCKETS, text_into, vitals_features};
use super::rules::{RulesInput, RulesResult, Vitals, evaluate};
use super::runtime::{ModelOutput, ModelRuntime};
use super::{Decider, combine};
use crate::model::Sex;

/// Specialty labels, in the model's output order.
pub const SPECIALTIES: [&str; 9] = [
    "cardiology",
    "neurology",
    "trauma_surgery",
    "general_surgery",
    "pulmonology",
    "infectious_disease",
    "endocrinology",
    "psychiatry",
    "pediatrics",
];

/// Everything a triage needs about a case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TriageInput {
    pub vitals: Vitals,
    pub age_years: Option<f64>,
    pub sex: Option<Sex>,
    pub on_oxygen: bool,
    pub spo2_scale2: bool,
    pub chief_complaint: Option<String>,
}

/// The model's proposal after post-processing.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelProposal {
    pub esi: u8,
    pub esi_probs: [f32; 5],
    pub specialty: &'static str,
    pub confidence: f32,
}

/// A complete triage result.
#[derive(Debug, Clone, PartialEq)]
pub struct TriageOutcome {
    pub final_esi: u8,
    pub decider: Decider,
    pub rules: RulesResult,
    pub model: Option<ModelProposal>,
    /// Why the model did not propose a level, when it did not.
    pub abstained: Option<String>,
    pub model_id: Option<std::sync::Arc<str>>,
    pub model_sha256: Option<std::sync::Arc<str>>,
}

const CORE: [(&str, f64, f64); 4] = [
    ("heart_rate", 0.0, 350.0),
    ("resp_rate", 0.0, 100.0),
    ("spo2", 0.0, 100.0),
    ("sbp", 0.0, 400.0),
];

/// Why the model must abstain on this input, if it must.
pub fn abstain_reason(i: &TriageInput, min_core: usize) -> Option<String> {
    let v = &i.vitals;
    let core = [v.heart_rate, v.resp_rate, v.spo2, v.sbp];
    let present = core.iter().filter(|x| x.is_some()).count();
    if present < min_core {
        return Some(format!(
            "only {present} of heart rate, respiratory rate, SpO2, systolic BP measured (need {min_core})"
        ));
    }
    for (x, (name, lo, hi)) in core.iter().zip(CORE) {
        if let Some(x) = x.filter(|x| !x.is_finite() || *x < lo || *x > hi) {
            return Some(format!("{name} {x} is implausible"));
        }
    }
    if i.age_years.is_some_and(|a| !(0.0..=120.0).contains(&a)) {
        return Some("age is implausible".into());
    }
    None
}

fn softmax5(z: &[f32; 5]) -> [f32; 5] {
    let m = z.iter().cloned().fold(f32::MIN, f32::max);
    let mut e = z.map(|x| (x - m).exp());
    let s: f32 = e.iter().sum();
    for x in &mut e {
        *x /= s;
    }
    e
}

fn argmax(z: &[f32]) -> usize {
    z.iter()
        .enumerate()
        .fold(0, |best, (i, x)| if *x > z[best] { i } else { best })
}

/// Post-processing of raw model outputs.
pub fn proposal(o: &ModelOutput) -> ModelProposal {
    ModelProposal {
        esi: argmax(&o.esi_logits) as u8 + 1,
        esi_probs: softmax5(&o.esi_logits),
        specialty: SPECIALTIES[argmax(&o.specialty_logits)],
        confidence: o.confidence,
    }
}

/// Runs the whole compute path. `model` is `None` in rules-only mode.
pub fn compute(
    i: &TriageInput,
    model: Option<&mut ModelRuntime>,
    min_core: usize,
    text: &mut [f32; TEXT_BUCKETS],
) -> TriageOutcome {
    let rules = evaluate(&RulesInput {
        vitals: i.vitals,
        age_years: i.age_years,
        on_oxygen: i.on_oxygen,
        spo2_scale2: i.spo2_scale2,
    });
    let (mut prop, mut abstained, mut model_id, mut model_sha256) = (None, None, None, None);
    match model {
        None => abstained = Some("no model loaded (rules-only mode)".to_string()),
        Some(rt) => {
            model_id = Some(rt.info.model_id.clone());
            model_sha256 = Some(rt.info.sha256.clone());
            match abstain_reason(i, min_core) {
                Some(r) => abstained = Some(r),
                None => {
                    let xv = vitals_features(
                        &i.vitals,
                        i.age_years,
                        i.sex,
                        i.on_oxygen,
                        i.chief_complaint.as_deref(),
                    );
                    text_into(i.chief_complaint.as_deref(), text);
                    match rt.infer(&xv, text) {
                        Ok(o) => prop = Some(proposal(&o)),
                        Err(e) => abstained = Some(format!("model error: {e}")),
                    }
                }
            }
        }
    }
    let (final_esi, decider) = combine(rules.ceiling, prop.as_ref().map(|p| p.esi));
    TriageOutcome {
        final_esi,
        decider,
        rules,
        model: prop,
        abstained,
        model_id,
        model_sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstains_on_missing_or_implausible_core_vitals() {
        let mut i = TriageInput::default();
        assert!(abstain_reason(&i, 3).unwrap().contains("only 0"));
        i.vitals = Vitals {
            heart_rate: Some(80.0),
            resp_rate: Some(16.0),
            spo2: Some(97.0),
            ..Default::default()
        };
        assert_eq!(abstain_reason(&i, 3), None);
        i.vitals.heart_rate = Some(900.0);
        assert!(abstain_reason(&i, 3).unwrap().contains("implausible"));
    }

    #[test]
    fn rules_only_mode_still_decides_with_reasons() {
        let i = TriageInput {
            vitals: Vitals {
                spo2: Some(82.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let o = compute(&i, None, 3, &mut [0.0; TEXT_BUCKETS]);
        assert_eq!((o.final_esi, o.decider), (1, Decider::RulesOnly));
        assert!(o.abstained.unwrap().contains("rules-only"));
        assert!(!o.rules.reasons.is_empty());
    }

    #[test]
    fn post_processing_picks_argmax_and_normalises() {
        let p = proposal(&ModelOutput {
            esi_logits: [0.0, 3.0, 1.0, 0.0, -1.0],
            specialty_logits: [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            confidence: 0.7,
        });
        assert_eq!((p.esi, p.specialty), (2, "trauma_surgery"));
        assert!((p.esi_probs.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
