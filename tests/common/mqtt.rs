//! A small blocking MQTT client for tests (rumqttc's sync client on its own thread).
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

pub struct TestClient {
    pub client: Client,
    pub received: mpsc::Receiver<(String, Vec<u8>)>,
    pub acked: Arc<AtomicU64>,
    pub published: u64,
}

impl TestClient {
    pub fn connect(port: u16, id: &str, creds: Option<(&str, &str)>) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(10))
            .set_inflight(500)
            .set_max_packet_size(4 << 20, 4 << 20);
        if let Some((u, p)) = creds {
            o.set_credentials(u, p);
        }
        let (client, mut conn) = Client::new(o, 1000);
        let (tx, rx) = mpsc::channel();
        let acked = Arc::new(AtomicU64::new(0));
        let a = acked.clone();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        TestClient {
            client,
            received: rx,
            acked,
            published: 0,
        }
    }

    pub fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
    }

    pub fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .unwrap();
        self.published += 1;
    }

    /// Publishes at QoS 0 (no acknowledgement).
    pub fn publish_qos0(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtMostOnce, false, payload)
            .unwrap();
    }

    /// Waits until the broker acknowledged everything published so far.
    pub fn flush(&self) {
        let p = self.published;
        super::broker::wait_for(30, "broker PUBACKs", || {
            (self.acked.load(Ordering::SeqCst) >= p).then_some(())
        });
    }

    /// Next message, waiting at most `secs`.
    pub fn next(&self, secs: u64) -> Option<(String, Vec<u8>)> {
        self.received.recv_timeout(Duration::from_secs(secs)).ok()
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

/// A valid single-reading pack.
pub fn hr_pack(t_ms: i64, v: i64) -> String {
    format!(
        r#"[{{"n":"heart_rate","u":"beat/min","v":{v},"t":{:.3}}}]"#,
        t_ms as f64 / 1000.0
    )
}

/// A device streaming single heart-rate packs (device times `base`, `base + 1`, …) in chunks
/// of 25, each chunk flushed: [`Stream::accepted`] counts exactly the messages the broker
/// PUBACKed, which a daemon acknowledges only after committing them.
pub struct Stream {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    pub fn start(port: u16, device: &str, base: i64) -> Stream {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let accepted = std::sync::Arc::new(AtomicU64::new(0));
        let (s, acc, device) = (stop.clone(), accepted.clone(), device.to_string());
        let thread = std::thread::spawn(move || {
            let mut c = TestClient::connect(port, &device, None);
            let topic = format!("hema3n/v1/devices/{device}/vitals");
            let mut i = 0i64;
            while !s.load(Ordering::SeqCst) {
                for _ in 0..25 {
                    c.publish(&topic, hr_pack(base + i, 40 + i % 120));
                    i += 1;
                }
                c.flush();
                acc.store(i as u64, Ordering::SeqCst);
            }
        });
        Stream {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Messages the broker acknowledged so far.
    pub fn accepted(&self) -> i64 {
        self.accepted.load(Ordering::SeqCst) as i64
    }

    /// Stops after the current chunk; returns every message the broker acknowledged.
    pub fn stop(mut self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.accepted()
    }
}
