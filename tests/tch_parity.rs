//! libtorch parity (cargo feature `tch-backend`, run by scripts/tch-parity.sh): the TorchScript
//! reference network and the ONNX FP32 path agree on the committed 1000-case fixture.
#![cfg(feature = "tch-backend")]

mod common;

use hema3n_edge::triage::features::{TEXT_BUCKETS, text_dense, text_features, vitals_features};
use hema3n_edge::triage::runtime::{LoadOptions, ModelRuntime};
use hema3n_edge::triage::torch::TorchModel;

#[test]
fn torchscript_reference_and_onnx_runtime_agree_on_the_fixture() {
    let ts = std::env::var("HEMA3N_TORCHSCRIPT")
        .expect("HEMA3N_TORCHSCRIPT: path of the export (scripts/tch-parity.sh sets it)");
    let torch = TorchModel::load(std::path::Path::new(&ts)).unwrap();
    let mut onnx = ModelRuntime::load(&LoadOptions {
        library: Some(common::ort_lib()),
        model_dir: common::model_dir(),
        variant: Some("fp32".into()),
        trusted_keys: vec![common::dev_model_key()],
        providers: vec!["cpu".into()],
        engine_cache_dir: std::env::temp_dir(),
        intra_threads: 1,
    })
    .unwrap();
    let text = std::fs::read_to_string(common::model_dir().join("fixtures/parity.jsonl")).unwrap();
    let mut worst = 0f32;
    let mut dense = [0f32; TEXT_BUCKETS];
    let mut n = 0;
    for line in text.lines() {
        let j: serde_json::Value = serde_json::from_str(line).unwrap();
        let xv: Vec<f32> = j["xv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let xv: [f32; 28] = xv.try_into().unwrap();
        let pairs: Vec<(usize, f32)> = j["xt"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_u64().unwrap() as usize,
                    p[1].as_f64().unwrap() as f32,
                )
            })
            .collect();
        assert_eq!(pairs, text_features(j["complaint"].as_str()));
        let _ = vitals_features; // features are checked bit-for-bit by tests/triage_model.rs
        text_dense(&pairs, &mut dense);
        let a = torch.infer(&xv, &dense).unwrap();
        let b = onnx.infer(&xv, &dense).unwrap();
        for (x, y) in a
            .esi_logits
            .iter()
            .chain(&a.specialty_logits)
            .zip(b.esi_logits.iter().chain(&b.specialty_logits))
        {
            worst = worst.max((x - y).abs());
        }
        worst = worst.max((a.confidence - b.confidence).abs());
        n += 1;
    }
    eprintln!("libtorch vs ONNX Runtime: max abs difference {worst:e} over {n} cases");
    assert!(n >= 1000);
    assert!(worst <= 1e-4, "max abs difference {worst}");
}
