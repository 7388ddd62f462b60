//! The router: which handler serves each path of the route table, the guard and the load
//! limit around them, the UI and the JSON 404.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};

use super::error::{ApiError, Code};
use super::guard;
use super::handlers::{appliance, auth, cases, clinical, health, patients, review, stream, users};
use super::policy::BREAK_GLASS_PATH;
use super::state::ApiState;
use super::ui;

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
            get(patients::get_patient).put(patients::update_patient),
        )
        .route(
            "/api/v1/cases",
            get(cases::list_cases).post(cases::create_case),
        )
        .route("/api/v1/cases/{id}", get(cases::get_case))
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
        .route(
            "/api/v1/cases/{id}/medications",
            post(clinical::add_medication),
        )
        .route("/api/v1/cases/{id}/stream", get(stream::stream))
        .route("/api/v1/cases/{id}/handoff", get(cases::handoff))
        .route("/api/v1/cases/{id}/close", post(cases::close_case))
        .route("/api/v1/devices", get(appliance::devices))
        .route("/api/v1/sync", get(appliance::sync_status))
        .route("/api/v1/audit", get(review::audit))
        .route("/api/v1/break-glass", get(review::break_glass_list))
        .route(
            "/api/v1/break-glass/{id}/review",
            post(review::break_glass_review),
        )
        .route("/api/v1/users", get(users::users).post(users::add_user))
        .route("/api/v1/users/{id}/disable", post(users::disable_user))
}

/// Sheds load above `api.max_concurrent` requests in flight (live streams excepted) and counts
/// responses.
async fn limit(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let stream = req.uri().path().ends_with("/stream");
    let permit = if stream {
        None
    } else {
        match st.in_flight.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                st.metrics.busy.fetch_add(1, Ordering::Relaxed);
                return ApiError::busy("the appliance is busy; retry shortly").into_response();
            }
        }
    };
    let mut r = next.run(req).await;
    drop(permit);
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
    r
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
