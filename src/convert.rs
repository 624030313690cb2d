//! `convert`: .npy / raw / TIFF stacks (or another Zarr array) into a chunked Zarr v3 array.
//!
//! Streaming: the input is read one block at a time (one chunk deep along the axis it is stored
//! slowest along, as wide as `memory` allows), the block's chunks are gathered, encoded and
//! written in parallel, and the block is released before the next. Invariant: peak memory is
//! one block plus one chunk buffer and one encoded chunk per thread, never the volume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use std::sync::{Arc, Condvar, Mutex, PoisonError};

use rayon::prelude::*;

use crate::dtype::DType;
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::grid::{ChunkSet, Grid};
use crate::grid::{default_chunks, indices_in, storage_order};
use crate::input::Input;
use crate::ome::VoxelSize;
use crate::progress::{Tracker, Unit};
use crate::rechunk::{Decodes, Plan};
use crate::region::fmt_shape;
use crate::run::with_threads;
use crate::run::{DEFAULT_MEMORY, RunOptions, run_setters};
use crate::source::{Gather, Source};
use crate::store::{
    Codec, Durability, Finish, JobOptions, JobState, JobWriter, Store, StoreSpec, StoreWriter,
};
use crate::view::StoreSource;
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
    voxel_size: Option<Vec<f64>>,
    units: Option<Vec<String>>,
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
            .field("voxel_size", &self.voxel_size)
            .field("units", &self.units)
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
    /// The voxel size per axis, recorded in the array's attributes (default: the input's,
    /// an OME-TIFF's physical sizes; spec/FORMAT.md §2).
    pub fn voxel_size(mut self, size: Option<Vec<f64>>) -> Self {
        self.voxel_size = size;
        self
    }
    /// UDUNITS-2 units per axis (an empty one: none), recorded beside the voxel size
    /// (default: the input's).
    pub fn units(mut self, units: Option<Vec<String>>) -> Self {
        self.units = units;
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
    /// For a chunked input (a store): how often its chunks were decoded (spec/FORMAT.md §8.1).
    pub decodes: Option<Decodes>,
    /// The chunking a rechunk went through when the budget could not hold a source-target
    /// overlap (two passes, each decoding its input once).
    pub intermediate: Option<Vec<u64>>,
    /// Chunks copied as they were stored, neither decoded nor encoded (a store input whose
    /// chunks are the output's bytes, spec/FORMAT.md §8.1).
    pub chunks_copied: u64,
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

/// A convert in parts (spec/SCALE.md §1): each part streams its chunk layers as one convert
/// streams the whole (each input block read once, all cores encoding) into the job's build
/// directory, logging the chunks done, and the last part publishes the array one convert
/// writes.
fn convert_partitioned(
    input: &Input,
    out: &Path,
    opts: &ConvertOptions,
    part: (u32, u32),
) -> Result<ConvertReport> {
    if opts.subchunks.is_some() {
        return Err(Error::option(
            "partition",
            "a partitioned convert writes plain chunks: sharding is not supported with it yet \
             (convert in one process, or leave --shard out)",
        ));
    }
    crate::store::check_part(part)?;
    with_threads(opts.run.threads, || {
        let start = Instant::now();
        let view = input.view();
        let source = view.source();
        // Axis names given, else the input's own (an OME-TIFF's), as one convert writes them.
        let names = opts.axis_names.clone().or_else(|| source.axis_names());
        let spec = output_spec(source.as_ref(), opts)?
            .attributes(attributes(input, opts)?)
            .axis_names(names.clone());
        let (shape, dtype) = (spec.shape().to_vec(), spec.dtype());
        let (chunks, codec) = (spec.chunk_shape().to_vec(), spec.codec_choice());
        let grid = Grid::new(&shape, &chunks)?;
        let mut settings = format!(
            "chunkwise convert v2\noutput: {dtype} {chunks:?} {codec:?} checksum={}\n",
            opts.checksum
        );
        if let Some(n) = &names {
            settings.push_str(&format!("axes: {n:?}\n"));
        }
        settings.push_str(&format!("input: {}\n", input.identity()));
        let fingerprint = crate::fingerprint::fnv1a(&settings);
        let stored = input
            .store()
            .filter(|s| s.chunk_shape().as_deref() == Some(&chunks[..]))
            .and_then(|_| input.stored_chunks())
            .map(|s| s.layer_counts());
        let split = crate::grid::split_layers(grid.grid_shape()[0], stored.as_deref(), part.1);
        let state = JobWriter::open(
            &spec,
            out,
            &JobOptions {
                fingerprint: &fingerprint,
                settings: &settings,
                partition: part,
                split: &split,
                overwrite: opts.overwrite,
                restart: false,
                durability: opts.run.durability,
            },
        )?;
        let mut report = ConvertReport {
            path: out.to_path_buf(),
            source: input.describe(),
            shape: shape.clone(),
            dtype,
            chunk_shape: chunks.clone(),
            chunks_total: grid.num_chunks(),
            chunks_written: 0,
            bytes_in: 0,
            bytes_stored: 0,
            seconds: 0.0,
            waiting: None,
            decodes: None,
            intermediate: None,
            chunks_copied: 0,
        };
        let (job, done) = match state {
            JobState::AlreadyDone => {
                report.seconds = start.elapsed().as_secs_f64();
                return Ok(report);
            }
            JobState::Open(job, done) => (job, done),
        };
        let (l0, l1) = job.part_layers(part.0);
        let mut mine: Vec<_> = grid.grid_shape().into_iter().map(|n| 0..n).collect();
        mine[0] = l0..l1;
        // A store encoded as the output is: its chunk files copied, not decoded.
        let moved = if let Some(store) = input.store().filter(|s| job.same_chunk_bytes(s)) {
            let copied = copy_part(store, &job, &grid, &mine, &done, &opts.run);
            if let Ok((n, _, _)) = copied {
                report.chunks_copied = n;
            }
            copied
        } else {
            // Each part streams its layers in one pass (two passes through an intermediate
            // array would need every part's first pass done before any second).
            let step = match plan(source.as_ref(), &grid, &opts.run)? {
                Some(Plan::Direct(p)) => {
                    report.decodes = Some(p.decodes);
                    p.step
                }
                // Only two passes fit the budget: the default blocks (bounded by half of it).
                Some(Plan::Staged { .. }) => match direct_pass(source.as_ref(), &grid, &opts.run) {
                    Some(p) => {
                        report.decodes = Some(p.decodes);
                        p.step
                    }
                    None => default_step(source.as_ref(), &grid, &mine, &opts.run),
                },
                None => default_step(source.as_ref(), &grid, &mine, &opts.run),
            };
            stream_chunks(
                source.as_ref(),
                &grid,
                &mine,
                &step,
                "convert",
                Some(&done),
                &opts.run,
                job.chunk_bytes(),
                |idx, data| {
                    let n = job.write_chunk(idx, data)?;
                    if job.checkpoint_due(64) {
                        job.checkpoint()?;
                    }
                    Ok(n)
                },
            )
        };
        let (written, stored, bytes_in) = match moved {
            Ok(v) => v,
            Err(e) => {
                // What is written is logged, so that a rerun resumes.
                let _ = job.checkpoint();
                return Err(e);
            }
        };
        report.chunks_written = written;
        report.bytes_stored = stored;
        report.bytes_in = bytes_in;
        if let Finish::Waiting { done, total } = job.finish()? {
            report.waiting = Some((done, total));
        }
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    })
}

/// The new array's spec: the source's shape and type, the options' chunks (default:
/// chunkwise's), codec and checksum.
fn output_spec(source: &dyn Source, opts: &ConvertOptions) -> Result<StoreSpec> {
    let shape = source.shape().to_vec();
    let dtype = source.dtype();
    let chunks = opts
        .chunks
        .clone()
        .unwrap_or_else(|| default_chunks(&shape));
    Ok(StoreSpec::new(shape, dtype, chunks)
        .codec(Codec::resolve(opts.codec, opts.level, dtype)?)
        .checksum(opts.checksum))
}

/// The new array's attributes: the voxel size the options give, else the input's (each of
/// sizes and units taken from the options where given).
fn attributes(input: &Input, opts: &ConvertOptions) -> Result<serde_json::Value> {
    let mut attrs = serde_json::json!({});
    let known = input.voxel_size();
    if known.is_none() && opts.voxel_size.is_none() && opts.units.is_none() {
        return Ok(attrs);
    }
    let size = opts
        .voxel_size
        .clone()
        .or_else(|| known.as_ref().map(|v| v.size.clone()));
    let units = opts.units.clone().or_else(|| {
        known.as_ref().map(|v| {
            v.units
                .iter()
                .map(|u| u.clone().unwrap_or_default())
                .collect()
        })
    });
    VoxelSize::new(input.ndim(), size, units)?.write_into(&mut attrs);
    Ok(attrs)
}

/// Streams the chunks of `chunks` (a box of chunk indices of `grid`) from `source` in storage
/// order, each block read once, into `write(idx, data)` (the full, padded chunk), skipping
/// the chunks in `done`. Returns (chunks written, bytes stored, bytes read).
#[allow(clippy::too_many_arguments)]
fn stream_chunks(
    source: &dyn Source,
    grid: &Grid,
    chunks: &[std::ops::Range<u64>],
    step: &[u64],
    stage: &'static str,
    done: Option<&ChunkSet>,
    run: &RunOptions,
    chunk_bytes: usize,
    write: impl Fn(&[u64], &[u8]) -> Result<u64> + Sync,
) -> Result<(u64, u64, u64)> {
    let chunk_shape: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let itemsize = source.dtype().size();
    let box_elems: u64 = grid.box_region(chunks).len().try_into().unwrap_or(u64::MAX);
    let tracker = Tracker::new(
        stage,
        Unit::Bytes,
        box_elems.saturating_mul(itemsize as u64),
        run.progress.clone(),
    );
    let axes = storage_order(grid.chunk_shape().len(), source.slow_axis());
    // One parallel loop over every chunk, fed in storage order: blocks open as the feed reaches
    // them and close when their last chunk is done, so no thread waits at block boundaries.
    let feed = ChunkFeed {
        run,
        source,
        grid,
        done,
        blocks: grid.blocks_by(chunks, &axes, step).into_iter(),
        current: None,
        alive: Arc::new(Alive::default()),
        failed: false,
    };
    feed.par_bridge()
        .map_init(
            || vec![0u8; chunk_bytes],
            |buf, item| -> Result<(u64, u64, u64)> {
                let (block, idx) = item?;
                let region = grid.chunk_region(&idx);
                let n = u64::try_from(region.len()).unwrap_or(0) * itemsize as u64;
                if done.is_some_and(|d| d.contains(&idx)) {
                    tracker.add(n);
                    return Ok((0, 0, 0));
                }
                let extent = region.shape();
                if extent
                    .iter()
                    .zip(&chunk_shape)
                    .any(|(&e, &c)| e as usize != c)
                {
                    // Edge chunk: stored padded with the fill value.
                    buf.fill(0);
                }
                block.block.gather_into(&region, buf, &chunk_shape)?;
                drop(block);
                let w = write(&idx, buf)?;
                tracker.add(n);
                Ok((u64::from(w > 0), w, n))
            },
        )
        .try_reduce(|| (0, 0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1, a.2 + b.2)))
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
    // Axis names given, else the input's own (an OME-TIFF's t, c, z, y, x).
    let spec = output_spec(source.as_ref(), opts)?
        .attributes(attributes(input, opts)?)
        .subchunks(opts.subchunks.clone())
        .axis_names(opts.axis_names.clone().or_else(|| source.axis_names()));
    let (shape, dtype) = (spec.shape().to_vec(), spec.dtype());
    let writer = spec.create(out, opts.overwrite, opts.run.durability)?;
    let grid = writer.grid().clone();
    let all: Vec<_> = grid.grid_shape().into_iter().map(|n| 0..n).collect();
    let total_bytes = shape.iter().product::<u64>() * dtype.size() as u64;
    let write = |idx: &[u64], data: &[u8]| writer.write_chunk(idx, data);
    let mut decodes = None;
    let mut intermediate = None;
    let local = !crate::store::is_url(out);
    let same_bytes = input.store().filter(|s| writer.same_chunk_bytes(s));
    let mut copied = 0;
    let (written, stored, _) = if let Some(store) = same_bytes {
        let c = copy_encoded(store, &writer, &opts.run)?;
        copied = c.0;
        c
    } else {
        match plan(source.as_ref(), &grid, &opts.run)? {
            None => {
                let step = default_step(source.as_ref(), &grid, &all, &opts.run);
                let (n, chunk) = (writer.chunk_bytes(), "convert");
                stream_chunks(
                    source.as_ref(),
                    &grid,
                    &all,
                    &step,
                    chunk,
                    None,
                    &opts.run,
                    n,
                    write,
                )?
            }
            Some(Plan::Staged {
                intermediate: chunks,
                first,
                second,
            }) if local => {
                let scratch = Scratch::beside(out);
                let iwriter = StoreSpec::new(shape.clone(), dtype, chunks.clone())
                    .codec(Codec::BloscLz4 { level: 1 })
                    .create(&scratch.0, true, Durability::NoSync)?;
                let igrid = iwriter.grid().clone();
                let iall: Vec<_> = igrid.grid_shape().into_iter().map(|n| 0..n).collect();
                stream_chunks(
                    source.as_ref(),
                    &igrid,
                    &iall,
                    &first.step,
                    "rechunk (1 of 2)",
                    None,
                    &opts.run,
                    iwriter.chunk_bytes(),
                    |idx, data| iwriter.write_chunk(idx, data),
                )?;
                let mid = StoreSource::new(Arc::new(iwriter.commit()?));
                let streamed = stream_chunks(
                    &mid,
                    &grid,
                    &all,
                    &second.step,
                    "rechunk (2 of 2)",
                    None,
                    &opts.run,
                    writer.chunk_bytes(),
                    write,
                )?;
                drop((mid, scratch));
                decodes = Some(first.decodes);
                intermediate = Some(chunks);
                streamed
            }
            Some(p) => {
                // On object storage there is no directory beside the output for the intermediate
                // array: one pass (more decodes), or the default blocks when none fits.
                let pass = match p {
                    Plan::Direct(p) => Some(p),
                    Plan::Staged { .. } => direct_pass(source.as_ref(), &grid, &opts.run),
                };
                decodes = pass.as_ref().map(|p| p.decodes);
                let step = match pass {
                    Some(p) => p.step,
                    None => default_step(source.as_ref(), &grid, &all, &opts.run),
                };
                let n = writer.chunk_bytes();
                stream_chunks(
                    source.as_ref(),
                    &grid,
                    &all,
                    &step,
                    "convert",
                    None,
                    &opts.run,
                    n,
                    write,
                )?
            }
        }
    };
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
        decodes,
        intermediate,
        chunks_copied: copied,
    })
}

