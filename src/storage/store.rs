//! The owner threads of a database. A writer thread holds the value (a [`Db`], the receiver's
//! database) and runs jobs sent over a bounded channel, answering each on a oneshot; the
//! appliance's [`Store`] adds a pool of reader threads, each with its own read-only connection
//! (WAL readers run beside the writer). Async code reaches them only through [`Owner::call`],
//! [`Store::read`] and [`Store::audited`]; no database lock is ever held in async code.
//!
//! Group commit: audit entries of reads ([`Owner::group`]) queued while the writer is busy are
//! appended together in one transaction with one fsync, and each caller is answered only after
//! that COMMIT returned.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{Db, Result, StoreError};
use crate::model::AuditEvent;

/// Most grouped items one write transaction takes.
const GROUP_MAX: usize = 512;

/// How long the process, once exiting, waits for storage threads to close their connections.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Owner and reader threads still running, so possibly still holding a connection.
static LIVE: (Mutex<usize>, std::sync::Condvar) = (Mutex::new(0), std::sync::Condvar::new());

/// One running storage thread, counted in [`LIVE`] from before it is spawned until what it
/// owns has been dropped.
///
/// Why: SQLCipher frees its mutexes, private heap and crypto provider from an `atexit`
/// handler and a destructor. A process that exits while a detached thread is still closing a
/// connection crashed in `sqlite3FreeCodecArg` (a test binary died with SIGSEGV after every
/// test passed; the daemon's reader threads are never joined either). The first thread
/// registers [`wait_for_storage_threads`] with `atexit` after SQLite (and with it SQLCipher
/// and OpenSSL) is initialised, so it runs before their handlers.
struct Live;

impl Live {
    fn enter() -> Live {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            // SAFETY: sqlite3_initialize is thread-safe and idempotent; it only initialises
            // SQLite's globals (SQLITE_EXTRA_INIT: SQLCipher's, which register its atexit).
            let rc = unsafe { rusqlite::ffi::sqlite3_initialize() };
            if rc != rusqlite::ffi::SQLITE_OK || !crate::host::at_exit(wait_for_storage_threads) {
                tracing::warn!(rc, "could not register the storage exit hook");
            }
        });
        *LIVE.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut n = LIVE.0.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            LIVE.1.notify_all();
        }
    }
}

/// The `atexit` hook: waits (at most [`EXIT_WAIT`]) until no storage thread runs. Threads end
/// once their last handle is gone, so at a normal exit this returns at once or within the time
/// a close takes; a thread whose handles are still held (an exit on a fatal error) is waited
/// for only that long.
extern "C" fn wait_for_storage_threads() {
    let deadline = std::time::Instant::now() + EXIT_WAIT;
    let mut n = LIVE.0.lock().unwrap_or_else(|p| p.into_inner());
    while *n > 0 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        n = match LIVE.1.wait_timeout(n, left) {
            Ok((n, _)) => n,
            Err(p) => p.into_inner().0,
        };
    }
}

/// What an owner thread holds.
pub trait Owned: Send + 'static {
    /// The thread's name (shown by `ps`, `top -H`, the journal).
    const THREAD: &'static str;
    /// What [`Owner::group`] queues: items written together in one transaction.
    type Grouped: Send + 'static;
    /// Runs on the thread after the last handle is gone (e.g. a final WAL checkpoint).
    fn close(&mut self);
    /// Writes `items` (in queue order), answering each; called with every item queued at that
    /// moment (up to a cap), so concurrent callers share one commit.
    fn write_group(&mut self, items: Vec<Self::Grouped>) -> Vec<Result<()>>;
}

type Run<T> = Box<dyn FnOnce(&mut T) + Send>;

enum Job<T: Owned> {
    Run(Run<T>),
    Group(T::Grouped, oneshot::Sender<Result<()>>),
}

/// Async handle to an owner thread. Cloning is cheap; the thread ends when the last handle is
/// dropped, after [`Owned::close`].
pub struct Owner<T: Owned> {
    /// Jobs for the owner thread, which holds the receiving end.
    jobs: mpsc::Sender<Job<T>>,
}

impl<T: Owned> Clone for Owner<T> {
    fn clone(&self) -> Self {
        Owner {
            jobs: self.jobs.clone(),
        }
    }
}

