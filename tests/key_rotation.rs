//! Database key rotation through the real binary and SQLCipher files: `keys rekey-db` re-encrypts
//! the database under a new `db.key` (data stays readable, integrity check and audit verify pass,
//! the former key no longer opens it), refuses while the daemon runs, and finishes a run that was
//! interrupted between the rekey and the key file. `keys rotate-index` rebuilds every blind
//! index under a new index key (search keeps working, the stored indexes change) and likewise
//! finishes an interrupted run.

mod common;

use common::Appliance;
use hema3n_edge::crypto::keyring::{KeySources, Keyring, parse_key32};
use hema3n_edge::model::Actor;
use hema3n_edge::storage::{Db, PatientQuery, StoreError};

fn patients(a: &Appliance) -> i64 {
    a.query_i64("SELECT count(*) FROM patients")
}

#[test]
fn the_database_key_rotates_and_an_interrupted_rotation_finishes() {
    let broker = common::broker::Broker::start();
    let a = Appliance::with_broker(&broker.url(), "[triage]\nenabled = false\n");
    let committed = a.soak(3, "Rekey");
    assert_eq!(committed.len(), 3);
    let old = std::fs::read(a.key_dir().join("db.key")).unwrap();

    // Not while the daemon runs.
    let mut daemon = a.start_daemon();
    let o = a.run(&["keys", "rekey-db"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(daemon.stop().success());

    let out = a.ok(&["keys", "rekey-db"]);
    assert!(out.contains("database re-encrypted under db.key"), "{out}");
    let new = std::fs::read(a.key_dir().join("db.key")).unwrap();
    assert_ne!(new, old);
    assert!(!a.key_dir().join("db.key.next").exists());
    assert_eq!(patients(&a), 3, "data readable under the new key");
    let check = a.ok(&["check"]);
    assert!(check.contains("ok      integrity check"), "{check}");
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'keys.rekey_db'"),
        1
    );
    // The former key opens nothing any more.
    let cfg = a.config();
    let mut keys = Keyring::load(KeySources::from_env(&cfg.keys.dir)).unwrap();
    keys.db_key = parse_key32("old", &old).unwrap();
    assert!(matches!(
        Db::open(&cfg, keys),
        Err(StoreError::WrongKey { .. })
    ));

    // Interrupted after the rekey, before the key file moved: db.key is the former key, the
    // new one waits as db.key.next. The next run only finishes the file.
    let out = a.ok(&["keys", "rekey-db"]);
    assert!(out.contains("re-encrypted"), "{out}");
    let third = std::fs::read(a.key_dir().join("db.key")).unwrap();
    std::fs::rename(a.key_dir().join("db.key"), a.key_dir().join("db.key.next")).unwrap();
    std::fs::write(a.key_dir().join("db.key"), &new).unwrap();
    common::cloud::set_private(&a.key_dir().join("db.key"));
    let out = a.ok(&["keys", "rekey-db"]);
    assert!(out.contains("already opens under"), "{out}");
    assert_eq!(std::fs::read(a.key_dir().join("db.key")).unwrap(), third);
    assert_eq!(patients(&a), 3);
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    let mut daemon = a.start_daemon();
    assert!(daemon.stop().success());
}

fn found(a: &Appliance, last_name: &str) -> usize {
    let q = PatientQuery {
        last_name: Some(last_name.into()),
        ..Default::default()
    };
    a.open()
        .search_patients(&Actor::cli(), "default", &q)
        .unwrap()
        .len()
}

fn bi_of_first(a: &Appliance) -> Vec<u8> {
    a.open()
        .raw_connection_for_tests()
        .query_row(
            "SELECT bi_last_name FROM patients ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn the_index_key_rotates_with_every_blind_index_rebuilt() {
    let a = Appliance::init();
    a.soak(3, "Indexed");
    assert_eq!(found(&a, "Indexed"), 3);
    let (old_key, old_bi) = (
        std::fs::read(a.key_dir().join("index.key")).unwrap(),
        bi_of_first(&a),
    );

    let out = a.ok(&["keys", "rotate-index"]);
    assert!(out.contains("blind indexes of 3 patients rebuilt"), "{out}");
    let new_key = std::fs::read(a.key_dir().join("index.key")).unwrap();
    assert_ne!(new_key, old_key);
    assert_ne!(bi_of_first(&a), old_bi, "the index changed with the key");
    assert!(!a.key_dir().join("index.key.next").exists());
    assert_eq!(found(&a, "Indexed"), 3, "search works under the new key");
    assert_eq!(found(&a, "Other"), 0);
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'keys.rotate_index'"),
        1
    );

    // Interrupted after the rebuild, before the key file moved: the rerun only moves the file.
    a.ok(&["keys", "rotate-index"]);
    let third = std::fs::read(a.key_dir().join("index.key")).unwrap();
    std::fs::rename(
        a.key_dir().join("index.key"),
        a.key_dir().join("index.key.next"),
    )
    .unwrap();
    std::fs::write(a.key_dir().join("index.key"), &new_key).unwrap();
    common::cloud::set_private(&a.key_dir().join("index.key"));
    assert_eq!(found(&a, "Indexed"), 0, "the stale key finds nothing");
    let out = a.ok(&["keys", "rotate-index"]);
    assert!(out.contains("already rebuilt"), "{out}");
    assert_eq!(std::fs::read(a.key_dir().join("index.key")).unwrap(), third);
    assert_eq!(found(&a, "Indexed"), 3);
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'keys.rotate_index'"),
        2
    );
}

#[test]
fn the_audit_key_rotates_and_the_former_key_still_verifies_its_entries() {
    let a = Appliance::init();
    a.soak(2, "Before");
    let old = std::fs::read(a.key_dir().join("audit.key")).unwrap();
    let out = a.ok(&["keys", "rotate-audit"]);
    assert!(
        out.contains("retired as audit.") && out.contains("is current"),
        "{out}"
    );
    let new = std::fs::read(a.key_dir().join("audit.key")).unwrap();
    assert_ne!(new, old);
    assert!(!a.key_dir().join("audit.key.next").exists());
    let retired: Vec<_> = std::fs::read_dir(a.key_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.") && n != "audit.key")
        .collect();
    assert_eq!(retired.len(), 1, "{retired:?}");
    let retired = a.key_dir().join(&retired[0]);
    assert_eq!(std::fs::read(&retired).unwrap(), old);
    a.soak(2, "After");
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'keys.rotate_audit'"),
        1
    );
    // Without the former key the entries it MAC'd no longer verify; the newer ones still do.
    let kept = a.tmp.path().join("kept.key");
    std::fs::rename(&retired, &kept).unwrap();
    let o = a.run(&["audit", "verify"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && text.contains("MAC is invalid"),
        "{text}"
    );
    assert!(text.contains("entry 1"), "the first entry is named: {text}");
    std::fs::rename(&kept, &retired).unwrap();
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
}
