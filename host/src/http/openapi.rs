//! The API's OpenAPI 3.1 description, served at `GET /openapi.json`. The paths
//! come from each handler's `#[utoipa::path]` as the router registers it, so a
//! route cannot be served undescribed; this module adds what every operation
//! shares: the two ways to present a key and the error shape any of them may
//! answer with. It describes; it must not route or check anything.

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder, SecurityRequirement};
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use super::error::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "spool",
        description = "Runs AI jobs from Redis Streams through WebAssembly handlers, paced for rate-limited model APIs. \
            Keys are presented as `Authorization: Bearer <key>` or as the `spool_key` cookie `POST /api/login` sets; \
            routes need the reader, submitter or admin role. Every error answers `{\"error\": {\"code\", \"message\", \"type\"}}` (`type` is OpenAI's error class)."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "jobs", description = "Submit jobs and follow them (designs C and E)"),
        (name = "sessions", description = "Sessions, messages and tasks (design D)"),
        (name = "queues", description = "Queue statistics and control, dead letters"),
        (name = "handlers", description = "Deploy and roll back Wasm handlers"),
        (name = "access", description = "API keys and browser login"),
        (name = "operations", description = "Health, limits and metrics"),
        (name = "console", description = "The web page"),
        (name = "embeddings", description = "Texts to vectors through the queue, limiter, batcher and cache (design A)"),
        (name = "openai", description = "OpenAI-compatible chat completions and embeddings: any OpenAI SDK with base URL `<spool>/v1` and a spool key"),
    )
)]
struct Base;

const BEARER: &str = "bearer";
const COOKIE: &str = "cookie";

/// The description, rendered once.
#[derive(Clone)]
pub struct Description(Arc<String>);

impl Description {
    pub fn of(routes: OpenApiRouter<Arc<AppState>>) -> Self {
        let mut api = Base::openapi();
        api.merge(routes.into_openapi());
        complete(&mut api);
        let mut description = serde_json::to_value(&api).unwrap_or_default();
        add_links(&mut description);
        add_cross_field_rules(&mut description);
        Self(Arc::new(description.to_string()))
    }

    pub async fn serve(self) -> impl IntoResponse {
        ([(CONTENT_TYPE, "application/json")], self.0.to_string())
    }
}

/// Adds the key schemes, requires a key wherever a route does not say it is
/// open (`security(())`), and gives every operation the error answer.
fn complete(api: &mut OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("An API key (`spool keys create`) or the admin token"))
                .build(),
        ),
    );
    components.add_security_scheme(
        COOKIE,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            "spool_key",
            "Set by `POST /api/login`, for EventSource and WebSocket in browsers",
        ))),
    );
    api.security = Some(vec![
        SecurityRequirement::new(BEARER, Vec::<String>::new()),
        SecurityRequirement::new(COOKIE, Vec::<String>::new()),
    ]);
    let error = ResponseBuilder::new()
        .description("An error: the status says which kind, the body names the problem")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build();
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            add_default(operation, &error);
        }
    }
}

/// Where the ids an answer carries lead: OpenAPI links, which clients (and
/// schemathesis' stateful phase) follow from one operation to the next.
struct Follow {
    path: &'static str,
    method: &'static str,
    status: &'static str,
    to: &'static str,
    parameters: &'static [(&'static str, &'static str)],
}

const JOB_ID: &[(&str, &str)] = &[("id", "$response.body#/jobId")];
const SESSION_ID: &[(&str, &str)] = &[("sid", "$response.body#/id")];

