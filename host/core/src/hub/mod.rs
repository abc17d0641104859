//! The event hub of one instance: every live watcher of a Redis stream (SSE
//! on jobs and messages, WebSocket watches; later conversations, whose stream
//! is one more key) subscribes here in memory, and the hub reads each watched
//! stream once for all of them.
//!
//! Keys are spread over a few shards (`[hub] readers`). On a single server
//! each shard owns one dedicated connection that blocks in a single `XREAD`
//! over all its keys, each from the last id it read (`reader`); on Redis
//! Cluster, where one command cannot span hash slots, a shard holds whole
//! slots and polls each with one non-blocking `XREAD` on the shared cluster
//! connection (`poller`, which says what that costs). Either hands every
//! entry to the bounded buffer of each of the key's watchers. A watcher's
//! history, from its own resume id up to where the hub was when it joined, is
//! the watcher's to read (`crate::follow`) on the instance's shared
//! connection, at its own pace.
//!
//! Owns the watcher caps (per instance, per key holder) and the slow-consumer
//! policy: a watcher whose buffer is full is dropped, never waited for, and
//! learns so once it has taken what was buffered. Knows nothing of what
//! entries mean and never writes to a watched stream.

mod poller;
mod reader;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::connection::RedisConnection;
use redis::streams::StreamId;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

/// Limits of live delivery, `[hub]` in the config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Watchers (SSE streams and WebSocket watches) one instance serves at
    /// once; one more gets 503 or an error frame.
    pub max_watchers: usize,
    /// Watchers one API key holds at once (requests without a key share
    /// one); one more gets 429 or an error frame.
    pub max_watchers_per_key: usize,
    /// Jobs one WebSocket follows at once (`watch` and `submit` frames).
    pub max_watches_per_socket: usize,
    /// Events buffered per watcher; a watcher further behind is dropped, with
    /// the id of the last event it got, instead of slowing the others.
    pub buffer_events: usize,
    /// Dedicated Redis connections reading the watched streams; keys are
    /// spread over them. On Redis Cluster: tasks polling the watched slots.
    pub readers: usize,
    /// On Redis Cluster, how often each watched hash slot is read: an entry
    /// waits up to this long, and an idle instance sends (watched slots) /
    /// this many reads a second. Unused on a single server.
    pub cluster_poll_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_watchers: 10_000,
            max_watchers_per_key: 1_000,
            max_watches_per_socket: 100,
            buffer_events: 256,
            readers: 1,
            cluster_poll_ms: 100,
        }
    }
}

impl HubConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_watchers == 0
            || self.max_watchers_per_key == 0
            || self.max_watches_per_socket == 0
            || self.buffer_events == 0
        {
            anyhow::bail!(
                "hub.max_watchers, max_watchers_per_key, max_watches_per_socket and buffer_events must be above 0"
            );
        }
        if !(1..=16).contains(&self.readers) {
            anyhow::bail!("hub.readers must be 1 to 16");
        }
        if !(10..=5_000).contains(&self.cluster_poll_ms) {
            anyhow::bail!("hub.cluster_poll_ms must be 10 to 5000");
        }
        Ok(())
    }
}

/// Why a watcher was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "this instance serves {0} watchers already (hub.max_watchers); retry later or on another instance"
    )]
    InstanceFull(usize),
    #[error("this key holds {0} watchers already (hub.max_watchers_per_key); close one first")]
    KeyFull(usize),
    #[error("`{0}` is not a stream id like 1700000000000-0")]
    InvalidId(String),
    #[error(transparent)]
    Store(#[from] redis::RedisError),
}

/// What became of a watcher the hub let go of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still subscribed.
    Live,
    /// Its buffer was full: dropped so that the hub never waits for it.
    Lagged,
    /// The hub lost its Redis connection.
    Failed,
}

const LIVE: u8 = 0;
const LAGGED: u8 = 1;
const FAILED: u8 = 2;

/// The instance's hub; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    shards: Vec<Shard>,
    counts: Mutex<Counts>,
    /// The instance's shared connection: topic starts, wake-ups, the
    /// watchers' own history reads, and on a cluster the hub's reads.
    shared: RedisConnection,
    /// Whether `shared` is a cluster's: then shards hold whole hash slots and
    /// poll them (see `poller`).
    cluster: bool,
    next_watcher: AtomicU64,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_holder: HashMap<String, usize>,
}

