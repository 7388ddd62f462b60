//! Triage in the case flow, through the real daemon: a bound monitor's vitals are re-triaged
//! (debounced), stored with model id, hash and reasons, and never less acute than the rules.
//! Without a usable runtime or model the daemon stays up in rules-only mode.

mod common;

use common::broker::{Broker, wait_for};
use common::{Appliance, dev_model_key, model_dir, ort_lib};

fn triage_appliance(
    broker: &Broker,
    library: &str,
    models: &std::path::Path,
) -> (Appliance, String) {
    let a = Appliance::with_broker(
        &broker.url(),
        &format!(
            "[triage]\nonnxruntime_library = \"{library}\"\nmodel_dir = \"{}\"\nmodel_signing_keys = [\"{}\"]\ndebounce_ms = 50\n",
            models.display(),
            dev_model_key()
        ),
    );
    a.ok(&["devices", "add", "mon-1"]);
    let case = a.soak(1, "Triage")[0].1.clone();
    a.ok(&["devices", "bind", "mon-1", &case]);
    (a, case)
}

fn triage_rows(a: &Appliance, case: &str) -> i64 {
    a.query_i64(&format!(
        "SELECT count(*) FROM triage_results WHERE case_id = '{case}'"
    ))
}

#[test]
fn a_deteriorating_patient_is_retriaged_by_the_model_behind_the_rules_floor() {
    let broker = Broker::start();
    let (a, case) = triage_appliance(&broker, &ort_lib().display().to_string(), &model_dir());
    let mut daemon = a.start_daemon();
    assert!(
        a.daemon_log().contains("model loaded"),
        "{}",
        a.daemon_log()
    );
    a.simulate_monitors(&broker, "shock", 20);
    wait_for(30, "a triage result", || {
        (triage_rows(&a, &case) >= 1).then_some(())
    });
    let out = a.ok(&["triage", "show", &case]);
    assert!(out.starts_with("latest: ESI "), "{out}");
    assert!(out.contains("model hema3n-core-1.0.0 sha256 "), "{out}");
    assert!(out.contains("  - ESI ≤ "), "reasons are listed: {out}");
    // The floor holds for every stored result, and the model took part.
    assert_eq!(
        a.query_i64(&format!(
            "SELECT count(*) FROM triage_results WHERE case_id = '{case}' AND final_esi > rules_esi"
        )),
        0
    );
    assert!(a.query_i64(&format!("SELECT count(*) FROM triage_results WHERE case_id = '{case}' AND decider != 'rules_only'")) >= 1);
    // Late in the shock course the patient is ESI 1 or 2.
    let last = a.query_i64(&format!(
        "SELECT final_esi FROM triage_results WHERE case_id = '{case}' ORDER BY id DESC LIMIT 1"
    ));
    assert!(last <= 2, "{out}");
    assert!(a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'triage.record'") >= 1);
    assert!(daemon.stop().success());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
}

#[test]
fn without_the_runtime_library_the_daemon_runs_rules_only() {
    let broker = Broker::start();
    let (a, case) = triage_appliance(&broker, "/nonexistent/libonnxruntime.so.1", &model_dir());
    let mut daemon = a.start_daemon();
    let log = a.daemon_log();
    assert!(
        log.contains("RULES-ONLY") && log.contains("cannot load ONNX Runtime from /nonexistent"),
        "{log}"
    );
    a.simulate_monitors(&broker, "sepsis", 5);
    wait_for(30, "a rules-only triage", || {
        (a.query_i64(&format!("SELECT count(*) FROM triage_results WHERE case_id = '{case}' AND decider = 'rules_only' AND model_id IS NULL")) >= 1).then_some(())
    });
    assert!(
        a.ok(&["triage", "show", &case])
            .contains("model abstained: no model loaded (rules-only mode)")
    );
    let check = a.run(&["check"]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("RULES-ONLY"));
    assert!(daemon.running());
}

#[test]
fn a_tampered_model_is_refused_and_the_daemon_runs_rules_only() {
    let broker = Broker::start();
    let models = tempfile::tempdir().unwrap();
    for f in [
        "manifest.toml",
        "manifest.sig",
        "hema3n-core.int8.onnx",
        "hema3n-core.fp32.onnx",
    ] {
        std::fs::copy(model_dir().join(f), models.path().join(f)).unwrap();
    }
    let p = models.path().join("hema3n-core.int8.onnx");
    let mut b = std::fs::read(&p).unwrap();
    let n = b.len();
    b[n - 10] ^= 0x40;
    std::fs::write(&p, b).unwrap();
    let (a, case) = triage_appliance(&broker, &ort_lib().display().to_string(), models.path());
    let mut daemon = a.start_daemon();
    assert!(
        a.daemon_log().contains("does not match its manifest"),
        "{}",
        a.daemon_log()
    );
    a.simulate_monitors(&broker, "stable", 5);
    wait_for(30, "a rules-only triage", || {
        (a.query_i64(&format!("SELECT count(*) FROM triage_results WHERE case_id = '{case}' AND decider = 'rules_only'")) >= 1).then_some(())
    });
    assert!(daemon.running());
}
