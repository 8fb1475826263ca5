//! The frames nodes send each other on the peer links (pure: encode and decode only).
//!
//! ```text
//!  frame: [len u32][kind u8][from node u64][payload]
//!    raft      payload: [partition u64][eraftpb::Message, protobuf (decoded by prost)]
//!    request   payload: [token u64][partition u64][hops u8][flatbuffers Request]
//!    response  payload: [token u64][flatbuffers Response frame, with its length prefix]
//!    ping      payload: [sender's wall clock ms u64]
//!    pong      payload: [the ping's clock u64][answerer's wall clock ms u64]
//!    chunk     payload: a snapshot file chunk ([`Chunk`])
//!    ack       payload: [partition u64][transfer u64][bytes of the file received u64]
//!    map       payload: partition descriptors, rkyv (at most [`MAX_DESCRIPTORS`])
//!    quiesce   payload: [partition u64][term u64][last index u64]
//!    wake      payload: [partition u64]
//! ```
//! Peer bytes are untrusted input: [`decode`] answers a typed error for anything malformed
//! and never panics (prost bounds the recursion of a Raft message at 100 levels).

use prost::Message as _;
use raft::eraftpb::Message;
use thiserror::Error;

use crate::partition::PartitionInfo;
use crate::snapshot_format::Chunk;

/// The largest peer frame: a client frame plus a little, a Raft append of `max_size_per_msg`
/// with one large entry, or a snapshot chunk.
pub const MAX_PEER_FRAME: usize = 16 << 20;

const KIND_RAFT: u8 = 1;
const KIND_REQUEST: u8 = 2;
const KIND_RESPONSE: u8 = 3;
const KIND_CLOCK_PING: u8 = 4;
const KIND_CLOCK_PONG: u8 = 5;
const KIND_SNAP_CHUNK: u8 = 6;
const KIND_SNAP_ACK: u8 = 7;
const KIND_MAP: u8 = 8;
const KIND_QUIESCE: u8 = 9;
const KIND_WAKE: u8 = 10;

/// Descriptors one map frame may carry: as many partitions as a node may start with (about
/// 6 MiB at most, under [`MAX_PEER_FRAME`]).
pub const MAX_DESCRIPTORS: usize = crate::partition::MAX_INITIAL_PARTITIONS;

