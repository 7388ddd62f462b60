//! Custody on the receiver's database thread: verify, open and store a batch of envelopes in
//! one transaction, then sign the receipts; rejects are stored with their reason and never
//! receipted.

use crate::crypto::seal::{self, Receipt, ReceiptStatus};
use crate::crypto::sign::PublicKey;
use crate::storage::Owned;
use crate::storage::receiver::{
    AuditVerdict, ReceivedBundle, ReceiverStore, StoreOutcome, TelemetrySummary,
};
use crate::sync::transport;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

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
    /// Envelopes above this size are refused unread (`TOO_LARGE`).
    pub(super) max_envelope_bytes: usize,
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

/// On the database thread: verifies, opens and stores a batch; returns the receipts (made after
/// the commit) and then the acks, in the order to send them, and what happened.
pub(super) fn process(
    custody: &mut Custody,
    batch: &[Publish],
) -> Result<(Vec<Out>, Counters), ReceiverError> {
    let Custody {
        db,
        keys,
        max_envelope_bytes,
    } = custody;
    let mut counters = Counters::default();
    let mut out = Vec::new();
    // Opened envelopes and where each sits in `batch` (bodies are moved, never copied).
    let mut items: Vec<ReceivedBundle> = Vec::new();
    let mut at: Vec<usize> = Vec::new();
    let mut rejects = Vec::new();
    for (i, p) in batch.iter().enumerate() {
        let topic = String::from_utf8_lossy(&p.topic).to_string();
        let sha = crate::crypto::sha256(&p.payload);
        let opened = if p.payload.len() > *max_envelope_bytes {
            Err((
                transport::appliance_of_bundles_topic(&topic).map(str::to_string),
                "TOO_LARGE",
                format!(
                    "{} bytes exceed receiver.max_envelope_bytes ({})",
                    p.payload.len(),
                    max_envelope_bytes
                ),
            ))
        } else {
            match open_one(keys, db.as_mut(), &topic, &p.payload, sha) {
                // The store could not tell whether the appliance is registered: nothing of
                // the batch is acknowledged (the caller decides whether to retry or exit).
                Err(Refused::Store(e)) => return Err(e.into()),
                Err(Refused::Reject(r)) => Err(r),
                Ok(b) => Ok(b),
            }
        };
        match opened {
            Ok(b) => {
                items.push(b);
                at.push(i);
            }
            Err((app, code, msg)) => {
                tracing::warn!(topic = %topic, appliance_id = app.as_deref().unwrap_or("?"), code, reason = %msg, "envelope rejected");
                *counters.by_code.entry(code.to_string()).or_default() += 1;
                rejects.push((topic, app, code.to_string(), msg, sha));
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
    for p in batch {
        out.push(Out::Ack(p.clone()));
    }
    Ok((out, counters))
}

pub(super) type Reject = (Option<String>, &'static str, String);

/// Why an envelope was not opened: refused for what it is, or the store failed.
pub(super) enum Refused {
    Reject(Reject),
    Store(crate::storage::StoreError),
}

impl From<Reject> for Refused {
    fn from(r: Reject) -> Self {
        Refused::Reject(r)
    }
}

pub(super) fn open_one(
    keys: &Keys,
    db: &mut dyn ReceiverStore,
    topic: &str,
    payload: &[u8],
    envelope_sha256: [u8; 32],
) -> Result<ReceivedBundle, Refused> {
    let Some(topic_app) = transport::appliance_of_bundles_topic(topic) else {
        return Err(Refused::Reject((
            None,
            "BAD_TOPIC",
            "not a bundles topic".into(),
        )));
    };
    let parsed =
        seal::parse(payload).map_err(|e| (Some(topic_app.to_string()), e.code(), e.to_string()))?;
    let app = parsed.header.appliance_id.clone();
    if app != topic_app {
        return Err(Refused::Reject((
            Some(topic_app.to_string()),
            "TOPIC_MISMATCH",
            format!("envelope names appliance {app}, published under {topic_app}"),
        )));
    }
    // Read for every envelope, never cached: a revocation or key replacement holds for the
    // next envelope (review #15). One indexed lookup beside an ECDSA verify and an HPKE open.
    let accepted: Vec<PublicKey> = db
        .appliance_keys(&app)
        .map_err(Refused::Store)?
        .iter()
        .filter_map(|p| PublicKey::from_pem(p))
        .collect();
    if accepted.is_empty() {
        return Err(Refused::Reject((
            Some(app.clone()),
            "UNKNOWN_APPLIANCE",
            format!("no active key registered for appliance {app}"),
        )));
    }
    // The key the envelope names: during a key change the previous one is accepted until its
    // overlap ends.
    let signer = parsed.header.signer_key_id;
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
    parsed
        .verify(key)
        .map_err(|e| (Some(app.clone()), e.code(), e.to_string()))?;
    let body = parsed
        .open(&keys.hpke)
        .map_err(|e| (Some(app.clone()), e.code(), e.to_string()))?;
    let h = &parsed.header;
    let (prealert, attachment, audit) = match h.kind {
        seal::BundleKind::Attachment => {
            let (part, data) = crate::sync::attachment_wire::decode(&body)
                .map_err(|e| (Some(app.clone()), "BAD_PAYLOAD", e.to_string()))?;
            (None, Some((part, body.len() - data.len())), None)
        }
        // A case bundle: one pass over the plaintext reads its resource type and audit trail.
        seal::BundleKind::Bundle => {
            let verdict = match audit_check::parse(&body) {
                Ok(t) => {
                    fhir_type(&app, t.resource_type.as_deref())?;
                    audit_trail(db, &app, h.seq, &accepted, &t).map_err(Refused::Store)?
                }
                // Not the shape a trail is read from: the resource type decides whether it is
                // a reject (as for every kind); if not, the unreadable trail is a finding.
                Err(finding) => {
                    fhir_payload(&app, h.kind, &body)?;
                    AuditVerdict {
                        findings: vec![finding],
                        ..Default::default()
                    }
                }
            };
            (None, None, Some(verdict))
        }
        _ => (fhir_payload(&app, h.kind, &body)?, None, None),
    };
    let telemetry = (h.kind == seal::BundleKind::Telemetry)
        .then(|| telemetry_summary(&body, h.created_at_ms as i64))
        .flatten();
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

/// The health counters of a telemetry `Parameters` resource (`None` when they are missing:
/// the envelope is still stored).
fn telemetry_summary(body: &[u8], created_at_ms: i64) -> Option<TelemetrySummary> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let param = |name: &str| {
        v["parameter"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)?["valueInteger"]
            .as_i64()
    };
    Some(TelemetrySummary {
        outbox_queued: param("outbox_queued")?,
        open_alarms: param("open_alarms")?,
        oldest_unreceipted_ms: param("oldest_unreceipted_age_secs")
            .map(|age| created_at_ms - age.saturating_mul(1000)),
    })
}

/// The resource type every FHIR plaintext must have: `Bundle` or `Parameters`.
fn fhir_type(app: &str, resource_type: Option<&str>) -> Result<(), Reject> {
    match resource_type {
        Some("Bundle" | "Parameters") => Ok(()),
        _ => Err((
            Some(app.to_string()),
            "BAD_PAYLOAD",
            "plaintext is not a FHIR Bundle or Parameters resource".into(),
        )),
    }
}

/// Checks a FHIR plaintext (a `Bundle` or `Parameters`, reading only the resource type: no
/// tree is built) and, for a pre-alert, its summary (so the hospital sees the latest and its
/// chain by case).
fn fhir_payload(
    app: &str,
    kind: seal::BundleKind,
    body: &[u8],
) -> Result<Option<crate::model::PrealertSummary>, Reject> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "resourceType", borrow)]
        resource_type: Option<std::borrow::Cow<'a, str>>,
    }
    let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
        (
            Some(app.to_string()),
            "BAD_PAYLOAD",
            format!("plaintext is not a JSON object: {e}"),
        )
    })?;
    fhir_type(app, head.resource_type.as_deref())?;
    Ok(match kind {
        seal::BundleKind::Prealert => serde_json::from_slice(body)
            .ok()
            .and_then(|v| crate::sync::prealert_summary(&v)),
        _ => None,
    })
}
