//! An append run in parts (`append --partition I/N`, spec/SCALE.md §1, APPEND §5.2).
//!
//! Each part places the chunks of its own contiguous range of the new layers, as one append
//! does (staged, renamed into place past the old extent; the edge layer renamed over the old
//! chunk, valid under both metadata), recording its finished layers in its own progress
//! record `STORE/.chunkwise-progress.I.N.json`. The part that finds every part's record
//! finished writes the journal and commits `zarr.json`. The parts hold the store lock shared
//! (so no other writer runs meanwhile) and each its own `STORE/.chunkwise-part.I.N.lock`;
//! opening a part and finishing one happen under `STORE/.chunkwise-parts.lock`, so that two
//! parts finishing together never both commit and a stale record is removed before any part of
//! the new job places a chunk.
//!
//! Invariant: as for one append, nothing a reader of the old `zarr.json` reaches changes
//! meaning before the commit; and a record of finished layers is never removed while its
//! chunks might still be taken as done.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use super::apply::Portion;
use crate::error::{Error, IoContext, Result, StoreError};
use crate::fingerprint::fnv1a;
use crate::grid::part_layers;
use crate::store::{
    Journal, Layout, PartOf, PathLock, Progress, STAGING_DIR, crash_point, part_lock, part_running,
    try_lock_briefly,
};

/// The lock under which parts open and finish.
const PARTS_LOCK: &str = ".chunkwise-parts.lock";

/// What an append is: its records match only the same command on the same array.
pub(super) struct Ident<'a> {
    pub(super) fingerprint: &'a str,
    pub(super) target_meta: &'a str,
    pub(super) from: &'a [u64],
    pub(super) to: &'a [u64],
}

impl Ident<'_> {
    pub(super) fn matches(&self, p: &Progress) -> bool {
        p.fingerprint == self.fingerprint
            && p.target_meta == self.target_meta
            && p.from == self.from
            && p.to == self.to
    }

    /// The record of a part, with its layers so far.
    fn record(&self, part: PartOf, layers: Vec<u64>) -> Progress {
        Progress {
            fingerprint: self.fingerprint.to_string(),
            target_meta: self.target_meta.to_string(),
            from: self.from.to_vec(),
            to: self.to.to_vec(),
            layers,
            part: Some(part),
        }
    }

    /// Whether this edit is committed (by another part): the journal is this command's and
    /// the array has the new shape.
    fn committed(&self, store: &Path) -> bool {
        Journal::read(store).is_some_and(|j| {
            j.fingerprint == self.fingerprint && j.from == self.from && j.to == self.to
        }) && Layout::read(store).is_ok_and(|l| l.shape() == self.to)
    }
}

/// A part, open: its lock is held until it is dropped.
pub(super) struct PartRun {
    index: u32,
    parts: u32,
    /// The first layer of the append's, from whose first chunk `split` counts.
    first: u64,
    /// Every part's chunks `[a, b)`, counted layer by layer from `first`.
    split: Vec<(u64, u64)>,
    /// Chunks a layer.
    per_layer: u64,
    /// The layers of this part already placed (by a killed run of it).
    pub(super) before: Vec<u64>,
    _lock: File,
}

/// What opening a part found.
pub(super) enum Opened {
    /// Another part has committed the edit meanwhile.
    Committed,
    /// Ready to place the part's layers.
    Open(PartRun),
}

/// How a part ended.
pub(super) enum Ended {
    /// This part committed the edit; the bytes of the journal and metadata.
    Committed(u64),
    /// Another part committed it meanwhile (all `total` parts are done).
    CommittedElsewhere { total: u32 },
    /// This part is done; `total - done` parts have still to finish.
    Waiting { done: u32, total: u32 },
}

impl PartRun {
    /// The chunks of this part.
    pub(super) fn portion(&self) -> Portion {
        Portion {
            first: self.first,
            chunks: self.split[self.index as usize],
        }
    }

