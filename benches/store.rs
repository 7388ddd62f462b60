//! `scripts/bench.sh store`: the encrypted store against raw baselines measured in the same run.
//!
//! - raw plain SQLite vs raw SQLCipher: the same batched inserts (1000 rows per transaction,
//!   WAL, synchronous=FULL) — the cost of page encryption alone;
//! - the store's patient insert (SQLCipher + per-record data key + field encryption + blind
//!   indexes + chained audit entry, 1000 per transaction) vs plain SQLite storing the same
//!   patients in the same tables and indexes without any of it — the whole cost of our
//!   protection;
//! - field seal/open cost; committed audit append p50/p99; audit verify of 10^6 entries vs a raw
//!   scan of the same rows; `audit query` by patient over those 10^6 entries (p50, p99) vs the
//!   raw indexed SELECT of the same rows plus a raw one-row commit.
//!
//! Prints tables and `BENCH name value=… unit=… baseline=… ratio=…` lines (SYSTEM.md §8).
//! `HEMA3N_BENCH_QUICK=1` shrinks sizes for a smoke run.

use std::time::Instant;

use hema3n_edge::config::Config;
use hema3n_edge::crypto::field::{DataKey, FieldLoc};
use hema3n_edge::crypto::keyring::{self, KeySources, Keyring};
use hema3n_edge::model::{Actor, Address, AuditEvent, Outcome, Patient};
use hema3n_edge::storage::{AuditFilter, Db};
use rusqlite::Connection;

mod common;
use common::{bench_line, pct, quick, raw_conn, raw_inserts};

