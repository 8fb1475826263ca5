//! Peer frames as a node reads them off a peer connection: length, kind, Raft messages (prost),
//! forwarded requests, clock pings, snapshot chunks.
#![no_main]
use kahuna_core::peer_frame::{decode, frame_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some(len)) = frame_len(&data[at..]) {
        if let Ok((_, kahuna_core::peer_frame::PeerFrame::Request { request, .. })) =
            decode(&data[at + 4..at + 4 + len])
        {
            let _ = kahuna_protocol::decode_request(&request);
        }
        at += 4 + len;
    }
    let _ = decode(data);
});
