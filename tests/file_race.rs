//! Two processes on one cache folder: one keeps writing fresh entries over expired ones, the other
//! keeps reading (which removes expired entries) and sweeping. A fresh entry is never found missing
//! right after its write returned. The processes are the `cache-child` helper binary.

mod support;

use std::process::{Command, Stdio};

use support::child_binary;

#[test]
fn removing_expired_entries_never_deletes_a_fresh_one_written_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = |role: &str| {
        Command::new(child_binary())
            .args(["file", role, "3000"])
            .env("CACHE_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cache-child runs")
    };
    let removers: Vec<_> = (0..2).map(|_| spawn("race-remove")).collect();
    let writer = spawn("race-write").wait_with_output().unwrap();
    for remover in removers {
        assert!(remover.wait_with_output().unwrap().status.success());
    }
    let stdout = String::from_utf8_lossy(&writer.stdout);
    assert!(
        writer.status.success(),
        "{}",
        String::from_utf8_lossy(&writer.stderr)
    );
    let rounds: u64 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("rounds="))
        .and_then(|n| n.parse().ok())
        .expect("the writer reports its rounds");
    assert!(rounds > 100, "too few rounds to mean anything: {stdout}");
    assert!(
        stdout.contains("missing=0 "),
        "fresh entries were deleted by the other process: {stdout}"
    );
}
