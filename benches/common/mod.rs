//! Helpers shared by the benchmarks: output format and raw SQLite/SQLCipher baselines.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use rusqlite::Connection;

/// Small sizes: asked for with `HEMA3N_BENCH_QUICK`, or implied when the binary runs under
/// `cargo test --all-targets` (only `cargo bench` passes `--bench`), where it is a smoke test.
pub fn quick() -> bool {
    std::env::var_os("HEMA3N_BENCH_QUICK").is_some() || !std::env::args().any(|a| a == "--bench")
}

/// `BENCH name value=… unit=… baseline=… ratio=…` (SYSTEM.md §8).
/// The development model-signing public key of the committed model (base64 SPKI).
pub fn dev_model_key() -> String {
    let pem = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-models/model-signing-dev.pub"),
    )
    .unwrap();
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

pub fn bench_line(name: &str, value: f64, unit: &str, baseline: f64) {
    println!(
        "BENCH {name} value={value:.3} unit={unit} baseline={baseline:.3} ratio={:.3}",
        value / baseline
    );
}

/// Runs `bin` with `args` (and `stdin` as one line of input), asserting success; its stdout.
pub fn run(bin: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{s}").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The PIN of the paramedic the benchmarks log in as.
pub const PIN: &str = "pin-7391";

/// Adds the paramedic `medic1` (PIN [`PIN`]) to the appliance configured at `config`.
pub fn add_medic(bin: &str, config: &str) {
    run(
        bin,
        &[
            "--config",
            config,
            "users",
            "add",
            "medic1",
            "--name",
            "Bench",
            "--role",
            "paramedic",
        ],
        Some(PIN),
    );
}

/// CPU seconds (user + system) a process has used so far (`/proc/PID/stat`, 100 Hz ticks).
pub fn cpu_secs(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = st
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn raw_conn(path: &std::path::Path, key: Option<&str>) -> Connection {
    let c = Connection::open(path).unwrap();
    if let Some(k) = key {
        c.execute_batch(&format!("PRAGMA key = \"x'{k}'\";"))
            .unwrap();
    }
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    c.execute_batch("PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;")
        .unwrap();
    c
}

/// Raw batched inserts of `n` rows of ~`row_bytes` bytes, 1000 per transaction; rows/s.
pub fn raw_inserts(c: &mut Connection, n: usize, row_bytes: usize) -> f64 {
    c.execute_batch("CREATE TABLE IF NOT EXISTS r (id INTEGER PRIMARY KEY, a BLOB, b BLOB)")
        .unwrap();
    let blob = vec![0x5au8; row_bytes / 2];
    let t = Instant::now();
    for chunk in 0..n / 1000 {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO r (id, a, b) VALUES (?1, ?2, ?3)")
                .unwrap();
            for i in 0..1000 {
                st.execute(((chunk * 1000 + i) as i64, &blob, &blob))
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// p99 of committing one 1000-row batch (fsync included) into a raw SQLCipher database.
pub fn raw_batch_commit_p99(c: &mut Connection, batches: usize) -> Duration {
    c.execute_batch("CREATE TABLE IF NOT EXISTS b (id INTEGER PRIMARY KEY, a BLOB)")
        .unwrap();
    let blob = vec![0x33u8; 64];
    let mut lat = Vec::with_capacity(batches);
    let mut id = 0i64;
    for _ in 0..batches {
        let t = Instant::now();
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO b (id, a) VALUES (?1, ?2)")
                .unwrap();
            for _ in 0..1000 {
                id += 1;
                st.execute((id, &blob)).unwrap();
            }
        }
        tx.commit().unwrap();
        lat.push(t.elapsed());
    }
    pct(&mut lat, 0.99)
}

/// `VmRSS` of a live process, KiB (`None` once it has gone).
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
