//! The patient care record over HTTP: sections by JSON Merge Patch (`PATCH`), events by `POST`,
//! corrections and entered-in-error, case and patient details by merge patch, with `ETag` /
//! `If-Match` (a stale write is `412 STALE`) and `Idempotency-Key` (a repeated submit stores
//! once and answers as the first time).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::error::{ApiError, ApiResult, Code};
use crate::api::guard::{Caller, in_territory};
use crate::api::policy::{Perm, role_perms};
use crate::api::state::ApiState;
use crate::api::wire::{Body, Json, check_id, ok};
use crate::events::LiveEvent;
use crate::model::record::{EventKind, Section, codes};
use crate::storage::{EntryWritten, WriteOpts, valid_request_key};

/// `If-Match: "3"` (also `W/"3"` or `3`) → 3.
fn if_match(h: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(v) = h.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let s = v.to_str().unwrap_or("");
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "If-Match must be an ETag this API sent (a quoted version number)",
            )
            .details(json!({ "field": "If-Match" }))
        })
}

/// The client's `Idempotency-Key`, checked.
pub(crate) fn request_key(h: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = h.get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if valid_request_key(k) => Ok(Some(k.to_string())),
        _ => Err(ApiError::bad_request(
            "Idempotency-Key must be 8 to 64 characters of A-Z, a-z, 0-9, - and _",
        )
        .details(json!({ "field": "Idempotency-Key" }))),
    }
}

/// `ETag` of a version.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits")
}

fn written(status: StatusCode, w: &EntryWritten) -> Response {
    let mut r = (status, axum::Json(json!(w))).into_response();
    r.headers_mut().insert(header::ETAG, etag(w.version));
    r
}

fn need_object(v: &Value) -> ApiResult<()> {
    if v.is_object() {
        Ok(())
    } else {
        Err(ApiError::validation("the body must be a JSON object")
            .details(json!({ "field": "body" })))
    }
}

/// After a change: live views refresh; oxygen and the SpO2 scale re-triage the case.
fn changed(st: &ApiState, case_id: &str, kind: &str) {
    st.bus.send(LiveEvent::Case {
        case_id: case_id.to_string(),
    });
    if matches!(kind, "oxygen" | "spo2_scale")
        && let Some(tx) = &st.retriage
    {
        let _ = tx.send(case_id.to_string());
    }
    // A new destination, ETA or time-critical flag may make a pre-alert due.
    if kind == "disposition"
        && let Some(w) = &st.wake_sealer
    {
        w.notify_one();
    }
}

/// `GET /api/v1/record/codes`: the quick-pick lists.
pub async fn codes() -> ApiResult<Json> {
    ok(codes::catalogue())
}

/// `GET /api/v1/cases/{id}/record`: every entry's current version, the history, and what
/// triage takes from the record.
pub async fn get_record(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let now = st.clock.now_ms();
    let rec = st
        .store
        .audited(move |db| db.read_case_record(&a, &id))
        .await?;
    let o2 = rec.oxygen_state(now);
    ok(json!({
        "entries": rec.latest(),
        "history": rec.versions,
        "oxygen": { "on_oxygen": o2.on_oxygen, "spo2_scale2": o2.scale2 },
    }))
}

/// What one entry write does in the store, given the request's key and `If-Match`.
type EntryOp = Box<
    dyn FnOnce(
            &mut crate::storage::Db,
            &crate::model::Actor,
            WriteOpts<'_>,
        ) -> crate::storage::Result<EntryWritten>
        + Send,
>;

/// The common path of every entry write: checks, territory (then, for a change to an existing
/// `entry`, who may change it), the store call with the request key and version, live refresh
/// (and re-triage), the reply with its `ETag`.
async fn write_entry(
    (st, c, id): (ApiState, Caller, String),
    h: &HeaderMap,
    (status, entry): (StatusCode, Option<&str>),
    body: &Value,
    op: EntryOp,
) -> ApiResult<Response> {
    check_id(&id)?;
    need_object(body)?;
    let (m, key) = (if_match(h)?, request_key(h)?);
    in_territory(&st, &c, "case", &id).await?;
    if let Some(e) = entry {
        may_change_entry(&st, &c, &id, e).await?;
    }
    let a = c.actor.clone();
    let w = st
        .store
        .call(move |db| {
            let o = WriteOpts {
                request_key: key.as_deref(),
                if_match: m,
            };
            op(db, &a, o)
        })
        .await?;
    changed(&st, &id, &w.kind);
    Ok(written(status, &w))
}

