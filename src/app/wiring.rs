//! Wiring: builds each feature's tasks from the configuration, creates the channels between
//! them (capacities are named here) and hands the tasks to the supervisor in their stage.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};

use super::supervisor::{Stage, Supervisor};
use super::{RunError, TaskError};
use crate::api::{self, ApiState};
use crate::config::Config;
use crate::events::Bus;
use crate::ingest::{self, IngestMetrics};
use crate::model::{Actor, AuditEvent, Outcome};
use crate::storage::Store;
use crate::sync::{self, SyncMetrics};
use crate::triage::installed::ModelStore;
use crate::triage::runtime::{LoadOptions, ModelError, ModelRuntime};
use crate::triage::service::{ModelChange, ModelStatus};

/// Parsed batches handed to the committer: one at a time (see `ingest::handover`).
const BATCH_QUEUE: usize = 1;
/// rumqttc request queue of the device connection (acks, subscriptions, reject publishes).
const MQTT_REQUESTS: usize = 8192;
/// How often the session sweeper ends idle sessions and persists last-seen times.
const SESSION_SWEEP: Duration = Duration::from_secs(15);
/// How often the daemon re-runs the HIPAA self-check (`/metrics`, the supervisor view).
const COMPLIANCE_EVERY: Duration = Duration::from_secs(600);
/// How often the free disk space is checked.
const DISK_CHECK: Duration = Duration::from_secs(60);
/// How often the WAL is checkpointed beside the writer (whose commits no longer do).
const WAL_CHECKPOINT: Duration = Duration::from_secs(1);
/// WAL frames left behind by a checkpoint (readers holding older snapshots) worth a warning:
/// about 256 MiB of 4 KiB pages.
const WAL_BEHIND_WARN: i64 = 65_536;

/// The factory and installed models of `cfg`.
pub fn model_store(cfg: &Config) -> ModelStore {
    ModelStore {
        root: cfg.models_dir(),
        factory: cfg.triage.model_dir.clone(),
    }
}

/// How to load the active model of `cfg`.
pub fn load_options(cfg: &Config) -> LoadOptions {
    LoadOptions {
        library: cfg.triage.onnxruntime_library.clone(),
        model_dir: model_store(cfg).active(),
        variant: cfg.triage.variant.clone(),
        trusted_keys: cfg.triage.model_signing_keys.clone(),
        providers: cfg.triage.execution_providers.clone(),
        engine_cache_dir: cfg.engine_cache_dir(),
        intra_threads: cfg.triage.intra_threads,
    }
}

/// Loads the active model for `cfg`, or explains why the daemon runs rules-only.
pub fn load_model(cfg: &Config) -> Result<ModelRuntime, ModelError> {
    ModelRuntime::load(&load_options(cfg))
}

