//! Who is in a conversation, over HTTP: `GET /api/conversations/{id}/members`,
//! and `PUT`/`DELETE .../members/{user_id}` to let a user in or out.
//!
//! A key not bound to a user (the service acting for its users) manages any
//! conversation. A key bound to a user sees a conversation only as a member
//! (another's is "not found", so ids do not leak), may let others in, and
//! may take only itself out. The entry rule is `conversation_entry`'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde::Serialize;
use spool_core::access::Identity;
use utoipa::ToSchema;

use super::AppState;
use super::conversation_entry::{admit, check_member, conversation_id};
use super::error::{ApiError, ApiPath};

/// A conversation's members.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Members {
    conversation_id: String,
    /// User ids, sorted (at most 1,000). Empty: the conversation is open to
    /// every key not bound to a user, and is claimed by the first user who
    /// opens it while it has no frames.
    members: Vec<String>,
}

/// The outcome of letting a user in or out.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberChange {
    conversation_id: String,
    user_id: String,
    /// Whether this call changed anything (false: already so).
    changed: bool,
}

/// The users allowed in a conversation.
#[utoipa::path(get, path = "/api/conversations/{conversation_id}/members", tag = "conversations",
    params(super::schemas::ConversationPath),
    responses((status = 200, body = Members),
        (status = 404, description = "No such conversation for this key", body = super::error::ErrorBody),
        (status = 422, description = "A bad conversation id", body = super::error::ErrorBody)))]
pub async fn list_members(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(conversation): ApiPath<String>,
) -> Result<Json<Members>, ApiError> {
    let conversation = conversation_id(&conversation)?;
    check_member(&state, &caller, &conversation).await?;
    let members = state.conversations.members(&conversation).await?;
    Ok(Json(Members {
        conversation_id: conversation.as_str().to_owned(),
        members,
    }))
}

/// Lets a user into a conversation (a member or a key not bound to a user may).
#[utoipa::path(put, path = "/api/conversations/{conversation_id}/members/{user_id}", tag = "conversations",
    params(super::schemas::ConversationMemberPath),
    responses((status = 200, body = MemberChange),
        (status = 404, description = "No such conversation for this key", body = super::error::ErrorBody),
        (status = 422, description = "A bad conversation or user id", body = super::error::ErrorBody)))]
pub async fn add_member(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath((conversation, user)): ApiPath<(String, String)>,
) -> Result<Json<MemberChange>, ApiError> {
    let conversation = conversation_id(&conversation)?;
    super::jobs::checked_user_id(&user)?;
    admit(&state, &caller, &conversation).await?;
    let changed = state.conversations.add_member(&conversation, &user).await?;
    Ok(Json(MemberChange {
        conversation_id: conversation.as_str().to_owned(),
        user_id: user,
        changed,
    }))
}

/// Takes a user out of a conversation: a key bound to a user may take out
/// only itself. Their messages and new sockets are refused at once, and
/// their open sockets closed within the membership check.
#[utoipa::path(delete, path = "/api/conversations/{conversation_id}/members/{user_id}", tag = "conversations",
    params(super::schemas::ConversationMemberPath),
    responses((status = 200, body = MemberChange),
        (status = 403, description = "A user's key may take out only itself", body = super::error::ErrorBody),
        (status = 404, description = "No such conversation for this key", body = super::error::ErrorBody),
        (status = 422, description = "A bad conversation or user id", body = super::error::ErrorBody)))]
pub async fn remove_member(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath((conversation, user)): ApiPath<(String, String)>,
) -> Result<Json<MemberChange>, ApiError> {
    let conversation = conversation_id(&conversation)?;
    super::jobs::checked_user_id(&user)?;
    check_member(&state, &caller, &conversation).await?;
    if caller
        .user
        .as_ref()
        .is_some_and(|tenant| tenant.user_id != user)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_yourself",
            "a key bound to a user may take only that user out of a conversation",
        ));
    }
    let changed = state
        .conversations
        .remove_member(&conversation, &user)
        .await?;
    Ok(Json(MemberChange {
        conversation_id: conversation.as_str().to_owned(),
        user_id: user,
        changed,
    }))
}
