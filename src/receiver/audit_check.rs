//! Verifies a case bundle's audit trail (`docs/bundle-format.md`, "Audit trail"): the
//! checkpoint's ES256 signature under the appliance's key, each entry's canonical bytes against
//! what its `AuditEvent` shows, and that the entries chained with the segment's links reach the
//! signed hash; where the receiver already knows the chain's hash at a sequence number (a
//! checkpoint of an earlier bundle), the recomputed one must equal it. Pure, apart from the
//! lookup of known checkpoints the caller passes in. The signature may be checked ahead on the
//! opening thread ([`Trail::check_early`]) under the same rule as the envelope's.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

use super::audit_event::{Event, Resource};

use crate::crypto::sign::PublicKey;
use crate::storage::audit::{chain_hash, checkpoint_message, link_v2, parse_canonical};
use crate::storage::receiver_audit::{AuditVerdict, KnownCheckpoint, out_of_order};

const SYS_AUDIT: &str = "urn:hema3n:audit";

/// Links of more than this many entries are refused unread (a segment of 10^6 entries is
/// 33 MB, above any envelope size the receiver accepts).
const MAX_LINKS: usize = 1 << 20;

#[derive(Deserialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(default, borrow)]
    entry: Vec<Entry<'a>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    resource: Option<Resource<'a>>,
}

/// One entry as the bundle shows it.
struct Shown {
    seq: Option<i64>,
    action: String,
    actor: String,
    resource: String,
    canonical: Option<Vec<u8>>,
}

/// The checkpoint and segment as the bundle carries them.
#[derive(Default)]
struct Carried {
    seq: Option<i64>,
    ts: Option<i64>,
    hash: Option<Vec<u8>>,
    key_id: Option<String>,
    signature: Option<Vec<u8>>,
    from: Option<i64>,
    prev: Option<Vec<u8>>,
    links: Option<Vec<u8>>,
}

/// A case bundle's trail, parsed.
pub(super) struct Trail {
    /// The plaintext's `resourceType` (read in the same pass).
    pub(super) resource_type: Option<String>,
    entries: Vec<Shown>,
    checkpoint: Option<Carried>,
    /// The checkpoint's signature as checked on `receiver-open` under a hinted key: for which
    /// appliance, under which key, and whether it held ([`Trail::check_early`]).
    early: Option<(String, PublicKey, bool)>,
}

impl Trail {
    /// Checks the checkpoint's signature now, under the one of `hinted` (the appliance's keys
    /// as the database thread last read them) that the checkpoint names. [`verify`] uses the
    /// outcome only for the same appliance and the very key it then finds accepted; otherwise
    /// it checks itself. The verify is pure, so the decision is the same either way.
    pub(super) fn check_early(&mut self, appliance_id: &str, hinted: &[PublicKey]) {
        let Some(c) = &self.checkpoint else {
            return;
        };
        let (Some(seq), Some(ts), Some(hash), Some(key_id), Some(sig)) =
            (c.seq, c.ts, &c.hash, &c.key_id, &c.signature)
        else {
            return;
        };
        let (Ok(hash), Some(key)) = (
            <[u8; 32]>::try_from(hash.as_slice()),
            hinted.iter().find(|k| k.key_id() == *key_id),
        ) else {
            return;
        };
        let holds = signature_holds(appliance_id, seq, ts, &hash, sig, key);
        self.early = Some((appliance_id.to_string(), key.clone(), holds));
    }

    /// The chain range whose known hashes the verifier compares (`from - 1 ..= checkpoint`;
    /// the checkpoint alone without a segment).
    pub(super) fn range(&self) -> Option<(i64, i64)> {
        let c = self.checkpoint.as_ref()?;
        let to = c.seq?;
        Some((c.from.map_or(to, |f| f - 1), to))
    }
}

fn b64(v: &Option<Cow<'_, str>>) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_deref()?)
        .ok()
}

fn int(v: &Option<Cow<'_, str>>) -> Option<i64> {
    v.as_deref()?.parse().ok()
}

