//! What every long operation shares: worker threads, a memory budget, durability, a progress
//! callback and a cancellation token ([`RunOptions`]), and the thread pools they run on.
//!
//! Invariant: a cancelled operation stops between chunks with [`Error::Cancelled`] and leaves
//! what a kill would (a resumable job, the old array, no output file), never half a chunk; a
//! pool of a given size is built once per process and reused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};
use crate::progress::ProgressFn;

/// Whether writes are made durable before an array (or file) is published.
///
/// ```
/// use chunkwise::{ConvertOptions, Durability};
/// assert_eq!(Durability::default(), Durability::Sync);
/// // Scratch output that a power cut may lose: skip the fsyncs.
/// let opts = ConvertOptions::default().durability(Durability::NoSync);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Sync every chunk and directory once, before `zarr.json` is written (the default).
    #[default]
    Sync,
    /// Skip syncing (scratch data; a power cut may lose published chunks).
    NoSync,
}

/// Default bytes of input held at once by streaming operations (convert, export, append).
///
/// ```
/// assert_eq!(chunkwise::DEFAULT_MEMORY, 256 << 20);
/// // A machine with memory to spare reads bigger blocks:
/// let opts = chunkwise::ConvertOptions::default().memory(Some(4 * chunkwise::DEFAULT_MEMORY));
/// # let _ = opts;
/// ```
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// A token that stops a running operation between chunks ([`Error::Cancelled`]). Clones share
/// the token: cancel one and every operation holding a clone stops.
///
/// ```
/// let cancel = chunkwise::Cancel::new();
/// let for_the_job = cancel.clone();
/// cancel.cancel();
/// assert!(for_the_job.is_cancelled());
/// ```
#[derive(Clone, Default, Debug)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A token not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// A token that is cancelled when `flag` becomes true (a signal handler's flag, say).
    pub fn from_flag(flag: Arc<AtomicBool>) -> Cancel {
        Cancel(flag)
    }

    /// Asks every operation holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The settings every long operation shares; each operation's options embed one (and keep
/// setters for its fields).
///
/// ```
/// use chunkwise::{Cancel, Durability, RunOptions};
/// let run = RunOptions::default()
///     .threads(Some(4))
///     .memory(Some(2 << 30))
///     .durability(Durability::NoSync)
///     .cancel(Cancel::new());
/// let opts = chunkwise::ExecOptions::default().run(run);
/// # let _ = opts;
/// ```
#[derive(Clone, Default)]
pub struct RunOptions {
    pub(crate) threads: Option<usize>,
    pub(crate) memory: Option<u64>,
    pub(crate) durability: Durability,
    pub(crate) progress: Option<ProgressFn>,
    pub(crate) cancel: Option<Cancel>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("threads", &self.threads)
            .field("memory", &self.memory)
            .field("durability", &self.durability)
            .field("progress", &self.progress.is_some())
            .field("cancel", &self.cancel)
            .finish()
    }
}

impl RunOptions {
    /// Worker threads (default: one per core).
    pub fn threads(mut self, n: Option<usize>) -> Self {
        self.threads = n;
        self
    }
    /// Memory budget in bytes (each operation says what its default is).
    pub fn memory(mut self, bytes: Option<u64>) -> Self {
        self.memory = bytes;
        self
    }
    /// Whether to fsync before publishing (default [`Durability::Sync`]).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// A progress callback: called at most about 20 times a second, and once at the end.
    pub fn progress(mut self, cb: Option<ProgressFn>) -> Self {
        self.progress = cb;
        self
    }
    /// A cancellation token, checked between chunks.
    pub fn cancel(mut self, token: Cancel) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Runs `f` on this run's thread pool: what an embedding program does around calls that
    /// take no options ([`Input::read_region`](crate::Input::read_region),
    /// [`View::read_region`](crate::View::read_region)), so that their parallel decoding uses
    /// the same threads as everything else and never rayon's global pool.
    ///
    /// ```
    /// use chunkwise::{Input, Region, RunOptions};
    /// let a = ndarray::ArrayD::<u16>::from_elem(vec![4, 4], 3);
    /// let input = Input::from_array(a.view())?;
    /// let block = RunOptions::default()
    ///     .threads(Some(2))
    ///     .install(|| input.read_region::<u16>(&Region::new(vec![0..2, 0..4])))?;
    /// assert_eq!(block.sum(), 24);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// Whatever `f` returns; [`Error::InvalidOption`] for zero threads.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        with_threads(self.threads, f)
    }

    /// [`Error::Cancelled`] once the token is cancelled.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.is_cancelled() => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }
}

