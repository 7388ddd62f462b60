//! The receiver under hostile input, on a real broker: every single-byte flip of an envelope is
//! rejected (and never receipted), as are a wrong recipient and an unknown appliance; 1,000
//! resends of one envelope store it once and are each receipted; the same bundle id with other
//! content raises a conflict alarm and is not receipted.

mod common;

use common::Appliance;
use common::broker::wait_for;
use common::cloud::{Pki, Receiver};
use common::mqtt::TestClient;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::crypto::seal::{
    self, BundleKind, EnvelopeMeta, Receipt, ReceiptStatus, RecipientSecretKey,
};
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::sync::ReceiverKeys;

fn meta(appliance: &str, seq: u64) -> EnvelopeMeta {
    EnvelopeMeta {
        kind: BundleKind::Bundle,
        bundle_id: *uuid::Uuid::now_v7().as_bytes(),
        seq,
        created_at_ms: 1_800_000_000_000,
        appliance_id: appliance.into(),
    }
}

const BODY: &[u8] = br#"{"resourceType":"Bundle","type":"collection","entry":[]}"#;

fn rejects_total(stats: &serde_json::Value) -> u64 {
    stats["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap())
        .sum()
}

#[test]
fn tampered_replayed_and_misaddressed_envelopes_are_handled_as_specified() {
    let pki = Pki::new();
    let (cloud, plain_port) = pki.broker();
    let a = Appliance::init();
    let r = Receiver::init(&pki, &cloud);
    r.pair(&a);
    let cfg = a.config();
    let app = cfg.appliance_id.clone();
    let signer = Keyring::load(KeySources::from_env(&cfg.keys.dir))
        .unwrap()
        .signing;
    let rk = ReceiverKeys::load(&cfg)
        .unwrap()
        .expect("receiver keys installed");

    let mut recv = r.spawn();
    let mut pubc = TestClient::connect(plain_port, "tamper-publisher", None);
    pubc.subscribe("hema3n/v1/edge/+/receipts");
    wait_for(20, "receiver subscribed", || {
        r.log().contains("subscribed to bundles").then_some(())
    });
    let topic = format!("hema3n/v1/edge/{app}/bundles");

    let good_meta = meta(&app, 1);
    let good = seal::seal(&good_meta, BODY, &rk.hpke, &signer).unwrap();
    // 1. Every single-byte flip.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        pubc.publish(&topic, bad);
    }
    // 2. Sealed to another receiver's key.
    let other = RecipientSecretKey::generate().0;
    pubc.publish(
        &topic,
        seal::seal(&meta(&app, 2), BODY, other.public(), &signer).unwrap(),
    );
    // 3. An appliance nobody registered.
    let stranger = SigningKey::from_pkcs8("s", &SigningKey::generate_pkcs8().unwrap()).unwrap();
    pubc.publish(
        "hema3n/v1/edge/amb-unknown/bundles",
        seal::seal(&meta("amb-unknown", 1), BODY, &rk.hpke, &stranger).unwrap(),
    );
    // 4. Not an envelope at all.
    pubc.publish(&topic, b"{}".to_vec());
    // 5. The good envelope, 1,000 times.
    for _ in 0..1000 {
        pubc.publish(&topic, good.clone());
    }
    // 6. Same bundle id, different content.
    let conflicting = seal::seal(
        &good_meta,
        b"{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":[{}]}",
        &rk.hpke,
        &signer,
    )
    .unwrap();
    pubc.publish(&topic, conflicting);
    pubc.flush();

    let want_rejects = good.len() as u64 + 3;
    let stats = wait_for(120, "receiver processed everything", || {
        let s = r.stats();
        (s["bundles"] == 1
            && s["resends"] == 999
            && s["conflicts"] == 1
            && rejects_total(&s) == want_rejects)
            .then_some(s)
    });
    let codes: Vec<&str> = stats["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    for c in [
        "BAD_SIGNATURE",
        "WRONG_RECIPIENT",
        "UNKNOWN_APPLIANCE",
        "BAD_MAGIC",
    ] {
        assert!(codes.contains(&c), "{c} missing from {codes:?}");
    }

    // Exactly 1,000 receipts, all for the good envelope, all verifying; none for anything else.
    let mut stored = 0;
    let mut dups = 0;
    let sha = hema3n_edge::crypto::sha256(&good);
    for n in 0..1000 {
        let (t, payload) = pubc
            .next(30)
            .unwrap_or_else(|| panic!("receipt {n} missing"));
        assert_eq!(t, format!("hema3n/v1/edge/{app}/receipts"));
        let rc = Receipt::verify(&payload, &rk.signing).expect("receipt signature");
        assert_eq!(rc.bundle_id, good_meta.bundle_id);
        assert_eq!(rc.envelope_sha256, sha);
        match rc.status {
            ReceiptStatus::Stored => stored += 1,
            ReceiptStatus::Duplicate => dups += 1,
        }
    }
    assert_eq!((stored, dups), (1, 999));
    assert!(pubc.next(2).is_none(), "a reject or conflict was receipted");
    assert!(r.log().contains("same bundle id with different content"));
    assert!(recv.stop().success(), "{}", r.log());
}
