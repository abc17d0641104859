//! Keeps secrets out of everything spool shows: its log, `/health`,
//! `/api/limits` and error messages. The secrets are the ones configuration
//! carries: a Redis URL's password (`redis://user:pass@host`, or
//! `redis+unix:///path?pass=...`), a model URL's userinfo or API key in its
//! query string (`https://host/v1?api-key=...`), the model API key.
//!
//! Owns the rules only: [`url`] masks the parts of a URL that can hold a
//! secret, [`scrub`] masks known secret strings in free text (an error a
//! server or a library wrote). Callers apply them where text leaves.

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Secrets shorter than this are not masked inside free text by [`scrub`]:
/// replacing every `a` of a message would hide the message, not the secret.
/// (URLs are still masked by their structure, whatever the length.)
const MIN_SCRUBBED_LEN: usize = 4;

/// `url` with its userinfo and every query value masked, e.g.
/// `redis://user:pass@host:6379/0` -> `redis://***@host:6379/0` and
/// `https://h/v1?api-key=sk-1&x` -> `https://h/v1?api-key=***&***`. A
/// fragment is masked whole. Works on text that does not parse as a URL too:
/// it only looks for `://`, `@`, `?`, `&`, `=` and `#`.
pub fn url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match tail.find('#') {
        Some(at) => tail.split_at(at),
        None => (tail, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) => format!("{key}={MASK}"),
                    None if pair.is_empty() => String::new(),
                    None => MASK.to_owned(),
                })
                .collect();
            out.push_str(&masked.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    if !fragment.is_empty() {
        out.push('#');
        out.push_str(MASK);
    }
    out
}

/// The secrets a URL carries: its user name and password (as written and
/// percent-decoded) and its query values, for [`scrub`].
pub fn url_secrets(url: &str) -> Vec<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut secrets = Vec::new();
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        for part in [user, password] {
            secrets.push(part.to_owned());
            secrets.push(percent_decode(part));
        }
    }
    let query = tail
        .split_once('?')
        .map_or("", |(_, query)| query)
        .split('#')
        .next()
        .unwrap_or_default();
    for pair in query.split('&') {
        let value = pair.split_once('=').map_or(pair, |(_, value)| value);
        secrets.push(value.to_owned());
        secrets.push(percent_decode(value));
    }
    secrets.retain(|secret| secret.len() >= MIN_SCRUBBED_LEN);
    secrets.sort();
    secrets.dedup();
    secrets
}

/// `text` with every occurrence of each secret (of at least 4 bytes) masked.
pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    // Longest first, so that a secret containing another is masked whole.
    let mut secrets: Vec<&String> = secrets
        .iter()
        .filter(|s| s.len() >= MIN_SCRUBBED_LEN)
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), MASK);
        }
    }
    text
}

/// `%XX` sequences decoded (invalid ones and non-UTF-8 results kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) if hex(high).is_some() && hex(low).is_some() => {
                let value = hex(high).unwrap_or(0) * 16 + hex(low).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_userinfo_query_values_and_fragment() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:hunter22@10.0.0.1:6379/0",
                "redis://***@10.0.0.1:6379/0",
            ),
            (
                "rediss://default:s3cr%40t@cache.example:6380",
                "rediss://***@cache.example:6380",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter22",
                "redis+unix:///run/redis.sock?db=***&pass=***",
            ),
            (
                "https://user:pw@api.example.com/v1?api-key=sk-123&x#frag",
                "https://***@api.example.com/v1?api-key=***&***#***",
            ),
            ("http://127.0.0.1:11434", "http://127.0.0.1:11434"),
            ("user:pw@host/path", "***@host/path"),
            ("not a url at all", "not a url at all"),
        ];
        for (input, expected) in cases {
            assert_eq!(url(input), expected, "{input}");
        }
    }

    #[test]
    fn scrub_masks_every_secret_of_a_url_in_free_text() {
        let secrets = url_secrets("https://alice:s3cr%40t@api.example.com/v1?api-key=sk-123456");
        let text = "error sending request for url (https://api.example.com/v1?api-key=sk-123456): user alice, s3cr@t or s3cr%40t";
        let scrubbed = scrub(text, &secrets);
        for secret in ["sk-123456", "alice", "s3cr@t", "s3cr%40t"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("api-key=***"), "{scrubbed}");
        // Too short to be masked in free text without mangling it.
        assert_eq!(scrub("a cat", &["a".to_owned()]), "a cat");
    }
}
