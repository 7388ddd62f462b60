//! Configuration: a base TOML file plus sorted `edge.d/*.toml` drop-ins, deep-merged, then
//! validated. Every field has a documented default, so the daemon runs on embedded defaults.
//!
//! Path resolution: `--config PATH` or `HEMA3N_CONFIG`; otherwise `/etc/hema3n/edge.toml`, which
//! may be absent (then only drop-ins and defaults apply). Relative paths inside a file are
//! resolved against that file's directory. Secrets are never read from here: only the directory
//! holding key files (see `crypto::keyring`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default location of the base configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/hema3n/edge.toml";

/// Errors while loading configuration. All of them exit the process with code 78.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A named file could not be read. Recovery: fix the path or permissions.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax error, unknown field or wrong type, with the file it came from.
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The merged configuration has a wrong type or an unknown field.
    #[error("merged configuration: {0}")]
    Merged(#[source] toml::de::Error),
    /// A value is syntactically fine but not allowed.
    #[error("config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// The whole configuration of `hema3n-edge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identifier of this appliance (vehicle), `[A-Za-z0-9._-]{1,64}`; appears in audit
    /// checkpoints and bundle envelopes. Default `hema3n-dev`.
    pub appliance_id: String,
    /// State directory: database and runtime state. Default `/var/lib/hema3n`.
    pub data_dir: PathBuf,
    /// Territory new cases and patients belong to when the caller does not name one.
    /// Default `default`.
    pub default_territory: String,
    pub log: LogConfig,
    pub keys: KeysConfig,
    pub store: StoreConfig,
    pub audit: AuditConfig,
    pub daemon: DaemonConfig,
    pub mqtt: MqttConfig,
    pub ingest: IngestConfig,
    pub triage: TriageConfig,
    pub sync: SyncConfig,
    pub api: ApiConfig,
    pub dbus: DbusConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            appliance_id: "hema3n-dev".into(),
            data_dir: PathBuf::from("/var/lib/hema3n"),
            default_territory: "default".into(),
            log: LogConfig::default(),
            keys: KeysConfig::default(),
            store: StoreConfig::default(),
            audit: AuditConfig::default(),
            daemon: DaemonConfig::default(),
            mqtt: MqttConfig::default(),
            ingest: IngestConfig::default(),
            triage: TriageConfig::default(),
            sync: SyncConfig::default(),
            api: ApiConfig::default(),
            dbus: DbusConfig::default(),
        }
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
    /// Failed logins in a row before back-off starts. Default 3.
    pub login_backoff_after: u32,
    /// Longest back-off between login attempts, seconds (never a permanent lock). Default 300.
    pub login_backoff_max_secs: u64,
    /// Largest request body, bytes (413 PAYLOAD_TOO_LARGE above). Default 65536.
    pub max_body_bytes: usize,
    /// Requests served at once; more get 503 BUSY with Retry-After. Default 64.
    pub max_concurrent: usize,
    /// Live streams (SSE) open at once. Default 32.
    pub max_streams: usize,
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
            login_backoff_after: 3,
            login_backoff_max_secs: 300,
            max_body_bytes: 64 * 1024,
            max_concurrent: 64,
            max_streams: 32,
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
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            dir: PathBuf::from("/etc/hema3n/keys"),
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: None,
            busy_timeout_ms: 5000,
            queue_capacity: 1024,
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
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every_entries: 1000,
            checkpoint_every_secs: 60,
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
    /// Largest MQTT packet accepted from the broker, bytes. Keep it above the broker's
    /// `message_size_limit` so an oversized publish is refused by the broker, not by us
    /// dropping the connection. Default 1048576.
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
        Ok(Some(b))
    }
}

/// Parses `mqtt://host[:port]` (port 1883 by default).
pub fn parse_mqtt_url(url: &str) -> Option<(String, u16)> {
    host_port(url.strip_prefix("mqtt://")?, 1883)
}

/// `host[:port][/]` after the scheme; `default_port` when none is given.
fn host_port(rest: &str, default_port: u16) -> Option<(String, u16)> {
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
    /// Sustained vitals messages per second allowed per device; excess is rejected with
    /// RATE_LIMITED so one device cannot starve the others. Default 200.
    pub device_rate_per_sec: f64,
    /// Burst allowance of that token bucket. Default 1000.
    pub device_burst: f64,
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
            device_rate_per_sec: 200.0,
            device_burst: 1000.0,
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
    /// Directory with `manifest.toml` and the model artifacts.
    /// Default `/usr/share/hema3n/models/hema3n-core`.
    pub model_dir: PathBuf,
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
    /// The model abstains unless this many of heart rate, respiratory rate, SpO2 and systolic BP
    /// are measured. Default 3.
    pub min_core_vitals: usize,
}

