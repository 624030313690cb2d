//! Typing an expression by numpy's rules (NEP 50) and lowering it to a program of typed
//! instructions over registers (spec/COMPUTE.md §11.2).
//!
//! A literal is a "weak" Python scalar: it takes the type of the array it meets (`u8 + 1` is
//! uint8, `f32 * 0.5` is float32), an integer literal with a `bool` array is int64, a float
//! literal with an integer array is float64. Arithmetic between literals is Python's (exact
//! integers); a function of literals only is a strong numpy scalar (`sqrt(2)` is float64).

use crate::dtype::{DType, Number};

use super::parse::{Ast, BinOp, Located, UnOp, at};
use super::vm::divmod;

/// What an instruction computes. Every operand register holds the instruction's type `t`
/// (casts are explicit), except `Where`'s condition (bool) and `Cast`'s source.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    /// Input `i` converted to `t`.
    Load(usize),
    /// A constant of type `t`.
    Fill(Number),
    /// Register converted to `t` (numpy's `astype`; to bool: `!= 0`).
    Cast(usize),
    Bin(Arith, usize, usize),
    /// A comparison in `t`; the result is bool.
    Cmp(BinOp, usize, usize),
    Un(Func, usize),
    /// `where(c, x, y)`: c bool, x and y of type `t`.
    Where(usize, usize, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    And,
    Or,
    Xor,
    Min,
    Max,
    Arctan2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Neg,
    /// Logical not (bool) or bitwise not (integers).
    Not,
    Abs,
    Floor,
    Ceil,
    Sqrt,
    Exp,
    Log,
    Log10,
    Log1p,
    Expm1,
    Sin,
    Cos,
    Tan,
    Arcsin,
    Arccos,
    Arctan,
    Sinh,
    Cosh,
    Tanh,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inst {
    pub op: Op,
    /// The result's type.
    pub t: DType,
    /// Whether the result is the same for every element (computed once per block).
    pub constant: bool,
}

/// A typed program: instruction `i` writes register `i`; the last is the result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Program {
    pub insts: Vec<Inst>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Val {
    /// A Python scalar (a literal, or literal arithmetic), and the column it starts at.
    Weak(Number, usize),
    /// An input, not yet loaded (it is loaded in the type its use needs).
    Input(usize, DType),
    /// A register.
    Reg(usize),
}

struct Builder<'a> {
    names: &'a [String],
    dtypes: &'a [DType],
    insts: Vec<Inst>,
}

/// The smallest type both cast to safely (numpy's `promote_types`, without float16).
pub(crate) fn promote(a: DType, b: DType) -> DType {
    DType::ALL
        .into_iter()
        .find(|&t| a.casts_safely_to(t) && b.casts_safely_to(t))
        .unwrap_or(DType::F64)
}

fn is_int(t: DType) -> bool {
    !t.is_float() && t != DType::Bool
}

/// numpy's float result for a float function of type `t` (float16 becomes float32).
fn float_of(t: DType) -> DType {
    match t {
        DType::F32 | DType::F64 => t,
        DType::Bool | DType::U8 | DType::I8 | DType::U16 | DType::I16 => DType::F32,
        _ => DType::F64,
    }
}

fn int_range(t: DType) -> (i128, i128) {
    use DType::*;
    match t {
        Bool => (0, 1),
        U8 => (0, u8::MAX as i128),
        U16 => (0, u16::MAX as i128),
        U32 => (0, u32::MAX as i128),
        U64 => (0, u64::MAX as i128),
        I8 => (i8::MIN as i128, i8::MAX as i128),
        I16 => (i16::MIN as i128, i16::MAX as i128),
        I32 => (i32::MIN as i128, i32::MAX as i128),
        I64 | F32 | F64 => (i64::MIN as i128, i64::MAX as i128),
    }
}

