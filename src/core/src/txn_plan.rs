//! A transaction across partitions, planned and judged: which partition runs which compares
//! and steps (its part), and what the parts' prepare answers add up to. Pure: the server's
//! coordinator (`server::shard::txn`) sends the parts and calls these with what came back.
//!
//! Owns: the split of one compare / then / else into parts (each step keeps its place, so the
//! answer lists results in the caller's order) and the rule that turns the parts' answers into
//! commit-which-branch or abort. Must never: commit a branch that failed in any part.

use kahuna_protocol::{ErrorCode, Reply, WireError};

use crate::command::{TxnCompare, TxnStep};

/// One partition's share of a transaction, with where each step sits in the whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Part {
    pub partition: u64,
    pub compare: Vec<TxnCompare>,
    pub then: Vec<TxnStep>,
    pub then_at: Vec<usize>,
    pub otherwise: Vec<TxnStep>,
    pub otherwise_at: Vec<usize>,
}

impl Part {
    /// A key of the part (where it is routed).
    pub fn first_key(&self) -> &[u8] {
        self.compare
            .first()
            .map(|c| c.key.as_slice())
            .or_else(|| self.then.iter().chain(&self.otherwise).next().map(|s| s.key()))
            .unwrap_or_default()
    }
}

/// The transaction's first key: its record lives in this key's partition (the same key the
/// request is routed by).
pub fn primary<'a>(
    compare: &'a [TxnCompare],
    then: &'a [TxnStep],
    otherwise: &'a [TxnStep],
) -> &'a [u8] {
    compare
        .first()
        .map(|c| c.key.as_slice())
        .or_else(|| then.iter().chain(otherwise).next().map(|s| s.key()))
        .unwrap_or_default()
}

/// Every name the transaction touches, sorted, once each.
pub fn names(compare: &[TxnCompare], then: &[TxnStep], otherwise: &[TxnStep]) -> Vec<Vec<u8>> {
    let mut all: Vec<Vec<u8>> = compare
        .iter()
        .map(|c| c.key.clone())
        .chain(then.iter().chain(otherwise).map(|s| s.key().to_vec()))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Splits the transaction by the partition `locate` names for each key; the part of the
/// primary key comes first.
pub fn plan(
    compare: &[TxnCompare],
    then: &[TxnStep],
    otherwise: &[TxnStep],
    locate: &dyn Fn(&[u8]) -> u64,
) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    let part_of = |key: &[u8], parts: &mut Vec<Part>| -> usize {
        let id = locate(key);
        match parts.iter().position(|p| p.partition == id) {
            Some(i) => i,
            None => {
                parts.push(Part { partition: id, ..Part::default() });
                parts.len() - 1
            }
        }
    };
    part_of(primary(compare, then, otherwise), &mut parts);
    for c in compare {
        let i = part_of(&c.key, &mut parts);
        parts[i].compare.push(c.clone());
    }
    for (at, s) in then.iter().enumerate() {
        let i = part_of(s.key(), &mut parts);
        parts[i].then.push(s.clone());
        parts[i].then_at.push(at);
    }
    for (at, s) in otherwise.iter().enumerate() {
        let i = part_of(s.key(), &mut parts);
        parts[i].otherwise.push(s.clone());
        parts[i].otherwise_at.push(at);
    }
    parts
}

/// What the prepares add up to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Commit the `then` branch (`succeeded`) or the `else` one; `results` in the caller's order.
    Commit { succeeded: bool, results: Vec<Result<Reply, WireError>> },
    /// Abort: a write step of the branch the compares chose failed (its error), or an answer
    /// did not fit its part.
    Abort(WireError),
}

