//! Downsampling one block by integer factors, the step between two levels of a pyramid
//! (spec/PYRAMID.md §2). Invariant: pure and serial; the output has `ceil(extent / factor)`
//! voxels per axis, each the reduction of its block, and a block at the far edge reduces only
//! the voxels present (never padding).

use std::cmp::Ordering;

use ndarray::{ArrayD, ArrayViewD, IxDyn};

use crate::copy::c_strides;
use crate::dtype::Scalar;
use crate::error::{Error, Result};

/// How a block of voxels becomes one voxel of the level below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Downsample {
    /// The mean of the block (computed in f64; integers rounded half to even, as numpy's
    /// `rint`).
    Mean,
    /// The most frequent value of the block, the smallest among equally frequent ones (label
    /// images).
    Mode,
    /// The block's first voxel (strided sampling, `a[::f]`).
    Nearest,
    /// The block's minimum (NaN if the block holds one, as numpy's `min`).
    Min,
    /// The block's maximum (NaN if the block holds one, as numpy's `max`).
    Max,
    /// A Gaussian blur (sigma f / 3) sampled at each block's centre (spec/PYRAMID.md §2): not a
    /// block reduction (a voxel depends on the blocks around its own), so pyramids compute it
    /// from the level above with a halo and [`downsample`] refuses it.
    Gaussian,
}

impl Downsample {
    /// The name used on the command line and in OME-Zarr's `type`.
    pub fn name(self) -> &'static str {
        match self {
            Downsample::Mean => "mean",
            Downsample::Mode => "mode",
            Downsample::Nearest => "nearest",
            Downsample::Min => "min",
            Downsample::Max => "max",
            Downsample::Gaussian => "gaussian",
        }
    }

    /// Whether a level's voxel stands for its whole block (its centre lies (f - 1) / 2
    /// voxels into the block: OME-Zarr's translation), rather than for the block's first voxel.
    pub fn centred(self) -> bool {
        !matches!(self, Downsample::Nearest)
    }
}

impl std::str::FromStr for Downsample {
    type Err = Error;
    fn from_str(s: &str) -> Result<Downsample> {
        Ok(match s.trim() {
            "mean" => Downsample::Mean,
            "mode" => Downsample::Mode,
            "nearest" => Downsample::Nearest,
            "min" => Downsample::Min,
            "max" => Downsample::Max,
            "gaussian" => Downsample::Gaussian,
            other => {
                return Err(Error::option(
                    "method",
                    format!("{other:?}: give mean, mode, gaussian, nearest, min or max"),
                ));
            }
        })
    }
}

