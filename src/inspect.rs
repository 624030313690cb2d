//! `info` and `verify`: what an array holds and whether every stored chunk decodes.
//! Invariant: both only read; a missing chunk is the fill value, not an error.

use std::fmt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{Value, json};

use crate::dtype::DType;
use crate::error::{Error, IoContext, Result, StoreError};
use crate::input::Input;
use crate::progress::{Tracker, Unit};
use crate::region::fmt_shape;
use crate::run::RunOptions;
use crate::run::with_threads;
use crate::store::Store;

/// A summary of an array (`chunkwise info`).
///
/// ```
/// let a = ndarray::ArrayD::<u16>::zeros(vec![4, 300]);
/// let info = chunkwise::info(&chunkwise::Input::from_array(a.view())?)?;
/// assert_eq!(info.zarr_format, None);
/// assert_eq!(info.source, "4x300 uint16 array in memory");
/// assert_eq!(info.chunk_shape, Some(vec![128, 128])); // the blocks it is read by
/// assert_eq!(info.grid_shape, vec![1, 3]);
/// assert_eq!(info.compression_ratio(), None); // nothing stored
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StoreInfo {
    /// The array directory (or the input's path).
    pub path: PathBuf,
    /// What the input is (`zarr v3 array …`, `.npy file …`, `concat(…)`).
    pub source: String,
    /// Zarr format (3 or 2); `None` for an input that is not a Zarr array.
    pub zarr_format: Option<u8>,
    /// Shape.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Chunk shape of a regular grid (the shard shape when sharded).
    pub chunk_shape: Option<Vec<u64>>,
    /// Chunks per axis.
    pub grid_shape: Vec<u64>,
    /// The `chunk_grid` of the metadata (v3; `null` for v2): a rectilinear grid's edges.
    pub chunk_grid: Value,
    /// Chunks in the grid.
    pub chunks_total: u64,
    /// Chunks stored (absent chunks are entirely fill value).
    pub chunks_present: u64,
    /// Bytes of all files in the array directory.
    pub stored_bytes: u64,
    /// Uncompressed bytes of the array.
    pub logical_bytes: u64,
    /// The codec chain (v3 `codecs`; v2 `filters` and `compressor`).
    pub codecs: Value,
    /// The fill value as the metadata states it.
    pub fill_value: Value,
    /// Axis names, if any.
    pub dimension_names: Option<Value>,
    /// The voxel size the input records (spec/FORMAT.md §2), if any.
    pub voxel_size: Option<crate::ome::VoxelSize>,
}

impl StoreInfo {
    /// `logical_bytes / stored_bytes` (`None` when nothing is stored).
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.stored_bytes > 0).then(|| self.logical_bytes as f64 / self.stored_bytes as f64)
    }

    /// The summary as JSON (`info --json`).
    pub fn to_json(&self) -> Value {
        json!({
            "path": self.path,
            "source": self.source,
            "zarr_format": self.zarr_format,
            "shape": self.shape,
            "dtype": self.dtype.zarr_name(),
            "chunk_shape": self.chunk_shape,
            "grid_shape": self.grid_shape,
            "chunk_grid": self.chunk_grid,
            "chunks_total": self.chunks_total,
            "chunks_present": self.chunks_present,
            "stored_bytes": self.stored_bytes,
            "logical_bytes": self.logical_bytes,
            "compression_ratio": self.compression_ratio(),
            "codecs": self.codecs,
            "fill_value": self.fill_value,
            "dimension_names": self.dimension_names,
            "voxel_size": self.voxel_size.as_ref().map(|v| &v.size),
            "units": self.voxel_size.as_ref().map(|v| &v.units),
        })
    }
}

