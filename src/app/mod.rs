//! `hema3n-edge run`: the supervisor. Opens the store and the model, starts every task through
//! the [`Supervisor`], reports to systemd, and shuts down in stages. The only place that
//! spawns long-running tasks and creates the channels between them (`wiring.rs` names their
//! capacities); tidy enforces it.
//!
//! In-process use (benchmarks, tests): [`serve`] runs the whole daemon until a future
//! completes; [`App::start`] + [`App::stop`] give access to its counters in between.
//!
//! Tasks, by shutdown [`Stage`] (all critical: if one ends, everything shuts down and the
//! process exits 1 so that systemd restarts it):
//! 1. front doors: `api`, `api-sessions`, `dbus`;
//! 2. ingest (when `ingest.enabled`): `mqtt-connection` → `ingest-batcher` →
//!    `ingest-committer`, `device-silence`, `ingest-summary`, and `retriage` (when
//!    `triage.enabled`);
//! 3. sync (when the receiver's keys are installed): `sync-sealer`, `sync-forwarder` (when
//!    `sync.cloud_broker` is set);
//! 4. storage: `audit-checkpointer`, `health` (WATCHDOG=1, see `health.rs` for exactly what
//!    gates it), `disk-watch`;
//!
//! then the storage thread checkpoints the WAL and closes, all under
//! `daemon.shutdown_timeout_secs` (tasks still running at the deadline are named in the log and
//! aborted).

mod health;
mod supervisor;
mod wiring;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use supervisor::{Exit, Stage, Supervisor};
pub use wiring::{load_model, load_options, model_store};

use crate::config::Config;
use crate::crypto::keyring::{KeySources, Keyring};
use crate::events::Bus;
use crate::ingest::{IngestError, IngestMetrics};
use crate::report::Chain;
use crate::storage::{Db, Store, StoreError};
use crate::sync::{SyncError, SyncMetrics};
use crate::systemd;
use crate::triage::runtime::ModelRuntime;
use crate::triage::service;

/// Why a task ended. Each keeps its cause in `source()`; [`Chain`] prints all of it.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A store call failed (the database, or the storage thread is gone).
    #[error("storage failed")]
    Store(#[from] StoreError),
    /// The device-side pipeline failed (broker refused the subscription, commit failed).
    #[error("ingest failed")]
    Ingest(#[from] IngestError),
    /// Sync failed (storage under the outbox, or its configuration).
    #[error("sync failed")]
    Sync(#[from] SyncError),
    /// A task returned although nothing asked it to stop.
    #[error("ended unexpectedly")]
    Ended,
    /// A task panicked (a bug: the log has the panic message).
    #[error("panicked")]
    Panicked,
    /// A task was aborted.
    #[error("aborted")]
    Aborted,
}

/// Why `run` ended badly; the exit code follows from it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Setup is wrong (keys, database, config): exit 78, no restart.
    #[error(transparent)]
    Setup(StoreError),
    /// A critical task failed at runtime: exit 1, systemd restarts us.
    #[error("critical task `{task}` failed")]
    Task {
        task: &'static str,
        #[source]
        source: Box<TaskError>,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Sync is configured but cannot start (receiver keys, TLS files): exit 78.
    #[error("sync setup: {0}")]
    SyncSetup(String),
    /// The tablet API cannot start (certificate, key, listen address): exit 78.
    #[error("api setup: {0}")]
    ApiSetup(String),
    /// Ingest cannot start (broker URL, credentials): exit 78.
    #[error("ingest setup")]
    IngestSetup(#[source] IngestError),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Setup(e) if e.is_config() => 78,
            RunError::SyncSetup(_) | RunError::ApiSetup(_) | RunError::IngestSetup(_) => 78,
            _ => 1,
        }
    }
}

/// Triage jobs queued for the model thread.
const TRIAGE_QUEUE: usize = 64;

/// The running daemon.
pub struct App {
    sup: Supervisor,
    /// Ingest counters (when ingest runs).
    pub ingest: Option<Arc<IngestMetrics>>,
    /// Sync counters (when sync runs).
    pub sync: Option<Arc<SyncMetrics>>,
    /// Where the tablet API listens (when it runs).
    pub api_addr: Option<SocketAddr>,
    ready: tokio::sync::watch::Sender<bool>,
    threads: Threads,
    deadline: Duration,
    /// Held while the daemon runs: a restore or a second daemon on this database refuses.
    _lock: crate::storage::DaemonLock,
}

/// Runs the daemon until SIGTERM/SIGINT or a critical failure (the `run` subcommand).
pub fn run(cfg: Config) -> Result<(), RunError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hema3n-rt")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let r = rt.block_on(async {
        let signals = signals()?;
        serve(cfg, signals).await
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

/// Completes on SIGTERM or SIGINT.
fn signals() -> Result<impl Future<Output = ()>, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Runtime)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// Runs the whole daemon in this runtime until `shutdown` completes or a task fails, then
/// stops it in stages.
pub async fn serve(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let app = App::start(&cfg).await?;
    app.run_until(shutdown).await
}

