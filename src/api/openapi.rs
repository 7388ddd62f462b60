//! The OpenAPI 3.1 document, generated from the route table ([`policy::ROUTES`]) and the
//! request schemas.

use serde_json::{Map, Value, json};

use super::error::Code;
use super::policy::{self, Access, ROUTES, Reply, Role};

/// The properties of the patient body (request shape).
/// No control characters (Unicode Cc, what `char::is_control` refuses).
const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";

/// Free text of a record field: at most 64 characters (the store allows 256 bytes), no control
/// characters (what `Patient::validate` refuses).
fn field_text() -> Value {
    json!({ "type": "string", "maxLength": 64, "pattern": NO_CONTROL })
}

/// Lets every optional property of an object schema (and of nested ones) be `null`, as the
/// request types read it (`Option` fields). `attach_unbound` is a plain boolean with a default.
fn nullable_optionals(schema: &mut Value) {
    if let Some(items) = schema.get_mut("items") {
        nullable_optionals(items);
    }
    for k in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = schema.get_mut(k).and_then(Value::as_array_mut) {
            list.iter_mut().for_each(nullable_optionals);
        }
    }
    let required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, prop) in props.iter_mut() {
        nullable_optionals(prop);
        if !required.contains(name) && name != "attach_unbound" {
            *prop = json!({ "anyOf": [prop.clone(), { "type": "null" }] });
        }
    }
}

/// `min` to `max` characters without control characters.
fn field_text_n(min: usize, max: usize) -> Value {
    json!({ "type": "string", "minLength": min, "maxLength": max, "pattern": NO_CONTROL })
}

/// A field's text rule plus a pattern of its own (both must hold).
fn field_pattern(pattern: &str) -> Value {
    json!({ "allOf": [field_text(), { "type": "string", "pattern": pattern }] })
}

/// An identifier (`[A-Za-z0-9._-]{1,64}`): user, device and territory ids.
pub(crate) fn ident() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$" })
}

fn schemas_patient_properties() -> Map<String, Value> {
    let text = field_text();
    let s = |props: Value| json!({ "type": "object", "additionalProperties": false, "properties": props, "required": [] });
    json!({
        "first_name": text, "last_name": text,
        "date_of_birth": { "type": "string", "format": "date",
            "pattern": "^(18[89][0-9]|19[0-9][0-9]|20[0-9][0-9]|21[0-9][0-9]|2200)-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])$" },
        "ssn": field_pattern("^-*([0-9]-*){9}$"),
        "email": field_pattern("^[^@ ]+@[^ ]*[.][^ ]*$"),
        "phone": field_pattern("^[ +().-]*([0-9][ +().-]*){7,15}$"),
        "mrn": text,
        "sex": { "enum": ["male", "female", "other", "unknown"] },
        "estimated_age_years": { "type": "integer", "minimum": 0, "maximum": 120 },
        "address": s(json!({ "street": text, "city": text, "state": text, "zip": field_pattern("^[0-9]{5}(-[0-9]{4})?$") })),
        "insurance": s(json!({ "carrier": text, "policy_number": text, "group_number": text })),
    })
    .as_object()
    .expect("object")
    .clone()
}

/// Text of at most `n` characters with something besides white space in it.
fn nonblank(n: usize) -> Value {
    json!({ "type": "string", "maxLength": n, "pattern": "\\S" })
}

/// Short free text (what the handlers accept: ≤ 200 bytes; 50 characters always fit).
fn short() -> Value {
    json!({ "type": "string", "maxLength": 50 })
}

/// One manual reading per vital: its value range (whole numbers for scores), or AVPU's letter.
/// `t_ms` defaults to now and must lie within the last 7 days.
fn manual_reading_schemas() -> Vec<Value> {
    crate::vocab::VITALS
        .iter()
        .map(|v| {
            let value = if v.unit.is_none() {
                json!({ "vs": { "enum": crate::vocab::AVPU_LEVELS } })
            } else if v.integer {
                json!({ "value": { "type": "integer", "minimum": v.min, "maximum": v.max } })
            } else {
                json!({ "value": { "type": "number", "minimum": v.min, "maximum": v.max } })
            };
            let key = if v.unit.is_none() { "vs" } else { "value" };
            let mut props = value.as_object().expect("object").clone();
            props.insert("name".into(), json!({ "const": v.name }));
            props.insert("t_ms".into(), json!({ "type": "integer" }));
            json!({ "type": "object", "additionalProperties": false, "properties": props, "required": ["name", key] })
        })
        .collect()
}

