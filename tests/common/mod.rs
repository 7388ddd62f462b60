//! Test harness: temporary appliance data directories driven through the real binary.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hema3n_edge::config::Config;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::storage::Db;

pub const BIN: &str = env!("CARGO_BIN_EXE_hema3n-edge");

/// A data directory created by `hema3n-edge init`, removed on drop.
/// The line `spawn_daemon` writes into `daemon.log` before each run.
const START_MARK: &str = "--- test harness: daemon starting ---\n";

pub struct Appliance {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Appliance {
    pub fn init() -> Self {
        Self::init_with(&[])
    }

    /// `init`, then drop-ins (file name, TOML text) into `edge.d/`.
    pub fn init_with(dropins: &[(&str, &str)]) -> Self {
        let mut tmp = tempfile::tempdir().unwrap();
        if std::env::var_os("HEMA3N_TEST_KEEP").is_some() {
            tmp.disable_cleanup(true);
            eprintln!("keeping appliance dir {}", tmp.path().display());
        }
        let dir = tmp.path().join("state");
        let out = Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every daemon of a test run serves its API on a free port (logged), never on 8443.
        std::fs::create_dir_all(dir.join("edge.d")).unwrap();
        std::fs::write(
            dir.join("edge.d").join("00-test-api.toml"),
            "[api]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        for (name, text) in dropins {
            std::fs::create_dir_all(dir.join("edge.d")).unwrap();
            std::fs::write(dir.join("edge.d").join(name), text).unwrap();
        }
        Appliance { tmp, dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("edge.toml")
    }

    pub fn key_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("edge.db")
    }

    /// A command for the real binary with this appliance's config.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(self.config_path())
            .args(args)
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "debug");
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed ({:?}):\n{}\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path(), true).unwrap().0
    }

    /// Opens the store in-process (as a second process would).
    pub fn open(&self) -> Db {
        let cfg = self.config();
        let keys = Keyring::load(KeySources::from_env(&cfg.keys.dir)).unwrap();
        Db::open(&cfg, keys).unwrap()
    }

    /// `debug soak --count n`; returns the (patient, case) ids reported committed.
    pub fn soak(&self, n: u64, last_name: &str) -> Vec<(String, String)> {
        parse_committed(&self.ok(&[
            "debug",
            "soak",
            "--count",
            &n.to_string(),
            "--last-name",
            last_name,
        ]))
    }
}

