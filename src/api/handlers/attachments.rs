//! `/api/v1/cases/{id}/attachments`: resumable uploads of photos, ECG strips, signed forms and
//! ultrasound files, their listing, thumbnails and content (every view audited by the store).
//!
//! Upload protocol (a small tus-like subset): `POST …/attachments` announces kind, caption,
//! file name and size and answers the attachment with `received: 0`; the client then sends the
//! file in pieces with `PATCH …/attachments/{aid}/content`, header `Upload-Offset: N` (the bytes
//! stored so far) and the raw bytes as the body (`application/offset+octet-stream`, at most
//! `attachments.max_piece_kib`). Every piece is committed before the answer; after a dropped
//! link the client reads `GET …/attachments/{aid}` and continues at `received`. The piece that
//! completes the file answers the stored attachment (or why it was refused).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::api::error::{ApiError, ApiResult, Code};
use crate::api::guard::{Caller, in_territory};
use crate::api::state::ApiState;
use crate::api::wire::{Body, Json, check_id, created, ok};
use crate::events::LiveEvent;
use crate::model::{AttachmentInfo, AttachmentKind, MediaType};
use crate::storage::{NewAttachment, Rendition};

/// Longest caption and file name kept.
const MAX_TEXT: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentCreate {
    pub kind: String,
    pub caption: Option<String>,
    pub filename: Option<String>,
    /// Bytes of the whole file.
    pub size: u64,
}

fn check_attachment_id(id: &str) -> ApiResult<()> {
    if uuid::Uuid::parse_str(id).is_err() || id.len() != 36 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            Code::ValidationError,
            format!("attachment {id} not found"),
        ));
    }
    Ok(())
}

fn info_json(i: &AttachmentInfo, piece: usize) -> serde_json::Value {
    let mut v = serde_json::to_value(i).expect("json");
    v["piece_bytes"] = json!(piece);
    v
}

fn text(v: Option<String>, field: &str) -> ApiResult<Option<String>> {
    match v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
        Some(s) if s.len() > MAX_TEXT || s.chars().any(char::is_control) => Err(
            ApiError::validation(format!("{field} is at most {MAX_TEXT} bytes of text"))
                .details(json!({ "field": field })),
        ),
        other => Ok(other),
    }
}

/// `POST /api/v1/cases/{id}/attachments`: announces an upload.
pub async fn create_attachment(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    Body(b): Body<AttachmentCreate>,
) -> ApiResult<Response> {
    check_id(&id)?;
    let kind = AttachmentKind::parse(&b.kind).ok_or_else(|| {
        let names: Vec<&str> = AttachmentKind::ALL.iter().map(|k| k.as_str()).collect();
        ApiError::validation(format!("kind is one of {}", names.join(", ")))
            .details(json!({ "field": "kind" }))
    })?;
    let caption = text(b.caption, "caption")?;
    let filename = text(b.filename, "filename")?;
    in_territory(&st, &c, "case", &id).await?;
    let (a, limits, piece) = (
        c.actor.clone(),
        st.cfg.attachments.limits(),
        st.cfg.attachments.max_piece_bytes(),
    );
    let info = st
        .store
        .call(move |db| {
            db.attachment_begin(
                &a,
                &id,
                &NewAttachment {
                    kind,
                    caption: caption.as_deref(),
                    filename: filename.as_deref(),
                    size: b.size,
                },
                &limits,
            )
        })
        .await?;
    created(info_json(&info, piece))
}

/// `GET /api/v1/cases/{id}/attachments`: every attachment of the case (metadata).
pub async fn list_attachments(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    check_id(&id)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let list = st.store.call(move |db| db.attachments(&a, &id)).await?;
    ok(json!({ "attachments": list }))
}

/// `GET /api/v1/cases/{id}/attachments/{aid}`: one attachment (where an upload resumes).
pub async fn get_attachment(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, aid)): Path<(String, String)>,
) -> ApiResult<Json> {
    check_id(&id)?;
    check_attachment_id(&aid)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let piece = st.cfg.attachments.max_piece_bytes();
    let i = st
        .store
        .call(move |db| db.attachment_info(&a, &id, &aid))
        .await?;
    ok(info_json(&i, piece))
}

