//! Editing an array in place, crash-safely (spec/APPEND.md §4-§6): the writer's lock, staged
//! chunk files renamed into place, hard links, the journal that makes a rerun say "already
//! done", and the atomic replacement of `zarr.json` (or, when existing chunks must change
//! shape, of the whole directory).
//!
//! Invariant: until the final rename of `zarr.json` (or the directory exchange), every file a
//! reader of the old metadata can reach holds data that decodes, under the old metadata, to
//! the old array.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::writer::{sibling, sync_dir};
use crate::error::{Error, IoContext, Result};

/// The lock file every writer of an existing array holds (`flock`, exclusive).
pub(crate) const LOCK_FILE: &str = ".chunkwise.lock";
/// Where an in-place edit stages new chunk files before renaming them into place.
pub(crate) const STAGING_DIR: &str = ".chunkwise-staging";
/// The last edit's journal (spec/APPEND.md §5).
pub(crate) const JOURNAL_FILE: &str = ".chunkwise-journal.json";
/// The progress of an uncommitted in-place append (APPEND §5.1).
pub(crate) const PROGRESS_FILE: &str = ".chunkwise-progress.json";

/// An exclusive advisory lock on an array directory; released on drop (or when the process
/// dies). Readers take no lock.
#[derive(Debug)]
pub(crate) struct StoreLock {
    /// `None`: a shared lock on a store we may not write (read-only filesystem or no write
    /// permission), where no writer of ours can run either.
    file: Option<File>,
}

impl StoreLock {
    /// Locks `store` for writing. With `wait`, blocks until the holder is done; otherwise a
    /// held lock is [`Error::Locked`] naming the holder's pid.
    pub(crate) fn acquire(store: &Path, wait: bool) -> Result<StoreLock> {
        StoreLock::take(store, wait, false)
    }

    /// Locks `store` shared: for linking its chunks into another array, so that no writer
    /// changes it meanwhile (other sharers are welcome).
    pub(crate) fn acquire_shared(store: &Path, wait: bool) -> Result<StoreLock> {
        StoreLock::take(store, wait, true)
    }

    fn take(store: &Path, wait: bool, shared: bool) -> Result<StoreLock> {
        let path = store.join(LOCK_FILE);
        loop {
            let opened = File::options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path);
            let mut file = match opened {
                Ok(f) => f,
                Err(e)
                    if shared
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::PermissionDenied
                                | std::io::ErrorKind::ReadOnlyFilesystem
                        ) =>
                {
                    return Ok(StoreLock { file: None });
                }
                Err(e) => return Err(Error::io(&path, e)),
            };
            let got = match (wait, shared) {
                (true, false) => file.lock().map(|()| true),
                (true, true) => file.lock_shared().map(|()| true),
                (false, false) => Ok(file.try_lock().is_ok()),
                (false, true) => Ok(file.try_lock_shared().is_ok()),
            };
            if !got.at(&path)? {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::Locked {
                    path: store.to_path_buf(),
                    holder: if pid.is_empty() {
                        format!("store is locked: {}", path.display())
                    } else {
                        format!("store is locked by pid {pid}")
                    },
                });
            }
            // The directory may have been exchanged for a new one while we waited: the lock
            // must be on the file that is at the path now.
            let now = fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
            let held = file.metadata().at(&path)?;
            if now == Some((held.dev(), held.ino())) {
                if !shared {
                    file.set_len(0).at(&path)?;
                    let _ = write!(file, "{}", std::process::id());
                }
                return Ok(StoreLock { file: Some(file) });
            }
        }
    }

    /// Locks a fresh lock file in a directory being built (before it is exchanged into place).
    pub(crate) fn create_in(dir: &Path) -> Result<StoreLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = File::create(&path).at(&path)?;
        file.try_lock().map_err(|_| Error::Locked {
            path: dir.to_path_buf(),
            holder: format!("lock held on {}", path.display()),
        })?;
        let _ = write!(file, "{}", std::process::id());
        Ok(StoreLock { file: Some(file) })
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = f.unlock();
        }
    }
}

/// Starts building a new array for `out` in the private directory `.NAME.chunkwise-tmp`
/// beside it, locked; a build directory nobody holds is a killed writer's and is removed.
pub(crate) fn begin_build(out: &Path) -> Result<(PathBuf, StoreLock)> {
    let tmp = sibling(out, ".chunkwise-tmp")?;
    if let Some(parent) = tmp.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).at(parent)?;
    }
    if tmp.exists() {
        let held = StoreLock::acquire(&tmp, false).map_err(|_| Error::Locked {
            path: out.to_path_buf(),
            holder: format!("another writer is building {}", tmp.display()),
        })?;
        drop(held);
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir(&tmp).at(&tmp)?;
    let lock = StoreLock::create_in(&tmp)?;
    Ok((tmp, lock))
}

/// Removes what a killed writer left in `store`: the staging directory and a half-built
/// replacement directory beside it. Call with the lock held.
pub(crate) fn clean_stale(store: &Path) -> Result<()> {
    let staging = store.join(STAGING_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging).at(&staging)?;
    }
    for suffix in [".chunkwise-new", ".chunkwise-old"] {
        let p = sibling(store, suffix)?;
        if p.exists() {
            fs::remove_dir_all(&p).at(&p)?;
        }
    }
    // Half-written zarr.json, journal or progress record (temp names of `write_durably`).
    for e in fs::read_dir(store).at(store)? {
        let e = e.at(store)?;
        if e.file_name().to_string_lossy().ends_with(".chunkwise-tmp") {
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
        write_durably(&dir.join(JOURNAL_FILE), text.as_bytes(), true)?;
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
        write_durably(&store.join(PROGRESS_FILE), text.as_bytes(), sync)
    }
}

