//! The cloud receiver (`hema3n-receiver`): takes sealed bundles from the cloud broker through a
//! shared subscription, verifies the appliance signature against registered keys, opens the
//! envelope, stores the FHIR bundle idempotently on (appliance id, bundle id), and only then
//! publishes a signed receipt to the appliance's Response Topic and acknowledges the message.
//! Rejects are stored and logged with their reason and never receipted.
//!
//! Keys (0600 files in `keys_dir`, or systemd credentials): `receiver-hpke.key` (X25519, hex),
//! `receiver-signing.p8` (ES256 PKCS#8), `receiver-db.key` (SQLCipher, hex).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::config::{BrokerUrl, ConfigError, parse_broker_url};
use crate::crypto::keyring::{KeyError, KeySources, write_secret};
use crate::crypto::seal::{self, Receipt, ReceiptStatus, RecipientSecretKey};
use crate::crypto::sign::{PublicKey, SigningKey};
use crate::storage::receiver::{ReceivedBundle, ReceiverDb, StoreOutcome};
use crate::storage::{Owned, Owner};
use crate::sync::{ReceiverKeys, transport};

pub const HPKE_KEY: &str = "receiver-hpke.key";
pub const SIGNING_KEY: &str = "receiver-signing.p8";
pub const DB_KEY: &str = "receiver-db.key";
/// Credential with the receiver's TLS client key (PEM), when the broker requires mTLS.
pub const CLIENT_KEY: &str = "receiver-client.key";

/// `receiver.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Name of this receiver deployment (shown to appliances). Default `hema3n-cloud`.
    pub receiver_id: String,
    /// Database (SQLCipher) file. Default `/var/lib/hema3n-receiver/receiver.db`.
    pub database: PathBuf,
    /// Directory of key files (credentials directory first). Default `/etc/hema3n-receiver/keys`.
    pub keys_dir: PathBuf,
    /// Cloud broker, `mqtts://host:port` or (with `allow_plaintext`) `mqtt://host:port`.
    pub broker: String,
    pub allow_plaintext: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    /// Client id; each receiver instance needs its own. Default `hema3n-receiver-<hostname>`.
    pub client_id: Option<String>,
    /// Shared-subscription group. Default `receivers`.
    pub share_group: String,
    /// Largest batch committed in one transaction. Default 512.
    pub batch_max: usize,
    pub keep_alive_secs: u64,
    /// Reconnect back-off bounds, milliseconds. Defaults 200 and 10000.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            receiver_id: "hema3n-cloud".into(),
            database: "/var/lib/hema3n-receiver/receiver.db".into(),
            keys_dir: "/etc/hema3n-receiver/keys".into(),
            broker: "mqtts://127.0.0.1:8883".into(),
            allow_plaintext: false,
            ca_file: None,
            client_cert: None,
            client_id: None,
            share_group: "receivers".into(),
            batch_max: 512,
            keep_alive_secs: 30,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
        }
    }
}

/// Receiver errors. Each says how to recover.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The configuration file is unusable. Recovery: fix it (exit 78).
    #[error("{path}: {why}")]
    Config { path: PathBuf, why: String },
    #[error(transparent)]
    Invalid(Box<ConfigError>),
    /// A key is missing or malformed. Recovery: `hema3n-receiver init` or restore the key.
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("key {name}: {why}")]
    BadKey { name: &'static str, why: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The database failed. Recovery: restart; unacknowledged messages are redelivered.
    #[error(transparent)]
    Store(Box<crate::storage::StoreError>),
    #[error("{0}")]
    Io(String),
}

impl From<crate::storage::StoreError> for ReceiverError {
    fn from(e: crate::storage::StoreError) -> Self {
        ReceiverError::Store(Box::new(e))
    }
}

impl From<ConfigError> for ReceiverError {
    fn from(e: ConfigError) -> Self {
        ReceiverError::Invalid(Box::new(e))
    }
}

impl ReceiverError {
    /// Exit code: 78 for setup problems, 1 for runtime failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReceiverError::Store(e) if !e.is_config() => 1,
            ReceiverError::Io(_) => 1,
            _ => 78,
        }
    }
}

