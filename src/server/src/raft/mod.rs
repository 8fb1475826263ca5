//! The raft-rs glue: a partition's log storage as raft-rs sees it, and the partition itself
//! (one `RawNode`, its pending proposals and reads, its ephemeral state).
//!
//! Must never: write to disk or send a message. The shard's ready loop does that, for all its
//! partitions at once (see `shard::driver`).

pub mod log_store;
pub mod partition;
pub mod snapshot;
