//! `neighbourhood-lut` (ClearMap's `apply_lut_to_index`): for a binary 3-D input,
//! `index = Σ in[z+a-1, y+b-1, x+c-1] · 2^(9a+3b+c)` over the 3x3x3 neighbourhood (zero outside
//! the array), `out = T[index]` with a table of 2^27 entries, memory-mapped.

use ndarray::{ArrayViewD, Axis, Ix3};

use crate::dtype::{Bound, DType, Number, Scalar, above_bound, not_nan};
use crate::error::{Error, KernelError, Result};
use crate::halo::Boundary;
use crate::kernel::lut::Table;
use crate::kernel::{Block, Kernel, OutBlock, Scratch};
use crate::with_scalar;

/// Entries a neighbourhood table must have: one per 3x3x3 binary pattern.
pub const NEIGHBOURHOOD_TABLE_LEN: usize = 1 << 27;

/// `out = table[27-bit neighbourhood index]`.
#[derive(Debug)]
pub struct NeighbourhoodLut {
    table: Table,
    above: Option<Number>,
}

impl NeighbourhoodLut {
    /// A kernel over `table`.
    ///
    /// # Errors
    /// [`crate::InputError::BadInput`] unless the table has exactly 2^27 entries.
    pub fn new(table: Table) -> Result<NeighbourhoodLut> {
        if table.len() != NEIGHBOURHOOD_TABLE_LEN {
            return Err(Error::bad_input(
                table.path(),
                format!(
                    "a neighbourhood table has 2^27 = {NEIGHBOURHOOD_TABLE_LEN} entries, this one {}",
                    table.len()
                ),
            ));
        }
        Ok(NeighbourhoodLut { table, above: None })
    }

    /// Binarises any numeric input on the fly: a voxel is 1 where `in > x` (W7's `V > 700`),
    /// instead of requiring a 0/1 input.
    pub fn above(mut self, x: Option<Number>) -> Self {
        self.above = x;
        self
    }
}

impl Kernel for NeighbourhoodLut {
    fn shift_invariant(&self) -> bool {
        true
    }

    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        if ndim != 3 {
            return Err(Error::option(
                "input",
                format!("neighbourhood-lut needs a 3-D input, got {ndim} dimensions"),
            ));
        }
        Ok(vec![(1, 1); 3])
    }

    fn boundary(&self) -> Boundary {
        Boundary::Constant(0.0)
    }

    fn output_dtype(&self, inputs: &[DType]) -> Result<DType> {
        if inputs[0].is_float() && self.above.is_none() {
            return Err(Error::option(
                "input",
                format!(
                    "neighbourhood-lut needs a binary integer or bool input, got {}",
                    inputs[0]
                ),
            ));
        }
        Ok(self.table.dtype())
    }

    fn describe(&self) -> String {
        match self.above {
            Some(x) => format!("neighbourhood-lut {} above={x}", self.table.describe()),
            None => format!("neighbourhood-lut {} above=none", self.table.describe()),
        }
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        let input = &inputs[0];
        let origin = input.origin().to_vec();
        let key = out.key().to_string();
        with_scalar!(self.table.dtype(), O => {
            let table = self.table.values::<O>()?;
            with_scalar!(input.dtype(), I => {
                let block = input.view::<I>()?;
                let mut dst = out.view_mut::<O>()?;
                apply_typed(block, &mut dst, &table, self.above).map_err(|(pos, v)| Error::Kernel(KernelError::Compute {
                    chunk: key.clone(),
                    reason: format!(
                        "value {v} at {:?}: neighbourhood-lut needs a binary (0/1) input",
                        pos.iter().zip(&origin).map(|(&p, &o)| p as i64 + o).collect::<Vec<_>>()
                    ),
                }))?;
            });
        });
        Ok(())
    }
}

/// `out[i] = 1` where `line[i] > t`, compared in the element type (exactly for integers).
fn above_mask<I: Scalar>(line: &[I], t: Number, out: &mut [u8]) {
    match above_bound::<I>(t) {
        Bound::Never => out.fill(0),
        // NaN is never above anything.
        Bound::Always => {
            for (o, &v) in out.iter_mut().zip(line) {
                *o = u8::from(not_nan(v));
            }
        }
        Bound::At(thr) => {
            for (o, &v) in out.iter_mut().zip(line) {
                *o = u8::from(v > thr);
            }
        }
    }
}

/// The block has a halo of 1 on every axis; `dst` is the block's interior.
fn apply_typed<I: Scalar, O: Scalar>(
    block: ArrayViewD<'_, I>,
    dst: &mut ndarray::ArrayViewMutD<'_, O>,
    table: &[O],
    above: Option<Number>,
) -> std::result::Result<(), (Vec<usize>, String)> {
    let block = block.into_dimensionality::<Ix3>().expect("3-D input");
    let (bz, by, bx) = block.dim();
    let (nz, ny, nx) = (bz - 2, by - 2, bx - 2);
    let src = block.as_slice().expect("blocks are C-contiguous");
    if above.is_none() {
        // The input must be binary: name the first value that is not 0 or 1.
        if let Some(k) = src
            .iter()
            .position(|&v| v != I::from_f64(0.0) && v != I::from_f64(1.0))
        {
            let (z, rest) = (k / (by * bx), k % (by * bx));
            return Err((vec![z, rest / bx, rest % bx], src[k].to_string()));
        }
    }
    // Per row of the block, the 3-bit pattern of each output column x: bit c is the voxel at
    // x + c - 1.
    let mut rows = Scratch::new(bz * by * nx);
    let rows: &mut [u8] = rows.slice_mut(bz * by * nx);
    let mut bits = vec![0u8; bx];
    for r in 0..bz * by {
        let line = &src[r * bx..(r + 1) * bx];
        match above {
            Some(t) => above_mask(line, t, &mut bits),
            None => {
                for (b, &v) in bits.iter_mut().zip(line) {
                    *b = u8::from(v != I::from_f64(0.0));
                }
            }
        }
        for (x, p) in rows[r * nx..(r + 1) * nx].iter_mut().enumerate() {
            *p = bits[x] | bits[x + 1] << 1 | bits[x + 2] << 2;
        }
    }
    let mut dst3 = dst
        .view_mut()
        .into_dimensionality::<Ix3>()
        .expect("3-D output");
    let mut index = vec![0u32; nx];
    for z in 0..nz {
        for y in 0..ny {
            index.fill(0);
            for a in 0..3 {
                for b in 0..3 {
                    let shift = 9 * a + 3 * b;
                    let r = (z + a) * by + y + b;
                    for (i, &p) in index.iter_mut().zip(&rows[r * nx..(r + 1) * nx]) {
                        *i |= u32::from(p) << shift;
                    }
                }
            }
            let mut out_row = dst3.index_axis_mut(Axis(0), z);
            let mut out_row = out_row.index_axis_mut(Axis(0), y);
            match out_row.as_slice_mut() {
                Some(o) => {
                    for (o, &i) in o.iter_mut().zip(&index) {
                        *o = table[i as usize];
                    }
                }
                None => {
                    for (o, &i) in out_row.iter_mut().zip(&index) {
                        *o = table[i as usize];
                    }
                }
            }
        }
    }
    Ok(())
}
