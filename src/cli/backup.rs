//! `backup --out FILE` and `restore FILE`.

use std::path::Path;

use crate::config::Config;
use crate::crypto::keyring::{KeySources, Keyring};
use crate::model::Actor;
use crate::storage::{self, BackupManifest};

use super::{CmdResult, open_db};

fn describe(m: &BackupManifest) -> String {
    format!(
        "appliance {}, taken {}, schema v{}, {} bytes, sha256 {}, audit head entry {} (checkpoint {})",
        m.appliance_id,
        crate::model::iso8601_ms(m.created_at_ms),
        m.schema_version,
        m.size,
        m.sha256,
        m.audit_seq,
        m.audit_checkpoint_seq
    )
}

/// `backup --out FILE`: an online copy, signed; recorded as the last backup.
pub fn backup(cfg: &Config, out: &Path, json: bool) -> CmdResult {
    let mut db = open_db(cfg)?;
    let started = std::time::Instant::now();
    let m = db.backup(&Actor::cli(), out)?;
    if json {
        println!("{}", serde_json::to_string(&m).expect("json"));
    } else {
        println!(
            "wrote {} in {:.1} s: {}",
            out.display(),
            started.elapsed().as_secs_f64(),
            describe(&m)
        );
        println!(
            "the file is encrypted under db.key {} and holds no key: keep the keys escrowed",
            m.db_key_id
        );
    }
    Ok(0)
}

/// `restore FILE`: verify everything, then switch; `--verify-only` changes nothing.
pub fn restore(cfg: &Config, file: &Path, verify_only: bool) -> CmdResult {
    if verify_only {
        let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
        let (m, mut data) = storage::read_backup(file, &keys.signing.public())?;
        storage::check_backup_data(&m, &mut data)?;
        println!("OK: {}: {}", file.display(), describe(&m));
        return Ok(0);
    }
    let rep = storage::restore(cfg, file, &Actor::cli())?;
    println!("restored {}: {}", file.display(), describe(&rep.manifest));
    println!(
        "integrity check ok; audit log verified ({} entries); schema v{}",
        rep.audit_entries, rep.schema_version
    );
    match &rep.previous {
        Some(p) => println!(
            "the database it replaced is kept as {} (delete it once the restore is confirmed)",
            p.display()
        ),
        None => println!("there was no database to replace"),
    }
    Ok(0)
}
