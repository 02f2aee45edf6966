//! The versioned envelope around every serialized value.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"CE"` |
//! | 2 | format version ([`VERSION`]) |
//! | 3 | codec (1 = JSON, 2 = MessagePack) |
//! | 4 | flags: bit 0 = the payload is LZ4-compressed; other bits must be 0 |
//! | 5..9 | the function's schema version (`#[cached(version = N)]`) |
//! | 9..13 | the global key version (`CACHE_KEY_VERSION`) |
//! | 13..21 | created at, ms since the Unix epoch |
//! | 21..29 | expires at, ms since the Unix epoch |
//! | 29..37 | fingerprint of the value's Rust type |
//! | 37..39 | number of group generations, `n` |
//! | 39..39+8n | the generation of each group when the value was computed |
//! | rest | the payload; compressed: its decoded length (u32) and an LZ4 block |
//!
//! Anything that does not match (another format version, an unknown codec or flag, truncated
//! bytes) decodes as [`Decoded::Unusable`] and the caller treats it as a miss; so does a payload
//! whose claimed decompressed length is over the caller's limit, or that does not decompress.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::codec::{Codec, CodecError};

const MAGIC: &[u8; 2] = b"CE";
/// The current envelope format version (1: JSON only, no flags or schema versions).
pub const VERSION: u8 = 2;
const COMPRESSED: u8 = 1;
const HEADER: usize = 39;

/// Milliseconds since the Unix epoch, the clock envelopes are written in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a reader must agree with for an entry to be usable: how the payload is encoded and the
/// schema versions it was written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Schema {
    /// The payload's codec.
    pub codec: Codec,
    /// The function's schema version.
    pub version: u32,
    /// The global key version.
    pub key_version: u32,
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
    /// Codec and schema versions.
    pub schema: Schema,
}

impl Meta {
    /// Metadata for a value computed now that lives for `ttl`.
    pub fn fresh(
        ttl: Duration,
        type_fingerprint: u64,
        generations: Vec<u64>,
        schema: Schema,
    ) -> Self {
        let created_ms = now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Self {
            created_ms,
            expires_ms: created_ms.saturating_add(ttl_ms),
            type_fingerprint,
            generations,
            schema,
        }
    }
}

/// Why a value was not encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    /// The codec could not serialize it.
    Codec(CodecError),
    /// Its envelope, uncompressed, is larger than the limit.
    Oversized,
}

/// Writes the envelope header followed by the payload of `value` in `meta.schema.codec`,
/// LZ4-compressed when the encoded payload has more than `compress_above` bytes and compressing
/// makes it smaller. `limit` bounds the uncompressed envelope (what a reader may decompress).
pub(crate) fn encode<T: serde::Serialize + ?Sized>(
    meta: &Meta,
    value: &T,
    compress_above: u64,
    limit: u64,
) -> Result<Vec<u8>, EncodeError> {
    let count = u16::try_from(meta.generations.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(HEADER + 8 * usize::from(count) + 64);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(meta.schema.codec.id());
    out.push(0);
    out.extend_from_slice(&meta.schema.version.to_le_bytes());
    out.extend_from_slice(&meta.schema.key_version.to_le_bytes());
    out.extend_from_slice(&meta.created_ms.to_le_bytes());
    out.extend_from_slice(&meta.expires_ms.to_le_bytes());
    out.extend_from_slice(&meta.type_fingerprint.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for generation in meta.generations.iter().take(usize::from(count)) {
        out.extend_from_slice(&generation.to_le_bytes());
    }
    let start = out.len();
    meta.schema
        .codec
        .encode_into(&mut out, value)
        .map_err(EncodeError::Codec)?;
    if out.len() as u64 > limit {
        return Err(EncodeError::Oversized);
    }
    let payload_len = out.len() - start;
    if payload_len as u64 > compress_above {
        if let Ok(claimed) = u32::try_from(payload_len) {
            let packed = lz4_flex::block::compress(&out[start..]);
            if packed.len() + 4 < payload_len {
                out.truncate(start);
                out.extend_from_slice(&claimed.to_le_bytes());
                out.extend_from_slice(&packed);
                out[4] = COMPRESSED;
            }
        }
    }
    Ok(out)
}

/// An envelope's payload, as stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    bytes: &'a [u8],
    compressed: bool,
}

impl<'a> Payload<'a> {
    /// The encoded value, decompressed if needed; `None` when its claimed length is over `limit`
    /// (nothing is allocated then) or it does not decompress to exactly that length.
    pub fn decoded(&self, limit: u64) -> Option<Cow<'a, [u8]>> {
        if !self.compressed {
            return Some(Cow::Borrowed(self.bytes));
        }
        let (claimed, packed) = self.bytes.split_first_chunk::<4>()?;
        let claimed = u32::from_le_bytes(*claimed);
        if u64::from(claimed) > limit {
            return None;
        }
        let mut out = vec![0; usize::try_from(claimed).ok()?];
        match lz4_flex::block::decompress_into(packed, &mut out) {
            Ok(written) if written == out.len() => Some(Cow::Owned(out)),
            _ => None,
        }
    }

    /// Whether the payload is compressed.
    #[cfg(test)]
    pub fn is_compressed(&self) -> bool {
        self.compressed
    }
}

