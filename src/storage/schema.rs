//! Versioned migrations (`PRAGMA user_version`). Append new steps; never edit a released one.
//!
//! Every PHI column is a BLOB holding a field ciphertext (`crypto::field`); `bi_*` columns hold
//! blind indexes. Plain columns carry only ids, codes, states and times.

/// Migration steps; index + 1 is the schema version they produce.
pub const MIGRATIONS: &[&str] = &[
    // v1: the foundation data model.
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

-- Territory key-encryption key versions known to this database (the keys live in credentials).
CREATE TABLE key_versions (
    territory   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    key_id      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER,
    invocations INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (territory, version)
) STRICT;

-- Per-case / per-patient data keys, wrapped by a territory key. wrapped IS NULL = crypto-erased.
CREATE TABLE data_keys (
    id           INTEGER PRIMARY KEY,
    territory    TEXT    NOT NULL,
    kek_version  INTEGER NOT NULL,
    wrapped      BLOB,
    owner        TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    destroyed_at INTEGER,
    invocations  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX data_keys_by_kek ON data_keys (territory, kek_version) WHERE wrapped IS NOT NULL;

CREATE TABLE patients (
    id            TEXT    PRIMARY KEY,
    territory     TEXT    NOT NULL,
    dk_id         INTEGER NOT NULL REFERENCES data_keys (id),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    first_name    BLOB,
    last_name     BLOB,
    date_of_birth BLOB,
    ssn           BLOB,
    email         BLOB,
    phone         BLOB,
    address       BLOB,
    insurance     BLOB,
    mrn           BLOB,
    sex           BLOB,
    bi_last_name  BLOB,
    bi_dob        BLOB,
    bi_mrn        BLOB
) STRICT;
CREATE INDEX patients_bi_last_name ON patients (territory, bi_last_name);
CREATE INDEX patients_bi_dob ON patients (territory, bi_dob);
CREATE INDEX patients_bi_mrn ON patients (territory, bi_mrn);

CREATE TABLE cases (
    id              TEXT    PRIMARY KEY,
    territory       TEXT    NOT NULL,
    patient_id      TEXT    REFERENCES patients (id),
    dk_id           INTEGER NOT NULL REFERENCES data_keys (id),
    status          TEXT    NOT NULL CHECK (status IN ('open', 'handed_off', 'closed')),
    created_at      INTEGER NOT NULL,
    created_by      TEXT    NOT NULL,
    closed_at       INTEGER,
    erased_at       INTEGER,
    chief_complaint BLOB,
    mechanism       BLOB,
    onset           BLOB
) STRICT;
CREATE INDEX cases_by_territory ON cases (territory, status, created_at);

-- Field devices. holding_dk_id encrypts readings that arrive while the device is unbound.
CREATE TABLE devices (
    id              TEXT    PRIMARY KEY,
    kind            TEXT    NOT NULL DEFAULT 'monitor',
    territory       TEXT    NOT NULL,
    registered_at   INTEGER NOT NULL,
    removed_at      INTEGER,
    last_seen_at    INTEGER,
    last_vitals_at  INTEGER,
    presence        TEXT    NOT NULL DEFAULT 'unknown' CHECK (presence IN ('unknown', 'online', 'offline')),
    bound_case      TEXT    REFERENCES cases (id),
    bound_at        INTEGER,
    holding_dk_id   INTEGER REFERENCES data_keys (id),
    credential_hash TEXT
) STRICT;
CREATE INDEX devices_bound ON devices (bound_case) WHERE bound_case IS NOT NULL;

-- Alarms (device silent, disk pressure, …). Open while cleared_at IS NULL.
CREATE TABLE alarms (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL,
    case_id    TEXT,
    device_id  TEXT,
    raised_at  INTEGER NOT NULL,
    cleared_at INTEGER,
    acked_at   INTEGER,
    acked_by   TEXT,
    detail     TEXT    NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX alarms_open ON alarms (kind, device_id) WHERE cleared_at IS NULL;

-- Vital-sign readings. value is a field ciphertext under the case's (or the device's holding) data key.
CREATE TABLE observations (
    id          INTEGER PRIMARY KEY,
    case_id     TEXT    REFERENCES cases (id),
    device_id   TEXT,
    dk_id       INTEGER NOT NULL REFERENCES data_keys (id),
    code        TEXT    NOT NULL,
    value       BLOB    NOT NULL,
    device_time INTEGER,
    recv_time   INTEGER NOT NULL,
    source      TEXT    NOT NULL CHECK (source IN ('device', 'manual'))
) STRICT;
-- Idempotence: one reading per device, vital and device time (a redelivery adds nothing).
-- Time-ordered keys append at the B-tree's right edge, so ingest cost does not grow with size.
CREATE UNIQUE INDEX observations_dedup ON observations (device_id, code, device_time) WHERE device_id IS NOT NULL;
CREATE INDEX observations_by_case ON observations (case_id, code, device_time);
CREATE INDEX observations_unbound ON observations (device_id) WHERE case_id IS NULL;

CREATE TABLE triage_results (
    id          INTEGER PRIMARY KEY,
    case_id     TEXT    NOT NULL REFERENCES cases (id),
    created_at  INTEGER NOT NULL,
    final_esi   INTEGER NOT NULL CHECK (final_esi BETWEEN 1 AND 5),
    rules_esi   INTEGER NOT NULL CHECK (rules_esi BETWEEN 1 AND 5),
    model_esi   INTEGER CHECK (model_esi BETWEEN 1 AND 5),
    news2       INTEGER,
    specialty   TEXT,
    confidence  REAL,
    model_id    TEXT,
    model_hash  TEXT,
    decider     TEXT    NOT NULL CHECK (decider IN ('model', 'rules_override', 'rules_only')),
    abstained   TEXT,
    reasons     BLOB
) STRICT;
CREATE INDEX triage_by_case ON triage_results (case_id, created_at);

CREATE TABLE users (
    id           TEXT    PRIMARY KEY,
    display_name TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('paramedic', 'emt', 'staff', 'supervisor', 'admin')),
    territory    TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL,
    totp_secret  BLOB,
    created_at   INTEGER NOT NULL,
    disabled_at  INTEGER,
    failed_count INTEGER NOT NULL DEFAULT 0,
    backoff_until INTEGER
) STRICT;

CREATE TABLE sessions (
    token_hash       BLOB    PRIMARY KEY,
    user_id          TEXT    NOT NULL REFERENCES users (id),
    created_at       INTEGER NOT NULL,
    last_seen_at     INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    break_glass_until INTEGER
) STRICT;

-- Sealed bundles awaiting a signed receipt. Rows leave only after receipt (+ retention).
CREATE TABLE outbox (
    bundle_id       TEXT    PRIMARY KEY,
    seq             INTEGER NOT NULL UNIQUE,
    case_id         TEXT    REFERENCES cases (id),
    priority        INTEGER NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('prealert', 'bundle', 'telemetry')),
    envelope        BLOB    NOT NULL,
    envelope_sha256 BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'sent', 'receipted')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    sent_at         INTEGER,
    receipted_at    INTEGER,
    receipt         BLOB
) STRICT;
CREATE INDEX outbox_pending ON outbox (state, priority, seq);

