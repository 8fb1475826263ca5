//! Durable storage of one shard: the Raft WAL (source of durability) and RocksDB (the applied
//! state machine, its own WAL off).
//!
//! Must never: be called from a partition's logic directly: the shard's ready loop alone writes
//! here, in one WAL batch and one RocksDB batch per loop turn.

pub mod state;
pub mod wal;
