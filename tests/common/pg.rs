//! A real PostgreSQL cluster for one test: `initdb` into a temp dir and `pg_ctl` on a free
//! loopback port, as a non-root user (`nobody` when the tests run as root), with password
//! (SCRAM) authentication over TCP; stopped and removed on drop. Nothing assumes a system
//! service: Debian's server binaries are used directly (`scripts/test.sh` installs them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::broker::free_port;

/// The role and database the receivers use, and its password (a test credential).
pub const USER: &str = "hema3n_receiver";
pub const DB: &str = "hema3n";
pub const PASSWORD: &str = "test-only-pg-password";

pub struct Pg {
    pub port: u16,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    running: bool,
    /// Extra server options (TLS).
    opts: String,
}

/// The server binaries' directory: `$HEMA3N_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HEMA3N_PG_BIN") {
        return d.into();
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse().ok()?;
            let b = e.path().join("bin");
            b.join("initdb").exists().then_some((v, b))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, b)| b)
        .expect("PostgreSQL server binaries missing: run ./scripts/test.sh, which installs them")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Pg {
    /// A fresh cluster with the receivers' role (password-protected) and database.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = Pg {
            port: free_port(),
            dir,
            bin: bin_dir(),
            running: false,
            opts: String::new(),
        };
        let pwfile = pg.dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        std::fs::create_dir(pg.dir.path().join("sock")).unwrap();
        if is_root() {
            // The server refuses to run as root: hand the directory to `nobody`.
            let st = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(pg.dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown of the cluster dir failed");
        }
        let out = pg
            .as_owner("initdb")
            .args([
                "--no-locale",
                "--encoding=UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--username",
                USER,
                "--pwfile",
            ])
            .arg(&pwfile)
            .arg("-D")
            .arg(pg.data())
            .output()
            .unwrap();
        assert_ok("initdb", &out);
        let mut pg = pg;
        pg.start_server();
        let out = pg
            .as_owner("createdb")
            .args(["-h"])
            .arg(pg.dir.path().join("sock"))
            .args(["-p", &pg.port.to_string(), "-U", USER, DB])
            .output()
            .unwrap();
        assert_ok("createdb", &out);
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server tool run as the cluster's owner.
    fn as_owner(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
                .arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Starts the server (waiting until it accepts connections).
    pub fn start_server(&mut self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=50{}",
            self.port,
            self.dir.path().join("sock").display(),
            self.opts
        );
        let out = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-l"])
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .unwrap();
        assert_ok("pg_ctl start", &out);
        self.running = true;
    }

    /// Stops the server at once (connections are cut; nothing committed is lost).
    pub fn stop_server(&mut self) {
        let out = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .unwrap();
        assert_ok("pg_ctl stop", &out);
        self.running = false;
    }

    /// Restarts the server with TLS (`cert`/`key` PEM) required for every TCP connection.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        self.stop_server();
        let (c, k) = (
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        );
        std::fs::copy(cert, &c).unwrap();
        std::fs::copy(key, &k).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Only TLS over TCP (the Unix socket stays for the harness's own tools).
        std::fs::write(
            self.data().join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "nobody:nogroup"])
                .arg(self.dir.path())
                .status()
                .unwrap();
            assert!(st.success());
        }
        self.opts = format!(
            " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            c.display(),
            k.display()
        );
        self.start_server();
    }

    /// psql over TCP without TLS: whether the server let it in.
    pub fn plaintext_login_works(&self) -> bool {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .arg(format!(
                "host=127.0.0.1 port={} user={USER} dbname={DB} sslmode=disable",
                self.port
            ))
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Switches the receiver configuration at `config` to this cluster (`store = "postgres"`
    /// and its `[postgres]` section) and installs the password credential in `keys_dir`.
    pub fn configure_receiver(&self, config: &Path, keys_dir: &Path) {
        let text = std::fs::read_to_string(config).unwrap();
        assert!(text.contains("store = \"sqlcipher\"\n"), "{text}");
        let text = text.replace("store = \"sqlcipher\"\n", "store = \"postgres\"\n");
        std::fs::write(config, format!("{text}{}", self.receiver_section())).unwrap();
        self.install_password(keys_dir);
    }

    /// The `[postgres]` section of a receiver using this cluster (TCP on loopback, password
    /// from the credential, no TLS: loopback only).
    fn receiver_section(&self) -> String {
        format!(
            "\n[postgres]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{USER}\"\ndbname = \"{DB}\"\ntls = false\nconnect_timeout_secs = 5\n",
            self.port
        )
    }

    /// Writes the password credential into a receiver's keys directory.
    fn install_password(&self, keys_dir: &Path) {
        let p = keys_dir.join("receiver-pg.password");
        std::fs::write(&p, format!("{PASSWORD}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// One SQL statement through psql (as the receivers' role over TCP); rows as `a|b` lines.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                DB,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert_ok("psql", &out);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The whole database as `pg_dump` writes it (plain SQL, data included).
    pub fn dump(&self) -> Vec<u8> {
        let out = Command::new(self.bin.join("pg_dump"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                DB,
            ])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert_ok("pg_dump", &out);
        out.stdout
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .as_owner("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}
