//! `correlate1d` with scipy.ndimage.correlate1d semantics, and the 1-D correlation engine the
//! separable filters (gaussian) share.

use std::ops::{Add, AddAssign, Mul};

use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result};
use crate::halo::Boundary;
use crate::kernel::{Block, Kernel, OutBlock, Scratch};
use crate::with_scalar;

/// The floating-point types filters compute in.
pub(crate) trait Work: Scalar + Mul<Output = Self> + Add<Output = Self> + AddAssign {
    /// `self * a + b`, fused where the CPU has FMA.
    fn mul_add(self, a: Self, b: Self) -> Self;
}
impl Work for f32 {
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
}
impl Work for f64 {
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
}

/// Correlates a C-order array of shape `(outer, n_in, inner)` with `weights` along its middle
/// axis: `out[o, k, i] = Σ_j w[j] · in[o, k + j, i]`, `n_out = n_in - weights.len() + 1`.
/// Uses AVX2 and FMA where the CPU has them (one machine always takes the same path, so
/// results do not depend on the chunking).
pub(crate) fn correlate_lines<A: Work>(
    input: &[A],
    dims: (usize, usize, usize),
    weights: &[A],
    out: &mut [A],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        unsafe { correlate_lines_fma(input, dims, weights, out) };
        return;
    }
    correlate_body::<A, false>(input, dims, weights, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn correlate_lines_fma<A: Work>(
    input: &[A],
    dims: (usize, usize, usize),
    weights: &[A],
    out: &mut [A],
) {
    correlate_body::<A, true>(input, dims, weights, out);
}

#[inline(always)]
fn correlate_body<A: Work, const FMA: bool>(
    input: &[A],
    (outer, n_in, inner): (usize, usize, usize),
    weights: &[A],
    out: &mut [A],
) {
    let n_out = n_in + 1 - weights.len();
    assert_eq!(
        input.len(),
        outer * n_in * inner,
        "input holds the stated shape"
    );
    assert_eq!(
        out.len(),
        outer * n_out * inner,
        "output holds the stated shape"
    );
    if inner == 1 {
        // Along the contiguous axis: taps are neighbouring elements.
        for o in 0..outer {
            dot_rows::<A, FMA>(
                input,
                o * n_in,
                1,
                weights,
                &mut out[o * n_out..(o + 1) * n_out],
            );
        }
        return;
    }
    // Along an outer axis: taps are whole rows `inner` apart.
    for o in 0..outer {
        for k in 0..n_out {
            let dst = &mut out[(o * n_out + k) * inner..(o * n_out + k + 1) * inner];
            dot_rows::<A, FMA>(input, (o * n_in + k) * inner, inner, weights, dst);
        }
    }
}

/// `dst[t] = Σ_j w[j] · src[base + j·tap + t]`, accumulating blocks of `W` outputs in
/// registers across all taps (one store per output, not one per tap).
#[inline(always)]
fn dot_rows<A: Work, const FMA: bool>(
    src: &[A],
    base: usize,
    tap: usize,
    weights: &[A],
    dst: &mut [A],
) {
    const W: usize = 32;
    let n = dst.len();
    let last = base + (weights.len() - 1) * tap + n;
    assert!(last <= src.len(), "taps stay inside the source");
    let mut x = 0;
    while x + W <= n {
        let mut acc = [A::default(); W];
        for (j, &w) in weights.iter().enumerate() {
            let s: &[A; W] = src[base + j * tap + x..base + j * tap + x + W]
                .try_into()
                .expect("a slice of W");
            for t in 0..W {
                acc[t] = if FMA {
                    w.mul_add(s[t], acc[t])
                } else {
                    acc[t] + w * s[t]
                };
            }
        }
        dst[x..x + W].copy_from_slice(&acc);
        x += W;
    }
    for (t, d) in dst.iter_mut().enumerate().skip(x) {
        let mut a = A::default();
        for (j, &w) in weights.iter().enumerate() {
            let v = src[base + j * tap + t];
            a = if FMA { w.mul_add(v, a) } else { a + w * v };
        }
        *d = a;
    }
}

/// `(outer, n, inner)` of `shape` around `axis`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Halo `(before, after)` of a filter of `len` taps with scipy's `origin`.
pub(crate) fn filter_halo(len: usize, origin: i64) -> Result<(u64, u64)> {
    let size1 = (len / 2) as i64;
    let size2 = len as i64 - size1 - 1;
    if origin < -size1 || origin > size2 {
        return Err(Error::option(
            "origin",
            format!(
                "{origin} is outside [{}, {size2}] for {len} weights",
                -size1
            ),
        ));
    }
    Ok(((size1 + origin) as u64, (size2 - origin) as u64))
}

/// scipy.ndimage.correlate1d: `out[i] = Σ_j w[j] · in[i + j - len/2 - origin]` along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct Correlate1d {
    /// The axis.
    pub axis: usize,
    /// The weights (not flipped: correlation).
    pub weights: Vec<f64>,
    /// scipy's origin: positive shifts the filter towards lower indices.
    pub origin: i64,
    /// The boundary mode.
    pub mode: Boundary,
    /// Output type (default float32, float64 for float64 input).
    pub dtype: Option<DType>,
}

