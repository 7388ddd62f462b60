//! The route table and the handlers.
//!
//! [`ROUTES`] is the single source of truth for who may call what: the guard looks every
//! request up in it (a route missing from it is denied to everybody) and the OpenAPI document
//! is generated from it.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Caller, Perm, in_territory};
use super::error::{ApiError, ApiResult};
use super::{ApiState, Body};
use crate::events::LiveEvent;
use crate::ingest::vocab;
use crate::model::{
    CaseDetails, Observation, Patient, StoredPatient, StoredTriage, is_valid_ident,
};
use crate::storage::{CaseParts, CaseView, Medication, PatientQuery};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No login (login itself, health, metrics, OpenAPI, the UI).
    Public,
    /// Any logged-in user.
    Authenticated,
    /// Users whose role (or break-glass grant) has the permission.
    Perm(Perm),
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// Reads or writes PHI (every call is audited).
    pub phi: bool,
    pub summary: &'static str,
    /// Request body schema name in the OpenAPI document, if any.
    pub body: Option<&'static str>,
}

pub const BREAK_GLASS_PATH: &str = "/api/v1/auth/break-glass";

const fn r(
    method: &'static str,
    path: &'static str,
    access: Access,
    phi: bool,
    summary: &'static str,
    body: Option<&'static str>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        phi,
        summary,
        body,
    }
}

use Access::{Authenticated, Public};
use Perm::*;