struct Shard {
    /// A private stream of this shard: an entry added to it ends the shard's
    /// blocking read, so a new key is read at once. Unused on a cluster,
    /// where `wake` alone ends the poller's pause.
    wake_key: String,
    topics: Mutex<HashMap<String, Topic>>,
    /// Set while a wake-up is asked for and not yet read, so that a burst of
    /// new keys costs one wake-up.
    wake_pending: AtomicBool,
    wake: Notify,
}

/// One watched stream.
struct Topic {
    /// The last id the hub read (or the stream's last id when the topic
    /// started): every watcher gets each entry after it.
    cursor: String,
    watchers: HashMap<u64, Subscriber>,
}

struct Subscriber {
    sender: mpsc::Sender<Arc<StreamId>>,
    fate: Arc<AtomicU8>,
}

/// Figures of the hub, for health and metrics.
#[derive(Clone, Copy, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    pub watchers: usize,
    pub streams: usize,
    pub readers: usize,
}

impl Hub {
    /// A hub whose topic starts, wake-ups and watchers' history reads use
    /// `shared`; nothing is read until [`Hub::run`] runs.
    pub fn new(shared: RedisConnection, instance: &str, config: HubConfig) -> Self {
        let shards = (0..config.readers.max(1))
            .map(|index| Shard {
                wake_key: format!("hub:wake:{instance}:{index}"),
                topics: Mutex::default(),
                wake_pending: AtomicBool::new(false),
                wake: Notify::new(),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                config,
                shards,
                counts: Mutex::default(),
                cluster: shared.is_cluster(),
                shared,
                next_watcher: AtomicU64::new(0),
            }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Reads for the watchers until the task is dropped; each shard
    /// reconnects by itself after a failure. `nodes` is where a single
    /// server's readers connect; a cluster's shards use the shared connection.
    pub async fn run(self, nodes: crate::connection::PubSubNodes) {
        let shards = (0..self.inner.shards.len()).map(|index| {
            let inner = self.inner.clone();
            let nodes = nodes.clone();
            async move {
                if inner.cluster {
                    poller::poll(&inner, index).await;
                } else {
                    tokio::join!(
                        reader::read(&inner, index, &nodes),
                        reader::wake_on_demand(&inner, index)
                    );
                }
            }
        });
        futures_util::future::join_all(shards).await;
    }

    /// Subscribes `holder` (an API key id) to the stream `key`; entries after
    /// the hub's position at joining arrive in the subscription, those before
    /// it are the caller's to read (see [`Subscription::joined_at`]).
    pub async fn subscribe(&self, key: String, holder: &str) -> Result<Subscription, Refusal> {
        let ticket = Ticket::take(&self.inner, holder)?;
        let shard_index = shard_of(&key, self.inner.shards.len(), self.inner.cluster);
        let shard = &self.inner.shards[shard_index];
        let (sender, entries) = mpsc::channel(self.inner.config.buffer_events);
        let fate = Arc::new(AtomicU8::new(LIVE));
        let id = self.inner.next_watcher.fetch_add(1, Ordering::Relaxed);
        let subscriber = || Subscriber {
            sender: sender.clone(),
            fate: fate.clone(),
        };
        // A new topic starts at the stream's end, read before taking the lock;
        // if another watcher started it meanwhile, its position stands.
        let mut start: Option<String> = None;
        let joined_at = loop {
            {
                let mut topics = lock(&shard.topics);
                if let Some(topic) = topics.get_mut(&key) {
                    topic.watchers.insert(id, subscriber());
                    break topic.cursor.clone();
                }
                if let Some(cursor) = start.take() {
                    topics.insert(
                        key.clone(),
                        Topic {
                            cursor: cursor.clone(),
                            watchers: HashMap::from([(id, subscriber())]),
                        },
                    );
                    drop(topics);
                    shard.ask_wake();
                    break cursor;
                }
            }
            start = Some(last_id(&mut self.inner.shared.clone(), &key).await?);
        };
        Ok(Subscription {
            hub: self.inner.clone(),
            shard: shard_index,
            key,
            id,
            entries,
            fate,
            joined_at,
            _ticket: ticket,
        })
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            watchers: lock(&self.inner.counts).total,
            streams: self
                .inner
                .shards
                .iter()
                .map(|shard| lock(&shard.topics).len())
                .sum(),
            readers: self.inner.shards.len(),
        }
    }
}

impl Shard {
    fn ask_wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }
}

