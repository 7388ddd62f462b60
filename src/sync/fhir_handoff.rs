//! The handoff and pre-alert parts of a bundle: the handoff PDF as a `DocumentReference` (the
//! document inline, its SHA-256 as an identifier), and in a pre-alert the destination
//! (`Location`), the ETA, the time-critical conditions the crew flagged (`Flag`) and a
//! `Composition` whose `relatesTo` says which earlier pre-alert this one replaces. Pure.

use base64::Engine;
use serde_json::{Value, json};

use super::fhir_record::Ctx;
use crate::model::record::{Disposition, Section};
use crate::model::{CaseExport, iso8601_ms};

/// Identifier system of the DocumentReference that carries the handoff PDF.
pub const SYS_HANDOFF: &str = "urn:hema3n:handoff";
/// Identifier system of an attachment (the id its envelopes carry).
pub const SYS_ATTACHMENT: &str = "urn:hema3n:attachment";
/// Identifier system of a bundle id (a pre-alert's `relatesTo` target).
pub const SYS_BUNDLE: &str = "urn:hema3n:bundle";
/// Extension on the pre-alert Composition: expected arrival at the destination.
pub const EXT_ETA: &str = "urn:hema3n:fhir:eta";
/// Extension on the pre-alert Composition, one per reason it was sent (`esi 2 → 1`, …).
pub const EXT_REASON: &str = "urn:hema3n:fhir:prealert-reason";
const SYS_SHA256: &str = "urn:hema3n:sha256";

fn reference(id: &str) -> Value {
    json!({ "reference": format!("urn:uuid:{id}") })
}

/// The handoff PDF, inline, with its SHA-256.
pub(super) fn pdf_reference(c: &Ctx<'_>, pdf: &[u8], now_ms: i64) -> (String, Value) {
    let id = (c.rid)("document/handoff");
    let d = json!({
        "resourceType": "DocumentReference", "id": id, "status": "current",
        "identifier": [
            { "system": SYS_HANDOFF, "value": "handoff-pdf" },
            { "system": SYS_SHA256, "value": hex::encode(crate::crypto::sha256(pdf)) },
        ],
        "type": { "coding": [{ "system": "http://loinc.org", "code": "34133-9", "display": "Summary of episode note" }],
                  "text": "Hospital handoff (MIST/SBAR)" },
        "subject": reference(c.patient), "date": iso8601_ms(now_ms),
        "context": { "encounter": [reference(c.encounter)] },
        "content": [{ "attachment": {
            "contentType": "application/pdf", "title": "handoff.pdf", "size": pdf.len(),
            "data": base64::engine::general_purpose::STANDARD.encode(pdf),
        } }],
    });
    (id, d)
}

/// One resource per stored attachment: a `Media` for a photo, a `DocumentReference` for
/// the others. The bytes are not inline: they travel as attachment envelopes; the
/// `urn:hema3n:attachment` identifier names the attachment, `size` and the `urn:hema3n:sha256`
/// identifier let the receiver match the file to its record.
pub(super) fn attachment_resources(c: &Ctx<'_>, x: &CaseExport) -> Vec<(String, Value)> {
    use crate::model::AttachmentKind as K;
    let mut out = vec![];
    for a in &x.attachments {
        let id = (c.rid)(&format!("attachment/{}", a.id));
        let media = a
            .media_type
            .map_or("application/octet-stream", |m| m.as_str());
        let mut att = json!({
            "contentType": media, "size": a.size,
            "creation": iso8601_ms(a.created_at_ms),
        });
        if let Some(t) = a.caption.as_ref().or(a.filename.as_ref()) {
            att["title"] = json!(t);
        }
        let ident = json!([
            { "system": SYS_ATTACHMENT, "value": a.id },
            { "system": SYS_SHA256, "value": a.sha256.clone().unwrap_or_default() },
        ]);
        let photo = matches!(a.kind, K::ScenePhoto | K::Wound)
            && a.media_type.is_some_and(|m| m.is_image());
        let r = if photo {
            let mut m = json!({
                "resourceType": "Media", "id": id, "identifier": ident, "status": "completed",
                "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/media-type", "code": "image", "display": "Image" }] },
                "modality": { "text": a.kind.label() },
                "subject": reference(c.patient), "encounter": reference(c.encounter),
                "createdDateTime": iso8601_ms(a.created_at_ms), "content": att,
            });
            if let (Some(w), Some(h)) = (a.width, a.height) {
                m["width"] = json!(w);
                m["height"] = json!(h);
            }
            m
        } else {
            let ty = match a.kind {
                K::Ecg => {
                    json!({ "coding": [{ "system": "http://loinc.org", "code": "11524-6", "display": "EKG study" }], "text": a.kind.label() })
                }
                _ => json!({ "text": a.kind.label() }),
            };
            json!({
                "resourceType": "DocumentReference", "id": id, "identifier": ident, "status": "current",
                "type": ty, "subject": reference(c.patient), "date": iso8601_ms(a.created_at_ms),
                "context": { "encounter": [reference(c.encounter)] },
                "content": [{ "attachment": att }],
            })
        };
        out.push((id, r));
    }
    out
}

