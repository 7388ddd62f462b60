//! Unit tests of the forwarder state machine with paused time and no broker: a scripted
//! transport (CONNACK on connect, SUBACK on subscribe, packet id and PUBACK on publish) and an
//! in-memory outbox that orders rows by the store's own priority key. The real MQTT path and
//! the SQLCipher outbox are covered by `tests/sync_e2e.rs`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::forwarder::{Forwarder, Outbox, Settings, VerifiedReceipt};
use super::link::{Link, LinkClient, LinkEvent, QueueFull, Transport};
use super::{Connectivity, LinkState, SyncError, SyncMetrics};
use crate::backoff::Backoff;
use crate::crypto::seal::{BundleKind, Receipt, ReceiptStatus};
use crate::crypto::sign::SigningKey;
use crate::model::AuditEvent;
use crate::storage::{OutboxItem, ReceiptOutcome, StoreError, outbox_priority};

const APPLIANCE: &str = "amb-1";
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);

// ---- the scripted network ------------------------------------------------------------------

/// The current connection's event sender and the switch that ends it.
type Current = Option<(
    mpsc::UnboundedSender<LinkEvent<u32>>,
    oneshot::Sender<String>,
)>;

/// What the transport saw, shared with the test.
#[derive(Default)]
struct Net {
    connects: AtomicUsize,
    disconnects: AtomicUsize,
    acks: AtomicUsize,
    /// The current connection: its event sender and the switch that ends it.
    current: Mutex<Current>,
    /// Every publish, in order: (connection number, bundle id).
    published: Mutex<Vec<(usize, String)>>,
}

impl Net {
    fn published(&self) -> Vec<String> {
        let p = self.published.lock().unwrap();
        p.iter().map(|(_, b)| b.clone()).collect()
    }
    fn send(&self, e: LinkEvent<u32>) {
        let cur = self.current.lock().unwrap();
        cur.as_ref().expect("connected").0.send(e).unwrap();
    }
    fn drop_connection(&self, why: &str) {
        let (_, kill) = self.current.lock().unwrap().take().expect("connected");
        let _ = kill.send(why.to_string());
    }
}

struct ScriptedTransport(Arc<Net>);

struct ScriptedClient {
    net: Arc<Net>,
    conn: usize,
    events: mpsc::UnboundedSender<LinkEvent<u32>>,
    next_pkid: AtomicU16,
}

impl Transport for ScriptedTransport {
    type Client = ScriptedClient;
    fn connect(&mut self) -> Link<ScriptedClient> {
        let conn = self.0.connects.fetch_add(1, Ordering::SeqCst) + 1;
        let (tx, events) = mpsc::unbounded_channel();
        let (kill_tx, kill_rx) = oneshot::channel::<String>();
        tx.send(LinkEvent::Connected {
            session_present: conn > 1,
        })
        .unwrap();
        *self.0.current.lock().unwrap() = Some((tx.clone(), kill_tx));
        Link {
            client: ScriptedClient {
                net: self.0.clone(),
                conn,
                events: tx,
                next_pkid: AtomicU16::new(1),
            },
            driver: Box::pin(async move { kill_rx.await.unwrap_or_else(|_| "dropped".into()) }),
            events,
        }
    }
}

