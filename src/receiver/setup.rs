//! The receiver's setup: `receiver.toml` ([`ReceiverConfig`]), its errors, its key files
//! ([`Keys`]) and `hema3n-receiver init`.

use crate::config::{BrokerUrl, ConfigError, parse_broker_url};
use crate::crypto::keyring::{KeyError, KeySources, write_secret};
use crate::crypto::seal::{RecipientPublicKey, RecipientSecretKey};
use crate::crypto::sign::SigningKey;
use crate::storage::pg::{PgSettings, PgStore};
use crate::storage::receiver::{ReceiverDb, ReceiverStore};
use crate::sync::ReceiverKeys;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const HPKE_KEY: &str = "receiver-hpke.key";

pub const SIGNING_KEY: &str = "receiver-signing.p8";

pub const DB_KEY: &str = "receiver-db.key";

/// Credential with the receiver's TLS client key (PEM), when the broker requires mTLS.
pub const CLIENT_KEY: &str = "receiver-client.key";

/// Credential with the PostgreSQL password (`store = "postgres"`), when the server asks for one.
pub const PG_PASSWORD: &str = "receiver-pg.password";

/// Where the receiver keeps what it receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An embedded SQLCipher file (`database`): one receiver.
    #[default]
    Sqlcipher,
    /// A PostgreSQL database (`[postgres]`) shared by several receivers.
    Postgres,
}

/// `[postgres]` in `receiver.toml`. The password is a credential (`receiver-pg.password`),
/// never here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Host name, address, or Unix socket directory (`/run/postgresql`). Default `127.0.0.1`.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// TLS with the server's certificate and host name verified against `ca_file`. Default
    /// true; false is accepted only for a loopback host or a Unix socket.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout_secs: u64,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "hema3n_receiver".into(),
            dbname: "hema3n".into(),
            tls: true,
            ca_file: None,
            connect_timeout_secs: 10,
        }
    }
}

