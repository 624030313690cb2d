//! One-pass reductions over the chunks of an array (spec/REDUCE.md): the [`Reduction`] trait,
//! the parallel driver, and the built-in statistics, per-axis statistics, per-chunk block sums
//! and histograms.
//!
//! Every chunk touching the region is decoded once, folded into its own accumulator on some
//! worker, and the accumulators are combined **in chunk order** (C order) as they complete: the
//! result does not depend on the number of threads or on scheduling, to the last bit.
//! Invariant: memory is the chunks in flight and the partial results waiting for an earlier
//! chunk, never the array.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use ndarray::{ArrayViewD, Axis};
use rayon::prelude::*;
use serde_json::{Value, json};

use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result};
use crate::grid::ChunkSet;
use crate::input::Input;
use crate::kernel::{Block, Scratch};
use crate::progress::{Tracker, Unit};
use crate::region::Region;
use crate::run::with_threads;
use crate::run::{RunOptions, run_setters};
use crate::with_scalar;

/// A one-pass reduction: an identity, a fold of one chunk's part of the region, and an
/// associative combination of two partial results.
///
/// ```
/// use chunkwise::kernel::Block;
/// use chunkwise::{Input, ReduceOptions, Reduction};
/// struct Zeros; // counts the zero voxels
/// impl Reduction for Zeros {
///     type Acc = u64;
///     fn identity(&self) -> u64 { 0 }
///     fn fold(&self, acc: &mut u64, part: &Block<'_>) -> chunkwise::Result<()> {
///         *acc += part.valid_view::<u8>()?.iter().filter(|&&v| v == 0).count() as u64;
///         Ok(())
///     }
///     fn combine(&self, a: &mut u64, b: u64) { *a += b; }
/// }
/// let a = ndarray::arr1(&[0u8, 3, 0, 7]).into_dyn();
/// let input = Input::from_array(a.view())?;
/// let zeros = chunkwise::reduce(&input, &Zeros, &ReduceOptions::default())?;
/// assert_eq!(zeros, 2);
/// # Ok::<(), chunkwise::Error>(())
/// ```
pub trait Reduction: Sync {
    /// The partial result.
    type Acc: Send;

    /// The result of reducing nothing.
    fn identity(&self) -> Self::Acc;

    /// Folds one chunk's part of the region (`part.valid_view::<T>()`, at array coordinates
    /// `part.origin()` + `part.valid()` starts) into `acc`.
    ///
    /// # Errors
    /// Whatever the reduction cannot take (a dtype, a value), naming what and where.
    fn fold(&self, acc: &mut Self::Acc, part: &Block<'_>) -> Result<()>;

    /// Combines `b` (the later chunks in C order) into `a`.
    fn combine(&self, a: &mut Self::Acc, b: Self::Acc);

    /// Folds a part that is one value throughout (an absent chunk: all fill value; the value
    /// is `part`'s first element) without visiting every element, if the reduction can;
    /// `Ok(false)` (the default) folds it element by element instead.
    ///
    /// # Errors
    /// As [`Reduction::fold`].
    fn fold_constant(&self, acc: &mut Self::Acc, part: &Block<'_>) -> Result<bool> {
        let _ = (acc, part);
        Ok(false)
    }

    /// Whether each fold must see exactly one stored chunk (a result per chunk), also in a
    /// rectilinear grid, which is otherwise read by blocks of its longest edges.
    fn per_stored_chunk(&self) -> bool {
        false
    }
}

/// Two reductions in one pass (nest pairs for more).
impl<A: Reduction, B: Reduction> Reduction for (A, B) {
    type Acc = (A::Acc, B::Acc);

    fn identity(&self) -> Self::Acc {
        (self.0.identity(), self.1.identity())
    }

    fn fold(&self, acc: &mut Self::Acc, part: &Block<'_>) -> Result<()> {
        self.0.fold(&mut acc.0, part)?;
        self.1.fold(&mut acc.1, part)
    }

    fn combine(&self, a: &mut Self::Acc, b: Self::Acc) {
        self.0.combine(&mut a.0, b.0);
        self.1.combine(&mut a.1, b.1);
    }
}

/// A part's valid region in array coordinates.
fn valid_region(part: &Block<'_>) -> Region {
    Region::new(
        part.valid()
            .iter()
            .zip(part.origin())
            .map(|(v, &o)| (o as u64 + v.start as u64)..(o as u64 + v.end as u64))
            .collect(),
    )
}

/// The first element of a block and the number of elements in its valid region.
fn constant_of<T: Scalar>(part: &Block<'_>) -> Result<(T, u64)> {
    let v = part.valid_view::<T>()?;
    let n = v.len() as u64;
    let x = v.iter().next().copied().unwrap_or_else(|| T::from_f64(0.0));
    Ok((x, n))
}

/// Settings of a reduction pass.
///
/// ```
/// use chunkwise::{Input, ReduceOptions, Region, Stats};
/// let a = ndarray::ArrayD::<u8>::ones(vec![100, 100]);
/// let opts = ReduceOptions::default()
///     .region(Some(Region::new(vec![0..10, 0..20])))
///     .threads(Some(2));
/// let s = chunkwise::reduce(&Input::from_array(a.view())?, &Stats, &opts)?;
/// assert_eq!(s.count, 200);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ReduceOptions {
    region: Option<Region>,
    /// The chunk layers (along axis 0) to fold, for a part of a partitioned reduction.
    layers: Option<(u64, u64)>,
    run: RunOptions,
}

impl std::fmt::Debug for ReduceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReduceOptions")
            .field("run", &self.run)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl ReduceOptions {
    /// Reduce only this region (default: the whole array).
    pub fn region(mut self, region: Option<Region>) -> Self {
        self.region = region;
        self
    }
}

run_setters!(ReduceOptions);

