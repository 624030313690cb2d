//! `threshold`: out = 1 where in > X, else 0, as uint8 (NaN compares false).

use crate::dtype::{DType, Scalar};
use crate::error::Result;
use crate::kernel::{Block, Kernel, OutBlock, valid_view};
use crate::with_scalar;

/// `out = (in > above) as u8`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// The threshold; voxels strictly above it become 1.
    pub above: f64,
}

impl Kernel for Threshold {
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
    above: f64,
) {
    ndarray::Zip::from(dst)
        .and(&src)
        .for_each(|o, &v| *o = u8::from(v.to_f64() > above));
}
