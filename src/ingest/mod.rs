//! Field-device ingest (Contract A): the on-board broker connection, the parse/validate
//! stage, group commit and acknowledgement only after COMMIT. The only module (with `sync/`)
//! that imports `rumqttc`.
//!
//! Flow (tasks are structs with `run`; their channels are created by the supervisor, `app/`):
//! `connection` (drives the rumqttc event loop, never blocks in it) → `batcher` (topic, size,
//! per-device rate, SenML) → `committer` (one store transaction per batch, then PUBACK every
//! message of it and publish rejects) — while one batch commits, the next one accumulates, so
//! the batch size adapts to the load with no added latency when idle.
//!
//! Backpressure: the connection task never blocks (acks travel through the same event loop, so
//! a blocked poll would deadlock the committer). What bounds the messages held in the pipeline
//! is the broker's in-flight window for our session (`max_inflight_messages`, 1000 in our
//! mosquitto configuration): the broker sends no more until we acknowledge, and we acknowledge
//! only after commit. Storage writes wait; the broker keeps everything else (persistent
//! session, QoS 1). See docs/decisions/2026-11-23-ingest-backpressure.md.

mod batcher;
mod committer;
mod connection;
mod monitor;
pub mod senml;
pub mod simulate;
pub mod topics;

pub use batcher::Batcher;
pub use committer::Committer;
pub use connection::Connection;
pub use monitor::{SilenceMonitor, Summary};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, EventLoop, MqttOptions, Publish};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::Config;
use crate::model::RejectCode;
use crate::storage::IngestItem;

/// Errors that stop the ingest pipeline (the daemon then exits 1 and systemd restarts it;
/// unacknowledged messages are redelivered by the broker).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The store failed to commit a batch. Recovery: restart; the broker redelivers.
    #[error("storage failed while committing a vitals batch")]
    Store(#[from] crate::storage::StoreError),
    /// The broker configuration is unusable.
    #[error("broker configuration: {0}")]
    Config(String),
}

/// A message read from the broker, waiting to be parsed.
pub struct Inbound {
    pub publish: Publish,
    pub recv_ms: i64,
    pub recv_at: Instant,
}

/// The batcher → committer hand-over: one batch at a time. The batcher holds the store's one
/// turn while its batch commits and forms the next batch until the turn comes back, so a message
/// waits for at most the commit ahead of it and its own — never behind a batch queued in between.
/// The channel comes from the supervisor, with room for one batch.
pub fn handover(
    (tx, rx): (
        tokio::sync::mpsc::Sender<Handover>,
        tokio::sync::mpsc::Receiver<Handover>,
    ),
) -> (HandoverTx, HandoverRx) {
    let turn = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    (HandoverTx { tx, turn }, HandoverRx { rx })
}

/// The batcher's end of [`handover`].
pub struct HandoverTx {
    tx: tokio::sync::mpsc::Sender<Handover>,
    turn: std::sync::Arc<tokio::sync::Semaphore>,
}

impl HandoverTx {
    /// The turn, if the committer is free now.
    fn try_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.turn.clone().try_acquire_owned().ok()
    }

    /// Waits until the committer is free (cancel-safe: nothing is taken until it resolves).
    async fn turn(&self) -> OwnedSemaphorePermit {
        self.turn
            .clone()
            .acquire_owned()
            .await
            .expect("the turn's semaphore is never closed")
    }

    /// Hands `batch` over with its `turn`; `false` once the committer is gone. Never waits for
    /// room: the committer took the previous batch out before it gave the turn back.
    async fn send(&self, turn: OwnedSemaphorePermit, batch: Vec<Pending>) -> bool {
        self.tx.send(Handover { batch, turn }).await.is_ok()
    }
}

/// The committer's end of [`handover`].
pub struct HandoverRx {
    rx: tokio::sync::mpsc::Receiver<Handover>,
}

/// A batch and the turn its commit holds (given back when dropped).
pub struct Handover {
    batch: Vec<Pending>,
    turn: OwnedSemaphorePermit,
}

/// A parsed message waiting for its batch to commit.
pub struct Pending {
    publish: Publish,
    item: IngestItem,
    recv_at: Instant,
}

/// Counters of the ingest path (read by health, metrics and benchmarks).
pub struct IngestMetrics {
    pub received: AtomicU64,
    pub committed_messages: AtomicU64,
    pub readings: AtomicU64,
    pub duplicates: AtomicU64,
    /// Messages held back by per-device rate shaping (stored later, not refused).
    pub shaped: AtomicU64,
    /// QoS 0 publishes dropped because the pipeline was full (a QoS 0 flood).
    pub qos0_dropped: AtomicU64,
    pub batches: AtomicU64,
    pub connects: AtomicU64,
    /// Times the daemon finished subscribing (2 SUBACKs) since start.
    pub subscribed: AtomicU64,
    /// Messages the next batch may hold (0: `ingest.batch_max_messages`), kept by the committer
    /// from its commit times ([`next_batch_limit`]), read by the batcher.
    pub batch_limit: AtomicU64,
    rejects: [AtomicU64; RejectCode::ALL.len()],
    /// Arrival → commit latency histogram: bucket i counts latencies in [i, i+1) × 100 µs;
    /// the last bucket collects everything from 1 s up.
    latency: Box<[AtomicU64]>,
}

/// Fewest messages a commit-time cap leaves in a batch (a commit's fixed cost, its fsync, is
/// shared by at least this many).
pub const MIN_BATCH: usize = 256;

