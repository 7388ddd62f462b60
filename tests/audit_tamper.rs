//! Audit mutation corpus: each tampering of a real SQLCipher audit log is detected by
//! `hema3n-edge audit verify`, which exits 1 and names the first bad entry.

mod common;

use common::Appliance;

/// A log of one entry per schema migration + 2 per soak line, checkpoint every 10 entries (the
/// soak length keeps entries after the last checkpoint).
fn build_log() -> (Appliance, i64) {
    let a = Appliance::init_with(&[("10-audit.toml", "[audit]\ncheckpoint_every_entries = 10\n")]);
    a.soak(17, "Audit");
    let db = a.open();
    let rep = db.verify_audit().unwrap();
    assert!(rep.ok(), "{:?}", rep.findings);
    assert!(
        rep.last_seq > rep.last_checkpoint_seq,
        "entries exist after the last checkpoint"
    );
    assert!(rep.checkpoints >= 3);
    (a, rep.last_seq)
}

const UNLOCK: &str = "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;";

fn verify_fails_at(a: &Appliance, seq: i64, why: &str) {
    let o = a.run(&["audit", "verify"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "verify must fail:\n{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("FAIL: first bad entry is {seq}: ")),
        "expected entry {seq}:\n{out}"
    );
    assert!(first.contains(why), "expected `{why}`:\n{out}");
}

#[test]
fn untouched_log_verifies() {
    let (a, last) = build_log();
    let out = a.ok(&["audit", "verify"]);
    assert!(out.starts_with(&format!("OK: {last} entries")), "{out}");
}

#[test]
fn deleting_a_middle_entry_is_detected() {
    let (a, _) = build_log();
    a.open()
        .raw_connection_for_tests()
        .execute_batch(&format!("{UNLOCK} DELETE FROM audit_log WHERE seq = 15;"))
        .unwrap();
    verify_fails_at(&a, 15, "missing (entries 15..15 deleted)");
}

#[test]
fn deleting_the_tail_is_detected() {
    let (a, last) = build_log();
    a.open()
        .raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} DELETE FROM audit_log WHERE seq >= {};",
            last - 1
        ))
        .unwrap();
    verify_fails_at(&a, last - 1, "tail deleted");
}

#[test]
fn reordering_entries_is_detected() {
    let (a, _) = build_log();
    a.open()
        .raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} UPDATE audit_log SET seq = -12 WHERE seq = 12; UPDATE audit_log SET seq = 12 WHERE seq = 13; \
             UPDATE audit_log SET seq = 13 WHERE seq = -12;"
        ))
        .unwrap();
    verify_fails_at(&a, 12, "does not link");
}

#[test]
fn editing_one_byte_is_detected() {
    let (a, _) = build_log();
    a.open()
        .raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} UPDATE audit_log SET action = 'patient.creatf' WHERE seq = 17;"
        ))
        .unwrap();
    verify_fails_at(&a, 17, "content was edited");
}

#[test]
fn rechaining_with_forged_hashes_is_detected() {
    let (a, _) = build_log();
    let db = a.open();
    db.raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} UPDATE audit_log SET actor = 'cli:mallory' WHERE seq = 14;"
        ))
        .unwrap();
    common::rechain(&db, 14, None);
    drop(db);
    verify_fails_at(&a, 14, "MAC is invalid");
}

#[test]
fn rechaining_even_with_the_audit_key_is_caught_by_signed_checkpoints() {
    let (a, _) = build_log();
    let db = a.open();
    db.raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} UPDATE audit_log SET outcome = 'denied' WHERE seq = 14;"
        ))
        .unwrap();
    let key = hema3n_edge::crypto::keyring::KeySources::from_env(&a.key_dir())
        .read_key32("audit.key")
        .unwrap()
        .1;
    common::rechain(&db, 14, Some(key.as_ref()));
    // Checkpoints sit every ~10 entries (where exactly depends on how many migrations wrote
    // entries first): the rewrite is pinned to the range between the checkpoints around 14.
    let cps: Vec<i64> = db
        .raw_connection_for_tests()
        .prepare("SELECT seq FROM audit_checkpoints ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let after = *cps
        .iter()
        .find(|c| **c >= 14)
        .expect("a checkpoint after entry 14");
    let before = cps.iter().rev().find(|c| **c < 14).copied().unwrap_or(0);
    drop(db);
    verify_fails_at(
        &a,
        after,
        &format!(
            "differs from its signed checkpoint (entries {}..{after} were rewritten)",
            before + 1
        ),
    );
}

