//! The published format is the implemented one: the test vectors in docs/bundle-format.md open,
//! verify and re-seal byte for byte (up to the randomised signature), and the HPKE suite passes
//! the CFRG known-answer vectors for DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM.

use std::collections::HashMap;

use hema3n_edge::crypto::seal::{
    self, BundleKind, EnvelopeMeta, Receipt, ReceiptStatus, RecipientSecretKey,
};
use hema3n_edge::crypto::sign::PublicKey;
use hema3n_edge::storage::audit::{self, EntryFields};
use hema3n_edge::sync::{ReceiverKeys, attachment_wire};

fn doc_vectors() -> HashMap<String, String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/bundle-format.md"
    ))
    .unwrap();
    let section = doc.split("## Test vectors").nth(1).expect("vector section");
    let block = section
        .split("```text\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("vector block");
    block
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn hx(v: &HashMap<String, String>, k: &str) -> Vec<u8> {
    hex::decode(&v[k]).unwrap_or_else(|_| panic!("{k} is not hex"))
}

/// Sealing `pt` again with the documented ephemeral seed reproduces `env` but for the signature.
/// Bytes 52..60 are the signer key id, which differs with the throwaway signer used here; as it
/// is part of the header (the AAD), so does the 16-byte GCM tag at the end of the ciphertext.
fn assert_reseals(
    env: &[u8],
    h: &seal::EnvelopeHeader,
    pt: &[u8],
    rsk: &RecipientSecretKey,
    seed: Vec<u8>,
) {
    let signer = hema3n_edge::crypto::sign::SigningKey::from_pkcs8(
        "t",
        &hema3n_edge::crypto::sign::SigningKey::generate_pkcs8().unwrap(),
    )
    .unwrap();
    let meta = EnvelopeMeta {
        kind: h.kind,
        bundle_id: h.bundle_id,
        seq: h.seq,
        created_at_ms: h.created_at_ms,
        appliance_id: h.appliance_id.clone(),
    };
    let seed: [u8; 32] = seed.try_into().unwrap();
    let again = seal::seal_with_ephemeral_seed(&meta, pt, rsk.public(), &signer, seed).unwrap();
    let unsigned = env.len() - seal::SIG_LEN;
    assert_eq!(again[..52], env[..52]);
    assert_eq!(again[60..unsigned - 16], env[60..unsigned - 16]);
}

#[test]
fn the_documented_envelope_and_receipt_vectors_hold() {
    let v = doc_vectors();
    let sk: [u8; 32] = hx(&v, "receiver_hpke_private_key").try_into().unwrap();
    let rsk = RecipientSecretKey::from_bytes(&sk).unwrap();
    assert_eq!(
        rsk.public().as_bytes().to_vec(),
        hx(&v, "receiver_hpke_public_key")
    );
    assert_eq!(rsk.public().key_id().to_vec(), hx(&v, "recipient_key_id"));
    let app = PublicKey(hx(&v, "appliance_public_key"));
    assert_eq!(seal::key_id8(&app.0).to_vec(), hx(&v, "signer_key_id"));
    let env = hx(&v, "envelope");
    assert_eq!(
        hema3n_edge::crypto::sha256(&env).to_vec(),
        hx(&v, "envelope_sha256")
    );

    let (h, pt) = seal::verify_and_open(&env, &app, &rsk).expect("vector opens");
    // Its high-S twin differs only in the signature's `s`, verifies as plain ECDSA, and must be
    // refused (canonical signatures).
    let twin = hx(&v, "envelope_high_s_twin");
    assert_eq!(twin[..twin.len() - 32], env[..env.len() - 32]);
    let at = twin.len() - 64;
    app.verify_any_s(&twin[..at], &twin[at..])
        .expect("the twin is valid ECDSA");
    assert!(seal::verify_and_open(&twin, &app, &rsk).is_err());
    assert_eq!(pt, v["plaintext"].as_bytes());
    assert_eq!(h.appliance_id, v["appliance_id"]);
    assert_eq!(h.kind, BundleKind::Bundle);
    assert_eq!(h.seq, 7);
    assert_eq!(h.created_at_ms, 1_800_000_000_000);
    assert_eq!(seal::parse(&env).unwrap().enc().to_vec(), hx(&v, "enc"));

    // Re-sealing with the documented ephemeral seed reproduces everything but the signature.
    assert_reseals(&env, &h, &pt, &rsk, hx(&v, "ephemeral_seed"));

    let receipt = hx(&v, "receipt");
    let rc = Receipt::verify(&receipt, &PublicKey(hx(&v, "receiver_signing_public_key")))
        .expect("receipt verifies");
    assert_eq!(rc.status, ReceiptStatus::Stored);
    assert_eq!(rc.envelope_sha256.to_vec(), hx(&v, "envelope_sha256"));
    assert_eq!(rc.bundle_id, h.bundle_id);
    assert_eq!(rc.appliance_id, "amb-0001");
}

/// The attachment part vector (kind 4): the envelope opens to an `H3NA` plaintext whose header
/// describes its bytes with exactly the documented fields, and re-seals like the case vector.
#[test]
fn the_documented_attachment_part_vector_holds() {
    let v = doc_vectors();
    let sk: [u8; 32] = hx(&v, "receiver_hpke_private_key").try_into().unwrap();
    let rsk = RecipientSecretKey::from_bytes(&sk).unwrap();
    let app = PublicKey(hx(&v, "attachment_appliance_public_key"));
    assert_eq!(
        seal::key_id8(&app.0).to_vec(),
        hx(&v, "attachment_signer_key_id")
    );
    let env = hx(&v, "attachment_envelope");
    assert_eq!(
        hema3n_edge::crypto::sha256(&env).to_vec(),
        hx(&v, "attachment_envelope_sha256")
    );
    let (h, pt) = seal::verify_and_open(&env, &app, &rsk).expect("vector opens");
    assert_eq!(h.kind, BundleKind::Attachment);
    assert_eq!((h.seq, h.created_at_ms), (8, 1_800_000_000_000));
    assert_eq!(h.appliance_id, "amb-0001");
    assert_eq!(pt, hx(&v, "attachment_plaintext"));

    let (part, data) = attachment_wire::decode(&pt).expect("a well-formed part");
    assert!(
        data.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the part carries the PNG file"
    );
    assert_eq!(
        (part.part, part.parts, part.offset, part.length, part.size),
        (0, 1, 0, data.len() as u64, data.len() as u64)
    );
    assert_eq!(part.sha256, hex::encode(hema3n_edge::crypto::sha256(data)));
    assert_eq!(
        (part.media_type.as_str(), part.kind.as_str()),
        ("image/png", "wound")
    );
    // The header is the documented JSON, field for field.
    let n = u32::from_be_bytes(pt[4..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&pt[8..8 + n]).unwrap();
    let mut fields: Vec<&str> = header
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "attachment",
            "caption",
            "case",
            "created_at_ms",
            "filename",
            "kind",
            "length",
            "media_type",
            "offset",
            "part",
            "parts",
            "sha256",
            "size",
            "stripped"
        ]
    );
    // A header that does not describe its bytes is refused.
    let mut short = pt.clone();
    short.pop();
    assert!(attachment_wire::decode(&short).is_err());

    assert_reseals(&env, &h, &pt, &rsk, hx(&v, "attachment_ephemeral_seed"));
}

