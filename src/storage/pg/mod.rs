//! The shared receiver store on PostgreSQL ([`PgStore`]): several receivers on one database,
//! (appliance id, bundle id) unique across all of them, so a resend arriving at any instance is
//! a duplicate and the same id with other content raises the conflict alarm once. The only
//! module that imports `postgres` (its TLS goes through `tls.rs`).
//!
//! PHI never lies in PostgreSQL in plaintext: bundle bodies (FHIR JSON, attachment parts),
//! pre-alert summaries and attachment captions and file names are AES-256-GCM field
//! ciphertexts (`crypto::field`, associated data = table, column, appliance/row id) under a
//! per-appliance data key. Data keys are wrapped by the receivers' key (`receiver-db.key`, the
//! same file on every receiver of a deployment) and kept in `data_keys`; a data key wrapped by
//! another key is refused, never overwritten. Schema versions: [`schema`].
//!
//! One connection per receiver, held by its custody thread (which stores batches in the order
//! the broker delivered them, one at a time); a lost connection is reopened on the next call.

mod conn;
mod files;
mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use conn::PgSettings;
use conn::{Conn, is_retryable, pg_err};

use super::receiver::{
    ApplianceStatus, EnvelopeReject, PrealertRow, ReceivedBundle, ReceiverStats, ReceiverStore,
    StoreOutcome, TelemetrySummary, conflict_detail, status_sql,
};
use super::receiver_audit::{self as audit_sql, KnownCheckpoint};
use super::{Result, StoreError};
use crate::crypto::field::{DataKey, FieldLoc, Kek};
use crate::model::now_ms;

/// Attempts of a batch transaction that PostgreSQL aborted as a deadlock or serialization
/// failure (two receivers completing the same attachment) before giving up.
const TX_ATTEMPTS: usize = 5;

/// The receiver store on a shared PostgreSQL database.
pub struct PgStore {
    settings: PgSettings,
    conn: Option<Conn>,
    kek: Kek,
    /// Unwrapped data keys by appliance (they never change once created).
    keys: HashMap<String, Arc<DataKey>>,
}

impl PgStore {
    /// Connects, migrates the schema and checks the receivers' key against the data keys.
    /// `kek` is the 32-byte `receiver-db.key`.
    pub fn connect(settings: PgSettings, kek: &[u8; 32]) -> Result<Self> {
        let mut s = PgStore {
            settings,
            conn: None,
            kek: Kek::new(1, kek),
            keys: HashMap::new(),
        };
        let mut client = conn::open(&s.settings)?;
        schema::migrate(&mut client)?;
        // Refuse at once, not at the first bundle, to run with another deployment's key.
        let foreign: Option<String> = client
            .query_opt(
                "SELECT kek_id FROM data_keys WHERE kek_id <> $1 LIMIT 1",
                &[&s.kek.key_id],
            )
            .map_err(pg_err("data keys"))?
            .map(|r| r.get(0));
        if let Some(found) = foreign {
            return Err(StoreError::PostgresSetup(format!(
                "the database's data keys are wrapped by receiver key {found}, but this \
                 receiver's receiver-db.key is {}: every receiver sharing the database needs \
                 the same receiver-db.key",
                s.kek.key_id
            )));
        }
        s.conn = Some(Conn::prepare(client)?);
        Ok(s)
    }

