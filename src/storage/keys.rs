//! Key metadata in the database: territory key versions, data keys (create, unwrap with a
//! cache, invocation counters), rotation re-wrap, retirement and crypto-erase.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{DATA_KEY_CACHE, Db, Result, State, StoreError};
use crate::crypto::field::{DataKey, MAX_INVOCATIONS};
use crate::crypto::keyring::territory_key_name;
use crate::crypto::random_key;
use crate::model::{Actor, AuditEvent, Outcome, now_ms};

/// One territory key version as recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionInfo {
    pub territory: String,
    pub version: u32,
    pub key_id: String,
    pub loaded: bool,
    pub retired: bool,
    /// Live data keys wrapped under this version.
    pub data_keys: u64,
    pub invocations: u64,
}

/// The current (highest, not retired) version of one territory's key and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentKeyVersion {
    pub territory: String,
    pub version: u32,
    pub created_at_ms: i64,
}

/// Outcome of a re-wrap pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    pub territory: String,
    pub to_version: u32,
    pub rewrapped: u64,
}

const REWRAP_BATCH: usize = 500;

impl State {
    /// The newest loaded, non-retired key version of `territory`.
    fn current_version(&self, conn: &Connection, territory: &str) -> Result<u32> {
        let loaded =
            self.keys
                .territories
                .get(territory)
                .ok_or_else(|| StoreError::NoTerritoryKey {
                    territory: territory.into(),
                })?;
        let retired: Vec<u32> = conn
            .prepare_cached(
                "SELECT version FROM key_versions WHERE territory = ?1 AND retired_at IS NOT NULL",
            )?
            .query_map([territory], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        loaded
            .keys()
            .rev()
            .find(|v| !retired.contains(v))
            .copied()
            .ok_or_else(|| StoreError::NoTerritoryKey {
                territory: territory.into(),
            })
    }

    /// Creates, wraps and records a new data key for `owner` (e.g. `case/<id>`).
    pub(crate) fn new_data_key(
        &mut self,
        conn: &Connection,
        territory: &str,
        owner: &str,
    ) -> Result<Arc<DataKey>> {
        let mut mint = self.key_mint(conn, territory)?;
        let dk = mint.mint()?;
        let dk = mint.record(self, conn, dk, owner, 0)?;
        mint.finish(conn)?;
        Ok(dk)
    }

    /// A [`KeyMint`] for new data keys of `territory` in the caller's transaction.
    pub(crate) fn key_mint<'t>(
        &self,
        conn: &Connection,
        territory: &'t str,
    ) -> Result<KeyMint<'t>> {
        let version = self.current_version(conn, territory)?;
        let next_id: i64 = conn
            .prepare_cached("SELECT coalesce(max(id), 0) + 1 FROM data_keys")?
            .query_row([], |r| r.get(0))?;
        Ok(KeyMint {
            territory,
            version,
            next_id,
            wrapped: 0,
        })
    }

    fn cache_put(&mut self, dk: Arc<DataKey>) {
        if self.dk_cache.len() >= DATA_KEY_CACHE {
            self.dk_cache.clear();
        }
        self.dk_cache.insert(dk.id(), dk);
    }

    /// The unwrapped data key `id`; `kind`/`owner_id` name the record for error messages.
    pub(crate) fn data_key(
        &mut self,
        conn: &Connection,
        id: i64,
        kind: &'static str,
        owner_id: &str,
    ) -> Result<Arc<DataKey>> {
        if let Some(k) = self.dk_cache.get(&id) {
            return Ok(k.clone());
        }
        let (territory, version, wrapped): (String, u32, Option<Vec<u8>>) = conn
            .prepare_cached("SELECT territory, kek_version, wrapped FROM data_keys WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?
            .ok_or_else(|| StoreError::NotFound {
                kind: "data key",
                id: id.to_string(),
            })?;
        let wrapped = wrapped.ok_or_else(|| StoreError::Erased {
            kind,
            id: owner_id.into(),
        })?;
        if self.keys.kek(&territory, version).is_none() {
            // A `keys rotate` may have added a version while we run.
            self.keys.reload_territories()?;
            self.register_versions(conn)?;
        }
        let kek =
            self.keys
                .kek(&territory, version)
                .ok_or_else(|| StoreError::KeyVersionMissing {
                    territory: territory.clone(),
                    version,
                })?;
        let dk = Arc::new(DataKey::unwrap(id, &wrapped, kek, &territory)?);
        self.cache_put(dk.clone());
        Ok(dk)
    }

    /// Adds `n` encryptions to a data key's persisted counter, refusing past the limit.
    pub(crate) fn count_invocations(&self, conn: &Connection, dk_id: i64, n: u64) -> Result<()> {
        let used: i64 = conn
            .prepare_cached("UPDATE data_keys SET invocations = invocations + ?1 WHERE id = ?2 RETURNING invocations")?
            .query_row(params![n as i64, dk_id], |r| r.get(0))?;
        within_limit(used as u64, || format!("data key {dk_id}"))?;
        Ok(())
    }

    /// Records loaded key versions that the database does not know yet and checks the known
    /// ones still match.
    fn register_versions(&self, conn: &Connection) -> Result<()> {
        for (territory, versions) in &self.keys.territories {
            for (version, kek) in versions {
                let recorded: Option<String> = conn
                    .query_row(
                        "SELECT key_id FROM key_versions WHERE territory = ?1 AND version = ?2",
                        params![territory, version],
                        |r| r.get(0),
                    )
                    .optional()?;
                match recorded {
                    Some(r) if r != kek.key_id => {
                        return Err(StoreError::KeyMismatch {
                            territory: territory.clone(),
                            version: *version,
                            loaded: kek.key_id.clone(),
                            recorded: r,
                        });
                    }
                    Some(_) => {}
                    // A reader only checks; the writer records a new version.
                    None if self.reader => {}
                    None => {
                        conn.execute(
                            "INSERT INTO key_versions (territory, version, key_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                            params![territory, version, kek.key_id, now_ms()],
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Db {
    pub(super) fn register_key_versions(&mut self) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.st.register_versions(&tx)?;
        tx.commit()?;
        Ok(())
    }

    /// All key versions known to the database or loaded.
    /// Re-encrypts the database under `new_key` (`keys rekey-db`, daemon stopped) and audits
    /// it; the caller then replaces the key file. The connection stays usable.
    pub fn rekey(&mut self, actor: &Actor, new_key: &[u8; 32]) -> Result<()> {
        let old = super::open::db_key_fingerprint(&self.st.keys.db_key);
        let new = super::open::db_key_fingerprint(new_key);
        super::open::rekey(&self.conn, &self.path, new_key)?;
        self.audit(
            &AuditEvent::new(actor, "keys.rekey_db", "appliance", Outcome::Success)
                .details(serde_json::json!({ "from": old, "to": new })),
        )?;
        Ok(())
    }

    /// Id of the index key the blind indexes were last rebuilt under (`keys rotate-index`);
    /// `None` before the first rotation.
    pub fn index_key_id(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'index_key_id'",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Recomputes every patient's blind indexes (last name, date of birth, MRN) under
    /// `new_key` in one transaction, records the key's id and audits it (`keys rotate-index`,
    /// daemon stopped); returns how many patients were re-indexed. A patient whose data key was
    /// destroyed (crypto-erased) has nothing to index and keeps none.
    pub fn rebuild_blind_indexes(&mut self, actor: &Actor, new_key: &[u8; 32]) -> Result<u64> {
        use crate::crypto::blind::{BlindField, BlindIndexer};
        let bi = BlindIndexer::new(zeroize::Zeroizing::new(*new_key));
        let new_id = crate::crypto::key_id(new_key, "blind-index");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<String> = tx
            .prepare("SELECT id FROM patients ORDER BY id")?
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        let (mut done, mut erased) = (0u64, 0u64);
        for id in ids {
            let p = match self.st.read_patient(&tx, &id) {
                Ok(p) => p,
                Err(StoreError::Erased { .. }) => {
                    tx.execute(
                        "UPDATE patients SET bi_last_name = NULL, bi_dob = NULL, bi_mrn = NULL WHERE id = ?1",
                        [&id],
                    )?;
                    erased += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let t = &p.territory;
            let ix = |f, v: &Option<String>| v.as_deref().and_then(|v| bi.index(f, t, v));
            tx.prepare_cached(
                "UPDATE patients SET bi_last_name = ?2, bi_dob = ?3, bi_mrn = ?4 WHERE id = ?1",
            )?
            .execute(params![
                id,
                ix(BlindField::LastName, &p.patient.last_name),
                ix(BlindField::DateOfBirth, &p.patient.date_of_birth),
                ix(BlindField::Mrn, &p.patient.mrn)
            ])?;
            done += 1;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('index_key_id', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [&new_id],
        )?;
        let ev = AuditEvent::new(actor, "keys.rotate_index", "appliance", Outcome::Success)
            .details(
                serde_json::json!({ "index_key": new_id, "patients": done, "erased": erased }),
            );
        super::audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(done)
    }

    pub fn key_versions(&self) -> Result<Vec<KeyVersionInfo>> {
        let mut st = self.conn.prepare(
            "SELECT k.territory, k.version, k.key_id, k.retired_at IS NOT NULL, k.invocations, \
             (SELECT count(*) FROM data_keys d WHERE d.territory = k.territory AND d.kek_version = k.version AND d.wrapped IS NOT NULL) \
             FROM key_versions k ORDER BY k.territory, k.version",
        )?;
        let rows = st.query_map([], |r| {
            Ok(KeyVersionInfo {
                territory: r.get(0)?,
                version: r.get(1)?,
                key_id: r.get(2)?,
                retired: r.get(3)?,
                invocations: r.get::<_, i64>(4)? as u64,
                data_keys: r.get::<_, i64>(5)? as u64,
                loaded: false,
            })
        })?;
        let mut out: Vec<KeyVersionInfo> = rows.collect::<Result<_, _>>()?;
        for k in &mut out {
            k.loaded = self.st.keys.kek(&k.territory, k.version).is_some();
        }
        Ok(out)
    }

    /// Each territory's current key version and its creation time: one row per territory
    /// (`/metrics` and the rotation alarm read this; it counts no data keys, unlike
    /// [`Db::key_versions`]). SQLite takes the bare columns from the row holding `max(version)`.
    pub fn current_key_versions(&self) -> Result<Vec<CurrentKeyVersion>> {
        let mut st = self.conn.prepare_cached(
            "SELECT territory, max(version), created_at FROM key_versions \
             WHERE retired_at IS NULL GROUP BY territory ORDER BY territory",
        )?;
        let rows = st.query_map([], |r| {
            Ok(CurrentKeyVersion {
                territory: r.get(0)?,
                version: r.get(1)?,
                created_at_ms: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Creates territory key version N+1 as a new 0600 file in `key_dir`, loads and records it.
    /// New data keys are wrapped under it at once; existing ones stay readable under their
    /// version until [`Db::rewrap`] moves them. Returns the new version.
    pub fn rotate_territory_key(
        &mut self,
        actor: &Actor,
        territory: &str,
        key_dir: &std::path::Path,
    ) -> Result<u32> {
        if !crate::model::is_valid_ident(territory) {
            return Err(StoreError::InvalidId {
                kind: "territory",
                id: territory.into(),
            });
        }
        self.st.keys.reload_territories()?;
        let loaded_max = self
            .st
            .keys
            .territories
            .get(territory)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0);
        let recorded_max: u32 = self.conn.query_row(
            "SELECT coalesce(max(version), 0) FROM key_versions WHERE territory = ?1",
            [territory],
            |r| r.get(0),
        )?;
        let next = loaded_max.max(recorded_max) + 1;
        let k = random_key()?;
        crate::crypto::keyring::write_key32(key_dir, &territory_key_name(territory, next), &k)?;
        self.st.keys.reload_territories()?;
        if self.st.keys.kek(territory, next).is_none() {
            return Err(StoreError::KeyOutsideSources {
                file: territory_key_name(territory, next),
                dir: key_dir.to_path_buf(),
                sources: self
                    .st
                    .keys
                    .sources
                    .dirs()
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        self.st.register_versions(&tx)?;
        let ev = AuditEvent::new(
            actor,
            "keys.rotate",
            format!("territory-key/{territory}/v{next}"),
            Outcome::Success,
        )
        .territory(territory);
        super::audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(next)
    }

    /// Re-wraps every live data key of `territory` that is under an older version than the
    /// current one, in batches of [`REWRAP_BATCH`] per transaction, so the daemon keeps serving.
    pub fn rewrap(&mut self, actor: &Actor, territory: &str) -> Result<RewrapReport> {
        let to = self.st.current_version(&self.conn, territory)?;
        let mut rep = RewrapReport {
            territory: territory.into(),
            to_version: to,
            rewrapped: 0,
        };
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let batch: Vec<(i64, u32, Vec<u8>)> = tx
                .prepare(
                    "SELECT id, kek_version, wrapped FROM data_keys \
                     WHERE territory = ?1 AND kek_version < ?2 AND wrapped IS NOT NULL ORDER BY id LIMIT ?3",
                )?
                .query_map(params![territory, to, REWRAP_BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            if batch.is_empty() {
                break;
            }
            let new_kek = self
                .st
                .keys
                .kek(territory, to)
                .expect("current version is loaded");
            for (id, version, wrapped) in &batch {
                let old = self.st.keys.kek(territory, *version).ok_or_else(|| {
                    StoreError::KeyVersionMissing {
                        territory: territory.into(),
                        version: *version,
                    }
                })?;
                let dk = DataKey::unwrap(*id, wrapped, old, territory)?;
                let rewrapped = dk.wrap(new_kek, territory)?;
                tx.execute(
                    "UPDATE data_keys SET wrapped = ?1, kek_version = ?2 WHERE id = ?3",
                    params![rewrapped, to, id],
                )?;
            }
            tx.execute(
                "UPDATE key_versions SET invocations = invocations + ?1 WHERE territory = ?2 AND version = ?3",
                params![batch.len() as i64, territory, to],
            )?;
            let ev = AuditEvent::new(
                actor,
                "keys.rewrap",
                format!("territory-key/{territory}/v{to}"),
                Outcome::Success,
            )
            .territory(territory)
            .details(serde_json::json!({ "data_keys": batch.len() }));
            super::audit::append(&tx, &self.st, &ev, now_ms())?;
            tx.commit()?;
            rep.rewrapped += batch.len() as u64;
        }
        Ok(rep)
    }

    /// Marks a key version retired once no live data key uses it; its file can then be removed.
    pub fn retire_key_version(
        &mut self,
        actor: &Actor,
        territory: &str,
        version: u32,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let newer: i64 = tx.query_row(
            "SELECT count(*) FROM key_versions WHERE territory = ?1 AND version > ?2 AND retired_at IS NULL",
            params![territory, version],
            |r| r.get(0),
        )?;
        if newer == 0 {
            return Err(StoreError::KeyInUse {
                territory: territory.into(),
                version,
                why: "is the current version; rotate before retiring it".into(),
            });
        }
        let in_use: i64 = tx.query_row(
            "SELECT count(*) FROM data_keys WHERE territory = ?1 AND kek_version = ?2 AND wrapped IS NOT NULL",
            params![territory, version],
            |r| r.get(0),
        )?;
        if in_use > 0 {
            return Err(StoreError::KeyInUse {
                territory: territory.into(),
                version,
                why: format!(
                    "still wraps {in_use} data keys; run `hema3n-edge keys rewrap --territory {territory}` first"
                ),
            });
        }
        let n = tx.execute(
            "UPDATE key_versions SET retired_at = ?1 WHERE territory = ?2 AND version = ?3 AND retired_at IS NULL",
            params![now_ms(), territory, version],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "active key version",
                id: format!("{territory}/v{version}"),
            });
        }
        let ev = AuditEvent::new(
            actor,
            "keys.retire",
            format!("territory-key/{territory}/v{version}"),
            Outcome::Success,
        )
        .territory(territory);
        super::audit::append(&tx, &self.st, &ev, now_ms())?;
        tx.commit()?;
        Ok(())
    }

    /// Destroys data key `id` (crypto-erase) inside `tx`: every ciphertext under it becomes noise.
    pub(super) fn destroy_data_key(st: &mut State, conn: &Connection, id: i64) -> Result<()> {
        conn.execute(
            "UPDATE data_keys SET wrapped = NULL, destroyed_at = ?1 WHERE id = ?2",
            params![now_ms(), id],
        )?;
        st.dk_cache.remove(&id);
        st.erased.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// An error naming `what` once a key has been used more than [`MAX_INVOCATIONS`] times.
fn within_limit(used: u64, what: impl FnOnce() -> String) -> Result<()> {
    if used > MAX_INVOCATIONS {
        return Err(crate::crypto::CryptoError::InvocationLimit { what: what() }.into());
    }
    Ok(())
}

/// New data keys of one territory within one transaction (one record, or a batch of them): the
/// current key version and the next id are looked up once, each key's row is written with the
/// seals it already made (no second update), and the territory key's use counter is bumped
/// once for all in [`KeyMint::finish`] — which the caller must reach before committing. Nothing
/// else may create data keys in the transaction while a mint is in use (ids are its own count).
pub(crate) struct KeyMint<'t> {
    territory: &'t str,
    version: u32,
    next_id: i64,
    /// Keys wrapped under the territory key so far.
    wrapped: u64,
}

impl KeyMint<'_> {
    /// A fresh data key with the next id, not recorded yet: seal with it, then
    /// [`KeyMint::record`] it in the same transaction.
    pub(crate) fn mint(&mut self) -> Result<DataKey> {
        let dk = DataKey::from_bytes(self.next_id, random_key()?);
        self.next_id += 1;
        Ok(dk)
    }

    /// Wraps `dk` under the territory key and records it for `owner` with the `invocations`
    /// (field seals) it has made; caches it.
    pub(crate) fn record(
        &mut self,
        st: &mut State,
        conn: &Connection,
        dk: DataKey,
        owner: &str,
        invocations: u64,
    ) -> Result<Arc<DataKey>> {
        let kek = st
            .keys
            .kek(self.territory, self.version)
            .expect("current version is loaded");
        let wrapped = dk.wrap(kek, self.territory)?;
        self.wrapped += 1;
        conn.prepare_cached(
            "INSERT INTO data_keys (id, territory, kek_version, wrapped, owner, created_at, invocations) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            dk.id(),
            self.territory,
            self.version,
            wrapped,
            owner,
            now_ms(),
            invocations as i64
        ])?;
        within_limit(invocations, || format!("data key {}", dk.id()))?;
        let dk = Arc::new(dk);
        st.cache_put(dk.clone());
        Ok(dk)
    }

    /// Counts the wraps against the territory key; past its limit the caller's transaction
    /// must roll back.
    pub(crate) fn finish(self, conn: &Connection) -> Result<()> {
        if self.wrapped == 0 {
            return Ok(());
        }
        let used: i64 = conn
            .prepare_cached(
                "UPDATE key_versions SET invocations = invocations + ?3 WHERE territory = ?1 AND version = ?2 RETURNING invocations",
            )?
            .query_row(
                params![self.territory, self.version, self.wrapped as i64],
                |r| r.get(0),
            )?;
        within_limit(used as u64, || {
            territory_key_name(self.territory, self.version)
        })
    }
}
