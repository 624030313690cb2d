//! What an array is made of: its compressor, chunking and codecs ([`StoreSpec`]), the
//! `zarr.json` it is described by, and its codec pipeline on its own ([`ChunkCodec`]).
//! Invariant: a validated spec always yields metadata that zarrs accepts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use zarrs::array::{Array, ArrayBytes, ArrayMetadata, ArrayMetadataV3, ArrayToBytesCodecTraits};
use zarrs::storage::store::MemoryStore;

use super::{codec_options, shape_nz};
use crate::dtype::{DType, Number};
use crate::error::{Error, Result, Source, StoreError};
use crate::grid::Grid;
use crate::region::fmt_shape;
pub use crate::run::Durability;

/// The compressor in a chunk's codec chain (always after the `bytes` codec).
///
/// ```
/// use chunkwise::{Codec, ConvertOptions, DType};
/// assert_eq!(Codec::from_name("zstd", None)?, Codec::Zstd { level: 3 });
/// assert_eq!(Codec::default_for(DType::U16), Codec::BloscZstd { level: 1 });
/// assert_eq!(Codec::default_for(DType::F32), Codec::BloscLz4 { level: 5 });
/// assert!(Codec::from_name("blosc-lz4", Some(12)).is_err()); // blosc levels are 0..=9
/// let opts = ConvertOptions::default().codec(Codec::Zstd { level: 9 });
/// # let _ = opts;
/// # Ok::<(), chunkwise::Error>(())
/// ```
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
    /// pcodec (`numcodecs.pcodec`, numerical compression of 16-, 32- and 64-bit numbers),
    /// level 0..=12; it replaces `bytes` in the chain (spec/FORMAT.md §3).
    Pcodec {
        /// pcodec's compression level.
        level: u8,
    },
}

impl Default for Codec {
    /// blosc with zstd level 1 inside and byte shuffle: see spec/FORMAT.md ("The default
    /// codec") for the measurements behind the choice.
    fn default() -> Self {
        Codec::BloscZstd {
            level: DEFAULT_BLOSC_ZSTD_LEVEL,
        }
    }
}

const DEFAULT_BLOSC_ZSTD_LEVEL: u8 = 1;

/// Bytes blosc compresses as one unit. Its automatic choice (32 KiB at clevel 1 for 2-byte
/// data) measured 1.8x slower to encode, 1.5x slower to decode and 3% larger than 256 KiB on
/// the W1 volume (spec/FORMAT.md, "The default codec").
const BLOSC_BLOCKSIZE: u64 = 256 * 1024;

/// The largest chunk (uncompressed) chunkwise creates: every worker holds one in memory.
const MAX_CHUNK_BYTES: u128 = 2 << 30;

impl Codec {
    /// The codec named on the command line (`zstd`, `blosc-zstd`, `blosc-lz4`, `pcodec`), at
    /// `level` or its default level.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an unknown name or a level outside the codec's range.
    pub fn from_name(name: &str, level: Option<i32>) -> Result<Codec> {
        let blosc_level = |default: u8| -> Result<u8> {
            match level {
                None => Ok(default),
                Some(l) if (0..=9).contains(&l) => Ok(l as u8),
                Some(l) => Err(Error::option(
                    "level",
                    format!("blosc levels are 0..=9, got {l}"),
                )),
            }
        };
        match name {
            "zstd" => match level {
                None => Ok(Codec::Zstd { level: 3 }),
                Some(l) if (-7..=22).contains(&l) => Ok(Codec::Zstd { level: l }),
                Some(l) => Err(Error::option(
                    "level",
                    format!("zstd levels are -7..=22, got {l}"),
                )),
            },
            "blosc-zstd" => Ok(Codec::BloscZstd {
                level: blosc_level(DEFAULT_BLOSC_ZSTD_LEVEL)?,
            }),
            "blosc-lz4" => Ok(Codec::BloscLz4 {
                level: blosc_level(5)?,
            }),
            "pcodec" => match level {
                None => Ok(Codec::Pcodec { level: 8 }),
                Some(l) if (0..=12).contains(&l) => Ok(Codec::Pcodec { level: l as u8 }),
                Some(l) => Err(Error::option(
                    "level",
                    format!("pcodec levels are 0..=12, got {l}"),
                )),
            },
            other => Err(Error::option(
                "codec",
                format!("unknown codec {other:?}; expected zstd, blosc-zstd, blosc-lz4 or pcodec"),
            )),
        }
    }

