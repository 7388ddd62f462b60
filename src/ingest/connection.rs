//! The `mqtt-connection` task: the on-board broker session (subscriptions, reconnects, the
//! drain at shutdown).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use tokio::sync::{mpsc, watch};

use super::{Inbound, IngestError, IngestMetrics, topics};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::model::now_ms;

/// The `mqtt-connection` task: drives the broker connection, (re)subscribes on every CONNACK,
/// forwards publishes to the batcher, reconnects with the shared jittered back-off
/// ([`Backoff`]). Never blocks inside the event loop (acks travel through it).
pub struct Connection {
    pub ev: EventLoop,
    /// Subscriptions and the final disconnect.
    pub client: AsyncClient,
    /// Received publishes; the batcher holds the receiving end.
    pub to_batcher: mpsc::UnboundedSender<Inbound>,
    pub cfg: Config,
    pub metrics: Arc<IngestMetrics>,
    /// Set by the committer once its last acks are queued.
    pub drained: watch::Receiver<bool>,
}

impl Connection {
    /// Runs until shutdown, then keeps the connection up until the committer drained.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), IngestError> {
        let Connection {
            mut ev,
            client,
            to_batcher,
            cfg,
            metrics,
            drained,
        } = self;
        let r = forward(&mut ev, &client, to_batcher, &cfg, &metrics, &mut shutdown).await;
        drain(&mut ev, &client, drained).await;
        r
    }
}

/// After shutdown: keep the connection up (new publishes are left unacknowledged for the
/// broker to redeliver) until the committer has sent its last acks, then disconnect cleanly.
async fn drain(ev: &mut EventLoop, client: &AsyncClient, mut drained: watch::Receiver<bool>) {
    let deadline = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(deadline);
    while !*drained.borrow() {
        tokio::select! {
            r = ev.poll() => if r.is_err() { return },
            _ = drained.changed() => {}
            _ = &mut deadline => return,
        }
    }
    let _ = client.try_disconnect();
    loop {
        tokio::select! {
            r = ev.poll() => match r {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            },
            _ = &mut deadline => return,
        }
    }
}

async fn forward(
    ev: &mut EventLoop,
    client: &AsyncClient,
    to_batcher: mpsc::UnboundedSender<Inbound>,
    cfg: &Config,
    metrics: &IngestMetrics,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), IngestError> {
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.mqtt.reconnect_min_ms),
        Duration::from_millis(cfg.mqtt.reconnect_max_ms),
    );
    let mut was_connected = false;
    let mut subacks = 0;
    loop {
        let polled = tokio::select! {
            r = ev.poll() => r,
            _ = shutdown.changed() => return Ok(()),
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                was_connected = true;
                subacks = 0;
                metrics.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(session_present = ack.session_present, broker = %cfg.mqtt.broker, "connected to on-board broker");
                for f in [topics::VITALS_FILTER, topics::STATUS_FILTER] {
                    if let Err(e) = client.try_subscribe(f, QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, filter = f, "cannot queue subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                use rumqttc::SubscribeReasonCode;
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    return Err(IngestError::Config(format!(
                        "the broker refused a subscription ({:?}); check the daemon's ACL",
                        ack.return_codes
                    )));
                }
                subacks += 1;
                if subacks == 2 {
                    metrics.subscribed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("subscribed to device topics");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                tracing::trace!(topic = %p.topic, bytes = p.payload.len(), "publish received");
                metrics.received.fetch_add(1, Ordering::Relaxed);
                // QoS 0 bypasses the broker's in-flight window that bounds this pipeline: past
                // `ingest.qos0_backlog` messages not yet committed, QoS 0 publishes (at most
                // once by the device's own choice) are dropped, counted and logged, never
                // queued without bound (review #14a). QoS 1 is never dropped here.
                if p.qos == rumqttc::QoS::AtMostOnce
                    && metrics.outstanding() > cfg.ingest.qos0_backlog
                {
                    let n = metrics.qos0_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!(dropped = n, topic = %p.topic, "QoS 0 flood: publishes dropped while the pipeline is full (devices should publish vitals at QoS 1)");
                    }
                    continue;
                }
                let item = Inbound {
                    publish: p,
                    recv_ms: now_ms(),
                    recv_at: Instant::now(),
                };
                if to_batcher.send(item).is_err() {
                    return Ok(());
                }
                let outstanding = metrics.outstanding();
                if outstanding == OUTSTANDING_WARN {
                    tracing::warn!(
                        outstanding,
                        "more messages in flight than the broker's window should allow; check max_inflight_messages"
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                if was_connected {
                    tracing::warn!(error = %e, "on-board broker connection lost; reconnecting");
                    was_connected = false;
                }
                let wait = backoff.next_wait();
                tracing::debug!(error = %e, retry_in = ?wait, "on-board broker unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Messages received but not yet committed above which the daemon warns: the broker's
/// in-flight window (1000 in our configuration) normally keeps it far below.
const OUTSTANDING_WARN: u64 = 20_000;
