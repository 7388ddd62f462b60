//! Enforcing the policy on every request: the bearer session is checked (idle and absolute
//! expiry), the `Territory-Id` header and the route's permission are checked against
//! [`policy`](super::policy), and every denial is audited. Also the session lifetimes that run
//! without a request: the sweeper task and the check live streams make.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

use super::error::{ApiError, ApiResult};
use super::policy::{self, Access, BREAK_GLASS_PATH, BREAK_GLASS_PERMS, Perm};
use super::session::Invalid;
use super::state::ApiState;
use crate::crypto::password;
use crate::model::{Actor, is_valid_ident};
use crate::storage::{Grant, GrantCheck, SessionRow, StoreError, UserInfo};

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
    pub break_glass: Option<Grant>,
    /// The request changes something (any method but GET and HEAD): a read-only access grant
    /// does not cover it.
    pub writes: bool,
}

impl Caller {
    /// Whether a break-glass grant covers the territory of this request.
    pub fn uses_grant(&self) -> bool {
        self.break_glass
            .as_ref()
            .is_some_and(|g| g.territory == self.territory)
    }

    /// When this caller's access to `p` ends because it rests on a break-glass grant (another
    /// territory, or a role that needs the grant), or `None` when it does not.
    pub fn grant_bound(&self, p: Perm) -> Option<i64> {
        let own = self.territory == self.user.territory && policy::allows(self.user.role, false, p);
        (!own && self.uses_grant())
            .then(|| self.break_glass.as_ref().map(|g| g.until_ms))
            .flatten()
    }

    /// Whether the caller's role (or active break-glass grant) holds `p`.
    pub fn can(&self, p: Perm) -> bool {
        policy::allows(self.user.role, self.uses_grant(), p)
    }
}

/// The session sweeper: ends idle and expired sessions (audited), persists last-seen times and
/// audits expired access grants, once per `every`, and once more at shutdown.
pub struct SessionSweeper {
    pub st: ApiState,
    pub every: Duration,
}

impl SessionSweeper {
    /// Runs until `shutdown` changes; a store failure ends the task (and with it the daemon).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = tick.tick() => false,
                _ = shutdown.changed() => true,
            };
            sweep_once(&self.st).await?;
            if stop {
                return Ok(());
            }
        }
    }
}

/// One sweep (also used by tests with a manual clock): ends idle and expired sessions,
/// persists last-seen times and audits access grants whose expiry passed.
pub async fn sweep_once(st: &ApiState) -> Result<usize, StoreError> {
    let now = st.clock.now_ms();
    let (ended, seen) = st.sessions.sweep(now, st.idle_ms());
    let n = ended.len();
    st.store
        .call(move |db| {
            if !ended.is_empty() || !seen.is_empty() {
                let e: Vec<(SessionRow, &str)> = ended;
                db.end_sessions(&e, now)?;
                db.touch_sessions(&seen)?;
            }
            db.expire_grants(now).map(|_| ())
        })
        .await?;
    Ok(n)
}

/// Where a request comes from, for its audit entries: address, session id (a prefix of the
/// token's hash), the tablet's `User-Agent` (control characters dropped, 160 characters at
/// most) and the break-glass grant it rests on.
pub fn access_context(
    source: std::net::IpAddr,
    headers: &HeaderMap,
    token_hash: &[u8; 32],
    break_glass: Option<i64>,
) -> std::sync::Arc<crate::model::AccessContext> {
    let agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.chars()
                .filter(|c| !c.is_control())
                .take(160)
                .collect::<String>()
        })
        .filter(|v| !v.is_empty());
    std::sync::Arc::new(crate::model::AccessContext {
        address: source.to_string(),
        session: hex::encode(&token_hash[..8]),
        agent,
        break_glass,
    })
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
    // HEAD is served by the GET route of a path.
    let method = if req.method() == Method::HEAD {
        "GET"
    } else {
        req.method().as_str()
    };
    let access = policy::route_access(method, &path);
    if access.is_none() {
        let allowed = policy::methods_of(&path);
        if !allowed.is_empty() {
            return method_not_allowed(&allowed);
        }
    }
    let source = super::wire::Source::of(req.extensions()).0;
    match guard_inner(
        &st,
        req.method().clone(),
        &path,
        access,
        req.headers(),
        source,
    )
    .await
    {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// 405 with the `Allow` header, for a known path asked with a method it does not serve.
fn method_not_allowed(allowed: &[&str]) -> Response {
    let allow = allowed.join(", ");
    let mut r = ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        super::error::Code::ValidationError,
        format!("this path answers {allow}"),
    )
    .into_response();
    if let Ok(v) = allow.parse() {
        r.headers_mut().insert(axum::http::header::ALLOW, v);
    }
    r
}

