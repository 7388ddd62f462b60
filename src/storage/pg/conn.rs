//! The shared store's connection: where the database is ([`PgSettings`]), opening a client
//! (TLS through `tls::PgTls`), the statements prepared on each connection, and how driver
//! errors map to the store's (transient, setup, retryable).

use std::time::Duration;

use postgres::{Client, NoTls, Statement};
use zeroize::Zeroizing;

use crate::storage::receiver::status_sql;
use crate::storage::receiver_audit as audit_sql;
use crate::storage::{Result, StoreError};

/// Where and how to reach the database.
pub struct PgSettings {
    /// Host name, IP address, or a Unix socket directory (starting with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// From the `receiver-pg.password` credential, when the server asks for one.
    pub password: Option<Zeroizing<String>>,
    /// `None`: no TLS (loopback or a Unix socket only; the caller checks).
    pub tls: Option<crate::tls::ClientConfig>,
    pub connect_timeout: Duration,
    /// This receiver's name, recorded with what it stores (`received_by`) and shown in
    /// `pg_stat_activity`.
    pub receiver_name: String,
}

/// A live connection and the statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) st: Stmts,
}

pub(super) struct Stmts {
    pub(super) key: Statement,
    pub(super) insert_bundle: Statement,
    pub(super) bundle_sha: Statement,
    pub(super) resend: Statement,
    pub(super) alarm: Statement,
    pub(super) prealert: Statement,
    pub(super) reject: Statement,
    pub(super) stored: Statement,
    pub(super) seen: Statement,
    pub(super) telemetry: Statement,
    pub(super) cp_known: Statement,
    pub(super) cp_insert: Statement,
}

/// Maps a driver error: the connection's loss is transient (the receiver backs off and
/// reconnects); a refused login is a setup error; anything else names what failed.
pub(super) fn pg_err(what: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |e| {
        let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
        let why = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            // The driver's message alone ("error performing TLS handshake") hides the cause
            // (an unknown issuer, a refused connection): name the whole chain.
            None => {
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(cause) = src {
                    why.push_str(&format!(": {cause}"));
                    src = cause.source();
                }
                why
            }
        };
        if code.starts_with("28") || code == "3D000" {
            StoreError::PostgresSetup(format!("{what}: {why}"))
        } else {
            StoreError::Postgres {
                what,
                why,
                sqlstate: code,
            }
        }
    }
}

pub(super) fn is_retryable(e: &StoreError) -> bool {
    // serialization_failure, deadlock_detected
    matches!(e, StoreError::Postgres { sqlstate, .. } if sqlstate == "40001" || sqlstate == "40P01")
}

/// Opens a connection with `s` (TLS when configured).
pub(super) fn open(s: &PgSettings) -> Result<Client> {
    let mut c = postgres::Config::new();
    c.host(&s.host)
        .port(s.port)
        .user(&s.user)
        .dbname(&s.dbname)
        .connect_timeout(s.connect_timeout)
        .application_name(&s.receiver_name);
    if let Some(p) = &s.password {
        c.password(p.as_bytes());
    }
    let r = match &s.tls {
        None => c
            .ssl_mode(postgres::config::SslMode::Disable)
            .connect(NoTls),
        Some(t) => c
            .ssl_mode(postgres::config::SslMode::Require)
            .connect(crate::tls::PgTls(t.clone())),
    };
    r.map_err(pg_err("connect"))
}

impl Conn {
    pub(super) fn prepare(mut client: Client) -> Result<Conn> {
        let mut p = |sql: &str| client.prepare(sql).map_err(pg_err("prepare"));
        let st = Stmts {
            key: p(
                "SELECT public_key, CASE WHEN previous_until > $2 THEN previous_key END \
                 FROM appliances WHERE id = $1 AND revoked_at IS NULL",
            )?,
            insert_bundle: p(
                "INSERT INTO bundles (appliance_id, bundle_id, seq, kind, envelope_sha256, created_at, \
                 received_at, received_by, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (appliance_id, bundle_id) DO NOTHING",
            )?,
            bundle_sha: p(
                "SELECT envelope_sha256 FROM bundles WHERE appliance_id = $1 AND bundle_id = $2",
            )?,
            resend: p(
                "UPDATE bundles SET resends = resends + 1 WHERE appliance_id = $1 AND bundle_id = $2",
            )?,
            alarm: p(
                "INSERT INTO alarms (raised_at, raised_by, kind, appliance_id, bundle_id, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )?,
            prealert: p(
                "INSERT INTO prealerts (appliance_id, bundle_id, case_id, replaces, created_at, \
                 received_at, summary) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )?,
            stored: p(status_sql::STORED)?,
            seen: p(status_sql::SEEN)?,
            telemetry: p(status_sql::TELEMETRY)?,
            cp_known: p(audit_sql::KNOWN)?,
            cp_insert: p(audit_sql::INSERT)?,
            reject: p(
                "INSERT INTO rejects (received_at, received_by, topic, appliance_id, code, message, \
                 envelope_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?,
        };
        Ok(Conn { client, st })
    }
}
