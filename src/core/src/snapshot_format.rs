//! The format of a partition snapshot as it is written, streamed in chunks and installed.
//!
//! ```text
//!  file:       [header][pair]*[trailer]
//!  header:     "KSNP" [version u32][partition u64][index u64][term u64]
//!  pair:       [klen u32][storage key][vlen u32][value]      storage keys in ascending order
//!  trailer:    [0xffff_ffff u32][pairs u64]
//!  descriptor: "KSND" [partition u64][index u64][term u64][bytes u64][crc32c u32]
//! ```
//! The descriptor travels in the Raft `Snapshot.data` (so raft-rs carries a few dozen bytes,
//! not the partition); the file travels beside it in chunks of at most [`CHUNK_BYTES`], and the
//! receiver checks its length and CRC32C against the descriptor before the snapshot is stepped
//! into Raft.
//!
//! Everything here parses untrusted bytes (a peer's, a disk's): errors, never panics, and every
//! length is checked against [`MAX_KEY_BYTES`] / [`MAX_VALUE_BYTES`] before anything is
//! allocated.

use std::io::Read;

use thiserror::Error;

pub const FILE_MAGIC: &[u8; 4] = b"KSNP";
pub const DESC_MAGIC: &[u8; 4] = b"KSND";
/// The version this build writes. 1: the first, its pairs in whichever data format the node
/// that wrote it had. 2: its pairs in data format 4's layout (a key's older revisions under its
/// escaped key); a follower refuses a transferred file of any other version (see
/// [`header_version`]), so nodes of different data formats never take each other's state.
pub const VERSION: u32 = 2;
/// The oldest version [`decode_header`] reads: backups (manifest format 2, written only by data
/// format 4 builds, which vouches for the layout) may hold version 1 files.
pub const OLDEST_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8;
const END: u32 = u32::MAX;
/// Largest chunk of a snapshot file in one peer frame.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Storage keys are user keys plus a kind byte and at most a revision: well below this.
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Stored values are user values plus a record header: well below this.
pub const MAX_VALUE_BYTES: usize = 64 << 20;

#[derive(Debug, Error)]
pub enum SnapshotFormatError {
    #[error("snapshot: {0}")]
    Malformed(String),
    #[error("snapshot: reading: {0}")]
    Io(#[from] std::io::Error),
}

fn bad(msg: impl Into<String>) -> SnapshotFormatError {
    SnapshotFormatError::Malformed(msg.into())
}

/// A storage key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// `(partition, index, term)` of a snapshot file's header.
pub type Header = (u64, u64, u64);

/// What a snapshot file holds and how to check it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub partition: u64,
    pub index: u64,
    pub term: u64,
    pub bytes: u64,
    pub crc: u32,
}

impl Descriptor {
    pub const ENCODED_BYTES: usize = 4 + 8 * 4 + 4;

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::ENCODED_BYTES);
        v.extend_from_slice(DESC_MAGIC);
        for n in [self.partition, self.index, self.term, self.bytes] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        v.extend_from_slice(&self.crc.to_le_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Result<Descriptor, SnapshotFormatError> {
        if b.len() != Self::ENCODED_BYTES || &b[..4] != DESC_MAGIC {
            return Err(bad(format!("not a snapshot descriptor ({} bytes)", b.len())));
        }
        let word = |i: usize| u64::from_le_bytes(b[4 + 8 * i..12 + 8 * i].try_into().unwrap());
        Ok(Descriptor {
            partition: word(0),
            index: word(1),
            term: word(2),
            bytes: word(3),
            crc: u32::from_le_bytes(b[36..40].try_into().unwrap()),
        })
    }
}

/// The header of a snapshot file.
pub fn encode_header(partition: u64, index: u64, term: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_BYTES);
    v.extend_from_slice(FILE_MAGIC);
    v.extend_from_slice(&VERSION.to_le_bytes());
    for n in [partition, index, term] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v
}

/// The version a file header names.
pub fn header_version(b: &[u8]) -> Result<u32, SnapshotFormatError> {
    if b.len() < HEADER_BYTES || &b[..4] != FILE_MAGIC {
        return Err(bad("not a snapshot file"));
    }
    Ok(u32::from_le_bytes(b[4..8].try_into().unwrap()))
}

