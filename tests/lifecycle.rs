//! Key and certificate lifecycle (#20 item 3): a territory key older than
//! `keys.rotate_after_days` makes `check` warn and the daemon raise `key_rotation_due`, which the
//! automatic rotation (`keys rotate --if-due`, what hema3n-rotate-keys.timer runs) clears while
//! the daemon runs; a tablet certificate within `keys.certificate_warn_days` of its expiry makes
//! `check` warn and the daemon raise `certificate_expiring`; an expired one fails `check`.

mod common;

use common::Appliance;
use common::broker::Broker;
use hema3n_edge::model::{Actor, now_ms};

const DAY_MS: i64 = 86_400_000;

#[test]
fn a_territory_key_past_its_age_raises_the_alarm_until_the_timer_rotates_it() {
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "[triage]\nenabled = false\n");
    let ids = a.soak(3, "Age");
    let check = a.ok(&["check"]);
    assert!(
        check.contains("ok      territory `default` key v1 is 0 days old (rotate after 90)"),
        "{check}"
    );
    // What hema3n-rotate-keys.timer runs daily: nothing is due yet.
    let out = a.ok(&["keys", "rotate", "--if-due"]);
    assert_eq!(
        out.trim(),
        "no territory key is due (keys.rotate_after_days = 90)"
    );
    a.open()
        .raw_connection_for_tests()
        .execute(
            "UPDATE key_versions SET created_at = created_at - ?1",
            [91 * DAY_MS],
        )
        .unwrap();
    let check = a.ok(&["check"]);
    assert!(
        check.contains("warn    territory `default` key v1 is 91 days old (rotate after 90: due"),
        "{check}"
    );

    let mut daemon = a.start_daemon();
    let detail = a.raised_alarm("key_rotation_due");
    assert!(detail.contains("default v1 is 91 days old"), "{detail}");
    assert!(detail.contains("hema3n-rotate-keys.timer"), "{detail}");

    // An admin who turned automatic rotation off keeps the alarm and the key.
    let off = a.dir.join("edge.d/50-no-auto-rotation.toml");
    std::fs::write(&off, "[keys]\nauto_rotate = false\n").unwrap();
    let out = a.ok(&["keys", "rotate", "--if-due"]);
    assert!(
        out.contains("`default` v1 (91 days old)") && out.contains("automatic rotation is off"),
        "{out}"
    );
    assert_eq!(a.query_i64("SELECT max(version) FROM key_versions"), 1);
    std::fs::remove_file(&off).unwrap();

    // Due and on, while the daemon runs (plain keys: it finds the new file itself).
    let out = a.ok(&["keys", "rotate", "--if-due"]);
    assert!(
        out.contains("territory `default`: created key version v2")
            && out.contains("territory `default`: re-wrapped 6 data keys under v2"),
        "{out}"
    );
    assert_eq!(
        a.query_i64("SELECT count(*) FROM data_keys WHERE kek_version = 1"),
        0
    );
    // The alarm clears at once (the rotation re-evaluated it), audited.
    assert_eq!(a.open_alarms("key_rotation_due"), 0);
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'keys.rotate'"),
        1
    );
    // New records are wrapped under v2, old ones read under v2.
    a.soak(1, "Age");
    assert_eq!(
        a.query_i64("SELECT count(*) FROM data_keys WHERE kek_version = 2"),
        8
    );
    let check = a.ok(&["check"]);
    assert!(
        check.contains("ok      territory `default` key v2 is 0 days old"),
        "{check}"
    );
    assert!(daemon.stop().success());
    let mut db = a.open();
    for (p, _) in &ids {
        let got = db.get_patient(&Actor::cli(), p).unwrap();
        assert_eq!(got.patient.last_name.as_deref(), Some("Age"));
    }
    drop(db);
    assert_eq!(
        a.query_i64(
            "SELECT count(*) FROM audit_log WHERE action IN ('alarm.raise', 'alarm.clear')"
        ),
        2,
        "raised and cleared once each, audited"
    );
    // The next day's run has nothing to do.
    let out = a.ok(&["keys", "rotate", "--if-due"]);
    assert!(out.starts_with("no territory key is due"), "{out}");
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
}

#[test]
fn a_certificate_near_its_expiry_warns_and_raises_the_alarm_and_an_expired_one_fails_check() {
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "");
    let check = a.ok(&["check"]);
    assert!(check.contains("ok      api certificate"), "{check}");

    common::tablet_cert_until(&a, now_ms() + 12 * DAY_MS);
    let check = a.ok(&["check"]);
    assert!(
        check.contains("warn    api certificate") && check.contains("warn within 30)"),
        "{check}"
    );
    let mut daemon = a.start_daemon();
    let detail = a.raised_alarm("certificate_expiring");
    assert!(detail.contains("api certificate expires in 1"), "{detail}");
    assert!(daemon.stop().success());

    common::tablet_cert_until(&a, now_ms() - 2 * DAY_MS);
    let out = a.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL    api certificate"), "{text}");
}