/// Writes each model switch of the model thread into the audit log (`model.activate`).
pub fn model_changes(
    store: &Store,
    sup: &mut Supervisor,
    mut changes: mpsc::UnboundedReceiver<ModelChange>,
) {
    let store = store.clone();
    let mut shutdown = sup.shutdown(Stage::Storage);
    sup.spawn(Stage::Storage, "model-changes", async move {
        loop {
            let c = tokio::select! {
                c = changes.recv() => match c {
                    Some(c) => c,
                    // The model thread is gone (shutting down): a task must not end before
                    // its stage is told to.
                    None => {
                        let _ = shutdown.changed().await;
                        break;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let ev = match c {
                ModelChange::Loaded(i) => AuditEvent::new(
                    &Actor::system(),
                    "model.activate",
                    format!("model/{}", i.model_id),
                    Outcome::Success,
                )
                .details(serde_json::json!({
                    "dir": i.dir.display().to_string(),
                    "variant": i.variant,
                    "sha256": &*i.sha256,
                    "provider": i.provider.as_str(),
                })),
                ModelChange::Refused { dir, error } => AuditEvent::new(
                    &Actor::system(),
                    "model.activate",
                    format!("model-dir/{}", dir.display()),
                    Outcome::Failure,
                )
                .details(serde_json::json!({ "error": error })),
            };
            store.call(move |db| db.audit(&ev)).await?;
        }
        Ok::<(), crate::storage::StoreError>(())
    });
}

/// The WAL checkpointer: a PASSIVE checkpoint on a reader connection every second, so no
/// ingest commit or audited read pays for one (when the store has readers).
pub fn wal(store: &Store, sup: &mut Supervisor) {
    if !store.checkpoints_wal() {
        return;
    }
    let store = store.clone();
    let mut shutdown = sup.shutdown(Stage::Storage);
    sup.spawn(Stage::Storage, "wal-checkpointer", async move {
        let mut tick = tokio::time::interval(WAL_CHECKPOINT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return Ok::<(), crate::storage::StoreError>(()),
            }
            let c = store.checkpoint_wal().await?;
            let behind = c.wal_frames - c.checkpointed;
            if behind > WAL_BEHIND_WARN && !warned {
                tracing::warn!(
                    wal_frames = c.wal_frames,
                    behind,
                    "the WAL cannot be checkpointed (a long read holds an old snapshot); it grows until that read ends"
                );
            }
            warned = behind > WAL_BEHIND_WARN;
        }
    });
}

/// The disk-pressure alarm.
pub fn disk(cfg: &Config, store: &Store, sup: &mut Supervisor) {
    let task = crate::disk::DiskWatch {
        store: store.clone(),
        data_dir: cfg.data_dir.clone(),
        alarm_below_mib: cfg.sync.disk_alarm_free_mib,
        every: DISK_CHECK,
    };
    let sd = sup.shutdown(Stage::Storage);
    sup.spawn(Stage::Storage, "disk-watch", task.run(sd));
}

/// The ingest pipeline; returns its shared counters. Committed vitals of bound cases are
/// announced on `retriage`.
pub fn ingest(
    cfg: &Config,
    store: &Store,
    sup: &mut Supervisor,
    retriage: Option<mpsc::UnboundedSender<String>>,
    bus: &Bus,
) -> Result<Arc<IngestMetrics>, ingest::IngestError> {
    let metrics = Arc::new(IngestMetrics::default());
    let (client, eventloop) = ingest::client(cfg, MQTT_REQUESTS)?;
    // Connection → batcher: unbounded so the event loop never blocks; bounded in practice by
    // the broker's in-flight window (docs/decisions/2026-11-23-ingest-backpressure.md).
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (batch_tx, batch_rx) = ingest::handover(mpsc::channel(BATCH_QUEUE));
    // Committer → connection: the last acks are out, the connection may disconnect.
    let (drained_tx, drained_rx) = watch::channel(false);
    let sd = sup.shutdown(Stage::Ingest);
    let conn = ingest::Connection {
        ev: eventloop,
        client: client.clone(),
        to_batcher: in_tx,
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        drained: drained_rx,
    };
    sup.spawn(Stage::Ingest, "mqtt-connection", conn.run(sd));
    let batcher = ingest::Batcher {
        from_conn: in_rx,
        to_committer: batch_tx,
        cfg: cfg.clone(),
        metrics: metrics.clone(),
    };
    sup.spawn(Stage::Ingest, "ingest-batcher", batcher.run());
    let committer = ingest::Committer {
        from_batcher: batch_rx,
        store: store.clone(),
        client,
        cfg: cfg.clone(),
        metrics: metrics.clone(),
        drained: drained_tx,
        retriage,
        bus: bus.clone(),
    };
    sup.spawn(Stage::Ingest, "ingest-committer", committer.run());
    let silence = ingest::SilenceMonitor {
        store: store.clone(),
        gap: Duration::from_secs(cfg.ingest.device_silent_secs.max(1)),
        bus: bus.clone(),
    };
    let sd = sup.shutdown(Stage::Ingest);
    sup.spawn(Stage::Ingest, "device-silence", silence.run(sd));
    let summary = ingest::Summary {
        metrics: metrics.clone(),
        every: Duration::from_secs(cfg.ingest.summary_every_secs.max(1)),
    };
    let sd = sup.shutdown(Stage::Ingest);
    sup.spawn(Stage::Ingest, "ingest-summary", summary.run(sd));
    Ok(metrics)
}

/// The re-triage loop; returns where to announce cases whose vitals changed.
pub fn retriage(
    cfg: &Config,
    store: &Store,
    sup: &mut Supervisor,
    triager: crate::triage::service::Triager,
    bus: &Bus,
    wake_sealer: &Arc<Notify>,
) -> mpsc::UnboundedSender<String> {
    // Case ids only, deduplicated by the loop's debounce: unbounded is bounded by open cases.
    let (tx, rx) = mpsc::unbounded_channel();
    let task = crate::triage::service::Retriage {
        cases: rx,
        store: store.clone(),
        triager,
        debounce: Duration::from_millis(cfg.triage.debounce_ms),
        hold: Duration::from_secs(cfg.triage.deescalate_hold_secs),
        bus: bus.clone(),
        stored: Some(wake_sealer.clone()),
    };
    let sd = sup.shutdown(Stage::Ingest);
    sup.spawn(Stage::Ingest, "retriage", async move {
        task.run(sd).await;
        Ok::<(), TaskError>(())
    });
    tx
}

/// What sync exposes to the rest of the daemon.
pub struct SyncHandles {
    pub metrics: Arc<SyncMetrics>,
    /// Wakes the sealer (a case was closed or handed over, a triage or disposition changed).
    pub wake_sealer: Arc<Notify>,
    /// Wakes the forwarder (sync now).
    pub wake_forwarder: Arc<Notify>,
    /// Connectivity for the forwarder (the NetworkManager follower feeds it).
    pub connectivity: Option<watch::Sender<sync::Connectivity>>,
}

/// The sealer (when the receiver keys are installed) and the forwarder (when a cloud broker is
/// configured too). A cloud broker without receiver keys is a setup error.
pub fn sync(
    cfg: &Config,
    store: &Store,
    sup: &mut Supervisor,
    wake_sealer: Arc<Notify>,
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
    let wake_forwarder = Arc::new(Notify::new());
    let sealer = sync::Sealer {
        cfg: cfg.clone(),
        store: store.clone(),
        keys: keys.clone(),
        metrics: metrics.clone(),
        wake_sealer: wake_sealer.clone(),
        wake_forwarder: wake_forwarder.clone(),
    };
    let sd = sup.shutdown(Stage::Sync);
    sup.spawn(Stage::Sync, "sync-sealer", sealer.run(sd));
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
            sup.shutdown(Stage::Sync),
        )
        .map_err(|e| RunError::SyncSetup(e.to_string()))?;
        sup.spawn(Stage::Sync, "sync-forwarder", fw.run());
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

/// The D-Bus service and NetworkManager follower.
pub fn dbus(
    cfg: &Config,
    store: &Store,
    sup: &mut Supervisor,
    model_status: &ModelStatus,
    sync: Option<&mut SyncHandles>,
    bus: &Bus,
) {
    let ctx = crate::dbus::Ctx {
        store: store.clone(),
        model: model_status.clone(),
        sync: sync.as_ref().map(|s| s.metrics.clone()),
        wake: sync
            .as_ref()
            .map(|s| vec![s.wake_sealer.clone(), s.wake_forwarder.clone()])
            .unwrap_or_default(),
    };
    let svc = crate::dbus::Service {
        cfg: cfg.dbus.clone(),
        ctx,
        bus: bus.clone(),
        connectivity: sync.and_then(|s| s.connectivity.take()),
    };
    let sd = sup.shutdown(Stage::FrontDoors);
    sup.spawn(Stage::FrontDoors, "dbus", async move {
        svc.run(sd).await;
        Ok::<(), TaskError>(())
    });
}

/// What the tablet API needs from the other features.
pub struct ApiLinks {
    pub ingest: Option<Arc<IngestMetrics>>,
    pub retriage: Option<mpsc::UnboundedSender<String>>,
    pub sync_metrics: Option<Arc<SyncMetrics>>,
    pub wake_sealer: Option<Arc<Notify>>,
}

/// The tablet API and its session sweeper; returns the address it listens on. The listener is
/// bound here so that a bad address or certificate fails before READY=1.
pub async fn api(
    cfg: &Config,
    store: &Store,
    sup: &mut Supervisor,
    model_status: &ModelStatus,
    bus: &Bus,
    links: ApiLinks,
) -> Result<std::net::SocketAddr, RunError> {
    let acceptor = api::acceptor(cfg).map_err(|e| RunError::ApiSetup(e.to_string()))?;
    let listener = api::bind(cfg)
        .await
        .map_err(|e| RunError::ApiSetup(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::ApiSetup(e.to_string()))?;
    let mut st = ApiState::new(
        cfg.clone(),
        store.clone(),
        Arc::new(api::session::SystemClock),
        bus.clone(),
        sup.shutdown(Stage::FrontDoors),
    )
    .await
    .map_err(RunError::Setup)?;
    st.ingest = links.ingest;
    st.triage_status = model_status.clone();
    st.retriage = links.retriage;
    st.sync = links.sync_metrics;
    st.wake_sealer = links.wake_sealer;
    let sweeper = api::guard::SessionSweeper {
        st: st.clone(),
        every: SESSION_SWEEP,
    };
    let sd = sup.shutdown(Stage::FrontDoors);
    sup.spawn(Stage::FrontDoors, "api-sessions", sweeper.run(sd));
    let compliance = super::health::ComplianceCheck {
        cfg: st.cfg.clone(),
        latest: st.compliance.clone(),
        every: COMPLIANCE_EVERY,
    };
    let sd = sup.shutdown(Stage::FrontDoors);
    sup.spawn(Stage::FrontDoors, "compliance", compliance.run(sd));
    let server = api::Server {
        listener,
        acceptor,
        st,
    };
    sup.spawn(Stage::FrontDoors, "api", async move {
        server.run().await;
        Ok::<(), TaskError>(())
    });
    Ok(addr)
}
