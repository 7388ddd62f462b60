//! The `ingest-committer` task: one store transaction per batch, then PUBACK every message of
//! it and publish rejects (acknowledgement only after COMMIT).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, watch};

use super::{Handover, HandoverRx, IngestError, IngestMetrics, topics};
use crate::config::Config;
use crate::model::RejectCode;
use crate::storage::{IngestItem, IngestOutcome, Store};

/// The `ingest-committer` task: commits batches, then acknowledges every message of a batch and
/// publishes rejects.
pub struct Committer {
    /// Parsed batches, one at a time; the batcher holds the sending end.
    pub from_batcher: HandoverRx,
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
    mut from_batcher: HandoverRx,
    store: Store,
    client: AsyncClient,
    cfg: Config,
    metrics: Arc<IngestMetrics>,
    retriage: Option<mpsc::UnboundedSender<String>>,
    bus: crate::events::Bus,
) -> Result<(), IngestError> {
    let require = cfg.ingest.require_registered_devices;
    let territory = cfg.default_territory.clone();
    let commit_target = std::time::Duration::from_millis(cfg.ingest.batch_max_commit_ms);
    while let Some(Handover { batch, turn }) = from_batcher.rx.recv().await {
        tracing::trace!(messages = batch.len(), "committing batch");
        let (pubs, items): (Vec<(Publish, Instant)>, Vec<IngestItem>) = batch
            .into_iter()
            .map(|p| ((p.publish, p.recv_at), p.item))
            .unzip();
        let t = territory.clone();
        let (n, started) = (items.len(), Instant::now());
        let (outcomes, items) = store
            .call(move |db| {
                let r = db.ingest_batch(&items, require, &t)?;
                Ok((r, items))
            })
            .await?;
        let committed = Instant::now();
        // The next batch may go to the store now (it waits in the channel while this one is
        // acknowledged).
        drop(turn);
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        let limit = super::next_batch_limit(
            metrics.batch_limit.load(Ordering::Relaxed) as usize,
            n,
            committed - started,
            commit_target,
            cfg.ingest.batch_max_messages,
        );
        metrics.batch_limit.store(limit as u64, Ordering::Relaxed);
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
