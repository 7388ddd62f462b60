//! The OpenAPI 3.1 document, generated from the route table, and the Prometheus text.

use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use super::ApiState;
use super::error::Code;
use super::routes::{Access, ROUTES};
use crate::storage::{Alarm, OutboxStats};

fn schemas() -> Value {
    let s = |props: Value, required: &[&str]| json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required });
    let text = json!({ "type": "string" });
    json!({
        "Error": s(json!({
            "status": { "const": "error" },
            "error": s(json!({
                "code": { "enum": Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>() },
                "message": text, "details": { "type": "object" }
            }), &["code", "message", "details"]),
        }), &["status", "error"]),
        "Login": s(json!({ "user_id": text, "secret": text }), &["user_id", "secret"]),
        "BreakGlass": s(json!({ "reason": { "type": "string", "minLength": 10, "maxLength": 500 }, "secret": text }), &["reason", "secret"]),
        "Patient": s(json!({
            "first_name": text, "last_name": text,
            "date_of_birth": { "type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$" },
            "ssn": text, "email": text, "phone": text, "mrn": text,
            "sex": { "enum": ["male", "female", "other", "unknown"] },
            "address": s(json!({ "street": text, "city": text, "state": text, "zip": text }), &[]),
            "insurance": s(json!({ "carrier": text, "policy_number": text, "group_number": text }), &[]),
        }), &[]),
        "CaseCreate": s(json!({ "patient_id": { "type": "string", "format": "uuid" }, "chief_complaint": text, "mechanism": text, "onset": text }), &[]),
        "Bind": s(json!({ "device_id": text, "attach_unbound": { "type": "boolean", "default": true } }), &["device_id"]),
        "ManualVitals": s(json!({ "readings": { "type": "array", "minItems": 1, "maxItems": 32, "items": s(json!({
            "name": { "enum": crate::ingest::vocab::VITALS.iter().map(|v| v.name).collect::<Vec<_>>() },
            "value": { "type": "number" }, "vs": { "enum": crate::ingest::vocab::AVPU_LEVELS }, "t_ms": { "type": "integer" }
        }), &["name"]) } }), &["readings"]),
        "Medication": s(json!({ "name": text, "dose": text, "route": text, "note": text }), &["name", "dose", "route"]),
        "Review": s(json!({ "note": text }), &["note"]),
        "UserCreate": s(json!({ "id": text, "display_name": text, "role": { "enum": super::auth::ROLES }, "territory": text, "secret": { "type": "string", "minLength": 6 } }), &["id", "display_name", "role", "secret"]),
    })
}

/// The OpenAPI document of every route in the table.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        let (security, access) = match r.access {
            Access::Public => (json!([]), "public".to_string()),
            Access::Authenticated => (json!([{ "bearer": [] }]), "any role".to_string()),
            Access::Perm(p) => {
                let roles: Vec<&str> = super::auth::ROLES
                    .iter()
                    .copied()
                    .filter(|role| super::auth::role_perms(role).contains(&p))
                    .collect();
                let bg = super::auth::BREAK_GLASS_PERMS.contains(&p);
                (
                    json!([{ "bearer": [] }]),
                    format!(
                        "{p:?}: {}{}",
                        roles.join(", "),
                        if bg {
                            " (others under break-glass)"
                        } else {
                            ""
                        }
                    ),
                )
            }
        };
        op.insert("security".into(), security);
        op.insert("x-access".into(), json!(access));
        op.insert("x-phi".into(), json!(r.phi));
        let mut params = Vec::new();
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                params.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        if r.access != Access::Public {
            params.push(json!({ "name": "Territory-Id", "in": "header", "required": true, "schema": { "type": "string" } }));
        }
        op.insert("parameters".into(), Value::Array(params));
        if let Some(b) = r.body {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{b}") } } } }),
            );
        }
        let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
        let ok_type = if r.path.ends_with("/stream") {
            "text/event-stream"
        } else if r.path == "/metrics" {
            "text/plain"
        } else {
            "application/json"
        };
        op.insert(
            "responses".into(),
            json!({ "2XX": { "description": "success", "content": { ok_type: {} } }, "4XX": err, "5XX": err }),
        );
        paths
            .entry(r.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(r.method.to_lowercase(), Value::Object(op));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "HEMA3N Edge crew tablet API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        }
    })
}

