//! The sections of the configuration (`[api]`, `[mqtt]`, `[sync]`, …): every field with its
//! documented default, and the broker URL parsing the sections share.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// `[nemsis]`: the agency an appliance reports for in NEMSIS v3.5.1 exports (numbers the state
/// EMS office assigns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NemsisConfig {
    /// dAgency.02 / eResponse.01, the EMS agency number (1-15 characters). Default `HEMA3N-DEV`.
    pub agency_number: String,
    /// dAgency.01, the agency's unique state id (1-50 characters). Default `HEMA3N-DEV`.
    pub agency_state_id: String,
    /// dAgency.04, the agency's state as a 2-digit ANSI (FIPS) code. Default `49` (Utah, as
    /// in NEMSIS's own samples; set yours).
    pub state_code: String,
    /// eResponse.02, the agency's name. Default unset.
    pub agency_name: Option<String>,
    /// eResponse.07, the unit's equipment: `als`, `bls` or `critical_care`. Default `als`.
    pub unit_level: String,
    /// eResponse.13, the vehicle number (1-25 characters). Default: the appliance id, cut
    /// to 25 characters.
    pub vehicle_number: Option<String>,
}

impl Default for NemsisConfig {
    fn default() -> Self {
        NemsisConfig {
            agency_number: "HEMA3N-DEV".into(),
            agency_state_id: "HEMA3N-DEV".into(),
            state_code: "49".into(),
            agency_name: None,
            unit_level: "als".into(),
            vehicle_number: None,
        }
    }
}

impl NemsisConfig {
    /// eResponse.07's code for `unit_level`.
    pub fn unit_level_code(&self) -> Option<&'static str> {
        Some(match self.unit_level.as_str() {
            "als" => "2207015",
            "bls" => "2207017",
            "critical_care" => "2207019",
            _ => return None,
        })
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let len = |v: &str, lo: usize, hi: usize| (lo..=hi).contains(&v.chars().count());
        if !len(&self.agency_number, 1, 15) {
            return Err("nemsis.agency_number must have 1-15 characters".into());
        }
        if !len(&self.agency_state_id, 1, 50) {
            return Err("nemsis.agency_state_id must have 1-50 characters".into());
        }
        if self.state_code.len() != 2 || !self.state_code.bytes().all(|b| b.is_ascii_digit()) {
            return Err("nemsis.state_code must be a 2-digit ANSI state code".into());
        }
        if self.unit_level_code().is_none() {
            return Err("nemsis.unit_level must be als, bls or critical_care".into());
        }
        if self
            .vehicle_number
            .as_deref()
            .is_some_and(|v| !len(v, 1, 25))
        {
            return Err("nemsis.vehicle_number must have 1-25 characters".into());
        }
        Ok(())
    }
}

/// `[dbus]`: the `org.hema3n.Edge1` service and the NetworkManager follower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbusConfig {
    /// Serve `org.hema3n.Edge1`. Without a reachable bus the daemon logs why and runs on.
    /// Default true.
    pub enabled: bool,
    /// `system`, `session` or a D-Bus address (`unix:path=…`). Default `system`.
    pub address: Option<String>,
    /// Start and stop cloud sync with NetworkManager's connectivity. Default true.
    pub follow_network_manager: bool,
}

impl Default for DbusConfig {
    fn default() -> Self {
        DbusConfig {
            enabled: true,
            address: None,
            follow_network_manager: true,
        }
    }
}

