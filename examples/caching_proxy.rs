//! A caching reverse proxy: every request goes to one origin through
//! [`CacheLayer::proxy`](cache_runtime::http::CacheLayer::proxy), an RFC 9111 shared cache.
//!
//! ```text
//! UPSTREAM=http://127.0.0.1:8000 cargo run --release --example caching_proxy
//! curl -i localhost:8080/some/page      # X-Cache: MISS, then HIT while the response is fresh
//! ```
//!
//! Environment:
//! - `UPSTREAM` (required): the origin, `http://host:port` (plain HTTP; an optional path is a
//!   prefix put before every request's path);
//! - `PORT` (default 8080; 0 picks a free one) and `HOST` (default 127.0.0.1): where to listen;
//! - `BACKEND` (default `memory`): where responses are stored, any backend name the library knows
//!   (`memory`, `redis` with `REDIS_URL`, `file` with `CACHE_DIR`, `tiered`, ...);
//! - `TARGETED` (optional): a targeted cache-control field (RFC 9213) whose directives this cache
//!   follows instead of `Cache-Control` when a response has it, e.g. `CDN-Cache-Control`;
//! - `RUST_LOG` (default `warn`): log filter (upstream errors are logged at `warn`).
//!
//! The proxy forwards method, path, query, headers and body as received, keeps the client's `Host`
//! (the origin sees the original host), and drops the hop-by-hop fields in both directions
//! (`Connection` and the fields it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`,
//! `Transfer-Encoding`, `Upgrade`: RFC 9110 §7.6.1). Bodies stream through in both directions. An
//! origin that cannot be reached gives `502 Bad Gateway`.
//!
//! It prints `caching proxy listening on http://ADDR -> UPSTREAM` once it accepts connections.
//! Exit codes: 2 for a bad configuration, 1 when the address cannot be bound.
//!
//! It is also the harness of the HTTP cache conformance suite: `scripts/cache-tests.sh`.

use std::{io::IsTerminal, process::ExitCode, str::FromStr, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{
        header::{self, HeaderName},
        uri::{Authority, PathAndQuery, Scheme},
        HeaderMap, StatusCode, Uri, Version,
    },
    response::{IntoResponse, Response},
    Router,
};
use cache_runtime::http::CacheLayer;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

/// The origin, and the client that talks to it.
#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: Authority,
    /// Put before every request's path (empty, or a path without the trailing `/`).
    prefix: String,
}

/// How long an idle connection to the origin is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// What the environment asks for.
struct Config {
    upstream: Uri,
    /// `UPSTREAM` as given.
    upstream_text: String,
    host: String,
    port: u16,
    backend: String,
    targeted: Option<HeaderName>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let config = match Config::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("caching_proxy: {message}");
            return ExitCode::from(2);
        }
    };

    let authority = config
        .upstream
        .authority()
        .cloned()
        .expect("checked in Config::from_env");
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let upstream = Upstream {
        client: Client::builder(TokioExecutor::new())
            // Below the keep-alive timeout of common origins (Node.js and Apache httpd: 5 s), so
            // that an idle connection is not reused just as the origin closes it.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector),
        authority,
        prefix: config.upstream.path().trim_end_matches('/').to_owned(),
    };

    let mut layer = CacheLayer::proxy()
        .backend(config.backend.as_str())
        // Proxies in front of the same origin share entries on a shared backend (Redis).
        .name(format!("caching_proxy {}", config.upstream_text));
    if let Some(field) = config.targeted.clone() {
        layer = layer.targeted(field);
    }
    let app = Router::new()
        .fallback(forward)
        .with_state(upstream)
        .layer(layer);

    let listener = match tokio::net::TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(listener) => listener,
        Err(error) => {
            let why = if error.kind() == std::io::ErrorKind::AddrInUse {
                "the port is already in use".to_owned()
            } else {
                error.to_string()
            };
            eprintln!(
                "caching_proxy: cannot listen on {}:{}: {why}",
                config.host, config.port
            );
            return ExitCode::from(1);
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address.to_string(),
        Err(_) => format!("{}:{}", config.host, config.port),
    };
    println!(
        "caching proxy listening on http://{address} -> {}",
        config.upstream_text
    );
    if let Err(error) = axum::serve(listener, app).await {
        eprintln!("caching_proxy: server error: {error}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());

        let raw = var("UPSTREAM").ok_or(
            "UPSTREAM is not set (the origin to forward to, e.g. UPSTREAM=http://127.0.0.1:8000)",
        )?;
        let upstream = Uri::from_str(&raw)
            .map_err(|error| format!("UPSTREAM={raw} is not a valid URL: {error}"))?;
        match upstream.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => {}
            Some(scheme) => {
                return Err(format!(
                    "UPSTREAM={raw}: only http:// origins are supported, not {scheme}://"
                ))
            }
            None => return Err(format!("UPSTREAM={raw} must be http://host:port")),
        }
        if upstream.host().is_none_or(str::is_empty) {
            return Err(format!("UPSTREAM={raw} has no host (use http://host:port)"));
        }
        if upstream.query().is_some() {
            return Err(format!("UPSTREAM={raw} must not have a query"));
        }

        let host = var("HOST").unwrap_or_else(|| "127.0.0.1".to_owned());
        let port = match var("PORT") {
            None => 8080,
            Some(port) => port
                .parse()
                .map_err(|_| format!("PORT={port} is not a port number (0-65535)"))?,
        };

        let backend = var("BACKEND").unwrap_or_else(|| "memory".to_owned());
        if cache_runtime::backend(&backend).is_none() {
            return Err(format!(
                "BACKEND={backend} is not a backend this library knows \
                 (memory, redis, file, tiered; redis and tiered need a valid REDIS_URL)"
            ));
        }

        let targeted = match var("TARGETED") {
            None => None,
            Some(field) => Some(
                HeaderName::from_str(&field)
                    .map_err(|_| format!("TARGETED={field} is not a header field name"))?,
            ),
        };

        Ok(Self {
            upstream,
            upstream_text: raw,
            host,
            port,
            backend,
            targeted,
        })
    }
}

/// Sends the request to the origin and its response back, both bodies streaming.
async fn forward(State(upstream): State<Upstream>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();

    let path_and_query = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(upstream.authority.clone())
        .path_and_query(format!("{}{path_and_query}", upstream.prefix))
        .build();
    parts.uri = match uri {
        Ok(uri) => uri,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("bad request target: {error}\n"),
            )
                .into_response()
        }
    };
    // The client connection speaks HTTP/1.1 to the origin whatever the client spoke to us.
    parts.version = Version::HTTP_11;
    // `Host` stays: the client's one goes to the origin (the client adds one only if absent).
    remove_hop_by_hop(&mut parts.headers);

    let response = match upstream
        .client
        .request(Request::from_parts(parts, body))
        .await
    {
        Ok(response) => response,
        Err(error) => {
            let error = error_chain(&error);
            tracing::warn!(%error, "upstream request failed");
            return (
                StatusCode::BAD_GATEWAY,
                format!("502 Bad Gateway: no response from the origin ({error})\n"),
            )
                .into_response();
        }
    };
    let (mut parts, body) = response.into_parts();
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// Removes the fields that concern one connection only (RFC 9110 §7.6.1).
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_str(token.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// An error and its sources on one line (the client's own message is only "client error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
