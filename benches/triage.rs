//! `scripts/bench.sh triage`: the daemon's triage compute path (features + rules + inference +
//! post-processing) against a raw ONNX Runtime `run` of the same model with the same, already
//! built input tensors — FP32 and INT8, single-threaded, batch 1, in the same run.

use std::time::{Duration, Instant};

use hema3n_edge::ingest::senml::{Limits, parse_pack};
use hema3n_edge::ingest::simulate::{Rng, Scenario, pack};
use hema3n_edge::triage::engine::{TriageInput, compute};
use hema3n_edge::triage::features::{TEXT_BUCKETS, text_dense, text_features, vitals_features};
use hema3n_edge::triage::rules::Vitals;
use hema3n_edge::triage::runtime::{LoadOptions, ModelRuntime};

mod common;
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod harness;
use common::{bench_line, pct, quick};

fn inputs(n: usize) -> Vec<TriageInput> {
    let mut rng = Rng::new(3);
    let complaints = [
        "chest pain radiating to left arm",
        "shortness of breath",
        "fall from height",
        "fever and confusion",
        "ankle injury",
    ];
    (0..n)
        .map(|k| {
            let s = Scenario::ALL[k % 5];
            let t = 1_800_000_000_000;
            let (body, _) = pack("d", s, (k % 10) as f64 / 10.0, t, 11, 0, &mut rng);
            let mut v = Vitals::default();
            for r in parse_pack(body.as_bytes(), t, &Limits::default()).unwrap() {
                v.set(r.code, r.value);
            }
            TriageInput {
                vitals: v,
                age_years: Some(20.0 + (k % 60) as f64),
                chief_complaint: Some(complaints[k % 5].into()),
                ..Default::default()
            }
        })
        .collect()
}

fn main() {
    let n = if quick() { 2_000 } else { 20_000 };
    let cases = inputs(256);
    println!("## triage: batch 1, 1 intra-op thread, CPU, {n} runs per measurement");
    for variant in ["fp32", "int8"] {
        let mut rt = ModelRuntime::load(&LoadOptions {
            library: Some(harness::ort_lib()),
            model_dir: harness::model_dir(),
            variant: Some(variant.into()),
            trusted_keys: vec![harness::dev_model_key()],
            providers: vec!["cpu".into()],
            engine_cache_dir: std::env::temp_dir(),
            intra_threads: 1,
        })
        .unwrap();
        // Raw: the same model, input tensors built beforehand, only the ONNX Runtime run.
        let pre: Vec<([f32; 28], Box<[f32; TEXT_BUCKETS]>)> = cases
            .iter()
            .map(|c| {
                let mut t = Box::new([0f32; TEXT_BUCKETS]);
                text_dense(&text_features(c.chief_complaint.as_deref()), &mut t);
                (
                    vitals_features(
                        &c.vitals,
                        c.age_years,
                        c.sex,
                        c.on_oxygen,
                        c.chief_complaint.as_deref(),
                    ),
                    t,
                )
            })
            .collect();
        let mut raw: Vec<Duration> = Vec::with_capacity(n);
        let mut full: Vec<Duration> = Vec::with_capacity(n);
        let mut text = Box::new([0f32; TEXT_BUCKETS]);
        for k in 0..n + 500 {
            let (xv, xt) = &pre[k % pre.len()];
            let t = Instant::now();
            std::hint::black_box(rt.infer(xv, xt).unwrap());
            let d_raw = t.elapsed();
            let t = Instant::now();
            std::hint::black_box(compute(
                &cases[k % cases.len()],
                Some(&mut rt),
                3,
                &mut text,
            ));
            let d_full = t.elapsed();
            if k >= 500 {
                raw.push(d_raw);
                full.push(d_full);
            }
        }
        let (r50, r99, f50, f99) = (
            pct(&mut raw, 0.5),
            pct(&mut raw, 0.99),
            pct(&mut full, 0.5),
            pct(&mut full, 0.99),
        );
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{variant}: raw ort run p50 {:.1} µs p99 {:.1} µs | compute path p50 {:.1} µs p99 {:.1} µs | overhead p50 {:+.1} %",
            us(r50),
            us(r99),
            us(f50),
            us(f99),
            (us(f50) / us(r50) - 1.0) * 100.0
        );
        bench_line(
            &format!("triage_compute_p50_us_{variant}"),
            us(f50),
            "us",
            us(r50),
        );
        bench_line(
            &format!("triage_compute_p99_us_{variant}"),
            us(f99),
            "us",
            us(r99),
        );
        if variant == "int8" {
            bench_line("triage_compute_p50_us", us(f50), "us", us(r50));
            bench_line("triage_compute_p99_us", us(f99), "us", us(r99));
        }
    }
}
