//! Subcommands other than `run`: `init`, `check`, `keys …`, `audit …`, `debug …`.
//! Each returns the process exit code: 0 ok, 1 failure, 78 setup/configuration error.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::crypto::keyring::{
    self, AUDIT_KEY, DB_KEY, INDEX_KEY, KeyError, KeySources, Keyring, SIGNING_KEY,
    territory_key_name,
};
use crate::model::{Actor, CaseDetails, Patient};
use crate::storage::{Db, StoreError};

/// Exit code for configuration and setup errors (sysexits EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// A failed command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            code: if e.is_config() { EXIT_CONFIG } else { 1 },
            error: e.into(),
        }
    }
}

impl From<KeyError> for Failure {
    fn from(e: KeyError) -> Self {
        Failure {
            code: EXIT_CONFIG,
            error: e.into(),
        }
    }
}

impl From<crate::crypto::CryptoError> for Failure {
    fn from(e: crate::crypto::CryptoError) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure {
            code: 1,
            error: e.into(),
        }
    }
}

pub type CmdResult = Result<u8, Failure>;

fn open_db(cfg: &Config) -> Result<Db, Failure> {
    let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir))?;
    Ok(Db::open(cfg, keys)?)
}

/// `init --data-dir DIR`: creates DIR, its keys (0600, never overwritten), `DIR/edge.toml` and
/// the database. Safe to run again.
pub fn init(data_dir: &Path, appliance_id: &str, territory: &str) -> CmdResult {
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
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let (pem, key) = crate::tls::self_signed(&names).map_err(|e| bad(e.to_string()))?;
        keyring::write_secret(&key_dir, crate::api::API_TLS_KEY, key.as_bytes())?;
        std::fs::write(&cert, pem)?;
        writeln!(
            out,
            "created self-signed tablet certificate {} (localhost; replace it with one for the vehicle LAN)",
            cert.display()
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
                    "ok      triage model {} ({}, sha256 {}) on {}",
                    rt.info.model_id,
                    rt.info.variant,
                    &rt.info.sha256[..16],
                    rt.info.provider.as_str()
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
    code = code.max(check_sync(cfg, &db, &mut out)?);
    Ok(code)
}

/// `check`: receiver keys, outbox custody, cloud broker reachability (TCP) and TLS files.
fn check_sync(cfg: &Config, db: &Db, out: &mut impl Write) -> Result<u8, Failure> {
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

/// `audit verify`: 0 when the log verifies, 1 naming the first bad entry otherwise.
pub fn audit_verify(cfg: &Config, json: bool) -> CmdResult {
    let db = open_db(cfg)?;
    let started = std::time::Instant::now();
    let rep = db.verify_audit()?;
    let secs = started.elapsed().as_secs_f64();
    if json {
        let v = serde_json::json!({
            "ok": rep.ok(),
            "entries": rep.entries,
            "checkpoints": rep.checkpoints,
            "last_seq": rep.last_seq,
            "last_checkpoint_seq": rep.last_checkpoint_seq,
            "seconds": secs,
            "findings": rep.findings.iter().map(|f| serde_json::json!({"seq": f.seq, "what": f.what})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else if rep.ok() {
        println!(
            "OK: {} entries, {} signed checkpoints (last at entry {}), verified in {secs:.2} s",
            rep.entries, rep.checkpoints, rep.last_checkpoint_seq
        );
    } else {
        println!(
            "FAIL: first bad entry is {}: {}",
            rep.findings[0].seq, rep.findings[0].what
        );
        for f in &rep.findings[1..] {
            println!("      also {f}");
        }
    }
    Ok(if rep.ok() { 0 } else { 1 })
}

/// `audit checkpoint`: signs a checkpoint over the current head now.
pub fn audit_checkpoint(cfg: &Config) -> CmdResult {
    let mut db = open_db(cfg)?;
    match db.checkpoint_audit_if_due(crate::model::now_ms(), true)? {
        Some(seq) => println!("signed checkpoint at entry {seq}"),
        None => println!("no new entries since the last checkpoint"),
    }
    Ok(0)
}

/// `debug soak`: a storage soak workload. Writes patients and cases one transaction at a time
/// and prints `committed <patient id> <case id>` after each COMMIT returned, so a harness that
/// kills the process can check that everything reported committed survived. `count` 0 = forever.
pub fn debug_soak(cfg: &Config, count: u64, last_name: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    let actor = Actor::cli();
    let territory = cfg.default_territory.clone();
    let mut out = std::io::stdout().lock();
    let mut i = 0u64;
    while count == 0 || i < count {
        let p = Patient {
            first_name: Some(format!("Soak{i}")),
            last_name: Some(last_name.to_string()),
            date_of_birth: Some(format!("19{:02}-0{}-1{}", 40 + i % 60, 1 + i % 9, i % 10)),
            ssn: Some(format!(
                "{:03}-{:02}-{:04}",
                100 + i % 800,
                10 + i % 90,
                i % 10000
            )),
            ..Default::default()
        };
        let pid = db.create_patient(&actor, &territory, &p)?;
        let cid = db.create_case(
            &actor,
            &territory,
            Some(&pid),
            &CaseDetails {
                chief_complaint: Some(format!("soak complaint {last_name}")),
                ..Default::default()
            },
        )?;
        writeln!(out, "committed {pid} {cid}")?;
        out.flush()?;
        i += 1;
    }
    Ok(0)
}

/// `devices add`: registers a device with a fresh broker password (printed once) and rewrites
/// the mosquitto password file when `mqtt.password_file` is set.
pub fn devices_add(cfg: &Config, id: &str, kind: &str, territory: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    let password = crate::crypto::random_password().map_err(|e| Failure {
        code: 1,
        error: e.into(),
    })?;
    let hash = crate::crypto::mosquitto_password_hash(&password).map_err(|e| Failure {
        code: 1,
        error: e.into(),
    })?;
    db.register_device(&Actor::cli(), id, kind, territory, Some(&hash))?;
    sync_password_file(cfg, &db, &[])?;
    println!("registered device `{id}` ({kind}, territory `{territory}`)");
    println!("broker user: {id}");
    println!("broker password: {password}");
    println!("(store the password in the device now; it is not shown again)");
    Ok(0)
}

/// `devices remove`.
pub fn devices_remove(cfg: &Config, id: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    db.remove_device(&Actor::cli(), id)?;
    sync_password_file(cfg, &db, &[id])?;
    println!("removed device `{id}`; its readings are kept");
    Ok(0)
}

/// `devices list`.
pub fn devices_list(cfg: &Config) -> CmdResult {
    let db = open_db(cfg)?;
    println!(
        "{:<24} {:<10} {:<12} {:<8} {:<38} {:>9}",
        "device", "kind", "territory", "presence", "bound case", "unbound"
    );
    for d in db.list_devices()? {
        println!(
            "{:<24} {:<10} {:<12} {:<8} {:<38} {:>9}",
            d.id,
            d.kind,
            d.territory,
            d.presence,
            d.bound_case.as_deref().unwrap_or("-"),
            d.unbound_readings
        );
    }
    Ok(0)
}

/// `devices bind DEVICE CASE [--attach-unbound]`.
pub fn devices_bind(cfg: &Config, device: &str, case: &str, attach: bool) -> CmdResult {
    let mut db = open_db(cfg)?;
    let n = db.bind_device(&Actor::cli(), device, case, attach)?;
    println!(
        "device `{device}` bound to case {case}{}",
        if attach {
            format!("; attached {n} unbound readings")
        } else {
            String::new()
        }
    );
    Ok(0)
}

/// `devices unbind DEVICE`.
pub fn devices_unbind(cfg: &Config, device: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    db.unbind_device(&Actor::cli(), device)?;
    println!("device `{device}` unbound");
    Ok(0)
}

/// Rewrites `mqtt.password_file`: lines of other users are kept, device lines are replaced.
fn sync_password_file(cfg: &Config, db: &Db, removed: &[&str]) -> Result<(), Failure> {
    let Some(path) = &cfg.mqtt.password_file else {
        return Ok(());
    };
    let creds = db.device_credentials()?;
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in existing.lines() {
        let user = line.split(':').next().unwrap_or_default();
        if line.trim().is_empty()
            || removed.contains(&user)
            || creds.iter().any(|(id, _)| id == user)
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for (id, hash) in &creds {
        out.push_str(&format!("{id}:{hash}\n"));
    }
    let tmp = path.with_extension("tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(out.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    eprintln!(
        "updated {}; reload the broker to apply (systemctl reload mosquitto)",
        path.display()
    );
    Ok(())
}

/// `simulate`: field devices publishing scenario vitals to the on-board broker.
pub fn simulate(opts: crate::ingest::simulate::SimOptions) -> CmdResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let scen = opts
        .scenario
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "mixed".into());
    eprintln!(
        "simulating {} device(s), scenario {scen}, broker {}:{}",
        opts.devices, opts.host, opts.port
    );
    let rep = rt
        .block_on(crate::ingest::simulate::run(opts))
        .map_err(|e| Failure { code: 1, error: e })?;
    println!(
        "{}",
        serde_json::json!({
            "packs": rep.packs, "readings": rep.readings, "faulty": rep.faulty, "duplicates": rep.duplicates,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(0)
}

/// `triage show CASE`: the latest triage results of a case (audited read).
pub fn triage_show(cfg: &Config, case: &str, n: usize) -> CmdResult {
    let mut db = open_db(cfg)?;
    let hist = db.triage_history(&Actor::cli(), case, n.max(1))?;
    if hist.is_empty() {
        println!("case {case}: no triage yet");
        return Ok(0);
    }
    for (i, t) in hist.iter().enumerate() {
        let r = &t.record;
        println!(
            "{}ESI {} (decided by {}; rules allow at most ESI {}{}{})",
            if i == 0 { "latest: " } else { "earlier: " },
            r.final_esi,
            r.decider.replace('_', " "),
            r.rules_esi,
            r.news2.map(|n| format!("; NEWS2 {n}")).unwrap_or_default(),
            r.model_esi
                .map(|m| format!("; model proposed ESI {m}"))
                .unwrap_or_default(),
        );
        if i == 0 {
            if let (Some(s), Some(c)) = (&r.specialty, r.confidence) {
                println!("  specialty {s}, confidence {c:.2}");
            }
            if let Some(m) = &r.model_id {
                println!(
                    "  model {m} sha256 {}",
                    r.model_hash.as_deref().unwrap_or("?")
                );
            }
            if let Some(a) = &r.abstained {
                println!("  model abstained: {a}");
            }
            for reason in &r.reasons {
                println!("  - {reason}");
            }
        }
    }
    Ok(0)
}

/// `cases open`: opens a case and prints its id.
pub fn cases_open(cfg: &Config, territory: &str, chief_complaint: Option<&str>) -> CmdResult {
    let mut db = open_db(cfg)?;
    let d = CaseDetails {
        chief_complaint: chief_complaint.map(str::to_string),
        ..Default::default()
    };
    let id = db.create_case(&Actor::cli(), territory, None, &d)?;
    println!("{id}");
    Ok(0)
}

/// `cases close CASE`: closes the case; the daemon's sync task seals and queues its bundle.
pub fn cases_close(cfg: &Config, case: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    db.close_case(&Actor::cli(), case)?;
    println!("case {case} closed; its bundle is sealed and queued by the running daemon");
    Ok(0)
}

/// `outbox status`: custody counts.
pub fn outbox_status(cfg: &Config, json: bool) -> CmdResult {
    let db = open_db(cfg)?;
    let s = db.outbox_stats()?;
    if json {
        println!("{}", serde_json::to_string(&s).expect("stats serialise"));
    } else {
        println!(
            "queued {}  sent (awaiting receipt) {}  receipted {}  purged {}  pending bytes {}",
            s.queued, s.sent, s.receipted, s.purged, s.queued_bytes
        );
        if let Some(o) = s.oldest_pending_ms {
            println!("oldest pending since {}", crate::model::iso8601_ms(o));
        }
    }
    Ok(0)
}

/// `outbox list`: recent rows.
pub fn outbox_list(cfg: &Config, last: usize) -> CmdResult {
    let db = open_db(cfg)?;
    for r in db.outbox_list(last)? {
        println!(
            "{}\tseq {}\t{}\t{}\t{}\tattempts {}{}",
            r.bundle_id,
            r.seq,
            r.kind,
            r.case_id.as_deref().unwrap_or("-"),
            r.state,
            r.attempts,
            if r.purged { "\tpurged" } else { "" }
        );
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

/// `debug bundle-vectors`: envelope and receipt test vectors with published private keys (for
/// `docs/bundle-format.md`; never use these keys for anything else). ECDSA signatures are
/// randomised, so each run prints different signature bytes; every run's output is valid.
pub fn debug_bundle_vectors() -> CmdResult {
    use crate::crypto::seal::{self, BundleKind, EnvelopeMeta, Receipt, ReceiptStatus};
    use crate::crypto::sign::SigningKey;
    let rsk_bytes = crate::crypto::sha256(b"hema3n bundle-format v1 test receiver");
    let rsk = seal::RecipientSecretKey::from_bytes(&rsk_bytes).map_err(|e| Failure {
        code: 1,
        error: anyhow::anyhow!("{e}"),
    })?;
    let fail = |e: crate::crypto::CryptoError| Failure {
        code: 1,
        error: anyhow::anyhow!("{e}"),
    };
    let app_der = SigningKey::generate_pkcs8().map_err(fail)?;
    let app = SigningKey::from_pkcs8("vector", &app_der).map_err(fail)?;
    let rcv_der = SigningKey::generate_pkcs8().map_err(fail)?;
    let rcv = SigningKey::from_pkcs8("vector", &rcv_der).map_err(fail)?;
    let ikm_e = crate::crypto::sha256(b"hema3n bundle-format v1 test ephemeral");
    let plaintext = br#"{"resourceType":"Bundle","id":"01900000-0000-7000-8000-000000000001","type":"collection","entry":[]}"#;
    let meta = EnvelopeMeta {
        kind: BundleKind::Bundle,
        bundle_id: *uuid::Uuid::parse_str("01900000-0000-7000-8000-000000000001")
            .expect("uuid")
            .as_bytes(),
        seq: 7,
        created_at_ms: 1_800_000_000_000,
        appliance_id: "amb-0001".into(),
    };
    let env = seal::seal_with_ephemeral_seed(&meta, plaintext, rsk.public(), &app, ikm_e).map_err(
        |e| Failure {
            code: 1,
            error: anyhow::anyhow!("{e}"),
        },
    )?;
    let parsed = seal::parse(&env).expect("own envelope parses");
    let receipt = Receipt {
        status: ReceiptStatus::Stored,
        bundle_id: meta.bundle_id,
        envelope_sha256: crate::crypto::sha256(&env),
        seq: 7,
        receipted_at_ms: 1_800_000_005_000,
        signer_key_id: [0; 8],
        appliance_id: "amb-0001".into(),
    }
    .sign(&rcv)
    .map_err(|e| Failure {
        code: 1,
        error: anyhow::anyhow!("{e}"),
    })?;
    println!("receiver_hpke_private_key = {}", hex::encode(rsk_bytes));
    println!(
        "receiver_hpke_public_key = {}",
        hex::encode(rsk.public().as_bytes())
    );
    println!("recipient_key_id = {}", hex::encode(rsk.public().key_id()));
    println!("appliance_id = amb-0001");
    println!("appliance_public_key = {}", hex::encode(&app.public().0));
    println!(
        "signer_key_id = {}",
        hex::encode(seal::key_id8(&app.public().0))
    );
    println!("ephemeral_seed = {}", hex::encode(ikm_e));
    println!("enc = {}", hex::encode(parsed.enc()));
    println!("plaintext = {}", String::from_utf8_lossy(plaintext));
    println!("envelope = {}", hex::encode(&env));
    println!(
        "envelope_sha256 = {}",
        hex::encode(crate::crypto::sha256(&env))
    );
    println!(
        "receiver_signing_public_key = {}",
        hex::encode(&rcv.public().0)
    );
    println!("receipt = {}", hex::encode(&receipt));
    Ok(0)
}

/// Reads a new PIN/password: one line on stdin.
fn read_secret() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let secret = line.trim_end_matches(['\r', '\n']).to_string();
    crate::crypto::password::check_policy(&secret).map_err(|e| Failure {
        code: 65,
        error: anyhow::anyhow!(e),
    })?;
    Ok(secret)
}

/// `users add`: a personal account; the PIN/password is read from stdin (one line).
pub fn users_add(cfg: &Config, id: &str, name: &str, role: &str, territory: &str) -> CmdResult {
    let role = crate::model::validate_user(id, name, role, territory).map_err(|e| Failure {
        code: 65,
        error: anyhow::anyhow!(e),
    })?;
    let secret = read_secret()?;
    let phc = crate::crypto::password::hash_secret(&secret)?;
    let mut db = open_db(cfg)?;
    db.add_user(&Actor::cli(), id, name, role, territory, &phc)?;
    println!("added user {id} ({role}, territory {territory})");
    Ok(0)
}

/// `users set-secret`: replaces a PIN/password (stdin) and ends the account's sessions.
pub fn users_set_secret(cfg: &Config, id: &str) -> CmdResult {
    let secret = read_secret()?;
    let phc = crate::crypto::password::hash_secret(&secret)?;
    let mut db = open_db(cfg)?;
    db.set_user_secret(&Actor::cli(), id, &phc)?;
    println!("new PIN/password set for {id}; its sessions ended");
    Ok(0)
}

/// `users disable|enable`.
pub fn users_disable(cfg: &Config, id: &str, disabled: bool) -> CmdResult {
    let mut db = open_db(cfg)?;
    db.set_user_disabled(&Actor::cli(), id, disabled)?;
    println!(
        "{} user {id}",
        if disabled { "disabled" } else { "enabled" }
    );
    Ok(0)
}

/// `users list`.
pub fn users_list(cfg: &Config, json: bool) -> CmdResult {
    let db = open_db(cfg)?;
    let users = db.list_users()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&users).expect("users serialise")
        );
        return Ok(0);
    }
    println!(
        "{:<20} {:<11} {:<16} {:<9} NAME",
        "ID", "ROLE", "TERRITORY", "STATE"
    );
    for u in users {
        println!(
            "{:<20} {:<11} {:<16} {:<9} {}",
            u.id,
            u.role,
            u.territory,
            if u.disabled { "disabled" } else { "active" },
            u.display_name
        );
    }
    Ok(0)
}