/// Reads the trail of a case bundle's plaintext; `Err` names what is unreadable.
pub(super) fn parse(body: &[u8]) -> Result<Trail, String> {
    // UTF-8 checked once over the whole plaintext (an ASCII fast path), so the parser does not
    // check each key and string again.
    let text = std::str::from_utf8(body)
        .map_err(|e| format!("bundle is not readable: not UTF-8 ({e})"))?;
    let b: Bundle<'_> =
        serde_json::from_str(text).map_err(|e| format!("bundle is not readable: {e}"))?;
    let mut t = Trail {
        resource_type: b.resource_type,
        entries: Vec::new(),
        checkpoint: None,
        early: None,
    };
    for r in b.entry.into_iter().filter_map(|e| e.resource) {
        if r.resource_type != "AuditEvent" {
            continue;
        }
        let ev = Event::read(&r);
        if ev.system.as_deref() != Some(SYS_AUDIT) {
            continue;
        }
        if ev.code.as_deref() == Some("checkpoint") {
            if t.checkpoint.is_some() {
                return Err("bundle carries two audit checkpoints".into());
            }
            let mut c = Carried::default();
            for (k, string, base64) in &ev.details {
                match k.as_ref() {
                    "seq" => c.seq = int(string),
                    "ts" => c.ts = int(string),
                    "hash" => c.hash = b64(base64),
                    "key_id" => c.key_id = string.as_deref().map(str::to_string),
                    "signature" => c.signature = b64(base64),
                    "segment_from" => c.from = int(string),
                    "segment_prev" => c.prev = b64(base64),
                    "segment_links" => c.links = b64(base64),
                    _ => {}
                }
            }
            t.checkpoint = Some(c);
            continue;
        }
        let text = |v: Option<&Cow<'_, str>>| v.map_or_else(String::new, |v| v.to_string());
        let mut e = Shown {
            seq: None,
            action: text(ev.code.as_ref()),
            actor: text(ev.actor.as_ref()),
            resource: text(ev.what.as_ref()),
            canonical: None,
        };
        for (k, string, base64) in &ev.details {
            match k.as_ref() {
                "seq" => e.seq = int(string),
                "canonical" => e.canonical = b64(base64),
                _ => {}
            }
        }
        t.entries.push(e);
    }
    Ok(t)
}

/// One link of the segment: a leaf digest (chain v2) or canonical bytes (chain v1).
enum Link<'a> {
    Leaf(&'a [u8; 32]),
    Canonical(&'a [u8]),
}

fn split_links(mut b: &[u8]) -> Result<Vec<Link<'_>>, String> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        if out.len() >= MAX_LINKS {
            return Err(format!("segment has more than {MAX_LINKS} links"));
        }
        match tag {
            2 => {
                let leaf = rest
                    .first_chunk::<32>()
                    .ok_or("segment link truncated (leaf digest)")?;
                out.push(Link::Leaf(leaf));
                b = &rest[32..];
            }
            1 => {
                let n = rest
                    .first_chunk::<4>()
                    .map(|n| u32::from_be_bytes(*n) as usize)
                    .ok_or("segment link truncated (length)")?;
                let c = rest
                    .get(4..4 + n)
                    .ok_or("segment link truncated (canonical bytes)")?;
                out.push(Link::Canonical(c));
                b = &rest[4 + n..];
            }
            t => return Err(format!("segment link has unknown tag {t}")),
        }
    }
    Ok(out)
}

