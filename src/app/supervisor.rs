//! The supervisor: owns every long-running task, grouped by shutdown [`Stage`], notices the
//! first one that ends, and stops them stage by stage under one deadline.
//!
//! A task is any future returning `Result<(), E>` with `E: Into<TaskError>`; it receives the
//! shutdown signal of its stage. Every task is critical: one that ends (with an error, a panic,
//! or even `Ok` before shutdown) stops the daemon, which exits 1 so that systemd restarts it.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;

use super::TaskError;

/// Shutdown stages, stopped in this order: nothing new comes in, then what came in is
/// committed, then it is handed to the cloud, then storage-side work finishes before the
/// storage thread checkpoints and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Tablet API, session sweeper, D-Bus.
    FrontDoors = 0,
    /// Device connection, batcher, committer, silence monitor, summary, re-triage.
    Ingest = 1,
    /// Sealer and forwarder.
    Sync = 2,
    /// Audit checkpointer, health/watchdog, disk watch.
    Storage = 3,
}

impl Stage {
    /// Every stage, in shutdown order.
    pub const ALL: [Stage; 4] = [
        Stage::FrontDoors,
        Stage::Ingest,
        Stage::Sync,
        Stage::Storage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::FrontDoors => "front doors",
            Stage::Ingest => "ingest",
            Stage::Sync => "sync",
            Stage::Storage => "storage",
        }
    }
}

/// The tasks of one stage.
struct Group {
    /// Its tasks hold receivers; sending `true` asks them to stop.
    stop: watch::Sender<bool>,
    set: JoinSet<Result<(), TaskError>>,
    names: HashMap<Id, &'static str>,
}

/// How a task ended.
pub struct Exit {
    pub task: &'static str,
    pub result: Result<(), TaskError>,
}

