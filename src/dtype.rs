//! Element data types and their names in numpy, .npy headers and Zarr metadata.
//! Invariant: every [`DType`] has a fixed little-endian byte size; data moves as bytes.

use std::fmt;
use std::str::FromStr;

/// A type name or number that does not parse (the setting it was for, and why).
///
/// ```
/// let e = "complex64".parse::<chunkwise::DType>().unwrap_err();
/// assert_eq!(e.what, "dtype");
/// assert!(e.to_string().starts_with("invalid dtype: unknown data type \"complex64\""));
/// assert_eq!("twelve".parse::<chunkwise::Number>().unwrap_err().what, "number");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ParseError {
    /// The setting: `dtype` or `number`.
    pub what: &'static str,
    /// What is wrong, with the text given.
    pub reason: String,
}

fn parse_error(what: &'static str, reason: String) -> ParseError {
    ParseError { what, reason }
}

/// The element types chunkwise stores and computes on.
///
/// ```
/// use chunkwise::DType;
/// let t: DType = "uint16".parse()?;
/// assert_eq!(t, DType::U16);
/// assert_eq!((t.size(), t.zarr_name(), t.npy_descr()), (2, "uint16", "<u2"));
/// assert!(t.casts_safely_to(DType::F32) && !t.casts_safely_to(DType::I16));
/// assert!("u8".parse::<DType>().is_err()); // ambiguous: numpy's `u8` is 64-bit
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum DType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
}

impl DType {
    /// Every supported type, in a stable order.
    pub const ALL: [DType; 11] = [
        DType::Bool,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::F32,
        DType::F64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// Whether every value of this type is exactly a value of `to` (numpy's "safe" casting):
    /// widening integers, integers into floats wide enough, `float32` into `float64`, `bool`
    /// into anything.
    pub fn casts_safely_to(self, to: DType) -> bool {
        use DType::*;
        self == to
            || matches!(
                (self, to),
                (Bool, _)
                    | (U8, U16 | U32 | U64 | I16 | I32 | I64 | F32 | F64)
                    | (U16, U32 | U64 | I32 | I64 | F32 | F64)
                    | (U32, U64 | I64 | F64)
                    | (I8, I16 | I32 | I64 | F32 | F64)
                    | (I16, I32 | I64 | F32 | F64)
                    | (I32, I64 | F64)
                    | (F32, F64)
            )
    }

    /// The Zarr v3 data type name (also numpy's dtype name).
    pub fn zarr_name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F32 => "float32",
            DType::F64 => "float64",
        }
    }

    /// The .npy header `descr` for little-endian data (`<u2`, `|b1`, ...).
    pub fn npy_descr(self) -> &'static str {
        match self {
            DType::Bool => "|b1",
            DType::U8 => "|u1",
            DType::U16 => "<u2",
            DType::U32 => "<u4",
            DType::U64 => "<u8",
            DType::I8 => "|i1",
            DType::I16 => "<i2",
            DType::I32 => "<i4",
            DType::I64 => "<i8",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
        }
    }

    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }

    /// Parses a numpy array-protocol type string such as `<u2`, `>f4`, `|b1`, `u1`.
    ///
    /// Returns the type and whether the data is big-endian. `None` when the string is not one of
    /// the supported types (complex, object, structured, strings, ...).
    pub fn from_npy_descr(descr: &str) -> Option<(DType, bool)> {
        let (order, code) = match descr.chars().next()? {
            c @ ('<' | '>' | '|' | '=') => (c, &descr[1..]),
            _ => ('=', descr),
        };
        let dtype = match code {
            "b1" | "?" => DType::Bool,
            "u1" => DType::U8,
            "u2" => DType::U16,
            "u4" => DType::U32,
            "u8" => DType::U64,
            "i1" => DType::I8,
            "i2" => DType::I16,
            "i4" => DType::I32,
            "i8" => DType::I64,
            "f4" => DType::F32,
            "f8" => DType::F64,
            _ => return None,
        };
        // '=' is native order; chunkwise runs on little-endian machines only (see spec/FORMAT.md).
        let big_endian = order == '>' && dtype.size() > 1;
        Some((dtype, big_endian))
    }

    /// The names accepted by [`DType::from_str`], for error messages.
    pub fn accepted_names() -> String {
        DType::ALL
            .iter()
            .map(|d| d.zarr_name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.zarr_name())
    }
}

impl FromStr for DType {
    type Err = ParseError;