impl Default for TriageConfig {
    fn default() -> Self {
        TriageConfig {
            enabled: true,
            model_dir: PathBuf::from("/usr/share/hema3n/models/hema3n-core"),
            variant: None,
            onnxruntime_library: None,
            execution_providers: vec!["tensorrt".into(), "cuda".into(), "cpu".into()],
            engine_cache_dir: None,
            intra_threads: 1,
            debounce_ms: 250,
            min_core_vitals: 3,
        }
    }
}

/// Where the configuration came from (for `--print-config` and logs).
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub files: Vec<PathBuf>,
}

impl Config {
    /// Loads `path` (or the default path) plus its `edge.d/` drop-ins. `explicit` says whether
    /// the path was named by the user: then it must exist.
    pub fn load(path: &Path, explicit: bool) -> Result<(Config, Provenance), ConfigError> {
        let mut prov = Provenance::default();
        let mut merged = toml::Table::new();
        let base_dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let t = parse_file(path, &text)?;
                merge(&mut merged, resolve_paths(t, &base_dir));
                prov.files.push(path.to_path_buf());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(e) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
        let dropin_dir = base_dir.join("edge.d");
        if let Ok(rd) = std::fs::read_dir(&dropin_dir) {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|e| ConfigError::Read {
                    path: f.clone(),
                    source: e,
                })?;
                let t = parse_file(&f, &text)?;
                merge(&mut merged, resolve_paths(t, &dropin_dir));
                prov.files.push(f);
            }
        }
        let cfg: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(ConfigError::Merged)?;
        cfg.validate()?;
        Ok((cfg, prov))
    }

    /// Checks values that parse but are not allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::model::is_valid_ident;
        if !is_valid_ident(&self.appliance_id) {
            return Err(ConfigError::Invalid {
                field: "appliance_id",
                reason: "must match [A-Za-z0-9._-]{1,64}".into(),
            });
        }
        if !is_valid_ident(&self.default_territory) {
            return Err(ConfigError::Invalid {
                field: "default_territory",
                reason: "must match [A-Za-z0-9._-]{1,64}".into(),
            });
        }
        if self.audit.checkpoint_every_entries == 0 || self.audit.checkpoint_every_secs == 0 {
            return Err(ConfigError::Invalid {
                field: "audit",
                reason: "checkpoint intervals must be > 0".into(),
            });
        }
        if self.store.queue_capacity == 0 {
            return Err(ConfigError::Invalid {
                field: "store.queue_capacity",
                reason: "must be > 0".into(),
            });
        }
        if self.daemon.health_interval_ms < 100 {
            return Err(ConfigError::Invalid {
                field: "daemon.health_interval_ms",
                reason: "must be ≥ 100".into(),
            });
        }
        self.mqtt.host_port()?;
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                field: "api.listen",
                reason: format!("`{}` is not an address:port", self.api.listen),
            });
        }
        if self.api.idle_timeout_secs == 0
            || self.api.session_lifetime_secs < self.api.idle_timeout_secs
            || self.api.max_concurrent == 0
            || self.api.max_body_bytes < 1024
        {
            return Err(ConfigError::Invalid {
                field: "api",
                reason: "idle_timeout_secs > 0, session_lifetime_secs ≥ idle_timeout_secs, max_concurrent > 0, max_body_bytes ≥ 1024".into(),
            });
        }
        self.sync.broker()?;
        if self.sync.window == 0 || self.sync.retention_hours < 0.0 {
            return Err(ConfigError::Invalid {
                field: "sync",
                reason: "window must be > 0 and retention_hours ≥ 0".into(),
            });
        }
        if self.triage.min_core_vitals > 4 {
            return Err(ConfigError::Invalid {
                field: "triage.min_core_vitals",
                reason: "at most 4".into(),
            });
        }
        if self.ingest.batch_max_messages == 0
            || self.ingest.max_records_per_pack == 0
            || self.ingest.max_payload_bytes == 0
        {
            return Err(ConfigError::Invalid {
                field: "ingest",
                reason: "limits must be > 0".into(),
            });
        }
        if self.ingest.device_rate_per_sec <= 0.0 || self.ingest.device_burst < 1.0 {
            return Err(ConfigError::Invalid {
                field: "ingest.device_rate_per_sec",
                reason: "rate must be > 0 and burst ≥ 1".into(),
            });
        }
        if self.mqtt.max_packet_bytes <= self.ingest.max_payload_bytes {
            return Err(ConfigError::Invalid {
                field: "mqtt.max_packet_bytes",
                reason: "must exceed ingest.max_payload_bytes so oversized payloads are rejected, not dropped".into(),
            });
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::Invalid {
                field: "log.level",
                reason: format!("`{}` is not a filter", self.log.level),
            });
        }
        Ok(())
    }

    /// The tablet API's certificate chain.
    pub fn api_cert_path(&self) -> PathBuf {
        self.api
            .cert_file
            .clone()
            .unwrap_or_else(|| self.keys.dir.join("api-cert.pem"))
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("edge.db"))
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let t: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: e,
    })?;
    // Type-check each file on its own so an error names the file it is in.
    let _: Config = toml::Value::Table(t.clone())
        .try_into()
        .map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: e,
        })?;
    Ok(t)
}

