//! Authentication and authorization: personal accounts, server-side sessions with idle and
//! absolute expiry, failed-login back-off, roles with default deny, territory isolation and
//! break-glass.
//!
//! Sessions live in memory (authoritative while the daemon runs) and in the `sessions` table
//! (so a restart does not log the crew out); last-seen times are persisted in batches by the
//! session sweeper, so after a restart a session can only look idler than it was, never fresher.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::routes::{Access, route_access};
use super::{ApiState, Body};
use crate::crypto::password;
use crate::model::{Actor, is_valid_ident};
use crate::storage::{SessionRow, UserInfo};

/// Time source of the API, injectable for session tests.
pub trait Clock: Send + Sync {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub struct SystemClock;
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::model::now_ms()
    }
}

/// A clock that moves only when told (tests).
#[derive(Default)]
pub struct ManualClock(pub AtomicI64);
impl ManualClock {
    pub fn at(ms: i64) -> Self {
        ManualClock(AtomicI64::new(ms))
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}
impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Roles (SYSTEM.md §3).
pub const ROLES: [&str; 5] = ["paramedic", "emt", "staff", "supervisor", "admin"];

/// Permissions a route can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// Read demographics (patients, names in the case list).
    PatientRead,
    /// Register and edit patients.
    PatientWrite,
    /// See the case list.
    CaseList,
    /// Read the clinical record (vitals, triage, medications, alarms, handoff).
    ClinicalRead,
    /// Open cases, bind devices, enter vitals, close cases.
    ClinicalWrite,
    /// Medication orders.
    Medication,
    /// Bound/unbound field devices.
    DeviceRead,
    /// Sync and outbox state (no PHI).
    SyncRead,
    /// Read the audit trail.
    AuditReview,
    /// Review break-glass uses.
    BreakGlassReview,
    /// Ask for break-glass access.
    BreakGlass,
    /// Manage accounts (no PHI).
    Admin,
}

/// Permissions of a role. Unknown roles have none (default deny).
pub fn role_perms(role: &str) -> &'static [Perm] {
    use Perm::*;
    match role {
        "paramedic" => &[
            PatientRead,
            PatientWrite,
            CaseList,
            ClinicalRead,
            ClinicalWrite,
            Medication,
            DeviceRead,
            SyncRead,
            BreakGlass,
        ],
        "emt" => &[
            PatientRead,
            PatientWrite,
            CaseList,
            ClinicalRead,
            ClinicalWrite,
            DeviceRead,
            SyncRead,
            BreakGlass,
        ],
        "staff" => &[PatientRead, PatientWrite, CaseList, BreakGlass],
        "supervisor" => &[
            PatientRead,
            CaseList,
            ClinicalRead,
            SyncRead,
            AuditReview,
            BreakGlassReview,
            BreakGlass,
        ],
        "admin" => &[Admin, DeviceRead, SyncRead],
        _ => &[],
    }
}

/// What an active break-glass grant adds: reading (never writing) clinical data and records of
/// another territory.
pub const BREAK_GLASS_PERMS: [Perm; 3] = [Perm::PatientRead, Perm::CaseList, Perm::ClinicalRead];

/// Who is calling, attached to authenticated requests.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserInfo,
    /// The actor written into audit entries; its role is suffixed `+break-glass` while a grant
    /// is used.
    pub actor: Actor,
    /// Territory the request works in (the user's own, or another one under break-glass).
    pub territory: String,
    pub token_hash: [u8; 32],
    pub break_glass: Option<(i64, i64)>,
}

impl Caller {
    pub fn can(&self, p: Perm) -> bool {
        role_perms(&self.user.role).contains(&p)
            || (self.break_glass.is_some() && BREAK_GLASS_PERMS.contains(&p))
    }
}

#[derive(Debug, Clone)]
struct Session {
    row: SessionRow,
    user: UserInfo,
    /// Last-seen time not yet persisted.
    dirty: bool,
}

/// Why a token is not (or no longer) valid.
enum Invalid {
    Unknown,
    Idle(SessionRow),
    Expired(SessionRow),
}

