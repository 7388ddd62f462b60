//! Supervisor review: the audit trail, break-glass uses and the HIPAA self-check.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::Caller;
use crate::api::state::ApiState;
use crate::api::wire::{
    AuditQuery, AuditReply, Body, BreakGlassReply, Json, PendingQuery, ReviewBody, ok, replies,
};

pub async fn audit(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json> {
    let (a, t) = (c.actor.clone(), c.user.territory.clone());
    let limit = q.limit.unwrap_or(100).clamp(1, 500);
    let rows = st
        .store
        .call(move |db| db.audit_entries(&a, &t, limit, q.before))
        .await?;
    ok(json!({ "entries": replies::<_, AuditReply<'_>>(&rows) }))
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
