//! The receiver's setup: `receiver.toml` ([`ReceiverConfig`]), its errors, its key files
//! ([`Keys`]) and `hema3n-receiver init`.

use crate::config::{BrokerUrl, ConfigError, parse_broker_url};
use crate::crypto::keyring::{KeyError, KeySources, write_secret};
use crate::crypto::seal::RecipientSecretKey;
use crate::crypto::sign::SigningKey;
use crate::sync::ReceiverKeys;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Envelope bytes collected into one batch (the batch closes once it reaches this). Default
    /// 67108864 (64 MiB).
    pub batch_max_bytes: usize,
    /// Largest envelope accepted; larger ones are refused unread with `TOO_LARGE` (the cloud
    /// broker's `message_size_limit` should be at most this). Default 16777216 (16 MiB).
    pub max_envelope_bytes: usize,
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
            batch_max_bytes: 64 << 20,
            max_envelope_bytes: 16 << 20,
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