/// The batch limit after a commit of `n` messages took `elapsed` (batches are capped by commit
/// time as well as count, so no ingest commit holds the writer much past `target`): a commit
/// over the target shrinks the limit to what would have fitted (never under [`MIN_BATCH`]);
/// one under half the target with a full batch grows it by a quarter, up to `max`.
pub fn next_batch_limit(
    limit: usize,
    n: usize,
    elapsed: std::time::Duration,
    target: std::time::Duration,
    max: usize,
) -> usize {
    let limit = if limit == 0 { max } else { limit.min(max) };
    if elapsed > target && n > MIN_BATCH {
        let fit = (n as f64 * target.as_secs_f64() / elapsed.as_secs_f64()) as usize;
        fit.clamp(MIN_BATCH, max).min(limit)
    } else if elapsed * 2 < target && n >= limit {
        (limit + limit / 4 + 1).min(max)
    } else {
        limit
    }
}

const LATENCY_BUCKET_US: u64 = 100;
const LATENCY_BUCKETS: usize = 10_001;

impl Default for IngestMetrics {
    fn default() -> Self {
        IngestMetrics {
            received: AtomicU64::new(0),
            committed_messages: AtomicU64::new(0),
            readings: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            shaped: AtomicU64::new(0),
            qos0_dropped: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            batch_limit: AtomicU64::new(0),
            rejects: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl IngestMetrics {
    fn reject(&self, code: RejectCode) {
        let i = RejectCode::ALL
            .iter()
            .position(|c| *c == code)
            .expect("listed");
        self.rejects[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages received and neither committed nor dropped: what the pipeline holds now.
    pub fn outstanding(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
            - self.committed_messages.load(Ordering::Relaxed)
            - self.qos0_dropped.load(Ordering::Relaxed)
    }

    /// Rejects per code (non-zero only).
    pub fn rejects(&self) -> Vec<(RejectCode, u64)> {
        RejectCode::ALL
            .iter()
            .zip(&self.rejects)
            .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn observe_latency(&self, d: Duration) {
        let b =
            ((d.as_micros() as u64) / LATENCY_BUCKET_US).min(LATENCY_BUCKETS as u64 - 1) as usize;
        self.latency[b].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile of arrival → commit latency (upper edge of its 100 µs bucket).
    pub fn latency_quantile(&self, q: f64) -> Duration {
        let total: u64 = self.latency.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let target = ((total as f64 * q).ceil() as u64).max(1);
        let mut acc = 0;
        for (i, c) in self.latency.iter().enumerate() {
            acc += c.load(Ordering::Relaxed);
            if acc >= target {
                return Duration::from_micros((i as u64 + 1) * LATENCY_BUCKET_US);
            }
        }
        Duration::from_secs(1)
    }

    /// Clears the latency histogram (benchmarks measure phases separately).
    pub fn reset_latency(&self) {
        for c in self.latency.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// The largest packet MQTT can frame (remaining length 268,435,455 plus a 5-byte header).
pub const MQTT_MAX_PACKET: usize = 268_435_460;

/// Builds the daemon's broker client: persistent session, manual acks, QoS 1.
pub fn client(cfg: &Config, capacity: usize) -> Result<(AsyncClient, EventLoop), IngestError> {
    let (host, port) = cfg
        .mqtt
        .host_port()
        .map_err(|e| IngestError::Config(e.to_string()))?;
    let id = cfg
        .mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("hema3n-edge-{}", cfg.appliance_id));
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(cfg.mqtt.keep_alive_secs.max(5)))
        .set_clean_session(false)
        .set_manual_acks(true)
        // Incoming: anything the protocol allows, so that one oversized publish queued for our
        // persistent session is read and dead-lettered (PAYLOAD_TOO_LARGE) instead of failing
        // every reconnect forever. The broker's `message_size_limit` keeps them small.
        .set_max_packet_size(MQTT_MAX_PACKET, cfg.mqtt.max_packet_bytes)
        .set_inflight(1024);
    if let Some(user) = &cfg.mqtt.username {
        let sources = crate::crypto::keyring::KeySources::from_env(&cfg.keys.dir);
        let path = sources
            .find("mqtt.password")
            .map_err(|e| IngestError::Config(e.to_string()))?;
        let pw = std::fs::read_to_string(&path)
            .map_err(|e| IngestError::Config(format!("{}: {e}", path.display())))?;
        o.set_credentials(user.clone(), pw.trim().to_string());
    }
    Ok(AsyncClient::new(o, capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_shrink_after_a_slow_commit_and_grow_back_after_fast_ones() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let t = ms(50);
        // No limit yet: the count bound. A 4096-message commit of 200 ms: a quarter fits.
        assert_eq!(next_batch_limit(0, 4096, ms(200), t, 4096), 1024);
        // Never under MIN_BATCH, even when the fsync alone is over the target.
        assert_eq!(next_batch_limit(1024, 300, ms(400), t, 4096), MIN_BATCH);
        assert_eq!(next_batch_limit(1024, 100, ms(400), t, 4096), 1024);
        // Fast, full batches grow it back by a quarter, up to the count bound.
        assert_eq!(next_batch_limit(1024, 1024, ms(10), t, 4096), 1281);
        assert_eq!(next_batch_limit(4000, 4000, ms(10), t, 4096), 4096);
        // Fast but not full: no evidence the limit binds; unchanged.
        assert_eq!(next_batch_limit(1024, 500, ms(10), t, 4096), 1024);
        // Between half and the whole target: unchanged.
        assert_eq!(next_batch_limit(1024, 1024, ms(40), t, 4096), 1024);
    }
}