/// Arithmetic between two Python scalars, as Python does it.
fn fold(op: BinOp, a: Number, b: Number, col: usize) -> Result<Val, Located> {
    use Number::{Float, Int};
    let overflow = || at(col, "integer literal arithmetic overflows");
    let zero = || at(col, "division by zero between literals");
    let v = match (a, b) {
        (Int(x), Int(y)) => match op {
            BinOp::Add => Int(x.checked_add(y).ok_or_else(overflow)?),
            BinOp::Sub => Int(x.checked_sub(y).ok_or_else(overflow)?),
            BinOp::Mul => Int(x.checked_mul(y).ok_or_else(overflow)?),
            BinOp::Div if y == 0 => return Err(zero()),
            BinOp::Div => Float(x as f64 / y as f64),
            BinOp::FloorDiv | BinOp::Mod if y == 0 => return Err(zero()),
            BinOp::FloorDiv => {
                let q = x.checked_div_euclid(y).ok_or_else(overflow)?;
                let r = x.checked_rem_euclid(y).ok_or_else(overflow)?;
                Int(q - i128::from(y < 0 && r != 0))
            }
            BinOp::Mod => {
                let r = x.checked_rem_euclid(y).ok_or_else(overflow)?;
                Int(if y < 0 && r != 0 { r + y } else { r })
            }
            BinOp::Pow if y >= 0 => Int(u32::try_from(y)
                .ok()
                .and_then(|e| x.checked_pow(e))
                .ok_or_else(overflow)?),
            BinOp::Pow => Float((x as f64).powf(y as f64)),
            BinOp::And => Int(x & y),
            BinOp::Or => Int(x | y),
            BinOp::Xor => Int(x ^ y),
            _ => unreachable!("comparisons are folded by the caller"),
        },
        _ => {
            let (x, y) = (a.to_f64(), b.to_f64());
            match op {
                BinOp::Add => Float(x + y),
                BinOp::Sub => Float(x - y),
                BinOp::Mul => Float(x * y),
                BinOp::Div | BinOp::FloorDiv | BinOp::Mod if y == 0.0 => return Err(zero()),
                BinOp::Div => Float(x / y),
                BinOp::FloorDiv => Float(divmod(x, y).0),
                BinOp::Mod => Float(divmod(x, y).1),
                BinOp::Pow if x < 0.0 && y.fract() != 0.0 => {
                    return Err(at(
                        col,
                        "a negative literal to a fractional power is complex",
                    ));
                }
                BinOp::Pow => Float(x.powf(y)),
                BinOp::And | BinOp::Or | BinOp::Xor => {
                    return Err(at(
                        col,
                        format!("'{}' takes integers or booleans, not floats", op.symbol()),
                    ));
                }
                _ => unreachable!("comparisons are folded by the caller"),
            }
        }
    };
    Ok(Val::Weak(v, col))
}

fn compare(op: BinOp, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        BinOp::Lt => o == Less,
        BinOp::Le => o != Greater,
        BinOp::Gt => o == Greater,
        BinOp::Ge => o != Less,
        BinOp::Eq => o == Equal,
        _ => o != Equal,
    }
}

