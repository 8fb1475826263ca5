//! Client frames and requests as a server reads them off a socket: framing, the flatbuffers
//! verifier, then the owned request; and the answers a client reads.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((s, e))) = kahuna_protocol::parse_frame(&data[at..], 1 << 20) {
        let payload = &data[at + s..at + e];
        let _ = kahuna_protocol::decode_request(payload);
        let _ = kahuna_protocol::decode_response(payload);
        at += e;
    }
    let _ = kahuna_protocol::decode_request(data);
});