fn codec_names(codecs: &Value) -> String {
    match codecs {
        Value::Array(list) => list
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap_or("?");
                let cfg = &c["configuration"];
                match name {
                    "zstd" => format!("zstd(level={})", cfg["level"]),
                    "blosc" => format!(
                        "blosc({} clevel={} {})",
                        cfg["cname"].as_str().unwrap_or("?"),
                        cfg["clevel"],
                        cfg["shuffle"].as_str().unwrap_or("?")
                    ),
                    "sharding_indexed" => format!(
                        "sharding(subchunks={} codecs=[{}])",
                        cfg["chunk_shape"],
                        codec_names(&cfg["codecs"])
                    ),
                    "bytes" => match cfg["endian"].as_str() {
                        Some(e) => format!("bytes({e})"),
                        None => "bytes".into(),
                    },
                    other => other.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

impl fmt::Display for StoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "path:        {}", self.path.display())?;
        match self.zarr_format {
            Some(v) => writeln!(f, "format:      zarr v{v}")?,
            None => writeln!(f, "format:      {} (read by blocks)", self.source)?,
        }
        writeln!(
            f,
            "shape:       {} ({})",
            fmt_shape(&self.shape),
            self.dtype
        )?;
        if let Some(names) = &self.dimension_names {
            writeln!(f, "axes:        {names}")?;
        }
        if let Some(v) = &self.voxel_size {
            writeln!(f, "voxel size:  {v}")?;
        }
        match &self.chunk_shape {
            Some(c) => writeln!(
                f,
                "chunks:      {} (grid {})",
                fmt_shape(c),
                fmt_shape(&self.grid_shape)
            )?,
            None => {
                // The edges per axis as the metadata writes them (run-length `[64, 2]`).
                let per_axis = match &self.chunk_grid["configuration"]["chunk_shapes"] {
                    Value::Array(axes) => axes
                        .iter()
                        .enumerate()
                        .map(|(k, e)| format!("axis {k}: {e}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => "irregular".into(),
                };
                writeln!(
                    f,
                    "chunks:      {} {per_axis} (grid {})",
                    self.chunk_grid["name"].as_str().unwrap_or("irregular"),
                    fmt_shape(&self.grid_shape)
                )?;
            }
        }
        match &self.codecs {
            Value::Null => writeln!(f, "codecs:      - (not a Zarr array: read as it is stored)")?,
            codecs => writeln!(f, "codecs:      {}", codec_names(codecs))?,
        }
        writeln!(f, "fill value:  {}", self.fill_value)?;
        writeln!(
            f,
            "present:     {} of {} chunks ({} absent = fill value)",
            self.chunks_present,
            self.chunks_total,
            self.chunks_total - self.chunks_present
        )?;
        writeln!(
            f,
            "stored:      {} bytes ({})",
            self.stored_bytes,
            human_bytes(self.stored_bytes)
        )?;
        writeln!(
            f,
            "logical:     {} bytes ({})",
            self.logical_bytes,
            human_bytes(self.logical_bytes)
        )?;
        match self.compression_ratio() {
            Some(r) => write!(f, "ratio:       {r:.3}x"),
            None => write!(f, "ratio:       - (nothing stored)"),
        }
    }
}

/// Formats a byte count as `1.50 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

pub(crate) fn dir_bytes(path: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path).at(path)? {
        let entry = entry.at(path)?;
        let ft = entry.file_type().at(entry.path())?;
        if ft.is_dir() {
            total += dir_bytes(&entry.path())?;
        } else if ft.is_file() {
            total += entry.metadata().at(entry.path())?.len();
        }
    }
    Ok(total)
}

/// Summarises `input`: for a store its chunks, codecs and storage; for any other input its
/// shape, type and the blocks it is read by.
///
/// ```no_run
/// let info = chunkwise::info(&chunkwise::Input::open("volume.zarr")?)?;
/// println!("{info}");
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::Io`] reading the directory.
pub fn info(input: &Input) -> Result<StoreInfo> {
    let Some(store) = input.store() else {
        let grid = input.block_grid();
        let stored = input
            .paths()
            .iter()
            .map(|p| {
                if p.is_dir() {
                    dir_bytes(p)
                } else {
                    Ok(std::fs::metadata(p).map_or(0, |m| m.len()))
                }
            })
            .sum::<Result<u64>>()?;
        return Ok(StoreInfo {
            path: input.path().to_path_buf(),
            source: input.describe(),
            zarr_format: None,
            shape: input.shape().to_vec(),
            dtype: input.dtype(),
            chunk_shape: Some(grid.chunk_shape().to_vec()),
            grid_shape: grid.grid_shape(),
            chunk_grid: Value::Null,
            chunks_total: grid.num_chunks(),
            chunks_present: grid.num_chunks(),
            stored_bytes: stored,
            logical_bytes: input.shape().iter().product::<u64>() * input.dtype().size() as u64,
            codecs: Value::Null,
            fill_value: json!(0),
            dimension_names: input.axis_names().map(|n| json!(n)),
            voxel_size: input.voxel_size(),
        });
    };
    let meta = store.metadata_json();
    let codecs = if store.zarr_format() == 3 {
        meta["codecs"].clone()
    } else {
        json!({"filters": meta["filters"], "compressor": meta["compressor"]})
    };
    let indices = store.chunk_indices();
    let present = indices
        .par_iter()
        .map(|idx| store.chunk_stored_size(idx).map(|s| u64::from(s.is_some())))
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    let logical = store.shape().iter().product::<u64>() * store.dtype().size() as u64;
    Ok(StoreInfo {
        path: store.path().to_path_buf(),
        source: input.describe(),
        zarr_format: Some(store.zarr_format()),
        shape: store.shape().to_vec(),
        dtype: store.dtype(),
        chunk_shape: store.chunk_shape(),
        grid_shape: store.grid_shape(),
        chunk_grid: meta.get("chunk_grid").cloned().unwrap_or(Value::Null),
        chunks_total: indices.len() as u64,
        chunks_present: present,
        stored_bytes: store.stored_bytes()?,
        logical_bytes: logical,
        codecs,
        fill_value: meta["fill_value"].clone(),
        dimension_names: meta
            .get("dimension_names")
            .filter(|v| !v.is_null())
            .cloned(),
        voxel_size: input.voxel_size(),
    })
}

/// A chunk that failed to decode.
///
/// ```no_run
/// let report = chunkwise::verify("volume.zarr", &chunkwise::RunOptions::default())?;
/// for chunkwise::BadChunk { key, reason } in &report.bad {
///     eprintln!("{key}: {reason}");
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChunk {
    /// Its store key (`c/0/1/2`).
    pub key: String,
    /// Why.
    pub reason: String,
}

/// The outcome of [`verify`].
///
/// ```no_run
/// let run = chunkwise::RunOptions::default().threads(Some(8));
/// let report = chunkwise::verify("volume.zarr", &run)?;
/// println!("{} of {} chunks stored and checked", report.chunks_checked, report.chunks_total);
/// if !report.ok() {
///     std::process::exit(1);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks in the grid.
    pub chunks_total: u64,
    /// Chunks stored and decoded.
    pub chunks_checked: u64,
    /// Chunks that failed, in key order.
    pub bad: Vec<BadChunk>,
}

