//! Source to AST: a lexical pre-scan for nesting, the pest grammar, then a builder that turns
//! pest's pairs into [`Statement`]s, checking depth, literals and SET options on the way.
//!
//! Depth is checked twice. The pre-scan counts open blocks (IF/FOR … END) and parentheses, so
//! the usual deep programs are refused before pest recurses on them; the builder counts the
//! real nesting of the AST (every statement, operator, field and parenthesis one level), top
//! down, so neither it nor the interpreter ever recurses deeper than [`MAX_DEPTH`]. What the
//! pre-scan does not count (a chain of GETs) is caught by pest's own stack guard, reported as
//! too deep as well.

use pest::error::{ErrorVariant, InputLocation, LineColLocation};
use pest::iterators::{Pair, Pairs};
use pest::Parser as _;
use pest_derive::Parser;

use super::ast::{BinOp, Builtin, Expr, ExprKind, Field, Pos, SetOpt, Statement, Stmt};
use super::{ParseError, Value, MAX_DEPTH, MAX_SCRIPT_BYTES};

#[derive(Parser)]
#[grammar = "script/grammar.pest"]
struct ScriptParser;

type Result<T> = std::result::Result<T, ParseError>;

fn error(pos: Pos, message: impl Into<String>) -> ParseError {
    ParseError { line: pos.line, column: pos.column, message: message.into() }
}

fn too_deep(pos: Pos) -> ParseError {
    error(pos, format!("nesting deeper than {MAX_DEPTH} levels"))
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn pos_of(pair: &Pair<'_, Rule>) -> Pos {
    let (line, column) = pair.line_col();
    Pos { line: to_u32(line), column: to_u32(column) }
}

/// Parses a whole source into its top-level statements.
pub(crate) fn parse(source: &str) -> Result<Vec<Statement>> {
    if source.len() > MAX_SCRIPT_BYTES {
        return Err(error(
            Pos { line: 1, column: 1 },
            format!(
                "script of {} bytes is over the limit of {MAX_SCRIPT_BYTES} bytes",
                source.len()
            ),
        ));
    }
    prescan(source)?;
    let mut pairs =
        ScriptParser::parse(Rule::program, source).map_err(|e| from_pest(source, &e))?;
    let program = pairs.next().ok_or_else(|| internal(Pos { line: 1, column: 1 }))?;
    let at = pos_of(&program);
    let body = first_of(program.into_inner(), Rule::body).ok_or_else(|| internal(at))?;
    build_body(body, 1)
}

/// A shape the grammar rules out: reported rather than panicking.
fn internal(pos: Pos) -> ParseError {
    error(pos, "internal error: unexpected parse tree")
}

fn first_of<'i>(mut pairs: Pairs<'i, Rule>, rule: Rule) -> Option<Pair<'i, Rule>> {
    pairs.find(|p| p.as_rule() == rule)
}

// ---------------------------------------------------------------------------------------------
// Pre-scan

