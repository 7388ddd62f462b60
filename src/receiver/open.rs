//! The half of custody that needs no database, on its own thread (`receiver-open`): for each
//! envelope of a batch, its size, structure and topic, the HPKE open with the receiver's key,
//! and one pass over the plaintext (resource type, audit trail, pre-alert and telemetry
//! summaries). It runs while the batch before commits on `receiver-db`.
//!
//! What depends on the database stays there, after the batch before committed: the appliance's
//! registered keys (read for every envelope, so a revocation holds for the next one), the
//! ES256 verify under them, and the checkpoints seen before (continuity). An envelope opened
//! here is therefore never trusted until that thread verified its signature, and a reason it
//! could not be opened or read is reported only then (a forged envelope is `BAD_SIGNATURE`
//! or `UNKNOWN_APPLIANCE`, whatever its ciphertext).
//!
//! The signature itself (a SHA-256 over the whole envelope and a P-256 verify), and a case
//! bundle's audit checkpoint signature, are checked here already when the database thread has
//! recently seen the appliance's keys ([`KeyHints`]):
//! the result is kept with the key that gave it, and the database thread uses it only if that
//! very key is still among the appliance's accepted keys when the envelope is verified there
//! (otherwise it decides as if no check had been made). A verify is a pure function of key,
//! bytes and signature, so the outcome is the one it would have computed itself.

use rumqttc::v5::mqttbytes::v5::Publish;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crypto::seal::{self, EnvelopeHeader, RecipientSecretKey};
use crate::crypto::sign::PublicKey;
use crate::storage::Owned;
use crate::storage::receiver::TelemetrySummary;
use crate::sync::transport;

use super::audit_check;

/// A refused envelope: the appliance it names (if any), the reject code and the reason.
pub(super) type Reject = (Option<String>, &'static str, String);

/// Jobs queued for `receiver-open` (one per batch; the session keeps at most two batches in
/// flight).
pub(super) const OPEN_QUEUE: usize = 2;

/// The accepted keys of each appliance as the database thread last read them (written there,
/// read here). A hint only: never the reason an envelope is accepted.
#[derive(Clone, Default)]
pub(super) struct KeyHints(Arc<Mutex<HashMap<String, Vec<PublicKey>>>>);

impl KeyHints {
    /// Records what the store holds for `app` now (nothing when it has no accepted key).
    pub(super) fn seen(&self, app: &str, accepted: &[PublicKey]) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if accepted.is_empty() {
            m.remove(app);
        } else if m.get(app).map(Vec::as_slice) != Some(accepted) {
            m.insert(app.to_string(), accepted.to_vec());
        }
    }

    /// The hinted keys of `app` (none when the database thread has not seen it accept any).
    fn accepted(&self, app: &str) -> Vec<PublicKey> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(app).cloned().unwrap_or_default()
    }

    /// The hinted key of `app` with this key id.
    fn key(&self, app: &str, signer_key_id: [u8; 8]) -> Option<PublicKey> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(app)?
            .iter()
            .find(|k| seal::key_id8(&k.0) == signer_key_id)
            .cloned()
    }
}

/// The receiver's HPKE key, envelope size limit and key hints, held by the opening thread.
pub(super) struct Opener {
    pub(super) hpke: RecipientSecretKey,
    /// Envelopes above this size are refused unread (`TOO_LARGE`).
    pub(super) max_envelope_bytes: usize,
    pub(super) hints: KeyHints,
}

impl Owned for Opener {
    const THREAD: &'static str = "receiver-open";
    type Grouped = std::convert::Infallible;
    fn close(&mut self) {}
    fn write_group(&mut self, items: Vec<Self::Grouped>) -> Vec<crate::storage::Result<()>> {
        items.into_iter().map(|i| match i {}).collect()
    }
}

/// A batch as read from the broker and opened: the messages (acknowledged after the commit)
/// and, in the same order, what was read of each.
pub(super) struct Read {
    pub(super) batch: Vec<Publish>,
    pub(super) items: Vec<Item>,
}

/// One envelope of a [`Read`] batch.
pub(super) struct Item {
    pub(super) topic: String,
    pub(super) sha256: [u8; 32],
    /// `Err`: refused for its size, topic or structure, before any key is looked up.
    pub(super) read: Result<Unverified, Reject>,
}

