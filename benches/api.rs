//! Tablet API benchmarks against raw baselines measured in the same run (SYSTEM.md §8).
//!
//! 1. Main read routes (case view, case list, vitals history) of the real daemon over HTTPS
//!    under 50 concurrent keep-alive clients, against a raw axum hello-world served over the
//!    same TLS stack in this process: `BENCH api_read_p99_ms`, `BENCH api_read_rps`.
//!    The audit path alone: 50 clients on the case list (one small audited read each) against
//!    the raw 4 KiB write + fdatasync of the same disk: `BENCH api_audited_read_p99_ms`,
//!    `BENCH api_audited_read_rps`.
//! 2. Vitals arrival → new triage on the tablet's live stream (SSE): a monitor publishes one
//!    pack, the clock stops when the stream delivers the triage it caused; against a raw
//!    broker QoS 1 publish → subscriber delivery: `BENCH triage_stream_p99_ms`.
//! 3. A 20 MiB document uploaded from the tablet in 1 MiB pieces (each committed, encrypted in
//!    256 KiB chunks, before its answer) until stored, against writing and fsyncing the same
//!    pieces to a plain file on the same disk: `BENCH attachment_ingest_mb_per_s`; the daemon's
//!    resident memory over idle while it takes the upload, against the file's size (what holding
//!    it whole would cost): `BENCH attachment_upload_rss_mib`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;
#[path = "../tests/common/https.rs"]
mod https;
use common::{PIN, add_medic, bench_line, pct, quick, run};
use https::{connect, json_req, request};

const EDGE: &str = env!("CARGO_BIN_EXE_hema3n-edge");
const CLIENTS: usize = 50;

