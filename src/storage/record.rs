//! The patient care record's entries (schema v8): sections edited by merge patch and timed
//! events, each change an immutable version sealed under the case key; entered-in-error
//! versions; idempotent submits (`request_keys`); entered-in-error vitals.
//!
//! A version's body is the entry's whole content (sections: after the merge), or for an
//! entered-in-error version the reason. Its associated data binds every plaintext column of
//! the row, so moving a body to another entry, version, state or author fails to open.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use serde_json::Value;

use super::patients::new_id;
use super::{Db, Result, State, StoreError, audit};
use crate::crypto::field::{DataKey, FieldLoc};
use crate::model::record::{
    Bounds, CaseRecord, EntryState, EntryVersion, EventKind, Section, merge_patch,
};
use crate::model::{Actor, AuditEvent, Outcome, now_ms};

/// How long a client request key is remembered (a retried submit within this window stores
/// nothing new).
pub const REQUEST_KEY_TTL_MS: i64 = 24 * 3_600_000;

/// What a write stored (no PHI): replayed for a repeated request key.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct EntryWritten {
    pub entry_id: String,
    pub kind: String,
    pub version: i64,
    pub recorded_at_ms: i64,
    /// True when this answer repeats an earlier submit with the same request key.
    #[serde(default)]
    pub replayed: bool,
}

/// Concurrency and idempotency of one write.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOpts<'a> {
    /// The client's request key: a repeat of a stored key returns the first answer.
    pub request_key: Option<&'a str>,
    /// The version the client edited (`If-Match`); a newer current version is `Stale`.
    pub if_match: Option<i64>,
}

#[allow(clippy::too_many_arguments)]
fn entry_row(
    id: i64,
    case_id: &str,
    entry_id: &str,
    kind: &str,
    version: i64,
    state: EntryState,
    recorded_by: &str,
    recorded_at: i64,
) -> String {
    format!(
        "{id}|{case_id}|{entry_id}|{kind}|{version}|{}|{recorded_by}|{recorded_at}",
        state.as_str()
    )
}

fn loc(row: &str) -> FieldLoc<'_> {
    FieldLoc {
        table: "record_entries",
        column: "body",
        row_id: row,
    }
}

type EntryRow = (i64, String, String, i64, String, i64, String, Vec<u8>);

/// Which of a case's entries to open (only those are decrypted).
#[derive(Debug, Clone, Copy)]
pub(super) enum Which<'a> {
    All,
    Kinds(&'a [&'a str]),
    Entry(&'a str),
}

impl Which<'_> {
    fn wants(&self, entry_id: &str, kind: &str) -> bool {
        match self {
            Which::All => true,
            Which::Kinds(k) => k.contains(&kind),
            Which::Entry(e) => *e == entry_id,
        }
    }
}

