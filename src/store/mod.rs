//! Zarr arrays in filesystem directories: the only module that names `zarrs` types.
//!
//! Reading goes through `zarrs` (any Zarr v3 array it understands, and Zarr v2 read-only).
//! Writing is ours: `zarrs` encodes each chunk ([`ChunkCodec`]), `files` writes the bytes and
//! syncs them once at the end, and [`StoreWriter`] publishes the array by writing `zarr.json`
//! and renaming a private build directory into place. Invariant: a directory at the output
//! path is either the old array or the complete new one, never a partial one (spec/FORMAT.md,
//! "Durability").

mod codecs;
mod edit;
mod files;
mod job;
mod layout;
mod parts;
#[cfg(feature = "s3")]
mod remote;
#[cfg(not(feature = "s3"))]
#[path = "no_remote.rs"]
mod remote;
mod spec;
mod txn;
mod window;
mod write;
mod writer;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayD;
use rayon::prelude::*;
use serde_json::Value;
use zarrs::array::data_type as zdt;
use zarrs::array::{
    Array, ArrayBytes, ArrayError, ArrayMetadata, ArraySubset, CodecOptions, DataType,
};
use zarrs::filesystem::FilesystemStore;
use zarrs::storage::{ReadableWritableListableStorage, ReadableWritableListableStorageTraits};

use crate::copy::{SharedOut, Side, c_strides};
use crate::dtype::{DType, Element};
use crate::error::{Error, InputError, Result, StoreError, to_usize};
use crate::grid::{Grid, indices_in};
use crate::region::{Region, fmt_shape};

pub(crate) use edit::{
    Journal, Moving, PROGRESS_FILE, PartOf, Progress, append_status, clean_stale, commit_metadata,
    part_lock, part_running,
};
pub(crate) use files::FileWriter;
pub(crate) use job::{Finish, JobOptions, JobState, JobWriter};
pub use job::{JobStatus, PartStatus, job_status};
pub(crate) use layout::{Edges, Layout};
pub use parts::PartsFinish;
pub(crate) use parts::{Parts, check_part, parts_status};
pub(crate) use remote::{Remote, Uploads, is_url};
pub(crate) use spec::GridCodec;
pub use spec::{ChunkCodec, Codec, Durability, StoreSpec};
pub(crate) use txn::{
    BuildDir, JOB_SUFFIX, NEW_SUFFIX, OutputFile, PathLock, STAGING_DIR, Staging, StoreLock,
    TMP_SUFFIX, check_removable, check_utf8, crash_point, link_chunk, link_or_copy, lock_existing,
    parent_dir, place, publish_dir, recover_replacement, remove_chunk, resolve_links, sibling,
    swap_in, sync_dir, sync_filesystem, test_delay, try_lock_briefly, write_atomic, write_output,
};
#[cfg(feature = "hdf5")]
pub(crate) use window::copy_unit;
pub(crate) use window::{ChunkWindow, Units, Window};
pub use write::WriteReport;
pub use writer::StoreWriter;
pub(crate) use writer::{check_replaceable, write_metadata};

/// The most axes an array may have.
///
/// ```
/// // Store::open refuses an array of more axes (StoreError::BadMetadata).
/// assert_eq!(chunkwise::MAX_RANK, 32);
/// ```
pub const MAX_RANK: usize = 32;
/// The largest chunk (decoded, a shard when sharded) an array may have: every worker holds one.
///
/// ```
/// // 512^3 uint16 chunks (256 MiB) are fine; Store::open refuses 2048^3 ones (16 GiB).
/// assert!(512u64.pow(3) * 2 <= chunkwise::MAX_CHUNK_BYTES);
/// assert!(2048u64.pow(3) * 2 > chunkwise::MAX_CHUNK_BYTES);
/// ```
pub const MAX_CHUNK_BYTES: u64 = 4 << 30;
/// The most chunks an array's grid may have (2^26: at 64^3 `u16` chunks, 32 TiB). Chunk index
/// lists are materialized in places, so this bounds their memory (a few GiB at most).
///
/// ```
/// use chunkwise::{Grid, MAX_CHUNKS};
/// // 64^3 chunks over a 65536^3 volume: 2^30 chunks, more than Store::open accepts.
/// let grid = Grid::new(&[1 << 16; 3], &[64; 3])?;
/// assert!(grid.num_chunks() > MAX_CHUNKS);
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub const MAX_CHUNKS: u64 = 1 << 26;
/// The largest `zarr.json` read.
const MAX_METADATA_BYTES: u64 = 64 << 20;