impl Correlate1d {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for no weights or a bad origin.
    pub fn validate(&self) -> Result<()> {
        if self.weights.is_empty() {
            return Err(Error::option("weights", "no weights given"));
        }
        if self.weights.iter().any(|w| !w.is_finite()) {
            return Err(Error::option("weights", "weights must be finite"));
        }
        filter_halo(self.weights.len(), self.origin).map(|_| ())
    }
}

/// The default output type of a filter: float32, or float64 for float64 input.
pub(crate) fn filter_dtype(requested: Option<DType>, input: DType) -> DType {
    requested.unwrap_or(if input == DType::F64 {
        DType::F64
    } else {
        DType::F32
    })
}

impl Kernel for Correlate1d {
    fn shift_invariant(&self) -> bool {
        true
    }

    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        if self.axis >= ndim {
            return Err(Error::option(
                "axis",
                format!("axis {} is out of range for {ndim} dimensions", self.axis),
            ));
        }
        let mut h = vec![(0, 0); ndim];
        h[self.axis] = filter_halo(self.weights.len(), self.origin)?;
        Ok(h)
    }

    fn boundary(&self) -> Boundary {
        self.mode
    }

    fn output_dtype(&self, inputs: &[DType]) -> Result<DType> {
        Ok(filter_dtype(self.dtype, inputs[0]))
    }

    fn describe(&self) -> String {
        format!(
            "correlate1d axis={} weights={:?} origin={} mode={}",
            self.axis, self.weights, self.origin, self.mode
        )
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        if out.dtype() == DType::F32 {
            run::<f32>(self, &inputs[0], out)
        } else {
            run::<f64>(self, &inputs[0], out)
        }
    }

    fn scratch_bytes(&self, block_elems: u64) -> u64 {
        block_elems * 8 * 2
    }
}

fn run<A: Work>(k: &Correlate1d, input: &Block<'_>, out: &mut OutBlock<'_>) -> Result<()> {
    let shape = input.shape().to_vec();
    let n: usize = shape.iter().product();
    let mut scratch = Scratch::new(n * std::mem::size_of::<A>());
    let work: &mut [A] = scratch.slice_mut(n);
    to_work(input, work)?;
    if let Boundary::Constant(c) = k.mode {
        // The block holds the constant in the input's type; scipy pads with it in float64.
        repad_constant(work, &shape, input, k.axis..k.axis + 1, A::from_f64(c));
    }
    let weights: Vec<A> = k.weights.iter().map(|&w| A::from_f64(w)).collect();
    let (outer, n_in, inner) = split_at_axis(&shape, k.axis);
    let n_out = n_in + 1 - weights.len();
    let mut out_shape = shape.clone();
    out_shape[k.axis] = n_out;
    let m = outer * n_out * inner;
    let direct = out_shape
        .iter()
        .zip(input.valid())
        .all(|(&s, v)| s == v.len());
    if direct {
        // No halo left on any axis: the pass can write the output chunk itself.
        if let Some(dst) = out.contiguous_mut::<A>() {
            correlate_lines(work, (outer, n_in, inner), &weights, &mut dst[..m]);
            return Ok(());
        }
    }
    let mut res_buf = Scratch::new(m * std::mem::size_of::<A>());
    let res: &mut [A] = res_buf.slice_mut(m);
    correlate_lines(work, (outer, n_in, inner), &weights, res);
    store(res, &out_shape, input.valid(), k.axis, out)
}

