//! Where a conversation lives in Redis. On one server: `chat_stream:{id}`
//! (the conversation), `chat_members:{id}`, its bot answers' relay leases
//! `chat:relay_lease:{job}` and relay cursors in the hash
//! `chat:relay_cursors`. On a Redis Cluster each of them carries the
//! conversation's hash tag (`chat_stream:{<id>}` with literal braces,
//! `chat:relay_lease:{<id>}:<job>`, `chat:relay_cursors:{<id>}`): a relay
//! step checks the lease and the cursor and appends to the stream in one
//! script, so they must share a slot, and conversations spread over the
//! masters. The relays' registry `chat:relays` (job -> conversation) is one
//! key in both layouts: no script touches it with another. Owns the names
//! only; reads and writes nothing.

use super::ConversationId;

/// The keys of one conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConversationKeys {
    /// The conversation's frames (a capped stream).
    pub stream: String,
    /// Who may be in it (a set of user ids).
    pub members: String,
    /// Where each of its bot answers' relays stands (job -> stream id).
    pub cursors: String,
    lease_prefix: String,
}

/// The relays' registry: job -> conversation, swept by every instance.
pub const RELAYS: &str = "chat:relays";

impl ConversationKeys {
    pub fn new(conversation: &ConversationId, cluster: bool) -> Self {
        let id = conversation.as_str();
        if cluster {
            Self {
                stream: format!("chat_stream:{{{id}}}"),
                members: format!("chat_members:{{{id}}}"),
                cursors: format!("chat:relay_cursors:{{{id}}}"),
                lease_prefix: format!("chat:relay_lease:{{{id}}}:"),
            }
        } else {
            Self {
                stream: format!("chat_stream:{id}"),
                members: format!("chat_members:{id}"),
                cursors: "chat:relay_cursors".to_owned(),
                lease_prefix: "chat:relay_lease:".to_owned(),
            }
        }
    }

    /// The lease of the relay of `job`'s answer into this conversation.
    pub fn lease(&self, job: &str) -> String {
        format!("{}{job}", self.lease_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_server_keeps_its_names() {
        let keys = ConversationKeys::new(&ConversationId::parse("room-1").unwrap(), false);
        assert_eq!(keys.stream, "chat_stream:room-1");
        assert_eq!(keys.members, "chat_members:room-1");
        assert_eq!(keys.cursors, "chat:relay_cursors");
        assert_eq!(keys.lease("j1"), "chat:relay_lease:j1");
    }

    #[test]
    fn a_cluster_puts_a_conversations_keys_in_its_own_slot() {
        let keys = ConversationKeys::new(&ConversationId::parse("room-1").unwrap(), true);
        for key in [
            &keys.stream,
            &keys.members,
            &keys.cursors,
            &keys.lease("j1"),
        ] {
            assert!(key.contains("{room-1}"), "{key}");
        }
    }
}
