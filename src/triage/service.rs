//! Triage in the case flow: a model-owner thread (one ONNX Runtime session, blocking runs kept
//! off the async runtime) and a debounced re-triage loop fed with the ids of cases whose vitals
//! were just committed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::RULES_ONLY_DEFAULT_ESI;
use super::engine::{TriageInput, TriageOutcome, compute};
use super::features::TEXT_BUCKETS;
use super::installed::ModelStore;
use super::rules::Vitals;
use super::runtime::{LoadOptions, ModelRuntime, RuntimeInfo};
use crate::model::{Actor, CaseSnapshot, TriageRecord, now_ms};
use crate::storage::{Store, StoreError};

type Job = (TriageInput, oneshot::Sender<TriageOutcome>);

/// Handle to the model-owner thread.
#[derive(Clone)]
pub struct Triager {
    /// Inputs for the model thread, which holds the receiving end.
    jobs: mpsc::Sender<Job>,
}

/// What the model thread shows as its state (systemd STATUS, D-Bus, `/health`): follows a
/// model switched while the daemon runs.
#[derive(Debug, Clone, Default)]
pub struct ModelStatus(std::sync::Arc<std::sync::RwLock<String>>);

impl ModelStatus {
    pub fn new(s: String) -> Self {
        ModelStatus(std::sync::Arc::new(std::sync::RwLock::new(s)))
    }
    pub fn get(&self) -> String {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }
    fn set(&self, s: String) {
        if let Ok(mut g) = self.0.write() {
            *g = s;
        }
    }
}

/// The status text of a loaded model.
pub fn describe(info: &RuntimeInfo) -> String {
    format!(
        "model {} ({}, {})",
        info.model_id,
        info.variant,
        info.provider.as_str()
    )
}

/// A model switch the model thread made or refused (for the audit log).
#[derive(Debug)]
pub enum ModelChange {
    Loaded(RuntimeInfo),
    Refused { dir: PathBuf, error: String },
}

/// How the model thread follows `model install` / `model rollback`: before each triage it
/// compares the store's active directory with the one it last tried (one `readlink`), and loads
/// a changed one; if that fails it keeps the model it has.
pub struct Reload {
    pub store: ModelStore,
    /// Load options; `model_dir` is replaced by the active directory.
    pub options: LoadOptions,
    /// The directory loaded or last tried.
    pub tried: PathBuf,
    pub status: ModelStatus,
    pub changes: mpsc::UnboundedSender<ModelChange>,
}

impl Reload {
    fn check(&mut self, runtime: &mut Option<ModelRuntime>) {
        let active = self.store.active();
        if active == self.tried {
            return;
        }
        self.tried = active.clone();
        let mut o = self.options.clone();
        o.model_dir = active.clone();
        match ModelRuntime::load(&o) {
            Ok(rt) => {
                self.status.set(describe(&rt.info));
                let _ = self.changes.send(ModelChange::Loaded(rt.info.clone()));
                *runtime = Some(rt);
            }
            Err(e) => {
                let error = crate::report::chain(&e);
                tracing::error!(dir = %active.display(), %error, "the newly activated model cannot be loaded; keeping the loaded one");
                let _ = self
                    .changes
                    .send(ModelChange::Refused { dir: active, error });
            }
        }
    }
}

/// Starts the thread that owns the model session (`None` = rules-only), following model
/// switches when `reload` is given.
pub fn spawn_model_thread(
    mut runtime: Option<ModelRuntime>,
    mut reload: Option<Reload>,
    min_core: usize,
    capacity: usize,
) -> (Triager, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(capacity);
    let h = std::thread::Builder::new()
        .name("triage-model".into())
        .spawn(move || {
            let mut text = Box::new([0f32; TEXT_BUCKETS]);
            while let Some((input, reply)) = rx.blocking_recv() {
                if let Some(r) = reload.as_mut() {
                    r.check(&mut runtime);
                }
                let _ = reply.send(compute(&input, runtime.as_mut(), min_core, &mut text));
            }
        })
        .expect("spawn triage thread");
    (Triager { jobs: tx }, h)
}

impl Triager {
    /// Triage of one input; `None` when the model thread is gone (shutting down).
    pub async fn triage(&self, input: TriageInput) -> Option<TriageOutcome> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send((input, tx)).await.ok()?;
        rx.await.ok()
    }
}

/// Maps a case snapshot onto the triage input.
pub fn input_from(s: &CaseSnapshot) -> TriageInput {
    let mut v = Vitals::default();
    for (code, x) in &s.latest {
        v.set(code, *x);
    }
    TriageInput {
        vitals: v,
        age_years: s.age_years,
        sex: s.sex,
        on_oxygen: s.on_oxygen,
        spo2_scale2: s.spo2_scale2,
        chief_complaint: s.chief_complaint.clone(),
    }
}

