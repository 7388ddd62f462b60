//! The tablet API against a LAN attacker, in-process on a manual clock: lockout by wrong PINs
//! from another address, parallel guessing, user enumeration, break-glass guessing, CLI
//! revocation, break-glass bound to its territory and streams ending with the grant.
//! (Connection floods and slow bodies against the real daemon over TLS: tests/api_flood.rs.)

mod common;

use axum::http::StatusCode;
use common::api::{Api, PIN};
use hema3n_edge::model::Actor;
use serde_json::json;

const IDLE: &str = "[api]\nidle_timeout_secs = 600\nsession_lifetime_secs = 43200\n";
const TABLET: [u8; 4] = [10, 0, 0, 10];
const ATTACKER: [u8; 4] = [10, 0, 0, 66];

async fn login_from(api: &Api, ip: [u8; 4], user: &str, secret: &str) -> common::api::Reply {
    api.call_from(
        ip,
        "POST",
        "/api/v1/auth/login",
        None,
        None,
        Some(json!({"user_id": user, "secret": secret})),
    )
    .await
}

fn retry_after(r: &common::api::Reply) -> i64 {
    r.headers
        .get("retry-after")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pins_from_another_address_never_lock_the_crew_out() {
    // Review #3: back-off per account, checked before the PIN, let anyone lock a crew out.
    let api = Api::new(IDLE).await;
    assert_eq!(
        login_from(&api, TABLET, "medic", PIN).await.status,
        StatusCode::OK
    );
    // A day of an attacker waiting out every back-off, the crew signing in between.
    for round in 0..140 {
        let r = login_from(&api, ATTACKER, "medic", "000000").await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&r.status),
            "{}",
            r.body
        );
        let r = login_from(&api, TABLET, "medic", PIN).await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.body);
        api.clock.advance_ms(retry_after(&r).max(600) * 1000);
    }
    // The attacker got the stated budget of guesses for the day, no more.
    let guesses = api
        .query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'login.failure' AND actor = 'medic'",
        )
        .await;
    assert!((1..=10).contains(&guesses), "{guesses} guesses in a day");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_pass_one_at_a_time_and_accounts_cannot_be_enumerated() {
    // Review #4: 32 parallel guesses all passed one back-off window.
    let api = Api::new(IDLE).await;
    let replies = futures_util::future::join_all(
        (0..32).map(|_| login_from(&api, ATTACKER, "emt1", "bad-pin")),
    )
    .await;
    let wrong = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    assert!(wrong <= 3, "{wrong} of 32 parallel guesses were checked");
    // Spread over many addresses: the account's budget still holds.
    let replies = futures_util::future::join_all(
        (0..64u8).map(|i| login_from(&api, [10, 1, 0, i], "super1", "bad-pin")),
    )
    .await;
    let wrong = replies
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED)
        .count();
    assert!(wrong <= 10, "{wrong} guesses from 64 addresses");
    // A known and an unknown id answer the same sequence.
    let seq = |user: &'static str| {
        let api = &api;
        async move {
            let mut out = Vec::new();
            for _ in 0..6 {
                out.push(login_from(api, [10, 2, 0, 1], user, "bad-pin").await.status);
            }
            out
        }
    };
    let known = seq("staff1").await;
    let unknown = seq("nosuch").await;
    assert_eq!(known, unknown);
    assert!(known.contains(&StatusCode::TOO_MANY_REQUESTS));
    // Throttled attempts are counted, not each written to the audit log.
    let rows = api
        .query_i64("SELECT count(*) FROM audit_log WHERE action = 'login.failure'")
        .await;
    assert!(rows <= 3 + 10 + 6, "{rows} audit rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_guessing_is_throttled_and_a_disabled_user_cannot_break_glass() {
    // Review #5: 200 wrong break-glass PINs were never throttled.
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let mut statuses = Vec::new();
    for i in 0..200 {
        let r = api
            .break_glass(
                &t,
                "north",
                "unconscious, no ID on scene",
                &format!("{i:06}"),
            )
            .await;
        statuses.push(r.status);
    }
    let wrong = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(wrong <= 20, "{wrong} break-glass guesses checked");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    // Review #6: a disabled user's token is dead at once, break-glass included.
    let v = api.login("victim").await;
    let st = api.st.clone();
    st.store
        .call(|db| db.set_user_disabled(&Actor::cli(), "victim", true))
        .await
        .unwrap();
    let r = api.get(&v, "/api/v1/cases").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = api
        .break_glass(&v, "default", "patient collapsed in the lobby", PIN)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_secret_change_ends_live_sessions_at_once() {
    let api = Api::new(IDLE).await;
    let t = api.login("emt1").await;
    let r = api.get(&t, "/api/v1/cases").await;
    assert_eq!(r.status, StatusCode::OK);
    let phc = hema3n_edge::crypto::password::hash_secret("new-pin-7391").unwrap();
    api.st
        .store
        .call(move |db| db.set_user_secret(&Actor::cli(), "emt1", &phc))
        .await
        .unwrap();
    let r = api.get(&t, "/api/v1/cases").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("administrator")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_opens_only_its_territory_and_its_stream_ends_with_it() {
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let r = api
        .break_glass(&t, "north", "unconscious, no ID on scene", PIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .call("GET", "/api/v1/cases", Some(&t), Some("north"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Review #7a: another territory than the one named stays closed.
    let r = api
        .call("GET", "/api/v1/cases", Some(&t), Some("east"), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH")
    );
    // Review #7b: a stream opened under the grant ends when the grant does, although the
    // session stays alive.
    let north_case = api
        .st
        .store
        .call(|db| {
            db.create_case(
                &Actor::cli(),
                "north",
                None,
                &hema3n_edge::model::CaseDetails::default(),
            )
        })
        .await
        .unwrap();
    let mut body = open_stream(&api, &t, "north", &north_case).await;
    let minutes = api.st.cfg.api.break_glass_minutes as i64;
    for _ in 0..(minutes / 9 + 1) {
        api.clock.advance_ms(9 * 60_000);
        let r = api.get(&t, "/api/v1/auth/me").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let ev = next_named_event(&mut body).await;
    assert_eq!(ev, "grant_expired");
}

async fn open_stream(api: &Api, token: &str, territory: &str, case: &str) -> axum::body::Body {
    let (status, body) = try_stream(api, token, territory, case).await;
    assert_eq!(status, StatusCode::OK);
    body
}

async fn try_stream(
    api: &Api,
    token: &str,
    territory: &str,
    case: &str,
) -> (StatusCode, axum::body::Body) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .uri(format!("/api/v1/cases/{case}/stream"))
        .header("authorization", format!("Bearer {token}"))
        .header("territory-id", territory)
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    (resp.status(), resp.into_body())
}

/// The next SSE event name (skipping keep-alive comments), within 10 s.
async fn next_named_event(body: &mut axum::body::Body) -> String {
    use http_body_util::BodyExt;
    let deadline = std::time::Duration::from_secs(10);
    tokio::time::timeout(deadline, async {
        loop {
            let frame = body.frame().await.expect("stream open").unwrap();
            if let Ok(data) = frame.into_data() {
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some(name) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("event: ").or(l.strip_prefix("event:")))
                {
                    return name.trim().to_string();
                }
            }
        }
    })
    .await
    .expect("an event within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_alone_cannot_mint_a_clinical_login_or_reach_other_territories() {
    // Review #8.
    let api = Api::new(IDLE).await;
    let admin = api.login("admin1").await;
    let ghost =
        json!({"id": "ghost", "display_name": "G", "role": "paramedic", "secret": "pin-5931"});
    let r = api.post(&admin, "/api/v1/users", Some(ghost)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = login_from(&api, TABLET, "ghost", "pin-5931").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "pending approval");
    // Another territory: neither created there nor disabled there.
    let north = json!({"id": "ghost2", "display_name": "G", "role": "paramedic", "territory": "north", "secret": "pin-5931"});
    let r = api.post(&admin, "/api/v1/users", Some(north)).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH")
    );
    let r = api.post(&admin, "/api/v1/users/north1/disable", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // The list shows the pending account to its territory's supervisor, who approves it.
    let sup = api.login("super1").await;
    let r = api.get(&sup, "/api/v1/users").await;
    let users = r.body["users"].as_array().unwrap();
    assert!(users.iter().all(|u| u["territory"] == "default"));
    assert!(
        users
            .iter()
            .any(|u| u["id"] == "ghost" && u["pending_approval"] == true)
    );
    let r = api.post(&sup, "/api/v1/users/ghost/approve", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = login_from(&api, TABLET, "ghost", "pin-5931").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Approval is once, for pending accounts only.
    let r = api.post(&sup, "/api/v1/users/victim/approve", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_reviews_only_their_own_territory() {
    // Review #18.
    let api = Api::new(IDLE).await;
    let n = api.login("north1").await;
    // Into a territory this appliance holds no key for: nothing to read there, refused.
    let r = api
        .break_glass(&n, "east", "mutual aid into east, crew down", PIN)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    // A use that concerns only north (by a north user, into north).
    let r = api
        .break_glass(&n, "north", "unknown patient, own territory", PIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let foreign = r.body["break_glass_id"].as_i64().unwrap();
    let m = api.login("medic").await;
    let r = api
        .break_glass(&m, "north", "mutual aid into north, crew down", PIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let own = r.body["break_glass_id"].as_i64().unwrap();
    let sup = api.login("super1").await;
    let r = api.get(&sup, "/api/v1/break-glass").await;
    let ids: Vec<i64> = r.body["uses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![own], "only the use by one of default's users");
    let r = api
        .post(
            &sup,
            &format!("/api/v1/break-glass/{foreign}/review"),
            Some(json!({"note": "not mine"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.get(&sup, "/api/v1/audit?limit=500").await;
    let entries = r.body["entries"].as_array().unwrap();
    assert!(!entries.is_empty());
    assert!(
        entries.iter().all(|e| e["territory"] == "default"),
        "another territory's trail leaked"
    );
}

/// Stores one heart-rate reading of `device` at device time `t`, received at `recv`.
async fn hr(api: &Api, device: &'static str, t: i64, recv: i64, v: f64) {
    use hema3n_edge::model::Reading;
    use hema3n_edge::storage::IngestItem;
    let item = IngestItem::Vitals {
        device_id: device.into(),
        topic: format!("hema3n/v1/devices/{device}/vitals"),
        recv_ms: recv,
        parsed: Ok(vec![Reading {
            code: "heart_rate",
            value: v,
            device_time_ms: t,
        }]),
        payload: Default::default(),
    };
    api.st
        .store
        .call(move |db| db.ingest_batch(&[item], true, "default"))
        .await
        .unwrap();
}

async fn open_case(api: &Api) -> String {
    api.st
        .store
        .call(|db| {
            db.create_case(
                &Actor::cli(),
                "default",
                None,
                &hema3n_edge::model::CaseDetails::default(),
            )
        })
        .await
        .unwrap()
}

/// An open case with monitor `mon-1` registered and bound to it.
async fn case_with_monitor(api: &Api) -> String {
    let case = open_case(api).await;
    let c = case.clone();
    api.st
        .store
        .call(move |db| {
            db.register_device(&Actor::cli(), "mon-1", "monitor", "default", None)?;
            db.bind_device(&Actor::cli(), "mon-1", &c, false)
        })
        .await
        .unwrap();
    case
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_dated_ahead_does_not_hide_later_ones() {
    // Review #11: one reading at now + 23 h pinned triage and the handoff to it for 23 h.
    let api = Api::new(IDLE).await;
    let now = hema3n_edge::model::now_ms();
    let case = case_with_monitor(&api).await;
    hr(&api, "mon-1", now + 23 * 3_600_000, now, 70.0).await;
    hr(&api, "mon-1", now + 60_000, now + 60_000, 180.0).await;
    let c = case.clone();
    let snap = api
        .st
        .store
        .call(move |db| db.case_snapshot(&Actor::cli(), &c))
        .await
        .unwrap();
    assert_eq!(snap.latest, vec![("heart_rate".to_string(), 180.0)]);
    let t = api.login("medic").await;
    let r = api.get(&t, &format!("/api/v1/cases/{case}/handoff")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let hr_latest: Vec<&serde_json::Value> = r.body["latest"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["code"] == "heart_rate")
        .collect();
    assert_eq!(hr_latest.len(), 1, "{}", r.body);
    assert_eq!(hr_latest[0]["text"], "180/min", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_never_takes_the_previous_patients_readings_or_another_open_case() {
    // Review #12.
    let api = Api::new(IDLE).await;
    let now = hema3n_edge::model::now_ms();
    let (a, b) = (open_case(&api).await, open_case(&api).await);
    let t = api.login("medic").await;
    api.st
        .store
        .call(|db| db.register_device(&Actor::cli(), "mon-2", "monitor", "default", None))
        .await
        .unwrap();
    let bind = |case: &str| format!("/api/v1/cases/{case}/devices");
    let r = api
        .post(&t, &bind(&a), Some(json!({"device_id": "mon-2"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for i in 0..5 {
        hr(&api, "mon-2", now + i * 1000, now + i * 1000, 70.0).await;
    }
    // Bound to open case A: another case cannot take it silently.
    let r = api
        .post(&t, &bind(&b), Some(json!({"device_id": "mon-2"})))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // A is closed (the device unbinds) while the monitor stays on patient A.
    let r = api
        .post(&t, &format!("/api/v1/cases/{a}/close"), None)
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    for i in 5..10 {
        hr(&api, "mon-2", now + i * 1000, now + i * 1000, 72.0).await;
    }
    let r = api
        .post(&t, &bind(&b), Some(json!({"device_id": "mon-2"})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["attached_readings"], 0,
        "nothing attached by default"
    );
    let r = api.get(&t, &format!("/api/v1/cases/{b}/vitals")).await;
    assert_eq!(
        r.body["vitals"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crypto_erase_leaves_no_plaintext_clinical_trace_and_break_glass_text_is_sealed() {
    // Review #17.
    let api = Api::new(IDLE).await;
    let now = hema3n_edge::model::now_ms();
    let case = case_with_monitor(&api).await;
    let c = case.clone();
    api.st
        .store
        .call(move |db| {
            let rec = common::api::sample_triage("psychiatry");
            db.record_triage(&Actor::system(), &c, &rec).map(|_| ())
        })
        .await
        .unwrap();
    hr(&api, "mon-1", now, now, 130.0).await;
    // Care-record entries, and a submit key.
    let m = api.login("medic").await;
    let r = api
        .send(
            "POST",
            &format!("/api/v1/cases/{case}/record/oxygen"),
            &m,
            Some(json!({"at_ms": now, "action": "start", "flow_l_min": 2, "device": "nasal_cannula"})),
            &[("idempotency-key", "erase-test-0001")],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = api
        .send(
            "PUT",
            &format!("/api/v1/cases/{case}/drafts/narrative"),
            &m,
            Some(json!({"text": "half-typed"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // A break-glass reason naming the patient, reviewed with a note naming them again.
    let n = api.login("north1").await;
    let r = api
        .break_glass(&n, "default", "Zebediah Quarrington, found on scene", PIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let sup = api.login("super1").await;
    let id = r.body["break_glass_id"].as_i64().unwrap();
    let r = api
        .post(
            &sup,
            &format!("/api/v1/break-glass/{id}/review"),
            Some(json!({"note": "Quarrington family confirmed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The reviewer still reads both texts.
    let r = api.get(&sup, "/api/v1/break-glass").await;
    let use_ = &r.body["uses"][0];
    assert_eq!(use_["reason"], "Zebediah Quarrington, found on scene");
    assert_eq!(use_["review_note"], "Quarrington family confirmed");
    let c = case.clone();
    api.st
        .store
        .call(move |db| {
            db.close_case(&Actor::cli(), &c)?;
            db.erase_case(&Actor::cli(), &c)
        })
        .await
        .unwrap();
    for (sql, what) in [
        ("SELECT count(*) FROM triage_results", "triage rows"),
        ("SELECT count(*) FROM record_entries", "care-record rows"),
        ("SELECT count(*) FROM request_keys", "request keys"),
        ("SELECT count(*) FROM drafts", "drafts"),
        (
            "SELECT count(*) FROM observations WHERE device_id = 'mon-1'",
            "vital rows",
        ),
        (
            "SELECT count(*) FROM break_glass WHERE reason != '' OR review_note IS NOT NULL",
            "plaintext break-glass text",
        ),
    ] {
        assert_eq!(api.query_i64(sql).await, 0, "{what} left after erase");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_vital_code_an_esi_or_a_record_entry_with_the_database_key_is_detected() {
    // Review #23: the associated data bound only the value's own location.
    let api = Api::new(IDLE).await;
    let now = hema3n_edge::model::now_ms();
    let case = case_with_monitor(&api).await;
    hr(&api, "mon-1", now, now, 130.0).await;
    let c = case.clone();
    api.st
        .store
        .call(move |db| {
            db.record_triage(
                &Actor::system(),
                &c,
                &common::api::sample_triage("cardiology"),
            )
            .map(|_| ())
        })
        .await
        .unwrap();
    let t = api.login("medic").await;
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/record/medication"),
            Some(json!({"at_ms": now, "medication": "aspirin", "dose": 300, "dose_unit": "mg", "route": "oral"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for path in ["vitals", "triage", "record", ""] {
        let p = format!("/api/v1/cases/{case}/{path}");
        assert_eq!(
            api.get(&t, p.trim_end_matches('/')).await.status,
            StatusCode::OK
        );
    }
    // An insider with db.key (no territory keys) edits the plaintext columns beside the values.
    // Each edit is undone before the next, so each read fails for its own edit only.
    let edits = [
        (
            "UPDATE observations SET code = 'resp_rate' WHERE device_id = 'mon-1'",
            "UPDATE observations SET code = 'heart_rate' WHERE device_id = 'mon-1'",
            "vitals",
        ),
        (
            "UPDATE triage_results SET final_esi = 5",
            "UPDATE triage_results SET final_esi = 2",
            "triage",
        ),
        (
            "UPDATE record_entries SET recorded_by = 'emt1'",
            "UPDATE record_entries SET recorded_by = 'medic'",
            "",
        ),
        (
            "UPDATE record_entries SET kind = 'procedure'",
            "UPDATE record_entries SET kind = 'medication'",
            "record",
        ),
        (
            "UPDATE record_entries SET state = 'entered_in_error'",
            "UPDATE record_entries SET state = 'recorded'",
            "record",
        ),
    ];
    let sql = |q: &str| {
        let db = api.app.open();
        db.raw_connection_for_tests().execute(q, []).unwrap();
    };
    for (edit, undo, path) in edits {
        let p = format!("/api/v1/cases/{case}/{path}");
        let p = p.trim_end_matches('/');
        sql(edit);
        let r = api.get(&t, p).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, "ENCRYPTION_ERROR"),
            "{edit} went unnoticed: {}",
            r.body
        );
        sql(undo);
        assert_eq!(api.get(&t, p).await.status, StatusCode::OK, "after {undo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_record_is_final_and_an_erased_patient_cannot_start_a_case() {
    // Review #19.
    let api = Api::new(IDLE).await;
    let t = api.login("medic").await;
    let r = api
        .post(
            &t,
            "/api/v1/patients",
            Some(json!({"last_name": "Lee", "phone": "555-0100"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let p = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .post(&t, "/api/v1/cases", Some(json!({"patient_id": p})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let case = r.body["id"].as_str().unwrap().to_string();
    // While the case is open the crew may correct the demographics.
    let put = |phone: &'static str| {
        let (api, t, p) = (&api, &t, &p);
        async move {
            api.call(
                "PUT",
                &format!("/api/v1/patients/{p}"),
                Some(t),
                Some("default"),
                Some(json!({"last_name": "Lee", "phone": phone})),
            )
            .await
        }
    };
    assert!(put("555-0101").await.status.is_success());
    let r = api
        .post(&t, &format!("/api/v1/cases/{case}/close"), None)
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let r = put("555-0102").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    // After custody the case is crypto-erased (and the patient with it).
    let c = case.clone();
    api.st
        .store
        .call(move |db| db.erase_case(&Actor::cli(), &c))
        .await
        .unwrap();
    let r = api
        .post(&t, "/api/v1/cases", Some(json!({"patient_id": p})))
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "PATIENT_NOT_FOUND"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_session_cannot_take_every_live_stream() {
    // Review #28: api.max_streams was global only.
    let api = Api::new(IDLE).await;
    let case = open_case(&api).await;
    let a = api.login("medic").await;
    let per_session = api.st.cfg.api.max_streams_per_session;
    let mut held = Vec::new();
    for _ in 0..per_session {
        held.push(open_stream(&api, &a, "default", &case).await);
    }
    let (status, _) = try_stream(&api, &a, "default", &case).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let b = api.login("emt1").await;
    let _other = open_stream(&api, &b, "default", &case).await;
    // A stream that ends gives its slot back.
    held.pop();
    let _again = open_stream(&api, &a, "default", &case).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_stay_on_loopback_and_the_case_list_accounts_for_each_name_shown() {
    // Review #26: login counters let a LAN host watch crews sign in.
    let api = Api::new(IDLE).await;
    let r = api
        .call_from([10, 0, 0, 66], "GET", "/metrics", None, None, None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .call_from([127, 0, 0, 1], "GET", "/metrics", None, None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Review #27: the case list showed names under one `case/*` entry.
    let t = api.login("medic").await;
    let r = api
        .post(&t, "/api/v1/patients", Some(json!({"last_name": "Okafor"})))
        .await;
    let p = r.body["id"].as_str().unwrap().to_string();
    let r = api
        .post(&t, "/api/v1/cases", Some(json!({"patient_id": p})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let head = api.audit_head().await;
    assert_eq!(api.get(&t, "/api/v1/cases").await.status, StatusCode::OK);
    let details = api
        .query_text(&format!(
            "SELECT details FROM audit_log WHERE seq > {head} AND action = 'case.list'"
        ))
        .await;
    assert!(details.contains(&p), "{details}");
}
