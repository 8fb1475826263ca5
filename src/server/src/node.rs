//! Node start-up: check the data directory, size glommio's locked memory, start one executor
//! per shard, and have each recover its partitions and start serving.
//!
//! Lifecycle of a shard:
//! 1. prime glommio's DMA probe, open RocksDB and the WAL (recovering every partition's log);
//! 2. rebuild each partition's Raft node from RocksDB's apply state and the WAL's entries;
//! 3. join the channel mesh (all shards), start the mesh receivers and the ready loop;
//! 4. bind the client listener and serve until the process ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use glommio::channels::local_channel;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};
use kahuna_core::hlc::{Hlc, HlcClock};
use kahuna_core::{LogCommand, PartitionMap};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::raft::log_store::SnapshotSource;
use crate::raft::partition::Partition;
use crate::shard::mesh::{spawn_receivers, MeshPlan};
use crate::shard::{driver, Shard};
use crate::storage::state::StateDb;
use crate::storage::wal::{prime_dma_probe, Wal, WalError};
use crate::transport;
use crate::transport::peer::{self, PeerLinks};
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("data directory {path} belongs to {found}, but this node was started with {wanted}")]
    Layout { path: String, found: String, wanted: String },
    #[error("locked memory limit of {limit} bytes is too small for {shards} shards (io_uring needs 512 KiB each); raise `ulimit -l` or use fewer shards")]
    MemLock { limit: u64, shards: usize },
    #[error("shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
    #[error("{what} is already in use by another kahuna-server on this host")]
    InUse { what: String },
    #[error("shard {shard}: {reason}")]
    Damaged { shard: usize, reason: String },
    #[error("data directory {path} holds data format {found}; this build reads format {FORMAT} only (start it on an empty directory)")]
    Format { path: String, found: u32 },
    #[error("{0}")]
    Restore(String),
    #[error("{0}")]
    Join(String),
}

impl NodeError {
    /// The process exit code for this failure (see [`crate::fatal`]).
    pub fn exit_code(&self) -> i32 {
        match self {
            NodeError::Damaged { .. } | NodeError::Restore(_) => crate::fatal::EXIT_DAMAGED,
            _ => crate::fatal::EXIT_START,
        }
    }
}

/// What this process holds exclusively while it runs: its data directory (an `flock`) and its
/// addresses. Sockets are bound with `SO_REUSEPORT` so that every shard can accept on one port,
/// and the kernel would let a second server of the same user bind them too and take half the
/// connections; an abstract Unix socket named after each address is exclusive per host (and
/// network namespace) and vanishes with the process, however it ends.
struct Claims {
    _lock: std::fs::File,
    _names: Vec<std::os::unix::net::UnixListener>,
}

fn claim(cfg: &NodeConfig, peer_base: SocketAddr) -> Result<Claims, NodeError> {
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir)
        .map_err(|source| NodeError::DataDir { path: dir.display().to_string(), source })?;
    let path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| NodeError::DataDir { path: dir.display().to_string(), source })?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(NodeError::InUse { what: format!("data directory {}", dir.display()) });
    }
    let mut addrs = vec![("client address", cfg.listen)];
    // Every node listens for peers, one-node clusters too: a node may join at any time.
    for shard in 0..cfg.shards {
        addrs.push(("peer address", peer::shard_addr(peer_base, shard)));
    }
    let mut names = Vec::new();
    for (what, addr) in addrs {
        let name = format!("kahuna-server:{addr}");
        let taken = || NodeError::InUse { what: format!("{what} {addr}") };
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|_| taken())?;
        names.push(std::os::unix::net::UnixListener::bind_addr(&sa).map_err(|_| taken())?);
    }
    Ok(Claims { _lock: lock, _names: names })
}

