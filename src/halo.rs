//! Boundary modes (named and defined as in scipy.ndimage) and halo plans: where each element of
//! a halo-grown block comes from. Invariant: a plan's segments tile the block exactly, axis by
//! axis; every source index of a segment lies in `[0, n)`.

use std::fmt;
use std::str::FromStr;

use std::ops::Range;

use crate::copy::{Side, c_strides, copy_box_signed};
use crate::error::{Error, Result};
use crate::grid::{Grid, indices_in, product};
use crate::region::Region;

/// How a block is extended past the array's edges (spec/COMPUTE.md §2). For `n = 4` elements
/// `a b c d`:
///
/// | mode | left pad | array | right pad |
/// |---|---|---|---|
/// | `Reflect` | `d c b a` | `a b c d` | `d c b a` |
/// | `Mirror` | `d c b` | `a b c d` | `c b a` |
/// | `Nearest` | `a a a a` | `a b c d` | `d d d d` |
/// | `Wrap` | `a b c d` | `a b c d` | `a b c d` |
/// | `Constant(k)` | `k k k k` | `a b c d` | `k k k k` |
///
/// ```
/// use chunkwise::Boundary;
/// assert_eq!(Boundary::from_name("nearest", 0.0)?, Boundary::Nearest);
/// assert_eq!("constant".parse::<Boundary>()?, Boundary::Constant(0.0));
/// // Where position -1 of an axis of 4 elements comes from:
/// assert_eq!(Boundary::Reflect.source(-1, 4), Some(0));
/// assert_eq!(Boundary::Mirror.source(-1, 4), Some(1));
/// assert_eq!(Boundary::Constant(0.0).source(-1, 4), None);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Boundary {
    /// Half-sample symmetric (scipy's default, `reflect`).
    #[default]
    Reflect,
    /// Whole-sample symmetric (`mirror`).
    Mirror,
    /// Repeat the edge element (`nearest`).
    Nearest,
    /// Periodic (`wrap`).
    Wrap,
    /// A constant value (`constant`, with `--cval`).
    Constant(f64),
}

impl Boundary {
    /// The mode for a name (`reflect`, `mirror`, `nearest`, `wrap`, `constant`, and scipy's
    /// `grid-mirror`, `grid-wrap`, `grid-constant` aliases), with `cval` for `constant`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`--mode`) for another name.
    pub fn from_name(name: &str, cval: f64) -> Result<Boundary> {
        Ok(match name {
            "reflect" | "grid-mirror" => Boundary::Reflect,
            "mirror" => Boundary::Mirror,
            "nearest" => Boundary::Nearest,
            "wrap" | "grid-wrap" => Boundary::Wrap,
            "constant" | "grid-constant" => Boundary::Constant(cval),
            other => {
                return Err(Error::option(
                    "mode",
                    format!(
                        "unknown mode {other:?}; expected reflect, mirror, nearest, wrap or constant"
                    ),
                ));
            }
        })
    }

    /// The scipy name.
    pub fn name(&self) -> &'static str {
        match self {
            Boundary::Reflect => "reflect",
            Boundary::Mirror => "mirror",
            Boundary::Nearest => "nearest",
            Boundary::Wrap => "wrap",
            Boundary::Constant(_) => "constant",
        }
    }

    /// The source index of position `p` (any integer) on an axis of `n >= 1` elements, or
    /// `None` where the mode supplies a constant.
    pub fn source(&self, p: i64, n: u64) -> Option<u64> {
        let n = n as i64;
        if (0..n).contains(&p) {
            return Some(p as u64);
        }
        let s = match self {
            Boundary::Constant(_) => return None,
            Boundary::Nearest => p.clamp(0, n - 1),
            Boundary::Wrap => p.rem_euclid(n),
            Boundary::Reflect => {
                let m = p.rem_euclid(2 * n);
                if m < n { m } else { 2 * n - 1 - m }
            }
            Boundary::Mirror => {
                if n == 1 {
                    0
                } else {
                    let m = p.rem_euclid(2 * n - 2);
                    if m < n { m } else { 2 * n - 2 - m }
                }
            }
        };
        Some(s as u64)
    }
}

impl fmt::Display for Boundary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Boundary::Constant(c) => write!(f, "constant({c})"),
            other => f.write_str(other.name()),
        }
    }
}

impl FromStr for Boundary {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Boundary::from_name(s, 0.0)
    }
}

/// A run of block positions along one axis and where they come from.
///
/// ```
/// use chunkwise::{Boundary, Segment, segments};
/// // Positions -2..6 of `a b c d`, reflected: `b a | a b c d | d c`.
/// let s = segments(-2, 6, 4, Boundary::Reflect);
/// assert_eq!(s[0], Segment { dst: 0, len: 2, src: Some((1, -1)) });
/// assert_eq!(s[0].src_range(), Some(0..2));
/// assert_eq!(s[1], Segment { dst: 2, len: 4, src: Some((0, 1)) });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First block position.
    pub dst: usize,
    /// Number of positions.
    pub len: usize,
    /// First source index and step (+1, -1, or 0 for one index repeated), or `None` for the
    /// constant.
    pub src: Option<(u64, i8)>,
}

