//! Encrypted credentials on a provisioned appliance: `keys seal` encrypts the key files with
//! `systemd-creds` on the vehicle itself (first boot, `hema3n-seal-keys.service`) and destroys
//! the plaintext; admin commands run as root decrypt them into a private directory for their own
//! use (what systemd does for the daemon's unit) and then drop to the daemon's user.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::crypto::keyring::{DB_KEY, use_admin_credentials, write_secret};
use crate::systemd::{creds_decrypt, creds_encrypt};

use super::{CmdResult, EXIT_CONFIG, Failure};

fn failure(code: u8, msg: String) -> Failure {
    Failure {
        code,
        error: anyhow::anyhow!(msg),
    }
}

/// Key files (secrets) as opposed to certificates, requests and public keys beside them.
fn is_secret(name: &str) -> bool {
    // A staged key (`*.next.*`) is sealed when it becomes current, under its final name.
    !name.starts_with('.')
        && !name.contains(".next.")
        && (name.ends_with(".key") || name.ends_with(".p8") || name == "mqtt.password")
}

/// Files of `dir` (sorted) that `keep` selects.
pub(super) fn files(
    dir: &Path,
    keep: impl Fn(&str) -> bool,
) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut v: Vec<(String, PathBuf)> = fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| keep(n))
        .collect();
    v.sort();
    Ok(v)
}