/// What a data directory was created with; a restart must agree.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Layout {
    node_id: u64,
    shards: usize,
    partitions: usize,
    /// The cluster's members and replication factor: replica placement is derived from them,
    /// so a restart with others would silently move partitions away from their data.
    #[serde(default)]
    members: String,
    #[serde(default)]
    replication_factor: usize,
    /// The on-disk format of the WAL entries and records ([`FORMAT`]); absent = 1.
    #[serde(default = "format_one")]
    format: u32,
}

/// The data format this build writes and reads. 2: log entries carry their apply settings,
/// lock records the term of their lease. 3: partition descriptors name their learners. 4: a
/// key's older revisions are stored under its escaped key (`keys::history_key`), so splits
/// keep them with the key.
const FORMAT: u32 = 4;

fn format_one() -> u32 {
    1
}

impl Layout {
    fn describe(&self) -> String {
        format!(
            "node {} with {} shards in cluster [{}] (replication {})",
            self.node_id, self.shards, self.members, self.replication_factor
        )
    }
}

const LAYOUT_FILE: &str = "kahuna-node.toml";
/// The layout's member list of a node that joined a running cluster.
const JOINED: &str = "joined";

/// The data directory's layout, and whether this start created it (the directory was new).
fn check_layout(cfg: &NodeConfig) -> Result<(Layout, bool), NodeError> {
    let dir = &cfg.data_dir;
    let io = |source| NodeError::DataDir { path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(LAYOUT_FILE);
    let members = cfg.members().map_err(|e| io(std::io::Error::other(e.to_string())))?;
    // A node that joined a running cluster records that, not a member list (which changes).
    let members = if cfg.join.is_empty() {
        members.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",")
    } else {
        JOINED.to_string()
    };
    let wanted = Layout {
        node_id: cfg.id,
        shards: cfg.shards,
        partitions: cfg.partitions,
        members,
        replication_factor: cfg
            .replication_factor
            .clamp(1, cfg.members().map(|m| m.len()).unwrap_or(1)),
        format: FORMAT,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: Layout =
                toml::from_str(&text).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            if found.format != FORMAT {
                return Err(NodeError::Format {
                    path: dir.display().to_string(),
                    found: found.format,
                });
            }
            // Files written before membership was recorded carry none: nothing to compare.
            let cluster_differs = !found.members.is_empty()
                && (found.members != wanted.members
                    || found.replication_factor != wanted.replication_factor);
            if found.node_id != wanted.node_id || found.shards != wanted.shards || cluster_differs {
                return Err(NodeError::Layout {
                    path: dir.display().to_string(),
                    found: found.describe(),
                    wanted: wanted.describe(),
                });
            }
            Ok((found, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = toml::to_string(&wanted).expect("layout serialises");
            let tmp = dir.join(format!("{LAYOUT_FILE}.tmp"));
            std::fs::write(&tmp, text).map_err(io)?;
            std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io)?;
            Ok((wanted, true))
        }
        Err(e) => Err(io(e)),
    }
}

/// glommio registers `io_memory` per ring (3 rings per executor) and the kernel counts it
/// against RLIMIT_MEMLOCK unless we hold CAP_IPC_LOCK (root does). Size it to fit the limit.
fn io_memory_bytes(shards: usize) -> Result<Option<usize>, NodeError> {
    // SAFETY: getrlimit and geteuid only read process state into the struct we pass.
    let (limit, euid) = unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r);
        (r.rlim_cur, libc::geteuid())
    };
    if euid == 0 || limit == libc::RLIM_INFINITY {
        return Ok(None); // glommio's default (10 MiB) registers fine
    }
    let per = (limit as usize / (3 * shards)).min(10 << 20) & !4095;
    if per < 512 << 10 {
        return Err(NodeError::MemLock { limit, shards });
    }
    tracing::info!("memlock limit {limit} bytes: io_memory {per} bytes per shard");
    Ok(Some(per))
}

