//! Zarr arrays in filesystem directories: the only module that names `zarrs` types.
//!
//! Reading goes through `zarrs` (any Zarr v3 array it understands, and Zarr v2 read-only).
//! Writing is ours: `zarrs` encodes each chunk, and this module writes the bytes, syncs them once
//! at the end, and publishes the array by writing `zarr.json` and renaming a private build
//! directory into place. Invariant: a directory at the output path is either the old array or
//! the complete new one, never a partial one (spec/FORMAT.md, "Durability").

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::ArrayD;
use rayon::prelude::*;
use serde_json::{Value, json};
use zarrs::array::data_type as zdt;
use zarrs::array::{
    Array, ArrayBytes, ArrayError, ArrayMetadata, ArrayMetadataV3, ArraySubset,
    ArrayToBytesCodecTraits, CodecOptions, DataType,
};
use zarrs::filesystem::FilesystemStore;

use crate::copy::{SharedOut, Side, c_strides};
use crate::dtype::{DType, Element};
use crate::error::{Error, IoContext, Result, to_usize};
use crate::grid::{Grid, indices_in};
use crate::region::{Region, fmt_shape};

/// The compressor in a chunk's codec chain (always after the `bytes` codec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Zarr's `zstd` codec at `level` (-7..=22).
    Zstd {
        /// Compression level.
        level: i32,
    },
    /// Zarr's `blosc` codec with zstd inside and byte shuffle, `clevel` 0..=9.
    BloscZstd {
        /// Blosc compression level.
        level: u8,
    },
    /// Zarr's `blosc` codec with lz4 inside and byte shuffle, `clevel` 0..=9.
    BloscLz4 {
        /// Blosc compression level.
        level: u8,
    },
}

impl Default for Codec {
    /// blosc-lz4 level 5: see spec/FORMAT.md ("Choosing the default codec") for the measurements.
    fn default() -> Self {
        Codec::BloscZstd {
            level: DEFAULT_BLOSC_ZSTD_LEVEL,
        }
    }
}

const DEFAULT_BLOSC_ZSTD_LEVEL: u8 = 3;

/// The largest chunk (uncompressed) chunkwise creates: every worker holds one in memory.
const MAX_CHUNK_BYTES: u128 = 2 << 30;

impl Codec {
    /// The codec named on the command line (`zstd`, `blosc-zstd`, `blosc-lz4`), at `level` or
    /// its default level.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an unknown name or a level outside the codec's range.
    pub fn from_name(name: &str, level: Option<i32>) -> Result<Codec> {
        let blosc_level = |default: u8| -> Result<u8> {
            match level {
                None => Ok(default),
                Some(l) if (0..=9).contains(&l) => Ok(l as u8),
                Some(l) => Err(Error::option(
                    "--level",
                    format!("blosc levels are 0..=9, got {l}"),
                )),
            }
        };
        match name {
            "zstd" => match level {
                None => Ok(Codec::Zstd { level: 3 }),
                Some(l) if (-7..=22).contains(&l) => Ok(Codec::Zstd { level: l }),
                Some(l) => Err(Error::option(
                    "--level",
                    format!("zstd levels are -7..=22, got {l}"),
                )),
            },
            "blosc-zstd" => Ok(Codec::BloscZstd {
                level: blosc_level(DEFAULT_BLOSC_ZSTD_LEVEL)?,
            }),
            "blosc-lz4" => Ok(Codec::BloscLz4 {
                level: blosc_level(5)?,
            }),
            other => Err(Error::option(
                "--codec",
                format!("unknown codec {other:?}; expected zstd, blosc-zstd or blosc-lz4"),
            )),
        }
    }

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Zstd { .. } => "zstd",
            Codec::BloscZstd { .. } => "blosc-zstd",
            Codec::BloscLz4 { .. } => "blosc-lz4",
        }
    }

    fn metadata(&self, itemsize: usize) -> Value {
        let blosc = |cname: &str, clevel: u8| {
            json!({"name": "blosc", "configuration": {
                "cname": cname, "clevel": clevel, "shuffle": "shuffle",
                "typesize": itemsize, "blocksize": 0}})
        };
        match *self {
            Codec::Zstd { level } => {
                json!({"name": "zstd", "configuration": {"level": level, "checksum": false}})
            }
            Codec::BloscZstd { level } => blosc("zstd", level),
            Codec::BloscLz4 { level } => blosc("lz4", level),
        }
    }
}

