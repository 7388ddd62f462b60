//! Test harness: temporary appliance data directories driven through the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hema3n_edge::config::Config;
use hema3n_edge::crypto::keyring::{KeySources, Keyring};
use hema3n_edge::storage::Db;

pub const BIN: &str = env!("CARGO_BIN_EXE_hema3n-edge");

/// A data directory created by `hema3n-edge init`, removed on drop.
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let out = Command::new(BIN).args(["init", "--data-dir"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "init failed: {}", String::from_utf8_lossy(&out.stderr));
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
        c.arg("--config").arg(self.config_path()).args(args).env_remove("CREDENTIALS_DIRECTORY").env("RUST_LOG", "debug");
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
        parse_committed(&self.ok(&["debug", "soak", "--count", &n.to_string(), "--last-name", last_name]))
    }
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

/// True if `needle` occurs in `hay` (bytes).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
