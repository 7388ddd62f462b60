//! Field-device ingest (Contract A): the on-board broker connection, the parse/validate
//! stage, group commit and acknowledgement only after COMMIT. The only module (with `sync/`)
//! that imports `rumqttc`.
//!
//! Flow (channels are created in `app.rs`):
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

pub mod senml;
pub mod simulate;
pub mod topics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;

use crate::config::Config;
use crate::model::{Reject, RejectCode, now_ms};
use crate::storage::{IngestItem, IngestOutcome, Store};
use topics::Topic;

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
    pub batches: AtomicU64,
    pub connects: AtomicU64,
    /// Times the daemon finished subscribing (2 SUBACKs) since start.
    pub subscribed: AtomicU64,
    rejects: [AtomicU64; RejectCode::ALL.len()],
    /// Arrival → commit latency histogram: bucket i counts latencies in [i, i+1) × 100 µs;
    /// the last bucket collects everything from 1 s up.
    latency: Box<[AtomicU64]>,
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
            batches: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
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
        .set_max_packet_size(cfg.mqtt.max_packet_bytes, cfg.mqtt.max_packet_bytes)
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

/// Drives the broker connection: (re)subscribes on every CONNACK, forwards publishes to the
/// batcher, reconnects with the shared jittered back-off ([`Backoff`]). Never blocks inside the event loop except on
/// the bounded hand-off to the batcher (that is the backpressure).
pub async fn connection(
    mut ev: EventLoop,
    client: AsyncClient,
    to_batcher: mpsc::UnboundedSender<Inbound>,
    cfg: Config,
    metrics: Arc<IngestMetrics>,
    mut shutdown: watch::Receiver<bool>,
    drained: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let r = forward(&mut ev, &client, to_batcher, &cfg, &metrics, &mut shutdown).await;
    drain(&mut ev, &client, drained).await;
    r
}

/// After shutdown: keep the connection up (new publishes are left unacknowledged for the
/// broker to redeliver) until the committer has sent its last acks, then disconnect cleanly.
async fn drain(ev: &mut EventLoop, client: &AsyncClient, mut drained: watch::Receiver<bool>) {
    let deadline = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(deadline);
    while !*drained.borrow() {
        tokio::select! {
            r = ev.poll() => if r.is_err() { return },
            _ = drained.changed() => {}
            _ = &mut deadline => return,
        }
    }
    let _ = client.try_disconnect();
    loop {
        tokio::select! {
            r = ev.poll() => match r {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            },
            _ = &mut deadline => return,
        }
    }
}

