//! Sealed entries: an HMAC-SHA256 tag over each stored envelope, or AES-256-GCM encryption of it,
//! bound to the entry's storage key, so that whoever can write the shared store cannot plant an
//! entry that instances serve, nor move an authentic entry to another key.
//!
//! Layout of a sealed entry (the envelope inside is unchanged):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `b"CS"` (a plain envelope starts with `b"CE"`) |
//! | 2 | mode: [`MODE_MAC`] (HMAC-SHA256) or [`MODE_AEAD`] (AES-256-GCM) |
//! | 3..7 | key id: the first 4 bytes of a one-way fingerprint of the secret that sealed it |
//! | MAC: 7..n-32, n-32..n | the envelope, then HMAC-SHA256 over the bound context and the envelope |
//! | AEAD: 7..19, 19..n-16, n-16..n | a random 96-bit nonce, the encrypted envelope, the GCM tag |
//!
//! The bound context is the 7 header bytes, then the scope and the storage key, each preceded by
//! its length (8 bytes, little-endian): it is the MAC's input before the envelope, or the AEAD's
//! associated data. Keys for MAC, encryption and the key id are derived from the secret with
//! HKDF-SHA256 (built on `hmac`) under distinct labels.

use std::{fmt, ops::Deref, sync::Arc};

use aes_gcm::{aead::AeadInPlace, Aes256Gcm, KeyInit, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 2] = b"CS";
/// Mode byte of an entry carrying an HMAC-SHA256 tag.
pub(crate) const MODE_MAC: u8 = 1;
/// Mode byte of an entry encrypted with AES-256-GCM.
pub(crate) const MODE_AEAD: u8 = 2;
const HEADER: usize = 7;
const MAC_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// A secret that is too short to seal entries with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a cache secret must be at least {MIN_SECRET_LEN} bytes long (this one has {len})")]
pub struct InvalidSecret {
    len: usize,
}

/// The keys derived from one secret.
struct Keys {
    /// One-way fingerprint of the secret; its first 4 bytes are the key id of what it seals.
    fingerprint: [u8; 32],
    /// HMAC-SHA256 keyed with the derived MAC key (cloned for each use: no re-keying per entry).
    mac: HmacSha256,
    /// AES-256-GCM with the derived encryption key.
    aead: Aes256Gcm,
}

impl Keys {
    fn derive(secret: &[u8]) -> Result<Self, InvalidSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(InvalidSecret { len: secret.len() });
        }
        let prk = hkdf_extract(secret);
        let mac_key = hkdf_expand(&prk, b"mac");
        let aead_key = hkdf_expand(&prk, b"aes-256-gcm");
        Ok(Self {
            fingerprint: hkdf_expand(&prk, b"key id"),
            mac: keyed(&mac_key),
            aead: Aes256Gcm::new((&aead_key).into()),
        })
    }

    fn id(&self) -> [u8; 4] {
        [
            self.fingerprint[0],
            self.fingerprint[1],
            self.fingerprint[2],
            self.fingerprint[3],
        ]
    }
}

