//! Attachments in the shared store: parts recorded as they arrive (each also a stored bundle,
//! its bytes sealed in the bundle body), the file verified against its SHA-256 when the last
//! part lands, listed and exported. The attachment row is locked by the part's upsert, so two
//! receivers storing the last two parts at once see each other's part: one completes it.

use std::sync::Arc;

use postgres::Transaction;
use postgres::fallible_iterator::FallibleIterator;

use super::{PgStore, loc, pg_err};
use crate::crypto::field::DataKey;
use crate::model::PartHeader;
use crate::storage::receiver::ReceivedBundle;
use crate::storage::receiver_files::{ReceivedAttachment, Sink, Tiles, exportable, part_data};
use crate::storage::{Result, StoreError};

/// A newly stored part and its sealed caption and file name.
pub(super) struct Part<'a> {
    pub b: &'a ReceivedBundle,
    pub bundle_id: &'a str,
    pub h: &'a PartHeader,
    pub data_at: usize,
    pub caption: Option<&'a [u8]>,
    pub filename: Option<&'a [u8]>,
}

/// Seals an attachment's caption or file name (PHI) under the appliance's data key.
pub(super) fn seal_text(
    key: &DataKey,
    column: &'static str,
    appliance: &str,
    h: &PartHeader,
    text: &str,
) -> Result<Vec<u8>> {
    let row = format!("{appliance}/{}", h.attachment);
    Ok(key.seal(loc("attachments", column, &row), text.as_bytes())?)
}

fn open_text(
    key: &DataKey,
    column: &'static str,
    row: &str,
    sealed: Option<Vec<u8>>,
) -> Result<Option<String>> {
    sealed
        .map(|c| {
            let plain = key.open(loc("attachments", column, row), &c)?;
            String::from_utf8(plain).map_err(|_| StoreError::Undecodable {
                what: format!("attachment {row}'s {column}"),
            })
        })
        .transpose()
}