/// Verifies `t`, carried by envelope `env_seq` of `appliance_id`, under one of the appliance's
/// accepted `keys` (the one the checkpoint names: it may predate a key change); `known` are
/// the checkpoints seen before in the trail's [`Trail::range`] and any out of order with it
/// (`storage::receiver_audit::KNOWN`).
pub(super) fn verify(
    appliance_id: &str,
    keys: &[PublicKey],
    t: &Trail,
    env_seq: u64,
    known: &[KnownCheckpoint],
) -> AuditVerdict {
    let mut v = AuditVerdict::default();
    let Some(c) = &t.checkpoint else {
        v.findings
            .push("case bundle carries no signed audit checkpoint".into());
        return v;
    };
    let (Some(seq), Some(ts), Some(hash), Some(key_id), Some(sig)) =
        (c.seq, c.ts, &c.hash, &c.key_id, &c.signature)
    else {
        v.findings.push(
            "audit checkpoint lacks seq, ts, hash, key_id or signature (or one is malformed)"
                .into(),
        );
        return v;
    };
    let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else {
        v.findings
            .push("audit checkpoint hash is not 32 bytes".into());
        return v;
    };
    let Some(key) = keys.iter().find(|k| k.key_id() == *key_id) else {
        v.findings.push(format!(
            "audit checkpoint {seq} is signed by key {key_id}, not a registered key of the appliance ({})",
            keys.iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
        ));
        return v;
    };
    let holds = match &t.early {
        Some((app, k, holds)) if app == appliance_id && k == key => *holds,
        _ => signature_holds(appliance_id, seq, ts, &hash, sig, key),
    };
    if !holds {
        v.findings
            .push(format!("audit checkpoint {seq}: signature is invalid"));
        return v;
    }
    v.checkpoint = Some((seq, hash));
    if let Err(f) = chain(t, c, seq, &hash, known, &mut v.entries) {
        v.findings.push(f);
    }
    let e = env_seq as i64;
    if let Some(o) = known
        .iter()
        .find(|k| (k.env_seq < e && k.seq >= seq) || (k.env_seq > e && k.seq <= seq))
    {
        v.findings
            .push(out_of_order(seq, env_seq, o.seq, o.env_seq));
    }
    v
}

/// Whether `sig` is `key`'s signature of checkpoint `seq` (`docs/bundle-format.md`).
fn signature_holds(
    appliance_id: &str,
    seq: i64,
    ts: i64,
    hash: &[u8; 32],
    sig: &[u8],
    key: &PublicKey,
) -> bool {
    key.verify_any_s(&checkpoint_message(appliance_id, seq, ts, hash), sig)
        .is_ok()
}