/// `[api]`: the crew tablet's HTTPS API and web UI (SYSTEM.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API and UI. Default true.
    pub enabled: bool,
    /// Listen address on the vehicle LAN; port 0 picks a free port (logged). Default
    /// `0.0.0.0:8443`.
    pub listen: String,
    /// Certificate chain (PEM). The private key is the credential `api-tls.key`. Default
    /// `<keys.dir>/api-cert.pem` (`init` creates a self-signed pair).
    pub cert_file: Option<PathBuf>,
    /// Idle logoff, seconds. Default 600 (10 min).
    pub idle_timeout_secs: u64,
    /// Absolute session lifetime, seconds. Default 43200 (12 h).
    pub session_lifetime_secs: u64,
    /// Break-glass time box, minutes. Default 60.
    pub break_glass_minutes: u64,
    /// Longest access grant a supervisor may give (mutual aid, a receiving crew), hours.
    /// Default 72.
    pub grant_max_hours: u64,
    /// Failed logins in a row, per account *and source address*, before back-off starts.
    /// Default 3.
    pub login_backoff_after: u32,
    /// Longest back-off of one (account, source) pair, seconds. Default 300.
    pub login_backoff_max_secs: u64,
    /// Wrong secrets accepted per account per rolling 24 h from sources where the account has
    /// not signed in during the last 30 days (beyond: 429). Default 10.
    pub login_failures_per_day: u32,
    /// The same per (account, source where it signed in before). Default 20.
    pub login_trusted_failures_per_day: u32,
    /// Wrong secrets accepted per source address per hour, all accounts together. Default 60.
    pub login_source_failures_per_hour: u32,
    /// Open client connections; more wait in the kernel's accept queue. Default 4096 (the unit
    /// sets `LimitNOFILE=16384`).
    pub max_connections: usize,
    /// A connection must send a request's headers within this time, also while idle between
    /// requests (then it is closed), seconds. Default 10.
    pub header_timeout_secs: u64,
    /// A request body must arrive within this time (408 above), seconds. Default 10.
    pub body_timeout_secs: u64,
    /// Requests served at once from one source address (503 BUSY above). Default 16.
    pub max_concurrent_per_source: usize,
    /// Largest request body, bytes (413 PAYLOAD_TOO_LARGE above). Default 65536.
    pub max_body_bytes: usize,
    /// Requests served at once; more get 503 BUSY with Retry-After. Default 64.
    pub max_concurrent: usize,
    /// Live streams (SSE) open at once. Default 32.
    pub max_streams: usize,
    /// Serve `/metrics` to the vehicle LAN, not only to loopback (its counters show crew
    /// logins). Default false.
    pub metrics_from_lan: bool,
    /// Live streams one session may hold open. Default 4.
    pub max_streams_per_session: usize,
    /// Keep-alive comment interval on live streams, seconds. Default 15.
    pub stream_keepalive_secs: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: "0.0.0.0:8443".into(),
            cert_file: None,
            idle_timeout_secs: 600,
            session_lifetime_secs: 12 * 3600,
            break_glass_minutes: 60,
            grant_max_hours: 72,
            login_backoff_after: 3,
            login_backoff_max_secs: 300,
            login_failures_per_day: 10,
            login_trusted_failures_per_day: 20,
            login_source_failures_per_hour: 60,
            max_connections: 4096,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            max_concurrent_per_source: 16,
            max_body_bytes: 64 * 1024,
            max_concurrent: 64,
            max_streams: 32,
            max_streams_per_session: 4,
            metrics_from_lan: false,
            stream_keepalive_secs: 15,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `hema3n_edge=debug`. `RUST_LOG` overrides it.
    /// Default `info`.
    pub level: String,
    /// `auto` (journald when started by systemd with a journal socket, else text on stderr),
    /// `journald` or `text`. Default `auto`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Journald,
    Text,
}

