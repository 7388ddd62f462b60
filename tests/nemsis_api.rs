//! Five calls recorded through the tablet API as a crew would (cardiac arrest, stroke, a road
//! traffic collision, an opioid overdose, a refusal), each exported with
//! `GET /api/v1/cases/{id}/nemsis` and validated with the official NEMSIS v3.5.1 XSD and national
//! Schematron by third-party tools: 0 XSD errors, 0 Schematron errors; warnings are printed.

mod common;

use axum::http::StatusCode;
use common::api::Api;
use common::record::assert_nemsis_valid;
use serde_json::{Value, json};

const IDLE: &str = "[api]\nidle_timeout_secs = 600\nsession_lifetime_secs = 43200\n";
const MIN: i64 = 60_000;

/// One call: the patient (or none: unknown), the case's chief complaint, then record writes
/// (method, path under the case, body), in order.
struct Scenario {
    name: &'static str,
    patient: Option<Value>,
    complaint: &'static str,
    writes: Vec<(&'static str, &'static str, Value)>,
    vitals: Vec<Value>,
}

fn times(now: i64, transported: bool) -> Value {
    let mut t = json!({
        "call_received_ms": now - 60 * MIN, "dispatched_ms": now - 59 * MIN, "en_route_ms": now - 58 * MIN,
        "on_scene_ms": now - 50 * MIN, "at_patient_ms": now - 49 * MIN,
        "in_service_ms": now,
    });
    if transported {
        for (k, v) in [
            ("left_scene_ms", now - 30 * MIN),
            ("at_destination_ms", now - 15 * MIN),
            ("transfer_of_care_ms", now - 12 * MIN),
        ] {
            t[k] = json!(v);
        }
    }
    t
}

fn transported(dest: &str, reason: &str) -> Value {
    json!({
        "patient_disposition": "care_provided", "transport": "this_unit", "transport_mode": "emergent",
        "destination": dest, "destination_reason": reason, "transfer_to": "Dr. K. Osei",
    })
}

