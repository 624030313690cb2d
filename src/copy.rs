//! Strided copies of n-d boxes between byte buffers (gathering chunks from inputs, scattering
//! decoded chunks into regions). Invariant: every byte touched is bounds-checked before copying.

use std::marker::PhantomData;

/// Byte strides of a C-order buffer of `shape` with `itemsize`-byte elements.
pub(crate) fn c_strides(shape: &[usize], itemsize: usize) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = itemsize;
    for (s, &n) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= n;
    }
    strides
}

/// Byte strides of a Fortran-order buffer of `shape`.
pub(crate) fn f_strides(shape: &[usize], itemsize: usize) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = itemsize;
    for (s, &n) in strides.iter_mut().zip(shape) {
        *s = acc;
        acc *= n;
    }
    strides
}

/// One side of a strided copy: a byte offset of the box's first element and byte strides.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Side<'s> {
    pub offset: usize,
    pub strides: &'s [usize],
}

impl Side<'_> {
    /// One past the last byte the box touches (0 for an empty box).
    fn end(&self, extent: &[usize], itemsize: usize) -> usize {
        if extent.contains(&0) {
            return 0;
        }
        self.offset
            + extent
                .iter()
                .zip(self.strides)
                .map(|(&n, &s)| (n - 1) * s)
                .sum::<usize>()
            + itemsize
    }
}

/// A C-order block of shape `full` whose origin corner `part` is filled by `read` (a C-order
/// buffer of shape `part`), the rest with the element `fill`: an edge block padded to the
/// full block shape, as a decoded edge chunk is.
///
/// # Errors
/// Whatever `read` returns.
pub(crate) fn read_padded<E>(
    full: &[usize],
    part: &[usize],
    fill: &[u8],
    read: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let itemsize = fill.len();
    let n: usize = full.iter().product();
    // Zeroed memory comes from the allocator for free; a repeated fill is memcpy doubling
    // (a byte-by-byte `cycle` cost more than the read itself).
    let mut buf = if part == full || fill.iter().all(|&b| b == 0) {
        vec![0u8; n * itemsize]
    } else {
        fill.repeat(n)
    };
    if part == full {
        read(&mut buf)?;
        return Ok(buf);
    }
    let mut tmp = vec![0u8; part.iter().product::<usize>() * itemsize];
    read(&mut tmp)?;
    copy_box(
        &tmp,
        Side {
            offset: 0,
            strides: &c_strides(part, itemsize),
        },
        &mut buf,
        Side {
            offset: 0,
            strides: &c_strides(full, itemsize),
        },
        part,
        itemsize,
        false,
    );
    Ok(buf)
}

/// Copies a box of `extent` elements from `src` to `dst`; with `swap`, reverses each element's
/// bytes (big-endian input).
///
/// # Panics
/// If the box reaches outside either buffer (a bug in the caller, never user input).
pub(crate) fn copy_box(
    src: &[u8],
    from: Side<'_>,
    dst: &mut [u8],
    to: Side<'_>,
    extent: &[usize],
    itemsize: usize,
    swap: bool,
) {
    assert!(
        from.end(extent, itemsize) <= src.len(),
        "copy source out of bounds"
    );
    assert!(
        to.end(extent, itemsize) <= dst.len(),
        "copy target out of bounds"
    );
    // SAFETY: both boxes lie inside their buffers (checked above); `dst` is exclusively borrowed.
    unsafe {
        copy_raw(
            src.as_ptr(),
            from,
            dst.as_mut_ptr(),
            to,
            extent,
            itemsize,
            swap,
        )
    }
}

/// A byte buffer that several threads fill at once, each a disjoint set of bytes.
pub(crate) struct SharedOut<'a> {
    ptr: *mut u8,
    len: usize,
    _buf: PhantomData<&'a mut [u8]>,
}

