//! Progress reporting through a callback, and the thread pool long operations run on.
//! Invariant: the library never prints; it calls the user's callback (from any worker thread).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// One progress report: `done` of `total` units of work in `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// What is being done (`"convert"`, `"export"`, `"verify"`, ...).
    pub stage: &'a str,
    /// Units finished so far.
    pub done: u64,
    /// Units in all.
    pub total: u64,
    /// What a unit is.
    pub unit: Unit,
}

/// What [`Progress`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Uncompressed array bytes.
    Bytes,
    /// Chunks.
    Chunks,
}

/// A progress callback, called from worker threads.
pub type ProgressFn = Arc<dyn Fn(Progress<'_>) + Send + Sync>;

/// Counts finished work and forwards it to an optional callback.
pub(crate) struct Tracker {
    stage: &'static str,
    unit: Unit,
    total: u64,
    done: AtomicU64,
    callback: Option<ProgressFn>,
}

impl Tracker {
    pub(crate) fn new(
        stage: &'static str,
        unit: Unit,
        total: u64,
        callback: Option<ProgressFn>,
    ) -> Self {
        let t = Tracker {
            stage,
            unit,
            total,
            done: AtomicU64::new(0),
            callback,
        };
        t.report(0);
        t
    }

    pub(crate) fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.report(done);
    }

    fn report(&self, done: u64) {
        if let Some(cb) = &self.callback {
            cb(Progress {
                stage: self.stage,
                done,
                total: self.total,
                unit: self.unit,
            });
        }
    }
}

/// Runs `f` on a pool of `threads` workers (`None`: rayon's global pool, one per core).
pub(crate) fn with_threads<R: Send>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<R> + Send,
) -> Result<R> {
    match threads {
        None => f(),
        Some(0) => Err(Error::option("--threads", "must be at least 1")),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map_err(|e| Error::option("--threads", e.to_string()))?
            .install(f),
    }
}
