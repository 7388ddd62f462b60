//! Host benchmarks against raw baselines measured in the same run (SYSTEM.md §8):
//!
//! 1. Start → READY=1: the real daemon (store, ingest against a real broker, tablet API, model
//!    loaded and warmed, on a data directory and model files already in the page cache) spawned
//!    with a NOTIFY_SOCKET this bench owns; the clock stops at the READY=1 datagram. Baseline:
//!    spawn → exit of the same binary's `--version` (exec, dynamic loading, runtime start).
//!    `BENCH host_ready_ms` (p50; the p99 is printed too).
//! 2. Idle RSS without the model: `VmRSS` of the rules-only daemon 3 s after READY. Baseline: the
//!    same binary idle at a prompt (`users add` waiting for its PIN on stdin: code mapped,
//!    nothing started). `BENCH host_idle_rss_mib`.

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/broker.rs"]
mod broker;
mod common;
use common::{bench_line, pct, quick};

const EDGE: &str = env!("CARGO_BIN_EXE_hema3n-edge");

fn run(args: &[&str]) {
    let out = Command::new(EDGE).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `VmRSS` of a live process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    common::rss_kib(pid).expect("VmRSS in /proc/PID/status") as f64 / 1024.0
}

/// Waits until `pid` sits in read(0, …): from `/proc/PID/syscall` (number, then arguments).
fn wait_blocked_on_stdin(pid: u32) {
    let read_nr = if cfg!(target_arch = "aarch64") {
        "63"
    } else {
        "0"
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let mut f = s.split_whitespace();
        if f.next() == Some(read_nr) && f.next() == Some("0x0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} never blocked on stdin ({s:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("daemon did not stop within 20 s of SIGTERM");
}

/// Spawns `run` with a fresh NOTIFY_SOCKET; returns the child and spawn → READY=1.
fn start_until_ready(config: &str, dir: &std::path::Path) -> (Child, Duration) {
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t = Instant::now();
    let mut child = Command::new(EDGE)
        .args(["--config", config, "run"])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no READY=1 within 30 s (see the daemon's config): {e}");
            }
        };
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            return (child, t.elapsed());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let rounds = if quick() { 2 } else { 20 };
    let broker = broker::Broker::start_with("allow_anonymous true\n");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    run(&["init", "--data-dir", dir.to_str().unwrap()]);
    let model = match std::env::var("HEMA3N_ORT_LIB") {
        Ok(lib) => format!(
            "[triage]\nonnxruntime_library = \"{lib}\"\nmodel_dir = \"{}/edge-models/hema3n-core\"\nmodel_signing_keys = [\"{}\"]\n",
            env!("CARGO_MANIFEST_DIR"),
            common::dev_model_key()
        ),
        Err(_) => {
            println!("HEMA3N_ORT_LIB not set: start → READY is measured rules-only");
            String::new()
        }
    };
    std::fs::create_dir_all(dir.join("edge.d")).unwrap();
    let base = format!(
        "[api]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nbroker = \"{}\"\n[dbus]\nfollow_network_manager = false\n",
        broker.url()
    );
    let dropin = dir.join("edge.d/50-bench.toml");
    let config = dir.join("edge.toml");
    let config = config.to_str().unwrap();

    // Baseline: the same binary's start and exit.
    let mut raw = Vec::new();
    for _ in 0..rounds.max(5) {
        let t = Instant::now();
        let out = Command::new(EDGE).arg("--version").output().unwrap();
        raw.push(t.elapsed());
        assert!(out.status.success());
    }

    // Start → READY with the model (one unmeasured start warms the page cache).
    std::fs::write(&dropin, format!("{base}{model}")).unwrap();
    let (c, _) = start_until_ready(config, &dir);
    stop(c);
    let mut ready = Vec::new();
    for _ in 0..rounds {
        let (c, d) = start_until_ready(config, &dir);
        ready.push(d);
        stop(c);
    }

    // Idle RSS without the model.
    std::fs::write(&dropin, &base).unwrap();
    let mut rss = Vec::new();
    for _ in 0..rounds.min(5) {
        let (c, _) = start_until_ready(config, &dir);
        std::thread::sleep(Duration::from_secs(3));
        rss.push(rss_mib(c.id()));
        stop(c);
    }
    let mut prompt = Command::new(EDGE)
        .args([
            "--config",
            config,
            "users",
            "add",
            "rss-probe",
            "--name",
            "Probe",
            "--role",
            "emt",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_blocked_on_stdin(prompt.id());
    let prompt_rss = rss_mib(prompt.id());
    drop(prompt.stdin.take());
    let _ = prompt.wait();

    let ready_p50 = pct(&mut ready, 0.5);
    let ready_p99 = pct(&mut ready, 0.99);
    let raw_p50 = pct(&mut raw, 0.5);
    rss.sort_by(f64::total_cmp);
    let rss_max = *rss.last().unwrap();
    println!(
        "start → READY=1 ({} rounds{}): p50 {:.1} ms, p99 {:.1} ms | raw `--version` spawn → exit p50 {:.1} ms",
        rounds,
        if model.is_empty() {
            ", rules-only"
        } else {
            ", model loaded and warmed"
        },
        ms(ready_p50),
        ms(ready_p99),
        ms(raw_p50)
    );
    println!(
        "idle RSS without the model: max {:.1} MiB over {} starts | same binary idle at a prompt {:.1} MiB",
        rss_max,
        rss.len(),
        prompt_rss
    );
    bench_line("host_ready_ms", ms(ready_p50), "ms", ms(raw_p50));
    bench_line("host_idle_rss_mib", rss_max, "MiB", prompt_rss);
}