/// Every API route.
pub const ROUTES: &[RouteSpec] = &[
    r(
        "GET",
        "/healthz",
        Public,
        false,
        "Liveness and component state",
        None,
    ),
    r(
        "GET",
        "/metrics",
        Public,
        false,
        "Prometheus metrics (no PHI)",
        None,
    ),
    r(
        "GET",
        "/api/v1/openapi.json",
        Public,
        false,
        "This document",
        None,
    ),
    r(
        "POST",
        "/api/v1/auth/login",
        Public,
        false,
        "Log in with a personal user id and PIN/password; returns a bearer token",
        Some("Login"),
    ),
    r(
        "POST",
        "/api/v1/auth/logout",
        Authenticated,
        false,
        "End this session",
        None,
    ),
    r(
        "GET",
        "/api/v1/auth/me",
        Authenticated,
        false,
        "The caller, territory, permissions and break-glass state",
        None,
    ),
    r(
        "POST",
        BREAK_GLASS_PATH,
        Access::Perm(BreakGlass),
        false,
        "Break-glass: re-authenticate with a reason for time-boxed wider read access",
        Some("BreakGlass"),
    ),
    r(
        "GET",
        "/api/v1/patients",
        Access::Perm(PatientRead),
        true,
        "Search patients by last_name, date_of_birth, mrn (blind indexes)",
        None,
    ),
    r(
        "POST",
        "/api/v1/patients",
        Access::Perm(PatientWrite),
        true,
        "Register a patient (partial data allowed)",
        Some("Patient"),
    ),
    r(
        "GET",
        "/api/v1/patients/{id}",
        Access::Perm(PatientRead),
        true,
        "Read a patient",
        None,
    ),
    r(
        "PUT",
        "/api/v1/patients/{id}",
        Access::Perm(PatientWrite),
        true,
        "Replace a patient's demographics",
        Some("Patient"),
    ),
    r(
        "GET",
        "/api/v1/cases",
        Access::Perm(CaseList),
        true,
        "Cases of the territory (names for demographics roles, ESI for clinical roles)",
        None,
    ),
    r(
        "POST",
        "/api/v1/cases",
        Access::Perm(ClinicalWrite),
        true,
        "Open a case",
        Some("CaseCreate"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}",
        Access::Perm(ClinicalRead),
        true,
        "The case: patient, devices, alarms, triage, medications, vitals, sync state",
        None,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/devices",
        Access::Perm(ClinicalWrite),
        true,
        "Bind a field device to the case",
        Some("Bind"),
    ),
    r(
        "DELETE",
        "/api/v1/cases/{id}/devices/{device_id}",
        Access::Perm(ClinicalWrite),
        true,
        "Unbind a device",
        None,
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/vitals",
        Access::Perm(ClinicalRead),
        true,
        "Vitals history, oldest first",
        None,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/vitals",
        Access::Perm(ClinicalWrite),
        true,
        "Enter vitals by hand",
        Some("ManualVitals"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/triage",
        Access::Perm(ClinicalRead),
        true,
        "Triage results, newest first, with reasons",
        None,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/medications",
        Access::Perm(Medication),
        true,
        "Record a medication order",
        Some("Medication"),
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/stream",
        Access::Perm(ClinicalRead),
        true,
        "Live events (SSE): vitals, triage, alarm, case",
        None,
    ),
    r(
        "GET",
        "/api/v1/cases/{id}/handoff",
        Access::Perm(ClinicalRead),
        true,
        "Handoff summary for the receiving hospital",
        None,
    ),
    r(
        "POST",
        "/api/v1/cases/{id}/close",
        Access::Perm(ClinicalWrite),
        true,
        "Close the case; it is sealed and queued for the cloud",
        None,
    ),
    r(
        "GET",
        "/api/v1/devices",
        Access::Perm(DeviceRead),
        false,
        "Field devices, presence and binding",
        None,
    ),
    r(
        "GET",
        "/api/v1/sync",
        Access::Perm(SyncRead),
        false,
        "Cloud link state and outbox counts",
        None,
    ),
    r(
        "GET",
        "/api/v1/audit",
        Access::Perm(AuditReview),
        false,
        "Audit trail, newest first (?before=seq&limit=n)",
        None,
    ),
    r(
        "GET",
        "/api/v1/break-glass",
        Access::Perm(BreakGlassReview),
        false,
        "Break-glass uses (?pending=true for the review queue)",
        None,
    ),
    r(
        "POST",
        "/api/v1/break-glass/{id}/review",
        Access::Perm(BreakGlassReview),
        false,
        "Close a break-glass review",
        Some("Review"),
    ),
    r(
        "GET",
        "/api/v1/users",
        Access::Perm(Admin),
        false,
        "Accounts",
        None,
    ),
    r(
        "POST",
        "/api/v1/users",
        Access::Perm(Admin),
        false,
        "Add an account",
        Some("UserCreate"),
    ),
    r(
        "POST",
        "/api/v1/users/{id}/disable",
        Access::Perm(Admin),
        false,
        "Disable an account and end its sessions",
        None,
    ),
];

/// The access rule of a route, or `None` when it is not in the table (denied).
pub fn route_access(method: &Method, path: &str) -> Option<Access> {
    if !path.starts_with("/api/") && path != "/healthz" && path != "/metrics" {
        // The UI's static assets.
        return Some(Access::Public);
    }
    ROUTES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
        .map(|r| r.access)
}

/// The API's axum routes (handlers for every row of [`ROUTES`]).
pub fn api_routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/me", get(auth::me))
        .route(BREAK_GLASS_PATH, post(auth::break_glass))
        .route(
            "/api/v1/patients",
            get(search_patients).post(create_patient),
        )
        .route(
            "/api/v1/patients/{id}",
            get(get_patient).put(update_patient),
        )
        .route("/api/v1/cases", get(list_cases).post(create_case))
        .route("/api/v1/cases/{id}", get(get_case))
        .route("/api/v1/cases/{id}/devices", post(bind_device))
        .route(
            "/api/v1/cases/{id}/devices/{device_id}",
            axum::routing::delete(unbind_device),
        )
        .route(
            "/api/v1/cases/{id}/vitals",
            get(get_vitals).post(add_vitals),
        )
        .route("/api/v1/cases/{id}/triage", get(get_triage))
        .route("/api/v1/cases/{id}/medications", post(add_medication))
        .route("/api/v1/cases/{id}/stream", get(stream))
        .route("/api/v1/cases/{id}/handoff", get(handoff))
        .route("/api/v1/cases/{id}/close", post(close_case))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/sync", get(sync_status))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/break-glass", get(break_glass_list))
        .route("/api/v1/break-glass/{id}/review", post(break_glass_review))
        .route("/api/v1/users", get(users).post(add_user))
        .route("/api/v1/users/{id}/disable", post(disable_user))
}

type Json = axum::Json<Value>;

