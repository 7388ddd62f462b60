//! Triage: the rules engine (NEWS2 + ESI decision points), which is the safety floor, and the
//! combination with the HEMA3N-Core model's proposal.
//!
//! Invariant: the final ESI level is never less acute than the rules' ceiling
//! (`final <= ceiling`, 1 being the most acute). [`combine`] is the only place a final level is
//! made, and a property test checks it over 10^6 random inputs.

pub mod engine;
pub mod error;
pub mod features;
pub mod installed;
pub mod news2;
pub mod package;
pub mod reasons;
pub mod rules;
pub mod runtime;
pub mod service;
#[cfg(feature = "tch-backend")]
pub mod torch;

pub use reasons::Finding;
pub use rules::{Reason, RulesInput, RulesResult, Vitals, evaluate};

/// Level used when the model abstains (missing or implausible inputs, no runtime) and the
/// rules found nothing more acute: "needs a full evaluation", never a low-acuity guess.
pub const RULES_ONLY_DEFAULT_ESI: u8 = 3;

pub use crate::model::Decider;

/// The final ESI level from the rules' ceiling and the model's proposal (if any).
pub fn combine(ceiling: u8, model: Option<u8>) -> (u8, Decider) {
    debug_assert!((1..=5).contains(&ceiling));
    match model {
        Some(m) if m <= ceiling => (m.max(1), Decider::Model),
        Some(_) => (ceiling, Decider::RulesOverride),
        None => (ceiling.min(RULES_ONLY_DEFAULT_ESI), Decider::RulesOnly),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::simulate::Rng;

    fn maybe(rng: &mut Rng, lo: f64, hi: f64) -> Option<f64> {
        (rng.unit() > 0.1).then(|| (lo + (hi - lo) * rng.unit()).round())
    }

    fn random_input(rng: &mut Rng) -> RulesInput {
        RulesInput {
            vitals: Vitals {
                heart_rate: maybe(rng, 0.0, 350.0),
                resp_rate: maybe(rng, 0.0, 100.0),
                spo2: maybe(rng, 0.0, 100.0),
                sbp: maybe(rng, 0.0, 400.0),
                dbp: maybe(rng, 0.0, 400.0),
                temp: maybe(rng, 20.0, 46.0).map(|t| t + rng.unit().round() / 10.0),
                etco2: maybe(rng, 0.0, 150.0),
                glucose: maybe(rng, 0.0, 2000.0),
                gcs_total: maybe(rng, 3.0, 15.0),
                avpu: (rng.unit() > 0.1).then(|| (rng.next_u64() % 5) as u8),
                pain: maybe(rng, 0.0, 10.0),
            },
            age_years: (rng.unit() > 0.2).then(|| rng.unit() * 100.0),
            on_oxygen: rng.unit() < 0.3,
            spo2_scale2: rng.unit() < 0.1,
        }
    }

    /// The safety floor: over 10^6 random inputs and model proposals, the final level is never
    /// less acute than the rules' ceiling, nor than any single reason.
    #[test]
    fn final_esi_is_never_less_acute_than_the_rules() {
        let mut rng = Rng::new(0xE51);
        let n = std::env::var("HEMA3N_PROPERTY_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000u64);
        let mut overrides = 0u64;
        for _ in 0..n {
            let input = random_input(&mut rng);
            let r = evaluate(&input);
            let model = (rng.unit() > 0.2).then(|| 1 + (rng.next_u64() % 5) as u8);
            let (fin, who) = combine(r.ceiling, model);
            assert!((1..=5).contains(&fin));
            assert!(
                fin <= r.ceiling,
                "{input:?} → ceiling {} final {fin}",
                r.ceiling
            );
            assert!(r.reasons.iter().all(|x| fin <= x.esi), "{input:?}");
            if who == Decider::RulesOverride {
                overrides += 1;
            }
        }
        assert!(overrides > 0, "the property must have exercised overrides");
    }

    #[test]
    fn combine_cases() {
        assert_eq!(combine(2, Some(4)), (2, Decider::RulesOverride));
        assert_eq!(combine(2, Some(1)), (1, Decider::Model));
        assert_eq!(combine(5, Some(5)), (5, Decider::Model));
        assert_eq!(combine(5, None), (3, Decider::RulesOnly));
        assert_eq!(combine(1, None), (1, Decider::RulesOnly));
    }
}
