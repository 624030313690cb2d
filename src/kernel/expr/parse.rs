//! The expression language's syntax: numexpr's, which is Python's (spec/COMPUTE.md §11.1).
//!
//! Precedence, loosest first: comparisons (one per level: `a < b < c` is refused), `|`, `^`,
//! `&`, `+ -`, `* / // %`, unary `+ - ~`, `**` (right-associative, and tighter than a unary
//! minus on its left: `-2**2` is -4).

use crate::dtype::Number;

/// A parse or typing error at a column (1-based, in characters) of the expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Located {
    pub col: usize,
    pub msg: String,
}

pub(crate) fn at(col: usize, msg: impl Into<String>) -> Located {
    Located {
        col,
        msg: msg.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
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
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        use BinOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            FloorDiv => "//",
            Mod => "%",
            Pow => "**",
            And => "&",
            Or => "|",
            Xor => "^",
            Lt => "<",
            Le => "<=",
            Gt => ">",
            Ge => ">=",
            Eq => "==",
            Ne => "!=",
        }
    }

    pub fn is_comparison(self) -> bool {
        use BinOp::*;
        matches!(self, Lt | Le | Gt | Ge | Eq | Ne)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Neg,
    Pos,
    Not,
}

/// The functions, with their arity.
pub(crate) const FUNCTIONS: &[(&str, usize)] = &[
    ("where", 3),
    ("abs", 1),
    ("sqrt", 1),
    ("exp", 1),
    ("log", 1),
    ("log10", 1),
    ("log1p", 1),
    ("expm1", 1),
    ("sin", 1),
    ("cos", 1),
    ("tan", 1),
    ("arcsin", 1),
    ("arccos", 1),
    ("arctan", 1),
    ("sinh", 1),
    ("cosh", 1),
    ("tanh", 1),
    ("floor", 1),
    ("ceil", 1),
    ("arctan2", 2),
    ("minimum", 2),
    ("maximum", 2),
    ("clip", 3),
];

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ast {
    Num(Number, usize),
    Bool(bool, usize),
    Name(String, usize),
    Unary(UnOp, Box<Ast>, usize),
    Binary(BinOp, Box<Ast>, Box<Ast>, usize),
    Call(&'static str, Vec<Ast>, usize),
}

impl Ast {
    /// The expression fully parenthesised (the job's identity: spacing does not matter).
    pub fn canonical(&self) -> String {
        match self {
            Ast::Num(Number::Int(i), _) => i.to_string(),
            Ast::Num(Number::Float(f), _) => format!("{f:?}"),
            Ast::Bool(b, _) => if *b { "True" } else { "False" }.to_string(),
            Ast::Name(n, _) => n.clone(),
            Ast::Unary(op, a, _) => {
                let s = match op {
                    UnOp::Neg => "-",
                    UnOp::Pos => "+",
                    UnOp::Not => "~",
                };
                format!("({s}{})", a.canonical())
            }
            Ast::Binary(op, a, b, _) => {
                format!("({} {} {})", a.canonical(), op.symbol(), b.canonical())
            }
            Ast::Call(f, args, _) => {
                let a: Vec<String> = args.iter().map(Ast::canonical).collect();
                format!("{f}({})", a.join(", "))
            }
        }
    }

    /// Every name the expression reads, in order of first use.
    pub fn names(&self, out: &mut Vec<String>) {
        match self {
            Ast::Name(n, _) if !out.contains(n) => out.push(n.clone()),
            Ast::Unary(_, a, _) => a.names(out),
            Ast::Binary(_, a, b, _) => {
                a.names(out);
                b.names(out);
            }
            Ast::Call(_, args, _) => args.iter().for_each(|a| a.names(out)),
            _ => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Number),
    Name(String),
    Op(&'static str),
    End,
}

/// Longest first, so that `**` is not read as two `*`.
const OPS: &[&str] = &[
    "**", "//", "<=", ">=", "==", "!=", "+", "-", "*", "/", "%", "&", "|", "^", "~", "<", ">", "(",
    ")", ",",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, Located> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || chars[i] == '_'
                    || ((chars[i] == '+' || chars[i] == '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            let text: String = chars[start..i].iter().filter(|&&c| c != '_').collect();
            let is_float = text.contains(['.', 'e', 'E']);
            let n = if is_float {
                text.parse::<f64>().ok().map(Number::Float)
            } else {
                text.parse::<i128>().ok().map(Number::Int)
            };
            match n {
                Some(n) => out.push((Tok::Num(n), col)),
                None => return Err(at(col, format!("{text:?} is not a number"))),
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Name(chars[start..i].iter().collect()), col));
        } else {
            let rest: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            match OPS.iter().find(|op| rest.starts_with(**op)) {
                Some(op) => {
                    out.push((Tok::Op(op), col));
                    i += op.len();
                }
                None => {
                    let hint = match c {
                        '=' => " (comparison is `==`; an expression assigns nothing)",
                        '!' => " (negation is `~`)",
                        _ => "",
                    };
                    return Err(at(col, format!("unexpected character {c:?}{hint}")));
                }
            }
        }
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// Parses `src` into its syntax tree.
pub(crate) fn parse(src: &str) -> Result<Ast, Located> {
    let toks = lex(src)?;
    if toks.len() > MAX_TOKENS {
        return Err(at(
            toks[MAX_TOKENS].1,
            format!(
                "the expression has {} tokens; at most {MAX_TOKENS}",
                toks.len() - 1
            ),
        ));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let ast = p.comparison()?;
    match p.peek() {
        (Tok::End, _) => Ok(ast),
        (Tok::Op(")"), col) => Err(at(*col, "unmatched ')'")),
        (t, col) => Err(at(
            *col,
            format!("expected an operator, found {}", describe(t)),
        )),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("the number {n}"),
        Tok::Name(n) => format!("the name {n:?}"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::End => "the end of the expression".into(),
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Nesting so far (parentheses, calls, unary operators): bounded, so that no input can
    /// exhaust the stack.
    depth: usize,
}

/// The longest expression, in tokens (numbers, names, operators): it bounds the syntax
/// tree's depth, which typing and dropping walk recursively.
pub(crate) const MAX_TOKENS: usize = 2048;

/// The deepest nesting an expression may have.
pub(crate) const MAX_DEPTH: usize = 64;

/// The binary levels from loosest to tightest (comparisons and `**` handled apart).
const LEVELS: &[&[(&str, BinOp)]] = &[
    &[("|", BinOp::Or)],
    &[("^", BinOp::Xor)],
    &[("&", BinOp::And)],
    &[("+", BinOp::Add), ("-", BinOp::Sub)],
    &[
        ("*", BinOp::Mul),
        ("/", BinOp::Div),
        ("//", BinOp::FloorDiv),
        ("%", BinOp::Mod),
    ],
];

const COMPARISONS: &[(&str, BinOp)] = &[
    ("<", BinOp::Lt),
    ("<=", BinOp::Le),
    (">", BinOp::Gt),
    (">=", BinOp::Ge),
    ("==", BinOp::Eq),
    ("!=", BinOp::Ne),
];

impl Parser {
    fn peek(&self) -> &(Tok, usize) {
        &self.toks[self.pos]
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn op_in(&self, set: &[(&str, BinOp)]) -> Option<(BinOp, usize)> {
        match self.peek() {
            (Tok::Op(o), col) => set.iter().find(|(s, _)| s == o).map(|&(_, op)| (op, *col)),
            _ => None,
        }
    }

    fn comparison(&mut self) -> Result<Ast, Located> {
        let a = self.level(0)?;
        let Some((op, col)) = self.op_in(COMPARISONS) else {
            return Ok(a);
        };
        self.next();
        let b = self.level(0)?;
        if let Some((_, col2)) = self.op_in(COMPARISONS) {
            return Err(at(
                col2,
                "chained comparisons (a < b < c) are not elementwise: write (a < b) & (b < c)",
            ));
        }
        Ok(Ast::Binary(op, Box::new(a), Box::new(b), col))
    }

    fn level(&mut self, l: usize) -> Result<Ast, Located> {
        if l == LEVELS.len() {
            return self.unary();
        }
        let mut a = self.level(l + 1)?;
        while let Some((op, col)) = self.op_in(LEVELS[l]) {
            self.next();
            let b = self.level(l + 1)?;
            a = Ast::Binary(op, Box::new(a), Box::new(b), col);
        }
        Ok(a)
    }

    /// Every operand starts here (after a prefix operator, a `**`, a parenthesis or a call's
    /// opening): the one place nesting is counted.
    fn unary(&mut self) -> Result<Ast, Located> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(at(
                self.peek().1,
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Result<Ast, Located> {
        let op = match self.peek() {
            (Tok::Op("-"), _) => UnOp::Neg,
            (Tok::Op("+"), _) => UnOp::Pos,
            (Tok::Op("~"), _) => UnOp::Not,
            _ => return self.power(),
        };
        let (_, col) = self.next();
        let a = self.unary()?;
        Ok(Ast::Unary(op, Box::new(a), col))
    }

    fn power(&mut self) -> Result<Ast, Located> {
        let a = self.atom()?;
        if let (Tok::Op("**"), col) = self.peek() {
            let col = *col;
            self.next();
            let b = self.unary()?;
            return Ok(Ast::Binary(BinOp::Pow, Box::new(a), Box::new(b), col));
        }
        Ok(a)
    }

    fn atom(&mut self) -> Result<Ast, Located> {
        let (tok, col) = self.next();
        match tok {
            Tok::Num(n) => Ok(Ast::Num(n, col)),
            Tok::Name(n) if n == "True" || n == "False" => Ok(Ast::Bool(n == "True", col)),
            Tok::Name(n) => {
                if !matches!(self.peek(), (Tok::Op("("), _)) {
                    return Ok(Ast::Name(n, col));
                }
                let Some(&(name, arity)) = FUNCTIONS.iter().find(|(f, _)| *f == n) else {
                    let known: Vec<&str> = FUNCTIONS.iter().map(|(f, _)| *f).collect();
                    return Err(at(
                        col,
                        format!(
                            "unknown function {n:?}; the functions are {}",
                            known.join(" ")
                        ),
                    ));
                };
                self.next();
                let mut args = Vec::new();
                if !matches!(self.peek(), (Tok::Op(")"), _)) {
                    loop {
                        args.push(self.comparison()?);
                        match self.next() {
                            (Tok::Op(","), _) => continue,
                            (Tok::Op(")"), _) => break,
                            (t, c) => {
                                return Err(at(
                                    c,
                                    format!(
                                        "expected ',' or ')' in {name}(...), found {}",
                                        describe(&t)
                                    ),
                                ));
                            }
                        }
                    }
                } else {
                    self.next();
                }
                if args.len() != arity {
                    return Err(at(
                        col,
                        format!("{name} takes {arity} argument(s), given {}", args.len()),
                    ));
                }
                Ok(Ast::Call(name, args, col))
            }
            Tok::Op("(") => {
                let a = self.comparison()?;
                match self.next() {
                    (Tok::Op(")"), _) => Ok(a),
                    (t, c) => Err(at(c, format!("expected ')', found {}", describe(&t)))),
                }
            }
            t => Err(at(
                col,
                format!("expected a number, a name or '(', found {}", describe(&t)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_precedence() {
        let c = |s: &str| parse(s).unwrap().canonical();
        assert_eq!(c("-2**2"), "(-(2 ** 2))");
        assert_eq!(c("2**-1"), "(2 ** (-1))");
        assert_eq!(c("a**b**c"), "(a ** (b ** c))");
        assert_eq!(c("a + b*c - d"), "((a + (b * c)) - d)");
        assert_eq!(c("a | b & c ^ d"), "(a | ((b & c) ^ d))");
        assert_eq!(c("a & b > 2"), "((a & b) > 2)");
        assert_eq!(c("where(a > 1, a, 0.5)"), "where((a > 1), a, 0.5)");
        assert_eq!(c("1e3 + .5 + 2E-2 + 7"), "(((1000.0 + 0.5) + 0.02) + 7)");
        assert_eq!(c("a // b % c"), "((a // b) % c)");
    }

    #[test]
    fn errors_point_at_the_column() {
        let e = |s: &str| parse(s).unwrap_err();
        assert_eq!(e("a + * b").col, 5);
        assert_eq!(e("(a + b").col, 7);
        assert_eq!(e("a < b < c").col, 7);
        assert_eq!(e("foo(a)").col, 1);
        assert!(e("foo(a)").msg.contains("sqrt"));
        assert_eq!(e("sqrt(a, b)").col, 1);
        assert_eq!(e("a = b").col, 3);
        assert_eq!(e("a b").col, 3);
        assert_eq!(e("1.2.3").col, 1);
        let deep = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
        assert!(e(&deep).msg.contains("nests deeper"));
        assert!(
            e(&format!("{}a", "-".repeat(1000)))
                .msg
                .contains("nests deeper")
        );
        assert!(e(&"a**".repeat(100)).msg.contains("nests deeper"));
        assert!(e(&"a+".repeat(100_000)).msg.contains("at most 2048"));
        assert!(parse(&format!("a{}", "+a".repeat(1000))).is_ok());
        assert!(parse(&format!("{}a{}", "(".repeat(60), ")".repeat(60))).is_ok());
    }
}