/// Runs `r` over the array (or the options' region) in one pass.
///
/// ```no_run
/// use chunkwise::{Input, ReduceOptions, Stats};
/// let s = chunkwise::reduce(&Input::open("volume.zarr")?, &Stats, &ReduceOptions::default())?;
/// println!("sum {:?}, mean {:?}, std {:?}", s.int_sum(), s.mean(), s.std());
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::BadRegion`] for a region outside the array, [`crate::StoreError::CorruptChunk`] naming a chunk
/// that does not decode, and the reduction's own errors.
pub fn reduce<R: Reduction>(input: &Input, r: &R, opts: &ReduceOptions) -> Result<R::Acc> {
    let stored = input.stored_chunks();
    let mut layers = with_threads(opts.run.threads, || {
        reduce_in_pool(input, r, opts, stored.as_ref(), false)
    })?;
    Ok(layers.pop().unwrap_or_else(|| r.identity()))
}

/// The chunk layers of `input` that parts split (along axis 0 of the units a reduction
/// folds), and their stored chunks (from `stored`) when they are the regular grid's.
fn reduce_layers(
    input: &Input,
    r: &impl Reduction,
    stored: Option<&ChunkSet>,
) -> Result<(u64, Option<crate::grid::LayerCounts>)> {
    let rectilinear = input.store().filter(|s| s.chunk_shape().is_none());
    if let Some(s) = rectilinear.filter(|_| r.per_stored_chunk()) {
        let edges = s.chunk_bounds()?;
        return Ok((edges.first().map_or(1, |e| e.len() as u64 - 1), None));
    }
    let layers = input
        .block_grid()
        .grid_shape()
        .first()
        .copied()
        .unwrap_or(1);
    Ok((layers, stored.map(ChunkSet::layer_counts)))
}

/// Folds the chunks of the region in C order. Chunks are combined in order within each chunk
/// layer (along axis 0), and layers in order into the total: the same order whether the
/// layers are folded by one process or by the parts of a partitioned run, so that both give
/// the same result to the last bit. `stored`: the input's stored chunks, when known (the rest
/// is folded as fill value without asking the store). Returns `[total]`, or with `per_layer`
/// one partial result per layer folded.
fn reduce_in_pool<R: Reduction>(
    input: &Input,
    r: &R,
    opts: &ReduceOptions,
    stored: Option<&ChunkSet>,
    per_layer: bool,
) -> Result<Vec<R::Acc>> {
    let full = Region::full(input.shape());
    let region = opts.region.clone().unwrap_or_else(|| full.clone());
    if region.ndim() != full.ndim() || !full.contains(&region) {
        return Err(Error::BadRegion {
            spec: region.to_string(),
            reason: format!(
                "outside the array of shape {}",
                crate::region::fmt_shape(input.shape())
            ),
        });
    }
    let grid = input.block_grid();
    // The units folded one at a time: the regular grid's chunks (or blocks of a rectilinear
    // grid's longest edges), or, for a reduction per stored chunk, the stored chunks
    // themselves (rectilinear edges included).
    let rectilinear = input.store().filter(|s| s.chunk_shape().is_none());
    let exact = r.per_stored_chunk() && rectilinear.is_some();
    // The units to fold: a box of chunk indices (never a list: 2^20 chunks are 2^20 indices
    // computed as they are handed out), restricted to a part's layers.
    let mut units: Vec<std::ops::Range<u64>> = if let Some(s) = rectilinear.filter(|_| exact) {
        s.chunk_bounds()?
            .iter()
            .zip(region.ranges())
            .map(|(e, r)| {
                if r.is_empty() {
                    return 0..0;
                }
                // The stored chunks [e[i], e[i + 1]) meeting r.
                let first = e[1..].partition_point(|&end| end <= r.start) as u64;
                let last = e[..e.len() - 1].partition_point(|&start| start < r.end) as u64;
                first..last.max(first)
            })
            .collect()
    } else {
        grid.chunks_touching(&region)
    };
    if let (Some((l0, l1)), Some(z)) = (opts.layers, units.first_mut()) {
        let start = z.start.max(l0);
        *z = start..z.end.min(l1).max(start);
    }
    let total: u64 = units.iter().map(|r| r.end - r.start).product();
    let stored = stored.filter(|_| !exact);
    let unit = |mut k: u64| -> Vec<u64> {
        let mut idx = vec![0; units.len()];
        for (a, r) in units.iter().enumerate().rev() {
            let n = r.end - r.start;
            idx[a] = r.start + k % n;
            k /= n;
        }
        idx
    };
    let edges = match rectilinear.filter(|_| exact) {
        Some(s) => s.chunk_bounds()?,
        None => Vec::new(),
    };
    let tracker = Tracker::new("reduce", Unit::Chunks, total, opts.run.progress.clone());
    let itemsize = input.dtype().size();
    let cshape: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let chunk_bytes = cshape.iter().product::<usize>() * itemsize;
    let fill: Vec<u8> = input
        .fill_bytes()
        .iter()
        .copied()
        .cycle()
        .take(chunk_bytes)
        .collect();
    // Chunks are handed out in C order; each partial result is combined as soon as every
    // earlier one has been: in C order, whatever the scheduling, with no barrier.
    struct Ordered<A> {
        next: usize,
        pending: BTreeMap<usize, A>,
        /// The layer being combined, and its partial result.
        layer: Option<(u64, A)>,
        /// The layers' results (one, the running total, unless `per_layer`).
        done: Vec<A>,
    }
    let layer_units: u64 = units.iter().skip(1).map(|r| r.end - r.start).product();
    let layer_of = |k: usize| {
        units
            .first()
            .map_or(0, |z| z.start + k as u64 / layer_units.max(1))
    };
    let state = Mutex::new(Ordered {
        next: 0,
        pending: BTreeMap::new(),
        layer: None,
        done: if per_layer {
            Vec::new()
        } else {
            vec![r.identity()]
        },
    });
    let close_layer = |st: &mut Ordered<R::Acc>, acc: R::Acc| {
        if per_layer {
            st.done.push(acc);
        } else {
            r.combine(&mut st.done[0], acc);
        }
    };
    (0..total)
        .map(|k| (k as usize, unit(k)))
        .par_bridge()
        .try_for_each(|(k, idx)| -> Result<()> {
            let idx = &idx;
            opts.run.check()?;
            let creg = if exact {
                crate::grid::edges_region(&edges, idx)
            } else {
                grid.chunk_region(idx)
            };
            let part = creg.intersect(&region).expect("same rank");
            let mut acc = r.identity();
            if !part.is_empty() {
                // A stored chunk of a rectilinear grid is read as its region (exactly its
                // shape); a grid chunk decoded whole (padded to the chunk shape).
                let (decoded, shape) = if exact {
                    let n = crate::error::to_usize(
                        u64::try_from(creg.len()).unwrap_or(u64::MAX),
                        "chunk",
                    )?;
                    let mut buf = vec![0u8; n * itemsize];
                    input.read_region_into(&creg, &mut buf)?;
                    (
                        Some(buf),
                        creg.shape().iter().map(|&n| n as usize).collect(),
                    )
                } else {
                    // A chunk the directory walk did not find is absent: not asked of the
                    // store (whose per-key bookkeeping would grow with every chunk asked).
                    let absent = stored.is_some_and(|s| !s.contains(idx));
                    let data = if absent { None } else { input.read_block(idx)? };
                    (data, cshape.clone())
                };
                let absent = decoded.is_none();
                let bytes: &[u8] = decoded.as_deref().unwrap_or(&fill);
                // Typed views need alignment: copy into an aligned buffer if the decoder's
                // is not.
                let mut aligned = None;
                let bytes = if (bytes.as_ptr() as usize).is_multiple_of(8) {
                    bytes
                } else {
                    let mut s = Scratch::new(bytes.len());
                    s.slice_mut::<u8>(bytes.len()).copy_from_slice(bytes);
                    aligned.insert(s).slice::<u8>(bytes.len())
                };
                let block = Block {
                    dtype: input.dtype(),
                    bytes,
                    shape,
                    valid: part
                        .ranges()
                        .iter()
                        .zip(creg.ranges())
                        .map(|(p, c)| (p.start - c.start) as usize..(p.end - c.start) as usize)
                        .collect(),
                    origin: creg.start().iter().map(|&s| s as i64).collect(),
                    array_shape: input.shape().to_vec(),
                };
                // An absent chunk is one value: folded at once where the reduction can.
                if !(absent && r.fold_constant(&mut acc, &block)?) {
                    r.fold(&mut acc, &block)?;
                }
            }
            tracker.add(1);
            let mut st = state.lock().expect("no panics holding the results");
            st.pending.insert(k, acc);
            loop {
                let next = st.next;
                let Some(a) = st.pending.remove(&next) else {
                    break;
                };
                let z = layer_of(next);
                match st.layer.take() {
                    Some((l, mut acc)) if l == z => {
                        r.combine(&mut acc, a);
                        st.layer = Some((l, acc));
                    }
                    other => {
                        if let Some((_, acc)) = other {
                            close_layer(&mut st, acc);
                        }
                        let mut acc = r.identity();
                        r.combine(&mut acc, a);
                        st.layer = Some((z, acc));
                    }
                }
                st.next += 1;
            }
            Ok(())
        })?;
    let mut st = state.into_inner().expect("no panics holding the results");
    if let Some((_, acc)) = st.layer.take() {
        close_layer(&mut st, acc);
    }
    Ok(st.done)
}

// ---------------------------------------------------------------- statistics

/// count, min, max, sum, mean and std (population) in one pass (spec/REDUCE.md §2).
///
/// ```
/// use chunkwise::{Input, ReduceOptions, Stats};
/// let a = ndarray::arr1(&[2u16, 4, 4, 4, 5, 5, 7, 9]).into_dyn();
/// let s = chunkwise::reduce(&Input::from_array(a.view())?, &Stats, &ReduceOptions::default())?;
/// assert_eq!((s.count, s.int_sum(), s.int_range()), (8, Some(40), Some((2, 9))));
/// assert_eq!((s.mean(), s.std()), (Some(5.0), Some(2.0)));
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats;