fn ok(v: Value) -> ApiResult<Json> {
    Ok(axum::Json(v))
}

fn created(v: Value) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

fn check_id(id: &str) -> ApiResult<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::validation("ids are UUIDs").details(json!({ "id": id })));
    }
    Ok(())
}

// ---- health, metrics, OpenAPI ----------------------------------------------------------------

async fn healthz(State(st): State<ApiState>) -> Response {
    let store = st.store.call(|db| db.ping()).await;
    let sync = st
        .sync
        .as_ref()
        .map(|m| m.state().as_str())
        .unwrap_or("disabled");
    let body = json!({
        "status": if store.is_ok() { "ok" } else { "degraded" },
        "store": if store.is_ok() { "ok" } else { "unavailable" },
        "triage": &*st.triage_status,
        "sync": sync,
        "sessions": st.sessions.len(),
    });
    let code = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(st): State<ApiState>) -> ApiResult<Response> {
    let snap = st
        .store
        .call(|db| Ok((db.outbox_stats()?, db.open_alarms()?, db.triage_count()?)))
        .await?;
    let text = super::openapi::metrics_text(&st, &snap.0, &snap.1, snap.2);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn openapi() -> Json {
    axum::Json(super::openapi::document())
}

// ---- JSON shapes -----------------------------------------------------------------------------

fn patient_json(p: &StoredPatient) -> Value {
    let mut v = serde_json::to_value(&p.patient).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
        m.insert("id".into(), json!(p.id));
        m.insert("territory".into(), json!(p.territory));
        m.insert("created_at_ms".into(), json!(p.created_at_ms));
        m.insert("updated_at_ms".into(), json!(p.updated_at_ms));
    }
    v
}

fn obs_json(o: &Observation) -> Value {
    let display = if o.code == "avpu" {
        vocab::AVPU_LEVELS
            .get(o.value as usize)
            .map(|s| json!(s))
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    json!({
        "id": o.id, "name": o.code, "value": o.value, "display": display,
        "t_ms": o.device_time_ms, "received_ms": o.recv_time_ms,
        "device_id": o.device_id, "source": o.source,
        "unit": vocab::lookup(&o.code).and_then(|v| v.unit),
    })
}

fn triage_json(t: &StoredTriage) -> Value {
    let r = &t.record;
    json!({
        "id": t.id, "created_at_ms": t.created_at_ms,
        "esi": r.final_esi, "rules_esi": r.rules_esi, "model_esi": r.model_esi,
        "news2": r.news2, "specialty": r.specialty, "confidence": r.confidence,
        "model_id": r.model_id, "model_hash": r.model_hash, "decider": r.decider,
        "abstained": r.abstained, "reasons": r.reasons,
    })
}

fn parts(c: &Caller) -> CaseParts {
    CaseParts {
        clinical: c.can(Perm::ClinicalRead),
        demographics: c.can(Perm::PatientRead),
    }
}

fn view_json(v: &CaseView) -> Value {
    json!({
        "id": v.case.id,
        "territory": v.case.territory,
        "status": v.case.status.as_str(),
        "created_at_ms": v.case.created_at_ms,
        "closed_at_ms": v.case.closed_at_ms,
        "patient_id": v.case.patient_id,
        "details": v.case.details,
        "patient": v.patient.as_ref().map(patient_json),
        "devices": v.devices,
        "alarms": v.alarms,
        "triage": v.triage.iter().map(triage_json).collect::<Vec<_>>(),
        "medications": v.medications,
        "vitals": v.vitals.iter().map(obs_json).collect::<Vec<_>>(),
        "bundles": v.bundles,
    })
}

// ---- patients --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    last_name: Option<String>,
    date_of_birth: Option<String>,
    mrn: Option<String>,
}

