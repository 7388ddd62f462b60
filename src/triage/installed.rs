//! Installed models: the factory model shipped in the image (`triage.model_dir`, read-only) and
//! signed updates installed under `triage.models_dir`:
//!
//! ```text
//! <models_dir>/hema3n-core-1.1.0-<manifest sha256, 12 hex>/   one directory per package
//! <models_dir>/current  -> the active package (absent: the factory model)
//! <models_dir>/previous -> what `model rollback` returns to
//! ```
//!
//! A package is verified (signature and every artifact), copied into a staging directory,
//! verified again from the copy, fsynced and renamed into place; `current` then moves by one
//! atomic rename of a fresh symlink. The daemon checks `current` before each triage and loads a
//! changed target (verifying it again), keeping the loaded model if the new one fails.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::ModelError;
use super::package::{self, DOCUMENTS, MANIFEST, Package, SIGNATURE};
use crate::crypto::sign::PublicKey;

const CURRENT: &str = "current";
const PREVIOUS: &str = "previous";
const STAGING: &str = ".staging-";

/// The factory model and the installed ones.
#[derive(Debug, Clone)]
pub struct ModelStore {
    /// `triage.models_dir`.
    pub root: PathBuf,
    /// `triage.model_dir`: active while nothing is installed.
    pub factory: PathBuf,
}