/// Records one newly stored part; completes (or condemns) the attachment when it was the last.
pub(super) fn add_part(
    tx: &mut Transaction<'_>,
    p: &Part<'_>,
    now: i64,
    me: &str,
    key: &Arc<DataKey>,
) -> Result<()> {
    let (app, h) = (&p.b.appliance_id, p.h);
    tx.execute(
        "INSERT INTO attachments (appliance_id, attachment_id, case_id, kind, media_type, size, sha256, parts, \
         caption, filename, created_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'partial') \
         ON CONFLICT (appliance_id, attachment_id) DO UPDATE SET \
         caption = coalesce(excluded.caption, attachments.caption), \
         filename = coalesce(excluded.filename, attachments.filename)",
        &[app, &h.attachment, &h.case, &h.kind, &h.media_type, &(h.size as i64), &h.sha256,
            &(h.parts as i32), &p.caption, &p.filename, &h.created_at_ms],
    )
    .map_err(pg_err("store attachment"))?;
    let row = tx
        .query_one(
            "SELECT size, sha256, parts, state FROM attachments \
             WHERE appliance_id = $1 AND attachment_id = $2",
            &[app, &h.attachment],
        )
        .map_err(pg_err("read attachment"))?;
    let (size, sha, parts, state): (i64, String, i32, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if size as u64 != h.size || sha != h.sha256 || parts as u32 != h.parts {
        let why = "a part describes another file than the first part did";
        return raise(tx, p, now, me, why);
    }
    tx.execute(
        "INSERT INTO attachment_parts (appliance_id, attachment_id, part, bundle_id, \"offset\", length, data_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        &[app, &h.attachment, &(h.part as i32), &p.bundle_id, &(h.offset as i64), &(h.length as i64), &(p.data_at as i64)],
    )
    .map_err(pg_err("store attachment part"))?;
    let have: i64 = tx
        .query_one(
            "SELECT count(*) FROM attachment_parts WHERE appliance_id = $1 AND attachment_id = $2",
            &[app, &h.attachment],
        )
        .map_err(pg_err("count attachment parts"))?
        .get(0);
    if have < i64::from(parts) || state != "partial" {
        return Ok(());
    }
    let mut tiles = Tiles::default();
    let tiled = each_part(tx, key, app, &h.attachment, |offset, data| {
        Ok(tiles.push(offset, data))
    })?;
    if tiled && tiles.make_up(h) {
        tx.execute(
            "UPDATE attachments SET state = 'complete', completed_at = $1 \
             WHERE appliance_id = $2 AND attachment_id = $3",
            &[&now, app, &h.attachment],
        )
        .map_err(pg_err("complete attachment"))?;
        Ok(())
    } else {
        raise(
            tx,
            p,
            now,
            me,
            "the reassembled file does not match its SHA-256",
        )
    }
}

fn raise(tx: &mut Transaction<'_>, p: &Part<'_>, now: i64, me: &str, why: &str) -> Result<()> {
    let (app, attachment) = (&p.b.appliance_id, &p.h.attachment);
    tracing::error!(appliance_id = %app, attachment = %attachment, why, "ALARM: attachment corrupt");
    tx.execute(
        "UPDATE attachments SET state = 'corrupt' WHERE appliance_id = $1 AND attachment_id = $2",
        &[app, attachment],
    )
    .map_err(pg_err("condemn attachment"))?;
    tx.execute(
        "INSERT INTO alarms (raised_at, raised_by, kind, appliance_id, bundle_id, detail) \
         VALUES ($1, $2, 'attachment_corrupt', $3, $4, $5) ON CONFLICT DO NOTHING",
        &[
            &now,
            &me,
            app,
            &p.bundle_id,
            &format!("attachment {attachment}: {why}"),
        ],
    )
    .map_err(pg_err("raise alarm"))?;
    Ok(())
}

/// Calls `each(offset, bytes)` for every part in order, opening each part's sealed bundle;
/// stops (false) when `each` says so.
fn each_part<C: postgres::GenericClient>(
    c: &mut C,
    key: &DataKey,
    appliance: &str,
    attachment: &str,
    mut each: impl FnMut(u64, &[u8]) -> Result<bool>,
) -> Result<bool> {
    let params: [&(dyn postgres::types::ToSql + Sync); 2] = [&appliance, &attachment];
    let mut rows = c
        .query_raw(
            "SELECT p.\"offset\", p.data_at, p.bundle_id, b.body FROM attachment_parts p \
             JOIN bundles b ON b.appliance_id = p.appliance_id AND b.bundle_id = p.bundle_id \
             WHERE p.appliance_id = $1 AND p.attachment_id = $2 ORDER BY p.part",
            params,
        )
        .map_err(pg_err("read attachment parts"))?;
    while let Some(r) = rows.next().map_err(pg_err("read attachment parts"))? {
        let (offset, at, bundle): (i64, i64, String) = (r.get(0), r.get(1), r.get(2));
        let row = format!("{appliance}/{bundle}");
        let body = key.open(loc("bundles", "body", &row), r.get::<_, &[u8]>(3))?;
        if !each(offset as u64, part_data(&body, at, attachment)?)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every attachment received (complete or not), newest first.
pub(super) fn list(s: &mut PgStore) -> Result<Vec<ReceivedAttachment>> {
    let rows = s
        .conn()?
        .client
        .query(
            "SELECT a.appliance_id, a.attachment_id, a.case_id, a.kind, a.media_type, a.size, a.sha256, a.parts, \
             (SELECT count(*) FROM attachment_parts p WHERE p.appliance_id = a.appliance_id AND p.attachment_id = a.attachment_id), \
             a.caption, a.filename, a.state, a.completed_at FROM attachments a ORDER BY a.created_at DESC",
            &[],
        )
        .map_err(pg_err("list attachments"))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let (app, id): (String, String) = (r.get(0), r.get(1));
        let key = s.data_key(&app, false)?;
        let row = format!("{app}/{id}");
        out.push(ReceivedAttachment {
            case_id: r.get(2),
            kind: r.get(3),
            media_type: r.get(4),
            size: r.get::<_, i64>(5) as u64,
            sha256: r.get(6),
            parts: r.get::<_, i32>(7) as u32,
            parts_received: r.get::<_, i64>(8) as u32,
            caption: open_text(&key, "caption", &row, r.get(9))?,
            filename: open_text(&key, "filename", &row, r.get(10))?,
            state: r.get(11),
            completed_at_ms: r.get(12),
            appliance_id: app,
            attachment_id: id,
        });
    }
    Ok(out)
}

/// Writes a complete attachment's file to `out`; returns its size. An incomplete or corrupt
/// attachment is refused.
pub(super) fn export(
    s: &mut PgStore,
    appliance: &str,
    attachment: &str,
    out: &mut dyn std::io::Write,
) -> Result<u64> {
    let state: Option<String> = s
        .conn()?
        .client
        .query_opt(
            "SELECT state FROM attachments WHERE appliance_id = $1 AND attachment_id = $2",
            &[&appliance, &attachment],
        )
        .map_err(pg_err("read attachment"))?
        .map(|r| r.get(0));
    exportable(state.as_deref(), appliance, attachment)?;
    let key = s.data_key(appliance, false)?;
    let mut sink = Sink::new(out);
    let client = &mut s.conn()?.client;
    each_part(client, &key, appliance, attachment, |_, data| {
        Ok(sink.write(data))
    })?;
    sink.finish()
}
