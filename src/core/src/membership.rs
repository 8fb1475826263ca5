//! The cluster's members: who they are, where they listen, and whether they may hold replicas.
//!
//! The member records live in the key space itself, under the reserved prefix
//! [`MEMBERS_PREFIX`], so they are replicated, persisted, backed up and read linearizably like any
//! other key, by the partition that owns that prefix (the *meta* range: it sorts first). Every
//! node reads them from there; no other copy is authoritative.
//!
//! Owns: the record format, the record keys, and the rules of who may join, drain and leave
//! ([`join`], [`register`], [`set_state`]). Must never: read or write storage (the server runs
//! these decisions over what it read, then writes with a compare-and-set on the revision it
//! read, so two racing changes cannot both land).

use crate::records::CorruptRecord;

/// Every member record's key starts with this (then the node id, 20 decimal digits, so the
/// records sort by id).
pub const MEMBERS_PREFIX: &[u8] = kahuna_protocol::types::MEMBERS_PREFIX;
/// `off` here stops the replica balancer (`kahuna-cli cluster balance off`); absent or `on`
/// lets it run.
pub const BALANCE_KEY: &[u8] = b"\0kahuna/balance";
/// The cluster's replication factor, as the first node to record itself had it: every
/// balancer plans with this one, whatever its own flag says.
pub const REPLICATION_KEY: &[u8] = b"\0kahuna/replication";

/// Whether a member may hold replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum MemberState {
    /// Holds and receives replicas.
    Active,
    /// Its replicas and leaderships move away; it receives none.
    Draining,
    /// Left the cluster for good once it held nothing; its id is never used again.
    Removed,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Draining => "draining",
            MemberState::Removed => "removed",
        }
    }
}

/// One node's record. The node writes it itself when it starts (its addresses may change
/// across restarts), and `join`/`drain`/`remove-node` change it.
#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Member {
    pub id: u64,
    /// Where clients reach it.
    pub client_addr: String,
    /// Where its shard 0 takes peer traffic (shard N: port + N).
    pub peer_addr: String,
    /// Its shard count.
    pub shards: u32,
    pub state: MemberState,
    /// `remove-node` (rather than `drain`) put it in `Draining`: once it holds nothing it
    /// becomes `Removed`.
    pub removing: bool,
}

impl Member {
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self).expect("serialising a member").into_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Member, CorruptRecord> {
        rkyv::from_bytes::<Member, rkyv::rancor::Error>(bytes)
            .map_err(|e| CorruptRecord { what: "member record", detail: e.to_string() })
    }
}

/// The key of node `id`'s record.
pub fn member_key(id: u64) -> Vec<u8> {
    let mut k = MEMBERS_PREFIX.to_vec();
    k.extend_from_slice(format!("{id:020}").as_bytes());
    k
}

/// What to write for a request that changes a record: `None` = nothing (already so).
pub type Change = Result<Option<Member>, String>;

/// A new node asks to join with an empty data directory. It may take an id that was never a
/// member; asking again with the same addresses (a join whose answer was lost) changes nothing.
/// An id in use or once used is refused: Raft knows a replica by its node id, and a machine
/// that lost its data must not answer for what its earlier life acknowledged.
pub fn join(existing: Option<&Member>, joining: &Member, shards_here: u32) -> Change {
    if joining.shards != shards_here {
        return Err(format!(
            "node {} runs {} shards and this cluster's nodes run {shards_here}: a partition \
             lives on the same shard index on every replica, so every node needs the same \
             --shards",
            joining.id, joining.shards
        ));
    }
    match existing {
        None => Ok(Some(Member { state: MemberState::Active, removing: false, ..joining.clone() })),
        Some(m) if m.state == MemberState::Removed => Err(format!(
            "node id {} was removed from this cluster and ids are never reused: start the \
             machine with a new --id",
            m.id
        )),
        Some(m)
            if m.peer_addr == joining.peer_addr
                && m.client_addr == joining.client_addr
                && m.state == MemberState::Active =>
        {
            Ok(None)
        }
        Some(m) => Err(format!(
            "node id {} is already a member (peer address {}): a machine that lost its data \
             joins again under a new --id",
            m.id, m.peer_addr
        )),
    }
}

/// A node with its data directory starts and records where it listens now. Its state stays
/// as it was (a draining node stays draining); a removed node is told so.
pub fn register(existing: Option<&Member>, me: &Member) -> Change {
    match existing {
        None => Ok(Some(Member { state: MemberState::Active, removing: false, ..me.clone() })),
        Some(m) if m.state == MemberState::Removed => {
            Err(format!("node {} was removed from the cluster; it holds no replicas", m.id))
        }
        Some(m)
            if m.peer_addr == me.peer_addr
                && m.client_addr == me.client_addr
                && m.shards == me.shards =>
        {
            Ok(None)
        }
        Some(m) => Ok(Some(Member {
            client_addr: me.client_addr.clone(),
            peer_addr: me.peer_addr.clone(),
            shards: me.shards,
            ..m.clone()
        })),
    }
}

