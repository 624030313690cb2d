//! Writing a new array: chunks into a private build directory, then publish (spec/FORMAT.md,
//! "Durability"). Invariant: nothing appears at the output path before `commit`, and `commit`
//! makes every chunk durable before `zarr.json` exists.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::files::FileWriter;
use super::spec::{ChunkCodec, Durability, StoreSpec};
use super::{Store, is_store};
use crate::error::{Error, IoContext, Result};
use crate::grid::Grid;

/// Writes a new array chunk by chunk, then publishes it with [`StoreWriter::commit`].
///
/// Chunks go into a private build directory beside the output (`.NAME.chunkwise-tmp`), locked
/// against other writers. Nothing appears at the output path until `commit`. Dropping the
/// writer without committing removes the build directory; a killed process leaves it for the
/// next writer to clean up.
pub struct StoreWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    lock: Option<File>,
    codec: ChunkCodec,
    metadata: Value,
    grid: Grid,
    durability: Durability,
    files: Option<FileWriter>,
    committed: bool,
}

const LOCK_NAME: &str = ".chunkwise.lock";

pub(crate) fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::option("output", format!("{} has no file name", path.display())))?;
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(suffix);
    Ok(path.with_file_name(s))
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).at(path)
}

impl StoreWriter {
    pub(super) fn create(
        spec: &StoreSpec,
        path: &Path,
        overwrite: bool,
        durability: Durability,
    ) -> Result<Self> {
        let grid = spec.validate()?;
        check_replaceable(path, overwrite)?;
        let tmp_path = sibling(path, ".chunkwise-tmp")?;
        if let Some(parent) = tmp_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).at(parent)?;
        }
        if tmp_path.exists() {
            // A build directory from an earlier writer: stale if nobody holds its lock.
            let lock_path = tmp_path.join(LOCK_NAME);
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .at(&lock_path)?;
            if lock.try_lock().is_err() {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    holder: format!("lock held on {}", lock_path.display()),
                });
            }
            fs::remove_dir_all(&tmp_path).at(&tmp_path)?;
        }
        match fs::create_dir(&tmp_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    holder: format!("another writer created {}", tmp_path.display()),
                });
            }
            Err(e) => return Err(Error::io(&tmp_path, e)),
        }
        let lock_path = tmp_path.join(LOCK_NAME);
        let mut lock = File::create(&lock_path).at(&lock_path)?;
        lock.try_lock().map_err(|_| Error::Locked {
            path: path.to_path_buf(),
            holder: format!("lock held on {}", lock_path.display()),
        })?;
        let _ = writeln!(lock, "{}", std::process::id());

        let metadata = spec.metadata();
        let codec = spec.chunk_codec()?;
        // Up to two encoded chunks per worker wait for the disk.
        let files = FileWriter::new(&tmp_path, 2 * rayon::current_num_threads(), true);
        Ok(StoreWriter {
            final_path: path.to_path_buf(),
            tmp_path,
            lock: Some(lock),
            codec,
            metadata,
            grid,
            durability,
            files: Some(files),
            committed: false,
        })
    }

    /// The chunk grid being written.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Bytes of one full (padded) chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.codec.chunk_bytes()
    }

    /// The output path.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// Encodes and writes chunk `idx` from `data` (the full chunk shape in C order, native-endian;
    /// edge chunks padded with the fill value). A chunk that is entirely the fill value (all
    /// zero bytes) is not written. Returns the bytes written (0 when skipped).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a wrong buffer size or chunk index, [`Error::Encode`],
    /// [`Error::Io`].
    pub fn write_chunk(&self, idx: &[u64], data: &[u8]) -> Result<u64> {
        if data.len() != self.chunk_bytes() {
            return Err(Error::option(
                "chunk data",
                format!(
                    "{} bytes given, a chunk holds {}",
                    data.len(),
                    self.chunk_bytes()
                ),
            ));
        }
        let gshape = self.grid.grid_shape();
        if idx.len() != gshape.len() || idx.iter().zip(&gshape).any(|(&i, &n)| i >= n) {
            return Err(Error::option(
                "chunk index",
                format!("{idx:?} is outside the chunk grid {gshape:?}"),
            ));
        }
        let files = self.files.as_ref().expect("files are open until commit");
        encode_and_queue(
            &self.codec,
            files,
            &self.tmp_path,
            &self.final_path,
            idx,
            data,
        )
    }

    /// Makes the chunks durable, writes `zarr.json`, and moves the array into place (replacing
    /// the old array at the path, if overwriting). Returns the opened array.
    ///
    /// # Errors
    /// [`Error::Io`] if syncing, writing or renaming fails; the old array (if any) is then
    /// still in place.
    pub fn commit(mut self) -> Result<Store> {
        let written = self.files.take().expect("commit runs once").finish()?;
        sync_written(&written, self.durability)?;
        let lock_path = self.tmp_path.join(LOCK_NAME);
        publish(
            &self.tmp_path,
            &self.final_path,
            &self.metadata,
            &[lock_path],
            self.durability,
        )?;
        self.committed = true;
        self.lock = None;
        Store::open(&self.final_path)
    }
}

