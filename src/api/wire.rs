//! What travels on the wire: the JSON request body extractor, every request body and query
//! type (unknown fields rejected), and the JSON shapes of the responses built from domain and
//! storage types. Handlers never build these shapes themselves; the OpenAPI schemas
//! (`openapi.rs`) are checked against them by `tests/api.rs`.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult, Code};
use crate::model::record::EntryVersion;
use crate::model::{AlarmKind, OutboxState, Role};
use crate::model::{CaseDetails, Observation, StoredPatient, StoredTriage};
use crate::storage::{
    AccessGrant, AuditRow, BreakGlass, BundleState, CaseAlarm, CaseSummary, CaseView, UserInfo,
};
use crate::vocab;

// ---- request bodies --------------------------------------------------------------------------

/// The client's address (from the connection; unspecified when a test calls the router
/// directly). Keys the per-source limits and the secret-guess throttle.
#[derive(Debug, Clone, Copy)]
pub struct Source(pub std::net::IpAddr);

impl Source {
    pub fn of(ext: &axum::http::Extensions) -> Source {
        Source(
            ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
        )
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Source::of(&parts.extensions))
    }
}

/// A JSON request body: size-limited, unknown fields rejected, errors in the API format.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::ValidationError,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Code::PayloadTooLarge,
                        "request body too large",
                    )
                } else {
                    ApiError::bad_request("cannot read the request body")
                }
            })?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            // serde's message names the field and position; it never echoes string values.
            let msg = e.to_string();
            ApiError::validation(format!("invalid JSON body: {msg}"))
                .details(serde_json::json!({ "line": e.line(), "column": e.column() }))
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub user_id: String,
    pub secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassBody {
    pub reason: String,
    /// Re-authentication: the caller's PIN/password.
    pub secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    pub last_name: Option<String>,
    pub date_of_birth: Option<String>,
    pub mrn: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseCreate {
    pub patient_id: Option<String>,
    #[serde(flatten)]
    pub details: CaseDetails,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    pub device_id: String,
    /// Also move the device's unbound readings of the last 15 minutes (since its last case)
    /// into this case. Default false: a monitor may still carry the previous patient's data.
    #[serde(default)]
    pub attach_unbound: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualReading {
    pub name: String,
    pub value: Option<f64>,
    /// AVPU letter.
    pub vs: Option<String>,
    pub t_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManualVitals {
    pub readings: Vec<ManualReading>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Last vitals row id the client has; later ones are pushed.
    pub after: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub before: Option<i64>,
    pub limit: Option<usize>,
    pub patient: Option<String>,
    pub case: Option<String>,
    pub user: Option<String>,
    /// A UTC date, timestamp or Unix ms (`model::parse_time_ms`).
    pub since: Option<String>,
    pub until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatQuery {
    /// `fhir` (default) or `csv`.
    pub format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    pub pending: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewBody {
    pub note: String,
}

/// `POST /api/v1/grants`: one of `case_id` and `patient_id`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    pub user_id: String,
    pub case_id: Option<String>,
    pub patient_id: Option<String>,
    /// `read` or `read_write`.
    pub access: String,
    pub reason: String,
    /// How long it lasts, 1 minute to `api.grant_max_hours`.
    pub minutes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveQuery {
    pub active: Option<bool>,
}

/// An access grant for the reviewing supervisor.
#[derive(Debug, Serialize)]
pub struct GrantReply<'a> {
    pub id: i64,
    pub user_id: &'a str,
    pub kind: &'a str,
    pub resource_id: &'a str,
    pub territory: &'a str,
    pub access: &'a str,
    pub reason: &'a str,
    pub granted_by: &'a str,
    pub granted_at_ms: i64,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub revoked_by: Option<&'a str>,
    pub uses: i64,
}

impl<'a> From<&'a AccessGrant> for GrantReply<'a> {
    fn from(g: &'a AccessGrant) -> Self {
        GrantReply {
            id: g.id,
            user_id: &g.user_id,
            kind: &g.kind,
            resource_id: &g.resource_id,
            territory: &g.territory,
            access: &g.access,
            reason: &g.reason,
            granted_by: &g.granted_by,
            granted_at_ms: g.granted_at_ms,
            expires_at_ms: g.expires_at_ms,
            revoked_at_ms: g.revoked_at_ms,
            revoked_by: g.revoked_by.as_deref(),
            uses: g.uses,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub id: String,
    pub display_name: String,
    pub role: String,
    pub territory: Option<String>,
    pub secret: String,
}

// ---- helpers ---------------------------------------------------------------------------------

/// A JSON response body.
pub type Json = axum::Json<Value>;

/// `200 OK` with a JSON body.
pub fn ok(v: Value) -> ApiResult<Json> {
    Ok(axum::Json(v))
}

/// `201 Created` with a JSON body.
pub fn created(v: Value) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

/// Refuses a path id that is not a UUID (before any lookup).
pub fn check_id(id: &str) -> ApiResult<()> {
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(ApiError::validation("ids are UUIDs").details(json!({ "id": id })));
    }
    Ok(())
}

// ---- response shapes -------------------------------------------------------------------------

pub fn patient_json(p: &StoredPatient) -> Value {
    let mut v = serde_json::to_value(&p.patient).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.retain(|_, x| !x.is_null());
        m.insert("id".into(), json!(p.id));
        m.insert("territory".into(), json!(p.territory));
        m.insert("created_at_ms".into(), json!(p.created_at_ms));
        m.insert("updated_at_ms".into(), json!(p.updated_at_ms));
        m.insert("version".into(), json!(p.version));
    }
    v
}

pub fn obs_json(o: &Observation) -> Value {
    serde_json::to_value(ObsReply::from(o)).unwrap_or(Value::Null)
}

/// One reading as the API shows it (serialised straight into the reply: a case carries
/// hundreds).
#[derive(Debug, Serialize)]
pub struct ObsReply<'a> {
    pub id: i64,
    pub name: &'a str,
    pub value: f64,
    /// AVPU's letter; null for numeric vitals.
    pub display: Option<&'static str>,
    pub t_ms: i64,
    pub received_ms: i64,
    pub device_id: Option<&'a str>,
    pub source: &'a str,
    pub unit: Option<&'static str>,
}

impl<'a> From<&'a Observation> for ObsReply<'a> {
    fn from(o: &'a Observation) -> Self {
        ObsReply {
            id: o.id,
            name: &o.code,
            value: o.value,
            display: if o.code == "avpu" {
                vocab::avpu_letter(o.value)
            } else {
                None
            },
            t_ms: o.device_time_ms,
            received_ms: o.recv_time_ms,
            device_id: o.device_id.as_deref(),
            source: &o.source,
            unit: vocab::lookup(&o.code).and_then(|v| v.unit),
        }
    }
}

/// `200 OK` with `v` serialised once into a buffer of about `size_hint` bytes (large replies
/// skip the growth copies of a small one).
pub fn json_reply<T: Serialize>(v: &T, size_hint: usize) -> Response {
    let mut buf = Vec::with_capacity(size_hint);
    match serde_json::to_writer(&mut buf, v) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a reply");
            ApiError::internal().into_response()
        }
    }
}