/// The running statistics of a set of values.
///
/// ```
/// use chunkwise::{Input, ReduceOptions, Stats};
/// let a = ndarray::arr1(&[1.0f64, f64::NAN, 3.0]).into_dyn();
/// let s = chunkwise::reduce(&Input::from_array(a.view())?, &Stats, &ReduceOptions::default())?;
/// assert_eq!((s.count, s.nan), (2, 1)); // NaNs are counted apart
/// assert_eq!((s.min(), s.max(), s.mean()), (Some(1.0), Some(3.0), Some(2.0)));
/// assert_eq!(s.int_sum(), None); // exact sums are for integer arrays
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StatsAcc {
    /// Values counted (NaNs excluded).
    pub count: u64,
    /// NaNs seen (floats only).
    pub nan: u64,
    /// Integers: exact minimum and maximum.
    min_i: i128,
    max_i: i128,
    /// Floats: minimum and maximum (NaN excluded).
    min_f: f64,
    max_f: f64,
    /// Integers: the exact sum, and the exact sum of squares while it fits.
    sum_i: i128,
    sumsq_i: Option<u128>,
    /// Floats: the sum, compensated (Neumaier).
    sum_f: f64,
    comp_f: f64,
    /// Mean and sum of squared deviations (Chan et al.'s parallel update), for floats and for
    /// integer sums of squares too large to keep exactly.
    mean: f64,
    m2: f64,
    is_float: bool,
}

impl StatsAcc {
    fn new() -> Self {
        StatsAcc {
            count: 0,
            nan: 0,
            min_i: i128::MAX,
            max_i: i128::MIN,
            min_f: f64::INFINITY,
            max_f: f64::NEG_INFINITY,
            sum_i: 0,
            sumsq_i: Some(0),
            sum_f: 0.0,
            comp_f: 0.0,
            mean: 0.0,
            m2: 0.0,
            is_float: false,
        }
    }

    /// Folds the values of one view.
    fn fold<T: Scalar>(&mut self, v: &ArrayViewD<'_, T>) {
        let mut part = StatsAcc::new();
        part.is_float = T::DTYPE.is_float();
        if part.is_float {
            // Two passes over the chunk (it is in cache): compensated sum, then deviations.
            for &x in v.iter() {
                let f = x.to_f64();
                if f.is_nan() {
                    part.nan += 1;
                    continue;
                }
                part.count += 1;
                part.min_f = part.min_f.min(f);
                part.max_f = part.max_f.max(f);
                neumaier(&mut part.sum_f, &mut part.comp_f, f);
            }
            if part.count > 0 {
                let mean = (part.sum_f + part.comp_f) / part.count as f64;
                let mut m2 = 0.0;
                for &x in v.iter() {
                    let f = x.to_f64();
                    if !f.is_nan() {
                        m2 += (f - mean) * (f - mean);
                    }
                }
                part.mean = mean;
                part.m2 = m2;
            }
        } else {
            fold_ints(&mut part, v);
        }
        self.combine(part);
    }

    /// The statistics of `n` copies of `x`.
    fn constant<T: Scalar>(x: T, n: u64) -> StatsAcc {
        let mut a = StatsAcc::new();
        a.is_float = T::DTYPE.is_float();
        if n == 0 {
            return a;
        }
        if a.is_float {
            let f = x.to_f64();
            if f.is_nan() {
                a.nan = n;
                return a;
            }
            a.count = n;
            a.min_f = f;
            a.max_f = f;
            a.sum_f = f * n as f64;
            a.comp_f = f.mul_add(n as f64, -a.sum_f);
            a.mean = f;
        } else {
            let i = int_value(x);
            a.count = n;
            a.min_i = i;
            a.max_i = i;
            a.sum_i = i * i128::from(n);
            a.sumsq_i = i
                .unsigned_abs()
                .checked_mul(i.unsigned_abs())
                .and_then(|q| q.checked_mul(u128::from(n)));
            if T::DTYPE.size() == 8 {
                a.mean = i as f64;
            }
        }
        a
    }

    /// Adds the values of `b`.
    fn combine(&mut self, b: StatsAcc) {
        self.is_float |= b.is_float;
        if b.count == 0 {
            self.nan += b.nan;
            return;
        }
        let (na, nb) = (self.count as f64, b.count as f64);
        if self.count == 0 {
            self.mean = b.mean;
            self.m2 = b.m2;
        } else {
            let delta = b.mean - self.mean;
            let n = na + nb;
            self.mean += delta * nb / n;
            self.m2 += b.m2 + delta * delta * na * nb / n;
        }
        self.count += b.count;
        self.nan += b.nan;
        self.min_i = self.min_i.min(b.min_i);
        self.max_i = self.max_i.max(b.max_i);
        self.min_f = self.min_f.min(b.min_f);
        self.max_f = self.max_f.max(b.max_f);
        self.sum_i += b.sum_i;
        self.sumsq_i = match (self.sumsq_i, b.sumsq_i) {
            (Some(a), Some(c)) => a.checked_add(c),
            _ => None,
        };
        neumaier(&mut self.sum_f, &mut self.comp_f, b.sum_f);
        neumaier(&mut self.sum_f, &mut self.comp_f, b.comp_f);
    }

    /// The minimum (`None` when nothing was counted).
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some({
            if self.is_float {
                self.min_f
            } else {
                self.min_i as f64
            }
        })
    }

    /// The maximum.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some({
            if self.is_float {
                self.max_f
            } else {
                self.max_i as f64
            }
        })
    }

    /// The exact integer minimum and maximum (integer arrays).
    pub fn int_range(&self) -> Option<(i128, i128)> {
        (!self.is_float && self.count > 0).then_some((self.min_i, self.max_i))
    }

    /// The exact sum of an integer array.
    pub fn int_sum(&self) -> Option<i128> {
        (!self.is_float).then_some(self.sum_i)
    }

    /// The exact sum of squares of an integer array, when it fits 128 bits.
    pub fn int_sumsq(&self) -> Option<u128> {
        if self.is_float { None } else { self.sumsq_i }
    }

    /// The sum (exact for integers, compensated for floats).
    pub fn sum(&self) -> f64 {
        if self.is_float {
            if self.sum_f.is_finite() {
                self.sum_f + self.comp_f
            } else {
                self.sum_f
            }
        } else {
            self.sum_i as f64
        }
    }

    /// The mean (`None` when nothing was counted).
    pub fn mean(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        if self.is_float {
            // Infinities make the compensated sum the right answer (inf or NaN), as numpy.
            let s = self.sum();
            if !s.is_finite() {
                return Some(s / self.count as f64);
            }
            return Some(self.mean);
        }
        Some(ratio(self.sum_i, self.count))
    }

    /// The population standard deviation (ddof = 0).
    pub fn std(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        if !self.is_float {
            // Exactly, from the integer sums, while n·Σx² fits 128 bits.
            let n = i128::from(self.count as i64);
            if let Some(sq) = self.sumsq_i.and_then(|s| i128::try_from(s).ok())
                && let (Some(a), Some(b)) = (n.checked_mul(sq), self.sum_i.checked_mul(self.sum_i))
            {
                let num = a - b; // n²·var, exact
                return Some((num as f64).sqrt() / self.count as f64);
            }
            return Some((self.m2 / self.count as f64).sqrt());
        }
        if !self.sum().is_finite() {
            return Some(f64::NAN);
        }
        Some((self.m2 / self.count as f64).max(0.0).sqrt())
    }

    /// The statistics as JSON (integers exact; NaN and infinities as strings).
    pub fn to_json(&self) -> Value {
        let num = |v: Option<f64>| match v {
            None => Value::Null,
            Some(f) if f.is_finite() => json!(f),
            Some(f) => json!(f.to_string()),
        };
        let mut o = json!({
            "count": self.count,
            "nan_count": self.nan,
            "min": num(self.min()),
            "max": num(self.max()),
            "sum": num(Some(self.sum())),
            "mean": num(self.mean()),
            "std": num(self.std()),
        });
        if let Some((lo, hi)) = self.int_range() {
            o["min"] = if lo > i128::from(i64::MAX) {
                json!(lo as u64)
            } else {
                json!(lo as i64)
            };
            o["max"] = if hi > i128::from(i64::MAX) {
                json!(hi as u64)
            } else {
                json!(hi as i64)
            };
        }
        if !self.is_float {
            o["sum"] = if let Ok(s) = i64::try_from(self.sum_i) {
                json!(s)
            } else if let Ok(s) = u64::try_from(self.sum_i) {
                json!(s)
            } else {
                json!(self.sum_i.to_string())
            };
        }
        o
    }
}

/// `a / b` for an exact integer numerator, rounded once.
fn ratio(a: i128, b: u64) -> f64 {
    let q = a / i128::from(b);
    let r = a % i128::from(b);
    q as f64 + r as f64 / b as f64
}