fn schemas() -> Value {
    let s = |props: Value, required: &[&str]| json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required });
    let text = json!({ "type": "string" });
    let mut all = json!({
        "Error": s(json!({
            "status": { "const": "error" },
            "error": s(json!({
                "code": { "enum": Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>() },
                "message": text, "details": { "type": "object" }
            }), &["code", "message", "details"]),
        }), &["status", "error"]),
        "Login": s(json!({ "user_id": ident(), "secret": { "type": "string", "maxLength": crate::crypto::password::MAX_SECRET_LEN } }), &["user_id", "secret"]),
        // 10 to 500 characters, no control characters, not only white space.
        "BreakGlass": s(json!({ "reason": { "allOf": [field_text_n(10, 500), { "type": "string", "pattern": "\\S" }] }, "secret": { "type": "string", "maxLength": crate::crypto::password::MAX_SECRET_LEN } }), &["reason", "secret"]),
        "GrantBody": s(json!({
            "user_id": ident(), "case_id": { "type": "string", "format": "uuid" },
            "patient_id": { "type": "string", "format": "uuid" },
            "access": { "enum": ["read", "read_write"] },
            "reason": { "allOf": [field_text_n(10, 500), { "type": "string", "pattern": "\\S" }] },
            "minutes": { "type": "integer", "minimum": 1 },
        }), &["user_id", "access", "reason", "minutes"]),
        "Patient": { "type": "object", "additionalProperties": false, "properties": schemas_patient_properties() },
        "CaseCreate": s(json!({ "patient_id": { "type": "string", "format": "uuid" }, "chief_complaint": short(), "mechanism": short(), "onset": short() }), &[]),
        "Bind": s(json!({ "device_id": ident(), "attach_unbound": { "type": "boolean", "default": false } }), &["device_id"]),
        "ManualVitals": s(json!({ "readings": { "type": "array", "minItems": 1, "maxItems": 32, "items": { "oneOf": manual_reading_schemas() } } }), &["readings"]),
        "Review": s(json!({ "note": nonblank(1000) }), &["note"]),
        "UserCreate": s(json!({ "id": ident(), "display_name": nonblank(25), "role": { "enum": Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>() }, "territory": ident(), "secret": { "type": "string", "minLength": 6, "maxLength": 128 } }), &["id", "display_name", "role", "secret"]),
    });
    for (k, v) in record_request_schemas().as_object().expect("object") {
        all.as_object_mut()
            .expect("object")
            .insert(k.clone(), v.clone());
    }
    // Request bodies: an optional field may also be sent as `null` (serde reads it as absent).
    for body in all.as_object_mut().expect("object").values_mut() {
        nullable_optionals(body);
    }
    let replies = reply_schemas();
    for (k, v) in replies.as_object().expect("object") {
        all.as_object_mut()
            .expect("object")
            .insert(k.clone(), v.clone());
    }
    all
}

/// Record text of at most `bytes` bytes (the handler's limit): a quarter as many characters
/// always fit; not blank; no control characters but newline and tab.
fn record_text(bytes: usize) -> Value {
    json!({ "allOf": [
        { "type": "string", "minLength": 1, "maxLength": bytes / 4, "pattern": "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f]*$" },
        { "type": "string", "pattern": "\\S" },
    ] })
}

/// `{"enum": [names]}` of a code list.
fn names<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Value {
    json!({ "enum": all.iter().map(|v| name(*v)).collect::<Vec<_>>() })
}

