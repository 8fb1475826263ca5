//! Scripts (see [`crate::script`]) run against one partition's state, as one step: every
//! write staged in a buffer of the script's own (its later reads see them), applied only if
//! the script ends without an error, so a THROW or a failed condition leaves nothing.
//!
//! Owns: the [`Host`] the interpreter reads and writes through, mapping each command to the
//! key/value state machine (`kv`), and the script's answer as JSON. Must never: touch a key the
//! script did not declare (its static keys, which routed it here), or write outside its
//! buffer before it finished.

use kahuna_protocol::{ErrorCode, Reply, WireError};

use super::{kv, ApplyCtx};
use crate::command::{script_params, Cond};
use crate::script::{Host, ScriptError, SetOptions, Value};
use crate::store::{Txn, WriteBuffer};

struct StateHost<'a, T: Txn> {
    buf: WriteBuffer<'a, T>,
    ctx: &'a ApplyCtx,
    keys: &'a [Vec<u8>],
}

impl<T: Txn> StateHost<'_, T> {
    fn declared(&self, key: &[u8]) -> Result<(), String> {
        if self.keys.iter().any(|k| k == key) {
            Ok(())
        } else {
            Err(format!("key {:?} is not among the script's keys", String::from_utf8_lossy(key)))
        }
    }
}

fn message(e: WireError) -> String {
    e.message
}

impl<T: Txn> Host for StateHost<'_, T> {
    fn get(&mut self, key: &[u8], revision: u64) -> Result<Option<(Vec<u8>, u64)>, String> {
        self.declared(key)?;
        match kv::get(&self.buf, key, revision, self.ctx.now_ms) {
            Ok(Reply::KvGet(it)) => Ok(Some((it.value, it.revision))),
            Err(e) if e.code == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(message(e)),
            Ok(other) => Err(format!("unexpected {other:?}")),
        }
    }

    fn exists(&mut self, key: &[u8]) -> Result<bool, String> {
        self.declared(key)?;
        match kv::exists(&self.buf, key, self.ctx.now_ms).map_err(message)? {
            Reply::KvExists { exists, .. } => Ok(exists),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8], opts: &SetOptions) -> Result<u64, String> {
        self.declared(key)?;
        if opts.ephemeral {
            return Err("ESET (ephemeral) is not run inside server-side scripts: a script is \
                        one replicated step; use SET"
                .into());
        }
        let cond = match (opts.nx, opts.xx, &opts.cmp_value, opts.cmp_revision) {
            (true, ..) => Cond::IfNotExists,
            (_, true, ..) => Cond::IfExists,
            (_, _, Some(v), _) => Cond::IfValue(v.clone()),
            (_, _, _, Some(r)) => Cond::IfRevision(r),
            _ => Cond::None,
        };
        match kv::set(&mut self.buf, key, value, opts.ttl_ms, &cond, self.ctx).map_err(message)? {
            Reply::KvSet { revision } => Ok(revision),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, String> {
        self.declared(key)?;
        match kv::delete(&mut self.buf, key, 0, self.ctx).map_err(message)? {
            Reply::KvDelete { deleted, .. } => Ok(deleted),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn extend(&mut self, key: &[u8], ttl_ms: u64) -> Result<(), String> {
        self.declared(key)?;
        kv::extend(&mut self.buf, key, ttl_ms, self.ctx).map(drop).map_err(message)
    }
}

/// Runs a script over `txn`: its answer as JSON, every write applied; or an error and nothing.
pub(super) fn run<T: Txn>(
    txn: &mut T,
    source: &str,
    params: &[(String, Vec<u8>)],
    keys: &[Vec<u8>],
    ctx: &ApplyCtx,
) -> Result<Reply, WireError> {
    let script = crate::script::parse(source).map_err(|e| {
        WireError::new(ErrorCode::Invalid, format!("the script does not parse: {e}"))
    })?;
    let (value, writes) = {
        let mut host = StateHost { buf: WriteBuffer::new(&*txn), ctx, keys };
        let r = script.run(&mut host, &script_params(params));
        (r, host.buf.into_writes())
    };
    let value = value.map_err(|e| match e {
        ScriptError::TooManySteps => WireError::new(ErrorCode::TooLarge, e.to_string()),
        other => WireError::new(ErrorCode::Conflict, format!("{other}; nothing was applied")),
    })?;
    for (k, v) in writes {
        match v {
            Some(v) => txn.put(k, v),
            None => txn.delete(k),
        }
    }
    Ok(Reply::Script { json: to_json(&value) })
}

/// A script's value as JSON: strings as UTF-8 (lossily), a GET's answer as
/// `{"value": …, "revision": N}`.
pub fn to_json(v: &Value) -> String {
    fn string(b: &[u8], out: &mut String) {
        out.push('"');
        for c in String::from_utf8_lossy(b).chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    let mut out = String::new();
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Bytes(b) => string(b, &mut out),
        Value::Item { value, revision } => {
            out.push_str("{\"value\": ");
            string(value, &mut out);
            out.push_str(&format!(", \"revision\": {revision}}}"));
        }
    }
    out
}
