//! The sealer: finds cases that need a bundle or a pre-alert (a new link of the case's pre-alert
//! chain), builds the FHIR bundle ([`fhir`](super::fhir); case bundles with the NEMSIS and
//! handoff documents) and seals it on a blocking thread between the short storage transactions
//! that export the case and queue the envelope (`storage::sealing`); queues
//! telemetry; seals stored attachments part by part; crypto-erases receipted cases after the
//! retention period (once their attachments are receipted too) and drops abandoned uploads. It wakes when a case
//! closes, when triage or the disposition changes (a pre-alert may be due), on `sync now`, and
//! once a second.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::{ReceiverKeys, SyncError, SyncMetrics, fhir};
use crate::config::Config;
use crate::crypto::seal::{self, BundleKind, EnvelopeMeta};
use crate::crypto::sign::SigningKey;
use crate::model::{Actor, now_ms};
use crate::storage::{Export, Queued, Store, StoreError};

/// Builds and seals the FHIR bundle of `export` for `slot`.
fn seal_case(
    appliance_id: &str,
    keys: &ReceiverKeys,
    export: &crate::model::CaseExport,
    slot: &crate::storage::OutboxSlot,
    signer: &crate::crypto::sign::SigningKey,
    agency: &crate::config::NemsisConfig,
) -> Result<Vec<u8>, String> {
    let bid = slot.bundle_id.to_string();
    let bundle = match slot.kind {
        BundleKind::Prealert => {
            fhir::build(export, &bid, fhir::Profile::Prealert, slot.created_at_ms)
        }
        _ => {
            // The case bundle carries its NEMSIS document (or why it has none) and the
            // handoff document.
            let doc = super::nemsis::export(export, agency);
            if let Err(e) = &doc {
                tracing::warn!(case_id = %export.case_id, missing = ?e.missing, "no NEMSIS document in the case bundle: the record is incomplete");
            }
            let pdf = crate::handoff::pdf::document(export, None, slot.created_at_ms)
                .inspect_err(|e| {
                    tracing::error!(case_id = %export.case_id, error = %e, "handoff PDF not rendered; the bundle goes without it");
                })
                .ok();
            let extras = fhir::Extras {
                nemsis: Some(&doc),
                handoff_pdf: pdf.as_deref(),
                ..Default::default()
            };
            fhir::build_with(
                export,
                &bid,
                fhir::Profile::Case,
                slot.created_at_ms,
                &extras,
            )
        }
    };
    let plaintext = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
    seal::seal(
        &envelope_meta(appliance_id, slot),
        &plaintext,
        &keys.hpke,
        signer,
    )
    .map_err(|e| e.to_string())
}

/// The envelope header fields of an outbox slot.
pub fn envelope_meta(appliance_id: &str, slot: &crate::storage::OutboxSlot) -> EnvelopeMeta {
    EnvelopeMeta {
        kind: slot.kind,
        bundle_id: *slot.bundle_id.as_bytes(),
        seq: slot.seq,
        created_at_ms: slot.created_at_ms.max(0) as u64,
        appliance_id: appliance_id.to_string(),
    }
}

/// What a failed seal means for the pass: the store failing ends it (`Err`), a record erased or
/// gone since the work list was read is nothing to do (`None`), anything else concerns that
/// record alone, which is skipped until restart (`Some`).
fn skippable(e: StoreError) -> Result<Option<StoreError>, StoreError> {
    match e {
        StoreError::Erased { .. } | StoreError::NotFound { .. } => Ok(None),
        StoreError::Sqlite(_) | StoreError::Closed | StoreError::Io { .. } => Err(e),
        e => Ok(Some(e)),
    }
}

/// Exports, seals and queues one case bundle of `kind` (the three steps of
/// [`storage::sealing`](crate::storage)): building and sealing run on a blocking thread,
/// never under the storage thread's write lock. Returns the bundle id, or `None` when the case
/// kept changing while it was sealed (the next pass tries again).
async fn seal_one(
    store: &Store,
    ctx: &SealContext,
    case_id: &str,
    kind: BundleKind,
) -> Result<Option<String>, StoreError> {
    for _ in 0..SEAL_ATTEMPTS {
        let c = case_id.to_string();
        let mut x = match store
            .call(move |db| db.export_case_bundle(&c, kind))
            .await?
        {
            Export::Exists(b) => return Ok(Some(b)),
            Export::Ready(x) => x,
        };
        loop {
            let ctx2 = ctx.clone();
            let (back, env) = tokio::task::spawn_blocking(move || {
                let env = seal_case(
                    &ctx2.appliance_id,
                    &ctx2.keys,
                    &x.export,
                    &x.slot,
                    &ctx2.signer,
                    &ctx2.agency,
                );
                (x, env)
            })
            .await
            .map_err(|e| StoreError::Seal {
                kind: kind.as_str(),
                why: format!("the sealing thread failed: {e}"),
            })?;
            let env = env.map_err(|why| StoreError::Seal {
                kind: kind.as_str(),
                why,
            })?;
            let (q, back) = store
                .call(move |db| {
                    let q = db.queue_case_bundle(&Actor::system(), &back, &env)?;
                    Ok((q, back))
                })
                .await?;
            x = back;
            match q {
                Queued::Done(b) => return Ok(Some(b)),
                Queued::Changed => break,
                Queued::Reslot(s) => x.slot = s,
            }
        }
    }
    tracing::info!(
        case_id,
        kind = kind.as_str(),
        "case changed while its bundle was sealed; next pass"
    );
    Ok(None)
}

