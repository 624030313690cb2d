//! Boundary modes (named and defined as in scipy.ndimage) and halo plans: where each element of
//! a halo-grown block comes from. Invariant: a plan's segments tile the block exactly, axis by
//! axis; every source index of a segment lies in `[0, n)`.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

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
                    "--mode",
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