/// Whether writes are made durable before an array is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Sync every chunk and directory once, before `zarr.json` is written (the default).
    #[default]
    Sync,
    /// Skip syncing (scratch data; a power cut may lose published chunks).
    NoSync,
}

/// Everything needed to create an array: shape, type, chunking and codecs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSpec {
    shape: Vec<u64>,
    dtype: DType,
    chunks: Vec<u64>,
    codec: Codec,
    checksum: bool,
    subchunks: Option<Vec<u64>>,
    axis_names: Option<Vec<String>>,
}

impl StoreSpec {
    /// An array of `shape` and `dtype` in chunks of `chunks`, with the default codec.
    pub fn new(shape: Vec<u64>, dtype: DType, chunks: Vec<u64>) -> Self {
        StoreSpec {
            shape,
            dtype,
            chunks,
            codec: Codec::default(),
            checksum: false,
            subchunks: None,
            axis_names: None,
        }
    }

    /// Sets the compressor.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Adds a `crc32c` checksum to every chunk (every subchunk when sharded).
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }

    /// Stores each chunk as a shard of `subchunks`-shaped subchunks (`sharding_indexed`).
    pub fn subchunks(mut self, subchunks: Option<Vec<u64>>) -> Self {
        self.subchunks = subchunks;
        self
    }

    /// Names the axes (`dimension_names`).
    pub fn axis_names(mut self, names: Option<Vec<String>>) -> Self {
        self.axis_names = names;
        self
    }

    /// The array shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The chunk shape.
    pub fn chunk_shape(&self) -> &[u64] {
        &self.chunks
    }

    /// Checks the spec for consistency.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the option that is wrong.
    pub fn validate(&self) -> Result<Grid> {
        if self.shape.is_empty() {
            return Err(Error::option(
                "shape",
                "0-dimensional arrays are not supported",
            ));
        }
        let grid = Grid::new(&self.shape, &self.chunks)?;
        let chunk_bytes = self.chunks.iter().map(|&c| u128::from(c)).product::<u128>()
            * self.dtype.size() as u128;
        if chunk_bytes > MAX_CHUNK_BYTES {
            return Err(Error::option(
                "--chunks",
                format!(
                    "a chunk of {} is {chunk_bytes} bytes, more than the {} GiB limit",
                    fmt_shape(&self.chunks),
                    MAX_CHUNK_BYTES >> 30
                ),
            ));
        }
        if let Some(sub) = &self.subchunks {
            if sub.len() != self.chunks.len() {
                return Err(Error::option(
                    "--shard",
                    format!(
                        "{} subchunk sizes given for {} dimensions",
                        sub.len(),
                        self.chunks.len()
                    ),
                ));
            }
            for (axis, (&s, &c)) in sub.iter().zip(&self.chunks).enumerate() {
                if s == 0 || c % s != 0 {
                    return Err(Error::option(
                        "--shard",
                        format!(
                            "subchunk size {s} on axis {axis} must be non-zero and divide the chunk size {c}"
                        ),
                    ));
                }
            }
        }
        if let Some(names) = self
            .axis_names
            .as_ref()
            .filter(|n| n.len() != self.shape.len())
        {
            return Err(Error::option(
                "--axis-names",
                format!(
                    "{} names given for {} dimensions",
                    names.len(),
                    self.shape.len()
                ),
            ));
        }
        Ok(grid)
    }

    /// The `zarr.json` document this spec describes (spec/FORMAT.md, "zarr.json").
    pub fn metadata(&self) -> Value {
        let itemsize = self.dtype.size();
        let bytes = if itemsize == 1 {
            json!({"name": "bytes"})
        } else {
            json!({"name": "bytes", "configuration": {"endian": "little"}})
        };
        let mut codecs = vec![bytes, self.codec.metadata(itemsize)];
        if self.checksum {
            codecs.push(json!({"name": "crc32c"}));
        }
        if let Some(sub) = &self.subchunks {
            codecs = vec![json!({"name": "sharding_indexed", "configuration": {
                "chunk_shape": sub,
                "codecs": codecs,
                "index_codecs": [
                    {"name": "bytes", "configuration": {"endian": "little"}},
                    {"name": "crc32c"}
                ],
                "index_location": "end"
            }})];
        }
        let fill = match self.dtype {
            DType::Bool => json!(false),
            DType::F32 | DType::F64 => json!(0.0),
            _ => json!(0),
        };
        let mut meta = json!({
            "zarr_format": 3,
            "node_type": "array",
            "shape": self.shape,
            "data_type": self.dtype.zarr_name(),
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": self.chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill,
            "codecs": codecs,
            "attributes": {}
        });
        if let Some(names) = &self.axis_names {
            meta["dimension_names"] = json!(names);
        }
        meta
    }

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
pub struct Store {
    path: PathBuf,
    array: Array<FilesystemStore>,
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
pub fn is_store(path: &Path) -> bool {
    path.join("zarr.json").is_file() || path.join(".zarray").is_file()
}

impl Store {
    /// Opens the array in directory `path`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::NotAStore`], [`Error::BadMetadata`] if zarrs refuses the
    /// metadata, [`Error::UnsupportedDtype`] for data types outside [`DType`].
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(Error::NotFound(path));
        }
        if !is_store(&path) {
            return Err(Error::NotAStore(path));
        }
        let fs_store = FilesystemStore::new(&path).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let array = Array::open(Arc::new(fs_store), "/").map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Store::from_array(path, array)
    }

    fn from_array(path: PathBuf, array: Array<FilesystemStore>) -> Result<Store> {
        let dtype = dtype_of(array.data_type()).ok_or_else(|| Error::UnsupportedDtype {
            path: path.clone(),
            dtype: array.data_type().to_string(),
            hint: format!("supported: {}", DType::accepted_names()),
        })?;
        let zarr_format = match array.metadata() {
            ArrayMetadata::V3(_) => 3,
            ArrayMetadata::V2(_) => 2,
        };
        if array.dimensionality() == 0 {
            return Err(Error::BadMetadata {
                path,
                reason: "0-dimensional arrays are not supported".into(),
            });
        }
        let fill = array.fill_value().as_ne_bytes().to_vec();
        Ok(Store {
            path,
            array,
            dtype,
            zarr_format,
            fill,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The array shape.
    pub fn shape(&self) -> &[u64] {
        self.array.shape()
    }

    /// Number of dimensions.
    pub fn ndim(&self) -> usize {
        self.array.dimensionality()
    }

    /// The element type.
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
    pub fn metadata_json(&self) -> Value {
        serde_json::to_value(self.array.metadata()).unwrap_or(Value::Null)
    }

    /// The chunk shape of a regular chunk grid (`None` for other grids).
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

    /// The regular chunk grid.
    ///
    /// # Errors
    /// [`Error::BadMetadata`] if the array's chunk grid is not regular.
    pub fn grid(&self) -> Result<Grid> {
        let chunk = self.chunk_shape().ok_or_else(|| Error::BadMetadata {
            path: self.path.clone(),
            reason: "only regular chunk grids are supported here".into(),
        })?;
        Grid::new(self.shape(), &chunk)
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
            .map_err(|e| self.chunk_error(idx, &e))?;
        Ok(Region::new(subset.to_ranges()))
    }

    /// The store key of chunk `idx` (`c/0/1/2` in v3, `0.1.2` in v2 by default).
    pub fn chunk_key(&self, idx: &[u64]) -> String {
        self.array.chunk_key(idx).as_str().to_string()
    }

    /// The stored size of chunk `idx`, or `None` when it is absent (all fill value).
    pub fn chunk_stored_size(&self, idx: &[u64]) -> Result<Option<u64>> {
        let p = self.path.join(self.chunk_key(idx));
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn chunk_error(&self, idx: &[u64], e: &ArrayError) -> Error {
        Error::CorruptChunk {
            store: self.path.clone(),
            key: self.chunk_key(idx),
            reason: e.to_string(),
        }
    }

    /// Decodes chunk `idx` in full (its padded chunk shape), or `None` when it is absent.
    ///
    /// # Errors
    /// [`Error::CorruptChunk`] naming the key when the chunk cannot be read or decoded (a bad
    /// checksum, a truncated or garbled file).
    pub fn read_chunk(&self, idx: &[u64]) -> Result<Option<Vec<u8>>> {
        let got = self
            .array
            .retrieve_chunk_if_exists_opt::<ArrayBytes<'static>>(idx, &codec_options())
            .map_err(|e| self.chunk_error(idx, &e))?;
        match got {
            None => Ok(None),
            Some(bytes) => {
                let raw = bytes.into_fixed().map_err(|e| Error::CorruptChunk {
                    store: self.path.clone(),
                    key: self.chunk_key(idx),
                    reason: e.to_string(),
                })?;
                Ok(Some(raw.into_owned()))
            }
        }
    }

    /// Reads `region` into `out` (C order, native-endian element bytes), decoding the chunks it
    /// touches in parallel on the current rayon pool.
    ///
    /// # Errors
    /// [`Error::BadRegion`] if the region is outside the array or `out` has the wrong size;
    /// [`Error::CorruptChunk`] naming the first bad chunk.
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
            let bytes = if part == creg {
                self.array
                    .retrieve_chunk_opt::<ArrayBytes<'static>>(idx, &opts)
                    .map(|b| (b, creg.shape()))
            } else {
                self.array
                    .retrieve_chunk_subset_opt::<ArrayBytes<'static>>(
                        idx,
                        &ArraySubset::new_with_ranges(&in_chunk),
                        &opts,
                    )
                    .map(|b| (b, part.shape()))
            };
            let (bytes, _) = bytes.map_err(|e| self.chunk_error(idx, &e))?;
            let raw = bytes.into_fixed().map_err(|e| Error::CorruptChunk {
                store: self.path.clone(),
                key: self.chunk_key(idx),
                reason: e.to_string(),
            })?;
            // For a whole chunk, zarrs returns the bounded chunk region only if the chunk is not
            // an edge chunk; edge chunks come back padded to the full chunk shape.
            let src_shape: Vec<usize> = if part == creg {
                let full_chunk = self
                    .array
                    .chunk_shape(idx)
                    .map_err(|e| self.chunk_error(idx, &e))?;
                full_chunk.iter().map(|c| c.get() as usize).collect()
            } else {
                part_shape.clone()
            };
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

    fn chunks_touching(&self, region: &Region) -> Result<Vec<std::ops::Range<u64>>> {
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
    /// # Errors
    /// [`Error::DtypeMismatch`] if `T` is not the store's type; otherwise as
    /// [`Store::read_region_into`].
    pub fn read_region<T: Element>(&self, region: &Region) -> Result<ArrayD<T>> {
        if T::DTYPE != self.dtype {
            return Err(Error::DtypeMismatch {
                path: self.path.clone(),
                stored: self.dtype,
                requested: T::DTYPE,
            });
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
    /// # Errors
    /// As [`Store::read_region`].
    pub fn read_all<T: Element>(&self) -> Result<ArrayD<T>> {
        self.read_region(&Region::full(self.shape()))
    }
}

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
    array: Array<FilesystemStore>,
    metadata: Value,
    grid: Grid,
    itemsize: usize,
    durability: Durability,
    dirs: Mutex<HashSet<PathBuf>>,
    written: Mutex<Vec<PathBuf>>,
    committed: bool,
}

const LOCK_NAME: &str = ".chunkwise.lock";

fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::option("output", format!("{} has no file name", path.display())))?;
    let mut s = std::ffi::OsString::from(".");
    s.push(name);
    s.push(suffix);
    Ok(path.with_file_name(s))
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).at(path)
}

impl StoreWriter {
    fn create(
        spec: &StoreSpec,
        path: &Path,
        overwrite: bool,
        durability: Durability,
    ) -> Result<Self> {
        let grid = spec.validate()?;
        if path.exists() {
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
        }
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
        let v3: ArrayMetadataV3 =
            serde_json::from_value(metadata.clone()).map_err(|e| Error::BadMetadata {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let fs_store = FilesystemStore::new(&tmp_path).map_err(|e| Error::BadMetadata {
            path: tmp_path.clone(),
            reason: e.to_string(),
        })?;
        let array = Array::new_with_metadata(Arc::new(fs_store), "/", ArrayMetadata::V3(v3))
            .map_err(|e| Error::BadMetadata {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(StoreWriter {
            final_path: path.to_path_buf(),
            tmp_path,
            lock: Some(lock),
            array,
            metadata,
            grid,
            itemsize: spec.dtype.size(),
            durability,
            dirs: Mutex::new(HashSet::new()),
            written: Mutex::new(Vec::new()),
            committed: false,
        })
    }

    /// The chunk grid being written.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Bytes of one full (padded) chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.grid.chunk_shape().iter().product::<u64>() as usize * self.itemsize
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
        if is_all_zero(data) {
            return Ok(0);
        }
        let key = self.array.chunk_key(idx);
        let encoded = self
            .array
            .codecs()
            .encode(
                ArrayBytes::from(data),
                &shape_nz(self.grid.chunk_shape()),
                self.array.data_type(),
                self.array.fill_value(),
                &codec_options(),
            )
            .map_err(|e| Error::Encode {
                store: self.final_path.clone(),
                key: key.as_str().to_string(),
                reason: e.to_string(),
            })?;
        let path = self.tmp_path.join(key.as_str());
        self.ensure_parent(&path)?;
        fs::write(&path, &encoded).at(&path)?;
        self.written
            .lock()
            .expect("no writer panics while holding the list")
            .push(path);
        Ok(encoded.len() as u64)
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        {
            let dirs = self
                .dirs
                .lock()
                .expect("no writer panics while holding the set");
            if dirs.contains(parent) {
                return Ok(());
            }
        }
        fs::create_dir_all(parent).at(parent)?;
        let mut dirs = self
            .dirs
            .lock()
            .expect("no writer panics while holding the set");
        let mut p = parent.to_path_buf();
        while p.starts_with(&self.tmp_path) && dirs.insert(p.clone()) {
            if !p.pop() {
                break;
            }
        }
        Ok(())
    }

    /// Makes the chunks durable, writes `zarr.json`, and moves the array into place (replacing
    /// the old array at the path, if overwriting). Returns the opened array.
    ///
    /// # Errors
    /// [`Error::Io`] if syncing, writing or renaming fails; the old array (if any) is then
    /// still in place.
    pub fn commit(mut self) -> Result<Store> {
        if self.durability == Durability::Sync {
            let written = std::mem::take(
                &mut *self
                    .written
                    .lock()
                    .expect("no writer panics while holding the list"),
            );
            written
                .par_iter()
                .try_for_each(|p| File::open(p).and_then(|f| f.sync_all()).at(p))?;
            let dirs: Vec<PathBuf> = self
                .dirs
                .lock()
                .expect("no writer panics while holding the set")
                .iter()
                .cloned()
                .collect();
            dirs.par_iter().try_for_each(|d| sync_dir(d))?;
        }
        // Metadata last: until zarr.json exists the build directory is not an array.
        let meta_tmp = self.tmp_path.join("zarr.json.tmp");
        let meta_final = self.tmp_path.join("zarr.json");
        let text = serde_json::to_string_pretty(&self.metadata).expect("metadata is plain JSON");
        {
            let mut f = File::create(&meta_tmp).at(&meta_tmp)?;
            f.write_all(text.as_bytes()).at(&meta_tmp)?;
            if self.durability == Durability::Sync {
                f.sync_all().at(&meta_tmp)?;
            }
        }
        fs::rename(&meta_tmp, &meta_final).at(&meta_final)?;
        let lock_path = self.tmp_path.join(LOCK_NAME);
        fs::remove_file(&lock_path).at(&lock_path)?;
        if self.durability == Durability::Sync {
            sync_dir(&self.tmp_path)?;
        }
        // Swap into place: the old array (if any) stays whole until the rename.
        let old = sibling(&self.final_path, ".chunkwise-old")?;
        let replacing = self.final_path.exists();
        if replacing {
            if old.exists() {
                fs::remove_dir_all(&old).at(&old)?;
            }
            fs::rename(&self.final_path, &old).at(&self.final_path)?;
        }
        if let Err(e) = fs::rename(&self.tmp_path, &self.final_path) {
            if replacing {
                let _ = fs::rename(&old, &self.final_path);
            }
            return Err(Error::io(&self.final_path, e));
        }
        self.committed = true;
        self.lock = None;
        let parent = self
            .final_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty());
        if let (Durability::Sync, Some(parent)) = (self.durability, parent) {
            sync_dir(parent)?;
        }
        if replacing {
            fs::remove_dir_all(&old).at(&old)?;
        }
        Store::open(&self.final_path)
    }
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