fn neumaier(sum: &mut f64, comp: &mut f64, x: f64) {
    let t = *sum + x;
    if !t.is_finite() {
        // Infinities (and NaN from inf - inf) are the sum, as in numpy; no compensation.
        *sum = t;
        return;
    }
    if sum.abs() >= x.abs() {
        *comp += (*sum - t) + x;
    } else {
        *comp += (x - t) + *sum;
    }
    *sum = t;
}

/// Integer statistics of one view: exact min, max, sum and sum of squares (64-bit
/// accumulators per row where they cannot overflow, 128-bit across rows).
fn fold_ints<T: Scalar>(part: &mut StatsAcc, v: &ArrayViewD<'_, T>) {
    let small = T::DTYPE.size() <= 2; // |x| < 2^16: a row of < 2^31 values fits 64 bits
    let ndim = v.ndim();
    if ndim == 0 {
        // One value (a plane of a 1-d array): a row of one.
        return fold_ints(part, &v.view().insert_axis(Axis(0)));
    }
    let lanes = v.lanes(Axis(ndim - 1));
    let mut sumsq: u128 = 0;
    let mut overflow = false;
    if small && let Some(all) = v.as_slice().filter(|a| a.len() < 1 << 31) {
        // A whole chunk inside the region: one long row.
        let (s, q, lo, hi) = small_row_stats(all);
        part.sum_i += i128::from(s);
        part.sumsq_i = Some(u128::from(q));
        part.min_i = i128::from(lo);
        part.max_i = i128::from(hi);
        part.count = all.len() as u64;
        return;
    }
    for lane in lanes {
        if let Some(row) = lane.as_slice()
            && small
            && row.len() < 1 << 31
        {
            let (s, q, lo, hi) = small_row_stats(row);
            part.sum_i += i128::from(s);
            sumsq += u128::from(q);
            part.min_i = part.min_i.min(i128::from(lo));
            part.max_i = part.max_i.max(i128::from(hi));
            part.count += row.len() as u64;
            continue;
        }
        for &x in lane.iter() {
            let i = int_value(x);
            part.sum_i += i;
            let sq = (i.unsigned_abs()).checked_mul(i.unsigned_abs());
            match sq.and_then(|s| sumsq.checked_add(s)) {
                Some(t) => sumsq = t,
                None => overflow = true,
            }
            part.min_i = part.min_i.min(i);
            part.max_i = part.max_i.max(i);
            part.count += 1;
        }
    }
    part.sumsq_i = (!overflow).then_some(sumsq);
    if part.count > 0 && T::DTYPE.size() == 8 {
        // 64-bit values can overflow even 128-bit sums of squares: keep Chan's moments too,
        // from a second pass over the chunk (it is in cache).
        let mean = ratio(part.sum_i, part.count);
        let mut m2 = 0.0;
        for &x in v.iter() {
            let d = int_value(x) as f64 - mean;
            m2 += d * d;
        }
        part.mean = mean;
        part.m2 = m2;
    }
}

/// Sum, sum of squares, min and max of a row of integers below 2^16 in magnitude, with AVX2
/// where the CPU has it (the loop vectorises to 32-bit squares and extremes).
fn small_row_stats<T: Scalar>(row: &[T]) -> (i64, u64, i32, i32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        if matches!(T::DTYPE, DType::U16 | DType::I16)
            && let Ok(words) = bytemuck::try_cast_slice::<T, i16>(row)
        {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { words_stats_avx2(words, T::DTYPE == DType::U16) };
        }
        // SAFETY: the CPU has AVX2 (checked above).
        return unsafe { small_row_stats_avx2(row) };
    }
    small_row_stats_body(row)
}

/// [`small_row_stats`] of 16-bit words (`unsigned`: read as `u16`), 16 per instruction.
///
/// Unsigned words are biased to `i16` (`y = x - 2^15`) so that `vpmaddwd` forms pairwise
/// sums and squares in 32 bits: `y0 + y1` fits `i32`, `y0² + y1² ≤ 2^31` fits `u32`. Then
/// `Σx = Σy + 2^15·n` and `Σx² = Σy² + 2^16·Σy + 2^30·n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn words_stats_avx2(row: &[i16], unsigned: bool) -> (i64, u64, i32, i32) {
    use std::arch::x86_64::*;
    if row.is_empty() {
        return (0, 0, i32::MAX, i32::MIN);
    }
    let bias = if unsigned { i16::MIN } else { 0 };
    let vbias = _mm256_set1_epi16(bias);
    let ones = _mm256_set1_epi16(1);
    let mut vlo = _mm256_set1_epi16(i16::MAX);
    let mut vhi = _mm256_set1_epi16(i16::MIN);
    let mut vsq = _mm256_setzero_si256(); // 4 x u64
    let (mut sum_y, mut sq_y) = (0i64, 0u64);
    let vectors = row.len() / 16;
    // Blocks of 2^14 vectors: each i32 lane of the sums takes 2 values a vector, |sum| < 2^31.
    for b in (0..vectors).step_by(1 << 14) {
        let mut vsum = _mm256_setzero_si256(); // 8 x i32
        for k in b..vectors.min(b + (1 << 14)) {
            // SAFETY: k * 16 + 16 <= row.len(); loadu takes any alignment.
            let x = unsafe { _mm256_loadu_si256(row.as_ptr().add(k * 16).cast()) };
            let y = _mm256_xor_si256(x, vbias);
            vlo = _mm256_min_epi16(vlo, y);
            vhi = _mm256_max_epi16(vhi, y);
            vsum = _mm256_add_epi32(vsum, _mm256_madd_epi16(y, ones));
            let sq = _mm256_madd_epi16(y, y); // u32 lanes
            vsq = _mm256_add_epi64(vsq, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(sq)));
            vsq = _mm256_add_epi64(vsq, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(sq, 1)));
        }
        let mut lanes = [0i32; 8];
        // SAFETY: 32 bytes into a 32-byte array.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), vsum) };
        sum_y += lanes.iter().map(|&l| i64::from(l)).sum::<i64>();
    }
    let (mut los, mut his, mut sqs) = ([0i16; 16], [0i16; 16], [0u64; 4]);
    // SAFETY: 32 bytes into 32-byte arrays.
    unsafe {
        _mm256_storeu_si256(los.as_mut_ptr().cast(), vlo);
        _mm256_storeu_si256(his.as_mut_ptr().cast(), vhi);
        _mm256_storeu_si256(sqs.as_mut_ptr().cast(), vsq);
    }
    sq_y += sqs.iter().sum::<u64>();
    let mut lo_y = los.iter().copied().min().unwrap_or(i16::MAX);
    let mut hi_y = his.iter().copied().max().unwrap_or(i16::MIN);
    for &x in &row[vectors * 16..] {
        let y = x ^ bias;
        sum_y += i64::from(y);
        sq_y += i64::from(y).unsigned_abs().pow(2);
        lo_y = lo_y.min(y);
        hi_y = hi_y.max(y);
    }
    if !unsigned {
        return (sum_y, sq_y, i32::from(lo_y), i32::from(hi_y));
    }
    let n = row.len() as i64;
    let sum = sum_y + (n << 15);
    // Σx² = Σy² + 2^16·Σy + 2^30·n ≥ 0; the terms fit i128 and the total fits u64
    // (n < 2^31 values below 2^32 each).
    let sq = i128::from(sq_y) + (i128::from(sum_y) << 16) + (i128::from(n) << 30);
    let unbias = |y: i16| i32::from(y) + (1 << 15);
    (sum, sq as u64, unbias(lo_y), unbias(hi_y))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn small_row_stats_avx2<T: Scalar>(row: &[T]) -> (i64, u64, i32, i32) {
    small_row_stats_body(row)
}

#[inline(always)]
fn small_row_stats_body<T: Scalar>(row: &[T]) -> (i64, u64, i32, i32) {
    let (mut s, mut q, mut lo, mut hi) = (0i64, 0u64, i32::MAX, i32::MIN);
    // Blocks of 2^15 values: their sum fits 32 bits (|x| < 2^16), so the inner loop keeps
    // 32-bit lanes for everything but the squares.
    for block in row.chunks(1 << 15) {
        let mut s32 = 0i32;
        for &x in block {
            let i = x.to_i64() as i32;
            let a = i.unsigned_abs();
            s32 = s32.wrapping_add(i);
            q += u64::from(a * a);
            lo = lo.min(i);
            hi = hi.max(i);
        }
        s += i64::from(s32);
    }
    (s, q, lo, hi)
}

