//! The Prometheus text exposition of `/metrics`: API, sessions, ingest, triage, outbox and
//! alarms (counts and states only, never PHI).

use std::sync::atomic::Ordering;

use super::state::ApiState;
use crate::storage::{Alarm, OutboxStats};

/// What `/metrics` reads from the store in one call.
pub struct StoreSnapshot<'a> {
    pub outbox: &'a OutboxStats,
    pub alarms: &'a [Alarm],
    /// Triage records written.
    pub triage: u64,
    /// When the last backup was taken (absent: never).
    pub last_backup_ms: Option<i64>,
    pub key_versions: &'a [crate::storage::CurrentKeyVersion],
}

/// Prometheus text exposition of the API, ingest, triage, outbox, alarm and session state.
pub fn metrics_text(st: &ApiState, store: &StoreSnapshot<'_>) -> String {
    let StoreSnapshot {
        outbox,
        alarms,
        triage,
        last_backup_ms,
        key_versions,
    } = *store;
    use std::fmt::Write;
    let mut o = String::new();
    let mut m = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "{name}{labels} {v}");
        }
    };
    let a = &st.metrics;
    let g = |x: &std::sync::atomic::AtomicU64| x.load(Ordering::Relaxed) as f64;
    m(
        "hema3n_api_requests_total",
        "counter",
        "API requests",
        &[(String::new(), g(&a.requests))],
    );
    m(
        "hema3n_api_errors_total",
        "counter",
        "API error responses by class",
        &[
            ("{class=\"4xx\"}".into(), g(&a.errors_4xx)),
            ("{class=\"5xx\"}".into(), g(&a.errors_5xx)),
        ],
    );
    m(
        "hema3n_api_busy_total",
        "counter",
        "Requests shed with 503 BUSY",
        &[(String::new(), g(&a.busy))],
    );
    m(
        "hema3n_api_logins_total",
        "counter",
        "Logins by outcome",
        &[
            ("{outcome=\"success\"}".into(), g(&a.logins)),
            ("{outcome=\"failure\"}".into(), g(&a.login_failures)),
            ("{outcome=\"throttled\"}".into(), g(&a.login_throttled)),
        ],
    );
    m(
        "hema3n_api_logoffs_total",
        "counter",
        "Sessions ended by idle or lifetime expiry on use",
        &[(String::new(), g(&a.logoffs))],
    );
    m(
        "hema3n_api_denials_total",
        "counter",
        "Requests denied by role or territory",
        &[(String::new(), g(&a.denials))],
    );
    m(
        "hema3n_api_break_glass_total",
        "counter",
        "Break-glass grants",
        &[(String::new(), g(&a.break_glass))],
    );
    m(
        "hema3n_api_sessions",
        "gauge",
        "Sessions alive",
        &[(String::new(), st.sessions.len() as f64)],
    );
    m(
        "hema3n_api_streams",
        "gauge",
        "Live streams open",
        &[(String::new(), g(&a.streams_open))],
    );
    if let Some(i) = &st.ingest {
        m(
            "hema3n_ingest_received_total",
            "counter",
            "Device messages received",
            &[(String::new(), g(&i.received))],
        );
        m(
            "hema3n_ingest_committed_total",
            "counter",
            "Device messages committed (stored or dead-lettered)",
            &[(String::new(), g(&i.committed_messages))],
        );
        m(
            "hema3n_ingest_readings_total",
            "counter",
            "Readings stored",
            &[(String::new(), g(&i.readings))],
        );
        m(
            "hema3n_ingest_duplicates_total",
            "counter",
            "Redelivered readings absorbed",
            &[(String::new(), g(&i.duplicates))],
        );
        m(
            "hema3n_ingest_shaped_total",
            "counter",
            "Messages held back by per-device rate shaping (stored later)",
            &[(String::new(), g(&i.shaped))],
        );
        m(
            "hema3n_ingest_qos0_dropped_total",
            "counter",
            "QoS 0 publishes dropped while the pipeline was full",
            &[(String::new(), g(&i.qos0_dropped))],
        );
        let rejects: Vec<(String, f64)> = i
            .rejects()
            .into_iter()
            .map(|(c, n)| (format!("{{code=\"{}\"}}", c.as_str()), n as f64))
            .collect();
        m(
            "hema3n_ingest_rejects_total",
            "counter",
            "Rejected packs by code",
            &rejects,
        );
        m(
            "hema3n_ingest_commit_latency_seconds",
            "gauge",
            "Arrival to commit latency quantiles",
            &[
                (
                    "{quantile=\"0.5\"}".into(),
                    i.latency_quantile(0.5).as_secs_f64(),
                ),
                (
                    "{quantile=\"0.99\"}".into(),
                    i.latency_quantile(0.99).as_secs_f64(),
                ),
            ],
        );
    }
    m(
        "hema3n_triage_results_total",
        "counter",
        "Triage results stored",
        &[(String::new(), triage as f64)],
    );
    m(
        "hema3n_backup_last_timestamp_seconds",
        "gauge",
        "When the last backup of the database was taken (hema3n-edge backup); 0 = never",
        &[(
            String::new(),
            last_backup_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
        )],
    );
    let now = crate::model::now_ms();
    let ages = crate::lifecycle::key_ages(&st.cfg, key_versions, now);
    m(
        "hema3n_territory_key_created_timestamp_seconds",
        "gauge",
        "When the current key version of each territory was created (rotate after keys.rotate_after_days)",
        &ages
            .iter()
            .map(|k| {
                (
                    format!(
                        "{{territory=\"{}\",version=\"{}\"}}",
                        k.territory, k.version
                    ),
                    k.created_at_ms as f64 / 1000.0,
                )
            })
            .collect::<Vec<_>>(),
    );
    m(
        "hema3n_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "notAfter of each TLS certificate in use (api, cloud_client); absent when unreadable",
        &crate::lifecycle::certificates(&st.cfg, now)
            .iter()
            .filter_map(|c| {
                let (t, _) = c.expiry.as_ref().ok()?;
                Some((
                    format!("{{certificate=\"{}\"}}", c.name),
                    *t as f64 / 1000.0,
                ))
            })
            .collect::<Vec<_>>(),
    );
    if let Some(r) = st.compliance.get() {
        m(
            "hema3n_compliance_status",
            "gauge",
            "HIPAA self-check item (check --compliance): 0 pass, 1 warn, 2 fail",
            &r.items
                .iter()
                .map(|i| {
                    (
                        format!("{{item=\"{}\",safeguard=\"{}\"}}", i.id, i.safeguard),
                        f64::from(i.status.code()),
                    )
                })
                .collect::<Vec<_>>(),
        );
        m(
            "hema3n_compliance_evaluated_timestamp_seconds",
            "gauge",
            "When the daemon last ran the HIPAA self-check (every 10 min)",
            &[(String::new(), r.evaluated_at_ms as f64 / 1000.0)],
        );
    }
    m(
        "hema3n_outbox_bundles",
        "gauge",
        "Outbox rows by custody state",
        &[
            ("{state=\"queued\"}".into(), outbox.queued as f64),
            ("{state=\"sent\"}".into(), outbox.sent as f64),
            ("{state=\"receipted\"}".into(), outbox.receipted as f64),
            ("{state=\"purged\"}".into(), outbox.purged as f64),
        ],
    );
    m(
        "hema3n_outbox_queued_bytes",
        "gauge",
        "Bytes not yet receipted",
        &[(String::new(), outbox.queued_bytes as f64)],
    );
    if let Some(s) = &st.sync {
        m(
            "hema3n_sync_link_state",
            "gauge",
            "Cloud link: 0 disabled, 1 offline, 2 catch-up, 3 live",
            &[(String::new(), s.state() as u8 as f64)],
        );
        m(
            "hema3n_sync_receipts_total",
            "counter",
            "Verified receipts",
            &[(String::new(), g(&s.receipts))],
        );
    }
    let mut kinds: Vec<(String, f64)> = Vec::new();
    for al in alarms {
        let l = format!("{{kind=\"{}\"}}", al.kind);
        match kinds.iter_mut().find(|(k, _)| *k == l) {
            Some((_, n)) => *n += 1.0,
            None => kinds.push((l, 1.0)),
        }
    }
    m("hema3n_alarms_open", "gauge", "Open alarms by kind", &kinds);
    o
}
