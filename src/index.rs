//! Index kernels: the coordinates of selected voxels (`where`, numpy.argwhere) and the edges
//! between adjacent selected voxels (`graph`), streamed to `.npy` files in C order
//! (spec/REDUCE.md §4-§5).
//!
//! The array is read one chunk layer (one chunk deep along axis 0) at a time: the layer's
//! chunks are decoded in parallel into a bitmap of the selection (one bit per voxel, rows along
//! the last axis), and the bitmap is turned into coordinates or edges plane by plane, a batch
//! of planes at a time in parallel, and written in order. Invariant: memory is one or two
//! layers of bits plus a batch of planes' output, never the number of results.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::dtype::{Bound, DType, Number, Scalar, above_bound, below_bound};
use crate::error::{Error, IoContext, Result};
use crate::grid::{Grid, indices_in};
use crate::input::Input;
use crate::npy::header_bytes;
use crate::progress::{Tracker, Unit};
use crate::run::with_threads;
use crate::run::{RunOptions, run_setters};
use crate::store::OutputFile;
use crate::with_scalar;

/// Which voxels are selected. Bounds compare in the array's type, exactly for integers
/// (spec/REDUCE.md §4): `Above(Number::Int(2^53 + 1))` on `uint64` is numpy's `a > 2**53 + 1`.
///
/// ```
/// use chunkwise::{Number, Select};
/// assert_eq!(Select::default(), Select::NonZero);
/// assert_eq!(Select::from_bounds(Some(Number::Int(10)), None), Select::Above(Number::Int(10)));
/// let band = Select::from_bounds(Some(0.5.into()), Some(2.into()));
/// assert_eq!(band, Select::Between(Number::Float(0.5), Number::Int(2)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Select {
    /// Nonzero values (NaN counts as nonzero, as in numpy).
    #[default]
    NonZero,
    /// Values `> x`.
    Above(Number),
    /// Values `< x`.
    Below(Number),
    /// Values with `lo < v < hi`.
    Between(Number, Number),
}

impl Select {
    /// From `--above` / `--below`.
    pub fn from_bounds(above: Option<Number>, below: Option<Number>) -> Select {
        match (above, below) {
            (None, None) => Select::NonZero,
            (Some(a), None) => Select::Above(a),
            (None, Some(b)) => Select::Below(b),
            (Some(a), Some(b)) => Select::Between(a, b),
        }
    }

    /// Whether a value of type `T` is selected (the fill value of absent chunks).
    fn test<T: Scalar>(&self, v: T) -> bool {
        let p = Pred::<T>::new(*self);
        !p.never
            && if p.nonzero {
                v != T::default()
            } else {
                p.lo.is_none_or(|lo| v > lo) && p.hi.is_none_or(|hi| v < hi)
            }
    }
}

/// Settings of `where` and `graph`.
///
/// ```
/// use chunkwise::{IndexOptions, Input, Select};
/// let a = ndarray::arr2(&[[0u16, 700, 0], [900, 0, 650]]).into_dyn();
/// let opts = IndexOptions::default().select(Select::Between(600.into(), 800.into()));
/// let r = chunkwise::where_coords(&Input::from_array(a.view())?, None, &opts)?; // count only
/// assert_eq!(r.count, 2);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct IndexOptions {
    select: Select,
    run: RunOptions,
    overwrite: bool,
    partition: Option<(u32, u32)>,
}

impl std::fmt::Debug for IndexOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexOptions")
            .field("run", &self.run)
            .field("select", &self.select)
            .field("overwrite", &self.overwrite)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl IndexOptions {
    /// Which voxels count (default: nonzero).
    pub fn select(mut self, s: Select) -> Self {
        self.select = s;
        self
    }
    /// Replace an existing output file.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
    /// Do only part `i` of `n` (`--partition I/N`, spec/SCALE.md §2): a contiguous range of
    /// chunk layers, balanced by stored chunks; the parts' rows meet beside the output, and
    /// the last part to finish writes the one `.npy`, identical to a single run's.
    pub fn partition(mut self, part: Option<(u32, u32)>) -> Self {
        self.partition = part;
        self
    }
}

run_setters!(IndexOptions);

/// What `where` or `graph` found and wrote.
///
/// ```
/// use chunkwise::{IndexOptions, Input};
/// let a = ndarray::arr2(&[[0u8, 1], [2, 3]]).into_dyn();
/// let r = chunkwise::where_coords(&Input::from_array(a.view())?, None, &IndexOptions::default())?;
/// assert_eq!((r.count, r.path, r.bytes), (3, None, 0)); // counted, no file written
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct IndexReport {
    /// Selected voxels (`where`) or edges (`graph`).
    pub count: u64,
    /// The output file, if one was written.
    pub path: Option<PathBuf>,
    /// Bytes written.
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// A part of a partitioned run that is done while others have still to run: `count` is
    /// this part's, and `path` is not written yet. `(done, total)` parts.
    pub waiting: Option<(u32, u32)>,
}

/// The selection of one chunk layer as bits: rows along the last axis, 64 per word.
struct Bits {
    /// Axis-0 range of the layer (for a 1-D array: the whole array is one plane).
    z0: u64,
    nz: u64,
    /// Rows per plane (product of the axes between the first and the last), and the strides
    /// of the row index over those axes.
    rows: u64,
    row_strides: Vec<u64>,
    words: usize,
    /// Values per row (the last axis).
    nx: u64,
    /// The rows in groups of [`ROWS_PER_GROUP`] (in (plane, row) order), each allocated when
    /// a bit in it is first set: a layer of big planes with few selected voxels (a sparse
    /// volume, absent chunks) holds only the groups it uses, not a bit per voxel.
    groups: Vec<OnceLock<Box<[AtomicU64]>>>,
    /// A row of zeros: what an unallocated row reads as.
    zero: Box<[AtomicU64]>,
}

/// Rows per lazily allocated group of [`Bits`].
const ROWS_PER_GROUP: u64 = 64;