/// Bodies of the care-record routes (`model::record`). Merge patches: every property is
/// optional and `null` clears it.
fn record_request_schemas() -> Value {
    use crate::model::record::{self as rec, codes as c};
    let s = |props: Value, required: &[&str]| json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required });
    let t = json!({ "type": "integer" });
    let b = json!({ "type": "boolean" });
    let text = record_text(rec::MAX_TEXT);
    let texts = json!({ "type": "array", "maxItems": rec::MAX_ITEMS, "items": text });
    let impression = s(
        json!({ "code": { "enum": c::IMPRESSIONS.iter().map(|i| i.code).collect::<Vec<_>>() }, "note": text }),
        &["code"],
    );
    let times: Map<String, Value> = rec::Times::default()
        .ordered()
        .iter()
        .map(|(k, _)| (k.to_string(), t.clone()))
        .collect();
    let events = json!({
        "OxygenEvent": s(json!({
            "at_ms": t, "action": names(c::OxygenAction::ALL, c::OxygenAction::as_str),
            "flow_l_min": { "type": "number", "minimum": 0.1, "maximum": 60 },
            "device": names(c::OxygenDevice::ALL, c::OxygenDevice::as_str),
        }), &["at_ms", "action"]),
        "ProcedureEvent": s(json!({
            "at_ms": t, "procedure": names(c::ProcedureCode::ALL, c::ProcedureCode::as_str),
            "site": record_text(100), "size": record_text(50),
            "attempts": { "type": "integer", "minimum": 1, "maximum": 20 }, "successful": b,
            "performer": ident(), "note": text,
        }), &["at_ms", "procedure", "successful"]),
        "MedicationEvent": s(json!({
            "at_ms": t, "medication": names(c::MedicationCode::ALL, c::MedicationCode::as_str),
            "dose": { "type": "number", "exclusiveMinimum": 0, "maximum": 100000 },
            "dose_unit": names(c::DoseUnit::ALL, c::DoseUnit::as_str),
            "route": names(c::MedRoute::ALL, c::MedRoute::as_str),
            "response": names(c::MedResponse::ALL, c::MedResponse::as_str),
            "performer": ident(), "note": text,
        }), &["at_ms", "medication", "dose", "dose_unit", "route"]),
        "AssessmentEvent": s(json!({
            "at_ms": t,
            "gcs_eye": { "type": "integer", "minimum": 1, "maximum": 4 },
            "gcs_verbal": { "type": "integer", "minimum": 1, "maximum": 5 },
            "gcs_motor": { "type": "integer", "minimum": 1, "maximum": 6 },
            "pupils": names(c::Pupils::ALL, c::Pupils::as_str),
            "skin": names(c::Skin::ALL, c::Skin::as_str),
            "befast": s(json!({ "balance": b, "eyes": b, "face": b, "arm": b, "speech": b }), &["balance", "eyes", "face", "arm", "speech"]),
            "pain": { "type": "integer", "minimum": 0, "maximum": 10 },
        }), &["at_ms"]),
    });
    let r = |n: &str| json!({ "$ref": format!("#/components/schemas/{n}") });
    let mut out = json!({
        "CaseDetailsPatch": s(json!({ "chief_complaint": record_text(2000), "mechanism": record_text(2000), "onset": record_text(2000) }), &[]),
        "PatientPatch": { "type": "object", "additionalProperties": false, "properties": schemas_patient_properties() },
        "IncidentPatch": s(json!({
            "incident_number": { "allOf": [record_text(200), { "type": "string", "minLength": 3, "maxLength": 50, "pattern": "\\S.*\\S.*\\S" }] },
            "run_number": { "allOf": [record_text(200), { "type": "string", "minLength": 3, "maxLength": 50, "pattern": "\\S.*\\S.*\\S" }] },
            "unit": { "allOf": [record_text(100), { "type": "string", "maxLength": 25 }] },
            "dispatch_reason": names(c::DispatchReason::ALL, c::DispatchReason::as_str),
            "response_mode": names(c::ResponseMode::ALL, c::ResponseMode::as_str),
            "crew": { "type": "array", "maxItems": 8, "items": s(json!({ "account": ident(), "role": names(c::CrewRole::ALL, c::CrewRole::as_str) }), &["account", "role"]) },
        }), &[]),
        "TimesPatch": s(Value::Object(times), &[]),
        "ScenePatch": s(json!({
            "latitude": { "type": "number", "minimum": -90, "maximum": 90 },
            "longitude": { "type": "number", "minimum": -180, "maximum": 180 },
            "address": text, "description": text,
            "patient_count": { "type": "integer", "minimum": 1, "maximum": 1000 }, "mass_casualty": b,
        }), &[]),
        "SituationPatch": s(json!({
            "symptom_onset_ms": t, "last_known_well_ms": t, "primary_impression": impression,
            "secondary_impressions": { "type": "array", "maxItems": 10, "items": impression }, "possible_injury": b,
            "cardiac_arrest": names(c::CardiacArrest::ALL, c::CardiacArrest::as_str),
        }), &[]),
        "HistoryPatch": s(json!({
            "no_known_allergies": b, "allergies": texts, "medical_history": texts, "current_medications": texts,
            "advance_directive": names(c::AdvanceDirective::ALL, c::AdvanceDirective::as_str),
        }), &[]),
        "DispositionPatch": s(json!({
            "patient_disposition": names(c::PatientDisposition::ALL, c::PatientDisposition::as_str),
            "transport": names(c::TransportDisposition::ALL, c::TransportDisposition::as_str),
            "transport_mode": names(c::TransportMode::ALL, c::TransportMode::as_str),
            "destination": record_text(200),
            "destination_reason": names(c::DestinationReason::ALL, c::DestinationReason::as_str),
            "transfer_to": record_text(200),
            "transfer_to_role": record_text(200),
            "eta_ms": t,
            "alerts": { "type": "array", "maxItems": c::PreArrivalAlert::ALL.len(), "uniqueItems": true,
                "items": names(c::PreArrivalAlert::ALL, c::PreArrivalAlert::as_str) },
        }), &[]),
        "Transfer": s(json!({
            "receiving_clinician": record_text(200),
            "receiving_role": record_text(200), "at_ms": t,
        }), &["receiving_clinician"]),
        "AttachmentCreate": s(json!({
            "kind": names(crate::model::AttachmentKind::ALL, crate::model::AttachmentKind::as_str),
            "caption": record_text(500), "filename": record_text(500),
            "size": { "type": "integer", "minimum": 1 },
        }), &["kind", "size"]),
        "NarrativePatch": s(json!({ "text": record_text(rec::MAX_NARRATIVE) }), &[]),
        "Spo2ScalePatch": s(json!({ "scale2": b, "reason": text }), &[]),
        "EventCorrection": { "anyOf": [r("OxygenEvent"), r("ProcedureEvent"), r("MedicationEvent"), r("AssessmentEvent")] },
        "EnteredInError": s(json!({ "reason": record_text(500) }), &["reason"]),
        // A form's fields by name (what the tablet had typed); the handler's limit is 16 KiB.
        "Draft": { "type": "object", "maxProperties": 8, "propertyNames": { "pattern": "^[a-z0-9_]{1,32}$" },
            "additionalProperties": { "type": ["string", "number", "boolean", "null"], "maxLength": 400 } },
    });
    for (k, v) in events.as_object().expect("object") {
        out.as_object_mut()
            .expect("object")
            .insert(k.clone(), v.clone());
    }
    out
}

