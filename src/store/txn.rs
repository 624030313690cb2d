//! The crash-safe file layer: every temporary, staged, build and lock file chunkwise makes,
//! and the renames that make each visible (spec/FORMAT.md §6, spec/APPEND.md §4).
//!
//! Invariant: every path made here lies inside the array directory it serves
//! ([`Staging`]) or in the directory of the output it builds ([`sibling`], [`OutputFile`]),
//! so every rename stays on one filesystem and no file is ever made elsewhere (in `/`, say),
//! whatever form the paths were given in (absolute, relative, with `..`, through links).
//! A name appears at an output path only by one rename of a complete file or directory, and
//! a replaced output is never absent: the new one is exchanged with the old one.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// The lock file every writer of an existing array holds (`flock`, exclusive), and the lock
/// of a build directory.
pub(crate) const LOCK_FILE: &str = ".chunkwise.lock";
/// Where an in-place edit stages new chunk files before renaming them into place.
pub(crate) const STAGING_DIR: &str = ".chunkwise-staging";
/// The suffix of every temporary name (files and build directories).
pub(crate) const TMP_SUFFIX: &str = ".chunkwise-tmp";
/// The build directory of a resumable job (its partitions share it; COMPUTE §6).
pub(crate) const JOB_SUFFIX: &str = ".chunkwise-job";
/// The old array of an interrupted replacement on a filesystem that cannot exchange.
pub(crate) const OLD_SUFFIX: &str = ".chunkwise-old";
/// The rebuilt directory of an in-place edit that changes existing chunks' shapes.
pub(crate) const NEW_SUFFIX: &str = ".chunkwise-new";

/// `.NAME<suffix>` in the directory of `path`: the private names beside an output.
///
/// # Errors
/// [`Error::InvalidOption`] for a path with no file name (`/`, `..`).
pub(crate) fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = file_name(path)?;
    let mut s = OsString::from(".");
    s.push(name);
    s.push(suffix);
    Ok(path.with_file_name(s))
}

fn file_name(path: &Path) -> Result<&std::ffi::OsStr> {
    match path.components().next_back() {
        Some(Component::Normal(n)) => Ok(n),
        _ => Err(Error::option(
            "output",
            format!("{} has no file name", path.display()),
        )),
    }
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Follows `path` while it is a symbolic link, so that an output given as a link is written
/// where the link points and the link stays (spec/APPEND.md §6.3). Relative targets are taken
/// from the link's directory; intermediate links are left to the kernel.
///
/// # Errors
/// [`Error::InvalidOption`] for a cycle of links.
pub(crate) fn resolve_links(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p).at(&p)?;
                p = if target.is_absolute() {
                    target
                } else {
                    parent_dir(&p).join(target)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::option(
        "path",
        format!("{}: too many levels of symbolic links", path.display()),
    ))
}

