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

/// The dense text vector of `text` straight into `out`, without allocating (the triage hot
/// path): the same values as [`text_dense`] of [`text_features`], bit for bit. Returns the
/// number of grams (0: no usable text).
///
/// Tokens are runs of ASCII alphanumerics of the lower-cased text (each char lower-cased on its
/// own: the one context rule of full lower-casing, a final sigma, yields a non-ASCII letter
/// either way); a bigram's FNV-1a hash continues its first token's with `_` and the second.
pub fn text_into(text: Option<&str>, out: &mut [f32; TEXT_BUCKETS]) -> usize {
    const BASIS: u32 = 0x811C_9DC5;
    let feed = |h: u32, b: u8| (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    out.fill(0.0);
    let Some(text) = text else { return 0 };
    let mut bag = Bag {
        out,
        n: 0,
        touched: [0; Bag::TRACKED],
        distinct: 0,
    };
    // The token being read: its unigram hash, and its bigram hash with the previous token.
    let (mut uni, mut bi, mut in_token) = (BASIS, None::<u32>, false);
    // The previous token's unigram hash.
    let mut prev: Option<u32> = None;
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            if !in_token {
                in_token = true;
                uni = BASIS;
                bi = prev.map(|p| feed(p, b'_'));
            }
            let b = c as u8;
            uni = feed(uni, b);
            bi = bi.map(|h| feed(h, b));
        } else if in_token {
            in_token = false;
            bag.token(uni, bi);
            prev = Some(uni);
        }
    }
    if in_token {
        bag.token(uni, bi);
    }
    bag.finish()
}

/// Gram counts being gathered into a dense vector, and which buckets they touched: a chief
/// complaint touches a few dozen of the 2,048, and dividing only those (not every bucket, a
/// division each) is most of what building the vector costs.
struct Bag<'a> {
    out: &'a mut [f32; TEXT_BUCKETS],
    /// Grams counted.
    n: usize,
    /// The first [`Bag::TRACKED`] distinct buckets touched.
    touched: [u16; Bag::TRACKED],
    /// Distinct buckets touched (may exceed `TRACKED`: then every bucket is divided).
    distinct: usize,
}

impl Bag<'_> {
    const TRACKED: usize = 128;

    fn bump(&mut self, h: u32) {
        let b = (h % TEXT_BUCKETS as u32) as usize;
        if self.out[b] == 0.0 {
            if let Some(slot) = self.touched.get_mut(self.distinct) {
                *slot = b as u16;
            }
            self.distinct += 1;
        }
        self.out[b] += 1.0;
        self.n += 1;
    }

    /// A token ended: its unigram, and its bigram with the previous token if any.
    fn token(&mut self, uni: u32, bi: Option<u32>) {
        self.bump(uni);
        if let Some(b) = bi {
            self.bump(b);
        }
    }

    /// Counts to means (`count / n` in f64, as the reference does); returns `n`.
    fn finish(self) -> usize {
        let (out, n) = (self.out, self.n as f64);
        if self.n == 0 {
            return 0;
        }
        let mean = |v: &mut f32| *v = (f64::from(*v) / n) as f32;
        if self.distinct <= Self::TRACKED {
            for &b in &self.touched[..self.distinct] {
                mean(&mut out[usize::from(b)]);
            }
        } else {
            // An empty bucket stays +0.0.
            out.iter_mut().for_each(mean);
        }
        self.n
    }
}

/// Whether `text` has a gram (a lower-cased ASCII alphanumeric), without allocating.
pub fn has_text(text: Option<&str>) -> bool {
    text.is_some_and(|t| {
        t.chars()
            .flat_map(char::to_lowercase)
            .any(|c| c.is_ascii_alphanumeric())
    })
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
    out[27] = if has_text(complaint) { 0.0 } else { 1.0 };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_allocation_free_text_vector_equals_the_reference_bit_for_bit() {
        let texts = [
            "chest pain radiating to left arm",
            "  Shortness   of BREATH!! ",
            "chest-pain/left_arm (2 days)",
            "\u{130}stanbul \u{212A}elvin \u{3A3}\u{391}\u{3A3} caf\u{E9} na\u{EF}ve \u{1F691} x",
            "a",
            "",
            "   ",
            "!!!",
            "fall from height fall from height fall",
        ];
        let (mut fast, mut reference) = ([0f32; TEXT_BUCKETS], [0f32; TEXT_BUCKETS]);
        // More distinct buckets than are tracked: every bucket is divided instead.
        let long: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
        let long = long.join(" ");
        for t in texts
            .iter()
            .map(|t| Some(*t))
            .chain([Some(&long[..]), None])
        {
            let n = text_into(t, &mut fast);
            let sparse = text_features(t);
            text_dense(&sparse, &mut reference);
            assert_eq!(n, t.map_or(0, |t| grams(t).len()), "{t:?}");
            assert!(
                fast.iter()
                    .zip(&reference)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{t:?}"
            );
            assert_eq!(has_text(t), !sparse.is_empty(), "{t:?}");
        }
    }

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
