//! How the host reaches Redis: one server (`redis://`, `rediss://`,
//! `redis+unix://`) or a Redis Cluster (`redis+cluster://h1:p1,h2:p2`,
//! `rediss+cluster://...`, the nodes being seeds: the rest is discovered).
//!
//! Owns the URL forms, connecting (with the start-up retries and the wording
//! of their failures), the one command connection type every layer above
//! holds ([`RedisConnection`]), and where Pub/Sub subscribers connect
//! ([`PubSubNodes`]). It knows no key and no command: which keys share a
//! cluster slot is the callers' layout (see `queue::keys`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::redact;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long start-up waits for a Redis that is still coming up.
const START_PATIENCE: Duration = Duration::from_secs(10);

/// A command connection, cheap to clone (clones share the connection). A
/// single server's reconnects by itself; a cluster's routes each command or
/// script to the master of its keys' slot and follows failovers and slot
/// moves, so callers never see which node answered.
#[derive(Clone)]
pub enum RedisConnection {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(manager: ConnectionManager) -> Self {
        Self::Server(manager)
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Server(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Server(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Server(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// Where Pub/Sub subscribers connect. [`PubSubNodes::subscribe`] follows
/// one server's classic channels, or a cluster's shard channels each on its
/// master. [`PubSubNodes::connect`] gives a classic connection to one node,
/// the next one in turn on every call, so a reconnect after a node went
/// away tries another (a cluster forwards classic PUBLISHes to all nodes).
#[derive(Clone)]
pub struct PubSubNodes {
    clients: Vec<redis::Client>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// A cluster's seeds (and CA), for shard-channel subscriptions.
    cluster: Option<std::sync::Arc<(Vec<String>, Option<redis::TlsCertificates>)>>,
}

/// What a subscription delivers: (channel, payload), until the connection
/// is lost.
pub type Messages = futures_util::stream::BoxStream<'static, (String, String)>;

impl PubSubNodes {
    /// Subscribes to `channels`: on one server with SUBSCRIBE; on a cluster
    /// with SSUBSCRIBE, each on the master of its slot (a cluster's channels
    /// carry a hash tag, and scripts SPUBLISH them: see `publish.lua`), kept
    /// across failovers by the cluster connection.
    pub async fn subscribe(&self, channels: &[String]) -> redis::RedisResult<Messages> {
        use futures_util::StreamExt;
        let Some(cluster) = &self.cluster else {
            let mut pubsub = self.connect().await?;
            pubsub.subscribe(channels).await?;
            let messages = pubsub.into_on_message().map(|message| {
                let payload = message.get_payload::<String>().unwrap_or_default();
                (message.get_channel_name().to_owned(), payload)
            });
            return Ok(messages.boxed());
        };
        let (seeds, certificates) = cluster.as_ref();
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut builder = ClusterClientBuilder::new(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(sender);
        if let Some(certificates) = certificates.clone() {
            builder = builder.certs(certificates);
        }
        let mut connection = builder.build()?.get_async_connection().await?;
        // One command per channel: an SSUBSCRIBE's channels must share a slot.
        for channel in channels {
            connection.ssubscribe(channel).await?;
        }
        // The connection lives as long as the stream: it resubscribes after
        // a failover and feeds the receiver.
        let messages = futures_util::stream::unfold(
            (connection, receiver),
            |(connection, mut receiver)| async move {
                loop {
                    let push = receiver.recv().await?;
                    if push.kind != redis::PushKind::SMessage {
                        continue;
                    }
                    let text = |at: usize| {
                        push.data
                            .get(at)
                            .and_then(|value| redis::from_redis_value_ref::<String>(value).ok())
                            .unwrap_or_default()
                    };
                    let message = (text(0), text(1));
                    return Some((message, (connection, receiver)));
                }
            },
        );
        Ok(messages.boxed())
    }

    /// A Pub/Sub connection to the next node in turn (the only one for a
    /// single server).
    pub async fn connect(&self) -> redis::RedisResult<PubSub> {
        self.next_client().get_async_pubsub().await
    }

    /// The client of the next node in turn.
    pub fn next_client(&self) -> &redis::Client {
        use std::sync::atomic::Ordering;
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[turn % self.clients.len()]
    }
}

/// A Redis URL, parsed into what it names.
#[derive(Debug, PartialEq)]
pub enum RedisTarget {
    Server(String),
    /// One `redis://` (or `rediss://`) URL per seed node.
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis+cluster://[user:pass@]h1:p1,h2:p2[/...]` (or `rediss+cluster`)
    /// names a cluster by its seeds, each given the same credentials; any
    /// other URL one server.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme @ ("redis+cluster" | "rediss+cluster"), rest)) => (scheme, rest),
            _ => return Ok(Self::Server(url.to_owned())),
        };
        let node_scheme = scheme.trim_end_matches("+cluster");
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hosts) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| format!("{node_scheme}://{userinfo}{host}{tail}"))
            .collect();
        if nodes.is_empty() {
            bail!(
                "the cluster URL `{}` names no node: write redis+cluster://host:port,host:port",
                redact::url(url)
            );
        }
        Ok(Self::Cluster(nodes))
    }
}

/// Connects to the Redis `url` names, waiting up to 10 s for one that is
/// still starting. `ca_file`: the PEM of a private CA for `rediss://`.
pub async fn open(url: &str, ca_file: Option<&Path>) -> Result<(RedisConnection, PubSubNodes)> {
    let shown = redact::url(url);
    let certificates = ca_file.map(read_ca).transpose()?;
    match RedisTarget::parse(url)? {
        RedisTarget::Server(url) => {
            let client = server_client(&url, certificates)?;
            let manager = retry_start(&shown, || {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(3);
                client.get_connection_manager_with_config(config)
            })
            .await?;
            Ok((
                RedisConnection::Server(manager),
                pubsub_nodes(vec![client], None),
            ))
        }
        RedisTarget::Cluster(nodes) => {
            let mut builder = ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                // A failover takes the cluster's node timeout plus an
                // election; commands wait through it instead of failing.
                .retries(12)
                .max_retry_wait(1_000);
            if let Some(certificates) = certificates.clone() {
                builder = builder.certs(certificates);
            }
            let cluster = builder
                .build()
                .with_context(|| format!("invalid Redis Cluster URL `{shown}`"))?;
            let connection = retry_start(&shown, || cluster.get_async_connection()).await?;
            let clients = nodes
                .iter()
                .map(|node| server_client(node, certificates.clone()))
                .collect::<Result<Vec<_>>>()?;
            let seeds = Some((nodes, certificates));
            Ok((
                RedisConnection::Cluster(connection),
                pubsub_nodes(clients, seeds),
            ))
        }
    }
}

fn pubsub_nodes(
    clients: Vec<redis::Client>,
    cluster: Option<(Vec<String>, Option<redis::TlsCertificates>)>,
) -> PubSubNodes {
    PubSubNodes {
        clients,
        next: Default::default(),
        cluster: cluster.map(std::sync::Arc::new),
    }
}

fn read_ca(path: &Path) -> Result<redis::TlsCertificates> {
    let root_cert = std::fs::read(path).with_context(|| {
        format!(
            "cannot read redis.ca_file {}: point it at the PEM file of the CA that signed your Redis server's certificate",
            path.display()
        )
    })?;
    Ok(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    })
}

/// A client for one server. `rediss://` trusts `certificates` if given,
/// else the system's roots.
fn server_client(url: &str, certificates: Option<redis::TlsCertificates>) -> Result<redis::Client> {
    let shown = redact::url(url);
    match certificates {
        None => redis::Client::open(url).with_context(|| format!("invalid Redis URL `{shown}`")),
        Some(certificates) => redis::Client::build_with_tls(url, certificates).with_context(|| {
            format!(
                "cannot use Redis URL `{shown}` with the CA in redis.ca_file (a rediss:// URL and a PEM certificate are needed)"
            )
        }),
    }
}

/// Runs `attempt` until it connects, for up to [`START_PATIENCE`].
async fn retry_start<T, F>(shown: &str, mut attempt: impl FnMut() -> F) -> Result<T>
where
    F: Future<Output = redis::RedisResult<T>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(connection) => return Ok(connection),
            Err(error) if started.elapsed() < START_PATIENCE => {
                tracing::warn!(%error, "Redis at {shown} not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // An untrusted certificate is a setting, not an outage: name the setting.
            Err(error) if error.to_string().contains("certificate") => bail!(
                "cannot reach Redis at {shown}: {error}. If its certificate comes from a private CA, \
                 give that CA's PEM file as [redis] ca_file, --redis-ca-file or SPOOL_REDIS_CA_FILE"
            ),
            Err(error) => bail!(
                "cannot reach Redis at {shown}: {error}. Start it, fix --redis-url, or omit the URL to let spool run its own"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RedisTarget;

    #[test]
    fn a_cluster_url_names_each_seed_with_the_same_credentials() {
        assert_eq!(
            RedisTarget::parse("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001").unwrap(),
            RedisTarget::Cluster(vec![
                "redis://:pw@10.0.0.1:7000".into(),
                "redis://:pw@10.0.0.2:7001".into()
            ])
        );
        assert_eq!(
            RedisTarget::parse("rediss+cluster://a:1/?protocol=3").unwrap(),
            RedisTarget::Cluster(vec!["rediss://a:1/?protocol=3".into()])
        );
    }

    #[test]
    fn any_other_url_is_one_server_and_an_empty_cluster_is_refused() {
        assert_eq!(
            RedisTarget::parse("redis+unix:///tmp/r.sock").unwrap(),
            RedisTarget::Server("redis+unix:///tmp/r.sock".into())
        );
        let refused = RedisTarget::parse("redis+cluster://:secret@").unwrap_err();
        assert!(refused.to_string().contains("names no node"), "{refused}");
        assert!(!refused.to_string().contains("secret"), "{refused}");
    }
}