/// Overwrites a file with zeros, syncs and removes it.
fn shred(path: &Path) -> std::io::Result<()> {
    let len = fs::metadata(path)?.len() as usize;
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(&vec![0u8; len])?;
    f.sync_all()?;
    drop(f);
    fs::remove_file(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// `keys seal [--with-key K]`: every key file of `keys.dir` becomes an encrypted credential in
/// `keys.credstore` (checked by decrypting it again), then its plaintext is overwritten and
/// removed. Re-running after an interruption finishes the job; a credential that differs from
/// the file beside it is refused (nothing is destroyed).
pub fn keys_seal(cfg: &Config, with_key: &str) -> CmdResult {
    let (keys, store) = (&cfg.keys.dir, &cfg.keys.credstore);
    let plain = files(keys, is_secret).map_err(|e| {
        failure(
            EXIT_CONFIG,
            format!("key directory {}: {e}", keys.display()),
        )
    })?;
    if plain.is_empty() {
        println!("nothing to seal: no key files in {}", keys.display());
        return Ok(0);
    }
    fs::create_dir_all(store)?;
    fs::set_permissions(store, fs::Permissions::from_mode(0o700))?;
    let (mut sealed, mut finished) = (0, 0);
    for (name, path) in plain {
        let dest = store.join(&name);
        if dest.exists() {
            let bytes = zeroize::Zeroizing::new(fs::read(&path)?);
            let back = creds_decrypt(&name, &dest)
                .map_err(|e| failure(1, format!("{}: {e}", dest.display())))?;
            if !crate::crypto::ct_eq(&back, &bytes) {
                return Err(failure(
                    1,
                    format!(
                        "{} already exists and holds another key than {}; refusing to destroy either",
                        dest.display(),
                        path.display()
                    ),
                ));
            }
            shred(&path)?;
            finished += 1;
            continue;
        }
        seal_file(&name, with_key, &path, store)?;
        sealed += 1;
    }
    println!(
        "sealed {sealed} keys into {} ({finished} were sealed before); their plaintext in {} is overwritten and removed",
        store.display(),
        keys.display()
    );
    Ok(0)
}

/// Encrypts key file `path` as credential `name` in `store` (replacing one of that name), checks
/// it by decrypting it, then destroys the plaintext.
pub(super) fn seal_file(name: &str, with_key: &str, path: &Path, store: &Path) -> CmdResult {
    let bytes = zeroize::Zeroizing::new(fs::read(path)?);
    let staged = store.join(format!(".{name}.new"));
    let _ = fs::remove_file(&staged);
    let checked = creds_encrypt(name, with_key, path, &staged)
        .and_then(|()| creds_decrypt(name, &staged))
        .and_then(|back| {
            crate::crypto::ct_eq(&back, &bytes)
                .then_some(())
                .ok_or_else(|| "the credential does not decrypt to the key".to_string())
        });
    if let Err(e) = checked {
        let _ = fs::remove_file(&staged);
        return Err(failure(1, format!("sealing {}: {e}", path.display())));
    }
    fs::rename(&staged, store.join(name))?;
    sync_dir(store)?;
    shred(path)?;
    Ok(0)
}

/// Decrypted credentials of one admin command; removed (overwritten) when it ends.
pub struct AdminCredentials {
    dir: PathBuf,
    /// A command that stayed root (it writes key files): the data directory whose files it
    /// created are handed back to its owner when it ends.
    hand_back: Option<(PathBuf, u32, u32)>,
}

impl Drop for AdminCredentials {
    fn drop(&mut self) {
        if let Some((data, uid, gid)) = &self.hand_back
            && let Ok(rd) = fs::read_dir(data)
        {
            for e in rd.flatten() {
                if e.metadata().is_ok_and(|m| m.uid() == 0) {
                    let _ = std::os::unix::fs::chown(e.path(), Some(*uid), Some(*gid));
                }
            }
        }
        if let Ok(v) = files(&self.dir, |_| true) {
            for (_, p) in v {
                let _ = shred(&p);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// On a provisioned appliance (no `db.key` in `keys.dir`, credentials in `keys.credstore`, not
/// under systemd): decrypts every credential into a private directory that key lookups then use,
/// and, when run as root, continues as the owner of `data_dir` so that nothing the command writes
/// is root's — unless `stay_root` (commands that write root's key files), whose files in
/// `data_dir` are handed back to its owner when they end. `None` when keys are plain files or
/// systemd already provided them.
pub fn admin_credentials(
    cfg: &Config,
    stay_root: bool,
) -> Result<Option<AdminCredentials>, Failure> {
    if std::env::var_os("CREDENTIALS_DIRECTORY").is_some() || cfg.keys.dir.join(DB_KEY).exists() {
        return Ok(None);
    }
    let creds = match files(&cfg.keys.credstore, |n| !n.starts_with('.')) {
        Ok(v) if !v.is_empty() => v,
        _ => return Ok(None),
    };
    let root = crate::host::is_root();
    // A unit's own RuntimeDirectory= (hema3n-rotate-keys.service: /run is read-only there).
    let runtime = std::env::var_os("RUNTIME_DIRECTORY").and_then(|v| {
        v.to_str()
            .and_then(|s| s.split(':').next())
            .map(PathBuf::from)
    });
    let base = match runtime {
        Some(d) if d.is_dir() => d,
        _ if root && Path::new("/run").is_dir() => PathBuf::from("/run"),
        _ => std::env::temp_dir(),
    };
    let dir = base.join(format!("hema3n-admin.{}", std::process::id()));
    fs::create_dir(&dir)?;
    let mut guard = AdminCredentials {
        dir: dir.clone(),
        hand_back: None,
    };
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    for (name, path) in &creds {
        let plain = creds_decrypt(name, path).map_err(|e| {
            failure(
                EXIT_CONFIG,
                format!(
                    "cannot decrypt credential {}: {e} (encrypted credentials open only on the appliance that sealed them, and as root)",
                    path.display()
                ),
            )
        })?;
        write_secret(&dir, name, &plain)?;
    }
    if root
        && let Ok(m) = fs::metadata(&cfg.data_dir)
        && m.uid() != 0
    {
        let (uid, gid) = (m.uid(), m.gid());
        if stay_root {
            guard.hand_back = Some((cfg.data_dir.clone(), uid, gid));
            use_admin_credentials(dir);
            return Ok(Some(guard));
        }
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        for (name, _) in &creds {
            std::os::unix::fs::chown(dir.join(name), Some(uid), Some(gid))?;
        }
        crate::host::become_user(uid, gid).map_err(|e| {
            failure(
                1,
                format!("cannot continue as the owner (uid {uid}) of the data directory: {e}"),
            )
        })?;
    }
    use_admin_credentials(dir);
    Ok(Some(guard))
}
