//! The cloud receiver (`hema3n-receiver`): takes sealed bundles from the cloud broker through a
//! shared subscription, verifies the appliance signature against registered keys, opens the
//! envelope, stores the FHIR bundle idempotently on (appliance id, bundle id), and only then
//! publishes a signed receipt to the appliance's Response Topic and acknowledges the message.
//! Rejects are stored and logged with their reason and never receipted.
//!
//! Keys (0600 files in `keys_dir`, or systemd credentials): `receiver-hpke.key` (X25519, hex),
//! `receiver-signing.p8` (ES256 PKCS#8), `receiver-db.key` (SQLCipher, hex).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::crypto::keyring::KeySources;
use crate::storage::Owner;
use crate::sync::transport;

mod audit_check;
mod audit_event;
mod custody;
mod metrics;
mod open;
pub mod prealerts;
mod setup;

pub use custody::Counters;
use custody::{CUSTODY_QUEUE, Custody, Out, process};
use open::{KeyHints, OPEN_QUEUE, Opener, Read};
pub use setup::{
    Backend, CLIENT_KEY, DB_KEY, HPKE_KEY, Keys, PG_PASSWORD, PostgresConfig, ReceiverConfig,
    ReceiverError, SIGNING_KEY, init,
};

/// Runs the receiver until `shutdown`.
pub async fn run(
    cfg: ReceiverConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Counters, ReceiverError> {
    let broker = cfg.broker_url()?;
    let tls = crate::tls::for_broker(
        broker.tls,
        cfg.ca_file.as_deref(),
        cfg.client_cert.as_deref(),
        || Ok::<_, ReceiverError>(KeySources::from_env(&cfg.keys_dir).read(CLIENT_KEY)?.1),
    )?;
    let client_id = cfg.instance_name();
    // The operations endpoint binds first: a port in use is a setup error, found at start.
    let listener = match cfg.metrics_listen.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(addr) => {
            let l =
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| ReceiverError::Config {
                        path: "metrics_listen".into(),
                        why: format!("cannot listen on {addr}: {e}"),
                    })?;
            let at = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(listen = %at, "metrics and health endpoint listening");
            Some(l)
        }
    };
    let filter = format!("$share/{}/hema3n/v1/edge/+/bundles", cfg.share_group);
    tracing::info!(receiver_id = %cfg.receiver_id, broker = %cfg.broker, filter = %filter, "receiver starting");
    // Opening runs on `receiver-open`, verifying and storing on the database's owner thread
    // (`receiver-db`), never in this async loop, which only moves packets and acks.
    // The store is opened there too: the PostgreSQL driver blocks on a runtime of its own.
    let hints = KeyHints::default();
    let (keys_dir, max_envelope_bytes) = (cfg.keys_dir.clone(), cfg.max_envelope_bytes);
    let open_hints = hints.clone();
    let (opener, open_thread) = Owner::spawn_with(
        move || {
            Ok::<_, ReceiverError>(Opener {
                hpke: Keys::load_hpke(&keys_dir)?,
                max_envelope_bytes,
                hints: open_hints,
            })
        },
        OPEN_QUEUE,
    )
    .await?;
    let store_cfg = cfg.clone();
    let (custody, thread) = Owner::spawn_with(
        move || {
            let keys = Keys::load(&store_cfg.keys_dir)?;
            Ok::<_, ReceiverError>(Custody {
                db: store_cfg.open_store(&keys)?,
                keys,
                hints,
            })
        },
        CUSTODY_QUEUE,
    )
    .await?;
    let live = std::sync::Arc::new(metrics::Live::default());
    let done = std::sync::Arc::new(tokio::sync::Notify::new());
    let endpoint = async {
        if let Some(l) = listener {
            metrics::serve(l, live.clone(), custody.clone(), done.clone()).await;
        }
    };
    let receive = async {
        let r = serve(
            &cfg,
            Stages {
                opener: &opener,
                custody: &custody,
            },
            &live,
            Conn {
                client_id: &client_id,
                broker: &broker,
                tls,
                filter: &filter,
            },
            &mut shutdown,
        )
        .await;
        done.notify_one();
        r
    };
    let (r, ()) = tokio::join!(receive, endpoint);
    drop((opener, custody));
    if !(crate::storage::join_owner(open_thread).await & crate::storage::join_owner(thread).await) {
        return Err(ReceiverError::Io(
            "the receiver database thread panicked".into(),
        ));
    }
    r
}

