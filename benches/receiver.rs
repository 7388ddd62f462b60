//! The cloud receiver at fleet rate: `n` sealed case bundles of ~41 KB (a typical short case)
//! published at QoS 1 to a real mosquitto, verified, opened, stored and receipted by the real
//! `hema3n-receiver` — on its embedded SQLCipher store, and by one and by two receivers sharing a
//! real PostgreSQL cluster (started here, as in the tests) and one shared subscription. Reports bundles/s with receipts against a raw QoS 1 publish →
//! subscriber delivery of payloads of the same size, and the receiver's CPU time per bundle
//! against the in-process cost of verifying and opening one envelope (the crypto it cannot skip).
//! Targets (issue #19): ≥ 1,500 bundles/s with receipts, ≤ 300 µs of receiver CPU per bundle.

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;
#[path = "../tests/common/mqtt.rs"]
mod mqtt;
#[path = "../tests/common/pg.rs"]
mod pg;
#[path = "../tests/common/trail.rs"]
mod trail;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{bench_line, cpu_secs, pct, quick, run};
use hema3n_edge::crypto::seal::{self, BundleKind, EnvelopeMeta};
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::sync::ReceiverKeys;

const APP: &str = "bench-app";

/// Vital-sign Observation entries of about `size` bytes, comma-separated.
fn observations(size: usize) -> String {
    let mut entries = vec![];
    let mut len = 60;
    let mut i = 0;
    while len < size {
        let e = format!(
            r#"{{"resource":{{"resourceType":"Observation","id":"o{i}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},"valueQuantity":{{"value":{},"unit":"/min"}}}}}}"#,
            60 + i % 40
        );
        len += e.len() + 1;
        entries.push(e);
        i += 1;
    }
    entries.join(",")
}

/// A FHIR Bundle of about `size` bytes: observations and the case's audit trail (20 entries of
/// the case, 2 others between each, a checkpoint signed after them), which the receiver verifies.
fn body(size: usize, chain: &mut trail::Chain, signer: &SigningKey, id: &str) -> Vec<u8> {
    let trail: Vec<String> = chain
        .case_entries(id, 20, 2, signer)
        .iter()
        .map(|e| e.to_string())
        .collect();
    let trail = trail.join(",");
    format!(
        r#"{{"resourceType":"Bundle","type":"collection","id":"{id}","entry":[{},{trail}]}}"#,
        observations(size.saturating_sub(trail.len()))
    )
    .into_bytes()
}

