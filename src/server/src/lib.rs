//! kahuna-server: one node of a Kahuna cluster.
//!
//! The modules follow the data path (DESIGN.md §1), top to bottom:
//! `transport` (client listener, frames) → `shard` (routing, cross-core mesh, ready loop) →
//! `raft` (raft-rs glue: partitions and their log storage) → `storage` (WAL and RocksDB).
//! `node` starts it all; `config` says how.

pub mod clock;
pub mod cluster;
pub mod config;
pub mod fatal;
pub mod faults;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod restore;
pub mod shard;
pub mod storage;
pub mod transport;