    /// Accepts numpy names (`uint16`, `float32`, `bool`), Rust names (`u16`, `f32`; not the
    /// ambiguous `u8`/`i8`) and little-endian numpy type strings (`<u2`, `u1`, `f4`).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let lower = s.trim().to_ascii_lowercase();
        if let Some(d) = DType::ALL.iter().copied().find(|d| d.zarr_name() == lower) {
            return Ok(d);
        }
        // Rust spellings, except the two that mean something else as numpy type codes.
        if lower == "u8" || lower == "i8" {
            return Err(parse_error(
                "dtype",
                format!(
                    "{s:?} is ambiguous (numpy reads it as a 64-bit type); write {}8 or {}64",
                    if lower == "u8" { "uint" } else { "int" },
                    if lower == "u8" { "uint" } else { "int" }
                ),
            ));
        }
        if let Some(d) = DType::ALL
            .iter()
            .copied()
            .find(|d| rust_name(*d) == Some(lower.as_str()))
        {
            return Ok(d);
        }
        match DType::from_npy_descr(&lower) {
            Some((d, false)) => Ok(d),
            Some((_, true)) => Err(parse_error(
                "dtype",
                format!("{s:?} is big-endian; raw input must be little-endian"),
            )),
            None => Err(parse_error(
                "dtype",
                format!(
                    "unknown data type {s:?}; expected one of {}",
                    DType::accepted_names()
                ),
            )),
        }
    }
}

fn rust_name(d: DType) -> Option<&'static str> {
    Some(match d {
        DType::U16 => "u16",
        DType::U32 => "u32",
        DType::U64 => "u64",
        DType::I16 => "i16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::Bool | DType::U8 | DType::I8 => return None,
    })
}

/// A Rust element type with a [`DType`]: the types `read_region` can return.
///
/// ```
/// use chunkwise::{DType, Element};
/// assert_eq!(u16::DTYPE, DType::U16);
/// assert_eq!(u16::from_le_bytes_slice(&[1, 0, 0, 1]), vec![1, 256]);
/// let mut bytes = Vec::new();
/// f32::extend_le_bytes(&[1.0], &mut bytes);
/// assert_eq!(bytes, 1.0f32.to_le_bytes());
/// ```
pub trait Element: Copy + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The matching data type.
    const DTYPE: DType;

    /// Decodes little-endian element bytes (`bytes.len()` a multiple of the element size; for
    /// `bool`, any non-zero byte is `true`).
    fn from_le_bytes_slice(bytes: &[u8]) -> Vec<Self>;

    /// Appends the little-endian bytes of `values` to `out`.
    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DTYPE: DType = DType::$d;

            fn from_le_bytes_slice(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact(std::mem::size_of::<$t>())
                    .map(|b| <$t>::from_le_bytes(b.try_into().expect("chunks_exact yields element-sized slices")))
                    .collect()
            }

            fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
                out.reserve(values.len() * std::mem::size_of::<$t>());
                for v in values {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    )*};
}
element!(u8 => U8, u16 => U16, u32 => U32, u64 => U64, i8 => I8, i16 => I16,
    i32 => I32, i64 => I64, f32 => F32, f64 => F64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;

    fn from_le_bytes_slice(bytes: &[u8]) -> Vec<Self> {
        bytes.iter().map(|&b| b != 0).collect()
    }

    fn extend_le_bytes(values: &[Self], out: &mut Vec<u8>) {
        out.extend(values.iter().map(|&v| u8::from(v)));
    }
}

/// The numeric element types (every [`DType`] but `bool`): plain bytes that kernels compute on.
/// `bool` arrays are handed to kernels as `u8` (0 or 1).
///
/// ```
/// use chunkwise::Scalar;
/// assert_eq!(u8::from_f64(2.5), 2); // rounded half to even
/// assert_eq!(u8::from_f64(300.0), 255); // saturated
/// assert_eq!(i16::from_f64(f64::NAN), 0);
/// assert_eq!(u16::INT_RANGE, Some((0, 65535)));
/// assert_eq!(f32::INT_RANGE, None);
/// ```
pub trait Scalar: Element + bytemuck::Pod + Default + PartialOrd + fmt::Display {
    /// The value as `f64` (exact for every type but 64-bit integers beyond 2^53).
    fn to_f64(self) -> f64;

    /// The value as `f32`, rounded to nearest.
    fn to_f32(self) -> f32;

