//! Uploads: an attachment is announced (`attachment_begin`: kind, caption, file name, size),
//! then arrives in pieces at increasing offsets (`attachment_append`), each sealed and
//! committed before it is acknowledged, so a dropped link resumes at `received`. The piece that
//! completes the file stores it in the same transaction: the type is recognised from the bytes,
//! the file checked whole, photo metadata stripped (streaming, twice: once to learn the size,
//! hash and facts, once to seal), a DICOM object split into its de-identified part (content)
//! and its PHI part (a sealed column), a thumbnail made; then the upload pieces are dropped.
//! Content that is refused takes the attachment with it in that transaction: nothing
//! half-stored remains.

use rusqlite::{Transaction, TransactionBehavior, params};

use super::attachments::{
    CHUNK_BYTES, Meta, Row, audit_event, content_loc, delete_attachment, meta_loc, new_id,
    upload_loc,
};
use super::record::open_case_only;
use super::{Db, Result, State, StoreError, audit};
use crate::crypto::Sha256;
use crate::crypto::chunk::ChunkLoc;
use crate::crypto::field::FieldLoc;
use crate::media::{self, Filter, MediaError, SNIFF_BYTES, Sanitised};
use crate::model::{
    Actor, AttachmentInfo, AttachmentKind, AttachmentLimits, AttachmentState, AuditEvent,
    MediaType, Outcome, now_ms,
};

/// Photos up to this size get a thumbnail (the decoder reads the file from memory).
const THUMB_SOURCE_MAX: u64 = 16 << 20;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Calls `each` with every upload piece of `row`, decrypted, in order.
fn pieces(
    conn: &rusqlite::Connection,
    row: &Row,
    mut each: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    for i in 0..row.pieces {
        each(&piece(conn, row, i)?)?;
    }
    Ok(())
}

/// Upload piece `i` of `row`, decrypted.
fn piece(conn: &rusqlite::Connection, row: &Row, i: u32) -> Result<Vec<u8>> {
    let body: Vec<u8> = conn
        .prepare_cached(
            "SELECT body FROM attachment_chunks WHERE attachment_id = ?1 AND part = 'upload' AND idx = ?2",
        )?
        .query_row(params![row.id, i64::from(i)], |r| r.get(0))?;
    Ok(row.dk.open_chunk(upload_loc(&row.id, i), &body)?)
}

/// The first [`SNIFF_BYTES`] of the upload (fewer for a shorter file), reading only the
/// pieces that hold them.
fn head(conn: &rusqlite::Connection, row: &Row) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    for i in 0..row.pieces {
        if head.len() >= SNIFF_BYTES {
            break;
        }
        let p = piece(conn, row, i)?;
        head.extend_from_slice(&p[..p.len().min(SNIFF_BYTES - head.len())]);
    }
    Ok(head)
}

/// Seals `data` into content chunks `first..` of `count` (`data` holds whole chunks but for the
/// last one).
struct Sealer<'a> {
    conn: &'a rusqlite::Connection,
    row: &'a Row,
    count: u32,
    next: u32,
    buf: Vec<u8>,
}

impl Sealer<'_> {
    fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let take = (CHUNK_BYTES - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK_BYTES {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.next >= self.count {
            return Err(StoreError::Undecodable {
                what: format!(
                    "the sanitised size of attachment {} (changed between passes)",
                    self.row.id
                ),
            });
        }
        let sealed = self
            .row
            .dk
            .seal_chunk(content_loc(&self.row.id, self.next, self.count), &self.buf)?;
        self.conn
            .prepare_cached("INSERT INTO attachment_chunks (attachment_id, part, idx, body) VALUES (?1, 'content', ?2, ?3)")?
            .execute(params![self.row.id, i64::from(self.next), sealed])?;
        self.next += 1;
        self.buf.clear();
        Ok(())
    }
}

fn chunks_for(size: u64) -> u32 {
    size.div_ceil(CHUNK_BYTES as u64) as u32
}

