//! WAL segment bytes as recovery reads them from a disk: record headers, CRCs, sequence
//! numbers, and the search for valid records after a bad one; and, past the CRC a fuzzer
//! rarely forges, the rkyv payloads of records, log commands and stored records directly.
#![no_main]
use kahuna_core::records::{decode_kv, decode_lock, decode_seq, peek_kv, peek_kv_expiry};
use kahuna_core::wal_format::{decode_payload, first_record_seq, later_record, scan_segment};
use kahuna_core::LogCommand;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = first_record_seq(data).unwrap_or(0);
    let (_, end, _) = scan_segment(data, first);
    let _ = later_record(data, end, first);
    let _ = decode_payload(data);
    let _ = LogCommand::decode(data);
    let _ = (decode_kv(data), decode_lock(data), decode_seq(data));
    let _ = (peek_kv(data, 1), peek_kv_expiry(data));
});