async fn patch_section(
    section: Section,
    st: ApiState,
    c: Caller,
    id: String,
    h: HeaderMap,
    patch: Value,
) -> ApiResult<Response> {
    let case = id.clone();
    let body = patch.clone();
    let op: EntryOp = Box::new(move |db, a, o| db.patch_section(a, &case, section, &body, o));
    write_entry((st, c, id), &h, (StatusCode::OK, None), &patch, op).await
}

async fn add_event(
    kind: EventKind,
    st: ApiState,
    c: Caller,
    id: String,
    h: HeaderMap,
    body: Value,
) -> ApiResult<Response> {
    if h.contains_key(header::IF_MATCH) {
        return Err(
            ApiError::bad_request("a new entry has no version to match: send no If-Match")
                .details(json!({ "field": "If-Match" })),
        );
    }
    let case = id.clone();
    let b = body.clone();
    let op: EntryOp = Box::new(move |db, a, o| db.add_event(a, &case, kind, &b, o));
    write_entry((st, c, id), &h, (StatusCode::CREATED, None), &body, op).await
}

/// One handler per section and per event kind (the route table gives each its own
/// permission and schema).
macro_rules! entry_handlers {
    ($($f:ident => $write:ident($what:expr),)+) => {$(
        pub async fn $f(
            State(st): State<ApiState>,
            Extension(c): Extension<Caller>,
            Path(id): Path<String>,
            h: HeaderMap,
            Body(body): Body<Value>,
        ) -> ApiResult<Response> {
            $write($what, st, c, id, h, body).await
        }
    )+};
}

entry_handlers! {
    patch_incident => patch_section(Section::Incident),
    patch_times => patch_section(Section::Times),
    patch_scene => patch_section(Section::Scene),
    patch_situation => patch_section(Section::Situation),
    patch_history => patch_section(Section::History),
    patch_disposition => patch_section(Section::Disposition),
    patch_narrative => patch_section(Section::Narrative),
    patch_spo2_scale => patch_section(Section::Spo2Scale),
    add_oxygen => add_event(EventKind::Oxygen),
    add_procedure => add_event(EventKind::Procedure),
    add_medication => add_event(EventKind::Medication),
    add_assessment => add_event(EventKind::Assessment),
}

/// Medication entries need the `Medication` permission also to correct or void them.
/// (Only the entry's plaintext kind is looked up: nothing decrypted, nothing audited twice.)
async fn may_change_entry(st: &ApiState, c: &Caller, case: &str, entry: &str) -> ApiResult<()> {
    if role_perms(c.user.role).contains(&Perm::Medication) {
        return Ok(());
    }
    let (case, e) = (case.to_string(), entry.to_string());
    let kind = st.store.call(move |db| db.entry_kind(&case, &e)).await?;
    if matches!(kind.as_deref(), Some("medication" | "spo2_scale")) {
        return Err(ApiError::forbidden(
            "medication entries and the SpO2 scale are changed by a paramedic",
        ));
    }
    Ok(())
}

fn check_entry_id(entry: &str) -> ApiResult<()> {
    if Section::parse(entry).is_some() || uuid::Uuid::parse_str(entry).is_ok() {
        Ok(())
    } else {
        Err(ApiError::validation("entry ids are UUIDs or section names")
            .details(json!({ "field": "entry_id" })))
    }
}

/// `PUT /api/v1/cases/{id}/record/entries/{entry_id}`: a corrected event (new version).
pub async fn correct_entry(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, entry)): Path<(String, String)>,
    h: HeaderMap,
    Body(body): Body<Value>,
) -> ApiResult<Response> {
    check_id(&id)?;
    check_entry_id(&entry)?;
    if !h.contains_key(header::IF_MATCH) {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            Code::PreconditionRequired,
            "a correction names the version it corrects: send If-Match with the entry's ETag",
        ));
    }
    let (case, b, e) = (id.clone(), body.clone(), entry.clone());
    let op: EntryOp = Box::new(move |db, a, o| db.correct_event(a, &case, &e, &b, o));
    write_entry((st, c, id), &h, (StatusCode::OK, Some(&entry)), &body, op).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    pub reason: String,
}

fn check_reason(r: &str) -> ApiResult<()> {
    if r.trim().is_empty()
        || r.len() > 500
        || r.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::validation("reason: 1 to 500 bytes of text")
            .details(json!({ "field": "reason" })));
    }
    Ok(())
}

/// `POST /api/v1/cases/{id}/record/entries/{entry_id}/entered-in-error`.
pub async fn void_entry(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, entry)): Path<(String, String)>,
    h: HeaderMap,
    Body(b): Body<VoidBody>,
) -> ApiResult<Response> {
    check_id(&id)?;
    check_entry_id(&entry)?;
    check_reason(&b.reason)?;
    let (case, e) = (id.clone(), entry.clone());
    let op: EntryOp = Box::new(move |db, a, o| db.void_entry(a, &case, &e, &b.reason, o));
    write_entry(
        (st, c, id),
        &h,
        (StatusCode::OK, Some(&entry)),
        &json!({}),
        op,
    )
    .await
}