#[test]
fn truncating_behind_a_checkpoint_is_detected() {
    let (a, _) = build_log();
    let db = a.open();
    // Delete from 25 on, then make the head and AUTOINCREMENT agree, as a careful attacker would.
    db.raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} DELETE FROM audit_log WHERE seq >= 25; \
             UPDATE sqlite_sequence SET seq = 24 WHERE name = 'audit_log';"
        ))
        .unwrap();
    db.raw_connection_for_tests()
        .execute_batch(
            "UPDATE audit_head SET seq = 24, hash = (SELECT hash FROM audit_log WHERE seq = 24);",
        )
        .unwrap();
    drop(db);
    verify_fails_at(&a, 25, "signed checkpoint");
}

/// Retention: entries leave only when past `audit.retention_days` *and* covered by a checkpoint
/// the cloud receipted, cut at that checkpoint; the shortened log verifies from its signed hash;
/// deleting above the cut is refused, and moving the cut without a recorded prune is caught.
/// (The bundle's envelope is opaque bytes here: retention depends only on the checkpoint the
/// bundle records and on its receipt.)
#[test]
fn retention_prunes_only_receipted_entries_past_their_age() {
    use hema3n_edge::crypto::seal::BundleKind;
    use hema3n_edge::model::{Actor, now_ms};
    const DAY: i64 = 86_400_000;
    let a = Appliance::init_with(&[("10-audit.toml", "[audit]\ncheckpoint_every_entries = 10\n")]);
    let ids = a.soak(17, "Keep");
    let mut db = a.open();
    let (now, later) = (now_ms(), now_ms() + 3 * DAY);
    let cli = Actor::cli();
    let p = db.audit_prune(&cli, later, 1, false).unwrap();
    assert_eq!(
        p.through, None,
        "nothing receipted: nothing leaves, however old"
    );

    db.close_case(&cli, &ids[0].1).unwrap();
    let env = b"opaque envelope".to_vec();
    let bid = db
        .enqueue_case_bundle(
            &Actor::system(),
            &ids[0].1,
            BundleKind::Bundle,
            |_, _, _| Ok(env.clone()),
        )
        .unwrap();
    let cp: i64 = db
        .raw_connection_for_tests()
        .query_row(
            "SELECT checkpoint_seq FROM outbox WHERE bundle_id = ?1",
            [&bid],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        cp > 10,
        "the bundle carried the checkpoint after its case's entries"
    );
    let sha = hema3n_edge::crypto::sha256(&env);
    db.outbox_apply_receipts(&[(bid, sha, b"receipt".to_vec())])
        .unwrap();
    let p = db.audit_prune(&cli, now, 1, false).unwrap();
    assert_eq!(p.through, None, "receipted but younger than a day: kept");
    let dry = db.audit_prune(&cli, later, 1, true).unwrap();
    assert_eq!((dry.through, dry.entries), (Some(cp), cp as u64));
    let p = db.audit_prune(&cli, later, 1, false).unwrap();
    assert_eq!((p.through, p.entries), (Some(cp), cp as u64));
    let first: i64 = db
        .raw_connection_for_tests()
        .query_row("SELECT min(seq) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(first, cp + 1, "cut exactly at the receipted checkpoint");
    let p = db.audit_prune(&cli, later, 1, false).unwrap();
    assert_eq!(
        p.through, None,
        "nothing past the receipted checkpoint leaves"
    );
    let cp2 = db.checkpoint_audit_if_due(later, true).unwrap().unwrap();
    let cp2_stored: i64 = db
        .raw_connection_for_tests()
        .query_row("SELECT max(seq) FROM audit_checkpoints", [], |r| r.get(0))
        .unwrap();
    assert!(cp2 > cp && cp2 == cp2_stored);
    // Above the cut the log stays append-only.
    let refused = db
        .raw_connection_for_tests()
        .execute("DELETE FROM audit_log WHERE seq = ?1", [cp + 2]);
    assert!(
        format!("{refused:?}").contains("append-only"),
        "{refused:?}"
    );
    drop(db);
    let out = a.ok(&["audit", "verify"]);
    assert!(out.starts_with("OK: "), "{out}");
    let out = a.ok(&["audit", "prune"]);
    assert!(
        out.starts_with("nothing to prune: no entry left is older than 2190 days"),
        "{out}"
    );
    let q = a.ok(&["audit", "query", "--case", &ids[0].1, "--json"]);
    assert!(q.contains("bundle.receipt"), "{q}");

    // Moving the cut by hand (someone holding the database key) is caught: no prune records it.
    a.open()
        .raw_connection_for_tests()
        .execute_batch(&format!(
            "UPDATE audit_head SET pruned_through = {cp2}; DELETE FROM audit_log WHERE seq <= {cp2};"
        ))
        .unwrap();
    verify_fails_at(&a, cp2 + 1, "no audit.prune entry records it");
}
