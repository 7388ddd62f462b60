//! FHIR R4 (4.0.1) `Bundle` of type `collection` built from a [`CaseExport`]: Patient,
//! Coverage, Encounter, Devices, LOINC-coded vital-sign Observations with device references, the
//! triage as a RiskAssessment, the care record (`fhir_record`), Provenance, and the case's
//! audit trail as AuditEvents with the latest signed audit checkpoint. Pure: no IO, no clock.
//!
//! Every resource gets a stable UUID (derived from the bundle id and the resource's role), and
//! every reference is a `urn:uuid:` full URL inside the bundle, so the bundle is self-contained.

use serde_json::{Value, json};

use super::fhir_record::xml_escape;
use crate::model::{CaseExport, Observation, Sex, iso8601_ms};
use crate::vocab;

/// Which bundle to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The complete case at close: all demographics, readings, triage and audit trail.
    Case,
    /// Hospital pre-alert: minimum necessary (sex, birth date), latest reading of each vital and
    /// the triage. No direct identifiers, no audit trail.
    Prealert,
}

const SYS_APPLIANCE: &str = "urn:hema3n:appliance";
const SYS_CASE: &str = "urn:hema3n:case";
const SYS_PATIENT: &str = "urn:hema3n:patient";
const SYS_DEVICE: &str = "urn:hema3n:device";
const SYS_TRIAGE: &str = "urn:hema3n:triage";
const SYS_ESI: &str = "urn:hema3n:esi";
const SYS_SPECIALTY: &str = "urn:hema3n:specialty";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// A stable UUID for a resource of the bundle: SHA-256(bundle id | role) shaped as UUIDv8.
pub(crate) fn rid(bundle_id: &str, role: &str) -> String {
    let h = crate::crypto::sha256(format!("{bundle_id}|{role}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_custom_bytes(b).into_uuid().to_string()
}

fn urn(id: &str) -> String {
    format!("urn:uuid:{id}")
}

fn reference(id: &str) -> Value {
    json!({ "reference": urn(id) })
}

fn entry(id: &str, resource: Value) -> Value {
    json!({ "fullUrl": urn(id), "resource": resource })
}

fn ucum(vital: &str) -> (&'static str, &'static str) {
    // (unit display, UCUM code)
    match vital {
        "heart_rate" => ("beats/minute", "/min"),
        "resp_rate" => ("breaths/minute", "/min"),
        "spo2" => ("%", "%"),
        "sbp" | "dbp" | "etco2" => ("mmHg", "mm[Hg]"),
        "temp" => ("Cel", "Cel"),
        "glucose" => ("mg/dL", "mg/dL"),
        _ => ("{score}", "{score}"),
    }
}

fn display(vital: &str) -> &'static str {
    match vital {
        "heart_rate" => "Heart rate",
        "resp_rate" => "Respiratory rate",
        "spo2" => "Oxygen saturation in Arterial blood",
        "sbp" => "Systolic blood pressure",
        "dbp" => "Diastolic blood pressure",
        "temp" => "Body temperature",
        "etco2" => "Carbon dioxide [Partial pressure] in Exhaled gas --at end expiration",
        "glucose" => "Glucose [Mass/volume] in Blood",
        "gcs_total" => "Glasgow coma score total",
        "gcs_eye" => "Glasgow coma score eye opening",
        "gcs_verbal" => "Glasgow coma score verbal",
        "gcs_motor" => "Glasgow coma score motor",
        "avpu" => "Level of responsiveness (AVPU)",
        "pain" => "Pain severity 0-10 verbal numeric rating",
        _ => "Vital sign",
    }
}

/// The parts every vital-sign Observation shares: id, code, category, subject, device.
fn vital_base(
    bundle_id: &str,
    role: &str,
    r: &Observation,
    patient: &str,
    encounter: &str,
) -> Option<(String, Value, &'static vocab::Vital)> {
    let v = vocab::lookup(&r.code)?;
    let id = rid(bundle_id, role);
    let mut coding = vec![json!({ "system": LOINC, "code": v.loinc, "display": display(v.name) })];
    if v.name == "spo2" {
        coding.push(json!({ "system": LOINC, "code": "59408-5",
            "display": "Oxygen saturation in Arterial blood by Pulse oximetry" }));
    }
    let mut o = json!({
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "category": [{ "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs" }] }],
        "code": { "coding": coding, "text": v.name },
        "subject": reference(patient),
        "encounter": reference(encounter),
    });
    match &r.device_id {
        Some(d) => o["device"] = reference(&rid(bundle_id, &format!("device/{d}"))),
        None => o["method"] = json!({ "text": "manual entry by crew" }),
    }
    Some((id, o, v))
}

