//! The MQTT 5 session to the cloud broker, shared by the appliance's forwarder and the receiver:
//! persistent session (clean start off, long session expiry), manual acks, TLS from `tls`.

use std::time::Duration;

use rumqttc::v5::{AsyncClient, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};

use crate::config::BrokerUrl;
use crate::tls::ClientConfig;

/// Session expiry the broker keeps our subscriptions and queued receipts for while we are away:
/// a week of no connectivity.
pub const SESSION_EXPIRY_SECS: u32 = 7 * 24 * 3600;
/// Largest packet either side accepts (a sealed case bundle of a long transport with many
/// readings stays well below this).
pub const MAX_PACKET_BYTES: u32 = 32 * 1024 * 1024;

/// Topic an appliance publishes its envelopes on.
pub fn bundles_topic(appliance_id: &str) -> String {
    format!("hema3n/v1/edge/{appliance_id}/bundles")
}

/// Topic the receiver answers with receipts on (the MQTT 5 Response Topic).
pub fn receipts_topic(appliance_id: &str) -> String {
    format!("hema3n/v1/edge/{appliance_id}/receipts")
}

/// Shared subscription of the receivers.
pub const RECEIVER_FILTER: &str = "$share/receivers/hema3n/v1/edge/+/bundles";

/// The appliance id in a bundles topic, if it is one.
pub fn appliance_of_bundles_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix("hema3n/v1/edge/")?
        .strip_suffix("/bundles")?;
    crate::model::is_valid_ident(id).then_some(id)
}

/// Client and event loop for one connection attempt. `request_capacity` bounds the requests
/// waiting for the event loop.
pub fn client(
    client_id: &str,
    broker: &BrokerUrl,
    tls: Option<ClientConfig>,
    keep_alive_secs: u64,
    request_capacity: usize,
) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    o.set_keep_alive(Duration::from_secs(keep_alive_secs.max(5)))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
        .set_manual_acks(true)
        .set_max_packet_size(Some(MAX_PACKET_BYTES))
        .set_connection_timeout(10);
    // Envelopes, receipts and acks are small writes in quick succession: without TCP_NODELAY
    // each one after the first waits for the peer's delayed ACK (~40 ms a hop), which made a
    // pre-alert's receipt take ~80 ms on loopback.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    o.set_network_options(net);
    if let Some(t) = tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(t)));
    }
    AsyncClient::new(o, request_capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        assert_eq!(
            appliance_of_bundles_topic(&bundles_topic("amb-7")),
            Some("amb-7")
        );
        assert_eq!(
            appliance_of_bundles_topic("hema3n/v1/edge/a/b/bundles"),
            None
        );
        assert_eq!(
            appliance_of_bundles_topic("hema3n/v1/edge/x/receipts"),
            None
        );
    }
}
