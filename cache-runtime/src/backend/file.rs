//! The filesystem backend: one file per entry, shared safely by every process using the folder.
//!
//! Layout under the root folder:
//! - `entries/<ab>/<sha256 of key>`: 8 bytes of expiry (ms since the Unix epoch, little-endian)
//!   followed by the entry;
//! - `groups/<sha256 of group>`: the group's generation, 8 bytes;
//! - `tmp/`: files being written.
//!
//! File names are hashes, so nothing from user input reaches a path. Every write goes to a temp file
//! first and is renamed into place, so readers in any process see a whole old file or a whole new one.
//! Invalidating a group writes a fresh random generation the same way. Expired entries are deleted when
//! read, and a sweep (at most every [`SWEEP_EVERY`], started by writes, or [`FileBackend::sweep`])
//! removes the rest.

use std::{
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;

use super::{Backend, Lookup, Periodic};
use crate::{envelope::now_ms, key::sha256_hex, BackendError};

/// How often writes start a sweep of expired files.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Temp files older than this are leftovers of a crashed writer and are swept.
const TMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// A cache folder.
///
/// ```no_run
/// let backend = cache_runtime::FileBackend::new("/var/cache/myapp");
/// cache_runtime::register("file", backend);
/// ```
#[derive(Debug)]
pub struct FileBackend {
    root: PathBuf,
    sweeps: Periodic,
}

impl FileBackend {
    /// A backend storing under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            sweeps: Periodic::new(SWEEP_EVERY),
        }
    }

    /// The built-in `"file"` backend: `CACHE_DIR`, or a `cache` folder in the OS temp dir.
    pub fn from_env() -> Self {
        let root = std::env::var_os("CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("cache"));
        Self::new(root)
    }

    /// The folder this backend stores under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Deletes expired entries and abandoned temp files; returns how many files it removed.
    pub async fn sweep(&self) -> Result<usize, BackendError> {
        let root = self.root.clone();
        blocking(move || sweep_folder(&root)).await
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        let name = sha256_hex(key.as_bytes());
        self.root.join("entries").join(&name[..2]).join(name)
    }

    fn group_path(&self, group: &str) -> PathBuf {
        self.root.join("groups").join(sha256_hex(group.as_bytes()))
    }

    fn maybe_sweep(&self) {
        if self.sweeps.due() {
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(error) = sweep_folder(&root) {
                    tracing::warn!(folder = %root.display(), %error, "cache sweep failed");
                }
            });
        }
    }
}

#[async_trait]
impl Backend for FileBackend {
    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        let entry = self.entry_path(key);
        let group_files: Vec<PathBuf> = groups.iter().map(|g| self.group_path(g)).collect();
        blocking(move || {
            let generations = group_files
                .iter()
                .map(|path| read_generation(path))
                .collect::<std::io::Result<Vec<u64>>>()?;
            let value = read_entry(&entry)?;
            Ok(Lookup { value, generations })
        })
        .await
    }

    async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
        _groups: &[String],
    ) -> Result<(), BackendError> {
        let path = self.entry_path(key);
        let root = self.root.clone();
        let expires = now_ms().saturating_add(super::clamp_ttl_ms(ttl));
        // If this call is abandoned (its timeout fired), the blocking write must not land later,
        // after an invalidation that followed: it checks the flag right before its rename.
        let abandoned = AbandonOnDrop::default();
        let flag = Arc::clone(&abandoned.flag);
        blocking(move || {
            let mut contents = Vec::with_capacity(8 + value.len());
            contents.extend_from_slice(&expires.to_le_bytes());
            contents.extend_from_slice(&value);
            write_atomically(&root, &path, &contents, &flag)
        })
        .await?;
        abandoned.disarm();
        self.maybe_sweep();
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let path = self.entry_path(key);
        blocking(move || remove_if_present(&path)).await
    }

    async fn invalidate_group(&self, group: &str) -> Result<(), BackendError> {
        let path = self.group_path(group);
        let root = self.root.clone();
        blocking(move || {
            // A random 64-bit generation: no lock is needed between processes, and a value repeats
            // with negligible probability.
            let generation = fastrand::u64(1..);
            write_atomically(
                &root,
                &path,
                &generation.to_le_bytes(),
                &AtomicBool::new(false),
            )
        })
        .await
    }

    async fn clear(&self) -> Result<(), BackendError> {
        let entries = self.root.join("entries");
        blocking(move || match std::fs::remove_dir_all(&entries) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BackendError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(BackendError::Io),
        Err(join) => Err(BackendError::Io(std::io::Error::other(join))),
    }
}

