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

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use rayon::prelude::*;

use crate::copy::{Side, c_strides, copy_box_signed, read_padded};
use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result, to_usize};
use crate::fingerprint::{fnv1a, stamp};
use crate::grid::{Grid, indices_in};
use crate::halo::{Boundary, Segment, segments};
use crate::kernel::{Block, FnKernel, Kernel, OutBlock, Scratch};
use crate::progress::{ProgressFn, Tracker, Unit, with_threads};
use crate::region::{Region, check_shapes, fmt_shape};
use crate::store::{
    Codec, Durability, Finish, JobOptions, JobState, JobWriter, Store, StoreSpec, is_store,
};
use crate::view::View;
use crate::with_scalar;

/// Settings of a job; build with [`ExecOptions::default`] and the setters.
#[derive(Clone, Default)]
pub struct ExecOptions {
    threads: Option<usize>,
    memory: Option<u64>,
    partition: Option<(u32, u32)>,
    overwrite: bool,
    restart: bool,
    chunks: Option<Vec<u64>>,
    codec: Option<Codec>,
    level: Option<i32>,
    checksum: bool,
    durability: Durability,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for ExecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecOptions")
            .field("threads", &self.threads)
            .field("memory", &self.memory)
            .field("partition", &self.partition)
            .field("overwrite", &self.overwrite)
            .field("restart", &self.restart)
            .field("chunks", &self.chunks)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl ExecOptions {
    /// Worker threads (default: one per core).
    pub fn threads(mut self, n: Option<usize>) -> Self {
        self.threads = n;
        self
    }
    /// Memory budget in bytes (default: half the machine's memory).
    pub fn memory(mut self, bytes: Option<u64>) -> Self {
        self.memory = bytes;
        self
    }
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
    /// Whether to sync before recording chunks done and publishing (default: sync).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Progress callback (units: output chunks).
    pub fn progress(mut self, cb: Option<ProgressFn>) -> Self {
        self.progress = cb;
        self
    }
}

/// How a job ended.
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
/// # Errors
/// Inputs that cannot be opened or differ in shape ([`Error::ShapeMismatch`]); the kernel's
/// errors ([`Error::Compute`], naming the chunk); an impossible memory budget; a locked or
/// differently-computed output. Nothing appears at `out` unless every chunk is done.
pub fn run<I: Into<JobInput> + Clone>(
    inputs: &[I],
    out: &Path,
    kernel: &dyn Kernel,
    opts: &ExecOptions,
) -> Result<ExecReport> {
    let inputs: Vec<JobInput> = inputs.iter().cloned().map(Into::into).collect();
    with_threads(opts.threads, || run_in_pool(&inputs, out, kernel, opts))
}

/// What a job reads (COMPUTE §1): a store (regular or rectilinear grid), a file `convert`
/// reads (an `.npy`, raw + sidecar, TIFF), or a JSON view spec on disk; or a [`View`] built in
/// code. A regular store is read chunk by chunk; anything else by blocks of its natural
/// block shape ([`View::block_shape`]), each read by region.
#[derive(Clone, Debug)]
pub enum JobInput {
    /// A path.
    Path(PathBuf),
    /// A view.
    View(View),
}

impl From<PathBuf> for JobInput {
    fn from(p: PathBuf) -> Self {
        JobInput::Path(p)
    }
}

impl From<&PathBuf> for JobInput {
    fn from(p: &PathBuf) -> Self {
        JobInput::Path(p.clone())
    }
}

impl From<&Path> for JobInput {
    fn from(p: &Path) -> Self {
        JobInput::Path(p.to_path_buf())
    }
}

impl From<View> for JobInput {
    fn from(v: View) -> Self {
        JobInput::View(v)
    }
}

/// An opened job input and the grid of blocks it is read by.
struct Src {
    data: Data,
    /// A store's regular chunk grid (for a rectilinear one, blocks of its longest edges); a
    /// view's [`View::block_shape`].
    grid: Grid,
}

enum Data {
    Store(Box<Store>),
    View {
        view: View,
        /// What the user gave (for errors): the path, or `<view>`.
        name: PathBuf,
        /// The fingerprint line: the view's structure and, for a path, its stamp.
        id: String,
    },
}

impl Src {
    fn open(input: &JobInput) -> Result<Src> {
        let (view, name, id) = match input {
            JobInput::Path(p) if is_store(p) => {
                let store = Store::open(p)?;
                return Ok(Src {
                    grid: store.block_grid()?,
                    data: Data::Store(Box::new(store)),
                });
            }
            JobInput::Path(p) => (View::open(p)?, p.clone(), stamp(p)),
            JobInput::View(v) => (v.clone(), PathBuf::from("<view>"), String::new()),
        };
        Ok(Src {
            grid: Grid::new(view.shape(), &view.block_shape())?,
            data: Data::View {
                id: format!("{id} {}", view.describe()),
                view,
                name,
            },
        })
    }