/// One watcher's subscription; dropping it leaves the hub.
pub struct Subscription {
    hub: Arc<Inner>,
    shard: usize,
    key: String,
    id: u64,
    entries: mpsc::Receiver<Arc<StreamId>>,
    fate: Arc<AtomicU8>,
    joined_at: String,
    _ticket: Ticket,
}

impl Subscription {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The hub's position when this watcher joined: entries up to it are not
    /// delivered here.
    pub fn joined_at(&self) -> &str {
        &self.joined_at
    }

    /// The next entry; None once the hub let go of this watcher (see [`Subscription::fate`]).
    pub async fn recv(&mut self) -> Option<Arc<StreamId>> {
        self.entries.recv().await
    }

    pub fn fate(&self) -> Fate {
        match self.fate.load(Ordering::SeqCst) {
            LAGGED => Fate::Lagged,
            FAILED => Fate::Failed,
            _ => Fate::Live,
        }
    }

    /// The instance's shared connection, for reading history.
    pub fn connection(&self) -> RedisConnection {
        self.hub.shared.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = lock(&self.hub.shards[self.shard].topics);
        if let Some(topic) = topics.get_mut(&self.key) {
            topic.watchers.remove(&self.id);
            if topic.watchers.is_empty() {
                topics.remove(&self.key);
            }
        }
    }
}

/// A watcher's place under the caps, given back on drop.
struct Ticket {
    hub: Arc<Inner>,
    holder: String,
}

impl Ticket {
    fn take(hub: &Arc<Inner>, holder: &str) -> Result<Self, Refusal> {
        let mut counts = lock(&hub.counts);
        let config = &hub.config;
        if counts.total >= config.max_watchers {
            return Err(Refusal::InstanceFull(config.max_watchers));
        }
        let held = counts.per_holder.entry(holder.to_owned()).or_default();
        if *held >= config.max_watchers_per_key {
            return Err(Refusal::KeyFull(config.max_watchers_per_key));
        }
        *held += 1;
        counts.total += 1;
        Ok(Self {
            hub: hub.clone(),
            holder: holder.to_owned(),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = lock(&self.hub.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_holder.get_mut(&self.holder) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_holder.remove(&self.holder);
            }
        }
    }
}

/// The id of a stream's last entry; `0-0` for an empty or missing stream.
async fn last_id(redis: &mut RedisConnection, key: &str) -> redis::RedisResult<String> {
    let last: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await?;
    Ok(last
        .ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id))
}

/// Which shard reads `key`. On a cluster all keys of a hash slot go to one
/// shard, so that a slot costs one read per interval.
fn shard_of(key: &str, shards: usize, cluster: bool) -> usize {
    let mut hasher = std::hash::DefaultHasher::new();
    if cluster {
        redis::cluster_routing::Slot::for_key(key).hash(&mut hasher);
    } else {
        key.hash(&mut hasher);
    }
    (hasher.finish() % shards as u64) as usize
}

/// The hub's locks guard plain maps that no code path leaves half-changed,
/// so a panic elsewhere while holding one does not make them unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A Redis stream id as its two numbers, which is how Redis orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub u64, pub u64);

impl Position {
    /// `ms-seq`, or `ms` alone (sequence 0). A number too large for Redis
    /// is its largest: an id past every entry there can be.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        let number = |text: &str| {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse().unwrap_or(u64::MAX))
        };
        Some(Self(number(ms)?, number(seq)?))
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn positions_order_like_redis_stream_ids() {
        assert!(Position::parse("1700-10") > Position::parse("1700-9"));
        assert!(Position::parse("1701") > Position::parse("1700-99"));
        assert_eq!(Position::parse("0"), Some(Position(0, 0)));
        assert_eq!(Position::parse("12-x"), None);
        assert_eq!(Position::parse("-1"), None);
        // Past anything Redis can hold: the largest id, so nothing follows it.
        assert_eq!(
            Position::parse("99999999999999999999999-0"),
            Some(Position(u64::MAX, 0))
        );
        assert_eq!(
            Position::parse("00-8118936054805718817093"),
            Some(Position(0, u64::MAX))
        );
    }
}
