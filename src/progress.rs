//! Progress reporting through a callback. Invariant: the library never prints; it calls the
//! user's callback (from any worker thread) at most about every 50 ms, and always for the
//! first and the last unit, so that a binding that takes a lock per call (Python's GIL) costs
//! nothing measurable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One progress report: `done` of `total` units of work in `stage`.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use chunkwise::{Input, Progress, ProgressFn, ReduceOptions, Stats, Unit};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let log = seen.clone();
/// let progress: ProgressFn =
///     Arc::new(move |p: Progress<'_>| log.lock().unwrap().push((p.done, p.total, p.unit)));
/// let a = ndarray::ArrayD::<u8>::zeros(vec![300, 10]); // 3 blocks of 128 x 10
/// let opts = ReduceOptions::default().progress(Some(progress));
/// chunkwise::reduce(&Input::from_array(a.view())?, &Stats, &opts)?;
/// let seen = seen.lock().unwrap();
/// assert_eq!(seen[0], (0, 3, Unit::Chunks)); // always the first unit ...
/// assert!(seen.contains(&(3, 3, Unit::Chunks))); // ... and the last
/// # Ok::<(), chunkwise::Error>(())
/// ```
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
///
/// ```
/// use std::sync::Arc;
/// use chunkwise::{Progress, ProgressFn, Unit};
/// let show: ProgressFn = Arc::new(|p: Progress<'_>| match p.unit {
///     Unit::Bytes => eprintln!("{}: {} of {} MiB", p.stage, p.done >> 20, p.total >> 20),
///     Unit::Chunks => eprintln!("{}: {} of {} chunks", p.stage, p.done, p.total),
/// });
/// let opts = chunkwise::ConvertOptions::default().progress(Some(show));
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Uncompressed array bytes.
    Bytes,
    /// Chunks.
    Chunks,
}

/// A progress callback, called from worker threads.
///
/// ```
/// use std::sync::Arc;
/// use chunkwise::{ExportOptions, Progress, ProgressFn};
/// let bar: ProgressFn =
///     Arc::new(|p: Progress<'_>| eprintln!("{}: {}/{}", p.stage, p.done, p.total));
/// let opts = ExportOptions::default().progress(Some(bar));
/// # let _ = opts;
/// ```
pub type ProgressFn = Arc<dyn Fn(Progress<'_>) + Send + Sync>;

/// Counts finished work and forwards it to an optional callback.
pub(crate) struct Tracker {
    stage: &'static str,
    unit: Unit,
    total: u64,
    done: AtomicU64,
    callback: Option<ProgressFn>,
    start: Instant,
    /// Nanoseconds after `start` of the last report.
    last: AtomicU64,
}

/// The shortest time between two progress reports (but the last).
const EVERY: Duration = Duration::from_millis(50);

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
            start: Instant::now(),
            last: AtomicU64::new(0),
        };
        t.report(0);
        t
    }

    pub(crate) fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if self.callback.is_none() {
            return;
        }
        if done >= self.total {
            self.report(done);
            return;
        }
        // One thread wins each 50 ms slot.
        let now = self.start.elapsed().as_nanos() as u64;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= EVERY.as_nanos() as u64
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.report(done);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Issue 9: however many units finish, the callback is called about 20 times a second at
    /// most, and always for the first and the last.
    #[test]
    fn progress_is_throttled_and_ends_with_the_last_unit() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let cb: ProgressFn = Arc::new(move |p: Progress<'_>| s2.lock().unwrap().push(p.done));
        let t = Tracker::new("test", Unit::Chunks, 100_000, Some(cb));
        let start = Instant::now();
        for _ in 0..100_000 {
            t.add(1);
        }
        let secs = start.elapsed().as_secs_f64();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.first(), Some(&0));
        assert_eq!(seen.last(), Some(&100_000));
        let most = 2 + (secs / EVERY.as_secs_f64()).ceil() as usize;
        assert!(seen.len() <= most, "{} calls in {secs} s", seen.len());
    }
}
