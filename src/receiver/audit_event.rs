//! Reads what the audit-trail check needs of one `AuditEvent` of a case bundle
//! (`audit_check`): through borrowed shapes of what the appliance writes, and through
//! `serde_json::Value` for anything else.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Only the fields an `AuditEvent` needs, left unread (borrowed JSON text) until the resource
/// is known to be one; other resources' bodies are skipped.
#[derive(Deserialize)]
pub(super) struct Resource<'a> {
    #[serde(rename = "resourceType", borrow)]
    pub(super) resource_type: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub(super) ty: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) agent: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) entity: Option<&'a RawValue>,
}

/// What the trail reads of one `AuditEvent`: `type.system`, `type.code`, the first agent's
/// `who.identifier.value`, the first entity's `what.identifier.value` and its details.
pub(super) struct Event<'a> {
    pub(super) system: Option<Cow<'a, str>>,
    pub(super) code: Option<Cow<'a, str>>,
    pub(super) actor: Option<Cow<'a, str>>,
    pub(super) what: Option<Cow<'a, str>>,
    /// Each detail whose type is a string.
    pub(super) details: Vec<Detail<'a>>,
}

/// `(type, valueString, valueBase64Binary)` of one detail.
pub(super) type Detail<'a> = (Cow<'a, str>, Option<Cow<'a, str>>, Option<Cow<'a, str>>);

/// The shapes the appliance writes, borrowed from the plaintext (no allocation per field).
mod shape {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Coding<'a> {
        pub(super) system: Option<&'a str>,
        pub(super) code: Option<&'a str>,
    }
    #[derive(Deserialize)]
    pub(super) struct Agent<'a> {
        #[serde(borrow)]
        pub(super) who: Option<Reference<'a>>,
    }
    #[derive(Deserialize)]
    pub(super) struct Reference<'a> {
        #[serde(borrow)]
        pub(super) identifier: Option<Identifier<'a>>,
    }
    #[derive(Deserialize)]
    pub(super) struct Identifier<'a> {
        pub(super) value: Option<&'a str>,
    }
    #[derive(Deserialize)]
    pub(super) struct Entity<'a> {
        #[serde(borrow)]
        pub(super) what: Option<Reference<'a>>,
        #[serde(default, borrow)]
        pub(super) detail: Vec<Detail<'a>>,
    }
    #[derive(Deserialize)]
    pub(super) struct Detail<'a> {
        #[serde(rename = "type")]
        pub(super) ty: &'a str,
        #[serde(rename = "valueString")]
        pub(super) string: Option<&'a str>,
        #[serde(rename = "valueBase64Binary")]
        pub(super) base64: Option<&'a str>,
    }
}

impl<'a> Event<'a> {
    /// Reads the event through the borrowed shapes; anything else (escaped strings, other
    /// shapes, repeated keys) through `serde_json::Value`, which gives the same answer slower.
    pub(super) fn read(r: &Resource<'a>) -> Event<'a> {
        Self::borrowed(r).unwrap_or_else(|| Self::owned(r))
    }

    fn borrowed(r: &Resource<'a>) -> Option<Event<'a>> {
        fn get<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<Option<T>> {
            raw.map_or(Some(None), |raw| serde_json::from_str(raw.get()).ok())
        }
        let ty: Option<shape::Coding<'a>> = get(r.ty)?;
        let agent: Option<Vec<shape::Agent<'a>>> = get(r.agent)?;
        let entity: Option<Vec<shape::Entity<'a>>> = get(r.entity)?;
        let ident =
            |x: Option<&shape::Reference<'a>>| x?.identifier.as_ref()?.value.map(Cow::Borrowed);
        let first = entity.and_then(|e| e.into_iter().next());
        Some(Event {
            system: ty.as_ref().and_then(|t| t.system).map(Cow::Borrowed),
            code: ty.as_ref().and_then(|t| t.code).map(Cow::Borrowed),
            actor: ident(agent.as_ref().and_then(|a| a.first()?.who.as_ref())),
            what: ident(first.as_ref().and_then(|e| e.what.as_ref())),
            details: first.map_or(vec![], |e| {
                e.detail
                    .into_iter()
                    .map(|d| {
                        let b = |s: Option<&'a str>| s.map(Cow::Borrowed);
                        (Cow::Borrowed(d.ty), b(d.string), b(d.base64))
                    })
                    .collect()
            }),
        })
    }

    fn owned(r: &Resource<'a>) -> Event<'a> {
        let value = |raw: Option<&RawValue>| -> Value {
            raw.and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or_default()
        };
        let (ty, agent, entity) = (value(r.ty), value(r.agent), value(r.entity));
        let s = |v: &Value| v.as_str().map(|s| Cow::Owned(s.to_string()));
        Event {
            system: s(&ty["system"]),
            code: s(&ty["code"]),
            actor: s(&agent[0]["who"]["identifier"]["value"]),
            what: s(&entity[0]["what"]["identifier"]["value"]),
            details: entity[0]["detail"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| {
                    Some((
                        s(&d["type"])?,
                        s(&d["valueString"]),
                        s(&d["valueBase64Binary"]),
                    ))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> (bool, Vec<Option<String>>, Vec<String>) {
        let r: Resource<'_> = serde_json::from_str(json).unwrap();
        let e = Event::read(&r);
        let s = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_string);
        let fields = vec![s(&e.system), s(&e.code), s(&e.actor), s(&e.what)];
        let details = e
            .details
            .iter()
            .map(|(t, v, b)| format!("{t}={:?}/{:?}", v.as_deref(), b.as_deref()))
            .collect();
        (Event::borrowed(&r).is_some(), fields, details)
    }

    const PLAIN: &str = r#"{"resourceType":"AuditEvent","type":{"system":"urn:hema3n:audit","code":"case.read"},
        "agent":[{"who":{"identifier":{"value":"medic1"}}},{"who":{"identifier":{"value":"other"}}}],
        "entity":[{"what":{"identifier":{"value":"case/1"}},"detail":[
            {"type":"seq","valueString":"7"},{"type":"canonical","valueBase64Binary":"AQI="}]}]}"#;

    #[test]
    fn the_borrowed_and_the_value_reading_agree() {
        let (borrowed, fields, details) = event(PLAIN);
        assert!(borrowed, "the appliance's own shape reads without Value");
        assert_eq!(
            fields,
            ["urn:hema3n:audit", "case.read", "medic1", "case/1"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            details,
            [r#"seq=Some("7")/None"#, r#"canonical=None/Some("AQI=")"#]
        );
        // Escaped strings cannot be borrowed: the Value reading gives the unescaped text.
        let escaped = PLAIN
            .replace("medic1", r"med\u0069c1")
            .replace(r#""7""#, r#""\u0037""#);
        assert_eq!(event(&escaped), (false, fields.clone(), details.clone()));
        // Other shapes (a detail without a type, a non-array agent) fall back and read what
        // the Value reading reads: the typeless detail is skipped, the agent is absent.
        let odd = PLAIN
            .replace(
                r#"{"type":"seq","valueString":"7"},"#,
                r#"{"valueString":"7"},"#,
            )
            .replace(r#""agent":["#, r#""agent":{"x":["#)
            .replace(r#"}}}],"#, r#"}}}]},"#);
        let (borrowed, f, d) = event(&odd);
        assert!(!borrowed);
        assert_eq!(f[2], None);
        assert_eq!(
            (f[0].as_deref(), f[3].as_deref()),
            (Some("urn:hema3n:audit"), Some("case/1"))
        );
        assert_eq!(d, [r#"canonical=None/Some("AQI=")"#]);
    }
}
