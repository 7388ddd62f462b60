//! Crash safety of ingest: a device streams vitals into a real mosquitto while the daemon is
//! SIGKILLed at random points, ≥ 20 times. Every message the broker accepted must end up
//! stored exactly once: committed before the kill, or redelivered (unacknowledged) after it.
//! `HEMA3N_INGEST_KILL9_ROUNDS` raises the round count for soak runs.

mod common;

use common::Appliance;
use common::broker::{Broker, wait_eq, wait_for};
use common::mqtt::Stream;
use hema3n_edge::ingest::simulate::Rng;
use hema3n_edge::model::now_ms;

#[test]
fn kill_9_during_a_stream_loses_nothing_and_duplicates_nothing() {
    let rounds: usize = std::env::var("HEMA3N_INGEST_KILL9_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let broker = Broker::start();
    let a = Appliance::streaming(&broker);
    let mut daemon = a.start_daemon();

    // The device: `accepted` counts exactly the messages the broker took responsibility for.
    let base = now_ms() - 60_000;
    let device = Stream::start(broker.port, "pump-1", base);

    let stored = || a.pump_readings();
    let seed = std::env::var("HEMA3N_KILL9_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(now_ms() as u64);
    eprintln!("ingest kill -9 seed {seed}");
    let mut rng = Rng::new(seed);
    for round in 0..rounds {
        let from = stored();
        let step = 20 + (rng.next_u64() % 200) as i64;
        wait_for(
            60,
            &format!("round {round}: progress past {}", from + step),
            || (stored() >= from + step).then_some(()),
        );
        daemon.kill9();
        daemon = a.spawn_daemon();
    }
    let total = device.stop();
    assert!(total > 0);
    wait_eq(120, "every accepted message stored", total, stored);
    // Exactly once: one row per distinct device time, and the full range is present.
    let distinct = a.query_i64(
        "SELECT count(DISTINCT device_time) FROM observations WHERE device_id = 'pump-1'",
    );
    assert_eq!(distinct, total, "duplicates stored");
    let (lo, hi) = (
        a.query_i64("SELECT min(device_time) FROM observations WHERE device_id = 'pump-1'"),
        a.query_i64("SELECT max(device_time) FROM observations WHERE device_id = 'pump-1'"),
    );
    assert_eq!(
        (lo, hi),
        (base, base + total - 1),
        "a gap means a lost reading"
    );
    assert!(daemon.stop().success());
    assert!(a.open().integrity_check(false).unwrap().is_empty());
    assert!(a.ok(&["audit", "verify"]).starts_with("OK"));
    eprintln!("{total} messages across {rounds} kills: all stored exactly once");
}
