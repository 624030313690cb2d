//! Reductions along axes with numpy's semantics (`chunkwise reduce --axis A --op OP`,
//! spec/REDUCE.md §7): the axes are reduced away (`max` along axis 0 of a 512x1024x1024
//! volume is a 1024x1024 image), every requested op in one pass.
//!
//! The output is cut into tiles, one per chunk position along the kept axes; a tile's
//! accumulator folds the chunks along the reduced axes in order (so a float result does not
//! depend on scheduling), and tiles run in parallel. Memory: the outputs, plus one tile
//! accumulator and one chunk per worker. Invariant: integer sums are exact (i128), and an
//! element's result depends only on its own values.

use std::path::Path;

use rayon::prelude::*;

use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result, to_usize};
use crate::grid::indices_in;
use crate::input::Input;
use crate::progress::{Tracker, Unit};
use crate::region::Region;
use crate::run::{RunOptions, run_setters, with_threads};

/// One reduction along axes, as numpy names it.
///
/// ```
/// use chunkwise::AxisOp;
/// assert_eq!("nanmax".parse::<AxisOp>()?, AxisOp::NanMax);
/// assert_eq!(AxisOp::Sum.output_dtype(chunkwise::DType::U16), chunkwise::DType::U64);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AxisOp {
    /// `np.sum`.
    Sum,
    /// `np.mean`.
    Mean,
    /// `np.std` (with `ddof`).
    Std,
    /// `np.var` (with `ddof`).
    Var,
    /// `np.min`.
    Min,
    /// `np.max`.
    Max,
    /// `np.argmin` (one axis).
    Argmin,
    /// `np.argmax` (one axis).
    Argmax,
    /// `np.count_nonzero`.
    CountNonzero,
    /// `np.any`.
    Any,
    /// `np.all`.
    All,
    /// `np.nansum`.
    NanSum,
    /// `np.nanmean`.
    NanMean,
    /// `np.nanstd` (with `ddof`).
    NanStd,
    /// `np.nanmin`.
    NanMin,
    /// `np.nanmax`.
    NanMax,
}

impl AxisOp {
    /// Every op, in the order `--help` lists them.
    pub const ALL: [AxisOp; 16] = [
        AxisOp::Sum,
        AxisOp::Mean,
        AxisOp::Std,
        AxisOp::Var,
        AxisOp::Min,
        AxisOp::Max,
        AxisOp::Argmin,
        AxisOp::Argmax,
        AxisOp::CountNonzero,
        AxisOp::Any,
        AxisOp::All,
        AxisOp::NanSum,
        AxisOp::NanMean,
        AxisOp::NanStd,
        AxisOp::NanMin,
        AxisOp::NanMax,
    ];

    /// numpy's name (`count_nonzero`, `nanmean`, ...).
    pub fn name(self) -> &'static str {
        match self {
            AxisOp::Sum => "sum",
            AxisOp::Mean => "mean",
            AxisOp::Std => "std",
            AxisOp::Var => "var",
            AxisOp::Min => "min",
            AxisOp::Max => "max",
            AxisOp::Argmin => "argmin",
            AxisOp::Argmax => "argmax",
            AxisOp::CountNonzero => "count_nonzero",
            AxisOp::Any => "any",
            AxisOp::All => "all",
            AxisOp::NanSum => "nansum",
            AxisOp::NanMean => "nanmean",
            AxisOp::NanStd => "nanstd",
            AxisOp::NanMin => "nanmin",
            AxisOp::NanMax => "nanmax",
        }
    }

    /// The type numpy gives the result for an input of type `t` (on a 64-bit platform).
    pub fn output_dtype(self, t: DType) -> DType {
        let float = t.is_float();
        match self {
            AxisOp::Sum | AxisOp::NanSum => match t {
                DType::Bool | DType::I8 | DType::I16 | DType::I32 | DType::I64 => DType::I64,
                DType::U8 | DType::U16 | DType::U32 | DType::U64 => DType::U64,
                f => f,
            },
            AxisOp::Mean | AxisOp::Std | AxisOp::Var | AxisOp::NanMean | AxisOp::NanStd => {
                if float { t } else { DType::F64 }
            }
            AxisOp::Min | AxisOp::Max | AxisOp::NanMin | AxisOp::NanMax => t,
            AxisOp::Argmin | AxisOp::Argmax | AxisOp::CountNonzero => DType::I64,
            AxisOp::Any | AxisOp::All => DType::Bool,
        }
    }

    fn needs_identity(self) -> bool {
        matches!(
            self,
            AxisOp::Min
                | AxisOp::Max
                | AxisOp::NanMin
                | AxisOp::NanMax
                | AxisOp::Argmin
                | AxisOp::Argmax
        )
    }
}

impl std::str::FromStr for AxisOp {
    type Err = Error;
    fn from_str(s: &str) -> Result<AxisOp> {
        AxisOp::ALL
            .iter()
            .copied()
            .find(|o| o.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = AxisOp::ALL.iter().map(|o| o.name()).collect();
                Error::option(
                    "op",
                    format!("unknown op {s:?}; the ops are {}", names.join(", ")),
                )
            })
    }
}

/// Settings of [`reduce_axes`].
#[derive(Clone, Debug, Default)]
pub struct AxisReduceOptions {
    ddof: u64,
    partition: Option<(u32, u32)>,
    run: RunOptions,
}

impl AxisReduceOptions {
    /// Do only part `I` of `N` ([`reduce_axes_to`]; spec/SCALE.md §1): a contiguous run of the
    /// result's tiles; the last part to finish writes the output.
    pub fn partition(mut self, part: Option<(u32, u32)>) -> Self {
        self.partition = part;
        self
    }

    /// Delta degrees of freedom of `std`/`var`/`nanstd` (numpy's `ddof`, default 0).
    pub fn ddof(mut self, ddof: u64) -> Self {
        self.ddof = ddof;
        self
    }
}

run_setters!(AxisReduceOptions);