impl Builder<'_> {
    fn push(&mut self, op: Op, t: DType) -> Val {
        let constant = match &op {
            Op::Load(_) => false,
            Op::Fill(_) => true,
            Op::Cast(a) | Op::Un(_, a) => self.insts[*a].constant,
            Op::Bin(_, a, b) | Op::Cmp(_, a, b) => {
                self.insts[*a].constant && self.insts[*b].constant
            }
            Op::Where(c, a, b) => {
                self.insts[*c].constant && self.insts[*a].constant && self.insts[*b].constant
            }
        };
        // One register per distinct instruction.
        let inst = Inst { op, t, constant };
        if let Some(i) = self.insts.iter().position(|x| *x == inst) {
            return Val::Reg(i);
        }
        self.insts.push(inst);
        Val::Reg(self.insts.len() - 1)
    }

    fn dtype(&self, v: Val) -> Option<DType> {
        match v {
            Val::Weak(..) => None,
            Val::Input(_, t) => Some(t),
            Val::Reg(r) => Some(self.insts[r].t),
        }
    }

    /// `v` as a register of type `t`.
    fn coerce(&mut self, v: Val, t: DType) -> Result<usize, Located> {
        let r = match v {
            Val::Weak(Number::Int(i), col) if is_int(t) || t == DType::Bool => {
                let (lo, hi) = int_range(t);
                if i < lo || i > hi {
                    return Err(at(
                        col,
                        format!(
                            "the integer {i} is out of bounds for {t} (numpy raises OverflowError)"
                        ),
                    ));
                }
                self.push(Op::Fill(Number::Int(i)), t)
            }
            Val::Weak(n, _) => self.push(Op::Fill(n), t),
            Val::Input(i, _) => self.push(Op::Load(i), t),
            Val::Reg(r) if self.insts[r].t == t => Val::Reg(r),
            Val::Reg(r) => self.push(Op::Cast(r), t),
        };
        match r {
            Val::Reg(r) => Ok(r),
            _ => unreachable!("push returns a register"),
        }
    }

    /// numpy's `result_type` of the operands, Python scalars weak.
    fn result_type(&self, vals: &[Val]) -> DType {
        let strong = vals.iter().filter_map(|&v| self.dtype(v)).reduce(promote);
        let weak_float = vals
            .iter()
            .any(|v| matches!(v, Val::Weak(Number::Float(_), _)));
        let weak_int = vals
            .iter()
            .any(|v| matches!(v, Val::Weak(Number::Int(_), _)));
        match strong {
            None if weak_float => DType::F64,
            None => DType::I64,
            Some(t) if weak_float && !t.is_float() => DType::F64,
            Some(DType::Bool) if weak_int => DType::I64,
            Some(t) => t,
        }
    }

    /// The type of a float function of `vals`: numpy's first float loop every operand casts
    /// to safely (uint16 and int8 give float32, not int32's float64); Python floats take it.
    fn float_type(&self, vals: &[Val]) -> DType {
        vals.iter()
            .filter_map(|&v| self.dtype(v))
            .map(float_of)
            .reduce(promote)
            .unwrap_or(DType::F64)
    }

    /// A function's operands: Python scalars become numpy scalars (constants of their
    /// `result_type`) when no array is among them.
    fn strong_if_alone(&mut self, vals: &mut [Val]) -> Result<(), Located> {
        if vals.iter().all(|v| matches!(v, Val::Weak(..))) {
            let t = self.result_type(vals);
            for v in vals.iter_mut() {
                *v = Val::Reg(self.coerce(*v, t)?);
            }
        }
        Ok(())
    }

    fn expr(&mut self, ast: &Ast) -> Result<Val, Located> {
        match ast {
            Ast::Num(n, c) => Ok(Val::Weak(*n, *c)),
            Ast::Bool(b, _) => Ok(self.push(Op::Fill(Number::Int(i128::from(*b))), DType::Bool)),
            Ast::Name(n, col) => match self.names.iter().position(|x| x == n) {
                Some(i) => Ok(Val::Input(i, self.dtypes[i])),
                None => Err(at(
                    *col,
                    format!(
                        "unknown name {n:?}; the inputs are {}",
                        if self.names.is_empty() {
                            "none".to_string()
                        } else {
                            self.names.join(" ")
                        }
                    ),
                )),
            },
            Ast::Unary(op, a, col) => {
                let v = self.expr(a)?;
                self.unary(*op, v, *col)
            }
            Ast::Binary(op, a, b, col) => {
                let (x, y) = (self.expr(a)?, self.expr(b)?);
                self.binary(*op, x, y, *col)
            }
            Ast::Call(f, args, col) => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.expr(a)?);
                }
                self.call(f, vals, *col)
            }
        }
    }

    fn unary(&mut self, op: UnOp, v: Val, col: usize) -> Result<Val, Located> {
        if let Val::Weak(n, _) = v {
            return match (op, n) {
                (UnOp::Pos, _) => Ok(v),
                (UnOp::Neg, Number::Int(i)) => match i.checked_neg() {
                    Some(n) => Ok(Val::Weak(Number::Int(n), col)),
                    None => Err(at(col, "integer literal arithmetic overflows")),
                },
                (UnOp::Neg, Number::Float(f)) => Ok(Val::Weak(Number::Float(-f), col)),
                (UnOp::Not, Number::Int(i)) => Ok(Val::Weak(Number::Int(!i), col)),
                (UnOp::Not, Number::Float(_)) => {
                    Err(at(col, "'~' takes integers or booleans, not floats"))
                }
            };
        }
        let t = self.dtype(v).expect("not weak");
        let f = match op {
            UnOp::Pos if t == DType::Bool => {
                return Err(at(
                    col,
                    "'+' of a boolean is not defined (numpy refuses it)",
                ));
            }
            UnOp::Pos => return Ok(v),
            UnOp::Neg if t == DType::Bool => {
                return Err(at(
                    col,
                    "'-' of a boolean is not defined (numpy refuses it): use '~'",
                ));
            }
            UnOp::Neg => Func::Neg,
            UnOp::Not if t.is_float() => {
                return Err(at(col, format!("'~' takes integers or booleans, not {t}")));
            }
            UnOp::Not => Func::Not,
        };
        let r = self.coerce(v, t)?;
        Ok(self.push(Op::Un(f, r), t))
    }

    fn binary(&mut self, op: BinOp, x: Val, y: Val, col: usize) -> Result<Val, Located> {
        if op.is_comparison() {
            return self.comparison(op, x, y);
        }
        if let (Val::Weak(a, _), Val::Weak(b, _)) = (x, y) {
            return fold(op, a, b, col);
        }
        if op == BinOp::Pow && matches!(y, Val::Weak(Number::Int(2), _)) {
            // numpy computes `x ** 2` as `square(x)`: the same values (x * x), but a bool
            // array squares to int8.
            let t = match self.dtype(x) {
                Some(DType::Bool) => DType::I8,
                _ => self.result_type(&[x, y]),
            };
            let a = self.coerce(x, t)?;
            return Ok(self.push(Op::Bin(Arith::Mul, a, a), t));
        }
        let r = self.result_type(&[x, y]);
        let (arith, t) = match (op, r) {
            (BinOp::Add, DType::Bool) => (Arith::Or, r),
            (BinOp::Mul, DType::Bool) => (Arith::And, r),
            (BinOp::Sub, DType::Bool) => {
                return Err(at(
                    col,
                    "'-' between booleans is not defined (numpy refuses it): use '^'",
                ));
            }
            (BinOp::Add, _) => (Arith::Add, r),
            (BinOp::Sub, _) => (Arith::Sub, r),
            (BinOp::Mul, _) => (Arith::Mul, r),
            (BinOp::Div, _) => (Arith::Div, if r.is_float() { r } else { DType::F64 }),
            (BinOp::FloorDiv, _) => (
                Arith::FloorDiv,
                if r == DType::Bool { DType::I8 } else { r },
            ),
            (BinOp::Mod, _) => (Arith::Mod, if r == DType::Bool { DType::I8 } else { r }),
            (BinOp::Pow, _) => (Arith::Pow, if r == DType::Bool { DType::I8 } else { r }),
            (BinOp::And | BinOp::Or | BinOp::Xor, t) if t.is_float() => {
                return Err(at(
                    col,
                    format!("'{}' takes integers or booleans, not {t}", op.symbol()),
                ));
            }
            (BinOp::And, _) => (Arith::And, r),
            (BinOp::Or, _) => (Arith::Or, r),
            (BinOp::Xor, _) => (Arith::Xor, r),
            _ => unreachable!("comparisons handled above"),
        };
        let a = self.coerce(x, t)?;
        let b = self.coerce(y, t)?;
        Ok(self.push(Op::Bin(arith, a, b), t))
    }

    fn comparison(&mut self, op: BinOp, x: Val, y: Val) -> Result<Val, Located> {
        let bool_const =
            |s: &mut Self, v: bool| s.push(Op::Fill(Number::Int(i128::from(v))), DType::Bool);
        if let (Val::Weak(a, _), Val::Weak(b, _)) = (x, y) {
            let o = match (a, b) {
                (Number::Int(p), Number::Int(q)) => Some(p.cmp(&q)),
                _ => a.to_f64().partial_cmp(&b.to_f64()),
            };
            let v = o.map(|o| compare(op, o)).unwrap_or(op == BinOp::Ne);
            return Ok(bool_const(self, v));
        }
        let t = self.result_type(&[x, y]);
        // An integer literal beyond an integer type's range compares as the exact values would
        // (numpy 2 does too): the answer is the same for every element.
        if is_int(t) {
            let (lo, hi) = int_range(t);
            let side = |v: Val| match v {
                Val::Weak(Number::Int(i), _) if i > hi => Some(std::cmp::Ordering::Greater),
                Val::Weak(Number::Int(i), _) if i < lo => Some(std::cmp::Ordering::Less),
                _ => None,
            };
            if let Some(o) = side(y) {
                return Ok(bool_const(self, compare(op, o.reverse())));
            }
            if let Some(o) = side(x) {
                return Ok(bool_const(self, compare(op, o)));
            }
        }
        let a = self.coerce(x, t)?;
        let b = self.coerce(y, t)?;
        Ok(self.push(Op::Cmp(op, a, b), DType::Bool))
    }

    fn call(&mut self, f: &str, mut vals: Vec<Val>, col: usize) -> Result<Val, Located> {
        if f == "where" {
            let c = match vals[0] {
                Val::Weak(n, _) => self.push(
                    Op::Fill(Number::Int(i128::from(n.to_f64() != 0.0))),
                    DType::Bool,
                ),
                v => v,
            };
            let c = self.coerce(c, DType::Bool)?;
            let mut xy = [vals[1], vals[2]];
            self.strong_if_alone(&mut xy)?;
            let t = self.result_type(&xy);
            let a = self.coerce(xy[0], t)?;
            let b = self.coerce(xy[1], t)?;
            return Ok(self.push(Op::Where(c, a, b), t));
        }
        self.strong_if_alone(&mut vals)?;
        let r = self.result_type(&vals);
        let unary = |s: &mut Self, func: Func, t: DType| -> Result<Val, Located> {
            let a = s.coerce(vals[0], t)?;
            Ok(s.push(Op::Un(func, a), t))
        };
        let func = match f {
            "abs" if r == DType::Bool => return Ok(Val::Reg(self.coerce(vals[0], r)?)),
            "abs" => return unary(self, Func::Abs, r),
            "floor" | "ceil" if !r.is_float() => {
                return Ok(Val::Reg(self.coerce(vals[0], r)?));
            }
            "floor" => return unary(self, Func::Floor, r),
            "ceil" => return unary(self, Func::Ceil, r),
            "minimum" | "maximum" | "arctan2" => {
                let (arith, t) = match f {
                    "minimum" => (Arith::Min, r),
                    "maximum" => (Arith::Max, r),
                    _ => (Arith::Arctan2, self.float_type(&vals)),
                };
                let a = self.coerce(vals[0], t)?;
                let b = self.coerce(vals[1], t)?;
                return Ok(self.push(Op::Bin(arith, a, b), t));
            }
            "clip" => {
                let x = self.coerce(vals[0], r)?;
                let lo = self.coerce(vals[1], r)?;
                let hi = self.coerce(vals[2], r)?;
                let m = self.push(Op::Bin(Arith::Max, x, lo), r);
                let Val::Reg(m) = m else { unreachable!() };
                return Ok(self.push(Op::Bin(Arith::Min, m, hi), r));
            }
            "sqrt" => Func::Sqrt,
            "exp" => Func::Exp,
            "log" => Func::Log,
            "log10" => Func::Log10,
            "log1p" => Func::Log1p,
            "expm1" => Func::Expm1,
            "sin" => Func::Sin,
            "cos" => Func::Cos,
            "tan" => Func::Tan,
            "arcsin" => Func::Arcsin,
            "arccos" => Func::Arccos,
            "arctan" => Func::Arctan,
            "sinh" => Func::Sinh,
            "cosh" => Func::Cosh,
            "tanh" => Func::Tanh,
            other => return Err(at(col, format!("unknown function {other:?}"))),
        };
        unary(self, func, float_of(r))
    }
}

