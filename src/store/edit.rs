//! Editing an array in place, crash-safely (spec/APPEND.md §4-§6): the writer's lock, staged
//! chunk files renamed into place, hard links, the journal that makes a rerun say "already
//! done", and the atomic replacement of `zarr.json` (or, when existing chunks must change
//! shape, of the whole directory).
//!
//! Invariant: until the final rename of `zarr.json` (or the directory exchange), every file a
//! reader of the old metadata can reach holds data that decodes, under the old metadata, to
//! the old array.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::txn::{
    NEW_SUFFIX, Staging, TMP_SUFFIX, recover_replacement, sibling, sync_dir, try_lock_briefly,
    write_atomic,
};
use crate::error::{IoContext, Result};

/// The last edit's journal (spec/APPEND.md §5).
pub(crate) const JOURNAL_FILE: &str = ".chunkwise-journal.json";
/// The progress of an uncommitted in-place append (APPEND §5.1).
pub(crate) const PROGRESS_FILE: &str = ".chunkwise-progress.json";

/// Removes what a killed writer left in `store`: the staging directory, a half-built
/// replacement directory beside it, and temporary files of its metadata. Call with the lock
/// held.
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn clean_stale(store: &Path) -> Result<()> {
    Staging::new(store).remove();
    recover_replacement(store)?;
    let new = sibling(store, NEW_SUFFIX)?;
    if new.exists() {
        fs::remove_dir_all(&new).at(&new)?;
    }
    // Half-written zarr.json, journal or progress record (temp names of `write_atomic`), and
    // the locks of an append in parts (none runs: its parts hold the store lock shared).
    for e in fs::read_dir(store).at(store)? {
        let e = e.at(store)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let part_lock = name.starts_with(".chunkwise-part") && name.ends_with(".lock");
        if (name.ends_with(TMP_SUFFIX) || part_lock) && e.path().is_file() {
            let p = e.path();
            fs::remove_file(&p).at(&p)?;
        }
    }
    Ok(())
}

/// The journal of the last edit: what it was (`fingerprint`) and the shapes before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) fingerprint: String,
    pub(crate) from: Vec<u64>,
    pub(crate) to: Vec<u64>,
    /// With `--move`: the inputs to remove after the commit, each with its stamp then, so that
    /// a rerun after a kill finishes removing them (APPEND §4.5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) moving: Vec<Moving>,
}

/// An input `--move` removes after the commit, and its stamp when it was joined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Moving {
    pub(crate) path: String,
    pub(crate) stamp: String,
}

impl Journal {
    /// The journal in `store`, if any (an unreadable one counts as none).
    pub(crate) fn read(store: &Path) -> Option<Journal> {
        read_record(&store.join(JOURNAL_FILE))
    }

    /// Writes the journal into `dir` durably (before the commit it describes); returns its size.
    pub(crate) fn write(&self, dir: &Path) -> Result<u64> {
        let text = serde_json::to_string_pretty(self).expect("plain JSON");
        write_atomic(&dir.join(JOURNAL_FILE), text.as_bytes(), true)?;
        Ok(text.len() as u64)
    }
}

/// How far an in-place append got before its commit: the layers whose chunks are all in place
/// (APPEND §5.1). Valid only for the same command (`fingerprint`) on the same array (its
/// `zarr.json` hashed in `target_meta`), still of shape `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    pub(crate) fingerprint: String,
    pub(crate) target_meta: String,
    pub(crate) from: Vec<u64>,
    pub(crate) to: Vec<u64>,
    pub(crate) layers: Vec<u64>,
    /// The part of an append run in parts (`--partition I/N`, spec/SCALE.md §1); `None` for
    /// one process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) part: Option<PartOf>,
}

/// Which part of an append in parts a progress record is, the chunks of every part (the
/// first part to start records the split; every part follows it), and whether the part has
/// placed all of its chunks. Its record's `layers` are the layers whose share of the part's
/// chunks is placed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartOf {
    pub(crate) index: u32,
    pub(crate) parts: u32,
    /// The first layer the parts write; `split` counts chunks from its first chunk on, layer
    /// by layer (`[a, b)` for each part).
    pub(crate) first: u64,
    pub(crate) split: Vec<(u64, u64)>,
    pub(crate) finished: bool,
}

/// The progress record of part `i` of `n` of an append: `STORE/.chunkwise-progress.I.N.json`.
fn part_record(store: &Path, i: u32, n: u32) -> PathBuf {
    store.join(format!(".chunkwise-progress.{i}.{n}.json"))
}