/// `input` downsampled by `factors` (one per axis, each at least 1) with `method`.
///
/// ```
/// use chunkwise::kernel::{Downsample, downsample};
/// let a = ndarray::arr2(&[[1u16, 3, 10], [5, 7, 20]]).into_dyn();
/// let m = downsample(a.view(), &[2, 2], Downsample::Mean)?;
/// assert_eq!(m, ndarray::arr2(&[[4u16, 15]]).into_dyn()); // the edge block holds 10 and 20
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidOption`] (`factors`) when there is not one factor per axis or one is 0.
pub fn downsample<T: Scalar>(
    input: ArrayViewD<'_, T>,
    factors: &[u64],
    method: Downsample,
) -> Result<ArrayD<T>> {
    if factors.len() != input.ndim() || factors.contains(&0) {
        return Err(Error::option(
            "factors",
            format!(
                "{factors:?} for a {}-D array: give one factor of at least 1 per axis",
                input.ndim()
            ),
        ));
    }
    if method == Downsample::Gaussian {
        return Err(Error::option(
            "method",
            "gaussian is not a block reduction (a voxel depends on its neighbours beyond its \
             block): pyramids compute it with a halo; give mean, mode, nearest, min or max",
        ));
    }
    let shape = input.shape().to_vec();
    let f: Vec<usize> = factors
        .iter()
        .map(|&f| usize::try_from(f).unwrap_or(usize::MAX))
        .collect();
    let out_shape: Vec<usize> = shape.iter().zip(&f).map(|(&s, &f)| s.div_ceil(f)).collect();
    if shape.contains(&0) {
        return Ok(ArrayD::from_elem(IxDyn(&out_shape), T::default()));
    }
    let standard = input.as_standard_layout();
    let src = standard.as_slice().expect("standard layout is contiguous");
    let mut out = vec![T::default(); out_shape.iter().product()];
    downsample_into(src, &shape, &shape, &f, method, &mut out, &out_shape);
    Ok(ArrayD::from_shape_vec(IxDyn(&out_shape), out).expect("shape matches"))
}

/// Downsamples the `extent` corner of `src` (C order, `src_shape`) by `f` into the origin
/// corner of `dst` (C order, `dst_shape`, at least `ceil(extent / f)` per axis).
pub(crate) fn downsample_into<T: Scalar>(
    src: &[T],
    src_shape: &[usize],
    extent: &[usize],
    f: &[usize],
    method: Downsample,
    dst: &mut [T],
    dst_shape: &[usize],
) {
    let nd = extent.len();
    if nd == 0 || extent.contains(&0) {
        return;
    }
    let out: Vec<usize> = extent.iter().zip(f).map(|(&e, &f)| e.div_ceil(f)).collect();
    let src_strides = c_strides(src_shape, 1);
    let dst_strides = c_strides(dst_shape, 1);
    let (last_e, last_f, last_o) = (extent[nd - 1], f[nd - 1], out[nd - 1]);
    let lead = &out[..nd - 1];
    let mut acc = vec![0f64; last_o];
    let mut counts = vec![0usize; last_o];
    let mut rows: Vec<usize> = Vec::new();
    let mut scratch = (Vec::new(), Vec::new());
    let mut values: Vec<T> = Vec::new();
    // Each output row (every axis but the last fixed) gathers the input rows of its blocks.
    let mut o = vec![0usize; nd - 1];
    loop {
        rows.clear();
        block_rows(&o, extent, f, &src_strides, &mut rows, &mut scratch);
        let dst_at: usize = o.iter().zip(&dst_strides).map(|(&i, &s)| i * s).sum();
        let dst_row = &mut dst[dst_at..dst_at + last_o];
        let row = |r: usize| &src[r..r + last_e];
        match method {
            Downsample::Mean => {
                acc.fill(0.0);
                if last_f == 2 {
                    // The common factor, in pairs the compiler unrolls: the same sums, in the
                    // same order, as the general loop below (a pair's sum is v0 + v1).
                    let pairs = last_e / 2;
                    for &r in &rows {
                        let src = row(r);
                        for (a, p) in acc[..pairs].iter_mut().zip(src.chunks_exact(2)) {
                            *a += p[0].to_f64() + p[1].to_f64();
                        }
                        if last_e % 2 == 1 {
                            acc[pairs] += src[last_e - 1].to_f64();
                        }
                    }
                } else {
                    for &r in &rows {
                        for (a, block) in acc.iter_mut().zip(row(r).chunks(last_f)) {
                            *a += block.iter().map(|v| v.to_f64()).sum::<f64>();
                        }
                    }
                }
                for (j, c) in counts.iter_mut().enumerate() {
                    *c = rows.len() * (last_e.min((j + 1) * last_f) - j * last_f);
                }
                for ((d, &a), &c) in dst_row.iter_mut().zip(&acc).zip(&counts) {
                    *d = T::from_f64(a / c as f64);
                }
            }
            Downsample::Nearest => {
                let first = row(rows[0]);
                for (j, d) in dst_row.iter_mut().enumerate() {
                    *d = first[j * last_f];
                }
            }
            Downsample::Min | Downsample::Max => {
                let max = method == Downsample::Max;
                let first = row(rows[0]);
                for (j, d) in dst_row.iter_mut().enumerate() {
                    *d = first[j * last_f];
                }
                for &r in &rows {
                    for (d, block) in dst_row.iter_mut().zip(row(r).chunks(last_f)) {
                        for &v in block {
                            // NaN wins, as numpy's min and max.
                            #[allow(clippy::eq_op)]
                            let take = v != v || (*d == *d && if max { v > *d } else { v < *d });
                            if take {
                                *d = v;
                            }
                        }
                    }
                }
            }
            Downsample::Gaussian => {
                // Never here: `downsample` refuses it and pyramids fold no gaussian level.
                debug_assert!(false, "gaussian is not a block reduction");
            }
            Downsample::Mode => {
                for (j, d) in dst_row.iter_mut().enumerate() {
                    values.clear();
                    let (a, b) = (j * last_f, last_e.min((j + 1) * last_f));
                    for &r in &rows {
                        values.extend_from_slice(&row(r)[a..b]);
                    }
                    *d = mode(&mut values);
                }
            }
        }
        // The next output row, in C order.
        let mut k = nd - 1;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            o[k] += 1;
            if o[k] < lead[k] {
                break;
            }
            o[k] = 0;
        }
    }
}

/// The offsets of the input rows making up the blocks of output row `o` (every axis but the
/// last), in C order.
fn block_rows(
    o: &[usize],
    extent: &[usize],
    f: &[usize],
    strides: &[usize],
    rows: &mut Vec<usize>,
    (ranges, i): &mut (Vec<(usize, usize)>, Vec<usize>),
) {
    let lead = o.len();
    ranges.clear();
    ranges.extend((0..lead).map(|k| (o[k] * f[k], extent[k].min((o[k] + 1) * f[k]))));
    i.clear();
    i.extend(ranges.iter().map(|r| r.0));
    loop {
        rows.push(i.iter().zip(strides).map(|(&i, &s)| i * s).sum());
        let mut k = lead;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            i[k] += 1;
            if i[k] < ranges[k].1 {
                break;
            }
            i[k] = ranges[k].0;
        }
    }
}

/// The most frequent value, the smallest among equally frequent ones (NaN counted as one
/// value, after every number).
fn mode<T: Scalar>(values: &mut [T]) -> T {
    #[allow(clippy::eq_op)]
    let order = |a: &T, b: &T| a.partial_cmp(b).unwrap_or_else(|| (a != a).cmp(&(b != b)));
    values.sort_unstable_by(order);
    let (mut best, mut best_n) = (values[0], 0usize);
    let mut at = 0;
    while at < values.len() {
        let v = values[at];
        let n = values[at..]
            .iter()
            .take_while(|w| order(w, &v) == Ordering::Equal)
            .count();
        if n > best_n {
            (best, best_n) = (v, n);
        }
        at += n;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, voxel by voxel: the reduction of each block's voxels present.
    fn reference(a: &ArrayD<i32>, f: &[usize], method: Downsample) -> ArrayD<i32> {
        let out: Vec<usize> = a
            .shape()
            .iter()
            .zip(f)
            .map(|(&s, &f)| s.div_ceil(f))
            .collect();
        ArrayD::from_shape_fn(IxDyn(&out), |o| {
            let mut vals: Vec<i32> = Vec::new();
            for (idx, &v) in a.indexed_iter() {
                if (0..a.ndim()).all(|k| idx[k] / f[k] == o[k]) {
                    vals.push(v);
                }
            }
            match method {
                Downsample::Mean => {
                    let m = vals.iter().map(|&v| f64::from(v)).sum::<f64>() / vals.len() as f64;
                    m.round_ties_even() as i32
                }
                Downsample::Nearest => vals[0],
                Downsample::Min => *vals.iter().min().unwrap(),
                Downsample::Max => *vals.iter().max().unwrap(),
                Downsample::Mode => {
                    let mut best = (0usize, i32::MAX);
                    for &v in &vals {
                        let n = vals.iter().filter(|&&w| w == v).count();
                        if n > best.0 || (n == best.0 && v < best.1) {
                            best = (n, v);
                        }
                    }
                    best.1
                }
                Downsample::Gaussian => unreachable!("not a block reduction"),
            }
        })
    }

    #[test]
    fn every_method_matches_the_definition_with_partial_edge_blocks() {
        let shapes: [&[usize]; 4] = [&[7], &[5, 7], &[3, 4, 5], &[2, 3, 3, 5]];
        let factors: [&[usize]; 4] = [&[3], &[2, 3], &[2, 1, 2], &[1, 2, 2, 3]];
        for (shape, f) in shapes.iter().zip(factors) {
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(
                IxDyn(shape),
                (0..n as i32).map(|i| (i * 7919) % 5 - 2).collect(),
            )
            .unwrap();
            let fu: Vec<u64> = f.iter().map(|&x| x as u64).collect();
            for m in [
                Downsample::Mean,
                Downsample::Mode,
                Downsample::Nearest,
                Downsample::Min,
                Downsample::Max,
            ] {
                assert_eq!(
                    downsample(a.view(), &fu, m).unwrap(),
                    reference(&a, f, m),
                    "{shape:?} by {f:?}, {m:?}"
                );
            }
        }
    }

    #[test]
    fn nan_wins_min_and_max_and_counts_once_in_mode() {
        let a = ndarray::arr1(&[1.0f32, f32::NAN, 3.0, 3.0]).into_dyn();
        let max = downsample(a.view(), &[2], Downsample::Max).unwrap();
        assert!(max[[0]].is_nan() && max[[1]] == 3.0);
        let b = ndarray::arr1(&[f32::NAN, f32::NAN, 2.0]).into_dyn();
        assert!(downsample(b.view(), &[3], Downsample::Mode).unwrap()[[0]].is_nan());
    }

    #[test]
    fn factors_must_fit_the_rank() {
        let a = ArrayD::<u8>::zeros(IxDyn(&[4, 4]));
        assert!(downsample(a.view(), &[2], Downsample::Mean).is_err());
        assert!(downsample(a.view(), &[2, 0], Downsample::Mean).is_err());
    }
}