/// Refuses sources whose blocks, parentheses and runs of GET/EXISTS nest deeper than
/// [`MAX_DEPTH`], at the token that goes too deep, skipping strings, comments, parameters and
/// fields as the grammar does. Never refuses a source the builder would accept: each open
/// block, open parenthesis and GET of a run is at least one level of the AST.
fn prescan(source: &str) -> Result<()> {
    let mut chars = source.chars().peekable();
    let (mut line, mut column) = (1u32, 1u32);
    let (mut blocks, mut parens) = (0usize, 0usize);
    // GETs and EXISTSes in a row (maybe with `(` between): each is the argument of the one
    // before, so each is one level deeper. Any other token ends the run.
    let mut run = 0usize;
    let mut word = String::new();
    while let Some(c) = chars.next() {
        let at = Pos { line, column };
        column = column.saturating_add(1);
        let deeper = match c {
            ' ' | '\t' | '\r' => continue,
            '#' => {
                while chars.next_if(|&c| c != '\n').is_some() {
                    column = column.saturating_add(1);
                }
                continue;
            }
            '\n' => {
                line = line.saturating_add(1);
                column = 1;
                false
            }
            '"' => {
                while let Some(c) = chars.next_if(|&c| c != '\n') {
                    column = column.saturating_add(1);
                    if c == '"' {
                        break;
                    }
                    if c == '\\' && chars.next_if(|&c| c != '\n').is_some() {
                        column = column.saturating_add(1);
                    }
                }
                false
            }
            '(' => {
                parens += 1;
                if blocks + parens + run > MAX_DEPTH {
                    return Err(too_deep(at));
                }
                continue;
            }
            ')' => {
                parens = parens.saturating_sub(1);
                false
            }
            c if c.is_ascii_alphanumeric() || c == '_' || c == '@' || c == '.' => {
                // A word; after `@` a parameter and after `.` a field, neither a keyword.
                word.clear();
                word.push(c);
                while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    column = column.saturating_add(1);
                    word.push(c);
                }
                let is = |kw: &str| word.eq_ignore_ascii_case(kw);
                if is("if") || is("for") {
                    blocks += 1;
                    true
                } else if is("end") {
                    blocks = blocks.saturating_sub(1);
                    false
                } else if is("get") || is("exists") {
                    run += 1;
                    if blocks + parens + run > MAX_DEPTH {
                        return Err(too_deep(at));
                    }
                    continue;
                } else {
                    false
                }
            }
            _ => false,
        };
        run = 0;
        if deeper && blocks + parens > MAX_DEPTH {
            return Err(too_deep(at));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// pest's errors

fn from_pest(source: &str, e: &pest::error::Error<Rule>) -> ParseError {
    let (line, column) = match e.line_col {
        LineColLocation::Pos(p) | LineColLocation::Span(p, _) => p,
    };
    let offset = match e.location {
        InputLocation::Pos(p) | InputLocation::Span((p, _)) => p,
    };
    let message = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let found = found_at(source, offset);
            let expected = expected(positives);
            if expected.is_empty() {
                format!("unexpected {found}")
            } else {
                format!("unexpected {found}; expected {expected}")
            }
        }
        ErrorVariant::CustomError { message } => {
            if message.contains("limit reached") {
                // pest's stack guard or call limit: only a pathological nesting gets there.
                format!("nesting deeper than {MAX_DEPTH} levels")
            } else {
                message.clone()
            }
        }
    };
    ParseError { line: to_u32(line), column: to_u32(column), message }
}

/// What the source has at `offset`, as an error names it.
fn found_at(source: &str, offset: usize) -> String {
    let rest = source.get(offset..).unwrap_or("");
    let Some(c) = rest.chars().next() else {
        return "end of input".to_string();
    };
    match c {
        '\n' | '\r' => "end of line".to_string(),
        '"' => "string".to_string(),
        c if c.is_ascii_alphanumeric() || c == '_' => {
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(24)
                .collect();
            format!("`{word}`")
        }
        c => format!("`{c}`"),
    }
}

const STATEMENT_KEYWORDS: &[Rule] = &[
    Rule::kw_let,
    Rule::kw_if,
    Rule::kw_for,
    Rule::kw_return,
    Rule::kw_throw,
    Rule::kw_set,
    Rule::kw_eset,
    Rule::kw_delete,
    Rule::kw_extend,
];