pub fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let peer_base =
        cfg.peer_addr().map_err(|e| NodeError::Shard { shard: 0, reason: e.to_string() })?;
    let _claims = claim(&cfg, peer_base)?;
    let io_memory = io_memory_bytes(cfg.shards)?;
    let mut members =
        cfg.members().map_err(|e| NodeError::Shard { shard: 0, reason: e.to_string() })?;
    let new_dir = !cfg.data_dir.join(LAYOUT_FILE).exists();
    let joining = !cfg.join.is_empty();
    if joining && new_dir {
        if !cfg.restore_from.is_empty() {
            return Err(NodeError::Restore("--join and --restore-from exclude each other".into()));
        }
        let joined = crate::cluster::join::join(&cfg).map_err(NodeError::Join)?;
        crate::cluster::join::save_map(&cfg.data_dir, &joined.map).map_err(|source| {
            NodeError::DataDir { path: cfg.data_dir.display().to_string(), source }
        })?;
        members.extend(joined.members);
        // Where the members are, for a restart before this node has read the records.
        crate::cluster::membership::store_file(&cfg.data_dir, &members).map_err(|source| {
            NodeError::DataDir { path: cfg.data_dir.display().to_string(), source }
        })?;
        tracing::info!("joined the cluster through {}: members {:?}", cfg.join, members.keys());
    }
    let (layout, fresh) = check_layout(&cfg)?;
    // The peer addresses this node last knew (members that joined since the cluster began).
    let known = crate::cluster::membership::load_file(&cfg.data_dir).map_err(NodeError::Join)?;
    members.extend(known);
    let ids: Vec<u64> = cfg.members().map(|m| m.keys().copied().collect()).unwrap_or_default();
    let mut map =
        PartitionMap::initial(layout.partitions, cfg.shards, &ids, cfg.replication_factor);
    if joining {
        let joined = crate::cluster::join::load_map(&cfg.data_dir).map_err(NodeError::Join)?;
        let parts = joined.ok_or_else(|| {
            NodeError::Join(format!(
                "{} was started with --join but holds no joined map: empty it to join again",
                cfg.data_dir.display()
            ))
        })?;
        map = PartitionMap::from_parts(parts).map_err(NodeError::Join)?;
    }
    let backup = match cfg.restore_from.as_str() {
        "" => None,
        dir if !fresh => {
            // A node restored before restarts as it is (the flag may stay in its unit file);
            // one whose restore did not finish, or that was never restored, is refused.
            let restored = (0..cfg.shards)
                .all(|i| cfg.data_dir.join(format!("shard-{i}")).join(RESTORED).exists());
            if !restored {
                return Err(NodeError::Restore(format!(
                    "--restore-from needs an empty data directory, and {} already holds a node \
                     (or a restore into it that did not finish): empty it to restore",
                    cfg.data_dir.display()
                )));
            }
            tracing::info!("restored from {dir} before; starting from its data directory");
            None
        }
        dir => {
            let (backup, placed) =
                crate::restore::read(Path::new(dir), cfg.shards, &ids, cfg.replication_factor)
                    .map_err(NodeError::Restore)?;
            map = placed;
            Some(Arc::new(backup))
        }
    };
    let plan = MeshPlan::new(cfg.shards);
    StateDb::start_background_threads()
        .map_err(|e| NodeError::Shard { shard: 0, reason: format!("RocksDB threads: {e}") })?;
    let metrics = crate::metrics::Metrics::new();
    if let Some(addr) =
        cfg.metrics_addr().map_err(|e| NodeError::Shard { shard: 0, reason: e.to_string() })?
    {
        crate::metrics::serve(addr, metrics.clone()).map_err(|e| NodeError::Shard {
            shard: 0,
            reason: format!("metrics on {addr}: {e}"),
        })?;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let cfg = Arc::new(cfg);
    let mut handles = Vec::new();
    for shard in 0..cfg.shards {
        let placement = if cfg.no_pin || cores.is_empty() {
            Placement::Unbound
        } else {
            Placement::Fixed(cores[shard % cores.len()].id)
        };
        // Blocking work (snapshots, flushes, big scans) runs on threads free to use any core:
        // glommio would otherwise pin them to the shard's own core, beside its loop.
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("kahuna-shard-{shard}"))
            .blocking_thread_pool_placement(PoolPlacement::Unbound(2));
        if let Some(bytes) = io_memory {
            builder = builder.io_memory(bytes);
        }
        if cfg.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(cfg.spin_before_park_us));
        }
        let (cfg, map, plan, members) = (cfg.clone(), map.clone(), plan.clone(), members.clone());
        let start = ShardStart {
            shard,
            cfg,
            map,
            plan,
            members,
            peer_base,
            metrics: metrics.clone(),
            backup: backup.clone(),
        };
        // A shard that cannot start stops the whole node: the others would serve without it
        // (its partitions unreachable) while the process looks alive.
        let run = move || async move {
            let started = run_shard(start).await;
            if let Err(e) = &started {
                crate::fatal::exit_now(e.exit_code(), &e.to_string());
            }
            started
        };
        let handle = builder.spawn(run).map_err(|e| NodeError::Shard {
            shard,
            reason: format!("starting its executor: {e}"),
        })?;
        handles.push((shard, handle));
    }
    for (shard, handle) in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(NodeError::Shard { shard, reason: format!("executor failed: {e}") })
            }
        }
    }
    Ok(())
}

