//! Table-driven tests of the parser, the interpreter (over an in-memory [`Host`]) and the
//! static key analysis.

use std::collections::BTreeMap;

use super::*;

// ---------------------------------------------------------------------------------------------
// An in-memory host: every version of every key, a revision counter, staged by cloning.

/// One version of a key: the revision that wrote it and the value (None: a delete).
type Version = (u64, Option<Vec<u8>>);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MemHost {
    revision: u64,
    /// Every version of a key, oldest first.
    versions: BTreeMap<Vec<u8>, Vec<Version>>,
    /// The options of each key's last SET, and its last EXTEND.
    set_options: BTreeMap<Vec<u8>, SetOptions>,
    extended: BTreeMap<Vec<u8>, u64>,
}

impl MemHost {
    fn with(pairs: &[(&str, &str)]) -> MemHost {
        let mut h = MemHost::default();
        for (k, v) in pairs {
            h.set(k.as_bytes(), v.as_bytes(), &SetOptions::default()).unwrap();
        }
        h
    }

    fn current(&self, key: &[u8]) -> Option<(Vec<u8>, u64)> {
        match self.versions.get(key)?.last()? {
            (rev, Some(v)) => Some((v.clone(), *rev)),
            (_, None) => None,
        }
    }

    fn value(&self, key: &str) -> Option<String> {
        self.current(key.as_bytes()).map(|(v, _)| String::from_utf8(v).unwrap())
    }
}

impl Host for MemHost {
    fn get(&mut self, key: &[u8], revision: u64) -> Result<Option<(Vec<u8>, u64)>, String> {
        if revision == 0 {
            return Ok(self.current(key));
        }
        let versions = self.versions.get(key).map(Vec::as_slice).unwrap_or(&[]);
        Ok(match versions.iter().rev().find(|(rev, _)| *rev <= revision) {
            Some((rev, Some(v))) => Some((v.clone(), *rev)),
            _ => None,
        })
    }

    fn exists(&mut self, key: &[u8]) -> Result<bool, String> {
        Ok(self.current(key).is_some())
    }

    fn set(&mut self, key: &[u8], value: &[u8], opts: &SetOptions) -> Result<u64, String> {
        let current = self.current(key);
        if opts.nx && current.is_some() {
            return Err("condition failed: key exists".into());
        }
        if opts.xx && current.is_none() {
            return Err("condition failed: key does not exist".into());
        }
        if let Some(want) = &opts.cmp_value {
            if current.as_ref().map(|(v, _)| v) != Some(want) {
                return Err("condition failed: value differs".into());
            }
        }
        if let Some(want) = opts.cmp_revision {
            if current.as_ref().map_or(0, |(_, r)| *r) != want {
                return Err("condition failed: revision differs".into());
            }
        }
        self.revision += 1;
        self.versions.entry(key.to_vec()).or_default().push((self.revision, Some(value.to_vec())));
        self.set_options.insert(key.to_vec(), opts.clone());
        Ok(self.revision)
    }

    fn delete(&mut self, key: &[u8]) -> Result<bool, String> {
        if self.current(key).is_none() {
            return Ok(false);
        }
        self.revision += 1;
        self.versions.entry(key.to_vec()).or_default().push((self.revision, None));
        Ok(true)
    }

    fn extend(&mut self, key: &[u8], ttl_ms: u64) -> Result<(), String> {
        if self.current(key).is_none() {
            return Err("no such key".into());
        }
        self.extended.insert(key.to_vec(), ttl_ms);
        Ok(())
    }
}

/// Runs `script` the way the server does: on a staged copy of `store`, kept only on success.
fn run_txn(
    store: &mut MemHost,
    script: &Script,
    params: &BTreeMap<String, Value>,
) -> Result<Value, ScriptError> {
    let mut staged = store.clone();
    let result = script.run(&mut staged, params);
    if result.is_ok() {
        *store = staged;
    }
    result
}

fn s(text: &str) -> Value {
    Value::Bytes(text.as_bytes().to_vec())
}