/// One op's result: an array of the kept axes, C order, little-endian bytes of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisResult {
    /// The op.
    pub op: AxisOp,
    /// numpy's result type ([`AxisOp::output_dtype`]).
    pub dtype: DType,
    /// The input's shape without the reduced axes.
    pub shape: Vec<u64>,
    /// The values.
    pub bytes: Vec<u8>,
}

/// What a tile accumulates per output element, only the parts some requested op needs.
#[derive(Default)]
struct Acc {
    /// Values seen that are not NaN.
    n: Vec<u64>,
    /// Whether a NaN was seen (floats).
    nan: Vec<bool>,
    /// Exact integer sums.
    isum: Vec<i128>,
    /// Float sums (NaN skipped) with Neumaier's compensation.
    fsum: Vec<f64>,
    fcomp: Vec<f64>,
    /// Welford's running mean and sum of squared deviations (NaN skipped).
    mean: Vec<f64>,
    m2: Vec<f64>,
    /// Extremes (ints exact; floats with NaN skipped).
    imin: Vec<i128>,
    imax: Vec<i128>,
    fmin: Vec<f64>,
    fmax: Vec<f64>,
    /// Where along the reduced axis the extremes (and the first NaN) were.
    argmin: Vec<u64>,
    argmax: Vec<u64>,
    first_nan: Vec<u64>,
    /// Nonzero values (NaN counts as nonzero, as numpy's truth value does).
    nonzero: Vec<u64>,
}

/// Which parts of [`Acc`] the ops need.
#[derive(Clone, Copy, Default)]
struct Needs {
    sum: bool,
    moments: bool,
    min: bool,
    max: bool,
    args: bool,
    nonzero: bool,
}

impl Needs {
    /// Only a minimum and/or maximum, without positions.
    fn only_extremes(self) -> bool {
        (self.min || self.max) && !(self.sum || self.moments || self.args || self.nonzero)
    }

    fn of(ops: &[AxisOp]) -> Needs {
        let mut n = Needs::default();
        for op in ops {
            match op {
                AxisOp::Sum | AxisOp::NanSum | AxisOp::Mean | AxisOp::NanMean => n.sum = true,
                AxisOp::Std | AxisOp::Var | AxisOp::NanStd => n.moments = true,
                AxisOp::Min | AxisOp::NanMin => n.min = true,
                AxisOp::Max | AxisOp::NanMax => n.max = true,
                AxisOp::Argmin => {
                    n.min = true;
                    n.args = true;
                }
                AxisOp::Argmax => {
                    n.max = true;
                    n.args = true;
                }
                AxisOp::CountNonzero | AxisOp::Any | AxisOp::All => n.nonzero = true,
            }
        }
        n
    }
}

impl Acc {
    fn new(len: usize, needs: Needs, float: bool) -> Acc {
        fn v<T: Clone>(on: bool, len: usize, x: T) -> Vec<T> {
            if on { vec![x; len] } else { Vec::new() }
        }
        let sum_int = needs.sum && !float;
        let sum_float = needs.sum && float;
        Acc {
            // An integer element's count is the reduced length; only Welford's update needs
            // its running count.
            n: v(float || needs.moments, len, 0u64),
            nan: v(float, len, false),
            isum: v(sum_int, len, 0i128),
            fsum: v(sum_float, len, 0.0),
            fcomp: v(sum_float, len, 0.0),
            mean: v(needs.moments, len, 0.0),
            m2: v(needs.moments, len, 0.0),
            imin: v(needs.min && !float, len, i128::MAX),
            imax: v(needs.max && !float, len, i128::MIN),
            fmin: v(needs.min && float, len, f64::INFINITY),
            fmax: v(needs.max && float, len, f64::NEG_INFINITY),
            argmin: v(needs.args && needs.min, len, u64::MAX),
            argmax: v(needs.args && needs.max, len, u64::MAX),
            first_nan: v(needs.args && float, len, u64::MAX),
            nonzero: v(needs.nonzero, len, 0u64),
        }
    }

    /// An integer value `x` at reduced position `r` into element `o`.
    #[inline]
    fn add_int(&mut self, o: usize, x: i128, r: u64) {
        if !self.n.is_empty() {
            self.n[o] += 1;
        }
        if !self.isum.is_empty() {
            self.isum[o] += x;
        }
        if !self.mean.is_empty() {
            self.welford(o, x as f64);
        }
        if !self.imin.is_empty() && x < self.imin[o] {
            self.imin[o] = x;
            if !self.argmin.is_empty() {
                self.argmin[o] = r;
            }
        }
        if !self.imax.is_empty() && x > self.imax[o] {
            self.imax[o] = x;
            if !self.argmax.is_empty() {
                self.argmax[o] = r;
            }
        }
        if !self.nonzero.is_empty() && x != 0 {
            self.nonzero[o] += 1;
        }
    }

    /// A float value `x` at reduced position `r` into element `o`.
    #[inline]
    fn add_float(&mut self, o: usize, x: f64, r: u64) {
        if x.is_nan() {
            self.nan[o] = true;
            if !self.first_nan.is_empty() && self.first_nan[o] == u64::MAX {
                self.first_nan[o] = r;
            }
            if !self.nonzero.is_empty() {
                self.nonzero[o] += 1;
            }
            return;
        }
        self.n[o] += 1;
        if !self.fsum.is_empty() {
            let (s, c) = (self.fsum[o], &mut self.fcomp[o]);
            let t = s + x;
            *c += if s.abs() >= x.abs() {
                (s - t) + x
            } else {
                (x - t) + s
            };
            self.fsum[o] = t;
        }
        if !self.mean.is_empty() {
            self.welford(o, x);
        }
        let first = self.n[o] == 1;
        if !self.fmin.is_empty() && (x < self.fmin[o] || first && x <= self.fmin[o]) {
            self.fmin[o] = x;
            if !self.argmin.is_empty() {
                self.argmin[o] = r;
            }
        }
        if !self.fmax.is_empty() && (x > self.fmax[o] || first && x >= self.fmax[o]) {
            self.fmax[o] = x;
            if !self.argmax.is_empty() {
                self.argmax[o] = r;
            }
        }
        if !self.nonzero.is_empty() && x != 0.0 {
            self.nonzero[o] += 1;
        }
    }

