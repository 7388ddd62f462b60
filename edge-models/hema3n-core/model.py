"""HEMA3N-Core in NumPy: vitals tower + chief-complaint text encoder, fused, with three heads.

    vitals [N,28] -> Dense 64 ReLU -> Dense 64 ReLU ----------------------.
    text [N,2048] -> MatMul E[2048,64] (mean embedding bag) -> Dense 32 ReLU -+-> concat 96
    -> Dense 64 ReLU -> esi_logits [N,5] | specialty_logits [N,9] | confidence = sigmoid [N,1]

Trained (train.py) with Adam on cross-entropy (ESI, class-weighted towards ESI 1-2), masked
cross-entropy (specialty) and binary cross-entropy (confidence = "the ESI argmax is right").
"""
import numpy as np

from features import N_VITALS, TEXT_BUCKETS

LAYERS = {  # name: (fan_in, fan_out)
    "v1": (N_VITALS, 64), "v2": (64, 64),
    "emb": (TEXT_BUCKETS, 64), "t1": (64, 32),
    "f1": (96, 64), "esi": (64, 5), "spec": (64, 9), "conf": (64, 1),
}


def init(seed=11):
    rng = np.random.default_rng(seed)
    p = {}
    for k, (i, o) in LAYERS.items():
        scale = 0.05 if k == "emb" else np.sqrt(2.0 / i)
        p[k + ".w"] = (rng.standard_normal((i, o)) * scale).astype(np.float32)
        if k != "emb":
            p[k + ".b"] = np.zeros(o, dtype=np.float32)
    return p


def forward(p, xv, xt, cache=False):
    relu = lambda z: np.maximum(z, 0)
    a1 = xv @ p["v1.w"] + p["v1.b"]; h1 = relu(a1)
    a2 = h1 @ p["v2.w"] + p["v2.b"]; h2 = relu(a2)
    e = xt @ p["emb.w"]
    a3 = e @ p["t1.w"] + p["t1.b"]; h3 = relu(a3)
    f = np.concatenate([h2, h3], axis=1)
    a4 = f @ p["f1.w"] + p["f1.b"]; h4 = relu(a4)
    esi = h4 @ p["esi.w"] + p["esi.b"]
    spec = h4 @ p["spec.w"] + p["spec.b"]
    conf = 1.0 / (1.0 + np.exp(-(h4 @ p["conf.w"] + p["conf.b"])))
    if cache:
        return esi, spec, conf, dict(xv=xv, xt=xt, a1=a1, h1=h1, a2=a2, h2=h2, e=e, a3=a3, h3=h3, f=f, a4=a4, h4=h4)
    return esi, spec, conf


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(p, xv, xt, y_esi, y_spec, w_esi):
    n = xv.shape[0]
    esi, spec, conf, c = forward(p, xv, xt, cache=True)
    pe = softmax(esi)
    w = w_esi[y_esi]
    loss = -(w * np.log(pe[np.arange(n), y_esi] + 1e-9)).sum() / w.sum()
    d_esi = pe.copy(); d_esi[np.arange(n), y_esi] -= 1; d_esi *= (w / w.sum())[:, None]
    mask = y_spec >= 0
    ps = softmax(spec)
    d_spec = np.zeros_like(ps)
    if mask.any():
        m = mask.sum()
        ys = y_spec[mask]
        loss += 0.5 * -np.log(ps[mask][np.arange(m), ys] + 1e-9).mean()
        d = ps[mask].copy(); d[np.arange(m), ys] -= 1
        d_spec[mask] = 0.5 * d / m
    right = (esi.argmax(axis=1) == y_esi).astype(np.float32)[:, None]
    loss += 0.2 * -(right * np.log(conf + 1e-9) + (1 - right) * np.log(1 - conf + 1e-9)).mean()
    d_conf = 0.2 * (conf - right) / n
    g = {}
    g["esi.w"] = c["h4"].T @ d_esi; g["esi.b"] = d_esi.sum(0)
    g["spec.w"] = c["h4"].T @ d_spec; g["spec.b"] = d_spec.sum(0)
    g["conf.w"] = c["h4"].T @ d_conf; g["conf.b"] = d_conf.sum(0)
    dh4 = d_esi @ p["esi.w"].T + d_spec @ p["spec.w"].T + d_conf @ p["conf.w"].T
    da4 = dh4 * (c["a4"] > 0)
    g["f1.w"] = c["f"].T @ da4; g["f1.b"] = da4.sum(0)
    df = da4 @ p["f1.w"].T
    dh2, dh3 = df[:, :64], df[:, 64:]
    da3 = dh3 * (c["a3"] > 0)
    g["t1.w"] = c["e"].T @ da3; g["t1.b"] = da3.sum(0)
    de = da3 @ p["t1.w"].T
    g["emb.w"] = c["xt"].T @ de
    da2 = dh2 * (c["a2"] > 0)
    g["v2.w"] = c["h1"].T @ da2; g["v2.b"] = da2.sum(0)
    da1 = (da2 @ p["v2.w"].T) * (c["a1"] > 0)
    g["v1.w"] = c["xv"].T @ da1; g["v1.b"] = da1.sum(0)
    return loss, g
