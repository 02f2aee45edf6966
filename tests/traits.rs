//! `#[cached]` on methods of trait impls, with `#[cached_impl]` on the impl block: native
//! `async fn` in traits and `#[async_trait]` impls (`#[cached_impl]` above `#[async_trait]`).
//! Counting how often each body ran.

// The traits are public test fixtures; their callers are all here.
#![allow(async_fn_in_trait)]

use std::{
    marker::PhantomData,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use cache_runtime::{cache_invalidate, cached, cached_impl};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: u64,
    name: String,
}

pub trait Users {
    async fn user(&self, id: u64) -> User;
    async fn count() -> u64;
    async fn rename(&self, id: u64) -> Result<(), String>;
}

/// A second trait with a method of the same name and arguments: its entries are its own.
pub trait Names {
    async fn user(&self, id: u64) -> User;
}

pub struct Db {
    name: &'static str,
}

/// Runs of `<Db as Users>::user(1)` (other ids are for other tests, which run concurrently).
static USER_RUNS: AtomicUsize = AtomicUsize::new(0);
static COUNT_RUNS: AtomicUsize = AtomicUsize::new(0);
static NAMES_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_impl]
impl Users for Db {
    /// Documented, with a receiver and the default key.
    #[cached(ttl = 60)]
    async fn user(&self, id: u64) -> User {
        if id == 1 {
            USER_RUNS.fetch_add(1, Ordering::SeqCst);
        }
        User {
            id,
            name: format!("{}-{id}", self.name),
        }
    }

    #[cached(ttl = 60, group = "counts")]
    async fn count() -> u64 {
        COUNT_RUNS.fetch_add(1, Ordering::SeqCst);
        7
    }

    #[cache_invalidate(group = "counts")]
    async fn rename(&self, id: u64) -> Result<(), String> {
        let _ = id;
        Ok(())
    }
}

// `Db::user_key` & co. exist already (for `Users`): this impl has none, and is refreshed with
// `cache_runtime::refresh`.
#[cached_impl(companions = false)]
impl Names for Db {
    #[cached(ttl = 60)]
    async fn user(&self, id: u64) -> User {
        NAMES_RUNS.fetch_add(1, Ordering::SeqCst);
        User {
            id,
            name: format!("name-{id}"),
        }
    }
}

#[tokio::test]
async fn native_async_fn_methods_are_cached_with_companions_beside_the_impl() {
    let db = Db { name: "db" };
    let before = USER_RUNS.load(Ordering::SeqCst);
    assert_eq!(Users::user(&db, 1).await.name, "db-1");
    assert_eq!(Users::user(&db, 1).await.name, "db-1");
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), before + 1);

    // The default key names the impl: `<Type as Trait>::method`.
    let key = Db::user_key(1);
    assert!(
        key.starts_with("<traits::Db as traits::Users>::user:"),
        "{key}"
    );
    assert_eq!(Db::user_peek(1).await.map(|u| u.name), Some("db-1".into()));

    // Refresh runs the body (it takes the receiver, as the method does) and stores the value.
    assert_eq!(db.user_refresh(1).await.name, "db-1");
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), before + 2);
    Users::user(&db, 1).await;
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), before + 2);

    // Prime stores what the caller has; the next call is answered with it.
    let primed = User {
        id: 1,
        name: "primed".into(),
    };
    Db::user_prime(1, primed.clone()).await.unwrap();
    assert_eq!(Users::user(&db, 1).await, primed);
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), before + 2);

    Db::user_invalidate(1).await.unwrap();
    assert_eq!(Db::user_peek(1).await, None);
    assert_eq!(Users::user(&db, 1).await.name, "db-1");
    assert_eq!(USER_RUNS.load(Ordering::SeqCst), before + 3);
}

#[tokio::test]
async fn associated_fns_and_invalidation_in_trait_impls() {
    let before = COUNT_RUNS.load(Ordering::SeqCst);
    assert_eq!(<Db as Users>::count().await, 7);
    assert_eq!(<Db as Users>::count().await, 7);
    assert_eq!(COUNT_RUNS.load(Ordering::SeqCst), before + 1);
    assert!(Db::count_key().starts_with("<traits::Db as traits::Users>::count:"));
    // `#[cache_invalidate]` in the same impl.
    Users::rename(&Db { name: "db" }, 1).await.unwrap();
    <Db as Users>::count().await;
    assert_eq!(COUNT_RUNS.load(Ordering::SeqCst), before + 2);
    // A refresh of a fn without `self`.
    assert_eq!(Db::count_refresh().await, 7);
    assert_eq!(COUNT_RUNS.load(Ordering::SeqCst), before + 3);
}