/// The documented `receiver-public.toml` is what the appliance imports: the vector's keys, and
/// unknown keys refused.
#[test]
fn the_documented_receiver_public_toml_parses() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/bundle-format.md"
    ))
    .unwrap();
    let toml = doc
        .split("## receiver-public.toml")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a toml block");
    let keys = ReceiverKeys::parse(toml).expect("the documented file parses");
    let v = doc_vectors();
    assert_eq!(keys.receiver_id, "test-cloud");
    assert_eq!(
        keys.hpke.as_bytes().to_vec(),
        hx(&v, "receiver_hpke_public_key")
    );
    assert_eq!(keys.signing.0, hx(&v, "receiver_signing_public_key"));
    // What `export-public` writes reads back the same.
    let again = ReceiverKeys::parse(&keys.to_toml()).unwrap();
    assert_eq!(again.signing.0, keys.signing.0);
    assert!(ReceiverKeys::parse(&format!("{toml}extra = 1\n")).is_err());
}

/// Every length inconsistency, trailing bytes included, is `ENVELOPE_TRUNCATED`.
#[test]
fn length_inconsistencies_are_refused_as_envelope_truncated() {
    let v = doc_vectors();
    let env = hx(&v, "envelope");
    let l = env[60] as usize;
    let n_at = 61 + l + 32;
    let with_n = |n: u32| {
        let mut e = env.clone();
        e[n_at..n_at + 4].copy_from_slice(&n.to_be_bytes());
        e
    };
    let mut trailing = env.clone();
    trailing.push(0);
    let cases = [
        ("a trailing byte", trailing),
        ("one byte short", env[..env.len() - 1].to_vec()),
        ("shorter than the fixed header", env[..60].to_vec()),
        ("N below the GCM tag", with_n(15)),
        ("N above 16 MiB + 16", with_n((16 << 20) + 17)),
        ("N one more than the bytes", {
            let n = u32::from_be_bytes(env[n_at..n_at + 4].try_into().unwrap());
            with_n(n + 1)
        }),
    ];
    for (what, e) in cases {
        let err = seal::parse(&e)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert_eq!(err.code(), "ENVELOPE_TRUNCATED", "{what}: {err}");
    }
    assert!(seal::parse(&env).is_ok());
}