/// HMAC-SHA256 keyed with `key` (HMAC takes keys of any length, so this cannot fail).
fn keyed(key: &[u8]) -> HmacSha256 {
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// HKDF-Extract (RFC 5869) with a fixed, library-specific salt.
fn hkdf_extract(secret: &[u8]) -> [u8; 32] {
    let mut mac = keyed(b"cache-runtime seal v1");
    mac.update(secret);
    mac.finalize().into_bytes().into()
}

/// One 32-byte block of HKDF-Expand (RFC 5869) under `label`.
fn hkdf_expand(prk: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = keyed(prk);
    mac.update(b"cache-runtime seal v1 ");
    mac.update(label);
    mac.update(&[1]);
    mac.finalize().into_bytes().into()
}

/// The secret that seals a backend's entries, with the older secrets still accepted for reading
/// (rotation), and whether entries are encrypted too.
///
/// ```
/// use cache_runtime::{Protection, RedisBackend, Secret};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let secret = Secret::new("a new secret of 32 random bytes.")?
///     .accept("the one it replaces, still read")?
///     .encrypt();
/// cache_runtime::register_with(
///     "redis",
///     RedisBackend::open("redis://127.0.0.1:6379")?,
///     Protection::default().secret(secret),
/// );
/// # Ok(()) }
/// ```
///
/// Secrets shorter than [`MIN_SECRET_LEN`] bytes are refused. Only keys derived from the secrets
/// are kept; `Debug` shows their ids, never key material.
#[derive(Clone)]
pub struct Secret {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    /// The current secret first (it seals every write), then the accepted older ones.
    keys: Vec<Arc<Keys>>,
    encrypt: bool,
    scope: String,
}

impl Secret {
    /// Seals entries with `secret` (at least [`MIN_SECRET_LEN`] bytes): an HMAC-SHA256 tag, unless
    /// [`encrypt`](Self::encrypt) is called too.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, InvalidSecret> {
        let keys = Keys::derive(secret.as_ref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                keys: vec![Arc::new(keys)],
                encrypt: false,
                scope: String::new(),
            }),
        })
    }

    /// Also accepts, for reading only, entries sealed with `previous` (a rotated-out secret).
    pub fn accept(mut self, previous: impl AsRef<[u8]>) -> Result<Self, InvalidSecret> {
        let keys = Keys::derive(previous.as_ref())?;
        let inner = Arc::make_mut(&mut self.inner);
        if !inner.keys.iter().any(|k| k.fingerprint == keys.fingerprint) {
            inner.keys.push(Arc::new(keys));
        }
        Ok(self)
    }

    /// Encrypts entries with AES-256-GCM (which authenticates them too). Entries that only carry
    /// a MAC are then misses.
    pub fn encrypt(mut self) -> Self {
        Arc::make_mut(&mut self.inner).encrypt = true;
        self
    }

    /// Binds entries to `scope` as well as to their key: an entry sealed under one scope is a miss
    /// under any other (give each deployment sharing a secret and a store, such as two Redis
    /// prefixes, its own scope).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).scope = scope.into();
        self
    }

    /// Whether entries are encrypted.
    pub fn encrypts(&self) -> bool {
        self.inner.encrypt
    }

    fn current(&self) -> &Keys {
        &self.inner.keys[0]
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self
            .inner
            .keys
            .iter()
            .map(|k| k.id().iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        f.debug_struct("Secret")
            .field("key_ids", &ids)
            .field("encrypt", &self.inner.encrypt)
            .field("scope", &self.inner.scope)
            .finish()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.inner, &other.inner);
        a.encrypt == b.encrypt
            && a.scope == b.scope
            && a.keys.len() == b.keys.len()
            && a.keys
                .iter()
                .zip(&b.keys)
                .all(|(x, y)| x.fingerprint == y.fingerprint)
    }
}
impl Eq for Secret {}

/// How a backend's entries are sealed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Sealing {
    /// Plain envelopes, read and written as they are.
    #[default]
    Off,
    /// Sealed with this secret.
    On(Secret),
    /// A secret was asked for but is unusable (invalid environment): nothing is read or written.
    Unusable,
}

/// Why a stored entry was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The backend's sealing is unusable: treat it as a failed backend.
    Unusable,
    /// The entry is not authentic under this backend's secret: a decode failure.
    Invalid(&'static str),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unusable => f.write_str("the backend's secret is unusable"),
            Refusal::Invalid(reason) => f.write_str(reason),
        }
    }
}

/// An opened entry: the envelope, in place inside the bytes that were read.
#[derive(Debug)]
pub(crate) struct Opened {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Deref for Opened {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes.get(self.start..self.end).unwrap_or_default()
    }
}

/// The context an entry is bound to: its header, the scope and the storage key, length-prefixed.
fn bind(mac: &mut impl Mac, header: &[u8], scope: &str, key: &str) {
    mac.update(header);
    mac.update(&(scope.len() as u64).to_le_bytes());
    mac.update(scope.as_bytes());
    mac.update(&(key.len() as u64).to_le_bytes());
    mac.update(key.as_bytes());
}

