//! Which jobs a queue holds right now in an unfinished state, for the
//! console's job lists: waiting ones (stream entries no worker has claimed),
//! active ones (claimed, not yet acknowledged) and delayed ones (waiting for
//! their retry time). Read-only: it never claims, moves or acknowledges.
//! Entries may name jobs that have since moved on; callers check each job's
//! record.

use redis::Value;

use super::{GROUP, JobState, Queue, QueueKeys};

impl Queue {
    /// Up to `limit` job ids in `state` (waiting, active or delayed), oldest
    /// first, higher priority classes first; any other state lists nothing.
    pub async fn unfinished(
        &self,
        queue: &QueueKeys,
        state: JobState,
        limit: usize,
    ) -> redis::RedisResult<Vec<String>> {
        let mut redis = self.redis.clone();
        let mut ids = Vec::new();
        match state {
            JobState::Delayed => {
                ids = redis::cmd("ZRANGE")
                    .arg(&queue.delayed)
                    .arg(0)
                    .arg(limit.saturating_sub(1))
                    .query_async(&mut redis)
                    .await?;
            }
            JobState::Waiting | JobState::Active => {
                // Highest class first, as workers claim them.
                for stream in &queue.streams {
                    if ids.len() >= limit {
                        break;
                    }
                    let wanted = limit - ids.len();
                    let entries = if state == JobState::Waiting {
                        unclaimed(&mut redis, stream, wanted).await?
                    } else {
                        pending(&mut redis, stream, wanted).await?
                    };
                    ids.extend(entries);
                }
            }
            _ => {}
        }
        Ok(ids)
    }
}

/// Entries after the group's last delivered one: not yet claimed.
async fn unclaimed(
    redis: &mut crate::connection::RedisConnection,
    stream: &str,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await
        .unwrap_or(Value::Nil);
    let last = group_field(&groups, "last-delivered-id").unwrap_or_else(|| "0-0".into());
    let entries: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({last}"))
        .arg("+")
        .arg("COUNT")
        .arg(limit)
        .query_async(redis)
        .await?;
    Ok(job_ids(&entries))
}

/// Entries claimed and not yet acknowledged: running.
async fn pending(
    redis: &mut crate::connection::RedisConnection,
    stream: &str,
    limit: usize,
) -> redis::RedisResult<Vec<String>> {
    let pending: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(limit)
        .query_async(redis)
        .await?;
    let Value::Array(rows) = pending else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    for row in rows {
        let Value::Array(fields) = row else { continue };
        let Some(entry) = fields.first().and_then(text) else {
            continue;
        };
        let entries: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(&entry)
            .arg(&entry)
            .query_async(redis)
            .await?;
        ids.extend(job_ids(&entries));
    }
    Ok(ids)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// The `job` field of each XRANGE entry.
fn job_ids(entries: &Value) -> Vec<String> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| match entry {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Array(fields)) => fields
                    .chunks(2)
                    .find(|pair| pair.first().and_then(text).as_deref() == Some("job"))
                    .and_then(|pair| pair.get(1).and_then(text)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// A field of this queue's consumer group in an XINFO GROUPS reply (RESP2
/// flat pairs or RESP3 maps).
fn group_field(groups: &Value, name: &str) -> Option<String> {
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.iter().find_map(|group| {
        let pairs: Vec<(String, &Value)> = match group {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|pair| Some((text(pair.first()?)?, pair.get(1)?)))
                .collect(),
            Value::Map(map) => map
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, v)))
                .collect(),
            _ => return None,
        };
        let is_ours = pairs
            .iter()
            .any(|(key, value)| key == "name" && text(value).as_deref() == Some(GROUP));
        if !is_ours {
            return None;
        }
        pairs
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| text(value))
    })
}
