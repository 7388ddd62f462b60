//! The receiver's operations endpoint on `metrics_listen` (default `127.0.0.1:9464`): `GET
//! /metrics` (Prometheus text format 0.0.4) and `GET /health` (JSON; 200 when the broker is
//! connected and the store answers, else 503). A minimal HTTP/1.1 responder — one request per
//! connection, read within 5 s, at most 8 KiB of request head — answered one connection at a
//! time, so a slow scraper can only delay the next one, never the custody path.
//!
//! This process's counters (what it verified, stored, refused) come from [`Live`]; what all
//! receivers sharing the store know (bundles, resends, alarms, and per appliance: last seen,
//! last sequence number, sequence gaps, its latest telemetry) is read from the store on each
//! scrape.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::custody::{Counters, Custody};
use crate::storage::Owner;
use crate::storage::receiver::{ApplianceStatus, ReceiverStats};

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;

/// What this receiver process has done, shared by the connection loop and the endpoint.
#[derive(Default)]
pub(super) struct Live {
    counters: Mutex<Counters>,
    broker_connected: AtomicBool,
    /// When the last batch was committed (ms since the epoch; 0 = none yet).
    last_batch_ms: AtomicI64,
    /// The largest appliance-to-store delay in the last batch (envelope creation → commit).
    lag_ms: AtomicI64,
}

impl Live {
    pub(super) fn batch(&self, delta: &Counters) {
        self.counters.lock().expect("metrics lock").add(delta);
        self.last_batch_ms
            .store(crate::model::now_ms(), Ordering::Relaxed);
        if delta.stored + delta.duplicates > 0 {
            self.lag_ms.store(delta.max_lag_ms, Ordering::Relaxed);
        }
    }

    pub(super) fn connected(&self, up: bool) {
        self.broker_connected.store(up, Ordering::Relaxed);
    }

    pub(super) fn counters(&self) -> Counters {
        self.counters.lock().expect("metrics lock").clone()
    }
}

/// Answers scrapes until `done` is notified.
pub(super) async fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    custody: Owner<Custody>,
    done: Arc<Notify>,
) {
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = done.notified() => return,
        };
        // One at a time, each bounded in time.
        let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(sock, &live, &custody)).await;
    }
}

async fn answer(mut sock: TcpStream, live: &Live, custody: &Owner<Custody>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, sock.read(&mut buf))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut sock, 431, "text/plain", "request head too large\n").await;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/metrics") => {
            let store = store_view(custody).await;
            let text = render(&live.counters(), live, store.as_ref().ok());
            respond(
                &mut sock,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &text,
            )
            .await
        }
        ("GET", "/health") => {
            let store = store_view(custody).await;
            let connected = live.broker_connected.load(Ordering::Relaxed);
            let ok = connected && store.is_ok();
            let body = serde_json::json!({
                "status": if ok { "ok" } else { "degraded" },
                "broker_connected": connected,
                "store": match &store { Ok(_) => "ok".to_string(), Err(e) => e.clone() },
                "last_batch_at_ms": live.last_batch_ms.load(Ordering::Relaxed),
            });
            let code = if ok { 200 } else { 503 };
            respond(&mut sock, code, "application/json", &format!("{body}\n")).await
        }
        ("GET", _) => {
            respond(
                &mut sock,
                404,
                "text/plain",
                "not found: /metrics or /health\n",
            )
            .await
        }
        _ => respond(&mut sock, 405, "text/plain", "only GET\n").await,
    }
}

type StoreView = (ReceiverStats, Vec<ApplianceStatus>);

/// The store's counts and per-appliance status, or why the store did not answer.
async fn store_view(custody: &Owner<Custody>) -> Result<StoreView, String> {
    let call = custody.call(|c| Ok((c.db.stats()?, c.db.appliance_status()?)));
    match tokio::time::timeout(READ_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the store did not answer within 5 s".into()),
    }
}

async fn respond(sock: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

/// One metric family: HELP, TYPE and its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(v: impl Into<f64>) -> Vec<(String, f64)> {
    vec![(String::new(), v.into())]
}

/// Samples labelled `label="key"` (keys are fixed codes or validated ids: nothing to escape).
fn labelled<'a, K: std::fmt::Display + 'a>(
    label: &str,
    items: impl IntoIterator<Item = (K, &'a u64)>,
) -> Vec<(String, f64)> {
    items
        .into_iter()
        .map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), *v as f64))
        .collect()
}

