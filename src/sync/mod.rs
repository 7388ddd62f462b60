//! Cloud sync (Contract C): seal closed cases and pre-alerts into the durable outbox, forward
//! them to the cloud broker, and keep custody until the receiver's signed receipt arrives.
//!
//! - [`sealer`]: finds cases that need a bundle or a pre-alert, builds the FHIR bundle
//!   ([`fhir`]) and seals it in the same storage transaction that queues it; queues telemetry;
//!   purges receipted cases after the retention period (crypto-erase).
//! - [`forwarder`]: the upload state machine — `Offline` (waiting for connectivity or the retry
//!   timer) → `CatchUp` (backlog larger than the window) ⇄ `Live` — over an MQTT 5 persistent
//!   session. A row is done only when a valid signed receipt names its bundle id and envelope
//!   hash; PUBACK only marks it `sent`. Unreceipted rows are republished after a timeout and
//!   on every new connection (the receiver is idempotent).
//! - [`transport`]: MQTT 5 options and topics shared with the receiver.
//!
//! Backpressure: the network slows the outbox (at most `sync.window` envelopes unreceipted);
//! storage is the source of truth, so nothing is held only in memory.

pub mod fhir;
pub mod transport;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{Notify, mpsc, watch};

use crate::config::Config;
use crate::crypto::keyring::{KeyError, KeySources};
use crate::crypto::seal::{self, BundleKind, EnvelopeMeta, Receipt, RecipientPublicKey};
use crate::crypto::sign::PublicKey;
use crate::model::{Actor, AuditEvent, Outcome, now_ms};
use crate::storage::{ReceiptOutcome, Store, StoreError};

/// File (key directory or credentials) with the receiver's public keys, made by
/// `hema3n-receiver export-public` and installed by `hema3n-edge keys import-receiver`.
pub const RECEIVER_PUBLIC: &str = "receiver-public.toml";
/// Credential with the appliance's TLS client key (PEM) for mTLS to the cloud broker.
pub const CLOUD_CLIENT_KEY: &str = "cloud-client.key";

/// Errors that stop sync. Each variant says how to recover.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The receiver's public keys are missing or malformed. Recovery: run
    /// `hema3n-edge keys import-receiver FILE`.
    #[error("receiver public keys: {0}")]
    ReceiverKeys(String),
    /// TLS files are unusable. Recovery: fix the named file.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A key file could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storage failed. Recovery: the daemon restarts; the outbox is durable.
    #[error("storage failed during sync")]
    Store(#[from] StoreError),
    /// The configuration is unusable.
    #[error("sync configuration: {0}")]
    Config(String),
}

/// The receiver's public keys as the appliance knows them.
#[derive(Debug, Clone)]
pub struct ReceiverKeys {
    /// Human name of the receiver deployment (for logs).
    pub receiver_id: String,
    /// X25519 key envelopes are sealed to.
    pub hpke: RecipientPublicKey,
    /// ES256 key receipts are signed with.
    pub signing: PublicKey,
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ReceiverKeysFile {
    receiver_id: String,
    hpke_public_key: String,
    signing_public_key: String,
}

impl ReceiverKeys {
    /// Parses the TOML written by `hema3n-receiver export-public`.
    pub fn parse(text: &str) -> Result<Self, SyncError> {
        let f: ReceiverKeysFile =
            toml::from_str(text).map_err(|e| SyncError::ReceiverKeys(e.to_string()))?;
        let raw = hex::decode(f.hpke_public_key.trim())
            .map_err(|_| SyncError::ReceiverKeys("hpke_public_key is not hex".into()))?;
        let hpke = RecipientPublicKey::from_bytes(&raw)
            .map_err(|e| SyncError::ReceiverKeys(e.to_string()))?;
        let signing = PublicKey::from_pem(&f.signing_public_key).ok_or_else(|| {
            SyncError::ReceiverKeys("signing_public_key is not a P-256 PEM public key".into())
        })?;
        Ok(ReceiverKeys {
            receiver_id: f.receiver_id,
            hpke,
            signing,
        })
    }

    /// The TOML form.
    pub fn to_toml(&self) -> String {
        toml::to_string(&ReceiverKeysFile {
            receiver_id: self.receiver_id.clone(),
            hpke_public_key: hex::encode(self.hpke.as_bytes()),
            signing_public_key: self.signing.to_pem(),
        })
        .expect("plain strings serialise")
    }

