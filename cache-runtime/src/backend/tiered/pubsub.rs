//! Invalidations from the pub/sub channel `{prefix}invalidations`, on one node or moving round the
//! nodes of a cluster (a classic `PUBLISH` reaches subscribers on every node).
//!
//! A session connects and subscribes through one node, then applies messages until its
//! connection ends or stops answering `PING`. The next attempt goes to the next configured node at
//! once; attempts that fail back off, up to [`MAX_BACKOFF`].

use std::time::Duration;

use futures_util::StreamExt;

use super::{
    feed::{Feed, FeedEnded},
    CONNECT_TIMEOUT, HEARTBEAT, PING_TIMEOUT,
};
use crate::backend::redis::Invalidation;

/// First pause after a failed attempt; doubled after each round of failed attempts over all nodes.
const RETRY_AFTER: Duration = Duration::from_millis(250);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Keeps a subscription through one of `clients` until the backend is dropped.
pub(crate) async fn run(clients: Vec<redis::Client>, channel: String, feed: Feed) {
    let _ended = FeedEnded(feed.clone());
    if clients.is_empty() {
        return;
    }
    let mut next = 0;
    let mut failures: u32 = 0;
    while feed.wanted() {
        let client = &clients[next % clients.len()];
        next += 1;
        if session(client, &channel, &feed).await {
            failures = 0;
            continue; // it was live: straight to the next node
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff(failures, clients.len())).await;
    }
}

/// `RETRY_AFTER`, doubled for each full round of failures over `nodes`, at most `MAX_BACKOFF`.
pub(crate) fn backoff(failures: u32, nodes: usize) -> Duration {
    let rounds = (failures.saturating_sub(1) as usize / nodes.max(1)).min(8) as u32;
    (RETRY_AFTER * 2u32.pow(rounds)).min(MAX_BACKOFF)
}

/// One subscription; `true` if it went live (and has now ended).
async fn session(client: &redis::Client, channel: &str, feed: &Feed) -> bool {
    let subscribe = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(channel).await?;
        redis::RedisResult::Ok((sink, stream))
    };
    let Ok(Ok((mut sink, mut stream))) = tokio::time::timeout(CONNECT_TIMEOUT, subscribe).await
    else {
        return false;
    };
    let session = feed.new_session();
    feed.up(&session);
    tracing::debug!(channel, "tiered cache subscribed to invalidations");
    let messages = async {
        while let Some(message) = stream.next().await {
            let payload = String::from_utf8_lossy(message.get_payload_bytes());
            feed.apply(Invalidation::decode(&payload));
            if !feed.wanted() {
                return;
            }
        }
    };
    let heartbeat = async {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let pong = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
            if !matches!(pong, Ok(Ok(_))) || !feed.wanted() {
                return;
            }
        }
    };
    tokio::select! {
        () = messages => {}
        () = heartbeat => {}
    }
    feed.down(&session);
    if feed.wanted() {
        tracing::warn!(
            channel,
            "tiered cache lost its invalidation subscription; local tier off until it is back"
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_round_and_is_bounded() {
        assert_eq!(backoff(1, 3), RETRY_AFTER);
        assert_eq!(backoff(3, 3), RETRY_AFTER);
        assert_eq!(backoff(4, 3), RETRY_AFTER * 2);
        assert_eq!(backoff(2, 1), RETRY_AFTER * 2);
        assert_eq!(backoff(u32::MAX, 1), MAX_BACKOFF);
        assert_eq!(backoff(5, 0), MAX_BACKOFF.min(RETRY_AFTER * 16));
    }
}
