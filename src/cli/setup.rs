//! `init` (a developer appliance in a directory: config, keys, database, TLS) and `check`
//! (config, keys, database, model and providers, brokers, sync).

use crate::config::Config;
use crate::crypto::keyring::{
    self, AUDIT_KEY, DB_KEY, INDEX_KEY, KeySources, SIGNING_KEY, territory_key_name,
};
use crate::storage::Db;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{CmdResult, EXIT_CONFIG, Failure, open_db};

/// `init --data-dir DIR`: creates DIR, its keys (0600, never overwritten), `DIR/edge.toml` and
/// the database. Safe to run again.
pub fn init(
    data_dir: &Path,
    appliance_id: &str,
    territory: &str,
    lan_names: &[String],
) -> CmdResult {
    let bad = |m: String| Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!(m),
    };
    if !crate::model::is_valid_ident(appliance_id) || !crate::model::is_valid_ident(territory) {
        return Err(bad(
            "appliance id and territory must match [A-Za-z0-9._-]{1,64}".into(),
        ));
    }
    std::fs::create_dir_all(data_dir)?;
    let data_dir = std::fs::canonicalize(data_dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
    let key_dir = data_dir.join("keys");
    let cfg_path = data_dir.join("edge.toml");
    let mut cfg = Config {
        appliance_id: appliance_id.into(),
        data_dir: data_dir.clone(),
        default_territory: territory.into(),
        ..Config::default()
    };
    cfg.keys.dir = key_dir.clone();
    if cfg_path.exists() {
        let (existing, _) = Config::load(&cfg_path, true).map_err(|e| Failure {
            code: EXIT_CONFIG,
            error: e.into(),
        })?;
        cfg = existing;
    }
    let key_dir = cfg.keys.dir.clone();
    if cfg.db_path().exists()
        && !key_dir.join(DB_KEY).exists()
        && std::env::var_os("CREDENTIALS_DIRECTORY").is_none()
    {
        return Err(bad(format!(
            "database {} exists but {} is missing; restore that key (a new key would leave the database unreadable)",
            cfg.db_path().display(),
            key_dir.join(DB_KEY).display()
        )));
    }
    let mut out = std::io::stdout().lock();
    for name in [DB_KEY, INDEX_KEY, AUDIT_KEY] {
        let created = keyring::ensure_key32(&key_dir, name)?;
        writeln!(
            out,
            "{} key {}",
            if created { "created" } else { "kept   " },
            key_dir.join(name).display()
        )?;
    }
    let tk = territory_key_name(&cfg.default_territory, 1);
    let has_territory = KeySources::from_env(&key_dir)
        .territory_keys()?
        .contains_key(&cfg.default_territory);
    if !has_territory {
        keyring::ensure_key32(&key_dir, &tk)?;
        writeln!(out, "created key {}", key_dir.join(&tk).display())?;
    } else {
        writeln!(out, "kept    territory keys of `{}`", cfg.default_territory)?;
    }
    let created = keyring::ensure_signing_key(&key_dir)?;
    writeln!(
        out,
        "{} key {}",
        if created { "created" } else { "kept   " },
        key_dir.join(SIGNING_KEY).display()
    )?;
    let cert = cfg.api_cert_path();
    if !cert.exists() && !key_dir.join(crate::api::API_TLS_KEY).exists() {
        // The tablet reaches the appliance by its LAN name: the certificate must name it, or
        // crews learn to click through a name-mismatch warning (review #21).
        let mut names: Vec<String> = if lan_names.is_empty() {
            vec![format!("{}.vehicle.lan", appliance_id.to_ascii_lowercase())]
        } else {
            lan_names.to_vec()
        };
        names.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
        let (pem, key) = crate::tls::self_signed(&names).map_err(|e| bad(e.to_string()))?;
        keyring::write_secret(&key_dir, crate::api::API_TLS_KEY, key.as_bytes())?;
        std::fs::write(&cert, pem)?;
        writeln!(
            out,
            "created self-signed tablet certificate {} for {} (install the fleet CA's certificate for the same name in production)",
            cert.display(),
            names.join(", ")
        )?;
    } else {
        writeln!(out, "kept    tablet certificate {}", cert.display())?;
    }
    if !cfg_path.exists() {
        let text = format!(
            "# HEMA3N Edge configuration written by `hema3n-edge init`.\n\
             # Every field and its default: `hema3n-edge --config {p} --print-config`.\n\
             # Secrets are never stored here: keys live in keys.dir (0600) or systemd credentials.\n{}",
            cfg.to_toml(),
            p = cfg_path.display()
        );
        std::fs::write(&cfg_path, text)?;
        writeln!(out, "created config {}", cfg_path.display())?;
    } else {
        writeln!(out, "kept    config {}", cfg_path.display())?;
    }
    let db = open_db(&cfg)?;
    writeln!(
        out,
        "ready   database {} (schema v{}, SQLCipher {})",
        db.path().display(),
        db.schema_version()?,
        db.cipher_version()?
    )?;
    writeln!(
        out,
        "\nstart the daemon with:\n  hema3n-edge --config {} run",
        cfg_path.display()
    )?;
    Ok(0)
}