    /// The default codec for arrays of `dtype` (spec/FORMAT.md §5): blosc-zstd level 1 for
    /// integer and bool data, blosc-lz4 level 5 for floating-point data.
    pub fn default_for(dtype: DType) -> Codec {
        if dtype.is_float() {
            Codec::BloscLz4 { level: 5 }
        } else {
            Codec::default()
        }
    }

    /// The same codec at another level.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`--level`) for a level outside the codec's range.
    pub fn with_level(self, level: i32) -> Result<Codec> {
        Codec::from_name(self.name(), Some(level))
    }

    /// The codec given by name and level, or the default for `dtype` (at `level`, if given).
    ///
    /// # Errors
    /// As [`Codec::with_level`].
    pub fn resolve(codec: Option<Codec>, level: Option<i32>, dtype: DType) -> Result<Codec> {
        let c = codec.unwrap_or_else(|| Codec::default_for(dtype));
        match level {
            Some(l) => c.with_level(l),
            None => Ok(c),
        }
    }

    /// The compression level (`--level`).
    pub fn level(&self) -> i32 {
        match *self {
            Codec::Zstd { level } => level,
            Codec::BloscZstd { level } | Codec::BloscLz4 { level } | Codec::Pcodec { level } => {
                i32::from(level)
            }
        }
    }

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Zstd { .. } => "zstd",
            Codec::BloscZstd { .. } => "blosc-zstd",
            Codec::BloscLz4 { .. } => "blosc-lz4",
            Codec::Pcodec { .. } => "pcodec",
        }
    }

    fn metadata(&self, itemsize: usize) -> Value {
        let blosc = |cname: &str, clevel: u8| {
            json!({"name": "blosc", "configuration": {
                "cname": cname, "clevel": clevel, "shuffle": "shuffle",
                "typesize": itemsize, "blocksize": BLOSC_BLOCKSIZE}})
        };
        match *self {
            Codec::Zstd { level } => {
                json!({"name": "zstd", "configuration": {"level": level, "checksum": false}})
            }
            Codec::BloscZstd { level } => blosc("zstd", level),
            Codec::BloscLz4 { level } => blosc("lz4", level),
            Codec::Pcodec { level } => {
                json!({"name": "numcodecs.pcodec", "configuration": {"level": level}})
            }
        }
    }
}

/// Everything needed to create an array: shape, type, chunking and codecs.
///
/// ```
/// use chunkwise::{Codec, DType, StoreSpec};
/// let spec = StoreSpec::new(vec![512, 1024, 1024], DType::U16, vec![128, 128, 128])
///     .codec(Codec::Zstd { level: 3 })
///     .checksum(true)
///     .subchunks(Some(vec![64, 64, 64]))
///     .axis_names(Some(vec!["z".into(), "y".into(), "x".into()]));
/// assert_eq!(spec.validate()?.grid_shape(), vec![4, 8, 8]);
/// assert_eq!(spec.metadata()["data_type"], "uint16"); // the zarr.json it writes
/// // chunkwise::Store::create("new.zarr", &spec)? makes the (empty) array.
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSpec {
    shape: Vec<u64>,
    dtype: DType,
    chunks: Vec<u64>,
    codec: Codec,
    checksum: bool,
    subchunks: Option<Vec<u64>>,
    axis_names: Option<Vec<String>>,
    fill_value: Option<Number>,
    attributes: Value,
}

impl StoreSpec {
    /// An array of `shape` and `dtype` in chunks of `chunks`, with the default codec.
    pub fn new(shape: Vec<u64>, dtype: DType, chunks: Vec<u64>) -> Self {
        StoreSpec {
            shape,
            dtype,
            chunks,
            codec: Codec::default_for(dtype),
            checksum: false,
            subchunks: None,
            axis_names: None,
            fill_value: None,
            attributes: json!({}),
        }
    }

