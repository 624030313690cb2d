//! `convert`: .npy / raw / TIFF stacks (or another Zarr array) into a chunked Zarr v3 array.
//!
//! Streaming: the input is read one block at a time (one chunk deep along the axis it is stored
//! slowest along, as wide as `memory` allows), the block's chunks are gathered, encoded and
//! written in parallel, and the block is released before the next. Invariant: peak memory is
//! one block plus one chunk buffer and one encoded chunk per thread, never the volume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::Arc;

use rayon::prelude::*;

use crate::dtype::DType;
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::exec::{ExecOptions, ExecStatus};
use crate::grid::Grid;
use crate::grid::{default_chunks, indices_in, storage_order};
use crate::input::Input;
use crate::kernel::{Kernel, OutBlock};
use crate::progress::{Tracker, Unit};
use crate::run::with_threads;
use crate::run::{DEFAULT_MEMORY, RunOptions, run_setters};
use crate::source::{Block, Source};
use crate::store::{Codec, StoreSpec};
use ndarray::ArrayViewD;

/// Settings for [`convert`]; build with [`ConvertOptions::default`] and the setters.
///
/// ```no_run
/// use chunkwise::{Codec, ConvertOptions, Input};
/// let opts = ConvertOptions::default()
///     .chunks(Some(vec![64, 256, 256]))
///     .codec(Codec::Zstd { level: 5 })
///     .checksum(true)
///     .axis_names(Some(vec!["z".into(), "y".into(), "x".into()]))
///     .overwrite(true)
///     .threads(Some(8));
/// chunkwise::convert(&Input::open("slices/")?, "volume.zarr".as_ref(), &opts)?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ConvertOptions {
    chunks: Option<Vec<u64>>,
    codec: Option<Codec>,
    level: Option<i32>,
    checksum: bool,
    subchunks: Option<Vec<u64>>,
    axis_names: Option<Vec<String>>,
    overwrite: bool,
    partition: Option<(u32, u32)>,
    run: RunOptions,
}

impl std::fmt::Debug for ConvertOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvertOptions")
            .field("run", &self.run)
            .field("chunks", &self.chunks)
            .field("codec", &self.codec)
            .field("checksum", &self.checksum)
            .field("subchunks", &self.subchunks)
            .field("axis_names", &self.axis_names)
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

impl ConvertOptions {
    /// Chunk shape (default: see [`default_chunks`]).
    pub fn chunks(mut self, chunks: Option<Vec<u64>>) -> Self {
        self.chunks = chunks;
        self
    }
    /// Compressor (default: [`Codec::default_for`] the data type).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = Some(codec);
        self
    }
    /// Compression level for the chosen (or default) codec.
    pub fn level(mut self, level: Option<i32>) -> Self {
        self.level = level;
        self
    }
    /// Adds a crc32c checksum to every chunk.
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }
    /// Stores chunks as shards of this subchunk shape.
    pub fn subchunks(mut self, subchunks: Option<Vec<u64>>) -> Self {
        self.subchunks = subchunks;
        self
    }
    /// Names the axes.
    pub fn axis_names(mut self, names: Option<Vec<String>>) -> Self {
        self.axis_names = names;
        self
    }
    /// Replaces an existing array at the output.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
    /// Writes only part `i` of `n` of the output's chunks (`--partition I/N`): N processes
    /// share one resumable job, and the last to finish publishes (spec/COMPUTE.md §7).
    pub fn partition(mut self, part: Option<(u32, u32)>) -> Self {
        self.partition = part;
        self
    }
}

run_setters!(ConvertOptions);

/// What a convert did.
///
/// ```no_run
/// use chunkwise::{ConvertOptions, Input};
/// let r = chunkwise::convert(&Input::open("stack.tif")?, "stack.zarr".as_ref(),
///                            &ConvertOptions::default())?;
/// println!("{:?} {} in chunks of {:?}: {} of {} chunks written, {:.1}x smaller",
///          r.shape, r.dtype, r.chunk_shape, r.chunks_written, r.chunks_total,
///          r.bytes_in as f64 / r.bytes_stored.max(1) as f64);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertReport {
    /// The output array.
    pub path: PathBuf,
    /// What was read.
    pub source: String,
    /// Array shape.
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Chunk shape.
    pub chunk_shape: Vec<u64>,
    /// Chunks in the grid.
    pub chunks_total: u64,
    /// Chunks written (the rest were entirely fill value).
    pub chunks_written: u64,
    /// Uncompressed bytes read.
    pub bytes_in: u64,
    /// Bytes of chunk files written.
    pub bytes_stored: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// A partitioned convert whose part is done while others still have chunks to write:
    /// `(chunks done by all parts, chunks in all)`; the array is not published yet.
    pub waiting: Option<(u64, u64)>,
}