/// `check`: diagnoses config, keys and database; prints one line per check.
pub fn check(cfg: &Config, cfg_files: &[PathBuf]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    let mut code = 0u8;
    let files = if cfg_files.is_empty() {
        "embedded defaults".to_string()
    } else {
        cfg_files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    writeln!(out, "ok      config: {files}")?;
    let sources = KeySources::from_env(&cfg.keys.dir);
    let mut keys_ok = true;
    for name in [DB_KEY, INDEX_KEY, AUDIT_KEY, SIGNING_KEY] {
        match sources.find(name) {
            Ok(p) => writeln!(out, "ok      key {name}: {}", p.display())?,
            Err(e) => {
                keys_ok = false;
                writeln!(out, "FAIL    key {name}: {e}")?;
            }
        }
    }
    match sources.territory_keys() {
        Ok(t) if t.contains_key(&cfg.default_territory) => {
            for (terr, versions) in &t {
                let v: Vec<String> = versions.keys().map(|v| format!("v{v}")).collect();
                writeln!(out, "ok      territory `{terr}` keys: {}", v.join(", "))?;
            }
        }
        Ok(_) => {
            keys_ok = false;
            writeln!(
                out,
                "FAIL    no key for default territory `{}` ({} missing)",
                cfg.default_territory,
                territory_key_name(&cfg.default_territory, 1)
            )?;
        }
        Err(e) => {
            keys_ok = false;
            writeln!(out, "FAIL    territory keys: {e}")?;
        }
    }
    if !keys_ok {
        return Ok(EXIT_CONFIG);
    }
    let db = match open_db(cfg) {
        Ok(db) => db,
        Err(f) => {
            writeln!(
                out,
                "FAIL    database {}: {:#}",
                cfg.db_path().display(),
                f.error
            )?;
            return Ok(f.code);
        }
    };
    writeln!(
        out,
        "ok      database {} (schema v{}, SQLCipher {})",
        db.path().display(),
        db.schema_version()?,
        db.cipher_version()?
    )?;
    let problems = db.integrity_check(false)?;
    if problems.is_empty() {
        writeln!(out, "ok      integrity check")?;
    } else {
        code = 1;
        writeln!(out, "FAIL    integrity check: {}", problems.join("; "))?;
    }
    for k in db.key_versions()? {
        let state = match (k.loaded, k.retired, k.data_keys) {
            (_, true, _) => "ok      (retired)",
            (true, false, _) => "ok     ",
            (false, false, 0) => "warn    (file absent, no data keys use it)",
            (false, false, _) => {
                code = 1;
                "FAIL    (file absent but data keys need it)"
            }
        };
        writeln!(
            out,
            "{state} key version {}/v{} id {}: {} data keys, {} encryptions",
            k.territory, k.version, k.key_id, k.data_keys, k.invocations
        )?;
    }
    if cfg.triage.enabled {
        match crate::app::load_model(cfg) {
            Ok(rt) => {
                writeln!(
                    out,
                    "ok      triage model {} ({}, sha256 {}) on {}, signed, from {}",
                    rt.info.model_id,
                    rt.info.variant,
                    &rt.info.sha256[..16],
                    rt.info.provider.as_str(),
                    rt.info.dir.display()
                )?;
                for f in &rt.info.fallbacks {
                    writeln!(out, "info    execution provider fallback: {f}")?;
                }
            }
            Err(e) => writeln!(
                out,
                "warn    triage model unavailable, the daemon runs RULES-ONLY: {e}"
            )?,
        }
    }
    let rep = db.verify_audit()?;
    if rep.ok() {
        writeln!(
            out,
            "ok      audit log: {} entries, {} checkpoints",
            rep.entries, rep.checkpoints
        )?;
    } else {
        code = 1;
        writeln!(out, "FAIL    audit log: {}", rep.findings[0])?;
    }
    check_backup(cfg, &db, &mut out)?;
    code = code.max(check_lifecycle(cfg, &db, &mut out)?);
    code = code.max(check_sync(cfg, &db, &mut out)?);
    Ok(code)
}

/// `check --compliance [--json]`: the HIPAA self-check ([`crate::compliance`]); the exit code
/// is the worst item's (0 pass, 1 warn, 2 fail).
pub fn check_compliance(cfg: &Config, json: bool) -> CmdResult {
    let report = crate::compliance::evaluate_now(cfg, true)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        for i in &report.items {
            writeln!(
                out,
                "{:<7} {:<21} {}",
                i.status.as_str(),
                i.safeguard,
                i.title
            )?;
            for e in &i.evidence {
                writeln!(out, "        - {e}")?;
            }
        }
        writeln!(
            out,
            "worst: {} ({})",
            report.worst.as_str(),
            report.evaluated_at
        )?;
    }
    Ok(report.worst.code())
}

