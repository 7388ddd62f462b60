//! The FHIR R4 bundles the appliance seals — a full case (demographics, insurance, vitals from
//! two devices and manual entry, triage with model and reasons, audit trail and checkpoint) and
//! a hospital pre-alert — validate with an independent FHIR R4 validator (fhir.resources 6.1.0,
//! FHIR 4.0.1) run by this test.

mod common;

use common::record::full_case;
use hema3n_edge::sync::fhir::{self, Profile};

#[test]
fn case_and_prealert_bundles_validate_as_fhir_r4() {
    let dir = tempfile::tempdir().unwrap();
    let x = full_case();
    let mut files = vec![];
    for (name, profile) in [("case", Profile::Case), ("prealert", Profile::Prealert)] {
        let b = fhir::build(
            &x,
            "01900000-0000-7000-8000-0000000000cc",
            profile,
            1_800_002_000_000,
        );
        let f = dir.path().join(format!("{name}.json"));
        std::fs::write(&f, serde_json::to_vec(&b).unwrap()).unwrap();
        files.push(f);
    }
    // A bundle for a case with no patient record at all (partial registration) too.
    let mut bare = full_case();
    bare.patient = None;
    bare.patient_id = None;
    bare.triage = None;
    let f = dir.path().join("bare.json");
    std::fs::write(
        &f,
        serde_json::to_vec(&fhir::build(
            &bare,
            "01900000-0000-7000-8000-0000000000dd",
            Profile::Case,
            1,
        ))
        .unwrap(),
    )
    .unwrap();
    files.push(f);

    let report = common::cloud::fhir_validate(&files);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 3, "{report}");
    let case = lines[0];
    for want in [
        "Patient=1",
        "Coverage=1",
        "Encounter=1",
        "Device=3",
        // 16 vitals + 2 oxygen flows + SpO2 scale 2 + advance directive + 5 assessment findings.
        "Observation=25",
        "RiskAssessment=1",
        "AuditEvent=5",
        "Provenance=1",
        // The care record.
        "Practitioner=2",
        "PractitionerRole=2",
        "Location=2",
        "Condition=4",
        "AllergyIntolerance=1",
        "MedicationStatement=2",
        "MedicationAdministration=1",
        "Procedure=1",
    ] {
        assert!(case.contains(&format!(" {want}")), "{want} missing: {case}");
    }
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
    let of = |t: &str| -> Vec<serde_json::Value> {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .filter(|r| r["resourceType"] == t)
            .collect()
    };
    // The medication given is there, RxNorm-coded with its dose; the one entered in error is not.
    let ma = &of("MedicationAdministration")[0];
    assert_eq!(ma["medicationCodeableConcept"]["coding"][0]["code"], "435");
    assert_eq!(ma["dosage"]["dose"]["value"], 5.0);
    assert!(
        !text.contains("\"1191\""),
        "entered-in-error aspirin exported"
    );
    // Oxygen flow in L/min, UCUM, LOINC 3151-8.
    let o2: Vec<_> = of("Observation")
        .into_iter()
        .filter(|o| o["code"]["coding"][0]["code"] == "3151-8")
        .collect();
    assert_eq!(o2.len(), 2);
    assert_eq!(o2[1]["valueQuantity"]["value"], 4.0);
    assert_eq!(o2[1]["valueQuantity"]["code"], "L/min");
    // Times, scene, destination and impression.
    let enc = &of("Encounter")[0];
    assert!(enc["extension"].as_array().unwrap().len() == 9, "{enc}");
    assert!(enc["hospitalization"]["destination"]["reference"].is_string());
    assert!(
        enc["text"]["div"]
            .as_str()
            .unwrap()
            .contains("COPD &amp; worsening")
    );
    let cond = of("Condition");
    assert!(
        cond.iter()
            .any(|c| c["code"]["coding"][0]["code"] == "J44.1")
    );
    assert_eq!(of("Procedure")[0]["code"]["coding"][0]["code"], "392230005");
    let pre = lines[1];
    assert!(
        pre.contains("Observation=14") && !pre.contains("AuditEvent"),
        "{pre}"
    );
    let pre_text = std::fs::read_to_string(&files[1]).unwrap();
    assert!(
        !pre_text.contains("Ada") && !pre_text.contains("123-45-6789"),
        "pre-alert is minimum necessary"
    );
}
