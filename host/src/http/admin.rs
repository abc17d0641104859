//! The admin API behind `spool deploy`, `spool rollback` and `spool handlers`:
//! upload a handler version (validated, then activated on every instance), roll
//! back, and read versions, history and which instance runs what.
//!
//! Owns request parsing and response shapes; the work is `handlers`'.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use spool_core::access::{Role, Tenant};
use spool_core::handlers::store::InstanceReport;
use spool_core::handlers::{DeployError, Handlers, valid_handler_name};
use spool_core::queue::now_ms;

/// Activations listed per handler.
const HISTORY_SHOWN: isize = 20;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/handlers", get(overview))
        .route("/admin/handlers/{name}", get(handler_status))
        .route("/admin/handlers/{name}/rollback", post(rollback))
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}", axum::routing::delete(revoke_key))
}

/// The component upload: its limit is the registry's (checked while
/// reading), not the API's body limit.
pub fn upload_routes() -> Router<Arc<AppState>> {
    Router::new().route(
        "/admin/handlers/{name}/versions",
        post(deploy).layer(DefaultBodyLimit::disable()),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyRequest {
    role: String,
    user_id: Option<String>,
    user_tier: Option<String>,
    #[serde(default)]
    name: String,
}

/// `POST /admin/keys {role, userId?, userTier?, name?}`: 201 with the secret, once.
async fn create_key(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::invalid("invalid_role", "role must be admin, submitter or reader")
    })?;
    let user = match request.user_id {
        Some(user_id) => {
            super::jobs::checked_user_id(&user_id)?;
            Some(Tenant {
                user_id,
                tier: request.user_tier.unwrap_or_default(),
            })
        }
        None if request.user_tier.is_some() => {
            return Err(ApiError::invalid(
                "invalid_field",
                "userTier needs a userId",
            ));
        }
        None => None,
    };
    if request.name.len() > 200 {
        return Err(ApiError::invalid(
            "invalid_field",
            "name is at most 200 bytes",
        ));
    }
    let created = state
        .gate
        .keys
        .create(role, user, &request.name)
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keys_unavailable",
                error.to_string(),
            )
        })?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}

async fn list_keys(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "keys": state.gate.keys.list().await? })))
}

async fn revoke_key(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    if state.gate.keys.revoke(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "key_not_found",
            format!("no key `{id}`"),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Who uploads (shown in the version list); the CLI sends user@host.
    #[serde(default)]
    by: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// A version id or a unique prefix; absent: the version active before.
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    by: Option<String>,
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let message = error.to_string();
        match error {
            DeployError::Rejected(rejection) => {
                ApiError::invalid(rejection.code, rejection.message)
            }
            DeployError::UnknownHandler(_) => ApiError::not_found("unknown_handler", message),
            DeployError::UnknownVersion { .. } => ApiError::not_found("unknown_version", message),
            DeployError::NothingToRollBack { .. } => {
                ApiError::new(StatusCode::CONFLICT, "nothing_to_roll_back", message)
            }
            DeployError::Redis(error) => error.into(),
            DeployError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "registry_error", message)
            }
        }
    }
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if valid_handler_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_handler_name",
            format!("handler name `{name}` must be 1-64 characters of a-z, 0-9, '-' or '_'"),
        ))
    }
}

fn who(by: Option<String>) -> String {
    by.map(|b| {
        b.chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect::<String>()
    })
    .filter(|b| !b.trim().is_empty())
    .unwrap_or_else(|| "admin-api".into())
}

/// Reads an upload of at most `limit` bytes. An oversized one is still read
/// to its end (up to a bound, without keeping it): answering while the client
/// is still sending makes the server reset the connection, and the client
/// would see that instead of the 413.
async fn read_upload(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    const DRAIN_BOUND: usize = 256 * 1024 * 1024;
    let mut data = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut received = 0usize;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "could not read the upload (connection closed early?)",
            )
        })?;
        received = received.saturating_add(chunk.len());
        if received <= limit {
            bytes.extend_from_slice(&chunk);
        } else if received > limit.saturating_add(DRAIN_BOUND) {
            break;
        }
    }
    if received > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the component exceeds the upload limit of {limit} bytes (registry.max_component_mb)"
            ),
        ));
    }
    Ok(bytes.into())
}

async fn deploy(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeployQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    checked_name(&name)?;
    // A component is never a form or text: a page's no-cors request can
    // only send those, so it cannot even reach the upload.
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !matches!(
        content_type,
        "application/wasm" | "application/octet-stream"
    ) {
        super::bounds::drain(body).await;
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "upload the component as application/wasm (or application/octet-stream)",
        ));
    }
    let limit = state.handlers.max_component_bytes();
    let bytes = read_upload(body, limit).await?;
    let deployed = state
        .handlers
        .deploy(&name, bytes, &who(query.by), "deploy")
        .await?;
    let status = if deployed.changed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::to_value(&deployed).unwrap_or(Value::Null)),
    ))
}

async fn rollback(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let deployed = state
        .handlers
        .rollback(&name, body.to.as_deref(), &who(body.by))
        .await?;
    Ok(Json(serde_json::to_value(&deployed).unwrap_or(Value::Null)))
}

async fn overview(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let handlers = &state.handlers;
    let (active, generation) = handlers.store().active_all().await?;
    let mut names: Vec<(String, String)> = active.into_iter().collect();
    names.sort();
    let instances = handlers.store().live_instances(now_ms()).await?;
    Ok(Json(json!({
        "generation": generation,
        "handlers": names.into_iter().map(|(name, version)| json!({"name": name, "active": version})).collect::<Vec<_>>(),
        "instances": instances,
        "thisInstance": handlers.instance(),
        "compileCache": cache_json(handlers),
    })))
}

async fn handler_status(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let handlers = &state.handlers;
    let store = handlers.store();
    let versions = store.versions(&name).await?;
    if versions.is_empty() {
        return Err(DeployError::UnknownHandler(name).into());
    }
    let active = store.active(&name).await?;
    let generation = store.generation().await?;
    let history = store.history(&name, HISTORY_SHOWN).await?;
    let instances = store.live_instances(now_ms()).await?;
    let versions: Vec<Value> = versions
        .into_iter()
        .map(|meta| {
            let is_active = active.as_deref() == Some(meta.version.as_str());
            let mut value = serde_json::to_value(meta).unwrap_or(Value::Null);
            value["active"] = json!(is_active);
            value
        })
        .collect();
    Ok(Json(json!({
        "handler": name,
        "active": active,
        "generation": generation,
        "versions": versions,
        "history": history,
        "instances": instances.iter().map(|report| instance_json(report, &name, active.as_deref())).collect::<Vec<_>>(),
        "compileCache": cache_json(handlers),
    })))
}

/// One instance as seen for one handler: which version it starts jobs on and
/// whether that is the active one.
fn instance_json(report: &InstanceReport, name: &str, active: Option<&str>) -> Value {
    let version = report.handlers.get(name);
    json!({
        "instance": report.instance,
        "version": version,
        "switched": version.is_some() && version.map(String::as_str) == active,
        "generation": report.generation,
        "switchedAt": report.switched_at,
        "lastSeen": report.last_seen,
    })
}

fn cache_json(handlers: &Handlers) -> Value {
    let cache = handlers.cache();
    json!({
        "dir": cache.dir().map(|d| d.display().to_string()),
        "hits": cache.hits(),
        "misses": cache.misses(),
    })
}
