//! WAL segment bytes as recovery reads them from a disk: record headers, CRCs, sequence
//! numbers, rkyv payloads, and the search for valid records after a bad one.
#![no_main]
use kahuna_core::wal_format::{first_record_seq, later_record, scan_segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = first_record_seq(data).unwrap_or(0);
    let (_, end, _) = scan_segment(data, first);
    let _ = later_record(data, end, first);
});
