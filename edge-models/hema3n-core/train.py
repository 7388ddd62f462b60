"""Trains, evaluates, exports (ONNX FP32 + INT8 QDQ) and documents HEMA3N-Core.

    python train.py [--mimic triage.csv] [--n 30000] [--epochs 30] [--out .]

Writes hema3n-core.fp32.onnx, hema3n-core.int8.onnx, manifest.toml, metrics.json,
MODEL_CARD.md and fixtures/parity.jsonl (1000 test cases: raw inputs, features, FP32 outputs).
Deterministic for a given seed and library versions.
"""
import argparse
import hashlib
import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

import cohort
import model
from features import (AGE_NORM, ESI_LEVELS, N_VITALS, NORM, SPECIALTIES, TEXT_BUCKETS, VITALS, text_features,
                      vitals_features)

VERSION = "1.0.0"
MODEL_ID = f"hema3n-core-{VERSION}"


def featurize(rows):
    xv = np.array([vitals_features(r["vitals"], r["age"], r["sex"], r["on_oxygen"], r["complaint"]) for r in rows], dtype=np.float32)
    xt = [text_features(r["complaint"]) for r in rows]
    y = np.array([r["esi"] - 1 for r in rows], dtype=np.int64)
    ys = np.array([SPECIALTIES.index(r["specialty"]) if r["specialty"] else -1 for r in rows], dtype=np.int64)
    return xv, xt, y, ys


def dense(xt):
    out = np.zeros((len(xt), TEXT_BUCKETS), dtype=np.float32)
    for i, d in enumerate(xt):
        for b, v in d.items():
            out[i, b] = v
    return out


class Dense:
    """Sparse text rows densified per batch (the full matrix would not fit comfortably)."""
    def __init__(self, xt):
        self.xt = xt

    def __getitem__(self, idx):
        return dense([self.xt[i] for i in idx])


def train_model(xv, xt, y, ys, epochs, log):
    p = model.init()
    rng = np.random.default_rng(5)
    counts = np.bincount(y, minlength=5).astype(np.float32) + 1
    w = (counts.sum() / (5 * counts)) ** 0.5
    w[:2] *= 1.5
    w = w.astype(np.float32)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    s = {k: np.zeros_like(v) for k, v in p.items()}
    xtd = Dense(xt)
    t = 0
    for ep in range(epochs):
        idx = rng.permutation(len(y))
        total = 0.0
        for i in range(0, len(idx), 256):
            b = idx[i:i + 256]
            loss, g = model.loss_and_grads(p, xv[b], xtd[b], y[b], ys[b], w)
            total += loss * len(b)
            t += 1
            lr = 2e-3 * (0.5 if ep >= epochs * 0.7 else 1.0)
            for k in p:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                s[k] = 0.999 * s[k] + 0.001 * g[k] ** 2
                p[k] = (p[k] - lr * (m[k] / (1 - 0.9 ** t)) / (np.sqrt(s[k] / (1 - 0.999 ** t)) + 1e-8)).astype(np.float32)
        if ep % 5 == 4 or ep == epochs - 1:
            log(f"epoch {ep + 1}/{epochs}: loss {total / len(idx):.4f}")
    return p


