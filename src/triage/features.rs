//! The feature builder of HEMA3N-Core, bit-for-bit the same as
//! `edge-models/hema3n-core/features.py` (checked on the committed parity fixture).
//!
//! Vitals vector (28): 11 normalised values (0 when missing), 11 missing flags, normalised age
//! and its missing flag, female, male, on oxygen, complaint missing. Text vector (2048): mean bag
//! of FNV-1a-32 hashed unigrams and bigrams of the lower-cased, ASCII-alphanumeric complaint.

use super::rules::Vitals;
use crate::model::Sex;

pub const N_VITALS: usize = 28;
pub const TEXT_BUCKETS: usize = 2048;

/// `(mean, sd)` per vital, in the model's vital order.
pub const NORM: [(&str, f64, f64); 11] = [
    ("heart_rate", 85.0, 25.0),
    ("resp_rate", 18.0, 6.0),
    ("spo2", 95.0, 5.0),
    ("sbp", 130.0, 25.0),
    ("dbp", 78.0, 15.0),
    ("temp", 37.0, 0.8),
    ("etco2", 36.0, 8.0),
    ("glucose", 120.0, 60.0),
    ("gcs_total", 14.0, 2.5),
    ("avpu", 0.5, 1.0),
    ("pain", 4.0, 3.0),
];
const AGE_NORM: (f64, f64) = (45.0, 25.0);

/// Vitals in the model's order.
pub fn ordered(v: &Vitals) -> [Option<f64>; 11] {
    [
        v.heart_rate,
        v.resp_rate,
        v.spo2,
        v.sbp,
        v.dbp,
        v.temp,
        v.etco2,
        v.glucose,
        v.gcs_total,
        v.avpu.map(f64::from),
        v.pain,
    ]
}

fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Unigrams and bigrams of a complaint.
pub fn grams(text: &str) -> Vec<String> {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
        .collect();
    let toks: Vec<&str> = cleaned.split(' ').filter(|t| !t.is_empty()).collect();
    let mut out: Vec<String> = toks.iter().map(|t| t.to_string()).collect();
    out.extend(toks.windows(2).map(|w| format!("{}_{}", w[0], w[1])));
    out
}

/// Sparse mean bag `(bucket, value)`, sorted by bucket; empty when there is no usable text.
pub fn text_features(text: Option<&str>) -> Vec<(usize, f32)> {
    let Some(text) = text else { return Vec::new() };
    let g = grams(text);
    if g.is_empty() {
        return Vec::new();
    }
    let mut counts: std::collections::BTreeMap<usize, u32> = std::collections::BTreeMap::new();
    for t in &g {
        *counts
            .entry((fnv1a32(t.as_bytes()) % TEXT_BUCKETS as u32) as usize)
            .or_default() += 1;
    }
    let n = g.len() as f64;
    counts
        .into_iter()
        .map(|(b, c)| (b, (f64::from(c) / n) as f32))
        .collect()
}

/// Dense text vector.
pub fn text_dense(sparse: &[(usize, f32)], out: &mut [f32; TEXT_BUCKETS]) {
    out.fill(0.0);
    for (b, v) in sparse {
        out[*b] = *v;
    }
}

/// The vitals vector.
pub fn vitals_features(
    v: &Vitals,
    age: Option<f64>,
    sex: Option<Sex>,
    on_oxygen: bool,
    complaint: Option<&str>,
) -> [f32; N_VITALS] {
    let mut out = [0f32; N_VITALS];
    for (i, (x, (_, m, s))) in ordered(v).iter().zip(NORM).enumerate() {
        out[i] = x.map_or(0.0, |x| ((x - m) / s) as f32);
        out[11 + i] = if x.is_none() { 1.0 } else { 0.0 };
    }
    out[22] = age.map_or(0.0, |a| ((a - AGE_NORM.0) / AGE_NORM.1) as f32);
    out[23] = if age.is_none() { 1.0 } else { 0.0 };
    out[24] = if sex == Some(Sex::Female) { 1.0 } else { 0.0 };
    out[25] = if sex == Some(Sex::Male) { 1.0 } else { 0.0 };
    out[26] = if on_oxygen { 1.0 } else { 0.0 };
    out[27] = if text_features(complaint).is_empty() {
        1.0
    } else {
        0.0
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a32(b""), 0x811C_9DC5);
        assert_eq!(fnv1a32(b"a"), 0xE40C_292C);
        assert_eq!(fnv1a32(b"foobar"), 0xBF9C_F968);
    }

    #[test]
    fn grams_clean_and_pair() {
        assert_eq!(
            grams("Chest-pain, SOB!"),
            vec!["chest", "pain", "sob", "chest_pain", "pain_sob"]
        );
        assert!(grams(" --- ").is_empty());
        assert!(text_features(Some("!!")).is_empty());
        let t = text_features(Some("pain pain"));
        let total: f32 = t.iter().map(|(_, v)| v).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
