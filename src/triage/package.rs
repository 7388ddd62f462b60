//! Model packages: a directory with `manifest.toml`, the artifacts it lists by SHA-256, and
//! `manifest.sig`, an ES256 signature over the manifest by a model-signing key whose public part
//! the appliance pins (`triage.model_signing_keys`). Whoever can write the model directory can
//! change both a file and its hash; only the holder of the signing key can make a manifest the
//! appliance trusts.
//!
//! The signature covers `"hema3n-model-manifest/v1\0" || manifest bytes`; the manifest is read
//! once, verified and parsed from the same bytes, and each artifact is hashed from the bytes that
//! are then loaded, so nothing can change between check and use.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::ModelError;
use crate::crypto::sign::{PublicKey, SigningKey};

/// The manifest's file name inside a package.
pub const MANIFEST: &str = "manifest.toml";
/// The signature's file name inside a package.
pub const SIGNATURE: &str = "manifest.sig";
/// Files besides the artifacts that an install copies when present.
pub const DOCUMENTS: [&str; 2] = ["MODEL_CARD.md", "metrics.json"];
const CONTEXT: &[u8] = b"hema3n-model-manifest/v1\0";
const FORMAT: &str = "hema3n-model-signature/v1";

/// The parts of `manifest.toml` the appliance relies on.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub model_id: String,
    pub version: String,
    /// The variant loaded unless `triage.variant` names another.
    pub default: String,
    pub artifacts: std::collections::BTreeMap<String, Artifact>,
}

/// One model file and its digest.
#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    pub file: String,
    pub sha256: String,
}

/// `manifest.sig` (JSON).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: String,
    /// Key id of the signing key (first 8 bytes of SHA-256 of its SEC1 point, hex).
    key_id: String,
    /// SHA-256 of the signed manifest, hex (informational; the signature is what counts).
    manifest_sha256: String,
    /// ES256 r||s, low-S, base64.
    signature: String,
}

/// A package whose manifest signature verified against a pinned key.
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// SHA-256 of `manifest.toml`, hex: names the package.
    pub manifest_sha256: String,
    /// The pinned key that signed it.
    pub key_id: String,
}