fn store_error(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Store {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl ModelStore {
    fn link(&self, name: &str) -> Option<PathBuf> {
        let t = std::fs::read_link(self.root.join(name)).ok()?;
        Some(if t.is_relative() {
            self.root.join(t)
        } else {
            t
        })
    }

    /// The directory the daemon loads: `current`'s target, else the factory model.
    pub fn active(&self) -> PathBuf {
        self.link(CURRENT).unwrap_or_else(|| self.factory.clone())
    }

    /// What `rollback` would switch to.
    pub fn previous(&self) -> Option<PathBuf> {
        self.link(PREVIOUS)
    }

    /// Installed package directories (not the factory model).
    pub fn installed(&self) -> Vec<PathBuf> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|p| !name_of(p).starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Verifies `src` completely, copies it in, verifies the copy and makes it active; the
    /// previously active model becomes `previous`. `check` may refuse the staged copy (the CLI
    /// loads it into ONNX Runtime first) before anything switches.
    pub fn install(
        &self,
        src: &Path,
        trusted: &[PublicKey],
        check: impl FnOnce(&Package) -> Result<(), ModelError>,
    ) -> Result<Package, ModelError> {
        let pkg = package::open(src, trusted)?;
        pkg.verify_artifacts()?;
        std::fs::create_dir_all(&self.root).map_err(|e| store_error(&self.root, e))?;
        let dest = self.root.join(format!(
            "{}-{}",
            pkg.manifest.model_id,
            &pkg.manifest_sha256[..12]
        ));
        let installed = match package::open(&dest, trusted) {
            // Installed before (e.g. installed, rolled back, installed again): reuse if intact.
            Ok(p) if p.verify_artifacts().is_ok() => p,
            _ => self.copy_in(&pkg, &dest, trusted)?,
        };
        check(&installed)?;
        self.switch_to(&dest)?;
        Ok(installed)
    }

    fn copy_in(
        &self,
        pkg: &Package,
        dest: &Path,
        trusted: &[PublicKey],
    ) -> Result<Package, ModelError> {
        let stage = self.root.join(format!(
            "{STAGING}{}-{}",
            std::process::id(),
            crate::model::now_ms()
        ));
        let result = (|| {
            std::fs::create_dir(&stage).map_err(|e| store_error(&stage, e))?;
            let mut files: Vec<&str> = vec![MANIFEST, SIGNATURE];
            files.extend(pkg.manifest.artifacts.values().map(|a| a.file.as_str()));
            files.extend(DOCUMENTS.iter().filter(|d| pkg.dir.join(d).is_file()));
            for f in files {
                copy_synced(&pkg.dir.join(f), &stage.join(f))?;
            }
            sync_dir(&stage)?;
            // The copy is what will be loaded: verify it, not only the source.
            let staged = package::open(&stage, trusted)?;
            if staged.manifest_sha256 != pkg.manifest_sha256 {
                return Err(store_error(&stage, "the manifest changed while copying"));
            }
            staged.verify_artifacts()?;
            if dest.exists() {
                std::fs::remove_dir_all(dest).map_err(|e| store_error(dest, e))?;
            }
            std::fs::rename(&stage, dest).map_err(|e| store_error(dest, e))?;
            sync_dir(&self.root)?;
            Ok(Package {
                dir: dest.to_path_buf(),
                ..staged
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&stage);
        }
        result
    }

    /// Makes `dir` active; the active model becomes `previous`.
    fn switch_to(&self, dir: &Path) -> Result<PathBuf, ModelError> {
        let old = self.active();
        if old != dir {
            self.set_link(PREVIOUS, &old)?;
            self.set_link(CURRENT, dir)?;
        }
        Ok(old)
    }

    /// Switches back to `previous` after verifying it; the active model becomes `previous`.
    pub fn rollback(&self, trusted: &[PublicKey]) -> Result<(Package, PathBuf), ModelError> {
        let prev = self.previous().ok_or_else(|| {
            store_error(
                &self.root,
                "no previous model to roll back to (nothing was installed)",
            )
        })?;
        let pkg = package::open(&prev, trusted)?;
        pkg.verify_artifacts()?;
        let old = self.switch_to(&prev)?;
        Ok((pkg, old))
    }

    /// A symlink replaced atomically (new link, rename over the old one, directory fsync).
    fn set_link(&self, name: &str, target: &Path) -> Result<(), ModelError> {
        let tmp = self.root.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| store_error(&tmp, e))?;
        std::fs::rename(&tmp, self.root.join(name)).map_err(|e| store_error(&tmp, e))?;
        sync_dir(&self.root)
    }

    /// Removes installed packages other than `current` and `previous`, and staging leftovers.
    pub fn prune(&self) -> Vec<PathBuf> {
        let keep = [self.link(CURRENT), self.link(PREVIOUS)];
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut removed = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            let name = name_of(&p);
            let package_dir = e.file_type().is_ok_and(|t| t.is_dir())
                && (name.starts_with(STAGING) || !name.starts_with('.'));
            if package_dir
                && !keep.iter().flatten().any(|k| k == &p)
                && std::fs::remove_dir_all(&p).is_ok()
            {
                removed.push(p);
            }
        }
        removed
    }

    /// SHA-256s of the artifacts of every model that may still be loaded (current, previous,
    /// factory), unverified: only for deciding which engine caches to keep.
    pub fn artifact_hashes(&self) -> Vec<String> {
        let dirs = [
            Some(self.active()),
            self.previous(),
            Some(self.factory.clone()),
        ];
        let mut v = Vec::new();
        for d in dirs.into_iter().flatten() {
            let Ok(text) = std::fs::read_to_string(d.join(MANIFEST)) else {
                continue;
            };
            if let Ok(m) = toml::from_str::<package::Manifest>(&text) {
                v.extend(
                    m.artifacts
                        .into_values()
                        .map(|a| a.sha256.to_ascii_lowercase()),
                );
            }
        }
        v
    }
}

/// Removes TensorRT engine caches (`<artifact sha256, 16 hex>-<gpu id>`) of artifacts not in
/// `keep`; other entries of the directory are left alone.
pub fn prune_engines(cache: &Path, keep: &[String]) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let name = name_of(&p);
        let Some((sha16, gpu)) = name.split_once('-') else {
            continue;
        };
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if hex(sha16, 16)
            && hex(gpu, 12)
            && !keep.iter().any(|k| k.starts_with(sha16))
            && std::fs::remove_dir_all(&p).is_ok()
        {
            removed.push(p);
        }
    }
    removed
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn copy_synced(from: &Path, to: &Path) -> Result<(), ModelError> {
    let mut src = std::fs::File::open(from).map_err(|e| store_error(from, e))?;
    let mut dst = std::fs::File::create_new(to).map_err(|e| store_error(to, e))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| store_error(to, e))?;
    dst.flush().map_err(|e| store_error(to, e))?;
    dst.sync_all().map_err(|e| store_error(to, e))
}

fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store_error(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_engine_caches_of_unknown_artifacts_are_pruned() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "0123456789abcdef-a1b2c3d4e5f6",
            "fedcba9876543210-a1b2c3d4e5f6",
            "notes",
            "0123456789abcdef-short",
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        let keep = vec![format!("0123456789abcdef{}", "0".repeat(48))];
        let removed = prune_engines(d.path(), &keep);
        assert_eq!(
            removed,
            vec![d.path().join("fedcba9876543210-a1b2c3d4e5f6")]
        );
        assert!(d.path().join("notes").exists());
        assert!(d.path().join("0123456789abcdef-short").exists());
    }
}