/// Stores a completed upload (inside the caller's transaction). Returns the audit details.
pub(super) fn store(
    tx: &rusqlite::Transaction<'_>,
    st: &mut State,
    row: &Row,
    limits: &AttachmentLimits,
) -> Result<serde_json::Value> {
    // Recognise the type from the first bytes.
    let head = head(tx, row)?;
    let media = media::sniff(&head, row.received <= SNIFF_BYTES as u64)?;
    media::check_kind(row.kind, media)?;
    let (size, sha, facts, phi, thumb_src, removed) = if media == MediaType::Dicom {
        if row.received > limits.max_dicom_bytes {
            return Err(StoreError::AttachmentTooLarge {
                what: format!(
                    "DICOM objects are limited to {} MiB",
                    limits.max_dicom_bytes >> 20
                ),
            });
        }
        let mut all = Vec::with_capacity(row.received as usize);
        pieces(tx, row, |p| {
            all.extend_from_slice(p);
            Ok(())
        })?;
        let split = media::dicom::split(&all)?;
        let joined = media::dicom::join(&split.deidentified, &split.phi)?;
        let sha = crate::crypto::sha256(&joined);
        let count = chunks_for(split.deidentified.len() as u64);
        let mut s = Sealer {
            conn: tx,
            row,
            count,
            next: 0,
            buf: Vec::new(),
        };
        s.push(&split.deidentified)?;
        s.flush()?;
        let facts = Sanitised {
            stripped: vec![format!("dicom-phi:{}", split.removed)],
            ..Sanitised::default()
        };
        let n = split.deidentified.len() as u64;
        (
            n,
            sha,
            facts,
            Some((split.phi, joined.len() as u64)),
            None,
            split.removed,
        )
    } else {
        // Pass 1: size, digest and facts of the sanitised stream (kept for a thumbnail when
        // small). Pass 2: the same filter again, sealed.
        let keep = media.is_image() && row.received <= THUMB_SOURCE_MAX;
        let mut f = Filter::new(media);
        let (mut size, mut sha, mut kept, mut out) = (0u64, Sha256::new(), Vec::new(), Vec::new());
        let mut absorb = |out: &mut Vec<u8>| {
            size += out.len() as u64;
            sha.update(out);
            if keep {
                kept.extend_from_slice(out);
            }
            out.clear();
        };
        pieces(tx, row, |p| {
            f.push(p, &mut out)?;
            absorb(&mut out);
            Ok(())
        })?;
        let facts = f.finish(&mut out)?;
        absorb(&mut out);
        let sha = sha.finish();
        let count = chunks_for(size);
        let mut s = Sealer {
            conn: tx,
            row,
            count,
            next: 0,
            buf: Vec::with_capacity(CHUNK_BYTES),
        };
        let mut f = Filter::new(media);
        pieces(tx, row, |p| {
            out.clear();
            f.push(p, &mut out)?;
            s.push(&out)
        })?;
        out.clear();
        f.finish(&mut out)?;
        s.push(&out)?;
        s.flush()?;
        if s.next != count {
            return Err(StoreError::Undecodable {
                what: format!(
                    "the sanitised size of attachment {} (changed between passes)",
                    row.id
                ),
            });
        }
        (size, sha, facts, None, keep.then_some(kept), 0)
    };
    st.count_invocations(tx, row.dk.id(), u64::from(chunks_for(size)) + 3)?;
    let file_size = phi.as_ref().map_or(size, |(_, n)| *n);
    let mut meta = row.meta.clone();
    meta.sha256 = Some(hex(&sha));
    meta.stripped = facts.stripped.clone();
    meta.orientation = facts.orientation;
    meta.width = facts.width;
    meta.height = facts.height;
    meta.file_size = Some(file_size);
    let sealed_meta = row
        .dk
        .seal(meta_loc(&row.id), &serde_json::to_vec(&meta).expect("json"))?;
    let sealed_phi = match &phi {
        Some((p, _)) => {
            let loc = FieldLoc {
                table: "attachments",
                column: "phi",
                row_id: &row.id,
            };
            Some(row.dk.seal(loc, p)?)
        }
        None => None,
    };
    let thumb = match thumb_src.map(|src| media::thumb::thumbnail(media, &src)) {
        Some(Ok(t)) => {
            let loc = ChunkLoc {
                part: "thumb",
                attachment_id: &row.id,
                index: 0,
                count: 1,
            };
            Some(row.dk.seal_chunk(loc, &t)?)
        }
        Some(Err(why)) => {
            tracing::warn!(attachment = %row.id, %why, "no thumbnail for this photo");
            None
        }
        None => None,
    };
    tx.execute(
        "DELETE FROM attachment_chunks WHERE attachment_id = ?1 AND part = 'upload'",
        [&row.id],
    )?;
    tx.execute(
        "UPDATE attachments SET state = 'stored', media_type = ?1, size = ?2, chunk_count = ?3, meta = ?4, \
         phi = ?5, thumb = ?6, stored_at = ?7 WHERE id = ?8",
        params![media.as_str(), size as i64, i64::from(chunks_for(size)), sealed_meta, sealed_phi, thumb, now_ms(), row.id],
    )?;
    Ok(serde_json::json!({
        "case": row.case_id, "kind": row.kind.as_str(), "media_type": media.as_str(),
        "bytes": file_size, "stripped": facts.stripped, "dicom_phi_attributes": removed,
    }))
}

