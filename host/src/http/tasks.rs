//! Design D's session tasks over HTTP: `POST /api/v1/sessions/{sid}/tasks`
//! creates the assistant message a task will fill (with the caller's own
//! task id and type when given) and queues the job whose guest runs the
//! workflow. The task's steps are the guest's; the store is
//! `spool_core::store`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath};
use super::sessions::{open_session, visible_session};
use spool_core::access::Identity;
use spool_core::intake::Submission;
use spool_core::queue::BoundMessage;
use spool_core::store::{DEFAULT_TASK_TYPE, StoreError, TaskStart, valid_id};

/// Design D's task. The task queue's handler reads it (and refuses with a
/// 422 naming the field); these are the fields the built-in pipeline reads.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewTask {
    /// The topic: not blank.
    #[schema(
        example = "Write a short brief on Redis Streams",
        max_length = 10000,
        pattern = "[^\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    task_description: String,
    /// `simple`, `planner` (the default) or `critic`.
    #[schema(pattern = "^(simple|planner|critic)$")]
    workflow: Option<String>,
    /// Critique/revise rounds of `critic`.
    #[schema(minimum = 1, maximum = 10)]
    max_iterations: Option<u8>,
    /// Sections of the planner's outline.
    #[schema(minimum = 1, maximum = 10)]
    sections: Option<u8>,
    /// Design D's task id, chosen by the caller: a placeholder with this id
    /// (and `task_started`) opens the message, and the workflow's answer
    /// completes it. Taken by another task of the session: 409 `task_exists`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "task_001")]
    task_id: Option<String>,
    /// Design D's task type (e.g. `image_generation`); `task` by default.
    /// Naming a type without an id starts the task under a generated id.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,63}$", example = "image_generation")]
    task_type: Option<String>,
}

/// The caller's own task (design D's `start_task(task_id, type)`), read from
/// the body's `task_id` and `task_type`; the rest of the body stays the
/// guest's.
struct CallerTask {
    id: Option<String>,
    task_type: Option<String>,
}

impl CallerTask {
    fn from_body(body: &Map<String, Value>) -> Result<Option<Self>, ApiError> {
        let text = |name: &str, valid: fn(&str) -> bool, rule: &str| match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if valid(text) => Ok(Some(text.clone())),
            Some(other) => Err(ApiError::invalid(
                "invalid_field",
                format!("{name} must be {rule}, not {other}"),
            )),
        };
        let id = text("task_id", valid_id, "1-64 letters, digits, `-` or `_`")?;
        let task_type = text(
            "task_type",
            valid_task_type,
            "a lowercase name of 1-64 letters, digits or `_` starting with a letter",
        )?;
        Ok((id.is_some() || task_type.is_some()).then_some(Self { id, task_type }))
    }

    /// The kind of block the task will fill (design D's `ContentType`).
    fn content_type(&self) -> &'static str {
        let task_type = self.task_type.as_deref().unwrap_or_default();
        if task_type.contains("image") {
            "image"
        } else if task_type.contains("audio") || task_type.contains("speech") {
            "audio"
        } else {
            "text"
        }
    }
}

fn valid_task_type(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Where to follow a task just started.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStarted {
    session_id: String,
    /// The assistant message the task fills.
    message_id: String,
    job_id: String,
    queue: String,
    message_url: String,
    stream_url: String,
    job_stream_url: String,
    /// The caller's task (when the body named `task_id` or `task_type`),
    /// also under design D's names `task_id` and `task_type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "task_id")]
    #[schema(rename = "task_id")]
    design_task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "task_type")]
    #[schema(rename = "task_type")]
    task_type: Option<String>,
}

/// POST /api/v1/sessions/{sid}/tasks: creates the assistant message the task
/// will fill and queues the job whose guest runs the workflow and drives it.
#[utoipa::path(post, path = "/api/v1/sessions/{sid}/tasks", tag = "sessions", params(super::schemas::SessionPath), request_body = NewTask,
    responses((status = 202, body = TaskStarted), (status = 404, description = "No such session", body = super::error::ErrorBody),
        (status = 409, description = "The session is closed, or `task_id` is taken in it", body = super::error::ErrorBody),
        (status = 422, description = "A bad `task_id`/`task_type`, or the handler refused the task", body = super::error::ErrorBody)))]
pub async fn start_task(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<TaskStarted>), ApiError> {
    visible_session(&state, &caller, &sid).await?;
    open_session(&state, &sid).await?;
    let queue = state.sessions.config().task_queue.clone();
    if !state.intake.routes.contains_key(&queue) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "task_queue_missing",
            format!("the task queue `{queue}` is not configured"),
        ));
    }
    let caller_task = CallerTask::from_body(&body)?;
    if let Some(id) = caller_task.as_ref().and_then(|task| task.id.as_deref())
        && state.sessions.task_in_session(&sid, id).await?
    {
        return Err(StoreError::TaskExists(id.to_owned()).into());
    }
    // The message names its job before the job exists, so whichever instance
    // claims the job finds the binding in place.
    let job_id = uuid::Uuid::now_v7().to_string();
    let message_id = state
        .sessions
        .create_message(&sid, "assistant", Some(&job_id))
        .await?;
    let mut body = body;
    let task = match &caller_task {
        Some(task) => {
            let start = TaskStart {
                id: task.id.as_deref(),
                task_type: task.task_type.as_deref(),
                content_type: Some(task.content_type()),
                description: task.task_type.as_deref().unwrap_or(DEFAULT_TASK_TYPE),
            };
            let task_id = state
                .sessions
                .start_task_with(&sid, &message_id, &start)
                .await?;
            // The guest completes the task with its answer: it learns the
            // (possibly generated) id from its payload.
            body.insert("task_id".into(), Value::String(task_id.clone()));
            Some((
                task_id,
                start.task_type.unwrap_or(DEFAULT_TASK_TYPE).to_owned(),
            ))
        }
        None => None,
    };
    // The body is the task's payload: the task queue's handler checks it in
    // `admit` (a refusal is a 422 naming the field) and the host never reads it.
    let submission = Submission {
        priority: 5,
        payload: Value::Object(body).to_string(),
        message: Some(BoundMessage {
            session_id: sid.clone(),
            message_id: message_id.clone(),
        }),
        ..Submission::default()
    };
    let submission = super::jobs::as_caller(&caller, submission)?;
    if let Err(error) = state
        .intake
        .submit_with_id(&queue, job_id.clone(), &submission)
        .await
    {
        let error = ApiError::from(error);
        // The message must not wait forever for a job that was never queued.
        if let Err(fail_error) = state
            .sessions
            .fail(
                &sid,
                &message_id,
                &format!("the task was not queued: {}", error.message),
            )
            .await
        {
            tracing::warn!(message = %message_id, error = %fail_error, "could not end the message of an unqueued task");
        }
        return Err(error);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(TaskStarted {
            message_url: format!("/api/v1/messages/{message_id}"),
            stream_url: format!("/api/v1/sessions/{sid}/messages/{message_id}/stream"),
            job_stream_url: format!("/api/v1/jobs/{job_id}/stream"),
            session_id: sid,
            message_id,
            job_id,
            queue,
            task_id: task.as_ref().map(|(id, _)| id.clone()),
            design_task_id: task.as_ref().map(|(id, _)| id.clone()),
            task_type: task.map(|(_, task_type)| task_type),
        }),
    ))
}