/// The same context as associated data for AES-GCM.
fn associated_data(header: &[u8], scope: &str, key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + 16 + scope.len() + key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(scope.len() as u64).to_le_bytes());
    aad.extend_from_slice(scope.as_bytes());
    aad.extend_from_slice(&(key.len() as u64).to_le_bytes());
    aad.extend_from_slice(key.as_bytes());
    aad
}

impl Sealing {
    /// The sealing the environment asks for (`CACHE_SECRET`, `CACHE_SECRET_PREVIOUS`,
    /// `CACHE_ENCRYPT`); an invalid setting is logged and makes the backend [`Sealing::Unusable`].
    pub(crate) fn from_env() -> Self {
        let parsed = match crate::config::secret_env() {
            Ok((current, previous, encrypt)) => {
                parse_env(current.as_deref(), previous.as_deref(), encrypt.as_deref())
            }
            Err(name) => Err(EnvProblem::NotUnicode(name)),
        };
        match parsed {
            Ok(Some(secret)) => Sealing::On(secret),
            Ok(None) => Sealing::Off,
            Err(problem) => {
                tracing::error!(
                    %problem,
                    "invalid cache secret configuration; backends configured from the environment \
                     neither read nor store entries (every call runs its body) until it is fixed"
                );
                Sealing::Unusable
            }
        }
    }