/// Bytes a serialised reading takes, about (for [`json_reply`]'s size hint).
pub const OBS_JSON_BYTES: usize = 200;

pub fn triage_json(t: &StoredTriage) -> Value {
    let r = &t.record;
    json!({
        "id": t.id, "created_at_ms": t.created_at_ms,
        "esi": r.final_esi, "rules_esi": r.rules_esi, "model_esi": r.model_esi,
        "news2": r.news2, "specialty": r.specialty, "confidence": r.confidence,
        "model_id": r.model_id, "model_hash": r.model_hash, "decider": r.decider.as_str(),
        "abstained": r.abstained, "reasons": r.reasons,
    })
}

pub fn view_json(v: &CaseView) -> ViewReply<'_> {
    ViewReply {
        id: &v.case.id,
        territory: &v.case.territory,
        status: v.case.status.as_str(),
        created_at_ms: v.case.created_at_ms,
        closed_at_ms: v.case.closed_at_ms,
        patient_id: v.case.patient_id.as_deref(),
        details: &v.case.details,
        version: v.case.version,
        patient: v.patient.as_ref().map(patient_json),
        devices: &v.devices,
        alarms: replies(&v.alarms),
        triage: v.triage.iter().map(triage_json).collect(),
        record: v.record.latest(),
        vitals: replies(&v.vitals),
        bundles: replies(&v.bundles),
    }
}

/// The case screen as the API shows it.
#[derive(Debug, Serialize)]
pub struct ViewReply<'a> {
    pub id: &'a str,
    pub territory: &'a str,
    pub status: &'static str,
    pub created_at_ms: i64,
    pub closed_at_ms: Option<i64>,
    pub patient_id: Option<&'a str>,
    pub details: &'a CaseDetails,
    pub version: i64,
    pub patient: Option<Value>,
    pub devices: &'a [String],
    pub alarms: Vec<AlarmReply<'a>>,
    pub triage: Vec<Value>,
    pub record: Vec<&'a EntryVersion>,
    pub vitals: Vec<ObsReply<'a>>,
    pub bundles: Vec<BundleReply<'a>>,
}

// ---- response types (the API's own, apart from storage rows; schemas in openapi.rs) ------