/// A signature checked under a key: the key, and the reject's code and reason if it failed.
pub(super) type Checked = (PublicKey, Result<(), (&'static str, String)>);

/// An envelope whose structure and topic are right, its signature not yet verified.
pub(super) struct Unverified {
    pub(super) header: EnvelopeHeader,
    /// The signature checked under a hinted key: that key and the outcome (the reject's code
    /// and reason when it failed).
    pub(super) checked: Option<Checked>,
    /// The plaintext and what it says, or why it was not opened or not read (a reject only
    /// once the signature verified).
    pub(super) content: Result<Content, Reject>,
}

/// An opened plaintext and what the receiver reads of it.
pub(super) struct Content {
    pub(super) body: Vec<u8>,
    pub(super) kind: Kind,
    /// A telemetry envelope's health counters (`None` when missing: it is still stored).
    pub(super) telemetry: Option<TelemetrySummary>,
}

/// What a plaintext is, by envelope kind.
pub(super) enum Kind {
    /// An attachment part's header and where its bytes start in the body.
    Attachment(crate::model::PartHeader, usize),
    /// A case bundle's audit trail, or why it is unreadable (a finding, not a reject).
    Case(Result<audit_check::Trail, String>),
    /// Any other FHIR plaintext, with a pre-alert's summary.
    Other(Option<crate::model::PrealertSummary>),
}

impl Opener {
    /// Reads every envelope of `batch` (see the module text for what is left to the database
    /// thread).
    pub(super) fn read(&self, batch: Vec<Publish>) -> Read {
        let items = batch
            .iter()
            .map(|p| {
                let topic = String::from_utf8_lossy(&p.topic).to_string();
                let sha256 = crate::crypto::sha256(&p.payload);
                let read = if p.payload.len() > self.max_envelope_bytes {
                    Err((
                        transport::appliance_of_bundles_topic(&topic).map(str::to_string),
                        "TOO_LARGE",
                        format!(
                            "{} bytes exceed receiver.max_envelope_bytes ({})",
                            p.payload.len(),
                            self.max_envelope_bytes
                        ),
                    ))
                } else {
                    self.read_one(&topic, &p.payload)
                };
                Item {
                    topic,
                    sha256,
                    read,
                }
            })
            .collect();
        Read { batch, items }
    }

    fn read_one(&self, topic: &str, payload: &[u8]) -> Result<Unverified, Reject> {
        let Some(topic_app) = transport::appliance_of_bundles_topic(topic) else {
            return Err((None, "BAD_TOPIC", "not a bundles topic".into()));
        };
        let parsed = seal::parse(payload)
            .map_err(|e| (Some(topic_app.to_string()), e.code(), e.to_string()))?;
        let app = &parsed.header.appliance_id;
        if app != topic_app {
            return Err((
                Some(topic_app.to_string()),
                "TOPIC_MISMATCH",
                format!("envelope names appliance {app}, published under {topic_app}"),
            ));
        }
        let checked = self.hints.key(app, parsed.header.signer_key_id).map(|k| {
            let r = parsed.verify(&k).map_err(|e| (e.code(), e.to_string()));
            (k, r)
        });
        let mut content = parsed
            .open(&self.hpke)
            .map_err(|e| (Some(app.clone()), e.code(), e.to_string()))
            .and_then(|body| content(app, &parsed.header, body));
        // The audit checkpoint's signature too, under the same rule (only when the envelope's
        // held: a forged envelope costs no second verify).
        if let (Some((_, Ok(()))), Ok(c)) = (&checked, &mut content)
            && let Kind::Case(Ok(t)) = &mut c.kind
        {
            t.check_early(app, &self.hints.accepted(app));
        }
        Ok(Unverified {
            header: parsed.header,
            checked,
            content,
        })
    }
}

/// Reads an opened plaintext by the envelope's kind.
fn content(app: &str, h: &EnvelopeHeader, body: Vec<u8>) -> Result<Content, Reject> {
    let kind = match h.kind {
        seal::BundleKind::Attachment => {
            let (part, data) = crate::sync::attachment_wire::decode(&body)
                .map_err(|e| (Some(app.to_string()), "BAD_PAYLOAD", e.to_string()))?;
            Kind::Attachment(part, body.len() - data.len())
        }
        // A case bundle: one pass over the plaintext reads its resource type and audit trail.
        seal::BundleKind::Bundle => match audit_check::parse(&body) {
            Ok(t) => {
                fhir_type(app, t.resource_type.as_deref())?;
                Kind::Case(Ok(t))
            }
            // Not the shape a trail is read from: the resource type decides whether it is a
            // reject (as for every kind); if not, the unreadable trail is a finding.
            Err(finding) => {
                fhir_payload(app, h.kind, &body)?;
                Kind::Case(Err(finding))
            }
        },
        _ => Kind::Other(fhir_payload(app, h.kind, &body)?),
    };
    let telemetry = (h.kind == seal::BundleKind::Telemetry)
        .then(|| telemetry_summary(&body, h.created_at_ms as i64))
        .flatten();
    Ok(Content {
        body,
        kind,
        telemetry,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::SigningKey;

    fn key() -> PublicKey {
        SigningKey::from_pkcs8("k", &SigningKey::generate_pkcs8().unwrap())
            .unwrap()
            .public()
    }

    #[test]
    fn hints_follow_what_the_store_last_said() {
        let (a, b) = (key(), key());
        let id = |k: &PublicKey| seal::key_id8(&k.0);
        let hints = KeyHints::default();
        assert_eq!(hints.key("amb-1", id(&a)), None);
        hints.seen("amb-1", &[a.clone(), b.clone()]);
        assert_eq!(hints.key("amb-1", id(&b)), Some(b.clone()));
        assert_eq!(hints.key("amb-2", id(&b)), None);
        // A replaced key is no longer hinted; a revoked appliance has no hint at all.
        hints.seen("amb-1", std::slice::from_ref(&b));
        assert_eq!(hints.key("amb-1", id(&a)), None);
        hints.seen("amb-1", &[]);
        assert_eq!(hints.key("amb-1", id(&b)), None);
    }
}