/// The exact value of an integer element.
pub(crate) fn int_value<T: Scalar>(x: T) -> i128 {
    let b = bytemuck::bytes_of(&x);
    match T::DTYPE {
        DType::U8 | DType::Bool => i128::from(b[0]),
        DType::I8 => i128::from(b[0] as i8),
        DType::U16 => i128::from(u16::from_le_bytes([b[0], b[1]])),
        DType::I16 => i128::from(i16::from_le_bytes([b[0], b[1]])),
        DType::U32 => i128::from(u32::from_le_bytes(b.try_into().expect("4 bytes"))),
        DType::I32 => i128::from(i32::from_le_bytes(b.try_into().expect("4 bytes"))),
        DType::U64 => i128::from(u64::from_le_bytes(b.try_into().expect("8 bytes"))),
        DType::I64 => i128::from(i64::from_le_bytes(b.try_into().expect("8 bytes"))),
        DType::F32 | DType::F64 => x.to_f64() as i128,
    }
}

impl Reduction for Stats {
    type Acc = StatsAcc;

    fn identity(&self) -> StatsAcc {
        StatsAcc::new()
    }

    fn fold(&self, acc: &mut StatsAcc, part: &Block<'_>) -> Result<()> {
        with_scalar!(part.dtype(), T => {
            acc.fold(&part.valid_view::<T>()?);
        });
        Ok(())
    }

    fn combine(&self, a: &mut StatsAcc, b: StatsAcc) {
        a.combine(b);
    }

    fn fold_constant(&self, acc: &mut StatsAcc, part: &Block<'_>) -> Result<bool> {
        with_scalar!(part.dtype(), T => {
            let (x, n) = constant_of::<T>(part)?;
            acc.combine(StatsAcc::constant(x, n));
        });
        Ok(true)
    }
}

/// Statistics per index along one axis (`stats --axis A`).
///
/// ```
/// use chunkwise::{AxisStats, Input, ReduceOptions};
/// let a = ndarray::arr2(&[[1u8, 2, 3], [10, 20, 30]]).into_dyn();
/// let rows = chunkwise::reduce(&Input::from_array(a.view())?,
///     &AxisStats { axis: 0, len: 2, start: 0 }, &ReduceOptions::default())?;
/// assert_eq!((rows[0].int_sum(), rows[1].mean()), (Some(6), Some(20.0)));
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AxisStats {
    /// The axis.
    pub axis: usize,
    /// Its length (in the region).
    pub len: usize,
    /// The region's start on the axis.
    pub start: u64,
}

impl Reduction for AxisStats {
    type Acc = Vec<StatsAcc>;

    fn identity(&self) -> Vec<StatsAcc> {
        vec![StatsAcc::new(); self.len]
    }

    fn fold(&self, acc: &mut Vec<StatsAcc>, part: &Block<'_>) -> Result<()> {
        let first = part.origin()[self.axis] as u64 + part.valid()[self.axis].start as u64;
        with_scalar!(part.dtype(), T => {
            let v = part.valid_view::<T>()?;
            for (k, plane) in v.axis_iter(Axis(self.axis)).enumerate() {
                let at = (first + k as u64 - self.start) as usize;
                acc[at].fold(&plane);
            }
        });
        Ok(())
    }

    fn combine(&self, a: &mut Vec<StatsAcc>, b: Vec<StatsAcc>) {
        for (x, y) in a.iter_mut().zip(b) {
            x.combine(y);
        }
    }

    fn fold_constant(&self, acc: &mut Vec<StatsAcc>, part: &Block<'_>) -> Result<bool> {
        let first = part.origin()[self.axis] as u64 + part.valid()[self.axis].start as u64;
        let planes = part.valid()[self.axis].len() as u64;
        with_scalar!(part.dtype(), T => {
            let (x, n) = constant_of::<T>(part)?;
            for k in 0..planes {
                let at = (first + k - self.start) as usize;
                acc[at].combine(StatsAcc::constant(x, n / planes.max(1)));
            }
        });
        Ok(true)
    }
}

/// Statistics of each chunk's part of the region (ClearMap's block sums).
///
/// ```
/// use chunkwise::{Input, PerChunk, ReduceOptions, Region};
/// let a = ndarray::ArrayD::<u8>::ones(vec![300, 4]); // read by blocks of 128 x 4
/// let input = Input::from_array(a.view())?;
/// let chunks = chunkwise::reduce(&input, &PerChunk, &ReduceOptions::default())?;
/// assert_eq!(chunks.len(), 3);
/// assert_eq!(chunks[2].region, Region::new(vec![256..300, 0..4]));
/// assert_eq!(chunks[2].stats.int_sum(), Some(44 * 4));
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PerChunk;

/// One chunk's statistics.
///
/// ```no_run
/// use chunkwise::{Input, PerChunk, ReduceOptions};
/// let volume = Input::open("volume.zarr")?;
/// for c in chunkwise::reduce(&volume, &PerChunk, &ReduceOptions::default())? {
///     println!("{}: sum {}, max {:?}", c.region, c.stats.sum(), c.stats.max());
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ChunkStats {
    /// The chunk's part of the region, in array coordinates.
    pub region: Region,
    /// Its statistics.
    pub stats: StatsAcc,
}

impl Reduction for PerChunk {
    type Acc = Vec<ChunkStats>;

    fn identity(&self) -> Vec<ChunkStats> {
        Vec::new()
    }

    fn fold(&self, acc: &mut Vec<ChunkStats>, part: &Block<'_>) -> Result<()> {
        let mut s = StatsAcc::new();
        Stats.fold(&mut s, part)?;
        acc.push(ChunkStats {
            region: valid_region(part),
            stats: s,
        });
        Ok(())
    }

    fn combine(&self, a: &mut Vec<ChunkStats>, b: Vec<ChunkStats>) {
        a.extend(b);
    }

    fn fold_constant(&self, acc: &mut Vec<ChunkStats>, part: &Block<'_>) -> Result<bool> {
        let mut s = StatsAcc::new();
        if !Stats.fold_constant(&mut s, part)? {
            return Ok(false);
        }
        acc.push(ChunkStats {
            region: valid_region(part),
            stats: s,
        });
        Ok(true)
    }

    fn per_stored_chunk(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------- histogram

/// The most bins a histogram takes (its counts are held in memory, 8 bytes a bin).
///
/// ```
/// use chunkwise::{Histogram, MAX_BINS};
/// assert_eq!(MAX_BINS, 1 << 26);
/// assert!(Histogram::new(MAX_BINS + 1, 0.0, 1.0).is_err());
/// ```
pub const MAX_BINS: usize = 1 << 26;

/// Exact counts in bins (spec/REDUCE.md §3): `bins` equal bins over `[lo, hi]` as
/// numpy.histogram (the last bin includes `hi`; values outside and NaN are not counted).
///
/// ```
/// use chunkwise::{Histogram, Input, ReduceOptions};
/// let h = Histogram::new(2, 0.0, 10.0)?; // [0, 5) and [5, 10]
/// assert_eq!(h.edges(), &[0.0, 5.0, 10.0]);
/// let a = ndarray::arr1(&[0.5f32, 1.5, 2.5, 9.0, 10.0, 11.0]).into_dyn();
/// let counts = chunkwise::reduce(&Input::from_array(a.view())?, &h, &ReduceOptions::default())?;
/// assert_eq!(counts, vec![3, 2]); // 11 is outside
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    lo: f64,
    hi: f64,
    edges: Vec<f64>,
    /// One bin per integer in [lo, hi] (the integer default): a value's bin is `v - lo`.
    unit: bool,
}

impl Histogram {
    /// `bins` bins over `[lo, hi]`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for `lo >= hi` (or not finite) or no bins.
    pub fn new(bins: usize, lo: f64, hi: f64) -> Result<Histogram> {
        if !(lo.is_finite() && hi.is_finite()) || lo >= hi {
            return Err(Error::option(
                "range",
                format!("need LO < HI (finite), got {lo},{hi}"),
            ));
        }
        if bins == 0 || bins > MAX_BINS {
            return Err(Error::option(
                "bins",
                format!("{bins}: give 1 to {MAX_BINS} bins"),
            ));
        }
        // numpy.linspace(lo, hi, bins + 1)
        let step = (hi - lo) / bins as f64;
        let mut edges: Vec<f64> = (0..=bins).map(|i| lo + i as f64 * step).collect();
        edges[bins] = hi;
        Ok(Histogram {
            lo,
            hi,
            edges,
            unit: false,
        })
    }