impl ReceiverConfig {
    pub fn load(path: &Path) -> Result<Self, ReceiverError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReceiverError::Config {
            path: path.into(),
            why: e.to_string(),
        })?;
        let mut c: ReceiverConfig = toml::from_str(&text).map_err(|e| ReceiverError::Config {
            path: path.into(),
            why: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.database, &mut c.keys_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [&mut c.ca_file, &mut c.client_cert].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.broker_url()?;
        Ok(c)
    }

    pub fn broker_url(&self) -> Result<BrokerUrl, ConfigError> {
        let b = parse_broker_url(&self.broker).ok_or_else(|| ConfigError::Invalid {
            field: "broker",
            reason: format!(
                "`{}` is not mqtts://host:port or mqtt://host:port",
                self.broker
            ),
        })?;
        if !b.tls && !self.allow_plaintext {
            return Err(ConfigError::Invalid {
                field: "broker",
                reason: "plain mqtt:// needs allow_plaintext = true (loopback development only)"
                    .into(),
            });
        }
        if b.tls && self.ca_file.is_none() {
            return Err(ConfigError::Invalid {
                field: "ca_file",
                reason: "mqtts:// needs the broker's CA".into(),
            });
        }
        Ok(b)
    }
}

/// The receiver's long-lived keys.
pub struct Keys {
    pub hpke: RecipientSecretKey,
    pub signing: SigningKey,
    pub db_key: zeroize::Zeroizing<[u8; 32]>,
    pub db_key_path: PathBuf,
}

impl Keys {
    pub fn load(dir: &Path) -> Result<Self, ReceiverError> {
        let src = KeySources::from_env(dir);
        let (_, h) = src.read_key32(HPKE_KEY)?;
        let hpke = RecipientSecretKey::from_bytes(&h).map_err(|e| ReceiverError::BadKey {
            name: HPKE_KEY,
            why: e.to_string(),
        })?;
        let (_, der) = src.read(SIGNING_KEY)?;
        let signing =
            SigningKey::from_pkcs8(SIGNING_KEY, &der).map_err(|e| ReceiverError::BadKey {
                name: SIGNING_KEY,
                why: e.to_string(),
            })?;
        let (db_key_path, db_key) = src.read_key32(DB_KEY)?;
        Ok(Keys {
            hpke,
            signing,
            db_key,
            db_key_path,
        })
    }

    /// The public half appliances import (`receiver-public.toml`).
    pub fn public(&self, receiver_id: &str) -> ReceiverKeys {
        ReceiverKeys {
            receiver_id: receiver_id.into(),
            hpke: self.hpke.public().clone(),
            signing: self.signing.public(),
        }
    }
}

/// `hema3n-receiver init`: keys (never overwritten) and a `receiver.toml` in `dir`.
pub fn init(
    dir: &Path,
    broker: &str,
    receiver_id: &str,
    ca_file: Option<&Path>,
) -> Result<PathBuf, ReceiverError> {
    let keys = dir.join("keys");
    if !keys.join(HPKE_KEY).exists() {
        let (_, raw) = RecipientSecretKey::generate();
        let mut text = zeroize::Zeroizing::new(hex::encode(raw.as_ref()).into_bytes());
        text.push(b'\n');
        write_secret(&keys, HPKE_KEY, &text)?;
    }
    if !keys.join(SIGNING_KEY).exists() {
        let der = SigningKey::generate_pkcs8().map_err(|e| ReceiverError::BadKey {
            name: SIGNING_KEY,
            why: e.to_string(),
        })?;
        write_secret(&keys, SIGNING_KEY, &der)?;
    }
    crate::crypto::keyring::ensure_key32(&keys, DB_KEY)?;
    let cfg_path = dir.join("receiver.toml");
    if !cfg_path.exists() {
        let c = ReceiverConfig {
            receiver_id: receiver_id.into(),
            database: "receiver.db".into(),
            keys_dir: "keys".into(),
            broker: broker.into(),
            allow_plaintext: broker.starts_with("mqtt://"),
            ca_file: ca_file.map(Path::to_path_buf),
            ..Default::default()
        };
        let text = format!(
            "# hema3n-receiver configuration (created by `hema3n-receiver init`).\n# Keys live in keys/ (0600); never put secrets here.\n{}",
            toml::to_string_pretty(&c).expect("config serialises")
        );
        std::fs::write(&cfg_path, text).map_err(|e| ReceiverError::Io(e.to_string()))?;
    }
    // Check the config we (or someone) wrote parses.
    ReceiverConfig::load(&cfg_path)?;
    Ok(cfg_path)
}

