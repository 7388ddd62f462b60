//! The care record through the tablet API with the daemon's re-triage loop: oxygen raises NEWS2
//! by 2 and re-triages the case with the reason stated; an entered-in-error entry leaves the
//! triage (after the de-escalation hold); idempotent submits; merge patches with optimistic
//! concurrency; field-named validation errors that store nothing.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::api::Api;
use hema3n_edge::events::LiveEvent;
use serde_json::{Value, json};

const IDLE: &str = "[api]\nidle_timeout_secs = 600\nsession_lifetime_secs = 43200\n";

/// Waits (on the live-event bus, not a sleep) for the next triage of `case`; returns NEWS2,
/// the final ESI and the reasons.
async fn next_triage(
    rx: &mut tokio::sync::broadcast::Receiver<LiveEvent>,
    case: &str,
) -> (Option<u8>, u8, Vec<String>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a triage within 10 s")
            .unwrap();
        if let LiveEvent::Triage { case_id, triage } = ev
            && case_id == case
        {
            let r = &triage.record;
            return (r.news2, r.final_esi, r.reasons.clone());
        }
    }
}

async fn open_case(api: &Api, t: &str) -> String {
    let r = api
        .post(
            t,
            "/api/v1/cases",
            Some(json!({"chief_complaint": "breathless, COPD"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oxygen_raises_news2_by_two_and_its_removal_is_held_before_deescalating() {
    let hold = Duration::from_millis(400);
    let api = Api::with_retriage(IDLE, hold).await;
    let mut rx = api.st.bus.subscribe();
    let t = api.login("emt1").await;
    let case = open_case(&api, &t).await;
    // RR 22 (2), SpO2 93 (2), air (0), SBP 120 (0), HR 100 (1), alert (0), 37.0 °C (0): NEWS2 5.
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/vitals"),
            Some(json!({"readings": [
                {"name": "resp_rate", "value": 22}, {"name": "spo2", "value": 93},
                {"name": "sbp", "value": 120}, {"name": "heart_rate", "value": 100},
                {"name": "avpu", "vs": "A"}, {"name": "temp", "value": 37.0},
            ]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (news2, esi0, reasons) = next_triage(&mut rx, &case).await;
    assert_eq!(news2, Some(5), "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("ESI ≤ 3: NEWS2 5 (medium risk)")),
        "{reasons:?}"
    );
    // An EMT records oxygen: NEWS2 7, the reason says so, and the level rises at once.
    let now = hema3n_edge::model::now_ms();
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/record/oxygen"),
            Some(json!({"at_ms": now, "action": "start", "flow_l_min": 2, "device": "nasal_cannula"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let entry = r.body["entry_id"].as_str().unwrap().to_string();
    let (news2, esi, reasons) = next_triage(&mut rx, &case).await;
    assert_eq!(news2, Some(7), "{reasons:?}");
    assert_eq!(esi, 2);
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("ESI ≤ 2: NEWS2 7") && r.contains("on oxygen +2")),
        "{reasons:?}"
    );
    let rec = api.get(&t, &format!("/api/v1/cases/{case}/record")).await;
    assert_eq!(rec.body["oxygen"]["on_oxygen"], true);
    // Entered in error: the improvement is shown only once it has held for `hold`.
    let started = Instant::now();
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/record/entries/{entry}/entered-in-error"),
            Some(json!({"reason": "recorded on the wrong patient"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let (news2, esi, _) = next_triage(&mut rx, &case).await;
    assert_eq!((news2, esi), (Some(5), esi0));
    assert!(
        started.elapsed() >= hold,
        "de-escalated after {:?}",
        started.elapsed()
    );
    // The history keeps the entry and why it was withdrawn; triage no longer counts it.
    let rec = api.get(&t, &format!("/api/v1/cases/{case}/record")).await;
    assert_eq!(rec.body["oxygen"]["on_oxygen"], false);
    let hist: Vec<&Value> = rec.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["entry_id"] == entry.as_str())
        .collect();
    assert_eq!(hist.len(), 2);
    assert_eq!(hist[1]["state"], "entered_in_error");
    assert_eq!(hist[1]["reason"], "recorded on the wrong patient");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entered_in_error_vital_leaves_triage_and_handoff() {
    let api = Api::with_retriage(IDLE, Duration::ZERO).await;
    let mut rx = api.st.bus.subscribe();
    let t = api.login("medic").await;
    let case = open_case(&api, &t).await;
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/vitals"),
            Some(json!({"readings": [{"name": "heart_rate", "value": 30}]})),
        )
        .await;
    let id = r.body["ids"][0].as_i64().unwrap();
    let (_, esi, _) = next_triage(&mut rx, &case).await;
    assert!(esi <= 2, "HR 30 is a danger finding");
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/vitals/{id}/entered-in-error"),
            Some(json!({"reason": "probe artefact"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let (_, esi, _) = next_triage(&mut rx, &case).await;
    assert!(esi > 2, "the withdrawn reading no longer drives triage");
    let h = api.get(&t, &format!("/api/v1/cases/{case}/handoff")).await;
    assert_eq!(h.body["latest"], json!([]));
    assert_eq!(h.body["trend"], json!([]));
    let v = api.get(&t, &format!("/api/v1/cases/{case}/vitals")).await;
    assert_eq!(v.body["vitals"], json!([]));
    assert_eq!(v.body["entered_in_error"][0]["reason"], "probe artefact");
    // Twice is refused.
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/vitals/{id}/entered-in-error"),
            Some(json!({"reason": "again"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rapid_submits_with_one_request_key_store_one_entry() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let case = open_case(&api, &t).await;
    let now = hema3n_edge::model::now_ms();
    let body = json!({"at_ms": now, "medication": "salbutamol", "dose": 5, "dose_unit": "mg", "route": "nebulizer"});
    let path = format!("/api/v1/cases/{case}/record/medication");
    let key: &[(&str, &str)] = &[("idempotency-key", "tap-7f3a9c21")];
    let tap = || api.send("POST", &path, &t, Some(body.clone()), key);
    // Ten taps in flight together.
    let r = tokio::join!(
        tap(),
        tap(),
        tap(),
        tap(),
        tap(),
        tap(),
        tap(),
        tap(),
        tap(),
        tap()
    );
    let replies = [r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9];
    let ids: std::collections::BTreeSet<String> = replies
        .iter()
        .map(|r| {
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["entry_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one entry for ten taps");
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.body["replayed"] == false)
            .count(),
        1
    );
    assert_eq!(
        api.query_i64("SELECT count(*) FROM record_entries WHERE kind = 'medication'")
            .await,
        1
    );
    // Manual vitals too.
    let vpath = format!("/api/v1/cases/{case}/vitals");
    let vb = json!({"readings": [{"name": "heart_rate", "value": 88}]});
    for _ in 0..3 {
        let r = api
            .send(
                "POST",
                &vpath,
                &t,
                Some(vb.clone()),
                &[("idempotency-key", "tap-vitals-01")],
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    assert_eq!(api.query_i64("SELECT count(*) FROM observations").await, 1);
    // A bad key is refused before anything is stored.
    let r = api
        .send("POST", &vpath, &t, Some(vb), &[("idempotency-key", "x")])
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_patches_keep_other_fields_and_a_stale_write_is_412() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let r = api
        .post(
            &t,
            "/api/v1/patients",
            Some(json!({"last_name": "Unknown", "estimated_age_years": 45, "sex": "female"})),
        )
        .await;
    let p = r.body["id"].as_str().unwrap().to_string();
    let g = api.get(&t, &format!("/api/v1/patients/{p}")).await;
    let etag = g.headers["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, "\"1\"");
    // Identified later: a one-field patch keeps every other field.
    let r = api
        .send(
            "PATCH",
            &format!("/api/v1/patients/{p}"),
            &t,
            Some(json!({"first_name": "Ruth"})),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["etag"], "\"2\"");
    let g = api.get(&t, &format!("/api/v1/patients/{p}")).await;
    assert_eq!(g.body["first_name"], "Ruth");
    assert_eq!(g.body["estimated_age_years"], 45);
    assert_eq!(g.body["sex"], "female");
    // Two tablets edit version 2 at once: exactly one wins, the other gets 412 STALE.
    let path = format!("/api/v1/patients/{p}");
    let (a, b) = tokio::join!(
        api.send(
            "PATCH",
            &path,
            &t,
            Some(json!({"last_name": "Okafor"})),
            &[("if-match", "\"2\"")]
        ),
        api.send(
            "PATCH",
            &path,
            &t,
            Some(json!({"last_name": "Okoro"})),
            &[("if-match", "\"2\"")]
        ),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 412]);
    let stale = if a.status == StatusCode::PRECONDITION_FAILED {
        &a
    } else {
        &b
    };
    assert_eq!(stale.code(), "STALE");
    assert_eq!(stale.body["error"]["details"]["current_version"], 3);
    // Null clears a field (RFC 7386).
    let r = api
        .send(
            "PATCH",
            &path,
            &t,
            Some(json!({"estimated_age_years": null, "date_of_birth": "1979-04-02"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let g = api.get(&t, &path).await;
    assert!(g.body.get("estimated_age_years").is_none());
    // The audit names the fields changed, never their values.
    let d = api
        .query_text("SELECT details FROM audit_log WHERE action = 'patient.update' ORDER BY seq DESC LIMIT 1")
        .await;
    assert!(
        d.contains("date_of_birth") && d.contains("estimated_age_years"),
        "{d}"
    );
    assert!(!d.contains("1979"), "{d}");
    // Case details: a section patch on the record and on the case, both versioned.
    let case = open_case(&api, &t).await;
    let cp = format!("/api/v1/cases/{case}");
    let r = api
        .send(
            "PATCH",
            &cp,
            &t,
            Some(json!({"mechanism": "fall from standing"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let g = api.get(&t, &cp).await;
    assert_eq!(g.body["details"]["chief_complaint"], "breathless, COPD");
    assert_eq!(g.body["details"]["mechanism"], "fall from standing");
    let r = api
        .send(
            "PATCH",
            &cp,
            &t,
            Some(json!({"onset": "1 h"})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    let hp = format!("/api/v1/cases/{case}/record/history");
    let r = api
        .send(
            "PATCH",
            &hp,
            &t,
            Some(json!({"allergies": ["penicillin"]})),
            &[],
        )
        .await;
    assert_eq!(r.headers["etag"], "\"1\"");
    let r = api
        .send(
            "PATCH",
            &hp,
            &t,
            Some(json!({"medical_history": ["COPD"]})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let rec = api.get(&t, &format!("/api/v1/cases/{case}/record")).await;
    let h = rec.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "history")
        .unwrap()
        .clone();
    assert_eq!(
        h["content"],
        json!({"allergies": ["penicillin"], "medical_history": ["COPD"]})
    );
    assert_eq!(h["version"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_record_input_names_the_field_and_stores_nothing() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let case = open_case(&api, &t).await;
    let now = hema3n_edge::model::now_ms();
    let day = 86_400_000;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("record/scene", json!({"colour": "red"}), "colour"),
        (
            "record/times",
            json!({"call_received_ms": now - 60_000, "transfer_of_care_ms": now - 120_000}),
            "transfer_of_care_ms",
        ),
        (
            "record/times",
            json!({"on_scene_ms": now + 365 * day}),
            "on_scene_ms",
        ),
        (
            "record/times",
            json!({"on_scene_ms": now - 30 * day}),
            "on_scene_ms",
        ),
        (
            "record/situation",
            json!({"primary_impression": {"code": "Q99.999"}}),
            "primary_impression.code",
        ),
        (
            "record/narrative",
            json!({"text": "x".repeat(20_001)}),
            "text",
        ),
        (
            "record/history",
            json!({"no_known_allergies": true, "allergies": ["latex"]}),
            "no_known_allergies",
        ),
        ("record/spo2_scale", json!({"scale2": true}), "reason"),
        (
            "record/incident",
            json!({"incident_number": "7"}),
            "incident_number",
        ),
    ];
    for (path, body, field) in &cases {
        let r = api
            .send(
                "PATCH",
                &format!("/api/v1/cases/{case}/{path}"),
                &t,
                Some(body.clone()),
                &[],
            )
            .await;
        assert_eq!(
            (
                r.status,
                r.code(),
                r.body["error"]["details"]["field"].as_str()
            ),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "VALIDATION_ERROR",
                Some(*field)
            ),
            "{path} {body}: {}",
            r.body
        );
    }
    let events: Vec<(&str, Value, &str)> = vec![
        (
            "record/oxygen",
            json!({"at_ms": now, "action": "start"}),
            "flow_l_min",
        ),
        (
            "record/oxygen",
            json!({"at_ms": now, "action": "start", "flow_l_min": 2}),
            "device",
        ),
        (
            "record/procedure",
            json!({"at_ms": now, "procedure": "iv_access", "successful": true, "attempts": 0}),
            "attempts",
        ),
        (
            "record/medication",
            json!({"at_ms": now, "medication": "aspirin", "dose": -1, "dose_unit": "mg", "route": "oral"}),
            "dose",
        ),
        (
            "record/medication",
            json!({"at_ms": now, "medication": "aspirin", "dose": 300, "dose_unit": "mg"}),
            "route",
        ),
        ("record/assessment", json!({"at_ms": now}), "body"),
        (
            "record/assessment",
            json!({"at_ms": now, "gcs_eye": 5}),
            "gcs_eye",
        ),
        (
            "record/assessment",
            json!({"at_ms": now + day, "pain": 3}),
            "at_ms",
        ),
    ];
    for (path, body, field) in &events {
        let r = api
            .post(
                &t,
                &format!("/api/v1/cases/{case}/{path}"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["details"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(*field)),
            "{path} {body}: {}",
            r.body
        );
    }
    assert_eq!(
        api.query_i64("SELECT count(*) FROM record_entries").await,
        0
    );
    // A role without the permission is not offered the write either.
    let e = api.login("emt1").await;
    let r = api
        .post(
            &e,
            &format!("/api/v1/cases/{case}/record/medication"),
            Some(json!({"at_ms": now, "medication": "aspirin", "dose": 300, "dose_unit": "mg", "route": "oral"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // An empty manual vital is refused, not stored as 0.
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/vitals"),
            Some(json!({"readings": [{"name": "heart_rate"}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(api.query_i64("SELECT count(*) FROM observations").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsaved_form_survives_a_logoff_sealed_and_per_user() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let case = open_case(&api, &t).await;
    let path = format!("/api/v1/cases/{case}/drafts/narrative");
    let text = "Zebediah found at the bus stop, half-typed";
    let r = api
        .send("PUT", &path, &t, Some(json!({"text": text})), &[])
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // Sealed at rest: the text is not in the row.
    let raw = api.query_text("SELECT hex(body) FROM drafts LIMIT 1").await;
    assert!(
        !raw.contains(&hex(text.as_bytes())),
        "draft stored in plaintext"
    );
    // The same user after signing in again gets it back; another crew member does not see it.
    let t2 = api.login("medic").await;
    let r = api.get(&t2, &format!("/api/v1/cases/{case}/drafts")).await;
    assert_eq!(r.body["drafts"][0]["form"], "narrative");
    assert_eq!(r.body["drafts"][0]["body"]["text"], text);
    let e = api.login("emt1").await;
    let r = api.get(&e, &format!("/api/v1/cases/{case}/drafts")).await;
    assert_eq!(r.body["drafts"], json!([]));
    // Bounded; dropped once submitted.
    let big = json!({"text": "x".repeat(20_000)});
    let r = api.send("PUT", &path, &t2, Some(big), &[]).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR")
    );
    let r = api.send("DELETE", &path, &t2, None, &[]).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api.get(&t2, &format!("/api/v1/cases/{case}/drafts")).await;
    assert_eq!(r.body["drafts"], json!([]));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}