/// The daemon's tasks.
pub struct Supervisor {
    groups: Vec<Group>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            groups: Stage::ALL
                .iter()
                .map(|_| Group {
                    stop: watch::channel(false).0,
                    set: JoinSet::new(),
                    names: HashMap::new(),
                })
                .collect(),
        }
    }

    /// The shutdown signal of `stage` (becomes `true` when that stage is stopped).
    pub fn shutdown(&self, stage: Stage) -> watch::Receiver<bool> {
        self.groups[stage as usize].stop.subscribe()
    }

    /// Starts a task in `stage`.
    pub fn spawn<F, E>(&mut self, stage: Stage, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<TaskError> + 'static,
    {
        let g = &mut self.groups[stage as usize];
        let h = g.set.spawn(async move { task.await.map_err(Into::into) });
        g.names.insert(h.id(), name);
        tracing::debug!(task = name, stage = stage.as_str(), "task started");
    }

    /// Names of the tasks still running, per stage.
    pub fn running(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .groups
            .iter()
            .flat_map(|g| g.names.values().copied())
            .collect();
        v.sort_unstable();
        v
    }

    /// Waits until any task ends and says which and how. Pending forever without tasks.
    pub async fn next_exit(&mut self) -> Exit {
        let [a, b, c, d] = &mut self.groups[..] else {
            unreachable!("one group per stage")
        };
        let done = tokio::select! {
            Some(r) = a.set.join_next_with_id() => (0, r),
            Some(r) = b.set.join_next_with_id() => (1, r),
            Some(r) = c.set.join_next_with_id() => (2, r),
            Some(r) = d.set.join_next_with_id() => (3, r),
            else => std::future::pending().await,
        };
        self.exit(done.0, done.1)
    }

    fn exit(
        &mut self,
        group: usize,
        r: Result<(Id, Result<(), TaskError>), tokio::task::JoinError>,
    ) -> Exit {
        let (id, result) = match r {
            Ok((id, res)) => (id, res),
            Err(e) if e.is_panic() => (e.id(), Err(TaskError::Panicked)),
            Err(e) => (e.id(), Err(TaskError::Aborted)),
        };
        let task = self.groups[group].names.remove(&id).unwrap_or("unknown");
        Exit { task, result }
    }

    /// Stops the stages in order within `deadline`. A stage whose tasks are still running when
    /// the deadline passes is logged with their names and aborted; later stages still get a
    /// short grace to finish. Returns the errors tasks ended with while stopping.
    pub async fn stop(mut self, deadline: Duration) -> Vec<(&'static str, TaskError)> {
        const GRACE_AFTER_DEADLINE: Duration = Duration::from_millis(500);
        let until = Instant::now() + deadline;
        let mut errors = Vec::new();
        for stage in Stage::ALL {
            let i = stage as usize;
            let _ = self.groups[i].stop.send(true);
            let now = Instant::now();
            let at = if now < until {
                until
            } else {
                now + GRACE_AFTER_DEADLINE
            };
            loop {
                let next =
                    tokio::time::timeout_at(at, self.groups[i].set.join_next_with_id()).await;
                match next {
                    Ok(None) => break,
                    Ok(Some(r)) => {
                        let e = self.exit(i, r);
                        tracing::debug!(task = e.task, stage = stage.as_str(), "task stopped");
                        if let Err(err) = e.result {
                            errors.push((e.task, err));
                        }
                    }
                    Err(_) => {
                        let mut still: Vec<&str> = self.groups[i].names.values().copied().collect();
                        still.sort_unstable();
                        tracing::warn!(stage = stage.as_str(), still_running = ?still, ?deadline, "tasks did not stop in time; aborting them");
                        self.groups[i].set.abort_all();
                        while self.groups[i].set.join_next().await.is_some() {}
                        self.groups[i].names.clear();
                        break;
                    }
                }
            }
            tracing::debug!(stage = stage.as_str(), "stage stopped");
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stages_stop_in_order_and_stragglers_are_named_and_aborted() {
        let mut sup = Supervisor::new();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        for (stage, name) in [
            (Stage::Storage, "checkpointer"),
            (Stage::FrontDoors, "api"),
            (Stage::Sync, "forwarder"),
            (Stage::Ingest, "committer"),
        ] {
            let mut sd = sup.shutdown(stage);
            let tx = order_tx.clone();
            sup.spawn(stage, name, async move {
                let _ = sd.changed().await;
                tx.send(name).unwrap();
                Ok::<(), TaskError>(())
            });
        }
        // A sync task that ignores shutdown: aborted at the deadline, later stages still stop.
        sup.spawn(Stage::Sync, "stuck", async {
            std::future::pending::<()>().await;
            Ok::<(), TaskError>(())
        });
        assert_eq!(
            sup.running(),
            ["api", "checkpointer", "committer", "forwarder", "stuck"]
        );
        let errors = sup.stop(Duration::from_secs(5)).await;
        assert!(errors.is_empty());
        drop(order_tx);
        let mut order = Vec::new();
        while let Some(n) = order_rx.recv().await {
            order.push(n);
        }
        assert_eq!(order, ["api", "committer", "forwarder", "checkpointer"]);
    }

    #[tokio::test]
    async fn the_first_task_to_end_is_reported_with_its_name_and_error() {
        let mut sup = Supervisor::new();
        let sd = sup.shutdown(Stage::Ingest);
        sup.spawn(Stage::Ingest, "waits", async move {
            let mut sd = sd;
            let _ = sd.changed().await;
            Ok::<(), TaskError>(())
        });
        sup.spawn(Stage::Sync, "fails", async {
            Err::<(), TaskError>(TaskError::Ended)
        });
        let e = sup.next_exit().await;
        assert_eq!(e.task, "fails");
        assert!(matches!(e.result, Err(TaskError::Ended)));
        sup.spawn(Stage::Storage, "panics", async {
            if true {
                panic!("boom");
            }
            Ok::<(), TaskError>(())
        });
        let e = sup.next_exit().await;
        assert_eq!(e.task, "panics");
        assert!(matches!(e.result, Err(TaskError::Panicked)));
        assert_eq!(sup.running(), ["waits"]);
        assert!(sup.stop(Duration::from_secs(1)).await.is_empty());
    }
}
