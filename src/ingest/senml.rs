//! SenML (RFC 8428) JSON packs from field devices: parsing, base-field resolution and
//! validation against the vocabulary. Pure: no IO, no clock (the receive time is an input).
//!
//! Rules (Contract A):
//! - the payload is a UTF-8 JSON array of records; a pack is accepted or rejected whole;
//! - `bn`, `bt`, `bu` apply to the records that follow until redefined; the measurement name is
//!   the part of `bn + n` after the last `:` or `/`;
//! - every record needs a resolvable time: `bt + t`, where a `t` below 2^28 without `bt` is
//!   relative to the receive time (RFC 8428 §4.5.3); a record with neither is rejected;
//! - numeric `v` for every vital except `avpu`, which takes `vs` (A, C, V, P, U);
//! - units must match the vocabulary exactly; values must lie in the plausible range;
//! - fields ending in `_` are "must understand" and rejected; other unknown fields are ignored.

use serde_json::Value;

pub use crate::model::{Reading, Reject, RejectCode};
use crate::vocab;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_records: usize,
    /// How far in the future a device time may be, in ms.
    pub max_future_ms: i64,
    /// How old a device time may be, in ms.
    pub max_age_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records: 256,
            max_future_ms: 24 * 3600 * 1000,
            max_age_ms: 72 * 3600 * 1000,
        }
    }
}

/// RFC 8428: times below 2^28 are relative to "now".
const RELATIVE_TIME_LIMIT: f64 = (1u64 << 28) as f64;