/// `receiver.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceiverConfig {
    /// Name of this receiver deployment (shown to appliances). Default `hema3n-cloud`.
    pub receiver_id: String,
    /// `sqlcipher` (default: the `database` file, one receiver) or `postgres` (`[postgres]`,
    /// shared by several receivers).
    pub store: Backend,
    /// Database (SQLCipher) file. Default `/var/lib/hema3n-receiver/receiver.db`.
    pub database: PathBuf,
    /// The shared database, for `store = "postgres"`.
    pub postgres: Option<PostgresConfig>,
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
    /// `GET /metrics` (Prometheus) and `GET /health` on this address; empty = off. Default
    /// `127.0.0.1:9464` (loopback: put a scraper or proxy beside it).
    pub metrics_listen: Option<String>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            receiver_id: "hema3n-cloud".into(),
            store: Backend::Sqlcipher,
            database: "/var/lib/hema3n-receiver/receiver.db".into(),
            postgres: None,
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
            metrics_listen: Some("127.0.0.1:9464".into()),
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
        let pg_ca = c.postgres.as_mut().and_then(|p| p.ca_file.as_mut());
        for p in [c.ca_file.as_mut(), c.client_cert.as_mut(), pg_ca]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.broker_url()?;
        c.postgres_config()?;
        Ok(c)
    }

    /// The `[postgres]` section when `store = "postgres"` (checked: TLS unless the server is
    /// on loopback or a Unix socket; a CA for TLS); `None` for the embedded store.
    pub fn postgres_config(&self) -> Result<Option<&PostgresConfig>, ConfigError> {
        if self.store != Backend::Postgres {
            return Ok(None);
        }
        let p = self.postgres.as_ref().ok_or_else(|| ConfigError::Invalid {
            field: "postgres",
            reason: "store = \"postgres\" needs a [postgres] section (host, port, user, dbname)"
                .into(),
        })?;
        let local = p.host.starts_with('/')
            || p.host == "localhost"
            || p.host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_loopback());
        if !p.tls && !local {
            return Err(ConfigError::Invalid {
                field: "postgres.tls",
                reason: format!(
                    "PostgreSQL at {} must be reached over TLS (tls = false only for loopback or a Unix socket)",
                    p.host
                ),
            });
        }
        if p.tls && p.ca_file.is_none() {
            return Err(ConfigError::Invalid {
                field: "postgres.ca_file",
                reason: "TLS to PostgreSQL needs the server's CA (ca_file)".into(),
            });
        }
        Ok(Some(p))
    }

    /// This receiver instance's name: its MQTT client id (and what it records with what it
    /// stores in a shared database).
    pub fn instance_name(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| {
            format!(
                "hema3n-receiver-{}",
                std::fs::read_to_string("/etc/hostname")
                    .unwrap_or_else(|_| "host".into())
                    .trim()
            )
        })
    }

    /// Opens the configured store (migrating it): the SQLCipher file, or the shared
    /// PostgreSQL database with its data keys wrapped by `receiver-db.key`.
    pub fn open_store(&self, keys: &Keys) -> Result<Box<dyn ReceiverStore>, ReceiverError> {
        let Some(p) = self.postgres_config()? else {
            return Ok(Box::new(ReceiverDb::open(
                &self.database,
                &keys.db_key,
                &keys.db_key_path,
            )?));
        };
        let src = KeySources::from_env(&self.keys_dir);
        let password = match src.read(PG_PASSWORD) {
            Ok((_, raw)) => {
                let text = String::from_utf8(raw.to_vec()).map_err(|_| ReceiverError::BadKey {
                    name: PG_PASSWORD,
                    why: "not UTF-8".into(),
                })?;
                Some(zeroize::Zeroizing::new(
                    text.trim_end_matches(['\n', '\r']).to_string(),
                ))
            }
            Err(KeyError::Missing { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let tls = match (&p.tls, &p.ca_file) {
            (true, Some(ca)) => Some(crate::tls::client_config(ca, None)?),
            _ => None,
        };
        let settings = PgSettings {
            host: p.host.clone(),
            port: p.port,
            user: p.user.clone(),
            dbname: p.dbname.clone(),
            password,
            tls,
            connect_timeout: std::time::Duration::from_secs(p.connect_timeout_secs.max(1)),
            receiver_name: self.instance_name(),
        };
        Ok(Box::new(PgStore::connect(settings, &keys.db_key)?))
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

/// The receiver's long-lived keys as the database thread and the CLI hold them. The HPKE
/// secret is not among them: only `receiver-open` reads it ([`Keys::load_hpke`]), once.
pub struct Keys {
    pub signing: SigningKey,
    pub db_key: zeroize::Zeroizing<[u8; 32]>,
    pub db_key_path: PathBuf,
}

impl Keys {
    pub fn load(dir: &Path) -> Result<Self, ReceiverError> {
        let src = KeySources::from_env(dir);
        let (_, der) = src.read(SIGNING_KEY)?;
        let signing =
            SigningKey::from_pkcs8(SIGNING_KEY, &der).map_err(|e| ReceiverError::BadKey {
                name: SIGNING_KEY,
                why: e.to_string(),
            })?;
        let (db_key_path, db_key) = src.read_key32(DB_KEY)?;
        Ok(Keys {
            signing,
            db_key,
            db_key_path,
        })
    }

    /// The HPKE secret key alone (for the thread that opens envelopes, and `export-public`).
    pub fn load_hpke(dir: &Path) -> Result<RecipientSecretKey, ReceiverError> {
        let (_, h) = KeySources::from_env(dir).read_key32(HPKE_KEY)?;
        RecipientSecretKey::from_bytes(&h).map_err(|e| ReceiverError::BadKey {
            name: HPKE_KEY,
            why: e.to_string(),
        })
    }

    /// The public half appliances import (`receiver-public.toml`), with the HPKE public key.
    pub fn public(&self, receiver_id: &str, hpke: &RecipientPublicKey) -> ReceiverKeys {
        ReceiverKeys {
            receiver_id: receiver_id.into(),
            hpke: hpke.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(host: &str, tls: bool, ca: bool) -> ReceiverConfig {
        ReceiverConfig {
            store: Backend::Postgres,
            postgres: Some(PostgresConfig {
                host: host.into(),
                tls,
                ca_file: ca.then(|| "ca.pem".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn refused(c: &ReceiverConfig) -> String {
        c.postgres_config().unwrap_err().to_string()
    }

    #[test]
    fn postgres_needs_tls_off_loopback_and_a_section() {
        assert!(
            pg("db.example", true, true)
                .postgres_config()
                .unwrap()
                .is_some()
        );
        for local in ["127.0.0.1", "::1", "localhost", "/run/postgresql"] {
            assert!(pg(local, false, false).postgres_config().is_ok(), "{local}");
        }
        assert!(refused(&pg("db.example", false, false)).contains("over TLS"));
        assert!(refused(&pg("10.0.0.5", false, false)).contains("over TLS"));
        assert!(refused(&pg("db.example", true, false)).contains("CA"));
        let mut c = pg("db.example", true, true);
        c.postgres = None;
        assert!(refused(&c).contains("[postgres]"));
        // The embedded store ignores the section.
        c.store = Backend::Sqlcipher;
        assert!(c.postgres_config().unwrap().is_none());
    }

    #[test]
    fn the_store_is_selected_in_receiver_toml() {
        let c: ReceiverConfig = toml::from_str(
            "store = \"postgres\"\n[postgres]\nhost = \"/run/postgresql\"\ntls = false\n",
        )
        .unwrap();
        let p = c.postgres_config().unwrap().unwrap();
        assert_eq!(
            (p.port, p.user.as_str(), p.dbname.as_str()),
            (5432, "hema3n_receiver", "hema3n")
        );
        assert!(toml::from_str::<ReceiverConfig>("store = \"mysql\"\n").is_err());
        assert_eq!(ReceiverConfig::default().store, Backend::Sqlcipher);
    }
}