impl LinkClient for ScriptedClient {
    type Ack = u32;
    fn try_subscribe_receipts(&self) -> Result<(), QueueFull> {
        self.events
            .send(LinkEvent::Subscribed)
            .map_err(|_| QueueFull)
    }
    fn try_publish(&self, bundle_id: &str, _envelope: Vec<u8>) -> Result<(), QueueFull> {
        let pkid = self.next_pkid.fetch_add(1, Ordering::SeqCst);
        self.net
            .published
            .lock()
            .unwrap()
            .push((self.conn, bundle_id.to_string()));
        let _ = self.events.send(LinkEvent::Assigned(pkid));
        let _ = self.events.send(LinkEvent::PubAck { pkid, ok: true });
        Ok(())
    }
    fn try_ack(&self, _ack: &u32) -> Result<(), QueueFull> {
        self.net.acks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn try_disconnect(&self) {
        self.net.disconnects.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- the in-memory outbox -------------------------------------------------------------------

#[derive(Default)]
struct MemOutbox {
    rows: Mutex<Vec<(OutboxItem, &'static str)>>,
    audited: Mutex<Vec<AuditEvent>>,
}

impl MemOutbox {
    fn add(&self, kind: BundleKind) -> OutboxItem {
        let mut rows = self.rows.lock().unwrap();
        let envelope = format!("envelope {}", rows.len()).into_bytes();
        let item = OutboxItem {
            bundle_id: uuid::Uuid::now_v7().to_string(),
            seq: rows.len() as u64 + 1,
            kind,
            envelope_sha256: crate::crypto::sha256(&envelope),
            envelope,
            attempts: 0,
        };
        rows.push((item.clone(), "queued"));
        item
    }
    fn in_state(&self, state: &str) -> usize {
        let rows = self.rows.lock().unwrap();
        rows.iter().filter(|(_, s)| *s == state).count()
    }
}

impl Outbox for Arc<MemOutbox> {
    async fn queued(
        &self,
        limit: usize,
        exclude: HashSet<String>,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = self.rows.lock().unwrap();
        let mut v: Vec<&OutboxItem> = rows
            .iter()
            .filter(|(i, s)| (*s == "queued" || *s == "sent") && !exclude.contains(&i.bundle_id))
            .map(|(i, _)| i)
            .collect();
        v.sort_by_key(|i| (outbox_priority(i.kind), i.seq));
        Ok(v.into_iter().take(limit).cloned().collect())
    }
    async fn mark_sent(&self, ids: Vec<String>) -> Result<(), StoreError> {
        let mut rows = self.rows.lock().unwrap();
        for (i, s) in rows.iter_mut() {
            if *s == "queued" && ids.contains(&i.bundle_id) {
                *s = "sent";
            }
        }
        Ok(())
    }
    async fn apply_receipts(
        &self,
        receipts: Vec<VerifiedReceipt>,
    ) -> Result<Vec<ReceiptOutcome>, StoreError> {
        let mut rows = self.rows.lock().unwrap();
        Ok(receipts
            .iter()
            .map(
                |(bid, sha, _)| match rows.iter_mut().find(|(i, _)| &i.bundle_id == bid) {
                    None => ReceiptOutcome::UnknownBundle,
                    Some((_, s)) if *s == "receipted" => ReceiptOutcome::AlreadyReceipted,
                    Some((i, _)) if &i.envelope_sha256 != sha => ReceiptOutcome::HashMismatch,
                    Some((_, s)) => {
                        *s = "receipted";
                        ReceiptOutcome::Receipted
                    }
                },
            )
            .collect())
    }
    async fn audit(&self, events: Vec<AuditEvent>) -> Result<(), StoreError> {
        self.audited.lock().unwrap().extend(events);
        Ok(())
    }
}

// ---- the harness ----------------------------------------------------------------------------

struct Harness {
    net: Arc<Net>,
    outbox: Arc<MemOutbox>,
    metrics: Arc<SyncMetrics>,
    receiver: Arc<SigningKey>,
    connectivity: watch::Sender<Connectivity>,
    wake: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), SyncError>>,
    receipts: u32,
}

fn receiver_key() -> SigningKey {
    SigningKey::from_pkcs8("receiver", &SigningKey::generate_pkcs8().unwrap()).unwrap()
}

impl Harness {
    fn start(window: usize, rows: &[BundleKind], connectivity: Connectivity) -> Harness {
        let net = Arc::new(Net::default());
        let outbox = Arc::new(MemOutbox::default());
        for k in rows {
            outbox.add(*k);
        }
        let receiver = Arc::new(receiver_key());
        let metrics = Arc::new(SyncMetrics::default());
        let (conn_tx, conn_rx) = watch::channel(connectivity);
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let fw = Forwarder {
            transport: ScriptedTransport(net.clone()),
            outbox: outbox.clone(),
            appliance_id: APPLIANCE.into(),
            receipt_key: receiver.public(),
            settings: Settings {
                window,
                receipt_timeout: RECEIPT_TIMEOUT,
                retry_interval: Duration::from_secs(30),
                backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(10)),
            },
            metrics: metrics.clone(),
            wake: wake.clone(),
            connectivity: conn_rx,
            shutdown: stop_rx,
        };
        Harness {
            net,
            outbox,
            metrics,
            receiver,
            connectivity: conn_tx,
            wake,
            shutdown: stop_tx,
            task: tokio::spawn(fw.run()),
            receipts: 0,
        }
    }

    /// Waits (in virtual time, at most 2 s of it) until `cond` holds.
    async fn until(&self, what: &str, cond: impl Fn(&Harness) -> bool) {
        for _ in 0..2000 {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "{what}: not reached (state {:?}, published {:?})",
            self.metrics.state(),
            self.net.published().len()
        );
    }

    fn state(&self) -> LinkState {
        self.metrics.state()
    }

    fn item(&self, bundle_id: &str) -> OutboxItem {
        let rows = self.outbox.rows.lock().unwrap();
        rows.iter()
            .find(|(i, _)| i.bundle_id == bundle_id)
            .map(|(i, _)| i.clone())
            .expect("row")
    }

    /// The receiver answers for `bundle_id` with a receipt signed by `key`.
    fn receipt_signed(&mut self, bundle_id: &str, key: &SigningKey) {
        let it = self.item(bundle_id);
        let bytes = Receipt {
            status: ReceiptStatus::Stored,
            bundle_id: *uuid::Uuid::parse_str(bundle_id).unwrap().as_bytes(),
            envelope_sha256: it.envelope_sha256,
            seq: it.seq,
            receipted_at_ms: 1,
            signer_key_id: [0; 8],
            appliance_id: APPLIANCE.into(),
        }
        .sign(key)
        .unwrap();
        self.receipts += 1;
        self.net.send(LinkEvent::Receipt {
            payload: bytes,
            ack: self.receipts,
        });
    }

    /// The receiver answers for `bundle_id` with a genuine receipt.
    fn receipt(&mut self, bundle_id: &str) {
        let receiver = self.receiver.clone();
        self.receipt_signed(bundle_id, &receiver);
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

// ---- the transitions ------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn offline_until_connectivity_returns_then_catch_up_fills_the_window() {
    let h = Harness::start(4, &[BundleKind::Bundle; 10], Connectivity::None);
    // Two minutes without connectivity: retries and wake-ups do not connect.
    h.wake.notify_one();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(h.net.connects.load(Ordering::SeqCst), 0);
    assert_eq!(h.state(), LinkState::Offline);
    h.connectivity.send(Connectivity::Full).unwrap();
    h.until("catch-up", |h| h.state() == LinkState::CatchUp)
        .await;
    assert_eq!(h.net.connects.load(Ordering::SeqCst), 1);
    assert_eq!(h.net.published().len(), 4, "exactly the window");
    h.until("PUBACKs recorded as sent", |h| {
        h.outbox.in_state("sent") == 4
    })
    .await;
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 4);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_window_publishes_nothing_more_until_receipts_arrive() {
    let h = Harness::start(4, &[BundleKind::Bundle; 10], Connectivity::Full);
    h.until("window full", |h| h.net.published().len() == 4)
        .await;
    // Well below the receipt timeout: many ticks, wake-ups, no new publish.
    for _ in 0..10 {
        h.wake.notify_one();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(h.net.published().len(), 4);
    assert_eq!(h.state(), LinkState::CatchUp);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn receipts_refill_the_window_and_a_drained_backlog_goes_live() {
    let mut h = Harness::start(4, &[BundleKind::Bundle; 10], Connectivity::Full);
    h.until("window full", |h| h.net.published().len() == 4)
        .await;
    // Receipting each window's four frees room for the next rows: 4 more, then the last 2.
    for (from, total) in [(0, 8), (4, 10)] {
        for b in h.net.published()[from..from + 4].to_vec() {
            h.receipt(&b);
        }
        h.until("refilled", |h| h.net.published().len() == total)
            .await;
    }
    // Once every receipt of the round is applied, 2 are in flight with room for 4.
    h.until("live", |h| h.state() == LinkState::Live).await;
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 2);
    for b in h.net.published()[8..].to_vec() {
        h.receipt(&b);
    }
    h.until("all receipted", |h| h.outbox.in_state("receipted") == 10)
        .await;
    h.until("acks sent", |h| h.net.acks.load(Ordering::SeqCst) == 10)
        .await;
    assert_eq!(h.metrics.in_flight.load(Ordering::Relaxed), 0);
    assert_eq!(h.metrics.receipts.load(Ordering::Relaxed), 10);
    let published = h.net.published();
    assert_eq!(
        published.iter().collect::<HashSet<_>>().len(),
        10,
        "nothing published twice"
    );
    // A new row while live goes out on the sealer's wake-up.
    let new = h.outbox.add(BundleKind::Prealert);
    h.wake.notify_one();
    h.until("new row published", |h| {
        h.net.published().last() == Some(&new.bundle_id)
    })
    .await;
    assert_eq!(h.state(), LinkState::Live);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn losing_connectivity_goes_offline_and_its_return_republishes() {
    let h = Harness::start(4, &[BundleKind::Bundle; 2], Connectivity::Full);
    h.until("live", |h| h.state() == LinkState::Live).await;
    assert_eq!(h.net.published().len(), 2);
    h.connectivity.send(Connectivity::None).unwrap();
    h.until("offline", |h| h.state() == LinkState::Offline)
        .await;
    assert_eq!(h.net.disconnects.load(Ordering::SeqCst), 1);
    h.outbox.add(BundleKind::Bundle);
    h.wake.notify_one();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        h.net.connects.load(Ordering::SeqCst),
        1,
        "no try while offline"
    );
    h.connectivity.send(Connectivity::Full).unwrap();
    h.until("second connection", |h| {
        h.net.connects.load(Ordering::SeqCst) == 2 && h.net.published().len() == 5
    })
    .await;
    let p = h.net.published();
    assert_eq!(
        p[2..].iter().filter(|b| p[..2].contains(b)).count(),
        2,
        "unreceipted bundles are republished on the new connection"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unreceipted_bundles_are_republished_after_the_receipt_timeout() {
    let h = Harness::start(4, &[BundleKind::Bundle; 2], Connectivity::Full);
    h.until("published", |h| h.net.published().len() == 2).await;
    tokio::time::sleep(RECEIPT_TIMEOUT - Duration::from_secs(1)).await;
    assert_eq!(h.net.published().len(), 2, "not before the timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.until("republished", |h| h.net.published().len() == 4)
        .await;
    let p = h.net.published();
    assert_eq!(
        p[0..2].iter().collect::<HashSet<_>>(),
        p[2..4].iter().collect()
    );
    assert_eq!(h.metrics.republished.load(Ordering::Relaxed), 2);
    assert_eq!(h.net.connects.load(Ordering::SeqCst), 1, "same connection");
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pre_alerts_go_before_bundles_before_telemetry() {
    use BundleKind::*;
    let mut h = Harness::start(
        1,
        &[Telemetry, Bundle, Telemetry, Prealert, Bundle],
        Connectivity::Full,
    );
    let seq_of = |h: &Harness, b: &str| h.item(b).seq;
    let mut order = Vec::new();
    for n in 1..=5 {
        h.until("next publish", |h| h.net.published().len() == n)
            .await;
        let b = h.net.published()[n - 1].clone();
        order.push((h.item(&b).kind, seq_of(&h, &b)));
        h.receipt(&b);
    }
    assert_eq!(
        order,
        [
            (Prealert, 4),
            (Bundle, 2),
            (Bundle, 5),
            (Telemetry, 1),
            (Telemetry, 3)
        ]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_backs_off_then_reconnects_and_republishes() {
    let h = Harness::start(4, &[BundleKind::Bundle; 3], Connectivity::Full);
    h.until("published", |h| h.net.published().len() == 3).await;
    h.net.drop_connection("broker went away");
    h.until("offline", |h| h.state() == LinkState::Offline)
        .await;
    assert_eq!(h.net.connects.load(Ordering::SeqCst), 1);
    // The back-off is at least its 1 s minimum.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(h.net.connects.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.until("reconnected and republished", |h| {
        h.net.connects.load(Ordering::SeqCst) == 2 && h.net.published().len() == 6
    })
    .await;
    assert_eq!(h.metrics.connects.load(Ordering::Relaxed), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn invalid_receipts_are_audited_and_acked_but_custody_stays() {
    let mut h = Harness::start(4, &[BundleKind::Bundle], Connectivity::Full);
    h.until("published", |h| h.net.published().len() == 1).await;
    let b = h.net.published()[0].clone();
    let forger = receiver_key();
    h.receipt_signed(&b, &forger);
    h.until("rejected", |h| {
        h.metrics.receipt_rejects.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(h.outbox.in_state("receipted"), 0);
    assert_eq!(h.outbox.audited.lock().unwrap().len(), 1);
    assert_eq!(
        h.outbox.audited.lock().unwrap()[0].action,
        "bundle.receipt_invalid"
    );
    h.until("acked", |h| h.net.acks.load(Ordering::SeqCst) == 1)
        .await;
    // The genuine receipt still ends custody.
    h.receipt(&b);
    h.until("receipted", |h| h.outbox.in_state("receipted") == 1)
        .await;
    h.stop().await;
}
