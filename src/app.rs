//! `hema3n-edge run`: opens the store, starts the tasks, reports to systemd, and shuts down in
//! order. The only place that spawns long-running tasks; queue capacities are named here.
//!
//! Tasks (all critical: if one ends with an error, everything shuts down and the process exits 1
//! so that systemd restarts it):
//! - `audit-checkpointer`: signs an audit checkpoint every `audit.checkpoint_every_secs`.
//! - `health`: probes storage; sends WATCHDOG=1 only while the probe answers in time and every
//!   task's heartbeat is fresh.
//! - ingest (when `ingest.enabled`): `mqtt-connection` → `ingest-batcher` → `ingest-committer`,
//!   plus `device-silence` and `ingest-summary` (see `ingest`).
//! - sync (when the receiver's keys are installed): `sync-sealer` seals closed cases and
//!   pre-alerts into the outbox; `sync-forwarder` (when `sync.cloud_broker` is set) uploads them
//!   and applies receipts (see `sync`).
//!
//! Shutdown order: stop the tasks, then close storage (the owner thread checkpoints the WAL last),
//! all under `daemon.shutdown_timeout_secs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::api::session::SystemClock;
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::crypto::keyring::{KeySources, Keyring};
use crate::events::Bus;
use crate::ingest::{self, IngestMetrics};
use crate::model::now_ms;
use crate::storage::{Db, Store, StoreError};
use crate::sync::{self, SyncMetrics};
use crate::systemd;
use crate::triage::runtime::{LoadOptions, ModelError, ModelRuntime};
use crate::triage::service;

/// Why `run` ended badly; the exit code follows from it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Setup is wrong (keys, database, config): exit 78, no restart.
    #[error(transparent)]
    Setup(StoreError),
    /// A critical task failed at runtime: exit 1, systemd restarts us.
    #[error("critical task `{task}` failed: {reason}")]
    Task { task: &'static str, reason: String },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Sync is configured but cannot start (receiver keys, TLS files): exit 78.
    #[error("sync setup: {0}")]
    SyncSetup(String),
    /// The tablet API cannot start (certificate, key, listen address): exit 78.
    #[error("api setup: {0}")]
    ApiSetup(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Setup(e) if e.is_config() => 78,
            RunError::SyncSetup(_) | RunError::ApiSetup(_) => 78,
            _ => 1,
        }
    }
}

/// Parsed batches waiting to commit (batcher → committer): one in flight, one forming.
const BATCH_QUEUE: usize = 1;
/// rumqttc request queue (acks, subscriptions, reject publishes).
const MQTT_REQUESTS: usize = 8192;

type TaskResult = (&'static str, Result<(), String>);

/// Triage jobs queued for the model thread.
const TRIAGE_QUEUE: usize = 64;

/// Loads the model for `cfg`, or explains why the daemon runs rules-only.
pub fn load_model(cfg: &Config) -> Result<ModelRuntime, ModelError> {
    ModelRuntime::load(&LoadOptions {
        library: cfg.triage.onnxruntime_library.clone(),
        model_dir: cfg.triage.model_dir.clone(),
        variant: cfg.triage.variant.clone(),
        providers: cfg.triage.execution_providers.clone(),
        engine_cache_dir: cfg
            .triage
            .engine_cache_dir
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("trt-engines")),
        intra_threads: cfg.triage.intra_threads,
    })
}

