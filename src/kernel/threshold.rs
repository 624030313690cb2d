//! `threshold`: out = 1 where in > X, else 0, as uint8 (NaN compares false). X compares in
//! the input's type, exactly for integers (spec/COMPUTE.md §4, as `where --above`).

use crate::dtype::{Bound, DType, Number, Scalar, above_bound, not_nan};
use crate::error::Result;
use crate::kernel::{Block, Kernel, OutBlock, valid_view};
use crate::with_scalar;

/// `out = (in > above) as u8`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// The threshold; voxels strictly above it become 1.
    pub above: Number,
}

impl Kernel for Threshold {
    fn shift_invariant(&self) -> bool {
        true
    }

    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 0); ndim])
    }

    fn output_dtype(&self, _inputs: &[DType]) -> Result<DType> {
        Ok(DType::U8)
    }

    fn describe(&self) -> String {
        format!("threshold above={}", self.above)
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        let input = &inputs[0];
        with_scalar!(input.dtype(), T => {
            let src = valid_view(input.view::<T>()?, input.valid());
            let mut dst = out.view_mut::<u8>()?;
            apply_typed(src, &mut dst, self.above);
        });
        Ok(())
    }
}

fn apply_typed<T: Scalar>(
    src: ndarray::ArrayViewD<'_, T>,
    dst: &mut ndarray::ArrayViewMutD<'_, u8>,
    above: Number,
) {
    let zip = ndarray::Zip::from(dst).and(&src);
    match above_bound::<T>(above) {
        Bound::Never => zip.for_each(|o, _| *o = 0),
        // NaN is never above anything.
        Bound::Always => zip.for_each(|o, &v| *o = u8::from(not_nan(v))),
        Bound::At(t) => zip.for_each(|o, &v| *o = u8::from(v > t)),
    }
}
