//! Running the tasks: decoding an input chunk into its slot, and computing an output chunk
//! (its blocks assembled from the decoded chunks, the kernel applied, the chunk written).
//! Invariant: a computation reads only the slots its feed entry named.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::dtype::DType;
use crate::error::{Error, Result, StoreError, to_usize};
use crate::grid::{ChunkSet, Grid, product};
use crate::halo::{Boundary, Segment, fill_block, segments};
use crate::kernel::{Block, Kernel, OutBlock, Scratch};
use crate::progress::Tracker;
use crate::region::Region;
use crate::run::RunOptions;
use crate::store::JobWriter;

use crate::input::Input;

/// What is kept of a decoded chunk, or the failing chunk's key and the reason.
pub(super) type Decoded = std::result::Result<Kept, (String, String)>;

/// The part of a decoded chunk the traversal keeps: the box its consumers read (the whole
/// chunk at its padded shape when they read all of it; spec/COMPUTE.md §5).
pub(super) struct Kept {
    pub(super) bytes: Arc<Vec<u8>>,
    pub(super) start: Vec<u64>,
    pub(super) shape: Vec<usize>,
}

impl Kept {
    fn piece(&self) -> crate::halo::Piece<'_> {
        crate::halo::Piece {
            bytes: &self.bytes,
            start: &self.start,
            shape: &self.shape,
        }
    }
}

/// Decoded input chunks by (tile number, input index, chunk index): each tile counts and
/// keeps its own, so a chunk two tiles read while the first is finishing is not shared.
pub(super) type Window = HashMap<(u64, usize, Vec<u64>), Arc<Slot>>;

/// A decoded input chunk, shared by the tasks that need it.
pub(super) struct Slot {
    /// The tile whose traversal counts its consumers.
    pub(super) tile: u64,
    pub(super) input: usize,
    pub(super) idx: Vec<u64>,
    /// The box of the chunk (array coordinates) its consumers read: the rest is dropped once
    /// decoded.
    pub(super) keep: Vec<Range<u64>>,
    /// Set once by the decode task: the chunk's bytes (fill value if absent), or the failing
    /// chunk's key and the reason.
    pub(super) data: OnceLock<Decoded>,
    pub(super) state: Mutex<SlotState>,
}

pub(super) struct SlotState {
    /// Computations (of this tile) that will read it and have not finished with it yet.
    pub(super) remaining: u64,
}

pub(super) enum Task {
    Decode(Arc<Slot>),
    /// An output chunk and, per input, the slots its block is assembled from.
    Compute(Vec<u64>, Vec<Vec<Arc<Slot>>>),
    /// An output chunk that is all fill value: recorded as done, nothing written.
    Skip(Vec<u64>),
}

/// One input of the job.
pub(super) struct Reader {
    pub(super) input: Input,
    pub(super) grid: Grid,
    pub(super) chunk_bytes: usize,
    pub(super) itemsize: usize,
    /// A chunk of fill value: the source for absent chunks.
    pub(super) fill: Arc<Vec<u8>>,
    /// The constant of `Boundary::Constant`, as this input's bytes.
    pub(super) cval: Vec<u8>,
}

/// Per input, per axis, per chunk index along the axis: a list of chunk indices (of the other
/// grid) along the same axis.
pub(super) type AxisMaps = Vec<Vec<Vec<Vec<u64>>>>;

/// Everything the tasks share.
pub(super) struct Ctx<'a> {
    pub(super) inputs: Vec<Reader>,
    pub(super) shape: Vec<u64>,
    pub(super) halo: Vec<(u64, u64)>,
    pub(super) boundary: Boundary,
    pub(super) kernel: &'a dyn Kernel,
    pub(super) out_grid: Grid,
    pub(super) out_dtype: DType,
    pub(super) job: &'a JobWriter,
    pub(super) decodes: AtomicU64,
    /// Per input, the chunks decoded at least once.
    pub(super) distinct: Mutex<Vec<ChunkSet>>,
    /// Per input, its stored chunks, when output chunks whose every input chunk is absent
    /// are absent too (a shift-invariant kernel mapping fill to the output's fill): those
    /// are recorded as done without a decode or a computation.
    pub(super) stored_inputs: Option<Vec<ChunkSet>>,
    pub(super) computed: AtomicU64,
    /// Output chunks recorded as absent (fill value) without computing.
    pub(super) skipped: AtomicU64,
    pub(super) stored: AtomicU64,
    pub(super) tracker: Tracker,
    /// The job's shared settings (its cancellation token).
    pub(super) run: &'a RunOptions,
    /// Decoded input chunks by (input, chunk index).
    pub(super) window: Mutex<Window>,
    /// Per input, per axis, per output chunk index along the axis: the input chunk indices
    /// its block reads along that axis (through the boundary mode).
    pub(super) reads: AxisMaps,
    /// The inverse: per input, per axis, per input chunk index: the output chunk indices
    /// reading it.
    pub(super) readers: AxisMaps,
}