/// Spawns the ingest tasks into `tasks` and returns their shared counters. Committed vitals of
/// bound cases are announced on `retriage`.
pub fn spawn_ingest(
    cfg: &Config,
    store: &Store,
    tasks: &mut JoinSet<TaskResult>,
    shutdown: &watch::Receiver<bool>,
    retriage: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    bus: &Bus,
) -> Result<Arc<IngestMetrics>, String> {
    let metrics = Arc::new(IngestMetrics::default());
    let (client, eventloop) = ingest::client(cfg, MQTT_REQUESTS).map_err(|e| e.to_string())?;
    // Connection → batcher: unbounded so the event loop never blocks; bounded in practice by
    // the broker's in-flight window (docs/decisions/2026-11-23-ingest-backpressure.md).
    let (in_tx, in_rx) = tokio::sync::mpsc::unbounded_channel();
    let (batch_tx, batch_rx) = tokio::sync::mpsc::channel(BATCH_QUEUE);
    // Committer → connection: the last acks are out, the connection may disconnect.
    let (drained_tx, drained_rx) = watch::channel(false);
    let name = |n: &'static str, r: Result<(), ingest::IngestError>| {
        (n, r.map_err(|e| format!("{e}: {}", source_chain(&e))))
    };
    let (c, m, sd) = (cfg.clone(), metrics.clone(), shutdown.clone());
    let cl = client.clone();
    tasks.spawn(async move {
        name(
            "mqtt-connection",
            ingest::connection(eventloop, cl, in_tx, c, m, sd, drained_rx).await,
        )
    });
    let (c, m) = (cfg.clone(), metrics.clone());
    tasks.spawn(async move {
        name(
            "ingest-batcher",
            ingest::batcher(in_rx, batch_tx, c, m).await,
        )
    });
    let (c, m, st, b) = (cfg.clone(), metrics.clone(), store.clone(), bus.clone());
    tasks.spawn(async move {
        name(
            "ingest-committer",
            ingest::Committer {
                from_batcher: batch_rx,
                store: st,
                client,
                cfg: c,
                metrics: m,
                drained: drained_tx,
                retriage,
                bus: b,
            }
            .run()
            .await,
        )
    });
    let (st, sd, b) = (store.clone(), shutdown.clone(), bus.clone());
    let gap = Duration::from_secs(cfg.ingest.device_silent_secs.max(1));
    tasks.spawn(async move {
        name(
            "device-silence",
            ingest::silence_monitor(st, gap, b, sd).await,
        )
    });
    let (m, sd) = (metrics.clone(), shutdown.clone());
    let every = Duration::from_secs(cfg.ingest.summary_every_secs.max(1));
    tasks.spawn(async move { name("ingest-summary", ingest::summary(m, every, sd).await) });
    Ok(metrics)
}

/// What sync exposes to the rest of the daemon.
pub struct SyncHandles {
    pub metrics: Arc<SyncMetrics>,
    /// Wakes the sealer (a case was closed).
    pub wake_sealer: Arc<tokio::sync::Notify>,
    /// Wakes the forwarder (sync now).
    pub wake_forwarder: Arc<tokio::sync::Notify>,
    /// Connectivity for the forwarder (the NetworkManager follower feeds it).
    pub connectivity: Option<watch::Sender<sync::Connectivity>>,
}

/// Spawns the sealer (when the receiver keys are installed) and the forwarder (when a cloud
/// broker is configured too). A cloud broker without receiver keys is a setup error.
pub fn spawn_sync(
    cfg: &Config,
    store: &Store,
    tasks: &mut JoinSet<TaskResult>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<SyncHandles>, RunError> {
    let keys = sync::ReceiverKeys::load(cfg).map_err(|e| RunError::SyncSetup(e.to_string()))?;
    let broker = cfg
        .sync
        .broker()
        .map_err(|e| RunError::SyncSetup(e.to_string()))?;
    let Some(keys) = keys else {
        if broker.is_some() {
            return Err(RunError::SyncSetup(format!(
                "sync.cloud_broker is set but the receiver's public keys are not installed ({}); run `hema3n-edge keys import-receiver FILE`",
                sync::RECEIVER_PUBLIC
            )));
        }
        tracing::info!("sync disabled: no receiver keys installed");
        return Ok(None);
    };
    let metrics = Arc::new(SyncMetrics::default());
    // Sealer → forwarder: "new rows queued" (a Notify keeps at most one wake-up pending).
    let wake_forwarder = Arc::new(tokio::sync::Notify::new());
    let wake_sealer = Arc::new(tokio::sync::Notify::new());
    let sealer = sync::Sealer {
        cfg: cfg.clone(),
        store: store.clone(),
        keys: keys.clone(),
        metrics: metrics.clone(),
        wake_sealer: wake_sealer.clone(),
        wake_forwarder: wake_forwarder.clone(),
    };
    let sd = shutdown.clone();
    tasks.spawn(async move {
        (
            "sync-sealer",
            sealer
                .run(sd)
                .await
                .map_err(|e| format!("{e}: {}", source_chain(&e))),
        )
    });
    let mut connectivity = None;
    if broker.is_some() {
        // NetworkManager follower → forwarder; `Unknown` until a follower reports.
        let (conn_tx, conn_rx) = watch::channel(sync::Connectivity::Unknown);
        connectivity = Some(conn_tx);
        let fw = sync::mqtt_forwarder(
            cfg,
            store.clone(),
            &keys,
            metrics.clone(),
            wake_forwarder.clone(),
            conn_rx,
            shutdown.clone(),
        )
        .map_err(|e| RunError::SyncSetup(e.to_string()))?;
        tasks.spawn(async move {
            let r = fw.run().await;
            (
                "sync-forwarder",
                r.map_err(|e| format!("{e}: {}", source_chain(&e))),
            )
        });
    } else {
        metrics
            .state
            .store(sync::LinkState::Disabled as u8, Ordering::Relaxed);
        tracing::info!("sync: bundles are sealed and queued; no cloud broker configured");
    }
    Ok(Some(SyncHandles {
        metrics,
        wake_sealer,
        wake_forwarder,
        connectivity,
    }))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut v = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        v.push(s.to_string());
        cur = s.source();
    }
    v.join(": ")
}