// SAFETY: writers promise disjoint byte sets (see `copy_in`); the pointer outlives `'a`.
unsafe impl Send for SharedOut<'_> {}
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        SharedOut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Copies a box from `src` into the shared buffer.
    ///
    /// # Safety
    /// No other thread may write or read the bytes of the target box while this runs: callers
    /// copy the disjoint intersections of distinct chunks with one region.
    ///
    /// # Panics
    /// If the box reaches outside either buffer.
    pub(crate) unsafe fn copy_in(
        &self,
        src: &[u8],
        from: Side<'_>,
        to: Side<'_>,
        extent: &[usize],
        itemsize: usize,
    ) {
        assert!(
            from.end(extent, itemsize) <= src.len(),
            "copy source out of bounds"
        );
        assert!(
            to.end(extent, itemsize) <= self.len,
            "copy target out of bounds"
        );
        // SAFETY: in bounds (checked above); disjointness is the caller's promise.
        unsafe { copy_raw(src.as_ptr(), from, self.ptr, to, extent, itemsize, false) }
    }
}

/// # Safety
/// Both boxes must lie inside valid, non-overlapping allocations; the target box must not be
/// accessed concurrently.
unsafe fn copy_raw(
    src: *const u8,
    from: Side<'_>,
    dst: *mut u8,
    to: Side<'_>,
    extent: &[usize],
    itemsize: usize,
    swap: bool,
) {
    let fs: Vec<isize> = from.strides.iter().map(|&s| s as isize).collect();
    let ts: Vec<isize> = to.strides.iter().map(|&s| s as isize).collect();
    unsafe {
        copy_signed(
            src.add(from.offset),
            &fs,
            dst.add(to.offset),
            &ts,
            extent,
            itemsize,
            swap,
        )
    }
}

/// The box copy with signed strides, from pointers to the first element of each box.
///
/// # Safety
/// Every element the strides reach must be valid to read (source) and write (target).
unsafe fn copy_signed(
    src: *const u8,
    ss: &[isize],
    dst: *mut u8,
    ds: &[isize],
    extent: &[usize],
    itemsize: usize,
    swap: bool,
) {
    if extent.contains(&0) {
        return;
    }
    if extent.is_empty() {
        // A 0-d box is one element.
        unsafe {
            copy_elements(
                src,
                itemsize as isize,
                dst,
                itemsize as isize,
                1,
                itemsize,
                swap,
            )
        };
        return;
    }
    let inner = extent.len() - 1;
    let n_inner = extent[inner];
    let mut idx = vec![0usize; inner];
    loop {
        let mut so = 0isize;
        let mut dof = 0isize;
        for (a, &i) in idx.iter().enumerate() {
            so += i as isize * ss[a];
            dof += i as isize * ds[a];
        }
        // SAFETY: offsets stay inside the boxes the caller vouched for.
        unsafe {
            copy_elements(
                src.offset(so),
                ss[inner],
                dst.offset(dof),
                ds[inner],
                n_inner,
                itemsize,
                swap,
            )
        };
        // Odometer over the outer axes.
        let mut a = inner;
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            if idx[a] < extent[a] {
                break;
            }
            idx[a] = 0;
        }
    }
}

