//! [`Store`]: the async handle of the database. One owner thread runs jobs sent over a
//! bounded channel and answers each on a oneshot; no database lock is ever held in async code.

use tokio::sync::{mpsc, oneshot};

use super::{Db, Result, StoreError};

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// Async handle to the storage owner thread. Cloning is cheap; the thread ends when the last
/// handle is dropped, after checkpointing the WAL.
#[derive(Clone)]
pub struct Store {
    /// Jobs for the owner thread, which holds the receiving end.
    jobs: mpsc::Sender<Job>,
}

impl Store {
    /// Moves `db` onto its own thread. Returns the handle and the thread to join at shutdown.
    pub fn spawn(db: Db, capacity: usize) -> (Store, std::thread::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Job>(capacity);
        let handle = std::thread::Builder::new()
            .name("storage".into())
            .spawn(move || {
                let mut db = db;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut db);
                }
                if let Err(e) = db.wal_checkpoint() {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
                tracing::info!("storage closed");
            })
            .expect("spawn storage thread");
        (Store { jobs: tx }, handle)
    }

    /// Runs `f` on the owner thread and returns its result. Waits when the queue is full.
    pub async fn call<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = reply.send(f(db));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
