//! Kahuna's wire contract, shared by the server, the client and the tests.
//!
//! Owns: the flatbuffers code generated from `schema/kahuna.fbs` (committed, checked by
//! `make schema-check`), the length-prefixed framing, the owned message types ([`Op`], [`Reply`])
//! and the stable error codes. Must never: perform I/O or depend on an async runtime, so the
//! thin client can embed it without pulling in the server's stack.
//!
//! A frame is `u32` little-endian length + one flatbuffer (`Request` or `Response`):
//!
//! ```text
//!  ┌──────────┬──────────────────────────────┐
//!  │ len: u32 │ flatbuffer (len bytes)        │   len ≤ max_frame_bytes
//!  └──────────┴──────────────────────────────┘
//! ```

pub mod codec;
pub mod frame;
pub mod types;

#[allow(clippy::all, unsafe_op_in_unsafe_fn, mismatched_lifetime_syntaxes, unused_imports)]
#[rustfmt::skip]
mod generated {
    include!("generated/kahuna_generated.rs");
}

pub use generated::kahuna::wire;

pub use codec::{decode_request, decode_response, encode_request, encode_response, DecodeError};
pub use frame::{
    parse_frame, write_frame, FrameError, DEFAULT_MAX_FRAME_BYTES, FRAME_HEADER_BYTES,
};
pub use types::{
    BackupChunk, ClusterStatus, Compare, CompareOp, CompareTarget, Durability, ErrorCode, KvItem,
    LockState, MemberAction, MemberInfo, NodeStatus, Op, PartitionStatus, ReplicaRole,
    ReplicaStatus, Reply, SetCondition, StatusScope, WireError,
};
