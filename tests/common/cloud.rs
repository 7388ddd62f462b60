//! The "cloud" side for tests: a throwaway PKI made with the openssl CLI, a mosquitto with a
//! mutual-TLS listener, and the real `hema3n-receiver` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::Appliance;
use super::broker::Broker;

/// CA, broker certificate (127.0.0.1) and client certificates, in one temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI (installed by scripts/test.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                // Longer than keys.certificate_warn_days: a test certificate near its expiry
                // would (rightly) raise the certificate_expiring alarm.
                "400",
                "-subj",
                "/CN=hema3n test CA",
            ],
        );
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        let pki = Pki { dir };
        pki.issue("server", "127.0.0.1", Some("server.ext"));
        pki
    }

    /// Issues `name.crt`/`name.key` (PKCS#8 PEM) signed by the CA.
    pub fn issue(&self, name: &str, cn: &str, ext: Option<&str>) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "400",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(e) = ext {
            args.push("-extfile".into());
            args.push(e.into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(d, &a);
    }

    pub fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// A mosquitto with a TLS listener that requires a client certificate from this CA, plus a
    /// plain loopback listener (returned port) for test publishers.
    pub fn broker(&self) -> (Broker, u16) {
        let plain = super::broker::free_port();
        let b = Broker::start_with(&format!(
            "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\nmessage_size_limit 16777216\nlistener {plain} 127.0.0.1\n",
            self.path("ca.crt").display(),
            self.path("server.crt").display(),
            self.path("server.key").display()
        ));
        (b, plain)
    }
}

pub fn tls_url(b: &Broker) -> String {
    format!("mqtts://127.0.0.1:{}", b.port)
}

pub fn receiver_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hema3n-receiver"))
}

/// An initialised receiver data dir.
pub struct Receiver {
    pub tmp: tempfile::TempDir,
}