impl Segment {
    /// The source indices the segment reads, as a half-open range.
    pub fn src_range(&self) -> Option<std::ops::Range<u64>> {
        self.src.map(|(s, step)| match step {
            1 => s..s + self.len as u64,
            0 => s..s + 1,
            _ => s + 1 - self.len as u64..s + 1,
        })
    }
}

/// The segments of block positions `[start, end)` (array coordinates, possibly outside
/// `[0, n)`) on an axis of `n` elements.
///
/// ```
/// use chunkwise::{Boundary, Segment, segments};
/// assert_eq!(segments(-2, 6, 4, Boundary::Constant(0.0)), vec![
///     Segment { dst: 0, len: 2, src: None },
///     Segment { dst: 2, len: 4, src: Some((0, 1)) },
///     Segment { dst: 6, len: 2, src: None },
/// ]);
/// ```
pub fn segments(start: i64, end: i64, n: u64, mode: Boundary) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    if n == 0 {
        if end > start {
            out.push(Segment {
                dst: 0,
                len: (end - start) as usize,
                src: None,
            });
        }
        return out;
    }
    for (k, p) in (start..end).enumerate() {
        let s = mode.source(p, n);
        if let Some(last) = out.last_mut() {
            let extends = match (last.src, s) {
                (None, None) => true,
                (Some((s0, step)), Some(s1)) => {
                    let next = s0 as i64 + i64::from(step) * last.len as i64;
                    if last.len == 1 {
                        // A one-element run takes the step of its second element.
                        let d = s1 as i64 - s0 as i64;
                        if (-1..=1).contains(&d) {
                            last.src = Some((s0, d as i8));
                            true
                        } else {
                            false
                        }
                    } else {
                        next == s1 as i64
                    }
                }
                _ => false,
            };
            if extends {
                last.len += 1;
                continue;
            }
        }
        out.push(Segment {
            dst: k,
            len: 1,
            src: s.map(|s| (s, 1)),
        });
    }
    out
}

/// Decoded values of a box of an input: a whole decoded chunk (at its full, padded shape), or
/// the part of one a traversal keeps (spec/COMPUTE.md §5).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece<'d> {
    /// The values, C order.
    pub(crate) bytes: &'d [u8],
    /// Where the box starts, in array coordinates.
    pub(crate) start: &'d [u64],
    /// The box's shape (what `bytes` is laid out by).
    pub(crate) shape: &'d [usize],
}

/// Fills `block` from the chunks of `grid` (`chunk(c)`: what is kept of chunk `c`, a box
/// holding every element the segments read from it) following the segments; constant
/// segments get `cval`.
pub(crate) fn fill_block<'d>(
    grid: &Grid,
    chunk: impl Fn(&[u64]) -> Option<Piece<'d>>,
    cval: &[u8],
    itemsize: usize,
    shape: &[usize],
    segs: &[Vec<Segment>],
    block: &mut [u8],
) -> Result<()> {
    let ndim = shape.len();
    let bstrides: Vec<usize> = c_strides(shape, itemsize);
    let combos = product(
        &segs
            .iter()
            .map(|v| (0..v.len() as u64).collect())
            .collect::<Vec<_>>(),
    );
    for combo in combos {
        let sel: Vec<&Segment> = combo
            .iter()
            .enumerate()
            .map(|(a, &k)| &segs[a][k as usize])
            .collect();
        if sel.iter().any(|s| s.src.is_none()) {
            fill_box(block, &bstrides, &sel, cval, itemsize);
            continue;
        }
        let src: Vec<Range<u64>> = sel
            .iter()
            .map(|s| s.src_range().expect("not constant"))
            .collect();
        let cbox = grid.chunks_touching(&Region::new(src.clone()));
        for c in indices_in(&cbox) {
            let piece =
                chunk(&c).ok_or_else(|| Error::Internal(format!("chunk {c:?} was not planned")))?;
            let creg = grid.chunk_region(&c);
            let inter: Vec<Range<u64>> = src
                .iter()
                .zip(creg.ranges())
                .map(|(s, r)| s.start.max(r.start)..s.end.min(r.end))
                .collect();
            if inter.iter().any(|r| r.start >= r.end) {
                continue;
            }
            let outside = inter
                .iter()
                .zip(piece.start.iter().zip(piece.shape))
                .any(|(r, (&p, &n))| r.start < p || r.end > p + n as u64);
            if outside {
                return Err(Error::Internal(format!(
                    "chunk {c:?} was kept from {:?} in {:?}, and {inter:?} is read",
                    piece.start, piece.shape
                )));
            }
            let data = piece.bytes;
            let cstrides = c_strides(piece.shape, itemsize);
            let mut src_off = 0usize;
            let mut src_strides = vec![0usize; ndim];
            let mut dst_first = 0usize;
            let mut dst_strides = vec![0isize; ndim];
            let mut extent = vec![0usize; ndim];
            for a in 0..ndim {
                let seg = sel[a];
                let (s0, step) = seg.src.expect("not constant");
                src_off += (inter[a].start - piece.start[a]) as usize * cstrides[a];
                let d = match step {
                    1 => {
                        src_strides[a] = cstrides[a];
                        dst_strides[a] = bstrides[a] as isize;
                        extent[a] = (inter[a].end - inter[a].start) as usize;
                        seg.dst + (inter[a].start - s0) as usize
                    }
                    -1 => {
                        src_strides[a] = cstrides[a];
                        dst_strides[a] = -(bstrides[a] as isize);
                        extent[a] = (inter[a].end - inter[a].start) as usize;
                        seg.dst + (s0 - inter[a].start) as usize
                    }
                    _ => {
                        // One source index repeated over the segment.
                        src_strides[a] = 0;
                        dst_strides[a] = bstrides[a] as isize;
                        extent[a] = seg.len;
                        seg.dst
                    }
                };
                dst_first += d * bstrides[a];
            }
            copy_box_signed(
                data,
                Side {
                    offset: src_off,
                    strides: &src_strides,
                },
                block,
                dst_first,
                &dst_strides,
                &extent,
                itemsize,
            );
        }
    }
    Ok(())
}

