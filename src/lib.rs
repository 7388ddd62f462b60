//! HEMA3N Edge: the in-ambulance appliance daemon and its CLI.
//!
//! Codemap (see README.md for the invariants):
//! - [`config`]: base TOML + drop-ins, validated; no secrets.
//! - [`model`]: plain domain types.
//! - [`crypto`]: the only user of `ring` and `hpke`: field encryption, key hierarchy, blind
//!   indexes, signing, sealed bundle envelopes and receipts.
//! - [`storage`]: the only user of `rusqlite`: SQLCipher store, migrations, repos, audit chain.
//! - [`ingest`]: field devices over MQTT (Contract A).
//! - [`triage`]: rules engine and the ONNX model (the only user of `ort`).
//! - [`sync`]: FHIR bundles, the outbox forwarder and custody receipts (Contract C).
//! - [`receiver`]: the cloud receiver behind `hema3n-receiver`.
//! - [`tls`]: the only user of `rustls`.
//! - [`host`]: free disk space (the only user of `libc`).
//! - [`systemd`]: sd_notify, watchdog, journald detection.
//! - [`app`]: the only place that spawns long-running tasks; `run` wires everything together.
//! - [`cli`]: subcommands other than `run`.

pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod dbus;
pub mod disk;
pub mod events;
pub mod host;
pub mod ingest;
pub mod model;
pub mod receiver;
pub mod report;
pub mod storage;
pub mod sync;
pub mod systemd;
pub mod tls;
pub mod triage;
pub mod vocab;
