//! Member records: reading and changing them (through the ordinary routed key/value path, on
//! the meta range that owns `kahuna_core::membership::MEMBERS_PREFIX`), answering
//! `Membership` requests, and keeping every shard's peer links in step with the records.
//!
//! Every change is a compare-and-set on the revision read just before, so two racing changes
//! cannot both land: the loser gets CONFLICT and the caller asks again.
//!
//! Must never: keep a member list of its own that could disagree with the records (the links
//! are derived from them), or forget a member the records do not list yet (a node of the
//! initial cluster that has not registered keeps its link).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kahuna_core::membership::{
    self as rules, Ask, Member, MemberState, BALANCE_KEY, MEMBERS_PREFIX,
};
use kahuna_protocol::{
    Durability, ErrorCode, MemberAction, MemberInfo, Op, Reply, SetCondition, WireError,
};

use crate::shard::mesh::ShardMsg;
use crate::shard::Shard;

/// Where the node keeps the peer addresses it last knew (so a restart reaches the members that
/// joined after it first started, before it can read the records).
pub const MEMBERS_FILE: &str = "members.toml";

fn invalid(m: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Invalid, m.into())
}

/// Every member record, with its revision, as the meta range's leader has applied them (see
/// `shard::route::background`: no read barrier, no wake-up).
pub async fn read_records(
    shard: &Rc<Shard>,
    deadline: Instant,
) -> Result<Vec<(Member, u64)>, WireError> {
    scan_records(shard, deadline, 0).await
}

/// Every member record, each read linearizably (for a decision that must see every change
/// made before it): the ids from the leader's state, then each record by a linearizable get.
async fn read_records_fresh(
    shard: &Rc<Shard>,
    deadline: Instant,
) -> Result<Vec<(Member, u64)>, WireError> {
    let mut out = Vec::new();
    for (m, _) in scan_records(shard, deadline, 0).await? {
        if let Some(fresh) = read_record(shard, m.id, deadline).await? {
            out.push(fresh);
        }
    }
    Ok(out)
}

async fn scan_records(
    shard: &Rc<Shard>,
    deadline: Instant,
    limit: u32,
) -> Result<Vec<(Member, u64)>, WireError> {
    let mut out = Vec::new();
    let mut cursor = None;
    for _ in 0..64 {
        let op = Op::KvScan {
            prefix: MEMBERS_PREFIX.to_vec(),
            durability: Durability::Persistent,
            start_after: cursor.take(),
            limit,
        };
        match shard.execute_checked(op, deadline).await.0? {
            Reply::KvScan { items, next, .. } => {
                for it in items {
                    let m = Member::decode(&it.value)
                        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
                    out.push((m, it.revision));
                }
                match next {
                    Some(n) => cursor = Some(n),
                    None => return Ok(out),
                }
            }
            other => {
                return Err(WireError::new(ErrorCode::Internal, format!("scan answered {other:?}")))
            }
        }
    }
    Ok(out)
}

async fn read_record(
    shard: &Rc<Shard>,
    id: u64,
    deadline: Instant,
) -> Result<Option<(Member, u64)>, WireError> {
    let op =
        Op::KvGet { key: rules::member_key(id), durability: Durability::Persistent, revision: 0 };
    match shard.execute_checked(op, deadline).await.0 {
        Ok(Reply::KvGet(it)) => {
            let m = Member::decode(&it.value)
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
            Ok(Some((m, it.revision)))
        }
        Err(e) if e.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(e),
        Ok(other) => Err(WireError::new(ErrorCode::Internal, format!("get answered {other:?}"))),
    }
}

/// Writes `m` if its record is still at `revision` (0: absent).
async fn write_record(
    shard: &Rc<Shard>,
    m: &Member,
    revision: u64,
    deadline: Instant,
) -> Result<(), WireError> {
    let condition =
        if revision == 0 { SetCondition::IfNotExists } else { SetCondition::IfRevision(revision) };
    let op = Op::KvSet {
        key: rules::member_key(m.id),
        value: m.encode(),
        durability: Durability::Persistent,
        ttl_ms: 0,
        condition,
    };
    shard.execute_checked(op, deadline).await.0.map(drop)
}

/// Whether the balancer may even out replica counts (`cluster balance on|off`).
pub async fn balance_on(shard: &Rc<Shard>, deadline: Instant) -> Result<bool, WireError> {
    let op =
        Op::KvGet { key: BALANCE_KEY.to_vec(), durability: Durability::Persistent, revision: 0 };
    match shard.execute_checked(op, deadline).await.0 {
        Ok(Reply::KvGet(it)) => Ok(it.value != b"off"),
        Err(e) if e.code == ErrorCode::NotFound => Ok(true),
        Err(e) => Err(e),
        Ok(other) => Err(WireError::new(ErrorCode::Internal, format!("get answered {other:?}"))),
    }
}