/// [`copy_encoded`] for a part of a job: the chunks of `mine` (a box of chunk indices) not in
/// `done`, copied as stored and logged; absent ones recorded as absent. Returns (chunks
/// copied, bytes stored, bytes they hold decoded).
fn copy_part(
    store: &Store,
    job: &JobWriter,
    grid: &Grid,
    mine: &[std::ops::Range<u64>],
    done: &ChunkSet,
    run: &RunOptions,
) -> Result<(u64, u64, u64)> {
    let itemsize = store.dtype().size() as u64;
    let todo: Vec<Vec<u64>> = indices_in(mine)
        .into_iter()
        .filter(|i| !done.contains(i))
        .collect();
    let total: u64 = todo
        .iter()
        .map(|i| u64::try_from(grid.chunk_region(i).len()).unwrap_or(0) * itemsize)
        .sum();
    let tracker = Tracker::new("convert", Unit::Bytes, total, run.progress.clone());
    todo.par_iter()
        .map(|idx| -> Result<(u64, u64, u64)> {
            run.check()?;
            let n = u64::try_from(grid.chunk_region(idx).len()).unwrap_or(0) * itemsize;
            let got = match store.read_encoded(idx)? {
                Some(bytes) => (1, job.write_encoded(idx, bytes)?, n),
                None => {
                    job.record_absent(idx);
                    (0, 0, 0)
                }
            };
            if job.checkpoint_due(64) {
                job.checkpoint()?;
            }
            tracker.add(n);
            Ok(got)
        })
        .try_reduce(|| (0, 0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1, a.2 + b.2)))
}