/// Where and how to connect to the cloud broker.
struct Conn<'a> {
    client_id: &'a str,
    broker: &'a crate::config::BrokerUrl,
    tls: Option<crate::tls::ClientConfig>,
    /// The shared subscription.
    filter: &'a str,
}

/// The two threads a batch passes through, in order.
#[derive(Clone, Copy)]
struct Stages<'a> {
    opener: &'a Owner<Opener>,
    custody: &'a Owner<Custody>,
}

/// Connections to the cloud broker until shutdown, reconnecting with the shared back-off.
async fn serve(
    cfg: &ReceiverConfig,
    stages: Stages<'_>,
    live: &metrics::Live,
    conn: Conn<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Counters, ReceiverError> {
    let Conn {
        client_id,
        broker,
        tls,
        filter,
    } = conn;
    let mut counters = Counters::default();
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.reconnect_min_ms.max(10)),
        Duration::from_millis(cfg.reconnect_max_ms.max(100)),
    );
    loop {
        let (client, mut ev) =
            transport::client(client_id, broker, tls.clone(), cfg.keep_alive_secs, 4096);
        let link = Link {
            client: &client,
            ev: &mut ev,
            filter,
        };
        let r = session(
            cfg,
            stages,
            link,
            (&mut counters, live),
            shutdown,
            &mut backoff,
        )
        .await;
        live.connected(false);
        match r? {
            None => return Ok(counters),
            Some(why) => {
                let wait = backoff.next_wait();
                tracing::warn!(reason = %why, retry_in_ms = wait.as_millis() as u64, "cloud broker connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(counters),
                }
            }
        }
    }
}

/// One connection to the cloud broker.
struct Link<'a> {
    client: &'a AsyncClient,
    ev: &'a mut EventLoop,
    /// The shared subscription.
    filter: &'a str,
}

/// Batches in flight at most: one opening on `receiver-open` while the one before is verified,
/// stored and committed on `receiver-db`.
const PIPELINE: usize = 2;

/// What a batch came to once settled: its receipts and acks, and counts.
type Settled = Result<(Vec<Out>, Counters), ReceiverError>;

/// The batches read and not yet settled, with their envelope bytes: at most one opening, and
/// the opened ones waiting for or in their commit, oldest first.
#[derive(Default)]
struct Flight {
    opening: FuturesOrdered<BoxFuture<'static, (usize, crate::storage::Result<Read>)>>,
    storing: FuturesOrdered<BoxFuture<'static, (usize, Settled)>>,
    /// With the batch being read, at most `batch_max_bytes` plus one envelope (a batch closes
    /// once it reaches what is left).
    bytes: usize,
}

impl Flight {
    /// Whether to read the next batch now: once the one before is opened (so it takes what
    /// arrived meanwhile, and opens while the one before commits), within the pipeline's
    /// batches and bytes.
    fn room(&self, batch_max_bytes: usize) -> bool {
        self.opening.is_empty() && self.storing.len() < PIPELINE && self.bytes < batch_max_bytes
    }

    fn open(&mut self, opener: &Owner<Opener>, batch: Vec<Publish>, bytes: usize) {
        let opener = opener.clone();
        self.bytes += bytes;
        self.opening.push_back(Box::pin(async move {
            (bytes, opener.call(move |o| Ok(o.read(batch))).await)
        }));
    }

    fn store(&mut self, custody: &Owner<Custody>, read: Read, bytes: usize) {
        let custody = custody.clone();
        self.storing.push_back(Box::pin(async move {
            let r = custody.call(move |c| Ok(process(c, read))).await;
            (bytes, r.map_err(ReceiverError::from).and_then(|r| r))
        }));
    }
}

