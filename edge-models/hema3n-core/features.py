"""Feature builder of HEMA3N-Core. The daemon's Rust builder (src/triage/features.rs) must
produce bit-for-bit the same vectors; tests compare them on the committed parity fixture.

Vitals vector (28 floats):
  for each vital in VITALS order: (value - mean) / std, or 0 when missing   (11)
  for each vital in VITALS order: 1 if missing else 0                       (11)
  (age_years - 45) / 25 or 0, age_missing                                   (2)
  female, male                                                              (2)
  on_oxygen                                                                 (1)
  complaint_missing                                                         (1)
Text vector (2048 floats): chief complaint, lower-cased, every non-alphanumeric ASCII
character replaced by a space, split on spaces; unigrams and bigrams ("a b" joined by "_");
bucket = FNV-1a-32(UTF-8 bytes) mod 2048; value = count / number of grams (mean bag).
"""
import re

VITALS = ["heart_rate", "resp_rate", "spo2", "sbp", "dbp", "temp", "etco2", "glucose", "gcs_total", "avpu", "pain"]
NORM = {
    "heart_rate": (85.0, 25.0),
    "resp_rate": (18.0, 6.0),
    "spo2": (95.0, 5.0),
    "sbp": (130.0, 25.0),
    "dbp": (78.0, 15.0),
    "temp": (37.0, 0.8),
    "etco2": (36.0, 8.0),
    "glucose": (120.0, 60.0),
    "gcs_total": (14.0, 2.5),
    "avpu": (0.5, 1.0),
    "pain": (4.0, 3.0),
}
AGE_NORM = (45.0, 25.0)
N_VITALS = 2 * len(VITALS) + 6
TEXT_BUCKETS = 2048
ESI_LEVELS = [1, 2, 3, 4, 5]
SPECIALTIES = [
    "cardiology", "neurology", "trauma_surgery", "general_surgery", "pulmonology",
    "infectious_disease", "endocrinology", "psychiatry", "pediatrics",
]


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def grams(text: str) -> list:
    cleaned = "".join(c if (c.isascii() and c.isalnum()) else " " for c in text.lower())
    toks = [t for t in cleaned.split(" ") if t]
    return toks + [f"{a}_{b}" for a, b in zip(toks, toks[1:])]


def text_features(text):
    """Sparse mean bag: {bucket: value}."""
    if not text:
        return {}
    g = grams(text)
    if not g:
        return {}
    out = {}
    for t in g:
        b = fnv1a32(t.encode("utf-8")) % TEXT_BUCKETS
        out[b] = out.get(b, 0.0) + 1.0
    n = float(len(g))
    return {b: c / n for b, c in out.items()}


def vitals_features(vitals: dict, age, sex, on_oxygen: bool, complaint):
    v = []
    for name in VITALS:
        x = vitals.get(name)
        m, s = NORM[name]
        v.append(0.0 if x is None else (float(x) - m) / s)
    for name in VITALS:
        v.append(1.0 if vitals.get(name) is None else 0.0)
    v.append(0.0 if age is None else (float(age) - AGE_NORM[0]) / AGE_NORM[1])
    v.append(1.0 if age is None else 0.0)
    v.append(1.0 if sex == "female" else 0.0)
    v.append(1.0 if sex == "male" else 0.0)
    v.append(1.0 if on_oxygen else 0.0)
    v.append(1.0 if not text_features(complaint) else 0.0)
    return v
