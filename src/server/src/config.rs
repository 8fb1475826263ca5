//! Node configuration: command-line flags over an optional TOML file over built-in defaults.
//!
//! Every setting has one name, used as the flag (`--max-value-bytes`) and as the TOML key
//! (`max_value_bytes`), so the two never drift apart.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use kahuna_core::Limits;
use serde::Deserialize;

/// Declares the settings once: clap flags, TOML keys and the merge all come from this list.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*) => {
        /// Flags and file keys; every one optional so that flags can override the file.
        #[derive(Parser, Deserialize, Debug, Default, Clone)]
        #[serde(deny_unknown_fields)]
        #[command(name = "kahuna-server", version, about = "Kahuna node: distributed locks, key/value and sequences")]
        pub struct Settings {
            /// A TOML file with any of the settings below (flags win over the file).
            #[arg(long)]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            /// Do not pin shards to cores (for several nodes on one small machine).
            #[arg(long)]
            #[serde(default)]
            pub no_pin: bool,
            $( $(#[doc = $doc])* #[arg(long)] pub $name: Option<$ty>, )*
        }

        /// The resolved configuration of a node.
        #[derive(Debug, Clone)]
        pub struct NodeConfig {
            pub no_pin: bool,
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Settings {
            fn resolve(self, file: Settings) -> NodeConfig {
                NodeConfig {
                    no_pin: self.no_pin || file.no_pin,
                    $( $name: self.$name.or(file.$name).unwrap_or_else(|| $default), )*
                }
            }
        }
    };
}

settings! {
    /// This node's id in the cluster (never reused).
    id: u64 = 1;
    /// Client listener address.
    listen: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    /// Peer listener (Raft and forwarded requests); shard N listens on its port + N. Default:
    /// this node's address in `initial_cluster` (where its peers reach it), else the client
    /// port + 100. Set it apart from that address only when something forwards one to the
    /// other (a proxy or NAT).
    peer_listen: String = String::new();
    /// Every member of a new cluster, `id=host:peer_port,...`; default: this node alone.
    initial_cluster: String = String::new();
    /// Replicas of each partition (at most the cluster size).
    replication_factor: usize = 3;
    /// Where the WAL and RocksDB live.
    data_dir: PathBuf = PathBuf::from("./data");
    /// Shards (one glommio executor each); default: one per core.
    shards: usize = core_affinity::get_core_ids().map(|c| c.len()).unwrap_or(1).max(1);
    /// Partitions a new cluster starts with, dealt round-robin to its shards (splits add more;
    /// a restore takes the backup's).
    partitions: usize = 8;
    /// Largest key, lock resource or sequence name.
    max_key_bytes: usize = 1024;
    /// Largest value.
    max_value_bytes: usize = 1 << 20;
    /// Largest frame on the client wire.
    max_frame_bytes: usize = 4 << 20;
    /// Client connections one shard accepts at once.
    max_connections_per_shard: usize = 1024;
    /// Requests in flight on one connection; more get OVERLOADED.
    max_inflight_per_connection: usize = 1024;
    /// Ephemeral state one shard may hold in memory.
    ephemeral_mb_per_shard: usize = 256;
    /// WAL segment size.
    wal_segment_mb: u64 = 64;
    /// RocksDB block cache per shard.
    block_cache_mb: usize = 64;
    /// Raft tick interval; elections take 10 ticks, heartbeats 2.
    raft_tick_ms: u64 = 100;
    /// Raft entries a leader keeps in memory for lagging followers; one further behind gets a
    /// snapshot of the partition instead.
    max_log_entries_in_memory: u64 = 100_000;
    /// The same bound in bytes of entries (applied entries kept for lagging followers; entries
    /// not yet applied are bounded by raft's uncommitted-size limit).
    max_log_mb_in_memory: usize = 64;
    /// Seconds a partition's preferred replica must be up and caught up before its leader hands
    /// leadership back to it, keeping leaders spread after a node returns; 0 = never move
    /// leaders. A move drops the partition's ephemeral keys and locks (they live in the
    /// leader's memory only), as a leader failure does.
    leader_rebalance_secs: u64 = 3;
    /// Deadline of a request that names none.
    default_timeout_ms: u64 = 5000;
    /// Older revisions kept per key.
    history_retention: u64 = 32;
    /// Seconds after a persistent key's TTL runs out before its record and history are removed
    /// (until then `get --revision` and `history` still show it). New keys of a partition start
    /// above the highest revision it removed, so revisions are never reused.
    expired_key_grace_secs: u64 = 60;
    /// Spin this long before parking an idle shard (trades CPU for cross-core latency).
    spin_before_park_us: u64 = 0;
    /// The largest difference between nodes' clocks the cluster assumes (as CockroachDB's
    /// `--max-offset`, 500 ms). A timestamp further ahead than this is not taken into this
    /// node's clock; a node whose clock is further than this from most of its peers grants no
    /// leases; a lock whose lease an earlier leader granted is honoured this much past its expiry.
    max_clock_offset_ms: u64 = 500;
    /// Where Prometheus scrapes this node (`/metrics`, `/health`); default: the client port +
    /// 200 on the client address; `off` serves nothing.
    metrics_listen: String = String::new();
    /// `text` or `json` (one object per line, with the span fields).
    log_format: String = "text".to_string();
    /// What to log: a level (`info`) or a filter (`info,raft=info`); `RUST_LOG` wins. raft-rs
    /// logs every partition's elections at `info`: by default only its warnings show.
    log_level: String = "info,raft=warn".to_string();
    /// Raft ticks a partition stays idle before its leader quiesces it (no ticks, heartbeats or
    /// elections until a request or a message wakes it; a follower wakes by itself when the
    /// leader's node falls silent); 0 = never.
    quiesce_after_ticks: u64 = kahuna_core::quiesce::QUIESCE_AFTER_TICKS;
    /// A partition whose data passes this size on disk (approximate, compressed) splits in two
    /// at the middle of its keys; 0 = never by size.
    split_size_mb: u64 = 256;
    /// A partition that serves more requests a second than this, on average over
    /// `split_load_window_secs`, splits where its sampled load divides evenly (never inside one
    /// hot key); 0 = never by load.
    split_load_qps: u64 = 2500;
    /// The window the load of `split_load_qps` is averaged over.
    split_load_window_secs: u64 = 10;
    /// Join a running cluster: a new node (empty data directory) asks the member at this client
    /// address to record it, and starts from the cluster's map; the balancer then moves replicas
    /// to it. Its `--id` must never have been a member (ids are never reused).
    join: String = String::new();
    /// Start a new cluster's node from a backup (`kahuna-cli backup create DIR`): every node of
    /// the new cluster names the same backup, on an empty data directory.
    restore_from: String = String::new();
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl NodeConfig {
    pub fn from_args() -> Result<NodeConfig, ConfigError> {
        Self::from_settings(Settings::parse())
    }

    pub fn from_settings(flags: Settings) -> Result<NodeConfig, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?
            }
            None => Settings::default(),
        };
        let cfg = flags.resolve(file);
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.id == 0 {
            return bad("id must be at least 1".into());
        }
        if self.shards == 0 || self.shards > 256 {
            return bad(format!("shards must be 1..=256, not {}", self.shards));
        }
        if self.quiesce_after_ticks != 0 && self.quiesce_after_ticks < 10 {
            return bad(format!(
                "quiesce_after_ticks must be 0 (never) or at least 10 (an election timeout), not {}",
                self.quiesce_after_ticks
            ));
        }
        let max = kahuna_core::partition::MAX_INITIAL_PARTITIONS;
        if self.partitions < self.shards || self.partitions > max {
            return bad(format!(
                "partitions must be between shards ({}) and {max}, not {}",
                self.shards, self.partitions
            ));
        }
        if self.max_frame_bytes < self.max_value_bytes + self.max_key_bytes * 2 + 1024 {
            return bad(
                "max_frame_bytes must hold a largest value and key with room to spare".into()
            );
        }
        self.members()?;
        self.check_ports()?;
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad(format!("log_format must be text or json, not {:?}", self.log_format));
        }
        if self.raft_tick_ms == 0 || self.wal_segment_mb == 0 {
            return bad("raft_tick_ms and wal_segment_mb must be positive".into());
        }
        Ok(())
    }

    /// This node's peer listener address (shard 0; shard N adds N to the port).
    pub fn peer_addr(&self) -> Result<SocketAddr, ConfigError> {
        if !self.peer_listen.is_empty() {
            return self.peer_listen.parse().map_err(|_| {
                ConfigError::Invalid(format!("peer_listen {:?} is not host:port", self.peer_listen))
            });
        }
        if let Some(listed) = self.listed_peer_addr()? {
            return Ok(listed);
        }
        let mut a = self.listen;
        a.set_port(self.listen.port().checked_add(100).ok_or_else(|| {
            ConfigError::Invalid("listen port too high for the default peer port".into())
        })?);
        Ok(a)
    }

    /// Refuses addresses that would collide once every shard listens: shard N of a node takes
    /// its peer port + N, so consecutive peer ports on one host overlap as soon as nodes run
    /// more than one shard (node 1's shard 1 would listen on node 2's peer port, and every
    /// request would then fail with `NOT_LEADER`/`UNAVAILABLE`).
    fn check_ports(&self) -> Result<(), ConfigError> {
        let members = self.members()?;
        if members.len() < 2 {
            return Ok(());
        }
        let n = self.shards as u32;
        let mut taken: Vec<(String, SocketAddr, u32)> =
            members.iter().map(|(id, a)| (format!("node {id}'s peer ports"), *a, n)).collect();
        taken.push(("this node's client address".into(), self.listen, 1));
        if let Some(m) = self.metrics_addr()? {
            taken.push(("this node's metrics address".into(), m, 1));
        }
        let own = self.peer_addr()?;
        if members.get(&self.id) != Some(&own) {
            taken.push(("this node's peer_listen ports".into(), own, n));
        }
        for (what, a, len) in &taken {
            if a.port() as u32 + len - 1 > u16::MAX as u32 {
                return Err(ConfigError::Invalid(format!(
                    "{what} {a} + {} shards run past port 65535",
                    len - 1
                )));
            }
        }
        let span = |a: &SocketAddr, len: u32| (a.port() as u32, a.port() as u32 + len - 1);
        for (i, (w1, a1, l1)) in taken.iter().enumerate() {
            for (w2, a2, l2) in &taken[i + 1..] {
                let same_host =
                    a1.ip() == a2.ip() || a1.ip().is_unspecified() || a2.ip().is_unspecified();
                let ((s1, e1), (s2, e2)) = (span(a1, *l1), span(a2, *l2));
                if same_host && s1 <= e2 && s2 <= e1 {
                    return Err(ConfigError::Invalid(format!(
                        "{w1} {}:{s1}-{e1} overlap {w2} {}:{s2}-{e2}: with {} shards per node, \
                         shard N listens on its node's peer port + N, so give each node {} \
                         free ports apart from the others",
                        a1.ip(),
                        a2.ip(),
                        self.shards,
                        self.shards
                    )));
                }
            }
        }
        Ok(())
    }

    fn listed_peer_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if self.initial_cluster.trim().is_empty() {
            return Ok(None);
        }
        Ok(self.parse_members()?.get(&self.id).copied())
    }

    /// The cluster's members: node id → peer address (shard 0).
    pub fn members(&self) -> Result<std::collections::BTreeMap<u64, SocketAddr>, ConfigError> {
        if self.initial_cluster.trim().is_empty() {
            let mut m = std::collections::BTreeMap::new();
            m.insert(self.id, self.peer_addr()?);
            return Ok(m);
        }
        let m = self.parse_members()?;
        if !m.contains_key(&self.id) {
            return Err(ConfigError::Invalid(format!(
                "initial_cluster does not list this node (id {})",
                self.id
            )));
        }
        Ok(m)
    }

    fn parse_members(&self) -> Result<std::collections::BTreeMap<u64, SocketAddr>, ConfigError> {
        let mut m = std::collections::BTreeMap::new();
        for part in self.initial_cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                ConfigError::Invalid(format!("initial_cluster member {part:?} is not id=host:port"))
            };
            let (id, addr) = part.split_once('=').ok_or_else(bad)?;
            let id: u64 = id.trim().parse().map_err(|_| bad())?;
            let addr: SocketAddr = addr.trim().parse().map_err(|_| bad())?;
            if id == 0 || m.insert(id, addr).is_some() {
                return Err(ConfigError::Invalid(format!(
                    "initial_cluster: node id {id} is zero or repeated"
                )));
            }
        }
        if !m.contains_key(&self.id) {
            return Err(ConfigError::Invalid(format!(
                "initial_cluster does not list this node (id {})",
                self.id
            )));
        }
        Ok(m)
    }

    /// The metrics endpoint's address, if it is on.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        match self.metrics_listen.as_str() {
            "off" => Ok(None),
            "" => {
                let mut a = self.listen;
                a.set_port(self.listen.port().checked_add(200).ok_or_else(|| {
                    ConfigError::Invalid("listen port too high for the default metrics port".into())
                })?);
                Ok(Some(a))
            }
            s => s.parse().map(Some).map_err(|_| {
                ConfigError::Invalid(format!("metrics_listen {s:?} is not host:port or off"))
            }),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            history_retention: self.history_retention,
            ..Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configs_in_tuning_are_valid() {
        let tuning = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tuning");
        let mut n = 0;
        for dir in ["cluster-3", "cluster-5", "."] {
            for e in std::fs::read_dir(tuning.join(dir)).unwrap().flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "toml") {
                    let flags =
                        Settings::parse_from(["kahuna-server", "--config", p.to_str().unwrap()]);
                    let cfg = NodeConfig::from_settings(flags)
                        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                    assert_eq!(cfg.peer_addr().unwrap().port(), 7100);
                    n += 1;
                }
            }
        }
        assert_eq!(n, 9);
    }

    #[test]
    fn flags_override_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, "id = 3\nshards = 1\npartitions = 4\nlisten = \"127.0.0.1:9000\"\n")
            .unwrap();
        let flags = Settings::parse_from([
            "kahuna-server",
            "--config",
            path.to_str().unwrap(),
            "--partitions",
            "6",
        ]);
        let cfg = NodeConfig::from_settings(flags).unwrap();
        assert_eq!(cfg.id, 3);
        assert_eq!(cfg.partitions, 6);
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.max_value_bytes, 1 << 20);
        std::fs::write(&path, "idd = 3\n").unwrap();
        let flags = Settings::parse_from(["kahuna-server", "--config", path.to_str().unwrap()]);
        assert!(matches!(NodeConfig::from_settings(flags), Err(ConfigError::Parse { .. })));
        let flags = Settings::parse_from([
            "kahuna-server",
            "--id",
            "2",
            "--initial-cluster",
            "1=127.0.0.1:1,3=127.0.0.1:3",
        ]);
        assert!(matches!(NodeConfig::from_settings(flags), Err(ConfigError::Invalid(_))));
        let flags = Settings::parse_from([
            "kahuna-server",
            "--id",
            "2",
            "--initial-cluster",
            "1=127.0.0.1:1000, 2=127.0.0.1:2000",
        ]);
        assert_eq!(NodeConfig::from_settings(flags).unwrap().members().unwrap().len(), 2);
        let flags = Settings::parse_from(["kahuna-server", "--listen", "127.0.0.1:7000"]);
        assert_eq!(NodeConfig::from_settings(flags).unwrap().peer_addr().unwrap().port(), 7100);
        let flags = Settings::parse_from(["kahuna-server", "--id", "0"]);
        assert!(matches!(NodeConfig::from_settings(flags), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn members_whose_shard_ports_collide_are_refused_with_the_reason() {
        let cfg = |shards: &str, members: &str, listen: &str| {
            NodeConfig::from_settings(Settings::parse_from([
                "kahuna-server",
                "--id",
                "1",
                "--shards",
                shards,
                "--listen",
                listen,
                "--initial-cluster",
                members,
            ]))
        };
        let consecutive = "1=127.0.0.1:7100,2=127.0.0.1:7101,3=127.0.0.1:7102";
        // (shards, members, client address, refused because)
        let cases = [
            ("1", consecutive, "127.0.0.1:7000", None),
            (
                "2",
                consecutive,
                "127.0.0.1:7000",
                Some("node 1's peer ports 127.0.0.1:7100-7101 overlap node 2's"),
            ),
            ("2", "1=127.0.0.1:7100,2=127.0.0.1:7102,3=127.0.0.1:7104", "127.0.0.1:7000", None),
            ("2", "1=10.0.0.1:7100,2=10.0.0.2:7100", "10.0.0.1:7000", None),
            (
                "1",
                "1=127.0.0.1:7100,2=127.0.0.1:7101",
                "127.0.0.1:7101",
                Some("this node's client address"),
            ),
            ("2", "1=0.0.0.0:7100,2=10.0.0.2:7101", "10.0.0.1:7000", Some("overlap")),
        ];
        for (shards, members, listen, refused) in cases {
            match (cfg(shards, members, listen), refused) {
                (Ok(_), None) => {}
                (Err(ConfigError::Invalid(m)), Some(why)) => {
                    assert!(m.contains(why), "{shards} {members}: {m}")
                }
                (got, want) => panic!("{shards} {members} {listen}: {got:?}, wanted {want:?}"),
            }
        }
    }
}