/// The in-memory session table.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    pub fn restore(rows: Vec<(SessionRow, UserInfo)>) -> Self {
        let map = rows
            .into_iter()
            .map(|(row, user)| {
                (
                    row.token_hash,
                    Session {
                        row,
                        user,
                        dirty: false,
                    },
                )
            })
            .collect();
        Sessions {
            map: Mutex::new(map),
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().expect("sessions lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, row: SessionRow, user: UserInfo) {
        self.map.lock().expect("sessions lock").insert(
            row.token_hash,
            Session {
                row,
                user,
                dirty: false,
            },
        );
    }

    /// Validates a token at `now`; `touch` records activity (idle timer restarts).
    fn check(
        &self,
        hash: &[u8; 32],
        now: i64,
        idle_ms: i64,
        touch: bool,
    ) -> Result<(SessionRow, UserInfo), Invalid> {
        let mut map = self.map.lock().expect("sessions lock");
        let Some(s) = map.get_mut(hash) else {
            return Err(Invalid::Unknown);
        };
        if now >= s.row.expires_at_ms {
            let s = map.remove(hash).expect("present");
            return Err(Invalid::Expired(s.row));
        }
        if now - s.row.last_seen_ms > idle_ms {
            let s = map.remove(hash).expect("present");
            return Err(Invalid::Idle(s.row));
        }
        if touch && now > s.row.last_seen_ms {
            s.row.last_seen_ms = now;
            s.dirty = true;
        }
        if s.row.break_glass.is_some_and(|(_, until)| now >= until) {
            s.row.break_glass = None;
        }
        Ok((s.row.clone(), s.user.clone()))
    }

    fn remove(&self, hash: &[u8; 32]) -> Option<SessionRow> {
        self.map
            .lock()
            .expect("sessions lock")
            .remove(hash)
            .map(|s| s.row)
    }

    fn remove_user(&self, user: &str) {
        self.map
            .lock()
            .expect("sessions lock")
            .retain(|_, s| s.user.id != user);
    }

    fn set_break_glass(&self, hash: &[u8; 32], grant: (i64, i64)) {
        if let Some(s) = self.map.lock().expect("sessions lock").get_mut(hash) {
            s.row.break_glass = Some(grant);
        }
    }

    /// Removes expired sessions and returns them, plus the last-seen times to persist.
    fn sweep(
        &self,
        now: i64,
        idle_ms: i64,
    ) -> (Vec<(SessionRow, &'static str)>, Vec<([u8; 32], i64)>) {
        let mut map = self.map.lock().expect("sessions lock");
        let mut ended = Vec::new();
        map.retain(|_, s| {
            let why = if now >= s.row.expires_at_ms {
                Some("expired")
            } else if now - s.row.last_seen_ms > idle_ms {
                Some("idle")
            } else {
                None
            };
            match why {
                Some(w) => {
                    ended.push((s.row.clone(), w));
                    false
                }
                None => true,
            }
        });
        let seen = map
            .values_mut()
            .filter(|s| s.dirty)
            .map(|s| {
                s.dirty = false;
                (s.row.token_hash, s.row.last_seen_ms)
            })
            .collect();
        (ended, seen)
    }
}

/// Ends idle and expired sessions and persists last-seen times, once per `every`.
pub async fn sweeper(
    st: ApiState,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        sweep_once(&st).await.map_err(|e| e.to_string())?;
        if stop {
            return Ok(());
        }
    }
}

/// One sweep (also used by tests with a manual clock).
pub async fn sweep_once(st: &ApiState) -> Result<usize, crate::storage::StoreError> {
    let now = st.clock.now_ms();
    let (ended, seen) = st.sessions.sweep(now, st.idle_ms());
    let n = ended.len();
    if !ended.is_empty() || !seen.is_empty() {
        st.store
            .call(move |db| {
                let e: Vec<(SessionRow, &str)> = ended;
                db.end_sessions(&e, now)?;
                db.touch_sessions(&seen)
            })
            .await?;
    }
    Ok(n)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let t = v.strip_prefix("Bearer ")?.trim();
    (!t.is_empty() && t.len() <= 128).then_some(t)
}