/// The block converted to the work type, C order, into `dst`.
pub(crate) fn to_work<A: Work>(input: &Block<'_>, dst: &mut [A]) -> Result<()> {
    with_scalar!(input.dtype(), T => {
        let v = input.view::<T>()?;
        let flat = v.as_slice().expect("blocks are C-contiguous");
        if A::DTYPE == DType::F32 {
            // One rounding straight to f32 (via f64 it would be two conversions per element).
            let dst: &mut [f32] = bytemuck::cast_slice_mut(dst);
            for (d, &x) in dst.iter_mut().zip(flat) {
                *d = x.to_f32();
            }
        } else {
            for (d, &x) in dst.iter_mut().zip(flat) {
                *d = A::from_f64(x.to_f64());
            }
        }
        Ok(())
    })
}

/// Writes the valid part of a filtered array (already trimmed along `done_axis` and earlier
/// filtered axes; still holding the halo on the others) into the output chunk.
pub(crate) fn store<A: Work>(
    res: &[A],
    shape: &[usize],
    valid: &[std::ops::Range<usize>],
    done_axis: usize,
    out: &mut OutBlock<'_>,
) -> Result<()> {
    let arr = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(shape), res)
        .expect("result buffer holds its shape");
    let mut v = arr;
    v.slice_each_axis_inplace(|ax| {
        let a = ax.axis.index();
        if a == done_axis {
            ndarray::Slice::from(0..shape[a])
        } else {
            ndarray::Slice::from(valid[a].clone())
        }
    });
    with_scalar!(out.dtype(), O => {
        let mut dst = out.view_mut::<O>()?;
        ndarray::Zip::from(&mut dst).and(&v).for_each(|o, &x| *o = O::from_f64(x.to_f64()));
    });
    Ok(())
}

/// Sets the positions outside the array, on `axes`, to `c`.
pub(crate) fn repad_constant<A: Work>(
    data: &mut [A],
    shape: &[usize],
    input: &Block<'_>,
    axes: std::ops::Range<usize>,
    c: A,
) {
    let origin = input.origin();
    let n = input.array_shape();
    for axis in axes {
        let (outer, len, inner) = split_at_axis(shape, axis);
        for k in 0..len {
            let p = origin[axis] + k as i64;
            if p >= 0 && p < n[axis] as i64 {
                continue;
            }
            for o in 0..outer {
                let start = (o * len + k) * inner;
                data[start..start + inner].fill(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_along_each_position() {
        // (outer=1, n=5, inner=2): columns [0,1,2,3,4] and [10,11,12,13,14]
        let input: Vec<f64> = (0..5).flat_map(|k| [k as f64, 10.0 + k as f64]).collect();
        let mut out = vec![0.0; 3 * 2];
        correlate_lines(&input, (1, 5, 2), &[1.0, 0.0, -1.0], &mut out);
        assert_eq!(out, vec![-2.0, -2.0, -2.0, -2.0, -2.0, -2.0]);
        let row: Vec<f64> = vec![1.0, 2.0, 4.0, 8.0];
        let mut out = vec![0.0; 2];
        correlate_lines(&row, (1, 4, 1), &[1.0, 10.0, 100.0], &mut out);
        assert_eq!(out, vec![421.0, 842.0]);
    }

    #[test]
    fn origin_bounds() {
        assert_eq!(filter_halo(3, 0).unwrap(), (1, 1));
        assert_eq!(filter_halo(4, 0).unwrap(), (2, 1));
        assert_eq!(filter_halo(3, 1).unwrap(), (2, 0));
        assert_eq!(filter_halo(3, -1).unwrap(), (0, 2));
        assert!(filter_halo(3, 2).is_err());
    }
}
