//! The care record's FHIR R4 resources for the case bundle: crew as Practitioner and
//! PractitionerRole, scene and destination as Location, impressions and history as Condition,
//! AllergyIntolerance, MedicationStatement, medications given as MedicationAdministration,
//! procedures as Procedure, oxygen flow, assessments and the SpO2 scale as Observations, and the
//! call times, disposition and narrative on the Encounter. Entries marked entered-in-error are
//! left out. Pure: no IO, no clock.

use serde_json::{Value, json};

use crate::model::record::{
    Assessment, Disposition, EventKind, History, Incident, MedicationGiven, Narrative, Oxygen,
    Procedure, Scene, Section, Situation, Spo2Scale, Times, codes,
};
use crate::model::{CaseExport, iso8601_ms};

const SNOMED: &str = "http://snomed.info/sct";
const ICD10CM: &str = "http://hl7.org/fhir/sid/icd-10-cm";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const SYS_USER: &str = "urn:hema3n:user";
const SYS_INCIDENT: &str = "urn:hema3n:incident";
const SYS_RUN: &str = "urn:hema3n:run";
const SYS_ENTRY: &str = "urn:hema3n:record-entry";
/// Identifier system of the DocumentReference that carries the NEMSIS document.
pub const SYS_NEMSIS: &str = "urn:hema3n:nemsis";
/// Extension holding one NEMSIS eTimes time on the Encounter.
pub const EXT_ETIME: &str = "urn:hema3n:fhir:etime";

/// What the record adds to the bundle: its resources, and what it sets on the Encounter.
pub(super) struct RecordParts {
    pub resources: Vec<(String, Value)>,
}

/// Ids and references the record's resources need from the rest of the bundle.
pub(super) struct Ctx<'a> {
    pub rid: &'a dyn Fn(&str) -> String,
    pub patient: &'a str,
    pub encounter: &'a str,
}

/// Escapes text for the XHTML narrative of a resource.
pub(super) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn reference(id: &str) -> Value {
    json!({ "reference": format!("urn:uuid:{id}") })
}

