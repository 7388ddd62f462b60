//! `scripts/bench.sh sync`: sealing and opening cost of a case bundle, and the outbox drain after
//! reconnect — N queued envelopes published by the real daemon to a mosquitto on loopback, opened
//! and stored by the real `hema3n-receiver`, each receipted and applied — next to the raw QoS 1
//! publish throughput of envelopes of the same size to the same broker, measured in the same run;
//! the 1,320-reading case bundle against one Observation per reading (`BENCH bundle_fhir_kb`,
//! `BENCH bundle_build_ms`); and pre-alert latency from a stored ESI 2 triage to the sealed
//! envelope queued and to its receipt, against a raw publish → receive of the same size
//! (`BENCH prealert_queue_p99_ms`, `BENCH prealert_receipt_p99_ms`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hema3n_edge::config::Config;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::crypto::seal::{self, BundleKind, EnvelopeMeta, RecipientSecretKey};
use hema3n_edge::crypto::sign::SigningKey;
use hema3n_edge::model::{CaseExport, Observation, Patient};
use hema3n_edge::storage::Db;
use hema3n_edge::sync::{ReceiverKeys, fhir};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;
#[path = "../tests/common/https.rs"]
mod https;
use common::{PIN, add_medic, bench_line, pct, quick, run};

/// A case of `samples` rounds of 11 vitals (120 rounds: a 30-minute transport at one set per 15 s).
fn case(samples: i64) -> CaseExport {
    let t0 = 1_800_000_000_000;
    let mut readings = vec![];
    for i in 0..samples {
        for (code, v) in [
            ("heart_rate", 110.0),
            ("resp_rate", 24.0),
            ("spo2", 93.0),
            ("sbp", 100.0),
            ("dbp", 60.0),
            ("temp", 37.9),
            ("etco2", 33.0),
            ("gcs_total", 14.0),
            ("avpu", 0.0),
            ("pain", 6.0),
            ("glucose", 120.0),
        ] {
            readings.push(Observation {
                id: readings.len() as i64,
                device_id: Some("mon-1".into()),
                code: code.into(),
                value: v,
                device_time_ms: t0 + i * 15_000,
                recv_time_ms: t0 + i * 15_000 + 30,
                source: "device".into(),
            });
        }
    }
    CaseExport {
        appliance_id: "hema3n-dev".into(),
        case_id: "01900000-0000-7000-8000-0000000000aa".into(),
        territory: "default".into(),
        status: "closed".into(),
        created_at_ms: t0,
        closed_at_ms: Some(t0 + 1_800_000),
        patient_id: Some("p".into()),
        patient: Some(Patient {
            last_name: Some("Bench".into()),
            date_of_birth: Some("1960-01-01".into()),
            ..Default::default()
        }),
        chief_complaint: Some("dyspnoea".into()),
        mechanism: None,
        onset: None,
        devices: vec![("mon-1".into(), "monitor".into())],
        readings,
        triage: None,
        record: Default::default(),
        people: vec![],
        audit: vec![],
        checkpoint: None,
        audit_segment: None,
        prealert: Default::default(),
        attachments: vec![],
    }
}

fn meta(seq: u64) -> EnvelopeMeta {
    EnvelopeMeta {
        kind: BundleKind::Bundle,
        bundle_id: *uuid::Uuid::now_v7().as_bytes(),
        seq,
        created_at_ms: 1,
        appliance_id: "hema3n-dev".into(),
    }
}

