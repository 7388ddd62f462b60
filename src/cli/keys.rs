//! `keys …` other than territory keys (`territory`): rotate the database, index, audit and
//! signing keys; export the appliance's public keys; import the receiver's.

use crate::config::Config;
use crate::crypto::keyring::{self, KeySources, Keyring};
use crate::model::Actor;
use std::path::Path;

use super::{CmdResult, EXIT_CONFIG, Failure, open_db};

/// The next database key while `keys rekey-db` runs (kept if it is interrupted).
const NEXT_DB_KEY: &str = "db.key.next";
/// The next audit MAC key while `keys rotate-audit` runs.
const NEXT_AUDIT_KEY: &str = "audit.key.next";

/// `keys rotate-audit` (daemon stopped): a new audit MAC key for the entries to come. The old
/// key is kept as `audit.<key id>.key` (sealed too on a sealed vehicle: `audit verify` needs it
/// for the entries it MAC'd), a checkpoint is signed and the rotation audited under the old key,
/// then `audit.key` is replaced.
pub fn keys_rotate_audit(cfg: &Config) -> CmdResult {
    let _lock = crate::storage::DaemonLock::acquire(&cfg.db_path())?;
    let (next_path, new_key) = next_key32(cfg, NEXT_AUDIT_KEY)?;
    let sources = KeySources::from_env(&cfg.keys.dir);
    let (_, old) = sources.read_key32(keyring::AUDIT_KEY)?;
    let (old_id, new_id) = (
        crate::crypto::key_id(old.as_ref(), "audit"),
        crate::crypto::key_id(new_key.as_ref(), "audit"),
    );
    let retired = keyring::retired_audit_key_name(&old);
    let store = &cfg.keys.credstore;
    let sealed = store.join(keyring::AUDIT_KEY).exists();
    if sources.find(&retired).is_err() && !store.join(&retired).exists() {
        let path = keyring::write_key32(&cfg.keys.dir, &retired, &old)?;
        if sealed {
            super::credstore::seal_file(&retired, "auto", &path, store)?;
        }
        let mut db = open_db(cfg)?;
        db.checkpoint_audit_if_due(crate::model::now_ms(), true)?;
        db.audit(
            &crate::model::AuditEvent::new(
                &Actor::cli(),
                "keys.rotate_audit",
                "appliance",
                crate::model::Outcome::Success,
            )
            .details(serde_json::json!({ "retired": old_id, "current": new_id })),
        )?;
        println!(
            "audit key {old_id} retired as {retired} (kept: it verifies the entries it MAC'd)"
        );
    }
    install_next(cfg, keyring::AUDIT_KEY, &next_path)?;
    println!("audit key {new_id} is current; start the daemon");
    Ok(0)
}

/// The next blind-index key while `keys rotate-index` runs.
const NEXT_INDEX_KEY: &str = "index.key.next";

/// The staged next 32-byte key `name` in `keys.dir`, created (0600) if absent.
fn next_key32(
    cfg: &Config,
    name: &str,
) -> Result<(std::path::PathBuf, zeroize::Zeroizing<[u8; 32]>), Failure> {
    let path = cfg.keys.dir.join(name);
    let key = match std::fs::read(&path) {
        Ok(b) => keyring::parse_key32(name, &zeroize::Zeroizing::new(b))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = crate::crypto::random_key()?;
            keyring::write_key32(&cfg.keys.dir, name, &k)?;
            k
        }
        Err(e) => return Err(e.into()),
    };
    Ok((path, key))
}

/// Makes the staged key at `next` the key `name`: replaces its sealed credential when the
/// appliance is sealed, else the file.
fn install_next(cfg: &Config, name: &str, next: &Path) -> CmdResult {
    if cfg.keys.credstore.join(name).exists() {
        super::credstore::seal_file(name, "auto", next, &cfg.keys.credstore)
    } else {
        std::fs::rename(next, cfg.keys.dir.join(name))?;
        Ok(0)
    }
}

/// `keys rotate-index` (daemon stopped): a new blind-index key, every patient's blind indexes
/// rebuilt under it in one transaction (audited), then `index.key` replaced. A rerun after an
/// interruption finds the rebuild recorded and only replaces the file.
pub fn keys_rotate_index(cfg: &Config) -> CmdResult {
    let _lock = crate::storage::DaemonLock::acquire(&cfg.db_path())?;
    let (next_path, new_key) = next_key32(cfg, NEXT_INDEX_KEY)?;
    let id = crate::crypto::key_id(new_key.as_ref(), "blind-index");
    let mut db = open_db(cfg)?;
    if db.index_key_id()?.as_deref() == Some(id.as_str()) {
        println!("blind indexes were already rebuilt under index key {id}: finishing the key file");
    } else {
        let n = db.rebuild_blind_indexes(&Actor::cli(), &new_key)?;
        println!("blind indexes of {n} patients rebuilt under index key {id}");
    }
    drop(db);
    install_next(cfg, keyring::INDEX_KEY, &next_path)?;
    println!("index.key replaced");
    Ok(0)
}

