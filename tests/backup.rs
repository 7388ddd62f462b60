//! Backup and restore (`hema3n-edge backup`, `restore`): an online backup taken while a device
//! streams into the running daemon restores to a database that passes its integrity check and
//! audit verify and holds every reading committed before the backup began; a backup with one
//! changed byte — in its manifest, its signature or its database — is refused before anything
//! is replaced; a running daemon's database is never replaced.

mod common;

use std::path::Path;

use common::Appliance;
use common::broker::{Broker, wait_for};
use common::mqtt::Stream;
use hema3n_edge::model::now_ms;

fn pre_restore_files(a: &Appliance) -> Vec<String> {
    std::fs::read_dir(&a.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".pre-restore-"))
        .collect()
}

#[test]
fn a_backup_taken_during_ingest_restores_every_reading_committed_before_it() {
    let broker = Broker::start();
    let a = Appliance::streaming(&broker);
    let mut daemon = a.start_daemon();

    // `accepted` counts what the broker PUBACKed: committed by the daemon.
    let base = now_ms() - 60_000;
    let device = Stream::start(broker.port, "pump-1", base);
    let stored = || a.pump_readings();
    wait_for(60, "the stream under way", || {
        (stored() >= 300).then_some(())
    });

    let file = a.tmp.path().join("edge.backup");
    let committed_before = device.accepted();
    let out = a.ok(&["backup", "--out", file.to_str().unwrap(), "--json"]);
    let manifest: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let at_end = device.accepted();
    // The daemon kept committing during and after the backup.
    wait_for(60, "ingest going on after the backup", || {
        (stored() > at_end + 100).then_some(())
    });
    let total = device.stop();
    assert_eq!(manifest["format"], "hema3n-backup/1");
    assert_eq!(
        manifest["size"].as_u64().unwrap(),
        std::fs::metadata(&file).unwrap().len() - manifest_end(&file) as u64,
        "the database part is as long as the manifest says"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the backup file is private");
    assert!(
        a.ok(&["check"]).contains("last backup 0.0 h ago"),
        "check reports the backup"
    );

    // A running daemon's database is never replaced.
    let r = a.run(&["restore", file.to_str().unwrap()]);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("in use by a running daemon"), "{err}");
    assert!(pre_restore_files(&a).is_empty());
    assert!(daemon.stop().success());

    let out = a.ok(&["restore", file.to_str().unwrap()]);
    assert!(out.contains("audit log verified"), "{out}");
    assert_eq!(
        pre_restore_files(&a).len(),
        1,
        "the replaced database is kept"
    );
    let restored = stored();
    eprintln!(
        "backup during ingest: {committed_before} acknowledged before it began, {at_end} when it \
         ended, {restored} in the copy, {total} in all"
    );
    assert!(
        restored >= committed_before,
        "restored {restored} readings, {committed_before} were committed before the backup began"
    );
    // At most one chunk of 25 is committed but not yet counted as acknowledged.
    assert!(
        restored <= at_end + 25 && restored < total,
        "the copy is the snapshot ({restored} readings; {at_end} acknowledged when it ended, {total} in all)"
    );
    // Exactly the readings of the snapshot: a contiguous range from the first.
    let (lo, hi) = (
        a.query_i64("SELECT min(device_time) FROM observations WHERE device_id = 'pump-1'"),
        a.query_i64("SELECT max(device_time) FROM observations WHERE device_id = 'pump-1'"),
    );
    assert_eq!((lo, hi), (base, base + restored - 1), "a gap in the copy");
    assert!(a.open().integrity_check(false).unwrap().is_empty());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    let actions = a.query_text(
        "SELECT group_concat(action, ',') FROM (SELECT action FROM audit_log \
         WHERE action LIKE 'backup.%' ORDER BY seq)",
    );
    // The restored log ends with the restore; the backup's own entry came after its snapshot.
    assert_eq!(actions, "backup.restore");

    // The daemon runs on the restored database and takes the stream up again.
    let mut daemon = a.start_daemon();
    assert!(daemon.stop().success());
}

