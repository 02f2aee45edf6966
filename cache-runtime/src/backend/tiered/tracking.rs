//! Invalidations from Redis itself: `CLIENT TRACKING ON BCAST` on a dedicated RESP3 connection to a
//! single node, for the prefixes of entries, group generations and key tombstones.
//!
//! Redis then reports every write to those keys, by any client (ours, another library, `redis-cli`),
//! and every expiry, eviction and flush, as an `invalidate` push. Tracking state lives in the
//! connection: a new connection starts untracked, so every session enables it, then empties the
//! local tier and makes it usable; the session ends (local tier unusable and emptied) when the
//! connection reports itself closed or stops answering `PING`.

use std::{convert::Infallible, sync::Arc};

use redis::{PushInfo, PushKind, Value};

use super::{
    feed::{Feed, FeedEnded, Session},
    pubsub, CONNECT_TIMEOUT, HEARTBEAT, PING_TIMEOUT,
};
use crate::backend::redis::tracked;

/// What the server made of a session.
enum Outcome {
    /// It went live, then its connection ended.
    Ended,
    /// Connecting or enabling tracking failed (the server may be down): try again.
    Failed,
    /// The server does not do RESP3 tracking (older than 6, or a proxy): use pub/sub instead.
    Refused,
}

/// Where tracking goes, and where pub/sub goes if the server refuses tracking.
pub(crate) struct Tracking {
    pub(crate) client: redis::Client,
    pub(crate) prefix: String,
    pub(crate) prefixes: [String; 3],
    pub(crate) fallback: (Vec<redis::Client>, String),
}

/// Keeps a tracking session until the backend is dropped (or runs pub/sub if tracking is refused).
pub(crate) async fn run(tracking: Tracking, feed: Feed) {
    let ended = FeedEnded(feed.clone());
    let mut failures: u32 = 0;
    while feed.wanted() {
        match session(&tracking, &feed).await {
            Outcome::Ended => failures = 0,
            Outcome::Failed => {
                failures = failures.saturating_add(1);
                tokio::time::sleep(pubsub::backoff(failures, 1)).await;
            }
            Outcome::Refused => {
                tracing::warn!(
                    "Redis refused CLIENT TRACKING; the tiered cache falls back to pub/sub"
                );
                drop(ended);
                let (clients, channel) = tracking.fallback;
                return pubsub::run(clients, channel, feed).await;
            }
        }
    }
}

async fn session(tracking: &Tracking, feed: &Feed) -> Outcome {
    let session = feed.new_session();
    let pushes = {
        let (feed, session) = (feed.clone(), Arc::clone(&session));
        let prefix = tracking.prefix.clone();
        move |push: PushInfo| -> Result<(), Infallible> {
            on_push(&feed, &session, &prefix, push);
            Ok(())
        }
    };
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(PING_TIMEOUT))
        .set_push_sender(pushes);
    let connected = tracking
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await;
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(error) => return failed(&error),
    };
    let mut enable = redis::cmd("CLIENT");
    enable.arg("TRACKING").arg("ON").arg("BCAST");
    for prefix in &tracking.prefixes {
        enable.arg("PREFIX").arg(prefix);
    }
    if let Err(error) = enable.query_async::<()>(&mut conn).await {
        return failed(&error);
    }
    feed.up(&session);
    tracing::debug!("tiered cache tracking its keys in Redis");
    while feed.wanted() {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            () = session.ended() => break, // the connection reported its end
        }
        if redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .is_err()
        {
            break;
        }
    }
    feed.down(&session);
    if feed.wanted() {
        tracing::warn!(
            "tiered cache lost its tracking connection; local tier off until it is back"
        );
    }
    Outcome::Ended
}

/// A refusal by the server rather than a connection problem: an `ERR` reply to `HELLO 3` or
/// `CLIENT TRACKING` (an old or restricted server), a `NOPERM` one (an ACL without `CLIENT`), or
/// a server the client found unable to speak RESP3.
fn failed(error: &redis::RedisError) -> Outcome {
    let refused = matches!(error.code(), Some("ERR" | "NOPERM"))
        || error.kind() == redis::ErrorKind::RESP3NotSupported;
    if refused {
        Outcome::Refused
    } else {
        Outcome::Failed
    }
}

/// Applies a push from the tracking connection; runs on the connection's driver, in order.
fn on_push(feed: &Feed, session: &Session, prefix: &str, push: PushInfo) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                for key in keys {
                    match key {
                        Value::BulkString(bytes) => {
                            // Our keys are UTF-8: any other key is not one of ours.
                            if let Some(invalidation) = std::str::from_utf8(bytes)
                                .ok()
                                .and_then(|key| tracked(prefix, key))
                            {
                                feed.apply(Some(invalidation));
                            }
                        }
                        _ => feed.apply(None),
                    }
                }
            }
            // A flush (Nil), or a shape this code does not know: everything may have changed.
            _ => feed.apply(None),
        },
        PushKind::Disconnection => feed.down(session),
        _ => {}
    }
}