/// A receipt's status byte is 1 or 2; anything else, even properly signed, is refused.
#[test]
fn a_receipt_status_other_than_stored_or_duplicate_is_refused() {
    use hema3n_edge::crypto::sign::SigningKey;
    let key = SigningKey::from_pkcs8("r", &SigningKey::generate_pkcs8().unwrap()).unwrap();
    let receipt = |status: u8| {
        let mut b = Receipt {
            status: ReceiptStatus::Duplicate,
            bundle_id: [7; 16],
            envelope_sha256: [9; 32],
            seq: 3,
            receipted_at_ms: 1_800_000_000_000,
            signer_key_id: [0; 8],
            appliance_id: "amb-0001".into(),
        }
        .sign(&key)
        .unwrap();
        b[5] = status;
        let at = b.len() - seal::SIG_LEN;
        let sig = key.sign(&b[..at]).unwrap();
        b[at..].copy_from_slice(&sig);
        b
    };
    let rc = Receipt::verify(&receipt(2), &key.public()).expect("status 2 verifies");
    assert_eq!(rc.status, ReceiptStatus::Duplicate);
    assert_eq!(
        Receipt::verify(&receipt(1), &key.public()).unwrap().status,
        ReceiptStatus::Stored
    );
    for status in [0u8, 3, 0xff] {
        let err = Receipt::verify(&receipt(status), &key.public()).unwrap_err();
        assert_eq!(err.code(), "BAD_KIND", "status {status}");
    }
}

