//! The case bundle's audit trail: one `AuditEvent` per entry about the case or its patient,
//! carrying the entry's canonical bytes, and one for the signed checkpoint with the segment
//! that links the entries to it, so a receiver recomputes the chain (`docs/bundle-format.md`,
//! "Audit trail"). Pure.

use base64::Engine;
use serde_json::{Value, json};

use crate::model::{CaseExport, ExportAudit, ExportCheckpoint, ExportSegment, iso8601_ms};

/// Identifier system of audit entries and checkpoints.
pub const SYS_AUDIT: &str = "urn:hema3n:audit";
const SYS_APPLIANCE: &str = "urn:hema3n:appliance";

/// The case export's trail as `(id, resource)`; `rid` makes a resource id from its role.
pub(super) fn case_audit_events(
    x: &CaseExport,
    rid: &dyn Fn(&str) -> String,
) -> Vec<(String, Value)> {
    audit_events(
        &x.appliance_id,
        &x.audit,
        x.checkpoint.as_ref(),
        x.audit_segment.as_ref(),
        rid,
    )
}

/// The AuditEvents of `entries` and of the checkpoint with its segment, as `(id, resource)`.
pub fn audit_events(
    appliance_id: &str,
    entries: &[ExportAudit],
    checkpoint: Option<&ExportCheckpoint>,
    segment: Option<&ExportSegment>,
    rid: &dyn Fn(&str) -> String,
) -> Vec<(String, Value)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(entries.len() + 1);
    for a in entries {
        let id = rid(&format!("audit/{}", a.seq));
        let action = match a.action.rsplit('.').next().unwrap_or("") {
            "create" | "queue" | "seal" | "bind" | "attach" => "C",
            "read" | "search" | "export" => "R",
            "update" | "close" | "triage" => "U",
            "erase" | "purge" => "D",
            _ => "E",
        };
        let outcome = match a.outcome.as_str() {
            "success" => "0",
            "denied" => "4",
            _ => "8",
        };
        out.push((
            id.clone(),
            json!({
                "resourceType": "AuditEvent",
                "id": id,
                "type": { "system": SYS_AUDIT, "code": a.action },
                "action": action,
                "recorded": iso8601_ms(a.ts_ms),
                "outcome": outcome,
                "agent": [{
                    "who": { "identifier": { "system": "urn:hema3n:user", "value": a.actor } },
                    "role": [{ "text": a.role }],
                    "requestor": true,
                }],
                "source": { "observer": { "identifier": { "system": SYS_APPLIANCE, "value": appliance_id } } },
                "entity": [{
                    "what": { "identifier": { "system": SYS_AUDIT, "value": a.resource } },
                    "detail": [
                        { "type": "seq", "valueString": a.seq.to_string() },
                        { "type": "hash", "valueBase64Binary": b64.encode(a.hash) },
                        { "type": "canonical", "valueBase64Binary": b64.encode(&a.canonical) },
                    ],
                }],
            }),
        ));
    }
    if let Some(c) = checkpoint {
        let id = rid("audit/checkpoint");
        let mut detail = vec![
            json!({ "type": "seq", "valueString": c.seq.to_string() }),
            json!({ "type": "ts", "valueString": c.ts_ms.to_string() }),
            json!({ "type": "hash", "valueBase64Binary": b64.encode(c.hash) }),
            json!({ "type": "key_id", "valueString": c.key_id }),
            json!({ "type": "signature", "valueBase64Binary": b64.encode(&c.signature) }),
        ];
        if let Some(s) = segment {
            detail.extend([
                json!({ "type": "segment_from", "valueString": s.from_seq.to_string() }),
                json!({ "type": "segment_prev", "valueBase64Binary": b64.encode(s.prev_hash) }),
                json!({ "type": "segment_links", "valueBase64Binary": b64.encode(&s.links) }),
            ]);
        }
        out.push((
            id.clone(),
            json!({
                "resourceType": "AuditEvent",
                "id": id,
                "type": { "system": SYS_AUDIT, "code": "checkpoint", "display": "signed audit-log checkpoint" },
                "action": "E",
                "recorded": iso8601_ms(c.ts_ms),
                "outcome": "0",
                "agent": [{
                    "who": { "identifier": { "system": SYS_APPLIANCE, "value": appliance_id } },
                    "requestor": false,
                }],
                "source": { "observer": { "identifier": { "system": SYS_APPLIANCE, "value": appliance_id } } },
                "entity": [{
                    "what": { "identifier": { "system": SYS_AUDIT, "value": format!("checkpoint/{}", c.seq) } },
                    "detail": detail,
                }],
            }),
        ));
    }
    out
}
