//! Serving HTTPS: the TLS acceptor (certificate file + credential `api-tls.key`), the listener,
//! and our own accept loop on tokio-rustls (HTTP/1.1 by hyper, one task per connection, TLS
//! handshakes time-boxed, connections finish their request at shutdown).

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

use super::state::ApiState;
use crate::config::Config;

/// Credential holding the API's TLS private key (PEM).
pub const API_TLS_KEY: &str = "api-tls.key";

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

/// The `api` task: serves HTTPS on `listener` until shutdown; then stops accepting and lets
/// connections finish their current request.
pub struct Server {
    pub listener: tokio::net::TcpListener,
    pub acceptor: crate::tls::Acceptor,
    pub st: ApiState,
}

impl Server {
    /// Runs the accept loop until the API state's shutdown signal.
    pub async fn run(self) {
        serve(self.listener, self.acceptor, self.st).await
    }
}

async fn serve(listener: tokio::net::TcpListener, acceptor: crate::tls::Acceptor, st: ApiState) {
    let mut shutdown = st.shutdown.clone();
    let header_timeout = Duration::from_secs(st.cfg.api.header_timeout_secs.max(1));
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(
        st.cfg.api.max_connections.max(1),
    ));
    let app = super::routes::router(st);
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "api listening (https)");
    loop {
        // At the connection cap, wait for one to end (new clients queue in the kernel) rather
        // than accept sockets we cannot serve; idle ones end within the header timeout.
        let slot = tokio::select! {
            s = connections.clone().acquire_owned() => s.expect("never closed"),
            _ = shutdown.changed() => return,
        };
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
            _ = shutdown.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, mut shutdown) = (acceptor.clone(), shutdown.clone());
        // The client's address reaches handlers and limits as `ConnectInfo`.
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let _slot = slot;
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
            let mut builder = hyper::server::conn::http1::Builder::new();
            // Without a timer hyper drops its header timeout; with it, a connection that sends
            // no request head within the timeout (also idle between requests) is closed.
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
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
