//! The receiver under hostile input, on a real broker: every single-byte flip of an envelope is
//! rejected (and never receipted), as are a wrong recipient and an unknown appliance; 1,000
//! resends of one envelope store it once and are each receipted; the same bundle id with other
//! content raises a conflict alarm (once, however often it is resent) and is not receipted.

mod common;

use common::Appliance;
use common::broker::wait_for;
use common::cloud::{Pki, Receiver, envelope_meta as meta};
use common::mqtt::TestClient;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::crypto::seal::{self, Receipt, ReceiptStatus, RecipientSecretKey};
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::sync::ReceiverKeys;

const BODY: &[u8] = br#"{"resourceType":"Bundle","type":"collection","entry":[]}"#;

fn rejects_total(stats: &serde_json::Value) -> u64 {
    stats["rejects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_u64().unwrap())
        .sum()
}

/// An appliance paired with a receiver on a real broker (TLS for the receiver, plain for the
/// test's publisher).
struct Fixture {
    _pki: Pki,
    _cloud: common::broker::Broker,
    plain_port: u16,
    _a: Appliance,
    r: Receiver,
    app: String,
    signer: std::sync::Arc<SigningKey>,
    rk: ReceiverKeys,
    topic: String,
}

impl Fixture {
    /// `edit` rewrites the receiver's configuration file before it starts.
    fn start(edit: impl Fn(String) -> String) -> Fixture {
        let pki = Pki::new();
        let (cloud, plain_port) = pki.broker();
        let a = Appliance::init();
        let r = Receiver::init(&pki, &cloud);
        let text = std::fs::read_to_string(r.config()).unwrap();
        std::fs::write(r.config(), edit(text)).unwrap();
        r.pair(&a);
        let cfg = a.config();
        let app = cfg.appliance_id.clone();
        let signer = Keyring::load(KeySources::from_env(&cfg.keys.dir))
            .unwrap()
            .signing;
        let rk = ReceiverKeys::load(&cfg)
            .unwrap()
            .expect("receiver keys installed");
        let topic = format!("hema3n/v1/edge/{app}/bundles");
        Fixture {
            _pki: pki,
            _cloud: cloud,
            plain_port,
            _a: a,
            r,
            app,
            signer,
            rk,
            topic,
        }
    }

    /// Starts the receiver and a publisher subscribed to receipts.
    fn run(&self) -> (common::cloud::Proc, TestClient) {
        let recv = self.r.spawn();
        let mut pubc = TestClient::connect(self.plain_port, "tamper-publisher", None);
        pubc.subscribe("hema3n/v1/edge/+/receipts");
        wait_for(20, "receiver subscribed", || {
            self.r.log().contains("subscribed to bundles").then_some(())
        });
        (recv, pubc)
    }
}

#[test]
fn tampered_replayed_and_misaddressed_envelopes_are_handled_as_specified() {
    let f = Fixture::start(|c| c);
    let (r, app, signer, rk, topic) = (&f.r, &f.app, &f.signer, &f.rk, &f.topic);
    let (mut recv, mut pubc) = f.run();

    let good_meta = meta(app, 1);
    let good = seal::seal(&good_meta, BODY, &rk.hpke, signer).unwrap();
    // 1. Every single-byte flip.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        pubc.publish(topic, bad);
    }
    // 2. Sealed to another receiver's key.
    let other = RecipientSecretKey::generate().0;
    pubc.publish(
        topic,
        seal::seal(&meta(app, 2), BODY, other.public(), signer).unwrap(),
    );
    // 3. An appliance nobody registered.
    let stranger = SigningKey::from_pkcs8("s", &SigningKey::generate_pkcs8().unwrap()).unwrap();
    pubc.publish(
        "hema3n/v1/edge/amb-unknown/bundles",
        seal::seal(&meta("amb-unknown", 1), BODY, &rk.hpke, &stranger).unwrap(),
    );
    // 3b. An appliance nobody registered, sealed to another receiver: refused for who sent it
    // (its key is looked up before anything opened is reported), not for whom it was for.
    pubc.publish(
        "hema3n/v1/edge/amb-unknown/bundles",
        seal::seal(&meta("amb-unknown", 2), BODY, other.public(), &stranger).unwrap(),
    );
    // 4. Not an envelope at all.
    pubc.publish(topic, b"{}".to_vec());
    // 5. The good envelope, 1,000 times.
    for _ in 0..1000 {
        pubc.publish(topic, good.clone());
    }
    // 6. Same bundle id, different content.
    let conflicting = seal::seal(
        &good_meta,
        b"{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"entry\":[{}]}",
        &rk.hpke,
        signer,
    )
    .unwrap();
    // Sent twice: logged each time, one alarm (per distinct conflicting envelope).
    pubc.publish(topic, conflicting.clone());
    pubc.publish(topic, conflicting);
    pubc.flush();

    let want_rejects = good.len() as u64 + 4;
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
    // A flipped byte of the signed part is a signature failure, never a failed decryption:
    // what opening found counts only once the signature verified.
    assert!(!codes.contains(&"DECRYPT_FAILED"), "{codes:?}");
    let count = |code: &str| {
        stats["rejects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r[0] == code)
            .map(|r| r[1].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(count("UNKNOWN_APPLIANCE"), 2, "{stats}");
    assert_eq!(count("WRONG_RECIPIENT"), 1, "{stats}");

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
    let conflict_lines = || {
        r.log()
            .lines()
            .filter(|l| {
                l.contains("same bundle id with different content") && l.contains("CONFLICT")
            })
            .count()
    };
    wait_for(
        30,
        "both conflicting envelopes logged with their code",
        || (conflict_lines() == 2).then_some(()),
    );
    assert_eq!(
        r.stats()["conflicts"],
        1,
        "a resent conflict raised a second alarm"
    );
    assert!(recv.stop().success(), "{}", r.log());
}

#[test]
fn revocation_holds_for_the_next_envelope_and_twins_and_oversized_envelopes_are_refused() {
    // A small envelope bound so that the test client can exceed it.
    let f = Fixture::start(|text| {
        assert!(text.contains("max_envelope_bytes = 16777216"), "{text}");
        text.replace(
            "max_envelope_bytes = 16777216",
            "max_envelope_bytes = 65536",
        )
    });
    let (r, app, signer, rk, topic) = (&f.r, &f.app, &f.signer, &f.rk, &f.topic);
    let (mut recv, mut pubc) = f.run();
    // The high-S twin of a genuine envelope arrives first: refused, never receipted; the
    // genuine one is then stored normally (review: non-canonical signatures).
    let genuine = seal::seal(&meta(app, 1), BODY, &rk.hpke, signer).unwrap();
    let mut twin = genuine.clone();
    let at = twin.len() - 64;
    hema3n_edge::crypto::sign::flip_s(&mut twin[at..]);
    pubc.publish(topic, twin);
    pubc.publish(topic, genuine.clone());
    // Over the size bound: refused unread.
    pubc.publish(topic, vec![0u8; 70_000]);
    pubc.flush();
    let (t, payload) = pubc.next(30).expect("a receipt for the genuine envelope");
    assert!(t.ends_with("/receipts"));
    let rc = Receipt::verify(&payload, &rk.signing).unwrap();
    assert_eq!(rc.envelope_sha256, hema3n_edge::crypto::sha256(&genuine));
    let stats = wait_for(30, "twin and oversized refused", || {
        let s = r.stats();
        (rejects_total(&s) == 2).then_some(s)
    });
    let codes = stats["rejects"].to_string();
    assert!(
        codes.contains("BAD_SIGNATURE") && codes.contains("TOO_LARGE"),
        "{codes}"
    );
    // Revoked while the receiver stays connected: the very next envelope is refused.
    r.ok(&["appliances", "revoke", app]);
    pubc.publish(
        topic,
        seal::seal(&meta(app, 2), BODY, &rk.hpke, signer).unwrap(),
    );
    pubc.flush();
    wait_for(30, "revoked appliance refused", || {
        let s = r.stats();
        (rejects_total(&s) == 3 && s["rejects"].to_string().contains("UNKNOWN_APPLIANCE"))
            .then_some(())
    });
    assert!(pubc.next(2).is_none(), "nothing receipted after revocation");
    assert_eq!(r.stats()["bundles"], 1);
    assert!(recv.stop().success(), "{}", r.log());
}