const FOLLOWS: &[Follow] = &[
    Follow {
        path: "/api/chat",
        method: "post",
        status: "202",
        to: "get_job",
        parameters: JOB_ID,
    },
    Follow {
        path: "/api/chat",
        method: "post",
        status: "202",
        to: "cancel",
        parameters: JOB_ID,
    },
    Follow {
        path: "/api/chat",
        method: "post",
        status: "202",
        to: "job_events",
        parameters: JOB_ID,
    },
    Follow {
        path: "/api/queues/{queue}/jobs",
        method: "post",
        status: "202",
        to: "get_job",
        parameters: JOB_ID,
    },
    Follow {
        path: "/api/v1/sessions",
        method: "post",
        status: "201",
        to: "get_session",
        parameters: SESSION_ID,
    },
    Follow {
        path: "/api/v1/sessions",
        method: "post",
        status: "201",
        to: "delete_session",
        parameters: SESSION_ID,
    },
    Follow {
        path: "/api/v1/sessions",
        method: "post",
        status: "201",
        to: "post_message",
        parameters: SESSION_ID,
    },
    Follow {
        path: "/api/v1/sessions",
        method: "post",
        status: "201",
        to: "list_messages",
        parameters: SESSION_ID,
    },
    Follow {
        path: "/api/v1/sessions",
        method: "post",
        status: "201",
        to: "start_task",
        parameters: SESSION_ID,
    },
    Follow {
        path: "/api/v1/sessions/{sid}/messages",
        method: "post",
        status: "201",
        to: "get_message",
        parameters: &[("mid", "$response.body#/id")],
    },
    Follow {
        path: "/api/v1/sessions/{sid}/messages",
        method: "post",
        status: "201",
        to: "message_stream",
        parameters: &[
            ("sid", "$response.body#/sessionId"),
            ("mid", "$response.body#/id"),
        ],
    },
    Follow {
        path: "/api/v1/sessions/{sid}/tasks",
        method: "post",
        status: "202",
        to: "get_message",
        parameters: &[("mid", "$response.body#/messageId")],
    },
    Follow {
        path: "/api/v1/sessions/{sid}/tasks",
        method: "post",
        status: "202",
        to: "get_job",
        parameters: JOB_ID,
    },
    Follow {
        path: "/admin/keys",
        method: "post",
        status: "201",
        to: "revoke_key",
        parameters: &[("id", "$response.body#/id")],
    },
];

/// Adds [`FOLLOWS`] to the rendered description. (utoipa 5.5 would write a
/// link's `operationId` as `operation_id`, which no client reads.)
fn add_links(description: &mut Value) {
    for follow in FOLLOWS {
        let pointer = format!(
            "/paths/{}/{}/responses/{}",
            follow.path.replace('~', "~0").replace('/', "~1"),
            follow.method,
            follow.status
        );
        let Some(Value::Object(response)) = description.pointer_mut(&pointer) else {
            continue;
        };
        let parameters: Map<String, Value> = follow
            .parameters
            .iter()
            .map(|(name, expression)| ((*name).to_owned(), json!(expression)))
            .collect();
        let links = response
            .entry("links")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(links) = links {
            links.insert(
                follow.to.to_owned(),
                json!({ "operationId": follow.to, "parameters": parameters }),
            );
        }
    }
}

/// Rules across fields, which utoipa 5.5 cannot write: added to the rendered
/// schemas as JSON Schema `anyOf`s.
fn add_cross_field_rules(description: &mut Value) {
    let rules = [
        // A tier belongs to the user a key is bound to.
        (
            "KeyRequest",
            json!([
                { "required": ["userId"], "properties": { "userId": { "type": "string" } } },
                { "properties": { "userTier": { "type": "null" } } },
            ]),
        ),
        // A message has text, blocks or both.
        (
            "NewMessage",
            json!([
                { "required": ["content"], "properties": { "content": { "minLength": 1 } } },
                { "required": ["blocks"], "properties": { "blocks": { "minItems": 1 } } },
            ]),
        ),
    ];
    for (name, any_of) in rules {
        let pointer = format!("/components/schemas/{name}");
        if let Some(Value::Object(schema)) = description.pointer_mut(&pointer) {
            schema.insert("anyOf".into(), any_of);
        }
    }
}

fn add_default(operation: &mut Operation, error: &utoipa::openapi::Response) {
    operation
        .responses
        .responses
        .entry("default".into())
        .or_insert_with(|| error.clone().into());
}