    /// Integer values `row` at reduced position `r` into elements `o..o + row.len()`.
    fn add_int_row<T: Scalar>(&mut self, o: usize, row: &[T], r: u64) {
        let e = o + row.len();
        let x = |v: &T| crate::reduce::int_value(*v);
        if !self.n.is_empty() {
            for n in &mut self.n[o..e] {
                *n += 1;
            }
        }
        if !self.isum.is_empty() {
            for (s, v) in self.isum[o..e].iter_mut().zip(row) {
                *s += x(v);
            }
        }
        if !self.mean.is_empty() {
            for (j, v) in row.iter().enumerate() {
                self.welford(o + j, x(v) as f64);
            }
        }
        if !self.imin.is_empty() {
            if self.argmin.is_empty() {
                for (m, v) in self.imin[o..e].iter_mut().zip(row) {
                    *m = (*m).min(x(v));
                }
            } else {
                for (j, v) in row.iter().enumerate() {
                    let v = x(v);
                    if v < self.imin[o + j] {
                        self.imin[o + j] = v;
                        self.argmin[o + j] = r;
                    }
                }
            }
        }
        if !self.imax.is_empty() {
            if self.argmax.is_empty() {
                for (m, v) in self.imax[o..e].iter_mut().zip(row) {
                    *m = (*m).max(x(v));
                }
            } else {
                for (j, v) in row.iter().enumerate() {
                    let v = x(v);
                    if v > self.imax[o + j] {
                        self.imax[o + j] = v;
                        self.argmax[o + j] = r;
                    }
                }
            }
        }
        if !self.nonzero.is_empty() {
            for (c, v) in self.nonzero[o..e].iter_mut().zip(row) {
                *c += u64::from(x(v) != 0);
            }
        }
    }

    /// Float values `row` at reduced position `r` into elements `o..o + row.len()`.
    fn add_float_row<T: Scalar>(&mut self, o: usize, row: &[T], r: u64) {
        if !self.argmin.is_empty()
            || !self.argmax.is_empty()
            || row.iter().any(|v| v.to_f64().is_nan())
        {
            for (j, v) in row.iter().enumerate() {
                self.add_float(o + j, v.to_f64(), r);
            }
            return;
        }
        let e = o + row.len();
        for n in &mut self.n[o..e] {
            *n += 1;
        }
        if !self.fsum.is_empty() {
            for ((s, c), v) in self.fsum[o..e]
                .iter_mut()
                .zip(&mut self.fcomp[o..e])
                .zip(row)
            {
                let x = v.to_f64();
                let t = *s + x;
                *c += if s.abs() >= x.abs() {
                    (*s - t) + x
                } else {
                    (x - t) + *s
                };
                *s = t;
            }
        }
        if !self.mean.is_empty() {
            for (j, v) in row.iter().enumerate() {
                self.welford(o + j, v.to_f64());
            }
        }
        if !self.fmin.is_empty() {
            for (m, v) in self.fmin[o..e].iter_mut().zip(row) {
                let x = v.to_f64();
                if x < *m {
                    *m = x;
                }
            }
        }
        if !self.fmax.is_empty() {
            for (m, v) in self.fmax[o..e].iter_mut().zip(row) {
                let x = v.to_f64();
                if x > *m {
                    *m = x;
                }
            }
        }
        if !self.nonzero.is_empty() {
            for (c, v) in self.nonzero[o..e].iter_mut().zip(row) {
                *c += u64::from(v.to_f64() != 0.0);
            }
        }
    }

    #[inline]
    fn welford(&mut self, o: usize, x: f64) {
        let k = self.n[o] as f64;
        let d = x - self.mean[o];
        self.mean[o] += d / k;
        self.m2[o] += d * (x - self.mean[o]);
    }
}

/// What [`fold_block`] folds values into: a run of elements from one row, or one element.
trait Fold<T> {
    /// Values `row` at reduced position `r` into elements `o..o + row.len()`.
    fn row(&mut self, o: usize, row: &[T], r: u64);
    /// Value `v` at reduced position `r` into element `o`.
    fn one(&mut self, o: usize, v: T, r: u64);
}

impl<T: Scalar> Fold<T> for Acc {
    fn row(&mut self, o: usize, row: &[T], r: u64) {
        if T::DTYPE.is_float() {
            self.add_float_row(o, row, r);
        } else {
            self.add_int_row(o, row, r);
        }
    }

    #[inline]
    fn one(&mut self, o: usize, v: T, r: u64) {
        if T::DTYPE.is_float() {
            self.add_float(o, v.to_f64(), r);
        } else {
            self.add_int(o, crate::reduce::int_value(v), r);
        }
    }
}

/// An integer array's minimum and maximum without their positions, kept in the array's own
/// type: a compare-and-select on `T` vectorises where [`Acc`]'s exact `i128` fields cannot
/// (`reduce --op max` of uint16 and `preview`'s projection), and each tile's result is widened
/// into the `Acc` once, at its end.
struct Extremes<T> {
    min: Vec<T>,
    max: Vec<T>,
}

impl<T: Scalar> Extremes<T> {
    /// For the integer ops that need nothing else ([`Needs::only_extremes`]).
    fn new(len: usize, needs: Needs) -> Extremes<T> {
        let (lo, hi) = T::INT_RANGE.unwrap_or((0, 0));
        let v = |on: bool, x: i128| {
            if on {
                vec![T::from_i128(x); len]
            } else {
                Vec::new()
            }
        };
        Extremes {
            min: v(needs.min, hi),
            max: v(needs.max, lo),
        }
    }

    /// The extremes into `acc`'s exact fields.
    fn widen_into(&self, acc: &mut Acc) {
        for (a, &m) in acc.imin.iter_mut().zip(&self.min) {
            *a = (*a).min(crate::reduce::int_value(m));
        }
        for (a, &m) in acc.imax.iter_mut().zip(&self.max) {
            *a = (*a).max(crate::reduce::int_value(m));
        }
    }
}

