//! In-process API harness: the real router, a real SQLCipher store and a manual clock, called
//! through tower (no socket) for the table-driven access, session and audit tests.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use hema3n_edge::api::session::ManualClock;
use hema3n_edge::api::{ApiState, router};
use hema3n_edge::crypto::keyring::{self, territory_key_name};
use hema3n_edge::crypto::password;
use hema3n_edge::events::Bus;
use hema3n_edge::model::{Actor, Role};
use hema3n_edge::storage::Store;

use super::Appliance;

pub const PIN: &str = "pin-4829";
pub const T0: i64 = 1_800_000_000_000;

/// Accounts created by [`Api::new`]: (id, role, territory).
pub const USERS: &[(&str, &str, &str)] = &[
    ("medic", "paramedic", "default"),
    ("emt1", "emt", "default"),
    ("staff1", "staff", "default"),
    ("super1", "supervisor", "default"),
    ("super2", "supervisor", "default"),
    ("admin1", "admin", "default"),
    ("victim", "emt", "default"),
    ("north1", "paramedic", "north"),
    ("super_n", "supervisor", "north"),
];

pub struct Api {
    pub app: Appliance,
    pub st: ApiState,
    pub router: Router,
    pub clock: Arc<ManualClock>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

pub struct Reply {
    pub status: StatusCode,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The body as text (XML, Prometheus text; empty for a live stream).
    pub text: String,
    /// The body as received (binary replies: attachments, PDFs).
    pub raw: Vec<u8>,
    pub headers: axum::http::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

impl Api {
    pub async fn new(dropin: &str) -> Api {
        Self::build(dropin, None).await
    }

    /// [`Api::new`] with the daemon's re-triage loop (rules only; `hold` before a less acute
    /// level is stored) fed by the API's writes.
    pub async fn with_retriage(dropin: &str, hold: std::time::Duration) -> Api {
        Self::build(dropin, Some(hold)).await
    }