/// Types `ast` for inputs `names` of types `dtypes` and lowers it; the result is converted to
/// `dtype` when given.
pub(crate) fn compile(
    ast: &Ast,
    names: &[String],
    dtypes: &[DType],
    dtype: Option<DType>,
) -> Result<Program, Located> {
    let mut b = Builder {
        names,
        dtypes,
        insts: Vec::new(),
    };
    let mut v = b.expr(ast)?;
    if let Val::Weak(n, _) = v {
        // A literal alone: numpy's array of it.
        let t = if matches!(n, Number::Float(_)) {
            DType::F64
        } else {
            DType::I64
        };
        v = Val::Reg(b.coerce(v, t)?);
    }
    let t = dtype.unwrap_or_else(|| b.dtype(v).expect("not weak"));
    let last = b.coerce(v, t)?;
    // The result must be the last instruction (the program's output register).
    if last + 1 != b.insts.len() {
        let inst = Inst {
            op: Op::Cast(last),
            t,
            constant: b.insts[last].constant,
        };
        b.insts.push(inst);
    }
    Ok(Program { insts: b.insts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::expr::parse::parse;

    fn ty(src: &str, dtypes: &[DType]) -> Result<DType, Located> {
        let names: Vec<String> = ["a", "b", "c"]
            .iter()
            .take(dtypes.len())
            .map(|s| s.to_string())
            .collect();
        let p = compile(&parse(src).unwrap(), &names, dtypes, None)?;
        Ok(p.insts.last().unwrap().t)
    }

    #[test]
    fn numpy_promotion() {
        use DType::*;
        assert_eq!(promote(U8, I8), I16);
        assert_eq!(promote(U64, I64), F64);
        assert_eq!(promote(I16, F32), F32);
        assert_eq!(promote(I32, F32), F64);
        assert_eq!(promote(Bool, U16), U16);
        assert_eq!(ty("a + 1", &[U8]), Ok(U8));
        assert_eq!(ty("a + 1", &[Bool]), Ok(I64));
        assert_eq!(ty("a * 0.5", &[U16]), Ok(F64));
        assert_eq!(ty("a * 0.5", &[F32]), Ok(F32));
        assert_eq!(ty("a / a", &[I8]), Ok(F64));
        assert_eq!(ty("sqrt(a)", &[I16]), Ok(F32));
        assert_eq!(ty("sqrt(a)", &[U8]), Ok(F32));
        assert_eq!(ty("a * sqrt(2)", &[F32]), Ok(F64));
        assert_eq!(ty("where(a > 1, 1, 0)", &[F32]), Ok(I64));
        assert_eq!(ty("where(a > 1, a, 2.5)", &[F32]), Ok(F32));
        assert_eq!(ty("a ** a", &[Bool]), Ok(I8));
        assert_eq!(ty("a + b", &[U8, I8]), Ok(I16));
        assert_eq!(ty("a > 300", &[U8]), Ok(Bool));
        assert_eq!(ty("floor(a)", &[I16]), Ok(I16));
        assert_eq!(ty("clip(a, 0, 300.5)", &[U8]), Ok(F64));
        assert!(
            ty("a + 300", &[U8])
                .unwrap_err()
                .msg
                .contains("out of bounds")
        );
        assert_eq!(
            ty("a + 300", &[U8]).unwrap_err().col,
            5,
            "the literal's column"
        );
        assert_eq!(ty("a * (2 ** -1 + a ** -1)", &[U8]).unwrap_err().col, 21);
        // The longest expression types on a test thread's small stack (a debug build).
        assert_eq!(ty(&format!("a{}", "+a".repeat(1000)), &[U8]), Ok(U8));
        assert!(ty("a - a", &[Bool]).is_err());
        assert!(ty("a & 1", &[F32]).is_err());
        assert!(
            ty("d + 1", &[U8])
                .unwrap_err()
                .msg
                .contains("the inputs are a")
        );
    }
}