    /// Loads the installed keys; `Ok(None)` when none are installed yet.
    pub fn load(cfg: &Config) -> Result<Option<Self>, SyncError> {
        let sources = KeySources::from_env(&cfg.keys.dir);
        match sources.read(RECEIVER_PUBLIC) {
            Ok((p, bytes)) => {
                let text = std::str::from_utf8(&bytes).map_err(|_| {
                    SyncError::ReceiverKeys(format!("{} is not UTF-8", p.display()))
                })?;
                Self::parse(text)
                    .map(Some)
                    .map_err(|e| SyncError::ReceiverKeys(format!("{}: {e}", p.display())))
            }
            Err(KeyError::Missing { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// TLS for the cloud broker as `[sync]` configures it (mTLS key: credential `cloud-client.key`).
pub fn cloud_tls(cfg: &Config, tls: bool) -> Result<Option<crate::tls::ClientConfig>, SyncError> {
    crate::tls::for_broker(
        tls,
        cfg.sync.ca_file.as_deref(),
        cfg.sync.client_cert.as_deref(),
        || {
            Ok(KeySources::from_env(&cfg.keys.dir)
                .read(CLOUD_CLIENT_KEY)?
                .1)
        },
    )
}

/// Where the link is, for health, D-Bus and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// Not configured (no cloud broker or no receiver keys).
    Disabled = 0,
    /// Waiting for connectivity or the retry timer.
    Offline = 1,
    /// Connected; the backlog is larger than the window.
    CatchUp = 2,
    /// Connected; everything queued is in flight.
    Live = 3,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Disabled => "disabled",
            LinkState::Offline => "offline",
            LinkState::CatchUp => "catch-up",
            LinkState::Live => "live",
        }
    }
}

/// Connectivity as NetworkManager reports it (`Unknown` without NetworkManager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    Unknown,
    None,
    Limited,
    Full,
}

impl Connectivity {
    /// NetworkManager's `NMConnectivityState` values.
    pub fn from_nm(v: u32) -> Self {
        match v {
            1 => Connectivity::None,
            2 | 3 => Connectivity::Limited,
            4 => Connectivity::Full,
            _ => Connectivity::Unknown,
        }
    }
    /// Whether a connection attempt makes sense.
    pub fn may_try(self) -> bool {
        matches!(self, Connectivity::Unknown | Connectivity::Full)
    }
}

/// Counters of the sync path.
#[derive(Default)]
pub struct SyncMetrics {
    pub state: AtomicU8,
    pub sealed: AtomicU64,
    pub published: AtomicU64,
    pub pubacks: AtomicU64,
    pub receipts: AtomicU64,
    pub receipt_rejects: AtomicU64,
    pub republished: AtomicU64,
    pub connects: AtomicU64,
    pub purged: AtomicU64,
    pub in_flight: AtomicU64,
    pub last_receipt_ms: AtomicI64,
}

impl SyncMetrics {
    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Offline,
            2 => LinkState::CatchUp,
            3 => LinkState::Live,
            _ => LinkState::Disabled,
        }
    }
    fn set_state(&self, s: LinkState) {
        let old = self.state.swap(s as u8, Ordering::Relaxed);
        if old != s as u8 {
            tracing::info!(state = s.as_str(), "sync link state");
        }
    }
}

/// Builds and seals the FHIR bundle of `export` for `slot`.
fn seal_case(
    appliance_id: &str,
    keys: &ReceiverKeys,
    export: &crate::model::CaseExport,
    slot: &crate::storage::OutboxSlot,
    signer: &crate::crypto::sign::SigningKey,
) -> Result<Vec<u8>, String> {
    let profile = match slot.kind {
        BundleKind::Prealert => fhir::Profile::Prealert,
        _ => fhir::Profile::Case,
    };
    let bid = slot.bundle_id.to_string();
    let bundle = fhir::build(export, &bid, profile, slot.created_at_ms);
    let plaintext = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
    seal::seal(
        &envelope_meta(appliance_id, slot),
        &plaintext,
        &keys.hpke,
        signer,
    )
    .map_err(|e| e.to_string())
}

