//! The filesystem backend: one file per entry, shared safely by every process using the folder.
//!
//! Layout under the root folder:
//! - `entries/<ab>/<sha256 of key>`: 8 bytes of expiry (ms since the Unix epoch, little-endian)
//!   followed by the entry;
//! - `groups/<sha256 of group>`: the group's generation, 8 bytes;
//! - `locks/<ab>`: one lock file per shard of `entries/` (see below);
//! - `tmp/`: files being written.
//!
//! File names are hashes, so nothing from user input reaches a path. Every write goes to a temp file
//! first and is renamed into place, so readers in any process see a whole old file or a whole new one.
//! Invalidating a group writes a fresh random generation the same way. Expired entries are deleted when
//! read, and a sweep (at most every [`SWEEP_EVERY`], started by writes, or [`FileBackend::sweep`])
//! removes the rest.
//!
//! # Races between processes
//!
//! Removing an expired entry is "read it, see it expired, unlink the path", and another process may
//! rename a fresh entry onto the path in between: the unlink would then delete the fresh entry
//! (POSIX has no "unlink this path if it is still that inode"). So the two are serialized with
//! advisory file locks (`flock`), per shard: an entry write holds its shard's `locks/<ab>` *shared*
//! around its rename; a removal of an expired entry takes it *exclusively*, reads the file again and
//! unlinks it only if that read finds it expired still. No rename can happen between that read and
//! the unlink, so what is unlinked is what was found expired. Readers and key deletions (which
//! remove whatever is there, as intended) take no lock; writes only wait while an expired entry of
//! their shard is being removed. The kernel drops the locks of a process that dies, so a crash
//! leaves no stale lock.
//!
//! # Abandoned writes
//!
//! A write whose caller gave up (its timeout fired and dropped the future) must not land later,
//! after an invalidation that the caller ran next. A flag checked before the rename is not
//! enough: the caller can give up between the check and the rename. So the check and the rename
//! happen under one mutex, which the dropped future takes to set the flag: once the drop has
//! returned, the rename either happened before it, or will never happen. The drop waits only when
//! it lands during that rename.

use std::{
    io::{ErrorKind, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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
        let root = crate::config::cache_dir().unwrap_or_else(|| std::env::temp_dir().join("cache"));
        Self::new(root)
    }

    /// The folder this backend stores under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Deletes expired entries and abandoned temp files; returns how many files it removed.
    ///
    /// Writes start a sweep at most every 10 minutes by themselves; call this for a folder that is
    /// mostly read, from a periodic job for example.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), cache_runtime::BackendError> {
    /// let folder = std::env::temp_dir().join("cache-runtime-doc-sweep");
    /// let backend = cache_runtime::FileBackend::new(&folder);
    /// let removed = backend.sweep().await?;
    /// println!("{removed} expired files removed from {}", backend.root().display());
    /// # Ok(()) }
    /// ```
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
    fn tombstones(&self) -> bool {
        true
    }

    async fn get(&self, key: &str, groups: &[String]) -> Result<Lookup, BackendError> {
        let entry = self.entry_path(key);
        let root = self.root.clone();
        let group_files: Vec<PathBuf> = groups.iter().map(|g| self.group_path(g)).collect();
        blocking(move || {
            let generations = group_files
                .iter()
                .map(|path| read_generation(&root, path))
                .collect::<std::io::Result<Vec<u64>>>()?;
            let value = read_entry(&root, &entry)?;
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
            write_atomically(&root, &path, &contents, Some(&flag))
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
        blocking(move || write_generation(&root, &path).map(drop)).await
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

/// What an entry file holds.
enum Entry {
    Absent,
    /// Too short to hold an expiry: unusable (the next write replaces it).
    Truncated,
    Expired,
    /// A live entry's value.
    Live(Vec<u8>),
}

fn load_entry(path: &Path) -> std::io::Result<Entry> {
    let mut bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Entry::Absent),
        Err(e) => return Err(e),
    };
    let Some(expiry) = bytes.get(..8) else {
        return Ok(Entry::Truncated);
    };
    if u64::from_le_bytes(expiry.try_into().unwrap_or([0; 8])) <= now_ms() {
        return Ok(Entry::Expired);
    }
    bytes.drain(..8);
    Ok(Entry::Live(bytes))
}

fn read_entry(root: &Path, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match load_entry(path)? {
        Entry::Live(value) => Ok(Some(value)),
        Entry::Absent | Entry::Truncated => Ok(None),
        Entry::Expired => {
            hook("expired", path);
            // A fresh entry may have replaced it meanwhile: then that one is the answer.
            Ok(remove_expired(root, path)?.0)
        }
    }
}

/// The lock file of the shard holding `entry` (created on first use).
fn shard_lock(root: &Path, entry: &Path) -> std::io::Result<std::fs::File> {
    let shard = entry
        .parent()
        .and_then(Path::file_name)
        .ok_or_else(|| std::io::Error::other("entry path without a shard"))?;
    let dir = root.join("locks");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(shard))
    };
    match open() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir)?;
            open()
        }
        opened => opened,
    }
}