impl Receiver {
    /// `hema3n-receiver init` against `broker`, with a client certificate from `pki`.
    pub fn init(pki: &Pki, broker: &Broker) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let r = Receiver { tmp };
        let out = Command::new(receiver_bin())
            .args(["init", "--data-dir"])
            .arg(r.tmp.path())
            .args([
                "--broker",
                &tls_url(broker),
                "--receiver-id",
                "test-cloud",
                "--ca-file",
            ])
            .arg(pki.path("ca.crt"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        pki.issue("receiver", "receiver-1", Some("client.ext"));
        std::fs::copy(pki.path("receiver.crt"), r.tmp.path().join("receiver.crt")).unwrap();
        let key = r.tmp.path().join("keys/receiver-client.key");
        std::fs::copy(pki.path("receiver.key"), &key).unwrap();
        set_private(&key);
        let cfg = r.tmp.path().join("receiver.toml");
        let mut text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("reconnect_max_ms = 10000", "reconnect_max_ms = 1000")
            // Several receivers run at once: each takes a free port (logged at start).
            .replace(
                "metrics_listen = \"127.0.0.1:9464\"",
                "metrics_listen = \"127.0.0.1:0\"",
            );
        text.push_str(&format!(
            "\nclient_cert = \"receiver.crt\"\nclient_id = \"receiver-{}\"\n",
            std::process::id()
        ));
        // Top-level keys must precede tables; receiver.toml has none.
        std::fs::write(&cfg, text).unwrap();
        r
    }

    pub fn config(&self) -> PathBuf {
        self.tmp.path().join("receiver.toml")
    }

    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new(receiver_bin())
            .arg("--config")
            .arg(self.config())
            .args(args)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args);
        assert!(
            o.status.success(),
            "hema3n-receiver {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn spawn(&self) -> Proc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("receiver.log"))
            .unwrap();
        Proc(
            Command::new(receiver_bin())
                .arg("--config")
                .arg(self.config())
                .arg("run")
                .env("HEMA3N_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("receiver.log")).unwrap_or_default()
    }

    /// The port of the running receiver's metrics and health endpoint (from its log).
    pub fn metrics_port(&self) -> u16 {
        super::broker::wait_for(30, "metrics endpoint listening", || {
            let log = self.log();
            let line = log
                .lines()
                .rfind(|l| l.contains("metrics and health endpoint listening"))?;
            let at = line.split("listen=").nth(1)?.split_whitespace().next()?;
            at.rsplit(':').next()?.parse().ok()
        })
    }

    /// `GET path` on the metrics endpoint: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port())).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    }

    /// This receiver on `pg` (the shared store), under `client_id` when given.
    pub fn use_postgres(&self, pg: &super::pg::Pg, client_id: Option<&str>) {
        if let Some(id) = client_id {
            let text = std::fs::read_to_string(self.config()).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("client_id"))
                .unwrap()
                .to_string();
            let text = text.replace(&line, &format!("client_id = \"{id}\""));
            std::fs::write(self.config(), text).unwrap();
        }
        pg.configure_receiver(&self.config(), &self.tmp.path().join("keys"));
    }

    /// Another receiver of this one's deployment on `pg`: the same keys, its own client id.
    pub fn sibling(
        &self,
        pki: &Pki,
        cloud: &Broker,
        pg: &super::pg::Pg,
        client_id: &str,
    ) -> Receiver {
        let r = Receiver::init(pki, cloud);
        for k in [
            "receiver-hpke.key",
            "receiver-signing.p8",
            "receiver-db.key",
        ] {
            std::fs::copy(
                self.tmp.path().join("keys").join(k),
                r.tmp.path().join("keys").join(k),
            )
            .unwrap();
        }
        r.use_postgres(pg, Some(client_id));
        r
    }

    /// Starts `run` and waits until it has subscribed — or, restarted on a session the broker
    /// kept, reconnected to it (the subscription is part of that session, and the broker hands
    /// over the envelopes queued for it before the SUBACK, so "subscribed" may come only after a
    /// long backlog). Restarts append to the same log, so lines are counted past the old ones.
    pub fn start(&self) -> Proc {
        let count = |log: &str| {
            log.lines()
                .filter(|l| {
                    l.contains("subscribed to bundles")
                        || (l.contains("connected to cloud broker")
                            && l.contains("session_present=true"))
                })
                .count()
        };
        let before = count(&self.log());
        let mut p = self.spawn();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let log = self.log();
            assert!(p.running(), "the receiver exited: {log}");
            if count(&log) > before {
                return p;
            }
            if std::time::Instant::now() > deadline {
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "the receiver did not reach the broker within 30 s; its log ends:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["stats"])).unwrap()
    }

    /// Exchanges keys with `a`: registers its signing key here, installs ours there.
    pub fn pair(&self, a: &Appliance) {
        let pem = a.tmp.path().join("appliance.pem");
        a.ok(&["keys", "export-public", "--out", pem.to_str().unwrap()]);
        let id = a.config().appliance_id;
        self.ok(&["appliances", "add", &id, pem.to_str().unwrap()]);
        let pubf = self.tmp.path().join("receiver-public.toml");
        self.ok(&["export-public", "--out", pubf.to_str().unwrap()]);
        a.ok(&["keys", "import-receiver", pubf.to_str().unwrap()]);
    }
}

pub fn set_private(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes the sync drop-in for an appliance talking to `cloud` with a client certificate from
/// `pki` (keys must be paired first, see [`Receiver::pair`]).
pub fn enable_sync(a: &Appliance, pki: &Pki, cloud: &Broker, extra: &str) {
    pki.issue("appliance", &a.config().appliance_id, Some("client.ext"));
    let key = a.key_dir().join("cloud-client.key");
    std::fs::copy(pki.path("appliance.key"), &key).unwrap();
    set_private(&key);
    let cert = a.tmp.path().join("appliance.crt");
    std::fs::copy(pki.path("appliance.crt"), &cert).unwrap();
    let text = format!(
        "[sync]\ncloud_broker = \"{}\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\nretry_interval_secs = 1\nreceipt_timeout_secs = 3\ntelemetry_interval_secs = 0\n{extra}",
        tls_url(cloud),
        pki.path("ca.crt").display(),
        cert.display()
    );
    std::fs::create_dir_all(a.dir.join("edge.d")).unwrap();
    std::fs::write(a.dir.join("edge.d/30-sync.toml"), text).unwrap();
}

/// An appliance on `broker` (with the `extra` drop-in TOML) that syncs over mTLS to a fresh cloud
/// broker and a paired receiver: (appliance, receiver, cloud broker, PKI). The receiver is not
/// started.
pub fn synced_appliance(broker: &Broker, extra: &str) -> (Appliance, Receiver, Broker, Pki) {
    let pki = Pki::new();
    let (cloud, _) = pki.broker();
    let receiver = Receiver::init(&pki, &cloud);
    let a = Appliance::with_broker(&broker.url(), extra);
    receiver.pair(&a);
    enable_sync(&a, &pki, &cloud, "");
    (a, receiver, cloud, pki)
}

/// The header of a case bundle envelope from `appliance` with sequence number `seq` and a
/// fresh bundle id.
pub fn envelope_meta(appliance: &str, seq: u64) -> hema3n_edge::crypto::seal::EnvelopeMeta {
    hema3n_edge::crypto::seal::EnvelopeMeta {
        kind: hema3n_edge::crypto::seal::BundleKind::Bundle,
        bundle_id: *uuid::Uuid::now_v7().as_bytes(),
        seq,
        created_at_ms: 1_800_000_000_000,
        appliance_id: appliance.into(),
    }
}

/// A child process SIGKILLed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    pub fn stop(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .unwrap();
        self.0.wait().unwrap()
    }
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Validates FHIR bundle files with the independent validator (tests/fhir_validate.py on
/// fhir.resources 6.1.0, installed into .tools/fhir by scripts/test.sh); returns its report.
pub fn fhir_validate(files: &[PathBuf]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tools = root.join(".tools/fhir");
    assert!(
        tools.join("fhir").exists(),
        "FHIR validator missing: run ./scripts/test.sh (installs fhir.resources into .tools/fhir)"
    );
    let out = Command::new("python3")
        .arg(root.join("tests/fhir_validate.py"))
        .args(files)
        .env("PYTHONPATH", &tools)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "FHIR validation failed:\n{report}");
    report
}
