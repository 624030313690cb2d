//! Running a typed program over a block, tile by tile (spec/COMPUTE.md §11.3): every
//! instruction is one tight loop over `TILE` elements of registers that stay in cache, so an
//! expression is one pass over its inputs with no array-sized temporaries (numexpr's design).

use std::borrow::Cow;

use num_traits::{AsPrimitive, Float};

use crate::dtype::{DType, Number};
use crate::with_scalar;

use super::compile::{Arith, Func, Op, Program};
use super::parse::BinOp;

/// Elements per tile: 16 KiB per 8-byte register.
pub(crate) const TILE: usize = 2048;

/// `bytes` as `T` (borrowed when aligned, else copied).
pub(crate) fn typed<T: bytemuck::Pod>(bytes: &[u8]) -> Cow<'_, [T]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}

/// Runs `$body` with `$T` the integer type of `$t` (bool as u8); floats are refused by typing.
macro_rules! with_int {
    ($t:expr, $T:ident => $body:expr) => {
        match $t {
            DType::Bool | DType::U8 => {
                type $T = u8;
                $body
            }
            DType::U16 => {
                type $T = u16;
                $body
            }
            DType::U32 => {
                type $T = u32;
                $body
            }
            DType::U64 => {
                type $T = u64;
                $body
            }
            DType::I8 => {
                type $T = i8;
                $body
            }
            DType::I16 => {
                type $T = i16;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::F32 | DType::F64 => unreachable!("typing refuses bitwise operations on floats"),
        }
    };
}

fn reg<T: bytemuck::Pod>(r: &[u64], n: usize) -> &[T] {
    &bytemuck::cast_slice(r)[..n]
}

fn reg_mut<T: bytemuck::Pod>(r: &mut [u64], n: usize) -> &mut [T] {
    &mut bytemuck::cast_slice_mut(r)[..n]
}

/// A runtime error of one element (the only one: an integer to a negative integer power).
#[derive(Debug)]
pub(crate) struct NegativePower;

/// One thread's registers for a program.
pub(crate) struct Machine<'p> {
    prog: &'p Program,
    regs: Vec<Vec<u64>>,
}

