//! `gaussian` with scipy.ndimage.gaussian_filter semantics: separable 1-D Gaussian correlations
//! along every axis in order, radius `int(truncate * sigma + 0.5)`, weights normalised to sum 1.

use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result};
use crate::halo::Boundary;
use crate::kernel::correlate::{
    Work, correlate_lines, filter_dtype, repad_constant, split_at_axis, store, to_work,
};
use crate::kernel::{Block, Kernel, OutBlock, Scratch};
use crate::with_scalar;

/// A Gaussian filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Gaussian {
    /// Standard deviation per axis (one value: every axis).
    pub sigma: Vec<f64>,
    /// Radius in standard deviations (scipy's default 4.0).
    pub truncate: f64,
    /// The boundary mode.
    pub mode: Boundary,
    /// Output type (default float32, float64 for float64 input).
    pub dtype: Option<DType>,
}

impl Gaussian {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a sigma that is not positive and finite, or a bad truncate.
    pub fn validate(&self) -> Result<()> {
        if self.sigma.is_empty() {
            return Err(Error::option("sigma", "no sigma given"));
        }
        if let Some(s) = self.sigma.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::option(
                "sigma",
                format!("sigma must be positive and finite, got {s}"),
            ));
        }
        if !(self.truncate.is_finite() && self.truncate > 0.0) {
            return Err(Error::option(
                "truncate",
                format!("must be positive, got {}", self.truncate),
            ));
        }
        Ok(())
    }

    fn sigmas(&self, ndim: usize) -> Result<Vec<f64>> {
        match self.sigma.len() {
            1 => Ok(vec![self.sigma[0]; ndim]),
            n if n == ndim => Ok(self.sigma.clone()),
            n => Err(Error::option(
                "sigma",
                format!("{n} sigmas given for {ndim} dimensions"),
            )),
        }
    }

    /// The radius per axis: `int(truncate * sigma + 0.5)`, as scipy.
    ///
    /// # Errors
    /// As [`Gaussian::validate`]; [`Error::InvalidOption`] for a radius beyond
    /// [`MAX_RADIUS`] (a kernel that long cannot be applied in bounded time).
    pub fn radius(&self, ndim: usize) -> Result<Vec<u64>> {
        self.validate()?;
        self.sigmas(ndim)?
            .iter()
            .map(|&s| {
                let r = (self.truncate * s + 0.5).floor();
                if r > MAX_RADIUS as f64 {
                    return Err(Error::option(
                        "sigma",
                        format!(
                            "sigma {s:?} with truncate {} makes a kernel radius of {r:e} voxels; \
                             at most {MAX_RADIUS} are supported",
                            self.truncate
                        ),
                    ));
                }
                Ok(r as u64)
            })
            .collect()
    }
}

/// The longest kernel radius (voxels on each side) a Gaussian may have.
pub const MAX_RADIUS: u64 = 1 << 20;

/// scipy's `_gaussian_kernel1d(sigma, order=0, radius)`.
pub(crate) fn gaussian_weights(sigma: f64, radius: u64) -> Vec<f64> {
    let r = radius as i64;
    let phi: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = phi.iter().sum();
    phi.into_iter().map(|p| p / sum).collect()
}