impl VerifyReport {
    /// Whether every stored chunk decoded.
    pub fn ok(&self) -> bool {
        self.bad.is_empty()
    }
}

/// Decodes every stored chunk of the array at `path` (validating crc32c checksums where the
/// codecs have them) and lists the chunks that fail.
///
/// ```no_run
/// let report = chunkwise::verify("volume.zarr", &chunkwise::RunOptions::default())?;
/// for bad in &report.bad {
///     eprintln!("{}: {}", bad.key, bad.reason);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`Store::open`]; [`Error::Cancelled`]; bad chunks are reported in the
/// [`VerifyReport`], not as errors.
pub fn verify(path: impl AsRef<Path>, run: &RunOptions) -> Result<VerifyReport> {
    let store = Store::open(path)?;
    with_threads(run.threads, || {
        let indices = store.chunk_indices();
        let tracker = Tracker::new(
            "verify",
            Unit::Chunks,
            indices.len() as u64,
            run.progress.clone(),
        );
        let results: Vec<(u64, Option<BadChunk>)> = indices
            .par_iter()
            .map(|idx| {
                run.check()?;
                let r = match store.read_chunk(idx) {
                    Ok(None) => (0, None),
                    Ok(Some(_)) => (1, None),
                    Err(Error::Store(StoreError::CorruptChunk { key, reason, .. })) => {
                        (1, Some(BadChunk { key, reason }))
                    }
                    Err(e) => (
                        1,
                        Some(BadChunk {
                            key: store.chunk_key(idx),
                            reason: e.to_string(),
                        }),
                    ),
                };
                tracker.add(1);
                Ok(r)
            })
            .collect::<Result<_>>()?;
        Ok(VerifyReport {
            chunks_total: indices.len() as u64,
            chunks_checked: results.iter().map(|r| r.0).sum(),
            bad: results.into_iter().filter_map(|r| r.1).collect(),
        })
    })
}
