//! The admin API behind `spool deploy`, `spool rollback` and `spool handlers`:
//! upload a handler version (validated, then activated on every instance), roll
//! back, and read versions, history and which instance runs what.
//!
//! Owns request parsing and response shapes; the work is `handlers`'.

use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use spool_core::access::{KeyRecord, NewKey, Role, Tenant};
use spool_core::handlers::store::{Activation, InstanceReport, VersionMeta};
use spool_core::handlers::{DeployError, Deployed, Handlers, valid_handler_name};
use spool_core::queue::now_ms;

/// Activations listed per handler.
const HISTORY_SHOWN: isize = 20;

pub fn routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(handler_status))
        .routes(routes!(rollback))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
}

/// The component upload: its limit is the registry's (checked while
/// reading), not the API's body limit.
pub fn upload_routes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(deploy))
        .layer(DefaultBodyLimit::disable())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyRequest {
    /// `admin`, `submitter` or `reader`.
    #[schema(pattern = "^(admin|submitter|reader)$")]
    role: String,
    /// Binds the key to this user: it acts as them, whatever a body says.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    user_id: Option<String>,
    /// The bound user's tier (needs `userId`).
    #[schema(max_length = 32, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user_tier: Option<String>,
    /// What the key is for.
    #[serde(default)]
    #[schema(max_length = 200)]
    name: String,
}

/// `POST /admin/keys {role, userId?, userTier?, name?}`: 201 with the secret, once.
#[utoipa::path(post, path = "/admin/keys", tag = "access", request_body = KeyRequest,
    responses((status = 201, description = "The key; its secret is shown this once", body = NewKey),
        (status = 422, description = "Unknown role or bad field", body = super::error::ErrorBody)))]
async fn create_key(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<KeyRequest>,
) -> Result<(StatusCode, Json<NewKey>), ApiError> {
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::invalid("invalid_role", "role must be admin, submitter or reader")
    })?;
    let user = match request.user_id {
        Some(user_id) => {
            super::jobs::checked_user_id(&user_id)?;
            super::jobs::checked_user_tier(request.user_tier.as_deref().unwrap_or_default())?;
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
    if request.name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "invalid_field",
            "name is at most 200 characters",
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
    Ok((StatusCode::CREATED, Json(created)))
}

#[derive(Serialize, ToSchema)]
pub struct KeyList {
    keys: Vec<KeyRecord>,
}

/// Every key, without secrets.
#[utoipa::path(get, path = "/admin/keys", tag = "access", responses((status = 200, body = KeyList)))]
async fn list_keys(State(state): State<Arc<AppState>>) -> Result<Json<KeyList>, ApiError> {
    Ok(Json(KeyList {
        keys: state.gate.keys.list().await?,
    }))
}

/// Revokes a key at once, on every instance.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "access", params(super::schemas::KeyPath),
    responses((status = 204, description = "Revoked"), (status = 404, description = "No such key", body = super::error::ErrorBody)))]
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeployQuery {
    /// Who uploads (shown in the version list); the CLI sends user@host.
    #[serde(default)]
    by: Option<String>,
}

#[derive(Deserialize, Default, ToSchema)]
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

/// Uploads a handler version: validated against the WIT world, compiled,
/// smoke-tested, stored and activated on every instance.
#[utoipa::path(post, path = "/admin/handlers/{name}/versions", tag = "handlers", params(super::schemas::HandlerPath, DeployQuery),
    request_body(content = super::schemas::ComponentBytes, content_type = "application/octet-stream",
        description = "The component (as `application/wasm` or `application/octet-stream`)"),
    responses((status = 201, description = "Activated", body = Deployed),
        (status = 200, description = "This version was already active", body = Deployed),
        (status = 413, description = "Over `registry.max_component_mb`", body = super::error::ErrorBody),
        (status = 415, description = "Not `application/wasm`", body = super::error::ErrorBody),
        (status = 422, description = "Not a valid component for this world", body = super::error::ErrorBody)))]
async fn deploy(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeployQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
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
    Ok((status, Json(deployed)))
}