impl<'p> Machine<'p> {
    /// Registers for `prog`, its constant instructions computed.
    pub fn new(prog: &'p Program) -> Result<Machine<'p>, NegativePower> {
        let mut m = Machine {
            prog,
            regs: vec![vec![0u64; TILE]; prog.insts.len()],
        };
        for i in 0..prog.insts.len() {
            if prog.insts[i].constant {
                m.exec(i, &[], TILE)?;
            }
        }
        Ok(m)
    }

    /// Computes elements `0..n` (n <= TILE) from the inputs' tiles (`(type, bytes)`, each of
    /// `n` elements); the result's bytes.
    pub fn run(&mut self, inputs: &[(DType, &[u8])], n: usize) -> Result<&[u8], NegativePower> {
        for i in 0..self.prog.insts.len() {
            if !self.prog.insts[i].constant {
                self.exec(i, inputs, n)?;
            }
        }
        let last = self.prog.insts.len() - 1;
        let size = self.prog.insts[last].t.size();
        Ok(&bytemuck::cast_slice(&self.regs[last])[..n * size])
    }

    fn exec(&mut self, i: usize, inputs: &[(DType, &[u8])], n: usize) -> Result<(), NegativePower> {
        let inst = &self.prog.insts[i];
        let t = inst.t;
        let mut dst = std::mem::take(&mut self.regs[i]);
        let regs = &self.regs;
        let ty = |r: usize| self.prog.insts[r].t;
        let out = match &inst.op {
            Op::Load(k) => {
                let (from, bytes) = inputs[*k];
                cast(from, bytes, t, &mut dst, n);
                Ok(())
            }
            Op::Fill(v) => {
                fill(*v, t, &mut dst, n);
                Ok(())
            }
            Op::Cast(a) => {
                cast(ty(*a), bytemuck::cast_slice(&regs[*a]), t, &mut dst, n);
                Ok(())
            }
            Op::Bin(op, a, b) => binary(*op, t, &regs[*a], &regs[*b], &mut dst, n),
            Op::Cmp(op, a, b) => {
                compare(*op, ty(*a), &regs[*a], &regs[*b], &mut dst, n);
                Ok(())
            }
            Op::Un(f, a) => {
                unary(*f, t, &regs[*a], &mut dst, n);
                Ok(())
            }
            Op::Where(c, a, b) => {
                with_scalar!(t, T => {
                    let (c, x, y) = (reg::<u8>(&regs[*c], n), reg::<T>(&regs[*a], n), reg::<T>(&regs[*b], n));
                    for (((o, &c), &x), &y) in reg_mut::<T>(&mut dst, n).iter_mut().zip(c).zip(x).zip(y) {
                        *o = if c != 0 { x } else { y };
                    }
                });
                Ok(())
            }
        };
        self.regs[i] = dst;
        out
    }
}

/// numpy's `astype` (C casts: integers wrap, floats to integers saturate here, NaN gives 0;
/// to bool: `!= 0`).
fn cast(from: DType, src: &[u8], to: DType, dst: &mut [u64], n: usize) {
    with_scalar!(from, A => with_scalar!(to, B => {
        let s = typed::<A>(&src[..n * std::mem::size_of::<A>()]);
        let d = reg_mut::<B>(dst, n);
        if to == DType::Bool && from != DType::Bool {
            let zero = A::default();
            for (o, &v) in d.iter_mut().zip(s.iter()) {
                *o = u8::from(v != zero).as_();
            }
        } else {
            for (o, &v) in d.iter_mut().zip(s.iter()) {
                *o = v.as_();
            }
        }
    }))
}

fn fill(v: Number, t: DType, dst: &mut [u64], n: usize) {
    with_scalar!(t, T => {
        let x: T = match v {
            Number::Int(i) if t.is_float() => (i as f64).as_(),
            Number::Int(i) => (i as i64).as_(),
            Number::Float(f) => f.as_(),
        };
        reg_mut::<T>(dst, n).fill(x);
    })
}

fn compare(op: BinOp, t: DType, a: &[u64], b: &[u64], dst: &mut [u64], n: usize) {
    with_scalar!(t, T => {
        let (a, b) = (reg::<T>(a, n), reg::<T>(b, n));
        let d = reg_mut::<u8>(dst, n);
        macro_rules! each {
            ($f:expr) => {
                for ((o, &x), &y) in d.iter_mut().zip(a).zip(b) {
                    *o = u8::from($f(x, y));
                }
            };
        }
        match op {
            BinOp::Lt => each!(|x, y| x < y),
            BinOp::Le => each!(|x, y| x <= y),
            BinOp::Gt => each!(|x, y| x > y),
            BinOp::Ge => each!(|x, y| x >= y),
            BinOp::Eq => each!(|x, y| x == y),
            _ => each!(|x, y| x != y),
        }
    })
}

/// Arithmetic with numpy's semantics in one type.
trait Num: Copy + PartialOrd + bytemuck::Pod + 'static {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Floor division (integers: 0 for a zero divisor, as numpy gives).
    fn floordiv(self, o: Self) -> Self;
    /// Python's modulo (the divisor's sign; integers: 0 for a zero divisor).
    fn rem(self, o: Self) -> Self;
    /// `None` for an integer to a negative power.
    fn pow(self, o: Self) -> Option<Self>;
    /// numpy's `minimum`/`maximum`: NaN wins.
    fn min(self, o: Self) -> Self;
    fn max(self, o: Self) -> Self;
    fn neg(self) -> Self;
    fn abs(self) -> Self;
}

macro_rules! num_int {
    ($($t:ty: $signed:expr),*) => {$(
        impl Num for $t {
            #[inline] fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline] fn sub(self, o: Self) -> Self { self.wrapping_sub(o) }
            #[inline] fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline] fn floordiv(self, o: Self) -> Self {
                if o == 0 { return 0; }
                let q = self.wrapping_div(o);
                #[allow(unused_comparisons)]
                if $signed && self.wrapping_rem(o) != 0 && ((self < 0) != (o < 0)) { q.wrapping_sub(1) } else { q }
            }
            #[inline] fn rem(self, o: Self) -> Self {
                if o == 0 { return 0; }
                let r = self.wrapping_rem(o);
                #[allow(unused_comparisons)]
                if $signed && r != 0 && ((r < 0) != (o < 0)) { r.wrapping_add(o) } else { r }
            }
            #[inline] fn pow(self, o: Self) -> Option<Self> {
                #[allow(unused_comparisons)]
                if o < 0 { return None; }
                let (mut base, mut e, mut r) = (self, o, 1 as $t);
                while e > 0 {
                    if e & 1 == 1 { r = r.wrapping_mul(base); }
                    base = base.wrapping_mul(base);
                    e >>= 1;
                }
                Some(r)
            }
            #[inline] fn min(self, o: Self) -> Self { Ord::min(self, o) }
            #[inline] fn max(self, o: Self) -> Self { Ord::max(self, o) }
            #[inline] fn neg(self) -> Self { self.wrapping_neg() }
            #[inline] fn abs(self) -> Self {
                #[allow(unused_comparisons)]
                if self < 0 { self.wrapping_neg() } else { self }
            }
        }
    )*};
}
num_int!(u8: false, u16: false, u32: false, u64: false, i8: true, i16: true, i32: true, i64: true);

