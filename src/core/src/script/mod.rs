//! Kahuna's transaction scripts: a small language a client sends to run against one
//! partition's state in one step, parsed here into an AST and interpreted over a [`Host`].
//!
//! Owns: the grammar (`grammar.pest`), the parse into a bounded AST ([`parse`], [`ParseError`]
//! with line and column), the meaning of every statement and operator ([`Script::run`],
//! [`ScriptError`] with line and column), the budgets that bound a run ([`MAX_STEPS`],
//! [`MAX_OPS`], [`MAX_HOST_CALLS`], [`MAX_VALUE_BYTES`], [`MAX_RUN_BYTES`]) and the static key
//! analysis the server routes with ([`Script::static_keys`]).
//! Must never: touch a disk, a socket, an executor, the wall clock or a random source, nor let
//! hash-map order show: a script reads and writes only through its [`Host`], and the same
//! script, parameters and state give the same writes and answer on every replica. Nor may it
//! recurse, allocate or loop without a bound: sources, AST depth, steps, values and copies all
//! have limits, and hitting one is an error, never a panic.
//!
//! # The language
//!
//! Statements are separated by newlines or `;`; `#` starts a comment running to the end of the
//! line; keywords are case-insensitive (and reserved), identifiers `[a-zA-Z_][a-zA-Z0-9_]*` are
//! case-sensitive. A statement's header (up to `THEN` or `DO`) stays on one line. The reserved
//! words: AND AT CMP CMPREV DELETE DO ELSE END ESET EX EXISTS EXTEND FALSE FOR GET IF IN INT LEN
//! LET NOT NULL NX OR RETURN SET STR THEN THROW TRUE XX (a `@param` may still use one).
//!
//! ```text
//! LET x = <expr>                     # binds (or rebinds) x; one flat scope for the whole script
//! SET k v [NX|XX|EX ms|CMP v|CMPREV r]...   # persistent write; at most one of NX/XX/CMP/CMPREV
//! ESET k v [...]                     # the same, ephemeral
//! DELETE k
//! EXTEND k ms
//! GET k [AT rev]   /   EXISTS k      # also expressions: an item (or null), a bool
//! IF cond THEN ... [ELSE ...] END
//! FOR i IN a..b DO ... END           # integers a, a+1, ..., b-1 (none when a >= b)
//! RETURN [expr]                      # ends the script with this value (null without one)
//! THROW expr                         # aborts: the host discards every write, the run errs
//! ```
//!
//! Expressions: literals (`"str"` with `\" \\ \n \r \t \0 \xHH` escapes, integers, `true`,
//! `false`, `null`), variables, parameters `@name`, `GET k [AT rev]`, `EXISTS k`, `e.value` and
//! `e.revision` of a GET result, `INT(e)` (a decimal string to an integer), `STR(e)` (an
//! integer or bool to its decimal string), `LEN(e)` (bytes in a string), and the operators, from
//! loosest to tightest: `OR`, `AND`, `NOT`, `== != < <= > >=` (not chained), `..`
//! (concatenation; integers are written in decimal), `+ -`, `* /` (i64, overflow and division
//! by zero are errors, `/` truncates), unary `-`, `.value`/`.revision`.
//!
//! The keys, values and numbers that commands take are *unary* expressions: a literal, a
//! variable, a parameter, a call, a parenthesised expression, a GET/EXISTS, maybe negated or
//! with `.value`/`.revision` (`GET ptr.value` reads the key stored in `ptr`; the field of a
//! GET's answer is `(GET k).value`). Anything with a binary operator needs parentheses:
//! `SET ("acct:" .. @id) (n + 1)`. Keys and values are strings; an integer stands for its
//! decimal string.
//!
//! Types are strict: `AND`, `OR`, `NOT`, `IF` want bools; arithmetic wants integers; ordering
//! compares two integers or two strings (bytewise); `==`/`!=` take any two values, and values
//! of different kinds are never equal (`null` equals only `null`).
//!
//! # Atomicity
//!
//! The interpreter writes through the [`Host`] as it goes; a [`Host`] stages those writes (its
//! reads seeing them) and applies them only when [`Script::run`] returns `Ok`. Any `Err`
//! ([`ScriptError::Thrown`] included) means: discard them all.

mod ast;
mod parse;
mod run;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

/// The longest source [`parse`] takes, in bytes.
pub const MAX_SCRIPT_BYTES: usize = 16 * 1024;
/// The most steps a run may take: every statement executed and every loop iteration is one.
pub const MAX_STEPS: u64 = 10_000;
/// The most expression nodes a run may evaluate (a step's work is bounded by the source, this
/// bounds the run's).
pub const MAX_OPS: u64 = 1_000_000;
/// The most calls a run may make to its [`Host`] (GET, EXISTS, SET, ESET, DELETE, EXTEND).
pub const MAX_HOST_CALLS: u64 = 10_000;
/// The deepest nesting [`parse`] accepts: blocks, statements, parentheses and operators each
/// count one level.
pub const MAX_DEPTH: usize = 64;
/// The largest string value a run may hold (a literal, a parameter, a value read, a
/// concatenation), in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// The most bytes of string values a run may copy in all (reads, variable and parameter
/// uses, concatenations): bounds both its memory and its time.
pub const MAX_RUN_BYTES: usize = 64 << 20;

