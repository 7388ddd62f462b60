//! Appliance state without PHI: field devices of the territory and the sync link/outbox.

use std::sync::atomic::Ordering;

use axum::Extension;
use axum::extract::State;
use serde_json::{Value, json};

use crate::api::error::ApiResult;
use crate::api::guard::Caller;
use crate::api::state::ApiState;
use crate::api::wire::{Json, ok};

pub async fn devices(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
) -> ApiResult<Json> {
    let t = c.territory.clone();
    let list = st.store.call(|db| db.list_devices()).await?;
    let list: Vec<Value> = list
        .into_iter()
        .filter(|d| d.territory == t)
        .map(|d| {
            json!({
                "id": d.id, "kind": d.kind, "presence": d.presence, "bound_case": d.bound_case,
                "last_vitals_at_ms": d.last_vitals_at, "unbound_readings": d.unbound_readings,
            })
        })
        .collect();
    ok(json!({ "devices": list }))
}

pub async fn sync_status(State(st): State<ApiState>) -> ApiResult<Json> {
    let s = st.store.call(|db| db.outbox_stats()).await?;
    let link = st
        .sync
        .as_ref()
        .map(|m| m.state().as_str())
        .unwrap_or("disabled");
    let last_receipt = st
        .sync
        .as_ref()
        .map(|m| m.last_receipt_ms.load(Ordering::Relaxed))
        .filter(|t| *t > 0);
    ok(json!({
        "link": link,
        "last_receipt_ms": last_receipt,
        "outbox": {
            "queued": s.queued, "sent": s.sent, "receipted": s.receipted, "purged": s.purged,
            "queued_bytes": s.queued_bytes, "oldest_pending_ms": s.oldest_pending_ms,
        }
    }))
}