/// Converts `input` into a new Zarr v3 array at `out`: any [`Input`] (one .npy file; several
/// .npy files or a directory of them; a raw file; TIFF stacks; a view; a Zarr array to
/// re-chunk or re-compress; an array in memory), streamed block by block.
///
/// ```no_run
/// use chunkwise::{ConvertOptions, Input};
/// let input = Input::open("slices/")?;
/// let report = chunkwise::convert(&input, "volume.zarr".as_ref(), &ConvertOptions::default())?;
/// println!("{} chunks written", report.chunks_written);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// Any [`crate::Error`] naming the file or option at fault; nothing appears at `out` unless
/// the conversion completes.
pub fn convert(input: &Input, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    if let Some(part) = opts.partition {
        return convert_partitioned(input, out, opts, part);
    }
    with_threads(opts.run.threads, || convert_in_pool(input, out, opts))
}

/// A convert in parts: the block executor's resumable, partitionable job with a kernel that
/// copies, so that N processes (a Slurm array) share one output.
fn convert_partitioned(
    input: &Input,
    out: &Path,
    opts: &ConvertOptions,
    part: (u32, u32),
) -> Result<ConvertReport> {
    if opts.subchunks.is_some() || opts.axis_names.is_some() {
        return Err(Error::option(
            "partition",
            "a partitioned convert writes plain chunks: sharding and axis names are not \
             supported with it yet (convert in one process, or leave them out)",
        ));
    }
    let start = Instant::now();
    let dtype = input.dtype();
    let chunks = opts
        .chunks
        .clone()
        .unwrap_or_else(|| default_chunks(input.shape()));
    let exec = ExecOptions::default()
        .chunks(Some(chunks))
        .codec(Codec::resolve(opts.codec, opts.level, dtype)?)
        .checksum(opts.checksum)
        .overwrite(opts.overwrite)
        .partition(Some(part))
        .run(opts.run.clone());
    let r = crate::exec::run(std::slice::from_ref(input), out, &Copy, &exec)?;
    let waiting = match r.status {
        ExecStatus::Waiting { done, total } => Some((done, total)),
        _ => None,
    };
    let chunk_bytes = r.chunk_shape.iter().product::<u64>() * dtype.size() as u64;
    let all_bytes = input.shape().iter().product::<u64>() * dtype.size() as u64;
    Ok(ConvertReport {
        path: r.path,
        source: input.describe(),
        shape: r.shape,
        dtype,
        chunk_shape: r.chunk_shape,
        chunks_total: r.chunks_total,
        chunks_written: r.chunks_computed,
        bytes_in: r.chunks_computed.saturating_mul(chunk_bytes).min(all_bytes),
        bytes_stored: r.bytes_stored,
        seconds: start.elapsed().as_secs_f64(),
        waiting,
    })
}

/// `out = in`: a convert as a block job.
struct Copy;

impl Kernel for Copy {
    fn shift_invariant(&self) -> bool {
        true
    }

    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 0); ndim])
    }

    fn output_dtype(&self, inputs: &[DType]) -> Result<DType> {
        Ok(inputs[0])
    }

    fn describe(&self) -> String {
        "convert".into()
    }

    fn apply(&self, inputs: &[crate::kernel::Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        crate::with_scalar!(out.dtype(), T => {
            let src = inputs[0].valid_view::<T>()?;
            out.view_mut::<T>()?.assign(&src);
        });
        Ok(())
    }
}

/// Writes an array in memory as a new Zarr v3 array at `out` ([`convert`] of
/// [`Input::from_array`]).
///
/// ```no_run
/// use chunkwise::ConvertOptions;
/// let a = ndarray::ArrayD::<u16>::zeros(vec![64, 256, 256]);
/// chunkwise::from_array(a.view(), "a.zarr".as_ref(), &ConvertOptions::default())?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`convert`].
pub fn from_array<T: Element>(
    array: ArrayViewD<'_, T>,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertReport> {
    convert(&Input::from_array(array)?, out, opts)
}