impl Bits {
    fn new(z0: u64, z1: u64, shape: &[u64]) -> Bits {
        let (rows, nx) = plane_dims(shape);
        let mid: &[u64] = if shape.len() > 2 {
            &shape[1..shape.len() - 1]
        } else {
            &[]
        };
        let mut row_strides = vec![1u64; mid.len()];
        for a in (0..mid.len().saturating_sub(1)).rev() {
            row_strides[a] = row_strides[a + 1] * mid[a + 1];
        }
        let words = nx.div_ceil(64) as usize;
        let n_rows = (z1 - z0) * rows;
        Bits {
            z0,
            nz: z1 - z0,
            rows,
            row_strides,
            words,
            nx,
            groups: (0..n_rows.div_ceil(ROWS_PER_GROUP))
                .map(|_| OnceLock::new())
                .collect(),
            zero: (0..words).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The group holding row `row` of plane `z`, and the row's first word in it.
    fn place(&self, z: u64, row: u64) -> (usize, usize) {
        let flat = (z - self.z0) * self.rows + row;
        (
            (flat / ROWS_PER_GROUP) as usize,
            (flat % ROWS_PER_GROUP) as usize * self.words,
        )
    }

    /// The words of row `row` of plane `z` (array coordinate), to read.
    fn row(&self, z: u64, row: u64) -> &[AtomicU64] {
        let (g, at) = self.place(z, row);
        match self.groups[g].get() {
            Some(words) => &words[at..at + self.words],
            None => &self.zero,
        }
    }

    /// The words of row `row` of plane `z`, to set bits in (its group allocated if need be).
    fn row_mut(&self, z: u64, row: u64) -> &[AtomicU64] {
        let (g, at) = self.place(z, row);
        let words = self.groups[g].get_or_init(|| {
            (0..ROWS_PER_GROUP as usize * self.words)
                .map(|_| AtomicU64::new(0))
                .collect()
        });
        &words[at..at + self.words]
    }

    fn get(&self, z: u64, row: u64, x: u64) -> bool {
        let w = self.row(z, row)[(x / 64) as usize].load(Ordering::Relaxed);
        w >> (x % 64) & 1 == 1
    }

    /// Set bits in plane `z`.
    fn plane_count(&self, z: u64) -> u64 {
        (0..self.rows)
            .map(|row| {
                self.row(z, row)
                    .iter()
                    .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
                    .sum::<u64>()
            })
            .sum()
    }
}

/// Rows per plane and row length of an array (a 1-D array is one row).
fn plane_dims(shape: &[u64]) -> (u64, u64) {
    match shape.len() {
        1 => (1, shape[0]),
        n => (shape[1..n - 1].iter().product(), shape[n - 1]),
    }
}

/// Chunk layers along axis 0 (a 1-D array is one layer).
fn layers(input: &Input, grid: &Grid) -> u64 {
    if input.ndim() == 1 {
        1
    } else {
        grid.grid_shape()[0]
    }
}

/// Decodes chunk layer `layer` and sets the bits of its selected voxels.
fn layer_bits(
    input: &Input,
    grid: &Grid,
    layer: u64,
    select: Select,
    tracker: &Tracker,
) -> Result<Bits> {
    let shape = input.shape();
    let ndim = shape.len();
    let c0 = grid.chunk_shape()[0];
    let (z0, z1) = if ndim == 1 {
        (0, 1)
    } else {
        (layer * c0, ((layer + 1) * c0).min(shape[0]))
    };
    let bits = Bits::new(z0, z1, shape);
    let gshape = grid.grid_shape();
    let mut boxed: Vec<_> = gshape.iter().map(|&n| 0..n).collect();
    if ndim > 1 {
        boxed[0] = layer..layer + 1;
    }
    let cshape: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let fill_selected = fill_selected(input, select);
    indices_in(&boxed).par_iter().try_for_each(|idx| -> Result<()> {
        let creg = grid.chunk_region(idx);
        match input.read_block(idx)? {
            Some(data) => with_scalar!(input.dtype(), T => set_bits::<T>(&bits, &data, &cshape, &creg, select)),
            None if fill_selected => {
                // An absent chunk is all fill value, which the selection takes.
                let ones = vec![1u8; cshape.iter().product()];
                set_bits::<u8>(&bits, &ones, &cshape, &creg, Select::NonZero);
            }
            None => {}
        }
        tracker.add(1);
        Ok(())
    })?;
    Ok(bits)
}

/// Whether the selection takes the store's fill value (the value of absent chunks).
fn fill_selected(input: &Input, select: Select) -> bool {
    let b = input.fill_bytes();
    with_scalar!(input.dtype(), T => select.test(bytemuck::pod_read_unaligned::<T>(&b[..std::mem::size_of::<T>()])))
}

/// A selection compiled for one element type: integer thresholds become exact comparisons
/// in the type (`v > t` is `v > floor(t)` for integers), so the row loop stays in the type.
#[derive(Clone, Copy)]
struct Pred<T> {
    lo: Option<T>,
    hi: Option<T>,
    /// Always false / always true (a threshold beyond the type's range).
    never: bool,
    nonzero: bool,
}

impl<T: Scalar> Pred<T> {
    fn new(select: Select) -> Pred<T> {
        let mut p = Pred {
            lo: None,
            hi: None,
            never: false,
            nonzero: false,
        };
        let mut bound = |b: Bound<T>, slot: &mut Option<T>| match b {
            Bound::Never => p.never = true,
            Bound::Always => {}
            Bound::At(t) => *slot = Some(t),
        };
        let (mut lo, mut hi) = (None, None);
        match select {
            Select::NonZero => p.nonzero = true,
            Select::Above(t) => bound(above_bound(t), &mut lo),
            Select::Below(t) => bound(below_bound(t), &mut hi),
            Select::Between(a, b) => {
                bound(above_bound(a), &mut lo);
                bound(below_bound(b), &mut hi);
            }
        }
        p.lo = lo;
        p.hi = hi;
        p
    }
}

/// Bit k of the result is `f(block[k])` (a block of at most 64 values): the comparisons go to
/// a byte array (which vectorises), and `pack` turns the 64 bytes of 0/1 into 64 bits.
#[inline(always)]
fn mask_with<T: Copy>(block: &[T], f: impl Fn(T) -> bool, pack: impl Fn(&[u8; 64]) -> u64) -> u64 {
    let mut bytes = [0u8; 64];
    for (b, &v) in bytes.iter_mut().zip(block) {
        *b = u8::from(f(v));
    }
    pack(&bytes)
}

/// [`mask_with`] with the portable packing.
#[cfg(test)]
fn mask<T: Copy>(block: &[T], f: impl Fn(T) -> bool) -> u64 {
    mask_with(block, f, pack_bytes)
}

/// 64 bytes of 0/1 to 64 bits: each 8 bytes pack into 8 bits with one multiply.
#[inline(always)]
fn pack_bytes(bytes: &[u8; 64]) -> u64 {
    let mut w = 0u64;
    for (j, eight) in bytes.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
        w |= (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * j);
    }
    w
}

/// [`pack_bytes`] with byte-sign masks (`pmovmskb`), 16 bytes at a time: the compiler
/// writes the byte array with 16-byte stores, and loads of the same width forward from them
/// (a 32-byte load stalls).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pack_bytes_avx2(bytes: &[u8; 64]) -> u64 {
    use std::arch::x86_64::*;
    let mut w = 0u64;
    for q in 0..4 {
        // SAFETY: a 16-byte load inside the 64-byte array; loadu takes any alignment.
        let v = unsafe { _mm_loadu_si128(bytes.as_ptr().add(16 * q).cast()) };
        // 0/1 bytes to 0/0x80: the sign bit is the value.
        let m = _mm_movemask_epi8(_mm_slli_epi16(v, 7)) as u16;
        w |= u64::from(m) << (16 * q);
    }
    w
}