/// `[keys]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// Directory of key files, read after `$CREDENTIALS_DIRECTORY`. Files must be mode 0600 or
    /// stricter. `keys rotate` writes new territory key versions here. Default `/etc/hema3n/keys`.
    pub dir: PathBuf,
    /// Encrypted credentials (`systemd-creds`) of a provisioned appliance: the daemon's unit
    /// loads them; admin commands run as root decrypt them when `dir` holds no `db.key`.
    /// Default `/etc/credstore.encrypted/hema3n`.
    pub credstore: PathBuf,
    /// A territory key version older than this many days is due for rotation: `check` warns
    /// and the daemon raises `key_rotation_due`. Default 90.
    pub rotate_after_days: u32,
    /// `keys rotate --if-due` (what `hema3n-rotate-keys.timer` runs daily) rotates every due
    /// territory key; `false` leaves rotation to an admin (the alarm still rises). Default true.
    pub auto_rotate: bool,
    /// The daemon unit's drop-in that loads territory key credentials on a sealed vehicle
    /// (`scripts/provision.sh` writes it; `keys rotate` adds each new version to it). Default
    /// `/etc/systemd/system/hema3n-edge.service.d/credentials.conf`.
    pub credentials_dropin: PathBuf,
    /// Warn (`check`, alarm `certificate_expiring`) this many days before a TLS certificate
    /// (tablet API, cloud client) expires. Default 30.
    pub certificate_warn_days: u32,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            dir: PathBuf::from("/etc/hema3n/keys"),
            credstore: PathBuf::from("/etc/credstore.encrypted/hema3n"),
            rotate_after_days: 90,
            auto_rotate: true,
            credentials_dropin: PathBuf::from(
                "/etc/systemd/system/hema3n-edge.service.d/credentials.conf",
            ),
            certificate_warn_days: 30,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// SQLCipher database file. Default `<data_dir>/edge.db`.
    pub path: Option<PathBuf>,
    /// How long a writer waits for another process's lock (for example a CLI command while the
    /// daemon runs) before failing with BUSY, in milliseconds. Default 5000.
    pub busy_timeout_ms: u64,
    /// Capacity of the queue in front of the storage thread; callers wait when it is full
    /// (storage writes are never dropped). Default 1024.
    pub queue_capacity: usize,
    /// Read-only connections beside the writer, each on its own thread: audited reads of the
    /// tablet run on them in parallel and only their audit entries queue for the writer.
    /// Default 0: one per CPU core, at most 4.
    pub read_connections: usize,
    /// `check` warns when the last backup (`hema3n-edge backup`) is older than this many
    /// hours, or when none was taken. Default 24.
    pub backup_max_age_hours: u64,
}

impl StoreConfig {
    /// Reader connections to open: `read_connections`, or one per CPU core (at most 4).
    pub fn readers(&self) -> usize {
        match self.read_connections {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
            n => n,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            busy_timeout_ms: 5000,
            queue_capacity: 1024,
            read_connections: 0,
            backup_max_age_hours: 24,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Sign a checkpoint after this many new entries. Default 1000.
    pub checkpoint_every_entries: u64,
    /// ... or when this many seconds passed since the last one and new entries exist. Default 60.
    pub checkpoint_every_secs: u64,
    /// Entries are kept at least this many days (they hold no PHI and outlive the crypto-erase
    /// of what they describe); older ones leave the appliance only once a signed checkpoint
    /// covering them was receipted by the cloud (`audit prune`, and the daemon every 10 min).
    /// 0 keeps everything. Default 2190 (six years, 45 CFR §164.316(b)(2)).
    pub retention_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_entries: 1000,
            checkpoint_every_secs: 60,
            retention_days: 2190,
        }
    }
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Deadline for an orderly shutdown after SIGTERM, in seconds; keep it below systemd's
    /// `TimeoutStopSec`. Default 20.
    pub shutdown_timeout_secs: u64,
    /// Interval of the storage liveness probe that gates the systemd watchdog, in milliseconds.
    /// When the watchdog is enabled the daemon probes at least twice per `WatchdogSec`.
    /// Default 5000.
    pub health_interval_ms: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_timeout_secs: 20,
            health_interval_ms: 5000,
        }
    }
}

