//! The operator's and the guest author's commands. Each talks to a running
//! instance over HTTP or works on local files; none opens Redis itself.

pub mod admin;
pub mod dead;
pub mod guest;
pub mod keys;

use std::time::Duration;

use anyhow::{Context, Result};

/// The environment variable naming the API key the CLI presents.
pub const KEY_ENV: &str = "SPOOL_KEY";

/// An HTTP client that presents `SPOOL_KEY`, else the operator's admin token
/// (`SPOOL_ADMIN_KEY` or the token file `spool serve` wrote).
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    let key = std::env::var(KEY_ENV)
        .ok()
        .filter(|key| !key.trim().is_empty())
        .or_else(crate::admin_token::for_cli);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.trim()))
            .context("the API key is not a valid header value")?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .context("building the HTTP client")
}