/// `POST /api/v1/cases/{id}/vitals/{reading_id}/entered-in-error`.
pub async fn void_reading(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, reading)): Path<(String, String)>,
    Body(b): Body<VoidBody>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    let reading: i64 = reading.parse().ok().filter(|r| *r > 0).ok_or_else(|| {
        ApiError::validation("reading ids are positive integers")
            .details(json!({ "field": "reading_id" }))
    })?;
    check_reason(&b.reason)?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    st.store
        .call(move |db| db.void_observation(&a, &case, reading, &b.reason))
        .await?;
    st.bus.send(LiveEvent::Vitals {
        case_id: id.clone(),
    });
    if let Some(tx) = &st.retriage {
        let _ = tx.send(id);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /api/v1/cases/{id}`: merge patch of the case details.
pub async fn patch_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    h: HeaderMap,
    Body(patch): Body<Value>,
) -> ApiResult<Response> {
    check_id(&id)?;
    need_object(&patch)?;
    let m = if_match(&h)?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let v = st
        .store
        .call(move |db| db.patch_case(&a, &case, &patch, m))
        .await?;
    st.bus.send(LiveEvent::Case {
        case_id: id.clone(),
    });
    if let Some(tx) = &st.retriage {
        // The chief complaint is a triage input.
        let _ = tx.send(id);
    }
    Ok(versioned(v))
}

/// `{"version": v}` with its `ETag`.
fn versioned(v: i64) -> Response {
    let mut r = axum::Json(json!({ "version": v })).into_response();
    r.headers_mut().insert(header::ETAG, etag(v));
    r
}

/// `PATCH /api/v1/patients/{id}`: merge patch of the demographics.
pub async fn patch_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    h: HeaderMap,
    Body(patch): Body<Value>,
) -> ApiResult<Response> {
    check_id(&id)?;
    need_object(&patch)?;
    let m = if_match(&h)?;
    in_territory(&st, &c, "patient", &id).await?;
    let (a, pid) = (c.actor.clone(), id.clone());
    let v = st
        .store
        .call(move |db| db.patch_patient(&a, &pid, &patch, m))
        .await?;
    Ok(versioned(v))
}

/// `GET /api/v1/cases/{id}/nemsis`: the case as a NEMSIS v3.5.1 `EMSDataSet` document, audited
/// as a disclosure; `422` names the fields NEMSIS requires that the record lacks.
pub async fn nemsis(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let x = st
        .store
        .call(move |db| db.disclose_case(&a, &id, "nemsis-3.5.1"))
        .await?;
    let doc = crate::sync::nemsis::export(&x, &st.cfg.nemsis).map_err(|e| {
        ApiError::validation(e.to_string()).details(json!({ "missing": e.missing }))
    })?;
    let mut r = doc.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    Ok(r)
}

/// Longest draft a tablet may keep per form (serialised JSON).
const MAX_DRAFT_BYTES: usize = 16 * 1024;

fn check_form(form: &str) -> ApiResult<()> {
    let ok = (1..=32).contains(&form.len())
        && form
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(
            ApiError::validation("form names are 1-32 of a-z, 0-9 and _")
                .details(json!({ "field": "form" })),
        )
    }
}

/// `GET /api/v1/cases/{id}/drafts`: the caller's unsaved forms of the case.
pub async fn get_drafts(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let d = st.store.call(move |db| db.drafts(&a, &id)).await?;
    ok(json!({
        "drafts": d.into_iter().map(|(form, at, body)| json!({ "form": form, "saved_at_ms": at, "body": body })).collect::<Vec<_>>(),
    }))
}

/// `PUT /api/v1/cases/{id}/drafts/{form}`: keeps an unsaved form (sealed) until it is submitted
/// or dropped, so an idle logoff loses nothing.
pub async fn put_draft(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, form)): Path<(String, String)>,
    Body(body): Body<Value>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    check_form(&form)?;
    need_object(&body)?;
    if body.to_string().len() > MAX_DRAFT_BYTES {
        return Err(
            ApiError::validation(format!("a draft is at most {MAX_DRAFT_BYTES} bytes"))
                .details(json!({ "field": "body" })),
        );
    }
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    st.store
        .call(move |db| db.save_draft(&a, &id, &form, &body))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/v1/cases/{id}/drafts/{form}`.
pub async fn drop_draft(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, form)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    check_form(&form)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    st.store
        .call(move |db| db.drop_draft(&a, &id, &form))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