    /// The live connection, reopened (and its statements prepared again) after a loss.
    fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let client = conn::open(&self.settings)?;
            self.conn = Some(Conn::prepare(client)?);
            tracing::info!(host = %self.settings.host, "PostgreSQL connection reopened");
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Drops the connection after a driver failure so the next call opens a fresh one (a
    /// server that is shutting down may not have closed it yet).
    fn check<T>(&mut self, r: Result<T>) -> Result<T> {
        if r.as_ref().is_err_and(StoreError::is_transient) {
            self.conn = None;
        }
        r
    }

    /// The data key of `appliance`, created (and wrapped) on first use when `create`.
    fn data_key(&mut self, appliance: &str, create: bool) -> Result<Arc<DataKey>> {
        if let Some(k) = self.keys.get(appliance) {
            return Ok(k.clone());
        }
        let label = format!("receiver/{appliance}");
        let kek_id = self.kek.key_id.clone();
        let fresh = if create {
            let mut id = [0u8; 8];
            crate::crypto::random_bytes(&mut id)?;
            let dk = DataKey::from_bytes(
                i64::from_be_bytes(id) & i64::MAX,
                crate::crypto::random_key()?,
            );
            Some((dk.id(), dk.wrap(&self.kek, &label)?))
        } else {
            None
        };
        let c = self.conn()?;
        if let Some((id, wrapped)) = &fresh {
            // Two receivers may race here: the first insert wins and both use its key.
            c.client
                .execute(
                    "INSERT INTO data_keys (appliance_id, key_id, kek_id, wrapped, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (appliance_id) DO NOTHING",
                    &[&appliance, id, &kek_id, wrapped, &now_ms()],
                )
                .map_err(pg_err("data key"))?;
        }
        let row = c
            .client
            .query_opt(
                "SELECT key_id, kek_id, wrapped FROM data_keys WHERE appliance_id = $1",
                &[&appliance],
            )
            .map_err(pg_err("data key"))?
            .ok_or_else(|| StoreError::Undecodable {
                what: format!("appliance {appliance}'s data key (absent)"),
            })?;
        let (id, found_kek, wrapped): (i64, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        if found_kek != kek_id {
            return Err(StoreError::PostgresSetup(format!(
                "appliance {appliance}'s data key is wrapped by receiver key {found_kek}, but \
                 this receiver's receiver-db.key is {kek_id}: every receiver sharing the database \
                 needs the same receiver-db.key"
            )));
        }
        let dk = Arc::new(DataKey::unwrap(id, &wrapped, &self.kek, &label)?);
        self.keys.insert(appliance.to_string(), dk.clone());
        Ok(dk)
    }

    fn try_store(
        &mut self,
        items: &[ReceivedBundle],
        sealed: &[Sealed],
    ) -> Result<Vec<StoreOutcome>> {
        let me = self.settings.receiver_name.clone();
        let Conn { client, st } = self.conn()?;
        let mut tx = client.transaction().map_err(pg_err("begin"))?;
        let now = now_ms();
        // Every receiver takes its locks in one order — bundles by (appliance, bundle id), then
        // each appliance's status row once, by appliance id — so two receivers storing
        // overlapping batches wait for each other instead of deadlocking (updating the status
        // row per bundle, in arrival order, deadlocked almost every pair of concurrent batches
        // and stalled a three-receiver soak).
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&x, &y| {
            let (a, b) = (&items[x], &items[y]);
            (&a.appliance_id, a.bundle_id).cmp(&(&b.appliance_id, b.bundle_id))
        });
        let mut status: BTreeMap<&str, StatusDelta<'_>> = BTreeMap::new();
        let mut out: Vec<Option<StoreOutcome>> = vec![None; items.len()];
        for i in order {
            let (b, s) = (&items[i], &sealed[i]);
            let delta = status.entry(b.appliance_id.as_str()).or_default();
            let bundle_id = b.bundle_id.to_string();
            let app = &b.appliance_id;
            let sha = b.envelope_sha256.as_slice();
            let inserted = tx
                .execute(
                    &st.insert_bundle,
                    &[
                        app,
                        &bundle_id,
                        &(b.seq as i64),
                        &b.kind,
                        &sha,
                        &b.created_at_ms,
                        &now,
                        &me,
                        &s.body,
                    ],
                )
                .map_err(pg_err("store bundle"))?;
            let o = if inserted == 1 {
                if let Some((h, data_at)) = &b.attachment {
                    files::add_part(
                        &mut tx,
                        &files::Part {
                            b,
                            bundle_id: &bundle_id,
                            h,
                            data_at: *data_at,
                            caption: s.caption.as_deref(),
                            filename: s.filename.as_deref(),
                        },
                        now,
                        &me,
                        &s.key,
                    )?;
                }
                if let (Some(p), Some(summary)) = (&b.prealert, &s.summary) {
                    tx.execute(
                        &st.prealert,
                        &[
                            app,
                            &bundle_id,
                            &p.case_id,
                            &p.replaces,
                            &b.created_at_ms,
                            &now,
                            summary,
                        ],
                    )
                    .map_err(pg_err("store pre-alert"))?;
                }
                delta.stored += 1;
                delta.last_seq = delta.last_seq.max(b.seq as i64);
                if let Some(t) = &b.telemetry
                    && delta.telemetry.is_none_or(|(at, _)| at <= b.created_at_ms)
                {
                    delta.telemetry = Some((b.created_at_ms, t));
                }
                let mut audit_alarms = 0;
                if let Some(v) = &b.audit {
                    if let Some((cp, hash)) = v.checkpoint {
                        tx.execute(
                            &st.cp_insert,
                            &[app, &cp, &hash.as_slice(), &(b.seq as i64), &bundle_id],
                        )
                        .map_err(pg_err("audit checkpoints"))?;
                    }
                    for f in &v.findings {
                        audit_sql::log(app, &bundle_id, f);
                        tx.execute(
                            &st.alarm,
                            &[&now, &me, &audit_sql::ALARM, app, &bundle_id, f],
                        )
                        .map_err(pg_err("raise alarm"))?;
                    }
                    audit_alarms = v.findings.len();
                }
                StoreOutcome::Stored { audit_alarms }
            } else {
                let stored: Vec<u8> = tx
                    .query_one(&st.bundle_sha, &[app, &bundle_id])
                    .map_err(pg_err("read stored bundle"))?
                    .get(0);
                if stored.as_slice() == sha {
                    tx.execute(&st.resend, &[app, &bundle_id])
                        .map_err(pg_err("count resend"))?;
                    delta.resent = true;
                    StoreOutcome::Duplicate
                } else {
                    let detail = conflict_detail(&stored, &b.envelope_sha256);
                    tx.execute(
                        &st.alarm,
                        &[&now, &me, &"bundle_conflict", app, &bundle_id, &detail],
                    )
                    .map_err(pg_err("raise alarm"))?;
                    StoreOutcome::Conflict
                }
            };
            out[i] = Some(o);
        }
        for (app, d) in &status {
            if d.stored > 0 {
                tx.execute(&st.stored, &[app, &now, &d.last_seq, &d.stored])
                    .map_err(pg_err("appliance status"))?;
            } else if d.resent {
                // Only resends of this appliance: it was seen all the same.
                tx.execute(&st.seen, &[app, &now])
                    .map_err(pg_err("appliance status"))?;
            }
            if let Some((at, t)) = d.telemetry {
                tx.execute(
                    &st.telemetry,
                    &[
                        app,
                        &at,
                        &t.outbox_queued,
                        &t.open_alarms,
                        &t.oldest_unreceipted_ms,
                    ],
                )
                .map_err(pg_err("appliance telemetry"))?;
            }
        }
        tx.commit().map_err(pg_err("commit"))?;
        Ok(out
            .into_iter()
            .map(|o| o.expect("every bundle has an outcome"))
            .collect())
    }
}

/// What one batch changes in an appliance's status row, written once at the end of the batch.
#[derive(Default)]
struct StatusDelta<'a> {
    stored: i64,
    last_seq: i64,
    resent: bool,
    /// The newest telemetry of the batch: (created at, summary).
    telemetry: Option<(i64, &'a TelemetrySummary)>,
}

/// A bundle's PHI sealed under its appliance's data key, before the transaction.
struct Sealed {
    key: Arc<DataKey>,
    body: Vec<u8>,
    summary: Option<Vec<u8>>,
    caption: Option<Vec<u8>>,
    filename: Option<Vec<u8>>,
}

/// The associated-data location of a sealed column: table, column, `appliance/row`.
fn loc<'a>(table: &'static str, column: &'static str, row: &'a str) -> FieldLoc<'a> {
    FieldLoc {
        table,
        column,
        row_id: row,
    }
}

