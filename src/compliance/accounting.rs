//! A patient's accounting of disclosures (45 CFR §164.528, and the access report a privacy
//! officer is asked for): the successful reads and disclosures of the patient's data that the
//! audit log recorded, as a FHIR R4 `Bundle` of `AuditEvent`s or as CSV. Pure: the rows come
//! from `Db::audit_disclosures`, which audits the export itself.

use serde_json::{Value, json};

use crate::model::access::{self, AccessKind};
use crate::model::iso8601_ms;
use crate::storage::AuditRow;

/// Identifier systems of the export.
const SYS_USER: &str = "urn:hema3n:user";
const SYS_PATIENT: &str = "urn:hema3n:patient";
const SYS_AUDIT: &str = "urn:hema3n:audit";
const SYS_APPLIANCE: &str = "urn:hema3n:appliance";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// FHIR R4 `Bundle` (type `collection`) of `AuditEvent` resources.
    Fhir,
    /// RFC 4180 CSV, one line per access, with a header line.
    Csv,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "fhir" | "json" => Some(Format::Fhir),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Fhir => "fhir",
            Format::Csv => "csv",
        }
    }
}

/// One access as the export shows it.
struct Access<'a> {
    kind: &'static str,
    purpose: &'a str,
    fields: String,
    address: &'a str,
    session: &'a str,
}

fn access(row: &AuditRow) -> Access<'_> {
    let d = &row.details;
    fn s(v: &Value) -> &str {
        v.as_str().unwrap_or("")
    }
    Access {
        kind: match access::access_kind(&row.action) {
            AccessKind::Disclosure => "disclosure",
            _ => "read",
        },
        purpose: s(&d["purpose"]),
        fields: d["phi_fields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        address: s(&d["access"]["address"]),
        session: s(&d["access"]["session"]),
    }
}

/// The CSV header line's columns.
pub const CSV_COLUMNS: &[&str] = &[
    "seq",
    "time",
    "user",
    "role",
    "kind",
    "action",
    "purpose",
    "phi_fields",
    "resource",
    "territory",
    "address",
    "session",
];

