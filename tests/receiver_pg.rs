//! Receivers sharing one real PostgreSQL database (a cluster of its own, started by the
//! harness as a non-root user on a free port): two instances on one shared subscription store
//! each bundle once whichever instance a resend reaches, raise a conflict alarm once, reassemble
//! attachments whose parts reached different instances, keep no PHI in plaintext; a database outage is survived without losing or mis-rejecting an
//! envelope; a receiver with another `receiver-db.key`, or a newer schema, is refused; TLS to the
//! database verifies the server against the configured CA.

mod common;

use common::Appliance;
use common::broker::wait_for;
use common::cloud::{Pki, Receiver, envelope_meta as meta};
use common::mqtt::TestClient;
use common::pg::Pg;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::crypto::seal::{self, BundleKind, EnvelopeMeta, Receipt, ReceiptStatus};
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::storage::AttachmentPart;
use hema3n_edge::sync::ReceiverKeys;

/// A string that stands for PHI in the bundles; it must never reach PostgreSQL readable.
const SENTINEL: &str = "PHI-SENTINEL-Okonkwo-1957";

fn body(n: usize) -> Vec<u8> {
    format!(
        r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{{"resourceType":"Patient","name":[{{"family":"{SENTINEL}"}}],"id":"p{n}"}}}}]}}"#
    )
    .into_bytes()
}

/// The part envelopes of one attachment (16 KiB parts, caption and file bytes carrying the
/// sentinel); `wrong_hash` declares a SHA-256 the parts do not make up. (bundle id, envelope)
fn attachment(
    c: &Cloud,
    file: &[u8],
    id: &str,
    wrong_hash: bool,
    seq0: u64,
) -> Vec<([u8; 16], Vec<u8>)> {
    let sha = common::sha256_hex(if wrong_hash { b"another file" } else { file });
    let chunks: Vec<&[u8]> = file.chunks(16 * 1024).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let plain = hema3n_edge::sync::attachment_wire::encode(&AttachmentPart {
                attachment_id: id,
                case_id: "case-1",
                kind: "photo",
                media_type: "image/jpeg",
                caption: Some(SENTINEL),
                filename: Some("scene.jpg"),
                sha256: &sha,
                created_at_ms: 1_800_000_000_000,
                created_by: "medic-1",
                stripped: &[],
                orientation: None,
                size: file.len() as u64,
                part: i as u32,
                parts: chunks.len() as u32,
                offset: (i * 16 * 1024) as u64,
                data,
            });
            let mut m = meta(&c.app, seq0 + i as u64);
            m.kind = BundleKind::Attachment;
            (m.bundle_id, c.seal(&m, &plain))
        })
        .collect()
}

struct Cloud {
    pg: Pg,
    pki: Pki,
    cloud: common::broker::Broker,
    plain_port: u16,
    _a: Appliance,
    r: Receiver,
    app: String,
    signer: std::sync::Arc<SigningKey>,
    rk: ReceiverKeys,
}

impl Cloud {
    fn new() -> Cloud {
        let pg = Pg::start();
        let pki = Pki::new();
        let (cloud, plain_port) = pki.broker();
        let a = Appliance::init();
        let r = Receiver::init(&pki, &cloud);
        r.use_postgres(&pg, None);
        r.pair(&a);
        let cfg = a.config();
        let signer = Keyring::load(KeySources::from_env(&cfg.keys.dir))
            .unwrap()
            .signing;
        let rk = ReceiverKeys::load(&cfg).unwrap().expect("receiver keys");
        Cloud {
            pg,
            pki,
            cloud,
            plain_port,
            app: cfg.appliance_id.clone(),
            _a: a,
            r,
            signer,
            rk,
        }
    }

    fn topic(&self) -> String {
        format!("hema3n/v1/edge/{}/bundles", self.app)
    }

