//! Long-lived keys and where they come from.
//!
//! Keys are read from systemd credentials (`$CREDENTIALS_DIRECTORY`) first and then from the
//! configured key directory. Key files must not be readable by group or others. The names are:
//!
//! | file | content | purpose |
//! |---|---|---|
//! | `db.key` | 32 bytes, hex (64 chars) or raw | SQLCipher raw key |
//! | `index.key` | 32 bytes | blind-index HMAC key |
//! | `audit.key` | 32 bytes | audit-chain MAC key |
//! | `territory.<T>.v<N>.key` | 32 bytes | key-encryption key of territory `T`, version `N` |
//! | `appliance-signing.p8` | PKCS#8 DER, P-256 | appliance ES256 key (audit checkpoints, bundles) |
//!
//! Invariant: key bytes never leave this module except as `Zeroizing` buffers or ring key
//! objects, and no error or log line carries them.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::blind::BlindIndexer;
use super::field::Kek;
use super::sign::SigningKey;
use super::{CryptoError, key_id};

pub const DB_KEY: &str = "db.key";
pub const INDEX_KEY: &str = "index.key";
pub const AUDIT_KEY: &str = "audit.key";
pub const SIGNING_KEY: &str = "appliance-signing.p8";

/// File name of a territory key-encryption key.
pub fn territory_key_name(territory: &str, version: u32) -> String {
    format!("territory.{territory}.v{version}.key")
}

pub fn parse_territory_key_name(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix("territory.")?.strip_suffix(".key")?;
    let (t, v) = rest.rsplit_once(".v")?;
    Some((t.to_string(), v.parse().ok()?))
}

/// Errors while finding, reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No source holds the key. Recovery: provision it (`hema3n-edge init` on a dev machine,
    /// `scripts/provision.sh` and systemd credentials on an appliance).
    #[error("key `{name}` not found (looked in {}); provision it with `hema3n-edge init --data-dir DIR` (development) or scripts/provision.sh and a systemd credential (appliance)", searched_list(.searched))]
    Missing {
        name: String,
        searched: Vec<PathBuf>,
    },
    /// A key file is readable by group or others. Recovery: `chmod 600` it.
    #[error(
        "key file {path} has mode {mode:o}; it must not be accessible by group or others (chmod 600 it)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    /// A key file exists but does not hold a valid key.
    #[error("key file {path}: {source}")]
    Malformed {
        path: PathBuf,
        #[source]
        source: CryptoError,
    },
    /// Creating a key would overwrite an existing one. Recovery: none needed; keys are never replaced.
    #[error("refusing to overwrite existing key file {0}")]
    Exists(PathBuf),
    #[error("key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn searched_list(v: &[PathBuf]) -> String {
    if v.is_empty() {
        return "no key directory is configured and $CREDENTIALS_DIRECTORY is unset".into();
    }
    v.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

static ADMIN_CREDENTIALS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// For the rest of this process, read keys from `dir` first: the private directory into which
/// an admin command decrypted the appliance's encrypted credentials (what systemd does for the
/// daemon's unit). Only the first call counts.
pub fn use_admin_credentials(dir: PathBuf) {
    let _ = ADMIN_CREDENTIALS.set(dir);
}

/// The directory [`use_admin_credentials`] set, if any.
pub fn admin_credentials_dir() -> Option<&'static Path> {
    ADMIN_CREDENTIALS.get().map(PathBuf::as_path)
}

/// The ordered list of places keys are read from.
#[derive(Debug, Clone)]
pub struct KeySources {
    dirs: Vec<PathBuf>,
}

impl KeySources {
    /// `$CREDENTIALS_DIRECTORY` (if set; else the admin credentials an admin command
    /// decrypted, see [`use_admin_credentials`]) then `key_dir`.
    pub fn from_env(key_dir: &Path) -> Self {
        let mut dirs = Vec::new();
        if let Some(c) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            dirs.push(PathBuf::from(c));
        } else if let Some(d) = ADMIN_CREDENTIALS.get() {
            dirs.push(d.clone());
        }
        dirs.push(key_dir.to_path_buf());
        KeySources { dirs }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Finds a key file by name, checking its permissions.
    pub fn find(&self, name: &str) -> Result<PathBuf, KeyError> {
        for d in &self.dirs {
            let p = d.join(name);
            match fs::metadata(&p) {
                Ok(m) => {
                    let mode = m.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        return Err(KeyError::Permissions { path: p, mode });
                    }
                    return Ok(p);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(KeyError::Io { path: p, source: e }),
            }
        }
        Err(KeyError::Missing {
            name: name.into(),
            searched: self.dirs.clone(),
        })
    }