/// One reading as its own Observation.
fn observation(
    bundle_id: &str,
    i: usize,
    r: &Observation,
    patient: &str,
    encounter: &str,
) -> Option<(String, Value)> {
    let (id, mut o, v) = vital_base(
        bundle_id,
        &format!("observation/{i}"),
        r,
        patient,
        encounter,
    )?;
    o["effectiveDateTime"] = json!(iso8601_ms(r.device_time_ms));
    o["issued"] = json!(iso8601_ms(r.recv_time_ms));
    if v.name == "avpu" {
        let level = vocab::avpu_letter(r.value).unwrap_or("U");
        o["valueCodeableConcept"] = json!({ "text": level });
    } else {
        let (unit, code) = ucum(v.name);
        o["valueQuantity"] =
            json!({ "value": r.value, "unit": unit, "system": UCUM, "code": code });
    }
    Some((id, o))
}

/// A device's regular run of one vital as one SampledData Observation
/// ([`fhir_series`](super::fhir_series)). AVPU is sampled as its ACVPU level (0 = A … 4 = U).
fn sampled_observation(
    bundle_id: &str,
    i: usize,
    run: &super::fhir_series::Run<'_>,
    patient: &str,
    encounter: &str,
) -> Option<(String, Value)> {
    let first = run.readings[0];
    let (id, mut o, v) = vital_base(bundle_id, &format!("series/{i}"), first, patient, encounter)?;
    let (unit, code) = match v.name {
        "avpu" => ("ACVPU level (0 A, 1 C, 2 V, 3 P, 4 U)", "{ACVPU}"),
        n => ucum(n),
    };
    super::fhir_series::fill(&mut o, run, unit, code);
    Some((id, o))
}