/// An account as the API shows it (no secrets).
#[derive(Debug, Serialize)]
pub struct UserReply<'a> {
    pub id: &'a str,
    pub display_name: &'a str,
    pub role: Role,
    pub territory: &'a str,
    pub created_at_ms: i64,
    pub disabled: bool,
    pub pending_approval: bool,
}

impl<'a> From<&'a UserInfo> for UserReply<'a> {
    fn from(u: &'a UserInfo) -> Self {
        UserReply {
            id: &u.id,
            display_name: &u.display_name,
            role: u.role,
            territory: &u.territory,
            created_at_ms: u.created_at_ms,
            disabled: u.disabled,
            pending_approval: u.pending_approval,
        }
    }
}

/// One line of the case list.
#[derive(Debug, Serialize)]
pub struct CaseListItem<'a> {
    pub id: &'a str,
    pub status: &'a str,
    pub created_at_ms: i64,
    pub patient_id: Option<&'a str>,
    pub patient_name: Option<&'a str>,
    pub esi: Option<u8>,
    pub devices: &'a [String],
}

impl<'a> From<&'a CaseSummary> for CaseListItem<'a> {
    fn from(c: &'a CaseSummary) -> Self {
        CaseListItem {
            id: &c.id,
            status: &c.status,
            created_at_ms: c.created_at_ms,
            patient_id: c.patient_id.as_deref(),
            patient_name: c.patient_name.as_deref(),
            esi: c.esi,
            devices: &c.devices,
        }
    }
}

/// An open alarm of a case.
#[derive(Debug, Serialize)]
pub struct AlarmReply<'a> {
    pub id: i64,
    pub kind: AlarmKind,
    pub device_id: Option<&'a str>,
    pub raised_at_ms: i64,
    pub detail: &'a str,
}

impl<'a> From<&'a CaseAlarm> for AlarmReply<'a> {
    fn from(a: &'a CaseAlarm) -> Self {
        AlarmReply {
            id: a.id,
            kind: a.kind,
            device_id: a.device_id.as_deref(),
            raised_at_ms: a.raised_at_ms,
            detail: &a.detail,
        }
    }
}

/// Where a case's bundle is in custody.
#[derive(Debug, Serialize)]
pub struct BundleReply<'a> {
    pub bundle_id: &'a str,
    pub kind: &'a str,
    pub state: OutboxState,
    pub attempts: i64,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub receipted_at_ms: Option<i64>,
}

impl<'a> From<&'a BundleState> for BundleReply<'a> {
    fn from(b: &'a BundleState) -> Self {
        BundleReply {
            bundle_id: &b.bundle_id,
            kind: &b.kind,
            state: b.state,
            attempts: b.attempts,
            created_at_ms: b.created_at_ms,
            sent_at_ms: b.sent_at_ms,
            receipted_at_ms: b.receipted_at_ms,
        }
    }
}

/// An audit-log entry for the supervisor (details never hold PHI).
#[derive(Debug, Serialize)]
pub struct AuditReply<'a> {
    pub seq: i64,
    pub ts_ms: i64,
    pub actor: &'a str,
    pub role: &'a str,
    pub action: &'a str,
    pub resource: &'a str,
    pub outcome: &'a str,
    pub territory: &'a str,
    pub details: &'a Value,
}

impl<'a> From<&'a AuditRow> for AuditReply<'a> {
    fn from(r: &'a AuditRow) -> Self {
        AuditReply {
            seq: r.seq,
            ts_ms: r.ts_ms,
            actor: &r.actor,
            role: &r.role,
            action: &r.action,
            resource: &r.resource,
            outcome: &r.outcome,
            territory: &r.territory,
            details: &r.details,
        }
    }
}

/// A break-glass use and its review.
#[derive(Debug, Serialize)]
pub struct BreakGlassReply<'a> {
    pub id: i64,
    pub user_id: &'a str,
    pub territory: &'a str,
    pub reason: &'a str,
    pub started_at_ms: i64,
    pub until_ms: i64,
    pub reviewed_at_ms: Option<i64>,
    pub reviewed_by: Option<&'a str>,
    pub review_note: Option<&'a str>,
}

impl<'a> From<&'a BreakGlass> for BreakGlassReply<'a> {
    fn from(b: &'a BreakGlass) -> Self {
        BreakGlassReply {
            id: b.id,
            user_id: &b.user_id,
            territory: &b.territory,
            reason: &b.reason,
            started_at_ms: b.started_at_ms,
            until_ms: b.until_ms,
            reviewed_at_ms: b.reviewed_at_ms,
            reviewed_by: b.reviewed_by.as_deref(),
            review_note: b.review_note.as_deref(),
        }
    }
}

/// Maps storage rows to their reply type.
pub fn replies<'a, R, W: From<&'a R>>(rows: &'a [R]) -> Vec<W> {
    rows.iter().map(W::from).collect()
}
