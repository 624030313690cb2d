//! The .npy format: parsing headers (versions 1-3) and writing them (version 1, or 2 when needed).
//! Invariant: a parsed header's `data_offset` is where the array bytes start in the file.

use std::path::Path;

use crate::dtype::DType;
use crate::error::{Error, InputError, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// What an .npy header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Element type.
    pub dtype: DType,
    /// Whether elements are stored big-endian.
    pub big_endian: bool,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// Array shape.
    pub shape: Vec<u64>,
    /// Byte offset of the data.
    pub data_offset: u64,
}

impl NpyHeader {
    /// Bytes of array data the header implies.
    pub fn data_len(&self) -> u128 {
        // Saturating: a header of absurd dimensions is refused by the size check, not by a panic.
        self.shape
            .iter()
            .try_fold(self.dtype.size() as u128, |a, &n| {
                a.checked_mul(u128::from(n))
            })
            .unwrap_or(u128::MAX)
    }
}

/// Parses the header at the start of `bytes` (at least the first few KiB of the file).
///
/// # Errors
/// [`crate::InputError::BadInput`] for a malformed header, [`crate::InputError::UnsupportedDtype`] for complex, object,
/// structured or string dtypes.
pub fn parse_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad = |reason: &str| Error::bad_input(path, format!("not a valid .npy file: {reason}"));
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("missing \\x93NUMPY magic"));
    }
    let major = bytes[6];
    let (header_len, start) = match major {
        1 => (u64::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10u64),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header"));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (u64::from(len), 12u64)
        }
        v => return Err(bad(&format!("unknown format version {v}"))),
    };
    let end = start + header_len;
    let end_usize = usize::try_from(end).map_err(|_| bad("header too long"))?;
    if bytes.len() < end_usize {
        return Err(bad("truncated header"));
    }
    let text = std::str::from_utf8(&bytes[start as usize..end_usize])
        .map_err(|_| bad("header is not text"))?;

    let descr_raw = dict_value(text, "descr").ok_or_else(|| bad("no 'descr' in header"))?;
    let descr = descr_raw
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| {
            descr_raw
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
        });
    let Some(descr) = descr else {
        return Err(Error::Input(InputError::UnsupportedDtype {
            path: path.to_path_buf(),
            dtype: descr_raw.to_string(),
            hint: format!(
                "structured dtypes are not supported; supported: {}",
                DType::accepted_names()
            ),
        }));
    };
    let (dtype, big_endian) = DType::from_npy_descr(descr).ok_or_else(|| {
        Error::Input(InputError::UnsupportedDtype {
            path: path.to_path_buf(),
            dtype: descr.to_string(),
            hint: format!("supported: {}", DType::accepted_names()),
        })
    })?;
    let fortran_order = match dict_value(text, "fortran_order") {
        Some("True") => true,
        Some("False") => false,
        _ => return Err(bad("no 'fortran_order' True/False in header")),
    };
    let shape_txt = dict_value(text, "shape").ok_or_else(|| bad("no 'shape' in header"))?;
    let inner = shape_txt
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| bad("'shape' is not a tuple"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<u64>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| bad("'shape' holds a non-integer"))?;
    Ok(NpyHeader {
        dtype,
        big_endian,
        fortran_order,
        shape,
        data_offset: end,
    })
}

/// Finds the value text for `key` in the header's Python dict literal.
fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pos = text
        .find(&format!("'{key}'"))
        .or_else(|| text.find(&format!("\"{key}\"")))?;
    let rest = text[pos + key.len() + 2..].trim_start().strip_prefix(':')?;
    let rest = rest.trim_start();
    // The value ends at the comma that closes it: track brackets and quotes.
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for (i, ch) in rest.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']') => depth -= 1,
            (None, '}') if depth == 0 => return Some(rest[..i].trim()),
            (None, '}') => depth -= 1,
            (None, ',') if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// The header bytes of a C-order little-endian .npy file of `dtype` and `shape`.
pub fn header_bytes(dtype: DType, shape: &[u64]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.npy_descr(),
        shape_txt
    );
    // Version 1 has a u16 length; numpy pads the whole preamble to a multiple of 64 bytes.
    let (version, prefix) = if dict.len() + 1 + 10 <= 65535 {
        (1u8, 10usize)
    } else {
        (2u8, 12usize)
    };
    let total = (prefix + dict.len() + 1).div_ceil(64) * 64;
    let header_len = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(header_len as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header_len as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = header_bytes(DType::U16, &[3, 4, 5]);
        assert_eq!(h.len() % 64, 0);
        let p = parse_header(&h, Path::new("x.npy")).unwrap();
        assert_eq!(p.dtype, DType::U16);
        assert_eq!(p.shape, vec![3, 4, 5]);
        assert!(!p.fortran_order && !p.big_endian);
        assert_eq!(p.data_offset, h.len() as u64);
        let h1 = header_bytes(DType::F64, &[7]);
        assert_eq!(parse_header(&h1, Path::new("x")).unwrap().shape, vec![7]);
        let h0 = header_bytes(DType::Bool, &[]);
        assert_eq!(
            parse_header(&h0, Path::new("x")).unwrap().shape,
            Vec::<u64>::new()
        );
    }

    #[test]
    fn refuses_structured_and_complex() {
        let mk = |dict: &str| {
            let mut v = MAGIC.to_vec();
            v.extend_from_slice(&[1, 0]);
            v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            v.extend_from_slice(dict.as_bytes());
            v
        };
        let s = mk("{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (2,), }");
        assert!(matches!(
            parse_header(&s, Path::new("s.npy")),
            Err(Error::Input(InputError::UnsupportedDtype { .. }))
        ));
        let c = mk("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }");
        assert!(matches!(
            parse_header(&c, Path::new("c.npy")),
            Err(Error::Input(InputError::UnsupportedDtype { .. }))
        ));
        let o = mk("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }");
        assert!(parse_header(&o, Path::new("o.npy")).is_err());
        let f = mk("{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }");
        let h = parse_header(&f, Path::new("f.npy")).unwrap();
        assert!(h.big_endian && h.fortran_order);
        assert_eq!(h.shape, vec![2, 3]);
    }
}
