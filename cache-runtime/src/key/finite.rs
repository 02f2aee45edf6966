//! Whether a value holds a non-finite float (`NaN`, `inf`, `-inf`): serde_json writes each as
//! `null`, the JSON of `None` and `()` too, so such a value cannot be part of a key (it would share
//! its entry with the others). Only consulted when the JSON written holds a `null`.

use serde::ser::{self, Serialize};

/// Whether `value` holds a non-finite `f32` or `f64` anywhere.
pub(crate) fn has_non_finite<T: Serialize + ?Sized>(value: &T) -> bool {
    value.serialize(Finder).is_err()
}

/// Walks a value; fails at the first non-finite float (or at a value that fails to serialize,
/// which makes the key unkeyable anyway).
struct Finder;

#[derive(Debug)]
struct Found;

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a non-finite float")
    }
}

impl std::error::Error for Found {}

impl ser::Error for Found {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Found
    }
}

type Walked = Result<(), Found>;

impl ser::Serializer for Finder {
    type Ok = ();
    type Error = Found;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_f32(self, v: f32) -> Walked {
        if v.is_finite() {
            Ok(())
        } else {
            Err(Found)
        }
    }
    fn serialize_f64(self, v: f64) -> Walked {
        if v.is_finite() {
            Ok(())
        } else {
            Err(Found)
        }
    }
    fn serialize_bool(self, _: bool) -> Walked {
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Walked {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Walked {
        Ok(())
    }
    fn serialize_i32(self, _: i32) -> Walked {
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Walked {
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Walked {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Walked {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Walked {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Walked {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Walked {
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Walked {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Walked {
        Ok(())
    }
    fn serialize_str(self, _: &str) -> Walked {
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Walked {
        Ok(())
    }
    fn serialize_none(self) -> Walked {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Walked {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Walked {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Walked {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Walked {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Walked {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Walked {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Found> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Found> {
        Ok(self)
    }
}

/// The compound values: each element walked in turn.
macro_rules! walk_elements {
    ($($trait:ident :: $method:ident),* $(,)?) => {$(
        impl ser::$trait for Finder {
            type Ok = ();
            type Error = Found;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Walked {
                value.serialize(Finder)
            }
            fn end(self) -> Walked {
                Ok(())
            }
        }
    )*};
}

walk_elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field,
);

impl ser::SerializeMap for Finder {
    type Ok = ();
    type Error = Found;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Walked {
        key.serialize(Finder)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Walked {
        value.serialize(Finder)
    }
    fn end(self) -> Walked {
        Ok(())
    }
}

/// The fields of structs and struct variants: each value walked in turn.
macro_rules! walk_fields {
    ($($trait:ident),* $(,)?) => {$(
        impl ser::$trait for Finder {
            type Ok = ();
            type Error = Found;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                _: &'static str,
                value: &T,
            ) -> Walked {
                value.serialize(Finder)
            }
            fn end(self) -> Walked {
                Ok(())
            }
        }
    )*};
}

walk_fields!(SerializeStruct, SerializeStructVariant);

/// Passes writes on to `out`, noting whether one was a JSON `null` (how serde_json writes a
/// non-finite float, and `None`).
pub(super) struct NullWatch<'a> {
    pub(super) out: &'a mut dyn std::io::Write,
    pub(super) saw_null: bool,
}

impl std::io::Write for NullWatch<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.saw_null |= bytes == b"null";
        self.out.write(bytes)
    }

    #[inline]
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.saw_null |= bytes == b"null";
        self.out.write_all(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn non_finite_floats_are_found_anywhere_in_a_value() {
        #[derive(serde::Serialize)]
        struct Point {
            x: f64,
            tags: BTreeMap<String, (f32, Option<f64>)>,
        }
        let point = |y: f64| Point {
            x: 1.0,
            tags: BTreeMap::from([("a".into(), (2.0, Some(y)))]),
        };
        assert!(!has_non_finite(&point(3.0)));
        assert!(has_non_finite(&point(f64::NEG_INFINITY)));
        assert!(has_non_finite(&[f32::NAN]));
        assert!(!has_non_finite(&(None::<f64>, (), "inf", f64::MAX)));
    }
}
