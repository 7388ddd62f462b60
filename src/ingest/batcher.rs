//! The `ingest-batcher` task: topic, size, per-device rate shaping and SenML checks, and
//! batching.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;
use tokio::sync::mpsc;

use super::topics::Topic;
use super::{HandoverTx, Inbound, IngestError, IngestMetrics, Pending, senml, topics};
use crate::config::Config;
use crate::model::{Reject, RejectCode};
use crate::storage::IngestItem;

/// The `ingest-batcher` task: parses and validates inbound messages and hands batches to the
/// committer. While a batch is committing, the next one accumulates up to
/// `ingest.batch_max_messages`, fewer when commits run past `ingest.batch_max_commit_ms`.
pub struct Batcher {
    /// Fed by the connection task.
    pub from_conn: mpsc::UnboundedReceiver<Inbound>,
    /// One batch at a time ([`super::handover`]): the committer holds the receiving end.
    pub to_committer: HandoverTx,
    pub cfg: Config,
    pub metrics: Arc<IngestMetrics>,
}

impl Batcher {
    /// Runs until the connection's channel closes. Messages still held by the shaper then are
    /// unacknowledged, so the broker redelivers them to the next session.
    pub async fn run(self) -> Result<(), IngestError> {
        let Batcher {
            mut from_conn,
            to_committer,
            cfg,
            metrics,
        } = self;
        let parse = Parse {
            lim: senml::Limits {
                max_records: cfg.ingest.max_records_per_pack,
                max_future_ms: cfg.ingest.max_future_skew_secs as i64 * 1000,
                max_age_ms: cfg.ingest.max_age_secs as i64 * 1000,
            },
            cfg: &cfg,
            metrics: &metrics,
        };
        let mut shaper = Shaper::new(&cfg);
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            // Capped by count, and by commit time as the committer measures it.
            let max = match metrics
                .batch_limit
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                0 => cfg.ingest.batch_max_messages,
                l => l as usize,
            };
            shaper.release(Instant::now(), |m| batch.push(parse.classify(m, false)));
            if batch.is_empty() {
                let due = shaper.next_due();
                tokio::select! {
                    m = from_conn.recv() => match m {
                        Some(m) => shaper.admit(m, &metrics, |m, over| batch.push(parse.classify(m, over))),
                        None => return Ok(()),
                    },
                    _ = sleep_until(due), if due.is_some() => continue,
                }
            }
            while batch.len() < max {
                match from_conn.try_recv() {
                    Ok(m) => {
                        shaper.admit(m, &metrics, |m, over| batch.push(parse.classify(m, over)))
                    }
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            // Hand over when the committer is free; until then keep collecting (one batch
            // commits while the next one forms, none waits queued in between).
            let turn = match to_committer.try_turn() {
                Some(turn) => Some(turn),
                None if batch.len() >= max => Some(to_committer.turn().await),
                None => tokio::select! {
                    turn = to_committer.turn() => Some(turn),
                    m = from_conn.recv() => match m {
                        Some(m) => {
                            shaper.admit(m, &metrics, |m, over| batch.push(parse.classify(m, over)));
                            None
                        }
                        None => {
                            let turn = to_committer.turn().await;
                            to_committer.send(turn, std::mem::take(&mut batch)).await;
                            return Ok(());
                        }
                    },
                },
            };
            if let Some(turn) = turn
                && !to_committer.send(turn, std::mem::take(&mut batch)).await
            {
                return Ok(());
            }
            shaper.forget_idle(Instant::now());
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(t) = due {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
    }
}

/// Per-device token buckets that delay, rather than refuse, a device's messages beyond its
/// rate. A device's messages keep their order: once one waits, the later ones queue behind it.
struct Shaper {
    rate: f64,
    burst: f64,
    max_bytes: usize,
    buckets: HashMap<String, Bucket>,
    /// Devices with held messages, in no particular order.
    held: HashMap<String, VecDeque<Inbound>>,
    held_bytes: usize,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        self.tokens =
            (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = self.at.max(now);
    }
}

impl Shaper {
    fn new(cfg: &Config) -> Shaper {
        Shaper {
            rate: cfg.ingest.device_rate_per_sec,
            burst: cfg.ingest.device_burst,
            max_bytes: cfg.ingest.shaping_max_bytes,
            buckets: HashMap::new(),
            held: HashMap::new(),
            held_bytes: 0,
        }
    }

    /// Passes `m` on now (`over` = false), holds it for later, or — only when the held bytes
    /// would exceed the bound — passes it on marked over the rate (`over` = true).
    fn admit(&mut self, m: Inbound, metrics: &IngestMetrics, mut pass: impl FnMut(Inbound, bool)) {
        let Topic::Vitals(device) = topics::parse(&m.publish.topic) else {
            return pass(m, false);
        };
        if let Some(q) = self.held.get_mut(device) {
            return hold(q, &mut self.held_bytes, self.max_bytes, m, metrics, pass);
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self
            .buckets
            .entry(device.to_string())
            .or_insert_with(|| Bucket {
                tokens: burst,
                at: m.recv_at,
            });
        b.refill(m.recv_at, rate, burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return pass(m, false);
        }
        let q = self.held.entry(device.to_string()).or_default();
        hold(q, &mut self.held_bytes, self.max_bytes, m, metrics, pass);
    }

    /// Passes on every held message whose device has a token again.
    fn release(&mut self, now: Instant, mut pass: impl FnMut(Inbound)) {
        if self.held.is_empty() {
            return;
        }
        let (rate, burst) = (self.rate, self.burst);
        self.held.retain(|device, q| {
            let b = self
                .buckets
                .get_mut(device)
                .expect("held devices have buckets");
            b.refill(now, rate, burst);
            while b.tokens >= 1.0 {
                let Some(m) = q.pop_front() else { break };
                b.tokens -= 1.0;
                self.held_bytes -= m.publish.payload.len();
                pass(m);
            }
            !q.is_empty()
        });
    }

    /// When the next held message can go.
    fn next_due(&self) -> Option<Instant> {
        self.held
            .keys()
            .filter_map(|d| self.buckets.get(d))
            .map(|b| b.at + Duration::from_secs_f64(((1.0 - b.tokens) / self.rate).max(0.0)))
            .min()
    }

    /// Drops the buckets of devices idle long enough to have refilled completely.
    fn forget_idle(&mut self, now: Instant) {
        if self.buckets.len() > 10_000 {
            let full = Duration::from_secs_f64(self.burst / self.rate);
            let held = &self.held;
            self.buckets
                .retain(|d, b| held.contains_key(d) || now.duration_since(b.at) < full);
        }
    }
}

fn hold(
    q: &mut VecDeque<Inbound>,
    held_bytes: &mut usize,
    max_bytes: usize,
    m: Inbound,
    metrics: &IngestMetrics,
    mut pass: impl FnMut(Inbound, bool),
) {
    let len = m.publish.payload.len();
    if *held_bytes + len > max_bytes {
        // Only reachable with QoS 0: the broker's window bounds QoS 1 well below this.
        return pass(m, true);
    }
    metrics
        .shaped
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    *held_bytes += len;
    q.push_back(m);
}

/// The parse step of the batcher.
struct Parse<'a> {
    lim: senml::Limits,
    cfg: &'a Config,
    metrics: &'a IngestMetrics,
}

impl Parse<'_> {
    fn classify(&self, m: Inbound, over_rate: bool) -> Pending {
        let (cfg, metrics) = (self.cfg, self.metrics);
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
                } else if over_rate {
                    Err(Reject::new(
                        RejectCode::RateLimited,
                        format!(
                            "more than {} messages/s from this device at QoS {} while {} bytes wait; the payload is kept",
                            cfg.ingest.device_rate_per_sec,
                            qos_number(m.publish.qos),
                            cfg.ingest.shaping_max_bytes
                        ),
                        None,
                    ))
                } else {
                    parse_contained(&m.publish.payload, m.recv_ms, &self.lim)
                };
                if let Err(r) = &parsed {
                    metrics.reject(r.code);
                }
                // Kept for accepted packs too: the store may still refuse one (its territory
                // has no key) and then dead-letters it with the payload. A shared buffer, not a
                // copy: the publish holds the same bytes until its ack.
                let keep = m.publish.payload.len() <= cfg.ingest.max_payload_bytes;
                IngestItem::Vitals {
                    device_id: device.to_string(),
                    topic: topic.clone(),
                    recv_ms: m.recv_ms,
                    parsed,
                    payload: if keep {
                        m.publish.payload.clone()
                    } else {
                        Default::default()
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
                    payload: Default::default(),
                }
            }
        };
        Pending {
            publish: m.publish,
            item,
            recv_at: m.recv_at,
        }
    }
}

fn qos_number(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Parses one pack; a panic in the parser (a bug) is contained to this message, which is then
/// dead-lettered as INTERNAL_ERROR, instead of failing the task and, through redelivery of the
/// unacknowledged message, every restart after it.
fn parse_contained(
    payload: &[u8],
    recv_ms: i64,
    lim: &senml::Limits,
) -> Result<Vec<crate::model::Reading>, Reject> {
    std::panic::catch_unwind(|| senml::parse_pack(payload, recv_ms, lim)).unwrap_or_else(|_| {
        tracing::error!("the SenML parser panicked on one message; it is dead-lettered");
        Err(Reject::new(
            RejectCode::Internal,
            "the appliance failed to parse this message (a bug, reported in its log)",
            None,
        ))
    })
}
