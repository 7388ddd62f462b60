//! Supervisor review: the audit trail, break-glass uses and the HIPAA self-check.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::{Caller, in_territory};
use crate::api::state::ApiState;
use crate::api::wire::{
    AuditQuery, AuditReply, Body, BreakGlassReply, FormatQuery, Json, PendingQuery, ReviewBody,
    check_id, ok, replies,
};
use crate::compliance::accounting::{self, Format};
use crate::model::{TIME_FORMS, parse_time_ms};
use crate::storage::AuditFilter;

/// The audit trail of the supervisor's territory, newest first, narrowed by patient, case,
/// user and time (`?patient=&case=&user=&since=&until=&before=&limit=`).
pub async fn audit(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json> {
    let time = |name: &str, v: &Option<String>| -> ApiResult<Option<i64>> {
        v.as_deref()
            .map(|s| {
                parse_time_ms(s)
                    .ok_or_else(|| ApiError::validation(format!("`{name}` must be {TIME_FORMS}")))
            })
            .transpose()
    };
    for (name, v) in [("patient", &q.patient), ("case", &q.case)] {
        if let Some(v) = v {
            check_id(v).map_err(|_| ApiError::validation(format!("`{name}` must be a UUID")))?;
        }
    }
    if let Some(u) = &q.user
        && !(1..=64).contains(&u.len())
    {
        return Err(ApiError::validation(
            "`user` must be a user id (1 to 64 characters)",
        ));
    }
    let f = AuditFilter {
        patient: q.patient,
        case: q.case,
        user: q.user,
        since_ms: time("since", &q.since)?,
        until_ms: time("until", &q.until)?,
        territory: Some(c.user.territory.clone()),
        before_seq: q.before,
        limit: q.limit.unwrap_or(100).clamp(1, 500),
    };
    let a = c.actor.clone();
    let rows = st.store.call(move |db| db.audit_query(&a, &f)).await?;
    ok(json!({ "entries": replies::<_, AuditReply<'_>>(&rows) }))
}

/// `GET /api/v1/patients/{id}/disclosures`: the patient's accounting of disclosures within the
/// supervisor's territory, as a FHIR R4 Bundle of AuditEvents (`application/fhir+json`) or
/// CSV (`?format=csv`); the export itself is audited.
pub async fn disclosures(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<FormatQuery>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let format = match q.format.as_deref() {
        None => Format::Fhir,
        Some(f) => Format::parse(f)
            .ok_or_else(|| ApiError::validation("`format` must be `fhir` or `csv`"))?,
    };
    in_territory(&st, &c, "patient", &id).await?;
    let (a, t, pid) = (c.actor.clone(), c.user.territory.clone(), id.clone());
    let rows = st
        .store
        .call(move |db| db.audit_disclosures(&a, &pid, Some(&t), format.as_str()))
        .await?;
    let (body, content_type) = match format {
        Format::Fhir => {
            let b = accounting::fhir_bundle(&st.cfg.appliance_id, &id, &rows, st.clock.now_ms());
            (b.to_string(), "application/fhir+json")
        }
        Format::Csv => (accounting::csv(&rows), "text/csv; charset=utf-8"),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let file = format!(
        "attachment; filename=\"disclosures-{id}.{}\"",
        if format == Format::Csv { "csv" } else { "json" }
    );
    if let Ok(v) = HeaderValue::from_str(&file) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// Uses into the supervisor's territory or by its users (never other territories').
pub async fn break_glass_list(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<PendingQuery>,
) -> ApiResult<Json> {
    let pending = q.pending.unwrap_or(false);
    let t = c.user.territory.clone();
    let rows = st
        .store
        .call(move |db| db.break_glass_list(&t, pending))
        .await?;
    ok(json!({ "uses": replies::<_, BreakGlassReply<'_>>(&rows) }))
}

pub async fn break_glass_review(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<i64>,
    Body(b): Body<ReviewBody>,
) -> ApiResult<StatusCode> {
    if b.note.trim().is_empty() || b.note.chars().count() > 1000 {
        return Err(ApiError::validation(
            "a review note of 1 to 1000 characters is required",
        ));
    }
    let (a, t) = (c.actor.clone(), c.user.territory.clone());
    st.store
        .call(move |db| db.break_glass_review(&a, &t, id, b.note.trim()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The daemon's latest HIPAA self-check (waits for the first one, run at start).
pub async fn compliance(State(st): State<ApiState>) -> ApiResult<Json> {
    let r = st
        .compliance
        .wait(std::time::Duration::from_secs(30))
        .await
        .ok_or_else(|| {
            ApiError::busy("the HIPAA self-check has not finished yet; retry shortly")
        })?;
    ok(serde_json::to_value(&*r).map_err(|_| ApiError::internal())?)
}
