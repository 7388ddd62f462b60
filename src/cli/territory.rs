//! `keys rotate|rewrap|retire|list`: territory key versions. `keys rotate --if-due` is the
//! automatic rotation `hema3n-rotate-keys.timer` runs daily (as root): every territory key past
//! `keys.rotate_after_days` gets a new version. On a sealed vehicle the new key is sealed at
//! once, named in the daemon unit's credentials drop-in, and — because the running daemon can
//! read only the credentials systemd gave it at start — the daemon is restarted before data keys
//! are re-wrapped under it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::Config;
use crate::crypto::keyring::{
    admin_credentials_dir, keys_sealed, parse_territory_key_name, territory_key_name, write_secret,
};
use crate::model::{Actor, now_ms};
use crate::storage::{DaemonLock, StoreError};

use super::{CmdResult, Failure, open_db};

/// Which territory keys `keys rotate` rotates.
pub enum Rotation {
    /// This territory's, due or not.
    Territory(String),
    /// Every territory's that is due (`--if-due`), if `keys.auto_rotate` allows.
    Due,
}

/// `keys rotate`: a new version of each selected territory key (sealed and added to the
/// credentials drop-in on a sealed vehicle), the alarm re-evaluated, then (unless `no_rewrap`)
/// every data key re-wrapped under it once the daemon can read it.
pub fn keys_rotate(
    cfg: &Config,
    which: Rotation,
    no_rewrap: bool,
    restart_unit: Option<&str>,
) -> CmdResult {
    let sealed = keys_sealed(&cfg.keys.dir, &cfg.keys.credstore);
    if sealed {
        // A run interrupted between creating a version and sealing it is finished first.
        finish_sealing(cfg)?;
    }
    let mut db = open_db(cfg)?;
    let territories = match which {
        Rotation::Territory(t) => vec![t],
        Rotation::Due => {
            let due: Vec<_> =
                crate::lifecycle::key_ages(cfg, &db.current_key_versions()?, now_ms())
                    .into_iter()
                    .filter(|k| k.due)
                    .collect();
            if due.is_empty() {
                println!(
                    "no territory key is due (keys.rotate_after_days = {})",
                    cfg.keys.rotate_after_days
                );
                return Ok(0);
            }
            let listed: Vec<String> = due
                .iter()
                .map(|k| format!("`{}` v{} ({} days old)", k.territory, k.version, k.age_days))
                .collect();
            if !cfg.keys.auto_rotate {
                println!(
                    "due for rotation: {}; automatic rotation is off (keys.auto_rotate = false): rotate with `keys rotate --territory T`",
                    listed.join(", ")
                );
                return Ok(0);
            }
            println!("due for rotation: {}", listed.join(", "));
            due.into_iter().map(|k| k.territory).collect()
        }
    };
    let actor = Actor::cli();
    for t in &territories {
        let v = db.rotate_territory_key(&actor, t, &cfg.keys.dir)?;
        let name = territory_key_name(t, v);
        let path = cfg.keys.dir.join(&name);
        if sealed {
            // This command keeps reading it after the plaintext is destroyed.
            if let Some(dir) = admin_credentials_dir() {
                write_secret(dir, &name, &zeroize::Zeroizing::new(std::fs::read(&path)?))?;
            }
        } else {
            give_to_directory_owner(&path)?;
        }
        println!(
            "territory `{t}`: created key version v{v} in {}",
            cfg.keys.dir.display()
        );
    }
    crate::lifecycle::update_alarms(cfg, &mut db)?;
    if sealed {
        finish_sealing(cfg)?;
    }
    if no_rewrap {
        return Ok(0);
    }
    if sealed && !daemon_can_read_new_keys(cfg, restart_unit)? {
        return Ok(0);
    }
    for t in &territories {
        let r = db.rewrap(&actor, t)?;
        println!(
            "territory `{t}`: re-wrapped {} data keys under v{}",
            r.rewrapped, r.to_version
        );
    }
    Ok(0)
}

/// Seals territory key files left in `keys.dir` (all key files, as `keys seal` does) and makes
/// the credentials drop-in name every sealed territory key.
fn finish_sealing(cfg: &Config) -> CmdResult {
    let territory_key = |n: &str| parse_territory_key_name(n).is_some();
    if !super::credstore::files(&cfg.keys.dir, territory_key)?.is_empty() {
        super::credstore::keys_seal(cfg, "auto")?;
    }
    for name in sync_dropin(&cfg.keys.credentials_dropin, &cfg.keys.credstore)? {
        println!(
            "{}: the daemon loads credential {name}",
            cfg.keys.credentials_dropin.display()
        );
    }
    Ok(0)
}

/// Whether re-wrapping is safe now: the daemon is stopped (it loads the new credential when it
/// starts: systemd is reloaded if `restart_unit` names its unit), or it was restarted with it.
/// Otherwise says what the admin must do, and re-wrapping waits.
fn daemon_can_read_new_keys(cfg: &Config, restart_unit: Option<&str>) -> Result<bool, Failure> {
    let running = match DaemonLock::acquire(&cfg.db_path()) {
        Ok(_) => false,
        Err(StoreError::InUse { .. }) => true,
        Err(e) => return Err(e.into()),
    };
    let systemctl = |args: &[&str]| {
        crate::systemd::systemctl(args).map_err(|e| Failure {
            code: 1,
            error: anyhow::anyhow!(e),
        })
    };
    match restart_unit {
        Some(unit) => {
            systemctl(&["daemon-reload"])?;
            if running {
                systemctl(&["try-restart", unit])?;
                println!("restarted {unit}: it now holds the new key version");
            }
            Ok(true)
        }
        None if running => {
            println!(
                "the running daemon cannot read the new key until it restarts: run `systemctl daemon-reload && systemctl restart hema3n-edge`, then `hema3n-edge keys rewrap --territory T`"
            );
            Ok(false)
        }
        None => {
            println!("run `systemctl daemon-reload` before the daemon starts again");
            Ok(true)
        }
    }
}

