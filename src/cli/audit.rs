//! `audit verify` and `audit checkpoint`.

use crate::config::Config;

use super::{CmdResult, open_db};

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