/// Prometheus text exposition of the API, ingest, triage, outbox, alarm and session state.
pub fn metrics_text(st: &ApiState, outbox: &OutboxStats, alarms: &[Alarm], triage: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let mut m = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let a = &st.metrics;
    let g = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed) as f64;
    m(
        "hema3n_api_requests_total",
        "counter",
        "API requests",
        &[(String::new(), g(&a.requests))],
    );
    m(
        "hema3n_api_errors_total",
        "counter",
        "API error responses by class",
        &[
            ("{class=\"4xx\"}".into(), g(&a.errors_4xx)),
            ("{class=\"5xx\"}".into(), g(&a.errors_5xx)),
        ],
    );
    m(
        "hema3n_api_busy_total",
        "counter",
        "Requests shed with 503 BUSY",
        &[(String::new(), g(&a.busy))],
    );
    m(
        "hema3n_api_logins_total",
        "counter",
        "Logins by outcome",
        &[
            ("{outcome=\"success\"}".into(), g(&a.logins)),
            ("{outcome=\"failure\"}".into(), g(&a.login_failures)),
        ],
    );
    m(
        "hema3n_api_logoffs_total",
        "counter",
        "Sessions ended by idle or lifetime expiry on use",
        &[(String::new(), g(&a.logoffs))],
    );
    m(
        "hema3n_api_denials_total",
        "counter",
        "Requests denied by role or territory",
        &[(String::new(), g(&a.denials))],
    );
    m(
        "hema3n_api_break_glass_total",
        "counter",
        "Break-glass grants",
        &[(String::new(), g(&a.break_glass))],
    );
    m(
        "hema3n_api_sessions",
        "gauge",
        "Sessions alive",
        &[(String::new(), st.sessions.len() as f64)],
    );
    m(
        "hema3n_api_streams",
        "gauge",
        "Live streams open",
        &[(String::new(), g(&a.streams_open))],
    );
    if let Some(i) = &st.ingest {
        m(
            "hema3n_ingest_received_total",
            "counter",
            "Device messages received",
            &[(String::new(), g(&i.received))],
        );
        m(
            "hema3n_ingest_committed_total",
            "counter",
            "Device messages committed (stored or dead-lettered)",
            &[(String::new(), g(&i.committed_messages))],
        );
        m(
            "hema3n_ingest_readings_total",
            "counter",
            "Readings stored",
            &[(String::new(), g(&i.readings))],
        );
        m(
            "hema3n_ingest_duplicates_total",
            "counter",
            "Redelivered readings absorbed",
            &[(String::new(), g(&i.duplicates))],
        );
        let rejects: Vec<(String, f64)> = i
            .rejects()
            .into_iter()
            .map(|(c, n)| (format!("{{code=\"{}\"}}", c.as_str()), n as f64))
            .collect();
        m(
            "hema3n_ingest_rejects_total",
            "counter",
            "Rejected packs by code",
            &rejects,
        );
        m(
            "hema3n_ingest_commit_latency_seconds",
            "gauge",
            "Arrival to commit latency quantiles",
            &[
                (
                    "{quantile=\"0.5\"}".into(),
                    i.latency_quantile(0.5).as_secs_f64(),
                ),
                (
                    "{quantile=\"0.99\"}".into(),
                    i.latency_quantile(0.99).as_secs_f64(),
                ),
            ],
        );
    }
    m(
        "hema3n_triage_results_total",
        "counter",
        "Triage results stored",
        &[(String::new(), triage as f64)],
    );
    m(
        "hema3n_outbox_bundles",
        "gauge",
        "Outbox rows by custody state",
        &[
            ("{state=\"queued\"}".into(), outbox.queued as f64),
            ("{state=\"sent\"}".into(), outbox.sent as f64),
            ("{state=\"receipted\"}".into(), outbox.receipted as f64),
            ("{state=\"purged\"}".into(), outbox.purged as f64),
        ],
    );
    m(
        "hema3n_outbox_queued_bytes",
        "gauge",
        "Bytes not yet receipted",
        &[(String::new(), outbox.queued_bytes as f64)],
    );
    if let Some(s) = &st.sync {
        m(
            "hema3n_sync_link_state",
            "gauge",
            "Cloud link: 0 disabled, 1 offline, 2 catch-up, 3 live",
            &[(String::new(), s.state() as u8 as f64)],
        );
        m(
            "hema3n_sync_receipts_total",
            "counter",
            "Verified receipts",
            &[(String::new(), g(&s.receipts))],
        );
    }
    let mut kinds: Vec<(String, f64)> = Vec::new();
    for al in alarms {
        let l = format!("{{kind=\"{}\"}}", al.kind);
        match kinds.iter_mut().find(|(k, _)| *k == l) {
            Some((_, n)) => *n += 1.0,
            None => kinds.push((l, 1.0)),
        }
    }
    m("hema3n_alarms_open", "gauge", "Open alarms by kind", &kinds);
    o
}
