//! The crew tablet's HTTPS API and web UI (Contract B, SYSTEM.md §3). The only module that
//! imports `axum` and `hyper`.
//!
//! Layered so that no file imports one that imports it back (tidy checks this):
//! - [`policy`]: roles, permissions, break-glass, the route table (leaf: no axum, no IO).
//! - [`session`]: the in-memory session table and the API clock (leaf).
//! - [`error`]: the error body and codes.
//! - [`state`]: what the handlers share, and the API counters.
//! - [`wire`]: request bodies and queries, response shapes.
//! - [`guard`]: enforces the policy and session lifetimes on every request; the session sweeper.
//! - [`handlers`]: one file per resource.
//! - [`openapi`], [`metrics`]: the generated OpenAPI document and the Prometheus text.
//! - [`routes`]: the router (handler per route, guard, load limit, UI) and [`server`] (TLS
//!   accept loop).
//! - `ui`: the web UI, compiled into the binary.
//!
//! - [`throttle`]: secret-guess limits per (account, source), account and source.
//!
//! Limits, so that no LAN host can take the tablet away from a crew: open connections
//! (`api.max_connections`; the accept loop waits above it), TLS handshakes (10 s), request
//! headers and idle keep-alive (`api.header_timeout_secs`), request bodies (size
//! `api.max_body_bytes` → 413, time `api.body_timeout_secs` → 408; read *before* a request
//! permit is taken), requests in flight (`api.max_concurrent`, and per source address
//! `api.max_concurrent_per_source`, → 503 + Retry-After; `/healthz` and the UI's static files
//! take no permit), live streams (`api.max_streams`).

pub mod error;
pub mod guard;
pub mod handlers;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod routes;
pub mod server;
pub mod session;
pub mod state;
pub mod throttle;
mod ui;
pub mod wire;

pub use routes::router;
pub use server::{API_TLS_KEY, ServeError, Server, acceptor, bind};
pub use state::{ApiMetrics, ApiState};
