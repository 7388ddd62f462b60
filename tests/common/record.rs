//! Care-record fixtures: a full record as the store returns it (for pure exporters), and the
//! API calls of a full call (for tests through the daemon).

use hema3n_edge::model::record::{CaseRecord, EntryState, EntryVersion};
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
