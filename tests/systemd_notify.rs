//! systemd's side of the notify protocol, played by the test: a NOTIFY_SOCKET it owns.
//! READY after the store opens, WATCHDOG while healthy, no WATCHDOG while storage is wedged (a
//! second process holds the database write lock), STOPPING on SIGTERM; exit 0 / 1 / 78.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Appliance;
use common::broker::Broker;

struct Notify {
    sock: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl Notify {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Notify {
            sock,
            _dir: dir,
            path,
        }
    }

    /// Next datagram (fails the test after 20 s of silence).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .expect("no notify message within 20 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    /// Reads until a message satisfies `f`; returns every message seen, that one last.
    fn until(&self, f: impl Fn(&str) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.next();
            let done = f(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

#[test]
fn ready_watchdog_wedge_and_stopping_follow_the_protocol() {
    let a = Appliance::init_with(&[(
        "30-notify.toml",
        "[ingest]\nenabled = false\n[audit]\ncheckpoint_every_secs = 1\n[store]\nbusy_timeout_ms = 60000\n[daemon]\nhealth_interval_ms = 5000\n",
    )]);
    let n = Notify::new();
    let mut d = a
        .cmd(&["run"])
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = n.until(|m| m.contains("READY=1"));
    assert!(
        first.last().unwrap().contains("STATUS=running: store open"),
        "{first:?}"
    );
    assert!(
        !first[..first.len() - 1]
            .iter()
            .any(|m| m.contains("WATCHDOG=1")),
        "no WATCHDOG before READY"
    );
    n.until(|m| m.contains("WATCHDOG=1"));

    // Wedge storage: another process takes the write lock; the daemon's next write blocks.
    let db = a.open();
    db.raw_connection_for_tests()
        .execute_batch("BEGIN IMMEDIATE")
        .unwrap();
    n.until(|m| m.contains("STATUS=degraded"));
    // While degraded, the watchdog is not fed: three further health rounds, no WATCHDOG.
    let mut degraded_rounds = 0;
    while degraded_rounds < 3 {
        let m = n.next();
        assert!(
            !m.contains("WATCHDOG=1"),
            "WATCHDOG sent while storage is wedged: {m}"
        );
        if m.contains("STATUS=degraded") {
            degraded_rounds += 1;
        }
    }
    db.raw_connection_for_tests()
        .execute_batch("ROLLBACK")
        .unwrap();
    drop(db);
    n.until(|m| m.contains("WATCHDOG=1"));

    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(d.id().to_string())
        .status()
        .unwrap();
    n.until(|m| m.contains("STOPPING=1"));
    let started = Instant::now();
    assert_eq!(d.wait().unwrap().code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "orderly shutdown within the deadline"
    );
}

#[test]
fn a_failing_critical_task_exits_1_and_a_setup_error_exits_78() {
    let broker = Broker::start();
    let a = Appliance::with_broker(&broker.url(), "");
    a.ok(&["devices", "add", "dev-1"]);
    let n = Notify::new();
    let log = a.tmp.path().join("exit1.log");
    let mut d = a
        .cmd(&["run"])
        .env("NOTIFY_SOCKET", &n.path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    n.until(|m| m.contains("READY=1"));
    common::broker::wait_for(20, "subscription", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("subscribed to device topics")
            .then_some(())
    });
    // The table the committer writes to disappears under it: a runtime storage failure.
    a.open()
        .raw_connection_for_tests()
        .execute_batch("DROP TABLE observations")
        .unwrap();
    let mut dev = common::mqtt::TestClient::connect(broker.port, "dev-1", None);
    dev.publish(
        "hema3n/v1/devices/dev-1/vitals",
        common::mqtt::hr_pack(hema3n_edge::model::now_ms(), 80),
    );
    dev.flush();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = d.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = d.kill();
            panic!(
                "daemon did not exit after a storage failure:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("critical task `ingest-committer` failed"),
        "{err}"
    );
    n.until(|m| m.contains("STOPPING=1"));

    // A setup error (missing key): 78, and never READY.
    std::fs::remove_file(a.key_dir().join("audit.key")).unwrap();
    let n2 = Notify::new();
    n2.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let out = a
        .cmd(&["run"])
        .env("NOTIFY_SOCKET", &n2.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let mut buf = [0u8; 512];
    assert!(
        n2.sock.recv(&mut buf).is_err(),
        "no READY after a setup error"
    );
}
