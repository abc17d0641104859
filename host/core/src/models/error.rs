//! What can go wrong in a model call, classified for the central rate limiter:
//! `RateLimited` (wait as told, then retry), `Unavailable` (transient), `Rejected`
//! (permanent). Also reads how long a server asks callers to wait. It only
//! classifies: waiting and retrying belong to the rate limiter, never to this module.
//!
//! A 403 is ambiguous: some APIs answer bursts with it, but most mean "never"
//! (bad key, region not served, no permission). Only a 403 that says it is a
//! rate limit (its body, or a `Retry-After`) is one, unless the backend is
//! configured with `forbidden_is_rate_limit`; any other 403 is a permanent
//! refusal, so it neither slows the whole fleet down nor is retried.

use std::fmt::Display;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION};
use serde_json::Value;

/// Error bodies can be whole HTML pages; the start is enough to explain the failure.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
const MAX_MESSAGE_CHARS: usize = 500;

use super::ModelError;

/// Phrases (lower case) by which a 403's body says it is a rate limit: OpenAI's
/// `rate_limit_exceeded`, "Rate limit reached for ... per min", Azure's "call
/// rate limit", a proxy's "Too Many Requests", "throttled", "slow down".
const RATE_LIMIT_MARKERS: &[&str] = &[
    "rate limit",
    "rate_limit",
    "ratelimit",
    "rate-limit",
    "rate limited",
    "too many requests",
    "too_many_requests",
    "throttl",
    "per minute",
    "per second",
    "slow down",
];

/// Classifies a non-success response, reading at most the start of its body.
/// `forbidden_is_rate_limit`: the backend's setting, every 403 is a rate limit.
pub(super) async fn from_response(
    mut response: reqwest::Response,
    forbidden_is_rate_limit: bool,
) -> ModelError {
    let mut body = Vec::new();
    // A body that fails half-way still explains itself with what arrived.
    while body.len() < MAX_ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    classify(
        response.status(),
        response.headers(),
        &body,
        SystemTime::now(),
        forbidden_is_rate_limit,
    )
}

pub(super) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
    forbidden_is_rate_limit: bool,
) -> ModelError {
    let (message, quota_exhausted) = error_details(status, body);
    let status = status.as_u16();
    let rate_limited = || ModelError::RateLimited {
        status,
        retry_after: retry_after(headers, now),
        message: message.clone(),
    };
    match status {
        // OpenAI reports an exhausted quota as 429, but waiting will not refill it.
        _ if quota_exhausted => ModelError::Rejected { status, message },
        429 => rate_limited(),
        403 if forbidden_is_rate_limit || says_rate_limit(body) || asks_to_wait(headers) => {
            rate_limited()
        }
        // Not `RateLimited`: halving every instance's rate and retrying cannot
        // fix a key, a region or a permission.
        403 => ModelError::Rejected {
            status,
            message: format!(
                "forbidden: the model server refused access (not a rate limit, not retried): {message}"
            ),
        },
        500..=599 => ModelError::Unavailable(format!("HTTP {status}: {message}")),
        300..=399 => ModelError::Rejected {
            status,
            // The server's URL, not the configured one: its userinfo and
            // query values (a signed URL's token) are masked like ours.
            message: match headers.get(LOCATION).and_then(|to| to.to_str().ok()) {
                Some(location) => format!(
                    "the model server redirected the call to {} (not followed): set the model URL to where it points",
                    crate::redact::url(location)
                ),
                None => "the model server redirected the call without saying where (not followed): check the model URL".into(),
            },
        },
        _ => ModelError::Rejected { status, message },
    }
}

/// A failure to send the request or to receive the response head.
pub(super) fn transport(error: reqwest::Error) -> ModelError {
    ModelError::Unavailable(without_secrets(error))
}

/// A failure while the response body was arriving.
pub(super) fn interrupted(error: reqwest::Error) -> ModelError {
    ModelError::Unavailable(format!("response cut short: {}", without_secrets(error)))
}

