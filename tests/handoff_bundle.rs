//! Compact case bundles and the handoff document, on the full sample case stretched to a long
//! transport (1,320 device readings with gaps, irregular and manual readings among them):
//! - the bundle is valid FHIR R4 (fhir.resources), dense series are SampledData, and every
//!   reading is rebuilt from the bundle exactly (value, device, device time, arrival time);
//! - the handoff PDF it carries matches its SHA-256, and its text (`pdftotext`) holds the times,
//!   the interventions, the triage and its reasons, in MIST and in SBAR.

mod common;

use std::process::Command;

use common::record::full_case;
use hema3n_edge::handoff::{self, Format};
use hema3n_edge::model::{CaseExport, Observation};
use hema3n_edge::sync::fhir::{self, Extras, Profile};
use hema3n_edge::sync::fhir_series::{Rebuilt, readings_from_bundle};

/// The sample case with 120 rounds of 11 device vitals at 15 s (a 30-minute transport), two
/// dropped rounds, one late-clocked reading and its manual readings.
fn long_case() -> CaseExport {
    let mut x = full_case();
    let t0 = x.created_at_ms + 60_000;
    let mut id = 10_000;
    for i in 0..122_i64 {
        if i == 40 || i == 41 {
            continue; // the monitor dropped two rounds
        }
        for (code, v) in [
            ("heart_rate", 110.0 + (i % 7) as f64),
            ("resp_rate", 24.0),
            ("spo2", 93.0 - (i % 3) as f64),
            ("sbp", 100.0 + (i % 5) as f64),
            ("dbp", 60.0),
            ("temp", 37.9 + (i % 2) as f64 / 10.0),
            ("etco2", 33.0),
            ("gcs_total", 14.0),
            ("avpu", (i % 2) as f64),
            ("pain", 6.0),
            ("glucose", 120.0),
        ] {
            id += 1;
            x.readings.push(Observation {
                id,
                device_id: Some("mon-long".into()),
                code: code.into(),
                value: v,
                device_time_ms: t0 + i * 15_000,
                recv_time_ms: t0 + i * 15_000 + 20 + (id % 13),
                source: "device".into(),
            });
        }
    }
    // One reading off the grid (a clock step): it stays an individual Observation.
    x.readings.push(Observation {
        id: id + 1,
        device_id: Some("mon-long".into()),
        code: "heart_rate".into(),
        value: 121.0,
        device_time_ms: t0 + 122 * 15_000 + 3_333,
        recv_time_ms: t0 + 122 * 15_000 + 3_400,
        source: "device".into(),
    });
    x.devices.push(("mon-long".into(), "monitor".into()));
    x
}

fn key(r: &Rebuilt) -> (String, Option<String>, i64, i64, u64) {
    (
        r.loinc.clone(),
        r.device.clone(),
        r.device_time_ms,
        r.recv_time_ms,
        r.value.to_bits(),
    )
}

fn pdftotext(pdf: &[u8], dir: &std::path::Path, name: &str) -> String {
    std::fs::write(dir.join(format!("{name}.pdf")), pdf).unwrap();
    common::pdf_text(pdf)
}