    /// One bin per integer value in `[lo, hi]` (bin edges `lo, lo+1, ..., hi+1`).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] when that is more than 2^24 bins (give `--bins`).
    pub fn per_value(lo: i128, hi: i128) -> Result<Histogram> {
        let n = hi - lo + 1;
        if n > 1 << 24 {
            return Err(Error::option(
                "bins",
                format!(
                    "values span {lo}..={hi}: {n} bins of one value each is too many; give a number of bins"
                ),
            ));
        }
        let mut h = Histogram::new(n as usize, lo as f64, (hi + 1) as f64)?;
        h.unit = true;
        Ok(h)
    }

    /// The histogram of `input`'s own range ([`Histogram::per_value`] for integers without
    /// `bins`, else `bins` (default 10) equal bins over the finite values' range), from a
    /// first statistics pass (spec/REDUCE.md §3).
    ///
    /// ```no_run
    /// use chunkwise::{Histogram, Input, ReduceOptions};
    /// let v = Input::open("volume.zarr")?;
    /// let h = Histogram::auto(&v, None, &ReduceOptions::default())?;
    /// let counts = chunkwise::reduce(&v, &h, &ReduceOptions::default())?;
    /// # let _ = counts;
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`reduce`]; [`Error::InvalidOption`] when there are no finite values to span.
    pub fn auto(input: &Input, bins: Option<usize>, opts: &ReduceOptions) -> Result<Histogram> {
        default_histogram(input, bins, opts)
    }

    /// The bin edges (`bins + 1` values).
    pub fn edges(&self) -> &[f64] {
        &self.edges
    }

    /// Whether each bin holds one integer value ([`Histogram::per_value`]).
    pub fn is_per_value(&self) -> bool {
        self.unit
    }

    /// Percentile `q` (0 to 100) of the values counted in `counts` (spec/REDUCE.md §3.1): the
    /// value of the first bin whose running count reaches `q / 100` of the total, which is
    /// numpy's `percentile(x, q, method="inverted_cdf")` exactly for one bin per value, and
    /// for equal bins the edge below plus the fraction of the bin's count still needed times
    /// its width (exact to within the bin). `None` when nothing was counted or `counts` is
    /// not this histogram's.
    pub fn percentile(&self, counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if counts.len() + 1 != self.edges.len() || total == 0 || !(0.0..=100.0).contains(&q) {
            return None;
        }
        let target = q / 100.0 * total as f64;
        let mut before = 0u64;
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 && (before + c) as f64 >= target {
                if self.unit {
                    return Some(self.edges[i]);
                }
                let frac = ((target - before as f64) / c as f64).clamp(0.0, 1.0);
                return Some(self.edges[i] + frac * (self.edges[i + 1] - self.edges[i]));
            }
            before += c;
        }
        None
    }

    /// The bin of `x`, as numpy.histogram computes it, or `None` outside the range.
    fn bin(&self, x: f64) -> Option<usize> {
        let n = self.edges.len() - 1;
        if self.unit {
            let i = x - self.lo;
            return (i >= 0.0 && i < n as f64).then_some(i as usize);
        }
        if !(x >= self.lo && x <= self.hi) {
            return None;
        }
        let norm = n as f64 / (self.hi - self.lo);
        let mut i = ((x - self.lo) * norm) as usize;
        if i == n {
            i -= 1;
        }
        // numpy's corrections for rounding near the edges.
        if x < self.edges[i] {
            i -= 1;
        } else if x >= self.edges[i + 1] && i != n - 1 {
            i += 1;
        }
        Some(i)
    }
}

impl Reduction for Histogram {
    type Acc = Vec<u64>;

    fn identity(&self) -> Vec<u64> {
        vec![0; self.edges.len() - 1]
    }

    fn fold(&self, acc: &mut Vec<u64>, part: &Block<'_>) -> Result<()> {
        with_scalar!(part.dtype(), T => {
            for &x in part.valid_view::<T>()?.iter() {
                if let Some(b) = self.bin(x.to_f64()) {
                    acc[b] += 1;
                }
            }
        });
        Ok(())
    }

    fn combine(&self, a: &mut Vec<u64>, b: Vec<u64>) {
        for (x, y) in a.iter_mut().zip(b) {
            *x += y;
        }
    }

    fn fold_constant(&self, acc: &mut Vec<u64>, part: &Block<'_>) -> Result<bool> {
        with_scalar!(part.dtype(), T => {
            let (x, n) = constant_of::<T>(part)?;
            if let Some(b) = self.bin(x.to_f64()) {
                acc[b] += n;
            }
        });
        Ok(true)
    }
}

/// The default histogram of an array: with no `bins`, one bin per value in [min, max] for
/// integers and 10 bins for floats (numpy's default); with `bins`, that many equal bins. The
/// range is the data's, from a first statistics pass, over its finite values: ±inf are left
/// outside (uncounted) rather than making the range infinite.
///
/// # Errors
/// As [`reduce`]; [`Error::InvalidOption`] when there are no finite values to span.
pub(crate) fn default_histogram(
    input: &Input,
    bins: Option<usize>,
    opts: &ReduceOptions,
) -> Result<Histogram> {
    let s = reduce(input, &Stats, opts)?;
    if bins.is_none()
        && let Some((lo, hi)) = s.int_range()
    {
        return Histogram::per_value(lo, hi);
    }
    let (lo, hi) = match (s.min(), s.max()) {
        (Some(lo), Some(hi)) if lo.is_finite() && hi.is_finite() => (lo, hi),
        (Some(_), Some(_)) => reduce(input, &FiniteRange, opts)?.ok_or_else(|| {
            Error::option(
                "range",
                "the values are all infinite or NaN: no finite range to take; give a range",
            )
        })?,
        _ => {
            return Err(Error::option(
                "range",
                "no values (or only NaN) to take a range from; give a range",
            ));
        }
    };
    let bins = bins.unwrap_or(10);
    if lo < hi {
        Histogram::new(bins, lo, hi)
    } else {
        Histogram::new(bins, lo - 0.5, hi + 0.5)
    }
}

/// The smallest and largest finite values (`None`: there are none).
struct FiniteRange;

impl Reduction for FiniteRange {
    type Acc = Option<(f64, f64)>;

    fn identity(&self) -> Self::Acc {
        None
    }

    fn fold(&self, acc: &mut Self::Acc, part: &Block<'_>) -> Result<()> {
        with_scalar!(part.dtype(), T => {
            for &x in part.valid_view::<T>()?.iter() {
                let f = x.to_f64();
                if f.is_finite() {
                    *acc = Some(acc.map_or((f, f), |(lo, hi)| (lo.min(f), hi.max(f))));
                }
            }
        });
        Ok(())
    }

    fn combine(&self, a: &mut Self::Acc, b: Self::Acc) {
        if let Some((lo, hi)) = b {
            *a = Some(a.map_or((lo, hi), |(x, y)| (x.min(lo), y.max(hi))));
        }
    }
}

/// The region of a store a reduction covers, from an optional `--region` spec.
///
/// # Errors
/// [`Error::BadRegion`].
pub fn region_of(input: &Input, spec: Option<&str>) -> Result<Option<Region>> {
    spec.map(|s| Region::parse(s, input.shape()).map(|p| p.region))
        .transpose()
}