/// Adds the record to `enc` (the Encounter) and returns the record's own resources.
pub(super) fn build(x: &CaseExport, c: &Ctx<'_>, enc: &mut Value) -> RecordParts {
    let r = &x.record;
    let mut out: Vec<(String, Value)> = Vec::new();
    let subject = reference(c.patient);
    let context = reference(c.encounter);

    // People: one Practitioner per account the record names.
    let practitioner = |acct: &str| (c.rid)(&format!("practitioner/{acct}"));
    for (acct, name, _) in &x.people {
        let id = practitioner(acct);
        out.push((
            id.clone(),
            json!({
                "resourceType": "Practitioner", "id": id,
                "identifier": [{ "system": SYS_USER, "value": acct }],
                "name": [{ "text": name }],
            }),
        ));
    }
    let who = |acct: &str| -> Value {
        if x.people.iter().any(|(a, _, _)| a == acct) {
            reference(&practitioner(acct))
        } else {
            json!({ "identifier": { "system": SYS_USER, "value": acct } })
        }
    };

    // Incident: identifiers, unit, crew roles.
    if let Some(i) = r.section::<Incident>(Section::Incident) {
        let ids = enc["identifier"]
            .as_array_mut()
            .expect("encounter identifiers");
        if let Some(n) = &i.incident_number {
            ids.push(json!({ "system": SYS_INCIDENT, "value": n }));
        }
        if let Some(n) = &i.run_number {
            ids.push(json!({ "system": SYS_RUN, "value": n }));
        }
        if let Some(u) = &i.unit {
            enc["serviceProvider"] = json!({ "display": format!("unit {u}") });
        }
        let mut participants = vec![];
        for m in i.crew.unwrap_or_default() {
            let id = (c.rid)(&format!("practitioner-role/{}", m.account));
            out.push((
                id.clone(),
                json!({
                    "resourceType": "PractitionerRole", "id": id,
                    "practitioner": who(&m.account),
                    "code": [{ "text": m.role.label() }],
                }),
            ));
            participants.push(
                json!({ "type": [{ "text": m.role.label() }], "individual": reference(&id) }),
            );
        }
        if !participants.is_empty() {
            enc["participant"] = json!(participants);
        }
    }

    // Times: the period and each eTimes value.
    if let Some(t) = r.section::<Times>(Section::Times) {
        let mut ext = vec![];
        for (name, v) in t.ordered() {
            if let Some(v) = v {
                ext.push(json!({ "url": format!("{EXT_ETIME}:{}", name.trim_end_matches("_ms")), "valueDateTime": iso8601_ms(v) }));
            }
        }
        if let Some(start) = t.call_received_ms.or(t.dispatched_ms) {
            enc["period"]["start"] = json!(iso8601_ms(start.min(x.created_at_ms)));
        }
        if let Some(end) = t.transfer_of_care_ms.or(t.at_destination_ms) {
            enc["period"]["end"] = json!(iso8601_ms(end.max(x.created_at_ms)));
        }
        if !ext.is_empty() {
            enc["extension"] = json!(ext);
        }
    }

    // Scene.
    let mut locations = vec![];
    if let Some(s) = r.section::<Scene>(Section::Scene) {
        let id = (c.rid)("location/scene");
        let mut loc =
            json!({ "resourceType": "Location", "id": id, "name": "scene", "mode": "instance" });
        let mut desc = vec![];
        if let Some(d) = &s.description {
            desc.push(d.clone());
        }
        if let Some(n) = s.patient_count {
            desc.push(format!("{n} patient(s) at scene"));
        }
        if s.mass_casualty == Some(true) {
            desc.push("mass-casualty incident".into());
        }
        if !desc.is_empty() {
            loc["description"] = json!(desc.join("; "));
        }
        if let Some(a) = &s.address {
            loc["address"] = json!({ "text": a });
        }
        if let (Some(lat), Some(lon)) = (s.latitude, s.longitude) {
            loc["position"] = json!({ "latitude": lat, "longitude": lon });
        }
        locations.push(json!({ "location": reference(&id), "status": "completed" }));
        out.push((id, loc));
    }

    // Disposition: destination, discharge disposition, transfer of care.
    if let Some(d) = r.section::<Disposition>(Section::Disposition) {
        let mut hosp = json!({});
        if let Some(dest) = &d.destination {
            let id = (c.rid)("location/destination");
            let mut loc =
                json!({ "resourceType": "Location", "id": id, "name": dest, "mode": "instance" });
            if let Some(why) = d.destination_reason {
                loc["description"] = json!(format!("chosen: {}", why.label()));
            }
            hosp["destination"] = reference(&id);
            out.push((id, loc));
        }
        let mut disp = vec![];
        if let Some(p) = d.patient_disposition {
            disp.push(p.label());
        }
        if let Some(t) = d.transport {
            disp.push(t.label());
        }
        if let Some(m) = d.transport_mode {
            disp.push(m.label());
        }
        if !disp.is_empty() {
            hosp["dischargeDisposition"] = json!({ "text": disp.join("; ") });
        }
        if hosp.as_object().is_some_and(|o| !o.is_empty()) {
            enc["hospitalization"] = hosp;
        }
        if let Some(to) = &d.transfer_to {
            let p = enc["participant"].as_array().cloned().unwrap_or_default();
            let mut p = p;
            p.push(json!({ "type": [{ "text": "transfer of care to" }], "individual": { "display": to } }));
            enc["participant"] = json!(p);
        }
    }
    if !locations.is_empty() {
        enc["location"] = json!(locations);
    }

    // Narrative on the Encounter's text, after what is there.
    if let Some(n) = r
        .section::<Narrative>(Section::Narrative)
        .and_then(|n| n.text)
    {
        let prior = enc["text"]["div"]
            .as_str()
            .map(|d| {
                d.trim_start_matches("<div xmlns=\"http://www.w3.org/1999/xhtml\">")
                    .trim_end_matches("</div>")
                    .to_string()
            })
            .filter(|d| !d.is_empty());
        let div = match prior {
            Some(p) => format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\">{p}<p>{}</p></div>",
                xml_escape(&n)
            ),
            None => format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{}</p></div>",
                xml_escape(&n)
            ),
        };
        enc["text"] = json!({ "status": "generated", "div": div });
    }

    // Impressions.
    if let Some(s) = r.section::<Situation>(Section::Situation) {
        let recorded = r
            .current(Section::Situation.as_str())
            .first()
            .map(|v| v.recorded_at_ms)
            .unwrap_or(x.created_at_ms);
        let all = s.primary_impression.iter().map(|i| (i, "primary")).chain(
            s.secondary_impressions
                .iter()
                .flatten()
                .map(|i| (i, "secondary")),
        );
        for (n, (imp, rank)) in all.enumerate() {
            let id = (c.rid)(&format!("condition/impression/{n}"));
            let label = codes::impression(&imp.code).map_or(imp.code.as_str(), |i| i.label);
            let mut cond = json!({
                "resourceType": "Condition", "id": id,
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active" }] },
                "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "provisional" }] },
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis" }], "text": format!("{rank} impression") }],
                "code": { "coding": [{ "system": ICD10CM, "code": imp.code, "display": label }], "text": label },
                "subject": subject, "encounter": context, "recordedDate": iso8601_ms(recorded),
            });
            if let Some(t) = s.symptom_onset_ms {
                cond["onsetDateTime"] = json!(iso8601_ms(t));
            }
            if let Some(note) = &imp.note {
                cond["note"] = json!([{ "text": note }]);
            }
            out.push((id, cond));
        }
    }

    // History: conditions, allergies (or none known), current medications, advance directive.
    if let Some(h) = r.section::<History>(Section::History) {
        for (n, cond) in h.medical_history.iter().flatten().enumerate() {
            let id = (c.rid)(&format!("condition/history/{n}"));
            out.push((
                id.clone(),
                json!({
                    "resourceType": "Condition", "id": id,
                    "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item" }] }],
                    "code": { "text": cond }, "subject": subject,
                }),
            ));
        }
        let allergy = |id: String, code: Value| {
            json!({
                "resourceType": "AllergyIntolerance", "id": id,
                "clinicalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active" }] },
                "verificationStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "unconfirmed" }] },
                "code": code, "patient": subject, "encounter": context,
            })
        };
        if h.no_known_allergies == Some(true) {
            let id = (c.rid)("allergy/none");
            out.push((
                id.clone(),
                allergy(id, json!({ "coding": [{ "system": SNOMED, "code": "409137002", "display": "No known drug allergy" }] })),
            ));
        }
        for (n, a) in h.allergies.iter().flatten().enumerate() {
            let id = (c.rid)(&format!("allergy/{n}"));
            out.push((id.clone(), allergy(id, json!({ "text": a }))));
        }
        for (n, m) in h.current_medications.iter().flatten().enumerate() {
            let id = (c.rid)(&format!("medication-statement/{n}"));
            out.push((
                id.clone(),
                json!({
                    "resourceType": "MedicationStatement", "id": id, "status": "active",
                    "medicationCodeableConcept": { "text": m }, "subject": subject, "context": context,
                }),
            ));
        }
        if let Some(ad) = h.advance_directive {
            let id = (c.rid)("observation/advance-directive");
            out.push((
                id.clone(),
                json!({
                    "resourceType": "Observation", "id": id, "status": "final",
                    "code": { "text": "Advance directive" }, "valueString": ad.label(),
                    "subject": subject, "encounter": context,
                }),
            ));
        }
    }

    // Oxygen flow, as Observations (a stop is a flow of 0).
    for (v, o) in r.events::<Oxygen>(EventKind::Oxygen) {
        let id = (c.rid)(&format!("observation/oxygen/{}", v.entry_id));
        let flow = o.flow_l_min.unwrap_or(0.0);
        let mut obs = json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "identifier": [{ "system": SYS_ENTRY, "value": v.entry_id }],
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "therapy" }] }],
            "code": { "coding": [{ "system": LOINC, "code": "3151-8", "display": "Inhaled oxygen flow rate" }], "text": "Oxygen flow" },
            "subject": subject, "encounter": context, "effectiveDateTime": iso8601_ms(o.at_ms),
            "valueQuantity": { "value": flow, "unit": "L/min", "system": UCUM, "code": "L/min" },
            "performer": [who(&v.recorded_by)],
            "note": [{ "text": format!("oxygen {}", o.action.label().to_lowercase()) }],
        });
        if let Some(d) = o.device {
            obs["method"] = json!({ "text": d.label() });
        }
        out.push((id, obs));
    }
    if let Some(s) = r.section::<Spo2Scale>(Section::Spo2Scale)
        && s.scale2 == Some(true)
    {
        let id = (c.rid)("observation/spo2-scale-2");
        let mut obs = json!({
            "resourceType": "Observation", "id": id, "status": "final",
            "code": { "text": "NEWS2 SpO2 scale 2 in use (hypercapnic respiratory failure)" },
            "valueBoolean": true, "subject": subject, "encounter": context,
        });
        if let Some(reason) = &s.reason {
            obs["note"] = json!([{ "text": reason }]);
        }
        out.push((id, obs));
    }

    // Medications given.
    for (v, m) in r.events::<MedicationGiven>(EventKind::Medication) {
        let id = (c.rid)(&format!("medication-administration/{}", v.entry_id));
        let med = if m.medication == codes::MedicationCode::Other {
            json!({ "text": m.note.clone().unwrap_or_else(|| "medication".into()) })
        } else {
            json!({ "coding": [{ "system": RXNORM, "code": m.medication.nemsis(), "display": m.medication.label() }], "text": m.medication.label() })
        };
        let mut dosage = json!({});
        if let Some(route) = m.route {
            dosage["route"] = json!({ "text": route.label() });
        }
        if let (Some(d), Some(u)) = (m.dose, m.dose_unit) {
            dosage["dose"] = json!({ "value": d, "unit": u.label() });
        }
        let mut ma = json!({
            "resourceType": "MedicationAdministration", "id": id, "status": "completed",
            "identifier": [{ "system": SYS_ENTRY, "value": v.entry_id }],
            "medicationCodeableConcept": med, "subject": subject, "context": context,
            "effectiveDateTime": iso8601_ms(m.at_ms),
            "performer": [{ "actor": who(m.performer.as_deref().unwrap_or(&v.recorded_by)) }],
        });
        if dosage.as_object().is_some_and(|o| !o.is_empty()) {
            ma["dosage"] = dosage;
        }
        let mut notes = vec![];
        if let Some(resp) = m.response {
            notes.push(format!("response: {}", resp.label()));
        }
        if m.medication != codes::MedicationCode::Other
            && let Some(n) = &m.note
        {
            notes.push(n.clone());
        }
        if !notes.is_empty() {
            ma["note"] = json!([{ "text": notes.join("; ") }]);
        }
        out.push((id, ma));
    }

    // Procedures.
    for (v, p) in r.events::<Procedure>(EventKind::Procedure) {
        let id = (c.rid)(&format!("procedure/{}", v.entry_id));
        let mut pr = json!({
            "resourceType": "Procedure", "id": id, "status": "completed",
            "identifier": [{ "system": SYS_ENTRY, "value": v.entry_id }],
            "code": { "coding": [{ "system": SNOMED, "code": p.procedure.nemsis(), "display": p.procedure.label() }], "text": p.procedure.label() },
            "subject": subject, "encounter": context, "performedDateTime": iso8601_ms(p.at_ms),
            "performer": [{ "actor": who(p.performer.as_deref().unwrap_or(&v.recorded_by)) }],
            "outcome": { "text": format!("{} after {} attempt(s)", if p.successful { "successful" } else { "unsuccessful" }, p.attempts) },
        });
        if let Some(site) = &p.site {
            pr["bodySite"] = json!([{ "text": site }]);
        }
        let notes: Vec<String> = [p.size.as_ref().map(|s| format!("size {s}")), p.note.clone()]
            .into_iter()
            .flatten()
            .collect();
        if !notes.is_empty() {
            pr["note"] = json!([{ "text": notes.join("; ") }]);
        }
        out.push((id, pr));
    }

    // Assessments: one Observation per finding.
    for (v, a) in r.events::<Assessment>(EventKind::Assessment) {
        let base = |role: &str, code: Value| -> (String, Value) {
            let id = (c.rid)(&format!("observation/assessment/{}/{role}", v.entry_id));
            (
                id.clone(),
                json!({
                    "resourceType": "Observation", "id": id, "status": "final",
                    "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam" }] }],
                    "code": code, "subject": subject, "encounter": context,
                    "effectiveDateTime": iso8601_ms(a.at_ms), "performer": [who(&v.recorded_by)],
                }),
            )
        };
        if let Some(total) = a.gcs_total() {
            let (id, mut o) = base(
                "gcs",
                json!({ "coding": [{ "system": LOINC, "code": "9269-2", "display": "Glasgow coma score total" }] }),
            );
            o["valueQuantity"] =
                json!({ "value": total, "system": UCUM, "code": "{score}", "unit": "score" });
            let part = |code: &str, display: &str, v: Option<u32>| json!({ "code": { "coding": [{ "system": LOINC, "code": code, "display": display }] }, "valueQuantity": { "value": v, "system": UCUM, "code": "{score}", "unit": "score" } });
            o["component"] = json!([
                part("9267-6", "Glasgow coma score eye opening", a.gcs_eye),
                part("9270-0", "Glasgow coma score verbal", a.gcs_verbal),
                part("9268-4", "Glasgow coma score motor", a.gcs_motor),
            ]);
            out.push((id, o));
        }
        if let Some(p) = a.pupils {
            let (id, mut o) = base("pupils", json!({ "text": "Pupils" }));
            o["valueString"] = json!(p.label());
            out.push((id, o));
        }
        if let Some(s) = a.skin {
            let (id, mut o) = base("skin", json!({ "text": "Skin" }));
            o["valueString"] = json!(s.label());
            out.push((id, o));
        }
        if let Some(b) = a.befast {
            let (id, mut o) = base("befast", json!({ "text": "BE-FAST stroke screen" }));
            o["valueString"] = json!(if b.positive() { "positive" } else { "negative" });
            let findings: Vec<&str> = [
                ("balance", b.balance),
                ("eyes", b.eyes),
                ("face", b.face),
                ("arm", b.arm),
                ("speech", b.speech),
            ]
            .into_iter()
            .filter(|(_, p)| *p)
            .map(|(n, _)| n)
            .collect();
            if !findings.is_empty() {
                o["note"] = json!([{ "text": format!("positive: {}", findings.join(", ")) }]);
            }
            out.push((id, o));
        }
        if let Some(p) = a.pain {
            let (id, mut o) = base(
                "pain",
                json!({ "coding": [{ "system": LOINC, "code": "72514-3", "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported" }] }),
            );
            o["valueQuantity"] =
                json!({ "value": p, "system": UCUM, "code": "{score}", "unit": "score" });
            out.push((id, o));
        }
    }
    RecordParts { resources: out }
}