/// Rewrites the audit log from entry `from` on as someone holding the database key would: each
/// entry's hash recomputed from its (possibly edited) fields under its own chain version, its
/// MAC too when `audit_key` is given, and the head moved to the new last hash. The stored
/// checkpoints are left as they were.
pub fn rechain(db: &Db, from: i64, audit_key: Option<&[u8]>) {
    use hema3n_edge::storage::audit::{EntryFields, entry_hash_as, entry_mac};
    let c = db.raw_connection_for_tests();
    let rows: Vec<(i64, i64, i64, [String; 7])> = c
        .prepare("SELECT seq, ts, chain, actor, role, action, resource, outcome, territory, details FROM audit_log WHERE seq >= ?1 ORDER BY seq")
        .unwrap()
        .query_map([from], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev: Vec<u8> = c
        .query_row(
            "SELECT prev_hash FROM audit_log WHERE seq = ?1",
            [from],
            |r| r.get(0),
        )
        .unwrap();
    for (seq, ts, chain, f) in rows {
        let h = entry_hash_as(chain, &prev, &EntryFields::of(seq, ts, &f));
        c.execute(
            "UPDATE audit_log SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            (&prev, &h[..], seq),
        )
        .unwrap();
        if let Some(k) = audit_key {
            c.execute(
                "UPDATE audit_log SET mac = ?1 WHERE seq = ?2",
                (&entry_mac(k, &h)[..], seq),
            )
            .unwrap();
        }
        prev = h.to_vec();
    }
    c.execute(
        "UPDATE audit_head SET seq = (SELECT max(seq) FROM audit_log), hash = ?1",
        [&prev],
    )
    .unwrap();
}

pub fn parse_committed(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("committed ")?.split(' ');
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

/// Every regular file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A small xorshift so that kill points vary but a failure can be replayed from the seed
/// (the seed must not be 0).
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// True if `needle` occurs in `hay` (bytes).
/// Hex SHA-256, as the API, the receiver and the bundles name files.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(hema3n_edge::crypto::sha256(b))
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub mod api;
pub mod broker;
pub mod cloud;
pub mod https;
pub mod mqtt;
pub mod pg;
pub mod record;
pub mod schema;
pub mod trail;

impl Appliance {
    /// An appliance whose daemon talks to `broker_url`, with extra drop-in TOML.
    pub fn with_broker(broker_url: &str, extra: &str) -> Self {
        let text = format!("[mqtt]\nbroker = \"{broker_url}\"\n{extra}");
        Self::init_with(&[("20-mqtt.toml", &text)])
    }

    /// An appliance on `broker` whose device `pump-1` may publish without rate limit.
    pub fn streaming(broker: &broker::Broker) -> Self {
        let a = Self::with_broker(
            &broker.url(),
            "[ingest]\ndevice_rate_per_sec = 1000000.0\ndevice_burst = 1000000.0\n",
        );
        a.ok(&["devices", "add", "pump-1"]);
        a
    }

    /// `simulate`: `count` readings of `scenario` from the monitors `mon-*` (20 ms apart).
    pub fn simulate_monitors(&self, broker: &broker::Broker, scenario: &str, count: u64) {
        self.ok(&[
            "simulate",
            "--broker",
            &broker.url(),
            "--device-prefix",
            "mon-",
            "--scenario",
            scenario,
            "--count",
            &count.to_string(),
            "--interval-ms",
            "20",
            "--scenario-secs",
            "1",
        ]);
    }

    /// Readings stored from `pump-1`.
    pub fn pump_readings(&self) -> i64 {
        self.query_i64("SELECT count(*) FROM observations WHERE device_id = 'pump-1'")
    }

    /// Starts `hema3n-edge run` in the background (stderr to `daemon.log` in the temp dir).
    pub fn spawn_daemon(&self) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("daemon.log"))
            .unwrap();
        // Marks where this run's lines begin, so `api_port` never reads an earlier run's port.
        (&log).write_all(START_MARK.as_bytes()).unwrap();
        Daemon(
            self.cmd(&["run"])
                .env(
                    "RUST_LOG",
                    std::env::var("HEMA3N_TEST_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    /// Starts the daemon and waits until it is subscribed to the device topics.
    pub fn start_daemon(&self) -> Daemon {
        let before = self
            .daemon_log()
            .matches("subscribed to device topics")
            .count();
        let mut d = self.spawn_daemon();
        broker::wait_for(30, "daemon subscribed to device topics", || {
            assert!(d.running(), "daemon exited:\n{}", self.daemon_log());
            (self
                .daemon_log()
                .matches("subscribed to device topics")
                .count()
                > before)
                .then_some(())
        });
        d
    }

    /// The API port from the latest daemon run's `api listening (https) addr=127.0.0.1:PORT`
    /// (waits for it: the API may bind after the daemon subscribed to device topics).
    pub fn api_port(&self) -> u16 {
        broker::wait_for(30, "api listening", || {
            let log = self.daemon_log();
            let run = log.rsplit(START_MARK).next()?;
            broker::api_port_in(run)
        })
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("daemon.log")).unwrap_or_default()
    }

    /// Scalar query on the store (as a second process would read it).
    pub fn query_i64(&self, sql: &str) -> i64 {
        let db = self.open();
        db.raw_connection_for_tests()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    /// Open (not cleared) appliance alarms of `kind`.
    pub fn open_alarms(&self, kind: &str) -> i64 {
        self.query_i64(&format!(
            "SELECT count(*) FROM alarms WHERE kind = '{kind}' AND cleared_at IS NULL"
        ))
    }

    /// Waits until exactly one alarm of `kind` is open; returns its detail.
    pub fn raised_alarm(&self, kind: &str) -> String {
        broker::wait_eq(30, &format!("{kind} raised"), 1, || self.open_alarms(kind));
        self.query_text(&format!(
            "SELECT detail FROM alarms WHERE kind = '{kind}' AND cleared_at IS NULL"
        ))
    }

    /// Text scalar query on the store.
    pub fn query_text(&self, sql: &str) -> String {
        let db = self.open();
        db.raw_connection_for_tests()
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }
}

/// A daemon process that is SIGKILLed if the test ends (or panics) without stopping it.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
    /// SIGTERM and wait: the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        self.0.wait().unwrap()
    }
    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The ONNX Runtime library from the pinned wheel (scripts/test.sh installs it), or
/// `$HEMA3N_ORT_LIB`.
pub fn ort_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("HEMA3N_ORT_LIB") {
        return p.into();
    }
    let capi = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/model/onnxruntime/capi");
    std::fs::read_dir(&capi)
        .ok()
        .and_then(|rd| {
            rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("libonnxruntime.so.")
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "ONNX Runtime library not found in {}: run ./scripts/test.sh",
                capi.display()
            )
        })
}

/// The committed model directory.
pub fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-models/hema3n-core")
}