fn scenarios(now: i64) -> Vec<Scenario> {
    let crew =
        json!([{"account": "medic", "role": "primary"}, {"account": "emt1", "role": "driver"}]);
    let incident = |n: &str, reason: &str| {
        json!({"incident_number": n, "run_number": format!("R-{n}"), "unit": "M12",
               "dispatch_reason": reason, "response_mode": "emergent", "crew": crew})
    };
    let at = |m: i64| now - m * MIN;
    vec![
        Scenario {
            name: "cardiac-arrest",
            patient: Some(
                json!({"first_name": "Walter", "last_name": "Ames", "date_of_birth": "1951-06-02", "sex": "male"}),
            ),
            complaint: "collapsed at home",
            writes: vec![
                (
                    "PATCH",
                    "record/incident",
                    incident("INC-1001", "cardiac_arrest"),
                ),
                ("PATCH", "record/times", times(now, true)),
                (
                    "PATCH",
                    "record/scene",
                    json!({"address": "4 Oak Rd", "patient_count": 1, "mass_casualty": false}),
                ),
                (
                    "PATCH",
                    "record/situation",
                    json!({"primary_impression": {"code": "I46.9"}, "possible_injury": false, "cardiac_arrest": "before_ems"}),
                ),
                (
                    "PATCH",
                    "record/history",
                    json!({"no_known_allergies": true, "medical_history": ["ischaemic heart disease"], "advance_directive": "none"}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(48), "procedure": "cpr", "successful": true}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(47), "procedure": "defibrillation", "successful": true, "attempts": 2}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(46), "procedure": "io_access", "site": "right tibia", "successful": true, "performer": "medic"}),
                ),
                (
                    "POST",
                    "record/medication",
                    json!({"at_ms": at(45), "medication": "epinephrine", "dose": 1, "dose_unit": "mg", "route": "io"}),
                ),
                (
                    "POST",
                    "record/medication",
                    json!({"at_ms": at(42), "medication": "amiodarone", "dose": 300, "dose_unit": "mg", "route": "io"}),
                ),
                (
                    "POST",
                    "record/oxygen",
                    json!({"at_ms": at(48), "action": "start", "flow_l_min": 15, "device": "bvm"}),
                ),
                (
                    "PATCH",
                    "record/disposition",
                    transported("St. Mary's Cardiac Center", "specialty_center"),
                ),
                (
                    "PATCH",
                    "record/narrative",
                    json!({"text": "Witnessed collapse, bystander CPR. VF, 2 shocks, ROSC after 12 min."}),
                ),
            ],
            vitals: vec![
                json!({"name": "heart_rate", "value": 0}),
                json!({"name": "avpu", "vs": "U"}),
            ],
        },
        Scenario {
            name: "stroke",
            patient: Some(
                json!({"first_name": "Maria", "last_name": "Lopez", "date_of_birth": "1948-11-20", "sex": "female"}),
            ),
            complaint: "sudden left-sided weakness",
            writes: vec![
                ("PATCH", "record/incident", incident("INC-1002", "stroke")),
                ("PATCH", "record/times", times(now, true)),
                (
                    "PATCH",
                    "record/situation",
                    json!({"primary_impression": {"code": "I63.9"}, "last_known_well_ms": at(90), "symptom_onset_ms": at(80), "possible_injury": false, "cardiac_arrest": "no"}),
                ),
                (
                    "POST",
                    "record/assessment",
                    json!({"at_ms": at(48), "gcs_eye": 4, "gcs_verbal": 4, "gcs_motor": 6, "pupils": "perrl", "skin": "normal",
                    "befast": {"balance": true, "eyes": false, "face": true, "arm": true, "speech": true}}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(44), "procedure": "glucose", "successful": true}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(43), "procedure": "iv_access", "site": "left antecubital", "size": "18G", "successful": true}),
                ),
                (
                    "PATCH",
                    "record/history",
                    json!({"allergies": ["codeine"], "medical_history": ["atrial fibrillation"], "current_medications": ["apixaban"]}),
                ),
                (
                    "PATCH",
                    "record/disposition",
                    transported("University Comprehensive Stroke Center", "specialty_center"),
                ),
            ],
            vitals: vec![
                json!({"name": "sbp", "value": 182}),
                json!({"name": "glucose", "value": 112}),
                json!({"name": "heart_rate", "value": 96}),
            ],
        },
        Scenario {
            name: "road-traffic-collision",
            patient: None,
            complaint: "driver, car versus tree",
            writes: vec![
                (
                    "PATCH",
                    "record/incident",
                    incident("INC-1003", "traffic_incident"),
                ),
                ("PATCH", "record/times", times(now, true)),
                (
                    "PATCH",
                    "record/scene",
                    json!({"latitude": 41.7408, "longitude": -111.8339, "description": "rural road, single vehicle", "patient_count": 2, "mass_casualty": false}),
                ),
                (
                    "PATCH",
                    "record/situation",
                    json!({"primary_impression": {"code": "T07.XXXA"}, "secondary_impressions": [{"code": "S06.9X0A"}], "possible_injury": true, "cardiac_arrest": "no"}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(48), "procedure": "spinal_restriction", "successful": true}),
                ),
                (
                    "POST",
                    "record/procedure",
                    json!({"at_ms": at(46), "procedure": "splint", "site": "left femur", "successful": true}),
                ),
                (
                    "POST",
                    "record/medication",
                    json!({"at_ms": at(40), "medication": "fentanyl", "dose": 50, "dose_unit": "mcg", "route": "intranasal", "response": "improved"}),
                ),
                (
                    "POST",
                    "record/assessment",
                    json!({"at_ms": at(47), "gcs_eye": 3, "gcs_verbal": 4, "gcs_motor": 6, "pain": 8}),
                ),
                (
                    "PATCH",
                    "record/disposition",
                    transported("Regional Trauma Center", "protocol"),
                ),
            ],
            vitals: vec![
                json!({"name": "sbp", "value": 98}),
                json!({"name": "heart_rate", "value": 118}),
                json!({"name": "resp_rate", "value": 24}),
            ],
        },
        Scenario {
            name: "opioid-overdose",
            patient: Some(json!({"last_name": "Doe", "sex": "male", "estimated_age_years": 30})),
            complaint: "unresponsive, pinpoint pupils",
            writes: vec![
                ("PATCH", "record/incident", incident("INC-1004", "overdose")),
                ("PATCH", "record/times", times(now, true)),
                (
                    "PATCH",
                    "record/situation",
                    json!({"primary_impression": {"code": "T40.2X1A"}, "possible_injury": false, "cardiac_arrest": "no"}),
                ),
                (
                    "POST",
                    "record/oxygen",
                    json!({"at_ms": at(48), "action": "start", "flow_l_min": 15, "device": "bvm"}),
                ),
                (
                    "POST",
                    "record/medication",
                    json!({"at_ms": at(47), "medication": "naloxone", "dose": 0.4, "dose_unit": "mg", "route": "intranasal", "response": "improved"}),
                ),
                (
                    "POST",
                    "record/oxygen",
                    json!({"at_ms": at(40), "action": "change", "flow_l_min": 2, "device": "nasal_cannula"}),
                ),
                (
                    "PATCH",
                    "record/disposition",
                    transported("General Hospital ED", "closest"),
                ),
            ],
            vitals: vec![
                json!({"name": "resp_rate", "value": 6}),
                json!({"name": "spo2", "value": 82}),
            ],
        },
        Scenario {
            name: "refusal",
            patient: Some(
                json!({"first_name": "Ken", "last_name": "Ito", "date_of_birth": "1990-03-15", "sex": "male"}),
            ),
            complaint: "minor fall, declines transport",
            writes: vec![
                ("PATCH", "record/incident", incident("INC-1005", "fall")),
                ("PATCH", "record/times", times(now, false)),
                (
                    "PATCH",
                    "record/situation",
                    json!({"primary_impression": {"code": "Z71.1"}, "possible_injury": true, "cardiac_arrest": "no"}),
                ),
                (
                    "POST",
                    "record/assessment",
                    json!({"at_ms": at(45), "gcs_eye": 4, "gcs_verbal": 5, "gcs_motor": 6, "pain": 1}),
                ),
                (
                    "PATCH",
                    "record/disposition",
                    json!({"patient_disposition": "refused_care", "transport": "refused_transport"}),
                ),
                (
                    "PATCH",
                    "record/narrative",
                    json!({"text": "Alert, oriented, capacity assessed; refused transport against advice."}),
                ),
            ],
            vitals: vec![
                json!({"name": "heart_rate", "value": 76}),
                json!({"name": "sbp", "value": 128}),
            ],
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_calls_recorded_through_the_api_export_valid_nemsis() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let now = hema3n_edge::model::now_ms();
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for s in scenarios(now) {
        let mut case_body = json!({"chief_complaint": s.complaint});
        if let Some(p) = &s.patient {
            let r = api.post(&t, "/api/v1/patients", Some(p.clone())).await;
            assert_eq!(r.status, StatusCode::CREATED, "{}: {}", s.name, r.body);
            case_body["patient_id"] = r.body["id"].clone();
        }
        let r = api.post(&t, "/api/v1/cases", Some(case_body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", s.name, r.body);
        let case = r.body["id"].as_str().unwrap().to_string();
        // Before the record is complete, the export names what NEMSIS requires.
        let r = api.get(&t, &format!("/api/v1/cases/{case}/nemsis")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", s.name);
        assert_eq!(
            r.body["error"]["details"]["missing"],
            json!([
                "incident.dispatch_reason",
                "incident.response_mode",
                "times.dispatched_ms",
                "times.in_service_ms"
            ])
        );
        let readings: Vec<Value> = s
            .vitals
            .iter()
            .map(|v| {
                let mut v = v.clone();
                // Manual vitals are checked against the API's clock (manual in this harness).
                v["t_ms"] = json!(api.st.clock.now_ms() - 47 * MIN);
                v
            })
            .collect();
        let r = api
            .post(
                &t,
                &format!("/api/v1/cases/{case}/vitals"),
                Some(json!({"readings": readings})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}: {}", s.name, r.body);
        for (method, path, body) in &s.writes {
            let r = api
                .send(
                    method,
                    &format!("/api/v1/cases/{case}/{path}"),
                    &t,
                    Some(body.clone()),
                    &[],
                )
                .await;
            assert!(
                r.status.is_success(),
                "{} {method} {path}: {} {}",
                s.name,
                r.status,
                r.body
            );
        }
        let before = api.audit_head().await;
        let r = api
            .send(
                "GET",
                &format!("/api/v1/cases/{case}/nemsis"),
                &t,
                None,
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", s.name);
        assert!(
            r.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/xml")
        );
        // Audited as a disclosure by the crew member.
        assert_eq!(api.audit_after(before).await, vec!["case.disclose"]);
        let xml = r.text.clone();
        assert!(xml.contains("<EMSDataSet"), "{}: {xml}", s.name);
        let f = dir.path().join(format!("{}.xml", s.name));
        std::fs::write(&f, xml).unwrap();
        files.push(f);
    }
    assert_nemsis_valid(&files);
    // Each document holds its own call: arrest coded, stroke screen, injury, naloxone, refusal.
    let doc = |n: &str| std::fs::read_to_string(dir.path().join(format!("{n}.xml"))).unwrap();
    assert!(doc("cardiac-arrest").contains("<eArrest.01>3001003</eArrest.01>"));
    assert!(doc("stroke").contains("<eVitals.29>3329005</eVitals.29>"));
    assert!(doc("road-traffic-collision").contains("<eSituation.02>9922005</eSituation.02>"));
    assert!(doc("opioid-overdose").contains("<eMedications.03>7242</eMedications.03>"));
    assert!(doc("refusal").contains("<eDisposition.30>4230009</eDisposition.30>"));
}