/// Reads and opens every version of a case's entries (or of those `which` names).
pub(super) fn read_entries(
    conn: &Connection,
    dk: &DataKey,
    case_id: &str,
    which: Which<'_>,
) -> Result<CaseRecord> {
    let rows: Vec<EntryRow> = conn
        .prepare_cached(
            "SELECT id, entry_id, kind, version, state, recorded_at, recorded_by, body FROM record_entries \
             WHERE case_id = ?1 ORDER BY id",
        )?
        .query_map([case_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut versions: Vec<EntryVersion> = Vec::new();
    for (id, entry_id, kind, version, state, at, by, ct) in rows {
        if !which.wants(&entry_id, &kind) {
            continue;
        }
        let state = EntryState::parse(&state).ok_or_else(|| StoreError::Undecodable {
            what: format!("the state of record entry {id}"),
        })?;
        let row = entry_row(id, case_id, &entry_id, &kind, version, state, &by, at);
        let plain = dk.open(loc(&row), &ct)?;
        let body: Value = serde_json::from_slice(&plain).map_err(|_| StoreError::Undecodable {
            what: format!("record entry {id}"),
        })?;
        let (content, reason) = match state {
            EntryState::Recorded => (body, None),
            EntryState::EnteredInError => {
                let prev = versions
                    .iter()
                    .rev()
                    .find(|v| v.entry_id == entry_id)
                    .map(|v| v.content.clone())
                    .unwrap_or(Value::Null);
                (
                    prev,
                    body.get("reason").and_then(Value::as_str).map(String::from),
                )
            }
        };
        versions.push(EntryVersion {
            entry_id,
            kind,
            version,
            state,
            recorded_at_ms: at,
            recorded_by: by,
            content,
            reason,
        });
    }
    Ok(CaseRecord { versions })
}

/// Refuses changes to a closed case's record (its bundle is sealed).
pub(super) fn open_case_only(conn: &rusqlite::Connection, case_id: &str) -> Result<()> {
    let status: String =
        conn.query_row("SELECT status FROM cases WHERE id = ?1", [case_id], |r| {
            r.get(0)
        })?;
    if status == "closed" {
        return Err(StoreError::CaseClosed {
            case_id: case_id.into(),
        });
    }
    Ok(())
}

/// `(account id, display name, role)` of every account the record's current entries name:
/// crew, performers and authors (for the bundle's Practitioners and the NEMSIS crew list).
pub(super) fn people_of(
    conn: &Connection,
    rec: &CaseRecord,
) -> Result<Vec<(String, String, String)>> {
    let mut ids: Vec<String> = Vec::new();
    for v in rec.latest() {
        ids.push(v.recorded_by.clone());
        if let Some(p) = v.content.get("performer").and_then(Value::as_str) {
            ids.push(p.to_string());
        }
        if let Some(crew) = v.content.get("crew").and_then(Value::as_array) {
            ids.extend(
                crew.iter()
                    .filter_map(|m| m.get("account")?.as_str().map(String::from)),
            );
        }
    }
    ids.sort();
    ids.dedup();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let row: Option<(String, String)> = conn
            .prepare_cached("SELECT display_name, role FROM users WHERE id = ?1")?
            .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (name, role) = row.unwrap_or_else(|| (id.clone(), String::new()));
        out.push((id, name, role));
    }
    Ok(out)
}

/// Checks a client request key's form: 8 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_request_key(k: &str) -> bool {
    (8..=64).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The stored answer of an earlier submit with this key, if any.
pub(super) fn replay(conn: &Connection, actor: &str, key: Option<&str>) -> Result<Option<Value>> {
    let Some(key) = key else { return Ok(None) };
    let r: Option<String> = conn
        .prepare_cached(
            "SELECT result FROM request_keys WHERE actor = ?1 AND key = ?2 AND created_at > ?3",
        )?
        .query_row(params![actor, key, now_ms() - REQUEST_KEY_TTL_MS], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(r.and_then(|s| serde_json::from_str(&s).ok()))
}

/// A request key sent again with a different kind of request.
pub(super) fn key_reused() -> StoreError {
    StoreError::InvalidRecord(crate::model::record::FieldError {
        field: "Idempotency-Key".into(),
        message: "was already used for another kind of request; send a new key".into(),
    })
}

/// Remembers a submit's answer under its key (and forgets keys past their time).
pub(super) fn remember(
    conn: &Connection,
    actor: &str,
    key: Option<&str>,
    case_id: &str,
    result: &Value,
) -> Result<()> {
    let Some(key) = key else { return Ok(()) };
    let now = now_ms();
    conn.prepare_cached("DELETE FROM request_keys WHERE created_at <= ?1")?
        .execute([now - REQUEST_KEY_TTL_MS])?;
    conn.prepare_cached(
        "INSERT OR REPLACE INTO request_keys (actor, key, case_id, created_at, result) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![actor, key, case_id, now, result.to_string()])?;
    Ok(())
}

/// The top-level fields whose values differ between two versions (audited: names only).
pub(super) fn changed_fields(old: &Value, new: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    let mut f: Vec<String> = o
        .keys()
        .chain(n.keys())
        .filter(|k| o.get(*k) != n.get(*k))
        .cloned()
        .collect();
    f.sort();
    f.dedup();
    f
}

/// What one write changes: the entry, its new content (or reason), and the audit action.
pub(super) struct Change {
    entry_id: String,
    kind: &'static str,
    state: EntryState,
    body: Value,
    action: &'static str,
    fields: Vec<String>,
}

/// One new version of an entry, before its body is sealed.
struct NewVersion<'a> {
    case_id: &'a str,
    entry_id: &'a str,
    kind: &'a str,
    version: i64,
    state: EntryState,
    at: i64,
    by: &'a str,
}

/// Seals `body` with the row's plaintext columns in its associated data and inserts the row:
/// the one place a record version is written (API writes and the v8 migration).
fn insert_version(
    st: &mut super::State,
    conn: &Connection,
    dk: &DataKey,
    v: &NewVersion<'_>,
    body: &Value,
) -> Result<()> {
    let id: i64 = conn.query_row(
        "SELECT coalesce(max(id), 0) + 1 FROM record_entries",
        [],
        |r| r.get(0),
    )?;
    let row = entry_row(
        id, v.case_id, v.entry_id, v.kind, v.version, v.state, v.by, v.at,
    );
    let sealed = dk.seal(loc(&row), &serde_json::to_vec(body).expect("json"))?;
    st.count_invocations(conn, dk.id(), 1)?;
    conn.execute(
        "INSERT INTO record_entries (id, case_id, entry_id, kind, version, state, recorded_at, recorded_by, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![id, v.case_id, v.entry_id, v.kind, v.version, v.state.as_str(), v.at, v.by, sealed],
    )?;
    Ok(())
}

impl Db {
    /// The case's record (every version of every entry), audited as a read.
    pub fn case_record(&mut self, actor: &Actor, case_id: &str) -> Result<CaseRecord> {
        let a = self.read_case_record(actor, case_id);
        self.finish_audited(a)
    }

    /// [`Db::case_record`] on a reader: the record and its audit entry, not yet written.
    pub fn read_case_record(&mut self, actor: &Actor, case_id: &str) -> super::Audited<CaseRecord> {
        super::Audited::of((|| {
            let tx = self.conn.transaction()?;
            let (territory, dk) = self.st.live_case(&tx, case_id)?;
            let rec = read_entries(&tx, &dk, case_id, Which::All)?;
            tx.commit()?;
            let ev = AuditEvent::new(
                actor,
                "record.read",
                format!("case/{case_id}"),
                Outcome::Success,
            )
            .territory(&territory);
            Ok((rec, ev))
        })())
    }

    /// Applies a merge patch to a section (creating it on first write).
    pub fn patch_section(
        &mut self,
        actor: &Actor,
        case_id: &str,
        section: Section,
        patch: &Value,
        o: WriteOpts<'_>,
    ) -> Result<EntryWritten> {
        self.write_entry(
            actor,
            case_id,
            o,
            section.as_str(),
            section_change(section, patch),
        )
    }

    /// Adds an event (oxygen, procedure, medication, assessment).
    pub fn add_event(
        &mut self,
        actor: &Actor,
        case_id: &str,
        kind: EventKind,
        body: &Value,
        o: WriteOpts<'_>,
    ) -> Result<EntryWritten> {
        let entry = new_id();
        self.write_entry(actor, case_id, o, &entry, |_, bounds| {
            kind.validate(body.clone(), bounds)
                .map_err(StoreError::InvalidRecord)?;
            Ok(Change {
                entry_id: entry.clone(),
                kind: kind.as_str(),
                state: EntryState::Recorded,
                fields: changed_fields(&Value::Null, body),
                body: body.clone(),
                action: "record.create",
            })
        })
    }

    /// Replaces an event's content with a corrected one (a new version).
    pub fn correct_event(
        &mut self,
        actor: &Actor,
        case_id: &str,
        entry_id: &str,
        body: &Value,
        o: WriteOpts<'_>,
    ) -> Result<EntryWritten> {
        self.write_entry(actor, case_id, o, entry_id, |rec, bounds| {
            let cur = current_of(rec, entry_id)?;
            let kind = EventKind::parse(&cur.kind).ok_or_else(|| StoreError::InvalidId {
                kind: "event entry (sections are patched)",
                id: entry_id.into(),
            })?;
            kind.validate(body.clone(), bounds)
                .map_err(StoreError::InvalidRecord)?;
            Ok(Change {
                entry_id: entry_id.to_string(),
                kind: kind.as_str(),
                state: EntryState::Recorded,
                fields: changed_fields(&cur.content, body),
                body: body.clone(),
                action: "record.correct",
            })
        })
    }

    /// Marks an entry entered-in-error with a reason: it leaves triage, handoff and exports
    /// and stays in the history.
    pub fn void_entry(
        &mut self,
        actor: &Actor,
        case_id: &str,
        entry_id: &str,
        reason: &str,
        o: WriteOpts<'_>,
    ) -> Result<EntryWritten> {
        self.write_entry(actor, case_id, o, entry_id, |rec, _| {
            let cur = current_of(rec, entry_id)?;
            let kind = Section::parse(&cur.kind)
                .map(Section::as_str)
                .or_else(|| EventKind::parse(&cur.kind).map(EventKind::as_str))
                .expect("stored kinds are checked by the schema");
            Ok(Change {
                entry_id: entry_id.to_string(),
                kind,
                state: EntryState::EnteredInError,
                fields: vec!["state".into()],
                body: serde_json::json!({ "reason": reason }),
                action: "record.entered_in_error",
            })
        })
    }

    /// One write of `entry`: replay check, case checks, read that entry's versions (only those
    /// are decrypted), change, seal, insert, audit, commit.
    fn write_entry(
        &mut self,
        actor: &Actor,
        case_id: &str,
        o: WriteOpts<'_>,
        entry: &str,
        change: impl FnOnce(&CaseRecord, &Bounds) -> Result<Change>,
    ) -> Result<EntryWritten> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(r) = replay(&tx, &actor.id, o.request_key)? {
            let mut w: EntryWritten =
                serde_json::from_value(r).map_err(|_| super::record::key_reused())?;
            w.replayed = true;
            return Ok(w);
        }
        let written = write_in(&mut self.st, &tx, actor, case_id, o.if_match, entry, change)?;
        remember(
            &tx,
            &actor.id,
            o.request_key,
            case_id,
            &serde_json::to_value(&written).expect("json"),
        )?;
        tx.commit()?;
        Ok(written)
    }
}

/// The change a merge patch of `section` makes: merged into the current content, validated
/// after the merge.
pub(super) fn section_change(
    section: Section,
    patch: &Value,
) -> impl FnOnce(&CaseRecord, &Bounds) -> Result<Change> + '_ {
    move |rec, bounds| {
        let cur = rec
            .latest()
            .into_iter()
            .find(|v| v.entry_id == section.as_str())
            .cloned();
        let mut content = match &cur {
            Some(v) if v.state == EntryState::Recorded => v.content.clone(),
            _ => Value::Object(Default::default()),
        };
        let before = content.clone();
        merge_patch(&mut content, patch);
        section
            .validate(content.clone(), bounds)
            .map_err(StoreError::InvalidRecord)?;
        Ok(Change {
            entry_id: section.as_str().to_string(),
            kind: section.as_str(),
            state: EntryState::Recorded,
            fields: changed_fields(&before, &content),
            body: content,
            action: if cur.is_some() {
                "record.update"
            } else {
                "record.create"
            },
        })
    }
}

