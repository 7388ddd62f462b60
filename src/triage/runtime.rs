//! The HEMA3N-Core inference runtime: the only module that imports `ort`.
//!
//! ONNX Runtime is loaded at run time from the configured library (`ort::init_from`), so a
//! missing library is an error, never a panic. The manifest's signature is checked against the
//! pinned model-signing keys and the artifact against the manifest's SHA-256, and the artifact is
//! loaded from the verified bytes (no window between check and load; see [`super::package`]).
//! Execution providers are tried in order TensorRT (INT8, engine cache keyed by the model hash
//! and the GPU/TensorRT identity) → CUDA → CPU; every fallback is logged and reported.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::value::TensorRef;

use super::features::{N_VITALS, TEXT_BUCKETS};

pub use super::error::ModelError;

/// Which execution provider a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// Raw outputs of one inference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelOutput {
    pub esi_logits: [f32; 5],
    pub specialty_logits: [f32; 9],
    pub confidence: f32,
}

/// What `check` and health report about the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The package directory it was loaded from.
    pub dir: PathBuf,
    /// Shared (`Arc`): every triage outcome names the model that proposed it.
    pub model_id: std::sync::Arc<str>,
    pub variant: String,
    pub sha256: std::sync::Arc<str>,
    pub provider: Provider,
    /// One line per provider that was tried and not used, with the reason.
    pub fallbacks: Vec<String>,
}

static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(lib: &Path) -> Result<&'static ort::environment::Environment, ModelError> {
    let env = ENV.get_or_init(|| {
        if !lib.is_file() {
            return Err(format!("{} does not exist", lib.display()));
        }
        let builder = ort::init_from(lib).map_err(|e| e.to_string())?;
        builder
            .with_name("hema3n-edge")
            .build()
            .map_err(|e| e.to_string())
    });
    env.as_ref().map_err(|reason| ModelError::Library {
        path: lib.to_path_buf(),
        reason: reason.clone(),
    })
}

/// Options for loading the model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub library: Option<PathBuf>,
    pub model_dir: PathBuf,
    /// `int8` or `fp32`; `None` = the manifest's default.
    pub variant: Option<String>,
    /// Pinned model-signing public keys (`triage.model_signing_keys`).
    pub trusted_keys: Vec<String>,
    /// Provider names in preference order (`tensorrt`, `cuda`, `cpu`).
    pub providers: Vec<String>,
    /// Where TensorRT engines are cached.
    pub engine_cache_dir: PathBuf,
    pub intra_threads: usize,
}

/// One loaded model session, owned by one thread.
pub struct ModelRuntime {
    session: Session,
    pub info: RuntimeInfo,
}

impl std::fmt::Debug for ModelRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRuntime")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// An identity of the GPU and TensorRT stack (Jetson model + L4T release), so a cached engine
/// is never reused on different hardware or after a BSP update.
fn gpu_identity() -> String {
    let model = std::fs::read("/proc/device-tree/model").unwrap_or_default();
    let release = std::fs::read("/etc/nv_tegra_release").unwrap_or_default();
    let mut v = model;
    v.extend_from_slice(&release);
    hex::encode(&crate::crypto::sha256(&v)[..6])
}

#[cfg(feature = "tensorrt")]
fn register_tensorrt(
    b: &mut ort::session::builder::SessionBuilder,
    cache: &Path,
    int8: bool,
) -> ort::Result<()> {
    ort::ep::TensorRT::default()
        .with_int8(int8)
        .with_engine_cache(true)
        .with_engine_cache_path(cache.display())
        .build()
        .error_on_failure()
        .register(b)
}

#[cfg(not(feature = "tensorrt"))]
fn register_tensorrt(
    _: &mut ort::session::builder::SessionBuilder,
    _: &Path,
    _: bool,
) -> ort::Result<()> {
    unreachable!("TensorRT is only attempted in builds with the `tensorrt` feature")
}

