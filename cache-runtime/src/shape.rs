//! The shape of a cached fn's return type: what is cached and how the fn's value maps to the
//! `Result<T, E>` that [`memoize`](crate::__private::memoize) caches the `Ok` of.
//!
//! The shape comes from the type, not from how it is spelled: the generated code asks
//! `(&&&ShapeProbe::<Ret, RESULT, OPTION>::new()).shape()` and autoref specialization picks, for the
//! concrete return type, the most specific of
//!
//! - [`ResultShape`] for `Result<T, E>` (and any alias of it), when `RESULT` (no `cache_err`):
//!   only `Ok` is cached;
//! - [`OptionShape`] for `Option<T>` (and aliases), when `OPTION` (`cache_none = false`): only
//!   `Some` is cached, `None` stands as [`NotCached`];
//! - [`PlainShape`] for anything else, or when the flags say so: the whole value is cached.
//!
//! Each shape is a zero-sized `Copy` value whose conversions inline to nothing or to one wrap.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};

use crate::{__private::NotCached, Never};

/// What a cached value must be: serialized into its backend, read back, and cloned to each caller,
/// across tasks. Implemented for every such type; the generated code asserts it on the value its
/// shape caches (the `Ok` of a `Result`, the `Some` of an `Option` whose `None` is not cached, else
/// the whole value) with the return type's span, so that a type that falls short is reported there,
/// with this message, before the runtime's own bounds.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached: a cached value must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`",
    label = "the value of this return type is cached",
    note = "the value is serialized into the backend, deserialized on each hit and cloned to callers across tasks: derive (or implement) `Serialize`, `Deserialize` and `Clone` for it, and hold no references or non-thread-safe types (`Rc`, `RefCell`; use `Arc`, `Mutex`)",
    note = "a `Result` caches its `Ok` value (the error too with `cache_err`); an `Option` is cached whole, or its `Some` value with `cache_none = false`"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// Selects a shape for the return type `R` (see the module docs). `RESULT`: a `Result`
/// caches only `Ok`; `OPTION`: an `Option` caches only `Some`.
pub struct ShapeProbe<R, const RESULT: bool, const OPTION: bool>(PhantomData<fn() -> R>);

impl<R, const RESULT: bool, const OPTION: bool> ShapeProbe<R, RESULT, OPTION> {
    /// The probe.
    #[inline]
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

impl<R, const RESULT: bool, const OPTION: bool> Default for ShapeProbe<R, RESULT, OPTION> {
    fn default() -> Self {
        Self::new()
    }
}

/// `Result<T, E>`: `Ok` is cached, `Err` is returned as it is and not cached.
pub struct ResultShape<T, E>(PhantomData<fn() -> (T, E)>);

/// `Option<T>` with `cache_none = false`: `Some` is cached, `None` is not.
pub struct OptionShape<T>(PhantomData<fn() -> T>);

/// Any other value (or a `Result`/`Option` cached whole): cached as it is.
pub struct PlainShape<R>(PhantomData<fn() -> R>);

macro_rules! copy_shape {
    ($name:ident<$($param:ident),*>) => {
        impl<$($param),*> Clone for $name<$($param),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($param),*> Copy for $name<$($param),*> {}
    };
}

copy_shape!(ResultShape<T, E>);
copy_shape!(OptionShape<T>);
copy_shape!(PlainShape<R>);

impl<T, E> ResultShape<T, E> {
    /// Asserts that the `Ok` value, which is what is cached, is a [`CacheValue`] (see there).
    #[inline(always)]
    pub fn cached_value_is_cacheable(self)
    where
        T: CacheValue,
    {
    }

    /// The body's value as what `memoize` caches the `Ok` of.
    #[inline(always)]
    pub fn split(self, value: Result<T, E>) -> Result<T, E> {
        value
    }

    /// What `memoize` returned, as the fn's value.
    #[inline(always)]
    pub fn join(self, value: Result<T, E>) -> Result<T, E> {
        value
    }

    /// A cached value as the fn's value.
    #[inline(always)]
    pub fn hit(self, value: T) -> Result<T, E> {
        Ok(value)
    }

    /// Whether the fn succeeded (for `#[cache_invalidate]`).
    #[inline(always)]
    pub fn succeeded(self, value: &Result<T, E>) -> bool {
        value.is_ok()
    }
}

impl<T> OptionShape<T> {
    /// Asserts that the `Some` value, which is what is cached, is a [`CacheValue`] (see there).
    #[inline(always)]
    pub fn cached_value_is_cacheable(self)
    where
        T: CacheValue,
    {
    }