/// The accounting as CSV (UTF-8, CRLF line ends, fields quoted when they need it).
pub fn csv(rows: &[AuditRow]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    for r in rows {
        let a = access(r);
        let cells = [
            r.seq.to_string(),
            iso8601_ms(r.ts_ms),
            r.actor.clone(),
            r.role.clone(),
            a.kind.to_string(),
            r.action.clone(),
            a.purpose.to_string(),
            a.fields.clone(),
            r.resource.clone(),
            r.territory.clone(),
            a.address.to_string(),
            a.session.to_string(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(c: &str) -> String {
    // A leading = + - @ would be a formula in a spreadsheet: quote and prefix it.
    let formula = c.starts_with(['=', '+', '-', '@']);
    if formula || c.contains([',', '"', '\r', '\n']) {
        let inner = c.replace('"', "\"\"");
        if formula {
            format!("\"'{inner}\"")
        } else {
            format!("\"{inner}\"")
        }
    } else {
        c.to_string()
    }
}

/// A stable `urn:uuid:` for one resource of the export (the bundles' own rule, scoped to the
/// appliance's accounting).
fn urn(appliance_id: &str, what: &str) -> String {
    let id = crate::sync::fhir::rid(&format!("{appliance_id}|accounting"), what);
    format!("urn:uuid:{id}")
}

/// The accounting as a FHIR R4 `Bundle` of `AuditEvent`s, oldest first. `made_ms` is when the
/// export was made (the bundle's timestamp).
pub fn fhir_bundle(appliance_id: &str, patient: &str, rows: &[AuditRow], made_ms: i64) -> Value {
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| {
            let a = access(r);
            let url = urn(appliance_id, &format!("{patient}|{}", r.seq));
            let (type_code, type_display) = if a.kind == "disclosure" {
                ("110106", "Export")
            } else {
                ("110110", "Patient Record")
            };
            let reason = match a.purpose {
                access::BREAK_GLASS => "ETREAT",
                access::DISCLOSURE => "COC",
                access::OPERATIONS => "HOPERAT",
                _ => "TREAT",
            };
            let mut agent = json!({
                "who": { "identifier": { "system": SYS_USER, "value": r.actor } },
                "role": [{ "text": r.role }],
                "requestor": true,
            });
            if !a.address.is_empty() {
                agent["network"] = json!({ "address": a.address, "type": "2" });
            }
            let mut detail = vec![
                json!({ "type": "seq", "valueString": r.seq.to_string() }),
                json!({ "type": "resource", "valueString": r.resource }),
            ];
            if !a.fields.is_empty() {
                detail.push(json!({ "type": "phi_fields", "valueString": a.fields }));
            }
            if !a.session.is_empty() {
                detail.push(json!({ "type": "session", "valueString": a.session }));
            }
            json!({
                "fullUrl": url,
                "resource": {
                    "resourceType": "AuditEvent",
                    "id": url.trim_start_matches("urn:uuid:"),
                    "type": { "system": DCM, "code": type_code, "display": type_display },
                    "subtype": [{ "system": SYS_AUDIT, "code": r.action }],
                    "action": if a.kind == "disclosure" { "E" } else { "R" },
                    "recorded": iso8601_ms(r.ts_ms),
                    "outcome": "0",
                    "purposeOfEvent": [{
                        "coding": [{ "system": ACT_REASON, "code": reason }],
                        "text": a.purpose,
                    }],
                    "agent": [agent],
                    "source": {
                        "site": r.territory,
                        "observer": { "identifier": { "system": SYS_APPLIANCE, "value": appliance_id } },
                    },
                    "entity": [{
                        "what": { "identifier": { "system": SYS_PATIENT, "value": patient } },
                        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
                        "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" },
                        "detail": detail,
                    }],
                },
            })
        })
        .collect();
    let mut b = json!({
        "resourceType": "Bundle",
        "id": urn(appliance_id, &format!("{patient}|bundle|{made_ms}")).trim_start_matches("urn:uuid:"),
        "type": "collection",
        "timestamp": iso8601_ms(made_ms),
        "total": rows.len(),
    });
    // FHIR JSON never carries an empty array: no accesses, no `entry`.
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, action: &str, details: Value) -> AuditRow {
        AuditRow {
            seq,
            ts_ms: 1_796_630_400_000 + seq,
            actor: "medic".into(),
            role: "paramedic".into(),
            action: action.into(),
            resource: "patient/p1".into(),
            outcome: "success".into(),
            territory: "default".into(),
            details,
        }
    }

    #[test]
    fn csv_has_one_line_per_access_and_quotes_what_it_must() {
        let rows = [
            row(
                7,
                "patient.read",
                json!({"purpose": "treatment", "phi_fields": ["first_name", "ssn"],
                       "access": {"address": "10.0.0.7", "session": "ab12"}}),
            ),
            row(9, "case.export", json!({"purpose": "disclosure"})),
        ];
        let mut r = rows[1].clone();
        r.actor = "=cmd|x,\"y\"".into();
        let out = csv(&[rows[0].clone(), r]);
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(lines[0], CSV_COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "7,2026-12-07T08:00:00.007Z,medic,paramedic,read,patient.read,treatment,first_name ssn,patient/p1,default,10.0.0.7,ab12"
        );
        assert_eq!(
            lines[2],
            "9,2026-12-07T08:00:00.009Z,\"'=cmd|x,\"\"y\"\"\",paramedic,disclosure,case.export,disclosure,,patient/p1,default,,"
        );
        assert_eq!((lines.len(), lines[3]), (4, ""));
    }

    #[test]
    fn fhir_bundle_has_one_audit_event_per_access() {
        let rows = [
            row(
                3,
                "case.list",
                json!({"purpose": "break_glass", "access": {"address": "10.0.0.9"}}),
            ),
            row(4, "case.transfer", json!({"purpose": "disclosure"})),
        ];
        let b = fhir_bundle("amb-1", "p1", &rows, 1_796_630_500_000);
        assert_eq!(
            (b["type"].as_str(), b["total"].as_u64()),
            (Some("collection"), Some(2))
        );
        let e = &b["entry"][0]["resource"];
        assert_eq!(e["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
        assert_eq!(e["agent"][0]["network"]["address"], "10.0.0.9");
        assert_eq!(e["entity"][0]["what"]["identifier"]["value"], "p1");
        let d = &b["entry"][1]["resource"];
        assert_eq!(
            (d["type"]["code"].as_str(), d["action"].as_str()),
            (Some("110106"), Some("E"))
        );
        assert_ne!(b["entry"][0]["fullUrl"], b["entry"][1]["fullUrl"]);
    }
}
