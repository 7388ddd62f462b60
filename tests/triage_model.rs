//! HEMA3N-Core through the real ONNX Runtime (the pinned PyPI wheel's library, installed by
//! scripts/test.sh into .tools/model): Rust features and ONNX outputs against the Python
//! reference fixture, INT8 agreement, tampered artifacts and wrong input shapes.

use std::path::{Path, PathBuf};

mod common;

use common::{dev_model_key, ort_lib};
use hema3n_edge::model::Sex;
use hema3n_edge::triage::features::{TEXT_BUCKETS, text_dense, text_features, vitals_features};
use hema3n_edge::triage::rules::Vitals;
use hema3n_edge::triage::runtime::{LoadOptions, ModelError, ModelRuntime, Provider};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn opts(dir: &Path, variant: &str) -> LoadOptions {
    LoadOptions {
        library: Some(ort_lib()),
        model_dir: dir.to_path_buf(),
        variant: Some(variant.into()),
        trusted_keys: vec![dev_model_key()],
        providers: vec!["tensorrt".into(), "cuda".into(), "cpu".into()],
        engine_cache_dir: std::env::temp_dir().join("hema3n-trt-test"),
        intra_threads: 1,
    }
}

fn model_dir() -> PathBuf {
    root().join("edge-models/hema3n-core")
}

struct Case {
    vitals: Vitals,
    age: Option<f64>,
    sex: Option<Sex>,
    on_oxygen: bool,
    complaint: Option<String>,
    xv: Vec<f32>,
    xt: Vec<(usize, f32)>,
    outputs: Vec<f32>,
}

fn fixture() -> Vec<Case> {
    let text = std::fs::read_to_string(model_dir().join("fixtures/parity.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            let v = |k: &str| j["vitals"][k].as_f64();
            let floats = |k: &str| {
                j[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect::<Vec<_>>()
            };
            let mut outputs = floats("esi_logits");
            outputs.extend(floats("specialty_logits"));
            outputs.extend(floats("confidence"));
            Case {
                vitals: Vitals {
                    heart_rate: v("heart_rate"),
                    resp_rate: v("resp_rate"),
                    spo2: v("spo2"),
                    sbp: v("sbp"),
                    dbp: v("dbp"),
                    temp: v("temp"),
                    etco2: v("etco2"),
                    glucose: v("glucose"),
                    gcs_total: v("gcs_total"),
                    avpu: v("avpu").map(|a| a as u8),
                    pain: v("pain"),
                },
                age: j["age"].as_f64(),
                sex: match j["sex"].as_str() {
                    Some("female") => Some(Sex::Female),
                    Some("male") => Some(Sex::Male),
                    _ => None,
                },
                on_oxygen: j["on_oxygen"].as_bool().unwrap(),
                complaint: j["complaint"].as_str().map(String::from),
                xv: floats("xv"),
                xt: j["xt"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_u64().unwrap() as usize,
                            p[1].as_f64().unwrap() as f32,
                        )
                    })
                    .collect(),
                outputs,
            }
        })
        .collect()
}

#[test]
fn rust_features_and_onnx_fp32_match_the_python_reference_and_int8_mostly_agrees() {
    let cases = fixture();
    assert!(cases.len() >= 1000, "fixture has {} cases", cases.len());
    let mut fp32 = ModelRuntime::load(&opts(&model_dir(), "fp32")).unwrap();
    let mut int8 = ModelRuntime::load(&opts(&model_dir(), "int8")).unwrap();
    assert_eq!(fp32.info.provider, Provider::Cpu);
    assert!(
        !fp32.info.fallbacks.is_empty(),
        "TensorRT and CUDA fallbacks are reported"
    );
    let mut text = [0f32; TEXT_BUCKETS];
    let (mut worst, mut agree) = (0f32, 0usize);
    for (n, c) in cases.iter().enumerate() {
        let xv = vitals_features(&c.vitals, c.age, c.sex, c.on_oxygen, c.complaint.as_deref());
        assert_eq!(xv.to_vec(), c.xv, "case {n}: vitals features differ");
        let xt = text_features(c.complaint.as_deref());
        assert_eq!(
            xt, c.xt,
            "case {n}: text features differ ({:?})",
            c.complaint
        );
        text_dense(&xt, &mut text);
        let o = fp32.infer(&xv, &text).unwrap();
        let mut got = o.esi_logits.to_vec();
        got.extend(o.specialty_logits);
        got.push(o.confidence);
        for (g, w) in got.iter().zip(&c.outputs) {
            worst = worst.max((g - w).abs());
        }
        let q = int8.infer(&xv, &text).unwrap();
        let am = |z: &[f32]| {
            z.iter()
                .enumerate()
                .fold(0, |b, (i, x)| if *x > z[b] { i } else { b })
        };
        agree += usize::from(am(&q.esi_logits) == am(&c.outputs[..5]));
    }
    assert!(worst <= 1e-5, "largest FP32 output difference {worst}");
    let rate = agree as f64 / cases.len() as f64;
    eprintln!(
        "FP32 max abs diff {worst:e}; INT8 vs FP32 ESI agreement {rate:.3} on {} cases",
        cases.len()
    );
    assert!(rate >= 0.9, "INT8 agrees with FP32 on only {rate:.3}");
}

#[test]
fn a_tampered_model_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "manifest.toml",
        "manifest.sig",
        "hema3n-core.int8.onnx",
        "hema3n-core.fp32.onnx",
    ] {
        std::fs::copy(model_dir().join(f), tmp.path().join(f)).unwrap();
    }
    let p = tmp.path().join("hema3n-core.int8.onnx");
    let mut b = std::fs::read(&p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&p, b).unwrap();
    let e = ModelRuntime::load(&opts(tmp.path(), "int8")).unwrap_err();
    assert!(matches!(e, ModelError::Tampered { .. }), "{e}");
    assert!(e.to_string().contains("does not match its manifest"), "{e}");
    // The untouched variant still loads.
    assert!(ModelRuntime::load(&opts(tmp.path(), "fp32")).is_ok());
    let e = ModelRuntime::load(&opts(tmp.path(), "fp16")).unwrap_err();
    assert!(e.to_string().contains("no artifact `fp16`"), "{e}");
}

#[test]
fn a_wrong_input_shape_is_an_error_not_a_crash() {
    let mut rt = ModelRuntime::load(&opts(&model_dir(), "int8")).unwrap();
    let e = rt
        .run_raw(&[0.0; 27], [1, 27], &[0.0; TEXT_BUCKETS], [1, TEXT_BUCKETS])
        .unwrap_err();
    assert!(matches!(e, ModelError::Inference(_)), "{e}");
    // And the session keeps working afterwards.
    assert!(rt.infer(&[0.0; 28], &[0.0; TEXT_BUCKETS]).is_ok());
}