/// The masks of a row, 64 values per word (the portable path).
#[cfg(test)]
fn row_masks<T: Scalar>(row: &[T], pred: &Pred<T>, out: &mut [u64]) {
    row_masks_body(row, pred, out, pack_bytes);
}

#[inline(always)]
fn row_masks_body<T: Scalar>(
    row: &[T],
    pred: &Pred<T>,
    out: &mut [u64],
    pack: impl Fn(&[u8; 64]) -> u64 + Copy,
) {
    for (w, block) in out.iter_mut().zip(row.chunks(64)) {
        *w = match (pred.nonzero, pred.lo, pred.hi) {
            (true, _, _) => mask_with(block, |v| v != T::default(), pack),
            (false, Some(lo), None) => mask_with(block, |v| v > lo, pack),
            (false, None, Some(hi)) => mask_with(block, |v| v < hi, pack),
            (false, Some(lo), Some(hi)) => mask_with(block, |v| v > lo && v < hi, pack),
            (false, None, None) => mask_with(block, |_| true, pack),
        };
    }
}

/// Sets the bits of the selected voxels of one decoded chunk (full chunk shape, C order),
/// with AVX2 where the CPU has it.
fn set_bits<T: Scalar>(
    bits: &Bits,
    data: &[u8],
    cshape: &[usize],
    creg: &crate::region::Region,
    select: Select,
) {
    let pred = Pred::<T>::new(select);
    if pred.never {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked above).
        unsafe { set_bits_avx2::<T>(bits, data, cshape, creg, &pred) };
        return;
    }
    set_bits_body::<T>(bits, data, cshape, creg, |row, out| {
        row_masks_body(row, &pred, out, pack_bytes)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn set_bits_avx2<T: Scalar>(
    bits: &Bits,
    data: &[u8],
    cshape: &[usize],
    creg: &crate::region::Region,
    pred: &Pred<T>,
) {
    if let Some(wp) = WordPred::of(pred) {
        set_bits_body::<T>(bits, data, cshape, creg, |row, out| {
            let words = bytemuck::cast_slice::<T, i16>(row);
            // SAFETY: the CPU has AVX2 (this function's feature).
            unsafe { words_masks_avx2(words, &wp, out) };
        });
    } else {
        set_bits_body::<T>(bits, data, cshape, creg, |row, out| {
            row_masks_body(row, pred, out, |b| pack_bytes_avx2(b))
        });
    }
}

/// A [`Pred`] over 16-bit words, in biased `i16` form (unsigned words are compared as
/// `x - 2^15`, which keeps their order).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct WordPred {
    bias: i16,
    lo: Option<i16>,
    hi: Option<i16>,
    nonzero: bool,
}

#[cfg(target_arch = "x86_64")]
impl WordPred {
    fn of<T: Scalar>(p: &Pred<T>) -> Option<WordPred> {
        let bias = match T::DTYPE {
            DType::U16 => i16::MIN,
            DType::I16 => 0,
            _ => return None,
        };
        // T is a 16-bit type here.
        let word = |v: T| bytemuck::pod_read_unaligned::<i16>(bytemuck::bytes_of(&v)) ^ bias;
        Some(WordPred {
            bias,
            lo: p.lo.map(word),
            hi: p.hi.map(word),
            nonzero: p.nonzero,
        })
    }
}

/// [`row_masks_body`] for 16-bit words, 64 at a time: compares, packs the 16-bit results to
/// bytes and takes their signs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn words_masks_avx2(row: &[i16], p: &WordPred, out: &mut [u64]) {
    use std::arch::x86_64::*;
    let bias = _mm256_set1_epi16(p.bias);
    let zero = _mm256_setzero_si256();
    let lo = _mm256_set1_epi16(p.lo.unwrap_or(i16::MIN));
    let hi = _mm256_set1_epi16(p.hi.unwrap_or(i16::MAX));
    let select = |v: __m256i| -> __m256i {
        if p.nonzero {
            // Lanes equal to zero are 0xFFFF: flip.
            return _mm256_xor_si256(_mm256_cmpeq_epi16(v, zero), _mm256_set1_epi16(-1));
        }
        let y = _mm256_xor_si256(v, bias);
        let mut m = _mm256_set1_epi16(-1);
        if p.lo.is_some() {
            m = _mm256_and_si256(m, _mm256_cmpgt_epi16(y, lo));
        }
        if p.hi.is_some() {
            m = _mm256_and_si256(m, _mm256_cmpgt_epi16(hi, y));
        }
        m
    };
    let full = row.len() / 64;
    for (k, w) in out.iter_mut().enumerate().take(full) {
        let at = row.as_ptr().wrapping_add(64 * k);
        let mut word = 0u64;
        for half in 0..2 {
            // SAFETY: 64 * k + 32 * half + 32 <= row.len(); loadu takes any alignment.
            let (a, b) = unsafe {
                (
                    _mm256_loadu_si256(at.add(32 * half).cast()),
                    _mm256_loadu_si256(at.add(32 * half + 16).cast()),
                )
            };
            // packs interleaves the 128-bit lanes: [a0 b0 a1 b1]; the permute restores order.
            let packed = _mm256_packs_epi16(select(a), select(b));
            let ordered = _mm256_permute4x64_epi64(packed, 0b11_01_10_00);
            let bits = _mm256_movemask_epi8(ordered) as u32;
            word |= u64::from(bits) << (32 * half);
        }
        *w = word;
    }
    if full < out.len() {
        // The tail (under 64 words): the scalar form.
        let tail = &row[64 * full..];
        let y = |v: i16| v ^ p.bias;
        let mut word = 0u64;
        for (j, &v) in tail.iter().enumerate() {
            let take = if p.nonzero {
                v != 0
            } else {
                p.lo.is_none_or(|l| y(v) > l) && p.hi.is_none_or(|h| y(v) < h)
            };
            word |= u64::from(take) << j;
        }
        out[full] = word;
    }
}