/// Where the database part of a backup file starts.
fn manifest_end(file: &Path) -> usize {
    let b = std::fs::read(file).unwrap();
    let len = u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
    let sig = u16::from_be_bytes(b[12 + len..14 + len].try_into().unwrap()) as usize;
    14 + len + sig
}

#[test]
fn a_backup_with_one_changed_byte_or_of_another_appliance_is_refused_before_anything_changes() {
    let a = Appliance::init();
    a.soak(20, "Backup");
    let file = a.tmp.path().join("edge.backup");
    a.ok(&["backup", "--out", file.to_str().unwrap()]);
    let good = std::fs::read(&file).unwrap();
    let ok = a.ok(&["restore", "--verify-only", file.to_str().unwrap()]);
    assert!(ok.starts_with("OK: "), "{ok}");
    let head = || a.query_i64("SELECT seq FROM audit_head WHERE id = 1");
    let before = head();

    let len = u32::from_be_bytes(good[8..12].try_into().unwrap()) as usize;
    let data = manifest_end(&file);
    let bad = a.tmp.path().join("bad.backup");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("header", flip(&good, 3), "not a HEMA3N backup"),
        (
            "manifest",
            flip(&good, 12 + len / 2),
            "signature does not verify",
        ),
        (
            "signature",
            flip(&good, 14 + len + 10),
            "signature does not verify",
        ),
        ("database, first byte", flip(&good, data), "SHA-256"),
        (
            "database, middle",
            flip(&good, (data + good.len()) / 2),
            "SHA-256",
        ),
        (
            "database, last byte",
            flip(&good, good.len() - 1),
            "SHA-256",
        ),
        (
            "truncated",
            good[..good.len() - 1].to_vec(),
            "truncated or extended",
        ),
        (
            "extended",
            [good.as_slice(), b"x"].concat(),
            "truncated or extended",
        ),
        (
            "cut in the manifest",
            good[..12 + len / 2].to_vec(),
            "not a complete",
        ),
    ];
    for (what, bytes, want) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        for verify_only in [true, false] {
            let mut args = vec!["restore"];
            if verify_only {
                args.push("--verify-only");
            }
            args.push(bad.to_str().unwrap());
            let r = a.run(&args);
            let err = String::from_utf8_lossy(&r.stderr);
            assert!(!r.status.success(), "{what}: accepted");
            assert!(err.contains(want), "{what}: want `{want}` in: {err}");
        }
        assert!(
            pre_restore_files(&a).is_empty(),
            "{what}: the database was replaced"
        );
        assert_eq!(head(), before, "{what}: the live database changed");
        assert!(
            !a.dir.join("edge.db.restore").exists(),
            "{what}: a staged copy was left behind"
        );
    }

    // Another appliance's backup: its signing key is not ours.
    let other = Appliance::init();
    let theirs = other.tmp.path().join("theirs.backup");
    other.ok(&["backup", "--out", theirs.to_str().unwrap()]);
    let r = a.run(&["restore", theirs.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(err.contains("another appliance"), "{err}");
    assert_eq!(head(), before);

    // A timer's run: named by time into a directory, the newest N kept.
    let dir = a.tmp.path().join("backups");
    for _ in 0..3 {
        a.ok(&["backup", "--out-dir", dir.to_str().unwrap(), "--keep", "2"]);
    }
    let mut kept: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter()
            .all(|n| n.starts_with("edge-hema3n-dev-2") && n.ends_with("Z.backup")),
        "{kept:?}"
    );
    let newest = dir.join(&kept[1]);
    assert!(
        a.ok(&["restore", "--verify-only", newest.to_str().unwrap()])
            .starts_with("OK")
    );
    let r = a.run(&["backup", "--keep", "2", "--out", bad.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(78), "--keep needs --out-dir");
    assert!(String::from_utf8_lossy(&r.stderr).contains("needs --out-dir"));

    // The unchanged file restores.
    let out = a.ok(&["restore", file.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
}

fn flip(b: &[u8], at: usize) -> Vec<u8> {
    let mut v = b.to_vec();
    v[at] ^= 0x01;
    v
}

/// The patients of the soak, found by blind index and decrypted (index key, territory keys and
/// data keys all at work).
fn soak_patients(a: &Appliance, last_name: &str) -> Vec<String> {
    let mut db = a.open();
    let found = db
        .search_patients(
            &hema3n_edge::model::Actor::cli(),
            "default",
            &hema3n_edge::storage::PatientQuery {
                last_name: Some(last_name.to_lowercase()),
                ..Default::default()
            },
        )
        .unwrap();
    let mut ids: Vec<String> = found
        .into_iter()
        .map(|p| {
            assert_eq!(p.patient.last_name.as_deref(), Some(last_name));
            p.id
        })
        .collect();
    ids.sort();
    ids
}

/// `keys recover SEALED --escrow-key KEY`.
fn recover_args<'a>(sealed: &'a Path, key: &'a Path) -> [&'a str; 5] {
    [
        "keys",
        "recover",
        sealed.to_str().unwrap(),
        "--escrow-key",
        key.to_str().unwrap(),
    ]
}

#[test]
fn escrowed_keys_and_a_backup_bring_a_lost_appliance_back() {
    let a = Appliance::init();
    let mut committed: Vec<String> = a.soak(12, "Escrow").into_iter().map(|(p, _)| p).collect();
    committed.sort();
    assert_eq!(soak_patients(&a, "Escrow"), committed);

    // The agency's escrow key, made once and kept offline.
    let agency = a.tmp.path().join("agency");
    a.ok(&["keys", "escrow-keygen", "--out", agency.to_str().unwrap()]);
    let escrow_key = agency.join("escrow.key");
    let sealed = a.tmp.path().join("amb.escrow");
    let out = a.ok(&[
        "keys",
        "escrow",
        "--to",
        agency.join("escrow-public.key").to_str().unwrap(),
        "--out",
        sealed.to_str().unwrap(),
    ]);
    assert!(out.contains("sealed 5 key files"), "{out}");
    let raw = std::fs::read(&sealed).unwrap();
    let db_key = std::fs::read(a.key_dir().join("db.key")).unwrap();
    assert!(
        !common::contains(&raw, &db_key) && !common::contains(&raw, db_key.trim_ascii()),
        "a key in the clear in the escrow file"
    );
    let backup = a.tmp.path().join("amb.backup");
    a.ok(&["backup", "--out", backup.to_str().unwrap()]);

    // While the appliance still has its keys, recovering refuses to overwrite nothing but
    // identical files — and another escrow key does not open the file.
    let other = a.tmp.path().join("other-agency");
    a.ok(&["keys", "escrow-keygen", "--out", other.to_str().unwrap()]);
    let r = a.run(&recover_args(&sealed, &other.join("escrow.key")));
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("sealed to escrow key"));
    std::fs::remove_file(a.key_dir().join("index.key")).unwrap();
    std::fs::write(a.key_dir().join("index.key"), [b'0'; 64]).unwrap();
    common::cloud::set_private(&a.key_dir().join("index.key"));
    let r = a.run(&recover_args(&sealed, &escrow_key));
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("exists with another key"), "{err}");

    // The vehicle is lost: no keys, no database.
    std::fs::remove_dir_all(a.key_dir()).unwrap();
    for e in std::fs::read_dir(&a.dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("edge.db")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let out = a.ok(&recover_args(&sealed, &escrow_key));
    assert!(out.contains("recovered 5 key files"), "{out}");
    let out = a.ok(&["restore", backup.to_str().unwrap()]);
    assert!(out.contains("there was no database to replace"), "{out}");
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    let check = a.run(&["check"]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert_eq!(soak_patients(&a, "Escrow"), committed);
}
