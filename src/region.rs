//! Half-open boxes of array indices, and numpy slice syntax for them.
//! Invariant: `start[i] <= end[i]` on every axis; all indices are `u64`.

use std::fmt;
use std::ops::Range;

use crate::error::{Error, InputError, Result};

/// A half-open box `[start, end)` per axis.
///
/// ```
/// use chunkwise::Region;
/// let r = Region::new(vec![0..10, 5..8]);
/// assert_eq!((r.shape(), r.len()), (vec![10, 3], 30));
/// assert_eq!(r.to_string(), "[0:10, 5:8]");
/// let parsed = Region::parse("-3:, 2", &[10, 20])?; // numpy slice syntax
/// assert_eq!(parsed.region, Region::new(vec![7..10, 2..3]));
/// assert!(Region::full(&[10, 20]).contains(&parsed.region));
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Region {
    ranges: Vec<Range<u64>>,
}

impl Region {
    /// A region from per-axis half-open ranges.
    ///
    /// # Panics
    /// If a range has `start > end` (a programming error, never user input: parse user input
    /// with [`Region::parse`]).
    pub fn new(ranges: Vec<Range<u64>>) -> Self {
        assert!(
            ranges.iter().all(|r| r.start <= r.end),
            "region ranges must be ordered: {ranges:?}"
        );
        Region { ranges }
    }

    /// The whole of an array of `shape`.
    pub fn full(shape: &[u64]) -> Self {
        Region {
            ranges: shape.iter().map(|&n| 0..n).collect(),
        }
    }

    /// Per-axis ranges.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Number of axes.
    pub fn ndim(&self) -> usize {
        self.ranges.len()
    }

    /// Start corner.
    pub fn start(&self) -> Vec<u64> {
        self.ranges.iter().map(|r| r.start).collect()
    }

    /// Extent per axis.
    pub fn shape(&self) -> Vec<u64> {
        self.ranges.iter().map(|r| r.end - r.start).collect()
    }

    /// Number of elements (as u128 so it cannot overflow).
    pub fn len(&self) -> u128 {
        self.ranges
            .iter()
            .map(|r| u128::from(r.end - r.start))
            .product()
    }

    /// Whether the region holds no element.
    pub fn is_empty(&self) -> bool {
        self.ranges.iter().any(|r| r.start == r.end)
    }

    /// The intersection with `other` (possibly empty), or `None` if the ranks differ.
    pub fn intersect(&self, other: &Region) -> Option<Region> {
        if self.ndim() != other.ndim() {
            return None;
        }
        Some(Region {
            ranges: self
                .ranges
                .iter()
                .zip(&other.ranges)
                .map(|(a, b)| {
                    let s = a.start.max(b.start);
                    let e = a.end.min(b.end).max(s);
                    s..e
                })
                .collect(),
        })
    }

    /// Whether `other` lies inside `self`.
    pub fn contains(&self, other: &Region) -> bool {
        self.ndim() == other.ndim()
            && self
                .ranges
                .iter()
                .zip(&other.ranges)
                .all(|(a, b)| b.is_empty() || (a.start <= b.start && b.end <= a.end))
    }

    /// Parses numpy slice syntax (`0:10,:,5:`, `-3:`, `7`, `...`) against an array's shape.
    ///
    /// Axes not mentioned are taken whole; an integer index selects one plane (its axis is
    /// reported in [`ParsedRegion::dropped`], as numpy drops it). Steps are not supported.
    ///
    /// # Errors
    /// [`Error::BadRegion`] for syntax errors, steps, too many axes or indices outside the shape.
    pub fn parse(spec: &str, shape: &[u64]) -> Result<ParsedRegion> {
        let bad = |reason: String| Error::BadRegion {
            spec: spec.to_string(),
            reason,
        };
        let trimmed = spec.trim().trim_start_matches('[').trim_end_matches(']');
        let mut parts: Vec<&str> = if trimmed.trim().is_empty() {
            Vec::new()
        } else {
            trimmed.split(',').map(str::trim).collect()
        };
        if parts.last() == Some(&"") && !parts.is_empty() {
            parts.pop(); // a trailing comma, as in "5,"
        }
        let ellipses = parts.iter().filter(|p| **p == "...").count();
        if ellipses > 1 {
            return Err(bad("more than one '...'".into()));
        }
        let explicit = parts.len() - ellipses;
        if explicit > shape.len() {
            return Err(bad(format!(
                "{explicit} axes given for an array of {} dimensions (shape {})",
                shape.len(),
                fmt_shape(shape)
            )));
        }
        let mut expanded: Vec<&str> = Vec::with_capacity(shape.len());
        for p in &parts {
            if *p == "..." {
                expanded.extend(std::iter::repeat_n(":", shape.len() - explicit));
            } else {
                expanded.push(p);
            }
        }
        expanded.resize(shape.len(), ":");

        let mut ranges = Vec::with_capacity(shape.len());
        let mut dropped = Vec::new();
        for (axis, (part, &n)) in expanded.iter().zip(shape).enumerate() {
            if let Some((a, b)) = part.split_once(':') {
                if b.contains(':') {
                    return Err(bad(format!(
                        "axis {axis}: steps are not supported ({part:?})"
                    )));
                }
                let start = parse_bound(a, 0, n).map_err(|r| bad(format!("axis {axis}: {r}")))?;
                let end = parse_bound(b, n, n).map_err(|r| bad(format!("axis {axis}: {r}")))?;
                // numpy clamps slices silently; an empty slice stays empty.
                ranges.push(start..end.max(start));
            } else {
                let i: i128 = part
                    .parse()
                    .map_err(|_| bad(format!("axis {axis}: {part:?} is not an index or slice")))?;
                let idx = if i < 0 { i + i128::from(n) } else { i };
                if idx < 0 || idx >= i128::from(n) {
                    return Err(bad(format!(
                        "axis {axis}: index {i} is out of bounds for size {n}"
                    )));
                }
                let idx = idx as u64; // in [0, n) by the check above
                ranges.push(idx..idx + 1);
                dropped.push(axis);
            }
        }
        Ok(ParsedRegion {
            region: Region { ranges },
            dropped,
        })
    }
}