/// Checks what zarrs would allocate from before it does: the size of `zarr.json`, and the
/// chunk count of a rectilinear grid's run-length edges (`[size, count]` pairs zarrs expands
/// into a list), which must stay within [`MAX_CHUNKS`] per axis and in all.
fn check_metadata_sizes(path: &Path) -> Result<()> {
    let file = path.join("zarr.json");
    let Ok(m) = std::fs::metadata(&file) else {
        return Ok(()); // Zarr v2 (.zarray: regular grids only) or gone: zarrs says.
    };
    let bad = |reason: String| {
        Err(Error::Store(StoreError::BadMetadata {
            path: path.to_path_buf(),
            reason,
            source: None,
        }))
    };
    if m.len() > MAX_METADATA_BYTES {
        return bad(format!(
            "zarr.json holds {} bytes; at most {MAX_METADATA_BYTES} are read",
            m.len()
        ));
    }
    let text = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
    match serde_json::from_slice::<Value>(&text) {
        // Regular grids zarrs does not expand: Store::check_limits says more of them.
        Ok(meta) if meta["chunk_grid"]["name"] == "rectilinear" => check_grid_size(path, &meta),
        Ok(_) => Ok(()),
        Err(_) => Ok(()), // zarrs names the syntax error.
    }
}

/// Refuses a v3 metadata document whose chunk grid has more than [`MAX_CHUNKS`] chunks (a
/// rectilinear axis's list counted before anything expands it): for arrays read, and for
/// the metadata an append or concat is about to write.
///
/// # Errors
/// [`crate::StoreError::BadMetadata`] naming the count.
pub(crate) fn check_grid_size(path: &Path, meta: &Value) -> Result<()> {
    let bad = |reason: String| {
        Err(Error::Store(StoreError::BadMetadata {
            path: path.to_path_buf(),
            reason,
            source: None,
        }))
    };
    let grid = &meta["chunk_grid"];
    let shape: Vec<u64> = meta["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let counts: Vec<u64> = match grid["name"].as_str() {
        Some("rectilinear") => {
            let Some(axes) = grid["configuration"]["chunk_shapes"].as_array() else {
                return Ok(());
            };
            axes.iter()
                .enumerate()
                .map(|(axis, e)| match e.as_u64() {
                    Some(c) if c > 0 => shape.get(axis).map_or(1, |&n| n.div_ceil(c)),
                    _ => layout::edge_count(e),
                })
                .collect()
        }
        Some("regular") => grid["configuration"]["chunk_shape"]
            .as_array()
            .map(|a| {
                a.iter()
                    .zip(&shape)
                    .map(|(c, &n)| c.as_u64().filter(|&c| c > 0).map_or(1, |c| n.div_ceil(c)))
                    .collect()
            })
            .unwrap_or_default(),
        _ => return Ok(()),
    };
    let total = counts.iter().fold(1u64, |t, &c| t.saturating_mul(c.max(1)));
    if total > MAX_CHUNKS {
        return bad(format!(
            "a grid of {} chunks ({total}); at most {MAX_CHUNKS} (2^26) are supported",
            counts
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("x")
        ));
    }
    Ok(())
}

fn codec_options() -> CodecOptions {
    // Our own rayon loops are the parallelism: one chunk per task, no nested codec threads.
    let mut o = CodecOptions::default();
    o.set_concurrent_target(1);
    o
}

fn dtype_of(dt: &DataType) -> Option<DType> {
    Some(if dt.is::<zdt::BoolDataType>() {
        DType::Bool
    } else if dt.is::<zdt::UInt8DataType>() {
        DType::U8
    } else if dt.is::<zdt::UInt16DataType>() {
        DType::U16
    } else if dt.is::<zdt::UInt32DataType>() {
        DType::U32
    } else if dt.is::<zdt::UInt64DataType>() {
        DType::U64
    } else if dt.is::<zdt::Int8DataType>() {
        DType::I8
    } else if dt.is::<zdt::Int16DataType>() {
        DType::I16
    } else if dt.is::<zdt::Int32DataType>() {
        DType::I32
    } else if dt.is::<zdt::Int64DataType>() {
        DType::I64
    } else if dt.is::<zdt::Float32DataType>() {
        DType::F32
    } else if dt.is::<zdt::Float64DataType>() {
        DType::F64
    } else {
        return None;
    })
}