/// Raw QoS 1: `n` payloads of `size` bytes published and delivered to a subscriber; msgs/s.
fn raw_delivery(port: u16, tag: &str, n: usize, size: usize) -> f64 {
    // Client ids of their own per run: a reused id would take over (and drop) a session.
    let mut s = mqtt::TestClient::connect(port, &format!("bench-raw-sub-{tag}"), None);
    s.subscribe(&format!("bench/raw/{tag}/#"));
    let mut p = mqtt::TestClient::connect(port, &format!("bench-raw-pub-{tag}"), None);
    let (probe, topic) = (
        format!("bench/raw/{tag}/probe"),
        format!("bench/raw/{tag}/x"),
    );
    // The subscription is in place once a probe comes back (probes are not counted below).
    broker::wait_for(10, "raw subscription active", || {
        p.publish(&probe, vec![0u8; 1]);
        s.received
            .recv_timeout(std::time::Duration::from_millis(100))
            .ok()
    });
    let payload = vec![0x5a_u8; size];
    let t = Instant::now();
    for _ in 0..n {
        p.publish(&topic, payload.clone());
    }
    let mut got = 0;
    while got < n {
        let (t, _) = s
            .next(30)
            .unwrap_or_else(|| panic!("raw delivery {got} missing"));
        got += usize::from(t == topic);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// `postgres`, or `postgres_x2` for two receivers.
fn run_label(store: &str, receivers: usize) -> String {
    if receivers == 1 {
        store.to_string()
    } else {
        format!("{store}_x{receivers}")
    }
}

struct Outcome {
    rate: f64,
    cpu_us: f64,
    /// In-process verify + open of one envelope, p50.
    open_us: f64,
}

/// `receivers` receivers sharing one `store` ("sqlcipher": one receiver; "postgres": one
/// cluster) and one shared subscription: `n` envelopes published, all receipted.
fn run_store(
    recv: &str,
    broker: &broker::Broker,
    (store, receivers): (&str, usize),
    n: usize,
    size: usize,
) -> (Outcome, f64) {
    let label = run_label(store, receivers);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cloud");
    run(
        recv,
        &[
            "init",
            "--data-dir",
            dir.to_str().unwrap(),
            "--broker",
            &broker.url(),
        ],
        None,
    );
    let cfg = dir.join("receiver.toml");
    let c = cfg.to_str().unwrap();
    let _pg = (store == "postgres").then(|| {
        let pg = pg::Pg::start();
        pg.configure_receiver(&cfg, &dir.join("keys"));
        pg
    });
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "metrics_listen = \"127.0.0.1:9464\"",
        "metrics_listen = \"127.0.0.1:0\"",
    );
    // Its own share group: the other store's receiver, gone, keeps its persistent session
    // in its group (and with it its share of the messages) until the session expires.
    let text = text.replace(
        "share_group = \"receivers\"",
        &format!("share_group = \"bench-{label}\""),
    );
    std::fs::write(&cfg, &text).unwrap();
    // One configuration per receiver: the same store, keys and share group, its own client id.
    let configs: Vec<std::path::PathBuf> = (0..receivers)
        .map(|k| {
            let f = dir.join(format!("receiver-{k}.toml"));
            std::fs::write(&f, format!("client_id = \"bench-{label}-{k}\"\n{text}")).unwrap();
            f
        })
        .collect();
    let signer = SigningKey::from_pkcs8(APP, &SigningKey::generate_pkcs8().unwrap()).unwrap();
    let pem = tmp.path().join("app.pem");
    std::fs::write(&pem, signer.public().to_pem()).unwrap();
    run(
        recv,
        &[
            "--config",
            c,
            "appliances",
            "add",
            APP,
            pem.to_str().unwrap(),
        ],
        None,
    );
    let rk = ReceiverKeys::parse(&run(recv, &["--config", c, "export-public"], None)).unwrap();
    let mut chain = trail::Chain::new(APP);
    let envelopes: Vec<Vec<u8>> = (1..=n as u64)
        .map(|seq| {
            let m = EnvelopeMeta {
                kind: BundleKind::Bundle,
                bundle_id: *uuid::Uuid::now_v7().as_bytes(),
                seq,
                created_at_ms: hema3n_edge::model::now_ms() as u64,
                appliance_id: APP.into(),
            };
            let id = uuid::Uuid::from_bytes(m.bundle_id).to_string();
            let plain = body(size, &mut chain, &signer, &id);
            seal::seal(&m, &plain, &rk.hpke, &signer).unwrap()
        })
        .collect();
    let env_len = envelopes[0].len();
    // The crypto the receiver cannot skip, in-process: verify the signature, open the HPKE box.
    let hpke = hema3n_edge::receiver::Keys::load_hpke(&dir.join("keys")).unwrap();
    let mut open = vec![];
    for e in envelopes.iter().take(if quick() { 20 } else { 200 }) {
        let t = Instant::now();
        let (_, pt) = seal::verify_and_open(e, &signer.public(), &hpke).unwrap();
        open.push(t.elapsed());
        assert!(pt.starts_with(br#"{"resourceType":"Bundle""#));
    }
    let open_us = pct(&mut open, 0.5).as_secs_f64() * 1e6;
    let logs: Vec<std::path::PathBuf> = (0..receivers)
        .map(|k| tmp.path().join(format!("receiver-{k}.log")))
        .collect();
    let mut children: Vec<std::process::Child> = configs
        .iter()
        .zip(&logs)
        .map(|(cfg, log)| {
            Command::new(recv)
                .args(["--config", cfg.to_str().unwrap(), "run"])
                .env("HEMA3N_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    for log in &logs {
        broker::wait_for(30, "receiver subscribed", || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("subscribed to bundles")
                .then_some(())
        });
    }
    let mut p = mqtt::TestClient::connect(broker.port, &format!("bench-app-{label}"), None);
    p.subscribe("hema3n/v1/edge/+/receipts");
    let topic = format!("hema3n/v1/edge/{APP}/bundles");
    let cpu_all = |children: &[std::process::Child]| -> f64 {
        children.iter().map(|c| cpu_secs(c.id())).sum()
    };
    let cpu0 = cpu_all(&children);
    let t = Instant::now();
    for e in &envelopes {
        p.publish(&topic, e.clone());
    }
    for k in 0..n {
        p.next(60).unwrap_or_else(|| {
            let logs: String = logs
                .iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect();
            panic!("receipt {k} of {n} missing ({label}); receiver logs:\n{logs}")
        });
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_all(&children) - cpu0;
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!(
        "{label}: {n} envelopes of {env_len} B stored and receipted by {receivers} receiver(s) in {secs:.2} s; receiver CPU {cpu:.2} s; verify + open p50 {open_us:.0} µs"
    );
    (
        Outcome {
            rate: n as f64 / secs,
            cpu_us: cpu * 1e6 / n as f64,
            open_us,
        },
        env_len as f64,
    )
}

fn main() {
    let n = std::env::var("HEMA3N_RECEIVER_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 200 } else { 10_000 });
    let size = 41_000;
    let recv = env!("CARGO_BIN_EXE_hema3n-receiver");
    let broker = broker::Broker::start_with(
        "allow_anonymous true\nmessage_size_limit 16777216\nset_tcp_nodelay true\nmax_queued_messages 100000\n",
    );
    // Issue #19: the embedded store with one receiver, PostgreSQL with one and with two.
    for (store, receivers) in [("sqlcipher", 1), ("postgres", 1), ("postgres", 2)] {
        let (o, env_len) = run_store(recv, &broker, (store, receivers), n, size);
        let store = run_label(store, receivers);
        let raw = raw_delivery(broker.port, &store, n, env_len as usize);
        println!("raw QoS 1 publish → delivery ({env_len} B)  {raw:.0} msg/s");
        bench_line(
            &format!("receiver_{store}_bundles_per_s"),
            o.rate,
            "bundles/s",
            raw,
        );
        // Against the crypto alone; the target is ≤ 300 µs per bundle (issue #19).
        bench_line(
            &format!("receiver_{store}_cpu_us_per_bundle"),
            o.cpu_us,
            "us",
            o.open_us,
        );
    }
}
