//! `neighbourhood-lut` (ClearMap's `apply_lut_to_index`): for a binary 3-D input,
//! `index = Σ in[z+a-1, y+b-1, x+c-1] · 2^(9a+3b+c)` over the 3x3x3 neighbourhood (zero outside
//! the array), `out = T[index]` with a table of 2^27 entries, memory-mapped.

use ndarray::{ArrayViewD, Axis, Ix3};

use crate::dtype::{DType, Scalar};
use crate::error::{Error, Result};
use crate::halo::Boundary;
use crate::kernel::lut::Table;
use crate::kernel::{Block, Kernel, OutBlock};
use crate::with_scalar;

/// Entries a neighbourhood table must have: one per 3x3x3 binary pattern.
pub const NEIGHBOURHOOD_TABLE_LEN: usize = 1 << 27;

/// `out = table[27-bit neighbourhood index]`.
#[derive(Debug)]
pub struct NeighbourhoodLut {
    table: Table,
}

impl NeighbourhoodLut {
    /// A kernel over `table`.
    ///
    /// # Errors
    /// [`Error::BadInput`] unless the table has exactly 2^27 entries.
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
        Ok(NeighbourhoodLut { table })
    }
}

impl Kernel for NeighbourhoodLut {
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
        if inputs[0].is_float() {
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
        format!("neighbourhood-lut {}", self.table.describe())
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
                apply_typed(block, &mut dst, &table).map_err(|(pos, v)| Error::Compute {
                    chunk: key.clone(),
                    reason: format!(
                        "value {v} at {:?}: neighbourhood-lut needs a binary (0/1) input",
                        pos.iter().zip(&origin).map(|(&p, &o)| p as i64 + o).collect::<Vec<_>>()
                    ),
                })?;
            });
        });
        Ok(())
    }
}

/// The block has a halo of 1 on every axis; `dst` is the block's interior.
fn apply_typed<I: Scalar, O: Scalar>(
    block: ArrayViewD<'_, I>,
    dst: &mut ndarray::ArrayViewMutD<'_, O>,
    table: &[O],
) -> std::result::Result<(), (Vec<usize>, f64)> {
    let block = block.into_dimensionality::<Ix3>().expect("3-D input");
    // Binarise, checking every value is 0 or 1.
    let (bz, by, bx) = block.dim();
    let mut bits = vec![0u8; bz * by * bx];
    for ((z, y, x), &v) in block.indexed_iter() {
        let f = v.to_f64();
        if f == 0.0 {
            continue;
        }
        if f != 1.0 {
            return Err((vec![z, y, x], f));
        }
        bits[(z * by + y) * bx + x] = 1;
    }
    let mut dst3 = dst
        .view_mut()
        .into_dimensionality::<Ix3>()
        .expect("3-D output");
    let (nz, ny, nx) = dst3.dim();
    // Per (row of the block), the 3-bit pattern along x: p[x] = b[x] | b[x+1] << 1 | b[x+2] << 2
    // for output column x (bit c is neighbour x + c - 1).
    let mut rows = vec![0u32; by * bz * nx];
    for z in 0..bz {
        for y in 0..by {
            let r = &bits[(z * by + y) * bx..(z * by + y + 1) * bx];
            let p = &mut rows[(z * by + y) * nx..(z * by + y + 1) * nx];
            for x in 0..nx {
                p[x] = u32::from(r[x]) | u32::from(r[x + 1]) << 1 | u32::from(r[x + 2]) << 2;
            }
        }
    }
    let mut index = vec![0u32; nx];
    for z in 0..nz {
        for y in 0..ny {
            index.fill(0);
            for a in 0..3 {
                for b in 0..3 {
                    let shift = 9 * a + 3 * b;
                    let p = &rows[((z + a) * by + y + b) * nx..((z + a) * by + y + b + 1) * nx];
                    for (i, &pv) in index.iter_mut().zip(p) {
                        *i |= pv << shift;
                    }
                }
            }
            let mut out_row = dst3.index_axis_mut(Axis(0), z);
            let mut out_row = out_row.index_axis_mut(Axis(0), y);
            for (o, &i) in out_row.iter_mut().zip(&index) {
                *o = table[i as usize];
            }
        }
    }
    Ok(())
}