/// A parsed `--region`: the box, and the axes given as single integers (numpy drops them).
///
/// ```
/// let p = chunkwise::Region::parse("5, :, 100:", &[10, 64, 256])?;
/// assert_eq!(p.region.ranges(), &[5..6, 0..64, 100..256]);
/// assert_eq!(p.dropped, vec![0]);
/// assert_eq!(p.output_shape(), vec![64, 156]);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRegion {
    /// The selected box.
    pub region: Region,
    /// Axes selected by an integer index.
    pub dropped: Vec<usize>,
}

impl ParsedRegion {
    /// The shape numpy would give the selection (dropped axes removed).
    pub fn output_shape(&self) -> Vec<u64> {
        self.region
            .shape()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !self.dropped.contains(i))
            .map(|(_, n)| n)
            .collect()
    }
}

/// Resolves one slice bound the way numpy does: negative counts from the end, clamped to `[0, n]`.
fn parse_bound(s: &str, default: u64, n: u64) -> std::result::Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(default);
    }
    let v: i128 = s.parse().map_err(|_| format!("{s:?} is not an integer"))?;
    let n = i128::from(n);
    let v = if v < 0 { (v + n).max(0) } else { v.min(n) };
    Ok(v as u64) // clamped to [0, n] above
}

/// Formats a shape as `37x29x53`.
pub fn fmt_shape(shape: &[u64]) -> String {
    if shape.is_empty() {
        return "()".into();
    }
    shape
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("x")
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|r| format!("{}:{}", r.start, r.end))
            .collect();
        write!(f, "[{}]", parts.join(", "))
    }
}

/// Checks that `right` has `left`'s extent on every axis but `except`: else
/// [`crate::InputError::ShapeMismatch`] naming the first axis that differs and both sizes (an axis one
/// shape lacks counts as size 0).
pub(crate) fn check_shapes(
    left_path: &std::path::Path,
    left: &[u64],
    right_path: &std::path::Path,
    right: &[u64],
    except: Option<usize>,
) -> Result<()> {
    let size = |s: &[u64], k: usize| s.get(k).copied().unwrap_or(0);
    let ndim = left.len().max(right.len());
    match (0..ndim).find(|&k| Some(k) != except && size(left, k) != size(right, k)) {
        Some(axis) => Err(Error::Input(InputError::ShapeMismatch {
            left_path: left_path.to_path_buf(),
            right_path: right_path.to_path_buf(),
            axis,
            left: size(left, axis),
            right: size(right, axis),
        })),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_numpy() {
        let shape = [10, 20, 30];
        let p = Region::parse("0:10,:,5:", &shape).unwrap();
        assert_eq!(p.region.ranges(), &[0..10, 0..20, 5..30]);
        let p = Region::parse("-3:, 2", &shape).unwrap();
        assert_eq!(p.region.ranges(), &[7..10, 2..3, 0..30]);
        assert_eq!(p.dropped, vec![1]);
        assert_eq!(p.output_shape(), vec![3, 30]);
        let p = Region::parse("..., 4:100", &shape).unwrap();
        assert_eq!(p.region.ranges(), &[0..10, 0..20, 4..30]);
        let p = Region::parse("5:2", &shape).unwrap();
        assert!(p.region.is_empty());
        assert!(Region::parse("0:10:2", &shape).is_err());
        assert!(Region::parse("1,2,3,4", &shape).is_err());
        assert!(Region::parse("10", &shape).is_err());
        assert!(Region::parse("-11", &shape).is_err());
        assert!(Region::parse("a:b", &shape).is_err());
    }

    #[test]
    fn intersect_and_contains() {
        let a = Region::new(vec![0..10, 5..8]);
        let b = Region::new(vec![4..20, 0..6]);
        let c = a.intersect(&b).unwrap();
        assert_eq!(c.ranges(), &[4..10, 5..6]);
        assert!(a.contains(&c));
        assert!(!c.contains(&a));
        let far = Region::new(vec![30..40, 0..1]);
        assert!(a.intersect(&far).unwrap().is_empty());
    }
}