/// Copies every stored chunk of `store` into `writer` as it is stored (spec/FORMAT.md §8.1):
/// the two arrays' chunks are the same bytes, so nothing is decoded or encoded. Returns
/// (chunks written, bytes stored, bytes they hold decoded).
fn copy_encoded(store: &Store, writer: &StoreWriter, run: &RunOptions) -> Result<(u64, u64, u64)> {
    let grid = writer.grid();
    let gshape = grid.grid_shape();
    let itemsize = store.dtype().size() as u64;
    let total = grid.shape().iter().product::<u64>() * itemsize;
    let tracker = Tracker::new("convert", Unit::Bytes, total, run.progress.clone());
    (0..grid.num_chunks())
        .into_par_iter()
        .map(|flat| -> Result<(u64, u64, u64)> {
            run.check()?;
            let mut idx = vec![0; gshape.len()];
            let mut rest = flat;
            for (i, &n) in idx.iter_mut().zip(&gshape).rev() {
                (*i, rest) = (rest % n, rest / n);
            }
            let n = u64::try_from(grid.chunk_region(&idx).len()).unwrap_or(0) * itemsize;
            let got = match store.read_encoded(&idx)? {
                Some(bytes) => (1, writer.write_encoded(&idx, bytes)?, n),
                None => (0, 0, 0),
            };
            tracker.add(n);
            Ok(got)
        })
        .try_reduce(|| (0, 0, 0), |a, b| Ok((a.0 + b.0, a.1 + b.1, a.2 + b.2)))
}

