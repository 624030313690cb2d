//! Regular chunk-grid arithmetic. Invariant: chunk sizes are non-zero; a chunk's region is clipped
//! to the array shape (an edge chunk is stored padded, but only its clipped region holds data).

use std::ops::Range;

use crate::error::{Error, Result};
use crate::region::Region;

/// The region of chunk `idx` of an explicit grid given by its boundaries per axis
/// ([`crate::Store::chunk_bounds`]).
pub(crate) fn edges_region(bounds: &[Vec<u64>], idx: &[u64]) -> Region {
    Region::new(
        bounds
            .iter()
            .zip(idx)
            .map(|(b, &i)| b[i as usize]..b[i as usize + 1])
            .collect(),
    )
}

/// The cartesian product of per-axis index lists, in C order.
pub(crate) fn product(per_axis: &[Vec<u64>]) -> Vec<Vec<u64>> {
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

/// The default chunk shape for an array of `shape`: 128 per axis for the last three axes, 1 on
/// leading axes beyond three; axes other than the first are clipped to the array (axis 0 is the
/// one arrays grow along, so it keeps the full chunk).
///
/// ```
/// use chunkwise::default_chunks;
/// assert_eq!(default_chunks(&[10, 2048, 50]), vec![128, 128, 50]);
/// assert_eq!(default_chunks(&[5, 300, 300, 300]), vec![1, 128, 128, 128]);
/// assert_eq!(default_chunks(&[1000]), vec![1 << 20]);
/// ```
pub fn default_chunks(shape: &[u64]) -> Vec<u64> {
    let n = shape.len();
    let mut c = vec![1u64; n];
    for (i, ci) in c.iter_mut().enumerate().skip(n.saturating_sub(3)) {
        *ci = 128;
        if i > 0 {
            *ci = (*ci).min(shape[i].max(1));
        }
    }
    if n == 1 {
        c[0] = 1 << 20;
    }
    c
}

/// A regular chunk grid over an array shape.
///
/// ```
/// use chunkwise::{Grid, Region};
/// let g = Grid::new(&[37, 29], &[16, 16])?;
/// assert_eq!((g.grid_shape(), g.num_chunks()), (vec![3, 2], 6));
/// assert_eq!(g.chunk_region(&[2, 1]), Region::new(vec![32..37, 16..29])); // clipped
/// assert_eq!(g.chunks_touching(&Region::new(vec![15..33, 0..1])), vec![0..3, 0..1]);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    shape: Vec<u64>,
    chunk: Vec<u64>,
}

impl Grid {
    /// A grid of `chunk`-sized chunks over `shape`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`--chunks`) if the ranks differ or a chunk size is zero.
    pub fn new(shape: &[u64], chunk: &[u64]) -> Result<Self> {
        if chunk.len() != shape.len() {
            return Err(Error::option(
                "chunks",
                format!(
                    "{} chunk sizes given for an array of {} dimensions (shape {})",
                    chunk.len(),
                    shape.len(),
                    crate::region::fmt_shape(shape)
                ),
            ));
        }
        if let Some(axis) = chunk.iter().position(|&c| c == 0) {
            return Err(Error::option(
                "chunks",
                format!("chunk size on axis {axis} is zero"),
            ));
        }
        Ok(Grid {
            shape: shape.to_vec(),
            chunk: chunk.to_vec(),
        })
    }

    /// The array shape.
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The (full) chunk shape.
    pub fn chunk_shape(&self) -> &[u64] {
        &self.chunk
    }

    /// Chunks per axis.
    pub fn grid_shape(&self) -> Vec<u64> {
        self.shape
            .iter()
            .zip(&self.chunk)
            .map(|(&n, &c)| n.div_ceil(c))
            .collect()
    }

    /// Total number of chunks (saturating at `u64::MAX`).
    pub fn num_chunks(&self) -> u64 {
        self.grid_shape()
            .iter()
            .fold(1u64, |n, &c| n.saturating_mul(c))
    }

    /// The region of the array a chunk covers, clipped to the array.
    pub fn chunk_region(&self, idx: &[u64]) -> Region {
        Region::new(
            idx.iter()
                .zip(&self.chunk)
                .zip(&self.shape)
                .map(|((&i, &c), &n)| {
                    let s = (i * c).min(n);
                    s..((i + 1) * c).min(n)
                })
                .collect(),
        )
    }

    /// The box of chunk indices whose chunks intersect `region`.
    pub fn chunks_touching(&self, region: &Region) -> Vec<Range<u64>> {
        region
            .ranges()
            .iter()
            .zip(&self.chunk)
            .map(|(r, &c)| {
                if r.start >= r.end {
                    0..0
                } else {
                    r.start / c..r.end.div_ceil(c)
                }
            })
            .collect()
    }
}

