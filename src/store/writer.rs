//! Writing a new array: chunks into a private build directory, then publish (spec/FORMAT.md,
//! "Durability"). Invariant: nothing appears at the output path before `commit`, and `commit`
//! makes every chunk durable before `zarr.json` exists.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use super::files::FileWriter;
use super::spec::{ChunkCodec, Durability, StoreSpec};
use super::txn::{
    BuildDir, StoreLock, TMP_SUFFIX, check_utf8, lock_existing, resolve_links, sync_dir,
    write_atomic,
};
use super::{Store, is_store};
use crate::error::{Error, IoContext, Result, StoreError};
use crate::grid::Grid;

/// Writes a new array chunk by chunk, then publishes it with [`StoreWriter::commit`].
///
/// Chunks go into a private build directory beside the output (`.NAME.chunkwise-tmp`), locked
/// against other writers. Nothing appears at the output path until `commit`. Dropping the
/// writer without committing removes the build directory; a killed process leaves it for the
/// next writer to clean up.
///
/// ```no_run
/// use chunkwise::{DType, Durability, StoreSpec};
/// let spec = StoreSpec::new(vec![100, 100], DType::U8, vec![50, 50]);
/// let writer = spec.create("tiles.zarr".as_ref(), false, Durability::Sync)?;
/// let chunk = vec![1u8; writer.chunk_bytes()];
/// for idx in [[0u64, 0], [0, 1], [1, 0], [1, 1]] {
///     writer.write_chunk(&idx, &chunk)?;
/// }
/// let store = writer.commit()?; // nothing is at tiles.zarr before this
/// assert_eq!(store.shape(), &[100, 100]);
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub struct StoreWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    /// When replacing an array: the old array's lock.
    _replacing: Option<StoreLock>,
    codec: ChunkCodec,
    metadata: Value,
    grid: Grid,
    durability: Durability,
    files: Option<FileWriter>,
    overwrite: bool,
    /// On object storage: chunks are PUT straight under the prefix, `zarr.json` last.
    remote: Option<std::sync::Arc<super::Remote>>,
    /// Uploads under way (oldest first), at most [`UPLOADS_IN_FLIGHT`]: encoding goes on while
    /// they run.
    uploads: super::Uploads<()>,
    /// The build directory (removed on drop unless published). Last: fields drop in order,
    /// and the file writer's threads must be gone before the directory goes.
    build: Option<BuildDir>,
}

impl StoreSpec {
    /// Starts writing a new array at `path` (see [`StoreWriter`]).
    ///
    /// # Errors
    /// [`Error::OutputExists`] if `path` exists and `overwrite` is false; [`Error::Locked`] if
    /// another process is writing it; [`Error::InvalidOption`] for an inconsistent spec.
    pub fn create(
        &self,
        path: &Path,
        overwrite: bool,
        durability: Durability,
    ) -> Result<StoreWriter> {
        StoreWriter::create(self, path, overwrite, durability)
    }
}

impl StoreWriter {
    pub(super) fn create(
        spec: &StoreSpec,
        path: &Path,
        overwrite: bool,
        durability: Durability,
    ) -> Result<Self> {
        let grid = spec.validate()?;
        if super::is_url(path) {
            return StoreWriter::create_remote(spec, grid, path, overwrite, durability);
        }
        let path = &resolve_links(path)?;
        check_utf8(path)?;
        check_replaceable(path, overwrite)?;
        // An array being replaced is locked like any array being written (APPEND §6).
        let replacing = lock_existing(path)?;
        let build = BuildDir::begin(path, TMP_SUFFIX)?;
        let tmp_path = build.path().to_path_buf();
        let metadata = spec.metadata();
        let codec = spec.chunk_codec()?;
        // Up to two encoded chunks per worker wait for the disk.
        let files = FileWriter::new(&tmp_path, 2 * rayon::current_num_threads(), true);
        Ok(StoreWriter {
            final_path: path.to_path_buf(),
            tmp_path,
            _replacing: replacing,
            codec,
            metadata,
            grid,
            durability,
            files: Some(files),
            overwrite,
            remote: None,
            uploads: super::Uploads::new(UPLOADS_IN_FLIGHT),
            build: Some(build),
        })
    }