/// Writes `rows` (a table of float64 values) as a 2-D `.npy` file.
///
/// # Errors
/// [`Error::Io`].
pub fn write_table(path: &Path, rows: &[Vec<f64>], overwrite: bool) -> Result<()> {
    let ncol = rows.first().map_or(0, Vec::len);
    let mut bytes = Vec::with_capacity(rows.len() * ncol * 8);
    for r in rows {
        for v in r {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut file = crate::npy::header_bytes(DType::F64, &[rows.len() as u64, ncol as u64]);
    file.extend_from_slice(&bytes);
    crate::store::write_output(path, &file, overwrite)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16-bit fast path against the plain loop, at every tail length and the extremes.
    #[test]
    fn word_stats_match_the_plain_loop() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for len in [0usize, 1, 15, 16, 17, 33, 1000, (1 << 18) + 5] {
            let mut u: Vec<u16> = (0..len).map(|_| next() as u16).collect();
            let mut i: Vec<i16> = (0..len).map(|_| next() as i16).collect();
            if len > 3 {
                (u[0], u[1], u[len - 1]) = (0, u16::MAX, u16::MAX);
                (i[0], i[1], i[len - 1]) = (i16::MIN, i16::MAX, i16::MIN);
            }
            assert_eq!(
                small_row_stats(&u),
                small_row_stats_body(&u),
                "u16 len {len}"
            );
            assert_eq!(
                small_row_stats(&i),
                small_row_stats_body(&i),
                "i16 len {len}"
            );
            let all_max = vec![u16::MAX; len];
            assert_eq!(small_row_stats(&all_max), small_row_stats_body(&all_max));
        }
    }
}

// ---------------------------------------------------------------- parts

/// A reduction whose partial results are saved and loaded exactly, so that the parts of a
/// partitioned run (`--partition I/N`, spec/SCALE.md §2) combine into the single process's
/// result to the last bit: floats are saved as their bits, integers whole.
pub trait PartialResult: Reduction {
    /// What the reduction computes, for the job's fingerprint (two parts with different
    /// descriptions are parts of different jobs).
    fn describe(&self) -> String;

    /// The partial results of a part's layers, in order, as JSON (a reduction whose combine
    /// is exact may save them combined).
    fn save(&self, layers: Vec<Self::Acc>) -> Value;

    /// What [`PartialResult::save`] saved.
    ///
    /// # Errors
    /// What is wrong with a document that is not one.
    fn load(&self, v: &Value) -> std::result::Result<Vec<Self::Acc>, String>;
}

fn bits(f: f64) -> Value {
    json!(f.to_bits())
}

fn unbits(v: &Value) -> std::result::Result<f64, String> {
    v.as_u64()
        .map(f64::from_bits)
        .ok_or_else(|| format!("not a float's bits: {v}"))
}

fn int(v: &Value) -> std::result::Result<i128, String> {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an integer: {v}"))
}

impl StatsAcc {
    fn save(&self) -> Value {
        json!([
            self.count,
            self.nan,
            self.min_i.to_string(),
            self.max_i.to_string(),
            bits(self.min_f),
            bits(self.max_f),
            self.sum_i.to_string(),
            self.sumsq_i.map(|s| s.to_string()),
            bits(self.sum_f),
            bits(self.comp_f),
            bits(self.mean),
            bits(self.m2),
            self.is_float,
        ])
    }

    fn load(v: &Value) -> std::result::Result<StatsAcc, String> {
        let a = v
            .as_array()
            .filter(|a| a.len() == 13)
            .ok_or_else(|| format!("not saved statistics: {v}"))?;
        let u = |v: &Value| v.as_u64().ok_or_else(|| format!("not a count: {v}"));
        Ok(StatsAcc {
            count: u(&a[0])?,
            nan: u(&a[1])?,
            min_i: int(&a[2])?,
            max_i: int(&a[3])?,
            min_f: unbits(&a[4])?,
            max_f: unbits(&a[5])?,
            sum_i: int(&a[6])?,
            sumsq_i: match &a[7] {
                Value::Null => None,
                v => Some(
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| format!("not an integer: {v}"))?,
                ),
            },
            sum_f: unbits(&a[8])?,
            comp_f: unbits(&a[9])?,
            mean: unbits(&a[10])?,
            m2: unbits(&a[11])?,
            is_float: a[12].as_bool().ok_or("not a flag")?,
        })
    }
}

fn list(v: &Value) -> std::result::Result<&Vec<Value>, String> {
    v.as_array().ok_or_else(|| "not a list".to_string())
}

impl PartialResult for Stats {
    fn describe(&self) -> String {
        "stats".into()
    }

    fn save(&self, layers: Vec<StatsAcc>) -> Value {
        json!(layers.iter().map(StatsAcc::save).collect::<Vec<_>>())
    }

    fn load(&self, v: &Value) -> std::result::Result<Vec<StatsAcc>, String> {
        list(v)?.iter().map(StatsAcc::load).collect()
    }
}

impl PartialResult for AxisStats {
    fn describe(&self) -> String {
        format!(
            "stats along axis {} from {} ({} planes)",
            self.axis, self.start, self.len
        )
    }

    fn save(&self, layers: Vec<Vec<StatsAcc>>) -> Value {
        json!(
            layers
                .iter()
                .map(|l| l.iter().map(StatsAcc::save).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        )
    }

    fn load(&self, v: &Value) -> std::result::Result<Vec<Vec<StatsAcc>>, String> {
        list(v)?
            .iter()
            .map(|l| {
                let l: Vec<StatsAcc> = list(l)?
                    .iter()
                    .map(StatsAcc::load)
                    .collect::<std::result::Result<_, _>>()?;
                if l.len() != self.len {
                    return Err(format!("{} planes, not {}", l.len(), self.len));
                }
                Ok(l)
            })
            .collect()
    }
}

impl PartialResult for PerChunk {
    fn describe(&self) -> String {
        "stats per chunk".into()
    }

    fn save(&self, layers: Vec<Vec<ChunkStats>>) -> Value {
        let all: Vec<Value> = layers
            .into_iter()
            .flatten()
            .map(|c| {
                let r: Vec<[u64; 2]> = c.region.ranges().iter().map(|r| [r.start, r.end]).collect();
                json!([r, c.stats.save()])
            })
            .collect();
        json!([all])
    }

