//! The web console: static HTML, CSS and JavaScript modules embedded in the
//! binary and served at `/` and `/console/{asset}`. The assets hold no data:
//! the page asks for a key and reads everything through the API with it, so
//! they are served without auth. Owns the asset table only; nothing here
//! reads Redis, the queues or a job.

use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoParams, PartialSchema, ToSchema};

use super::error::{ApiError, ApiPath};

/// One embedded file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("console/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("blocks.js", JS),
    asset!("job_stream.js", JS),
    asset!("page_queues.js", JS),
    asset!("page_jobs.js", JS),
    asset!("page_job.js", JS),
    asset!("page_handlers.js", JS),
    asset!("page_limits.js", JS),
    asset!("page_chat.js", JS),
    asset!("page_sessions.js", JS),
    asset!("page_conversation.js", JS),
    asset!("vendor-marked.js", JS),
    asset!("vendor-purify.js", JS),
    asset!("LICENSE-marked.md", "text/plain; charset=utf-8"),
    asset!("LICENSE-dompurify", "text/plain; charset=utf-8"),
];

/// The path of `GET /console/{asset}` (described only: the handler takes a string).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct AssetPath {
    /// A file of the console.
    #[param(inline)]
    asset: AssetName,
}

/// The names of the console's files, as the description's enum.
pub struct AssetName;

impl PartialSchema for AssetName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(ASSETS.iter().map(|asset| asset.name)))
            .into()
    }
}

impl ToSchema for AssetName {}

/// The console's shell: a key prompt until a key is given, then the pages.
#[utoipa::path(get, path = "/", tag = "console", security(()),
    responses((status = 200, description = "The console", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    (
        [(CONTENT_SECURITY_POLICY, POLICY)],
        Html(include_str!("console/index.html")),
    )
        .into_response()
}

/// Scripts and styles only from the console's own files, so markup that got
/// past the sanitizer still cannot run; media may come from anywhere a block
/// points (or its own `data:` bytes).
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data: http: https:; media-src 'self' data: http: https:; \
    connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// One of the console's files (scripts, style sheet, vendored licences).
#[utoipa::path(get, path = "/console/{asset}", tag = "console", security(()),
    params(AssetPath),
    responses((status = 200, description = "The file", content(
            (String = "text/javascript"), (String = "text/css"), (String = "text/plain"))),
        (status = 404, description = "No such file", body = super::error::ErrorBody)))]
pub async fn asset(ApiPath(name): ApiPath<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| {
            ApiError::not_found(
                "asset_not_found",
                format!("the console has no file `{name}`"),
            )
        })?;
    Ok((
        [
            (CONTENT_TYPE, asset.content_type),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Embedded in the binary: a new binary may change them.
            (CACHE_CONTROL, "no-cache"),
        ],
        asset.body,
    )
        .into_response())
}