fn shard_err(shard: usize, reason: String) -> NodeError {
    NodeError::Shard { shard, reason }
}

/// What a shard recovers: its WAL, its partitions, and a clock above every timestamp it saw.
type Recovered = (Wal, BTreeMap<u64, Partition>, HlcClock, crate::storage::wal::RecoveredLogs);

/// The partitions this shard holds: their descriptors in RocksDB (the ranges splits made), or,
/// in a new data directory, the initial map's (written down at once).
async fn descriptors(
    shard: usize,
    cfg: &NodeConfig,
    initial: &PartitionMap,
    db: &StateDb,
) -> Result<Vec<kahuna_core::PartitionInfo>, NodeError> {
    let found =
        db.descriptors().map_err(|e| shard_err(shard, format!("reading descriptors: {e}")))?;
    if !found.is_empty() {
        return Ok(found);
    }
    let infos: Vec<_> = initial
        .partitions()
        .iter()
        .filter(|p| p.shard == shard && p.replicas.contains(&cfg.id))
        .cloned()
        .collect();
    let (db, written) = (db.clone(), infos.clone());
    glommio::executor()
        .spawn_blocking(move || db.put_descriptors(&written))
        .await
        .map_err(|e| shard_err(shard, format!("writing descriptors: {e}")))?;
    Ok(infos)
}

/// Rebuilds the partitions of `shard` from RocksDB (descriptors and applied state) and the
/// WAL (the log).
async fn recover(
    shard: usize,
    cfg: &NodeConfig,
    infos: &[kahuna_core::PartitionInfo],
    db: &StateDb,
    wal_dir: &Path,
    snap_dir: &Path,
) -> Result<Recovered, NodeError> {
    let (wal, mut logs) =
        Wal::open(wal_dir, cfg.wal_segment_mb << 20).await.map_err(|e| match e {
            WalError::Damaged { .. } => NodeError::Damaged { shard, reason: e.to_string() },
            WalError::Io(e) => NodeError::Shard { shard, reason: format!("opening the WAL: {e}") },
        })?;
    let mut parts = BTreeMap::new();
    let mut hlc = HlcClock::default();
    for info in infos {
        let applied = db
            .apply_state(info.id)
            .map_err(|e| shard_err(shard, format!("reading apply state: {e}")))?;
        hlc.observe(Hlc(applied.applied_hlc));
        let log = logs.remove(&info.id).unwrap_or_default();
        let (hs, entries) = crate::raft::partition::log_start(info.id, &applied, log)
            .map_err(|reason| NodeError::Damaged { shard, reason })?;
        // Entries not yet applied were stamped too: the newest stamp bounds the clock from below.
        if let Some(cmd) = entries
            .iter()
            .rev()
            .find(|e| !e.data.is_empty())
            .and_then(|e| LogCommand::decode(&e.data).ok())
        {
            hlc.observe(Hlc(cmd.hlc));
        }
        let fresh = hs.term == 0;
        let source = SnapshotSource::new(db, info, snap_dir);
        let mut p = Partition::open(cfg, source, info.clone(), applied, hs, entries)
            .map_err(|e| shard_err(shard, e))?;
        // The only voter of its group, or the designated first leader of a new group: elect it
        // now rather than after an election timeout.
        if info.replicas.len() == 1 || (fresh && info.replicas[0] == cfg.id) {
            p.node
                .campaign()
                .map_err(|e| shard_err(shard, format!("partition {}: campaign: {e}", info.id)))?;
        }
        parts.insert(info.id, p);
    }
    // What is left belongs to partitions a split created after RocksDB last made its state
    // durable: replaying that split starts them again, from these logs.
    Ok((wal, parts, hlc, logs))
}