    /// The layers `[first, end)` holding this part's chunks.
    pub(super) fn range(&self) -> (u64, u64) {
        let (a, b) = self.split[self.index as usize];
        if a >= b {
            return (self.first, self.first);
        }
        let n = self.per_layer.max(1);
        (self.first + a / n, self.first + b.div_ceil(n))
    }

    /// This part's record, holding `layers`.
    pub(super) fn record(&self, id: &Ident<'_>, layers: Vec<u64>, finished: bool) -> Progress {
        id.record(
            PartOf {
                index: self.index,
                parts: self.parts,
                first: self.first,
                split: self.split.clone(),
                finished,
            },
            layers,
        )
    }
}

/// Opens part `i` of `n` of the append `id` of `target`, whose layers to write are `todo`:
/// takes the part's lock, removes the records (and the chunks past the extent) of another
/// edit that no process runs, checks that the job's N is `n`, and writes the part's record
/// before it places anything.
///
/// # Errors
/// [`Error::Locked`] if the part, or a part of another append, is running;
/// [`Error::InvalidOption`] (`partition`) if the job was started in another number of parts;
/// [`StoreError::Changed`] if the array's metadata changed since `target` was read; I/O errors.
pub(super) fn open(
    target: &Layout,
    id: &Ident<'_>,
    todo: &[usize],
    per_layer: u64,
    (i, n): (u32, u32),
    sync: bool,
) -> Result<Opened> {
    let store = target.path();
    let _guard = PathLock::wait(&store.join(PARTS_LOCK))?;
    if id.committed(store) {
        return Ok(Opened::Committed);
    }
    let now = Layout::read(store)?;
    if fnv1a(&now.meta().to_string()) != id.target_meta {
        return Err(Error::Store(StoreError::Changed {
            path: store.to_path_buf(),
            what: "its zarr.json was rewritten while this part started".into(),
        }));
    }
    let lock_path = part_lock(store, i, n);
    let mut lock = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .at(&lock_path)?;
    if !try_lock_briefly(&lock, false) {
        return Err(Error::Locked {
            path: store.to_path_buf(),
            holder: format!("part {i}/{n} of this append is running in another process"),
        });
    }
    lock.set_len(0).at(&lock_path)?;
    let _ = write!(lock, "{}", std::process::id());
    let mut ours = Vec::new();
    let mut stale = Vec::new();
    for (path, record) in Progress::read_all(store)? {
        match record {
            Some(r) if id.matches(&r) => ours.push(r),
            other => stale.push((path, other)),
        }
    }
    for r in &ours {
        if let Some(p) = &r.part
            && p.parts != n
        {
            return Err(Error::option(
                "partition",
                format!(
                    "{i}/{n}: this append into {} was started in {} parts (part {}/{} is recorded); \
                     run its parts as I/{}",
                    store.display(),
                    p.parts,
                    p.index,
                    p.parts,
                    p.parts
                ),
            ));
        }
    }
    if !stale.is_empty() {
        // Another edit's records: its chunks past the extent go, unless one of its parts (or
        // of ours) is running now, whose work would be lost under it.
        let busy = stale
            .iter()
            .filter_map(|(_, r)| r.as_ref())
            .chain(&ours)
            .filter_map(|r| r.part.as_ref())
            .find(|p| (p.index, p.parts) != (i, n) && part_running(store, p.index, p.parts));
        if let Some(p) = busy {
            return Err(Error::Locked {
                path: store.to_path_buf(),
                holder: format!(
                    "another append into it is under way: its part {}/{} is running",
                    p.index, p.parts
                ),
            });
        }
        target.remove_outside_grid()?;
        // What the parts of this job had placed past the extent is gone too: they start over.
        Progress::remove_all(store)?;
        ours.clear();
    }
    let first = todo.first().map_or(0, |&l| l as u64);
    let split = ours
        .iter()
        .find_map(|r| r.part.as_ref().filter(|p| p.first == first))
        .map(|p| p.split.clone())
        .filter(|s| s.len() == n as usize)
        .unwrap_or_else(|| {
            let total = todo.len() as u64 * per_layer;
            (0..n).map(|k| part_layers(total, k, n)).collect()
        });
    let mut run = PartRun {
        index: i,
        parts: n,
        first,
        split,
        per_layer,
        before: Vec::new(),
        _lock: lock,
    };
    // What is placed of this part's chunks: its own record's layers (each its share of the
    // layer), and whole layers a one-process run of this command had finished.
    let (a, b) = run.range();
    let mut before: Vec<u64> = ours
        .iter()
        .filter(|r| {
            r.part
                .as_ref()
                .is_none_or(|p| p.index == i && p.parts == n && p.first == first)
        })
        .flat_map(|r| r.layers.iter().copied())
        .filter(|l| (a..b).contains(l))
        .collect();
    before.sort_unstable();
    before.dedup();
    run.before = before;
    let finished = ours.iter().any(|r| {
        r.part
            .as_ref()
            .is_some_and(|p| p.index == i && p.parts == n && p.finished)
    });
    // The record exists before the part places anything past the extent.
    run.record(id, run.before.clone(), finished)
        .write(store, sync)?;
    crash_point("part-opened");
    Ok(Opened::Open(run))
}

