//! The router: which handler serves each path of the route table, the guard and the load
//! limit around them, the UI and the JSON 404.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};

use super::error::{ApiError, Code};
use super::guard;
use super::handlers::{
    appliance, attachments, auth, cases, clinical, grants, handoff, health, patients, record,
    review, stream, users,
};
use super::policy::BREAK_GLASS_PATH;
use super::state::ApiState;
use super::ui;
use super::wire::Source;

/// The API's axum routes: a handler for every row of [`ROUTES`](super::policy::ROUTES) (the
/// api tests check the two agree).
pub fn api_routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
        .route("/api/v1/openapi.json", get(health::openapi))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/me", get(auth::me))
        .route(BREAK_GLASS_PATH, post(auth::break_glass))
        .route(
            "/api/v1/patients",
            get(patients::search_patients).post(patients::create_patient),
        )
        .route(
            "/api/v1/patients/{id}",
            get(patients::get_patient)
                .put(patients::update_patient)
                .patch(record::patch_patient),
        )
        .route(
            "/api/v1/cases",
            get(cases::list_cases).post(cases::create_case),
        )
        .route(
            "/api/v1/cases/{id}",
            get(cases::get_case).patch(record::patch_case),
        )
        .route("/api/v1/record/codes", get(record::codes))
        .route("/api/v1/cases/{id}/record", get(record::get_record))
        .route("/api/v1/cases/{id}/nemsis", get(record::nemsis))
        .route("/api/v1/cases/{id}/drafts", get(record::get_drafts))
        .route(
            "/api/v1/cases/{id}/drafts/{form}",
            put(record::put_draft).delete(record::drop_draft),
        )
        .route(
            "/api/v1/cases/{id}/record/incident",
            patch(record::patch_incident),
        )
        .route(
            "/api/v1/cases/{id}/record/times",
            patch(record::patch_times),
        )
        .route(
            "/api/v1/cases/{id}/record/scene",
            patch(record::patch_scene),
        )
        .route(
            "/api/v1/cases/{id}/record/situation",
            patch(record::patch_situation),
        )
        .route(
            "/api/v1/cases/{id}/record/history",
            patch(record::patch_history),
        )
        .route(
            "/api/v1/cases/{id}/record/disposition",
            patch(record::patch_disposition),
        )
        .route(
            "/api/v1/cases/{id}/record/narrative",
            patch(record::patch_narrative),
        )
        .route(
            "/api/v1/cases/{id}/record/spo2_scale",
            patch(record::patch_spo2_scale),
        )
        .route("/api/v1/cases/{id}/record/oxygen", post(record::add_oxygen))
        .route(
            "/api/v1/cases/{id}/record/procedure",
            post(record::add_procedure),
        )
        .route(
            "/api/v1/cases/{id}/record/medication",
            post(record::add_medication),
        )
        .route(
            "/api/v1/cases/{id}/record/assessment",
            post(record::add_assessment),
        )
        .route(
            "/api/v1/cases/{id}/record/entries/{entry_id}",
            put(record::correct_entry),
        )
        .route(
            "/api/v1/cases/{id}/record/entries/{entry_id}/entered-in-error",
            post(record::void_entry),
        )
        .route(
            "/api/v1/cases/{id}/vitals/{reading_id}/entered-in-error",
            post(record::void_reading),
        )
        .route("/api/v1/cases/{id}/devices", post(cases::bind_device))
        .route(
            "/api/v1/cases/{id}/devices/{device_id}",
            delete(cases::unbind_device),
        )
        .route(
            "/api/v1/cases/{id}/vitals",
            get(clinical::get_vitals).post(clinical::add_vitals),
        )
        .route("/api/v1/cases/{id}/triage", get(clinical::get_triage))
        .route("/api/v1/cases/{id}/stream", get(stream::stream))
        .route("/api/v1/cases/{id}/handoff", get(handoff::get_handoff))
        .route("/api/v1/cases/{id}/handoff/pdf", get(handoff::handoff_pdf))
        .route("/api/v1/cases/{id}/transfer", post(handoff::transfer))
        .route(
            "/api/v1/cases/{id}/attachments",
            get(attachments::list_attachments).post(attachments::create_attachment),
        )
        .route(
            "/api/v1/cases/{id}/attachments/{aid}",
            get(attachments::get_attachment),
        )
        .route(
            "/api/v1/cases/{id}/attachments/{aid}/content",
            get(attachments::content).patch(
                // `limit` bounds upload pieces by `attachments.max_piece_kib` instead.
                patch(attachments::upload_piece).layer(axum::extract::DefaultBodyLimit::disable()),
            ),
        )
        .route(
            "/api/v1/cases/{id}/attachments/{aid}/thumbnail",
            get(attachments::thumbnail),
        )
        .route("/api/v1/cases/{id}/close", post(cases::close_case))
        .route("/api/v1/devices", get(appliance::devices))
        .route("/api/v1/sync", get(appliance::sync_status))
        .route("/api/v1/audit", get(review::audit))
        .route(
            "/api/v1/patients/{id}/disclosures",
            get(review::disclosures),
        )
        .route("/api/v1/break-glass", get(review::break_glass_list))
        .route(
            "/api/v1/break-glass/{id}/review",
            post(review::break_glass_review),
        )
        .route("/api/v1/compliance", get(review::compliance))
        .route("/api/v1/grants", get(grants::list).post(grants::create))
        .route("/api/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/api/v1/users", get(users::users).post(users::add_user))
        .route("/api/v1/users/{id}/disable", post(users::disable_user))
        .route("/api/v1/users/{id}/approve", post(users::approve_user))
}