    /// `Some(v)` → `Ok(v)`, `None` → `Err(NotCached)`.
    #[inline(always)]
    pub fn split(self, value: Option<T>) -> Result<T, NotCached> {
        value.ok_or(NotCached)
    }

    /// `Ok(v)` → `Some(v)`, `Err(NotCached)` → `None`.
    #[inline(always)]
    pub fn join(self, value: Result<T, NotCached>) -> Option<T> {
        value.ok()
    }

    /// A cached value as the fn's value.
    #[inline(always)]
    pub fn hit(self, value: T) -> Option<T> {
        Some(value)
    }

    /// Whether the fn succeeded (for `#[cache_invalidate]`): always.
    #[inline(always)]
    pub fn succeeded(self, _: &Option<T>) -> bool {
        true
    }
}

impl<R> PlainShape<R> {
    /// Asserts that the value, which is what is cached, is a [`CacheValue`] (see there).
    #[inline(always)]
    pub fn cached_value_is_cacheable(self)
    where
        R: CacheValue,
    {
    }

    /// The value, as a result that cannot fail.
    #[inline(always)]
    pub fn split(self, value: R) -> Result<R, Never> {
        Ok(value)
    }

    /// The value back.
    #[inline(always)]
    pub fn join(self, value: Result<R, Never>) -> R {
        match value {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// A cached value as the fn's value.
    #[inline(always)]
    pub fn hit(self, value: R) -> R {
        value
    }

    /// Whether the fn succeeded (for `#[cache_invalidate]`): always.
    #[inline(always)]
    pub fn succeeded(self, _: &R) -> bool {
        true
    }
}

/// Selected for `Result<T, E>` when only `Ok` is cached.
pub trait ShapeViaResult {
    /// The shape.
    type Shape;
    /// The shape.
    fn shape(&self) -> Self::Shape;
}

impl<T, E, const OPTION: bool> ShapeViaResult for &&ShapeProbe<Result<T, E>, true, OPTION> {
    type Shape = ResultShape<T, E>;
    #[inline(always)]
    fn shape(&self) -> Self::Shape {
        ResultShape(PhantomData)
    }
}

/// Selected for `Option<T>` when `None` is not cached.
pub trait ShapeViaOption {
    /// The shape.
    type Shape;
    /// The shape.
    fn shape(&self) -> Self::Shape;
}

impl<T, const RESULT: bool> ShapeViaOption for &ShapeProbe<Option<T>, RESULT, true> {
    type Shape = OptionShape<T>;
    #[inline(always)]
    fn shape(&self) -> Self::Shape {
        OptionShape(PhantomData)
    }
}

/// Selected otherwise.
pub trait ShapeViaPlain {
    /// The shape.
    type Shape;
    /// The shape.
    fn shape(&self) -> Self::Shape;
}

impl<R, const RESULT: bool, const OPTION: bool> ShapeViaPlain for ShapeProbe<R, RESULT, OPTION> {
    type Shape = PlainShape<R>;
    #[inline(always)]
    fn shape(&self) -> Self::Shape {
        PlainShape(PhantomData)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Alias<T> = Result<T, String>;
    type Maybe<T> = Option<T>;

    #[allow(unused_imports)]
    use super::{ShapeViaOption as _, ShapeViaPlain as _, ShapeViaResult as _};

    #[test]
    #[allow(clippy::needless_borrow)] // autoref specialization needs the borrows
    fn the_type_picks_the_shape_and_flags_force_plain() {
        let result = (&&&ShapeProbe::<Alias<u8>, true, true>::new()).shape();
        assert_eq!(result.split(Err("e".into())), Err("e".to_string()));
        assert_eq!(result.hit(1), Ok(1));
        let option = (&&&ShapeProbe::<Maybe<u8>, true, true>::new()).shape();
        assert!(option.split(None).is_err());
        assert_eq!(option.join(Ok(3)), Some(3));
        let cached_err = (&&&ShapeProbe::<Alias<u8>, false, true>::new()).shape();
        assert!(matches!(cached_err.split(Err("e".into())), Ok(Err(_))));
        let cached_none = (&&&ShapeProbe::<Maybe<u8>, true, false>::new()).shape();
        assert!(matches!(cached_none.split(None), Ok(None)));
        let plain = (&&&ShapeProbe::<u8, true, true>::new()).shape();
        assert_eq!(plain.hit(4), 4);
    }
}