    fn path(&self) -> &Path {
        match &self.data {
            Data::Store(s) => s.path(),
            Data::View { name, .. } => name,
        }
    }

    fn shape(&self) -> &[u64] {
        match &self.data {
            Data::Store(s) => s.shape(),
            Data::View { view, .. } => view.shape(),
        }
    }

    fn dtype(&self) -> DType {
        match &self.data {
            Data::Store(s) => s.dtype(),
            Data::View { view, .. } => view.dtype(),
        }
    }

    /// One element of the value absent chunks hold.
    fn fill_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::Store(s) => s.fill_bytes().to_vec(),
            Data::View { view, .. } => vec![0; view.dtype().size()],
        }
    }

    /// The line of the job's fingerprint that says what this input is.
    fn identity(&self) -> String {
        match &self.data {
            // The metadata and every chunk file's stamp: a store rewritten with new values
            // is another input (issue 18.6).
            Data::Store(s) => stamp(s.path()),
            Data::View { id, .. } => id.clone(),
        }
    }

    fn chunk_key(&self, idx: &[u64]) -> String {
        match &self.data {
            Data::Store(s) => s.chunk_key(idx),
            Data::View { .. } => {
                let i: Vec<String> = idx.iter().map(u64::to_string).collect();
                format!("block {}", i.join("/"))
            }
        }
    }

    /// Block `idx` at its full block shape (edge blocks padded); `None`: an absent chunk.
    fn read_chunk(&self, idx: &[u64]) -> Result<Option<Vec<u8>>> {
        match &self.data {
            Data::Store(s) => s.read_block(&self.grid, idx),
            Data::View { view, .. } => {
                let full: Vec<usize> = self
                    .grid
                    .chunk_shape()
                    .iter()
                    .map(|&c| c as usize)
                    .collect();
                let region = self.grid.chunk_region(idx);
                let part: Vec<usize> = region.shape().iter().map(|&n| n as usize).collect();
                let zero = vec![0u8; view.dtype().size()];
                read_padded(&full, &part, &zero, |buf| {
                    view.read_region_into(&region, buf)
                })
                .map(Some)
            }
        }
    }
}

/// dask's `map_overlap` / ClearMap's `process`: `f` gets each input's block (the output chunk's
/// region grown by `halo` on every axis, padded by `boundary`) and fills the output chunk of
/// type `dtype`.
///
/// # Errors
/// As [`run`], and whatever `f` returns.
pub fn map_overlap<I, F>(
    inputs: &[I],
    out: &Path,
    halo: &[u64],
    boundary: Boundary,
    dtype: DType,
    f: F,
    opts: &ExecOptions,
) -> Result<ExecReport>
where
    I: Into<JobInput> + Clone,
    F: Fn(&[Block<'_>], &mut OutBlock<'_>) -> Result<()> + Sync,
{
    let kernel = FnKernel {
        halo: halo.iter().map(|&h| (h, h)).collect(),
        boundary,
        dtype,
        name: format!("map_overlap halo={halo:?} boundary={boundary} dtype={dtype}"),
        f,
    };
    run(inputs, out, &kernel, opts)
}

/// [`map_overlap`] without a halo: `f` sees exactly the output chunk's region of each input.
///
/// # Errors
/// As [`run`].
pub fn map_blocks<I, F>(
    inputs: &[I],
    out: &Path,
    dtype: DType,
    f: F,
    opts: &ExecOptions,
) -> Result<ExecReport>
where
    I: Into<JobInput> + Clone,
    F: Fn(&[Block<'_>], &mut OutBlock<'_>) -> Result<()> + Sync,
{
    map_overlap(inputs, out, &[0], Boundary::Reflect, dtype, f, opts)
}

/// Half the machine's memory: the default budget.
fn default_budget() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages > 0 && size > 0 {
        (pages as u64 * size as u64) / 2
    } else {
        4 << 30
    }
}

/// One input of the job.
struct Input {
    store: Src,
    grid: Grid,
    chunk_bytes: usize,
    itemsize: usize,
    /// A chunk of fill value: the source for absent chunks.
    fill: Arc<Vec<u8>>,
    /// The constant of `Boundary::Constant`, as this input's bytes.
    cval: Vec<u8>,
}

/// Per input, per axis, per chunk index along the axis: a list of chunk indices (of the other
/// grid) along the same axis.
type AxisMaps = Vec<Vec<Vec<Vec<u64>>>>;

/// A decoded chunk's bytes, or the failing chunk's key and the reason.
type Decoded = std::result::Result<Arc<Vec<u8>>, (String, String)>;

/// Decoded input chunks by (input index, chunk index).
type Window = HashMap<(usize, Vec<u64>), Arc<Slot>>;

/// A decoded input chunk, shared by the tasks that need it.
struct Slot {
    input: usize,
    idx: Vec<u64>,
    /// Set once by the decode task: the chunk's bytes (fill value if absent), or the failing
    /// chunk's key and the reason.
    data: OnceLock<Decoded>,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// Computations (of this tile) that will read it and have not finished with it yet.
    remaining: u64,
}

enum Task {
    Decode(Arc<Slot>),
    /// An output chunk and, per input, the slots its block is assembled from.
    Compute(Vec<u64>, Vec<Vec<Arc<Slot>>>),
}

/// Everything the tasks share.
struct Ctx<'a> {
    inputs: Vec<Input>,
    shape: Vec<u64>,
    halo: Vec<(u64, u64)>,
    boundary: Boundary,
    kernel: &'a dyn Kernel,
    out_grid: Grid,
    out_dtype: DType,
    job: &'a JobWriter,
    decodes: AtomicU64,
    distinct: Mutex<HashSet<(usize, Vec<u64>)>>,
    computed: AtomicU64,
    stored: AtomicU64,
    tracker: Tracker,
    /// Decoded input chunks by (input, chunk index).
    window: Mutex<Window>,
    /// Per input, per axis, per output chunk index along the axis: the input chunk indices
    /// its block reads along that axis (through the boundary mode).
    reads: AxisMaps,
    /// The inverse: per input, per axis, per input chunk index: the output chunk indices
    /// reading it.
    readers: AxisMaps,
}