/// Authenticates and authorizes every request under `/api/v1` (except the public routes), by
/// the route table: unknown routes and unlisted roles are denied.
pub async fn guard(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(path) = path else {
        // No route matched: let the router answer 404/405.
        return next.run(req).await;
    };
    let access = route_access(req.method(), &path);
    match guard_inner(&st, req.method().clone(), &path, access, req.headers()).await {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

async fn guard_inner(
    st: &ApiState,
    method: Method,
    path: &str,
    access: Option<Access>,
    headers: &HeaderMap,
) -> ApiResult<Option<Caller>> {
    let access = match access {
        Some(Access::Public) => return Ok(None),
        Some(a) => a,
        None => {
            tracing::warn!(%method, path, "route missing from the route table: denied");
            return Err(ApiError::forbidden("this route is not open to any role"));
        }
    };
    let token = bearer(headers)
        .ok_or_else(|| ApiError::unauthorized("missing bearer token; log in first"))?;
    let hash = password::token_hash(token);
    let now = st.clock.now_ms();
    let (row, user) = match st.sessions.check(&hash, now, st.idle_ms(), true) {
        Ok(v) => v,
        Err(Invalid::Unknown) => {
            return Err(ApiError::unauthorized(
                "session unknown or ended; log in again",
            ));
        }
        Err(Invalid::Idle(row)) | Err(Invalid::Expired(row)) => {
            let idle = now < row.expires_at_ms;
            let r = row.clone();
            let reason = if idle { "idle" } else { "expired" };
            st.store
                .call(move |db| db.end_sessions(&[(r, reason)], now))
                .await?;
            st.metrics.logoffs.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::unauthorized(if idle {
                "logged off after inactivity; log in again"
            } else {
                "session lifetime reached; log in again"
            })
            .details(json!({ "reason": reason })));
        }
    };
    let header_territory = headers
        .get("territory-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(territory) = header_territory else {
        return Err(ApiError::bad_request("missing Territory-Id header"));
    };
    let mut caller = Caller {
        actor: Actor {
            id: user.id.clone(),
            role: if row.break_glass.is_some() {
                format!("{}+break-glass", user.role)
            } else {
                user.role.clone()
            },
        },
        territory: territory.clone(),
        token_hash: hash,
        break_glass: row.break_glass,
        user,
    };
    let deny = |caller: &Caller, why: &'static str, err: ApiError| {
        let (actor, t, action) = (
            caller.actor.clone(),
            caller.user.territory.clone(),
            format!("{method} {path}"),
        );
        let st = st.clone();
        async move {
            st.store
                .call(move |db| db.audit_denied(&actor, "access.denied", &action, &t, why))
                .await?;
            st.metrics.denials.fetch_add(1, Ordering::Relaxed);
            Err::<Option<Caller>, ApiError>(err)
        }
    };
    if territory != caller.user.territory {
        // Another territory only under break-glass (or to ask for it).
        let may = caller.break_glass.is_some() || path == super::routes::BREAK_GLASS_PATH;
        if !may || !is_valid_ident(&territory) {
            return deny(&caller, "territory", ApiError::territory()).await;
        }
    }
    if let Access::Perm(p) = access {
        // Across territories (break-glass) only reading is granted.
        let foreign = territory != caller.user.territory && path != super::routes::BREAK_GLASS_PATH;
        if foreign && !BREAK_GLASS_PERMS.contains(&p) {
            return deny(
                &caller,
                "role",
                ApiError::forbidden("break-glass grants read access only in another territory"),
            )
            .await;
        }
        if !caller.can(p) {
            return deny(
                &caller,
                "role",
                ApiError::forbidden(format!(
                    "role `{}` may not use {method} {path}",
                    caller.user.role
                )),
            )
            .await;
        }
    }
    caller.territory = territory;
    Ok(Some(caller))
}

/// Checks that a patient or case belongs to the caller's territory (denials audited).
pub async fn in_territory(
    st: &ApiState,
    caller: &Caller,
    kind: &'static str,
    id: &str,
) -> ApiResult<()> {
    let i = id.to_string();
    let t = st.store.call(move |db| db.territory_of(kind, &i)).await?;
    match t {
        None => Err(ApiError::not_found(kind, id)),
        Some(t) if t == caller.territory => Ok(()),
        Some(_) => {
            let (actor, territory, res) = (
                caller.actor.clone(),
                caller.territory.clone(),
                format!("{kind}/{id}"),
            );
            st.store
                .call(move |db| {
                    db.audit_denied(&actor, "access.denied", &res, &territory, "territory")
                })
                .await?;
            st.metrics.denials.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::territory())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub user_id: String,
    pub secret: String,
}

/// `POST /api/v1/auth/login`.
pub async fn login(State(st): State<ApiState>, Body(b): Body<LoginBody>) -> ApiResult<Response> {
    if !is_valid_ident(&b.user_id) || b.secret.len() > password::MAX_SECRET_LEN * 4 {
        return Err(ApiError::validation(
            "user_id must match [A-Za-z0-9._-]{1,64}",
        ));
    }
    let now = st.clock.now_ms();
    let id = b.user_id.clone();
    let user = st.store.call(move |db| db.login_user(&id)).await?;
    let cfg = &st.cfg.api;
    if let Some(u) = &user {
        if let Some(until) = u.backoff_until_ms.filter(|t| *t > now) {
            let wait = ((until - now) as u64).div_ceil(1000);
            let id = b.user_id.clone();
            st.store
                .call(move |db| db.login_failed(&id, "backoff", None, now))
                .await?;
            st.metrics.login_failures.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                Code::RateLimited,
                format!("too many failed logins; try again in {wait} s"),
            )
            .details(json!({ "retry_after_secs": wait }))
            .retry_after(wait));
        }
    }
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
        Some(u) if ok && !u.info.disabled && role_perms(&u.info.role) != [] => Some(u),
        _ => None,
    };
    let Some(u) = valid else {
        let reason = match &user {
            None => "unknown_user",
            Some(u) if u.info.disabled => "disabled",
            Some(_) => "wrong_secret",
        };
        let backoff = user.as_ref().and_then(|u| {
            let n = u.failed_count + 1;
            (n >= cfg.login_backoff_after).then(|| {
                let exp = (n - cfg.login_backoff_after).min(20);
                let secs = (1u64 << exp).min(cfg.login_backoff_max_secs);
                now + secs as i64 * 1000
            })
        });
        let id = b.user_id.clone();
        st.store
            .call(move |db| db.login_failed(&id, reason, backoff, now))
            .await?;
        st.metrics.login_failures.fetch_add(1, Ordering::Relaxed);
        return Err(ApiError::unauthorized("unknown user or wrong PIN/password"));
    };
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
        role: u.info.role.clone(),
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
        "user": u.info,
    }))
    .into_response())
}