/// Plain SQLite storing the same patients the way an unprotected store would, 1000 per
/// transaction; patients/s. Same tables and indexes as the store's schema (`storage::schema`):
/// the patient row with its text primary key and its three search indexes — over the plaintext
/// last name, date of birth and MRN instead of blind indexes — and one audit row per patient with
/// the same columns and the four query indexes, minus what protection adds (no data key, no
/// field seals, no chain hash or MAC). Until 2026-12-07 this baseline indexed sequential
/// integers and had no audit indexes, which flattered it: index pages of random keys are what a
/// real store dirties (see docs/benchmarks.md, #22 item 3).
fn plain_patient_shape(c: &mut Connection, ps: &[Patient], n: usize) -> f64 {
    c.execute_batch(
        "CREATE TABLE patients (id TEXT PRIMARY KEY, territory TEXT NOT NULL, created_at INTEGER NOT NULL, \
           updated_at INTEGER NOT NULL, first_name TEXT, last_name TEXT, date_of_birth TEXT, ssn TEXT, email TEXT, \
           phone TEXT, address TEXT, insurance TEXT, mrn TEXT, sex TEXT) STRICT; \
         CREATE INDEX patients_last_name ON patients (territory, last_name); \
         CREATE INDEX patients_dob ON patients (territory, date_of_birth); \
         CREATE INDEX patients_mrn ON patients (territory, mrn); \
         CREATE TABLE audit_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, actor TEXT NOT NULL, \
           role TEXT NOT NULL, action TEXT NOT NULL, resource TEXT NOT NULL, outcome TEXT NOT NULL, \
           territory TEXT NOT NULL, details TEXT NOT NULL); \
         CREATE INDEX audit_by_resource ON audit_log (resource, seq); \
         CREATE INDEX audit_by_actor ON audit_log (actor, seq); \
         CREATE INDEX audit_by_ts ON audit_log (ts); \
         CREATE INDEX audit_by_territory ON audit_log (territory, seq);",
    )
    .unwrap();
    // The details the store records for the same entry.
    let details = hema3n_edge::model::access::recorded_details(&AuditEvent::new(
        &Actor::cli(),
        "patient.create",
        "patient/x",
        Outcome::Success,
    ))
    .to_string();
    let t = Instant::now();
    for _ in 0..n / ps.len() {
        let tx = c.transaction().unwrap();
        let now = hema3n_edge::model::now_ms();
        for p in ps {
            let id = uuid::Uuid::now_v7().to_string();
            let address = p
                .address
                .as_ref()
                .map(|a| serde_json::to_string(a).unwrap());
            tx.prepare_cached(
                "INSERT INTO patients (id, territory, created_at, updated_at, first_name, last_name, date_of_birth, ssn, \
                 email, phone, address, mrn) VALUES (?1, 'default', ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .unwrap()
            .execute(rusqlite::params![
                id, now, p.first_name, p.last_name, p.date_of_birth, p.ssn, p.email, p.phone, address, p.mrn
            ])
            .unwrap();
            tx.prepare_cached(
                "INSERT INTO audit_log (ts, actor, role, action, resource, outcome, territory, details) \
                 VALUES (?1, 'cli', 'admin', 'patient.create', ?2, 'success', 'default', ?3)",
            )
            .unwrap()
            .execute(rusqlite::params![now, format!("patient/{id}"), details])
            .unwrap();
        }
        tx.commit().unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn patient(i: usize) -> Patient {
    Patient {
        first_name: Some(format!("First{i}")),
        last_name: Some(format!("Last{}", i % 5000)),
        date_of_birth: Some(format!("19{:02}-0{}-1{}", 40 + i % 60, 1 + i % 9, i % 10)),
        ssn: Some(format!(
            "{:03}-{:02}-{:04}",
            100 + i % 800,
            10 + i % 90,
            i % 10000
        )),
        phone: Some("+1 555 0100".into()),
        mrn: Some(format!("MRN{i:08}")),
        address: Some(Address {
            city: Some("Springfield".into()),
            zip: Some("12345".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn open_store(dir: &std::path::Path, checkpoint_every: u64) -> Db {
    let keys = dir.join("keys");
    for k in [
        keyring::DB_KEY,
        keyring::INDEX_KEY,
        keyring::AUDIT_KEY,
        "territory.default.v1.key",
    ] {
        keyring::ensure_key32(&keys, k).unwrap();
    }
    keyring::ensure_signing_key(&keys).unwrap();
    let mut cfg = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    cfg.keys.dir = keys.clone();
    cfg.audit.checkpoint_every_entries = checkpoint_every;
    Db::open(&cfg, Keyring::load(KeySources::from_env(&keys)).unwrap()).unwrap()
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let n = if quick() { 10_000 } else { 100_000 };
    let key = hex::encode([7u8; 32]);

    println!("## store: {n} rows, 1000 rows per transaction, WAL, synchronous=FULL");
    let plain = raw_inserts(&mut raw_conn(&tmp.path().join("plain.db"), None), n, 100);
    let cipher = raw_inserts(
        &mut raw_conn(&tmp.path().join("cipher.db"), Some(&key)),
        n,
        100,
    );
    println!("raw plain SQLite inserts     {plain:>12.0} rows/s");
    println!(
        "raw SQLCipher inserts        {cipher:>12.0} rows/s   ({:.2}x plain)",
        cipher / plain
    );
    bench_line("sqlcipher_rows_per_s", cipher, "rows/s", plain);

    let np = n / 5;
    let batch: Vec<Patient> = (0..1000).map(patient).collect();
    let plain_shape = plain_patient_shape(
        &mut raw_conn(&tmp.path().join("shape.db"), None),
        &batch,
        np,
    );
    let mut db = open_store(&tmp.path().join("store"), 1000);
    let actor = Actor::cli();
    let t = Instant::now();
    for _ in 0..np / 1000 {
        db.create_patients(&actor, "default", &batch).unwrap();
    }
    let store = np as f64 / t.elapsed().as_secs_f64();
    println!("plain SQLite, patient shape  {plain_shape:>12.0} patients/s");
    println!(
        "encrypted store patients     {store:>12.0} patients/s ({:.2}x plain; data key + 10 fields + 3 blind indexes + audit each)",
        store / plain_shape
    );
    bench_line("store_rows_per_s", store, "patients/s", plain_shape);

    // Field encryption cost.
    let dk = DataKey::from_bytes(1, hema3n_edge::crypto::random_key().unwrap());
    let loc = FieldLoc {
        table: "patients",
        column: "last_name",
        row_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
    };
    let iters = if quick() { 20_000 } else { 200_000 };
    let t = Instant::now();
    let mut ct = Vec::new();
    for _ in 0..iters {
        ct = dk.seal(loc, b"Johnson-Smythe").unwrap();
    }
    let seal_ns = t.elapsed().as_nanos() as f64 / iters as f64;
    let t = Instant::now();
    for _ in 0..iters {
        std::hint::black_box(dk.open(loc, &ct).unwrap());
    }
    let open_ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("field seal                   {seal_ns:>12.0} ns");
    println!("field open                   {open_ns:>12.0} ns");

    // Committed audit append latency (one transaction, one fsync each).
    let mut lat = Vec::new();
    let m = if quick() { 100 } else { 1000 };
    for i in 0..m {
        let ev = AuditEvent::new(
            &actor,
            "login.failure",
            format!("user/u{i}"),
            Outcome::Denied,
        );
        let t = Instant::now();
        db.audit(&ev).unwrap();
        lat.push(t.elapsed());
    }
    let (p50, p99) = (pct(&mut lat, 0.50), pct(&mut lat, 0.99));
    println!(
        "committed audit append       p50 {:.2} ms  p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    bench_line(
        "audit_append_p99_ms",
        p99.as_secs_f64() * 1e3,
        "ms",
        p50.as_secs_f64() * 1e3,
    );
    drop(db);

    // Audit verify of 10^6 entries vs a raw scan of the same rows.
    let total = if quick() { 100_000 } else { 1_000_000 };
    let mut db = open_store(&tmp.path().join("audit"), 1000);
    let evs: Vec<AuditEvent> = (0..10_000)
        .map(|i| {
            AuditEvent::new(
                &actor,
                "patient.read",
                format!("patient/{i:036}"),
                Outcome::Success,
            )
            .territory("default")
        })
        .collect();
    let t = Instant::now();
    while (db.ping().unwrap() as usize) < total {
        db.audit_many(&evs).unwrap();
    }
    println!(
        "wrote {} audit entries in {:.1} s",
        db.ping().unwrap(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let scanned: i64 = db
        .raw_connection_for_tests()
        .query_row("SELECT count(*), sum(length(actor) + length(action) + length(resource) + length(details) + length(hash) + length(mac)) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    let scan_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let rep = db.verify_audit().unwrap();
    let verify_s = t.elapsed().as_secs_f64();
    assert!(rep.ok());
    println!("raw scan of {scanned} entries   {scan_s:>10.2} s");
    println!(
        "audit verify of {} entries {verify_s:>10.2} s ({} checkpoints)",
        rep.entries, rep.checkpoints
    );
    bench_line(
        if quick() {
            "audit_verify_100k_s"
        } else {
            "audit_verify_1m_s"
        },
        verify_s,
        "s",
        scan_s,
    );

    // `audit query --patient` over the same log (10,000 patients): the store's audited
    // query (its own entry committed, one fsync) vs the raw indexed SELECT of the same rows plus
    // a raw one-row commit (the physical cost of an audited read).
    let q = if quick() { 200 } else { 1000 };
    db.raw_connection_for_tests()
        .execute_batch("CREATE TABLE bench_commit (at INTEGER)")
        .unwrap();
    let (mut ours, mut raw) = (Vec::with_capacity(q), Vec::with_capacity(q));
    for k in 0..q {
        let pid = format!("{:036}", (k * 7919) % 10_000);
        let raw_select = || {
            let c = db.raw_connection_for_tests();
            let mut st = c
                .prepare_cached(
                    "SELECT seq, ts, actor, role, action, resource, outcome, territory, details FROM audit_log \
                     WHERE resource = 'patient/' || ?1 ORDER BY seq DESC LIMIT 1000",
                )
                .unwrap();
            st.query_map([&pid], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(8)?,
                ))
            })
            .unwrap()
            .count()
        };
        // Once untimed, so both sides read warm pages.
        raw_select();
        let t = Instant::now();
        let n = raw_select();
        // What an audited read must also do: commit one small row (one fsync).
        db.raw_connection_for_tests()
            .execute("INSERT INTO bench_commit (at) VALUES (?1)", [k as i64])
            .unwrap();
        raw.push(t.elapsed());
        let f = AuditFilter {
            patient: Some(pid),
            limit: 1000,
            ..Default::default()
        };
        let t = Instant::now();
        let rows = db.audit_query(&actor, &f).unwrap();
        ours.push(t.elapsed());
        assert_eq!(rows.len(), n);
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let (o50, o99) = (ms(pct(&mut ours, 0.50)), ms(pct(&mut ours, 0.99)));
    let (r50, r99) = (ms(pct(&mut raw, 0.50)), ms(pct(&mut raw, 0.99)));
    println!(
        "audit query by patient ({} entries, {} per patient): p50 {o50:.2} ms  p99 {o99:.2} ms (audited: includes its own committed entry)",
        rep.entries,
        rep.entries / 10_000
    );
    println!(
        "raw indexed SELECT + one-row commit:                p50 {r50:.2} ms  p99 {r99:.2} ms"
    );
    bench_line("audit_query_patient_p50_ms", o50, "ms", r50);
    bench_line("audit_query_patient_p99_ms", o99, "ms", r99);
}
