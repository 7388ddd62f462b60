//! `backup --out FILE` and `restore FILE`.

use std::path::Path;

use crate::config::Config;
use crate::crypto::keyring::{KeySources, Keyring};
use crate::model::Actor;
use crate::storage::{self, BackupManifest};

use super::{CmdResult, EXIT_CONFIG, Failure, open_db};

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

/// `backup --out FILE` or `backup --out-dir DIR [--keep N]`: an online copy, signed; recorded
/// as the last backup. With `--keep`, older backups of this appliance in DIR are removed.
pub fn backup(
    cfg: &Config,
    out: Option<&Path>,
    out_dir: Option<&Path>,
    keep: Option<u32>,
    json: bool,
) -> CmdResult {
    if keep.is_some() && out_dir.is_none() {
        return Err(Failure {
            code: EXIT_CONFIG,
            error: anyhow::anyhow!("--keep prunes a directory: it needs --out-dir, not --out"),
        });
    }
    let prefix = format!("edge-{}-", cfg.appliance_id);
    let file = match (out, out_dir) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(d)) => {
            std::fs::create_dir_all(d)?;
            // 2026-12-06T18:31:05.123Z → 20261206T183105123Z: sorts by time, safe in a name.
            let t: String = crate::model::iso8601_ms(crate::model::now_ms())
                .chars()
                .filter(|c| c.is_ascii_digit() || *c == 'T')
                .collect();
            d.join(format!("{prefix}{t}Z.backup"))
        }
        (None, None) => unreachable!("clap requires --out or --out-dir"),
    };
    let mut db = open_db(cfg)?;
    let started = std::time::Instant::now();
    let m = db.backup(&Actor::cli(), &file)?;
    if json {
        println!("{}", serde_json::to_string(&m).expect("json"));
    } else {
        println!(
            "wrote {} in {:.1} s: {}",
            file.display(),
            started.elapsed().as_secs_f64(),
            describe(&m)
        );
        println!(
            "the file is encrypted under db.key {} and holds no key: keep the keys escrowed",
            m.db_key_id
        );
    }
    if let (Some(dir), Some(keep)) = (out_dir, keep) {
        let mut ours: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".backup"))
            })
            .collect();
        ours.sort();
        let extra = ours.len().saturating_sub(keep as usize);
        for old in &ours[..extra] {
            std::fs::remove_file(old)?;
            eprintln!("removed the older backup {}", old.display());
        }
    }
    Ok(0)
}

/// `restore FILE`: verify everything, then switch; `--verify-only` changes nothing.
pub fn restore(cfg: &Config, file: &Path, verify_only: bool) -> CmdResult {
    if verify_only {
        let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
        let (m, mut data) = storage::read_backup(file, &storage::backup_signers(cfg, &keys))?;
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
