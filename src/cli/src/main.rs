//! `kahuna-cli`: every Kahuna operation from the shell, on the client library.
//!
//! Output is a short human table by default, or JSON (`--output json`), which is a contract:
//! fields are only ever added. Errors print their stable code and exit non-zero.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kahuna_client::blocking::Client;
use kahuna_client::{
    ClientOptions, ClusterStatus, DeleteOptions, Durability, Error, GetOptions, KvItem, LockState,
    ReplicaRole, ScanOptions, SetOptions,
};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "kahuna-cli",
    version,
    about = "Command line for Kahuna: locks, key/value, sequences"
)]
struct Cli {
    /// Nodes to talk to, comma separated.
    #[arg(long, global = true, default_value = "127.0.0.1:7000", env = "KAHUNA_ENDPOINTS")]
    endpoints: String,
    /// Deadline of the command, retries included.
    #[arg(long, global = true, default_value_t = 5000)]
    timeout_ms: u64,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Key/value store.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Distributed locks with leases and fencing tokens.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Distributed sequences.
    #[command(subcommand)]
    Seq(SeqCmd),
    /// The cluster: nodes and partitions.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Backups of every partition, taken while the cluster serves.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// A transaction, JSON in (FILE, or stdin with `-`), JSON out: `{"compare": [{"key": "a",
    /// "target": "value|revision|exists|lock_owner|fencing_token", "op": "==|!=|<|>",
    /// "value": "x" | "number": 3}], "then": [STEP…], "else": [STEP…]}`, each STEP one of
    /// `{"get": "k"}`, `{"exists": "k"}`, `{"lock_get": "r"}`, `{"set": {"key": "k", "value":
    /// "v", "ttl_ms": 0}}`, `{"delete": "k"}`, `{"lock": {"resource": "r", "owner": "o",
    /// "lease_ms": 5000}}`, `{"unlock": {"resource": "r", "owner": "o"}}`, `{"seq_next":
    /// {"name": "s", "count": 1}}`. Keys in any partitions; atomic and serializable.
    /// `"durability": "ephemeral"` runs every step on the leader's memory (one partition; no
    /// `seq_next`).
    Txn { file: String },
    /// Scripts in Kahuna's language, run server-side as one atomic step (README "Scripts").
    #[command(subcommand)]
    Script(ScriptCmd),
}

