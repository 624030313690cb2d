//! Cumulative operations along an axis (`chunkwise cumsum|cumprod|cummax|cummin`,
//! spec/COMPUTE.md §10): numpy's `np.add.accumulate` and friends, in two passes. The first walks
//! every lane along the axis in order (tiles along the other axes in parallel) and keeps the
//! running value at the start of each output chunk: the carries. The second is a job like any
//! other kernel (resumable, partitionable): each output chunk starts from its carry and
//! accumulates its own elements in order. Every value is the same sequence of operations, in
//! the result type, that numpy performs, so float results equal numpy's bit for bit.
//! Invariant: the carry of output layer `l` of a lane is the running value of all elements
//! before position `l * chunk` of that lane.

use std::sync::Arc;

use rayon::prelude::*;

use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result, to_usize};
use crate::grid::indices_in;
use crate::halo::Boundary;
use crate::input::Input;
use crate::kernel::{Block, Kernel, OutBlock};
use crate::with_scalar;

/// Which accumulation.
///
/// ```
/// use chunkwise::CumOp;
/// assert_eq!("cumsum".parse::<CumOp>()?, CumOp::Sum);
/// assert_eq!(CumOp::Sum.output_dtype(chunkwise::DType::U16), chunkwise::DType::U64);
/// assert_eq!(CumOp::Max.output_dtype(chunkwise::DType::U16), chunkwise::DType::U16);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CumOp {
    /// `np.cumsum` (`np.add.accumulate`).
    Sum,
    /// `np.cumprod`.
    Prod,
    /// `np.maximum.accumulate` (NaN propagates).
    Max,
    /// `np.minimum.accumulate` (NaN propagates).
    Min,
}

impl CumOp {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            CumOp::Sum => "cumsum",
            CumOp::Prod => "cumprod",
            CumOp::Max => "cummax",
            CumOp::Min => "cummin",
        }
    }

    /// numpy's default result type: `cumsum`/`cumprod` of bool and ints widen to int64
    /// (unsigned: uint64), floats keep theirs; `cummax`/`cummin` keep the input's.
    pub fn output_dtype(self, t: DType) -> DType {
        match self {
            CumOp::Sum | CumOp::Prod => match t {
                DType::Bool | DType::I8 | DType::I16 | DType::I32 | DType::I64 => DType::I64,
                DType::U8 | DType::U16 | DType::U32 | DType::U64 => DType::U64,
                f => f,
            },
            CumOp::Max | CumOp::Min => t,
        }
    }
}

impl std::str::FromStr for CumOp {
    type Err = Error;
    fn from_str(s: &str) -> Result<CumOp> {
        match s {
            "cumsum" => Ok(CumOp::Sum),
            "cumprod" => Ok(CumOp::Prod),
            "cummax" => Ok(CumOp::Max),
            "cummin" => Ok(CumOp::Min),
            _ => Err(Error::option(
                "op",
                format!("{s:?}: give cumsum, cumprod, cummax or cummin"),
            )),
        }
    }
}

/// A value of the result type and the one step of the accumulation, as numpy computes it:
/// integers wrap, floats round in their own type, NaN propagates through max and min.
trait Step: Scalar {
    fn step(op: CumOp, acc: Self, x: Self) -> Self;
    /// `x` (of any input type) in this type, as numpy's cast does for these widenings.
    fn cast<I: Scalar>(x: I) -> Self;
}

macro_rules! int_step {
    ($($t:ty),*) => {$(
        impl Step for $t {
            #[inline]
            fn step(op: CumOp, acc: $t, x: $t) -> $t {
                match op {
                    CumOp::Sum => acc.wrapping_add(x),
                    CumOp::Prod => acc.wrapping_mul(x),
                    CumOp::Max => acc.max(x),
                    CumOp::Min => acc.min(x),
                }
            }
            #[inline]
            fn cast<I: Scalar>(x: I) -> $t {
                crate::reduce::int_value(x) as $t
            }
        }
    )*};
}
int_step!(u8, u16, u32, u64, i8, i16, i32, i64);

macro_rules! float_step {
    ($($t:ty),*) => {$(
        impl Step for $t {
            #[inline]
            fn step(op: CumOp, acc: $t, x: $t) -> $t {
                match op {
                    CumOp::Sum => acc + x,
                    CumOp::Prod => acc * x,
                    CumOp::Max => if acc.is_nan() || x.is_nan() { <$t>::NAN } else { acc.max(x) },
                    CumOp::Min => if acc.is_nan() || x.is_nan() { <$t>::NAN } else { acc.min(x) },
                }
            }
            #[inline]
            fn cast<I: Scalar>(x: I) -> $t {
                x.to_f64() as $t
            }
        }
    )*};
}
float_step!(f32, f64);

/// The carries: for each output layer along the axis, the running value of every lane (the
/// other axes' elements, C order) before that layer.
#[derive(Debug)]
struct Carries {
    /// Bytes of the result type, `layers * lanes` values.
    bytes: Vec<u8>,
    lanes: usize,
}

