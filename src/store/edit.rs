//! Editing an array in place, crash-safely (spec/APPEND.md §4-§6): the writer's lock, staged
//! chunk files renamed into place, hard links, the journal that makes a rerun say "already
//! done", and the atomic replacement of `zarr.json` (or, when existing chunks must change
//! shape, of the whole directory).
//!
//! Invariant: until the final rename of `zarr.json` (or the directory exchange), every file a
//! reader of the old metadata can reach holds data that decodes, under the old metadata, to
//! the old array.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::txn::{
    NEW_SUFFIX, Staging, TMP_SUFFIX, recover_replacement, sibling, sync_dir, write_atomic,
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
    // Half-written zarr.json, journal or progress record (temp names of `write_atomic`).
    for e in fs::read_dir(store).at(store)? {
        let e = e.at(store)?;
        if e.file_name().to_string_lossy().ends_with(TMP_SUFFIX) && e.path().is_file() {
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
}

impl Progress {
    /// The progress record in `store`, if any (an unreadable one counts as none).
    pub(crate) fn read(store: &Path) -> Option<Progress> {
        read_record(&store.join(PROGRESS_FILE))
    }

    /// Writes the record into `store` (temp + rename; fsynced with `sync`).
    pub(crate) fn write(&self, store: &Path, sync: bool) -> Result<()> {
        let text = serde_json::to_string(self).expect("plain JSON");
        write_atomic(&store.join(PROGRESS_FILE), text.as_bytes(), sync)
    }
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
