//! The HIPAA self-check through the real binary, a real SQLCipher file and the real daemon:
//! `check --compliance --json` passes on a fresh appliance, and each safeguard, broken on its
//! own (idle logoff of 2 h, a shared account, break-glass off, device registration off, plaintext
//! sync over the network, an expired certificate, an edited audit entry, a missing territory
//! key, a stale backup, a key past its age, a damaged page), fails exactly its item with exit
//! code 2; the running daemon shows the same items as `/metrics` gauges.

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use common::Appliance;
use common::broker::{Broker, wait_for};
use serde_json::Value;

const DAY_MS: i64 = 86_400_000;

/// `check --compliance --json`: exit code and each item's status.
fn compliance(a: &Appliance) -> (i32, BTreeMap<String, String>, Value) {
    let o = a.run(&["check", "--compliance", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let items = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (o.status.code().unwrap(), items, v)
}

/// Breaks one safeguard with `breaks`, checks that exactly `item` fails (exit 2), then repairs.
fn only_fails(a: &Appliance, item: &str, breaks: impl FnOnce(), repairs: impl FnOnce()) {
    breaks();
    let (code, items, v) = compliance(a);
    assert_eq!(code, 2, "{item}: {v:#}");
    for (id, status) in &items {
        let want = if id == item { "fail" } else { "pass" };
        assert_eq!(status, want, "{item} broken, {id}: {v:#}");
    }
    repairs();
    let (code, _, v) = compliance(a);
    assert_eq!(code, 0, "{item} repaired: {v:#}");
}

fn dropin(a: &Appliance, name: &str, text: &str) -> impl FnOnce() + use<> {
    let p = a.dir.join("edge.d").join(name);
    std::fs::write(&p, text).unwrap();
    move || std::fs::remove_file(p).unwrap()
}

fn add_user(a: &Appliance, id: &str) {
    let mut c = a.cmd(&["users", "add", id, "--name", "A person", "--role", "emt"]);
    c.stdin(Stdio::piped()).stdout(Stdio::null());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "pin-4829").unwrap();
    assert!(child.wait().unwrap().success());
}

fn sql(a: &Appliance, s: &str) {
    a.open()
        .raw_connection_for_tests()
        .execute_batch(s)
        .unwrap();
}

#[test]
fn a_fresh_appliance_passes_and_each_broken_safeguard_fails_its_own_item() {
    let broker = Broker::start();
    // Checkpoints are signed at the daemon's stop: the CLI's own entries after it stay within
    // the hour the audit item allows for the unsigned tail.
    let a = Appliance::with_broker(
        &broker.url(),
        "[triage]\nenabled = false\n[audit]\ncheckpoint_every_secs = 3600\n",
    );
    add_user(&a, "medic7");
    a.soak(2, "Compliance");

    // The daemon evaluates at start and shows every item on /metrics.
    let mut daemon = a.start_daemon();
    let port = a.api_port();
    let cert = a.key_dir().join("api-cert.pem");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = wait_for(30, "compliance gauges", || {
        let text = rt.block_on(async {
            let tls = tokio_rustls::TlsConnector::from(
                hema3n_edge::tls::client_config(&cert, None).unwrap(),
            );
            let mut s = common::https::connect(port, &tls).await;
            let (status, body) =
                common::https::request(&mut s, "GET", "/metrics", None, None).await;
            assert_eq!(status, 200);
            String::from_utf8(body.to_vec()).unwrap()
        });
        text.contains("hema3n_compliance_status{").then_some(text)
    });
    let gauges: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("hema3n_compliance_status{"))
        .collect();
    assert_eq!(gauges.len(), 10, "{metrics}");
    assert!(
        gauges.contains(
            &"hema3n_compliance_status{item=\"automatic_logoff\",safeguard=\"164.312(a)(2)(iii)\"} 0"
        ),
        "{gauges:?}"
    );
    assert!(gauges.iter().all(|l| l.ends_with(" 0")), "{gauges:?}");
    assert!(metrics.contains("hema3n_compliance_evaluated_timestamp_seconds "));
    // Stopping signs a checkpoint over the tail of the log.
    assert!(daemon.stop().success());

    let (code, items, v) = compliance(&a);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(items.len(), 10);
    assert!(items.values().all(|s| s == "pass"), "{v:#}");
    assert_eq!(v["worst"], "pass");
    let text = a.ok(&["check", "--compliance"]);
    assert!(
        text.contains("pass    164.312(a)(2)(iii)    Automatic logoff")
            && text.contains("idle logoff after 600 s"),
        "{text}"
    );

    only_fails(
        &a,
        "automatic_logoff",
        || {},
        dropin(&a, "50-idle.toml", "[api]\nidle_timeout_secs = 7200\n"),
    );
    only_fails(
        &a,
        "unique_user_identification",
        || add_user(&a, "crew"),
        || {
            a.ok(&["users", "disable", "crew"]);
        },
    );
    only_fails(
        &a,
        "emergency_access",
        || {},
        dropin(&a, "50-bg.toml", "[api]\nbreak_glass_minutes = 0\n"),
    );
    only_fails(
        &a,
        "authentication",
        || {},
        dropin(
            &a,
            "50-devices.toml",
            "[ingest]\nrequire_registered_devices = false\n",
        ),
    );
    only_fails(
        &a,
        "transmission_security",
        || {},
        dropin(
            &a,
            "50-sync.toml",
            "[sync]\nallow_plaintext = true\ncloud_broker = \"mqtt://cloud.example.org:1883\"\n",
        ),
    );
    let cert_pem = std::fs::read(&cert).unwrap();
    let tls_key = std::fs::read(a.key_dir().join("api-tls.key")).unwrap();
    only_fails(
        &a,
        "transmission_security",
        || common::tablet_cert_until(&a, hema3n_edge::model::now_ms() - 2 * DAY_MS),
        || {
            std::fs::write(&cert, &cert_pem).unwrap();
            let k = a.key_dir().join("api-tls.key");
            std::fs::remove_file(&k).unwrap();
            std::fs::write(&k, &tls_key).unwrap();
            common::cloud::set_private(&k);
        },
    );
    // A backup, which then goes stale.
    a.ok(&["backup", "--out", a.dir.join("b1.backup").to_str().unwrap()]);
    only_fails(
        &a,
        "backups",
        || {
            sql(
                &a,
                &format!(
                    "UPDATE meta SET value = json_set(value, '$.at_ms', json_extract(value, '$.at_ms') - {}) WHERE key = 'last_backup'",
                    25 * 3_600_000
                ),
            )
        },
        || {
            a.ok(&["backup", "--out", a.dir.join("b2.backup").to_str().unwrap()]);
        },
    );
    only_fails(
        &a,
        "key_ages",
        || {
            sql(
                &a,
                &format!(
                    "UPDATE key_versions SET created_at = created_at - {}",
                    91 * DAY_MS
                ),
            )
        },
        || {
            sql(
                &a,
                &format!(
                    "UPDATE key_versions SET created_at = created_at + {}",
                    91 * DAY_MS
                ),
            )
        },
    );
    // A territory key that data keys need goes missing: their PHI cannot be decrypted.
    a.ok(&["keys", "rotate", "--no-rewrap"]);
    let v1 = a.key_dir().join("territory.default.v1.key");
    let v1_key = std::fs::read(&v1).unwrap();
    only_fails(
        &a,
        "encryption",
        || std::fs::remove_file(&v1).unwrap(),
        || {
            std::fs::write(&v1, &v1_key).unwrap();
            common::cloud::set_private(&v1);
        },
    );

    // An edited audit entry (the append-only triggers dropped by someone with the key).
    let before = a.query_text("SELECT action FROM audit_log WHERE seq = 5");
    only_fails(
        &a,
        "audit_controls",
        || {
            sql(
                &a,
                "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET action = 'patient.creatf' WHERE seq = 5;",
            )
        },
        || {
            sql(
                &a,
                &format!(
                    "UPDATE audit_log SET action = '{before}' WHERE seq = 5; \
                     CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log \
                     BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;"
                ),
            )
        },
    );
}

