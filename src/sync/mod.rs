//! Cloud sync (Contract C): seal closed cases and pre-alerts into the durable outbox, forward
//! them to the cloud broker, and keep custody until the receiver's signed receipt arrives.
//!
//! - [`keys`]: the receiver's public keys and the cloud TLS client configuration.
//! - [`sealer`]: builds FHIR bundles ([`fhir`]) and seals them in the transaction that queues
//!   them; telemetry; crypto-erase after retention.
//! - [`forwarder`]: the upload state machine (`Offline` → `Connecting` → `CatchUp` ⇄ `Live`,
//!   `Backoff` after a lost connection), one `async fn` per state, over the [`link`] transport
//!   trait. A row is done only when a valid signed receipt names its bundle id and envelope
//!   hash; PUBACK only marks it `sent`.
//! - [`session`]: the forwarder's per-connection bookkeeping (window, packet ids, acks).
//! - [`link`]: the transport trait and its MQTT 5 implementation; [`transport`]: MQTT 5
//!   options and topics shared with the receiver.
//!
//! Backpressure: the network slows the outbox (at most `sync.window` envelopes unreceipted);
//! storage is the source of truth, so nothing is held only in memory.

pub mod attachment_wire;
pub mod fhir;
mod fhir_audit;
mod fhir_handoff;
mod fhir_record;
pub mod fhir_series;
pub use fhir_audit::audit_events;
pub use fhir_handoff::{handoff_pdf, prealert_summary};
pub mod nemsis;
pub use fhir_record::nemsis_document;
pub mod forwarder;
#[cfg(test)]
mod forwarder_tests;
pub mod keys;
pub mod link;
pub mod sealer;
pub mod session;
pub mod transport;

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::crypto::keyring::KeyError;
use crate::storage::{Store, StoreError};

pub use forwarder::Forwarder;
pub use keys::{CLOUD_CLIENT_KEY, RECEIVER_PUBLIC, ReceiverKeys, cloud_tls};
pub use link::MqttTransport;
pub use sealer::{Sealer, envelope_meta, queue_telemetry, seal_pending};

/// Errors that stop sync. Each variant says how to recover.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The receiver's public keys are missing or malformed. Recovery: run
    /// `hema3n-edge keys import-receiver FILE`.
    #[error("receiver public keys: {0}")]
    ReceiverKeys(String),
    /// TLS files are unusable. Recovery: fix the named file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A key file could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storage failed. Recovery: the daemon restarts; the outbox is durable.
    #[error("storage failed during sync")]
    Store(#[from] StoreError),
    /// The configuration is unusable.
    #[error("sync configuration: {0}")]
    Config(String),
}

/// Where the link is, for health, D-Bus and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// Not configured (no cloud broker or no receiver keys).
    Disabled = 0,
    /// Waiting for connectivity or the retry timer.
    Offline = 1,
    /// Connected; the backlog is larger than the window.
    CatchUp = 2,
    /// Connected; everything queued is in flight.
    Live = 3,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Disabled => "disabled",
            LinkState::Offline => "offline",
            LinkState::CatchUp => "catch-up",
            LinkState::Live => "live",
        }
    }
}

/// Connectivity as NetworkManager reports it (`Unknown` without NetworkManager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    Unknown,
    None,
    Limited,
    Full,
}

impl Connectivity {
    /// NetworkManager's `NMConnectivityState` values.
    pub fn from_nm(v: u32) -> Self {
        match v {
            1 => Connectivity::None,
            2 | 3 => Connectivity::Limited,
            4 => Connectivity::Full,
            _ => Connectivity::Unknown,
        }
    }
    /// Whether a connection attempt makes sense.
    pub fn may_try(self) -> bool {
        matches!(self, Connectivity::Unknown | Connectivity::Full)
    }
}

/// Counters of the sync path.
#[derive(Default)]
pub struct SyncMetrics {
    pub state: AtomicU8,
    pub sealed: AtomicU64,
    pub published: AtomicU64,
    pub pubacks: AtomicU64,
    pub receipts: AtomicU64,
    pub receipt_rejects: AtomicU64,
    pub republished: AtomicU64,
    pub connects: AtomicU64,
    pub purged: AtomicU64,
    pub in_flight: AtomicU64,
    pub last_receipt_ms: AtomicI64,
}

impl SyncMetrics {
    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Offline,
            2 => LinkState::CatchUp,
            3 => LinkState::Live,
            _ => LinkState::Disabled,
        }
    }
    /// Records the link state (logged when it changes).
    pub fn set_state(&self, s: LinkState) {
        let old = self.state.swap(s as u8, Ordering::Relaxed);
        if old != s as u8 {
            tracing::info!(state = s.as_str(), "sync link state");
        }
    }
}

/// Requests that may wait for the cloud event loop beyond the window (acks, subscriptions).
const MQTT_REQUESTS: usize = 1024;

/// The forwarder for `cfg`'s cloud broker over MQTT 5, on the appliance's store.
pub fn mqtt_forwarder(
    cfg: &Config,
    store: Store,
    keys: &ReceiverKeys,
    metrics: std::sync::Arc<SyncMetrics>,
    wake: std::sync::Arc<tokio::sync::Notify>,
    connectivity: tokio::sync::watch::Receiver<Connectivity>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Forwarder<MqttTransport, Store>, SyncError> {
    let broker = cfg
        .sync
        .broker()
        .map_err(|e| SyncError::Config(e.to_string()))?
        .ok_or_else(|| SyncError::Config("sync.cloud_broker is not set".into()))?;
    let tls = cloud_tls(cfg, broker.tls)?;
    let s = &cfg.sync;
    Ok(Forwarder {
        transport: MqttTransport {
            appliance_id: cfg.appliance_id.clone(),
            client_id: s
                .client_id
                .clone()
                .unwrap_or_else(|| format!("hema3n-edge-{}-sync", cfg.appliance_id)),
            broker,
            tls,
            keep_alive_secs: s.keep_alive_secs,
            request_capacity: s.window + MQTT_REQUESTS,
        },
        outbox: store,
        appliance_id: cfg.appliance_id.clone(),
        receipt_key: keys.signing.clone(),
        settings: forwarder::Settings {
            window: s.window,
            receipt_timeout: Duration::from_secs(s.receipt_timeout_secs.max(1)),
            retry_interval: Duration::from_secs(s.retry_interval_secs.max(1)),
            backoff: Backoff::new(
                Duration::from_millis(s.backoff_min_ms.max(10)),
                Duration::from_millis(s.backoff_max_ms.max(100)),
            ),
        },
        metrics,
        wake,
        connectivity,
        shutdown,
    })
}