/// The rules pest expected, in words, each once.
fn expected(positives: &[Rule]) -> String {
    let statement_context = positives.iter().any(|r| STATEMENT_KEYWORDS.contains(r));
    let mut names: Vec<&'static str> = Vec::new();
    for rule in positives {
        let name = match rule {
            Rule::EOI => "end of input",
            Rule::sep => "a new line or `;`",
            Rule::kw_let
            | Rule::kw_if
            | Rule::kw_for
            | Rule::kw_return
            | Rule::kw_throw
            | Rule::kw_set
            | Rule::kw_eset
            | Rule::kw_delete
            | Rule::kw_extend
            | Rule::program
            | Rule::body
            | Rule::let_stmt
            | Rule::if_stmt
            | Rule::for_stmt
            | Rule::return_stmt
            | Rule::throw_stmt
            | Rule::set_stmt
            | Rule::delete_stmt
            | Rule::extend_stmt => "a statement",
            Rule::kw_get | Rule::kw_exists | Rule::get_expr | Rule::exists_expr
                if statement_context =>
            {
                "a statement"
            }
            Rule::kw_or
            | Rule::kw_and
            | Rule::cmp_op
            | Rule::concat_op
            | Rule::add_op
            | Rule::mul_op
            | Rule::field => "an operator",
            Rule::kw_nx
            | Rule::kw_xx
            | Rule::kw_ex
            | Rule::kw_cmp
            | Rule::kw_cmprev
            | Rule::set_opt => "a SET option",
            Rule::kw_then => "`THEN`",
            Rule::kw_else | Rule::else_part => "`ELSE`",
            Rule::kw_end => "`END`",
            Rule::kw_do => "`DO`",
            Rule::kw_in => "`IN`",
            Rule::kw_at => "`AT`",
            Rule::assign => "`=`",
            Rule::range_dots => "`..`",
            Rule::close => "`)`",
            Rule::ident => "a name",
            _ => "an expression",
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    match names.as_slice() {
        [] => String::new(),
        [one] => (*one).to_string(),
        [a, b] => format!("{a} or {b}"),
        [init @ .., last] => format!("{}, or {last}", init.join(", ")),
    }
}

// ---------------------------------------------------------------------------------------------
// The builder

/// The statements of a `body`, each at `depth`.
fn build_body(body: Pair<'_, Rule>, depth: usize) -> Result<Vec<Statement>> {
    body.into_inner().filter(|p| p.as_rule() != Rule::sep).map(|p| build_stmt(p, depth)).collect()
}

/// The children of a pair, for taking them in the order the grammar puts them.
struct Children<'i> {
    at: Pos,
    pairs: Pairs<'i, Rule>,
}

impl<'i> Children<'i> {
    fn of(pair: Pair<'i, Rule>) -> Self {
        Children { at: pos_of(&pair), pairs: pair.into_inner() }
    }

    fn next(&mut self) -> Result<Pair<'i, Rule>> {
        self.pairs.next().ok_or_else(|| internal(self.at))
    }

    fn next_if(&mut self, rule: Rule) -> Option<Pair<'i, Rule>> {
        if self.pairs.peek().is_some_and(|p| p.as_rule() == rule) {
            self.pairs.next()
        } else {
            None
        }
    }
}

fn build_stmt(pair: Pair<'_, Rule>, depth: usize) -> Result<Statement> {
    let pos = pos_of(&pair);
    if depth > MAX_DEPTH {
        return Err(too_deep(pos));
    }
    let inner = depth + 1;
    let rule = pair.as_rule();
    if matches!(rule, Rule::get_expr | Rule::exists_expr) {
        return Ok(Statement { pos, kind: Stmt::Eval(build_expr(pair, inner)?) });
    }
    let mut c = Children::of(pair);
    let head = c.next()?.as_rule();
    let kind = match rule {
        Rule::let_stmt => {
            let name = c.next()?.as_str().to_string();
            c.next()?; // =
            Stmt::Let { name, value: build_expr(c.next()?, inner)? }
        }
        Rule::if_stmt => {
            let cond = build_expr(c.next()?, inner)?;
            c.next()?; // THEN
            let then = build_body(c.next()?, inner)?;
            let otherwise = match c.next_if(Rule::else_part) {
                Some(part) => {
                    let mut e = Children::of(part);
                    e.next()?; // ELSE
                    build_body(e.next()?, inner)?
                }
                None => Vec::new(),
            };
            Stmt::If { cond, then, otherwise }
        }
        Rule::for_stmt => {
            let var = c.next()?.as_str().to_string();
            c.next()?; // IN
            let from = build_expr(c.next()?, inner)?;
            c.next()?; // ..
            let to = build_expr(c.next()?, inner)?;
            c.next()?; // DO
            let body = build_body(c.next()?, inner)?;
            Stmt::For { var, from, to, body }
        }
        Rule::return_stmt => {
            Stmt::Return(c.next_if(Rule::expr).map(|e| build_expr(e, inner)).transpose()?)
        }
        Rule::throw_stmt => Stmt::Throw(build_expr(c.next()?, inner)?),
        Rule::set_stmt => {
            let ephemeral = head == Rule::kw_eset;
            let key = build_expr(c.next()?, inner)?;
            let value = build_expr(c.next()?, inner)?;
            let opts = build_set_opts(&mut c, inner)?;
            Stmt::Set { ephemeral, key, value, opts }
        }
        Rule::delete_stmt => Stmt::Delete(build_expr(c.next()?, inner)?),
        Rule::extend_stmt => {
            let key = build_expr(c.next()?, inner)?;
            let ttl = build_expr(c.next()?, inner)?;
            Stmt::Extend { key, ttl }
        }
        _ => return Err(internal(pos)),
    };
    Ok(Statement { pos, kind })
}

