//! The forwarder: the upload state machine of the outbox, one `async fn` per [`State`].
//!
//! ```text
//!   Offline ──connectivity may try──▶ Connecting ──SUBACK, backlog > window──▶ CatchUp
//!      ▲  ▲                              │    └──SUBACK, all in flight──▶ Live      │ ▲
//!      │  └────connectivity lost─────────┴───────────────────────────────────┤      │ │
//!      │                                                          receipts free room ┘ │
//!      └── Backoff ◀── connection lost (any connected state)      new rows beyond window┘
//! ```
//!
//! Storage is the source of truth ([`Outbox`]): a row is done only when a valid signed receipt
//! names its bundle id and envelope hash; a PUBACK only marks it `sent`. Unreceipted rows are
//! republished after `sync.receipt_timeout_secs` and on every new connection (the receiver is
//! idempotent). The connection is reached only through [`Transport`], so tests drive every
//! transition with paused time and no broker.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::link::{Link, LinkClient, LinkEvent, Transport};
use super::session::Session;
use super::{Connectivity, LinkState, SyncError, SyncMetrics};
use crate::backoff::Backoff;
use crate::crypto::seal::Receipt;
use crate::crypto::sign::PublicKey;
use crate::model::{Actor, AuditEvent, Outcome, now_ms};
use crate::storage::{OutboxItem, ReceiptOutcome, Store, StoreError};

/// A receipt that verified: bundle id, envelope SHA-256 it names, the signed receipt bytes.
pub type VerifiedReceipt = (String, [u8; 32], Vec<u8>);

/// The durable outbox as the forwarder uses it.
pub trait Outbox: Send + Sync {
    /// Up to `limit` rows to publish, in priority order (pre-alert, bundle, telemetry; then by
    /// sequence number), skipping `exclude` (in flight).
    fn queued(
        &self,
        limit: usize,
        exclude: HashSet<String>,
    ) -> impl Future<Output = Result<Vec<OutboxItem>, StoreError>> + Send;
    /// Records PUBACKs (state `sent`, audited).
    fn mark_sent(&self, ids: Vec<String>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Applies verified receipts in one transaction (state `receipted`, audited).
    fn apply_receipts(
        &self,
        receipts: Vec<VerifiedReceipt>,
    ) -> impl Future<Output = Result<Vec<ReceiptOutcome>, StoreError>> + Send;
    /// Audits events in one transaction.
    fn audit(&self, events: Vec<AuditEvent>)
    -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl Outbox for Store {
    async fn queued(
        &self,
        limit: usize,
        exclude: HashSet<String>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.call(move |db| db.outbox_queued(limit, &exclude)).await
    }
    async fn mark_sent(&self, ids: Vec<String>) -> Result<(), StoreError> {
        self.call(move |db| db.outbox_mark_sent(&ids)).await
    }
    async fn apply_receipts(
        &self,
        receipts: Vec<VerifiedReceipt>,
    ) -> Result<Vec<ReceiptOutcome>, StoreError> {
        self.call(move |db| db.outbox_apply_receipts(&receipts))
            .await
    }
    async fn audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.call(move |db| db.audit_many(&events).map(|_| ()))
            .await
    }
}

/// Timing and size of the forwarder (from `[sync]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Envelopes published and not yet receipted, at most.
    pub window: usize,
    /// A bundle unreceipted this long is republished.
    pub receipt_timeout: Duration,
    /// Offline without NetworkManager news: try again this often.
    pub retry_interval: Duration,
    /// Reconnect back-off after a lost connection.
    pub backoff: Backoff,
}

/// How often a connected forwarder records PUBACKs, sends pending acks, expires and refills.
const TICK: Duration = Duration::from_millis(100);
/// Link events handled as one batch at most (their receipts commit together).
const EVENT_BATCH: usize = 4096;

