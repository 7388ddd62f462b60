//! The storage-side periodic tasks: the audit checkpointer, the health loop that feeds the
//! systemd watchdog, and the HIPAA self-check (`ComplianceCheck`, on a connection of its own).
//!
//! What gates `WATCHDOG=1`, exactly: the health loop sends it once per interval (at most half
//! of `WatchdogSec`), only after READY=1, and only while
//! 1. the storage thread answers a probe (`ping`, which reads the audit head) within the
//!    interval — every store call of every task goes through that one thread, so a wedged
//!    database stops the watchdog; and
//! 2. the audit checkpointer beat within three of its periods (it is the one loop that must
//!    run on a timer; its beat is the only heartbeat).
//!
//! Every other loop is event-driven (it waits for the broker, the tablet or the sealer), so a
//! timer heartbeat would say nothing; instead, every task is critical: when one ends, the
//! supervisor stops the daemon and it exits 1, which systemd restarts. So the watchdog covers
//! a hung process and a wedged database; task deaths are covered by the exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::model::now_ms;
use crate::storage::{Store, StoreError};
use crate::systemd;

/// Liveness stamps of the timer-driven loops, read by the health task.
#[derive(Default)]
pub struct Heartbeats {
    /// Unix ms of the checkpointer's last round.
    pub checkpointer: AtomicI64,
}

/// The `audit-checkpointer` task: signs an audit checkpoint when one is due, and seals the tail
/// of the log at shutdown (before storage closes: it is in the last stage).
pub struct Checkpointer {
    pub store: Store,
    pub every: Duration,
    pub beats: Arc<Heartbeats>,
    /// For the key-rotation and certificate-expiry alarms (`lifecycle`), checked at start
    /// and every [`LIFECYCLE_EVERY`].
    pub cfg: Arc<crate::config::Config>,
}

/// How often the checkpointer re-evaluates key ages and certificate expiry, and prunes audit
/// entries past retention.
const LIFECYCLE_EVERY: Duration = Duration::from_secs(600);

impl Checkpointer {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut tick = tokio::time::interval(self.every.min(Duration::from_secs(5)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut lifecycle_due = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if tokio::time::Instant::now() >= lifecycle_due {
                lifecycle_due += LIFECYCLE_EVERY;
                let cfg = self.cfg.clone();
                self.store
                    .call(move |db| crate::lifecycle::update_alarms(&cfg, db))
                    .await?;
                // Audit retention, one bounded step per round (`audit.retention_days`).
                let days = self.cfg.audit.retention_days;
                self.store
                    .call(move |db| {
                        db.audit_prune(&crate::model::Actor::system(), now_ms(), days, false)
                    })
                    .await?;
            }
            if let Some(seq) = self
                .store
                .call(|db| db.checkpoint_audit_if_due(now_ms(), false))
                .await?
            {
                tracing::debug!(seq, "audit checkpoint signed");
            }
            self.beats.checkpointer.store(now_ms(), Ordering::Relaxed);
        }
        self.store
            .call(|db| db.checkpoint_audit_if_due(now_ms(), true))
            .await
            .map(|_| ())
    }
}

/// The `health` task: probes storage, checks the checkpointer's beat, sends WATCHDOG=1 and
/// STATUS= (see the module doc for exactly what gates the watchdog).
pub struct Health {
    pub store: Store,
    pub every: Duration,
    /// The checkpointer's period (its beat is stale after three).
    pub checkpoint_every: Duration,
    pub beats: Arc<Heartbeats>,
    /// Becomes true once READY=1 was sent.
    pub ready: watch::Receiver<bool>,
    pub model_status: crate::triage::service::ModelStatus,
}

impl Health {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let Health {
            store,
            every,
            checkpoint_every,
            beats,
            mut ready,
            model_status,
        } = self;
        tokio::select! {
            r = ready.wait_for(|r| *r) => if r.is_err() { return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stale_after = (checkpoint_every.min(Duration::from_secs(5)) * 3).as_millis() as i64;
        let mut last_status = String::new();
        beats.checkpointer.store(now_ms(), Ordering::Relaxed);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return Ok(()),
            }
            let probe = tokio::time::timeout(every, store.call(|db| db.ping())).await;
            let checkpointer_age = now_ms() - beats.checkpointer.load(Ordering::Relaxed);
            let status = match probe {
                Ok(Ok(seq)) if checkpointer_age <= stale_after => {
                    systemd::watchdog();
                    format!("running: audit head {seq}; triage {}", model_status.get())
                }
                Ok(Ok(_)) => {
                    format!("degraded: audit checkpointer silent for {checkpointer_age} ms")
                }
                Ok(Err(e)) => format!("degraded: storage error: {e}"),
                Err(_) => "degraded: storage did not answer the health probe".to_string(),
            };
            // STATUS= follows every change; the log only records transitions running ↔ degraded.
            let class = status.split(':').next().unwrap_or_default().to_string();
            if class != last_status {
                if class == "degraded" {
                    tracing::warn!(%status, "health degraded");
                } else {
                    tracing::info!(%status, "health ok");
                }
                last_status = class;
            }
            systemd::status(&status);
        }
    }
}

/// The daemon's `compliance` task: evaluates at start and every `every` on a blocking thread
/// (the audit verification and quick integrity check take seconds on a large database), logs a
/// change of the worst status.
pub struct ComplianceCheck {
    pub cfg: Arc<crate::config::Config>,
    pub latest: crate::compliance::Latest,
    pub every: Duration,
}

impl ComplianceCheck {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        use crate::compliance::Status;
        let mut last: Option<Status> = None;
        loop {
            let cfg = self.cfg.clone();
            let job =
                tokio::task::spawn_blocking(move || crate::compliance::evaluate_now(&cfg, false));
            tokio::select! {
                r = job => match r {
                    Ok(Ok(report)) => {
                        if last != Some(report.worst) {
                            let failing: Vec<&str> = report
                                .items
                                .iter()
                                .filter(|i| i.status != Status::Pass)
                                .map(|i| i.id)
                                .collect();
                            tracing::info!(worst = report.worst.as_str(), ?failing, "HIPAA self-check");
                            last = Some(report.worst);
                        }
                        self.latest.set(report);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %crate::report::Chain(&e), "HIPAA self-check could not run"),
                    Err(e) => tracing::warn!(error = %e, "HIPAA self-check panicked"),
                },
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = shutdown.changed() => break,
            }
        }
        Ok(())
    }
}
