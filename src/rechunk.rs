//! Rechunking in bounded memory (spec/FORMAT.md §8.1): how `convert` streams a chunked source
//! (a store) into another chunking so that memory stays under `--memory` and every source
//! chunk is decoded a small, known number of times. Pure arithmetic on the two grids: no I/O.
//!
//! A pass streams the output in blocks (boxes of output chunks); each block decodes every
//! source chunk it touches, so a source chunk is decoded once per block it meets. Blocks are
//! shaped to cover whole source chunks where the budget allows. When it cannot hold a full
//! source-target overlap (slabs to columns: one column meets every slab), the rechunk goes
//! through an **intermediate chunking** in two passes, each of which decodes its input once:
//! rechunker's algorithm.

use crate::grid::Grid;

/// Most decodes of one source chunk a one-pass plan may cost before two passes through an
/// intermediate chunking are preferred.
pub(crate) const MOST_DIRECT: u64 = 2;

/// How often a plan decodes the chunks it reads.
///
/// ```no_run
/// use chunkwise::{ConvertOptions, Input};
/// let r = chunkwise::convert(&Input::open("slabs.zarr")?, "columns.zarr".as_ref(),
///     &ConvertOptions::default().chunks(Some(vec![512, 32, 32])).memory(Some(512 << 20)))?;
/// if let Some(d) = r.decodes {
///     println!("{} input chunks, {} decodes, at most {} per chunk", d.chunks, d.total, d.most);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decodes {
    /// Input chunks read.
    pub chunks: u64,
    /// Chunk decodes in all (`chunks` when each is decoded once).
    pub total: u64,
    /// Most decodes of any one chunk.
    pub most: u64,
}

/// One pass: the output streamed in blocks of `step` output chunks per axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pass {
    pub(crate) step: Vec<u64>,
    pub(crate) decodes: Decodes,
    /// Bytes of the largest block.
    pub(crate) block_bytes: u64,
}

/// How a chunked source becomes the output's chunking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// One pass from the source to the output.
    Direct(Pass),
    /// Source to an intermediate array in chunks of `intermediate`, then to the output.
    Staged {
        intermediate: Vec<u64>,
        first: Pass,
        second: Pass,
    },
}

/// Chunk boundaries along one axis of a source: `n + 1` offsets from 0 to the extent.
pub(crate) type Bounds = Vec<u64>;

/// The chunk boundaries of a regular grid (the last chunk clipped to the array).
pub(crate) fn regular_bounds(shape: &[u64], chunks: &[u64]) -> Vec<Bounds> {
    shape
        .iter()
        .zip(chunks)
        .map(|(&n, &c)| {
            let c = c.max(1);
            let mut b: Vec<u64> = (0..n.div_ceil(c)).map(|i| i * c).collect();
            b.push(n);
            b
        })
        .collect()
}

/// Memory besides the blocks: per thread, an input chunk as read, as decoded and as the part
/// cut from it, and an output chunk gathered, compressed, encoded and (twice) waiting for the
/// disk.
pub(crate) fn working_bytes(threads: usize, in_chunk: u64, out_chunk: u64) -> u64 {
    (threads as u64).saturating_mul(in_chunk.saturating_mul(3) + out_chunk.saturating_mul(5))
}

/// The bytes one pass needs at least: two one-chunk blocks and the working memory.
fn least_bytes(threads: usize, in_chunk: u64, out_chunk: u64) -> u64 {
    out_chunk.saturating_mul(2) + working_bytes(threads, in_chunk, out_chunk)
}

/// The least memory any plan needs: one pass with one-chunk blocks, or two through the
/// smaller of the two chunk lengths on each axis.
pub(crate) fn least(bounds: &[Bounds], out: &Grid, itemsize: usize, threads: usize) -> u64 {
    let source = largest_chunk(bounds, itemsize);
    let target = chunk_bytes(out.chunk_shape(), itemsize);
    let inter: Vec<u64> = bounds
        .iter()
        .zip(out.chunk_shape())
        .map(|(b, &t)| longest(b).min(t))
        .collect();
    let inter = chunk_bytes(&inter, itemsize);
    let staged = least_bytes(threads, source, inter).max(least_bytes(threads, inter, target));
    least_bytes(threads, source, target).min(staged)
}