/// `[mqtt]`: the on-board broker that field devices publish to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`. The daemon talks to the on-board broker over loopback;
    /// devices use the broker's TLS listener. Default `mqtt://127.0.0.1:1883`.
    pub broker: String,
    /// Client id of the daemon's persistent session. Default `hema3n-edge-<appliance_id>`.
    pub client_id: Option<String>,
    /// Broker user of the daemon; its password comes from the credential `mqtt.password`.
    /// Default: none (anonymous, for development brokers on loopback).
    pub username: Option<String>,
    /// Keep-alive, seconds. Default 30.
    pub keep_alive_secs: u64,
    /// Largest MQTT packet the daemon sends to the broker, bytes. Packets *from* the broker
    /// are read up to the protocol's maximum, so that an oversized publish queued for the
    /// daemon's session is dead-lettered instead of wedging it; every broker configuration
    /// the project ships caps messages below this (`message_size_limit`). Default 1048576.
    pub max_packet_bytes: usize,
    /// Reconnect back-off bounds, milliseconds. Defaults 200 and 10000.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// mosquitto password file that `hema3n-edge devices add|remove` maintains. Default: none.
    pub password_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            broker: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            keep_alive_secs: 30,
            max_packet_bytes: 1 << 20,
            reconnect_min_ms: 200,
            reconnect_max_ms: 10_000,
            password_file: None,
        }
    }
}

impl MqttConfig {
    /// `(host, port)` of [`MqttConfig::broker`].
    pub fn host_port(&self) -> Result<(String, u16), ConfigError> {
        parse_mqtt_url(&self.broker).ok_or_else(|| ConfigError::Invalid {
            field: "mqtt.broker",
            reason: format!("`{}` is not mqtt://host:port", self.broker),
        })
    }
}

/// `[sync]`: sealed case bundles to the cloud broker (Contract C).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Cloud broker, `mqtts://host:port` (TLS, port 8883 by default) or `mqtt://host:port`
    /// (plain; refused unless `allow_plaintext`). Default: none, which disables sync (bundles
    /// are still sealed and queued once the receiver key is imported).
    pub cloud_broker: Option<String>,
    /// Allow a plain `mqtt://` cloud broker (loopback development only). Default false.
    pub allow_plaintext: bool,
    /// CA certificate(s) (PEM) that sign the cloud broker's certificate. Required for mqtts.
    pub ca_file: Option<PathBuf>,
    /// Appliance certificate (PEM) for mTLS; its key is the credential `cloud-client.key`.
    pub client_cert: Option<PathBuf>,
    /// Client id of the persistent MQTT 5 session. Default `hema3n-edge-<appliance_id>-sync`.
    pub client_id: Option<String>,
    /// Keep-alive, seconds. Default 30.
    pub keep_alive_secs: u64,
    /// Largest number of envelopes published and not yet receipted at once. Default 256.
    pub window: usize,
    /// Republish a sent envelope when no receipt came after this long, seconds. Default 60.
    pub receipt_timeout_secs: u64,
    /// Reconnect back-off with full jitter, milliseconds. Defaults 500 and 60000.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Retry timer for images without NetworkManager, seconds. Default 30.
    pub retry_interval_secs: u64,
    /// Keep a case's PHI this long after its receipt, then crypto-erase it. Default 72.
    pub retention_hours: f64,
    /// How often to queue an appliance telemetry envelope (no PHI), seconds; 0 disables.
    /// Default 900.
    pub telemetry_interval_secs: u64,
    /// Raise the disk-pressure alarm when the data directory's free space falls below this,
    /// MiB (checked every minute). Nothing is dropped: the alarm asks a human to make room.
    /// Default 512.
    pub disk_alarm_free_mib: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            cloud_broker: None,
            allow_plaintext: false,
            ca_file: None,
            client_cert: None,
            client_id: None,
            keep_alive_secs: 30,
            window: 256,
            receipt_timeout_secs: 60,
            backoff_min_ms: 500,
            backoff_max_ms: 60_000,
            retry_interval_secs: 30,
            retention_hours: 72.0,
            telemetry_interval_secs: 900,
            disk_alarm_free_mib: 512,
        }
    }
}