    /// The value as `i64` (exact for integers up to 32 bits; `as` conversion otherwise).
    fn to_i64(self) -> i64;

    /// The nearest value of this type to `v` (spec/COMPUTE.md §4): floats are rounded to the
    /// type; integers are rounded half to even, saturated at the type's range, NaN gives 0.
    fn from_f64(v: f64) -> Self;

    /// The type's range as exact integers (`None` for floats).
    const INT_RANGE: Option<(i128, i128)>;

    /// `v` in this type, for `v` inside [`Scalar::INT_RANGE`] (an integer type's exact value).
    fn from_i128(v: i128) -> Self;

    /// The value as `i128`: exact for integers; floats truncated toward zero (saturating,
    /// NaN gives 0).
    fn to_i128(self) -> i128;
}

/// `v.round_ties_even()`, without the libm call it compiles to on baseline x86-64 (no
/// SSE4.1 `roundsd`): below 2^52, adding and taking away 2^52 rounds to an integer half to
/// even (the default rounding mode); from 2^52 on every float is an integer; NaN stays NaN.
#[inline]
fn round_half_even(v: f64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    if v.abs() < TWO_52 {
        ((v.abs() + TWO_52) - TWO_52).copysign(v)
    } else {
        v
    }
}

/// A number as the user wrote it: an integer literal is kept exactly (every `uint64` and
/// `int64` value), anything else is a float. Thresholds compare it with an array's values in
/// the array's own type (spec/REDUCE.md §4), as numpy does with a Python int.
///
/// ```
/// use chunkwise::{Number, Select};
/// let max: Number = "18446744073709551615".parse()?; // u64::MAX, exactly
/// assert_eq!(max, Number::Int(i128::from(u64::MAX)));
/// assert_eq!("2.5".parse::<Number>()?, Number::Float(2.5));
/// assert_eq!(Number::from(700), Number::Int(700));
/// let bright = Select::Above(Number::from(700));
/// # let _ = bright;
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    /// An integer, exactly.
    Int(i128),
    /// A float (also what a decimal point or exponent makes).
    Float(f64),
}

impl Number {
    /// The value as `f64` (rounded for integers beyond 2^53).
    pub fn to_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl From<f64> for Number {
    fn from(f: f64) -> Number {
        Number::Float(f)
    }
}

impl From<i64> for Number {
    fn from(i: i64) -> Number {
        Number::Int(i128::from(i))
    }
}

impl From<i32> for Number {
    fn from(i: i32) -> Number {
        Number::Int(i128::from(i))
    }
}

impl From<u64> for Number {
    fn from(i: u64) -> Number {
        Number::Int(i128::from(i))
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Int(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

impl FromStr for Number {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Number, ParseError> {
        let t = s.trim();
        if let Ok(i) = t.parse::<i128>() {
            return Ok(Number::Int(i));
        }
        t.parse::<f64>()
            .map(Number::Float)
            .map_err(|_| parse_error("number", format!("{s:?} is not a number")))
    }
}

/// Whether `v` is a number (not NaN): the only values not ordered with themselves.
#[inline]
pub(crate) fn not_nan<T: PartialOrd>(v: T) -> bool {
    v.partial_cmp(&v).is_some()
}

/// How a comparison with a [`Number`] looks in an element type `T`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Bound<T> {
    /// Every value passes (the number is beyond the type's range on the passing side).
    Always,
    /// No value passes (beyond the range on the other side, or NaN).
    Never,
    /// Compare with this value of the type.
    At(T),
}

/// `v > n` for values `v` of type `T`, as `v > t` in the type: exact for integer types (a
/// float `n` becomes `floor(n)`), `n` rounded to the type for floats (numpy's NEP 50).
pub(crate) fn above_bound<T: Scalar>(n: Number) -> Bound<T> {
    let Some((lo, hi)) = T::INT_RANGE else {
        let f = n.to_f64();
        return if f.is_nan() {
            Bound::Never
        } else {
            Bound::At(T::from_f64(f))
        };
    };
    let t = match n {
        Number::Int(i) => i,
        Number::Float(f) if f.is_nan() => return Bound::Never,
        // Saturating: beyond ±2^127 the answer is the same as at the type's ends.
        Number::Float(f) => f.floor() as i128,
    };
    if t >= hi {
        Bound::Never
    } else if t < lo {
        Bound::Always
    } else {
        Bound::At(T::from_i128(t))
    }
}

/// `v < n` for values `v` of type `T`, as `v < t` in the type (see [`above_bound`]).
pub(crate) fn below_bound<T: Scalar>(n: Number) -> Bound<T> {
    let Some((lo, hi)) = T::INT_RANGE else {
        return above_bound::<T>(n);
    };
    let t = match n {
        Number::Int(i) => i,
        Number::Float(f) if f.is_nan() => return Bound::Never,
        Number::Float(f) => f.ceil() as i128,
    };
    if t <= lo {
        Bound::Never
    } else if t > hi {
        Bound::Always
    } else {
        Bound::At(T::from_i128(t))
    }
}

macro_rules! scalar_int {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                // `as` saturates and maps NaN to 0; round half to even first.
                round_half_even(v) as $t
            }
            const INT_RANGE: Option<(i128, i128)> = Some((<$t>::MIN as i128, <$t>::MAX as i128));
            #[inline]
            fn from_i128(v: i128) -> Self {
                v.clamp(<$t>::MIN as i128, <$t>::MAX as i128) as $t
            }
            #[inline]
            fn to_i128(self) -> i128 {
                self as i128
            }
        }
    )*};
}
scalar_int!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Scalar for f32 {
    #[inline]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    const INT_RANGE: Option<(i128, i128)> = None;
    #[inline]
    fn from_i128(v: i128) -> Self {
        v as f32
    }
    #[inline]
    fn to_i128(self) -> i128 {
        self as i128
    }
}

