//! Care-record fixtures: a full record as the store returns it (for pure exporters), and the
//! API calls of a full call (for tests through the daemon).

use hema3n_edge::model::record::{CaseRecord, EntryState, EntryVersion};
use hema3n_edge::model::{
    Address, CaseExport, ExportAudit, ExportCheckpoint, Insurance, Observation, Patient, Sex,
    StoredTriage, TriageRecord,
};
use serde_json::{Value, json};

fn version(entry: &str, kind: &str, v: i64, at: i64, content: Value) -> EntryVersion {
    EntryVersion {
        entry_id: entry.into(),
        kind: kind.into(),
        version: v,
        state: EntryState::Recorded,
        recorded_at_ms: at,
        recorded_by: "crew-7".into(),
        content,
        reason: None,
    }
}

/// A COPD patient on oxygen: every section, two oxygen events, a procedure, a medication, an
/// assessment, and one medication entered in error (which exporters must leave out).
pub fn sample_record(t0: i64) -> CaseRecord {
    let min = 60_000;
    let mut versions = vec![
        version(
            "incident",
            "incident",
            1,
            t0,
            json!({
                "incident_number": "INC-2026-0042", "run_number": "R-17", "unit": "M12",
            "dispatch_reason": "breathing_problem", "response_mode": "emergent",
                "crew": [{"account": "crew-7", "role": "primary"}, {"account": "crew-8", "role": "driver"}],
            }),
        ),
        version(
            "times",
            "times",
            1,
            t0,
            json!({
                "call_received_ms": t0 - 12 * min, "dispatched_ms": t0 - 11 * min, "en_route_ms": t0 - 10 * min,
                "on_scene_ms": t0 - 2 * min, "at_patient_ms": t0 - min, "left_scene_ms": t0 + 20 * min,
                "at_destination_ms": t0 + 35 * min, "transfer_of_care_ms": t0 + 38 * min,
            "in_service_ms": t0 + 50 * min,
            }),
        ),
        version(
            "scene",
            "scene",
            1,
            t0,
            json!({
                "latitude": 41.7365, "longitude": -111.8338, "address": "12 Elm St, Logan UT",
                "patient_count": 1, "mass_casualty": false,
            }),
        ),
        version(
            "situation",
            "situation",
            1,
            t0,
            json!({
                "symptom_onset_ms": t0 - 3 * 3_600_000, "possible_injury": false,
                "primary_impression": {"code": "J44.1", "note": "worse since yesterday"},
                "secondary_impressions": [{"code": "R06.02"}],
            }),
        ),
        version(
            "history",
            "history",
            1,
            t0,
            json!({
                "allergies": ["penicillin <rash>"], "medical_history": ["COPD", "hypertension"],
                "current_medications": ["tiotropium", "home oxygen 2 L/min"], "advance_directive": "none",
            }),
        ),
        version(
            "disposition",
            "disposition",
            1,
            t0,
            json!({
                "patient_disposition": "care_provided", "transport": "this_unit", "transport_mode": "emergent",
                "destination": "Logan Regional Hospital", "destination_reason": "closest", "transfer_to": "Dr. R. Patel",
            }),
        ),
        version(
            "narrative",
            "narrative",
            1,
            t0,
            json!({"text": "67 y/o with COPD & worsening dyspnoea; improved on salbutamol."}),
        ),
        version(
            "spo2_scale",
            "spo2_scale",
            1,
            t0,
            json!({"scale2": true, "reason": "known hypercapnic respiratory failure (ABG 2025)"}),
        ),
        version(
            "0190aaaa-0000-7000-8000-000000000001",
            "oxygen",
            1,
            t0,
            json!({
                "at_ms": t0, "action": "start", "flow_l_min": 2.0, "device": "nasal_cannula",
            }),
        ),
        version(
            "0190aaaa-0000-7000-8000-000000000002",
            "oxygen",
            1,
            t0 + 5 * min,
            json!({
                "at_ms": t0 + 5 * min, "action": "change", "flow_l_min": 4.0, "device": "venturi",
            }),
        ),
        version(
            "0190aaaa-0000-7000-8000-000000000003",
            "procedure",
            1,
            t0 + 3 * min,
            json!({
                "at_ms": t0 + 3 * min, "procedure": "iv_access", "site": "left forearm", "size": "18G",
                "attempts": 2, "successful": true, "performer": "crew-8",
            }),
        ),
        version(
            "0190aaaa-0000-7000-8000-000000000004",
            "medication",
            1,
            t0 + 4 * min,
            json!({
                "at_ms": t0 + 4 * min, "medication": "salbutamol", "dose": 5.0, "dose_unit": "mg",
                "route": "nebulizer", "response": "improved",
            }),
        ),
        version(
            "0190aaaa-0000-7000-8000-000000000005",
            "assessment",
            1,
            t0 + 2 * min,
            json!({
                "at_ms": t0 + 2 * min, "gcs_eye": 4, "gcs_verbal": 5, "gcs_motor": 6, "pupils": "perrl",
                "skin": "pale", "pain": 2, "befast": {"balance": false, "eyes": false, "face": false, "arm": false, "speech": false},
            }),
        ),
        version(
            "0190aaaa-0000-7000-8000-000000000006",
            "medication",
            1,
            t0 + 6 * min,
            json!({
                "at_ms": t0 + 6 * min, "medication": "aspirin", "dose": 300.0, "dose_unit": "mg", "route": "oral",
            }),
        ),
    ];
    let mut wrong = version(
        "0190aaaa-0000-7000-8000-000000000006",
        "medication",
        2,
        t0 + 7 * min,
        versions.last().unwrap().content.clone(),
    );
    wrong.state = EntryState::EnteredInError;
    wrong.reason = Some("wrong patient's chart".into());
    versions.push(wrong);
    CaseRecord { versions }
}

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