/// Whether `name` is a progress record (one process's, or a part's).
fn is_progress_name(name: &str) -> bool {
    name == PROGRESS_FILE
        || (name.starts_with(".chunkwise-progress.")
            && name.ends_with(".json")
            && !name.ends_with(TMP_SUFFIX))
}

impl Progress {
    /// Every progress record in `store`: one process's and the parts' (unreadable ones are
    /// listed as `None`, so that they are removed with the other stale records).
    pub(crate) fn read_all(store: &Path) -> Result<Vec<(PathBuf, Option<Progress>)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(store).at(store)? {
            let e = e.at(store)?;
            if is_progress_name(&e.file_name().to_string_lossy()) {
                let p = e.path();
                out.push((p.clone(), read_record(&p)));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Removes every progress record in `store` (after a commit, or when a write makes them
    /// wrong).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn remove_all(store: &Path) -> Result<()> {
        for (p, _) in Progress::read_all(store)? {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&p),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the record into `store` (temp + rename; fsynced with `sync`): a part's under its
    /// own name.
    pub(crate) fn write(&self, store: &Path, sync: bool) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain JSON");
        let path = match &self.part {
            Some(p) => part_record(store, p.index, p.parts),
            None => store.join(PROGRESS_FILE),
        };
        write_atomic(&path, text.as_bytes(), sync)
    }
}

/// The lock part `i` of `n` holds while it runs.
pub(crate) fn part_lock(store: &Path, i: u32, n: u32) -> PathBuf {
    store.join(format!(".chunkwise-part.{i}.{n}.lock"))
}

/// Whether a process holds part `i` of `n`'s lock now.
pub(crate) fn part_running(store: &Path, i: u32, n: u32) -> bool {
    File::open(part_lock(store, i, n)).is_ok_and(|f| !try_lock_briefly(&f, false))
}

/// The parts of an append in parts under way in the array `layout`, if one is: for each part
/// its new chunks, those placed, and whether a process holds its lock.
pub(crate) fn append_status(layout: &super::Layout) -> Result<Option<Vec<super::PartStatus>>> {
    let store = layout.path();
    let records: Vec<Progress> = Progress::read_all(store)?
        .into_iter()
        .filter_map(|(_, r)| r)
        .filter(|r| r.part.is_some())
        .collect();
    let Some(first) = records.first() else {
        return Ok(None);
    };
    let Some(job) = first.part.as_ref() else {
        return Ok(None);
    };
    let n = job.parts;
    let split = job.split.clone();
    // The chunks of a layer along the growth axis (the one whose length changes).
    let axis = (0..first.to.len())
        .find(|&k| first.from.get(k) != first.to.get(k))
        .unwrap_or(0);
    let per_layer: u64 = layout
        .edges()
        .iter()
        .zip(layout.shape())
        .enumerate()
        .filter(|&(k, _)| k != axis)
        .map(|(_, (e, &len))| e.list(len).len() as u64)
        .product();
    let mut parts = Vec::new();
    for i in 0..n {
        let (a, b) = split.get(i as usize).copied().unwrap_or((0, 0));
        let mine = records.iter().find(|r| {
            r.fingerprint == first.fingerprint
                && r.part
                    .as_ref()
                    .is_some_and(|p| p.index == i && p.parts == n)
        });
        // A layer's share of the part: the chunks of [a, b) in it.
        let share = |l: u64| {
            let base = l.saturating_sub(job.first) * per_layer;
            b.min(base + per_layer).saturating_sub(a.max(base))
        };
        let done = mine.map_or(0, |r| {
            if r.part.as_ref().is_some_and(|p| p.finished) {
                b - a
            } else {
                r.layers.iter().map(|&l| share(l)).sum()
            }
        });
        parts.push(super::PartStatus {
            index: i,
            of: n,
            chunks: b - a,
            done,
            running: part_running(store, i, n),
        });
    }
    Ok(Some(parts))
}

/// A JSON record of ours, if it is there and readable (anything else counts as none).
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// Replaces `store/zarr.json` atomically: temporary file, fsync, rename, fsync of the
/// directory (spec/APPEND.md §4, the commit).
pub(crate) fn commit_metadata(store: &Path, meta: &Value, sync: bool) -> Result<()> {
    let text = serde_json::to_string_pretty(meta).expect("metadata is plain JSON");
    write_atomic(&store.join("zarr.json"), text.as_bytes(), sync)?;
    if sync {
        sync_dir(store)?;
    }
    Ok(())
}
