//! Tidy: architecture rules that are easy to state and easy to break. Each `#[test]` here is
//! one rule, and README.md's "Invariants" list names each of them (`tidy: <test name>`); the
//! last test checks that the two agree.

use std::collections::{BTreeMap, BTreeSet};
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
        ("postgres::", &["storage/pg/", "tls.rs"]),
        ("ring::", &["crypto/"]),
        (
            "hpke::",
            &[
                "crypto/seal.rs",
                "crypto/escrow.rs",
                "crypto/hpke_aead.rs",
                "crypto/hpke_kem.rs",
            ],
        ),
        ("aead::", &["crypto/hpke_aead.rs"]),
        ("openssl_sys", &["crypto/hpke_kem.rs"]),
        ("rustls", &["tls.rs"]),
        ("rcgen::", &["tls.rs"]),
        ("axum::", &["api/"]),
        ("hyper::", &["api/"]),
        ("hyper_util::", &["api/"]),
        ("http_body_util::", &["api/"]),
        ("argon2::", &["crypto/password.rs"]),
        ("libc::", &["host.rs"]),
        ("sd_notify", &["systemd.rs"]),
        ("zbus", &["dbus.rs"]),
        ("tracing_journald", &["systemd.rs"]),
        ("rumqttc", &["ingest/", "sync/", "receiver/"]),
        ("ort::", &["triage/runtime.rs"]),
        ("tch::", &["triage/torch.rs"]),
        ("krilla", &["handoff/pdf.rs"]),
        ("dejavu::", &["handoff/pdf.rs"]),
        ("dicom_", &["media/dicom.rs"]),
        ("jpeg_decoder", &["media/thumb.rs"]),
        ("jpeg_encoder", &["media/thumb.rs"]),
        ("png::", &["media/thumb.rs"]),
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
        let before = line[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
        // `super::fhir` is not `super::fhir_record`.
        let after = line[i + lib.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        before && after
    })
}