impl Kernel for Gaussian {
    fn shift_invariant(&self) -> bool {
        true
    }

    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        Ok(self.radius(ndim)?.into_iter().map(|r| (r, r)).collect())
    }

    fn boundary(&self) -> Boundary {
        self.mode
    }

    fn output_dtype(&self, inputs: &[DType]) -> Result<DType> {
        Ok(filter_dtype(self.dtype, inputs[0]))
    }

    fn describe(&self) -> String {
        format!(
            "gaussian sigma={:?} truncate={} mode={}",
            self.sigma, self.truncate, self.mode
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

    fn scratch_bytes_for(&self, block: &[u64], out: DType) -> u64 {
        let work = if out == DType::F32 { 4 } else { 8 };
        let n = block.iter().fold(1u64, |a, &x| a.saturating_mul(x));
        let [_, by, bx] = block else {
            // Two whole-block buffers the passes ping-pong between (`run`).
            return n.saturating_mul(2 * work);
        };
        // `run3`: a ring of 2 (2 r0 + 1) planes of the block in the work type, two planes, and
        // the output chunk staged when it cannot be written in place (an edge chunk, an output
        // type other than the work's).
        let Ok(r) = self.radius(3) else {
            return n.saturating_mul(2 * work);
        };
        let ring = 2 * (2 * r[0] + 1) + 2;
        let out_elems = block.iter().zip(&r).fold(1u64, |a, (&b, &r)| {
            a.saturating_mul(b.saturating_sub(2 * r))
        });
        ring.saturating_mul(by * bx)
            .saturating_add(out_elems)
            .saturating_mul(work)
    }
}

fn run<A: Work>(g: &Gaussian, input: &Block<'_>, out: &mut OutBlock<'_>) -> Result<()> {
    let ndim = input.shape().len();
    if ndim == 3 {
        return run3::<A>(g, input, out);
    }
    let sigmas = g.sigmas(ndim)?;
    let radius = g.radius(ndim)?;
    let mut shape = input.shape().to_vec();
    let n0: usize = shape.iter().product();
    // Two scratch buffers the passes ping-pong between (each pass shrinks the array).
    let mut a = Scratch::new(n0 * std::mem::size_of::<A>());
    let mut b = Scratch::new(n0 * std::mem::size_of::<A>());
    to_work(input, a.slice_mut::<A>(n0))?;
    if let Boundary::Constant(c) = g.mode {
        // The block holds the constant in the input's type (rounded for integers); scipy pads
        // with it in float64.
        repad_constant(a.slice_mut::<A>(n0), &shape, input, 0..ndim, A::from_f64(c));
    }
    let passes: Vec<usize> = (0..ndim).filter(|&ax| radius[ax] > 0).collect();
    for (p, &axis) in passes.iter().enumerate() {
        let weights: Vec<A> = gaussian_weights(sigmas[axis], radius[axis])
            .into_iter()
            .map(A::from_f64)
            .collect();
        let (outer, n_in, inner) = split_at_axis(&shape, axis);
        let n_out = n_in + 1 - weights.len();
        let (len_in, len_out) = (outer * n_in * inner, outer * n_out * inner);
        shape[axis] = n_out;
        if p + 1 == passes.len() {
            // The last pass writes the output chunk itself where it can.
            if let Some(dst) = out.contiguous_mut::<A>() {
                correlate_lines(
                    a.slice::<A>(len_in),
                    (outer, n_in, inner),
                    &weights,
                    &mut dst[..len_out],
                );
                return Ok(());
            }
        }
        correlate_lines(
            a.slice::<A>(len_in),
            (outer, n_in, inner),
            &weights,
            b.slice_mut::<A>(len_out),
        );
        std::mem::swap(&mut a, &mut b);
        if let Boundary::Constant(c) = g.mode {
            // scipy pads every pass's input with the constant: the later axes' halo must hold
            // it again, not the filtered constant.
            repad_constant(
                a.slice_mut::<A>(len_out),
                &shape,
                input,
                axis + 1..ndim,
                A::from_f64(c),
            );
        }
    }
    // What is left has exactly the output's extent (axes of radius 0 carry no halo).
    let n: usize = shape.iter().product();
    let full: Vec<std::ops::Range<usize>> = shape.iter().map(|&s| 0..s).collect();
    store(a.slice::<A>(n), &shape, &full, usize::MAX, out)
}

/// The 3-D filter, one output plane at a time: the pass along axis 0 makes one plane from
/// `2 r0 + 1` input planes, and the passes along axes 1 and 2 run on that plane while it is in
/// cache (the same arithmetic as three whole-block passes, in a cache-sized working set).
fn run3<A: Work>(g: &Gaussian, input: &Block<'_>, out: &mut OutBlock<'_>) -> Result<()> {
    let sigmas = g.sigmas(3)?;
    let radius = g.radius(3)?;
    let shape = input.shape().to_vec();
    let (bz, by, bx) = (shape[0], shape[1], shape[2]);
    let (r0, r1, r2) = (radius[0] as usize, radius[1] as usize, radius[2] as usize);
    let (nz, ny, nx) = (bz - 2 * r0, by - 2 * r1, bx - 2 * r2);
    let weights = |a: usize| -> Vec<A> {
        gaussian_weights(sigmas[a], radius[a])
            .into_iter()
            .map(A::from_f64)
            .collect()
    };
    let (w0, w1, w2) = (weights(0), weights(1), weights(2));
    let cval = match g.mode {
        Boundary::Constant(c) => Some(A::from_f64(c)),
        _ => None,
    };
    let plane = by * bx;
    // Rows and columns of a plane that lie outside the array (for the constant mode).
    let origin = input.origin();
    let n = input.array_shape();
    let outside = |axis: usize, k: usize| {
        let p = origin[axis] + k as i64;
        p < 0 || p >= n[axis] as i64
    };
    // The block's planes in the work type, `w = 2 r0 + 1` at a time: a ring holding each
    // plane twice (slots p mod w and p mod w + w), so that the w planes output plane k reads
    // are always contiguous, from slot k mod w. The whole block is never converted at once.
    let w = 2 * r0 + 1;
    let mut ring = Scratch::new(2 * w * plane * std::mem::size_of::<A>());
    let load = |ring: &mut Scratch, p: usize| -> Result<()> {
        let slots = ring.slice_mut::<A>(2 * w * plane);
        let at = (p % w) * plane;
        let dst = &mut slots[at..at + plane];
        plane_to_work(input, p, plane, dst)?;
        if let Some(c) = cval {
            if outside(0, p) {
                dst.fill(c);
            } else {
                for y in (0..by).filter(|&y| outside(1, y)) {
                    dst[y * bx..(y + 1) * bx].fill(c);
                }
                for x in (0..bx).filter(|&x| outside(2, x)) {
                    for y in 0..by {
                        dst[y * bx + x] = c;
                    }
                }
            }
        }
        slots.copy_within(at..at + plane, at + w * plane);
        Ok(())
    };
    for p in 0..w - 1 {
        load(&mut ring, p)?;
    }
    let mut p0 = Scratch::new(plane * std::mem::size_of::<A>());
    let mut p1 = Scratch::new(ny * bx * std::mem::size_of::<A>());
    let direct = out.contiguous_mut::<A>().is_some();
    let mut stage: Vec<A> = Vec::new();
    if !direct {
        stage = vec![A::default(); nz * ny * nx];
    }
    for k in 0..nz {
        // Axis 0: plane k of the output from planes k..k + 2 r0 of the block.
        load(&mut ring, k + w - 1)?;
        let first = (k % w) * plane;
        let p0s = p0.slice_mut::<A>(plane);
        correlate_lines(
            &ring.slice::<A>(2 * w * plane)[first..first + w * plane],
            (1, w, plane),
            &w0,
            p0s,
        );
        if let Some(c) = cval {
            for y in (0..by).filter(|&y| outside(1, y)) {
                p0s[y * bx..(y + 1) * bx].fill(c);
            }
            for x in (0..bx).filter(|&x| outside(2, x)) {
                for y in 0..by {
                    p0s[y * bx + x] = c;
                }
            }
        }
        // Axis 1, then axis 2, on the plane.
        let p1s = p1.slice_mut::<A>(ny * bx);
        correlate_lines(p0.slice::<A>(plane), (1, by, bx), &w1, p1s);
        if let Some(c) = cval {
            for x in (0..bx).filter(|&x| outside(2, x)) {
                for y in 0..ny {
                    p1s[y * bx + x] = c;
                }
            }
        }
        let dst: &mut [A] = if direct {
            &mut out.contiguous_mut::<A>().expect("checked above")[k * ny * nx..(k + 1) * ny * nx]
        } else {
            &mut stage[k * ny * nx..(k + 1) * ny * nx]
        };
        correlate_lines(p1.slice::<A>(ny * bx), (ny, bx, 1), &w2, dst);
    }
    if !direct {
        let full: Vec<std::ops::Range<usize>> = vec![0..nz, 0..ny, 0..nx];
        store(&stage, &[nz, ny, nx], &full, usize::MAX, out)?;
    }
    Ok(())
}

/// Converts plane `p` (of `plane` elements) of the C-order block `input` into `dst`, as
/// [`to_work`] converts the whole block.
fn plane_to_work<A: Work>(input: &Block<'_>, p: usize, plane: usize, dst: &mut [A]) -> Result<()> {
    with_scalar!(input.dtype(), T => {
        let v = input.view::<T>()?;
        let flat = v.as_slice().expect("blocks are C-contiguous");
        let src = &flat[p * plane..(p + 1) * plane];
        if A::DTYPE == DType::F32 {
            // One rounding straight to f32, as `to_work`.
            let dst: &mut [f32] = bytemuck::cast_slice_mut(dst);
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = x.to_f32();
            }
        } else {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = A::from_f64(x.to_f64());
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_like_scipy() {
        // scipy.ndimage._filters._gaussian_kernel1d(1.0, 0, 2)
        let w = gaussian_weights(1.0, 2);
        let want = [0.05448868, 0.24420134, 0.40261995, 0.24420134, 0.05448868];
        for (a, b) in w.iter().zip(want) {
            assert!((a - b).abs() < 1e-8, "{a} vs {b}");
        }
        let g = Gaussian {
            sigma: vec![2.0],
            truncate: 4.0,
            mode: Boundary::Reflect,
            dtype: None,
        };
        assert_eq!(g.radius(3).unwrap(), vec![8, 8, 8]);
    }
}
