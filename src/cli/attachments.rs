//! `cases attach` and `cases attachment-export`: attachments from the command line (a photo or
//! a 12-lead PDF copied off a monitor's USB stick), read and stored in pieces like the tablet's
//! uploads, and a stored file written out (audited as a view).

use std::io::Read;

use crate::config::Config;
use crate::model::{Actor, AttachmentKind};
use crate::storage::{NewAttachment, Rendition};

use super::{CmdResult, Failure, open_db};

fn usage(msg: String) -> Failure {
    Failure {
        code: 2,
        error: anyhow::anyhow!(msg),
    }
}

/// `cases attach CASE FILE --kind K [--caption C]`: stores FILE as an attachment of CASE.
pub fn cases_attach(
    cfg: &Config,
    case: &str,
    file: &std::path::Path,
    kind: &str,
    caption: Option<&str>,
) -> CmdResult {
    let kind = AttachmentKind::parse(kind).ok_or_else(|| {
        let names: Vec<&str> = AttachmentKind::ALL.iter().map(|k| k.as_str()).collect();
        usage(format!("--kind is one of {}", names.join(", ")))
    })?;
    let mut f = std::fs::File::open(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let filename = file.file_name().and_then(|n| n.to_str());
    let limits = cfg.attachments.limits();
    let mut db = open_db(cfg)?;
    let actor = Actor::cli();
    let new = NewAttachment {
        kind,
        caption,
        filename,
        size,
    };
    let mut info = db.attachment_begin(&actor, case, &new, &limits)?;
    let mut buf = vec![0u8; cfg.attachments.max_piece_bytes()];
    let mut offset = 0u64;
    while offset < size {
        let n = f.read(&mut buf).map_err(|e| Failure {
            code: 1,
            error: anyhow::anyhow!("{}: {e}", file.display()),
        })?;
        if n == 0 {
            return Err(Failure {
                code: 1,
                error: anyhow::anyhow!("{} shrank while it was read", file.display()),
            });
        }
        info = db.attachment_append(&actor, case, &info.id, offset, &buf[..n], &limits)?;
        offset += n as u64;
    }
    println!(
        "attachment {} stored: {} {} bytes sha256 {}{}",
        info.id,
        info.media_type.map_or("?", |m| m.as_str()),
        info.size,
        info.sha256.as_deref().unwrap_or("?"),
        if info.stripped.is_empty() {
            String::new()
        } else {
            format!(" (removed: {})", info.stripped.join(", "))
        }
    );
    Ok(0)
}

/// `cases attachment-export CASE ATTACHMENT --out F [--deidentified]`: writes a stored file
/// (a DICOM object re-joined with its PHI, or only its de-identified part).
pub fn cases_attachment_export(
    cfg: &Config,
    case: &str,
    attachment: &str,
    out: &std::path::Path,
    deidentified: bool,
) -> CmdResult {
    let mut db = open_db(cfg)?;
    let rendition = if deidentified {
        Rendition::Deidentified
    } else {
        Rendition::File
    };
    let open = db.attachment_open(&Actor::cli(), case, attachment, rendition)?;
    let bytes = match open.whole {
        Some(b) => b,
        None => {
            let mut all = Vec::with_capacity(open.info.size as usize);
            for i in 0..open.chunk_count {
                all.extend_from_slice(&db.attachment_chunk(case, attachment, i)?);
            }
            all
        }
    };
    super::records::write_out(Some(out), &bytes)?;
    Ok(0)
}