/// A parsed cloud broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parses `mqtts://host[:port]` (8883) or `mqtt://host[:port]` (1883).
pub fn parse_broker_url(url: &str) -> Option<BrokerUrl> {
    let (rest, tls, default_port) = match url.strip_prefix("mqtts://") {
        Some(rest) => (rest, true, 8883),
        None => (url.strip_prefix("mqtt://")?, false, 1883),
    };
    let (host, port) = host_port(rest, default_port)?;
    Some(BrokerUrl { host, port, tls })
}

impl SyncConfig {
    /// The cloud broker, if sync is configured.
    pub fn broker(&self) -> Result<Option<BrokerUrl>, ConfigError> {
        let Some(url) = &self.cloud_broker else {
            return Ok(None);
        };
        let b = parse_broker_url(url).ok_or_else(|| ConfigError::Invalid {
            field: "sync.cloud_broker",
            reason: format!("`{url}` is not mqtts://host:port or mqtt://host:port"),
        })?;
        if !b.tls && !self.allow_plaintext {
            return Err(ConfigError::Invalid {
                field: "sync.cloud_broker",
                reason: "plain mqtt:// carries sealed PHI without TLS; use mqtts:// or set sync.allow_plaintext for loopback development".into(),
            });
        }
        if b.tls && self.ca_file.is_none() {
            return Err(ConfigError::Invalid {
                field: "sync.ca_file",
                reason: "mqtts:// needs the CA that signs the cloud broker's certificate".into(),
            });
        }
        // The cloud broker knows appliances by their client certificate (SYSTEM.md §4): without
        // one the appliance would connect with no client authentication at all.
        if b.tls && self.client_cert.is_none() {
            return Err(ConfigError::Invalid {
                field: "sync.client_cert",
                reason: "mqtts:// needs the appliance's client certificate (mutual TLS; key: credential cloud-client.key)".into(),
            });
        }
        Ok(Some(b))
    }
}

/// Parses `mqtt://host[:port]` (port 1883 by default).
pub fn parse_mqtt_url(url: &str) -> Option<(String, u16)> {
    host_port(url.strip_prefix("mqtt://")?, 1883)
}

/// `host[:port][/]` after the scheme; `default_port` when none is given.
pub(super) fn host_port(rest: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse().ok()?),
        _ => (rest, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// `[ingest]`: vitals from field devices (Contract A).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Subscribe to device vitals at all. Default true.
    pub enabled: bool,
    /// Larger vitals payloads are rejected with PAYLOAD_TOO_LARGE. Default 65536.
    pub max_payload_bytes: usize,
    /// Larger packs are rejected with TOO_MANY_RECORDS. Default 256.
    pub max_records_per_pack: usize,
    /// Device times further ahead than this are rejected (TIME_IN_FUTURE), seconds. Default 86400.
    pub max_future_skew_secs: u64,
    /// Device times older than this are rejected (TIME_TOO_OLD), seconds. Default 259200 (72 h).
    pub max_age_secs: u64,
    /// Upper bound of messages committed in one transaction (group commit). Default 4096.
    pub batch_max_messages: usize,
    /// Commit time an ingest batch aims to stay under, in milliseconds: a longer commit makes
    /// the next batches smaller (never under 256 messages), so audited reads and other writes
    /// never wait long behind a burst. Default 50.
    pub batch_max_commit_ms: u64,
    /// Sustained vitals messages per second processed per device. Messages beyond it are
    /// *shaped*, not refused: they wait (unacknowledged, so the broker's in-flight window
    /// bounds them) until the device's bucket refills, so a backlog replayed after a restart
    /// or a device's offline buffer is stored in full. Default 200.
    pub device_rate_per_sec: f64,
    /// Burst allowance of that token bucket. Default 1000.
    pub device_burst: f64,
    /// Bytes of shaped messages held in memory across devices. Only QoS 0 traffic (which the
    /// broker's window does not bound) can exceed it; such messages are dead-lettered as
    /// RATE_LIMITED with their payload kept encrypted. Default 67108864 (64 MiB, above the
    /// broker's 1000-message window at 64 KiB each).
    pub shaping_max_bytes: usize,
    /// Messages received but not yet committed above which QoS 0 publishes are dropped (and
    /// counted): QoS 0 bypasses the broker's in-flight window. Default 20000.
    pub qos0_backlog: u64,
    /// Only devices registered with `hema3n-edge devices add` may publish; others get
    /// UNKNOWN_DEVICE. Default true.
    pub require_registered_devices: bool,
    /// A device bound to a case that sends no vitals for this long raises a "device silent"
    /// alarm, seconds. Default 30.
    pub device_silent_secs: u64,
    /// Interval of the "ingest summary" log line (counters), seconds. Default 60.
    pub summary_every_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            enabled: true,
            max_payload_bytes: 65_536,
            max_records_per_pack: 256,
            max_future_skew_secs: 86_400,
            max_age_secs: 259_200,
            batch_max_messages: 4096,
            batch_max_commit_ms: 50,
            device_rate_per_sec: 200.0,
            device_burst: 1000.0,
            shaping_max_bytes: 64 << 20,
            qos0_backlog: 20_000,
            require_registered_devices: true,
            device_silent_secs: 30,
            summary_every_secs: 60,
        }
    }
}

