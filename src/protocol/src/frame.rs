//! Length-prefixed framing: `u32` little-endian length, then the payload.
//!
//! The length is checked against the caller's limit before a byte of payload is buffered, so a
//! hostile length can never make a reader allocate more than its limit.

use thiserror::Error;

pub const FRAME_HEADER_BYTES: usize = 4;

/// The default upper bound of one frame: a 1 MiB value, a 1 KiB key and room for the rest.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {size} bytes is over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("empty frame")]
    Empty,
}

/// Appends one frame holding `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Looks at the start of `buf` for a whole frame.
///
/// Returns `Ok(Some((payload_start, payload_end)))` when one is there, `Ok(None)` when more bytes
/// are needed, and an error when the announced length is unacceptable (the stream cannot be
/// resynchronised after that: the caller answers and closes).
pub fn parse_frame(
    buf: &[u8],
    max_frame_bytes: usize,
) -> Result<Option<(usize, usize)>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge { size: len, limit: max_frame_bytes });
    }
    let end = FRAME_HEADER_BYTES + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((FRAME_HEADER_BYTES, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_partial_and_oversize_frames() {
        let mut out = Vec::new();
        write_frame(&mut out, b"hello");
        assert_eq!(parse_frame(&out, 16), Ok(Some((4, 9))));
        assert_eq!(parse_frame(&out[..6], 16), Ok(None));
        assert_eq!(parse_frame(&out[..3], 16), Ok(None));
        assert_eq!(parse_frame(&out, 4), Err(FrameError::TooLarge { size: 5, limit: 4 }));
        assert_eq!(parse_frame(&[0, 0, 0, 0], 4), Err(FrameError::Empty));
    }
}