/// A third one, also without companions.
pub trait Aliases {
    async fn user(&self, id: u64) -> User;
}

static ALIASES_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_impl(companions = false)]
impl Aliases for Db {
    #[cached(ttl = 60)]
    async fn user(&self, id: u64) -> User {
        ALIASES_RUNS.fetch_add(1, Ordering::SeqCst);
        User {
            id,
            name: format!("alias-{id}"),
        }
    }
}

#[tokio::test]
async fn two_traits_with_the_same_method_do_not_share_entries() {
    let db = Db { name: "db" };
    let before = NAMES_RUNS.load(Ordering::SeqCst);
    assert_eq!(Names::user(&db, 5).await.name, "name-5");
    assert_eq!(Names::user(&db, 5).await.name, "name-5");
    assert_eq!(Users::user(&db, 5).await.name, "db-5");
    assert_eq!(Aliases::user(&db, 5).await.name, "alias-5");
    assert_eq!(Aliases::user(&db, 5).await.name, "alias-5");
    assert_eq!(NAMES_RUNS.load(Ordering::SeqCst), before + 1);
    assert_eq!(ALIASES_RUNS.load(Ordering::SeqCst), 1);
    // Without companions, `cache_runtime::refresh` refreshes a call.
    assert_eq!(
        cache_runtime::refresh(Names::user(&db, 5)).await.name,
        "name-5"
    );
    assert_eq!(NAMES_RUNS.load(Ordering::SeqCst), before + 2);
    Names::user(&db, 5).await;
    assert_eq!(NAMES_RUNS.load(Ordering::SeqCst), before + 2);
}

#[async_trait::async_trait]
pub trait Profiles: Send + Sync {
    async fn profile(&self, id: u64) -> Result<User, String>;
    async fn rename(&self, id: u64, name: String) -> Result<(), String>;
}

pub struct Api {
    names: std::sync::Mutex<std::collections::HashMap<u64, String>>,
}

static PROFILE_RUNS: AtomicUsize = AtomicUsize::new(0);

// The cache attributes run first, then `#[async_trait]` boxes the futures.
#[cached_impl]
#[async_trait::async_trait]
impl Profiles for Api {
    #[cached(ttl = 60, key = "profile:{id}", group = "profiles")]
    async fn profile(&self, id: u64) -> Result<User, String> {
        PROFILE_RUNS.fetch_add(1, Ordering::SeqCst);
        if id == 0 {
            return Err("no user 0".into());
        }
        let names = self.names.lock().unwrap();
        let name = names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("user{id}"));
        Ok(User { id, name })
    }

    #[cache_invalidate(key = "profile:{id}")]
    async fn rename(&self, id: u64, name: String) -> Result<(), String> {
        self.names.lock().unwrap().insert(id, name);
        Ok(())
    }
}

#[tokio::test]
async fn async_trait_impls_are_cached_through_trait_objects() {
    let api = Arc::new(Api {
        names: Default::default(),
    });
    let profiles: Arc<dyn Profiles> = api.clone();
    let before = PROFILE_RUNS.load(Ordering::SeqCst);
    assert_eq!(profiles.profile(1).await.unwrap().name, "user1");
    assert_eq!(profiles.profile(1).await.unwrap().name, "user1");
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), before + 1);
    assert!(profiles.profile(0).await.is_err());
    assert!(profiles.profile(0).await.is_err());
    assert_eq!(
        PROFILE_RUNS.load(Ordering::SeqCst),
        before + 3,
        "errors are not cached"
    );

    // The futures are `Send` (async_trait requires it): a spawned call works.
    let spawned = tokio::spawn({
        let profiles = profiles.clone();
        async move { profiles.profile(1).await }
    });
    assert_eq!(spawned.await.unwrap().unwrap().name, "user1");
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), before + 3);

    profiles.rename(1, "Ada".into()).await.unwrap();
    assert_eq!(profiles.profile(1).await.unwrap().name, "Ada");
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), before + 4);

    // Companions, in an inherent impl of `Api`.
    assert_eq!(Api::profile_key(1), "profile:1");
    assert_eq!(Api::profile_peek(1).await.unwrap().unwrap().name, "Ada");
    api.names.lock().unwrap().insert(1, "Ada L".into());
    assert_eq!(api.profile_refresh(1).await.unwrap().name, "Ada L");
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), before + 5);
    let primed = User {
        id: 1,
        name: "primed".into(),
    };
    Api::profile_prime(1, Ok(primed.clone())).await.unwrap();
    assert_eq!(profiles.profile(1).await.unwrap(), primed);
    // Priming an `Err` (not cached) removes the entry.
    Api::profile_prime(1, Err("gone".into())).await.unwrap();
    assert_eq!(Api::profile_peek(1).await, None);
    cache_runtime::invalidate_group("profiles").await.unwrap();
    assert_eq!(PROFILE_RUNS.load(Ordering::SeqCst), before + 5);
}

