//! The parsed form of a script: what `parse` builds and `run` interprets. Every node carries
//! the 1-based line and column errors report; nesting is at most `MAX_DEPTH` deep.

use super::Value;

/// A 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: u32,
    pub column: u32,
}

/// One statement and where it starts.
#[derive(Clone, Debug)]
pub(crate) struct Statement {
    pub pos: Pos,
    pub kind: Stmt,
}

#[derive(Clone, Debug)]
pub(crate) enum Stmt {
    Let {
        name: String,
        value: Expr,
    },
    If {
        cond: Expr,
        then: Vec<Statement>,
        otherwise: Vec<Statement>,
    },
    For {
        var: String,
        from: Expr,
        to: Expr,
        body: Vec<Statement>,
    },
    Return(Option<Expr>),
    Throw(Expr),
    Set {
        ephemeral: bool,
        key: Expr,
        value: Expr,
        opts: Vec<SetOpt>,
    },
    Delete(Expr),
    Extend {
        key: Expr,
        ttl: Expr,
    },
    /// A GET or EXISTS run for nothing but its errors.
    Eval(Expr),
}

#[derive(Clone, Debug)]
pub(crate) enum SetOpt {
    Nx,
    Xx,
    Ex(Expr),
    Cmp(Expr),
    CmpRev(Expr),
}

/// One expression and where it is (a binary operation: where its operator is).
#[derive(Clone, Debug)]
pub(crate) struct Expr {
    pub pos: Pos,
    pub kind: ExprKind,
}

#[derive(Clone, Debug)]
pub(crate) enum ExprKind {
    Lit(Value),
    Var(String),
    Param(String),
    Get { key: Box<Expr>, at: Option<Box<Expr>> },
    Exists(Box<Expr>),
    Field(Box<Expr>, Field),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Call(Builtin, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Value,
    Revision,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Concat,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "OR",
            BinOp::And => "AND",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Concat => "..",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builtin {
    Int,
    Str,
    Len,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Int => "INT",
            Builtin::Str => "STR",
            Builtin::Len => "LEN",
        }
    }
}