use super::error::Code;

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
    let mut perms: Vec<String> = role_perms(&c.user.role)
        .iter()
        .map(|p| format!("{p:?}"))
        .collect();
    if c.break_glass.is_some() {
        perms.extend(BREAK_GLASS_PERMS.iter().map(|p| format!("{p:?}")));
        perms.sort();
        perms.dedup();
    }
    axum::Json(json!({
        "user": c.user,
        "territory": c.territory,
        "permissions": perms,
        "break_glass_until_ms": c.break_glass.map(|(_, u)| u),
        "idle_timeout_secs": st.cfg.api.idle_timeout_secs,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassBody {
    pub reason: String,
    /// Re-authentication: the caller's PIN/password.
    pub secret: String,
}

/// `POST /api/v1/auth/break-glass`: re-authenticates, then grants clinical read access (also
/// across territories, named by `Territory-Id`) for `api.break_glass_minutes`.
pub async fn break_glass(
    State(st): State<ApiState>,
    axum::Extension(c): axum::Extension<Caller>,
    Body(b): Body<BreakGlassBody>,
) -> ApiResult<Response> {
    let reason = b.reason.trim().to_string();
    if reason.chars().count() < 10 || reason.len() > 500 {
        return Err(ApiError::validation(
            "a break-glass reason of 10 to 500 characters is required",
        ));
    }
    let id = c.user.id.clone();
    let u = st
        .store
        .call(move |db| db.login_user(&id))
        .await?
        .ok_or_else(|| ApiError::unauthorized("account gone"))?;
    let (phc, secret) = (u.secret_hash, b.secret);
    let ok = tokio::task::spawn_blocking(move || password::verify_secret(&phc, &secret))
        .await
        .map_err(|_| ApiError::internal())?;
    let now = st.clock.now_ms();
    if !ok {
        let id = c.user.id.clone();
        st.store
            .call(move |db| db.login_failed(&id, "break_glass_reauth", None, now))
            .await?;
        return Err(ApiError::unauthorized("re-authentication failed"));
    }
    let until = now + st.cfg.api.break_glass_minutes as i64 * 60_000;
    let (actor, hash, territory) = (
        Actor {
            id: c.user.id.clone(),
            role: c.user.role.clone(),
        },
        c.token_hash,
        c.territory.clone(),
    );
    let id = st
        .store
        .call(move |db| db.break_glass_start(&actor, &hash, &territory, &reason, now, until))
        .await?;
    st.sessions.set_break_glass(&c.token_hash, (id, until));
    st.metrics.break_glass.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(user = %c.user.id, break_glass = id, "break-glass access granted; queued for supervisor review");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "break_glass_id": id, "until_ms": until, "territory": c.territory })),
    )
        .into_response())
}

/// Ends a session whose idle time or lifetime ran out (audited), for callers that hold a token
/// without making requests (live streams). Returns false when the session is still valid.
pub async fn end_if_expired(st: &ApiState, hash: &[u8; 32]) -> bool {
    let now = st.clock.now_ms();
    match st.sessions.check(hash, now, st.idle_ms(), false) {
        Ok(_) => false,
        Err(Invalid::Unknown) => true,
        Err(Invalid::Idle(row)) | Err(Invalid::Expired(row)) => {
            let reason = if now < row.expires_at_ms {
                "idle"
            } else {
                "expired"
            };
            if let Err(e) = st
                .store
                .call(move |db| db.end_sessions(&[(row, reason)], now))
                .await
            {
                tracing::warn!(error = %e, "cannot record the end of a session");
            }
            st.metrics.logoffs.fetch_add(1, Ordering::Relaxed);
            true
        }
    }
}

/// Drops the in-memory sessions of a user (disabled by an admin).
pub fn end_user_sessions(st: &ApiState, user: &str) {
    st.sessions.remove_user(user);
}

/// For tests and the sweeper: whether a session with this token still exists server-side.
pub fn session_exists(st: &ApiState, token: &str) -> bool {
    st.sessions
        .map
        .lock()
        .expect("sessions lock")
        .contains_key(&password::token_hash(token))
}

pub type SharedClock = Arc<dyn Clock>;
