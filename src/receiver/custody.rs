//! Custody on the receiver's database thread: verify a batch of envelopes opened by
//! `receiver-open` (`open.rs`) under the keys the store holds now, store it in one
//! transaction, then sign the receipts; rejects are stored with their reason and never
//! receipted.

use crate::crypto::seal::{self, Receipt, ReceiptStatus};
use crate::crypto::sign::PublicKey;
use crate::storage::Owned;
use crate::storage::receiver::{AuditVerdict, ReceivedBundle, ReceiverStore, StoreOutcome};
use crate::sync::transport;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use super::open::{Content, KeyHints, Kind, Read, Reject, Unverified};
use super::{Keys, ReceiverError, audit_check};

/// Counters of one receiver run.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub stored: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    pub rejects: u64,
    /// Rejects by code.
    pub by_code: std::collections::BTreeMap<String, u64>,
    /// The largest delay from envelope creation to commit (of one batch; not summed).
    pub max_lag_ms: i64,
    /// Case bundles stored whose audit trail verified, and those with findings (alarmed).
    pub audit_verified: u64,
    pub audit_failed: u64,
}

impl Counters {
    pub(super) fn add(&mut self, d: &Counters) {
        self.stored += d.stored;
        self.duplicates += d.duplicates;
        self.conflicts += d.conflicts;
        self.rejects += d.rejects;
        self.audit_verified += d.audit_verified;
        self.audit_failed += d.audit_failed;
        for (k, v) in &d.by_code {
            *self.by_code.entry(k.clone()).or_default() += v;
        }
        self.max_lag_ms = d.max_lag_ms;
    }
}

/// Jobs queued for the receiver's database thread (one per batch of envelopes).
pub(super) const CUSTODY_QUEUE: usize = 4;

/// The receiver's database and keys, held by one thread.
pub(super) struct Custody {
    pub(super) db: Box<dyn ReceiverStore>,
    pub(super) keys: Keys,
    /// Where the appliance keys read here are shared with `receiver-open`.
    pub(super) hints: KeyHints,
}

impl Owned for Custody {
    const THREAD: &'static str = "receiver-db";
    type Grouped = std::convert::Infallible;
    fn close(&mut self) {
        tracing::info!("receiver database closed");
    }
    fn write_group(&mut self, items: Vec<Self::Grouped>) -> Vec<crate::storage::Result<()>> {
        items.into_iter().map(|i| match i {}).collect()
    }
}

/// A request for the event loop, queued until the client has room.
pub(super) enum Out {
    Receipt {
        topic: String,
        bytes: Vec<u8>,
        props: PublishProperties,
    },
    Ack(Publish),
}

/// On the database thread: verifies and stores a batch opened by `receiver-open`; returns the
/// receipts (made after the commit) and then the acks, in the order to send them, and what
/// happened.
pub(super) fn process(
    custody: &mut Custody,
    read: Read,
) -> Result<(Vec<Out>, Counters), ReceiverError> {
    let Custody { db, keys, hints } = custody;
    let Read { batch, items: read } = read;
    let mut counters = Counters::default();
    let mut out = Vec::new();
    // Verified envelopes and where each sits in `batch` (bodies are moved, never copied).
    let mut items: Vec<ReceivedBundle> = Vec::new();
    let mut at: Vec<usize> = Vec::new();
    let mut rejects = Vec::new();
    for (i, item) in read.into_iter().enumerate() {
        let verified = match item.read {
            Err(r) => Err(r),
            Ok(u) => match verify_one(db.as_mut(), hints, &batch[i].payload, u, item.sha256) {
                // The store could not tell whether the appliance is registered: nothing of
                // the batch is acknowledged (the caller decides whether to retry or exit).
                Err(Refused::Store(e)) => return Err(e.into()),
                Err(Refused::Reject(r)) => Err(r),
                Ok(b) => Ok(b),
            },
        };
        match verified {
            Ok(b) => {
                items.push(b);
                at.push(i);
            }
            Err((app, code, msg)) => {
                let topic = item.topic;
                tracing::warn!(topic = %topic, appliance_id = app.as_deref().unwrap_or("?"), code, reason = %msg, "envelope rejected");
                *counters.by_code.entry(code.to_string()).or_default() += 1;
                rejects.push((topic, app, code.to_string(), msg, item.sha256));
            }
        }
    }
    if !rejects.is_empty() {
        counters.rejects += rejects.len() as u64;
        db.record_rejects(&rejects)?;
    }
    let outcomes = if items.is_empty() {
        vec![]
    } else {
        db.store_batch(&items)?
    };
    // Committed: now receipts, then acks.
    let committed_at = crate::model::now_ms();
    for ((i, b), o) in at.iter().zip(&items).zip(outcomes) {
        if o != StoreOutcome::Conflict {
            counters.max_lag_ms = counters.max_lag_ms.max(committed_at - b.created_at_ms);
        }
        let status = match o {
            StoreOutcome::Stored { audit_alarms } => {
                counters.stored += 1;
                match (&b.audit, audit_alarms) {
                    (Some(_), 0) => counters.audit_verified += 1,
                    (Some(_), _) => counters.audit_failed += 1,
                    (None, _) => {}
                }
                ReceiptStatus::Stored
            }
            StoreOutcome::Duplicate => {
                counters.duplicates += 1;
                ReceiptStatus::Duplicate
            }
            StoreOutcome::Conflict => {
                counters.conflicts += 1;
                tracing::error!(code = "CONFLICT", appliance_id = %b.appliance_id, bundle_id = %b.bundle_id, "ALARM: same bundle id with different content; not receipted");
                continue;
            }
        };
        let receipt = Receipt {
            status,
            bundle_id: *b.bundle_id.as_bytes(),
            envelope_sha256: b.envelope_sha256,
            seq: b.seq,
            receipted_at_ms: crate::model::now_ms().max(0) as u64,
            signer_key_id: [0; 8],
            appliance_id: b.appliance_id.clone(),
        }
        .sign(&keys.signing)
        .map_err(|e| ReceiverError::Io(e.to_string()))?;
        let p = &batch[*i];
        let topic = p
            .properties
            .as_ref()
            .and_then(|pp| pp.response_topic.clone())
            .filter(|t| *t == transport::receipts_topic(&b.appliance_id))
            .unwrap_or_else(|| transport::receipts_topic(&b.appliance_id));
        let props = PublishProperties {
            correlation_data: p
                .properties
                .as_ref()
                .and_then(|pp| pp.correlation_data.clone()),
            content_type: Some("application/vnd.hema3n.receipt.v1".into()),
            ..Default::default()
        };
        out.push(Out::Receipt {
            topic,
            bytes: receipt,
            props,
        });
    }
    out.extend(batch.into_iter().map(Out::Ack));
    Ok((out, counters))
}