def to_onnx(p, path):
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    n = []
    def dense_layer(x, name, out, act=True):
        n.append(helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"]))
        n.append(helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [f"{name}.z" if act else out]))
        if act:
            n.append(helper.make_node("Relu", [f"{name}.z"], [out]))
    dense_layer("vitals", "v1", "h1")
    dense_layer("h1", "v2", "h2")
    n.append(helper.make_node("MatMul", ["text", "emb.w"], ["e"]))
    dense_layer("e", "t1", "h3")
    n.append(helper.make_node("Concat", ["h2", "h3"], ["f"], axis=1))
    dense_layer("f", "f1", "h4")
    dense_layer("h4", "esi", "esi_logits", act=False)
    dense_layer("h4", "spec", "specialty_logits", act=False)
    dense_layer("h4", "conf", "conf_z", act=False)
    n.append(helper.make_node("Sigmoid", ["conf_z"], ["confidence"]))
    g = helper.make_graph(
        n, "hema3n_core",
        [helper.make_tensor_value_info("vitals", TensorProto.FLOAT, ["N", N_VITALS]),
         helper.make_tensor_value_info("text", TensorProto.FLOAT, ["N", TEXT_BUCKETS])],
        [helper.make_tensor_value_info("esi_logits", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("specialty_logits", TensorProto.FLOAT, ["N", 9]),
         helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["N", 1])],
        inits,
    )
    m = helper.make_model(g, producer_name="hema3n-edge-models", producer_version=VERSION, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9  # loadable by ONNX Runtime ≥ 1.16 (the Jetson images' baseline)
    m.doc_string = f"{MODEL_ID}: trained on a synthetic cohort; not clinically validated"
    onnx.checker.check_model(m)
    onnx.save(m, path)


class Calib(CalibrationDataReader):
    def __init__(self, xv, xt):
        self.items = iter([{"vitals": xv[i:i + 1], "text": dense([xt[i]])} for i in range(len(xt))])

    def get_next(self):
        return next(self.items, None)


def run(sess, xv, xt, bs=512):
    outs = [[], [], []]
    for i in range(0, len(xt), bs):
        r = sess.run(None, {"vitals": xv[i:i + bs], "text": dense(xt[i:i + bs])})
        for o, x in zip(outs, r):
            o.append(x)
    return [np.concatenate(o) for o in outs]


def metrics(y, pred, ys, spec_pred, conf):
    cm = np.zeros((5, 5), dtype=int)
    for a, b in zip(y, pred):
        cm[a, b] += 1
    per = {}
    for c in range(5):
        tp = cm[c, c]; fp = cm[:, c].sum() - tp; fn = cm[c, :].sum() - tp
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        per[f"ESI {c + 1}"] = {"support": int(cm[c].sum()), "precision": round(prec, 3), "recall": round(rec, 3),
                               "f1": round(2 * prec * rec / (prec + rec), 3) if prec + rec else 0.0}
    hi = y <= 1
    known = ys >= 0
    right = pred == y
    return {
        "accuracy": round(float(right.mean()), 4),
        "within_one_level": round(float((np.abs(pred - y) <= 1).mean()), 4),
        "under_triage_true_esi_1_2": round(float((pred[hi] >= 2).mean()), 4),
        "over_triage_true_esi_4_5": round(float((pred[y >= 3] <= 1).mean()), 4),
        "per_class": per,
        "confusion_matrix": cm.tolist(),
        "specialty_accuracy": round(float((spec_pred[known] == ys[known]).mean()), 4) if known.any() else None,
        "mean_confidence_correct": round(float(conf[right].mean()), 3),
        "mean_confidence_wrong": round(float(conf[~right].mean()), 3) if (~right).any() else None,
    }


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def latency(path, xv, xt, n=2000):
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = [{"vitals": xv[i:i + 1], "text": dense([xt[i]])} for i in range(min(n, len(xt)))]
    for f in feeds[:100]:
        s.run(None, f)
    ts = []
    for f in feeds:
        t = time.perf_counter(); s.run(None, f); ts.append((time.perf_counter() - t) * 1e6)
    ts.sort()
    return {"p50_us": round(ts[len(ts) // 2], 1), "p99_us": round(ts[int(len(ts) * 0.99)], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mimic", help="MIMIC-IV-ED triage.csv to train on instead of the synthetic cohort")
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    a = ap.parse_args()
    log = lambda m: print(f"[train] {m}", flush=True)
    rows = cohort.read_mimic_ed_triage(a.mimic) if a.mimic else cohort.generate(a.n)
    data = "MIMIC-IV-ED triage" if a.mimic else f"synthetic cohort, n={a.n}, seed 7"
    log(f"{len(rows)} cases from {data}")
    xv, xt, y, ys = featurize(rows)
    n = len(rows); ntr, nva = int(n * 0.8), int(n * 0.9)
    p = train_model(xv[:ntr], xt[:ntr], y[:ntr], ys[:ntr], a.epochs, log)

    fp32 = os.path.join(a.out, "hema3n-core.fp32.onnx")
    int8 = os.path.join(a.out, "hema3n-core.int8.onnx")
    to_onnx(p, fp32)
    so = ort.SessionOptions(); so.intra_op_num_threads = 1
    s32 = ort.InferenceSession(fp32, so, providers=["CPUExecutionProvider"])
    te = slice(nva, n)
    xv_te, xt_te, y_te, ys_te = xv[te], xt[te], y[te], ys[te]
    ref = model.forward(p, xv_te[:256], dense(xt_te[:256]))
    got = s32.run(None, {"vitals": xv_te[:256], "text": dense(xt_te[:256])})
    assert all(np.abs(r - g).max() < 1e-4 for r, g in zip(ref, got)), "ONNX export differs from the NumPy network"

    quantize_static(fp32, int8, Calib(xv[:500], xt[:500]), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    s8 = ort.InferenceSession(int8, so, providers=["CPUExecutionProvider"])
    e32, sp32, c32 = run(s32, xv_te, xt_te)
    e8, sp8, c8 = run(s8, xv_te, xt_te)
    m32 = metrics(y_te, e32.argmax(1), ys_te, sp32.argmax(1), c32[:, 0])
    m8 = metrics(y_te, e8.argmax(1), ys_te, sp8.argmax(1), c8[:, 0])
    agree = float((e32.argmax(1) == e8.argmax(1)).mean())
    lat = {"fp32": latency(fp32, xv_te, xt_te), "int8": latency(int8, xv_te, xt_te)}
    n_params = int(sum(v.size for v in p.values()))
    log(f"test accuracy fp32 {m32['accuracy']}, int8 {m8['accuracy']}, fp32/int8 ESI agreement {agree:.4f}")
    log(f"under-triage of true ESI 1-2: fp32 {m32['under_triage_true_esi_1_2']}, int8 {m8['under_triage_true_esi_1_2']}")

    # Parity fixture: raw inputs, features and FP32 outputs for 1000 test cases.
    os.makedirs(os.path.join(a.out, "fixtures"), exist_ok=True)
    with open(os.path.join(a.out, "fixtures", "parity.jsonl"), "w") as f:
        for i in range(min(1000, n - nva)):
            r = rows[nva + i]
            f.write(json.dumps({
                "vitals": r["vitals"], "age": r["age"], "sex": r["sex"], "on_oxygen": r["on_oxygen"], "complaint": r["complaint"],
                "xv": [float(x) for x in xv_te[i]],
                "xt": sorted([[int(b), float(np.float32(v))] for b, v in xt_te[i].items()]),
                "esi_logits": [float(x) for x in e32[i]], "specialty_logits": [float(x) for x in sp32[i]], "confidence": [float(c32[i, 0])],
            }) + "\n")

    res = {"model_id": MODEL_ID, "data": data, "n_train": ntr, "n_test": n - nva, "parameters": n_params,
           "fp32": m32, "int8": m8, "fp32_int8_esi_agreement": round(agree, 4), "latency_cpu_1_thread": lat,
           "size_bytes": {"fp32": os.path.getsize(fp32), "int8": os.path.getsize(int8)}}
    with open(os.path.join(a.out, "metrics.json"), "w") as f:
        json.dump(res, f, indent=1)
    write_manifest(a.out, fp32, int8, res)
    write_card(a.out, res)
    log("done")


def write_manifest(out, fp32, int8, res):
    norm = "\n".join(f'{k} = [{m}, {s}]' for k, (m, s) in NORM.items())
    text = f'''# HEMA3N-Core model manifest. The daemon verifies every artifact's SHA-256 before loading it.
model_id = "{MODEL_ID}"
version = "{VERSION}"
clinically_validated = false
data = "{res["data"]}"
default = "int8"

[artifacts.fp32]
file = "hema3n-core.fp32.onnx"
sha256 = "{sha256(fp32)}"

[artifacts.int8]
file = "hema3n-core.int8.onnx"
sha256 = "{sha256(int8)}"
quantization = "QDQ, activations uint8, weights int8, per-tensor, static calibration on 500 cases"

[inputs]
vitals = {{ dtype = "float32", shape = ["N", {N_VITALS}] }}
text = {{ dtype = "float32", shape = ["N", {TEXT_BUCKETS}] }}

[outputs]
esi_logits = {{ dtype = "float32", shape = ["N", 5], labels = {json.dumps([f"ESI {e}" for e in ESI_LEVELS])} }}
specialty_logits = {{ dtype = "float32", shape = ["N", 9], labels = {json.dumps(SPECIALTIES)} }}
confidence = {{ dtype = "float32", shape = ["N", 1] }}

[features]
vitals_order = {json.dumps(VITALS)}
age = [{AGE_NORM[0]}, {AGE_NORM[1]}]
text_buckets = {TEXT_BUCKETS}
text_hash = "fnv1a32"
text_grams = "unigrams+bigrams"

[features.normalisation]
{norm}
'''
    with open(os.path.join(out, "manifest.toml"), "w") as f:
        f.write(text)


def write_card(out, r):
    m32, m8 = r["fp32"], r["int8"]
    rows = "\n".join(f"| {k} | {v['support']} | {v['precision']} | {v['recall']} | {v['f1']} |" for k, v in m32["per_class"].items())
    card = f'''# MODEL CARD — {r["model_id"]}

> **Not clinically validated.** Trained on a synthetic cohort. It must never be used as the sole
> basis of a triage decision. In the daemon it only proposes a level; the rules engine (NEWS2 +
> ESI decision points) sets a floor the final level can never be less acute than.

## What it is
A small multi-task network ({r["parameters"]:,} parameters): a vitals tower (2 × 64, ReLU) and a
chief-complaint encoder (hashed unigram+bigram mean embedding bag, 2048 buckets × 64, then 32 ReLU),
fused (64, ReLU), with three heads: ESI level 1–5, specialty routing over 9 specialties, and a
confidence that the ESI proposal is right. Inputs and normalisation: `manifest.toml`.

## Data
{r["data"]}: scenario mix of acute coronary syndrome, stroke, sepsis, major and minor trauma,
hypo- and hyperglycaemia, respiratory distress, abdominal pain, psychiatric emergencies,
paediatric fever, head injury and minor illness; vitals drawn around published adult (and PALS
paediatric) normal ranges shifted by each condition's typical derangement; 4–50 % missingness per
vital; ESI labels from the scenario's base acuity with ESI decision points applied and 5 % label
noise. 80/10/10 train/validation/test split. `train.py --mimic triage.csv` trains on the MIMIC-IV-ED
triage table instead (specialty loss masked). Generator: `cohort.py`.

## Results on the held-out synthetic test set (n = {r["n_test"]})
| class | support | precision | recall | F1 |
|---|---|---|---|---|
{rows}

| metric | FP32 | INT8 (QDQ) |
|---|---|---|
| ESI accuracy | {m32["accuracy"]} | {m8["accuracy"]} |
| within one level | {m32["within_one_level"]} | {m8["within_one_level"]} |
| **under-triage of true ESI 1–2** (predicted 3–5) | {m32["under_triage_true_esi_1_2"]} | {m8["under_triage_true_esi_1_2"]} |
| over-triage of true ESI 4–5 to 1–2 | {m32["over_triage_true_esi_4_5"]} | {m8["over_triage_true_esi_4_5"]} |
| specialty accuracy | {m32["specialty_accuracy"]} | {m8["specialty_accuracy"]} |
| mean confidence when right / wrong | {m32["mean_confidence_correct"]} / {m32["mean_confidence_wrong"]} | {m8["mean_confidence_correct"]} / {m8["mean_confidence_wrong"]} |

FP32 vs INT8 ESI agreement: **{r["fp32_int8_esi_agreement"]}**. Size: FP32 {r["size_bytes"]["fp32"]:,} B,
INT8 {r["size_bytes"]["int8"]:,} B. Python ONNX Runtime CPU latency, 1 thread, batch 1: FP32
p50 {r["latency_cpu_1_thread"]["fp32"]["p50_us"]} µs / p99 {r["latency_cpu_1_thread"]["fp32"]["p99_us"]} µs; INT8 p50
{r["latency_cpu_1_thread"]["int8"]["p50_us"]} µs / p99 {r["latency_cpu_1_thread"]["int8"]["p99_us"]} µs (the daemon's Rust path: `scripts/bench.sh triage`).
These numbers describe agreement with the generator's own labelling rules, not clinical accuracy.

## Intended use and limits
Decision support for EMS crews, on an appliance whose rules engine enforces the safety floor.
Not for children under 3 months without clinician review; not calibrated on real patients; the
text encoder knows only the generator's phrasing. Specialty LoRA adapters are not shipped: ONNX
Runtime's adapter API needs API level 20, above the api-17 baseline the Jetson images guarantee.

## Reproduce
`./scripts/train-model.sh` (pinned `requirements.txt`, fixed seeds).
'''
    with open(os.path.join(out, "MODEL_CARD.md"), "w") as f:
        f.write(card)


if __name__ == "__main__":
    main()
