//! Fleet soak: 3 receivers sharing one PostgreSQL database take 10,000 bundles from 20
//! appliances while one of them is SIGKILLed and restarted after every tenth of the stream
//! (10 rounds; `HEMA3N_RECEIVER_KILL9_ROUNDS`, 100 under `scripts/test.sh --soak`); then the same
//! stream through one receiver on its embedded SQLCipher store, killed the same way. The
//! publisher behaves like the appliances' forwarders: what is not receipted within a while is
//! sent again. In the end every bundle is stored exactly once, every one was receipted, no
//! envelope was rejected or conflicted, every bundle's audit trail verified against its signed
//! checkpoint (no alarm), and no appliance shows a sequence gap.

mod common;

use std::collections::{HashMap, HashSet};

use common::Rng;
use common::cloud::{Pki, Proc, Receiver, envelope_meta};
use common::mqtt::TestClient;
use common::pg::Pg;
use common::trail::Chain;
use hema3n_edge::crypto::seal::{self, Receipt};
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::sync::ReceiverKeys;

const APPLIANCES: usize = 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn three_receivers_survive_kill9_with_every_bundle_stored_once() {
    soak(true);
}

/// The same stream through one receiver on its embedded SQLCipher store.
#[test]
fn one_receiver_on_the_embedded_store_survives_kill9_with_every_bundle_stored_once() {
    soak(false);
}