/// The Prometheus text: this process's counters, then the store's view (when it answered).
pub(super) fn render(c: &Counters, live: &Live, store: Option<&StoreView>) -> String {
    let mut o = String::new();
    let outcomes = [
        ("stored", c.stored),
        ("duplicate", c.duplicates),
        ("conflict", c.conflicts),
        ("rejected", c.rejects),
    ];
    family(
        &mut o,
        "hema3n_receiver_envelopes_total",
        "counter",
        "Envelopes this receiver processed, by outcome.",
        &labelled("outcome", outcomes.iter().map(|(k, v)| (k, v))),
    );
    family(
        &mut o,
        "hema3n_receiver_rejects_total",
        "counter",
        "Envelopes this receiver refused, by reject code (docs/bundle-format.md).",
        &labelled("code", &c.by_code),
    );
    let audits = [("verified", c.audit_verified), ("failed", c.audit_failed)];
    family(
        &mut o,
        "hema3n_receiver_audit_trails_total",
        "counter",
        "Case bundles this receiver stored, by whether their audit trail verified (against the signed checkpoint and the checkpoints seen before; failed ones raised audit_trail alarms).",
        &labelled("result", audits.iter().map(|(k, v)| (k, v))),
    );
    family(
        &mut o,
        "hema3n_receiver_broker_connected",
        "gauge",
        "1 while connected to the cloud broker.",
        &one(u8::from(live.broker_connected.load(Ordering::Relaxed))),
    );
    family(
        &mut o,
        "hema3n_receiver_lag_seconds",
        "gauge",
        "Largest delay from envelope creation on the appliance to commit here, in the last batch.",
        &one(live.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0),
    );
    family(
        &mut o,
        "hema3n_receiver_store_up",
        "gauge",
        "1 when the store answered this scrape.",
        &one(u8::from(store.is_some())),
    );
    let Some((stats, apps)) = store else {
        return o;
    };
    family(
        &mut o,
        "hema3n_store_bundles",
        "gauge",
        "Bundles stored (all receivers sharing the store).",
        &one(stats.bundles as f64),
    );
    family(
        &mut o,
        "hema3n_store_resends",
        "gauge",
        "Resends of stored bundles (duplicates).",
        &one(stats.resends as f64),
    );
    family(
        &mut o,
        "hema3n_store_alarms",
        "gauge",
        "Alarms raised: bundle conflicts and corrupt attachments.",
        &one(stats.conflicts as f64),
    );
    family(
        &mut o,
        "hema3n_store_audit_alarms",
        "gauge",
        "Audit-trail alarms raised (a case bundle's entries failed verification, or its checkpoint was out of order with one seen before).",
        &one(stats.audit_alarms as f64),
    );
    family(
        &mut o,
        "hema3n_store_rejects",
        "gauge",
        "Rejected envelopes recorded in the store, by code.",
        // Sorted by code already.
        &labelled("code", stats.rejects.iter().map(|(k, v)| (k, v))),
    );
    // Appliance ids are `[A-Za-z0-9._-]{1,64}`: nothing to escape in a label value.
    let per = |f: &dyn Fn(&ApplianceStatus) -> Option<f64>| -> Vec<(String, f64)> {
        apps.iter()
            .filter_map(|a| f(a).map(|v| (format!("{{appliance=\"{}\"}}", a.appliance_id), v)))
            .collect()
    };
    family(
        &mut o,
        "hema3n_appliance_last_seen_timestamp_seconds",
        "gauge",
        "When an envelope of the appliance last arrived.",
        &per(&|a| Some(a.last_seen_ms as f64 / 1000.0)),
    );
    family(
        &mut o,
        "hema3n_appliance_last_sequence",
        "gauge",
        "Highest sequence number stored for the appliance.",
        &per(&|a| Some(a.last_seq as f64)),
    );
    family(
        &mut o,
        "hema3n_appliance_sequence_gaps",
        "gauge",
        "Sequence numbers below the highest that have not been stored (lost, rejected or on their way).",
        &per(&|a| Some(a.gaps() as f64)),
    );
    family(
        &mut o,
        "hema3n_appliance_outbox_queued",
        "gauge",
        "Envelopes queued on the appliance (its latest telemetry).",
        &per(&|a| a.outbox_queued.map(|v| v as f64)),
    );
    family(
        &mut o,
        "hema3n_appliance_open_alarms",
        "gauge",
        "Open alarms on the appliance (its latest telemetry).",
        &per(&|a| a.open_alarms.map(|v| v as f64)),
    );
    family(
        &mut o,
        "hema3n_appliance_oldest_unreceipted_timestamp_seconds",
        "gauge",
        "When the appliance's oldest envelope still waiting for a receipt was queued (its latest telemetry).",
        &per(&|a| a.oldest_unreceipted_ms.map(|v| v as f64 / 1000.0)),
    );
    o
}