/// The second pass's kernel: each output chunk from its carries.
#[derive(Debug)]
pub struct Cumulative {
    op: CumOp,
    axis: usize,
    out_dtype: DType,
    chunk: u64,
    carries: Arc<Carries>,
    kept_shape: Vec<u64>,
}

impl Cumulative {
    /// Plans the accumulation of `input` along `axis` into output chunks of `chunk` elements
    /// along it: runs the first pass (every chunk of `input` read once) and holds the carries
    /// (`layers x` the other axes' size, in the result type).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an axis out of range or a zero chunk; input errors.
    pub fn plan(
        input: &Input,
        op: CumOp,
        axis: usize,
        out_dtype: Option<DType>,
        chunk: u64,
        run: &crate::RunOptions,
    ) -> Result<Cumulative> {
        let shape = input.shape().to_vec();
        let nd = shape.len();
        if axis >= nd {
            return Err(Error::option(
                "axis",
                format!(
                    "{axis} is out of range for the {nd}-d array {} ({})",
                    input.path().display(),
                    crate::region::fmt_shape(&shape)
                ),
            ));
        }
        if chunk == 0 {
            return Err(Error::option("chunks", "a chunk length of 0"));
        }
        let out_dtype = out_dtype.unwrap_or_else(|| op.output_dtype(input.dtype()));
        let kept_shape: Vec<u64> = (0..nd).filter(|&d| d != axis).map(|d| shape[d]).collect();
        let lanes = to_usize(kept_shape.iter().product::<u64>(), "the carries")?;
        let layers = to_usize(shape[axis].div_ceil(chunk), "the carries")?;
        let size = out_dtype.size();
        let total = lanes
            .checked_mul(layers)
            .and_then(|n| n.checked_mul(size))
            .ok_or_else(|| Error::option("memory", "the carries do not fit in memory"))?;
        let mut bytes = vec![0u8; total];
        let grid = input.block_grid().clone();
        let gshape = grid.grid_shape();
        let tiles = indices_in(
            &(0..nd)
                .map(|d| if d == axis { 0..1 } else { 0..gshape[d] })
                .collect::<Vec<_>>(),
        );
        // Each tile: its lanes' carries at every output layer, computed walking the axis.
        let per_tile: Vec<(Vec<usize>, Vec<u8>)> = crate::run::with_threads(run.threads, || {
            tiles
                .par_iter()
                .map(|tile| -> Result<(Vec<usize>, Vec<u8>)> {
                    run.check()?;
                    with_scalar!(out_dtype, O => {
                        tile_carries::<O>(input, &grid, tile, axis, op, chunk, layers, &kept_shape)
                    })
                })
                .collect()
        })?;
        for (lane_ids, vals) in per_tile {
            // vals: layers x tile lanes; lane_ids: the tile lanes' global lane indices.
            let n = lane_ids.len();
            for l in 0..layers {
                for (k, &lane) in lane_ids.iter().enumerate() {
                    let src = (l * n + k) * size;
                    let dst = (l * lanes + lane) * size;
                    bytes[dst..dst + size].copy_from_slice(&vals[src..src + size]);
                }
            }
        }
        Ok(Cumulative {
            op,
            axis,
            out_dtype,
            chunk,
            carries: Arc::new(Carries { bytes, lanes }),
            kept_shape,
        })
    }
}

/// The carries of one tile's lanes: the tile's global lane indices, and `layers x lanes`
/// values of `O`.
#[allow(clippy::too_many_arguments)]
fn tile_carries<O: Step>(
    input: &Input,
    grid: &crate::Grid,
    tile: &[u64],
    axis: usize,
    op: CumOp,
    chunk: u64,
    layers: usize,
    kept_shape: &[u64],
) -> Result<(Vec<usize>, Vec<u8>)> {
    let nd = tile.len();
    let treg = grid.chunk_region(tile);
    let kept: Vec<usize> = (0..nd).filter(|&d| d != axis).collect();
    let tshape: Vec<u64> = kept
        .iter()
        .map(|&d| treg.ranges()[d].end - treg.ranges()[d].start)
        .collect();
    let n = to_usize(tshape.iter().product::<u64>(), "a tile")?;
    // Global lane index of each of the tile's lanes (C order over the kept axes).
    let mut lane_ids = Vec::with_capacity(n);
    for local in indices_in(&tshape.iter().map(|&e| 0..e).collect::<Vec<_>>()) {
        let mut g = 0u64;
        for (k, &d) in kept.iter().enumerate() {
            g = g * kept_shape[k] + treg.ranges()[d].start + local[k];
        }
        lane_ids.push(g as usize);
    }
    let mut run: Vec<Option<O>> = vec![None; n];
    let mut carries: Vec<O> = vec![O::default(); layers * n];
    let along = grid.grid_shape()[axis];
    for c in 0..along {
        let mut idx = tile.to_vec();
        idx[axis] = c;
        let creg = grid.chunk_region(&idx);
        let cshape: Vec<usize> = creg.shape().iter().map(|&e| e as usize).collect();
        let len = cshape.iter().product::<usize>();
        let data: Vec<O> = with_scalar!(input.dtype(), I => {
            let mut raw = vec![I::default(); len];
            input.read_region_into(&creg, bytemuck::cast_slice_mut(&mut raw))?;
            raw.into_iter().map(O::cast).collect()
        });
        let start = creg.ranges()[axis].start;
        // Walk this chunk's positions along the axis in order; the lanes are the rest.
        let alen = cshape[axis];
        let inner: usize = cshape[axis + 1..].iter().product();
        let outer: usize = cshape[..axis].iter().product();
        for p in 0..alen {
            let pos = start + p as u64;
            if pos.is_multiple_of(chunk) {
                let l = (pos / chunk) as usize;
                for (k, r) in run.iter().enumerate() {
                    // Before the lane's first element there is nothing: numpy's first output
                    // is the first element itself (no identity is applied).
                    carries[l * n + k] = r.unwrap_or_default();
                }
            }
            for o in 0..outer {
                for i in 0..inner {
                    let x = data[(o * alen + p) * inner + i];
                    let k = o * inner + i;
                    run[k] = Some(match run[k] {
                        Some(acc) => O::step(op, acc, x),
                        None => x,
                    });
                }
            }
        }
    }
    Ok((lane_ids, bytemuck::cast_slice(&carries).to_vec()))
}

