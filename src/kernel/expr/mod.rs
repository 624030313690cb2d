//! `eval`: an elementwise expression over named inputs of one shape, fused per chunk
//! (spec/COMPUTE.md §11). The language is numexpr's; types follow numpy's (NEP 50).

mod compile;
mod parse;
mod vm;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernel::{Block, Kernel, OutBlock};
use crate::with_scalar;

use compile::Program;
use parse::{Ast, FUNCTIONS, Located};
use vm::{Machine, TILE, typed};

/// An expression over named inputs, as a [`Kernel`]: input `i` of the job is the `i`-th name.
///
/// ```
/// use chunkwise::DType;
/// use chunkwise::kernel::{Eval, Kernel};
/// let e = Eval::new("sqrt(a**2 + b**2)", &["a", "b"], None)?;
/// assert_eq!(e.output_dtype(&[DType::F32, DType::F32])?, DType::F32);
/// // numpy's promotion: uint16 with a Python float is float64; a comparison is bool.
/// let t = Eval::new("a*0.5 + b*0.5 > 700", &["a", "b"], None)?;
/// assert_eq!(t.output_dtype(&[DType::U16, DType::U16])?, DType::Bool);
/// let err = Eval::new("a + * b", &["a", "b"], None).unwrap_err();
/// assert!(err.to_string().contains("column 5"));
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Eval {
    source: String,
    ast: Ast,
    names: Vec<String>,
    dtype: Option<DType>,
    /// The program for the first input types asked about (the job's): typed once, on the
    /// caller's thread, not per chunk on the workers'.
    program: std::sync::OnceLock<(Vec<DType>, Program)>,
}

impl Eval {
    /// Parses `expr` over inputs called `names` (in the job's input order); `dtype` converts
    /// the result (numpy's `astype`) instead of numpy's result type.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`expression`) for a syntax error (naming the column), a name
    /// the expression uses that is not an input, an input name that is not an identifier, is
    /// given twice or is a function's name.
    pub fn new(expr: &str, names: &[impl AsRef<str>], dtype: Option<DType>) -> Result<Eval> {
        let names: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
        for (i, n) in names.iter().enumerate() {
            let ident = n
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_alphanumeric() || c == '_');
            if !ident {
                return Err(Error::option(
                    "expression",
                    format!(
                        "input name {n:?} is not a name (letters, digits and _, not starting with a digit)"
                    ),
                ));
            }
            if FUNCTIONS.iter().any(|(f, _)| f == n) || n == "True" || n == "False" {
                return Err(Error::option(
                    "expression",
                    format!(
                        "input name {n:?} is taken by the language; call the input something else"
                    ),
                ));
            }
            if names[..i].contains(n) {
                return Err(Error::option(
                    "expression",
                    format!("input name {n:?} is given twice"),
                ));
            }
        }
        let ast = parse::parse(expr).map_err(|e| located(expr, e))?;
        let mut used = Vec::new();
        ast.names(&mut used);
        if let Some(u) = used.iter().find(|u| !names.contains(u)) {
            let col = find_name(&ast, u).unwrap_or(1);
            return Err(located(
                expr,
                parse::at(
                    col,
                    format!(
                        "unknown name {u:?}; the inputs are {}",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(" ")
                        }
                    ),
                ),
            ));
        }
        Ok(Eval {
            source: expr.to_string(),
            ast,
            names,
            dtype,
            program: std::sync::OnceLock::new(),
        })
    }

    /// The input names, in input order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The expression fully parenthesised (its identity in a job's fingerprint).
    pub fn canonical(&self) -> String {
        self.ast.canonical()
    }

    fn program(&self, inputs: &[DType]) -> Result<std::borrow::Cow<'_, Program>> {
        if let Some((types, p)) = self.program.get()
            && types == inputs
        {
            return Ok(std::borrow::Cow::Borrowed(p));
        }
        let p = self.compile(inputs)?;
        if self.program.set((inputs.to_vec(), p.clone())).is_ok()
            && let Some((_, p)) = self.program.get()
        {
            return Ok(std::borrow::Cow::Borrowed(p));
        }
        Ok(std::borrow::Cow::Owned(p))
    }

    fn compile(&self, inputs: &[DType]) -> Result<Program> {
        if inputs.len() != self.names.len() {
            return Err(Error::option(
                "expression",
                format!(
                    "{} input(s) named, {} given",
                    self.names.len(),
                    inputs.len()
                ),
            ));
        }
        compile::compile(&self.ast, &self.names, inputs, self.dtype)
            .map_err(|e| located(&self.source, e))
    }
}

