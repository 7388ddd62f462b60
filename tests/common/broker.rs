//! A real mosquitto broker on a free loopback port, with persistence, for one test.
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    extra: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("mosquitto is not installed: run ./scripts/test.sh, which installs it");
}

impl Broker {
    /// Anonymous broker (development setting).
    pub fn start() -> Self {
        Self::start_with("allow_anonymous true\n")
    }

    /// Broker with extra configuration lines (password_file, acl_file, …).
    pub fn start_with(extra: &str) -> Self {
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("HEMA3N_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping broker dir {}", dir.path().display());
        }
        let port = free_port();
        let child = spawn(dir.path(), port, extra);
        let b = Broker {
            port,
            dir,
            child,
            extra: extra.to_string(),
        };
        b.wait_ready();
        b
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops the broker (SIGTERM, persistence saved); `resume` starts it again.
    pub fn pause(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// Starts a paused broker again on the same port with the same persistence.
    pub fn resume(&mut self) {
        self.child = spawn(self.dir.path(), self.port, &self.extra);
        self.wait_ready();
    }

    /// Stops the broker (SIGTERM, persistence saved) and starts it again on the same port.
    pub fn restart(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), self.port, &self.extra);
        self.wait_ready();
    }
}

/// Started as root, mosquitto switches to user `mosquitto`, which cannot write the test's
/// private temp dir (persistence, log): keep root there.
fn user_line() -> &'static str {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let debug = if std::env::var_os("HEMA3N_TEST_BROKER_DEBUG").is_some() {
        "log_type all\n"
    } else {
        ""
    };
    if root {
        if debug.is_empty() {
            "user root\n"
        } else {
            "user root\nlog_type all\n"
        }
    } else {
        debug
    }
}

fn spawn(dir: &Path, port: u16, extra: &str) -> Child {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {d}/\nlog_dest file {d}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\nmax_inflight_messages 1000\nmax_queued_messages 1000000\n\
             message_size_limit 262144\nset_tcp_nodelay true\n{user}{extra}",
            d = dir.display(),
            user = user_line()
        ),
    )
    .unwrap();
    Command::new(mosquitto_bin())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API port a daemon logged (`api listening (https) addr=127.0.0.1:PORT`) in `log`.
pub fn wait_api_port(log: &Path) -> u16 {
    wait_for(30, "api listening", || {
        api_port_in(&std::fs::read_to_string(log).ok()?)
    })
}

/// The port of the last `api listening … 127.0.0.1:PORT` line in `log`.
pub fn api_port_in(log: &str) -> Option<u16> {
    let line = log.lines().rev().find(|l| l.contains("api listening"))?;
    let rest = line.split("127.0.0.1:").nth(1)?;
    rest.chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `secs` with `what`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns `want`; on timeout the panic names the last value seen.
pub fn wait_eq(secs: u64, what: &str, want: i64, mut f: impl FnMut() -> i64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = f();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: want {want}, last {got}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