fn shape_nz(chunk: &[u64]) -> Vec<std::num::NonZeroU64> {
    chunk
        .iter()
        .map(|&c| std::num::NonZeroU64::new(c).expect("chunk sizes are validated non-zero"))
        .collect()
}
/// An open Zarr array (v3, or v2 read-only) in a filesystem directory.
///
/// ```no_run
/// use chunkwise::{Region, Store};
/// let store = Store::open("volume.zarr")?;
/// println!("{:?} {} in chunks of {:?}", store.shape(), store.dtype(), store.chunk_shape());
/// let plane = store.read_region::<u16>(&Region::new(vec![5..6, 0..512, 0..512]))?;
/// assert_eq!(plane.shape(), &[1, 512, 512]);
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub struct Store {
    path: PathBuf,
    array: Array<dyn ReadableWritableListableStorageTraits>,
    /// Where the array is on object storage (`s3://`), if it is.
    remote: Option<Arc<Remote>>,
    dtype: DType,
    zarr_format: u8,
    fill: Vec<u8>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("shape", &self.shape())
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// Whether `path` holds Zarr array metadata (v3 `zarr.json` or v2 `.zarray`).
///
/// ```no_run
/// use std::path::Path;
/// if chunkwise::is_store(Path::new("volume.zarr")) {
///     println!("{:?}", chunkwise::Store::open("volume.zarr")?);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub fn is_store(path: &Path) -> bool {
    if is_url(path) {
        // An object-storage URL is taken for a store; opening it says if it is not one.
        return true;
    }
    path.join("zarr.json").is_file() || path.join(".zarray").is_file()
}

