//! One client following a conversation from its last id: the frames it
//! missed, read from the stream, then live frames from the instance's
//! [`Fanout`](super::Fanout), each exactly once and in stream order.
//!
//! A live frame at or before the last one delivered is a copy and skipped;
//! whenever live delivery may have lost frames (a resubscription, or this
//! client's buffer overflowed) the stream is read again from the last id.
//! Owns nothing but its position; never writes.

use std::collections::VecDeque;

use crate::connection::RedisConnection;
use redis::RedisResult;
use tokio::sync::broadcast::error::RecvError;

use super::fanout::{Membership, Signal};
use super::{ConversationId, Conversations, Frame, read_after};
use crate::hub::Position;

/// Frames read from the stream at a time.
const PAGE: usize = 200;

pub struct ConversationFollower {
    /// The conversation's stream.
    stream: String,
    membership: Membership,
    redis: RedisConnection,
    last: Position,
    /// The stream has frames this client may not have had.
    catch_up: bool,
    pending: VecDeque<Frame>,
}

impl ConversationFollower {
    pub(super) fn new(
        conversations: &Conversations,
        conversation: ConversationId,
        after: Position,
    ) -> Self {
        // Joined before reading, so nothing published after the read is lost.
        let membership = conversations.fanout.join(&conversation);
        Self {
            stream: conversations.keys(&conversation).stream,
            membership,
            redis: conversations.connection(),
            last: after,
            catch_up: true,
            pending: VecDeque::new(),
        }
    }

    /// The id of the last frame delivered (or the resume id).
    pub fn last_id(&self) -> Position {
        self.last
    }

    /// The next frame; an error when the stream could not be read (the
    /// client resumes from [`Self::last_id`]). Cancel-safe.
    pub async fn next(&mut self) -> RedisResult<Frame> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                if frame.id > self.last {
                    self.last = frame.id;
                    return Ok(frame);
                }
                continue;
            }
            if self.catch_up {
                let page = read_after(&mut self.redis, &self.stream, self.last, PAGE).await?;
                self.catch_up = page.len() == PAGE;
                self.pending.extend(page);
                continue;
            }
            match self.membership.signals.recv().await {
                Ok(Signal::Frame(frame)) => self.pending.push_back(frame),
                Ok(Signal::Resync) | Err(RecvError::Lagged(_)) => self.catch_up = true,
                // The fan-out never closes a room with members.
                Err(RecvError::Closed) => self.catch_up = true,
            }
        }
    }
}