/// Parses and validates a whole pack received at `recv_ms`.
pub fn parse_pack(payload: &[u8], recv_ms: i64, lim: &Limits) -> Result<Vec<Reading>, Reject> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        Reject::new(
            RejectCode::BadEncoding,
            format!("payload is not UTF-8 (byte {})", e.valid_up_to()),
            None,
        )
    })?;
    let doc: Node = serde_json::from_str(text)
        .map_err(|e| Reject::new(RejectCode::BadJson, format!("invalid JSON: {e}"), None))?;
    let Node::List(records) = doc else {
        return Err(Reject::new(
            RejectCode::BadSenml,
            "a SenML pack is a JSON array of records",
            None,
        ));
    };
    if records.is_empty() {
        return Err(Reject::new(
            RejectCode::EmptyPack,
            "the pack has no records",
            None,
        ));
    }
    if records.len() > lim.max_records {
        return Err(Reject::new(
            RejectCode::TooManyRecords,
            format!(
                "{} records exceed the limit of {}",
                records.len(),
                lim.max_records
            ),
            None,
        ));
    }
    let mut out = Vec::with_capacity(records.len());
    // Only the part of `bn` after its last separator can contribute to a name.
    let (mut bn_tail, mut bt, mut bu): (String, Option<f64>, Option<String>) =
        (String::new(), None, None);
    for (i, rec) in records.iter().enumerate() {
        let at = Some(i);
        let obj = match rec {
            Node::Object(obj) => obj,
            Node::Duplicate(k) => {
                return Err(Reject::new(
                    RejectCode::BadSenml,
                    format!("field `{}` appears twice in one record", truncate(k, 16)),
                    at,
                ));
            }
            Node::List(_) | Node::Scalar => {
                return Err(Reject::new(
                    RejectCode::BadSenml,
                    "a record must be a JSON object",
                    at,
                ));
            }
        };
        if let Some(k) = obj.keys().find(|k| k.ends_with('_')) {
            return Err(Reject::new(
                RejectCode::MustUnderstand,
                format!("unsupported must-understand field `{k}`"),
                at,
            ));
        }
        if let Some(v) = obj.get("bver")
            && v.as_u64().is_none_or(|v| v > 10)
        {
            return Err(Reject::new(
                RejectCode::BadSenml,
                "`bver` must be a SenML version number ≤ 10",
                at,
            ));
        }
        if let Some(v) = obj.get("bn") {
            let bn = v
                .as_str()
                .ok_or_else(|| Reject::new(RejectCode::BadSenml, "`bn` must be a string", at))?;
            bn_tail = tail(bn).to_string();
        }
        if let Some(v) = obj.get("bt") {
            bt =
                Some(finite(v).ok_or_else(|| {
                    Reject::new(RejectCode::BadSenml, "`bt` must be a number", at)
                })?);
        }
        if let Some(v) = obj.get("bu") {
            bu = Some(
                v.as_str()
                    .ok_or_else(|| Reject::new(RejectCode::BadSenml, "`bu` must be a string", at))?
                    .to_string(),
            );
        }
        if ["bv", "bs"].iter().any(|k| obj.contains_key(*k)) {
            return Err(Reject::new(
                RejectCode::UnsupportedValue,
                "base values (`bv`, `bs`) are not supported",
                at,
            ));
        }
        let values = ["v", "vs", "vb", "vd"]
            .iter()
            .filter(|k| obj.contains_key(**k))
            .count();
        if values > 1 {
            // RFC 8428 §4.2: a record carries at most one value field.
            return Err(Reject::new(
                RejectCode::BadSenml,
                "a record carries exactly one of `v`, `vs`, `vb`, `vd`",
                at,
            ));
        }
        let has_value = values > 0 || obj.contains_key("s");
        if !has_value && !obj.contains_key("n") {
            // A record carrying only base fields.
            continue;
        }
        let n = match obj.get("n") {
            None => "",
            Some(v) => v
                .as_str()
                .ok_or_else(|| Reject::new(RejectCode::BadSenml, "`n` must be a string", at))?,
        };
        // The name is the part of `bn + n` after the last separator, built without copying
        // `bn` (which may be long) for every record.
        let joined;
        let name = if n.contains([':', '/']) || bn_tail.is_empty() {
            tail(n)
        } else {
            joined = if bn_tail.len() + n.len() <= MAX_NAME {
                format!("{bn_tail}{n}")
            } else {
                String::new()
            };
            joined.as_str()
        };
        let vital = vocab::lookup(name).ok_or_else(|| {
            Reject::new(
                RejectCode::UnknownName,
                format!("unknown measurement `{}`", truncate(name, 64)),
                at,
            )
        })?;
        let unit = match obj.get("u") {
            Some(v) => Some(
                v.as_str()
                    .ok_or_else(|| Reject::new(RejectCode::BadSenml, "`u` must be a string", at))?,
            ),
            None => bu.as_deref(),
        };
        let t = match obj.get("t") {
            Some(v) => Some(
                finite(v)
                    .ok_or_else(|| Reject::new(RejectCode::BadSenml, "`t` must be a number", at))?,
            ),
            None => None,
        };
        let secs = match (bt, t) {
            (Some(b), t) => b + t.unwrap_or(0.0),
            (None, Some(t)) if t.abs() < RELATIVE_TIME_LIMIT => recv_ms as f64 / 1000.0 + t,
            (None, Some(t)) => t,
            (None, None) => {
                return Err(Reject::new(
                    RejectCode::MissingTime,
                    format!("`{name}` has no time (`t` or `bt`)"),
                    at,
                ));
            }
        };
        if secs.abs() < RELATIVE_TIME_LIMIT {
            return Err(Reject::new(
                RejectCode::MissingTime,
                format!("`{name}` time resolves to a relative value, not a date"),
                at,
            ));
        }
        // Bounds are checked in floating point before any conversion: a time such as
        // `bt = -1e20` must be refused, not saturated into an integer that overflows later.
        let device_ms_f = (secs * 1000.0).round();
        if device_ms_f.is_nan() {
            return Err(Reject::new(
                RejectCode::BadSenml,
                format!("`{name}` time is not a number"),
                at,
            ));
        }
        let recv_f = recv_ms as f64;
        if device_ms_f > recv_f + lim.max_future_ms as f64 {
            return Err(Reject::new(
                RejectCode::TimeInFuture,
                format!(
                    "`{name}` time is {} s ahead of the appliance clock",
                    seconds_between(recv_f, device_ms_f)
                ),
                at,
            ));
        }
        if device_ms_f < recv_f - lim.max_age_ms as f64 {
            return Err(Reject::new(
                RejectCode::TimeTooOld,
                format!(
                    "`{name}` time is {} s older than the appliance clock allows",
                    seconds_between(device_ms_f, recv_f)
                ),
                at,
            ));
        }
        // Within [recv - max_age, recv + max_future], so well inside i64.
        let device_ms = device_ms_f as i64;
        let value = if vital.name == "avpu" {
            if obj.contains_key("v") {
                return Err(Reject::new(
                    RejectCode::BadValue,
                    "`avpu` takes a string `vs` (A, C, V, P or U)",
                    at,
                ));
            }
            let vs = obj
                .get("vs")
                .ok_or_else(|| Reject::new(RejectCode::MissingValue, "`avpu` needs `vs`", at))?
                .as_str()
                .ok_or_else(|| Reject::new(RejectCode::BadValue, "`vs` must be a string", at))?;
            if let Some(u) = unit {
                return Err(Reject::new(
                    RejectCode::WrongUnit,
                    format!("`avpu` has no unit, got `{}`", truncate(u, 16)),
                    at,
                ));
            }
            vocab::avpu_level(vs).ok_or_else(|| {
                Reject::new(
                    RejectCode::BadValue,
                    format!("`{}` is not one of A, C, V, P, U", truncate(vs, 8)),
                    at,
                )
            })?
        } else {
            if ["vb", "vd", "s"].iter().any(|k| obj.contains_key(*k))
                || (obj.contains_key("vs") && !obj.contains_key("v"))
            {
                return Err(Reject::new(
                    RejectCode::UnsupportedValue,
                    format!("`{name}` takes a numeric `v`"),
                    at,
                ));
            }
            let v = obj.get("v").ok_or_else(|| {
                Reject::new(RejectCode::MissingValue, format!("`{name}` has no `v`"), at)
            })?;
            let v = finite(v).ok_or_else(|| {
                Reject::new(
                    RejectCode::BadValue,
                    format!("`{name}` value must be a finite number"),
                    at,
                )
            })?;
            let want = vital.unit.expect("numeric vitals have units");
            match unit {
                Some(u) if u == want => {}
                Some(u) => {
                    return Err(Reject::new(
                        RejectCode::WrongUnit,
                        format!("`{name}` must be in `{want}`, got `{}`", truncate(u, 16)),
                        at,
                    ));
                }
                None => {
                    return Err(Reject::new(
                        RejectCode::WrongUnit,
                        format!("`{name}` needs unit `{want}`"),
                        at,
                    ));
                }
            }
            vital
                .check(v)
                .map_err(|e| Reject::new(RejectCode::OutOfRange, e.to_string(), at))?
        };
        out.push(Reading {
            code: vital.name,
            value,
            device_time_ms: device_ms,
        });
    }
    if out.is_empty() {
        return Err(Reject::new(
            RejectCode::EmptyPack,
            "the pack has only base records",
            None,
        ));
    }
    Ok(out)
}