-- Rejected device packs. payload is a field ciphertext (rejected input may hold PHI).
CREATE TABLE dead_letters (
    id             INTEGER PRIMARY KEY,
    device_id      TEXT,
    topic          TEXT    NOT NULL,
    received_at    INTEGER NOT NULL,
    code           TEXT    NOT NULL,
    message        TEXT    NOT NULL,
    record         INTEGER,
    payload_len    INTEGER NOT NULL,
    payload_sha256 BLOB    NOT NULL,
    dk_id          INTEGER REFERENCES data_keys (id),
    payload        BLOB
) STRICT;
CREATE INDEX dead_letters_by_device ON dead_letters (device_id, received_at);

-- Hash-chained, MACed, append-only audit log (see storage::audit).
CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    ts        INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    role      TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    resource  TEXT    NOT NULL,
    outcome   TEXT    NOT NULL,
    territory TEXT    NOT NULL,
    details   TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL,
    mac       BLOB    NOT NULL
);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

CREATE TABLE audit_head (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    seq                 INTEGER NOT NULL,
    hash                BLOB    NOT NULL,
    last_checkpoint_seq INTEGER NOT NULL,
    last_checkpoint_ts  INTEGER NOT NULL
) STRICT;

CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    ts        INTEGER NOT NULL,
    hash      BLOB    NOT NULL,
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL
) STRICT;
"#,
    // v2: envelopes live apart from the outbox rows, so custody state changes rewrite a small row
    // instead of the whole envelope (SQLite rewrites a record with its overflow pages on UPDATE).
    // `outbox.envelope` stays empty. A row without an envelope after its receipt is purged.
    r#"
CREATE TABLE outbox_envelopes (
    bundle_id TEXT PRIMARY KEY REFERENCES outbox (bundle_id),
    envelope  BLOB NOT NULL
) STRICT;
INSERT INTO outbox_envelopes (bundle_id, envelope)
    SELECT bundle_id, envelope FROM outbox WHERE length(envelope) > 0;