/// The longest chunk along one axis (1 for an axis without chunks).
fn longest(bounds: &[u64]) -> u64 {
    bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(1)
}

/// The largest chunk of a grid given by its bounds, in bytes.
fn largest_chunk(bounds: &[Bounds], itemsize: usize) -> u64 {
    bounds
        .iter()
        .map(|b| longest(b))
        .fold(itemsize as u64, u64::saturating_mul)
}

/// Plans the rechunk of a source with chunk `bounds` into `out` within `memory` bytes on
/// `threads` threads: one pass when it decodes no source chunk more than [`MOST_DIRECT`]
/// times, else two passes through the intermediate chunking that decodes least (and, among
/// equals, has the fewest chunks). `None` when not even one-chunk blocks fit.
pub(crate) fn plan(
    bounds: &[Bounds],
    out: &Grid,
    itemsize: usize,
    memory: u64,
    threads: usize,
) -> Option<Plan> {
    let direct = direct(bounds, out, itemsize, memory, threads);
    if direct
        .as_ref()
        .is_some_and(|p| p.decodes.most <= MOST_DIRECT)
    {
        return direct.map(Plan::Direct);
    }
    match (direct, best_staged(bounds, out, itemsize, memory, threads)) {
        (Some(d), Some(s)) if s.most() >= d.decodes.most => Some(Plan::Direct(d)),
        (_, Some(s)) => Some(s),
        (d, None) => d.map(Plan::Direct),
    }
}

impl Plan {
    /// Most decodes of one chunk in any pass.
    fn most(&self) -> u64 {
        match self {
            Plan::Direct(p) => p.decodes.most,
            Plan::Staged { first, second, .. } => first.decodes.most.max(second.decodes.most),
        }
    }
}

/// The one-pass plan that decodes least within `memory` (`None` when not even one-chunk
/// blocks fit).
pub(crate) fn direct(
    bounds: &[Bounds],
    out: &Grid,
    itemsize: usize,
    memory: u64,
    threads: usize,
) -> Option<Pass> {
    let out_chunk = chunk_bytes(out.chunk_shape(), itemsize);
    let choices = axes_choices(bounds, out.chunk_shape(), out.shape());
    best_pass(
        &choices.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        out.shape(),
        itemsize,
        budget(memory, threads, largest_chunk(bounds, itemsize), out_chunk)?,
        count_chunks(bounds),
    )
}

fn count_chunks(bounds: &[Bounds]) -> u64 {
    bounds
        .iter()
        .map(|b| b.len().saturating_sub(1) as u64)
        .fold(1u64, u64::saturating_mul)
}

fn chunk_bytes(chunk: &[u64], itemsize: usize) -> u64 {
    chunk
        .iter()
        .fold(itemsize as u64, |a, &c| a.saturating_mul(c))
}

/// Bytes one block may hold: two are alive at once (one gathered while the next is read)
/// beside the working memory. `None` when not even that fits.
fn budget(memory: u64, threads: usize, in_chunk: u64, out_chunk: u64) -> Option<u64> {
    let b = memory.checked_sub(working_bytes(threads, in_chunk, out_chunk))? / 2;
    (b >= out_chunk).then_some(b)
}

/// Output chunks a block should hold per thread. Blocks are read lazily (each source chunk
/// decoded by the first task that needs it, [`crate::store::ChunkWindow`]), and tasks in
/// storage order that need the same source chunk (the halves of a chunk split in two) are then
/// far enough apart that workers do not wait for one another's decodes.
const TASKS_PER_THREAD: u64 = 4;

