//! A shard's reader on a single server (a cluster's is `poller`): one
//! dedicated connection blocking in one `XREAD` over every watched key of the
//! shard plus the shard's wake stream, each key from the last id read;
//! entries go to each watcher's buffer without waiting (a full buffer drops
//! its watcher). Also the shard's waker, which adds to the wake stream, on
//! the shared connection, when a new key needs reading.
//!
//! Why a wake stream and not a short block: a blocked XREAD cannot take a new
//! key, and a short block would delay a new key's first entries (and cost a
//! round trip per interval per shard when idle). An entry in a private stream
//! ends the block at once, costs one XADD per burst of new keys, and needs
//! only stream commands (which every spool ACL user has).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamReadReply};
use tokio::sync::mpsc::error::TrySendError;

use super::{FAILED, Inner, LAGGED, lock};

/// How long one read blocks; only a failed wake-up waits this long.
const BLOCK: Duration = Duration::from_secs(5);
/// Entries read per key and call; a key with more is read on the next call.
pub(super) const BATCH: usize = 200;
/// The wake stream lives this long after its last wake-up.
const WAKE_TTL_MS: u64 = 60_000;

pub(super) async fn read(inner: &Arc<Inner>, index: usize, nodes: &crate::connection::PubSubNodes) {
    let shard = &inner.shards[index];
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)));
    let mut wake_cursor = "0-0".to_owned();
    loop {
        let mut connection = match nodes
            .next_client()
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, shard = index, "event hub cannot reach Redis; retrying");
                fail_all(inner, index);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            shard.wake_pending.store(false, Ordering::SeqCst);
            let cursors: Vec<(String, String)> = lock(&shard.topics)
                .iter()
                .map(|(key, topic)| (key.clone(), topic.cursor.clone()))
                .collect();
            match read_once(&mut connection, &shard.wake_key, &wake_cursor, &cursors).await {
                Ok(reply) => {
                    let cursors: HashMap<&str, &str> = cursors
                        .iter()
                        .map(|(key, cursor)| (key.as_str(), cursor.as_str()))
                        .collect();
                    for stream in reply.keys {
                        if stream.key == shard.wake_key {
                            if let Some(last) = stream.ids.last() {
                                wake_cursor = last.id.clone();
                            }
                        } else if let Some(requested) = cursors.get(stream.key.as_str()) {
                            fan_out(inner, index, &stream.key, requested, stream.ids);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, shard = index, "event hub lost its Redis connection; watchers were told to resume");
                    fail_all(inner, index);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

async fn read_once(
    connection: &mut MultiplexedConnection,
    wake_key: &str,
    wake_cursor: &str,
    cursors: &[(String, String)],
) -> redis::RedisResult<StreamReadReply> {
    let mut command = redis::cmd("XREAD");
    command
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(wake_key);
    for (key, _) in cursors {
        command.arg(key);
    }
    command.arg(wake_cursor);
    for (_, cursor) in cursors {
        command.arg(cursor);
    }
    let reply: Option<StreamReadReply> = command.query_async(connection).await?;
    Ok(reply.unwrap_or_default())
}

/// Hands entries read after `requested` to every watcher of `key`, unless
/// the topic moved meanwhile (it was left and started again elsewhere).
pub(super) fn fan_out(
    inner: &Inner,
    index: usize,
    key: &str,
    requested: &str,
    entries: Vec<StreamId>,
) {
    let mut topics = lock(&inner.shards[index].topics);
    let Some(topic) = topics.get_mut(key) else {
        return;
    };
    if topic.cursor != requested {
        return;
    }
    for entry in entries {
        let id = entry.id.clone();
        let entry = Arc::new(entry);
        topic
            .watchers
            .retain(|_, watcher| match watcher.sender.try_send(entry.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    watcher.fate.store(LAGGED, Ordering::SeqCst);
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            });
        topic.cursor = id;
    }
    if topic.watchers.is_empty() {
        topics.remove(key);
    }
}

/// Lets go of every watcher of the shard: its position is unknown now, and
/// each watcher resumes from its own last id.
fn fail_all(inner: &Inner, index: usize) {
    let mut topics = lock(&inner.shards[index].topics);
    for topic in topics.values() {
        for watcher in topic.watchers.values() {
            watcher.fate.store(FAILED, Ordering::SeqCst);
        }
    }
    topics.clear();
}

/// Lets go of the watchers of `keys` (with the cursors they were read from),
/// unless a topic moved meanwhile: the others of the shard go on.
pub(super) fn fail_keys(inner: &Inner, index: usize, keys: &[(String, String)]) {
    let mut topics = lock(&inner.shards[index].topics);
    for (key, requested) in keys {
        if topics
            .get(key)
            .is_some_and(|topic| &topic.cursor == requested)
            && let Some(topic) = topics.remove(key)
        {
            for watcher in topic.watchers.values() {
                watcher.fate.store(FAILED, Ordering::SeqCst);
            }
        }
    }
}

pub(super) async fn wake_on_demand(inner: &Arc<Inner>, index: usize) {
    let shard = &inner.shards[index];
    let mut redis = inner.shared.clone();
    loop {
        shard.wake.notified().await;
        let added: redis::RedisResult<()> = redis::pipe()
            .cmd("XADD")
            .arg(&shard.wake_key)
            .arg("MAXLEN")
            .arg(1)
            .arg("*")
            .arg("wake")
            .arg(1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&shard.wake_key)
            .arg(WAKE_TTL_MS)
            .ignore()
            .query_async(&mut redis)
            .await;
        if let Err(error) = added {
            tracing::debug!(%error, "event hub wake-up failed; the next read picks the key up");
        }
    }
}