impl Ctx<'_> {
    /// The per-axis block segments of input-independent geometry for output chunk `idx`.
    fn block_geometry(&self, idx: &[u64]) -> (Region, Vec<usize>, Vec<i64>, Vec<Vec<Segment>>) {
        let region = self.out_grid.chunk_region(idx);
        let mut shape = Vec::with_capacity(region.ndim());
        let mut origin = Vec::with_capacity(region.ndim());
        let mut segs = Vec::with_capacity(region.ndim());
        for (a, r) in region.ranges().iter().enumerate() {
            let (before, after) = self.halo[a];
            let start = r.start as i64 - before as i64;
            let end = r.end as i64 + after as i64;
            shape.push((end - start) as usize);
            origin.push(start);
            segs.push(segments(start, end, self.shape[a], self.boundary));
        }
        (region, shape, origin, segs)
    }

    /// The input chunks (per input) output chunk `idx` needs.
    fn needed(&self, idx: &[u64]) -> Vec<Vec<Vec<u64>>> {
        self.reads
            .iter()
            .map(|per_axis| {
                let lists: Vec<Vec<u64>> = per_axis
                    .iter()
                    .zip(idx)
                    .map(|(r, &i)| r[i as usize].clone())
                    .collect();
                product(&lists)
            })
            .collect()
    }
}

/// Per input, per axis: the input chunk indices each output chunk index reads, and who reads
/// each input chunk index.
fn read_maps(
    inputs: &[Input],
    out_grid: &Grid,
    shape: &[u64],
    halo: &[(u64, u64)],
    boundary: Boundary,
) -> (AxisMaps, AxisMaps) {
    let ndim = shape.len();
    let gshape = out_grid.grid_shape();
    let oc = out_grid.chunk_shape();
    let mut reads = Vec::with_capacity(inputs.len());
    let mut readers = Vec::with_capacity(inputs.len());
    for inp in inputs {
        let ic = inp.grid.chunk_shape();
        let ig = inp.grid.grid_shape();
        let mut r_in = Vec::with_capacity(ndim);
        let mut r_by = Vec::with_capacity(ndim);
        for a in 0..ndim {
            let (before, after) = halo[a];
            let mut per_out = Vec::with_capacity(gshape[a] as usize);
            let mut inverse = vec![Vec::new(); ig[a] as usize];
            for oi in 0..gshape[a] {
                let start = (oi * oc[a]) as i64 - before as i64;
                let end = (((oi + 1) * oc[a]).min(shape[a]) + after) as i64;
                let mut v: Vec<u64> = segments(start, end, shape[a], boundary)
                    .iter()
                    .filter_map(Segment::src_range)
                    .flat_map(|r| (r.start / ic[a])..r.end.div_ceil(ic[a]))
                    .collect();
                v.sort_unstable();
                v.dedup();
                for &ci in &v {
                    inverse[ci as usize].push(oi);
                }
                per_out.push(v);
            }
            r_in.push(per_out);
            r_by.push(inverse);
        }
        reads.push(r_in);
        readers.push(r_by);
    }
    (reads, readers)
}