fn read_entry(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(expiry) = bytes.get(..8) else {
        // Truncated: unusable, and the next write replaces it.
        return Ok(None);
    };
    let expires = u64::from_le_bytes(expiry.try_into().unwrap_or([0; 8]));
    if expires <= now_ms() {
        remove_if_present(path)?;
        return Ok(None);
    }
    bytes.drain(..8);
    Ok(Some(bytes))
}

fn read_generation(path: &Path) -> std::io::Result<u64> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes
            .get(..8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Sets its flag when dropped before [`disarm`](AbandonOnDrop::disarm).
struct AbandonOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Default for AbandonOnDrop {
    fn default() -> Self {
        Self {
            flag: Arc::new(AtomicBool::new(false)),
            armed: true,
        }
    }
}

impl AbandonOnDrop {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Release);
        }
    }
}

fn write_atomically(
    root: &Path,
    target: &Path,
    contents: &[u8],
    abandoned: &AtomicBool,
) -> std::io::Result<()> {
    let tmp_dir = root.join("tmp");
    std::fs::create_dir_all(&tmp_dir)?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = tmp_dir.join(format!(
        "{}.{}.{:016x}",
        std::process::id(),
        now_ms(),
        fastrand::u64(..)
    ));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(contents)?;
        if abandoned.load(Ordering::Acquire) {
            return Err(std::io::Error::other("write abandoned by its caller"));
        }
        std::fs::rename(&tmp, target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sweep_folder(root: &Path) -> std::io::Result<usize> {
    let now = now_ms();
    let mut removed = 0;
    for shard in read_dir_if_present(&root.join("entries"))? {
        for entry in read_dir_if_present(&shard)? {
            let mut head = [0u8; 8];
            let expired = match std::fs::File::open(&entry) {
                Ok(mut file) => match std::io::Read::read_exact(&mut file, &mut head) {
                    Ok(()) => u64::from_le_bytes(head) <= now,
                    Err(_) => true, // truncated
                },
                Err(_) => false, // gone already
            };
            if expired && remove_if_present(&entry).is_ok() {
                removed += 1;
            }
        }
    }
    for tmp in read_dir_if_present(&root.join("tmp"))? {
        let old = std::fs::metadata(&tmp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TMP_MAX_AGE);
        if old && remove_if_present(&tmp).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn read_dir_if_present(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn round_trip_expiry_and_sweep() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fb = FileBackend::new(dir.path());
            fb.set("a", b"one".to_vec(), Duration::from_secs(60), &[])
                .await
                .unwrap();
            fb.set("b", b"two".to_vec(), Duration::from_millis(1), &[])
                .await
                .unwrap();
            assert_eq!(fb.get("a", &[]).await.unwrap().value.unwrap(), b"one");
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(fb.sweep().await.unwrap(), 1);
            assert_eq!(fb.get("b", &[]).await.unwrap().value, None);
            assert_eq!(fb.get("a", &[]).await.unwrap().value.unwrap(), b"one");
        });
    }

    #[test]
    fn file_names_are_hashes_whatever_the_key() {
        let fb = FileBackend::new("/cache");
        let path = fb.entry_path("../../etc/passwd");
        assert!(path.starts_with("/cache/entries"));
        assert_eq!(path.components().count(), 5);
        assert!(!path.to_string_lossy().contains(".."));
    }

    #[test]
    fn truncated_entries_are_absent() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fb = FileBackend::new(dir.path());
            let path = fb.entry_path("k");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"abc").unwrap();
            assert_eq!(fb.get("k", &[]).await.unwrap().value, None);
        });
    }

    #[test]
    fn group_generations_change_on_invalidation() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fb = FileBackend::new(dir.path());
            let groups = vec!["g".to_string()];
            let before = fb.get("k", &groups).await.unwrap().generations;
            assert_eq!(before, vec![0]);
            fb.invalidate_group("g").await.unwrap();
            let after = fb.get("k", &groups).await.unwrap().generations;
            assert_ne!(after, before);
        });
    }
}