fn params(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn nested_ifs(n: usize) -> String {
    format!("{}{}", "IF true THEN\n".repeat(n), "END\n".repeat(n))
}

// ---------------------------------------------------------------------------------------------
// The parser

#[test]
fn parser_accepts() {
    let programs: &[&str] = &[
        "",
        "\n\n# only a comment\n",
        "RETURN 1",
        "RETURN",
        "let x = 1; LET y = x; Return y",
        "LET x = 1 # trailing comment\n  ;; LET y = 2 ;\n",
        "LET a = \"q\\\"uote\\\\ \\n \\t \\r \\0 \\x41 ünïcødé\"",
        "LET _x9 = -9223372036854775808",
        "LET x = - - 5",
        "LET b = NOT NOT true AND false OR null == null",
        "LET c = 1 + 2 * 3 - 4 / 5 .. \"s\" .. 7 >= 1",
        "LET r = (GET \"k\").value .. (GET @k AT 3).revision",
        "LET e = EXISTS @k",
        "LET v = GET ptr.value",
        "LET n = INT(\"42\") + LEN(STR(7)) + int(\"1\")",
        "GET \"k\"\nGET \"k\" AT 5\nEXISTS \"k\"",
        "SET \"k\" \"v\"",
        "SET @k @v NX EX 1000",
        "set k v xx ex 5",
        "SET k 1 CMP \"0\" EX 10",
        "SET k (n + 1) CMPREV r.revision",
        "ESET \"lease\" @owner NX EX 30000",
        "DELETE @k; EXTEND @k 5000",
        "IF x THEN END",
        "IF a == 1 THEN\n  SET \"k\" 1\nELSE\n  IF b THEN RETURN 2 ELSE RETURN 3 END\nEND",
        "FOR i IN 0..10 DO\n  SET (\"k\" .. i) i\nEND",
        "FOR i IN @a - 1..n * 2 DO END",
        "If true Then Return 1 Else Throw \"no\" End",
        "THROW \"no such account\"",
        "THROW \"bad amount: \" .. @amount",
        "LET x = 1\r\nLET y = 2\r\n",
        "LET endx = 1; LET iff = 2; LET getter = 3",
        "LET x = @end .. @if",
    ];
    for src in programs {
        if let Err(e) = parse(src) {
            panic!("{src:?} was refused: {e}");
        }
    }
    // The deepest nesting accepted: 63 IFs, the innermost condition at level 64.
    parse(&nested_ifs(63)).unwrap();
    // Parentheses: a statement (1), its expression (2), then 62 of them.
    parse(&format!("LET x = {}1{}", "(".repeat(62), ")".repeat(62))).unwrap();
    // The longest source accepted.
    let long = format!("RETURN \"{}\"", "a".repeat(MAX_SCRIPT_BYTES - 9));
    assert_eq!(long.len(), MAX_SCRIPT_BYTES);
    parse(&long).unwrap();
}

#[test]
fn parser_refuses_with_positions() {
    let oversize = format!("RETURN \"{}\"", "a".repeat(MAX_SCRIPT_BYTES));
    let deep_parens = format!("LET x = {}1{}", "(".repeat(70), ")".repeat(70));
    let parens_63 = format!("LET x = {}1{}", "(".repeat(63), ")".repeat(63));
    let long_chain = format!("LET x = 1{}", " + 1".repeat(70));
    let get_run = format!("RETURN {}\"k\"", "GET ".repeat(100));
    let not_run = format!("RETURN {}true", "NOT ".repeat(100));
    let ifs_64 = nested_ifs(64);
    let ifs_65 = nested_ifs(65);
    let cases: Vec<(&str, u32, u32, &str)> = vec![
        // Missing END: found at the end of the input.
        ("IF true THEN\n  LET x = 1\n", 3, 1, "expected a new line or `;`, a statement, `ELSE`"),
        ("FOR i IN 0..3 DO\nLET x = i", 2, 10, "`END`"),
        // Bad tokens.
        ("LET x = 1 $", 1, 11, "unexpected `$`"),
        ("LET x = 1 2", 1, 11, "unexpected `2`; expected end of input"),
        ("LET x = 1 LET y = 2", 1, 11, "unexpected `LET`"),
        ("x = 1", 1, 1, "expected a statement"),
        ("SETk v", 1, 1, "expected a statement"),
        ("ELSE", 1, 1, "unexpected `ELSE`"),
        ("LET end = 5", 1, 5, "unexpected `end`; expected a name"),
        ("LET = 5", 1, 5, "expected a name"),
        ("LET x == 1", 1, 8, "expected an expression"),
        ("LET x = y.foo", 1, 10, "unexpected `.`"),
        ("LET x = 12abc", 1, 9, "unexpected `12abc`"),
        ("IF x THEN ELSE END END", 1, 20, "unexpected `END`"),
        ("FOR i IN 0 10 DO END", 1, 12, "expected `..`"),
        ("IF x\nTHEN END", 1, 5, "`THEN`"),
        ("RETURN 1 +", 1, 11, "expected an expression"),
        ("LET x = (1 + 2", 1, 15, "expected `)`"),
        ("LET x = INT(\"1\"", 1, 16, "expected `)`"),
        // Strings.
        ("LET x = \"abc\nLET y = 2", 1, 9, "unterminated string"),
        ("RETURN \"abc\\\"", 1, 8, "unterminated string"),
        ("LET x = \"a\\qb\"", 1, 11, "unknown escape `\\q`"),
        ("LET x = \"\\x4\"", 1, 10, "unknown escape `\\x`"),
        // Commands.
        ("SET \"k\"", 1, 8, "unexpected end of input; expected an expression"),
        ("SET \"k\"\nDELETE \"k\"", 1, 8, "unexpected end of line; expected an expression"),
        ("SET \"k\" 1 + 2", 1, 11, "unexpected `+`"),
        ("DELETE", 1, 7, "expected an expression"),
        ("EXTEND \"k\"", 1, 11, "expected an expression"),
        ("GET \"k\" AT", 1, 11, "expected an expression"),
        ("SET k v NX XX", 1, 12, "at most one condition"),
        ("SET k v CMP 1 CMPREV 2", 1, 15, "at most one condition"),
        ("SET k v EX 5 EX 6", 1, 14, "EX given twice"),
        ("SET k v EX", 1, 11, "expected an expression"),
        // Literals.
        ("LET x = 99999999999999999999", 1, 9, "integer literal out of range"),
        ("LET x = -9223372036854775809", 1, 9, "integer literal out of range"),
        // Nesting and size.
        (&deep_parens, 1, 73, "nesting deeper than 64 levels"),
        (&parens_63, 1, 72, "nesting deeper than 64 levels"),
        (&long_chain, 1, 9, "nesting deeper than 64 levels"),
        (&get_run, 1, 8 + 64 * 4, "nesting deeper than 64 levels"),
        (&not_run, 1, 8 + 63 * 4, "nesting deeper than 64 levels"),
        (&ifs_64, 64, 4, "nesting deeper than 64 levels"),
        (&ifs_65, 65, 1, "nesting deeper than 64 levels"),
        (&oversize, 1, 1, "over the limit of 16384 bytes"),
    ];
    for (src, line, column, message) in cases {
        let shown: String = src.chars().take(40).collect();
        let e = match parse(src) {
            Ok(_) => panic!("{shown:?} was accepted"),
            Err(e) => e,
        };
        assert_eq!((e.line, e.column), (line, column), "{shown:?}: {e}");
        assert!(e.message.contains(message), "{shown:?}: {e} (wanted {message:?})");
    }
}

#[test]
fn pathological_nesting_is_an_error_not_a_crash() {
    // Chains the pre-scan does not count: pest's stack guard or the builder refuses them.
    for src in [
        format!("RETURN GET 1{}", " AT GET 1".repeat(1500)),
        format!("RETURN {}1", "-".repeat(MAX_SCRIPT_BYTES - 8)),
        format!("RETURN {}", "NOT ".repeat(4000)),
        format!("RETURN 1{}", "+1".repeat(8000)),
        format!("RETURN x{}", ".value".repeat(2000)),
    ] {
        let e = parse(&src).unwrap_err();
        assert!(e.message.contains("nesting deeper") || e.message.contains("expected"), "{e}");
    }
}

#[test]
fn parse_error_display() {
    let e = parse("LET x = 1 $").unwrap_err();
    assert_eq!(e.to_string(), "line 1, column 11: unexpected `$`; expected end of input, a new line or `;`, or an operator");
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().starts_with("line 1, column 11"));
}