/// The cartesian product of per-axis index lists, in C order.
fn product(per_axis: &[Vec<u64>]) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::with_capacity(per_axis.len())];
    for axis in per_axis {
        out = out
            .into_iter()
            .flat_map(|p| {
                axis.iter().map(move |&i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}

fn run_in_pool(
    inputs: &[JobInput],
    out: &Path,
    kernel: &dyn Kernel,
    opts: &ExecOptions,
) -> Result<ExecReport> {
    let start = Instant::now();
    if inputs.is_empty() {
        return Err(Error::option("INPUT", "no input given"));
    }
    let stores = inputs.iter().map(Src::open).collect::<Result<Vec<_>>>()?;
    let shape = stores[0].shape().to_vec();
    for s in &stores[1..] {
        if s.shape().len() != shape.len() {
            return Err(Error::ShapeMismatch {
                left_path: stores[0].path().to_path_buf(),
                right_path: s.path().to_path_buf(),
                axis: 0,
                left: shape.len() as u64,
                right: s.shape().len() as u64,
            });
        }
        check_shapes(stores[0].path(), &shape, s.path(), s.shape(), None)?;
    }
    let ndim = shape.len();
    let halo = kernel.halo(ndim)?;
    let boundary = kernel.boundary();
    let dtypes: Vec<DType> = stores.iter().map(Src::dtype).collect();
    let out_dtype = kernel.output_dtype(&dtypes)?;
    let out_chunks = match &opts.chunks {
        Some(c) => c.clone(),
        None => stores[0].grid.chunk_shape().to_vec(),
    };
    let codec = Codec::resolve(opts.codec, opts.level, out_dtype)?;
    let spec = StoreSpec::new(shape.clone(), out_dtype, out_chunks.clone())
        .codec(codec)
        .checksum(opts.checksum);

    // The fingerprint: everything that changes the result.
    let mut settings = format!(
        "chunkwise job v1\nkernel: {}\nboundary: {boundary}\noutput: {} {:?} {:?} checksum={}\n",
        kernel.describe(),
        out_dtype,
        out_chunks,
        codec,
        opts.checksum
    );
    for s in &stores {
        settings.push_str(&format!("input: {}\n", s.identity()));
    }
    let fingerprint = fnv1a(&settings);
    let (part, parts) = opts.partition.unwrap_or((0, 1));
    let state = JobWriter::open(
        &spec,
        out,
        &JobOptions {
            fingerprint: &fingerprint,
            settings: &settings,
            partition: (part, parts),
            overwrite: opts.overwrite,
            restart: opts.restart,
            durability: opts.durability,
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
        let grid = s.grid.clone();
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
        ins.push(Input {
            store: s,
            grid,
            chunk_bytes,
            itemsize,
            fill: Arc::new(fill),
            cval,
        });
    }

    // This partition's output chunks: a contiguous range of layers along axis 0.
    let gshape = out_grid.grid_shape();
    let layers = gshape[0];
    let (l0, l1) = (
        layers * u64::from(part) / u64::from(parts),
        layers * u64::from(part + 1) / u64::from(parts),
    );
    let mine: u64 = (l1 - l0) * gshape[1..].iter().product::<u64>();
    let threads = rayon::current_num_threads();
    let budget = opts.memory.unwrap_or_else(default_budget);

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
        distinct: Mutex::new(HashSet::new()),
        computed: AtomicU64::new(0),
        stored: AtomicU64::new(0),
        tracker: Tracker::new("compute", Unit::Chunks, 0, None),
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
                n += indices_in(&b).iter().filter(|i| !done.contains(*i)).count() as u64;
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
    let ctx = Ctx {
        tracker: Tracker::new("compute", Unit::Chunks, todo, opts.progress.clone()),
        reads,
        readers,
        ..ctx
    };
    let feed = Feed::new(&ctx, tiles, l0..l1, &done);
    let ran = if threads < rayon::current_num_threads() {
        // The budget holds fewer tasks at once than there are workers.
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::option("--threads", e.to_string()))?
            .install(|| feed.par_bridge().try_for_each(|task| run_task(&ctx, task)))
    } else {
        feed.par_bridge().try_for_each(|task| run_task(&ctx, task))
    };
    if let Err(e) = ran {
        drop(ctx);
        if matches!(e, Error::Compute { .. }) {
            // The kernel refused its input: a rerun with these settings fails the same way, so
            // nothing is kept to resume, and a rerun with other settings is not refused.
            job.abandon();
        }
        return Err(e);
    }
    report.chunks_computed = ctx.computed.load(Ordering::Relaxed);
    report.decodes = ctx.decodes.load(Ordering::Relaxed);
    report.input_chunks = ctx
        .distinct
        .lock()
        .expect("no panics holding the set")
        .len() as u64;
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

fn job_finish(job: Box<JobWriter>) -> Result<Finish> {
    (*job).finish()
}

/// Tiles: boxes of output chunk indices over axes 1.., each spanning all of axis 0.
fn tiles_of(gshape: &[u64], tile: &[u64]) -> Vec<Vec<Range<u64>>> {
    let per_axis: Vec<Vec<u64>> = gshape
        .iter()
        .zip(tile)
        .enumerate()
        .map(|(a, (&n, &t))| {
            if a == 0 {
                vec![0]
            } else {
                (0..n).step_by(t.max(1) as usize).collect()
            }
        })
        .collect();
    product(&per_axis)
        .into_iter()
        .map(|start| {
            start
                .iter()
                .enumerate()
                .map(|(a, &s)| {
                    if a == 0 {
                        0..gshape[0]
                    } else {
                        s..(s + tile[a]).min(gshape[a])
                    }
                })
                .collect()
        })
        .collect()
}

/// Chooses the tile (output chunks per axis; axis 0 is swept) and the number of threads so
/// that the decoded window plus every thread's working set fits `budget`: first smaller tiles,
/// then fewer threads. Returns the tile, the window estimate and the threads.
fn plan_tiles(ctx: &Ctx<'_>, budget: u64, threads: usize) -> Result<(Vec<u64>, u64, usize)> {
    let ndim = ctx.shape.len();
    let gshape = ctx.out_grid.grid_shape();
    let oc = ctx.out_grid.chunk_shape();
    // One task: every input's block, the kernel's scratch, the output chunk and its encoding.
    let block_elems: u64 = (0..ndim)
        .map(|a| oc[a] + ctx.halo[a].0 + ctx.halo[a].1)
        .product();
    let out_bytes = oc.iter().product::<u64>() * ctx.out_dtype.size() as u64;
    let task: u64 = ctx
        .inputs
        .iter()
        .map(|i| block_elems * i.itemsize as u64)
        .sum::<u64>()
        + ctx.kernel.scratch_bytes(block_elems)
        + 2 * out_bytes;
    let working = |threads: usize| threads as u64 * task + 2 * threads as u64 * out_bytes;
    // The window holds, per input, about the input layers one output layer reads, over the
    // tile's footprint: chunks leave it with their last consumer, so while one output layer is
    // computed the layer before it drains as the layer after it fills.
    let window = |tile: &[u64]| -> u64 {
        ctx.inputs
            .iter()
            .map(|inp| {
                let ic = inp.grid.chunk_shape();
                let reach = |a: usize, n_out: u64| -> u64 {
                    let span = n_out * oc[a] + ctx.halo[a].0 + ctx.halo[a].1;
                    (span.div_ceil(ic[a]) + 1).min(inp.grid.grid_shape()[a])
                };
                let layers = reach(0, 1);
                let footprint: u64 = (1..ndim).map(|a| reach(a, tile[a])).product();
                layers.min(inp.grid.grid_shape()[0] + 1) * footprint * inp.chunk_bytes as u64
            })
            .sum()
    };
    let mut tile: Vec<u64> = gshape.clone();
    tile[0] = 1;
    loop {
        let w = window(&tile);
        if w + working(threads) <= budget {
            return Ok((tile, w, threads));
        }
        // Halve the widest axis of the tile; at one chunk everywhere, use fewer threads.
        if let Some(a) = (1..ndim).filter(|&a| tile[a] > 1).max_by_key(|&a| tile[a]) {
            tile[a] = tile[a].div_ceil(2);
            continue;
        }
        if let Some(t) = (1..threads).rev().find(|&t| w + working(t) <= budget) {
            return Ok((tile, w, t));
        }
        return Err(Error::option(
            "--memory",
            format!(
                "{budget} bytes cannot hold one tile: at least {} needed ({w} for the decoded \
                 window of a one-chunk tile + {task} for one task at a time)",
                w + working(1),
            ),
        ));
    }
}

/// Generates tasks in traversal order: for each output chunk, the decodes it is the first to
/// need, then its computation.
struct Feed<'a, 'c> {
    ctx: &'c Ctx<'a>,
    tiles: std::vec::IntoIter<Vec<Range<u64>>>,
    layers: Range<u64>,
    done: &'c HashSet<Vec<u64>>,
    tile: Option<Vec<Range<u64>>>,
    layer: u64,
    chunks: std::vec::IntoIter<Vec<u64>>,
    queue: VecDeque<Task>,
}

impl<'a, 'c> Feed<'a, 'c> {
    fn new(
        ctx: &'c Ctx<'a>,
        tiles: Vec<Vec<Range<u64>>>,
        layers: Range<u64>,
        done: &'c HashSet<Vec<u64>>,
    ) -> Self {
        Feed {
            ctx,
            tiles: tiles.into_iter(),
            layer: layers.start,
            layers,
            done,
            tile: None,
            chunks: Vec::new().into_iter(),
            queue: VecDeque::new(),
        }
    }

    /// The output chunks of the current tile (not done) whose blocks read input chunk `c`.
    fn consumers(&self, input: usize, c: &[u64]) -> u64 {
        let tile = self.tile.as_ref().expect("planning happens inside a tile");
        let lists: Vec<Vec<u64>> = self.ctx.readers[input]
            .iter()
            .zip(c)
            .enumerate()
            .map(|(a, (r, &ci))| {
                let range = if a == 0 { &self.layers } else { &tile[a] };
                r[ci as usize]
                    .iter()
                    .copied()
                    .filter(|o| range.contains(o))
                    .collect()
            })
            .collect();
        product(&lists)
            .iter()
            .filter(|o| !self.done.contains(*o))
            .count() as u64
    }

    /// Queues the tasks for output chunk `idx`.
    fn plan(&mut self, idx: Vec<u64>) {
        let needed = self.ctx.needed(&idx);
        let mut w = self
            .ctx
            .window
            .lock()
            .expect("no panics holding the window");
        let mut per_input = Vec::with_capacity(needed.len());
        for (input, chunks) in needed.into_iter().enumerate() {
            let mut slots = Vec::with_capacity(chunks.len());
            for c in chunks {
                let slot = match w.get(&(input, c.clone())) {
                    Some(s) => s.clone(),
                    None => {
                        let s = Arc::new(Slot {
                            input,
                            idx: c.clone(),
                            data: OnceLock::new(),
                            state: Mutex::new(SlotState {
                                remaining: self.consumers(input, &c),
                            }),
                        });
                        w.insert((input, c), s.clone());
                        self.queue.push_back(Task::Decode(s.clone()));
                        s
                    }
                };
                slots.push(slot);
            }
            per_input.push(slots);
        }
        drop(w);
        self.queue.push_back(Task::Compute(idx, per_input));
    }
}

impl Iterator for Feed<'_, '_> {
    type Item = Task;

    fn next(&mut self) -> Option<Task> {
        loop {
            if let Some(t) = self.queue.pop_front() {
                return Some(t);
            }
            if let Some(idx) = self.chunks.next() {
                if !self.done.contains(&idx) {
                    self.plan(idx);
                }
                continue;
            }
            // Next layer of the tile, or the next tile.
            match &self.tile {
                Some(tile) if self.layer + 1 < self.layers.end => {
                    self.layer += 1;
                    let mut b = tile.clone();
                    b[0] = self.layer..self.layer + 1;
                    self.chunks = indices_in(&b).into_iter();
                }
                _ => {
                    // A new tile starts from the first layer; the old tile's slots have all
                    // left the window with their last consumer.
                    let tile = self.tiles.next()?;
                    self.layer = self.layers.start;
                    if self.layers.is_empty() {
                        return None;
                    }
                    let mut b = tile.clone();
                    b[0] = self.layer..self.layer + 1;
                    self.chunks = indices_in(&b).into_iter();
                    self.tile = Some(tile);
                }
            }
        }
    }
}

/// Runs one task.
fn run_task(ctx: &Ctx<'_>, task: Task) -> Result<()> {
    match task {
        Task::Decode(slot) => {
            let inp = &ctx.inputs[slot.input];
            let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                inp.store.read_chunk(&slot.idx)
            }))
            .unwrap_or_else(|_| {
                Err(Error::CorruptChunk {
                    store: inp.store.path().to_path_buf(),
                    key: inp.store.chunk_key(&slot.idx),
                    reason: "decoding panicked".into(),
                })
            });
            ctx.decodes.fetch_add(1, Ordering::Relaxed);
            ctx.distinct
                .lock()
                .expect("no panics holding the set")
                .insert((slot.input, slot.idx.clone()));
            match got {
                Ok(Some(bytes)) => {
                    let _ = slot.data.set(Ok(Arc::new(bytes)));
                    Ok(())
                }
                Ok(None) => {
                    let _ = slot.data.set(Ok(inp.fill.clone()));
                    Ok(())
                }
                Err(e) => {
                    let (key, reason) = match &e {
                        Error::CorruptChunk { key, reason, .. } => (key.clone(), reason.clone()),
                        other => (inp.store.chunk_key(&slot.idx), other.to_string()),
                    };
                    let _ = slot.data.set(Err((key, reason)));
                    Err(e)
                }
            }
        }
        Task::Compute(idx, slots) => compute(ctx, &idx, slots),
    }
}

fn compute(ctx: &Ctx<'_>, idx: &[u64], slots: Vec<Vec<Arc<Slot>>>) -> Result<()> {
    let (region, shape, origin, segs) = ctx.block_geometry(idx);
    let valid: Vec<Range<usize>> = (0..shape.len())
        .map(|a| {
            let b = ctx.halo[a].0 as usize;
            b..b + (region.ranges()[a].end - region.ranges()[a].start) as usize
        })
        .collect();
    let block_elems: usize = shape.iter().product();
    // Assemble every input's block (or, where the block is exactly one decoded chunk, use it
    // as it is).
    let mut buffers: Vec<BlockBytes> = Vec::with_capacity(slots.len());
    for (input, input_slots) in slots.iter().enumerate() {
        let inp = &ctx.inputs[input];
        let nbytes = to_usize(block_elems as u64, "block")? * inp.itemsize;
        if let Some(whole) = whole_chunk(inp, input_slots, &segs, nbytes)? {
            buffers.push(BlockBytes::Chunk(whole));
            continue;
        }
        let mut buf = Scratch::new(nbytes);
        assemble(inp, input_slots, &shape, &segs, buf.slice_mut::<u8>(nbytes))?;
        buffers.push(BlockBytes::Assembled(buf, nbytes));
    }
    release(ctx, slots);
    let blocks: Vec<Block<'_>> = buffers
        .iter()
        .zip(&ctx.inputs)
        .map(|(b, inp)| Block {
            dtype: inp.store.dtype(),
            bytes: b.bytes(),
            shape: shape.clone(),
            valid: valid.clone(),
            origin: origin.clone(),
            array_shape: ctx.shape.clone(),
        })
        .collect();
    let chunk_shape: Vec<usize> = ctx
        .out_grid
        .chunk_shape()
        .iter()
        .map(|&c| c as usize)
        .collect();
    let out_bytes = ctx.job.chunk_bytes();
    // Scratch buffers are 8-byte aligned, so kernels can view them as any element type.
    let mut out = Scratch::new(out_bytes);
    let result = {
        let bytes: &mut [u8] = out.slice_mut::<u8>(out_bytes);
        let edge = region
            .shape()
            .iter()
            .zip(&chunk_shape)
            .any(|(&e, &c)| e as usize != c);
        if edge {
            bytes.fill(0); // the padding of an edge chunk is the fill value
        }
        let mut ob = OutBlock {
            dtype: ctx.out_dtype,
            bytes,
            chunk_shape,
            region: region.clone(),
            key: ctx.job.key(idx),
        };
        ctx.kernel
            .apply(&blocks, &mut ob)
            .and_then(|()| ctx.job.write_chunk(idx, ob.bytes))
    };
    drop(blocks);
    drop(buffers);
    let n = result?;
    ctx.stored.fetch_add(n, Ordering::Relaxed);
    ctx.computed.fetch_add(1, Ordering::Relaxed);
    ctx.tracker.add(1);
    if ctx.job.pending() >= CHECKPOINT_EVERY {
        ctx.job.checkpoint()?;
    }
    Ok(())
}

/// An input block's bytes: assembled into a pooled buffer, or a decoded chunk used as is.
enum BlockBytes {
    Assembled(Scratch, usize),
    Chunk(Arc<Vec<u8>>),
}

impl BlockBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            BlockBytes::Assembled(buf, n) => buf.slice::<u8>(*n),
            BlockBytes::Chunk(data) => data,
        }
    }
}