/// `keys rekey-db` (daemon stopped): a new `db.key`, the database re-encrypted under it
/// (`PRAGMA rekey`), the change audited, then the key file (or its sealed credential) replaced.
/// The new key is written first as `db.key.next`; a run interrupted after the rekey finds the
/// database already opening under it and only replaces the file.
pub fn keys_rekey_db(cfg: &Config) -> CmdResult {
    let _lock = crate::storage::DaemonLock::acquire(&cfg.db_path())?;
    let (next_path, new_key) = next_key32(cfg, NEXT_DB_KEY)?;
    let sources = || KeySources::from_env(&cfg.keys.dir);
    let mut under_new = Keyring::load(sources())?;
    under_new.db_key = new_key.clone();
    let id = crate::storage::db_key_fingerprint(&new_key);
    if crate::storage::Db::open(cfg, under_new).is_ok() {
        println!("the database already opens under db.key {id}: finishing the key file");
    } else {
        let mut db = open_db(cfg)?;
        db.rekey(&Actor::cli(), &new_key)?;
        println!("database re-encrypted under db.key {id}");
    }
    install_next(cfg, keyring::DB_KEY, &next_path)?;
    println!(
        "db.key replaced; older backups need the former key (escrow it, or escrow again and take a new backup now)"
    );
    Ok(0)
}

/// The staged next appliance signing key (`keys rotate-signing`).
const NEXT_SIGNING_KEY: &str = "appliance-signing.next.p8";

/// `keys rotate-signing [--out F]` stages a new appliance signing key and prints its public
/// half for the receiver; `--activate` (daemon stopped) makes it current: a last checkpoint
/// under the old key, the old public half kept for `audit verify`, the change audited, the key
/// file (or encrypted credential) replaced.
pub fn keys_rotate_signing(cfg: &Config, activate: bool, out: Option<&Path>) -> CmdResult {
    use crate::crypto::sign::SigningKey;
    let next_path = cfg.keys.dir.join(NEXT_SIGNING_KEY);
    if !activate {
        let der = match std::fs::read(&next_path) {
            Ok(d) => zeroize::Zeroizing::new(d),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let der = SigningKey::generate_pkcs8()?;
                keyring::write_secret(&cfg.keys.dir, NEXT_SIGNING_KEY, &der)?;
                der
            }
            Err(e) => return Err(e.into()),
        };
        let next = SigningKey::from_pkcs8(NEXT_SIGNING_KEY, &der)?;
        let pem = next.public().to_pem();
        match out {
            Some(p) => std::fs::write(p, &pem)?,
            None => print!("{pem}"),
        }
        eprintln!(
            "staged signing key {} in {}; register it with the receiver (hema3n-receiver appliances add-key {} FILE), then stop the daemon and run `hema3n-edge keys rotate-signing --activate`",
            next.public().key_id(),
            next_path.display(),
            cfg.appliance_id
        );
        return Ok(0);
    }
    let _lock = crate::storage::DaemonLock::acquire(&cfg.db_path())?;
    let der = zeroize::Zeroizing::new(std::fs::read(&next_path).map_err(|e| Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!(
            "{}: {e} (stage a key first: `hema3n-edge keys rotate-signing`)",
            next_path.display()
        ),
    })?);
    let next = SigningKey::from_pkcs8(NEXT_SIGNING_KEY, &der)?;
    let mut db = open_db(cfg)?;
    db.retire_signing_key(&crate::model::Actor::cli(), &next.public())?;
    drop(db);
    install_next(cfg, keyring::SIGNING_KEY, &next_path)?;
    println!(
        "signing key {} is current (the former key's public half stays in the database for `audit verify`); start the daemon",
        next.public().key_id()
    );
    Ok(0)
}

/// `keys export-public`: the appliance public key (PEM SPKI) for the cloud receiver.
pub fn keys_export_public(cfg: &Config, out: Option<&Path>) -> CmdResult {
    let sources = KeySources::from_env(&cfg.keys.dir);
    let keys = Keyring::load(sources)?;
    let pem = keys.signing.public().to_pem();
    match out {
        Some(p) => {
            std::fs::write(p, &pem)?;
            eprintln!(
                "wrote appliance public key (key id {}) to {}",
                keys.signing.public().key_id(),
                p.display()
            );
        }
        None => print!("{pem}"),
    }
    Ok(0)
}

/// `keys import-receiver FILE`: validates and installs the receiver's public keys.
pub fn keys_import_receiver(cfg: &Config, file: &Path) -> CmdResult {
    let text = std::fs::read_to_string(file)?;
    let k = crate::sync::ReceiverKeys::parse(&text).map_err(|e| Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!("{}: {e}", file.display()),
    })?;
    let target = cfg.keys.dir.join(crate::sync::RECEIVER_PUBLIC);
    if target.exists() {
        std::fs::remove_file(&target)?;
    }
    keyring::write_secret(
        &cfg.keys.dir,
        crate::sync::RECEIVER_PUBLIC,
        k.to_toml().as_bytes(),
    )?;
    println!(
        "installed receiver {} (envelope key {}, receipt key {})",
        k.receiver_id,
        hex::encode(k.hpke.key_id()),
        k.signing.key_id()
    );
    Ok(0)
}