fn find_name(ast: &Ast, name: &str) -> Option<usize> {
    match ast {
        Ast::Name(n, c) if n == name => Some(*c),
        Ast::Unary(_, a, _) => find_name(a, name),
        Ast::Binary(_, a, b, _) => find_name(a, name).or_else(|| find_name(b, name)),
        Ast::Call(_, args, _) => args.iter().find_map(|a| find_name(a, name)),
        _ => None,
    }
}

/// An error at a column, shown under the expression.
fn located(src: &str, e: Located) -> Error {
    Error::option(
        "expression",
        format!(
            "column {}: {}\n    {src}\n    {}^",
            e.col,
            e.msg,
            " ".repeat(e.col.saturating_sub(1))
        ),
    )
}

impl Kernel for Eval {
    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 0); ndim])
    }

    fn output_dtype(&self, inputs: &[DType]) -> Result<DType> {
        let p = self.program(inputs)?;
        Ok(p.insts.last().expect("a program has a result").t)
    }

    fn describe(&self) -> String {
        let dtype = self.dtype.map_or("numpy".to_string(), |d| d.to_string());
        format!(
            "eval expr={} inputs={} dtype={dtype}",
            self.canonical(),
            self.names.join(",")
        )
    }

    fn shift_invariant(&self) -> bool {
        true
    }

    fn scratch_bytes(&self, block_elems: u64) -> u64 {
        // Registers (a few per operation; tiles, not blocks) and an edge chunk's result.
        64 * TILE as u64 * 8 + block_elems * 8
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        let dtypes: Vec<DType> = inputs.iter().map(Block::dtype).collect();
        let prog = self.program(&dtypes)?;
        let negative_power = |out: &OutBlock<'_>| {
            out.error("an integer to a negative integer power (numpy refuses it too): use a float base, e.g. `a * 1.0`")
        };
        let mut m = Machine::new(&prog).map_err(|_| negative_power(out))?;
        let n: usize = out.region.shape().iter().map(|&e| e as usize).product();
        // Each input's region in C order.
        let mut owned: Vec<Option<Vec<u8>>> = Vec::with_capacity(inputs.len());
        for b in inputs {
            let whole = b
                .valid()
                .iter()
                .zip(b.shape())
                .all(|(v, &s)| v.start == 0 && v.end == s);
            if whole && b.bytes.len() < n * b.dtype().size() {
                return Err(Error::Internal(format!(
                    "eval: a block of {} bytes for a region of {n} elements",
                    b.bytes.len()
                )));
            }
            owned.push(if whole {
                None
            } else {
                Some(with_scalar!(b.dtype(), T => {
                    let v = b.valid_view::<T>()?;
                    let mut bytes = Vec::with_capacity(v.len() * std::mem::size_of::<T>());
                    v.iter().for_each(|x| bytes.extend_from_slice(bytemuck::bytes_of(x)));
                    bytes
                }))
            });
        }
        let srcs: Vec<(DType, &[u8])> = inputs
            .iter()
            .zip(&owned)
            .map(|(b, o)| {
                (
                    b.dtype(),
                    o.as_deref().unwrap_or(&b.bytes[..n * b.dtype().size()]),
                )
            })
            .collect();
        let t = out.dtype;
        let size = t.size();
        let chunk_elems: usize = out.chunk_shape.iter().product();
        let contiguous = n == chunk_elems;
        let mut edge = if contiguous {
            Vec::new()
        } else {
            vec![0u8; n * size]
        };
        let mut tiles: Vec<(DType, &[u8])> = srcs.clone();
        let mut off = 0;
        while off < n {
            let len = TILE.min(n - off);
            for (tile, &(d, bytes)) in tiles.iter_mut().zip(&srcs) {
                *tile = (d, &bytes[off * d.size()..(off + len) * d.size()]);
            }
            let res = m.run(&tiles, len).map_err(|_| negative_power(out))?;
            let dst = if contiguous {
                &mut out.bytes[..]
            } else {
                &mut edge[..]
            };
            dst[off * size..(off + len) * size].copy_from_slice(res);
            off += len;
        }
        if !contiguous {
            with_scalar!(t, T => {
                let vals = typed::<T>(&edge);
                let mut v = out.view_mut::<T>()?;
                for (o, &x) in v.iter_mut().zip(vals.iter()) {
                    *o = x;
                }
            });
        }
        Ok(())
    }
}