impl Ctx<'_> {
    /// The per-axis block segments of input-independent geometry for output chunk `idx`.
    pub(super) fn block_geometry(
        &self,
        idx: &[u64],
    ) -> (Region, Vec<usize>, Vec<i64>, Vec<Vec<Segment>>) {
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
    pub(super) fn needed(&self, idx: &[u64]) -> Vec<Vec<Vec<u64>>> {
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

/// Runs one task.
pub(super) fn run_task(ctx: &Ctx<'_>, task: Task) -> Result<()> {
    // Between chunks: a cancelled job stops here (what is computed is logged on the way out).
    ctx.run.check()?;
    match task {
        Task::Decode(slot) => {
            let inp = &ctx.inputs[slot.input];
            let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                inp.input.read_block(&slot.idx)
            }))
            .unwrap_or_else(|_| {
                Err(Error::Store(StoreError::CorruptChunk {
                    store: inp.input.path().to_path_buf(),
                    key: inp.input.block_key(&slot.idx),
                    reason: "decoding panicked".into(),
                    source: None,
                }))
            });
            ctx.decodes.fetch_add(1, Ordering::Relaxed);
            ctx.distinct.lock().expect("no panics holding the set")[slot.input].insert(&slot.idx);
            match got {
                Ok(Some(bytes)) => {
                    let _ = slot.data.set(Ok(keep(inp, &slot, Arc::new(bytes))));
                    Ok(())
                }
                Ok(None) => {
                    let _ = slot.data.set(Ok(keep(inp, &slot, inp.fill.clone())));
                    Ok(())
                }
                Err(e) => {
                    let (key, reason) = match &e {
                        Error::Store(StoreError::CorruptChunk { key, reason, .. }) => {
                            (key.clone(), reason.clone())
                        }
                        other => (inp.input.block_key(&slot.idx), other.to_string()),
                    };
                    let _ = slot.data.set(Err((key, reason)));
                    Err(e)
                }
            }
        }
        Task::Compute(idx, slots) => compute(ctx, &idx, slots),
        Task::Skip(idx) => {
            ctx.job.record_absent(&idx);
            ctx.skipped.fetch_add(1, Ordering::Relaxed);
            ctx.tracker.add(1);
            if ctx.job.checkpoint_due(SKIPS_PER_CHECKPOINT) {
                ctx.job.checkpoint()?;
            }
            Ok(())
        }
    }
}

/// What a traversal keeps of chunk `slot` decoded as `bytes` (its full, padded shape): all of
/// it when its consumers read the whole chunk, else a copy of the box they read.
fn keep(inp: &Reader, slot: &Slot, bytes: Arc<Vec<u8>>) -> Kept {
    let creg = inp.grid.chunk_region(&slot.idx);
    let full: Vec<usize> = inp.grid.chunk_shape().iter().map(|&c| c as usize).collect();
    // Kept as decoded only when that holds nothing more than the box (not an edge chunk's
    // padding).
    let padded = creg
        .ranges()
        .iter()
        .zip(&full)
        .any(|(r, &n)| (r.end - r.start) as usize != n);
    if slot.keep.as_slice() == creg.ranges() && !padded {
        return Kept {
            bytes,
            start: creg.start(),
            shape: full,
        };
    }
    let shape: Vec<usize> = slot
        .keep
        .iter()
        .map(|r| (r.end - r.start) as usize)
        .collect();
    let strides = crate::copy::c_strides(&full, inp.itemsize);
    let offset: usize = slot
        .keep
        .iter()
        .zip(creg.ranges())
        .zip(&strides)
        .map(|((k, c), &s)| (k.start - c.start) as usize * s)
        .sum();
    let mut part = vec![0u8; shape.iter().product::<usize>() * inp.itemsize];
    crate::copy::copy_box(
        &bytes,
        crate::copy::Side {
            offset,
            strides: &strides,
        },
        &mut part,
        crate::copy::Side {
            offset: 0,
            strides: &crate::copy::c_strides(&shape, inp.itemsize),
        },
        &shape,
        inp.itemsize,
        false,
    );
    Kept {
        bytes: Arc::new(part),
        start: slot.keep.iter().map(|r| r.start).collect(),
        shape,
    }
}

/// Absent chunks are logged in batches of this many (a lost batch is only skipped again).
const SKIPS_PER_CHECKPOINT: usize = 4096;

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
            dtype: inp.input.dtype(),
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
    crate::store::test_delay();
    ctx.stored.fetch_add(n, Ordering::Relaxed);
    ctx.computed.fetch_add(1, Ordering::Relaxed);
    ctx.tracker.add(1);
    if ctx.job.checkpoint_due(CHECKPOINT_EVERY) {
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
    inp: &Reader,
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
        Ok(d)
            if (d.bytes.as_ptr() as usize).is_multiple_of(8)
                && d.bytes.len() == inp.chunk_bytes
                && d.start == creg.start() =>
        {
            Ok(Some(d.bytes.clone()))
        }
        Ok(_) => Ok(None),
        Err((key, reason)) => Err(Error::Store(StoreError::CorruptChunk {
            store: inp.input.path().to_path_buf(),
            key: key.clone(),
            reason: reason.clone(),
            source: None,
        })),
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
            w.remove(&(slot.tile, slot.input, slot.idx.clone()));
        }
    }
}

/// Fills `block` (C order, `shape`) from the input's decoded chunks following the per-axis
/// segments: copied (forward, reversed or repeated) or the boundary constant.
fn assemble(
    inp: &Reader,
    slots: &[Arc<Slot>],
    shape: &[usize],
    segs: &[Vec<Segment>],
    block: &mut [u8],
) -> Result<()> {
    // Wait for (and look up) the decoded chunks.
    let mut chunks: HashMap<&[u64], crate::halo::Piece<'_>> = HashMap::with_capacity(slots.len());
    for s in slots {
        match s.data.wait() {
            Ok(d) => {
                chunks.insert(&s.idx, d.piece());
            }
            Err((key, reason)) => {
                return Err(Error::Store(StoreError::CorruptChunk {
                    store: inp.input.path().to_path_buf(),
                    key: key.clone(),
                    reason: reason.clone(),
                    source: None,
                }));
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