#[cfg(feature = "cuda")]
fn register_cuda(b: &mut ort::session::builder::SessionBuilder) -> ort::Result<()> {
    ort::ep::CUDA::default()
        .build()
        .error_on_failure()
        .register(b)
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(_: &mut ort::session::builder::SessionBuilder) -> ort::Result<()> {
    unreachable!("CUDA is only attempted in builds with the `cuda` feature")
}

impl ModelRuntime {
    /// Verifies and loads the model, choosing the first execution provider that works.
    pub fn load(o: &LoadOptions) -> Result<Self, ModelError> {
        let lib = o.library.as_ref().ok_or(ModelError::NoLibrary)?;
        let env = environment(lib)?;
        let trusted = super::package::trusted_keys(&o.trusted_keys)?;
        let pkg = super::package::open(&o.model_dir, &trusted)?;
        let (variant, a) = pkg.artifact(o.variant.as_deref())?;
        let variant = variant.to_string();
        let (bytes, sha) = pkg.read_verified(a)?;
        let m = pkg.manifest;
        let session_err = |e: &dyn std::fmt::Display| ModelError::Session {
            model_id: m.model_id.clone(),
            reason: e.to_string(),
        };
        let mut fallbacks = Vec::new();
        let mut chosen = None;
        for p in &o.providers {
            let attempt = match p.as_str() {
                "cpu" => Some(Provider::Cpu),
                "tensorrt" if cfg!(feature = "tensorrt") => Some(Provider::TensorRt),
                "cuda" if cfg!(feature = "cuda") => Some(Provider::Cuda),
                "tensorrt" | "cuda" => {
                    fallbacks.push(format!(
                        "{p}: this build has no {p} support (cargo feature `{p}`)"
                    ));
                    None
                }
                other => {
                    fallbacks.push(format!("{other}: unknown execution provider"));
                    None
                }
            };
            let Some(provider) = attempt else { continue };
            let mut b = Session::builder(env).map_err(|e| session_err(&e))?;
            b = b
                .with_intra_threads(o.intra_threads.max(1))
                .map_err(|e| session_err(&e))?;
            let registered = match provider {
                Provider::Cpu => Ok(()),
                Provider::TensorRt => {
                    let dir = o
                        .engine_cache_dir
                        .join(format!("{}-{}", &sha[..16], gpu_identity()));
                    let _ = std::fs::create_dir_all(&dir);
                    register_tensorrt(&mut b, &dir, variant == "int8")
                }
                Provider::Cuda => register_cuda(&mut b),
            };
            if let Err(e) = registered {
                fallbacks.push(format!("{}: {e}", provider.as_str()));
                continue;
            }
            match b.commit_from_memory(&bytes) {
                Ok(s) => {
                    chosen = Some((s, provider));
                    break;
                }
                Err(e) => fallbacks.push(format!("{}: {e}", provider.as_str())),
            }
        }
        for f in &fallbacks {
            tracing::warn!(fallback = %f, "execution provider not used");
        }
        let (session, provider) = chosen.ok_or_else(|| {
            session_err(&format!(
                "no execution provider worked: {}",
                fallbacks.join("; ")
            ))
        })?;
        let info = RuntimeInfo {
            dir: o.model_dir.clone(),
            model_id: m.model_id.into(),
            variant,
            sha256: sha.into(),
            provider,
            fallbacks,
        };
        let mut rt = ModelRuntime { session, info };
        // Warm-up: the first run allocates and (for TensorRT) builds or loads the engine.
        rt.infer(&[0.0; N_VITALS], &[0.0; TEXT_BUCKETS])?;
        tracing::info!(model = %rt.info.model_id, variant = %rt.info.variant, provider = rt.info.provider.as_str(), "model loaded");
        Ok(rt)
    }

    /// One inference (batch of 1).
    pub fn infer(
        &mut self,
        vitals: &[f32; N_VITALS],
        text: &[f32; TEXT_BUCKETS],
    ) -> Result<ModelOutput, ModelError> {
        self.run_raw(vitals, [1, N_VITALS], text, [1, TEXT_BUCKETS])
    }

    /// Runs with explicit shapes (tests use it to check that a wrong shape is an error).
    pub fn run_raw(
        &mut self,
        vitals: &[f32],
        vshape: [usize; 2],
        text: &[f32],
        tshape: [usize; 2],
    ) -> Result<ModelOutput, ModelError> {
        let err = |e: &dyn std::fmt::Display| ModelError::Inference(e.to_string());
        let v = TensorRef::from_array_view((vshape, vitals)).map_err(|e| err(&e))?;
        let t = TensorRef::from_array_view((tshape, text)).map_err(|e| err(&e))?;
        let out = self
            .session
            .run(ort::inputs!["vitals" => v, "text" => t])
            .map_err(|e| err(&e))?;
        let get = |name: &str, n: usize| -> Result<Vec<f32>, ModelError> {
            let value = out
                .get(name)
                .ok_or_else(|| ModelError::Inference(format!("model has no output `{name}`")))?;
            let (_, data) = value.try_extract_tensor::<f32>().map_err(|e| err(&e))?;
            if data.len() < n {
                return Err(ModelError::Inference(format!(
                    "output `{name}` has {} values, expected {n}",
                    data.len()
                )));
            }
            Ok(data[..n].to_vec())
        };
        let (e, s, c) = (
            get("esi_logits", 5)?,
            get("specialty_logits", 9)?,
            get("confidence", 1)?,
        );
        let mut o = ModelOutput {
            esi_logits: [0.0; 5],
            specialty_logits: [0.0; 9],
            confidence: c[0],
        };
        o.esi_logits.copy_from_slice(&e);
        o.specialty_logits.copy_from_slice(&s);
        Ok(o)
    }
}
