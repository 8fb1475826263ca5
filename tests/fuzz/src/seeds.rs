//! Writes a small seed corpus per fuzz target from the real encoders, so the fuzzer starts
//! from valid inputs: `cargo run --bin seeds -- <corpus dir>`.

use std::path::Path;

use kahuna_core::peer_frame::{encode, PeerFrame};
use kahuna_core::snapshot_format::{encode_header, encode_pair, encode_trailer, Chunk, Descriptor};
use kahuna_core::wal_format::{encode_record, EntryRec, HardStateRec, WalRecord};
use kahuna_protocol::{Durability, Op, SetCondition};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: seeds <corpus dir>");
    let dir = Path::new(&dir);
    let ops = [
        Op::KvSet {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            durability: Durability::Persistent,
            ttl_ms: 5,
            condition: SetCondition::IfRevision(3),
        },
        Op::KvGet { key: b"k".to_vec(), durability: Durability::Ephemeral, revision: 2 },
        Op::SeqNext { name: b"s".to_vec(), count: 0 },
        Op::LockAcquire {
            resource: b"r".to_vec(),
            owner: b"o".to_vec(),
            lease_ms: 100,
            durability: Durability::Persistent,
        },
    ];
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    for (i, op) in ops.iter().enumerate() {
        let mut frame = Vec::new();
        kahuna_protocol::encode_request(&mut fbb, i as u64 + 1, 1000, op, &mut frame);
        write(dir, "client_frame", &format!("request-{i}"), &frame);
        let mut peer = Vec::new();
        let f = PeerFrame::Request { token: 9, partition: 2, hops: 0, request: frame[4..].to_vec() };
        encode(1, &f, &mut peer);
        write(dir, "peer_frame", &format!("request-{i}"), &peer);
    }
    let mut peer = Vec::new();
    let msg = raft::eraftpb::Message { to: 2, from: 1, term: 3, index: 7, ..Default::default() };
    encode(1, &PeerFrame::Raft { partition: 1, msg: Box::new(msg) }, &mut peer);
    encode(1, &PeerFrame::ClockPong { sent_ms: 1, remote_ms: 2 }, &mut peer);
    encode(1, &PeerFrame::SnapAck { partition: 1, transfer: 3, upto: 2 }, &mut peer);
    write(dir, "peer_frame", "raft-clock-ack", &peer);

    let rec = WalRecord {
        partition: 1,
        hard_state: Some(HardStateRec { term: 2, vote: 1, commit: 5 }),
        entries: vec![EntryRec { index: 5, term: 2, entry_type: 0, data: vec![1; 40], context: vec![] }],
    };
    let mut wal = Vec::new();
    encode_record(&mut wal, 0, &rec);
    encode_record(&mut wal, 1, &WalRecord { partition: 2, ..Default::default() });
    wal.resize(4096, 0);
    write(dir, "wal_records", "two-records", &wal);

    let mut file = encode_header(1, 9, 2);
    encode_pair(&mut file, b"ka", b"1");
    encode_pair(&mut file, b"kb", b"2");
    file.extend_from_slice(&encode_trailer(2));
    write(dir, "snapshot_chunk", "file", &file);
    let d = Descriptor { partition: 1, index: 9, term: 2, bytes: file.len() as u64, crc: 7 };
    write(dir, "snapshot_chunk", "descriptor", &d.encode());
    let mut chunk = Vec::new();
    Chunk { partition: 1, transfer: 3, index: 9, term: 2, total: 10, offset: 0, data: vec![1; 10] }
        .encode_into(&mut chunk);
    write(dir, "snapshot_chunk", "chunk", &chunk);
}