    /// Reads a key file by name (permissions checked).
    pub fn read(&self, name: &str) -> Result<(PathBuf, Zeroizing<Vec<u8>>), KeyError> {
        let p = self.find(name)?;
        let bytes = fs::read(&p).map_err(|e| KeyError::Io {
            path: p.clone(),
            source: e,
        })?;
        Ok((p, Zeroizing::new(bytes)))
    }

    /// Reads a 32-byte key (hex text or raw bytes).
    pub fn read_key32(&self, name: &str) -> Result<(PathBuf, Zeroizing<[u8; 32]>), KeyError> {
        let (p, bytes) = self.read(name)?;
        let k = parse_key32(name, &bytes).map_err(|e| KeyError::Malformed {
            path: p.clone(),
            source: e,
        })?;
        Ok((p, k))
    }

    /// Former audit keys present in any source: (file name, key), first source wins per name.
    pub fn retired_audit_keys(&self) -> Result<Vec<NamedKey>, KeyError> {
        let mut names = std::collections::BTreeSet::new();
        for d in &self.dirs {
            names.extend(
                file_names(d)?
                    .into_iter()
                    .filter(|n| is_retired_audit_key_name(n)),
            );
        }
        names
            .into_iter()
            .map(|n| self.read_key32(&n).map(|(_, k)| (n, k)))
            .collect()
    }

    /// All territory key versions present in any source (first source wins per name).
    pub fn territory_keys(&self) -> Result<BTreeMap<String, BTreeMap<u32, Kek>>, KeyError> {
        let mut out: BTreeMap<String, BTreeMap<u32, Kek>> = BTreeMap::new();
        for d in &self.dirs {
            for name in file_names(d)? {
                let Some((t, v)) = parse_territory_key_name(&name) else {
                    continue;
                };
                if out.get(&t).is_some_and(|m| m.contains_key(&v)) {
                    continue;
                }
                let (_, k) = self.read_key32(&name)?;
                out.entry(t).or_default().insert(v, Kek::new(v, &k));
            }
        }
        Ok(out)
    }
}

/// Sorted file names in a key source; none when it does not exist.
fn file_names(d: &Path) -> Result<Vec<String>, KeyError> {
    let rd = match fs::read_dir(d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KeyError::Io {
                path: d.to_path_buf(),
                source: e,
            });
        }
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// A key file's name and its 32 bytes.
pub type NamedKey = (String, Zeroizing<[u8; 32]>);

/// File name of a former audit key: `audit.<key id>.key`.
pub fn retired_audit_key_name(key: &[u8; 32]) -> String {
    format!("audit.{}.key", key_id(key, "audit"))
}