/// `check`: territory key ages against `keys.rotate_after_days` and certificate expiry against
/// `keys.certificate_warn_days` (warnings; an expired or unreadable certificate fails).
fn check_lifecycle(cfg: &Config, db: &Db, out: &mut impl Write) -> Result<u8, Failure> {
    use crate::lifecycle;
    let now = crate::model::now_ms();
    let mut code = 0;
    for k in lifecycle::key_ages(cfg, &db.current_key_versions()?, now) {
        writeln!(
            out,
            "{} territory `{}` key v{} is {} days old (rotate after {}{})",
            if k.due { "warn   " } else { "ok     " },
            k.territory,
            k.version,
            k.age_days,
            cfg.keys.rotate_after_days,
            if k.due {
                ": due, hema3n-edge keys rotate"
            } else {
                ""
            }
        )?;
    }
    for c in lifecycle::certificates(cfg, now) {
        match &c.expiry {
            Ok((t, d)) => {
                let state = if *d < 0 {
                    code = 1;
                    "FAIL   "
                } else if c.warn {
                    "warn   "
                } else {
                    "ok     "
                };
                writeln!(
                    out,
                    "{state} {} certificate {} expires {} ({d} days; warn within {})",
                    c.name,
                    c.path.display(),
                    crate::model::iso8601_ms(*t),
                    cfg.keys.certificate_warn_days
                )?;
            }
            Err(e) => {
                code = 1;
                writeln!(out, "FAIL    {} certificate: {e}", c.name)?;
            }
        }
    }
    Ok(code)
}

/// `check`: the age of the last backup against `store.backup_max_age_hours` (a warning: an
/// appliance without a recent backup still works).
fn check_backup(cfg: &Config, db: &Db, out: &mut impl Write) -> Result<(), Failure> {
    let limit = cfg.store.backup_max_age_hours;
    match db.last_backup()? {
        None => writeln!(
            out,
            "warn    no backup taken yet (hema3n-edge backup --out FILE)"
        )?,
        Some(b) => {
            let hours = (crate::model::now_ms() - b.at_ms).max(0) as f64 / 3_600_000.0;
            let state = if hours > limit as f64 {
                "warn   "
            } else {
                "ok     "
            };
            writeln!(
                out,
                "{state} last backup {hours:.1} h ago ({}, sha256 {}; policy {limit} h)",
                crate::model::iso8601_ms(b.at_ms),
                &b.sha256[..16]
            )?;
        }
    }
    Ok(())
}

/// `check`: receiver keys, outbox custody, cloud broker reachability (TCP) and TLS files.
pub(super) fn check_sync(cfg: &Config, db: &Db, out: &mut impl Write) -> Result<u8, Failure> {
    let mut code = 0;
    match crate::sync::ReceiverKeys::load(cfg) {
        Ok(Some(k)) => writeln!(
            out,
            "ok      receiver keys of {} (envelope key {}, receipt key {})",
            k.receiver_id,
            hex::encode(k.hpke.key_id()),
            k.signing.key_id()
        )?,
        Ok(None) => writeln!(
            out,
            "info    sync off: no receiver keys (hema3n-edge keys import-receiver FILE)"
        )?,
        Err(e) => {
            code = EXIT_CONFIG;
            writeln!(out, "FAIL    receiver keys: {e}")?;
        }
    }
    let s = db.outbox_stats()?;
    writeln!(
        out,
        "ok      outbox: {} queued, {} awaiting receipt, {} receipted, {} purged",
        s.queued, s.sent, s.receipted, s.purged
    )?;
    match cfg.sync.broker() {
        Ok(Some(b)) => {
            if b.tls {
                let tls = crate::sync::cloud_tls(cfg, true);
                match tls {
                    Ok(_) => writeln!(
                        out,
                        "ok      cloud TLS files (CA, client certificate and key)"
                    )?,
                    Err(e) => {
                        code = EXIT_CONFIG;
                        writeln!(out, "FAIL    cloud TLS: {e}")?;
                    }
                }
            }
            let addr = format!("{}:{}", b.host, b.port);
            let reach = std::net::ToSocketAddrs::to_socket_addrs(&addr)
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(3))
                });
            match reach {
                Some(Ok(_)) => writeln!(out, "ok      cloud broker {addr} reachable")?,
                // Offline is the normal state of an ambulance: not a failure.
                _ => writeln!(
                    out,
                    "info    cloud broker {addr} not reachable now (offline?)"
                )?,
            }
        }
        Ok(None) => writeln!(out, "info    no cloud broker configured (bundles are kept)")?,
        Err(e) => {
            code = EXIT_CONFIG;
            writeln!(out, "FAIL    sync config: {e}")?;
        }
    }
    Ok(code)
}
