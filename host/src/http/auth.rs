//! Who may call what. Every request passes [`guard`]: it must name a host this
//! instance answers to (no DNS rebinding), a state-changing one must come from
//! the page's own origin (no cross-site deploys from a page the operator
//! happens to open), and its key becomes an [`Identity`] in the request's
//! extensions. Route groups then [`require`] a role.
//!
//! A key arrives as `Authorization: Bearer <key>` or, for browsers (EventSource
//! and WebSocket cannot set headers), as the `spool_key` cookie that
//! `POST /api/login` sets: HttpOnly and SameSite=Strict, so a page cannot read
//! it or make another site's requests carry it.
//!
//! Owns these checks and the login routes; keys themselves are
//! `spool_core::access`'s, ownership checks of jobs and sessions the routes'.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::bounds::refuse;
use super::error::{ApiError, ApiJson};
use spool_core::access::{Identity, Keys, Role, Tenant, key_hash};

const COOKIE_NAME: &str = "spool_key";

/// What [`guard`] checks requests against.
pub struct Gate {
    pub keys: Keys,
    /// SHA-256 of the operator's admin token (see `crate::admin_token`).
    pub admin_token_hash: String,
    /// Keyless requests act as [`Identity::anonymous`] (loopback only).
    pub anonymous: bool,
    /// Host names answered besides loopback ones.
    pub allowed_hosts: Vec<String>,
    /// Refuse requests naming other hosts. On for a loopback listener, where
    /// keyless access and the local token make DNS rebinding worth trying;
    /// elsewhere only when `allowed_hosts` lists the names.
    pub check_host: bool,
}

impl Gate {
    async fn identify(&self, key: &str) -> Result<Option<Identity>, ApiError> {
        if key_hash(key) == self.admin_token_hash {
            return Ok(Some(Identity::local_admin()));
        }
        Ok(self.keys.identify(key).await?)
    }

    fn answers_to(&self, host: &str) -> bool {
        let name = host_name(host);
        let loopback = name == "localhost"
            || name
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        loopback || self.allowed_hosts.iter().any(|allowed| allowed == name)
    }
}

/// `host` without its port (`[::1]:8080` -> `[::1]`).
fn host_name(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host,
    }
}

/// Checks the request's host and origin, then records who it is (nothing,
/// for a keyless request where keys are required: [`require`] answers 401).
pub async fn guard(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let gate = &state.gate;
    let headers = request.headers();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let refusal = if gate.check_host && !host.is_empty() && !gate.answers_to(host) {
        let message = format!(
            "this instance does not answer to `{}`; add it to [auth] allowed_hosts",
            host_name(host)
        );
        Some(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            message,
        ))
    } else if (changes_state(request.method()) || opens_websocket(headers))
        && is_cross_site(headers, host)
    {
        Some(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "a request from another site may not change anything here",
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return refuse(request, refusal).await;
    }
    let headers = request.headers();
    let identity = match presented_key(headers) {
        Some(key) => match gate.identify(&key).await {
            Ok(Some(identity)) => Some(identity),
            Ok(None) => {
                let refusal = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_key",
                    "this API key is unknown or revoked",
                );
                return refuse(request, refusal).await;
            }
            Err(error) => return error.into_response(),
        },
        None => gate.anonymous.then(Identity::anonymous),
    };
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity);
    }
    next.run(request).await
}

/// A WebSocket is not bound by CORS: a page elsewhere could open one and
/// talk as the browser's user, so its upgrade is checked like a change.
fn opens_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// A browser says where a request comes from (`Sec-Fetch-Site`, `Origin`);
/// clients that say nothing (curl, the CLI, services) are not browsers.
fn is_cross_site(headers: &HeaderMap, host: &str) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| site == "cross-site" || site == "same-site") {
        return true;
    }
    match headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => {
            let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            authority != host
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(bearer) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then(|| value.to_owned())
        })
}

/// A layer for a route group: 401 without an identity, 403 when its role is
/// below `role`.
pub async fn require(role: Role, request: Request, next: Next) -> Response {
    let refusal = match request.extensions().get::<Identity>() {
        None => unauthenticated(),
        Some(identity) if !identity.may(role) && identity.is_anonymous() => unauthenticated(),
        Some(identity) if !identity.may(role) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this route needs the {} role; this key is {}",
                role.as_str(),
                identity.role.as_str()
            ),
        ),
        Some(_) => return next.run(request).await,
    };
    refuse(request, refusal).await
}

fn unauthenticated() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "this route needs an API key: send `Authorization: Bearer <key>` (create keys with `spool keys create`)",
    )
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// An API key or the admin token.
    key: String,
}

/// Who the key is.
#[derive(Serialize, ToSchema)]
pub struct LoggedIn {
    role: Role,
    /// The tenant a bound key acts as.
    user: Option<Tenant>,
}

/// `POST /api/login {"key"}`: checks the key and sets it as an HttpOnly,
/// SameSite=Strict cookie for the browser's EventSource and WebSocket.
#[utoipa::path(post, path = "/api/login", tag = "access", security(()), request_body = Login,
    responses((status = 200, description = "The cookie is set", body = LoggedIn,
            headers(("set-cookie" = String, description = "spool_key=...; HttpOnly; SameSite=Strict"))),
        (status = 401, description = "Unknown or revoked key", body = super::error::ErrorBody)))]
pub async fn login(
    State(state): State<Arc<AppState>>,
    ApiJson(login): ApiJson<Login>,
) -> Result<Response, ApiError> {
    let Some(identity) = state.gate.identify(&login.key).await? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_key",
            "this API key is unknown or revoked",
        ));
    };
    let cookie = format!(
        "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
        login.key
    );
    let body = LoggedIn {
        role: identity.role,
        user: identity.user,
    };
    Ok(([(SET_COOKIE, cookie)], Json(body)).into_response())
}

/// `POST /api/logout`: forgets the cookie.
#[utoipa::path(post, path = "/api/logout", tag = "access", security(()),
    responses((status = 204, description = "The cookie is cleared")))]
pub async fn logout() -> Response {
    let cookie = format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(SET_COOKIE, cookie)], StatusCode::NO_CONTENT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port_but_not_their_brackets() {
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("[::1]"), "[::1]");
        assert_eq!(host_name("example.com"), "example.com");
    }

    #[test]
    fn browsers_from_elsewhere_are_cross_site_and_clients_without_origin_are_not() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().expect("header"));
            }
            map
        };
        let host = "127.0.0.1:8080";
        assert!(!is_cross_site(&headers(&[]), host));
        assert!(!is_cross_site(
            &headers(&[("origin", "http://127.0.0.1:8080")]),
            host
        ));
        assert!(is_cross_site(
            &headers(&[("origin", "https://evil.example")]),
            host
        ));
        assert!(is_cross_site(&headers(&[("origin", "null")]), host));
        assert!(is_cross_site(
            &headers(&[("sec-fetch-site", "cross-site")]),
            host
        ));
    }
}
