//! `simulate` (the field-device simulator) and `debug …` (soak data, bundle test vectors).

use crate::config::Config;
use crate::model::{Actor, CaseDetails, Patient};
use std::io::Write;

use super::{CmdResult, Failure, open_db};

/// `simulate`: field devices publishing scenario vitals to the on-board broker.
pub fn simulate(opts: crate::ingest::simulate::SimOptions) -> CmdResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let scen = opts
        .scenario
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "mixed".into());
    eprintln!(
        "simulating {} device(s), scenario {scen}, broker {}:{}",
        opts.devices, opts.host, opts.port
    );
    let rep = rt
        .block_on(crate::ingest::simulate::run(opts))
        .map_err(|e| Failure { code: 1, error: e })?;
    println!(
        "{}",
        serde_json::json!({
            "packs": rep.packs, "readings": rep.readings, "faulty": rep.faulty, "duplicates": rep.duplicates,
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(0)
}

/// `debug soak`: a storage soak workload. Writes patients and cases one transaction at a time
/// and prints `committed <patient id> <case id>` after each COMMIT returned, so a harness that
/// kills the process can check that everything reported committed survived. `count` 0 = forever.
pub fn debug_soak(cfg: &Config, count: u64, last_name: &str) -> CmdResult {
    let mut db = open_db(cfg)?;
    let actor = Actor::cli();
    let territory = cfg.default_territory.clone();
    let mut out = std::io::stdout().lock();
    let mut i = 0u64;
    while count == 0 || i < count {
        let p = Patient {
            first_name: Some(format!("Soak{i}")),
            last_name: Some(last_name.to_string()),
            date_of_birth: Some(format!("19{:02}-0{}-1{}", 40 + i % 60, 1 + i % 9, i % 10)),
            ssn: Some(format!(
                "{:03}-{:02}-{:04}",
                100 + i % 800,
                10 + i % 90,
                i % 10000
            )),
            ..Default::default()
        };
        let pid = db.create_patient(&actor, &territory, &p)?;
        let cid = db.create_case(
            &actor,
            &territory,
            Some(&pid),
            &CaseDetails {
                chief_complaint: Some(format!("soak complaint {last_name}")),
                ..Default::default()
            },
        )?;
        writeln!(out, "committed {pid} {cid}")?;
        out.flush()?;
        i += 1;
    }
    Ok(0)
}

/// `debug bundle-vectors`: envelope and receipt test vectors with published private keys (for
/// `docs/bundle-format.md`; never use these keys for anything else). ECDSA signatures are
/// randomised, so each run prints different signature bytes; every run's output is valid.
pub fn debug_bundle_vectors() -> CmdResult {
    use crate::crypto::seal::{self, BundleKind, EnvelopeMeta, Receipt, ReceiptStatus};
    use crate::crypto::sign::SigningKey;
    let rsk_bytes = crate::crypto::sha256(b"hema3n bundle-format v1 test receiver");
    let rsk = seal::RecipientSecretKey::from_bytes(&rsk_bytes).map_err(|e| Failure {
        code: 1,
        error: anyhow::anyhow!("{e}"),
    })?;
    let fail = |e: crate::crypto::CryptoError| Failure {
        code: 1,
        error: anyhow::anyhow!("{e}"),
    };
    let app_der = SigningKey::generate_pkcs8().map_err(fail)?;
    let app = SigningKey::from_pkcs8("vector", &app_der).map_err(fail)?;
    let rcv_der = SigningKey::generate_pkcs8().map_err(fail)?;
    let rcv = SigningKey::from_pkcs8("vector", &rcv_der).map_err(fail)?;
    let ikm_e = crate::crypto::sha256(b"hema3n bundle-format v1 test ephemeral");
    let plaintext = br#"{"resourceType":"Bundle","id":"01900000-0000-7000-8000-000000000001","type":"collection","entry":[]}"#;
    let meta = EnvelopeMeta {
        kind: BundleKind::Bundle,
        bundle_id: *uuid::Uuid::parse_str("01900000-0000-7000-8000-000000000001")
            .expect("uuid")
            .as_bytes(),
        seq: 7,
        created_at_ms: 1_800_000_000_000,
        appliance_id: "amb-0001".into(),
    };
    let env = seal::seal_with_ephemeral_seed(&meta, plaintext, rsk.public(), &app, ikm_e).map_err(
        |e| Failure {
            code: 1,
            error: anyhow::anyhow!("{e}"),
        },
    )?;
    let parsed = seal::parse(&env).expect("own envelope parses");
    let receipt = Receipt {
        status: ReceiptStatus::Stored,
        bundle_id: meta.bundle_id,
        envelope_sha256: crate::crypto::sha256(&env),
        seq: 7,
        receipted_at_ms: 1_800_000_005_000,
        signer_key_id: [0; 8],
        appliance_id: "amb-0001".into(),
    }
    .sign(&rcv)
    .map_err(|e| Failure {
        code: 1,
        error: anyhow::anyhow!("{e}"),
    })?;
    println!("receiver_hpke_private_key = {}", hex::encode(rsk_bytes));
    println!(
        "receiver_hpke_public_key = {}",
        hex::encode(rsk.public().as_bytes())
    );
    println!("recipient_key_id = {}", hex::encode(rsk.public().key_id()));
    println!("appliance_id = amb-0001");
    println!("appliance_public_key = {}", hex::encode(&app.public().0));
    println!(
        "signer_key_id = {}",
        hex::encode(seal::key_id8(&app.public().0))
    );
    println!("ephemeral_seed = {}", hex::encode(ikm_e));
    println!("enc = {}", hex::encode(parsed.enc()));
    println!("plaintext = {}", String::from_utf8_lossy(plaintext));
    println!("envelope = {}", hex::encode(&env));
    println!(
        "envelope_sha256 = {}",
        hex::encode(crate::crypto::sha256(&env))
    );
    println!(
        "receiver_signing_public_key = {}",
        hex::encode(&rcv.public().0)
    );
    println!("receipt = {}", hex::encode(&receipt));
    Ok(0)
}