#[derive(Subcommand)]
enum ScriptCmd {
    /// Run the script in FILE (`-`: stdin); `--param name=value` (repeatable) sets `@name` to
    /// the string `value`. Prints `{"result": …}`, what the script returned.
    Run {
        file: String,
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Copy every partition into DIR (one file each, with its index, term and CRC32C in
    /// DIR/manifest.json). Each copy holds every write acknowledged before it was asked for.
    /// Restore with `kahuna-server --restore-from DIR` on every node of a new cluster.
    Create { dir: std::path::PathBuf },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Every node (up or down, addresses, shards) and every partition (key range, replicas as
    /// node/shard, leader, term, commit and applied index), as the replicas report themselves.
    Status {
        /// Also checksum every replica's key range (reads every key; replicas at the same
        /// applied index must agree).
        #[arg(long)]
        checksums: bool,
        /// Refresh in place, like `top`: lag, write rates and leader moves as they happen
        /// (with `--output json`, one status per line). Ctrl-C stops.
        #[arg(long)]
        watch: bool,
        /// Time between refreshes of `--watch`.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop `--watch` after this many refreshes (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Wait until every node is up and every partition has a leader (with `--balanced`, its
    /// preferred one); exits non-zero with the last status if `--timeout-ms` passes first.
    Wait {
        #[arg(long)]
        balanced: bool,
    },
    /// Split a partition in two at KEY (default: the middle of its keys by bytes). The left
    /// half keeps the id, the right half gets a new one; both stay on the same replicas.
    Split {
        /// The partition's id (see `cluster status`).
        partition: u64,
        /// Where the right half starts (inside the partition's range).
        key: Option<String>,
    },
    /// The members: state (active, draining, removed), replicas held, addresses; and whether
    /// the replica balancer runs.
    Members,
    /// Move a node's replicas and leaderships to the other nodes; it stays a member (see
    /// `activate`). Answers at once; `cluster members` shows its replicas go.
    Drain { node: u64 },
    /// Drain a node, then remove it from the cluster for good (its id is never used again).
    /// Every partition keeps its replication factor throughout: a replacement replica votes
    /// before the node's leaves.
    RemoveNode { node: u64 },
    /// Let a drained node take replicas again.
    Activate { node: u64 },
    /// Turn the replica balancer on or off (leaving nodes are emptied either way).
    Balance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Args)]
struct Dur {
    /// Keep it in the partition leader's memory only: fastest, lost if that leader fails.
    #[arg(long)]
    ephemeral: bool,
}

impl Dur {
    fn get(&self) -> Durability {
        if self.ephemeral {
            Durability::Ephemeral
        } else {
            Durability::Persistent
        }
    }
}

#[derive(Subcommand)]
enum KvCmd {
    /// Set a key; prints its new revision.
    Set {
        key: String,
        value: String,
        /// Expire the key this many milliseconds from now.
        #[arg(long, default_value_t = 0)]
        ttl_ms: u64,
        /// Only if the key is at this revision (0 = only if absent).
        #[arg(long, conflicts_with_all = ["if_value", "if_exists", "if_not_exists"])]
        if_revision: Option<u64>,
        /// Only if the key's current value is this.
        #[arg(long, conflicts_with_all = ["if_exists", "if_not_exists"])]
        if_value: Option<String>,
        /// Only if the key exists.
        #[arg(long, conflicts_with = "if_not_exists")]
        if_exists: bool,
        /// Only if the key does not exist.
        #[arg(long)]
        if_not_exists: bool,
        #[command(flatten)]
        dur: Dur,
    },
    /// Get a key (latest, or at --revision).
    Get {
        key: String,
        #[arg(long, default_value_t = 0)]
        revision: u64,
        #[command(flatten)]
        dur: Dur,
    },
    /// Delete a key.
    Delete {
        key: String,
        /// Only if the key is at this revision.
        #[arg(long, default_value_t = 0)]
        if_revision: u64,
        #[command(flatten)]
        dur: Dur,
    },
    /// Whether a key exists.
    Exists {
        key: String,
        #[command(flatten)]
        dur: Dur,
    },
    /// Set a key's time to live, counted from now (0 removes it).
    Extend {
        key: String,
        #[arg(long)]
        ttl_ms: u64,
        #[command(flatten)]
        dur: Dur,
    },
    /// List keys under a prefix, in order, one page at a time.
    Scan {
        prefix: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The `next` cursor printed by the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        dur: Dur,
    },
    /// The retained revisions of a key, newest first.
    History {
        key: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        dur: Dur,
    },
}

#[derive(Subcommand)]
enum LockCmd {
    /// Try to take a lock; prints whether it was acquired and its fencing token.
    Acquire {
        resource: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        lease_ms: u64,
        #[command(flatten)]
        dur: Dur,
    },
    /// Renew the owner's lease.
    Extend {
        resource: String,
        #[arg(long)]
        owner: String,
        #[arg(long)]
        lease_ms: u64,
        #[command(flatten)]
        dur: Dur,
    },
    /// Release the owner's lock.
    Release {
        resource: String,
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        dur: Dur,
    },
    /// Who holds a lock, and its fencing token.
    Get {
        resource: String,
        #[command(flatten)]
        dur: Dur,
    },
}

#[derive(Subcommand)]
enum SeqCmd {
    /// Take a block of `count` numbers: [first, first + count).
    Next {
        name: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
    },
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ms(v: u64) -> Value {
    if v == 0 {
        Value::Null
    } else {
        json!(v)
    }
}

fn item_json(it: &KvItem) -> Value {
    json!({"key": text(&it.key), "value": text(&it.value), "revision": it.revision, "expires_at_ms": ms(it.expires_at_ms)})
}

fn lock_json(s: &LockState) -> Value {
    json!({
        "acquired": s.acquired,
        "fencing_token": s.fencing_token,
        "owner": s.owner.as_deref().map(text),
        "expires_at_ms": ms(s.expires_at_ms),
    })
}

/// One step's answer in a transaction's JSON.
fn result_json(r: &Result<kahuna_client::Reply, kahuna_client::WireError>) -> Value {
    use kahuna_client::Reply as R;
    match r {
        Err(e) => json!({"error": {"code": e.code.name(), "message": e.message}}),
        Ok(R::KvGet(it)) => item_json(it),
        Ok(R::KvSet { revision }) => json!({"revision": revision}),
        Ok(R::KvDelete { deleted, revision }) => json!({"deleted": deleted, "revision": revision}),
        Ok(R::KvExists { exists, revision }) => json!({"exists": exists, "revision": revision}),
        Ok(R::Lock(s)) => lock_json(s),
        Ok(R::LockAck { fencing_token, expires_at_ms }) => {
            json!({"fencing_token": fencing_token, "expires_at_ms": ms(*expires_at_ms)})
        }
        Ok(R::Seq { first, count }) => json!({"first": first, "count": count}),
        Ok(other) => json!({"answer": format!("{other:?}")}),
    }
}

type TxnParts = (Vec<kahuna_client::Compare>, Vec<kahuna_client::Op>, Vec<kahuna_client::Op>);

/// Reads a transaction's JSON (see `kahuna-cli txn --help`).
fn txn_from_json(text: &str) -> Result<TxnParts, Error> {
    use kahuna_client::{Compare, CompareOp, CompareTarget, Durability, Op};
    let bad = |m: String| Error::new(kahuna_client::ErrorCode::Invalid, m);
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let s = |v: &Value, what: &str| -> Result<Vec<u8>, Error> {
        v.as_str()
            .map(|s| s.as_bytes().to_vec())
            .ok_or_else(|| bad(format!("{what} must be a string")))
    };
    let n = |v: &Value, what: &str| -> Result<u64, Error> {
        v.as_u64().ok_or_else(|| bad(format!("{what} must be a number")))
    };
    // `"durability": "ephemeral"`: every step on the leader's memory (one partition).
    let durability = match v["durability"].as_str() {
        None | Some("persistent") => Durability::Persistent,
        Some("ephemeral") => Durability::Ephemeral,
        Some(other) => return Err(bad(format!("unknown durability {other:?}"))),
    };
    let has_steps =
        ["then", "else"].iter().any(|b| v[*b].as_array().is_some_and(|a| !a.is_empty()));
    if durability == Durability::Ephemeral && !has_steps {
        // Compares alone carry no durability: they would read persistent state.
        return Err(bad("an ephemeral transaction needs at least one step".into()));
    }
    let mut compare = Vec::new();
    for c in v["compare"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
        let target = match c["target"].as_str() {
            Some("value") => CompareTarget::Value,
            Some("revision") => CompareTarget::Revision,
            Some("exists") => CompareTarget::Exists,
            Some("lock_owner") => CompareTarget::LockOwner,
            Some("fencing_token") => CompareTarget::FencingToken,
            other => return Err(bad(format!("unknown compare target {other:?}"))),
        };
        let op = match c["op"].as_str().unwrap_or("==") {
            "==" => CompareOp::Equal,
            "!=" => CompareOp::NotEqual,
            "<" => CompareOp::Less,
            ">" => CompareOp::Greater,
            other => return Err(bad(format!("unknown compare op {other:?}"))),
        };
        let value =
            if c["value"].is_null() { vec![] } else { s(&c["value"], "a compare's value")? };
        let number = match &c["number"] {
            Value::Null => 0,
            Value::Bool(b) => *b as u64,
            other => n(other, "a compare's number")?,
        };
        compare.push(Compare { key: s(&c["key"], "a compare's key")?, target, op, value, number });
    }
    let steps = |list: &Value| -> Result<Vec<Op>, Error> {
        let mut ops = Vec::new();
        for st in list.as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
            let Some((kind, a)) = st.as_object().and_then(|o| o.iter().next()) else {
                return Err(bad(format!("a step is an object with one field, not {st}")));
            };
            ops.push(match kind.as_str() {
                "get" => Op::KvGet { key: s(a, "get")?, durability, revision: 0 },
                "exists" => Op::KvExists { key: s(a, "exists")?, durability },
                "lock_get" => Op::LockGet { resource: s(a, "lock_get")?, durability },
                "delete" => Op::KvDelete { key: s(a, "delete")?, durability, expected_revision: 0 },
                "set" => Op::KvSet {
                    key: s(&a["key"], "set.key")?,
                    value: s(&a["value"], "set.value")?,
                    durability,
                    ttl_ms: a["ttl_ms"].as_u64().unwrap_or(0),
                    condition: kahuna_client::SetCondition::None,
                },
                "lock" => Op::LockAcquire {
                    resource: s(&a["resource"], "lock.resource")?,
                    owner: s(&a["owner"], "lock.owner")?,
                    lease_ms: n(&a["lease_ms"], "lock.lease_ms")?,
                    durability,
                },
                "unlock" => Op::LockRelease {
                    resource: s(&a["resource"], "unlock.resource")?,
                    owner: s(&a["owner"], "unlock.owner")?,
                    durability,
                    fencing_token: 0,
                },
                "seq_next" => Op::SeqNext {
                    name: s(&a["name"], "seq_next.name")?,
                    count: a["count"].as_u64().unwrap_or(1),
                },
                other => return Err(bad(format!("unknown step {other:?}"))),
            });
        }
        Ok(ops)
    };
    Ok((compare, steps(&v["then"])?, steps(&v["else"])?))
}

/// A key range bound for people: printable bytes as they are, others escaped; "" = open.
fn bound(b: &[u8]) -> String {
    b.iter().flat_map(|c| std::ascii::escape_default(*c)).map(char::from).collect()
}

fn status_json(st: &ClusterStatus) -> Value {
    let nodes: Vec<Value> = st
        .nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "up": n.up,
                "client_address": n.client_address,
                "peer_address": n.peer_address,
                "shards": n.shards,
                "forwarded": n.forwarded,
                "clock_offset_ms": n.clock_offset_ms,
                "clock_ok": n.clock_ok,
                "error": (!n.error.is_empty()).then_some(&n.error),
            })
        })
        .collect();
    let partitions: Vec<Value> = st
        .partitions
        .iter()
        .map(|p| {
            let leader = p.leader();
            let replicas: Vec<Value> = p
                .status
                .iter()
                .map(|r| {
                    let mut v = json!({
                        "node": r.node,
                        "shard": r.shard,
                        "role": r.role.name(),
                        "term": r.term,
                        "leader": r.leader,
                        "commit": r.commit,
                        "applied": r.applied,
                        "last_index": r.last_index,
                        "ephemeral_bytes": r.ephemeral_bytes,
                    });
                    if r.role == ReplicaRole::Leader {
                        v["requests_per_sec"] = json!(r.qps);
                        v["bytes"] = json!(r.bytes);
                    }
                    if r.checksum_index != 0 || r.checksum != 0 {
                        v["checksum"] = json!(format!("{:016x}", r.checksum));
                        v["checksum_index"] = json!(r.checksum_index);
                    }
                    v
                })
                .collect();
            json!({
                "id": p.id,
                "start": bound(&p.start),
                "end": bound(&p.end),
                "placement": p.replicas,
                "leader": leader.map(|l| l.node),
                "term": leader.map(|l| l.term),
                "commit": leader.map(|l| l.commit),
                "applied": leader.map(|l| l.applied),
                "replicas": replicas,
                "epoch": p.epoch,
            })
        })
        .collect();
    json!({"answered_by": st.answered_by, "nodes": nodes, "partitions": partitions})
}