/// What the client announces before the bytes.
#[derive(Debug, Clone)]
pub struct NewAttachment<'a> {
    pub kind: AttachmentKind,
    pub caption: Option<&'a str>,
    pub filename: Option<&'a str>,
    pub size: u64,
}

/// Removes refused content with its attachment, audits `attachment.refuse` with the reason,
/// commits, and returns the error.
fn refuse<T>(
    tx: Transaction<'_>,
    st: &mut State,
    actor: &Actor,
    row: &Row,
    e: MediaError,
) -> Result<T> {
    delete_attachment(&tx, &row.id)?;
    let ev = AuditEvent::new(
        actor,
        "attachment.refuse",
        format!("attachment/{}", row.id),
        Outcome::Failure,
    )
    .territory(&row.territory)
    .details(serde_json::json!({ "case": row.case_id, "reason": e.code() }));
    audit::append(&tx, st, &ev, now_ms())?;
    tx.commit()?;
    Err(e.into())
}

impl Db {
    /// Announces an upload: checks the case is open and the limits, stores the sealed caption
    /// and file name. Audited `attachment.create`.
    pub fn attachment_begin(
        &mut self,
        actor: &Actor,
        case_id: &str,
        new: &NewAttachment<'_>,
        limits: &AttachmentLimits,
    ) -> Result<AttachmentInfo> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (territory, dk) = self.st.live_case(&tx, case_id)?;
        open_case_only(&tx, case_id)?;
        if new.size == 0 {
            return Err(MediaError::Empty.into());
        }
        if new.size > limits.max_file_bytes {
            return Err(StoreError::AttachmentTooLarge {
                what: format!(
                    "the file has {} bytes; the limit is {} MiB per file",
                    new.size,
                    limits.max_file_bytes >> 20
                ),
            });
        }
        let (files, bytes): (i64, i64) = tx.query_row(
            "SELECT count(*), coalesce(sum(coalesce(size, declared_size)), 0) FROM attachments WHERE case_id = ?1",
            [case_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if files as u64 >= u64::from(limits.max_case_files) {
            return Err(StoreError::AttachmentTooLarge {
                what: format!("the case has {files} attachments, the most one case may hold"),
            });
        }
        if bytes as u64 + new.size > limits.max_case_bytes {
            return Err(StoreError::AttachmentTooLarge {
                what: format!(
                    "the case's attachments would exceed {} MiB",
                    limits.max_case_bytes >> 20
                ),
            });
        }
        let id = new_id()?;
        let meta = Meta {
            caption: new.caption.map(str::to_string),
            filename: new.filename.map(str::to_string),
            ..Meta::default()
        };
        let sealed = dk.seal(meta_loc(&id), &serde_json::to_vec(&meta).expect("json"))?;
        self.st.count_invocations(&tx, dk.id(), 1)?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO attachments (id, case_id, kind, state, declared_size, chunk_size, meta, created_by, created_at) \
             VALUES (?1, ?2, ?3, 'uploading', ?4, ?5, ?6, ?7, ?8)",
            params![id, case_id, new.kind.as_str(), new.size as i64, CHUNK_BYTES as i64, sealed, actor.id, now],
        )?;
        let ev = audit_event(
            actor,
            "attachment.create",
            &id,
            &territory,
            serde_json::json!({
            "case": case_id, "kind": new.kind.as_str(), "bytes": new.size }),
        );
        audit::append(&tx, &self.st, &ev, now)?;
        let row = self.st.attachment_row(&tx, case_id, &id)?;
        tx.commit()?;
        Ok(row.info(None))
    }