/// How a chunked source (one that [`Source::chunk_bounds`]) is rechunked into `grid` within
/// the run's memory (spec/FORMAT.md §8.1); `None` for a source read in place (memory-mapped
/// files, TIFF pages), whose blocks follow [`default_step`].
///
/// # Errors
/// [`Error::InvalidOption`] for `--memory` when not even one-chunk blocks fit, naming the
/// bytes needed.
fn plan(source: &dyn Source, grid: &Grid, run: &RunOptions) -> Result<Option<Plan>> {
    let Some(bounds) = source.chunk_bounds() else {
        return Ok(None);
    };
    let memory = run.memory.unwrap_or(DEFAULT_MEMORY);
    let threads = rayon::current_num_threads();
    let itemsize = source.dtype().size();
    match crate::rechunk::plan(&bounds, grid, itemsize, memory, threads) {
        Some(Plan::Direct(mut p)) => {
            crate::rechunk::widen(&mut p, &bounds, grid, itemsize, memory, threads);
            Ok(Some(Plan::Direct(p)))
        }
        Some(Plan::Staged {
            intermediate,
            mut first,
            mut second,
        }) => {
            let igrid = Grid::new(grid.shape(), &intermediate)?;
            crate::rechunk::widen(&mut first, &bounds, &igrid, itemsize, memory, threads);
            let ibounds = crate::rechunk::regular_bounds(grid.shape(), &intermediate);
            crate::rechunk::widen(&mut second, &ibounds, grid, itemsize, memory, threads);
            Ok(Some(Plan::Staged {
                intermediate,
                first,
                second,
            }))
        }
        // No budget was asked for: the default's blocks, as before plans (many threads of big
        // chunks may not fit the default budget's accounting).
        None if run.memory.is_none() => Ok(None),
        None => Err(memory_error(source, grid, run)),
    }
}

