//! Kahuna's pure logic: what a write does, what a read sees, which partition owns a key.
//!
//! Owns: the key/value, lock and sequence state machines, the log command format, the storage
//! key layout, the hybrid logical clock, the partition map (and how it splits), the split
//! decisions and the request limits.
//! Must never: touch a disk, a socket, an executor or the wall clock. Time comes in as an
//! argument (the HLC carried by the Raft entry), storage as the [`store::Get`]/[`store::Scan`]
//! traits, so every decision here replays identically on every replica and in tests.
//!
//! ```text
//!   Op (protocol) ──validate──▶ WriteOp ──rkyv──▶ Raft entry ──apply(now)──▶ WriteSet + Reply
//!                      │
//!                      └──────▶ read(op, now) on the applied state ──▶ Reply
//! ```

pub mod balance;
pub mod clock_offsets;
pub mod command;
pub mod hlc;
pub mod keys;
pub mod limits;
pub mod membership;
pub mod partition;
pub mod peer_frame;
pub mod quiesce;
pub mod records;
pub mod script;
pub mod snapshot_format;
pub mod split;
pub mod state_machine;
pub mod store;
pub mod txn_plan;
pub mod wal_format;

pub use command::{ApplySettings, LogCommand, WriteOp};
pub use hlc::Hlc;
pub use limits::Limits;
pub use partition::{PartitionInfo, PartitionMap};
