//! `/api/v1/auth/*`: login (with the failed-login back-off), logout, who am I, break-glass.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::error::{ApiError, ApiResult, Code};
use crate::api::guard::Caller;
use crate::api::policy;
use crate::api::state::ApiState;
use crate::api::throttle::{Attempt, Wait};
use crate::api::wire::{Body, BreakGlassBody, LoginBody, Source, UserReply};
use crate::crypto::password;
use crate::model::{Actor, is_valid_ident};
use crate::storage::SessionRow;

/// `POST /api/v1/auth/login`. Throttled per (account, source), account and source before the
/// secret is checked (see [`throttle`](crate::api::throttle)); a throttled attempt is counted
/// on `/metrics`, not audited (the failures that armed the throttle were).
pub async fn login(
    State(st): State<ApiState>,
    Source(source): Source,
    headers: axum::http::HeaderMap,
    Body(b): Body<LoginBody>,
) -> ApiResult<Response> {
    if !is_valid_ident(&b.user_id) || b.secret.len() > password::MAX_SECRET_LEN * 4 {
        return Err(ApiError::validation(
            "user_id must match [A-Za-z0-9._-]{1,64}",
        ));
    }
    let now = st.clock.now_ms();
    let attempt = begin_attempt(&st, &b.user_id, source, now)?;
    let id = b.user_id.clone();
    let user = st.store.call(move |db| db.login_user(&id)).await?;
    let cfg = &st.cfg.api;
    let secret = b.secret;
    let phc = user.as_ref().map(|u| u.secret_hash.clone());
    let ok = tokio::task::spawn_blocking(move || match phc {
        Some(h) => password::verify_secret(&h, &secret),
        None => {
            password::verify_dummy(&secret);
            false
        }
    })
    .await
    .map_err(|_| ApiError::internal())?;
    let valid = match &user {
        Some(u) if ok && !u.info.disabled => Some(u),
        _ => None,
    };
    let Some(u) = valid else {
        let reason = match &user {
            None => "unknown_user",
            Some(u) if u.info.disabled => "disabled",
            Some(_) => "wrong_secret",
        };
        attempt.failed(now);
        let id = b.user_id.clone();
        st.store
            .call(move |db| db.login_failed(&id, reason, None, now))
            .await?;
        st.metrics.login_failures.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unauthorized("unknown user or wrong PIN/password"));
    };
    attempt.succeeded(now);
    let (token, hash) = password::new_token().map_err(|_| ApiError::internal())?;
    let row = SessionRow {
        token_hash: hash,
        user_id: u.info.id.clone(),
        created_at_ms: now,
        last_seen_ms: now,
        expires_at_ms: now + cfg.session_lifetime_secs as i64 * 1000,
        break_glass: None,
    };
    let actor = Actor {
        id: u.info.id.clone(),
        role: u.info.role.to_string(),
        via: Some(crate::api::guard::access_context(
            source, &headers, &hash, None,
        )),
    };
    let (r, t) = (row.clone(), u.info.territory.clone());
    st.store
        .call(move |db| db.login_succeeded(&actor, &t, &r))
        .await?;
    st.sessions.insert(row.clone(), u.info.clone());
    st.metrics.logins.fetch_add(1, Ordering::Relaxed);
    Ok(axum::Json(json!({
        "token": token,
        "expires_at_ms": row.expires_at_ms,
        "idle_timeout_secs": cfg.idle_timeout_secs,
        "user": UserReply::from(&u.info),
    }))
    .into_response())
}

/// `POST /api/v1/auth/logout`.
pub async fn logout(
    State(st): State<ApiState>,
    axum::Extension(c): axum::Extension<Caller>,
) -> ApiResult<StatusCode> {
    if let Some(row) = st.sessions.remove(&c.token_hash) {
        let now = st.clock.now_ms();
        st.store
            .call(move |db| db.end_sessions(&[(row, "logout")], now))
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/auth/me`.
pub async fn me(
    State(st): State<ApiState>,
    axum::Extension(c): axum::Extension<Caller>,
) -> axum::Json<serde_json::Value> {
    let perms = policy::permission_names(c.user.role, c.uses_grant());
    axum::Json(json!({
        "user": UserReply::from(&c.user),
        "territory": c.territory,
        "permissions": perms,
        "break_glass_until_ms": c.break_glass.as_ref().map(|g| g.until_ms),
        "idle_timeout_secs": st.cfg.api.idle_timeout_secs,
    }))
}

/// `POST /api/v1/auth/break-glass`: re-authenticates, then grants clinical read access (also
/// across territories, named by `Territory-Id`) for `api.break_glass_minutes`.
pub async fn break_glass(
    State(st): State<ApiState>,
    Source(source): Source,
    axum::Extension(c): axum::Extension<Caller>,
    Body(b): Body<BreakGlassBody>,
) -> ApiResult<Response> {
    // As documented: 10 to 500 characters, no control characters, not only white space.
    let n = b.reason.chars().count();
    if !(10..=500).contains(&n)
        || b.reason.chars().any(char::is_control)
        || b.reason.trim().is_empty()
    {
        return Err(ApiError::validation(
            "a break-glass reason of 10 to 500 characters (no control characters) is required",
        ));
    }
    let reason = b.reason.trim().to_string();
    let now = st.clock.now_ms();
    let attempt = begin_attempt(&st, &c.user.id, source, now)?;
    let id = c.user.id.clone();
    let u = st
        .store
        .call(move |db| db.login_user(&id))
        .await?
        .ok_or_else(|| ApiError::unauthorized("account gone"))?;
    let disabled = u.info.disabled;
    let (phc, secret) = (u.secret_hash, b.secret);
    let ok = tokio::task::spawn_blocking(move || password::verify_secret(&phc, &secret))
        .await
        .map_err(|_| ApiError::internal())?;
    if !ok || disabled {
        attempt.failed(now);
        let id = c.user.id.clone();
        let reason = if disabled {
            "disabled"
        } else {
            "break_glass_reauth"
        };
        st.store
            .call(move |db| db.login_failed(&id, reason, None, now))
            .await?;
        st.metrics.login_failures.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unauthorized("re-authentication failed"));
    }
    attempt.succeeded(now);
    let until = now + st.cfg.api.break_glass_minutes as i64 * 60_000;
    let (actor, hash, territory) = (
        Actor {
            id: c.user.id.clone(),
            role: c.user.role.to_string(),
            via: c.actor.via.clone(),
        },
        c.token_hash,
        c.territory.clone(),
    );
    let id = st
        .store
        .call(move |db| db.break_glass_start(&actor, &hash, &territory, &reason, now, until))
        .await?;
    st.sessions.set_break_glass(
        &c.token_hash,
        crate::storage::Grant {
            id,
            until_ms: until,
            territory: c.territory.clone(),
        },
    );
    st.metrics.break_glass.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(user = %c.user.id, break_glass = id, "break-glass access granted; queued for supervisor review");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "break_glass_id": id, "until_ms": until, "territory": c.territory })),
    )
        .into_response())
}

/// Reserves a secret-guess attempt or answers 429 with the wait.
fn begin_attempt(
    st: &ApiState,
    account: &str,
    source: std::net::IpAddr,
    now: i64,
) -> ApiResult<Attempt> {
    st.throttle
        .begin(account, source, now)
        .map_err(|Wait(wait)| {
            st.metrics.login_throttled.fetch_add(1, Ordering::Relaxed);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::RateLimited,
                format!("too many failed attempts; try again in {wait} s"),
            )
            .details(json!({ "retry_after_secs": wait }))
            .retry_after(wait)
        })
}
