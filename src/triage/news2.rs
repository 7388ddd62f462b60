//! NEWS2 (Royal College of Physicians, 2017): every band, SpO2 scales 1 and 2, supplemental
//! oxygen and ACVPU. Bands are upper-inclusive on the published cut-offs, so fractional
//! measurements fall into the band whose range contains them (e.g. RR 8.5 scores as 9–11).
//!
//! A missing parameter contributes nothing and is listed in `missing`: the partial total is a
//! lower bound of the true score, which is what a safety floor may use.

/// One scored parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct SubScore {
    pub parameter: &'static str,
    pub value: f64,
    pub score: u8,
}

/// Clinical risk bands of the aggregate score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Risk {
    Low,
    /// Aggregate 1–4 with a single parameter scoring 3.
    LowMedium,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::LowMedium => "low-medium",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

/// Inputs of NEWS2; `None` = not measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct News2Input {
    pub resp_rate: Option<f64>,
    pub spo2: Option<f64>,
    /// Supplemental oxygen (also selects the Scale 2 "on oxygen" rows).
    pub on_oxygen: bool,
    /// Use SpO2 Scale 2 (hypercapnic respiratory failure, target 88–92 %).
    pub spo2_scale2: bool,
    pub sbp: Option<f64>,
    pub heart_rate: Option<f64>,
    /// ACVPU index: 0 = Alert, 1 = new Confusion, 2 = Voice, 3 = Pain, 4 = Unresponsive.
    pub acvpu: Option<u8>,
    pub temp: Option<f64>,
}

/// The NEWS2 assessment.
#[derive(Debug, Clone, PartialEq)]
pub struct News2 {
    pub total: u8,
    pub subscores: Vec<SubScore>,
    pub missing: Vec<&'static str>,
    pub risk: Risk,
}

/// A measured value as a clinician reads it: temperature to 0.1 °C, every other NEWS2
/// parameter in whole units (SpO2 94 %, not 94.1 %).
/// What a clinician calls a NEWS2 parameter (reasons are read on the tablet and in handoffs).
pub fn parameter_label(parameter: &str) -> &str {
    match parameter {
        "resp_rate" => "RR",
        "spo2" => "SpO2",
        "spo2 (scale 2)" => "SpO2 (scale 2)",
        "air_or_oxygen" => "air or oxygen",
        "sbp" => "SBP",
        "heart_rate" => "HR",
        p => p,
    }
}

pub fn display_value(parameter: &str, v: f64) -> String {
    if parameter == "temp" {
        format!("{v:.1}")
    } else {
        format!("{}", v.round() as i64)
    }
}

pub fn score_resp_rate(rr: f64) -> u8 {
    if rr <= 8.0 {
        3
    } else if rr <= 11.0 {
        1
    } else if rr <= 20.0 {
        0
    } else if rr <= 24.0 {
        2
    } else {
        3
    }
}

pub fn score_spo2_scale1(s: f64) -> u8 {
    if s <= 91.0 {
        3
    } else if s <= 93.0 {
        2
    } else if s <= 95.0 {
        1
    } else {
        0
    }
}

pub fn score_spo2_scale2(s: f64, on_oxygen: bool) -> u8 {
    if s <= 83.0 {
        3
    } else if s <= 85.0 {
        2
    } else if s <= 87.0 {
        1
    } else if s <= 92.0 || !on_oxygen {
        0
    } else if s <= 94.0 {
        1
    } else if s <= 96.0 {
        2
    } else {
        3
    }
}

pub fn score_sbp(sbp: f64) -> u8 {
    if sbp <= 90.0 {
        3
    } else if sbp <= 100.0 {
        2
    } else if sbp <= 110.0 {
        1
    } else if sbp <= 219.0 {
        0
    } else {
        3
    }
}

pub fn score_heart_rate(hr: f64) -> u8 {
    if hr <= 40.0 {
        3
    } else if hr <= 50.0 {
        1
    } else if hr <= 90.0 {
        0
    } else if hr <= 110.0 {
        1
    } else if hr <= 130.0 {
        2
    } else {
        3
    }
}

pub fn score_temp(t: f64) -> u8 {
    if t <= 35.0 {
        3
    } else if t <= 36.0 {
        1
    } else if t <= 38.0 {
        0
    } else if t <= 39.0 {
        1
    } else {
        2
    }
}

pub fn score_acvpu(level: u8) -> u8 {
    if level == 0 { 0 } else { 3 }
}