/// Refuses a store path zarrs cannot name (its store keys are text): before anything is
/// written, not after.
///
/// # Errors
/// [`Error::InvalidOption`] naming the path.
pub(crate) fn check_utf8(path: &Path) -> Result<()> {
    if path.to_str().is_none() {
        return Err(Error::option(
            "output",
            format!(
                "{} is not valid UTF-8; Zarr stores need a UTF-8 path",
                path.display()
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------- locks

/// An advisory lock on an array directory (`flock` on [`LOCK_FILE`]); released on drop or
/// when the process dies. Readers take none.
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
                (false, false) => Ok(try_lock_briefly(&file, false)),
                (false, true) => Ok(try_lock_briefly(&file, true)),
            };
            if !got.at(&path)? {
                return Err(Error::Locked {
                    path: store.to_path_buf(),
                    holder: holder_of(&mut file, &path),
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

    /// Locks a fresh lock file in a directory being built (before it is renamed or exchanged
    /// into place).
    pub(crate) fn create_in(dir: &Path) -> Result<StoreLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = File::create(&path).at(&path)?;
        if !try_lock_briefly(&file, false) {
            return Err(Error::Locked {
                path: dir.to_path_buf(),
                holder: holder_of(&mut file, &path),
            });
        }
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

/// An exclusive lock on the file at `path` (created if missing), waited for, for a short
/// critical section: the file exists only while someone holds or waits for it. Released by
/// removing the file, then unlocking: a waiter finds that the file it locked is no longer the
/// one at `path` and locks the new one (created by whoever came next).
#[derive(Debug)]
pub(crate) struct PathLock {
    file: File,
    path: PathBuf,
}

impl PathLock {
    pub(crate) fn wait(path: &Path) -> Result<PathLock> {
        loop {
            let file = File::options()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)
                .at(path)?;
            file.lock().at(path)?;
            let now = fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
            let held = file.metadata().at(path)?;
            if now == Some((held.dev(), held.ino())) {
                return Ok(PathLock {
                    file,
                    path: path.to_path_buf(),
                });
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// Tries to lock `file` a few times over about 100 ms before giving up: a lock whose holder
/// has just released it can live on for a moment in a child process forked before it closed
/// the file (the descriptor goes at the child's exec), which is not a writer.
pub(crate) fn try_lock_briefly(file: &File, shared: bool) -> bool {
    for attempt in 0..20 {
        let got = if shared {
            file.try_lock_shared().is_ok()
        } else {
            file.try_lock().is_ok()
        };
        if got {
            return true;
        }
        if attempt < 19 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    false
}

/// "store is locked by pid N": the holder writes its pid just after taking the lock, so an
/// empty file is read again for a moment before giving up on the pid.
fn holder_of(file: &mut File, path: &Path) -> String {
    for attempt in 0..20 {
        let mut pid = String::new();
        let _ = std::io::Seek::rewind(file);
        let _ = file.read_to_string(&mut pid);
        let pid = pid.trim();
        if !pid.is_empty() {
            return format!("store is locked by pid {pid}");
        }
        if attempt < 19 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    format!("store is locked: {}", path.display())
}

/// Takes the store lock of the array at `path` if one is there (an output about to be
/// replaced): every writer, `--overwrite` included, holds it (APPEND §6).
///
/// # Errors
/// [`Error::Locked`] while another writer works on it.
pub(crate) fn lock_existing(path: &Path) -> Result<Option<StoreLock>> {
    if super::is_store(path) {
        StoreLock::acquire(path, false).map(Some)
    } else {
        Ok(None)
    }
}

// ---------------------------------------------------------------- build directories

/// A private directory being built beside an output (`.NAME<suffix>`), locked from its birth
/// (it is made under a unique name with its lock held, then renamed to its name without
/// replacing anything), so that an unlocked one is always a killed writer's. Removed
/// on drop: unpublished, it is an abandoned build; published, what is left at its name is the
/// old array an exchange moved out, if any.
#[derive(Debug)]
pub(crate) struct BuildDir {
    path: PathBuf,
    _lock: StoreLock,
}

impl BuildDir {
    /// Starts building for `out` in `.NAME<suffix>`: a stale one (its lock free) is moved
    /// away under its lock and removed first.
    ///
    /// # Errors
    /// [`Error::Locked`] while another writer builds the same output; [`Error::Io`].
    pub(crate) fn begin(out: &Path, suffix: &str) -> Result<BuildDir> {
        let path = sibling(out, suffix)?;
        let parent = parent_dir(&path).to_path_buf();
        fs::create_dir_all(&parent).at(&parent)?;
        recover_replacement(out)?;
        let busy = |holder: String| Error::Locked {
            path: out.to_path_buf(),
            holder: format!("another writer is building {}: {holder}", path.display()),
        };
        if fs::symlink_metadata(&path).is_ok() {
            // Held while it is moved away: no writer can be born into it meanwhile.
            let stale = StoreLock::acquire(&path, false).map_err(|e| match e {
                Error::Locked { holder, .. } => busy(holder),
                other => other,
            })?;
            let gone = unique_sibling(out, STALE_SUFFIX)?;
            match fs::rename(&path, &gone) {
                Ok(()) => {
                    drop(stale);
                    let _ = fs::remove_dir_all(&gone);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        sweep_unborn(out)?;
        let born = unique_sibling(out, BORN_SUFFIX)?;
        fs::create_dir(&born).at(&born)?;
        let lock = match StoreLock::create_in(&born) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_dir_all(&born);
                return Err(e);
            }
        };
        if let Err(e) = rename_noreplace(&born, &path) {
            let _ = fs::remove_dir_all(&born);
            return Err(match e {
                Error::OutputExists(_) => busy("it appeared meanwhile".into()),
                other => other,
            });
        }
        Ok(BuildDir { path, _lock: lock })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the finished directory to `out` ([`publish_dir`]); what is left at its name
    /// afterwards (an old array exchanged out) is removed when this drops.
    ///
    /// # Errors
    /// As [`publish_dir`]; before the rename nothing is published and the build goes.
    pub(crate) fn publish(self, out: &Path, replace: bool, sync: bool) -> Result<()> {
        publish_dir(&self.path, out, replace, sync)?;
        // The lock file came along; it goes while still held (a writer waiting on it finds it
        // unlinked and takes the array's own), so a published array holds only its data.
        let _ = fs::remove_file(out.join(LOCK_FILE));
        Ok(())
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        // Unpublished: an error or a cancel mid-way, nothing to resume. Published: the old
        // array an exchange left at this name, if any.
        let _ = fs::remove_dir_all(&self.path);
    }
}

const BORN_SUFFIX: &str = ".chunkwise-born";
const STALE_SUFFIX: &str = ".chunkwise-stale";
/// How old a lockless directory being born must be to be taken for a killed writer's (the
/// moment between its `mkdir` and its lock is microseconds; a clock step is not).
const UNBORN_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes what killed writers left of [`BuildDir::begin`] for `out`: stale directories
/// moved aside (`.NAME.chunkwise-stale.*`), and directories being born
/// (`.NAME.chunkwise-born.*`) whose lock nobody holds, or which never got a lock file and
/// whose maker is gone or which are older than a minute.
fn sweep_unborn(out: &Path) -> Result<()> {
    let parent = parent_dir(out);
    let name = file_name(out)?.to_string_lossy().into_owned();
    let born = format!(".{name}{BORN_SUFFIX}.");
    let stale = format!(".{name}{STALE_SUFFIX}.");
    let Ok(entries) = fs::read_dir(parent) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        let dir = e.path();
        if n.starts_with(&stale) {
            let _ = fs::remove_dir_all(&dir);
        } else if n.starts_with(&born) {
            let removable = match File::open(dir.join(LOCK_FILE)) {
                Ok(f) => f.try_lock().is_ok(),
                // Killed between its mkdir and its lock: its maker (the pid in its name) is
                // gone, or it is old.
                Err(_) => {
                    !maker_alive(&n[born.len()..])
                        || fs::symlink_metadata(&dir)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| t.elapsed().ok())
                            .is_some_and(|age| age > UNBORN_AGE)
                }
            };
            if removable {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    Ok(())
}

/// Whether the process whose pid starts `tail` (`PID.N`) is alive on this machine.
fn maker_alive(tail: &str) -> bool {
    let pid = tail.split('.').next().and_then(|p| p.parse::<i32>().ok());
    match pid.and_then(rustix::process::Pid::from_raw) {
        Some(pid) => !matches!(
            rustix::process::test_kill_process(pid),
            Err(rustix::io::Errno::SRCH)
        ),
        None => false,
    }
}

/// `.NAME<suffix>.PID.N` in the directory of `out`: a fresh name nobody else uses.
fn unique_sibling(out: &Path, suffix: &str) -> Result<PathBuf> {
    let base = sibling(out, suffix)?;
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    Ok(base.with_file_name(name))
}

/// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`; where the filesystem lacks
/// it, a plain rename, which cannot replace a non-empty directory either).
fn rename_noreplace(from: &Path, to: &Path) -> Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) | Err(rustix::io::Errno::NOTEMPTY) => {
            Err(Error::OutputExists(to.to_path_buf()))
        }
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => fs::rename(from, to)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::DirectoryNotEmpty {
                    Error::OutputExists(to.to_path_buf())
                } else {
                    Error::io(to, e)
                }
            }),
        Err(e) => Err(Error::io(to, e.into())),
    }
}

/// Finishes what an interrupted replacement of `out` left on a filesystem that cannot exchange
/// directories: the old array set aside at `.NAME.chunkwise-old` goes back if nothing took
/// its place, and is removed if the new one did.
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn recover_replacement(out: &Path) -> Result<()> {
    let old = sibling(out, OLD_SUFFIX)?;
    if fs::symlink_metadata(&old).is_err() {
        return Ok(());
    }
    if fs::symlink_metadata(out).is_err() {
        fs::rename(&old, out).at(out)
    } else {
        fs::remove_dir_all(&old).at(&old)
    }
}

/// Moves the finished build directory `tmp` to `out`. A new output appears by one rename that
/// never replaces anything; an existing one is exchanged with it (`renameat2(RENAME_EXCHANGE)`),
/// so the path always holds the old or the new array, and the old one is then removed. The
/// caller holds the old array's store lock ([`lock_existing`]).
///
/// # Errors
/// [`Error::OutputExists`] if an array appeared at `out` meanwhile and `replace` is false;
/// [`Error::Io`].
pub(crate) fn publish_dir(tmp: &Path, out: &Path, replace: bool, sync: bool) -> Result<()> {
    let exists = fs::symlink_metadata(out).is_ok();
    if !exists {
        rename_noreplace(tmp, out)?;
    } else {
        if !replace {
            return Err(Error::OutputExists(out.to_path_buf()));
        }
        // Committed: the old array now sits aside, and what fails from here on does not
        // undo that (the next writer removes it).
        let old = swap_in(out, tmp)?;
        let _ = sync_parent(out, sync);
        let _ = fs::remove_dir_all(old);
        return Ok(());
    }
    // Committed: a failed directory sync does not undo it.
    let _ = sync_parent(out, sync);
    Ok(())
}

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::INVAL) | Some(rustix::io::Errno::NOSYS)
    )
}

fn sync_parent(path: &Path, sync: bool) -> Result<()> {
    if sync {
        sync_dir(parent_dir(path))?;
    }
    Ok(())
}

/// Puts the directory `new` in the place of the directory `live` and returns where the old
/// one now is: by one `renameat2(RENAME_EXCHANGE)` (the old one at `new`'s path), or, on a
/// filesystem that cannot exchange (NFS, some FUSE and overlay mounts), by setting the old
/// one aside at `.NAME.chunkwise-old` and renaming the new one in (a reader in between finds
/// nothing; a kill in between is undone by [`recover_replacement`], which every writer runs).
///
/// # Errors
/// [`Error::Io`] naming the path that could not be renamed; `live` holds the old directory.
pub(crate) fn swap_in(live: &Path, new: &Path) -> Result<PathBuf> {
    match exchange(new, live) {
        Ok(()) => {
            crash_point("exchanged");
            Ok(new.to_path_buf())
        }
        Err(Error::Io { source, .. }) if unsupported(&source) => {
            let old = sibling(live, OLD_SUFFIX)?;
            if fs::symlink_metadata(&old).is_ok() {
                fs::remove_dir_all(&old).at(&old)?;
            }
            fs::rename(live, &old).at(live)?;
            crash_point("exchanged");
            if let Err(e) = fs::rename(new, live) {
                let _ = fs::rename(&old, live);
                return Err(Error::io(live, e));
            }
            Ok(old)
        }
        Err(e) => Err(e),
    }
}

/// Swaps two directories atomically (Linux `renameat2(RENAME_EXCHANGE)`).
///
/// # Errors
/// [`Error::Io`] where the system or filesystem cannot exchange (`EINVAL`, `ENOSYS`).
pub(crate) fn exchange(a: &Path, b: &Path) -> Result<()> {
    #[cfg(feature = "crash-points")]
    if std::env::var_os("CHUNKWISE_TEST_NO_EXCHANGE").is_some() {
        // The tests' stand-in for a filesystem without it (NFS): what renameat2 says there.
        return Err(Error::io(a, rustix::io::Errno::INVAL.into()));
    }
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(|e| Error::io(a, e.into()))
}

// ---------------------------------------------------------------- staging inside an array

/// The staging directory of an array: new chunk files are written here, then renamed into
/// place, so a reader never sees a partial chunk and a linked chunk is replaced, not written
/// through (APPEND §4.1). Invariant: [`Staging::path_for`] only names files directly inside
/// `root/.chunkwise-staging`.
#[derive(Debug, Clone)]
pub(crate) struct Staging {
    root: PathBuf,
    dir: PathBuf,
}

impl Staging {
    /// The staging area of the array directory `root`.
    pub(crate) fn new(root: &Path) -> Staging {
        Staging {
            root: root.to_path_buf(),
            dir: root.join(STAGING_DIR),
        }
    }

    /// The staging area of one part of an append in parts: a directory of its own inside the
    /// array's (so that one part's cleanup never removes another's staged files).
    pub(crate) fn for_part(root: &Path, part: u32, parts: u32) -> Staging {
        Staging {
            root: root.to_path_buf(),
            dir: root.join(STAGING_DIR).join(format!("part.{part}.{parts}")),
        }
    }

    /// The staging directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the staging directory.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn create(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).at(&self.dir)
    }

    /// Removes the staging directory and whatever it holds (after a commit, or after a
    /// failure: staged files are never resumed).
    pub(crate) fn remove(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// The staged file for `dst`, a file inside the array: named after `dst`'s path within the
    /// array (`c/18/0/0` is staged as `c~18~0~0`), one flat directory.
    ///
    /// # Errors
    /// [`Error::Internal`] if `dst` is not inside the array (a bug, never a user's input).
    pub(crate) fn path_for(&self, dst: &Path) -> Result<PathBuf> {
        let rel = dst.strip_prefix(&self.root).map_err(|_| {
            Error::Internal(format!(
                "staging {} outside its array {}",
                dst.display(),
                self.root.display()
            ))
        })?;
        let mut name = OsString::new();
        for (k, c) in rel.components().enumerate() {
            let Component::Normal(part) = c else {
                return Err(Error::Internal(format!(
                    "staging {}: {rel:?} is not a key inside the array",
                    dst.display()
                )));
            };
            if k > 0 {
                name.push("~");
            }
            name.push(part);
        }
        if name.is_empty() {
            return Err(Error::Internal(format!(
                "staging the array directory {} itself",
                dst.display()
            )));
        }
        Ok(self.dir.join(name))
    }
}

/// Places `src`'s file at `dst` as a hard link (a copy where the filesystem cannot link, e.g.
/// across filesystems), replacing any file at `dst` by a rename so that a store sharing the
/// old file keeps it untouched. Returns the bytes copied (0 for a link).
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn link_chunk(src: &Path, dst: &Path, staging: &Staging) -> Result<u64> {
    if same_file(src, dst) {
        return Ok(0);
    }
    let tmp = staging.path_for(dst)?;
    let _ = fs::remove_file(&tmp);
    let copied = link_or_copy(src, &tmp)?;
    place(&tmp, dst)?;
    Ok(copied)
}

/// Hard-links `src` at the new name `dst`, or copies it where the filesystem cannot link;
/// returns the bytes copied (0 for a link).
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> Result<u64> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(0),
        Err(e)
            if matches!(
                rustix::io::Errno::from_io_error(&e),
                Some(rustix::io::Errno::XDEV) | Some(rustix::io::Errno::PERM)
            ) =>
        {
            fs::copy(src, dst).at(dst)
        }
        Err(e) => Err(Error::io(src, e)),
    }
}

/// Renames a staged file to `dst` (creating its directories).
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn place(staged: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    fs::rename(staged, dst).at(dst)
}

/// Removes the file at `dst` if there is one (a chunk that is now all fill value).
///
/// # Errors
/// [`Error::Io`] other than "not found".
pub(crate) fn remove_chunk(dst: &Path) -> Result<()> {
    match fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(dst, e)),
        _ => Ok(()),
    }
}

/// Refuses, before anything changes, to join an input with `--move` that this user cannot
/// remove afterwards: its directory and every directory in it must be writable and
/// searchable, and so must the directory holding it (a sticky one only for the input's owner).
///
/// # Errors
/// [`Error::InvalidOption`] naming the directory that stops the removal.
pub(crate) fn check_removable(path: &Path) -> Result<()> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    let ok = |p: &Path| accessat(CWD, p, Access::WRITE_OK | Access::EXEC_OK, AtFlags::EACCESS);
    let refuse = |dir: &Path, why: &str| {
        Err(Error::option(
            "move",
            format!(
                "{} cannot be removed after the join ({} {why}); nothing was changed: join \
                 without moving the inputs, or fix the permissions",
                path.display(),
                dir.display()
            ),
        ))
    };
    let parent = parent_dir(path);
    if ok(parent).is_err() {
        return refuse(parent, "is not writable");
    }
    let pm = fs::metadata(parent).at(parent)?;
    let me = rustix::process::geteuid().as_raw();
    if pm.mode() & 0o1000 != 0 && me != 0 {
        let owner = fs::metadata(path).at(path)?.uid();
        if me != owner && me != pm.uid() {
            return refuse(parent, "is sticky and the input is another user's");
        }
    }
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        if ok(&d).is_err() {
            return refuse(&d, "is not writable");
        }
        for e in fs::read_dir(&d).at(&d)? {
            let e = e.at(&d)?;
            if e.file_type().at(e.path())?.is_dir() {
                dirs.push(e.path());
            }
        }
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

// ---------------------------------------------------------------- whole files

/// A temporary file beside `path` with a unique name (`.NAME.XXXXXX.chunkwise-tmp`), created
/// exclusively and locked (`flock`) for as long as it lives, so that [`clean_temps`] can tell a
/// running writer's file from a killed one's.
pub(crate) fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let name = file_name(path)?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let dir = parent_dir(path);
    loop {
        // 0o666 before the umask: the published file gets the user's usual mode, not 0600.
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(TMP_SUFFIX)
            .permissions(fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .at(dir)?;
        tmp.as_file().lock().at(tmp.path())?;
        // A cleaner may have removed the file between its creation and our lock: keep it only
        // if it is still the file at its name.
        let ours = tmp.as_file().metadata().at(tmp.path())?;
        if fs::metadata(tmp.path()).is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino()) {
            return Ok(tmp);
        }
    }
}

/// Removes the temporary files of `path` ([`temp_beside`], and the fixed names of earlier
/// versions) that no living writer holds.
pub(crate) fn clean_temps(path: &Path) {
    let (Ok(name), dir) = (file_name(path), parent_dir(path)) else {
        return;
    };
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let prefix = prefix.to_string_lossy().into_owned();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if !(n.starts_with(&prefix) && n.ends_with(TMP_SUFFIX)) {
            continue;
        }
        let p = e.path();
        if !e.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if let Ok(f) = File::open(&p)
            && f.try_lock().is_ok()
        {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Writes `path` whole through a unique temporary file and a rename (fsyncing the file first
/// if `sync`): readers see the old file or the new one. Through a link, the link's target is
/// written and the link stays.
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let path = &resolve_links(path)?;
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).at(tmp.path())?;
    if sync {
        injected_sync_failure(tmp.path())?;
        tmp.as_file().sync_all().at(tmp.path())?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// An output file (an `.npy` of `export`, `where`, `graph` or `stats`) written under a unique
/// temporary name and published whole by [`OutputFile::publish`]. Two runs writing the same
/// output never write the same file: without `overwrite` the first to publish wins and the
/// other fails with [`Error::OutputExists`]; with it the last one wins, whole. A dropped,
/// unpublished output leaves nothing.
pub(crate) struct OutputFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    overwrite: bool,
}

impl OutputFile {
    /// Starts writing `path` (through a link, at the link's target).
    ///
    /// # Errors
    /// [`Error::OutputExists`] without `overwrite`; [`Error::InvalidOption`] for a path that
    /// is a directory, a device or a pipe; [`Error::Io`].
    pub(crate) fn create(path: &Path, overwrite: bool) -> Result<OutputFile> {
        super::local_only(path, "a file output (.npy, .json)")?;
        let resolved = resolve_links(path)?;
        match fs::metadata(&resolved) {
            Ok(m) if !m.is_file() => {
                return Err(Error::option(
                    "output",
                    format!(
                        "{} is not a regular file (a directory, device or pipe); write to a file",
                        path.display()
                    ),
                ));
            }
            Ok(_) if !overwrite => return Err(Error::OutputExists(path.to_path_buf())),
            _ => {}
        }
        clean_temps(&resolved);
        let tmp = temp_beside(&resolved)?;
        Ok(OutputFile {
            tmp,
            path: resolved,
            overwrite,
        })
    }

    /// The open temporary file.
    pub(crate) fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// The temporary file's name (for errors while writing it).
    pub(crate) fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Syncs (with `sync`) and renames the file to its name; without `overwrite`, only if no
    /// file took the name meanwhile.
    ///
    /// # Errors
    /// [`Error::OutputExists`], [`Error::Io`]; the temporary file is removed either way.
    pub(crate) fn publish(self, sync: bool) -> Result<()> {
        if sync {
            injected_sync_failure(self.tmp.path())?;
            self.tmp.as_file().sync_all().at(self.tmp.path())?;
        }
        let persisted = if self.overwrite {
            self.tmp.persist(&self.path)
        } else {
            self.tmp.persist_noclobber(&self.path)
        };
        if let Err(e) = persisted {
            return Err(if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                Error::OutputExists(self.path)
            } else {
                Error::io(&self.path, e.error)
            });
        }
        sync_parent(&self.path, sync)
    }
}

/// Writes a small output file whole through an [`OutputFile`]: never over an existing file
/// without `overwrite`, even one that appears while it is written.
///
/// # Errors
/// As [`OutputFile::create`] and [`OutputFile::publish`].
pub(crate) fn write_output(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let out = OutputFile::create(path, overwrite)?;
    let mut f = out.file();
    f.write_all(bytes).at(out.tmp_path())?;
    out.publish(true)
}

// ---------------------------------------------------------------- syncing

/// fsyncs a directory (the names it holds).
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    injected_sync_failure(path)?;
    File::open(path).and_then(|f| f.sync_all()).at(path)
}

/// An fsync failing as a failing disk's does (`EIO`), for the tests: built with the
/// `crash-points` feature, `CHUNKWISE_FAIL_SYNC=1` in the environment makes every sync of the
/// store layer fail before it is made (spec/FORMAT.md §6). Release builds have none.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn injected_sync_failure(_path: &Path) -> Result<()> {
    Ok(())
}

/// See the other `injected_sync_failure`.
#[cfg(feature = "crash-points")]
pub(crate) fn injected_sync_failure(path: &Path) -> Result<()> {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var("CHUNKWISE_FAIL_SYNC").is_ok_and(|v| v == "1")) {
        return Err(Error::io(path, std::io::Error::from_raw_os_error(5)));
    }
    Ok(())
}