#[test]
fn library_code_does_not_print() {
    for f in rust_files(&src()) {
        let rel = f.strip_prefix(src()).unwrap().to_string_lossy().to_string();
        if rel.starts_with("cli/")
            || rel == "main.rs"
            || rel.starts_with("bin/")
            || rel == "systemd.rs"
        {
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

/// The text of a file up to its first `#[cfg(test)]` (test modules may spawn and create
/// channels freely), without comment lines.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| !l.trim_start().starts_with("#[cfg(test)]"))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
        .collect()
}

fn rel(f: &Path) -> String {
    f.strip_prefix(src())
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// Where tasks may be spawned and channels created outside the supervisor (`app/`), and why.
const SPAWN_ALLOWED: &[(&str, &str)] = &[
    (
        "storage/store.rs",
        "the storage owner thread, its bounded job queue and one-shot replies",
    ),
    (
        "triage/service.rs",
        "the model owner thread, its bounded job queue and one-shot replies",
    ),
    ("events.rs", "the live-event broadcast bus"),
    (
        "api/server.rs",
        "one task per accepted HTTPS connection (bounded by api.max_concurrent)",
    ),
    (
        "api/handlers/auth.rs",
        "Argon2id verification off the async workers (spawn_blocking)",
    ),
    (
        "api/handlers/users.rs",
        "Argon2id hashing off the async workers (spawn_blocking)",
    ),
    (
        "sync/sealer.rs",
        "building and sealing a case bundle on a blocking thread, outside the storage thread (spawn_blocking)",
    ),
    (
        "sync/link.rs",
        "the per-connection hand-off from the cloud driver to the forwarder",
    ),
    (
        "ingest/simulate.rs",
        "the field-device simulator (a CLI tool, not the daemon)",
    ),
    (
        "bin/hema3n-receiver.rs",
        "the receiver binary's signal handler",
    ),
];

#[test]
fn tasks_and_channels_are_created_only_by_the_supervisor() {
    let patterns = [
        "tokio::spawn(",
        "task::spawn(",
        "spawn_blocking(",
        "thread::spawn(",
        "thread::Builder",
        "JoinSet::new(",
        "mpsc::channel",
        "unbounded_channel(",
        "watch::channel(",
        "broadcast::channel(",
        "oneshot::channel(",
        "sync_channel(",
    ];
    for f in rust_files(&src()) {
        let r = rel(&f);
        // `*_tests.rs` files are test modules (`#[cfg(test)] mod …;`).
        if r.starts_with("app/")
            || r.ends_with("_tests.rs")
            || SPAWN_ALLOWED.iter().any(|(a, _)| *a == r)
        {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, l) in code_lines(&text) {
            for p in patterns {
                assert!(
                    !l.contains(p),
                    "{r}:{n}: `{p}` outside the supervisor (src/app/); add it there, or to \
                     SPAWN_ALLOWED with a reason"
                );
            }
        }
    }
    for (a, why) in SPAWN_ALLOWED {
        assert!(
            src().join(a).exists(),
            "SPAWN_ALLOWED names {a}, which is gone"
        );
        assert!(!why.is_empty());
    }
}

#[test]
fn sync_never_awaits_the_mqtt_client() {
    for f in rust_files(&src().join("sync")) {
        let r = rel(&f);
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, l) in code_lines(&text) {
            let calls_client = l.contains("client.") || l.contains(".client");
            assert!(
                !(calls_client && l.contains(".await")),
                "{r}:{n}: the MQTT client is awaited; use its try_ methods (the driver is polled \
                 by the same task)"
            );
            for m in ["publish", "subscribe", "ack", "disconnect", "unsubscribe"] {
                for pre in ["client.", ".client."] {
                    assert!(
                        !l.contains(&format!("{pre}{m}")),
                        "{r}:{n}: `{pre}{m}` waits for room in the request queue; use try_{m}"
                    );
                }
            }
        }
    }
}

/// Which top-level modules of `src/` a file refers to (`crate::x` and `use crate::{x, …}`).
fn crate_refs(text: &str, names: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (_, l) in code_lines(text) {
        for (i, _) in l.match_indices("crate::") {
            let rest = &l[i + 7..];
            if let Some(group) = rest.strip_prefix('{') {
                for item in group.split(['}', ',']) {
                    let head = item.trim().split("::").next().unwrap_or("");
                    if names.contains(head) {
                        out.insert(head.to_string());
                    }
                }
            } else {
                let head: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if names.contains(&head) {
                    out.insert(head);
                }
            }
        }
    }
    out
}

/// A cycle in `edges`, if any, as the path that closes it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn dfs(
        u: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(u.to_string(), 1);
        stack.push(u.to_string());
        for v in edges.get(u).into_iter().flatten() {
            match state.get(v.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == v).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(v.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = dfs(v, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(u.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for u in edges.keys() {
        if !state.contains_key(u.as_str())
            && let Some(c) = dfs(u, edges, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The module a path under `src/` belongs to at `depth` below `dir` (file stem or directory).
fn module_of(rel_to_dir: &str) -> String {
    let first = rel_to_dir.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn no_import_cycles_between_modules() {
    // Top level: the modules `src/lib.rs` declares.
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let top: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(&src()) {
        let r = rel(&f);
        if r == "lib.rs" || r == "main.rs" || r.starts_with("bin/") {
            continue;
        }
        let m = module_of(&r);
        let refs = crate_refs(&std::fs::read_to_string(&f).unwrap(), &top);
        edges
            .entry(m.clone())
            .or_default()
            .extend(refs.into_iter().filter(|x| *x != m));
    }
    assert_eq!(
        find_cycle(&edges),
        None,
        "import cycle between src/ modules"
    );
    // Inside every directory module: its files and subdirectories, `mod.rs` (declarations,
    // re-exports and the shared types of the directory) excepted.
    let mut dirs: BTreeSet<PathBuf> = rust_files(&src())
        .iter()
        .map(|f| f.parent().unwrap().to_path_buf())
        .collect();
    dirs.remove(&src());
    for d in dirs {
        let dir_mod = rel(&d.join("x")).trim_end_matches("/x").replace('/', "::");
        let kids: BTreeSet<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "rs"))
            .map(|p| module_of(&p.file_name().unwrap().to_string_lossy()))
            .filter(|m| m != "mod")
            .collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in rust_files(&d) {
            let inner = f
                .strip_prefix(&d)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let m = module_of(&inner);
            if m == "mod" {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            let direct = !inner.contains('/');
            for (_, l) in code_lines(&text) {
                for k in &kids {
                    if k == &m {
                        continue;
                    }
                    let via_crate = l.contains(&format!("crate::{dir_mod}::{k}"));
                    let via_super = direct
                        && (mentions_path(l, &format!("super::{k}"))
                            || l.contains("super::{")
                                && l.split("super::{").nth(1).is_some_and(|g| {
                                    g.split(['}', ','])
                                        .any(|i| i.trim().split("::").next() == Some(k.as_str()))
                                }));
                    if via_crate || via_super {
                        edges.entry(m.clone()).or_default().insert(k.clone());
                    }
                }
            }
        }
        assert_eq!(
            find_cycle(&edges),
            None,
            "import cycle among the files of src/{}",
            rel(&d.join("x")).trim_end_matches("/x")
        );
    }
}

#[test]
fn the_codemap_agrees_with_the_tree() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let codemap = readme
        .split("## Architecture (codemap)")
        .nth(1)
        .expect("README has an Architecture (codemap) section");
    let codemap = codemap.split("\n## ").next().unwrap();
    for m in lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';'))
    {
        assert!(
            lib.contains(&format!("[`{m}`]")),
            "src/lib.rs's codemap omits `{m}`"
        );
        let is_dir = src().join(m).is_dir();
        let entry = if is_dir {
            format!("src/{m}/")
        } else {
            format!("src/{m}.rs")
        };
        assert!(codemap.contains(&entry), "README codemap omits {entry}");
    }
    // Every path the codemap names exists.
    for word in codemap.split(|c: char| c.is_whitespace() || c == '`' || c == ',' || c == '(') {
        if let Some(p) = word.strip_prefix("src/") {
            let p = p.trim_end_matches([':', ')', '.', ';']);
            assert!(
                src().join(p).exists(),
                "README codemap names src/{p}, which does not exist"
            );
        }
    }
}

#[test]
fn source_files_stay_small() {
    // Files allowed above the guide, and why (tables of data, or a reason to keep together).
    const LARGE: &[(&str, &str)] = &[(
        "api/policy.rs",
        "the route table: one row per route (9 lines each once formatted), kept in one place so the guard, the router and the OpenAPI document read the same rows",
    )];
    for f in rust_files(&src()) {
        let r = rel(&f);
        // Test modules at the end of a file do not count.
        let n = std::fs::read_to_string(&f)
            .unwrap()
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        if LARGE.iter().any(|(a, _)| *a == r) {
            continue;
        }
        assert!(
            n <= 650,
            "src/{r} has {n} lines: split it by job (guide: ~600), or list it in LARGE with a reason"
        );
    }
}

#[test]
fn the_readme_invariants_name_exactly_the_rules_tidy_enforces() {
    let me = std::fs::read_to_string(file!()).unwrap_or_else(|_| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tidy.rs"))
            .unwrap()
    });
    let tests: BTreeSet<String> = me
        .split("#[test]\nfn ")
        .skip(1)
        .map(|t| t.split('(').next().unwrap().to_string())
        .collect();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let inv = readme
        .split("Invariants (")
        .nth(1)
        .expect("README has an Invariants list");
    let inv = inv.split("\n## ").next().unwrap();
    let named: BTreeSet<String> = inv
        .split("tidy: `")
        .skip(1)
        .map(|t| t.split('`').next().unwrap().to_string())
        .collect();
    assert_eq!(
        named, tests,
        "README's Invariants must name (`tidy: <test>`) exactly the tests in tests/tidy.rs"
    );
}