/// Widens `pass`'s blocks along the fastest axes (doubling one axis at a time, last first)
/// while a block holds fewer than [`TASKS_PER_THREAD`] output chunks per thread and two
/// blocks still fit `memory`. A longer block never decodes more: the decodes are counted
/// again for the new step.
pub(crate) fn widen(
    pass: &mut Pass,
    bounds: &[Bounds],
    out: &Grid,
    itemsize: usize,
    memory: u64,
    threads: usize,
) {
    let out_chunk = chunk_bytes(out.chunk_shape(), itemsize);
    let Some(budget) = budget(memory, threads, largest_chunk(bounds, itemsize), out_chunk) else {
        return;
    };
    let grid = out.grid_shape();
    let want = TASKS_PER_THREAD.saturating_mul(threads as u64);
    let bytes = |step: &[u64]| -> u128 {
        step.iter()
            .zip(out.chunk_shape())
            .zip(out.shape())
            .map(|((&k, &t), &n)| u128::from(k.saturating_mul(t).min(n.max(1))))
            .product::<u128>()
            * itemsize as u128
    };
    let tasks = |step: &[u64]| step.iter().fold(1u64, |a, &k| a.saturating_mul(k));
    let mut step = pass.step.clone();
    for a in (0..step.len()).rev() {
        while tasks(&step) < want && step[a] < grid[a] {
            let mut wider = step.clone();
            wider[a] = (step[a] * 2).min(grid[a]);
            if bytes(&wider) > u128::from(budget) {
                break;
            }
            step = wider;
        }
    }
    if step == pass.step {
        return;
    }
    let (mut total, mut most) = (1u64, 1u64);
    for ((b, &k), &t) in bounds.iter().zip(&step).zip(out.chunk_shape()) {
        let (tot, m) = axis_cost(b, k.saturating_mul(t));
        total = total.saturating_mul(tot);
        most = most.saturating_mul(m);
    }
    pass.decodes.total = total;
    pass.decodes.most = most;
    pass.block_bytes = u64::try_from(bytes(&step)).unwrap_or(u64::MAX);
    pass.step = step;
}

/// [`axis_choices`] for every axis.
fn axes_choices(bounds: &[Bounds], chunk: &[u64], shape: &[u64]) -> Vec<Vec<Choice>> {
    bounds
        .iter()
        .zip(chunk)
        .zip(shape)
        .map(|((b, &t), &n)| axis_choices(b, t, n))
        .collect()
}

/// Along one axis: a source's chunks (`bounds`) against blocks of `len` elements. Returns
/// (decodes: sum over blocks of the chunks each touches, most blocks touching one chunk).
fn axis_cost(bounds: &[u64], len: u64) -> (u64, u64) {
    let len = len.max(1);
    let touches = |lo: u64, hi: u64| (hi - 1) / len - lo / len + 1;
    let m = bounds.len().saturating_sub(1);
    if m == 0 {
        return (0, 0);
    }
    // A regular axis repeats with a period of lcm(chunk, len) / chunk chunks: count one
    // period and the rest (the last, clipped chunk on its own).
    let c = bounds[1] - bounds[0];
    let regular = m > 2 && c > 0 && bounds[..m].windows(2).all(|w| w[1] - w[0] == c);
    if regular && m > 4096 {
        let period = (len / gcd(c, len)).max(1);
        if period < (m as u64 - 1) {
            let (mut per, mut most) = (0u64, 0u64);
            for i in 0..period {
                let t = touches(i * c, (i + 1) * c);
                per += t;
                most = most.max(t);
            }
            let whole = m as u64 - 1;
            let (q, r) = (whole / period, whole % period);
            let mut total = q.saturating_mul(per);
            for i in 0..r {
                let i = q * period + i;
                total += touches(i * c, (i + 1) * c);
            }
            let t = if bounds[m] > bounds[m - 1] {
                touches(bounds[m - 1], bounds[m])
            } else {
                0
            };
            return (total + t, most.max(t));
        }
    }
    // Empty chunks (a zero-length edge of a rectilinear grid) are never read.
    bounds
        .windows(2)
        .filter(|w| w[1] > w[0])
        .fold((0, 0), |(total, most), w| {
            let t = touches(w[0], w[1]);
            (total + t, most.max(t))
        })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a.max(1) } else { gcd(b, a % b) }
}

