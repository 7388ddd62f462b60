//! The OpenAPI 3.1 document, generated from the route table ([`policy::ROUTES`]) and the
//! request schemas.

use serde_json::{Map, Value, json};

use super::error::Code;
use super::policy::{self, Access, ROUTES, Role};

fn schemas() -> Value {
    let s = |props: Value, required: &[&str]| json!({ "type": "object", "additionalProperties": false, "properties": props, "required": required });
    let text = json!({ "type": "string" });
    json!({
        "Error": s(json!({
            "status": { "const": "error" },
            "error": s(json!({
                "code": { "enum": Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>() },
                "message": text, "details": { "type": "object" }
            }), &["code", "message", "details"]),
        }), &["status", "error"]),
        "Login": s(json!({ "user_id": text, "secret": text }), &["user_id", "secret"]),
        "BreakGlass": s(json!({ "reason": { "type": "string", "minLength": 10, "maxLength": 500 }, "secret": text }), &["reason", "secret"]),
        "Patient": s(json!({
            "first_name": text, "last_name": text,
            "date_of_birth": { "type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$" },
            "ssn": text, "email": text, "phone": text, "mrn": text,
            "sex": { "enum": ["male", "female", "other", "unknown"] },
            "address": s(json!({ "street": text, "city": text, "state": text, "zip": text }), &[]),
            "insurance": s(json!({ "carrier": text, "policy_number": text, "group_number": text }), &[]),
        }), &[]),
        "CaseCreate": s(json!({ "patient_id": { "type": "string", "format": "uuid" }, "chief_complaint": text, "mechanism": text, "onset": text }), &[]),
        "Bind": s(json!({ "device_id": text, "attach_unbound": { "type": "boolean", "default": true } }), &["device_id"]),
        "ManualVitals": s(json!({ "readings": { "type": "array", "minItems": 1, "maxItems": 32, "items": s(json!({
            "name": { "enum": crate::vocab::VITALS.iter().map(|v| v.name).collect::<Vec<_>>() },
            "value": { "type": "number" }, "vs": { "enum": crate::vocab::AVPU_LEVELS }, "t_ms": { "type": "integer" }
        }), &["name"]) } }), &["readings"]),
        "Medication": s(json!({ "name": text, "dose": text, "route": text, "note": text }), &["name", "dose", "route"]),
        "Review": s(json!({ "note": text }), &["note"]),
        "UserCreate": s(json!({ "id": text, "display_name": text, "role": { "enum": Role::ALL.map(Role::as_str) }, "territory": text, "secret": { "type": "string", "minLength": 6 } }), &["id", "display_name", "role", "secret"]),
    })
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
                    .into_iter()
                    .filter(|role| policy::role_perms(*role).contains(&p))
                    .map(Role::as_str)
                    .collect();
                let bg = policy::BREAK_GLASS_PERMS.contains(&p);
                (
                    json!([{ "bearer": [] }]),
                    format!(
                        "{}: {}{}",
                        p.name(),
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
                params.push(json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }));
            }
        }
        if r.access != Access::Public {
            params.push(json!({ "name": "Territory-Id", "in": "header", "required": true, "schema": { "type": "string" } }));
        }
        op.insert("parameters".into(), Value::Array(params));
        if let Some(b) = r.body {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{b}") } } } }),
            );
        }
        let err = json!({ "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } });
        let ok_type = if r.path.ends_with("/stream") {
            "text/event-stream"
        } else if r.path == "/metrics" {
            "text/plain"
        } else {
            "application/json"
        };
        op.insert(
            "responses".into(),
            json!({ "2XX": { "description": "success", "content": { ok_type: {} } }, "4XX": err, "5XX": err }),
        );
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
