//! What every handler shares ([`ApiState`]) and the API's counters ([`ApiMetrics`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{Semaphore, watch};

use super::session::{Clock, Sessions};
use crate::config::Config;
use crate::events::Bus;
use crate::ingest::IngestMetrics;
use crate::storage::Store;
use crate::sync::SyncMetrics;

/// Counters of the API (exported on `/metrics`).
#[derive(Default)]
pub struct ApiMetrics {
    pub requests: AtomicU64,
    pub errors_4xx: AtomicU64,
    pub errors_5xx: AtomicU64,
    pub busy: AtomicU64,
    pub logins: AtomicU64,
    pub login_failures: AtomicU64,
    /// Login and break-glass attempts refused by the throttle (429), not audited one by one.
    pub login_throttled: AtomicU64,
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
    pub triage_status: crate::triage::service::ModelStatus,
    /// The latest HIPAA self-check (`/metrics`, `GET /api/v1/compliance`).
    pub compliance: crate::compliance::Latest,
    /// Re-triage requests (manual vitals).
    pub retriage: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// Wakes the bundle sealer (a case was closed).
    pub wake_sealer: Option<Arc<tokio::sync::Notify>>,
    /// Requests in flight (`api.max_concurrent`); above it the API answers 503 BUSY.
    pub(super) in_flight: Arc<Semaphore>,
    /// Open live streams (`api.max_streams`).
    pub(super) streams: Arc<Semaphore>,
    /// Attachment upload pieces being read (`attachments.concurrent_uploads`).
    pub(super) uploads: Arc<Semaphore>,
    /// Requests in flight per source address (`api.max_concurrent_per_source`).
    pub(super) per_source: Arc<Slots<std::net::IpAddr>>,
    /// Live streams per session (`api.max_streams_per_session`).
    pub(super) streams_per_session: Arc<Slots<[u8; 32]>>,
    /// Secret-guess throttle (login, break-glass).
    pub throttle: Arc<super::throttle::Throttle>,
    /// The daemon's shutdown signal (ends the accept loop and live streams).
    pub(super) shutdown: watch::Receiver<bool>,
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
            uploads: Arc::new(Semaphore::new(cfg.attachments.concurrent_uploads)),
            per_source: Arc::default(),
            streams_per_session: Arc::default(),
            throttle: Arc::new(super::throttle::Throttle::new(super::throttle::Limits {
                backoff_after: cfg.api.login_backoff_after,
                backoff_max_secs: cfg.api.login_backoff_max_secs,
                failures_per_day: cfg.api.login_failures_per_day,
                trusted_failures_per_day: cfg.api.login_trusted_failures_per_day,
                source_failures_per_hour: cfg.api.login_source_failures_per_hour,
            })),
            cfg: Arc::new(cfg),
            store,
            sessions: Arc::new(Sessions::restore(rows)),
            clock,
            bus,
            metrics: Arc::default(),
            ingest: None,
            sync: None,
            triage_status: crate::triage::service::ModelStatus::new("unknown".into()),
            compliance: crate::compliance::Latest::default(),
            retriage: None,
            wake_sealer: None,
            shutdown,
        })
    }

    pub fn idle_ms(&self) -> i64 {
        self.cfg.api.idle_timeout_secs as i64 * 1000
    }
}

/// Counted slots per key (a source address, a session): at most `max` held at once per key.
pub(super) struct Slots<K>(std::sync::Mutex<std::collections::HashMap<K, usize>>);

impl<K> Default for Slots<K> {
    fn default() -> Self {
        Slots(std::sync::Mutex::new(std::collections::HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq + Clone> Slots<K> {
    /// Takes one of `key`'s slots, or `None` when it holds `max` already.
    pub(super) fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut m = self.0.lock().expect("slots lock");
        let n = m.entry(key.clone()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            key,
        })
    }
}

/// A held slot; released on drop.
pub(super) struct Slot<K: std::hash::Hash + Eq + Clone> {
    slots: Arc<Slots<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().expect("slots lock");
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}
