//! The vital-sign vocabulary of Contract A (SYSTEM.md §2): names, units, LOINC codes and
//! plausible ranges, and the one check of a value against it ([`Vital::check`],
//! [`avpu_level`]) that both SenML ingest and the tablet's manual vitals use. A reading outside
//! its range is rejected, never clamped. Pure data and logic: no IO.

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

/// The stored value of an AVPU letter (its index in [`AVPU_LEVELS`]), or `None` for anything
/// else (lower case included: the letters are a closed code set).
pub fn avpu_level(letter: &str) -> Option<f64> {
    AVPU_LEVELS
        .iter()
        .position(|l| *l == letter)
        .map(|i| i as f64)
}

/// The AVPU letter of a stored level (its index in [`AVPU_LEVELS`]), or `None` past the end.
pub fn avpu_letter(level: f64) -> Option<&'static str> {
    AVPU_LEVELS.get(level as usize).copied()
}

/// A numeric value the vocabulary refuses. The caller reports it to whoever sent the value
/// (MQTT reject `OUT_OF_RANGE`, API `VALIDATION_ERROR`) and stores nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("`{name}` is outside the plausible range {min}-{max}{whole}", whole = if *.integer { " (whole numbers)" } else { "" })]
pub struct OutOfRange {
    pub name: &'static str,
    pub min: f64,
    pub max: f64,
    /// The vital takes whole numbers only (GCS, pain, AVPU).
    pub integer: bool,
}

impl Vital {
    /// Checks a numeric value: finite, inside the inclusive plausible range, and a whole number
    /// for scores. Returns the value to store.
    pub fn check(&self, value: f64) -> Result<f64, OutOfRange> {
        let ok = value.is_finite()
            && (self.min..=self.max).contains(&value)
            && (!self.integer || value.fract() == 0.0);
        if ok {
            Ok(value)
        } else {
            Err(OutOfRange {
                name: self.name,
                min: self.min,
                max: self.max,
                integer: self.integer,
            })
        }
    }
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

    #[test]
    fn check_refuses_out_of_range_non_finite_and_fractional_scores() {
        let hr = lookup("heart_rate").unwrap();
        assert_eq!(hr.check(72.5), Ok(72.5));
        assert_eq!(hr.check(0.0), Ok(0.0));
        assert!(hr.check(350.1).is_err());
        assert!(hr.check(f64::NAN).is_err());
        assert!(hr.check(f64::INFINITY).is_err());
        let gcs = lookup("gcs_total").unwrap();
        assert_eq!(gcs.check(14.0), Ok(14.0));
        let e = gcs.check(14.5).unwrap_err();
        assert!(e.to_string().contains("whole numbers"), "{e}");
        assert!(lookup("pain").unwrap().check(3.2).is_err());
        assert!(lookup("temp").unwrap().check(19.9).is_err());
    }

    #[test]
    fn avpu_letters_map_to_their_level() {
        assert_eq!(avpu_level("A"), Some(0.0));
        assert_eq!(avpu_level("U"), Some(4.0));
        assert_eq!(avpu_level("a"), None);
        assert_eq!(avpu_level("X"), None);
        for l in AVPU_LEVELS {
            assert_eq!(avpu_letter(avpu_level(l).unwrap()), Some(l));
        }
        assert_eq!(avpu_letter(5.0), None);
    }
}