/// The DocumentReference carrying the case's NEMSIS v3.5.1 document (base64, with its SHA-256
/// and size), or, when the record lacked what NEMSIS requires, saying so.
pub(super) fn nemsis_reference(
    c: &Ctx<'_>,
    doc: &Result<String, super::nemsis::Incomplete>,
    now_ms: i64,
) -> (String, Value) {
    use base64::Engine;
    let id = (c.rid)("document/nemsis");
    let mut d = json!({
        "resourceType": "DocumentReference", "id": id, "status": "current",
        "identifier": [{ "system": SYS_NEMSIS, "value": "EMSDataSet-3.5.1" }],
        "type": { "text": "NEMSIS v3.5.1 EMSDataSet" },
        "subject": reference(c.patient), "date": iso8601_ms(now_ms),
        "context": { "encounter": [reference(c.encounter)] },
    });
    match doc {
        Ok(xml) => {
            let sha = crate::crypto::sha256(xml.as_bytes());
            d["identifier"]
                .as_array_mut()
                .expect("identifiers")
                .push(json!({ "system": "urn:hema3n:sha256", "value": hex::encode(sha) }));
            d["content"] = json!([{ "attachment": {
                "contentType": "application/xml", "title": "EMSDataSet.xml",
                "size": xml.len(),
                "data": base64::engine::general_purpose::STANDARD.encode(xml.as_bytes()),
            } }]);
        }
        Err(e) => {
            d["docStatus"] = json!("preliminary");
            d["description"] = json!(e.to_string());
            d["content"] = json!([{ "attachment": { "contentType": "application/xml", "title": "EMSDataSet.xml (not built)" } }]);
        }
    }
    (id, d)
}

