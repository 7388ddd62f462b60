//! The receiver's attachments: parts recorded as they arrive (each also a stored bundle),
//! the file verified against its SHA-256 when the last part lands, listed and exported.

use std::io::Write;

use rusqlite::{OptionalExtension, params};

use super::{Result, StoreError};
use crate::model::PartHeader;

/// An attachment as the receiver holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReceivedAttachment {
    pub appliance_id: String,
    pub attachment_id: String,
    pub case_id: String,
    pub kind: String,
    pub media_type: String,
    pub size: u64,
    pub sha256: String,
    pub parts: u32,
    pub parts_received: u32,
    pub caption: Option<String>,
    pub filename: Option<String>,
    pub state: String,
    pub completed_at_ms: Option<i64>,
}

/// Where a part came from: the appliance and the bundle that carried it.
pub(super) struct Source<'a> {
    pub appliance_id: &'a str,
    pub bundle_id: &'a str,
}

/// Records one newly stored part; completes (or condemns) the attachment when it was the last.
pub(super) fn add_part(
    tx: &rusqlite::Transaction<'_>,
    b: &Source<'_>,
    h: &PartHeader,
    data_at: usize,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO attachments (appliance_id, attachment_id, case_id, kind, media_type, size, sha256, parts, \
         caption, filename, created_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'partial') \
         ON CONFLICT (appliance_id, attachment_id) DO UPDATE SET \
         caption = coalesce(excluded.caption, caption), filename = coalesce(excluded.filename, filename)",
        params![b.appliance_id, h.attachment, h.case, h.kind, h.media_type, h.size as i64, h.sha256,
            i64::from(h.parts), h.caption, h.filename, h.created_at_ms],
    )?;
    let (size, sha, parts, state): (i64, String, i64, String) = tx.query_row(
        "SELECT size, sha256, parts, state FROM attachments WHERE appliance_id = ?1 AND attachment_id = ?2",
        params![b.appliance_id, h.attachment],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    if size as u64 != h.size || sha != h.sha256 || parts != i64::from(h.parts) {
        raise(
            tx,
            b,
            &h.attachment,
            "a part describes another file than the first part did",
            now,
        )?;
        return Ok(());
    }
    tx.execute(
        "INSERT INTO attachment_parts (appliance_id, attachment_id, part, bundle_id, offset, length, data_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        params![b.appliance_id, h.attachment, i64::from(h.part), b.bundle_id, h.offset as i64, h.length as i64, data_at as i64],
    )?;
    let have: i64 = tx.query_row(
        "SELECT count(*) FROM attachment_parts WHERE appliance_id = ?1 AND attachment_id = ?2",
        params![b.appliance_id, h.attachment],
        |r| r.get(0),
    )?;
    if have < parts || state != "partial" {
        return Ok(());
    }
    // The last part: the parts must tile the file and hash to its SHA-256.
    let mut tiles = Tiles::default();
    let tiled = each_part(tx, b.appliance_id, &h.attachment, |offset, data| {
        Ok(tiles.push(offset, data))
    })?;
    if tiled && tiles.make_up(h) {
        tx.execute(
            "UPDATE attachments SET state = 'complete', completed_at = ?1 WHERE appliance_id = ?2 AND attachment_id = ?3",
            params![now, b.appliance_id, h.attachment],
        )?;
    } else {
        raise(
            tx,
            b,
            &h.attachment,
            "the reassembled file does not match its SHA-256",
            now,
        )?;
    }
    Ok(())
}

/// The parts of a file in order: each must start where the previous one ended; together they
/// must be the file the header describes (size and SHA-256).
#[derive(Default)]
pub(super) struct Tiles {
    sha256: crate::crypto::Sha256,
    end: u64,
}

impl Tiles {
    /// Adds the next part; false when it does not start where the last one ended.
    pub(super) fn push(&mut self, offset: u64, data: &[u8]) -> bool {
        if offset != self.end {
            return false;
        }
        self.end += data.len() as u64;
        self.sha256.update(data);
        true
    }

    /// Whether the parts so far make up the whole file `h` describes.
    pub(super) fn make_up(self, h: &PartHeader) -> bool {
        self.end == h.size && hex::encode(self.sha256.finish()) == h.sha256
    }
}

fn raise(
    tx: &rusqlite::Transaction<'_>,
    b: &Source<'_>,
    attachment: &str,
    why: &str,
    now: i64,
) -> Result<()> {
    tracing::error!(appliance_id = %b.appliance_id, attachment, why, "ALARM: attachment corrupt");
    tx.execute(
        "UPDATE attachments SET state = 'corrupt' WHERE appliance_id = ?1 AND attachment_id = ?2",
        params![b.appliance_id, attachment],
    )?;
    tx.execute(
        "INSERT INTO alarms (raised_at, kind, appliance_id, bundle_id, detail) VALUES (?1, 'attachment_corrupt', ?2, ?3, ?4) \
         ON CONFLICT DO NOTHING",
        params![now, b.appliance_id, b.bundle_id, format!("attachment {attachment}: {why}")],
    )?;
    Ok(())
}