/// The best one-pass plan for a chunked source, if one fits.
fn direct_pass(source: &dyn Source, grid: &Grid, run: &RunOptions) -> Option<crate::rechunk::Pass> {
    let bounds = source.chunk_bounds().unwrap_or_default();
    let (itemsize, memory) = (source.dtype().size(), run.memory.unwrap_or(DEFAULT_MEMORY));
    let threads = rayon::current_num_threads();
    let mut p = crate::rechunk::direct(&bounds, grid, itemsize, memory, threads)?;
    crate::rechunk::widen(&mut p, &bounds, grid, itemsize, memory, threads);
    Some(p)
}

fn memory_error(source: &dyn Source, grid: &Grid, run: &RunOptions) -> Error {
    let threads = rayon::current_num_threads();
    let bounds = source.chunk_bounds().unwrap_or_default();
    let need = crate::rechunk::least(&bounds, grid, source.dtype().size(), threads);
    Error::option(
        "memory",
        format!(
            "{} bytes cannot hold a rechunk into chunks of {} on {threads} threads: at least \
             {need} ({}) needed",
            run.memory.unwrap_or(DEFAULT_MEMORY),
            fmt_shape(grid.chunk_shape()),
            crate::inspect::human_bytes(need),
        ),
    )
}

/// Blocks for a source read in place: one chunk deep along its slow axis, as wide as half
/// the budget holds (FORMAT §8).
fn default_step(
    source: &dyn Source,
    grid: &Grid,
    chunks: &[std::ops::Range<u64>],
    run: &RunOptions,
) -> Vec<u64> {
    let axes = storage_order(grid.chunk_shape().len(), source.slow_axis());
    let budget = run.memory.unwrap_or(DEFAULT_MEMORY) / 2;
    grid.block_step(chunks, &axes, source.dtype().size(), budget)
}

