//! Configuration: a base TOML file plus sorted `edge.d/*.toml` drop-ins, deep-merged, then
//! validated. Every field has a documented default, so the daemon runs on embedded defaults.
//!
//! Path resolution: `--config PATH` or `HEMA3N_CONFIG`; otherwise `/etc/hema3n/edge.toml`, which
//! may be absent (then only drop-ins and defaults apply). Relative paths inside a file are
//! resolved against that file's directory. Secrets are never read from here: only the directory
//! holding key files (see `crypto::keyring`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod attachments;
mod sections;

pub use attachments::AttachmentsConfig;

pub use sections::{
    ApiConfig, AuditConfig, BrokerUrl, DaemonConfig, DbusConfig, IngestConfig, KeysConfig,
    LogConfig, LogFormat, MqttConfig, NemsisConfig, StoreConfig, SyncConfig, TriageConfig,
    parse_broker_url, parse_mqtt_url,
};

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
    pub nemsis: NemsisConfig,
    pub attachments: AttachmentsConfig,
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
            nemsis: NemsisConfig::default(),
            attachments: AttachmentsConfig::default(),
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
        self.attachments
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                field: "attachments",
                reason,
            })?;
        self.nemsis
            .validate()
            .map_err(|reason| ConfigError::Invalid {
                field: "nemsis",
                reason,
            })?;
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
        if self.store.read_connections > 64 {
            return Err(ConfigError::Invalid {
                field: "store.read_connections",
                reason: "at most 64 (0: one per CPU core, at most 4)".into(),
            });
        }
        if self.ingest.batch_max_messages == 0
            || self.ingest.batch_max_commit_ms == 0
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

    /// Installed models (`triage.models_dir`).
    pub fn models_dir(&self) -> PathBuf {
        self.triage
            .models_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("models"))
    }

    /// TensorRT engine cache (`triage.engine_cache_dir`).
    pub fn engine_cache_dir(&self) -> PathBuf {
        self.triage
            .engine_cache_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("trt-engines"))
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
        ("keys", "credstore"),
        ("store", "path"),
        ("mqtt", "password_file"),
        ("triage", "model_dir"),
        ("triage", "models_dir"),
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
    fn sync_over_tls_needs_a_client_certificate() {
        // Review #26: mqtts:// without client_cert connected with no client authentication.
        let mut c = SyncConfig {
            cloud_broker: Some("mqtts://cloud.example:8883".into()),
            ca_file: Some("ca.pem".into()),
            ..SyncConfig::default()
        };
        assert!(matches!(
            c.broker(),
            Err(ConfigError::Invalid {
                field: "sync.client_cert",
                ..
            })
        ));
        c.client_cert = Some("client.pem".into());
        assert!(c.broker().unwrap().is_some_and(|b| b.tls));
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
