//! The interpreter: walks the AST against a [`Host`], counting steps, operations, host calls
//! and bytes copied, and the static key analysis. The operators themselves are pure functions
//! of values ([`binary`], [`builtin`], [`field`]), shared by both.

use std::collections::{BTreeMap, BTreeSet};

use super::ast::{BinOp, Builtin, Expr, ExprKind, Field, Pos, SetOpt, Statement, Stmt};
use super::{
    Host, ScriptError, SetOptions, Value, MAX_HOST_CALLS, MAX_OPS, MAX_RUN_BYTES, MAX_STEPS,
    MAX_VALUE_BYTES,
};

type Result<T> = std::result::Result<T, ScriptError>;

fn failed(pos: Pos, message: impl Into<String>) -> ScriptError {
    ScriptError::Failed { line: pos.line, column: pos.column, message: message.into() }
}

/// What a statement leaves behind: go on, or the script's answer.
enum Flow {
    Next,
    Return(Value),
}

struct Machine<'a> {
    host: &'a mut dyn Host,
    params: &'a BTreeMap<String, Value>,
    vars: BTreeMap<String, Value>,
    steps: u64,
    ops: u64,
    host_calls: u64,
    bytes: usize,
}

pub(crate) fn run(
    body: &[Statement],
    host: &mut dyn Host,
    params: &BTreeMap<String, Value>,
) -> Result<Value> {
    let mut m =
        Machine { host, params, vars: BTreeMap::new(), steps: 0, ops: 0, host_calls: 0, bytes: 0 };
    match m.block(body)? {
        Flow::Next => Ok(Value::Null),
        Flow::Return(v) => Ok(v),
    }
}