fn convert_in_pool(input: &Input, out: &Path, opts: &ConvertOptions) -> Result<ConvertReport> {
    let start = Instant::now();
    let view = input.view();
    let source = view.source();
    let shape = source.shape().to_vec();
    let dtype = source.dtype();
    let chunks = opts
        .chunks
        .clone()
        .unwrap_or_else(|| default_chunks(&shape));
    let spec = StoreSpec::new(shape.clone(), dtype, chunks)
        .codec(Codec::resolve(opts.codec, opts.level, dtype)?)
        .checksum(opts.checksum)
        .subchunks(opts.subchunks.clone())
        .axis_names(opts.axis_names.clone());
    let writer = spec.create(out, opts.overwrite, opts.run.durability)?;
    let grid = writer.grid().clone();
    let chunk_shape: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let chunk_bytes = writer.chunk_bytes();
    let itemsize = dtype.size();

    let total_bytes = shape.iter().product::<u64>() * itemsize as u64;
    let tracker = Tracker::new(
        "convert",
        Unit::Bytes,
        total_bytes,
        opts.run.progress.clone(),
    );
    let all: Vec<_> = grid.grid_shape().into_iter().map(|n| 0..n).collect();
    let axes = storage_order(shape.len(), source.slow_axis());
    // The feed opens a block while the last chunks of the one before are still being gathered,
    // so two blocks can be alive at once: each gets half the budget.
    let budget = opts.run.memory.unwrap_or(DEFAULT_MEMORY) / 2;
    // One parallel loop over every chunk, fed in storage order: blocks open as the feed reaches
    // them and close when their last chunk is done, so no thread waits at block boundaries.
    let feed = ChunkFeed {
        run: &opts.run,
        source: source.as_ref(),
        grid: &grid,
        blocks: grid.blocks(&all, &axes, itemsize, budget).into_iter(),
        current: None,
        failed: false,
    };
    let (written, stored) = feed
        .par_bridge()
        .map_init(
            || vec![0u8; chunk_bytes],
            |buf, item| -> Result<(u64, u64)> {
                let (block, idx) = item?;
                let region = grid.chunk_region(&idx);
                let extent = region.shape();
                if extent
                    .iter()
                    .zip(&chunk_shape)
                    .any(|(&e, &c)| e as usize != c)
                {
                    // Edge chunk: stored padded with the fill value.
                    buf.fill(0);
                }
                block.read_into(&region, buf, &chunk_shape);
                drop(block);
                let w = writer.write_chunk(&idx, buf)?;
                tracker.add(u64::try_from(region.len()).unwrap_or(0) * itemsize as u64);
                Ok((u64::from(w > 0), w))
            },
        )
        .try_reduce(|| (0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1)))?;
    let chunks_total = grid.num_chunks();
    let store = writer.commit()?;
    Ok(ConvertReport {
        path: store.path().to_path_buf(),
        source: input.describe(),
        shape,
        dtype,
        chunk_shape: grid.chunk_shape().to_vec(),
        chunks_total,
        chunks_written: written,
        bytes_in: total_bytes,
        bytes_stored: stored,
        seconds: start.elapsed().as_secs_f64(),
        waiting: None,
    })
}

type SharedBlock<'a> = Arc<Box<dyn Block + 'a>>;

/// Yields `(block, chunk index)` for every chunk, opening each block when the first of its
/// chunks is reached; the block is freed when the last task holding it finishes.
struct ChunkFeed<'a> {
    run: &'a RunOptions,
    source: &'a dyn Source,
    grid: &'a Grid,
    blocks: std::vec::IntoIter<Vec<std::ops::Range<u64>>>,
    current: Option<(SharedBlock<'a>, std::vec::IntoIter<Vec<u64>>)>,
    failed: bool,
}

impl<'a> Iterator for ChunkFeed<'a> {
    type Item = Result<(SharedBlock<'a>, Vec<u64>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.run.check() {
            self.failed = true;
            return Some(Err(e));
        }
        loop {
            if let Some((block, chunks)) = &mut self.current {
                if let Some(idx) = chunks.next() {
                    return Some(Ok((block.clone(), idx)));
                }
                self.current = None;
            }
            let b = self.blocks.next()?;
            match self.source.block(&self.grid.box_region(&b)) {
                Ok(block) => {
                    self.current = Some((Arc::new(block), indices_in(&b).into_iter()));
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
