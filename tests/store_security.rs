//! Acceptance of the encrypted store: no plaintext PHI on disk or in logs, refusal of wrong,
//! missing or plaintext databases with exit 78, location-bound field ciphertexts, key rotation
//! and crypto-erase — all through the real binary and real SQLCipher files.

mod common;

use serde_json::json;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use common::{Appliance, contains, files_below};
use hema3n_edge::model::{Actor, Address, Patient};
use hema3n_edge::storage::{PatientQuery, StoreError};

const SENTINEL: &str = "Qxyzzyplughsentinel";

#[test]
fn sentinel_patient_name_is_in_no_file_and_no_log() {
    let a = Appliance::init();
    // The daemon runs (debug logging) while a second process writes PHI.
    let mut daemon = a
        .cmd(&["run"])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(daemon.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "daemon exited before ready:\n{log}"
        );
        log.push_str(&line);
        if line.contains("ready") {
            break;
        }
    }
    let soak = a.run(&["debug", "soak", "--count", "40", "--last-name", SENTINEL]);
    assert!(soak.status.success());
    // Read the records back (decrypting) so read paths also get logged at debug level.
    let ids = common::parse_committed(&String::from_utf8_lossy(&soak.stdout));
    assert_eq!(ids.len(), 40);
    let mut db = a.open();
    let found = db
        .search_patients(
            &Actor::cli(),
            "default",
            &PatientQuery {
                last_name: Some(SENTINEL.to_lowercase()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        found.len(),
        40,
        "blind-index search finds all sentinel patients"
    );
    assert_eq!(found[0].patient.last_name.as_deref(), Some(SENTINEL));
    // The care record too: sections, an event, a correction history, a draft, the NEMSIS export.
    let case = &ids[0].1;
    let who = Actor::cli();
    let o = hema3n_edge::storage::WriteOpts::default();
    use hema3n_edge::model::record::{EventKind, Section};
    db.patch_section(
        &who,
        case,
        Section::Narrative,
        &json!({"text": format!("{SENTINEL} narrative")}),
        o,
    )
    .unwrap();
    db.patch_section(
        &who,
        case,
        Section::History,
        &json!({"allergies": [SENTINEL], "medical_history": [SENTINEL]}),
        o,
    )
    .unwrap();
    db.patch_section(
        &who,
        case,
        Section::Disposition,
        &json!({"destination": SENTINEL, "transfer_to": SENTINEL}),
        o,
    )
    .unwrap();
    let now = hema3n_edge::model::now_ms();
    let w = db
        .add_event(
            &who,
            case,
            EventKind::Procedure,
            &json!({"at_ms": now, "procedure": "iv_access", "successful": true, "note": SENTINEL}),
            o,
        )
        .unwrap();
    db.void_entry(&who, case, &w.entry_id, SENTINEL, o).unwrap();
    db.save_draft(&who, case, "narrative", &json!({"text": SENTINEL}))
        .unwrap();
    let x = db.disclose_case(&who, case, "nemsis-3.5.1").unwrap();
    assert_eq!(x.record.versions.len(), 5);
    drop(db);
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    let status = daemon.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    log.push_str(&rest);
    assert!(status.success(), "daemon exit {status:?}:\n{log}");

    let mut logs = log.into_bytes();
    logs.extend_from_slice(&soak.stderr);
    let needles = [
        SENTINEL.to_string(),
        SENTINEL.to_lowercase(),
        SENTINEL.to_uppercase(),
        "soak complaint".into(),
    ];
    for n in &needles {
        assert!(!contains(&logs, n.as_bytes()), "`{n}` found in logs");
    }
    let files = files_below(&a.dir);
    assert!(files.iter().any(|p| p.ends_with("edge.db")));
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for n in &needles {
            assert!(
                !contains(&bytes, n.as_bytes()),
                "`{n}` found in {}",
                f.display()
            );
        }
    }
    let head = std::fs::read(a.db_path()).unwrap();
    assert_ne!(
        &head[..16],
        b"SQLite format 3\0",
        "database must be encrypted"
    );
    let mode = std::fs::metadata(a.db_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn sentinel_is_absent_from_wal_left_by_a_killed_writer() {
    let a = Appliance::init();
    let mut w = a
        .cmd(&["debug", "soak", "--last-name", SENTINEL])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(w.stdout.take().unwrap());
    for _ in 0..25 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
    }
    w.kill().unwrap();
    w.wait().unwrap();
    let wal = a.dir.join("edge.db-wal");
    assert!(
        wal.exists() && std::fs::metadata(&wal).unwrap().len() > 0,
        "a killed writer leaves a WAL"
    );
    for f in files_below(&a.dir) {
        assert!(
            !contains(&std::fs::read(&f).unwrap(), SENTINEL.as_bytes()),
            "sentinel in {}",
            f.display()
        );
    }
}

#[test]
fn wrong_database_key_exits_78_naming_the_key_and_the_fix() {
    let a = Appliance::init();
    a.soak(2, "Keyed");
    let key = a.key_dir().join("db.key");
    std::fs::remove_file(&key).unwrap();
    std::fs::write(&key, format!("{}\n", "17".repeat(32))).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    for args in [
        &["run"][..],
        &["audit", "verify"],
        &["debug", "soak", "--count", "1"],
    ] {
        let o = a.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(78), "{args:?}: {err}");
        assert!(
            err.contains("db.key")
                && err.contains("does not open")
                && err.contains("restore the db.key"),
            "{err}"
        );
        assert!(
            err.contains("created with key id"),
            "message names the expected key id: {err}"
        );
    }
    let o = a.run(&["check"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL    database"));
}

#[test]
fn missing_database_key_exits_78_naming_where_it_looked() {
    let a = Appliance::init();
    std::fs::remove_file(a.key_dir().join("db.key")).unwrap();
    let o = a.run(&["run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("`db.key` not found")
            && err.contains(&a.key_dir().display().to_string())
            && err.contains("provision"),
        "{err}"
    );
    // init refuses to mint a new key for an existing database.
    let o = std::process::Command::new(common::BIN)
        .args(["init", "--data-dir"])
        .arg(&a.dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("restore that key"));
}

#[test]
fn group_readable_key_file_is_refused() {
    let a = Appliance::init();
    std::fs::set_permissions(
        a.key_dir().join("audit.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = a.run(&["run"]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("chmod 600"));
}

#[test]
fn plaintext_database_is_refused_with_exit_78() {
    let a = Appliance::init();
    std::fs::remove_file(a.db_path()).unwrap();
    let py = format!(
        "import sqlite3; c = sqlite3.connect('{}'); c.execute('create table t(x)'); c.commit()",
        a.db_path().display()
    );
    assert!(
        std::process::Command::new("python3")
            .args(["-c", &py])
            .status()
            .unwrap()
            .success()
    );
    let o = a.run(&["run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("unencrypted SQLite file"), "{err}");
}

#[test]
fn corrupt_database_is_refused_with_exit_78() {
    let a = Appliance::init();
    a.soak(3, "Corrupt");
    let mut bytes = std::fs::read(a.db_path()).unwrap();
    for b in &mut bytes[100..300] {
        *b ^= 0x5a;
    }
    std::fs::write(a.db_path(), bytes).unwrap();
    let o = a.run(&["run"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn field_ciphertext_moved_to_another_row_or_column_fails_to_decrypt() {
    let a = Appliance::init();
    let ids = a.soak(2, "Mover");
    let (p1, p2) = (&ids[0].0, &ids[1].0);
    let mut db = a.open();
    let actor = Actor::cli();
    assert_eq!(
        db.get_patient(&actor, p2)
            .unwrap()
            .patient
            .last_name
            .as_deref(),
        Some("Mover")
    );
    let conn = db.raw_connection_for_tests();
    // Same data key, other column: first_name := last_name of the same row.
    conn.execute(
        "UPDATE patients SET first_name = last_name WHERE id = ?1",
        [p1],
    )
    .unwrap();
    // Other row: p2.ssn := p1.ssn.
    conn.execute(
        "UPDATE patients SET ssn = (SELECT ssn FROM patients WHERE id = ?1) WHERE id = ?2",
        [p1, p2],
    )
    .unwrap();
    let e1 = db.get_patient(&actor, p1).unwrap_err();
    assert!(matches!(e1, StoreError::Crypto(_)), "{e1:?}");
    assert_eq!(
        e1.to_string(),
        format!(
            "field patients.first_name of row {p1} failed authentication (moved, edited or wrong key)"
        )
    );
    let e2 = db.get_patient(&actor, p2).unwrap_err();
    assert!(
        e2.to_string()
            .contains(&format!("field patients.ssn of row {p2}")),
        "{e2}"
    );
    // The failed reads are audited, and the log still verifies.
    let rep = db.verify_audit().unwrap();
    assert!(rep.ok(), "{:?}", rep.findings);
    drop(db);
    let out = a.ok(&["audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
}

#[test]
fn patient_round_trips_and_is_found_by_blind_indexes() {
    let a = Appliance::init();
    let mut db = a.open();
    let actor = Actor::new("medic-1", "paramedic");
    let p = Patient {
        first_name: Some("Ana".into()),
        last_name: Some("O'Brien-Núñez".into()),
        date_of_birth: Some("1984-02-29".into()),
        mrn: Some("MRN-0042".into()),
        address: Some(Address {
            city: Some("Springfield".into()),
            zip: Some("12345".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = db.create_patient(&actor, "default", &p).unwrap();
    assert_eq!(db.get_patient(&actor, &id).unwrap().patient, p);
    let q = |l: Option<&str>, d: Option<&str>, m: Option<&str>| PatientQuery {
        last_name: l.map(Into::into),
        date_of_birth: d.map(Into::into),
        mrn: m.map(Into::into),
    };
    for query in [
        q(Some("obrien nunez"), None, None),
        q(None, Some("1984-02-29"), None),
        q(None, None, Some("mrn0042")),
        q(Some("OBRIENNUNEZ"), Some("1984-02-29"), None),
    ] {
        let hits = db.search_patients(&actor, "default", &query).unwrap();
        assert_eq!(hits.len(), 1, "{query:?}");
        assert_eq!(hits[0].id, id);
    }
    assert!(
        db.search_patients(&actor, "default", &q(Some("Brien"), None, None))
            .unwrap()
            .is_empty()
    );
    assert!(
        db.search_patients(
            &actor,
            "default",
            &q(Some("obrien nunez"), Some("1984-03-01"), None)
        )
        .unwrap()
        .is_empty()
    );
    let bad = Patient {
        date_of_birth: Some("1984-02-30".into()),
        ..Default::default()
    };
    assert!(matches!(
        db.create_patient(&actor, "default", &bad),
        Err(StoreError::InvalidPhi(_))
    ));
}

#[test]
fn key_rotation_with_three_versions_keeps_everything_readable_then_retires_old_versions() {
    let a = Appliance::init();
    let mut ids = a.soak(3, "Rot");
    assert!(a.ok(&["keys", "rotate", "--no-rewrap"]).contains("v2"));
    ids.extend(a.soak(3, "Rot"));
    assert!(a.ok(&["keys", "rotate", "--no-rewrap"]).contains("v3"));
    ids.extend(a.soak(3, "Rot"));
    let list = a.ok(&["keys", "list"]);
    let rows: Vec<Vec<String>> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{list}");
    for r in &rows {
        assert_eq!(
            r[5], "6",
            "each version wraps 3 patient + 3 case keys: {list}"
        );
    }
    let read_all = |a: &Appliance| {
        let mut db = a.open();
        for (p, c) in &ids {
            assert_eq!(
                db.get_patient(&Actor::cli(), p)
                    .unwrap()
                    .patient
                    .last_name
                    .as_deref(),
                Some("Rot")
            );
            assert!(
                db.get_case(&Actor::cli(), c)
                    .unwrap()
                    .details
                    .chief_complaint
                    .is_some()
            );
        }
    };
    read_all(&a);
    let o = a.run(&["keys", "retire", "--version", "1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("still wraps 6 data keys"));
    assert!(
        a.ok(&["keys", "rewrap"])
            .contains("re-wrapped 12 data keys under v3")
    );
    a.ok(&["keys", "retire", "--version", "1"]);
    a.ok(&["keys", "retire", "--version", "2"]);
    let o = a.run(&["keys", "retire", "--version", "3"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("current version"));
    std::fs::remove_file(a.key_dir().join("territory.default.v1.key")).unwrap();
    std::fs::remove_file(a.key_dir().join("territory.default.v2.key")).unwrap();
    read_all(&a);
    let check = a.ok(&["check"]);
    assert!(
        check.contains("(retired) key version default/v1"),
        "{check}"
    );
    a.ok(&["audit", "verify"]);
}

#[test]
fn rotation_while_the_daemon_runs_is_picked_up_without_restart() {
    let a = Appliance::init();
    let ids = a.soak(1, "Live");
    let mut daemon = a.cmd(&["run"]).stderr(Stdio::piped()).spawn().unwrap();
    let mut err = BufReader::new(daemon.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0);
    }
    a.ok(&["keys", "rotate"]);
    a.soak(1, "Live");
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success());
    let mut db = a.open();
    assert!(db.get_patient(&Actor::cli(), &ids[0].0).is_ok());
}

#[test]
fn crypto_erase_destroys_a_case_and_its_patient_but_nothing_else() {
    let a = Appliance::init();
    let ids = a.soak(2, "Erase");
    let mut db = a.open();
    let actor = Actor::cli();
    db.erase_case(&actor, &ids[0].1).unwrap();
    assert!(matches!(
        db.get_case(&actor, &ids[0].1),
        Err(StoreError::Erased { .. })
    ));
    assert!(matches!(
        db.get_patient(&actor, &ids[0].0),
        Err(StoreError::Erased { .. })
    ));
    assert!(db.get_case(&actor, &ids[1].1).is_ok());
    assert!(db.get_patient(&actor, &ids[1].0).is_ok());
    let wrapped: Option<Vec<u8>> = db
        .raw_connection_for_tests()
        .query_row(
            "SELECT wrapped FROM data_keys d JOIN cases c ON c.dk_id = d.id WHERE c.id = ?1",
            [&ids[0].1],
            |r| r.get(0),
        )
        .unwrap();
    assert!(wrapped.is_none(), "the data key itself is gone");
    assert!(db.verify_audit().unwrap().ok());
}