/// reqwest writes the request URL into its errors, query string (which may
/// carry an API key) included: the URL is shown masked instead.
fn without_secrets(error: reqwest::Error) -> String {
    let url = error.url().map(|url| crate::redact::url(url.as_str()));
    let text = error_chain(&error.without_url());
    match url {
        Some(url) => format!("{text} (url {url})"),
        None => text,
    }
}

pub(super) fn bad_body(status: u16, error: impl Display) -> ModelError {
    ModelError::Rejected {
        status,
        message: format!("unreadable response body: {error}"),
    }
}

/// The message carried by an `error` field, whichever protocol's shape it has.
pub(super) fn error_field_message(error: &Value) -> String {
    match error {
        Value::String(text) => text.clone(),
        other => other
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| other.to_string(), str::to_owned),
    }
}

/// reqwest's top-level message rarely says what failed ("error sending request");
/// the cause ("connection refused") is further down the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The message of an error body in either protocol's shape (Ollama `{"error": ".."}`,
/// OpenAI `{"error": {"message", "type", "code"}}`) or plain text, and whether it
/// reports an exhausted quota.
fn error_details(status: StatusCode, body: &[u8]) -> (String, bool) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let (message, quota_exhausted) = match parsed.as_ref().and_then(|body| body.get("error")) {
        Some(error) => {
            let says_quota = ["code", "type"]
                .iter()
                .any(|key| error.get(key).and_then(Value::as_str) == Some("insufficient_quota"));
            (error_field_message(error), says_quota)
        }
        None => (String::from_utf8_lossy(body).trim().to_owned(), false),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        message.chars().take(MAX_MESSAGE_CHARS).collect()
    };
    (message, quota_exhausted)
}

/// Whether an error body calls itself a rate limit, in any protocol's shape
/// (the whole start of the body is searched: code, type and message alike).
fn says_rate_limit(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_lowercase();
    RATE_LIMIT_MARKERS
        .iter()
        .any(|marker| text.contains(marker))
}

/// Whether the response tells callers to come back later: an explicit
/// `Retry-After` (or `retry-after-ms`), or an OpenAI budget at zero. A reset
/// time alone does not count: OpenAI sends those on every answer.
fn asks_to_wait(headers: &HeaderMap) -> bool {
    let exhausted = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.trim() == "0")
    };
    headers.contains_key("retry-after")
        || headers.contains_key("retry-after-ms")
        || exhausted("x-ratelimit-remaining-requests")
        || exhausted("x-ratelimit-remaining-tokens")
}

/// The wait a rate-limited response asks for, from the most precise header present.
pub(super) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms").and_then(non_negative) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    if let Some(value) = header("retry-after") {
        return match non_negative(value) {
            Some(secs) => Duration::try_from_secs_f64(secs).ok(),
            None => parse_http_date(value).map(|at| at.duration_since(now).unwrap_or_default()),
        };
    }
    // OpenAI names a reset per budget; the exhausted budget is the one to wait for.
    let resets = ["requests", "tokens"].map(|budget| {
        let reset = header(&format!("x-ratelimit-reset-{budget}")).and_then(parse_go_duration);
        let exhausted = header(&format!("x-ratelimit-remaining-{budget}")) == Some("0");
        (reset, exhausted)
    });
    let exhausted = resets
        .iter()
        .filter(|(_, exhausted)| *exhausted)
        .filter_map(|(reset, _)| *reset)
        .max();
    exhausted.or_else(|| resets.iter().filter_map(|(reset, _)| *reset).max())
}

fn non_negative(text: &str) -> Option<f64> {
    text.parse::<f64>()
        .ok()
        .filter(|value| value.is_finite() && *value >= 0.0)
}