/// The NEMSIS document a case bundle carries (checked against its SHA-256), or why it has none.
pub fn nemsis_document(bundle: &Value) -> Result<Vec<u8>, String> {
    attached_document(bundle, SYS_NEMSIS, "NEMSIS").map_err(|e| {
        e.unwrap_or_else(|| {
            "this bundle carries no NEMSIS document (a pre-alert, or built before schema 8)".into()
        })
    })
}

/// The inline attachment of the DocumentReference identified in `system`, checked against the
/// SHA-256 it records. `Err(None)` when there is no such document; `Err(Some(why))` when it is
/// unusable (its description says why it was not built, or the data does not match).
pub(super) fn attached_document(
    bundle: &Value,
    system: &str,
    what: &str,
) -> Result<Vec<u8>, Option<String>> {
    use base64::Engine;
    let doc = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .find(|r| {
            r["resourceType"] == "DocumentReference"
                && r["identifier"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i["system"] == system))
        })
        .ok_or(None)?;
    let Some(data) = doc["content"][0]["attachment"]["data"].as_str() else {
        return Err(Some(
            doc["description"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("the {what} document was not built")),
        ));
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("the {what} attachment is not base64: {e}"))?;
    let want = doc["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["system"] == "urn:hema3n:sha256")
        .and_then(|i| i["value"].as_str())
        .ok_or(format!("the {what} attachment has no SHA-256"))?;
    if hex::encode(crate::crypto::sha256(&bytes)) != want {
        return Err(Some(format!(
            "the {what} attachment does not match its SHA-256"
        )));
    }
    Ok(bytes)
}
