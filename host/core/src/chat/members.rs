//! Who may be in a conversation: its members, a Redis set per conversation
//! (`chat_members:{id}`, see [`ConversationKeys`](super::ConversationKeys)).
//!
//! Only keys bound to a user are held to it. The service's own keys (not
//! bound to a user) act for many users, so they open any conversation and
//! decide its members. A user who opens a conversation that does not exist
//! yet becomes its first member; after that only members get in, and a
//! member may let others in. Owns the members set; knows nothing of HTTP or
//! keys.

use redis::RedisResult;

use super::{ConversationId, Conversations};

/// The longest member list one call returns.
pub const MAX_LISTED_MEMBERS: usize = 1_000;

impl Conversations {
    /// Whether `user` may be in the conversation, claiming it for them when
    /// it does not exist yet.
    pub async fn admit(&self, conversation: &ConversationId, user: &str) -> RedisResult<bool> {
        let keys = self.keys(conversation);
        let admitted: i64 = self
            .admit
            .key(keys.members)
            .key(keys.stream)
            .arg(user)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(admitted == 1)
    }

    /// Whether `user` is a member now (no claiming).
    pub async fn is_member(&self, conversation: &ConversationId, user: &str) -> RedisResult<bool> {
        redis::cmd("SISMEMBER")
            .arg(self.keys(conversation).members)
            .arg(user)
            .query_async(&mut self.redis.clone())
            .await
    }

    /// Lets `user` in; false when they already were.
    pub async fn add_member(&self, conversation: &ConversationId, user: &str) -> RedisResult<bool> {
        let added: i64 = redis::cmd("SADD")
            .arg(self.keys(conversation).members)
            .arg(user)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(added == 1)
    }

    /// Takes `user` out; false when they were not in.
    pub async fn remove_member(
        &self,
        conversation: &ConversationId,
        user: &str,
    ) -> RedisResult<bool> {
        let removed: i64 = redis::cmd("SREM")
            .arg(self.keys(conversation).members)
            .arg(user)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(removed == 1)
    }

    /// The members, sorted, at most [`MAX_LISTED_MEMBERS`].
    pub async fn members(&self, conversation: &ConversationId) -> RedisResult<Vec<String>> {
        let mut members: Vec<String> = redis::cmd("SRANDMEMBER")
            .arg(self.keys(conversation).members)
            .arg(MAX_LISTED_MEMBERS)
            .query_async(&mut self.redis.clone())
            .await?;
        members.sort();
        Ok(members)
    }
}