/// Copies a box from a C-order `src` (starting at byte `src_offset`, forward strides) into
/// `dst` with signed strides: a negative stride lays that axis out reversed (reflected halos).
/// `dst_first` is the byte offset in `dst` of the element the box's first element goes to.
///
/// # Panics
/// If the box reaches outside either buffer (a bug in the caller, never user input).
pub(crate) fn copy_box_signed(
    src: &[u8],
    from: Side<'_>,
    dst: &mut [u8],
    dst_first: usize,
    dst_strides: &[isize],
    extent: &[usize],
    itemsize: usize,
) {
    assert!(
        from.end(extent, itemsize) <= src.len(),
        "copy source out of bounds"
    );
    if extent.contains(&0) {
        return;
    }
    let (mut lo, mut hi) = (dst_first as isize, dst_first as isize);
    for (&n, &s) in extent.iter().zip(dst_strides) {
        let span = (n as isize - 1) * s;
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    assert!(
        lo >= 0 && (hi as usize) + itemsize <= dst.len(),
        "copy target out of bounds"
    );
    let fs: Vec<isize> = from.strides.iter().map(|&s| s as isize).collect();
    // SAFETY: every element reached lies in [lo, hi + itemsize) of `dst` and inside `src`
    // (checked above); `dst` is exclusively borrowed.
    unsafe {
        copy_signed(
            src.as_ptr().add(from.offset),
            &fs,
            dst.as_mut_ptr().add(dst_first),
            dst_strides,
            extent,
            itemsize,
            false,
        )
    }
}

/// Copies `n` elements along one axis.
///
/// # Safety
/// `n` elements at the given strides must be valid to read at `src` and write at `dst`.
#[inline]
unsafe fn copy_elements(
    src: *const u8,
    ss: isize,
    dst: *mut u8,
    ds: isize,
    n: usize,
    itemsize: usize,
    swap: bool,
) {
    let size = itemsize as isize;
    unsafe {
        if !swap && ss == size && ds == size {
            std::ptr::copy_nonoverlapping(src, dst, n * itemsize);
            return;
        }
        for k in 0..n as isize {
            let s = src.offset(k * ss);
            let d = dst.offset(k * ds);
            if swap {
                for b in 0..itemsize {
                    *d.add(b) = *s.add(itemsize - 1 - b);
                }
            } else {
                match itemsize {
                    1 => *d = *s,
                    2 => std::ptr::copy_nonoverlapping(s, d, 2),
                    4 => std::ptr::copy_nonoverlapping(s, d, 4),
                    8 => std::ptr::copy_nonoverlapping(s, d, 8),
                    _ => std::ptr::copy_nonoverlapping(s, d, itemsize),
                }
            }
        }
    }
}

/// Whether `buf` is `elem` repeated (bit for bit: a NaN fill value included); a zero element
/// is checked a word at a time.
pub(crate) fn is_fill(buf: &[u8], elem: &[u8]) -> bool {
    if elem.iter().all(|&b| b == 0) {
        let (head, body, tail) = bytemuck::pod_align_to::<u8, u64>(buf);
        return head.iter().all(|&b| b == 0)
            && body.iter().all(|&w| w == 0)
            && tail.iter().all(|&b| b == 0);
    }
    buf.chunks_exact(elem.len()).all(|c| c == elem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_a_box_between_c_buffers() {
        // src: 4x5 u8 with value 10*r + c; copy [1..3, 2..5] into a 3x4 dst at (0, 1).
        let src: Vec<u8> = (0..4)
            .flat_map(|r| (0..5).map(move |c| 10 * r + c))
            .collect();
        let mut dst = vec![0u8; 12];
        let ss = c_strides(&[4, 5], 1);
        let ds = c_strides(&[3, 4], 1);
        copy_box(
            &src,
            Side {
                offset: 5 + 2,
                strides: &ss,
            },
            &mut dst,
            Side {
                offset: 1,
                strides: &ds,
            },
            &[2, 3],
            1,
            false,
        );
        assert_eq!(dst, vec![0, 12, 13, 14, 0, 22, 23, 24, 0, 0, 0, 0]);
    }

    #[test]
    fn reversed_target_axis() {
        // Copy a 2x3 box into a 2x3 target with its second axis reversed.
        let src: Vec<u8> = vec![1, 2, 3, 4, 5, 6];
        let mut dst = vec![0u8; 6];
        let ss = c_strides(&[2, 3], 1);
        copy_box_signed(
            &src,
            Side {
                offset: 0,
                strides: &ss,
            },
            &mut dst,
            2,
            &[3, -1],
            &[2, 3],
            1,
        );
        assert_eq!(dst, vec![3, 2, 1, 6, 5, 4]);
    }

    #[test]
    fn fortran_gather_and_swap() {
        // A 2x3 u16 array in Fortran order, big-endian, gathered into C order.
        let vals = [[1u16, 2, 3], [4, 5, 6]];
        let mut src = Vec::new();
        for c in 0..3 {
            for row in &vals {
                src.extend_from_slice(&row[c].to_be_bytes());
            }
        }
        let mut dst = vec![0u8; 12];
        let fs = f_strides(&[2, 3], 2);
        let cs = c_strides(&[2, 3], 2);
        copy_box(
            &src,
            Side {
                offset: 0,
                strides: &fs,
            },
            &mut dst,
            Side {
                offset: 0,
                strides: &cs,
            },
            &[2, 3],
            2,
            true,
        );
        let got: Vec<u16> = dst
            .chunks(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    }
}
