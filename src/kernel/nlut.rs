//! `neighbourhood-lut` (ClearMap's `apply_lut_to_index`): for a binary 3-D input,
//! `index = Σ in[z+a-1, y+b-1, x+c-1] · 2^w(a,b,c)` over the 3x3x3 neighbourhood (zero outside
//! the array), `out = T[index]` with a table memory-mapped. `w = 9a+3b+c` by default (axis 0
//! most significant), `a+3b+9c` in ClearMap's order (its `Topology3d.index_kernel`: axis 0
//! least significant); a table of 2^27 entries takes the whole index, one of 2^26 the index
//! without the centre's bit (bit 13 in both orders: ClearMap's `cube_base_2(center=False)`).

use ndarray::{ArrayViewD, Axis, Ix3};

use crate::dtype::{Bound, DType, Number, Scalar, above_bound, not_nan};
use crate::error::{Error, KernelError, Result};
use crate::halo::Boundary;
use crate::kernel::lut::Table;
use crate::kernel::{Block, Kernel, OutBlock, Scratch};
use crate::with_scalar;

/// Entries a neighbourhood table must have: one per 3x3x3 binary pattern (or
/// [`NEIGHBOURHOOD_TABLE_LEN`] / 2, one per pattern of the 26 neighbours, the centre left out).
pub const NEIGHBOURHOOD_TABLE_LEN: usize = 1 << 27;

/// Which bit of the neighbourhood index each of the 27 voxels sets (spec/COMPUTE.md §3).
///
/// ```
/// use chunkwise::kernel::IndexOrder;
/// assert_eq!("clearmap".parse::<IndexOrder>()?, IndexOrder::ClearMap);
/// // The voxel one step along axis 0 (a = 2, b = c = 1):
/// assert_eq!(IndexOrder::Default.bit(2, 1, 1), 22);   // 9a + 3b + c
/// assert_eq!(IndexOrder::ClearMap.bit(2, 1, 1), 14);  // a + 3b + 9c
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexOrder {
    /// `9a + 3b + c`: axis 0 most significant.
    #[default]
    Default,
    /// `a + 3b + 9c`: axis 0 least significant (ClearMap's `index_kernel`, `cube_base_2`).
    ClearMap,
}

impl IndexOrder {
    /// The bit of the voxel at offset `(a, b, c)` (each 0..3, 1 the centre) along axes 0, 1, 2.
    pub fn bit(self, a: u32, b: u32, c: u32) -> u32 {
        match self {
            IndexOrder::Default => 9 * a + 3 * b + c,
            IndexOrder::ClearMap => a + 3 * b + 9 * c,
        }
    }
}

impl std::str::FromStr for IndexOrder {
    type Err = Error;
    fn from_str(s: &str) -> Result<IndexOrder> {
        match s {
            "default" => Ok(IndexOrder::Default),
            "clearmap" => Ok(IndexOrder::ClearMap),
            _ => Err(Error::option(
                "index_order",
                format!("{s:?}: give default (axis 0 most significant) or clearmap"),
            )),
        }
    }
}

/// `out = table[27-bit neighbourhood index]` (or the 26-bit index without the centre).
#[derive(Debug)]
pub struct NeighbourhoodLut {
    table: Table,
    above: Option<Number>,
    order: IndexOrder,
}

impl NeighbourhoodLut {
    /// A kernel over `table`: 2^27 entries (the whole index) or 2^26 (the centre left out).
    ///
    /// # Errors
    /// [`crate::InputError::BadInput`] unless the table has 2^27 or 2^26 entries.
    pub fn new(table: Table) -> Result<NeighbourhoodLut> {
        if table.len() != NEIGHBOURHOOD_TABLE_LEN && table.len() != NEIGHBOURHOOD_TABLE_LEN / 2 {
            return Err(Error::bad_input(
                table.path(),
                format!(
                    "a neighbourhood table has 2^27 = {NEIGHBOURHOOD_TABLE_LEN} entries (or 2^26 = {} \
                     for the 26 neighbours without the centre), this one {}",
                    NEIGHBOURHOOD_TABLE_LEN / 2,
                    table.len()
                ),
            ));
        }
        Ok(NeighbourhoodLut {
            table,
            above: None,
            order: IndexOrder::Default,
        })
    }

    /// Which bit each voxel of the neighbourhood sets (default: [`IndexOrder::Default`]).
    pub fn index_order(mut self, order: IndexOrder) -> Self {
        self.order = order;
        self
    }

    /// Whether the table leaves the centre out (2^26 entries).
    fn without_centre(&self) -> bool {
        self.table.len() == NEIGHBOURHOOD_TABLE_LEN / 2
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
        let order = match self.order {
            IndexOrder::Default => "",
            IndexOrder::ClearMap => " order=clearmap",
        };
        match self.above {
            Some(x) => format!(
                "neighbourhood-lut {} above={x}{order}",
                self.table.describe()
            ),
            None => format!(
                "neighbourhood-lut {} above=none{order}",
                self.table.describe()
            ),
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
                let how = Index { order: self.order, without_centre: self.without_centre() };
                apply_typed(block, &mut dst, &table, self.above, how).map_err(|(pos, v)| Error::Kernel(KernelError::Compute {
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

/// How the index is formed: the bit order, and whether the centre's bit is left out.
#[derive(Clone, Copy)]
struct Index {
    order: IndexOrder,
    without_centre: bool,
}

/// The block has a halo of 1 on every axis; `dst` is the block's interior.
fn apply_typed<I: Scalar, O: Scalar>(
    block: ArrayViewD<'_, I>,
    dst: &mut ndarray::ArrayViewMutD<'_, O>,
    table: &[O],
    above: Option<Number>,
    how: Index,
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
    // Per row of the block, the pattern of each output column x: the voxel at x + c - 1 sets
    // bit `bit(0, 0, c)` (then shifted by `bit(a, b, 0)` for the row's offsets a, b).
    let cbit = |c: u32| how.order.bit(0, 0, c);
    let mut rows = Scratch::new(bz * by * nx * 4);
    let rows: &mut [u32] = rows.slice_mut(bz * by * nx);
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
        let (s0, s1, s2) = (cbit(0), cbit(1), cbit(2));
        for (x, p) in rows[r * nx..(r + 1) * nx].iter_mut().enumerate() {
            *p = u32::from(bits[x]) << s0
                | u32::from(bits[x + 1]) << s1
                | u32::from(bits[x + 2]) << s2;
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
                    let shift = how.order.bit(a as u32, b as u32, 0);
                    let r = (z + a) * by + y + b;
                    for (i, &p) in index.iter_mut().zip(&rows[r * nx..(r + 1) * nx]) {
                        *i |= p << shift;
                    }
                }
            }
            if how.without_centre {
                // Bit 13 (the centre, in both orders) out; the bits above it move down one.
                for i in index.iter_mut() {
                    *i = (*i & 0x1fff) | ((*i >> 14) << 13);
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