/// The handoff PDF a case bundle carries, checked against its SHA-256.
pub fn handoff_pdf(bundle: &Value) -> Result<Vec<u8>, String> {
    super::fhir_record::attached_document(bundle, SYS_HANDOFF, "handoff")
        .map_err(|e| e.unwrap_or_else(|| "the bundle has no handoff document".into()))
}

/// A pre-alert's destination, ETA, flags and its place in the chain.
pub(super) fn prealert_resources(c: &Ctx<'_>, x: &CaseExport, now_ms: i64) -> Vec<(String, Value)> {
    let mut out = vec![];
    let d: Disposition = x.record.section(Section::Disposition).unwrap_or_default();
    let mut section_entries = vec![];
    if let Some(dest) = &d.destination {
        let id = (c.rid)("location/destination");
        out.push((
            id.clone(),
            json!({ "resourceType": "Location", "id": id, "name": dest, "mode": "instance" }),
        ));
        section_entries.push(reference(&id));
    }
    for a in d.alerts.iter().flatten() {
        let id = (c.rid)(&format!("flag/{}", a.as_str()));
        out.push((
            id.clone(),
            json!({
                "resourceType": "Flag", "id": id, "status": "active",
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                    "code": "clinical", "display": "Clinical" }] }],
                "code": { "coding": [{ "system": "urn:hema3n:nemsis:eDisposition.24", "code": a.nemsis(),
                    "display": a.label() }], "text": a.label() },
                "subject": reference(c.patient),
                "encounter": reference(c.encounter),
            }),
        ));
        section_entries.push(reference(&id));
    }
    let mut lines = vec![];
    if let Some(dest) = &d.destination {
        lines.push(format!("Destination: {dest}"));
    }
    if let Some(t) = d.eta_ms {
        lines.push(format!("ETA: {}", iso8601_ms(t)));
    }
    if !x.prealert.reasons.is_empty() {
        lines.push(format!("Sent because: {}", x.prealert.reasons.join(", ")));
    }
    let div = format!(
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>",
        super::fhir_record::xml_escape(&if lines.is_empty() {
            "Hospital pre-alert".to_string()
        } else {
            lines.join("; ")
        })
    );
    let id = (c.rid)("composition/prealert");
    let mut comp = json!({
        "resourceType": "Composition", "id": id, "status": "final",
        "type": { "text": "Hospital pre-alert" },
        "subject": reference(c.patient),
        "encounter": reference(c.encounter),
        "date": iso8601_ms(now_ms),
        "author": [{ "identifier": { "system": "urn:hema3n:appliance", "value": x.appliance_id },
                     "display": format!("HEMA3N Edge appliance {}", x.appliance_id) }],
        "title": format!("Pre-alert {} of case {}", x.prealert.sent.len() + 1, x.case_id),
        "section": [{ "title": "Pre-alert", "text": { "status": "generated", "div": div } }],
    });
    if !section_entries.is_empty() {
        comp["section"][0]["entry"] = json!(section_entries);
    }
    let mut ext: Vec<Value> = d
        .eta_ms
        .map(|t| json!({ "url": EXT_ETA, "valueDateTime": iso8601_ms(t) }))
        .into_iter()
        .collect();
    ext.extend(
        x.prealert
            .reasons
            .iter()
            .map(|r| json!({ "url": EXT_REASON, "valueString": r })),
    );
    if !ext.is_empty() {
        comp["extension"] = json!(ext);
    }
    if let Some(prev) = x.prealert.sent.last() {
        comp["relatesTo"] = json!([{ "code": "replaces",
            "targetIdentifier": { "system": SYS_BUNDLE, "value": prev } }]);
    }
    out.push((id, comp));
    out
}

/// What a pre-alert bundle says (`None` when it is not one of ours).
pub fn prealert_summary(bundle: &Value) -> Option<crate::model::PrealertSummary> {
    let res: Vec<&Value> = bundle["entry"]
        .as_array()?
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let of = |t: &'static str| res.iter().copied().filter(move |r| r["resourceType"] == t);
    let comp = of("Composition").next()?;
    let case_id = of("Encounter")
        .next()?
        .get("identifier")?
        .as_array()?
        .iter()
        .find(|i| i["system"] == "urn:hema3n:case")?["value"]
        .as_str()?
        .to_string();
    let ext = |url: &'static str| {
        comp["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(move |e| e["url"] == url)
    };
    Some(crate::model::PrealertSummary {
        case_id,
        replaces: comp["relatesTo"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["code"] == "replaces")
            .and_then(|r| r["targetIdentifier"]["value"].as_str())
            .map(str::to_string),
        esi: of("RiskAssessment")
            .next()
            .and_then(|r| r["prediction"][0]["outcome"]["coding"][0]["code"].as_str())
            .and_then(|c| c.parse().ok()),
        destination: of("Location")
            .next()
            .and_then(|l| l["name"].as_str())
            .map(str::to_string),
        eta_ms: ext(EXT_ETA)
            .next()
            .and_then(|e| e["valueDateTime"].as_str())
            .and_then(crate::model::parse_iso8601_ms),
        alerts: of("Flag")
            .filter_map(|f| f["code"]["text"].as_str().map(str::to_string))
            .collect(),
        reasons: ext(EXT_REASON)
            .filter_map(|e| e["valueString"].as_str().map(str::to_string))
            .collect(),
    })
}
