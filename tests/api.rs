//! The tablet API in-process: every role × route (allow/deny), territory isolation,
//! break-glass, sessions on a manual clock, login back-off, audit coverage and error format.

mod common;

use axum::http::StatusCode;
use common::api::{Api, PIN};
use hema3n_edge::api::policy::ROUTES;
use hema3n_edge::model::Actor;
use serde_json::{Value, json};

const IDLE: &str = "[api]\nidle_timeout_secs = 600\nsession_lifetime_secs = 43200\n";

/// Fixtures in territory `default` (and one case in `north`).
struct Fx {
    patient: String,
    case: String,
    north_case: String,
    /// Care-record events of `case`: one to correct, one to mark entered-in-error.
    entry: String,
    entry_void: String,
    /// A manual reading of `case`.
    reading: i64,
    /// A stored photo of `case`, and one whose upload is under way (1 MiB announced).
    photo: String,
    upload: String,
}

async fn fixtures(api: &Api) -> Fx {
    let t = api.login("medic").await;
    let p = api
        .call(
            "POST",
            "/api/v1/patients",
            Some(&t),
            Some("default"),
            Some(json!({"first_name": "Ann", "last_name": "Lee", "date_of_birth": "1950-02-03"})),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    let patient = p.body["id"].as_str().unwrap().to_string();
    let c = api
        .call(
            "POST",
            "/api/v1/cases",
            Some(&t),
            Some("default"),
            Some(json!({"patient_id": patient, "chief_complaint": "chest pain"})),
        )
        .await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let tn = api.login("north1").await;
    let n = api
        .call(
            "POST",
            "/api/v1/cases",
            Some(&tn),
            Some("north"),
            Some(json!({"chief_complaint": "fall"})),
        )
        .await;
    assert_eq!(n.status, StatusCode::CREATED, "{}", n.body);
    api.st
        .store
        .call(|db| {
            for d in ["mon-1", "mon-2"] {
                db.register_device(&Actor::cli(), d, "monitor", "default", None)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let case = c.body["id"].as_str().unwrap().to_string();
    let mut entries = vec![];
    for flow in [2, 4] {
        let r = api
            .post(
                &t,
                &format!("/api/v1/cases/{case}/record/oxygen"),
                Some(json!({"at_ms": hema3n_edge::model::now_ms(), "action": "start", "flow_l_min": flow, "device": "nasal_cannula"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        entries.push(r.body["entry_id"].as_str().unwrap().to_string());
    }
    let r = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/vitals"),
            Some(json!({"readings": [{"name": "resp_rate", "value": 16}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let a = api
        .attach(&t, &case, "scene_photo", &common::png_image(64, 48), 4096)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["state"], "stored", "{}", a.body);
    let photo = a.body["id"].as_str().unwrap().to_string();
    let u = api
        .post(
            &t,
            &format!("/api/v1/cases/{case}/attachments"),
            Some(json!({"kind": "wound", "size": 1 << 20})),
        )
        .await;
    assert_eq!(u.status, StatusCode::CREATED, "{}", u.body);
    Fx {
        photo,
        upload: u.body["id"].as_str().unwrap().to_string(),
        patient,
        case,
        north_case: n.body["id"].as_str().unwrap().to_string(),
        entry: entries[0].clone(),
        entry_void: entries[1].clone(),
        reading: r.body["ids"][0].as_i64().unwrap(),
    }
}

/// Expected access, written independently of the route table: letters of the roles allowed
/// (P paramedic, E emt, S staff, V supervisor, A admin; * = public).
const EXPECTED: &[(&str, &str, &str)] = &[
    ("GET", "/healthz", "*"),
    ("GET", "/metrics", "*"),
    ("GET", "/api/v1/openapi.json", "*"),
    ("POST", "/api/v1/auth/login", "*"),
    ("POST", "/api/v1/auth/logout", "PESVA"),
    ("GET", "/api/v1/auth/me", "PESVA"),
    ("POST", "/api/v1/auth/break-glass", "PESV"),
    ("GET", "/api/v1/patients", "PESV"),
    ("POST", "/api/v1/patients", "PES"),
    ("GET", "/api/v1/patients/{id}", "PESV"),
    ("PUT", "/api/v1/patients/{id}", "PES"),
    ("GET", "/api/v1/cases", "PESV"),
    ("POST", "/api/v1/cases", "PE"),
    ("GET", "/api/v1/cases/{id}", "PEV"),
    ("POST", "/api/v1/cases/{id}/devices", "PE"),
    ("DELETE", "/api/v1/cases/{id}/devices/{device_id}", "PE"),
    ("GET", "/api/v1/cases/{id}/vitals", "PEV"),
    ("POST", "/api/v1/cases/{id}/vitals", "PE"),
    ("GET", "/api/v1/cases/{id}/triage", "PEV"),
    ("PATCH", "/api/v1/cases/{id}", "PE"),
    ("GET", "/api/v1/record/codes", "PEV"),
    ("GET", "/api/v1/cases/{id}/record", "PEV"),
    ("GET", "/api/v1/cases/{id}/nemsis", "PEV"),
    ("GET", "/api/v1/cases/{id}/drafts", "PE"),
    ("PUT", "/api/v1/cases/{id}/drafts/{form}", "PE"),
    ("DELETE", "/api/v1/cases/{id}/drafts/{form}", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/incident", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/times", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/scene", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/situation", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/history", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/disposition", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/narrative", "PE"),
    ("PATCH", "/api/v1/cases/{id}/record/spo2_scale", "P"),
    ("POST", "/api/v1/cases/{id}/record/oxygen", "PE"),
    ("POST", "/api/v1/cases/{id}/record/procedure", "PE"),
    ("POST", "/api/v1/cases/{id}/record/medication", "P"),
    ("POST", "/api/v1/cases/{id}/record/assessment", "PE"),
    ("PUT", "/api/v1/cases/{id}/record/entries/{entry_id}", "PE"),
    (
        "POST",
        "/api/v1/cases/{id}/record/entries/{entry_id}/entered-in-error",
        "PE",
    ),
    (
        "POST",
        "/api/v1/cases/{id}/vitals/{reading_id}/entered-in-error",
        "PE",
    ),
    ("PATCH", "/api/v1/patients/{id}", "PES"),
    ("GET", "/api/v1/cases/{id}/stream", "PEV"),
    ("GET", "/api/v1/cases/{id}/handoff", "PEV"),
    ("GET", "/api/v1/cases/{id}/handoff/pdf", "PEV"),
    ("GET", "/api/v1/cases/{id}/attachments", "PEV"),
    ("POST", "/api/v1/cases/{id}/attachments", "PE"),
    ("GET", "/api/v1/cases/{id}/attachments/{aid}", "PEV"),
    (
        "PATCH",
        "/api/v1/cases/{id}/attachments/{aid}/content",
        "PE",
    ),
    ("GET", "/api/v1/cases/{id}/attachments/{aid}/content", "PEV"),
    (
        "GET",
        "/api/v1/cases/{id}/attachments/{aid}/thumbnail",
        "PEV",
    ),
    ("POST", "/api/v1/cases/{id}/transfer", "PE"),
    ("POST", "/api/v1/cases/{id}/close", "PE"),
    ("GET", "/api/v1/devices", "PEA"),
    ("GET", "/api/v1/sync", "PEVA"),
    ("GET", "/api/v1/audit", "V"),
    ("GET", "/api/v1/patients/{id}/disclosures", "V"),
    ("GET", "/api/v1/break-glass", "V"),
    ("POST", "/api/v1/break-glass/{id}/review", "V"),
    ("GET", "/api/v1/compliance", "VA"),
    ("GET", "/api/v1/grants", "V"),
    ("POST", "/api/v1/grants", "V"),
    ("POST", "/api/v1/grants/{id}/revoke", "V"),
    ("GET", "/api/v1/users", "VA"),
    ("POST", "/api/v1/users", "A"),
    ("POST", "/api/v1/users/{id}/disable", "A"),
    ("POST", "/api/v1/users/{id}/approve", "V"),
];

const ROLES: [(char, &str); 5] = [
    ('P', "medic"),
    ('E', "emt1"),
    ('S', "staff1"),
    ('V', "super1"),
    ('A', "admin1"),
];

/// A concrete request for a route template.
fn request(method: &str, path: &str, fx: &Fx) -> (String, Option<Value>) {
    let id = if path.starts_with("/api/v1/patients/") {
        fx.patient.clone()
    } else if path == "/api/v1/users/{id}/approve" {
        // Created (pending approval) by the admin's POST /api/v1/users.
        "new-user".into()
    } else if path.starts_with("/api/v1/users/") {
        "victim".into()
    } else if path.starts_with("/api/v1/break-glass/") || path.starts_with("/api/v1/grants/") {
        "1".into()
    } else {
        fx.case.clone()
    };
    let entry = if path.ends_with("/entered-in-error") {
        &fx.entry_void
    } else {
        &fx.entry
    };
    let mut p = path
        .replace("{id}", &id)
        .replace("{device_id}", "mon-1")
        .replace("{entry_id}", entry)
        .replace("{reading_id}", &fx.reading.to_string())
        .replace("{form}", "narrative")
        .replace(
            "{aid}",
            if method == "PATCH" {
                &fx.upload
            } else {
                &fx.photo
            },
        );
    if method == "GET" && p == "/api/v1/patients" {
        p.push_str("?last_name=Lee");
    }
    let body = match (method, path) {
        ("POST", "/api/v1/auth/login") => Some(json!({"user_id": "medic", "secret": PIN})),
        ("POST", "/api/v1/auth/break-glass") => {
            Some(json!({"reason": "unconscious patient, no id", "secret": PIN}))
        }
        ("POST", "/api/v1/patients") | ("PUT", "/api/v1/patients/{id}") => {
            Some(json!({"last_name": "Lee"}))
        }
        ("POST", "/api/v1/cases") => Some(json!({"chief_complaint": "dyspnoea"})),
        ("POST", "/api/v1/cases/{id}/attachments") => {
            Some(json!({"kind": "ecg", "caption": "12-lead", "size": 1000}))
        }
        ("POST", "/api/v1/cases/{id}/devices") => Some(json!({"device_id": "mon-2"})),
        ("POST", "/api/v1/cases/{id}/vitals") => {
            Some(json!({"readings": [{"name": "heart_rate", "value": 88}]}))
        }
        ("PATCH", "/api/v1/cases/{id}") => Some(json!({"mechanism": "fall from standing"})),
        ("PATCH", "/api/v1/patients/{id}") => Some(json!({"first_name": "Anne"})),
        ("PATCH", "/api/v1/cases/{id}/record/incident") => Some(
            json!({"unit": "M12", "dispatch_reason": "chest_pain", "response_mode": "emergent"}),
        ),
        ("PATCH", "/api/v1/cases/{id}/record/times") => {
            let now = hema3n_edge::model::now_ms();
            Some(
                json!({"dispatched_ms": now - 600_000, "on_scene_ms": now - 60_000, "in_service_ms": now}),
            )
        }
        ("PATCH", "/api/v1/cases/{id}/record/scene") => Some(json!({"patient_count": 1})),
        ("PATCH", "/api/v1/cases/{id}/record/situation") => {
            Some(json!({"primary_impression": {"code": "J44.1"}}))
        }
        ("PATCH", "/api/v1/cases/{id}/record/history") => Some(json!({"no_known_allergies": true})),
        ("PATCH", "/api/v1/cases/{id}/record/disposition") => {
            Some(json!({"destination": "General Hospital"}))
        }
        ("PATCH", "/api/v1/cases/{id}/record/narrative") => Some(json!({"text": "found sitting"})),
        ("POST", "/api/v1/cases/{id}/transfer") => {
            // After on scene, before in service (the times fixture above).
            let at = hema3n_edge::model::now_ms() - 30_000;
            Some(
                json!({"receiving_clinician": "Dr Ada Grey", "receiving_role": "ED attending", "at_ms": at}),
            )
        }
        ("PUT", "/api/v1/cases/{id}/drafts/{form}") => Some(json!({"text": "found sitting in"})),
        ("POST", "/api/v1/grants") => Some(json!({
            "user_id": "north1", "case_id": fx.case, "access": "read",
            "reason": "mutual aid: north crew takes over", "minutes": 60,
        })),
        ("PATCH", "/api/v1/cases/{id}/record/spo2_scale") => {
            Some(json!({"scale2": true, "reason": "documented hypercapnia"}))
        }
        ("POST", "/api/v1/cases/{id}/record/oxygen")
        | ("PUT", "/api/v1/cases/{id}/record/entries/{entry_id}") => Some(
            json!({"at_ms": hema3n_edge::model::now_ms(), "action": "change", "flow_l_min": 6, "device": "simple_mask"}),
        ),
        ("POST", "/api/v1/cases/{id}/record/procedure") => Some(
            json!({"at_ms": hema3n_edge::model::now_ms(), "procedure": "iv_access", "successful": true}),
        ),
        ("POST", "/api/v1/cases/{id}/record/medication") => Some(
            json!({"at_ms": hema3n_edge::model::now_ms(), "medication": "aspirin", "dose": 300, "dose_unit": "mg", "route": "oral"}),
        ),
        ("POST", "/api/v1/cases/{id}/record/assessment") => {
            Some(json!({"at_ms": hema3n_edge::model::now_ms(), "pain": 3}))
        }
        ("POST", p) if p.ends_with("/entered-in-error") => {
            Some(json!({"reason": "recorded on the wrong case"}))
        }
        ("POST", "/api/v1/break-glass/{id}/review") => Some(json!({"note": "justified"})),
        ("POST", "/api/v1/users") => Some(
            json!({"id": "new-user", "display_name": "New", "role": "emt", "secret": "pin-5931"}),
        ),
        _ => None,
    };
    (p, body)
}

/// Calls a route of [`EXPECTED`] as `token` in `default`; a correction names the version it
/// corrects (the fixture entry's first).
async fn call_route(
    api: &Api,
    method: &str,
    p: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> common::api::Reply {
    if method == "PATCH" && path.ends_with("/content") {
        // The next piece of the fixture upload: a PNG's first bytes, then anything.
        let aid = p.split('/').nth(6).unwrap().to_string();
        let received = api
            .st
            .store
            .call(move |db| {
                Ok(db
                    .raw_connection_for_tests()
                    .query_row(
                        "SELECT received FROM attachments WHERE id = ?1",
                        [&aid],
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap())
            })
            .await
            .unwrap();
        let piece = if received == 0 {
            common::png_image(32, 32)[..200].to_vec()
        } else {
            vec![7u8; 100]
        };
        let off = received.to_string();
        return api
            .send_bytes(
                method,
                p,
                token,
                piece,
                &[
                    ("content-type", "application/offset+octet-stream"),
                    ("upload-offset", &off),
                ],
            )
            .await;
    }
    let headers: &[(&str, &str)] = if path.ends_with("/record/entries/{entry_id}") {
        &[("if-match", "\"1\"")]
    } else {
        &[]
    };
    api.send(method, p, token, body, headers).await
}

/// A break-glass use by `staff1` (for the review routes).
async fn staff_break_glass(api: &Api) {
    let s = api.login("staff1").await;
    let r = api
        .break_glass(&s, "default", "patient collapsed in the lobby", PIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_on_every_route() {
    let api = Api::new(IDLE).await;
    let fx = fixtures(&api).await;
    // The table under test lists exactly the routes this test expects.
    let mut listed: Vec<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.into(), r.path.into()))
        .collect();
    let mut expected: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected, "route table and expectations differ");
    // A break-glass use for the review route.
    staff_break_glass(&api).await;
    let mut failures = Vec::new();
    for (method, path, allowed) in EXPECTED {
        for (letter, user) in ROLES {
            // A fresh session per call: logout and break-glass change the session itself.
            let token = api.login(user).await;
            let (p, body) = request(method, path, &fx);
            let r = call_route(&api, method, &p, path, &token, body).await;
            let ok = *allowed == "*" || allowed.contains(letter);
            let denied = r.status == StatusCode::FORBIDDEN && r.code() == "FORBIDDEN";
            assert!(
                r.status != StatusCode::UNAUTHORIZED,
                "{method} {p} as {user}: 401 {}",
                r.body
            );
            if ok == denied
                || r.status == StatusCode::NOT_FOUND
                    && r.body["error"]["message"] == "no such route"
            {
                failures.push(format!(
                    "{method} {path} as {user}: expected {}, got {} {}",
                    if ok { "allow" } else { "deny" },
                    r.status,
                    r.body
                ));
            }
            if ok && !denied {
                assert!(
                    !r.status.is_server_error(),
                    "{method} {p} as {user}: {} {}",
                    r.status,
                    r.body
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every denial was audited.
    let denials = api
        .query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'access.denied' AND outcome = 'denied'",
        )
        .await;
    let expected_denials: usize = EXPECTED
        .iter()
        .filter(|(_, _, a)| *a != "*")
        .map(|(_, _, a)| 5 - a.len())
        .sum();
    assert_eq!(denials as usize, expected_denials);
    // No token at all: 401 on every non-public route.
    for (method, path, allowed) in EXPECTED.iter().filter(|(_, _, a)| *a != "*") {
        let _ = allowed;
        let (p, body) = request(method, path, &fx);
        let r = api.call(method, &p, None, Some("default"), body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            "{method} {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn territory_isolation_and_break_glass() {
    let api = Api::new(IDLE).await;
    let fx = fixtures(&api).await;
    let t = api.login("medic").await;
    // Header naming another territory.
    let r = api
        .call("GET", "/api/v1/cases", Some(&t), Some("north"), None)
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH")
    );
    // Missing header.
    let r = api.call("GET", "/api/v1/cases", Some(&t), None, None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "VALIDATION_ERROR")
    );
    // A resource of another territory under the user's own header.
    for path in [
        format!("/api/v1/cases/{}", fx.north_case),
        format!("/api/v1/cases/{}/vitals", fx.north_case),
    ] {
        let r = api
            .call("GET", &path, Some(&t), Some("default"), None)
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH"),
            "{path}"
        );
    }
    let tn = api.login("north1").await;
    let r = api
        .call(
            "GET",
            &format!("/api/v1/patients/{}", fx.patient),
            Some(&tn),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH")
    );
    let r = api
        .call("GET", "/api/v1/cases", Some(&tn), Some("north"), None)
        .await;
    let ids: Vec<&str> = r.body["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![fx.north_case.as_str()],
        "a territory sees only its own cases"
    );
    let denied = api.query_i64("SELECT count(*) FROM audit_log WHERE action = 'access.denied' AND details LIKE '%territory%'").await;
    assert_eq!(denied, 4);

    // Break-glass: wrong secret and short reason refused; then granted for the other territory.
    let r = api.break_glass(&t, "north", "too short", PIN).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = api
        .break_glass(&t, "north", "mutual aid call, north crew down", "wrong-pin")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = api
        .break_glass(&t, "north", "mutual aid call, north crew down", PIN)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let until = r.body["until_ms"].as_i64().unwrap();
    assert_eq!(
        until,
        common::api::T0 + 60 * 60_000,
        "default time box is 60 min"
    );
    let r = api
        .call(
            "GET",
            &format!("/api/v1/cases/{}", fx.north_case),
            Some(&t),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Wider reading, never writing.
    let r = api
        .call(
            "POST",
            &format!("/api/v1/cases/{}/vitals", fx.north_case),
            Some(&t),
            Some("north"),
            Some(json!({"readings": [{"name": "heart_rate", "value": 80}]})),
        )
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "FORBIDDEN"));
    // Critical audit event, audited access marked as break-glass, review queue.
    assert_eq!(api.query_i64("SELECT count(*) FROM audit_log WHERE action = 'break_glass.start' AND details LIKE '%critical%'").await, 1);
    assert_eq!(api.query_i64("SELECT count(*) FROM audit_log WHERE action = 'case.read' AND role = 'paramedic+break-glass' AND territory = 'north'").await, 1);
    let v = api.login("super1").await;
    let q = api
        .call(
            "GET",
            "/api/v1/break-glass?pending=true",
            Some(&v),
            Some("default"),
            None,
        )
        .await;
    let uses = q.body["uses"].as_array().unwrap();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0]["user_id"], "medic");
    let id = uses[0]["id"].as_i64().unwrap();
    let r = api
        .call(
            "POST",
            &format!("/api/v1/break-glass/{id}/review"),
            Some(&v),
            Some("default"),
            Some(json!({"note": "mutual aid confirmed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let q = api
        .call(
            "GET",
            "/api/v1/break-glass?pending=true",
            Some(&v),
            Some("default"),
            None,
        )
        .await;
    assert!(q.body["uses"].as_array().unwrap().is_empty());
    // The grant ends with its time box.
    // (Stay active so the idle timer does not end the session first.)
    for step in [540_000; 6].into_iter().chain([360_000 - 1000]) {
        api.clock.advance_ms(step);
        let r = api
            .call(
                "GET",
                &format!("/api/v1/cases/{}", fx.north_case),
                Some(&t),
                Some("north"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    api.clock.advance_ms(2000);
    let r = api
        .call(
            "GET",
            &format!("/api/v1/cases/{}", fx.north_case),
            Some(&t),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH")
    );
    // Staff see demographics in the list, never clinical data.
    let s = api.login("staff1").await;
    let r = api
        .call("GET", "/api/v1/cases", Some(&s), Some("default"), None)
        .await;
    let c = &r.body["cases"][0];
    assert_eq!(c["patient_name"], "Ann Lee");
    assert!(c["esi"].is_null());
    // Admins see no PHI: no names, no patients.
    let a = api.login("admin1").await;
    let r = api
        .call(
            "GET",
            &format!("/api/v1/patients/{}", fx.patient),
            Some(&a),
            Some("default"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_logoff_absolute_lifetime_and_backoff() {
    let api = Api::new("[api]\nidle_timeout_secs = 600\nsession_lifetime_secs = 1500\nlogin_backoff_after = 3\nlogin_backoff_max_secs = 300\n").await;
    let me = |t: String| {
        let api = &api;
        async move {
            api.call("GET", "/api/v1/auth/me", Some(&t), Some("default"), None)
                .await
                .status
        }
    };
    // Idle: at timeout − 1 s the session works (and restarts its idle timer) …
    let t = api.login("medic").await;
    api.clock.advance_ms(599_000);
    assert_eq!(me(t.clone()).await, StatusCode::OK);
    // … at timeout + 1 s it is 401 and gone server-side (memory and database).
    api.clock.advance_ms(601_000);
    let r = api
        .call("GET", "/api/v1/auth/me", Some(&t), Some("default"), None)
        .await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("idle"))
    );
    assert!(!hema3n_edge::api::guard::session_exists(&api.st, &t));
    assert_eq!(api.query_i64("SELECT count(*) FROM sessions").await, 0);
    api.clock.advance_ms(-601_000);
    assert_eq!(
        me(t.clone()).await,
        StatusCode::UNAUTHORIZED,
        "an ended session never comes back"
    );
    assert_eq!(
        api.query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'logout' AND details LIKE '%idle%'"
        )
        .await,
        1
    );

    // The sweeper ends idle sessions nobody uses.
    let t2 = api.login("emt1").await;
    api.clock.advance_ms(601_000);
    assert_eq!(
        hema3n_edge::api::guard::sweep_once(&api.st).await.unwrap(),
        1
    );
    assert!(!hema3n_edge::api::guard::session_exists(&api.st, &t2));

    // Absolute lifetime: active every 500 s, still ended at 1500 s.
    let t = api.login("medic").await;
    for _ in 0..2 {
        api.clock.advance_ms(500_000);
        assert_eq!(me(t.clone()).await, StatusCode::OK);
    }
    api.clock.advance_ms(499_000);
    assert_eq!(me(t.clone()).await, StatusCode::OK);
    api.clock.advance_ms(1_000);
    let r = api
        .call("GET", "/api/v1/auth/me", Some(&t), Some("default"), None)
        .await;
    assert_eq!(
        (r.status, r.body["error"]["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("expired"))
    );

    // Back-off: after 3 failures, 1 s, then doubling up to 300 s; never a permanent lock.
    let login = |secret: &'static str| {
        let api = &api;
        async move {
            api.call(
                "POST",
                "/api/v1/auth/login",
                None,
                None,
                Some(json!({"user_id": "emt1", "secret": secret})),
            )
            .await
        }
    };
    for _ in 0..2 {
        assert_eq!(login("bad-pin").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login("bad-pin").await.status, StatusCode::UNAUTHORIZED);
    let r = login(PIN).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        "even the right PIN waits"
    );
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    api.clock.advance_ms(1_000);
    assert_eq!(login(PIN).await.status, StatusCode::OK, "back-off over");
    // A guesser on the same source who waits out every back-off: the waits grow, then stay at
    // the cap (within the source's daily budget of guesses).
    let mut waits = Vec::new();
    for _ in 0..24 {
        let r = login("bad-pin").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            let w: i64 = r
                .headers
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            waits.push(w);
            api.clock.advance_ms(w * 1000);
        } else {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
    }
    // The guesser's last wrong PIN armed the longest back-off: even the right PIN waits it out.
    let r = login("bad-pin").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = login(PIN).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let w: i64 = r
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    waits.push(w);
    api.clock.advance_ms(w * 1000);
    assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
    assert_eq!(*waits.last().unwrap(), 300, "capped: {waits:?}");
    let r = login(PIN).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the crew is never locked out for good"
    );
    assert!(
        api.query_i64("SELECT count(*) FROM audit_log WHERE action = 'login.failure'")
            .await
            >= 15
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_phi_route_adds_exactly_its_audit_entries() {
    let api = Api::new(IDLE).await;
    let fx = fixtures(&api).await;
    let t = api.login("medic").await;
    let session = hex::encode(&hema3n_edge::crypto::password::token_hash(&t)[..8]);
    let c = &fx.case;
    let p = &fx.patient;
    let cases: Vec<(&str, String, Option<Value>, Vec<&str>)> = vec![
        (
            "POST",
            "/api/v1/patients".into(),
            Some(json!({"first_name": "Bo"})),
            vec!["patient.create"],
        ),
        (
            "GET",
            format!("/api/v1/patients/{p}"),
            None,
            vec!["patient.read"],
        ),
        (
            "PUT",
            format!("/api/v1/patients/{p}"),
            Some(json!({"first_name": "Ann", "last_name": "Lee", "date_of_birth": "1950-02-03"})),
            vec!["patient.update"],
        ),
        (
            "GET",
            "/api/v1/patients?last_name=lee".into(),
            None,
            vec!["patient.read", "patient.search"],
        ),
        ("GET", "/api/v1/cases".into(), None, vec!["case.list"]),
        (
            "POST",
            "/api/v1/cases".into(),
            Some(json!({})),
            vec!["case.create"],
        ),
        ("GET", format!("/api/v1/cases/{c}"), None, vec!["case.read"]),
        (
            "POST",
            format!("/api/v1/cases/{c}/devices"),
            Some(json!({"device_id": "mon-1"})),
            vec!["device.bind"],
        ),
        (
            "DELETE",
            format!("/api/v1/cases/{c}/devices/mon-1"),
            None,
            vec!["device.unbind"],
        ),
        (
            "POST",
            format!("/api/v1/cases/{c}/vitals"),
            Some(json!({"readings": [{"name": "spo2", "value": 91}, {"name": "avpu", "vs": "V"}]})),
            vec!["observation.create"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/vitals"),
            None,
            vec!["observation.read"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/triage"),
            None,
            vec!["triage.read"],
        ),
        (
            "PATCH",
            format!("/api/v1/cases/{c}"),
            Some(json!({"onset": "20 min ago"})),
            vec!["case.update"],
        ),
        (
            "PATCH",
            format!("/api/v1/patients/{p}"),
            Some(json!({"estimated_age_years": 70})),
            vec!["patient.update"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/record"),
            None,
            vec!["record.read"],
        ),
        (
            "PATCH",
            format!("/api/v1/cases/{c}/record/times"),
            Some(json!({"on_scene_ms": hema3n_edge::model::now_ms()})),
            vec!["record.create"],
        ),
        (
            "PATCH",
            format!("/api/v1/cases/{c}/record/times"),
            Some(json!({"at_patient_ms": hema3n_edge::model::now_ms() + 1})),
            vec!["record.update"],
        ),
        (
            "POST",
            format!("/api/v1/cases/{c}/record/medication"),
            Some(
                json!({"at_ms": hema3n_edge::model::now_ms(), "medication": "oxygen", "dose": 15, "dose_unit": "l_min", "route": "inhalation"}),
            ),
            vec!["record.create"],
        ),
        (
            "POST",
            format!(
                "/api/v1/cases/{c}/record/entries/{}/entered-in-error",
                fx.entry_void
            ),
            Some(json!({"reason": "wrong case"})),
            vec!["record.entered_in_error"],
        ),
        (
            "POST",
            format!("/api/v1/cases/{c}/vitals/{}/entered-in-error", fx.reading),
            Some(json!({"reason": "artefact"})),
            vec!["observation.entered_in_error"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/stream"),
            None,
            vec!["case.stream"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/handoff"),
            None,
            vec!["case.handoff"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/handoff/pdf?format=sbar"),
            None,
            vec!["case.disclose"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/attachments"),
            None,
            vec!["attachment.list"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/attachments/{}", fx.photo),
            None,
            vec!["attachment.read"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/attachments/{}/content", fx.photo),
            None,
            vec!["attachment.view"],
        ),
        (
            "GET",
            format!("/api/v1/cases/{c}/attachments/{}/thumbnail", fx.photo),
            None,
            vec!["attachment.view"],
        ),
        (
            "POST",
            format!("/api/v1/cases/{c}/attachments"),
            Some(json!({"kind": "other", "size": 10})),
            vec!["attachment.create"],
        ),
        (
            "POST",
            format!("/api/v1/cases/{c}/transfer"),
            Some(json!({"receiving_clinician": "Dr Ada Grey"})),
            vec!["record.create", "record.update", "case.transfer"],
        ),
        (
            "POST",
            format!("/api/v1/cases/{c}/close"),
            None,
            vec!["case.close"],
        ),
    ];
    for (method, path, body, want) in cases {
        let before = api.audit_head().await;
        let r = api
            .call(method, &path, Some(&t), Some("default"), body)
            .await;
        assert!(
            r.status.is_success(),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        assert_eq!(api.audit_after(before).await, want, "{method} {path}");
        // Each entry says where the request came from and why.
        for (action, d) in api.audit_details_after(before).await {
            assert_eq!(d["access"]["address"], "127.0.0.1", "{action}: {d}");
            assert_eq!(d["access"]["session"], session, "{action}: {d}");
            let disclosure = ["case.disclose", "case.transfer"].contains(&action.as_str());
            let purpose = if disclosure {
                "disclosure"
            } else {
                "treatment"
            };
            assert_eq!(d["purpose"], purpose, "{action}: {d}");
            if action.starts_with("patient.") {
                assert!(
                    d["phi_fields"]
                        .as_array()
                        .is_some_and(|f| f.contains(&json!("last_name"))),
                    "{action}: {d}"
                );
            }
        }
    }
    // From another address, with the tablet's User-Agent.
    let before = api.audit_head().await;
    let r = api
        .request(
            [10, 0, 0, 66],
            "GET",
            &format!("/api/v1/patients/{p}"),
            (Some(&t), Some("default")),
            None,
            &[("user-agent", "HEMA3N-Tablet/1.0\t(Android 14)")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let got = api.audit_details_after(before).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1["access"],
        json!({ "address": "10.0.0.66", "session": session, "agent": "HEMA3N-Tablet/1.0(Android 14)" })
    );
    // The route table marks exactly these routes as PHI.
    let phi: Vec<&str> = ROUTES.iter().filter(|r| r.phi).map(|r| r.path).collect();
    assert_eq!(phi.len(), 45, "{phi:?}");
    // A failed read is audited too.
    let before = api.audit_head().await;
    let r = api
        .call(
            "GET",
            "/api/v1/patients/01a207a7-0000-7000-8000-000000000000",
            Some(&t),
            Some("default"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "PATIENT_NOT_FOUND")
    );
    let _ = before;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_specific_errors() {
    let api = Api::new("[api]\nmax_body_bytes = 2048\n").await;
    let fx = fixtures(&api).await;
    let t = api.login("medic").await;
    let call = |m: &'static str, p: String, b: Value| {
        let (api, t) = (&api, t.clone());
        async move { api.call(m, &p, Some(&t), Some("default"), Some(b)).await }
    };
    let r = call(
        "POST",
        "/api/v1/patients".into(),
        json!({"first_name": "x".repeat(4000)}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
    );
    let r = call("POST", "/api/v1/patients".into(), json!({"nickname": "Al"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR")
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nickname"),
        "{}",
        r.body
    );
    let r = call(
        "POST",
        "/api/v1/patients".into(),
        json!({"date_of_birth": "1950-13-40"}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "INVALID_PHI")
    );
    assert_eq!(r.body["error"]["details"]["field"], "date_of_birth");
    assert!(
        !r.body.to_string().contains("1950-13-40")
            || r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("date_of_birth")
    );
    let r = call(
        "POST",
        format!("/api/v1/cases/{}/vitals", fx.case),
        json!({"readings": [{"name": "spo2", "value": 140}]}),
    )
    .await;
    assert_eq!(r.code(), "VALIDATION_ERROR");
    assert_eq!(r.body["error"]["details"]["reading"], 0);
    let r = call(
        "POST",
        format!("/api/v1/cases/{}/vitals", fx.case),
        json!({"readings": [{"name": "mood", "value": 3}]}),
    )
    .await;
    assert_eq!(r.code(), "VALIDATION_ERROR");
    // The same vocabulary check as SenML ingest: scores are whole numbers (refused over MQTT
    // as OUT_OF_RANGE, see ingest::senml's tests), and nothing of a refused batch is stored.
    for (name, value) in [("gcs_total", 14.5), ("pain", 3.2), ("gcs_motor", 5.5)] {
        let r = call(
            "POST",
            format!("/api/v1/cases/{}/vitals", fx.case),
            json!({"readings": [{"name": "heart_rate", "value": 80}, {"name": name, "value": value}]}),
        )
        .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
            "{name} {value}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["details"]["reading"], 1);
        assert!(
            r.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("whole numbers"),
            "{}",
            r.body
        );
    }
    let stored = api
        .call(
            "GET",
            &format!("/api/v1/cases/{}/vitals", fx.case),
            Some(&t),
            Some("default"),
            None,
        )
        .await;
    assert!(
        stored.body["vitals"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["name"] != "heart_rate"),
        "a refused batch stored nothing: {}",
        stored.body
    );
    let r = api
        .call(
            "GET",
            "/api/v1/cases/not-a-uuid",
            Some(&t),
            Some("default"),
            None,
        )
        .await;
    assert_eq!(r.code(), "VALIDATION_ERROR");
    let r = api
        .call(
            "GET",
            "/api/v1/cases/01a207a7-0000-7000-8000-000000000000",
            Some(&t),
            Some("default"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::NOT_FOUND, "CASE_NOT_FOUND")
    );
    // Not JSON at all.
    let req = axum::http::Request::post("/api/v1/patients")
        .header("authorization", format!("Bearer {t}"))
        .header("territory-id", "default")
        .header("content-type", "application/json")
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    use tower::ServiceExt;
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Everything stays consistent: the store still verifies.
    let ok = api
        .st
        .store
        .call(|db| Ok(db.verify_audit()?.ok()))
        .await
        .unwrap();
    assert!(ok);
    // The OpenAPI document lists every route of the table.
    let doc = api
        .call("GET", "/api/v1/openapi.json", None, None, None)
        .await
        .body;
    for r in ROUTES {
        assert!(
            doc["paths"][r.path][r.method.to_lowercase()].is_object(),
            "{} {}",
            r.method,
            r.path
        );
    }
    let m = api.call("GET", "/metrics", None, None, None).await;
    assert_eq!(m.status, StatusCode::OK);
}

/// The audit trail a privacy officer uses: queries scoped to the supervisor's territory (none
/// of another territory's entries or break-glass reasons), the case list recording each
/// patient it showed, and a patient's accounting of disclosures listing exactly the reads and
/// disclosures of that patient's data, checked against the calls made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_are_scoped_and_the_accounting_is_exact() {
    let api = Api::new(IDLE).await;
    let fx = fixtures(&api).await;
    let t = api.login("medic").await;
    staff_break_glass(&api).await;
    // A patient of our own, so every access to it happens below.
    let p = api
        .post(
            &t,
            "/api/v1/patients",
            Some(json!({"first_name": "Cy", "last_name": "Doe"})),
        )
        .await;
    let cy = p.body["id"].as_str().unwrap().to_string();
    let c = api
        .post(
            &t,
            "/api/v1/cases",
            Some(json!({"patient_id": cy, "chief_complaint": "fall"})),
        )
        .await;
    let cyc = c.body["id"].as_str().unwrap().to_string();
    let s = api.login("staff1").await;
    let tn = api.login("north1").await;
    // (who, method, path, body, accounted action or None for an access that is not a read)
    type Call<'a> = (&'a str, &'a str, String, Option<Value>, Option<&'a str>);
    let calls: Vec<Call<'_>> = vec![
        (
            "medic",
            "GET",
            format!("/api/v1/patients/{cy}"),
            None,
            Some("patient.read"),
        ),
        (
            "medic",
            "PUT",
            format!("/api/v1/patients/{cy}"),
            Some(json!({"first_name": "Cy", "last_name": "Doe", "date_of_birth": "1961-04-05"})),
            None,
        ),
        (
            "medic",
            "GET",
            "/api/v1/cases".into(),
            None,
            Some("case.list"),
        ),
        (
            "medic",
            "GET",
            format!("/api/v1/cases/{cyc}"),
            None,
            Some("case.read"),
        ),
        (
            "staff1",
            "GET",
            "/api/v1/patients?last_name=doe".into(),
            None,
            Some("patient.read"),
        ),
        (
            "medic",
            "GET",
            format!("/api/v1/patients/{}", fx.patient),
            None,
            None,
        ),
        (
            "medic",
            "POST",
            format!("/api/v1/cases/{cyc}/vitals"),
            Some(json!({"readings": [{"name": "heart_rate", "value": 90}]})),
            None,
        ),
        (
            "medic",
            "GET",
            format!("/api/v1/cases/{cyc}/vitals"),
            None,
            Some("observation.read"),
        ),
        (
            "medic",
            "GET",
            format!("/api/v1/cases/{cyc}/handoff/pdf?format=sbar"),
            None,
            Some("case.disclose"),
        ),
    ];
    let mut expected = Vec::new();
    for (who, method, path, body, accounted) in calls {
        let token = if who == "staff1" { &s } else { &t };
        let r = api
            .call(method, &path, Some(token), Some("default"), body)
            .await;
        assert!(
            r.status.is_success(),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        if let Some(a) = accounted {
            expected.push((a.to_string(), who.to_string()));
        }
    }
    // A denied read of Cy from another territory is no disclosure.
    let r = api
        .call(
            "GET",
            &format!("/api/v1/patients/{cy}"),
            Some(&tn),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // The case list named both patients it showed.
    let v = api.login("super1").await;
    let q = api
        .get(
            &v,
            &format!("/api/v1/audit?patient={}&limit=500", fx.patient),
        )
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    let lists: Vec<&Value> = q.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "case.list")
        .collect();
    let shown = lists[0]["details"]["patients_shown"].as_array().unwrap();
    assert!(
        shown.contains(&json!(cy)) && shown.contains(&json!(fx.patient)),
        "{shown:?}"
    );

    // The accounting: exactly the reads and disclosures above, oldest first.
    let r = api
        .get(&v, &format!("/api/v1/patients/{cy}/disclosures"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let events = r.body["entry"].as_array().unwrap();
    let got: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let res = &e["resource"];
            (
                res["subtype"][0]["code"].as_str().unwrap().to_string(),
                res["agent"][0]["who"]["identifier"]["value"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        events.last().unwrap()["resource"]["type"]["code"],
        "110106",
        "the handoff document is a disclosure (DICOM Export)"
    );
    assert!(
        events
            .iter()
            .all(|e| e["resource"]["agent"][0]["network"]["address"] == "127.0.0.1")
    );
    // CSV: the same accesses, and the exports were audited.
    let r = api
        .get(&v, &format!("/api/v1/patients/{cy}/disclosures?format=csv"))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
    let csv = r.text.clone();
    let lines: Vec<&str> = csv.trim_end().split("\r\n").collect();
    assert_eq!(lines.len(), expected.len() + 1, "{csv}");
    for (line, (action, who)) in lines[1..].iter().zip(&expected) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(
            (cells[5], cells[2]),
            (action.as_str(), who.as_str()),
            "{line}"
        );
    }
    let exports = api
        .query_i64("SELECT count(*) FROM audit_log WHERE action = 'audit.disclosures' AND actor = 'super1'")
        .await;
    assert_eq!(exports, 2);
    // By user and time: staff1's entries only; nothing before the fixtures' first entry.
    let q = api.get(&v, "/api/v1/audit?user=staff1&limit=500").await;
    let e = q.body["entries"].as_array().unwrap();
    assert!(!e.is_empty() && e.iter().all(|e| e["actor"] == "staff1"));
    let q = api.get(&v, "/api/v1/audit?until=2000-01-01").await;
    assert!(
        q.body["entries"].as_array().unwrap().is_empty(),
        "{}",
        q.body
    );
    let q = api.get(&v, "/api/v1/audit?since=yesterday").await;
    assert_eq!(
        (q.status, q.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR")
    );

    // Territory scoping: north's supervisor sees only north entries, none about Cy, no
    // break-glass reason of default's, and may not export Cy's accounting.
    let vn = api.login("super_n").await;
    let all = api
        .call(
            "GET",
            "/api/v1/audit?limit=500",
            Some(&vn),
            Some("north"),
            None,
        )
        .await;
    let e = all.body["entries"].as_array().unwrap();
    assert!(
        !e.is_empty() && e.iter().all(|e| e["territory"] == "north"),
        "{}",
        all.body
    );
    let q = api
        .call(
            "GET",
            &format!("/api/v1/audit?patient={cy}"),
            Some(&vn),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(q.body["entries"], json!([]));
    // North's attempt on Cy is in default's trail, where Cy's privacy officer looks.
    let q = api
        .get(&v, &format!("/api/v1/audit?patient={cy}&user=north1"))
        .await;
    let e = q.body["entries"].as_array().unwrap();
    assert_eq!(
        (e.len(), e[0]["action"].as_str(), e[0]["outcome"].as_str()),
        (1, Some("access.denied"), Some("denied")),
        "{}",
        q.body
    );
    let bg = api
        .call("GET", "/api/v1/break-glass", Some(&vn), Some("north"), None)
        .await;
    assert!(!bg.body.to_string().contains("lobby"), "{}", bg.body);
    let bg = api.get(&v, "/api/v1/break-glass").await;
    assert!(bg.body.to_string().contains("lobby"), "{}", bg.body);
    let r = api
        .call(
            "GET",
            &format!("/api/v1/patients/{cy}/disclosures"),
            Some(&vn),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "TERRITORY_MISMATCH")
    );
    // Default's supervisor sees none of north's entries.
    let q = api.get(&v, "/api/v1/audit?limit=500").await;
    let e = q.body["entries"].as_array().unwrap();
    assert!(e.iter().all(|e| e["territory"] == "default"), "{}", q.body);
}

/// Access grants: a user of north reads exactly the granted case of default until the expiry
/// (to the second), nothing else of default, writes only with a read/write grant, nothing after
/// revocation; creating, each use, revoking and expiring are audited and listed for review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_opens_exactly_one_record_until_it_ends() {
    use hema3n_edge::api::session::Clock;
    let api = Api::new(IDLE).await;
    let fx = fixtures(&api).await;
    let v = api.login("super1").await;
    let tn = api.login("north1").await;
    // Another case of default, to prove it stays closed.
    let m = api.login("medic").await;
    let other = api
        .post(&m, "/api/v1/cases", Some(json!({"chief_complaint": "cut"})))
        .await;
    let other = other.body["id"].as_str().unwrap().to_string();
    let grant = |body: Value| {
        let (api, v) = (&api, &v);
        async move { api.post(v, "/api/v1/grants", Some(body)).await }
    };
    let read = |path: String| {
        let (api, tn) = (&api, &tn);
        async move {
            api.call("GET", &path, Some(tn), Some("north"), None)
                .await
                .status
        }
    };
    let case = format!("/api/v1/cases/{}", fx.case);
    assert_eq!(
        read(case.clone()).await,
        StatusCode::FORBIDDEN,
        "no grant yet"
    );
    // Bad grants are refused with a reason.
    for (body, why) in [
        (
            json!({"user_id": "north1", "case_id": fx.case, "access": "read", "reason": "short", "minutes": 5}),
            "reason",
        ),
        (
            json!({"user_id": "north1", "case_id": fx.case, "access": "read", "reason": "mutual aid call", "minutes": 5000}),
            "minutes",
        ),
        (
            json!({"user_id": "north1", "case_id": fx.case, "patient_id": fx.patient, "access": "read", "reason": "mutual aid call", "minutes": 5}),
            "exactly one",
        ),
        (
            json!({"user_id": "medic", "case_id": fx.case, "access": "read", "reason": "mutual aid call", "minutes": 5}),
            "another",
        ),
        (
            json!({"user_id": "north1", "case_id": fx.north_case, "access": "read", "reason": "mutual aid call", "minutes": 5}),
            "not found",
        ),
    ] {
        let r = grant(body).await;
        assert!(r.status.is_client_error(), "{why}: {} {}", r.status, r.body);
        assert!(
            r.body.to_string().to_lowercase().contains(why),
            "{why}: {}",
            r.body
        );
    }
    let r = grant(
        json!({"user_id": "north1", "case_id": fx.case, "access": "read",
        "reason": "mutual aid: north crew takes over at the scene", "minutes": 30}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let (gid, until) = (
        r.body["id"].as_i64().unwrap(),
        r.body["expires_at_ms"].as_i64().unwrap(),
    );
    assert_eq!(until, api.clock.now_ms() + 30 * 60_000);
    // Exactly the granted case, read only, in the user's own territory header.
    assert_eq!(read(case.clone()).await, StatusCode::OK);
    assert_eq!(read(format!("{case}/vitals")).await, StatusCode::OK);
    assert_eq!(
        read(format!("/api/v1/cases/{other}")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        read(format!("/api/v1/patients/{}", fx.patient)).await,
        StatusCode::FORBIDDEN
    );
    let w = api
        .call(
            "POST",
            &format!("{case}/vitals"),
            Some(&tn),
            Some("north"),
            Some(json!({"readings": [{"name": "heart_rate", "value": 80}]})),
        )
        .await;
    assert_eq!(w.status, StatusCode::FORBIDDEN, "a read grant never writes");
    let denied = api
        .query_text("SELECT details FROM audit_log WHERE action = 'access.denied' ORDER BY seq DESC LIMIT 1")
        .await;
    assert!(
        denied.contains(&format!("access grant {gid} is read-only")),
        "{denied}"
    );
    // Until the second of expiry.
    api.clock.advance_ms(until - api.clock.now_ms() - 1000);
    let tn2 = api.login("north1").await;
    let at = |t: &str| {
        let (api, case, t) = (&api, case.clone(), t.to_string());
        async move {
            api.call("GET", &case, Some(&t), Some("north"), None)
                .await
                .status
        }
    };
    assert_eq!(at(&tn2).await, StatusCode::OK, "one second before expiry");
    api.clock.advance_ms(1000);
    assert_eq!(at(&tn2).await, StatusCode::FORBIDDEN, "at expiry");
    hema3n_edge::api::guard::sweep_once(&api.st).await.unwrap();
    // A read/write grant on the patient opens its case for writing, until revoked (the
    // supervisor signs in again: half an hour passed).
    let v = api.login("super1").await;
    let r = api
        .post(
            &v,
            "/api/v1/grants",
            Some(
                json!({"user_id": "north1", "patient_id": fx.patient, "access": "read_write",
            "reason": "receiving crew continues care", "minutes": 120}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let g2 = r.body["id"].as_i64().unwrap();
    let tn3 = api.login("north1").await;
    let w = api
        .call(
            "POST",
            &format!("{case}/vitals"),
            Some(&tn3),
            Some("north"),
            Some(json!({"readings": [{"name": "heart_rate", "value": 81}]})),
        )
        .await;
    assert!(w.status.is_success(), "{} {}", w.status, w.body);
    assert_eq!(at(&tn3).await, StatusCode::OK);
    let r = api
        .post(&v, &format!("/api/v1/grants/{g2}/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(at(&tn3).await, StatusCode::FORBIDDEN, "after revocation");
    let r = api
        .post(&v, &format!("/api/v1/grants/{g2}/revoke"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // North's supervisor cannot revoke or see default's grants.
    let vn = api.login("super_n").await;
    let r = api
        .call(
            "POST",
            &format!("/api/v1/grants/{gid}/revoke"),
            Some(&vn),
            Some("north"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let l = api
        .call("GET", "/api/v1/grants", Some(&vn), Some("north"), None)
        .await;
    assert_eq!(l.body["grants"], json!([]));
    // Listed for review with reasons and uses; none active now.
    let l = api.get(&v, "/api/v1/grants").await;
    let gs = l.body["grants"].as_array().unwrap();
    assert_eq!(gs.len(), 2);
    assert_eq!(
        gs[1]["reason"],
        "mutual aid: north crew takes over at the scene"
    );
    assert_eq!(
        (gs[1]["uses"].as_i64(), gs[0]["uses"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(gs[0]["revoked_by"], "super1");
    let l = api.get(&v, "/api/v1/grants?active=true").await;
    assert_eq!(l.body["grants"], json!([]));
    let actions = api
        .query_text("SELECT group_concat(action || ':' || territory, ' ') FROM (SELECT action, territory FROM audit_log WHERE action LIKE 'grant.%' ORDER BY seq)")
        .await;
    assert_eq!(
        actions,
        "grant.create:default grant.use:default grant.use:default grant.use:default \
         grant.expire:default grant.create:default grant.use:default grant.use:default grant.revoke:default"
    );
    // The reason is sealed at rest.
    let sealed = api
        .query_i64("SELECT count(*) FROM access_grants WHERE sealed_reason IS NOT NULL")
        .await;
    assert_eq!(sealed, 2);
}

/// The OpenAPI document describes what the API really answers: every route, called by a role
/// allowed to, replies with the documented status and a body that matches the documented
/// schema (no missing, mistyped or undocumented property).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_matches_its_documented_schema() {
    use hema3n_edge::api::policy::{Reply, route};
    let api = Api::new(IDLE).await;
    let fx = fixtures(&api).await;
    // Content for the lists: a triage result and a break-glass use to review.
    let case = fx.case.clone();
    api.st
        .store
        .call(move |db| {
            let rec = common::api::sample_triage("cardiology");
            db.record_triage(&Actor::system(), &case, &rec).map(|_| ())
        })
        .await
        .unwrap();
    staff_break_glass(&api).await;
    let doc = api
        .call("GET", "/api/v1/openapi.json", None, None, None)
        .await
        .body;
    // Writes first (so the reads have content), then reads, then what ends things.
    let rank = |m: &str, p: &str| match (m, p) {
        (_, p) if p.ends_with("/close") || p.ends_with("/logout") || p.ends_with("/disable") => 3,
        ("DELETE", _) => 2,
        ("GET", _) => 1,
        _ => 0,
    };
    let mut order: Vec<&(&str, &str, &str)> = EXPECTED.iter().collect();
    order.sort_by_key(|(m, p, _)| rank(m, p));
    let mut checked = 0;
    for (method, path, allowed) in order {
        let user = if *allowed == "*" {
            "medic"
        } else {
            let letter = allowed.chars().next().unwrap();
            ROLES.iter().find(|(l, _)| *l == letter).unwrap().1
        };
        let token = api.login(user).await;
        let (mut p, body) = request(method, path, &fx);
        if *method == "DELETE" {
            // Unbind the device the bind route bound.
            p = p.replace("mon-1", "mon-2");
        }
        let r = call_route(&api, method, &p, path, &token, body).await;
        let documented = route(method, path)
            .unwrap_or_else(|| panic!("{method} {path}"))
            .reply;
        let (status, schema) = match documented {
            Reply::Json(s) => (StatusCode::OK, Some(s)),
            Reply::Created(s) => (StatusCode::CREATED, Some(s)),
            Reply::NoContent => (StatusCode::NO_CONTENT, None),
            Reply::Text
            | Reply::EventStream
            | Reply::Xml
            | Reply::Pdf
            | Reply::File
            | Reply::Accounting => (StatusCode::OK, None),
        };
        assert_eq!(r.status, status, "{method} {p} as {user}: {}", r.body);
        let op = &doc["paths"][path][method.to_lowercase()]["responses"];
        assert!(
            op[status.as_str()].is_object(),
            "{method} {path}: {status} undocumented"
        );
        if let Some(name) = schema {
            let errs = common::schema::check(
                &doc,
                &json!({ "$ref": format!("#/components/schemas/{name}") }),
                &r.body,
            );
            assert!(errs.is_empty(), "{method} {p}: {errs:?}\n{}", r.body);
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} JSON replies checked");
}