/// The forwarder task.
pub struct Forwarder<T: Transport, O: Outbox> {
    pub transport: T,
    pub outbox: O,
    pub appliance_id: String,
    /// The receiver's ES256 key receipts are signed with.
    pub receipt_key: PublicKey,
    pub settings: Settings,
    pub metrics: Arc<SyncMetrics>,
    /// Notified by the sealer (new rows) and by `sync now` (D-Bus, CLI).
    pub wake: Arc<Notify>,
    /// Fed by the NetworkManager follower; stays `Unknown` without it.
    pub connectivity: watch::Receiver<Connectivity>,
    pub shutdown: watch::Receiver<bool>,
}

/// One connection with its bookkeeping.
pub struct Conn<C: LinkClient> {
    link: Link<C>,
    session: Session<C::Ack>,
    tick: tokio::time::Interval,
}

/// Where the forwarder is.
pub enum State<C: LinkClient> {
    /// No connection: waiting until connectivity allows a try (at once when it already does,
    /// or without NetworkManager), re-checking on `sync now` and every `retry_interval`.
    Offline,
    /// Connection attempt made: waiting for CONNACK and the SUBACK of the receipts topic;
    /// nothing is published yet.
    Connecting(Conn<C>),
    /// Connected with more queued than the window holds: the window stays full and every
    /// receipt (or expiry) refills it.
    CatchUp(Conn<C>),
    /// Connected and everything queued is in flight: new rows go out as the sealer queues them.
    Live(Conn<C>),
    /// The connection was lost (reason): wait out the jittered back-off, then go offline.
    Backoff(String),
    /// Shutdown was asked for.
    Stopped,
}

/// What one round of a connected state ended with.
enum Step {
    /// Still connected.
    Continue,
    /// Connectivity is gone: go offline.
    Offline,
    /// The connection was lost (reason): back off.
    Lost(String),
    /// Shutdown.
    Stop,
}

impl Step {
    /// The state a connected state leaves to, or `None` to stay.
    fn leave<C: LinkClient>(self) -> Option<State<C>> {
        match self {
            Step::Continue => None,
            Step::Offline => Some(State::Offline),
            Step::Lost(why) => Some(State::Backoff(why)),
            Step::Stop => Some(State::Stopped),
        }
    }
}

impl<T: Transport, O: Outbox> Forwarder<T, O> {
    /// Runs the state machine until shutdown. Only storage failures end it with an error (the
    /// daemon then restarts; the outbox is durable).
    pub async fn run(mut self) -> Result<(), SyncError> {
        let mut state = State::Offline;
        loop {
            state = match state {
                State::Offline => self.offline().await,
                State::Connecting(c) => self.connecting(c).await?,
                State::CatchUp(c) => self.catch_up(c).await?,
                State::Live(c) => self.live(c).await?,
                State::Backoff(why) => self.backoff(why).await,
                State::Stopped => return Ok(()),
            };
        }
    }

    /// [`State::Offline`].
    async fn offline(&mut self) -> State<T::Client> {
        self.metrics.set_state(LinkState::Offline);
        loop {
            if *self.shutdown.borrow() {
                return State::Stopped;
            }
            if self.connectivity.borrow().may_try() {
                let link = self.transport.connect();
                return State::Connecting(Conn {
                    link,
                    session: Session::new(self.settings.window),
                    tick: tokio::time::interval(TICK),
                });
            }
            tokio::select! {
                _ = self.connectivity.changed() => {}
                _ = tokio::time::sleep(self.settings.retry_interval) => {}
                _ = self.wake.notified() => {}
                _ = self.shutdown.changed() => return State::Stopped,
            }
        }
    }

    /// [`State::Connecting`].
    async fn connecting(&mut self, mut c: Conn<T::Client>) -> Result<State<T::Client>, SyncError> {
        loop {
            if let Some(s) = self.step(&mut c).await?.leave() {
                return Ok(s);
            }
            if c.session.subscribed {
                return Ok(if c.session.backlog {
                    State::CatchUp(c)
                } else {
                    State::Live(c)
                });
            }
        }
    }

    /// [`State::CatchUp`].
    async fn catch_up(&mut self, mut c: Conn<T::Client>) -> Result<State<T::Client>, SyncError> {
        self.metrics.set_state(LinkState::CatchUp);
        loop {
            if let Some(s) = self.step(&mut c).await?.leave() {
                return Ok(s);
            }
            if !c.session.backlog {
                return Ok(State::Live(c));
            }
        }
    }

