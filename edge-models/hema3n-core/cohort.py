"""Synthetic pre-hospital triage cohort (documented in MODEL_CARD.md) and a MIMIC-IV-ED reader.

No public labelled triage data is reachable here, so the shipped model learns from this
generator. Each case draws a clinical scenario (mix below), an age, vital signs from
scenario-specific normal distributions (centred on published adult ranges and the typical
derangements of each condition), a chief complaint from scenario phrasings with light noise,
a specialty, and an ESI label from the scenario's base acuity adjusted by ESI decision points
(life-threat -> 1, danger-zone vitals or altered mentation -> at most 2), then label noise.
"""
import csv
import math
import random

from features import VITALS

# name, weight, specialty, base ESI choices, complaints, vital means/sds (None = scenario default)
ADULT = {"heart_rate": (78, 12), "resp_rate": (16, 2.5), "spo2": (97.5, 1.2), "sbp": (128, 15), "dbp": (79, 9),
         "temp": (36.9, 0.3), "etco2": (37, 3), "glucose": (105, 18), "gcs_total": (15, 0), "avpu": (0, 0), "pain": (2, 2)}

SCENARIOS = [
    ("acs", 0.09, "cardiology", [2, 2, 2, 3], ["chest pain radiating to left arm", "crushing chest pressure", "chest tightness and sweating", "cp sob nausea", "chest pain since an hour"],
     {"heart_rate": (96, 18), "sbp": (148, 28), "spo2": (95.5, 2), "resp_rate": (20, 3), "pain": (7, 1.5)}),
    ("stroke", 0.06, "neurology", [2, 2, 1], ["facial droop and slurred speech", "sudden weakness left side", "cant move right arm", "sudden confusion and speech difficulty", "stroke symptoms"],
     {"sbp": (172, 25), "dbp": (96, 12), "gcs_total": (13, 1.8), "avpu": (0.8, 0.9)}),
    ("sepsis", 0.08, "infectious_disease", [2, 2, 3], ["fever and confusion", "shaking chills", "uti symptoms and weakness", "cough fever lethargic", "fever cold hands"],
     {"heart_rate": (116, 15), "temp": (38.9, 0.7), "sbp": (97, 16), "dbp": (58, 9), "resp_rate": (24, 4), "spo2": (93, 3), "etco2": (29, 4), "gcs_total": (14, 1.2)}),
    ("major_trauma", 0.07, "trauma_surgery", [1, 2, 2], ["motor vehicle collision high speed", "fall from height", "stab wound abdomen", "gunshot wound", "pedestrian struck by car"],
     {"heart_rate": (122, 20), "sbp": (92, 20), "dbp": (56, 12), "resp_rate": (24, 5), "spo2": (94, 3), "gcs_total": (13, 2.5), "pain": (8, 1.5)}),
    ("minor_trauma", 0.11, "trauma_surgery", [4, 4, 5, 3], ["ankle injury", "laceration to hand", "fell and hurt wrist", "minor cut on finger", "twisted knee"],
     {"pain": (5, 2)}),
    ("hypoglycaemia", 0.05, "endocrinology", [2, 2, 3], ["diabetic found confused", "low blood sugar", "shaky and sweaty on insulin", "hypo unresponsive to juice"],
     {"glucose": (45, 10), "gcs_total": (12.5, 2), "avpu": (1.2, 1.0), "heart_rate": (102, 14)}),
    ("hyperglycaemia", 0.04, "endocrinology", [2, 3, 3], ["high blood sugar and vomiting", "diabetic ketoacidosis", "excessive thirst and urination", "sugar high feels weak"],
     {"glucose": (430, 110), "heart_rate": (108, 14), "resp_rate": (25, 5), "etco2": (24, 5)}),
    ("resp_distress", 0.09, "pulmonology", [2, 3, 3], ["shortness of breath", "wheezing cant catch breath", "copd exacerbation", "asthma attack", "difficulty breathing"],
     {"resp_rate": (27, 5), "spo2": (89.5, 4), "heart_rate": (108, 15), "etco2": (44, 8)}),
    ("abdominal", 0.09, "general_surgery", [3, 3, 3, 2, 4], ["abdominal pain", "right lower quadrant pain", "vomiting and belly pain", "epigastric pain", "severe stomach ache"],
     {"heart_rate": (94, 14), "temp": (37.6, 0.6), "pain": (6.5, 1.8)}),
    ("psychiatric", 0.06, "psychiatry", [2, 3, 4], ["suicidal thoughts", "anxiety attack", "hearing voices", "agitated and aggressive", "overdose of pills"],
     {"heart_rate": (96, 15), "pain": (1, 1.5)}),
    ("paediatric", 0.08, "pediatrics", [2, 3, 4, 4], ["child with fever", "baby not feeding", "toddler vomiting", "infant fever and rash", "child breathing fast"],
     {"temp": (38.7, 0.7)}),
    ("head_injury", 0.06, "neurology", [2, 3, 1], ["head injury", "hit head lost consciousness", "assault head trauma", "fall hit head on blood thinners"],
     {"gcs_total": (12.5, 2.8), "avpu": (1.0, 1.1), "sbp": (142, 22), "heart_rate": (80, 15), "pain": (5, 2)}),
    ("minor_illness", 0.12, "infectious_disease", [4, 5, 5, 4], ["sore throat", "cough for three days", "itchy rash", "needs medication refill", "earache"],
     {"temp": (37.3, 0.5)}),
]