/// numpy's `npy_divmod`: floor division and Python's modulo of floats.
pub(crate) fn divmod<F: Float>(a: F, b: F) -> (F, F) {
    let zero = F::zero();
    let half = F::one() / (F::one() + F::one());
    let m = a % b;
    if b == zero {
        return (a / b, m);
    }
    let mut div = (a - m) / b;
    let mut m = m;
    if m != zero {
        if (b < zero) != (m < zero) {
            m = m + b;
            div = div - F::one();
        }
    } else {
        m = zero.copysign(b);
    }
    let fd = if div != zero {
        let f = div.floor();
        if div - f > half { f + F::one() } else { f }
    } else {
        zero.copysign(a / b)
    };
    (fd, m)
}

macro_rules! num_float {
    ($($t:ty),*) => {$(
        impl Num for $t {
            #[inline] fn add(self, o: Self) -> Self { self + o }
            #[inline] fn sub(self, o: Self) -> Self { self - o }
            #[inline] fn mul(self, o: Self) -> Self { self * o }
            #[inline] fn floordiv(self, o: Self) -> Self {
                if o == 0.0 { self / o } else { divmod(self, o).0 }
            }
            #[inline] fn rem(self, o: Self) -> Self {
                if o == 0.0 { self % o } else { divmod(self, o).1 }
            }
            #[inline] fn pow(self, o: Self) -> Option<Self> { Some(self.powf(o)) }
            #[inline] fn min(self, o: Self) -> Self {
                if self.is_nan() || self <= o { self } else { o }
            }
            #[inline] fn max(self, o: Self) -> Self {
                if self.is_nan() || self >= o { self } else { o }
            }
            #[inline] fn neg(self) -> Self { -self }
            #[inline] fn abs(self) -> Self { <$t>::abs(self) }
        }
    )*};
}
num_float!(f32, f64);

fn binary(
    op: Arith,
    t: DType,
    a: &[u64],
    b: &[u64],
    dst: &mut [u64],
    n: usize,
) -> Result<(), NegativePower> {
    macro_rules! each {
        ($T:ty, $f:expr) => {{
            let (a, b) = (reg::<$T>(a, n), reg::<$T>(b, n));
            for ((o, &x), &y) in reg_mut::<$T>(dst, n).iter_mut().zip(a).zip(b) {
                *o = $f(x, y);
            }
        }};
    }
    match op {
        Arith::And | Arith::Or | Arith::Xor => {
            with_int!(t, T => int_bits::<T>(op, a, b, dst, n));
            return Ok(());
        }
        Arith::Div | Arith::Arctan2 => {
            match t {
                DType::F32 => float_bin::<f32>(op, a, b, dst, n),
                DType::F64 => float_bin::<f64>(op, a, b, dst, n),
                _ => unreachable!("typing makes true division and arctan2 float"),
            }
            return Ok(());
        }
        _ => {}
    }
    with_scalar!(t, T => {
        match op {
            Arith::Add => each!(T, |x: T, y: T| Num::add(x, y)),
            Arith::Sub => each!(T, |x: T, y: T| Num::sub(x, y)),
            Arith::Mul => each!(T, |x: T, y: T| Num::mul(x, y)),
            Arith::FloorDiv => each!(T, |x: T, y: T| Num::floordiv(x, y)),
            Arith::Mod => each!(T, |x: T, y: T| Num::rem(x, y)),
            Arith::Min => each!(T, |x: T, y: T| Num::min(x, y)),
            Arith::Max => each!(T, |x: T, y: T| Num::max(x, y)),
            Arith::Pow => {
                let mut bad = false;
                each!(T, |x: T, y: T| match Num::pow(x, y) {
                    Some(v) => v,
                    None => {
                        bad = true;
                        x
                    }
                });
                if bad {
                    return Err(NegativePower);
                }
            }
            _ => unreachable!("handled above"),
        }
    });
    Ok(())
}