/// Counters of one receiver run.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub stored: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub rejects: u64,
}

impl Counters {
    fn add(&mut self, d: &Counters) {
        self.stored += d.stored;
        self.duplicates += d.duplicates;
        self.conflicts += d.conflicts;
        self.rejects += d.rejects;
    }
}

/// Runs the receiver until `shutdown`.
pub async fn run(
    cfg: ReceiverConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Counters, ReceiverError> {
    let keys = Keys::load(&cfg.keys_dir)?;
    let db = ReceiverDb::open(&cfg.database, &keys.db_key, &keys.db_key_path)?;
    let broker = cfg.broker_url()?;
    let tls = crate::tls::for_broker(
        broker.tls,
        cfg.ca_file.as_deref(),
        cfg.client_cert.as_deref(),
        || Ok::<_, ReceiverError>(KeySources::from_env(&cfg.keys_dir).read(CLIENT_KEY)?.1),
    )?;
    let client_id = cfg.client_id.clone().unwrap_or_else(|| {
        format!(
            "hema3n-receiver-{}",
            std::fs::read_to_string("/etc/hostname")
                .unwrap_or_else(|_| "host".into())
                .trim()
        )
    });
    let filter = format!("$share/{}/hema3n/v1/edge/+/bundles", cfg.share_group);
    tracing::info!(receiver_id = %cfg.receiver_id, broker = %cfg.broker, filter = %filter, "receiver starting");
    // Verifying, opening and storing run on the database's owner thread (`receiver-db`), never
    // in this async loop, which only moves packets and acks.
    let (custody, thread) = Owner::spawn(
        Custody {
            db,
            keys,
            key_cache: HashMap::new(),
        },
        CUSTODY_QUEUE,
    );
    let r = serve(
        &cfg,
        &custody,
        &client_id,
        &broker,
        tls,
        &filter,
        &mut shutdown,
    )
    .await;
    drop(custody);
    let joined = tokio::task::spawn_blocking(move || thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        return Err(ReceiverError::Io(
            "the receiver database thread panicked".into(),
        ));
    }
    r
}

/// Jobs queued for the receiver's database thread (one per batch of envelopes).
const CUSTODY_QUEUE: usize = 4;

/// The receiver's database and keys, held by one thread.
struct Custody {
    db: ReceiverDb,
    keys: Keys,
    /// Appliance public keys already read from the database.
    key_cache: HashMap<String, PublicKey>,
}

impl Owned for Custody {
    const THREAD: &'static str = "receiver-db";
    fn close(&mut self) {
        tracing::info!("receiver database closed");
    }
}

/// Connections to the cloud broker until shutdown, reconnecting with the shared back-off.
async fn serve(
    cfg: &ReceiverConfig,
    custody: &Owner<Custody>,
    client_id: &str,
    broker: &crate::config::BrokerUrl,
    tls: Option<crate::tls::ClientConfig>,
    filter: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Counters, ReceiverError> {
    let mut counters = Counters::default();
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.reconnect_min_ms.max(10)),
        Duration::from_millis(cfg.reconnect_max_ms.max(100)),
    );
    loop {
        let (client, mut ev) =
            transport::client(client_id, broker, tls.clone(), cfg.keep_alive_secs, 4096);
        let link = Link {
            client: &client,
            ev: &mut ev,
            filter,
        };
        let r = session(cfg, custody, link, &mut counters, shutdown, &mut backoff).await?;
        match r {
            None => return Ok(counters),
            Some(why) => {
                let wait = backoff.next_wait();
                tracing::warn!(reason = %why, retry_in_ms = wait.as_millis() as u64, "cloud broker connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(counters),
                }
            }
        }
    }
}

/// One connection to the cloud broker.
struct Link<'a> {
    client: &'a AsyncClient,
    ev: &'a mut EventLoop,
    /// The shared subscription.
    filter: &'a str,
}

