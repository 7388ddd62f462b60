//! `/api/v1/users`: personal accounts (admin; no PHI).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::Caller;
use crate::api::state::ApiState;
use crate::api::wire::{Body, Json, UserCreate, UserReply, created, ok, replies};
use crate::model::validate_user;

pub async fn users(State(st): State<ApiState>) -> ApiResult<Json> {
    let u = st.store.call(|db| db.list_users()).await?;
    ok(json!({ "users": replies::<_, UserReply<'_>>(&u) }))
}

pub async fn add_user(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(b): Body<UserCreate>,
) -> ApiResult<Response> {
    let territory = b.territory.unwrap_or_else(|| c.territory.clone());
    let role =
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
        .call(move |db| db.add_user(&a, &id, &b.display_name, role, &territory, &phc))
        .await?;
    created(json!({ "id": b.id }))
}

pub async fn disable_user(
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
    st.sessions.remove_user(&id);
    Ok(StatusCode::NO_CONTENT)
}