/// Encodes chunk `idx` and queues its file in `tmp` (nothing for a chunk that is all fill
/// value). Returns the encoded size (0 when skipped).
pub(super) fn encode_and_queue(
    codec: &ChunkCodec,
    files: &FileWriter,
    tmp: &Path,
    final_path: &Path,
    idx: &[u64],
    data: &[u8],
) -> Result<u64> {
    if is_all_zero(data) {
        return Ok(0);
    }
    let key = codec.key(idx);
    let encoded = codec.encode(data).map_err(|e| match e {
        Error::Encode { reason, .. } => Error::Encode {
            store: final_path.to_path_buf(),
            key: key.clone(),
            reason,
        },
        other => other,
    })?;
    let n = encoded.len() as u64;
    files.write(tmp.join(&key), encoded)?;
    Ok(n)
}

/// Refuses an existing output unless `overwrite`, and then only if it is an array (or empty).
pub(crate) fn check_replaceable(path: &Path, overwrite: bool) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::OutputExists(path.to_path_buf()));
    }
    let replaceable =
        is_store(path) || (path.is_dir() && fs::read_dir(path).at(path)?.next().is_none());
    if !replaceable {
        return Err(Error::option(
            "--overwrite",
            format!(
                "{} is not a zarr array; refusing to replace it",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Syncs written files, then the directories that name them.
pub(super) fn sync_written(written: &[PathBuf], durability: Durability) -> Result<()> {
    if durability == Durability::NoSync {
        return Ok(());
    }
    let (dirs, files): (Vec<&PathBuf>, Vec<&PathBuf>) = written.iter().partition(|p| p.is_dir());
    files
        .par_iter()
        .try_for_each(|p| File::open(p).and_then(|f| f.sync_all()).at(*p))?;
    dirs.par_iter().try_for_each(|d| sync_dir(d))
}

/// Publishes a finished build directory: writes `zarr.json` (metadata last: until it exists
/// the directory is not an array), removes the build's own files (`remove`), and renames the
/// directory to `final_path`; an old array there stays whole until the rename.
pub(crate) fn publish(
    tmp: &Path,
    final_path: &Path,
    metadata: &Value,
    remove: &[PathBuf],
    durability: Durability,
) -> Result<()> {
    let meta_tmp = tmp.join("zarr.json.tmp");
    let meta_final = tmp.join("zarr.json");
    let text = serde_json::to_string_pretty(metadata).expect("metadata is plain JSON");
    {
        let mut f = File::create(&meta_tmp).at(&meta_tmp)?;
        f.write_all(text.as_bytes()).at(&meta_tmp)?;
        if durability == Durability::Sync {
            f.sync_all().at(&meta_tmp)?;
        }
    }
    fs::rename(&meta_tmp, &meta_final).at(&meta_final)?;
    for p in remove {
        match fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(p, e)),
            _ => {}
        }
    }
    if durability == Durability::Sync {
        sync_dir(tmp)?;
    }
    let old = sibling(final_path, ".chunkwise-old")?;
    let replacing = final_path.exists();
    if replacing {
        if old.exists() {
            fs::remove_dir_all(&old).at(&old)?;
        }
        fs::rename(final_path, &old).at(final_path)?;
    }
    if let Err(e) = fs::rename(tmp, final_path) {
        if replacing {
            let _ = fs::rename(&old, final_path);
        }
        return Err(Error::io(final_path, e));
    }
    let parent = final_path.parent().filter(|p| !p.as_os_str().is_empty());
    if let (Durability::Sync, Some(parent)) = (durability, parent) {
        sync_dir(parent)?;
    }
    if replacing {
        fs::remove_dir_all(&old).at(&old)?;
    }
    Ok(())
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if !self.committed {
            // An abandoned build (an error mid-way): remove it; nothing was published.
            let _ = fs::remove_dir_all(&self.tmp_path);
        }
    }
}

/// Whether every byte is zero (the fill value of every array chunkwise writes).
fn is_all_zero(data: &[u8]) -> bool {
    // SAFETY: u64 has no invalid bit patterns; align_to splits off the unaligned ends.
    let (head, body, tail) = unsafe { data.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}