/// Raw QoS 1 publishes of `n` payloads of `size` bytes (1000 in flight): messages/s.
async fn raw_publish(port: u16, n: usize, size: usize) -> f64 {
    let mut o = MqttOptions::new("bench-raw-pub", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000)
        .set_max_packet_size(1 << 24, 1 << 24);
    let (client, mut ev) = AsyncClient::new(o, 2048);
    let payload = vec![0x5a_u8; size];
    let t = Instant::now();
    let pubs = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish(
                    "bench/raw/bundles",
                    QoS::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    while acks < n {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = ev.poll().await {
            acks += 1;
        }
    }
    let _client = pubs.await.unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let n = std::env::var("HEMA3N_SYNC_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick() { 300 } else { 10_000 });
    let edge = env!("CARGO_BIN_EXE_hema3n-edge");
    let recv_bin = env!("CARGO_BIN_EXE_hema3n-receiver");
    let broker = broker::Broker::start_with(
        "allow_anonymous true\nmessage_size_limit 16777216\nset_tcp_nodelay true\n",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Seal / open cost of one case bundle.
    let signer = SigningKey::from_pkcs8("b", &SigningKey::generate_pkcs8().unwrap()).unwrap();
    let rsk = RecipientSecretKey::generate().0;
    let x = case(120);
    let iters = if quick() { 20 } else { 300 };
    let (mut build, mut sealt, mut open) = (vec![], vec![], vec![]);
    let mut size = 0;
    let mut plain = 0;
    for i in 0..iters {
        let t = Instant::now();
        let body = serde_json::to_vec(&fhir::build(&x, "b", fhir::Profile::Case, 1)).unwrap();
        build.push(t.elapsed());
        let t = Instant::now();
        let env = seal::seal(&meta(i), &body, rsk.public(), &signer).unwrap();
        sealt.push(t.elapsed());
        let t = Instant::now();
        let (_, pt) = seal::verify_and_open(&env, &signer.public(), &rsk).unwrap();
        open.push(t.elapsed());
        assert_eq!(pt.len(), body.len());
        size = env.len();
        plain = body.len();
    }
    // The same case with one Observation per reading (the format before compaction).
    let individual = fhir::Extras {
        series: fhir::Series::Individual,
        ..Default::default()
    };
    let mut each_build = vec![];
    let mut each_len = 0;
    for _ in 0..iters.min(60) {
        let t = Instant::now();
        let body = serde_json::to_vec(&fhir::build_with(
            &x,
            "b",
            fhir::Profile::Case,
            1,
            &individual,
        ))
        .unwrap();
        each_build.push(t.elapsed());
        each_len = body.len();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "## sync: case bundle of {} readings, FHIR JSON {plain} B (one Observation per reading: {each_len} B), envelope {size} B",
        x.readings.len()
    );
    let (b_ms, each_ms) = (
        pct(&mut build, 0.5).as_secs_f64() * 1e3,
        pct(&mut each_build, 0.5).as_secs_f64() * 1e3,
    );
    // Baselines: the same case built one Observation per reading, in this run.
    bench_line(
        "bundle_fhir_kb",
        plain as f64 / 1e3,
        "kB",
        each_len as f64 / 1e3,
    );
    bench_line("bundle_build_ms", b_ms, "ms", each_ms);
    println!(
        "FHIR build + serialise p50   {:>10.0} µs",
        us(pct(&mut build, 0.5))
    );
    println!(
        "seal (HPKE + ES256) p50      {:>10.0} µs",
        us(pct(&mut sealt, 0.5))
    );
    println!(
        "verify + open p50            {:>10.0} µs",
        us(pct(&mut open, 0.5))
    );

    // Raw broker baseline with envelopes of the same size.

    // Drain: N queued envelopes, the daemon starts, the receiver receipts.
    let tmp = tempfile::tempdir().unwrap();
    let adir = tmp.path().join("edge");
    run(edge, &["init", "--data-dir", adir.to_str().unwrap()], None);
    let rdir = tmp.path().join("cloud");
    run(
        recv_bin,
        &[
            "init",
            "--data-dir",
            rdir.to_str().unwrap(),
            "--broker",
            &broker.url(),
        ],
        None,
    );
    let rcfg = rdir.join("receiver.toml");
    let rc = rcfg.to_str().unwrap();
    let acfg = adir.join("edge.toml");
    let ac = acfg.to_str().unwrap();
    let pem = tmp.path().join("app.pem");
    run(
        edge,
        &[
            "--config",
            ac,
            "keys",
            "export-public",
            "--out",
            pem.to_str().unwrap(),
        ],
        None,
    );
    run(
        recv_bin,
        &[
            "--config",
            rc,
            "appliances",
            "add",
            "hema3n-dev",
            pem.to_str().unwrap(),
        ],
        None,
    );
    let pubf = tmp.path().join("rpub.toml");
    run(
        recv_bin,
        &[
            "--config",
            rc,
            "export-public",
            "--out",
            pubf.to_str().unwrap(),
        ],
        None,
    );
    run(
        edge,
        &[
            "--config",
            ac,
            "keys",
            "import-receiver",
            pubf.to_str().unwrap(),
        ],
        None,
    );
    std::fs::create_dir_all(adir.join("edge.d")).unwrap();
    std::fs::write(
        adir.join("edge.d/50-bench.toml"),
        format!(
            // Rules-only triage (no model: the levels follow the vitals) and the API for the
            // pre-alert part; nothing else runs during the drain.
            "[ingest]\nenabled = false\n[triage]\nmodel_dir = \"/nonexistent/hema3n-models\"\ndebounce_ms = 0\n[api]\nlisten = \"127.0.0.1:0\"\n[sync]\ncloud_broker = \"{}\"\nallow_plaintext = true\ntelemetry_interval_secs = 0\nwindow = 512\n",
            broker.url()
        ),
    )
    .unwrap();
    add_medic(edge, ac);
    let (cfg, _) = Config::load(&acfg, true).unwrap();
    let keys = ReceiverKeys::load(&cfg).unwrap().unwrap();
    // The drain uses a typical short case (4 sets of vitals, ~40 KB of FHIR JSON).
    let small = case(4);
    let body = serde_json::to_vec(&fhir::build(&small, "b", fhir::Profile::Case, 1)).unwrap();
    println!("drain envelope plaintext {} B", body.len());
    {
        let mut db = Db::open(
            &cfg,
            Keyring::load(KeySources::from_env(&cfg.keys.dir)).unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        for _ in 0..n {
            db.enqueue_telemetry(|slot, signer| {
                let m = hema3n_edge::sync::envelope_meta("hema3n-dev", slot);
                seal::seal(&m, &body, &keys.hpke, signer).map_err(|e| e.to_string())
            })
            .unwrap();
        }
        println!(
            "queued {n} sealed envelopes in {:.1} s (one transaction each)",
            t.elapsed().as_secs_f64()
        );
    }
    let drain_size = body.len() + 200;
    let raw = rt.block_on(raw_publish(broker.port, n, drain_size));
    println!("raw QoS 1 publish ({drain_size} B)  {raw:>10.0} msg/s");
    let mut receiver = Command::new(recv_bin)
        .args(["--config", rc, "run"])
        .env("HEMA3N_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let the receiver subscribe before the backlog arrives (its first-ever subscription).
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let log = adir.join("daemon.log");
    let mut daemon = Command::new(edge)
        .args(["--config", ac, "run"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let db = Db::open(
        &cfg,
        Keyring::load(KeySources::from_env(&cfg.keys.dir)).unwrap(),
    )
    .unwrap();
    loop {
        let s = db.outbox_stats().unwrap();
        if s.receipted as usize >= n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "drain stalled at {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    println!("drain {n} bundles with receipts  {secs:>8.2} s  {rate:>10.0} bundles/s");
    bench_line("sync_drain_bundles_per_s", rate, "bundles/s", raw);
    let cpu = common::cpu_secs;
    println!(
        "CPU seconds during the run: daemon {:.1}, receiver {:.1}",
        cpu(daemon.id()),
        cpu(receiver.id())
    );

    prealerts(&rt, &db, &adir, &log, broker.port);

    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = receiver.kill();
    let _ = receiver.wait();
}

/// Pre-alert latency on the real daemon: a crew enters SpO2 91 % for a new case (ESI 2 by the
/// rules); from the stored triage to the sealed pre-alert queued in the outbox (the audit
/// entry written after sealing), and to the receiver's receipt applied. Against a raw QoS 1
/// publish → subscriber delivery of a payload of the pre-alert envelope's size, same broker.
fn prealerts(
    rt: &tokio::runtime::Runtime,
    db: &Db,
    adir: &std::path::Path,
    log: &std::path::Path,
    broker_port: u16,
) {
    use https::json_req;
    use serde_json::json;
    let n = if quick() { 5 } else { 50 };
    let port = broker::wait_api_port(log);
    let cert = adir.join("keys/api-cert.pem");
    let conn = db.raw_connection_for_tests();
    let q = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let mut cases = vec![];
    rt.block_on(async {
        let (mut s, _, token) = https::login(port, &cert, "medic1", PIN).await;
        for _ in 0..n {
            let c = json_req(&mut s, "POST", "/api/v1/cases", Some(&token), Some(json!({"chief_complaint": "bench"}))).await;
            let id = c["id"].as_str().unwrap().to_string();
            json_req(&mut s, "POST", &format!("/api/v1/cases/{id}/vitals"), Some(&token),
                Some(json!({"readings": [{"name": "spo2", "value": 91}]}))).await;
            // One at a time: the latency of a pre-alert, not of a queue of them.
            let t = Instant::now();
            while q(&format!("SELECT count(*) FROM outbox WHERE case_id = '{id}' AND kind = 'prealert' AND state = 'receipted'")) == 0 {
                assert!(t.elapsed() < Duration::from_secs(60), "pre-alert of {id} not receipted");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cases.push(id);
        }
    });
    let (mut queued, mut receipted) = (vec![], vec![]);
    for id in &cases {
        let triaged = q(&format!(
            "SELECT min(created_at) FROM triage_results WHERE case_id = '{id}' AND final_esi <= 2"
        ));
        let bid: String = conn
            .query_row(&format!("SELECT bundle_id FROM outbox WHERE case_id = '{id}' AND kind = 'prealert' ORDER BY seq LIMIT 1"), [], |r| r.get(0))
            .unwrap();
        let sealed = q(&format!(
            "SELECT ts FROM audit_log WHERE action = 'bundle.queue' AND resource = 'bundle/{bid}'"
        ));
        let receipt = q(&format!(
            "SELECT receipted_at FROM outbox WHERE bundle_id = '{bid}'"
        ));
        queued.push(Duration::from_millis((sealed - triaged).max(0) as u64));
        receipted.push(Duration::from_millis((receipt - triaged).max(0) as u64));
    }
    // Envelope size as sealed (receipted envelopes may already be purged after retention).
    let details: String = conn
        .query_row(
            "SELECT details FROM audit_log WHERE action = 'bundle.seal' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let size = serde_json::from_str::<serde_json::Value>(&details).unwrap()["bytes"]
        .as_u64()
        .unwrap() as usize;
    let mut raw = rt.block_on(raw_roundtrips(broker_port, n, size));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let raw_p99 = ms(pct(&mut raw, 0.99));
    println!(
        "## pre-alerts: {n} cases, envelope {size} B; raw publish → receive p50 {:.2} ms p99 {raw_p99:.2} ms",
        ms(pct(&mut raw, 0.5))
    );
    println!(
        "triage stored → pre-alert queued  p50 {:>6.1} ms",
        ms(pct(&mut queued, 0.5))
    );
    println!(
        "triage stored → receipt applied   p50 {:>6.1} ms",
        ms(pct(&mut receipted, 0.5))
    );
    bench_line(
        "prealert_queue_p99_ms",
        ms(pct(&mut queued, 0.99)),
        "ms",
        raw_p99,
    );
    bench_line(
        "prealert_receipt_p99_ms",
        ms(pct(&mut receipted, 0.99)),
        "ms",
        raw_p99,
    );
}

/// `n` QoS 1 publishes of `size` bytes, one at a time, each timed until a subscriber on the
/// same broker has it.
async fn raw_roundtrips(port: u16, n: usize, size: usize) -> Vec<Duration> {
    let mut so = MqttOptions::new("bench-rt-sub", "127.0.0.1", port);
    so.set_max_packet_size(1 << 24, 1 << 24);
    let (sub, mut sev) = AsyncClient::new(so, 64);
    sub.subscribe("bench/raw/rt", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Ok(Event::Incoming(Packet::SubAck(_))) = sev.poll().await {
            break;
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match sev.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    if tx.send(Instant::now()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut po = MqttOptions::new("bench-rt-pub", "127.0.0.1", port);
    po.set_max_packet_size(1 << 24, 1 << 24);
    let (publ, mut pev) = AsyncClient::new(po, 64);
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    let payload = vec![0x5a_u8; size];
    let mut out = vec![];
    // The first delivery sets up both sessions: not timed.
    publ.publish("bench/raw/rt", QoS::AtLeastOnce, false, payload.clone())
        .await
        .unwrap();
    rx.recv().await.unwrap();
    for _ in 0..n {
        let t = Instant::now();
        publ.publish("bench/raw/rt", QoS::AtLeastOnce, false, payload.clone())
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        out.push(got - t);
    }
    out
}