impl Store {
    /// Opens the array in directory `path`.
    ///
    /// ```no_run
    /// let store = chunkwise::Store::open("volume.zarr")?;
    /// println!("{:?} {}", store.shape(), store.dtype());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`], [`crate::StoreError::NotAStore`], [`crate::StoreError::BadMetadata`] if zarrs refuses the
    /// metadata, [`crate::InputError::UnsupportedDtype`] for data types outside [`DType`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        codecs::register();
        let path = path.as_ref().to_path_buf();
        if is_url(&path) {
            return Store::open_remote(&path);
        }
        if !path.exists() {
            return Err(Error::NotFound(path));
        }
        if !is_store(&path) {
            return Err(Error::Store(StoreError::NotAStore(path)));
        }
        check_metadata_sizes(&path)?;
        let fs_store = FilesystemStore::new(&path).map_err(|e| Error::metadata(path.clone(), e))?;
        let storage: ReadableWritableListableStorage = Arc::new(fs_store);
        let array = Array::open(storage.clone(), "/").map_err(|e| codecs::open_error(&path, e))?;
        Store::from_array(path, codecs::frame_blosc_v2(array, storage), None)
    }

    /// Opens the array at an `s3://bucket/prefix` URL.
    fn open_remote(path: &Path) -> Result<Store> {
        let url = path.to_string_lossy().into_owned();
        let remote = Arc::new(Remote::open(&url)?);
        let path = PathBuf::from(remote.url());
        let meta = match remote.get("zarr.json")? {
            Some(m) => Some(m),
            None => remote.get(".zarray")?.map(|_| Vec::new()),
        };
        let Some(meta) = meta else {
            return Err(Error::Store(StoreError::NotAStore(path)));
        };
        if meta.len() as u64 > MAX_METADATA_BYTES {
            return Err(Error::bad_metadata(
                &path,
                format!(
                    "zarr.json holds {} bytes; at most {MAX_METADATA_BYTES} are read",
                    meta.len()
                ),
            ));
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&meta)
            && v["chunk_grid"]["name"] == "rectilinear"
        {
            return Err(Error::bad_metadata(
                &path,
                "a rectilinear chunk grid on object storage is not supported yet (convert it to \
                 a regular one, or copy it to a local disk)",
            ));
        }
        let array =
            Array::open(remote.zarr.clone(), "/").map_err(|e| codecs::open_error(&path, e))?;
        // z5py's blosc chunks with trailing bytes read on object storage as on a disk.
        let array = codecs::frame_blosc_v2(array, remote.zarr.clone());
        Store::from_array(path, array, Some(remote))
    }

    /// Whether the array is still there: a local store whose `zarr.json` (or `.zarray`) is
    /// gone was deleted or replaced since it was opened, and its chunks would all read as the
    /// fill value. (On object storage this costs a request, and is not checked.)
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the store.
    pub fn check_present(&self) -> Result<()> {
        if self.remote.is_none()
            && !self.path.join("zarr.json").exists()
            && !self.path.join(".zarray").exists()
        {
            return Err(Error::NotFound(self.path.clone()));
        }
        Ok(())
    }

    /// What the array is now, for job fingerprints: a local store's stamp (its metadata and
    /// chunk files), or for object storage its metadata and the listing of its objects
    /// (keys, sizes and ETags).
    pub(crate) fn stamp(&self) -> Result<String> {
        let Some(r) = &self.remote else {
            return Ok(crate::fingerprint::stamp(&self.path));
        };
        let mut list = r.list()?;
        list.sort();
        let mut text = String::new();
        for (k, n, tag) in &list {
            text.push_str(&format!("{k} {n} {tag}\n"));
        }
        Ok(format!(
            "{} store {} chunks {}",
            r.url(),
            crate::fingerprint::fnv1a(&self.metadata_json().to_string()),
            crate::fingerprint::fnv1a(&text)
        ))
    }

    /// Bytes stored (chunk files and metadata).
    pub(crate) fn stored_bytes(&self) -> Result<u64> {
        match &self.remote {
            Some(r) => Ok(r.list()?.iter().map(|(_, n, _)| n).sum()),
            None => crate::inspect::dir_bytes(&self.path),
        }
    }

    fn from_array(
        path: PathBuf,
        array: Array<dyn ReadableWritableListableStorageTraits>,
        remote: Option<Arc<Remote>>,
    ) -> Result<Store> {
        let dtype = dtype_of(array.data_type()).ok_or_else(|| {
            Error::Input(InputError::UnsupportedDtype {
                path: path.clone(),
                dtype: array.data_type().to_string(),
                hint: format!("supported: {}", DType::accepted_names()),
            })
        })?;
        let zarr_format = match array.metadata() {
            ArrayMetadata::V3(_) => 3,
            ArrayMetadata::V2(_) => 2,
        };
        if array.dimensionality() == 0 {
            return Err(Error::Store(StoreError::BadMetadata {
                path,
                reason: "0-dimensional arrays are not supported".into(),
                source: None,
            }));
        }
        let fill = array.fill_value().as_ne_bytes().to_vec();
        let store = Store {
            path,
            array,
            remote,
            dtype,
            zarr_format,
            fill,
        };
        store.check_limits()?;
        Ok(store)
    }

    /// Refuses metadata whose sizes chunkwise cannot handle within bounded memory and time
    /// (spec/FORMAT.md §10): before anything allocates or loops on them.
    fn check_limits(&self) -> Result<()> {
        let shape = self.shape();
        let itemsize = self.dtype.size() as u64;
        let bad = |reason: String| Err(Error::bad_metadata(&self.path, reason));
        if shape.len() > MAX_RANK {
            return bad(format!(
                "{} axes; at most {MAX_RANK} are supported",
                shape.len()
            ));
        }
        let elements = shape.iter().try_fold(1u64, |a, &n| a.checked_mul(n));
        if elements.and_then(|n| n.checked_mul(itemsize)).is_none() {
            return bad(format!(
                "shape {} holds more than 2^64 bytes",
                fmt_shape(shape)
            ));
        }
        let longest: Vec<u64> = match self.chunk_shape() {
            Some(c) => c,
            None => Layout::read(&self.path)?
                .edges()
                .iter()
                .zip(shape)
                .map(|(e, &n)| e.list(n).into_iter().max().unwrap_or(1))
                .collect(),
        };
        let chunk_bytes = longest
            .iter()
            .try_fold(itemsize, |a, &c| a.checked_mul(c))
            .unwrap_or(u64::MAX);
        if chunk_bytes > MAX_CHUNK_BYTES {
            return bad(format!(
                "chunks of {} {} take {chunk_bytes} bytes each; at most {MAX_CHUNK_BYTES} \
                 (4 GiB) are supported, as every worker holds one",
                fmt_shape(&longest),
                self.dtype
            ));
        }
        let chunks = self
            .array
            .chunk_grid_shape()
            .iter()
            .try_fold(1u64, |a, &n| a.checked_mul(n))
            .unwrap_or(u64::MAX);
        if chunks > MAX_CHUNKS {
            return bad(format!(
                "a grid of {} chunks; at most {MAX_CHUNKS} (2^26) are supported",
                fmt_shape(self.array.chunk_grid_shape())
            ));
        }
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The array shape.
    ///
    /// ```no_run
    /// let store = chunkwise::Store::open("volume.zarr")?;
    /// assert_eq!(store.shape().len(), store.ndim());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn shape(&self) -> &[u64] {
        self.array.shape()
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.array.dimensionality()
    }

    /// The element type.
    ///
    /// ```no_run
    /// let store = chunkwise::Store::open("volume.zarr")?;
    /// println!("{} ({} bytes per element)", store.dtype(), store.dtype().size());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// 3 or 2.
    pub fn zarr_format(&self) -> u8 {
        self.zarr_format
    }

    /// The fill value's bytes (native order).
    pub fn fill_bytes(&self) -> &[u8] {
        &self.fill
    }

    /// The metadata document as JSON (v3 `zarr.json` or v2 `.zarray`).
    ///
    /// ```no_run
    /// let meta = chunkwise::Store::open("volume.zarr")?.metadata_json();
    /// println!("codecs: {}", meta["codecs"]);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn metadata_json(&self) -> Value {
        serde_json::to_value(self.array.metadata()).unwrap_or(Value::Null)
    }

    /// The chunk shape of a regular chunk grid (`None` for other grids).
    ///
    /// ```no_run
    /// let store = chunkwise::Store::open("volume.zarr")?;
    /// match store.chunk_shape() {
    ///     Some(c) => println!("regular chunks of {c:?}"),
    ///     None => println!("rectilinear chunks, bounds {:?}", store.chunk_bounds()?),
    /// }
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn chunk_shape(&self) -> Option<Vec<u64>> {
        match self.array.metadata() {
            ArrayMetadata::V2(m) => Some(m.chunks.iter().map(|c| c.get()).collect()),
            ArrayMetadata::V3(m) => {
                if m.chunk_grid.name() != "regular" {
                    return None;
                }
                let cfg = serde_json::to_value(&m.chunk_grid).ok()?;
                cfg["configuration"]["chunk_shape"]
                    .as_array()?
                    .iter()
                    .map(Value::as_u64)
                    .collect()
            }
        }
    }

    /// The regular chunk grid ([`Store::block_grid`] also covers rectilinear grids).
    ///
    /// # Errors
    /// [`crate::StoreError::BadMetadata`] if the array's chunk grid is not regular.
    pub fn grid(&self) -> Result<Grid> {
        let chunk = self.chunk_shape().ok_or_else(|| {
            Error::Store(StoreError::BadMetadata {
                path: self.path.clone(),
                reason: "the chunk grid is rectilinear, not regular (read it by blocks of \
                     `Store::block_grid`, or make a regular copy with `chunkwise convert`)"
                    .into(),
                source: None,
            })
        })?;
        Grid::new(self.shape(), &chunk)
    }

    /// A regular grid to stream the array by: the chunk grid when it is regular; for a
    /// rectilinear grid, blocks as long as its longest chunk on each axis (reads by region
    /// decode each stored chunk at most twice).
    pub fn block_grid(&self) -> Result<Grid> {
        if let Some(chunk) = self.chunk_shape() {
            return Grid::new(self.shape(), &chunk);
        }
        let layout = Layout::read(&self.path)?;
        let longest: Vec<u64> = layout
            .edges()
            .iter()
            .zip(self.shape())
            .map(|(e, &n)| e.list(n).into_iter().max().unwrap_or(1))
            .collect();
        Grid::new(self.shape(), &longest)
    }

    /// The chunk boundaries along each axis, regular or rectilinear: `n + 1` offsets for `n`
    /// chunks, from 0 to the extent (the last chunk clipped to the array).
    ///
    /// # Errors
    /// [`crate::StoreError::BadMetadata`] for a grid chunkwise cannot read.
    pub fn chunk_bounds(&self) -> Result<Vec<Vec<u64>>> {
        let lists: Vec<Vec<u64>> = match self.chunk_shape() {
            Some(c) => c
                .iter()
                .zip(self.shape())
                .map(|(&c, &n)| vec![c; n.div_ceil(c) as usize])
                .collect(),
            None => {
                let layout = Layout::read(&self.path)?;
                layout
                    .edges()
                    .iter()
                    .zip(self.shape())
                    .map(|(e, &n)| e.list(n))
                    .collect()
            }
        };
        Ok(lists
            .iter()
            .zip(self.shape())
            .map(|(l, &n)| {
                let mut at = 0;
                let mut b = vec![0];
                for &e in l {
                    at = (at + e).min(n);
                    b.push(at);
                }
                b
            })
            .collect())
    }

    /// The stored chunks of a regular grid (one bit per chunk of [`Store::grid_shape`]),
    /// from a walk of the store's directory: every file whose name is a chunk key. `None`
    /// for a rectilinear grid or a key encoding this does not parse.
    pub(crate) fn stored_chunks(&self) -> Option<crate::grid::ChunkSet> {
        self.chunk_shape()?;
        let gshape = self.grid_shape();
        let ndim = gshape.len();
        if ndim == 0 {
            return None;
        }
        // The key of chunk 0: a prefix ("c/", "c.", or none in v2), then ndim zeros joined by
        // the separator.
        let zero = self.chunk_key(&vec![0; ndim]);
        let prefix_len = zero.len().checked_sub(2 * ndim - 1)?;
        let (prefix, rest) = zero.split_at(prefix_len);
        let sep = if ndim > 1 { rest.chars().nth(1)? } else { '/' };
        let mut set = crate::grid::ChunkSet::new(&gshape);
        let mut idx = Vec::with_capacity(ndim);
        let mut add = |rel: &str| {
            let Some(body) = rel.strip_prefix(prefix) else {
                return;
            };
            idx.clear();
            for part in body.split(sep) {
                match part.parse::<u64>() {
                    Ok(v) => idx.push(v),
                    Err(_) => return,
                }
            }
            if idx.len() == ndim && self.chunk_key(&idx) == rel {
                set.insert(&idx);
            }
        };
        match &self.remote {
            Some(r) => r.list().ok()?.iter().for_each(|(k, _, _)| add(k)),
            None => walk_files(&self.path, "", &mut add),
        }
        Some(set)
    }

    /// Chunks per axis.
    pub fn grid_shape(&self) -> Vec<u64> {
        self.array.chunk_grid_shape().to_vec()
    }

    /// Every chunk index, in C order.
    pub fn chunk_indices(&self) -> Vec<Vec<u64>> {
        let boxed: Vec<_> = self.grid_shape().into_iter().map(|n| 0..n).collect();
        indices_in(&boxed)
    }

    /// The region of the array chunk `idx` covers (clipped to the array).
    pub fn chunk_region(&self, idx: &[u64]) -> Result<Region> {
        let subset = self
            .array
            .chunk_subset_bounded(idx)
            .map_err(|e| self.chunk_error(idx, e))?;
        Ok(Region::new(subset.to_ranges()))
    }

    /// The store key of chunk `idx` (`c/0/1/2` in v3, `0.1.2` in v2 by default).
    ///
    /// ```no_run
    /// let store = chunkwise::Store::open("volume.zarr")?; // a v3 array
    /// assert_eq!(store.chunk_key(&[0, 1, 2]), "c/0/1/2");
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn chunk_key(&self, idx: &[u64]) -> String {
        self.array.chunk_key(idx).as_str().to_string()
    }

    /// The stored size of chunk `idx`, or `None` when it is absent (all fill value).
    pub fn chunk_stored_size(&self, idx: &[u64]) -> Result<Option<u64>> {
        if let Some(r) = &self.remote {
            return r.size(&self.chunk_key(idx));
        }
        let p = self.path.join(self.chunk_key(idx));
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn chunk_error(&self, idx: &[u64], e: ArrayError) -> Error {
        Error::corrupt(self.path.clone(), self.chunk_key(idx), e)
    }

    /// Block `idx` of `grid` (this array's [`Store::block_grid`]) at its full block shape:
    /// the decoded chunk for a regular grid (`None` when absent), else the block's region read
    /// across the rectilinear chunks and padded with the fill value.
    ///
    /// # Errors
    /// As [`Store::read_chunk`] and [`Store::read_region_into`].
    pub fn read_block(&self, grid: &Grid, idx: &[u64]) -> Result<Option<Vec<u8>>> {
        let regular = match self.array.metadata() {
            ArrayMetadata::V2(_) => true,
            ArrayMetadata::V3(m) => m.chunk_grid.name() == "regular",
        };
        if regular {
            return self.read_chunk(idx);
        }
        let full: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
        let region = grid.chunk_region(idx);
        let part: Vec<usize> = region.shape().iter().map(|&n| n as usize).collect();
        crate::copy::read_padded(&full, &part, self.fill_bytes(), |buf| {
            self.read_region_into(&region, buf)
        })
        .map(Some)
    }

    /// Decodes chunk `idx` in full (its padded chunk shape), or `None` when it is absent.
    ///
    /// ```no_run
    /// let store = chunkwise::Store::open("volume.zarr")?;
    /// match store.read_chunk(&[0, 0, 0])? {
    ///     Some(bytes) => println!("{} bytes decoded", bytes.len()),
    ///     None => println!("absent: all fill value"),
    /// }
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::StoreError::CorruptChunk`] naming the key when the chunk cannot be read or decoded (a bad
    /// checksum, a truncated or garbled file).
    pub fn read_chunk(&self, idx: &[u64]) -> Result<Option<Vec<u8>>> {
        let got = self
            .array
            .retrieve_chunk_if_exists_opt::<ArrayBytes<'static>>(idx, &codec_options())
            .map_err(|e| self.chunk_error(idx, e))?;
        match got {
            None => Ok(None),
            Some(bytes) => {
                let raw = bytes
                    .into_fixed()
                    .map_err(|e| Error::corrupt(self.path.clone(), self.chunk_key(idx), e))?;
                Ok(Some(raw.into_owned()))
            }
        }
    }

    /// Whether `region` consists of whole chunks (each chunk it touches lies inside it).
    ///
    /// # Errors
    /// [`Error::BadRegion`] for a region outside the array.
    pub(crate) fn holds_whole_chunks(&self, region: &Region) -> Result<bool> {
        let touched = self.chunks_touching(region)?;
        if touched.iter().any(|r| r.is_empty()) {
            return Ok(true);
        }
        let first: Vec<u64> = touched.iter().map(|r| r.start).collect();
        let last: Vec<u64> = touched.iter().map(|r| r.end - 1).collect();
        let (a, b) = (self.chunk_region(&first)?, self.chunk_region(&last)?);
        Ok(region
            .ranges()
            .iter()
            .zip(a.ranges().iter().zip(b.ranges()))
            .all(|(r, (fa, lb))| fa.start == r.start && lb.end == r.end))
    }

    /// The shape chunk `idx` decodes to (an edge chunk at its full, padded shape).
    ///
    /// # Errors
    /// [`crate::StoreError::CorruptChunk`] for an index outside the grid.
    pub(crate) fn padded_chunk_shape(&self, idx: &[u64]) -> Result<Vec<usize>> {
        Ok(self
            .array
            .chunk_shape(idx)
            .map_err(|e| self.chunk_error(idx, e))?
            .iter()
            .map(|c| c.get() as usize)
            .collect())
    }

    /// Chunk `idx` as stored (encoded, no codec run), or `None` when it is absent.
    ///
    /// # Errors
    /// [`crate::StoreError::CorruptChunk`] naming the key when it cannot be read.
    pub(crate) fn read_encoded(&self, idx: &[u64]) -> Result<Option<Vec<u8>>> {
        self.array
            .retrieve_encoded_chunk(idx)
            .map_err(|e| Error::corrupt(self.path.clone(), self.chunk_key(idx), e))
    }

    /// Reads `region` into `out` (C order, native-endian element bytes), decoding the chunks it
    /// touches in parallel on the current rayon pool.
    ///
    /// # Errors
    /// [`Error::BadRegion`] if the region is outside the array or `out` has the wrong size;
    /// [`crate::StoreError::CorruptChunk`] naming the first bad chunk.
    pub fn read_region_into(&self, region: &Region, out: &mut [u8]) -> Result<()> {
        let itemsize = self.dtype.size();
        let full = Region::full(self.shape());
        if !full.contains(region) {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!("outside the array of shape {}", fmt_shape(self.shape())),
            });
        }
        let n = to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "region")?;
        if out.len() != n * itemsize {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!(
                    "output buffer holds {} bytes, need {}",
                    out.len(),
                    n * itemsize
                ),
            });
        }
        if region.is_empty() {
            return Ok(());
        }
        let out_shape: Vec<usize> = region.shape().iter().map(|&s| s as usize).collect();
        let out_strides = c_strides(&out_shape, itemsize);
        let chunk_box = self.chunks_touching(region)?;
        let chunks = indices_in(&chunk_box);
        let shared = SharedOut::new(out);
        let opts = codec_options();
        chunks.par_iter().try_for_each(|idx| -> Result<()> {
            let creg = self.chunk_region(idx)?;
            let Some(part) = creg.intersect(region) else {
                return Ok(());
            };
            if part.is_empty() {
                return Ok(());
            }
            let part_shape: Vec<usize> = part.shape().iter().map(|&s| s as usize).collect();
            // Decode only the part needed (a partial read of a shard decodes only its subchunks).
            let in_chunk: Vec<_> = part
                .ranges()
                .iter()
                .zip(creg.ranges())
                .map(|(p, c)| (p.start - c.start)..(p.end - c.start))
                .collect();
            // A whole chunk comes back at its full (padded, for edge chunks) chunk shape; a part
            // of one at the part's shape (for a shard, only the subchunks it touches decode).
            let (bytes, src_shape) = if part == creg {
                let full: Vec<usize> = self
                    .array
                    .chunk_shape(idx)
                    .map_err(|e| self.chunk_error(idx, e))?
                    .iter()
                    .map(|c| c.get() as usize)
                    .collect();
                let b = self
                    .array
                    .retrieve_chunk_opt::<ArrayBytes<'static>>(idx, &opts);
                (b, full)
            } else {
                let b = self.array.retrieve_chunk_subset_opt::<ArrayBytes<'static>>(
                    idx,
                    &ArraySubset::new_with_ranges(&in_chunk),
                    &opts,
                );
                (b, part_shape.clone())
            };
            let raw = bytes
                .map_err(|e| self.chunk_error(idx, e))?
                .into_fixed()
                .map_err(|e| Error::corrupt(self.path.clone(), self.chunk_key(idx), e))?;
            let src_strides = c_strides(&src_shape, itemsize);
            let dst_off: usize = part
                .start()
                .iter()
                .zip(region.ranges())
                .zip(&out_strides)
                .map(|((&p, r), &s)| (p - r.start) as usize * s)
                .sum();
            // SAFETY: chunk regions are disjoint, so each task writes a disjoint box of `out`.
            unsafe {
                shared.copy_in(
                    &raw,
                    Side {
                        offset: 0,
                        strides: &src_strides,
                    },
                    Side {
                        offset: dst_off,
                        strides: &out_strides,
                    },
                    &part_shape,
                    itemsize,
                );
            }
            Ok(())
        })
    }

    pub(crate) fn chunks_touching(&self, region: &Region) -> Result<Vec<std::ops::Range<u64>>> {
        let subset = ArraySubset::new_with_ranges(region.ranges());
        let chunks = self
            .array
            .chunks_in_array_subset(&subset)
            .map_err(|e| Error::BadRegion {
                spec: region.to_string(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| Error::BadRegion {
                spec: region.to_string(),
                reason: format!("outside the array of shape {}", fmt_shape(self.shape())),
            })?;
        Ok(chunks.to_ranges())
    }

    /// Reads `region` as an n-d array of `T`.
    ///
    /// ```no_run
    /// use chunkwise::{Region, Store};
    /// let store = Store::open("volume.zarr")?;
    /// let block = store.read_region::<u16>(&Region::new(vec![0..10, 0..64, 0..64]))?;
    /// assert_eq!(block.shape(), &[10, 64, 64]);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::InputError::DtypeMismatch`] if `T` is not the store's type (a `bool` array
    /// reads as `bool` or as `u8` 0/1); otherwise as [`Store::read_region_into`].
    pub fn read_region<T: Element>(&self, region: &Region) -> Result<ArrayD<T>> {
        let as_bytes = self.dtype == DType::Bool && T::DTYPE == DType::U8;
        if T::DTYPE != self.dtype && !as_bytes {
            return Err(Error::Input(InputError::DtypeMismatch {
                path: self.path.clone(),
                stored: self.dtype,
                requested: T::DTYPE,
            }));
        }
        let n = to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "region")?;
        let mut bytes = vec![0u8; n * self.dtype.size()];
        self.read_region_into(region, &mut bytes)?;
        let values = T::from_le_bytes_slice(&bytes);
        let shape: Vec<usize> = region.shape().iter().map(|&s| s as usize).collect();
        Ok(ArrayD::from_shape_vec(shape, values).expect("buffer length matches the region"))
    }

    /// Reads the whole array.
    ///
    /// ```no_run
    /// let labels = chunkwise::Store::open("labels.zarr")?.read_all::<u32>()?;
    /// println!("{} voxels", labels.len());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Store::read_region`].
    pub fn read_all<T: Element>(&self) -> Result<ArrayD<T>> {
        self.read_region(&Region::full(self.shape()))
    }
}

/// Refuses an `s3://` path for `what`, an operation that needs a local filesystem (renames,
/// hard links, locks): write locally, then `chunkwise convert` to object storage.
pub(crate) fn local_only(path: &Path, what: &str) -> Result<()> {
    if is_url(path) {
        return Err(Error::Store(StoreError::Remote {
            url: path.to_string_lossy().into_owned(),
            reason: format!(
                "{what} on object storage is not supported yet (it needs renames and locks): \
                 write to a local path, then `chunkwise convert LOCAL -o s3://...`"
            ),
        }));
    }
    Ok(())
}

/// Calls `f` with the path (relative to `root`, `/`-separated) of every file under `dir`,
/// skipping hidden entries (chunkwise's staging and build names) and metadata.
fn walk_files(root: &Path, dir: &str, f: &mut impl FnMut(&str)) {
    let Ok(entries) = fs::read_dir(if dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(dir)
    }) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || name == "zarr.json" {
            continue;
        }
        let rel = if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        };
        match e.file_type() {
            Ok(t) if t.is_dir() => walk_files(root, &rel, f),
            Ok(_) => f(&rel),
            Err(_) => {}
        }
    }
}