/// Flushes every file and name written so far on the filesystem holding `dir` (`syncfs`).
///
/// # Errors
/// [`Error::Io`].
pub(crate) fn sync_filesystem(dir: &Path) -> Result<()> {
    injected_sync_failure(dir)?;
    let f = File::open(dir).at(dir)?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io(dir, e.into()))
}

/// A named step of a commit protocol (APPEND §4.6). Built with the `crash-points` feature (the
/// tests are; release builds are not), `CHUNKWISE_CRASH_AT=NAME` in the environment makes the
/// process kill itself with SIGKILL on reaching step NAME, so that the tests can stop a writer
/// at every step, not only at random instants.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn crash_point(_name: &str) {}

/// See the other `crash_point`.
#[cfg(feature = "crash-points")]
pub(crate) fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if AT
        .get_or_init(|| std::env::var("CHUNKWISE_CRASH_AT").ok())
        .as_deref()
        == Some(name)
    {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}

/// A pause after each computed chunk of a job, for the tests that stop a job mid-way from
/// outside (a Slurm task cancelled, a dask worker killed): built with the `crash-points`
/// feature, `CHUNKWISE_TEST_CHUNK_DELAY_MS=N` sleeps N ms per chunk. Release builds have none.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub(crate) fn test_delay() {}

