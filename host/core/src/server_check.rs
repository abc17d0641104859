//! What spool requires of the Redis it runs on, checked once at start: a
//! version that has the commands it relies on, and an eviction policy that
//! never drops a queued job behind its back. Owns the checks and the wording
//! of their refusals and warnings; it changes nothing on the server.

use anyhow::{Context, Result, bail};
use redis::aio::ConnectionLike;

/// XAUTOCLAIM, which brings back the jobs of crashed workers, came in 6.2.
const MIN_VERSION: (u32, u32) = (6, 2);

/// Refuses a Redis that would lose jobs silently; warns about one that may
/// lose finished jobs' records. On a cluster every node is checked.
pub async fn check(redis: &mut (impl ConnectionLike + Send)) -> Result<()> {
    for server in infos(redis, "server").await? {
        check_version(&server)?;
    }
    for memory in infos(redis, "memory").await? {
        check_eviction(&memory)?;
    }
    Ok(())
}

/// `INFO section` of each node: a cluster answers with one per node.
async fn infos(redis: &mut (impl ConnectionLike + Send), section: &str) -> Result<Vec<String>> {
    let reply: redis::Value = redis::cmd("INFO")
        .arg(section)
        .query_async(redis)
        .await
        .with_context(|| format!("reading INFO {section}"))?;
    let texts = match reply {
        redis::Value::Map(nodes) => nodes.into_iter().map(|(_, info)| info).collect(),
        single => vec![single],
    };
    texts
        .into_iter()
        .map(|info| {
            redis::from_redis_value(info).with_context(|| format!("reading INFO {section}"))
        })
        .collect()
}

fn check_version(server: &str) -> Result<()> {
    let version = field(server, "redis_version").unwrap_or_default();
    match parse_version(version) {
        Some(found) if found < MIN_VERSION => bail!(
            "Redis {version} is too old: spool needs {}.{} or later (XAUTOCLAIM recovers the jobs of crashed workers). Upgrade the server.",
            MIN_VERSION.0,
            MIN_VERSION.1
        ),
        Some(_) => {}
        None => tracing::warn!(
            version,
            "could not read the Redis version; assuming it is recent enough"
        ),
    }
    Ok(())
}

fn check_eviction(memory: &str) -> Result<()> {
    let policy = field(memory, "maxmemory_policy").unwrap_or("noeviction");
    if policy.starts_with("allkeys-") {
        bail!(
            "Redis evicts any key when it is full (maxmemory-policy {policy}): queued jobs would vanish without a trace. Set maxmemory-policy to noeviction (CONFIG SET maxmemory-policy noeviction, or in redis.conf) and size maxmemory for the queue."
        );
    }
    if policy.starts_with("volatile-") {
        tracing::warn!(
            policy,
            "Redis may evict keys that have an expiry when it is full: finished jobs' records and event streams could disappear before their retention ends. noeviction is recommended."
        );
    }
    Ok(())
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn parse_version(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_fields_parse() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0)));
        assert_eq!(parse_version("6.2.0"), Some((6, 2)));
        assert!(parse_version("6.0.9").is_some_and(|v| v < MIN_VERSION));
        assert_eq!(parse_version("x"), None);
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(field(info, "redis_version"), Some("7.0.15"));
        assert_eq!(field(info, "redis_mode"), Some("standalone"));
        assert_eq!(field(info, "redis"), None);
    }
}