NOISE_WORDS = ["pt", "c/o", "states", "per family", "x2 days", "since morning"]


def child_vitals(age):
    """Age-appropriate normal HR/RR means (PALS ranges)."""
    if age < 1:
        return (135, 15), (40, 6)
    if age < 3:
        return (120, 14), (30, 5)
    if age < 8:
        return (100, 12), (24, 4)
    return (85, 12), (20, 3)


def noisy(text, rng):
    if rng.random() < 0.3:
        text = f"{rng.choice(NOISE_WORDS)} {text}"
    if rng.random() < 0.1 and len(text) > 6:
        i = rng.randrange(len(text))
        text = text[:i] + text[i + 1:]
    return text


def clamp(name, x):
    lo, hi = {"heart_rate": (20, 250), "resp_rate": (2, 70), "spo2": (60, 100), "sbp": (40, 260), "dbp": (20, 160), "temp": (32.0, 42.5),
              "etco2": (5, 90), "glucose": (15, 1200), "gcs_total": (3, 15), "avpu": (0, 4), "pain": (0, 10)}[name]
    x = min(max(x, lo), hi)
    return round(x, 1) if name == "temp" else float(round(x))


def label(base, v, age):
    """ESI decision points A, B, D applied to the scenario's base acuity."""
    esi = base
    g = lambda k, d: v.get(k) if v.get(k) is not None else d
    if g("spo2", 100) < 85 or g("gcs_total", 15) <= 8 or g("avpu", 0) == 4 or g("sbp", 120) < 80 or g("resp_rate", 16) <= 6:
        return 1
    hr_dz, rr_dz = (100, 20) if age is None or age > 8 else ((140, 30) if age >= 3 else ((160, 40) if age >= 0.25 else (180, 50)))
    if (g("spo2", 100) < 92 or g("gcs_total", 15) < 15 or 1 <= g("avpu", 0) <= 3 or g("heart_rate", 80) > max(hr_dz, 120)
            or g("resp_rate", 16) > max(rr_dz, 28) or g("pain", 0) >= 8 or g("glucose", 100) < 54):
        esi = min(esi, 2)
    return esi


def generate(n, seed=7):
    rng = random.Random(seed)
    weights = [s[1] for s in SCENARIOS]
    rows = []
    for _ in range(n):
        name, _, specialty, bases, complaints, shifts = rng.choices(SCENARIOS, weights)[0]
        if name == "paediatric":
            age = round(rng.uniform(0.05, 12.0), 2)
        else:
            age = round(min(max(rng.gauss(52, 20), 16), 98), 1)
        dist = dict(ADULT)
        if age < 16:
            hr, rr = child_vitals(age)
            dist.update({"heart_rate": hr, "resp_rate": rr, "sbp": (100, 12), "dbp": (62, 8)})
        dist.update(shifts)
        v = {}
        for k in VITALS:
            m, s = dist[k]
            v[k] = clamp(k, rng.gauss(m, s))
        v["avpu"] = 4.0 if v["gcs_total"] <= 8 else (min(v["avpu"], 3.0) if v["gcs_total"] < 15 else 0.0)
        for k in VITALS:
            p = 0.5 if k == "etco2" else (0.35 if k == "glucose" and specialty != "endocrinology" else 0.08)
            if rng.random() < p:
                v[k] = None
        y = label(rng.choice(bases), v, age)
        if rng.random() < 0.05:  # label noise: triage is not perfectly reproducible between nurses
            y = min(5, max(1, y + rng.choice([-1, 1])))
        rows.append({
            "vitals": v,
            "age": None if rng.random() < 0.05 else age,
            "sex": rng.choice(["female", "male"]) if rng.random() > 0.03 else None,
            "on_oxygen": name in ("resp_distress", "major_trauma", "sepsis") and rng.random() < 0.4,
            "complaint": None if rng.random() < 0.04 else noisy(rng.choice(complaints), rng),
            "esi": y,
            "specialty": specialty,
            "scenario": name,
        })
    return rows


def read_mimic_ed_triage(path):
    """Reads MIMIC-IV-ED `triage.csv` (columns subject_id, stay_id, temperature [°F], heartrate,
    resprate, o2sat, sbp, dbp, pain, acuity, chiefcomplaint). Specialty is unknown (None: its
    loss is masked); pain text such as "unable" becomes missing; out-of-range values are dropped."""
    rows = []

    def num(x):
        try:
            f = float(x)
            return None if math.isnan(f) else f
        except (TypeError, ValueError):
            return None

    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            acuity = num(r.get("acuity"))
            if acuity is None or not 1 <= acuity <= 5:
                continue
            t = num(r.get("temperature"))
            v = {k: None for k in VITALS}
            v.update({
                "heart_rate": num(r.get("heartrate")),
                "resp_rate": num(r.get("resprate")),
                "spo2": num(r.get("o2sat")),
                "sbp": num(r.get("sbp")),
                "dbp": num(r.get("dbp")),
                "temp": None if t is None else round((t - 32.0) * 5.0 / 9.0, 1),
                "pain": num(r.get("pain")),
            })
            for k, x in list(v.items()):
                if x is not None and not (0 <= x <= {"temp": 46, "spo2": 100, "pain": 10}.get(k, 400)):
                    v[k] = None
            rows.append({"vitals": v, "age": None, "sex": None, "on_oxygen": False, "complaint": r.get("chiefcomplaint") or None,
                         "esi": int(acuity), "specialty": None, "scenario": "mimic"})
    return rows