/// One connection. `Ok(None)` on shutdown, `Ok(Some(reason))` when the connection was lost.
async fn session(
    cfg: &ReceiverConfig,
    custody: &Owner<Custody>,
    link: Link<'_>,
    counters: &mut Counters,
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<Option<String>, ReceiverError> {
    let Link { client, ev, filter } = link;
    let mut pending: Vec<Publish> = Vec::new();
    // Receipts and acks waiting for room in the client's request queue (in order).
    let mut out: VecDeque<Out> = VecDeque::new();
    loop {
        flush(client, &mut out);
        // Poll until something arrives, then take what is immediately ready as one batch.
        let first = tokio::select! {
            r = ev.poll() => r,
            _ = shutdown.changed() => {
                let _ = client.try_disconnect();
                return Ok(None);
            }
        };
        let mut events = vec![first];
        while events.len() < cfg.batch_max {
            match tokio::time::timeout(Duration::ZERO, ev.poll()).await {
                Ok(r) => {
                    let err = r.is_err();
                    events.push(r);
                    if err {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let mut lost = None;
        for e in events {
            match e {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    backoff.reset();
                    tracing::info!(
                        session_present = a.session_present,
                        "connected to cloud broker"
                    );
                    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        lost = Some(e.to_string());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    tracing::info!(filter, "subscribed to bundles");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => pending.push(p),
                Ok(_) => {}
                Err(e) => lost = Some(e.to_string()),
            }
        }
        if !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            let (outs, delta) = custody.call(move |c| Ok(process(c, &batch))).await??;
            counters.add(&delta);
            out.extend(outs);
            flush(client, &mut out);
        }
        if let Some(why) = lost {
            return Ok(Some(why));
        }
    }
}

/// A request for the event loop, queued until the client has room.
enum Out {
    Receipt {
        topic: String,
        bytes: Vec<u8>,
        props: PublishProperties,
    },
    Ack(Publish),
}

/// Hands queued receipts and acks to the client without blocking; what does not fit waits for
/// the next round (the event loop drains the queue while `session` polls it).
fn flush(client: &AsyncClient, out: &mut VecDeque<Out>) {
    while let Some(o) = out.pop_front() {
        let r = match &o {
            Out::Receipt {
                topic,
                bytes,
                props,
            } => client.try_publish_with_properties(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                bytes.clone(),
                props.clone(),
            ),
            Out::Ack(p) => client.try_ack(p),
        };
        if r.is_err() {
            out.push_front(o);
            return;
        }
    }
}

/// On the database thread: verifies, opens and stores a batch; returns the receipts (made after
/// the commit) and then the acks, in the order to send them, and what happened.
fn process(
    custody: &mut Custody,
    batch: &[Publish],
) -> Result<(Vec<Out>, Counters), ReceiverError> {
    let Custody {
        db,
        keys,
        key_cache,
    } = custody;
    let mut counters = Counters::default();
    let mut out = Vec::new();
    let mut accepted: Vec<(usize, ReceivedBundle)> = Vec::new();
    let mut rejects = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        let topic = String::from_utf8_lossy(&p.topic).to_string();
        let sha = crate::crypto::sha256(&p.payload);
        match open_one(keys, db, key_cache, &topic, &p.payload, sha) {
            Ok(b) => accepted.push((i, b)),
            Err((app, code, msg)) => {
                tracing::warn!(topic = %topic, appliance_id = app.as_deref().unwrap_or("?"), code, reason = %msg, "envelope rejected");
                rejects.push((topic, app, code.to_string(), msg, sha));
            }
        }
    }
    if !rejects.is_empty() {
        counters.rejects += rejects.len() as u64;
        db.record_rejects(&rejects)?;
    }
    let items: Vec<ReceivedBundle> = accepted.iter().map(|(_, b)| b.clone()).collect();
    let outcomes = if items.is_empty() {
        vec![]
    } else {
        db.store_batch(&items)?
    };
    // Committed: now receipts, then acks.
    for ((i, b), o) in accepted.iter().zip(outcomes) {
        let status = match o {
            StoreOutcome::Stored => {
                counters.stored += 1;
                ReceiptStatus::Stored
            }
            StoreOutcome::Duplicate => {
                counters.duplicates += 1;
                ReceiptStatus::Duplicate
            }
            StoreOutcome::Conflict => {
                counters.conflicts += 1;
                tracing::error!(appliance_id = %b.appliance_id, bundle_id = %b.bundle_id, "ALARM: same bundle id with different content; not receipted");
                continue;
            }
        };
        let receipt = Receipt {
            status,
            bundle_id: *b.bundle_id.as_bytes(),
            envelope_sha256: b.envelope_sha256,
            seq: b.seq,
            receipted_at_ms: crate::model::now_ms().max(0) as u64,
            signer_key_id: [0; 8],
            appliance_id: b.appliance_id.clone(),
        }
        .sign(&keys.signing)
        .map_err(|e| ReceiverError::Io(e.to_string()))?;
        let p = &batch[*i];
        let topic = p
            .properties
            .as_ref()
            .and_then(|pp| pp.response_topic.clone())
            .filter(|t| *t == transport::receipts_topic(&b.appliance_id))
            .unwrap_or_else(|| transport::receipts_topic(&b.appliance_id));
        let props = PublishProperties {
            correlation_data: p
                .properties
                .as_ref()
                .and_then(|pp| pp.correlation_data.clone()),
            content_type: Some("application/vnd.hema3n.receipt.v1".into()),
            ..Default::default()
        };
        out.push(Out::Receipt {
            topic,
            bytes: receipt,
            props,
        });
    }
    for p in batch {
        out.push(Out::Ack(p.clone()));
    }
    Ok((out, counters))
}

type Reject = (Option<String>, &'static str, String);

fn open_one(
    keys: &Keys,
    db: &ReceiverDb,
    key_cache: &mut HashMap<String, PublicKey>,
    topic: &str,
    payload: &[u8],
    envelope_sha256: [u8; 32],
) -> Result<ReceivedBundle, Reject> {
    let Some(topic_app) = transport::appliance_of_bundles_topic(topic) else {
        return Err((None, "BAD_TOPIC", "not a bundles topic".into()));
    };
    let parsed =
        seal::parse(payload).map_err(|e| (Some(topic_app.to_string()), e.code(), e.to_string()))?;
    let app = parsed.header.appliance_id.clone();
    if app != topic_app {
        return Err((
            Some(topic_app.to_string()),
            "TOPIC_MISMATCH",
            format!("envelope names appliance {app}, published under {topic_app}"),
        ));
    }
    if !key_cache.contains_key(&app) {
        let pem = db
            .appliance_key(&app)
            .map_err(|e| (Some(app.clone()), "STORE_ERROR", e.to_string()))?;
        match pem.as_deref().and_then(PublicKey::from_pem) {
            Some(k) => {
                key_cache.insert(app.clone(), k);
            }
            None => {
                return Err((
                    Some(app.clone()),
                    "UNKNOWN_APPLIANCE",
                    format!("no active key registered for appliance {app}"),
                ));
            }
        }
    }
    let key = &key_cache[&app];
    parsed
        .verify(key)
        .map_err(|e| (Some(app.clone()), e.code(), e.to_string()))?;
    let body = parsed
        .open(&keys.hpke)
        .map_err(|e| (Some(app.clone()), e.code(), e.to_string()))?;
    // Checks the JSON and reads only the resource type (no tree is built).
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<std::borrow::Cow<'a, str>>,
    }
    let head: Head<'_> = serde_json::from_slice(&body).map_err(|e| {
        (
            Some(app.clone()),
            "BAD_PAYLOAD",
            format!("plaintext is not a JSON object: {e}"),
        )
    })?;
    let rt = head.resource_type.as_deref();
    if !matches!(rt, Some("Bundle") | Some("Parameters")) {
        return Err((
            Some(app.clone()),
            "BAD_PAYLOAD",
            "plaintext is not a FHIR Bundle or Parameters resource".into(),
        ));
    }
    let h = &parsed.header;
    Ok(ReceivedBundle {
        appliance_id: app,
        bundle_id: uuid::Uuid::from_bytes(h.bundle_id),
        seq: h.seq,
        kind: h.kind.as_str().into(),
        created_at_ms: h.created_at_ms as i64,
        envelope_sha256,
        body,
    })
}