impl Grid {
    /// Splits a box of chunk indices into blocks for streaming: each block is one chunk deep
    /// along `axes[0]` (the axis the data is stored slowest along) and as wide on the other axes
    /// as fits `budget` bytes, splitting along `axes[1]`, then `axes[2]`, ... as needed. Blocks
    /// come in storage order (`axes[0]` outermost).
    pub fn blocks(
        &self,
        chunk_box: &[Range<u64>],
        axes: &[usize],
        itemsize: usize,
        budget: u64,
    ) -> Vec<Vec<Range<u64>>> {
        self.blocks_by(
            chunk_box,
            axes,
            &self.block_step(chunk_box, axes, itemsize, budget),
        )
    }

    /// Chunks per block along each axis for [`Grid::blocks`]: one along `axes[0]`, as many
    /// along the others as fit `budget` bytes.
    pub(crate) fn block_step(
        &self,
        chunk_box: &[Range<u64>],
        axes: &[usize],
        itemsize: usize,
        budget: u64,
    ) -> Vec<u64> {
        let ndim = chunk_box.len();
        // Chunks per block along each axis.
        let mut step: Vec<u64> = chunk_box
            .iter()
            .map(|r| r.end.saturating_sub(r.start).max(1))
            .collect();
        if let Some(&a0) = axes.first() {
            step[a0] = 1;
        }
        let bytes = |step: &[u64]| -> u128 {
            (0..ndim)
                .map(|a| u128::from(step[a]) * u128::from(self.chunk[a].min(self.shape[a].max(1))))
                .product::<u128>()
                * itemsize as u128
        };
        for &a in axes.iter().skip(1) {
            if bytes(&step) <= u128::from(budget) {
                break;
            }
            let mut one = step.clone();
            one[a] = 1;
            let per = bytes(&one).max(1);
            step[a] = u64::try_from(u128::from(budget) / per)
                .unwrap_or(u64::MAX)
                .clamp(1, step[a]);
        }
        step
    }

    /// Splits a box of chunk indices into blocks of `step` chunks per axis (fewer at the
    /// box's end), in storage order (`axes[0]` outermost).
    pub(crate) fn blocks_by(
        &self,
        chunk_box: &[Range<u64>],
        axes: &[usize],
        step: &[u64],
    ) -> Vec<Vec<Range<u64>>> {
        let ndim = chunk_box.len();
        // Blocks in storage order: iterate axes[0] slowest, then axes[1], ...
        let mut per_axis: Vec<Vec<Range<u64>>> = vec![Vec::new(); ndim];
        for a in 0..ndim {
            let r = &chunk_box[a];
            let mut s = r.start;
            while s < r.end {
                let e = (s + step[a].max(1)).min(r.end);
                per_axis[a].push(s..e);
                s = e;
            }
        }
        if per_axis.iter().any(Vec::is_empty) {
            return Vec::new();
        }
        let mut order: Vec<usize> = axes.to_vec();
        for a in 0..ndim {
            if !order.contains(&a) {
                order.push(a);
            }
        }
        let counts: Vec<Range<u64>> = order.iter().map(|&a| 0..per_axis[a].len() as u64).collect();
        indices_in(&counts)
            .into_iter()
            .map(|pick| {
                let mut b = vec![0..0; ndim];
                for (k, &a) in order.iter().enumerate() {
                    b[a] = per_axis[a][pick[k] as usize].clone();
                }
                b
            })
            .collect()
    }

    /// The array region a box of chunk indices covers (clipped to the array).
    pub fn box_region(&self, chunk_box: &[Range<u64>]) -> Region {
        Region::new(
            chunk_box
                .iter()
                .zip(&self.chunk)
                .zip(&self.shape)
                .map(|((r, &c), &n)| (r.start * c).min(n)..(r.end * c).min(n))
                .collect(),
        )
    }
}

/// The storage order of axes for data stored slowest along `slow_axis`: C order (0, 1, 2, ...)
/// or Fortran order (n-1, n-2, ..., 0).
pub fn storage_order(ndim: usize, slow_axis: usize) -> Vec<usize> {
    if slow_axis == 0 {
        (0..ndim).collect()
    } else {
        (0..ndim).rev().collect()
    }
}

/// Chunk indices of a box of the grid, in C (row-major) order.
pub fn indices_in(boxed: &[Range<u64>]) -> Vec<Vec<u64>> {
    let total: u64 = boxed
        .iter()
        .map(|r| r.end.saturating_sub(r.start))
        .product();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    if total == 0 {
        return out;
    }
    let mut idx: Vec<u64> = boxed.iter().map(|r| r.start).collect();
    loop {
        out.push(idx.clone());
        let mut axis = boxed.len();
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            idx[axis] += 1;
            if idx[axis] < boxed[axis].end {
                break;
            }
            idx[axis] = boxed[axis].start;
        }
    }
}