/// One connection. `Ok(None)` on shutdown, `Ok(Some(reason))` when the connection was lost.
async fn session(
    cfg: &ReceiverConfig,
    stages: Stages<'_>,
    link: Link<'_>,
    (counters, live): (&mut Counters, &metrics::Live),
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Backoff,
) -> Result<Option<String>, ReceiverError> {
    let Link { client, ev, filter } = link;
    let mut pending: Vec<Publish> = Vec::new();
    // Receipts and acks waiting for room in the client's request queue (in order).
    let mut out: VecDeque<Out> = VecDeque::new();
    let mut flight = Flight::default();
    let mut settled = |r: Settled,
                       out: &mut VecDeque<Out>|
     -> Result<Option<String>, ReceiverError> {
        match r {
            Ok((outs, delta)) => {
                counters.add(&delta);
                live.batch(&delta);
                out.extend(outs);
                Ok(None)
            }
            // A shared database out of reach: nothing of the batch was acknowledged, so
            // leaving the broker hands it back (to this receiver after the back-off, or to
            // another one of the group meanwhile).
            Err(ReceiverError::Store(e)) if e.is_transient() => {
                tracing::error!(error = %e, "store unavailable; leaving the broker so unacknowledged envelopes are redelivered");
                Ok(Some(format!("store unavailable: {e}")))
            }
            Err(e) => Err(e),
        }
    };
    // On leaving: batches being stored are committed and counted (their acks may not leave
    // before the disconnect: the broker redelivers them, as duplicates); one only opened is
    // dropped unstored.
    macro_rules! settle_all {
        () => {
            while let Some((_, r)) = flight.storing.next().await {
                settled(r, &mut out)?;
            }
        };
    }
    loop {
        flush(client, &mut out);
        // The oldest batch is settled as soon as it is committed (its acks free the broker's
        // window) and an opened one is queued for its commit at once.
        let room = flight.room(cfg.batch_max_bytes);
        let first = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                settle_all!();
                flush(client, &mut out);
                let _ = client.try_disconnect();
                return Ok(None);
            }
            Some((bytes, r)) = flight.storing.next(), if !flight.storing.is_empty() => {
                flight.bytes -= bytes;
                if let Some(why) = settled(r, &mut out)? {
                    settle_all!();
                    let _ = client.try_disconnect();
                    return Ok(Some(why));
                }
                continue;
            }
            Some((bytes, r)) = flight.opening.next(), if !flight.opening.is_empty() => {
                flight.store(stages.custody, r?, bytes);
                continue;
            }
            r = ev.poll(), if room => r,
        };
        // A batch is bounded in messages and in bytes (envelopes are held until committed).
        let size = |r: &Result<Event, rumqttc::v5::ConnectionError>| match r {
            Ok(Event::Incoming(Packet::Publish(p))) => p.payload.len(),
            _ => 0,
        };
        let budget = cfg.batch_max_bytes - flight.bytes;
        let mut bytes = size(&first);
        let mut events = vec![first];
        while events.len() < cfg.batch_max && bytes < budget {
            match tokio::time::timeout(Duration::ZERO, ev.poll()).await {
                Ok(r) => {
                    let err = r.is_err();
                    bytes += size(&r);
                    events.push(r);
                    if err {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let mut lost = None;
        for e in events {
            match e {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    backoff.reset();
                    live.connected(true);
                    tracing::info!(
                        session_present = a.session_present,
                        "connected to cloud broker"
                    );
                    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                        lost = Some(e.to_string());
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    tracing::info!(filter, "subscribed to bundles");
                }
                Ok(Event::Incoming(Packet::Publish(p))) => pending.push(p),
                Ok(_) => {}
                Err(e) => lost = Some(e.to_string()),
            }
        }
        if !pending.is_empty() {
            flight.open(stages.opener, std::mem::take(&mut pending), bytes);
        }
        if let Some(why) = lost {
            settle_all!();
            return Ok(Some(why));
        }
    }
}

/// Hands queued receipts and acks to the client without blocking; what does not fit waits for
/// the next round (the event loop drains the queue while `session` polls it).
fn flush(client: &AsyncClient, out: &mut VecDeque<Out>) {
    while let Some(o) = out.pop_front() {
        let r = match &o {
            Out::Receipt {
                topic,
                bytes,
                props,
            } => client.try_publish_with_properties(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                bytes.clone(),
                props.clone(),
            ),
            Out::Ack(p) => client.try_ack(p),
        };
        if r.is_err() {
            out.push_front(o);
            return;
        }
    }
}