impl Scalar for f64 {
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self as f32
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v
    }
    const INT_RANGE: Option<(i128, i128)> = None;
    #[inline]
    fn from_i128(v: i128) -> Self {
        v as f64
    }
    #[inline]
    fn to_i128(self) -> i128 {
        self as i128
    }
}

/// Runs `$body` with `$T` bound to the scalar type of `$dtype` (bool as u8).
#[macro_export]
#[doc(hidden)]
macro_rules! with_scalar {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::Bool | $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::U16 => {
                type $T = u16;
                $body
            }
            $crate::DType::U32 => {
                type $T = u32;
                $body
            }
            $crate::DType::U64 => {
                type $T = u64;
                $body
            }
            $crate::DType::I8 => {
                type $T = i8;
                $body
            }
            $crate::DType::I16 => {
                type $T = i16;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_half_to_even_is_the_standard_librarys() {
        // Ties, near-ties, signs, zeros, the 2^52 boundary, huge values, infinities, NaN.
        let mut vs = vec![
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.5,
            0.49999999999999994,
            4503599627370495.5,
            4503599627370496.0,
            4503599627370497.0,
            -4503599627370495.5,
            9.007199254740993e15,
            1e300,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            vs.push(f64::from_bits(x));
            vs.push((x % 200_001) as f64 / 4.0 - 25_000.0);
        }
        for v in vs {
            let (a, b) = (round_half_even(v), v.round_ties_even());
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{v:e}: {a} {b}"
            );
        }
        assert!(round_half_even(f64::NAN).is_nan());
    }

    #[test]
    fn parses_numpy_names_and_descrs() {
        assert_eq!("uint16".parse::<DType>().unwrap(), DType::U16);
        assert_eq!("float32".parse::<DType>().unwrap(), DType::F32);
        assert_eq!("<i4".parse::<DType>().unwrap(), DType::I32);
        assert_eq!("f64".parse::<DType>().unwrap(), DType::F64);
        assert!("complex64".parse::<DType>().is_err());
        assert!(">u2".parse::<DType>().is_err());
        assert!("u8".parse::<DType>().is_err());
        assert_eq!("u1".parse::<DType>().unwrap(), DType::U8);
        assert_eq!(DType::from_npy_descr(">u2"), Some((DType::U16, true)));
        assert_eq!(DType::from_npy_descr("|u1"), Some((DType::U8, false)));
        assert_eq!(DType::from_npy_descr("<c8"), None);
    }

    #[test]
    fn integer_outputs_round_half_even_and_saturate() {
        assert_eq!(u8::from_f64(2.5), 2);
        assert_eq!(u8::from_f64(3.5), 4);
        assert_eq!(u8::from_f64(-0.7), 0);
        assert_eq!(u8::from_f64(300.0), 255);
        assert_eq!(i16::from_f64(-40000.0), i16::MIN);
        assert_eq!(u16::from_f64(f64::NAN), 0);
        assert_eq!(i32::from_f64(-2.5), -2);
        assert_eq!(f32::from_f64(0.1), 0.1f32);
    }
}