/// Liveness stamps of the critical tasks, read by the health task.
#[derive(Default)]
struct Heartbeats {
    checkpointer: AtomicI64,
}

/// Opens everything and runs until SIGTERM/SIGINT or a critical failure.
pub fn run(cfg: Config) -> Result<(), RunError> {
    let started = std::time::Instant::now();
    let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))
        .map_err(|e| RunError::Setup(e.into()))?;
    let db = Db::open(&cfg, keys).map_err(RunError::Setup)?;
    let schema = db.schema_version().map_err(RunError::Setup)?;
    tracing::info!(db = %db.path().display(), schema, appliance_id = %cfg.appliance_id, "store open");
    let (store, storage_thread) = Store::spawn(db, cfg.store.queue_capacity);
    // The model loads (and warms up) before READY; without it the daemon runs rules-only.
    let (runtime, model_status) = if !cfg.triage.enabled {
        (None, "triage disabled".to_string())
    } else {
        match load_model(&cfg) {
            Ok(rt) => {
                let s = format!(
                    "model {} ({}, {})",
                    rt.info.model_id,
                    rt.info.variant,
                    rt.info.provider.as_str()
                );
                (Some(rt), s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "triage model unavailable: RULES-ONLY mode");
                (None, "RULES-ONLY".to_string())
            }
        }
    };
    let (triager, model_thread) =
        service::spawn_model_thread(runtime, cfg.triage.min_core_vitals, TRIAGE_QUEUE);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hema3n-rt")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let result = rt.block_on(serve(&cfg, store, triager, &model_status, started));
    rt.shutdown_timeout(Duration::from_secs(2));
    let _ = model_thread.join();
    // All Store handles are gone now; the storage thread drains its queue and checkpoints.
    if storage_thread.join().is_err() {
        tracing::error!("storage thread panicked");
        return Err(RunError::Task {
            task: "storage",
            reason: "panicked".into(),
        });
    }
    tracing::info!("stopped");
    result
}