    /// Appends one piece at `offset` (which must equal the bytes received so far). The piece
    /// that completes the file stores it (see the module doc); refused content removes the
    /// attachment and returns the media error, after that removal committed.
    pub fn attachment_append(
        &mut self,
        actor: &Actor,
        case_id: &str,
        id: &str,
        offset: u64,
        piece: &[u8],
        limits: &AttachmentLimits,
    ) -> Result<AttachmentInfo> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut row = self.st.attachment_row(&tx, case_id, id)?;
        if row.state != AttachmentState::Uploading {
            return Err(StoreError::AttachmentState {
                id: id.into(),
                state: "stored already",
            });
        }
        open_case_only(&tx, case_id)?;
        if offset != row.received {
            return Err(StoreError::UploadOffset {
                expected: row.received,
                got: offset,
            });
        }
        let received = row.received + piece.len() as u64;
        if received > row.declared {
            return Err(StoreError::AttachmentTooLarge {
                what: format!("the upload announced {} bytes and sent more", row.declared),
            });
        }
        if offset == 0
            && !piece.is_empty()
            && (piece.len() >= SNIFF_BYTES || received == row.declared)
        {
            // Refuse a wrong type before storing any of it.
            let verdict = media::sniff(
                &piece[..piece.len().min(SNIFF_BYTES)],
                received == row.declared,
            )
            .and_then(|m| media::check_kind(row.kind, m).map(|_| m));
            if let Err(e) = verdict {
                return refuse(tx, &mut self.st, actor, &row, e);
            }
        }
        if !piece.is_empty() {
            let sealed = row.dk.seal_chunk(upload_loc(id, row.pieces), piece)?;
            self.st.count_invocations(&tx, row.dk.id(), 1)?;
            tx.execute(
                "INSERT INTO attachment_chunks (attachment_id, part, idx, body) VALUES (?1, 'upload', ?2, ?3)",
                params![id, i64::from(row.pieces), sealed],
            )?;
            tx.execute(
                "UPDATE attachments SET received = ?1, pieces = pieces + 1 WHERE id = ?2",
                params![received as i64, id],
            )?;
        }
        row.received = received;
        row.pieces += u32::from(!piece.is_empty());
        if received < row.declared {
            tx.commit()?;
            return Ok(row.info(None));
        }
        match store(&tx, &mut self.st, &row, limits) {
            Ok(details) => {
                let ev = audit_event(actor, "attachment.store", id, &row.territory, details);
                audit::append(&tx, &self.st, &ev, now_ms())?;
                let row = self.st.attachment_row(&tx, case_id, id)?;
                tx.commit()?;
                Ok(row.info(Some("pending".into())))
            }
            Err(StoreError::Media(e)) => refuse(tx, &mut self.st, actor, &row, e),
            Err(e) => Err(e),
        }
    }
}
