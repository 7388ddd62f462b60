//! The vital-sign vocabulary of Contract A (SYSTEM.md §2): names, units, LOINC codes and
//! plausible ranges. A reading outside its range is rejected, never clamped.

/// One vocabulary entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vital {
    /// SenML name (after any base-name prefix).
    pub name: &'static str,
    /// Required SenML unit; `None` for string-valued AVPU.
    pub unit: Option<&'static str>,
    pub loinc: &'static str,
    /// Inclusive plausible range for numeric values.
    pub min: f64,
    pub max: f64,
    /// Integer-valued scores (GCS, pain) must have no fractional part.
    pub integer: bool,
}

const fn num(
    name: &'static str,
    unit: &'static str,
    loinc: &'static str,
    min: f64,
    max: f64,
) -> Vital {
    Vital {
        name,
        unit: Some(unit),
        loinc,
        min,
        max,
        integer: false,
    }
}

const fn score(name: &'static str, loinc: &'static str, min: f64, max: f64) -> Vital {
    Vital {
        name,
        unit: Some("/"),
        loinc,
        min,
        max,
        integer: true,
    }
}

/// The full vocabulary.
pub const VITALS: &[Vital] = &[
    num("heart_rate", "beat/min", "8867-4", 0.0, 350.0),
    num("resp_rate", "1/min", "9279-1", 0.0, 100.0),
    num("spo2", "%", "2708-6", 0.0, 100.0),
    num("sbp", "mmHg", "8480-6", 0.0, 400.0),
    num("dbp", "mmHg", "8462-4", 0.0, 400.0),
    num("temp", "Cel", "8310-5", 20.0, 46.0),
    num("etco2", "mmHg", "19889-5", 0.0, 150.0),
    num("glucose", "mg/dL", "41653-7", 0.0, 2000.0),
    score("gcs_total", "9269-2", 3.0, 15.0),
    score("gcs_eye", "9267-6", 1.0, 4.0),
    score("gcs_verbal", "9270-0", 1.0, 5.0),
    score("gcs_motor", "9268-4", 1.0, 6.0),
    Vital {
        name: "avpu",
        unit: None,
        loinc: "67775-7",
        min: 0.0,
        max: 4.0,
        integer: true,
    },
    score("pain", "72514-3", 0.0, 10.0),
];

/// AVPU (ACVPU) levels in order of worsening consciousness; stored as their index.
pub const AVPU_LEVELS: [&str; 5] = ["A", "C", "V", "P", "U"];

/// Looks up a vocabulary entry by name.
pub fn lookup(name: &str) -> Option<&'static Vital> {
    VITALS.iter().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_ranges_sane() {
        for (i, a) in VITALS.iter().enumerate() {
            assert!(a.min < a.max, "{}", a.name);
            assert!(
                VITALS[i + 1..].iter().all(|b| b.name != a.name),
                "duplicate {}",
                a.name
            );
        }
        assert_eq!(lookup("spo2").unwrap().loinc, "2708-6");
        assert!(lookup("SpO2").is_none());
    }
}
