//! The receiver's public keys as the appliance installs them (`keys import-receiver`), and the
//! TLS client configuration for the cloud broker (mTLS key from a credential).

use crate::config::Config;
use crate::crypto::keyring::{KeyError, KeySources};
use crate::crypto::seal::RecipientPublicKey;
use crate::crypto::sign::PublicKey;

use super::SyncError;

/// File (key directory or credentials) with the receiver's public keys, made by
/// `hema3n-receiver export-public` and installed by `hema3n-edge keys import-receiver`.
pub const RECEIVER_PUBLIC: &str = "receiver-public.toml";
/// Credential with the appliance's TLS client key (PEM) for mTLS to the cloud broker.
pub const CLOUD_CLIENT_KEY: &str = "cloud-client.key";

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