    /// [`State::Live`].
    async fn live(&mut self, mut c: Conn<T::Client>) -> Result<State<T::Client>, SyncError> {
        self.metrics.set_state(LinkState::Live);
        loop {
            if let Some(s) = self.step(&mut c).await?.leave() {
                return Ok(s);
            }
            if c.session.backlog {
                return Ok(State::CatchUp(c));
            }
        }
    }

    /// [`State::Backoff`].
    async fn backoff(&mut self, why: String) -> State<T::Client> {
        self.metrics.set_state(LinkState::Offline);
        let wait = self.settings.backoff.next_wait();
        tracing::warn!(reason = %why, retry_in_ms = wait.as_millis() as u64, "cloud broker connection lost");
        tokio::select! {
            _ = tokio::time::sleep(wait) => State::Offline,
            _ = self.shutdown.changed() => State::Stopped,
        }
    }

    /// One round of a connected state: waits for the next thing to happen and handles it.
    async fn step(&mut self, c: &mut Conn<T::Client>) -> Result<Step, SyncError> {
        tokio::select! {
            lost = &mut c.link.driver => Ok(Step::Lost(lost)),
            e = c.link.events.recv() => {
                let Some(first) = e else {
                    return Ok(Step::Lost("connection ended".into()));
                };
                // Handle everything already waiting as one batch: receipts commit together.
                let mut batch = vec![first];
                while batch.len() < EVENT_BATCH {
                    match c.link.events.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                }
                let mut refill = false;
                for e in batch {
                    match e {
                        LinkEvent::Connected { session_present } => {
                            self.settings.backoff.reset();
                            self.metrics.connects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(session_present, "connected to cloud broker");
                            if let Err(e) = c.link.client.try_subscribe_receipts() {
                                return Ok(Step::Lost(e.to_string()));
                            }
                        }
                        LinkEvent::Subscribed => {
                            c.session.subscribed = true;
                            refill = true;
                        }
                        LinkEvent::Assigned(pkid) => c.session.assigned(pkid),
                        LinkEvent::PubAck { pkid, ok } => match c.session.puback(pkid, ok) {
                            Some((_, true)) => {
                                self.metrics.pubacks.fetch_add(1, Ordering::Relaxed);
                            }
                            Some((bid, false)) => {
                                tracing::warn!(bundle_id = %bid, "cloud broker refused a bundle; it will be republished");
                            }
                            None => {}
                        },
                        LinkEvent::Receipt { payload, ack } => c.session.receipt(payload, ack),
                        LinkEvent::Lost(why) => return Ok(Step::Lost(why)),
                    }
                }
                if self.apply_receipts(c).await? {
                    refill = true;
                }
                if refill && c.session.subscribed {
                    self.fill(c).await?;
                }
                Ok(Step::Continue)
            }
            _ = c.tick.tick() => {
                c.session.flush_acks(&c.link.client);
                self.flush_sent(&mut c.session).await?;
                let expired = c.session.expire(Instant::now(), self.settings.receipt_timeout);
                if expired > 0 {
                    self.metrics.republished.fetch_add(expired as u64, Ordering::Relaxed);
                }
                if c.session.subscribed {
                    self.fill(c).await?;
                }
                Ok(Step::Continue)
            }
            _ = self.wake.notified() => {
                if c.session.subscribed {
                    self.fill(c).await?;
                }
                Ok(Step::Continue)
            }
            _ = self.connectivity.changed() => {
                if self.connectivity.borrow().may_try() {
                    return Ok(Step::Continue);
                }
                tracing::info!("connectivity lost (NetworkManager); sync paused");
                c.link.client.try_disconnect();
                Ok(Step::Offline)
            }
            _ = self.shutdown.changed() => {
                let _ = self.flush_sent(&mut c.session).await;
                c.link.client.try_disconnect();
                Ok(Step::Stop)
            }
        }
    }

