//! The hospital's view of pre-alerts: per case, the latest pre-alert and the chain of those it
//! replaced (`hema3n-receiver prealerts [--watch]`). Pure: rows in, chains and text out.

use std::collections::BTreeMap;

use crate::model::iso8601_ms;
use crate::storage::receiver::PrealertRow;

/// One case's pre-alerts, oldest first; the last is the one in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chain {
    pub appliance_id: String,
    pub case_id: String,
    pub links: Vec<PrealertRow>,
}

impl Chain {
    /// The pre-alert in force: the one no other replaces (the newest when several are not).
    pub fn latest(&self) -> &PrealertRow {
        let replaced: Vec<&str> = self
            .links
            .iter()
            .filter_map(|l| l.summary.replaces.as_deref())
            .collect();
        self.links
            .iter()
            .rev()
            .find(|l| !replaced.contains(&l.bundle_id.as_str()))
            .unwrap_or_else(|| self.links.last().expect("a chain has links"))
    }

    /// Whether every link names the one before it (nothing missing or forked).
    pub fn is_linked(&self) -> bool {
        self.links
            .windows(2)
            .all(|w| w[1].summary.replaces.as_deref() == Some(w[0].bundle_id.as_str()))
    }
}

/// Groups rows by (appliance, case), each chain in creation order.
pub fn chains(rows: Vec<PrealertRow>) -> Vec<Chain> {
    let mut by: BTreeMap<(String, String), Vec<PrealertRow>> = BTreeMap::new();
    for r in rows {
        by.entry((r.appliance_id.clone(), r.summary.case_id.clone()))
            .or_default()
            .push(r);
    }
    by.into_iter()
        .map(|((appliance_id, case_id), mut links)| {
            links.sort_by_key(|l| (l.created_at_ms, l.received_at_ms));
            Chain {
                appliance_id,
                case_id,
                links,
            }
        })
        .collect()
}

/// Two lines per case: what the latest pre-alert says, then the chain.
pub fn describe(c: &Chain) -> String {
    let l = c.latest();
    let s = &l.summary;
    let mut head = format!("{} case {}", c.appliance_id, c.case_id);
    if let Some(e) = s.esi {
        head.push_str(&format!("  ESI {e}"));
    }
    if let Some(d) = &s.destination {
        head.push_str(&format!("  → {d}"));
    }
    if let Some(t) = s.eta_ms {
        head.push_str(&format!("  ETA {}", iso8601_ms(t)));
    }
    if !s.alerts.is_empty() {
        head.push_str(&format!("  [{}]", s.alerts.join(", ")));
    }
    let chain: Vec<String> = c
        .links
        .iter()
        .map(|l| format!("{} ({})", l.bundle_id, l.summary.reasons.join(", ")))
        .collect();
    format!(
        "{head}\n  {} pre-alert{}{}: {}",
        c.links.len(),
        if c.links.len() == 1 { "" } else { "s" },
        if c.is_linked() {
            ""
        } else {
            " (chain has a gap)"
        },
        chain.join(" → ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PrealertSummary;

    fn row(b: &str, t: i64, replaces: Option<&str>, esi: u8) -> PrealertRow {
        PrealertRow {
            appliance_id: "amb-1".into(),
            bundle_id: b.into(),
            created_at_ms: t,
            received_at_ms: t + 5,
            summary: PrealertSummary {
                case_id: "c1".into(),
                replaces: replaces.map(str::to_string),
                esi: Some(esi),
                reasons: vec![format!("esi {esi}")],
                ..Default::default()
            },
        }
    }

    #[test]
    fn the_latest_is_the_one_nothing_replaces() {
        let cs = chains(vec![row("b2", 20, Some("b1"), 1), row("b1", 10, None, 2)]);
        assert_eq!(cs.len(), 1);
        assert!(cs[0].is_linked());
        assert_eq!(cs[0].latest().bundle_id, "b2");
        let text = describe(&cs[0]);
        assert!(
            text.contains("ESI 1") && text.contains("b1 (esi 2) → b2 (esi 1)"),
            "{text}"
        );
        let gap = chains(vec![row("b1", 10, None, 2), row("b3", 30, Some("b2"), 1)]);
        assert!(!gap[0].is_linked());
    }
}