/// The JSON shapes the API answers with (built in `wire.rs` and the handlers; tests/api.rs
/// checks every route's real response against these).
fn reply_schemas() -> Value {
    // Every property listed is required; `null` is allowed where the type says so.
    let s = |props: Value| {
        let required: Vec<String> = props.as_object().expect("object").keys().cloned().collect();
        json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required })
    };
    let r = |name: &str| json!({ "$ref": format!("#/components/schemas/{name}") });
    let list = |name: &str| json!({ "type": "array", "items": r(name) });
    let or_null = |name: &str| json!({ "anyOf": [r(name), { "type": "null" }] });
    let (text, int, num, boolean) = (
        json!({ "type": "string" }),
        json!({ "type": "integer" }),
        json!({ "type": "number" }),
        json!({ "type": "boolean" }),
    );
    let ntext = json!({ "type": ["string", "null"] });
    let nint = json!({ "type": ["integer", "null"] });
    let nnum = json!({ "type": ["number", "null"] });
    let nobject = json!({ "type": ["object", "null"] });
    let texts = json!({ "type": "array", "items": text });
    // A stored patient: the request shape (nulls omitted) plus its bookkeeping.
    let mut patient = schemas_patient_properties();
    for (k, v) in [
        ("id", &text),
        ("territory", &text),
        ("created_at_ms", &int),
        ("updated_at_ms", &int),
        ("version", &int),
    ] {
        patient.insert(k.into(), v.clone());
    }
    let mut out = json!({
        "Health": s(json!({ "status": text, "store": text, "triage": text, "sync": text, "sessions": int })),
        "User": s(json!({ "id": text, "display_name": text, "role": { "enum": Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>() }, "territory": text, "created_at_ms": int, "disabled": boolean, "pending_approval": boolean })),
        "Session": s(json!({ "token": text, "expires_at_ms": int, "idle_timeout_secs": int, "user": r("User") })),
        "Me": s(json!({ "user": r("User"), "territory": text, "permissions": texts, "break_glass_until_ms": nint, "idle_timeout_secs": int })),
        "BreakGlassGrant": s(json!({ "break_glass_id": int, "until_ms": int, "territory": text })),
        "CreatedId": s(json!({ "id": text })),
        "CreatedRow": s(json!({ "id": int })),
        "StoredPatient": {
            "type": "object", "additionalProperties": false, "properties": patient,
            "required": ["id", "territory", "created_at_ms", "updated_at_ms", "version"]
        },
        "PatientList": s(json!({ "patients": list("StoredPatient") })),
        "CaseSummary": s(json!({ "id": text, "status": text, "created_at_ms": int, "patient_id": ntext, "patient_name": ntext, "esi": nint, "devices": texts })),
        "CaseList": s(json!({ "cases": list("CaseSummary") })),
        "Reading": s(json!({ "id": int, "name": text, "value": num, "display": ntext, "t_ms": int, "received_ms": int, "device_id": ntext, "source": text, "unit": ntext })),
        "Triage": s(json!({ "id": int, "created_at_ms": int, "esi": int, "rules_esi": int, "model_esi": nint, "news2": nint, "specialty": ntext, "confidence": nnum, "model_id": ntext, "model_hash": ntext, "decider": text, "abstained": ntext, "reasons": texts })),
        "CaseAlarm": s(json!({ "id": int, "kind": text, "device_id": ntext, "raised_at_ms": int, "detail": text })),
        "BundleState": s(json!({ "bundle_id": text, "kind": text, "state": text, "attempts": int, "created_at_ms": int, "sent_at_ms": nint, "receipted_at_ms": nint })),
        "CaseDetails": s(json!({ "chief_complaint": ntext, "mechanism": ntext, "onset": ntext })),
        "Case": s(json!({
            "id": text, "territory": text, "status": text, "created_at_ms": int, "closed_at_ms": nint,
            "patient_id": ntext, "details": r("CaseDetails"), "version": int, "patient": or_null("StoredPatient"),
            "devices": texts, "alarms": list("CaseAlarm"), "triage": list("Triage"),
            "record": list("EntryVersion"), "vitals": list("Reading"), "bundles": list("BundleState"),
        })),
        "Bound": s(json!({ "attached_readings": int })),
        "ReadingList": s(json!({ "vitals": list("Reading"), "entered_in_error": list("VoidedReading") })),
        "ReadingIds": s(json!({ "ids": { "type": "array", "items": int } })),
        "TriageList": s(json!({ "triage": list("Triage") })),
        "Closed": s(json!({ "id": text, "status": { "const": "closed" } })),
        "Device": s(json!({ "id": text, "kind": text, "presence": text, "bound_case": ntext, "last_vitals_at_ms": nint, "unbound_readings": int })),
        "DeviceList": s(json!({ "devices": list("Device") })),
        "Outbox": s(json!({ "queued": int, "sent": int, "receipted": int, "purged": int, "queued_bytes": int, "oldest_pending_ms": nint })),
        "SyncStatus": s(json!({ "link": text, "last_receipt_ms": nint, "outbox": r("Outbox") })),
        "AuditEntry": s(json!({ "seq": int, "ts_ms": int, "actor": text, "role": text, "action": text, "resource": text, "outcome": text, "territory": text, "details": nobject })),
        "AuditList": s(json!({ "entries": list("AuditEntry") })),
        "BreakGlassUse": s(json!({ "id": int, "user_id": text, "territory": text, "reason": text, "started_at_ms": int, "until_ms": int, "reviewed_at_ms": nint, "reviewed_by": ntext, "review_note": ntext })),
        "BreakGlassUses": s(json!({ "uses": list("BreakGlassUse") })),
        "UserList": s(json!({ "users": list("User") })),
        "ComplianceItem": s(json!({ "id": text, "safeguard": text, "title": text, "status": { "enum": ["pass", "warn", "fail"] }, "evidence": texts })),
        "ComplianceReport": s(json!({ "evaluated_at": text, "worst": { "enum": ["pass", "warn", "fail"] }, "items": list("ComplianceItem") })),
        "OpenApi": { "type": "object", "required": ["openapi", "paths", "components"] },
    });
    // The handoff's replies (a literal of their own, for the same reason).
    let handoff_part = json!({
        "HandoffBlock": s(json!({ "letter": text, "title": text, "lines": texts })),
        "Handoff": s(json!({
            "case_id": text, "status": text, "suggested": { "enum": ["mist", "sbar"] }, "patient": text,
            "chief_complaint": ntext, "started_at_ms": int,
            "times": { "type": "array", "items": s(json!({ "label": text, "at_ms": int })) },
            "latest": { "type": "array", "items": s(json!({ "code": text, "label": text, "text": text, "at_ms": int })) },
            "trend": { "type": "array", "items": s(json!({ "code": text, "label": text, "unit": text,
                "points": { "type": "array", "items": { "type": "array", "items": num, "minItems": 2, "maxItems": 2 } } })) },
            "interventions": { "type": "array", "items": s(json!({ "at_ms": int, "kind": text, "text": text })) },
            "allergies": text,
            "triage": { "anyOf": [{ "type": "null" }, s(json!({ "esi": int, "news2": nint, "decider": text, "reasons": texts, "at_ms": int, "model_note": ntext }))] },
            "destination": ntext, "eta_ms": nint, "alerts": texts,
            "transfer": s(json!({ "from": texts, "to": ntext, "to_role": ntext, "at_ms": nint })),
            "mist": list("HandoffBlock"), "sbar": list("HandoffBlock"),
        })),
        "Transferred": s(json!({ "id": text, "status": { "const": "handed_off" }, "disposition": r("EntryWritten"), "times": r("EntryWritten") })),
    });
    // The care record's replies (a second literal: one would exceed the macro's recursion).
    let record = json!({
        "Version": s(json!({ "version": int })),
        "EntryWritten": s(json!({ "entry_id": text, "kind": text, "version": int, "recorded_at_ms": int, "replayed": boolean })),
        "EntryVersion": s(json!({
            "entry_id": text, "kind": text, "version": int, "state": { "enum": ["recorded", "entered_in_error"] },
            "recorded_at_ms": int, "recorded_by": text, "content": {}, "reason": ntext,
        })),
        "Record": s(json!({
            "entries": list("EntryVersion"), "history": list("EntryVersion"),
            "oxygen": s(json!({ "on_oxygen": boolean, "spo2_scale2": boolean })),
        })),
        "RecordCodes": { "type": "object", "additionalProperties": { "type": "array", "items": s(json!({ "value": text, "label": text })) } },
        "Drafts": s(json!({ "drafts": { "type": "array", "items": s(json!({ "form": text, "saved_at_ms": int, "body": { "type": "object" } })) } })),
        "VoidedReading": s(json!({ "id": int, "name": text, "value": num, "t_ms": int, "voided_at_ms": int, "voided_by": text, "reason": text })),
    });
    // Attachments (a separate literal: one json! of every schema exceeds the macro's depth).
    let mut item = json!({
        "id": text, "case_id": text,
        "kind": { "enum": crate::model::AttachmentKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>() },
        "state": { "enum": ["uploading", "stored"] }, "caption": ntext, "filename": ntext,
        "size": int, "received": int,
        "media_type": { "enum": [null, "image/jpeg", "image/png", "application/pdf", "application/dicom"] },
        "sha256": ntext, "orientation": nint, "width": nint, "height": nint, "has_thumbnail": boolean,
        "stripped": texts, "created_at_ms": int, "created_by": text, "stored_at_ms": nint,
        "sync": { "enum": [null, "pending", "receipted"] },
    });
    let list_item = s(item.clone());
    item["piece_bytes"] = int.clone();
    let attachment_part = json!({
        "Attachment": s(item),
        "AttachmentList": s(json!({ "attachments": { "type": "array", "items": list_item } })),
    });
    // Access grants (a literal of their own: the macro's recursion limit).
    let grant_part = json!({
        "GrantCreated": s(json!({ "id": int, "expires_at_ms": int })),
        "AccessGrant": s(json!({ "id": int, "user_id": text, "kind": { "enum": ["case", "patient"] }, "resource_id": text,
            "territory": text, "access": { "enum": ["read", "read_write"] }, "reason": text, "granted_by": text,
            "granted_at_ms": int, "expires_at_ms": int, "revoked_at_ms": nint, "revoked_by": ntext, "uses": int })),
        "AccessGrants": s(json!({ "grants": list("AccessGrant") })),
    });
    for (k, v) in record
        .as_object()
        .into_iter()
        .chain(handoff_part.as_object())
        .chain(attachment_part.as_object())
        .chain(grant_part.as_object())
        .flatten()
    {
        out.as_object_mut()
            .expect("object")
            .insert(k.clone(), v.clone());
    }
    out
}

