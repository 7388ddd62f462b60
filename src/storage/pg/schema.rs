//! The shared store's schema, versioned like the appliance's: migration N runs once, in one
//! transaction that records it in `schema_migrations`, under an advisory lock so receivers
//! starting together migrate once; a database newer than this receiver is refused.

use postgres::Client;

use super::pg_err;
use crate::storage::{Result, StoreError};

/// Lock key of the migration advisory lock ("hema3n-r" as an integer).
const MIGRATION_LOCK: i64 = 0x6865_6d61_336e_2d72;

/// Migrations in order; version N is `MIGRATIONS[N - 1]`. Never edit one that has shipped.
///
/// PHI columns (`bytea`, noted) hold field ciphertexts under the appliance's data key; the
/// rest (ids, sequence numbers, kinds, sizes, hashes, times, reject codes) is not PHI.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE appliances (
    id            text   PRIMARY KEY,
    public_key    text   NOT NULL,
    registered_at bigint NOT NULL,
    revoked_at    bigint
);
-- One data key per appliance, wrapped by the receivers' key (receiver-db.key).
CREATE TABLE data_keys (
    appliance_id text   PRIMARY KEY,
    key_id       bigint NOT NULL,
    kek_id       text   NOT NULL,
    wrapped      bytea  NOT NULL,
    created_at   bigint NOT NULL
);
CREATE TABLE bundles (
    appliance_id    text   NOT NULL,
    bundle_id       text   NOT NULL,
    seq             bigint NOT NULL,
    kind            text   NOT NULL,
    envelope_sha256 bytea  NOT NULL,
    created_at      bigint NOT NULL,
    received_at     bigint NOT NULL,
    received_by     text   NOT NULL,
    resends         bigint NOT NULL DEFAULT 0,
    body            bytea  NOT NULL, -- PHI: FHIR JSON or an attachment part
    PRIMARY KEY (appliance_id, bundle_id)
);
CREATE INDEX bundles_by_seq ON bundles (appliance_id, seq);
CREATE INDEX bundles_by_arrival ON bundles (received_at);
CREATE TABLE rejects (
    id              bigserial PRIMARY KEY,
    received_at     bigint NOT NULL,
    received_by     text   NOT NULL,
    topic           text   NOT NULL,
    appliance_id    text,
    code            text   NOT NULL,
    message         text   NOT NULL,
    envelope_sha256 bytea  NOT NULL
);
CREATE TABLE alarms (
    id           bigserial PRIMARY KEY,
    raised_at    bigint NOT NULL,
    raised_by    text   NOT NULL,
    kind         text   NOT NULL,
    appliance_id text   NOT NULL,
    bundle_id    text   NOT NULL,
    detail       text   NOT NULL,
    UNIQUE (kind, appliance_id, bundle_id, detail)
);
CREATE TABLE prealerts (
    appliance_id text   NOT NULL,
    bundle_id    text   NOT NULL,
    case_id      text   NOT NULL,
    replaces     text,
    created_at   bigint NOT NULL,
    received_at  bigint NOT NULL,
    summary      bytea  NOT NULL, -- PHI
    PRIMARY KEY (appliance_id, bundle_id)
);
CREATE INDEX prealerts_by_arrival ON prealerts (received_at);
CREATE TABLE attachments (
    appliance_id  text    NOT NULL,
    attachment_id text    NOT NULL,
    case_id       text    NOT NULL,
    kind          text    NOT NULL,
    media_type    text    NOT NULL,
    size          bigint  NOT NULL,
    sha256        text    NOT NULL,
    parts         integer NOT NULL,
    caption       bytea, -- PHI
    filename      bytea, -- PHI
    created_at    bigint  NOT NULL,
    state         text    NOT NULL CHECK (state IN ('partial', 'complete', 'corrupt')),
    completed_at  bigint,
    PRIMARY KEY (appliance_id, attachment_id)
);
CREATE TABLE attachment_parts (
    appliance_id  text    NOT NULL,
    attachment_id text    NOT NULL,
    part          integer NOT NULL,
    bundle_id     text    NOT NULL,
    "offset"      bigint  NOT NULL,
    length        bigint  NOT NULL,
    data_at       bigint  NOT NULL,
    PRIMARY KEY (appliance_id, attachment_id, part)
);
CREATE TABLE appliance_status (
    appliance_id          text   PRIMARY KEY,
    last_seen_at          bigint NOT NULL,
    last_seq              bigint NOT NULL,
    received              bigint NOT NULL,
    telemetry_at          bigint,
    outbox_queued         bigint,
    open_alarms           bigint,
    oldest_unreceipted_at bigint
);
"#,
    // v2: the signed audit checkpoints case bundles carried, per appliance, for continuity
    // (`storage::receiver::audit_sql`).
    r#"
CREATE TABLE audit_checkpoints (
    appliance_id text   NOT NULL,
    cp_seq       bigint NOT NULL,
    hash         bytea  NOT NULL,
    env_seq      bigint NOT NULL,
    bundle_id    text   NOT NULL,
    PRIMARY KEY (appliance_id, cp_seq, bundle_id)
);
CREATE INDEX audit_checkpoints_by_env ON audit_checkpoints (appliance_id, env_seq);
"#,
    // v3: a second key accepted until `previous_until` while an appliance's signing key
    // changes.
    r#"
ALTER TABLE appliances ADD COLUMN previous_key text, ADD COLUMN previous_until bigint;
"#,
];

/// Brings the database to the newest schema this receiver knows.
pub(super) fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client.transaction().map_err(pg_err("migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_err("migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version integer PRIMARY KEY, applied_at bigint NOT NULL)",
    )
    .map_err(pg_err("migration"))?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .map_err(pg_err("migration"))?
        .get(0);
    let supported = MIGRATIONS.len() as i32;
    if found > supported {
        return Err(StoreError::PostgresSetup(format!(
            "the database is at schema version {found}, newer than this receiver knows \
             ({supported}): upgrade the receiver"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql).map_err(|e| {
            StoreError::PostgresSetup(format!("migration to schema version {version}: {e}"))
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::model::now_ms()],
        )
        .map_err(pg_err("migration"))?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    tx.commit().map_err(pg_err("migration"))
}
