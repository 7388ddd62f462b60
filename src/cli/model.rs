//! `model status|verify|install|rollback` on the appliance, `model keygen|sign` on the build or
//! release machine. Installing needs no appliance keys: trust comes from the model-signing public
//! keys pinned in the configuration (`triage.model_signing_keys`).

use std::path::Path;

use crate::config::Config;
use crate::crypto::keyring::write_secret;
use crate::crypto::sign::{PublicKey, SigningKey, pkcs8_to_pem};
use crate::triage::installed::{ModelStore, prune_engines};
use crate::triage::package::{self, Package};
use crate::triage::runtime::{ModelError, ModelRuntime};

use super::{CmdResult, EXIT_CONFIG, Failure};

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        let code = match e {
            ModelError::NoTrustedKeys | ModelError::BadTrustedKey { .. } => EXIT_CONFIG,
            _ => 1,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}

fn trusted(cfg: &Config) -> Result<Vec<PublicKey>, Failure> {
    Ok(package::trusted_keys(&cfg.triage.model_signing_keys)?)
}

fn describe(p: &Package) -> String {
    format!(
        "{} version {} (manifest sha256 {}, signed by key {})",
        p.manifest.model_id,
        p.manifest.version,
        &p.manifest_sha256[..16],
        p.key_id
    )
}

/// `model status`.
pub fn model_status(cfg: &Config) -> CmdResult {
    let store = crate::app::model_store(cfg);
    let keys = trusted(cfg);
    let line = |dir: &Path| -> String {
        let verdict = keys
            .as_ref()
            .map_err(|f| f.error.to_string())
            .and_then(|k| {
                let p = package::open(dir, k).map_err(|e| e.to_string())?;
                p.verify_artifacts().map_err(|e| e.to_string())?;
                Ok(describe(&p))
            });
        match verdict {
            Ok(d) => format!("{} — {d}", dir.display()),
            Err(e) => format!("{} — NOT TRUSTED: {e}", dir.display()),
        }
    };
    let active = store.active();
    println!("active:    {}", line(&active));
    match store.previous() {
        Some(p) => println!("previous:  {}", line(&p)),
        None => println!("previous:  none (nothing was installed)"),
    }
    println!("factory:   {}", store.factory.display());
    for d in store.installed() {
        println!("installed: {}", d.display());
    }
    Ok(0)
}

/// `model verify [DIR]`.
pub fn model_verify(cfg: &Config, dir: Option<&Path>) -> CmdResult {
    let dir = dir.map_or_else(|| crate::app::model_store(cfg).active(), Path::to_path_buf);
    let p = package::open(&dir, &trusted(cfg)?)?;
    let n = p.verify_artifacts()?.len();
    println!(
        "OK {}: {}; {n} artifacts match",
        dir.display(),
        describe(&p)
    );
    Ok(0)
}

/// Loads a staged package into ONNX Runtime before it becomes active (on the Orin this also
/// builds its TensorRT engine, so the daemon's switch is fast).
fn load_test(cfg: &Config, p: &Package) -> Result<(), ModelError> {
    if cfg.triage.onnxruntime_library.is_none() {
        println!("note: not load-tested (triage.onnxruntime_library is not set)");
        return Ok(());
    }
    let mut o = crate::app::load_options(cfg);
    o.model_dir = p.dir.clone();
    let rt = ModelRuntime::load(&o)?;
    println!(
        "load test: {} ({}) runs on {}",
        rt.info.model_id,
        rt.info.variant,
        rt.info.provider.as_str()
    );
    Ok(())
}

fn prune(cfg: &Config, store: &ModelStore) {
    let mut removed = store.prune();
    removed.extend(prune_engines(
        &cfg.engine_cache_dir(),
        &store.artifact_hashes(),
    ));
    for r in removed {
        println!("pruned:    {}", r.display());
    }
}

/// `model install DIR`.
pub fn model_install(cfg: &Config, dir: &Path) -> CmdResult {
    let store = crate::app::model_store(cfg);
    let before = store.active();
    let p = store.install(dir, &trusted(cfg)?, |p| load_test(cfg, p))?;
    if before == p.dir {
        println!("already active: {}", describe(&p));
        return Ok(0);
    }
    println!("active:    {} — {}", p.dir.display(), describe(&p));
    println!("previous:  {}", before.display());
    prune(cfg, &store);
    println!(
        "the running daemon switches at its next triage (audited as model.activate); `model rollback` returns to the previous model"
    );
    Ok(0)
}

/// `model rollback`.
pub fn model_rollback(cfg: &Config) -> CmdResult {
    let store = crate::app::model_store(cfg);
    let (p, old) = store.rollback(&trusted(cfg)?)?;
    println!("active:    {} — {}", p.dir.display(), describe(&p));
    println!("previous:  {}", old.display());
    Ok(0)
}

/// `model keygen --out DIR`.
pub fn model_keygen(out: &Path) -> CmdResult {
    let der = SigningKey::generate_pkcs8()?;
    let key = SigningKey::from_pkcs8("model-signing.key", &der)?;
    let public = key.public().to_pem();
    write_secret(out, "model-signing.key", pkcs8_to_pem(&der).as_bytes())?;
    std::fs::write(out.join("model-signing.pub"), &public)?;
    let body: String = public.lines().filter(|l| !l.starts_with("-----")).collect();
    println!(
        "model-signing key {} created in {} (keep model-signing.key on the signing machine only)",
        key.public().key_id(),
        out.display()
    );
    println!("pin it on appliances:\n[triage]\nmodel_signing_keys = [\"{body}\"]");
    Ok(0)
}

/// `model sign DIR --key FILE`.
pub fn model_sign(dir: &Path, key_file: &Path) -> CmdResult {
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(key_file).map_err(|e| Failure {
        code: EXIT_CONFIG,
        error: anyhow::anyhow!("model-signing key {}: {e}", key_file.display()),
    })?);
    let key = SigningKey::from_pem(&key_file.display().to_string(), &pem)?;
    let id = package::sign(dir, &key)?;
    println!(
        "signed {} with key {id}",
        dir.join(package::MANIFEST).display()
    );
    Ok(0)
}