/// The record stored for an outcome.
pub fn record_from(o: &TriageOutcome) -> TriageRecord {
    TriageRecord {
        final_esi: o.final_esi,
        rules_esi: o.rules.ceiling,
        model_esi: o.model.as_ref().map(|m| m.esi),
        news2: o.rules.news2.as_ref().map(|n| n.total),
        specialty: o.model.as_ref().map(|m| m.specialty.to_string()),
        confidence: o.model.as_ref().map(|m| m.confidence),
        model_id: o.model_id.as_deref().map(String::from),
        model_hash: o.model_sha256.as_deref().map(String::from),
        decider: o.decider,
        abstained: o.abstained.clone(),
        reasons: model_reason(o).into_iter().chain(rule_reasons(o)).collect(),
    }
}

/// When the model set a more acute level than the rules required, the reason for that level.
fn model_reason(o: &TriageOutcome) -> Option<String> {
    let m = o.model.as_ref()?;
    (o.final_esi < o.rules.ceiling).then(|| {
        format!(
            "ESI {}: the model proposes a more acute level than the rules' ESI {} ({}, confidence {:.0} %)",
            o.final_esi,
            o.rules.ceiling,
            m.specialty,
            m.confidence * 100.0
        )
    })
}

/// Each rule's reason with its own level.
fn rule_reasons(o: &TriageOutcome) -> Vec<String> {
    if o.rules.reasons.is_empty() {
        vec![format!(
            "no danger findings in the vital signs; ESI {RULES_ONLY_DEFAULT_ESI} unless the model proposes otherwise"
        )]
    } else {
        o.rules
            .reasons
            .iter()
            .map(|r| format!("ESI ≤ {}: {}", r.esi, o.rules.sentence(r)))
            .collect()
    }
}

/// The `retriage` task: re-triages cases after their vitals change, at most once per
/// `debounce` per case. A failed triage of one case is logged and skipped.
pub struct Retriage {
    /// Cases whose vitals changed (ingest committer, manual vitals).
    pub cases: mpsc::UnboundedReceiver<String>,
    pub store: Store,
    pub triager: Triager,
    pub debounce: Duration,
    /// How long an improvement must hold before a less acute level is stored and shown.
    pub hold: Duration,
    pub bus: crate::events::Bus,
    /// Notified after a result is stored: the sealer, which may owe a pre-alert (no polling).
    pub stored: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl Retriage {
    /// Runs until shutdown, the senders are gone or the model thread stops.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let Retriage {
            cases,
            store,
            triager,
            debounce,
            hold,
            bus,
            stored,
        } = self;
        let out = Outputs { bus, stored };
        retriage_loop(cases, store, triager, (debounce, hold), out, shutdown).await;
    }
}

/// How acute a triage result is, for comparing two: ESI (lower is more acute), then NEWS2.
pub type Acuity = (u8, Option<u8>);

fn less_acute(new: Acuity, stored: Acuity) -> bool {
    new.0 > stored.0 || (new.0 == stored.0 && new.1.unwrap_or(0) < stored.1.unwrap_or(0))
}

/// Whether a new result may replace the stored one: a more acute one (lower ESI, or a higher
/// NEWS2 at the same ESI) at once; a less acute one only once the improvement has held for
/// `hold` (`improving` is when it started). Holding the more acute result never under-triages;
/// it stops the shown level flickering (1 ↔ 2) while vitals hover at a band edge.
pub fn may_store(
    stored: Option<Acuity>,
    new: Acuity,
    improving: &mut Option<Instant>,
    now: Instant,
    hold: Duration,
) -> bool {
    match stored {
        Some(s) if less_acute(new, s) => {
            let since = *improving.get_or_insert(now);
            if now.duration_since(since) >= hold {
                *improving = None;
                true
            } else {
                false
            }
        }
        _ => {
            *improving = None;
            true
        }
    }
}

/// Where a stored result is announced.
struct Outputs {
    bus: crate::events::Bus,
    stored: Option<std::sync::Arc<tokio::sync::Notify>>,
}