    fn load(&self, v: &Value) -> std::result::Result<Vec<Vec<ChunkStats>>, String> {
        list(v)?
            .iter()
            .map(|l| {
                list(l)?
                    .iter()
                    .map(|c| {
                        let pair = list(c)?;
                        let [r, st] = &pair[..] else {
                            return Err(format!("not a chunk's statistics: {c}"));
                        };
                        let ranges = list(r)?
                            .iter()
                            .map(|se| match se.as_array().map(|a| &a[..]) {
                                Some([a, b]) => match (a.as_u64(), b.as_u64()) {
                                    (Some(a), Some(b)) => Ok(a..b),
                                    _ => Err(format!("not a range: {se}")),
                                },
                                _ => Err(format!("not a range: {se}")),
                            })
                            .collect::<std::result::Result<_, _>>()?;
                        Ok(ChunkStats {
                            region: Region::new(ranges),
                            stats: StatsAcc::load(st)?,
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

impl PartialResult for Histogram {
    fn describe(&self) -> String {
        format!(
            "histogram of {} bins over [{}, {}]{}",
            self.edges.len() - 1,
            self.lo,
            self.hi,
            if self.unit { " per value" } else { "" }
        )
    }

    fn save(&self, layers: Vec<Vec<u64>>) -> Value {
        // Counts add exactly: one list for the part.
        let mut total = self.identity();
        for l in layers {
            self.combine(&mut total, l);
        }
        json!([total])
    }

    fn load(&self, v: &Value) -> std::result::Result<Vec<Vec<u64>>, String> {
        list(v)?
            .iter()
            .map(|l| {
                let c: Vec<u64> = list(l)?
                    .iter()
                    .map(|n| n.as_u64().ok_or_else(|| format!("not a count: {n}")))
                    .collect::<std::result::Result<_, _>>()?;
                if c.len() != self.edges.len() - 1 {
                    return Err(format!("{} bins, not {}", c.len(), self.edges.len() - 1));
                }
                Ok(c)
            })
            .collect()
    }
}

/// The count of every integer value present: a part's share of an integer array's default
/// histogram (one bin per value in [min, max]), whose range no part knows alone. The counts
/// span at most 2^24 values, as [`Histogram::per_value`]'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValueCounts;

/// The counts of [`ValueCounts`]: `counts[i]` values equal to `lo + i`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// The smallest value counted.
    pub lo: i128,
    /// The counts from `lo` on (empty: no values).
    pub counts: Vec<u64>,
}

impl Counts {
    fn add_at(&mut self, lo: i128, counts: &[u64]) -> Result<()> {
        if counts.is_empty() {
            return Ok(());
        }
        if self.counts.is_empty() {
            self.lo = lo;
            self.counts = counts.to_vec();
            return Ok(());
        }
        let new_lo = self.lo.min(lo);
        let new_hi = (self.lo + self.counts.len() as i128).max(lo + counts.len() as i128);
        if new_hi - new_lo > 1 << 24 {
            return Err(Error::option(
                "bins",
                format!(
                    "values span {new_lo}..{new_hi}: one bin per value is too many; give a \
                     number of bins and a range"
                ),
            ));
        }
        if new_lo < self.lo {
            let mut c = vec![0; (self.lo - new_lo) as usize];
            c.append(&mut self.counts);
            self.counts = c;
            self.lo = new_lo;
        }
        self.counts.resize((new_hi - new_lo) as usize, 0);
        let at = (lo - self.lo) as usize;
        for (x, y) in self.counts[at..].iter_mut().zip(counts) {
            *x += y;
        }
        Ok(())
    }

    /// The histogram these counts are (one bin per value in [min, max]), and its counts.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for no values.
    pub fn histogram(&self) -> Result<(Histogram, Vec<u64>)> {
        if self.counts.is_empty() {
            return Err(Error::option(
                "range",
                "no values to take a range from; give a range",
            ));
        }
        let first = self.counts.iter().position(|&c| c > 0).unwrap_or(0);
        let last = self.counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        let lo = self.lo + first as i128;
        let hi = self.lo + last as i128;
        Ok((
            Histogram::per_value(lo, hi)?,
            self.counts[first..=last].to_vec(),
        ))
    }
}

impl Reduction for ValueCounts {
    type Acc = Result<Counts>;

    fn identity(&self) -> Result<Counts> {
        Ok(Counts::default())
    }

    fn fold(&self, acc: &mut Result<Counts>, part: &Block<'_>) -> Result<()> {
        let Ok(total) = acc else { return Ok(()) };
        if part.dtype().is_float() {
            return Err(Error::option(
                "range",
                "a float array's histogram in parts needs --range LO,HI (and --bins)",
            ));
        }
        with_scalar!(part.dtype(), T => {
            let v = part.valid_view::<T>()?;
            let (mut lo, mut hi) = (i128::MAX, i128::MIN);
            for &x in v.iter() {
                let i = int_value(x);
                lo = lo.min(i);
                hi = hi.max(i);
            }
            if lo <= hi {
                if hi - lo >= 1 << 24 {
                    return Err(Error::option(
                        "bins",
                        format!("values span {lo}..={hi}: one bin per value is too many; give \
                                 a number of bins and a range"),
                    ));
                }
                let mut c = vec![0u64; (hi - lo + 1) as usize];
                for &x in v.iter() {
                    c[(int_value(x) - lo) as usize] += 1;
                }
                total.add_at(lo, &c)?;
            }
        });
        Ok(())
    }

    fn fold_constant(&self, acc: &mut Result<Counts>, part: &Block<'_>) -> Result<bool> {
        if part.dtype().is_float() {
            return Ok(false);
        }
        let Ok(total) = acc else { return Ok(true) };
        with_scalar!(part.dtype(), T => {
            let (x, n) = constant_of::<T>(part)?;
            if n > 0 {
                total.add_at(int_value(x), &[n])?;
            }
        });
        Ok(true)
    }

    fn combine(&self, a: &mut Result<Counts>, b: Result<Counts>) {
        let merged = match (std::mem::replace(a, Ok(Counts::default())), b) {
            (Ok(mut x), Ok(y)) => x.add_at(y.lo, &y.counts).map(|()| x),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        *a = merged;
    }
}

impl PartialResult for ValueCounts {
    fn describe(&self) -> String {
        "histogram per value".into()
    }

    fn save(&self, layers: Vec<Result<Counts>>) -> Value {
        let mut total = self.identity();
        for l in layers {
            self.combine(&mut total, l);
        }
        match total {
            Ok(c) => json!([[c.lo.to_string(), c.counts]]),
            // Not reached: a part's errors end it before it saves.
            Err(e) => json!({"error": e.to_string()}),
        }
    }

    fn load(&self, v: &Value) -> std::result::Result<Vec<Result<Counts>>, String> {
        list(v)?
            .iter()
            .map(|l| match &list(l)?[..] {
                [lo, c] => Ok(Ok(Counts {
                    lo: int(lo)?,
                    counts: list(c)?
                        .iter()
                        .map(|n| n.as_u64().ok_or_else(|| format!("not a count: {n}")))
                        .collect::<std::result::Result<_, _>>()?,
                })),
                _ => Err(format!("not counts: {l}")),
            })
            .collect()
    }
}

/// Runs part `part` (`i` of `n`) of reduction `r` over `input`, the parts meeting beside
/// `out` (spec/SCALE.md §2): the part folds its chunk layers (a contiguous range, balanced by
/// stored chunks) and saves its partial results; the part that finds every part's results
/// saved combines them in order, exactly as one process would, and gives the total to
/// `write(total, out, overwrite)`. A part whose results are saved already (a rerun) only
/// tries to combine.
///
/// ```no_run
/// use chunkwise::{Input, PartsFinish, ReduceOptions, Stats};
/// let v = Input::open("volume.zarr")?;
/// let write = |s: chunkwise::StatsAcc, out: &std::path::Path, overwrite: bool| {
///     chunkwise::support::write_output(out, s.to_json().to_string().as_bytes(), overwrite)
/// };
/// // On task 3 of a 16-task array job:
/// let opts = ReduceOptions::default();
/// match chunkwise::reduce_part(&v, &Stats, &opts, "stats.json".as_ref(), (3, 16), false, write)? {
///     PartsFinish::Combined => println!("all parts done: stats.json written"),
///     PartsFinish::Waiting { done, total } => println!("{done} of {total} parts done"),
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`reduce`]; [`Error::InvalidOption`] (`partition`) for a part out of range, a different
/// N than the job was started in, or parts of another job (other settings or input) at
/// `out`; [`Error::OutputExists`]; `write`'s errors.
pub fn reduce_part<R: PartialResult>(
    input: &Input,
    r: &R,
    opts: &ReduceOptions,
    out: &Path,
    part: (u32, u32),
    overwrite: bool,
    write: impl FnOnce(R::Acc, &Path, bool) -> Result<()>,
) -> Result<crate::PartsFinish> {
    crate::store::check_part(part)?;
    // One walk of the store: the split and the fold both use it.
    let stored_chunks = input.stored_chunks();
    let (layers, stored) = reduce_layers(input, r, stored_chunks.as_ref())?;
    let split = crate::grid::split_layers(layers, stored.as_deref(), part.1);
    let mut settings = format!(
        "chunkwise reduce v1\nreduction: {}\nregion: {}\ninput: {}\n",
        r.describe(),
        opts.region
            .as_ref()
            .map_or_else(|| "all".to_string(), Region::to_string),
        input.identity()
    );
    let fingerprint = crate::fingerprint::fnv1a(&settings);
    settings.push_str(&format!("fingerprint: {fingerprint}\n"));
    let parts = crate::store::Parts::open(out, &fingerprint, &settings, part, overwrite)?;
    if !parts.saved() {
        let (l0, l1) = split[part.0 as usize];
        let o = ReduceOptions {
            layers: Some((l0, l1)),
            ..opts.clone()
        };
        let accs = with_threads(opts.run.threads, || {
            reduce_in_pool(input, r, &o, stored_chunks.as_ref(), true)
        })?;
        let doc = json!({"layers": [l0, l1], "results": r.save(accs)});
        parts.save(serde_json::to_string(&doc).expect("plain JSON").as_bytes())?;
    }
    parts.finish(|files, out, overwrite| {
        let mut total = r.identity();
        for f in files {
            let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
            let accs = serde_json::from_str::<Value>(&text)
                .map_err(|e| e.to_string())
                .and_then(|v| r.load(&v["results"]))
                .map_err(|e| Error::bad_input(f, format!("not a part's saved results: {e}")))?;
            for a in accs {
                r.combine(&mut total, a);
            }
        }
        write(total, out, overwrite)
    })
}
