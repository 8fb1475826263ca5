//! Network listeners. `client`: the flatbuffers protocol that applications speak. Peer traffic
//! (Raft messages between nodes) gets its own listener and framing with replication.

pub mod client;
pub mod peer;