fn patient_resource(x: &CaseExport, id: &str, profile: Profile) -> Vec<(String, Value)> {
    let mut p = json!({ "resourceType": "Patient", "id": id });
    let mut identifiers = vec![];
    if let Some(pid) = &x.patient_id {
        identifiers.push(json!({ "system": SYS_PATIENT, "value": pid }));
    } else {
        identifiers.push(json!({ "system": SYS_CASE, "value": x.case_id }));
    }
    let mut out = vec![];
    if let Some(pt) = &x.patient {
        if let Some(s) = pt.sex {
            p["gender"] = json!(match s {
                Sex::Female => "female",
                Sex::Male => "male",
                Sex::Other => "other",
                Sex::Unknown => "unknown",
            });
        }
        if let Some(d) = &pt.date_of_birth {
            p["birthDate"] = json!(d);
        }
        if profile == Profile::Case {
            if let Some(m) = &pt.mrn {
                identifiers.push(json!({
                    "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] },
                    "value": m }));
            }
            if let Some(ssn) = &pt.ssn {
                identifiers
                    .push(json!({ "system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn }));
            }
            let mut name = serde_json::Map::new();
            if let Some(f) = &pt.last_name {
                name.insert("family".into(), json!(f));
            }
            if let Some(g) = &pt.first_name {
                name.insert("given".into(), json!([g]));
            }
            if !name.is_empty() {
                p["name"] = json!([Value::Object(name)]);
            }
            let mut telecom = vec![];
            if let Some(ph) = &pt.phone {
                telecom.push(json!({ "system": "phone", "value": ph }));
            }
            if let Some(e) = &pt.email {
                telecom.push(json!({ "system": "email", "value": e }));
            }
            if !telecom.is_empty() {
                p["telecom"] = json!(telecom);
            }
            if let Some(a) = &pt.address {
                let mut ad = serde_json::Map::new();
                if let Some(s) = &a.street {
                    ad.insert("line".into(), json!([s]));
                }
                for (k, v) in [
                    ("city", &a.city),
                    ("state", &a.state),
                    ("postalCode", &a.zip),
                ] {
                    if let Some(v) = v {
                        ad.insert(k.into(), json!(v));
                    }
                }
                if !ad.is_empty() {
                    p["address"] = json!([Value::Object(ad)]);
                }
            }
            if let Some(ins) = &pt.insurance {
                let cid = rid(id, "coverage");
                let mut c = json!({
                    "resourceType": "Coverage",
                    "id": cid,
                    "status": "active",
                    "beneficiary": reference(id),
                    "payor": [{ "display": ins.carrier.clone().unwrap_or_else(|| "unknown".into()) }],
                });
                if let Some(pn) = &ins.policy_number {
                    c["subscriberId"] = json!(pn);
                }
                if let Some(g) = &ins.group_number {
                    c["class"] = json!([{
                        "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "group" }] },
                        "value": g }]);
                }
                out.push((cid, c));
            }
        }
    }
    p["identifier"] = json!(identifiers);
    out.insert(0, (id.to_string(), p));
    out
}

/// How vital-sign readings go into a case bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Series {
    /// Regular device runs as SampledData, the rest individual (the default).
    #[default]
    Sampled,
    /// One Observation per reading (the format before compaction; kept for comparison).
    Individual,
}

/// What a bundle may carry besides the case itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The case's NEMSIS v3.5.1 document (or why there is none), as a DocumentReference.
    pub nemsis: Option<&'a Result<String, super::nemsis::Incomplete>>,
    /// The handoff document (PDF), as a DocumentReference with its SHA-256.
    pub handoff_pdf: Option<&'a [u8]>,
    pub series: Series,
}

/// Builds the bundle. `bundle_id` is the envelope's UUIDv7 (text form); `now_ms` the build time.
pub fn build(x: &CaseExport, bundle_id: &str, profile: Profile, now_ms: i64) -> Value {
    build_with(x, bundle_id, profile, now_ms, &Extras::default())
}

/// [`build`], with [`Extras`].
pub fn build_with(
    x: &CaseExport,
    bundle_id: &str,
    profile: Profile,
    now_ms: i64,
    extras: &Extras<'_>,
) -> Value {
    let series = extras.series;
    let patient = rid(bundle_id, "patient");
    let encounter = rid(bundle_id, "encounter");
    let mut entries: Vec<(String, Value)> = patient_resource(x, &patient, profile);

    let mut enc = json!({
        "resourceType": "Encounter",
        "id": encounter,
        "identifier": [{ "system": SYS_CASE, "value": x.case_id }],
        "status": if x.closed_at_ms.is_some() { "finished" } else { "in-progress" },
        "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER", "display": "emergency" },
        "subject": reference(&patient),
        "period": { "start": iso8601_ms(x.created_at_ms) },
    });
    if let Some(c) = x.closed_at_ms {
        enc["period"]["end"] = json!(iso8601_ms(c));
    }
    if let Some(cc) = &x.chief_complaint {
        enc["reasonCode"] = json!([{ "text": cc }]);
    }
    let mut notes = vec![];
    if let Some(m) = &x.mechanism {
        notes.push(format!("mechanism: {m}"));
    }
    if let Some(o) = &x.onset {
        notes.push(format!("onset: {o}"));
    }
    if !notes.is_empty() && profile == Profile::Case {
        enc["text"] = json!({ "status": "generated",
            "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", xml_escape(&notes.join("; "))) });
    }
    let record = match profile {
        Profile::Case => {
            let rid_of = |role: &str| rid(bundle_id, role);
            let ctx = super::fhir_record::Ctx {
                rid: &rid_of,
                patient: &patient,
                encounter: &encounter,
            };
            super::fhir_record::build(x, &ctx, &mut enc).resources
        }
        Profile::Prealert => Vec::new(),
    };
    entries.push((encounter.clone(), enc));
    entries.extend(record);

    for (d, kind) in &x.devices {
        let id = rid(bundle_id, &format!("device/{d}"));
        entries.push((
            id.clone(),
            json!({
                "resourceType": "Device",
                "id": id,
                "identifier": [{ "system": SYS_DEVICE, "value": d }],
                "deviceName": [{ "name": d, "type": "user-friendly-name" }],
                "type": { "text": kind },
            }),
        ));
    }

    let readings: Vec<&Observation> = match profile {
        Profile::Case => x.readings.iter().collect(),
        Profile::Prealert => {
            // Latest reading of each vital.
            let mut latest: Vec<&Observation> = vec![];
            for r in &x.readings {
                match latest.iter_mut().find(|l| l.code == r.code) {
                    Some(l) if l.device_time_ms < r.device_time_ms => *l = r,
                    Some(_) => {}
                    None => latest.push(r),
                }
            }
            latest
        }
    };
    let (runs, single) = match (profile, series) {
        (Profile::Case, Series::Sampled) => super::fhir_series::split(&x.readings),
        _ => (vec![], readings),
    };
    for (i, run) in runs.iter().enumerate() {
        entries.extend(sampled_observation(bundle_id, i, run, &patient, &encounter));
    }
    for (i, r) in single.into_iter().enumerate() {
        entries.extend(observation(bundle_id, i, r, &patient, &encounter));
    }

    if let Some(t) = &x.triage {
        let rec = &t.record;
        let mut performer = None;
        if let Some(mid) = &rec.model_id {
            let id = rid(bundle_id, "device/model");
            let mut dev = json!({
                "resourceType": "Device",
                "id": id,
                "deviceName": [{ "name": mid, "type": "model-name" }],
                "type": { "text": "triage model (HEMA3N-Core)" },
            });
            if let Some(h) = &rec.model_hash {
                dev["version"] = json!([{ "type": { "text": "sha256" }, "value": h }]);
            }
            entries.push((id.clone(), dev));
            performer = Some(id);
        }
        let id = rid(bundle_id, "riskassessment");
        let mut prediction = json!({
            "outcome": { "coding": [{ "system": SYS_ESI, "code": rec.final_esi.to_string(),
                "display": format!("ESI {}", rec.final_esi) }], "text": format!("ESI {}", rec.final_esi) },
        });
        if let Some(c) = rec.confidence {
            prediction["probabilityDecimal"] = json!(((c as f64) * 1e4).round() / 1e4);
        }
        if !rec.reasons.is_empty() {
            prediction["rationale"] = json!(rec.reasons.join("; "));
        }
        let mut predictions = vec![prediction];
        if let Some(s) = &rec.specialty {
            predictions.push(json!({
                "outcome": { "coding": [{ "system": SYS_SPECIALTY, "code": s }], "text": format!("route to {s}") },
            }));
        }
        let mut method_text = format!(
            "decider {}; rules ESI {}{}",
            rec.decider.as_str(),
            rec.rules_esi,
            rec.news2
                .map(|n| format!("; NEWS2 {n}"))
                .unwrap_or_default()
        );
        if let (Some(m), Some(h)) = (&rec.model_id, &rec.model_hash) {
            method_text.push_str(&format!("; model {m} sha256 {h}"));
            if let Some(me) = rec.model_esi {
                method_text.push_str(&format!("; model ESI {me}"));
            }
        }
        if let Some(a) = &rec.abstained {
            method_text.push_str(&format!("; model abstained: {a}"));
        }
        let mut ra = json!({
            "resourceType": "RiskAssessment",
            "id": id,
            "status": "final",
            "method": { "coding": [{ "system": SYS_TRIAGE, "code": rec.decider.as_str() }], "text": method_text },
            "code": { "coding": [{ "system": SYS_TRIAGE, "code": "esi", "display": "Emergency Severity Index" }] },
            "subject": reference(&patient),
            "encounter": reference(&encounter),
            "occurrenceDateTime": iso8601_ms(t.created_at_ms),
            "prediction": predictions,
        });
        if let Some(p) = performer {
            ra["performer"] = reference(&p);
        }
        if !rec.reasons.is_empty() {
            ra["note"] = json!(
                rec.reasons
                    .iter()
                    .map(|r| json!({ "text": r }))
                    .collect::<Vec<_>>()
            );
        }
        entries.push((id, ra));
    }

    if profile == Profile::Case {
        entries.extend(super::fhir_audit::case_audit_events(x, &|role| {
            rid(bundle_id, role)
        }));
    }

    {
        let rid_of = |role: &str| rid(bundle_id, role);
        let ctx = super::fhir_record::Ctx {
            rid: &rid_of,
            patient: &patient,
            encounter: &encounter,
        };
        if let Some(doc) = extras.nemsis {
            entries.push(super::fhir_record::nemsis_reference(&ctx, doc, now_ms));
        }
        if let Some(pdf) = extras.handoff_pdf {
            entries.push(super::fhir_handoff::pdf_reference(&ctx, pdf, now_ms));
        }
        if profile == Profile::Case {
            entries.extend(super::fhir_handoff::attachment_resources(&ctx, x));
        }
        if profile == Profile::Prealert {
            entries.extend(super::fhir_handoff::prealert_resources(&ctx, x, now_ms));
        }
    }
    let prov = rid(bundle_id, "provenance");
    let targets: Vec<Value> = entries.iter().map(|(id, _)| reference(id)).collect();
    entries.push((
        prov.clone(),
        json!({
            "resourceType": "Provenance",
            "id": prov,
            "target": targets,
            "recorded": iso8601_ms(now_ms),
            "activity": { "text": match profile { Profile::Case => "case bundle sealed at case close", Profile::Prealert => "hospital pre-alert" } },
            "agent": [{
                "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler" }] },
                "who": { "identifier": { "system": SYS_APPLIANCE, "value": x.appliance_id }, "display": format!("HEMA3N Edge appliance {}", x.appliance_id) },
            }],
        }),
    ));

    json!({
        "resourceType": "Bundle",
        "id": bundle_id,
        "identifier": { "system": "urn:hema3n:bundle", "value": bundle_id },
        "type": "collection",
        "timestamp": iso8601_ms(now_ms),
        "entry": entries.into_iter().map(|(id, r)| entry(&id, r)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Observation, Patient, StoredTriage, TriageRecord};

    fn export() -> CaseExport {
        CaseExport {
            appliance_id: "amb-1".into(),
            case_id: "c1".into(),
            territory: "t".into(),
            status: "closed".into(),
            created_at_ms: 1_700_000_000_000,
            closed_at_ms: Some(1_700_000_600_000),
            patient_id: Some("p1".into()),
            patient: Some(Patient {
                last_name: Some("Doe".into()),
                sex: Some(Sex::Female),
                date_of_birth: Some("1950-01-02".into()),
                ..Default::default()
            }),
            chief_complaint: Some("chest pain".into()),
            mechanism: None,
            onset: None,
            devices: vec![("mon-1".into(), "monitor".into())],
            readings: vec![
                Observation {
                    id: 1,
                    device_id: Some("mon-1".into()),
                    code: "heart_rate".into(),
                    value: 120.0,
                    device_time_ms: 1_700_000_100_000,
                    recv_time_ms: 1_700_000_100_010,
                    source: "device".into(),
                },
                Observation {
                    id: 2,
                    device_id: Some("mon-1".into()),
                    code: "heart_rate".into(),
                    value: 130.0,
                    device_time_ms: 1_700_000_200_000,
                    recv_time_ms: 1_700_000_200_010,
                    source: "device".into(),
                },
            ],
            triage: Some(StoredTriage {
                id: 1,
                created_at_ms: 1_700_000_200_100,
                record: TriageRecord {
                    final_esi: 2,
                    rules_esi: 2,
                    model_esi: Some(3),
                    news2: Some(5),
                    specialty: Some("cardiology".into()),
                    confidence: Some(0.8),
                    model_id: Some("hema3n-core-1.0.0".into()),
                    model_hash: Some("ab".repeat(32)),
                    decider: crate::model::Decider::RulesOverride,
                    abstained: None,
                    reasons: vec!["NEWS2 5".into()],
                },
            }),
            record: Default::default(),
            people: vec![],
            audit: vec![],
            checkpoint: None,
            audit_segment: None,
            prealert: Default::default(),
            attachments: vec![],
        }
    }

    #[test]
    fn references_resolve_inside_the_bundle() {
        let b = build(&export(), "0190-b", Profile::Case, 1_700_000_700_000);
        let urls: Vec<&str> = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap())
            .collect();
        let text = b.to_string();
        for r in text.split("\"reference\":\"").skip(1) {
            let r = &r[..r.find('"').unwrap()];
            assert!(urls.contains(&r), "dangling reference {r}");
        }
        assert!(text.contains("\"Doe\""));
        assert!(text.contains("8867-4"));
    }

    #[test]
    fn prealert_is_minimum_necessary() {
        let b = build(&export(), "0190-p", Profile::Prealert, 1_700_000_700_000);
        let text = b.to_string();
        assert!(!text.contains("Doe"), "no name in a pre-alert");
        assert!(text.contains("1950-01-02"));
        let obs = b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "Observation")
            .count();
        assert_eq!(obs, 1, "latest reading per vital only");
        assert!(text.contains("\"value\":130.0"));
    }
}