/// A full case as the store exports it: demographics, insurance, vitals from two devices and
/// manual entry, triage, the care record of [`sample_record`], audit trail and checkpoint.
pub fn full_case() -> CaseExport {
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
        record: sample_record(t0),
        people: vec![
            ("crew-7".into(), "Sam Medic".into(), "paramedic".into()),
            ("crew-8".into(), "Alex Tech".into(), "emt".into()),
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
                canonical: hema3n_edge::storage::audit::canonical(
                    2,
                    &hema3n_edge::storage::audit::EntryFields {
                        seq: i,
                        ts: t0 + i * 10,
                        actor: "crew-7",
                        role: "paramedic",
                        action: "case.export",
                        resource: "case/01900000-0000-7000-8000-0000000000aa",
                        outcome: "success",
                        territory: "north",
                        details: "{}",
                    },
                ),
            })
            .collect(),
        checkpoint: Some(ExportCheckpoint {
            seq: 4,
            ts_ms: t0 + 50,
            hash: [9; 32],
            key_id: "cc48f02355cdb1d6".into(),
            signature: vec![7; 64],
        }),
        audit_segment: Some(hema3n_edge::model::ExportSegment {
            from_seq: 1,
            prev_hash: [3; 32],
            links: vec![],
        }),
        prealert: Default::default(),
        attachments: vec![],
    }
}

/// What the official NEMSIS v3.5.1 XSD and national Schematron say about one document.
#[derive(Debug)]
pub struct NemsisReport {
    pub file: String,
    pub xsd_errors: Vec<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Validates NEMSIS documents with third-party tools (tests/nemsis_validate.py: `xmlschema` and
/// SaxonC-HE, installed into .tools/nemsis by scripts/test.sh) against the files in
/// ../shared/standards/nemsis-3.5.1.
pub fn nemsis_validate(files: &[std::path::PathBuf]) -> Vec<NemsisReport> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = root.join(".tools/nemsis");
    assert!(
        tools.join("xmlschema").exists() && tools.join("saxonche").exists(),
        "NEMSIS validators missing: run ./scripts/test.sh (installs xmlschema and saxonche into .tools/nemsis)"
    );
    // The official files live beside the project (never copied into it); a checkout elsewhere
    // names them with HEMA3N_NEMSIS_DIR.
    let standard = std::env::var_os("HEMA3N_NEMSIS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/standards/nemsis-3.5.1"));
    assert!(
        standard.join("xsd/EMSDataSet_v3.xsd").exists(),
        "NEMSIS standard files missing at {} (set HEMA3N_NEMSIS_DIR)",
        standard.display()
    );
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/nemsis_validate.py"))
        .arg(&standard)
        .args(files)
        .env("PYTHONPATH", &tools)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<NemsisReport> = stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let list = |k: &str| -> Vec<String> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect()
            };
            NemsisReport {
                file: v["file"].as_str().unwrap().to_string(),
                xsd_errors: list("xsd_errors"),
                errors: list("errors"),
                warnings: list("warnings"),
            }
        })
        .collect();
    assert_eq!(
        reports.len(),
        files.len(),
        "validator output:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reports
}

/// Validates NEMSIS documents and fails on any XSD or Schematron `[ERROR]`/`[FATAL]`; prints
/// each document's counts and warnings.
pub fn assert_nemsis_valid(files: &[std::path::PathBuf]) -> Vec<NemsisReport> {
    let reports = nemsis_validate(files);
    let mut failed = vec![];
    for r in &reports {
        println!(
            "{}: {} XSD errors, {} Schematron errors, {} warnings",
            r.file,
            r.xsd_errors.len(),
            r.errors.len(),
            r.warnings.len()
        );
        for w in &r.warnings {
            println!("  {w}");
        }
        if !r.xsd_errors.is_empty() || !r.errors.is_empty() {
            failed.push(format!(
                "{}:\n  {}\n  {}",
                r.file,
                r.xsd_errors.join("\n  "),
                r.errors.join("\n  ")
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    reports
}
