//! Sequences: blocks `[first, first + count)` that never overlap and always increase.

use kahuna_protocol::{ErrorCode, Reply, WireError};

use super::corrupt;
use crate::keys::{self, data_key};
use crate::records::{decode_seq, encode_seq};
use crate::store::Txn;

pub(super) fn next<T: Txn>(txn: &mut T, name: &[u8], count: u64) -> Result<Reply, WireError> {
    let key = data_key(keys::SEQ, name);
    let last = txn.get(&key).map(|b| decode_seq(&b)).transpose().map_err(corrupt)?.unwrap_or(0);
    let Some(new_last) = last.checked_add(count) else {
        return Err(WireError::new(ErrorCode::Invalid, "sequence would overflow u64"));
    };
    assert!(new_last > last, "a sequence must never hand a value out twice");
    txn.put(key, encode_seq(new_last));
    Ok(Reply::Seq { first: last + 1, count })
}
