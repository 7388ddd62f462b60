//! What an audit entry says beyond who did what: where the request came from (address, session,
//! tablet), the purpose of use, and the PHI fields the action touches — names, never values.
//! `storage::audit` adds this to every entry's details, which the hash chain covers and the cloud
//! receives with the case's trail. Pure: no IO.

use serde_json::{Map, Value, json};

use super::people::AuditEvent;

/// Care of the patient in front of the crew (the default).
pub const TREATMENT: &str = "treatment";
/// Access resting on a break-glass grant (its reason is in the grant, reviewed by a supervisor;
/// entries name the grant, never repeat the free text).
pub const BREAK_GLASS: &str = "break_glass";
/// PHI leaving the appliance: exports, documents handed over, bundles sealed for the cloud.
pub const DISCLOSURE: &str = "disclosure";
/// Running the appliance: accounts, keys, devices, backups, sign-ins — nothing about one
/// patient's care — and anything an administrator does.
pub const OPERATIONS: &str = "operations";

/// Actions that put PHI in someone else's hands.
const DISCLOSURES: &[&str] = &[
    "case.disclose",
    "case.export",
    "attachment.export",
    "case.transfer",
];

const PATIENT: &[&str] = &[
    "first_name",
    "last_name",
    "date_of_birth",
    "sex",
    "estimated_age_years",
    "mrn",
    "ssn",
    "email",
    "phone",
    "address",
    "insurance",
];
const CASE: &[&str] = &["chief_complaint", "mechanism", "onset"];

/// The PHI fields (or field groups) an action reads or writes; empty for actions on no PHI.
pub fn phi_fields(action: &str) -> &'static [&'static str] {
    match action {
        "case.list" => &["patient_name", "esi"],
        "case.erase" | "case.close" | "case.stream" => &[],
        "case.triage_read" | "triage.read" | "triage.record" => &["triage"],
        "case.handoff" | "case.disclose" | "case.export" | "case.transfer" => {
            &["demographics", "care_record", "vital_signs", "triage"]
        }
        _ => match action.split_once('.').map_or(action, |(group, _)| group) {
            "patient" => PATIENT,
            "case" => CASE,
            "observation" | "vitals" => &["vital_signs"],
            "record" | "draft" => &["care_record"],
            "attachment" => &["attachment"],
            _ => &[],
        },
    }
}

/// The purpose of use of `ev`.
pub fn purpose(ev: &AuditEvent) -> &'static str {
    let via = ev.actor.via.as_deref();
    if via.is_some_and(|v| v.break_glass.is_some()) {
        return BREAK_GLASS;
    }
    if DISCLOSURES.contains(&ev.action.as_str()) {
        return DISCLOSURE;
    }
    // Reviewing the trail (even one patient's) is running the appliance, not care.
    if ev.action.starts_with("audit.") {
        return OPERATIONS;
    }
    let about_a_patient = ["patient/", "case/", "attachment/"]
        .iter()
        .any(|p| ev.resource.starts_with(p));
    if (phi_fields(&ev.action).is_empty() && !about_a_patient) || ev.actor.role == "admin" {
        return OPERATIONS;
    }
    TREATMENT
}

/// The details stored with `ev`: its own (an object; anything else kept under `detail`) plus
/// `purpose`, `phi_fields` when it touches PHI, and `access` for an API request.
pub fn recorded_details(ev: &AuditEvent) -> Value {
    let mut m = match &ev.details {
        Value::Object(m) => m.clone(),
        Value::Null => Map::new(),
        other => Map::from_iter([("detail".to_string(), other.clone())]),
    };
    m.insert("purpose".into(), json!(purpose(ev)));
    let fields = phi_fields(&ev.action);
    if !fields.is_empty() {
        m.insert("phi_fields".into(), json!(fields));
    }
    if let Some(v) = ev.actor.via.as_deref().filter(|v| !v.address.is_empty()) {
        let mut a = json!({ "address": v.address, "session": v.session });
        if let Some(agent) = &v.agent {
            a["agent"] = json!(agent);
        }
        if let Some(g) = v.break_glass {
            a["break_glass"] = json!(g);
        }
        m.insert("access".into(), a);
    }
    Value::Object(m)
}

/// What an action does with the PHI it touches, for the accounting of disclosures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// Shown to someone (a screen, a list, a document, a stream).
    Read,
    /// Handed outside the appliance (exports, transfers, documents given away).
    Disclosure,
    /// Anything else: writes, erasure, sync bookkeeping, denials of no data.
    Other,
}

/// How `action` touches PHI.
pub fn access_kind(action: &str) -> AccessKind {
    if DISCLOSURES.contains(&action) {
        return AccessKind::Disclosure;
    }
    match action.rsplit_once('.').map_or("", |(_, verb)| verb) {
        "read" | "list" | "search" | "view" | "stream" | "handoff" | "triage_read" => {
            AccessKind::Read
        }
        _ => AccessKind::Other,
    }
}

/// One patient or case an audit entry concerns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    /// `patient` or `case`.
    pub kind: &'static str,
    pub id: String,
}

