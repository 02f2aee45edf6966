//! The example app, served on a real port: every route it lists answers, with Redis down (the
//! "redis" name falls back to memory) and with a real Redis.

#[allow(dead_code, unused_imports)]
#[path = "../examples/axum_app.rs"]
mod axum_app;
mod support;

use support::{free_port, http::TestServer, RedisServer};

/// Requests every listed route (placeholders filled in) and checks what each should show.
async fn tour(server: &TestServer) {
    let routes = [
        ("GET", "/"),
        ("GET", "/memory/square/12"),
        ("GET", "/ttl/clock"),
        ("GET", "/redis/users/1"),
        ("PUT", "/redis/users/1?name=Ada%20Lovelace"),
        ("GET", "/redis/pages/2"),
        ("GET", "/file/reports/q3"),
        ("GET", "/headers/profile"),
        ("GET", "/etag/articles/1"),
        ("GET", "/middleware/news"),
        ("GET", "/middleware/weather?city=Lyon"),
        ("POST", "/groups/users/clear"),
        ("GET", "/nested/orgs/1"),
        ("GET", "/stale/quote"),
        ("GET", "/metrics"),
    ];
    assert_eq!(
        routes.len(),
        axum_app::ROUTES.len(),
        "every listed route is toured"
    );
    for (method, path) in routes {
        let reply = server.send(method, path, &[]).await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.body);
    }

    assert!(server
        .get("/memory/square/12")
        .await
        .body
        .contains("\"square\":144"));
    let user = server.get("/redis/users/1").await;
    assert!(
        user.body.contains("Ada Lovelace"),
        "update invalidated user:1: {}",
        user.body
    );
    let page = server.get("/redis/pages/2").await;
    assert_eq!(page.header("x-rendered-by"), Some("axum_app"));
    assert!(page
        .header("cache-control")
        .unwrap()
        .starts_with("public, max-age="));
    assert!(server
        .get("/headers/profile")
        .await
        .header("cache-control")
        .unwrap()
        .starts_with("private, max-age="));
    let article = server.get("/etag/articles/1").await;
    let etag = article.header("etag").unwrap();
    let revalidated = server
        .send("GET", "/etag/articles/1", &[("if-none-match", etag)])
        .await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(
        server.get("/middleware/news").await.header("x-cache"),
        Some("HIT")
    );
    let fr = server
        .send(
            "GET",
            "/middleware/weather?city=Lyon",
            &[("accept-language", "fr")],
        )
        .await;
    assert!(fr.body.contains("ensoleillé"), "{}", fr.body);
    let org = server.get("/nested/orgs/1").await;
    assert!(
        org.body.contains(r#""seats":{"kind":"Limit","value":25}"#),
        "{}",
        org.body
    );
    assert!(org.body.contains(r#""lead":null"#));
    assert!(server
        .get("/stale/quote")
        .await
        .body
        .starts_with("quote computed at"));
    let metrics = server.get("/metrics").await.body;
    assert!(
        metrics.contains("cache_hits_total{function=\"example_app::axum_app::load_user\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE cache_hit_seconds histogram"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_works_without_redis_and_with_redis() {
    let files = tempfile::tempdir().unwrap();
    cache_runtime::register("file", cache_runtime::FileBackend::new(files.path()));

    axum_app::configure_redis(&format!("redis://127.0.0.1:{}", free_port())).await;
    let server = TestServer::start(axum_app::app()).await;
    tour(&server).await;
    drop(server);

    let redis = RedisServer::start();
    axum_app::configure_redis(&redis.url()).await;
    let server = TestServer::start(axum_app::app()).await;
    tour(&server).await;
    let keys = redis.cli(&["KEYS", "cache:k:*"]);
    assert!(
        keys.contains("cache:k:org:1"),
        "nested data stored in Redis: {keys}"
    );
    assert!(keys.contains("cache:k:user:1"), "{keys}");
}