    /// Seals an encoded envelope for storage under `key`; `None`: nothing may be stored.
    pub(crate) fn seal(&self, key: &str, envelope: Vec<u8>) -> Option<Vec<u8>> {
        let secret = match self {
            Sealing::Off => return Some(envelope),
            Sealing::Unusable => return None,
            Sealing::On(secret) => secret,
        };
        let keys = secret.current();
        let scope = secret.inner.scope.as_str();
        let mut header = [0u8; HEADER];
        header[..2].copy_from_slice(MAGIC);
        header[3..].copy_from_slice(&keys.id());
        if !secret.inner.encrypt {
            header[2] = MODE_MAC;
            let mut mac = keys.mac.clone();
            bind(&mut mac, &header, scope, key);
            mac.update(&envelope);
            let tag = mac.finalize().into_bytes();
            let mut out = Vec::with_capacity(HEADER + envelope.len() + MAC_LEN);
            out.extend_from_slice(&header);
            out.extend_from_slice(&envelope);
            out.extend_from_slice(&tag);
            return Some(out);
        }
        header[2] = MODE_AEAD;
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(error) = getrandom::fill(&mut nonce) {
            tracing::warn!(key, %error, "no random nonce for an encrypted entry; not cached");
            return None;
        }
        let start = HEADER + NONCE_LEN;
        let mut out = Vec::with_capacity(start + envelope.len() + GCM_TAG_LEN);
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&envelope);
        let aad = associated_data(&header, scope, key);
        let sealed = keys.aead.encrypt_in_place_detached(
            Nonce::from_slice(&nonce),
            &aad,
            out.get_mut(start..)?,
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(&tag);
                Some(out)
            }
            Err(_) => {
                tracing::warn!(key, "entry too large to encrypt; not cached");
                None
            }
        }
    }

    /// Opens bytes read from under `key`: the envelope inside, if the entry is authentic and in
    /// the mode this backend requires. With sealing off, the bytes are the envelope.
    pub(crate) fn open(&self, key: &str, mut bytes: Vec<u8>) -> Result<Opened, Refusal> {
        let secret = match self {
            Sealing::Off => {
                let end = bytes.len();
                return Ok(Opened {
                    bytes,
                    start: 0,
                    end,
                });
            }
            Sealing::Unusable => return Err(Refusal::Unusable),
            Sealing::On(secret) => secret,
        };
        let Some(header) = bytes.get(..HEADER) else {
            return Err(Refusal::Invalid("not a sealed entry"));
        };
        if &header[..2] != MAGIC {
            return Err(Refusal::Invalid("not a sealed entry"));
        }
        let header: [u8; HEADER] = match header.try_into() {
            Ok(header) => header,
            Err(_) => return Err(Refusal::Invalid("not a sealed entry")),
        };
        let mode = header[2];
        if mode == MODE_MAC && secret.inner.encrypt {
            return Err(Refusal::Invalid(
                "not encrypted, and encryption is required",
            ));
        }
        if mode != MODE_MAC && mode != MODE_AEAD {
            return Err(Refusal::Invalid("unknown sealing mode"));
        }
        let id = &header[3..];
        let mut candidates = secret.inner.keys.iter().filter(|k| k.id() == id).peekable();
        if candidates.peek().is_none() {
            return Err(Refusal::Invalid("sealed with an unknown key"));
        }
        let scope = secret.inner.scope.as_str();
        let len = bytes.len();
        if mode == MODE_MAC {
            let Some(end) = len.checked_sub(MAC_LEN).filter(|&end| end >= HEADER) else {
                return Err(Refusal::Invalid("truncated sealed entry"));
            };
            let (body, tag) = bytes.split_at(end);
            for keys in candidates {
                let mut mac = keys.mac.clone();
                bind(&mut mac, &header, scope, key);
                mac.update(&body[HEADER..]);
                if mac.verify_slice(tag).is_ok() {
                    return Ok(Opened {
                        bytes,
                        start: HEADER,
                        end,
                    });
                }
            }
            return Err(Refusal::Invalid("not authentic (MAC mismatch)"));
        }
        let start = HEADER + NONCE_LEN;
        let Some(end) = len.checked_sub(GCM_TAG_LEN).filter(|&end| end >= start) else {
            return Err(Refusal::Invalid("truncated sealed entry"));
        };
        let aad = associated_data(&header, scope, key);
        let candidates: Vec<&Arc<Keys>> = candidates.collect();
        let last = candidates.len() - 1;
        for (n, keys) in candidates.into_iter().enumerate() {
            let (front, tag) = bytes.split_at_mut(end);
            let (nonce, ciphertext) = front.split_at_mut(start);
            let nonce = Nonce::from_slice(&nonce[HEADER..]);
            let tag = Tag::from_slice(tag);
            // A failed attempt leaves the buffer garbled: keep the ciphertext for the next key.
            let kept = (n < last).then(|| ciphertext.to_vec());
            if keys
                .aead
                .decrypt_in_place_detached(nonce, &aad, ciphertext, tag)
                .is_ok()
            {
                return Ok(Opened { bytes, start, end });
            }
            if let Some(kept) = kept {
                ciphertext.copy_from_slice(&kept);
            }
        }
        Err(Refusal::Invalid("not authentic (AES-GCM tag mismatch)"))
    }
}

/// A problem with the secret settings in the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvProblem {
    #[error("CACHE_SECRET: {0}")]
    Current(InvalidSecret),
    #[error("CACHE_SECRET must not contain ',' (CACHE_SECRET_PREVIOUS separates secrets with it)")]
    Comma,
    #[error("CACHE_SECRET_PREVIOUS, secret {index}: {error}")]
    Previous { index: usize, error: InvalidSecret },
    #[error("CACHE_SECRET_PREVIOUS or CACHE_ENCRYPT is set, but CACHE_SECRET is not")]
    NoCurrent,
    #[error("{0} is not valid UTF-8")]
    NotUnicode(&'static str),
    #[error("CACHE_ENCRYPT must be 1/true/yes/on or 0/false/no/off (got {0:?})")]
    Encrypt(String),
}