#[derive(Clone, Debug, PartialEq)]
pub enum PeerFrame {
    Raft {
        partition: u64,
        msg: Box<Message>,
    },
    /// A client request forwarded to the node that can serve it.
    Request {
        token: u64,
        partition: u64,
        hops: u8,
        request: Vec<u8>,
    },
    Response {
        token: u64,
        response: Vec<u8>,
    },
    ClockPing {
        sent_ms: u64,
    },
    ClockPong {
        sent_ms: u64,
        remote_ms: u64,
    },
    SnapChunk(Chunk),
    SnapAck {
        partition: u64,
        transfer: u64,
        upto: u64,
    },
    /// Partition descriptors the sender knows (after a split, and now and then): a node that
    /// holds no replica of a partition learns its range changes this way.
    Map(Vec<PartitionInfo>),
    /// The leader of `partition` stops ticking it: nothing happened for a while and every
    /// replica has everything up to `index` (see [`crate::quiesce`]).
    Quiesce {
        partition: u64,
        term: u64,
        index: u64,
    },
    /// A follower of the quiesced `partition` heard from another replica: its leader should
    /// wake and heartbeat.
    Wake {
        partition: u64,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerFrameError {
    #[error("peer frame of {0} bytes")]
    Length(usize),
    #[error("peer frame of unknown kind {0}")]
    Kind(u8),
    #[error("peer frame too short for its kind {0}")]
    Short(u8),
    #[error("peer frame: {0}")]
    Payload(String),
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| u64::from_le_bytes(s.try_into().unwrap()))
}

/// Appends `[len][kind][from][payload]` for `f` to `out`.
pub fn encode(from: u64, f: &PeerFrame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let kind = match f {
        PeerFrame::Raft { .. } => KIND_RAFT,
        PeerFrame::Request { .. } => KIND_REQUEST,
        PeerFrame::Response { .. } => KIND_RESPONSE,
        PeerFrame::ClockPing { .. } => KIND_CLOCK_PING,
        PeerFrame::ClockPong { .. } => KIND_CLOCK_PONG,
        PeerFrame::SnapChunk(_) => KIND_SNAP_CHUNK,
        PeerFrame::SnapAck { .. } => KIND_SNAP_ACK,
        PeerFrame::Map(_) => KIND_MAP,
        PeerFrame::Quiesce { .. } => KIND_QUIESCE,
        PeerFrame::Wake { .. } => KIND_WAKE,
    };
    out.push(kind);
    out.extend_from_slice(&from.to_le_bytes());
    let mut words = |ws: &[u64]| {
        for w in ws {
            out.extend_from_slice(&w.to_le_bytes());
        }
    };
    match f {
        PeerFrame::Raft { partition, msg } => {
            words(&[*partition]);
            // Encoding into a growable buffer cannot fail.
            msg.encode(out).expect("encoding a raft message");
        }
        PeerFrame::Request { token, partition, hops, request } => {
            words(&[*token, *partition]);
            out.push(*hops);
            out.extend_from_slice(request);
        }
        PeerFrame::Response { token, response } => {
            words(&[*token]);
            out.extend_from_slice(response);
        }
        PeerFrame::ClockPing { sent_ms } => words(&[*sent_ms]),
        PeerFrame::ClockPong { sent_ms, remote_ms } => words(&[*sent_ms, *remote_ms]),
        PeerFrame::SnapChunk(chunk) => chunk.encode_into(out),
        PeerFrame::SnapAck { partition, transfer, upto } => words(&[*partition, *transfer, *upto]),
        PeerFrame::Quiesce { partition, term, index } => words(&[*partition, *term, *index]),
        PeerFrame::Wake { partition } => words(&[*partition]),
        PeerFrame::Map(infos) => {
            let n = infos.len().min(MAX_DESCRIPTORS);
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&infos[..n].to_vec())
                .expect("serialising descriptors");
            out.extend_from_slice(&bytes);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Checks a frame's length prefix: `Ok(None)` while more bytes are needed, else the length of
/// the frame after the prefix.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, PeerFrameError> {
    let Some(b) = buf.get(..4) else { return Ok(None) };
    let len = u32::from_le_bytes(b.try_into().unwrap()) as usize;
    if !(9..=MAX_PEER_FRAME).contains(&len) {
        return Err(PeerFrameError::Length(len));
    }
    Ok((buf.len() >= 4 + len).then_some(len))
}

/// Decodes one frame (after its length prefix): the sending node and what it sent.
pub fn decode(f: &[u8]) -> Result<(u64, PeerFrame), PeerFrameError> {
    let (&kind, rest) = f.split_first().ok_or(PeerFrameError::Length(0))?;
    let from = u64_at(rest, 0).ok_or(PeerFrameError::Short(kind))?;
    let body = &rest[8..];
    let short = || PeerFrameError::Short(kind);
    let frame = match kind {
        KIND_RAFT => {
            let partition = u64_at(body, 0).ok_or_else(short)?;
            let msg = Message::decode(&body[8..])
                .map_err(|e| PeerFrameError::Payload(format!("raft message: {e}")))?;
            PeerFrame::Raft { partition, msg: Box::new(msg) }
        }
        KIND_REQUEST => {
            let (token, partition) =
                (u64_at(body, 0).ok_or_else(short)?, u64_at(body, 8).ok_or_else(short)?);
            let hops = *body.get(16).ok_or_else(short)?;
            PeerFrame::Request { token, partition, hops, request: body[17..].to_vec() }
        }
        KIND_RESPONSE => {
            let token = u64_at(body, 0).ok_or_else(short)?;
            PeerFrame::Response { token, response: body[8..].to_vec() }
        }
        KIND_CLOCK_PING => PeerFrame::ClockPing { sent_ms: u64_at(body, 0).ok_or_else(short)? },
        KIND_CLOCK_PONG => PeerFrame::ClockPong {
            sent_ms: u64_at(body, 0).ok_or_else(short)?,
            remote_ms: u64_at(body, 8).ok_or_else(short)?,
        },
        KIND_SNAP_CHUNK => PeerFrame::SnapChunk(
            Chunk::decode(body).map_err(|e| PeerFrameError::Payload(e.to_string()))?,
        ),
        KIND_SNAP_ACK => PeerFrame::SnapAck {
            partition: u64_at(body, 0).ok_or_else(short)?,
            transfer: u64_at(body, 8).ok_or_else(short)?,
            upto: u64_at(body, 16).ok_or_else(short)?,
        },
        KIND_QUIESCE => PeerFrame::Quiesce {
            partition: u64_at(body, 0).ok_or_else(short)?,
            term: u64_at(body, 8).ok_or_else(short)?,
            index: u64_at(body, 16).ok_or_else(short)?,
        },
        KIND_WAKE => PeerFrame::Wake { partition: u64_at(body, 0).ok_or_else(short)? },
        KIND_MAP => {
            let infos = rkyv::from_bytes::<Vec<PartitionInfo>, rkyv::rancor::Error>(body)
                .map_err(|e| PeerFrameError::Payload(format!("descriptors: {e}")))?;
            if infos.len() > MAX_DESCRIPTORS {
                return Err(PeerFrameError::Payload(format!("{} descriptors", infos.len())));
            }
            PeerFrame::Map(infos)
        }
        other => return Err(PeerFrameError::Kind(other)),
    };
    Ok((from, frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_roundtrips() {
        let frames = vec![
            PeerFrame::Raft {
                partition: 9,
                msg: Box::new(Message { to: 2, term: 7, ..Default::default() }),
            },
            PeerFrame::Request { token: 5, partition: 3, hops: 1, request: vec![1, 2] },
            PeerFrame::Response { token: 5, response: vec![1, 2, 3] },
            PeerFrame::ClockPing { sent_ms: 11 },
            PeerFrame::ClockPong { sent_ms: 11, remote_ms: 12 },
            PeerFrame::SnapChunk(Chunk {
                partition: 1,
                transfer: 6,
                index: 2,
                term: 3,
                total: 4,
                offset: 1,
                data: vec![7, 7],
            }),
            PeerFrame::SnapAck { partition: 1, transfer: 6, upto: 4 },
            PeerFrame::Map(crate::PartitionMap::initial(3, 1, &[1, 2], 2).partitions().to_vec()),
            PeerFrame::Quiesce { partition: 4, term: 5, index: 6 },
            PeerFrame::Wake { partition: 4 },
        ];
        let mut out = Vec::new();
        for f in &frames {
            encode(42, f, &mut out);
        }
        let mut at = 0;
        for f in &frames {
            let len = frame_len(&out[at..]).unwrap().unwrap();
            assert_eq!(decode(&out[at + 4..at + 4 + len]).unwrap(), (42, f.clone()));
            at += 4 + len;
        }
        assert_eq!(at, out.len());
    }

    /// Seeds for the fuzz corpus, one per frame kind added since it was made:
    /// `KAHUNA_FUZZ_SEEDS=$PWD/tests/fuzz/corpus/peer_frame cargo test -p kahuna-core
    /// write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir = std::env::var("KAHUNA_FUZZ_SEEDS").expect("KAHUNA_FUZZ_SEEDS names the corpus");
        let map = crate::PartitionMap::initial(3, 2, &[1, 2, 3], 3).partitions().to_vec();
        let frames = [
            ("map", PeerFrame::Map(map)),
            ("quiesce", PeerFrame::Quiesce { partition: 4, term: 5, index: 6 }),
            ("wake", PeerFrame::Wake { partition: 4 }),
        ];
        for (name, f) in frames {
            let mut out = Vec::new();
            encode(7, &f, &mut out);
            std::fs::write(format!("{dir}/{name}"), out).unwrap();
        }
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        // (bytes after the length prefix, the error)
        let cases: Vec<(Vec<u8>, PeerFrameError)> = vec![
            (vec![], PeerFrameError::Length(0)),
            (vec![1, 0, 0], PeerFrameError::Short(1)),
            (vec![99; 9], PeerFrameError::Kind(99)),
            ([vec![2], vec![0; 8], vec![0; 10]].concat(), PeerFrameError::Short(2)),
            ([vec![5], vec![0; 8], vec![0; 12]].concat(), PeerFrameError::Short(5)),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode(&bytes).unwrap_err(), want, "{bytes:?}");
        }
        let garbage = [vec![1], vec![0; 8], vec![0; 8], vec![0xff; 20]].concat();
        assert!(matches!(decode(&garbage), Err(PeerFrameError::Payload(_))));
        let map = [vec![8], vec![0; 8], vec![0xff; 20]].concat();
        assert!(matches!(decode(&map), Err(PeerFrameError::Payload(_))));
        assert_eq!(frame_len(&[1, 0]), Ok(None));
        assert_eq!(frame_len(&[3, 0, 0, 0]), Err(PeerFrameError::Length(3)));
        assert_eq!(
            frame_len(&u32::MAX.to_le_bytes()),
            Err(PeerFrameError::Length(u32::MAX as usize))
        );
        assert_eq!(frame_len(&[20, 0, 0, 0, 1]), Ok(None));
    }
}