fn build_set_opts(c: &mut Children<'_>, depth: usize) -> Result<Vec<SetOpt>> {
    let mut opts = Vec::new();
    let (mut nx, mut xx, mut ex, mut cmp, mut cmprev) = (false, false, false, false, false);
    while let Some(opt) = c.next_if(Rule::set_opt) {
        let pos = pos_of(&opt);
        let mut o = Children::of(opt);
        let kw = o.next()?;
        let (seen, name) = match kw.as_rule() {
            Rule::kw_nx => (&mut nx, "NX"),
            Rule::kw_xx => (&mut xx, "XX"),
            Rule::kw_ex => (&mut ex, "EX"),
            Rule::kw_cmp => (&mut cmp, "CMP"),
            Rule::kw_cmprev => (&mut cmprev, "CMPREV"),
            _ => return Err(internal(pos)),
        };
        if *seen {
            return Err(error(pos, format!("{name} given twice")));
        }
        *seen = true;
        if [nx, xx, cmp, cmprev].iter().filter(|s| **s).count() > 1 {
            return Err(error(pos, "a SET takes at most one condition (NX, XX, CMP or CMPREV)"));
        }
        opts.push(match kw.as_rule() {
            Rule::kw_nx => SetOpt::Nx,
            Rule::kw_xx => SetOpt::Xx,
            Rule::kw_ex => SetOpt::Ex(build_expr(o.next()?, depth)?),
            Rule::kw_cmp => SetOpt::Cmp(build_expr(o.next()?, depth)?),
            _ => SetOpt::CmpRev(build_expr(o.next()?, depth)?),
        });
    }
    Ok(opts)
}

fn binop(pair: &Pair<'_, Rule>) -> Option<BinOp> {
    Some(match (pair.as_rule(), pair.as_str()) {
        (Rule::kw_or, _) => BinOp::Or,
        (Rule::kw_and, _) => BinOp::And,
        (Rule::cmp_op, "==") => BinOp::Eq,
        (Rule::cmp_op, "!=") => BinOp::Ne,
        (Rule::cmp_op, "<") => BinOp::Lt,
        (Rule::cmp_op, "<=") => BinOp::Le,
        (Rule::cmp_op, ">") => BinOp::Gt,
        (Rule::cmp_op, ">=") => BinOp::Ge,
        (Rule::concat_op, _) => BinOp::Concat,
        (Rule::add_op, "+") => BinOp::Add,
        (Rule::add_op, _) => BinOp::Sub,
        (Rule::mul_op, "*") => BinOp::Mul,
        (Rule::mul_op, _) => BinOp::Div,
        _ => return None,
    })
}

