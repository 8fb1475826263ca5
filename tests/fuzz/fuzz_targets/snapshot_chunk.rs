//! Snapshot pieces as a follower reads them from its leader and its disk: chunks, descriptors
//! and whole snapshot files.
#![no_main]
use kahuna_core::snapshot_format::{decode_file, Chunk, Descriptor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Chunk::decode(data);
    let _ = Descriptor::decode(data);
    let _ = decode_file(data);
});