/// Three receivers on PostgreSQL (`shared`) or one on its SQLCipher file.
fn soak(shared: bool) {
    let rounds = env("HEMA3N_RECEIVER_KILL9_ROUNDS", 10).max(1);
    let total = env("HEMA3N_RECEIVER_SOAK_BUNDLES", 10_000).max(APPLIANCES);
    let per = total / APPLIANCES;
    let seed = 0x5eed_0001_u64 ^ u64::from(std::process::id());
    eprintln!(
        "receiver soak: {rounds} kill -9 rounds, {} bundles, seed {seed}",
        per * APPLIANCES
    );
    let mut rng = Rng(seed | 1);
    let t0 = std::time::Instant::now();

    let pg = shared.then(Pg::start);
    let pki = Pki::new();
    let (cloud, plain_port) = pki.broker();
    let id = |n: usize| format!("soak-{}-{n}", std::process::id());
    let first = Receiver::init(&pki, &cloud);
    let group: Vec<Receiver> = match &pg {
        Some(pg) => {
            first.use_postgres(pg, Some(&id(0)));
            vec![
                first.sibling(&pki, &cloud, pg, &id(1)),
                first.sibling(&pki, &cloud, pg, &id(2)),
            ]
        }
        None => vec![],
    };
    let receivers: Vec<&Receiver> = std::iter::once(&first).chain(group.iter()).collect();
    let pubf = first.tmp.path().join("receiver-public.toml");
    first.ok(&["export-public", "--out", pubf.to_str().unwrap()]);
    let rk = ReceiverKeys::parse(&std::fs::read_to_string(&pubf).unwrap()).unwrap();

    // 20 appliances, registered once (the store is shared), each with its stream of envelopes.
    let mut envelopes: Vec<(String, [u8; 16], Vec<u8>)> = Vec::with_capacity(per * APPLIANCES);
    for a in 0..APPLIANCES {
        let app = format!("amb-{a:02}");
        let signer = SigningKey::from_pkcs8(&app, &SigningKey::generate_pkcs8().unwrap()).unwrap();
        let pem = first.tmp.path().join(format!("{app}.pem"));
        std::fs::write(&pem, signer.public().to_pem()).unwrap();
        first.ok(&["appliances", "add", &app, pem.to_str().unwrap()]);
        // Each bundle proves its case's audit trail against a checkpoint signed after it.
        let mut chain = Chain::new(&app);
        for seq in 1..=per as u64 {
            let m = envelope_meta(&app, seq);
            let id = uuid::Uuid::from_bytes(m.bundle_id).to_string();
            let body = serde_json::json!({
                "resourceType": "Bundle", "type": "collection", "id": id,
                "entry": chain.case_entries(&id, 3, 1, &signer),
            });
            let e = seal::seal(&m, &serde_json::to_vec(&body).unwrap(), &rk.hpke, &signer).unwrap();
            envelopes.push((app.clone(), m.bundle_id, e));
        }
    }
    // Appliances interleave in the cloud.
    for i in (1..envelopes.len()).rev() {
        envelopes.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let sha: HashMap<[u8; 16], [u8; 32]> = envelopes
        .iter()
        .map(|(_, id, e)| (*id, hema3n_edge::crypto::sha256(e)))
        .collect();

    eprintln!(
        "{:.1} s: {} envelopes sealed",
        t0.elapsed().as_secs_f64(),
        envelopes.len()
    );
    let mut procs: Vec<Proc> = receivers.iter().map(|r| r.start()).collect();
    let mut pubc = TestClient::connect(plain_port, "soak-appliances", None);
    pubc.subscribe("hema3n/v1/edge/+/receipts");
    let mut receipted: HashSet<[u8; 16]> = HashSet::new();
    let drain = |pubc: &TestClient, receipted: &mut HashSet<[u8; 16]>, secs: u64| {
        while let Some((_, payload)) = pubc.next(secs) {
            let rc = Receipt::verify(&payload, &rk.signing).expect("receipt signature");
            assert_eq!(
                sha.get(&rc.bundle_id),
                Some(&rc.envelope_sha256),
                "receipt for an envelope never sent"
            );
            receipted.insert(rc.bundle_id);
        }
    };

    // The stream, with one receiver SIGKILLed and restarted after each slice.
    let topic = |app: &str| format!("hema3n/v1/edge/{app}/bundles");
    let slice = envelopes.len().div_ceil(rounds);
    for (round, chunk) in envelopes.chunks(slice).enumerate() {
        for (app, _, e) in chunk {
            pubc.publish(&topic(app), e.clone());
        }
        pubc.flush();
        let victim = (rng.next() % receivers.len() as u64) as usize;
        procs[victim].kill9();
        procs[victim] = receivers[victim].start();
        eprintln!("round {round}: receiver {victim} killed and restarted");
        drain(&pubc, &mut receipted, 0);
    }

    // Like an appliance's receipt timeout: resend what has no receipt yet, until all have.
    for attempt in 0..20 {
        drain(&pubc, &mut receipted, 5);
        let missing: Vec<&(String, [u8; 16], Vec<u8>)> = envelopes
            .iter()
            .filter(|(_, id, _)| !receipted.contains(id))
            .collect();
        if missing.is_empty() {
            break;
        }
        eprintln!(
            "resend {attempt}: {} envelopes without a receipt",
            missing.len()
        );
        for (app, _, e) in missing {
            pubc.publish(&topic(app), e.clone());
        }
        pubc.flush();
    }
    assert_eq!(
        receipted.len(),
        envelopes.len(),
        "envelopes never receipted"
    );
    eprintln!("{:.1} s: all receipted", t0.elapsed().as_secs_f64());

    // Stored exactly once each, nothing refused, no gaps.
    let s = first.stats();
    eprintln!("store: {s}");
    assert_eq!(s["bundles"], envelopes.len(), "{s}");
    assert_eq!(s["conflicts"], 0, "{s}");
    assert_eq!(s["audit_alarms"], 0, "every audit trail verifies: {s}");
    assert_eq!(s["rejects"].as_array().map(Vec::len), Some(0), "{s}");
    if let Some(pg) = &pg {
        assert_eq!(
            pg.query("SELECT count(*) FROM audit_checkpoints").trim(),
            envelopes.len().to_string(),
            "one checkpoint kept per case bundle"
        );
    }
    // Per appliance, as the store tells /metrics: the highest sequence number and no gap.
    let (_, metrics) = first.http_get("/metrics");
    for a in 0..APPLIANCES {
        let label = format!("{{appliance=\"amb-{a:02}\"}}");
        for (family, want) in [
            ("hema3n_appliance_last_sequence", per),
            ("hema3n_appliance_sequence_gaps", 0),
        ] {
            let line = format!("{family}{label} {want}\n");
            assert!(
                metrics.contains(&line),
                "{line}: a sequence gap or a double count\n{metrics}"
            );
        }
    }
    for (i, p) in procs.iter_mut().enumerate() {
        assert!(p.stop().success(), "receiver {i}: {}", receivers[i].log());
        // Receivers take their row locks in one order: concurrent batches wait, never deadlock
        // (each deadlock cost a second of PostgreSQL's deadlock_timeout and a retried batch).
        let log = receivers[i].log();
        assert!(
            !log.contains("deadlock detected"),
            "receiver {i} deadlocked: {log}"
        );
    }
}
