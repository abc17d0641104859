//! Sessions: create, read, delete (with every message), list a session's
//! messages in order, and the cleanup of old messages that keeps each
//! session's index consistent with the messages that still exist.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Store, StoreError, new_id};
use crate::queue::now_ms;

/// A session's `status`: open until closed (design D's `DELETE`).
const OPEN: &str = "open";
const CLOSED: &str = "closed";

/// Sessions the cleanup visits per page of the sessions index.
const CLEANUP_PAGE: isize = 200;

#[derive(Clone, Copy, Debug, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CleanupReport {
    pub sessions_visited: u64,
    pub messages_deleted: u64,
    pub sessions_deleted: u64,
}

impl Store {
    /// Creates a session (`metadata`: any JSON the client wants kept; `owner`:
    /// the user a tenant-bound key creates it for; `user_id`: whose it is, as
    /// design D's client says); returns its id.
    pub async fn create_session(
        &self,
        metadata: &Value,
        owner: Option<&str>,
        user_id: Option<&str>,
    ) -> Result<String, StoreError> {
        let id = new_id();
        let now = now_ms();
        let ttl = self.config.session_ttl_secs.max(1) as i64;
        let mut fields = vec![
            ("id", id.clone()),
            ("created_at", now.to_string()),
            ("updated_at", now.to_string()),
            ("metadata", metadata.to_string()),
        ];
        if let Some(owner) = owner {
            fields.push(("owner", owner.to_owned()));
        }
        if let Some(user_id) = user_id {
            fields.push(("user_id", user_id.to_owned()));
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(self.keys.session(&id), &fields)
            .ignore()
            .expire(self.keys.session(&id), ttl)
            .ignore()
            .zadd(self.keys.sessions_index(), &id, now)
            .ignore();
        pipe.query_async::<()>(&mut self.connection()).await?;
        Ok(id)
    }

    /// The user a session belongs to (`Some("")` for one created without an
    /// owner), or `None` when there is no such session.
    pub async fn session_owner(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        let (id, owner): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.session(session_id))
            .arg("id")
            .arg("owner")
            .query_async(&mut self.connection())
            .await?;
        Ok(id.map(|_| owner.unwrap_or_default()))
    }