async fn retriage_loop(
    mut cases: mpsc::UnboundedReceiver<String>,
    store: Store,
    triager: Triager,
    (debounce, hold): (Duration, Duration),
    out: Outputs,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    // Per case: the stored acuity and since when a less acute result has been computed.
    let mut last: HashMap<String, (Acuity, Option<Instant>)> = HashMap::new();
    loop {
        let next = due.values().min().copied();
        tokio::select! {
            c = cases.recv() => match c {
                Some(c) => {
                    // New vitals are triaged within the debounce, also when a hold re-check
                    // is due later (an escalation is never held).
                    let at = Instant::now() + debounce;
                    due.entry(c).and_modify(|t| *t = (*t).min(at)).or_insert(at);
                }
                None => return,
            },
            _ = async { tokio::time::sleep_until(next.unwrap_or_else(Instant::now)).await }, if next.is_some() => {
                let now = Instant::now();
                let ready: Vec<String> = due.iter().filter(|(_, t)| **t <= now).map(|(c, _)| c.clone()).collect();
                for case in ready {
                    due.remove(&case);
                    let entry = last.get(&case).copied();
                    let mut improving = entry.and_then(|(_, i)| i);
                    let stored = entry.map(|(l, _)| l);
                    let gate = |a: Acuity| may_store(stored, a, &mut improving, now, hold);
                    match retriage(&store, &triager, &case, &out, gate).await {
                        Ok(Some((level, true))) => {
                            if stored.map(|s| s.0) != Some(level.0) {
                                tracing::info!(case = %case, "triage level changed");
                            } else {
                                tracing::debug!(case = %case, "triage updated");
                            }
                            last.insert(case, (level, None));
                        }
                        Ok(Some((_, false))) => {
                            // Held: look again when the hold ends, even without new vitals.
                            let since = improving.unwrap_or(now);
                            due.insert(case.clone(), since + hold);
                            last.insert(case, (stored.unwrap_or((5, None)), improving));
                        }
                        Ok(None) => return,
                        Err(StoreError::Closed) => return,
                        Err(e) => tracing::warn!(case = %case, error = %e, "triage skipped"),
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Triages a case; stores and announces the result when `gate(level)` allows. `None` when the
/// model thread is gone; else the level and whether it was stored.
async fn retriage(
    store: &Store,
    triager: &Triager,
    case: &str,
    out: &Outputs,
    mut gate: impl FnMut(Acuity) -> bool,
) -> Result<Option<(Acuity, bool)>, StoreError> {
    let c = case.to_string();
    let snap = store
        .call(move |db| db.case_snapshot(&Actor::system(), &c))
        .await?;
    let Some(outcome) = triager.triage(input_from(&snap)).await else {
        return Ok(None);
    };
    let acuity = (
        outcome.final_esi,
        outcome.rules.news2.as_ref().map(|n| n.total),
    );
    if !gate(acuity) {
        return Ok(Some((acuity, false)));
    }
    let rec = record_from(&outcome);
    let c = case.to_string();
    let stored = store
        .call(move |db| {
            let id = db.record_triage(&Actor::system(), &c, &rec)?;
            Ok(crate::model::StoredTriage {
                id,
                created_at_ms: now_ms(),
                record: rec,
            })
        })
        .await?;
    if let Some(w) = &out.stored {
        w.notify_one();
    }
    out.bus.send(crate::events::LiveEvent::Triage {
        case_id: case.to_string(),
        triage: std::sync::Arc::new(stored),
    });
    Ok(Some((acuity, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escalation_is_immediate_and_deescalation_waits_for_the_hold() {
        let hold = Duration::from_secs(120);
        let t0 = Instant::now();
        let mut imp = None;
        let (e2, e3) = ((2, Some(7)), (3, Some(5)));
        assert!(
            may_store(None, e3, &mut imp, t0, hold),
            "first result is stored"
        );
        assert!(
            may_store(Some(e3), e2, &mut imp, t0, hold),
            "more acute at once"
        );
        assert!(
            !may_store(Some(e2), e3, &mut imp, t0, hold),
            "less acute is held"
        );
        assert_eq!(imp, Some(t0));
        assert!(!may_store(
            Some(e2),
            e3,
            &mut imp,
            t0 + Duration::from_secs(119),
            hold
        ));
        assert!(
            may_store(Some(e2), e3, &mut imp, t0 + hold, hold),
            "after the hold"
        );
        assert_eq!(imp, None);
        // A relapse during the hold resets it.
        assert!(!may_store(Some(e2), e3, &mut imp, t0, hold));
        assert!(may_store(
            Some(e2),
            e2,
            &mut imp,
            t0 + Duration::from_secs(60),
            hold
        ));
        assert_eq!(imp, None);
        assert!(!may_store(
            Some(e2),
            e3,
            &mut imp,
            t0 + Duration::from_secs(61),
            hold
        ));
        assert!(!may_store(
            Some(e2),
            e3,
            &mut imp,
            t0 + Duration::from_secs(180),
            hold
        ));
        // At the same ESI a lower NEWS2 is an improvement too; a higher one is not.
        let mut imp = None;
        assert!(!may_store(
            Some((2, Some(7))),
            (2, Some(5)),
            &mut imp,
            t0,
            hold
        ));
        let mut imp = None;
        assert!(may_store(
            Some((2, Some(5))),
            (2, Some(7)),
            &mut imp,
            t0,
            hold
        ));
    }
}