/// Judges the parts' prepare answers (each: whether its compares held, then its `then` results
/// followed by its `else` results).
pub fn judge(
    parts: &[Part],
    answers: Vec<(bool, Vec<Result<Reply, WireError>>)>,
    then_len: usize,
    otherwise_len: usize,
) -> Verdict {
    let bad = || {
        Verdict::Abort(WireError::new(
            ErrorCode::Internal,
            "a prepare answer does not fit its part",
        ))
    };
    if answers.len() != parts.len() {
        return bad();
    }
    let succeeded = answers.iter().all(|(held, _)| *held);
    let len = if succeeded { then_len } else { otherwise_len };
    let mut results: Vec<Option<Result<Reply, WireError>>> = vec![None; len];
    for (p, (_, mut res)) in parts.iter().zip(answers) {
        if res.len() != p.then.len() + p.otherwise.len() {
            return bad();
        }
        let (at, mine) = if succeeded {
            res.truncate(p.then.len());
            (&p.then_at, res)
        } else {
            (&p.otherwise_at, res.split_off(p.then.len()))
        };
        for (i, r) in at.iter().zip(mine) {
            if *i >= len {
                return bad();
            }
            results[*i] = Some(r);
        }
    }
    let mut out = Vec::with_capacity(len);
    // The first failed write step in the caller's order is the transaction's error.
    let steps_of = |i: usize| {
        parts.iter().find_map(|p| {
            let (steps, at) =
                if succeeded { (&p.then, &p.then_at) } else { (&p.otherwise, &p.otherwise_at) };
            at.iter().position(|a| *a == i).map(|j| &steps[j])
        })
    };
    for (i, r) in results.into_iter().enumerate() {
        let Some(r) = r else { return bad() };
        if let (Err(e), Some(s)) = (&r, steps_of(i)) {
            if s.writes() {
                return Verdict::Abort(e.clone());
            }
        }
        out.push(r);
    }
    Verdict::Commit { succeeded, results: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str) -> TxnStep {
        TxnStep::Set { key: k.into(), value: b"v".to_vec(), ttl_ms: 0 }
    }
    fn get(k: &str) -> TxnStep {
        TxnStep::Get { key: k.into() }
    }
    fn cmp(k: &str) -> TxnCompare {
        TxnCompare { key: k.into(), target: 0, op: 0, value: vec![], number: 0 }
    }
    /// Keys below "m" live in partition 1, the rest in 2.
    fn locate(k: &[u8]) -> u64 {
        if k < b"m".as_slice() {
            1
        } else {
            2
        }
    }

    #[test]
    fn parts_keep_each_step_in_its_place_and_the_primary_first() {
        let then = vec![set("x"), get("a"), set("b"), set("y")];
        let otherwise = vec![get("z")];
        let parts = plan(&[cmp("q")], &then, &otherwise, &locate);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].partition, 2, "the compare's key is the primary");
        assert_eq!(parts[0].then_at, vec![0, 3]);
        assert_eq!(parts[0].otherwise_at, vec![0]);
        assert_eq!(parts[1].then_at, vec![1, 2]);
        assert_eq!(parts[1].first_key(), b"a");
        assert_eq!(primary(&[], &then, &otherwise), b"x");
        assert_eq!(names(&[cmp("q")], &then, &otherwise).len(), 6);
        assert_eq!(plan(&[], &[set("a"), set("b")], &[], &locate).len(), 1);
    }

    #[test]
    fn verdicts_table() {
        let then = vec![set("a"), get("x"), set("y")];
        let otherwise = vec![get("b")];
        let parts = plan(&[cmp("a"), cmp("z")], &then, &otherwise, &locate);
        let ok = |r: u64| Ok(Reply::KvSet { revision: r });
        let nf = || Err(WireError::new(ErrorCode::NotFound, "key not found"));
        let conflict = || Err(WireError::new(ErrorCode::Conflict, "lock held"));
        type Answers = Vec<(bool, Vec<Result<Reply, WireError>>)>;
        type Want = Result<(bool, usize), ErrorCode>;
        let cases: Vec<(&str, Answers, Want)> = vec![
            (
                "all held: then, in the caller's order",
                vec![(true, vec![ok(1), nf()]), (true, vec![nf(), ok(2)])],
                Ok((true, 3)),
            ),
            (
                "one compare failed: else",
                vec![(true, vec![ok(1), nf()]), (false, vec![nf(), ok(2)])],
                Ok((false, 1)),
            ),
            (
                "a chosen write failed: abort with its error",
                vec![(true, vec![ok(1), nf()]), (true, vec![nf(), conflict()])],
                Err(ErrorCode::Conflict),
            ),
            (
                "a failed write in the branch not taken does not matter",
                vec![(false, vec![conflict(), nf()]), (true, vec![nf(), conflict()])],
                Ok((false, 1)),
            ),
            ("an answer missing", vec![(true, vec![ok(1), nf()])], Err(ErrorCode::Internal)),
            (
                "an answer of the wrong length",
                vec![(true, vec![ok(1)]), (true, vec![nf(), ok(2)])],
                Err(ErrorCode::Internal),
            ),
        ];
        for (name, answers, want) in cases {
            let got = match judge(&parts, answers, then.len(), otherwise.len()) {
                Verdict::Commit { succeeded, results } => Ok((succeeded, results.len())),
                Verdict::Abort(e) => Err(e.code),
            };
            assert_eq!(got, want, "{name}");
        }
        // The results come back in the caller's order.
        let answers = vec![(true, vec![ok(1), nf()]), (true, vec![ok(7), ok(2)])];
        let Verdict::Commit { results, .. } = judge(&parts, answers, 3, 1) else { panic!() };
        assert_eq!(results, vec![ok(1), ok(7), ok(2)]);
    }
}