/// The accumulation of block `x` (C order, `shape`, the block at `region` of the array) along
/// `axis`, each lane starting from its carry (none for a block at the axis's start).
#[allow(clippy::too_many_arguments)]
fn accumulate<O: Step>(
    op: CumOp,
    x: &[O],
    shape: &[usize],
    axis: usize,
    start: u64,
    carries: &[O],
    region: &crate::Region,
    kept_shape: &[u64],
) -> Vec<O> {
    let nd = shape.len();
    let alen = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut y = vec![O::default(); x.len()];
    let mut acc: Vec<O> = vec![O::default(); inner];
    for o in 0..outer {
        // A lane is (o, i): its carry is at its index over the array's kept axes, those before
        // `axis` (from o), then those after it (from i).
        let mut rest = o;
        let mut before = vec![0u64; axis];
        for d in (0..axis).rev() {
            before[d] = (rest % shape[d]) as u64 + region.ranges()[d].start;
            rest /= shape[d];
        }
        for (i, a) in acc.iter_mut().enumerate() {
            let mut rest = i;
            let mut after = vec![0u64; nd - axis - 1];
            for d in (axis + 1..nd).rev() {
                after[d - axis - 1] = (rest % shape[d]) as u64 + region.ranges()[d].start;
                rest /= shape[d];
            }
            let g = before
                .iter()
                .chain(&after)
                .zip(kept_shape)
                .fold(0u64, |g, (&c, &n)| g * n + c);
            *a = if start > 0 {
                carries[g as usize]
            } else {
                O::default()
            };
        }
        for p in 0..alen {
            let row = (o * alen + p) * inner;
            for i in 0..inner {
                let v = if start == 0 && p == 0 {
                    x[row + i]
                } else {
                    O::step(op, acc[i], x[row + i])
                };
                acc[i] = v;
                y[row + i] = v;
            }
        }
    }
    y
}

impl Kernel for Cumulative {
    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 0); ndim])
    }

    fn boundary(&self) -> Boundary {
        Boundary::Constant(0.0)
    }

    fn output_dtype(&self, _inputs: &[DType]) -> Result<DType> {
        Ok(self.out_dtype)
    }

    fn describe(&self) -> String {
        format!(
            "{} axis={} dtype={} chunk={}",
            self.op.name(),
            self.axis,
            self.out_dtype,
            self.chunk
        )
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        let input = &inputs[0];
        let region = out.region().clone();
        let start = region.ranges()[self.axis].start;
        if !start.is_multiple_of(self.chunk) {
            return Err(Error::Internal(format!(
                "{}: an output block starting at {start} along axis {}, not a chunk boundary",
                out.key(),
                self.axis
            )));
        }
        let layer = (start / self.chunk) as usize;
        let axis = self.axis;
        let lanes = self.carries.lanes;
        let kept_shape = self.kept_shape.clone();
        with_scalar!(self.out_dtype, O => {
            // The block in the result type (one conversion: the loop below is generic over the
            // result type only), C order.
            let (x, shape): (Vec<O>, Vec<usize>) = with_scalar!(input.dtype(), I => {
                let v = input.view::<I>()?;
                (v.iter().map(|&e| O::cast(e)).collect(), v.shape().to_vec())
            });
            let carries: &[O] = bytemuck::cast_slice(&self.carries.bytes);
            let carries = &carries[layer * lanes..(layer + 1) * lanes];
            let y = accumulate(self.op, &x, &shape, axis, start, carries, &region, &kept_shape);
            match out.contiguous_mut::<O>() {
                Some(dst) => dst.copy_from_slice(&y),
                None => {
                    for (d, v) in out.view_mut::<O>()?.iter_mut().zip(y) {
                        *d = v;
                    }
                }
            }
        });
        Ok(())
    }
}