impl ReceiverStore for PgStore {
    fn add_appliance(&mut self, id: &str, pem: &str) -> Result<()> {
        let c = self.conn()?;
        let r = c
            .client
            .execute(
                "INSERT INTO appliances (id, public_key, registered_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET public_key = excluded.public_key, revoked_at = NULL, \
                 previous_key = NULL, previous_until = NULL",
                &[&id, &pem, &now_ms()],
            )
            .map(|_| ())
            .map_err(pg_err("register appliance"));
        self.check(r)
    }

    fn add_appliance_key(&mut self, id: &str, pem: &str, overlap_until_ms: i64) -> Result<bool> {
        let c = self.conn()?;
        let r = c
            .client
            .execute(
                "UPDATE appliances SET previous_key = public_key, previous_until = $3, \
                 public_key = $2 WHERE id = $1 AND revoked_at IS NULL AND public_key <> $2",
                &[&id, &pem, &overlap_until_ms],
            )
            .map(|n| n == 1)
            .map_err(pg_err("add appliance key"));
        self.check(r)
    }

    fn revoke_appliance(&mut self, id: &str) -> Result<bool> {
        let c = self.conn()?;
        let r = c
            .client
            .execute(
                "UPDATE appliances SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                &[&now_ms(), &id],
            )
            .map(|n| n == 1)
            .map_err(pg_err("revoke appliance"));
        self.check(r)
    }