async fn forward(
    ev: &mut EventLoop,
    client: &AsyncClient,
    to_batcher: mpsc::UnboundedSender<Inbound>,
    cfg: &Config,
    metrics: &IngestMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.mqtt.reconnect_min_ms),
        Duration::from_millis(cfg.mqtt.reconnect_max_ms),
    );
    let mut was_connected = false;
    let mut subacks = 0;
    loop {
        let polled = tokio::select! {
            r = ev.poll() => r,
            _ = shutdown.changed() => return Ok(()),
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                was_connected = true;
                subacks = 0;
                metrics.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session_present = ack.session_present, broker = %cfg.mqtt.broker, "connected to on-board broker");
                for f in [topics::VITALS_FILTER, topics::STATUS_FILTER] {
                    if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, filter = f, "cannot queue subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                use rumqttc::SubscribeReasonCode;
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(IngestError::Config(format!(
                        "the broker refused a subscription ({:?}); check the daemon's ACL",
                        ack.return_codes
                    )));
                }
                subacks += 1;
                if subacks == 2 {
                    metrics.subscribed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("subscribed to device topics");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                tracing::trace!(topic = %p.topic, bytes = p.payload.len(), "publish received");
                metrics.received.fetch_add(1, Ordering::Relaxed);
                let item = Inbound {
                    publish: p,
                    recv_ms: now_ms(),
                    recv_at: Instant::now(),
                };
                if to_batcher.send(item).is_err() {
                    return Ok(());
                }
                let outstanding = metrics.received.load(Ordering::Relaxed)
                    - metrics.committed_messages.load(Ordering::Relaxed);
                if outstanding == OUTSTANDING_WARN {
                    tracing::warn!(
                        outstanding,
                        "more messages in flight than the broker's window should allow; check max_inflight_messages"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                if was_connected {
                    tracing::warn!(error = %e, "on-board broker connection lost; reconnecting");
                    was_connected = false;
                }
                let wait = backoff.next_wait();
                tracing::debug!(error = %e, retry_in = ?wait, "on-board broker unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Messages received but not yet committed above which the daemon warns: the broker's
/// in-flight window (1000 in our configuration) normally keeps it far below.
const OUTSTANDING_WARN: u64 = 20_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Parses and validates inbound messages and hands batches to the committer. While a batch is
/// committing, the next one accumulates up to `ingest.batch_max_messages`.
pub async fn batcher(
    mut from_conn: mpsc::UnboundedReceiver<Inbound>,
    to_committer: mpsc::Sender<Vec<Pending>>,
    cfg: Config,
    metrics: Arc<IngestMetrics>,
) -> Result<(), IngestError> {
    let lim = senml::Limits {
        max_records: cfg.ingest.max_records_per_pack,
        max_future_ms: cfg.ingest.max_future_skew_secs as i64 * 1000,
        max_age_ms: cfg.ingest.max_age_secs as i64 * 1000,
    };
    let mut buckets: HashMap<String, Bucket> = HashMap::new();
    let max = cfg.ingest.batch_max_messages;
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        if batch.is_empty() {
            match from_conn.recv().await {
                Some(m) => batch.push(classify(m, &cfg, &lim, &mut buckets, &metrics)),
                None => return Ok(()),
            }
        }
        while batch.len() < max {
            match from_conn.try_recv() {
                Ok(m) => batch.push(classify(m, &cfg, &lim, &mut buckets, &metrics)),
                Err(_) => break,
            }
        }
        // Hand over when the committer is free; meanwhile keep collecting.
        match to_committer.try_reserve() {
            Ok(permit) => permit.send(std::mem::take(&mut batch)),
            Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if batch.len() >= max {
                    let Ok(permit) = to_committer.reserve().await else {
                        return Ok(());
                    };
                    permit.send(std::mem::take(&mut batch));
                } else {
                    tokio::select! {
                        p = to_committer.reserve() => match p {
                            Ok(p) => permit_send(p, &mut batch),
                            Err(_) => return Ok(()),
                        },
                        m = from_conn.recv() => match m {
                            Some(m) => batch.push(classify(m, &cfg, &lim, &mut buckets, &metrics)),
                            None => {
                                if let Ok(p) = to_committer.reserve().await { permit_send(p, &mut batch) }
                                return Ok(());
                            }
                        },
                    }
                }
            }
        }
        if buckets.len() > 10_000 {
            let now = Instant::now();
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(60));
        }
    }
}

fn permit_send(p: mpsc::Permit<'_, Vec<Pending>>, batch: &mut Vec<Pending>) {
    p.send(std::mem::take(batch));
}

fn classify(
    m: Inbound,
    cfg: &Config,
    lim: &senml::Limits,
    buckets: &mut HashMap<String, Bucket>,
    metrics: &IngestMetrics,
) -> Pending {
    let topic = m.publish.topic.clone();
    let item = match topics::parse(&topic) {
        Topic::Status(device) => {
            let online = m.publish.payload.as_ref() == b"online";
            IngestItem::Presence {
                device_id: device.to_string(),
                online,
                recv_ms: m.recv_ms,
            }
        }
        Topic::Vitals(device) => {
            let parsed = if !crate::model::is_valid_ident(device) {
                Err(Reject::new(
                    RejectCode::BadDeviceId,
                    "device id must match [A-Za-z0-9._-]{1,64}",
                    None,
                ))
            } else if m.publish.payload.len() > cfg.ingest.max_payload_bytes {
                Err(Reject::new(
                    RejectCode::PayloadTooLarge,
                    format!(
                        "{} bytes exceed the limit of {}",
                        m.publish.payload.len(),
                        cfg.ingest.max_payload_bytes
                    ),
                    None,
                ))
            } else if !take_token(buckets, device, cfg, m.recv_at) {
                Err(Reject::new(
                    RejectCode::RateLimited,
                    format!(
                        "more than {} messages/s from this device",
                        cfg.ingest.device_rate_per_sec
                    ),
                    None,
                ))
            } else {
                senml::parse_pack(&m.publish.payload, m.recv_ms, lim)
            };
            if let Err(r) = &parsed {
                metrics.reject(r.code);
            }
            let keep = parsed.is_err() && m.publish.payload.len() <= cfg.ingest.max_payload_bytes;
            IngestItem::Vitals {
                device_id: device.to_string(),
                topic: topic.clone(),
                recv_ms: m.recv_ms,
                parsed,
                payload: if keep {
                    m.publish.payload.to_vec()
                } else {
                    Vec::new()
                },
            }
        }
        Topic::Other => {
            // Only reachable if the broker delivers outside our filters; keep a record.
            metrics.reject(RejectCode::BadSenml);
            IngestItem::Vitals {
                device_id: String::new(),
                topic: topic.clone(),
                recv_ms: m.recv_ms,
                parsed: Err(Reject::new(RejectCode::BadSenml, "unexpected topic", None)),
                payload: Vec::new(),
            }
        }
    };
    Pending {
        publish: m.publish,
        item,
        recv_at: m.recv_at,
    }
}

fn take_token(
    buckets: &mut HashMap<String, Bucket>,
    device: &str,
    cfg: &Config,
    now: Instant,
) -> bool {
    let rate = cfg.ingest.device_rate_per_sec;
    let burst = cfg.ingest.device_burst;
    let b = buckets.entry(device.to_string()).or_insert(Bucket {
        tokens: burst,
        at: now,
    });
    b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// The `ingest-committer` task: commits batches, then acknowledges every message of a batch and
/// publishes rejects.
pub struct Committer {
    /// Parsed batches; the batcher holds the sending end.
    pub from_batcher: mpsc::Receiver<Vec<Pending>>,
    pub store: Store,
    /// Acks and reject publishes go through the connection's request queue.
    pub client: AsyncClient,
    pub cfg: Config,
    pub metrics: Arc<IngestMetrics>,
    /// Set once the last ack is queued; the connection task waits for it before disconnecting.
    pub drained: watch::Sender<bool>,
    /// Cases whose vitals changed; the re-triage loop holds the receiving end.
    pub retriage: Option<mpsc::UnboundedSender<String>>,
    pub bus: crate::events::Bus,
}

impl Committer {
    /// Runs until the batcher's channel closes (shutdown) or a commit fails.
    pub async fn run(self) -> Result<(), IngestError> {
        let Committer {
            from_batcher,
            store,
            client,
            cfg,
            metrics,
            drained,
            retriage,
            bus,
        } = self;
        let r = commit_loop(from_batcher, store, client, cfg, metrics, retriage, bus).await;
        let _ = drained.send(true);
        r
    }
}

async fn commit_loop(
    mut from_batcher: mpsc::Receiver<Vec<Pending>>,
    store: Store,
    client: AsyncClient,
    cfg: Config,
    metrics: Arc<IngestMetrics>,
    retriage: Option<mpsc::UnboundedSender<String>>,
    bus: crate::events::Bus,
) -> Result<(), IngestError> {
    let require = cfg.ingest.require_registered_devices;
    let territory = cfg.default_territory.clone();
    while let Some(batch) = from_batcher.recv().await {
        tracing::trace!(messages = batch.len(), "committing batch");
        let (pubs, items): (Vec<(Publish, Instant)>, Vec<IngestItem>) = batch
            .into_iter()
            .map(|p| ((p.publish, p.recv_at), p.item))
            .unzip();
        let t = territory.clone();
        let (outcomes, items) = store
            .call(move |db| {
                let r = db.ingest_batch(&items, require, &t)?;
                Ok((r, items))
            })
            .await?;
        let committed = Instant::now();
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (mut readings, mut duplicates, mut rejects) = (0, 0, 0);
            for o in &outcomes {
                match o {
                    IngestOutcome::Stored {
                        new, duplicates: d, ..
                    } => {
                        readings += new;
                        duplicates += d;
                    }
                    IngestOutcome::Rejected(_) => rejects += 1,
                    IngestOutcome::Presence => {}
                }
            }
            tracing::debug!(
                messages = outcomes.len(),
                readings,
                duplicates,
                rejects,
                "batch committed"
            );
        }
        let mut cases: Vec<&String> = outcomes
            .iter()
            .filter_map(|o| match o {
                IngestOutcome::Stored {
                    case_id: Some(c),
                    new,
                    ..
                } if *new > 0 => Some(c),
                _ => None,
            })
            .collect();
        cases.sort();
        cases.dedup();
        for c in cases {
            if let Some(tx) = &retriage {
                let _ = tx.send(c.clone());
            }
            bus.send(crate::events::LiveEvent::Vitals { case_id: c.clone() });
        }
        // Acknowledge first: PUBACKs must never wait behind reject notifications.
        for (publish, recv_at) in &pubs {
            metrics.observe_latency(committed.duration_since(*recv_at));
            // A failed ack means the connection dropped: the broker redelivers, dedup absorbs it.
            if let Err(e) = client.ack(publish).await {
                tracing::debug!(error = %e, "ack not sent");
            }
        }
        for (outcome, item) in outcomes.iter().zip(&items) {
            match outcome {
                IngestOutcome::Stored {
                    new, duplicates, ..
                } => {
                    metrics.committed_messages.fetch_add(1, Ordering::Relaxed);
                    metrics.readings.fetch_add(*new as u64, Ordering::Relaxed);
                    metrics
                        .duplicates
                        .fetch_add(*duplicates as u64, Ordering::Relaxed);
                }
                IngestOutcome::Rejected(r) => {
                    metrics.committed_messages.fetch_add(1, Ordering::Relaxed);
                    if let IngestItem::Vitals { device_id, .. } = item {
                        if r.code == RejectCode::UnknownDevice {
                            metrics.reject(r.code);
                        }
                        tracing::debug!(device = %device_id, code = r.code.as_str(), "vitals rejected");
                        // QoS 0: the reply is advisory (the dead letter is the durable record) and
                        // must not occupy the in-flight window that acknowledgements share.
                        if crate::model::is_valid_ident(device_id) {
                            let _ = client.try_publish(
                                topics::rejects(device_id),
                                QoS::AtMostOnce,
                                false,
                                r.to_json(),
                            );
                        }
                    }
                }
                IngestOutcome::Presence => {}
            }
        }
    }
    Ok(())
}

/// Raises "device silent" alarms for bound devices that stopped sending vitals.
pub async fn silence_monitor(
    store: Store,
    gap: Duration,
    bus: crate::events::Bus,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(gap));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let gap_ms = gap.as_millis() as i64;
        for a in store
            .call(move |db| db.raise_silent_device_alarms(now_ms(), gap_ms))
            .await?
        {
            tracing::warn!(
                alarm = a.id,
                device = a.device_id.as_deref().unwrap_or(""),
                case = a.case_id.as_deref().unwrap_or(""),
                "device silent"
            );
            if let Some(case_id) = a.case_id.clone() {
                bus.send(crate::events::LiveEvent::Alarm {
                    case_id,
                    alarm: Some(a),
                });
            }
        }
    }
}

/// Logs one summary line of counters every `every`.
pub async fn summary(
    metrics: Arc<IngestMetrics>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let rejects: u64 = metrics.rejects().iter().map(|(_, n)| n).sum();
        tracing::info!(
            received = metrics.received.load(Ordering::Relaxed),
            readings = metrics.readings.load(Ordering::Relaxed),
            duplicates = metrics.duplicates.load(Ordering::Relaxed),
            rejects,
            batches = metrics.batches.load(Ordering::Relaxed),
            commit_p99_us = metrics.latency_quantile(0.99).as_micros() as u64,
            "ingest summary"
        );
    }
}
