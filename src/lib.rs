//! HEMA3N Edge: the in-ambulance appliance daemon and its CLI.
//!
//! Codemap (see README.md for the invariants):
//! - [`config`]: base TOML + drop-ins, validated; no secrets.
//! - [`model`]: plain domain types.
//! - [`crypto`]: the only user of `ring`: field encryption, key hierarchy, blind indexes, signing.
//! - [`storage`]: the only user of `rusqlite`: SQLCipher store, migrations, repos, audit chain.
//! - [`systemd`]: sd_notify, watchdog, journald detection.
//! - [`app`]: the only place that spawns long-running tasks; `run` wires everything together.
//! - [`cli`]: subcommands other than `run`.

pub mod app;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod ingest;
pub mod model;
pub mod storage;
pub mod systemd;
pub mod triage;