/// The decoded chunk a block is exactly equal to (one forward segment per axis covering one
/// whole, full-size chunk, e.g. a halo-free kernel on the input's own grid), if it is aligned
/// for typed views.
fn whole_chunk(
    inp: &Input,
    slots: &[Arc<Slot>],
    segs: &[Vec<Segment>],
    nbytes: usize,
) -> Result<Option<Arc<Vec<u8>>>> {
    let [slot] = slots else { return Ok(None) };
    if nbytes != inp.chunk_bytes {
        return Ok(None);
    }
    let creg = inp.grid.chunk_region(&slot.idx);
    let exact = segs
        .iter()
        .zip(creg.ranges())
        .all(|(axis, r)| match axis.as_slice() {
            [seg] => seg.src == Some((r.start, 1)) && seg.len as u64 == r.end - r.start,
            _ => false,
        });
    if !exact {
        return Ok(None);
    }
    match slot.data.wait() {
        Ok(d) if (d.as_ptr() as usize).is_multiple_of(8) => Ok(Some(d.clone())),
        Ok(_) => Ok(None),
        Err((key, reason)) => Err(Error::CorruptChunk {
            store: inp.store.path().to_path_buf(),
            key: key.clone(),
            reason: reason.clone(),
        }),
    }
}

/// Completed chunks are logged (after their files are synced) in batches of this many.
const CHECKPOINT_EVERY: usize = 64;