#[inline(always)]
fn set_bits_body<T: Scalar>(
    bits: &Bits,
    data: &[u8],
    cshape: &[usize],
    creg: &crate::region::Region,
    mut masks: impl FnMut(&[T], &mut [u64]),
) {
    let itemsize = std::mem::size_of::<T>();
    // The decoder's buffer is aligned in practice; copy when it is not.
    let owned: Vec<T>;
    let values: &[T] = match bytemuck::try_cast_slice::<u8, T>(data) {
        Ok(v) => v,
        Err(_) => {
            owned = data
                .chunks_exact(itemsize)
                .map(bytemuck::pod_read_unaligned)
                .collect();
            &owned
        }
    };
    let r = creg.ranges();
    let ndim = r.len();
    let last = ndim - 1;
    let (x0, x1) = (r[last].start, r[last].end);
    let nx = (x1 - x0) as usize;
    let first_word = (x0 / 64) as usize;
    let shift = (x0 % 64) as usize;
    // Which words of a row no other chunk writes: all but a first word the chunk starts inside
    // of and a last word it ends inside of (short of the row's end).
    let last_word = ((x1 - 1) / 64) as usize;
    let ends_clean = x1 % 64 == 0 || x1 == bits.nx;
    let own = |k: usize| (k > first_word || shift == 0) && (k < last_word || ends_clean);
    let mut local = vec![0u64; nx.div_ceil(64)];
    // C-order strides of the chunk buffer, in elements.
    let mut cstride = vec![1usize; ndim];
    for a in (0..last).rev() {
        cstride[a] = cstride[a + 1] * cshape[a + 1];
    }
    // An odometer over the rows (every index of the axes before the last).
    let mut idx: Vec<u64> = r[..last].iter().map(|q| q.start).collect();
    loop {
        let off: usize = idx
            .iter()
            .enumerate()
            .map(|(a, &i)| (i - r[a].start) as usize * cstride[a])
            .sum();
        let row = &values[off..off + nx];
        // The row's mask, 64 values per word from the row's start.
        masks(row, &mut local);
        let (z, row_index) = if ndim == 1 {
            (0, 0)
        } else {
            let ri: u64 = idx[1..]
                .iter()
                .zip(&bits.row_strides)
                .map(|(&i, &s)| i * s)
                .sum();
            (idx[0], ri)
        };
        // A row with nothing selected leaves its group unallocated.
        if local.iter().any(|&w| w != 0) {
            let words = bits.row_mut(z, row_index);
            // Shift the row's words to the row's bit offset in the array. A word this chunk
            // alone covers takes a plain store (the bits start at zero); one it shares with
            // the chunk beside it, an atomic or.
            let mut carry = 0u64;
            for (i, &w) in local.iter().enumerate() {
                let out = if shift == 0 { w } else { (w << shift) | carry };
                carry = if shift == 0 { 0 } else { w >> (64 - shift) };
                if out != 0 {
                    let k = first_word + i;
                    if own(k) {
                        words[k].store(out, Ordering::Relaxed);
                    } else {
                        words[k].fetch_or(out, Ordering::Relaxed);
                    }
                }
            }
            if carry != 0 {
                words[first_word + local.len()].fetch_or(carry, Ordering::Relaxed);
            }
        }
        // Next row.
        let mut a = last;
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < r[a].end {
                break;
            }
            idx[a] = r[a].start;
        }
    }
}

/// An `.npy` file of int64 rows whose count is only known at the end: the header is written
/// with room for any count and rewritten on `finish`; the file appears under its name only
/// when complete. A part of a partitioned run writes the rows alone (no header) to a file of
/// its parts directory.
struct NpyRows {
    file: BufWriter<File>,
    sink: Sink,
    tmp: PathBuf,
    cols: u64,
    rows: u64,
    header_len: usize,
}

/// Where an [`NpyRows`] goes.
enum Sink {
    /// The output, published by `finish`.
    Out(OutputFile),
    /// A part's rows, returned by `finish` to be saved.
    Part(tempfile::NamedTempFile),
}

impl NpyRows {
    fn create(path: &Path, cols: u64, overwrite: bool) -> Result<NpyRows> {
        let out = OutputFile::create(path, overwrite)?;
        let tmp = out.tmp_path().to_path_buf();
        let file = out.file().try_clone().at(&tmp)?;
        let header = Self::header(0, cols);
        let mut w = BufWriter::with_capacity(1 << 20, file);
        w.write_all(&header).at(&tmp)?;
        Ok(NpyRows {
            file: w,
            sink: Sink::Out(out),
            tmp,
            cols,
            rows: 0,
            header_len: header.len(),
        })
    }

