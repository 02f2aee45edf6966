//! How values become bytes in serialized backends (Redis, files): the [`Codec`], and a backend's
//! storage settings.
//!
//! In-process backends (`"memory"`, the local tier of `"tiered"`) keep typed values and never use
//! a codec.

use serde::{de::DeserializeOwned, Serialize};

/// How deep a stored value may nest (serde_json's own limit): deeper entries are misses.
const MAX_DEPTH: usize = 128;

/// The serialization format of values stored in serialized backends.
///
/// Chosen, highest first, by the function (`#[cached(codec = "msgpack")]`,
/// [`Cache::codec`](crate::Cache::codec)), by the backend's registration
/// ([`Protection::codec`](crate::Protection::codec)), by `CACHE_CODEC`, else [`Codec::Json`]
/// ([`Codec::MessagePack`] for HTTP responses). An entry written with another codec is a miss: it
/// is recomputed and overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON (`serde_json`): readable with `redis-cli` and in cache files. The default.
    #[default]
    Json,
    /// MessagePack (`rmp-serde`), structs as maps of field names (a reordered struct still
    /// decodes each field by name), enum variants by name, bytes as raw binary.
    MessagePack,
}

impl Codec {
    /// Its name in `CACHE_CODEC` and in `#[cached(codec = "...")]`.
    pub const fn name(self) -> &'static str {
        match self {
            Codec::Json => "json",
            Codec::MessagePack => "msgpack",
        }
    }

    /// The codec named `name` (`"json"`, `"msgpack"` or `"messagepack"`, any case).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "json" => Some(Codec::Json),
            "msgpack" | "messagepack" => Some(Codec::MessagePack),
            _ => None,
        }
    }

    /// Its byte in the envelope.
    pub(crate) const fn id(self) -> u8 {
        match self {
            Codec::Json => 1,
            Codec::MessagePack => 2,
        }
    }

    /// The codec of an envelope's byte.
    pub(crate) const fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::Json),
            2 => Some(Codec::MessagePack),
            _ => None,
        }
    }

    /// Appends the encoding of `value` to `out`.
    pub(crate) fn encode_into<T: Serialize + ?Sized>(
        self,
        out: &mut Vec<u8>,
        value: &T,
    ) -> Result<(), CodecError> {
        match self {
            Codec::Json => serde_json::to_writer(out, value).map_err(CodecError::new),
            Codec::MessagePack => {
                rmp_serde::encode::write_named(out, value).map_err(CodecError::new)
            }
        }
    }

    /// Decodes one value from `bytes` (nested at most [`MAX_DEPTH`] deep).
    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(CodecError::new),
            Codec::MessagePack => {
                let mut reader = rmp_serde::Deserializer::from_read_ref(bytes);
                // As deep as serde_json goes: rmp-serde's own limit (1024) lets a planted entry
                // of nested arrays overflow a task's stack before it is refused.
                reader.set_max_depth(MAX_DEPTH);
                T::deserialize(&mut reader).map_err(CodecError::new)
            }
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A value that could not be encoded or decoded (the codec's own message).
#[derive(Debug)]
pub(crate) struct CodecError(String);

impl CodecError {
    fn new(error: impl std::fmt::Display) -> Self {
        Self(error.to_string())
    }
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How one registered backend stores values, as its [`Protection`](crate::Protection) says
/// (`None`: the environment's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Storage {
    /// The backend's codec, below a function's own choice.
    pub(crate) codec: Option<Codec>,
    /// Payloads larger than this many bytes are compressed.
    pub(crate) compress_above: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect { w: u32, h: u32 },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Value {
        id: u64,
        name: String,
        tags: Vec<String>,
        maybe: Option<i32>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, u16>,
    }

    fn value() -> Value {
        Value {
            id: 7,
            name: "seven".into(),
            tags: vec!["a".into(), "b".into()],
            maybe: None,
            shapes: vec![Shape::Dot, Shape::Circle(1.5), Shape::Rect { w: 2, h: 3 }],
            map: BTreeMap::from([("x".to_owned(), 1), ("y".to_owned(), 2)]),
        }
    }

    #[test]
    fn every_codec_round_trips() {
        for codec in [Codec::Json, Codec::MessagePack] {
            let mut out = Vec::new();
            codec.encode_into(&mut out, &value()).unwrap();
            assert_eq!(codec.decode::<Value>(&out).unwrap(), value(), "{codec}");
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
            assert_eq!(Codec::from_name(codec.name()), Some(codec));
        }
        assert_eq!(Codec::from_name(" MessagePack "), Some(Codec::MessagePack));
        assert_eq!(Codec::from_name("postcard"), None);
        assert_eq!(Codec::from_id(0), None);
    }

    /// Fields are written by name: a struct whose fields were reordered (a new build) reads each
    /// field into its own place; one whose field changed type fails to decode (a miss).
    #[test]
    fn message_pack_reads_fields_by_name() {
        #[derive(Serialize)]
        struct Before {
            a: u32,
            b: u32,
        }
        #[derive(Debug, Deserialize, PartialEq)]
        struct Reordered {
            b: u32,
            a: u32,
        }
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Retyped {
            a: String,
            b: u32,
        }
        let mut out = Vec::new();
        Codec::MessagePack
            .encode_into(&mut out, &Before { a: 1, b: 2 })
            .unwrap();
        let read: Reordered = Codec::MessagePack.decode(&out).unwrap();
        assert_eq!(read, Reordered { b: 2, a: 1 });
        assert!(Codec::MessagePack.decode::<Retyped>(&out).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for codec in [Codec::Json, Codec::MessagePack] {
            for bytes in [
                &b""[..],
                b"\xff\xff\xff",
                b"\xdd\xff\xff\xff\xff",
                b"{\"id\":",
            ] {
                assert!(codec.decode::<Value>(bytes).is_err(), "{codec} {bytes:?}");
            }
        }
    }
}