/// Recomputes the chain from the segment's start to the checkpoint.
fn chain(
    t: &Trail,
    c: &Carried,
    to: i64,
    signed: &[u8; 32],
    known: &[KnownCheckpoint],
    verified: &mut u64,
) -> Result<(), String> {
    let (Some(from), Some(prev), Some(links)) = (c.from, &c.prev, &c.links) else {
        return Err(format!(
            "audit checkpoint {to} carries no segment (segment_from, segment_prev, segment_links): the case's entries cannot be checked"
        ));
    };
    let mut own: BTreeMap<i64, &[u8]> = BTreeMap::new();
    for e in &t.entries {
        let (Some(seq), Some(canon)) = (e.seq, &e.canonical) else {
            return Err(format!(
                "audit entry {} carries no canonical bytes",
                e.seq.map_or("?".into(), |s| s.to_string())
            ));
        };
        let p = parse_canonical(canon)
            .ok_or_else(|| format!("audit entry {seq}: canonical bytes are malformed"))?;
        let [actor, _, action, resource, ..] = &p.fields;
        if p.seq != seq || *action != e.action || *resource != e.resource || *actor != e.actor {
            return Err(format!(
                "audit entry {seq}: what the AuditEvent shows differs from its canonical bytes"
            ));
        }
        if own.insert(seq, canon).is_some() {
            return Err(format!("audit entry {seq} appears twice"));
        }
    }
    if let Some((&first, _)) = own.first_key_value()
        && first != from
    {
        return Err(format!(
            "the segment starts at entry {from}, but the case's first entry is {first}"
        ));
    }
    if let Some((&last, _)) = own.last_key_value()
        && last > to
    {
        return Err(format!(
            "audit entry {last} is not covered by checkpoint {to}"
        ));
    }
    let links = split_links(links)?;
    let expected = (to - from + 1).saturating_sub(own.len() as i64);
    if links.len() as i64 != expected {
        return Err(format!(
            "entries {from}..{to} hold {} of the case's and {} links, not {expected}: entries were dropped or added",
            own.len(),
            links.len()
        ));
    }
    let known: BTreeMap<i64, &[u8]> = known.iter().map(|k| (k.seq, k.hash.as_slice())).collect();
    // The first sequence number where the chain disagrees with a checkpoint seen before.
    let mut fork = None;
    let mut at = |seq: i64, h: &[u8]| {
        if fork.is_none() && known.get(&seq).is_some_and(|k| *k != h) {
            fork = Some(seq);
        }
    };
    at(from - 1, prev);
    let mut h: [u8; 32] = prev
        .as_slice()
        .try_into()
        .map_err(|_| "segment_prev is not 32 bytes".to_string())?;
    let mut links = links.into_iter();
    for seq in from..=to {
        h = match own.get(&seq) {
            Some(canon) => chain_hash(&h, canon)
                .ok_or_else(|| format!("audit entry {seq}: unknown chain version"))?,
            None => match links.next() {
                Some(Link::Leaf(leaf)) => link_v2(&h, leaf),
                Some(Link::Canonical(canon)) => {
                    if parse_canonical(canon).map(|p| p.seq) != Some(seq) {
                        return Err(format!("segment link for entry {seq} names another entry"));
                    }
                    chain_hash(&h, canon)
                        .ok_or_else(|| format!("entry {seq}: unknown chain version"))?
                }
                None => return Err(format!("segment ends before entry {seq}")),
            },
        };
        at(seq, &h);
    }
    if h != *signed {
        return Err(format!(
            "the case's entries do not chain to signed checkpoint {to}: entries were edited, dropped or re-chained"
        ));
    }
    if let Some(seq) = fork {
        return Err(format!(
            "two different chain heads for entry {seq}: the chain this bundle proves differs from a checkpoint seen before (entries re-chained and signed again)"
        ));
    }
    *verified = own.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::SigningKey;
    use crate::model::{ExportAudit, ExportCheckpoint, ExportSegment};
    use crate::storage::audit::{self, EntryFields};

    const CASE: &str = "case/c1";

    fn signer() -> SigningKey {
        SigningKey::from_pkcs8("t", &SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    /// A log of `spec` (chain version, resource) entries from seq 1, the case's entries
    /// exported, a checkpoint over the last; `edit` may change the export before encoding.
    fn bundle(
        spec: &[(i64, &str)],
        sk: &SigningKey,
        edit: impl FnOnce(&mut Vec<ExportAudit>, &mut ExportSegment),
    ) -> (Vec<u8>, Vec<[u8; 32]>) {
        let mut h = audit::genesis("amb-1");
        let mut hashes = vec![h];
        let (mut own, mut links, mut prev, mut from) = (vec![], vec![], None, 0);
        for (i, (v, res)) in spec.iter().enumerate() {
            let seq = i as i64 + 1;
            let f = EntryFields {
                seq,
                ts: 1000 * seq,
                actor: "crew-1",
                role: "emt",
                action: "case.read",
                resource: res,
                outcome: "success",
                territory: "t",
                details: "{}",
            };
            let c = audit::canonical(*v, &f);
            let before = h;
            h = audit::chain_hash(&h, &c).unwrap();
            hashes.push(h);
            if *res == CASE {
                if prev.is_none() {
                    prev = Some(before);
                    from = seq;
                }
                own.push(ExportAudit {
                    seq,
                    ts_ms: f.ts,
                    actor: f.actor.into(),
                    role: f.role.into(),
                    action: f.action.into(),
                    resource: res.to_string(),
                    outcome: f.outcome.into(),
                    hash: h,
                    canonical: c,
                });
            } else if prev.is_some() && *v == 1 {
                links.push(1);
                links.extend_from_slice(&(c.len() as u32).to_be_bytes());
                links.extend_from_slice(&c);
            } else if prev.is_some() {
                links.push(2);
                links.extend_from_slice(&crate::crypto::sha256(&c));
            }
        }
        let to = spec.len() as i64;
        let cp = ExportCheckpoint {
            seq: to,
            ts_ms: 99,
            hash: h,
            key_id: sk.public().key_id(),
            signature: sk
                .sign(&audit::checkpoint_message("amb-1", to, 99, &h))
                .unwrap(),
        };
        let mut seg = ExportSegment {
            from_seq: from,
            prev_hash: prev.unwrap(),
            links,
        };
        edit(&mut own, &mut seg);
        let entry: Vec<serde_json::Value> =
            crate::sync::audit_events("amb-1", &own, Some(&cp), Some(&seg), &|r| r.to_string())
                .into_iter()
                .map(|(_, r)| serde_json::json!({ "resource": r }))
                .collect();
        let body = serde_json::json!({ "resourceType": "Bundle", "entry": entry });
        (serde_json::to_vec(&body).unwrap(), hashes)
    }

    /// Verifies `body` as envelope 5; `known` are (checkpoint, hash, envelope) seen before.
    fn check(body: &[u8], sk: &SigningKey, known: &[(i64, Vec<u8>, i64)]) -> AuditVerdict {
        let known: Vec<KnownCheckpoint> = known
            .iter()
            .map(|(seq, hash, env_seq)| KnownCheckpoint {
                seq: *seq,
                hash: hash.clone(),
                env_seq: *env_seq,
            })
            .collect();
        verify("amb-1", &[sk.public()], &parse(body).unwrap(), 5, &known)
    }

    /// Case entries of both chain versions, with v1 and v2 entries of others between.
    const MIXED: &[(i64, &str)] = &[
        (1, "user/a"),
        (1, CASE),
        (1, "user/b"),
        (2, "user/c"),
        (2, CASE),
        (2, "patient/p9"),
        (2, CASE),
    ];

    #[test]
    fn a_mixed_v1_v2_trail_verifies_and_agrees_with_known_checkpoints() {
        let sk = signer();
        let (body, hashes) = bundle(MIXED, &sk, |_, _| {});
        // An earlier bundle's checkpoint inside the range, and this one's own (a resend).
        let known = vec![(3, hashes[3].to_vec(), 2), (7, hashes[7].to_vec(), 5)];
        let v = check(&body, &sk, &known);
        assert_eq!(v.findings, Vec::<String>::new());
        assert_eq!(v.entries, 3);
        assert_eq!(v.checkpoint, Some((7, hashes[7])));
    }

    #[test]
    fn checkpoints_out_of_order_with_the_envelopes_are_findings() {
        let sk = signer();
        let (body, hashes) = bundle(MIXED, &sk, |_, _| {});
        // Envelope 5 carries checkpoint 7, but envelope 4 already carried checkpoint 9.
        let f = check(&body, &sk, &[(9, vec![1; 32], 4)]).findings;
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("an older checkpoint replayed"), "{f:?}");
        // Envelope 8 carried checkpoint 7 itself (this trail sent again in a later envelope).
        let f = check(&body, &sk, &[(7, hashes[7].to_vec(), 8)]).findings;
        assert!(f[0].contains("checkpoints out of order"), "{f:?}");
    }

    #[test]
    fn edited_dropped_and_forked_trails_are_each_named() {
        let sk = signer();
        let (edited, _) = bundle(MIXED, &sk, |own, _| {
            let c = &mut own[1].canonical;
            *c.last_mut().unwrap() = b']';
        });
        assert!(
            check(&edited, &sk, &[]).findings[0].contains("do not chain to signed checkpoint 7")
        );
        let (dropped, _) = bundle(MIXED, &sk, |own, _| {
            own.remove(1);
        });
        assert!(check(&dropped, &sk, &[]).findings[0].contains("dropped or added"));
        let (good, hashes) = bundle(MIXED, &sk, |_, _| {});
        let forked = vec![(4, crate::crypto::sha256(&hashes[4]).to_vec(), 2)];
        let f = &check(&good, &sk, &forked).findings[0];
        assert!(f.contains("two different chain heads for entry 4"), "{f}");
        let (shown, _) = bundle(MIXED, &sk, |own, _| own[0].resource = "case/other".into());
        let f = &check(&shown, &sk, &[]).findings[0];
        assert!(f.contains("differs from its canonical bytes"), "{f}");
    }

    #[test]
    fn a_foreign_or_broken_signature_and_a_missing_segment_are_findings() {
        let sk = signer();
        let (body, _) = bundle(MIXED, &sk, |_, _| {});
        let other = signer();
        assert!(
            check(&body, &other, &[]).findings[0].contains("not a registered key of the appliance")
        );
        let v = verify("amb-2", &[sk.public()], &parse(&body).unwrap(), 5, &[]);
        assert!(
            v.findings[0].contains("signature is invalid"),
            "{:?}",
            v.findings
        );
        assert_eq!(v.checkpoint, None);
        let bare = br#"{"resourceType":"Bundle","entry":[]}"#;
        assert!(check(bare, &sk, &[]).findings[0].contains("no signed audit checkpoint"));
        let (truncated, _) = bundle(MIXED, &sk, |_, seg| {
            seg.links.truncate(10);
        });
        let f = &check(&truncated, &sk, &[]).findings[0];
        assert!(f.contains("truncated"), "{f}");
    }

    /// The outcome checked on the opening thread counts only for the same appliance and the
    /// very key `verify` finds accepted; under a key since replaced, or for another appliance,
    /// `verify` checks again.
    #[test]
    fn an_early_check_counts_only_under_the_same_key_and_appliance() {
        let sk = signer();
        let (body, _) = bundle(MIXED, &sk, |_, _| {});
        let mut t = parse(&body).unwrap();
        t.check_early("amb-1", &[signer().public(), sk.public()]);
        assert!(matches!(&t.early, Some((a, k, true)) if a == "amb-1" && *k == sk.public()));
        assert_eq!(
            verify("amb-1", &[sk.public()], &t, 5, &[]).findings,
            Vec::<String>::new()
        );

        // A hinted key the checkpoint does not name leaves nothing to use.
        let mut none = parse(&body).unwrap();
        none.check_early("amb-1", &[signer().public()]);
        assert!(none.early.is_none());

        // Whatever the early outcome says, it is used only under the same key and appliance:
        // shown here by an outcome that disagrees with the signature.
        let mut t = parse(&body).unwrap();
        t.early = Some(("amb-1".into(), sk.public(), false));
        let f = verify("amb-1", &[sk.public()], &t, 5, &[]).findings;
        assert!(f[0].contains("signature is invalid"), "{f:?}");
        t.early = Some(("amb-1".into(), signer().public(), false));
        assert_eq!(
            verify("amb-1", &[sk.public()], &t, 5, &[]).findings,
            Vec::<String>::new()
        );
        t.early = Some(("amb-9".into(), sk.public(), false));
        assert_eq!(
            verify("amb-1", &[sk.public()], &t, 5, &[]).findings,
            Vec::<String>::new()
        );
        // Checked early for another appliance and held: amb-2 still fails on its own.
        t.early = Some(("amb-1".into(), sk.public(), true));
        let f = verify("amb-2", &[sk.public()], &t, 5, &[]).findings;
        assert!(f[0].contains("signature is invalid"), "{f:?}");
    }

    #[test]
    fn a_bundle_that_is_not_utf8_anywhere_is_unreadable() {
        let (body, _) = bundle(MIXED, &signer(), |_, _| {});
        let at = body.windows(9).position(|w| w == b"\"entry\":[").unwrap() + 9;
        let with = |status: &[u8]| {
            let o = br#"{"resource":{"resourceType":"Observation","status":""#;
            [&body[..at], o, status, br#""}},"#, &body[at..]].concat()
        };
        // One more resource in text changes nothing; a string the trail never reads that is
        // not UTF-8 makes the bundle unreadable (a finding).
        let n = parse(&body).unwrap().entries.len();
        assert_eq!(parse(&with(b"final")).unwrap().entries.len(), n);
        let e = parse(&with(b"fin\xffal")).err().unwrap();
        assert!(e.starts_with("bundle is not readable: not UTF-8"), "{e}");
    }
}