/// What a shard starts from: its place in the node and what every shard shares.
/// Written in a shard's directory once every copy of a restore is installed in it.
const RESTORED: &str = "restored";

struct ShardStart {
    shard: usize,
    cfg: Arc<NodeConfig>,
    map: PartitionMap,
    plan: MeshPlan,
    members: BTreeMap<u64, SocketAddr>,
    peer_base: SocketAddr,
    metrics: Arc<crate::metrics::Metrics>,
    /// The checked backup to start this node's partitions from (`--restore-from`).
    backup: Option<Arc<crate::restore::Backup>>,
}

async fn run_shard(start: ShardStart) -> Result<(), NodeError> {
    let ShardStart { shard, cfg, map, plan, members, peer_base, metrics, backup } = start;
    let dir = cfg.data_dir.join(format!("shard-{shard}"));
    let wal_dir = dir.join("wal");
    std::fs::create_dir_all(&wal_dir)
        .map_err(|e| shard_err(shard, format!("{}: {e}", wal_dir.display())))?;
    prime_dma_probe(&dir)
        .await
        .map_err(|e| shard_err(shard, format!("priming the DMA probe: {e}")))?;
    // Opened from a blocking thread: RocksDB starts some threads of its own at the first open
    // (its timer), and a thread inherits its creator's CPU affinity; this shard's is pinned.
    let (path, cache) = (dir.join("state"), cfg.block_cache_mb << 20);
    let db = glommio::executor()
        .spawn_blocking(move || StateDb::open(&path, cache))
        .await
        .map_err(|e| shard_err(shard, format!("opening RocksDB: {e}")))?;
    let snapshots = crate::raft::snapshot::Snapshots::new(dir.join("snap"))
        .map_err(|e| shard_err(shard, format!("snapshot directory: {e}")))?;
    if let Some(backup) = backup {
        // This shard's partitions start from the backup's copies (the directory is new: its
        // WAL is empty, so recovery starts each log at the copy's index).
        for info in
            map.partitions().iter().filter(|p| p.shard == shard && p.replicas.contains(&cfg.id))
        {
            let (copy, id) = (backup[&info.id].clone(), info.id);
            let (db, info, sst) = (db.clone(), info.clone(), snapshots.dir().join("restore.sst"));
            glommio::executor()
                .spawn_blocking(move || {
                    db.install_snapshot_file(
                        info.id,
                        (&info.start, &info.end),
                        &copy.path,
                        &sst,
                        copy.state,
                        Some(&info),
                    )
                })
                .await
                .map_err(|e| NodeError::Restore(format!("partition {id}: {e}")))?;
        }
        let (db2, placed) = (db.clone(), map.clone());
        glommio::executor()
            .spawn_blocking(move || {
                // The old cluster's member records: this cluster has its own members (each
                // node records itself once it serves); every replica drops the same keys.
                let members = kahuna_core::membership::MEMBERS_PREFIX;
                let end = kahuna_core::keys::prefix_end(members).unwrap_or_default();
                db2.delete_user_range(members, &end)?;
                db2.put_map(placed.partitions())
            })
            .await
            .map_err(|e| NodeError::Restore(format!("writing the partition map: {e}")))?;
        // Every copy is in (installs are durable): a restart with the same flags starts as is.
        let marker = dir.join(RESTORED);
        std::fs::write(&marker, cfg.restore_from.as_bytes())
            .and_then(|_| std::fs::File::open(&marker)?.sync_all())
            .and_then(|_| std::fs::File::open(&dir)?.sync_all())
            .map_err(|e| shard_err(shard, format!("{}: {e}", marker.display())))?;
        if shard == 0 {
            tracing::info!("restored {} partitions from {}", backup.len(), cfg.restore_from);
        }
    }
    // The map this node last knew (splits it heard of), else the new cluster's.
    let stored =
        db.stored_map().map_err(|e| shard_err(shard, format!("reading the partition map: {e}")))?;
    let map = match stored.and_then(|parts| PartitionMap::from_parts(parts).ok()) {
        Some(m) => m,
        None => {
            // Kept from the first start on: a joined node's map comes from the cluster.
            let (db, parts) = (db.clone(), map.partitions().to_vec());
            glommio::executor()
                .spawn_blocking(move || db.put_map(&parts))
                .await
                .map_err(|e| shard_err(shard, format!("writing the partition map: {e}")))?;
            map
        }
    };
    let infos = descriptors(shard, &cfg, &map, &db).await?;
    let (wal, parts, hlc, pending_logs) =
        recover(shard, &cfg, &infos, &db, &wal_dir, snapshots.dir()).await?;
    // The node's map: the initial one, with what this shard's splits changed (the other
    // shards' changes arrive over the mesh, the other nodes' over the peer links).
    let map = map.update(&infos).unwrap_or(map);
    let (kick_tx, kick_rx) = local_channel::new_bounded(1);
    let (link, receivers, shard_of_peer) =
        plan.join(shard).await.map_err(|reason| NodeError::Shard { shard, reason })?;
    let shard_ctx = Rc::new(Shard::new(
        shard,
        Rc::new((*cfg).clone()),
        map,
        parts,
        db,
        hlc,
        kick_tx,
        link,
        Some(PeerLinks::start(cfg.id, shard, &members)),
        snapshots,
        metrics.shard(shard),
    ));
    *shard_ctx.cluster.links.borrow_mut() = members.clone();
    {
        let addr = peer::shard_addr(peer_base, shard);
        let peer_listener = TcpListener::bind(addr)
            .map_err(|e| shard_err(shard, format!("binding peer address {addr}: {e}")))?;
        glommio::spawn_local(peer::serve(shard_ctx.clone(), peer_listener)).detach();
    }
    *shard_ctx.pending_logs.borrow_mut() = pending_logs;
    // This shard's partitions, to the other shards (whose stored maps may be older) and nodes.
    driver::tell_map(&shard_ctx, infos.clone(), true);
    spawn_receivers(shard_ctx.clone(), receivers, shard_of_peer);
    glommio::spawn_local(driver::run(shard_ctx.clone(), wal, kick_rx)).detach();
    shard_ctx.kick();
    let listener = TcpListener::bind(cfg.listen)
        .map_err(|e| shard_err(shard, format!("binding {}: {e}", cfg.listen)))?;
    if shard == 0 {
        tracing::info!(
            "kahuna-server node {} serving on {} ({} shards, {} partitions, data in {})",
            cfg.id,
            cfg.listen,
            cfg.shards,
            shard_ctx.map().partitions().len(),
            cfg.data_dir.display()
        );
    }
    if shard == 0 {
        glommio::spawn_local(crate::cluster::membership::keep(shard_ctx.clone())).detach();
    }
    glommio::spawn_local(crate::shard::txn::recover(shard_ctx.clone())).detach();
    transport::client::serve(shard_ctx, listener).await;
    Ok(())
}
