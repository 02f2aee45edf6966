//! The versioned envelope around every serialized value.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"CE"` |
//! | 2 | format version ([`VERSION`]) |
//! | 3 | codec (1 = JSON) |
//! | 4..12 | created at, ms since the Unix epoch |
//! | 12..20 | expires at, ms since the Unix epoch |
//! | 20..28 | fingerprint of the value's Rust type |
//! | 28..30 | number of group generations, `n` |
//! | 30..30+8n | the generation of each group when the value was computed |
//! | rest | the payload |
//!
//! Anything that does not match (another version, another type, truncated bytes) decodes as
//! [`Decoded::Unusable`] and the caller treats it as a miss.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 2] = b"CE";
/// The current envelope format version.
pub const VERSION: u8 = 1;
const CODEC_JSON: u8 = 1;
const HEADER: usize = 30;

/// Milliseconds since the Unix epoch, the clock envelopes are written in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What goes into an envelope besides the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// When the value was computed (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it stops being fresh (ms since the Unix epoch).
    pub expires_ms: u64,
    /// Fingerprint of the value's type.
    pub type_fingerprint: u64,
    /// Group generations observed before the value was computed.
    pub generations: Vec<u64>,
}

impl Meta {
    /// Metadata for a value computed now that lives for `ttl`.
    pub fn fresh(ttl: Duration, type_fingerprint: u64, generations: Vec<u64>) -> Self {
        let created_ms = now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            created_ms,
            expires_ms: created_ms.saturating_add(ttl_ms),
            type_fingerprint,
            generations,
        }
    }
}

/// Writes the envelope header followed by the JSON payload of `value`.
pub fn encode<T: serde::Serialize + ?Sized>(
    meta: &Meta,
    value: &T,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(HEADER + 8 * meta.generations.len() + 64);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(CODEC_JSON);
    out.extend_from_slice(&meta.created_ms.to_le_bytes());
    out.extend_from_slice(&meta.expires_ms.to_le_bytes());
    out.extend_from_slice(&meta.type_fingerprint.to_le_bytes());
    let count = u16::try_from(meta.generations.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_le_bytes());
    for generation in meta.generations.iter().take(usize::from(count)) {
        out.extend_from_slice(&generation.to_le_bytes());
    }
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

/// The result of reading an envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Well-formed: its metadata and payload.
    Valid(Meta, &'a [u8]),
    /// Not an envelope of this version (garbage, truncated, another format).
    Unusable,
}

/// Reads an envelope without deserializing its payload.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let Some(header) = bytes.get(..HEADER) else {
        return Decoded::Unusable;
    };
    if &header[..2] != MAGIC || header[2] != VERSION || header[3] != CODEC_JSON {
        return Decoded::Unusable;
    }
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let count = usize::from(u16::from_le_bytes([header[28], header[29]]));
    let Some(gens) = bytes.get(HEADER..HEADER + 8 * count) else {
        return Decoded::Unusable;
    };
    let generations = gens
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let meta = Meta {
        created_ms: word(4),
        expires_ms: word(12),
        type_fingerprint: word(20),
        generations,
    };
    Decoded::Valid(meta, &bytes[HEADER + 8 * count..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let meta = Meta::fresh(Duration::from_secs(5), 7, vec![1, 2]);
        let bytes = encode(&meta, &vec!["a", "b"]).unwrap();
        match decode(&bytes) {
            Decoded::Valid(read, payload) => {
                assert_eq!(read, meta);
                assert_eq!(payload, br#"["a","b"]"#);
                assert_eq!(read.expires_ms - read.created_ms, 5000);
            }
            Decoded::Unusable => panic!("valid envelope rejected"),
        }
    }

    #[test]
    fn garbage_and_truncation_are_unusable() {
        let bytes = encode(&Meta::fresh(Duration::from_secs(1), 1, vec![9]), &1u8).unwrap();
        assert_eq!(decode(b"garbage"), Decoded::Unusable);
        assert_eq!(decode(&bytes[..HEADER + 3]), Decoded::Unusable);
        let mut other_version = bytes.clone();
        other_version[2] = VERSION + 1;
        assert_eq!(decode(&other_version), Decoded::Unusable);
        assert_eq!(decode(&[]), Decoded::Unusable);
    }
}