// ---------------------------------------------------------------------------------------------
// The interpreter

enum Expect {
    Is(Value),
    Thrown(&'static str),
    Failed(u32, u32, &'static str),
    TooManySteps,
}

struct Case {
    src: &'static str,
    params: Vec<(&'static str, Value)>,
    store: Vec<(&'static str, &'static str)>,
    expect: Expect,
}

fn case(src: &'static str, expect: Expect) -> Case {
    Case { src, params: Vec::new(), store: Vec::new(), expect }
}

fn item(value: &str, revision: u64) -> Value {
    Value::Item { value: value.as_bytes().to_vec(), revision }
}

#[test]
fn interpreter_table() {
    use Expect::*;
    let ab = vec![("a", "1"), ("b", "two")];
    let cases = vec![
        // Literals, arithmetic, precedence.
        case("RETURN 1 + 2 * 3", Is(Value::Int(7))),
        case("RETURN (1 + 2) * 3", Is(Value::Int(9))),
        case("RETURN 7 / 2 .. \"|\" .. -7 / 2", Is(s("3|-3"))),
        case("RETURN 10 - 2 - 3", Is(Value::Int(5))),
        case("RETURN -9223372036854775808", Is(Value::Int(i64::MIN))),
        case("RETURN \"a\" .. \"b\" .. 1", Is(s("ab1"))),
        case("RETURN \"\\x41\\n\"", Is(s("A\n"))),
        case("RETURN 1 < 2 AND \"a\" < \"b\" AND \"b\" >= \"b\"", Is(Value::Bool(true))),
        case("RETURN NOT 1 == 2", Is(Value::Bool(true))),
        case("RETURN null == null", Is(Value::Bool(true))),
        case("RETURN 1 == \"1\" OR null != false", Is(Value::Bool(true))),
        case("RETURN 1 == \"1\"", Is(Value::Bool(false))),
        case("RETURN true OR 1", Is(Value::Bool(true))), // short-circuit
        case("RETURN false AND 1", Is(Value::Bool(false))),
        case("RETURN INT(\"42\") + INT(\"-5\") + INT(3)", Is(Value::Int(40))),
        case("RETURN STR(12) .. STR(true) .. STR(\"x\")", Is(s("12truex"))),
        case("RETURN LEN(\"abc\")", Is(Value::Int(3))),
        case("", Is(Value::Null)),
        case("LET x = 1", Is(Value::Null)),
        case("RETURN", Is(Value::Null)),
        // Variables.
        case("LET x = 1; LET x = x + 1; RETURN x", Is(Value::Int(2))),
        case("LET x = y", Failed(1, 9, "unknown variable `y`")),
        case("LET X = 1; RETURN x", Failed(1, 19, "unknown variable `x`")),
        // Reads.
        Case { store: ab.clone(), ..case("RETURN GET \"a\"", Is(item("1", 1))) },
        Case { store: ab.clone(), ..case("RETURN (GET \"b\").value", Is(s("two"))) },
        Case { store: ab.clone(), ..case("RETURN (GET \"b\").revision", Is(Value::Int(2))) },
        Case { store: ab.clone(), ..case("RETURN GET \"zz\"", Is(Value::Null)) },
        Case { store: ab.clone(), ..case("RETURN EXISTS \"a\"", Is(Value::Bool(true))) },
        Case { store: ab.clone(), ..case("RETURN EXISTS \"zz\"", Is(Value::Bool(false))) },
        Case { store: ab.clone(), ..case("RETURN GET 1 == null", Is(Value::Bool(true))) },
        Case {
            store: vec![("a", "x"), ("a", "y")],
            ..case("RETURN (GET \"a\" AT 1).value .. (GET \"a\").value", Is(s("xy")))
        },
        Case {
            store: vec![("p", "a"), ("a", "pointed")],
            ..case("LET p = GET \"p\"\nRETURN (GET p.value).value", Is(s("pointed")))
        },
        case("RETURN (GET \"zz\").value", Failed(1, 18, ".value of null")),
        case("LET x = GET \"zz\" AT -1", Failed(1, 21, "AT wants a revision")),
        // IF / ELSE.
        Case {
            params: vec![("n", Value::Int(7))],
            ..case("IF @n > 5 THEN RETURN \"big\" ELSE RETURN \"small\" END", Is(s("big")))
        },
        Case {
            params: vec![("n", Value::Int(3))],
            ..case("IF @n > 5 THEN RETURN \"big\" ELSE RETURN \"small\" END", Is(s("small")))
        },
        case("IF false THEN RETURN 1 END\nRETURN 2", Is(Value::Int(2))),
        case("IF 1 THEN END", Failed(1, 4, "IF wants a bool, not int")),
        case("IF null THEN END", Failed(1, 4, "IF wants a bool, not null")),
        // FOR.
        case("LET s = 0\nFOR i IN 0..5 DO LET s = s + i END\nRETURN s", Is(Value::Int(10))),
        case("FOR i IN 5..0 DO THROW \"never\" END\nRETURN 1", Is(Value::Int(1))),
        case("FOR i IN 0..100 DO IF i == 3 THEN RETURN i END END", Is(Value::Int(3))),
        case("FOR i IN 0..3 DO END\nRETURN i", Is(Value::Int(2))),
        case("FOR i IN 0..\"3\" DO END", Failed(1, 13, "FOR wants an int, not string")),
        // RETURN / THROW.
        case("RETURN 1\nTHROW \"unreached\"", Is(Value::Int(1))),
        case("THROW \"boom\"", Thrown("boom")),
        case("THROW \"x=\" .. 5", Thrown("x=5")),
        case("IF true THEN\n  THROW \"deep\"\nEND", Thrown("deep")),
        // Parameters.
        Case {
            params: vec![("a", s("x")), ("b", Value::Int(1))],
            ..case("RETURN @a .. @b", Is(s("x1")))
        },
        case("RETURN @a .. @c", Failed(1, 8, "missing parameter @a")),
        // Writes and their options (checked against the store below as well).
        case("SET \"k\" \"v\"\nRETURN (GET \"k\").value", Is(s("v"))),
        case("SET 5 6\nRETURN (GET \"5\").value", Is(s("6"))),
        Case { store: ab.clone(), ..case("SET \"a\" \"v\" NX", Failed(1, 1, "key exists")) },
        case("SET \"a\" \"v\" NX\nRETURN 1", Is(Value::Int(1))),
        case("SET \"a\" \"v\" XX", Failed(1, 1, "key does not exist")),
        Case { store: ab.clone(), ..case("SET \"a\" \"v\" XX", Is(Value::Null)) },
        Case { store: ab.clone(), ..case("SET \"a\" \"v\" CMP 1", Is(Value::Null)) },
        Case {
            store: ab.clone(),
            ..case("SET \"a\" \"v\" CMP \"2\"", Failed(1, 1, "value differs"))
        },
        Case { store: ab.clone(), ..case("SET \"b\" \"v\" CMPREV 2", Is(Value::Null)) },
        Case {
            store: ab.clone(),
            ..case("LET x = 1\n  SET \"b\" \"v\" CMPREV 1", Failed(2, 3, "revision differs"))
        },
        case("SET \"k\" \"v\" EX 0", Failed(1, 16, "EX wants a positive number of ms")),
        case("SET \"k\" \"v\" CMPREV -1", Failed(1, 20, "CMPREV wants a revision")),
        case("SET \"k\" null", Failed(1, 9, "a value must be a string or an int, not null")),
        Case {
            store: ab.clone(),
            ..case("SET \"k\" GET \"a\"", Failed(1, 9, "not an item (use .value)"))
        },
        case("SET true \"v\"", Failed(1, 5, "a key must be a string or an int, not bool")),
        Case {
            store: ab.clone(),
            ..case("DELETE \"a\"\nRETURN EXISTS \"a\"", Is(Value::Bool(false)))
        },
        case("DELETE \"nothing\"", Is(Value::Null)),
        Case { store: ab.clone(), ..case("EXTEND \"a\" 100", Is(Value::Null)) },
        case("EXTEND \"zz\" 100", Failed(1, 1, "no such key")),
        case("EXTEND \"zz\" -1", Failed(1, 13, "EXTEND wants a positive number of ms")),
        // Type errors and arithmetic errors, at the operator.
        case("RETURN 1 + \"a\"", Failed(1, 10, "+ wants two ints, not int and string")),
        case("LET a = 1\nLET b = a .. true", Failed(2, 11, ".. wants strings or ints")),
        case("RETURN 1 < \"a\"", Failed(1, 10, "< wants two ints or two strings")),
        case("RETURN 1 AND true", Failed(1, 10, "AND wants bools, not int")),
        case("RETURN true AND 1", Failed(1, 13, "AND wants bools, not int")),
        case("RETURN NOT 1", Failed(1, 8, "NOT wants a bool")),
        case("RETURN -\"a\"", Failed(1, 8, "- wants an int")),
        case("RETURN 1 / (2 - 2)", Failed(1, 10, "division by zero")),
        case("RETURN 9223372036854775807 + 1", Failed(1, 28, "overflows")),
        case("RETURN -9223372036854775808 / -1", Failed(1, 29, "overflows")),
        case("RETURN 3037000500 * 3037000500", Failed(1, 19, "overflows")),
        case("RETURN INT(\"4x\")", Failed(1, 8, "INT wants a decimal integer, not \"4x\"")),
        case("RETURN INT(\"\")", Failed(1, 8, "INT wants a decimal integer")),
        case("RETURN INT(\"99999999999999999999\")", Failed(1, 8, "INT wants a decimal")),
        case("RETURN LEN(1)", Failed(1, 8, "LEN wants a string, not int")),
        case("RETURN (1).value", Failed(1, 11, ".value wants an item")),
        // The step limit: 1 (FOR) + 2 per iteration (the iteration, its LET).
        case("FOR i IN 0..4999 DO LET x = i END\nRETURN 0", Is(Value::Int(0))),
        case("FOR i IN 0..5000 DO LET x = i END", TooManySteps),
        case("FOR i IN 0..9223372036854775807 DO END", TooManySteps),
        case("LET i = 0\nFOR j IN 0..9999 DO LET i = i + 1 END\nRETURN i", TooManySteps),
    ];
    for c in cases {
        let script = parse(c.src).unwrap_or_else(|e| panic!("{:?}: {e}", c.src));
        let mut store = MemHost::with(&c.store);
        let result = run_txn(&mut store, &script, &params(&c.params));
        match (&c.expect, &result) {
            (Expect::Is(want), Ok(got)) => assert_eq!(got, want, "{:?}", c.src),
            (Expect::Thrown(want), Err(ScriptError::Thrown(got))) => {
                assert_eq!(got, want, "{:?}", c.src)
            }
            (
                Expect::Failed(line, column, want),
                Err(ScriptError::Failed { line: l, column: col, message }),
            ) => {
                assert_eq!((l, col), (line, column), "{:?}: {message}", c.src);
                assert!(message.contains(want), "{:?}: {message} (wanted {want:?})", c.src);
            }
            (Expect::TooManySteps, Err(ScriptError::TooManySteps)) => {}
            _ => panic!("{:?}: got {result:?}", c.src),
        }
    }
}

#[test]
fn set_options_reach_the_host() {
    let mut store = MemHost::default();
    let script = parse(
        "SET \"p\" \"1\" NX EX 1500\nESET \"e\" @owner EX 30000\nSET \"p\" 2 CMP \"1\"\n\
         SET \"p\" 3 CMPREV 3\nEXTEND \"e\" 60000\nRETURN (GET \"p\").revision",
    )
    .unwrap();
    let got = run_txn(&mut store, &script, &params(&[("owner", s("me"))])).unwrap();
    assert_eq!(got, Value::Int(4));
    assert_eq!(store.value("p").as_deref(), Some("3"));
    assert_eq!(store.value("e").as_deref(), Some("me"));
    assert_eq!(
        store.set_options[b"e".as_slice()],
        SetOptions { ephemeral: true, nx: false, xx: false, ttl_ms: 30000, ..Default::default() }
    );
    assert_eq!(
        store.set_options[b"p".as_slice()],
        SetOptions { cmp_revision: Some(3), ..Default::default() }
    );
    assert_eq!(store.extended[b"e".as_slice()], 60000);
    // The first SET's options, seen on a fresh store.
    let mut fresh = MemHost::default();
    parse("SET \"p\" 1 NX EX 1500").unwrap().run(&mut fresh, &BTreeMap::new()).unwrap();
    assert_eq!(
        fresh.set_options[b"p".as_slice()],
        SetOptions { nx: true, ttl_ms: 1500, ..Default::default() }
    );
    let mut fresh = MemHost::with(&[("p", "1")]);
    parse("SET \"p\" 2 CMP \"1\" XX").unwrap_err();
    parse("SET \"p\" 2 CMP 1").unwrap().run(&mut fresh, &BTreeMap::new()).unwrap();
    assert_eq!(
        fresh.set_options[b"p".as_slice()],
        SetOptions { cmp_value: Some(b"1".to_vec()), ..Default::default() }
    );
}

const TRANSFER: &str = r#"
# Moves @amount from account @from to account @to; balances are decimal strings.
LET from = GET @from
LET to = GET @to
IF from == null OR to == null THEN THROW "no such account" END
LET amount = @amount
IF amount <= 0 THEN THROW "amount must be positive" END
LET balance = INT(from.value)
IF balance < amount THEN THROW "insufficient funds" END
SET @from STR(balance - amount) CMPREV from.revision
SET @to STR(INT(to.value) + amount) CMPREV to.revision
RETURN balance - amount
"#;

#[test]
fn bank_transfer() {
    let script = parse(TRANSFER).unwrap();
    let transfer = |from: &str, to: &str, amount: i64| {
        params(&[("from", s(from)), ("to", s(to)), ("amount", Value::Int(amount))])
    };
    let mut store = MemHost::with(&[("acct:alice", "100"), ("acct:bob", "5")]);

    let got = run_txn(&mut store, &script, &transfer("acct:alice", "acct:bob", 30)).unwrap();
    assert_eq!(got, Value::Int(70));
    assert_eq!(store.value("acct:alice").as_deref(), Some("70"));
    assert_eq!(store.value("acct:bob").as_deref(), Some("35"));

    // Every refusal leaves the store as it was.
    let before = store.clone();
    let refusals = [
        (transfer("acct:alice", "acct:bob", 71), "insufficient funds"),
        (transfer("acct:alice", "acct:carol", 1), "no such account"),
        (transfer("acct:alice", "acct:bob", 0), "amount must be positive"),
    ];
    for (p, want) in refusals {
        assert_eq!(run_txn(&mut store, &script, &p), Err(ScriptError::Thrown(want.into())));
        assert_eq!(store, before);
    }
    // To itself: the first SET moves the revision, so the second's CMPREV fails after a write
    // was staged; the run fails at that SET and the staged write is dropped.
    match run_txn(&mut store, &script, &transfer("acct:alice", "acct:alice", 10)) {
        Err(ScriptError::Failed { line: 11, column: 1, message }) => {
            assert!(message.contains("revision differs"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store, before);
    // A parameter of the wrong type fails where it is used.
    match run_txn(
        &mut store,
        &script,
        &params(&[("from", s("acct:alice")), ("to", s("acct:bob")), ("amount", s("ten"))]),
    ) {
        Err(ScriptError::Failed { line: 7, column: 11, message }) => {
            assert!(message.contains("<= wants two ints or two strings"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Which keys it touches is known before it runs.
    assert_eq!(
        script.static_keys(&transfer("acct:alice", "acct:bob", 1)),
        Some(vec![b"acct:alice".to_vec(), b"acct:bob".to_vec()])
    );
}

#[test]
fn budgets_bound_a_run() {
    let none = BTreeMap::new();
    let mut host = MemHost::default();
    // Exactly MAX_STEPS steps run; one more is refused.
    let exact = parse("FOR i IN 0..4999 DO LET x = i END\nLET y = 1").unwrap();
    assert_eq!(exact.run(&mut host, &none), Ok(Value::Null));
    let over = parse("FOR i IN 0..4999 DO LET x = i END\nLET y = 1\nLET z = 2").unwrap();
    assert_eq!(over.run(&mut host, &none), Err(ScriptError::TooManySteps));
    // Host calls.
    let reads =
        parse("FOR i IN 0..4000 DO LET x = EXISTS \"a\" OR EXISTS \"b\" OR EXISTS \"c\" END")
            .unwrap();
    assert_eq!(reads.run(&mut host, &none), Err(ScriptError::TooManySteps));
    // Operations: few steps, many expression nodes each.
    let sum = format!("LET x = 1{}", " + 1".repeat(60));
    let ops = parse(&format!("FOR i IN 0..900 DO\n{}END", format!("{sum}\n").repeat(10))).unwrap();
    assert_eq!(ops.run(&mut host, &none), Err(ScriptError::TooManySteps));
    // A value over MAX_VALUE_BYTES.
    let grow = parse("LET s = \"x\"\nFOR i IN 0..30 DO LET s = s .. s END").unwrap();
    match grow.run(&mut host, &none) {
        Err(ScriptError::Failed { line: 2, column: 29, message }) => {
            assert!(message.contains("over the limit of 1048576 bytes"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Bytes copied in all.
    let copy = parse(
        "LET s = \"x\"\nFOR i IN 0..20 DO LET s = s .. s END\n\
         FOR i IN 0..200 DO LET t = s END",
    )
    .unwrap();
    match copy.run(&mut host, &none) {
        Err(ScriptError::Failed { line: 3, column: 28, message }) => {
            assert!(message.contains("copied more than"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A parameter over MAX_VALUE_BYTES fails where it is read.
    let big = params(&[("v", Value::Bytes(vec![b'a'; MAX_VALUE_BYTES + 1]))]);
    match parse("LET x = 1\nSET \"k\" @v").unwrap().run(&mut host, &big) {
        Err(ScriptError::Failed { line: 2, column: 9, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn runs_are_deterministic() {
    let script = parse(
        "FOR i IN 0..50 DO SET (\"k\" .. i) (i * i) END\n\
         LET acc = \"\"\nFOR i IN 0..50 DO LET acc = acc .. (GET (\"k\" .. i)).value END\n\
         RETURN acc",
    )
    .unwrap();
    let (mut a, mut b) = (MemHost::default(), MemHost::default());
    let ra = run_txn(&mut a, &script, &BTreeMap::new());
    let rb = run_txn(&mut b, &script, &BTreeMap::new());
    assert_eq!(ra, rb);
    assert_eq!(a, b);
    assert!(ra.is_ok());
}

#[test]
fn script_error_display() {
    assert_eq!(ScriptError::Thrown("no".into()).to_string(), "script threw: no");
    let e = ScriptError::Failed { line: 2, column: 3, message: "bad".into() };
    assert_eq!(e.to_string(), "line 2, column 3: bad");
    assert!(ScriptError::TooManySteps.to_string().contains("10000 steps"));
    assert_eq!(item("v\u{e9}", 3).to_string(), "{value: \"v\u{e9}\", revision: 3}");
    assert_eq!(Value::Bytes(vec![b'a', 0xff]).to_string(), "a\u{fffd}");
}

// ---------------------------------------------------------------------------------------------
// Static keys

#[test]
fn static_keys_table() {
    let p = params(&[("k", s("b")), ("id", Value::Int(7)), ("flag", Value::Bool(true))]);
    let keys = |list: &[&str]| Some(list.iter().map(|k| k.as_bytes().to_vec()).collect::<Vec<_>>());
    let cases: Vec<(&str, Option<Vec<Vec<u8>>>)> = vec![
        ("RETURN 1", keys(&[])),
        ("GET \"a\"\nSET @k \"v\"", keys(&["a", "b"])),
        ("SET \"z\" 1; GET \"a\"; DELETE \"z\"; EXTEND \"m\" 5", keys(&["a", "m", "z"])),
        ("LET x = GET (\"acct:\" .. @id)", keys(&["acct:7"])),
        ("IF EXISTS \"c\" THEN SET \"a\" 1 ELSE SET \"b\" 2 END", keys(&["a", "b", "c"])),
        ("FOR i IN 0..3 DO SET \"x\" i END", keys(&["x"])),
        ("SET 5 (GET \"v\").value CMP (GET \"w\").value", keys(&["5", "v", "w"])),
        ("RETURN (GET @k AT (GET \"r\").revision).value", keys(&["b", "r"])),
        ("LET k = \"a\"\nGET k", None),
        ("FOR i IN 0..3 DO SET i 1 END", None),
        ("GET (GET \"a\").value", None),
        ("GET @missing", None),
        ("GET @flag", None),
        ("IF false THEN DELETE (\"x\" .. GET \"y\") END", None),
        ("GET (1 / 0)", None),
    ];
    for (src, want) in cases {
        let script = parse(src).unwrap_or_else(|e| panic!("{src:?}: {e}"));
        assert_eq!(script.static_keys(&p), want, "{src:?}");
    }
}