    fn appliances(&mut self) -> Result<Vec<(String, String, bool)>> {
        let c = self.conn()?;
        let r = c
            .client
            .query(
                "SELECT id, public_key, revoked_at IS NOT NULL FROM appliances ORDER BY id",
                &[],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect()
            })
            .map_err(pg_err("list appliances"));
        self.check(r)
    }

    fn appliance_keys(&mut self, id: &str) -> Result<Vec<String>> {
        let c = self.conn()?;
        let r = c
            .client
            .query_opt(&c.st.key, &[&id, &now_ms()])
            .map(|r| {
                r.map_or_else(Vec::new, |r| {
                    let prev: Option<String> = r.get(1);
                    std::iter::once(r.get::<_, String>(0)).chain(prev).collect()
                })
            })
            .map_err(pg_err("appliance keys"));
        self.check(r)
    }

    fn audit_checkpoints(
        &mut self,
        id: &str,
        from: i64,
        to: i64,
        env_seq: u64,
    ) -> Result<Vec<KnownCheckpoint>> {
        let c = self.conn()?;
        let r = c
            .client
            .query(&c.st.cp_known, &[&id, &from, &to, &(env_seq as i64)])
            .map(|rows| {
                rows.iter()
                    .map(|r| KnownCheckpoint {
                        seq: r.get(0),
                        hash: r.get(1),
                        env_seq: r.get(2),
                    })
                    .collect()
            })
            .map_err(pg_err("audit checkpoints"));
        self.check(r)
    }

    fn store_batch(&mut self, items: &[ReceivedBundle]) -> Result<Vec<StoreOutcome>> {
        let mut sealed = Vec::with_capacity(items.len());
        for b in items {
            let key = self.data_key(&b.appliance_id, true)?;
            let row = format!("{}/{}", b.appliance_id, b.bundle_id);
            let seal = |col, plain: &[u8]| key.seal(loc("bundles", col, &row), plain);
            let part = b.attachment.as_ref().map(|(h, _)| h);
            sealed.push(Sealed {
                body: seal("body", &b.body)?,
                summary: b
                    .prealert
                    .as_ref()
                    .map(|p| {
                        let json = serde_json::to_string(p).expect("json");
                        key.seal(loc("prealerts", "summary", &row), json.as_bytes())
                    })
                    .transpose()?,
                caption: part
                    .and_then(|h| h.caption.as_deref())
                    .map(|c| {
                        files::seal_text(&key, "caption", &b.appliance_id, part.expect("part"), c)
                    })
                    .transpose()?,
                filename: part
                    .and_then(|h| h.filename.as_deref())
                    .map(|f| {
                        files::seal_text(&key, "filename", &b.appliance_id, part.expect("part"), f)
                    })
                    .transpose()?,
                key: key.clone(),
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self.try_store(items, &sealed);
            match r {
                Err(e) if is_retryable(&e) && attempt < TX_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "PostgreSQL aborted the batch; retrying");
                }
                r => return self.check(r),
            }
        }
    }

    fn record_rejects(&mut self, rejects: &[EnvelopeReject]) -> Result<()> {
        let me = self.settings.receiver_name.clone();
        let Conn { client, st } = self.conn()?;
        let r = (|| {
            let mut tx = client.transaction()?;
            let now = now_ms();
            for (topic, app, code, msg, sha) in rejects {
                tx.execute(
                    &st.reject,
                    &[&now, &me, topic, app, code, msg, &sha.as_slice()],
                )?;
            }
            tx.commit()
        })()
        .map_err(pg_err("record rejects"));
        self.check(r)
    }

    fn stats(&mut self) -> Result<ReceiverStats> {
        let c = self.conn()?;
        let r = (|| {
            let r = c.client.query_one(
                "SELECT count(*), coalesce(sum(resends), 0)::bigint FROM bundles",
                &[],
            )?;
            let (bundles, resends): (i64, i64) = (r.get(0), r.get(1));
            let rejects = c
                .client
                .query(
                    "SELECT code, count(*) FROM rejects GROUP BY code ORDER BY code",
                    &[],
                )?
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
                .collect();
            let a = c.client.query_one(audit_sql::ALARM_COUNTS, &[])?;
            let (conflicts, audit_alarms): (i64, i64) = (a.get(0), a.get(1));
            Ok(ReceiverStats {
                bundles: bundles as u64,
                resends: resends as u64,
                rejects,
                conflicts: conflicts as u64,
                audit_alarms: audit_alarms as u64,
            })
        })()
        .map_err(pg_err("stats"));
        self.check(r)
    }

    fn bundle_body(&mut self, appliance_id: &str, bundle_id: &str) -> Result<Option<Vec<u8>>> {
        let c = self.conn()?;
        let r = c
            .client
            .query_opt(
                "SELECT body FROM bundles WHERE appliance_id = $1 AND bundle_id = $2",
                &[&appliance_id, &bundle_id],
            )
            .map_err(pg_err("read bundle"));
        let Some(row) = self.check(r)? else {
            return Ok(None);
        };
        let key = self.data_key(appliance_id, false)?;
        let id = format!("{appliance_id}/{bundle_id}");
        Ok(Some(key.open(
            loc("bundles", "body", &id),
            &row.get::<_, Vec<u8>>(0),
        )?))
    }

    fn list_bundles(&mut self) -> Result<Vec<(String, String, u64, String)>> {
        let c = self.conn()?;
        let r = c
            .client
            .query(
                "SELECT appliance_id, bundle_id, seq, kind FROM bundles \
                 ORDER BY received_at, appliance_id, seq",
                &[],
            )
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get(0), r.get(1), r.get::<_, i64>(2) as u64, r.get(3)))
                    .collect()
            })
            .map_err(pg_err("list bundles"));
        self.check(r)
    }

    fn prealerts(&mut self, since_ms: i64) -> Result<Vec<PrealertRow>> {
        let c = self.conn()?;
        let r = c
            .client
            .query(
                "SELECT appliance_id, bundle_id, created_at, received_at, summary FROM prealerts \
                 WHERE received_at > $1 ORDER BY received_at, created_at",
                &[&since_ms],
            )
            .map_err(pg_err("list pre-alerts"));
        let rows = self.check(r)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (app, bundle): (String, String) = (r.get(0), r.get(1));
            let key = self.data_key(&app, false)?;
            let id = format!("{app}/{bundle}");
            let plain = key.open(loc("prealerts", "summary", &id), &r.get::<_, Vec<u8>>(4))?;
            out.push(PrealertRow {
                summary: serde_json::from_slice(&plain).unwrap_or_default(),
                appliance_id: app,
                bundle_id: bundle,
                created_at_ms: r.get(2),
                received_at_ms: r.get(3),
            });
        }
        Ok(out)
    }

    fn appliance_status(&mut self) -> Result<Vec<ApplianceStatus>> {
        let c = self.conn()?;
        let r = c
            .client
            .query(status_sql::LIST, &[])
            .map(|rows| {
                rows.iter()
                    .map(|r| ApplianceStatus {
                        appliance_id: r.get(0),
                        last_seen_ms: r.get(1),
                        last_seq: r.get::<_, i64>(2) as u64,
                        received: r.get::<_, i64>(3) as u64,
                        telemetry_at_ms: r.get(4),
                        outbox_queued: r.get(5),
                        open_alarms: r.get(6),
                        oldest_unreceipted_ms: r.get(7),
                    })
                    .collect()
            })
            .map_err(pg_err("appliance status"));
        self.check(r)
    }

    fn attachments(&mut self) -> Result<Vec<crate::storage::receiver_files::ReceivedAttachment>> {
        let r = files::list(self);
        self.check(r)
    }

    fn export_attachment(
        &mut self,
        appliance: &str,
        attachment: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let r = files::export(self, appliance, attachment, out);
        self.check(r)
    }
}
