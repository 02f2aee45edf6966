//! Generic `#[cached]` fns: each instantiation has its own entries (the type names of the type
//! parameters, and the const parameters, are part of the key), one stats site per fn.

use std::{
    fmt::Debug,
    sync::atomic::{AtomicUsize, Ordering},
};

use cache_runtime::cached;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

static DESCRIBE_RUNS: AtomicUsize = AtomicUsize::new(0);

/// `1u8` and `1u16` serialize alike: only the type names in the key tell the calls apart.
#[cached(ttl = 60)]
async fn describe<T: Serialize + Debug + Send + Sync + 'static>(value: T) -> String {
    DESCRIBE_RUNS.fetch_add(1, Ordering::SeqCst);
    format!("{}:{value:?}", std::any::type_name::<T>())
}

#[tokio::test]
async fn instantiations_have_their_own_entries_and_share_one_stats_site() {
    assert_eq!(describe(1u8).await, "u8:1");
    assert_eq!(describe(1u16).await, "u16:1");
    assert_eq!(describe(1u8).await, "u8:1");
    assert_eq!(describe(1u16).await, "u16:1");
    assert_eq!(DESCRIBE_RUNS.load(Ordering::SeqCst), 2);
    assert_ne!(describe_key(1u8), describe_key(1u16));
    assert!(describe_key(1u8).starts_with("generics::describe:"));

    let stats = cache_runtime::stats();
    let sites: Vec<_> = stats
        .iter()
        .filter(|s| s.function == "generics::describe")
        .collect();
    assert_eq!(sites.len(), 1, "one site for every instantiation");
    assert_eq!((sites[0].hits, sites[0].misses), (2, 2));
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    total: u32,
}

static LOAD_RUNS: AtomicUsize = AtomicUsize::new(0);

/// The value type is the type parameter: a template names it with `{T}`.
#[cached(ttl = 60, key = "row:{T}:{id}", group = "rows:{T}")]
async fn load<T>(id: u64) -> Result<T, String>
where
    T: DeserializeOwned + Serialize + Clone + Default + Send + Sync + 'static,
{
    LOAD_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(T::default())
}

#[tokio::test]
async fn a_type_parameter_in_templates_renders_its_type_name() {
    let before = LOAD_RUNS.load(Ordering::SeqCst);
    assert_eq!(load::<User>(1).await, Ok(User::default()));
    assert_eq!(load::<Order>(1).await, Ok(Order::default()));
    assert_eq!(load::<User>(1).await, Ok(User::default()));
    assert_eq!(LOAD_RUNS.load(Ordering::SeqCst), before + 2);
    assert_eq!(load_key::<User>(1), "row:generics%3A%3AUser:1");
    assert_eq!(load_key::<Order>(1), "row:generics%3A%3AOrder:1");

    // Groups too: invalidating the users leaves the orders.
    cache_runtime::invalidate_group("rows:generics%3A%3AUser")
        .await
        .unwrap();
    load::<User>(1).await.unwrap();
    load::<Order>(1).await.unwrap();
    assert_eq!(LOAD_RUNS.load(Ordering::SeqCst), before + 3);

    // Companions take the type parameters as the fn does.
    let primed = Order { id: 9, total: 3 };
    load_prime::<Order>(9, Ok(primed.clone())).await.unwrap();
    assert_eq!(load_peek::<Order>(9).await, Some(Ok(primed.clone())));
    assert_eq!(load_peek::<User>(9).await, None);
    assert_eq!(load::<Order>(9).await, Ok(primed));
    assert_eq!(load_refresh::<Order>(9).await, Ok(Order::default()));
    assert_eq!(LOAD_RUNS.load(Ordering::SeqCst), before + 4);
}

static CHUNK_RUNS: AtomicUsize = AtomicUsize::new(0);

/// A const parameter is part of the key, and usable in templates.
#[cached(ttl = 60)]
async fn chunk<const N: usize>(start: u64) -> Vec<u64> {
    CHUNK_RUNS.fetch_add(1, Ordering::SeqCst);
    (start..start + N as u64).collect()
}

#[cached(ttl = 60, key = "page:{N}:{start}")]
async fn page<const N: usize>(start: u64) -> usize {
    N + start as usize
}

#[tokio::test]
async fn const_parameters_are_part_of_the_key() {
    assert_eq!(chunk::<2>(1).await, vec![1, 2]);
    assert_eq!(chunk::<3>(1).await, vec![1, 2, 3]);
    assert_eq!(chunk::<2>(1).await, vec![1, 2]);
    assert_eq!(CHUNK_RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(page_key::<4>(1), "page:4:1");
    assert_eq!(page::<4>(1).await, 5);
}

struct Repo {
    name: &'static str,
}

static GET_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Repo {
    /// A generic method: the key has `Self`, the type parameter and the argument.
    #[cached(ttl = 60)]
    async fn get<T: Serialize + Debug + Send + Sync + 'static>(&self, value: T) -> String {
        GET_RUNS.fetch_add(1, Ordering::SeqCst);
        format!("{}:{value:?}", self.name)
    }
}

#[tokio::test]
async fn generic_methods_work_too() {
    let repo = Repo { name: "r" };
    assert_eq!(repo.get(1u8).await, "r:1");
    assert_eq!(repo.get(1u32).await, "r:1");
    assert_eq!(repo.get(1u8).await, "r:1");
    assert_eq!(GET_RUNS.load(Ordering::SeqCst), 2);
    assert_ne!(Repo::get_key(1u8), Repo::get_key(1u32));
    assert_eq!(repo.get_refresh(1u8).await, "r:1");
    assert_eq!(GET_RUNS.load(Ordering::SeqCst), 3);
}

tokio::task_local! {
    static REQUEST: u32;
}

/// Declared `'static`: the body may run in a task of its own (so it does not see task-locals).
#[cached(ttl = 60)]
async fn spawned<T: Serialize + Send + Sync + 'static>(value: T) -> bool {
    let _ = value;
    REQUEST.try_with(|_| ()).is_ok()
}

/// Not declared `'static`: the body runs in the caller's task.
#[cached(ttl = 60)]
async fn in_place<T: Serialize + Send + Sync>(value: T) -> bool {
    let _ = value;
    REQUEST.try_with(|_| ()).is_ok()
}

/// With a borrowed argument and a lifetime parameter.
#[cached(ttl = 60)]
async fn labelled<'a, T: Serialize + Debug>(label: &'a str, value: T) -> String {
    format!("{label}{value:?}")
}

#[tokio::test]
async fn static_type_parameters_let_the_body_run_in_a_task_of_its_own() {
    let (spawned, in_place) = REQUEST
        .scope(1, async { (spawned(1u8).await, in_place(1u8).await) })
        .await;
    assert!(
        !spawned,
        "a `Send + 'static` generic body runs in a task of its own"
    );
    assert!(
        in_place,
        "a body of a non-'static type parameter runs in place"
    );
    assert_eq!(labelled("a", 1u8).await, "a1");
    assert_eq!(labelled("a", 1i64).await, "a1");
}
