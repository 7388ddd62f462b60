//! The hospital handoff over HTTP: the structured summary (MIST and SBAR, the suggested one
//! named), the handoff document as a PDF (audited as a disclosure), and the transfer of care
//! that moves the case to `handed_off`.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::{Caller, in_territory};
use crate::api::policy::Perm;
use crate::api::state::ApiState;
use crate::api::wire::{Body, Json, check_id, ok};
use crate::events::LiveEvent;
use crate::handoff::{self, Format};
use crate::model::CaseExport;
use crate::storage::TransferOfCare;

/// Keeps names out of what a role without demographics may see.
fn minimum_necessary(c: &Caller, x: &mut CaseExport) {
    if !c.can(Perm::PatientRead)
        && let Some(p) = &mut x.patient
    {
        p.first_name = None;
        p.last_name = None;
    }
}

/// `GET /api/v1/cases/{id}/handoff`: the handoff (both structures, the suggested one named).
pub async fn get_handoff(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let mut x = st.store.call(move |db| db.handoff_case(&a, &id)).await?;
    minimum_necessary(&c, &mut x);
    ok(serde_json::to_value(handoff::build(&x, st.clock.now_ms())).expect("json"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PdfQuery {
    /// `mist` or `sbar`; the structure the record suggests when absent.
    pub format: Option<String>,
}

/// `GET /api/v1/cases/{id}/handoff/pdf`: the handoff document, audited as a disclosure.
pub async fn handoff_pdf(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<PdfQuery>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let format = match q.format.as_deref() {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| {
            ApiError::validation("format is `mist` or `sbar`").details(json!({ "field": "format" }))
        })?),
    };
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let what = handoff::pdf::disclosure(format);
    let mut x = st
        .store
        .call(move |db| db.disclose_case(&a, &id, &what))
        .await?;
    minimum_necessary(&c, &mut x);
    let pdf = handoff::pdf::document(&x, format, st.clock.now_ms()).map_err(|e| {
        tracing::error!(error = %e, "the handoff document could not be rendered");
        ApiError::internal()
    })?;
    let mut r = pdf.into_response();
    let hs = r.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    let name = format!("attachment; filename=\"handoff-{}.pdf\"", x.case_id);
    if let Ok(v) = HeaderValue::from_str(&name) {
        hs.insert(header::CONTENT_DISPOSITION, v);
    }
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// The receiving clinician's name.
    pub receiving_clinician: String,
    pub receiving_role: Option<String>,
    /// When care was transferred; now when absent.
    pub at_ms: Option<i64>,
}

/// `POST /api/v1/cases/{id}/transfer`: records the transfer of care; the case is `handed_off`.
pub async fn transfer(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(b): Body<TransferBody>,
) -> ApiResult<Json> {
    check_id(&id)?;
    if b.receiving_clinician.trim().is_empty() {
        return Err(
            ApiError::validation("name the clinician who takes over care")
                .details(json!({ "field": "receiving_clinician" })),
        );
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let (d, t) = st
        .store
        .call(move |db| {
            db.transfer_care(
                &a,
                &case,
                &TransferOfCare {
                    to: b.receiving_clinician.trim(),
                    role: b
                        .receiving_role
                        .as_deref()
                        .map(str::trim)
                        .filter(|r| !r.is_empty()),
                    at_ms: b.at_ms,
                },
            )
        })
        .await?;
    st.bus.send(LiveEvent::Case {
        case_id: id.clone(),
    });
    ok(json!({ "id": id, "status": "handed_off", "disposition": d, "times": t }))
}
