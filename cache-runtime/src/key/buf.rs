//! [`KeyBuf`]: a key under construction, on the stack while it is short.

use super::UNKEYABLE;

/// Longest key kept on the stack while it is built; longer keys move to the heap. 112 keeps the
/// whole `KeyBuf` within 128 bytes, which the compiler moves inline instead of calling `memcpy`
/// (a hit moves its key a few times: 665 -> 636 instructions per memory hit with 128).
const INLINE_KEY: usize = 112;

/// A key (or group name) under construction: on the stack while it is short, which is most keys,
/// so that building the key of a cache hit allocates nothing.
///
/// ```
/// use cache_runtime::key::KeyBuf;
/// let mut key = KeyBuf::new();
/// key.push_str("user:");
/// cache_runtime::key::push_value(&mut key, &"a:b c");
/// assert_eq!(key.as_str(), "user:a%3Ab%20c");
/// assert_eq!(key.into_string(), "user:a%3Ab%20c");
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeyBuf {
    text: KeyText,
    /// A value failed to serialize: the call runs uncached.
    unkeyable: bool,
    /// The text is a default key's call text, `"{prefix}\0{json}"`, whose digest is not computed
    /// yet (see [`CallKeyBuilder`](super::CallKeyBuilder)).
    call: bool,
}

#[derive(Debug, Clone)]
enum KeyText {
    Inline(arrayvec::ArrayString<INLINE_KEY>),
    Heap(String),
}

impl Default for KeyText {
    fn default() -> Self {
        Self::Inline(arrayvec::ArrayString::new())
    }
}

// Moved inline by the compiler (see `INLINE_KEY`).
const _: () = assert!(size_of::<KeyBuf>() <= 128);

impl KeyBuf {
    /// An empty key.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends literal text (not escaped).
    #[inline]
    pub fn push_str(&mut self, text: &str) {
        if let KeyText::Inline(inline) = &mut self.text {
            if inline.try_push_str(text).is_ok() {
                return;
            }
        }
        self.push_spilled(text);
    }

    /// Appends to a key on the heap, moving it there first if it is still inline.
    #[cold]
    fn push_spilled(&mut self, text: &str) {
        match &mut self.text {
            KeyText::Inline(inline) => {
                let mut heap = String::with_capacity(inline.len() + text.len() + 32);
                heap.push_str(inline);
                heap.push_str(text);
                self.text = KeyText::Heap(heap);
            }
            KeyText::Heap(heap) => heap.push_str(text),
        }
    }

    /// The key as built so far.
    ///
    /// (Not for the key of a generated call, which may still be its call text: those go through
    /// [`into_string`](Self::into_string).)
    #[inline]
    pub fn as_str(&self) -> &str {
        debug_assert!(!self.call, "the key of a call is read through into_string");
        self.text()
    }

    /// Bytes of the text so far.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.text().len()
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        self.text().as_bytes()
    }

    /// Keeps the first `len` bytes (a character boundary).
    pub(super) fn truncate(&mut self, len: usize) {
        match &mut self.text {
            KeyText::Inline(inline) => inline.truncate(len),
            KeyText::Heap(heap) => heap.truncate(len),
        }
    }

    #[inline]
    fn text(&self) -> &str {
        match &self.text {
            KeyText::Inline(inline) => inline,
            KeyText::Heap(heap) => heap,
        }
    }

    /// A default key's call text, `"{prefix}\0{json}"`, when the key is one whose digest has not
    /// been computed: in-process stores index entries by it (see `backend::memory`), so that a
    /// hit needs no digest. It names the same call as the key, and no other; it never equals a
    /// key (keys with a NUL byte run uncached).
    #[inline]
    pub(crate) fn call_text(&self) -> Option<&str> {
        self.call.then(|| self.text())
    }

    /// The key as a `String` (as [`into_string`](Self::into_string)), and its call text if it
    /// was built as one.
    pub(crate) fn into_key_and_call(self) -> (String, Option<Box<str>>) {
        let call = self.call_text().map(Box::from);
        (self.into_string(), call)
    }

    /// Marks the text as a call text (built by `CallKeyBuilder`).
    pub(super) fn mark_call(&mut self) {
        self.call = true;
    }

    /// The key itself: for a call text, the prefix and the digest of the arguments.
    #[inline]
    pub(crate) fn completed(&self) -> KeyBuf {
        let mut key = KeyBuf::new();
        match self.call_text() {
            Some(call) => super::default::push_call_key(call, &mut key),
            None => key.push_str(self.text()),
        }
        key.unkeyable |= self.unkeyable;
        key
    }

    /// Whether every value in the key could be serialized (if not, the call runs uncached).
    #[inline]
    pub fn is_keyable(&self) -> bool {
        !self.unkeyable
    }

    /// The key as a `String`; a key with a value that failed to serialize becomes the
    /// [`UNKEYABLE`] marker.
    pub fn into_string(self) -> String {
        if self.unkeyable {
            return unkeyable();
        }
        if self.call {
            return self.completed().into_string();
        }
        match self.text {
            KeyText::Inline(inline) => inline.as_str().to_owned(),
            KeyText::Heap(heap) => heap,
        }
    }

    pub(crate) fn mark_unkeyable(&mut self) {
        self.unkeyable = true;
    }
}

impl std::fmt::Write for KeyBuf {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.push_str(text);
        Ok(())
    }
}

/// The key of a call with a value that failed to serialize (such calls run uncached).
pub(super) fn unkeyable() -> String {
    char::from(UNKEYABLE).to_string()
}
