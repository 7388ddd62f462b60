//! Unauthenticated operations routes: `/healthz`, `/metrics`, `/api/v1/openapi.json`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::error::ApiResult;
use crate::api::state::ApiState;
use crate::api::{metrics, openapi};

pub async fn healthz(State(st): State<ApiState>) -> Response {
    let store = st.store.call(|db| db.ping()).await;
    let sync = st
        .sync
        .as_ref()
        .map(|m| m.state().as_str())
        .unwrap_or("disabled");
    let body = json!({
        "status": if store.is_ok() { "ok" } else { "degraded" },
        "store": if store.is_ok() { "ok" } else { "unavailable" },
        "triage": st.triage_status.get(),
        "sync": sync,
        "sessions": st.sessions.len(),
    });
    let code = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// `GET /metrics`: loopback only unless `api.metrics_from_lan` (the login and session counters
/// would let a LAN host watch crews sign in, review #26).
pub async fn metrics(
    State(st): State<ApiState>,
    crate::api::wire::Source(source): crate::api::wire::Source,
) -> ApiResult<Response> {
    if !source.is_loopback() && !st.cfg.api.metrics_from_lan {
        return Err(crate::api::error::ApiError::forbidden(
            "metrics are served to loopback only (api.metrics_from_lan)",
        ));
    }
    let snap = st
        .store
        .call(|db| {
            Ok((
                db.outbox_stats()?,
                db.open_alarms()?,
                db.triage_count()?,
                db.last_backup()?,
                db.current_key_versions()?,
            ))
        })
        .await?;
    let store = metrics::StoreSnapshot {
        outbox: &snap.0,
        alarms: &snap.1,
        triage: snap.2,
        last_backup_ms: snap.3.map(|b| b.at_ms),
        key_versions: &snap.4,
    };
    let text = metrics::metrics_text(&st, &store);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::document_json(),
    )
        .into_response()
}