/// Go's `time.Duration` text as OpenAI sends it: "20ms", "1s", "6m0s", "1h2m3.5s".
/// A bare number is taken as seconds.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if let Some(secs) = non_negative(text) {
        return Duration::try_from_secs_f64(secs).ok();
    }
    if text.is_empty() {
        return None;
    }
    let is_number_char = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = text;
    let mut secs = 0.0;
    while !rest.is_empty() {
        let unit_start = rest.find(|c: char| !is_number_char(c))?;
        let number: f64 = rest[..unit_start].parse().ok()?;
        rest = &rest[unit_start..];
        let unit_end = rest.find(is_number_char).unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        secs += number * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// An HTTP date in its only current form, IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
fn parse_http_date(text: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split_whitespace();
    let _weekday = parts.next()?;
    let day: i64 = parts.next()?.parse().ok()?;
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|name| *name == month_name)? as i64 + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts
        .next()?
        .split(':')
        .map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    let secs = days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    fn wait(pairs: &[(&str, &str)]) -> Option<Duration> {
        retry_after(
            &headers(pairs),
            UNIX_EPOCH + Duration::from_secs(784_111_777),
        )
    }

    #[test]
    fn retry_after_reads_every_header_form() {
        assert_eq!(wait(&[("retry-after", "2")]), Some(Duration::from_secs(2)));
        assert_eq!(
            wait(&[("retry-after", "0.5")]),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            wait(&[("retry-after-ms", "1500"), ("retry-after", "2")]),
            Some(Duration::from_millis(1500))
        );
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            wait(&[("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT")]),
            Some(Duration::ZERO)
        );
        assert_eq!(wait(&[("retry-after", "soon")]), None);
        assert_eq!(
            wait(&[("x-ratelimit-reset-requests", "6m0s")]),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            wait(&[("x-ratelimit-reset-tokens", "20ms")]),
            Some(Duration::from_millis(20))
        );
        assert_eq!(wait(&[]), None);
    }

    #[test]
    fn ratelimit_reset_prefers_the_exhausted_budget() {
        let both = [
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-reset-tokens", "1s"),
        ];
        assert_eq!(wait(&both), Some(Duration::from_secs(360)));
        let tokens_out = [
            both[0],
            both[1],
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-remaining-requests", "9"),
        ];
        assert_eq!(wait(&tokens_out), Some(Duration::from_secs(1)));
    }

    #[test]
    fn go_durations_parse() {
        let parse = parse_go_duration;
        assert_eq!(parse("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse("1h2m3.5s"), Some(Duration::from_millis(3_723_500)));
        assert_eq!(parse("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse("3x"), None);
        assert_eq!(parse("s"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(UNIX_EPOCH)
        );
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(951_825_600))
        );
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 12:00:00 PST"), None);
        assert_eq!(parse_http_date("Tue, 29 Foo 2000 12:00:00 GMT"), None);
    }

    #[test]
    fn statuses_and_bodies_classify() {
        let now = SystemTime::now();
        let classify_with = |status: u16, pairs: &[(&str, &str)], body: &str| {
            classify(
                StatusCode::from_u16(status).unwrap(),
                &headers(pairs),
                body.as_bytes(),
                now,
                false,
            )
        };
        let classify = |status: u16, body: &str| classify_with(status, &[], body);
        assert_eq!(
            classify(
                429,
                r#"{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}"#
            ),
            ModelError::RateLimited {
                status: 429,
                retry_after: None,
                message: "slow down".into()
            }
        );
        assert_eq!(
            classify(
                429,
                r#"{"error": {"message": "pay up", "type": "insufficient_quota", "code": "insufficient_quota"}}"#
            ),
            ModelError::Rejected {
                status: 429,
                message: "pay up".into()
            }
        );
        assert_eq!(
            classify(403, ""),
            ModelError::Rejected {
                status: 403,
                message: "forbidden: the model server refused access (not a rate limit, not retried): Forbidden".into()
            }
        );
        assert_eq!(
            classify(404, r#"{"error": "model 'x' not found"}"#),
            ModelError::Rejected {
                status: 404,
                message: "model 'x' not found".into()
            }
        );
        assert_eq!(
            classify(502, "<html>bad gateway</html>"),
            ModelError::Unavailable("HTTP 502: <html>bad gateway</html>".into())
        );
        assert_eq!(
            classify(401, ""),
            ModelError::Rejected {
                status: 401,
                message: "Unauthorized".into()
            }
        );
        // A redirect's Location is shown with its secrets masked; one
        // without a Location still says it was a redirect.
        assert_eq!(
            classify_with(302, &[("location", "https://u:p@h/v1?sig=s3cret")], ""),
            ModelError::Rejected {
                status: 302,
                message: "the model server redirected the call to https://***@h/v1?sig=*** (not followed): set the model URL to where it points".into()
            }
        );
        assert_eq!(
            classify(302, ""),
            ModelError::Rejected {
                status: 302,
                message: "the model server redirected the call without saying where (not followed): check the model URL".into()
            }
        );
    }

    /// A 403 is a rate limit only when it says so; otherwise it is a refusal
    /// that no wait can fix.
    #[test]
    fn a_403_is_a_rate_limit_only_when_it_says_so() {
        let now = SystemTime::now();
        let classify_403 = |pairs: &[(&str, &str)], body: &str, always: bool| {
            classify(
                StatusCode::FORBIDDEN,
                &headers(pairs),
                body.as_bytes(),
                now,
                always,
            )
        };
        let is_rate_limit =
            |error: &ModelError| matches!(error, ModelError::RateLimited { status: 403, .. });
        let rate_limit_bodies = [
            r#"{"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}"#,
            r#"{"error": {"message": "Rate limit reached for gpt-4o in organization org-x on requests per min (RPM): Limit 3"}}"#,
            r#"{"error": "too many requests"}"#,
            "Requests to the ChatCompletions Operation have exceeded call rate limit",
            "<html><body>Error 1015: You are being rate limited</body></html>",
            r#"{"error": {"message": "Quota exceeded: 60 requests per minute"}}"#,
            r#"{"message": "Request throttled"}"#,
        ];
        for body in rate_limit_bodies {
            assert!(is_rate_limit(&classify_403(&[], body, false)), "{body}");
        }
        let refusals = [
            (
                r#"{"error": {"message": "Incorrect API key provided: sk-...", "type": "invalid_request_error", "code": "invalid_api_key"}}"#,
                "Incorrect API key provided: sk-...",
            ),
            (
                r#"{"error": {"code": "unsupported_country_region_territory", "message": "Country, region, or territory not supported", "type": "request_forbidden"}}"#,
                "Country, region, or territory not supported",
            ),
            (r#"{"error": "permission denied"}"#, "permission denied"),
            ("", "Forbidden"),
        ];
        for (body, detail) in refusals {
            match classify_403(&[], body, false) {
                ModelError::Rejected {
                    status: 403,
                    message,
                } => {
                    assert!(
                        message.starts_with("forbidden: the model server refused access"),
                        "{message}"
                    );
                    assert!(message.ends_with(detail), "{message}");
                }
                other => panic!("{body}: {other:?}"),
            }
            // The backend's setting makes every 403 a rate limit.
            assert!(is_rate_limit(&classify_403(&[], body, true)), "{body}");
        }
        // A server that names a wait means "later", not "never".
        let limited = classify_403(&[("retry-after", "2")], "", false);
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
        assert!(is_rate_limit(&classify_403(
            &[("retry-after-ms", "300")],
            "",
            false
        )));
        assert!(is_rate_limit(&classify_403(
            &[("x-ratelimit-remaining-requests", "0")],
            "",
            false
        )));
        // OpenAI sends reset times on every answer: alone they say nothing.
        assert!(!is_rate_limit(&classify_403(
            &[
                ("x-ratelimit-reset-requests", "1s"),
                ("x-ratelimit-remaining-requests", "59")
            ],
            "",
            false
        )));
        // An exhausted quota stays permanent even where 403s are rate limits.
        assert!(matches!(
            classify_403(
                &[],
                r#"{"error": {"message": "pay up", "code": "insufficient_quota"}}"#,
                true
            ),
            ModelError::Rejected { status: 403, .. }
        ));
    }
}