/// What sealing a case needs besides the case.
#[derive(Clone)]
struct SealContext {
    appliance_id: String,
    keys: ReceiverKeys,
    signer: Arc<SigningKey>,
    agency: crate::config::NemsisConfig,
}

/// Exports of one case per pass before it waits for the next (a case that changes faster
/// than it seals, e.g. an open case's pre-alert under streaming vitals).
const SEAL_ATTEMPTS: usize = 4;

/// Seals whatever needs sealing now (one pass). Returns how many envelopes were queued.
///
/// A case that cannot be sealed (a field fails authentication, a key version is missing) is
/// logged once (case id and error: never PHI), remembered in `failed` and skipped until restart:
/// one bad record must not stop every other case from leaving. Storage failures end the task.
pub async fn seal_pending(
    store: &Store,
    appliance_id: &str,
    keys: &ReceiverKeys,
    failed: &mut HashSet<(String, BundleKind)>,
    agency: &crate::config::NemsisConfig,
) -> Result<usize, StoreError> {
    let mut n = 0;
    let work = store
        .call(|db| db.seal_work(64))
        .await?
        .into_iter()
        .filter(|w| !failed.contains(&(w.case_id.clone(), w.kind)))
        .collect::<Vec<_>>();
    if work.is_empty() {
        return Ok(0);
    }
    let ctx = SealContext {
        appliance_id: appliance_id.to_string(),
        keys: keys.clone(),
        signer: store.call(|db| Ok(db.signer())).await?,
        agency: agency.clone(),
    };
    for w in work {
        match seal_one(store, &ctx, &w.case_id, w.kind).await {
            Ok(Some(bid)) => {
                n += 1;
                tracing::info!(bundle_id = %bid, case_id = %w.case_id, kind = w.kind.as_str(), "bundle sealed and queued");
            }
            Ok(None) => {}
            Err(e) => {
                let Some(e) = skippable(e)? else { continue };
                tracing::error!(case_id = %w.case_id, kind = w.kind.as_str(), error = %e, "cannot seal this case; skipped until restart");
                failed.insert((w.case_id, w.kind));
            }
        }
    }
    Ok(n)
}

/// Seals and queues the parts of attachments stored since the last pass (after the case
/// bundles and pre-alerts of this pass: they are sent first anyway, by priority). A failing
/// attachment is logged and skipped until restart, like a case.
async fn seal_attachments(
    store: &Store,
    appliance_id: &str,
    keys: &ReceiverKeys,
    failed: &mut HashSet<(String, BundleKind)>,
) -> Result<usize, StoreError> {
    let mut n = 0;
    let work = store.call(|db| db.attachment_seal_work(16)).await?;
    for (case, id) in work {
        if failed.contains(&(id.clone(), BundleKind::Attachment)) {
            continue;
        }
        let (aid, k) = (appliance_id.to_string(), keys.clone());
        let (c, a) = (case.clone(), id.clone());
        let r = store
            .call(move |db| {
                db.enqueue_attachment(&c, &a, |part, slot, signer| {
                    let plaintext = super::attachment_wire::encode(part);
                    seal::seal(&envelope_meta(&aid, slot), &plaintext, &k.hpke, signer)
                        .map_err(|e| e.to_string())
                })
            })
            .await;
        match r {
            Ok(ids) => {
                n += ids.len();
                tracing::info!(attachment = %id, case_id = %case, parts = ids.len(), "attachment sealed and queued");
            }
            Err(e) => {
                let Some(e) = skippable(e)? else { continue };
                tracing::error!(attachment = %id, case_id = %case, error = %e, "cannot seal this attachment; skipped until restart");
                failed.insert((id, BundleKind::Attachment));
            }
        }
    }
    Ok(n)
}