/// Removes `path` if it holds an expired (or truncated) entry, under its shard's exclusive lock so
/// that no write renames a fresh entry in between (see the module docs). Returns the value of a
/// live entry found there instead, and whether it removed a file.
fn remove_expired(root: &Path, path: &Path) -> std::io::Result<(Option<Vec<u8>>, bool)> {
    let lock = shard_lock(root, path)?;
    lock.lock()?;
    let found = match load_entry(path)? {
        Entry::Live(value) => (Some(value), false),
        Entry::Absent => (None, false),
        Entry::Expired | Entry::Truncated => {
            remove_if_present(path)?;
            (None, true)
        }
    };
    drop(lock); // unlocks
    Ok(found)
}

/// A group's generation: 0 while it has no file (never invalidated). A file cut short (a crash
/// after the rename of an invalidation, before its data reached the disk) stands for an
/// invalidation: it is replaced by a fresh generation, never read as 0, which would revive the
/// entries stored before the group's first invalidation.
fn read_generation(root: &Path, path: &Path) -> std::io::Result<u64> {
    match std::fs::read(path) {
        Ok(bytes) => match bytes.get(..8) {
            Some(head) => Ok(u64::from_le_bytes(head.try_into().unwrap_or([0; 8]))),
            None => write_generation(root, path),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Writes a fresh random generation for the group file at `path`. Random 64-bit generations need
/// no lock between processes, and a value repeats with negligible probability.
fn write_generation(root: &Path, path: &Path) -> std::io::Result<u64> {
    let generation = fastrand::u64(1..);
    write_atomically(root, path, &generation.to_le_bytes(), None)?;
    Ok(generation)
}

/// Sets its flag when dropped before [`disarm`](AbandonOnDrop::disarm). The flag's mutex is held
/// by the write across its check and its rename, so the drop returns only once the write either
/// renamed or never will.
struct AbandonOnDrop {
    flag: Arc<Mutex<bool>>,
    armed: bool,
}

impl Default for AbandonOnDrop {
    fn default() -> Self {
        Self {
            flag: Arc::new(Mutex::new(false)),
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
            *self.flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        }
    }
}

/// Writes `contents` to a temp file and renames it onto `target`. An entry write passes its
/// abandon flag, and then also holds its shard's lock shared around the rename.
fn write_atomically(
    root: &Path,
    target: &Path,
    contents: &[u8],
    abandoned: Option<&Mutex<bool>>,
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
        drop(file);
        let Some(abandoned) = abandoned else {
            return std::fs::rename(&tmp, target);
        };
        let lock = shard_lock(root, target)?;
        lock.lock_shared()?;
        // Check and rename under the flag's mutex: a caller giving up waits for a rename under
        // way, and one that gave up before is seen here.
        let abandoned = abandoned.lock().unwrap_or_else(|p| p.into_inner());
        if *abandoned {
            return Err(std::io::Error::other("write abandoned by its caller"));
        }
        hook("before_rename", target);
        let renamed = std::fs::rename(&tmp, target);
        drop(abandoned);
        drop(lock);
        renamed
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Test hooks: a one-shot closure run at a named point for one path, to pin down races.
#[cfg(test)]
mod hooks {
    use std::{
        path::{Path, PathBuf},
        sync::{Arc, Mutex},
    };

    type Hook = Arc<dyn Fn() + Send + Sync>;
    static HOOKS: Mutex<Vec<(&'static str, PathBuf, Hook)>> = Mutex::new(Vec::new());

    pub(super) fn set(point: &'static str, path: PathBuf, hook: impl Fn() + Send + Sync + 'static) {
        HOOKS.lock().unwrap().push((point, path, Arc::new(hook)));
    }

    pub(super) fn run(point: &'static str, path: &Path) {
        let hook = {
            let mut hooks = HOOKS.lock().unwrap();
            let found = hooks
                .iter()
                .position(|(p, at, _)| *p == point && at == path);
            found.map(|i| hooks.remove(i).2)
        };
        if let Some(hook) = hook {
            hook();
        }
    }
}

#[cfg(test)]
use hooks::run as hook;

#[cfg(not(test))]
fn hook(_point: &'static str, _path: &Path) {}

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
            if !expired {
                continue;
            }
            hook("expired", &entry);
            // Checked again under the shard's lock: a fresh entry renamed in since stays.
            if matches!(remove_expired(root, &entry), Ok((_, true))) {
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

    /// Writes `value` under `key` for `ttl` the way `set` does, synchronously (for hooks).
    fn write_now(fb: &FileBackend, key: &str, value: &[u8], ttl: Duration) {
        let mut contents = (now_ms() + ttl.as_millis() as u64).to_le_bytes().to_vec();
        contents.extend_from_slice(value);
        write_atomically(
            fb.root(),
            &fb.entry_path(key),
            &contents,
            Some(&Mutex::new(false)),
        )
        .unwrap();
    }

    /// A read finds an expired entry; before it removes it, another process renames a fresh entry
    /// into place. The fresh entry must survive.
    #[test]
    fn removing_an_expired_entry_on_read_spares_a_fresh_one_written_meanwhile() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fb = Arc::new(FileBackend::new(dir.path()));
            write_now(&fb, "k", b"old", Duration::ZERO);
            let writer = Arc::clone(&fb);
            hooks::set("expired", fb.entry_path("k"), move || {
                write_now(&writer, "k", b"fresh", Duration::from_secs(60));
            });
            let _ = fb.get("k", &[]).await.unwrap();
            assert_eq!(
                fb.get("k", &[]).await.unwrap().value.as_deref(),
                Some(&b"fresh"[..]),
                "the fresh entry was removed with the expired one"
            );
        });
    }

    /// The same race with the sweep.
    #[test]
    fn the_sweep_spares_a_fresh_entry_written_over_an_expired_one() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fb = Arc::new(FileBackend::new(dir.path()));
            write_now(&fb, "k", b"old", Duration::ZERO);
            let writer = Arc::clone(&fb);
            hooks::set("expired", fb.entry_path("k"), move || {
                write_now(&writer, "k", b"fresh", Duration::from_secs(60));
            });
            fb.sweep().await.unwrap();
            assert_eq!(
                fb.get("k", &[]).await.unwrap().value.as_deref(),
                Some(&b"fresh"[..]),
                "the sweep removed the fresh entry"
            );
        });
    }

    /// A write passes its abandon check; its caller then gives up (a timeout drops the future) and
    /// deletes the key (an invalidation that follows). The write must not land after that.
    #[test]
    fn an_abandoned_write_never_lands_after_the_caller_gave_up() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let fb = FileBackend::new(dir.path());
                let (reached, at_rename) = tokio::sync::oneshot::channel::<()>();
                let reached = std::sync::Mutex::new(Some(reached));
                hooks::set("before_rename", fb.entry_path("k"), move || {
                    if let Some(reached) = reached.lock().unwrap().take() {
                        let _ = reached.send(());
                    }
                    // The rename is slow (or the thread is descheduled) right here.
                    std::thread::sleep(Duration::from_millis(300));
                });
                tokio::select! {
                    _ = fb.set("k", b"old".to_vec(), Duration::from_secs(60), &[]) => {
                        panic!("the hook holds the write")
                    }
                    _ = at_rename => {} // the caller gives up: the set future is dropped
                }
                fb.delete("k").await.unwrap();
                tokio::time::sleep(Duration::from_millis(600)).await;
                assert_eq!(
                    fb.get("k", &[]).await.unwrap().value,
                    None,
                    "the abandoned write landed after the delete that followed"
                );
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

    /// A crash can leave a renamed group file without its contents (zero-length, or cut short).
    /// Read as generation 0 (no invalidation yet), it revived every entry stored before the
    /// group's first invalidation; it now reads as a fresh invalidation.
    #[test]
    fn a_group_file_cut_short_reads_as_a_fresh_invalidation() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let fb = FileBackend::new(dir.path());
            let groups = vec!["g".to_string()];
            fb.set("k", b"old".to_vec(), Duration::from_secs(60), &groups)
                .await
                .unwrap();
            let stored_under = fb.get("k", &groups).await.unwrap().generations;
            assert_eq!(stored_under, vec![0]);
            fb.invalidate_group("g").await.unwrap();
            for cut in [0, 3] {
                std::fs::write(fb.group_path("g"), &[7u8; 8][..cut]).unwrap();
                let first = fb.get("k", &groups).await.unwrap().generations;
                let second = fb.get("k", &groups).await.unwrap().generations;
                assert_ne!(first, stored_under, "cut to {cut} bytes");
                assert_eq!(first, second, "one generation once repaired");
                assert_eq!(std::fs::read(fb.group_path("g")).unwrap().len(), 8);
            }
        });
    }
}