/// Reads the record of `id`, asks `decide` what it becomes, and writes that.
async fn change(
    shard: &Rc<Shard>,
    id: u64,
    deadline: Instant,
    decide: impl FnOnce(Option<&Member>) -> rules::Change,
) -> Result<(), WireError> {
    let existing = read_record(shard, id, deadline).await?;
    let next = decide(existing.as_ref().map(|(m, _)| m)).map_err(invalid)?;
    match next {
        Some(m) => write_record(shard, &m, existing.map(|(_, r)| r).unwrap_or(0), deadline).await,
        None => Ok(()),
    }
}

/// Serves a `Membership` request.
pub async fn handle(shard: &Rc<Shard>, op: Op, deadline: Instant) -> Result<Reply, WireError> {
    let Op::Membership { action, node, client_addr, peer_addr, shards } = op else {
        unreachable!("membership requests only")
    };
    match action {
        MemberAction::List => return list(shard, false, deadline).await,
        MemberAction::Join => {
            let parse = |what: &str, a: &str| {
                a.parse::<SocketAddr>()
                    .map_err(|_| invalid(format!("{what} {a:?} is not host:port")))
            };
            parse("client address", &client_addr)?;
            parse("peer address", &peer_addr)?;
            if node == 0 {
                return Err(invalid("node id 0 is not a node"));
            }
            let joining = Member {
                id: node,
                client_addr,
                peer_addr,
                shards,
                state: MemberState::Active,
                removing: false,
            };
            let here = shard.cfg.shards as u32;
            change(shard, node, deadline, |m| rules::join(m, &joining, here)).await?;
            tracing::info!("node {node} joined the cluster (peer address {})", joining.peer_addr);
            return list(shard, true, deadline).await;
        }
        MemberAction::Drain | MemberAction::Remove => {
            let records = read_records_fresh(shard, deadline).await?;
            let active_others = records
                .iter()
                .filter(|(m, _)| m.id != node && m.state == MemberState::Active)
                .count();
            if active_others == 0 {
                return Err(invalid(format!(
                    "node {node} is the last active member: nothing could take its replicas"
                )));
            }
            let ask = if action == MemberAction::Drain { Ask::Drain } else { Ask::Remove };
            change(shard, node, deadline, |m| rules::set_state(m, node, ask)).await?;
            tracing::info!(
                "node {node}: {} asked",
                if ask == Ask::Drain { "drain" } else { "removal" }
            );
        }
        MemberAction::Activate => {
            change(shard, node, deadline, |m| rules::set_state(m, node, Ask::Activate)).await?;
        }
        MemberAction::BalanceOn | MemberAction::BalanceOff => {
            let on = action == MemberAction::BalanceOn;
            let op = Op::KvSet {
                key: BALANCE_KEY.to_vec(),
                value: if on { b"on".to_vec() } else { b"off".to_vec() },
                durability: Durability::Persistent,
                ttl_ms: 0,
                condition: SetCondition::None,
            };
            shard.execute_checked(op, deadline).await.0?;
        }
    }
    list(shard, false, deadline).await
}

/// The members, how many replicas the map places on each, and whether the balancer runs; with
/// `with_map`, the map itself (a joining node starts from it).
async fn list(shard: &Rc<Shard>, with_map: bool, deadline: Instant) -> Result<Reply, WireError> {
    // What a client is told is read linearizably: never older than a change it saw answered.
    let records = read_records_fresh(shard, deadline).await?;
    let balance = balance_on(shard, deadline).await?;
    let map = shard.map();
    let held = |id: u64| map.partitions().iter().filter(|p| p.holds(id)).count() as u32;
    let members = records
        .into_iter()
        .map(|(m, _)| MemberInfo {
            id: m.id,
            replicas: held(m.id),
            client_addr: m.client_addr,
            peer_addr: m.peer_addr,
            shards: m.shards,
            state: m.state.name().to_string(),
            removing: m.removing,
        })
        .collect();
    let map = if with_map {
        rkyv::to_bytes::<rkyv::rancor::Error>(&map.partitions().to_vec())
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
            .into_vec()
    } else {
        Vec::new()
    };
    Ok(Reply::Membership { members, balance, map })
}