    async fn build(dropin: &str, retriage: Option<std::time::Duration>) -> Api {
        let app = Appliance::init_with(&[("30-api.toml", dropin)]);
        keyring::ensure_key32(&app.key_dir(), &territory_key_name("north", 1)).unwrap();
        let cfg = app.config();
        let mut db = app.open();
        let phc = password::hash_secret(PIN).unwrap();
        for (id, role, t) in USERS {
            db.add_user(
                &Actor::cli(),
                id,
                &format!("User {id}"),
                Role::parse(role).unwrap(),
                t,
                &phc,
            )
            .unwrap();
        }
        let (store, _thread) = Store::spawn(db, 64, 2).unwrap();
        let clock = Arc::new(ManualClock::at(T0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let bus = Bus::default();
        let mut st = ApiState::new(
            cfg.clone(),
            store.clone(),
            clock.clone(),
            bus.clone(),
            rx.clone(),
        )
        .await
        .unwrap();
        // What the daemon's compliance task does at start (a connection of its own).
        st.compliance
            .set(hema3n_edge::compliance::evaluate_now(&cfg, false).unwrap());
        if let Some(hold) = retriage {
            use hema3n_edge::triage::service::{Retriage, spawn_model_thread};
            let (tx, cases) = tokio::sync::mpsc::unbounded_channel();
            st.retriage = Some(tx);
            let (triager, _model) = spawn_model_thread(None, None, 3, 16);
            let task = Retriage {
                cases,
                store,
                triager,
                debounce: std::time::Duration::from_millis(10),
                hold,
                bus,
                stored: None,
            };
            tokio::spawn(task.run(rx));
        }
        Api {
            router: router(st.clone()),
            app,
            st,
            clock,
            _shutdown: tx,
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        territory: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_from([127, 0, 0, 1], method, path, token, territory, body)
            .await
    }

    /// [`Api::call`] as a client at address `ip` (as the server's accept loop sets it); `call`
    /// is a client on the appliance itself (loopback).
    pub async fn call_from(
        &self,
        ip: [u8; 4],
        method: &str,
        path: &str,
        token: Option<&str>,
        territory: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.request(ip, method, path, (token, territory), body, &[])
            .await
    }

    /// `method path` with `token` in territory `default`, from loopback, with extra headers
    /// (`If-Match`, `Idempotency-Key`).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.request(
            [127, 0, 0, 1],
            method,
            path,
            (Some(token), Some("default")),
            body,
            headers,
        )
        .await
    }

    /// `method path` with raw bytes as the body (`content_type`), as `token` in `default`.
    pub async fn send_bytes(
        &self,
        method: &str,
        path: &str,
        token: &str,
        bytes: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("territory-id", "default");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(Body::from(bytes)).unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                40_000,
            ))));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
            raw: bytes.to_vec(),
            headers,
        }
    }

    /// One upload piece at `offset` of attachment `aid` of `case`.
    pub async fn upload_piece(
        &self,
        token: &str,
        case: &str,
        aid: &str,
        offset: u64,
        piece: Vec<u8>,
    ) -> Reply {
        let off = offset.to_string();
        self.send_bytes(
            "PATCH",
            &format!("/api/v1/cases/{case}/attachments/{aid}/content"),
            token,
            piece,
            &[
                ("content-type", "application/offset+octet-stream"),
                ("upload-offset", &off),
            ],
        )
        .await
    }

    /// Attaches `bytes` to `case` (announce, then pieces of `piece` bytes); the last reply.
    pub async fn attach(
        &self,
        token: &str,
        case: &str,
        kind: &str,
        bytes: &[u8],
        piece: usize,
    ) -> Reply {
        let r = self
            .post(
                token,
                &format!("/api/v1/cases/{case}/attachments"),
                Some(serde_json::json!({"kind": kind, "caption": "test", "size": bytes.len()})),
            )
            .await;
        if r.status != StatusCode::CREATED {
            return r;
        }
        let aid = r.body["id"].as_str().unwrap().to_string();
        self.upload_from(token, case, &aid, bytes, 0, piece, r)
            .await
    }

    /// Sends `bytes[from..]` of attachment `aid` in `piece`-byte pieces, stopping at the first
    /// answer that is not 200; the last answer (`last` when nothing was left to send).
    #[allow(clippy::too_many_arguments)]
    pub async fn upload_from(
        &self,
        token: &str,
        case: &str,
        aid: &str,
        bytes: &[u8],
        from: usize,
        piece: usize,
        mut last: Reply,
    ) -> Reply {
        let mut at = from;
        while at < bytes.len() {
            let end = (at + piece).min(bytes.len());
            last = self
                .upload_piece(token, case, aid, at as u64, bytes[at..end].to_vec())
                .await;
            if last.status != StatusCode::OK {
                break;
            }
            at = end;
        }
        last
    }

    pub async fn request(
        &self,
        ip: [u8; 4],
        method: &str,
        path: &str,
        (token, territory): (Option<&str>, Option<&str>),
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if let Some(t) = territory {
            b = b.header("territory-id", t);
        }
        let req = match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let mut req = req;
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                ip, 40_000,
            ))));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let sse = headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("text/event-stream"));
        let (body, text, raw) = if sse {
            // A live stream never ends: only its status and headers are inspected.
            (Value::Null, String::new(), Vec::new())
        } else {
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                String::from_utf8_lossy(&bytes).into_owned(),
                bytes.to_vec(),
            )
        };
        Reply {
            status,
            body,
            text,
            raw,
            headers,
        }
    }

    /// `GET path` with `token` in territory `default`.
    pub async fn get(&self, token: &str, path: &str) -> Reply {
        self.call("GET", path, Some(token), Some("default"), None)
            .await
    }

    /// `POST path` with `token` in territory `default`.
    pub async fn post(&self, token: &str, path: &str, body: Option<Value>) -> Reply {
        self.call("POST", path, Some(token), Some("default"), body)
            .await
    }

    /// `POST /api/v1/auth/break-glass` with `token` in `territory`.
    pub async fn break_glass(
        &self,
        token: &str,
        territory: &str,
        reason: &str,
        secret: &str,
    ) -> Reply {
        self.call(
            "POST",
            "/api/v1/auth/break-glass",
            Some(token),
            Some(territory),
            Some(serde_json::json!({ "reason": reason, "secret": secret })),
        )
        .await
    }

    /// Logs in and returns the bearer token.
    pub async fn login(&self, user: &str) -> String {
        let r = self
            .call(
                "POST",
                "/api/v1/auth/login",
                None,
                None,
                Some(serde_json::json!({ "user_id": user, "secret": PIN })),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "login {user}: {}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    /// Scalar query on the store.
    pub async fn query_i64(&self, sql: &'static str) -> i64 {
        self.st
            .store
            .call(move |db| {
                Ok(db
                    .raw_connection_for_tests()
                    .query_row(sql, [], |r| r.get(0))
                    .unwrap())
            })
            .await
            .unwrap()
    }

    /// Audit actions appended after `seq`, in order.
    pub async fn audit_after(&self, seq: i64) -> Vec<String> {
        let entries = self.audit_details_after(seq).await;
        entries.into_iter().map(|(action, _)| action).collect()
    }

    /// Audit entries appended after `seq`, in order: action and details.
    pub async fn audit_details_after(&self, seq: i64) -> Vec<(String, Value)> {
        self.st
            .store
            .call(move |db| {
                let c = db.raw_connection_for_tests();
                let mut s = c
                    .prepare("SELECT action, details FROM audit_log WHERE seq > ?1 ORDER BY seq")
                    .unwrap();
                Ok(s.query_map([seq], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .unwrap()
                .map(|r| {
                    let (a, d) = r.unwrap();
                    (a, serde_json::from_str(&d).unwrap_or(Value::Null))
                })
                .collect())
            })
            .await
            .unwrap()
    }

    /// Text query on the store (first column of the first row, rows joined by newlines).
    pub async fn query_text(&self, sql: &str) -> String {
        let sql = sql.to_string();
        self.st
            .store
            .call(move |db| {
                let conn = db.raw_connection_for_tests();
                let mut q = conn.prepare(&sql).unwrap();
                let rows: Vec<String> = q
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                Ok(rows.join("\n"))
            })
            .await
            .unwrap()
    }

    pub async fn audit_head(&self) -> i64 {
        self.query_i64("SELECT coalesce(max(seq), 0) FROM audit_log")
            .await
    }
}

/// A model-decided-then-overridden triage result (ESI 2, NEWS2 5) with `specialty`.
pub fn sample_triage(specialty: &str) -> hema3n_edge::model::TriageRecord {
    hema3n_edge::model::TriageRecord {
        final_esi: 2,
        rules_esi: 2,
        model_esi: Some(3),
        news2: Some(5),
        specialty: Some(specialty.into()),
        confidence: Some(0.7),
        model_id: Some("hema3n-core".into()),
        model_hash: Some("ab".repeat(32)),
        decider: hema3n_edge::model::Decider::RulesOverride,
        abstained: None,
        reasons: vec!["NEWS2 5".into()],
    }
}