/// Reads the body first (bounded in size and time), then sheds load above
/// `api.max_concurrent` requests in flight or `api.max_concurrent_per_source` from one address
/// (live streams, `/healthz` and the UI's static files take no permit), and counts responses.
/// A client that trickles its body holds a connection, never a permit.
async fn limit(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    // An attachment piece may be larger than other bodies: only a few are read at once.
    let upload = req.method() == axum::http::Method::PATCH
        && req.uri().path().starts_with("/api/v1/cases/")
        && req.uri().path().ends_with("/content");
    let _upload_slot = if upload {
        match st.uploads.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                st.metrics.busy.fetch_add(1, Ordering::Relaxed);
                return ApiError::busy("other uploads are in progress; retry shortly")
                    .into_response();
            }
        }
    } else {
        None
    };
    let mut r = match buffer_body(&st, req, upload).await {
        Ok(req) => with_permit(&st, req, next).await,
        Err(e) => e.into_response(),
    };
    let s = r.status();
    if s.is_client_error() {
        st.metrics.errors_4xx.fetch_add(1, Ordering::Relaxed);
    } else if s.is_server_error() {
        st.metrics.errors_5xx.fetch_add(1, Ordering::Relaxed);
    }
    let h = r.headers_mut();
    h.insert("cache-control", "no-store".parse().expect("static header"));
    h.insert(
        "x-content-type-options",
        "nosniff".parse().expect("static header"),
    );
    h.insert(
        "referrer-policy",
        "no-referrer".parse().expect("static header"),
    );
    h.insert(
        "strict-transport-security",
        "max-age=31536000".parse().expect("static header"),
    );
    r
}

async fn with_permit(st: &ApiState, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let free = path == "/healthz"
        || path.ends_with("/stream")
        || (req.method() == axum::http::Method::GET
            && !path.starts_with("/api/")
            && path != "/metrics");
    if free {
        return next.run(req).await;
    }
    let source = Source::of(req.extensions()).0;
    let Some(_source_slot) = st
        .per_source
        .take(source, st.cfg.api.max_concurrent_per_source)
    else {
        st.metrics.busy.fetch_add(1, Ordering::Relaxed);
        return ApiError::busy("too many requests in flight from this address; retry shortly")
            .into_response();
    };
    let Ok(_permit) = st.in_flight.clone().try_acquire_owned() else {
        st.metrics.busy.fetch_add(1, Ordering::Relaxed);
        return ApiError::busy("the appliance is busy; retry shortly").into_response();
    };
    next.run(req).await
}

/// Reads the whole body within `api.body_timeout_secs` and `api.max_body_bytes` (an attachment
/// piece: `attachments.max_piece_kib`), so that the handler gets it from memory.
async fn buffer_body(st: &ApiState, req: Request, upload: bool) -> Result<Request, ApiError> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    if parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD {
        return Ok(Request::from_parts(parts, body));
    }
    let limit = if upload {
        st.cfg.attachments.max_piece_bytes()
    } else {
        st.cfg.api.max_body_bytes
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::PayloadTooLarge,
            "request body too large",
        )
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = http_body_util::Limited::new(body, limit).collect();
    let timeout = std::time::Duration::from_secs(st.cfg.api.body_timeout_secs);
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Code::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::bad_request("cannot read the request body")),
        Ok(Ok(c)) => Ok(Request::from_parts(
            parts,
            axum::body::Body::from(c.to_bytes()),
        )),
    }
}

/// The whole application: UI, API, health, metrics.
pub fn router(st: ApiState) -> Router {
    let body_limit = st.cfg.api.max_body_bytes;
    api_routes()
        .merge(ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            guard::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(st.clone(), limit))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                Code::ValidationError,
                "no such route",
            )
        })
        .with_state(st)
}
