//! Attachments: the `attachments` and `attachment_chunks` tables, content in sealed fixed-size
//! chunks under the case key, read back for authorised views (every one audited), listing,
//! abandoned uploads. Uploading and storing live in `attachment_upload`, queuing the parts for
//! the cloud in `attachment_sync`.

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::{Db, Result, State, StoreError, audit};
use crate::crypto::chunk::ChunkLoc;
use crate::crypto::field::{DataKey, FieldLoc};
use crate::crypto::random_bytes;
use crate::media;
use crate::model::{
    Actor, AttachmentInfo, AttachmentKind, AttachmentState, AuditEvent, MediaType, Outcome, now_ms,
};

/// Plaintext bytes per stored content chunk.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The sealed `meta` column.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct Meta {
    pub caption: Option<String>,
    pub filename: Option<String>,
    pub sha256: Option<String>,
    pub stripped: Vec<String>,
    pub orientation: Option<u8>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Bytes of the file as exported (a DICOM object re-joined with its PHI).
    pub file_size: Option<u64>,
}

/// What a view reads: the whole content (DICOM, re-joined) or the number of chunks to stream.
#[derive(Debug)]
pub struct AttachmentOpen {
    pub info: AttachmentInfo,
    pub media_type: MediaType,
    /// The joined DICOM object, or the thumbnail; `None` when content streams chunk by chunk.
    pub whole: Option<Vec<u8>>,
    pub chunk_count: u32,
}

/// What to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendition {
    /// The file as attached (metadata stripped; DICOM re-joined).
    File,
    Thumbnail,
    /// The stored content as is: for DICOM, the de-identified object without its PHI part
    /// (for sharing beyond the treating team, and for checking the split).
    Deidentified,
}

pub(super) fn meta_loc(id: &str) -> FieldLoc<'_> {
    FieldLoc {
        table: "attachments",
        column: "meta",
        row_id: id,
    }
}

pub(super) fn content_loc(id: &str, index: u32, count: u32) -> ChunkLoc<'_> {
    ChunkLoc {
        part: "content",
        attachment_id: id,
        index,
        count,
    }
}

pub(super) fn upload_loc(id: &str, index: u32) -> ChunkLoc<'_> {
    ChunkLoc {
        part: "upload",
        attachment_id: id,
        index,
        count: 0,
    }
}

pub(super) fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    random_bytes(&mut b)?;
    Ok(uuid::Builder::from_random_bytes(b).into_uuid().to_string())
}

/// One row of `attachments` with its case key.
pub(super) struct Row {
    pub id: String,
    pub case_id: String,
    pub territory: String,
    pub kind: AttachmentKind,
    pub state: AttachmentState,
    pub declared: u64,
    pub received: u64,
    pub pieces: u32,
    pub media: Option<MediaType>,
    pub size: Option<u64>,
    pub chunk_count: Option<u32>,
    pub meta: Meta,
    pub has_thumb: bool,
    pub created_by: String,
    pub created_at: i64,
    pub stored_at: Option<i64>,
    pub dk: std::sync::Arc<DataKey>,
}