/// `(partition, index, term)` of a file header of a version this build reads.
pub fn decode_header(b: &[u8]) -> Result<Header, SnapshotFormatError> {
    let version = header_version(b)?;
    if !(OLDEST_VERSION..=VERSION).contains(&version) {
        return Err(bad(format!(
            "snapshot format version {version}, this build reads {OLDEST_VERSION} to {VERSION}"
        )));
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    Ok((word(8), word(16), word(24)))
}

/// What the header of a file a peer transferred must say: this build's [`VERSION`] (the
/// layout of its pairs is the data format's: an older one, even if readable, is refused), and
/// the partition, index and term the transfer announced.
pub fn check_transferred(
    header: &[u8],
    partition: u64,
    index: u64,
    term: u64,
) -> Result<(), SnapshotFormatError> {
    let version = header_version(header)?;
    if version != VERSION {
        return Err(bad(format!(
            "it is in snapshot format version {version}, this build's is {VERSION}"
        )));
    }
    let named = decode_header(header)?;
    if named != (partition, index, term) {
        return Err(bad(format!("its file holds {named:?}, not ({partition}, {index}, {term})")));
    }
    Ok(())
}

pub fn encode_pair(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

pub fn encode_trailer(pairs: u64) -> Vec<u8> {
    let mut v = END.to_le_bytes().to_vec();
    v.extend_from_slice(&pairs.to_le_bytes());
    v
}

/// Reads the pairs of a snapshot file after its header, in order, checking that keys ascend
/// and that the trailer counts them.
pub struct PairReader<R: Read> {
    r: R,
    pairs: u64,
    last_key: Option<Vec<u8>>,
    done: bool,
}

impl<R: Read> PairReader<R> {
    /// `r` is positioned just after the header.
    pub fn new(r: R) -> Self {
        PairReader { r, pairs: 0, last_key: None, done: false }
    }

    fn u32(&mut self) -> Result<u32, SnapshotFormatError> {
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn bytes(&mut self, len: usize) -> Result<Vec<u8>, SnapshotFormatError> {
        let mut v = vec![0u8; len];
        self.r.read_exact(&mut v)?;
        Ok(v)
    }

    /// The next pair, or `None` after the trailer.
    pub fn next_pair(&mut self) -> Result<Option<Pair>, SnapshotFormatError> {
        if self.done {
            return Ok(None);
        }
        let klen = self.u32()?;
        if klen == END {
            let mut b = [0u8; 8];
            self.r.read_exact(&mut b)?;
            let counted = u64::from_le_bytes(b);
            if counted != self.pairs {
                return Err(bad(format!("trailer counts {counted} pairs, found {}", self.pairs)));
            }
            let mut rest = [0u8; 1];
            if self.r.read(&mut rest)? != 0 {
                return Err(bad("bytes after the trailer"));
            }
            self.done = true;
            return Ok(None);
        }
        if klen as usize > MAX_KEY_BYTES {
            return Err(bad(format!("key of {klen} bytes")));
        }
        let key = self.bytes(klen as usize)?;
        let vlen = self.u32()?;
        if vlen as usize > MAX_VALUE_BYTES {
            return Err(bad(format!("value of {vlen} bytes")));
        }
        let value = self.bytes(vlen as usize)?;
        if self.last_key.as_ref().is_some_and(|l| *l >= key) {
            return Err(bad("keys out of order"));
        }
        self.last_key = Some(key.clone());
        self.pairs += 1;
        Ok(Some((key, value)))
    }
}

/// Parses a whole snapshot file held in memory: its header and pairs.
pub fn decode_file(b: &[u8]) -> Result<(Header, Vec<Pair>), SnapshotFormatError> {
    let header = decode_header(b)?;
    let mut r = PairReader::new(&b[HEADER_BYTES..]);
    let mut pairs = Vec::new();
    while let Some(p) = r.next_pair()? {
        pairs.push(p);
    }
    Ok((header, pairs))
}

/// One chunk of a snapshot file on the peer link:
/// `[partition u64][transfer u64][index u64][term u64][total bytes u64][offset u64][data]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub partition: u64,
    /// Names one attempt to send one file; acknowledgements carry it back, so a late one from
    /// an abandoned attempt is never taken for the current one's.
    pub transfer: u64,
    pub index: u64,
    pub term: u64,
    pub total: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl Chunk {
    pub const HEADER_BYTES: usize = 48;

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        for n in [self.partition, self.transfer, self.index, self.term, self.total, self.offset] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
    }

    pub fn decode(b: &[u8]) -> Result<Chunk, SnapshotFormatError> {
        if b.len() < Self::HEADER_BYTES {
            return Err(bad("short chunk"));
        }
        let word = |i: usize| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap());
        let c = Chunk {
            partition: word(0),
            transfer: word(1),
            index: word(2),
            term: word(3),
            total: word(4),
            offset: word(5),
            data: b[Self::HEADER_BYTES..].to_vec(),
        };
        let end = c.offset.checked_add(c.data.len() as u64).ok_or_else(|| bad("chunk offset"))?;
        if c.data.len() > CHUNK_BYTES || end > c.total {
            return Err(bad(format!(
                "chunk [{}, {end}) of {} bytes is out of bounds",
                c.offset, c.total
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transferred_file_must_be_this_versions_and_the_announced_one() {
        let v1 = {
            let mut h = encode_header(3, 90, 2);
            h[4..8].copy_from_slice(&1u32.to_le_bytes());
            h
        };
        let cases: [(Vec<u8>, Header, bool); 6] = [
            (encode_header(3, 90, 2), (3, 90, 2), true),
            // Readable (a backup may hold one), but never taken from a peer.
            (v1.clone(), (3, 90, 2), false),
            (encode_header(3, 90, 2), (3, 91, 2), false),
            (encode_header(3, 90, 2), (4, 90, 2), false),
            (encode_header(3, 90, 2)[..HEADER_BYTES - 1].to_vec(), (3, 90, 2), false),
            (b"KSNX-not-a-snapshot-file-at-all-".to_vec(), (3, 90, 2), false),
        ];
        for (header, (p, i, t), ok) in cases {
            assert_eq!(check_transferred(&header, p, i, t).is_ok(), ok, "{header:?}");
        }
        assert_eq!(decode_header(&v1).unwrap(), (3, 90, 2));
        let mut v9 = v1;
        v9[4..8].copy_from_slice(&9u32.to_le_bytes());
        assert!(decode_header(&v9).is_err());
    }

    fn file(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut f = encode_header(3, 90, 2);
        for (k, v) in pairs {
            encode_pair(&mut f, k, v);
        }
        f.extend_from_slice(&encode_trailer(pairs.len() as u64));
        f
    }

    #[test]
    fn files_descriptors_and_chunks_roundtrip() {
        let f = file(&[(b"ha", b"1"), (b"kb", b""), (b"s", b"22")]);
        let (h, pairs) = decode_file(&f).unwrap();
        assert_eq!(h, (3, 90, 2));
        assert_eq!(pairs.len(), 3);
        let d = Descriptor { partition: 3, index: 90, term: 2, bytes: f.len() as u64, crc: 7 };
        assert_eq!(Descriptor::decode(&d.encode()).unwrap(), d);
        let c = Chunk {
            partition: 3,
            transfer: 8,
            index: 90,
            term: 2,
            total: 10,
            offset: 4,
            data: vec![1; 6],
        };
        let mut out = Vec::new();
        c.encode_into(&mut out);
        assert_eq!(Chunk::decode(&out).unwrap(), c);
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = file(&[(b"ka", b"1"), (b"kb", b"2")]);
        // (bytes, what is wrong)
        let mut unordered = encode_header(3, 90, 2);
        encode_pair(&mut unordered, b"kb", b"1");
        encode_pair(&mut unordered, b"ka", b"2");
        unordered.extend_from_slice(&encode_trailer(2));
        let mut huge = encode_header(3, 90, 2);
        huge.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
        let mut miscount = good.clone();
        let n = miscount.len();
        miscount[n - 8] = 9;
        let mut extra = good.clone();
        extra.push(0);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 3].to_vec(), "truncated"),
            (good[..10].to_vec(), "short header"),
            (b"XXXX".repeat(10), "bad magic"),
            (unordered, "out of order"),
            (huge, "huge key"),
            (miscount, "trailer counts"),
            (extra, "after the trailer"),
        ];
        for (bytes, what) in cases {
            assert!(decode_file(&bytes).is_err(), "{what}");
        }
        assert!(Descriptor::decode(&[0; 40]).is_err());
        assert!(Descriptor::decode(b"KSND").is_err());
        let mut c = Vec::new();
        Chunk {
            partition: 1,
            transfer: 1,
            index: 1,
            term: 1,
            total: 4,
            offset: 2,
            data: vec![0; 3],
        }
        .encode_into(&mut c);
        assert!(Chunk::decode(&c).is_err(), "past the end");
        let mut c = vec![0u8; 40];
        c.extend_from_slice(&u64::MAX.to_le_bytes());
        c.push(1);
        assert!(Chunk::decode(&c).is_err(), "offset overflow");
    }
}
