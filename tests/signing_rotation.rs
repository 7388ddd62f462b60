//! Appliance signing-key rotation across the real daemon and receiver: a new key is staged and
//! registered at the receiver beside the old one, activated with the daemon stopped; an envelope
//! sealed before the change (old key, delivered after it) and one sealed after it (new key, its
//! audit trail reaching back to checkpoints of the old key) are both verified and receipted
//! without an audit alarm; `audit verify` and backup verification still accept the old key's
//! signatures; a receiver that no longer accepts the new key refuses its envelopes, naming it.

mod common;

use common::Appliance;
use common::broker::{Broker, wait_for};
use common::cloud::{Pki, Receiver, enable_sync};
use hema3n_edge::crypto::seal;

fn receipted(a: &Appliance) -> i64 {
    a.query_i64("SELECT count(*) FROM outbox WHERE state = 'receipted' AND kind = 'bundle'")
}

/// Signer key id (hex) of the sealed envelope of `case`, once it is sealed.
fn signer_of(a: &Appliance, case: &str) -> String {
    wait_for(30, "the case bundle sealed", || {
        let db = a.open();
        let env: Option<Vec<u8>> = db
            .raw_connection_for_tests()
            .query_row(
                "SELECT e.envelope FROM outbox o JOIN outbox_envelopes e USING (bundle_id) \
                 WHERE o.case_id = ?1 AND o.kind = 'bundle'",
                [case],
                |r| r.get(0),
            )
            .ok();
        env.map(|e| hex::encode(seal::parse(&e).unwrap().header.signer_key_id))
    })
}

fn key_id_of_pem(pem: &str) -> String {
    let k = hema3n_edge::crypto::sign::PublicKey::from_pem(pem).unwrap();
    hex::encode(seal::key_id8(&k.0))
}

#[test]
fn bundles_signed_before_and_after_a_signing_key_change_are_verified() {
    let onboard = Broker::start();
    let pki = Pki::new();
    let (cloud, _) = pki.broker();
    let r = Receiver::init(&pki, &cloud);
    let a = Appliance::with_broker(&onboard.url(), "[triage]\nenabled = false\n");
    r.pair(&a);
    enable_sync(&a, &pki, &cloud, "");
    let id = a.config().appliance_id;
    let old_pem = a.ok(&["keys", "export-public"]);
    let case = |name: &str| a.soak(1, name).remove(0).1;
    let (before, after) = (case("Before"), case("After"));

    // Sealed under the old key while the receiver is down.
    let mut daemon = a.start_daemon();
    a.ok(&["cases", "close", &before]);
    assert_eq!(signer_of(&a, &before), key_id_of_pem(&old_pem));

    // Stage (daemon running), register at the receiver, activate with the daemon stopped.
    let new_pem_file = a.tmp.path().join("next.pem");
    a.ok(&[
        "keys",
        "rotate-signing",
        "--out",
        new_pem_file.to_str().unwrap(),
    ]);
    let new_pem = std::fs::read_to_string(&new_pem_file).unwrap();
    assert_ne!(key_id_of_pem(&new_pem), key_id_of_pem(&old_pem));
    let o = a.run(&["keys", "rotate-signing", "--activate"]);
    assert!(
        !o.status.success(),
        "activation refuses while the daemon runs"
    );
    r.ok(&["appliances", "add-key", &id, new_pem_file.to_str().unwrap()]);
    assert!(daemon.stop().success());
    let backup = a.tmp.path().join("before.backup");
    a.ok(&["backup", "--out", backup.to_str().unwrap()]);
    a.ok(&["keys", "rotate-signing", "--activate"]);
    // A backup signed with the former key still verifies (its public half is kept).
    assert!(
        a.ok(&["restore", backup.to_str().unwrap(), "--verify-only"])
            .starts_with("OK")
    );
    assert_eq!(a.ok(&["keys", "export-public"]), new_pem);
    assert!(!a.key_dir().join("appliance-signing.next.p8").exists());
    let listed = r.ok(&["appliances", "list"]);
    assert!(
        listed.contains(&format!("also key {} (overlap)", {
            let k = hema3n_edge::crypto::sign::PublicKey::from_pem(&old_pem).unwrap();
            k.key_id()
        })),
        "{listed}"
    );

    // Sealed under the new key; both delivered once the receiver runs.
    let mut daemon = a.start_daemon();
    a.ok(&["cases", "close", &after]);
    assert_eq!(signer_of(&a, &after), key_id_of_pem(&new_pem));
    let _rx = r.start();
    wait_for(60, "both bundles receipted", || {
        (receipted(&a) == 2).then_some(())
    });
    let stats = r.stats();
    assert_eq!(stats["audit_alarms"], 0, "{}", r.log());
    assert_eq!(stats["rejects"], serde_json::json!([]), "{stats}");
    assert!(daemon.stop().success());
    let verify = a.ok(&["audit", "verify"]);
    assert!(verify.starts_with("OK"), "{verify}");
    assert_eq!(
        a.query_i64("SELECT count(*) FROM audit_log WHERE action = 'keys.rotate_signing'"),
        1
    );

    // Replaced outright by the old key (as for a compromised key): the new key's envelopes are
    // refused, naming the key.
    let old_file = a.tmp.path().join("old.pem");
    std::fs::write(&old_file, &old_pem).unwrap();
    r.ok(&["appliances", "add", &id, old_file.to_str().unwrap()]);
    let third = case("Third");
    let mut daemon = a.start_daemon();
    a.ok(&["cases", "close", &third]);
    wait_for(60, "the new key's envelope refused", || {
        r.log()
            .lines()
            .find(|l| l.contains("not a registered key of appliance"))
            .map(str::to_string)
    });
    assert_eq!(receipted(&a), 2);
    assert!(daemon.stop().success());
}
