//! `keys escrow-keygen`, `keys escrow --to PUBKEY`, `keys recover FILE`: the appliance's keys
//! sealed to an agency escrow key, so a backup can be restored when the vehicle's keys are lost.

use std::path::Path;

use crate::config::Config;
use crate::crypto::escrow::{self, KeyFile};
use crate::crypto::keyring::{
    AUDIT_KEY, DB_KEY, INDEX_KEY, KeySources, SIGNING_KEY, parse_key32, territory_key_name,
    write_secret,
};
use crate::model::{Actor, AuditEvent, Outcome, now_ms};

use super::{CmdResult, EXIT_CONFIG, Failure, open_db};

fn config_error(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!("{e}"),
    }
}

/// Reads a 32-byte key file (hex or raw); `what` names it in errors.
fn read_key32(path: &Path, what: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, Failure> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| config_error(format!("{what} {}: {e}", path.display())))?,
    );
    parse_key32(what, &bytes).map_err(|e| config_error(format!("{}: {e}", path.display())))
}

/// `keys escrow-keygen --out DIR`.
pub fn keys_escrow_keygen(out: &Path) -> CmdResult {
    std::fs::create_dir_all(out)?;
    if out.join("escrow.key").exists() {
        return Err(config_error(format!(
            "{} already holds an escrow.key; refusing to replace it",
            out.display()
        )));
    }
    let (secret, public) = escrow::generate();
    crate::crypto::keyring::write_key32(out, "escrow.key", &secret)?;
    std::fs::write(
        out.join("escrow-public.key"),
        format!("{}\n", hex::encode(public)),
    )?;
    println!(
        "escrow key {} created: {} (secret: keep it offline, never on an appliance) and {} (public: for `keys escrow --to`)",
        escrow::escrow_key_id(&public),
        out.join("escrow.key").display(),
        out.join("escrow-public.key").display()
    );
    Ok(0)
}

/// `keys escrow --to PUBKEY --out FILE`: every key file the appliance reads, sealed; audited.
pub fn keys_escrow(cfg: &Config, to: &Path, out: &Path) -> CmdResult {
    let public = read_key32(to, "escrow public key")?;
    let sources = KeySources::from_env(&cfg.keys.dir);
    let mut names: Vec<String> = [DB_KEY, INDEX_KEY, AUDIT_KEY, SIGNING_KEY]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for (t, versions) in sources.territory_keys()? {
        names.extend(versions.keys().map(|v| territory_key_name(&t, *v)));
    }
    // Former audit keys: `audit verify` needs them for the entries they MAC'd.
    names.extend(sources.retired_audit_keys()?.into_iter().map(|(n, _)| n));
    let mut files: Vec<KeyFile> = Vec::new();
    for n in names {
        let (_, bytes) = sources.read(&n)?;
        files.push((n, bytes));
    }
    let mut db = open_db(cfg)?;
    let sealed =
        escrow::seal(&cfg.appliance_id, now_ms(), &files, &public).map_err(config_error)?;
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        f.write_all(&sealed)?;
        f.sync_all()?;
    }
    std::fs::rename(&partial, out)?;
    let key_id = escrow::escrow_key_id(&public);
    db.audit(
        &AuditEvent::new(
            &Actor::cli(),
            "keys.escrow",
            format!("escrow-key/{key_id}"),
            Outcome::Success,
        )
        .details(serde_json::json!({ "files": files.iter().map(|(n, _)| n).collect::<Vec<_>>() })),
    )?;
    println!(
        "sealed {} key files of appliance {} to escrow key {key_id} into {}",
        files.len(),
        cfg.appliance_id,
        out.display()
    );
    Ok(0)
}

/// `keys recover FILE --escrow-key SECRET`: installs the escrowed keys into `keys.dir`.
pub fn keys_recover(cfg: &Config, file: &Path, escrow_key: &Path) -> CmdResult {
    let secret = read_key32(escrow_key, "escrow secret key")?;
    let bytes = std::fs::read(file)?;
    let (h, files) = escrow::open(&bytes, &secret)
        .map_err(|e| config_error(format!("{}: {e}", file.display())))?;
    if h.appliance_id != cfg.appliance_id {
        return Err(config_error(format!(
            "{} holds the keys of appliance `{}`; this configuration is appliance `{}`",
            file.display(),
            h.appliance_id,
            cfg.appliance_id
        )));
    }
    // Nothing is written unless every file can be: a key that exists with other content means
    // this appliance already has keys (and perhaps data under them).
    let dir = &cfg.keys.dir;
    let mut new = Vec::new();
    for (name, content) in &files {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            && !name.starts_with('.');
        if !valid {
            return Err(config_error(format!("escrowed file name `{name}` refused")));
        }
        match std::fs::read(dir.join(name)) {
            Ok(have) if have == content.as_slice() => {}
            Ok(_) => {
                return Err(config_error(format!(
                    "{} exists with another key; move it away first (nothing was written)",
                    dir.join(name).display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => new.push((name, content)),
            Err(e) => return Err(e.into()),
        }
    }
    for (name, content) in &new {
        write_secret(dir, name, content)?;
    }
    println!(
        "recovered {} key files of appliance {} (escrowed {}) into {}; {} were already there",
        new.len(),
        h.appliance_id,
        crate::model::iso8601_ms(h.created_at_ms),
        dir.display(),
        files.len() - new.len()
    );
    Ok(0)
}