/// See the other `test_delay`.
#[cfg(feature = "crash-points")]
pub(crate) fn test_delay() {
    static MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ms = *MS.get_or_init(|| {
        std::env::var("CHUNKWISE_TEST_CHUNK_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    });
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
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
        let (a, b) = (dir.path().join("a"), dir.path().join("x/b"));
        let staging = Staging::new(dir.path());
        staging.create().unwrap();
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

    /// Issue 17: the staged name of `/data/volume.zarr/c/2/0/0` was built from the last eight
    /// components of the absolute path, root included, and so landed in `/`.
    #[test]
    fn staged_names_stay_inside_the_staging_directory() {
        for root in [
            "/v.zarr",
            "/data/volume.zarr",
            "v.zarr",
            "./v.zarr",
            "../x/../v.zarr",
            "/a/b/c/d/e/f/g/h/i/v.zarr",
        ] {
            let s = Staging::new(Path::new(root));
            for key in [
                "c/2/0/0",
                "c/0",
                "c.1.2",
                "zarr.json",
                "c/1/2/3/4/5/6/7/8/9",
            ] {
                let dst = Path::new(root).join(key);
                let p = s.path_for(&dst).unwrap();
                assert_eq!(p.parent(), Some(s.dir()), "{root} {key}: {}", p.display());
                assert_eq!(
                    p.file_name().unwrap().to_str().unwrap(),
                    key.replace('/', "~")
                );
            }
            for outside in ["/etc/passwd", "elsewhere/c/0"] {
                assert!(s.path_for(Path::new(outside)).is_err(), "{root} {outside}");
            }
            assert!(s.path_for(&Path::new(root).join("../c/0")).is_err());
            assert!(s.path_for(Path::new(root)).is_err());
        }
    }

    #[test]
    fn output_files_publish_whole_and_never_clobber_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.npy");
        let a = OutputFile::create(&out, false).unwrap();
        let b = OutputFile::create(&out, false).unwrap();
        assert_ne!(a.tmp_path(), b.tmp_path());
        a.file().write_all_at_start(b"aaaa");
        b.file().write_all_at_start(b"bb");
        // A running writer's temp file survives another writer's cleanup.
        clean_temps(&out);
        assert!(a.tmp_path().exists() && b.tmp_path().exists());
        a.publish(false).unwrap();
        let err = b.publish(false).unwrap_err();
        assert!(matches!(err, Error::OutputExists(_)), "{err}");
        assert_eq!(fs::read(&out).unwrap(), b"aaaa");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the output is left");
        // With overwrite, the last one wins, whole.
        let c = OutputFile::create(&out, true).unwrap();
        c.file().write_all_at_start(b"c");
        c.publish(false).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"c");
    }

    #[test]
    fn outputs_through_links_write_the_target_and_keep_the_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.npy");
        fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.npy");
        std::os::unix::fs::symlink("real.npy", &link).unwrap();
        let o = OutputFile::create(&link, true).unwrap();
        o.file().write_all_at_start(b"new");
        o.publish(false).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"new");
        let err = OutputFile::create(dir.path(), true).err().unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    trait WriteAt {
        fn write_all_at_start(&self, bytes: &[u8]);
    }
    impl WriteAt for File {
        fn write_all_at_start(&self, bytes: &[u8]) {
            use std::os::unix::fs::FileExt;
            self.write_all_at(bytes, 0).unwrap();
        }
    }
}