    pub async fn session(&self, session_id: &str) -> Result<Option<Value>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.hgetall(self.keys.session(session_id))
            .zcard(self.keys.session_index(session_id));
        let (fields, count): (HashMap<String, String>, u64) =
            pipe.query_async(&mut self.connection()).await?;
        let Some(id) = fields.get("id") else {
            return Ok(None);
        };
        let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
        Ok(Some(json!({
            "id": id,
            "createdAt": number("created_at"),
            "updatedAt": number("updated_at"),
            "metadata": fields.get("metadata").and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(Value::Null),
            "messageCount": count,
            "userId": fields.get("user_id"),
            "status": fields.get("status").map_or(OPEN, String::as_str),
            "closedAt": number("closed_at"),
        })))
    }

    /// Closes a session (design D's `DELETE`): its messages stay readable
    /// and it takes no new ones. `false` when there is no such session.
    pub async fn close_session(&self, session_id: &str) -> Result<bool, StoreError> {
        // Only an existing session: a bare HSET would leave a fieldless,
        // never-expiring hash behind a session deleted meanwhile.
        let closed: i64 = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
             redis.call('HSET', KEYS[1], 'status', ARGV[1], 'closed_at', ARGV[2]) return 1",
        )
        .key(self.keys.session(session_id))
        .arg(CLOSED)
        .arg(now_ms())
        .invoke_async(&mut self.connection())
        .await?;
        Ok(closed == 1)
    }

    /// Whether a session was closed (a missing one is not).
    pub async fn is_closed(&self, session_id: &str) -> Result<bool, StoreError> {
        let status: Option<String> = self
            .connection()
            .hget(self.keys.session(session_id), "status")
            .await?;
        Ok(status.as_deref() == Some(CLOSED))
    }

    /// Deletes one session's messages created more than `older_than_ms` ago
    /// (design D's `cleanup_old_messages(session_id, keep_days)`), like the
    /// global cleanup does for every session, but keeps the session even
    /// when it is left empty; returns how many went.
    pub async fn cleanup_session(
        &self,
        session_id: &str,
        older_than_ms: u64,
    ) -> Result<u64, StoreError> {
        let cutoff = now_ms().saturating_sub(older_than_ms);
        let (deleted, _) = self.delete_messages(session_id, "messages", cutoff).await?;
        Ok(deleted)
    }

    /// Deletes a session and all its messages; returns how many messages went,
    /// or `None` when there was no such session.
    pub async fn delete_session(&self, session_id: &str) -> Result<Option<u64>, StoreError> {
        let exists: bool = self
            .connection()
            .exists(self.keys.session(session_id))
            .await?;
        if !exists {
            return Ok(None);
        }
        let (deleted, _) = self.delete_messages(session_id, "all", now_ms()).await?;
        Ok(Some(deleted))
    }

    /// A page of a session's messages, oldest first (snapshots without the
    /// separately stored content), and the session's message count.
    pub async fn list_messages(
        &self,
        session_id: &str,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Value>, u64), StoreError> {
        let index = self.keys.session_index(session_id);
        let stop = (offset + limit).saturating_sub(1) as isize;
        let mut pipe = redis::pipe();
        pipe.zrange(&index, offset as isize, stop).zcard(&index);
        let (ids, total): (Vec<String>, u64) = pipe.query_async(&mut self.connection()).await?;
        let mut messages = Vec::with_capacity(ids.len());
        for id in ids {
            // An expired message may still be indexed until the next cleanup.
            if let Some(snapshot) = self.load(&id, false).await? {
                messages.push(snapshot);
            }
        }
        Ok((messages, total))
    }

    /// Deletes messages created before `older_than_ms` ago in every session,
    /// drops index entries of messages that expired, and removes sessions
    /// left empty and idle since before the cutoff.
    pub async fn cleanup(&self, older_than_ms: u64) -> Result<CleanupReport, StoreError> {
        let cutoff = now_ms().saturating_sub(older_than_ms);
        let mut report = CleanupReport::default();
        let mut start = 0isize;
        loop {
            let sessions: Vec<String> = self
                .connection()
                .zrange(self.keys.sessions_index(), start, start + CLEANUP_PAGE - 1)
                .await?;
            if sessions.is_empty() {
                break;
            }
            let mut removed = 0;
            for session in &sessions {
                let (messages, session_deleted) =
                    self.delete_messages(session, "older", cutoff).await?;
                report.sessions_visited += 1;
                report.messages_deleted += messages;
                if session_deleted {
                    report.sessions_deleted += 1;
                    removed += 1;
                }
            }
            // Deleted sessions left the index, shifting the rest forward.
            start += sessions.len() as isize - removed;
        }
        if report.messages_deleted > 0 || report.sessions_deleted > 0 {
            tracing::info!(?report, "cleanup deleted old messages");
        }
        Ok(report)
    }

    async fn delete_messages(
        &self,
        session_id: &str,
        mode: &str,
        cutoff: u64,
    ) -> Result<(u64, bool), StoreError> {
        let mut invocation = self.delete.prepare_invoke();
        invocation
            .key(self.keys.session_index(session_id))
            .key(self.keys.session(session_id))
            .key(self.keys.sessions_index())
            .arg(mode)
            .arg(cutoff)
            .arg(self.keys.message_prefix())
            .arg(self.keys.stream_prefix(session_id))
            .arg(self.keys.content_prefix())
            .arg(session_id);
        let (deleted, session_deleted): (u64, u64) =
            invocation.invoke_async(&mut self.connection()).await?;
        Ok((deleted, session_deleted == 1))
    }
}

/// Runs [`Store::cleanup`] every `cleanup_interval_secs` until `shutdown`
/// (never, when `cleanup_after_days` is 0). Every instance may run it: the
/// deletions are idempotent scripts, so overlapping runs do no harm.
pub async fn periodic_cleanup(store: Store, shutdown: tokio_util::sync::CancellationToken) {
    let days = store.config.cleanup_after_days;
    if days == 0 {
        return;
    }
    let interval = std::time::Duration::from_secs(store.config.cleanup_interval_secs.max(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(error) = store.cleanup(days.saturating_mul(24 * 3600 * 1000)).await {
            tracing::warn!(%error, "periodic cleanup of old messages failed; will try again");
        }
    }
}
