//! The WAL's on-disk record format (pure: encoding and parsing only; the WAL itself lives in
//! the server's `storage::wal`).
//!
//! ```text
//!  ┌─────────── batch (4 KiB aligned) ───────────┬─ zero padding ─┬── next batch ...
//!  │ [len u32][crc32c u32][seq u64][payload] ... │ 0 0 0 0 ...    │
//!  └─────────────────────────────────────────────┴────────────────┴──
//! ```
//! `payload` is an rkyv-archived [`WalRecord`]; `crc32c` covers `seq` and `payload`; `seq`
//! increases by one per record across segments, so a hole (a lost block) stops a scan.
//! Segment bytes come from a disk: parsing answers where the valid part ends, never panics.

use rkyv::rancor;

/// Batches start on a block boundary (O_DIRECT writes are block-aligned).
pub const BLOCK: usize = 4096;
/// `[len u32][crc32c u32][seq u64]` before each record's payload.
pub const HEADER: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct HardStateRec {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct EntryRec {
    pub index: u64,
    pub term: u64,
    pub entry_type: i32,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// What one partition wrote in one loop turn.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct WalRecord {
    pub partition: u64,
    pub hard_state: Option<HardStateRec>,
    pub entries: Vec<EntryRec>,
}

pub fn encode_record(out: &mut Vec<u8>, seq: u64, rec: &WalRecord) {
    let payload = rkyv::to_bytes::<rancor::Error>(rec).expect("serialising a WAL record");
    let mut crc = crc32c::crc32c(&seq.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&payload);
}

/// A record's payload (rkyv, validated by bytecheck): `None` when malformed.
pub fn decode_payload(payload: &[u8]) -> Option<WalRecord> {
    rkyv::from_bytes::<WalRecord, rancor::Error>(payload).ok()
}

/// Scans one segment's bytes from `expected_seq`; returns the records and where the valid
/// part ends. Stops at the end of the log, a torn or corrupt record, or a sequence gap.
pub fn scan_segment(bytes: &[u8], mut expected_seq: u64) -> (Vec<WalRecord>, usize, u64) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut valid_end = 0usize;
    while pos + HEADER <= bytes.len() {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            if pos.is_multiple_of(BLOCK) {
                break; // a batch always starts with a record: this is the end
            }
            pos = pos.next_multiple_of(BLOCK); // padding after a batch
            continue;
        }
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        let seq = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
        let end = pos + HEADER + len;
        if end > bytes.len() || seq != expected_seq {
            break;
        }
        let payload = &bytes[pos + HEADER..end];
        if crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload) != crc {
            break;
        }
        match decode_payload(payload) {
            Some(r) => records.push(r),
            None => break,
        }
        expected_seq += 1;
        pos = end;
        valid_end = end;
    }
    (records, valid_end, expected_seq)
}

/// The offset of a valid record at a block boundary after `from` whose sequence number is at
/// least `min_seq`: proof that the log goes on after a bad record.
pub fn later_record(bytes: &[u8], from: usize, min_seq: u64) -> Option<usize> {
    let mut pos = from.next_multiple_of(BLOCK);
    if pos == from && from > 0 {
        pos += BLOCK;
    }
    while pos + HEADER <= bytes.len() {
        let seq = u64::from_le_bytes(bytes[pos + 8..pos + 16].try_into().unwrap());
        if seq >= min_seq {
            let (records, _, _) = scan_segment(&bytes[pos..], seq);
            if !records.is_empty() {
                return Some(pos);
            }
        }
        pos += BLOCK;
    }
    None
}

pub fn first_record_seq(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < HEADER {
        return None;
    }
    Some(u64::from_le_bytes(bytes[8..16].try_into().unwrap()))
}
