//! The block executor: the chunk grid is the block decomposition (spec/COMPUTE.md).
//!
//! For every output chunk: the input region grown by the kernel's halo is assembled from
//! decoded input chunks, padded past the array's edges by the boundary mode, handed to the
//! kernel, and only the output chunk is written. Output chunks are visited in storage order
//! (C order, layer by layer along axis 0, optionally in tiles over the other axes to fit a
//! memory budget); each input chunk is decoded when the first output chunk needing it is
//! reached and dropped once the traversal has passed the last one, so within a tile every
//! input chunk is decoded once. Decodes and computations are tasks of one parallel loop fed in
//! traversal order; a computation waits for the decodes it needs, which were handed out
//! before it. Invariant: memory is the decoded window plus one task's working set per
//! thread, whatever the volume's length (spec/COMPUTE.md §5).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use crate::dtype::{DType, Scalar};
use crate::error::{Error, InputError, KernelError, Result};
use crate::fingerprint::fnv1a;
use crate::grid::{ChunkSet, Grid, indices_in};
use crate::halo::{Boundary, fill_block, segments};
use crate::input::Input;
use crate::kernel::{Block, FnKernel, Kernel, OutBlock, Scratch};
use crate::progress::{Tracker, Unit};
use crate::region::{Region, check_shapes, fmt_shape};
use crate::run::with_threads;
use crate::run::{RunOptions, run_setters};
use crate::store::{Codec, Finish, JobOptions, JobState, JobWriter, StoreSpec};
use crate::with_scalar;

mod feed;
mod plan;
mod task;

use feed::Feed;
use plan::{default_budget, plan_tiles, read_maps, tiles_of};
use task::{Ctx, Reader, run_task};

/// Settings of a job; build with [`ExecOptions::default`] and the setters.
///
/// ```no_run
/// use chunkwise::kernel::Threshold;
/// use chunkwise::{Codec, ExecOptions, Input};
/// let opts = ExecOptions::default()
///     .chunks(Some(vec![64, 256, 256]))
///     .codec(Codec::Zstd { level: 3 })
///     .partition(Some((0, 4))) // this machine computes the first quarter of the output
///     .memory(Some(4 << 30));
/// chunkwise::run(&[Input::open("in.zarr")?], "mask.zarr".as_ref(),
///                &Threshold { above: 100.into() }, &opts)?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ExecOptions {
    run: RunOptions,
    partition: Option<(u32, u32)>,
    overwrite: bool,
    restart: bool,
    chunks: Option<Vec<u64>>,
    codec: Option<Codec>,
    level: Option<i32>,
    checksum: bool,
}

impl std::fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOptions")
            .field("run", &self.run)
            .field("partition", &self.partition)
            .field("overwrite", &self.overwrite)
            .field("restart", &self.restart)
            .field("chunks", &self.chunks)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl ExecOptions {
    /// Compute only the `i`-th of `n` disjoint parts of the output (`--partition I/N`).
    pub fn partition(mut self, part: Option<(u32, u32)>) -> Self {
        self.partition = part;
        self
    }
    /// Replace an existing output computed with other settings.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
    /// Discard an unfinished job's work and recompute everything.
    pub fn restart(mut self, on: bool) -> Self {
        self.restart = on;
        self
    }
    /// Output chunk shape (default: the first input's).
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
    /// A crc32c checksum in every output chunk.
    pub fn checksum(mut self, on: bool) -> Self {
        self.checksum = on;
        self
    }
}

run_setters!(ExecOptions);

/// How a job ended.
///
/// ```no_run
/// use chunkwise::kernel::Threshold;
/// use chunkwise::{ExecOptions, ExecStatus, Input};
/// let r = chunkwise::run(&[Input::open("in.zarr")?], "mask.zarr".as_ref(),
///                        &Threshold { above: 100.into() }, &ExecOptions::default())?;
/// match r.status {
///     ExecStatus::Published => println!("{} is complete", r.path.display()),
///     ExecStatus::AlreadyDone => println!("nothing to do"),
///     ExecStatus::Waiting { done, total } => println!("{done} of {total}: other partitions run"),
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    /// Every chunk is computed and the output is published.
    Published,
    /// The output already held this job's result; nothing was computed.
    AlreadyDone,
    /// This partition is done; others still have `total - done` chunks to compute.
    Waiting {
        /// Chunks done by all partitions.
        done: u64,
        /// Chunks in all.
        total: u64,
    },
}