/// A daemon in a temp dir; killed on drop.
struct Daemon {
    child: std::process::Child,
    dir: std::path::PathBuf,
    port: u16,
    _tmp: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(dropin: &str) -> Daemon {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        run(EDGE, &["init", "--data-dir", dir.to_str().unwrap()], None);
        std::fs::create_dir_all(dir.join("edge.d")).unwrap();
        std::fs::write(
            dir.join("edge.d/50-bench.toml"),
            // All bench clients share one address (loopback): lift the per-source cap that
            // protects the crew from one LAN host.
            format!(
                "[api]\nlisten = \"127.0.0.1:0\"\nmax_concurrent = 512\nmax_concurrent_per_source = 512\n{dropin}"
            ),
        )
        .unwrap();
        let cfg = dir.join("edge.toml");
        let c = cfg.to_str().unwrap();
        add_medic(EDGE, c);
        run(EDGE, &["--config", c, "devices", "add", "mon-1"], None);
        let log = dir.join("daemon.log");
        let child = Command::new(EDGE)
            .args(["--config", c, "run"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let port = broker::wait_api_port(&log);
        Daemon {
            child,
            dir,
            port,
            _tmp: tmp,
        }
    }
}

/// `CLIENTS` clients loop over `paths` for `secs`: (requests/s, latencies).
async fn load(
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    token: Option<String>,
    paths: Vec<String>,
    secs: f64,
) -> (f64, Vec<Duration>) {
    let mut set = tokio::task::JoinSet::new();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    for c in 0..CLIENTS {
        let mut s = connect(port, tls).await;
        let (paths, token) = (paths.clone(), token.clone());
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while Instant::now() < end {
                let p = &paths[i % paths.len()];
                i += 1;
                let t = Instant::now();
                let (st, _) = request(&mut s, "GET", p, token.as_deref(), None).await;
                assert_eq!(st, 200, "{p}");
                lat.push(t.elapsed());
            }
            lat
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.unwrap());
    }
    (all.len() as f64 / start.elapsed().as_secs_f64(), all)
}

/// The raw axum hello-world over the same TLS stack.
async fn hello_world(cert: &std::path::Path, key: &[u8]) -> u16 {
    let acceptor = hema3n_edge::tls::server_acceptor(cert, key).unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// `n` sequential 4 KiB writes each followed by fdatasync, in `dir`: their latencies.
fn raw_fsync(dir: &std::path::Path, n: usize) -> Vec<Duration> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("bench-fsync.tmp");
    let f = std::fs::File::create(&path).unwrap();
    let block = [0x5au8; 4096];
    let lat = (0..n)
        .map(|i| {
            let t = Instant::now();
            f.write_all_at(&block, (i % 64) as u64 * 4096).unwrap();
            f.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    drop(f);
    let _ = std::fs::remove_file(path);
    lat
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Raw broker QoS 1 publish → subscriber delivery latency, sequential, p99.
async fn raw_broker_p99(port: u16, n: usize) -> Duration {
    let (sub, mut sev) = AsyncClient::new(MqttOptions::new("bench-raw-sub", "127.0.0.1", port), 64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match sev.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    let _ = tx.send(Instant::now());
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = tx.send(Instant::now());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    sub.subscribe("bench/raw", QoS::AtLeastOnce).await.unwrap();
    rx.recv().await.unwrap();
    let (publ, mut pev) =
        AsyncClient::new(MqttOptions::new("bench-raw-pub", "127.0.0.1", port), 64);
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        publ.publish("bench/raw", QoS::AtLeastOnce, false, vec![b'x'; 300])
            .await
            .unwrap();
        let got = rx.recv().await.unwrap();
        lat.push(got.duration_since(t));
    }
    pct(&mut lat, 0.99)
}

/// Resident memory of process `pid` (VmRSS), KiB; 0 once it has gone.
fn rss_kib(pid: u32) -> u64 {
    common::rss_kib(pid).unwrap_or(0)
}

/// A document the size of a scanned form: PDF header and trailer around incompressible bytes.
fn document(bytes: usize) -> Vec<u8> {
    let mut v = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while v.len() < bytes - 16 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(bytes - 7);
    v.extend_from_slice(b"\n%%EOF\n");
    v
}

/// Sends `doc` as a new attachment of `case` in `piece`-byte pieces until stored.
async fn upload(s: &mut https::Sender, token: &str, case: &str, doc: &[u8], piece: usize) {
    let a = json_req(
        s,
        "POST",
        &format!("/api/v1/cases/{case}/attachments"),
        Some(token),
        Some(json!({"kind": "signed_form", "caption": "bench", "size": doc.len()})),
    )
    .await;
    let path = format!(
        "/api/v1/cases/{case}/attachments/{}/content",
        a["id"].as_str().unwrap()
    );
    let mut state = a["state"].as_str().unwrap().to_string();
    for (i, p) in doc.chunks(piece).enumerate() {
        let req = hyper::Request::patch(&path)
            .header("host", "localhost")
            .header("territory-id", "default")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/offset+octet-stream")
            .header("upload-offset", (i * piece).to_string())
            .body(Full::new(Bytes::copy_from_slice(p)))
            .unwrap();
        s.ready().await.unwrap();
        let resp = s.send_request(req).await.unwrap();
        let st = resp.status();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&b));
        state = serde_json::from_slice::<Value>(&b).unwrap()["state"]
            .as_str()
            .unwrap()
            .into();
    }
    assert_eq!(state, "stored");
}

/// The same pieces written and fsynced one by one to a plain file in `dir`.
fn raw_file_write(dir: &std::path::Path, doc: &[u8], piece: usize) -> Duration {
    use std::io::Write;
    let path = dir.join("bench-raw-upload.bin");
    let t = Instant::now();
    let mut f = std::fs::File::create(&path).unwrap();
    for p in doc.chunks(piece) {
        f.write_all(p).unwrap();
        f.sync_data().unwrap();
    }
    let took = t.elapsed();
    std::fs::remove_file(&path).unwrap();
    took
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async_main());
}

async fn async_main() {
    let secs = if quick() { 1.5 } else { 10.0 };
    let samples = if quick() { 15 } else { 200 };
    let mqtt = broker::Broker::start_with("allow_anonymous true\n");
    let ort = std::env::var("HEMA3N_ORT_LIB").ok();
    let triage = match &ort {
        Some(lib) => format!(
            "[triage]\nonnxruntime_library = \"{lib}\"\nmodel_dir = \"{}/edge-models/hema3n-core\"\nmodel_signing_keys = [\"{}\"]\ndebounce_ms = 1\ndeescalate_hold_secs = 0\n",
            env!("CARGO_MANIFEST_DIR"),
            common::dev_model_key()
        ),
        None => "[triage]\ndebounce_ms = 1\ndeescalate_hold_secs = 0\n".into(),
    };
    let d = Daemon::start(&format!("{triage}[mqtt]\nbroker = \"{}\"\n", mqtt.url()));
    let cert = d.dir.join("keys/api-cert.pem");
    let (mut s, tls, token) = https::login(d.port, &cert, "medic1", PIN).await;
    let t = Some(token.as_str());
    let p = json_req(
        &mut s,
        "POST",
        "/api/v1/patients",
        t,
        Some(json!({"first_name": "Bench", "last_name": "Patient", "date_of_birth": "1960-01-01"})),
    )
    .await;
    let c = json_req(
        &mut s,
        "POST",
        "/api/v1/cases",
        t,
        Some(json!({"patient_id": p["id"], "chief_complaint": "chest pain"})),
    )
    .await;
    let case = c["id"].as_str().unwrap().to_string();
    // A realistic record: 30 min of one reading per vital every 10 s.
    let now = hema3n_edge::model::now_ms();
    for k in 0..18 {
        let readings: Vec<Value> = (0..10)
            .flat_map(|j| {
                let at = now - (180 - (k * 10 + j)) * 10_000;
                ["heart_rate", "resp_rate", "spo2", "sbp"]
                    .iter()
                    .map(move |n| json!({"name": n, "value": 80 + (j % 5), "t_ms": at}))
            })
            .take(32)
            .collect();
        json_req(
            &mut s,
            "POST",
            &format!("/api/v1/cases/{case}/vitals"),
            t,
            Some(json!({ "readings": readings })),
        )
        .await;
    }

    // 1. Read routes vs raw hello-world.
    let key = std::fs::read(d.dir.join("keys/api-tls.key")).unwrap();
    let hw = hello_world(&cert, &key).await;
    let (raw_rps, mut raw_lat) = load(hw, &tls, None, vec!["/".into()], secs).await;
    let paths = vec![
        format!("/api/v1/cases/{case}"),
        "/api/v1/cases".to_string(),
        format!("/api/v1/cases/{case}/vitals"),
    ];
    // (A mark for profilers attaching to the daemon: the audited reads start now.)
    eprintln!("api: audited read load running for {secs} s");
    let (rps, mut lat) = load(d.port, &tls, Some(token.clone()), paths, secs).await;
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    let (rp50, rp99) = (pct(&mut raw_lat, 0.5), pct(&mut raw_lat, 0.99));
    println!("api reads, {CLIENTS} clients over HTTPS, {secs} s each:");
    println!(
        "  {:<34} {:>10} {:>10} {:>10}",
        "", "req/s", "p50 ms", "p99 ms"
    );
    println!(
        "  {:<34} {:>10.0} {:>10.2} {:>10.2}",
        "raw axum hello-world (same TLS)",
        raw_rps,
        ms(rp50),
        ms(rp99)
    );
    println!(
        "  {:<34} {:>10.0} {:>10.2} {:>10.2}",
        "case view + list + vitals (audited)",
        rps,
        ms(p50),
        ms(p99)
    );
    bench_line("api_read_p99_ms", ms(p99), "ms", ms(rp99));
    bench_line("api_read_rps", rps, "req/s", raw_rps);

    // 1b. The audit path itself: the case list (one small audited read) against the disk's raw
    // fsync, the physical limit of a durable audit entry (concurrent reads share one).
    let mut fsync = raw_fsync(&d.dir, if quick() { 50 } else { 500 });
    let (fp50, fp99) = (pct(&mut fsync, 0.5), pct(&mut fsync, 0.99));
    let (lrps, mut llat) = load(
        d.port,
        &tls,
        Some(token.clone()),
        vec!["/api/v1/cases".into()],
        secs,
    )
    .await;
    let (lp50, lp99) = (pct(&mut llat, 0.5), pct(&mut llat, 0.99));
    println!(
        "  {:<34} {:>10.0} {:>10.2} {:>10.2}",
        "case list only (audited)",
        lrps,
        ms(lp50),
        ms(lp99)
    );
    println!(
        "  {:<34} {:>10} {:>10.2} {:>10.2}",
        "raw 4 KiB write + fdatasync",
        "",
        ms(fp50),
        ms(fp99)
    );
    bench_line("api_audited_read_p99_ms", ms(lp99), "ms", ms(fp99));
    bench_line("api_audited_read_rps", lrps, "req/s", raw_rps);

    // 2. Vitals arrival → triage on the live stream. (A fresh connection: the daemon closes
    // keep-alive connections left idle during the load above.)
    let mut s = connect(d.port, &tls).await;
    json_req(
        &mut s,
        "POST",
        &format!("/api/v1/cases/{case}/devices"),
        t,
        Some(json!({"device_id": "mon-1", "attach_unbound": false})),
    )
    .await;
    let mut sse = connect(d.port, &tls).await;
    let req = hyper::Request::get(format!("/api/v1/cases/{case}/stream"))
        .header("host", "localhost")
        .header("territory-id", "default")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sse.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (etx, mut erx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut body = resp.into_body();
    tokio::spawn(async move {
        let mut buf = String::new();
        while let Some(f) = body.frame().await {
            let Ok(f) = f else { return };
            if let Some(d) = f.data_ref() {
                buf.push_str(&String::from_utf8_lossy(d));
                while let Some(i) = buf.find("\n\n") {
                    let block: String = buf.drain(..i + 2).collect();
                    if let Some(ev) = block.lines().find_map(|l| l.strip_prefix("event:")) {
                        let _ = etx.send((ev.trim().to_string(), Instant::now()));
                    }
                }
            }
        }
    });
    let (dev, mut dev_ev) = AsyncClient::new(MqttOptions::new("mon-1", "127.0.0.1", mqtt.port), 64);
    tokio::spawn(async move { while dev_ev.poll().await.is_ok() {} });
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let at = hema3n_edge::model::now_ms();
        let pack = json!([
            {"bn": "mon-1:", "bt": at as f64 / 1000.0, "n": "heart_rate", "u": "beat/min", "v": 90 + (i % 40)},
            {"n": "resp_rate", "u": "1/min", "v": 18 + (i % 10)},
            {"n": "spo2", "u": "%", "v": 95 - (i % 6)},
            {"n": "sbp", "u": "mmHg", "v": 120 - (i % 30)},
        ]);
        while erx.try_recv().is_ok() {}
        let t0 = Instant::now();
        dev.publish(
            "hema3n/v1/devices/mon-1/vitals",
            QoS::AtLeastOnce,
            false,
            pack.to_string(),
        )
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (ev, at) = erx.recv().await.unwrap();
                if ev == "triage" {
                    return at;
                }
            }
        })
        .await
        .expect("a triage on the stream within 10 s");
        lat.push(got.duration_since(t0));
    }
    let raw = raw_broker_p99(mqtt.port, samples).await;
    let p99 = pct(&mut lat, 0.99);
    println!(
        "vitals arrival → triage on the live stream ({samples} packs, model {}):",
        if ort.is_some() {
            "on"
        } else {
            "off: rules only"
        }
    );
    println!(
        "  p50 {:.2} ms, p99 {:.2} ms; raw broker publish → delivery p99 {:.2} ms",
        ms(pct(&mut lat, 0.5)),
        ms(p99),
        ms(raw)
    );
    bench_line("triage_stream_p99_ms", ms(p99), "ms", ms(raw));

    // 3. Attachment upload → committed and encrypted, against a raw file write; memory.
    let mib = if quick() { 4 } else { 20 };
    let doc = document(mib << 20);
    let piece = 1 << 20;
    let raw = raw_file_write(&d.dir, &doc, piece);
    let mut s = connect(d.port, &tls).await;
    let pid = d.child.id();
    let idle = rss_kib(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        })
    };
    let t0 = Instant::now();
    upload(&mut s, &token, &case, &doc, piece).await;
    let took = t0.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(rss_kib(pid));
    let mb = doc.len() as f64 / 1e6;
    let over = peak.saturating_sub(idle) as f64 / 1024.0;
    println!("attachment upload, {mib} MiB in 1 MiB pieces over HTTPS (each piece committed):");
    println!(
        "  daemon {:.1} MB/s ({:.0} ms); raw write + fsync of the same pieces {:.1} MB/s",
        mb / took.as_secs_f64(),
        ms(took),
        mb / raw.as_secs_f64()
    );
    println!(
        "  daemon RSS idle {:.1} MiB, peak {:.1} MiB during the upload (+{over:.1} MiB)",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    bench_line(
        "attachment_ingest_mb_per_s",
        mb / took.as_secs_f64(),
        "MB/s",
        mb / raw.as_secs_f64(),
    );
    bench_line("attachment_upload_rss_mib", over, "MiB", mib as f64);
}