/// Builds the expression `pair` whose root sits at nesting `depth`.
fn build_expr(mut pair: Pair<'_, Rule>, depth: usize) -> Result<Expr> {
    // A precedence level with a single child is no node: step down to it without recursing,
    // so a parenthesis costs two stack frames, not one per level of the grammar.
    while matches!(
        pair.as_rule(),
        Rule::expr
            | Rule::and_expr
            | Rule::not_expr
            | Rule::cmp_expr
            | Rule::cat_expr
            | Rule::add_expr
            | Rule::mul_expr
            | Rule::unary
            | Rule::postfix
    ) {
        let mut inner = pair.clone().into_inner();
        match (inner.next(), inner.next()) {
            (Some(only), None) => pair = only,
            _ => break,
        }
    }
    let pos = pos_of(&pair);
    if depth > MAX_DEPTH {
        return Err(too_deep(pos));
    }
    match pair.as_rule() {
        Rule::expr
        | Rule::and_expr
        | Rule::cmp_expr
        | Rule::cat_expr
        | Rule::add_expr
        | Rule::mul_expr => build_chain(pair, depth),
        Rule::not_expr | Rule::unary => build_prefixed(pair, depth),
        Rule::postfix => {
            let mut parts: Vec<Pair<'_, Rule>> = pair.into_inner().collect();
            let fields = parts.split_off(1.min(parts.len()));
            let primary = parts.pop().ok_or_else(|| internal(pos))?;
            // The last field is the root; the primary, deepest and first, sits under them all.
            let mut e = build_expr(primary, depth + fields.len())?;
            for f in fields {
                let field = if f.as_str()[1..].eq_ignore_ascii_case("value") {
                    Field::Value
                } else {
                    Field::Revision
                };
                e = Expr { pos: pos_of(&f), kind: ExprKind::Field(Box::new(e), field) };
            }
            Ok(e)
        }
        Rule::kw_null => Ok(Expr { pos, kind: ExprKind::Lit(Value::Null) }),
        Rule::kw_true => Ok(Expr { pos, kind: ExprKind::Lit(Value::Bool(true)) }),
        Rule::kw_false => Ok(Expr { pos, kind: ExprKind::Lit(Value::Bool(false)) }),
        Rule::int => {
            let n: i64 =
                pair.as_str().parse().map_err(|_| error(pos, "integer literal out of range"))?;
            Ok(Expr { pos, kind: ExprKind::Lit(Value::Int(n)) })
        }
        Rule::string => Ok(Expr { pos, kind: ExprKind::Lit(Value::Bytes(unescape(pair)?)) }),
        Rule::unterminated_string => Err(error(pos, "unterminated string")),
        Rule::param => {
            let name = pair.as_str()[1..].to_string();
            Ok(Expr { pos, kind: ExprKind::Param(name) })
        }
        Rule::ident => Ok(Expr { pos, kind: ExprKind::Var(pair.as_str().to_string()) }),
        Rule::call => {
            let mut c = Children::of(pair);
            let name = c.next()?.as_str().to_ascii_uppercase();
            let builtin = match name.as_str() {
                "INT" => Builtin::Int,
                "STR" => Builtin::Str,
                _ => Builtin::Len,
            };
            let arg = build_expr(c.next()?, depth + 1)?;
            Ok(Expr { pos, kind: ExprKind::Call(builtin, Box::new(arg)) })
        }
        Rule::get_expr => {
            let mut c = Children::of(pair);
            c.next()?; // GET
            let key = Box::new(build_expr(c.next()?, depth + 1)?);
            let at = match c.next_if(Rule::kw_at) {
                Some(_) => Some(Box::new(build_expr(c.next()?, depth + 1)?)),
                None => None,
            };
            Ok(Expr { pos, kind: ExprKind::Get { key, at } })
        }
        Rule::exists_expr => {
            let mut c = Children::of(pair);
            c.next()?; // EXISTS
            let key = build_expr(c.next()?, depth + 1)?;
            Ok(Expr { pos, kind: ExprKind::Exists(Box::new(key)) })
        }
        Rule::paren => {
            let mut c = Children::of(pair);
            build_expr(c.next()?, depth + 1)
        }
        _ => Err(internal(pos)),
    }
}