/// Queues one telemetry envelope: appliance health counters, no PHI.
pub async fn queue_telemetry(
    store: &Store,
    appliance_id: &str,
    keys: &ReceiverKeys,
    metrics: &SyncMetrics,
) -> Result<String, StoreError> {
    let stats = store.call(|db| db.outbox_stats()).await?;
    let alarms = store.call(|db| db.open_alarms()).await?.len();
    let now = now_ms();
    let mut body = serde_json::json!({
        "resourceType": "Parameters",
        "parameter": [
            { "name": "appliance_id", "valueString": appliance_id },
            { "name": "at", "valueInstant": crate::model::iso8601_ms(now) },
            { "name": "version", "valueString": env!("CARGO_PKG_VERSION") },
            { "name": "outbox_queued", "valueInteger": stats.queued },
            { "name": "outbox_sent", "valueInteger": stats.sent },
            { "name": "open_alarms", "valueInteger": alarms },
            { "name": "receipts", "valueInteger": metrics.receipts.load(Ordering::Relaxed) },
        ],
    });
    // How long the oldest envelope has waited for its receipt (the cloud's "oldest
    // unreceipted case"); absent when nothing waits.
    if let Some(oldest) = stats.oldest_pending_ms {
        let age_secs = ((now - oldest).max(0) / 1000).min(i64::from(i32::MAX));
        body["parameter"].as_array_mut().expect("array").push(
            serde_json::json!({ "name": "oldest_unreceipted_age_secs", "valueInteger": age_secs }),
        );
    }
    let plaintext = serde_json::to_vec(&body).expect("json");
    let (aid, k) = (appliance_id.to_string(), keys.clone());
    store
        .call(move |db| {
            db.enqueue_telemetry(|slot, signer| {
                seal::seal(&envelope_meta(&aid, slot), &plaintext, &k.hpke, signer)
                    .map_err(|e| e.to_string())
            })
        })
        .await
}

/// The `sync-sealer` task: seals on wake-ups and every second, queues telemetry, purges
/// receipted cases after retention. Wakes the forwarder when it queued something.
pub struct Sealer {
    pub cfg: Config,
    pub store: Store,
    pub keys: ReceiverKeys,
    pub metrics: Arc<SyncMetrics>,
    /// Notified when a case closes (API) or on `sync now` (D-Bus).
    pub wake_sealer: Arc<Notify>,
    /// Notified when rows were queued; the forwarder waits on it.
    pub wake_forwarder: Arc<Notify>,
}

impl Sealer {
    /// Runs until shutdown; a storage failure ends the task (the outbox is durable).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), SyncError> {
        let Sealer {
            cfg,
            store,
            keys,
            metrics,
            wake_sealer,
            wake_forwarder,
        } = self;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let telemetry_every = Duration::from_secs(cfg.sync.telemetry_interval_secs);
        let mut next_telemetry = Instant::now() + telemetry_every;
        let mut next_purge = Instant::now();
        let retention_ms = (cfg.sync.retention_hours * 3_600_000.0) as i64;
        let mut failed = HashSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake_sealer.notified() => {}
                _ = shutdown.changed() => return Ok(()),
            }
            let n = seal_pending(&store, &cfg.appliance_id, &keys, &mut failed, &cfg.nemsis)
                .await?
                + seal_attachments(&store, &cfg.appliance_id, &keys, &mut failed).await?;
            if n > 0 {
                metrics.sealed.fetch_add(n as u64, Ordering::Relaxed);
                wake_forwarder.notify_one();
            }
            if !telemetry_every.is_zero() && Instant::now() >= next_telemetry {
                next_telemetry = Instant::now() + telemetry_every;
                queue_telemetry(&store, &cfg.appliance_id, &keys, &metrics).await?;
                wake_forwarder.notify_one();
            }
            if Instant::now() >= next_purge {
                next_purge = Instant::now()
                    + Duration::from_secs(60.min(cfg.sync.retention_hours as u64 * 3600).max(1));
                let purged = store
                    .call(move |db| db.purge_receipted(retention_ms, now_ms()))
                    .await?;
                let abandon_ms = (cfg.attachments.abandon_after_hours * 3_600_000) as i64;
                let dropped = store
                    .call(move |db| db.drop_abandoned_uploads(abandon_ms, now_ms()))
                    .await?;
                if dropped > 0 {
                    tracing::info!(uploads = dropped, "unfinished attachment uploads dropped");
                }
                if purged > 0 {
                    metrics.purged.fetch_add(purged as u64, Ordering::Relaxed);
                    tracing::info!(
                        cases = purged,
                        "receipted cases crypto-erased after retention"
                    );
                }
            }
        }
    }
}
