//! A case's clinical entries: vitals history and manual vitals (checked by the one vocabulary
//! check SenML ingest uses) and the triage history.

use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::{Caller, in_territory};
use crate::api::state::ApiState;
use crate::api::wire::{
    Body, Json, ManualVitals, OBS_JSON_BYTES, ObsReply, check_id, created, json_reply, ok, replies,
    triage_json,
};
use crate::events::LiveEvent;
use crate::vocab;

pub async fn get_vitals(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let (v, voided) = st
        .store
        .audited(move |db| db.read_case_vitals(&a, &id))
        .await?;
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        vitals: Vec<ObsReply<'a>>,
        entered_in_error: &'a [crate::storage::VoidedReading],
    }
    let hint = 1024 + (v.len() + voided.len()) * OBS_JSON_BYTES;
    Ok(json_reply(
        &Reply {
            vitals: replies(&v),
            entered_in_error: &voided,
        },
        hint,
    ))
}

pub async fn add_vitals(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    Body(b): Body<ManualVitals>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let key = super::record::request_key(&headers)?;
    if b.readings.is_empty() || b.readings.len() > 32 {
        return Err(ApiError::validation("send 1 to 32 readings"));
    }
    let now = st.clock.now_ms();
    let mut rows = Vec::with_capacity(b.readings.len());
    for (i, r) in b.readings.iter().enumerate() {
        let bad = |m: String| ApiError::validation(m).details(json!({ "reading": i }));
        let v = vocab::lookup(&r.name).ok_or_else(|| bad(format!("unknown vital `{}`", r.name)))?;
        let value = match (&r.value, &r.vs, v.name) {
            (None, Some(s), "avpu") => vocab::avpu_level(s)
                .ok_or_else(|| bad("avpu must be one of A, C, V, P, U".into()))?,
            (Some(x), None, n) if n != "avpu" => *x,
            _ => {
                return Err(bad(format!(
                    "`{}` needs {}",
                    r.name,
                    if v.name == "avpu" {
                        "vs"
                    } else {
                        "a numeric value"
                    }
                )));
            }
        };
        let value = v.check(value).map_err(|e| bad(e.to_string()))?;
        let t = r.t_ms.unwrap_or(now);
        if t > now + 60_000 || t < now - 7 * 86_400_000 {
            return Err(bad("t_ms must be within the last 7 days".into()));
        }
        rows.push((v.name.to_string(), value, t));
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let ids = st
        .store
        .call(move |db| db.add_manual_vitals(&a, &case, &rows, key.as_deref()))
        .await?;
    st.bus.send(LiveEvent::Vitals {
        case_id: id.clone(),
    });
    if let Some(tx) = &st.retriage {
        let _ = tx.send(id);
    }
    created(json!({ "ids": ids }))
}

pub async fn get_triage(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let t = st
        .store
        .audited(move |db| db.read_triage_history(&a, &id, 50))
        .await?;
    ok(json!({ "triage": t.iter().map(triage_json).collect::<Vec<_>>() }))
}
