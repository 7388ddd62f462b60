//! Fuzz target: the SenML parser never panics, and whatever it accepts obeys the vocabulary.
#![no_main]

use hema3n_edge::ingest::senml::{Limits, parse_pack};
use hema3n_edge::vocab;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let lim = Limits::default();
    match parse_pack(data, NOW, &lim) {
        Ok(readings) => {
            assert!(!readings.is_empty() && readings.len() <= lim.max_records);
            for r in &readings {
                let v = vocab::lookup(r.code).expect("accepted names are in the vocabulary");
                assert!(r.value.is_finite() && r.value >= v.min && r.value <= v.max, "{r:?}");
                assert!(r.device_time_ms <= NOW + lim.max_future_ms && r.device_time_ms >= NOW - lim.max_age_ms);
            }
        }
        Err(rej) => {
            assert!(!rej.message.is_empty());
            let _ = rej.to_json();
        }
    }
});