/// Waits, off the async workers, for an owner thread to end (it ends once every handle is
/// gone and [`Owned::close`] ran). Returns false when it panicked.
pub async fn join(thread: std::thread::JoinHandle<()>) -> bool {
    matches!(
        tokio::task::spawn_blocking(move || thread.join()).await,
        Ok(Ok(()))
    )
}

impl Owned for Db {
    const THREAD: &'static str = "storage";
    type Grouped = AuditEvent;
    fn close(&mut self) {
        if let Err(e) = self.wal_checkpoint() {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        tracing::info!("storage closed");
    }
    fn write_group(&mut self, items: Vec<AuditEvent>) -> Vec<Result<()>> {
        let n = items.len();
        match self.audit_many(&items) {
            Ok(_) => (0..n).map(|_| Ok(())).collect(),
            // One bad entry must not fail its neighbours: each alone, with its own answer.
            Err(e) if n > 1 => {
                tracing::warn!(error = %e, entries = n, "grouped audit append failed; appending one by one");
                items.iter().map(|ev| self.audit(ev).map(|_| ())).collect()
            }
            Err(e) => vec![Err(e)],
        }
    }
}

impl<T: Owned> Owner<T> {
    /// Moves `value` onto its own thread with a queue of `capacity` jobs. Returns the handle
    /// and the thread to join at shutdown.
    pub fn spawn(value: T, capacity: usize) -> (Owner<T>, std::thread::JoinHandle<()>) {
        Self::start(move || Some(value), capacity)
    }

    /// Like [`Owner::spawn`], but `make` builds the value on the owner thread itself (a value
    /// whose construction blocks, such as a database connection whose driver runs its own
    /// runtime, must not be built on an async worker). Returns `make`'s error, once the thread
    /// has ended, when it fails.
    pub async fn spawn_with<E>(
        make: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
        capacity: usize,
    ) -> std::result::Result<(Owner<T>, std::thread::JoinHandle<()>), E>
    where
        E: From<StoreError> + Send + 'static,
    {
        let (ready, made) = oneshot::channel();
        let (owner, thread) = Self::start(
            move || match make() {
                Ok(v) => ready.send(Ok(())).ok().map(|_| v),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    None
                }
            },
            capacity,
        );
        match made.await {
            Ok(Ok(())) => Ok((owner, thread)),
            r => {
                drop(owner);
                join(thread).await;
                Err(match r {
                    Ok(Err(e)) => e,
                    _ => StoreError::Closed.into(),
                })
            }
        }
    }

    fn start(
        make: impl FnOnce() -> Option<T> + Send + 'static,
        capacity: usize,
    ) -> (Owner<T>, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job<T>>(capacity);
        let live = Live::enter();
        let handle = std::thread::Builder::new()
            .name(T::THREAD.into())
            .spawn(move || {
                // Declared first, so dropped last: after the value (and its connection).
                let _live = live;
                let Some(mut value) = make() else {
                    return;
                };
                let mut next = rx.blocking_recv();
                while let Some(job) = next.take() {
                    match job {
                        Job::Run(f) => f(&mut value),
                        Job::Group(item, reply) => {
                            let (mut items, mut replies) = (vec![item], vec![reply]);
                            // Everything grouped that queued meanwhile joins this commit; a
                            // job of another kind stops the group and runs right after it.
                            while items.len() < GROUP_MAX {
                                match rx.try_recv() {
                                    Ok(Job::Group(i, r)) => {
                                        items.push(i);
                                        replies.push(r);
                                    }
                                    Ok(other) => {
                                        next = Some(other);
                                        break;
                                    }
                                    Err(_) => break,
                                }
                            }
                            for (r, reply) in value.write_group(items).into_iter().zip(replies) {
                                let _ = reply.send(r);
                            }
                        }
                    }
                    if next.is_none() {
                        next = rx.blocking_recv();
                    }
                }
                value.close();
            })
            .expect("spawn an owner thread");
        (Owner { jobs: tx }, handle)
    }

