//! `/api/v1/users`: personal accounts (admin; no PHI), scoped to the caller's territory. An
//! account an admin creates with a role that reads PHI stays disabled until a supervisor of
//! its territory approves it: an admin alone cannot mint a working clinical login.

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

pub async fn users(State(st): State<ApiState>, Extension(c): Extension<Caller>) -> ApiResult<Json> {
    let t = c.user.territory.clone();
    let u = st.store.call(move |db| db.list_users(Some(&t))).await?;
    ok(json!({ "users": replies::<_, UserReply<'_>>(&u) }))
}

pub async fn add_user(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(b): Body<UserCreate>,
) -> ApiResult<Response> {
    let territory = b.territory.unwrap_or_else(|| c.user.territory.clone());
    let role =
        validate_user(&b.id, &b.display_name, &b.role, &territory).map_err(ApiError::validation)?;
    if territory != c.user.territory {
        return Err(ApiError::territory());
    }
    crate::crypto::password::check_policy(&b.secret)
        .map_err(|e| ApiError::validation(e.to_string()))?;
    let secret = b.secret;
    let phc = tokio::task::spawn_blocking(move || crate::crypto::password::hash_secret(&secret))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|_| ApiError::internal())?;
    let (a, id) = (c.actor.clone(), b.id.clone());
    // Any role that may read PHI needs a supervisor's approval.
    let pending = crate::api::policy::reads_phi(role);
    st.store
        .call(move |db| {
            if pending {
                db.add_user_pending(&a, (&id, &b.display_name, role, &territory), &phc)
            } else {
                db.add_user(&a, &id, &b.display_name, role, &territory, &phc)
            }
        })
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
    same_territory(&st, &c, &id).await?;
    let (a, u) = (c.actor.clone(), id.clone());
    st.store
        .call(move |db| db.set_user_disabled(&a, &u, true))
        .await?;
    st.sessions.remove_user(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/users/{id}/approve` (supervisor of the account's territory).
pub async fn approve_user(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (a, t) = (c.actor.clone(), c.user.territory.clone());
    st.store
        .call(move |db| db.approve_user(&a, &t, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accounts of other territories are not found (an admin manages its own territory).
async fn same_territory(st: &ApiState, c: &Caller, id: &str) -> ApiResult<()> {
    let i = id.to_string();
    let u = st.store.call(move |db| db.login_user(&i)).await?;
    match u {
        Some(u) if u.info.territory == c.user.territory => Ok(()),
        _ => Err(crate::storage::StoreError::NotFound {
            kind: "user",
            id: id.to_string(),
        }
        .into()),
    }
}