/// The status as a table. With the previous status and the time since it, each partition also
/// shows its write rate (committed entries per second) and a leader that moved meanwhile.
fn status_table(st: &ClusterStatus, prev: Option<(&ClusterStatus, Duration)>) -> String {
    let mut out = String::from(
        "NODE  STATE  CLIENT                 PEER                   SHARDS  FORWARDED  CLOCK\n",
    );
    for n in &st.nodes {
        let state = if n.up { "up" } else { "down" };
        // How far the others' clocks are from this node's; OFF: it grants no leases.
        let clock = match (n.up, n.clock_ok) {
            (false, _) => "-".to_string(),
            (true, true) => format!("{:+}ms", n.clock_offset_ms),
            (true, false) => format!("OFF {:+}ms", n.clock_offset_ms),
        };
        out.push_str(&format!(
            "{:<5} {:<6} {:<22} {:<22} {:<7} {:<10} {}{}\n",
            n.id,
            state,
            if n.client_address.is_empty() { "-" } else { &n.client_address },
            n.peer_address,
            n.shards,
            n.forwarded,
            clock,
            if n.error.is_empty() { String::new() } else { format!("  ({})", n.error) },
        ));
    }
    out.push_str(
        "\nPART  RANGE                LEADER  TERM  COMMIT    APPLIED   LAG     RATE/s  REQ/s   REPLICAS (node/shard role applied)\n",
    );
    for p in &st.partitions {
        let end = if p.end.is_empty() { "∞".into() } else { format!("{:?}", bound(&p.end)) };
        let range = format!("[{:?}, {end})", bound(&p.start));
        let leader = p.leader();
        // Voters in placement order, then replicas being added (learners).
        let adding = p.status.iter().map(|r| r.node).filter(|n| !p.replicas.contains(n));
        let nodes: Vec<u64> = p.replicas.iter().copied().chain(adding).collect();
        let reps: Vec<String> = nodes
            .iter()
            .map(|node| match p.status.iter().find(|r| r.node == *node) {
                Some(r) => {
                    let role = match r.role {
                        ReplicaRole::Leader => "L",
                        ReplicaRole::Follower => "F",
                        ReplicaRole::Candidate => "C",
                        ReplicaRole::PreCandidate => "P",
                        ReplicaRole::Learner => "+learner",
                    };
                    let sum = if r.checksum_index != 0 || r.checksum != 0 {
                        format!(" {:016x}@{}", r.checksum, r.checksum_index)
                    } else {
                        String::new()
                    };
                    format!("{}/{} {} {}{}", r.node, r.shard, role, r.applied, sum)
                }
                None => format!("{node}/? down"),
            })
            .collect();
        let num = |f: fn(&kahuna_client::ReplicaStatus) -> u64| {
            leader.map(|l| f(l).to_string()).unwrap_or_else(|| "-".into())
        };
        // How far the slowest replica that answered is behind the leader's commit index.
        let lag = leader
            .map(|l| {
                let slowest = p.status.iter().map(|r| r.applied).min().unwrap_or(l.commit);
                l.commit.saturating_sub(slowest).to_string()
            })
            .unwrap_or_else(|| "-".into());
        let before =
            prev.and_then(|(ps, dt)| Some((ps.partitions.iter().find(|q| q.id == p.id)?, dt)));
        let rate = match (before.and_then(|(q, dt)| Some((q.leader()?.commit, dt))), leader) {
            (Some((c0, dt)), Some(l)) if !dt.is_zero() => {
                format!("{:.0}", l.commit.saturating_sub(c0) as f64 / dt.as_secs_f64())
            }
            _ => "-".into(),
        };
        let mut moved = match (before.and_then(|(q, _)| q.leader()), leader) {
            (Some(was), Some(now)) if was.node != now.node => {
                format!("  (leader moved from node {})", was.node)
            }
            _ => String::new(),
        };
        // Splits since the last refresh: a new partition, or one whose range changed.
        match before {
            None if prev.is_some() => moved.push_str("  (new: split off)"),
            Some((q, _)) if q.epoch != p.epoch && (q.start != p.start || q.end != p.end) => {
                moved.push_str("  (split)")
            }
            Some((q, _)) if q.epoch != p.epoch => moved.push_str("  (replicas changed)"),
            _ => {}
        }
        out.push_str(&format!(
            "{:<5} {:<20} {:<7} {:<5} {:<9} {:<9} {:<7} {:<7} {:<7} {}{}\n",
            p.id,
            range,
            num(|l| l.node),
            num(|l| l.term),
            num(|l| l.commit),
            num(|l| l.applied),
            lag,
            rate,
            num(|l| l.qps),
            reps.join(", "),
            moved,
        ));
    }
    out.trim_end().to_string()
}