impl State {
    /// Reads an attachment of `case_id` (and the case's key); a missing row or one of another
    /// case is not found.
    pub(super) fn attachment_row(
        &mut self,
        conn: &rusqlite::Connection,
        case_id: &str,
        id: &str,
    ) -> Result<Row> {
        type Raw = (
            String,
            String,
            i64,
            i64,
            i64,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Vec<u8>,
            bool,
            String,
            i64,
            Option<i64>,
        );
        let raw: Option<Raw> = conn
            .prepare_cached(
                "SELECT kind, state, declared_size, received, pieces, media_type, size, chunk_count, meta, \
                 thumb IS NOT NULL, created_by, created_at, stored_at \
                 FROM attachments WHERE id = ?1 AND case_id = ?2",
            )?
            .query_row(params![id, case_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?))
            })
            .optional()?;
        let Some((
            kind,
            state,
            declared,
            received,
            pieces,
            media,
            size,
            count,
            meta,
            has_thumb,
            created_by,
            created_at,
            stored_at,
        )) = raw
        else {
            return Err(StoreError::NotFound {
                kind: "attachment",
                id: id.into(),
            });
        };
        let (territory, dk) = self.live_case(conn, case_id)?;
        let undecodable = |what: &str| StoreError::Undecodable {
            what: format!("the {what} of attachment {id}"),
        };
        let meta: Meta = serde_json::from_slice(&dk.open(meta_loc(id), &meta)?)
            .map_err(|_| undecodable("metadata"))?;
        Ok(Row {
            id: id.into(),
            case_id: case_id.into(),
            territory,
            kind: AttachmentKind::parse(&kind).ok_or_else(|| undecodable("kind"))?,
            state: AttachmentState::parse(&state).ok_or_else(|| undecodable("state"))?,
            declared: declared as u64,
            received: received as u64,
            pieces: pieces as u32,
            media: match media {
                Some(m) => Some(MediaType::parse(&m).ok_or_else(|| undecodable("media type"))?),
                None => None,
            },
            size: size.map(|s| s as u64),
            chunk_count: count.map(|c| c as u32),
            meta,
            has_thumb,
            created_by,
            created_at,
            stored_at,
            dk,
        })
    }
}

impl Row {
    pub(super) fn info(&self, sync: Option<String>) -> AttachmentInfo {
        let stored = self.state == AttachmentState::Stored;
        AttachmentInfo {
            id: self.id.clone(),
            case_id: self.case_id.clone(),
            kind: self.kind,
            state: self.state,
            caption: self.meta.caption.clone(),
            filename: self.meta.filename.clone(),
            size: if stored {
                self.meta.file_size.unwrap_or(self.size.unwrap_or(0))
            } else {
                self.declared
            },
            received: self.received,
            media_type: self.media,
            sha256: self.meta.sha256.clone(),
            orientation: self.meta.orientation,
            width: self.meta.width,
            height: self.meta.height,
            has_thumbnail: self.has_thumb,
            stripped: self.meta.stripped.clone(),
            created_at_ms: self.created_at,
            created_by: self.created_by.clone(),
            stored_at_ms: self.stored_at,
            sync,
        }
    }
}

/// Reads the content chunks of a stored attachment in order, checking their number first.
/// Refuses an attachment whose content chunks are more or fewer than its recorded count
/// (rows deleted or added behind the store's back).
fn check_count(conn: &rusqlite::Connection, id: &str, count: u32) -> Result<()> {
    let found: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM attachment_chunks WHERE attachment_id = ?1 AND part = 'content'",
        )?
        .query_row([id], |r| r.get(0))?;
    if found as u64 != u64::from(count) {
        return Err(StoreError::AttachmentTruncated {
            id: id.into(),
            found: found as u64,
            expected: u64::from(count),
        });
    }
    Ok(())
}

pub(super) fn read_content(
    conn: &rusqlite::Connection,
    row: &Row,
    mut each: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let count = row.chunk_count.unwrap_or(0);
    check_count(conn, &row.id, count)?;
    let mut st = conn.prepare_cached(
        "SELECT body FROM attachment_chunks WHERE attachment_id = ?1 AND part = 'content' AND idx = ?2",
    )?;
    for i in 0..count {
        let body: Option<Vec<u8>> = st
            .query_row(params![row.id, i64::from(i)], |r| r.get(0))
            .optional()?;
        let body = body.ok_or_else(|| StoreError::AttachmentTruncated {
            id: row.id.clone(),
            found: u64::from(i),
            expected: u64::from(count),
        })?;
        each(row.dk.open_chunk(content_loc(&row.id, i, count), &body)?)?;
    }
    Ok(())
}

