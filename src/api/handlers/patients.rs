//! `/api/v1/patients`: register, read, edit and search patients (blind-index search).

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult};
use crate::api::guard::{Caller, in_territory};
use crate::api::state::ApiState;
use crate::api::wire::{Body, Json, SearchQuery, check_id, created, ok, patient_json};
use crate::model::Patient;
use crate::storage::PatientQuery;

pub async fn search_patients(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json> {
    if q.last_name.is_none() && q.date_of_birth.is_none() && q.mrn.is_none() {
        return Err(ApiError::validation(
            "search by at least one of last_name, date_of_birth, mrn",
        ));
    }
    let query = PatientQuery {
        last_name: q.last_name,
        date_of_birth: q.date_of_birth,
        mrn: q.mrn,
    };
    let (a, t) = (c.actor.clone(), c.territory.clone());
    let hits = st
        .store
        .call(move |db| db.search_patients(&a, &t, &query))
        .await?;
    ok(json!({ "patients": hits.iter().map(patient_json).collect::<Vec<_>>() }))
}

pub async fn create_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Body(p): Body<Patient>,
) -> ApiResult<Response> {
    let (a, t) = (c.actor.clone(), c.territory.clone());
    let id = st
        .store
        .call(move |db| db.create_patient(&a, &t, &p))
        .await?;
    created(json!({ "id": id }))
}

pub async fn get_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_id(&id)?;
    in_territory(&st, &c, "patient", &id).await?;
    let a = c.actor.clone();
    let p = st
        .store
        .audited(move |db| db.read_patient_audited(&a, &id))
        .await?;
    let mut r = axum::response::IntoResponse::into_response(axum::Json(patient_json(&p)));
    r.headers_mut()
        .insert(axum::http::header::ETAG, super::record::etag(p.version));
    Ok(r)
}

pub async fn update_patient(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(p): Body<Patient>,
) -> ApiResult<StatusCode> {
    check_id(&id)?;
    in_territory(&st, &c, "patient", &id).await?;
    let a = c.actor.clone();
    st.store
        .call(move |db| db.update_patient(&a, &id, &p))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
