//! `keys …`: rotate, rewrap, retire and list territory keys; export the appliance's public
//! keys; import the receiver's.

use crate::config::Config;
use crate::crypto::keyring::{self, KeySources, Keyring, territory_key_name};
use crate::model::Actor;
use std::path::Path;

use super::{CmdResult, EXIT_CONFIG, Failure, open_db};

/// `keys rotate`: new territory key version, then (unless `no_rewrap`) re-wrap all data keys.
pub fn keys_rotate(cfg: &Config, territory: &str, no_rewrap: bool) -> CmdResult {
    let mut db = open_db(cfg)?;
    let actor = Actor::cli();
    let v = db.rotate_territory_key(&actor, territory, &cfg.keys.dir)?;
    println!(
        "territory `{territory}`: created key version v{v} in {}",
        cfg.keys.dir.display()
    );
    if !no_rewrap {
        let r = db.rewrap(&actor, territory)?;
        println!(
            "territory `{territory}`: re-wrapped {} data keys under v{}",
            r.rewrapped, r.to_version
        );
    }
    Ok(0)
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
        "territory `{territory}` key version v{version} retired; its file {} may now be removed",
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