    /// The value every absent chunk holds (default 0, `false` for `bool`). It must be a value
    /// of the array's type: an integer in its range for integer types, 0 or 1 for `bool`.
    pub fn fill_value(mut self, value: Number) -> Self {
        self.fill_value = Some(value);
        self
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

    /// The array's `attributes` (a JSON object; default empty).
    pub fn attributes(mut self, attributes: Value) -> Self {
        self.attributes = attributes;
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

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The chunk codec.
    pub fn codec_choice(&self) -> Codec {
        self.codec
    }

    /// Checks the spec for consistency.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] naming the option that is wrong.
    pub fn validate(&self) -> Result<Grid> {
        if !self.attributes.is_object() {
            return Err(Error::option(
                "attributes",
                format!("{} is not a JSON object", self.attributes),
            ));
        }
        if self.shape.is_empty() {
            return Err(Error::option(
                "shape",
                "0-dimensional arrays are not supported",
            ));
        }
        let grid = Grid::new(&self.shape, &self.chunks)?;
        if grid.num_chunks() > super::MAX_CHUNKS {
            return Err(Error::option(
                "chunks",
                format!(
                    "chunks of {} make a grid of {} chunks; at most {} (2^26) are supported: \
                     give larger chunks",
                    fmt_shape(&self.chunks),
                    fmt_shape(&grid.grid_shape()),
                    super::MAX_CHUNKS
                ),
            ));
        }
        let chunk_bytes = self.chunks.iter().map(|&c| u128::from(c)).product::<u128>()
            * self.dtype.size() as u128;
        if chunk_bytes > MAX_CHUNK_BYTES {
            return Err(Error::option(
                "chunks",
                format!(
                    "a chunk of {} is {chunk_bytes} bytes, more than the {} GiB limit",
                    fmt_shape(&self.chunks),
                    MAX_CHUNK_BYTES >> 30
                ),
            ));
        }
        if matches!(self.codec, Codec::Pcodec { .. }) && self.dtype.size() < 2 {
            return Err(Error::option(
                "codec",
                format!(
                    "pcodec compresses 16-, 32- and 64-bit numbers, not {}; use blosc-zstd",
                    self.dtype
                ),
            ));
        }
        if let Some(sub) = &self.subchunks {
            if sub.len() != self.chunks.len() {
                return Err(Error::option(
                    "shard",
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
                        "shard",
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
                "axis_names",
                format!(
                    "{} names given for {} dimensions",
                    names.len(),
                    self.shape.len()
                ),
            ));
        }
        self.fill_json()?;
        Ok(grid)
    }

    /// The fill value as `zarr.json` spells it, checked against the type.
    fn fill_json(&self) -> Result<Value> {
        let bad = |why: &str| {
            Error::option(
                "fill_value",
                format!(
                    "{}: {why}",
                    self.fill_value.map_or(String::new(), |v| v.to_string())
                ),
            )
        };
        Ok(match (self.dtype, self.fill_value) {
            (DType::Bool, None) => json!(false),
            (DType::F32 | DType::F64, None) => json!(0.0),
            (_, None) => json!(0),
            (DType::Bool, Some(Number::Int(i))) if i == 0 || i == 1 => json!(i == 1),
            (DType::Bool, Some(Number::Float(f))) if f == 0.0 || f == 1.0 => json!(f == 1.0),
            (DType::Bool, _) => return Err(bad("a bool array's fill value is 0 or 1")),
            (DType::F32 | DType::F64, Some(v)) => {
                let f = v.to_f64();
                if f.is_nan() {
                    json!("NaN")
                } else if f == f64::INFINITY {
                    json!("Infinity")
                } else if f == f64::NEG_INFINITY {
                    json!("-Infinity")
                } else if self.dtype == DType::F32 && (f as f32).is_infinite() {
                    return Err(bad("outside float32's range"));
                } else {
                    json!(f)
                }
            }
            (dt, Some(v)) => {
                let i = match v {
                    Number::Int(i) => i,
                    Number::Float(f) if f.fract() == 0.0 && f.abs() < 2f64.powi(64) => f as i128,
                    Number::Float(_) => return Err(bad(&format!("not an integer, as {dt} needs"))),
                };
                let bits = 8 * dt.size() as u32;
                let signed = matches!(dt, DType::I8 | DType::I16 | DType::I32 | DType::I64);
                let (lo, hi) = if signed {
                    (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
                } else {
                    (0, (1i128 << bits) - 1)
                };
                if i < lo || i > hi {
                    return Err(bad(&format!("outside {dt}'s range {lo}..={hi}")));
                }
                if signed {
                    json!(i as i64)
                } else {
                    json!(i as u64)
                }
            }
        })
    }

    /// The `zarr.json` document this spec describes (spec/FORMAT.md, "zarr.json").
    pub fn metadata(&self) -> Value {
        let itemsize = self.dtype.size();
        let bytes = if itemsize == 1 {
            json!({"name": "bytes"})
        } else {
            json!({"name": "bytes", "configuration": {"endian": "little"}})
        };
        let mut codecs = match self.codec {
            // An array-to-bytes codec of its own: no `bytes` before it.
            Codec::Pcodec { .. } => vec![self.codec.metadata(itemsize)],
            _ => vec![bytes, self.codec.metadata(itemsize)],
        };
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
        let fill = self.fill_json().unwrap_or(Value::Null);
        let mut meta = json!({
            "zarr_format": 3,
            "node_type": "array",
            "shape": self.shape,
            "data_type": self.dtype.zarr_name(),
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": self.chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill,
            "codecs": codecs,
            "attributes": self.attributes
        });
        if let Some(names) = &self.axis_names {
            meta["dimension_names"] = json!(names);
        }
        meta
    }

    /// The codec pipeline this spec describes, for encoding chunks in memory.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an inconsistent spec.
    pub fn chunk_codec(&self) -> Result<ChunkCodec> {
        self.validate()?;
        ChunkCodec::new(&self.metadata(), &self.chunks, self.dtype.size())
    }
}

/// The codec pipeline of an array spec on its own: encodes and decodes whole chunks in memory,
/// with no I/O (used by the writer, and by benchmarks to measure the codec floor).
///
/// ```
/// use chunkwise::{DType, StoreSpec};
/// let codec = StoreSpec::new(vec![100, 100], DType::U16, vec![64, 64]).chunk_codec()?;
/// assert_eq!((codec.chunk_bytes(), codec.key(&[1, 0])), (64 * 64 * 2, "c/1/0".to_string()));
/// let chunk = vec![7u8; codec.chunk_bytes()];
/// let encoded = codec.encode(&chunk)?;
/// assert_eq!(codec.decode(&encoded)?, chunk);
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub struct ChunkCodec {
    array: Array<MemoryStore>,
    shape: Vec<std::num::NonZeroU64>,
    chunk_bytes: usize,
}

impl ChunkCodec {
    fn new(metadata: &Value, chunk: &[u64], itemsize: usize) -> Result<Self> {
        let bad = |reason: String, source: Option<Source>| {
            Error::Store(StoreError::BadMetadata {
                path: PathBuf::from("zarr.json"),
                reason,
                source,
            })
        };
        let v3: ArrayMetadataV3 = serde_json::from_value(metadata.clone())
            .map_err(|e| bad(e.to_string(), Some(Box::new(e))))?;
        let array =
            Array::new_with_metadata(Arc::new(MemoryStore::new()), "/", ArrayMetadata::V3(v3))
                .map_err(|e| bad(e.to_string(), Some(Box::new(e))))?;
        Ok(ChunkCodec {
            array,
            shape: shape_nz(chunk),
            chunk_bytes: chunk.iter().product::<u64>() as usize * itemsize,
        })
    }

    /// Whether `data` (a whole chunk) is all the fill value: such a chunk is not stored.
    pub(crate) fn is_fill(&self, data: &[u8]) -> bool {
        crate::copy::is_fill(data, self.array.fill_value().as_ne_bytes())
    }

    /// Bytes of one full (padded) chunk.
    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// The store key of chunk `idx` (`c/0/1/2`).
    pub fn key(&self, idx: &[u64]) -> String {
        self.array.chunk_key(idx).as_str().to_string()
    }

    /// Encodes one full chunk (C order, native-endian elements).
    ///
    /// # Errors
    /// [`crate::StoreError::Encode`] if the buffer has the wrong size or the codec fails.
    pub fn encode(&self, data: &[u8]) -> Result<Vec<u8>> {
        let fail = |reason: String, source: Option<Source>| {
            Error::Store(StoreError::Encode {
                store: PathBuf::new(),
                key: String::new(),
                reason,
                source,
            })
        };
        if data.len() != self.chunk_bytes {
            return Err(fail(
                format!(
                    "{} bytes given, a chunk holds {}",
                    data.len(),
                    self.chunk_bytes
                ),
                None,
            ));
        }
        self.array
            .codecs()
            .encode(
                ArrayBytes::from(data),
                &self.shape,
                self.array.data_type(),
                self.array.fill_value(),
                &codec_options(),
            )
            .map(std::borrow::Cow::into_owned)
            .map_err(|e| fail(e.to_string(), Some(Box::new(e))))
    }

    /// Decodes one encoded chunk.
    ///
    /// # Errors
    /// [`crate::StoreError::CorruptChunk`] if the bytes do not decode.
    pub fn decode(&self, encoded: &[u8]) -> Result<Vec<u8>> {
        let fail = |reason: String, source: Option<Source>| {
            Error::Store(StoreError::CorruptChunk {
                store: PathBuf::new(),
                key: String::new(),
                reason,
                source,
            })
        };
        let bytes = self
            .array
            .codecs()
            .decode(
                std::borrow::Cow::Borrowed(encoded),
                &self.shape,
                self.array.data_type(),
                self.array.fill_value(),
                &codec_options(),
            )
            .map_err(|e| fail(e.to_string(), Some(Box::new(e))))?;
        bytes
            .into_fixed()
            .map(std::borrow::Cow::into_owned)
            .map_err(|e| fail(e.to_string(), Some(Box::new(e))))
    }
}

/// The codec pipeline of an array's metadata with any chunk grid (regular or rectilinear):
/// encodes chunk `idx` at that chunk's own shape. Used to re-encode the edge layer of a grown
/// array (spec/APPEND.md).
pub(crate) struct GridCodec {
    array: Array<MemoryStore>,
    path: PathBuf,
}

impl GridCodec {
    /// The pipeline of `metadata` (a v3 `zarr.json`), for messages about `path`.
    pub(crate) fn new(metadata: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: String, source: Option<Source>| {
            Error::Store(StoreError::BadMetadata {
                path: path.to_path_buf(),
                reason,
                source,
            })
        };
        let v3: ArrayMetadataV3 = serde_json::from_value(metadata.clone())
            .map_err(|e| bad(e.to_string(), Some(Box::new(e))))?;
        let array =
            Array::new_with_metadata(Arc::new(MemoryStore::new()), "/", ArrayMetadata::V3(v3))
                .map_err(|e| bad(e.to_string(), Some(Box::new(e))))?;
        Ok(GridCodec {
            array,
            path: path.to_path_buf(),
        })
    }

    /// The shape of chunk `idx` (edge chunks at their full, padded shape).
    pub(crate) fn chunk_shape(&self, idx: &[u64]) -> Result<Vec<u64>> {
        let key = || self.array.chunk_key(idx).as_str().to_string();
        self.array
            .chunk_shape(idx)
            .map(|s| s.iter().map(|c| c.get()).collect())
            .map_err(|e| {
                Error::Store(StoreError::Encode {
                    store: self.path.clone(),
                    key: key(),
                    reason: e.to_string(),
                    source: Some(Box::new(e)),
                })
            })
    }

    /// Encodes chunk `idx` from `data` (its full shape, C order, native-endian elements).
    pub(crate) fn encode(&self, idx: &[u64], data: &[u8]) -> Result<Vec<u8>> {
        let fail = |reason: String, source: Option<Source>| {
            Error::Store(StoreError::Encode {
                store: self.path.clone(),
                key: self.array.chunk_key(idx).as_str().to_string(),
                reason,
                source,
            })
        };
        let shape = self
            .array
            .chunk_shape(idx)
            .map_err(|e| fail(e.to_string(), Some(Box::new(e))))?;
        self.array
            .codecs()
            .encode(
                ArrayBytes::from(data),
                &shape,
                self.array.data_type(),
                self.array.fill_value(),
                &codec_options(),
            )
            .map(std::borrow::Cow::into_owned)
            .map_err(|e| fail(e.to_string(), Some(Box::new(e))))
    }

    /// The store key of chunk `idx`.
    pub(crate) fn key(&self, idx: &[u64]) -> String {
        self.array.chunk_key(idx).as_str().to_string()
    }

    /// The fill value's bytes (native order).
    pub(crate) fn fill_bytes(&self) -> Vec<u8> {
        self.array.fill_value().as_ne_bytes().to_vec()
    }
}
