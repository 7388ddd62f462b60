//! Periodic ingest tasks: the device-silence alarm and the summary log line.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::{IngestError, IngestMetrics};
use crate::model::now_ms;
use crate::storage::Store;

/// The `device-silence` task: raises "device silent" alarms for bound devices that stopped
/// sending vitals.
pub struct SilenceMonitor {
    pub store: Store,
    /// Silence longer than this raises the alarm.
    pub gap: Duration,
    pub bus: crate::events::Bus,
}

impl SilenceMonitor {
    /// Checks every second (or every `gap` if shorter) until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), IngestError> {
        let SilenceMonitor { store, gap, bus } = self;
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
}

/// The `ingest-summary` task: logs one summary line of counters every `every`.
pub struct Summary {
    pub metrics: Arc<IngestMetrics>,
    pub every: Duration,
}

impl Summary {
    /// Logs until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), IngestError> {
        let Summary { metrics, every } = self;
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
                shaped = metrics.shaped.load(Ordering::Relaxed),
                rejects,
                batches = metrics.batches.load(Ordering::Relaxed),
                commit_p99_us = metrics.latency_quantile(0.99).as_micros() as u64,
                "ingest summary"
            );
        }
    }
}