/// Adds a `LoadCredentialEncrypted=` line for each territory key credential in `store` that
/// `dropin` does not name yet (writing it, with its `[Service]` header, if missing); returns the
/// names added. The file is replaced atomically.
pub(super) fn sync_dropin(dropin: &Path, store: &Path) -> Result<Vec<String>, Failure> {
    let names = match super::credstore::files(store, |n| parse_territory_key_name(n).is_some()) {
        Ok(v) => v.into_iter().map(|(n, _)| n),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let text = match std::fs::read_to_string(dropin) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let listed = |n: &str| {
        text.lines().any(|l| {
            l.trim()
                .strip_prefix("LoadCredentialEncrypted=")
                .and_then(|v| v.split_once(':'))
                .is_some_and(|(id, _)| id == n)
        })
    };
    let added: Vec<String> = names.into_iter().filter(|n| !listed(n)).collect();
    if added.is_empty() {
        return Ok(added);
    }
    let mut out = if text.is_empty() {
        "# Territory key versions of this appliance (scripts/provision.sh, keys rotate).\n[Service]\n"
            .to_string()
    } else {
        text.clone()
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    for n in &added {
        out.push_str(&format!(
            "LoadCredentialEncrypted={n}:{}\n",
            store.join(n).display()
        ));
    }
    if let Some(dir) = dropin.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = dropin.with_extension("conf.new");
    std::fs::write(&tmp, out)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dropin)?;
    Ok(added)
}

/// A key file written by root into a key directory that another user owns (plain keys, e.g. a
/// development appliance) goes to that user, who must read it.
fn give_to_directory_owner(path: &Path) -> std::io::Result<()> {
    if !crate::host::is_root() {
        return Ok(());
    }
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    let m = std::fs::metadata(dir)?;
    if m.uid() != 0 {
        std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))?;
    }
    Ok(())
}

/// `keys rewrap`: moves every data key of a territory to its current key version.
pub fn keys_rewrap(cfg: &Config, territory: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    let r = db.rewrap(&Actor::cli(), territory)?;
    println!(
        "territory `{territory}`: re-wrapped {} data keys under v{}",
        r.rewrapped, r.to_version
    );
    Ok(0)
}

/// `keys retire`: marks an unused old version retired.
pub fn keys_retire(cfg: &Config, territory: &str, version: u32) -> CmdResult {
    let mut db = open_db(cfg)?;
    db.retire_key_version(&Actor::cli(), territory, version)?;
    println!(
        "territory `{territory}` key version v{version} retired; its file {} (on a sealed vehicle: its credential and its line in keys.credentials_dropin) may now be removed",
        territory_key_name(territory, version)
    );
    Ok(0)
}

/// `keys list`.
pub fn keys_list(cfg: &Config) -> CmdResult {
    let db = open_db(cfg)?;
    println!(
        "{:<16} {:>7} {:<16} {:>6} {:>7} {:>9} {:>12}",
        "territory", "version", "key id", "loaded", "retired", "data keys", "encryptions"
    );
    for k in db.key_versions()? {
        println!(
            "{:<16} {:>7} {:<16} {:>6} {:>7} {:>9} {:>12}",
            k.territory, k.version, k.key_id, k.loaded, k.retired, k.data_keys, k.invocations
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dropin_gains_each_missing_territory_credential_once() {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("credstore");
        std::fs::create_dir(&store).unwrap();
        for n in [
            "db.key",
            "territory.a.v1.key",
            "territory.a.v2.key",
            "territory.b.v1.key",
        ] {
            std::fs::write(store.join(n), b"x").unwrap();
        }
        let dropin = d.path().join("unit.d/credentials.conf");
        std::fs::create_dir(d.path().join("unit.d")).unwrap();
        let v1 = format!(
            "[Service]\nLoadCredentialEncrypted=territory.a.v1.key:{}",
            store.join("territory.a.v1.key").display()
        );
        std::fs::write(&dropin, &v1).unwrap();
        assert_eq!(
            sync_dropin(&dropin, &store).unwrap(),
            ["territory.a.v2.key", "territory.b.v1.key"]
        );
        let text = std::fs::read_to_string(&dropin).unwrap();
        assert!(text.starts_with(&format!("{v1}\n")), "{text}");
        assert_eq!(text.matches("LoadCredentialEncrypted=").count(), 3);
        assert!(!text.contains("db.key"));
        assert!(sync_dropin(&dropin, &store).unwrap().is_empty());
        assert_eq!(std::fs::read_to_string(&dropin).unwrap(), text);

        let fresh = d.path().join("new.d/credentials.conf");
        assert_eq!(sync_dropin(&fresh, &store).unwrap().len(), 3);
        let text = std::fs::read_to_string(&fresh).unwrap();
        assert!(text.contains("\n[Service]\n"), "{text}");
        assert!(
            sync_dropin(&fresh, &d.path().join("absent"))
                .unwrap()
                .is_empty()
        );
    }
}