fn is_retired_audit_key_name(n: &str) -> bool {
    n.strip_prefix("audit.")
        .and_then(|r| r.strip_suffix(".key"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses a 32-byte key from hex text (whitespace ignored) or exactly 32 raw bytes.
pub fn parse_key32(name: &str, bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut k = Zeroizing::new([0u8; 32]);
    let text: Zeroizing<Vec<u8>> = Zeroizing::new(
        bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect(),
    );
    if text.len() == 64 && hex::decode_to_slice(&text[..], k.as_mut()).is_ok() {
        return Ok(k);
    }
    if bytes.len() == 32 {
        k.copy_from_slice(bytes);
        return Ok(k);
    }
    Err(CryptoError::BadKey {
        name: name.into(),
        why: format!(
            "expected 32 bytes as 64 hex characters or raw, found {} bytes",
            bytes.len()
        ),
    })
}

/// Writes a new secret file with mode 0600; never overwrites.
pub fn write_secret(dir: &Path, name: &str, content: &[u8]) -> Result<PathBuf, KeyError> {
    let p = dir.join(name);
    let io = |e| KeyError::Io {
        path: p.clone(),
        source: e,
    };
    fs::create_dir_all(dir).map_err(|e| KeyError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let mut f = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(KeyError::Exists(p)),
        Err(e) => return Err(io(e)),
    };
    f.write_all(content).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(p)
}

/// Creates a new random 32-byte key file (hex) unless one exists; returns whether it was created.
pub fn ensure_key32(dir: &Path, name: &str) -> Result<bool, KeyError> {
    if dir.join(name).exists() {
        return Ok(false);
    }
    let k = super::random_key().map_err(|e| KeyError::Malformed {
        path: dir.join(name),
        source: e,
    })?;
    write_key32(dir, name, &k)?;
    Ok(true)
}

/// Writes a 32-byte key as a new 0600 file of hex text (the form every key file has).
pub fn write_key32(dir: &Path, name: &str, key: &[u8; 32]) -> Result<PathBuf, KeyError> {
    let mut text = Zeroizing::new(hex::encode(key).into_bytes());
    text.push(b'\n');
    write_secret(dir, name, &text)
}

/// Keys live as encrypted credentials in `credstore` (`keys seal` ran), not as files in
/// `key_dir`.
pub fn keys_sealed(key_dir: &Path, credstore: &Path) -> bool {
    credstore.join(DB_KEY).exists() && !key_dir.join(DB_KEY).exists()
}

/// Creates the appliance signing key unless one exists; returns whether it was created.
pub fn ensure_signing_key(dir: &Path) -> Result<bool, KeyError> {
    if dir.join(SIGNING_KEY).exists() {
        return Ok(false);
    }
    let der = SigningKey::generate_pkcs8().map_err(|e| KeyError::Malformed {
        path: dir.join(SIGNING_KEY),
        source: e,
    })?;
    write_secret(dir, SIGNING_KEY, &der)?;
    Ok(true)
}

/// Every long-lived key the daemon needs, loaded and parsed.
pub struct Keyring {
    pub sources: KeySources,
    pub db_key: Zeroizing<[u8; 32]>,
    pub db_key_path: PathBuf,
    pub index: BlindIndexer,
    pub audit_key: Zeroizing<[u8; 32]>,
    /// `audit_key` prepared for HMAC.
    pub audit_mac: super::Mac,
    /// Former audit keys (`audit.<key id>.key`, `keys rotate-audit`), for verifying entries
    /// written before a rotation.
    pub retired_audit_macs: Vec<super::Mac>,
    /// Shared with the sealer, which signs envelopes outside the storage thread.
    pub signing: std::sync::Arc<SigningKey>,
    /// territory → version → key-encryption key.
    pub territories: BTreeMap<String, BTreeMap<u32, Kek>>,
}

impl Keyring {
    pub fn load(sources: KeySources) -> Result<Self, KeyError> {
        let (db_key_path, db_key) = sources.read_key32(DB_KEY)?;
        let (_, index) = sources.read_key32(INDEX_KEY)?;
        let (_, audit_key) = sources.read_key32(AUDIT_KEY)?;
        let (sp, sder) = sources.read(SIGNING_KEY)?;
        let signing =
            SigningKey::from_pkcs8(SIGNING_KEY, &sder).map_err(|e| KeyError::Malformed {
                path: sp,
                source: e,
            })?;
        let territories = sources.territory_keys()?;
        let audit_mac = super::Mac::new(audit_key.as_ref());
        let retired_audit_macs = sources
            .retired_audit_keys()?
            .iter()
            .map(|(_, k)| super::Mac::new(k.as_ref()))
            .collect();
        Ok(Keyring {
            retired_audit_macs,
            db_key,
            db_key_path,
            index: BlindIndexer::new(index),
            audit_key,
            audit_mac,
            signing: std::sync::Arc::new(signing),
            territories,
            sources,
        })
    }

    /// Public fingerprint of the database key.
    pub fn db_key_id(&self) -> String {
        key_id(self.db_key.as_ref(), "sqlcipher")
    }

    /// Re-reads territory keys (after `keys rotate` added a version while the daemon runs).
    pub fn reload_territories(&mut self) -> Result<(), KeyError> {
        self.territories = self.sources.territory_keys()?;
        Ok(())
    }

    pub fn kek(&self, territory: &str, version: u32) -> Option<&Kek> {
        self.territories.get(territory)?.get(&version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn territory_key_names_round_trip() {
        assert_eq!(
            parse_territory_key_name(&territory_key_name("north-1", 12)),
            Some(("north-1".into(), 12))
        );
        assert_eq!(parse_territory_key_name("territory.x.key"), None);
        assert_eq!(parse_territory_key_name("db.key"), None);
    }

    #[test]
    fn key32_accepts_hex_and_raw_only() {
        let hexk = format!("{}\n", "ab".repeat(32));
        assert_eq!(parse_key32("k", hexk.as_bytes()).unwrap()[0], 0xab);
        assert_eq!(parse_key32("k", &[7u8; 32]).unwrap()[31], 7);
        assert!(parse_key32("k", b"short").is_err());
    }

    #[test]
    fn group_readable_key_is_refused_and_missing_key_names_places() {
        let d = tempfile::tempdir().unwrap();
        ensure_key32(d.path(), DB_KEY).unwrap();
        assert!(
            !ensure_key32(d.path(), DB_KEY).unwrap(),
            "must not overwrite"
        );
        let s = KeySources {
            dirs: vec![d.path().into()],
        };
        s.read_key32(DB_KEY).unwrap();
        fs::set_permissions(d.path().join(DB_KEY), fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            s.read_key32(DB_KEY),
            Err(KeyError::Permissions { .. })
        ));
        let e = s.read_key32(INDEX_KEY).unwrap_err().to_string();
        assert!(
            e.contains("index.key") && e.contains(&d.path().display().to_string()),
            "{e}"
        );
    }
}