    /// Rows alone, into `part` (a part's share of the output).
    fn part(part: tempfile::NamedTempFile, cols: u64) -> Result<NpyRows> {
        let tmp = part.path().to_path_buf();
        let file = part.as_file().try_clone().at(&tmp)?;
        Ok(NpyRows {
            file: BufWriter::with_capacity(1 << 20, file),
            sink: Sink::Part(part),
            tmp,
            cols,
            rows: 0,
            header_len: 0,
        })
    }

    /// A header whose length does not depend on `rows` (padded to 20 digits).
    fn header(rows: u64, cols: u64) -> Vec<u8> {
        // u64::MAX has 20 digits: every row count fits its place, right-aligned.
        let mut h = header_bytes(DType::I64, &[u64::MAX, cols]);
        let max = u64::MAX.to_string();
        let at = h
            .windows(max.len())
            .position(|w| w == max.as_bytes())
            .expect("the header holds the shape");
        h[at..at + max.len()].copy_from_slice(format!("{rows:>20}").as_bytes());
        h
    }

    /// Writes whole rows starting at row `first` (positioned; several threads at once).
    fn write_rows_at(&self, first: u64, values: &[i64]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.header_len as u64 + first * self.cols * 8;
        self.file
            .get_ref()
            .write_all_at(bytemuck::cast_slice(values), at)
            .at(&self.tmp)
    }