UPDATE outbox SET envelope = X'';
"#,
    // v3: the crew tablet. Break-glass grants with their supervisor review, medication orders
    // (PHI: sealed under the case key), and the break-glass grant a session carries.
    r#"
CREATE TABLE break_glass (
    id          INTEGER PRIMARY KEY,
    user_id     TEXT    NOT NULL REFERENCES users (id),
    territory   TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    until       INTEGER NOT NULL,
    reviewed_at INTEGER,
    reviewed_by TEXT,
    review_note TEXT
) STRICT;
CREATE INDEX break_glass_pending ON break_glass (started_at) WHERE reviewed_at IS NULL;

CREATE TABLE medications (
    id         INTEGER PRIMARY KEY,
    case_id    TEXT    NOT NULL REFERENCES cases (id),
    created_at INTEGER NOT NULL,
    created_by TEXT    NOT NULL,
    body       BLOB    NOT NULL
) STRICT;
CREATE INDEX medications_by_case ON medications (case_id, id);

ALTER TABLE sessions ADD COLUMN break_glass_id INTEGER REFERENCES break_glass (id);
"#,
    // v4: canonical (low-S) envelope signatures. Unreceipted envelopes sealed before are
    // rewritten by the migration hook (`storage::outbox::canonicalize_pending`): same signature,
    // canonical form, new envelope hash.
    r#"
SELECT 1;
"#,
    // v5: accounts an admin creates over the API with a PHI-reading role wait for a
    // supervisor's approval (disabled until then).
    r#"
ALTER TABLE users ADD COLUMN pending_approval INTEGER NOT NULL DEFAULT 0;
"#,
    // v6: break-glass reasons and review notes are free text that often names the patient:
    // sealed under a data key of their own (`reason`/`review_note` stay empty). Existing rows
    // are sealed by the migration hook (`storage::accounts::seal_break_glass_text`).
    r#"
ALTER TABLE break_glass ADD COLUMN dk_id INTEGER REFERENCES data_keys (id);
ALTER TABLE break_glass ADD COLUMN sealed_reason BLOB;
ALTER TABLE break_glass ADD COLUMN sealed_note BLOB;
"#,
    // v7: sealed values bind the plaintext columns that give them meaning (observation code and
    // device time, triage levels, medication orderer) into their associated data; existing
    // values are re-sealed by the migration hook (`storage::readings::bind_semantic_columns`).
    r#"
SELECT 1;
"#,
    // v8: the patient care record. Every change to a record entry (a section such as times or
    // history, or an event such as oxygen, a procedure, a medication, an assessment) is a new
    // immutable version; the latest version of an entry is current, and a version may mark the
    // entry entered-in-error. Bodies are sealed under the case key with the row's plaintext
    // columns in the associated data. `request_keys` makes client submits idempotent;
    // observations can be marked entered-in-error (reason sealed); patients and cases carry a
    // version for optimistic concurrency (`ETag`/`If-Match`).
    r#"
CREATE TABLE record_entries (
    id          INTEGER PRIMARY KEY,
    case_id     TEXT    NOT NULL REFERENCES cases (id),
    entry_id    TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('incident', 'times', 'scene', 'situation', 'history',
                    'disposition', 'narrative', 'spo2_scale', 'oxygen', 'procedure', 'medication', 'assessment')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    state       TEXT    NOT NULL CHECK (state IN ('recorded', 'entered_in_error')),
    recorded_at INTEGER NOT NULL,
    recorded_by TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    UNIQUE (case_id, entry_id, version)
) STRICT;

CREATE TABLE request_keys (
    actor      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    case_id    TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    result     TEXT    NOT NULL,
    PRIMARY KEY (actor, key)
) STRICT;
CREATE INDEX request_keys_by_case ON request_keys (case_id);
CREATE INDEX request_keys_by_age ON request_keys (created_at);

ALTER TABLE observations ADD COLUMN voided_at INTEGER;
ALTER TABLE observations ADD COLUMN voided_by TEXT;
ALTER TABLE observations ADD COLUMN void_reason BLOB;
ALTER TABLE patients ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE patients ADD COLUMN estimated_age BLOB;
ALTER TABLE cases ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
"#,
    // v9: unsaved tablet forms (drafts), per user, case and form, sealed under the case key,
    // so that nothing half-entered is lost to an idle logoff; erased with the case.
    r#"