/// Calls `each(offset, bytes)` for every part in order; stops (false) when `each` says so.
fn each_part(
    conn: &rusqlite::Connection,
    appliance: &str,
    attachment: &str,
    mut each: impl FnMut(u64, &[u8]) -> Result<bool>,
) -> Result<bool> {
    let mut st = conn.prepare_cached(
        "SELECT p.offset, p.data_at, b.body FROM attachment_parts p JOIN bundles b ON b.appliance_id = p.appliance_id AND b.bundle_id = p.bundle_id \
         WHERE p.appliance_id = ?1 AND p.attachment_id = ?2 ORDER BY p.part",
    )?;
    let mut rows = st.query(params![appliance, attachment])?;
    while let Some(r) = rows.next()? {
        let (offset, at, body): (i64, i64, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?);
        if !each(offset as u64, part_data(&body, at, attachment)?)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A part's bytes: its stored bundle body from `data_at` on.
pub(super) fn part_data<'a>(body: &'a [u8], data_at: i64, attachment: &str) -> Result<&'a [u8]> {
    body.get(data_at as usize..)
        .ok_or_else(|| StoreError::Undecodable {
            what: format!("a stored part of attachment {attachment}"),
        })
}

/// Every attachment received (complete or not), newest first.
pub(super) fn list(conn: &rusqlite::Connection) -> Result<Vec<ReceivedAttachment>> {
    let rows = conn
            .prepare(
                "SELECT a.appliance_id, a.attachment_id, a.case_id, a.kind, a.media_type, a.size, a.sha256, a.parts, \
                 (SELECT count(*) FROM attachment_parts p WHERE p.appliance_id = a.appliance_id AND p.attachment_id = a.attachment_id), \
                 a.caption, a.filename, a.state, a.completed_at FROM attachments a ORDER BY a.created_at DESC",
            )?
            .query_map([], |r| {
                Ok(ReceivedAttachment {
                    appliance_id: r.get(0)?,
                    attachment_id: r.get(1)?,
                    case_id: r.get(2)?,
                    kind: r.get(3)?,
                    media_type: r.get(4)?,
                    size: r.get::<_, i64>(5)? as u64,
                    sha256: r.get(6)?,
                    parts: r.get::<_, i64>(7)? as u32,
                    parts_received: r.get::<_, i64>(8)? as u32,
                    caption: r.get(9)?,
                    filename: r.get(10)?,
                    state: r.get(11)?,
                    completed_at_ms: r.get(12)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Writes a complete attachment's file to `out` (the bytes whose SHA-256 was verified);
/// returns its size. An incomplete or corrupt attachment is refused.
pub(super) fn export(
    conn: &rusqlite::Connection,
    appliance: &str,
    attachment: &str,
    out: &mut dyn Write,
) -> Result<u64> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM attachments WHERE appliance_id = ?1 AND attachment_id = ?2",
            params![appliance, attachment],
            |r| r.get(0),
        )
        .optional()?;
    exportable(state.as_deref(), appliance, attachment)?;
    let mut sink = Sink::new(out);
    each_part(conn, appliance, attachment, |_, data| Ok(sink.write(data)))?;
    sink.finish()
}

/// Refuses to export an attachment that is absent (`state` none) or not complete.
pub(super) fn exportable(state: Option<&str>, appliance: &str, attachment: &str) -> Result<()> {
    match state {
        None => Err(StoreError::NotFound {
            kind: "attachment",
            id: format!("{appliance}/{attachment}"),
        }),
        Some("complete") => Ok(()),
        Some(_) => Err(StoreError::AttachmentState {
            id: attachment.into(),
            state: "not complete (parts missing or corrupt)",
        }),
    }
}

/// Where an export writes the parts in order: counts the bytes, keeps the first write error.
pub(super) struct Sink<'a> {
    out: &'a mut dyn Write,
    n: u64,
    err: Option<std::io::Error>,
}

impl<'a> Sink<'a> {
    pub(super) fn new(out: &'a mut dyn Write) -> Self {
        Sink {
            out,
            n: 0,
            err: None,
        }
    }

    /// Writes one part; false (stop) after a write error.
    pub(super) fn write(&mut self, data: &[u8]) -> bool {
        match self.out.write_all(data) {
            Ok(()) => {
                self.n += data.len() as u64;
                true
            }
            Err(e) => {
                self.err = Some(e);
                false
            }
        }
    }

    /// The bytes written, or the write error.
    pub(super) fn finish(self) -> Result<u64> {
        match self.err {
            Some(e) => Err(StoreError::Io {
                path: "export output".into(),
                source: e,
            }),
            None => Ok(self.n),
        }
    }
}