/// The OpenAPI document as served: built once (it depends only on the route table and the
/// schemas, which are compiled in), then the same bytes for every request.
pub fn document_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| document().to_string())
}

/// The OpenAPI document of every route in the table.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in ROUTES {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        let (security, access) = match r.access {
            Access::Public => (json!([]), "public".to_string()),
            Access::Authenticated => (json!([{ "bearer": [] }]), "any role".to_string()),
            Access::Perm(p) => {
                let roles: Vec<&str> = Role::ALL
                    .iter()
                    .copied()
                    .filter(|role| policy::role_perms(*role).contains(&p))
                    .map(Role::as_str)
                    .collect();
                let bg = policy::BREAK_GLASS_PERMS.contains(&p);
                (
                    json!([{ "bearer": [] }]),
                    format!(
                        "{}: {}{}",
                        p.as_str(),
                        roles.join(", "),
                        if bg {
                            " (others under break-glass)"
                        } else {
                            ""
                        }
                    ),
                )
            }
        };
        op.insert("security".into(), security);
        op.insert("x-access".into(), json!(access));
        op.insert("x-phi".into(), json!(r.phi));
        let mut params = Vec::new();
        for seg in r.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let schema = match (name, r.path) {
                    ("id", p) if p.starts_with("/api/v1/break-glass/") => {
                        json!({ "type": "integer", "minimum": 1 })
                    }
                    ("id", p) if p.starts_with("/api/v1/users/") => ident(),
                    ("id", _) => json!({ "type": "string", "format": "uuid" }),
                    // An event's UUID, or a section's name.
                    ("entry_id", _) => json!({ "anyOf": [
                        { "type": "string", "format": "uuid" },
                        { "enum": crate::model::record::Section::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>() },
                    ] }),
                    ("form", _) => json!({ "type": "string", "pattern": "^[a-z0-9_]{1,32}$" }),
                    ("reading_id", _) => {
                        json!({ "type": "integer", "minimum": 1, "maximum": i64::MAX })
                    }
                    _ => ident(),
                };
                params.push(
                    json!({ "name": name, "in": "path", "required": true, "schema": schema }),
                );
            }
        }
        // Optimistic concurrency and idempotent submits of the care record.
        let record = r.path.starts_with("/api/v1/cases/{id}/record/")
            || r.path.starts_with("/api/v1/patients/{id}")
            || r.path == "/api/v1/cases/{id}";
        let version = json!({ "type": "string", "pattern": "^(W/)?\"[0-9]{1,9}\"$" });
        if record && matches!(r.method, "PATCH" | "PUT")
            || r.path
                .ends_with("/record/entries/{entry_id}/entered-in-error")
        {
            params.push(json!({
                "name": "If-Match", "in": "header", "required": r.method == "PUT", "schema": version,
                "description": "The ETag of the version edited; a newer current version answers 412 STALE",
            }));
        }
        if (record && r.method != "GET")
            || r.path == "/api/v1/cases/{id}/vitals" && r.method == "POST"
        {
            params.push(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{8,64}$" },
                "description": "One key per user action: a repeated submit stores nothing new and answers as the first did",
            }));
        }
        if r.access != Access::Public {
            params.push(json!({ "name": "Territory-Id", "in": "header", "required": true, "schema": ident() }));
        }
        if r.body == Some("AttachmentPiece") {
            params.push(json!({
                "name": "Upload-Offset", "in": "header", "required": true,
                "schema": { "type": "integer", "minimum": 0 },
                "description": "Bytes of the file stored so far (`received`); another offset answers 409 with the right one",
            }));
        }
        op.insert("parameters".into(), Value::Array(params));
        if r.body == Some("AttachmentPiece") {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "description": "raw bytes of the piece (`application/offset+octet-stream`, tus style, is accepted too)",
                    "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } }),
            );
        } else if let Some(b) = r.body {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{b}") } } } }),
            );
        }
        let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
        let ok = match r.reply {
            Reply::Json(schema) => (
                "200",
                json!({ "description": "success", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } }),
            ),
            Reply::Created(schema) => (
                "201",
                json!({ "description": "created", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } }),
            ),
            Reply::NoContent => ("204", json!({ "description": "done, no body" })),
            Reply::Text => (
                "200",
                json!({ "description": "Prometheus text exposition 0.0.4", "content": { "text/plain": { "schema": { "type": "string" } } } }),
            ),
            Reply::Xml => (
                "200",
                json!({ "description": "XML document", "content": { "application/xml": { "schema": { "type": "string" } } } }),
            ),
            Reply::Pdf => (
                "200",
                json!({ "description": "PDF document", "content": { "application/pdf": { "schema": { "type": "string", "format": "binary" } } } }),
            ),
            Reply::Accounting => (
                "200",
                json!({ "description": "FHIR R4 Bundle (type collection) of AuditEvent resources, or CSV with a header line (?format=csv)",
                    "content": { "application/fhir+json": { "schema": { "type": "object" } },
                                 "text/csv": { "schema": { "type": "string" } } } }),
            ),
            Reply::File => {
                let bin = json!({ "schema": { "type": "string", "format": "binary" } });
                (
                    "200",
                    json!({ "description": "the file", "content": {
                        "image/jpeg": bin, "image/png": bin, "application/pdf": bin, "application/dicom": bin } }),
                )
            }
            Reply::EventStream => (
                "200",
                json!({ "description": "events: vitals, triage, alarm, case, logoff, resync", "content": { "text/event-stream": { "schema": { "type": "string" } } } }),
            ),
        };
        let mut responses = Map::new();
        responses.insert(ok.0.into(), ok.1);
        responses.insert("4XX".into(), err.clone());
        responses.insert("5XX".into(), err);
        op.insert("responses".into(), Value::Object(responses));
        paths
            .entry(r.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("object")
            .insert(r.method.to_lowercase(), Value::Object(op));
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "HEMA3N Edge crew tablet API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas(),
        }
    })
}