/// Drops a computation's hold on its slots; a slot whose last consumer this was leaves the
/// window (its memory is freed with the last reference).
fn release(ctx: &Ctx<'_>, slots: Vec<Vec<Arc<Slot>>>) {
    let mut w = ctx.window.lock().expect("no panics holding the window");
    for slot in slots.into_iter().flatten() {
        let gone = {
            let mut st = slot.state.lock().expect("no panics holding a slot");
            st.remaining -= 1;
            st.remaining == 0
        };
        if gone {
            w.remove(&(slot.input, slot.idx.clone()));
        }
    }
}

/// Fills `block` (C order, `shape`) from the input's decoded chunks following the per-axis
/// segments: copied (forward, reversed or repeated) or the boundary constant.
fn assemble(
    inp: &Input,
    slots: &[Arc<Slot>],
    shape: &[usize],
    segs: &[Vec<Segment>],
    block: &mut [u8],
) -> Result<()> {
    // Wait for (and look up) the decoded chunks.
    let mut chunks: HashMap<&[u64], &[u8]> = HashMap::with_capacity(slots.len());
    for s in slots {
        match s.data.wait() {
            Ok(d) => {
                chunks.insert(&s.idx, d.as_slice());
            }
            Err((key, reason)) => {
                return Err(Error::CorruptChunk {
                    store: inp.store.path().to_path_buf(),
                    key: key.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }
    fill_block(
        &inp.grid,
        |c| chunks.get(c).copied(),
        &inp.cval,
        inp.itemsize,
        shape,
        segs,
        block,
    )
}

/// Fills `block` from the chunks of `grid` (`chunk(c)`: chunk `c`'s decoded bytes, full chunk
/// shape, C order) following the segments; constant segments get `cval`.
fn fill_block<'d>(
    grid: &Grid,
    chunk: impl Fn(&[u64]) -> Option<&'d [u8]>,
    cval: &[u8],
    itemsize: usize,
    shape: &[usize],
    segs: &[Vec<Segment>],
    block: &mut [u8],
) -> Result<()> {
    let ndim = shape.len();
    let bstrides: Vec<usize> = c_strides(shape, itemsize);
    let cshape: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let cstrides: Vec<usize> = c_strides(&cshape, itemsize);
    let combos = product(
        &segs
            .iter()
            .map(|v| (0..v.len() as u64).collect())
            .collect::<Vec<_>>(),
    );
    for combo in combos {
        let sel: Vec<&Segment> = combo
            .iter()
            .enumerate()
            .map(|(a, &k)| &segs[a][k as usize])
            .collect();
        if sel.iter().any(|s| s.src.is_none()) {
            fill_box(block, &bstrides, &sel, cval, itemsize);
            continue;
        }
        let src: Vec<Range<u64>> = sel
            .iter()
            .map(|s| s.src_range().expect("not constant"))
            .collect();
        let cbox = grid.chunks_touching(&Region::new(src.clone()));
        for c in indices_in(&cbox) {
            let data = chunk(&c)
                .ok_or_else(|| Error::option("executor", format!("chunk {c:?} was not planned")))?;
            let creg = grid.chunk_region(&c);
            let inter: Vec<Range<u64>> = src
                .iter()
                .zip(creg.ranges())
                .map(|(s, r)| s.start.max(r.start)..s.end.min(r.end))
                .collect();
            if inter.iter().any(|r| r.start >= r.end) {
                continue;
            }
            let mut src_off = 0usize;
            let mut src_strides = vec![0usize; ndim];
            let mut dst_first = 0usize;
            let mut dst_strides = vec![0isize; ndim];
            let mut extent = vec![0usize; ndim];
            for a in 0..ndim {
                let seg = sel[a];
                let (s0, step) = seg.src.expect("not constant");
                src_off += (inter[a].start - creg.ranges()[a].start) as usize * cstrides[a];
                let d = match step {
                    1 => {
                        src_strides[a] = cstrides[a];
                        dst_strides[a] = bstrides[a] as isize;
                        extent[a] = (inter[a].end - inter[a].start) as usize;
                        seg.dst + (inter[a].start - s0) as usize
                    }
                    -1 => {
                        src_strides[a] = cstrides[a];
                        dst_strides[a] = -(bstrides[a] as isize);
                        extent[a] = (inter[a].end - inter[a].start) as usize;
                        seg.dst + (s0 - inter[a].start) as usize
                    }
                    _ => {
                        // One source index repeated over the segment.
                        src_strides[a] = 0;
                        dst_strides[a] = bstrides[a] as isize;
                        extent[a] = seg.len;
                        seg.dst
                    }
                };
                dst_first += d * bstrides[a];
            }
            copy_box_signed(
                data,
                Side {
                    offset: src_off,
                    strides: &src_strides,
                },
                block,
                dst_first,
                &dst_strides,
                &extent,
                itemsize,
            );
        }
    }
    Ok(())
}

/// Applies `kernel` to a whole in-memory array (`data`: C order, little-endian, `dtype` and
/// `shape`) as one block: the oracle blockwise results are tested against, and what the
/// criterion benches time. Returns the output type and bytes (C order).
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
            fill_block(
                &grid,
                |_| Some(data),
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

/// Fills the box the segments select with the constant.
fn fill_box(block: &mut [u8], strides: &[usize], sel: &[&Segment], value: &[u8], itemsize: usize) {
    let ranges: Vec<Range<u64>> = sel
        .iter()
        .map(|s| s.dst as u64..(s.dst + s.len) as u64)
        .collect();
    let ndim = ranges.len();
    let inner = &ranges[ndim - 1];
    let outer: Vec<Range<u64>> = ranges[..ndim - 1].to_vec();
    for idx in indices_in(&outer) {
        let base: usize = idx.iter().zip(strides).map(|(&i, &s)| i as usize * s).sum();
        for k in inner.clone() {
            let at = base + k as usize * strides[ndim - 1];
            block[at..at + itemsize].copy_from_slice(value);
        }
    }
}
