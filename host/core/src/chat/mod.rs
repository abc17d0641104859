//! Conversations (design B): many clients, on any replica, in one chat.
//!
//! A conversation is a capped Redis stream (`chat_stream:{id}`, see
//! [`ConversationKeys`] for its names on a cluster), the source
//! of truth and of order; every frame appended to it is published in the same
//! Lua step, with its stream id, on the Pub/Sub channel `chat:{id}`. Each
//! instance holds one Pub/Sub connection ([`fanout`]) subscribed to the
//! conversations its clients are in, and each client follows from its last id
//! ([`follow`]): history from the stream, then live copies from Pub/Sub,
//! deduplicated and gap-filled by stream id. A user message queues a bot job
//! whose events are relayed into the conversation by whichever instance holds
//! the job's relay lease ([`relay`]). Keys bound to a user get into a
//! conversation only as its members ([`members`]).
//!
//! Owns the conversation keys, frames and scripts; knows nothing of HTTP, and
//! copies a bot job's event data without reading it.

pub mod fanout;
pub mod follow;
mod keys;
pub mod members;
pub mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::connection::RedisConnection;
use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use fanout::Fanout;
pub use follow::ConversationFollower;
pub use keys::ConversationKeys;

/// `[conversations]` in the config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationsConfig {
    /// Frames a conversation's stream keeps (approximately: `MAXLEN ~`);
    /// a client resuming from an older id gets what is left.
    pub max_entries: usize,
    /// The queue a user message's bot job goes to; empty: no bot.
    pub bot_queue: String,
    /// How long a relay lease lasts unless renewed: after an instance dies,
    /// another takes over its bot answers within about this long.
    pub relay_lease_ms: u64,
    /// Frames buffered per conversation on an instance for its clients; a
    /// client further behind catches up from the stream instead.
    pub buffer_frames: usize,
    /// Conversation sockets one instance serves at once.
    pub max_clients: usize,
}

impl Default for ConversationsConfig {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            bot_queue: "chat".into(),
            relay_lease_ms: 3_000,
            buffer_frames: 256,
            max_clients: 10_000,
        }
    }
}

impl ConversationsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_entries == 0 || self.buffer_frames == 0 || self.max_clients == 0 {
            anyhow::bail!(
                "conversations.max_entries, buffer_frames and max_clients must be above 0"
            );
        }
        if !(300..=600_000).contains(&self.relay_lease_ms) {
            anyhow::bail!("conversations.relay_lease_ms must be 300 to 600000");
        }
        Ok(())
    }
}

/// A conversation id as the API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConversationId(String);

/// The longest conversation id.
pub const MAX_CONVERSATION_ID: usize = 128;

impl ConversationId {
    /// 1 to 128 of `A-Z a-z 0-9 _ - . :`, or None.
    pub fn parse(id: &str) -> Option<Self> {
        let valid = (1..=MAX_CONVERSATION_ID).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        valid.then(|| Self(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Design B's Pub/Sub channel.
    pub fn channel(&self) -> String {
        format!("chat:{}", self.0)
    }
}

/// One frame of a conversation as clients get it: a JSON object whose `id`
/// is its stream id.
#[derive(Clone, Debug)]
pub struct Frame {
    pub id: crate::hub::Position,
    pub json: Arc<str>,
}

impl Frame {
    /// A stored frame body (without `id`) under its stream id.
    fn stored(id: &str, body: &str) -> Option<Self> {
        let position = crate::hub::Position::parse(id)?;
        let rest = body.strip_prefix('{')?;
        Some(Self {
            id: position,
            json: format!("{{\"id\":\"{id}\",{rest}").into(),
        })
    }

    /// A frame as published (with its `id`).
    fn published(json: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Head<'a> {
            id: &'a str,
        }
        let head: Head = serde_json::from_str(json).ok()?;
        Some(Self {
            id: crate::hub::Position::parse(head.id)?,
            json: json.into(),
        })
    }

    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }
}

/// The conversations of this instance; cheap to clone.
#[derive(Clone)]
pub struct Conversations {
    redis: RedisConnection,
    config: ConversationsConfig,
    append: Arc<Script>,
    admit: Arc<Script>,
    pub fanout: Fanout,
    clients: Arc<AtomicUsize>,
}

impl Conversations {
    /// Where `conversation` lives in this Redis.
    pub fn keys(&self, conversation: &ConversationId) -> ConversationKeys {
        ConversationKeys::new(conversation, self.redis.is_cluster())
    }
}

/// Figures of this instance's conversations, for health.
#[derive(Clone, Copy, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConversationStats {
    /// Conversation sockets open here.
    pub clients: usize,
    /// Conversations those clients are in (Pub/Sub channels subscribed).
    pub conversations: usize,
}