#[test]
fn hpke_suite_passes_the_cfrg_known_answer_vectors() {
    let f: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hpke-base-x25519-sha256-aes256gcm.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let t = &f["vector"];
    assert_eq!(
        (
            t["mode"].as_u64(),
            t["kem_id"].as_u64(),
            t["kdf_id"].as_u64(),
            t["aead_id"].as_u64()
        ),
        (Some(0), Some(0x20), Some(1), Some(2))
    );
    let h = |k: &serde_json::Value| hex::decode(k.as_str().unwrap()).unwrap();
    let msgs: Vec<(Vec<u8>, Vec<u8>)> = t["encryptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (h(&e["aad"]), h(&e["pt"])))
        .collect();
    let exports: Vec<(Vec<u8>, usize)> = t["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (h(&e["exporter_context"]), e["L"].as_u64().unwrap() as usize))
        .collect();
    let (sk_r, pk_r, pk_e, enc, cts, outs) = seal::hpke_known_answer(
        &h(&t["ikmR"]),
        &h(&t["ikmE"]),
        &h(&t["info"]),
        &msgs,
        &exports,
    );
    assert_eq!(sk_r, h(&t["skRm"]));
    assert_eq!(pk_r, h(&t["pkRm"]));
    assert_eq!(pk_e, h(&t["pkEm"]));
    assert_eq!(enc, h(&t["enc"]));
    assert_eq!(cts.len(), 257);
    for (i, (ct, e)) in cts
        .iter()
        .zip(t["encryptions"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(ct, &h(&e["ct"]), "encryption {i}");
    }
    for (o, e) in outs.iter().zip(t["exports"].as_array().unwrap()) {
        assert_eq!(o, &h(&e["exported_value"]));
    }
}

/// The entries of the documented audit-trail example ("Audit trail" table): (chain version,
/// fields).
fn audit_example() -> Vec<(i64, EntryFields<'static>)> {
    const CASE: &str = "case/01900000-0000-7000-8000-0000000000c1";
    let e = |seq: i64, actor, role, action, resource, territory, details| EntryFields {
        seq,
        ts: 1_800_000_000_000 + (seq - 1) * 1000,
        actor,
        role,
        action,
        resource,
        outcome: "success",
        territory,
        details,
    };
    vec![
        (
            1,
            e(1, "crew-7", "paramedic", "case.create", CASE, "north", "{}"),
        ),
        (
            1,
            e(
                2,
                "crew-9",
                "emt",
                "login.success",
                "user/crew-9",
                "north",
                "",
            ),
        ),
        (
            2,
            e(
                3,
                "system",
                "system",
                "store.migrate",
                "appliance",
                "",
                r#"{"to":12}"#,
            ),
        ),
        (
            2,
            e(
                4,
                "system",
                "system",
                "case.export",
                CASE,
                "north",
                r#"{"readings":3}"#,
            ),
        ),
    ]
}

/// The audit-trail vector: canonical bytes, chain hashes (v1 then v2), the segment's links and
/// the checkpoint's signed message and signature are what the document says.
#[test]
fn the_documented_audit_trail_vector_holds() {
    let v = doc_vectors();
    let mut h = audit::genesis("amb-0001");
    assert_eq!(h.to_vec(), hx(&v, "audit_hash_0"));
    let mut links = Vec::new();
    for (version, e) in audit_example() {
        let c = audit::canonical(version, &e);
        assert_eq!(
            c,
            hx(&v, &format!("audit_canonical_{}", e.seq)),
            "entry {}",
            e.seq
        );
        let parsed = audit::parse_canonical(&c).expect("canonical bytes parse");
        assert_eq!(
            (parsed.version, parsed.seq, parsed.ts),
            (version, e.seq, e.ts)
        );
        assert_eq!(parsed.fields[2], e.action);
        let prev = h;
        h = audit::chain_hash(&prev, &c).unwrap();
        assert_eq!(h, audit::entry_hash_as(version, &prev, &e));
        assert_eq!(
            h.to_vec(),
            hx(&v, &format!("audit_hash_{}", e.seq)),
            "entry {}",
            e.seq
        );
        match (e.seq, version) {
            (1 | 4, _) => {}
            (_, 1) => {
                links.push(1);
                links.extend_from_slice(&(c.len() as u32).to_be_bytes());
                links.extend_from_slice(&c);
            }
            _ => {
                links.push(2);
                links.extend_from_slice(&hema3n_edge::crypto::sha256(&c));
            }
        }
    }
    assert_eq!(links, hx(&v, "audit_segment_links"));
    let msg = audit::checkpoint_message("amb-0001", 4, 1_800_000_004_000, &h);
    assert_eq!(msg, hx(&v, "audit_checkpoint_message"));
    let key = PublicKey(hx(&v, "audit_appliance_public_key"));
    assert_eq!(key.key_id(), v["audit_key_id"]);
    key.verify(&msg, &hx(&v, "audit_checkpoint_signature"))
        .expect("the checkpoint signature verifies");
}