/// Scores NEWS2 from whatever was measured.
pub fn score(i: &News2Input) -> News2 {
    let mut subscores = Vec::with_capacity(7);
    let mut missing = Vec::new();
    let mut add = |parameter: &'static str, v: Option<f64>, f: &dyn Fn(f64) -> u8| match v {
        Some(v) => subscores.push(SubScore {
            parameter,
            value: v,
            score: f(v),
        }),
        None => missing.push(parameter),
    };
    add("resp_rate", i.resp_rate, &score_resp_rate);
    if i.spo2_scale2 {
        add("spo2 (scale 2)", i.spo2, &|s| {
            score_spo2_scale2(s, i.on_oxygen)
        });
    } else {
        add("spo2", i.spo2, &score_spo2_scale1);
    }
    add(
        "air_or_oxygen",
        Some(if i.on_oxygen { 1.0 } else { 0.0 }),
        &|o| if o > 0.0 { 2 } else { 0 },
    );
    add("sbp", i.sbp, &score_sbp);
    add("heart_rate", i.heart_rate, &score_heart_rate);
    add("consciousness", i.acvpu.map(f64::from), &|a| {
        score_acvpu(a as u8)
    });
    add("temp", i.temp, &score_temp);
    let total: u8 = subscores.iter().map(|s| s.score).sum();
    let any3 = subscores.iter().any(|s| s.score == 3);
    let risk = match total {
        7.. => Risk::High,
        5..=6 => Risk::Medium,
        _ if any3 => Risk::LowMedium,
        _ => Risk::Low,
    };
    News2 {
        total,
        subscores,
        missing,
        risk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (value, expected score) at both sides of every published band edge.
    #[test]
    fn every_band_edge() {
        let rr = [
            (8.0, 3),
            (9.0, 1),
            (11.0, 1),
            (12.0, 0),
            (20.0, 0),
            (21.0, 2),
            (24.0, 2),
            (25.0, 3),
            (0.0, 3),
            (60.0, 3),
        ];
        for (v, s) in rr {
            assert_eq!(score_resp_rate(v), s, "rr {v}");
        }
        let s1 = [
            (91.0, 3),
            (92.0, 2),
            (93.0, 2),
            (94.0, 1),
            (95.0, 1),
            (96.0, 0),
            (100.0, 0),
        ];
        for (v, s) in s1 {
            assert_eq!(score_spo2_scale1(v), s, "spo2 {v}");
        }
        let s2_air = [
            (83.0, 3),
            (84.0, 2),
            (85.0, 2),
            (86.0, 1),
            (87.0, 1),
            (88.0, 0),
            (92.0, 0),
            (93.0, 0),
            (97.0, 0),
            (100.0, 0),
        ];
        for (v, s) in s2_air {
            assert_eq!(score_spo2_scale2(v, false), s, "scale 2 air {v}");
        }
        let s2_o2 = [
            (83.0, 3),
            (84.0, 2),
            (86.0, 1),
            (88.0, 0),
            (92.0, 0),
            (93.0, 1),
            (94.0, 1),
            (95.0, 2),
            (96.0, 2),
            (97.0, 3),
            (100.0, 3),
        ];
        for (v, s) in s2_o2 {
            assert_eq!(score_spo2_scale2(v, true), s, "scale 2 O2 {v}");
        }
        let sbp = [
            (90.0, 3),
            (91.0, 2),
            (100.0, 2),
            (101.0, 1),
            (110.0, 1),
            (111.0, 0),
            (219.0, 0),
            (220.0, 3),
        ];
        for (v, s) in sbp {
            assert_eq!(score_sbp(v), s, "sbp {v}");
        }
        let hr = [
            (40.0, 3),
            (41.0, 1),
            (50.0, 1),
            (51.0, 0),
            (90.0, 0),
            (91.0, 1),
            (110.0, 1),
            (111.0, 2),
            (130.0, 2),
            (131.0, 3),
        ];
        for (v, s) in hr {
            assert_eq!(score_heart_rate(v), s, "hr {v}");
        }
        let t = [
            (35.0, 3),
            (35.1, 1),
            (36.0, 1),
            (36.1, 0),
            (38.0, 0),
            (38.1, 1),
            (39.0, 1),
            (39.1, 2),
        ];
        for (v, s) in t {
            assert_eq!(score_temp(v), s, "temp {v}");
        }
        for (a, s) in [(0, 0), (1, 3), (2, 3), (3, 3), (4, 3)] {
            assert_eq!(score_acvpu(a), s);
        }
    }

    #[test]
    fn aggregate_and_risk_bands() {
        let normal = News2Input {
            resp_rate: Some(16.0),
            spo2: Some(98.0),
            sbp: Some(120.0),
            heart_rate: Some(70.0),
            acvpu: Some(0),
            temp: Some(37.0),
            ..Default::default()
        };
        assert_eq!(score(&normal).total, 0);
        assert_eq!(score(&normal).risk, Risk::Low);
        let one3 = News2Input {
            acvpu: Some(2),
            ..normal
        };
        assert_eq!(
            (score(&one3).total, score(&one3).risk),
            (3, Risk::LowMedium)
        );
        let oxy = News2Input {
            on_oxygen: true,
            heart_rate: Some(115.0),
            temp: Some(38.5),
            ..normal
        };
        assert_eq!((score(&oxy).total, score(&oxy).risk), (5, Risk::Medium));
        let sick = News2Input {
            resp_rate: Some(26.0),
            spo2: Some(90.0),
            sbp: Some(88.0),
            ..normal
        };
        assert_eq!((score(&sick).total, score(&sick).risk), (9, Risk::High));
    }

    #[test]
    fn missing_parameters_are_listed_and_score_nothing() {
        let n = score(&News2Input {
            heart_rate: Some(135.0),
            ..Default::default()
        });
        assert_eq!(n.total, 3);
        assert_eq!(
            n.missing,
            vec!["resp_rate", "spo2", "sbp", "consciousness", "temp"]
        );
    }
}