    /// Starts the disk writes of rows `first..end` without waiting for them, so that the
    /// final sync finds little left to do (Linux `sync_file_range`; a hint elsewhere).
    fn start_writeback(&self, first: u64, end: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let row = (self.cols * 8) as i64;
            let at = self.header_len as i64 + first as i64 * row;
            // SAFETY: a plain system call on an open descriptor; failure only loses the hint.
            unsafe {
                libc::sync_file_range(
                    self.file.get_ref().as_raw_fd(),
                    at,
                    (end - first) as i64 * row,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (first, end);
    }

    /// Writes out what `push` buffered (before positioned writes).
    fn flush(&mut self) -> Result<()> {
        self.file.flush().at(&self.tmp)
    }

    fn push(&mut self, values: &[i64]) -> Result<()> {
        // Little-endian machines only (spec/FORMAT.md §9): the values are their .npy bytes.
        self.file
            .write_all(bytemuck::cast_slice(values))
            .at(&self.tmp)?;
        self.rows += values.len() as u64 / self.cols;
        Ok(())
    }

    /// Publishes the output (returns its bytes), or returns a part's rows file.
    fn finish(mut self) -> Result<(u64, Option<tempfile::NamedTempFile>)> {
        self.file.flush().at(&self.tmp)?;
        let bytes = self.header_len as u64 + self.rows * self.cols * 8;
        match self.sink {
            Sink::Out(out) => {
                let header = Self::header(self.rows, self.cols);
                debug_assert_eq!(header.len(), self.header_len);
                let f = self.file.get_mut();
                f.seek(SeekFrom::Start(0)).at(&self.tmp)?;
                f.write_all(&header).at(&self.tmp)?;
                out.publish(true)?;
                Ok((bytes, None))
            }
            Sink::Part(p) => Ok((bytes, Some(p))),
        }
    }

    /// Appends a part's saved rows.
    fn append_file(&mut self, part: &Path) -> Result<()> {
        let mut f = File::open(part).at(part)?;
        let len = f.metadata().at(part)?.len();
        let row = self.cols * 8;
        if !len.is_multiple_of(row) {
            return Err(Error::bad_input(
                part,
                format!("{len} bytes is not a whole number of {row}-byte rows"),
            ));
        }
        self.file.flush().at(&self.tmp)?;
        std::io::copy(&mut f, self.file.get_mut()).at(&self.tmp)?;
        self.rows += len / row;
        Ok(())
    }
}

/// How a `where` or `graph` run writes its rows: whole to `out`, or, as a part of a
/// partitioned run, this part's layers to its parts directory.
struct Output {
    writer: Option<NpyRows>,
    parts: Option<crate::store::Parts>,
    layers: (u64, u64),
    skip: bool,
}

/// Opens the output of `where`/`graph` (`what` and `settings` for the fingerprint).
fn open_output(
    input: &Input,
    grid: &Grid,
    out: Option<&Path>,
    cols: u64,
    settings: &str,
    opts: &IndexOptions,
) -> Result<Output> {
    let nlayers = layers(input, grid);
    let Some(part) = opts.partition else {
        return Ok(Output {
            writer: out
                .map(|p| NpyRows::create(p, cols, opts.overwrite))
                .transpose()?,
            parts: None,
            layers: (0, nlayers),
            skip: false,
        });
    };
    crate::store::check_part(part)?;
    let Some(out) = out else {
        return Err(Error::option(
            "partition",
            "a run in parts writes a file (the parts' rows meet beside it): give an output",
        ));
    };
    let stored = (input.ndim() > 1)
        .then(|| input.stored_chunks())
        .flatten()
        .map(|s| s.layer_counts());
    let split = crate::grid::split_layers(nlayers, stored.as_deref(), part.1);
    let mut settings = format!("{settings}input: {}\n", input.identity());
    let fingerprint = crate::fingerprint::fnv1a(&settings);
    settings.push_str(&format!("fingerprint: {fingerprint}\n"));
    let parts = crate::store::Parts::open(out, &fingerprint, &settings, part, opts.overwrite)?;
    let skip = parts.saved();
    let writer = if skip {
        None
    } else {
        Some(NpyRows::part(parts.temp()?, cols)?)
    };
    Ok(Output {
        writer,
        parts: Some(parts),
        layers: split[part.0 as usize],
        skip,
    })
}

impl Output {
    /// Ends the run: publishes the output, or saves the part's rows (and, for the last part,
    /// joins every part's rows into the output). Returns the bytes written and, for a part
    /// that waits for others, `(done, total)` parts.
    fn finish(self, cols: u64) -> Result<(u64, Option<(u32, u32)>)> {
        let (bytes, rows) = match self.writer {
            Some(w) => w.finish()?,
            None => (0, None),
        };
        let Some(parts) = self.parts else {
            return Ok((bytes, None));
        };
        if let Some(rows) = rows {
            parts.save_file(rows)?;
        }
        let mut written = 0;
        let end = parts.finish(|files, out, overwrite| {
            let mut w = NpyRows::create(out, cols, overwrite)?;
            for f in files {
                w.append_file(f)?;
            }
            written = w.finish()?.0;
            Ok(())
        })?;
        Ok(match end {
            crate::PartsFinish::Combined => (written, None),
            crate::PartsFinish::Waiting { done, total } => (bytes, Some((done, total))),
        })
    }
}

/// Planes per parallel batch.
fn batch() -> usize {
    4 * rayon::current_num_threads().max(1)
}

/// The coordinates of the selected voxels as an int64 `(N, ndim)` array in C order
/// (numpy.argwhere), written to `out`, or only counted when `out` is `None`.
///
/// ```no_run
/// use chunkwise::{IndexOptions, Input, Select};
/// let r = chunkwise::where_coords(&Input::open("volume.zarr")?, Some("cells.npy".as_ref()),
///     &IndexOptions::default().select(Select::Above(700.into())))?;
/// println!("{} voxels above 700", r.count);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::OutputExists`], [`crate::StoreError::CorruptChunk`] naming a chunk, [`Error::Io`]; no file
/// appears at `out` on error.
pub fn where_coords(input: &Input, out: Option<&Path>, opts: &IndexOptions) -> Result<IndexReport> {
    with_threads(opts.run.threads, || {
        let start = Instant::now();
        let grid = input.block_grid().clone();
        let ndim = input.ndim();
        let settings = format!("chunkwise where v1\nselect: {:?}\n", opts.select);
        let mut output = open_output(input, &grid, out, ndim as u64, &settings, opts)?;
        let (l0, l1) = if output.skip { (0, 0) } else { output.layers };
        let per_layer = grid.num_chunks() / layers(input, &grid).max(1);
        let tracker = Tracker::new(
            "where",
            Unit::Chunks,
            (l1 - l0) * per_layer,
            opts.run.progress.clone(),
        );
        let mut count = 0u64;
        // A pipeline of two layers: layer L's coordinates are written while layer L+1 decodes,
        // so neither the last chunks of a layer nor the writing leave a core idle.
        let mut next = (l0 < l1)
            .then(|| layer_bits(input, &grid, l0, opts.select, &tracker))
            .transpose()?;
        for layer in l0..l1 {
            opts.run.check()?;
            let Some(bits) = next.take() else { break };
            let decode_next = || {
                (layer + 1 < l1)
                    .then(|| layer_bits(input, &grid, layer + 1, opts.select, &tracker))
                    .transpose()
            };
            let (n, decoded) = rayon::join(
                || emit_layer(&bits, output.writer.as_mut(), input.shape()),
                decode_next,
            );
            count += n?;
            next = decoded?;
        }
        let (bytes, waiting) = output.finish(ndim as u64)?;
        Ok(IndexReport {
            count,
            path: out.map(Path::to_path_buf),
            bytes,
            seconds: start.elapsed().as_secs_f64(),
            waiting,
        })
    })
}

/// Counts the selected voxels of a layer and, with a writer, appends their coordinates to it
/// (in C order). Every plane's place in the file is known from its count: all planes of the
/// layer are written at once, in parallel, each at its offset.
fn emit_layer(bits: &Bits, writer: Option<&mut NpyRows>, shape: &[u64]) -> Result<u64> {
    let planes: Vec<u64> = (bits.z0..bits.z0 + bits.nz).collect();
    let counts: Vec<u64> = planes.par_iter().map(|&z| bits.plane_count(z)).collect();
    let n: u64 = counts.iter().sum();
    let Some(w) = writer else { return Ok(n) };
    let firsts: Vec<u64> = counts
        .iter()
        .scan(w.rows, |acc, &c| {
            let first = *acc;
            *acc += c;
            Some(first)
        })
        .collect();
    w.flush()?;
    planes
        .par_iter()
        .zip(&firsts)
        .zip(&counts)
        .try_for_each(|((&z, &first), &c)| {
            w.write_rows_at(first, &plane_coords(bits, z, shape, c))
        })?;
    w.start_writeback(w.rows, w.rows + n);
    w.rows += n;
    Ok(n)
}

/// The coordinates of the `count` set bits of plane `z`, in C order.
fn plane_coords(bits: &Bits, z: u64, shape: &[u64], count: u64) -> Vec<i64> {
    let ndim = shape.len();
    let mut out = Vec::with_capacity(count as usize * ndim);
    let mid: &[u64] = if ndim > 2 { &shape[1..ndim - 1] } else { &[] };
    for row in 0..bits.rows {
        for (wi, w) in bits.row(z, row).iter().enumerate() {
            let mut word = w.load(Ordering::Relaxed);
            while word != 0 {
                let b = word.trailing_zeros() as u64;
                word &= word - 1;
                let x = wi as u64 * 64 + b;
                if ndim == 3 {
                    // The common case: the row index is the middle coordinate.
                    out.extend_from_slice(&[z as i64, row as i64, x as i64]);
                    continue;
                }
                if ndim > 1 {
                    out.push(z as i64);
                }
                // The middle axes from the row index.
                let mut rem = row;
                let start = out.len();
                for &n in mid.iter().rev() {
                    out.push((rem % n) as i64);
                    rem /= n;
                }
                out[start..].reverse();
                out.push(x as i64);
            }
        }
    }
    out
}

/// The most dimensions `graph` takes (its neighbourhoods have up to 3^ndim - 1 voxels).
///
/// ```
/// use chunkwise::{MAX_GRAPH_NDIM, forward_offsets};
/// assert_eq!(MAX_GRAPH_NDIM, 8);
/// assert!(forward_offsets(MAX_GRAPH_NDIM, None).is_ok());
/// assert!(forward_offsets(MAX_GRAPH_NDIM + 1, None).is_err());
/// ```
pub const MAX_GRAPH_NDIM: usize = 8;

/// The connectivities of an `ndim`-D array, smallest first: the neighbours that differ in at
/// most 1, 2, ..., `ndim` coordinates by one (2 in 1-D; 4, 8 in 2-D; 6, 18, 26 in 3-D; 8, 32,
/// 64, 80 in 4-D). The last is the full neighbourhood, `3^ndim - 1`.
///
/// ```
/// assert_eq!(chunkwise::connectivities(2), vec![4, 8]);
/// assert_eq!(chunkwise::connectivities(3), vec![6, 18, 26]);
/// ```
pub fn connectivities(ndim: usize) -> Vec<u32> {
    let mut out = Vec::new();
    let (mut total, mut binom, mut pow2) = (0u64, 1u64, 1u64);
    for m in 1..=ndim as u64 {
        // C(ndim, m) 2^m neighbours differ in exactly m coordinates.
        binom = binom * (ndim as u64 - m + 1) / m;
        pow2 *= 2;
        total += binom * pow2;
        out.push(u32::try_from(total).unwrap_or(u32::MAX));
    }
    out
}

/// Neighbour offsets that come after the centre in C order (a positive flat offset), sorted by
/// that offset, for a connectivity of `conn` in `ndim` dimensions ([`connectivities`]; `None`:
/// the full neighbourhood).
///
/// ```
/// use chunkwise::forward_offsets;
/// // 4-connectivity in 2-D: the neighbours after the centre are right and below.
/// assert_eq!(forward_offsets(2, Some(4))?, vec![vec![0, 1], vec![1, 0]]);
/// assert_eq!(forward_offsets(3, None)?.len(), 13); // half of the 26 neighbours
/// assert!(forward_offsets(2, Some(6)).is_err()); // not a 2-D connectivity
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidOption`] (`--connectivity`) for a value that is not one of the rank's, a
/// 0-d array, or more than [`MAX_GRAPH_NDIM`] dimensions.
pub fn forward_offsets(ndim: usize, conn: Option<u32>) -> Result<Vec<Vec<i64>>> {
    if ndim == 0 || ndim > MAX_GRAPH_NDIM {
        return Err(Error::option(
            "connectivity",
            format!("a {ndim}-d array: graph takes 1 to {MAX_GRAPH_NDIM} dimensions"),
        ));
    }
    let allowed = connectivities(ndim);
    let k = match conn {
        None => ndim - 1,
        Some(c) => allowed.iter().position(|&a| a == c).ok_or_else(|| {
            Error::option(
                "connectivity",
                format!("{c} is not a connectivity of a {ndim}-d array; use one of {allowed:?}"),
            )
        })?,
    };
    let max_nonzero = k + 1;
    let mut offs: Vec<Vec<i64>> = Vec::new();
    let all: Vec<std::ops::Range<u64>> = vec![0..3; ndim];
    for d in indices_in(&all) {
        let d: Vec<i64> = d.iter().map(|&v| v as i64 - 1).collect();
        let nz = d.iter().filter(|&&v| v != 0).count();
        // After the centre in C order: the first nonzero component is positive.
        let forward = d.iter().find(|&&v| v != 0).is_some_and(|&v| v > 0);
        if nz > 0 && nz <= max_nonzero && forward {
            offs.push(d);
        }
    }
    // indices_in yields C order, which is flat-offset order for offsets in {-1, 0, 1}.
    Ok(offs)
}

/// The edges between adjacent selected voxels, as `(E, 2)` int64 pairs of flat C-order
/// indices `i < j` (or `(E, 2·ndim)` coordinates with `coords`), each edge once, sorted,
/// written to `out`, or only counted when `out` is `None`.
///
/// ```no_run
/// use chunkwise::{IndexOptions, Input};
/// let r = chunkwise::graph_edges(&Input::open("skeleton.zarr")?, Some("edges.npy".as_ref()),
///                                Some(26), false, &IndexOptions::default())?;
/// println!("{} edges", r.count);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`where_coords`], and [`Error::InvalidOption`] for an unknown connectivity.
pub fn graph_edges(
    input: &Input,
    out: Option<&Path>,
    connectivity: Option<u32>,
    coords: bool,
    opts: &IndexOptions,
) -> Result<IndexReport> {
    let ndim = input.ndim();
    let offsets = forward_offsets(ndim, connectivity)?;
    with_threads(opts.run.threads, || {
        let start = Instant::now();
        let grid = input.block_grid().clone();
        let shape = input.shape().to_vec();
        let cols = if coords { 2 * ndim as u64 } else { 2 };
        let settings = format!(
            "chunkwise graph v1\nselect: {:?}\nconnectivity: {connectivity:?}\ncoords: {coords}\n",
            opts.select
        );
        let mut output = open_output(input, &grid, out, cols, &settings, opts)?;
        let nlayers = layers(input, &grid);
        let (l0, l1) = if output.skip { (0, 0) } else { output.layers };
        let per_layer = grid.num_chunks() / nlayers.max(1);
        let tracker = Tracker::new(
            "graph",
            Unit::Chunks,
            (l1 - l0) * per_layer,
            opts.run.progress.clone(),
        );
        let mut count = 0u64;
        let mut cur = if l0 < l1 {
            Some(layer_bits(input, &grid, l0, opts.select, &tracker)?)
        } else {
            None
        };
        for layer in l0..l1 {
            opts.run.check()?;
            let Some(c) = cur.take() else { break };
            // Edges reach one plane ahead: the next layer's bits are needed for the last
            // plane (also the first layer of the next part's).
            let next = if layer + 1 < nlayers {
                Some(layer_bits(input, &grid, layer + 1, opts.select, &tracker)?)
            } else {
                None
            };
            let planes: Vec<u64> = (c.z0..c.z0 + c.nz).collect();
            for group in planes.chunks(batch()) {
                let edges: Vec<Vec<i64>> = group
                    .par_iter()
                    .map(|&z| plane_edges(&c, next.as_ref(), z, &shape, &offsets, coords))
                    .collect();
                for e in edges {
                    count += e.len() as u64 / cols;
                    if let Some(w) = output.writer.as_mut() {
                        w.push(&e)?;
                    }
                }
            }
            cur = next;
        }
        let (bytes, waiting) = output.finish(cols)?;
        Ok(IndexReport {
            count,
            path: out.map(Path::to_path_buf),
            bytes,
            seconds: start.elapsed().as_secs_f64(),
            waiting,
        })
    })
}

/// The edges from the set voxels of plane `z` to later neighbours.
fn plane_edges(
    cur: &Bits,
    next: Option<&Bits>,
    z: u64,
    shape: &[u64],
    offsets: &[Vec<i64>],
    coords: bool,
) -> Vec<i64> {
    let ndim = shape.len();
    let mut out = Vec::new();
    // C-order strides of the array, for flat indices.
    let mut strides = vec![1i64; ndim];
    for a in (0..ndim - 1).rev() {
        strides[a] = strides[a + 1] * shape[a + 1] as i64;
    }
    let mid: Vec<u64> = if ndim > 2 {
        shape[1..ndim - 1].to_vec()
    } else {
        Vec::new()
    };
    let plane_of = |zz: u64| -> Option<&Bits> {
        if zz < cur.z0 + cur.nz {
            Some(cur)
        } else {
            next.filter(|n| zz >= n.z0 && zz < n.z0 + n.nz)
        }
    };
    let mut p = vec![0i64; ndim];
    for row in 0..cur.rows {
        // The coordinates of the row (all but the last axis).
        let mut rem = row;
        for (a, &n) in mid.iter().enumerate().rev() {
            p[1 + a] = (rem % n) as i64;
            rem /= n;
        }
        if ndim > 1 {
            p[0] = z as i64;
        }
        for (wi, w) in cur.row(z, row).iter().enumerate() {
            let mut word = w.load(Ordering::Relaxed);
            while word != 0 {
                let b = word.trailing_zeros() as u64;
                word &= word - 1;
                p[ndim - 1] = (wi as u64 * 64 + b) as i64;
                let i: i64 = p.iter().zip(&strides).map(|(&c, &s)| c * s).sum();
                for d in offsets {
                    let q: Vec<i64> = p.iter().zip(d).map(|(&c, &o)| c + o).collect();
                    if q.iter().zip(shape).any(|(&c, &n)| c < 0 || c >= n as i64) {
                        continue;
                    }
                    let set = if ndim == 1 {
                        cur.get(0, 0, q[0] as u64)
                    } else {
                        let Some(bits) = plane_of(q[0] as u64) else {
                            continue;
                        };
                        let qrow: u64 = q[1..ndim - 1]
                            .iter()
                            .zip(&bits.row_strides)
                            .map(|(&c, &s)| c as u64 * s)
                            .sum();
                        bits.get(q[0] as u64, qrow, q[ndim - 1] as u64)
                    };
                    if !set {
                        continue;
                    }
                    if coords {
                        out.extend_from_slice(&p);
                        out.extend_from_slice(&q);
                    } else {
                        let j: i64 = q.iter().zip(&strides).map(|(&c, &s)| c * s).sum();
                        out.push(i);
                        out.push(j);
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_pack_bits_in_order() {
        let v: Vec<u16> = (0..70).collect();
        let odd = mask(&v[..64], |x| x % 2 == 1);
        assert_eq!(odd, 0xAAAA_AAAA_AAAA_AAAA);
        assert_eq!(mask(&v[64..], |x| x >= 66), 0b11_1100);
        let p = Pred::<u16>::new(Select::Above(Number::from(61.5)));
        let mut out = [0u64; 2];
        row_masks(&v, &p, &mut out);
        assert_eq!(out, [0b11 << 62, 0b11_1111]);
    }

    /// The 16-bit AVX2 masks against the portable ones: every selection form, both
    /// signednesses, thresholds at and beyond the extremes, rows with tails.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn word_masks_match_the_portable_ones() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        fn check<T: Scalar>(row: &[T], select: Select) {
            let p = Pred::<T>::new(select);
            if p.never {
                return;
            }
            let wp = WordPred::of(&p).expect("a 16-bit type");
            let n = row.len().div_ceil(64);
            let (mut slow, mut fast) = (vec![0u64; n], vec![0u64; n]);
            row_masks(row, &p, &mut slow);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { words_masks_avx2(bytemuck::cast_slice(row), &wp, &mut fast) };
            assert_eq!(fast, slow, "{:?} {select:?} len {}", T::DTYPE, row.len());
        }
        let mut state = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let selects = [
            Select::NonZero,
            Select::Above(Number::from(700.0)),
            Select::Above(Number::from(-1.0)),
            Select::Above(Number::from(65534.0)),
            Select::Below(Number::from(300.5)),
            Select::Below(Number::from(-32767.0)),
            Select::Between(Number::from(100.0), Number::from(40000.0)),
            Select::Between(Number::from(-5.0), Number::from(5.0)),
        ];
        for len in [1usize, 63, 64, 65, 128, 200, 1000] {
            let u: Vec<u16> = (0..len)
                .map(|k| match k % 7 {
                    0 => 0,
                    1 => u16::MAX,
                    _ => next() as u16 % 1500,
                })
                .collect();
            let i: Vec<i16> = u.iter().map(|&v| (v as i16).wrapping_sub(700)).collect();
            for &sel in &selects {
                check(&u, sel);
                check(&i, sel);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_packing_matches_the_portable_one() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes: [u8; 64] = std::array::from_fn(|k| ((state >> k) & 1) as u8);
            // SAFETY: the CPU has AVX2 (checked above).
            let fast = unsafe { pack_bytes_avx2(&bytes) };
            assert_eq!(fast, pack_bytes(&bytes));
            assert_eq!(fast, state);
        }
    }
}
