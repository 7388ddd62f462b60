//! `/api/v1/cases`: list, open, read and close cases; bind and unbind devices.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult, Code};
use crate::api::guard::{Caller, in_own_territory, in_territory};
use crate::api::policy::Perm;
use crate::api::state::ApiState;
use crate::api::wire::{
    BindBody, Body, CaseCreate, CaseListItem, Json, check_id, created, ok, replies, view_json,
};
use crate::events::LiveEvent;
use crate::model::is_valid_ident;
use crate::storage::{CaseParts, CaseView};

fn parts(c: &Caller) -> CaseParts {
    CaseParts {
        clinical: c.can(Perm::ClinicalRead),
        demographics: c.can(Perm::PatientRead),
    }
}

pub async fn list_cases(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
) -> ApiResult<Json> {
    let (a, t, p) = (c.actor.clone(), c.territory.clone(), parts(&c));
    let cases = st
        .store
        .audited(move |db| db.read_case_list(&a, &t, p, 200))
        .await?;
    ok(json!({ "cases": replies::<_, CaseListItem<'_>>(&cases) }))
}

pub async fn create_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(b): Body<CaseCreate>,
) -> ApiResult<Response> {
    for v in [
        &b.details.chief_complaint,
        &b.details.mechanism,
        &b.details.onset,
    ]
    .into_iter()
    .flatten()
    {
        if v.len() > 2000 {
            return Err(ApiError::validation("case texts are at most 2000 bytes"));
        }
    }
    if let Some(p) = &b.patient_id {
        check_id(p)?;
        in_own_territory(&st, &c, "patient", p).await?;
    }
    let (a, t) = (c.actor.clone(), c.territory.clone());
    let id = st
        .store
        .call(move |db| db.create_case(&a, &t, b.patient_id.as_deref(), &b.details))
        .await?;
    created(json!({ "id": id }))
}

pub async fn case_view(
    st: &ApiState,
    c: &Caller,
    id: String,
    action: &'static str,
) -> ApiResult<CaseView> {
    check_id(&id)?;
    in_territory(st, c, "case", &id).await?;
    let (a, p) = (c.actor.clone(), parts(c));
    Ok(st
        .store
        .audited(move |db| db.read_case_view(&a, &id, p, action))
        .await?)
}

pub async fn get_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let v = case_view(&st, &c, id, "case.read").await?;
    let hint = 4096 + v.vitals.len() * crate::api::wire::OBS_JSON_BYTES;
    let mut r = crate::api::wire::json_reply(&view_json(&v), hint);
    r.headers_mut().insert(
        axum::http::header::ETAG,
        super::record::etag(v.case.version),
    );
    Ok(r)
}

pub async fn bind_device(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(b): Body<BindBody>,
) -> ApiResult<Json> {
    check_id(&id)?;
    if !is_valid_ident(&b.device_id) {
        return Err(ApiError::validation(
            "device_id must match [A-Za-z0-9._-]{1,64}",
        ));
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    let attached = st
        .store
        .call(move |db| db.bind_device(&a, &b.device_id, &case, b.attach_unbound))
        .await?;
    st.bus.send(LiveEvent::Case { case_id: id });
    ok(json!({ "attached_readings": attached }))
}

pub async fn unbind_device(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, device)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, d, case) = (c.actor.clone(), device.clone(), id.clone());
    let bound_here = st
        .store
        .call(move |db| {
            Ok(db
                .list_devices()?
                .into_iter()
                .any(|x| x.id == d && x.bound_case.as_deref() == Some(case.as_str())))
        })
        .await?;
    if !bound_here {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            Code::ValidationError,
            format!("device `{device}` is not bound to this case"),
        ));
    }
    st.store
        .call(move |db| db.unbind_device(&a, &device))
        .await?;
    st.bus.send(LiveEvent::Case { case_id: id });
    Ok(StatusCode::NO_CONTENT)
}

pub async fn close_case(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, case) = (c.actor.clone(), id.clone());
    st.store.call(move |db| db.close_case(&a, &case)).await?;
    if let Some(w) = &st.wake_sealer {
        w.notify_one();
    }
    st.bus.send(LiveEvent::Case {
        case_id: id.clone(),
    });
    ok(json!({ "id": id, "status": "closed" }))
}