fn int_bits<T>(op: Arith, a: &[u64], b: &[u64], dst: &mut [u64], n: usize)
where
    T: bytemuck::Pod
        + std::ops::BitAnd<Output = T>
        + std::ops::BitOr<Output = T>
        + std::ops::BitXor<Output = T>,
{
    let (a, b) = (reg::<T>(a, n), reg::<T>(b, n));
    let d = reg_mut::<T>(dst, n);
    let zip = d.iter_mut().zip(a).zip(b);
    match op {
        Arith::And => zip.for_each(|((o, &x), &y)| *o = x & y),
        Arith::Or => zip.for_each(|((o, &x), &y)| *o = x | y),
        _ => zip.for_each(|((o, &x), &y)| *o = x ^ y),
    }
}

fn float_bin<F: Float + bytemuck::Pod>(op: Arith, a: &[u64], b: &[u64], dst: &mut [u64], n: usize) {
    let (a, b) = (reg::<F>(a, n), reg::<F>(b, n));
    let zip = reg_mut::<F>(dst, n).iter_mut().zip(a).zip(b);
    match op {
        Arith::Div => zip.for_each(|((o, &x), &y)| *o = x / y),
        _ => zip.for_each(|((o, &x), &y)| *o = x.atan2(y)),
    }
}

fn unary(f: Func, t: DType, a: &[u64], dst: &mut [u64], n: usize) {
    match f {
        Func::Neg | Func::Abs => with_scalar!(t, T => {
            let zip = reg_mut::<T>(dst, n).iter_mut().zip(reg::<T>(a, n));
            if f == Func::Neg {
                zip.for_each(|(o, &x)| *o = Num::neg(x));
            } else {
                zip.for_each(|(o, &x)| *o = Num::abs(x));
            }
        }),
        Func::Not if t == DType::Bool => {
            for (o, &x) in reg_mut::<u8>(dst, n).iter_mut().zip(reg::<u8>(a, n)) {
                *o = x ^ 1;
            }
        }
        Func::Not => with_int!(t, T => int_not::<T>(a, dst, n)),
        _ => match t {
            DType::F32 => float_fn::<f32>(f, a, dst, n),
            DType::F64 => float_fn::<f64>(f, a, dst, n),
            _ => unreachable!("typing makes float functions float"),
        },
    }
}

fn int_not<T: bytemuck::Pod + std::ops::Not<Output = T>>(a: &[u64], dst: &mut [u64], n: usize) {
    for (o, &x) in reg_mut::<T>(dst, n).iter_mut().zip(reg::<T>(a, n)) {
        *o = !x;
    }
}

fn float_fn<F: Float + bytemuck::Pod>(f: Func, a: &[u64], dst: &mut [u64], n: usize) {
    let g: fn(F) -> F = match f {
        Func::Floor => F::floor,
        Func::Ceil => F::ceil,
        Func::Sqrt => F::sqrt,
        Func::Exp => F::exp,
        Func::Log => F::ln,
        Func::Log10 => F::log10,
        Func::Log1p => F::ln_1p,
        Func::Expm1 => F::exp_m1,
        Func::Sin => F::sin,
        Func::Cos => F::cos,
        Func::Tan => F::tan,
        Func::Arcsin => F::asin,
        Func::Arccos => F::acos,
        Func::Arctan => F::atan,
        Func::Sinh => F::sinh,
        Func::Cosh => F::cosh,
        Func::Tanh => F::tanh,
        Func::Neg | Func::Abs | Func::Not => unreachable!("handled by the caller"),
    };
    let zip = reg_mut::<F>(dst, n).iter_mut().zip(reg::<F>(a, n));
    if f == Func::Sqrt {
        // Kept apart so that it vectorizes (a call through `g` does not).
        zip.for_each(|(o, &x)| *o = x.sqrt());
    } else {
        zip.for_each(|(o, &x)| *o = g(x));
    }
}
