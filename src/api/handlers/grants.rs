//! Access grants (`storage::grants`): a supervisor opens one case or patient of their territory
//! to a named user of another territory, lists grants with their reasons and uses, revokes them.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::Caller;
use crate::api::state::ApiState;
use crate::api::wire::{
    ActiveQuery, Body, GrantBody, GrantReply, Json, check_id, created, ok, replies,
};
use crate::storage::NewGrant;

/// `GET /api/v1/grants[?active=true]`.
pub async fn list(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<ActiveQuery>,
) -> ApiResult<Json> {
    let t = c.user.territory.clone();
    let at = q.active.unwrap_or(false).then(|| st.clock.now_ms());
    let rows = st.store.call(move |db| db.list_grants(&t, at)).await?;
    ok(json!({ "grants": replies::<_, GrantReply<'_>>(&rows) }))
}

/// `POST /api/v1/grants`.
pub async fn create(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(b): Body<GrantBody>,
) -> ApiResult<Response> {
    let (kind, resource) = match (&b.case_id, &b.patient_id) {
        (Some(id), None) => ("case", id.clone()),
        (None, Some(id)) => ("patient", id.clone()),
        _ => {
            return Err(ApiError::validation(
                "name exactly one of `case_id` and `patient_id`",
            ));
        }
    };
    check_id(&resource)?;
    if !matches!(b.access.as_str(), "read" | "read_write") {
        return Err(ApiError::validation("`access` is `read` or `read_write`"));
    }
    let reason = b.reason.trim().to_string();
    let n = reason.chars().count();
    if !(10..=500).contains(&n) || reason.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "a reason of 10 to 500 characters without control characters is required",
        ));
    }
    let max = st.cfg.api.grant_max_hours.saturating_mul(60);
    if b.minutes == 0 || b.minutes > max {
        return Err(ApiError::validation(format!(
            "`minutes` must be 1 to {max} (api.grant_max_hours)"
        ))
        .details(json!({ "max_minutes": max })));
    }
    let now = st.clock.now_ms();
    let expires = now + (b.minutes as i64) * 60_000;
    let (a, t) = (c.actor.clone(), c.user.territory.clone());
    let id = st
        .store
        .call(move |db| {
            let g = NewGrant {
                user_id: &b.user_id,
                kind,
                resource_id: &resource,
                access: &b.access,
                reason: &reason,
                expires_at_ms: expires,
            };
            db.grant_access(&a, &t, &g, now)
        })
        .await?;
    created(json!({ "id": id, "expires_at_ms": expires }))
}

/// `POST /api/v1/grants/{id}/revoke`.
pub async fn revoke(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    let (a, t, now) = (c.actor.clone(), c.user.territory.clone(), st.clock.now_ms());
    st.store
        .call(move |db| db.revoke_grant(&a, &t, id, now))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
