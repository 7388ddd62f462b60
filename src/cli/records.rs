//! Operating on records without the tablet: `devices …` (with the broker password file),
//! `cases open|close`, `triage show`, `outbox status|list`.

use crate::config::Config;
use crate::model::{Actor, CaseDetails};
use crate::storage::Db;
use std::io::Write;

use super::{CmdResult, Failure, open_db};

/// `devices add`: registers a device with a fresh broker password (printed once) and rewrites
/// the mosquitto password file when `mqtt.password_file` is set.
pub fn devices_add(cfg: &Config, id: &str, kind: &str, territory: &str) -> CmdResult {
    // A device must never share the daemon's broker account (it would take over its ACL).
    let daemon_user = cfg.mqtt.username.as_deref().unwrap_or("hema3n-edge");
    if id == daemon_user || id == "hema3n-edge" {
        return Err(Failure {
            code: 2,
            error: anyhow::anyhow!(
                "`{id}` is the daemon's own broker account; choose another device id"
            ),
        });
    }
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
pub(super) fn sync_password_file(cfg: &Config, db: &Db, removed: &[&str]) -> Result<(), Failure> {
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

/// `cases export-nemsis CASE [--out F]`: the NEMSIS v3.5.1 document of a case (a disclosure,
/// audited), to a new 0600 file or standard output.
pub fn cases_export_nemsis(cfg: &Config, case: &str, out: Option<&std::path::Path>) -> CmdResult {
    let mut db = open_db(cfg)?;
    let x = db.disclose_case(&Actor::cli(), case, "nemsis-3.5.1")?;
    let doc = crate::sync::nemsis::export(&x, &cfg.nemsis).map_err(|e| Failure {
        code: 1,
        error: e.into(),
    })?;
    write_out(out, doc.as_bytes())?;
    Ok(0)
}

/// Writes an export to a new 0600 file (synced), or to standard output.
pub(super) fn write_out(out: Option<&std::path::Path>, bytes: &[u8]) -> std::io::Result<()> {
    match out {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        None => std::io::stdout().write_all(bytes)?,
    }
    Ok(())
}

/// `cases handoff-pdf CASE --out F [--format mist|sbar]`: the handoff document of a case (a
/// disclosure, audited), the structure the record suggests unless one is named.
pub fn cases_handoff_pdf(
    cfg: &Config,
    case: &str,
    out: &std::path::Path,
    format: Option<&str>,
) -> CmdResult {
    let format = match format {
        None => None,
        Some(f) => Some(crate::handoff::Format::parse(f).ok_or_else(|| Failure {
            code: 2,
            error: anyhow::anyhow!("--format is `mist` or `sbar`, not `{f}`"),
        })?),
    };
    let mut db = open_db(cfg)?;
    let x = db.disclose_case(
        &Actor::cli(),
        case,
        &crate::handoff::pdf::disclosure(format),
    )?;
    let pdf =
        crate::handoff::pdf::document(&x, format, crate::model::now_ms()).map_err(|e| Failure {
            code: 1,
            error: anyhow::anyhow!("the handoff document could not be rendered: {e}"),
        })?;
    write_out(Some(out), &pdf)?;
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
            r.decider.as_str().replace('_', " "),
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
