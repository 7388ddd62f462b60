//! The rules engine: ESI decision points (v4 handbook) evaluated from vital signs, with
//! danger-zone vitals by age band, and NEWS2. It yields a *ceiling*: the least acute ESI level
//! the findings allow (numerically the largest), plus one human-readable reason per finding.
//! The final triage level is never less acute than this ceiling (see [`super::combine`]).
//!
//! What vital signs can and cannot say: decision point A (immediate life-saving intervention)
//! and B (high-risk: altered mentation, severe pain, danger-zone vitals) are detectable; C
//! (expected resources) is not, so without findings the ceiling is 5 and the decision is left to
//! the model or the rules-only default. These are proxies, not a validated clinical instrument.

use super::news2::{self, News2, News2Input, Risk};
use super::reasons::Finding;

/// Latest value of each vital (`None` = not measured). AVPU is the ACVPU index 0..=4.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Vitals {
    pub heart_rate: Option<f64>,
    pub resp_rate: Option<f64>,
    pub spo2: Option<f64>,
    pub sbp: Option<f64>,
    pub dbp: Option<f64>,
    pub temp: Option<f64>,
    pub etco2: Option<f64>,
    pub glucose: Option<f64>,
    pub gcs_total: Option<f64>,
    pub avpu: Option<u8>,
    pub pain: Option<f64>,
}

impl Vitals {
    /// Sets the vital named `code` (vocabulary name, see `vocab`); AVPU takes its
    /// ACVPU index. Unknown names are ignored.
    pub fn set(&mut self, code: &str, value: f64) {
        let x = Some(value);
        match code {
            "heart_rate" => self.heart_rate = x,
            "resp_rate" => self.resp_rate = x,
            "spo2" => self.spo2 = x,
            "sbp" => self.sbp = x,
            "dbp" => self.dbp = x,
            "temp" => self.temp = x,
            "etco2" => self.etco2 = x,
            "glucose" => self.glucose = x,
            "gcs_total" => self.gcs_total = x,
            "avpu" => self.avpu = Some(value as u8),
            "pain" => self.pain = x,
            _ => {}
        }
    }
}

/// Everything the rules look at.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RulesInput {
    pub vitals: Vitals,
    pub age_years: Option<f64>,
    pub on_oxygen: bool,
    /// SpO2 Scale 2 (known hypercapnic respiratory failure).
    pub spo2_scale2: bool,
}

/// One finding: a stable code, the ESI level it requires at least, and what was found (its
/// sentence for the crew: [`RulesResult::sentence`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    pub code: &'static str,
    pub esi: u8,
    pub finding: Finding,
}

/// Output of the rules engine.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesResult {
    /// Least acute ESI the findings allow (1 = most acute); 5 when nothing constrains it.
    pub ceiling: u8,
    pub reasons: Vec<Reason>,
    /// `None` under 16 years (NEWS2 is validated for adults only).
    pub news2: Option<News2>,
}

impl RulesResult {
    /// The sentence of one of this result's reasons, e.g. "SpO2 88% < 92% (danger zone)".
    pub fn sentence(&self, r: &Reason) -> String {
        r.finding.sentence(self.news2.as_ref())
    }
}

/// Age bands of the ESI danger-zone vitals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeBand {
    Under3Months,
    Months3ToYears3,
    Years3To8,
    Over8,
}

impl AgeBand {
    /// Unknown age counts as over 8 years: its thresholds are the lowest, so the most cautious.
    pub fn of(age_years: Option<f64>) -> Self {
        match age_years {
            Some(a) if a < 0.25 => AgeBand::Under3Months,
            Some(a) if a < 3.0 => AgeBand::Months3ToYears3,
            Some(a) if a <= 8.0 => AgeBand::Years3To8,
            _ => AgeBand::Over8,
        }
    }