/// The result of reading an envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Well-formed: its metadata and payload.
    Valid(Meta, Payload<'a>),
    /// Not an envelope of this version (garbage, truncated, another format).
    Unusable,
}

/// Reads an envelope without decompressing or deserializing its payload.
pub fn decode(bytes: &[u8]) -> Decoded<'_> {
    let Some(header) = bytes.get(..HEADER) else {
        return Decoded::Unusable;
    };
    if &header[..2] != MAGIC || header[2] != VERSION || header[4] & !COMPRESSED != 0 {
        return Decoded::Unusable;
    }
    let Some(codec) = Codec::from_id(header[3]) else {
        return Decoded::Unusable;
    };
    let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or([0; 4]));
    let count = usize::from(u16::from_le_bytes([header[37], header[38]]));
    let Some(gens) = bytes.get(HEADER..HEADER + 8 * count) else {
        return Decoded::Unusable;
    };
    let generations = gens
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    let meta = Meta {
        created_ms: word(13),
        expires_ms: word(21),
        type_fingerprint: word(29),
        generations,
        schema: Schema {
            codec,
            version: half(5),
            key_version: half(9),
        },
    };
    let payload = Payload {
        bytes: &bytes[HEADER + 8 * count..],
        compressed: header[4] & COMPRESSED != 0,
    };
    Decoded::Valid(meta, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1 << 20;
    const NEVER: u64 = u64::MAX;

    fn schema(codec: Codec) -> Schema {
        Schema {
            codec,
            version: 3,
            key_version: 9,
        }
    }

    fn valid(bytes: &[u8]) -> (Meta, Payload<'_>) {
        match decode(bytes) {
            Decoded::Valid(meta, payload) => (meta, payload),
            Decoded::Unusable => panic!("valid envelope rejected"),
        }
    }

    #[test]
    fn round_trip() {
        let meta = Meta::fresh(Duration::from_secs(5), 7, vec![1, 2], schema(Codec::Json));
        let bytes = encode(&meta, &vec!["a", "b"], NEVER, LIMIT).unwrap();
        let (read, payload) = valid(&bytes);
        assert_eq!(read, meta);
        assert!(!payload.is_compressed());
        assert_eq!(&*payload.decoded(LIMIT).unwrap(), br#"["a","b"]"#);
        assert_eq!(read.expires_ms - read.created_ms, 5000);
    }

    #[test]
    fn records_the_codec_and_versions() {
        let meta = Meta::fresh(
            Duration::from_secs(5),
            7,
            vec![],
            schema(Codec::MessagePack),
        );
        let bytes = encode(&meta, &(1u8, "x"), NEVER, LIMIT).unwrap();
        let (read, payload) = valid(&bytes);
        assert_eq!(read.schema, schema(Codec::MessagePack));
        let value: (u8, String) = Codec::MessagePack
            .decode(&payload.decoded(LIMIT).unwrap())
            .unwrap();
        assert_eq!(value, (1, "x".to_owned()));
    }

    #[test]
    fn large_payloads_are_compressed_and_small_ones_not() {
        let text = "abcdefgh".repeat(1000);
        let meta = Meta::fresh(Duration::from_secs(5), 7, vec![4], schema(Codec::Json));
        let plain = encode(&meta, &text, NEVER, LIMIT).unwrap();
        let packed = encode(&meta, &text, 1024, LIMIT).unwrap();
        assert!(
            packed.len() * 10 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        let (read, payload) = valid(&packed);
        assert_eq!(read, meta);
        assert!(payload.is_compressed());
        let back: String = Codec::Json
            .decode(&payload.decoded(LIMIT).unwrap())
            .unwrap();
        assert_eq!(back, text);
        // At or below the threshold, and where compressing would not shrink it: stored as is.
        let small = encode(&meta, &"abc", 5, LIMIT).unwrap();
        assert!(!valid(&small).1.is_compressed());
        let noise: Vec<u64> = (0..64u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let incompressible = encode(&meta, &noise, 0, LIMIT).unwrap();
        let (_, payload) = valid(&incompressible);
        if payload.is_compressed() {
            assert!(incompressible.len() < encode(&meta, &noise, NEVER, LIMIT).unwrap().len());
        }
    }

    #[test]
    fn decompression_is_bounded_and_never_panics() {
        let text = "0123456789".repeat(500);
        let meta = Meta::fresh(Duration::from_secs(5), 7, vec![], schema(Codec::Json));
        let packed = encode(&meta, &text, 0, LIMIT).unwrap();
        assert!(valid(&packed).1.is_compressed());
        // A claimed length over the limit: refused before anything is allocated.
        assert!(valid(&packed).1.decoded(100).is_none());
        let mut huge_claim = packed.clone();
        huge_claim[HEADER..HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(valid(&huge_claim).1.decoded(LIMIT).is_none());
        // A claim that does not match what the block holds.
        let mut wrong_claim = packed.clone();
        wrong_claim[HEADER..HEADER + 4].copy_from_slice(&10u32.to_le_bytes());
        assert!(valid(&wrong_claim).1.decoded(LIMIT).is_none());
        // Truncated, and every single corrupted byte of the block: a miss or a clean value.
        for cut in [HEADER, HEADER + 2, HEADER + 6, packed.len() - 1] {
            if let Decoded::Valid(_, payload) = decode(&packed[..cut]) {
                assert!(payload.decoded(LIMIT).is_none(), "cut at {cut}");
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for at in HEADER + 4..packed.len() {
            let mut corrupted = packed.clone();
            corrupted[at] ^= rng.u8(1..);
            if let Some(bytes) = valid(&corrupted).1.decoded(LIMIT) {
                assert_eq!(
                    bytes.len(),
                    text.len() + 2,
                    "only the claimed length comes out"
                );
            }
        }
        for _ in 0..500 {
            let mut garbage = packed[..HEADER + 4].to_vec();
            garbage.extend((0..rng.usize(0..200)).map(|_| rng.u8(..)));
            let _ = valid(&garbage).1.decoded(LIMIT);
        }
    }

    #[test]
    fn oversized_values_are_refused_uncompressed() {
        let meta = Meta::fresh(Duration::from_secs(5), 7, vec![], schema(Codec::Json));
        let text = "a".repeat(1000);
        assert!(matches!(
            encode(&meta, &text, 0, 500),
            Err(EncodeError::Oversized)
        ));
    }

    #[test]
    fn garbage_truncation_and_other_formats_are_unusable() {
        let meta = Meta::fresh(Duration::from_secs(1), 1, vec![9], schema(Codec::Json));
        let bytes = encode(&meta, &1u8, NEVER, LIMIT).unwrap();
        assert_eq!(decode(b"garbage"), Decoded::Unusable);
        assert_eq!(decode(&bytes[..HEADER + 3]), Decoded::Unusable);
        assert_eq!(decode(&[]), Decoded::Unusable);
        for (at, value) in [(2, VERSION + 1), (2, 1), (3, 0), (3, 99), (4, 2), (4, 0x80)] {
            let mut other = bytes.clone();
            other[at] = value;
            assert_eq!(decode(&other), Decoded::Unusable, "byte {at} = {value}");
        }
    }

    /// An entry written by the previous format (version 1: JSON, a 30-byte header) is no longer
    /// read.
    #[test]
    fn format_version_1_is_unusable() {
        let mut v1 = b"CE\x01\x01".to_vec();
        v1.extend_from_slice(&[0; 26]);
        v1.extend_from_slice(b"[1,2,3,4,5,6,7,8,9,10,11,12]");
        assert_eq!(decode(&v1), Decoded::Unusable);
    }
}