async fn guard_inner(
    st: &ApiState,
    method: Method,
    path: &str,
    access: Option<Access>,
    headers: &HeaderMap,
    source: std::net::IpAddr,
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
    if revoked(st, &hash).await? {
        return Err(ApiError::unauthorized(
            "session ended by an administrator; log in again",
        ));
    }
    let header_territory = headers
        .get("territory-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(territory) = header_territory else {
        return Err(ApiError::bad_request("missing Territory-Id header"));
    };
    let via = access_context(
        source,
        headers,
        &hash,
        row.break_glass.as_ref().map(|g| g.id),
    );
    let mut caller = Caller {
        actor: Actor {
            id: user.id.clone(),
            role: if row.break_glass.is_some() {
                format!("{}+break-glass", user.role)
            } else {
                user.role.to_string()
            },
            via: Some(via),
        },
        territory: territory.clone(),
        token_hash: hash,
        break_glass: row.break_glass,
        user,
        writes: !matches!(method, Method::GET | Method::HEAD),
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
        // A grant opens the one territory it was asked for, not every other one.
        let granted = caller
            .break_glass
            .as_ref()
            .is_some_and(|g| g.territory == territory);
        let may = granted || path == BREAK_GLASS_PATH;
        if !may || !is_valid_ident(&territory) {
            return deny(&caller, "territory", ApiError::territory()).await;
        }
    }
    if let Access::Perm(p) = access {
        // Across territories (break-glass) only reading is granted.
        let foreign = territory != caller.user.territory && path != BREAK_GLASS_PATH;
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

/// Checks that a patient or case belongs to the caller's territory, or that an access grant
/// opens it to the caller (`storage::grants`: read, or read/write for a writing request; the
/// use is audited). Denials are audited.
pub async fn in_territory(
    st: &ApiState,
    caller: &Caller,
    kind: &'static str,
    id: &str,
) -> ApiResult<()> {
    check_territory(st, caller, kind, id, true).await
}

/// [`in_territory`] without grants: for linking a record into the caller's territory (a new
/// case for a patient), which a grant never allows.
pub async fn in_own_territory(
    st: &ApiState,
    caller: &Caller,
    kind: &'static str,
    id: &str,
) -> ApiResult<()> {
    check_territory(st, caller, kind, id, false).await
}

async fn check_territory(
    st: &ApiState,
    caller: &Caller,
    kind: &'static str,
    id: &str,
    grants: bool,
) -> ApiResult<()> {
    let i = id.to_string();
    let t = st.store.read(move |db| db.territory_of(kind, &i)).await?;
    let owner = match t {
        None => return Err(ApiError::not_found(kind, id)),
        Some(t) if t == caller.territory => return Ok(()),
        Some(owner) => owner,
    };
    let mut why = format!("territory (caller's: {})", caller.territory);
    if grants && !caller.uses_grant() {
        let (actor, i, writes, now) = (
            caller.actor.clone(),
            id.to_string(),
            caller.writes,
            st.clock.now_ms(),
        );
        match st
            .store
            .call(move |db| db.use_grant(&actor, kind, &i, writes, now))
            .await?
        {
            GrantCheck::Used(_) => return Ok(()),
            GrantCheck::ReadOnly(g) => why = format!("access grant {g} is read-only"),
            GrantCheck::None => {}
        }
    }
    // Recorded in the territory that owns the record, so its privacy officer sees who tried
    // to reach it (the reason names the caller's own territory).
    let (actor, res) = (caller.actor.clone(), format!("{kind}/{id}"));
    st.store
        .call(move |db| db.audit_denied(&actor, "access.denied", &res, &owner, &why))
        .await?;
    st.metrics.denials.fetch_add(1, Ordering::Relaxed);
    Err(ApiError::territory())
}

/// Ends a session whose idle time or lifetime ran out (audited), for callers that hold a token
/// without making requests (live streams). Returns false when the session is still valid.
pub async fn end_if_expired(st: &ApiState, hash: &[u8; 32]) -> bool {
    let now = st.clock.now_ms();
    match st.sessions.check(hash, now, st.idle_ms(), false) {
        Ok(_) => match revoked(st, hash).await {
            Ok(r) => r,
            Err(e) => {
                // A store that cannot answer now (busy, shutting down) ends nobody's session:
                // the next request or tick asks again (a crew is never locked out by load).
                tracing::warn!(code = e.code.as_str(), "session check deferred");
                false
            }
        },
        Err(Invalid::Unknown) => {
            tracing::info!("live stream of an ended session closes");
            true
        }
        Err(Invalid::Idle(row)) | Err(Invalid::Expired(row)) => {
            let reason = if now < row.expires_at_ms {
                "idle"
            } else {
                "expired"
            };
            tracing::info!(
                reason,
                h = hash[0],
                idle_for_ms = now - row.last_seen_ms,
                "live stream's session ended"
            );
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

/// True when a session valid in memory was ended in the database (by the CLI, or the user was
/// disabled there); it is then dropped from memory too.
async fn revoked(st: &ApiState, hash: &[u8; 32]) -> ApiResult<bool> {
    let h = *hash;
    if st.store.read(move |db| db.session_live(&h)).await? {
        return Ok(false);
    }
    st.sessions.remove(hash);
    tracing::info!("session revoked outside the API (CLI); ended");
    Ok(true)
}

/// For tests: whether a session with this token still exists server-side.
pub fn session_exists(st: &ApiState, token: &str) -> bool {
    st.sessions.contains_token(token)
}