    /// Records the PUBACKs seen since the last flush (`sent`, audited).
    async fn flush_sent(
        &self,
        s: &mut Session<<T::Client as LinkClient>::Ack>,
    ) -> Result<(), StoreError> {
        let ids = s.take_sent();
        if ids.is_empty() {
            return Ok(());
        }
        self.outbox.mark_sent(ids).await
    }

    /// Publishes queued rows up to the window, highest priority first, and notes whether more
    /// are waiting than the window holds.
    async fn fill(&self, c: &mut Conn<T::Client>) -> Result<(), SyncError> {
        let room = c.session.room();
        if room == 0 {
            c.session.backlog = true;
            return Ok(());
        }
        let exclude: HashSet<String> = c.session.in_flight_ids().cloned().collect();
        let items = self.outbox.queued(room, exclude).await?;
        let backlog = items.len() == room;
        for it in items {
            // Never await the client: the driver is polled by this same task. A full request
            // queue ends this round; the row is picked up again on the next fill.
            if c.link
                .client
                .try_publish(&it.bundle_id, it.envelope)
                .is_err()
            {
                break;
            }
            c.session.published(it.bundle_id, Instant::now());
            self.metrics.published.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics
            .in_flight
            .store(c.session.in_flight() as u64, Ordering::Relaxed);
        c.session.backlog = backlog;
        Ok(())
    }

    /// Verifies the collected receipts, commits the valid ones in one transaction, then acks
    /// every receipt message. Returns whether there were any (the window may have room now).
    async fn apply_receipts(&self, c: &mut Conn<T::Client>) -> Result<bool, SyncError> {
        let messages = c.session.take_receipts();
        if messages.is_empty() {
            return Ok(false);
        }
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        for (payload, _) in &messages {
            match Receipt::verify(payload, &self.receipt_key) {
                Ok(r) if r.appliance_id == self.appliance_id => {
                    let bid = uuid::Uuid::from_bytes(r.bundle_id).to_string();
                    valid.push((bid, r.envelope_sha256, payload.clone()));
                }
                Ok(_) => invalid.push("receipt for another appliance".to_string()),
                Err(e) => invalid.push(format!("{} ({})", e, e.code())),
            }
        }
        if !invalid.is_empty() {
            self.metrics
                .receipt_rejects
                .fetch_add(invalid.len() as u64, Ordering::Relaxed);
            for why in &invalid {
                tracing::warn!(reason = %why, "invalid receipt ignored");
            }
            let evs: Vec<AuditEvent> = invalid
                .into_iter()
                .map(|why| {
                    AuditEvent::new(
                        &Actor::system(),
                        "bundle.receipt_invalid",
                        "receipt/unknown",
                        Outcome::Failure,
                    )
                    .details(serde_json::json!({ "reason": why }))
                })
                .collect();
            self.outbox.audit(evs).await?;
        }
        let mut receipted = 0;
        if !valid.is_empty() {
            // Marks for PUBACKs we saw must land first so `sent` precedes `receipted` in the trail.
            self.flush_sent(&mut c.session).await?;
            let ids: Vec<String> = valid.iter().map(|v| v.0.clone()).collect();
            let outcomes = self.outbox.apply_receipts(valid).await?;
            for (bid, o) in ids.iter().zip(outcomes) {
                c.session.receipted(bid);
                match o {
                    ReceiptOutcome::Receipted => {
                        receipted += 1;
                        self.metrics.receipts.fetch_add(1, Ordering::Relaxed);
                        self.metrics
                            .last_receipt_ms
                            .store(now_ms(), Ordering::Relaxed);
                        tracing::debug!(bundle_id = %bid, "bundle receipted");
                    }
                    ReceiptOutcome::AlreadyReceipted => {}
                    other => {
                        self.metrics.receipt_rejects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(bundle_id = %bid, outcome = ?other, "receipt does not match our outbox");
                    }
                }
            }
        }
        // Acknowledge only after the commit above.
        c.session
            .committed(messages.into_iter().map(|(_, ack)| ack));
        c.session.flush_acks(&c.link.client);
        self.metrics
            .in_flight
            .store(c.session.in_flight() as u64, Ordering::Relaxed);
        tracing::trace!(receipted, "receipt batch applied");
        Ok(true)
    }
}