    /// `(heart rate >, respiratory rate >)` danger-zone thresholds.
    pub fn danger_zone(self) -> (f64, f64) {
        match self {
            AgeBand::Under3Months => (180.0, 50.0),
            AgeBand::Months3ToYears3 => (160.0, 40.0),
            AgeBand::Years3To8 => (140.0, 30.0),
            AgeBand::Over8 => (100.0, 20.0),
        }
    }

    fn label(self) -> &'static str {
        match self {
            AgeBand::Under3Months => "under 3 months",
            AgeBand::Months3ToYears3 => "3 months to 3 years",
            AgeBand::Years3To8 => "3 to 8 years",
            AgeBand::Over8 => "over 8 years",
        }
    }
}

/// Systolic hypotension threshold by age (PALS: < 60 neonate/infant, < 70 + 2 × age to 10
/// years, < 90 above) and the profound-shock threshold used for ESI 1.
fn hypotension(age: Option<f64>) -> (f64, f64) {
    match age {
        Some(a) if a < 1.0 => (60.0, 50.0),
        Some(a) if a <= 10.0 => (70.0 + 2.0 * a.floor(), 60.0 + 2.0 * a.floor()),
        _ => (90.0, 80.0),
    }
}

/// Evaluates every rule.
pub fn evaluate(i: &RulesInput) -> RulesResult {
    let v = &i.vitals;
    let mut reasons: Vec<Reason> = Vec::with_capacity(8);
    let mut add =
        |code: &'static str, esi: u8, finding: Finding| reasons.push(Reason { code, esi, finding });
    let band = AgeBand::of(i.age_years);
    let adult_like = !matches!(
        band,
        AgeBand::Under3Months | AgeBand::Months3ToYears3 | AgeBand::Years3To8
    );

    // Decision point A: immediate life-saving intervention.
    if v.avpu == Some(4) {
        add("unresponsive", 1, Finding::Unresponsive);
    }
    if let Some(gcs) = v.gcs_total.filter(|g| *g <= 8.0) {
        add("gcs_coma", 1, Finding::Coma { gcs });
    }
    if let Some(rr) = v.resp_rate {
        if rr <= 6.0 {
            add("apnoea", 1, Finding::Apnoea { rr });
        } else if (adult_like && rr >= 40.0) || (!adult_like && rr >= 60.0) {
            add(
                "resp_distress_severe",
                1,
                Finding::SevereRespiratoryDistress { rr },
            );
        }
    }
    if let Some(spo2) = v.spo2.filter(|s| *s < 85.0) {
        add("hypoxia_severe", 1, Finding::SevereHypoxia { spo2 });
    }
    let (hypo, profound) = hypotension(i.age_years);
    if let Some(sbp) = v.sbp {
        if sbp < profound {
            add("shock", 1, Finding::Shock { sbp });
        } else if sbp < hypo {
            add("hypotension", 2, Finding::Hypotension { sbp });
        }
    }
    if let Some(hr) = v.heart_rate
        && (hr <= 30.0 || (adult_like && hr >= 180.0) || hr >= 220.0)
    {
        add("arrhythmia_extreme", 1, Finding::ExtremeHeartRate { hr });
    }

    // Decision point B: high risk, altered mentation, severe pain.
    if let Some(acvpu) = v.avpu.filter(|a| (1..=3).contains(a)) {
        add("altered_mentation", 2, Finding::AlteredMentation { acvpu });
    }
    if let Some(gcs) = v.gcs_total.filter(|g| *g > 8.0 && *g < 15.0) {
        add("gcs_reduced", 2, Finding::ReducedGcs { gcs });
    }
    if let Some(pain) = v.pain.filter(|p| *p >= 7.0) {
        add("severe_pain", 2, Finding::SeverePain { pain });
    }
    if let Some(glucose) = v.glucose {
        if glucose < 54.0 {
            add("hypoglycaemia", 2, Finding::Hypoglycaemia { glucose });
        } else if glucose >= 600.0 {
            add("hyperglycaemia", 2, Finding::Hyperglycaemia { glucose });
        }
    }
    if let Some(temp) = v.temp {
        if temp >= 40.0 {
            add("hyperpyrexia", 2, Finding::Hyperpyrexia { temp });
        }
        if temp >= 38.0 && matches!(band, AgeBand::Under3Months) {
            add("infant_fever", 2, Finding::InfantFever { temp });
        }
    }

    // Decision point D: danger-zone vitals by age band.
    let (hr_dz, rr_dz) = band.danger_zone();
    if let Some(hr) = v.heart_rate.filter(|hr| *hr > hr_dz) {
        let (limit, band) = (hr_dz, band.label());
        add(
            "danger_zone_hr",
            2,
            Finding::DangerZoneHeartRate { hr, limit, band },
        );
    }
    if let Some(rr) = v.resp_rate.filter(|rr| *rr > rr_dz) {
        let (limit, band) = (rr_dz, band.label());
        add(
            "danger_zone_rr",
            2,
            Finding::DangerZoneRespRate { rr, limit, band },
        );
    }
    if let Some(spo2) = v.spo2.filter(|s| *s < 92.0 && *s >= 85.0) {
        add("danger_zone_spo2", 2, Finding::DangerZoneSpo2 { spo2 });
    }

    // NEWS2 (adults and unknown age).
    let news2 = (i.age_years.is_none_or(|a| a >= 16.0)).then(|| {
        news2::score(&News2Input {
            resp_rate: v.resp_rate,
            spo2: v.spo2,
            on_oxygen: i.on_oxygen,
            spo2_scale2: i.spo2_scale2,
            sbp: v.sbp,
            heart_rate: v.heart_rate,
            acvpu: v
                .avpu
                .or_else(|| v.gcs_total.map(|g| if g >= 15.0 { 0 } else { 1 })),
            temp: v.temp,
        })
    });
    if let Some(n) = &news2 {
        match n.risk {
            Risk::High => add("news2_high", 2, Finding::News2),
            Risk::Medium => add("news2_medium", 3, Finding::News2),
            Risk::LowMedium => add("news2_single_red", 2, Finding::News2),
            Risk::Low => {}
        }
    }
    let ceiling = reasons.iter().map(|r| r.esi).min().unwrap_or(5);
    reasons.sort_by_key(|r| r.esi);
    RulesResult {
        ceiling,
        reasons,
        news2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adult(v: Vitals) -> RulesInput {
        RulesInput {
            vitals: v,
            age_years: Some(40.0),
            ..Default::default()
        }
    }

    const NORMAL: Vitals = Vitals {
        heart_rate: Some(75.0),
        resp_rate: Some(16.0),
        spo2: Some(98.0),
        sbp: Some(125.0),
        dbp: Some(80.0),
        temp: Some(37.0),
        etco2: Some(38.0),
        glucose: Some(100.0),
        gcs_total: Some(15.0),
        avpu: Some(0),
        pain: Some(2.0),
    };

    #[test]
    fn normal_adult_has_no_findings() {
        let r = evaluate(&adult(NORMAL));
        assert_eq!(r.ceiling, 5, "{:?}", r.reasons);
        assert_eq!(r.news2.unwrap().total, 0);
    }

    #[test]
    fn each_esi1_finding() {
        let cases: [(Vitals, &str); 6] = [
            (
                Vitals {
                    avpu: Some(4),
                    ..NORMAL
                },
                "unresponsive",
            ),
            (
                Vitals {
                    gcs_total: Some(7.0),
                    avpu: None,
                    ..NORMAL
                },
                "gcs_coma",
            ),
            (
                Vitals {
                    resp_rate: Some(5.0),
                    ..NORMAL
                },
                "apnoea",
            ),
            (
                Vitals {
                    spo2: Some(80.0),
                    ..NORMAL
                },
                "hypoxia_severe",
            ),
            (
                Vitals {
                    sbp: Some(72.0),
                    ..NORMAL
                },
                "shock",
            ),
            (
                Vitals {
                    heart_rate: Some(185.0),
                    ..NORMAL
                },
                "arrhythmia_extreme",
            ),
        ];
        for (v, code) in cases {
            let r = evaluate(&adult(v));
            assert_eq!(r.ceiling, 1, "{code}: {:?}", r.reasons);
            assert!(
                r.reasons.iter().any(|x| x.code == code && x.esi == 1),
                "{code}: {:?}",
                r.reasons
            );
        }
    }

    #[test]
    fn each_esi2_finding() {
        let cases: [(Vitals, &str); 9] = [
            (
                Vitals {
                    avpu: Some(2),
                    ..NORMAL
                },
                "altered_mentation",
            ),
            (
                Vitals {
                    gcs_total: Some(13.0),
                    avpu: None,
                    ..NORMAL
                },
                "gcs_reduced",
            ),
            (
                Vitals {
                    pain: Some(8.0),
                    ..NORMAL
                },
                "severe_pain",
            ),
            (
                Vitals {
                    glucose: Some(45.0),
                    ..NORMAL
                },
                "hypoglycaemia",
            ),
            (
                Vitals {
                    temp: Some(40.2),
                    ..NORMAL
                },
                "hyperpyrexia",
            ),
            (
                Vitals {
                    heart_rate: Some(101.0),
                    ..NORMAL
                },
                "danger_zone_hr",
            ),
            (
                Vitals {
                    resp_rate: Some(21.0),
                    ..NORMAL
                },
                "danger_zone_rr",
            ),
            (
                Vitals {
                    spo2: Some(91.0),
                    ..NORMAL
                },
                "danger_zone_spo2",
            ),
            (
                Vitals {
                    sbp: Some(85.0),
                    ..NORMAL
                },
                "hypotension",
            ),
        ];
        for (v, code) in cases {
            let r = evaluate(&adult(v));
            assert_eq!(r.ceiling, 2, "{code}: {:?}", r.reasons);
            assert!(
                r.reasons.iter().any(|x| x.code == code),
                "{code}: {:?}",
                r.reasons
            );
        }
    }

    #[test]
    fn danger_zone_depends_on_age_band() {
        let child = |age: f64, hr: f64, rr: f64| {
            evaluate(&RulesInput {
                vitals: Vitals {
                    heart_rate: Some(hr),
                    resp_rate: Some(rr),
                    ..NORMAL
                },
                age_years: Some(age),
                ..Default::default()
            })
        };
        // A 2-year-old with HR 150 / RR 35 is inside normal limits; an adult is not.
        assert_eq!(child(2.0, 150.0, 35.0).ceiling, 5);
        assert_eq!(child(2.0, 161.0, 35.0).ceiling, 2);
        assert_eq!(child(2.0, 150.0, 41.0).ceiling, 2);
        assert_eq!(child(0.1, 175.0, 45.0).ceiling, 5);
        assert_eq!(child(0.1, 181.0, 45.0).ceiling, 2);
        assert_eq!(child(6.0, 141.0, 25.0).ceiling, 2);
        assert_eq!(child(6.0, 139.0, 29.0).ceiling, 5);
        // NEWS2 is not applied to children.
        assert!(child(6.0, 100.0, 25.0).news2.is_none());
        // Unknown age: adult thresholds (the cautious ones).
        let unknown = evaluate(&RulesInput {
            vitals: Vitals {
                heart_rate: Some(120.0),
                ..NORMAL
            },
            ..Default::default()
        });
        assert_eq!(unknown.ceiling, 2);
    }

    #[test]
    fn infant_fever_and_paediatric_hypotension() {
        let infant = evaluate(&RulesInput {
            vitals: Vitals {
                temp: Some(38.2),
                ..NORMAL
            },
            age_years: Some(0.05),
            ..Default::default()
        });
        assert!(infant.reasons.iter().any(|r| r.code == "infant_fever"));
        // A 5-year-old: hypotension below 80, profound below 70.
        let kid = |sbp| {
            evaluate(&RulesInput {
                vitals: Vitals {
                    sbp: Some(sbp),
                    heart_rate: Some(100.0),
                    resp_rate: Some(22.0),
                    ..NORMAL
                },
                age_years: Some(5.0),
                ..Default::default()
            })
            .ceiling
        };
        assert_eq!(kid(85.0), 5);
        assert_eq!(kid(75.0), 2);
        assert_eq!(kid(65.0), 1);
    }

    #[test]
    fn news2_bands_set_ceilings() {
        // RR 22 (2) + HR 105 (1) + temp 38.5 (1) + on O2 (2) = 6 → medium → ESI ≤ 3… but RR 22 is
        // also a danger-zone finding (ESI 2), which wins.
        let mut i = adult(Vitals {
            resp_rate: Some(22.0),
            heart_rate: Some(95.0),
            temp: Some(38.5),
            ..NORMAL
        });
        i.on_oxygen = true;
        let r = evaluate(&i);
        assert_eq!(r.news2.as_ref().unwrap().total, 6);
        assert!(
            r.reasons
                .iter()
                .any(|x| x.code == "news2_medium" && x.esi == 3)
        );
        assert_eq!(r.ceiling, 2);
        // Medium NEWS2 alone: oxygen (2) + temp 38.5 (1) + SBP 105 (1) + HR 95 (1) = 5.
        let mut i = adult(Vitals {
            temp: Some(38.5),
            sbp: Some(105.0),
            heart_rate: Some(95.0),
            ..NORMAL
        });
        i.on_oxygen = true;
        let r = evaluate(&i);
        assert_eq!(
            (r.news2.as_ref().unwrap().total, r.ceiling),
            (5, 3),
            "{:?}",
            r.reasons
        );
    }

    #[test]
    fn every_reason_reads_as_a_sentence_with_its_value() {
        let r = evaluate(&adult(Vitals {
            spo2: Some(88.0),
            heart_rate: Some(125.0),
            ..NORMAL
        }));
        assert!(r.reasons.iter().any(|x| r.sentence(x).contains("SpO2 88%")));
        assert!(
            r.reasons
                .iter()
                .all(|x| !r.sentence(x).is_empty() && (1..=5).contains(&x.esi))
        );
        assert!(
            r.reasons.windows(2).all(|w| w[0].esi <= w[1].esi),
            "most acute first"
        );
    }

    fn sentences(v: Vitals, age: f64, on_oxygen: bool) -> Vec<String> {
        let r = evaluate(&RulesInput {
            vitals: v,
            age_years: Some(age),
            on_oxygen,
            spo2_scale2: false,
        });
        r.reasons.iter().map(|x| r.sentence(x)).collect()
    }

    #[test]
    fn findings_read_as_the_sentences_the_crew_sees() {
        let s = sentences(
            Vitals {
                heart_rate: Some(125.0),
                resp_rate: Some(26.0),
                spo2: Some(88.0),
                sbp: Some(120.0),
                temp: Some(37.2),
                avpu: Some(0),
                ..Default::default()
            },
            45.0,
            true,
        );
        assert_eq!(
            s,
            [
                "heart rate 125/min > 100 (danger zone, over 8 years)",
                "respiratory rate 26/min > 20 (danger zone, over 8 years)",
                "SpO2 88% < 92% (danger zone)",
                "NEWS2 10 (high risk) — RR 26 +3, SpO2 88 +3, on oxygen +2, HR 125 +2",
            ]
            .map(String::from),
            "{s:#?}"
        );
        // A child: thresholds and band of its age; NEWS2 is for adults only.
        let s = sentences(
            Vitals {
                heart_rate: Some(150.5),
                gcs_total: Some(7.0),
                ..Default::default()
            },
            5.0,
            false,
        );
        assert_eq!(
            s,
            [
                "GCS 7 ≤ 8: airway at risk",
                "heart rate 150.5/min > 140 (danger zone, 3 to 8 years)",
            ]
            .map(String::from)
        );
    }
}