/// The stored file as exported: content, re-joined with its PHI part for DICOM.
pub(super) fn read_file(conn: &rusqlite::Connection, row: &Row) -> Result<Vec<u8>> {
    let mut all = Vec::with_capacity(row.size.unwrap_or(0) as usize);
    read_content(conn, row, |c| {
        all.extend_from_slice(&c);
        Ok(())
    })?;
    if row.media == Some(MediaType::Dicom) {
        let phi: Option<Vec<u8>> = conn.query_row(
            "SELECT phi FROM attachments WHERE id = ?1",
            [&row.id],
            |r| r.get(0),
        )?;
        let phi = phi.ok_or_else(|| StoreError::Undecodable {
            what: format!("the PHI part of attachment {}", row.id),
        })?;
        let loc = FieldLoc {
            table: "attachments",
            column: "phi",
            row_id: &row.id,
        };
        all = media::dicom::join(&all, &row.dk.open(loc, &phi)?)?;
    }
    Ok(all)
}

pub(super) fn audit_event(
    actor: &Actor,
    action: &str,
    row_id: &str,
    territory: &str,
    details: serde_json::Value,
) -> AuditEvent {
    AuditEvent::new(
        actor,
        action,
        format!("attachment/{row_id}"),
        Outcome::Success,
    )
    .territory(territory)
    .details(details)
}

