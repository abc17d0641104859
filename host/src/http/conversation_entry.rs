//! Which conversation a request names, and whether its caller may enter:
//! keys not bound to a user enter any conversation; a key bound to a user
//! enters only as a member, or claims a conversation that does not exist
//! yet. Another's conversation is "not found", so ids do not leak. Shared by
//! the conversation socket and history (`chat`) and the member routes
//! (`members`); the members set itself is `spool_core::chat`'s.

use spool_core::access::Identity;
use spool_core::chat::{ConversationId, MAX_CONVERSATION_ID};

use super::AppState;
use super::error::ApiError;

pub fn conversation_id(id: &str) -> Result<ConversationId, ApiError> {
    ConversationId::parse(id).ok_or_else(|| {
        ApiError::invalid(
            "invalid_conversation_id",
            format!("a conversation id is 1 to {MAX_CONVERSATION_ID} of A-Z a-z 0-9 _ - . :"),
        )
    })
}

/// Checks the caller may be in the conversation: keys bound to a user must
/// be members, or open a conversation that does not exist yet (and so
/// become its first member).
pub async fn admit(
    state: &AppState,
    caller: &Identity,
    conversation: &ConversationId,
) -> Result<(), ApiError> {
    require(state, caller, conversation, Entry::MayClaim).await
}

/// Checks the caller is in the conversation now (without claiming it).
pub async fn check_member(
    state: &AppState,
    caller: &Identity,
    conversation: &ConversationId,
) -> Result<(), ApiError> {
    require(state, caller, conversation, Entry::MemberOnly).await
}

/// Whether a user opening a conversation nobody has yet becomes its member.
enum Entry {
    MayClaim,
    MemberOnly,
}

async fn require(
    state: &AppState,
    caller: &Identity,
    conversation: &ConversationId,
    entry: Entry,
) -> Result<(), ApiError> {
    let Some(tenant) = &caller.user else {
        return Ok(());
    };
    let conversations = &state.conversations;
    let inside = match entry {
        Entry::MayClaim => conversations.admit(conversation, &tenant.user_id).await?,
        Entry::MemberOnly => {
            conversations
                .is_member(conversation, &tenant.user_id)
                .await?
        }
    };
    if inside {
        Ok(())
    } else {
        Err(not_found(conversation))
    }
}

pub fn not_found(conversation: &ConversationId) -> ApiError {
    ApiError::not_found(
        "conversation_not_found",
        format!(
            "no conversation `{}` that this key may enter",
            conversation.as_str()
        ),
    )
}
