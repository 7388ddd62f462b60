//! The forwarder's view of a connection to the cloud broker: a small transport trait
//! ([`Transport`], [`LinkClient`]) and its MQTT 5 implementation ([`MqttTransport`]).
//!
//! A connection attempt yields a [`Link`]: a client for requests that never wait (publish,
//! subscribe, ack, disconnect: a full request queue is reported, not awaited), a driver future
//! that owns the connection and completes with why it ended, and the [`LinkEvent`]s it saw. The
//! forwarder polls the driver in the same `select!` as everything else, so it must never await
//! the client: that is why the client methods are all `try_`.

use std::future::Future;
use std::pin::Pin;

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::mpsc;

use super::transport;
use crate::config::BrokerUrl;
use crate::tls::ClientConfig;

/// What one connection reports to the forwarder. `A` is what acknowledging a receipt takes.
#[derive(Debug)]
pub enum LinkEvent<A> {
    /// CONNACK.
    Connected { session_present: bool },
    /// SUBACK of the receipts subscription.
    Subscribed,
    /// A publish request got packet id `pkid` (in request order).
    Assigned(u16),
    /// The broker's PUBACK; `ok` is false when it refused the message.
    PubAck { pkid: u16, ok: bool },
    /// A message on the receipts topic, and its ack (sent only after the receipt committed).
    Receipt { payload: Vec<u8>, ack: A },
    /// The broker ended the connection.
    Lost(String),
}

/// The connection's request queue is full; the caller tries again on its next round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cloud connection's request queue is full")]
pub struct QueueFull;

/// Requests on one connection. None of them waits.
pub trait LinkClient: Send {
    /// What acknowledging a receipt takes.
    type Ack: Send;
    /// Subscribes to this appliance's receipts topic.
    fn try_subscribe_receipts(&self) -> Result<(), QueueFull>;
    /// Publishes one envelope (QoS 1, with the receipts topic as Response Topic and the bundle
    /// id as Correlation Data).
    fn try_publish(&self, bundle_id: &str, envelope: Vec<u8>) -> Result<(), QueueFull>;
    /// Acknowledges a receipt message.
    fn try_ack(&self, ack: &Self::Ack) -> Result<(), QueueFull>;
    /// Asks for a clean disconnect.
    fn try_disconnect(&self);
}

/// The connection future: owns the connection and completes with why it ended.
pub type Driver = Pin<Box<dyn Future<Output = String> + Send>>;

/// One connection attempt.
pub struct Link<C: LinkClient> {
    pub client: C,
    pub driver: Driver,
    /// Fed by the driver; the forwarder is the only reader.
    pub events: mpsc::UnboundedReceiver<LinkEvent<C::Ack>>,
}

/// Makes connection attempts.
pub trait Transport: Send {
    type Client: LinkClient;
    /// Starts one connection attempt (the driver connects when first polled).
    fn connect(&mut self) -> Link<Self::Client>;
}

/// The cloud broker over MQTT 5 (persistent session, manual acks, TLS as configured).
pub struct MqttTransport {
    pub appliance_id: String,
    pub client_id: String,
    pub broker: BrokerUrl,
    pub tls: Option<ClientConfig>,
    pub keep_alive_secs: u64,
    /// Requests that may wait for the event loop (the window plus acks and subscriptions).
    pub request_capacity: usize,
}

impl Transport for MqttTransport {
    type Client = MqttClient;

    fn connect(&mut self) -> Link<MqttClient> {
        let (client, ev) = transport::client(
            &self.client_id,
            &self.broker,
            self.tls.clone(),
            self.keep_alive_secs,
            self.request_capacity,
        );
        // Per-connection hand-off from the driver to the forwarder (tidy allow-list): unbounded
        // so the driver never blocks in the event loop; bounded in practice by the window.
        let (tx, events) = mpsc::unbounded_channel();
        Link {
            client: MqttClient {
                client,
                appliance_id: self.appliance_id.clone(),
            },
            driver: Box::pin(drive(ev, tx)),
            events,
        }
    }
}

/// Requests on one MQTT connection.
pub struct MqttClient {
    client: AsyncClient,
    appliance_id: String,
}

impl LinkClient for MqttClient {
    type Ack = Publish;

    fn try_subscribe_receipts(&self) -> Result<(), QueueFull> {
        self.client
            .try_subscribe(
                transport::receipts_topic(&self.appliance_id),
                QoS::AtLeastOnce,
            )
            .map_err(|_| QueueFull)
    }

    fn try_publish(&self, bundle_id: &str, envelope: Vec<u8>) -> Result<(), QueueFull> {
        let props = PublishProperties {
            response_topic: Some(transport::receipts_topic(&self.appliance_id)),
            correlation_data: Some(bundle_id.to_string().into_bytes().into()),
            content_type: Some("application/vnd.hema3n.envelope.v1".into()),
            ..Default::default()
        };
        self.client
            .try_publish_with_properties(
                transport::bundles_topic(&self.appliance_id),
                QoS::AtLeastOnce,
                false,
                envelope,
                props,
            )
            .map_err(|_| QueueFull)
    }

    fn try_ack(&self, ack: &Publish) -> Result<(), QueueFull> {
        self.client.try_ack(ack).map_err(|_| QueueFull)
    }

    fn try_disconnect(&self) {
        let _ = self.client.try_disconnect();
    }
}

/// Polls the event loop and forwards what matters; never blocks in it. Returns why the
/// connection ended.
async fn drive(mut ev: EventLoop, tx: mpsc::UnboundedSender<LinkEvent<Publish>>) -> String {
    loop {
        let e = match ev.poll().await {
            Ok(e) => e,
            Err(e) => return e.to_string(),
        };
        let out = match e {
            Event::Incoming(Packet::ConnAck(a)) => Some(LinkEvent::Connected {
                session_present: a.session_present,
            }),
            Event::Incoming(Packet::SubAck(_)) => Some(LinkEvent::Subscribed),
            Event::Incoming(Packet::PubAck(a)) => Some(LinkEvent::PubAck {
                pkid: a.pkid,
                ok: matches!(
                    a.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                ),
            }),
            Event::Incoming(Packet::Publish(p)) => Some(LinkEvent::Receipt {
                payload: p.payload.to_vec(),
                ack: p,
            }),
            Event::Incoming(Packet::Disconnect(d)) => Some(LinkEvent::Lost(format!(
                "broker disconnected: {:?}",
                d.reason_code
            ))),
            Event::Outgoing(Outgoing::Publish(pkid)) => Some(LinkEvent::Assigned(pkid)),
            _ => None,
        };
        if let Some(o) = out
            && tx.send(o).is_err()
        {
            return "forwarder gone".into();
        }
    }
}
