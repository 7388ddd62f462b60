//! The crew tablet's HTTPS API and web UI (Contract B, SYSTEM.md §3). The only module that
//! imports `axum` and `hyper`.
//!
//! - [`routes`]: the route table (method, path, permission, summary) that drives authorization
//!   and the OpenAPI document, and the handlers.
//! - [`auth`]: accounts, sessions, roles, territory, break-glass.
//! - [`error`]: the error body and codes.
//! - [`ui`]: the web UI, compiled into the binary.
//!
//! Serving: our own accept loop on tokio-rustls (`tls::Acceptor`), HTTP/1.1 by hyper, one task
//! per connection, TLS handshakes time-boxed. Limits: request bodies (`api.max_body_bytes`,
//! 413), requests in flight (`api.max_concurrent`, 503 + Retry-After), live streams
//! (`api.max_streams`).

pub mod auth;
pub mod error;
mod openapi;
pub mod routes;
mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, watch};

use crate::config::Config;
use crate::events::Bus;
use crate::ingest::IngestMetrics;
use crate::storage::Store;
use crate::sync::SyncMetrics;
use auth::{Clock, Sessions};
use error::{ApiError, Code};

/// Credential holding the API's TLS private key (PEM).
pub const API_TLS_KEY: &str = "api-tls.key";

/// Counters of the API (exported on `/metrics`).
#[derive(Default)]
pub struct ApiMetrics {
    pub requests: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
    pub busy: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    pub logoffs: AtomicU64,
    pub denials: AtomicU64,
    pub break_glass: AtomicU64,
    pub streams_open: AtomicU64,
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub sessions: Arc<Sessions>,
    pub clock: Arc<dyn Clock>,
    pub bus: Bus,
    pub metrics: Arc<ApiMetrics>,
    pub ingest: Option<Arc<IngestMetrics>>,
    pub sync: Option<Arc<SyncMetrics>>,
    /// `triage` status line (model id / RULES-ONLY), shown on `/healthz`.
    pub triage_status: Arc<str>,
    /// Re-triage requests (manual vitals).
    pub retriage: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Wakes the bundle sealer (a case was closed).
    pub wake_sealer: Option<Arc<tokio::sync::Notify>>,
    in_flight: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl ApiState {
    /// State for `cfg`; sessions are restored from the store.
    pub async fn new(
        cfg: Config,
        store: Store,
        clock: Arc<dyn Clock>,
        bus: Bus,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, crate::storage::StoreError> {
        let rows = store.call(|db| db.load_sessions()).await?;
        Ok(ApiState {
            in_flight: Arc::new(Semaphore::new(cfg.api.max_concurrent)),
            streams: Arc::new(Semaphore::new(cfg.api.max_streams)),
            cfg: Arc::new(cfg),
            store,
            sessions: Arc::new(Sessions::restore(rows)),
            clock,
            bus,
            metrics: Arc::default(),
            ingest: None,
            sync: None,
            triage_status: Arc::from("unknown"),
            retriage: None,
            wake_sealer: None,
            shutdown,
        })
    }

    pub fn idle_ms(&self) -> i64 {
        self.cfg.api.idle_timeout_secs as i64 * 1000
    }
}

/// A JSON request body: size-limited, unknown fields rejected, errors in the API format.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Code::ValidationError,
                "the body must be JSON (Content-Type: application/json)",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| {
                if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        Code::PayloadTooLarge,
                        "request body too large",
                    )
                } else {
                    ApiError::bad_request("cannot read the request body")
                }
            })?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            // serde's message names the field and position; it never echoes string values.
            let msg = e.to_string();
            ApiError::validation(format!("invalid JSON body: {msg}"))
                .details(serde_json::json!({ "line": e.line(), "column": e.column() }))
        })
    }
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
    routes::api_routes()
        .merge(ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            auth::guard,
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

/// Why the API cannot start. Recovery: fix the named file or address.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("api TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("api TLS key: {0}")]
    Key(#[from] crate::crypto::keyring::KeyError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The TLS acceptor for `cfg` (certificate file + credential `api-tls.key`).
pub fn acceptor(cfg: &Config) -> Result<crate::tls::Acceptor, ServeError> {
    let (_, key) = crate::crypto::keyring::KeySources::from_env(&cfg.keys.dir).read(API_TLS_KEY)?;
    Ok(crate::tls::server_acceptor(&cfg.api_cert_path(), &key)?)
}

/// Binds the listener (so that setup errors surface before READY=1).
pub async fn bind(cfg: &Config) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(&cfg.api.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: cfg.api.listen.clone(),
            source: e,
        })
}

/// TLS handshakes that take longer than this are dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTPS on `listener` until shutdown; then stops accepting and lets connections finish
/// their current request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: crate::tls::Acceptor,
    st: ApiState,
) -> Result<(), String> {
    let mut shutdown = st.shutdown.clone();
    let app = router(st);
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "api listening (https)");
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app, mut shutdown) = (acceptor.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "api TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "api TLS handshake timed out");
                    return;
                }
            };
            let svc = TowerToHyperService::new(app);
            let builder = hyper::server::conn::http1::Builder::new();
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "api connection ended with an error");
                    }
                }
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}