/// Where the intermediate array of a two-pass rechunk lives, beside the output
/// (`.NAME.chunkwise-rechunk`): written without syncing (it is never published) and removed
/// when the convert ends, however it ends; a killed convert's is replaced by the next.
struct Scratch(PathBuf);

impl Scratch {
    fn beside(out: &Path) -> Scratch {
        let name = out
            .file_name()
            .map_or_else(|| "array".into(), |n| n.to_string_lossy().into_owned());
        Scratch(out.with_file_name(format!(".{name}.chunkwise-rechunk")))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Blocks opened and not yet freed, counted so that the feed opens a block only while fewer
/// than two are alive (FORMAT §8: two blocks of the budget's half).
#[derive(Default)]
struct Alive {
    count: Mutex<usize>,
    freed: Condvar,
}

impl Alive {
    fn wait_below(&self, n: usize) {
        let mut c = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        while *c >= n {
            c = self.freed.wait(c).unwrap_or_else(PoisonError::into_inner);
        }
        *c += 1;
    }

    fn release(&self) {
        let mut c = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *c = c.saturating_sub(1);
        self.freed.notify_all();
    }
}

/// A block shared by the tasks gathering its chunks; counted in [`Alive`] until its data is
/// freed (fields drop in order: the block, then the count).
struct Held<'a> {
    block: Box<dyn Gather + 'a>,
    _counted: Counted,
}

struct Counted(Arc<Alive>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.release();
    }
}

type SharedBlock<'a> = Arc<Held<'a>>;

/// Yields `(block, chunk index)` for every chunk, opening each block when the first of its
/// chunks is reached; the block is freed when the last task holding it finishes.
struct ChunkFeed<'a> {
    run: &'a RunOptions,
    source: &'a dyn Source,
    grid: &'a Grid,
    /// Chunks not to gather (their reads are not declared to the block).
    done: Option<&'a ChunkSet>,
    blocks: std::vec::IntoIter<Vec<std::ops::Range<u64>>>,
    current: Option<(SharedBlock<'a>, std::vec::IntoIter<Vec<u64>>)>,
    alive: Arc<Alive>,
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
            // The block before may still be gathered; the one before that is gone first.
            self.alive.wait_below(2);
            let chunks = indices_in(&b);
            let parts: Vec<_> = chunks
                .iter()
                .filter(|idx| !self.done.is_some_and(|d| d.contains(idx)))
                .map(|idx| self.grid.chunk_region(idx))
                .collect();
            let opened = self.source.gather(&self.grid.box_region(&b), &parts);
            let alive = self.alive.clone();
            match opened {
                Ok(block) => {
                    let held = Arc::new(Held {
                        block,
                        _counted: Counted(alive),
                    });
                    self.current = Some((held, chunks.into_iter()));
                }
                Err(e) => {
                    alive.release();
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