#[test]
fn a_long_transport_bundle_is_compact_valid_and_loses_no_reading() {
    let dir = tempfile::tempdir().unwrap();
    let x = long_case();
    assert!(x.readings.len() > 1_300, "{}", x.readings.len());
    let now = x.closed_at_ms.unwrap();
    let h = handoff::build(&x, now);
    let pdf = handoff::pdf::render(&h, h.suggested, now).unwrap();
    let extras = Extras {
        handoff_pdf: Some(&pdf),
        ..Default::default()
    };
    let b = fhir::build_with(
        &x,
        "01900000-0000-7000-8000-0000000000ee",
        Profile::Case,
        now,
        &extras,
    );
    let json = serde_json::to_vec(&b).unwrap();
    let f = dir.path().join("long.json");
    std::fs::write(&f, &json).unwrap();
    let report = common::cloud::fhir_validate(std::slice::from_ref(&f));
    assert!(report.starts_with("OK "), "{report}");

    // Dense series are SampledData; the rest stay individual.
    let sampled = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"].get("valueSampledData").is_some())
        .count();
    // 11 vitals of mon-long, each one run across the two-round gap (≤ MAX_GAP).
    assert_eq!(sampled, 11, "{report}");

    // Nothing lost: every reading comes back exactly.
    let mut want: Vec<_> = x
        .readings
        .iter()
        .map(|o| {
            key(&Rebuilt {
                loinc: hema3n_edge::vocab::lookup(&o.code).unwrap().loinc.into(),
                device: o.device_id.clone(),
                value: o.value,
                device_time_ms: o.device_time_ms,
                recv_time_ms: o.recv_time_ms,
            })
        })
        .collect();
    let mut got: Vec<_> = readings_from_bundle(&b).unwrap().iter().map(key).collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);

    // Against one Observation per reading (the format before compaction).
    let each = fhir::build_with(
        &x,
        "01900000-0000-7000-8000-0000000000ee",
        Profile::Case,
        now,
        &Extras {
            series: fhir::Series::Individual,
            ..Default::default()
        },
    );
    let each_len = serde_json::to_vec(&each).unwrap().len();
    let plain_len = serde_json::to_vec(&fhir::build(
        &x,
        "01900000-0000-7000-8000-0000000000ee",
        Profile::Case,
        now,
    ))
    .unwrap()
    .len();
    eprintln!(
        "bundle: {plain_len} B sampled vs {each_len} B one per reading; with the handoff PDF {} B",
        json.len()
    );
    assert!(plain_len * 5 < each_len, "{plain_len} vs {each_len}");

    // The handoff document it carries is the one rendered, and says what matters.
    let carried = hema3n_edge::sync::handoff_pdf(&b).unwrap();
    assert_eq!(carried, pdf);
    let text = pdftotext(&carried, dir.path(), "handoff");
    for want in [
        "Hospital handoff",
        "Triage ESI",
        "Times",
        "Vitals trend",
        "Allergies",
        "Handed over by",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    for r in &x.triage.as_ref().unwrap().record.reasons {
        let head: String = r.chars().take(25).collect();
        assert!(text.contains(&head), "reason {r} missing:\n{text}");
    }
    for t in &h.times {
        assert!(
            text.contains(&handoff::clock(t.at_ms)),
            "{} missing:\n{text}",
            t.label
        );
    }
    for i in &h.interventions {
        let head: String = i.text.chars().take(20).collect();
        assert!(text.contains(&head), "{} missing:\n{text}", i.text);
    }
    // Both structures render; each names its letters.
    let mist = pdftotext(
        &handoff::pdf::render(&h, Format::Mist, now).unwrap(),
        dir.path(),
        "mist",
    );
    assert!(
        mist.contains("MIST") && mist.contains("Mechanism") && mist.contains("Treatment"),
        "{mist}"
    );
    let sbar = pdftotext(
        &handoff::pdf::render(&h, Format::Sbar, now).unwrap(),
        dir.path(),
        "sbar",
    );
    assert!(
        sbar.contains("SBAR") && sbar.contains("Background") && sbar.contains("Recommendation"),
        "{sbar}"
    );
    // Fonts are embedded (no reliance on the reader's fonts).
    if let Ok(out) = std::env::var("HEMA3N_HANDOFF_PDF_OUT") {
        std::fs::write(out, &carried).unwrap();
    }
    let fonts = Command::new("pdffonts")
        .arg(dir.path().join("handoff.pdf"))
        .output()
        .unwrap();
    let fonts = String::from_utf8_lossy(&fonts.stdout);
    assert!(
        fonts.contains("DejaVuSans") && !fonts.lines().skip(2).any(|l| l.contains(" no  ")),
        "{fonts}"
    );
}