/// A parsed script: an AST that [`Script::run`] interprets. Cheap to keep and run many times.
#[derive(Clone, Debug)]
pub struct Script {
    body: Vec<ast::Statement>,
}

/// Why a source is not a script, and where (1-based line and column, in characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The line of the offending token, from 1.
    pub line: u32,
    /// The column of the offending token, from 1, in characters.
    pub column: u32,
    /// What is wrong there.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Parses `source` into a [`Script`], refusing sources over [`MAX_SCRIPT_BYTES`] (at 1:1) and
/// nesting deeper than [`MAX_DEPTH`] (at the first token too deep).
pub fn parse(source: &str) -> Result<Script, ParseError> {
    parse::parse(source).map(|body| Script { body })
}

/// A script's value: what variables, parameters and expressions hold, and what a run returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// No value: a GET of a missing key, a run without RETURN.
    Null,
    /// A comparison's or EXISTS's answer, or a literal.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A string: any bytes (shown as UTF-8, lossily).
    Bytes(Vec<u8>),
    /// A GET's answer: the value and the revision that wrote it.
    Item {
        /// The stored value.
        value: Vec<u8>,
        /// The revision of the write that stored it.
        revision: u64,
    },
}

impl Value {
    /// The kind's name, as errors say it.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Bytes(_) => "string",
            Value::Item { .. } => "item",
        }
    }
}

impl fmt::Display for Value {
    /// Strings as their bytes (UTF-8, lossily, no quotes), an item as
    /// `{value: "...", revision: N}`, the rest as their literals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
            Value::Item { value, revision } => {
                write!(f, "{{value: {:?}, revision: {revision}}}", String::from_utf8_lossy(value))
            }
        }
    }
}

/// How a SET or ESET writes: what the script's options asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// ESET: the key lives as long as its TTL is extended, and is not persisted.
    pub ephemeral: bool,
    /// NX: only if the key does not exist.
    pub nx: bool,
    /// XX: only if the key exists.
    pub xx: bool,
    /// EX: time to live in milliseconds; 0 when the script gave none.
    pub ttl_ms: u64,
    /// CMP: only if the current value is this.
    pub cmp_value: Option<Vec<u8>>,
    /// CMPREV: only if the current revision is this.
    pub cmp_revision: Option<u64>,
}

/// What a script reads and writes through: the server implements it over one partition's state.
///
/// Writes must be staged: visible to this run's later reads, applied only when
/// [`Script::run`] returns `Ok`, discarded on any `Err`. An `Err(message)` from any method
/// fails the run with that message at the command's position.
pub trait Host {
    /// The value and revision of `key` at `revision` (0: the current one); `None` when the key
    /// does not exist (then).
    fn get(&mut self, key: &[u8], revision: u64) -> Result<Option<(Vec<u8>, u64)>, String>;
    /// Whether `key` exists now.
    fn exists(&mut self, key: &[u8]) -> Result<bool, String>;
    /// Writes `value` under `key` as `opts` say, returning the new revision; `Err` when a
    /// condition fails or the write is refused.
    fn set(&mut self, key: &[u8], value: &[u8], opts: &SetOptions) -> Result<u64, String>;
    /// Deletes `key`, answering whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool, String>;
    /// Extends `key`'s time to live to `ttl_ms` from now.
    fn extend(&mut self, key: &[u8], ttl_ms: u64) -> Result<(), String>;
}

/// Why a run did not finish: the host must discard every write it staged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScriptError {
    /// The script ran `THROW`, with this message.
    Thrown(String),
    /// A runtime error (a type mismatch, an unknown variable, a missing parameter, a host
    /// error such as a failed SET condition, a division by zero, an overflow, a value or copy
    /// budget exceeded) at this statement or expression (1-based line and column).
    Failed {
        /// The line of the failing statement or expression.
        line: u32,
        /// Its column, in characters.
        column: u32,
        /// What went wrong.
        message: String,
    },
    /// The run went over [`MAX_STEPS`], [`MAX_OPS`] or [`MAX_HOST_CALLS`].
    TooManySteps,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScriptError::Thrown(message) => write!(f, "script threw: {message}"),
            ScriptError::Failed { line, column, message } => {
                write!(f, "line {line}, column {column}: {message}")
            }
            ScriptError::TooManySteps => write!(
                f,
                "script ran too long (over {MAX_STEPS} steps, {MAX_OPS} operations or \
                 {MAX_HOST_CALLS} reads and writes)"
            ),
        }
    }
}

impl std::error::Error for ScriptError {}

impl Script {
    /// The keys the script may touch, when every key expression is a literal or a @param (None
    /// when a key depends on a read or a loop variable).
    ///
    /// More precisely: a key expression qualifies when it uses no variable and no GET/EXISTS
    /// (so `"acct:" .. @id` does); keys are sorted and listed once. `None` as well when a
    /// qualifying key cannot be computed (a missing parameter, a type error): the run would
    /// fail there.
    pub fn static_keys(&self, params: &BTreeMap<String, Value>) -> Option<Vec<Vec<u8>>> {
        run::static_keys(&self.body, params)
    }

    /// Runs the script against `host` with `params` (`@name` reads `params["name"]`),
    /// answering the value of its RETURN, or Null when it ends without one.
    pub fn run(
        &self,
        host: &mut dyn Host,
        params: &BTreeMap<String, Value>,
    ) -> Result<Value, ScriptError> {
        run::run(&self.body, host, params)
    }
}