/// A conversation socket's place under `max_clients`, given back on drop.
pub struct Seat(Arc<AtomicUsize>);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Conversations {
    pub fn new(redis: RedisConnection, config: ConversationsConfig) -> Self {
        let fanout = Fanout::new(config.buffer_frames);
        Self {
            redis,
            config,
            append: Arc::new(Script::new(include_str!("append.lua"))),
            admit: Arc::new(Script::new(include_str!("admit.lua"))),
            fanout,
            clients: Arc::default(),
        }
    }

    /// A seat for one more socket, unless the instance serves `max_clients`.
    pub fn seat(&self) -> Option<Seat> {
        let max = self.config.max_clients;
        self.clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Seat(self.clients.clone()))
    }

    pub fn stats(&self) -> ConversationStats {
        ConversationStats {
            clients: self.clients.load(Ordering::SeqCst),
            conversations: self.fanout.conversations(),
        }
    }

    pub fn config(&self) -> &ConversationsConfig {
        &self.config
    }

    pub fn connection(&self) -> RedisConnection {
        self.redis.clone()
    }

    /// Stores `body` (a JSON object; its `id` is the stream's) in the
    /// conversation and publishes it; returns its id.
    pub async fn append(&self, conversation: &ConversationId, body: &Value) -> RedisResult<String> {
        self.append
            .key(self.keys(conversation).stream)
            .arg(body.to_string())
            .arg(self.config.max_entries)
            .arg(conversation.channel())
            .invoke_async(&mut self.redis.clone())
            .await
    }

    /// Up to `limit` frames after `after` (a stream id, `0` for the start).
    pub async fn history(
        &self,
        conversation: &ConversationId,
        after: crate::hub::Position,
        limit: usize,
    ) -> RedisResult<Vec<Frame>> {
        read_after(
            &mut self.redis.clone(),
            &self.keys(conversation).stream,
            after,
            limit,
        )
        .await
    }

    /// Follows the conversation from after `after`: what was missed, then
    /// live frames.
    pub fn follow(
        &self,
        conversation: ConversationId,
        after: crate::hub::Position,
    ) -> ConversationFollower {
        ConversationFollower::new(self, conversation, after)
    }
}

/// Frames after `after`, oldest first, at most `limit`.
async fn read_after(
    redis: &mut RedisConnection,
    stream: &str,
    after: crate::hub::Position,
    limit: usize,
) -> RedisResult<Vec<Frame>> {
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(limit)
        .query_async(redis)
        .await?;
    Ok(reply
        .ids
        .iter()
        .filter_map(|entry| {
            let body: String = entry.get("frame")?;
            Frame::stored(&entry.id, &body)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_their_stream_id_first() {
        let frame = Frame::stored("17-2", r#"{"type":"message","text":"hi"}"#).unwrap();
        assert_eq!(
            &*frame.json,
            r#"{"id":"17-2","type":"message","text":"hi"}"#
        );
        let again = Frame::published(&frame.json).unwrap();
        assert_eq!(again.id, crate::hub::Position(17, 2));
    }

    #[test]
    fn conversation_ids_are_plain() {
        assert!(ConversationId::parse("room-1:a.b_c").is_some());
        assert!(ConversationId::parse("").is_none());
        assert!(ConversationId::parse("a b").is_none());
        assert!(ConversationId::parse(&"x".repeat(129)).is_none());
    }
}