/// Longest vocabulary name we could ever match (names are short identifiers).
const MAX_NAME: usize = 64;

/// `b - a` in whole seconds for a message, bounded so that absurd times print sanely.
fn seconds_between(a_ms: f64, b_ms: f64) -> String {
    let s = ((b_ms - a_ms) / 1000.0).floor();
    if s > 1e12 {
        "more than 10^12".into()
    } else {
        format!("{s:.0}")
    }
}

/// The part of a name after its last `:` or `/`.
fn tail(s: &str) -> &str {
    s.rsplit([':', '/']).next().unwrap_or_default()
}

/// A JSON document as the pack decoder sees it: objects keep their fields unless a key repeats
/// (RFC 8259 leaves the meaning of a repeated key open, so a device must not send one).
enum Node {
    List(Vec<Node>),
    Object(serde_json::Map<String, Value>),
    Duplicate(String),
    Scalar,
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(n) = a.next_element::<Node>()? {
                    out.push(n);
                }
                Ok(Node::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut obj = serde_json::Map::new();
                let mut dup = None;
                while let Some(k) = a.next_key::<String>()? {
                    let v: Value = a.next_value()?;
                    if obj.contains_key(&k) {
                        dup.get_or_insert(k);
                    } else {
                        obj.insert(k, v);
                    }
                }
                Ok(dup.map_or(Node::Object(obj), Node::Duplicate))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

fn finite(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn parse(s: &str) -> Result<Vec<Reading>, Reject> {
        parse_pack(s.as_bytes(), NOW, &Limits::default())
    }

    fn code(s: &str) -> &'static str {
        parse(s).unwrap_err().code.as_str()
    }

    #[test]
    fn base_fields_resolve_names_times_and_units() {
        let r = parse(
            r#"[{"bn":"urn:dev:mon-7:","bt":1800000000,"bu":"beat/min","n":"heart_rate","v":72,"t":-1},
                {"n":"spo2","u":"%","v":97.5},{"n":"avpu","vs":"V","bu":null}]"#,
        );
        // `bu: null` is not a string.
        assert_eq!(r.unwrap_err().code, RejectCode::BadSenml);
        let r = parse(
            r#"[{"bn":"urn:dev:mon-7:","bt":1800000000,"bu":"beat/min","n":"heart_rate","v":72,"t":-1},
                {"n":"spo2","u":"%","v":97.5},{"n":"gcs_total","u":"/","v":14,"t":0.5}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0],
            Reading {
                code: "heart_rate",
                value: 72.0,
                device_time_ms: NOW - 1000
            }
        );
        assert_eq!(r[1].device_time_ms, NOW);
        assert_eq!(r[2].device_time_ms, NOW + 500);
    }

    #[test]
    fn avpu_uses_string_values() {
        let r = parse(r#"[{"n":"avpu","vs":"P","t":1800000000}]"#).unwrap();
        assert_eq!(r[0].value, 3.0);
        assert_eq!(
            code(r#"[{"n":"avpu","vs":"X","t":1800000000}]"#),
            "BAD_VALUE"
        );
        assert_eq!(code(r#"[{"n":"avpu","v":1,"t":1800000000}]"#), "BAD_VALUE");
    }

    #[test]
    fn relative_time_without_base_is_relative_to_receipt() {
        let r = parse(r#"[{"n":"temp","u":"Cel","v":37.2,"t":-30}]"#).unwrap();
        assert_eq!(r[0].device_time_ms, NOW - 30_000);
    }

    #[test]
    fn every_reject_code_of_the_parser_is_reachable() {
        let t = r#""t":1800000000"#;
        let cases: Vec<(String, &str)> = vec![
            ("[1".into(), "BAD_JSON"),
            (r#"{"n":"x"}"#.into(), "BAD_SENML"),
            ("[5]".into(), "BAD_SENML"),
            ("[]".into(), "EMPTY_PACK"),
            (r#"[{"bn":"x:"}]"#.into(), "EMPTY_PACK"),
            (
                format!(r#"[{{"n":"pulse","u":"beat/min","v":1,{t}}}]"#),
                "UNKNOWN_NAME",
            ),
            (
                format!(r#"[{{"n":"heart_rate","u":"Hz","v":1,{t}}}]"#),
                "WRONG_UNIT",
            ),
            (format!(r#"[{{"n":"heart_rate","v":1,{t}}}]"#), "WRONG_UNIT"),
            (
                format!(r#"[{{"n":"heart_rate","u":"beat/min",{t}}}]"#),
                "MISSING_VALUE",
            ),
            (
                format!(r#"[{{"n":"heart_rate","u":"beat/min","v":"72",{t}}}]"#),
                "BAD_VALUE",
            ),
            (
                format!(r#"[{{"n":"heart_rate","u":"beat/min","vb":true,{t}}}]"#),
                "UNSUPPORTED_VALUE",
            ),
            (
                format!(r#"[{{"n":"heart_rate","u":"beat/min","v":351,{t}}}]"#),
                "OUT_OF_RANGE",
            ),
            (
                format!(r#"[{{"n":"gcs_total","u":"/","v":14.5,{t}}}]"#),
                "OUT_OF_RANGE",
            ),
            (
                format!(r#"[{{"n":"temp","u":"Cel","v":19.9,{t}}}]"#),
                "OUT_OF_RANGE",
            ),
            (
                r#"[{"n":"heart_rate","u":"beat/min","v":1}]"#.into(),
                "MISSING_TIME",
            ),
            (
                r#"[{"n":"heart_rate","u":"beat/min","v":1,"t":1900000000}]"#.into(),
                "TIME_IN_FUTURE",
            ),
            (
                r#"[{"n":"heart_rate","u":"beat/min","v":1,"t":1700000000}]"#.into(),
                "TIME_TOO_OLD",
            ),
            (
                format!(r#"[{{"n":"heart_rate","u":"beat/min","v":1,"crit_":1,{t}}}]"#),
                "MUST_UNDERSTAND",
            ),
        ];
        for (payload, want) in &cases {
            assert_eq!(code(payload), *want, "{payload}");
        }
        assert_eq!(
            parse_pack(&[0xff, 0xfe, 0x00], NOW, &Limits::default())
                .unwrap_err()
                .code,
            RejectCode::BadEncoding
        );
        let many = format!(
            "[{}]",
            vec![format!(r#"{{"n":"pain","u":"/","v":1,{t}}}"#); 257].join(",")
        );
        assert_eq!(code(&many), "TOO_MANY_RECORDS");
    }

    #[test]
    fn a_pack_is_rejected_whole_naming_the_bad_record() {
        let e = parse(r#"[{"n":"spo2","u":"%","v":97,"t":1800000000},{"n":"spo2","u":"%","v":101,"t":1800000000}]"#).unwrap_err();
        assert_eq!((e.code, e.record), (RejectCode::OutOfRange, Some(1)));
        let j: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(j["code"], "OUT_OF_RANGE");
        assert_eq!(j["record"], 1);
    }

    #[test]
    fn extreme_times_are_refused_without_overflow() {
        // Review #24 and the live poison packs: these saturated or overflowed before.
        let packs = [
            (
                r#"[{"bt":-1e20,"n":"heart_rate","u":"beat/min","v":70}]"#,
                "TIME_TOO_OLD",
            ),
            (
                r#"[{"bt":-1e16,"n":"heart_rate","u":"beat/min","v":70}]"#,
                "TIME_TOO_OLD",
            ),
            (
                r#"[{"n":"heart_rate","u":"beat/min","v":70,"t":-1e20}]"#,
                "TIME_TOO_OLD",
            ),
            (
                r#"[{"bt":-1e308,"n":"heart_rate","u":"beat/min","v":70,"t":-1e308}]"#,
                "TIME_TOO_OLD",
            ),
            (
                r#"[{"bt":1e308,"n":"heart_rate","u":"beat/min","v":70,"t":1e308}]"#,
                "TIME_IN_FUTURE",
            ),
            (
                r#"[{"bt":1e20,"n":"heart_rate","u":"beat/min","v":70}]"#,
                "TIME_IN_FUTURE",
            ),
            (
                r#"[{"bt":1e308,"n":"heart_rate","u":"beat/min","v":70,"t":-1e308}]"#,
                "MISSING_TIME",
            ),
        ];
        for (p, want) in packs {
            assert_eq!(code(p), want, "{p}");
        }
        // Extreme limits and receive times do not overflow either.
        let lim = Limits {
            max_records: 1,
            max_future_ms: i64::MAX,
            max_age_ms: i64::MAX,
        };
        let r = parse_pack(
            br#"[{"bt":-1e20,"n":"heart_rate","u":"beat/min","v":70}]"#,
            i64::MAX,
            &lim,
        );
        assert!(r.is_err() || r.unwrap()[0].device_time_ms < 0);
    }

    #[test]
    fn duplicate_keys_and_two_value_fields_are_refused() {
        let t = r#""t":1800000000"#;
        for p in [
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":70,"v":180,{t}}}]"#),
            format!(r#"[{{"n":"heart_rate","n":"spo2","u":"beat/min","v":70,{t}}}]"#),
            format!(r#"[{{"n":"heart_rate","u":"beat/min","v":70,"vs":"A",{t}}}]"#),
            format!(r#"[{{"n":"avpu","v":1,"vs":"A",{t}}}]"#),
            format!(r#"[{{"n":"spo2","u":"%","v":97,"vd":"AA",{t}}}]"#),
        ] {
            let e = parse(&p).unwrap_err();
            assert_eq!((e.code, e.record), (RejectCode::BadSenml, Some(0)), "{p}");
        }
        assert!(
            parse(&format!(
                r#"[{{"n":"avpu","vs":"A",{t}}},{{"n":"avpu","vs":"V","t":1800000001}}]"#
            ))
            .is_ok()
        );
    }

    #[test]
    fn a_long_base_name_is_not_copied_into_every_record() {
        // 50 KB `bn` without separators: the name cannot match, and no per-record copy is made.
        let bn = "x".repeat(50_000);
        let p =
            format!(r#"[{{"bn":"{bn}","n":"heart_rate","u":"beat/min","v":70,"t":1800000000}}]"#);
        assert_eq!(code(&p), "UNKNOWN_NAME");
        let p =
            format!(r#"[{{"bn":"{bn}:","n":"heart_rate","u":"beat/min","v":70,"t":1800000000}}]"#);
        assert!(parse(&p).is_ok());
        let p =
            r#"[{"bn":"urn:dev:mon-1:heart","n":"_rate","u":"beat/min","v":70,"t":1800000000}]"#;
        assert_eq!(parse(p).unwrap()[0].code, "heart_rate");
    }

    #[test]
    fn nan_and_infinite_numbers_are_not_json() {
        assert_eq!(
            code(r#"[{"n":"spo2","u":"%","v":NaN,"t":1800000000}]"#),
            "BAD_JSON"
        );
        assert_eq!(
            code(r#"[{"n":"spo2","u":"%","v":1e999,"t":1800000000}]"#),
            "BAD_JSON"
        );
    }
}
