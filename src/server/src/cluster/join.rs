//! A new node joining a running cluster (`--join ADDR`), before its shards start: it asks the
//! member at ADDR (a client address) to record it, and takes the members' peer addresses and the
//! partition map from the answer. The map is kept in the data directory so that a restart
//! before the shards stored their own starts from the same place.
//!
//! A join is idempotent (the same id with the same addresses changes nothing), so it is asked
//! again while the answer is lost or the cluster is electing; a refusal (an id in use or once
//! used, another shard count) stops the start with its reason.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use kahuna_core::PartitionInfo;
use kahuna_protocol::{decode_response, encode_request, ErrorCode, MemberAction, Op, Reply};

use crate::config::NodeConfig;

/// The map a joined node started from.
const JOINED_MAP_FILE: &str = "joined-map.bin";
/// How long a start keeps asking to join.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// What the cluster told the joining node: members' peer addresses and the partition map.
pub struct Joined {
    pub members: BTreeMap<u64, SocketAddr>,
    pub map: Vec<PartitionInfo>,
}

/// Asks `cfg.join` to record this node, until it answers or refuses.
pub fn join(cfg: &NodeConfig) -> Result<Joined, String> {
    let peer = cfg.peer_addr().map_err(|e| e.to_string())?;
    let mut client = cfg.listen;
    if client.ip().is_unspecified() {
        client.set_ip(peer.ip());
    }
    let op = Op::Membership {
        action: MemberAction::Join,
        node: cfg.id,
        client_addr: client.to_string(),
        peer_addr: peer.to_string(),
        shards: cfg.shards as u32,
    };
    let started = Instant::now();
    loop {
        match ask(&cfg.join, &op) {
            Ok(Reply::Membership { members, map, .. }) => {
                let map = rkyv::from_bytes::<Vec<PartitionInfo>, rkyv::rancor::Error>(&map)
                    .map_err(|e| format!("the cluster's partition map does not decode: {e}"))?;
                let members = members
                    .into_iter()
                    .filter(|m| m.state != "removed")
                    .filter_map(|m| Some((m.id, m.peer_addr.parse().ok()?)))
                    .collect();
                return Ok(Joined { members, map });
            }
            Ok(other) => return Err(format!("{} answered the join with {other:?}", cfg.join)),
            Err((Some(ErrorCode::Invalid), e)) => {
                return Err(format!("{} refused the join: {e}", cfg.join))
            }
            Err((_, e)) if started.elapsed() < JOIN_PATIENCE => {
                tracing::info!("joining through {}: {e}; asking again", cfg.join);
                std::thread::sleep(Duration::from_millis(500));
            }
            Err((_, e)) => return Err(format!("joining through {}: {e}", cfg.join)),
        }
    }
}

type AskError = (Option<ErrorCode>, String);

/// One request to a client address, one answer.
fn ask(addr: &str, op: &Op) -> Result<Reply, AskError> {
    let io = |e: std::io::Error| (None, e.to_string());
    let target: SocketAddr = addr
        .parse()
        .map_err(|_| (Some(ErrorCode::Invalid), format!("{addr:?} is not host:port")))?;
    let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let mut frame = Vec::new();
    encode_request(&mut fbb, 1, 8000, op, &mut frame);
    s.write_all(&frame).map_err(io)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(io)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 << 20 {
        return Err((None, format!("an answer of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(io)?;
    match decode_response(&body) {
        Ok((_, Ok(reply), _)) => Ok(reply),
        Ok((_, Err(e), _)) => Err((Some(e.code), e.to_string())),
        Err(e) => Err((None, e.to_string())),
    }
}

/// Keeps the map a join brought (written before the data directory counts as created).
pub fn save_map(dir: &Path, map: &[PartitionInfo]) -> std::io::Result<()> {
    let bytes =
        rkyv::to_bytes::<rkyv::rancor::Error>(&map.to_vec()).map_err(std::io::Error::other)?;
    let (path, tmp) = (dir.join(JOINED_MAP_FILE), dir.join(format!("{JOINED_MAP_FILE}.tmp")));
    std::fs::write(&tmp, &bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The map a join brought, if this node joined.
pub fn load_map(dir: &Path) -> Result<Option<Vec<PartitionInfo>>, String> {
    match std::fs::read(dir.join(JOINED_MAP_FILE)) {
        Ok(b) => rkyv::from_bytes::<Vec<PartitionInfo>, rkyv::rancor::Error>(&b)
            .map(Some)
            .map_err(|e| format!("{JOINED_MAP_FILE}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{JOINED_MAP_FILE}: {e}")),
    }
}