/// Writes one new version of `entry` inside `tx`: checks the case is live and open, applies
/// `change` to the entry's current content, checks `if_match`, seals, audits.
pub(super) fn write_in(
    st: &mut State,
    tx: &Connection,
    actor: &Actor,
    case_id: &str,
    if_match: Option<i64>,
    entry: &str,
    change: impl FnOnce(&CaseRecord, &Bounds) -> Result<Change>,
) -> Result<EntryWritten> {
    let (territory, dk) = st.live_case(tx, case_id)?;
    open_case_only(tx, case_id)?;
    let created: i64 = tx.query_row(
        "SELECT created_at FROM cases WHERE id = ?1",
        [case_id],
        |r| r.get(0),
    )?;
    let now = now_ms();
    let bounds = Bounds {
        now_ms: now,
        case_created_ms: created,
    };
    let rec = read_entries(tx, &dk, case_id, Which::Entry(entry))?;
    let c = change(&rec, &bounds)?;
    debug_assert_eq!(c.entry_id, entry);
    let current = rec.versions.iter().map(|v| v.version).max().unwrap_or(0);
    if let Some(m) = if_match
        && m != current
    {
        return Err(StoreError::Stale {
            what: format!("{} {}", c.kind, c.entry_id),
            current,
        });
    }
    let version = current + 1;
    let v = NewVersion {
        case_id,
        entry_id: &c.entry_id,
        kind: c.kind,
        version,
        state: c.state,
        at: now,
        by: &actor.id,
    };
    insert_version(st, tx, &dk, &v, &c.body)?;
    if c.kind == Section::Disposition.as_str() {
        let before = rec.latest().first().map(|v| (v.state, &v.content));
        super::prealerts::on_disposition(tx, case_id, before, (c.state, &c.body), now)?;
    }
    let written = EntryWritten {
        entry_id: c.entry_id.clone(),
        kind: c.kind.to_string(),
        version,
        recorded_at_ms: now,
        replayed: false,
    };
    let ev = AuditEvent::new(actor, c.action, format!("case/{case_id}"), Outcome::Success)
        .territory(&territory)
        .details(serde_json::json!({
            "kind": c.kind, "entry": c.entry_id, "version": version, "fields": c.fields,
        }));
    audit::append(tx, st, &ev, now)?;
    Ok(written)
}

