//! D-Bus: the `org.hema3n.Edge1` service for the EMS IT admin's tools, and the NetworkManager
//! connectivity follower that starts and stops cloud sync. The only module that imports `zbus`.
//!
//! `org.hema3n.Edge1` at `/org/hema3n/Edge1`:
//! - properties: `Status` (s), `OutboxDepth` (t: bundles not yet receipted), `Alarms` (u: open
//!   alarms), `Model` (s: model id and provider, or RULES-ONLY);
//! - methods: `SyncNow()` (seal and upload now), `AcknowledgeAlarm(x id) → b`;
//! - signals: `AlarmRaised(x id, s kind, s case_id, s device_id)`, `TriageChanged(s case_id,
//!   y esi)` (the level of a case changed).
//!
//! Access is decided by the bus policy (`systemd/org.hema3n.Edge1.conf`): the daemon's user owns
//! the name; root and the `hema3n-admin` group may call methods; properties are readable by
//! members of `hema3n-admin`. No PHI crosses the bus: ids, levels and counts only.
//!
//! The bus is optional: without one (a development machine, a test) the daemon logs why and
//! runs on; a stuck bus never blocks ingest or triage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, interface};

use crate::config::DbusConfig;
use crate::events::{Bus, LiveEvent};
use crate::model::Actor;
use crate::storage::Store;
use crate::sync::{Connectivity, SyncMetrics};

pub const NAME: &str = "org.hema3n.Edge1";
pub const PATH: &str = "/org/hema3n/Edge1";

/// What the service reads and pokes.
#[derive(Clone)]
pub struct Ctx {
    pub store: Store,
    pub model: crate::triage::service::ModelStatus,
    pub sync: Option<Arc<SyncMetrics>>,
    /// Wakes the sealer and the forwarder (`SyncNow`).
    pub wake: Vec<Arc<Notify>>,
}

struct Edge1 {
    ctx: Ctx,
}

fn failed(e: impl std::fmt::Display) -> zbus::fdo::Error {
    zbus::fdo::Error::Failed(e.to_string())
}

#[interface(name = "org.hema3n.Edge1")]
impl Edge1 {
    /// One line: store, sync link and alarm state.
    #[zbus(property)]
    async fn status(&self) -> zbus::fdo::Result<String> {
        let alarms = self
            .ctx
            .store
            .call(|db| db.open_alarms())
            .await
            .map_err(failed)?
            .len();
        let sync = self
            .ctx
            .sync
            .as_ref()
            .map(|m| m.state().as_str())
            .unwrap_or("disabled");
        Ok(format!("running; sync {sync}; {alarms} open alarm(s)"))
    }

    #[zbus(property)]
    async fn outbox_depth(&self) -> zbus::fdo::Result<u64> {
        let s = self
            .ctx
            .store
            .call(|db| db.outbox_stats())
            .await
            .map_err(failed)?;
        Ok(s.queued + s.sent)
    }

    #[zbus(property)]
    async fn alarms(&self) -> zbus::fdo::Result<u32> {
        let n = self
            .ctx
            .store
            .call(|db| db.open_alarms())
            .await
            .map_err(failed)?
            .iter()
            .filter(|a| a.acked_at_ms.is_none())
            .count();
        Ok(n as u32)
    }

    #[zbus(property)]
    async fn model(&self) -> String {
        self.ctx.model.get()
    }

    /// Seals closed cases and uploads the outbox now (when connectivity allows).
    async fn sync_now(&self) {
        for w in &self.ctx.wake {
            w.notify_one();
        }
        tracing::info!("sync requested over D-Bus");
    }

