//! Tidy: architecture rules that are easy to state and easy to break.
//! - every source file starts with a `//!` doc saying what it owns;
//! - only the owning module imports a library (STYLE.md): rusqlite → storage/, ring → crypto/,
//!   sd-notify and tracing-journald → systemd.rs, rumqttc → ingest/ (devices), sync/ and
//!   receiver/ (cloud), hpke → crypto/seal.rs, rustls → tls.rs, ort → triage/runtime.rs;
//! - no `println!`/`eprintln!` of PHI-bearing types in library code outside the CLI.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    for f in rust_files(&src()) {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} must start with a //! doc comment",
            f.display()
        );
    }
}

#[test]
fn only_owning_modules_import_their_libraries() {
    let rules: &[(&str, &[&str])] = &[
        ("rusqlite", &["storage/"]),
        ("ring::", &["crypto/"]),
        ("hpke::", &["crypto/seal.rs"]),
        ("rustls", &["tls.rs"]),
        ("rcgen::", &["tls.rs"]),
        ("axum::", &["api/"]),
        ("hyper::", &["api/"]),
        ("hyper_util::", &["api/"]),
        ("argon2::", &["crypto/password.rs"]),
        ("libc::", &["host.rs"]),
        ("sd_notify", &["systemd.rs"]),
        ("zbus", &["dbus.rs"]),
        ("tracing_journald", &["systemd.rs"]),
        ("rumqttc", &["ingest/", "sync/", "receiver/"]),
        ("ort::", &["triage/runtime.rs"]),
        ("tch::", &["triage/torch.rs"]),
    ];
    for f in rust_files(&src()) {
        let rel = f
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&f).unwrap();
        for (lib, owner) in rules {
            let uses = text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with("//") && mentions_path(l, lib)
            });
            assert!(
                !uses || owner.iter().any(|o| rel.starts_with(o)),
                "{rel} uses `{lib}`, which only {owner:?} may import"
            );
        }
    }
}

/// `lib` occurs as a path start (not as the tail of another identifier such as `Keyring::`).
fn mentions_path(line: &str, lib: &str) -> bool {
    line.match_indices(lib).any(|(i, _)| {
        line[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'))
    })
}

#[test]
fn library_code_does_not_print() {
    for f in rust_files(&src()) {
        let rel = f.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        if rel == "cli.rs" || rel == "main.rs" || rel.starts_with("bin/") || rel == "systemd.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, l) in text.lines().enumerate() {
            assert!(
                !l.contains("println!") && !l.contains("dbg!"),
                "{rel}:{}: library code must log via tracing, not print",
                i + 1
            );
        }
    }
}
