//! HEMA3N Edge: the in-ambulance appliance daemon and its CLI.
//!
//! Codemap (README.md has the same map and the invariants tidy enforces):
//! - [`app`]: the supervisor — the only place that spawns long-running tasks and creates the
//!   channels between them; `serve(config, shutdown)`, staged shutdown, watchdog health.
//! - [`config`]: base TOML + drop-ins, validated; no secrets.
//! - [`model`]: plain domain types (people, patient, case); [`vocab`]: the vital-sign
//!   vocabulary and its one value check.
//! - [`crypto`]: the only user of `ring` and `hpke`: field encryption, key hierarchy, blind
//!   indexes, signing, sealed bundle envelopes and receipts.
//! - [`storage`]: the only user of `rusqlite`: one file per aggregate, the owner thread.
//! - [`ingest`]: field devices over MQTT (Contract A).
//! - [`triage`]: rules engine and the ONNX model (the only user of `ort`).
//! - [`sync`]: FHIR bundles, the sealer, the forwarder state machine (Contract C).
//! - [`media`]: attachment content by its bytes: type, completeness, metadata stripping, the
//!   DICOM PHI split (the only user of `dicom-*`), thumbnails.
//! - [`handoff`]: the hospital handoff (MIST/SBAR) and its PDF (the only user of `krilla`).
//! - [`receiver`]: the cloud receiver behind `hema3n-receiver`.
//! - [`api`]: the crew tablet's HTTPS API and UI (the only user of `axum` and `hyper`).
//! - [`events`]: the live-event bus (ingest, triage, alarms → tablet streams, D-Bus signals).
//! - [`dbus`]: `org.hema3n.Edge1` and the NetworkManager follower (the only user of `zbus`).
//! - [`disk`]: the disk-pressure alarm; [`host`]: free disk space (the only user of `libc`).
//! - [`lifecycle`]: key ages and certificate expiry (check, `/metrics`, their alarms).
//! - [`compliance`]: the HIPAA §164.312 self-check (`check --compliance`, `/metrics`, the
//!   supervisor view).
//! - [`backoff`]: the one reconnect back-off; [`report`]: the one error-chain printer.
//! - [`tls`]: the only user of `rustls`; [`systemd`]: sd_notify, watchdog, journald.
//! - [`cli`]: the command line and every subcommand other than `run`.

pub mod api;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod crypto;
pub mod dbus;
pub mod disk;
pub mod events;
pub mod handoff;
pub mod host;
pub mod ingest;
pub mod lifecycle;
pub mod media;
pub mod model;
pub mod receiver;
pub mod report;
pub mod storage;
pub mod sync;
pub mod systemd;
pub mod tls;
pub mod triage;
pub mod vocab;
