//! Queuing a stored attachment for the cloud: its file (a DICOM object re-joined with its PHI)
//! cut into parts of at most `ATTACHMENT_PART_BYTES`, each sealed as its own envelope and
//! receipted on its own, in one transaction.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::attachments::{read_content, read_file};
use super::outbox::{OutboxSlot, insert_row, next_slot, outbox_priority};
use super::{Db, Result, State, StoreError, audit};
use crate::crypto::seal::{ATTACHMENT_PART_BYTES, BundleKind};
use crate::crypto::sign::SigningKey;
use crate::model::{Actor, AttachmentState, AuditEvent, MediaType, Outcome, now_ms};

/// What a sealed attachment part carries (the sync layer builds the envelope from it).
#[derive(Debug)]
pub struct AttachmentPart<'a> {
    pub attachment_id: &'a str,
    pub case_id: &'a str,
    pub kind: &'static str,
    pub media_type: &'static str,
    pub caption: Option<&'a str>,
    pub filename: Option<&'a str>,
    pub sha256: &'a str,
    pub created_at_ms: i64,
    pub created_by: &'a str,
    pub stripped: &'a [String],
    pub orientation: Option<u8>,
    /// Bytes of the whole file.
    pub size: u64,
    pub part: u32,
    pub parts: u32,
    pub offset: u64,
    pub data: &'a [u8],
}

impl Db {
    /// Stored attachments of live cases with no envelope queued yet, oldest first.
    pub fn attachment_seal_work(&self, limit: usize) -> Result<Vec<(String, String)>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT a.case_id, a.id FROM attachments a JOIN cases c ON c.id = a.case_id \
                 WHERE a.state = 'stored' AND c.erased_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.attachment_id = a.id) \
                 ORDER BY a.stored_at LIMIT ?1",
            )?
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    /// Seals every part of a stored attachment (at most [`ATTACHMENT_PART_BYTES`] of the file
    /// each) with `seal` and queues them, in one transaction; audited `attachment.export` and
    /// per envelope `bundle.create`/`bundle.queue`. Returns the bundle ids.
    pub fn enqueue_attachment<F>(
        &mut self,
        case_id: &str,
        id: &str,
        mut seal: F,
    ) -> Result<Vec<String>>
    where
        F: FnMut(&AttachmentPart<'_>, &OutboxSlot, &SigningKey) -> Result<Vec<u8>, String>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let queued: Option<String> = tx
            .query_row(
                "SELECT bundle_id FROM outbox WHERE attachment_id = ?1 LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        if queued.is_some() {
            return Ok(Vec::new());
        }
        let row = self.st.attachment_row(&tx, case_id, id)?;
        if row.state != AttachmentState::Stored {
            return Err(StoreError::AttachmentState {
                id: id.into(),
                state: "still uploading",
            });
        }
        let media = row.media.ok_or_else(|| StoreError::Undecodable {
            what: format!("the media type of attachment {id}"),
        })?;
        let file_size = row.meta.file_size.unwrap_or(0);
        let parts = (file_size.div_ceil(ATTACHMENT_PART_BYTES as u64)).max(1) as u32;
        let sha = row.meta.sha256.clone().unwrap_or_default();
        let mut ids = Vec::with_capacity(parts as usize);
        let mut emit = |tx: &rusqlite::Transaction<'_>,
                        st: &State,
                        part: u32,
                        offset: u64,
                        data: &[u8]|
         -> Result<()> {
            let p = AttachmentPart {
                attachment_id: id,
                case_id,
                kind: row.kind.as_str(),
                media_type: media.as_str(),
                caption: row.meta.caption.as_deref(),
                filename: row.meta.filename.as_deref(),
                sha256: &sha,
                created_at_ms: row.created_at,
                created_by: &row.created_by,
                stripped: &row.meta.stripped,
                orientation: row.meta.orientation,
                size: file_size,
                part,
                parts,
                offset,
                data,
            };
            let slot = next_slot(tx, BundleKind::Attachment)?;
            let env = seal(&p, &slot, &st.keys.signing).map_err(|why| StoreError::Seal {
                kind: "attachment",
                why,
            })?;
            let bid = slot.bundle_id.to_string();
            insert_row(tx, &slot, Some(case_id), &env)?;
            tx.execute(
                "UPDATE outbox SET attachment_id = ?1, part = ?2 WHERE bundle_id = ?3",
                params![id, i64::from(part), bid],
            )?;
            let now = now_ms();
            for (action, details) in [
                (
                    "bundle.create",
                    serde_json::json!({ "case": case_id, "kind": "attachment", "attachment": id, "part": part, "parts": parts }),
                ),
                (
                    "bundle.seal",
                    serde_json::json!({ "bytes": env.len(), "seq": slot.seq }),
                ),
                (
                    "bundle.queue",
                    serde_json::json!({ "priority": outbox_priority(BundleKind::Attachment) }),
                ),
            ] {
                let ev = AuditEvent::new(
                    &Actor::system(),
                    action,
                    format!("bundle/{bid}"),
                    Outcome::Success,
                )
                .territory(&row.territory)
                .details(details);
                audit::append(tx, st, &ev, now)?;
            }
            ids.push(bid);
            Ok(())
        };
        if media == MediaType::Dicom {
            let file = read_file(&tx, &row)?;
            for (i, data) in file.chunks(ATTACHMENT_PART_BYTES).enumerate() {
                emit(
                    &tx,
                    &self.st,
                    i as u32,
                    (i * ATTACHMENT_PART_BYTES) as u64,
                    data,
                )?;
            }
        } else {
            let (mut buf, mut part, mut offset) =
                (Vec::with_capacity(ATTACHMENT_PART_BYTES), 0u32, 0u64);
            read_content(&tx, &row, |c| {
                let mut c = &c[..];
                while !c.is_empty() {
                    let take = (ATTACHMENT_PART_BYTES - buf.len()).min(c.len());
                    buf.extend_from_slice(&c[..take]);
                    c = &c[take..];
                    if buf.len() == ATTACHMENT_PART_BYTES {
                        emit(&tx, &self.st, part, offset, &buf)?;
                        offset += buf.len() as u64;
                        part += 1;
                        buf.clear();
                    }
                }
                Ok(())
            })?;
            if !buf.is_empty() || part == 0 {
                emit(&tx, &self.st, part, offset, &buf)?;
            }
        }
        let ev = AuditEvent::new(
            &Actor::system(),
            "attachment.export",
            format!("attachment/{id}"),
            Outcome::Success,
        )
        .territory(&row.territory)
        .details(serde_json::json!({ "case": case_id, "parts": parts, "bytes": file_size }));
        audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(ids)
    }
}