/// Fills the box the segments select with the constant.
fn fill_box(block: &mut [u8], strides: &[usize], sel: &[&Segment], value: &[u8], itemsize: usize) {
    let ranges: Vec<Range<u64>> = sel
        .iter()
        .map(|s| s.dst as u64..(s.dst + s.len) as u64)
        .collect();
    let ndim = ranges.len();
    let inner = &ranges[ndim - 1];
    let outer: Vec<Range<u64>> = ranges[..ndim - 1].to_vec();
    for idx in indices_in(&outer) {
        let base: usize = idx.iter().zip(strides).map(|(&i, &s)| i as usize * s).sum();
        for k in inner.clone() {
            let at = base + k as usize * strides[ndim - 1];
            block[at..at + itemsize].copy_from_slice(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(mode: Boundary, n: u64, pad: i64) -> Vec<Option<u64>> {
        (-pad..n as i64 + pad).map(|p| mode.source(p, n)).collect()
    }

    #[test]
    fn modes_match_the_scipy_table() {
        // a b c d = 0 1 2 3
        let s = |v: &[i64]| v.iter().map(|&x| Some(x as u64)).collect::<Vec<_>>();
        assert_eq!(
            expand(Boundary::Reflect, 4, 4),
            s(&[3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0])
        );
        assert_eq!(
            expand(Boundary::Mirror, 4, 3),
            s(&[3, 2, 1, 0, 1, 2, 3, 2, 1, 0])
        );
        assert_eq!(
            expand(Boundary::Nearest, 4, 2),
            s(&[0, 0, 0, 1, 2, 3, 3, 3])
        );
        assert_eq!(
            expand(Boundary::Wrap, 4, 4),
            s(&[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3])
        );
        let c = expand(Boundary::Constant(5.0), 4, 1);
        assert_eq!(c, vec![None, Some(0), Some(1), Some(2), Some(3), None]);
        // Deeper than the array: reflection repeats.
        assert_eq!(
            expand(Boundary::Reflect, 2, 5),
            // ... b a a b | a b | b a a b ...
            s(&[0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
        );
        assert_eq!(expand(Boundary::Mirror, 1, 2), s(&[0, 0, 0, 0, 0]));
    }

    #[test]
    fn segments_tile_the_block() {
        for mode in [
            Boundary::Reflect,
            Boundary::Mirror,
            Boundary::Nearest,
            Boundary::Wrap,
            Boundary::Constant(0.0),
        ] {
            for (start, end, n) in [(-3i64, 7i64, 5u64), (-9, 12, 2), (2, 4, 10), (-1, 1, 1)] {
                let segs = segments(start, end, n, mode);
                let mut pos = 0;
                for seg in &segs {
                    assert_eq!(seg.dst, pos);
                    for k in 0..seg.len {
                        let want = mode.source(start + (seg.dst + k) as i64, n);
                        let got = seg
                            .src
                            .map(|(s, step)| (s as i64 + i64::from(step) * k as i64) as u64);
                        assert_eq!(got, want, "{mode:?} {start}..{end} n={n}");
                    }
                    pos += seg.len;
                }
                assert_eq!(pos as i64, end - start);
            }
        }
        assert_eq!(segments(2, 6, 10, Boundary::Reflect).len(), 1);
        // Nearest: the pads are single repeated indices.
        let segs = segments(-8, 13, 5, Boundary::Nearest);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs[0].src, Some((0, 0)));
        assert_eq!(segs[2].src, Some((4, 0)));
    }
}