async fn search_patients(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json> {
    if q.last_name.is_none() && q.date_of_birth.is_none() && q.mrn.is_none() {
        return Err(ApiError::validation(
            "search by at least one of last_name, date_of_birth, mrn",
        ));
    }
    let query = PatientQuery {
        last_name: q.last_name,
        date_of_birth: q.date_of_birth,
        mrn: q.mrn,
    };
    let (a, t) = (c.actor.clone(), c.territory.clone());
    let hits = st
        .store
        .call(move |db| db.search_patients(&a, &t, &query))
        .await?;
    ok(json!({ "patients": hits.iter().map(patient_json).collect::<Vec<_>>() }))
}

async fn create_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(p): Body<Patient>,
) -> ApiResult<Response> {
    let (a, t) = (c.actor.clone(), c.territory.clone());
    let id = st
        .store
        .call(move |db| db.create_patient(&a, &t, &p))
        .await?;
    created(json!({ "id": id }))
}

async fn get_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "patient", &id).await?;
    let a = c.actor.clone();
    let p = st.store.call(move |db| db.get_patient(&a, &id)).await?;
    ok(patient_json(&p))
}

async fn update_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(p): Body<Patient>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    in_territory(&st, &c, "patient", &id).await?;
    let a = c.actor.clone();
    st.store
        .call(move |db| db.update_patient(&a, &id, &p))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- cases -----------------------------------------------------------------------------------

