//! Kernels: pure, serial computations on one block at a time, never seeing a store.
//!
//! The executor (`exec`) hands a kernel its input [`Block`]s (the output chunk's region grown by
//! the kernel's halo and padded by the boundary mode) and an [`OutBlock`] (the output chunk) to
//! fill. Invariant: a kernel reads only its blocks and writes only its output block, so the
//! result cannot depend on the chunking (spec/COMPUTE.md §1).

mod correlate;
mod downsample;
mod expr;
mod gaussian;
pub mod lut;
mod nlut;
mod threshold;

use std::ops::Range;

use ndarray::{ArrayViewD, ArrayViewMutD, IxDyn, Slice};

use crate::dtype::{DType, Scalar};
use crate::error::{Error, KernelError, Result};
use crate::halo::Boundary;
use crate::region::Region;

pub use correlate::Correlate1d;
pub(crate) use downsample::downsample_into;
pub use downsample::{Downsample, downsample};
pub use expr::Eval;
pub use gaussian::{Gaussian, MAX_RADIUS};
pub use lut::Lut;
pub use nlut::{IndexOrder, NEIGHBOURHOOD_TABLE_LEN, NeighbourhoodLut};
pub use threshold::Threshold;

/// A block-wise computation.
pub trait Kernel: Sync {
    /// Elements of context needed before and after the output region, per axis.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] when the kernel does not apply to `ndim` dimensions.
    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>>;

    /// How blocks are padded past the array's edges (default: scipy's `reflect`).
    fn boundary(&self) -> Boundary {
        Boundary::Reflect
    }

    /// The output type for inputs of these types.
    ///
    /// # Errors
    /// [`crate::InputError::UnsupportedDtype`]-like errors for inputs the kernel cannot take.
    fn output_dtype(&self, inputs: &[DType]) -> Result<DType>;

    /// A description of every setting that changes the result (for resuming a job, and for the
    /// output's attributes).
    fn describe(&self) -> String;

    /// Fills `out` from `inputs`.
    ///
    /// # Errors
    /// Whatever the input violates (a value outside a table, ...), naming `out.key()`.
    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()>;

    /// Whether the output at a voxel depends only on the input values around it (its halo),
    /// never on where it is: then an output chunk whose every input chunk is absent is all
    /// the kernel's value for fill-valued input, and the executor records it as absent when
    /// that value is the output's fill (zero), without decoding or computing (default: no).
    fn shift_invariant(&self) -> bool {
        false
    }

    /// Scratch bytes one call needs for blocks of `block_elems` elements (for the memory
    /// budget).
    fn scratch_bytes(&self, block_elems: u64) -> u64 {
        let _ = block_elems;
        0
    }

    /// Scratch bytes one call needs for blocks of shape `block` writing `out` (for the memory
    /// budget; default: [`Kernel::scratch_bytes`] of the block's element count). A kernel
    /// whose working set depends on the rank or the output type says so here.
    fn scratch_bytes_for(&self, block: &[u64], out: DType) -> u64 {
        let _ = out;
        self.scratch_bytes(block.iter().fold(1u64, |a, &n| a.saturating_mul(n)))
    }
}

/// One input block: the output chunk's region grown by the halo, padded at the array's edges.
pub struct Block<'a> {
    pub(crate) dtype: DType,
    pub(crate) bytes: &'a [u8],
    pub(crate) shape: Vec<usize>,
    pub(crate) valid: Vec<Range<usize>>,
    pub(crate) origin: Vec<i64>,
    pub(crate) array_shape: Vec<u64>,
}

impl<'a> Block<'a> {
    /// The stored type (`bool` blocks are viewed as `u8`).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The block's shape (output region plus halo).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Where the output chunk's region lies in the block.
    pub fn valid(&self) -> &[Range<usize>] {
        &self.valid
    }

    /// Array coordinates of the block's first element (negative in a halo before the array).
    pub fn origin(&self) -> &[i64] {
        &self.origin
    }

    /// The part of the block that is the output region (the chunk's part of the region, for
    /// reductions) as an array of `T`.
    ///
    /// # Errors
    /// As [`Block::view`].
    pub fn valid_view<T: Scalar>(&self) -> Result<ArrayViewD<'a, T>> {
        Ok(valid_view(self.view::<T>()?, &self.valid))
    }

    /// The shape of the whole array the block comes from.
    pub fn array_shape(&self) -> &[u64] {
        &self.array_shape
    }

    /// The block as an array of `T`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] if `T` is not the block's type (`u8` for `bool`).
    pub fn view<T: Scalar>(&self) -> Result<ArrayViewD<'a, T>> {
        let want = if self.dtype == DType::Bool {
            DType::U8
        } else {
            self.dtype
        };
        if T::DTYPE != want {
            return Err(Error::option(
                "kernel",
                format!("block holds {}, viewed as {}", self.dtype, T::DTYPE),
            ));
        }
        let n: usize = self.shape.iter().product();
        let values: &'a [T] = bytemuck::try_cast_slice(&self.bytes[..n * want.size()])
            .map_err(|e| Error::Internal(format!("block buffer: {e}")))?;
        Ok(ArrayViewD::from_shape(IxDyn(&self.shape), values)
            .expect("block buffer holds the block shape"))
    }
}

