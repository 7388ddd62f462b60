//! An appliance's audit chain, kept in memory, for tests and benchmarks that publish case bundles
//! without an appliance database: each case bundle's trail (the case's entries, the digests of
//! the entries between them, a checkpoint signed after them) verifies at the receiver like a
//! real appliance's, and checkpoints advance from bundle to bundle. Encoded by the appliance's
//! own `sync::audit_events`.

use hema3n_edge::crypto::sha256;
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::model::{ExportAudit, ExportCheckpoint, ExportSegment};
use hema3n_edge::storage::audit::{self, EntryFields};
use serde_json::{Value, json};

pub struct Chain {
    appliance: String,
    seq: i64,
    hash: [u8; 32],
    ts: i64,
}

impl Chain {
    pub fn new(appliance: &str) -> Self {
        Chain {
            appliance: appliance.into(),
            seq: 0,
            hash: audit::genesis(appliance),
            ts: 1_800_000_000_000,
        }
    }

    /// Appends one entry (chain v2); its canonical bytes and hash.
    fn append(&mut self, action: &str, resource: &str) -> (i64, Vec<u8>, [u8; 32]) {
        self.seq += 1;
        self.ts += 1000;
        let c = audit::canonical(
            2,
            &EntryFields {
                seq: self.seq,
                ts: self.ts,
                actor: "crew-7",
                role: "paramedic",
                action,
                resource,
                outcome: "success",
                territory: "north",
                details: r#"{"readings":1}"#,
            },
        );
        self.hash = audit::chain_hash(&self.hash, &c).unwrap();
        (self.seq, c, self.hash)
    }

    /// The bundle `entry` array items of a case's trail: `own` entries of `case`, `others`
    /// entries of other resources after each, and a checkpoint signed by `signer` after the last.
    pub fn case_entries(
        &mut self,
        case: &str,
        own: usize,
        others: usize,
        signer: &SigningKey,
    ) -> Vec<Value> {
        let resource = format!("case/{case}");
        let prev_hash = self.hash;
        let mut entries = Vec::with_capacity(own);
        let mut links = Vec::new();
        for i in 0..own {
            let (seq, canonical, hash) = self.append("observation.ingest", &resource);
            entries.push(ExportAudit {
                seq,
                ts_ms: self.ts,
                actor: "crew-7".into(),
                role: "paramedic".into(),
                action: "observation.ingest".into(),
                resource: resource.clone(),
                outcome: "success".into(),
                hash,
                canonical,
            });
            if i + 1 < own {
                for _ in 0..others {
                    let (_, c, _) = self.append("login.success", "user/crew-9");
                    links.push(2);
                    links.extend_from_slice(&sha256(&c));
                }
            }
        }
        let from_seq = entries.first().map_or(self.seq + 1, |e| e.seq);
        let msg = audit::checkpoint_message(&self.appliance, self.seq, self.ts, &self.hash);
        let cp = ExportCheckpoint {
            seq: self.seq,
            ts_ms: self.ts,
            hash: self.hash,
            key_id: signer.public().key_id(),
            signature: signer.sign(&msg).unwrap(),
        };
        let seg = ExportSegment {
            from_seq,
            prev_hash,
            links,
        };
        let rid = |role: &str| format!("{case}-{role}");
        hema3n_edge::sync::audit_events(&self.appliance, &entries, Some(&cp), Some(&seg), &rid)
            .into_iter()
            .map(|(id, r)| json!({ "fullUrl": format!("urn:uuid:{id}"), "resource": r }))
            .collect()
    }
}
