//! Signed model updates through the real binary and daemon: unsigned, wrongly signed, edited or
//! tampered packages are refused with the daemon keeping its model; a signed package is installed
//! and the running daemon switches at its next triage (the new artifact hash in new triage
//! records, the switch audited); rollback restores the previous hash; a restart keeps the choice.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::broker::{Broker, wait_for};
use common::{Appliance, BIN, dev_model_key, model_dir, ort_lib};

/// `model keygen --out DIR` (no appliance configuration needed); returns the public key as a
/// config value.
fn keygen(dir: &Path) -> String {
    let o = Command::new(BIN)
        .args(["model", "keygen", "--out"])
        .arg(dir)
        .env_remove("HEMA3N_CONFIG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pem = std::fs::read_to_string(dir.join("model-signing.pub")).unwrap();
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn sign(a: &Appliance, pkg: &Path, keys: &Path) {
    a.ok(&[
        "model",
        "sign",
        pkg.to_str().unwrap(),
        "--key",
        keys.join("model-signing.key").to_str().unwrap(),
    ]);
}

/// The committed model repackaged as `hema3n-core-1.0.1` whose default is the fp32 artifact
/// (so its triage records carry another artifact hash); unsigned.
fn repackage(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "hema3n-core.int8.onnx",
        "hema3n-core.fp32.onnx",
        "MODEL_CARD.md",
    ] {
        std::fs::copy(model_dir().join(f), to.join(f)).unwrap();
    }
    let m = std::fs::read_to_string(model_dir().join("manifest.toml")).unwrap();
    let m = m
        .replace(
            "model_id = \"hema3n-core-1.0.0\"",
            "model_id = \"hema3n-core-1.0.1\"",
        )
        .replace("version = \"1.0.0\"", "version = \"1.0.1\"")
        .replace("default = \"int8\"", "default = \"fp32\"");
    assert!(m.contains("hema3n-core-1.0.1") && m.contains("default = \"fp32\""));
    std::fs::write(to.join("manifest.toml"), m).unwrap();
    to.to_path_buf()
}

fn artifact_sha(variant: &str) -> String {
    let m: toml::Table =
        toml::from_str(&std::fs::read_to_string(model_dir().join("manifest.toml")).unwrap())
            .unwrap();
    m["artifacts"][variant]["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

fn latest_hash(a: &Appliance, case: &str) -> String {
    a.query_text(&format!(
        "SELECT coalesce(model_hash, '') FROM triage_results WHERE case_id = '{case}' ORDER BY id DESC LIMIT 1"
    ))
}

/// New vitals, then the next triage record carries `sha`.
fn triaged_with(a: &Appliance, broker: &Broker, case: &str, sha: &str) {
    a.simulate_monitors(broker, "shock", 4);
    wait_for(30, &format!("a triage record by artifact {sha}"), || {
        (latest_hash(a, case) == sha).then_some(())
    });
}

/// Refused with `needle` in the error; nothing switched.
fn refused(a: &Appliance, pkg: &Path, needle: &str) {
    let o = a.run(&["model", "install", pkg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!a.dir.join("models/current").exists());
}

#[test]
fn signed_models_install_switch_the_running_daemon_and_roll_back() {
    let broker = Broker::start();
    let keys = tempfile::tempdir().unwrap();
    let vendor = keygen(&keys.path().join("vendor"));
    keygen(&keys.path().join("rogue"));
    let a = Appliance::with_broker(
        &broker.url(),
        &format!(
            "[triage]\nonnxruntime_library = \"{}\"\nmodel_dir = \"{}\"\nmodel_signing_keys = [\"{}\", \"{vendor}\"]\ndebounce_ms = 50\ndeescalate_hold_secs = 0\n",
            ort_lib().display(),
            model_dir().display(),
            dev_model_key()
        ),
    );
    a.ok(&["devices", "add", "mon-1"]);
    let case = a.soak(1, "Model")[0].1.clone();
    a.ok(&["devices", "bind", "mon-1", &case]);
    let (int8, fp32) = (artifact_sha("int8"), artifact_sha("fp32"));
    let mut daemon = a.start_daemon();
    triaged_with(&a, &broker, &case, &int8);

    // Refusals: unsigned, signed by a key the appliance does not pin, manifest edited after
    // signing, artifact changed after signing.
    let work = tempfile::tempdir().unwrap();
    let pkg = repackage(&work.path().join("v101"));
    refused(&a, &pkg, "is not signed");
    sign(&a, &pkg, &keys.path().join("rogue"));
    refused(&a, &pkg, "which is not pinned");
    sign(&a, &pkg, &keys.path().join("vendor"));
    let m = std::fs::read_to_string(pkg.join("manifest.toml")).unwrap();
    std::fs::write(
        pkg.join("manifest.toml"),
        m.replace(
            "clinically_validated = false",
            "clinically_validated = true",
        ),
    )
    .unwrap();
    refused(&a, &pkg, "does not verify");
    std::fs::write(pkg.join("manifest.toml"), &m).unwrap();
    let onnx = pkg.join("hema3n-core.fp32.onnx");
    let good = std::fs::read(&onnx).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n / 2] ^= 1;
    std::fs::write(&onnx, &bad).unwrap();
    refused(&a, &pkg, "does not match its manifest");
    std::fs::write(&onnx, &good).unwrap();
    // The daemon kept the factory model throughout.
    triaged_with(&a, &broker, &case, &int8);
    assert!(a.ok(&["model", "status"]).contains(&format!(
        "active:    {} — hema3n-core-1.0.0",
        model_dir().display()
    )));

    // A good package: installed, picked up at the next triage, audited.
    let out = a.ok(&["model", "install", pkg.to_str().unwrap()]);
    assert!(out.contains("load test: hema3n-core-1.0.1 (fp32)"), "{out}");
    triaged_with(&a, &broker, &case, &fp32);
    assert!(daemon.running());
    assert_eq!(
        a.query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'model.activate' AND resource = 'model/hema3n-core-1.0.1'"
        ),
        1
    );
    let status = a.ok(&["model", "status"]);
    assert!(
        status.contains("hema3n-core-1.0.1 version 1.0.1")
            && status.contains(&format!("previous:  {}", model_dir().display())),
        "{status}"
    );

    // Rollback restores the previous model hash in new records.
    a.ok(&["model", "rollback"]);
    triaged_with(&a, &broker, &case, &int8);
    // Rolled forward again with the daemon stopped: the next start loads it.
    assert!(daemon.stop().success());
    a.ok(&["model", "rollback"]);
    let mut daemon = a.start_daemon();
    let log = a.daemon_log();
    let restarted = log.rsplit("store open").next().unwrap();
    assert!(
        restarted.contains("model loaded") && restarted.contains("hema3n-core-1.0.1"),
        "{restarted}"
    );
    triaged_with(&a, &broker, &case, &fp32);
    let check = a.ok(&["check"]);
    assert!(
        check.contains("triage model hema3n-core-1.0.1 (fp32"),
        "{check}"
    );
    assert!(daemon.stop().success());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    // Rules floor: no stored result is less acute than the rules required, whichever model.
    assert_eq!(
        a.query_i64(&format!(
            "SELECT count(*) FROM triage_results WHERE case_id = '{case}' AND final_esi > rules_esi"
        )),
        0
    );
}

#[test]
fn without_a_pinned_key_no_model_is_trusted() {
    let a = Appliance::init_with(&[(
        "30-triage.toml",
        &format!(
            "[triage]\nonnxruntime_library = \"{}\"\nmodel_dir = \"{}\"\n",
            ort_lib().display(),
            model_dir().display()
        ),
    )]);
    let o = a.run(&["model", "verify"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("triage.model_signing_keys is empty"));
    let check = a.ok(&["check"]);
    assert!(
        check.contains("RULES-ONLY") && check.contains("no model can be trusted"),
        "{check}"
    );
    let o = a.run(&["model", "rollback"]);
    assert_eq!(o.status.code(), Some(78));
}
