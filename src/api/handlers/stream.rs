//! `GET /api/v1/cases/{id}/stream`: the live SSE stream of a case (vitals, triage, alarms),
//! which ends itself when the session does.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::{self, Caller, in_own_territory};
use crate::api::state::ApiState;
use crate::api::wire::{StreamQuery, check_id, obs_json, triage_json};
use crate::events::LiveEvent;

/// One open live stream (its permit and the open-streams gauge end with it).
struct Live {
    st: ApiState,
    case_id: String,
    token_hash: [u8; 32],
    /// The stream rests on a break-glass grant that ends then (ms).
    grant_until: Option<i64>,
    after: i64,
    rx: tokio::sync::broadcast::Receiver<LiveEvent>,
    check: tokio::time::Interval,
    shutdown: tokio::sync::watch::Receiver<bool>,
    done: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _session_slot: crate::api::state::Slot<[u8; 32]>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.st.metrics.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn stream(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> ApiResult<Response> {
    check_id(&id)?;
    // Not through an access grant: a stream would outlive the grant's expiry or revocation,
    // which only each request checks (grant holders read the case and its vitals instead).
    in_own_territory(&st, &c, "case", &id).await?;
    // One session cannot take every stream from the other crews (review #28).
    let session_slot = st
        .streams_per_session
        .take(c.token_hash, st.cfg.api.max_streams_per_session)
        .ok_or_else(|| ApiError::busy("this session has too many live streams open"))?;
    let permit = st
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::busy("too many live streams open"))?;
    // Subscribe before the audit so no event between the two is missed.
    let rx = st.bus.subscribe();
    let (a, case) = (c.actor.clone(), id.clone());
    st.store
        .call(move |db| db.audit_stream_open(&a, &case))
        .await?;
    st.metrics.streams_open.fetch_add(1, Ordering::Relaxed);
    let live = Live {
        shutdown: st.shutdown.clone(),
        st: st.clone(),
        case_id: id,
        token_hash: c.token_hash,
        grant_until: c.grant_bound(crate::api::policy::Perm::ClinicalRead),
        after: q.after.unwrap_or(i64::MAX),
        rx,
        check: tokio::time::interval(Duration::from_secs(1)),
        done: false,
        _permit: permit,
        _session_slot: session_slot,
    };
    let s = futures_util::stream::unfold(live, |mut l| async move {
        let ev = next_event(&mut l).await?;
        Some((Ok::<Event, Infallible>(ev), l))
    });
    let keepalive = Duration::from_secs(st.cfg.api.stream_keepalive_secs.max(1));
    let mut r = Sse::new(s)
        .keep_alive(KeepAlive::new().interval(keepalive))
        .into_response();
    r.headers_mut()
        .insert("x-accel-buffering", "no".parse().expect("static header"));
    Ok(r)
}

/// The next event for a live stream, or `None` to end it (logoff, shutdown, case gone).
async fn next_event(l: &mut Live) -> Option<Event> {
    use tokio::sync::broadcast::error::RecvError;
    if l.done {
        return None;
    }
    loop {
        tokio::select! {
            r = l.rx.recv() => match r {
                Ok(e) if e.case_id() == l.case_id => match e {
                    LiveEvent::Vitals { .. } => {
                        if l.after == i64::MAX {
                            // The client asked for no backlog: start from now.
                            l.after = 0;
                        }
                        let (case, after) = (l.case_id.clone(), l.after);
                        match l.st.store.call(move |db| db.case_vitals_after(&case, after)).await {
                            Ok(v) if v.is_empty() => continue,
                            Ok(v) => {
                                l.after = v.iter().map(|o| o.id).max().unwrap_or(l.after);
                                let data = Value::Array(v.iter().map(obs_json).collect());
                                return Some(Event::default().event("vitals").data(data.to_string()));
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "live stream ends");
                                return None;
                            }
                        }
                    }
                    LiveEvent::Triage { triage, .. } => {
                        return Some(Event::default().event("triage").data(triage_json(&triage).to_string()));
                    }
                    LiveEvent::Alarm { .. } => return Some(Event::default().event("alarm").data("{}")),
                    LiveEvent::Case { .. } => return Some(Event::default().event("case").data("{}")),
                },
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => {
                    return Some(Event::default().event("resync").data(json!({ "missed": n }).to_string()));
                }
                Err(RecvError::Closed) => return None,
            },
            _ = l.check.tick() => {
                if l.grant_until.is_some_and(|u| l.st.clock.now_ms() >= u) {
                    l.done = true;
                    return Some(Event::default().event("grant_expired").data("{}"));
                }
                if guard::end_if_expired(&l.st, &l.token_hash).await {
                    l.done = true;
                    return Some(Event::default().event("logoff").data("{}"));
                }
            }
            _ = l.shutdown.changed() => return None,
        }
    }
}