/// A block's extent along one axis: `k` output chunks, `len` elements, costing `total`
/// decodes along the axis and at most `most` of one source chunk.
#[derive(Debug, Clone, Copy)]
struct Choice {
    k: u64,
    len: u64,
    total: u64,
    most: u64,
}

/// One axis's choices for a block of `k` output chunks of `t` elements (extent `n`), longer
/// ones kept only when they decode fewer.
fn axis_choices(bounds: &[u64], t: u64, n: u64) -> Vec<Choice> {
    let t = t.max(1);
    let kmax = n.div_ceil(t).max(1);
    let largest = longest(bounds);
    let mut ks: Vec<u64> = (1..=kmax.min(8)).collect();
    let mut p = 1u64;
    while p < kmax {
        ks.push(p);
        p = p.saturating_mul(2);
    }
    // Blocks that cover whole source chunks: a multiple of the chunk's length and of t.
    let cover = largest.div_ceil(t);
    let lcm = largest / gcd(largest, t);
    for base in [cover, lcm] {
        for m in 1..=8u64 {
            ks.push(base.saturating_mul(m));
        }
    }
    ks.push(kmax);
    ks.retain(|&k| k >= 1 && k <= kmax);
    ks.sort_unstable();
    ks.dedup();
    let mut out: Vec<Choice> = Vec::new();
    for k in ks {
        let len = k.saturating_mul(t).min(n.max(1));
        let (total, most) = axis_cost(bounds, len);
        if out.last().is_none_or(|c| total < c.total) {
            out.push(Choice {
                k,
                len,
                total,
                most,
            });
        }
    }
    out
}

/// The blocks (one [`Choice`] per axis) that decode least within `budget` bytes a block:
/// ties go to the fewer, larger blocks.
fn best_pass(
    choices: &[&[Choice]],
    shape: &[u64],
    itemsize: usize,
    budget: u64,
    chunks: u64,
) -> Option<Pass> {
    let mut best: Option<(u128, u128, Vec<usize>, u64)> = None;
    let mut pick = vec![0usize; choices.len()];
    search(
        choices,
        0,
        u128::from(itemsize as u64),
        u128::from(budget),
        &mut pick,
        &mut |pick, bytes| {
            let total: u128 = pick
                .iter()
                .zip(choices)
                .map(|(&i, c)| u128::from(c[i].total))
                .product();
            let blocks: u128 = pick
                .iter()
                .zip(choices)
                .zip(shape)
                .map(|((&i, c), &n)| u128::from(n.div_ceil(c[i].len.max(1)).max(1)))
                .product();
            if best
                .as_ref()
                .is_none_or(|(t, b, _, _)| (total, blocks) < (*t, *b))
            {
                best = Some((total, blocks, pick.to_vec(), bytes));
            }
        },
    );
    let (total, _, pick, bytes) = best?;
    let most = pick
        .iter()
        .zip(choices)
        .map(|(&i, c)| c[i].most)
        .fold(1u64, u64::saturating_mul);
    Some(Pass {
        step: pick.iter().zip(choices).map(|(&i, c)| c[i].k).collect(),
        decodes: Decodes {
            chunks,
            total: u64::try_from(total).unwrap_or(u64::MAX),
            most,
        },
        block_bytes: bytes,
    })
}

/// Visits every pick of one choice per axis whose block fits `budget` bytes.
fn search(
    choices: &[&[Choice]],
    axis: usize,
    bytes: u128,
    budget: u128,
    pick: &mut Vec<usize>,
    visit: &mut dyn FnMut(&[usize], u64),
) {
    if axis == choices.len() {
        visit(pick, u64::try_from(bytes).unwrap_or(u64::MAX));
        return;
    }
    for (i, c) in choices[axis].iter().enumerate() {
        let b = bytes.saturating_mul(u128::from(c.len));
        if b > budget {
            break; // longer blocks only grow
        }
        pick[axis] = i;
        search(choices, axis + 1, b, budget, pick, visit);
    }
}