#[test]
fn a_damaged_database_page_fails_integrity() {
    let a = Appliance::init();
    a.soak(40, "Pages");
    let (code, items, v) = compliance(&a);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        items["unique_user_identification"], "warn",
        "no account yet: {v:#}"
    );
    assert_eq!(items["integrity"], "pass", "{v:#}");
    let db = a.db_path();
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    let last = bytes.len() / page - 1;
    bytes[last * page + page / 2] ^= 0x5a;
    std::fs::write(&db, &bytes).unwrap();
    let (code, items, v) = compliance(&a);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(items["integrity"], "fail", "{v:#}");
}

/// The privacy officer's tools through the real binary: `audit query` by patient, case, user
/// and time (entries outlive the crypto-erase of the case they describe), `audit disclosures`
/// as a FHIR Bundle the independent validator accepts and as CSV, both listing exactly the reads
/// made here, the export audited; a deleted query-index row is caught by `audit verify`.
#[test]
fn audit_query_and_the_accounting_of_disclosures_through_the_cli() {
    use hema3n_edge::model::Actor;
    let a = Appliance::init();
    let ids = a.soak(2, "Quill");
    let ((p0, c0), (p1, _)) = (&ids[0], &ids[1]);
    {
        let mut db = a.open();
        let medic = Actor::new("medic9", "paramedic");
        db.get_patient(&medic, p0).unwrap();
        db.get_case(&medic, c0).unwrap();
        db.get_patient(&medic, p1).unwrap();
        db.erase_case(&Actor::new("super9", "supervisor"), c0)
            .unwrap();
    }
    let lines = |out: &str| -> Vec<Value> {
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let q = lines(&a.ok(&["audit", "query", "--patient", p0, "--json"]));
    let actions: Vec<&str> = q.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in [
        "patient.create",
        "case.create",
        "patient.read",
        "case.read",
        "case.erase",
    ] {
        assert!(actions.contains(&want), "{want} missing: {actions:?}");
    }
    assert!(
        q.iter()
            .all(|e| e["resource"] != format!("patient/{p1}").as_str()),
        "another patient's entries: {q:?}"
    );
    assert!(
        q.windows(2)
            .all(|w| w[0]["seq"].as_i64() > w[1]["seq"].as_i64())
    );
    let by_case = lines(&a.ok(&["audit", "query", "--case", c0, "--json"]));
    assert!(by_case.iter().any(|e| e["action"] == "case.erase"));
    let mine = lines(&a.ok(&["audit", "query", "--user", "medic9", "--json"]));
    assert_eq!(mine.len(), 3, "{mine:?}");
    let none = a.ok(&["audit", "query", "--until", "2001-01-01", "--json"]);
    assert!(none.is_empty(), "{none}");
    let bad = a.run(&["audit", "query", "--since", "last week"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since"));

    // The accounting: FHIR, checked by the independent validator, and CSV.
    let f = a.dir.join("accounting.json");
    a.ok(&[
        "audit",
        "disclosures",
        "--patient",
        p0,
        "--format",
        "fhir",
        "--out",
        f.to_str().unwrap(),
    ]);
    let report = common::cloud::fhir_validate(std::slice::from_ref(&f));
    assert!(report.contains("AuditEvent=2"), "{report}");
    let b: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    let got: Vec<(&str, &str)> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            (
                r["subtype"][0]["code"].as_str().unwrap(),
                r["agent"][0]["who"]["identifier"]["value"]
                    .as_str()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(got, [("patient.read", "medic9"), ("case.read", "medic9")]);
    let csv = a.ok(&["audit", "disclosures", "--patient", p0]);
    let rows: Vec<&str> = csv.trim_end().split("\r\n").collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(
        rows[1].contains(",medic9,paramedic,read,patient.read,treatment,"),
        "{csv}"
    );
    let exports = lines(&a.ok(&["audit", "query", "--patient", p0, "--json"]))
        .into_iter()
        .filter(|e| e["action"] == "audit.disclosures")
        .count();
    assert_eq!(exports, 2);

    // A row deleted from the query index hides an access from the accounting: verify says so.
    a.ok(&["audit", "verify"]);
    // (A case entry: its patient is in the index; a patient's own entries are found by their
    // resource.)
    let seq: i64 = q.iter().find(|e| e["action"] == "case.read").unwrap()["seq"]
        .as_i64()
        .unwrap();
    sql(&a, &format!("DELETE FROM audit_subjects WHERE seq = {seq}"));
    let o = a.run(&["audit", "verify"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "first bad entry is {seq}: missing from the query index"
        )),
        "{out}"
    );
}