impl<T: Scalar> Fold<T> for Extremes<T> {
    fn row(&mut self, o: usize, row: &[T], _: u64) {
        let e = o + row.len();
        if !self.min.is_empty() {
            // A select, stored whatever it picks: a branch-free loop that vectorises.
            for (m, &v) in self.min[o..e].iter_mut().zip(row) {
                *m = if v < *m { v } else { *m };
            }
        }
        if !self.max.is_empty() {
            for (m, &v) in self.max[o..e].iter_mut().zip(row) {
                *m = if v > *m { v } else { *m };
            }
        }
    }

    #[inline]
    fn one(&mut self, o: usize, v: T, _: u64) {
        if !self.min.is_empty() && v < self.min[o] {
            self.min[o] = v;
        }
        if !self.max.is_empty() && v > self.max[o] {
            self.max[o] = v;
        }
    }
}

/// Folds one block into `acc`: `data` is C order of `full` (a chunk padded to its full shape),
/// of which the box `shape` at its origin is inside the array; `stride[d]` is axis `d`'s
/// stride in the tile (0 for a reduced axis), `arg` the reduced axis and its first position in
/// the block, for argmin/argmax.
fn fold_block<T: Scalar, S: Fold<T>>(
    acc: &mut S,
    data: &[T],
    full: &[usize],
    shape: &[usize],
    stride: &[usize],
    arg: Option<(usize, u64)>,
) {
    let nd = shape.len();
    if nd == 0 || shape.contains(&0) {
        return;
    }
    let last = nd - 1;
    let n_last = shape[last];
    let mut fstride = vec![1usize; nd];
    for d in (0..last).rev() {
        fstride[d] = fstride[d + 1] * full[d + 1];
    }
    let rows: usize = shape[..last].iter().product();
    let mut idx = vec![0usize; last];
    let mut base = 0usize;
    let mut at = 0usize;
    let along_last = matches!(arg, Some((d, _)) if d == last);
    for _ in 0..rows {
        let row = &data[at..at + n_last];
        let r0 = match arg {
            Some((d, g)) if d < last => g + idx[d] as u64,
            Some((_, g)) => g,
            None => 0,
        };
        if stride[last] == 1 {
            // The last axis is kept: the row updates a run of the tile's elements, one field
            // at a time (tight loops the compiler vectorises where it can).
            acc.row(base, row, r0);
        } else {
            for (j, &v) in row.iter().enumerate() {
                let o = base + j * stride[last];
                let r = if along_last { r0 + j as u64 } else { r0 };
                acc.one(o, v, r);
            }
        }
        for d in (0..last).rev() {
            idx[d] += 1;
            base += stride[d];
            at += fstride[d];
            if idx[d] < shape[d] {
                break;
            }
            base -= stride[d] * shape[d];
            at -= fstride[d] * shape[d];
            idx[d] = 0;
        }
    }
}

