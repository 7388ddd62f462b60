//! The owner thread of a database: one thread holds the value (a [`Db`], the receiver's
//! database) and runs jobs sent over a bounded channel, answering each on a oneshot. Async
//! code reaches it only through [`Owner::call`]; no database lock is ever held in async code.

use tokio::sync::{mpsc, oneshot};

use super::{Db, Result, StoreError};

/// What an owner thread holds.
pub trait Owned: Send + 'static {
    /// The thread's name (shown by `ps`, `top -H`, the journal).
    const THREAD: &'static str;
    /// Runs on the thread after the last handle is gone (e.g. a final WAL checkpoint).
    fn close(&mut self);
}

type Job<T> = Box<dyn FnOnce(&mut T) + Send>;

/// Async handle to an owner thread. Cloning is cheap; the thread ends when the last handle is
/// dropped, after [`Owned::close`].
pub struct Owner<T> {
    /// Jobs for the owner thread, which holds the receiving end.
    jobs: mpsc::Sender<Job<T>>,
}

impl<T> Clone for Owner<T> {
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

/// The appliance's store: its [`Db`] on the `storage` thread.
pub type Store = Owner<Db>;

impl Owned for Db {
    const THREAD: &'static str = "storage";
    fn close(&mut self) {
        if let Err(e) = self.wal_checkpoint() {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        tracing::info!("storage closed");
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
        let handle = std::thread::Builder::new()
            .name(T::THREAD.into())
            .spawn(move || {
                let Some(mut value) = make() else {
                    return;
                };
                while let Some(job) = rx.blocking_recv() {
                    job(&mut value);
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
        let job: Job<T> = Box::new(move |v| {
            let _ = reply.send(f(v));
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}
