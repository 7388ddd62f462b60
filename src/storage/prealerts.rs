//! Hospital pre-alerts as a chain per case (`prealerts`, schema v10). A pre-alert becomes *due*
//! when the stored triage first reaches ESI 1-2 or gets more acute than the last one sent, when
//! the crew flags a time-critical condition, or when the destination or ETA of an alerted case
//! changes. The sealer queues what is due ([`Db::seal_work`](super::Db::seal_work)); each new
//! pre-alert replaces the previous one. Reasons are short codes, never PHI.

use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use super::Result;
use crate::model::PrealertInfo;
use crate::model::record::EntryState;
use crate::model::record::codes::PreArrivalAlert;

/// ESI levels that warrant a pre-alert.
pub const PREALERT_ESI: i64 = 2;

/// Adds `reasons` to the case's due pre-alert, or makes one due.
fn mark_due(tx: &rusqlite::Connection, case_id: &str, reasons: &[String], now: i64) -> Result<()> {
    if reasons.is_empty() {
        return Ok(());
    }
    let pending: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, reasons FROM prealerts WHERE case_id = ?1 AND bundle_id IS NULL",
            [case_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match pending {
        Some((seq, old)) => {
            let mut all: Vec<String> = serde_json::from_str(&old).unwrap_or_default();
            for r in reasons {
                if !all.contains(r) {
                    all.push(r.clone());
                }
            }
            tx.execute(
                "UPDATE prealerts SET reasons = ?1 WHERE case_id = ?2 AND seq = ?3",
                params![serde_json::to_string(&all).expect("json"), case_id, seq],
            )?;
        }
        None => {
            tx.execute(
                "INSERT INTO prealerts (case_id, seq, reasons, due_at) VALUES (?1, \
                 (SELECT coalesce(max(seq), 0) + 1 FROM prealerts WHERE case_id = ?1), ?2, ?3)",
                params![case_id, serde_json::to_string(reasons).expect("json"), now],
            )?;
        }
    }
    Ok(())
}

/// Whether the case has a pre-alert sent or due.
fn alerted(tx: &rusqlite::Connection, case_id: &str) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM prealerts WHERE case_id = ?1 LIMIT 1",
            [case_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn is_open(tx: &rusqlite::Connection, case_id: &str) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM cases WHERE id = ?1 AND status = 'open' AND erased_at IS NULL",
            [case_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// After a triage result was stored: due at the first ESI 1-2, and again whenever the level is
/// more acute than the one the last pre-alert carried.
pub(super) fn on_triage(
    tx: &rusqlite::Connection,
    case_id: &str,
    esi: i64,
    now: i64,
) -> Result<()> {
    if esi > PREALERT_ESI || !is_open(tx, case_id)? {
        return Ok(());
    }
    let last: Option<Option<i64>> = tx
        .query_row(
            "SELECT esi FROM prealerts WHERE case_id = ?1 AND bundle_id IS NOT NULL ORDER BY seq DESC LIMIT 1",
            [case_id],
            |r| r.get(0),
        )
        .optional()?;
    let reason = match last {
        None if !alerted(tx, case_id)? => Some(format!("esi {esi}")),
        Some(Some(l)) if esi < l => Some(format!("esi {l} → {esi}")),
        Some(None) => Some(format!("esi {esi}")),
        _ => None,
    };
    mark_due(tx, case_id, &reason.into_iter().collect::<Vec<_>>(), now)
}

/// After the disposition section changed from `before` to `after`: a newly flagged
/// time-critical condition makes a pre-alert due; a new destination or ETA does when the case
/// has been pre-alerted (or is about to be).
pub(super) fn on_disposition(
    tx: &rusqlite::Connection,
    case_id: &str,
    before: Option<(EntryState, &Value)>,
    after: (EntryState, &Value),
    now: i64,
) -> Result<()> {
    if !is_open(tx, case_id)? {
        return Ok(());
    }
    // An entered-in-error section counts as empty.
    let content = |v: Option<(EntryState, &Value)>| match v {
        Some((EntryState::Recorded, c)) => c.clone(),
        _ => Value::Null,
    };
    let (before, after) = (&content(before), &content(Some(after)));
    let alerts = |v: &Value| -> Vec<PreArrivalAlert> {
        serde_json::from_value(v["alerts"].clone()).unwrap_or_default()
    };
    let old = alerts(before);
    let mut reasons: Vec<String> = alerts(after)
        .into_iter()
        .filter(|a| !old.contains(a))
        .map(|a| format!("alert {}", a.as_str()))
        .collect();
    let changed =
        |f: &str| before.get(f).unwrap_or(&Value::Null) != after.get(f).unwrap_or(&Value::Null);
    if !reasons.is_empty() || alerted(tx, case_id)? {
        for f in ["destination", "eta_ms"] {
            if changed(f) && !after[f].is_null() {
                reasons.push(f.trim_end_matches("_ms").to_string());
            }
        }
    }
    mark_due(tx, case_id, &reasons, now)
}

/// The case's pre-alert chain as the next pre-alert needs it.
pub(super) fn info(tx: &rusqlite::Connection, case_id: &str) -> Result<PrealertInfo> {
    let sent = tx
        .prepare_cached(
            "SELECT bundle_id FROM prealerts WHERE case_id = ?1 AND bundle_id IS NOT NULL ORDER BY seq",
        )?
        .query_map([case_id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let reasons: Option<String> = tx
        .query_row(
            "SELECT reasons FROM prealerts WHERE case_id = ?1 AND bundle_id IS NULL",
            [case_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(PrealertInfo {
        sent,
        reasons: reasons
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default(),
    })
}

/// Whether a pre-alert of the case is due.
pub(super) fn due(tx: &rusqlite::Connection, case_id: &str) -> Result<bool> {
    Ok(tx
        .query_row(
            "SELECT 1 FROM prealerts WHERE case_id = ?1 AND bundle_id IS NULL",
            [case_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Marks the due pre-alert as queued in `bundle_id`, carrying `esi`.
pub(super) fn mark_sent(
    tx: &rusqlite::Connection,
    case_id: &str,
    bundle_id: &str,
    esi: Option<i64>,
    now: i64,
) -> Result<()> {
    tx.execute(
        "UPDATE prealerts SET bundle_id = ?1, esi = ?2, sent_at = ?3 WHERE case_id = ?4 AND bundle_id IS NULL",
        params![bundle_id, esi, now, case_id],
    )?;
    Ok(())
}