/// What an operator asks of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// Move its replicas and leaderships away; it stays a member.
    Drain,
    /// Drain it, then remove it for good.
    Remove,
    /// Let a drained (not removed) member take replicas again.
    Activate,
    /// The balancer saw it hold nothing while being removed: it is gone.
    Retire,
}

/// The record after `ask`, or why not.
pub fn set_state(existing: Option<&Member>, id: u64, ask: Ask) -> Change {
    let Some(m) = existing else { return Err(format!("node {id} is not a member")) };
    if m.state == MemberState::Removed {
        return match ask {
            Ask::Remove | Ask::Retire => Ok(None),
            _ => Err(format!("node {id} was removed; ids are never reused")),
        };
    }
    let next = match ask {
        Ask::Drain => Member { state: MemberState::Draining, ..m.clone() },
        Ask::Remove => Member { state: MemberState::Draining, removing: true, ..m.clone() },
        Ask::Activate if m.removing => {
            return Err(format!("node {id} is being removed; it cannot take replicas again"))
        }
        Ask::Activate => Member { state: MemberState::Active, ..m.clone() },
        Ask::Retire if m.removing => Member { state: MemberState::Removed, ..m.clone() },
        Ask::Retire => return Ok(None),
    };
    Ok((next != *m).then_some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, peer: &str, state: MemberState) -> Member {
        Member {
            id,
            client_addr: format!("c{peer}"),
            peer_addr: peer.into(),
            shards: 2,
            state,
            removing: false,
        }
    }

    #[test]
    fn joins_take_new_ids_only_and_repeat_harmlessly() {
        let new = member(4, "a", MemberState::Active);
        // (existing record, joining, outcome: Some(true) = write, Some(false) = nothing, None = refused)
        let cases: Vec<(Option<Member>, Member, Option<bool>)> = vec![
            (None, new.clone(), Some(true)),
            (Some(new.clone()), new.clone(), Some(false)),
            (Some(member(4, "b", MemberState::Active)), new.clone(), None),
            (Some(member(4, "a", MemberState::Removed)), new.clone(), None),
            (Some(member(4, "a", MemberState::Draining)), new.clone(), None),
            (None, Member { shards: 3, ..new.clone() }, None),
        ];
        for (existing, joining, want) in cases {
            let got = join(existing.as_ref(), &joining, 2);
            match want {
                Some(write) => assert_eq!(got.unwrap().is_some(), write, "{existing:?}"),
                None => assert!(got.is_err(), "{existing:?} should be refused"),
            }
        }
        assert_eq!(join(None, &new, 2).unwrap().unwrap().state, MemberState::Active);
    }

    #[test]
    fn a_restart_updates_addresses_and_keeps_the_state() {
        let draining = member(2, "a", MemberState::Draining);
        let moved = member(2, "b", MemberState::Active);
        let got = register(Some(&draining), &moved).unwrap().unwrap();
        assert_eq!((got.peer_addr.as_str(), got.state), ("b", MemberState::Draining));
        assert_eq!(register(Some(&draining), &member(2, "a", MemberState::Active)).unwrap(), None);
        assert!(register(Some(&member(2, "a", MemberState::Removed)), &moved).is_err());
        assert_eq!(register(None, &moved).unwrap().unwrap().state, MemberState::Active);
    }

    #[test]
    fn drain_remove_activate_and_retire_follow_their_rules() {
        use Ask::*;
        use MemberState::*;
        let m = |state, removing| Member { removing, ..member(3, "a", state) };
        // (state, removing, ask, outcome: Some((state, removing)) written, None refused;
        //  "same" = nothing to write)
        type Outcome = Result<Option<(MemberState, bool)>, ()>;
        let cases: Vec<(MemberState, bool, Ask, Outcome)> = vec![
            (Active, false, Drain, Ok(Some((Draining, false)))),
            (Active, false, Remove, Ok(Some((Draining, true)))),
            (Draining, false, Activate, Ok(Some((Active, false)))),
            (Draining, true, Activate, Err(())),
            (Draining, true, Retire, Ok(Some((Removed, true)))),
            (Draining, false, Retire, Ok(None)),
            (Active, false, Retire, Ok(None)),
            (Draining, false, Drain, Ok(None)),
            (Removed, true, Remove, Ok(None)),
            (Removed, true, Activate, Err(())),
            (Removed, true, Drain, Err(())),
        ];
        for (state, removing, ask, want) in cases {
            let got = set_state(Some(&m(state, removing)), 3, ask)
                .map(|o| o.map(|n| (n.state, n.removing)))
                .map_err(|_| ());
            assert_eq!(got, want, "{state:?} removing={removing} {ask:?}");
        }
        assert!(set_state(None, 3, Drain).is_err());
    }

    #[test]
    fn records_round_trip_and_keys_sort_by_id() {
        let m = member(7, "x:1", MemberState::Draining);
        assert_eq!(Member::decode(&m.encode()).unwrap(), m);
        assert!(Member::decode(b"junk").is_err());
        assert!(member_key(9) < member_key(10));
        assert!(member_key(9).starts_with(MEMBERS_PREFIX));
    }
}