/// A JSON record of ours, if it is there and readable (anything else counts as none).
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

/// Writes `path` through a temporary file and a rename (fsyncing the file first if `sync`).
pub(crate) fn write_durably(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".chunkwise-tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        if sync {
            f.sync_all().at(&tmp)?;
        }
    }
    fs::rename(&tmp, path).at(path)
}

/// Replaces `store/zarr.json` atomically: temporary file, fsync, rename, fsync of the
/// directory (spec/APPEND.md §4, the commit).
pub(crate) fn commit_metadata(store: &Path, meta: &Value, sync: bool) -> Result<()> {
    let text = serde_json::to_string_pretty(meta).expect("metadata is plain JSON");
    write_durably(&store.join("zarr.json"), text.as_bytes(), sync)?;
    if sync {
        sync_dir(store)?;
    }
    Ok(())
}

/// Flushes every file and name written so far on the filesystem holding `dir` (Linux
/// `syncfs`; elsewhere a full `sync`).
pub(crate) fn sync_filesystem(dir: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let f = File::open(dir).at(dir)?;
        // SAFETY: a plain system call on an open descriptor.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(Error::io(dir, std::io::Error::last_os_error()));
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        let _ = dir;
    }
    Ok(())
}

/// Whether two paths name the same file (the same inode).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Places `src`'s file at `dst` as a hard link (a copy of the bytes where the filesystem
/// cannot link, e.g. across filesystems), replacing any file at `dst` by a rename so that a
/// store sharing the old file keeps it untouched. Returns the bytes copied (0 for a link).
pub(crate) fn link_chunk(src: &Path, dst: &Path, staging: &Path) -> Result<u64> {
    if same_file(src, dst) {
        return Ok(0);
    }
    let tmp = staged_name(staging, dst);
    if let Some(parent) = tmp.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    let _ = fs::remove_file(&tmp);
    let copied = match fs::hard_link(src, &tmp) {
        Ok(()) => 0,
        Err(e)
            if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            fs::copy(src, &tmp).at(&tmp)?
        }
        Err(e) => return Err(Error::io(src, e)),
    };
    place(&tmp, dst)?;
    Ok(copied)
}

/// Renames a staged file to `dst` (creating its directories).
pub(crate) fn place(staged: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    fs::rename(staged, dst).at(dst)
}

/// Removes the file at `dst` if there is one (a chunk that is now all fill value).
pub(crate) fn remove_chunk(dst: &Path) -> Result<()> {
    match fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dst, e)),
        _ => Ok(()),
    }
}

/// The staging path for a chunk file bound for `dst`: one flat directory, one name per key.
pub(crate) fn staged_name(staging: &Path, dst: &Path) -> PathBuf {
    let name: String = dst
        .components()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("~");
    staging.join(name)
}

/// Swaps two directories atomically (Linux `renameat2(RENAME_EXCHANGE)`).
///
/// # Errors
/// [`Error::Io`] where the system or filesystem cannot exchange.
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes())
            .map_err(|_| Error::option("path", format!("{} holds a NUL byte", a.display())))?;
        let cb = CString::new(b.as_os_str().as_bytes())
            .map_err(|_| Error::option("path", format!("{} holds a NUL byte", b.display())))?;
        // SAFETY: two valid NUL-terminated paths relative to the working directory.
        let r = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r != 0 {
            return Err(Error::io(a, std::io::Error::last_os_error()));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    Err(Error::io(
        a,
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "an atomic directory exchange needs Linux",
        ),
    ))
}

/// A named step of the commit protocol (APPEND §4.6). With `CHUNKWISE_CRASH_AT=NAME` in the
/// environment the process kills itself with SIGKILL on reaching step NAME, so that the tests
/// can stop a writer at every step of the protocol, not only at random instants.
pub(crate) fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("CHUNKWISE_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        // SAFETY: kill(2) on our own pid with a valid signal number; it does not return.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let held = StoreLock::acquire(dir.path(), false).unwrap();
        let err = StoreLock::acquire(dir.path(), false).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("store is locked by pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        StoreLock::acquire(dir.path(), false).unwrap();
    }

    #[test]
    fn links_replace_by_rename_and_leave_other_links_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, staging) = (
            dir.path().join("a"),
            dir.path().join("x/b"),
            dir.path().join("s"),
        );
        fs::write(&a, b"new").unwrap();
        fs::create_dir_all(b.parent().unwrap()).unwrap();
        fs::write(&b, b"old").unwrap();
        let other = dir.path().join("other");
        fs::hard_link(&b, &other).unwrap();
        assert_eq!(link_chunk(&a, &b, &staging).unwrap(), 0);
        assert!(same_file(&a, &b));
        assert_eq!(fs::read(&other).unwrap(), b"old");
        // Again: already the same file.
        assert_eq!(link_chunk(&a, &b, &staging).unwrap(), 0);
    }
}
