//! The API's error format (SYSTEM.md §3):
//! `{"status":"error","error":{"code":"…","message":"…","details":{…}}}`.
//! Internal detail goes to the log, never to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::storage::StoreError;

/// Every error code the API returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    PatientNotFound,
    CaseNotFound,
    InvalidPhi,
    ValidationError,
    TerritoryMismatch,
    EncryptionError,
    Unauthorized,
    Forbidden,
    RateLimited,
    PayloadTooLarge,
    Busy,
    /// The request body did not arrive within `api.body_timeout_secs`.
    RequestTimeout,
    /// `If-Match` named an older version than the current one (HTTP 412).
    Stale,
    /// A write that must say which version it edits sent no `If-Match` (HTTP 428).
    PreconditionRequired,
    /// The appliance's disk is full: nothing of the request was stored (HTTP 507).
    DiskFull,
    Internal,
}

impl Code {
    pub const ALL: [Code; 16] = [
        Code::PatientNotFound,
        Code::CaseNotFound,
        Code::InvalidPhi,
        Code::ValidationError,
        Code::TerritoryMismatch,
        Code::EncryptionError,
        Code::Unauthorized,
        Code::Forbidden,
        Code::RateLimited,
        Code::PayloadTooLarge,
        Code::Busy,
        Code::RequestTimeout,
        Code::Stale,
        Code::PreconditionRequired,
        Code::DiskFull,
        Code::Internal,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Code::PatientNotFound => "PATIENT_NOT_FOUND",
            Code::CaseNotFound => "CASE_NOT_FOUND",
            Code::InvalidPhi => "INVALID_PHI",
            Code::ValidationError => "VALIDATION_ERROR",
            Code::TerritoryMismatch => "TERRITORY_MISMATCH",
            Code::EncryptionError => "ENCRYPTION_ERROR",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Forbidden => "FORBIDDEN",
            Code::RateLimited => "RATE_LIMITED",
            Code::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Code::Busy => "BUSY",
            Code::RequestTimeout => "REQUEST_TIMEOUT",
            Code::Stale => "STALE",
            Code::PreconditionRequired => "PRECONDITION_REQUIRED",
            Code::DiskFull => "DISK_FULL",
            Code::Internal => "INTERNAL",
        }
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub details: Value,
    /// Seconds for `Retry-After` (RATE_LIMITED, BUSY).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }
    pub fn details(mut self, d: Value) -> Self {
        self.details = d;
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            Code::ValidationError,
            message,
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::ValidationError, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, Code::Forbidden, message)
    }
    pub fn territory() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            Code::TerritoryMismatch,
            "the resource or Territory-Id does not match your territory",
        )
    }
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, Code::Busy, message).retry_after(1)
    }
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            "internal error; see the appliance log",
        )
    }
    pub fn not_found(kind: &str, id: &str) -> Self {
        let code = if kind == "patient" {
            Code::PatientNotFound
        } else {
            Code::CaseNotFound
        };
        Self::new(
            StatusCode::NOT_FOUND,
            code,
            format!("{kind} {id} not found"),
        )
        .details(json!({ "id": id }))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { kind, id } | StoreError::Erased { kind, id }
                if *kind == "patient" || *kind == "case" =>
            {
                ApiError::not_found(kind, id)
            }
            StoreError::NotFound { kind, id } => ApiError::new(
                StatusCode::NOT_FOUND,
                Code::ValidationError,
                format!("{kind} {id} not found"),
            )
            .details(json!({ "kind": kind, "id": id })),
            StoreError::InvalidPhi(p) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                Code::InvalidPhi,
                p.to_string(),
            )
            .details(json!({ "field": p.field })),
            StoreError::AlreadyExists { .. }
            | StoreError::CaseClosed { .. }
            | StoreError::NotBound { .. }
            | StoreError::AlreadyBound { .. }
            | StoreError::RecordFinal { .. }
            | StoreError::OwnReview
            | StoreError::GrantNotNeeded { .. }
            | StoreError::AlreadyReviewed { .. }
            | StoreError::KeyInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, Code::ValidationError, e.to_string())
            }
            StoreError::Media(m) => {
                let status = match m {
                    crate::media::MediaError::Unsupported { .. }
                    | crate::media::MediaError::DicomNoPreamble => {
                        StatusCode::UNSUPPORTED_MEDIA_TYPE
                    }
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, Code::ValidationError, m.to_string())
                    .details(json!({ "reason": m.code() }))
            }
            StoreError::AttachmentTooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                e.to_string(),
            ),
            StoreError::UploadOffset { expected, .. } => {
                ApiError::new(StatusCode::CONFLICT, Code::ValidationError, e.to_string())
                    .details(json!({ "received": expected }))
            }
            StoreError::AttachmentState { .. } => {
                ApiError::new(StatusCode::CONFLICT, Code::ValidationError, e.to_string())
            }
            StoreError::InvalidRecord(f) => {
                ApiError::validation(f.to_string()).details(json!({ "field": f.field }))
            }
            StoreError::Stale { current, .. } => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, Code::Stale, e.to_string())
                    .details(json!({ "current_version": current }))
            }
            StoreError::InvalidId { .. }
            | StoreError::EmptySearch
            | StoreError::UnknownTerritory { .. } => ApiError::validation(e.to_string()),
            StoreError::TerritoryMismatch { .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                Code::TerritoryMismatch,
                e.to_string(),
            ),
            StoreError::Crypto(_)
            | StoreError::AttachmentTruncated { .. }
            | StoreError::KeyVersionMissing { .. }
            | StoreError::NoTerritoryKey { .. } => {
                tracing::error!(error = %crate::report::Chain(&e), "encryption error serving an API request");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Code::EncryptionError,
                    "a record could not be decrypted or encrypted; see the appliance log",
                )
            }
            StoreError::Closed => ApiError::busy("the store is shutting down"),
            _ if e.is_disk_full() => {
                tracing::error!(error = %crate::report::Chain(&e), "ALARM the appliance's disk is full: a request was refused, nothing of it stored");
                ApiError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    Code::DiskFull,
                    "the appliance's disk is full: nothing of this request was stored; what was stored before is intact (retry once an administrator has made room)",
                )
            }
            _ if e.is_busy() => ApiError::busy("the store is busy"),
            _ => {
                tracing::error!(error = %crate::report::Chain(&e), "store error serving an API request");
                ApiError::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "status": "error",
            "error": { "code": self.code.as_str(), "message": self.message, "details": self.details }
        });
        let mut r = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
