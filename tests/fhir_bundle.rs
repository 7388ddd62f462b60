//! The FHIR R4 bundles the appliance seals — a full case (demographics, insurance, vitals from
//! two devices and manual entry, triage with model and reasons, audit trail and checkpoint) and
//! a hospital pre-alert — validate with an independent FHIR R4 validator (fhir.resources 6.1.0,
//! FHIR 4.0.1) run by this test.

mod common;

use hema3n_edge::model::{
    Address, CaseExport, ExportAudit, ExportCheckpoint, Insurance, Observation, Patient, Sex,
    StoredTriage, TriageRecord,
};
use hema3n_edge::sync::fhir::{self, Profile};

fn reading(device: Option<&str>, code: &str, value: f64, t: i64) -> Observation {
    Observation {
        id: t,
        device_id: device.map(str::to_string),
        code: code.into(),
        value,
        device_time_ms: t,
        recv_time_ms: t + 40,
        source: if device.is_some() { "device" } else { "manual" }.into(),
    }
}

fn full_case() -> CaseExport {
    let t0 = 1_800_000_000_000;
    let mut readings = vec![];
    for (i, code) in [
        "heart_rate",
        "resp_rate",
        "spo2",
        "sbp",
        "dbp",
        "temp",
        "etco2",
        "glucose",
        "gcs_total",
        "gcs_eye",
        "gcs_verbal",
        "gcs_motor",
        "avpu",
        "pain",
    ]
    .iter()
    .enumerate()
    {
        let v = match *code {
            "temp" => 38.4,
            "avpu" => 1.0,
            "gcs_total" => 13.0,
            "gcs_eye" => 3.0,
            "gcs_verbal" => 4.0,
            "gcs_motor" => 6.0,
            "pain" => 7.0,
            "spo2" => 91.0,
            _ => 100.0 + i as f64,
        };
        readings.push(reading(Some("mon-1"), code, v, t0 + i as i64 * 1000));
    }
    readings.push(reading(Some("spo2-2"), "spo2", 90.0, t0 + 60_000));
    readings.push(reading(None, "glucose", 54.0, t0 + 90_000));
    CaseExport {
        appliance_id: "amb-0042".into(),
        case_id: "01900000-0000-7000-8000-0000000000aa".into(),
        territory: "north".into(),
        status: "closed".into(),
        created_at_ms: t0 - 60_000,
        closed_at_ms: Some(t0 + 1_800_000),
        patient_id: Some("01900000-0000-7000-8000-0000000000bb".into()),
        patient: Some(Patient {
            first_name: Some("Ada".into()),
            last_name: Some("O'Neil <Jr>".into()),
            date_of_birth: Some("1948-02-29".into()),
            ssn: Some("123-45-6789".into()),
            email: Some("ada@example.org".into()),
            phone: Some("+1 555 0100".into()),
            address: Some(Address {
                street: Some("1 Main St".into()),
                city: Some("Springfield".into()),
                state: Some("IL".into()),
                zip: Some("62701".into()),
            }),
            insurance: Some(Insurance {
                carrier: Some("Acme Health".into()),
                policy_number: Some("P-1".into()),
                group_number: Some("G-7".into()),
            }),
            mrn: Some("MRN-99".into()),
            sex: Some(Sex::Female),
            estimated_age_years: None,
        }),
        chief_complaint: Some("chest pain & dyspnoea".into()),
        mechanism: Some("fall < 1 m".into()),
        onset: Some("30 min".into()),
        devices: vec![
            ("mon-1".into(), "monitor".into()),
            ("spo2-2".into(), "pulse_oximeter".into()),
        ],
        readings,
        triage: Some(StoredTriage {
            id: 3,
            created_at_ms: t0 + 95_000,
            record: TriageRecord {
                final_esi: 2,
                rules_esi: 2,
                model_esi: Some(3),
                news2: Some(7),
                specialty: Some("cardiology".into()),
                confidence: Some(0.71),
                model_id: Some("hema3n-core-1.0.0".into()),
                model_hash: Some("ab".repeat(32)),
                decider: hema3n_edge::model::Decider::RulesOverride,
                abstained: None,
                reasons: vec![
                    "NEWS2 7 (≥ 7: emergency response)".into(),
                    "SpO2 90 % < 92 %".into(),
                ],
            },
        }),
        record: common::record::sample_record(t0),
        people: vec![
            ("crew-7".into(), "Sam Medic".into()),
            ("crew-8".into(), "Alex Tech".into()),
        ],
        audit: (1..=4)
            .map(|i| ExportAudit {
                seq: i,
                ts_ms: t0 + i * 10,
                actor: "crew-7".into(),
                role: "paramedic".into(),
                action: ["case.create", "patient.read", "case.close", "case.export"]
                    [i as usize - 1]
                    .into(),
                resource: "case/01900000-0000-7000-8000-0000000000aa".into(),
                outcome: "success".into(),
                hash: [i as u8; 32],
            })
            .collect(),
        checkpoint: Some(ExportCheckpoint {
            seq: 4,
            ts_ms: t0 + 50,
            hash: [9; 32],
            key_id: "cc48f02355cdb1d6".into(),
            signature: vec![7; 64],
        }),
    }
}

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
    assert!(enc["extension"].as_array().unwrap().len() == 8, "{enc}");
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