/// `[triage]`: rules engine and HEMA3N-Core model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriageConfig {
    /// Re-triage bound cases when their vitals change. Default true.
    pub enabled: bool,
    /// The factory model: directory with `manifest.toml`, `manifest.sig` and the artifacts,
    /// active until a model is installed. Default `/usr/share/hema3n/models/hema3n-core`.
    pub model_dir: PathBuf,
    /// Where `model install` keeps installed models and the `current`/`previous` links.
    /// Default `<data_dir>/models`.
    pub models_dir: Option<PathBuf>,
    /// Model-signing public keys (PEM or base64 SPKI) whose signature on `manifest.toml` the
    /// appliance accepts; more than one while a signing key is replaced. Empty = no model is
    /// trusted (rules-only). Default empty.
    pub model_signing_keys: Vec<String>,
    /// `int8` or `fp32`; default: the manifest's default (int8).
    pub variant: Option<String>,
    /// ONNX Runtime shared library (`libonnxruntime.so.*`). Unset = rules-only mode.
    pub onnxruntime_library: Option<PathBuf>,
    /// Execution providers in preference order. Default `["tensorrt", "cuda", "cpu"]`.
    pub execution_providers: Vec<String>,
    /// TensorRT engine cache. Default `<data_dir>/trt-engines`.
    pub engine_cache_dir: Option<PathBuf>,
    /// Threads of one inference. Default 1.
    pub intra_threads: usize,
    /// Vitals changes of one case within this window cause one re-triage, ms. Default 250.
    pub debounce_ms: u64,
    /// A less acute level replaces the shown one only after the improvement has held this
    /// long, s (a more acute level is shown at once). Default 120.
    pub deescalate_hold_secs: u64,
    /// The model abstains unless this many of heart rate, respiratory rate, SpO2 and systolic BP
    /// are measured. Default 3.
    pub min_core_vitals: usize,
}

impl Default for TriageConfig {
    fn default() -> Self {
        TriageConfig {
            enabled: true,
            model_dir: PathBuf::from("/usr/share/hema3n/models/hema3n-core"),
            models_dir: None,
            model_signing_keys: Vec::new(),
            variant: None,
            onnxruntime_library: None,
            execution_providers: vec!["tensorrt".into(), "cuda".into(), "cpu".into()],
            engine_cache_dir: None,
            intra_threads: 1,
            debounce_ms: 250,
            deescalate_hold_secs: 120,
            min_core_vitals: 3,
        }
    }
}
