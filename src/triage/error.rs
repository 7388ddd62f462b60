//! Why the model is unavailable, refused or failed; the daemon then runs rules-only (or keeps
//! the model it has).

use std::path::PathBuf;

/// Why the model is unavailable or an inference failed. The daemon then runs rules-only.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime library could not be loaded. Recovery: install it or fix
    /// `triage.onnxruntime_library`.
    #[error("cannot load ONNX Runtime from {path}: {reason}")]
    Library { path: PathBuf, reason: String },
    /// No library path is configured.
    #[error("triage.onnxruntime_library is not set; running rules-only")]
    NoLibrary,
    /// The manifest is missing or malformed.
    #[error("model manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    /// No model-signing key is pinned, so no model can be trusted.
    #[error(
        "triage.model_signing_keys is empty: no model can be trusted; pin the model-signing public key"
    )]
    NoTrustedKeys,
    /// A pinned key in the configuration is not a P-256 public key.
    #[error("triage.model_signing_keys[{index}] is not a P-256 public key (PEM or base64 SPKI)")]
    BadTrustedKey { index: usize },
    /// The manifest has no signature file beside it.
    #[error("model {dir} is not signed (no manifest.sig); refusing it")]
    Unsigned { dir: PathBuf },
    /// The manifest was signed by a key the appliance does not pin.
    #[error(
        "model {dir} is signed by key {key_id}, which is not pinned in triage.model_signing_keys (pinned: {pinned}); refusing it"
    )]
    UntrustedKey {
        dir: PathBuf,
        key_id: String,
        pinned: String,
    },
    /// The signature does not verify: the manifest changed after signing, or the signature file
    /// is damaged.
    #[error("model {dir}: {reason}; refusing it")]
    BadSignature { dir: PathBuf, reason: String },
    /// Installing, switching or pruning models failed.
    #[error("model store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    /// An artifact's bytes do not match the manifest: tampered or corrupted. Recovery: reinstall.
    #[error(
        "model file {file} does not match its manifest (SHA-256 {found}, expected {expected}); refusing to load it"
    )]
    Tampered {
        file: PathBuf,
        expected: String,
        found: String,
    },
    #[error("cannot read model file {file}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime rejected the model or the session options.
    #[error("ONNX Runtime cannot create a session for {model_id}: {reason}")]
    Session { model_id: String, reason: String },
    /// A run failed (wrong input shape, missing output, …).
    #[error("inference failed: {0}")]
    Inference(String),
}