async fn serve(
    cfg: &Config,
    store: Store,
    triager: service::Triager,
    model_status: &str,
    started: std::time::Instant,
) -> Result<(), RunError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let beats = Arc::new(Heartbeats::default());
    let mut tasks: JoinSet<TaskResult> = JoinSet::new();

    let every = Duration::from_secs(cfg.audit.checkpoint_every_secs);
    tasks.spawn(checkpointer(
        store.clone(),
        every,
        beats.clone(),
        shutdown_rx.clone(),
    ));
    let health_every = match systemd::watchdog_interval() {
        Some(w) => (w / 2).min(Duration::from_millis(cfg.daemon.health_interval_ms)),
        None => Duration::from_millis(cfg.daemon.health_interval_ms),
    };
    // The health task feeds the watchdog only after READY=1 has been sent.
    let (ready_tx, ready_rx) = watch::channel(false);
    tasks.spawn(health(
        store.clone(),
        health_every,
        every,
        beats.clone(),
        ready_rx,
        shutdown_rx.clone(),
        model_status.to_string(),
    ));
    let disk = crate::disk::DiskWatch {
        store: store.clone(),
        data_dir: cfg.data_dir.clone(),
        alarm_below_mib: cfg.sync.disk_alarm_free_mib,
        every: Duration::from_secs(60),
    };
    let sd = shutdown_rx.clone();
    tasks.spawn(async move { ("disk-watch", disk.run(sd).await.map_err(|e| e.to_string())) });
    let bus = Bus::default();
    let retriage = if cfg.triage.enabled {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (st, sd, b) = (store.clone(), shutdown_rx.clone(), bus.clone());
        let debounce = Duration::from_millis(cfg.triage.debounce_ms);
        tasks.spawn(async move {
            (
                "retriage",
                service::retriage_loop(rx, st, triager, debounce, b, sd).await,
            )
        });
        Some(tx)
    } else {
        drop(triager);
        None
    };
    let mut sync = spawn_sync(cfg, &store, &mut tasks, &shutdown_rx)?;
    if cfg.dbus.enabled {
        let ctx = crate::dbus::Ctx {
            store: store.clone(),
            model: model_status.to_string(),
            sync: sync.as_ref().map(|s| s.metrics.clone()),
            wake: sync
                .as_ref()
                .map(|s| vec![s.wake_sealer.clone(), s.wake_forwarder.clone()])
                .unwrap_or_default(),
        };
        let conn = sync.as_mut().and_then(|s| s.connectivity.take());
        let (c, b, sd) = (cfg.dbus.clone(), bus.clone(), shutdown_rx.clone());
        tasks.spawn(async move { ("dbus", crate::dbus::run(c, ctx, b, conn, sd).await) });
    }
    let ingest = if cfg.ingest.enabled {
        Some(
            spawn_ingest(
                cfg,
                &store,
                &mut tasks,
                &shutdown_rx,
                retriage.clone(),
                &bus,
            )
            .map_err(|reason| RunError::Task {
                task: "ingest",
                reason,
            })?,
        )
    } else {
        None
    };
    if cfg.api.enabled {
        let acceptor = api::acceptor(cfg).map_err(|e| RunError::ApiSetup(e.to_string()))?;
        let listener = api::bind(cfg)
            .await
            .map_err(|e| RunError::ApiSetup(e.to_string()))?;
        let mut st = ApiState::new(
            cfg.clone(),
            store.clone(),
            Arc::new(SystemClock),
            bus.clone(),
            shutdown_rx.clone(),
        )
        .await
        .map_err(RunError::Setup)?;
        st.ingest = ingest;
        st.triage_status = Arc::from(model_status);
        st.retriage = retriage;
        if let Some(s) = &sync {
            st.sync = Some(s.metrics.clone());
            st.wake_sealer = Some(s.wake_sealer.clone());
        }
        let (st2, sd) = (st.clone(), shutdown_rx.clone());
        tasks.spawn(async move {
            (
                "api-sessions",
                api::guard::SessionSweeper {
                    st: st2,
                    every: Duration::from_secs(15),
                }
                .run(sd)
                .await
                .map_err(|e| e.to_string()),
            )
        });
        tasks.spawn(async move { ("api", api::serve(listener, acceptor, st).await) });
    }
    drop(store);

    let ready_ms = started.elapsed().as_millis() as u64;
    systemd::ready(&format!("running: store open; triage {model_status}"));
    let _ = ready_tx.send(true);
    tracing::info!(ready_ms, "ready");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Runtime)?;
    let mut failure = None;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        Some(done) = tasks.join_next() => {
            let (task, reason) = match done {
                Ok((task, Err(reason))) => (task, reason),
                Ok((task, Ok(()))) => (task, "ended unexpectedly".to_string()),
                Err(e) => ("unknown", e.to_string()),
            };
            tracing::error!(task, %reason, "critical task failed; shutting down");
            failure = Some(RunError::Task { task, reason });
        }
    }
    systemd::stopping("stopping");
    let _ = shutdown_tx.send(true);
    let deadline = Duration::from_secs(cfg.daemon.shutdown_timeout_secs);
    if tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(?deadline, "tasks did not stop in time; aborting them");
        tasks.abort_all();
    }
    failure.map_or(Ok(()), Err)
}

async fn checkpointer(
    store: Store,
    every: Duration,
    beats: Arc<Heartbeats>,
    mut shutdown: watch::Receiver<bool>,
) -> (&'static str, Result<(), String>) {
    const NAME: &str = "audit-checkpointer";
    let mut tick = tokio::time::interval(every.min(Duration::from_secs(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        match store
            .call(|db| db.checkpoint_audit_if_due(now_ms(), false))
            .await
        {
            Ok(Some(seq)) => tracing::debug!(seq, "audit checkpoint signed"),
            Ok(None) => {}
            Err(e) => return (NAME, Err(e.to_string())),
        }
        beats.checkpointer.store(now_ms(), Ordering::Relaxed);
    }
    // Seal the tail of the log before storage closes.
    let r = store
        .call(|db| db.checkpoint_audit_if_due(now_ms(), true))
        .await;
    (NAME, r.map(|_| ()).map_err(|e| e.to_string()))
}

async fn health(
    store: Store,
    every: Duration,
    checkpoint_every: Duration,
    beats: Arc<Heartbeats>,
    mut ready: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    model_status: String,
) -> (&'static str, Result<(), String>) {
    tokio::select! {
        r = ready.wait_for(|r| *r) => if r.is_err() { return ("health", Ok(())) },
        _ = shutdown.changed() => return ("health", Ok(())),
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stale_after = (checkpoint_every.min(Duration::from_secs(5)) * 3).as_millis() as i64;
    let mut last_status = String::new();
    beats.checkpointer.store(now_ms(), Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return ("health", Ok(())),
        }
        let probe = tokio::time::timeout(every, store.call(|db| db.ping())).await;
        let checkpointer_age = now_ms() - beats.checkpointer.load(Ordering::Relaxed);
        let status = match probe {
            Ok(Ok(seq)) if checkpointer_age <= stale_after => {
                systemd::watchdog();
                format!("running: audit head {seq}; triage {model_status}")
            }
            Ok(Ok(_)) => format!("degraded: audit checkpointer silent for {checkpointer_age} ms"),
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
