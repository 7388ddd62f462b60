//! The `ingest-batcher` task: topic, size, per-device rate and SenML checks, and batching.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::topics::Topic;
use super::{Inbound, IngestError, IngestMetrics, Pending, senml, topics};
use crate::config::Config;
use crate::model::{Reject, RejectCode};
use crate::storage::IngestItem;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The `ingest-batcher` task: parses and validates inbound messages and hands batches to the
/// committer. While a batch is committing, the next one accumulates up to
/// `ingest.batch_max_messages`.
pub struct Batcher {
    /// Fed by the connection task.
    pub from_conn: mpsc::UnboundedReceiver<Inbound>,
    /// Bounded (one batch forming, one committing): the committer holds the receiving end.
    pub to_committer: mpsc::Sender<Vec<Pending>>,
    pub cfg: Config,
    pub metrics: Arc<IngestMetrics>,
}

impl Batcher {
    /// Runs until the connection's channel closes.
    pub async fn run(self) -> Result<(), IngestError> {
        let Batcher {
            mut from_conn,
            to_committer,
            cfg,
            metrics,
        } = self;
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