impl Machine<'_> {
    fn step(&mut self) -> Result<()> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(ScriptError::TooManySteps);
        }
        Ok(())
    }

    fn host_call(&mut self) -> Result<()> {
        self.host_calls += 1;
        if self.host_calls > MAX_HOST_CALLS {
            return Err(ScriptError::TooManySteps);
        }
        Ok(())
    }

    /// Counts `value`'s bytes against the run's copy budget and its own size limit.
    fn charge(&mut self, pos: Pos, value: &Value) -> Result<()> {
        let len = match value {
            Value::Bytes(b) | Value::Item { value: b, .. } => b.len(),
            _ => return Ok(()),
        };
        if len > MAX_VALUE_BYTES {
            return Err(failed(pos, too_large(len)));
        }
        self.bytes = self.bytes.saturating_add(len);
        if self.bytes > MAX_RUN_BYTES {
            return Err(failed(
                pos,
                format!("the script copied more than {MAX_RUN_BYTES} bytes of values"),
            ));
        }
        Ok(())
    }

    fn block(&mut self, body: &[Statement]) -> Result<Flow> {
        for s in body {
            if let Flow::Return(v) = self.statement(s)? {
                return Ok(Flow::Return(v));
            }
        }
        Ok(Flow::Next)
    }

    fn statement(&mut self, s: &Statement) -> Result<Flow> {
        self.step()?;
        match &s.kind {
            Stmt::Let { name, value } => {
                let v = self.eval(value)?;
                self.vars.insert(name.clone(), v);
            }
            Stmt::If { cond, then, otherwise } => {
                let branch = match self.eval(cond)? {
                    Value::Bool(true) => then,
                    Value::Bool(false) => otherwise,
                    other => {
                        return Err(failed(
                            cond.pos,
                            format!("IF wants a bool, not {}", other.kind()),
                        ))
                    }
                };
                return self.block(branch);
            }
            Stmt::For { var, from, to, body } => {
                let from = self.int(from, "FOR")?;
                let to = self.int(to, "FOR")?;
                let mut i = from;
                while i < to {
                    self.step()?;
                    self.vars.insert(var.clone(), Value::Int(i));
                    if let Flow::Return(v) = self.block(body)? {
                        return Ok(Flow::Return(v));
                    }
                    i += 1;
                }
            }
            Stmt::Return(value) => {
                let v = match value {
                    Some(e) => self.eval(e)?,
                    None => Value::Null,
                };
                return Ok(Flow::Return(v));
            }
            Stmt::Throw(message) => {
                let message = self.eval(message)?;
                return Err(ScriptError::Thrown(message.to_string()));
            }
            Stmt::Set { ephemeral, key, value, opts } => {
                let key = self.bytes_of(key, "a key")?;
                let value = self.bytes_of(value, "a value")?;
                let mut o = SetOptions { ephemeral: *ephemeral, ..SetOptions::default() };
                for opt in opts {
                    match opt {
                        SetOpt::Nx => o.nx = true,
                        SetOpt::Xx => o.xx = true,
                        SetOpt::Ex(e) => o.ttl_ms = self.positive(e, "EX")?,
                        SetOpt::Cmp(e) => o.cmp_value = Some(self.bytes_of(e, "CMP")?),
                        SetOpt::CmpRev(e) => o.cmp_revision = Some(self.revision(e, "CMPREV")?),
                    }
                }
                self.host_call()?;
                self.host.set(&key, &value, &o).map_err(|m| failed(s.pos, m))?;
            }
            Stmt::Delete(key) => {
                let key = self.bytes_of(key, "a key")?;
                self.host_call()?;
                self.host.delete(&key).map_err(|m| failed(s.pos, m))?;
            }
            Stmt::Extend { key, ttl } => {
                let key = self.bytes_of(key, "a key")?;
                let ttl = self.positive(ttl, "EXTEND")?;
                self.host_call()?;
                self.host.extend(&key, ttl).map_err(|m| failed(s.pos, m))?;
            }
            Stmt::Eval(e) => {
                self.eval(e)?;
            }
        }
        Ok(Flow::Next)
    }

    /// An expression that must be an integer.
    fn int(&mut self, e: &Expr, what: &str) -> Result<i64> {
        match self.eval(e)? {
            Value::Int(i) => Ok(i),
            other => Err(failed(e.pos, format!("{what} wants an int, not {}", other.kind()))),
        }
    }

    /// An expression that must be a positive integer (milliseconds).
    fn positive(&mut self, e: &Expr, what: &str) -> Result<u64> {
        match self.int(e, what)? {
            i if i > 0 => Ok(i.unsigned_abs()),
            i => Err(failed(e.pos, format!("{what} wants a positive number of ms, not {i}"))),
        }
    }

    /// An expression that must be a revision (a non-negative integer).
    fn revision(&mut self, e: &Expr, what: &str) -> Result<u64> {
        let i = self.int(e, what)?;
        u64::try_from(i).map_err(|_| failed(e.pos, format!("{what} wants a revision, not {i}")))
    }

    /// An expression that must be a string (an integer stands for its decimal digits).
    fn bytes_of(&mut self, e: &Expr, what: &str) -> Result<Vec<u8>> {
        let v = self.eval(e)?;
        to_bytes(v, what).map_err(|m| failed(e.pos, m))
    }

    fn eval(&mut self, e: &Expr) -> Result<Value> {
        self.ops += 1;
        if self.ops > MAX_OPS {
            return Err(ScriptError::TooManySteps);
        }
        let v = match &e.kind {
            ExprKind::Lit(v) => {
                self.charge(e.pos, v)?;
                v.clone()
            }
            ExprKind::Var(name) => {
                let v = self
                    .vars
                    .get(name)
                    .ok_or_else(|| failed(e.pos, format!("unknown variable `{name}`")))?;
                let v = v.clone();
                self.charge(e.pos, &v)?;
                v
            }
            ExprKind::Param(name) => {
                let v = self
                    .params
                    .get(name)
                    .ok_or_else(|| failed(e.pos, format!("missing parameter @{name}")))?;
                let v = v.clone();
                self.charge(e.pos, &v)?;
                v
            }
            ExprKind::Get { key, at } => {
                let key = self.bytes_of(key, "a key")?;
                let revision = match at {
                    Some(r) => self.revision(r, "AT")?,
                    None => 0,
                };
                self.host_call()?;
                let v = match self.host.get(&key, revision).map_err(|m| failed(e.pos, m))? {
                    Some((value, revision)) => Value::Item { value, revision },
                    None => Value::Null,
                };
                self.charge(e.pos, &v)?;
                v
            }
            ExprKind::Exists(key) => {
                let key = self.bytes_of(key, "a key")?;
                self.host_call()?;
                Value::Bool(self.host.exists(&key).map_err(|m| failed(e.pos, m))?)
            }
            ExprKind::Field(inner, f) => {
                let v = self.eval(inner)?;
                field(v, *f).map_err(|m| failed(e.pos, m))?
            }
            ExprKind::Neg(inner) => {
                let v = self.eval(inner)?;
                neg(v).map_err(|m| failed(e.pos, m))?
            }
            ExprKind::Not(inner) => {
                let v = self.eval(inner)?;
                not(v).map_err(|m| failed(e.pos, m))?
            }
            ExprKind::Binary(op @ (BinOp::And | BinOp::Or), l, r) => {
                // Short-circuits: the right side runs only when it decides.
                let l = self.eval(l)?;
                let Value::Bool(lb) = l else {
                    return Err(failed(e.pos, bool_wanted(*op, &l)));
                };
                if lb == (*op == BinOp::Or) {
                    Value::Bool(lb)
                } else {
                    let r = self.eval(r)?;
                    match r {
                        Value::Bool(rb) => Value::Bool(rb),
                        other => return Err(failed(e.pos, bool_wanted(*op, &other))),
                    }
                }
            }
            ExprKind::Binary(op, l, r) => {
                let l = self.eval(l)?;
                let r = self.eval(r)?;
                let v = binary(*op, l, r).map_err(|m| failed(e.pos, m))?;
                self.charge(e.pos, &v)?;
                v
            }
            ExprKind::Call(b, arg) => {
                let v = self.eval(arg)?;
                let v = builtin(*b, v).map_err(|m| failed(e.pos, m))?;
                self.charge(e.pos, &v)?;
                v
            }
        };
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// The operators, as pure functions of values

fn too_large(len: usize) -> String {
    format!("a value of {len} bytes is over the limit of {MAX_VALUE_BYTES} bytes")
}

fn bool_wanted(op: BinOp, got: &Value) -> String {
    format!("{} wants bools, not {}", op.symbol(), got.kind())
}

/// A key's or value's bytes: a string, or an integer's decimal digits.
pub(crate) fn to_bytes(v: Value, what: &str) -> std::result::Result<Vec<u8>, String> {
    match v {
        Value::Bytes(b) => Ok(b),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        Value::Item { .. } => {
            Err(format!("{what} must be a string or an int, not an item (use .value)"))
        }
        other => Err(format!("{what} must be a string or an int, not {}", other.kind())),
    }
}

fn field(v: Value, f: Field) -> std::result::Result<Value, String> {
    let name = match f {
        Field::Value => ".value",
        Field::Revision => ".revision",
    };
    match (v, f) {
        (Value::Item { value, .. }, Field::Value) => Ok(Value::Bytes(value)),
        (Value::Item { revision, .. }, Field::Revision) => i64::try_from(revision)
            .map(Value::Int)
            .map_err(|_| format!("revision {revision} does not fit an int")),
        (Value::Null, _) => Err(format!("{name} of null (the key does not exist)")),
        (other, _) => Err(format!("{name} wants an item (a GET's answer), not {}", other.kind())),
    }
}

fn neg(v: Value) -> std::result::Result<Value, String> {
    match v {
        Value::Int(i) => i.checked_neg().map(Value::Int).ok_or_else(|| format!("-({i}) overflows")),
        other => Err(format!("- wants an int, not {}", other.kind())),
    }
}

fn not(v: Value) -> std::result::Result<Value, String> {
    match v {
        Value::Bool(b) => Ok(Value::Bool(!b)),
        other => Err(format!("NOT wants a bool, not {}", other.kind())),
    }
}

/// Every binary operator but the short-circuiting AND and OR (which it also answers, strictly).
fn binary(op: BinOp, l: Value, r: Value) -> std::result::Result<Value, String> {
    use std::cmp::Ordering;
    let mismatch = |l: &Value, r: &Value, wants: &str| {
        format!("{} wants {wants}, not {} and {}", op.symbol(), l.kind(), r.kind())
    };
    match op {
        BinOp::Eq => Ok(Value::Bool(l == r)),
        BinOp::Ne => Ok(Value::Bool(l != r)),
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let ord: Ordering = match (&l, &r) {
                (Value::Int(a), Value::Int(b)) => a.cmp(b),
                (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
                _ => return Err(mismatch(&l, &r, "two ints or two strings")),
            };
            Ok(Value::Bool(match op {
                BinOp::Lt => ord.is_lt(),
                BinOp::Le => ord.is_le(),
                BinOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            }))
        }
        BinOp::And | BinOp::Or => match (&l, &r) {
            (Value::Bool(a), Value::Bool(b)) => {
                Ok(Value::Bool(if op == BinOp::And { *a && *b } else { *a || *b }))
            }
            _ => Err(mismatch(&l, &r, "two bools")),
        },
        BinOp::Concat => {
            let (a, b) = match (l, r) {
                (l @ (Value::Bytes(_) | Value::Int(_)), r @ (Value::Bytes(_) | Value::Int(_))) => {
                    (to_bytes(l, "..")?, to_bytes(r, "..")?)
                }
                (l, r) => return Err(mismatch(&l, &r, "strings or ints")),
            };
            let len = a.len() + b.len();
            if len > MAX_VALUE_BYTES {
                return Err(too_large(len));
            }
            let mut out = a;
            out.extend_from_slice(&b);
            Ok(Value::Bytes(out))
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div => {
            let (Value::Int(a), Value::Int(b)) = (&l, &r) else {
                return Err(mismatch(&l, &r, "two ints"));
            };
            let (a, b) = (*a, *b);
            let v = match op {
                BinOp::Add => a.checked_add(b),
                BinOp::Sub => a.checked_sub(b),
                BinOp::Mul => a.checked_mul(b),
                _ if b == 0 => return Err("division by zero".to_string()),
                _ => a.checked_div(b),
            };
            v.map(Value::Int).ok_or_else(|| format!("{a} {} {b} overflows", op.symbol()))
        }
    }
}

fn builtin(b: Builtin, v: Value) -> std::result::Result<Value, String> {
    match (b, v) {
        (Builtin::Int, Value::Int(i)) => Ok(Value::Int(i)),
        (Builtin::Int, Value::Bytes(s)) => parse_int(&s).map(Value::Int).ok_or_else(|| {
            let shown: String = String::from_utf8_lossy(&s).chars().take(32).collect();
            format!("INT wants a decimal integer, not {shown:?}")
        }),
        (Builtin::Str, Value::Int(i)) => Ok(Value::Bytes(i.to_string().into_bytes())),
        (Builtin::Str, Value::Bool(b)) => Ok(Value::Bytes(b.to_string().into_bytes())),
        (Builtin::Str, Value::Bytes(s)) => Ok(Value::Bytes(s)),
        (Builtin::Len, Value::Bytes(s)) => {
            Ok(Value::Int(i64::try_from(s.len()).map_err(|_| "length overflows".to_string())?))
        }
        (b, v) => {
            let wants = match b {
                Builtin::Int => "a string or an int",
                Builtin::Str => "an int, a bool or a string",
                Builtin::Len => "a string",
            };
            let hint = if matches!(v, Value::Item { .. }) { " (use .value)" } else { "" };
            Err(format!("{} wants {wants}, not {}{hint}", b.name(), v.kind()))
        }
    }
}

/// `-?[0-9]+` that fits an i64; nothing else (no spaces, no `+`).
fn parse_int(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Static keys

pub(crate) fn static_keys(
    body: &[Statement],
    params: &BTreeMap<String, Value>,
) -> Option<Vec<Vec<u8>>> {
    let mut keys = BTreeSet::new();
    for s in body {
        statement_keys(s, params, &mut keys)?;
    }
    Some(keys.into_iter().collect())
}

fn statement_keys(
    s: &Statement,
    params: &BTreeMap<String, Value>,
    keys: &mut BTreeSet<Vec<u8>>,
) -> Option<()> {
    let key = |e: &Expr, keys: &mut BTreeSet<Vec<u8>>| -> Option<()> {
        expr_keys(e, params, keys)?;
        keys.insert(to_bytes(const_eval(e, params)?, "a key").ok()?);
        Some(())
    };
    match &s.kind {
        Stmt::Let { value: e, .. } | Stmt::Throw(e) | Stmt::Eval(e) => expr_keys(e, params, keys),
        Stmt::Return(e) => e.as_ref().map_or(Some(()), |e| expr_keys(e, params, keys)),
        Stmt::If { cond, then, otherwise } => {
            expr_keys(cond, params, keys)?;
            then.iter().chain(otherwise).try_for_each(|s| statement_keys(s, params, keys))
        }
        Stmt::For { from, to, body, .. } => {
            expr_keys(from, params, keys)?;
            expr_keys(to, params, keys)?;
            body.iter().try_for_each(|s| statement_keys(s, params, keys))
        }
        Stmt::Set { key: k, value, opts, .. } => {
            key(k, keys)?;
            expr_keys(value, params, keys)?;
            opts.iter().try_for_each(|o| match o {
                SetOpt::Nx | SetOpt::Xx => Some(()),
                SetOpt::Ex(e) | SetOpt::Cmp(e) | SetOpt::CmpRev(e) => expr_keys(e, params, keys),
            })
        }
        Stmt::Delete(k) => key(k, keys),
        Stmt::Extend { key: k, ttl } => {
            key(k, keys)?;
            expr_keys(ttl, params, keys)
        }
    }
}

/// Adds the keys of the GETs and EXISTSes inside `e`; None when one is not static.
fn expr_keys(
    e: &Expr,
    params: &BTreeMap<String, Value>,
    keys: &mut BTreeSet<Vec<u8>>,
) -> Option<()> {
    match &e.kind {
        ExprKind::Lit(_) | ExprKind::Var(_) | ExprKind::Param(_) => Some(()),
        ExprKind::Get { key, at } => {
            expr_keys(key, params, keys)?;
            if let Some(at) = at {
                expr_keys(at, params, keys)?;
            }
            keys.insert(to_bytes(const_eval(key, params)?, "a key").ok()?);
            Some(())
        }
        ExprKind::Exists(key) => {
            expr_keys(key, params, keys)?;
            keys.insert(to_bytes(const_eval(key, params)?, "a key").ok()?);
            Some(())
        }
        ExprKind::Field(inner, _)
        | ExprKind::Neg(inner)
        | ExprKind::Not(inner)
        | ExprKind::Call(_, inner) => expr_keys(inner, params, keys),
        ExprKind::Binary(_, l, r) => {
            expr_keys(l, params, keys)?;
            expr_keys(r, params, keys)
        }
    }
}

/// The value of an expression made of literals, parameters, operators and builtins; None when
/// it reads a variable or the store, or would fail.
fn const_eval(e: &Expr, params: &BTreeMap<String, Value>) -> Option<Value> {
    let v = match &e.kind {
        ExprKind::Lit(v) => v.clone(),
        ExprKind::Param(name) => params.get(name)?.clone(),
        ExprKind::Var(_) | ExprKind::Get { .. } | ExprKind::Exists(_) => return None,
        ExprKind::Field(inner, f) => field(const_eval(inner, params)?, *f).ok()?,
        ExprKind::Neg(inner) => neg(const_eval(inner, params)?).ok()?,
        ExprKind::Not(inner) => not(const_eval(inner, params)?).ok()?,
        ExprKind::Binary(op, l, r) => {
            binary(*op, const_eval(l, params)?, const_eval(r, params)?).ok()?
        }
        ExprKind::Call(b, arg) => builtin(*b, const_eval(arg, params)?).ok()?,
    };
    match &v {
        Value::Bytes(b) | Value::Item { value: b, .. } if b.len() > MAX_VALUE_BYTES => None,
        _ => Some(v),
    }
}