/// Adds `RunOptions` setters (threads, memory, durability, progress, cancel, run) to an
/// options struct with a `run: RunOptions` field.
macro_rules! run_setters {
    ($t:ty) => {
        impl $t {
            /// Worker threads (default: one per core).
            pub fn threads(mut self, n: Option<usize>) -> Self {
                self.run.threads = n;
                self
            }
            /// Memory budget in bytes.
            pub fn memory(mut self, bytes: Option<u64>) -> Self {
                self.run.memory = bytes;
                self
            }
            /// Whether to fsync before publishing (default [`crate::Durability::Sync`]).
            pub fn durability(mut self, d: crate::Durability) -> Self {
                self.run.durability = d;
                self
            }
            /// A progress callback (throttled to about 20 calls a second, plus the last).
            pub fn progress(mut self, cb: Option<crate::ProgressFn>) -> Self {
                self.run.progress = cb;
                self
            }
            /// A cancellation token, checked between chunks ([`crate::Error::Cancelled`]).
            pub fn cancel(mut self, token: crate::Cancel) -> Self {
                self.run.cancel = Some(token);
                self
            }
            /// All the shared settings at once.
            pub fn run(mut self, run: crate::RunOptions) -> Self {
                self.run = run;
                self
            }
        }
    };
}
pub(crate) use run_setters;

/// Runs `f` on a pool of `threads` workers (`None`: rayon's global pool, one per core). Pools
/// are built once per size and kept.
pub(crate) fn with_threads<R: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    match threads {
        None => f(),
        Some(0) => Err(Error::option("threads", "must be at least 1")),
        // Already on a pool of this size (a nested call): no hop. (The thread index first:
        // asking a thread outside any pool for the pool size creates rayon's global pool,
        // which a forked child would inherit without its threads.)
        Some(n) if rayon::current_thread_index().is_some() && n == rayon::current_num_threads() => {
            f()
        }
        Some(n) => pool(n)?.install(f),
    }
}

/// The kept pool of `n` workers of this process. Pools are kept per process id: a child made
/// by `fork` (Python's multiprocessing) inherits the parent's pools without their threads, so
/// it builds its own instead of waiting forever on workers that do not exist there.
pub(crate) fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>> {
    type Pools = HashMap<(u32, usize), Arc<rayon::ThreadPool>>;
    static POOLS: OnceLock<Mutex<Pools>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (std::process::id(), n);
    if let Some(p) = pools.get(&key) {
        return Ok(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("chunkwise-{i}"))
            .build()
            .map_err(|e| Error::option("threads", e.to_string()))?,
    );
    pools.insert(key, p.clone());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_built_once_per_size() {
        let a = pool(3).unwrap();
        let b = pool(3).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            with_threads(Some(3), || Ok(rayon::current_num_threads())).unwrap(),
            3
        );
        assert!(with_threads(Some(0), || Ok(())).is_err());
    }

    #[test]
    fn a_cancelled_token_stops_a_run() {
        let c = Cancel::new();
        let run = RunOptions::default().cancel(c.clone());
        run.check().unwrap();
        c.cancel();
        assert!(matches!(run.check(), Err(Error::Cancelled)));
    }
}