/// The output chunk a kernel fills: a view of the chunk's region (clipped to the array).
pub struct OutBlock<'a> {
    pub(crate) dtype: DType,
    pub(crate) bytes: &'a mut [u8],
    pub(crate) chunk_shape: Vec<usize>,
    pub(crate) region: Region,
    pub(crate) key: String,
}

impl OutBlock<'_> {
    /// The output type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The array region the chunk covers.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The chunk's store key (for error messages).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The chunk's region as a mutable array of `T` (shape = the region's shape).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] if `T` is not the output type (`u8` for `bool`, whose values
    /// the kernel keeps 0 or 1).
    pub fn view_mut<T: Scalar>(&mut self) -> Result<ArrayViewMutD<'_, T>> {
        let want = if self.dtype == DType::Bool {
            DType::U8
        } else {
            self.dtype
        };
        if T::DTYPE != want {
            return Err(Error::option(
                "kernel",
                format!("output holds {}, viewed as {}", self.dtype, T::DTYPE),
            ));
        }
        let n: usize = self.chunk_shape.iter().product();
        let values: &mut [T] = bytemuck::try_cast_slice_mut(&mut self.bytes[..n * T::DTYPE.size()])
            .map_err(|e| Error::Internal(format!("output buffer: {e}")))?;
        let mut v = ArrayViewMutD::from_shape(IxDyn(&self.chunk_shape), values)
            .expect("chunk buffer holds the chunk shape");
        let extent = self.region.shape();
        v.slice_each_axis_inplace(|ax| Slice::from(0..extent[ax.axis.index()] as usize));
        Ok(v)
    }

    /// The whole chunk buffer as `T`, when the chunk lies inside the array (its region is the
    /// full chunk, so the region's C order is the buffer's).
    pub fn contiguous_mut<T: Scalar>(&mut self) -> Option<&mut [T]> {
        if T::DTYPE != self.dtype
            || self
                .region
                .shape()
                .iter()
                .zip(&self.chunk_shape)
                .any(|(&e, &c)| e as usize != c)
        {
            return None;
        }
        let n: usize = self.chunk_shape.iter().product();
        bytemuck::try_cast_slice_mut(&mut self.bytes[..n * T::DTYPE.size()]).ok()
    }

    /// An error about this chunk.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::Kernel(KernelError::Compute {
            chunk: self.key.clone(),
            reason: reason.into(),
        })
    }
}

thread_local! {
    /// Per-thread scratch buffers, reused from call to call (large allocations otherwise cost
    /// page faults and zeroing on every chunk).
    static SCRATCH: std::cell::RefCell<Vec<Vec<u64>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A scratch buffer from the thread's pool, returned to it when dropped.
pub(crate) struct Scratch {
    buf: Vec<u64>,
}

impl Scratch {
    /// At least `bytes` bytes, 8-byte aligned, contents unspecified.
    pub(crate) fn new(bytes: usize) -> Scratch {
        let words = bytes.div_ceil(8);
        // The smallest pooled buffer that is big enough, else the biggest (grown once).
        let mut buf = SCRATCH.with(|p| {
            let mut pool = p.borrow_mut();
            let fit = (0..pool.len())
                .filter(|&i| pool[i].len() >= words)
                .min_by_key(|&i| pool[i].len())
                .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
            fit.map(|i| pool.swap_remove(i)).unwrap_or_default()
        });
        if buf.len() < words {
            buf.resize(words, 0);
        }
        Scratch { buf }
    }

    /// The first `n` elements as `T`.
    pub(crate) fn slice_mut<T: bytemuck::Pod>(&mut self, n: usize) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.buf[..])[..n]
    }

    /// The first `n` elements as `T`.
    pub(crate) fn slice<T: bytemuck::Pod>(&self, n: usize) -> &[T] {
        &bytemuck::cast_slice(&self.buf[..])[..n]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        SCRATCH.with(|p| p.borrow_mut().push(buf));
    }
}

/// A kernel from a closure (the library's `map_overlap` / `map_blocks`).
pub(crate) struct FnKernel<F> {
    pub(crate) halo: Vec<(u64, u64)>,
    pub(crate) boundary: Boundary,
    pub(crate) dtype: DType,
    pub(crate) name: String,
    pub(crate) f: F,
}

impl<F> Kernel for FnKernel<F>
where
    F: Fn(&[Block<'_>], &mut OutBlock<'_>) -> Result<()> + Sync,
{
    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        match self.halo.len() {
            n if n == ndim => Ok(self.halo.clone()),
            1 => Ok(vec![self.halo[0]; ndim]),
            n => Err(Error::option(
                "halo",
                format!("{n} halo depths given for {ndim} dimensions"),
            )),
        }
    }

    fn boundary(&self) -> Boundary {
        self.boundary
    }

    fn output_dtype(&self, _inputs: &[DType]) -> Result<DType> {
        Ok(self.dtype)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        (self.f)(inputs, out)
    }
}

/// The part of a block that is the output region.
pub(crate) fn valid_view<'a, T>(
    block: ArrayViewD<'a, T>,
    valid: &[Range<usize>],
) -> ArrayViewD<'a, T> {
    let mut v = block;
    v.slice_each_axis_inplace(|ax| {
        let r = &valid[ax.axis.index()];
        Slice::from(r.start..r.end)
    });
    v
}