    /// Runs `f` on the owner thread and returns its result. Waits when the queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Run<T> = Box::new(move |v| {
            let _ = reply.send(f(v));
        });
        self.jobs
            .send(Job::Run(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `item` for the next group write; returns once the transaction holding it
    /// committed (or failed).
    pub async fn group(&self, item: T::Grouped) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.jobs
            .send(Job::Group(item, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// What a read on a reader connection produced: its result, and the audit entry that must be
/// durable before the result is shown to anyone (a failed read has one too).
pub struct Audited<R> {
    pub result: Result<R>,
    pub event: Option<AuditEvent>,
}

impl<R> Audited<R> {
    /// A read that records only its success (a failure showed nothing and is the error).
    pub fn of(r: Result<(R, AuditEvent)>) -> Self {
        Self::or_failure(r, |_| None)
    }

    /// A read whose failure is recorded too, with the entry `failed` makes of its error.
    pub fn or_failure(
        r: Result<(R, AuditEvent)>,
        failed: impl FnOnce(&StoreError) -> Option<AuditEvent>,
    ) -> Self {
        match r {
            Ok((v, ev)) => Audited {
                result: Ok(v),
                event: Some(ev),
            },
            Err(e) => Audited {
                event: failed(&e),
                result: Err(e),
            },
        }
    }
}

type ReadJob = Box<dyn FnOnce(&mut Db) + Send>;

/// The appliance's store: the writer [`Db`] on the `storage` thread, and read-only
/// connections on `storage-read` threads sharing one queue.
#[derive(Clone)]
pub struct Store {
    writer: Owner<Db>,
    reads: Option<mpsc::Sender<ReadJob>>,
}

impl Store {
    /// Moves `db` onto the writer thread and opens `readers` read-only connections beside it
    /// (0: every read runs on the writer). Returns the handle and the writer thread to join at
    /// shutdown; the reader threads end with the last handle.
    pub fn spawn(
        db: Db,
        capacity: usize,
        readers: usize,
    ) -> Result<(Store, std::thread::JoinHandle<()>)> {
        let conns = (0..readers)
            .map(|_| db.open_reader())
            .collect::<Result<Vec<_>>>()?;
        if !conns.is_empty() {
            // A reader checkpoints (`Store::checkpoint_wal`); commits no longer do.
            db.defer_wal_checkpoints()?;
        }
        let (writer, thread) = Owner::spawn(db, capacity);
        let reads = (!conns.is_empty()).then(|| {
            let (tx, rx) = mpsc::channel::<ReadJob>(capacity);
            let rx = Arc::new(Mutex::new(rx));
            for (i, conn) in conns.into_iter().enumerate() {
                let rx = rx.clone();
                let live = Live::enter();
                std::thread::Builder::new()
                    .name(format!("storage-read{i}"))
                    .spawn(move || {
                        // Dropped in reverse order: the connection closes, then `_live` ends.
                        let _live = live;
                        let mut conn = conn;
                        loop {
                            // The queue is shared: whoever holds the lock waits for the next
                            // job, the others for the lock.
                            let job = match rx.lock() {
                                Ok(mut q) => q.blocking_recv(),
                                Err(_) => None,
                            };
                            let Some(job) = job else { break };
                            conn.forget_erased_keys();
                            job(&mut conn);
                            conn.forget_erased_keys();
                        }
                    })
                    .expect("spawn a storage reader thread");
            }
            tx
        });
        Ok((Store { writer, reads }, thread))
    }

    /// Runs `f` on the writer thread (every write, and reads that must see the writer's
    /// connection) and returns its result. Waits when the queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R> + Send + 'static,
    {
        self.writer.call(f).await
    }

    /// Runs `f` on a reader connection (any free one), for reads that write nothing.
    pub async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R> + Send + 'static,
    {
        let Some(reads) = &self.reads else {
            return self.writer.call(f).await;
        };
        let (reply, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |db| {
            let _ = reply.send(f(db));
        });
        reads.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether WAL checkpoints are left to [`Store::checkpoint_wal`] (readers exist); without
    /// readers, SQLite checkpoints inside the writer's commits as usual.
    pub fn checkpoints_wal(&self) -> bool {
        self.reads.is_some()
    }

    /// One PASSIVE WAL checkpoint on a reader connection, beside the writer.
    pub async fn checkpoint_wal(&self) -> Result<super::WalCheckpoint> {
        self.read(|db| db.checkpoint_wal()).await
    }

    /// An audited read: `f` runs on a reader connection, then its audit entry joins the
    /// writer's next group commit; the result is returned only once that entry is durable. A
    /// read whose entry cannot be written fails with the write's error.
    pub async fn audited<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Audited<R> + Send + 'static,
    {
        let a = self.read(move |db| Ok(f(db))).await?;
        if let Some(ev) = a.event {
            self.writer.group(ev).await?;
        }
        a.result
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{Actor, AuditEvent, Outcome};

    fn wal_bytes(db: &super::Db) -> u64 {
        let mut p = db.path().as_os_str().to_owned();
        p.push("-wal");
        std::fs::metadata(p).map_or(0, |m| m.len())
    }

    fn write(db: &mut super::Db, n: usize) {
        for i in 0..n {
            let ev = AuditEvent::new(
                &Actor::cli(),
                "test.write",
                format!("t/{i}"),
                Outcome::Success,
            )
            .details(serde_json::json!({ "pad": "x".repeat(2000) }));
            db.audit(&ev).unwrap();
        }
    }

    #[test]
    fn a_reader_checkpoints_the_wal_the_writers_commits_no_longer_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = crate::storage::test_db(dir.path());
        let reader = db.open_reader().unwrap();
        db.defer_wal_checkpoints().unwrap();
        db.checkpoint_wal().unwrap();
        // Past SQLite's 1000-page automatic checkpoint: the WAL keeps growing.
        write(&mut db, 1500);
        let grown = wal_bytes(&db);
        assert!(grown > 1000 * 4096, "{grown} bytes of WAL");
        // A reader inside a snapshot pins it: the checkpoint copies only what is before it.
        let mut pinned = db.open_reader().unwrap();
        let tx = pinned.conn.transaction().unwrap();
        let _: i64 = tx
            .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        write(&mut db, 50);
        let c = reader.checkpoint_wal().unwrap();
        assert!(c.checkpointed < c.wal_frames, "{c:?}");
        // No commit checkpointed on the way (SQLite's default would at 1000 frames).
        assert!(c.wal_frames > 1000, "{c:?}");
        drop(tx);
        // Once it ends, one checkpoint from the reader copies everything, and the next commit
        // starts the WAL over instead of growing it.
        let c = reader.checkpoint_wal().unwrap();
        assert!(!c.busy && c.checkpointed == c.wal_frames, "{c:?}");
        let before = wal_bytes(&db);
        write(&mut db, 100);
        assert_eq!(wal_bytes(&db), before, "the WAL was reused from its start");
        assert!(db.verify_audit().unwrap().ok());
    }

    /// The process exits while storage threads still close their connections. SQLCipher frees
    /// its mutexes, private heap and crypto provider from an `atexit` handler, which crashed
    /// a test binary (SIGSEGV after every test had passed) when a detached reader thread was
    /// still in `sqlite3_close`. Each round runs [`exits_right_after_dropping_a_store`] in a
    /// child process and requires a clean exit. Without the exit hook 6 of 150 children died
    /// with SIGSEGV on the dev machine (so 40 rounds catch that about four times in five);
    /// with it, none of 200.
    #[test]
    fn the_process_exits_cleanly_while_storage_threads_close() {
        let exe = std::env::current_exe().unwrap();
        let rounds = 40;
        for round in 0..rounds {
            // The parent owns the directory: the child must not spend time removing it.
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "storage::store::tests::exits_right_after_dropping_a_store",
                    "--ignored",
                    "--test-threads=1",
                ])
                .env("HEMA3N_STORE_EXIT_CHILD", dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "round {round}/{rounds}: child exited with {:?}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "round {round}: the child did not run"
            );
        }
    }

    /// The child of [`the_process_exits_cleanly_while_storage_threads_close`]: a store with a
    /// writer and four readers that all held a connection, dropped just before the process
    /// exits.
    #[test]
    #[ignore = "run as a child process by the_process_exits_cleanly_while_storage_threads_close"]
    fn exits_right_after_dropping_a_store() {
        let dir = std::env::var_os("HEMA3N_STORE_EXIT_CHILD").expect("only as a child process");
        let db = crate::storage::test_db(std::path::Path::new(&dir));
        let (store, _thread) = super::Store::spawn(db, 8, 4).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let reads = (0..16).map(|_| {
                store.read(|db| {
                    let n: i64 = db
                        .conn
                        .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))?;
                    Ok(n)
                })
            });
            for n in futures_util::future::join_all(reads).await {
                assert!(n.unwrap() > 0);
            }
        });
        drop(store);
    }
}
