//! The crew tablet in a real browser: headless Debian Chromium driven by Playwright
//! (tests/browser/flow.cjs) against the real daemon over HTTPS, with a real broker, a simulated
//! monitor, the ONNX model and the cloud receiver. Screenshots go to docs/screenshots/.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::broker::{Broker, wait_for};
use common::cloud::synced_appliance;
use common::{Appliance, BIN, model_dir, ort_lib};

const PIN: &str = "pin-7391";
const IDLE_SECS: u64 = 20;

fn add_user(a: &Appliance, id: &str, role: &str) {
    let mut c = a.cmd(&[
        "users",
        "add",
        id,
        "--name",
        &format!("Demo {role}"),
        "--role",
        role,
    ]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{PIN}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crew_flow_in_chromium() {
    let node_modules = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/node/node_modules");
    assert!(
        node_modules.join("playwright-core").exists() && Path::new("/usr/bin/chromium").exists(),
        "playwright-core or chromium missing: run ./scripts/test.sh (installs both)"
    );
    let broker = Broker::start();
    let (a, receiver, _cloud, _pki) = synced_appliance(
        &broker,
        &format!(
            "[triage]\nonnxruntime_library = \"{}\"\nmodel_dir = \"{}\"\ndebounce_ms = 50\n[api]\nidle_timeout_secs = {IDLE_SECS}\n",
            ort_lib().display(),
            model_dir().display()
        ),
    );
    let _rx = receiver.spawn();
    add_user(&a, "medic1", "paramedic");
    add_user(&a, "desk1", "staff");
    a.ok(&["devices", "add", "mon-1"]);
    let _daemon = a.start_daemon();
    let port = a.api_port();
    // The monitor publishes before the crew binds it (its readings wait, encrypted, unbound).
    let mut sim = Command::new(BIN)
        .args(["--config"])
        .arg(a.config_path())
        .args([
            "simulate",
            "--broker",
            &broker.url(),
            "--device-prefix",
            "mon-",
            "--devices",
            "1",
            "--scenario",
            "sepsis",
            "--interval-ms",
            "500",
            "--duration-secs",
            "300",
            "--scenario-secs",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(30, "first readings of the simulated monitor", || {
        (a.query_i64("SELECT count(*) FROM observations WHERE device_id = 'mon-1'") > 0)
            .then_some(())
    });
    let shots = std::env::var("HEMA3N_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| a.tmp.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/flow.cjs"))
        .env("NODE_PATH", &node_modules)
        .env("H3N_URL", format!("https://127.0.0.1:{port}/"))
        .env("H3N_USER", "medic1")
        .env("H3N_STAFF", "desk1")
        .env("H3N_PIN", PIN)
        .env("H3N_TERRITORY", "default")
        .env("H3N_IDLE_SECS", IDLE_SECS.to_string())
        .env("H3N_SHOTS", &shots)
        .output()
        .unwrap();
    let _ = sim.kill();
    let _ = sim.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("[browser] ok"),
        "browser flow failed:\n{stdout}\n{}\n--- daemon log (tail) ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.daemon_log()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What the browser did is in the audit trail: logins, the idle logoff, the staff denial.
    assert!(a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'login.success'") >= 2);
    let trail: String = a
        .open()
        .raw_connection_for_tests()
        .query_row(
            "SELECT group_concat(action || ':' || details, ' | ') FROM audit_log WHERE actor = 'medic1' AND action LIKE 'log%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        trail.contains("logout:"),
        "medic1's session must end server-side: {trail}"
    );
    assert!(
        a.query_i64(
            "SELECT count(*) FROM audit_log WHERE action = 'access.denied' AND actor = 'desk1'"
        ) >= 1
    );
    assert_eq!(
        a.query_i64("SELECT count(*) FROM cases WHERE status = 'closed'"),
        1
    );
}
