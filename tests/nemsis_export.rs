//! NEMSIS v3.5.1 export: documents built from cases pass the official XSD and the national
//! Schematron (run by third-party validators), with warnings listed in the output.

mod common;

use common::record::{assert_nemsis_valid, full_case};
use hema3n_edge::config::NemsisConfig;
use hema3n_edge::sync::nemsis;

#[test]
fn a_full_case_exports_a_valid_emsdataset() {
    let dir = tempfile::tempdir().unwrap();
    let x = full_case();
    let doc = nemsis::export(&x, &NemsisConfig::default()).unwrap();
    // What the record holds is in the document; the medication entered in error is not.
    for want in [
        "<eDispatch.01>2301013</eDispatch.01>",
        "<eSituation.11>J44.1</eSituation.11>",
        "<eMedications.03>435</eMedications.03>",
        "<eMedications.03>7806</eMedications.03>",
        "<eProcedures.03>392230005</eProcedures.03>",
        "<eDisposition.01>Logan Regional Hospital</eDisposition.01>",
        "COPD &amp; worsening",
    ] {
        assert!(doc.contains(want), "{want} missing:\n{doc}");
    }
    assert!(
        !doc.contains("<eMedications.03>1191</eMedications.03>"),
        "entered-in-error aspirin exported"
    );
    let f = dir.path().join("full.xml");
    std::fs::write(&f, &doc).unwrap();
    assert_nemsis_valid(&[f]);
}

#[test]
fn an_incomplete_record_names_what_nemsis_requires() {
    let mut x = full_case();
    x.record
        .versions
        .retain(|v| v.kind != "incident" && v.kind != "times");
    let e = nemsis::export(&x, &NemsisConfig::default()).unwrap_err();
    assert_eq!(
        e.missing,
        vec![
            "incident.dispatch_reason",
            "incident.response_mode",
            "times.dispatched_ms",
            "times.in_service_ms"
        ]
    );
}