    /// A new array on object storage (spec/SCALE.md §6): there is no rename, so the chunks
    /// are written in place and `zarr.json` last, one PUT that makes the array appear. An
    /// array already at the prefix is refused without `overwrite`; with it, its `zarr.json`
    /// goes first (readers then see no array, never a mix), then its other objects.
    fn create_remote(
        spec: &StoreSpec,
        grid: Grid,
        path: &Path,
        overwrite: bool,
        durability: Durability,
    ) -> Result<Self> {
        let url = path.to_string_lossy().into_owned();
        let remote = std::sync::Arc::new(super::Remote::open(&url)?);
        let path = PathBuf::from(remote.url());
        let listing = remote.list()?;
        if !listing.is_empty() {
            let is_array = listing
                .iter()
                .any(|(k, _, _)| k == "zarr.json" || k == ".zarray");
            if !overwrite {
                return Err(Error::OutputExists(path));
            }
            if !is_array {
                return Err(Error::option(
                    "overwrite",
                    format!(
                        "{} holds objects but no zarr array; refusing to replace them",
                        path.display()
                    ),
                ));
            }
            remote.delete_key("zarr.json")?;
            remote.delete_all()?;
        }
        Ok(StoreWriter {
            final_path: path.clone(),
            tmp_path: path,
            _replacing: None,
            codec: spec.chunk_codec()?,
            metadata: spec.metadata(),
            grid,
            durability,
            files: None,
            overwrite,
            remote: Some(remote),
            uploads: super::Uploads::new(UPLOADS_IN_FLIGHT),
            build: None,
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
    /// [`Error::InvalidOption`] for a wrong buffer size or chunk index, [`crate::StoreError::Encode`],
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
        if let Some(r) = &self.remote {
            if self.codec.is_fill(data) {
                return Ok(0);
            }
            let key = self.codec.key(idx);
            let encoded = self.codec.encode(data)?;
            let n = encoded.len() as u64;
            self.uploads.push(r.put_async(&key, encoded), ())?;
            return Ok(n);
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

    /// Whether `store`'s encoded chunks are this writer's, whatever their keys and wherever
    /// either array is: a Zarr v3 array of the same type, shape, chunk grid, fill value and
    /// codecs, whose chunks [`StoreWriter::write_encoded`] may then write as they are read.
    pub(crate) fn same_chunk_bytes(&self, store: &Store) -> bool {
        self.same_fields(store, &[])
    }

    fn same_fields(&self, store: &Store, more: &[&str]) -> bool {
        same_fields(&self.metadata, store, more)
    }

    /// Writes chunk `idx` as `encoded`, bytes of an array of [`StoreWriter::same_chunk_bytes`]
    /// (no decoding, no encoding). Returns the bytes written.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an index outside the grid; [`Error::Io`].
    pub(crate) fn write_encoded(&self, idx: &[u64], encoded: Vec<u8>) -> Result<u64> {
        let gshape = self.grid.grid_shape();
        if idx.len() != gshape.len() || idx.iter().zip(&gshape).any(|(&i, &n)| i >= n) {
            return Err(Error::option(
                "chunk index",
                format!("{idx:?} is outside the chunk grid {gshape:?}"),
            ));
        }
        let key = self.codec.key(idx);
        let n = encoded.len() as u64;
        if let Some(r) = &self.remote {
            self.uploads.push(r.put_async(&key, encoded), ())?;
            return Ok(n);
        }
        let files = self.files.as_ref().expect("files are open until commit");
        files.write(self.tmp_path.join(&key), encoded)?;
        Ok(n)
    }

    /// Makes the chunks durable, writes `zarr.json`, and moves the array into place (replacing
    /// the old array at the path, if overwriting). Returns the opened array.
    ///
    /// # Errors
    /// [`Error::Io`] if syncing, writing or renaming fails; the old array (if any) is then
    /// still in place.
    pub fn commit(mut self) -> Result<Store> {
        if let Some(r) = self.remote.take() {
            self.uploads.drain()?;
            // Every chunk PUT has returned: the metadata makes the array appear.
            let text = serde_json::to_string_pretty(&self.metadata).expect("plain JSON");
            r.put("zarr.json", text.into_bytes())?;
            return Store::open(&self.final_path);
        }
        let written = self.files.take().expect("commit runs once").finish()?;
        sync_written(&written, self.durability)?;
        let build = self.build.take().expect("commit runs once");
        write_metadata(build.path(), &self.metadata, &[], self.durability)?;
        build.publish(
            &self.final_path,
            self.overwrite,
            self.durability == Durability::Sync,
        )?;
        Store::open(&self.final_path)
    }
}

/// Chunk uploads a writer to object storage keeps under way at once.
const UPLOADS_IN_FLIGHT: usize = 16;

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
    if codec.is_fill(data) {
        return Ok(0);
    }
    let key = codec.key(idx);
    let encoded = codec.encode(data).map_err(|e| match e {
        Error::Store(StoreError::Encode { reason, source, .. }) => {
            Error::Store(StoreError::Encode {
                store: final_path.to_path_buf(),
                key: key.clone(),
                reason,
                source,
            })
        }
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
            "overwrite",
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
    files.par_iter().try_for_each(|p| {
        super::txn::injected_sync_failure(p)?;
        File::open(p).and_then(|f| f.sync_all()).at(*p)
    })?;
    dirs.par_iter().try_for_each(|d| sync_dir(d))
}

/// Finishes a build directory's contents: writes `zarr.json` (metadata last: until it exists
/// the directory is not an array), removes the build's own files (`remove`), and syncs the
/// directory; [`BuildDir::publish`] or [`publish_dir`] then moves it into place.
pub(crate) fn write_metadata(
    tmp: &Path,
    metadata: &Value,
    remove: &[PathBuf],
    durability: Durability,
) -> Result<()> {
    let sync = durability == Durability::Sync;
    let text = serde_json::to_string_pretty(metadata).expect("metadata is plain JSON");
    write_atomic(&tmp.join("zarr.json"), text.as_bytes(), sync)?;
    for p in remove {
        match fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(p, e)),
            _ => {}
        }
    }
    if sync {
        sync_dir(tmp)?;
    }
    Ok(())
}

/// Whether `store`'s chunks are stored as an array of `metadata` (a v3 array's metadata) stores
/// them: the same type, chunk grid, fill value, codecs and shape (and the `more` fields), so
/// that its encoded chunk bytes can be copied unchanged.
pub(crate) fn same_fields(metadata: &Value, store: &Store, more: &[&str]) -> bool {
    if store.zarr_format() != 3 {
        return false;
    }
    let ours = serde_json::from_value::<zarrs::array::ArrayMetadata>(metadata.clone())
        .ok()
        .and_then(|m| serde_json::to_value(m).ok());
    let theirs = store.metadata_json();
    let Some(ours) = ours else {
        return false;
    };
    ["data_type", "chunk_grid", "fill_value", "codecs", "shape"]
        .iter()
        .chain(more)
        .all(|k| ours.get(k).is_some() && ours.get(k) == theirs.get(k))
}