/// What a job did.
///
/// ```no_run
/// use chunkwise::kernel::Threshold;
/// use chunkwise::{ExecOptions, Input};
/// let r = chunkwise::run(&[Input::open("in.zarr")?], "mask.zarr".as_ref(),
///                        &Threshold { above: 100.into() }, &ExecOptions::default())?;
/// println!("{} of {} chunks computed ({} resumed), decode amplification {:.2}",
///          r.chunks_computed, r.chunks_total, r.chunks_resumed,
///          r.decodes as f64 / r.input_chunks.max(1) as f64);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ExecReport {
    /// The output array.
    pub path: PathBuf,
    /// How it ended.
    pub status: ExecStatus,
    /// Output shape.
    pub shape: Vec<u64>,
    /// Output type.
    pub dtype: DType,
    /// Output chunk shape.
    pub chunk_shape: Vec<u64>,
    /// Output chunks in the grid.
    pub chunks_total: u64,
    /// Output chunks computed by this run.
    pub chunks_computed: u64,
    /// Output chunks of this partition already done by an earlier run (resumed).
    pub chunks_resumed: u64,
    /// Output chunks of this partition recorded as absent (all fill value) without a decode
    /// or a computation: every input chunk they read is absent.
    pub chunks_absent: u64,
    /// Input chunks decoded by this run (all inputs).
    pub decodes: u64,
    /// Distinct input chunks this run needed (all inputs): `decodes / input_chunks` is the
    /// decode amplification, 1.0 when every chunk is decoded once.
    pub input_chunks: u64,
    /// Output chunks per tile, per axis (the whole layer unless memory forced tiles).
    pub tile: Vec<u64>,
    /// The decoded window's estimated peak bytes.
    pub window_bytes: u64,
    /// Bytes of output chunk files written.
    pub bytes_stored: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Runs `kernel` over the arrays `inputs` (same shape), writing the array `out`.
///
/// ```no_run
/// use chunkwise::kernel::Gaussian;
/// use chunkwise::{Boundary, ExecOptions, Input};
/// let g = Gaussian { sigma: vec![2.0], truncate: 4.0, mode: Boundary::Reflect, dtype: None };
/// let r = chunkwise::run(&[Input::open("in.zarr")?], "smooth.zarr".as_ref(), &g,
///                        &ExecOptions::default().memory(Some(2 << 30)))?;
/// println!("{:?}: {} chunks computed", r.status, r.chunks_computed);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// Inputs that cannot be opened or differ in shape ([`crate::InputError::ShapeMismatch`]); the kernel's
/// errors ([`crate::KernelError::Compute`], naming the chunk); an impossible memory budget; a locked or
/// differently-computed output. Nothing appears at `out` unless every chunk is done.
pub fn run(
    inputs: &[Input],
    out: &Path,
    kernel: &dyn Kernel,
    opts: &ExecOptions,
) -> Result<ExecReport> {
    with_threads(opts.run.threads, || run_in_pool(inputs, out, kernel, opts))
}

/// What a closure job is: its identity (a name and version that enter the job's fingerprint,
/// so that another closure into the same output is another job, not "already done"), the
/// output type, and for [`map_overlap`] the halo and the boundary mode.
///
/// ```
/// use chunkwise::{Boundary, DType, MapSpec};
/// let spec = MapSpec::new("box-sum v1", DType::F64)
///     .halo(&[1])
///     .boundary(Boundary::Constant(0.0));
/// # let _ = spec;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MapSpec {
    id: String,
    dtype: DType,
    halo: Vec<u64>,
    boundary: Boundary,
}

