//! `audit verify`, `audit checkpoint`, `audit query`, `audit disclosures` and `audit prune`.

use std::io::Write;
use std::path::Path;

use crate::compliance::accounting::{self, Format};
use crate::config::Config;
use crate::model::{Actor, TIME_FORMS, iso8601_ms, now_ms, parse_time_ms};
use crate::storage::AuditFilter;

use super::args::QueryArgs;
use super::{CmdResult, Failure, open_db};

fn usage(msg: String) -> Failure {
    Failure {
        code: 2,
        error: anyhow::anyhow!(msg),
    }
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

/// `audit query`: matching entries newest first, a line each (or JSON lines); exit 0 even when
/// none match (a line on stderr says so).
pub fn audit_query(cfg: &Config, q: &QueryArgs) -> CmdResult {
    let time = |name: &str, v: &Option<String>| -> Result<Option<i64>, Failure> {
        v.as_deref()
            .map(|s| {
                parse_time_ms(s)
                    .ok_or_else(|| usage(format!("--{name} {s:?}: expected {TIME_FORMS}")))
            })
            .transpose()
    };
    if !(1..=crate::storage::audit::MAX_ROWS).contains(&q.limit) {
        return Err(usage(format!(
            "--limit must be 1 to {}",
            crate::storage::audit::MAX_ROWS
        )));
    }
    let f = AuditFilter {
        patient: q.patient.clone(),
        case: q.case.clone(),
        user: q.user.clone(),
        since_ms: time("since", &q.since)?,
        until_ms: time("until", &q.until)?,
        territory: q.territory.clone(),
        before_seq: None,
        limit: q.limit,
    };
    let mut db = open_db(cfg)?;
    let started = std::time::Instant::now();
    let rows = db.audit_query(&Actor::cli(), &f)?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut out = std::io::stdout().lock();
    for r in &rows {
        if q.json {
            let v = serde_json::json!({
                "seq": r.seq, "ts_ms": r.ts_ms, "time": iso8601_ms(r.ts_ms), "actor": r.actor,
                "role": r.role, "action": r.action, "resource": r.resource, "outcome": r.outcome,
                "territory": r.territory, "details": r.details,
            });
            writeln!(out, "{v}")?;
        } else {
            let d = &r.details;
            writeln!(
                out,
                "{:>8}  {}  {} ({})  {}  {}  {}  {}  {}{}",
                r.seq,
                iso8601_ms(r.ts_ms),
                r.actor,
                r.role,
                r.action,
                r.resource,
                r.outcome,
                if r.territory.is_empty() {
                    "-"
                } else {
                    &r.territory
                },
                d["purpose"].as_str().unwrap_or("-"),
                d["access"]["address"]
                    .as_str()
                    .map(|a| format!("  from {a}"))
                    .unwrap_or_default(),
            )?;
        }
    }
    eprintln!("{} entries in {ms:.1} ms", rows.len());
    Ok(0)
}

/// `audit disclosures --patient P [--format csv|fhir] [--out FILE]`.
pub fn audit_disclosures(
    cfg: &Config,
    patient: &str,
    format: &str,
    territory: Option<&str>,
    out: Option<&Path>,
) -> CmdResult {
    let format = Format::parse(format)
        .ok_or_else(|| usage(format!("--format {format:?}: expected csv or fhir")))?;
    if patient.trim().is_empty() {
        return Err(usage("--patient needs a patient id".into()));
    }
    let mut db = open_db(cfg)?;
    let rows = db.audit_disclosures(&Actor::cli(), patient, territory, format.as_str())?;
    let body = match format {
        Format::Csv => accounting::csv(&rows),
        Format::Fhir => {
            let b = accounting::fhir_bundle(&cfg.appliance_id, patient, &rows, now_ms());
            format!("{b:#}\n")
        }
    };
    match out {
        Some(p) => {
            std::fs::write(p, body)?;
            eprintln!("{} accesses written to {}", rows.len(), p.display());
        }
        None => std::io::stdout().lock().write_all(body.as_bytes())?,
    }
    Ok(0)
}

/// `audit prune [--dry-run]`: removes, step by step, the entries past retention that a
/// receipted checkpoint covers; says what bound stopped it.
pub fn audit_prune(cfg: &Config, dry_run: bool) -> CmdResult {
    let days = cfg.audit.retention_days;
    let mut db = open_db(cfg)?;
    let mut total = 0u64;
    let last = loop {
        let p = db.audit_prune(&Actor::cli(), now_ms(), days, dry_run)?;
        match p.through {
            Some(t) if dry_run => {
                println!(
                    "would prune entries {}..{t} ({} entries; the daemon and this command remove at most {} per step)",
                    p.pruned_through + 1,
                    p.entries,
                    crate::storage::audit::PRUNE_STEP
                );
                return Ok(0);
            }
            Some(t) => {
                total += p.entries;
                println!(
                    "pruned entries {}..{t} ({} entries)",
                    p.pruned_through + 1,
                    p.entries
                );
            }
            None => break p,
        }
    };
    let why = if days == 0 {
        "audit.retention_days = 0: every entry is kept".to_string()
    } else if last.oldest_past_retention <= last.pruned_through {
        format!(
            "no entry left is older than {days} days (before {})",
            iso8601_ms(last.cutoff_ms)
        )
    } else if last.cloud_checkpoint_seq <= last.pruned_through {
        format!(
            "entries up to {} are past retention, but the cloud has receipted no checkpoint covering them yet (last receipted: entry {})",
            last.oldest_past_retention, last.cloud_checkpoint_seq
        )
    } else {
        "no signed checkpoint lies between the last cut and the bounds yet".to_string()
    };
    println!(
        "{}{why}",
        if total > 0 {
            format!("{total} entries pruned; now ")
        } else {
            "nothing to prune: ".into()
        }
    );
    Ok(0)
}