impl Db {
    /// Upload state of one attachment (for a client resuming): not audited beyond the
    /// listing, as it carries the caption.
    pub fn attachment_info(
        &mut self,
        actor: &Actor,
        case_id: &str,
        id: &str,
    ) -> Result<AttachmentInfo> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = self.st.attachment_row(&tx, case_id, id)?;
        let sync = sync_state(&tx, id)?;
        let ev = audit_event(
            actor,
            "attachment.read",
            id,
            &row.territory,
            serde_json::json!({ "what": "metadata" }),
        );
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(row.info(sync))
    }

    /// Every attachment of a case (metadata, no content), oldest first. Audited
    /// `attachment.list`.
    pub fn attachments(&mut self, actor: &Actor, case_id: &str) -> Result<Vec<AttachmentInfo>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, _) = self.st.live_case(&tx, case_id)?;
        let ids: Vec<String> = tx
            .prepare_cached(
                "SELECT id FROM attachments WHERE case_id = ?1 ORDER BY created_at, id",
            )?
            .query_map([case_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            let row = self.st.attachment_row(&tx, case_id, id)?;
            out.push(row.info(sync_state(&tx, id)?));
        }
        let ev = AuditEvent::new(
            actor,
            "attachment.list",
            format!("case/{case_id}"),
            Outcome::Success,
        )
        .territory(&territory)
        .details(serde_json::json!({ "attachments": ids.len() }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    /// Opens a stored attachment for a view (audited `attachment.view` with the rendition):
    /// DICOM objects and thumbnails come whole, other files stream with [`Db::attachment_chunk`].
    pub fn attachment_open(
        &mut self,
        actor: &Actor,
        case_id: &str,
        id: &str,
        rendition: Rendition,
    ) -> Result<AttachmentOpen> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = self.st.attachment_row(&tx, case_id, id)?;
        let Some(media_type) = row.media.filter(|_| row.state == AttachmentState::Stored) else {
            return Err(StoreError::AttachmentState {
                id: id.into(),
                state: "still uploading",
            });
        };
        let whole = match rendition {
            Rendition::Thumbnail => {
                let t: Option<Vec<u8>> =
                    tx.query_row("SELECT thumb FROM attachments WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })?;
                let t = t.ok_or_else(|| StoreError::NotFound {
                    kind: "thumbnail of attachment",
                    id: id.into(),
                })?;
                let loc = ChunkLoc {
                    part: "thumb",
                    attachment_id: id,
                    index: 0,
                    count: 1,
                };
                Some(row.dk.open_chunk(loc, &t)?)
            }
            Rendition::File if media_type == MediaType::Dicom => Some(read_file(&tx, &row)?),
            Rendition::File => {
                // Streamed later chunk by chunk; a missing or extra chunk is refused now.
                check_count(&tx, id, row.chunk_count.unwrap_or(0))?;
                None
            }
            Rendition::Deidentified => {
                let mut all = Vec::new();
                read_content(&tx, &row, |c| {
                    all.extend_from_slice(&c);
                    Ok(())
                })?;
                Some(all)
            }
        };
        let what = match rendition {
            Rendition::File => "file",
            Rendition::Thumbnail => "thumbnail",
            Rendition::Deidentified => "deidentified",
        };
        let ev = audit_event(
            actor,
            "attachment.view",
            id,
            &row.territory,
            serde_json::json!({ "case": case_id, "rendition": what }),
        );
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(AttachmentOpen {
            chunk_count: row.chunk_count.unwrap_or(0),
            info: row.info(None),
            media_type,
            whole,
        })
    }

    /// One decrypted content chunk of a stored attachment (after [`Db::attachment_open`]
    /// audited the view). The last index also checks that no chunk was added or removed.
    pub fn attachment_chunk(&mut self, case_id: &str, id: &str, index: u32) -> Result<Vec<u8>> {
        // Only the count and the case key: the sealed metadata is not opened per chunk.
        let count: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT chunk_count FROM attachments WHERE id = ?1 AND case_id = ?2 AND state = 'stored'",
            )?
            .query_row(params![id, case_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "attachment",
                id: id.into(),
            })?;
        let count = count.unwrap_or(0) as u32;
        let (_, dk) = self.st.live_case(&self.conn, case_id)?;
        let body: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT body FROM attachment_chunks WHERE attachment_id = ?1 AND part = 'content' AND idx = ?2",
            )?
            .query_row(params![id, i64::from(index)], |r| r.get(0))
            .optional()?;
        let Some(body) = body else {
            check_count(&self.conn, id, count)?;
            return Err(StoreError::AttachmentTruncated {
                id: id.into(),
                found: u64::from(index),
                expected: u64::from(count),
            });
        };
        if index + 1 == count {
            check_count(&self.conn, id, count)?;
        }
        Ok(dk.open_chunk(content_loc(id, index, count), &body)?)
    }

    /// Drops uploads not finished within `older_than_ms` (the tablet gave up); audited
    /// `attachment.abandon`. Returns how many.
    pub fn drop_abandoned_uploads(&mut self, older_than_ms: i64, now: i64) -> Result<usize> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let stale: Vec<(String, String)> = tx
            .prepare("SELECT a.id, c.territory FROM attachments a JOIN cases c ON c.id = a.case_id WHERE a.state = 'uploading' AND a.created_at < ?1")?
            .query_map([now - older_than_ms], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, territory) in &stale {
            delete_attachment(&tx, id)?;
            let ev = audit_event(
                &Actor::system(),
                "attachment.abandon",
                id,
                territory,
                serde_json::json!({}),
            );
            audit::append(&tx, &self.st, &ev, now)?;
        }
        tx.commit()?;
        Ok(stale.len())
    }
}

/// The stored attachments of a case (for its bundle and handoff), oldest first.
pub(super) fn stored(
    st: &mut State,
    conn: &rusqlite::Connection,
    case_id: &str,
) -> Result<Vec<AttachmentInfo>> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM attachments WHERE case_id = ?1 AND state = 'stored' ORDER BY created_at, id",
        )?
        .query_map([case_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        out.push(st.attachment_row(conn, case_id, id)?.info(None));
    }
    Ok(out)
}

/// `pending` while some part of the attachment is not receipted, `receipted` after; `None`
/// before it was queued.
pub(super) fn sync_state(conn: &rusqlite::Connection, id: &str) -> Result<Option<String>> {
    let (n, done): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(state = 'receipted'), 0) FROM outbox WHERE attachment_id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match (n, done) {
        (0, _) => None,
        (n, d) if n == d => Some("receipted".into()),
        _ => Some("pending".into()),
    })
}

pub(super) fn delete_attachment(conn: &rusqlite::Connection, id: &str) -> Result<()> {
    conn.execute(
        "DELETE FROM attachment_chunks WHERE attachment_id = ?1",
        [id],
    )?;
    conn.execute("DELETE FROM attachments WHERE id = ?1", [id])?;
    Ok(())
}