/// `PATCH /api/v1/cases/{id}/attachments/{aid}/content`: one piece at `Upload-Offset`.
pub async fn upload_piece(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, aid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json> {
    check_id(&id)?;
    check_attachment_id(&aid)?;
    let offset = headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::validation("send the bytes stored so far in the Upload-Offset header")
                .details(json!({ "field": "Upload-Offset" }))
        })?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/offset+octet-stream" && ct != "application/octet-stream" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::ValidationError,
            "upload pieces are sent as application/offset+octet-stream",
        ));
    }
    in_territory(&st, &c, "case", &id).await?;
    let (a, limits, piece) = (
        c.actor.clone(),
        st.cfg.attachments.limits(),
        st.cfg.attachments.max_piece_bytes(),
    );
    let case = id.clone();
    let started = std::time::Instant::now();
    let i = st
        .store
        .call(move |db| db.attachment_append(&a, &case, &aid, offset, &body, &limits))
        .await?;
    if i.state == crate::model::AttachmentState::Stored {
        tracing::info!(attachment = %i.id, case_id = %id, bytes = i.size, ms = started.elapsed().as_millis() as u64, "attachment stored");
        st.bus.send(LiveEvent::Case { case_id: id });
    }
    ok(info_json(&i, piece))
}

/// `GET …/attachments/{aid}/content`: the file (metadata stripped; DICOM re-joined with its
/// PHI), streamed chunk by chunk.
pub async fn content(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, aid)): Path<(String, String)>,
) -> ApiResult<Response> {
    serve(st, c, id, aid, Rendition::File).await
}

/// `GET …/attachments/{aid}/thumbnail`: a small JPEG of a photo.
pub async fn thumbnail(
    State(st): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path((id, aid)): Path<(String, String)>,
) -> ApiResult<Response> {
    serve(st, c, id, aid, Rendition::Thumbnail).await
}

async fn serve(
    st: ApiState,
    c: Caller,
    id: String,
    aid: String,
    rendition: Rendition,
) -> ApiResult<Response> {
    check_id(&id)?;
    check_attachment_id(&aid)?;
    in_territory(&st, &c, "case", &id).await?;
    let a = c.actor.clone();
    let (case, att) = (id.clone(), aid.clone());
    let open = st
        .store
        .call(move |db| db.attachment_open(&a, &case, &att, rendition))
        .await?;
    let media = match rendition {
        Rendition::Thumbnail => MediaType::Jpeg,
        Rendition::File | Rendition::Deidentified => open.media_type,
    };
    let mut r = match open.whole {
        Some(bytes) => bytes.into_response(),
        None => {
            // Chunk by chunk from the store: at most one chunk of the file in memory.
            let count = open.chunk_count;
            let store = st.store.clone();
            let stream = futures_util::stream::unfold(0u32, move |i| {
                let (store, case, att) = (store.clone(), id.clone(), aid.clone());
                async move {
                    if i >= count {
                        return None;
                    }
                    let r = store
                        .call(move |db| db.attachment_chunk(&case, &att, i))
                        .await
                        .map(Bytes::from)
                        .map_err(|e| {
                            tracing::error!(error = %crate::report::Chain(&e), "attachment content could not be read");
                            std::io::Error::other("attachment content could not be read")
                        });
                    Some((r, i + 1))
                }
            });
            axum::body::Body::from_stream(stream).into_response()
        }
    };
    let hs = r.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.as_str()),
    );
    if rendition != Rendition::Thumbnail {
        if let Ok(v) = HeaderValue::from_str(&open.info.size.to_string()) {
            hs.insert(header::CONTENT_LENGTH, v);
        }
        let name = format!(
            "inline; filename=\"{}-{}.{}\"",
            open.info.kind,
            &open.info.id[..8],
            media.extension()
        );
        if let Ok(v) = HeaderValue::from_str(&name) {
            hs.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    // Opened on its own, an image cannot run anything on the API's origin. (A PDF is left to
    // the browser's viewer, which a sandbox would block; it is served as application/pdf with
    // nosniff, so it is never treated as a page.)
    if media != MediaType::Pdf {
        hs.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self'"),
        );
    }
    Ok(r)
}