/// The envelope header fields of an outbox slot.
pub fn envelope_meta(appliance_id: &str, slot: &crate::storage::OutboxSlot) -> EnvelopeMeta {
    EnvelopeMeta {
        kind: slot.kind,
        bundle_id: *slot.bundle_id.as_bytes(),
        seq: slot.seq,
        created_at_ms: slot.created_at_ms.max(0) as u64,
        appliance_id: appliance_id.to_string(),
    }
}

/// Seals whatever needs sealing now (one pass). Returns how many envelopes were queued.
///
/// A case that cannot be sealed (a field fails authentication, a key version is missing) is
/// logged once (case id and error: never PHI), remembered in `failed` and skipped until restart:
/// one bad record must not stop every other case from leaving. Storage failures end the task.
pub async fn seal_pending(
    store: &Store,
    appliance_id: &str,
    keys: &ReceiverKeys,
    failed: &mut HashSet<(String, BundleKind)>,
) -> Result<usize, StoreError> {
    let mut n = 0;
    let work = store
        .call(|db| db.seal_work(64))
        .await?
        .into_iter()
        .filter(|w| !failed.contains(&(w.case_id.clone(), w.kind)))
        .collect::<Vec<_>>();
    for w in work {
        let (aid, k) = (appliance_id.to_string(), keys.clone());
        let case = w.case_id.clone();
        let r = store
            .call(move |db| {
                db.enqueue_case_bundle(&Actor::system(), &case, w.kind, |x, slot, signer| {
                    seal_case(&aid, &k, x, slot, signer)
                })
            })
            .await;
        match r {
            Ok(bid) => {
                n += 1;
                tracing::info!(bundle_id = %bid, case_id = %w.case_id, kind = w.kind.as_str(), "bundle sealed and queued");
            }
            Err(StoreError::Erased { .. }) | Err(StoreError::NotFound { .. }) => {}
            Err(e @ (StoreError::Sqlite(_) | StoreError::Closed | StoreError::Io { .. })) => {
                return Err(e);
            }
            Err(e) => {
                tracing::error!(case_id = %w.case_id, kind = w.kind.as_str(), error = %e, "cannot seal this case; skipped until restart");
                failed.insert((w.case_id, w.kind));
            }
        }
    }
    Ok(n)
}

/// Queues one telemetry envelope: appliance health counters, no PHI.
pub async fn queue_telemetry(
    store: &Store,
    appliance_id: &str,
    keys: &ReceiverKeys,
    metrics: &SyncMetrics,
) -> Result<String, StoreError> {
    let stats = store.call(|db| db.outbox_stats()).await?;
    let alarms = store.call(|db| db.open_alarms()).await?.len();
    let body = serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [
            { "name": "appliance_id", "valueString": appliance_id },
            { "name": "at", "valueInstant": crate::model::iso8601_ms(now_ms()) },
            { "name": "version", "valueString": env!("CARGO_PKG_VERSION") },
            { "name": "outbox_queued", "valueInteger": stats.queued },
            { "name": "outbox_sent", "valueInteger": stats.sent },
            { "name": "open_alarms", "valueInteger": alarms },
            { "name": "receipts", "valueInteger": metrics.receipts.load(Ordering::Relaxed) },
        ],
    });
    let plaintext = serde_json::to_vec(&body).expect("json");
    let (aid, k) = (appliance_id.to_string(), keys.clone());
    store
        .call(move |db| {
            db.enqueue_telemetry(|slot, signer| {
                seal::seal(&envelope_meta(&aid, slot), &plaintext, &k.hpke, signer)
                    .map_err(|e| e.to_string())
            })
        })
        .await
}

