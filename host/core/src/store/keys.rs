//! The store's key names: design D's, after a prefix that is empty on one
//! server. On a Redis Cluster the prefix is the task queue's own
//! (`spool:q:{queue}:`, [`QueueKeys::sessions_prefix`]): a task's job
//! and the message it drives are written by one script, so they must share
//! a hash slot. Owns the names only; reads and writes nothing.

use crate::queue::QueueKeys;

/// Builds every key of the store (see the module docs of `store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreKeys {
    prefix: String,
}

impl StoreKeys {
    /// The store of the sessions whose tasks `task_queue` runs.
    pub fn of(task_queue: &QueueKeys) -> Self {
        Self {
            prefix: task_queue.sessions_prefix.clone(),
        }
    }

    /// A message's hash (its snapshot).
    pub fn message(&self, message_id: &str) -> String {
        format!("{}{message_id}", self.message_prefix())
    }

    /// What every message hash's name starts with.
    pub fn message_prefix(&self) -> String {
        format!("{}message:", self.prefix)
    }

    /// A message's text. A message id has no `:`, so this never names
    /// another message's hash.
    pub fn message_text(&self, message_id: &str) -> String {
        format!("{}:text", self.message(message_id))
    }

    /// A message's event stream.
    pub fn message_stream(&self, session_id: &str, message_id: &str) -> String {
        format!("{}{message_id}", self.stream_prefix(session_id))
    }

    /// What the event streams of a session's messages start with.
    pub fn stream_prefix(&self, session_id: &str) -> String {
        format!("{}stream:session:{session_id}:message:", self.prefix)
    }

    /// A session's message index (zset by creation time).
    pub fn session_index(&self, session_id: &str) -> String {
        format!("{}session:{session_id}:messages", self.prefix)
    }

    /// A session's own fields.
    pub fn session(&self, session_id: &str) -> String {
        format!("{}session:{session_id}", self.prefix)
    }

    /// A content block stored on its own.
    pub fn content(&self, content_id: &str) -> String {
        format!("{}{content_id}", self.content_prefix())
    }

    /// What every separately stored content block's key starts with.
    pub fn content_prefix(&self) -> String {
        format!("{}content:", self.prefix)
    }

    /// Every session by last activity (for the periodic cleanup).
    pub fn sessions_index(&self) -> String {
        format!("{}sessions:index", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::KeyLayout;

    #[test]
    fn one_server_keeps_design_d_names() {
        let keys = StoreKeys::of(&QueueKeys::new("documents", KeyLayout::SingleNode));
        assert_eq!(keys.message("m1"), "message:m1");
        assert_eq!(keys.message_text("m1"), "message:m1:text");
        assert_eq!(
            keys.message_stream("s1", "m1"),
            "stream:session:s1:message:m1"
        );
        assert_eq!(keys.session_index("s1"), "session:s1:messages");
        assert_eq!(keys.session("s1"), "session:s1");
        assert_eq!(keys.content("c1"), "content:c1");
        assert_eq!(keys.sessions_index(), "sessions:index");
    }

    #[test]
    fn a_cluster_puts_every_key_in_the_task_queues_slot() {
        let keys = StoreKeys::of(&QueueKeys::new("documents", KeyLayout::Cluster));
        let names = [
            keys.message("m1"),
            keys.message_text("m1"),
            keys.message_stream("s1", "m1"),
            keys.session_index("s1"),
            keys.session("s1"),
            keys.content("c1"),
            keys.sessions_index(),
        ];
        for name in names {
            assert!(name.starts_with("spool:q:{documents}:"), "{name}");
        }
        assert_eq!(keys.message("m1"), "spool:q:{documents}:message:m1");
    }
}