/// Makes relative path-valued fields absolute against `base`.
fn resolve_paths(mut t: toml::Table, base: &Path) -> toml::Table {
    fn fix(v: &mut toml::Value, base: &Path) {
        if let toml::Value::String(s) = v
            && !s.is_empty()
            && Path::new(s.as_str()).is_relative()
        {
            *s = base.join(s.as_str()).display().to_string();
        }
    }
    if let Some(v) = t.get_mut("data_dir") {
        fix(v, base);
    }
    for (sect, key) in [
        ("keys", "dir"),
        ("store", "path"),
        ("mqtt", "password_file"),
        ("triage", "model_dir"),
        ("triage", "onnxruntime_library"),
        ("triage", "engine_cache_dir"),
        ("sync", "ca_file"),
        ("sync", "client_cert"),
        ("api", "cert_file"),
    ] {
        if let Some(v) = t
            .get_mut(sect)
            .and_then(|s| s.as_table_mut())
            .and_then(|s| s.get_mut(key))
        {
            fix(v, base);
        }
    }
    t
}

/// Deep merge: tables merge key by key, everything else is replaced.
fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    #[test]
    fn defaults_apply_when_default_file_is_absent() {
        let d = tempfile::tempdir().unwrap();
        let (c, prov) = Config::load(&d.path().join("edge.toml"), false).unwrap();
        assert_eq!(c, Config::default());
        assert!(prov.files.is_empty());
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            Config::load(&d.path().join("nope.toml"), true),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn dropins_merge_in_sorted_order_and_relative_paths_resolve() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("edge.toml");
        write(
            &base,
            "appliance_id = \"amb-1\"\ndata_dir = \"state\"\n[audit]\ncheckpoint_every_entries = 10\n",
        );
        write(
            &d.path().join("edge.d/20-b.toml"),
            "[audit]\ncheckpoint_every_secs = 5\n",
        );
        write(
            &d.path().join("edge.d/10-a.toml"),
            "appliance_id = \"amb-2\"\n[audit]\ncheckpoint_every_secs = 9\n",
        );
        write(&d.path().join("edge.d/ignored.txt"), "garbage");
        let (c, prov) = Config::load(&base, true).unwrap();
        assert_eq!(c.appliance_id, "amb-2");
        assert_eq!(c.audit.checkpoint_every_entries, 10);
        assert_eq!(c.audit.checkpoint_every_secs, 5);
        assert_eq!(c.data_dir, d.path().join("state"));
        assert_eq!(c.db_path(), d.path().join("state/edge.db"));
        assert_eq!(prov.files.len(), 3);
    }

    #[test]
    fn unknown_fields_are_rejected_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("edge.toml");
        write(&base, "[store]\nbusy_timeout = 3\n");
        let e = Config::load(&base, true).unwrap_err().to_string();
        assert!(e.contains("edge.toml"), "{e}");
        let full = format!("{:?}", Config::load(&base, true).unwrap_err());
        assert!(full.contains("busy_timeout"), "{full}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("edge.toml");
        write(&base, "appliance_id = \"bad id!\"\n");
        assert!(matches!(
            Config::load(&base, true),
            Err(ConfigError::Invalid {
                field: "appliance_id",
                ..
            })
        ));
    }

    #[test]
    fn mqtt_urls_parse() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:1884"),
            Some(("127.0.0.1".into(), 1884))
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker.local"),
            Some(("broker.local".into(), 1883))
        );
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:18830"),
            Some(("::1".into(), 18830))
        );
        assert_eq!(parse_mqtt_url("http://x:1"), None);
        assert_eq!(parse_mqtt_url("mqtt://:1"), None);
    }

    #[test]
    fn printed_config_parses_back_identically() {
        let c = Config::default();
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }
}
