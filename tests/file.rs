//! The filesystem backend on real temp folders.

use std::sync::atomic::{AtomicUsize, Ordering};

use cache_runtime::{cached, FileBackend};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(
    ttl = 60,
    backend = "file-basic",
    key = "report:{name}",
    group = "reports"
)]
async fn report(name: &str) -> Vec<String> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    vec![name.to_owned(); 2]
}

fn entry_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for shard in std::fs::read_dir(root.join("entries"))
        .into_iter()
        .flatten()
    {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            files.push(file.unwrap().path());
        }
    }
    files
}

#[tokio::test]
async fn hits_invalidation_garbage_and_hostile_keys() {
    let dir = tempfile::tempdir().unwrap();
    cache_runtime::register("file-basic", FileBackend::new(dir.path()));

    assert_eq!(report("q1").await, vec!["q1", "q1"]);
    assert_eq!(report("q1").await, vec!["q1", "q1"]);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);

    // One file, named by a hash, nothing from the key in the path.
    let files = entry_files(dir.path());
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(name.len(), 64);
    assert!(name.chars().all(|c| c.is_ascii_hexdigit()));

    // Group invalidation.
    cache_runtime::invalidate_group("reports").await.unwrap();
    report("q1").await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);

    // Garbage in the file: a miss that gets overwritten.
    std::fs::write(&files[0], b"\x00\x01garbage").unwrap();
    report("q1").await;
    report("q1").await;
    assert_eq!(RUNS.load(Ordering::SeqCst), 3);

    // Key invalidation removes the file.
    cache_runtime::invalidate_key(&report_key("q1"))
        .await
        .unwrap();
    assert!(entry_files(dir.path()).is_empty());

    // Path traversal attempts stay inside the folder.
    report("../../../../etc/passwd").await;
    report("..\\..\\x").await;
    assert_eq!(entry_files(dir.path()).len(), 2);
    for file in entry_files(dir.path()) {
        assert!(file.starts_with(dir.path()));
    }
    // No temp files are left behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
}