/// Parses the pinned keys (`triage.model_signing_keys`: PEM or bare base64 SPKI each).
pub fn trusted_keys(pinned: &[String]) -> Result<Vec<PublicKey>, ModelError> {
    if pinned.is_empty() {
        return Err(ModelError::NoTrustedKeys);
    }
    pinned
        .iter()
        .enumerate()
        .map(|(index, k)| PublicKey::from_pem(k).ok_or(ModelError::BadTrustedKey { index }))
        .collect()
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, ModelError> {
    let file = dir.join(name);
    std::fs::read(&file).map_err(|source| ModelError::Io { file, source })
}

fn manifest_error(dir: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Manifest {
        path: dir.join(MANIFEST),
        reason: reason.into(),
    }
}

/// Reads `dir`'s manifest and checks its signature against `trusted`; artifacts are not read.
pub fn open(dir: &Path, trusted: &[PublicKey]) -> Result<Package, ModelError> {
    let bytes = read(dir, MANIFEST)?;
    let sig_text = match std::fs::read(dir.join(SIGNATURE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ModelError::Unsigned {
                dir: dir.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(ModelError::Io {
                file: dir.join(SIGNATURE),
                source,
            });
        }
    };
    let bad = |reason: String| ModelError::BadSignature {
        dir: dir.to_path_buf(),
        reason,
    };
    let sig: SignatureFile = serde_json::from_slice(&sig_text)
        .map_err(|e| bad(format!("{SIGNATURE} is not a model signature ({e})")))?;
    if sig.format != FORMAT {
        return Err(bad(format!(
            "{SIGNATURE} has format {:?}, expected {FORMAT:?}",
            sig.format
        )));
    }
    let Some(key) = trusted.iter().find(|k| k.key_id() == sig.key_id) else {
        return Err(ModelError::UntrustedKey {
            dir: dir.to_path_buf(),
            key_id: sig.key_id,
            pinned: trusted
                .iter()
                .map(PublicKey::key_id)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sig.signature.trim())
        .map_err(|_| bad(format!("{SIGNATURE}: the signature is not base64")))?;
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(&bytes);
    key.verify(&msg, &raw).map_err(|_| {
        bad(format!(
            "the signature by key {} does not verify: {MANIFEST} was changed after signing or {SIGNATURE} is damaged",
            sig.key_id
        ))
    })?;
    parse(dir, &bytes, &sig.key_id)
}

/// Parses manifest bytes (already verified, or about to be signed).
fn parse(dir: &Path, bytes: &[u8], key_id: &str) -> Result<Package, ModelError> {
    let text = std::str::from_utf8(bytes).map_err(|_| manifest_error(dir, "not UTF-8"))?;
    let manifest: Manifest =
        toml::from_str(text).map_err(|e| manifest_error(dir, e.to_string()))?;
    check_names(dir, &manifest)?;
    Ok(Package {
        dir: dir.to_path_buf(),
        manifest,
        manifest_sha256: hex::encode(crate::crypto::sha256(bytes)),
        key_id: key_id.to_string(),
    })
}

/// A signed manifest still must not name files outside its directory or odd model ids (the id
/// names the installed directory).
fn check_names(dir: &Path, m: &Manifest) -> Result<(), ModelError> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && !s.starts_with('.')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if !plain(&m.model_id) {
        return Err(manifest_error(
            dir,
            format!("model_id {:?} is not a plain name", m.model_id),
        ));
    }
    if m.artifacts.is_empty() {
        return Err(manifest_error(dir, "lists no artifacts"));
    }
    for (name, a) in &m.artifacts {
        if !plain(&a.file) || a.file == MANIFEST || a.file == SIGNATURE {
            return Err(manifest_error(
                dir,
                format!(
                    "artifact {name}: file {:?} is not a plain file name",
                    a.file
                ),
            ));
        }
        if a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(manifest_error(
                dir,
                format!("artifact {name}: sha256 is not 64 hex digits"),
            ));
        }
    }
    Ok(())
}

impl Package {
    /// The artifact of `variant` (`None` = the manifest's default).
    pub fn artifact(&self, variant: Option<&str>) -> Result<(&str, &Artifact), ModelError> {
        let v = variant.unwrap_or(&self.manifest.default);
        self.manifest
            .artifacts
            .get_key_value(v)
            .map(|(k, a)| (k.as_str(), a))
            .ok_or_else(|| {
                manifest_error(
                    &self.dir,
                    format!(
                        "no artifact `{v}` (have: {})",
                        self.manifest
                            .artifacts
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })
    }

    /// Reads an artifact and checks it against the manifest; returns its bytes and hash.
    pub fn read_verified(&self, a: &Artifact) -> Result<(Vec<u8>, String), ModelError> {
        let bytes = read(&self.dir, &a.file)?;
        let found = hex::encode(crate::crypto::sha256(&bytes));
        if found != a.sha256.to_ascii_lowercase() {
            return Err(ModelError::Tampered {
                file: self.dir.join(&a.file),
                expected: a.sha256.clone(),
                found,
            });
        }
        Ok((bytes, found))
    }

    /// Checks every artifact; returns their SHA-256s.
    pub fn verify_artifacts(&self) -> Result<Vec<String>, ModelError> {
        self.manifest
            .artifacts
            .values()
            .map(|a| self.read_verified(a).map(|(_, sha)| sha))
            .collect()
    }
}

/// Signs `dir`'s manifest with `key` after checking that every artifact matches it (a signature
/// vouches for the files, not only the text); writes `manifest.sig` and returns the key id.
pub fn sign(dir: &Path, key: &SigningKey) -> Result<String, ModelError> {
    let bytes = read(dir, MANIFEST)?;
    let key_id = key.public().key_id();
    parse(dir, &bytes, &key_id)?.verify_artifacts()?;
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(&bytes);
    let raw = key.sign(&msg).map_err(|e| ModelError::BadSignature {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let file = SignatureFile {
        format: FORMAT.into(),
        key_id: key_id.clone(),
        manifest_sha256: hex::encode(crate::crypto::sha256(&bytes)),
        signature: base64::engine::general_purpose::STANDARD.encode(raw),
    };
    let mut text = serde_json::to_string_pretty(&file).expect("signature serializes");
    text.push('\n');
    let staged = dir.join(format!(".{SIGNATURE}.new"));
    let io = |source| ModelError::Io {
        file: staged.clone(),
        source,
    };
    std::fs::write(&staged, &text).map_err(io)?;
    std::fs::rename(&staged, dir.join(SIGNATURE)).map_err(io)?;
    Ok(key_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path) -> SigningKey {
        std::fs::write(dir.join("a.onnx"), b"weights").unwrap();
        let sha = hex::encode(crate::crypto::sha256(b"weights"));
        std::fs::write(
            dir.join(MANIFEST),
            format!("model_id = \"m-1\"\nversion = \"1\"\ndefault = \"a\"\n[artifacts.a]\nfile = \"a.onnx\"\nsha256 = \"{sha}\"\n"),
        )
        .unwrap();
        let der = SigningKey::generate_pkcs8().unwrap();
        SigningKey::from_pkcs8("model", &der).unwrap()
    }

    #[test]
    fn a_signed_package_opens_only_with_its_key_and_unchanged_manifest() {
        let d = tempfile::tempdir().unwrap();
        let key = package(d.path());
        assert!(matches!(
            open(d.path(), &[key.public()]),
            Err(ModelError::Unsigned { .. })
        ));
        sign(d.path(), &key).unwrap();
        let p = open(d.path(), &[key.public()]).unwrap();
        assert_eq!(p.manifest.model_id, "m-1");
        assert_eq!(p.verify_artifacts().unwrap().len(), 1);
        let other = SigningKey::from_pkcs8("o", &SigningKey::generate_pkcs8().unwrap()).unwrap();
        assert!(matches!(
            open(d.path(), &[other.public()]),
            Err(ModelError::UntrustedKey { .. })
        ));
        let m = std::fs::read_to_string(d.path().join(MANIFEST)).unwrap();
        std::fs::write(d.path().join(MANIFEST), m.replace("\"1\"", "\"2\"")).unwrap();
        assert!(matches!(
            open(d.path(), &[key.public()]),
            Err(ModelError::BadSignature { .. })
        ));
        std::fs::write(d.path().join(MANIFEST), m).unwrap();
        std::fs::write(d.path().join("a.onnx"), b"weightz").unwrap();
        let p = open(d.path(), &[key.public()]).unwrap();
        assert!(matches!(
            p.verify_artifacts(),
            Err(ModelError::Tampered { .. })
        ));
        // Signing refuses a manifest its artifacts do not match, and leaves no file behind.
        std::fs::remove_file(d.path().join(SIGNATURE)).unwrap();
        assert!(sign(d.path(), &key).is_err());
        assert!(!d.path().join(SIGNATURE).exists());
    }

    #[test]
    fn a_signed_manifest_cannot_point_outside_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let key = package(d.path());
        let m = std::fs::read_to_string(d.path().join(MANIFEST)).unwrap();
        std::fs::write(
            d.path().join(MANIFEST),
            m.replace("\"a.onnx\"", "\"../a.onnx\""),
        )
        .unwrap();
        assert!(matches!(
            sign(d.path(), &key),
            Err(ModelError::Manifest { .. })
        ));
        assert!(matches!(trusted_keys(&[]), Err(ModelError::NoTrustedKeys)));
        assert!(matches!(
            trusted_keys(&["not a key".into()]),
            Err(ModelError::BadTrustedKey { index: 0 })
        ));
    }
}
