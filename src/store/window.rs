//! A box of an array's chunks decoded on demand (spec/FORMAT.md §8.1): the tasks that read
//! parts of the box decode each chunk they need themselves, in parallel, the first of them
//! decoding it once for all; a chunk is freed after the last read that was declared for it.
//!
//! This is how `convert` keeps every worker decoding when it streams a store or a TIFF stack:
//! opening a block costs nothing, and the decodes happen in the tasks that gather output
//! chunks, not in the one thread that feeds them. What a window decodes are [`Units`]: a
//! store's chunks, or the pages of a TIFF stack's block. Invariant: a slot's lock is held only
//! while that unit decodes, and a decode waits on nothing else, so a reader waiting for a slot
//! always gets it.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use crate::copy::{Side, c_strides, copy_box};
use crate::error::Result;
use crate::grid::indices_in;
use crate::region::Region;

use super::Store;

/// What a [`Window`] decodes: a grid of units over the array, each decoded whole.
pub(crate) trait Units: Sync {
    /// Bytes per element.
    fn itemsize(&self) -> usize;
    /// The box of unit indices that `part` touches.
    fn touching(&self, part: &Region) -> Result<Vec<Range<u64>>>;
    /// The region of the array that unit `idx` holds.
    fn unit_region(&self, idx: &[u64]) -> Result<Region>;
    /// The C-order shape of unit `idx` decoded (a store's edge chunk is padded past its
    /// region).
    fn decoded_shape(&self, idx: &[u64]) -> Result<Vec<usize>>;
    /// Unit `idx` decoded, at [`Units::decoded_shape`].
    fn decode(&self, idx: &[u64]) -> Result<Vec<u8>>;
}

/// A store's chunks; an absent chunk decodes as the fill value.
impl Units for &Store {
    fn itemsize(&self) -> usize {
        self.dtype().size()
    }

    fn touching(&self, part: &Region) -> Result<Vec<Range<u64>>> {
        self.chunks_touching(part)
    }

    fn unit_region(&self, idx: &[u64]) -> Result<Region> {
        self.chunk_region(idx)
    }

    fn decoded_shape(&self, idx: &[u64]) -> Result<Vec<usize>> {
        self.padded_chunk_shape(idx)
    }

    fn decode(&self, idx: &[u64]) -> Result<Vec<u8>> {
        if let Some(bytes) = self.read_chunk(idx)? {
            return Ok(bytes);
        }
        let n: usize = self.padded_chunk_shape(idx)?.iter().product();
        let fill = self.fill_bytes();
        Ok(if fill.iter().all(|&b| b == 0) {
            vec![0; n * fill.len()]
        } else {
            fill.repeat(n)
        })
    }
}

/// Copies the piece of `part` in unit `idx` of `units` (decoded: `data`) into `dst`, a C-order
/// buffer of `dst_shape` holding `part`.
///
/// # Errors
/// As [`Units::unit_region`] and [`Units::decoded_shape`].
pub(crate) fn copy_unit<U: Units>(
    units: &U,
    idx: &[u64],
    data: &[u8],
    part: &Region,
    dst: &mut [u8],
    dst_shape: &[usize],
) -> Result<()> {
    let itemsize = units.itemsize();
    let creg = units.unit_region(idx)?;
    if let Some(piece) = creg.intersect(part).filter(|p| !p.is_empty()) {
        let extent: Vec<usize> = piece.shape().iter().map(|&n| n as usize).collect();
        let at = |reg: &Region, strides: &[usize]| -> usize {
            piece
                .start()
                .iter()
                .zip(reg.ranges())
                .zip(strides)
                .map(|((&p, r), &s)| (p - r.start) as usize * s)
                .sum()
        };
        let strides = c_strides(&units.decoded_shape(idx)?, itemsize);
        let dst_strides = c_strides(dst_shape, itemsize);
        let src = Side {
            offset: at(&creg, &strides),
            strides: &strides,
        };
        let to = Side {
            offset: at(part, &dst_strides),
            strides: &dst_strides,
        };
        copy_box(data, src, dst, to, &extent, itemsize, false);
    }
    Ok(())
}

/// The chunks of a store that a box of it touches, each decoded by the first read needing
/// it.
pub(crate) type ChunkWindow<'a> = Window<&'a Store>;

/// The units a box of the array touches, each decoded by the first read needing it.
pub(crate) struct Window<U> {
    units: U,
    /// The box of unit indices the region touches.
    chunks: Vec<Range<u64>>,
    slots: Vec<Slot>,
}

