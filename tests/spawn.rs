//! `spawn = false`: the body runs inside the caller's task, so task-locals set by the caller are
//! visible on a miss.

use cache_runtime::cached;

tokio::task_local! {
    static SCOPE: u32;
}

#[cached(ttl = 60, key = "in_place:{n}", spawn = false)]
async fn in_place(n: u32) -> u32 {
    SCOPE.get() + n
}

#[tokio::test]
async fn a_body_with_spawn_false_sees_the_callers_task_locals() {
    assert_eq!(SCOPE.scope(5, in_place(1)).await, 6, "miss, run in place");
    assert_eq!(SCOPE.scope(9, in_place(1)).await, 6, "hit");
    assert_eq!(SCOPE.scope(9, in_place(2)).await, 11, "another miss");
}
