//! A shard's reader on Redis Cluster: every `[hub] cluster_poll_ms`, or at
//! once when a new key joins, one non-blocking `XREAD` per hash slot among the
//! shard's watched keys, all sent together on the instance's shared cluster
//! connection (which routes each to its slot's master and follows failovers
//! and slot moves). Entries go to the watchers exactly as the single-server
//! reader hands them (`reader::fan_out`). Must not block on the shared
//! connection, nor put keys of two slots in one command.
//!
//! Why polling and not blocking readers per slot: one `XREAD` cannot span
//! slots (CROSSSLOT), so blocking would take one dedicated connection per
//! watched slot — and a session's stream has a slot of its own, so that is
//! one connection per watched session, up to 16384, each to be reconnected
//! after a failover. Polling costs no connection at all and a command count
//! the operator sets:
//! - connections: none beyond the shared cluster connection;
//! - commands when idle: (watched slots) / `cluster_poll_ms` per second, e.g.
//!   100 keys in 10 slots at 100 ms: 100 `XREAD`s a second, each answered
//!   from memory; no key watched, no command;
//! - latency: an entry waits up to one interval (half of it on average),
//!   except that a key with more than a batch pending is read again at once,
//!   and a new key is read at once.
//!
//! A slot whose read fails or takes longer than [`DEADLINE`] (its node went
//! away: the cluster connection retries through a failover for longer than
//! a watcher should wait) lets go of its watchers, who resume from their own
//! last ids; the other slots go on (that round's entries of theirs wait for
//! it, up to the deadline). Slots on a node that answers MOVED or ASK are
//! followed by the cluster connection and lose nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::cluster_routing::Slot;
use redis::streams::StreamReadReply;

use super::reader::{BATCH, fail_keys, fan_out};
use super::{Inner, lock};
use crate::connection::RedisConnection;

/// How long one slot's read may take before its watchers are let go.
const DEADLINE: Duration = Duration::from_secs(2);

pub(super) async fn poll(inner: &Arc<Inner>, index: usize) {
    let shard = &inner.shards[index];
    let interval = Duration::from_millis(inner.config.cluster_poll_ms);
    loop {
        shard.wake_pending.store(false, Ordering::SeqCst);
        let groups = slot_groups(
            lock(&shard.topics)
                .iter()
                .map(|(key, topic)| (key.clone(), topic.cursor.clone())),
        );
        if groups.is_empty() {
            shard.wake.notified().await;
            continue;
        }
        let reads = groups.into_iter().map(|cursors| {
            let mut connection = inner.shared.clone();
            async move {
                let read = tokio::time::timeout(DEADLINE, read_slot(&mut connection, &cursors));
                (read.await, cursors)
            }
        });
        let mut backlog = false;
        for (read, cursors) in futures_util::future::join_all(reads).await {
            match read {
                Ok(Ok(reply)) => {
                    let requested: HashMap<&str, &str> = cursors
                        .iter()
                        .map(|(key, cursor)| (key.as_str(), cursor.as_str()))
                        .collect();
                    for stream in reply.keys {
                        if let Some(cursor) = requested.get(stream.key.as_str()) {
                            backlog |= stream.ids.len() >= BATCH;
                            fan_out(inner, index, &stream.key, cursor, stream.ids);
                        }
                    }
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, shard = index, "event hub cannot read a cluster slot; its watchers were told to resume");
                    fail_keys(inner, index, &cursors);
                }
                Err(_) => {
                    tracing::warn!(
                        shard = index,
                        "event hub's read of a cluster slot timed out; its watchers were told to resume"
                    );
                    fail_keys(inner, index, &cursors);
                }
            }
        }
        if !backlog {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shard.wake.notified() => {}
            }
        }
    }
}

/// Watched keys with their cursors, one group per hash slot.
fn slot_groups(cursors: impl Iterator<Item = (String, String)>) -> Vec<Vec<(String, String)>> {
    let mut groups: HashMap<Slot, Vec<(String, String)>> = HashMap::new();
    for (key, cursor) in cursors {
        groups
            .entry(Slot::for_key(&key))
            .or_default()
            .push((key, cursor));
    }
    groups.into_values().collect()
}

/// One non-blocking `XREAD` over keys that share a slot.
async fn read_slot(
    connection: &mut RedisConnection,
    cursors: &[(String, String)],
) -> redis::RedisResult<StreamReadReply> {
    let mut command = redis::cmd("XREAD");
    command.arg("COUNT").arg(BATCH).arg("STREAMS");
    for (key, _) in cursors {
        command.arg(key);
    }
    for (_, cursor) in cursors {
        command.arg(cursor);
    }
    let reply: Option<StreamReadReply> = command.query_async(connection).await?;
    Ok(reply.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::slot_groups;

    #[test]
    fn keys_group_by_hash_slot_and_a_hash_tag_decides_it() {
        let keys = [
            "a:{q1}:x",
            "b:{q1}:y",
            "a:{q2}:x",
            "job_events:1",
            "job_events:2",
        ];
        let mut groups: Vec<Vec<String>> =
            slot_groups(keys.iter().map(|key| ((*key).to_owned(), "0-0".to_owned())))
                .into_iter()
                .map(|group| {
                    let mut keys: Vec<String> = group.into_iter().map(|(key, _)| key).collect();
                    keys.sort();
                    keys
                })
                .collect();
        groups.sort();
        // job_events:1 and :2 have no tag: CRC16 of the whole key (slots 9487
        // and 5484, as CLUSTER KEYSLOT says) puts them apart.
        assert_eq!(
            groups,
            [
                vec!["a:{q1}:x".to_owned(), "b:{q1}:y".to_owned()],
                vec!["a:{q2}:x".to_owned()],
                vec!["job_events:1".to_owned()],
                vec!["job_events:2".to_owned()],
            ]
        );
    }
}