    fn seal(&self, m: &EnvelopeMeta, body: &[u8]) -> Vec<u8> {
        seal::seal(m, body, &self.rk.hpke, &self.signer).unwrap()
    }

    fn publisher(&self, id: &str) -> TestClient {
        let mut c = TestClient::connect(self.plain_port, id, None);
        c.subscribe("hema3n/v1/edge/+/receipts");
        c
    }
}

#[test]
fn two_receivers_share_one_database_and_store_each_bundle_once() {
    let c = Cloud::new();
    let r2 = c.r.sibling(
        &c.pki,
        &c.cloud,
        &c.pg,
        &format!("receiver-{}-b", std::process::id()),
    );
    let (mut p1, mut p2) = (c.r.start(), r2.start());
    let mut pubc = c.publisher("pg-publisher");
    let topic = c.topic();

    // 100 bundles, each sent twice (the second a resend that may reach either receiver), and
    // one bundle id with other content, sent twice.
    let n = 100;
    let metas: Vec<EnvelopeMeta> = (0..n).map(|i| meta(&c.app, i as u64 + 1)).collect();
    let envelopes: Vec<Vec<u8>> = metas
        .iter()
        .enumerate()
        .map(|(i, m)| c.seal(m, &body(i)))
        .collect();
    for round in 0..2 {
        for e in &envelopes {
            pubc.publish(&topic, e.clone());
        }
        if round == 0 {
            pubc.flush();
        }
    }
    let conflicting = c.seal(&metas[0], &body(9999));
    pubc.publish(&topic, conflicting.clone());
    pubc.publish(&topic, conflicting);
    // Two attachments whose parts land on either receiver: one whole, one whose parts do not
    // make up the SHA-256 it declares.
    let file: Vec<u8> = (0..40_000u32)
        .flat_map(u32::to_le_bytes)
        .chain(SENTINEL.bytes())
        .collect();
    let (photo1, photo2) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let parts = [
        attachment(&c, &file, &photo1, false, 101),
        attachment(&c, &file, &photo2, true, 111),
    ]
    .concat();
    for (_, e) in &parts {
        pubc.publish(&topic, e.clone());
    }
    pubc.flush();

    // Alarms: the conflict and the corrupt attachment, once each.
    let stats = wait_for(120, "both receivers processed everything", || {
        let s = c.r.stats();
        (s["bundles"] == n + parts.len() && s["resends"] == n && s["conflicts"] == 2).then_some(s)
    });
    assert_eq!(r2.stats(), stats, "both instances read the same database");

    // Signed receipts, each naming a stored bundle: one `stored` and one `duplicate` per
    // bundle, one `stored` per part; the conflict is never receipted.
    let mut seen = std::collections::HashMap::<[u8; 16], (u32, u32)>::new();
    for k in 0..2 * n + parts.len() {
        let (_, payload) = pubc
            .next(30)
            .unwrap_or_else(|| panic!("receipt {k} missing"));
        let rc = Receipt::verify(&payload, &c.rk.signing).expect("receipt signature");
        let e = seen.entry(rc.bundle_id).or_default();
        match rc.status {
            ReceiptStatus::Stored => e.0 += 1,
            ReceiptStatus::Duplicate => e.1 += 1,
        }
    }
    assert_eq!(seen.len(), n + parts.len());
    assert!(
        metas.iter().all(|m| seen[&m.bundle_id] == (1, 1)),
        "{seen:?}"
    );
    assert!(parts.iter().all(|(id, _)| seen[id] == (1, 0)), "{seen:?}");
    assert!(pubc.next(2).is_none(), "the conflict was receipted");

    // The whole attachment is complete (caption readable to the receiver) and exports
    // byte-exact; the other is condemned.
    let listed: Vec<serde_json::Value> = r2
        .ok(&["attachments"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let state = |id: &str| {
        let a = listed.iter().find(|a| a["attachment_id"] == id).unwrap();
        (
            a["state"].as_str().unwrap().to_string(),
            a["caption"].clone(),
        )
    };
    assert_eq!(state(&photo1), ("complete".into(), SENTINEL.into()));
    assert_eq!(state(&photo2).0, "corrupt");
    let out = r2.tmp.path().join("photo-1.jpg");
    let which = format!("{}/{photo1}", c.app);
    r2.ok(&[
        "attachments",
        "--export",
        &which,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), file);

    // Operations: each instance counts what it stored itself (together: everything); the
    // store's view (sequence numbers 1..=120, no gaps) is the same from either.
    let metric = |r: &Receiver, name: &str| -> f64 {
        let (code, text) = r.http_get("/metrics");
        assert_eq!(code, 200);
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let stored = "hema3n_receiver_envelopes_total{outcome=\"stored\"}";
    assert_eq!(metric(&c.r, stored) + metric(&r2, stored), 120.0);
    let per_app = |name: &str| format!("{name}{{appliance=\"{}\"}}", c.app);
    for r in [&c.r, &r2] {
        assert_eq!(metric(r, "hema3n_store_bundles "), 120.0);
        assert_eq!(metric(r, &per_app("hema3n_appliance_last_sequence")), 120.0);
        assert_eq!(metric(r, &per_app("hema3n_appliance_sequence_gaps")), 0.0);
        let (code, health) = r.http_get("/health");
        assert_eq!(code, 200, "{health}");
        assert!(health.contains("\"status\":\"ok\""), "{health}");
    }
    // Telemetry with sequence number 125 (121..=124 never arrive): four gaps, and the
    // appliance's own report of its outbox.
    let mut t = meta(&c.app, 125);
    t.kind = BundleKind::Telemetry;
    let report = serde_json::json!({"resourceType": "Parameters", "parameter": [
        {"name": "outbox_queued", "valueInteger": 3},
        {"name": "open_alarms", "valueInteger": 1},
        {"name": "oldest_unreceipted_age_secs", "valueInteger": 60}]});
    pubc.publish(&topic, c.seal(&t, report.to_string().as_bytes()));
    pubc.flush();
    pubc.next(30).expect("telemetry receipt");
    assert_eq!(metric(&r2, &per_app("hema3n_appliance_sequence_gaps")), 4.0);
    assert_eq!(metric(&r2, &per_app("hema3n_appliance_outbox_queued")), 3.0);
    assert_eq!(
        metric(
            &r2,
            &per_app("hema3n_appliance_oldest_unreceipted_timestamp_seconds")
        ),
        (t.created_at_ms / 1000 - 60) as f64
    );

    // Both instances took part; the alarm was raised once; the schema is at version 2.
    assert_eq!(
        c.pg.query("SELECT count(DISTINCT received_by) FROM bundles"),
        "2"
    );
    assert_eq!(
        c.pg.query("SELECT bundle_id FROM alarms WHERE kind = 'bundle_conflict'"),
        uuid::Uuid::from_bytes(metas[0].bundle_id).to_string()
    );
    assert_eq!(
        c.pg.query("SELECT count(*) FROM alarms WHERE kind = 'attachment_corrupt'"),
        "1"
    );
    assert_eq!(
        c.pg.query("SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"),
        "1,2,3"
    );

    // No PHI in PostgreSQL in plaintext (nor hex-encoded, as pg_dump writes bytea) ...
    let dump = c.pg.dump();
    for needle in [SENTINEL.to_string(), hex::encode(SENTINEL)] {
        assert!(
            !common::contains(&dump, needle.as_bytes()),
            "PHI readable in the database dump"
        );
    }
    // ... yet either receiver reads any bundle back.
    let id = format!("{}/{}", c.app, uuid::Uuid::from_bytes(metas[7].bundle_id));
    let shown = r2.ok(&["bundles", &id]);
    assert_eq!(shown.trim().as_bytes(), body(7).as_slice());
    assert!(p1.stop().success(), "{}", c.r.log());
    assert!(p2.stop().success(), "{}", r2.log());
}

#[test]
fn a_database_outage_loses_nothing_and_a_foreign_key_or_newer_schema_is_refused() {
    let mut c = Cloud::new();
    let mut p = c.r.start();
    let mut pubc = c.publisher("pg-outage");
    let topic = c.topic();
    let first = meta(&c.app, 1);
    pubc.publish(&topic, c.seal(&first, &body(1)));
    pubc.flush();
    let (_, rc) = pubc.next(30).expect("first receipt");
    assert_eq!(
        Receipt::verify(&rc, &c.rk.signing).unwrap().bundle_id,
        first.bundle_id
    );

    // The database goes away: the envelope is neither receipted nor rejected; the receiver
    // leaves the broker and comes back until the database does.
    c.pg.stop_server();
    let second = meta(&c.app, 2);
    pubc.publish(&topic, c.seal(&second, &body(2)));
    pubc.flush();
    wait_for(30, "store outage noticed", || {
        c.r.log().contains("store unavailable").then_some(())
    });
    let (code, health) = c.r.http_get("/health");
    assert_eq!(code, 503, "{health}");
    assert!(health.contains("degraded"), "{health}");
    assert!(
        pubc.next(1).is_none(),
        "receipted while the database was down"
    );
    c.pg.start_server();
    let (_, rc) = pubc.next(60).expect("receipt after the database came back");
    let rc = Receipt::verify(&rc, &c.rk.signing).unwrap();
    assert_eq!(
        (rc.bundle_id, rc.status),
        (second.bundle_id, ReceiptStatus::Stored)
    );
    let s = c.r.stats();
    assert_eq!(
        (s["bundles"].as_u64(), s["rejects"].as_array().map(Vec::len)),
        (Some(2), Some(0)),
        "{s}"
    );
    assert!(p.running(), "the receiver exited during the outage");
    wait_for(30, "healthy again", || {
        (c.r.http_get("/health").0 == 200).then_some(())
    });
    assert!(p.stop().success(), "{}", c.r.log());

    // A receiver whose receiver-db.key differs cannot use (or spoil) the data keys.
    let stranger = Receiver::init(&c.pki, &c.cloud);
    stranger.use_postgres(&c.pg, Some("stranger"));
    let o = stranger.cmd(&["stats"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("receiver-db.key"), "{err}");

    // A schema newer than this receiver is refused, not written to.
    c.pg.query("INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)");
    let o = c.r.cmd(&["stats"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("newer than this receiver"), "{err}");
}

#[test]
fn tls_to_postgresql_verifies_the_server_against_the_configured_ca() {
    let mut c = Cloud::new();
    // The server now takes TCP logins over TLS only, with a certificate for 127.0.0.1 from the
    // test PKI.
    c.pg.require_tls(&c.pki.path("server.crt"), &c.pki.path("server.key"));
    assert!(
        !c.pg.plaintext_login_works(),
        "the server let a plaintext login in"
    );
    let plain = std::fs::read_to_string(c.r.config()).unwrap();
    let with_tls = |ca: &std::path::Path| {
        plain.replace(
            "tls = false\n",
            &format!("tls = true\nca_file = \"{}\"\n", ca.display()),
        )
    };
    // The receiver refuses plaintext to a TLS-only server ...
    assert!(!c.r.cmd(&["stats"]).status.success());
    // ... reaches it with the right CA ...
    std::fs::write(c.r.config(), with_tls(&c.pki.path("ca.crt"))).unwrap();
    let s = c.r.stats();
    assert_eq!(s["bundles"], 0, "{s}");
    // ... and refuses a server its CA did not sign.
    let other = Pki::new();
    std::fs::write(c.r.config(), with_tls(&other.path("ca.crt"))).unwrap();
    let o = c.r.cmd(&["stats"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "connected to a server of another CA");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