/// Ends `run` with all its layers placed: records it finished, and if every part is, commits
/// the edit with `commit` (which writes the journal and `zarr.json`) and removes the parts'
/// records and locks.
///
/// # Errors
/// I/O errors, and `commit`'s.
pub(super) fn finish(
    run: PartRun,
    store: &Path,
    id: &Ident<'_>,
    sync: bool,
    commit: impl FnOnce() -> Result<u64>,
) -> Result<Ended> {
    let (a, b) = run.range();
    run.record(id, (a..b).collect(), true).write(store, sync)?;
    crash_point("part-finished");
    let _guard = PathLock::wait(&store.join(PARTS_LOCK))?;
    // Its work is recorded: the part's lock goes now (under the parts lock, under which a
    // part takes its lock), so that whichever part commits finds no lock of it left.
    let (index, parts) = (run.index, run.parts);
    drop(run);
    let _ = fs::remove_file(part_lock(store, index, parts));
    if id.committed(store) {
        return Ok(Ended::CommittedElsewhere { total: parts });
    }
    let mut finished = vec![false; parts as usize];
    for (_, r) in Progress::read_all(store)? {
        if let Some(r) = r.filter(|r| id.matches(r))
            && let Some(p) = r.part
            && p.parts == parts
            && p.finished
            && let Some(f) = finished.get_mut(p.index as usize)
        {
            *f = true;
        }
    }
    let done = finished.iter().filter(|&&f| f).count() as u32;
    if done < parts {
        return Ok(Ended::Waiting { done, total: parts });
    }
    let bytes = commit()?;
    tidy_locks(store);
    Ok(Ended::Committed(bytes))
}

/// Removes the part locks nobody holds and the staging directories of their parts (after a
/// commit, or by a rerun that finds it done). Call with the parts lock held: a part takes its
/// lock under it, so an unheld lock is no running part's.
fn tidy_locks(store: &Path) {
    let Ok(entries) = fs::read_dir(store) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(part) = name
            .strip_prefix(".chunkwise-part.")
            .and_then(|r| r.strip_suffix(".lock"))
        else {
            continue;
        };
        let held = File::open(e.path()).is_ok_and(|f| !try_lock_briefly(&f, false));
        if !held {
            let _ = fs::remove_dir_all(store.join(STAGING_DIR).join(format!("part.{part}")));
            let _ = fs::remove_file(e.path());
        }
    }
    // The staging directory itself, once no part has one there.
    let _ = fs::remove_dir(store.join(STAGING_DIR));
}

/// Cleans up after an append in parts that is found committed: the records of `fingerprint`
/// (any other append's stay: its parts may be running), the locks nobody holds and their
/// staging directories.
pub(super) fn tidy(store: &Path, fingerprint: &str) -> Result<()> {
    let _guard = PathLock::wait(&store.join(PARTS_LOCK))?;
    for (path, r) in Progress::read_all(store)? {
        if r.is_some_and(|r| r.fingerprint == fingerprint) {
            let _ = fs::remove_file(path);
        }
    }
    tidy_locks(store);
    Ok(())
}