/// The sealer task: seals on wake-ups and every second, queues telemetry, purges after
/// retention, raises the disk-pressure alarm. Wakes the forwarder when it queued something.
pub async fn sealer(
    cfg: Config,
    store: Store,
    keys: ReceiverKeys,
    metrics: Arc<SyncMetrics>,
    wake_sealer: Arc<Notify>,
    wake_forwarder: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let telemetry_every = Duration::from_secs(cfg.sync.telemetry_interval_secs);
    let mut next_telemetry = Instant::now() + telemetry_every;
    let mut next_purge = Instant::now();
    let mut next_disk_check = Instant::now();
    let retention_ms = (cfg.sync.retention_hours * 3_600_000.0) as i64;
    let mut failed = HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake_sealer.notified() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let n = seal_pending(&store, &cfg.appliance_id, &keys, &mut failed).await?;
        if n > 0 {
            metrics.sealed.fetch_add(n as u64, Ordering::Relaxed);
            wake_forwarder.notify_one();
        }
        if !telemetry_every.is_zero() && Instant::now() >= next_telemetry {
            next_telemetry = Instant::now() + telemetry_every;
            queue_telemetry(&store, &cfg.appliance_id, &keys, &metrics).await?;
            wake_forwarder.notify_one();
        }
        if Instant::now() >= next_disk_check {
            next_disk_check = Instant::now() + Duration::from_secs(60);
            check_disk(&cfg, &store).await?;
        }
        if Instant::now() >= next_purge {
            next_purge = Instant::now()
                + Duration::from_secs(60.min(cfg.sync.retention_hours as u64 * 3600).max(1));
            let purged = store
                .call(move |db| db.purge_receipted(retention_ms, now_ms()))
                .await?;
            if purged > 0 {
                metrics.purged.fetch_add(purged as u64, Ordering::Relaxed);
                tracing::info!(
                    cases = purged,
                    "receipted cases crypto-erased after retention"
                );
            }
        }
    }
}

/// Raises or clears the disk-pressure alarm for the data directory. Nothing is ever dropped to
/// make room: PHI waits in the outbox, and the alarm asks a human to act.
async fn check_disk(cfg: &Config, store: &Store) -> Result<(), SyncError> {
    let limit = cfg.sync.disk_alarm_free_mib.saturating_mul(1 << 20);
    let free = match crate::host::free_bytes(&cfg.data_dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, dir = %cfg.data_dir.display(), "cannot read free disk space");
            return Ok(());
        }
    };
    let active = free < limit;
    let detail = format!(
        "{} MiB free in {} (alarm below {} MiB)",
        free >> 20,
        cfg.data_dir.display(),
        cfg.sync.disk_alarm_free_mib
    );
    let d = detail.clone();
    let changed = store
        .call(move |db| db.set_appliance_alarm(crate::storage::ALARM_DISK_PRESSURE, active, &d))
        .await?;
    if changed && active {
        tracing::error!(%detail, "ALARM disk pressure: make room; nothing is dropped");
    } else if changed {
        tracing::info!(%detail, "disk pressure cleared");
    }
    Ok(())
}

/// What the connection half hands to the forwarding half.
enum LinkEvent {
    Connected {
        session_present: bool,
    },
    /// Our publish request got packet id `pkid` (in request order).
    Assigned(u16),
    PubAck {
        pkid: u16,
        ok: bool,
    },
    Receipt(Publish),
    SubAck,
    Lost(String),
}

/// Full-jitter exponential back-off.
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        let mut b = [0u8; 8];
        let _ = crate::crypto::random_bytes(&mut b);
        let r = u64::from_le_bytes(b) as f64 / u64::MAX as f64;
        self.min.min(cap) / 2 + cap.mul_f64(r) / 2
    }
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The forwarder: the upload state machine.
pub struct Forwarder {
    pub cfg: Config,
    pub store: Store,
    pub keys: ReceiverKeys,
    pub metrics: Arc<SyncMetrics>,
    /// Notified by the sealer (new rows) and by `sync now` (D-Bus, CLI).
    pub wake: Arc<Notify>,
    /// Fed by the NetworkManager follower; stays `Unknown` without it.
    pub connectivity: watch::Receiver<Connectivity>,
    pub shutdown: watch::Receiver<bool>,
}