#[derive(Default)]
struct Slot {
    /// `None` until decoded (and again once freed).
    data: Mutex<Option<Arc<Vec<u8>>>>,
    /// Declared reads not yet done.
    reads_left: AtomicUsize,
}

impl<U: Units> Window<U> {
    /// The units of `region`, to be read by the parts `reads` (each inside `region`; a unit
    /// is freed when the last of them touching it is read, and decoded again if read after).
    ///
    /// # Errors
    /// [`crate::Error::BadRegion`] for a region outside the array.
    pub(crate) fn new(units: U, region: &Region, reads: &[Region]) -> Result<Self> {
        let chunks = units.touching(region)?;
        let n: usize = chunks.iter().map(|r| (r.end - r.start) as usize).product();
        let slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
        let window = Window {
            units,
            chunks,
            slots,
        };
        for part in reads {
            for idx in indices_in(&window.units.touching(part)?) {
                if let Some(s) = window.slot(&idx) {
                    s.reads_left.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(window)
    }

    fn slot(&self, idx: &[u64]) -> Option<&Slot> {
        let mut flat = 0usize;
        for (&i, r) in idx.iter().zip(&self.chunks) {
            if !r.contains(&i) {
                return None;
            }
            flat = flat * (r.end - r.start) as usize + (i - r.start) as usize;
        }
        self.slots.get(flat)
    }

    /// Copies `part` (inside the window's region) into the origin corner of `dst`, a C-order
    /// buffer of `dst_shape`, decoding the chunks it touches that no read has decoded yet.
    ///
    /// A chunk another read is decoding is left for later while this read has others to take:
    /// reads that need the same chunks (the halves of a chunk split in two) share their decodes
    /// instead of waiting for one another.
    ///
    /// # Errors
    /// [`crate::StoreError::CorruptChunk`] naming a chunk that does not decode.
    pub(crate) fn read_into(
        &self,
        part: &Region,
        dst: &mut [u8],
        dst_shape: &[usize],
    ) -> Result<()> {
        let mut pending = indices_in(&self.units.touching(part)?);
        while !pending.is_empty() {
            let before = pending.len();
            let mut left = Vec::new();
            for idx in pending {
                match self.try_chunk(&idx)? {
                    Some(data) => self.copy_piece(&idx, &data, part, dst, dst_shape)?,
                    None => left.push(idx),
                }
            }
            if left.len() == before {
                // Every chunk still needed is being decoded by another read: wait for one.
                let idx = left.swap_remove(0);
                let data = self.chunk(&idx)?;
                self.copy_piece(&idx, &data, part, dst, dst_shape)?;
            }
            pending = left;
        }
        Ok(())
    }

    /// Copies the piece of `part` in chunk `idx` (decoded: `data`) into `dst`, then counts
    /// the read done.
    fn copy_piece(
        &self,
        idx: &[u64],
        data: &[u8],
        part: &Region,
        dst: &mut [u8],
        dst_shape: &[usize],
    ) -> Result<()> {
        copy_unit(&self.units, idx, data, part, dst, dst_shape)?;
        self.done_with(idx);
        Ok(())
    }

    /// Chunk `idx` decoded at its padded shape (an absent one as the fill value), by this
    /// call if no other has; `None` if another read is decoding it now.
    fn try_chunk(&self, idx: &[u64]) -> Result<Option<Arc<Vec<u8>>>> {
        let Some(slot) = self.slot(idx) else {
            return self.decode(idx).map(Some);
        };
        let mut data = match slot.data.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        if let Some(d) = &*data {
            return Ok(Some(d.clone()));
        }
        let d = self.decode(idx)?;
        *data = Some(d.clone());
        Ok(Some(d))
    }

    /// Chunk `idx` decoded, waiting for a read that is decoding it.
    fn chunk(&self, idx: &[u64]) -> Result<Arc<Vec<u8>>> {
        let Some(slot) = self.slot(idx) else {
            return self.decode(idx);
        };
        let mut data = slot.data.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(d) = &*data {
            return Ok(d.clone());
        }
        let d = self.decode(idx)?;
        *data = Some(d.clone());
        Ok(d)
    }

    fn decode(&self, idx: &[u64]) -> Result<Arc<Vec<u8>>> {
        self.units.decode(idx).map(Arc::new)
    }

    /// One read of chunk `idx` is done: the last declared one frees it.
    fn done_with(&self, idx: &[u64]) {
        if let Some(slot) = self.slot(idx) {
            let left = slot
                .reads_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
            if left == Ok(1) {
                *slot.data.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
        }
    }
}