/// Reduces `input` along `axes` with every op of `ops` in one pass (numpy's semantics:
/// `np.max(a, axis=0)`; the result arrays have the kept axes).
///
/// ```
/// use chunkwise::{AxisOp, AxisReduceOptions, Input};
/// let a = ndarray::arr2(&[[1u16, 5, 2], [4, 3, 9]]).into_dyn();
/// let r = chunkwise::reduce_axes(&Input::from_array(a.view())?, &[0],
///                                &[AxisOp::Max, AxisOp::Sum], &AxisReduceOptions::default())?;
/// assert_eq!(r[0].shape, vec![3]);
/// assert_eq!(bytemuck::cast_slice::<u8, u16>(&r[0].bytes), &[4, 5, 9]);
/// assert_eq!(r[1].dtype, chunkwise::DType::U64);   // numpy's sum of uint16
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidOption`] for an axis out of range or given twice, no op, `argmin`/`argmax`
/// over more than one axis, an op without identity over an empty axis; input errors.
pub fn reduce_axes(
    input: &Input,
    axes: &[usize],
    ops: &[AxisOp],
    opts: &AxisReduceOptions,
) -> Result<Vec<AxisResult>> {
    let (results, layout) = reduce_tiles(input, axes, ops, opts, None, None)?;
    layout.assemble(ops, std::iter::once(Ok(results)))
}

/// Where the tiles' values go: the result's shape, strides and the input type.
struct OutLayout {
    shape: Vec<u64>,
    strides: Vec<usize>,
    len: usize,
    dtype: DType,
}

impl OutLayout {
    /// The results of `ops` from the tiles' values (in any number of batches).
    fn assemble(
        &self,
        ops: &[AxisOp],
        batches: impl Iterator<Item = Result<Vec<(Region, Vec<Vec<u8>>)>>>,
    ) -> Result<Vec<AxisResult>> {
        let mut outs: Vec<Vec<u8>> = ops
            .iter()
            .map(|op| vec![0u8; self.len * op.output_dtype(self.dtype).size()])
            .collect();
        for batch in batches {
            for (kreg, vals) in batch? {
                for (out, (val, &op)) in outs.iter_mut().zip(vals.iter().zip(ops)) {
                    let size = op.output_dtype(self.dtype).size();
                    if val.len() != kreg.len() as usize * size {
                        return Err(Error::Internal(format!(
                            "a tile of {} holds {} bytes of {}",
                            kreg,
                            val.len(),
                            op.name()
                        )));
                    }
                    place(out, val, &kreg, &self.strides, size);
                }
            }
        }
        Ok(ops
            .iter()
            .zip(outs)
            .map(|(&op, bytes)| AxisResult {
                op,
                dtype: op.output_dtype(self.dtype),
                shape: self.shape.clone(),
                bytes,
            })
            .collect())
    }
}

/// Takes one tile's values as they are done (its chunk position along the kept axes, its
/// region of the result, each op's values), instead of keeping them.
pub(crate) type Emit<'a> = dyn Fn(&[u64], &Region, &[Vec<u8>]) -> Result<()> + Sync + 'a;

/// The tiles' values (all tiles, or part `I` of `N`'s contiguous run of them), each with its
/// region of the result; with `emit`, each tile goes there when done and none are kept.
#[allow(clippy::type_complexity)]
fn reduce_tiles(
    input: &Input,
    axes: &[usize],
    ops: &[AxisOp],
    opts: &AxisReduceOptions,
    part: Option<(u32, u32)>,
    emit: Option<&Emit<'_>>,
) -> Result<(Vec<(Region, Vec<Vec<u8>>)>, OutLayout)> {
    let shape = input.shape().to_vec();
    let nd = shape.len();
    if ops.is_empty() {
        return Err(Error::option("op", "give at least one op"));
    }
    if axes.is_empty() {
        return Err(Error::option("axis", "give at least one axis"));
    }
    for (i, &a) in axes.iter().enumerate() {
        if a >= nd {
            return Err(Error::option(
                "axis",
                format!(
                    "{a} is out of range for the {nd}-d array {} ({})",
                    input.path().display(),
                    crate::region::fmt_shape(&shape)
                ),
            ));
        }
        if axes[..i].contains(&a) {
            return Err(Error::option("axis", format!("axis {a} is given twice")));
        }
    }
    let args = ops
        .iter()
        .any(|o| matches!(o, AxisOp::Argmin | AxisOp::Argmax));
    if args && axes.len() > 1 {
        return Err(Error::option(
            "axis",
            "argmin and argmax reduce one axis (numpy's take a single axis)",
        ));
    }
    let reduced: u64 = axes.iter().map(|&a| shape[a]).product();
    if reduced == 0
        && let Some(op) = ops.iter().find(|o| o.needs_identity())
    {
        return Err(Error::option(
            "op",
            format!(
                "{}: the reduced axes are empty and {} has no identity (numpy raises \
                 \"zero-size array to reduction operation\")",
                input.path().display(),
                op.name()
            ),
        ));
    }
    let kept: Vec<usize> = (0..nd).filter(|d| !axes.contains(d)).collect();
    let out_shape: Vec<u64> = kept.iter().map(|&d| shape[d]).collect();
    let out_len = match emit {
        // Streamed: the result is never held whole.
        Some(_) => 0,
        None => to_usize(out_shape.iter().product::<u64>(), "the result")?,
    };
    let dtype = input.dtype();
    let float = dtype.is_float();
    let needs = Needs::of(ops);
    let grid = input.block_grid().clone();
    let gshape = grid.grid_shape();
    // Tiles: chunk positions along the kept axes; each folds the chunks along the reduced axes.
    let tile_ranges: Vec<std::ops::Range<u64>> = (0..nd)
        .map(|d| {
            if axes.contains(&d) {
                0..1
            } else {
                0..gshape[d]
            }
        })
        .collect();
    let red_ranges: Vec<std::ops::Range<u64>> = (0..nd)
        .map(|d| {
            if axes.contains(&d) {
                0..gshape[d]
            } else {
                0..1
            }
        })
        .collect();
    let mut tiles = indices_in(&tile_ranges);
    if let Some((i, n)) = part {
        // A part: a contiguous run of the tiles (each the same number of chunks).
        let (a, b) = crate::grid::part_layers(tiles.len() as u64, i, n);
        tiles = tiles[a as usize..b as usize].to_vec();
    }
    let full: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let fill: Vec<u8> = input
        .fill_bytes()
        .iter()
        .copied()
        .cycle()
        .take(full.iter().product::<usize>() * dtype.size())
        .collect();
    let stored = input.stored_chunks();
    let along = indices_in(&red_ranges);
    let tracker = Tracker::new(
        "reduce",
        Unit::Chunks,
        (tiles.len() * along.len()) as u64,
        opts.run.progress.clone(),
    );
    let out_strides: Vec<usize> = {
        let mut s = vec![1usize; kept.len()];
        for k in (0..kept.len().saturating_sub(1)).rev() {
            s[k] = s[k + 1] * out_shape[k + 1] as usize;
        }
        s
    };
    let ddof = opts.ddof;
    let results: Vec<(Region, Vec<Vec<u8>>)> = with_threads(opts.run.threads, || {
        tiles
            .par_iter()
            .map(|tile| -> Result<Option<(Region, Vec<Vec<u8>>)>> {
                // The tile: the kept axes' extent of this chunk position.
                let treg = grid.chunk_region(tile);
                let tshape: Vec<usize> = kept
                    .iter()
                    .map(|&d| (treg.ranges()[d].end - treg.ranges()[d].start) as usize)
                    .collect();
                let tlen: usize = tshape.iter().product();
                let mut tstride = vec![1usize; kept.len()];
                for k in (0..kept.len().saturating_sub(1)).rev() {
                    tstride[k] = tstride[k + 1] * tshape[k + 1];
                }
                let mut stride = vec![0usize; nd];
                for (k, &d) in kept.iter().enumerate() {
                    stride[d] = tstride[k];
                }
                let mut acc = Acc::new(tlen, needs, float);
                crate::with_scalar!(dtype, T => {
                    let mut ext = (!float && needs.only_extremes())
                        .then(|| Extremes::<T>::new(tlen, needs));
                    for a in &along {
                        opts.run.check()?;
                        let idx: Vec<u64> = (0..nd)
                            .map(|d| if axes.contains(&d) { a[d] } else { tile[d] })
                            .collect();
                        let creg = grid.chunk_region(&idx);
                        let cshape: Vec<usize> =
                            creg.shape().iter().map(|&n| n as usize).collect();
                        let arg = args.then(|| (axes[0], creg.ranges()[axes[0]].start));
                        // The chunk decoded whole (padded to the chunk shape); an absent one,
                        // all fill value, not asked of the store.
                        let absent = stored.as_ref().is_some_and(|s| !s.contains(&idx));
                        let block = if absent {
                            None
                        } else {
                            input.read_block(&idx)?
                        };
                        let bytes = block.as_deref().unwrap_or(&fill);
                        let owned;
                        let data: &[T] = match bytemuck::try_cast_slice(bytes) {
                            Ok(d) => d,
                            Err(_) => {
                                owned = bytemuck::pod_collect_to_vec::<u8, T>(bytes);
                                &owned
                            }
                        };
                        match &mut ext {
                            Some(e) => fold_block(e, data, &full, &cshape, &stride, arg),
                            None => fold_block(&mut acc, data, &full, &cshape, &stride, arg),
                        }
                        tracker.add(1);
                    }
                    if let Some(e) = &ext {
                        e.widen_into(&mut acc);
                    }
                });
                let vals: Vec<Vec<u8>> = ops
                    .iter()
                    .map(|&op| finish(&acc, op, dtype, reduced, ddof, tlen))
                    .collect();
                let kreg = Region::new(kept.iter().map(|&d| treg.ranges()[d].clone()).collect());
                if let Some(emit) = emit {
                    let at: Vec<u64> = kept.iter().map(|&d| tile[d]).collect();
                    emit(&at, &kreg, &vals)?;
                    return Ok(None);
                }
                Ok(Some((kreg, vals)))
            })
            .filter_map(Result::transpose)
            .collect::<Result<Vec<_>>>()
    })?;
    Ok((
        results,
        OutLayout {
            shape: out_shape,
            strides: out_strides,
            len: out_len,
            dtype,
        },
    ))
}

/// Copies a tile's values (C order over `reg`) into the output (strides `out_strides`).
pub(crate) fn place(out: &mut [u8], val: &[u8], reg: &Region, out_strides: &[usize], size: usize) {
    let shape: Vec<usize> = reg.shape().iter().map(|&n| n as usize).collect();
    if shape.is_empty() {
        out[..size].copy_from_slice(&val[..size]);
        return;
    }
    let last = shape.len() - 1;
    let row = shape[last] * size;
    if row == 0 {
        return;
    }
    let starts: Vec<usize> = reg.ranges().iter().map(|r| r.start as usize).collect();
    let mut idx = vec![0usize; last];
    for src in val.chunks_exact(row) {
        let off: usize = (0..last)
            .map(|k| (starts[k] + idx[k]) * out_strides[k])
            .sum::<usize>()
            + starts[last] * out_strides[last];
        out[off * size..off * size + row].copy_from_slice(src);
        for k in (0..last).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// The value of `op` for each of the tile's `len` elements, as bytes of its output type.
fn finish(acc: &Acc, op: AxisOp, dtype: DType, reduced: u64, ddof: u64, len: usize) -> Vec<u8> {
    let out = op.output_dtype(dtype);
    let float = dtype.is_float();
    let mut bytes = Vec::with_capacity(len * out.size());
    let nan = |o: usize| float && acc.nan[o];
    for o in 0..len {
        let n = if acc.n.is_empty() { reduced } else { acc.n[o] };
        match op {
            AxisOp::Sum | AxisOp::NanSum => {
                if float {
                    let s = if op == AxisOp::Sum && nan(o) {
                        f64::NAN
                    } else {
                        fsum(acc, o)
                    };
                    put_float(&mut bytes, out, s);
                } else {
                    put_int(&mut bytes, out, acc.isum[o]);
                }
            }
            AxisOp::Mean | AxisOp::NanMean => {
                let m = if op == AxisOp::Mean && nan(o) || n == 0 {
                    f64::NAN
                } else if float {
                    fsum(acc, o) / n as f64
                } else {
                    acc.isum[o] as f64 / n as f64
                };
                put_float(&mut bytes, out, m);
            }
            AxisOp::Std | AxisOp::Var | AxisOp::NanStd => {
                let v = if op != AxisOp::NanStd && nan(o) || n <= ddof {
                    f64::NAN
                } else {
                    // (Rounding can leave M2 a hair below zero; NaN, from an infinity, stays.)
                    let m2 = if acc.m2[o] < 0.0 { 0.0 } else { acc.m2[o] };
                    m2 / (n - ddof) as f64
                };
                put_float(
                    &mut bytes,
                    out,
                    if op == AxisOp::Var { v } else { v.sqrt() },
                );
            }
            AxisOp::Min | AxisOp::Max | AxisOp::NanMin | AxisOp::NanMax => {
                let is_min = matches!(op, AxisOp::Min | AxisOp::NanMin);
                if float {
                    let v = if (matches!(op, AxisOp::Min | AxisOp::Max) && nan(o)) || n == 0 {
                        f64::NAN
                    } else if is_min {
                        acc.fmin[o]
                    } else {
                        acc.fmax[o]
                    };
                    put_float(&mut bytes, out, v);
                } else {
                    put_int(
                        &mut bytes,
                        out,
                        if is_min { acc.imin[o] } else { acc.imax[o] },
                    );
                }
            }
            AxisOp::Argmin | AxisOp::Argmax => {
                let r = if nan(o) {
                    acc.first_nan[o]
                } else if op == AxisOp::Argmin {
                    acc.argmin[o]
                } else {
                    acc.argmax[o]
                };
                put_int(&mut bytes, out, i128::from(r));
            }
            AxisOp::CountNonzero => put_int(&mut bytes, out, i128::from(acc.nonzero[o])),
            AxisOp::Any => bytes.push(u8::from(acc.nonzero[o] > 0)),
            AxisOp::All => bytes.push(u8::from(acc.nonzero[o] == reduced)),
        }
    }
    bytes
}

/// The compensated float sum of element `o` (an infinite sum is that infinity: the
/// compensation is NaN then).
fn fsum(acc: &Acc, o: usize) -> f64 {
    let s = acc.fsum[o];
    if s.is_finite() { s + acc.fcomp[o] } else { s }
}

fn put_float(bytes: &mut Vec<u8>, t: DType, v: f64) {
    match t {
        DType::F32 => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
        _ => bytes.extend_from_slice(&v.to_le_bytes()),
    }
}

/// An integer result in type `t`, wrapping as numpy's fixed-width sums do.
fn put_int(bytes: &mut Vec<u8>, t: DType, v: i128) {
    let b = (v as u128).to_le_bytes();
    match t {
        DType::Bool | DType::U8 | DType::I8 => bytes.push(b[0]),
        DType::U16 | DType::I16 => bytes.extend_from_slice(&b[..2]),
        DType::U32 | DType::I32 => bytes.extend_from_slice(&b[..4]),
        DType::U64 | DType::I64 => bytes.extend_from_slice(&b[..8]),
        DType::F32 => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
        DType::F64 => bytes.extend_from_slice(&(v as f64).to_le_bytes()),
    }
}

/// Writes the results to `out`: one op to an `.npy` file (or a store, for a path ending in
/// `.zarr`), several to a directory of `OP.npy` files (or a Zarr group of one array per op).
///
/// # Errors
/// [`Error::OutputExists`] without `overwrite`; I/O errors.
pub fn write_axis_results(results: &[AxisResult], out: &Path, overwrite: bool) -> Result<()> {
    let is_zarr = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zarr"));
    let store = |r: &AxisResult, p: &Path| -> Result<()> {
        let shape: Vec<usize> = r.shape.iter().map(|&n| n as usize).collect();
        let o = crate::ConvertOptions::default().overwrite(overwrite);
        if r.dtype == DType::Bool {
            let data: Vec<bool> = r.bytes.iter().map(|&b| b != 0).collect();
            let a = ndarray::ArrayD::from_shape_vec(shape, data)
                .map_err(|e| Error::Internal(e.to_string()))?;
            crate::from_array(a.view(), p, &o)?;
            return Ok(());
        }
        crate::with_scalar!(r.dtype, T => {
            let data: Vec<T> = bytemuck::pod_collect_to_vec(&r.bytes);
            let a = ndarray::ArrayD::from_shape_vec(shape, data)
                .map_err(|e| Error::Internal(e.to_string()))?;
            crate::from_array(a.view(), p, &o)?;
        });
        Ok(())
    };
    let npy = |r: &AxisResult| -> Vec<u8> {
        let mut b = crate::npy::header_bytes(r.dtype, &r.shape);
        b.extend_from_slice(&r.bytes);
        b
    };
    match results {
        [one] if is_zarr => store(one, out),
        [one] => crate::store::write_output(out, &npy(one), overwrite),
        many => {
            if out.exists() && !overwrite {
                return Err(Error::OutputExists(out.to_path_buf()));
            }
            std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
            if is_zarr {
                write_group(out)?;
            }
            for r in many {
                if is_zarr {
                    store(r, &out.join(r.op.name()))?;
                } else {
                    crate::store::write_output(
                        &out.join(format!("{}.npy", r.op.name())),
                        &npy(r),
                        overwrite,
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// `op` along `axis` of `input`, each tile handed to `emit` as it is done (its chunk position
/// along the kept axes, its region of the result, the op's values): what `preview` draws from.
///
/// # Errors
/// As [`reduce_axes`].
pub(crate) fn project_tiles(
    input: &Input,
    axis: usize,
    op: AxisOp,
    run: &RunOptions,
    emit: &Emit<'_>,
) -> Result<()> {
    let opts = AxisReduceOptions {
        run: run.clone(),
        ..AxisReduceOptions::default()
    };
    reduce_tiles(input, &[axis], &[op], &opts, None, Some(emit)).map(|_| ())
}

/// Makes the directory `out` a Zarr v3 group (its `zarr.json`).
fn write_group(out: &Path) -> Result<()> {
    let group = serde_json::json!({"zarr_format": 3, "node_type": "group", "attributes": {}});
    let text = serde_json::to_string_pretty(&group).expect("plain JSON");
    crate::store::write_output(&out.join("zarr.json"), text.as_bytes(), true)
}

fn is_zarr(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zarr"))
}

/// [`reduce_axes_to`] into a store (one op) or a Zarr group of one store per op, written tile
/// by tile as the tiles are done: memory is bounded by the tiles being folded, never the
/// result (REDUCE §7: reducing the last axis of a huge volume leaves a huge result). Each
/// store is chunked as the input along the kept axes, a tile being one of its chunks; nothing
/// appears at `out` unless every array is written.
fn reduce_into_stores(
    input: &Input,
    axes: &[usize],
    ops: &[AxisOp],
    out: &Path,
    overwrite: bool,
    opts: &AxisReduceOptions,
) -> Result<()> {
    use crate::store::{StoreSpec, StoreWriter};
    let nd = input.shape().len();
    if axes.iter().any(|&a| a >= nd) || ops.is_empty() || axes.is_empty() {
        // reduce_tiles names the fault.
        reduce_tiles(input, axes, ops, opts, Some((0, u32::MAX)), None)?;
    }
    let kept: Vec<usize> = (0..nd).filter(|d| !axes.contains(d)).collect();
    if kept.is_empty() {
        return Err(Error::option(
            "axis",
            format!(
                "reducing every axis of {} leaves one value per op: write it to an .npy \
                 (a Zarr array here has at least one axis)",
                input.path().display()
            ),
        ));
    }
    let shape: Vec<u64> = kept.iter().map(|&d| input.shape()[d]).collect();
    let grid = input.block_grid();
    let chunk: Vec<u64> = kept.iter().map(|&d| grid.chunk_shape()[d]).collect();
    let several = ops.len() > 1;
    if several && out.exists() && !overwrite {
        return Err(Error::OutputExists(out.to_path_buf()));
    }
    let path_of = |op: AxisOp| {
        if several {
            out.join(op.name())
        } else {
            out.to_path_buf()
        }
    };
    // A group's directory first (its arrays are built beside their paths), its zarr.json
    // last; removed again if any array fails.
    let made_dir = several && !out.exists();
    if made_dir {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    let written = (|| -> Result<()> {
        let writers: Vec<StoreWriter> =
            ops.iter()
                .map(|&op| {
                    StoreSpec::new(shape.clone(), op.output_dtype(input.dtype()), chunk.clone())
                        .create(&path_of(op), overwrite, opts.run.durability)
                })
                .collect::<Result<_>>()?;
        let chunk_shape: Vec<usize> = chunk.iter().map(|&c| c as usize).collect();
        let strides = crate::copy::c_strides(&chunk_shape, 1);
        let emit = |at: &[u64], reg: &Region, vals: &[Vec<u8>]| -> Result<()> {
            for ((w, val), &op) in writers.iter().zip(vals).zip(ops) {
                let size = op.output_dtype(input.dtype()).size();
                if reg.shape() == chunk {
                    w.write_chunk(at, val)?;
                } else {
                    // An edge tile: padded to the chunk with the fill value (zero).
                    let local = Region::new(
                        reg.ranges()
                            .iter()
                            .zip(at.iter().zip(&chunk))
                            .map(|(r, (&i, &c))| r.start - i * c..r.end - i * c)
                            .collect(),
                    );
                    let mut buf = vec![0u8; w.chunk_bytes()];
                    place(&mut buf, val, &local, &strides, size);
                    w.write_chunk(at, &buf)?;
                }
            }
            Ok(())
        };
        reduce_tiles(input, axes, ops, opts, None, Some(&emit))?;
        for w in writers {
            w.commit()?;
        }
        if several {
            write_group(out)?;
        }
        Ok(())
    })();
    if written.is_err() && made_dir {
        let _ = std::fs::remove_dir_all(out);
    }
    written
}

/// A part's tiles, as bytes: for each tile its region (ndim, then start and end per axis) and
/// each op's values (length, then bytes), all little-endian u64.
fn encode_tiles(tiles: &[(Region, Vec<Vec<u8>>)]) -> Vec<u8> {
    let mut b = Vec::new();
    let u = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
    for (reg, vals) in tiles {
        u(&mut b, reg.ndim() as u64);
        for r in reg.ranges() {
            u(&mut b, r.start);
            u(&mut b, r.end);
        }
        for v in vals {
            u(&mut b, v.len() as u64);
            b.extend_from_slice(v);
        }
    }
    b
}

/// The tiles [`encode_tiles`] wrote (of `nops` ops each); `path` names the file in errors.
fn decode_tiles(bytes: &[u8], nops: usize, path: &Path) -> Result<Vec<(Region, Vec<Vec<u8>>)>> {
    let bad = || Error::bad_input(path, "a part's saved result is cut short or not ours");
    let mut at = 0usize;
    let u = |at: &mut usize| -> Result<u64> {
        let w = bytes.get(*at..*at + 8).ok_or_else(bad)?;
        *at += 8;
        Ok(u64::from_le_bytes(w.try_into().expect("8 bytes")))
    };
    let mut out = Vec::new();
    while at < bytes.len() {
        let nd = usize::try_from(u(&mut at)?).map_err(|_| bad())?;
        if nd > 64 {
            return Err(bad());
        }
        let mut ranges = Vec::with_capacity(nd);
        for _ in 0..nd {
            let (a, b) = (u(&mut at)?, u(&mut at)?);
            ranges.push(a..b.max(a));
        }
        let mut vals = Vec::with_capacity(nops);
        for _ in 0..nops {
            let n = usize::try_from(u(&mut at)?).map_err(|_| bad())?;
            let v = bytes
                .get(at..at.checked_add(n).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            vals.push(v.to_vec());
            at += n;
        }
        out.push((Region::new(ranges), vals));
    }
    Ok(out)
}

/// Reduces `input` along `axes` with `ops` and writes the results to `out` (as
/// [`write_axis_results`]); with [`AxisReduceOptions::partition`], only this part's tiles, the
/// last part to finish writing `out` from every part's (spec/SCALE.md §1-§2: the same file one
/// process writes). Returns `Some((done, total))` parts for a part that did not write `out`.
///
/// # Errors
/// As [`reduce_axes`] and [`write_axis_results`]; for a part, those of the parts' directory
/// (another N than the job's, a part running elsewhere, another job under way at `out`).
pub fn reduce_axes_to(
    input: &Input,
    axes: &[usize],
    ops: &[AxisOp],
    out: &Path,
    overwrite: bool,
    opts: &AxisReduceOptions,
) -> Result<Option<(u32, u32)>> {
    let Some(part) = opts.partition else {
        if is_zarr(out) {
            reduce_into_stores(input, axes, ops, out, overwrite, opts)?;
            return Ok(None);
        }
        let r = reduce_axes(input, axes, ops, opts)?;
        write_axis_results(&r, out, overwrite)?;
        return Ok(None);
    };
    let names: Vec<&str> = ops.iter().map(|o| o.name()).collect();
    let settings = format!(
        "chunkwise reduce v1\naxes {axes:?}\nops {}\nddof {}\ninput: {}\n",
        names.join(","),
        opts.ddof,
        input.identity()
    );
    let fingerprint = crate::fingerprint::fnv1a(&settings);
    let parts = crate::store::Parts::open(out, &fingerprint, &settings, part, overwrite)?;
    let mut layout = None;
    if !parts.saved() {
        let (tiles, l) = reduce_tiles(input, axes, ops, opts, Some(part), None)?;
        parts.save(&encode_tiles(&tiles))?;
        layout = Some(l);
    }
    let layout = match layout {
        Some(l) => l,
        // Resumed after the save: the layout of the result (no tile is read).
        None => reduce_tiles(input, axes, ops, opts, Some((0, u32::MAX)), None)?.1,
    };
    let finish = parts.finish(|files, out, overwrite| {
        let batches = files.iter().map(|f| {
            let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
            decode_tiles(&bytes, ops.len(), f)
        });
        let results = layout.assemble(ops, batches)?;
        write_axis_results(&results, out, overwrite)
    })?;
    Ok(match finish {
        crate::store::PartsFinish::Combined => None,
        crate::store::PartsFinish::Waiting { done, total } => Some((done, total)),
    })
}