/// Activates an earlier version (by default the one active before).
#[utoipa::path(post, path = "/admin/handlers/{name}/rollback", tag = "handlers", params(super::schemas::HandlerPath), request_body = RollbackBody,
    responses((status = 200, body = Deployed),
        (status = 404, description = "No such handler or version", body = super::error::ErrorBody),
        (status = 409, description = "Nothing to roll back to", body = super::error::ErrorBody)))]
async fn rollback(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Json<Deployed>, ApiError> {
    checked_name(&name)?;
    let deployed = state
        .handlers
        .rollback(&name, body.to.as_deref(), &who(body.by))
        .await?;
    Ok(Json(deployed))
}

/// Every handler's active version, the live instances and the compile cache.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    generation: u64,
    handlers: Vec<ActiveHandler>,
    instances: Vec<InstanceReport>,
    this_instance: String,
    compile_cache: CompileCache,
}

#[derive(Serialize, ToSchema)]
pub struct ActiveHandler {
    name: String,
    /// The active version id.
    active: String,
}

#[derive(Serialize, ToSchema)]
pub struct CompileCache {
    dir: Option<String>,
    hits: u64,
    misses: u64,
}

#[utoipa::path(get, path = "/admin/handlers", tag = "handlers", responses((status = 200, body = Overview)))]
async fn overview(State(state): State<Arc<AppState>>) -> Result<Json<Overview>, ApiError> {
    let handlers = &state.handlers;
    let (active, generation) = handlers.store().active_all().await?;
    let mut names: Vec<(String, String)> = active.into_iter().collect();
    names.sort();
    let instances = handlers.store().live_instances(now_ms()).await?;
    Ok(Json(Overview {
        generation,
        handlers: names
            .into_iter()
            .map(|(name, active)| ActiveHandler { name, active })
            .collect(),
        instances,
        this_instance: handlers.instance().to_owned(),
        compile_cache: compile_cache(handlers),
    }))
}

/// One handler: its versions, activation history and which instance runs what.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandlerStatus {
    handler: String,
    active: Option<String>,
    generation: u64,
    versions: Vec<VersionView>,
    history: Vec<Activation>,
    instances: Vec<InstanceVersion>,
    compile_cache: CompileCache,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    #[serde(flatten)]
    meta: VersionMeta,
    active: bool,
}

/// One instance as seen for one handler: which version it starts jobs on and
/// whether that is the active one.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceVersion {
    instance: String,
    version: Option<String>,
    switched: bool,
    generation: u64,
    switched_at: u64,
    last_seen: u64,
}

#[utoipa::path(get, path = "/admin/handlers/{name}", tag = "handlers", params(super::schemas::HandlerPath),
    responses((status = 200, body = HandlerStatus), (status = 404, description = "No such handler", body = super::error::ErrorBody)))]
async fn handler_status(
    State(state): State<Arc<AppState>>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<HandlerStatus>, ApiError> {
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
    let versions = versions
        .into_iter()
        .map(|meta| VersionView {
            active: active.as_deref() == Some(meta.version.as_str()),
            meta,
        })
        .collect();
    let instances = instances
        .iter()
        .map(|report| instance_version(report, &name, active.as_deref()))
        .collect();
    Ok(Json(HandlerStatus {
        handler: name,
        active,
        generation,
        versions,
        history,
        instances,
        compile_cache: compile_cache(handlers),
    }))
}

fn instance_version(report: &InstanceReport, name: &str, active: Option<&str>) -> InstanceVersion {
    let version = report.handlers.get(name).cloned();
    InstanceVersion {
        switched: version.is_some() && version.as_deref() == active,
        instance: report.instance.clone(),
        version,
        generation: report.generation,
        switched_at: report.switched_at,
        last_seen: report.last_seen,
    }
}

fn compile_cache(handlers: &Handlers) -> CompileCache {
    let cache = handlers.cache();
    CompileCache {
        dir: cache.dir().map(|d| d.display().to_string()),
        hits: cache.hits(),
        misses: cache.misses(),
    }
}