/// The patients and cases an entry concerns, from its resource (`patient/X`, `case/Y`) and its
/// recorded details (`patient`, `case`, `patients_shown`): a pure function of what the hash
/// chain covers, so the query index built from it can be checked against the log. Sorted,
/// without repeats.
pub fn subjects(resource: &str, details: &Value) -> Vec<Subject> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str, id: &str| {
        if !id.is_empty() && id != "*" {
            out.push(Subject {
                kind,
                id: id.to_string(),
            });
        }
    };
    if let Some((kind, id)) = resource.split_once('/') {
        match kind {
            "patient" => add("patient", id),
            "case" => add("case", id),
            _ => {}
        }
    }
    if let Some(p) = details.get("patient").and_then(Value::as_str) {
        add("patient", p);
    }
    if let Some(c) = details.get("case").and_then(Value::as_str) {
        add("case", c);
    }
    for p in details
        .get("patients_shown")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(p) = p.as_str() {
            add("patient", p);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessContext, Actor, Outcome};
    use std::sync::Arc;

    fn ev(actor: &Actor, action: &str) -> AuditEvent {
        AuditEvent::new(actor, action, "patient/x", Outcome::Success)
    }

    #[test]
    fn purpose_and_fields_follow_the_actor_and_the_action() {
        let mut medic = Actor::new("medic1", "paramedic");
        medic.via = Some(Arc::new(AccessContext {
            address: "10.0.0.7".into(),
            session: "ab".repeat(8),
            agent: Some("Tablet".into()),
            ..Default::default()
        }));
        let d = recorded_details(&ev(&medic, "patient.read"));
        assert_eq!(d["purpose"], "treatment");
        assert_eq!(d["access"]["address"], "10.0.0.7");
        assert_eq!(d["access"]["session"], "abababababababab");
        assert_eq!(d["access"]["agent"], "Tablet");
        assert!(
            d["phi_fields"]
                .as_array()
                .unwrap()
                .contains(&json!("last_name"))
        );
        assert_eq!(purpose(&ev(&medic, "case.disclose")), "disclosure");
        let login = AuditEvent::new(&medic, "login.success", "user/medic1", Outcome::Success);
        assert_eq!(purpose(&login), "operations");
        assert_eq!(purpose(&ev(&medic, "device.bind")), "treatment");
        let mut bg = medic.clone();
        bg.via = Some(Arc::new(AccessContext {
            address: "10.0.0.7".into(),
            break_glass: Some(4),
            ..Default::default()
        }));
        let d = recorded_details(&ev(&bg, "case.read"));
        assert_eq!(
            (d["purpose"].as_str(), d["access"]["break_glass"].as_i64()),
            (Some("break_glass"), Some(4))
        );
        assert_eq!(purpose(&ev(&Actor::system(), "case.export")), "disclosure");
        assert_eq!(
            purpose(&ev(&Actor::system(), "observation.ingest")),
            "treatment"
        );
        assert_eq!(purpose(&ev(&Actor::cli(), "keys.rotate")), "operations");
        assert_eq!(purpose(&ev(&Actor::cli(), "patient.read")), "operations");
        let d = recorded_details(&ev(&Actor::system(), "bundle.purge").details(json!(3)));
        assert_eq!((d["detail"].as_i64(), d.get("access")), (Some(3), None));
        let audit = AuditEvent::new(&medic, "audit.disclosures", "patient/x", Outcome::Success);
        assert_eq!(purpose(&audit), "operations");
    }

    #[test]
    fn subjects_come_from_the_resource_and_the_details() {
        let s = |r: &str, d: Value| {
            subjects(r, &d)
                .into_iter()
                .map(|s| format!("{}:{}", s.kind, s.id))
                .collect::<Vec<_>>()
        };
        assert_eq!(s("patient/p1", json!({})), ["patient:p1"]);
        assert_eq!(
            s("case/c1", json!({"patient": "p1"})),
            ["case:c1", "patient:p1"]
        );
        assert_eq!(
            s("attachment/a1", json!({"case": "c1", "patient": "p1"})),
            ["case:c1", "patient:p1"]
        );
        assert_eq!(
            s("case/*", json!({"patients_shown": ["p2", "p1", "p2"]})),
            ["patient:p1", "patient:p2"]
        );
        assert!(s("patient/*", json!({"hits": 2})).is_empty());
        assert!(s("user/medic", json!({"patient": 4})).is_empty());
    }

    #[test]
    fn reads_and_disclosures_are_told_apart() {
        for a in [
            "patient.read",
            "case.list",
            "case.handoff",
            "attachment.view",
            "case.triage_read",
        ] {
            assert_eq!(access_kind(a), AccessKind::Read, "{a}");
        }
        for a in [
            "case.export",
            "case.transfer",
            "case.disclose",
            "attachment.export",
        ] {
            assert_eq!(access_kind(a), AccessKind::Disclosure, "{a}");
        }
        for a in [
            "patient.update",
            "case.erase",
            "bundle.send",
            "login.success",
            "read",
        ] {
            assert_eq!(access_kind(a), AccessKind::Other, "{a}");
        }
    }
}