impl App {
    /// Opens the store and the model, starts every task, sends READY=1.
    pub async fn start(cfg: &Config) -> Result<App, RunError> {
        let started = Instant::now();
        match crate::host::raise_open_files_limit() {
            Ok(n) if (n as usize) < cfg.api.max_connections.saturating_mul(2) => tracing::warn!(
                open_files = n,
                max_connections = cfg.api.max_connections,
                "the open-files limit leaves little room above the API's connection cap; raise LimitNOFILE or lower api.max_connections"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
        let lock = crate::storage::DaemonLock::acquire(&cfg.db_path()).map_err(RunError::Setup)?;
        let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))
            .map_err(|e| RunError::Setup(e.into()))?;
        let db = Db::open(cfg, keys).map_err(RunError::Setup)?;
        let schema = db.schema_version().map_err(RunError::Setup)?;
        tracing::info!(db = %db.path().display(), schema, appliance_id = %cfg.appliance_id, "store open");
        let (store, storage_thread) =
            Store::spawn(db, cfg.store.queue_capacity, cfg.store.readers())
                .map_err(RunError::Setup)?;
        // The model loads (and warms up) before READY; without it the daemon runs rules-only.
        let options = wiring::load_options(cfg);
        let (runtime, model_status) = if !cfg.triage.enabled {
            (None, "triage disabled".to_string())
        } else {
            match ModelRuntime::load(&options) {
                Ok(rt) => {
                    let s = service::describe(&rt.info);
                    (Some(rt), s)
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), "triage model unavailable: RULES-ONLY mode");
                    (None, "RULES-ONLY".to_string())
                }
            }
        };
        let model_status = service::ModelStatus::new(model_status);
        // The model thread follows `model install` / `model rollback` (audited as they happen).
        let (changes_tx, changes) = tokio::sync::mpsc::unbounded_channel();
        let reload = cfg.triage.enabled.then(|| service::Reload {
            store: wiring::model_store(cfg),
            tried: options.model_dir.clone(),
            options,
            status: model_status.clone(),
            changes: changes_tx,
        });
        let (triager, model_thread) =
            service::spawn_model_thread(runtime, reload, cfg.triage.min_core_vitals, TRIAGE_QUEUE);
        let threads = Threads {
            storage: storage_thread,
            model: model_thread,
        };

        let mut sup = Supervisor::new();
        if cfg.triage.enabled {
            wiring::model_changes(&store, &mut sup, changes);
        }
        let (ready, ready_rx) = tokio::sync::watch::channel(false);
        let beats = Arc::new(health::Heartbeats::default());
        let every = Duration::from_secs(cfg.audit.checkpoint_every_secs);
        let cp = health::Checkpointer {
            store: store.clone(),
            every,
            beats: beats.clone(),
            cfg: Arc::new(cfg.clone()),
        };
        let sd = sup.shutdown(Stage::Storage);
        sup.spawn(Stage::Storage, "audit-checkpointer", cp.run(sd));
        let health_every = match systemd::watchdog_interval() {
            Some(w) => (w / 2).min(Duration::from_millis(cfg.daemon.health_interval_ms)),
            None => Duration::from_millis(cfg.daemon.health_interval_ms),
        };
        let h = health::Health {
            store: store.clone(),
            every: health_every,
            checkpoint_every: every,
            beats,
            ready: ready_rx,
            model_status: model_status.clone(),
        };
        let sd = sup.shutdown(Stage::Storage);
        sup.spawn(Stage::Storage, "health", h.run(sd));
        wiring::disk(cfg, &store, &mut sup);
        wiring::wal(&store, &mut sup);

        let bus = Bus::default();
        // Closed cases, stored triage and record changes wake the sealer (pre-alerts, bundles).
        let wake_sealer = Arc::new(tokio::sync::Notify::new());
        let retriage = if cfg.triage.enabled {
            Some(wiring::retriage(
                cfg,
                &store,
                &mut sup,
                triager,
                &bus,
                &wake_sealer,
            ))
        } else {
            drop(triager);
            None
        };
        let mut sync = match wiring::sync(cfg, &store, &mut sup, wake_sealer) {
            Ok(s) => s,
            Err(e) => return Err(abandon(sup, store, threads, e).await),
        };
        if cfg.dbus.enabled {
            wiring::dbus(cfg, &store, &mut sup, &model_status, sync.as_mut(), &bus);
        }
        let ingest = if cfg.ingest.enabled {
            match wiring::ingest(cfg, &store, &mut sup, retriage.clone(), &bus) {
                Ok(m) => Some(m),
                Err(e) => {
                    return Err(abandon(sup, store, threads, RunError::IngestSetup(e)).await);
                }
            }
        } else {
            None
        };
        let api_addr = if cfg.api.enabled {
            let links = wiring::ApiLinks {
                ingest: ingest.clone(),
                retriage,
                sync_metrics: sync.as_ref().map(|s| s.metrics.clone()),
                wake_sealer: sync.as_ref().map(|s| s.wake_sealer.clone()),
            };
            match wiring::api(cfg, &store, &mut sup, &model_status, &bus, links).await {
                Ok(a) => Some(a),
                Err(e) => return Err(abandon(sup, store, threads, e).await),
            }
        } else {
            None
        };
        drop(store);

        let ready_ms = started.elapsed().as_millis() as u64;
        systemd::ready(&format!(
            "running: store open; triage {}",
            model_status.get()
        ));
        let _ = ready.send(true);
        tracing::info!(ready_ms, tasks = ?sup.running(), "ready");
        Ok(App {
            sup,
            ingest,
            sync: sync.map(|s| s.metrics),
            api_addr,
            ready,
            threads,
            deadline: Duration::from_secs(cfg.daemon.shutdown_timeout_secs),
            _lock: lock,
        })
    }

    /// Runs until `shutdown` completes or a task ends, then stops.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        let failure = tokio::select! {
            _ = shutdown => None,
            exit = self.sup.next_exit() => {
                let source = exit.result.err().unwrap_or(TaskError::Ended);
                tracing::error!(task = exit.task, error = %Chain(&source), "critical task failed; shutting down");
                Some(RunError::Task { task: exit.task, source: Box::new(source) })
            }
        };
        let stopped = self.stop().await;
        match failure {
            Some(f) => Err(f),
            None => stopped,
        }
    }

    /// Stops the tasks stage by stage under the deadline, then closes storage (the storage
    /// thread checkpoints the WAL last).
    pub async fn stop(self) -> Result<(), RunError> {
        systemd::stopping("stopping");
        let _ = self.ready.send(false);
        for (task, e) in self.sup.stop(self.deadline).await {
            tracing::warn!(task, error = %Chain(&e), "task failed while stopping");
        }
        // Every Store handle is gone with the tasks: the storage thread drains and closes.
        if !self.threads.join().await {
            tracing::error!("storage thread panicked");
            return Err(RunError::Task {
                task: "storage",
                source: Box::new(TaskError::Panicked),
            });
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The threads that own the database and the model.
struct Threads {
    storage: std::thread::JoinHandle<()>,
    model: std::thread::JoinHandle<()>,
}

impl Threads {
    /// Waits for both to finish (the storage thread ends once every `Store` handle is gone).
    /// Returns false when the storage thread panicked.
    async fn join(self) -> bool {
        let Threads { storage, model } = self;
        crate::storage::join_owner(model).await;
        crate::storage::join_owner(storage).await
    }
}

/// Setup failed after some tasks started: stop them, close storage, and return `e`.
async fn abandon(sup: Supervisor, store: Store, threads: Threads, e: RunError) -> RunError {
    for (task, err) in sup.stop(Duration::from_secs(5)).await {
        tracing::warn!(task, error = %Chain(&err), "task failed while stopping");
    }
    drop(store);
    if !threads.join().await {
        tracing::error!("storage thread panicked");
    }
    e
}