/// Reads the environment's secret settings: `current` (`CACHE_SECRET`) is one secret,
/// `previous` (`CACHE_SECRET_PREVIOUS`) a comma-separated list; each secret is its UTF-8 bytes
/// with surrounding whitespace removed. `Ok(None)`: nothing is set, entries are plain.
pub(crate) fn parse_env(
    current: Option<&str>,
    previous: Option<&str>,
    encrypt: Option<&str>,
) -> Result<Option<Secret>, EnvProblem> {
    fn set(value: Option<&str>) -> Option<&str> {
        value.map(str::trim).filter(|v| !v.is_empty())
    }
    let encrypt = match set(encrypt).map(str::to_ascii_lowercase).as_deref() {
        None | Some("0" | "false" | "no" | "off") => false,
        Some("1" | "true" | "yes" | "on") => true,
        Some(other) => return Err(EnvProblem::Encrypt(other.to_owned())),
    };
    let previous: Vec<&str> = set(previous)
        .map(|list| list.split(',').map(str::trim).collect())
        .unwrap_or_default();
    let Some(current) = set(current) else {
        return if encrypt || !previous.is_empty() {
            Err(EnvProblem::NoCurrent)
        } else {
            Ok(None)
        };
    };
    if current.contains(',') {
        return Err(EnvProblem::Comma);
    }
    let mut secret = Secret::new(current).map_err(EnvProblem::Current)?;
    for (index, old) in previous.into_iter().enumerate() {
        secret = secret.accept(old).map_err(|error| EnvProblem::Previous {
            index: index + 1,
            error,
        })?;
    }
    Ok(Some(if encrypt { secret.encrypt() } else { secret }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "0123456789abcdef-secret-A";
    const KEY_B: &str = "0123456789abcdef-secret-B";

    fn sealing(secret: Secret) -> Sealing {
        Sealing::On(secret)
    }

    fn opened(sealing: &Sealing, key: &str, bytes: &[u8]) -> Result<Vec<u8>, Refusal> {
        sealing.open(key, bytes.to_vec()).map(|o| o.to_vec())
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            Secret::new("fifteen bytes!!").unwrap_err(),
            InvalidSecret { len: 15 }
        );
        assert!(Secret::new("sixteen bytes!!!").is_ok());
        assert!(Secret::new(KEY_A).unwrap().accept("short").is_err());
        let message = Secret::new("").unwrap_err().to_string();
        assert!(message.contains("at least 16 bytes"), "{message}");
    }

    #[test]
    fn off_leaves_bytes_unchanged() {
        let bytes = b"CE\x01 plain envelope".to_vec();
        assert_eq!(Sealing::Off.seal("k", bytes.clone()).unwrap(), bytes);
        assert_eq!(opened(&Sealing::Off, "k", &bytes).unwrap(), bytes);
    }

    #[test]
    fn unusable_reads_and_writes_nothing() {
        assert_eq!(Sealing::Unusable.seal("k", b"x".to_vec()), None);
        assert_eq!(
            opened(&Sealing::Unusable, "k", b"x"),
            Err(Refusal::Unusable)
        );
    }

    #[test]
    fn both_modes_round_trip_and_bind_the_key() {
        for secret in [
            Secret::new(KEY_A).unwrap(),
            Secret::new(KEY_A).unwrap().encrypt(),
        ] {
            let s = sealing(secret);
            let sealed = s.seal("user:1", b"envelope bytes".to_vec()).unwrap();
            assert_eq!(&sealed[..2], MAGIC);
            assert_eq!(opened(&s, "user:1", &sealed).unwrap(), b"envelope bytes");
            assert!(matches!(
                opened(&s, "user:2", &sealed),
                Err(Refusal::Invalid(_))
            ));
            assert!(matches!(opened(&s, "", &sealed), Err(Refusal::Invalid(_))));
        }
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        for secret in [
            Secret::new(KEY_A).unwrap(),
            Secret::new(KEY_A).unwrap().encrypt(),
        ] {
            let s = sealing(secret);
            let sealed = s.seal("k", b"0123456789".to_vec()).unwrap();
            for at in 0..sealed.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut tampered = sealed.clone();
                    tampered[at] ^= flip;
                    assert!(
                        opened(&s, "k", &tampered).is_err(),
                        "byte {at} ^ {flip:#x} accepted"
                    );
                }
            }
            for len in 0..sealed.len() {
                assert!(
                    opened(&s, "k", &sealed[..len]).is_err(),
                    "truncated to {len}"
                );
            }
            let mut longer = sealed.clone();
            longer.push(0);
            assert!(opened(&s, "k", &longer).is_err());
        }
    }

    #[test]
    fn encryption_hides_the_value_and_uses_fresh_nonces() {
        let s = sealing(Secret::new(KEY_A).unwrap().encrypt());
        let plaintext = b"a very recognisable plaintext value".to_vec();
        let one = s.seal("k", plaintext.clone()).unwrap();
        let two = s.seal("k", plaintext.clone()).unwrap();
        assert_ne!(one, two, "a new nonce per write");
        assert_eq!(one[2], MODE_AEAD);
        for sealed in [&one, &two] {
            assert!(!sealed
                .windows(8)
                .any(|w| plaintext.windows(8).any(|p| p == w)));
        }
    }

    #[test]
    fn modes_and_unsealed_entries_are_enforced() {
        let mac = sealing(Secret::new(KEY_A).unwrap());
        let aead = sealing(Secret::new(KEY_A).unwrap().encrypt());
        let mac_entry = mac.seal("k", b"v".to_vec()).unwrap();
        let aead_entry = aead.seal("k", b"v".to_vec()).unwrap();
        assert_eq!(
            opened(&aead, "k", &mac_entry),
            Err(Refusal::Invalid(
                "not encrypted, and encryption is required"
            ))
        );
        // An encrypted entry is authentic too: readable where only integrity is required.
        assert_eq!(opened(&mac, "k", &aead_entry).unwrap(), b"v");
        for s in [&mac, &aead] {
            assert_eq!(
                opened(s, "k", b"CE\x01\x01plain envelope"),
                Err(Refusal::Invalid("not a sealed entry"))
            );
            let mut other_mode = mac_entry.clone();
            other_mode[2] = 9;
            assert_eq!(
                opened(s, "k", &other_mode),
                Err(Refusal::Invalid("unknown sealing mode"))
            );
        }
    }

    #[test]
    fn rotation_reads_old_entries_and_unknown_keys_are_refused() {
        for encrypt in [false, true] {
            let with = |s: Secret| sealing(if encrypt { s.encrypt() } else { s });
            let old = with(Secret::new(KEY_A).unwrap());
            let entry = old.seal("k", b"v".to_vec()).unwrap();
            let rotated = with(Secret::new(KEY_B).unwrap().accept(KEY_A).unwrap());
            assert_eq!(opened(&rotated, "k", &entry).unwrap(), b"v");
            // New writes use the current key, which the old configuration does not know.
            let new_entry = rotated.seal("k", b"w".to_vec()).unwrap();
            assert_eq!(
                opened(&old, "k", &new_entry),
                Err(Refusal::Invalid("sealed with an unknown key"))
            );
            let unrelated = with(Secret::new(KEY_B).unwrap());
            assert!(opened(&unrelated, "k", &entry).is_err());
        }
    }

    #[test]
    fn colliding_key_ids_still_find_the_right_key() {
        // Forge a collision: two keys with the same id, the wrong one tried first.
        for encrypt in [false, true] {
            let good = Secret::new(KEY_A).unwrap();
            let good = if encrypt { good.encrypt() } else { good };
            let entry = sealing(good.clone()).seal("k", b"v".to_vec()).unwrap();
            let mut wrong = Keys::derive(KEY_B.as_bytes()).unwrap();
            wrong.fingerprint[..4].copy_from_slice(&good.current().id());
            let mut both = good.clone();
            Arc::make_mut(&mut both.inner)
                .keys
                .insert(0, Arc::new(wrong));
            assert_eq!(opened(&sealing(both), "k", &entry).unwrap(), b"v");
        }
    }

    #[test]
    fn scopes_separate_entries() {
        let a = sealing(Secret::new(KEY_A).unwrap().scope("app-a:"));
        let b = sealing(Secret::new(KEY_A).unwrap().scope("app-b:"));
        let entry = a.seal("k", b"v".to_vec()).unwrap();
        assert_eq!(opened(&a, "k", &entry).unwrap(), b"v");
        assert!(opened(&b, "k", &entry).is_err());
        // Length prefixes: moving bytes between scope and key changes the context.
        let c = sealing(Secret::new(KEY_A).unwrap().scope("app-a"));
        assert!(opened(&c, ":k", &entry).is_err());
    }

    #[test]
    fn the_mac_format_is_stable() {
        // Processes of different builds share entries: the bytes of a MAC-sealed entry must not
        // change by accident (derivation labels, bound context, layout).
        let s = sealing(Secret::new(KEY_A).unwrap());
        let sealed = s.seal("user:1", b"envelope".to_vec()).unwrap();
        let hex: String = sealed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN);
    }

    #[test]
    fn an_entry_encrypted_elsewhere_opens() {
        // Sealed by Python's `cryptography` AES-GCM (nonce 00..0b) from the layout in the module
        // docs: the derivation, the associated data and the layout agree with the spec.
        let hex = "43530279ef73e4000102030405060708090a0b1fccab79b15162c2ad31c7690f278e121f50d25acb0fd2df";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let s = sealing(Secret::new(KEY_A).unwrap().encrypt());
        assert_eq!(opened(&s, "user:1", &bytes).unwrap(), b"envelope");
        assert!(opened(&s, "user:2", &bytes).is_err());
    }

    /// Computed independently (Python `hmac`, from the layout in the module docs).
    const GOLDEN: &str = "43530179ef73e4656e76656c6f70657d2fa3839858d092fe05594273bcea069eed979eb5dee55e226ec5153b7a789e";

    #[test]
    fn debug_shows_no_key_material() {
        let secret = Secret::new(KEY_A).unwrap().accept(KEY_B).unwrap();
        let shown = format!("{secret:?}");
        assert!(shown.contains("key_ids"), "{shown}");
        assert!(!shown.contains("secret-A") && !shown.contains("secret-B"));
        assert_eq!(secret, Secret::new(KEY_A).unwrap().accept(KEY_B).unwrap());
        assert_ne!(secret, Secret::new(KEY_A).unwrap());
    }

    #[test]
    fn environment_settings() {
        assert_eq!(parse_env(None, None, None), Ok(None));
        assert_eq!(parse_env(Some("  "), Some(""), Some("0")), Ok(None));
        let secret = parse_env(Some(&format!(" {KEY_B} ")), Some(KEY_A), None)
            .unwrap()
            .unwrap();
        assert_eq!(secret, Secret::new(KEY_B).unwrap().accept(KEY_A).unwrap());
        assert!(!secret.encrypts());
        let list = format!("{KEY_A}, 0123456789abcdef-secret-C ");
        let secret = parse_env(Some(KEY_B), Some(&list), Some("TRUE"))
            .unwrap()
            .unwrap();
        assert!(secret.encrypts());
        assert_eq!(secret.inner.keys.len(), 3);

        assert!(matches!(
            parse_env(Some("short"), None, None),
            Err(EnvProblem::Current(_))
        ));
        assert_eq!(
            parse_env(Some("0123456789abcdef,x"), None, None),
            Err(EnvProblem::Comma)
        );
        assert!(matches!(
            parse_env(Some(KEY_B), Some(&format!("{KEY_A},short")), None),
            Err(EnvProblem::Previous { index: 2, .. })
        ));
        assert_eq!(parse_env(None, None, Some("1")), Err(EnvProblem::NoCurrent));
        assert_eq!(
            parse_env(None, Some(KEY_A), None),
            Err(EnvProblem::NoCurrent)
        );
        assert!(matches!(
            parse_env(Some(KEY_B), None, Some("maybe")),
            Err(EnvProblem::Encrypt(_))
        ));
    }
}