    /// Acknowledges an open alarm; false if it is not open or already acknowledged.
    async fn acknowledge_alarm(
        &self,
        id: i64,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> zbus::fdo::Result<bool> {
        let who = hdr
            .sender()
            .map(|s| format!("dbus:{s}"))
            .unwrap_or_else(|| "dbus".into());
        let actor = Actor::new(who, "admin");
        let acked = self
            .ctx
            .store
            .call(move |db| db.acknowledge_alarm(&actor, id))
            .await
            .map_err(failed)?;
        if acked {
            let _ = self.alarms_changed(&emitter).await;
        }
        Ok(acked)
    }

    #[zbus(signal)]
    async fn alarm_raised(
        emitter: &SignalEmitter<'_>,
        id: i64,
        kind: &str,
        case_id: &str,
        device_id: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn triage_changed(
        emitter: &SignalEmitter<'_>,
        case_id: &str,
        esi: u8,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.NetworkManager",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager"
)]
trait NetworkManager {
    #[zbus(property)]
    fn connectivity(&self) -> zbus::Result<u32>;
}

async fn connect(cfg: &DbusConfig) -> zbus::Result<Connection> {
    let b = match cfg.address.as_deref() {
        None | Some("system") => zbus::connection::Builder::system(),
        Some("session") => zbus::connection::Builder::session(),
        Some(a) => zbus::connection::Builder::address(a),
    };
    b.build().await
}

/// The `dbus` task: serves `org.hema3n.Edge1`, re-emits bus events as signals and follows
/// NetworkManager into `connectivity`, until shutdown. Without a bus it logs why and waits for
/// shutdown: D-Bus is never a reason for the daemon to stop.
pub struct Service {
    pub cfg: DbusConfig,
    pub ctx: Ctx,
    pub bus: Bus,
    /// Connectivity for the forwarder, when sync runs (it holds the receiving end).
    pub connectivity: Option<watch::Sender<Connectivity>>,
}

impl Service {
    /// Runs until shutdown.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let Service {
            cfg,
            ctx,
            bus,
            connectivity,
        } = self;
        serve(cfg, ctx, bus, connectivity, shutdown).await;
    }
}

async fn serve(
    cfg: DbusConfig,
    ctx: Ctx,
    bus: Bus,
    connectivity: Option<watch::Sender<Connectivity>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = bus.subscribe();
    let conn = match connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "D-Bus unavailable: org.hema3n.Edge1 not served, NetworkManager not followed (sync retries on its timer)");
            let _ = shutdown.changed().await;
            return;
        }
    };
    let served = async {
        conn.object_server()
            .at(PATH, Edge1 { ctx: ctx.clone() })
            .await?;
        conn.request_name(NAME).await
    }
    .await;
    match served {
        Ok(()) => tracing::info!(name = NAME, "D-Bus service ready"),
        Err(e) => tracing::warn!(error = %e, "cannot own {NAME} (bus policy?); serving nothing"),
    }
    let iface = conn.object_server().interface::<_, Edge1>(PATH).await.ok();
    let follow = cfg.follow_network_manager;
    let follower = async {
        match connectivity {
            Some(tx) if follow => follow_network_manager(&conn, tx).await,
            // Keep the sender alive: the forwarder treats a closed channel as no follower.
            other => {
                let _hold = other;
                std::future::pending::<()>().await
            }
        }
    };
    tokio::pin!(follower);
    let mut levels: HashMap<String, u8> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut follower => {}
            e = events.recv() => {
                let Some(iface) = &iface else { continue };
                let em = iface.signal_emitter();
                match e {
                    Ok(LiveEvent::Triage { case_id, triage }) => {
                        let esi = triage.record.final_esi;
                        if levels.insert(case_id.clone(), esi) != Some(esi) {
                            let _ = Edge1::triage_changed(em, &case_id, esi).await;
                        }
                    }
                    Ok(LiveEvent::Alarm { case_id, alarm }) => {
                        if let Some(a) = alarm {
                            let _ = Edge1::alarm_raised(em, a.id, a.kind.as_str(), &case_id, a.device_id.as_deref().unwrap_or("")).await;
                            let _ = iface.get().await.alarms_changed(em).await;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "D-Bus signal relay lagged");
                    }
                    Err(_) => return,
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Feeds NetworkManager's `Connectivity` into `tx`; retries while NetworkManager is absent.
async fn follow_network_manager(conn: &Connection, tx: watch::Sender<Connectivity>) {
    loop {
        match watch_nm(conn, &tx).await {
            Ok(()) => tracing::info!("NetworkManager went away; connectivity unknown"),
            Err(e) => tracing::debug!(error = %e, "NetworkManager not reachable; retrying"),
        }
        let _ = tx.send(Connectivity::Unknown);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn watch_nm(conn: &Connection, tx: &watch::Sender<Connectivity>) -> zbus::Result<()> {
    let nm = NetworkManagerProxy::new(conn).await?;
    let mut changes = nm.receive_connectivity_changed().await;
    let first = nm.connectivity().await?;
    let mut last = Connectivity::from_nm(first);
    tracing::info!(connectivity = ?last, "following NetworkManager");
    let _ = tx.send(last);
    while let Some(c) = changes.next().await {
        let v = Connectivity::from_nm(c.get().await?);
        if v != last {
            tracing::info!(connectivity = ?v, "NetworkManager connectivity changed");
            last = v;
            let _ = tx.send(v);
        }
    }
    Ok(())
}