/// Copies the partition that holds `start` into `dir`; its manifest entry and where its range
/// ends (as the copy saw it: a split meanwhile only makes it end earlier). The pieces go
/// straight to a file (a partition's copy can be larger than memory should hold).
fn backup_partition(
    c: &Client,
    start: &[u8],
    dir: &std::path::Path,
) -> Result<(Value, Vec<u8>), Error> {
    use std::io::Write;
    let tmp = dir.join("copy.tmp");
    let io = |e: std::io::Error| {
        Error::new(kahuna_client::ErrorCode::Internal, format!("{}: {e}", tmp.display()))
    };
    // A copy lives on the partition's leader: if leadership moves mid-way, take a new one.
    let mut last = None;
    for _ in 0..3 {
        let first = c.backup_chunk(start, 0, 0)?;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        file.write_all(&first.data).map_err(io)?;
        let (mut len, mut crc) = (first.data.len() as u64, crc32c::crc32c(&first.data));
        let mut failed = None;
        while len < first.total {
            match c.backup_chunk(start, len, first.index) {
                Ok(ch) if ch.offset == len && !ch.data.is_empty() => {
                    file.write_all(&ch.data).map_err(io)?;
                    crc = crc32c::crc32c_append(crc, &ch.data);
                    len += ch.data.len() as u64;
                }
                Ok(_) => {
                    failed = Some(Error::new(
                        kahuna_client::ErrorCode::Internal,
                        "a piece out of order",
                    ));
                    break;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            last = Some(e);
            continue;
        }
        if len != first.total || crc != first.crc {
            last = Some(Error::new(
                kahuna_client::ErrorCode::Internal,
                "the copy's checksum does not match",
            ));
            continue;
        }
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        let path = dir.join(format!("p{}.snap", first.partition));
        std::fs::rename(&tmp, &path).map_err(io)?;
        let entry = json!({
            "id": first.partition,
            "start": hex(&first.start),
            "end": hex(&first.end),
            "index": first.index,
            "term": first.term,
            "hlc": first.hlc,
            "bytes": first.total,
            "crc32c": first.crc,
            "file": path.file_name().map(|n| n.to_string_lossy().to_string()),
        });
        return Ok((entry, first.end));
    }
    let _ = std::fs::remove_file(&tmp);
    Err(last.unwrap_or_else(|| Error::new(kahuna_client::ErrorCode::Unavailable, "no copy")))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the command; returns its JSON answer and its table form.
fn run(c: &Client, cmd: Cmd, wait_for: Duration, json_out: bool) -> Result<(Value, String), Error> {
    Ok(match cmd {
        Cmd::Kv(KvCmd::Set {
            key,
            value,
            ttl_ms,
            if_revision,
            if_value,
            if_exists,
            if_not_exists,
            dur,
        }) => {
            let mut o = SetOptions::default().durability(dur.get()).ttl_ms(ttl_ms);
            if let Some(r) = if_revision {
                o = o.if_revision(r);
            } else if let Some(v) = &if_value {
                o = o.if_value(v.as_bytes());
            } else if if_exists {
                o = o.if_exists();
            } else if if_not_exists {
                o = o.if_not_exists();
            }
            let revision = c.kv_set(key.as_bytes(), value.as_bytes(), o)?;
            (json!({"revision": revision}), format!("revision {revision}"))
        }
        Cmd::Kv(KvCmd::Get { key, revision, dur }) => {
            let it = c.kv_get(key.as_bytes(), GetOptions { durability: dur.get(), revision })?;
            let expiry = if it.expires_at_ms == 0 {
                "never".to_string()
            } else {
                it.expires_at_ms.to_string()
            };
            let table =
                format!("{}\nrevision {}  expires_at_ms {}", text(&it.value), it.revision, expiry);
            (item_json(&it), table)
        }
        Cmd::Kv(KvCmd::Delete { key, if_revision, dur }) => {
            let (deleted, revision) = c.kv_delete(
                key.as_bytes(),
                DeleteOptions { durability: dur.get(), expected_revision: if_revision },
            )?;
            let table = if deleted {
                format!("deleted (revision {revision})")
            } else {
                "not found".to_string()
            };
            (json!({"deleted": deleted, "revision": revision}), table)
        }
        Cmd::Kv(KvCmd::Exists { key, dur }) => {
            let (exists, revision) = c.kv_exists(key.as_bytes(), dur.get())?;
            (
                json!({"exists": exists, "revision": revision}),
                format!("{exists} (revision {revision})"),
            )
        }
        Cmd::Kv(KvCmd::Extend { key, ttl_ms, dur }) => {
            let at = c.kv_extend(key.as_bytes(), ttl_ms, dur.get())?;
            (json!({"ok": true, "expires_at_ms": ms(at)}), format!("expires_at_ms {at}"))
        }
        Cmd::Kv(KvCmd::Scan { prefix, limit, cursor, dur }) => {
            let page = c.kv_scan(
                prefix.as_bytes(),
                ScanOptions {
                    durability: dur.get(),
                    limit,
                    start_after: cursor.map(String::into_bytes),
                },
            )?;
            let next = page.next.as_deref().map(text);
            let mut table: String = page
                .items
                .iter()
                .map(|i| format!("{}\t{}\t(rev {})\n", text(&i.key), text(&i.value), i.revision))
                .collect();
            table.push_str(&match &next {
                Some(n) => format!("-- more: --cursor '{n}'"),
                None => format!("-- {} keys, end", page.items.len()),
            });
            (
                json!({"items": page.items.iter().map(item_json).collect::<Vec<_>>(), "next": next}),
                table,
            )
        }
        Cmd::Kv(KvCmd::History { key, limit, dur }) => {
            let items = c.kv_history(key.as_bytes(), limit, dur.get())?;
            let table = items
                .iter()
                .map(|i| {
                    if i.deleted {
                        format!("rev {}\t(deleted)", i.revision)
                    } else {
                        format!("rev {}\t{}", i.revision, text(&i.value))
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let rows: Vec<Value> = items
                .iter()
                .map(|i| json!({"revision": i.revision, "value": text(&i.value), "deleted": i.deleted, "expires_at_ms": ms(i.expires_at_ms)}))
                .collect();
            (json!({"items": rows}), table)
        }
        Cmd::Lock(LockCmd::Acquire { resource, owner, lease_ms, dur }) => {
            let s = c.lock_acquire(resource.as_bytes(), owner.as_bytes(), lease_ms, dur.get())?;
            let holder = s.owner.as_deref().map(text).unwrap_or_default();
            let table = if s.acquired {
                format!(
                    "acquired  fencing_token {}  expires_at_ms {}",
                    s.fencing_token, s.expires_at_ms
                )
            } else {
                format!("not acquired: held by {holder} (fencing token {})", s.fencing_token)
            };
            (lock_json(&s), table)
        }
        Cmd::Lock(LockCmd::Extend { resource, owner, lease_ms, dur }) => {
            let at = c.lock_extend(resource.as_bytes(), owner.as_bytes(), lease_ms, dur.get())?;
            (json!({"ok": true, "expires_at_ms": ms(at)}), format!("extended, expires_at_ms {at}"))
        }
        Cmd::Lock(LockCmd::Release { resource, owner, dur }) => {
            c.lock_release(resource.as_bytes(), owner.as_bytes(), dur.get())?;
            (json!({"ok": true}), "released".to_string())
        }
        Cmd::Lock(LockCmd::Get { resource, dur }) => {
            let s = c.lock_get(resource.as_bytes(), dur.get())?;
            let table = match &s.owner {
                Some(o) if s.acquired => format!(
                    "held by {}  fencing_token {}  expires_at_ms {}",
                    text(o),
                    s.fencing_token,
                    s.expires_at_ms
                ),
                _ => format!("free  (last fencing token {})", s.fencing_token),
            };
            let mut v = lock_json(&s);
            v["held"] = json!(s.acquired);
            (v, table)
        }
        Cmd::Script(ScriptCmd::Run { file, params }) => {
            let source = read_input(&file)?;
            let mut named = Vec::new();
            for p in &params {
                let Some((n, v)) = p.split_once('=') else {
                    let msg = format!("--param {p:?}: expected NAME=VALUE");
                    return Err(Error::new(kahuna_client::ErrorCode::Invalid, msg));
                };
                named.push((n.to_string(), v.as_bytes().to_vec()));
            }
            let out = c.script(&source, named)?;
            let result: Value = serde_json::from_str(&out).unwrap_or(Value::String(out.clone()));
            (json!({"result": result}), out)
        }
        Cmd::Txn { file } => {
            let text = read_input(&file)?;
            let (compare, then, otherwise) = txn_from_json(&text)?;
            let (succeeded, results) = c.txn(compare, then, otherwise)?;
            let results: Vec<Value> = results.iter().map(result_json).collect();
            let v = json!({"succeeded": succeeded, "results": results});
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            (v, text)
        }
        Cmd::Seq(SeqCmd::Next { name, count }) => {
            let (first, count) = c.seq_next(name.as_bytes(), count)?;
            (json!({"first": first, "count": count}), format!("[{first}, {})", first + count))
        }
        Cmd::Cluster(ClusterCmd::Status { checksums, watch: false, .. }) => {
            let st = c.cluster_status(checksums)?;
            (status_json(&st), status_table(&st, None))
        }
        Cmd::Cluster(ClusterCmd::Status { checksums, watch: true, interval_ms, count }) => {
            let interval = Duration::from_millis(interval_ms.max(100));
            let mut prev: Option<(ClusterStatus, std::time::Instant)> = None;
            let mut shown = 0u64;
            loop {
                let st = c.cluster_status(checksums);
                let now = std::time::Instant::now();
                match (&st, json_out) {
                    (Ok(st), true) => println!("{}", status_json(st)),
                    (Ok(st), false) => {
                        let since = prev.as_ref().map(|(p, at)| (p, now.duration_since(*at)));
                        // Home the cursor and clear the screen, then draw the frame.
                        print!("\x1b[H\x1b[2J");
                        println!(
                            "kahuna cluster status, every {} ms (Ctrl-C stops)\n",
                            interval.as_millis()
                        );
                        println!("{}", status_table(st, since));
                    }
                    (Err(e), _) => eprintln!("error: {}: {}", e.code.name(), e.message),
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                if let Ok(st) = st {
                    prev = Some((st, now));
                }
                shown += 1;
                if count != 0 && shown >= count {
                    let last = prev.map(|(p, _)| p).unwrap_or_default();
                    // Already shown: the caller prints nothing more.
                    break (status_json(&last), String::new());
                }
                std::thread::sleep(interval);
            }
        }
        Cmd::Backup(BackupCmd::Create { dir }) => {
            let io = |e: std::io::Error| {
                Error::new(kahuna_client::ErrorCode::Internal, format!("{}: {e}", dir.display()))
            };
            std::fs::create_dir_all(&dir).map_err(io)?;
            let started = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut parts = Vec::new();
            let mut bytes = 0;
            // Partition by partition from the start of the key space, each from where the copy
            // before it ended: the copies cover every key once even if partitions split meanwhile.
            let mut pos = Vec::new();
            loop {
                let (entry, end) = backup_partition(c, &pos, &dir)?;
                if entry["start"] != json!(hex(&pos)) {
                    return Err(Error::new(
                        kahuna_client::ErrorCode::Internal,
                        format!(
                            "the copy at {:?} starts elsewhere: {}",
                            bound(&pos),
                            entry["start"]
                        ),
                    ));
                }
                bytes += entry["bytes"].as_u64().unwrap_or(0);
                parts.push(entry);
                if end.is_empty() {
                    break;
                }
                if end <= pos {
                    return Err(Error::new(
                        kahuna_client::ErrorCode::Internal,
                        format!("a copy ends at {:?}, before where it started", bound(&end)),
                    ));
                }
                pos = end;
            }
            let manifest = json!({
                "format": 2,
                "created_at_ms": started,
                "partitions": parts,
            });
            let tmp = dir.join("manifest.json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(&manifest).unwrap_or_default())
                .map_err(io)?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, dir.join("manifest.json")).map_err(io)?;
            std::fs::File::open(&dir).and_then(|f| f.sync_all()).map_err(io)?;
            let n = parts.len();
            (
                json!({"dir": dir.display().to_string(), "partitions": n, "bytes": bytes}),
                format!("backed up {n} partitions ({bytes} bytes) into {}", dir.display()),
            )
        }
        Cmd::Cluster(ClusterCmd::Split { partition, key }) => {
            let st = c.cluster_status(false)?;
            let Some(p) = st.partitions.iter().find(|p| p.id == partition) else {
                return Err(Error::new(
                    kahuna_client::ErrorCode::NotFound,
                    format!("no partition {partition} (see `cluster status`)"),
                ));
            };
            let at = key.map(|k| k.into_bytes()).unwrap_or_default();
            let (left, right, at, epoch) = c.split(&p.start, &at)?;
            (
                json!({"left": left, "right": right, "at": bound(&at), "epoch": epoch}),
                format!(
                    "partition {left} split at {:?}: partition {right} holds the keys from there",
                    bound(&at)
                ),
            )
        }
        Cmd::Cluster(
            cmd @ (ClusterCmd::Members
            | ClusterCmd::Drain { .. }
            | ClusterCmd::RemoveNode { .. }
            | ClusterCmd::Activate { .. }
            | ClusterCmd::Balance { .. }),
        ) => {
            use kahuna_client::MemberAction as A;
            let (action, node) = match cmd {
                ClusterCmd::Drain { node } => (A::Drain, node),
                ClusterCmd::RemoveNode { node } => (A::Remove, node),
                ClusterCmd::Activate { node } => (A::Activate, node),
                ClusterCmd::Balance { state } if state == "on" => (A::BalanceOn, 0),
                ClusterCmd::Balance { .. } => (A::BalanceOff, 0),
                _ => (A::List, 0),
            };
            let (members, balance) = c.membership(action, node)?;
            let list: Vec<Value> = members
                .iter()
                .map(|m| {
                    json!({"id": m.id, "state": m.state, "removing": m.removing,
                           "replicas": m.replicas, "client_address": m.client_addr,
                           "peer_address": m.peer_addr, "shards": m.shards})
                })
                .collect();
            let mut text = format!(
                "balancer: {}\n{:>6}  {:<9} {:>8}  {:<22} {}\n",
                if balance { "on" } else { "off" },
                "node",
                "state",
                "replicas",
                "client",
                "peer"
            );
            for m in &members {
                let state = if m.removing && m.state == "draining" { "removing" } else { &m.state };
                text.push_str(&format!(
                    "{:>6}  {:<9} {:>8}  {:<22} {}\n",
                    m.id, state, m.replicas, m.client_addr, m.peer_addr
                ));
            }
            (json!({"members": list, "balance": balance}), text.trim_end().to_string())
        }
        Cmd::Cluster(ClusterCmd::Wait { balanced }) => {
            let deadline = std::time::Instant::now() + wait_for;
            loop {
                let st = c.cluster_status(false);
                if let Ok(st) = &st {
                    let ready = st.nodes.iter().all(|n| n.up)
                        && st.partitions.iter().all(|p| match p.leader() {
                            Some(l) => !balanced || p.replicas.first() == Some(&l.node),
                            None => false,
                        });
                    if ready {
                        break (status_json(st), "ready".to_string());
                    }
                }
                if std::time::Instant::now() >= deadline {
                    let detail = match st {
                        Ok(st) => status_table(&st, None),
                        Err(e) => e.to_string(),
                    };
                    return Err(Error::new(
                        kahuna_client::ErrorCode::Timeout,
                        format!("the cluster was not ready in time:\n{detail}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    })
}

/// Commands that change state: their errors also say whether the change may have happened.
fn is_write(cmd: &Cmd) -> bool {
    match cmd {
        Cmd::Kv(k) => matches!(k, KvCmd::Set { .. } | KvCmd::Delete { .. } | KvCmd::Extend { .. }),
        Cmd::Lock(l) => !matches!(l, LockCmd::Get { .. }),
        Cmd::Seq(_) => true,
        Cmd::Cluster(c) => {
            !matches!(c, ClusterCmd::Status { .. } | ClusterCmd::Wait { .. } | ClusterCmd::Members)
        }
        Cmd::Backup(_) => false,
        Cmd::Txn { .. } | Cmd::Script(_) => true,
    }
}

/// The text of FILE, or of stdin for `-`.
fn read_input(file: &str) -> Result<String, Error> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map(|_| s)
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| Error::new(kahuna_client::ErrorCode::Invalid, format!("{file}: {e}")))
}

/// What a failed write did: `unknown` after a `TIMEOUT` (it may have been applied: read before
/// you retry), `not_applied` for every other error.
fn outcome(e: &Error) -> &'static str {
    match e.code {
        kahuna_client::ErrorCode::Timeout | kahuna_client::ErrorCode::Internal => "unknown",
        _ => "not_applied",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoints: Vec<String> =
        cli.endpoints.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    let opts = ClientOptions {
        timeout: Duration::from_millis(cli.timeout_ms),
        // One command: learning the cluster's leaders would cost more than the hop it saves.
        route_to_leaders: false,
        ..ClientOptions::default()
    };
    let wait_for = Duration::from_millis(cli.timeout_ms);
    let write = is_write(&cli.cmd);
    // `cluster wait` runs while nodes start: a refused connection is something to wait through,
    // not an answer.
    let client = if matches!(cli.cmd, Cmd::Cluster(ClusterCmd::Wait { .. })) {
        Client::new(&endpoints, opts)
    } else {
        Client::connect(&endpoints, opts)
    };
    let watching = matches!(cli.cmd, Cmd::Cluster(ClusterCmd::Status { watch: true, .. }));
    let result = client.and_then(|c| run(&c, cli.cmd, wait_for, cli.output == Output::Json));
    match result {
        Ok((v, table)) => {
            match cli.output {
                // `--watch` printed every status as it came.
                _ if watching => {}
                Output::Json => println!("{v}"),
                Output::Table => println!("{table}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            match cli.output {
                Output::Json => {
                    let mut err = json!({"code": e.code.name(), "message": e.message});
                    if write {
                        err["outcome"] = json!(outcome(&e));
                    }
                    println!("{}", json!({ "error": err }))
                }
                Output::Table if write => eprintln!(
                    "error: {}: {} (the write was {})",
                    e.code.name(),
                    e.message,
                    outcome(&e).replace('_', " ")
                ),
                Output::Table => eprintln!("error: {}: {}", e.code.name(), e.message),
            }
            ExitCode::from(1)
        }
    }
}
