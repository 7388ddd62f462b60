//! The disk-pressure alarm: raised when the data directory's file system has less free space
//! than `sync.disk_alarm_free_mib`, cleared when it has more again. Nothing is ever dropped to
//! make room: PHI waits in the store and the outbox, and the alarm asks a human to act.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::storage::{Store, StoreError};

/// The `disk-watch` task.
pub struct DiskWatch {
    pub store: Store,
    pub data_dir: PathBuf,
    /// Alarm threshold, MiB free.
    pub alarm_below_mib: u64,
    /// How often to look (60 s in the daemon).
    pub every: Duration,
}

impl DiskWatch {
    /// Checks at start and then every `every` until shutdown; a storage failure ends the task.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), StoreError> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check().await?,
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// One look: raises or clears the alarm when the state changed.
    pub async fn check(&self) -> Result<(), StoreError> {
        let limit = self.alarm_below_mib.saturating_mul(1 << 20);
        let free = match crate::host::free_bytes(&self.data_dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.data_dir.display(), "cannot read free disk space");
                return Ok(());
            }
        };
        let active = free < limit;
        let detail = format!(
            "{} MiB free in {} (alarm below {} MiB)",
            free >> 20,
            self.data_dir.display(),
            self.alarm_below_mib
        );
        let d = detail.clone();
        let changed = self
            .store
            .call(move |db| {
                db.set_appliance_alarm(crate::model::AlarmKind::DiskPressure, active, &d)
            })
            .await?;
        if changed && active {
            tracing::error!(%detail, "ALARM disk pressure: make room; nothing is dropped");
        } else if changed {
            tracing::info!(%detail, "disk pressure cleared");
        }
        Ok(())
    }
}