/// This node's own record, as it starts now.
fn own_record(shard: &Shard) -> Option<Member> {
    let peer = shard.cfg.peer_addr().ok()?;
    let mut client = shard.cfg.listen;
    if client.ip().is_unspecified() {
        client.set_ip(peer.ip());
    }
    Some(Member {
        id: shard.node_id,
        client_addr: client.to_string(),
        peer_addr: peer.to_string(),
        shards: shard.cfg.shards as u32,
        state: MemberState::Active,
        removing: false,
    })
}

/// Shard 0 of every node: records where this node listens (once, retried until it lands), then
/// every 2 s reads the records and gives every shard links to exactly the members.
pub async fn keep(shard: Rc<Shard>) {
    let Some(me) = own_record(&shard) else { return };
    let configured = shard.cfg.members().unwrap_or_default();
    let mut registered = false;
    loop {
        glommio::timer::sleep(if registered {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(300)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(3);
        if !registered {
            match change(&shard, me.id, deadline, |m| rules::register(m, &me)).await {
                Ok(()) => {
                    registered = true;
                    // The first node to record itself sets the cluster's replication factor.
                    let op = Op::KvSet {
                        key: rules::REPLICATION_KEY.to_vec(),
                        value: shard.cfg.replication_factor.to_string().into_bytes(),
                        durability: Durability::Persistent,
                        ttl_ms: 0,
                        condition: SetCondition::IfNotExists,
                    };
                    let _ = shard.execute_checked(op, deadline).await;
                }
                Err(e) if e.code == ErrorCode::Invalid => {
                    tracing::error!("node {}: {}", me.id, e.message);
                    registered = true;
                }
                Err(e) => tracing::debug!("recording this node's addresses: {e}"),
            }
        }
        let Ok(records) = read_records(&shard, deadline).await else { continue };
        let mut links = shard.cluster.links.borrow().clone();
        for (m, _) in records {
            match (m.state, m.peer_addr.parse::<SocketAddr>()) {
                (MemberState::Removed, _) => {
                    links.remove(&m.id);
                }
                // Where `--initial-cluster` says this node reaches a member wins over where the
                // member listens (a proxy or NAT may stand between).
                _ if configured.contains_key(&m.id) => {}
                (_, Ok(a)) => {
                    links.insert(m.id, a);
                }
                (_, Err(_)) => {}
            }
        }
        if links != *shard.cluster.links.borrow() {
            publish(&shard, links).await;
        }
    }
}

/// Gives every shard of this node links to `links`, and keeps them for the next start.
async fn publish(shard: &Rc<Shard>, links: BTreeMap<u64, SocketAddr>) {
    tracing::info!("members now {:?}", links.keys().collect::<Vec<_>>());
    set_links(shard, &links);
    for other in (0..shard.cfg.shards).filter(|s| *s != shard.id) {
        shard.mesh.tell(other, ShardMsg::Members(links.clone())).await;
    }
    let dir = shard.cfg.data_dir.clone();
    let written = glommio::executor().spawn_blocking(move || store_file(&dir, &links)).await;
    if let Err(e) = written {
        tracing::warn!("keeping the member list in {MEMBERS_FILE}: {e}");
    }
}

/// Keeps the peer addresses in the data directory (read by [`load_file`] at the next start).
pub fn store_file(dir: &std::path::Path, links: &BTreeMap<u64, SocketAddr>) -> std::io::Result<()> {
    let text: String = links.iter().map(|(id, a)| format!("{id} = \"{a}\"\n")).collect();
    let (path, tmp) = (dir.join(MEMBERS_FILE), dir.join(format!("{MEMBERS_FILE}.tmp")));
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// This shard links to exactly `links` (besides itself).
pub fn set_links(shard: &Shard, links: &BTreeMap<u64, SocketAddr>) {
    if let Some(peers) = &shard.peers {
        peers.set_members(links);
    }
    *shard.cluster.links.borrow_mut() = links.clone();
}

/// The member list kept by [`publish`], if any (`id = "addr"` lines).
pub fn load_file(dir: &std::path::Path) -> Result<BTreeMap<u64, SocketAddr>, String> {
    let path = dir.join(MEMBERS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let table: BTreeMap<String, String> =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    table
        .into_iter()
        .map(|(id, a)| {
            let id =
                id.parse::<u64>().map_err(|_| format!("{}: bad node id {id:?}", path.display()))?;
            let a = a
                .parse::<SocketAddr>()
                .map_err(|_| format!("{}: bad address {a:?}", path.display()))?;
            Ok((id, a))
        })
        .collect()
}