/// Per chunk layer (along axis 0): its stored chunks and all its chunks.
pub(crate) type LayerCounts = Vec<(u64, u64)>;

/// A set of chunk indices of a grid, one bit per chunk (128 KiB for 2^20 chunks): the chunks a
/// job has done, whatever their number.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkSet {
    shape: Vec<u64>,
    bits: Vec<u64>,
    len: u64,
}

impl ChunkSet {
    /// The empty set over a grid of `shape` chunks.
    pub(crate) fn new(shape: &[u64]) -> ChunkSet {
        let n: u64 = shape.iter().product();
        ChunkSet {
            shape: shape.to_vec(),
            bits: vec![0; n.div_ceil(64) as usize],
            len: 0,
        }
    }

    fn linear(&self, idx: &[u64]) -> Option<u64> {
        if idx.len() != self.shape.len() {
            return None;
        }
        let mut at = 0u64;
        for (&i, &n) in idx.iter().zip(&self.shape) {
            if i >= n {
                return None;
            }
            at = at * n + i;
        }
        Some(at)
    }

    /// Adds `idx` (an index outside the grid is ignored); whether it was new.
    pub(crate) fn insert(&mut self, idx: &[u64]) -> bool {
        let Some(at) = self.linear(idx) else {
            return false;
        };
        let (w, b) = ((at / 64) as usize, at % 64);
        let new = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        self.len += u64::from(new);
        new
    }

    pub(crate) fn contains(&self, idx: &[u64]) -> bool {
        self.linear(idx)
            .is_some_and(|at| self.bits[(at / 64) as usize] & (1 << (at % 64)) != 0)
    }

    /// Chunks in the set.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Per chunk layer (along axis 0): the chunks in the set and all chunks of the layer.
    pub(crate) fn layer_counts(&self) -> LayerCounts {
        let inner: u64 = self.shape.iter().skip(1).product();
        let layers = self.shape.first().copied().unwrap_or(0);
        (0..layers)
            .map(|z| (self.count_layers(z, z + 1), inner))
            .collect()
    }

    /// Chunks in the set with index along axis 0 in `l0..l1`.
    pub(crate) fn count_layers(&self, l0: u64, l1: u64) -> u64 {
        let inner: u64 = self.shape.iter().skip(1).product();
        (l0 * inner..l1 * inner)
            .filter(|&at| self.bits[(at / 64) as usize] & (1 << (at % 64)) != 0)
            .count() as u64
    }
}

/// The layers (along axis 0) of part `part` of `parts`: contiguous ranges of nearly equal
/// length, in order (spec/COMPUTE.md §7).
pub(crate) fn part_layers(layers: u64, part: u32, parts: u32) -> (u64, u64) {
    (
        layers * u64::from(part) / u64::from(parts),
        layers * u64::from(part + 1) / u64::from(parts),
    )
}