/// Why an envelope was not accepted: refused for what it is, or the store failed.
enum Refused {
    Reject(Reject),
    Store(crate::storage::StoreError),
}

impl From<Reject> for Refused {
    fn from(r: Reject) -> Self {
        Refused::Reject(r)
    }
}

/// Verifies an opened envelope against the appliance's keys as the store holds them now, and
/// its audit trail against the checkpoints seen before.
fn verify_one(
    db: &mut dyn ReceiverStore,
    hints: &KeyHints,
    payload: &[u8],
    u: Unverified,
    envelope_sha256: [u8; 32],
) -> Result<ReceivedBundle, Refused> {
    let Unverified {
        header: h,
        checked,
        content,
    } = u;
    let app = h.appliance_id;
    // Read for every envelope, never cached: a revocation or key replacement holds for the
    // next envelope (review #15). One indexed lookup beside an ECDSA verify.
    let accepted: Vec<PublicKey> = db
        .appliance_keys(&app)
        .map_err(Refused::Store)?
        .iter()
        .filter_map(|p| PublicKey::from_pem(p))
        .collect();
    hints.seen(&app, &accepted);
    if accepted.is_empty() {
        return Err(Refused::Reject((
            Some(app.clone()),
            "UNKNOWN_APPLIANCE",
            format!("no active key registered for appliance {app}"),
        )));
    }
    // The key the envelope names: during a key change the previous one is accepted until its
    // overlap ends.
    let signer = h.signer_key_id;
    let Some(key) = accepted.iter().find(|k| seal::key_id8(&k.0) == signer) else {
        return Err(Refused::Reject((
            Some(app.clone()),
            "BAD_SIGNATURE",
            format!(
                "envelope is signed by key {}, not a registered key of appliance {app} ({}); a new key is registered with `hema3n-receiver appliances add-key`",
                hex::encode(signer),
                accepted
                    .iter()
                    .map(|k| hex::encode(seal::key_id8(&k.0)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )));
    };
    match checked {
        // Checked while opening, under this very key (still accepted now).
        Some((k, r)) if k == *key => r.map_err(|(code, why)| (Some(app.clone()), code, why))?,
        // The structure was checked when the envelope was opened; parsing again only finds
        // the signed bytes.
        _ => seal::parse(payload)
            .and_then(|parsed| parsed.verify(key))
            .map_err(|e| (Some(app.clone()), e.code(), e.to_string()))?,
    }
    let Content {
        body,
        kind,
        telemetry,
    } = content?;
    let (prealert, attachment, audit) = match kind {
        Kind::Attachment(part, at) => (None, Some((part, at)), None),
        Kind::Case(Ok(t)) => (
            None,
            None,
            Some(audit_trail(db, &app, h.seq, &accepted, &t).map_err(Refused::Store)?),
        ),
        Kind::Case(Err(finding)) => (
            None,
            None,
            Some(AuditVerdict {
                findings: vec![finding],
                ..Default::default()
            }),
        ),
        Kind::Other(prealert) => (prealert, None, None),
    };
    Ok(ReceivedBundle {
        prealert,
        attachment,
        telemetry,
        audit,
        appliance_id: app,
        bundle_id: uuid::Uuid::from_bytes(h.bundle_id),
        seq: h.seq,
        kind: h.kind.as_str().into(),
        created_at_ms: h.created_at_ms as i64,
        envelope_sha256,
        body,
    })
}

/// Verifies a case bundle's audit trail against its checkpoint and the checkpoints the store
/// has seen from the appliance. Findings never refuse the bundle (its PHI is kept): they
/// raise alarms when it is stored.
fn audit_trail(
    db: &mut dyn ReceiverStore,
    app: &str,
    env_seq: u64,
    keys: &[PublicKey],
    t: &audit_check::Trail,
) -> Result<AuditVerdict, crate::storage::StoreError> {
    let known = match t.range() {
        Some((from, to)) => db.audit_checkpoints(app, from, to, env_seq)?,
        None => vec![],
    };
    Ok(audit_check::verify(app, keys, t, env_seq, &known))
}