/// Migration v8: the free-text medication list of schema ≤ 7 becomes medication entries of
/// the record (`medication: other`, the text kept whole in `note`, time and author kept), so
/// one list reaches the tablet, the bundle and the NEMSIS export. Rows of crypto-erased cases
/// were deleted with them. Returns how many were carried over.
pub(super) fn legacy_medications_to_record(
    st: &mut super::State,
    conn: &Connection,
) -> Result<usize> {
    type Legacy = (i64, String, i64, String, Vec<u8>, i64);
    let rows: Vec<Legacy> = conn
        .prepare("SELECT m.id, m.case_id, m.created_at, m.created_by, m.body, c.dk_id FROM medications m JOIN cases c ON c.id = m.case_id ORDER BY m.id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
        .collect::<Result<_, _>>()?;
    let mut n = 0;
    for (mid, case_id, at, by, ct, dk_id) in rows {
        let dk = match st.data_key(conn, dk_id, "case", &case_id) {
            Ok(dk) => dk,
            Err(e) if e.is_systemic() => return Err(e),
            Err(_) => continue,
        };
        let plain = dk.open(
            FieldLoc {
                table: "medications",
                column: "body",
                row_id: &super::readings::med_row(mid, &by),
            },
            &ct,
        )?;
        let old: Value = serde_json::from_slice(&plain).map_err(|_| StoreError::Undecodable {
            what: format!("medication {mid}"),
        })?;
        let field = |k: &str| {
            old.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let mut text = [field("name"), field("dose"), field("route")]
            .into_iter()
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let note = field("note");
        if !note.is_empty() {
            text = format!("{text} — {note}");
        }
        let content = serde_json::json!({ "at_ms": at, "medication": "other", "note": text });
        let v = NewVersion {
            case_id: &case_id,
            entry_id: &new_id(),
            kind: "medication",
            version: 1,
            state: EntryState::Recorded,
            at,
            by: &by,
        };
        // The opening above, the sealing in `insert_version`.
        st.count_invocations(conn, dk.id(), 1)?;
        insert_version(st, conn, &dk, &v, &content)?;
        conn.execute("DELETE FROM medications WHERE id = ?1", [mid])?;
        n += 1;
    }
    Ok(n)
}

fn current_of<'r>(rec: &'r CaseRecord, entry_id: &str) -> Result<&'r EntryVersion> {
    let cur = rec
        .latest()
        .into_iter()
        .find(|v| v.entry_id == entry_id)
        .ok_or_else(|| StoreError::NotFound {
            kind: "record entry",
            id: entry_id.into(),
        })?;
    if cur.state == EntryState::EnteredInError {
        return Err(StoreError::RecordFinal {
            id: format!("entry {entry_id} (entered-in-error)"),
        });
    }
    Ok(cur)
}
