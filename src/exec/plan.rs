//! Planning a job's traversal: which input chunks each output chunk's block reads (through
//! the boundary mode), the tiles the output is swept in, and how many of them, and how many
//! threads, fit the memory budget (spec/COMPUTE.md §5). Invariant: the plan only counts; it
//! reads no data.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::grid::{Grid, product};
use crate::halo::{Boundary, Segment, segments};
use crate::region::fmt_shape;

use super::task::{AxisMaps, Ctx, Reader};

/// Half the machine's memory: the default budget.
pub(super) fn default_budget() -> u64 {
    let info = rustix::system::sysinfo();
    let total = (info.totalram as u64).saturating_mul(u64::from(info.mem_unit.max(1)));
    if total > 0 { total / 2 } else { 4 << 30 }
}

/// Per input, per axis: the input chunk indices each output chunk index reads, and who reads
/// each input chunk index.
pub(super) fn read_maps(
    inputs: &[Reader],
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

/// Tiles: boxes of output chunk indices over axes 1.., each spanning all of axis 0.
pub(super) fn tiles_of(gshape: &[u64], tile: &[u64]) -> Vec<Vec<Range<u64>>> {
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
pub(super) fn plan_tiles(
    ctx: &Ctx<'_>,
    budget: u64,
    threads: usize,
) -> Result<(Vec<u64>, u64, usize)> {
    let ndim = ctx.shape.len();
    let gshape = ctx.out_grid.grid_shape();
    let oc = ctx.out_grid.chunk_shape();
    // One block of one input must fit before anything else is sized (in u128: a kernel's halo
    // can make it astronomically large, and then it is refused, saying why).
    let block: Vec<u128> = (0..ndim)
        .map(|a| u128::from(oc[a]) + u128::from(ctx.halo[a].0) + u128::from(ctx.halo[a].1))
        .collect();
    let widest = ctx.inputs.iter().map(|i| i.itemsize).max().unwrap_or(1) as u128;
    let block_bytes = block
        .iter()
        .try_fold(widest, |a, &n| a.checked_mul(n))
        .unwrap_or(u128::MAX);
    if block_bytes > u128::from(budget) {
        return Err(Error::option(
            "memory",
            format!(
                "the kernel ({}) reads {} voxels of halo on each side of every {} output \
                 chunk: a block of {} elements, {block_bytes} bytes, more than the memory budget \
                 of {budget} bytes (use a smaller halo, smaller chunks, or more memory)",
                ctx.kernel.describe(),
                ctx.halo
                    .iter()
                    .map(|h| h.0.max(h.1).to_string())
                    .collect::<Vec<_>>()
                    .join("x"),
                fmt_shape(oc),
                block
                    .iter()
                    .map(u128::to_string)
                    .collect::<Vec<_>>()
                    .join("x"),
            ),
        ));
    }
    // One task: every input's block, the kernel's scratch, the output chunk and its encoding.
    let block_shape: Vec<u64> = (0..ndim)
        .map(|a| oc[a] + ctx.halo[a].0 + ctx.halo[a].1)
        .collect();
    let block_elems: u64 = block_shape.iter().product();
    let out_bytes = oc.iter().product::<u64>() * ctx.out_dtype.size() as u64;
    let task: u64 = ctx
        .inputs
        .iter()
        .map(|i| block_elems.saturating_mul(i.itemsize as u64))
        .fold(0u64, u64::saturating_add)
        .saturating_add(ctx.kernel.scratch_bytes_for(&block_shape, ctx.out_dtype))
        .saturating_add(2 * out_bytes);
    let working = |threads: usize| {
        (threads as u64)
            .saturating_mul(task)
            .saturating_add((2 * threads as u64).saturating_mul(out_bytes))
    };
    // The window holds, per input, about the input layers one output layer reads, over the
    // tile's footprint: chunks leave it with their last consumer, so while one output layer is
    // computed the layer before it drains as the layer after it fills. Of a chunk only the box
    // the tile reads is kept: across the axes after the first, the tile's extent and its halo
    // (a chunk beside the tile keeps a slab of the halo's width).
    let window = |tile: &[u64]| -> u64 {
        ctx.inputs
            .iter()
            .map(|inp| {
                let ic = inp.grid.chunk_shape();
                let reach = |a: usize, n_out: u64| -> u64 {
                    let span = n_out * oc[a] + ctx.halo[a].0 + ctx.halo[a].1;
                    (span.div_ceil(ic[a]) + 1).min(inp.grid.grid_shape()[a])
                };
                let layers = reach(0, 1).min(inp.grid.grid_shape()[0] + 1);
                let across: u64 = (1..ndim)
                    .map(|a| {
                        let whole = reach(a, tile[a]).saturating_mul(ic[a]);
                        if ctx.boundary == Boundary::Wrap {
                            // A tile at one end reads the other end too (one chunk more), and
                            // a chunk spanning both keeps the hull of the two, up to all of it.
                            let far = (reach(a, tile[a]) + 1).min(inp.grid.grid_shape()[a]);
                            return far.saturating_mul(ic[a]);
                        }
                        let read = tile[a]
                            .saturating_mul(oc[a])
                            .saturating_add(ctx.halo[a].0 + ctx.halo[a].1);
                        read.min(whole)
                    })
                    .fold(1u64, u64::saturating_mul);
                layers
                    .saturating_mul(ic[0])
                    .saturating_mul(across)
                    .saturating_mul(inp.itemsize as u64)
            })
            .fold(0u64, u64::saturating_add)
    };
    let mut tile: Vec<u64> = gshape.clone();
    tile[0] = 1;
    loop {
        let w = window(&tile);
        if w.saturating_add(working(threads)) <= budget {
            return Ok((tile, w, threads));
        }
        // Halve the widest axis of the tile; at one chunk everywhere, use fewer threads.
        if let Some(a) = (1..ndim).filter(|&a| tile[a] > 1).max_by_key(|&a| tile[a]) {
            tile[a] = tile[a].div_ceil(2);
            continue;
        }
        if let Some(t) = (1..threads)
            .rev()
            .find(|&t| w.saturating_add(working(t)) <= budget)
        {
            return Ok((tile, w, t));
        }
        return Err(Error::option(
            "memory",
            format!(
                "{budget} bytes cannot hold one tile: at least {} needed ({w} for the decoded \
                 window of a one-chunk tile + {task} for one task at a time)",
                w.saturating_add(working(1)),
            ),
        ));
    }
}