/// The layers of every part of `parts`, contiguous and in order, balanced by `counts` (the
/// stored chunks and all chunks of each layer, when known): each part gets about 1/N of the
/// work, an absent chunk counting as 1/1024 of a stored one; without counts, equal numbers
/// of layers (spec/SCALE.md §1).
///
/// ```text
/// stored [9, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1] of 9 chunks a layer, 2 parts -> [0..4, 4..13]
/// ```
pub(crate) fn split_layers(
    layers: u64,
    counts: Option<&[(u64, u64)]>,
    parts: u32,
) -> Vec<(u64, u64)> {
    let Some(counts) = counts.filter(|s| s.len() as u64 == layers) else {
        return (0..parts).map(|i| part_layers(layers, i, parts)).collect();
    };
    let weight: Vec<u128> = counts
        .iter()
        .map(|&(stored, all)| u128::from(stored) * 1024 + u128::from(all.saturating_sub(stored)))
        .collect();
    if weight.iter().all(|&w| w == 0) {
        return (0..parts).map(|i| part_layers(layers, i, parts)).collect();
    }
    // before[l]: the weight of the layers before layer l.
    let mut before = vec![0u128; weight.len() + 1];
    for (l, w) in weight.iter().enumerate() {
        before[l + 1] = before[l] + w;
    }
    let total = before[weight.len()];
    let n = u128::from(parts);
    // Part i starts at the layer boundary nearest to i/N of the total weight.
    let mut starts: Vec<u64> = (0..parts)
        .map(|i| {
            let target = total * u128::from(i);
            let l = before
                .partition_point(|&b| b * n <= target)
                .saturating_sub(1);
            let up = (l + 1).min(weight.len());
            let below = target - before[l] * n;
            let above = (before[up] * n).saturating_sub(target);
            (if above < below { up } else { l }) as u64
        })
        .collect();
    starts.push(layers);
    starts.windows(2).map(|w| (w[0], w[1])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_chunks_are_clipped() {
        let g = Grid::new(&[37, 29], &[16, 16]).unwrap();
        assert_eq!(g.grid_shape(), vec![3, 2]);
        assert_eq!(g.num_chunks(), 6);
        assert_eq!(g.chunk_region(&[2, 1]).ranges(), &[32..37, 16..29]);
        let r = Region::new(vec![15..33, 0..1]);
        assert_eq!(g.chunks_touching(&r), vec![0..3, 0..1]);
    }

    #[test]
    fn chunk_sets_count_once() {
        let mut s = ChunkSet::new(&[3, 70]);
        assert!(s.insert(&[2, 69]) && !s.insert(&[2, 69]));
        assert!(s.insert(&[0, 0]) && !s.insert(&[3, 0]) && !s.insert(&[0]));
        assert_eq!(s.len(), 2);
        assert!(s.contains(&[2, 69]) && !s.contains(&[1, 69]) && !s.contains(&[9, 9]));
        assert_eq!((s.count_layers(0, 1), s.count_layers(1, 3)), (1, 1));
    }

    #[test]
    fn parts_balance_stored_chunks() {
        let of9 = |s: &[u64]| s.iter().map(|&n| (n, 9)).collect::<Vec<_>>();
        let stored = of9(&[9, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(split_layers(13, Some(&stored), 2), vec![(0, 4), (4, 13)]);
        // Without counts (or with none stored): equal numbers of layers.
        assert_eq!(split_layers(10, None, 3), vec![(0, 3), (3, 6), (6, 10)]);
        assert_eq!(
            split_layers(4, Some(&of9(&[0; 4])), 2),
            vec![(0, 2), (2, 4)]
        );
        // Mostly absent layers of many chunks weigh by their count, not as one.
        let sparse: Vec<(u64, u64)> = (0..8).map(|l| (u64::from(l == 7) * 3, 16384)).collect();
        assert_eq!(split_layers(8, Some(&sparse), 2), vec![(0, 4), (4, 8)]);
        // More parts than layers: the parts cover every layer once, in order.
        for parts in 1..20 {
            for stored in [[5u64, 0, 1, 7].as_slice(), &[0, 0, 0, 1], &[1, 1, 1, 1]] {
                let s = split_layers(4, Some(&of9(stored)), parts);
                assert_eq!(s.len(), parts as usize);
                assert_eq!(s[0].0, 0);
                assert_eq!(s[parts as usize - 1].1, 4);
                assert!(s.windows(2).all(|w| w[0].1 == w[1].0 && w[0].0 <= w[0].1));
            }
        }
    }

    #[test]
    fn bad_chunks() {
        assert!(Grid::new(&[10, 10], &[0, 5]).is_err());
        assert!(Grid::new(&[10, 10], &[5]).is_err());
    }

    #[test]
    fn blocks_split_to_fit_the_budget() {
        let g = Grid::new(&[512, 1024, 1024], &[128, 128, 128]).unwrap();
        let all: Vec<_> = g.grid_shape().into_iter().map(|n| 0..n).collect();
        // A whole layer (128x1024x1024 u16 = 256 MiB) fits 256 MiB: 4 blocks.
        let b = g.blocks(&all, &[0, 1, 2], 2, 256 << 20);
        assert_eq!(b.len(), 4);
        assert_eq!(b[1], vec![1..2, 0..8, 0..8]);
        // 64 MiB: each layer splits into 4 blocks of 2 chunk rows.
        let b = g.blocks(&all, &[0, 1, 2], 2, 64 << 20);
        assert_eq!(b.len(), 16);
        assert_eq!(b[1], vec![0..1, 2..4, 0..8]);
        // Fortran storage: layers along the last axis.
        let b = g.blocks(&all, &[2, 1, 0], 2, 256 << 20);
        assert_eq!(b[0], vec![0..4, 0..8, 0..1]);
        assert_eq!(g.box_region(&b[0]).ranges(), &[0..512, 0..1024, 0..128]);
    }

    #[test]
    fn indices_c_order() {
        let v = indices_in(&[0..2, 1..3]);
        assert_eq!(v, vec![vec![0, 1], vec![0, 2], vec![1, 1], vec![1, 2]]);
        assert!(indices_in(&[0..0, 0..3]).is_empty());
        assert_eq!(indices_in(&[]), vec![Vec::<u64>::new()]);
    }
}