/// The development model-signing public key that signed the committed model (base64 SPKI, as
/// `triage.model_signing_keys` takes it).
pub fn dev_model_key() -> String {
    let pem = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("edge-models/model-signing-dev.pub"),
    )
    .unwrap();
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// A `[triage]` section that loads the committed model with `library`, plus `extra` lines.
pub fn triage_toml(library: &str, extra: &str) -> String {
    format!(
        "[triage]\nonnxruntime_library = \"{library}\"\nmodel_dir = \"{}\"\nmodel_signing_keys = [\"{}\"]\n{extra}",
        model_dir().display(),
        dev_model_key()
    )
}

/// The text of a PDF as poppler's `pdftotext -layout` reads it (an independent reader).
pub fn pdf_text(pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("doc.pdf");
    std::fs::write(&f, pdf).unwrap();
    let out = Command::new("pdftotext")
        .arg("-layout")
        .arg(&f)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) is installed by scripts/test.sh");
    assert!(
        out.status.success(),
        "pdftotext: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first page of a PDF rendered by poppler's `pdftoppm` to `png` (without the extension
/// poppler adds).
pub fn pdf_first_page_png(pdf: &[u8], png: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("doc.pdf");
    std::fs::write(&f, pdf).unwrap();
    let st = Command::new("pdftoppm")
        .args(["-png", "-r", "80", "-singlefile", "-f", "1", "-l", "1"])
        .arg(&f)
        .arg(png.with_extension(""))
        .status()
        .expect("pdftoppm (poppler-utils) is installed by scripts/test.sh");
    assert!(st.success() && png.exists(), "pdftoppm failed");
}

/// A real `w`×`h` RGB PNG with a `tEXt` chunk naming an author (metadata to strip).
pub fn png_image(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut e = png::Encoder::new(&mut out, w, h);
        e.set_color(png::ColorType::Rgb);
        e.set_depth(png::BitDepth::Eight);
        e.add_text_chunk("Author".into(), "Dr Jane Sentinel".into())
            .unwrap();
        let mut wr = e.write_header().unwrap();
        let data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        wr.write_image_data(&data).unwrap();
    }
    out
}

/// Runs `tests/media_check.py` (pydicom and Pillow from `.tools/media`): independent makers and
/// checkers of photos, PDFs and DICOM objects. Returns its standard output.
pub fn media_py(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = root.join(".tools/media");
    assert!(
        tools.join("pydicom").is_dir() && tools.join("PIL").is_dir(),
        "pydicom/Pillow missing: run ./scripts/test.sh (installs them into .tools/media)"
    );
    let out = Command::new("python3")
        .arg(root.join("tests/media_check.py"))
        .args(args)
        .env("PYTHONPATH", &tools)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "media_check.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces the tablet's certificate and key with a self-signed pair valid until `until_ms`.
pub fn tablet_cert_until(a: &Appliance, until_ms: i64) {
    let day = hema3n_edge::model::iso8601_ms(until_ms);
    let ymd: Vec<i32> = day[..10].split('-').map(|s| s.parse().unwrap()).collect();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(ymd[0], ymd[1] as u8, ymd[2] as u8);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    std::fs::write(a.key_dir().join("api-cert.pem"), cert.pem()).unwrap();
    let k = a.key_dir().join("api-tls.key");
    std::fs::remove_file(&k).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    cloud::set_private(&k);
}