async fn list_cases(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
) -> ApiResult<Json> {
    let (a, t, p) = (c.actor.clone(), c.territory.clone(), parts(&c));
    let cases = st
        .store
        .call(move |db| db.list_cases(&a, &t, p, 200))
        .await?;
    ok(json!({ "cases": cases }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseCreate {
    patient_id: Option<String>,
    #[serde(flatten)]
    details: CaseDetails,
}

async fn create_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(b): Body<CaseCreate>,
) -> ApiResult<Response> {
    for v in [
        &b.details.chief_complaint,
        &b.details.mechanism,
        &b.details.onset,
    ]
    .into_iter()
    .flatten()
    {
        if v.len() > 2000 {
            return Err(ApiError::validation("case texts are at most 2000 bytes"));
        }
    }
    if let Some(p) = &b.patient_id {
        check_id(p)?;
        in_territory(&st, &c, "patient", p).await?;
    }
    let (a, t) = (c.actor.clone(), c.territory.clone());
    let id = st
        .store
        .call(move |db| db.create_case(&a, &t, b.patient_id.as_deref(), &b.details))
        .await?;
    created(json!({ "id": id }))
}

async fn case_view(
    st: &ApiState,
    c: &Caller,
    id: String,
    action: &'static str,
) -> ApiResult<CaseView> {
    check_id(&id)?;
    in_territory(st, c, "case", &id).await?;
    let (a, p) = (c.actor.clone(), parts(c));
    Ok(st
        .store
        .call(move |db| db.case_view(&a, &id, p, action))
        .await?)
}

async fn get_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    let v = case_view(&st, &c, id, "case.read").await?;
    ok(view_json(&v))
}

async fn handoff(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    let v = case_view(&st, &c, id, "case.handoff").await?;
    let mut latest: Vec<&Observation> = Vec::new();
    for o in v.vitals.iter().rev() {
        if !latest.iter().any(|l| l.code == o.code) {
            latest.push(o);
        }
    }
    latest.sort_by(|a, b| a.code.cmp(&b.code));
    let age = v
        .patient
        .as_ref()
        .and_then(|p| p.patient.date_of_birth.as_deref())
        .and_then(|d| crate::model::age_years(d, st.clock.now_ms()))
        .map(|a| a.floor() as i64);
    ok(json!({
        "case_id": v.case.id,
        "status": v.case.status.as_str(),
        "opened_at_ms": v.case.created_at_ms,
        "patient": v.patient.as_ref().map(patient_json),
        "age_years": age,
        "chief_complaint": v.case.details.chief_complaint,
        "mechanism": v.case.details.mechanism,
        "onset": v.case.details.onset,
        "latest_vitals": latest.iter().map(|o| obs_json(o)).collect::<Vec<_>>(),
        "triage": v.triage.first().map(triage_json),
        "medications": v.medications,
        "alarms": v.alarms,
        "devices": v.devices,
        "readings": v.vitals.len(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    device_id: String,
    #[serde(default = "yes")]
    attach_unbound: bool,
}

fn yes() -> bool {
    true
}

async fn bind_device(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(b): Body<BindBody>,
) -> ApiResult<Json> {
    check_id(&id)?;
    if !is_valid_ident(&b.device_id) {
        return Err(ApiError::validation(
            "device_id must match [A-Za-z0-9._-]{1,64}",
        ));
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let attached = st
        .store
        .call(move |db| db.bind_device(&a, &b.device_id, &case, b.attach_unbound))
        .await?;
    st.bus.send(LiveEvent::Case { case_id: id });
    ok(json!({ "attached_readings": attached }))
}

async fn unbind_device(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, device)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, d, case) = (c.actor.clone(), device.clone(), id.clone());
    let bound_here = st
        .store
        .call(move |db| {
            Ok(db
                .list_devices()?
                .into_iter()
                .any(|x| x.id == d && x.bound_case.as_deref() == Some(case.as_str())))
        })
        .await?;
    if !bound_here {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            super::error::Code::ValidationError,
            format!("device `{device}` is not bound to this case"),
        ));
    }
    st.store
        .call(move |db| db.unbind_device(&a, &device))
        .await?;
    st.bus.send(LiveEvent::Case { case_id: id });
    Ok(StatusCode::NO_CONTENT)
}

async fn get_vitals(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let v = st.store.call(move |db| db.case_vitals(&a, &id)).await?;
    ok(json!({ "vitals": v.iter().map(obs_json).collect::<Vec<_>>() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualReading {
    name: String,
    value: Option<f64>,
    /// AVPU letter.
    vs: Option<String>,
    t_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManualVitals {
    readings: Vec<ManualReading>,
}

async fn add_vitals(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(b): Body<ManualVitals>,
) -> ApiResult<Response> {
    check_id(&id)?;
    if b.readings.is_empty() || b.readings.len() > 32 {
        return Err(ApiError::validation("send 1 to 32 readings"));
    }
    let now = st.clock.now_ms();
    let mut rows = Vec::with_capacity(b.readings.len());
    for (i, r) in b.readings.iter().enumerate() {
        let bad = |m: String| ApiError::validation(m).details(json!({ "reading": i }));
        let v = vocab::lookup(&r.name).ok_or_else(|| bad(format!("unknown vital `{}`", r.name)))?;
        let value = match (&r.value, &r.vs, v.name) {
            (None, Some(s), "avpu") => vocab::AVPU_LEVELS
                .iter()
                .position(|l| l == s)
                .ok_or_else(|| bad("avpu must be one of A, C, V, P, U".into()))?
                as f64,
            (Some(x), None, n) if n != "avpu" => *x,
            _ => {
                return Err(bad(format!(
                    "`{}` needs {}",
                    r.name,
                    if v.name == "avpu" {
                        "vs"
                    } else {
                        "a numeric value"
                    }
                )));
            }
        };
        if !value.is_finite() || value < v.min || value > v.max {
            return Err(bad(format!(
                "{} = {value} is outside the plausible range {}-{}",
                r.name, v.min, v.max
            )));
        }
        let t = r.t_ms.unwrap_or(now);
        if t > now + 60_000 || t < now - 7 * 86_400_000 {
            return Err(bad("t_ms must be within the last 7 days".into()));
        }
        rows.push((v.name.to_string(), value, t));
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let ids = st
        .store
        .call(move |db| db.add_manual_vitals(&a, &case, &rows))
        .await?;
    st.bus.send(LiveEvent::Vitals {
        case_id: id.clone(),
    });
    if let Some(tx) = &st.retriage {
        let _ = tx.send(id);
    }
    created(json!({ "ids": ids }))
}

async fn get_triage(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let t = st
        .store
        .call(move |db| db.triage_history(&a, &id, 50))
        .await?;
    ok(json!({ "triage": t.iter().map(triage_json).collect::<Vec<_>>() }))
}

async fn add_medication(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(m): Body<Medication>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let fields = [
        Some(&m.name),
        Some(&m.dose),
        Some(&m.route),
        m.note.as_ref(),
    ];
    if m.name.trim().is_empty() || fields.iter().flatten().any(|f| f.len() > 200) {
        return Err(ApiError::validation(
            "medication name is required; fields are at most 200 bytes",
        ));
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let mid = st
        .store
        .call(move |db| db.add_medication(&a, &case, &m))
        .await?;
    st.bus.send(LiveEvent::Case { case_id: id });
    created(json!({ "id": mid }))
}

async fn close_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    st.store.call(move |db| db.close_case(&a, &case)).await?;
    if let Some(w) = &st.wake_sealer {
        w.notify_one();
    }
    st.bus.send(LiveEvent::Case {
        case_id: id.clone(),
    });
    ok(json!({ "id": id, "status": "closed" }))
}

// ---- live stream -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Last vitals row id the client has; later ones are pushed.
    after: Option<i64>,
}

struct Live {
    st: ApiState,
    case_id: String,
    token_hash: [u8; 32],
    after: i64,
    rx: tokio::sync::broadcast::Receiver<LiveEvent>,
    check: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.st.metrics.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn stream(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let permit = st
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy("too many live streams open"))?;
    // Subscribe before the audit so no event between the two is missed.
    let rx = st.bus.subscribe();
    let (a, case) = (c.actor.clone(), id.clone());
    st.store
        .call(move |db| db.audit_stream_open(&a, &case))
        .await?;
    st.metrics.streams_open.fetch_add(1, Ordering::Relaxed);
    let live = Live {
        shutdown: st.shutdown.clone(),
        st: st.clone(),
        case_id: id,
        token_hash: c.token_hash,
        after: q.after.unwrap_or(i64::MAX),
        rx,
        check: tokio::time::interval(Duration::from_secs(1)),
        done: false,
        _permit: permit,
    };
    let s = futures_util::stream::unfold(live, |mut l| async move {
        let ev = next_event(&mut l).await?;
        Some((Ok::<Event, Infallible>(ev), l))
    });
    let keepalive = Duration::from_secs(st.cfg.api.stream_keepalive_secs.max(1));
    let mut r = Sse::new(s)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    r.headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("static header"));
    Ok(r)
}

/// The next event for a live stream, or `None` to end it (logoff, shutdown, case gone).
async fn next_event(l: &mut Live) -> Option<Event> {
    use tokio::sync::broadcast::error::RecvError;
    if l.done {
        return None;
    }
    loop {
        tokio::select! {
            r = l.rx.recv() => match r {
                Ok(e) if e.case_id() == l.case_id => match e {
                    LiveEvent::Vitals { .. } => {
                        if l.after == i64::MAX {
                            // The client asked for no backlog: start from now.
                            l.after = 0;
                        }
                        let (case, after) = (l.case_id.clone(), l.after);
                        match l.st.store.call(move |db| db.case_vitals_after(&case, after)).await {
                            Ok(v) if v.is_empty() => continue,
                            Ok(v) => {
                                l.after = v.iter().map(|o| o.id).max().unwrap_or(l.after);
                                let data = Value::Array(v.iter().map(obs_json).collect());
                                return Some(Event::default().event("vitals").data(data.to_string()));
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "live stream ends");
                                return None;
                            }
                        }
                    }
                    LiveEvent::Triage { triage, .. } => {
                        return Some(Event::default().event("triage").data(triage_json(&triage).to_string()));
                    }
                    LiveEvent::Alarm { .. } => return Some(Event::default().event("alarm").data("{}")),
                    LiveEvent::Case { .. } => return Some(Event::default().event("case").data("{}")),
                },
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    return Some(Event::default().event("resync").data(json!({ "missed": n }).to_string()));
                }
                Err(RecvError::Closed) => return None,
            },
            _ = l.check.tick() => {
                if auth::end_if_expired(&l.st, &l.token_hash).await {
                    l.done = true;
                    return Some(Event::default().event("logoff").data("{}"));
                }
            }
            _ = l.shutdown.changed() => return None,
        }
    }
}

// ---- devices, sync, audit, break-glass review, users ---------------------------------------

async fn devices(State(st): State<ApiState>, Extension(c): Extension<Caller>) -> ApiResult<Json> {
    let t = c.territory.clone();
    let list = st.store.call(|db| db.list_devices()).await?;
    let list: Vec<Value> = list
        .into_iter()
        .filter(|d| d.territory == t)
        .map(|d| {
            json!({
                "id": d.id, "kind": d.kind, "presence": d.presence, "bound_case": d.bound_case,
                "last_vitals_at_ms": d.last_vitals_at, "unbound_readings": d.unbound_readings,
            })
        })
        .collect();
    ok(json!({ "devices": list }))
}

async fn sync_status(State(st): State<ApiState>) -> ApiResult<Json> {
    let s = st.store.call(|db| db.outbox_stats()).await?;
    let link = st
        .sync
        .as_ref()
        .map(|m| m.state().as_str())
        .unwrap_or("disabled");
    let last_receipt = st
        .sync
        .as_ref()
        .map(|m| m.last_receipt_ms.load(Ordering::Relaxed))
        .filter(|t| *t > 0);
    ok(json!({
        "link": link,
        "last_receipt_ms": last_receipt,
        "outbox": {
            "queued": s.queued, "sent": s.sent, "receipted": s.receipted, "purged": s.purged,
            "queued_bytes": s.queued_bytes, "oldest_pending_ms": s.oldest_pending_ms,
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    before: Option<i64>,
    limit: Option<usize>,
}

async fn audit(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json> {
    let a = c.actor.clone();
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let rows = st
        .store
        .call(move |db| db.audit_entries(&a, limit, q.before))
        .await?;
    ok(json!({ "entries": rows }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingQuery {
    pending: Option<bool>,
}

async fn break_glass_list(
    State(st): State<ApiState>,
    Query(q): Query<PendingQuery>,
) -> ApiResult<Json> {
    let pending = q.pending.unwrap_or(false);
    let rows = st
        .store
        .call(move |db| db.break_glass_list(pending))
        .await?;
    ok(json!({ "uses": rows }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewBody {
    note: String,
}

async fn break_glass_review(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<i64>,
    Body(b): Body<ReviewBody>,
) -> ApiResult<StatusCode> {
    if b.note.trim().is_empty() || b.note.len() > 1000 {
        return Err(ApiError::validation(
            "a review note of 1 to 1000 bytes is required",
        ));
    }
    let a = c.actor.clone();
    st.store
        .call(move |db| db.break_glass_review(&a, id, b.note.trim()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn users(State(st): State<ApiState>) -> ApiResult<Json> {
    let u = st.store.call(|db| db.list_users()).await?;
    ok(json!({ "users": u }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserCreate {
    id: String,
    display_name: String,
    role: String,
    territory: Option<String>,
    secret: String,
}

async fn add_user(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(b): Body<UserCreate>,
) -> ApiResult<Response> {
    let territory = b.territory.unwrap_or_else(|| c.territory.clone());
    validate_user(&b.id, &b.display_name, &b.role, &territory).map_err(ApiError::validation)?;
    crate::crypto::password::check_policy(&b.secret)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let secret = b.secret;
    let phc = tokio::task::spawn_blocking(move || crate::crypto::password::hash_secret(&secret))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|_| ApiError::internal())?;
    let (a, id) = (c.actor.clone(), b.id.clone());
    st.store
        .call(move |db| db.add_user(&a, &id, &b.display_name, &b.role, &territory, &phc))
        .await?;
    created(json!({ "id": b.id }))
}

/// Checks a new account's fields (shared with `users add`).
pub fn validate_user(
    id: &str,
    display_name: &str,
    role: &str,
    territory: &str,
) -> Result<(), String> {
    if !is_valid_ident(id) || !is_valid_ident(territory) {
        return Err("user id and territory must match [A-Za-z0-9._-]{1,64}".into());
    }
    if display_name.trim().is_empty() || display_name.len() > 100 {
        return Err("display name must have 1 to 100 bytes".into());
    }
    if !auth::ROLES.contains(&role) {
        return Err(format!("role must be one of {}", auth::ROLES.join(", ")));
    }
    Ok(())
}

async fn disable_user(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if id == c.user.id {
        return Err(ApiError::validation("you cannot disable your own account"));
    }
    let (a, u) = (c.actor.clone(), id.clone());
    st.store
        .call(move |db| db.set_user_disabled(&a, &u, true))
        .await?;
    auth::end_user_sessions(&st, &id);
    Ok(StatusCode::NO_CONTENT)
}