CREATE TABLE drafts (
    user_id    TEXT    NOT NULL,
    case_id    TEXT    NOT NULL REFERENCES cases (id),
    form       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    body       BLOB    NOT NULL,
    PRIMARY KEY (user_id, case_id, form)
) STRICT;
"#,
    // v10: hospital pre-alerts as a chain per case. A row without a bundle is due (the sealer's
    // work list); queuing the pre-alert fills in the bundle and the ESI it carried. Reasons are
    // JSON arrays of short codes (`esi 2`, `destination`, `alert stroke`): no PHI. Existing
    // pre-alerts become the first link; open ESI 1-2 cases without one become due.
    r#"
CREATE TABLE prealerts (
    case_id   TEXT    NOT NULL REFERENCES cases (id),
    seq       INTEGER NOT NULL CHECK (seq >= 1),
    reasons   TEXT    NOT NULL,
    due_at    INTEGER NOT NULL,
    bundle_id TEXT    UNIQUE,
    esi       INTEGER,
    sent_at   INTEGER,
    PRIMARY KEY (case_id, seq)
) STRICT;
CREATE INDEX prealerts_due ON prealerts (bundle_id) WHERE bundle_id IS NULL;
INSERT INTO prealerts (case_id, seq, reasons, due_at, bundle_id, esi, sent_at)
    SELECT o.case_id, 1, '["esi"]', o.created_at, o.bundle_id,
           (SELECT t.final_esi FROM triage_results t WHERE t.case_id = o.case_id AND t.created_at <= o.created_at ORDER BY t.id DESC LIMIT 1),
           o.created_at
    FROM outbox o WHERE o.kind = 'prealert';
INSERT INTO prealerts (case_id, seq, reasons, due_at)
    SELECT c.id, 1, '["esi"]', c.created_at FROM cases c
    WHERE c.status = 'open' AND c.erased_at IS NULL
      AND (SELECT t.final_esi FROM triage_results t WHERE t.case_id = c.id ORDER BY t.id DESC LIMIT 1) <= 2
      AND NOT EXISTS (SELECT 1 FROM prealerts p WHERE p.case_id = c.id);
"#,
    // v11: attachments (photos, ECG strips, signed forms, ultrasound). Content is stored in
    // fixed-size chunks sealed under the case key (`crypto::chunk`: attachment id, part, index
    // and count in the associated data); `upload` chunks hold the raw pieces of an upload in
    // progress (sealed, dropped when it is stored). `meta` (caption, file name, hash, what was
    // stripped), `phi` (a DICOM object's PHI part) and `thumb` are sealed too. The outbox
    // learns the `attachment` kind (its envelopes carry one part each) and priorities move:
    // pre-alert 1, bundle 2, attachment 3, telemetry 4. SQLite cannot change a CHECK, so the
    // outbox table is rebuilt, and its envelopes table with it (a table that others refer to
    // cannot be dropped while foreign keys are enforced).
    r#"
CREATE TABLE attachments (
    id            TEXT    PRIMARY KEY,
    case_id       TEXT    NOT NULL REFERENCES cases (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('scene_photo', 'wound', 'ecg', 'signed_form', 'ultrasound', 'other')),
    state         TEXT    NOT NULL CHECK (state IN ('uploading', 'stored')),
    declared_size INTEGER NOT NULL CHECK (declared_size > 0),
    received      INTEGER NOT NULL DEFAULT 0,
    pieces        INTEGER NOT NULL DEFAULT 0,
    media_type    TEXT,
    size          INTEGER,
    chunk_size    INTEGER NOT NULL,
    chunk_count   INTEGER,
    meta          BLOB    NOT NULL,
    phi           BLOB,
    thumb         BLOB,
    created_by    TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    stored_at     INTEGER
) STRICT;
CREATE INDEX attachments_by_case ON attachments (case_id);

CREATE TABLE attachment_chunks (
    attachment_id TEXT    NOT NULL REFERENCES attachments (id),
    part          TEXT    NOT NULL CHECK (part IN ('upload', 'content')),
    idx           INTEGER NOT NULL CHECK (idx >= 0),
    body          BLOB    NOT NULL,
    PRIMARY KEY (attachment_id, part, idx)
) STRICT, WITHOUT ROWID;

CREATE TABLE outbox_v11 (
    bundle_id       TEXT    PRIMARY KEY,
    seq             INTEGER NOT NULL UNIQUE,
    case_id         TEXT    REFERENCES cases (id),
    priority        INTEGER NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('prealert', 'bundle', 'attachment', 'telemetry')),
    envelope        BLOB    NOT NULL,
    envelope_sha256 BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('queued', 'sent', 'receipted')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    sent_at         INTEGER,
    receipted_at    INTEGER,
    receipt         BLOB,
    attachment_id   TEXT,
    part            INTEGER
) STRICT;
INSERT INTO outbox_v11 (bundle_id, seq, case_id, priority, kind, envelope, envelope_sha256, created_at,
                        state, attempts, sent_at, receipted_at, receipt)
    SELECT bundle_id, seq, case_id, CASE kind WHEN 'telemetry' THEN 4 ELSE priority END, kind, envelope,
           envelope_sha256, created_at, state, attempts, sent_at, receipted_at, receipt FROM outbox;