/// A generic impl: each instantiation has its own entries (its type is in the key).
pub trait Source {
    async fn fetch(&self, id: u64) -> String;
}

pub struct Store<T>(PhantomData<fn() -> T>);

static FETCH_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_impl]
impl<T: 'static> Source for Store<T> {
    #[cached(ttl = 60)]
    async fn fetch(&self, id: u64) -> String {
        FETCH_RUNS.fetch_add(1, Ordering::SeqCst);
        format!("{}:{id}", std::any::type_name::<T>())
    }
}

#[tokio::test]
async fn generic_impls_key_each_instantiation_apart() {
    let (bytes, words) = (Store::<u8>(PhantomData), Store::<u16>(PhantomData));
    let before = FETCH_RUNS.load(Ordering::SeqCst);
    assert_eq!(bytes.fetch(1).await, "u8:1");
    assert_eq!(words.fetch(1).await, "u16:1");
    assert_eq!(bytes.fetch(1).await, "u8:1");
    assert_eq!(words.fetch(1).await, "u16:1");
    assert_eq!(FETCH_RUNS.load(Ordering::SeqCst), before + 2);
    let key = Store::<u8>::fetch_key(1);
    assert!(
        key.starts_with("<traits::Store<u8> as traits::Source>::fetch:"),
        "{key}"
    );
    assert_ne!(key, Store::<u16>::fetch_key(1));
}

/// A trait whose method returns a `Send` future, implemented with `async fn`.
pub trait Counter {
    fn next(&self, n: u64) -> impl std::future::Future<Output = u64> + Send;
}

pub struct Ticks;

static TICK_RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached_impl]
impl Counter for Ticks {
    #[cached(ttl = 60)]
    async fn next(&self, n: u64) -> u64 {
        TICK_RUNS.fetch_add(1, Ordering::SeqCst);
        n + 1
    }
}

async fn spawn_next<C: Counter + Send + Sync + 'static>(counter: Arc<C>, n: u64) -> u64 {
    tokio::spawn(async move { counter.next(n).await })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_send_future_trait_method_stays_send() {
    let ticks = Arc::new(Ticks);
    let before = TICK_RUNS.load(Ordering::SeqCst);
    assert_eq!(spawn_next(ticks.clone(), 1).await, 2);
    assert_eq!(spawn_next(ticks, 1).await, 2);
    assert_eq!(TICK_RUNS.load(Ordering::SeqCst), before + 1);
}

/// `#[cache_invalidate]` alone needs no `#[cached_impl]` in a trait impl (it has no companions).
pub trait Admin {
    async fn reset(&self) -> u8;
}

#[cached(ttl = 60, key = "admin-counter")]
async fn admin_counter() -> usize {
    ADMIN_RUNS.fetch_add(1, Ordering::SeqCst)
}

static ADMIN_RUNS: AtomicUsize = AtomicUsize::new(0);

impl Admin for Db {
    #[cache_invalidate(key = "admin-counter")]
    async fn reset(&self) -> u8 {
        0
    }
}

#[tokio::test]
async fn cache_invalidate_works_in_a_plain_trait_impl() {
    let first = admin_counter().await;
    assert_eq!(admin_counter().await, first);
    Db { name: "db" }.reset().await;
    assert_eq!(admin_counter().await, first + 1);
}