/// `a op b op c ...`, left-associative: with n operators the k-th (from 1) sits at
/// `depth + n - k`, its right operand one below it, and the first operand at `depth + n`.
fn build_chain(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr> {
    let pos = pos_of(&pair);
    let mut parts = pair.into_inner();
    let first = parts.next().ok_or_else(|| internal(pos))?;
    let rest: Vec<Pair<'_, Rule>> = parts.collect();
    let n = rest.len() / 2;
    // The first operand is the deepest node and the first token: it is refused there.
    let mut lhs = build_expr(first, depth + n)?;
    for (k, op_and_rhs) in rest.chunks(2).enumerate() {
        let [op, rhs] = op_and_rhs else { return Err(internal(pos)) };
        let binop = binop(op).ok_or_else(|| internal(pos))?;
        let rhs = build_expr(rhs.clone(), depth + n - k)?;
        lhs = Expr { pos: pos_of(op), kind: ExprKind::Binary(binop, Box::new(lhs), Box::new(rhs)) };
    }
    Ok(lhs)
}

/// `NOT NOT x` or `- - x`: the last prefix is innermost. A `-` right before an integer
/// literal folds into it (so `-9223372036854775808` is a literal).
fn build_prefixed(pair: Pair<'_, Rule>, depth: usize) -> Result<Expr> {
    let pos = pos_of(&pair);
    let mut parts: Vec<Pair<'_, Rule>> = pair.into_inner().collect();
    let operand = parts.pop().ok_or_else(|| internal(pos))?;
    let mut prefixes = parts;
    let mut folded = None;
    if let Some(last) = prefixes.last() {
        if last.as_rule() == Rule::neg {
            if let Some(digits) = bare_int(&operand) {
                let at = pos_of(last);
                let n: i64 = format!("-{digits}")
                    .parse()
                    .map_err(|_| error(at, "integer literal out of range"))?;
                folded = Some(Expr { pos: at, kind: ExprKind::Lit(Value::Int(n)) });
                prefixes.pop();
            }
        }
    }
    // The i-th prefix sits at `depth + i`: refused at the first one too deep.
    let n = prefixes.len();
    if let Some(first_too_deep) = prefixes.get((MAX_DEPTH + 1).saturating_sub(depth)) {
        return Err(too_deep(pos_of(first_too_deep)));
    }
    let mut e = match folded {
        Some(e) if depth + n > MAX_DEPTH => return Err(too_deep(e.pos)),
        Some(e) => e,
        None => build_expr(operand, depth + n)?,
    };
    for p in prefixes.iter().rev() {
        let kind = if p.as_rule() == Rule::neg {
            ExprKind::Neg(Box::new(e))
        } else {
            ExprKind::Not(Box::new(e))
        };
        e = Expr { pos: pos_of(p), kind };
    }
    Ok(e)
}

/// The digits of a `postfix` that is nothing but an integer literal.
fn bare_int<'i>(postfix: &Pair<'i, Rule>) -> Option<&'i str> {
    let mut inner = postfix.clone().into_inner();
    let only = inner.next()?;
    (inner.next().is_none() && only.as_rule() == Rule::int).then(|| only.as_str())
}

/// A string literal's bytes, its escapes decoded.
fn unescape(pair: Pair<'_, Rule>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for part in pair.into_inner() {
        let s = part.as_str();
        if part.as_rule() == Rule::str_raw {
            out.extend_from_slice(s.as_bytes());
            continue;
        }
        let byte = match &s[1..] {
            "\"" => b'"',
            "\\" => b'\\',
            "n" => b'\n',
            "r" => b'\r',
            "t" => b'\t',
            "0" => 0,
            hex if hex.len() == 3 && hex.starts_with('x') => {
                u8::from_str_radix(&hex[1..], 16).map_err(|_| internal(pos_of(&part)))?
            }
            other => {
                return Err(error(pos_of(&part), format!("unknown escape `\\{other}` in string")))
            }
        };
        out.push(byte);
    }
    Ok(out)
}