CREATE TABLE envelopes_v11 (bundle_id TEXT PRIMARY KEY, envelope BLOB NOT NULL) STRICT;
INSERT INTO envelopes_v11 SELECT bundle_id, envelope FROM outbox_envelopes;
DROP TABLE outbox_envelopes;
DROP TABLE outbox;
ALTER TABLE outbox_v11 RENAME TO outbox;
CREATE TABLE outbox_envelopes (
    bundle_id TEXT PRIMARY KEY REFERENCES outbox (bundle_id),
    envelope  BLOB NOT NULL
) STRICT;
INSERT INTO outbox_envelopes SELECT bundle_id, envelope FROM envelopes_v11;
DROP TABLE envelopes_v11;
CREATE INDEX outbox_pending ON outbox (state, priority, seq);
CREATE INDEX outbox_by_attachment ON outbox (attachment_id) WHERE attachment_id IS NOT NULL;
"#,
    // v12: audit chain v2 (storage::audit): entries from here on hash their canonical bytes
    // into a leaf digest first, so a bundle can prove its case's entries against a signed
    // checkpoint while carrying only the digests of the entries between them; `chain` says
    // which rule an entry follows (older entries stay v1). A case's entries are found by
    // resource.
    r#"
ALTER TABLE audit_log ADD COLUMN chain INTEGER NOT NULL DEFAULT 1 CHECK (chain IN (1, 2));
CREATE INDEX audit_by_resource ON audit_log (resource, seq);
"#,
    // v13: public halves of the appliance's former signing keys (`keys rotate-signing`), so
    // checkpoints signed before a key change still verify after it.
    r#"
CREATE TABLE signing_keys (
    key_id     TEXT    PRIMARY KEY,
    public_key TEXT    NOT NULL,
    retired_at INTEGER NOT NULL
) STRICT;
"#,
    // v14: audit queries (`storage::audit::query`). `audit_subjects` says which patients and
    // cases each entry concerns — derived from the entry's resource and hashed details
    // (`model::access::subjects`), so `audit verify` can check no row is missing; filled for
    // older entries by the migration hook. Indexes by user, time and territory.
    r#"
CREATE TABLE audit_subjects (
    kind TEXT    NOT NULL CHECK (kind IN ('patient', 'case')),
    id   TEXT    NOT NULL,
    seq  INTEGER NOT NULL,
    PRIMARY KEY (kind, id, seq)
) STRICT, WITHOUT ROWID;
CREATE INDEX audit_subjects_by_seq ON audit_subjects (seq);
CREATE INDEX audit_by_actor ON audit_log (actor, seq);
CREATE INDEX audit_by_ts ON audit_log (ts);
CREATE INDEX audit_by_territory ON audit_log (territory, seq);
"#,
    // v15: audit retention (`storage::audit::retention`). A case bundle records the checkpoint
    // it carried; `audit_head` the newest checkpoint the cloud receipted and how far the log was
    // pruned. Deleting entries is refused except at or below that mark, which only a prune
    // (itself an entry, MAC'd) moves.
    r#"
ALTER TABLE outbox ADD COLUMN checkpoint_seq INTEGER;
ALTER TABLE audit_head ADD COLUMN cloud_checkpoint_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_head ADD COLUMN pruned_through INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER audit_log_no_delete;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
WHEN OLD.seq > (SELECT pruned_through FROM audit_head WHERE id = 1)
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
"#,
    // v16: access grants (`storage::grants`): one case or patient opened to a user of another
    // territory, read or read/write, until an expiry; the reason sealed under its own data key.
    r#"
CREATE TABLE access_grants (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       TEXT    NOT NULL REFERENCES users (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('case', 'patient')),
    resource_id   TEXT    NOT NULL,
    territory     TEXT    NOT NULL,
    access        TEXT    NOT NULL CHECK (access IN ('read', 'read_write')),
    dk_id         INTEGER REFERENCES data_keys (id),
    sealed_reason BLOB,
    granted_by    TEXT    NOT NULL,
    granted_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoked_by    TEXT,
    expired_noted INTEGER NOT NULL DEFAULT 0,
    uses          INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX access_grants_by_user ON access_grants (user_id, kind, resource_id);
CREATE INDEX access_grants_by_territory ON access_grants (territory, id);
"#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;