impl Forwarder {
    /// Runs until shutdown.
    pub async fn run(mut self) -> Result<(), SyncError> {
        let broker = self
            .cfg
            .sync
            .broker()
            .map_err(|e| SyncError::Config(e.to_string()))?
            .ok_or_else(|| SyncError::Config("sync.cloud_broker is not set".into()))?;
        let tls = cloud_tls(&self.cfg, broker.tls)?;
        let client_id = self
            .cfg
            .sync
            .client_id
            .clone()
            .unwrap_or_else(|| format!("hema3n-edge-{}-sync", self.cfg.appliance_id));
        let mut backoff = Backoff {
            min: Duration::from_millis(self.cfg.sync.backoff_min_ms.max(10)),
            max: Duration::from_millis(self.cfg.sync.backoff_max_ms.max(100)),
            attempt: 0,
        };
        loop {
            // Offline: wait for a reason to try.
            self.metrics.set_state(LinkState::Offline);
            if !self.offline().await {
                return Ok(());
            }
            let (client, ev) = transport::client(
                &client_id,
                &broker,
                tls.clone(),
                self.cfg.sync.keep_alive_secs,
                self.cfg.sync.window + MQTT_REQUESTS,
            );
            match self.online(client, ev, &mut backoff).await? {
                Exit::Shutdown => return Ok(()),
                Exit::Lost(why) => {
                    let wait = backoff.next();
                    tracing::warn!(reason = %why, retry_in_ms = wait.as_millis() as u64, "cloud broker connection lost");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.shutdown.changed() => return Ok(()),
                    }
                }
                Exit::NoConnectivity => {}
            }
        }
    }

    /// Waits until connectivity allows a try (immediately if it already does). Returns false on
    /// shutdown.
    async fn offline(&mut self) -> bool {
        let retry = Duration::from_secs(self.cfg.sync.retry_interval_secs.max(1));
        loop {
            if *self.shutdown.borrow() {
                return false;
            }
            if self.connectivity.borrow().may_try() {
                return true;
            }
            tokio::select! {
                _ = self.connectivity.changed() => {}
                _ = tokio::time::sleep(retry) => {}
                _ = self.wake.notified() => {}
                _ = self.shutdown.changed() => return false,
            }
        }
    }

    /// Connected states (`CatchUp`/`Live`) for one connection.
    async fn online(
        &mut self,
        client: AsyncClient,
        mut ev: EventLoop,
        backoff: &mut Backoff,
    ) -> Result<Exit, SyncError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let conn = drive(&mut ev, tx);
        tokio::pin!(conn);
        let mut s = Session::new(self.cfg.appliance_id.clone(), self.cfg.sync.window);
        let timeout = Duration::from_secs(self.cfg.sync.receipt_timeout_secs.max(1));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut connected = false;
        loop {
            tokio::select! {
                lost = &mut conn => return Ok(Exit::Lost(lost)),
                e = rx.recv() => {
                    let Some(first) = e else { return Ok(Exit::Lost("event loop ended".into())) };
                    // Handle everything already waiting as one batch: receipts commit together.
                    let mut batch = vec![first];
                    while batch.len() < 4096 {
                        match rx.try_recv() {
                            Ok(e) => batch.push(e),
                            Err(_) => break,
                        }
                    }
                    let mut refill = false;
                    for e in batch {
                        match e {
                            LinkEvent::Connected { session_present } => {
                                connected = true;
                                backoff.reset();
                                self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(session_present, "connected to cloud broker");
                                let topic = transport::receipts_topic(&self.cfg.appliance_id);
                                if let Err(e) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                                    return Ok(Exit::Lost(e.to_string()));
                                }
                            }
                            LinkEvent::SubAck => {
                                s.subscribed = true;
                                refill = true;
                            }
                            LinkEvent::Assigned(pkid) => s.assigned(pkid),
                            LinkEvent::PubAck { pkid, ok } => {
                                if let Some(bid) = s.pkids.remove(&pkid) {
                                    if ok {
                                        s.to_mark_sent.push(bid);
                                        self.metrics.pubacks.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        tracing::warn!(bundle_id = %bid, "cloud broker refused a bundle; it will be republished");
                                    }
                                }
                            }
                            LinkEvent::Receipt(p) => s.receipts.push(p),
                            LinkEvent::Lost(why) => return Ok(Exit::Lost(why)),
                        }
                    }
                    if !s.receipts.is_empty() {
                        self.apply_receipts(&client, &mut s).await?;
                        refill = true;
                    }
                    if refill && s.subscribed {
                        self.fill(&client, &mut s).await?;
                    }
                }
                _ = tick.tick() => {
                    s.flush_acks(&client);
                    self.flush_sent(&mut s).await?;
                    let now = Instant::now();
                    let before = s.in_flight.len();
                    s.in_flight.retain(|_, t| now.duration_since(*t) < timeout);
                    let expired = before - s.in_flight.len();
                    if expired > 0 {
                        self.metrics.republished.fetch_add(expired as u64, Ordering::Relaxed);
                    }
                    if connected && s.subscribed {
                        self.fill(&client, &mut s).await?;
                    }
                }
                _ = self.wake.notified() => {
                    if connected && s.subscribed {
                        self.fill(&client, &mut s).await?;
                    }
                }
                _ = self.connectivity.changed() => {
                    if !self.connectivity.borrow().may_try() {
                        tracing::info!("connectivity lost (NetworkManager); sync paused");
                        let _ = client.try_disconnect();
                        return Ok(Exit::NoConnectivity);
                    }
                }
                _ = self.shutdown.changed() => {
                    let _ = self.flush_sent(&mut s).await;
                    let _ = client.try_disconnect();
                    return Ok(Exit::Shutdown);
                }
            }
        }
    }

    /// Records the PUBACKs seen since the last flush (`sent`, audited).
    async fn flush_sent(&self, s: &mut Session) -> Result<(), StoreError> {
        if s.to_mark_sent.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut s.to_mark_sent);
        self.store.call(move |db| db.outbox_mark_sent(&ids)).await
    }

    /// Publishes queued rows up to the window, highest priority first.
    async fn fill(&self, client: &AsyncClient, s: &mut Session) -> Result<(), SyncError> {
        let room = s.window.saturating_sub(s.in_flight.len());
        if room == 0 {
            self.metrics.set_state(LinkState::CatchUp);
            return Ok(());
        }
        let exclude: HashSet<String> = s.in_flight.keys().cloned().collect();
        let items = self
            .store
            .call(move |db| db.outbox_queued(room, &exclude))
            .await?;
        let backlog = items.len() == room;
        for it in items {
            let props = PublishProperties {
                response_topic: Some(transport::receipts_topic(&s.appliance_id)),
                correlation_data: Some(it.bundle_id.clone().into_bytes().into()),
                content_type: Some("application/vnd.hema3n.envelope.v1".into()),
                ..Default::default()
            };
            // Never await the client here: this task also drives the event loop (`drive`),
            // which is not polled while a handler runs. A full request queue ends this round;
            // the row is picked up again on the next fill.
            if client
                .try_publish_with_properties(
                    transport::bundles_topic(&s.appliance_id),
                    QoS::AtLeastOnce,
                    false,
                    it.envelope,
                    props,
                )
                .is_err()
            {
                break;
            }
            s.requested.push_back(it.bundle_id.clone());
            s.in_flight.insert(it.bundle_id, Instant::now());
            self.metrics.published.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .in_flight
            .store(s.in_flight.len() as u64, Ordering::Relaxed);
        self.metrics.set_state(if backlog {
            LinkState::CatchUp
        } else {
            LinkState::Live
        });
        Ok(())
    }

    /// Verifies the collected receipts, commits them in one transaction, then acks them.
    async fn apply_receipts(&self, client: &AsyncClient, s: &mut Session) -> Result<(), SyncError> {
        let publishes = std::mem::take(&mut s.receipts);
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        for p in &publishes {
            match Receipt::verify(&p.payload, &self.keys.signing) {
                Ok(r) if r.appliance_id == self.cfg.appliance_id => {
                    let bid = uuid::Uuid::from_bytes(r.bundle_id).to_string();
                    valid.push((bid, r.envelope_sha256, p.payload.to_vec()));
                }
                Ok(_) => invalid.push("receipt for another appliance".to_string()),
                Err(e) => invalid.push(format!("{} ({})", e, e.code())),
            }
        }
        if !invalid.is_empty() {
            self.metrics
                .receipt_rejects
                .fetch_add(invalid.len() as u64, Ordering::Relaxed);
            for why in &invalid {
                tracing::warn!(reason = %why, "invalid receipt ignored");
            }
            let evs: Vec<AuditEvent> = invalid
                .into_iter()
                .map(|why| {
                    AuditEvent::new(
                        &Actor::system(),
                        "bundle.receipt_invalid",
                        "receipt/unknown",
                        Outcome::Failure,
                    )
                    .details(serde_json::json!({ "reason": why }))
                })
                .collect();
            self.store.call(move |db| db.audit_many(&evs)).await?;
        }
        if !valid.is_empty() {
            // Marks for PUBACKs we saw must land first so `sent` precedes `receipted` in the trail.
            self.flush_sent(s).await?;
            let ids: Vec<String> = valid.iter().map(|v| v.0.clone()).collect();
            let outcomes = self
                .store
                .call(move |db| db.outbox_apply_receipts(&valid))
                .await?;
            for (bid, o) in ids.iter().zip(outcomes) {
                s.in_flight.remove(bid);
                match o {
                    ReceiptOutcome::Receipted => {
                        self.metrics.receipts.fetch_add(1, Ordering::Relaxed);
                        self.metrics
                            .last_receipt_ms
                            .store(now_ms(), Ordering::Relaxed);
                        tracing::debug!(bundle_id = %bid, "bundle receipted");
                    }
                    ReceiptOutcome::AlreadyReceipted => {}
                    other => {
                        self.metrics.receipt_rejects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(bundle_id = %bid, outcome = ?other, "receipt does not match our outbox");
                    }
                }
            }
        }
        // Acknowledge only after the commit above.
        s.acks.extend(publishes);
        s.flush_acks(client);
        self.metrics
            .in_flight
            .store(s.in_flight.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Requests waiting for the cloud event loop beyond the window (acks, subscriptions).
const MQTT_REQUESTS: usize = 1024;

enum Exit {
    Shutdown,
    Lost(String),
    NoConnectivity,
}

/// Per-connection bookkeeping of the forwarder.
struct Session {
    appliance_id: String,
    window: usize,
    /// Bundle ids published and not yet receipted, with when they were (re)published.
    in_flight: HashMap<String, Instant>,
    /// Publish requests in the order the event loop will assign packet ids to them.
    requested: VecDeque<String>,
    /// Packet id → bundle id, until PUBACK.
    pkids: HashMap<u16, String>,
    to_mark_sent: Vec<String>,
    receipts: Vec<Publish>,
    /// Receipts committed and waiting for room in the request queue to be acknowledged.
    acks: VecDeque<Publish>,
    subscribed: bool,
}

impl Session {
    fn new(appliance_id: String, window: usize) -> Self {
        Session {
            appliance_id,
            window,
            in_flight: HashMap::new(),
            requested: VecDeque::new(),
            pkids: HashMap::new(),
            to_mark_sent: Vec::new(),
            receipts: Vec::new(),
            acks: VecDeque::new(),
            subscribed: false,
        }
    }
    /// Hands committed receipts' acks to the client without waiting.
    fn flush_acks(&mut self, client: &AsyncClient) {
        while let Some(p) = self.acks.front() {
            if client.try_ack(p).is_err() {
                return;
            }
            self.acks.pop_front();
        }
    }

    fn assigned(&mut self, pkid: u16) {
        if let Some(bid) = self.requested.pop_front() {
            self.pkids.insert(pkid, bid);
        }
    }
}

/// Polls the event loop and forwards what matters; never blocks in it. Returns why the
/// connection ended.
async fn drive(ev: &mut EventLoop, tx: mpsc::UnboundedSender<LinkEvent>) -> String {
    loop {
        let e = match ev.poll().await {
            Ok(e) => e,
            Err(e) => return e.to_string(),
        };
        let out = match e {
            Event::Incoming(Packet::ConnAck(a)) => Some(LinkEvent::Connected {
                session_present: a.session_present,
            }),
            Event::Incoming(Packet::SubAck(_)) => Some(LinkEvent::SubAck),
            Event::Incoming(Packet::PubAck(a)) => Some(LinkEvent::PubAck {
                pkid: a.pkid,
                ok: matches!(
                    a.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ),
            }),
            Event::Incoming(Packet::Publish(p)) => Some(LinkEvent::Receipt(p)),
            Event::Incoming(Packet::Disconnect(d)) => Some(LinkEvent::Lost(format!(
                "broker disconnected: {:?}",
                d.reason_code
            ))),
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Assigned(pkid)),
            _ => None,
        };
        if let Some(o) = out
            && tx.send(o).is_err()
        {
            return "forwarder gone".into();
        }
    }
}