impl MapSpec {
    /// A job named `id` (change the version in it whenever the closure's result changes)
    /// writing `dtype`; no halo, boundary [`Boundary::Reflect`].
    pub fn new(id: impl Into<String>, dtype: DType) -> MapSpec {
        MapSpec {
            id: id.into(),
            dtype,
            halo: vec![0],
            boundary: Boundary::Reflect,
        }
    }

    /// The halo depth per axis (one value for every axis).
    pub fn halo(mut self, halo: &[u64]) -> Self {
        self.halo = halo.to_vec();
        self
    }

    /// How blocks are padded past the array's edges.
    pub fn boundary(mut self, boundary: Boundary) -> Self {
        self.boundary = boundary;
        self
    }

    fn kernel<F>(&self, f: F) -> FnKernel<F> {
        FnKernel {
            halo: self.halo.iter().map(|&h| (h, h)).collect(),
            boundary: self.boundary,
            dtype: self.dtype,
            name: format!(
                "map id={:?} halo={:?} boundary={} dtype={}",
                self.id, self.halo, self.boundary, self.dtype
            ),
            f,
        }
    }
}

/// dask's `map_overlap` / ClearMap's `process`: `f` gets each input's block (the output chunk's
/// region grown by the spec's halo on every axis, padded by its boundary mode) and fills the
/// output chunk of the spec's type. The spec's identity enters the fingerprint: a rerun of the
/// same job resumes or is "already done", another job into the same output is refused unless
/// overwriting.
///
/// ```no_run
/// use chunkwise::{Boundary, DType, ExecOptions, Input, MapSpec};
/// let image = Input::open("image.zarr")?;
/// let spec = MapSpec::new("box-sum v1", DType::F64).halo(&[1]).boundary(Boundary::Constant(0.0));
/// chunkwise::map_overlap(&[image], "sum.zarr".as_ref(), &spec, |blocks, out| {
///     let b = blocks[0].view::<u16>()?;
///     let mut o = out.view_mut::<f64>()?;
///     // ... o[i] = sum of b over the 3x3x3 box around i (valid region + halo) ...
///     # let _ = (b, &mut o);
///     Ok(())
/// }, &ExecOptions::default())?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`run`], and whatever `f` returns.
pub fn map_overlap<F>(
    inputs: &[Input],
    out: &Path,
    spec: &MapSpec,
    f: F,
    opts: &ExecOptions,
) -> Result<ExecReport>
where
    F: Fn(&[Block<'_>], &mut OutBlock<'_>) -> Result<()> + Sync,
{
    run(inputs, out, &spec.kernel(f), opts)
}

/// [`map_overlap`] without a halo: `f` sees exactly the output chunk's region of each input.
///
/// ```no_run
/// use chunkwise::{DType, ExecOptions, Input, MapSpec};
/// chunkwise::map_blocks(&[Input::open("in.zarr")?], "double.zarr".as_ref(),
///     &MapSpec::new("double v1", DType::U32), |blocks, out| {
///         let src = blocks[0].valid_view::<u16>()?;
///         let mut dst = out.view_mut::<u32>()?;
///         ndarray::Zip::from(&mut dst).and(&src).for_each(|o, &v| *o = 2 * u32::from(v));
///         Ok(())
///     }, &ExecOptions::default())?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`run`]; [`Error::InvalidOption`] for a spec with a halo.
pub fn map_blocks<F>(
    inputs: &[Input],
    out: &Path,
    spec: &MapSpec,
    f: F,
    opts: &ExecOptions,
) -> Result<ExecReport>
where
    F: Fn(&[Block<'_>], &mut OutBlock<'_>) -> Result<()> + Sync,
{
    if spec.halo.iter().any(|&h| h > 0) {
        return Err(Error::option(
            "halo",
            format!(
                "{:?}: map_blocks takes no halo (use map_overlap)",
                spec.halo
            ),
        ));
    }
    map_overlap(inputs, out, spec, f, opts)
}

fn run_in_pool(
    inputs: &[Input],
    out: &Path,
    kernel: &dyn Kernel,
    opts: &ExecOptions,
) -> Result<ExecReport> {
    let start = Instant::now();
    if inputs.is_empty() {
        return Err(Error::option("input", "no input given"));
    }
    let stores = inputs;
    let shape = stores[0].shape().to_vec();
    for s in &stores[1..] {
        if s.shape().len() != shape.len() {
            return Err(Error::Input(InputError::ShapeMismatch {
                left_path: stores[0].path().to_path_buf(),
                right_path: s.path().to_path_buf(),
                axis: 0,
                left: shape.len() as u64,
                right: s.shape().len() as u64,
            }));
        }
        check_shapes(stores[0].path(), &shape, s.path(), s.shape(), None)?;
    }
    let ndim = shape.len();
    let halo = kernel.halo(ndim)?;
    let boundary = kernel.boundary();
    let dtypes: Vec<DType> = stores.iter().map(Input::dtype).collect();
    let out_dtype = kernel.output_dtype(&dtypes)?;
    let out_chunks = match &opts.chunks {
        Some(c) => c.clone(),
        None => stores[0].block_grid().chunk_shape().to_vec(),
    };
    let codec = Codec::resolve(opts.codec, opts.level, out_dtype)?;
    // The first input's voxel size, where it records one, is the output's (same grid).
    let mut attributes = serde_json::json!({});
    if let Some(v) = stores[0].voxel_size() {
        v.write_into(&mut attributes);
    }
    let spec = StoreSpec::new(shape.clone(), out_dtype, out_chunks.clone())
        .codec(codec)
        .checksum(opts.checksum)
        .attributes(attributes);

    // The fingerprint: everything that changes the result.
    let mut settings = format!(
        "chunkwise job v1\nkernel: {}\nboundary: {boundary}\noutput: {} {:?} {:?} checksum={}\n",
        kernel.describe(),
        out_dtype,
        out_chunks,
        codec,
        opts.checksum
    );
    for s in stores {
        settings.push_str(&format!("input: {}\n", s.identity()));
    }
    let fingerprint = fnv1a(&settings);
    let (part, parts) = opts.partition.unwrap_or((0, 1));
    let out_grid = Grid::new(&shape, &out_chunks)?;
    // One walk of each input store: the split and the absent-chunk skipping both use it.
    let stored: Vec<Option<ChunkSet>> = stores.iter().map(Input::stored_chunks).collect();
    let split = crate::grid::split_layers(
        out_grid.grid_shape()[0],
        stored[0]
            .as_ref()
            .map(|s| per_out_layer(&s.layer_counts(), &stores[0], &out_grid))
            .as_deref(),
        parts.max(1),
    );
    let state = JobWriter::open(
        &spec,
        out,
        &JobOptions {
            fingerprint: &fingerprint,
            settings: &settings,
            partition: (part, parts),
            split: &split,
            overwrite: opts.overwrite,
            restart: opts.restart,
            durability: opts.run.durability,
        },
    )?;
    let out_grid = Grid::new(&shape, &out_chunks)?;
    let mut report = ExecReport {
        path: out.to_path_buf(),
        status: ExecStatus::AlreadyDone,
        shape: shape.clone(),
        dtype: out_dtype,
        chunk_shape: out_chunks.clone(),
        chunks_total: out_grid.num_chunks(),
        chunks_computed: 0,
        chunks_resumed: 0,
        chunks_absent: 0,
        decodes: 0,
        input_chunks: 0,
        tile: Vec::new(),
        window_bytes: 0,
        bytes_stored: 0,
        seconds: 0.0,
    };
    let (job, done) = match state {
        JobState::AlreadyDone => {
            report.seconds = start.elapsed().as_secs_f64();
            return Ok(report);
        }
        JobState::Open(job, done) => (job, done),
    };

    let mut ins = Vec::with_capacity(stores.len());
    for s in stores {
        let grid = s.block_grid().clone();
        let chunk_shape: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
        let itemsize = s.dtype().size();
        let chunk_bytes = chunk_shape.iter().product::<usize>() * itemsize;
        let fill: Vec<u8> = s
            .fill_bytes()
            .iter()
            .copied()
            .cycle()
            .take(chunk_bytes)
            .collect();
        let cval = match boundary {
            Boundary::Constant(c) => {
                with_scalar!(s.dtype(), T => bytemuck::bytes_of(&T::from_f64(c)).to_vec())
            }
            _ => vec![0; itemsize],
        };
        ins.push(Reader {
            input: s.clone(),
            grid,
            chunk_bytes,
            itemsize,
            fill: Arc::new(fill),
            cval,
        });
    }

    // This partition's output chunks: a contiguous range of layers along axis 0.
    let gshape = out_grid.grid_shape();
    let (l0, l1) = job.part_layers(part);
    let mine: u64 = (l1 - l0) * gshape[1..].iter().product::<u64>();
    let threads = rayon::current_num_threads();
    let budget = opts.run.memory.unwrap_or_else(default_budget);

    let ctx = Ctx {
        inputs: ins,
        shape: shape.clone(),
        halo,
        boundary,
        kernel,
        out_grid: out_grid.clone(),
        out_dtype,
        job: &job,
        decodes: AtomicU64::new(0),
        distinct: Mutex::new(
            stores
                .iter()
                .map(|s| ChunkSet::new(&s.block_grid().grid_shape()))
                .collect(),
        ),
        stored_inputs: None,
        computed: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        stored: AtomicU64::new(0),
        tracker: Tracker::new("compute", Unit::Chunks, 0, None),
        run: &opts.run,
        window: Mutex::new(HashMap::new()),
        reads: Vec::new(),
        readers: Vec::new(),
    };
    let (tile, window_bytes, threads) = plan_tiles(&ctx, budget, threads)?;
    let todo: u64;
    let tiles = tiles_of(&gshape, &tile);
    {
        let mut n = 0;
        for t in &tiles {
            for l in l0..l1 {
                let mut b = t.clone();
                b[0] = l..l + 1;
                n += indices_in(&b).iter().filter(|i| !done.contains(i)).count() as u64;
            }
        }
        todo = n;
    }
    report.chunks_resumed = mine - todo;
    let (reads, readers) = read_maps(
        &ctx.inputs,
        &ctx.out_grid,
        &ctx.shape,
        &ctx.halo,
        ctx.boundary,
    );
    // After the plan: its budget has bounded the block the probe computes.
    let stored_inputs = skippable(
        stores, stored, kernel, boundary, &ctx.halo, &out_grid, out_dtype,
    )?;
    let ctx = Ctx {
        tracker: Tracker::new("compute", Unit::Chunks, todo, opts.run.progress.clone()),
        reads,
        readers,
        stored_inputs,
        ..ctx
    };
    let feed = Feed::new(&ctx, tiles, l0..l1, &done);
    let ran = if threads < rayon::current_num_threads() {
        // The budget holds fewer tasks at once than there are workers.
        crate::run::pool(threads)?
            .install(|| feed.par_bridge().try_for_each(|task| run_task(&ctx, task)))
    } else {
        feed.par_bridge().try_for_each(|task| run_task(&ctx, task))
    };
    if let Err(e) = ran {
        drop(ctx);
        if matches!(e, Error::Kernel(KernelError::Compute { .. })) {
            // The kernel refused its input: a rerun with these settings fails the same way, so
            // nothing is kept to resume, and a rerun with other settings is not refused.
            job.abandon();
        } else {
            // Cancelled, or an I/O error: what is done is logged, so that a rerun resumes.
            let _ = job.checkpoint();
        }
        return Err(e);
    }
    report.chunks_computed = ctx.computed.load(Ordering::Relaxed);
    report.decodes = ctx.decodes.load(Ordering::Relaxed);
    report.input_chunks = ctx
        .distinct
        .lock()
        .expect("no panics holding the set")
        .iter()
        .map(ChunkSet::len)
        .sum();
    report.chunks_absent = ctx.skipped.load(Ordering::Relaxed);
    report.bytes_stored = ctx.stored.load(Ordering::Relaxed);
    drop(ctx);
    report.status = match job_finish(job)? {
        Finish::Published => ExecStatus::Published,
        Finish::Waiting { done, total } => ExecStatus::Waiting { done, total },
    };
    report.tile = tile;
    report.window_bytes = window_bytes;
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The input's per-layer chunk counts `per` gathered under each output chunk layer (its rows
/// along axis 0): what balances the parts of a job.
fn per_out_layer(
    per: &crate::grid::LayerCounts,
    input: &Input,
    out_grid: &Grid,
) -> crate::grid::LayerCounts {
    let c_in = input.block_grid().chunk_shape()[0];
    let c_out = out_grid.chunk_shape()[0];
    let n = input.shape()[0];
    (0..out_grid.grid_shape()[0])
        .map(|l| {
            let (z0, z1) = (l * c_out, ((l + 1) * c_out).min(n));
            let (a, b) = (z0 / c_in, z1.div_ceil(c_in));
            per.get(a as usize..(b as usize).min(per.len()))
                .map_or((0, 0), |s| {
                    s.iter()
                        .fold((0, 0), |(x, y), &(st, all)| (x + st, y + all))
                })
        })
        .collect()
}

/// Per input, its stored chunks, when output chunks reading only absent input chunks may be
/// recorded as absent without computing them: the kernel is shift-invariant (the same
/// neighbourhood values give the same output anywhere), the boundary brings in no value but
/// the inputs' own (a constant is their fill value), and the kernel applied to fill-valued
/// blocks gives the output's fill value (zero) everywhere. `None` otherwise, or when an
/// input's stored chunks are not known (a view, files).
#[allow(clippy::too_many_arguments)]
fn skippable(
    inputs: &[Input],
    stored_chunks: Vec<Option<ChunkSet>>,
    kernel: &dyn Kernel,
    boundary: Boundary,
    halo: &[(u64, u64)],
    out_grid: &Grid,
    out_dtype: DType,
) -> Result<Option<Vec<ChunkSet>>> {
    if !kernel.shift_invariant() {
        return Ok(None);
    }
    let mut stored = Vec::with_capacity(inputs.len());
    for (s, set) in inputs.iter().zip(stored_chunks) {
        let Some(set) = set else {
            return Ok(None);
        };
        if let Boundary::Constant(c) = boundary {
            let fill = with_scalar!(s.dtype(), T => bytemuck::pod_read_unaligned::<T>(
                &s.fill_bytes()[..std::mem::size_of::<T>()]).to_f64());
            if fill.to_bits() != c.to_bits() && !(fill == 0.0 && c == 0.0) {
                return Ok(None);
            }
        }
        stored.push(set);
    }
    // The kernel on fill-valued blocks of a full chunk plus halo.
    let chunk: Vec<usize> = out_grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let shape: Vec<usize> = chunk
        .iter()
        .zip(halo)
        .map(|(&c, &(a, b))| c + a as usize + b as usize)
        .collect();
    let valid: Vec<std::ops::Range<usize>> = chunk
        .iter()
        .zip(halo)
        .map(|(&c, &(a, _))| a as usize..a as usize + c)
        .collect();
    let elems: usize = shape.iter().product();
    let bufs: Vec<Scratch> = inputs
        .iter()
        .map(|s| {
            let f = s.fill_bytes();
            let mut b = Scratch::new(elems * f.len());
            for (d, v) in b
                .slice_mut::<u8>(elems * f.len())
                .chunks_exact_mut(f.len())
                .zip(std::iter::repeat(&f))
            {
                d.copy_from_slice(v);
            }
            b
        })
        .collect();
    let blocks: Vec<Block<'_>> = inputs
        .iter()
        .zip(&bufs)
        .map(|(s, b)| Block {
            dtype: s.dtype(),
            bytes: b.slice::<u8>(elems * s.dtype().size()),
            shape: shape.clone(),
            valid: valid.clone(),
            origin: valid.iter().map(|v| v.start as i64).collect(),
            array_shape: out_grid.shape().to_vec(),
        })
        .collect();
    let out_bytes = chunk.iter().product::<usize>() * out_dtype.size();
    let mut out = Scratch::new(out_bytes);
    let bytes = out.slice_mut::<u8>(out_bytes);
    let region = Region::new(chunk.iter().map(|&c| 0..c as u64).collect());
    let mut ob = OutBlock {
        dtype: out_dtype,
        bytes,
        chunk_shape: chunk.clone(),
        region,
        key: "(an all-fill chunk)".into(),
    };
    if kernel.apply(&blocks, &mut ob).is_err() || ob.bytes.iter().any(|&b| b != 0) {
        return Ok(None);
    }
    Ok(Some(stored))
}

fn job_finish(job: Box<JobWriter>) -> Result<Finish> {
    (*job).finish()
}

/// Applies `kernel` to a whole in-memory array (`data`: C order, little-endian, `dtype` and
/// `shape`) as one block: the oracle blockwise results are tested against, and what the
/// criterion benches time. Returns the output type and bytes (C order).
///
/// ```
/// use chunkwise::kernel::Threshold;
/// let data: Vec<u8> = [1u16, 5, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let (dtype, out) = chunkwise::apply_in_memory(
///     &Threshold { above: 4.into() }, chunkwise::DType::U16, &[3], &data)?;
/// assert_eq!((dtype, out), (chunkwise::DType::U8, vec![0, 1, 1]));
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// The kernel's errors; [`Error::InvalidOption`] if `data` does not hold `shape`.
pub fn apply_in_memory(
    kernel: &dyn Kernel,
    dtype: DType,
    shape: &[u64],
    data: &[u8],
) -> Result<(DType, Vec<u8>)> {
    let ndim = shape.len();
    let n = shape.iter().product::<u64>() as usize;
    if data.len() != n * dtype.size() {
        return Err(Error::option(
            "data",
            format!(
                "{} bytes do not hold {} {dtype}",
                data.len(),
                fmt_shape(shape)
            ),
        ));
    }
    let halo = kernel.halo(ndim)?;
    let boundary = kernel.boundary();
    let out_dtype = kernel.output_dtype(&[dtype])?;
    let grid = Grid::new(shape, &shape.iter().map(|&s| s.max(1)).collect::<Vec<_>>())?;
    let mut bshape = Vec::with_capacity(ndim);
    let mut origin = Vec::with_capacity(ndim);
    let mut segs = Vec::with_capacity(ndim);
    let mut valid = Vec::with_capacity(ndim);
    for a in 0..ndim {
        let (before, after) = halo[a];
        let start = -(before as i64);
        let end = (shape[a] + after) as i64;
        bshape.push((end - start) as usize);
        origin.push(start);
        segs.push(segments(start, end, shape[a], boundary));
        valid.push(before as usize..before as usize + shape[a] as usize);
    }
    let cval = match boundary {
        Boundary::Constant(c) => {
            with_scalar!(dtype, T => bytemuck::bytes_of(&T::from_f64(c)).to_vec())
        }
        _ => vec![0; dtype.size()],
    };
    let nb: usize = bshape.iter().product::<usize>() * dtype.size();
    let mut block = vec![0u64; nb.div_ceil(8)];
    {
        let bytes: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut block[..])[..nb];
        if n > 0 {
            let start = vec![0; shape.len()];
            let whole: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
            fill_block(
                &grid,
                |_| {
                    Some(crate::halo::Piece {
                        bytes: data,
                        start: &start,
                        shape: &whole,
                    })
                },
                &cval,
                dtype.size(),
                &bshape,
                &segs,
                bytes,
            )?;
        }
    }
    let blocks = [Block {
        dtype,
        bytes: &bytemuck::cast_slice(&block[..])[..nb],
        shape: bshape,
        valid,
        origin,
        array_shape: shape.to_vec(),
    }];
    let no = n * out_dtype.size();
    let mut out = vec![0u64; no.div_ceil(8)];
    {
        let mut ob = OutBlock {
            dtype: out_dtype,
            bytes: &mut bytemuck::cast_slice_mut(&mut out[..])[..no],
            chunk_shape: shape.iter().map(|&s| s as usize).collect(),
            region: Region::full(shape),
            key: "(in memory)".into(),
        };
        kernel.apply(&blocks, &mut ob)?;
    }
    let bytes: &[u8] = bytemuck::cast_slice(&out[..]);
    Ok((out_dtype, bytes[..no].to_vec()))
}