/// The two passes through the intermediate chunking that decodes least (ties: fewest
/// intermediate chunks).
fn best_staged(
    bounds: &[Bounds],
    out: &Grid,
    itemsize: usize,
    memory: u64,
    threads: usize,
) -> Option<Plan> {
    let shape = out.shape();
    // Per axis: lengths between the source's chunk and the output's, by doublings of the
    // shorter and halvings of the longer.
    let candidates: Vec<Vec<u64>> = bounds
        .iter()
        .zip(out.chunk_shape())
        .zip(shape)
        .map(|((b, &t), &n)| {
            let s = longest(b);
            let (lo, hi) = (s.min(t).max(1), s.max(t).min(n.max(1)).max(1));
            let mut v = vec![lo, hi];
            let (mut x, mut y) = (lo, hi);
            while x < hi {
                v.push(x);
                x = x.saturating_mul(2);
            }
            while y > lo {
                v.push(y);
                y /= 2;
            }
            v.retain(|&x| x >= lo && x <= hi);
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    let combos = candidates
        .iter()
        .map(Vec::len)
        .fold(1usize, usize::saturating_mul);
    if combos > 20_000 {
        return None;
    }
    // Each axis's choices depend only on that axis's intermediate length: worked out once.
    let t = out.chunk_shape();
    let firsts: Vec<Vec<Vec<Choice>>> = candidates
        .iter()
        .enumerate()
        .map(|(a, c)| {
            c.iter()
                .map(|&i| axis_choices(&bounds[a], i, shape[a]))
                .collect()
        })
        .collect();
    let seconds: Vec<Vec<Vec<Choice>>> = candidates
        .iter()
        .enumerate()
        .map(|(a, c)| {
            c.iter()
                .map(|&i| axis_choices(&regular_bounds(&shape[a..=a], &[i])[0], t[a], shape[a]))
                .collect()
        })
        .collect();
    let source_chunk = largest_chunk(bounds, itemsize);
    let out_chunk = chunk_bytes(t, itemsize);
    let mut best: Option<((u64, u64, u64), Plan)> = None;
    let counts: Vec<std::ops::Range<u64>> = candidates.iter().map(|c| 0..c.len() as u64).collect();
    for pick in crate::grid::indices_in(&counts) {
        let inter: Vec<u64> = pick
            .iter()
            .zip(&candidates)
            .map(|(&i, c)| c[i as usize])
            .collect();
        let inter_chunk = chunk_bytes(&inter, itemsize);
        if inter_chunk > crate::store::MAX_CHUNK_BYTES {
            continue;
        }
        let inter_chunks = shape
            .iter()
            .zip(&inter)
            .map(|(&n, &c)| n.div_ceil(c))
            .fold(1u64, u64::saturating_mul);
        // An intermediate array the store layer would refuse is no candidate.
        if inter_chunks > crate::store::MAX_CHUNKS {
            continue;
        }
        let first: Vec<&[Choice]> = pick
            .iter()
            .enumerate()
            .map(|(a, &i)| firsts[a][i as usize].as_slice())
            .collect();
        let second: Vec<&[Choice]> = pick
            .iter()
            .enumerate()
            .map(|(a, &i)| seconds[a][i as usize].as_slice())
            .collect();
        let Some(first) = budget(memory, threads, source_chunk, inter_chunk)
            .and_then(|b| best_pass(&first, shape, itemsize, b, count_chunks(bounds)))
        else {
            continue;
        };
        let Some(second) = budget(memory, threads, inter_chunk, out_chunk)
            .and_then(|b| best_pass(&second, shape, itemsize, b, inter_chunks))
        else {
            continue;
        };
        let key = (
            first.decodes.most.max(second.decodes.most),
            first.decodes.most + second.decodes.most,
            inter_chunks,
        );
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            let intermediate = inter;
            best = Some((
                key,
                Plan::Staged {
                    intermediate,
                    first,
                    second,
                },
            ));
        }
    }
    best.map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// spec/FORMAT.md §8.1: a block that halves its source chunks along the first axis is
    /// widened along the last axes until it holds 4 output chunks per thread, within the
    /// budget, decoding no more than before (each source chunk still once).
    #[test]
    fn widening_keeps_decodes_and_budget() {
        let bounds = regular_bounds(&[512, 1024, 1024], &[128, 128, 128]);
        let out = Grid::new(&[512, 1024, 1024], &[64, 128, 128]).unwrap();
        let mut p = direct(&bounds, &out, 2, 256 << 20, 2).unwrap();
        assert_eq!(p.step, vec![2, 1, 1]);
        assert_eq!((p.decodes.total, p.decodes.most), (256, 1));
        widen(&mut p, &bounds, &out, 2, 256 << 20, 2);
        assert_eq!(p.step, vec![2, 1, 4]);
        assert_eq!((p.decodes.total, p.decodes.most), (256, 1));
        assert_eq!(brute(&bounds, &out, &p.step), (256, 1));
        // A budget whose blocks hold 6 MiB keeps the 4 MiB block (8 MiB would not fit).
        let tight = working_bytes(2, 4 << 20, 2 << 20) + (12 << 20);
        let mut q = direct(&bounds, &out, 2, tight, 2).unwrap();
        assert_eq!(q.step, vec![2, 1, 1]);
        widen(&mut q, &bounds, &out, 2, tight, 2);
        assert_eq!(q.step, vec![2, 1, 1]);
    }

    /// Decodes counted by brute force: every block of `step` output chunks against every
    /// source chunk.
    fn brute(bounds: &[Bounds], out: &Grid, step: &[u64]) -> (u64, u64) {
        let mut per_axis = Vec::new();
        for ((b, &t), (&n, &k)) in bounds
            .iter()
            .zip(out.chunk_shape())
            .zip(out.shape().iter().zip(step))
        {
            let len = k * t;
            let mut total = 0;
            let mut most = 0;
            for w in b.windows(2) {
                let mut hits = 0;
                let mut s = 0;
                while s < n {
                    let e = (s + len).min(n);
                    if s < w[1] && w[0] < e {
                        hits += 1;
                    }
                    s = e;
                }
                total += hits;
                most = most.max(hits);
            }
            per_axis.push((total, most));
        }
        per_axis
            .iter()
            .fold((1, 1), |(t, m), &(a, b)| (t * a, m * b))
    }

    #[test]
    fn axis_cost_equals_brute_force_including_periods() {
        for (n, c, len) in [
            (10_000u64, 3u64, 7u64),
            (9_999, 1, 64),
            (100_000, 5, 12),
            (5, 2, 1),
            (64, 64, 16),
        ] {
            let b = regular_bounds(&[n], &[c]);
            let g = Grid::new(&[n], &[len]).unwrap();
            let (want_total, want_most) = brute(&b, &g, &[1]);
            assert_eq!(
                axis_cost(&b[0], len),
                (want_total, want_most),
                "{n} {c} {len}"
            );
        }
    }

    #[test]
    fn slabs_to_columns_within_a_budget_that_holds_the_overlap_is_one_pass() {
        // 64 slabs of 512x512 u16 (32 MiB) into 64x16x16 columns with 80 MiB: one block
        // holds the whole overlap, each slab decoded once.
        let out = Grid::new(&[64, 512, 512], &[64, 16, 16]).unwrap();
        let src = regular_bounds(&[64, 512, 512], &[1, 512, 512]);
        let Some(Plan::Direct(p)) = plan(&src, &out, 2, 80 << 20, 2) else {
            panic!("one pass expected");
        };
        assert_eq!(p.decodes.most, 1);
        assert_eq!(p.decodes.total, 64);
        assert_eq!(
            brute(&src, &out, &p.step),
            (p.decodes.total, p.decodes.most)
        );
    }

    #[test]
    fn a_budget_below_the_overlap_goes_through_an_intermediate_both_ways() {
        let shape = [64u64, 512, 512];
        for (from, to) in [
            ([1u64, 512, 512], [64u64, 16, 16]),
            ([64, 16, 16], [1, 512, 512]),
        ] {
            let out = Grid::new(&shape, &to).unwrap();
            let src = regular_bounds(&shape, &from);
            let memory = 8 << 20;
            let plan = plan(&src, &out, 2, memory, 2).expect("a plan");
            let Plan::Staged {
                intermediate,
                first,
                second,
            } = plan
            else {
                panic!("{from:?} -> {to:?}: two passes expected, got {plan:?}");
            };
            assert_eq!(
                (first.decodes.most, second.decodes.most),
                (1, 1),
                "{from:?}"
            );
            let ig = Grid::new(&shape, &intermediate).unwrap();
            assert_eq!(brute(&src, &ig, &first.step).1, 1);
            assert_eq!(
                brute(&regular_bounds(&shape, &intermediate), &out, &second.step).1,
                1
            );
            // Each pass within the budget: two blocks and the working memory.
            for (p, cin, cout) in [
                (
                    &first,
                    largest_chunk(&src, 2),
                    ig.chunk_shape().iter().product::<u64>() * 2,
                ),
                (
                    &second,
                    ig.chunk_shape().iter().product::<u64>() * 2,
                    to.iter().product::<u64>() * 2,
                ),
            ] {
                assert!(2 * p.block_bytes + working_bytes(2, cin, cout) <= memory);
            }
        }
    }

    #[test]
    fn an_impossible_budget_has_no_plan() {
        let out = Grid::new(&[64, 512, 512], &[64, 16, 16]).unwrap();
        let src = regular_bounds(&[64, 512, 512], &[1, 512, 512]);
        // One source slab (512 KiB) per thread, twice, does not fit 1 MiB.
        assert_eq!(plan(&src, &out, 2, 1 << 20, 2), None);
    }

    proptest::proptest! {
        /// Whatever the two chunkings and the budget, a plan's blocks and working memory fit
        /// the budget, and the decodes it reports are the ones its blocks cost (counted by
        /// brute force); with no plan, the least memory said is more than the budget.
        #[test]
        fn plans_keep_their_budget_and_count_decodes(
            shape in proptest::collection::vec(1u64..300, 1..4),
            seed in proptest::collection::vec((1u64..80, 1u64..80), 3),
            memory in 1u64..(4 << 20),
            threads in 1usize..4,
        ) {
            let from: Vec<u64> = shape.iter().zip(&seed).map(|(&n, s)| s.0.min(n)).collect();
            let to: Vec<u64> = shape.iter().zip(&seed).map(|(&n, s)| s.1.min(n)).collect();
            let src = regular_bounds(&shape, &from);
            let out = Grid::new(&shape, &to).unwrap();
            let item = 2;
            let check = |p: &Pass, bounds: &[Bounds], g: &Grid| {
                let cin = largest_chunk(bounds, item);
                let cout = chunk_bytes(g.chunk_shape(), item);
                assert!(2 * p.block_bytes + working_bytes(threads, cin, cout) <= memory);
                assert_eq!(brute(bounds, g, &p.step), (p.decodes.total, p.decodes.most));
            };
            match plan(&src, &out, item, memory, threads) {
                Some(Plan::Direct(p)) => check(&p, &src, &out),
                Some(Plan::Staged { intermediate, first, second }) => {
                    let ig = Grid::new(&shape, &intermediate).unwrap();
                    check(&first, &src, &ig);
                    check(&second, &regular_bounds(&shape, &intermediate), &out);
                    assert!(first.decodes.most.max(second.decodes.most) >= 1);
                }
                None => assert!(least(&src, &out, item, threads) > memory),
            }
        }
    }

    #[test]
    fn same_chunks_decode_once() {
        let out = Grid::new(&[100, 100], &[10, 30]).unwrap();
        let src = regular_bounds(&[100, 100], &[10, 30]);
        let Some(Plan::Direct(p)) = plan(&src, &out, 4, 1 << 20, 2) else {
            panic!()
        };
        assert_eq!((p.decodes.total, p.decodes.most), (40, 1));
    }
}
