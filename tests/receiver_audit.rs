//! Audit checkpoints verified in the cloud, end to end: a real daemon seals case bundles whose
//! audit trail the real receiver recomputes against the checkpoint signed at sealing. A trail
//! whose entries were edited, dropped, or re-chained (and signed again) on the appliance, and an
//! appliance replaying an older checkpoint, each raise an `audit_trail` alarm naming what failed,
//! while the bundle's clinical content is still stored and receipted.

mod common;

use common::Appliance;
use common::broker::{Broker, wait_for};
use common::cloud::{Pki, Receiver, enable_sync, envelope_meta};
use common::mqtt::TestClient;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::crypto::seal;
use hema3n_edge::sync::ReceiverKeys;

const UNLOCK: &str =
    "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;";

fn receipted(a: &Appliance) -> i64 {
    a.query_i64("SELECT count(*) FROM outbox WHERE state = 'receipted'")
}

fn bundle_of(a: &Appliance, case: &str) -> String {
    a.query_text(&format!(
        "SELECT bundle_id FROM outbox WHERE case_id = '{case}' AND kind = 'bundle'"
    ))
}

/// The receiver's alarm line for `bundle` (waits for it).
fn finding(r: &Receiver, bundle: &str) -> String {
    wait_for(30, "the audit-trail alarm", || {
        r.log()
            .lines()
            .find(|l| l.contains("AUDIT_TRAIL") && l.contains(bundle))
            .map(str::to_string)
    })
}

#[test]
fn tampered_trails_and_a_replayed_checkpoint_are_alarmed_and_the_bundles_kept() {
    let onboard = Broker::start();
    let pki = Pki::new();
    let (cloud, plain_port) = pki.broker();
    let r = Receiver::init(&pki, &cloud);
    let a = Appliance::with_broker(&onboard.url(), "[triage]\nenabled = false\n");
    r.pair(&a);
    enable_sync(&a, &pki, &cloud, "");
    // A tampered entry lies in the trail of every case open when it was written (its segment
    // spans it), so the cases are created in an order that gives each bundle one fault: the
    // case losing an entry first, then the untouched and the edited one, and the re-chained one
    // after both faults but before the checkpoints of steps 2 are signed.
    let case = |name: &str| a.soak(1, name).remove(0).1;
    let dropped = &case("Dropped");
    let (ok, edited) = (&case("Fine"), &case("Edited"));
    let _recv = r.start();
    let stats = |k: &str| r.stats()[k].as_u64().unwrap();

    // 1. An untouched case verifies.
    let mut daemon = a.start_daemon();
    a.ok(&["cases", "close", ok]);
    wait_for(60, "first bundle receipted", || {
        (receipted(&a) == 1).then_some(())
    });
    assert_eq!(stats("audit_alarms"), 0, "{}", r.log());
    let (_, metrics) = r.http_get("/metrics");
    assert!(
        metrics.contains("hema3n_receiver_audit_trails_total{result=\"verified\"} 1"),
        "{metrics}"
    );
    assert!(daemon.stop().success(), "{}", a.daemon_log());

    // 2. One case's entry edited, another's dropped, behind the appliance's back.
    let db = a.open();
    db.raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} \
             UPDATE audit_log SET details = '{{\"forged\":true}}' WHERE resource = 'case/{edited}' AND action = 'case.create'; \
             DELETE FROM audit_log WHERE resource = 'case/{dropped}' AND action = 'case.create';"
        ))
        .unwrap();
    drop(db);
    a.ok(&["cases", "close", edited]);
    a.ok(&["cases", "close", dropped]);
    let forged = &case("Forged");
    let mut daemon = a.start_daemon();
    wait_for(60, "three bundles receipted", || {
        (receipted(&a) == 3).then_some(())
    });
    let f = finding(&r, &bundle_of(&a, edited));
    assert!(f.contains("do not chain to signed checkpoint"), "{f}");
    let f = finding(&r, &bundle_of(&a, dropped));
    assert!(f.contains("entries were dropped or added"), "{f}");
    assert!(daemon.stop().success(), "{}", a.daemon_log());

    // 3. A case's entry rewritten and the chain recomputed with the audit key: the checkpoint
    // signed at sealing covers the forgery, but the chain no longer passes through the
    // checkpoints the cloud saw with the bundles of step 2.
    let first: i64 = a.query_i64(&format!(
        "SELECT min(seq) FROM audit_log WHERE resource = 'case/{forged}'"
    ));
    let db = a.open();
    db.raw_connection_for_tests()
        .execute_batch(&format!(
            "{UNLOCK} UPDATE audit_log SET actor = 'cli:mallory' WHERE seq = {first};"
        ))
        .unwrap();
    // The chain recomputed with the audit key, MACs included.
    let key = KeySources::from_env(&a.key_dir())
        .read_key32("audit.key")
        .unwrap()
        .1;
    common::rechain(&db, first, Some(key.as_ref()));
    drop(db);
    a.ok(&["cases", "close", forged]);
    let mut daemon = a.start_daemon();
    wait_for(60, "four bundles receipted", || {
        (receipted(&a) == 4).then_some(())
    });
    let f = finding(&r, &bundle_of(&a, forged));
    assert!(f.contains("two different chain heads"), "{f}");
    assert!(daemon.stop().success(), "{}", a.daemon_log());

    // 4. The appliance (its key) replays the first bundle's trail, with its older checkpoint, in
    // a later envelope.
    let app = a.config().appliance_id;
    let body = r.ok(&["bundles", &format!("{app}/{}", bundle_of(&a, ok))]);
    let signer = Keyring::load(KeySources::from_env(&a.key_dir()))
        .unwrap()
        .signing;
    let rk = ReceiverKeys::load(&a.config()).unwrap().unwrap();
    let m = envelope_meta(&app, 1000);
    let replay = seal::seal(&m, body.trim_end().as_bytes(), &rk.hpke, &signer).unwrap();
    let mut pubc = TestClient::connect(plain_port, "replayer", None);
    pubc.subscribe(&format!("hema3n/v1/edge/{app}/receipts"));
    pubc.publish(&format!("hema3n/v1/edge/{app}/bundles"), replay);
    pubc.flush();
    assert!(pubc.next(30).is_some(), "the replay is receipted (kept)");
    let f = finding(&r, &uuid::Uuid::from_bytes(m.bundle_id).to_string());
    assert!(f.contains("an older checkpoint replayed"), "{f}");

    // Every bundle is stored; exactly one alarm per tampering.
    assert_eq!(stats("bundles"), 5);
    assert_eq!(stats("audit_alarms"), 4, "{}", r.log());
    assert_eq!(stats("conflicts"), 0);
    let (_, metrics) = r.http_get("/metrics");
    for want in [
        "hema3n_receiver_audit_trails_total{result=\"verified\"} 1",
        "hema3n_receiver_audit_trails_total{result=\"failed\"} 4",
        "hema3n_store_audit_alarms 4",
    ] {
        assert!(metrics.contains(want), "{want}: {metrics}");
    }
}
